/*
 * test_store.c - the start of a primary's term and the wait for writes
 * (store_cluster.c): isPrimary (store_primary_ready) and the fence open only
 * after the adoption window and any adoption in it, within the cap; once
 * open they stay open for the term; store_await_writes waits for that,
 * refuses at once on a replica, times out with the reason, gives way when
 * asked, and wakes on a demotion or the end of a handoff fence. A change
 * made between store_defer_begin and store_defer_end wakes a standby
 * sleeper only if the pusher left something undone, and any other sleeper
 * always. Each case opens a store in a fresh temporary data directory.
 */
#include "unit.h"

#include "ltxfs/clock.h"
#include "ltxfs/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct store *open_store(char *dir)
{
	struct store *s = NULL;
	char err[256];
	strcpy(dir, "/tmp/ltxfs-test-store-XXXXXX");
	if (!mkdtemp(dir))
		return NULL;
	struct store_options o = {.data_dir = dir, .mount_dir = "/nonexistent", .replica = true};
	if (store_open(&s, &o, err, sizeof(err)) < 0) {
		fprintf(stderr, "store_open: %s\n", err);
		return NULL;
	}
	return s;
}

static void close_store(struct store *s, const char *dir)
{
	char cmd[128];
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	CHECK(system(cmd) == 0);
}

static int64_t elapsed(int64_t t0)
{
	return clock_mono_ms() - t0;
}

/* A replica refuses at once; a new primary opens after its window, and stays open. */
static void test_window(void)
{
	char dir[64];
	const char *why;
	struct store *s = open_store(dir);
	CHECK(s != NULL);
	if (!s)
		return;
	int64_t t0 = clock_mono_ms();
	CHECK_RC(store_await_writes(s, 1000, NULL, NULL, &why), -EROFS);
	CHECK(elapsed(t0) < 200);
	CHECK(why && strstr(why, "not the primary"));

	CHECK_RC(store_become_primary(s, 5, clock_mono_ms() + 60000, 300, 2000), 0);
	CHECK(store_is_primary(s));
	CHECK(!store_primary_ready(s));
	CHECK(!store_accepts_writes(s));
	CHECK_RC(store_await_writes(s, 0, NULL, NULL, &why), -ETIMEDOUT);
	CHECK(why && strcmp(why, "the adoption window after its election") == 0);
	t0 = clock_mono_ms();
	CHECK_RC(store_await_writes(s, 5000, NULL, NULL, &why), 0);
	CHECK(elapsed(t0) >= 200 && elapsed(t0) < 1500);
	CHECK(why == NULL);
	CHECK(store_primary_ready(s));
	CHECK(store_accepts_writes(s));
	/* an offer after the start of the term does not close the fence again */
	store_adopt_begin(s);
	CHECK(store_accepts_writes(s));
	CHECK(store_primary_ready(s));
	store_adopt_end(s);
	close_store(s, dir);
}

/* An adoption holds writes until it ends, but not past the cap. */
static void test_adoption_and_cap(void)
{
	char dir[64];
	const char *why;
	struct store *s = open_store(dir);
	CHECK(s != NULL);
	if (!s)
		return;
	CHECK_RC(store_become_primary(s, 6, clock_mono_ms() + 60000, 100, 5000), 0);
	store_adopt_begin(s);
	int64_t t0 = clock_mono_ms();
	CHECK_RC(store_await_writes(s, 400, NULL, NULL, &why), -ETIMEDOUT);
	CHECK(elapsed(t0) >= 390);
	CHECK(why && strstr(why, "adoption of transactions"));
	CHECK(!store_primary_ready(s));
	store_adopt_end(s);
	CHECK(store_accepts_writes(s));
	CHECK(store_primary_ready(s));

	/* the cap: an adoption that never ends holds writes for adopt_max_ms at most */
	CHECK_RC(store_become_primary(s, 7, clock_mono_ms() + 60000, 50, 400), 0);
	store_adopt_begin(s);
	t0 = clock_mono_ms();
	CHECK_RC(store_await_writes(s, 5000, NULL, NULL, &why), 0);
	CHECK(elapsed(t0) >= 300 && elapsed(t0) < 2000);
	store_adopt_end(s);

	/* a handoff's successor (no window) accepts writes at once */
	CHECK_RC(store_become_primary(s, 8, clock_mono_ms() + 60000, 0, 0), 0);
	CHECK(store_accepts_writes(s));
	/* an older epoch is refused */
	CHECK_RC(store_become_primary(s, 7, clock_mono_ms() + 60000, 0, 0), -ESTALE);
	close_store(s, dir);
}

struct later {
	struct store *s;
	int what; /* 0: demote, 1: lift the fence, 2: ask waiters to give way */
	volatile bool flag;
};

static void *do_later(void *arg)
{
	struct later *l = arg;
	struct timespec ts = {0, 150 * 1000000};
	nanosleep(&ts, NULL);
	if (l->what == 0)
		store_set_primary(l->s, false);
	else if (l->what == 1)
		store_set_fenced(l->s, false);
	else {
		l->flag = true;
		store_kick(l->s);
	}
	return NULL;
}

static bool give_up(void *ctx)
{
	return ((struct later *)ctx)->flag;
}

