/*
 * test_db.c - the db layer driven by real SQLite, without FUSE.
 *
 * A small SQLite VFS sends every open, write, truncate, delete and sync of a
 * database, its journal and its WAL through db_open_file/db_write/... exactly
 * as the FUSE layer does (locks are the unix VFS's own fcntl locks on the
 * backing files). That makes fault injection possible: a WAL fsync that fails
 * after SQLite wrote a commit frame, which no integration test can provoke.
 *
 * After each scenario the test checks the invariant every integration test
 * checks: the position's checksum equals a checksum recomputed from the
 * database file, and the newest LTX file verifies and agrees.
 */
#include "unit.h"

#include "ltxfs/crc.h"
#include "ltxfs/db.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/ltx.h"
#include "ltxfs/ltxring.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static struct db *g_db;
static char g_dir[256];
static int g_fail_wal_syncs; /* fail this many WAL syncs */
static bool g_no_write_done; /* skip db_write_done, as a worker not yet back from its reply */
static int g_wal_writes_refused;
static int g_fail_journal_deletes; /* fail this many journal deletes */
static size_t g_wal_split;	   /* split WAL writes at multiples of this offset (0: no) */
static bool g_split_appends;	   /* ... only writes that reach past what was written before */
static off_t g_wal_written;	   /* the end of what was written to the WAL */

struct tfile {
	sqlite3_file base;
	int fd;
	enum db_file kind;
};

static enum db_file kind_of(const char *name)
{
	size_t n = strlen(name);
	if (n > 8 && strcmp(name + n - 8, "-journal") == 0)
		return DB_FILE_JOURNAL;
	if (n > 4 && strcmp(name + n - 4, "-wal") == 0)
		return DB_FILE_WAL;
	if (n > 4 && strcmp(name + n - 4, "-shm") == 0)
		return DB_FILE_SHM;
	return DB_FILE_DB;
}

static sqlite3_vfs *g_unix;

static int t_close(sqlite3_file *f)
{
	close(((struct tfile *)f)->fd);
	return SQLITE_OK;
}

static int t_read(sqlite3_file *f, void *b, int n, sqlite3_int64 off)
{
	ssize_t r = pread(((struct tfile *)f)->fd, b, (size_t)n, off);
	if (r < 0)
		return SQLITE_IOERR_READ;
	if (r < n) {
		memset((char *)b + r, 0, (size_t)(n - r));
		return SQLITE_IOERR_SHORT_READ;
	}
	return SQLITE_OK;
}

/*
 * One write as db_write sees it. With g_wal_split, a WAL write arrives in
 * pieces cut at multiples of g_wal_split in the file, as the kernel cuts
 * writes at page boundaries (4096) when a page is not in its cache.
 */
static int write_pieces(struct tfile *t, const uint8_t *b, size_t n, off_t off)
{
	if (t->kind == DB_FILE_WAL && off == 0)
		g_wal_written = 0; /* a new WAL generation: nothing of it is cached */
	if (t->kind == DB_FILE_WAL && off + (off_t)n > g_wal_written)
		g_wal_written = off + (off_t)n;
	else if (t->kind == DB_FILE_WAL && g_split_appends)
		return db_write(g_db, t->kind, t->fd, b, n, off); /* its pages are cached */
	if (t->kind != DB_FILE_WAL || !g_wal_split)
		return db_write(g_db, t->kind, t->fd, b, n, off);
	while (n > 0) {
		size_t k = g_wal_split - (size_t)off % g_wal_split;
		if (off < 32 && k < 32 - (size_t)off)
			k = 32 - (size_t)off; /* SQLite writes the WAL header at once */
		if (k > n)
			k = n;
		int r = db_write(g_db, t->kind, t->fd, b, k, off);
		if (r < 0)
			return r;
		b += k;
		off += (off_t)k;
		n -= k;
	}
	return 0;
}

static int t_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 off)
{
	struct tfile *t = (struct tfile *)f;
	int r = write_pieces(t, b, (size_t)n, off);
	if (r < 0 && t->kind == DB_FILE_WAL)
		g_wal_writes_refused++;
	if (r == 0 && (t->kind == DB_FILE_WAL || (t->kind == DB_FILE_JOURNAL && off == 0)) &&
	    !g_no_write_done)
		db_write_done(g_db); /* as fusefs does after the reply */
	return r < 0 ? SQLITE_IOERR_WRITE : SQLITE_OK;
}

static int t_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	struct tfile *t = (struct tfile *)f;
	int r = db_truncate(g_db, t->kind, t->fd, size);
	if (r == 0 && t->kind == DB_FILE_JOURNAL && !g_no_write_done)
		db_write_done(g_db);
	return r < 0 ? SQLITE_IOERR_TRUNCATE : SQLITE_OK;
}

static int t_sync(sqlite3_file *f, int flags)
{
	struct tfile *t = (struct tfile *)f;
	if (t->kind == DB_FILE_WAL && g_fail_wal_syncs > 0) {
		g_fail_wal_syncs--;
		return SQLITE_IOERR_FSYNC;
	}
	int r = db_fsync(g_db, t->kind, t->fd, false);
	if (r == 0 && t->kind == DB_FILE_WAL && !g_no_write_done)
		db_write_done(g_db);
	return r < 0 ? SQLITE_IOERR_FSYNC : SQLITE_OK;
}

static int t_size(sqlite3_file *f, sqlite3_int64 *ret)
{
	struct stat st;
	if (fstat(((struct tfile *)f)->fd, &st) < 0)
		return SQLITE_IOERR_FSTAT;
	*ret = st.st_size;
	return SQLITE_OK;
}

/* Locks: fcntl on the backing file, enough for one connection per test. */
static int t_lock(sqlite3_file *f, int l)
{
	return SQLITE_OK;
}
static int t_unlock(sqlite3_file *f, int l)
{
	return SQLITE_OK;
}
static int t_reserved(sqlite3_file *f, int *out)
{
	*out = 0;
	return SQLITE_OK;
}
static int t_fcntl(sqlite3_file *f, int op, void *arg)
{
	return SQLITE_NOTFOUND;
}
static int t_sector(sqlite3_file *f)
{
	return 4096;
}
static int t_caps(sqlite3_file *f)
{
	return SQLITE_IOCAP_POWERSAFE_OVERWRITE;
}

static const sqlite3_io_methods t_io = {
    .iVersion = 1,
    .xClose = t_close,
    .xRead = t_read,
    .xWrite = t_write,
    .xTruncate = t_truncate,
    .xSync = t_sync,
    .xFileSize = t_size,
    .xLock = t_lock,
    .xUnlock = t_unlock,
    .xCheckReservedLock = t_reserved,
    .xFileControl = t_fcntl,
    .xSectorSize = t_sector,
    .xDeviceCharacteristics = t_caps,
};

static int t_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out)
{
	struct tfile *t = (struct tfile *)f;
	memset(t, 0, sizeof(*t));
	if (!name)
		return SQLITE_CANTOPEN;
	t->kind = kind_of(name);
	int of = (flags & SQLITE_OPEN_READWRITE) ? O_RDWR : O_RDONLY;
	if (flags & SQLITE_OPEN_CREATE)
		of |= O_CREAT;
	if (db_open_file(g_db, t->kind, of, 0644, &t->fd) < 0)
		return SQLITE_CANTOPEN;
	t->base.pMethods = &t_io;
	if (out)
		*out = flags;
	return SQLITE_OK;
}

static int t_delete(sqlite3_vfs *vfs, const char *name, int sync)
{
	if (kind_of(name) == DB_FILE_JOURNAL && g_fail_journal_deletes > 0) {
		g_fail_journal_deletes--;
		return SQLITE_IOERR_DELETE;
	}
	int r = db_unlink(g_db, kind_of(name));
	if (r == 0 && kind_of(name) == DB_FILE_JOURNAL && !g_no_write_done)
		db_write_done(g_db);
	return r < 0 && r != -ENOENT ? SQLITE_IOERR_DELETE : SQLITE_OK;
}

static int t_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
	struct stat st;
	*out = db_stat_file(g_db, kind_of(name), &st) == 0 &&
	       (flags != SQLITE_ACCESS_EXISTS || st.st_size > 0 || kind_of(name) == DB_FILE_DB);
	return SQLITE_OK;
}

static int t_fullpath(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
	snprintf(out, (size_t)n, "%s", name);
	return SQLITE_OK;
}

static sqlite3_vfs t_vfs;

static void vfs_setup(void)
{
	g_unix = sqlite3_vfs_find("unix");
	t_vfs = *g_unix;
	t_vfs.zName = "ltxfs-test";
	t_vfs.szOsFile = sizeof(struct tfile);
	t_vfs.xOpen = t_open;
	t_vfs.xDelete = t_delete;
	t_vfs.xAccess = t_access;
	t_vfs.xFullPathname = t_fullpath;
	sqlite3_vfs_register(&t_vfs, 0);
}

static void exec(sqlite3 *c, const char *sql, int want)
{
	char *err = NULL;
	int rc = sqlite3_exec(c, sql, NULL, NULL, &err);
	if ((rc == SQLITE_OK) != (want == SQLITE_OK)) {
		fprintf(stderr, "  %s -> %d (%s), wanted %d\n", sql, rc, err ? err : "", want);
		unit_failures++;
	}
	sqlite3_free(err);
}

static const struct db_options opts = {.compress = true, .node_id = 7};

