/*
 * db.c - one database: commit capture into LTX files, and crash recovery.
 * This file holds the front door: db_open and db_free, the getters, and the
 * public file operations, which decide what each operation means for the
 * capture and call the concept files (db_int.h lists them, in the order in
 * which they may call each other, and tabulates the capture states).
 *
 * FILES. A database <name> lives in dbs/<name>/ of the data directory:
 * `database`, `journal`, `wal`, `shm`, and `ltx/%016x-%016x.ltx`, exactly as
 * LiteFS 0.5 lays it out. ltxfs adds `checksums` (written only at a clean
 * shutdown, removed at start) and `mj<HEX>` (SQLite super-journals).
 *
 * THE MODEL. SQLite's POSIX locks stay in the kernel: ltxfs implements no
 * getlk/setlk, so the kernel arbitrates every lock between processes exactly
 * as on a local disk and read transactions cost no round trip for locking.
 * Commits are recognised from the write stream itself, which SQLite orders
 * strictly because it holds its locks while it writes:
 *
 *   rollback modes  The commit point is the invalidation of the journal:
 *                   unlink (DELETE), truncation to 0 (TRUNCATE, or O_TRUNC),
 *                   or a write at offset 0 that destroys the journal magic
 *                   (PERSIST, and exclusive locking mode). Database writes
 *                   made between two commit points are recorded as a dirty
 *                   page set. At the commit point each dirty page is read
 *                   back and checksummed; pages whose checksum differs from
 *                   the committed state form the transaction. If none
 *                   differs and the size is unchanged (a ROLLBACK, including
 *                   one that played back pages spilled to the file, or a
 *                   statement that failed), no LTX file is written: a real
 *                   commit always changes page 1 (the change counter).
 *   WAL mode        The commit point is the completion of a frame whose
 *                   header carries a non-zero commit size and whose salt and
 *                   cumulative checksum chain from the last commit are valid,
 *                   i.e. the first moment WAL recovery would accept it. That
 *                   covers SQLite rewriting checksums of frames it overwrote
 *                   in place (walRewriteChecksums) and padding frames (they
 *                   change nothing, so they produce no LTX file).
 *
 * In both cases the transaction is captured *before* the write (or unlink)
 * that commits is performed. In rollback modes its LTX file is written then
 * (or was already, at SQLite's database fsync: PREPARED COMMITS in
 * db_journal.c); if it cannot be written (disk full), the commit-point
 * operation fails with that error and SQLite reports it, leaving the
 * database as after a failed commit. In WAL mode the WAL is the durable
 * record, so a small transaction's file is queued and written just after the
 * reply (QUEUED LTX FILES in db_ltxout.c); nothing outside the engine
 * observes the position before the file exists.
 *
 * Writes to the database file are allowed only inside a transaction SQLite
 * protects: while a journal exists, or while a WAL exists (checkpoints). Any
 * other write (journal_mode=OFF or MEMORY, or a non-SQLite file) is refused
 * with EPERM, because ltxfs could not tell when it commits.
 *
 * CHECKSUMS. pgck[pgno] holds the LTX page checksum of every committed page
 * and xsum their XOR, so the rolling database checksum is updated in O(pages
 * changed) per transaction and is never recomputed on the write path.
 *
 * DURABILITY. An LTX file is fdatasync'ed, with its directory, by the commit
 * point of a rollback-mode transaction in which the application asked for
 * durability (fsync of the database or journal), normally as its copy in the
 * LTX ring on the syncer thread while the application's fsync of the database
 * runs (the file itself is then written after the commit point). In WAL mode the WAL itself
 * is the durable record: LTX files are written without fsync and made
 * durable (syncfs) before the WAL is restarted, truncated or deleted; start-up
 * recovery regenerates any LTX file that power loss tore from the WAL.
 *
 * RECOVERY (db_open, before the mount exists) is described step by step at
 * the top of db_recover.c.
 *
 * THE OPERATIONS. db_open_file, db_write, db_truncate, db_unlink and
 * db_fsync each take db->mu (db_write and db_truncate refuse while the
 * sticky error is set) and turn what SQLite does into transitions of the
 * capture states (db_int.h): a journal header opens a transaction, a
 * journal's unlink, truncation or zeroed header is a commit point
 * (db_journal_commit), a WAL write may complete a commit (db_wal_write), an
 * fsync of the database prepares one (db_prep_build), a WAL restart,
 * truncation or unlink first makes the LTX files durable (db_sync_ltx), and
 * the database's unlink is a drop (db_commit_drop).
 * Writes to -shm go straight to the file without db->mu.
 *
 * THREADS. Any FUSE worker may call in; db->mu serialises all state changes
 * and the writes that carry them. The queued LTX files are written without
 * db->mu by the worker that replied (q_busy marks it); the syncer thread only
 * fdatasyncs a descriptor it is handed (the LTX ring, or a prepared file).
 * SQLite's own locks already serialise writers, so the mutex is uncontended
 * except against checkpoints. Each concept file's essay says which thread
 * calls it with db->mu held or not. Here: the getters take db->mu for a
 * moment to copy, never to write (a queued commit's LTX file is written by
 * db_write_queued_ltx, which callers that need the files call by name), and
 * are called from any thread; db_enforce_retention runs on the retention
 * thread and takes db->mu only inside db_get_pos; db_open runs before anyone
 * else sees the db, and db_free after the last call.
 */

