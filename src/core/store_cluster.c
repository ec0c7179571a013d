/*
 * store_cluster.c - the cluster state of this node: its role, the lease
 * and the write fence, the highest epoch seen, the cluster ID, the primary
 * it follows and how far behind it is, and the change counter that streams
 * and waiters sleep on. The table of databases is store.c's; both halves
 * share struct store (store_int.h), since every database reaches this
 * state through the callbacks store_open gives it (may_commit, on_change).
 *
 * ROLE.
 *
 *   start    primary (a static-lease candidate: the lease never ends) or
 *            replica (everything else)
 *   replica  -> primary   store_become_primary (the elector won the lease:
 *                         the epoch is made durable first, then the
 *                         deadline, the adoption window, no fence)
 *   primary  -> replica   store_set_primary(false) (lease lost, handed
 *                         over, or stopping)
 *   primary  fenced       store_set_fenced (a handoff in progress)
 *            renewed      store_extend_lease (the deadline only moves on)
 *
 * THE FENCE. A commit is allowed only if this node is primary, not fenced,
 * before its lease deadline and past the start of its term (writable_locked).
 * The engine asks at every commit (db_fence calls store_may_commit, which
 * also marks the term as having committed, which ends adoption for good);
 * the FUSE layer asks before every write (store_accepts_writes) and, when
 * the answer is "not yet", waits for it (store_await_writes).
 *
 * THE START OF A TERM. An elected primary holds writes back until both the
 * adoption window (hold_until, 500 ms after the election) has passed and no
 * adoption offer is queued or running (adopting, counted by
 * store_adopt_begin/end), but no later than adopt_until (a cap: a replica
 * that stalls its adoption cannot keep the primary read-only). Once over,
 * the start is over for the rest of the term (opened): an offer that comes
 * later does not close the fence again, so acceptsWrites and isPrimary never
 * go back to false while the node keeps its lease. A handoff's successor and
 * a static primary start opened.
 *
 *   elected --(window passed, no adoption, or the cap)--> opened
 *   opened  --(fenced / past the deadline)--> not writable, still primary
 *   any     --(store_set_primary(false))--> replica: waiters refuse at once
 *
 * docs/leases.md.
 *
 * FILES. <data.dir>/epoch holds the highest lease epoch seen, decimal;
 * <data.dir>/clusterid the cluster ID, "LFSC" + 16 uppercase hex digits, as
 * LiteFS. Both are replaced atomically (fs_write_atomic) before the value
 * is used, and read by store_cluster_load at start-up.
 *
 * UPSTREAM (a replica). The replica thread sets the primary's hostname when
 * its stream connects and clears it when the stream ends; READY marks it
 * caught up; each frame's primary timestamp feeds the lag (.lag, /info).
 *
 * THREADS AND LOCKS. Any thread: the elector (role, lease, fence, epoch),
 * the replica thread (upstream, lag, epoch, cluster ID), HTTP connections
 * and FUSE workers (reads; a FUSE worker may wait in store_await_writes),
 * committing threads through db.c's callbacks.
 * store->cmu guards all of it. It is a leaf: taken last, under db->mu by
 * the callbacks, held for a few instructions, never across I/O (the epoch
 * and cluster ID files are written before it is taken). ccond wakes the
 * writers waiting in store_await_writes. The change counter is apart from
 * cmu (CHANGE COUNTER below): commits bump it without a lock.
 */
#include "store_int.h"

#include "ltxfs/clock.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/log.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

void store_cluster_init(struct store *s, bool replica)
{
	pthread_mutex_init(&s->cmu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->ccond, &ca);
	pthread_condattr_destroy(&ca);
	/* writers first: committing workers' read locks must not starve
	 * store_set_pusher at shutdown */
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&s->push_lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	s->primary = !replica;
	s->opened = true;	 /* a static primary has no start of term */
	s->until_ms = INT64_MAX; /* a static primary's lease never ends */
}