static void open_db_with(const struct db_options *o)
{
	char dir[300];
	snprintf(dir, sizeof(dir), "%s/dbs/db", g_dir);
	CHECK_RC(db_open(&g_db, dir, "db", true, o), 0);
}

static void open_db(void)
{
	open_db_with(&opts);
}

/* The database file's checksum, recomputed from its bytes. */
static uint64_t file_checksum(void)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/dbs/db/database", g_dir);
	int fd = open(path, O_RDONLY);
	uint8_t hdr[100];
	uint64_t x = 0;
	if (fd < 0 || pread(fd, hdr, 100, 0) != 100) {
		if (fd >= 0)
			close(fd);
		return LTX_CHECKSUM_FLAG;
	}
	uint32_t ps = get_be16(hdr + 16);
	if (ps == 1)
		ps = 65536;
	uint32_t n = get_be32(hdr + 28);
	uint8_t *page = malloc(ps);
	for (uint32_t pg = 1; pg <= n; pg++) {
		if (pg == ltx_lock_pgno(ps))
			continue;
		if (pread(fd, page, ps, (off_t)(pg - 1) * ps) != (ssize_t)ps)
			memset(page, 0, ps);
		x ^= ltx_page_checksum(pg, page, ps);
	}
	free(page);
	close(fd);
	return LTX_CHECKSUM_FLAG | x;
}

/* Close SQLite (it checkpoints and removes the WAL), then compare. */
static void check_consistent(const char *what)
{
	struct db_pos pos;
	CHECK_RC(db_write_queued_ltx(g_db), 0); /* a reader of the files asks for them */
	db_get_pos(g_db, &pos);
	if (pos.checksum != file_checksum()) {
		fprintf(stderr, "  %s: position %016llx, file %016llx\n", what,
			(unsigned long long)pos.checksum, (unsigned long long)file_checksum());
		unit_failures++;
	}
	/* the newest LTX file verifies and ends at the position */
	char path[400];
	int fd = -1;
	snprintf(path, sizeof(path), "%s/dbs/db/ltx", g_dir);
	DIR *d = opendir(path); /* one transaction, a range (group commit) or a snapshot */
	struct dirent *de;
	while (d && fd < 0 && (de = readdir(d))) {
		uint64_t mn, mx;
		if (ltx_parse_filename(de->d_name, &mn, &mx) == 0 && mx == pos.txid)
			fd = openat(dirfd(d), de->d_name, O_RDONLY);
	}
	if (d)
		closedir(d);
	struct ltx_trailer tr;
	CHECK(fd >= 0);
	if (fd >= 0) {
		CHECK_RC(ltx_verify_fd(fd, NULL, &tr), 0);
		CHECK_EQ_U64(tr.post_apply_checksum, pos.checksum);
		close(fd);
	}
}

static void fresh_dir(const char *name)
{
	snprintf(g_dir, sizeof(g_dir), "/tmp/ltxfs-test-db-%d-%s", (int)getpid(), name);
	char cmd[400];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
	CHECK(system(cmd) == 0);
	fs_mkdir_p(g_dir, 0755);
}

/* A connection to the test database through the test VFS. */
static sqlite3 *connect_db(void)
{
	sqlite3 *c = NULL;
	CHECK_RC(
	    sqlite3_open_v2("db", &c, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, "ltxfs-test"),
	    SQLITE_OK);
	return c;
}

/* The values of t.x, in rowid order, must be want ("1,2,4"). */
static void check_rows(sqlite3 *c, const char *want)
{
	sqlite3_stmt *st;
	CHECK_RC(sqlite3_prepare_v2(c, "SELECT group_concat(x) FROM t", -1, &st, NULL), 0);
	CHECK_RC(sqlite3_step(st), SQLITE_ROW);
	const char *rows = (const char *)sqlite3_column_text(st, 0);
	CHECK(rows && strcmp(rows, want) == 0);
	if (rows && strcmp(rows, want) != 0)
		fprintf(stderr, "  rows: %s, wanted %s\n", rows, want);
	sqlite3_finalize(st);
}

/*
 * A WAL fsync fails after SQLite wrote a commit frame: SQLite reports the
 * error and would rewrite those frames; ltxfs had captured the commit. It must
 * refuse further writes (sticky) rather than let them overwrite the frames,
 * and after a restart the chain, the file and SQLite must agree.
 */
static void test_wal_commit_undone_by_sqlite(void)
{
	sqlite3 *c;
	fresh_dir("walfail");
	open_db();
	c = connect_db();
	exec(c,
	     "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; "
	     "PRAGMA synchronous=FULL; CREATE TABLE t(x); INSERT INTO t VALUES(1)",
	     SQLITE_OK);
	g_fail_wal_syncs = 1;
	exec(c, "INSERT INTO t VALUES(2)", SQLITE_IOERR);
	g_wal_writes_refused = 0;
	exec(c, "INSERT INTO t VALUES(3)", SQLITE_IOERR); /* refused: sticky */
	CHECK(g_wal_writes_refused > 0);
	sqlite3_close(c);
	db_free(g_db);

	/* restart: recovery resynchronises from the WAL and the file */
	open_db();
	check_consistent("after restart");
	c = connect_db();
	exec(c, "PRAGMA locking_mode=EXCLUSIVE; INSERT INTO t VALUES(4)", SQLITE_OK);
	/*
	 * The failed fsync did not remove the commit frame: SQLite's own WAL
	 * recovery on reopen finds transaction 2 committed, as ltxfs captured it.
	 */
	check_rows(c, "1,2,4");
	sqlite3_close(c);
	check_consistent("after more writes");
	db_free(g_db);
}

static void ltx_path(char *buf, size_t n, uint64_t min, uint64_t max)
{
	snprintf(buf, n, "%s/dbs/db/ltx/%016llx-%016llx.ltx", g_dir, (unsigned long long)min,
		 (unsigned long long)max);
}

/* Some LTX file holds txid: its own, or a range (group commit) or snapshot. */
static bool ltx_exists(uint64_t txid)
{
	char path[400];
	bool found = false;
	snprintf(path, sizeof(path), "%s/dbs/db/ltx", g_dir);
	DIR *d = opendir(path);
	struct dirent *de;
	while (d && !found && (de = readdir(d))) {
		uint64_t mn, mx;
		found = ltx_parse_filename(de->d_name, &mn, &mx) == 0 && mn <= txid && txid <= mx;
	}
	if (d)
		closedir(d);
	return found;
}

/* The newest TXID the chain of files on disk reaches from 1. */
static uint64_t newest_txid(void)
{
	uint64_t t = 0;
	while (ltx_exists(t + 1))
		t++;
	return t;
}

/*
 * A rollback-mode commit is built at the database fsync (db_journal.c, PREPARED
 * COMMITS). When the journal delete that would commit it fails, SQLite rolls
 * the transaction back from the hot journal: the prepared commit must go
 * (its ring record, or the file of one too big for the ring), and the chain
 * and the file must still agree.
 */
static void test_prepared_commit_rolled_back(void)
{
	static const char *const ins[] = {"INSERT INTO t VALUES(2)",
					  "INSERT INTO t VALUES(randomblob(400000))"};
	for (int k = 0; k < 2; k++) {
		sqlite3 *c;
		struct db_pos before, after;
		struct db_stats st0, st;
		fresh_dir(k ? "prepbig" : "prep");
		open_db();
		c = connect_db();
		exec(c,
		     "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; CREATE TABLE t(x); "
		     "INSERT INTO t VALUES(1)",
		     SQLITE_OK);
		db_get_pos(g_db, &before);
		db_get_stats(g_db, &st0);
		g_fail_journal_deletes = 1;
		exec(c, ins[k], SQLITE_IOERR);
		/* the commit was prepared at the fsync but not made: a small one
		 * has its copy in the ring and no file yet, a big one its file */
		db_get_stats(g_db, &st);
		CHECK_EQ_U64(st.ring_records - st0.ring_records, k ? 0 : 1);
		CHECK(ltx_exists(before.txid + 1) == (k == 1));
		db_get_pos(g_db, &after);
		CHECK_EQ_U64(after.txid, before.txid);
		sqlite3_close(c); /* rolls the hot journal back */
		c = connect_db();
		exec(c, "SELECT count(*) FROM t",
		     SQLITE_OK); /* a hot journal left is rolled back here */
		db_get_pos(g_db, &after);
		CHECK_EQ_U64(after.txid, before.txid);
		CHECK_RC(db_write_queued_ltx(g_db), 0);
		CHECK(!ltx_exists(before.txid + 1));
		check_consistent("after the rollback");
		exec(c, "INSERT INTO t VALUES(3)", SQLITE_OK);
		check_rows(c, "1,3");
		sqlite3_close(c);
		db_get_pos(g_db, &after);
		CHECK_EQ_U64(after.txid, before.txid + 1);
		check_consistent("after the next commit");
		db_free(g_db);
	}
}

/*
 * A small prepared commit's file is not written at the fsync: it waits in
 * the queue, encoded, until after the commit point's reply. Meanwhile the
 * position has moved, the LTX cache holds the file's bytes for the streams,
 * and a caller that needs the files gets them, byte for byte the same.
 */
static void check_same_file(const char *path, const char *want, size_t len);

