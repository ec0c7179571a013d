/*
 * sqlfmt.c - SQLite's on-disk formats that ltxfs reads: the database header,
 * the write-ahead log and the rollback journal. Every rule here mirrors a
 * named function of SQLite 3.40.1 (src/btree.c, src/wal.c, src/pager.c); the
 * comment at each rule says which one. All integers on disk are big-endian.
 *
 * 1. The database header (first 100 bytes of page 1; btree.c
 *    lockBtree(), www/fileformat2.html section 1.3)
 *
 *      0  16  "SQLite format 3\0"
 *     16   2  page size; the value 1 means 65536. lockBtree() decodes it as
 *             (b[16]<<8)|(b[17]<<16) and accepts a power of two in
 *             512..65536.
 *     18   1  file format write version: 1 legacy (rollback), 2 WAL
 *     19   1  file format read version:  1 legacy (rollback), 2 WAL
 *     20   1  reserved bytes at the end of each page
 *     24   4  file change counter
 *     28   4  database size in pages ("in-header database size")
 *     92   4  version-valid-for number
 *     96   4  SQLITE_VERSION_NUMBER of the last writer
 *
 *    The in-header size is trusted only if it is nonzero and the change
 *    counter equals version-valid-for (lockBtree(): otherwise SQLite uses
 *    the file size).
 *
 * 2. The WAL (wal.c, file-top comment, sqlite3WalFrames(), walIndexRecover())
 *
 *    A 32-byte header, then frames of a 24-byte frame header + one page.
 *
 *      header: 0 magic 0x377f0682|bigEndCksum, 4 version 3007000,
 *              8 page size (65536 stored as is), 12 checkpoint sequence,
 *              16 salt-1, 20 salt-2, 24 checksum-1, 28 checksum-2
 *      frame:  0 page number, 4 commit (db size in pages after the commit,
 *              0 for a non-commit frame), 8 salt-1, 12 salt-2,
 *              16 checksum-1, 20 checksum-2
 *
 *    The checksum (walChecksumBytes()) runs over 32-bit words, two at a time:
 *      s1 += w[i] + s2;  s2 += w[i+1] + s1;
 *    The words are read big-endian if the magic's low bit is set, else
 *    little-endian. SQLite itself always writes in the host's order (it puts
 *    WAL_MAGIC|SQLITE_BIGENDIAN in the magic), but reads either. The header
 *    checksum covers bytes 0..23 starting from (0, 0). Each frame's checksum
 *    covers frame-header bytes 0..7 and the page and is chained from the
 *    previous frame's (the header's for frame 1): it is cumulative over the
 *    whole log. Salts and checksums in the frame header are NOT covered.
 *
 *    walIndexRecover() accepts the header if (magic & ~1) == WAL_MAGIC, the
 *    page size is a power of two in 512..65536 and the header checksum
 *    matches; a good checksum with a version other than 3007000 is an error
 *    (SQLITE_CANTOPEN). It then reads whole frames, (size - 32) / (24 +
 *    page size) of them, and stops at the first one walDecodeFrame() rejects:
 *    salts differ from the header's, page number 0, or checksum mismatch.
 *    Only frames up to the last valid commit frame are part of the database;
 *    valid frames after it belong to an unfinished transaction.
 *
 * 3. The rollback journal (pager.c, comments above writeJournalHdr(),
 *    pager_playback(), writeSuperJournal())
 *
 *    One or more segments, each a header padded to the sector size then
 *    page records:
 *
 *      header: 0 magic d9 d5 05 f9 20 a1 63 d7, 8 nRec, 12 checksum nonce,
 *              16 initial database size in pages, 20 sector size,
 *              24 page size, zero padding to sector size
 *      record: 4 page number, page, 4 checksum
 *
 *    The checksum (pager_cksum()) is the nonce plus the unsigned bytes at
 *    offsets page_size-200, page_size-400, ... > 0 of the page (offset 0 is
 *    never summed). A new segment starts at the next sector boundary after
 *    the previous records (journalHdrOffset()); SQLite starts one at every
 *    journal sync made with more records to follow (syncJournal(newHdr=1),
 *    called by a cache spill). Only the first header's sector size, page size
 *    and initial size matter (readJournalHdr() reads sizes only at offset 0;
 *    pager_playback() truncates only after the first header).
 *
 *    writeJournalHdr() writes a header with its magic AND nRec zeroed;
 *    syncJournal() writes both (magic + nRec, 12 bytes) once the records
 *    are on disk, and only then may the pager write database pages. So the
 *    segment being filled when a process dies has no magic: playback ends
 *    there, and its records (whose pages never reached the database) are
 *    ignored. nRec 0xffffffff (synchronous=OFF, journal_mode=MEMORY or
 *    SAFE_APPEND; magic written at once) means "compute from the file
 *    size". For a hot journal nRec 0 with a magic means "no records here"
 *    (ticket #2565); only a ROLLBACK of one's own open transaction treats
 *    it as "to the end of the file".
 *
 *    Playback (pager_playback(), pager_playback_one_page()) per record:
 *    page number 0 or PAGER_SJ_PGNO ends playback; a page number above the
 *    first header's initial size is skipped without looking at its
 *    checksum; a bad checksum ends playback (later segments included); a
 *    short read ends playback. A header that does not fit in the file or
 *    lacks the magic ends playback. The database is truncated to the
 *    initial size right after the first header is read.
 *
 *    A multi-database commit appends a super-journal record
 *    (writeSuperJournal(); sector-aligned under synchronous=FULL):
 *      4 PAGER_SJ_PGNO, N name bytes (UTF-8, no NUL), 4 N,
 *      4 checksum (sum of the name bytes as signed chars), 8 journal magic
 *    It is the last thing in the file: readSuperJournal() reads it back from
 *    the end. Its leading PAGER_SJ_PGNO (PENDING_BYTE / page size + 1, a page
 *    number no database uses) makes playback stop if it reaches it as a
 *    record.
 *
 *    Around the reader, the caller must do what SQLite does: a journal is
 *    hot only if it exists, no one holds RESERVED, the database is not 0
 *    pages, and its first byte is nonzero (hasHotJournal()); if it names
 *    a super-journal that does not exist, the transaction committed and
 *    the journal is NOT played back, just finalized (pager_playback()).
 *
 * The reader is a loop over two states, mirroring pager_playback(): "at a
 * header" (nrec_left == 0: load the next segment or finish) and "in a
 * segment" (read one record, skip or yield it, or finish). "done" is final.
 *
 * Ownership: objects returned by *_new are freed with the matching *_free;
 * nothing here keeps a pointer to caller buffers. The reader only preads the
 * caller's fd (never moves its offset, never writes, never closes it).
 */
