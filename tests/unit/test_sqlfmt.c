/*
 * test_sqlfmt.c - sqlfmt against files written by the real SQLite.
 *
 * Fixtures are made at run time in a temporary directory with the SQLite C
 * API: databases with several page sizes, a WAL kept alive with
 * wal_autocheckpoint=0, hot rollback journals copied from the disk while a
 * transaction that spilled its cache is still open, and journals with a
 * super-journal record captured by a VFS shim just before SQLite deletes
 * them. Rollbacks done with journal_reader are compared with the
 * pre-transaction bytes and with SQLite's own hot-journal rollback.
 */
#include "ltxfs/sqlfmt.h"
#include "unit.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

/* SQL prefix for rows 1..n (generate_series is not in the library build). */
#define SERIES(n) "WITH RECURSIVE s(x) AS (VALUES(1) UNION ALL SELECT x+1 FROM s WHERE x<" n ") "

/* ---- helpers ---- */

static bool spit(const char *path, const uint8_t *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	bool ok;

	if (!f)
		return false;
	ok = fwrite(p, 1, n, f) == n;
	return fclose(f) == 0 && ok;
}

static void path_of(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", tmpdir, name);
}

static void exec_ok(sqlite3 *db, const char *sql)
{
	char *err = NULL;
	int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
	if (rc != SQLITE_OK)
		fprintf(stderr, "sqlite3_exec(%s): %s\n", sql, err ? err : "?");
	CHECK(rc == SQLITE_OK);
	sqlite3_free(err);
}

static int64_t query_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st = NULL;
	int64_t v = -1;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	else
		fprintf(stderr, "query(%s): %s\n", sql, sqlite3_errmsg(db));
	sqlite3_finalize(st);
	return v;
}

static bool query_is(sqlite3 *db, const char *sql, const char *want)
{
	sqlite3_stmt *st = NULL;
	bool ok = false;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		ok = strcmp((const char *)sqlite3_column_text(st, 0), want) == 0;
	sqlite3_finalize(st);
	return ok;
}

static sqlite3 *open_db(const char *path, const char *vfs)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs);
	CHECK(rc == SQLITE_OK);
	return db;
}

static int memfd_with(const uint8_t *p, size_t n)
{
	int fd = memfd_create("sqlfmt-test", 0);
	if (fd < 0)
		return -1;
	if (n && pwrite(fd, p, n, 0) != (ssize_t)n) {
		close(fd);
		return -1;
	}
	return fd;
}

static bool host_is_big_endian(void)
{
	const uint16_t one = 1;
	return *(const uint8_t *)&one == 0;
}

/*
 * Roll back db with journal through journal_reader, the way SQLite's hot
 * rollback would: every yielded page written at (pgno-1)*page_size, then the
 * file truncated to initial_size pages. Result in out (caller frees).
 * Returns journal_reader_new's or _next's error, else the record count.
 */
static int apply_journal(const struct buf *journal, const struct buf *db, uint32_t db_page_size,
			 struct buf *out)
{
	struct journal_reader *r = NULL;
	int jfd = memfd_with(journal->p, journal->len);
	int dfd = memfd_with(db->p, db->len);
	uint8_t *page = malloc(65536);
	uint32_t pgno, ps;
	int rc, count = 0;
	off_t size;

	out->p = NULL;
	out->len = 0;
	CHECK(jfd >= 0 && dfd >= 0 && page);
	rc = journal_reader_new(&r, jfd, db_page_size);
	if (rc < 0)
		goto out;
	ps = journal_reader_header(r)->page_size;
	while ((rc = journal_reader_next(r, &pgno, page)) == 1) {
		CHECK(pgno >= 1);
		CHECK(pwrite(dfd, page, ps, (off_t)(pgno - 1) * ps) == (ssize_t)ps);
		count++;
	}
	if (rc < 0)
		goto out;
	size = (off_t)journal_reader_header(r)->initial_size * ps;
	CHECK(ftruncate(dfd, size) == 0);
	out->p = malloc((size_t)size + 1);
	out->len = (size_t)size;
	CHECK(out->p && pread(dfd, out->p, out->len, 0) == (ssize_t)out->len);
	rc = count;
out:
	journal_reader_free(r);
	free(page);
	if (jfd >= 0)
		close(jfd);
	if (dfd >= 0)
		close(dfd);
	return rc;
}

static bool same(const struct buf *a, const struct buf *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

/*
 * Walk a journal's segments by their headers' nRec alone (no checksums):
 * returns how many carry the magic, *nonzero how many have records, and
 * *end the sector-aligned offset where the walk stopped.
 */
static unsigned walk_segments(const struct buf *j, unsigned *nonzero, size_t *end)
{
	uint32_t sector = j->len >= 28 ? get_be32(j->p + 20) : 0,
		 ps = j->len >= 28 ? get_be32(j->p + 24) : 0;
	size_t off = 0;
	unsigned n = 0;

	*nonzero = 0;
	while (sector >= 32 && ps >= 512 && off + 28 <= j->len &&
	       memcmp(j->p + off, journal_magic, 8) == 0) {
		uint32_t nrec = get_be32(j->p + off + 8);
		if (nrec == 0xffffffffu)
			nrec = (uint32_t)((j->len - sector) / (ps + 8));
		n++;
		*nonzero += nrec != 0;
		off += sector + (size_t)nrec * (ps + 8);
		off = (off + sector - 1) / sector * sector;
	}
	*end = off;
	return n;
}

/* ---- test (a): database header ---- */

static void check_db_header_for(uint32_t page_size)
{
	char path[512], name[64];
	struct sqlite_dbheader h;
	struct buf b;
	sqlite3 *db;
	char sql[128];

	snprintf(name, sizeof(name), "hdr-%u.db", page_size);
	path_of(path, sizeof(path), name);
	db = open_db(path, NULL);
	snprintf(sql, sizeof(sql), "PRAGMA page_size=%u", page_size);
	exec_ok(db, sql);
	exec_ok(db, "CREATE TABLE t(a, b);" SERIES(
			"300") "INSERT INTO t SELECT x, randomblob(700) FROM s");
	sqlite3_close(db);

	CHECK(buf_slurp(path, &b));
	CHECK_RC(sqlite_dbheader_parse(&h, b.p, b.len), 0);
	CHECK_EQ_U64(h.page_size, page_size);
	CHECK_EQ_U64(h.write_version, 1);
	CHECK_EQ_U64(h.read_version, 1);
	CHECK(h.page_count_valid);
	CHECK_EQ_U64(h.page_count, b.len / page_size);
	CHECK_EQ_U64(h.change_counter, h.version_valid_for);
	CHECK(h.change_counter >= 1);
	if (page_size == 65536)
		CHECK(b.p[16] == 0 && b.p[17] == 1); /* the "1 means 65536" encoding */
	buf_free(&b);
}

static void test_db_header_page_sizes(void)
{
	check_db_header_for(512);
	check_db_header_for(4096);
	check_db_header_for(65536);
}

static void test_db_header_wal_mode(void)
{
	char path[512];
	struct sqlite_dbheader h;
	struct buf b;
	sqlite3 *db;

	path_of(path, sizeof(path), "hdr-wal.db");
	db = open_db(path, NULL);
	exec_ok(db, "CREATE TABLE t(a); INSERT INTO t VALUES (1)");
	CHECK(query_is(db, "PRAGMA journal_mode=WAL", "wal"));
	exec_ok(db, "INSERT INTO t VALUES (2)");
	sqlite3_close(db);

	CHECK(buf_slurp(path, &b));
	CHECK_RC(sqlite_dbheader_parse(&h, b.p, b.len), 0);
	CHECK_EQ_U64(h.write_version, 2);
	CHECK_EQ_U64(h.read_version, 2);
	CHECK_EQ_U64(h.page_size, 4096);
	buf_free(&b);
}

static void test_db_header_invalid(void)
{
	uint8_t b[100] = "SQLite format 3";
	struct sqlite_dbheader h, keep;

	memset(&keep, 0xa5, sizeof(keep));
	b[16] = 0x10; /* 4096 */
	put_be32(b + 24, 7);
	put_be32(b + 28, 3);
	put_be32(b + 92, 7);
	CHECK_RC(sqlite_dbheader_parse(&h, b, sizeof(b)), 0);
	CHECK(h.page_count_valid);

	h = keep;
	CHECK_RC(sqlite_dbheader_parse(&h, b, 99), -EPROTO);
	CHECK(memcmp(&h, &keep, sizeof(h)) == 0); /* untouched on failure */

	put_be32(b + 92, 8); /* stale version-valid-for: use the file size */
	CHECK_RC(sqlite_dbheader_parse(&h, b, sizeof(b)), 0);
	CHECK(!h.page_count_valid);
	put_be32(b + 92, 7);
	put_be32(b + 28, 0);
	CHECK_RC(sqlite_dbheader_parse(&h, b, sizeof(b)), 0);
	CHECK(!h.page_count_valid);

	/* Page sizes: 256, 1000, 0, 2^17-ish encodings are all invalid. */
	static const uint8_t bad[][2] = {{1, 0}, {0x03, 0xe8}, {0, 0}, {0, 2}, {0xff, 0xff}};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		b[16] = bad[i][0];
		b[17] = bad[i][1];
		h = keep;
		CHECK_RC(sqlite_dbheader_parse(&h, b, sizeof(b)), -EBADMSG);
		CHECK(memcmp(&h, &keep, sizeof(h)) == 0);
	}
	b[16] = 0x02;
	b[17] = 0;
	CHECK_RC(sqlite_dbheader_parse(&h, b, sizeof(b)), 0);
	CHECK_EQ_U64(h.page_size, 512);
	b[0] = 's';
	CHECK_RC(sqlite_dbheader_parse(&h, b, sizeof(b)), -EBADMSG);
}

