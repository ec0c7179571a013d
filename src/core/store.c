/*
 * store.c - the table of databases and the claim on the data directory.
 *
 * The claim is an flock(LOCK_EX|LOCK_NB) on the data directory itself, held
 * for the life of the process, so a second ltxfs on the same data directory
 * fails at once with a clear message and no extra file is needed (the layout
 * stays LiteFS's).
 */
#include "ltxfs/store.h"
#include "ltxfs/clock.h"

#include "ltxfs/fsutil.h"
#include "ltxfs/log.h"
#include "ltxfs/sqlfmt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

struct store {
	pthread_mutex_t mu;
	char *data_dir;
	char *dbs_dir;
	char *mount_dir;
	int lock_fd;
	uint64_t node_id;
	struct db_options dbopt;
	struct db **dbs;
	size_t n, cap;

	/* cluster state, under cmu */
	pthread_mutex_t cmu;
	pthread_cond_t ccond;
	uint64_t seq;
	bool primary;
	char cluster_id[21];
	char upstream[256]; /* "" when not connected */
	int64_t primary_ms; /* primary clock of the last frame */
	int64_t local_ms;   /* local clock when it arrived */
	bool synced;
	bool caught_up;
	bool ready;	     /* READY received on the current stream (cleared when it ends) */
	uint64_t epoch;	     /* highest lease epoch seen (persisted in <data>/epoch) */
	int64_t until_ms;    /* CLOCK_MONOTONIC deadline of this primary's lease */
	bool fenced;	     /* a handoff is in progress: no commits */
	int64_t hold_until;  /* CLOCK_MONOTONIC: no commits before (adoption window) */
	bool term_committed; /* a commit happened since this node became primary */
	bool candidate;	     /* informational, for /info */
};

/* The fence (cmu held): primary, no handoff, inside the lease, past the adoption window. */
static bool writable_locked(const struct store *s)
{
	int64_t now = clock_mono_ms();
	return s->primary && !s->fenced && now < s->until_ms && now >= s->hold_until;
}

/* db_options.may_commit: the write fence. */
static bool store_may_commit(void *ctx, uint64_t *epoch)
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

static void store_on_change(void *ctx)
{
	struct store *s = ctx;
	pthread_mutex_lock(&s->cmu);
	s->seq++;
	pthread_cond_broadcast(&s->ccond);
	pthread_mutex_unlock(&s->cmu);
}

static int store_add(struct store *s, struct db *db)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		struct db **d = realloc(s->dbs, cap * sizeof(*d));
		if (!d)
			return -ENOMEM;
		s->dbs = d;
		s->cap = cap;
	}
	db_set_index(db, s->n);
	s->dbs[s->n++] = db;
	return 0;
}

static bool name_ok(const char *name)
{
	return name[0] && strcmp(name, ".") && strcmp(name, "..") && !strchr(name, '/') &&
	       strlen(name) < 200;
}

/*
 * pager_delsuper's rule: a super-journal may go only when none of the child
 * journals it lists still names it. Children on ltxfs were recovered already;
 * a child elsewhere (a database not on ltxfs) may still be hot.
 */
