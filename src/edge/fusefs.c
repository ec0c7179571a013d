/*
 * fusefs.c - the mount: a flat namespace over the databases of the store.
 *
 * NAMES. "<db>" is a database; "<db>-journal", "<db>-wal", "<db>-shm" are its
 * SQLite companions; "<db>-pos" is a virtual 34-byte file with the position;
 * "<db>-mj<HEX>" is a SQLite super-journal (multi-database commits over
 * ATTACH), passed through to dbs/<db>/mj<HEX>. Directories are refused with
 * EPERM.
 *
 * INODES. 1 is the root. Database i owns inodes 16 + 8i + kind (kind is enum
 * db_file), so an inode number never needs a table lookup and stays valid for
 * the life of the process; each (re)creation of a journal, WAL or SHM bumps a
 * generation so the kernel never confuses the new file with the old one.
 * Super-journals get numbers from 2^40 upward. FORGET needs no bookkeeping.
 *
 * CACHING. Every change to these files arrives through this mount, so the
 * kernel may cache what it can: file data (keep_cache, no automatic
 * invalidation), attributes and entries, including negative entries (the
 * "-journal" and "-wal" lookups SQLite makes at every read transaction are
 * answered by the kernel). The virtual -pos file is direct_io.
 *
 * LOCKS. No getlk/setlk/flock handlers: the kernel keeps POSIX locks itself,
 * exactly as on a local file system (see docs/architecture.md).
 *
 * THREADS. libfuse's multi-threaded loop; each handler replies exactly once
 * and does no network I/O.
 */
#define FUSE_USE_VERSION 312
#include "ltxfs/fusefs.h"
#include "ltxfs/clock.h"

#include "ltxfs/db.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/log.h"
#include "ltxfs/metrics.h"
#include "ltxfs/sqlfmt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mount.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define INO_ROOT    1
#define INO_PRIMARY 2 /* .primary */
#define INO_LAG	    3 /* .lag */
#define INO_DB_BASE 16
#define INO_MJ_BASE (UINT64_C(1) << 40)
#define KIND_MJ	    DB_FILE_N
#define KIND_VIRT   (DB_FILE_N + 1) /* .primary / .lag: handle->db is NULL */

#define CACHE_TIMEOUT 86400.0

struct mj {
	struct mj *next;
	fuse_ino_t ino;
	char name[256]; /* full mount name */
	char db[256];
	char hex[32];
};

/* A kernel dentry to invalidate once the current request has been answered. */
struct inval {
	struct inval *next;
	char name[512];
};

/* An open file. Live handles are listed so that the ones the kernel never
 * releases (after the connection is aborted) are freed at stop. */
struct handle {
	struct handle *prev, *next;
	int fd;
	struct db *db;
	int kind;
};

struct fusefs {
	struct store *store;
	/* notifier: invalidations cannot run inside a handler (the kernel holds
	 * the directory lock for create/unlink), so a thread sends them */
	pthread_t notifier;
	bool notifier_started;
	bool notifier_stop;
	pthread_cond_t notifier_cond;
	struct inval *invals, **invals_tail;
	struct fuse_session *se;
	pthread_t thread;
	bool thread_started;
	volatile bool done;
	char *mountpoint;
	unsigned max_threads;
	dev_t conn_dev; /* the mount's st_dev: names its /sys/fs/fuse/connections entry */

	pthread_mutex_t mu; /* generations and super-journals */
	uint64_t (*gen)[DB_FILE_N];
	size_t ngen;
	struct mj *mjs;
	uint64_t mj_next;
	struct handle handles; /* list head */
	volatile bool stopping;
};

/* Writes are refused on a replica; the -shm file is local state and exempt. */
static bool replica_refuses(struct fusefs *fs, int kind)
{
	return kind != DB_FILE_SHM && !store_accepts_writes(fs->store);
}

/*
 * Except on a node that lost the lease while a rollback-mode transaction was
 * open: SQLite may then write the database and the journal to roll that
 * transaction back (the fence in db.c refuses any commit).
 */
static bool refuses_write(struct fusefs *fs, struct db *db, int kind)
{
	if (!replica_refuses(fs, kind))
		return false;
	return !((kind == DB_FILE_DB || kind == DB_FILE_JOURNAL) && db && db_txn_pending(db));
}

/* --------------------------------------------------------------- names */

struct fname {
	int kind;
	char db[256];
	char hex[32];
};

static bool is_hex(const char *s)
{
	if (!*s || strlen(s) > 16)
		return false;
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'A' && *s <= 'F') ||
		      (*s >= 'a' && *s <= 'f')))
			return false;
	return true;
}

/* 0, or -ENOENT for names that can never exist, -ENAMETOOLONG. */
static int parse_name(const char *name, struct fname *f)
{
	static const struct {
		const char *suffix;
		int kind;
	} sfx[] = {{"-journal", DB_FILE_JOURNAL},
		   {"-wal", DB_FILE_WAL},
		   {"-shm", DB_FILE_SHM},
		   {"-pos", DB_FILE_POS}};
	size_t len = strlen(name);
	memset(f, 0, sizeof(*f));
	if (len == 0 || name[0] == '.')
		return -ENOENT;
	if (len >= sizeof(f->db))
		return -ENAMETOOLONG;
	for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
		size_t sl = strlen(sfx[i].suffix);
		if (len > sl && strcmp(name + len - sl, sfx[i].suffix) == 0) {
			memcpy(f->db, name, len - sl);
			f->kind = sfx[i].kind;
			return 0;
		}
	}
	const char *mj = strrchr(name, '-');
	if (mj && mj > name && strncmp(mj, "-mj", 3) == 0 && is_hex(mj + 3)) {
		memcpy(f->db, name, (size_t)(mj - name));
		snprintf(f->hex, sizeof(f->hex), "%s", mj + 3);
		f->kind = KIND_MJ;
		return 0;
	}
	if (len > 5 && strcmp(name + len - 5, "-lock") == 0)
		return -ENOENT; /* LiteFS's HALT lock file: not supported */
	memcpy(f->db, name, len);
	f->kind = DB_FILE_DB;
	return 0;
}