/* ---- test (b): WAL ---- */

/* An independent, naive walChecksumBytes for cross-checking. */
static void ref_wal_cksum(bool be, const uint8_t *p, size_t n, uint32_t *s1, uint32_t *s2)
{
	for (size_t i = 0; i < n; i += 8) {
		uint32_t w0, w1;
		if (be) {
			w0 = get_be32(p + i);
			w1 = get_be32(p + i + 4);
		} else {
			w0 = get_le32(p + i);
			w1 = get_le32(p + i + 4);
		}
		*s1 = *s1 + w0 + *s2;
		*s2 = *s2 + w1 + *s1;
	}
}

static void test_wal_checksum_function(void)
{
	uint8_t data[4096];
	uint32_t a1, a2, b1, b2;

	srand(7);
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)rand();
	for (int be = 0; be <= 1; be++) {
		for (size_t n = 8; n <= sizeof(data); n *= 2) {
			a1 = b1 = 0x12345678;
			a2 = b2 = 0x9abcdef0;
			wal_checksum(be, data, n, &a1, &a2);
			ref_wal_cksum(be, data, n, &b1, &b2);
			CHECK(a1 == b1 && a2 == b2);
		}
	}
	/* Chaining: sum(a+b) == sum(b) started from sum(a). */
	a1 = a2 = b1 = b2 = 0;
	wal_checksum(false, data, 4096, &a1, &a2);
	wal_checksum(false, data, 1024, &b1, &b2);
	wal_checksum(false, data + 1024, 3072, &b1, &b2);
	CHECK(a1 == b1 && a2 == b2);
	/* The two word orders differ on ordinary data. */
	b1 = b2 = 0;
	wal_checksum(true, data, 4096, &b1, &b2);
	CHECK(a1 != b1 || a2 != b2);
}

struct wal_fixture {
	struct buf db;	/* database file bytes while the WAL is live */
	struct buf wal; /* -wal bytes, all transactions committed */
	uint32_t commits[16];
	unsigned ncommits;
	int64_t rows;
};

/* Build a WAL with several committed transactions; commits[] gets the
 * database size in pages after each one, in order. */
