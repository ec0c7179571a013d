/*
 * fusefs_apply.c - the replica-apply lock protocol: the hooks a replica's
 * db_apply_ltx() uses to change a database under the feet of applications
 * that hold SQLite locks through the mount.
 *
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
 * held only while the pages of one transaction are written. While a poll
 * waits, fs->apply_waiting is raised and the store kicked: on a new primary
 * (adoption), a write waiting for the node to accept writes may be the
 * holder, and it gives way at once (fusefs_ops.c) instead of both waiting.
 *
 * ONE APPLY, in the order db_apply_ltx() calls the hooks:
 *
 *   hook_lock        open <mount>/<db> or <db>-shm, take the locks above;
 *                    the descriptors are the token (a new database: none)
 *   (db_apply.c writes the pages under db->mu, then releases it)
 *   hook_invalidate  drop the kernel's cached data of a changed range
 *   hook_entries     drop the entries of <db> and its companions, when the
 *                    database appeared or disappeared
 *   hook_unlock      WAL: rewrite the wal-index header; close the
 *                    descriptors, which releases the locks; on a node
 *                    that refuses writes, give a WAL database an empty
 *                    -wal if it has none
 *
 * A WHOLE-FILE INSTALL on the primary (fusefs_whole.c) takes the same locks
 * through fusefs_install_lock and releases them through
 * fusefs_install_unlock, on a FUSE worker (FLUSH, RENAME): other workers
 * answer its opens. Inside a RENAME (dir_locked) the kernel holds the
 * root's lock, so nothing may be looked up or created: the database file is
 * the rename's target (its dentry is pinned), the -shm is opened without
 * O_CREAT and only when some handle has it open (otherwise no WAL reader is
 * inside a transaction, and a new one waits for the rename to create or
 * look up its -shm), and entries are invalidated by the notifier.
 *
 * THREADS. The hooks run on the replica thread (or an HTTP connection's
 * thread during adoption), never on a FUSE worker: their opens, lock
 * requests and fuse_lowlevel_notify_inval_* calls are FUSE requests that
 * workers must be free to answer. No ltxfs mutex is held while they wait.
 * fusefs_begin_stop() sets fs->stopping, which makes a wait for readers'
 * locks give up with -ESHUTDOWN so that shutdown is never held by a reader.
 */
#include "fusefs_int.h"

#include "ltxfs/fsutil.h"
#include "ltxfs/log.h"
#include "ltxfs/sqlfmt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct applytok {
	int dbfd, shmfd;
};

static int lock_wait(struct fusefs *fs, int fd, off_t start, off_t len, const char *what,
		     struct db *db)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
	unsigned delay = 20, waited = 0, warned = 0;
	bool announced = false;
	int r = 0;
	while (fcntl(fd, F_SETLK, &fl) < 0) {
		if (errno != EAGAIN && errno != EACCES && errno != EINTR) {
			r = -errno;
			break;
		}
		if (fs->stopping) {
			r = -ESHUTDOWN;
			break;
		}
		if (!announced) {
			/* a write waiting in fusefs_ops.c may hold this lock: it gives way */
			__atomic_add_fetch(&fs->apply_waiting, 1, __ATOMIC_SEQ_CST);
			store_kick(fs->store);
			announced = true;
		}
		usleep(delay);
		waited += delay;
		delay = delay < 1000 ? delay * 2 : 1000;
		if (waited / 5000000 > warned) {
			warned = waited / 5000000;
			log_warn("db '%s': waiting %us for readers to release the %s lock",
				 db_name(db), warned * 5, what);
		}
	}
	if (announced)
		__atomic_sub_fetch(&fs->apply_waiting, 1, __ATOMIC_SEQ_CST);
	return r;
}

/* True while some handle has kind of db open (its dentry is then pinned). */
static bool handle_open(struct fusefs *fs, struct db *db, int kind)
{
	bool found = false;
	pthread_mutex_lock(&fs->mu);
	for (struct handle *h = fs->handles.next; h != &fs->handles; h = h->next)
		if (h->db == db && h->kind == kind)
			found = true;
	pthread_mutex_unlock(&fs->mu);
	return found;
}

