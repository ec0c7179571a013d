/*
 * fusefs_ops.c - the FUSE operations: what each request from the kernel
 * does to the databases of the store.
 *
 * Each handler maps a request on a name or inode (fusefs_inode.c) to the
 * engine: reads go straight to the backing file through the handle's own
 * descriptor; writes, truncates, fsyncs and unlinks of a database, journal
 * or WAL go through db_write/db_truncate/db_fsync/db_unlink, which see the
 * commits (docs/architecture.md section 4). Super-journals and plain files
 * (files/<name>) are passed through. An open for writing with O_WRONLY,
 * O_TRUNC or O_EXCL is a whole-file write: a KIND_STAGE handle whose
 * staging file FLUSH installs as one transaction; RENAME and the staging
 * handles are fusefs_whole.c's. LINK is refused with EPERM and a log line.
 * Errors become errno here and nowhere else.
 *
 * WRITE REFUSAL. Unless the store accepts writes (primary, inside its lease,
 * no handoff fence, past the start of its term), a write, create, truncate
 * or unlink is refused with EACCES, so SQLite reports SQLITE_READONLY; the
 * -shm file is local state and exempt. On a replica the refusal is
 * immediate. On a node that holds the lease but does not accept writes yet
 * (a new primary's adoption window or adoption, a handoff's outcome, a
 * renewal past the deadline) the request waits for it instead, up to
 * WRITE_WAIT_MS, then is refused with a log line saying what it waited for
 * (await_writes): so a node that says isPrimary takes the first write. A
 * waiting request occupies a worker (at most WRITE_WAITERS_MAX wait; more
 * are refused at once) and, for a create, the kernel's lock on the
 * directory; it gives way at once when an apply (adoption) waits for
 * SQLite's locks, which its client may hold. A node that lost the lease with a rollback-mode
 * transaction open may still write the database and journal so that SQLite can roll it back
 * (refuses_write). A WAL database on a replica gets an empty -wal file on demand, since SQLite's
 * read-only open of a WAL database needs one.
 *
 * CACHING. Every change to these files arrives through this mount, so the
 * kernel may cache what it can: file data (keep_cache, no automatic
 * invalidation), attributes and entries, including negative entries (the
 * "-journal" and "-wal" lookups SQLite makes at every read transaction are
 * answered by the kernel). The virtual -pos, .primary and .lag files are
 * direct_io. Writeback caching is off, so every write reaches the daemon
 * in order, when it happens. Two paths change names behind the kernel's
 * back (dropping a database removes its companions; creating one makes
 * -pos appear): they queue an entry invalidation, sent by the notifier
 * thread after the reply (fusefs.c).
 *
 * LOCKS. No getlk/setlk/flock handlers: the kernel keeps POSIX locks itself,
 * exactly as on a local file system (see docs/architecture.md).
 *
 * THREADS. libfuse's multi-threaded loop; each handler replies exactly once
 * and does no network I/O. Handlers take fs->mu only for the handle list,
 * the inode tables and the notifier's queue, and db->mu inside the db_*
 * calls. Every handler is timed for GET /metrics (the t_* wrappers).
 */
#include "fusefs_int.h"

