/*
 * ltx.c - LTX v1 files as LiteFS 0.5 (superfly/ltx v0.3.14) writes them.
 *
 * THE FORMAT
 *
 * An LTX file carries the pages one or more SQLite transactions changed, plus
 * enough checksums to prove that applying it to a database at the expected
 * position gives the expected result. Every integer is big-endian.
 *
 *     +--------------------+  100-byte header: "LTX1", flags, page size,
 *     | header             |  commit (database size in pages after apply),
 *     +--------------------+  TXID range, timestamp, pre-apply checksum, WAL
 *     | page block         |  offset/size/salts, node ID, 20 reserved bytes.
 *     |   u32 pgno, page   |
 *     |   u32 pgno, page   |  Pages in strictly ascending pgno order, each a
 *     |   ...              |  full page image, then a 4-byte zero terminator.
 *     |   u32 0            |  With flag 0x1 the whole block, terminator
 *     +--------------------+  included, is one LZ4 frame.
 *     | trailer            |  16 bytes: post-apply database checksum and the
 *     +--------------------+  file checksum.
 *
 * The file checksum is 1<<63 | CRC-64/GO-ISO over header, the *uncompressed*
 * page block (pgno and page bytes of every page, then the terminator) and the
 * post-apply checksum. Because it covers the logical content, any LZ4 encoder
 * yields the same file checksum for the same pages; the flag bit in the header
 * is hashed too, so the compressed and uncompressed files differ.
 *
 * A snapshot (MinTXID == 1) holds every page 1..commit except the lock page
 * (the page holding SQLite's PENDING_BYTE, never stored), and its post-apply
 * checksum must equal the database checksum of those pages. A deletion file
 * has commit 0, no pages, and post-apply checksum exactly 1<<63.
 *
 * THE ENCODER
 *
 * ltx_encoder_new() validates and writes the header (and, compressed, the LZ4
 * frame header), each add_page() checks the page-set rules before anything is
 * written, and finish() checks snapshot completeness and the post-apply
 * checksum, then writes the terminator, ends the frame and writes the trailer.
 * Output passes through one staging buffer of about 64 KiB (128 KiB with LZ4,
 * enough for the worst-case frame output of one page), flushed to the sink
 * whenever the next piece might not fit, so memory does not grow with the
 * file. Rule violations return -EINVAL and change nothing; a failed write or
 * LZ4 call poisons the encoder (every later call returns the same error).
 *
 * THE DECODER
 *
 * The decoder reads its source through a 64 KiB input buffer; the read
 * callback is never asked for more than that. It is a small state machine:
 *
 *     new() ---> PAGES --(zero pgno; frame drained)--> TRAILER --finish()--> DONE
 *                  |                                      |
 *                  +---------------- any error -----------+----> ERROR (sticky)
 *
 *   new()      reads 100 bytes (-EPROTO if short), checks the magic (-EBADMSG)
 *              and every header field (-EINVAL), and hashes the header.
 *   PAGES      next_page() reads a pgno, from the raw stream or through
 *              LZ4F_decompress. Before reading the page bytes it checks:
 *              pgno <= commit, pgno != lock page, pgno > previous pgno (order
 *              and duplicates), and for snapshots pgno == the next expected
 *              page (1, 2, ..., skipping the lock page). Then it reads exactly
 *              page_size bytes into an internal buffer, hashes them, and for a
 *              snapshot XORs the page checksum into a running database
 *              checksum. Only then is the page copied to the caller.
 *   terminator A zero pgno ends the block. A snapshot must have reached commit.
 *              Compressed, the rest of the LZ4 frame (end mark, content
 *              checksum) is decoded; any further decompressed byte is an error,
 *              and so is a frame that ends before the terminator. The frame
 *              must begin with the LZ4 frame magic (no skippable or legacy
 *              frames); LZ4F_decompress stops exactly at the end of the frame,
 *              so the bytes after it in the input buffer are the trailer.
 *   TRAILER    finish() (which first consumes any pages the caller did not
 *              read) reads 16 raw bytes and then requires EOF: leftover
 *              buffered bytes or a further non-empty read are -EBADMSG. It then
 *              checks the file checksum, that the post-apply checksum has bit
 *              63 set, that a deletion file's is exactly 1<<63, and that a
 *              snapshot's equals the XOR it computed.
 *
 * EOF inside any structure is -EPROTO, so every strict prefix of a valid file
 * fails with -EPROTO; everything malformed is -EBADMSG. Allocations are the
 * decoder itself, the 64 KiB input buffer, one page buffer (at most 64 KiB),
 * and liblz4's context, whose buffers are bounded by the frame's declared
 * block size (at most 4 MiB by the LZ4 frame format).
 *
 * Page data reaches the caller before the file checksum is known: callers that
 * apply pages as they come must be ready to undo or abandon the result when
 * finish() fails (LiteFS exits; ltxfs stages).
 */