static fuse_ino_t db_ino(struct db *db, int kind)
{
	return INO_DB_BASE + (fuse_ino_t)db_index(db) * 8 + (fuse_ino_t)kind;
}

static uint64_t gen_get(struct fusefs *fs, struct db *db, int kind, bool bump)
{
	size_t idx = db_index(db);
	uint64_t g = 0;
	pthread_mutex_lock(&fs->mu);
	if (idx >= fs->ngen) {
		size_t n = idx + 16;
		void *p = realloc(fs->gen, n * sizeof(*fs->gen));
		if (p) {
			fs->gen = p;
			memset(fs->gen + fs->ngen, 0, (n - fs->ngen) * sizeof(*fs->gen));
			fs->ngen = n;
		}
	}
	if (idx < fs->ngen) {
		if (bump)
			fs->gen[idx][kind]++;
		g = fs->gen[idx][kind];
	}
	pthread_mutex_unlock(&fs->mu);
	return g;
}

/* Resolve an inode to (db, kind); -ENOENT if unknown. */
static int ino_resolve(struct fusefs *fs, fuse_ino_t ino, struct db **db, int *kind,
		       struct mj *mjcopy)
{
	if (ino >= INO_MJ_BASE) {
		int r = -ENOENT;
		pthread_mutex_lock(&fs->mu);
		for (struct mj *m = fs->mjs; m; m = m->next)
			if (m->ino == ino) {
				*mjcopy = *m;
				r = 0;
				break;
			}
		pthread_mutex_unlock(&fs->mu);
		*kind = KIND_MJ;
		*db = NULL;
		return r;
	}
	if (ino < INO_DB_BASE)
		return -ENOENT;
	size_t idx = (ino - INO_DB_BASE) / 8;
	*kind = (int)((ino - INO_DB_BASE) % 8);
	if (*kind >= DB_FILE_N)
		return -ENOENT;
	*db = store_at(fs->store, idx);
	return *db ? 0 : -ENOENT;
}

static int mj_path(struct fusefs *fs, const struct mj *m, char *buf, size_t n)
{
	return store_super_journal_path(fs->store, m->db, m->hex, buf, n);
}

/* Queue an invalidation of the root entry `name` (sent after the reply). */
static void queue_inval(struct fusefs *fs, const char *db, const char *suffix)
{
	struct inval *iv = calloc(1, sizeof(*iv));
	if (!iv)
		return; /* the entry then expires on its own */
	snprintf(iv->name, sizeof(iv->name), "%s%s", db, suffix);
	pthread_mutex_lock(&fs->mu);
	*fs->invals_tail = iv;
	fs->invals_tail = &iv->next;
	pthread_cond_signal(&fs->notifier_cond);
	pthread_mutex_unlock(&fs->mu);
}

static void *notifier_run(void *arg)
{
	struct fusefs *fs = arg;
	pthread_mutex_lock(&fs->mu);
	for (;;) {
		while (!fs->invals && !fs->notifier_stop)
			pthread_cond_wait(&fs->notifier_cond, &fs->mu);
		if (!fs->invals)
			break;
		struct inval *iv = fs->invals;
		fs->invals = iv->next;
		if (!fs->invals)
			fs->invals_tail = &fs->invals;
		pthread_mutex_unlock(&fs->mu);
		if (!fs->notifier_stop) {
			int r = fuse_lowlevel_notify_inval_entry(fs->se, INO_ROOT, iv->name,
								 strlen(iv->name));
			if (r < 0 && r != -ENOENT)
				log_debug("invalidate '%s': %s", iv->name, strerror(-r));
		}
		free(iv);
		pthread_mutex_lock(&fs->mu);
	}
	pthread_mutex_unlock(&fs->mu);
	return NULL;
}

/* ------------------------------------------------------ virtual files */

/* Content of .primary (only on a connected replica) or .lag. */
static int virt_content(struct fusefs *fs, fuse_ino_t ino, char *buf, size_t n)
{
	if (ino == INO_PRIMARY) {
		char host[256];
		if (store_is_primary(fs->store) ||
		    store_upstream(fs->store, host, sizeof(host)) < 0)
			return -ENOENT;
		return snprintf(buf, n, "%s\n", host);
	}
	return snprintf(buf, n, "%+010d\n", (int)store_lag_ms(fs->store));
}

static int virt_attr(struct fusefs *fs, fuse_ino_t ino, struct stat *st)
{
	char buf[300];
	int len = virt_content(fs, ino, buf, sizeof(buf));
	if (len < 0)
		return len;
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = len;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_blksize = 4096;
	return 0;
}

/* --------------------------------------------------------------- attrs */

static void pos_attr(struct db *db, struct stat *st)
{
	struct db_pos pos;
	db_get_pos(db, &pos);
	memset(st, 0, sizeof(*st));
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = 34;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_mtim.tv_sec = pos.timestamp / 1000;
	st->st_mtim.tv_nsec = (pos.timestamp % 1000) * 1000000;
	st->st_ctim = st->st_mtim;
	st->st_atim = st->st_mtim;
	st->st_blksize = 4096;
}

static int get_attr(struct fusefs *fs, fuse_ino_t ino, struct stat *st)
{
	struct db *db;
	int kind;
	struct mj m;
	if (ino == INO_ROOT) {
		memset(st, 0, sizeof(*st));
		st->st_ino = INO_ROOT;
		st->st_mode = S_IFDIR | (store_is_primary(fs->store) ? 0777 : 0555);
		st->st_nlink = 2;
		st->st_uid = getuid();
		st->st_gid = getgid();
		return 0;
	}
	if (ino == INO_PRIMARY || ino == INO_LAG)
		return virt_attr(fs, ino, st);
	int r = ino_resolve(fs, ino, &db, &kind, &m);
	if (r < 0)
		return r;
	if (kind == KIND_MJ) {
		char path[4096];
		r = mj_path(fs, &m, path, sizeof(path));
		if (r == 0 && stat(path, st) < 0)
			r = -errno;
	} else if (kind == DB_FILE_POS) {
		pos_attr(db, st);
	} else {
		r = db_stat_file(db, (enum db_file)kind, st);
	}
	if (r == 0)
		st->st_ino = ino;
	return r;
}