static void test_prepared_file_written_after_the_commit_point(void)
{
	fresh_dir("prepq");
	open_db();
	sqlite3 *c = connect_db();
	exec(c, "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; CREATE TABLE t(x)",
	     SQLITE_OK);
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	struct db_pos before, after;
	db_get_pos(g_db, &before);
	g_no_write_done = true; /* the worker is not back from its reply */
	exec(c, "INSERT INTO t VALUES(1)", SQLITE_OK);
	db_get_pos(g_db, &after);
	CHECK_EQ_U64(after.txid, before.txid + 1);
	CHECK(!ltx_exists(after.txid));
	struct db_ltx_blob *b = NULL;
	CHECK_RC(db_ltx_cached(g_db, after.txid, &b), 0);
	CHECK(b && b->h.min_txid == after.txid && b->post == after.checksum);
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	char path[400];
	ltx_path(path, sizeof(path), after.txid, after.txid);
	if (b)
		check_same_file(path, (const char *)b->data, b->len);
	db_ltx_blob_unref(b);
	g_no_write_done = false;
	/* and with the reply: a prepared file is never grouped, so it is
	 * written at once rather than gathered with later commits */
	exec(c, "INSERT INTO t VALUES(2)", SQLITE_OK);
	db_get_pos(g_db, &after);
	CHECK(ltx_exists(after.txid));
	sqlite3_close(c);
	check_consistent("after the queue");
	db_free(g_db);
}

/*
 * WAL commits queue their LTX file and the writer writes the queue after
 * replying (db_write_done), or after the WAL fsync when synchronous=FULL
 * fsyncs each commit, once GROUP_DEFER commits have gathered. With
 * synchronous=NORMAL a checkpoint's fsync also follows a commit; the commits
 * after it must still get their files without a reader asking for the
 * position, so no commit waits for more than GROUP_DEFER to gather.
 */
#define GROUP_DEFER 32 /* DB_GROUP_DEFER in src/core/db_int.h */
static void test_queued_ltx_written_after_the_reply(void)
{
	static const char *const syncs[] = {"NORMAL", "FULL"};
	for (int k = 0; k < 2; k++) {
		sqlite3 *c;
		struct db_pos pos;
		char sql[200], dir[32];
		snprintf(dir, sizeof(dir), "queue-%s", syncs[k]);
		fresh_dir(dir);
		open_db();
		c = connect_db();
		snprintf(sql, sizeof(sql),
			 "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA "
			 "synchronous=%s; CREATE TABLE t(x)",
			 syncs[k]);
		exec(c, sql, SQLITE_OK);
		int groups = 0;
		uint64_t last_newest = newest_txid();
		for (int i = 0; i < 4 * GROUP_DEFER; i++) {
			exec(c, "INSERT INTO t VALUES(1)", SQLITE_OK);
			db_get_pos(g_db, &pos);
			/* files exist without asking for the position, never a
			 * whole group behind */
			uint64_t newest = newest_txid();
			CHECK(pos.txid - newest < GROUP_DEFER);
			groups += newest != last_newest;
			last_newest = newest;
			if (i == 2 || i == GROUP_DEFER + 9)
				exec(c, "PRAGMA wal_checkpoint(PASSIVE)", SQLITE_OK);
		}
		CHECK(groups >= 3);
		sqlite3_close(c);
		check_consistent(syncs[k]);
		db_free(g_db);
	}
}

/*
 * Reading the position writes nothing: a commit whose worker has not yet
 * written its queued LTX file is visible in the position without its file,
 * until a caller asks for the files by name (db_write_queued_ltx), or opens
 * one (db_ltx_open, which the stream uses).
 */
static void test_position_read_writes_nothing(void)
{
	sqlite3 *c;
	struct db_pos before, pos;
	fresh_dir("pure-getter");
	open_db();
	c = connect_db();
	exec(c,
	     "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA "
	     "synchronous=NORMAL; CREATE TABLE t(x)",
	     SQLITE_OK);
	db_get_pos(g_db, &before);
	g_no_write_done = true;
	exec(c, "INSERT INTO t VALUES(1)", SQLITE_OK);
	db_get_pos(g_db, &pos);
	CHECK_EQ_U64(pos.txid, before.txid + 1);
	CHECK(!ltx_exists(pos.txid)); /* queued: the getter did not write it */
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	CHECK(ltx_exists(pos.txid));
	exec(c, "INSERT INTO t VALUES(2)", SQLITE_OK);
	CHECK(!ltx_exists(pos.txid + 1));
	int fd = -1;
	struct ltx_header h;
	CHECK_RC(db_ltx_open(g_db, pos.txid + 1, &fd, &h, NULL), 0);
	CHECK_EQ_U64(h.max_txid, pos.txid + 1);
	if (fd >= 0)
		close(fd);
	g_no_write_done = false;
	sqlite3_close(c);
	check_consistent("after the queued commits");
	db_free(g_db);
}

/* A fresh database in dir, opened with o, in WAL mode with table t and one row. */
static sqlite3 *wal_db(const char *dir, const struct db_options *o)
{
	fresh_dir(dir);
	open_db_with(o);
	sqlite3 *c = connect_db();
	exec(c,
	     "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA "
	     "synchronous=NORMAL; CREATE TABLE t(x); INSERT INTO t VALUES(0)",
	     SQLITE_OK);
	return c;
}

/*
 * GROUP COMMIT: commits that queue up while no file is written go into one
 * range file "min-max.ltx" when the queue is written; the chain stays
 * exact, db_ltx_open finds the file by its first TXID, and a restart
 * recovers from it. A commit that shrinks the database starts a new file.
 */
static void test_group_commit_range_file(void)
{
	sqlite3 *c;
	struct db_pos before, pos;
	struct db_stats st;
	char path[400];
	c = wal_db("group", &opts);
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	db_get_pos(g_db, &before);
	db_get_stats(g_db, &st);
	uint64_t grouped0 = st.grouped;
	g_no_write_done = true;
	for (int i = 1; i <= 20; i++)
		exec(c, "INSERT INTO t VALUES(randomblob(3000))", SQLITE_OK);
	db_get_pos(g_db, &pos);
	CHECK_EQ_U64(pos.txid, before.txid + 20);
	CHECK(!ltx_exists(before.txid + 1));
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	ltx_path(path, sizeof(path), before.txid + 1, pos.txid);
	CHECK(access(path, F_OK) == 0); /* one file for the 20 commits */
	db_get_stats(g_db, &st);
	CHECK_EQ_U64(st.grouped - grouped0, 20);
	int fd = -1;
	struct ltx_header h;
	struct ltx_trailer t;
	CHECK_RC(db_ltx_open(g_db, before.txid + 1, &fd, &h, &t), 0);
	CHECK_EQ_U64(h.min_txid, before.txid + 1);
	CHECK_EQ_U64(h.max_txid, pos.txid);
	CHECK_EQ_U64(h.pre_apply_checksum, before.checksum);
	CHECK_EQ_U64(t.post_apply_checksum, pos.checksum);
	if (fd >= 0)
		close(fd);
	/* a VACUUM that shrinks the database ends a group and starts the next */
	db_get_pos(g_db, &before);
	exec(c, "INSERT INTO t VALUES(1)", SQLITE_OK);
	exec(c, "DELETE FROM t WHERE rowid > 2", SQLITE_OK);
	exec(c, "VACUUM", SQLITE_OK);
	exec(c, "INSERT INTO t VALUES(2)", SQLITE_OK);
	g_no_write_done = false;
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	db_get_pos(g_db, &pos);
	CHECK_EQ_U64(pos.txid, before.txid + 4);
	ltx_path(path, sizeof(path), before.txid + 1, before.txid + 2);
	CHECK(access(path, F_OK) == 0);
	ltx_path(path, sizeof(path), before.txid + 3, before.txid + 4);
	CHECK(access(path, F_OK) == 0);
	sqlite3_close(c);
	check_consistent("after group commits");
	db_free(g_db);
	open_db(); /* recovery reads the chain of range files */
	db_get_pos(g_db, &before);
	CHECK_EQ_U64(before.txid, pos.txid);
	CHECK_EQ_U64(before.checksum, pos.checksum);
	check_consistent("after a restart");
	db_free(g_db);
}

static int check_chain(void);

/* Blob b verifies in full and holds TXIDs min..max with these checksums. */
static void check_blob(const struct db_ltx_blob *b, uint64_t min, uint64_t max, uint64_t pre,
		       uint64_t post)
{
	char path[400];
	struct ltx_header h;
	struct ltx_trailer t;
	snprintf(path, sizeof(path), "%s/blob.ltx", g_dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && write(fd, b->data, b->len) == (ssize_t)b->len);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	CHECK_RC(ltx_verify_fd(fd, &h, &t), 0);
	close(fd);
	CHECK_EQ_U64(h.min_txid, min);
	CHECK_EQ_U64(h.max_txid, max);
	CHECK_EQ_U64(b->h.min_txid, min);
	CHECK_EQ_U64(h.pre_apply_checksum, pre);
	CHECK_EQ_U64(t.post_apply_checksum, post);
	CHECK_EQ_U64(b->post, post);
}

/*
 * STREAMED FROM MEMORY (db_ltxout.c): while replicas follow, the commits
 * from any TXID on are encoded as one range file in memory, from the queue
 * before the files exist and from the commits kept once they do, without
 * creating a file; without followers, written commits are not kept.
 */
