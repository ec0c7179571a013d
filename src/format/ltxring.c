/*
 * ltxring.c - the LTX ring: durable copies of recent LTX files.
 *
 * WHY. In a rollback journal mode with synchronous=FULL, SQLite fsyncs the
 * database just before the commit point, and ltxfs must make the commit's
 * LTX file durable by then (docs/architecture.md §5). fdatasync of a newly
 * created file makes ext4 commit its journal, because the inode and the
 * directory entry are new: that costs as much again as SQLite's own fsync.
 * The ring is one file per database, allocated and zero-filled once; a copy
 * of each LTX file is written over blocks that already exist, so its
 * fdatasync is a data write and a cache flush. The LTX file itself is written
 * without a sync and becomes durable at the next syncfs (db_sync_ltx).
 *
 * FORMAT (all integers little-endian). The file is one header block followed
 * by LTX_RING_AREA bytes of records:
 *
 *   header block, 4096 bytes:
 *     0  8  magic "LTXRING1"
 *     8  4  version (1)
 *    12  4  block size (4096)
 *    16  8  record area size in bytes
 *    24  8  epoch
 *    32  8  CRC-64/ISO of bytes 0..31
 *    40     zeros up to 4096
 *
 *   record, at a 4096-aligned offset after the header block:
 *     0  8  magic "LTXRREC1"
 *     8  8  epoch (the header's when written)
 *    16  8  sequence number (1, 2, ... within the epoch)
 *    24  8  TXID (the LTX file's max TXID)
 *    32  8  length of the LTX bytes
 *    40 16  zeros
 *    56  8  CRC-64/ISO of bytes 0..55 and the LTX bytes
 *    64     the LTX file's bytes
 *   The next record starts at the next 4096-aligned offset.
 *
 * STATE. A write position, the epoch and the next sequence number. Records
 * are appended at the position; when the next one does not fit before the
 * end, the owner first makes durable every LTX file the ring holds copies of
 * (syncfs) and then wraps to the first block. ltx_ring_reset starts a new
 * epoch (a random number): the records of earlier epochs no longer count,
 * whatever their bytes. If the reset fails, either header may be the one on
 * disk, so the ring takes no more records.
 * A record whose commit was abandoned gets its header zeroed.
 *
 * A SCAN (start-up recovery) walks the record area block by block. A block
 * that starts a record of the current epoch whose CRC holds is reported and
 * the walk skips to the block after it, so bytes inside a record's payload
 * are never read as records; any other block is skipped. Records of an epoch
 * may appear in any order after a wrap: the sequence number orders them.
 *
 * THREADS. No lock: the owner serialises every call (db->mu), except that
 * the fdatasync may run on its syncer thread.
 */
#include "ltxfs/ltxring.h"
#include "ltxfs/byteorder.h"

#include "ltxfs/crc.h"
#include "ltxfs/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RING_MAGIC     "LTXRING1"
#define REC_MAGIC      "LTXRREC1"
#define RING_VERSION   1u
#define RING_FILE_SIZE ((uint64_t)LTX_RING_BLOCK + LTX_RING_AREA)

struct ltx_ring {
	int fd;
	uint64_t epoch;
	uint64_t seq;  /* of the next record */
	uint64_t wpos; /* offset of the next record */
	bool ready;    /* created or reset by this process: records may be appended */
};

/*
 * A new epoch: random, so that bytes written into a database page (which can
 * end up inside a record's payload) cannot be prepared to pass for a record.
 */
static uint64_t new_epoch(uint64_t old)
{
	uint64_t e = 0;
	if (getrandom(&e, sizeof(e), 0) != (ssize_t)sizeof(e)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		e = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	}
	return e == old ? e + 1 : e;
}

static size_t span(size_t len)
{
	size_t n = LTX_RING_RECORD_HEADER + len;
	return (n + LTX_RING_BLOCK - 1) / LTX_RING_BLOCK * LTX_RING_BLOCK;
}