static void fill_entry(struct fuse_entry_param *e, fuse_ino_t ino, uint64_t gen,
		       const struct stat *st)
{
	memset(e, 0, sizeof(*e));
	e->ino = ino;
	e->generation = gen;
	e->attr = *st;
	e->attr.st_ino = ino;
	e->attr_timeout = CACHE_TIMEOUT;
	e->entry_timeout = CACHE_TIMEOUT;
}

static void reply_negative(fuse_req_t req)
{
	struct fuse_entry_param e;
	memset(&e, 0, sizeof(e));
	e.entry_timeout = CACHE_TIMEOUT;
	fuse_reply_entry(req, &e);
}

/* ----------------------------------------------------------------- ops */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	/* Data changes only through us; we invalidate what we change ourselves. */
	if (conn->capable & FUSE_CAP_EXPLICIT_INVAL_DATA)
		conn->want |= FUSE_CAP_EXPLICIT_INVAL_DATA;
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* Never let the kernel delay writes: commits are seen in the write stream. */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	/* Locks stay in the kernel. */
	conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
	conn->want &= ~FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_READ)
		conn->want &= ~FUSE_CAP_SPLICE_READ;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fusefs *fs = fuse_req_userdata(req);
	struct fname f;
	struct stat st;
	struct fuse_entry_param e;
	if (parent != INO_ROOT) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (strcmp(name, ".primary") == 0 || strcmp(name, ".lag") == 0) {
		fuse_ino_t vino = name[1] == 'p' ? INO_PRIMARY : INO_LAG;
		memset(&e, 0, sizeof(e));
		if (virt_attr(fs, vino, &st) == 0) {
			e.ino = vino;
			e.attr = st;
		}
		/* both come and go and change size: never cached */
		fuse_reply_entry(req, &e);
		return;
	}
	int r = parse_name(name, &f);
	if (r == -ENOENT) {
		reply_negative(req);
		return;
	}
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	struct db *db = store_find(fs->store, f.db);
	if (!db) {
		reply_negative(req);
		return;
	}
	if (f.kind == KIND_MJ) {
		char path[4096];
		fuse_ino_t ino = 0;
		pthread_mutex_lock(&fs->mu);
		for (struct mj *m = fs->mjs; m; m = m->next)
			if (strcmp(m->name, name) == 0)
				ino = m->ino;
		pthread_mutex_unlock(&fs->mu);
		if (!ino ||
		    store_super_journal_path(fs->store, f.db, f.hex, path, sizeof(path)) < 0 ||
		    stat(path, &st) < 0) {
			reply_negative(req);
			return;
		}
		fill_entry(&e, ino, 0, &st);
		fuse_reply_entry(req, &e);
		return;
	}
	if (f.kind == DB_FILE_POS) {
		if (!db_exists(db)) {
			struct db_pos pos;
			db_get_pos(db, &pos);
			if (pos.txid == 0) {
				reply_negative(req);
				return;
			}
		}
		pos_attr(db, &st);
	} else {
		r = db_stat_file(db, (enum db_file)f.kind, &st);
		if (r == -ENOENT && f.kind == DB_FILE_WAL && !store_is_primary(fs->store) &&
		    db_wal_mode(db)) {
			/*
			 * A WAL database on a replica: SQLite opens the -wal read-write
			 * and, refused, read-only; the read-only open needs the file.
			 */
			int wfd;
			if (db_open_file(db, DB_FILE_WAL, O_RDWR | O_CREAT, 0644, &wfd) == 0)
				close(wfd);
			r = db_stat_file(db, DB_FILE_WAL, &st);
		}
		if (r == -ENOENT) {
			reply_negative(req);
			return;
		}
		if (r < 0) {
			fuse_reply_err(req, -r);
			return;
		}
	}
	fill_entry(&e, db_ino(db, f.kind), gen_get(fs, db, f.kind, false), &st);
	fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fusefs *fs = fuse_req_userdata(req);
	struct stat st;
	int r = get_attr(fs, ino, &st);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_attr(req, &st,
				ino == INO_PRIMARY || ino == INO_LAG ? 0.0 : CACHE_TIMEOUT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct fusefs *fs = fuse_req_userdata(req);
	struct handle *h = fi ? (struct handle *)(uintptr_t)fi->fh : NULL;
	struct db *db;
	int kind, r;
	struct mj m;
	char path[4096];
	r = ino_resolve(fs, ino, &db, &kind, &m);
	if (ino == INO_ROOT) {
		r = 0;
		goto reply;
	}
	if (r < 0)
		goto out;
	if (kind == DB_FILE_POS) {
		r = (to_set & FUSE_SET_ATTR_SIZE) ? -EPERM : 0;
		goto reply;
	}
	if ((to_set & FUSE_SET_ATTR_SIZE) && refuses_write(fs, db, kind)) {
		r = -EACCES;
		goto out;
	}
	if (kind == KIND_MJ)
		r = mj_path(fs, &m, path, sizeof(path));
	else
		r = db_file_path(db, (enum db_file)kind, path, sizeof(path));
	if (r < 0)
		goto out;
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (kind == KIND_MJ)
			r = truncate(path, attr->st_size) < 0 ? -errno : 0;
		else
			r = db_truncate(db, (enum db_file)kind, h ? h->fd : -1, attr->st_size);
		if (r < 0)
			goto out;
	}
	if (to_set & FUSE_SET_ATTR_MODE) {
		if (chmod(path, attr->st_mode & 07777) < 0) {
			r = -errno;
			goto out;
		}
	}
	if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t u = (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t g = (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
		if (chown(path, u, g) < 0) {
			r = -errno;
			goto out;
		}
	}
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
		      FUSE_SET_ATTR_MTIME_NOW)) {
		struct timespec tv[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
		if (to_set & FUSE_SET_ATTR_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_ATIME)
			tv[0] = attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_MTIME)
			tv[1] = attr->st_mtim;
		if (utimensat(AT_FDCWD, path, tv, 0) < 0) {
			r = -errno;
			goto out;
		}
	}
reply:;
	struct stat st;
	r = get_attr(fs, ino, &st);
out:
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_attr(req, &st, CACHE_TIMEOUT);
}