void store_cluster_load(struct store *s)
{
	/* the highest epoch seen */
	{
		char ep[4096], *buf = NULL;
		size_t len = 0;
		if (fs_path(ep, sizeof(ep), "%s/epoch", s->data_dir) == 0 &&
		    fs_read_file(ep, 64, &buf, &len) == 0) {
			s->epoch = strtoull(buf, NULL, 10);
			free(buf);
		}
	}
	/* the cluster ID */
	{
		char cid[4096], *buf = NULL;
		size_t len = 0;
		if (fs_path(cid, sizeof(cid), "%s/clusterid", s->data_dir) == 0 &&
		    fs_read_file(cid, 64, &buf, &len) == 0) {
			while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
				buf[--len] = '\0';
			if (store_cluster_id_valid(buf))
				memcpy(s->cluster_id, buf, 21);
			else
				log_warn("ignoring malformed cluster ID in '%s'", cid);
		}
		free(buf);
	}
}

void store_cluster_release(struct store *s)
{
	pthread_mutex_destroy(&s->cmu);
	pthread_cond_destroy(&s->ccond);
	pthread_rwlock_destroy(&s->push_lock);
}

/* The start of the term is over (cmu held): see THE START OF A TERM. */
static bool opened_locked(struct store *s, int64_t now)
{
	if (!s->opened && now >= s->hold_until && (s->adopting == 0 || now >= s->adopt_until))
		s->opened = true;
	return s->opened;
}

/* The fence (cmu held): primary, no handoff, inside the lease, past the start of the term. */
static bool writable_locked(struct store *s)
{
	int64_t now = clock_mono_ms();
	return s->primary && !s->fenced && now < s->until_ms && opened_locked(s, now);
}

/* db_options.may_commit: the write fence. */
bool store_may_commit(void *ctx, uint64_t *epoch)
{
	struct store *s = ctx;
	pthread_mutex_lock(&s->cmu);
	bool ok = writable_locked(s);
	if (ok)
		s->term_committed = true;
	*epoch = s->epoch;
	pthread_mutex_unlock(&s->cmu);
	return ok;
}

/*
 * CHANGE COUNTER. Bumped at every commit, so it takes no lock: the counter
 * is a futex word. A waiter announces itself in chg_waiters before it
 * sleeps, and the kernel sleeps it only if the counter still holds the
 * value it saw; the bumper increments the counter before it reads
 * chg_waiters (both sequentially consistent), so either the waiter sees
 * the new value or the bumper sees the waiter. A commit with nobody
 * waiting costs one atomic increment.
 */