#include "db_int.h"

#include "ltxfs/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

/* ----------------------------------------------------------------- getters */

const char *db_name(const struct db *db)
{
	return db->name;
}

void db_set_index(struct db *db, size_t idx)
{
	db->idx = idx;
}

size_t db_index(const struct db *db)
{
	return db->idx;
}

/*
 * POSITION. Every stream reads the position at every commit, while the
 * committing thread may still hold db->mu: a seqlock lets them read it
 * without waiting for (and waking up behind) that thread. The writer, under
 * db->mu, makes pos_seq odd, stores the fields, and makes it even again;
 * a reader retries until it read the same even value before and after.
 * Start-up recovery writes db->pos directly: nobody else sees the db yet.
 */
void db_pos_set(struct db *db, uint64_t txid, uint64_t checksum, int64_t timestamp)
{
	uint32_t seq = db->pos_seq;
	__atomic_store_n(&db->pos_seq, seq + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	__atomic_store_n(&db->pos.txid, txid, __ATOMIC_RELAXED);
	__atomic_store_n(&db->pos.checksum, checksum, __ATOMIC_RELAXED);
	__atomic_store_n(&db->pos.timestamp, timestamp, __ATOMIC_RELAXED);
	__atomic_store_n(&db->pos_seq, seq + 2, __ATOMIC_RELEASE);
}

/*
 * VISIBLE POSITION. A replica's apply moves the position under db->mu while
 * it still holds SQLite's locks, which it releases afterwards (the unlock
 * hook, db_apply.c). An application that waits for the -pos file to show a
 * transaction and then reads it must find the database readable, not
 * locked ("database is locked" without a busy timeout): so while an apply
 * holds the locks, the -pos file shows the position before it (pos_vis,
 * taken by db_pos_hold), and the new one once db_pos_release ran after the
 * unlock. The engine, the streams and /info use db->pos as always.
 */
void db_pos_hold(struct db *db)
{
	if (db->pos_held)
		return;
	db->pos_vis = db->pos;
	db->pos_held = true;
}

void db_pos_release(struct db *db)
{
	pthread_mutex_lock(&db->mu);
	db->pos_held = false;
	pthread_mutex_unlock(&db->mu);
}

void db_get_visible_pos(struct db *db, struct db_pos *ret)
{
	pthread_mutex_lock(&db->mu);
	*ret = db->pos_held ? db->pos_vis : db->pos;
	pthread_mutex_unlock(&db->mu);
}

void db_get_pos(struct db *db, struct db_pos *ret)
{
	for (;;) {
		uint32_t s1 = __atomic_load_n(&db->pos_seq, __ATOMIC_ACQUIRE);
		ret->txid = __atomic_load_n(&db->pos.txid, __ATOMIC_RELAXED);
		ret->checksum = __atomic_load_n(&db->pos.checksum, __ATOMIC_RELAXED);
		ret->timestamp = __atomic_load_n(&db->pos.timestamp, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (!(s1 & 1) && __atomic_load_n(&db->pos_seq, __ATOMIC_RELAXED) == s1)
			return;
		sched_yield();
	}
}

void db_set_backup(struct db *db, const struct db_backup *b)
{
	pthread_mutex_lock(&db->mu);
	db->bk = *b;
	pthread_mutex_unlock(&db->mu);
}

void db_get_backup(struct db *db, struct db_backup *ret)
{
	pthread_mutex_lock(&db->mu);
	*ret = db->bk;
	pthread_mutex_unlock(&db->mu);
}

void db_format_pos(const struct db_pos *pos, char buf[35])
{
	snprintf(buf, 35, "%016" PRIx64 "/%016" PRIx64 "\n", pos->txid, pos->checksum);
}

bool db_txn_pending(struct db *db)
{
	pthread_mutex_lock(&db->mu);
	bool active = db->journal_active;
	pthread_mutex_unlock(&db->mu);
	return active;
}

void db_get_stats(struct db *db, struct db_stats *st)
{
	memset(st, 0, sizeof(*st));
	for (int k = 0; k < DB_FILE_N; k++)
		st->writes[k] = __atomic_load_n(&db->st_writes[k], __ATOMIC_RELAXED);
	st->commits = __atomic_load_n(&db->st_commits, __ATOMIC_RELAXED);
	st->ltx_removed = __atomic_load_n(&db->st_removed, __ATOMIC_RELAXED);
	st->grouped = __atomic_load_n(&db->st_grouped, __ATOMIC_RELAXED);
	pthread_mutex_lock(&db->mu);
	st->wal_tail_cuts = db->wt_cuts;
	st->prepared_used = db->st_prep_used;
	st->ring_records = db->st_ring_records;
	st->size_bytes = db->exists ? (uint64_t)db->page_count * db->page_size : 0;
	st->page_size = db->page_size;
	st->page_count = db->exists ? db->page_count : 0;
	pthread_mutex_unlock(&db->mu);
}

void db_ltx_usage(struct db *db, uint64_t *files, uint64_t *bytes)
{
	*files = *bytes = 0;
	DIR *d = opendir(db->ltx_dir);
	struct dirent *de;
	if (!d)
		return;
	while ((de = readdir(d))) {
		uint64_t a, b;
		struct stat sb;
		if (ltx_parse_filename(de->d_name, &a, &b) == 0 &&
		    fstatat(dirfd(d), de->d_name, &sb, 0) == 0) {
			(*files)++;
			*bytes += (uint64_t)sb.st_size;
		}
	}
	closedir(d);
}

/* --------------------------------------------------------- file operations */

int db_stat_file(struct db *db, enum db_file kind, struct stat *st)
{
	char path[4096];
	if (kind == DB_FILE_DB && !db_exists(db))
		return -ENOENT;
	int r = db_file_path(db, kind, path, sizeof(path));
	if (r < 0)
		return r;
	return stat(path, st) < 0 ? -errno : 0;
}

int db_open_file(struct db *db, enum db_file kind, int flags, mode_t mode, int *ret_fd)
{
	int r = 0;
	pthread_mutex_lock(&db->mu);
	switch (kind) {
	case DB_FILE_DB:
		if (!db->exists) {
			if (!(flags & O_CREAT)) {
				r = -ENOENT;
				break;
			}
			r = open_backing(db, DB_FILE_DB, O_RDWR | O_CREAT, 0644, &db->dbfd);
			if (r < 0)
				break;
			db->exists = true;
		} else if ((flags & O_CREAT) && (flags & O_EXCL)) {
			r = -EEXIST;
			break;
		}
		if (flags & O_TRUNC) {
			struct stat st;
			if (fstat(db->dbfd, &st) < 0) {
				r = -errno;
				break;
			}
			if (st.st_size != 0) {
				r = -EPERM; /* truncating a live database is not a transaction */
				break;
			}
			flags &= ~O_TRUNC; /* a no-op on an empty file */
		}
		r = open_backing(db, kind, flags & ~(O_CREAT | O_EXCL), mode, ret_fd);
		break;
	case DB_FILE_JOURNAL:
	case DB_FILE_WAL:
	case DB_FILE_SHM:
		if (!db->exists) {
			r = -ENOENT;
			break;
		}
		if ((flags & O_TRUNC) && kind == DB_FILE_JOURNAL) {
			r = db_journal_commit(db);
			if (r < 0)
				break;
			db->journal_active = false;
		}
		if ((flags & O_TRUNC) && kind == DB_FILE_WAL) {
			r = db_sync_ltx(db);
			if (r < 0)
				break;
			db_wal_reset(db);
			db->wal_live = false;
		}
		/*
		 * A write-only open (cp, TCL's file copy: SQLite's test harness
		 * saves and restores a database with its -wal) still gets a
		 * read-write descriptor: db_wal_write reads the frames back
		 * through it to find the commits in what was written.
		 */
		if ((flags & O_ACCMODE) == O_WRONLY)
			flags = (flags & ~O_ACCMODE) | O_RDWR;
		r = open_backing(db, kind, flags, mode, ret_fd);
		if (r < 0)
			break;
		if (kind == DB_FILE_JOURNAL)
			db->journal_exists = true;
		else if (kind == DB_FILE_WAL) {
			struct stat st;
			db->wal_exists = true;
			if (fstat(*ret_fd, &st) == 0) {
				db->wal_size = db->wal_gen_end = (uint64_t)st.st_size;
				db->wal_live = st.st_size > 0;
			}
		}
		break;
	default:
		r = -EINVAL;
	}
	pthread_mutex_unlock(&db->mu);
	return r;
}

int db_write(struct db *db, enum db_file kind, int fd, const void *buf, size_t n, off_t off)
{
	int r = 0;
	if ((unsigned)kind < DB_FILE_N)
		__atomic_add_fetch(&db->st_writes[kind], 1, __ATOMIC_RELAXED);
	if (kind == DB_FILE_SHM)
		return fs_pwrite_full(fd, buf, n, off);
	pthread_mutex_lock(&db->mu);
	if (db->sticky_err) {
		r = db->sticky_err;
		pthread_mutex_unlock(&db->mu);
		return r;
	}
	if (db->q_err && (r = db_queue_settle(db)) < 0) {
		pthread_mutex_unlock(&db->mu);
		return r;
	}
	switch (kind) {
	case DB_FILE_DB:
		if (!db->journal_active && !db->wal_live) {
			r = -EPERM;
			break;
		}
		/*
		 * Every database write is recorded, whatever the journal mode: a
		 * checkpoint's writes change nothing committed, so at the next
		 * rollback-mode commit point they compare equal.
		 */
		db->write_gen++;
		{
			if (db->page_size == 0 && off == 0 && n >= SQLITE_HEADER_SIZE) {
				struct sqlite_dbheader dh;
				if (sqlite_dbheader_parse(&dh, buf, n) == 0)
					db->page_size = dh.page_size;
			}
			if (db->page_size == 0) {
				db->dirty_all = true;
			} else {
				uint64_t first = (uint64_t)off / db->page_size + 1;
				uint64_t lastp = ((uint64_t)off + n - 1) / db->page_size + 1;
				for (uint64_t p = first; p <= lastp && r == 0 && n > 0; p++)
					r = p > UINT32_MAX ? -EFBIG : dirty_add(db, (uint32_t)p);
				if (r < 0)
					break;
			}
		}
		r = fs_pwrite_full(fd, buf, n, off);
		break;
	case DB_FILE_JOURNAL:
		if (off == 0 && n >= 8 && memcmp(buf, journal_magic, 8) != 0) {
			/* PERSIST mode (and exclusive locking): header zeroed. This
			 * write is the commit point, so it is counted after the
			 * prepared commit was checked (PREPARED COMMITS,
			 * db_journal.c). */
			r = db_journal_commit(db);
			if (r < 0)
				break;
			db->journal_active = false;
		}
		db->write_gen++;
		r = fs_pwrite_full(fd, buf, n, off);
		if (r == 0 && off == 0 && n >= 8 && memcmp(buf, journal_magic, 8) == 0)
			db->journal_active = true;
		break;
	case DB_FILE_WAL:
		if (db->q_unsynced) { /* no fsync between that commit and this write */
			db->q_unsynced = false;
			db->q_sync_streak = 0;
		}
		r = db_wal_write(db, fd, buf, n, off);
		if (r == 0 && n > 0) {
			db->wal_live = true;
			if ((uint64_t)off + n > db->wal_size)
				db->wal_size = (uint64_t)off + n;
			if ((uint64_t)off + n > db->wal_gen_end)
				db->wal_gen_end = (uint64_t)off + n;
		}
		break;
	default:
		r = -EINVAL;
	}
	pthread_mutex_unlock(&db->mu);
	return r;
}

int db_truncate(struct db *db, enum db_file kind, int fd, off_t size)
{
	char path[4096];
	int r = 0;
	if (kind >= DB_FILE_POS)
		return -EPERM;
	pthread_mutex_lock(&db->mu);
	if (db->sticky_err && kind != DB_FILE_SHM) {
		r = db->sticky_err;
		goto out;
	}
	if (kind == DB_FILE_DB && !db->exists) {
		r = -ENOENT;
		goto out;
	}
	/*
	 * Outside a journal, SQLite truncates the database only after a commit
	 * that shrank it (pager_end_transaction: the file is larger than the
	 * image): that removes nothing committed, so it is allowed.
	 */
	if (kind == DB_FILE_DB && !db->journal_active && !db->wal_live &&
	    (uint64_t)size < (uint64_t)db->page_count * db->page_size) {
		r = -EPERM;
		goto out;
	}
	if (kind == DB_FILE_JOURNAL && size == 0) {
		r = db_journal_commit(db);
		if (r < 0)
			goto out;
		db->journal_active = false;
	}
	if (kind == DB_FILE_WAL) {
		r = db_sync_ltx(db);
		if (r < 0)
			goto out;
		if ((uint64_t)size < db->wal_end || size == 0)
			db_wal_reset(db);
		else if ((uint64_t)size - db->wal_end < db->wt_len)
			db->wt_len = (size_t)((uint64_t)size - db->wal_end);
		if (size == 0)
			db->wal_live = false;
		db->wal_size = (uint64_t)size;
		if (db->wal_gen_end > (uint64_t)size)
			db->wal_gen_end = (uint64_t)size;
	}
	if (kind == DB_FILE_DB || kind == DB_FILE_JOURNAL)
		db->write_gen++;
	if (fd >= 0) {
		if (ftruncate(fd, size) < 0)
			r = -errno;
	} else {
		r = db_file_path(db, kind, path, sizeof(path));
		if (r == 0 && truncate(path, size) < 0)
			r = -errno;
	}
out:
	pthread_mutex_unlock(&db->mu);
	return r;
}

int db_unlink(struct db *db, enum db_file kind)
{
	char path[4096];
	int r = 0;
	pthread_mutex_lock(&db->mu);
	switch (kind) {
	case DB_FILE_JOURNAL:
		r = db_journal_commit(db);
		if (r < 0)
			break;
		r = db_file_path(db, kind, path, sizeof(path));
		if (r < 0)
			break;
		/*
		 * The last reference to the inode frees its blocks, and with the
		 * discard mount option waits for the device to discard them: a
		 * few hundred microseconds SQLite's commit need not wait for.
		 * Held open, the inode goes when db_write_done closes it, after
		 * the reply.
		 */
		int keep = open(path, O_PATH | O_CLOEXEC);
		if (unlink(path) < 0)
			r = -errno;
		if (r == 0 && keep >= 0 && db->evict_fd < 0) {
			db->evict_fd = keep;
			keep = -1;
		}
		if (keep >= 0)
			close(keep);
		if (r == 0 || r == -ENOENT)
			db->journal_exists = db->journal_active = false;
		break;
	case DB_FILE_WAL:
		r = db_sync_ltx(db);
		if (r < 0)
			break;
		r = db_file_path(db, kind, path, sizeof(path));
		if (r == 0 && unlink(path) < 0)
			r = -errno;
		if (r == 0 || r == -ENOENT) {
			db->wal_exists = db->wal_live = false;
			db->wal_size = db->wal_gen_end = 0;
			db_wal_reset(db);
		}
		break;
	case DB_FILE_SHM:
		r = db_file_path(db, kind, path, sizeof(path));
		if (r == 0 && unlink(path) < 0)
			r = -errno;
		break;
	case DB_FILE_DB:
		if (!db->exists) {
			r = -ENOENT;
			break;
		}
		/* a commit prepared but never made goes first: its TXID is the drop's */
		db_prep_drop(db);
		r = db_sync_ltx(db);
		if (r == 0)
			r = db_commit_drop(db);
		if (r < 0)
			break;
		for (int k = DB_FILE_DB; k <= DB_FILE_SHM; k++) {
			if (db_file_path(db, k, path, sizeof(path)) == 0)
				fs_unlink_if_exists(path);
		}
		if (db->dbfd >= 0)
			close(db->dbfd);
		db->dbfd = -1;
		db->exists = false;
		db->journal_exists = db->journal_active = db->wal_exists = db->wal_live = false;
		db_wal_reset(db);
		dirty_clear(db);
		fs_fsync_dir(db->dir);
		break;
	default:
		r = -EPERM;
	}
	pthread_mutex_unlock(&db->mu);
	return r;
}

int db_fsync(struct db *db, enum db_file kind, int fd, bool datasync)
{
	struct syncer *sy = NULL;
	int pfd = -1, pr = 0;
	bool dirsync = false;
	if (kind == DB_FILE_SHM)
		return (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? -errno : 0;
	pthread_mutex_lock(&db->mu);
	if (kind == DB_FILE_DB) {
		if (db->prep && db->prep_gen != db->write_gen)
			db_prep_drop(db); /* written to since: build it again */
		if (db->journal_active && !db->prep && (sy = db_syncer(db)) != NULL)
			pfd = db_prep_build(db, &dirsync);
	} else if (kind == DB_FILE_WAL) {
		if (db->q_unsynced) /* synchronous=FULL: an fsync follows each commit */
			db->q_sync_streak++;
		db->q_unsynced = false;
	}
	pthread_mutex_unlock(&db->mu);
	if (pfd >= 0)
		syncer_start(sy, pfd, dirsync);
	int r = (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? -errno : 0;
	if (pfd >= 0) {
		pr = syncer_wait(sy);
		close(pfd);
	}
	if (kind == DB_FILE_WAL)
		return r;
	pthread_mutex_lock(&db->mu);
	if (pfd >= 0 && pr < 0) {
		if (db->prep) /* it may be durable even so: the drop fsyncs ltx/ */
			db->prep_synced = true;
		db_prep_drop(db); /* the commit point builds and syncs it again */
	} else if (pfd >= 0 && db->prep)
		db->prep_synced = true;
	if (r == 0 && db->journal_active)
		db->tx_synced = true;
	pthread_mutex_unlock(&db->mu);
	return r;
}

/* --------------------------------------------------------------- retention */

int db_enforce_retention(struct db *db, int64_t cutoff_ms, uint64_t keep_after)
{
	struct db_pos pos;
	db_get_pos(db, &pos); /* a prepared commit's file is newer than the newest commit */
	DIR *d = opendir(db->ltx_dir);
	struct dirent *de;
	uint64_t newest = 0, removed_max = 0;
	int n = 0;
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d))) {
		uint64_t mn, mx;
		if (ltx_parse_filename(de->d_name, &mn, &mx) == 0 && mx > newest)
			newest = mx;
	}
	rewinddir(d);
	while ((de = readdir(d))) {
		uint64_t mn, mx;
		struct stat st;
		if (ltx_parse_filename(de->d_name, &mn, &mx) < 0 || mx == newest ||
		    mx > keep_after || mx >= pos.txid)
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, 0) < 0)
			continue;
		int64_t mtime = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
		if (mtime >= cutoff_ms)
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) == 0) {
			n++;
			if (mx > removed_max)
				removed_max = mx;
		}
	}
	closedir(d);
	if (removed_max) /* the cache holds only files that exist (LTX CACHE) */
		db_ltx_cache_trim(db, removed_max);
	__atomic_add_fetch(&db->st_removed, (uint64_t)n, __ATOMIC_RELAXED);
	return n;
}