static int handle_new(struct fusefs *fs, struct fuse_file_info *fi, int fd, struct db *db, int kind)
{
	struct handle *h = malloc(sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->fd = fd;
	h->db = db;
	h->kind = kind;
	pthread_mutex_lock(&fs->mu);
	h->next = fs->handles.next;
	h->prev = &fs->handles;
	h->next->prev = h;
	fs->handles.next = h;
	pthread_mutex_unlock(&fs->mu);
	fi->fh = (uint64_t)(uintptr_t)h;
	if (kind == DB_FILE_POS || kind == KIND_VIRT) {
		fi->direct_io = 1;
	} else {
		fi->keep_cache = 1;
	}
	return 0;
}

static void handle_free(struct fusefs *fs, struct handle *h)
{
	pthread_mutex_lock(&fs->mu);
	h->prev->next = h->next;
	h->next->prev = h->prev;
	pthread_mutex_unlock(&fs->mu);
	if (h->fd >= 0)
		close(h->fd);
	free(h);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fusefs *fs = fuse_req_userdata(req);
	struct db *db;
	int kind, fd = -1;
	struct mj m;
	int r;
	if (ino == INO_PRIMARY || ino == INO_LAG) {
		db = NULL;
		kind = KIND_VIRT;
		r = (fi->flags & O_ACCMODE) != O_RDONLY ? -EACCES : 0;
		if (r == 0)
			r = handle_new(fs, fi, ino == INO_PRIMARY ? -2 : -3, NULL, KIND_VIRT);
		goto out;
	}
	r = ino_resolve(fs, ino, &db, &kind, &m);
	if (r < 0)
		goto out;
	int flags = fi->flags & ~(O_CREAT | O_EXCL | O_NOCTTY);
	if ((flags & O_ACCMODE) != O_RDONLY && kind != DB_FILE_DB && kind != DB_FILE_POS &&
	    refuses_write(fs, db, kind)) {
		/* SQLite then opens the -wal read-only and reports SQLITE_READONLY */
		r = -EACCES;
		goto out;
	}
	if (kind == DB_FILE_POS) {
		r = (fi->flags & O_ACCMODE) != O_RDONLY ? -EACCES : 0;
	} else if (kind == KIND_MJ) {
		char path[4096];
		r = mj_path(fs, &m, path, sizeof(path));
		if (r == 0) {
			fd = open(path, flags | O_CLOEXEC);
			if (fd < 0)
				r = -errno;
		}
	} else {
		r = db_open_file(db, (enum db_file)kind, flags, 0644, &fd);
	}
	if (r == 0)
		r = handle_new(fs, fi, fd, db, kind);
out:
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		fuse_reply_err(req, -r);
		return;
	}
	if (fuse_reply_open(req, fi) == -ENOENT) /* interrupted: no release will come */
		handle_free(fs, (struct handle *)(uintptr_t)fi->fh);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct fusefs *fs = fuse_req_userdata(req);
	struct fname f;
	struct db *db = NULL;
	struct stat st;
	struct fuse_entry_param e;
	int fd = -1;
	fuse_ino_t ino = 0;
	uint64_t gen = 0;
	int r = parent == INO_ROOT ? parse_name(name, &f) : -ENOENT;
	if (r == -ENOENT && parent == INO_ROOT)
		r = -EPERM;
	if (r < 0)
		goto out;
	if (f.kind == DB_FILE_POS) {
		r = -EPERM;
		goto out;
	}
	if (replica_refuses(fs, f.kind) && (f.kind != DB_FILE_DB || !store_find(fs->store, f.db) ||
					    !db_exists(store_find(fs->store, f.db)))) {
		/* A journal SQLite cannot create gives SQLITE_READONLY. */
		r = -EACCES;
		if (f.kind == DB_FILE_WAL && (db = store_find(fs->store, f.db)) && db_exists(db) &&
		    db_wal_mode(db)) {
			int wfd;
			if (db_open_file(db, DB_FILE_WAL, O_RDWR | O_CREAT, 0644, &wfd) == 0)
				close(wfd);
			queue_inval(fs, f.db, "-wal");
		}
		goto out;
	}
	if (f.kind == DB_FILE_DB) {
		bool known = (db = store_find(fs->store, f.db)) && db_exists(db);
		r = store_get_or_create(fs->store, f.db, &db);
		if (r == -EINVAL)
			r = -EPERM;
		if (r == 0 && !known)
			queue_inval(fs, f.db, "-pos"); /* a cached negative entry must go */
	} else {
		db = store_find(fs->store, f.db);
		r = db && (f.kind == KIND_MJ || db_exists(db)) ? 0 : -ENOENT;
	}
	if (r < 0)
		goto out;
	if (f.kind == KIND_MJ) {
		char path[4096];
		r = store_super_journal_path(fs->store, f.db, f.hex, path, sizeof(path));
		if (r < 0)
			goto out;
		fd = open(path, (fi->flags | O_CREAT) & ~O_NOCTTY, mode & 07777);
		if (fd < 0) {
			r = -errno;
			goto out;
		}
		struct mj *m = calloc(1, sizeof(*m));
		if (!m) {
			r = -ENOMEM;
			goto out;
		}
		snprintf(m->name, sizeof(m->name), "%s", name);
		snprintf(m->db, sizeof(m->db), "%s", f.db);
		snprintf(m->hex, sizeof(m->hex), "%s", f.hex);
		pthread_mutex_lock(&fs->mu);
		m->ino = INO_MJ_BASE + fs->mj_next++;
		m->next = fs->mjs;
		fs->mjs = m;
		pthread_mutex_unlock(&fs->mu);
		ino = m->ino;
		if (fstat(fd, &st) < 0) {
			r = -errno;
			goto out;
		}
	} else {
		bool existed = db_stat_file(db, (enum db_file)f.kind, &st) == 0;
		r = db_open_file(db, (enum db_file)f.kind, fi->flags | O_CREAT, mode & 07777, &fd);
		if (r < 0)
			goto out;
		r = db_stat_file(db, (enum db_file)f.kind, &st);
		if (r < 0)
			goto out;
		ino = db_ino(db, f.kind);
		gen = gen_get(fs, db, f.kind, !existed);
	}
	r = handle_new(fs, fi, fd, db, f.kind);
out:
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		fuse_reply_err(req, -r);
		return;
	}
	fill_entry(&e, ino, gen, &st);
	fuse_reply_create(req, &e, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	if (h->kind == KIND_VIRT) {
		char buf[300];
		int len = virt_content(fuse_req_userdata(req), ino, buf, sizeof(buf));
		if (len < 0) {
			fuse_reply_err(req, -len);
			return;
		}
		if (off >= len) {
			fuse_reply_buf(req, NULL, 0);
			return;
		}
		size_t n = (size_t)(len - off) < size ? (size_t)(len - off) : size;
		fuse_reply_buf(req, buf + off, n);
		return;
	}
	if (h->kind == DB_FILE_POS) {
		struct db_pos pos;
		char buf[35];
		db_get_pos(h->db, &pos);
		db_format_pos(&pos, buf);
		if (off >= 34) {
			fuse_reply_buf(req, NULL, 0);
			return;
		}
		size_t n = 34 - (size_t)off < size ? 34 - (size_t)off : size;
		fuse_reply_buf(req, buf + off, n);
		return;
	}
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = h->fd;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	int r;
	if (h->kind == DB_FILE_POS || h->kind == KIND_VIRT)
		r = -EPERM;
	else if (refuses_write(fuse_req_userdata(req), h->db, h->kind))
		r = -EACCES;
	else if (h->kind == KIND_MJ)
		r = fs_pwrite_full(h->fd, buf, size, off);
	else
		r = db_write(h->db, (enum db_file)h->kind, h->fd, buf, size, off);
	if (r < 0) {
		if (r == -EPERM && h->kind == DB_FILE_DB)
			log_warn("refusing a write to database '%s' outside a journal or WAL "
				 "transaction (journal_mode OFF/MEMORY, or not a SQLite "
				 "database)",
				 db_name(h->db));
		else if (r != -EPERM && r != -EACCES)
			log_error("write to '%s' (%d) failed: %s", h->db ? db_name(h->db) : "?",
				  h->kind, strerror(-r));
		fuse_reply_err(req, -r);
	} else {
		/* h may be released as soon as the reply is out */
		struct db *db = h->kind == DB_FILE_WAL ? h->db : NULL;
		fuse_reply_write(req, size);
		if (db)
			db_write_done(db);
	}
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	handle_free(fuse_req_userdata(req), (struct handle *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	int r = 0;
	if (h->kind == KIND_MJ)
		r = (datasync ? fdatasync(h->fd) : fsync(h->fd)) < 0 ? -errno : 0;
	else if (h->kind != DB_FILE_POS && h->kind != KIND_VIRT)
		r = db_fsync(h->db, (enum db_file)h->kind, h->fd, datasync);
	struct db *db = h->kind == DB_FILE_WAL ? h->db : NULL; /* h may go with the reply */
	fuse_reply_err(req, -r);
	if (db)
		db_write_done(db);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fusefs *fs = fuse_req_userdata(req);
	struct fname f;
	int r = parent == INO_ROOT ? parse_name(name, &f) : -ENOENT;
	if (r < 0)
		goto out;
	struct db *db = store_find(fs->store, f.db);
	if (!db) {
		r = -ENOENT;
		goto out;
	}
	if (f.kind == DB_FILE_POS) {
		r = -EPERM;
	} else if ((f.kind == DB_FILE_DB || f.kind == KIND_MJ) &&
		   !store_accepts_writes(fs->store)) {
		/* (a journal may go: db.c refuses it if that would commit) */
		r = -EACCES;
	} else if (f.kind == KIND_MJ) {
		char path[4096];
		r = store_super_journal_path(fs->store, f.db, f.hex, path, sizeof(path));
		if (r == 0 && unlink(path) < 0)
			r = -errno;
		pthread_mutex_lock(&fs->mu);
		for (struct mj **pp = &fs->mjs; *pp; pp = &(*pp)->next)
			if (strcmp((*pp)->name, name) == 0) {
				struct mj *m = *pp;
				*pp = m->next;
				free(m);
				break;
			}
		pthread_mutex_unlock(&fs->mu);
	} else {
		r = db_unlink(db, (enum db_file)f.kind);
		if (r < 0 && r != -ENOENT)
			log_error("unlink '%s' failed: %s", name, strerror(-r));
	}
out:
	fuse_reply_err(req, -r);
	if (r == 0 && f.kind == DB_FILE_DB) {
		/* a drop removed the companions behind the kernel's back */
		queue_inval(fs, f.db, "-journal");
		queue_inval(fs, f.db, "-wal");
		queue_inval(fs, f.db, "-shm");
	}
}

static void op_refuse(fuse_req_t req)
{
	fuse_reply_err(req, EPERM);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	op_refuse(req);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	op_refuse(req);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, ENOENT);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	op_refuse(req);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	op_refuse(req);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	op_refuse(req);
}

struct dirbuf {
	char *p;
	size_t size;
};

static void dirbuf_add(fuse_req_t req, struct dirbuf *b, const char *name, fuse_ino_t ino,
		       mode_t mode)
{
	struct stat st;
	memset(&st, 0, sizeof(st));
	st.st_ino = ino;
	st.st_mode = mode;
	size_t old = b->size;
	size_t need = fuse_add_direntry(req, NULL, 0, name, NULL, 0);
	char *p = realloc(b->p, old + need);
	if (!p)
		return;
	b->p = p;
	b->size += need;
	fuse_add_direntry(req, b->p + old, need, name, &st, (off_t)b->size);
}

/*
 * The root listing, built afresh for every READDIR: no buffer lives between
 * requests, so nothing can be freed under a READDIR that the kernel still
 * has in flight when RELEASEDIR arrives (seen with an interrupted syscall).
 * Offsets are byte offsets into the listing; if databases come or go
 * between two calls, an entry may be seen twice or not at all, which POSIX
 * allows for a directory that changes while it is read.
 */
static int root_listing(fuse_req_t req, struct fusefs *fs, struct dirbuf *b)
{
	dirbuf_add(req, b, ".", INO_ROOT, S_IFDIR);
	dirbuf_add(req, b, "..", INO_ROOT, S_IFDIR);
	{
		struct stat vst;
		if (virt_attr(fs, INO_PRIMARY, &vst) == 0)
			dirbuf_add(req, b, ".primary", INO_PRIMARY, S_IFREG);
		dirbuf_add(req, b, ".lag", INO_LAG, S_IFREG);
	}
	static const char *const sfx[DB_FILE_N] = {"", "-journal", "-wal", "-shm", "-pos"};
	size_t n = store_count(fs->store);
	for (size_t i = 0; i < n; i++) {
		struct db *db = store_at(fs->store, i);
		struct stat st;
		struct db_pos pos;
		char name[512];
		db_get_pos(db, &pos);
		for (int k = 0; k < DB_FILE_N; k++) {
			if (k == DB_FILE_POS ? (!db_exists(db) && pos.txid == 0)
					     : db_stat_file(db, (enum db_file)k, &st) < 0)
				continue;
			snprintf(name, sizeof(name), "%s%s", db_name(db), sfx[k]);
			dirbuf_add(req, b, name, db_ino(db, k), S_IFREG);
		}
	}
	pthread_mutex_lock(&fs->mu);
	for (struct mj *m = fs->mjs; m; m = m->next)
		dirbuf_add(req, b, m->name, m->ino, S_IFREG);
	pthread_mutex_unlock(&fs->mu);
	return b->p ? 0 : -ENOMEM;
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != INO_ROOT) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	fi->fh = 0;
	fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct dirbuf b = {0};
	if (root_listing(req, fuse_req_userdata(req), &b) < 0) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if ((size_t)off < b.size) {
		size_t n = b.size - (size_t)off < size ? b.size - (size_t)off : size;
		fuse_reply_buf(req, b.p + off, n);
	} else {
		fuse_reply_buf(req, NULL, 0);
	}
	free(b.p);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct fusefs *fs = fuse_req_userdata(req);
	struct statvfs sv;
	if (statvfs(store_data_dir(fs->store), &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

/* ------------------------------------------- timing for GET /metrics */

#define TIMED(op, call)                                                                            \
	do {                                                                                       \
		int64_t t0_ = clock_mono_ns();                                                            \
		call;                                                                              \
		metrics_op(op, clock_mono_ns() - t0_);                                                    \
	} while (0)

static void t_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	TIMED(MOP_LOOKUP, op_lookup(req, parent, name));
}
static void t_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(MOP_GETATTR, op_getattr(req, ino, fi));
}
static void t_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		      struct fuse_file_info *fi)
{
	TIMED(MOP_SETATTR, op_setattr(req, ino, attr, to_set, fi));
}
static void t_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(MOP_OPEN, op_open(req, ino, fi));
}
static void t_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     struct fuse_file_info *fi)
{
	TIMED(MOP_CREATE, op_create(req, parent, name, mode, fi));
}
static void t_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	TIMED(MOP_READ, op_read(req, ino, size, off, fi));
}
static void t_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	TIMED(MOP_WRITE, op_write(req, ino, buf, size, off, fi));
}
static void t_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(MOP_FLUSH, op_flush(req, ino, fi));
}
static void t_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(MOP_RELEASE, op_release(req, ino, fi));
}
static void t_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	TIMED(MOP_FSYNC, op_fsync(req, ino, datasync, fi));
}
static void t_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	TIMED(MOP_UNLINK, op_unlink(req, parent, name));
}
static void t_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	TIMED(MOP_READDIR, op_readdir(req, ino, size, off, fi));
}