static void test_streamed_from_memory(void)
{
	unsigned followers = 1;
	struct db_options o = opts;
	o.followers = &followers;
	struct db_pos before, pos, at2;
	struct db_ltx_blob *b = NULL;
	sqlite3 *c = wal_db("memory", &o);
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	db_get_pos(g_db, &before);
	uint64_t t = before.txid;
	g_no_write_done = true;
	for (int i = 1; i <= 5; i++) {
		exec(c, "INSERT INTO t VALUES(randomblob(3000))", SQLITE_OK);
		if (i == 2)
			db_get_pos(g_db, &at2);
	}
	db_get_pos(g_db, &pos);
	CHECK_EQ_U64(pos.txid, t + 5);
	/* queued: encoded from memory, and no file appears */
	CHECK_RC(db_ltx_encode_queued(g_db, t + 1, &b), 0);
	if (b)
		check_blob(b, t + 1, t + 5, before.checksum, pos.checksum);
	db_ltx_blob_unref(b);
	CHECK(!ltx_exists(t + 1));
	CHECK_RC(db_ltx_encode_queued(g_db, t + 3, &b), 0);
	if (b)
		check_blob(b, t + 3, t + 5, at2.checksum, pos.checksum);
	db_ltx_blob_unref(b);
	CHECK_RC(db_ltx_encode_queued(g_db, t + 6, &b), -ENOENT);
	/* written as group commit's one file; the commits stay in memory */
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	char path[400];
	ltx_path(path, sizeof(path), t + 1, t + 5);
	CHECK(access(path, F_OK) == 0);
	CHECK_RC(db_ltx_encode_queued(g_db, t + 3, &b), 0);
	if (b)
		check_blob(b, t + 3, t + 5, at2.checksum, pos.checksum);
	db_ltx_blob_unref(b);
	/* kept and queued commits in one range */
	for (int i = 0; i < 2; i++)
		exec(c, "INSERT INTO t VALUES(randomblob(100))", SQLITE_OK);
	db_get_pos(g_db, &pos);
	CHECK_RC(db_ltx_encode_queued(g_db, t + 3, &b), 0);
	if (b)
		check_blob(b, t + 3, t + 7, at2.checksum, pos.checksum);
	db_ltx_blob_unref(b);
	CHECK(!ltx_exists(t + 6));
	/* no follower: what is written is no longer kept */
	followers = 0;
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	CHECK_RC(db_ltx_encode_queued(g_db, t + 3, &b), -ENOENT);
	g_no_write_done = false;
	sqlite3_close(c);
	check_consistent("after streaming from memory");
	CHECK_EQ_U64((uint64_t)check_chain(), pos.txid);
	db_free(g_db);
}

/* Many transactions in every journal mode; the invariant holds after each close. */
static void test_modes_keep_checksums_exact(void)
{
	static const char *const modes[] = {"DELETE", "TRUNCATE", "PERSIST", "WAL"};
	fresh_dir("modes");
	open_db();
	for (int m = 0; m < 4; m++) {
		sqlite3 *c;
		char sql[256];
		c = connect_db();
		snprintf(sql, sizeof(sql),
			 "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=%s; PRAGMA "
			 "cache_size=10; CREATE TABLE IF NOT EXISTS t(x);",
			 modes[m]);
		exec(c, sql, SQLITE_OK);
		for (int i = 0; i < 30; i++)
			exec(c, "INSERT INTO t VALUES(randomblob(500))", SQLITE_OK);
		exec(c, "BEGIN; INSERT INTO t SELECT randomblob(800) FROM t; ROLLBACK", SQLITE_OK);
		exec(c, "DELETE FROM t WHERE rowid % 3 = 0", SQLITE_OK);
		exec(c, "VACUUM", SQLITE_OK);
		sqlite3_close(c);
		check_consistent(modes[m]);
	}
	db_free(g_db);
	open_db(); /* clean restart uses the checksum cache */
	check_consistent("restart");
	db_free(g_db);
}

/* Every LTX file verifies and each one's pre-apply checksum is the post-apply
 * checksum of the one before; returns how many there are. */
static int check_chain(void)
{
	char dir[400];
	snprintf(dir, sizeof(dir), "%s/dbs/db/ltx", g_dir);
	uint64_t post = 0, txid = 1;
	for (;;) {
		/* the file that starts at txid: one transaction or a range */
		DIR *d = opendir(dir);
		struct dirent *de;
		int fd = -1;
		while (d && fd < 0 && (de = readdir(d))) {
			uint64_t mn, mx;
			if (ltx_parse_filename(de->d_name, &mn, &mx) == 0 && mn == txid)
				fd = openat(dirfd(d), de->d_name, O_RDONLY);
		}
		if (d)
			closedir(d);
		if (fd < 0)
			break;
		struct ltx_header h;
		struct ltx_trailer tr;
		CHECK_RC(ltx_verify_fd(fd, &h, &tr), 0);
		close(fd);
		if (txid > 1)
			CHECK_EQ_U64(h.pre_apply_checksum, post);
		post = tr.post_apply_checksum;
		txid = h.max_txid + 1;
	}
	return (int)(txid - 1); /* the last TXID the chain reaches */
}

/*
 * WAL writes cut at odd places (4096 as the kernel does, 1000, and 7 bytes),
 * a transaction that spills pages and rewrites their frames in place, and
 * ones bigger than the in-memory WAL tail (2 MiB): one LTX file per commit,
 * chained, and the checksums exact. In the last round only writes that
 * extend the WAL are cut, as when the kernel has the rewritten pages cached:
 * a rewrite then starts inside the tail and ends past its limit.
 */
static void test_wal_split_writes(void)
{
	static const size_t splits[] = {4096, 1000, 7, 4096};
	for (size_t k = 0; k < sizeof(splits) / sizeof(splits[0]); k++) {
		char name[32];
		snprintf(name, sizeof(name), "split%zu-%zu", splits[k], k);
		fresh_dir(name);
		open_db();
		g_wal_split = splits[k];
		g_split_appends = k == 3;
		g_wal_written = 0;
		sqlite3 *c = connect_db();
		exec(c,
		     "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA "
		     "cache_size=5; PRAGMA temp_store=MEMORY; CREATE TABLE t(x)",
		     SQLITE_OK);
		struct db_pos before, pos;
		db_get_pos(g_db, &before);
		for (int i = 0; i < 40; i++)
			exec(c, "INSERT INTO t VALUES(randomblob(300))", SQLITE_OK);
		/* cache_size=5: pages spill mid-transaction, then change again */
		exec(c,
		     "BEGIN; INSERT INTO t SELECT randomblob(600) FROM t; UPDATE t SET x = "
		     "randomblob(610); COMMIT",
		     SQLITE_OK);
		exec(c, "INSERT INTO t VALUES(randomblob(3000000))", SQLITE_OK);
		exec(c, "INSERT INTO t VALUES(1)", SQLITE_OK);
		/* about 700 pages of frames, each rewritten in place: one of the
		 * rewrites starts below the tail's 2 MiB limit and ends above it */
		exec(c,
		     "CREATE TABLE u(y); INSERT INTO u SELECT randomblob(3000) FROM t, t LIMIT 700",
		     SQLITE_OK);
		exec(c,
		     "BEGIN; UPDATE u SET y = randomblob(3000); UPDATE u SET y = randomblob(3000); "
		     "COMMIT",
		     SQLITE_OK);
		db_get_pos(g_db, &pos);
		CHECK_EQ_U64(pos.txid, before.txid + 46);
		if (k == 3) {
			/* the WAL restarts at its 1000-frame autocheckpoint after the
			 * 700-row insert, which puts a 4096 boundary inside the page of
			 * the frame that crosses 2 MiB: its rewrite must be cut */
			struct db_stats st;
			db_get_stats(g_db, &st);
			CHECK(st.wal_tail_cuts > 0);
		}
		CHECK_EQ_U64((uint64_t)check_chain(), pos.txid);
		sqlite3_close(c);
		g_wal_split = 0;
		g_split_appends = false;
		check_consistent(name);
		db_free(g_db);
	}
}

/*
 * With synchronous=FULL every rollback-mode commit uses the file prepared at
 * the database fsync, made durable by its copy in the LTX ring: in PERSIST
 * mode too, whose commit point is itself a write to the journal.
 */
static void test_prepared_commits_in_every_rollback_mode(void)
{
	static const char *const modes[] = {"DELETE", "TRUNCATE", "PERSIST"};
	for (int k = 0; k < 3; k++) {
		char sql[200], name[32];
		snprintf(name, sizeof(name), "prep-%s", modes[k]);
		fresh_dir(name);
		open_db();
		sqlite3 *c = connect_db();
		snprintf(sql, sizeof(sql),
			 "PRAGMA journal_mode=%s; PRAGMA synchronous=FULL; CREATE TABLE t(x)",
			 modes[k]);
		exec(c, sql, SQLITE_OK);
		struct db_stats st0, st;
		db_get_stats(g_db, &st0);
		for (int i = 0; i < 10; i++)
			exec(c, "INSERT INTO t VALUES(1)", SQLITE_OK);
		db_get_stats(g_db, &st);
		CHECK_RC(db_write_queued_ltx(g_db), 0);
		if (st.prepared_used - st0.prepared_used != 10 ||
		    st.ring_records - st0.ring_records != 10)
			fprintf(stderr, "  %s: %llu prepared, %llu ring records\n", modes[k],
				(unsigned long long)(st.prepared_used - st0.prepared_used),
				(unsigned long long)(st.ring_records - st0.ring_records));
		CHECK_EQ_U64(st.prepared_used - st0.prepared_used, 10);
		CHECK_EQ_U64(st.ring_records - st0.ring_records, 10);
		sqlite3_close(c);
		CHECK_EQ_U64((uint64_t)check_chain(), 11);
		check_consistent(name);
		db_free(g_db);
	}
}