static bool make_wal(struct wal_fixture *fx)
{
	char path[512], wpath[600];
	sqlite3 *db;

	static int serial;
	char name[32];

	memset(fx, 0, sizeof(*fx));
	snprintf(name, sizeof(name), "wal-%d.db", serial++);
	path_of(path, sizeof(path), name);
	snprintf(wpath, sizeof(wpath), "%s-wal", path);
	db = open_db(path, NULL);
	/* Content first: a WAL next to a 0-page database is deleted on open. */
	exec_ok(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
	exec_ok(db, SERIES("20") "INSERT INTO t(v) SELECT randomblob(100) FROM s");
	CHECK(query_is(db, "PRAGMA journal_mode=WAL", "wal"));
	exec_ok(db, "PRAGMA wal_autocheckpoint=0");

	exec_ok(db, "CREATE INDEX tv ON t(v)");
	fx->commits[fx->ncommits++] = (uint32_t)query_int(db, "PRAGMA page_count");
	for (int i = 1; i <= 6; i++) {
		char sql[256];
		snprintf(sql, sizeof(sql),
			 "BEGIN;" SERIES(
			     "%d") "INSERT INTO t(v) SELECT randomblob(%d) FROM s;"
				   "UPDATE t SET v = randomblob(50) WHERE id %% 7 = %d; COMMIT",
			 40 * i, 200 + 100 * i, i);
		exec_ok(db, sql);
		fx->commits[fx->ncommits++] = (uint32_t)query_int(db, "PRAGMA page_count");
	}
	/* A shrinking commit: the commit frame records the smaller size. */
	exec_ok(db, "DELETE FROM t WHERE id > 100");
	fx->commits[fx->ncommits++] = (uint32_t)query_int(db, "PRAGMA page_count");
	exec_ok(db, "VACUUM");
	fx->commits[fx->ncommits++] = (uint32_t)query_int(db, "PRAGMA page_count");
	fx->rows = query_int(db, "SELECT count(*) FROM t");

	CHECK(buf_slurp(wpath, &fx->wal));
	CHECK(buf_slurp(path, &fx->db));
	sqlite3_close(db);
	CHECK(fx->wal.len > WAL_HEADER_SIZE && fx->db.len > 0);
	return fx->wal.len > WAL_HEADER_SIZE && fx->db.len > 0;
}

static void wal_fixture_free(struct wal_fixture *fx)
{
	buf_free(&fx->db);
	buf_free(&fx->wal);
}

/*
 * Walk a WAL the way walIndexRecover() does: count valid frames, record the
 * commit sizes of valid commit frames. Returns the number of valid frames.
 */
static unsigned walk_wal(const struct buf *w, uint32_t *commits, unsigned *ncommits,
			 unsigned *last_commit)
{
	struct wal_header h;
	uint32_t s1, s2;
	unsigned n = 0;

	*ncommits = 0;
	*last_commit = 0;
	if (w->len < WAL_HEADER_SIZE || wal_header_parse(&h, w->p) != 0)
		return 0;
	s1 = h.cksum1;
	s2 = h.cksum2;
	for (uint64_t i = 0;; i++) {
		uint64_t off = wal_frame_offset(h.page_size, i);
		struct wal_frame_header f;
		if (off + WAL_FRAME_HEADER_SIZE + h.page_size > w->len)
			break;
		if (!wal_frame_verify(&h, &s1, &s2, w->p + off, w->p + off + WAL_FRAME_HEADER_SIZE))
			break;
		wal_frame_header_parse(&f, w->p + off);
		n++;
		if (f.commit) {
			if (commits && *ncommits < 64)
				commits[*ncommits] = f.commit;
			(*ncommits)++;
			*last_commit = n;
		}
	}
	return n;
}

static void test_wal_real_file(void)
{
	struct wal_fixture fx;
	struct wal_header h;
	uint32_t commits[64];
	unsigned ncommits, last_commit, nframes, valid;

	if (!make_wal(&fx)) {
		wal_fixture_free(&fx);
		return;
	}
	CHECK(fx.wal.len > WAL_HEADER_SIZE);
	CHECK_RC(wal_header_parse(&h, fx.wal.p), 0);
	/* SQLite writes checksums in the host's order (WAL_MAGIC|SQLITE_BIGENDIAN). */
	CHECK_EQ_U64(h.magic, host_is_big_endian() ? WAL_MAGIC_BE : WAL_MAGIC_LE);
	CHECK(h.big_endian == host_is_big_endian());
	CHECK_EQ_U64(h.version, 3007000);
	CHECK_EQ_U64(h.page_size, 4096);
	CHECK_EQ_U64(h.cksum1, get_be32(fx.wal.p + 24));
	CHECK_EQ_U64(h.cksum2, get_be32(fx.wal.p + 28));
	{
		uint32_t s1 = 0, s2 = 0;
		ref_wal_cksum(h.big_endian, fx.wal.p, 24, &s1, &s2);
		CHECK(s1 == h.cksum1 && s2 == h.cksum2);
	}

	nframes = (unsigned)((fx.wal.len - WAL_HEADER_SIZE) / (WAL_FRAME_HEADER_SIZE + 4096));
	CHECK_EQ_U64(fx.wal.len, wal_frame_offset(4096, nframes)); /* whole frames only */
	valid = walk_wal(&fx.wal, commits, &ncommits, &last_commit);
	CHECK_EQ_U64(valid, nframes);
	CHECK_EQ_U64(last_commit, nframes); /* the last frame commits */
	CHECK_EQ_U64(ncommits, fx.ncommits);
	for (unsigned i = 0; i < ncommits && i < fx.ncommits; i++)
		CHECK_EQ_U64(commits[i], fx.commits[i]);
	CHECK(fx.commits[fx.ncommits - 1] < fx.commits[fx.ncommits - 2]); /* VACUUM shrank */

	/* Every frame carries the header's salts and a real page number. */
	for (unsigned i = 0; i < nframes; i++) {
		struct wal_frame_header f;
		wal_frame_header_parse(&f, fx.wal.p + wal_frame_offset(4096, i));
		CHECK(f.pgno >= 1);
		CHECK(f.salt1 == h.salt1 && f.salt2 == h.salt2);
	}
	wal_fixture_free(&fx);
}

static void test_wal_corruption(void)
{
	struct wal_fixture fx;
	struct wal_header h, keep;
	unsigned nframes, ncommits, last_commit;
	const uint32_t ps = 4096;

	if (!make_wal(&fx)) {
		wal_fixture_free(&fx);
		return;
	}
	CHECK_RC(wal_header_parse(&h, fx.wal.p), 0);
	nframes = (unsigned)((fx.wal.len - WAL_HEADER_SIZE) / (WAL_FRAME_HEADER_SIZE + ps));
	CHECK(nframes >= 10);

	/* Any single-byte change to the WAL header is rejected. */
	memset(&keep, 0x5a, sizeof(keep));
	for (unsigned i = 0; i < WAL_HEADER_SIZE; i++) {
		struct wal_header t = keep;
		fx.wal.p[i] ^= 0x01;
		CHECK_RC(wal_header_parse(&t, fx.wal.p), -EBADMSG);
		CHECK(memcmp(&t, &keep, sizeof(t)) == 0);
		fx.wal.p[i] ^= 0x01;
	}
	CHECK_RC(wal_header_parse(&h, fx.wal.p), 0);

	/* Corrupt frame k's page, then its covered header bytes: k and every
	 * later frame fail, the ones before still pass. */
	const unsigned k = nframes / 2;
	const size_t spots[] = {
	    WAL_FRAME_HEADER_SIZE + 100,       /* page byte */
	    WAL_FRAME_HEADER_SIZE + ps - 1, 3, /* page number */
	    7,				       /* commit field */
	};
	for (size_t s = 0; s < sizeof(spots) / sizeof(spots[0]); s++) {
		uint8_t *frame = fx.wal.p + wal_frame_offset(ps, k);
		uint32_t s1 = h.cksum1, s2 = h.cksum2;
		frame[spots[s]] ^= 0x40;
		for (unsigned i = 0; i < nframes; i++) {
			const uint8_t *fr = fx.wal.p + wal_frame_offset(ps, i);
			uint32_t b1 = s1, b2 = s2;
			bool ok = wal_frame_verify(&h, &s1, &s2, fr, fr + WAL_FRAME_HEADER_SIZE);
			CHECK(ok == (i < k));
			if (!ok) {
				CHECK(s1 == b1 && s2 == b2); /* left alone on failure */
				/* Carry on with the chain as computed over the
				 * bytes as they are, like a naive reader would. */
				wal_checksum(h.big_endian, fr, 8, &s1, &s2);
				wal_checksum(h.big_endian, fr + WAL_FRAME_HEADER_SIZE, ps, &s1,
					     &s2);
			}
		}
		CHECK_EQ_U64(walk_wal(&fx.wal, NULL, &ncommits, &last_commit), k);
		frame[spots[s]] ^= 0x40;
	}

	/* Salts and stored checksums are not checksummed but checked: only that
	 * frame fails (the chain value computed before it is still right). */
	const size_t fields[] = {8, 12, 16, 20};
	for (size_t s = 0; s < 4; s++) {
		uint8_t *frame = fx.wal.p + wal_frame_offset(ps, k);
		frame[fields[s] + 2] ^= 0x10;
		CHECK_EQ_U64(walk_wal(&fx.wal, NULL, &ncommits, &last_commit), k);
		frame[fields[s] + 2] ^= 0x10;
	}
	/* A truncated tail frame is simply not there. */
	fx.wal.len -= 1;
	CHECK_EQ_U64(walk_wal(&fx.wal, NULL, &ncommits, &last_commit), nframes - 1);
	fx.wal.len += 1;

	/* Page number 0 is rejected even with a matching checksum. */
	{
		uint8_t *frame = fx.wal.p + wal_frame_offset(ps, 0);
		uint32_t s1 = h.cksum1, s2 = h.cksum2;
		put_be32(frame, 0);
		wal_checksum(h.big_endian, frame, 8, &s1, &s2);
		wal_checksum(h.big_endian, frame + WAL_FRAME_HEADER_SIZE, ps, &s1, &s2);
		put_be32(frame + 16, s1);
		put_be32(frame + 20, s2);
		s1 = h.cksum1;
		s2 = h.cksum2;
		CHECK(!wal_frame_verify(&h, &s1, &s2, frame, frame + WAL_FRAME_HEADER_SIZE));
	}
	wal_fixture_free(&fx);
}

/* Rewrite a WAL's checksums in the given word order (magic included). */
static void rechecksum_wal(struct buf *w, bool big_endian)
{
	uint32_t ps = get_be32(w->p + 8), s1 = 0, s2 = 0;

	put_be32(w->p, big_endian ? WAL_MAGIC_BE : WAL_MAGIC_LE);
	wal_checksum(big_endian, w->p, 24, &s1, &s2);
	put_be32(w->p + 24, s1);
	put_be32(w->p + 28, s2);
	for (uint64_t i = 0; wal_frame_offset(ps, i + 1) <= w->len; i++) {
		uint8_t *fr = w->p + wal_frame_offset(ps, i);
		wal_checksum(big_endian, fr, 8, &s1, &s2);
		wal_checksum(big_endian, fr + WAL_FRAME_HEADER_SIZE, ps, &s1, &s2);
		put_be32(fr + 16, s1);
		put_be32(fr + 20, s2);
	}
}

/* Let the real SQLite recover db+wal in a fresh directory; row count of t. */
static int64_t sqlite_rows_with_wal(const char *name, const struct buf *db, const struct buf *wal)
{
	char path[512], wpath[600];
	sqlite3 *c;
	int64_t rows;

	path_of(path, sizeof(path), name);
	snprintf(wpath, sizeof(wpath), "%s-wal", path);
	CHECK(spit(path, db->p, db->len));
	CHECK(spit(wpath, wal->p, wal->len));
	c = open_db(path, NULL);
	rows = query_int(c, "SELECT count(*) FROM t");
	CHECK(query_int(c, "SELECT integrity_check = 'ok' FROM pragma_integrity_check") == 1);
	sqlite3_close(c);
	return rows;
}

static void test_wal_both_endians(void)
{
	struct wal_fixture fx;
	struct wal_header h;
	struct buf other;
	unsigned nframes, valid, ncommits, last_commit;
	bool host_be = host_is_big_endian();

	if (!make_wal(&fx)) {
		wal_fixture_free(&fx);
		return;
	}
	nframes = (unsigned)((fx.wal.len - WAL_HEADER_SIZE) / (WAL_FRAME_HEADER_SIZE + 4096));

	/* The host order: SQLite's own file. */
	CHECK_EQ_U64(walk_wal(&fx.wal, NULL, &ncommits, &last_commit), nframes);
	CHECK(sqlite_rows_with_wal("wal-native.db", &fx.db, &fx.wal) == fx.rows);

	/* The other order, crafted with wal_checksum. */
	buf_init(&other);
	buf_put(&other, fx.wal.p, fx.wal.len);
	rechecksum_wal(&other, !host_be);
	CHECK_RC(wal_header_parse(&h, other.p), 0);
	CHECK(h.big_endian == !host_be);
	CHECK_EQ_U64(h.magic, host_be ? WAL_MAGIC_LE : WAL_MAGIC_BE);
	valid = walk_wal(&other, NULL, &ncommits, &last_commit);
	CHECK_EQ_U64(valid, nframes);
	CHECK_EQ_U64(ncommits, fx.ncommits);
	/* The frames differ from the original only in checksums. */
	CHECK(memcmp(other.p + 32, fx.wal.p + 32, 8) == 0);
	/* SQLite itself accepts our other-endian checksums: it recovers every
	 * transaction (a wrong checksum would silently drop them). */
	CHECK(sqlite_rows_with_wal("wal-other.db", &fx.db, &other) == fx.rows);

	/* Control: header in the other order but frames left in the host's.
	 * Neither we nor SQLite accept any frame; SQLite silently falls back
	 * to the 20 rows in the database file. */
	{
		struct buf mixed;
		uint32_t s1 = 0, s2 = 0;

		buf_init(&mixed);
		buf_put(&mixed, fx.wal.p, fx.wal.len);
		put_be32(mixed.p, host_be ? WAL_MAGIC_LE : WAL_MAGIC_BE);
		wal_checksum(!host_be, mixed.p, 24, &s1, &s2);
		put_be32(mixed.p + 24, s1);
		put_be32(mixed.p + 28, s2);
		CHECK_RC(wal_header_parse(&h, mixed.p), 0);
		CHECK_EQ_U64(walk_wal(&mixed, NULL, &ncommits, &last_commit), 0);
		CHECK(sqlite_rows_with_wal("wal-mixed.db", &fx.db, &mixed) == 20);
		buf_free(&mixed);
	}

	/* Flipping only the magic's low bit breaks the header checksum. */
	other.p[3] ^= 1;
	CHECK_RC(wal_header_parse(&h, other.p), -EBADMSG);
	other.p[3] ^= 1;
	/* Rechecksumming back to the host order reproduces SQLite's bytes. */
	rechecksum_wal(&other, host_be);
	CHECK(same(&other, &fx.wal));

	buf_free(&other);
	wal_fixture_free(&fx);
}

/*
 * A WAL transaction that spills its cache and then dirties pages already
 * in the WAL: SQLite overwrites those frames in place and rewrites the
 * checksums of every frame from the first overwritten one at commit
 * (wal.c sqlite3WalFrames(), walRewriteChecksums()). Before the commit the
 * chain is broken inside the open transaction; afterwards it is whole.
 */
static void test_wal_spill_checksum_rewrite(void)
{
	char path[512], wpath[600];
	struct buf mid, fin;
	sqlite3 *db;
	unsigned before, nmid, nfin, ncommits, last_commit, zero_salt = 0, total_mid;
	struct wal_header h;

	path_of(path, sizeof(path), "wal-spill.db");
	snprintf(wpath, sizeof(wpath), "%s-wal", path);
	db = open_db(path, NULL);
	exec_ok(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
	exec_ok(db, SERIES("2000") "INSERT INTO t(v) SELECT randomblob(500) FROM s");
	CHECK(query_is(db, "PRAGMA journal_mode=WAL", "wal"));
	exec_ok(db, "PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=10");
	exec_ok(db, "UPDATE t SET v = randomblob(500) WHERE id < 10");
	if (!buf_slurp(wpath, &mid)) {
		CHECK(!"no WAL");
		sqlite3_close(db);
		return;
	}
	before = walk_wal(&mid, NULL, &ncommits, &last_commit);
	CHECK(before > 0 && last_commit == before);
	buf_free(&mid);

	/* Every page spilled, then spilled again (overwrites), then new pages
	 * appended after the overwrites. */
	exec_ok(db, "BEGIN; UPDATE t SET v = randomblob(500) WHERE id % 2 = 0;"
		    "UPDATE t SET v = randomblob(500) WHERE id % 3 = 0;" SERIES(
			"500") "INSERT INTO t(v) SELECT randomblob(500) FROM s");
	CHECK(buf_slurp(wpath, &mid));
	exec_ok(db, "UPDATE t SET v = randomblob(500) WHERE id < 4; COMMIT");
	CHECK(buf_slurp(wpath, &fin));
	sqlite3_close(db);
	if (mid.len < WAL_HEADER_SIZE || fin.len < WAL_HEADER_SIZE) {
		buf_free(&mid);
		buf_free(&fin);
		return;
	}

	CHECK_RC(wal_header_parse(&h, mid.p), 0);
	total_mid = (unsigned)((mid.len - WAL_HEADER_SIZE) / (WAL_FRAME_HEADER_SIZE + 4096));
	for (unsigned i = before; i < total_mid; i++) {
		const uint8_t *fr = mid.p + wal_frame_offset(4096, i);
		if (get_be32(fr + 8) == 0 && get_be32(fr + 12) == 0 && get_be32(fr + 16) == 0)
			zero_salt++;
	}
	nmid = walk_wal(&mid, NULL, &ncommits, &last_commit);
	/* The spilled frames exist but no valid commit follows 'before'. */
	CHECK(total_mid > before);
	CHECK_EQ_U64(last_commit, before);
	CHECK(nmid < total_mid); /* overwrites broke the chain mid-transaction */
	CHECK(zero_salt > 0);	 /* frames after an overwrite have zero salt/cksum */

	nfin = walk_wal(&fin, NULL, &ncommits, &last_commit);
	CHECK_EQ_U64(nfin, (fin.len - WAL_HEADER_SIZE) / (WAL_FRAME_HEADER_SIZE + 4096));
	CHECK_EQ_U64(last_commit, nfin);
	buf_free(&mid);
	buf_free(&fin);
}

/* ---- test (c): rollback journals ---- */

static void test_journal_page_checksum(void)
{
	uint8_t page[65536];

	memset(page, 0, sizeof(page));
	page[0] = 0xff; /* never summed */
	page[112] = 1;
	page[312] = 2;
	page[311] = 100; /* not a sampled byte */
	CHECK_EQ_U64(journal_page_checksum(10, page, 512), 13);
	memset(page, 0, sizeof(page));
	for (int i = 824; i > 0; i -= 200)
		page[i] = 0x80; /* unsigned: 5 * 128 */
	CHECK_EQ_U64(journal_page_checksum(0, page, 1024), 640);
	CHECK_EQ_U64(journal_page_checksum(0xffffffffu, page, 1024), 639); /* wraps */
	memset(page, 1, sizeof(page));
	CHECK_EQ_U64(journal_page_checksum(0, page, 65536), 327); /* 65336..136 */
	CHECK_EQ_U64(journal_page_checksum(0, page, 4096), 20);	  /* 3896..96 */
}

/*
 * Hand-made journal builder. Segments are appended at sector boundaries,
 * records after them; page i of a record is filled with its pgno and a tag.
 */
struct jb {
	uint8_t *p;
	size_t n, cap;
	uint32_t ps, sector;
	size_t hdr; /* offset of the open segment's header */
	uint32_t nonce, count;
};

static void jb_reserve(struct jb *b, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2;
		b->p = realloc(b->p, b->cap);
	}
}

static void jb_align(struct jb *b)
{
	size_t a = b->n ? ((b->n - 1) / b->sector + 1) * b->sector : 0;
	if (a == b->n)
		return;
	jb_reserve(b, a - b->n);
	memset(b->p + b->n, 0, a - b->n);
	b->n = a;
}

static void jb_segment(struct jb *b, uint32_t nrec, uint32_t nonce, uint32_t initial,
		       uint32_t sector_field, uint32_t ps_field)
{
	jb_align(b);
	jb_reserve(b, b->sector);
	b->hdr = b->n;
	memset(b->p + b->n, 0, b->sector);
	memcpy(b->p + b->n, journal_magic, 8);
	put_be32(b->p + b->n + 8, nrec);
	put_be32(b->p + b->n + 12, nonce);
	put_be32(b->p + b->n + 16, initial);
	put_be32(b->p + b->n + 20, sector_field);
	put_be32(b->p + b->n + 24, ps_field);
	b->n += b->sector;
	b->nonce = nonce;
}

static void jb_fill(uint8_t *page, uint32_t ps, uint32_t pgno, uint8_t tag)
{
	for (uint32_t i = 0; i < ps; i++)
		page[i] = (uint8_t)(pgno * 31 + i * 7 + tag);
}

static void jb_record(struct jb *b, uint32_t pgno, uint8_t tag, bool good_cksum)
{
	jb_reserve(b, b->ps + 8);
	put_be32(b->p + b->n, pgno);
	jb_fill(b->p + b->n + 4, b->ps, pgno, tag);
	put_be32(b->p + b->n + 4 + b->ps,
		 journal_page_checksum(b->nonce, b->p + b->n + 4, b->ps) + (good_cksum ? 0 : 1));
	b->n += b->ps + 8;
}

/* PAGER_SJ_PGNO: the page holding PENDING_BYTE, never used by a database. */
#define SQLITE_PENDING_PGNO(ps) (0x40000000u / (ps) + 1)

/* writeSuperJournal() record at the end. */
static void jb_super(struct jb *b, const char *name, bool align, int cksum_delta)
{
	uint32_t len = (uint32_t)strlen(name), ck = 0;
	for (uint32_t i = 0; i < len; i++)
		ck += (uint32_t)(int32_t)(int8_t)name[i];
	if (align)
		jb_align(b);
	jb_reserve(b, len + 20);
	put_be32(b->p + b->n, SQLITE_PENDING_PGNO(b->ps));
	memcpy(b->p + b->n + 4, name, len);
	put_be32(b->p + b->n + 4 + len, len);
	put_be32(b->p + b->n + 8 + len, ck + (uint32_t)cksum_delta);
	memcpy(b->p + b->n + 12 + len, journal_magic, 8);
	b->n += len + 20;
}

struct rec {
	uint32_t pgno;
	uint8_t tag;
};

/* Read every record; check them against want[] (pgno + content). */
static int read_all(const struct jb *b, uint32_t db_ps, const struct rec *want, int nwant)
{
	struct journal_reader *r = NULL;
	int fd = memfd_with(b->p, b->n), rc, n = 0;
	uint8_t page[65536], expect[65536];
	uint32_t pgno = 0;

	CHECK(fd >= 0);
	rc = journal_reader_new(&r, fd, db_ps);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	while ((rc = journal_reader_next(r, &pgno, page)) == 1) {
		uint32_t ps = journal_reader_header(r)->page_size;
		if (n < nwant) {
			CHECK_EQ_U64(pgno, want[n].pgno);
			jb_fill(expect, ps, want[n].pgno, want[n].tag);
			CHECK(memcmp(page, expect, ps) == 0);
		}
		n++;
	}
	CHECK_RC(rc, 0);
	CHECK_RC(journal_reader_next(r, &pgno, page), 0); /* stays at the end */
	journal_reader_free(r);
	close(fd);
	return n;
}

static void jb_init(struct jb *b, uint32_t ps, uint32_t sector)
{
	memset(b, 0, sizeof(*b));
	b->ps = ps;
	b->sector = sector;
}

static void test_journal_handmade(void)
{
	struct jb b;

	/* Two segments; the second header's size fields are ignored. */
	jb_init(&b, 512, 512);
	jb_segment(&b, 2, 111, 10, 512, 512);
	jb_record(&b, 3, 1, true);
	jb_record(&b, 1, 2, true);
	jb_segment(&b, 1, 222, 999, 7, 12345);
	jb_record(&b, 5, 3, true);
	{
		const struct rec want[] = {{3, 1}, {1, 2}, {5, 3}};
		CHECK_RC(read_all(&b, 0, want, 3), 3);
		CHECK_RC(read_all(&b, 4096, want, 3), 3); /* journal's page size wins */
	}
	/* A bad checksum ends playback, later segments included. */
	put_be32(b.p + 512 + 4 + 512, 0); /* first record's checksum */
	CHECK_RC(read_all(&b, 0, NULL, 0), 0);
	free(b.p);

	/* ... but not for a page beyond the initial size: it is skipped
	 * before its checksum is looked at (pager_playback_one_page()). */
	jb_init(&b, 1024, 512);
	jb_segment(&b, 4, 5, 3, 512, 1024);
	jb_record(&b, 2, 1, true);
	jb_record(&b, 4, 2, false);
	jb_record(&b, 3, 3, true);
	jb_record(&b, 1, 4, false);
	jb_record(&b, 1, 5, true); /* after nRec: not read */
	{
		const struct rec want[] = {{2, 1}, {3, 3}};
		CHECK_RC(read_all(&b, 0, want, 2), 2);
	}
	free(b.p);

	/* nRec 0xffffffff: as many records as the file holds; a partial tail
	 * record is dropped. */
	jb_init(&b, 512, 512);
	jb_segment(&b, 0xffffffffu, 9, 100, 512, 512);
	for (uint32_t i = 1; i <= 5; i++)
		jb_record(&b, i * 2, (uint8_t)i, true);
	b.n -= 3;
	{
		const struct rec want[] = {{2, 1}, {4, 2}, {6, 3}, {8, 4}};
		CHECK_RC(read_all(&b, 0, want, 4), 4);
	}
	free(b.p);

	/* nRec 0xffffffff, then a super-journal record: PAGER_SJ_PGNO stops. */
	jb_init(&b, 512, 512);
	jb_segment(&b, 0xffffffffu, 9, 100, 512, 512);
	jb_record(&b, 7, 1, true);
	jb_super(&b,
		 "/some/where/db-mj0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456"
		 "789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"
		 "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF012345678"
		 "9ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF01"
		 "23456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789",
		 false, 0);
	jb_record(&b, 8, 2, true);
	{
		const struct rec want[] = {{7, 1}};
		CHECK_RC(read_all(&b, 0, want, 1), 1);
	}
	free(b.p);

	/* pgno 0 ends playback. */
	jb_init(&b, 512, 512);
	jb_segment(&b, 3, 1, 100, 512, 512);
	jb_record(&b, 7, 1, true);
	jb_record(&b, 0, 2, true);
	jb_record(&b, 8, 3, true);
	CHECK_RC(read_all(&b, 0, NULL, 0), 1);
	free(b.p);

	/* Hot journal, nRec 0: that segment has no records (its unsynced
	 * records never reached the database); a header in the very next
	 * sector would still be read. */
	jb_init(&b, 512, 512);
	jb_segment(&b, 0, 1, 100, 512, 512);
	jb_record(&b, 7, 1, true);
	jb_record(&b, 8, 2, true);
	CHECK_RC(read_all(&b, 0, NULL, 0), 0);
	free(b.p);
	jb_init(&b, 512, 512);
	jb_segment(&b, 0, 1, 100, 512, 512);
	jb_segment(&b, 1, 2, 100, 512, 512);
	jb_record(&b, 9, 3, true);
	{
		const struct rec want[] = {{9, 3}};
		CHECK_RC(read_all(&b, 0, want, 1), 1);
	}
	free(b.p);

	/* Segment headers sit at sector boundaries: records end mid-sector,
	 * the next header is after the padding (sector 4096 > page 1024). */
	jb_init(&b, 1024, 4096);
	jb_segment(&b, 1, 1, 100, 4096, 1024);
	jb_record(&b, 2, 1, true);
	jb_segment(&b, 2, 2, 0, 0, 0);
	jb_record(&b, 3, 2, true);
	jb_record(&b, 4, 3, true);
	{
		const struct rec want[] = {{2, 1}, {3, 2}, {4, 3}};
		CHECK_RC(read_all(&b, 0, want, 3), 3);
	}
	free(b.p);
}

static void test_journal_header_errors(void)
{
	struct jb b;
	struct journal_header h;
	struct journal_reader *r = (struct journal_reader *)&b; /* sentinel */
	int fd;

	jb_init(&b, 512, 512);
	jb_segment(&b, 1, 5, 1, 512, 0); /* page size 0 (SQLite < 3.5.8) */
	jb_record(&b, 1, 1, true);
	CHECK_RC(read_all(&b, 512, NULL, 0), 1); /* uses the database's */
	CHECK_RC(read_all(&b, 0, NULL, 0), -EBADMSG);
	CHECK_RC(read_all(&b, 1000, NULL, 0), -EINVAL);

	static const uint32_t bad[][2] = {{16, 512},  {48, 512},   {0x20000, 512},
					  {512, 256}, {512, 1000}, {512, 131072}};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		put_be32(b.p + 20, bad[i][0]);
		put_be32(b.p + 24, bad[i][1]);
		CHECK_RC(read_all(&b, 512, NULL, 0), -EBADMSG);
	}
	put_be32(b.p + 20, 32); /* the smallest sector size is fine */
	put_be32(b.p + 24, 512);
	CHECK_RC(read_all(&b, 0, NULL, 0), 0); /* records now at 32: garbage */

	/* A committed PERSIST journal has a zeroed header: not hot. */
	memset(b.p, 0, 28);
	CHECK_RC(read_all(&b, 0, NULL, 0), -EBADMSG);
	CHECK_RC(journal_header_parse(&h, b.p, 28), -EBADMSG);
	CHECK_RC(journal_header_parse(&h, b.p, 27), -EPROTO);
	free(b.p);

	/* Truncated inside the header sector; empty. */
	jb_init(&b, 512, 512);
	jb_segment(&b, 1, 5, 1, 512, 512);
	b.n = 300;
	CHECK_RC(read_all(&b, 0, NULL, 0), -EPROTO);
	b.n = 0;
	CHECK_RC(read_all(&b, 0, NULL, 0), -EPROTO);
	free(b.p);

	fd = open("/", O_RDONLY | O_DIRECTORY); /* pread fails: EISDIR */
	CHECK_RC(journal_reader_new(&r, fd, 0), -EISDIR);
	CHECK(r == (struct journal_reader *)&b); /* untouched */
	close(fd);
	journal_reader_free(NULL);
}