static void header_encode(uint8_t b[LTX_RING_BLOCK], uint64_t epoch)
{
	memset(b, 0, LTX_RING_BLOCK);
	memcpy(b, RING_MAGIC, 8);
	put_le32(b + 8, RING_VERSION);
	put_le32(b + 12, LTX_RING_BLOCK);
	put_le64(b + 16, LTX_RING_AREA);
	put_le64(b + 24, epoch);
	put_le64(b + 32, crc64_iso(0, b, 32));
}

/* The epoch of a valid header, or -EBADMSG. */
static int header_decode(const uint8_t *b, size_t len, uint64_t *epoch)
{
	if (len < 40 || memcmp(b, RING_MAGIC, 8) != 0 || get_le32(b + 8) != RING_VERSION ||
	    get_le32(b + 12) != LTX_RING_BLOCK || get_le64(b + 16) != LTX_RING_AREA ||
	    get_le64(b + 32) != crc64_iso(0, b, 32))
		return -EBADMSG;
	*epoch = get_le64(b + 24);
	return 0;
}

/* Write the header and a zeroed record area, sync file and directory. */
static int ring_init(int fd, const char *path, uint64_t epoch)
{
	uint8_t *b = calloc(1, 1u << 20);
	int r = 0;
	if (!b)
		return -ENOMEM;
	if (ftruncate(fd, 0) < 0)
		r = -errno;
	for (uint64_t off = LTX_RING_BLOCK; r == 0 && off < RING_FILE_SIZE; off += 1u << 20) {
		size_t n =
		    RING_FILE_SIZE - off < (1u << 20) ? (size_t)(RING_FILE_SIZE - off) : (1u << 20);
		r = fs_pwrite_full(fd, b, n, (off_t)off);
	}
	if (r == 0) {
		header_encode(b, epoch);
		r = fs_pwrite_full(fd, b, LTX_RING_BLOCK, 0);
	}
	if (r == 0 && fdatasync(fd) < 0)
		r = -errno;
	free(b);
	if (r == 0) {
		char dir[4096];
		size_t n = strlen(path);
		if (n >= sizeof(dir))
			return -ENAMETOOLONG;
		memcpy(dir, path, n + 1);
		r = fs_fsync_dir(dirname(dir));
	}
	return r;
}

int ltx_ring_open(struct ltx_ring **ret, const char *path, bool create, bool *ret_created)
{
	uint8_t hdr[LTX_RING_BLOCK];
	struct stat st;
	uint64_t epoch = 0;
	struct ltx_ring *r = NULL;
	int fd, rc;

	*ret = NULL;
	if (ret_created)
		*ret_created = false;
	fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0644);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		goto fail;
	}
	ssize_t got =
	    (uint64_t)st.st_size == RING_FILE_SIZE ? fs_pread_full(fd, hdr, sizeof(hdr), 0) : 0;
	if (got < 0) {
		rc = (int)got;
		goto fail;
	}
	bool fresh = false;
	rc = header_decode(hdr, (size_t)got, &epoch);
	if (rc < 0) {
		if (!create)
			goto fail;
		epoch = new_epoch(0);
		rc = ring_init(fd, path, epoch);
		if (rc < 0)
			goto fail;
		if (ret_created)
			*ret_created = true;
		fresh = true;
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		rc = -ENOMEM;
		goto fail;
	}
	r->fd = fd;
	r->epoch = epoch;
	r->seq = 1;
	r->wpos = LTX_RING_BLOCK;
	r->ready = fresh;
	*ret = r;
	return 0;
fail:
	close(fd);
	return rc;
}

void ltx_ring_free(struct ltx_ring *r)
{
	if (!r)
		return;
	close(r->fd);
	free(r);
}

int ltx_ring_fd(const struct ltx_ring *r)
{
	return r->fd;
}

bool ltx_ring_fits(const struct ltx_ring *r, size_t len)
{
	return len <= LTX_RING_MAX_LTX && r->wpos + span(len) <= RING_FILE_SIZE;
}

void ltx_ring_wrap(struct ltx_ring *r)
{
	r->wpos = LTX_RING_BLOCK;
}