static void wake(struct store *s)
{
	syscall(SYS_futex, &s->chg, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static void changed(struct store *s)
{
	__atomic_add_fetch(&s->chg, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&s->chg_waiters, __ATOMIC_SEQ_CST) > 0 ||
	    __atomic_load_n(&s->chg_standby, __ATOMIC_SEQ_CST) > 0)
		wake(s);
}

/*
 * DEFERRED WAKE-UPS. Waking a sleeping thread costs more than most commits
 * on a virtual machine (an IPI, a switch, the sleeper's own return to the
 * kernel), and on a primary the one thread woken at every commit is the
 * sender, which then writes a few hundred bytes to each replica's socket.
 * A FUSE worker that may commit brackets its operation with
 * store_defer_begin and store_defer_end; a commit in between bumps the
 * counter but wakes nobody (defer_owed, thread-local). store_defer_end,
 * after the reply, hands the change to the pusher (the HTTP server's
 * inline send), which does what the sender would have done if it can do so
 * without waiting; the waiters are woken unless the pusher did it all and
 * the only sleepers are standby ones (store_wait_change_standby: the
 * sender). A sleeper that is not asleep yet sees the counter move, as
 * always; one that announced itself before the bump is seen by
 * store_defer_end's loads, which come after the bump.
 */
static _Thread_local struct store *defer_store;
static _Thread_local bool defer_owed;

void store_defer_begin(struct store *s)
{
	defer_store = s;
	defer_owed = false;
}

void store_defer_end(struct store *s)
{
	bool owed = defer_owed && defer_store == s;
	defer_store = NULL;
	defer_owed = false;
	if (!owed)
		return;
	uint32_t others = __atomic_load_n(&s->chg_waiters, __ATOMIC_SEQ_CST);
	uint32_t standby = __atomic_load_n(&s->chg_standby, __ATOMIC_SEQ_CST);
	if (others == 0 && standby == 0)
		return; /* everyone is awake and will see the counter */
	bool done = false;
	if (others == 0) {
		pthread_rwlock_rdlock(&s->push_lock);
		done = s->push && s->push(s->push_ctx);
		pthread_rwlock_unlock(&s->push_lock);
	}
	if (!done)
		wake(s);
}

void store_set_pusher(struct store *s, bool (*push)(void *ctx), void *ctx)
{
	pthread_rwlock_wrlock(&s->push_lock); /* waits for a push under way */
	s->push = push;
	s->push_ctx = ctx;
	pthread_rwlock_unlock(&s->push_lock);
}

void store_on_change(void *ctx)
{
	struct store *s = ctx;
	if (defer_store == s) {
		__atomic_add_fetch(&s->chg, 1, __ATOMIC_SEQ_CST);
		defer_owed = true;
		return;
	}
	changed(s);
}

/* cmu held: bump the counter and wake the writers in store_await_writes too. */
static void changed_wake_all(struct store *s)
{
	changed(s);
	pthread_cond_broadcast(&s->ccond);
}

/* ---------------------------------------------------------------- role */

void store_set_primary(struct store *s, bool primary)
{
	pthread_mutex_lock(&s->cmu);
	s->primary = primary;
	if (primary)
		s->upstream[0] = '\0';
	changed_wake_all(s);
	pthread_mutex_unlock(&s->cmu);
}

bool store_is_primary(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	bool p = s->primary;
	pthread_mutex_unlock(&s->cmu);
	return p;
}

static int store_write_epoch(struct store *s, uint64_t epoch)
{
	char path[4096], line[32];
	int r = fs_path(path, sizeof(path), "%s/epoch", s->data_dir);
	if (r < 0)
		return r;
	snprintf(line, sizeof(line), "%llu\n", (unsigned long long)epoch);
	return fs_write_atomic(path, line, strlen(line));
}

int store_become_primary(struct store *s, uint64_t epoch, int64_t until_ms, int64_t hold_ms,
			 int64_t adopt_max_ms)
{
	pthread_mutex_lock(&s->cmu);
	uint64_t cur = s->epoch;
	pthread_mutex_unlock(&s->cmu);
	if (epoch < cur)
		return -ESTALE;
	if (epoch > cur) {
		int r = store_write_epoch(s, epoch); /* durable before any write */
		if (r < 0)
			return r;
	}
	pthread_mutex_lock(&s->cmu);
	s->epoch = epoch;
	s->until_ms = until_ms;
	int64_t now = clock_mono_ms();
	s->hold_until = hold_ms > 0 ? now + hold_ms : 0;
	s->adopt_until = hold_ms > 0 ? now + (adopt_max_ms > hold_ms ? adopt_max_ms : hold_ms) : 0;
	s->opened = hold_ms <= 0;
	s->term_committed = false;
	s->fenced = false;
	s->primary = true;
	s->upstream[0] = '\0';
	changed_wake_all(s);
	pthread_mutex_unlock(&s->cmu);
	return 0;
}

void store_extend_lease(struct store *s, int64_t until_ms)
{
	pthread_mutex_lock(&s->cmu);
	if (until_ms > s->until_ms)
		s->until_ms = until_ms;
	pthread_cond_broadcast(&s->ccond); /* writers waiting past the deadline */
	pthread_mutex_unlock(&s->cmu);
}

int64_t store_lease_until(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	int64_t v = s->until_ms;
	pthread_mutex_unlock(&s->cmu);
	return v;
}

void store_set_fenced(struct store *s, bool fenced)
{
	pthread_mutex_lock(&s->cmu);
	s->fenced = fenced;
	pthread_cond_broadcast(&s->ccond); /* writers waiting for a handoff's outcome */
	pthread_mutex_unlock(&s->cmu);
}

bool store_accepts_writes(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	bool ok = writable_locked(s);
	pthread_mutex_unlock(&s->cmu);
	return ok;
}

bool store_primary_ready(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	bool v = s->primary && opened_locked(s, clock_mono_ms());
	pthread_mutex_unlock(&s->cmu);
	return v;
}

/* Why a primary does not accept writes now (cmu held, s->primary). */
static const char *pending_why_locked(struct store *s, int64_t now)
{
	if (s->fenced)
		return "a handoff to another node is in progress";
	if (now >= s->until_ms)
		return "its lease is past its local deadline, waiting for a renewal";
	if (now < s->hold_until)
		return "the adoption window after its election";
	return "adoption of transactions a replica received from the previous primary";
}

int store_await_writes(struct store *s, int timeout_ms, bool (*give_up)(void *), void *ctx,
		       const char **why)
{
	int64_t end = clock_mono_ms() + timeout_ms;
	int r;
	*why = NULL;
	pthread_mutex_lock(&s->cmu);
	for (;;) {
		if (writable_locked(s)) {
			*why = NULL;
			r = 0;
			break;
		}
		int64_t now = clock_mono_ms();
		if (!s->primary) {
			*why = "this node is not the primary";
			r = -EROFS;
			break;
		}
		*why = pending_why_locked(s, now);
		if (give_up && give_up(ctx)) {
			r = -ECANCELED;
			break;
		}
		if (now >= end) {
			r = -ETIMEDOUT;
			break;
		}
		/* wake at the deadline or at the next time the start of the term may end */
		int64_t wake = end;
		if (!s->opened && s->hold_until > now && s->hold_until < wake)
			wake = s->hold_until;
		if (!s->opened && s->adopt_until > now && s->adopt_until < wake)
			wake = s->adopt_until;
		struct timespec ts = clock_deadline(CLOCK_MONOTONIC, wake - now);
		pthread_cond_timedwait(&s->ccond, &s->cmu, &ts);
	}
	pthread_mutex_unlock(&s->cmu);
	return r;
}

void store_write_state(struct store *s, bool *primary, bool *ready, bool *writable,
		       const char **why)
{
	pthread_mutex_lock(&s->cmu);
	int64_t now = clock_mono_ms();
	*primary = s->primary;
	*ready = s->primary && opened_locked(s, now);
	*writable = writable_locked(s);
	*why = *writable     ? NULL
	       : !s->primary ? "this node is not the primary"
			     : pending_why_locked(s, now);
	pthread_mutex_unlock(&s->cmu);
}

void store_adopt_begin(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	s->adopting++;
	pthread_mutex_unlock(&s->cmu);
}

void store_adopt_end(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	if (s->adopting > 0)
		s->adopting--;
	/* the start of the term may be over: /info, .primary, /events, waiters */
	changed_wake_all(s);
	pthread_mutex_unlock(&s->cmu);
}

bool store_can_adopt(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	bool v = s->primary && !s->term_committed;
	pthread_mutex_unlock(&s->cmu);
	return v;
}

uint64_t store_epoch(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	uint64_t v = s->epoch;
	pthread_mutex_unlock(&s->cmu);
	return v;
}

int store_note_epoch(struct store *s, uint64_t epoch)
{
	pthread_mutex_lock(&s->cmu);
	uint64_t cur = s->epoch;
	pthread_mutex_unlock(&s->cmu);
	if (epoch < cur)
		return -ESTALE;
	if (epoch == cur)
		return 0;
	int r = store_write_epoch(s, epoch);
	if (r < 0)
		return r;
	pthread_mutex_lock(&s->cmu);
	if (epoch > s->epoch)
		s->epoch = epoch;
	pthread_mutex_unlock(&s->cmu);
	return 0;
}

void store_set_ready(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	s->ready = s->upstream[0] != '\0';
	pthread_mutex_unlock(&s->cmu);
}

bool store_has_data(struct store *s)
{
	size_t n = store_count(s);
	for (size_t i = 0; i < n; i++) {
		struct db_pos p;
		db_get_pos(store_at(s, i), &p);
		if (p.txid > 0)
			return true;
	}
	return false;
}

bool store_caught_up(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	bool v = s->upstream[0] && s->ready;
	pthread_mutex_unlock(&s->cmu);
	return v;
}

void store_set_candidate(struct store *s, bool candidate)
{
	pthread_mutex_lock(&s->cmu);
	s->candidate = candidate;
	pthread_mutex_unlock(&s->cmu);
}

bool store_is_candidate(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	bool v = s->candidate;
	pthread_mutex_unlock(&s->cmu);
	return v;
}

bool store_cluster_id_valid(const char *id)
{
	if (!id || strlen(id) != 20 || strncmp(id, "LFSC", 4) != 0)
		return false;
	for (int i = 4; i < 20; i++)
		if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'A' && id[i] <= 'F')))
			return false;
	return true;
}