static int lock_db(struct fusefs *fs, struct db *db, bool dir_locked, void **token)
{
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
		/*
		 * Inside a rename the kernel holds the root's lock: a lookup or
		 * a create would wait for it forever. An -shm some handle has
		 * open is cached and opens without either; with none open, no
		 * WAL reader is inside a transaction and a new one must create
		 * or look up the -shm, which waits for the rename to finish.
		 * Outside a rename, open without O_CREAT when it exists: an
		 * O_CREAT open takes the root directory's lock in the kernel,
		 * which a create waiting for this node to accept writes holds
		 * (fusefs_ops.c, WRITE REFUSAL).
		 */
		if (dir_locked && !handle_open(fs, db, DB_FILE_SHM))
			return 0;
		r = fs_path(path, sizeof(path), "%s/%s-shm", fs->mountpoint, db_name(db));
		if (r == 0 && (t->shmfd = open(path, O_RDWR | O_CLOEXEC)) < 0 && errno == ENOENT &&
		    !dir_locked)
			t->shmfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
		if (r == 0 && t->shmfd < 0)
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
		/* (inside a rename the database is its target: its dentry is pinned) */
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

static int hook_lock(void *ctx, struct db *db, void **token)
{
	return lock_db(ctx, db, false, token);
}

int fusefs_install_lock(struct fusefs *fs, struct db *db, bool dir_locked, void **token)
{
	return lock_db(fs, db, dir_locked, token);
}

static void hook_invalidate(void *ctx, struct db *db, uint64_t off, uint64_t len)
{
	struct fusefs *fs = ctx;
	int r = fuse_lowlevel_notify_inval_inode(fs->se, fusefs_db_ino(db, DB_FILE_DB), (off_t)off,
						 (off_t)len);
	if (r < 0 && r != -ENOENT)
		log_debug("db '%s': invalidate [%llu,+%llu): %s", db_name(db),
			  (unsigned long long)off, (unsigned long long)len, strerror(-r));
}

static void inval_entry_now(struct fusefs *fs, struct db *db, const char *suffix)
{
	char name[512];
	const char *dbn = db_name(db), *slash = strrchr(dbn, '/');
	fuse_ino_t parent = fusefs_dir_known(fs, dbn, slash ? (size_t)(slash - dbn) : 0);
	if (!parent)
		return; /* the kernel holds no dentry in a directory it never looked up */
	snprintf(name, sizeof(name), "%s%s", slash ? slash + 1 : dbn, suffix);
	fuse_lowlevel_notify_inval_entry(fs->se, parent, name, strlen(name));
}

/*
 * The directories above a nested database: created with it (store.c), they
 * may be cached as negative entries by a lookup that came first.
 */
static void inval_ancestors(struct fusefs *fs, struct db *db)
{
	const char *name = db_name(db);
	for (const char *s = strchr(name, '/'); s; s = strchr(s + 1, '/')) {
		const char *prev = s;
		while (prev > name && prev[-1] != '/')
			prev--;
		size_t plen = prev > name ? (size_t)(prev - 1 - name) : 0;
		fuse_ino_t parent = fusefs_dir_known(fs, name, plen);
		if (parent)
			fuse_lowlevel_notify_inval_entry(fs->se, parent, prev, (size_t)(s - prev));
	}
}

static void hook_entries(void *ctx, struct db *db)
{
	struct fusefs *fs = ctx;
	static const char *const sfx[] = {"", "-journal", "-wal", "-shm", "-pos"};
	inval_ancestors(fs, db);
	for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++)
		inval_entry_now(fs, db, sfx[i]);
}

static void unlock_db(struct fusefs *fs, struct db *db, void *token, bool ok, uint32_t page_size,
		      uint32_t npages, bool dir_locked)
{
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
	if (wal && !store_accepts_writes(fs->store)) {
		/*
		 * Readers of a WAL database need a -wal to open read-only, and
		 * on a node that refuses writes they cannot create it. Where
		 * writes are accepted (a whole-file install on the primary)
		 * SQLite creates it itself; one made here would be a file the
		 * program that copied the database in did not write (cp of a
		 * database, then of its -wal, fails: "file already exists").
		 */
		struct stat st;
		int wfd;
		if (db_stat_file(db, DB_FILE_WAL, &st) == -ENOENT &&
		    db_open_file(db, DB_FILE_WAL, O_RDWR | O_CREAT, 0644, &wfd) == 0) {
			close(wfd);
			if (dir_locked)
				fusefs_queue_inval(fs, db_name(db), "-wal");
			else
				inval_entry_now(fs, db, "-wal");
		}
	}
}

static void hook_unlock(void *ctx, struct db *db, void *token, bool ok, uint32_t page_size,
			uint32_t npages)
{
	unlock_db(ctx, db, token, ok, page_size, npages, false);
}

void fusefs_install_unlock(struct fusefs *fs, struct db *db, void *token, bool ok,
			   uint32_t page_size, uint32_t npages, bool dir_locked)
{
	unlock_db(fs, db, token, ok, page_size, npages, dir_locked);
}

void fusefs_apply_hooks(struct fusefs *fs, struct db_apply_hooks *ret)
{
	ret->lock = hook_lock;
	ret->invalidate = hook_invalidate;
	ret->entries = hook_entries;
	ret->unlock = hook_unlock;
	ret->ctx = fs;
}