#include "ltxfs/ltx.h"
#include "ltxfs/byteorder.h"

#include "ltxfs/crc.h"
#include "ltxfs/fsutil.h"

#include <errno.h>
#include <pthread.h>
#include <lz4frame.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LTX_V1_FLAG_MASK LTX_FLAG_COMPRESS_LZ4
#define LTX_PGNO_SIZE	 4
#define LTX_MAX_PAGE	 65536u
#define LTX_IO_CHUNK	 (64u * 1024u) /* input buffer; largest read request */

_Static_assert(LTX_HEADER_SIZE == 100, "LTX header is 100 bytes");
_Static_assert(LTX_TRAILER_SIZE == 16, "LTX trailer is 16 bytes");
_Static_assert(LTX_FILENAME_LEN == 37, "LTX file name is 37 characters");

static const uint8_t lz4_frame_magic[4] = {0x04, 0x22, 0x4d, 0x18};

/* --- byte order ---------------------------------------------------------- */

/* --- header, file names -------------------------------------------------- */

bool ltx_page_size_valid(uint32_t page_size)
{
	return page_size >= 512 && page_size <= LTX_MAX_PAGE && (page_size & (page_size - 1)) == 0;
}

int ltx_header_validate(const struct ltx_header *h)
{
	if (!h)
		return -EINVAL;
	if (h->flags & ~LTX_V1_FLAG_MASK)
		return -EINVAL;
	if (!ltx_page_size_valid(h->page_size))
		return -EINVAL;
	if (h->min_txid == 0 || h->max_txid == 0 || h->min_txid > h->max_txid)
		return -EINVAL;
	if (h->wal_offset < 0 || h->wal_size < 0)
		return -EINVAL;
	/* v0.3.14 rules: salts need an offset; offset and size are set together. */
	if ((h->wal_salt1 != 0 || h->wal_salt2 != 0) && h->wal_offset == 0)
		return -EINVAL;
	if ((h->wal_offset == 0) != (h->wal_size == 0))
		return -EINVAL;
	if (ltx_header_is_snapshot(h)) {
		if (h->pre_apply_checksum != 0)
			return -EINVAL;
	} else if (!(h->pre_apply_checksum & LTX_CHECKSUM_FLAG)) {
		return -EINVAL;
	}
	return 0;
}

void ltx_header_encode(const struct ltx_header *h, uint8_t out[LTX_HEADER_SIZE])
{
	memset(out, 0, LTX_HEADER_SIZE);
	memcpy(out, LTX_MAGIC, 4);
	put_be32(out + 4, h->flags);
	put_be32(out + 8, h->page_size);
	put_be32(out + 12, h->commit);
	put_be64(out + 16, h->min_txid);
	put_be64(out + 24, h->max_txid);
	put_be64(out + 32, (uint64_t)h->timestamp);
	put_be64(out + 40, h->pre_apply_checksum);
	put_be64(out + 48, (uint64_t)h->wal_offset);
	put_be64(out + 56, (uint64_t)h->wal_size);
	put_be32(out + 64, h->wal_salt1);
	put_be32(out + 68, h->wal_salt2);
	put_be64(out + 72, h->node_id);
	put_be64(out + 80, h->epoch); /* ltxfs: the lease epoch (0: none) */
				      /* 88..99 reserved, zero */
}