#include "ltxfs/sqlfmt.h"
#include "ltxfs/byteorder.h"

#include "ltxfs/fsutil.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Limits from SQLite: sqliteLimit.h SQLITE_MAX_PAGE_SIZE, pager.c
 * MAX_SECTOR_SIZE, os.h PENDING_BYTE, os_unix.c MAX_PATHNAME. */
#define SQLITE_MAX_PAGE_SIZE 65536u
#define SQLITE_MIN_PAGE_SIZE 512u
#define JOURNAL_MIN_SECTOR   32u
#define JOURNAL_MAX_SECTOR   0x10000u
#define SQLITE_MAX_PATHNAME  512u
#define WAL_VERSION	     3007000u
#define WAL_MAGIC	     WAL_MAGIC_LE

static const uint8_t sqlite_magic[16] = "SQLite format 3";

const uint8_t journal_magic[8] = {0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7};

_Static_assert(sizeof(sqlite_magic) == 16, "magic includes the NUL");
_Static_assert(WAL_HEADER_SIZE == 32 && WAL_FRAME_HEADER_SIZE == 24, "wal.c sizes");
_Static_assert(JOURNAL_HEADER_MIN == 8 + 5 * 4, "pager.c journal header");

static bool is_pow2(uint32_t v)
{
	return v != 0 && (v & (v - 1)) == 0;
}

static bool page_size_ok(uint32_t v)
{
	return is_pow2(v) && v >= SQLITE_MIN_PAGE_SIZE && v <= SQLITE_MAX_PAGE_SIZE;
}

static int file_size(int fd, uint64_t *ret)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (st.st_size < 0)
		return -EINVAL;
	*ret = (uint64_t)st.st_size;
	return 0;
}

/* ---- database header ---- */