/* Every prefix of a journal: a clean error or a prefix of the records. */
static void test_journal_truncations(void)
{
	struct jb b;
	uint8_t page[65536];
	int full;

	jb_init(&b, 512, 512);
	jb_segment(&b, 3, 1, 50, 512, 512);
	jb_record(&b, 1, 1, true);
	jb_record(&b, 2, 2, true);
	jb_record(&b, 3, 3, true);
	jb_segment(&b, 2, 2, 50, 512, 512);
	jb_record(&b, 4, 4, true);
	jb_record(&b, 5, 5, true);
	jb_super(&b, "/x/db-mj1234", true, 0);
	full = read_all(&b, 0, NULL, 0);
	CHECK_RC(full, 5);

	const size_t total = b.n;
	for (size_t len = 0; len <= total; len++) {
		struct journal_reader *r = NULL;
		int fd = memfd_with(b.p, len), rc, n = 0;
		uint32_t pgno;
		char name[64];

		CHECK(fd >= 0);
		rc = journal_reader_new(&r, fd, 0);
		if (rc == 0) {
			while ((rc = journal_reader_next(r, &pgno, page)) == 1) {
				n++;
				CHECK_EQ_U64(pgno, (uint32_t)n);
			}
			CHECK_RC(rc, 0);
			journal_reader_free(r);
		} else {
			CHECK(len < 512);
			CHECK(rc == -EPROTO || rc == -EBADMSG);
		}
		CHECK(n <= full);
		rc = journal_super_name(fd, name, sizeof(name));
		CHECK_RC(rc, len == total ? 1 : 0);
		close(fd);
	}
	free(b.p);
}