#include "ltxfs/clock.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/log.h"
#include "ltxfs/metrics.h"
#include "ltxfs/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/*
 * How long a write waits for a node that holds the lease to accept writes,
 * and how many may wait at once (half of libfuse's 16 workers, so that
 * readers and an adoption's own requests always find one).
 */
#define WRITE_WAIT_MS	  5000
#define WRITE_WAITERS_MAX 8

static bool apply_waits(void *ctx)
{
	struct fusefs *fs = ctx;
	return __atomic_load_n(&fs->apply_waiting, __ATOMIC_SEQ_CST) > 0;
}

/*
 * The node does not accept writes now. A replica (or a node that lost the
 * lease) refuses at once: -EACCES. A node that holds the lease but is not
 * writable yet (the start of its term, a handoff's outcome, a renewal past
 * its deadline) makes the write wait, up to WRITE_WAIT_MS: 0 once it
 * accepts, -EACCES after the bound, or at once if an apply needs SQLite's
 * locks (the waiting client may hold them) or too many already wait. Each
 * refusal after a wait is logged once, with its reason.
 */
static int await_writes(struct fusefs *fs)
{
	const char *why = NULL;
	int r;
	if (__atomic_add_fetch(&fs->write_waiters, 1, __ATOMIC_SEQ_CST) > WRITE_WAITERS_MAX) {
		r = store_await_writes(fs->store, 0, NULL, NULL, &why);
		if (r == -ETIMEDOUT)
			log_warn("refusing a write: %d writes already wait for this node to accept "
				 "writes (%s)",
				 WRITE_WAITERS_MAX, why);
	} else {
		r = store_await_writes(fs->store, WRITE_WAIT_MS, apply_waits, fs, &why);
		if (r == -ETIMEDOUT)
			log_warn(
			    "refusing a write after waiting %d ms: this node holds the primary "
			    "lease but does not accept writes yet (%s)",
			    WRITE_WAIT_MS, why);
		else if (r == -ECANCELED)
			log_warn("refusing a waiting write: an apply needs the SQLite locks its "
				 "client may hold (%s)",
				 why);
	}
	__atomic_sub_fetch(&fs->write_waiters, 1, __ATOMIC_SEQ_CST);
	return r == 0 ? 0 : -EACCES;
}

/* A write to a plain file or a directory: refused unless writes are (or soon become) accepted. */
static bool writes_refused(struct fusefs *fs)
{
	return !store_accepts_writes(fs->store) && await_writes(fs) < 0;
}

/* Writes are refused on a replica; the -shm file is local state and exempt. */
static bool replica_refuses(struct fusefs *fs, int kind)
{
	return kind != DB_FILE_SHM && !store_accepts_writes(fs->store) && await_writes(fs) < 0;
}

/*
 * Except on a node that lost the lease while a rollback-mode transaction was
 * open: SQLite may then write the database and the journal to roll that
 * transaction back (db_fence in src/core/db_util.c refuses any commit).
 */
static bool refuses_write(struct fusefs *fs, struct db *db, int kind)
{
	if (kind == DB_FILE_SHM || store_accepts_writes(fs->store))
		return false;
	if ((kind == DB_FILE_DB || kind == DB_FILE_JOURNAL) && db && db_txn_pending(db))
		return false;
	return await_writes(fs) < 0;
}

static void reply_negative(fuse_req_t req)
{
	struct fuse_entry_param e;
	memset(&e, 0, sizeof(e));
	e.entry_timeout = CACHE_TIMEOUT;
	fuse_reply_entry(req, &e);
}

/* A failed lookup: ENOENT as a negative entry (cached), anything else as an error. */
static void reply_lookup_err(fuse_req_t req, int r)
{
	if (r == -ENOENT)
		reply_negative(req);
	else
		fuse_reply_err(req, -r);
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
	/* O_TRUNC arrives with the open: a truncating open is a whole-file write */
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	if (conn->capable & FUSE_CAP_SPLICE_READ)
		conn->want &= ~FUSE_CAP_SPLICE_READ;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fusefs *fs = fuse_req_userdata(req);
	struct fname f;
	struct stat st;
	struct fuse_entry_param e;
	char full[MOUNT_NAME_MAX];
	int r = fusefs_child(fs, parent, name, full, sizeof(full));
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (parent == INO_ROOT && (strcmp(name, ".primary") == 0 || strcmp(name, ".lag") == 0)) {
		fuse_ino_t vino = name[1] == 'p' ? INO_PRIMARY : INO_LAG;
		memset(&e, 0, sizeof(e));
		if (fusefs_virt_attr(fs, vino, &st) == 0) {
			e.ino = vino;
			e.attr = st;
		}
		/* both come and go and change size: never cached */
		fuse_reply_entry(req, &e);
		return;
	}
	name = full;
	fuse_ino_t dino = fusefs_dir_find(fs, name, &st);
	if (dino) {
		fusefs_fill_entry(&e, dino, 0, &st);
		fuse_reply_entry(req, &e);
		return;
	}
	r = fusefs_parse_name(name, &f);
	struct db *db = r == 0 ? store_find(fs->store, f.db) : NULL;
	if (r < 0 || !db || (f.kind == DB_FILE_DB && !db_exists(db))) {
		/* not a database: maybe a plain file */
		fuse_ino_t pino = fusefs_plain_find(fs, name, &st);
		if (pino) {
			fusefs_fill_entry(&e, pino, 0, &st);
			fuse_reply_entry(req, &e);
		} else if (r < 0 && r != -ENOENT) {
			fuse_reply_err(req, -r);
		} else {
			reply_negative(req);
		}
		return;
	}
	if (f.kind == KIND_MJ) {
		char path[4096];
		fuse_ino_t ino = fusefs_mj_find(fs, name);
		if (!ino ||
		    store_super_journal_path(fs->store, f.db, f.hex, path, sizeof(path)) < 0 ||
		    stat(path, &st) < 0) {
			reply_negative(req);
			return;
		}
		fusefs_fill_entry(&e, ino, 0, &st);
		fuse_reply_entry(req, &e);
		return;
	}
	if (f.kind == DB_FILE_POS) {
		if (!fusefs_pos_visible(fs, db)) {
			reply_negative(req);
			return;
		}
		fusefs_pos_attr(db, &st);
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
		if (r < 0) {
			reply_lookup_err(req, r);
			return;
		}
	}
	fusefs_fill_entry(&e, fusefs_db_ino(db, f.kind), fusefs_gen_get(fs, db, f.kind, false),
			  &st);
	fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fusefs *fs = fuse_req_userdata(req);
	struct stat st;
	int r = fusefs_get_attr(fs, ino, &st);
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
	struct db *db = NULL;
	int kind = -1, r;
	struct mj m;
	char path[4096];
	struct stat st;
	if (h && h->kind == KIND_STAGE) {
		/* a whole-file write: only its size matters until it is installed */
		r = 0;
		if ((to_set & FUSE_SET_ATTR_SIZE) && ftruncate(h->fd, attr->st_size) < 0)
			r = -errno;
		if (to_set & FUSE_SET_ATTR_SIZE)
			h->dirty = true;
		if (r == 0 && fstat(h->fd, &st) < 0)
			r = -errno;
		st.st_ino = ino;
		goto out;
	}
	if (ino >= INO_DIR_BASE) {
		/* a directory: its mode, owner and times in files/ */
		char dpath[MOUNT_NAME_MAX];
		r = fusefs_dir_path(fs, ino, dpath, sizeof(dpath));
		if (r == 0 && (to_set & FUSE_SET_ATTR_SIZE))
			r = -EISDIR;
		if (r == 0 && writes_refused(fs))
			r = -EACCES;
		if (r == 0)
			r = fs_path(path, sizeof(path), "%s/files/%s", store_data_dir(fs->store),
				    dpath);
		if (r < 0)
			goto out;
		goto attrs;
	}
	if (ino >= INO_FILE_BASE) {
		struct pfile p;
		r = fusefs_plain_resolve(fs, ino, &p);
		if (r == 0 && p.stagefd >= 0) {
			/* a create not closed yet (install's fchmod): its staging file */
			int sfd = fusefs_plain_stage_dup(fs, ino);
			r = sfd < 0 ? sfd : 0;
			if (r == 0 && (to_set & FUSE_SET_ATTR_SIZE) &&
			    ftruncate(sfd, attr->st_size) < 0)
				r = -errno;
			if (r == 0 && (to_set & FUSE_SET_ATTR_MODE) &&
			    fchmod(sfd, attr->st_mode & 07777) < 0)
				r = -errno;
			if (r == 0 && fstat(sfd, &st) < 0)
				r = -errno;
			if (sfd >= 0)
				close(sfd);
			st.st_ino = ino;
			goto out;
		}
		if (r == 0 && (to_set & FUSE_SET_ATTR_SIZE) && writes_refused(fs))
			r = -EACCES;
		if (r == 0)
			r = fusefs_plain_path(fs, p.name, path, sizeof(path));
		if (r < 0)
			goto out;
		if ((to_set & FUSE_SET_ATTR_SIZE) && truncate(path, attr->st_size) < 0) {
			r = -errno;
			goto out;
		}
		goto attrs;
	}
	r = fusefs_ino_resolve(fs, ino, &db, &kind, &m);
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
		r = fusefs_mj_path(fs, &m, path, sizeof(path));
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
attrs:
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
reply:
	r = fusefs_get_attr(fs, ino, &st);
out:
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_attr(req, &st, CACHE_TIMEOUT);
	if (r == 0 && db && kind == DB_FILE_JOURNAL && (to_set & FUSE_SET_ATTR_SIZE))
		db_write_done(db); /* a commit point (TRUNCATE mode) may have queued a file */
}

int fusefs_handle_new(struct fusefs *fs, struct fuse_file_info *fi, int fd, struct db *db, int kind)
{
	struct handle *h = calloc(1, sizeof(*h));
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
	if (kind == DB_FILE_POS || kind == KIND_VIRT || kind == KIND_STAGE) {
		/* (a staging file is not the data the kernel caches for the inode) */
		fi->direct_io = 1;
	} else {
		fi->keep_cache = 1;
	}
	return 0;
}

void fusefs_handle_free(struct fusefs *fs, struct handle *h)
{
	pthread_mutex_lock(&fs->mu);
	h->prev->next = h->next;
	h->next->prev = h->prev;
	pthread_mutex_unlock(&fs->mu);
	if (h->fd >= 0)
		close(h->fd);
	free(h);
}

/* An open or a create that failed: close what it opened, reply the error. */
static void reply_open_err(fuse_req_t req, int fd, int r)
{
	if (fd >= 0)
		close(fd);
	fuse_reply_err(req, -r);
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
			r = fusefs_handle_new(fs, fi, ino == INO_PRIMARY ? -2 : -3, NULL,
					      KIND_VIRT);
		goto out;
	}
	int flags = fi->flags & ~(O_CREAT | O_EXCL | O_NOCTTY);
	if (ino >= INO_DIR_BASE) {
		r = -EISDIR;
		db = NULL;
		goto out;
	}
	if (ino >= INO_FILE_BASE) {
		struct pfile p;
		char path[4096];
		db = NULL;
		kind = KIND_FILE;
		r = fusefs_plain_resolve(fs, ino, &p);
		if (r == 0 && p.stagefd >= 0)
			r = -EBUSY; /* still being written for the first time */
		if (r == 0 && (flags & O_ACCMODE) == O_RDWR && !fusefs_whole_flags(flags) &&
		    store_accepts_writes(fs->store)) {
			/* touch app.db, then SQLite opens it: an empty file becomes a database */
			r = fusefs_plain_to_database(fs, p.name);
			if (r == 1)
				r = 0;
			else
				goto out;
		}
		if (r == 0 && (flags & O_ACCMODE) != O_RDONLY && writes_refused(fs))
			r = -EACCES;
		if (r == 0)
			r = fusefs_plain_path(fs, p.name, path, sizeof(path));
		if (r == 0 && (fd = open(path, flags | O_CLOEXEC)) < 0)
			r = -errno;
		if (r == 0)
			r = fusefs_handle_new(fs, fi, fd, NULL, KIND_FILE);
		goto out;
	}
	r = fusefs_ino_resolve(fs, ino, &db, &kind, &m);
	if (r < 0)
		goto out;
	if (kind == DB_FILE_DB && !db_exists(db)) {
		/* a dentry left by a rename or a drop: the kernel looks the name up again */
		r = -ESTALE;
		goto out;
	}
	if (kind == DB_FILE_DB && (flags & O_ACCMODE) != O_RDONLY && fusefs_whole_flags(flags)) {
		/* cp, a shell's >, truncate: a whole-file write (fusefs_whole.c) */
		fuse_ino_t sino;
		struct stat sst;
		r = refuses_write(fs, db, kind)
			? -EACCES
			: fusefs_stage_open(fs, fi, db_name(db), db, flags & O_TRUNC, &sino, &sst);
		goto out;
	}
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
		r = fusefs_mj_path(fs, &m, path, sizeof(path));
		if (r == 0) {
			fd = open(path, flags | O_CLOEXEC);
			if (fd < 0)
				r = -errno;
		}
	} else {
		r = db_open_file(db, (enum db_file)kind, flags, 0644, &fd);
	}
	if (r == 0)
		r = fusefs_handle_new(fs, fi, fd, db, kind);