int ltx_header_decode(struct ltx_header *h, const uint8_t in[LTX_HEADER_SIZE])
{
	struct ltx_header t;
	int rc;

	if (!h || !in)
		return -EINVAL;
	if (memcmp(in, LTX_MAGIC, 4) != 0)
		return -EBADMSG;
	t.flags = get_be32(in + 4);
	t.page_size = get_be32(in + 8);
	t.commit = get_be32(in + 12);
	t.min_txid = get_be64(in + 16);
	t.max_txid = get_be64(in + 24);
	t.timestamp = (int64_t)get_be64(in + 32);
	t.pre_apply_checksum = get_be64(in + 40);
	t.wal_offset = (int64_t)get_be64(in + 48);
	t.wal_size = (int64_t)get_be64(in + 56);
	t.wal_salt1 = get_be32(in + 64);
	t.wal_salt2 = get_be32(in + 68);
	t.node_id = get_be64(in + 72);
	t.epoch = get_be64(in + 80);
	/* The reserved bytes are not checked (the file checksum covers them). */
	rc = ltx_header_validate(&t);
	if (rc < 0)
		return rc;
	*h = t;
	return 0;
}

void ltx_format_filename(char *buf, uint64_t min_txid, uint64_t max_txid)
{
	snprintf(buf, LTX_FILENAME_LEN + 1, "%016llx-%016llx.ltx", (unsigned long long)min_txid,
		 (unsigned long long)max_txid);
}

/* 16 lowercase hex digits, as FormatFilename writes them. */
int ltx_parse_hex16(const char *s, uint64_t *ret)
{
	uint64_t v = 0;

	for (int i = 0; i < 16; i++) {
		char c = s[i];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else
			return -EINVAL;
		v = v << 4 | d;
	}
	*ret = v;
	return 0;
}

int ltx_parse_filename(const char *name, uint64_t *min_txid, uint64_t *max_txid)
{
	uint64_t lo, hi;

	if (!name || strnlen(name, LTX_FILENAME_LEN + 1) != LTX_FILENAME_LEN)
		return -EINVAL;
	if (ltx_parse_hex16(name, &lo) < 0 || name[16] != '-' ||
	    ltx_parse_hex16(name + 17, &hi) < 0 || memcmp(name + 33, ".ltx", 4) != 0)
		return -EINVAL;
	if (min_txid)
		*min_txid = lo;
	if (max_txid)
		*max_txid = hi;
	return 0;
}

/* --- LZ4 helpers --------------------------------------------------------- */

/* liblz4 reports errors as codes with names; only allocation failure is not corruption. */
static int lz4_decode_error(size_t code)
{
	return strstr(LZ4F_getErrorName(code), "allocation_failed") ? -ENOMEM : -EBADMSG;
}

static void lz4_prefs(LZ4F_preferences_t *p)
{
	memset(p, 0, sizeof(*p));
	p->frameInfo.blockSizeID = LZ4F_max64KB;
	p->frameInfo.blockMode = LZ4F_blockIndependent;
	p->frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled;
	p->frameInfo.blockChecksumFlag = LZ4F_noBlockChecksum;
	p->frameInfo.frameType = LZ4F_frame;
	p->compressionLevel = 0; /* LZ4 fast, like pierrec's CompressionLevelOption(Fast) */
}

/* --- encoder ------------------------------------------------------------- */

struct ltx_encoder {
	struct ltx_header hdr;
	ltx_write_fn fn;
	void *ctx;
	uint64_t crc; /* running file CRC (without the flag bit) */
	uint32_t lock_pgno;
	uint32_t last_pgno; /* 0 before the first page */
	uint64_t next_snap; /* snapshot: the next page it must supply */
	int err;	    /* sticky error after a failed write */
	bool done;
	LZ4F_cctx *cctx; /* NULL when uncompressed */
	LZ4F_preferences_t prefs;
	uint8_t *out; /* staging buffer */
	size_t out_len;
	size_t out_cap;
};

/*
 * Per-thread reuse of an LZ4 compression context and its staging buffer:
 * creating them costs about 20 us, several times the cost of encoding the
 * one- or two-page file of a typical transaction. Freed at thread exit.
 */
struct enc_cache {
	LZ4F_cctx *cctx;
	uint8_t *out;
	size_t out_cap;
};

static pthread_key_t enc_cache_key;
static pthread_once_t enc_cache_once = PTHREAD_ONCE_INIT;

static void enc_cache_free(void *p)
{
	struct enc_cache *c = p;
	if (!c)
		return;
	LZ4F_freeCompressionContext(c->cctx);
	free(c->out);
	free(c);
}

static void enc_cache_init(void)
{
	pthread_key_create(&enc_cache_key, enc_cache_free);
}