/* Run fn in a child that exits without any shutdown, as a crash leaves
 * things (the page cache keeps what was written; a power loss is then
 * simulated by the caller on the files). */
static void in_crashing_child(void (*fn)(void))
{
	pid_t pid = fork();
	if (pid == 0) {
		unit_failures = 0; /* the child reports only its own */
		fn();
		_exit(unit_failures ? 1 : 0);
	}
	int status = 0;
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* The file at path holds exactly the len bytes at want. */
static void check_same_file(const char *path, const char *want, size_t len)
{
	char *got = NULL;
	size_t n = 0;
	CHECK_RC(fs_read_file(path, 1 << 22, &got, &n), 0);
	CHECK(got && n == len && memcmp(got, want, len) == 0);
	free(got);
}

static void ring_child_commits(void)
{
	open_db();
	sqlite3 *c = connect_db();
	exec(c, "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; CREATE TABLE t(x)",
	     SQLITE_OK);
	struct db_stats st0, st;
	db_get_stats(g_db, &st0);
	for (int i = 1; i <= 300; i++) {
		char sql[64];
		snprintf(sql, sizeof(sql), "INSERT INTO t VALUES(%d)", i);
		exec(c, sql, SQLITE_OK);
	}
	/* 300 records of one block or more: the 256-block ring wrapped */
	db_get_stats(g_db, &st);
	CHECK_EQ_U64(st.ring_records - st0.ring_records, 300);
	sqlite3_close(c);
	/* every file written before the crash: the parent loses some itself */
	CHECK_RC(db_write_queued_ltx(g_db), 0);
}

/*
 * LTX RING (db_ring.c). With DELETE + FULL a prepared file is not fsynced: its
 * copy in the ring is. A power loss can then lose or tear the newest files.
 * The child commits (enough to wrap the ring) and stops without shutdown; the parent deletes the
 * three newest files and tears the one before, as a power loss may. Recovery must write them again
 * from the ring, byte for byte: the same position, an unbroken chain, and no snapshot (without the
 * ring it would record the database as a new snapshot).
 */
static void test_ring_restores_lost_files(void)
{
	fresh_dir("ring");
	in_crashing_child(ring_child_commits);
	uint64_t n = newest_txid();
	CHECK(n == 301); /* CREATE TABLE, then 300 inserts */
	char path[400], dbring[400];
	snprintf(dbring, sizeof(dbring), "%s/dbs/db/ltxring", g_dir);
	CHECK(access(dbring, F_OK) == 0);
	char *saved[4] = {0};
	size_t lens[4] = {0};
	for (int i = 0; i < 4; i++) {
		ltx_path(path, sizeof(path), n - i, n - i);
		CHECK_RC(fs_read_file(path, 1 << 20, &saved[i], &lens[i]), 0);
		if (i < 3)
			CHECK(unlink(path) == 0);
		else
			CHECK(truncate(path, (off_t)lens[i] / 2) == 0);
	}
	open_db();
	struct db_pos pos;
	db_get_pos(g_db, &pos);
	CHECK_EQ_U64(pos.txid, n);
	for (int i = 0; i < 4; i++) {
		ltx_path(path, sizeof(path), n - i, n - i);
		check_same_file(path, saved[i], lens[i]);
		free(saved[i]);
	}
	ltx_path(path, sizeof(path), 1, n + 1);
	CHECK(access(path, F_OK) != 0); /* no snapshot */
	CHECK_EQ_U64((uint64_t)check_chain(), n);
	check_consistent("after the restore");
	sqlite3 *c = connect_db();
	sqlite3_stmt *q;
	CHECK_RC(sqlite3_prepare_v2(c, "SELECT count(*), sum(x) FROM t", -1, &q, NULL), SQLITE_OK);
	CHECK_RC(sqlite3_step(q), SQLITE_ROW);
	CHECK_EQ_U64(sqlite3_column_int64(q, 0), 300);
	CHECK_EQ_U64(sqlite3_column_int64(q, 1), 300 * 301 / 2);
	sqlite3_finalize(q);
	exec(c, "INSERT INTO t VALUES(301)", SQLITE_OK);
	sqlite3_close(c);
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	CHECK_EQ_U64((uint64_t)check_chain(), n + 1);
	check_consistent("after the next commit");
	db_free(g_db);
}

static void ring_child_queued_commits(void)
{
	open_db();
	sqlite3 *c = connect_db();
	exec(c, "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; CREATE TABLE t(x)",
	     SQLITE_OK);
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	g_no_write_done = true; /* the crash comes before any worker writes the queue */
	for (int i = 1; i <= 5; i++)
		exec(c, "INSERT INTO t VALUES(1)", SQLITE_OK);
	sqlite3_close(c);
}

/*
 * The files of small prepared commits wait in the queue after their commit
 * point, with only their ring records durable. A crash then: recovery writes
 * them from the ring, and nothing acknowledged is lost or turned into a
 * snapshot.
 */
static void test_ring_restores_queued_files_after_a_crash(void)
{
	char path[400];
	fresh_dir("ringq");
	in_crashing_child(ring_child_queued_commits);
	CHECK_EQ_U64(newest_txid(), 1); /* the five commits have no file */
	open_db();
	struct db_pos pos;
	db_get_pos(g_db, &pos);
	CHECK_EQ_U64(pos.txid, 6);
	CHECK_EQ_U64((uint64_t)check_chain(), 6);
	ltx_path(path, sizeof(path), 1, 7);
	CHECK(access(path, F_OK) != 0); /* no snapshot */
	check_consistent("after the restore");
	sqlite3 *c = connect_db();
	check_rows(c, "1,1,1,1,1");
	sqlite3_close(c);
	db_free(g_db);
}

static void ring_child_big_commit(void)
{
	open_db();
	sqlite3 *c = connect_db();
	exec(c, "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; CREATE TABLE t(x)",
	     SQLITE_OK);
	struct db_stats st0, st;
	db_get_stats(g_db, &st0);
	for (int i = 0; i < 5; i++)
		exec(c, "INSERT INTO t VALUES(1)", SQLITE_OK);
	/* over 256 KiB of LTX: fsynced as a file of its own, no ring record */
	exec(c, "INSERT INTO t VALUES(randomblob(400000))", SQLITE_OK);
	for (int i = 0; i < 3; i++)
		exec(c, "INSERT INTO t VALUES(1)", SQLITE_OK);
	db_get_stats(g_db, &st);
	CHECK_EQ_U64(st.ring_records - st0.ring_records, 8);
	sqlite3_close(c);
	CHECK_RC(db_write_queued_ltx(g_db), 0); /* the parent tears one itself */
}

/*
 * A power loss tears a file whose copy is in the ring, and keeps a durable
 * file after it that has no copy there (a commit over 256 KiB is fsynced as
 * a file). Step 1 must write the torn file again from the ring instead of
 * discarding it and everything after it: the big commit's file stays, the
 * position is the newest, and there is no snapshot.
 */
static void test_ring_repairs_a_torn_file_below_a_durable_one(void)
{
	char path[400];
	fresh_dir("ringbig");
	in_crashing_child(ring_child_big_commit);
	uint64_t n = newest_txid();
	CHECK(n == 10);
	uint64_t big = n - 3, torn = big - 1;
	char *saved_big = NULL, *saved_torn = NULL;
	size_t big_len = 0, torn_len = 0;
	ltx_path(path, sizeof(path), big, big);
	CHECK_RC(fs_read_file(path, 1 << 22, &saved_big, &big_len), 0);
	CHECK(big_len > LTX_RING_MAX_LTX);
	ltx_path(path, sizeof(path), torn, torn);
	CHECK_RC(fs_read_file(path, 1 << 22, &saved_torn, &torn_len), 0);
	CHECK(truncate(path, (off_t)torn_len - 9) == 0);
	open_db();
	struct db_pos pos;
	db_get_pos(g_db, &pos);
	CHECK_EQ_U64(pos.txid, n);
	check_same_file(path, saved_torn, torn_len);
	ltx_path(path, sizeof(path), big, big);
	check_same_file(path, saved_big, big_len);
	free(saved_big);
	free(saved_torn);
	ltx_path(path, sizeof(path), 1, n + 1);
	CHECK(access(path, F_OK) != 0); /* no snapshot */
	CHECK_EQ_U64((uint64_t)check_chain(), n);
	check_consistent("after the repair");
	db_free(g_db);
}

static void ring_child_dropped_prep(void)
{
	open_db();
	sqlite3 *c = connect_db();
	exec(c,
	     "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; CREATE TABLE t(x); "
	     "INSERT INTO t VALUES(1); INSERT INTO t VALUES(2)",
	     SQLITE_OK);
	g_fail_journal_deletes = 1;
	exec(c, "INSERT INTO t VALUES(3)", SQLITE_IOERR); /* prepared, then not committed */
	sqlite3_close(c); /* rolled back: the prepared commit is dropped */
	c = connect_db();
	exec(c, "SELECT count(*) FROM t", SQLITE_OK);
	sqlite3_close(c);
	CHECK_RC(db_write_queued_ltx(g_db), 0); /* the parent loses the newest itself */
}

/*
 * A prepared commit that SQLite rolls back leaves its record in the ring
 * zeroed. Otherwise, once the newest real file is lost, recovery would
 * restore it, then the dropped one after it (it chains), and roll forward a
 * transaction SQLite rolled back.
 */
static void test_ring_dropped_prepared_commit_not_restored(void)
{
	char path[400];
	fresh_dir("ringdrop");
	in_crashing_child(ring_child_dropped_prep);
	uint64_t n = newest_txid();
	CHECK(n == 3);
	ltx_path(path, sizeof(path), n, n);
	CHECK(unlink(path) == 0);
	open_db();
	struct db_pos pos;
	db_get_pos(g_db, &pos);
	CHECK_EQ_U64(pos.txid, n);
	CHECK(!ltx_exists(n + 1));
	check_consistent("after the restore");
	sqlite3 *c = connect_db();
	check_rows(c, "1,2");
	sqlite3_close(c);
	db_free(g_db);
}

/* Page pg of the database file as it is now. */
static void read_page(uint32_t pg, uint8_t page[4096])
{
	char path[400];
	snprintf(path, sizeof(path), "%s/dbs/db/database", g_dir);
	int fd = open(path, O_RDONLY);
	CHECK(fd >= 0 && pread(fd, page, 4096, (off_t)(pg - 1) * 4096) == 4096);
	if (fd >= 0)
		close(fd);
}

static void read_page1(uint8_t page[4096])
{
	read_page(1, page);
}

/*
 * Apply, as a replica would, the next transaction from another node: page 1
 * (the committed image page1) with its change counter moved on. Its LTX
 * file is left in g_dir/next.ltx.
 */
static int apply_next_from_elsewhere(const uint8_t page1[4096])
{
	struct db_pos pos;
	struct db_stats st;
	char path[400];
	uint8_t page[4096];
	db_get_pos(g_db, &pos);
	db_get_stats(g_db, &st);
	memcpy(page, page1, sizeof(page));
	uint32_t counter = get_be32(page + 24) + 1;
	put_be32(page + 24, counter);
	put_be32(page + 92, counter);
	struct ltx_header h = {
	    .page_size = 4096,
	    .commit = st.page_count,
	    .min_txid = pos.txid + 1,
	    .max_txid = pos.txid + 1,
	    .timestamp = 1,
	    .pre_apply_checksum = pos.checksum,
	};
	snprintf(path, sizeof(path), "%s/next.ltx", g_dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	struct ltx_encoder *enc = NULL;
	struct ltx_trailer tr;
	CHECK_RC(ltx_encoder_new(&enc, &h, ltx_fd_write, &fd), 0);
	CHECK_RC(ltx_encoder_add_page(enc, 1, page), 0);
	uint64_t post = LTX_CHECKSUM_FLAG | (pos.checksum ^ ltx_page_checksum(1, page1, 4096) ^
					     ltx_page_checksum(1, page, 4096));
	CHECK_RC(ltx_encoder_finish(enc, post, &tr), 0);
	ltx_encoder_free(enc);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	int r = db_apply_ltx(g_db, fd, 0, NULL);
	close(fd);
	return r;
}

/*
 * An LTX file for TXID txid changing page 1 (image prev) to prev with its
 * change counter moved on: the new image in next, its descriptor returned
 * (rewound). With bad_post, the trailer records a wrong post-apply checksum.
 */
static int next_file(const uint8_t prev[4096], const uint8_t *prev2, uint64_t txid, uint64_t pre,
		     uint32_t commit, bool bad_post, uint8_t next[4096], uint8_t *next2,
		     uint64_t *ret_post)
{
	char path[400];
	struct ltx_encoder *enc = NULL;
	struct ltx_trailer tr;
	memcpy(next, prev, 4096);
	uint32_t counter = get_be32(next + 24) + 1;
	put_be32(next + 24, counter);
	put_be32(next + 92, counter);
	struct ltx_header h = {
	    .page_size = 4096,
	    .commit = commit,
	    .min_txid = txid,
	    .max_txid = txid,
	    .timestamp = 1,
	    .pre_apply_checksum = pre,
	};
	snprintf(path, sizeof(path), "%s/batch-%llu%s.ltx", g_dir, (unsigned long long)txid,
		 bad_post ? "-bad" : "");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0);
	uint64_t post = LTX_CHECKSUM_FLAG |
			(pre ^ ltx_page_checksum(1, prev, 4096) ^ ltx_page_checksum(1, next, 4096));
	if (prev2) { /* page 2 too: a byte of its free space */
		memcpy(next2, prev2, 4096);
		next2[2000]++;
		post ^= ltx_page_checksum(2, prev2, 4096) ^ ltx_page_checksum(2, next2, 4096);
	}
	if (bad_post)
		post ^= 0x10;
	CHECK_RC(ltx_encoder_new(&enc, &h, ltx_fd_write, &fd), 0);
	CHECK_RC(ltx_encoder_add_page(enc, 1, next), 0);
	if (prev2)
		CHECK_RC(ltx_encoder_add_page(enc, 2, next2), 0);
	CHECK_RC(ltx_encoder_finish(enc, post, &tr), 0);
	ltx_encoder_free(enc);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	*ret_post = post;
	return fd;
}

/* The whole of the file behind fd, in memory (the caller frees .data). */
static struct db_ltx_buf fd_bytes(int fd)
{
	struct stat st;
	uint8_t *b = NULL;
	CHECK(fstat(fd, &st) == 0);
	b = malloc((size_t)st.st_size);
	CHECK(b && pread(fd, b, (size_t)st.st_size, 0) == st.st_size);
	return (struct db_ltx_buf){b, (size_t)st.st_size};
}

static int next_page1_file(const uint8_t prev[4096], uint64_t txid, uint64_t pre, uint32_t commit,
			   bool bad_post, uint8_t next[4096], uint64_t *ret_post)
{
	return next_file(prev, NULL, txid, pre, commit, bad_post, next, NULL, ret_post);
}

/*
 * A fresh database in dir with table t and one row (DELETE mode), opened
 * with o: its position, stats and page 1, from which the tests build the
 * files that follow it.
 */
static void one_row_db(const char *dir, const struct db_options *o, struct db_pos *pos,
		       struct db_stats *st, uint8_t p0[4096])
{
	fresh_dir(dir);
	open_db_with(o);
	sqlite3 *c = connect_db();
	exec(c, "PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES(1)",
	     SQLITE_OK);
	sqlite3_close(c);
	db_get_pos(g_db, pos);
	db_get_stats(g_db, st);
	read_page1(p0);
}

/*
 * db_apply_ltx_batch (BATCHES in db_apply.c): a batch whose second file
 * does not follow the first, or records a wrong checksum, changes nothing,
 * not even the files before it; a good batch ends where its last file does,
 * with every file installed and the database consistent.
 */
static void test_apply_batch(void)
{
	uint8_t p0[4096], p1[4096], p2[4096], p3[4096], bad[4096];
	uint64_t c1, c2, c3, cbad;
	struct db_pos pos, now;
	struct db_stats st;
	one_row_db("batch", &opts, &pos, &st, p0);
	uint64_t t = pos.txid;
	int f1 = next_page1_file(p0, t + 1, pos.checksum, st.page_count, false, p1, &c1);
	int f2 = next_page1_file(p1, t + 2, c1, st.page_count, false, p2, &c2);
	int f3 = next_page1_file(p2, t + 3, c2, st.page_count, false, p3, &c3);
	int fb = next_page1_file(p1, t + 2, c1, st.page_count, true, bad, &cbad);

	struct db_ltx_buf b1 = fd_bytes(f1), b2 = fd_bytes(f2), b3 = fd_bytes(f3),
			  bb = fd_bytes(fb);
	struct db_ltx_buf gap[] = {b1, b3};
	CHECK_RC(db_apply_ltx_batch(g_db, gap, 2, NULL), -ESTALE);
	struct db_ltx_buf corrupt[] = {b1, bb};
	CHECK_RC(db_apply_ltx_batch(g_db, corrupt, 2, NULL), -EBADMSG);
	db_get_pos(g_db, &now);
	CHECK_EQ_U64(now.txid, t);
	CHECK_EQ_U64(now.checksum, pos.checksum);
	CHECK(!ltx_exists(t + 1));
	read_page1(bad);
	CHECK(memcmp(bad, p0, 4096) == 0);

	struct db_ltx_buf good[] = {b1, b2, b3};
	CHECK_RC(db_apply_ltx_batch(g_db, good, 3, NULL), 0);
	db_get_pos(g_db, &now);
	CHECK_EQ_U64(now.txid, t + 3);
	CHECK_EQ_U64(now.checksum, c3);
	CHECK(ltx_exists(t + 1) && ltx_exists(t + 2) && ltx_exists(t + 3));
	read_page1(bad);
	CHECK(memcmp(bad, p3, 4096) == 0);
	check_consistent("after a batch");
	sqlite3 *c = connect_db();
	check_rows(c, "1");
	sqlite3_close(c);
	close(f1);
	close(f2);
	close(f3);
	close(fb);
	free((void *)b1.data);
	free((void *)b2.data);
	free((void *)b3.data);
	free((void *)bb.data);
	db_free(g_db);
	/* and after a restart, recovery agrees */
	open_db();
	db_get_pos(g_db, &now);
	CHECK_EQ_U64(now.txid, t + 3);
	check_consistent("after a batch and a restart");
	db_free(g_db);
}

/*
 * A range file t+1..t+2 (page 1 as next, pre the checksum at t, post the one
 * at t+2), as a primary's group commit writes it; its descriptor, rewound.
 */
static int range_file(uint64_t t, uint64_t pre, uint32_t commit, const uint8_t next[4096],
		      uint64_t post)
{
	char path[400];
	struct ltx_encoder *enc = NULL;
	struct ltx_trailer tr;
	struct ltx_header h = {
	    .flags = LTX_FLAG_COMPRESS_LZ4,
	    .page_size = 4096,
	    .commit = commit,
	    .min_txid = t + 1,
	    .max_txid = t + 2,
	    .timestamp = 2,
	    .pre_apply_checksum = pre,
	};
	snprintf(path, sizeof(path), "%s/range-%llu.ltx", g_dir, (unsigned long long)t);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0);
	CHECK_RC(ltx_encoder_new(&enc, &h, ltx_fd_write, &fd), 0);
	CHECK_RC(ltx_encoder_add_page(enc, 1, next), 0);
	CHECK_RC(ltx_encoder_finish(enc, post, &tr), 0);
	ltx_encoder_free(enc);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	return fd;
}