out:
	/*
	 * The kernel opens an inode it found through a dentry; a file that is
	 * gone (removed by the daemon: a replica's apply, an install dropping
	 * a stale -journal, a rename) makes that dentry stale, and ESTALE
	 * makes the kernel look the name up again instead of failing the open.
	 */
	if (r == -ENOENT)
		r = -ESTALE;
	if (r < 0) {
		reply_open_err(req, fd, r);
		return;
	}
	if (fuse_reply_open(req, fi) == -ENOENT) /* interrupted: no release will come */
		fusefs_handle_free(fs, (struct handle *)(uintptr_t)fi->fh);
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
	char full[MOUNT_NAME_MAX];
	int r = fusefs_child(fs, parent, name, full, sizeof(full));
	if (r < 0)
		goto out;
	name = full;
	r = fusefs_parse_name(name, &f);
	bool whole = fusefs_whole_flags(fi->flags);
	if (r == -ENOENT ||
	    (r == 0 && f.kind != DB_FILE_POS && f.kind != KIND_MJ &&
	     !store_find(fs->store, f.db)) ||
	    (r == 0 && f.kind == DB_FILE_DB && whole)) {
		/*
		 * Not a database SQLite is creating: a whole-file write (its
		 * first bytes decide at close) or a plain file that exists.
		 */
		struct db *xdb = r == 0 ? store_find(fs->store, f.db) : NULL;
		bool isdb = r == 0 && f.kind == DB_FILE_DB && xdb && db_exists(xdb);
		if (!fusefs_plain_name_ok(name) ||
		    (r == 0 && !isdb && !whole && f.kind == DB_FILE_DB)) {
			if (!fusefs_plain_name_ok(name)) {
				r = -EPERM;
				goto out;
			}
			/* SQLite creating a database: below */
		} else if (writes_refused(fs)) {
			r = -EACCES;
			goto out;
		} else if (!isdb && (ino = fusefs_plain_find(fs, name, &st)) != 0) {
			char path[4096];
			r = fusefs_plain_path(fs, name, path, sizeof(path));
			if (r == 0 && (fd = open(path, (fi->flags & ~O_NOCTTY) | O_CLOEXEC,
						 mode & 07777)) < 0)
				r = -errno;
			if (r == 0 && fstat(fd, &st) < 0)
				r = -errno;
			st.st_ino = ino;
			if (r == 0)
				r = fusefs_handle_new(fs, fi, fd, NULL, KIND_FILE);
			goto out;
		} else {
			if (isdb && (fi->flags & O_EXCL)) {
				r = -EEXIST;
				goto out;
			}
			r = fusefs_stage_open(fs, fi, name, isdb ? xdb : NULL,
					      !isdb || (fi->flags & O_TRUNC), &ino, &st);
			if (r < 0)
				goto out;
			goto reply;
		}
	}
	if (r < 0)
		goto out;
	if (f.kind == DB_FILE_POS) {
		r = -EPERM;
		goto out;
	}
	if ((f.kind != DB_FILE_DB || !store_find(fs->store, f.db) ||
	     !db_exists(store_find(fs->store, f.db))) &&
	    replica_refuses(fs, f.kind)) {
		/* A journal SQLite cannot create gives SQLITE_READONLY. */
		r = -EACCES;
		if (f.kind == DB_FILE_WAL && (db = store_find(fs->store, f.db)) && db_exists(db) &&
		    db_wal_mode(db)) {
			int wfd;
			if (db_open_file(db, DB_FILE_WAL, O_RDWR | O_CREAT, 0644, &wfd) == 0)
				close(wfd);
			fusefs_queue_inval(fs, f.db, "-wal");
		}
		goto out;
	}
	if (f.kind == DB_FILE_DB) {
		bool known = (db = store_find(fs->store, f.db)) && db_exists(db);
		r = store_get_or_create(fs->store, f.db, &db);
		if (r == -EINVAL)
			r = -EPERM;
		if (r == 0 && !known)
			fusefs_queue_inval(fs, f.db, "-pos"); /* a cached negative entry must go */
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
		r = fusefs_mj_add(fs, name, &f, &ino);
		if (r < 0)
			goto out;
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
		ino = fusefs_db_ino(db, f.kind);
		gen = fusefs_gen_get(fs, db, f.kind, !existed);
	}
	r = fusefs_handle_new(fs, fi, fd, db, f.kind);