static void t_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(MOP_OTHER, op_opendir(req, ino, fi));
}
static void t_statfs(fuse_req_t req, fuse_ino_t ino)
{
	TIMED(MOP_OTHER, op_statfs(req, ino));
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init,
    .lookup = t_lookup,
    .getattr = t_getattr,
    .setattr = t_setattr,
    .open = t_open,
    .create = t_create,
    .read = t_read,
    .write = t_write,
    .flush = t_flush,
    .release = t_release,
    .fsync = t_fsync,
    .unlink = t_unlink,
    .mkdir = op_mkdir,
    .mknod = op_mknod,
    .rmdir = op_rmdir,
    .rename = op_rename,
    .symlink = op_symlink,
    .link = op_link,
    .opendir = t_opendir,
    .readdir = t_readdir,
    .releasedir = op_releasedir,
    .fsyncdir = op_fsyncdir,
    .statfs = t_statfs,
};

/* --------------------------------------------------- replica apply hooks */

/*
 * A replica applies an LTX file while SQLite readers use the mount. The
 * kernel holds their POSIX locks, so ltxfs takes the same locks a SQLite
 * writer would, through its own mount (this thread is not a FUSE worker):
 *
 *   rollback modes  PENDING (new readers wait), RESERVED, then the SHARED
 *                   range exclusively once current readers are done;
 *   WAL mode        in the -shm file: WRITE and CKPT; then the first header
 *                   copy is made to differ from the second, so readers
 *                   that start now retry; then every READ slot, so no
 *                   reader is inside a read transaction; afterwards the
 *                   wal-index header is rewritten (empty WAL, new page
 *                   count, change counter + 1) through the mount, so every
 *                   reader's mapping sees it and drops its page cache.
 *
 * Locks are polled (F_SETLK with a short back-off), never F_SETLKW, and are
 * held only while the pages of one transaction are written.
 */