int sqlite_dbheader_parse(struct sqlite_dbheader *h, const uint8_t *buf, size_t n)
{
	uint32_t page_size;

	if (n < SQLITE_HEADER_SIZE)
		return -EPROTO;
	if (memcmp(buf, sqlite_magic, sizeof(sqlite_magic)) != 0)
		return -EBADMSG;
	/* btree.c lockBtree(): pageSize = (page1[16]<<8) | (page1[17]<<16). */
	page_size = (uint32_t)buf[16] << 8 | (uint32_t)buf[17] << 16;
	if (!page_size_ok(page_size))
		return -EBADMSG;

	h->page_size = page_size;
	h->write_version = buf[18];
	h->read_version = buf[19];
	h->change_counter = get_be32(buf + 24);
	h->page_count = get_be32(buf + 28);
	h->version_valid_for = get_be32(buf + 92);
	/* lockBtree(): "nPage==0 || memcmp(24+aData, 92+aData, 4)!=0" -> file size. */
	h->page_count_valid = h->page_count != 0 && h->change_counter == h->version_valid_for;
	return 0;
}

/* ---- WAL ---- */

void wal_checksum(bool big_endian, const uint8_t *buf, size_t n, uint32_t *s1, uint32_t *s2)
{
	/* wal.c walChecksumBytes(). SQLite reads native words and byte-swaps when
	 * the WAL's order differs from the host's; decoding each word explicitly
	 * in the WAL's order is the same function on any host. */
	uint32_t a = *s1, b = *s2;

	assert(n % 8 == 0);
	if (big_endian) {
		for (size_t i = 0; i + 8 <= n; i += 8) {
			a += get_be32(buf + i) + b;
			b += get_be32(buf + i + 4) + a;
		}
	} else {
		for (size_t i = 0; i + 8 <= n; i += 8) {
			a += get_le32(buf + i) + b;
			b += get_le32(buf + i + 4) + a;
		}
	}
	*s1 = a;
	*s2 = b;
}

int wal_header_parse(struct wal_header *h, const uint8_t buf[WAL_HEADER_SIZE])
{
	uint32_t magic = get_be32(buf), page_size = get_be32(buf + 8);
	uint32_t s1 = 0, s2 = 0;
	bool big_endian = magic & 1;

	/* walIndexRecover(): bad magic or page size -> "the WAL file contains no
	 * valid data". */
	if ((magic & 0xfffffffeu) != WAL_MAGIC || !page_size_ok(page_size))
		return -EBADMSG;
	/* walIndexRecover(): checksum of the first 24 bytes from (0, 0). */
	wal_checksum(big_endian, buf, WAL_HEADER_SIZE - 8, &s1, &s2);
	if (s1 != get_be32(buf + 24) || s2 != get_be32(buf + 28))
		return -EBADMSG;
	/* walIndexRecover(): good checksum but version != WAL_MAX_VERSION ->
	 * SQLITE_CANTOPEN. */
	if (get_be32(buf + 4) != WAL_VERSION)
		return -EBADMSG;

	h->magic = magic;
	h->version = WAL_VERSION;
	h->page_size = page_size;
	h->ckpt_seq = get_be32(buf + 12);
	h->salt1 = get_be32(buf + 16);
	h->salt2 = get_be32(buf + 20);
	h->cksum1 = s1;
	h->cksum2 = s2;
	h->big_endian = big_endian;
	return 0;
}

void wal_frame_header_parse(struct wal_frame_header *f, const uint8_t buf[WAL_FRAME_HEADER_SIZE])
{
	/* wal.c walEncodeFrame() layout. */
	f->pgno = get_be32(buf);
	f->commit = get_be32(buf + 4);
	f->salt1 = get_be32(buf + 8);
	f->salt2 = get_be32(buf + 12);
	f->cksum1 = get_be32(buf + 16);
	f->cksum2 = get_be32(buf + 20);
}

bool wal_frame_verify(const struct wal_header *h, uint32_t *s1, uint32_t *s2,
		      const uint8_t fhdr[WAL_FRAME_HEADER_SIZE], const uint8_t *page)
{
	struct wal_frame_header f;
	uint32_t a = *s1, b = *s2;

	wal_frame_header_parse(&f, fhdr);
	/* wal.c walDecodeFrame(), in its order: salts, page number 0, checksum. */
	if (f.salt1 != h->salt1 || f.salt2 != h->salt2)
		return false;
	if (f.pgno == 0)
		return false;
	wal_checksum(h->big_endian, fhdr, 8, &a, &b);
	wal_checksum(h->big_endian, page, h->page_size, &a, &b);
	if (a != f.cksum1 || b != f.cksum2)
		return false;
	*s1 = a;
	*s2 = b;
	return true;
}