static int enc_flush(struct ltx_encoder *e)
{
	int rc;

	if (e->out_len == 0)
		return 0;
	rc = e->fn(e->ctx, e->out, e->out_len);
	if (rc > 0)
		rc = -EIO; /* the callback contract is 0 or -errno */
	if (rc < 0)
		return rc;
	e->out_len = 0;
	return 0;
}

/* Append raw (not compressed) bytes to the output. */
static int enc_raw(struct ltx_encoder *e, const void *buf, size_t n)
{
	const uint8_t *p = buf;
	int rc;

	while (n > 0) {
		size_t k;
		if (e->out_len == e->out_cap) {
			rc = enc_flush(e);
			if (rc < 0)
				return rc;
		}
		k = e->out_cap - e->out_len;
		if (k > n)
			k = n;
		memcpy(e->out + e->out_len, p, k);
		e->out_len += k;
		p += k;
		n -= k;
	}
	return 0;
}

/* Make room for the worst-case frame output of n more input bytes (0: frame end). */
static int enc_lz4_room(struct ltx_encoder *e, size_t n)
{
	if (e->out_cap - e->out_len < LZ4F_compressBound(n, &e->prefs))
		return enc_flush(e);
	return 0;
}

/* Append page-block bytes: hashed, and compressed when the header says so. */
/* Encode bytes the caller has already folded into e->crc. */
static int enc_data(struct ltx_encoder *e, const void *buf, size_t n)
{
	size_t r;
	int rc;

	if (!e->cctx)
		return enc_raw(e, buf, n);
	rc = enc_lz4_room(e, n);
	if (rc < 0)
		return rc;
	r = LZ4F_compressUpdate(e->cctx, e->out + e->out_len, e->out_cap - e->out_len, buf, n,
				NULL);
	if (LZ4F_isError(r))
		return -EIO;
	e->out_len += r;
	return 0;
}

static int enc_block(struct ltx_encoder *e, const void *buf, size_t n)
{
	e->crc = crc64_iso(e->crc, buf, n);
	return enc_data(e, buf, n);
}

int ltx_encoder_new(struct ltx_encoder **ret, const struct ltx_header *h, ltx_write_fn fn,
		    void *ctx)
{
	struct ltx_encoder *e = NULL;
	uint8_t hb[LTX_HEADER_SIZE];
	int rc;

	if (!ret || !h || !fn)
		return -EINVAL;
	rc = ltx_header_validate(h);
	if (rc < 0)
		return rc;

	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->hdr = *h;
	e->fn = fn;
	e->ctx = ctx;
	e->lock_pgno = ltx_lock_pgno(h->page_size);
	e->next_snap = 1;
	e->out_cap = LTX_IO_CHUNK;
	if (h->flags & LTX_FLAG_COMPRESS_LZ4) {
		size_t bound;
		lz4_prefs(&e->prefs);
		bound = LZ4F_compressBound(LTX_MAX_PAGE, &e->prefs) + LZ4F_HEADER_SIZE_MAX +
			LTX_HEADER_SIZE;
		if (bound > e->out_cap)
			e->out_cap = bound;
		pthread_once(&enc_cache_once, enc_cache_init);
		struct enc_cache *c = pthread_getspecific(enc_cache_key);
		if (c && c->out_cap == e->out_cap) {
			pthread_setspecific(enc_cache_key, NULL);
			e->cctx = c->cctx;
			e->out = c->out;
			free(c);
		} else if (LZ4F_isError(LZ4F_createCompressionContext(&e->cctx, LZ4F_VERSION))) {
			e->cctx = NULL;
			rc = -ENOMEM;
			goto out;
		}
	}
	if (!e->out)
		e->out = malloc(e->out_cap);
	if (!e->out) {
		rc = -ENOMEM;
		goto out;
	}

	ltx_header_encode(h, hb);
	e->crc = crc64_iso(0, hb, sizeof(hb));
	rc = enc_raw(e, hb, sizeof(hb));
	if (rc < 0)
		goto out;
	if (e->cctx) {
		size_t r = LZ4F_compressBegin(e->cctx, e->out + e->out_len, e->out_cap - e->out_len,
					      &e->prefs);
		if (LZ4F_isError(r)) {
			rc = -ENOMEM; /* with a big enough buffer, only allocation can fail */
			goto out;
		}
		e->out_len += r;
	}
	rc = enc_flush(e);
	if (rc < 0)
		goto out;

	*ret = e;
	e = NULL;
out:
	ltx_encoder_free(e);
	return rc;
}