void store_cluster_id(struct store *s, char buf[21])
{
	pthread_mutex_lock(&s->cmu);
	memcpy(buf, s->cluster_id, 21);
	pthread_mutex_unlock(&s->cmu);
}

int store_set_cluster_id(struct store *s, const char *id)
{
	char path[4096], line[32];
	if (!store_cluster_id_valid(id))
		return -EINVAL;
	int r = fs_path(path, sizeof(path), "%s/clusterid", s->data_dir);
	if (r < 0)
		return r;
	snprintf(line, sizeof(line), "%s\n", id);
	r = fs_write_atomic(path, line, strlen(line));
	if (r < 0)
		return r;
	pthread_mutex_lock(&s->cmu);
	memcpy(s->cluster_id, id, 21);
	pthread_mutex_unlock(&s->cmu);
	return 0;
}

int store_ensure_cluster_id(struct store *s)
{
	char id[21];
	uint64_t v;
	store_cluster_id(s, id);
	if (id[0])
		return 0;
	if (getrandom(&v, sizeof(v), 0) != sizeof(v))
		return -errno;
	snprintf(id, sizeof(id), "LFSC%016llX", (unsigned long long)v);
	return store_set_cluster_id(s, id);
}

void store_set_upstream(struct store *s, const char *hostname)
{
	pthread_mutex_lock(&s->cmu);
	snprintf(s->upstream, sizeof(s->upstream), "%s", hostname ? hostname : "");
	if (!hostname)
		s->caught_up = s->ready = false;
	pthread_mutex_unlock(&s->cmu);
}