struct applytok {
	int dbfd, shmfd;
};

static int lock_wait(struct fusefs *fs, int fd, off_t start, off_t len, const char *what,
		     struct db *db)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
	unsigned delay = 20, waited = 0, warned = 0;
	while (fcntl(fd, F_SETLK, &fl) < 0) {
		if (errno != EAGAIN && errno != EACCES && errno != EINTR)
			return -errno;
		if (fs->stopping)
			return -ESHUTDOWN;
		usleep(delay);
		waited += delay;
		delay = delay < 1000 ? delay * 2 : 1000;
		if (waited / 5000000 > warned) {
			warned = waited / 5000000;
			log_warn("db '%s': waiting %us for readers to release the %s lock",
				 db_name(db), warned * 5, what);
		}
	}
	return 0;
}

static int hook_lock(void *ctx, struct db *db, void **token)
{
	struct fusefs *fs = ctx;
	struct applytok *t = malloc(sizeof(*t));
	char path[4096];
	int r = 0;
	if (!t)
		return -ENOMEM;
	t->dbfd = t->shmfd = -1;
	*token = t;
	if (!db_exists(db))
		return 0; /* a new database: no reader can be inside it */
	if (db_wal_mode(db)) {
		r = fs_path(path, sizeof(path), "%s/%s-shm", fs->mountpoint, db_name(db));
		if (r == 0 && (t->shmfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0)
			r = -errno;
		if (r == 0)
			r = lock_wait(fs, t->shmfd, SHM_LOCK_WRITE, 1, "WAL write", db);
		if (r == 0)
			r = lock_wait(fs, t->shmfd, SHM_LOCK_CKPT, 1, "WAL checkpoint", db);
		if (r == 0) {
			/*
			 * Make the two header copies differ, as a writer mid-update
			 * would: a reader starting now sees an unstable header, needs
			 * the WRITE lock to recover it and retries, so the READ slots
			 * drain even under a steady read load.
			 */
			uint8_t h1[48];
			if (fs_pread_full(t->shmfd, h1, sizeof(h1), 0) == (ssize_t)sizeof(h1)) {
				uint32_t chg;
				memcpy(&chg, h1 + 8, 4);
				chg++;
				memcpy(h1 + 8, &chg, 4);
				if (fs_pwrite_full(t->shmfd, h1, sizeof(h1), 0) < 0)
					r = -errno;
			}
		}
		if (r == 0)
			r = lock_wait(fs, t->shmfd, SHM_LOCK_READ(0), SHM_NREADER, "WAL read", db);
	} else {
		r = fs_path(path, sizeof(path), "%s/%s", fs->mountpoint, db_name(db));
		if (r == 0 && (t->dbfd = open(path, O_RDWR | O_CLOEXEC)) < 0)
			r = -errno;
		if (r == 0)
			r = lock_wait(fs, t->dbfd, SQLITE_PENDING_BYTE, 1, "PENDING", db);
		if (r == 0)
			r = lock_wait(fs, t->dbfd, SQLITE_RESERVED_BYTE, 1, "RESERVED", db);
		if (r == 0)
			r = lock_wait(fs, t->dbfd, SQLITE_SHARED_FIRST, SQLITE_SHARED_SIZE,
				      "SHARED", db);
	}
	if (r < 0) {
		if (t->dbfd >= 0)
			close(t->dbfd);
		if (t->shmfd >= 0)
			close(t->shmfd);
		free(t);
		*token = NULL;
	}
	return r;
}

static void hook_invalidate(void *ctx, struct db *db, uint64_t off, uint64_t len)
{
	struct fusefs *fs = ctx;
	int r = fuse_lowlevel_notify_inval_inode(fs->se, db_ino(db, DB_FILE_DB), (off_t)off,
						 (off_t)len);
	if (r < 0 && r != -ENOENT)
		log_debug("db '%s': invalidate [%llu,+%llu): %s", db_name(db),
			  (unsigned long long)off, (unsigned long long)len, strerror(-r));
}

static void inval_entry_now(struct fusefs *fs, struct db *db, const char *suffix)
{
	char name[512];
	snprintf(name, sizeof(name), "%s%s", db_name(db), suffix);
	fuse_lowlevel_notify_inval_entry(fs->se, INO_ROOT, name, strlen(name));
}

static void hook_entries(void *ctx, struct db *db)
{
	struct fusefs *fs = ctx;
	static const char *const sfx[] = {"", "-journal", "-wal", "-shm", "-pos"};
	for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++)
		inval_entry_now(fs, db, sfx[i]);
}