int ltx_encoder_add_page(struct ltx_encoder *e, uint32_t pgno, const void *page)
{
	if (!e || !page)
		return -EINVAL;
	return ltx_encoder_add_page_crc(e, pgno, page, ltx_page_crc(pgno, page, e->hdr.page_size));
}

int ltx_encoder_add_page_crc(struct ltx_encoder *e, uint32_t pgno, const void *page, uint64_t crc)
{
	uint8_t be[LTX_PGNO_SIZE];
	int rc;

	if (!e || !page)
		return -EINVAL;
	if (e->err)
		return e->err;
	if (e->done)
		return -EINVAL;
	if (pgno == 0 || pgno > e->hdr.commit || pgno == e->lock_pgno || pgno <= e->last_pgno)
		return -EINVAL;
	if (ltx_header_is_snapshot(&e->hdr) && pgno != e->next_snap)
		return -EINVAL;

	put_be32(be, pgno);
	rc = enc_data(e, be, sizeof(be));
	if (rc == 0)
		rc = enc_data(e, page, e->hdr.page_size);
	e->crc = crc64_combine(e->crc, crc, sizeof(be) + e->hdr.page_size);
	if (rc < 0) {
		e->err = rc;
		return rc;
	}
	e->last_pgno = pgno;
	e->next_snap = (uint64_t)pgno + 1;
	if (e->next_snap == e->lock_pgno)
		e->next_snap++;
	return 0;
}

int ltx_encoder_finish(struct ltx_encoder *e, uint64_t post_apply_checksum, struct ltx_trailer *ret)
{
	static const uint8_t zero[LTX_PGNO_SIZE];
	uint8_t tb[LTX_TRAILER_SIZE];
	struct ltx_trailer t;
	int rc;

	if (!e)
		return -EINVAL;
	if (e->err)
		return e->err;
	if (e->done)
		return -EINVAL;
	if (ltx_header_is_snapshot(&e->hdr) && e->next_snap <= e->hdr.commit)
		return -EINVAL; /* snapshot is missing pages */
	if (!(post_apply_checksum & LTX_CHECKSUM_FLAG))
		return -EINVAL;
	if (e->hdr.commit == 0 && post_apply_checksum != LTX_CHECKSUM_FLAG)
		return -EINVAL; /* a deletion file's database is empty */

	rc = enc_block(e, zero, sizeof(zero));
	if (rc < 0)
		goto out;
	if (e->cctx) {
		size_t r;
		rc = enc_lz4_room(e, 0);
		if (rc < 0)
			goto out;
		r = LZ4F_compressEnd(e->cctx, e->out + e->out_len, e->out_cap - e->out_len, NULL);
		if (LZ4F_isError(r)) {
			rc = -EIO;
			goto out;
		}
		e->out_len += r;
	}
	put_be64(tb, post_apply_checksum);
	e->crc = crc64_iso(e->crc, tb, 8);
	t.post_apply_checksum = post_apply_checksum;
	t.file_checksum = LTX_CHECKSUM_FLAG | e->crc;
	put_be64(tb + 8, t.file_checksum);
	rc = enc_raw(e, tb, sizeof(tb));
	if (rc < 0)
		goto out;
	rc = enc_flush(e);
	if (rc < 0)
		goto out;
	e->done = true;
	if (ret)
		*ret = t;
out:
	if (rc < 0)
		e->err = rc;
	return rc;
}

void ltx_encoder_free(struct ltx_encoder *e)
{
	if (!e)
		return;
	if (e->cctx) {
		/* keep one context per thread for the next file */
		struct enc_cache *c = NULL;
		pthread_once(&enc_cache_once, enc_cache_init);
		if (e->out && !pthread_getspecific(enc_cache_key))
			c = malloc(sizeof(*c));
		if (c) {
			c->cctx = e->cctx;
			c->out = e->out;
			c->out_cap = e->out_cap;
			if (pthread_setspecific(enc_cache_key, c) == 0) {
				free(e);
				return;
			}
			free(c);
		}
		LZ4F_freeCompressionContext(e->cctx);
	}
	free(e->out);
	free(e);
}