/* A waiter wakes when the node is demoted, when a fence lifts, and when asked to give way. */
static void test_wakeups(void)
{
	char dir[64];
	const char *why;
	pthread_t t;
	struct store *s = open_store(dir);
	CHECK(s != NULL);
	if (!s)
		return;
	struct later l = {.s = s};

	CHECK_RC(store_become_primary(s, 9, clock_mono_ms() + 60000, 3000, 3000), 0);
	l.what = 0;
	pthread_create(&t, NULL, do_later, &l);
	int64_t t0 = clock_mono_ms();
	CHECK_RC(store_await_writes(s, 5000, NULL, NULL, &why), -EROFS);
	CHECK(elapsed(t0) < 1500);
	pthread_join(t, NULL);

	CHECK_RC(store_become_primary(s, 10, clock_mono_ms() + 60000, 0, 0), 0);
	store_set_fenced(s, true);
	CHECK(store_primary_ready(s)); /* still the primary: a handoff may fail */
	CHECK_RC(store_await_writes(s, 0, NULL, NULL, &why), -ETIMEDOUT);
	CHECK(why && strstr(why, "handoff"));
	l.what = 1;
	pthread_create(&t, NULL, do_later, &l);
	t0 = clock_mono_ms();
	CHECK_RC(store_await_writes(s, 5000, NULL, NULL, &why), 0);
	CHECK(elapsed(t0) < 1500);
	pthread_join(t, NULL);

	CHECK_RC(store_become_primary(s, 11, clock_mono_ms() + 60000, 3000, 3000), 0);
	l.what = 2;
	pthread_create(&t, NULL, do_later, &l);
	t0 = clock_mono_ms();
	CHECK_RC(store_await_writes(s, 5000, give_up, &l, &why), -ECANCELED);
	CHECK(elapsed(t0) < 1500);
	pthread_join(t, NULL);

	/* past the lease's deadline: held, with the reason */
	CHECK_RC(store_become_primary(s, 12, clock_mono_ms() - 1, 0, 0), 0);
	CHECK_RC(store_await_writes(s, 0, NULL, NULL, &why), -ETIMEDOUT);
	CHECK(why && strstr(why, "deadline"));
	store_extend_lease(s, clock_mono_ms() + 60000);
	CHECK(store_accepts_writes(s));
	close_store(s, dir);
}

/* DEFERRED WAKE-UPS: one sleeper, standby or not, and what wakes it. */
struct sleeper {
	struct store *s;
	bool standby;
	pid_t tid;
	int64_t slept_ms;
};

static void *sleep_once(void *arg)
{
	struct sleeper *z = arg;
	__atomic_store_n(&z->tid, gettid(), __ATOMIC_SEQ_CST);
	uint64_t seq = store_change_seq(z->s);
	int64_t t0 = clock_mono_ms();
	if (z->standby)
		store_wait_change_standby(z->s, seq, 1500);
	else
		store_wait_change(z->s, seq, 1500);
	z->slept_ms = elapsed(t0);
	return NULL;
}

/* Start a sleeper and return once its thread sleeps (in the futex). */
static void start_sleeper(pthread_t *t, struct sleeper *z)
{
	char path[64], buf[256];
	pthread_create(t, NULL, sleep_once, z);
	for (int i = 0; i < 5000; i++) {
		pid_t tid = __atomic_load_n(&z->tid, __ATOMIC_SEQ_CST);
		FILE *f = NULL;
		if (tid) {
			snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
			f = fopen(path, "r");
		}
		if (f) {
			size_t n = fread(buf, 1, sizeof(buf) - 1, f);
			fclose(f);
			buf[n] = '\0';
			const char *st = strrchr(buf, ')');
			if (st && st[1] == ' ' && st[2] == 'S')
				return;
		}
		usleep(1000);
	}
	CHECK(!"the sleeper never slept");
}

static int pushes;
static bool push_result;

static bool count_push(void *ctx)
{
	(void)ctx;
	pushes++;
	return push_result;
}

/* One change made between store_defer_begin and store_defer_end. */
static void deferred_change(struct store *s)
{
	store_defer_begin(s);
	store_on_change(s);
	store_defer_end(s);
}

/* One sleeper (standby or not) and one change (deferred or not): how long it slept. */
static int64_t wake_case(struct store *s, bool standby, bool deferred, bool push_returns)
{
	pthread_t t;
	struct sleeper z = {.s = s, .standby = standby};
	push_result = push_returns;
	pushes = 0;
	start_sleeper(&t, &z);
	if (deferred)
		deferred_change(s);
	else
		store_on_change(s);
	pthread_join(t, NULL);
	return z.slept_ms;
}

static void test_deferred_wakeups(void)
{
	char dir[64];
	struct store *s = open_store(dir);
	CHECK(s != NULL);
	if (!s)
		return;
	store_set_pusher(s, count_push, NULL);
	/* the pusher did it all: the standby sleeper sleeps on */
	CHECK(wake_case(s, true, true, true) >= 1400);
	CHECK(pushes == 1);
	/* the pusher left something: the sleeper is woken */
	CHECK(wake_case(s, true, true, false) < 1000);
	CHECK(pushes == 1);
	/* another kind of sleeper: woken, and the pusher is not asked */
	CHECK(wake_case(s, false, true, true) < 1000);
	CHECK(pushes == 0);
	/* a change outside store_defer_begin/end wakes at once */
	CHECK(wake_case(s, true, false, true) < 1000);
	CHECK(pushes == 0);
	/* no change in between: nothing to push */
	store_defer_begin(s);
	store_defer_end(s);
	CHECK(pushes == 0);
	store_set_pusher(s, NULL, NULL);
	close_store(s, dir);
}

int main(void)
{
	RUN(test_window);
	RUN(test_adoption_and_cap);
	RUN(test_wakeups);
	RUN(test_deferred_wakeups);
	return UNIT_DONE();
}