static bool super_journal_in_use(struct store *s, const char *db, int dfd, const char *file)
{
	char *buf = NULL, recorded[4096], name[4096];
	size_t len = 0;
	bool used = false;
	if (!s->mount_dir ||
	    fs_path(recorded, sizeof(recorded), "%s/%s-%s", s->mount_dir, db, file) < 0)
		return true; /* cannot tell: keep it */
	int fd = openat(dfd, file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (fs_read_file(path, 1 << 20, &buf, &len) < 0) {
		close(fd);
		return true;
	}
	close(fd);
	for (size_t off = 0; off < len && !used;) {
		const char *child = buf + off;
		size_t cl = strnlen(child, len - off);
		off += cl + 1;
		if (cl == 0 || (strncmp(child, s->mount_dir, strlen(s->mount_dir)) == 0))
			continue;
		int cfd = open(child, O_RDONLY | O_CLOEXEC);
		if (cfd < 0)
			continue;
		if (journal_super_name(cfd, name, sizeof(name)) == 1 && strcmp(name, recorded) == 0)
			used = true;
		close(cfd);
	}
	free(buf);
	return used;
}

int store_open(struct store **ret, const struct store_options *opt, char *errmsg, size_t n)
{
	struct store *s = calloc(1, sizeof(*s));
	char path[4096];
	DIR *d = NULL;
	int r;
	if (!s)
		return -ENOMEM;
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->cmu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->ccond, &ca);
	pthread_condattr_destroy(&ca);
	s->primary = !opt->replica;
	s->until_ms = INT64_MAX; /* a static primary's lease never ends */
	s->lock_fd = -1;
	s->data_dir = strdup(opt->data_dir);
	if (!s->data_dir) {
		r = -ENOMEM;
		goto fail;
	}
	r = fs_mkdir_p(opt->data_dir, 0755);
	if (r < 0) {
		snprintf(errmsg, n, "cannot create data directory '%s': %s", opt->data_dir,
			 strerror(-r));
		goto fail;
	}
	s->lock_fd = open(opt->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->lock_fd < 0 || flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		r = -errno;
		snprintf(errmsg, n,
			 r == -EWOULDBLOCK
			     ? "data directory '%s' is in use by another ltxfs process"
			     : "cannot lock data directory '%s'",
			 opt->data_dir);
		if (r == -EWOULDBLOCK)
			r = -EBUSY;
		goto fail;
	}
	r = fs_path(path, sizeof(path), "%s/dbs", opt->data_dir);
	if (r == 0)
		r = fs_mkdir_p(path, 0755);
	if (r < 0) {
		snprintf(errmsg, n, "cannot create '%s': %s", path, strerror(-r));
		goto fail;
	}
	s->dbs_dir = strdup(path);
	if (!s->dbs_dir) {
		r = -ENOMEM;
		goto fail;
	}
	if (getrandom(&s->node_id, sizeof(s->node_id), 0) != sizeof(s->node_id)) {
		r = -errno;
		goto fail;
	}
	s->dbopt.compress = opt->compress;
	if (opt->mount_dir) {
		s->mount_dir = strdup(opt->mount_dir);
		if (!s->mount_dir) {
			r = -ENOMEM;
			goto fail;
		}
		s->dbopt.mount_dir = s->mount_dir;
	}
	s->dbopt.node_id = s->node_id;
	s->dbopt.replica = opt->replica;
	s->dbopt.on_change = store_on_change;
	s->dbopt.may_commit = store_may_commit;
	s->dbopt.change_ctx = s;
	{
		char ep[4096], *buf = NULL;
		size_t len = 0;
		if (fs_path(ep, sizeof(ep), "%s/epoch", opt->data_dir) == 0 &&
		    fs_read_file(ep, 64, &buf, &len) == 0) {
			s->epoch = strtoull(buf, NULL, 10);
			free(buf);
		}
	}
	{
		char cid[4096], *buf = NULL;
		size_t len = 0;
		if (fs_path(cid, sizeof(cid), "%s/clusterid", opt->data_dir) == 0 &&
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

	d = opendir(path);
	if (!d) {
		r = -errno;
		goto fail;
	}
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || !name_ok(de->d_name))
			continue;
		char dir[4096];
		struct db *db;
		if (fs_path(dir, sizeof(dir), "%s/%s", path, de->d_name) < 0)
			continue;
		r = db_open(&db, dir, de->d_name, false, &s->dbopt);
		if (r == -ENOTDIR)
			continue;
		if (r < 0) {
			snprintf(errmsg, n, "cannot open database '%s': %s", de->d_name,
				 strerror(-r));
			goto fail;
		}
		r = store_add(s, db);
		if (r < 0) {
			db_free(db);
			goto fail;
		}
	}
	closedir(d);
	d = NULL;
	/*
	 * Every journal has been recovered; a super-journal left by a crash is
	 * now garbage (SQLite deletes it once its journals are finalized).
	 */
	for (size_t i = 0; i < s->n; i++) {
		char dir[4096];
		if (fs_path(dir, sizeof(dir), "%s/%s", path, db_name(s->dbs[i])) < 0)
			continue;
		DIR *dd = opendir(dir);
		if (!dd)
			continue;
		while ((de = readdir(dd))) {
			if (strncmp(de->d_name, "mj", 2) != 0)
				continue;
			if (super_journal_in_use(s, db_name(s->dbs[i]), dirfd(dd), de->d_name))
				continue;
			if (unlinkat(dirfd(dd), de->d_name, 0) == 0)
				log_info("db '%s': removed stale super-journal %s",
					 db_name(s->dbs[i]), de->d_name);
		}
		closedir(dd);
	}
	*ret = s;
	return 0;
fail:
	if (d)
		closedir(d);
	store_close(s);
	return r;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->n; i++)
		db_free(s->dbs[i]);
	free(s->dbs);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->cmu);
	pthread_cond_destroy(&s->ccond);
	free(s->data_dir);
	free(s->dbs_dir);
	free(s->mount_dir);
	free(s);
}