static void hook_unlock(void *ctx, struct db *db, void *token, bool ok, uint32_t page_size,
			uint32_t npages)
{
	struct fusefs *fs = ctx;
	struct applytok *t = token;
	bool wal = ok && db_wal_mode(db);
	if (t && t->shmfd >= 0 && ok) {
		uint8_t old[SHM_HEADER_SIZE], hdr[SHM_HEADER_SIZE];
		if (fs_pread_full(t->shmfd, old, sizeof(old), 0) == (ssize_t)sizeof(old)) {
			shm_header_build(hdr, old, page_size, npages);
			/* SQLite's order: checkpoint info, the second copy, then the first */
			if (fs_pwrite_full(t->shmfd, hdr + 96, SHM_HEADER_SIZE - 96, 96) < 0 ||
			    fs_pwrite_full(t->shmfd, hdr + 48, 48, 48) < 0 ||
			    fs_pwrite_full(t->shmfd, hdr, 48, 0) < 0)
				log_warn("db '%s': cannot update the wal-index header: %s",
					 db_name(db), strerror(errno));
		}
	}
	if (t) {
		if (t->dbfd >= 0)
			close(t->dbfd);
		if (t->shmfd >= 0)
			close(t->shmfd);
		free(t);
	}
	if (wal) {
		/* readers of a WAL database need a -wal to open read-only */
		struct stat st;
		int wfd;
		if (db_stat_file(db, DB_FILE_WAL, &st) == -ENOENT &&
		    db_open_file(db, DB_FILE_WAL, O_RDWR | O_CREAT, 0644, &wfd) == 0) {
			close(wfd);
			inval_entry_now(fs, db, "-wal");
		}
	}
}

void fusefs_apply_hooks(struct fusefs *fs, struct db_apply_hooks *ret)
{
	ret->lock = hook_lock;
	ret->invalidate = hook_invalidate;
	ret->entries = hook_entries;
	ret->unlock = hook_unlock;
	ret->ctx = fs;
}

/* ----------------------------------------------------------- lifecycle */

__attribute__((format(printf, 2, 0))) static void fuse_log_sink(enum fuse_log_level level,
								const char *fmt, va_list ap)
{
	char buf[1024];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	size_t n = strlen(buf);
	if (n && buf[n - 1] == '\n')
		buf[n - 1] = '\0';
	if (level <= FUSE_LOG_ERR)
		log_error("fuse: %s", buf);
	else if (level <= FUSE_LOG_NOTICE)
		log_info("fuse: %s", buf);
	else
		log_debug("fuse: %s", buf);
}