/* --- decoder ------------------------------------------------------------- */

enum dec_state { DEC_PAGES, DEC_TRAILER, DEC_DONE };

struct ltx_decoder {
	struct ltx_header hdr;
	ltx_read_fn fn;
	void *ctx;
	enum dec_state state;
	int err;	  /* sticky error */
	uint64_t crc;	  /* running file CRC (without the flag bit) */
	uint64_t page_ck; /* page checksum of the page last decoded */
	uint64_t snap;	  /* snapshot: XOR of the page checksums seen */
	uint32_t lock_pgno;
	uint32_t last_pgno;
	uint64_t next_snap; /* snapshot: the next page it must hold */
	LZ4F_dctx *dctx;    /* NULL when uncompressed */
	bool frame_started;
	bool frame_done;
	uint8_t *in; /* input buffer, LTX_IO_CHUNK bytes: [in_pos, in_len) unread */
	size_t in_pos;
	size_t in_len;
	uint8_t *page; /* page_size bytes */
	struct ltx_trailer trailer;
};

/*
 * Move unread input to the front and read once into the free space.
 * Returns bytes read (0 at EOF) or -errno.
 */
static ssize_t dec_read_more(struct ltx_decoder *d)
{
	size_t avail = d->in_len - d->in_pos;
	ssize_t r;

	if (d->in_pos > 0) {
		memmove(d->in, d->in + d->in_pos, avail);
		d->in_pos = 0;
		d->in_len = avail;
	}
	if (d->in_len == LTX_IO_CHUNK)
		return -EIO; /* caller bug: buffer full */
	r = d->fn(d->ctx, d->in + d->in_len, LTX_IO_CHUNK - d->in_len);
	if (r < 0)
		return r;
	if ((size_t)r > LTX_IO_CHUNK - d->in_len)
		return -EIO; /* the callback claims more than it was asked for */
	d->in_len += (size_t)r;
	return r;
}

/* Read exactly n raw bytes; -EPROTO at EOF. */
static int dec_raw(struct ltx_decoder *d, void *buf, size_t n)
{
	uint8_t *p = buf;

	while (n > 0) {
		size_t k;
		if (d->in_pos == d->in_len) {
			ssize_t r = dec_read_more(d);
			if (r < 0)
				return (int)r;
			if (r == 0)
				return -EPROTO;
		}
		k = d->in_len - d->in_pos;
		if (k > n)
			k = n;
		memcpy(p, d->in + d->in_pos, k);
		d->in_pos += k;
		p += k;
		n -= k;
	}
	return 0;
}

/* Decompress exactly n bytes of the page block from the single LZ4 frame. */
static int dec_lz4(struct ltx_decoder *d, void *buf, size_t n)
{
	uint8_t *p = buf;
	size_t got = 0;

	if (!d->frame_started) {
		/* The frame must be a real LZ4 frame: no skippable or legacy frames. */
		while (d->in_len - d->in_pos < sizeof(lz4_frame_magic)) {
			ssize_t r = dec_read_more(d);
			if (r < 0)
				return (int)r;
			if (r == 0)
				return -EPROTO;
		}
		if (memcmp(d->in + d->in_pos, lz4_frame_magic, sizeof(lz4_frame_magic)) != 0)
			return -EBADMSG;
		d->frame_started = true;
	}
	while (got < n) {
		size_t dsz, ssz, hint;
		if (d->frame_done)
			return -EBADMSG; /* the frame ended inside the page block */
		if (d->in_pos == d->in_len) {
			ssize_t r = dec_read_more(d);
			if (r < 0)
				return (int)r;
			if (r == 0)
				return -EPROTO;
		}
		dsz = n - got;
		ssz = d->in_len - d->in_pos;
		hint = LZ4F_decompress(d->dctx, p + got, &dsz, d->in + d->in_pos, &ssz, NULL);
		if (LZ4F_isError(hint))
			return lz4_decode_error(hint);
		if (dsz == 0 && ssz == 0 && hint != 0)
			return -EBADMSG; /* no progress: never happens with well-formed input */
		d->in_pos += ssz;
		got += dsz;
		if (hint == 0)
			d->frame_done = true;
	}
	return 0;
}