static int super_of(const struct jb *b, char *name, size_t n)
{
	int fd = memfd_with(b->p, b->n), rc;
	CHECK(fd >= 0);
	rc = journal_super_name(fd, name, n);
	close(fd);
	return rc;
}

static void test_journal_super_name_handmade(void)
{
	struct jb b;
	char name[600], longname[520];

	jb_init(&b, 512, 512);
	jb_segment(&b, 1, 1, 50, 512, 512);
	jb_record(&b, 1, 1, true);
	CHECK_RC(super_of(&b, name, sizeof(name)), 0); /* none */
	jb_super(&b, "/data/app.db-mj01020304", true, 0);
	CHECK_RC(super_of(&b, name, sizeof(name)), 1);
	CHECK(strcmp(name, "/data/app.db-mj01020304") == 0);
	CHECK_RC(super_of(&b, name, 24), 1); /* 23 + NUL */
	strcpy(name, "keep");
	CHECK_RC(super_of(&b, name, 23), -ENAMETOOLONG);
	CHECK_RC(super_of(&b, name, 0), -ENAMETOOLONG);
	CHECK(strcmp(name, "keep") == 0);

	b.p[b.n - 13] ^= 1; /* checksum */
	CHECK_RC(super_of(&b, name, sizeof(name)), 0);
	b.p[b.n - 13] ^= 1;
	b.p[b.n - 1] ^= 1; /* magic */
	CHECK_RC(super_of(&b, name, sizeof(name)), 0);
	b.p[b.n - 1] ^= 1;
	put_be32(b.p + b.n - 16, 0); /* len 0 */
	CHECK_RC(super_of(&b, name, sizeof(name)), 0);
	put_be32(b.p + b.n - 16, (uint32_t)b.n); /* len > size - 16 */
	CHECK_RC(super_of(&b, name, sizeof(name)), 0);
	free(b.p);

	/* 512 bytes is the longest SQLite reads (mxPathname); 513 is ignored. */
	memset(longname, 'a', sizeof(longname));
	longname[0] = '/';
	longname[512] = '\0';
	jb_init(&b, 512, 512);
	jb_segment(&b, 1, 1, 50, 512, 512);
	jb_super(&b, longname, false, 0);
	CHECK_RC(super_of(&b, name, sizeof(name)), 1);
	CHECK_EQ_U64(strlen(name), 512);
	free(b.p);
	longname[512] = 'a';
	longname[513] = '\0';
	jb_init(&b, 512, 512);
	jb_segment(&b, 1, 1, 50, 512, 512);
	jb_super(&b, longname, false, 0);
	CHECK_RC(super_of(&b, name, sizeof(name)), 0);
	free(b.p);

	/* Bytes >= 0x80 count as signed chars. */
	jb_init(&b, 512, 512);
	jb_segment(&b, 1, 1, 50, 512, 512);
	jb_super(&b, "/d/\xc3\xa9t\xc3\xa9.db-mj00", false, 0);
	CHECK_RC(super_of(&b, name, sizeof(name)), 1);
	CHECK(strcmp(name, "/d/\xc3\xa9t\xc3\xa9.db-mj00") == 0);
	free(b.p);
	/* The same name summed as unsigned bytes does not match. */
	jb_init(&b, 512, 512);
	jb_segment(&b, 1, 1, 50, 512, 512);
	jb_super(&b, "/d/\xc3\xa9t\xc3\xa9.db-mj00", false, 4 * 256);
	CHECK_RC(super_of(&b, name, sizeof(name)), 0);
	free(b.p);

	/* A file shorter than the trailer. */
	jb_init(&b, 512, 512);
	jb_reserve(&b, 15);
	memset(b.p, 0xd7, 15);
	b.n = 15;
	CHECK_RC(super_of(&b, name, sizeof(name)), 0);
	free(b.p);
}