int store_upstream(struct store *s, char *buf, size_t n)
{
	pthread_mutex_lock(&s->cmu);
	int r = s->upstream[0] ? 0 : -ENOENT;
	if (r == 0)
		snprintf(buf, n, "%s", s->upstream);
	pthread_mutex_unlock(&s->cmu);
	return r;
}

void store_note_primary_time(struct store *s, int64_t primary_ms, bool caught_up)
{
	pthread_mutex_lock(&s->cmu);
	s->primary_ms = primary_ms;
	s->local_ms = clock_wall_ms();
	s->synced = true;
	s->caught_up = caught_up;
	pthread_mutex_unlock(&s->cmu);
}

/*
 * While frames keep arriving, the lag is the delay of the last one (its
 * primary timestamp against the local clock, so clock skew shows); once no
 * frame has come for two heartbeat intervals, it is the time since the
 * primary's last timestamp and grows.
 */
int64_t store_lag_ms(struct store *s)
{
	int64_t lag;
	pthread_mutex_lock(&s->cmu);
	if (s->primary)
		lag = 0;
	else if (!s->synced)
		lag = INT32_MAX;
	else {
		int64_t now = clock_wall_ms();
		if (s->upstream[0] && now - s->local_ms <= 2000)
			lag = s->local_ms - s->primary_ms;
		else
			lag = now - s->primary_ms;
		if (lag < 0)
			lag = 0;
		if (lag > INT32_MAX)
			lag = INT32_MAX;
	}
	pthread_mutex_unlock(&s->cmu);
	return lag;
}

uint64_t store_change_seq(struct store *s)
{
	return __atomic_load_n(&s->chg, __ATOMIC_SEQ_CST);
}

static uint64_t wait_change(struct store *s, uint32_t *count, uint64_t seen, int timeout_ms)
{
	int64_t end = clock_mono_ns() + (int64_t)timeout_ms * 1000000;
	uint32_t v;
	__atomic_add_fetch(count, 1, __ATOMIC_SEQ_CST);
	while ((v = __atomic_load_n(&s->chg, __ATOMIC_SEQ_CST)) == (uint32_t)seen) {
		int64_t left = end - clock_mono_ns();
		if (left <= 0)
			break;
		struct timespec ts = {(time_t)(left / 1000000000), (long)(left % 1000000000)};
		/* sleeps only while the counter still holds seen (EAGAIN otherwise) */
		syscall(SYS_futex, &s->chg, FUTEX_WAIT_PRIVATE, (uint32_t)seen, &ts, NULL, 0);
	}
	__atomic_sub_fetch(count, 1, __ATOMIC_SEQ_CST);
	return v;
}

uint64_t store_wait_change(struct store *s, uint64_t seen, int timeout_ms)
{
	return wait_change(s, &s->chg_waiters, seen, timeout_ms);
}

uint64_t store_wait_change_standby(struct store *s, uint64_t seen, int timeout_ms)
{
	return wait_change(s, &s->chg_standby, seen, timeout_ms);
}

void store_kick(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	changed_wake_all(s); /* writers waiting may have to give way */
	pthread_mutex_unlock(&s->cmu);
}