int ltx_ring_append(struct ltx_ring *r, uint64_t txid, const void *ltx, size_t len,
		    uint64_t *ret_off)
{
	if (!r->ready)
		return -ESTALE; /* records of this epoch from before: scan, then reset */
	if (len > LTX_RING_MAX_LTX)
		return -EFBIG;
	if (!ltx_ring_fits(r, len))
		return -ENOSPC;
	size_t n = span(len);
	uint8_t *b = calloc(1, n);
	if (!b)
		return -ENOMEM;
	memcpy(b, REC_MAGIC, 8);
	put_le64(b + 8, r->epoch);
	put_le64(b + 16, r->seq);
	put_le64(b + 24, txid);
	put_le64(b + 32, len);
	memcpy(b + LTX_RING_RECORD_HEADER, ltx, len);
	uint64_t crc = crc64_iso(0, b, 56);
	crc = crc64_iso(crc, ltx, len);
	put_le64(b + 56, crc);
	int rc = fs_pwrite_full(r->fd, b, n, (off_t)r->wpos);
	free(b);
	if (rc < 0)
		return rc;
	*ret_off = r->wpos;
	r->wpos += n;
	r->seq++;
	return 0;
}

int ltx_ring_cancel(struct ltx_ring *r, uint64_t off)
{
	static const uint8_t zero[LTX_RING_RECORD_HEADER];
	if (off < LTX_RING_BLOCK || off % LTX_RING_BLOCK || off >= RING_FILE_SIZE)
		return -EINVAL;
	return fs_pwrite_full(r->fd, zero, sizeof(zero), (off_t)off);
}

int ltx_ring_sync(struct ltx_ring *r)
{
	return fdatasync(r->fd) < 0 ? -errno : 0;
}

int ltx_ring_reset(struct ltx_ring *r)
{
	uint8_t hdr[LTX_RING_BLOCK];
	uint64_t epoch = new_epoch(r->epoch);
	header_encode(hdr, epoch);
	int rc = fs_pwrite_full(r->fd, hdr, sizeof(hdr), 0);
	if (rc == 0 && fdatasync(r->fd) < 0)
		rc = -errno;
	if (rc < 0) {
		/* Either header may be the one on disk: no record can be trusted
		 * to count, so no more are written. */
		r->ready = false;
		return rc;
	}
	r->epoch = epoch;
	r->ready = true;
	r->seq = 1;
	r->wpos = LTX_RING_BLOCK;
	return 0;
}

int ltx_ring_load(struct ltx_ring *r, uint8_t **ret, size_t *ret_len)
{
	uint8_t *b = malloc(RING_FILE_SIZE);
	if (!b)
		return -ENOMEM;
	ssize_t got = fs_pread_full(r->fd, b, RING_FILE_SIZE, 0);
	if (got < 0) {
		free(b);
		return (int)got;
	}
	*ret = b;
	*ret_len = (size_t)got;
	return 0;
}

int ltx_ring_scan(const uint8_t *img, size_t len, ltx_ring_fn fn, void *ctx)
{
	uint64_t epoch;
	int rc = header_decode(img, len, &epoch);
	if (rc < 0)
		return rc;
	size_t off = LTX_RING_BLOCK;
	while (off + LTX_RING_RECORD_HEADER <= len) {
		const uint8_t *h = img + off;
		uint64_t n = get_le64(h + 32);
		if (memcmp(h, REC_MAGIC, 8) != 0 || get_le64(h + 8) != epoch ||
		    n > LTX_RING_MAX_LTX || n > len - off - LTX_RING_RECORD_HEADER ||
		    crc64_iso(crc64_iso(0, h, 56), h + LTX_RING_RECORD_HEADER, (size_t)n) !=
			get_le64(h + 56)) {
			off += LTX_RING_BLOCK;
			continue;
		}
		struct ltx_ring_record rec = {
		    .seq = get_le64(h + 16),
		    .txid = get_le64(h + 24),
		    .off = off,
		    .ltx = h + LTX_RING_RECORD_HEADER,
		    .len = (size_t)n,
		};
		rc = fn(ctx, &rec);
		if (rc != 0)
			return rc;
		off += span((size_t)n);
	}
	return 0;
}