/* After the terminator: decode the rest of the frame, which must carry no data. */
static int dec_lz4_drain(struct ltx_decoder *d)
{
	while (!d->frame_done) {
		size_t dsz, ssz, hint;
		if (d->in_pos == d->in_len) {
			ssize_t r = dec_read_more(d);
			if (r < 0)
				return (int)r;
			if (r == 0)
				return -EPROTO;
		}
		dsz = d->hdr.page_size;
		ssz = d->in_len - d->in_pos;
		hint = LZ4F_decompress(d->dctx, d->page, &dsz, d->in + d->in_pos, &ssz, NULL);
		if (LZ4F_isError(hint))
			return lz4_decode_error(hint);
		if (dsz != 0)
			return -EBADMSG; /* data after the terminator */
		if (ssz == 0 && hint != 0)
			return -EBADMSG;
		d->in_pos += ssz;
		if (hint == 0)
			d->frame_done = true;
	}
	return 0;
}

static int dec_block(struct ltx_decoder *d, void *buf, size_t n)
{
	return d->dctx ? dec_lz4(d, buf, n) : dec_raw(d, buf, n);
}

/* Read the next page into d->page. 1 with *ret_pgno set, 0 at the terminator, or -errno. */
static int dec_page(struct ltx_decoder *d, uint32_t *ret_pgno)
{
	const struct ltx_header *h = &d->hdr;
	bool snapshot = ltx_header_is_snapshot(h);
	uint8_t be[LTX_PGNO_SIZE];
	uint32_t pgno;
	int rc;

	rc = dec_block(d, be, sizeof(be));
	if (rc < 0)
		return rc;
	pgno = get_be32(be);
	if (pgno == 0) {
		d->crc = crc64_iso(d->crc, be, sizeof(be));
		if (d->dctx) {
			rc = dec_lz4_drain(d);
			if (rc < 0)
				return rc;
		}
		if (snapshot && d->next_snap <= h->commit)
			return -EBADMSG; /* snapshot is missing pages */
		d->state = DEC_TRAILER;
		return 0;
	}
	if (pgno > h->commit || pgno == d->lock_pgno || pgno <= d->last_pgno)
		return -EBADMSG;
	if (snapshot && pgno != d->next_snap)
		return -EBADMSG;

	rc = dec_block(d, d->page, h->page_size);
	if (rc < 0)
		return rc;
	/* one pass gives the page checksum and, combined, the file CRC */
	uint64_t crc = crc64_iso(crc64_iso(0, be, sizeof(be)), d->page, h->page_size);
	d->crc = crc64_combine(d->crc, crc, sizeof(be) + h->page_size);
	d->page_ck = LTX_CHECKSUM_FLAG | crc;
	if (snapshot)
		d->snap ^= d->page_ck;
	d->last_pgno = pgno;
	d->next_snap = (uint64_t)pgno + 1;
	if (d->next_snap == d->lock_pgno)
		d->next_snap++;
	*ret_pgno = pgno;
	return 1;
}

int ltx_decoder_new(struct ltx_decoder **ret, ltx_read_fn fn, void *ctx)
{
	struct ltx_decoder *d = NULL;
	uint8_t hb[LTX_HEADER_SIZE];
	int rc;

	if (!ret || !fn)
		return -EINVAL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->fn = fn;
	d->ctx = ctx;
	d->next_snap = 1;
	d->in = malloc(LTX_IO_CHUNK);
	if (!d->in) {
		rc = -ENOMEM;
		goto out;
	}

	rc = dec_raw(d, hb, sizeof(hb));
	if (rc < 0)
		goto out;
	rc = ltx_header_decode(&d->hdr, hb);
	if (rc < 0)
		goto out;
	d->crc = crc64_iso(0, hb, sizeof(hb));
	d->lock_pgno = ltx_lock_pgno(d->hdr.page_size);

	d->page = malloc(d->hdr.page_size); /* validated: at most 64 KiB */
	if (!d->page) {
		rc = -ENOMEM;
		goto out;
	}
	if (d->hdr.flags & LTX_FLAG_COMPRESS_LZ4) {
		if (LZ4F_isError(LZ4F_createDecompressionContext(&d->dctx, LZ4F_VERSION))) {
			d->dctx = NULL;
			rc = -ENOMEM;
			goto out;
		}
	}
	d->state = DEC_PAGES;
	*ret = d;
	d = NULL;
out:
	ltx_decoder_free(d);
	return rc;
}