/*
 * Hot journal from the real SQLite: a transaction whose cache spills is left
 * open, and the journal and database bytes are copied off the disk. Rolled
 * back with journal_reader they must give the pre-transaction database, and
 * the same bytes SQLite's own hot-journal rollback gives.
 */
static void hot_journal_case(const char *tag, uint32_t ps, const char *mode, const char *sync,
			     bool expect_ffff)
{
	char path[512], jpath[600], name[64], sql[256], cpath[512], cjpath[600];
	struct buf pre, now, journal, ours, theirs;
	unsigned hdrs, nonzero;
	size_t end;
	sqlite3 *db;
	int nrec;
	/* Enough rows that a transaction outgrows the 10-page cache (pcache1
	 * keeps at least 10 pages) many times over. */
	const int rows = ps >= 65536 ? 9000 : 1500;

	snprintf(name, sizeof(name), "hot-%s.db", tag);
	path_of(path, sizeof(path), name);
	snprintf(jpath, sizeof(jpath), "%s-journal", path);
	db = open_db(path, NULL);
	snprintf(sql, sizeof(sql),
		 "PRAGMA page_size=%u; PRAGMA journal_mode=%s; PRAGMA synchronous=%s;"
		 "PRAGMA cache_size=10",
		 ps, mode, sync);
	exec_ok(db, sql);
	exec_ok(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
	snprintf(sql, sizeof(sql), SERIES("%d") "INSERT INTO t(v) SELECT randomblob(300) FROM s",
		 rows);
	exec_ok(db, sql);
	if (strcmp(mode, "PERSIST") == 0) /* leave a bigger stale journal behind */
		exec_ok(db, "UPDATE t SET v = randomblob(300)");
	CHECK(buf_slurp(path, &pre));

	exec_ok(db, "BEGIN; UPDATE t SET v = randomblob(300) WHERE id % 3 = 0;" SERIES(
			"300") "INSERT INTO t(v) SELECT randomblob(300) FROM s;"
			       "UPDATE t SET v = randomblob(300) WHERE id % 5 = 0");
	CHECK(buf_slurp(jpath, &journal));
	CHECK(buf_slurp(path, &now));
	CHECK(!same(&now, &pre)); /* the spills reached the database file */
	if (journal.len < 28 || pre.len == 0) {
		CHECK(!"fixture");
		goto out;
	}

	hdrs = walk_segments(&journal, &nonzero, &end);
	if (expect_ffff) {
		/* synchronous=OFF: one segment, nRec "to the end of the file". */
		CHECK_EQ_U64(get_be32(journal.p + 8), 0xffffffffu);
		CHECK_EQ_U64(hdrs, 1);
	} else {
		/* One segment per journal sync (a cache spill) ... */
		CHECK(hdrs >= 2);
		CHECK_EQ_U64(nonzero, hdrs);
		/* ... and the open segment after the last sync: its header is
		 * written with magic and nRec zeroed (writeJournalHdr()); only
		 * syncJournal() puts them in. Its records are unsynced and are
		 * not played back. */
		static const uint8_t zero[12];
		CHECK(end + 12 <= journal.len);
		if (end + 12 <= journal.len)
			CHECK(memcmp(journal.p + end, zero, 12) == 0);
		CHECK(journal.len > end + 512); /* records follow it */
	}

	nrec = apply_journal(&journal, &now, ps, &ours);
	CHECK(nrec > 0);
	CHECK(same(&ours, &pre));
	{
		struct journal_header h;
		CHECK_RC(journal_header_parse(&h, journal.p, journal.len), 0);
		CHECK_EQ_U64(h.page_size, ps);
		CHECK_EQ_U64(h.initial_size, pre.len / ps);
	}
	{
		int fd = memfd_with(journal.p, journal.len);
		char sname[64];
		CHECK_RC(journal_super_name(fd, sname, sizeof(sname)), 0);
		close(fd);
	}

	/* SQLite's own hot-journal rollback of the same bytes. */
	snprintf(name, sizeof(name), "hot-%s-copy.db", tag);
	path_of(cpath, sizeof(cpath), name);
	snprintf(cjpath, sizeof(cjpath), "%s-journal", cpath);
	CHECK(spit(cpath, now.p, now.len));
	CHECK(spit(cjpath, journal.p, journal.len));
	{
		sqlite3 *c = open_db(cpath, NULL);
		CHECK(query_int(c, "SELECT count(*) FROM t") == rows);
		sqlite3_close(c);
	}
	CHECK(buf_slurp(cpath, &theirs));
	CHECK(same(&theirs, &ours));

out:
	exec_ok(db, "ROLLBACK");
	sqlite3_close(db);
	buf_free(&pre);
	buf_free(&now);
	buf_free(&journal);
	buf_free(&ours);
	buf_free(&theirs);
}

static void test_journal_hot_delete_full(void)
{
	hot_journal_case("delete-full", 4096, "DELETE", "FULL", false);
}

static void test_journal_hot_persist_full_1k(void)
{
	hot_journal_case("persist-full", 1024, "PERSIST", "FULL", false);
}

static void test_journal_hot_delete_normal_512(void)
{
	hot_journal_case("delete-normal", 512, "DELETE", "NORMAL", false);
}

static void test_journal_hot_nosync_ffff(void)
{
	hot_journal_case("delete-off", 4096, "DELETE", "OFF", true);
}

static void test_journal_hot_64k(void)
{
	hot_journal_case("truncate-64k", 65536, "TRUNCATE", "FULL", false);
}

/* A committed PERSIST journal is not hot: its header is zeroed. */
static void test_journal_persist_committed(void)
{
	char path[512], jpath[600];
	struct buf journal;
	struct journal_reader *r = NULL;
	sqlite3 *db;
	int fd;

	path_of(path, sizeof(path), "persist-done.db");
	snprintf(jpath, sizeof(jpath), "%s-journal", path);
	db = open_db(path, NULL);
	exec_ok(db, "PRAGMA journal_mode=PERSIST; CREATE TABLE t(v);"
		    "INSERT INTO t VALUES (randomblob(5000))");
	sqlite3_close(db);
	CHECK(buf_slurp(jpath, &journal));
	CHECK(journal.len > 28);
	fd = memfd_with(journal.p, journal.len);
	CHECK_RC(journal_reader_new(&r, fd, 0), -EBADMSG);
	close(fd);
	buf_free(&journal);
}

/*
 * Super-journal: two databases (main + ATTACHed) changed in one
 * transaction. A VFS shim copies each journal (and its database) when
 * SQLite deletes it at commit, by then holding the super-journal record.
 */
struct capture {
	char name[700];
	struct buf bytes;
	struct buf db;
};
static struct capture captures[8];
static int ncaptures;
static bool capturing;
static sqlite3_vfs shim_vfs;
static sqlite3_vfs *base_vfs;

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcmp(s + a - b, suffix) == 0;
}

