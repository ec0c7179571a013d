/*
 * store.c - the table of databases and the claim on the data directory.
 * The cluster state (role, lease and fence, epoch, cluster ID, upstream,
 * lag, change notification) lives beside it in store_cluster.c.
 *
 * LAYOUT. <data.dir>/dbs/<dir>/ is one database (db.c). Its name is its
 * path in the mount ("app.db", "tenants/42/app.db"); <dir> is the name
 * itself at the root (LiteFS's layout) and the name escaped into one
 * component in a subdirectory (dbname.h: "tenants%2F42%2Fapp.db"). The
 * mount's directories live in <data.dir>/files/ (fusefs_whole.c): creating
 * a nested database creates its parent directories there, so a replica that
 * receives "tenants/42/app.db" shows tenants/42/. The table is an array in the order the databases
 * became known: a database's index never changes and it stays in the table until store_close,
 * dropped or not (it keeps its TXID), which is what lets the mount derive inode numbers from the
 * index (fusefs_inode.c).
 *
 * THE CLAIM is an flock(LOCK_EX|LOCK_NB) on the data directory itself, held
 * for the life of the process, so a second ltxfs on the same data directory
 * fails at once with a clear message and no extra file is needed (the layout
 * stays LiteFS's).
 *
 * START-UP (store_open, main thread, before the mount exists): claim the
 * directory, create dbs/, draw the node ID, load the cluster state, open
 * (recover) every database found, then delete the super-journals that
 * crashed multi-database transactions left behind and no child journal
 * still names.
 *
 * THREADS AND LOCKS. After store_open, FUSE workers, HTTP connections and
 * the replica thread look databases up and create them (a FUSE create, a
 * replica receiving a new database). store->mu guards the array and its
 * count; it is held across db_open only for a database being created, which
 * no other thread can see yet and which has nothing to recover.
 */
#include "store_int.h"

#include "ltxfs/dbname.h"
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
#include <unistd.h>

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
	return dbname_valid(name, strlen(name));
}

/* dbs/<dir> of the database called name, into buf. */
static int db_dir_path(struct store *s, const char *name, char *buf, size_t n)
{
	char comp[DBNAME_MAX * 3 + 1];
	int r = dbname_to_dir(name, comp, sizeof(comp));
	return r < 0 ? r : fs_path(buf, n, "%s/%s", s->dbs_dir, comp);
}

/* The mount directory holding a nested database, in files/ (mkdir -p). */
static int make_parent_dir(struct store *s, const char *name)
{
	char path[4096];
	const char *slash = strrchr(name, '/');
	if (!slash)
		return 0;
	int r =
	    fs_path(path, sizeof(path), "%s/files/%.*s", s->data_dir, (int)(slash - name), name);
	return r < 0 ? r : fs_mkdir_p(path, 0755);
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
	store_cluster_init(s, opt->replica);
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
	s->dbopt.followers = &s->followers;
	s->dbopt.change_ctx = s;
	store_cluster_load(s);

	d = opendir(path);
	if (!d) {
		r = -errno;
		goto fail;
	}
	struct dirent *de;
	while ((de = readdir(d))) {
		char dir[4096], name[DBNAME_MAX + 1];
		struct db *db = NULL;
		if (de->d_name[0] == '.' || dbname_from_dir(de->d_name, name, sizeof(name)) < 0)
			continue;
		if (fs_path(dir, sizeof(dir), "%s/%s", path, de->d_name) < 0)
			continue;
		r = db_open(&db, dir, name, false, &s->dbopt);
		if (r == -ENOTDIR)
			continue;
		if (r == 0 && db_exists(db))
			r = make_parent_dir(s, name);
		if (r < 0) {
			snprintf(errmsg, n, "cannot open database '%s': %s", name, strerror(-r));
			if (db)
				db_free(db);
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
		if (db_dir_path(s, db_name(s->dbs[i]), dir, sizeof(dir)) < 0)
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
	store_cluster_release(s);
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
	r = db_dir_path(s, name, dir, sizeof(dir));
	if (r == 0)
		r = make_parent_dir(s, name);
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
	char dir[4096];
	int r = db_dir_path(s, db, dir, sizeof(dir));
	return r < 0 ? r : fs_path(buf, n, "%s/mj%s", dir, hex);
}

void store_followers_add(struct store *s, int delta)
{
	__atomic_add_fetch(&s->followers, (unsigned)delta, __ATOMIC_RELAXED);
}