/*
 * OVERLAPPING FILES (db_apply.c): a replica at t+1 is sent the primary's
 * range file t+1..t+2. Applied alone or as a batch, it moves the replica to
 * t+2 with the primary's checksum, and is installed as t+2..t+2 chained to
 * the replica's own file (which recovery then accepts). A replica whose
 * t+1 is not the primary's gets -ESTALE, keeps its state and asks for a
 * snapshot.
 */
static void test_apply_overlapping_range_file(void)
{
	uint8_t p0[4096], p1[4096], p2[4096], other[4096], got[4096];
	uint64_t c1, c2, cother;
	struct db_pos pos, now;
	struct db_stats st;
	for (int batch = 0; batch < 2; batch++) {
		one_row_db(batch ? "overlap-batch" : "overlap", &opts, &pos, &st, p0);
		uint64_t t = pos.txid;
		int f1 = next_page1_file(p0, t + 1, pos.checksum, st.page_count, false, p1, &c1);
		int f2 = next_page1_file(p1, t + 2, c1, st.page_count, false, p2, &c2);
		int fr = range_file(t, pos.checksum, st.page_count, p2, c2);
		CHECK_RC(db_apply_ltx(g_db, f1, 0, NULL), 0);
		CHECK(!db_wants_snapshot(g_db));
		if (batch) {
			struct db_ltx_buf b = fd_bytes(fr);
			CHECK_RC(db_apply_ltx_batch(g_db, &b, 1, NULL), 0);
			free((void *)b.data);
		} else {
			CHECK_RC(db_apply_ltx(g_db, fr, 0, NULL), 0);
		}
		db_get_pos(g_db, &now);
		CHECK_EQ_U64(now.txid, t + 2);
		CHECK_EQ_U64(now.checksum, c2);
		read_page1(got);
		CHECK(memcmp(got, p2, 4096) == 0);
		char path[400];
		ltx_path(path, sizeof(path), t + 2, t + 2);
		CHECK(access(path, F_OK) == 0);
		CHECK_EQ_U64((uint64_t)check_chain(), t + 2);
		check_consistent("after a range file over the position");
		db_free(g_db);
		open_db();
		db_get_pos(g_db, &now);
		CHECK_EQ_U64(now.txid, t + 2);
		CHECK_EQ_U64(now.checksum, c2);
		check_consistent("after a range file over the position and a restart");
		db_free(g_db);
		close(f1);
		close(f2);
		close(fr);
	}

	/* t+1 of another history: page 2 changed too */
	one_row_db("overlap-diverged", &opts, &pos, &st, p0);
	uint64_t t = pos.txid;
	uint8_t p2b[4096], n2[4096];
	read_page(2, p2b);
	int g1 = next_file(p0, p2b, t + 1, pos.checksum, st.page_count, false, other, n2, &cother);
	CHECK_RC(db_apply_ltx(g_db, g1, 0, NULL), 0);
	close(g1);
	/* the primary's t+1 has g1's path: a new file there (g1's inode is installed) */
	char gpath[400];
	snprintf(gpath, sizeof(gpath), "%s/batch-%llu.ltx", g_dir, (unsigned long long)(t + 1));
	CHECK(unlink(gpath) == 0);
	int f1 = next_page1_file(p0, t + 1, pos.checksum, st.page_count, false, p1, &c1);
	int f2 = next_page1_file(p1, t + 2, c1, st.page_count, false, p2, &c2);
	int fr = range_file(t, pos.checksum, st.page_count, p2, c2);
	CHECK(cother != c1);
	CHECK_RC(db_apply_ltx(g_db, fr, 0, NULL), -ESTALE);
	CHECK(db_wants_snapshot(g_db));
	db_get_pos(g_db, &now);
	CHECK_EQ_U64(now.txid, t + 1);
	CHECK_EQ_U64(now.checksum, cother);
	read_page1(got);
	CHECK(memcmp(got, other, 4096) == 0);
	CHECK(!ltx_exists(t + 2));
	check_consistent("after a refused range file");
	db_free(g_db);
	close(f1);
	close(f2);
	close(fr);
}