static bool is_super_journal(const char *path)
{
	const char *base = strrchr(path, '/');
	return strstr(base ? base : path, "-mj") != NULL && !ends_with(path, "-journal");
}

static int shim_delete(sqlite3_vfs *vfs, const char *name, int syncdir)
{
	if (capturing && ncaptures < 8 && (ends_with(name, "-journal") || is_super_journal(name))) {
		struct capture *c = &captures[ncaptures++];
		snprintf(c->name, sizeof(c->name), "%s", name);
		buf_slurp(name, &c->bytes);
		if (ends_with(name, "-journal")) {
			char dbpath[700];
			snprintf(dbpath, sizeof(dbpath), "%.*s", (int)(strlen(name) - 8), name);
			buf_slurp(dbpath, &c->db);
		}
	}
	return base_vfs->xDelete(base_vfs, name, syncdir);
}

static void super_case(const char *sync, bool aligned)
{
	char a[512], bpath[512], sql[1200], aname[64], bname[64];
	struct buf pre_a, pre_b;
	const char *super = NULL;
	sqlite3 *db;
	int njournals = 0;

	memset(captures, 0, sizeof(captures));
	ncaptures = 0;
	snprintf(aname, sizeof(aname), "super-a-%s.db", sync);
	snprintf(bname, sizeof(bname), "super-b-%s.db", sync);
	path_of(a, sizeof(a), aname);
	path_of(bpath, sizeof(bpath), bname);
	db = open_db(a, shim_vfs.zName);
	snprintf(
	    sql, sizeof(sql),
	    "ATTACH '%s' AS b; PRAGMA main.synchronous=%s; PRAGMA b.synchronous=%s;"
	    "CREATE TABLE main.t(v); CREATE TABLE b.u(v);" SERIES(
		"50") "INSERT INTO main.t SELECT randomblob(400) FROM s;" SERIES("70") "INSERT "
										       "INTO b.u "
										       "SELECT "
										       "randomblob("
										       "400) FROM "
										       "s",
	    bpath, sync, sync);
	exec_ok(db, sql);
	CHECK(buf_slurp(a, &pre_a));
	CHECK(buf_slurp(bpath, &pre_b));

	capturing = true;
	exec_ok(db, "BEGIN; UPDATE main.t SET v = randomblob(400);"
		    "UPDATE b.u SET v = randomblob(300); INSERT INTO b.u VALUES (1); COMMIT");
	capturing = false;
	sqlite3_close(db);

	for (int i = 0; i < ncaptures; i++)
		if (is_super_journal(captures[i].name))
			super = captures[i].name;
	CHECK(super != NULL);
	for (int i = 0; super && i < ncaptures; i++) {
		struct capture *c = &captures[i];
		struct buf ours;
		const struct buf *pre;
		char got[700];
		int fd;
		uint32_t len, sector;

		if (!ends_with(c->name, "-journal") || c->bytes.len < 28)
			continue;
		njournals++;
		pre = strncmp(c->name, a, strlen(a)) == 0 ? &pre_a : &pre_b;
		/* The super-journal itself lists this journal's name. */
		fd = memfd_with(c->bytes.p, c->bytes.len);
		CHECK_RC(journal_super_name(fd, got, sizeof(got)), 1);
		CHECK(strcmp(got, super) == 0);
		CHECK_RC(journal_super_name(fd, got, strlen(super)), -ENAMETOOLONG);
		close(fd);
		len = get_be32(c->bytes.p + c->bytes.len - 16);
		sector = get_be32(c->bytes.p + 20);
		CHECK_EQ_U64(len, strlen(super));
		CHECK_EQ_U64(get_be32(c->bytes.p + c->bytes.len - 20 - len),
			     0x40000000u / 4096 + 1);
		if (aligned) /* fullSync: the record starts a sector */
			CHECK((c->bytes.len - 20 - len) % sector == 0);

		/* Playback stops before the super-journal record and restores
		 * the pre-transaction database from the committed one. */
		CHECK(apply_journal(&c->bytes, &c->db, 0, &ours) > 0);
		CHECK(same(&ours, pre));
		buf_free(&ours);
	}
	CHECK_EQ_U64(njournals, 2);
	for (int i = 0; i < ncaptures; i++) {
		buf_free(&captures[i].bytes);
		buf_free(&captures[i].db);
	}
	buf_free(&pre_a);
	buf_free(&pre_b);
}