out:
	if (r < 0) {
		reply_open_err(req, fd, r);
		return;
	}
reply:
	fusefs_fill_entry(&e, ino, gen, &st);
	fuse_reply_create(req, &e, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	if (h->kind == KIND_VIRT) {
		char buf[300];
		int len = fusefs_virt_content(fuse_req_userdata(req), ino, buf, sizeof(buf));
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
		/*
		 * The position a reader sees has its LTX file on disk, as
		 * LiteFS's does (tools read -pos, then the file). An error
		 * leaves the file queued; the position is still committed.
		 */
		db_write_queued_ltx(h->db);
		db_get_visible_pos(h->db, &pos);
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
	else if (h->kind == KIND_MJ || h->kind == KIND_FILE)
		r = fs_pwrite_full(h->fd, buf, size, off);
	else if (h->kind == KIND_STAGE)
		r = (h->dirty = true, fs_pwrite_full(h->fd, buf, size, off));
	else
		r = db_write(h->db, (enum db_file)h->kind, h->fd, buf, size, off);
	if (r < 0) {
		if (r == -EPERM && h->kind == DB_FILE_DB)
			log_warn(
			    "db '%s': refusing a write to the database outside a journal or "
			    "WAL transaction: journal_mode OFF and MEMORY are not supported "
			    "(ltxfs captures each commit from the rollback journal or the WAL; "
			    "use DELETE, TRUNCATE, PERSIST or WAL). SQLite reports \"disk I/O "
			    "error\"; nothing was written",
			    db_name(h->db));
		else if (r != -EPERM && r != -EACCES)
			log_error("write to '%s' (%d) failed: %s", h->db ? db_name(h->db) : "?",
				  h->kind, strerror(-r));
		fuse_reply_err(req, -r);
	} else {
		/* h may be released as soon as the reply is out; a WAL commit or
		 * a commit point in the journal (PERSIST: a write at offset 0)
		 * may have queued a file */
		struct db *db = h->kind == DB_FILE_WAL || (h->kind == DB_FILE_JOURNAL && off == 0)
				    ? h->db
				    : NULL;
		fuse_reply_write(req, size);
		if (db)
			db_write_done(db);
	}
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	int r = 0;
	if (h->kind == KIND_STAGE) /* close(2) waits for this and reports its error */
		r = fusefs_stage_flush(fuse_req_userdata(req), h);
	fuse_reply_err(req, -r);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fusefs_stage_release(fuse_req_userdata(req), (struct handle *)(uintptr_t)fi->fh);
	fusefs_handle_free(fuse_req_userdata(req), (struct handle *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	int r = 0;
	if (h->kind == KIND_MJ || h->kind == KIND_FILE || h->kind == KIND_STAGE)
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
	struct stat st;
	char full[MOUNT_NAME_MAX];
	int r = fusefs_child(fs, parent, name, full, sizeof(full));
	memset(&f, 0, sizeof(f));
	if (r < 0)
		goto plain;
	name = full;
	if (fusefs_is_dir(fs, name)) {
		r = -EISDIR;
		goto plain;
	}
	r = fusefs_parse_name(name, &f);
	if (r == -ENOENT) {
		r = writes_refused(fs) ? -EACCES : fusefs_plain_unlink(fs, name);
		goto plain;
	}
	if (r < 0)
		goto out;
	struct db *db = store_find(fs->store, f.db);
	if (!db || (f.kind == DB_FILE_DB && !db_exists(db) && fusefs_plain_find(fs, name, &st))) {
		r = writes_refused(fs) ? -EACCES : fusefs_plain_unlink(fs, name);
		goto plain;
	}
	if (f.kind == DB_FILE_POS) {
		/*
		 * A database's position cannot go while the database exists; after
		 * a drop it may (rm -r of a directory, a test harness deleting
		 * test.db*): hidden until the database is created again.
		 */
		if (db_exists(db))
			r = -EPERM;
		else if (!fusefs_pos_visible(fs, db))
			r = -ENOENT;
		else if (writes_refused(fs))
			r = -EACCES;
		else
			fusefs_pos_hide(fs, db, true);
	} else if ((f.kind == DB_FILE_DB || f.kind == KIND_MJ) && replica_refuses(fs, f.kind)) {
		/* (a journal may go: db.c refuses it if that would commit) */
		r = -EACCES;
	} else if (f.kind == KIND_MJ) {
		char path[4096];
		r = store_super_journal_path(fs->store, f.db, f.hex, path, sizeof(path));
		if (r == 0 && unlink(path) < 0)
			r = -errno;
		fusefs_mj_remove(fs, name);
	} else {
		r = db_unlink(db, (enum db_file)f.kind);
		if (r < 0 && r != -ENOENT)
			log_error("unlink '%s' failed: %s", name, strerror(-r));
	}
out:
	fuse_reply_err(req, -r);
	if (r == 0 && f.kind == DB_FILE_JOURNAL)
		db_write_done(db); /* the commit point (DELETE mode) may have queued a file */
	if (r == 0 && f.kind == DB_FILE_DB) {
		fusefs_pos_hide(fs, db, false); /* the drop's position shows */
		/* a drop removed the companions behind the kernel's back */
		fusefs_queue_inval(fs, f.db, "-journal");
		fusefs_queue_inval(fs, f.db, "-wal");
		fusefs_queue_inval(fs, f.db, "-shm");
	}
	return;
plain:
	fuse_reply_err(req, -r);
}

static void op_refuse(fuse_req_t req)
{
	fuse_reply_err(req, EPERM);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct fusefs *fs = fuse_req_userdata(req);
	char full[MOUNT_NAME_MAX];
	struct fuse_entry_param e;
	struct stat st;
	fuse_ino_t ino = 0;
	int r = fusefs_child(fs, parent, name, full, sizeof(full));
	if (r == 0 && writes_refused(fs))
		r = -EACCES;
	if (r == 0) {
		/* owned by its maker, as on a local file system (the root is 0777) */
		const struct fuse_ctx *ctx = fuse_req_ctx(req);
		r = fusefs_mkdir(fs, full, mode, ctx->uid, ctx->gid, &ino, &st);
	}
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	fusefs_fill_entry(&e, ino, 0, &st);
	fuse_reply_entry(req, &e);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	op_refuse(req);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fusefs *fs = fuse_req_userdata(req);
	char full[MOUNT_NAME_MAX];
	int r = fusefs_child(fs, parent, name, full, sizeof(full));
	if (r == 0 && writes_refused(fs))
		r = -EACCES;
	if (r == 0)
		r = fusefs_rmdir(fs, full);
	fuse_reply_err(req, -r);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	struct fusefs *fs = fuse_req_userdata(req);
	char from[MOUNT_NAME_MAX], to[MOUNT_NAME_MAX];
	int r = fusefs_child(fs, parent, name, from, sizeof(from));
	if (r == 0)
		r = fusefs_child(fs, newparent, newname, to, sizeof(to));
	if (r == 0 && writes_refused(fs))
		r = -EACCES;
	if (r == 0)
		r = fusefs_rename(fs, from, to, flags);
	fuse_reply_err(req, -r);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	op_refuse(req);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	log_warn("hard link '%s' refused: a database has one name in the mount (copy it, or "
		 "rename it)",
		 newname);
	op_refuse(req);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	char path[MOUNT_NAME_MAX];
	int r = fusefs_dir_path(fuse_req_userdata(req), ino, path, sizeof(path));
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	fi->fh = 0;
	fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct dirbuf b = {0};
	int r = fusefs_dir_listing(req, fuse_req_userdata(req), ino, &b);
	if (r < 0) {
		free(b.p);
		fuse_reply_err(req, -r);
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
		int64_t t0_ = clock_mono_ns();                                                     \
		call;                                                                              \
		metrics_op(op, clock_mono_ns() - t0_);                                             \
	} while (0)

/*
 * An operation that may commit defers the store's wake-ups to after its
 * reply (store.h, deferred wake-ups): the commit is then sent to the
 * replicas by this thread, not by waking the sender (httpd_sender.c,
 * INLINE SENDS). The store is read before the call: req is gone after the
 * reply.
 */
#define COMMITS(op, call)                                                                          \
	do {                                                                                       \
		struct store *st_ = ((struct fusefs *)fuse_req_userdata(req))->store;              \
		store_defer_begin(st_);                                                            \
		TIMED(op, call);                                                                   \
		store_defer_end(st_);                                                              \
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
	COMMITS(MOP_SETATTR, op_setattr(req, ino, attr, to_set, fi));
}
static void t_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	COMMITS(MOP_OPEN, op_open(req, ino, fi));
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
	COMMITS(MOP_WRITE, op_write(req, ino, buf, size, off, fi));
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
	COMMITS(MOP_FSYNC, op_fsync(req, ino, datasync, fi));
}
static void t_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	COMMITS(MOP_UNLINK, op_unlink(req, parent, name));
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

const struct fuse_lowlevel_ops fusefs_ops = {
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