/* ----------------------------------------------------------- open and free */

int db_open(struct db **ret, const char *dir, const char *name, bool create,
	    const struct db_options *opt)
{
	struct db *db = calloc(1, sizeof(*db));
	char ltx[4096];
	int r;
	if (!db)
		return -ENOMEM;
	pthread_mutex_init(&db->mu, NULL);
	pthread_mutex_init(&db->lc_mu, NULL);
	pthread_cond_init(&db->q_cond, NULL);
	db->dbfd = -1;
	db->evict_fd = -1;
	db->ltx_dirfd = -1;
	db->opt = *opt;
	db->dir = strdup(dir);
	db->name = strdup(name);
	if (!db->dir || !db->name) {
		r = -ENOMEM;
		goto fail;
	}
	r = fs_path(ltx, sizeof(ltx), "%s/ltx", dir);
	if (r < 0)
		goto fail;
	db->ltx_dir = strdup(ltx);
	if (!db->ltx_dir) {
		r = -ENOMEM;
		goto fail;
	}
	if (create) {
		r = fs_mkdir_p(ltx, 0755);
		if (r < 0)
			goto fail;
	} else {
		struct stat st;
		if (stat(dir, &st) < 0) {
			r = -errno;
			goto fail;
		}
		r = fs_mkdir_p(ltx, 0755);
		if (r < 0)
			goto fail;
	}
	db->ltx_dirfd = open(ltx, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (db->ltx_dirfd < 0) {
		r = -errno;
		goto fail;
	}
	struct statfs sfs;
	db->dirsync = !(statfs(ltx, &sfs) == 0 && sfs.f_type == 0xEF53 /* EXT4_SUPER_MAGIC */);
	r = db_recover(db);
	if (r < 0)
		goto fail;
	db->live = true;
	*ret = db;
	return 0;
fail:
	db_free(db);
	return r;
}

void db_free(struct db *db)
{
	if (!db)
		return;
	if (db->ltx_dir) {
		pthread_mutex_lock(&db->mu);
		db_sync_ltx(db);
		pthread_mutex_unlock(&db->mu);
		if (db->exists && db->dbfd >= 0 && !db->sticky_err && db->page_size &&
		    !db->journal_active)
			db_save_checksums(db);
	}
	if (db->dbfd >= 0)
		close(db->dbfd);
	if (db->evict_fd >= 0)
		close(db->evict_fd);
	syncer_free(db->syncer);
	pthread_mutex_lock(&db->mu);
	db_prep_drop(db);
	pthread_mutex_unlock(&db->mu);
	ltx_ring_free(db->ring);
	db_ltx_cache_clear(db);
	pthread_mutex_destroy(&db->lc_mu);
	pthread_mutex_destroy(&db->mu);
	pthread_cond_destroy(&db->q_cond);
	db_retained_drop(db);
	free(db->r_ring);
	while (db->q_head) { /* only if the last attempt to write them failed */
		struct ltxjob *j = db->q_head;
		db->q_head = j->next;
		ltxjob_free(j);
	}
	free(db->pgck);
	free(db->dirty_bits);
	free(db->dirty);
	free(db->wt);
	free(db->dir);
	free(db->name);
	free(db->ltx_dir);
	if (db->ltx_dirfd >= 0)
		close(db->ltx_dirfd);
	free(db);
}