const struct ltx_header *ltx_decoder_header(const struct ltx_decoder *d)
{
	return d ? &d->hdr : NULL;
}

uint64_t ltx_decoder_page_checksum(const struct ltx_decoder *d)
{
	return d->page_ck;
}

int ltx_decoder_next_page(struct ltx_decoder *d, uint32_t *pgno, void *page)
{
	uint32_t p;
	int rc;

	if (!d || !pgno || !page)
		return -EINVAL;
	if (d->err)
		return d->err;
	if (d->state != DEC_PAGES)
		return 0;
	rc = dec_page(d, &p);
	if (rc < 0) {
		d->err = rc;
		return rc;
	}
	if (rc == 1) {
		memcpy(page, d->page, d->hdr.page_size);
		*pgno = p;
	}
	return rc;
}

/* The trailer must be the last thing in the stream. */
static int dec_expect_eof(struct ltx_decoder *d)
{
	ssize_t r;

	if (d->in_pos != d->in_len)
		return -EBADMSG;
	r = dec_read_more(d);
	if (r < 0)
		return (int)r;
	return r == 0 ? 0 : -EBADMSG;
}

int ltx_decoder_finish(struct ltx_decoder *d, struct ltx_trailer *ret)
{
	uint8_t tb[LTX_TRAILER_SIZE];
	struct ltx_trailer t;
	uint32_t pgno;
	int rc = 0;

	if (!d)
		return -EINVAL;
	if (d->err)
		return d->err;
	if (d->state == DEC_DONE)
		goto done;

	/* Pages the caller did not read are still decoded and checked. */
	while (d->state == DEC_PAGES) {
		rc = dec_page(d, &pgno);
		if (rc < 0)
			goto out;
	}
	rc = dec_raw(d, tb, sizeof(tb));
	if (rc < 0)
		goto out;
	rc = dec_expect_eof(d);
	if (rc < 0)
		goto out;

	t.post_apply_checksum = get_be64(tb);
	t.file_checksum = get_be64(tb + 8);
	d->crc = crc64_iso(d->crc, tb, 8);
	if ((LTX_CHECKSUM_FLAG | d->crc) != t.file_checksum ||
	    !(t.post_apply_checksum & LTX_CHECKSUM_FLAG) ||
	    (d->hdr.commit == 0 && t.post_apply_checksum != LTX_CHECKSUM_FLAG) ||
	    (ltx_header_is_snapshot(&d->hdr) &&
	     (LTX_CHECKSUM_FLAG | d->snap) != t.post_apply_checksum)) {
		rc = -EBADMSG;
		goto out;
	}
	d->trailer = t;
	d->state = DEC_DONE;
done:
	if (ret)
		*ret = d->trailer;
	rc = 0;
out:
	if (rc < 0)
		d->err = rc;
	return rc;
}

void ltx_decoder_free(struct ltx_decoder *d)
{
	if (!d)
		return;
	if (d->dctx)
		LZ4F_freeDecompressionContext(d->dctx);
	free(d->page);
	free(d->in);
	free(d);
}

/* --- fd helpers ---------------------------------------------------------- */

int ltx_fd_write(void *ctx, const void *buf, size_t n)
{
	return fs_write_full(*(const int *)ctx, buf, n);
}

ssize_t ltx_fd_read(void *ctx, void *buf, size_t n)
{
	return fs_read_full(*(const int *)ctx, buf, n);
}

ssize_t ltx_mem_read(void *ctx, void *buf, size_t n)
{
	struct ltx_mem *m = ctx;
	size_t k = m->n - m->off < n ? m->n - m->off : n;
	memcpy(buf, (const uint8_t *)m->p + m->off, k);
	m->off += k;
	return (ssize_t)k;
}

int ltx_verify_fd(int fd, struct ltx_header *hdr, struct ltx_trailer *tr)
{
	struct ltx_decoder *d = NULL;
	struct ltx_trailer t;
	int rc;

	rc = ltx_decoder_new(&d, ltx_fd_read, &fd);
	if (rc < 0)
		goto out;
	rc = ltx_decoder_finish(d, &t);
	if (rc < 0)
		goto out;
	if (hdr)
		*hdr = *ltx_decoder_header(d);
	if (tr)
		*tr = t;
out:
	ltx_decoder_free(d);
	return rc;
}