uint64_t store_node_id(const struct store *s)
{
	return s->node_id;
}

const char *store_data_dir(const struct store *s)
{
	return s->data_dir;
}

struct db *store_find(struct store *s, const char *name)
{
	struct db *found = NULL;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->n && !found; i++)
		if (strcmp(db_name(s->dbs[i]), name) == 0)
			found = s->dbs[i];
	pthread_mutex_unlock(&s->mu);
	return found;
}

int store_get_or_create(struct store *s, const char *name, struct db **ret)
{
	char dir[4096];
	int r = 0;
	if (!name_ok(name))
		return -EINVAL;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(db_name(s->dbs[i]), name) == 0) {
			*ret = s->dbs[i];
			goto out;
		}
	struct db *db;
	r = fs_path(dir, sizeof(dir), "%s/%s", s->dbs_dir, name);
	if (r == 0)
		r = db_open(&db, dir, name, true, &s->dbopt);
	if (r == 0) {
		r = store_add(s, db);
		if (r < 0)
			db_free(db);
		else
			*ret = db;
	}
out:
	pthread_mutex_unlock(&s->mu);
	return r;
}

size_t store_count(struct store *s)
{
	pthread_mutex_lock(&s->mu);
	size_t n = s->n;
	pthread_mutex_unlock(&s->mu);
	return n;
}

struct db *store_at(struct store *s, size_t i)
{
	struct db *db = NULL;
	pthread_mutex_lock(&s->mu);
	if (i < s->n)
		db = s->dbs[i];
	pthread_mutex_unlock(&s->mu);
	return db;
}

int store_super_journal_path(struct store *s, const char *db, const char *hex, char *buf, size_t n)
{
	return fs_path(buf, n, "%s/%s/mj%s", s->dbs_dir, db, hex);
}

/* ------------------------------------------------------- cluster state */

void store_set_primary(struct store *s, bool primary)
{
	pthread_mutex_lock(&s->cmu);
	s->primary = primary;
	if (primary)
		s->upstream[0] = '\0';
	s->seq++;
	pthread_cond_broadcast(&s->ccond);
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

int store_become_primary(struct store *s, uint64_t epoch, int64_t until_ms, int64_t hold_ms)
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
	s->hold_until = hold_ms > 0 ? clock_mono_ms() + hold_ms : 0;
	s->term_committed = false;
	s->fenced = false;
	s->primary = true;
	s->upstream[0] = '\0';
	s->seq++;
	pthread_cond_broadcast(&s->ccond);
	pthread_mutex_unlock(&s->cmu);
	return 0;
}

void store_extend_lease(struct store *s, int64_t until_ms)
{
	pthread_mutex_lock(&s->cmu);
	if (until_ms > s->until_ms)
		s->until_ms = until_ms;
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
	pthread_mutex_unlock(&s->cmu);
}

bool store_accepts_writes(struct store *s)
{
	pthread_mutex_lock(&s->cmu);
	bool ok = writable_locked(s);
	pthread_mutex_unlock(&s->cmu);
	return ok;
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
	pthread_mutex_lock(&s->cmu);
	uint64_t v = s->seq;
	pthread_mutex_unlock(&s->cmu);
	return v;
}

uint64_t store_wait_change(struct store *s, uint64_t seen, int timeout_ms)
{
	struct timespec ts = clock_deadline(CLOCK_MONOTONIC, timeout_ms);
	pthread_mutex_lock(&s->cmu);
	while (s->seq == seen)
		if (pthread_cond_timedwait(&s->ccond, &s->cmu, &ts) != 0)
			break;
	uint64_t v = s->seq;
	pthread_mutex_unlock(&s->cmu);
	return v;
}

void store_kick(struct store *s)
{
	store_on_change(s);
}