/* ---- rollback journal ---- */

int journal_header_parse(struct journal_header *h, const uint8_t *buf, size_t n)
{
	if (n < JOURNAL_HEADER_MIN)
		return -EPROTO;
	/* readJournalHdr(): a magic mismatch ends the journal (SQLITE_DONE). */
	if (memcmp(buf, journal_magic, sizeof(journal_magic)) != 0)
		return -EBADMSG;
	h->nrec = get_be32(buf + 8);
	h->nonce = get_be32(buf + 12);
	h->initial_size = get_be32(buf + 16);
	h->sector_size = get_be32(buf + 20);
	h->page_size = get_be32(buf + 24);
	return 0;
}

uint32_t journal_page_checksum(uint32_t nonce, const uint8_t *page, uint32_t page_size)
{
	/* pager.c pager_cksum(): i = pageSize-200; while (i > 0) { cksum +=
	 * aData[i]; i -= 200; } -- byte 0 is never included; bytes unsigned. */
	uint32_t cksum = nonce;
	for (int64_t i = (int64_t)page_size - 200; i > 0; i -= 200)
		cksum += page[i];
	return cksum;
}

/*
 * Reader state, named after the Pager fields pager_playback() uses:
 * off = journalOff, db_size = dbSize (from the first header only),
 * nonce = cksumInit of the current segment, nrec_left = what is left of
 * nRec. State: fresh segment header due when nrec_left == 0; done is final.
 */
struct journal_reader {
	int fd;
	uint64_t size; /* szJ, sampled once like pager_playback() does */
	struct journal_header hdr;
	uint32_t page_size, sector_size, db_size, lck_pgno;
	uint32_t nonce;
	uint32_t nrec_left;
	uint64_t off;
	bool done;
	uint8_t *rec; /* one record: 4 + page_size + 4 bytes */
};

/* journalHdrOffset(): round off up to a sector boundary. */
static uint64_t sector_align(uint64_t off, uint32_t sector)
{
	return off ? ((off - 1) / sector + 1) * sector : 0;
}

/* JOURNAL_PG_SZ records that fit in avail bytes; SQLite casts to int here,
 * which only matters past 2^31 records, so clamp. */