/*
 * VISIBLE POSITION (db.c): while an apply holds SQLite's locks, the -pos
 * file shows the position before it; at the unlock hook the position has
 * moved and the visible one has not, and on_change (GET /events) fires only
 * after the unlock, when both agree. For one file and for a batch.
 */
struct visible_probe {
	bool armed;
	int unlocks, changes;
	struct db_pos at_unlock, visible_at_unlock, visible_at_change;
	bool change_after_unlock;
};

static struct visible_probe g_vp;

static int vp_lock(void *ctx, struct db *db, void **token)
{
	*token = NULL;
	return 0;
}

static void vp_unlock(void *ctx, struct db *db, void *token, bool ok, uint32_t page_size,
		      uint32_t npages)
{
	g_vp.unlocks++;
	db_get_pos(db, &g_vp.at_unlock);
	db_get_visible_pos(db, &g_vp.visible_at_unlock);
}

/* A commit calls it with db->mu held (db.h): only an apply's call, armed, reads. */
static void vp_change(void *ctx)
{
	if (!g_vp.armed)
		return;
	g_vp.changes++;
	g_vp.change_after_unlock = g_vp.unlocks > 0;
	db_get_visible_pos(g_db, &g_vp.visible_at_change);
}

static void test_visible_position_waits_for_the_unlock(void)
{
	uint8_t p0[4096], p1[4096], p2[4096], p3[4096];
	uint64_t c1, c2, c3;
	struct db_pos pos, vis;
	struct db_stats st;
	const struct db_apply_hooks hk = {.lock = vp_lock, .unlock = vp_unlock};
	struct db_options o = opts;
	o.on_change = vp_change;
	one_row_db("visible", &o, &pos, &st, p0);
	uint64_t t = pos.txid;
	int f1 = next_page1_file(p0, t + 1, pos.checksum, st.page_count, false, p1, &c1);
	int f2 = next_page1_file(p1, t + 2, c1, st.page_count, false, p2, &c2);
	int f3 = next_page1_file(p2, t + 3, c2, st.page_count, false, p3, &c3);

	/* one file */
	memset(&g_vp, 0, sizeof(g_vp));
	g_vp.armed = true;
	CHECK_RC(db_apply_ltx(g_db, f1, 0, &hk), 0);
	CHECK(g_vp.unlocks == 1 && g_vp.changes == 1 && g_vp.change_after_unlock);
	CHECK_EQ_U64(g_vp.at_unlock.txid, t + 1);
	CHECK_EQ_U64(g_vp.visible_at_unlock.txid, t);
	CHECK_EQ_U64(g_vp.visible_at_unlock.checksum, pos.checksum);
	CHECK_EQ_U64(g_vp.visible_at_change.txid, t + 1);
	db_get_visible_pos(g_db, &vis);
	CHECK_EQ_U64(vis.txid, t + 1);
	CHECK_EQ_U64(vis.checksum, c1);

	/* a batch: the last file's position, once its one unlock is done */
	struct db_ltx_buf b2 = fd_bytes(f2), b3 = fd_bytes(f3);
	struct db_ltx_buf batch[] = {b2, b3};
	memset(&g_vp, 0, sizeof(g_vp));
	g_vp.armed = true;
	CHECK_RC(db_apply_ltx_batch(g_db, batch, 2, &hk), 0);
	CHECK(g_vp.unlocks == 1 && g_vp.changes == 1 && g_vp.change_after_unlock);
	CHECK_EQ_U64(g_vp.at_unlock.txid, t + 3);
	CHECK_EQ_U64(g_vp.visible_at_unlock.txid, t + 1);
	CHECK_EQ_U64(g_vp.visible_at_change.txid, t + 3);
	db_get_visible_pos(g_db, &vis);
	CHECK_EQ_U64(vis.txid, t + 3);
	CHECK_EQ_U64(vis.checksum, c3);

	close(f1);
	close(f2);
	close(f3);
	free((void *)b2.data);
	free((void *)b3.data);
	g_vp.armed = false;
	db_free(g_db);
}

/*
 * A replica stopped in the middle of a batch: every file installed, the
 * pages of the first written, the rest not. Start-up recovery re-applies
 * the batch's files in order and reaches the last one's state, instead of
 * recording the torn state as a local snapshot.
 */