static void test_journal_super_full(void)
{
	super_case("FULL", true);
}

static void test_journal_super_normal(void)
{
	super_case("NORMAL", false);
}

/* ---- main ---- */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	return remove(path);
}

int main(void)
{
	const char *t = getenv("TMPDIR");

	snprintf(tmpdir, sizeof(tmpdir), "%s/ltxfs-sqlfmt-XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	base_vfs = sqlite3_vfs_find(NULL);
	shim_vfs = *base_vfs;
	shim_vfs.zName = "ltxfs-capture";
	shim_vfs.xDelete = shim_delete;
	shim_vfs.pNext = NULL;
	if (sqlite3_vfs_register(&shim_vfs, 0) != SQLITE_OK)
		return 1;

	RUN(test_db_header_page_sizes);
	RUN(test_db_header_wal_mode);
	RUN(test_db_header_invalid);
	RUN(test_wal_checksum_function);
	RUN(test_wal_real_file);
	RUN(test_wal_corruption);
	RUN(test_wal_both_endians);
	RUN(test_wal_spill_checksum_rewrite);
	RUN(test_journal_page_checksum);
	RUN(test_journal_handmade);
	RUN(test_journal_header_errors);
	RUN(test_journal_truncations);
	RUN(test_journal_super_name_handmade);
	RUN(test_journal_hot_delete_full);
	RUN(test_journal_hot_persist_full_1k);
	RUN(test_journal_hot_delete_normal_512);
	RUN(test_journal_hot_nosync_ffff);
	RUN(test_journal_hot_64k);
	RUN(test_journal_persist_committed);
	RUN(test_journal_super_full);
	RUN(test_journal_super_normal);

	sqlite3_vfs_unregister(&shim_vfs);
	if (getenv("LTXFS_KEEP_TMP") == NULL)
		nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return UNIT_DONE();
}