static uint32_t nrec_from_size(uint64_t avail, uint32_t page_size)
{
	uint64_t n = avail / ((uint64_t)page_size + 8);
	return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

int journal_reader_new(struct journal_reader **ret, int fd, uint32_t db_page_size)
{
	struct journal_reader *r = NULL;
	uint8_t buf[JOURNAL_HEADER_MIN];
	struct journal_header h;
	ssize_t n;
	uint64_t size = 0;
	int rc;

	if (db_page_size != 0 && !page_size_ok(db_page_size))
		return -EINVAL;
	rc = file_size(fd, &size);
	if (rc < 0)
		goto out;
	n = fs_pread_full(fd, buf, sizeof(buf), 0);
	if (n < 0) {
		rc = (int)n;
		goto out;
	}
	rc = journal_header_parse(&h, buf, (size_t)n);
	if (rc < 0)
		goto out;

	/* readJournalHdr() at offset 0: page size 0 (SQLite < 3.5.8) means the
	 * pager's current page size; then both sizes must be powers of two in
	 * 512..65536 and 32..65536, else the header "must have crashed before
	 * it was synced" and nothing is played back. The journal's page size
	 * wins over the database's (sqlite3PagerSetPagesize()). */
	if (h.page_size == 0)
		h.page_size = db_page_size;
	if (!page_size_ok(h.page_size) || !is_pow2(h.sector_size) ||
	    h.sector_size < JOURNAL_MIN_SECTOR || h.sector_size > JOURNAL_MAX_SECTOR) {
		rc = -EBADMSG;
		goto out;
	}
	/* writeJournalHdr() always writes the whole sector. */
	if (size < h.sector_size) {
		rc = -EPROTO;
		goto out;
	}

	r = calloc(1, sizeof(*r));
	if (!r) {
		rc = -ENOMEM;
		goto out;
	}
	r->rec = malloc((size_t)h.page_size + 8); /* bounded: <= 65544 */
	if (!r->rec) {
		rc = -ENOMEM;
		goto out;
	}
	r->fd = fd;
	r->size = size;
	r->hdr = h;
	r->page_size = h.page_size;
	r->sector_size = h.sector_size;
	/* pager_playback(): dbSize = mxPg of the first header. */
	r->db_size = h.initial_size;
	/* PAGER_SJ_PGNO: lckPgno as sqlite3PagerSetPagesize() computes it. */
	r->lck_pgno = SQLITE_PENDING_BYTE / h.page_size + 1;
	r->nonce = h.nonce;
	r->off = h.sector_size;
	/* pager_playback(): nRec 0xffffffff -> (szJ - JOURNAL_HDR_SZ) /
	 * JOURNAL_PG_SZ. nRec 0 in a hot journal stays 0. */
	r->nrec_left =
	    h.nrec == 0xffffffffu ? nrec_from_size(size - h.sector_size, h.page_size) : h.nrec;
	*ret = r;
	r = NULL;
	rc = 0;
out:
	journal_reader_free(r);
	return rc;
}

const struct journal_header *journal_reader_header(const struct journal_reader *r)
{
	return &r->hdr;
}

/*
 * readJournalHdr() for a later segment: at the next sector boundary, a whole
 * sector must fit in the file and start with the magic; only nRec and the
 * nonce are used (its size fields are ignored). 1 = segment loaded, 0 = end.
 */
static int next_segment(struct journal_reader *r)
{
	uint8_t buf[JOURNAL_HEADER_MIN];
	struct journal_header h;
	uint64_t off = sector_align(r->off, r->sector_size);
	ssize_t n;

	if (off > r->size || r->size - off < r->sector_size)
		return 0;
	n = fs_pread_full(r->fd, buf, sizeof(buf), off);
	if (n < 0)
		return (int)n;
	if (journal_header_parse(&h, buf, (size_t)n) < 0)
		return 0;
	r->off = off + r->sector_size;
	r->nonce = h.nonce;
	/* pager_playback() computes 0xffffffff from JOURNAL_HDR_SZ, not from
	 * this header's offset (it asserts that only the first header has it);
	 * records past EOF then end playback as a short read. */
	r->nrec_left =
	    h.nrec == 0xffffffffu ? nrec_from_size(r->size - r->sector_size, r->page_size) : h.nrec;
	return 1;
}

int journal_reader_next(struct journal_reader *r, uint32_t *pgno, uint8_t *page)
{
	const size_t reclen = (size_t)r->page_size + 8;
	uint32_t p;
	ssize_t n;
	int rc;

	while (!r->done) {
		if (r->nrec_left == 0) {
			/* nRec 0 (hot) or segment exhausted: the loop in
			 * pager_playback() reads the next header. */
			rc = next_segment(r);
			if (rc < 0)
				return rc;
			if (rc == 0)
				r->done = true;
			continue;
		}
		/* pager_playback_one_page(): read pgno and page, advance. */
		n = fs_pread_full(r->fd, r->rec, reclen, r->off);
		if (n < 0)
			return (int)n;
		if ((size_t)n < reclen) {
			/* SQLITE_IOERR_SHORT_READ: "the journal has been
			 * truncated, simply stop reading". */
			r->done = true;
			break;
		}
		r->off += reclen;
		r->nrec_left--;
		p = get_be32(r->rec);
		/* pgno 0 or PAGER_SJ_PGNO -> SQLITE_DONE: end of playback. */
		if (p == 0 || p == r->lck_pgno) {
			r->done = true;
			break;
		}
		/* pgno > dbSize: skipped, before and without the checksum test. */
		if (p > r->db_size)
			continue;
		/* Bad checksum -> SQLITE_DONE: pager_playback() sets journalOff
		 * = szJ, so nothing after it (in any segment) is played back. */
		if (journal_page_checksum(r->nonce, r->rec + 4, r->page_size) !=
		    get_be32(r->rec + 4 + r->page_size)) {
			r->done = true;
			break;
		}
		*pgno = p;
		memcpy(page, r->rec + 4, r->page_size);
		return 1;
	}
	return 0;
}

void journal_reader_free(struct journal_reader *r)
{
	if (!r)
		return;
	free(r->rec);
	free(r);
}

int journal_super_name(int fd, char *buf, size_t n)
{
	uint8_t tail[16];
	char name[SQLITE_MAX_PATHNAME];
	uint64_t size = 0;
	uint32_t len, cksum;
	ssize_t got;
	int rc;

	rc = file_size(fd, &size);
	if (rc < 0)
		return rc;
	/* readSuperJournal(): szJ < 16 -> none. */
	if (size < 16)
		return 0;
	got = fs_pread_full(fd, tail, sizeof(tail), size - 16);
	if (got < 0)
		return (int)got;
	if (got < (ssize_t)sizeof(tail))
		return 0; /* shrank under us: like SQLite's short read, no name */
	len = get_be32(tail);
	cksum = get_be32(tail + 4);
	/* len >= nSuper (mxPathname + 1 = 513 on unix), len > szJ - 16,
	 * len == 0, or no magic in the last 8 bytes -> no super-journal. */
	if (len == 0 || len > SQLITE_MAX_PATHNAME || len > size - 16 ||
	    memcmp(tail + 8, journal_magic, sizeof(journal_magic)) != 0)
		return 0;
	got = fs_pread_full(fd, name, len, size - 16 - len);
	if (got < 0)
		return (int)got;
	if ((size_t)got < len)
		return 0;
	/* Checksum: each byte as a signed char (writeSuperJournal() sums
	 * `const char`, signed on the platforms SQLite is built for here). */
	for (uint32_t i = 0; i < len; i++)
		cksum -= (uint32_t)(int32_t)(int8_t)name[i];
	if (cksum != 0)
		return 0;
	/* pager_playback() tests zSuper[0]: a name starting with NUL is none,
	 * and the name ends at its first NUL (it is used as a C string). */
	len = (uint32_t)strnlen(name, len);
	if (len == 0)
		return 0;
	if ((size_t)len >= n)
		return -ENAMETOOLONG;
	memcpy(buf, name, len);
	buf[len] = '\0';
	return 1;
}

/* ------------------------------------------------------------ wal-index */

void shm_header_build(uint8_t out[SHM_HEADER_SIZE], const uint8_t *old, uint32_t page_size,
		      uint32_t npages)
{
	/* wal.c WalIndexHdr, native byte order:
	 *   0 iVersion  4 unused  8 iChange  12 isInit  13 bigEndCksum  14 szPage
	 *   16 mxFrame  20 nPage  24 aFrameCksum[2]  32 aSalt[2]  40 aCksum[2] */
	uint32_t v[12];
	const bool host_be = __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__;
	memset(v, 0, sizeof(v));
	uint32_t change = 0, salt[2] = {0, 0};
	if (old) {
		memcpy(&change, old + 8, 4);
		memcpy(salt, old + 32, 8);
	}
	v[0] = 3007000;
	v[2] = change + 1;
	uint8_t *b = (uint8_t *)v;
	b[12] = 1;
	b[13] = host_be ? 1 : 0;
	uint16_t sz = (uint16_t)((page_size & 0xff00) | (page_size >> 16));
	memcpy(b + 14, &sz, 2);
	v[4] = 0;
	v[5] = npages;
	v[8] = salt[0];
	v[9] = salt[1];
	uint32_t s1 = 0, s2 = 0;
	wal_checksum(host_be, b, 40, &s1, &s2);
	v[10] = s1;
	v[11] = s2;
	memcpy(out, v, 48);
	memcpy(out + 48, v, 48);
	/* WalCkptInfo: nBackfill, aReadMark[5], aLock[8], nBackfillAttempted, notUsed0 */
	if (old)
		memcpy(out + 96, old + 96, SHM_HEADER_SIZE - 96);
	else
		memset(out + 96, 0, SHM_HEADER_SIZE - 96);
	memset(out + 96, 0, 4);	 /* nBackfill */
	memset(out + 100, 0, 4); /* aReadMark[0] */
	memset(out + 128, 0, 4); /* nBackfillAttempted */
	if (!old)
		memset(out + 104, 0xff, 16); /* READMARK_NOT_USED */
}