static void *loop_thread(void *arg)
{
	struct fusefs *fs = arg;
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	if (cfg) {
		fuse_loop_cfg_set_clone_fd(cfg, 0);
		fuse_loop_cfg_set_max_threads(cfg, fs->max_threads ? fs->max_threads : 16);
		fuse_loop_cfg_set_idle_threads(cfg, 8);
	}
	int r = fuse_session_loop_mt(fs->se, cfg);
	if (r != 0)
		log_debug("fuse loop ended: %d", r);
	fuse_loop_cfg_destroy(cfg);
	fs->done = true;
	return NULL;
}

/* Abort a FUSE connection through fusectl (mounted here if it is not). */
static void abort_connection(dev_t dev)
{
	const char *dir = "/sys/fs/fuse/connections";
	char path[128];
	snprintf(path, sizeof(path), "%s/%u/abort", dir, (unsigned)minor(dev));
	if (access(path, W_OK) != 0 && mount("fusectl", dir, "fusectl", 0, NULL) != 0)
		log_warn("cannot mount fusectl at %s: %s", dir, strerror(errno));
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "1", 1) != 1)
		log_error("cannot abort the FUSE connection (%s): %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* A mount left behind by a crashed process answers ENOTCONN: detach it. */
static void unmount_stale(const char *mnt)
{
	struct stat st;
	if (stat(mnt, &st) < 0 && errno == ENOTCONN) {
		log_info("unmounting stale mount at '%s'", mnt);
		if (umount2(mnt, MNT_DETACH) < 0)
			log_warn("cannot unmount stale mount at '%s': %s", mnt, strerror(errno));
	}
}

int fusefs_start(struct fusefs **ret, struct store *store, const struct fusefs_options *opt,
		 char *errmsg, size_t n)
{
	struct fusefs *fs = calloc(1, sizeof(*fs));
	char optstr[256];
	int r = 0;
	if (!fs)
		return -ENOMEM;
	pthread_mutex_init(&fs->mu, NULL);
	pthread_cond_init(&fs->notifier_cond, NULL);
	fs->invals_tail = &fs->invals;
	fs->handles.next = fs->handles.prev = &fs->handles;
	fs->store = store;
	fs->max_threads = opt->max_threads;
	fs->mountpoint = strdup(opt->mountpoint);
	if (!fs->mountpoint) {
		r = -ENOMEM;
		goto fail;
	}
	fuse_set_log_func(fuse_log_sink);
	unmount_stale(opt->mountpoint);
	r = fs_mkdir_p(opt->mountpoint, 0755);
	if (r < 0) {
		snprintf(errmsg, n, "cannot create mount directory '%s': %s", opt->mountpoint,
			 strerror(-r));
		goto fail;
	}
	snprintf(optstr, sizeof(optstr), "fsname=ltxfs,subtype=ltxfs,default_permissions%s",
		 opt->allow_other ? ",allow_other" : "");
	char a0[] = "ltxfs", a1[] = "-o", a3[] = "-d";
	char *argv[] = {a0, a1, optstr, opt->debug ? a3 : NULL, NULL};
	struct fuse_args args = FUSE_ARGS_INIT(opt->debug ? 4 : 3, argv);
	fs->se = fuse_session_new(&args, &ops, sizeof(ops), fs);
	fuse_opt_free_args(&args);
	if (!fs->se) {
		snprintf(errmsg, n, "cannot create FUSE session");
		r = -EIO;
		goto fail;
	}
	if (fuse_session_mount(fs->se, opt->mountpoint) != 0) {
		snprintf(errmsg, n, "cannot mount FUSE file system at '%s'", opt->mountpoint);
		r = -EIO;
		goto fail;
	}
	if (pthread_create(&fs->thread, NULL, loop_thread, fs) != 0) {
		snprintf(errmsg, n, "cannot start FUSE threads");
		r = -EAGAIN;
		fuse_session_unmount(fs->se);
		goto fail;
	}
	fs->thread_started = true;
	struct stat mst;
	if (stat(opt->mountpoint, &mst) == 0)
		fs->conn_dev = mst.st_dev;
	if (pthread_create(&fs->notifier, NULL, notifier_run, fs) == 0)
		fs->notifier_started = true;
	*ret = fs;
	return 0;
fail:
	fusefs_stop(fs);
	return r;
}

bool fusefs_done(struct fusefs *fs)
{
	return fs->done;
}

void fusefs_begin_stop(struct fusefs *fs)
{
	if (fs)
		fs->stopping = true;
}

void fusefs_stop(struct fusefs *fs)
{
	if (!fs)
		return;
	fs->stopping = true;
	if (fs->notifier_started) {
		pthread_mutex_lock(&fs->mu);
		fs->notifier_stop = true;
		pthread_cond_signal(&fs->notifier_cond);
		pthread_mutex_unlock(&fs->mu);
		pthread_join(fs->notifier, NULL);
	}
	while (fs->invals) {
		struct inval *iv = fs->invals;
		fs->invals = iv->next;
		free(iv);
	}
	if (fs->se) {
		fuse_session_exit(fs->se);
		if (fs->thread_started) {
			/*
			 * The lazy unmount ends the workers' loop once no process
			 * has a file open in the mount. One that keeps a file open
			 * could hold shutdown forever; after a grace period the
			 * connection is aborted, so no request can arrive after
			 * the store is closed (that process then gets ENOTCONN,
			 * and a transaction it had open is rolled back at the next
			 * start).
			 */
			fuse_session_unmount(fs->se);
			struct timespec ts = clock_deadline(CLOCK_REALTIME, 10000);
			if (pthread_timedjoin_np(fs->thread, NULL, &ts) != 0) {
				log_warn("files are still open in %s; aborting the FUSE connection",
					 fs->mountpoint);
				abort_connection(fs->conn_dev);
				pthread_join(fs->thread, NULL);
			}
		}
		fuse_session_destroy(fs->se);
	}
	while (fs->handles.next != &fs->handles) /* never released: connection aborted */
		handle_free(fs, fs->handles.next);
	while (fs->mjs) {
		struct mj *m = fs->mjs;
		fs->mjs = m->next;
		free(m);
	}
	free(fs->gen);
	free(fs->mountpoint);
	pthread_cond_destroy(&fs->notifier_cond);
	pthread_mutex_destroy(&fs->mu);
	free(fs);
}