static void test_recovery_completes_a_torn_batch(void)
{
	uint8_t p0[4096], p1[4096], p2[4096], p3[4096], now1[4096], q0[4096], q1[4096];
	uint64_t c1, c2, c3;
	struct db_pos pos, now;
	struct db_stats st;
	char path[400];
	one_row_db("tornbatch", &opts, &pos, &st, p0);
	read_page(2, q0);
	db_free(g_db);
	uint64_t t = pos.txid;
	/* the first file changes page 2 as well, so the last one alone cannot repair it */
	int f1 = next_file(p0, q0, t + 1, pos.checksum, st.page_count, false, p1, q1, &c1);
	int f2 = next_page1_file(p1, t + 2, c1, st.page_count, false, p2, &c2);
	int f3 = next_page1_file(p2, t + 3, c2, st.page_count, false, p3, &c3);
	int fds[] = {f1, f2, f3};
	for (int i = 0; i < 3; i++) { /* installed */
		char *buf = NULL;
		size_t len = 0;
		snprintf(path, sizeof(path), "%s/batch-%llu.ltx", g_dir,
			 (unsigned long long)(t + 1 + (uint64_t)i));
		CHECK_RC(fs_read_file(path, 1 << 20, &buf, &len), 0);
		ltx_path(path, sizeof(path), t + 1 + (uint64_t)i, t + 1 + (uint64_t)i);
		CHECK_RC(fs_write_atomic(path, buf, len), 0);
		free(buf);
		close(fds[i]);
	}
	struct db_options ro = opts; /* no page of the batch written yet */
	ro.replica = true;
	snprintf(path, sizeof(path), "%s/dbs/db", g_dir);
	CHECK_RC(db_open(&g_db, path, "db", false, &ro), 0);
	db_get_pos(g_db, &now);
	CHECK_EQ_U64(now.txid, t + 3);
	CHECK_EQ_U64(now.checksum, c3);
	read_page1(now1);
	CHECK(memcmp(now1, p3, 4096) == 0);
	read_page(2, now1);
	CHECK(memcmp(now1, q1, 4096) == 0);
	CHECK(!ltx_exists(t + 4)); /* no local snapshot recorded */
	check_consistent("after completing a torn batch");
	db_free(g_db);
}

static void ring_child_prepared_then_apply(void)
{
	open_db();
	sqlite3 *c = connect_db();
	exec(c,
	     "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; CREATE TABLE t(x); "
	     "INSERT INTO t VALUES(1)",
	     SQLITE_OK);
	struct db_pos pos;
	uint8_t page1[4096];
	db_get_pos(g_db, &pos);
	read_page1(page1);
	CHECK_RC(db_write_queued_ltx(g_db), 0);
	g_fail_journal_deletes = 1;
	/* prepared, not committed; too big for the ring, so its file exists,
	 * under the name the new primary's file will have */
	exec(c, "INSERT INTO t VALUES(randomblob(400000))", SQLITE_IOERR);
	CHECK(ltx_exists(pos.txid + 1));
	/* demoted: the new primary's transaction pos+1 arrives; the application
	 * is gone (its connection is never used again) */
	CHECK_RC(apply_next_from_elsewhere(page1), 0);
	db_free(g_db);
}

/*
 * An application died between its database fsync (a prepared commit) and
 * its commit point, and this node then applies the next transaction from a
 * new primary: the same TXID, the same file name. The prepared commit must be
 * dropped before, not after, the primary's file is installed, or dropping it
 * later deletes that file.
 */
static void test_prepared_commit_dropped_before_apply(void)
{
	char path[400], next[400];
	fresh_dir("prepapply");
	in_crashing_child(ring_child_prepared_then_apply);
	uint64_t n = newest_txid();
	CHECK(n == 3);
	char *want = NULL;
	size_t len = 0;
	snprintf(next, sizeof(next), "%s/next.ltx", g_dir);
	CHECK_RC(fs_read_file(next, 1 << 20, &want, &len), 0);
	ltx_path(path, sizeof(path), n, n);
	check_same_file(path, want, len);
	free(want);
	open_db();
	struct db_pos pos;
	db_get_pos(g_db, &pos);
	CHECK_EQ_U64(pos.txid, n);
	check_consistent("after the apply");
	db_free(g_db);
}

static uint64_t ring_epoch(void)
{
	char path[400];
	uint8_t b[32];
	uint64_t e = 0;
	snprintf(path, sizeof(path), "%s/dbs/db/ltxring", g_dir);
	int fd = open(path, O_RDONLY);
	if (fd >= 0 && pread(fd, b, sizeof(b), 0) == (ssize_t)sizeof(b))
		e = get_le64(b + 24);
	if (fd >= 0)
		close(fd);
	return e;
}

/*
 * Before this node applies another node's LTX file, its own ring records stop
 * counting (a new epoch): after a crash they could chain from the shared
 * history and replay a commit the primary never had.
 */
static void test_ring_retired_before_apply(void)
{
	fresh_dir("ringapply");
	open_db();
	sqlite3 *c = connect_db();
	exec(c,
	     "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; CREATE TABLE t(x); "
	     "INSERT INTO t VALUES(1)",
	     SQLITE_OK);
	sqlite3_close(c);
	uint64_t e0 = ring_epoch();
	CHECK(e0 != 0);

	struct db_pos pos;
	uint8_t page1[4096];
	db_get_pos(g_db, &pos);
	read_page1(page1);
	CHECK_RC(apply_next_from_elsewhere(page1), 0);
	struct db_pos after;
	db_get_pos(g_db, &after);
	CHECK_EQ_U64(after.txid, pos.txid + 1);
	CHECK(ring_epoch() != e0);
	db_free(g_db);
}

/* db_install_validate: what a whole-file write must be to be installed. */
static void test_install_validate(void)
{
	char path[] = "/tmp/ltxfs-validate-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	unlink(path);
	uint8_t page[4096];
	uint32_t ps = 0, n = 0;
	const char *why = NULL;
	memset(page, 0, sizeof(page));
	memcpy(page, "SQLite format 3", 16);
	page[16] = 0x10; /* page size 4096 */
	page[18] = page[19] = 1;
	page[24 + 3] = 7; /* change counter 7 */
	page[92 + 3] = 7; /* version-valid-for 7: the page count is valid */
	page[28 + 3] = 2; /* two pages */
	CHECK_RC(db_install_validate(fd, &ps, &n, &why), -EINVAL); /* empty */
	CHECK(why && strstr(why, "empty"));
	CHECK(pwrite(fd, page, sizeof(page), 0) == (ssize_t)sizeof(page));
	/* one page of two: a truncated copy */
	CHECK_RC(db_install_validate(fd, &ps, &n, &why), -EINVAL);
	CHECK(why && strstr(why, "page count"));
	memset(page, 0, 100);
	CHECK(pwrite(fd, page, sizeof(page), 4096) == (ssize_t)sizeof(page));
	memcpy(page, "SQLite format 3", 16);
	page[16] = 0x10;
	page[18] = page[19] = 1;
	page[24 + 3] = page[92 + 3] = 7;
	page[28 + 3] = 2;
	CHECK(pwrite(fd, page, sizeof(page), 0) == (ssize_t)sizeof(page));
	CHECK_RC(db_install_validate(fd, &ps, &n, &why), 0);
	CHECK(ps == 4096 && n == 2);
	/* a size that is not a multiple of the page size */
	CHECK(pwrite(fd, "x", 1, 8192) == 1);
	CHECK_RC(db_install_validate(fd, &ps, &n, &why), -EINVAL);
	CHECK(why && strstr(why, "multiple"));
	CHECK(ftruncate(fd, 8192) == 0);
	/* a stale in-header page count (an old SQLite) is not held against it */
	page[92 + 3] = 6;
	page[28 + 3] = 9;
	CHECK(pwrite(fd, page, 100, 0) == 100);
	CHECK_RC(db_install_validate(fd, &ps, &n, &why), 0);
	/* bad page size, bad magic */
	page[16] = 0x11;
	CHECK(pwrite(fd, page, 100, 0) == 100);
	CHECK_RC(db_install_validate(fd, &ps, &n, &why), -EINVAL);
	CHECK(pwrite(fd, "hello, not sqlite", 17, 0) == 17);
	CHECK_RC(db_install_validate(fd, &ps, &n, &why), -EINVAL);
	CHECK(why && strstr(why, "SQLite header"));
	close(fd);
}

int main(void)
{
	vfs_setup();
	RUN(test_modes_keep_checksums_exact);
	RUN(test_wal_commit_undone_by_sqlite);
	RUN(test_prepared_commit_rolled_back);
	RUN(test_prepared_file_written_after_the_commit_point);
	RUN(test_queued_ltx_written_after_the_reply);
	RUN(test_position_read_writes_nothing);
	RUN(test_wal_split_writes);
	RUN(test_prepared_commits_in_every_rollback_mode);
	RUN(test_ring_restores_lost_files);
	RUN(test_ring_repairs_a_torn_file_below_a_durable_one);
	RUN(test_ring_dropped_prepared_commit_not_restored);
	RUN(test_ring_restores_queued_files_after_a_crash);
	RUN(test_ring_retired_before_apply);
	RUN(test_prepared_commit_dropped_before_apply);
	RUN(test_install_validate);
	RUN(test_apply_batch);
	RUN(test_apply_overlapping_range_file);
	RUN(test_visible_position_waits_for_the_unlock);
	RUN(test_group_commit_range_file);
	RUN(test_streamed_from_memory);
	RUN(test_recovery_completes_a_torn_batch);
	return UNIT_DONE();
}
