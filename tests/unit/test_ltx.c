/*
 * test_ltx.c - the LTX v1 encoder and decoder: the vectors of ltx.md 10,
 * round trips, and a decoder that rejects every malformed input.
 *
 * Set LTXFS_FUZZ_CORPUS=<dir> to also write the fuzz seed files there.
 */
#include "unit.h"

#include "ltxfs/crc.h"
#include "ltxfs/ltx.h"

#include <errno.h>
#include <lz4frame.h>
#include <stdbool.h>
#include <unistd.h>

#define F LTX_CHECKSUM_FLAG

/* --- sources (struct buf, the sink, is in unit.h) ------------------------- */

struct source {
	const uint8_t *p;
	size_t len, pos;
	size_t chunk;	/* at most this many bytes per call (0: no limit) */
	size_t max_req; /* largest n asked for */
	size_t calls;
	long fail_at; /* return fail_rc once pos reaches this (-1: never) */
	int fail_rc;
};

static void source_init(struct source *s, const uint8_t *p, size_t len, size_t chunk)
{
	memset(s, 0, sizeof(*s));
	s->p = p;
	s->len = len;
	s->chunk = chunk;
	s->fail_at = -1;
}

static ssize_t source_read(void *ctx, void *p, size_t n)
{
	struct source *s = ctx;
	size_t k = s->len - s->pos;

	s->calls++;
	if (n > s->max_req)
		s->max_req = n;
	if (s->fail_at >= 0 && s->pos >= (size_t)s->fail_at)
		return s->fail_rc;
	if (k > n)
		k = n;
	if (s->chunk && k > s->chunk)
		k = s->chunk;
	memcpy(p, s->p + s->pos, k);
	s->pos += k;
	return (ssize_t)k;
}

static size_t unhex(const char *hex, uint8_t *out)
{
	size_t n = 0;

	for (const char *c = hex; *c; c++) {
		if (*c == ' ' || *c == '\n')
			continue;
		unsigned v;
		sscanf(c, "%2x", &v);
		out[n++] = (uint8_t)v;
		c++;
	}
	return n;
}

/* --- helpers --------------------------------------------------------------- */

static struct ltx_header mk_hdr(uint32_t flags, uint32_t ps, uint32_t commit, uint64_t min,
				uint64_t max, int64_t ts, uint64_t pre)
{
	struct ltx_header h;

	memset(&h, 0, sizeof(h));
	h.flags = flags;
	h.page_size = ps;
	h.commit = commit;
	h.min_txid = min;
	h.max_txid = max;
	h.timestamp = ts;
	h.pre_apply_checksum = pre;
	return h;
}

static bool header_eq(const struct ltx_header *a, const struct ltx_header *b)
{
	return a->flags == b->flags && a->page_size == b->page_size && a->commit == b->commit &&
	       a->min_txid == b->min_txid && a->max_txid == b->max_txid &&
	       a->timestamp == b->timestamp && a->pre_apply_checksum == b->pre_apply_checksum &&
	       a->wal_offset == b->wal_offset && a->wal_size == b->wal_size &&
	       a->wal_salt1 == b->wal_salt1 && a->wal_salt2 == b->wal_salt2 &&
	       a->node_id == b->node_id && a->epoch == b->epoch;
}

struct pg {
	uint32_t pgno;
	uint8_t fill;
};

/* Encode pages of one repeated byte each. Returns the encoder's first error. */
static int encode_fill(const struct ltx_header *h, const struct pg *pages, size_t n, uint64_t post,
		       struct buf *out, struct ltx_trailer *tr)
{
	struct ltx_encoder *e = NULL;
	uint8_t *page = malloc(h->page_size);
	int rc;

	rc = ltx_encoder_new(&e, h, buf_sink_write, out);
	for (size_t i = 0; rc == 0 && i < n; i++) {
		memset(page, pages[i].fill, h->page_size);
		rc = ltx_encoder_add_page(e, pages[i].pgno, page);
	}
	if (rc == 0)
		rc = ltx_encoder_finish(e, post, tr);
	ltx_encoder_free(e);
	free(page);
	return rc;
}

struct decoded {
	struct ltx_header h;
	struct ltx_trailer t;
	uint32_t n;
	uint32_t pgno[256];
	uint64_t sum[256]; /* ltx_page_checksum of each page */
	uint8_t first[256];
};

/* Decode a whole file from memory, reading at most chunk bytes per callback. */
static int decode_buf(const uint8_t *p, size_t len, size_t chunk, struct decoded *out)
{
	struct source src;
	struct ltx_decoder *d = NULL;
	struct decoded tmp;
	uint8_t *page = NULL;
	uint32_t pgno;
	int rc;

	memset(&tmp, 0, sizeof(tmp));
	source_init(&src, p, len, chunk);
	rc = ltx_decoder_new(&d, source_read, &src);
	if (rc < 0)
		goto out;
	tmp.h = *ltx_decoder_header(d);
	page = malloc(tmp.h.page_size);
	while ((rc = ltx_decoder_next_page(d, &pgno, page)) == 1) {
		if (tmp.n < 256) {
			tmp.pgno[tmp.n] = pgno;
			tmp.sum[tmp.n] = ltx_page_checksum(pgno, page, tmp.h.page_size);
			tmp.first[tmp.n] = page[0];
		}
		tmp.n++;
	}
	if (rc < 0)
		goto out;
	rc = ltx_decoder_finish(d, &tmp.t);
	if (rc == 0 && src.max_req > 64 * 1024) {
		fprintf(stderr, "decoder asked for %zu bytes at once\n", src.max_req);
		rc = -E2BIG;
	}
	if (rc == 0 && out)
		*out = tmp;
out:
	free(page);
	ltx_decoder_free(d);
	return rc;
}

static uint64_t fill_page_sum(uint32_t pgno, uint8_t fill, uint32_t ps)
{
	uint8_t *page = malloc(ps);
	uint64_t c;

	memset(page, fill, ps);
	c = ltx_page_checksum(pgno, page, ps);
	free(page);
	return c;
}

enum frame_kind {
	RAW,	   /* uncompressed page block */
	LZ4_STD,   /* LiteFS shape: 64 KiB independent blocks, content checksum */
	LZ4_PLAIN, /* no content checksum */
	LZ4_ODD,   /* 4 MiB linked blocks, block checksums, content size */
};

static void lz4_frame(struct buf *out, const uint8_t *src, size_t n, enum frame_kind kind)
{
	LZ4F_preferences_t prefs;
	size_t cap, r;
	uint8_t *dst;

	memset(&prefs, 0, sizeof(prefs));
	prefs.frameInfo.blockSizeID = LZ4F_max64KB;
	prefs.frameInfo.blockMode = LZ4F_blockIndependent;
	prefs.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled;
	if (kind == LZ4_PLAIN)
		prefs.frameInfo.contentChecksumFlag = LZ4F_noContentChecksum;
	if (kind == LZ4_ODD) {
		prefs.frameInfo.blockSizeID = LZ4F_max4MB;
		prefs.frameInfo.blockMode = LZ4F_blockLinked;
		prefs.frameInfo.blockChecksumFlag = LZ4F_blockChecksumEnabled;
		prefs.frameInfo.contentSize = n;
	}
	cap = LZ4F_compressFrameBound(n, &prefs);
	dst = malloc(cap);
	r = LZ4F_compressFrame(dst, cap, src, n, &prefs);
	if (LZ4F_isError(r))
		abort();
	buf_put(out, dst, r);
	free(dst);
}

/*
 * Build a file around an arbitrary logical page block (which need not obey
 * any rule), with a correct file checksum, so that the decoder must reject it
 * for the rule itself and not for a checksum mismatch.
 */
static void craft(struct buf *out, const struct ltx_header *h, const struct buf *block,
		  uint64_t post, enum frame_kind kind)
{
	uint8_t hb[LTX_HEADER_SIZE], pb[8];
	uint64_t crc;

	ltx_header_encode(h, hb);
	crc = crc64_iso(0, hb, sizeof(hb));
	crc = crc64_iso(crc, block->p, block->len);
	for (int i = 0; i < 8; i++)
		pb[i] = (uint8_t)(post >> (56 - 8 * i));
	crc = crc64_iso(crc, pb, 8);
	buf_put(out, hb, sizeof(hb));
	if (kind == RAW)
		buf_put(out, block->p, block->len);
	else
		lz4_frame(out, block->p, block->len, kind);
	buf_u64(out, post);
	buf_u64(out, F | crc);
}

static void blk_page(struct buf *b, uint32_t pgno, uint8_t fill, uint32_t ps)
{
	buf_u32(b, pgno);
	buf_fill(b, fill, ps);
}

/* --- ltx.md 10.2 vectors --------------------------------------------------- */

/* v1 snapshot, flag 0x1, 168 bytes, produced by ltx v0.3.14 + pierrec/lz4 v4.1.17. */
static const char v1_lz4_hex[] = "4c54583100000001000002000000000200000000000000010000000000000001"
				 "00000000000003e8000000000000000000000000000000000000000000000000"
				 "0000000000000000000000000000000000000000000000000000000000000000"
				 "0000000004224d186440a7210000004f000000010100ffee4f000000020100ff"
				 "e4e0020202020202020202020000000000000000c5d6954bad2dffe333333333"
				 "b595f85138c5a97e";

static const struct pg snap_pages[] = {{1, 0x01}, {2, 0x02}};

static void test_v1_compressed_vector_decode(void)
{
	uint8_t file[256];
	size_t n = unhex(v1_lz4_hex, file);
	struct decoded dd;

	CHECK_RC(n, 168);
	for (size_t chunk = 1; chunk <= 200; chunk = chunk * 3 + 1) {
		CHECK_RC(decode_buf(file, n, chunk, &dd), 0);
		CHECK_RC(dd.h.flags, LTX_FLAG_COMPRESS_LZ4);
		CHECK_RC(dd.h.page_size, 512);
		CHECK_RC(dd.h.commit, 2);
		CHECK_EQ_U64(dd.h.min_txid, 1);
		CHECK_EQ_U64(dd.h.max_txid, 1);
		CHECK_EQ_U64(dd.h.timestamp, 1000);
		CHECK_EQ_U64(dd.h.pre_apply_checksum, 0);
		CHECK_EQ_U64(dd.h.wal_offset, 0);
		CHECK_EQ_U64(dd.h.node_id, 0);
		CHECK_RC(dd.n, 2);
		CHECK_RC(dd.pgno[0], 1);
		CHECK_RC(dd.pgno[1], 2);
		CHECK_EQ_U64(dd.sum[0], fill_page_sum(1, 0x01, 512));
		CHECK_EQ_U64(dd.sum[1], fill_page_sum(2, 0x02, 512));
		CHECK_EQ_U64(dd.t.post_apply_checksum, 0xad2dffe333333333);
		CHECK_EQ_U64(dd.t.file_checksum, 0xb595f85138c5a97e);
	}
}

static void test_v1_compressed_vector_encode(void)
{
	uint8_t ref[256];
	size_t n = unhex(v1_lz4_hex, ref);
	struct ltx_header h = mk_hdr(LTX_FLAG_COMPRESS_LZ4, 512, 2, 1, 1, 1000, 0);
	struct ltx_trailer t;
	struct decoded dd;
	struct buf out;

	buf_init(&out);
	CHECK_RC(encode_fill(&h, snap_pages, 2, 0xad2dffe333333333, &out, &t), 0);
	/* v1's file checksum covers the logical content: compressor-independent. */
	CHECK_EQ_U64(t.file_checksum, 0xb595f85138c5a97e);
	CHECK_EQ_U64(t.post_apply_checksum, 0xad2dffe333333333);
	/* Same header and the same LZ4 frame header (04224d18 64 40 a7) as pierrec. */
	CHECK(out.len > 107 && memcmp(out.p, ref, 107) == 0);
	CHECK(memcmp(out.p + out.len - 16, ref + n - 16, 16) == 0);
	fprintf(stderr, "liblz4 file: %zu bytes, %s the pierrec file\n", out.len,
		out.len == n && memcmp(out.p, ref, n) == 0 ? "identical to" : "differs from");
	CHECK_RC(decode_buf(out.p, out.len, 0, &dd), 0);
	CHECK_EQ_U64(dd.t.file_checksum, 0xb595f85138c5a97e);
	CHECK_RC(dd.n, 2);
	buf_free(&out);
}

static void test_v1_uncompressed_vector(void)
{
	uint8_t ref[256];
	struct ltx_header h = mk_hdr(0, 512, 2, 1, 1, 1000, 0);
	struct ltx_trailer t;
	struct decoded dd;
	struct buf out;

	unhex(v1_lz4_hex, ref);
	ref[7] = 0; /* the header of the uncompressed file differs only in the flag */
	buf_init(&out);
	CHECK_RC(encode_fill(&h, snap_pages, 2, 0xad2dffe333333333, &out, &t), 0);
	CHECK_RC(out.len, 1152);
	CHECK_EQ_U64(t.file_checksum, 0xc08e61f253746fbf);
	CHECK(memcmp(out.p, ref, LTX_HEADER_SIZE) == 0);
	/* Layout: pgno 1, 512 x 01, pgno 2, 512 x 02, zero terminator, trailer. */
	CHECK(out.p[100] == 0 && out.p[103] == 1 && out.p[104] == 1 && out.p[615] == 1);
	CHECK(out.p[619] == 2 && out.p[620] == 2 && out.p[1131] == 2);
	CHECK(out.p[1132] == 0 && out.p[1135] == 0 && out.p[1136] == 0xad);
	CHECK_RC(decode_buf(out.p, out.len, 7, &dd), 0);
	CHECK_EQ_U64(dd.t.file_checksum, 0xc08e61f253746fbf);
	CHECK_EQ_U64(dd.t.post_apply_checksum, 0xad2dffe333333333);
	buf_free(&out);
}

/* litefs:backup_client_test.go: a compacted v1 snapshot, flag 0x1, asserted FileChecksum. */
static void test_backup_client_snapshot_vector(void)
{
	struct ltx_header h = mk_hdr(LTX_FLAG_COMPRESS_LZ4, 512, 2, 1, 4, 0, 0);
	const struct pg pages[] = {{1, 0x03}, {2, 0x02}};
	struct ltx_trailer t;
	struct buf out;

	buf_init(&out);
	CHECK_RC(encode_fill(&h, pages, 2, 0x8b87423eeeeeeeee, &out, &t), 0);
	CHECK_EQ_U64(t.file_checksum, 0xb8e6a652b0ec8453);
	CHECK_RC(decode_buf(out.p, out.len, 0, NULL), 0);
	buf_free(&out);
}

/*
 * ltx@v0.3.14 compactor_test.go asserts these FileChecksums of its (v1,
 * uncompressed) outputs; the inputs are rebuilt here from that test.
 */
static void test_v0314_compactor_vectors(void)
{
	struct ltx_trailer t;
	struct buf out;

	/* NonSnapshotPageDataOnly */
	struct ltx_header h1 = mk_hdr(0, 1024, 5, 2, 9, 3000, F | 2);
	const struct pg p1[] = {{1, 0x91}, {2, 0xa2}, {3, 0xa3}, {5, 0xa5}};
	buf_init(&out);
	CHECK_RC(encode_fill(&h1, p1, 4, F | 9, &out, &t), 0);
	CHECK_EQ_U64(t.file_checksum, 0xead633959f3c67a8);
	CHECK_RC(decode_buf(out.p, out.len, 0, NULL), 0);
	buf_free(&out);

	/* Shrinking */
	struct ltx_header h2 = mk_hdr(0, 1024, 2, 2, 5, 2000, F | 2);
	const struct pg p2[] = {{1, 0x91}};
	buf_init(&out);
	CHECK_RC(encode_fill(&h2, p2, 1, F | 5, &out, &t), 0);
	CHECK_EQ_U64(t.file_checksum, 0xf688132c3904f118);
	CHECK_RC(decode_buf(out.p, out.len, 0, NULL), 0);
	buf_free(&out);

	/*
	 * SnapshotPageDataOnly: the output keeps the last input's post-apply
	 * checksum, 0x8a249272ad9f7dea, the checksum of the *first* input's pages
	 * {81,82,83}, while the output holds {91,82,93}. Our decoder checks a
	 * snapshot's post-apply checksum (Go's v0.3.14 decoder does not), and the
	 * file still passes: pages 1 and 3 changed by the same XOR delta (0x10
	 * repeated), and with a linear checksum equal deltas cancel (ltx.md 12.2).
	 */
	struct ltx_header h3 = mk_hdr(0, 1024, 3, 1, 2, 2000, 0);
	const struct pg p3[] = {{1, 0x91}, {2, 0x82}, {3, 0x93}};
	buf_init(&out);
	CHECK_RC(encode_fill(&h3, p3, 3, 0x8a249272ad9f7dea, &out, &t), 0);
	CHECK_EQ_U64(t.file_checksum, 0xcaf341fe1e6cddfb);
	CHECK_RC(decode_buf(out.p, out.len, 0, NULL), 0);
	CHECK_EQ_U64(F | (fill_page_sum(1, 0x91, 1024) ^ fill_page_sum(2, 0x82, 1024) ^
			  fill_page_sum(3, 0x93, 1024)),
		     0x8a249272ad9f7dea);
	buf_free(&out);
}

/*
 * The shape of the real LiteFS file of ltx.md 10.1 (we lack its bytes): a
 * 10-page, 4096-byte database, TXID 13, pages {1,7,8} changed. The file must
 * be 12420 bytes, and applying it must move the database checksum from Pre to
 * Post.
 */
static void test_litefs_shaped_file(void)
{
	const uint32_t ps = 4096;
	uint8_t *db = malloc(10 * ps), *page = malloc(ps);
	uint64_t pre = 0, post = 0;
	struct ltx_encoder *e = NULL;
	struct ltx_decoder *d = NULL;
	struct ltx_trailer t;
	struct source src;
	struct buf out;
	uint32_t pgno;

	for (uint32_t i = 0; i < 10 * ps; i++)
		db[i] = (uint8_t)(i * 7 + i / ps);
	for (uint32_t p = 1; p <= 10; p++)
		pre ^= ltx_page_checksum(p, db + (p - 1) * ps, ps);
	pre |= F;

	struct ltx_header h = mk_hdr(0, ps, 10, 13, 13, 0, pre);
	buf_init(&out);
	CHECK_RC(ltx_encoder_new(&e, &h, buf_sink_write, &out), 0);
	post = pre;
	for (uint32_t p = 1; p <= 10; p++) {
		if (p != 1 && p != 7 && p != 8)
			continue;
		memset(page, (int)(0x40 + p), ps);
		post ^=
		    ltx_page_checksum(p, db + (p - 1) * ps, ps) ^ ltx_page_checksum(p, page, ps);
		CHECK_RC(ltx_encoder_add_page(e, p, page), 0);
	}
	post |= F;
	CHECK_RC(ltx_encoder_finish(e, post, &t), 0);
	ltx_encoder_free(e);
	CHECK_RC(out.len, 12420);

	/* Apply it and recompute. */
	source_init(&src, out.p, out.len, 4096);
	CHECK_RC(ltx_decoder_new(&d, source_read, &src), 0);
	while (ltx_decoder_next_page(d, &pgno, page) == 1)
		memcpy(db + (pgno - 1) * ps, page, ps);
	CHECK_RC(ltx_decoder_finish(d, &t), 0);
	ltx_decoder_free(d);
	uint64_t now = 0;
	for (uint32_t p = 1; p <= 10; p++)
		now ^= ltx_page_checksum(p, db + (p - 1) * ps, ps);
	CHECK_EQ_U64(F | now, t.post_apply_checksum);
	buf_free(&out);
	free(db);
	free(page);
}

/* --- header and names ------------------------------------------------------ */

static void test_header_layout(void)
{
	struct ltx_header h = {
	    .flags = 1,
	    .page_size = 4096,
	    .commit = 0x01020304,
	    .min_txid = 0x1112131415161718,
	    .max_txid = 0x2122232425262728,
	    .timestamp = -2,
	    .pre_apply_checksum = 0x8132333435363738,
	    .wal_offset = 0x4142434445464748,
	    .wal_size = 0x5152535455565758,
	    .wal_salt1 = 0x61626364,
	    .wal_salt2 = 0x71727374,
	    .node_id = 0x8182838485868788,
	};
	static const uint8_t want[80] = {
	    'L',  'T',	'X',  '1',  0,	  0,	0,    1,    0,	  0,	0x10, 0,    1,	  2,
	    3,	  4,	0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x21, 0x22, 0x23, 0x24,
	    0x25, 0x26, 0x27, 0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0x81, 0x32,
	    0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
	    0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x61, 0x62, 0x63, 0x64, 0x71, 0x72,
	    0x73, 0x74, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88};
	uint8_t b[LTX_HEADER_SIZE];
	struct ltx_header g;

	memset(b, 0xee, sizeof(b));
	ltx_header_encode(&h, b);
	CHECK(memcmp(b, want, sizeof(want)) == 0);
	for (int i = 80; i < 100; i++)
		CHECK(b[i] == 0);
	CHECK_RC(ltx_header_decode(&g, b), 0);
	CHECK(header_eq(&g, &h));
	/* Reserved bytes are not checked on read. */
	b[90] = 0x5a;
	CHECK_RC(ltx_header_decode(&g, b), 0);
	/* ltxfs's lease epoch: big-endian in bytes 80..87, the rest stays zero. */
	h.epoch = 0x9192939495969798;
	memset(b, 0xee, sizeof(b));
	ltx_header_encode(&h, b);
	CHECK(memcmp(b, want, sizeof(want)) == 0);
	for (int i = 0; i < 8; i++)
		CHECK(b[80 + i] == 0x91 + i);
	for (int i = 88; i < 100; i++)
		CHECK(b[i] == 0);
	CHECK_RC(ltx_header_decode(&g, b), 0);
	CHECK(header_eq(&g, &h));
	h.epoch = 0;
	/* Bad magic: -EBADMSG, output untouched. */
	memset(&g, 0x77, sizeof(g));
	b[3] = '2';
	CHECK_RC(ltx_header_decode(&g, b), -EBADMSG);
	CHECK(g.page_size == 0x77777777);
}

static void test_header_validate(void)
{
	struct ltx_header ok = mk_hdr(0, 4096, 3, 2, 2, 0, F | 1), h;

	CHECK_RC(ltx_header_validate(&ok), 0);
	CHECK_RC(ltx_header_validate(NULL), -EINVAL);
#define BAD(stmt)                                                                                  \
	do {                                                                                       \
		h = ok;                                                                            \
		stmt;                                                                              \
		CHECK_RC(ltx_header_validate(&h), -EINVAL);                                        \
	} while (0)
#define GOOD(stmt)                                                                                 \
	do {                                                                                       \
		h = ok;                                                                            \
		stmt;                                                                              \
		CHECK_RC(ltx_header_validate(&h), 0);                                              \
	} while (0)
	BAD(h.flags = 2);
	BAD(h.flags = 3);
	BAD(h.flags = 0x80000000);
	GOOD(h.flags = 1);
	BAD(h.page_size = 0);
	BAD(h.page_size = 256);
	BAD(h.page_size = 1000);
	BAD(h.page_size = 131072);
	GOOD(h.page_size = 512);
	GOOD(h.page_size = 65536);
	BAD(h.min_txid = 0);
	BAD(h.max_txid = 0);
	BAD((h.min_txid = 3, h.max_txid = 2));
	BAD(h.wal_offset = -1);
	BAD((h.wal_offset = 32, h.wal_size = -1));
	BAD(h.wal_salt1 = 1);
	BAD(h.wal_salt2 = 1);
	BAD(h.wal_offset = 32);
	BAD(h.wal_size = 4096);
	BAD((h.wal_salt1 = 1, h.wal_size = 4096));
	GOOD((h.wal_offset = 32, h.wal_size = 4128, h.wal_salt1 = 5, h.wal_salt2 = 6));
	GOOD((h.wal_offset = 32, h.wal_size = 4128));
	BAD(h.pre_apply_checksum = 0);
	BAD(h.pre_apply_checksum = 0x1234);
	BAD((h.min_txid = 1, h.max_txid = 1, h.pre_apply_checksum = F));
	GOOD((h.min_txid = 1, h.max_txid = 7, h.pre_apply_checksum = 0));
	GOOD(h.commit = 0);
	GOOD(h.timestamp = -1);
	GOOD(h.node_id = UINT64_MAX);
#undef BAD
#undef GOOD
	CHECK(!ltx_page_size_valid(0));
	CHECK(!ltx_page_size_valid(511));
	CHECK(!ltx_page_size_valid(768));
	CHECK(!ltx_page_size_valid(1u << 31));
	for (uint32_t ps = 512; ps <= 65536; ps *= 2)
		CHECK(ltx_page_size_valid(ps));
}

static void test_filenames(void)
{
	char name[LTX_FILENAME_LEN + 1];
	uint64_t a = 0, b = 0;

	memset(name, 'x', sizeof(name));
	ltx_format_filename(name, 1, 0x0123456789abcdef);
	CHECK(strcmp(name, "0000000000000001-0123456789abcdef.ltx") == 0);
	CHECK_RC(strlen(name), LTX_FILENAME_LEN);
	CHECK_RC(ltx_parse_filename(name, &a, &b), 0);
	CHECK_EQ_U64(a, 1);
	CHECK_EQ_U64(b, 0x0123456789abcdef);
	ltx_format_filename(name, UINT64_MAX, UINT64_MAX);
	CHECK(strcmp(name, "ffffffffffffffff-ffffffffffffffff.ltx") == 0);
	CHECK_RC(ltx_parse_filename(name, NULL, NULL), 0);

	const char *bad[] = {
	    "",
	    "0000000000000001-0000000000000002.lt",
	    "0000000000000001-0000000000000002.ltx.tmp",
	    "0000000000000001-0000000000000002.LTX",
	    "000000000000000A-0000000000000002.ltx",
	    "000000000000001-00000000000000002.ltx",
	    "0000000000000001_0000000000000002.ltx",
	    "0000000000000001-000000000000000g.ltx",
	    "x0000000000000001-0000000000000002.ltx",
	    " 000000000000001-0000000000000002.ltx",
	    "0000000000000001-0000000000000002xltx",
	    NULL,
	};
	a = b = 42;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK_RC(ltx_parse_filename(bad[i], &a, &b), -EINVAL);
	CHECK(a == 42 && b == 42);
}

/* --- encoder rules ----------------------------------------------------------- */

static void test_encoder_rules(void)
{
	uint8_t page[512];
	struct ltx_encoder *e = NULL;
	struct ltx_trailer t;
	struct buf out;

	memset(page, 7, sizeof(page));
	buf_init(&out);

	/* Invalid header: nothing written, nothing returned. */
	struct ltx_header bad = mk_hdr(2, 512, 1, 1, 1, 0, 0);
	CHECK_RC(ltx_encoder_new(&e, &bad, buf_sink_write, &out), -EINVAL);
	CHECK(e == NULL && out.len == 0);
	CHECK_RC(ltx_encoder_new(NULL, &bad, buf_sink_write, &out), -EINVAL);

	/* Non-snapshot: gaps fine; order, range, zero, lock page enforced. */
	uint32_t lock = ltx_lock_pgno(512);
	struct ltx_header h = mk_hdr(0, 512, lock + 5, 5, 5, 0, F | 9);
	CHECK_RC(ltx_encoder_new(&e, &h, buf_sink_write, &out), 0);
	CHECK_RC(out.len, LTX_HEADER_SIZE); /* the header is written at once */
	CHECK_RC(ltx_encoder_add_page(e, 0, page), -EINVAL);
	CHECK_RC(ltx_encoder_add_page(e, 3, page), 0);
	CHECK_RC(ltx_encoder_add_page(e, 3, page), -EINVAL); /* duplicate */
	CHECK_RC(ltx_encoder_add_page(e, 2, page), -EINVAL); /* order */
	CHECK_RC(ltx_encoder_add_page(e, 9, page), 0);	     /* gap */
	CHECK_RC(ltx_encoder_add_page(e, lock, page), -EINVAL);
	CHECK_RC(ltx_encoder_add_page(e, lock + 6, page), -EINVAL); /* > commit */
	CHECK_RC(ltx_encoder_add_page(e, lock + 5, page), 0);
	CHECK_RC(ltx_encoder_add_page(e, lock + 5, NULL), -EINVAL);
	CHECK_RC(ltx_encoder_finish(e, 0x1234, &t), -EINVAL); /* no checksum flag */
	CHECK_RC(ltx_encoder_finish(e, 0, &t), -EINVAL);
	CHECK_RC(ltx_encoder_finish(e, F | 77, &t), 0);
	CHECK_RC(ltx_encoder_finish(e, F | 77, &t), -EINVAL);
	CHECK_RC(ltx_encoder_add_page(e, lock + 5, page), -EINVAL);
	ltx_encoder_free(e);
	e = NULL;
	struct decoded dd;
	CHECK_RC(decode_buf(out.p, out.len, 0, &dd), 0);
	CHECK_RC(dd.n, 3);
	CHECK_RC(dd.pgno[2], lock + 5);
	buf_free(&out);

	/* Snapshot: 1..commit with no gap, completeness checked in finish. */
	struct ltx_header s = mk_hdr(LTX_FLAG_COMPRESS_LZ4, 512, 3, 1, 4, 0, 0);
	buf_init(&out);
	CHECK_RC(ltx_encoder_new(&e, &s, buf_sink_write, &out), 0);
	CHECK_RC(ltx_encoder_add_page(e, 2, page), -EINVAL);
	CHECK_RC(ltx_encoder_add_page(e, 1, page), 0);
	CHECK_RC(ltx_encoder_add_page(e, 3, page), -EINVAL);
	CHECK_RC(ltx_encoder_add_page(e, 2, page), 0);
	CHECK_RC(ltx_encoder_finish(e, F | 1, &t), -EINVAL); /* page 3 missing */
	CHECK_RC(ltx_encoder_add_page(e, 3, page), 0);
	uint64_t post = F | (ltx_page_checksum(1, page, 512) ^ ltx_page_checksum(2, page, 512) ^
			     ltx_page_checksum(3, page, 512));
	CHECK_RC(ltx_encoder_finish(e, post, NULL), 0);
	ltx_encoder_free(e);
	e = NULL;
	CHECK_RC(decode_buf(out.p, out.len, 0, &dd), 0);
	CHECK_EQ_U64(dd.t.post_apply_checksum, post);
	buf_free(&out);

	/* Deletion: no page allowed, post must be exactly the flag. */
	struct ltx_header del = mk_hdr(0, 512, 0, 3, 3, 3000, 0xa678a10ddddddddd);
	buf_init(&out);
	CHECK_RC(ltx_encoder_new(&e, &del, buf_sink_write, &out), 0);
	CHECK_RC(ltx_encoder_add_page(e, 1, page), -EINVAL);
	CHECK_RC(ltx_encoder_finish(e, F | 1, &t), -EINVAL);
	CHECK_RC(ltx_encoder_finish(e, F, &t), 0);
	ltx_encoder_free(e);
	buf_free(&out);

	ltx_encoder_free(NULL);
	CHECK_RC(ltx_encoder_add_page(NULL, 1, page), -EINVAL);
	CHECK_RC(ltx_encoder_finish(NULL, F, &t), -EINVAL);
}

static void test_deletion_file(void)
{
	for (uint32_t flags = 0; flags <= 1; flags++) {
		struct ltx_header h = mk_hdr(flags, 4096, 0, 3, 3, 3000, 0xa678a10ddddddddd);
		struct ltx_trailer t;
		struct decoded dd;
		struct buf out, blk, bad;

		buf_init(&out);
		CHECK_RC(encode_fill(&h, NULL, 0, F, &out, &t), 0);
		if (!flags)
			CHECK_RC(out.len, 120);
		CHECK_RC(decode_buf(out.p, out.len, 1, &dd), 0);
		CHECK_RC(dd.h.commit, 0);
		CHECK_RC(dd.n, 0);
		CHECK_EQ_U64(dd.t.post_apply_checksum, F);
		CHECK_EQ_U64(dd.t.file_checksum, t.file_checksum);

		/* A deletion file whose post-apply checksum is not empty, or with a page. */
		buf_init(&blk);
		buf_u32(&blk, 0);
		buf_init(&bad);
		craft(&bad, &h, &blk, F | 5, flags ? LZ4_STD : RAW);
		CHECK_RC(decode_buf(bad.p, bad.len, 0, NULL), -EBADMSG);
		buf_free(&bad);
		buf_free(&blk);
		buf_init(&blk);
		blk_page(&blk, 1, 0, 4096);
		buf_u32(&blk, 0);
		buf_init(&bad);
		craft(&bad, &h, &blk, F, flags ? LZ4_STD : RAW);
		CHECK_RC(decode_buf(bad.p, bad.len, 0, NULL), -EBADMSG);
		buf_free(&bad);
		buf_free(&blk);
		buf_free(&out);
	}
}

/* --- decoder rules on crafted files (correct file checksum, broken rule) --- */

static int decode_crafted_chunked(const struct ltx_header *h, const struct buf *blk, uint64_t post,
				  enum frame_kind kind, size_t chunk)
{
	struct buf f;
	int rc;

	buf_init(&f);
	craft(&f, h, blk, post, kind);
	rc = decode_buf(f.p, f.len, chunk, NULL);
	buf_free(&f);
	return rc;
}

static int decode_crafted(const struct ltx_header *h, const struct buf *blk, uint64_t post,
			  enum frame_kind kind)
{
	return decode_crafted_chunked(h, blk, post, kind, 0);
}

static void test_decoder_rules(void)
{
	const uint32_t ps = 512, lock = ltx_lock_pgno(ps);
	const enum frame_kind kinds[] = {RAW, LZ4_STD};
	struct ltx_header inc = mk_hdr(0, ps, 10, 5, 5, 0, F | 1);
	struct ltx_header snap = mk_hdr(0, ps, 3, 1, 5, 0, 0);
	uint64_t snap_post =
	    F | (fill_page_sum(1, 1, ps) ^ fill_page_sum(2, 2, ps) ^ fill_page_sum(3, 3, ps));
	struct buf b;

	for (size_t k = 0; k < 2; k++) {
		enum frame_kind kind = kinds[k];
		inc.flags = snap.flags = kind == RAW ? 0 : LTX_FLAG_COMPRESS_LZ4;

		/* The well-formed versions decode. */
		buf_init(&b);
		blk_page(&b, 2, 2, ps);
		blk_page(&b, 7, 7, ps);
		buf_u32(&b, 0);
		CHECK_RC(decode_crafted(&inc, &b, F | 3, kind), 0);
		buf_free(&b);
		buf_init(&b);
		blk_page(&b, 1, 1, ps);
		blk_page(&b, 2, 2, ps);
		blk_page(&b, 3, 3, ps);
		buf_u32(&b, 0);
		CHECK_RC(decode_crafted(&snap, &b, snap_post, kind), 0);
		/* Snapshot whose post-apply checksum is not its pages'. */
		CHECK_RC(decode_crafted(&snap, &b, snap_post ^ 1, kind), -EBADMSG);
		buf_free(&b);

		/* Out of order. */
		buf_init(&b);
		blk_page(&b, 3, 3, ps);
		blk_page(&b, 2, 2, ps);
		buf_u32(&b, 0);
		CHECK_RC(decode_crafted(&inc, &b, F | 3, kind), -EBADMSG);
		buf_free(&b);
		/* Duplicate. */
		buf_init(&b);
		blk_page(&b, 2, 2, ps);
		blk_page(&b, 2, 2, ps);
		buf_u32(&b, 0);
		CHECK_RC(decode_crafted(&inc, &b, F | 3, kind), -EBADMSG);
		buf_free(&b);
		/* pgno > commit. */
		buf_init(&b);
		blk_page(&b, 11, 2, ps);
		buf_u32(&b, 0);
		CHECK_RC(decode_crafted(&inc, &b, F | 3, kind), -EBADMSG);
		buf_free(&b);
		/* The lock page. */
		struct ltx_header big = inc;
		big.commit = lock + 1;
		buf_init(&b);
		blk_page(&b, lock - 1, 2, ps);
		blk_page(&b, lock, 2, ps);
		buf_u32(&b, 0);
		CHECK_RC(decode_crafted(&big, &b, F | 3, kind), -EBADMSG);
		buf_free(&b);
		buf_init(&b);
		blk_page(&b, lock - 1, 2, ps);
		blk_page(&b, lock + 1, 2, ps);
		buf_u32(&b, 0);
		CHECK_RC(decode_crafted(&big, &b, F | 3, kind), 0);
		buf_free(&b);
		/* Snapshot missing a middle page, the last page, the first page. */
		buf_init(&b);
		blk_page(&b, 1, 1, ps);
		blk_page(&b, 3, 3, ps);
		buf_u32(&b, 0);
		CHECK_RC(decode_crafted(&snap, &b, snap_post, kind), -EBADMSG);
		buf_free(&b);
		buf_init(&b);
		blk_page(&b, 1, 1, ps);
		blk_page(&b, 2, 2, ps);
		buf_u32(&b, 0);
		CHECK_RC(decode_crafted(&snap, &b,
					F | (fill_page_sum(1, 1, ps) ^ fill_page_sum(2, 2, ps)),
					kind),
			 -EBADMSG);
		buf_free(&b);
		buf_init(&b);
		blk_page(&b, 2, 2, ps);
		blk_page(&b, 3, 3, ps);
		buf_u32(&b, 0);
		CHECK_RC(decode_crafted(&snap, &b, snap_post, kind), -EBADMSG);
		buf_free(&b);
		/* Post-apply checksum without the flag bit. */
		buf_init(&b);
		blk_page(&b, 2, 2, ps);
		buf_u32(&b, 0);
		CHECK_RC(decode_crafted(&inc, &b, 3, kind), -EBADMSG);
		buf_free(&b);
		/* No terminator: the trailer is read as a page header. */
		buf_init(&b);
		blk_page(&b, 2, 2, ps);
		CHECK(decode_crafted(&inc, &b, F | 3, kind) < 0);
		buf_free(&b);
		/* A short last page (exact page length). */
		buf_init(&b);
		buf_u32(&b, 2);
		buf_fill(&b, 2, ps - 1);
		buf_u32(&b, 0);
		CHECK(decode_crafted(&inc, &b, F | 3, kind) < 0);
		buf_free(&b);
		/* Data after the terminator. */
		buf_init(&b);
		blk_page(&b, 2, 2, ps);
		buf_u32(&b, 0);
		buf_fill(&b, 0, 1);
		CHECK_RC(decode_crafted(&inc, &b, F | 3, kind), -EBADMSG);
		buf_free(&b);
	}

	/* The frame ends before the page does: exact decompressed length. */
	inc.flags = LTX_FLAG_COMPRESS_LZ4;
	buf_init(&b);
	buf_u32(&b, 2);
	buf_fill(&b, 2, ps - 1);
	CHECK_RC(decode_crafted(&inc, &b, F | 3, LZ4_STD), -EBADMSG);
	buf_free(&b);
	/* The frame ends after the pgno of a page. */
	buf_init(&b);
	buf_u32(&b, 2);
	CHECK_RC(decode_crafted(&inc, &b, F | 3, LZ4_STD), -EBADMSG);
	buf_free(&b);
	/* An empty frame. */
	buf_init(&b);
	CHECK_RC(decode_crafted(&inc, &b, F | 3, LZ4_STD), -EBADMSG);
	buf_free(&b);
}

/* Any valid LZ4 frame is accepted, and only one. */
static void test_decoder_lz4_frames(void)
{
	const uint32_t ps = 4096;
	struct ltx_header h = mk_hdr(LTX_FLAG_COMPRESS_LZ4, ps, 40, 5, 5, 0, F | 1);
	const enum frame_kind ok_kinds[] = {LZ4_STD, LZ4_PLAIN, LZ4_ODD};
	struct buf b, f;

	buf_init(&b);
	for (uint32_t p = 1; p <= 40; p += 2) {
		buf_u32(&b, p);
		for (uint32_t i = 0; i < ps; i++) {
			uint8_t c = (uint8_t)((i * p) ^ (i >> 3));
			buf_put(&b, &c, 1);
		}
	}
	buf_u32(&b, 0);
	for (size_t k = 0; k < 3; k++)
		for (size_t chunk = 1; chunk < 100000; chunk *= 17)
			CHECK_RC(decode_crafted_chunked(&h, &b, F | 3, ok_kinds[k], chunk), 0);

	/* Two frames: the block split in two. */
	uint8_t hb[LTX_HEADER_SIZE];
	size_t cut = 4 + ps / 2;
	uint64_t crc;
	ltx_header_encode(&h, hb);
	crc = crc64_iso(crc64_iso(0, hb, sizeof(hb)), b.p, b.len);
	buf_init(&f);
	buf_put(&f, hb, sizeof(hb));
	lz4_frame(&f, b.p, cut, LZ4_STD);
	lz4_frame(&f, b.p + cut, b.len - cut, LZ4_STD);
	buf_u64(&f, F | 3);
	uint8_t pb[8] = {0x80, 0, 0, 0, 0, 0, 0, 3};
	buf_u64(&f, F | crc64_iso(crc, pb, 8));
	CHECK_RC(decode_buf(f.p, f.len, 0, NULL), -EBADMSG);
	buf_free(&f);

	/* A whole frame, then an extra empty frame before the trailer. */
	buf_init(&f);
	buf_put(&f, hb, sizeof(hb));
	lz4_frame(&f, b.p, b.len, LZ4_STD);
	lz4_frame(&f, hb, 0, LZ4_STD);
	buf_u64(&f, F | 3);
	buf_u64(&f, F | crc64_iso(crc, pb, 8));
	CHECK_RC(decode_buf(f.p, f.len, 0, NULL), -EBADMSG);
	buf_free(&f);

	/* A skippable frame first, then the real one. */
	buf_init(&f);
	buf_put(&f, hb, sizeof(hb));
	static const uint8_t skip[12] = {0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4};
	buf_put(&f, skip, sizeof(skip));
	lz4_frame(&f, b.p, b.len, LZ4_STD);
	buf_u64(&f, F | 3);
	buf_u64(&f, F | crc64_iso(crc, pb, 8));
	CHECK_RC(decode_buf(f.p, f.len, 0, NULL), -EBADMSG);
	buf_free(&f);

	/* Garbage instead of a frame. */
	buf_init(&f);
	buf_put(&f, hb, sizeof(hb));
	buf_fill(&f, 0x42, 64);
	CHECK_RC(decode_buf(f.p, f.len, 0, NULL), -EBADMSG);
	buf_free(&f);
	buf_free(&b);
}

/* --- corruption and truncation -------------------------------------------- */

static bool decoded_eq(const struct decoded *a, const struct decoded *b)
{
	if (!header_eq(&a->h, &b->h) || a->n != b->n ||
	    a->t.post_apply_checksum != b->t.post_apply_checksum ||
	    a->t.file_checksum != b->t.file_checksum)
		return false;
	for (uint32_t i = 0; i < a->n && i < 256; i++)
		if (a->pgno[i] != b->pgno[i] || a->sum[i] != b->sum[i])
			return false;
	return true;
}

/*
 * Every single-byte corruption must fail, with one exception the v1 format
 * cannot avoid: bits inside the LZ4 frame that no decoder reads (for example
 * the match-length nibble of a block's last token, which has no match). The
 * file checksum and the LZ4 content checksum both cover the decompressed
 * bytes, so such a flip is only accepted if it decodes to exactly the same
 * content, which is checked here. Every truncation must be -EPROTO.
 */
static void check_flips_and_truncations(const uint8_t *file, size_t len, const char *what)
{
	static struct decoded want, got;
	uint8_t *c = malloc(len);
	bool lz4 = file[7] & 1;
	int fails = 0, benign = 0;

	CHECK_RC(decode_buf(file, len, 0, &want), 0);
	for (size_t i = 0; i < len; i++) {
		static const uint8_t masks[] = {0xff, 0x01, 0x80, 0x10};
		for (size_t m = 0; m < sizeof(masks); m++) {
			memcpy(c, file, len);
			c[i] ^= masks[m];
			int rc = decode_buf(c, len, m == 0 ? 0 : 3, &got);
			if (rc == 0 && lz4 && i >= LTX_HEADER_SIZE && i < len - LTX_TRAILER_SIZE &&
			    decoded_eq(&got, &want)) {
				benign++;
				continue;
			}
			if (rc >= 0 || (i >= 80 && i < 100 && rc != -EBADMSG)) {
				if (fails++ < 5)
					fprintf(stderr, "%s: flip %02x at %zu gave %d\n", what,
						masks[m], i, rc);
			}
		}
	}
	if (benign)
		fprintf(stderr, "%s: %d of %zu flips hit LZ4 bits no decoder reads\n", what, benign,
			4 * len);
	for (size_t n = 0; n < len; n++) {
		int rc = decode_buf(file, n, n % 2 ? 1 : 0, NULL);
		if (rc != -EPROTO && fails++ < 10)
			fprintf(stderr, "%s: truncated to %zu gave %d\n", what, n, rc);
	}
	/* Trailing bytes after the trailer. */
	uint8_t *longer = malloc(len + 1);
	memcpy(longer, file, len);
	longer[len] = 0;
	CHECK_RC(decode_buf(longer, len + 1, 0, NULL), -EBADMSG);
	CHECK_RC(decode_buf(longer, len + 1, 1, NULL), -EBADMSG);
	free(longer);
	CHECK(fails == 0);
	free(c);
}

static void test_corruption(void)
{
	uint8_t vec[256];
	size_t n = unhex(v1_lz4_hex, vec);
	struct buf out;

	check_flips_and_truncations(vec, n, "v1 lz4 vector");

	struct ltx_header h = mk_hdr(0, 512, 2, 1, 1, 1000, 0);
	buf_init(&out);
	CHECK_RC(encode_fill(&h, snap_pages, 2, 0xad2dffe333333333, &out, NULL), 0);
	check_flips_and_truncations(out.p, out.len, "v1 raw snapshot");
	buf_free(&out);

	struct ltx_header inc = mk_hdr(1, 512, 9, 7, 8, 5, F | 0x1234);
	const struct pg pages[] = {{2, 0}, {5, 0xaa}, {9, 0x33}};
	buf_init(&out);
	CHECK_RC(encode_fill(&inc, pages, 3, F | 0x99, &out, NULL), 0);
	check_flips_and_truncations(out.p, out.len, "v1 lz4 incremental");
	buf_free(&out);

	struct ltx_header del = mk_hdr(1, 65536, 0, 3, 3, 3000, F | 1);
	buf_init(&out);
	CHECK_RC(encode_fill(&del, NULL, 0, F, &out, NULL), 0);
	check_flips_and_truncations(out.p, out.len, "v1 lz4 deletion");
	buf_free(&out);
	del.flags = 0;
	buf_init(&out);
	CHECK_RC(encode_fill(&del, NULL, 0, F, &out, NULL), 0);
	check_flips_and_truncations(out.p, out.len, "v1 raw deletion");
	buf_free(&out);
}

/* --- round trips, streaming, errors ---------------------------------------- */

static uint64_t rng = 0x243F6A8885A308D3;

static uint8_t rnd8(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint8_t)(rng >> 24);
}

/* Half random, half runs: some of it compresses, some does not. */
static void gen_page(uint8_t *p, uint32_t ps, uint32_t pgno)
{
	for (uint32_t i = 0; i < ps; i++)
		p[i] = (i < ps / 2) ? rnd8() : (uint8_t)(pgno + i / 64);
}

static void test_round_trips(void)
{
	static const uint32_t sizes[] = {512, 1024, 4096, 65536};
	static const size_t chunks[] = {0, 1, 13, 4096};

	for (size_t si = 0; si < 4; si++)
		for (uint32_t flags = 0; flags <= 1; flags++)
			for (int snapshot = 0; snapshot <= 1; snapshot++) {
				uint32_t ps = sizes[si], npages = ps == 65536 ? 4 : 9;
				uint32_t commit = snapshot ? npages : 3 * npages;
				struct ltx_header h =
				    mk_hdr(flags, ps, commit, snapshot ? 1 : 10, 12, 1700000000000,
					   snapshot ? 0 : F | 0xabc);
				uint8_t *page = malloc(ps);
				uint64_t sums[16], post = 0;
				uint32_t pgnos[16];
				struct ltx_encoder *e = NULL;
				struct ltx_trailer t;
				struct decoded dd;
				struct buf out;

				h.node_id = 0x1122334455667788;
				if (!snapshot) {
					h.wal_offset = 32;
					h.wal_size = 4096;
					h.wal_salt1 = 1;
					h.wal_salt2 = 2;
				}
				buf_init(&out);
				CHECK_RC(ltx_encoder_new(&e, &h, buf_sink_write, &out), 0);
				for (uint32_t i = 0; i < npages; i++) {
					pgnos[i] = snapshot ? i + 1 : 3 * i + 2;
					gen_page(page, ps, pgnos[i]);
					sums[i] = ltx_page_checksum(pgnos[i], page, ps);
					post ^= sums[i];
					CHECK_RC(ltx_encoder_add_page(e, pgnos[i], page), 0);
				}
				CHECK_RC(ltx_encoder_finish(e, F | post, &t), 0);
				ltx_encoder_free(e);
				if (!flags)
					CHECK_RC(out.len, 100 + npages * (4 + ps) + 4 + 16);
				for (size_t ci = 0; ci < 4; ci++) {
					if (chunks[ci] == 1 && ps > 4096)
						continue;
					memset(&dd, 0, sizeof(dd));
					CHECK_RC(decode_buf(out.p, out.len, chunks[ci], &dd), 0);
					CHECK(header_eq(&dd.h, &h));
					CHECK_RC(dd.n, npages);
					for (uint32_t i = 0; i < npages && i < dd.n; i++) {
						CHECK_RC(dd.pgno[i], pgnos[i]);
						CHECK_EQ_U64(dd.sum[i], sums[i]);
					}
					CHECK_EQ_U64(dd.t.file_checksum, t.file_checksum);
					CHECK_EQ_U64(dd.t.post_apply_checksum, F | post);
				}
				/* The uncompressed twin has a different file checksum (flag
				 * hashed). */
				buf_free(&out);
				free(page);
			}
}

/* v1 checksum is compressor-independent: same pages, flag 0/1, checksums differ only by header. */
static void test_checksum_is_logical(void)
{
	struct ltx_header h = mk_hdr(LTX_FLAG_COMPRESS_LZ4, 4096, 8, 2, 2, 0, F | 1);
	uint8_t *page = malloc(4096);
	struct buf out;
	struct ltx_trailer t;
	uint8_t hb[LTX_HEADER_SIZE], post[8] = {0x80, 0, 0, 0, 0, 0, 0, 9};
	uint64_t crc;

	ltx_header_encode(&h, hb);
	crc = crc64_iso(0, hb, sizeof(hb));
	buf_init(&out);
	struct ltx_encoder *e = NULL;
	CHECK_RC(ltx_encoder_new(&e, &h, buf_sink_write, &out), 0);
	for (uint32_t p = 1; p <= 8; p += 3) {
		uint8_t be[4] = {0, 0, 0, (uint8_t)p};
		gen_page(page, 4096, p);
		crc = crc64_iso(crc64_iso(crc, be, 4), page, 4096);
		CHECK_RC(ltx_encoder_add_page(e, p, page), 0);
	}
	crc = crc64_iso(crc, (const uint8_t[4]){0}, 4);
	crc = crc64_iso(crc, post, 8);
	CHECK_RC(ltx_encoder_finish(e, F | 9, &t), 0);
	CHECK_EQ_U64(t.file_checksum, F | crc);
	ltx_encoder_free(e);
	buf_free(&out);
	free(page);
}

static void test_streaming(void)
{
	for (uint32_t flags = 0; flags <= 1; flags++) {
		struct ltx_header h = mk_hdr(flags, 4096, 1000, 2, 2, 0, F | 1);
		uint8_t *page = malloc(4096);
		struct ltx_encoder *e = NULL;
		struct ltx_decoder *d = NULL;
		struct source src;
		struct buf out;
		uint32_t pgno;
		int n = 0;

		buf_init(&out);
		CHECK_RC(ltx_encoder_new(&e, &h, buf_sink_write, &out), 0);
		for (uint32_t p = 1; p <= 512; p++) {
			for (uint32_t i = 0; i < 4096; i++)
				page[i] = rnd8();
			CHECK_RC(ltx_encoder_add_page(e, p, page), 0);
		}
		/* 2 MiB of incompressible pages in: nearly all of it must be out already. */
		CHECK(out.len > 2 * 1024 * 1024 - 256 * 1024);
		CHECK(out.max_write <= 256 * 1024);
		CHECK_RC(ltx_encoder_finish(e, F | 2, NULL), 0);
		ltx_encoder_free(e);

		source_init(&src, out.p, out.len, 0);
		CHECK_RC(ltx_decoder_new(&d, source_read, &src), 0);
		CHECK_RC(ltx_decoder_next_page(d, &pgno, page), 1);
		CHECK(src.pos <= 128 * 1024); /* read ahead is bounded */
		while (ltx_decoder_next_page(d, &pgno, page) == 1)
			n++;
		CHECK_RC(n, 511);
		CHECK_RC(ltx_decoder_finish(d, NULL), 0);
		CHECK(src.max_req <= 64 * 1024);
		ltx_decoder_free(d);
		buf_free(&out);
		free(page);
	}
}

static void test_io_errors(void)
{
	struct ltx_header h = mk_hdr(1, 4096, 100, 2, 2, 0, F | 1);
	uint8_t *page = calloc(1, 4096);
	struct ltx_encoder *e = NULL;
	struct ltx_decoder *d = NULL;
	struct source src;
	struct buf out;
	uint32_t pgno;
	int rc = 0;

	/* Sink fails on the header. */
	buf_init(&out);
	out.fail_at = 10;
	out.fail_rc = -ENOSPC;
	CHECK_RC(ltx_encoder_new(&e, &h, buf_sink_write, &out), -ENOSPC);
	CHECK(e == NULL);
	/* Sink fails later: sticky. */
	out.fail_at = 300000;
	CHECK_RC(ltx_encoder_new(&e, &h, buf_sink_write, &out), 0);
	for (uint32_t p = 1; p <= 100 && rc == 0; p++) {
		for (uint32_t i = 0; i < 4096; i++)
			page[i] = rnd8();
		rc = ltx_encoder_add_page(e, p, page);
	}
	CHECK_RC(rc, -ENOSPC);
	CHECK_RC(ltx_encoder_add_page(e, 100, page), -ENOSPC);
	CHECK_RC(ltx_encoder_finish(e, F | 1, NULL), -ENOSPC);
	ltx_encoder_free(e);
	e = NULL;
	buf_free(&out);

	/* Source fails: sticky, returned as is. */
	buf_init(&out);
	const struct pg pages[] = {{1, 1}, {2, 2}, {3, 3}};
	CHECK_RC(encode_fill(&h, pages, 3, F | 2, &out, NULL), 0);
	source_init(&src, out.p, out.len, 50);
	src.fail_at = 120;
	src.fail_rc = -EIO;
	CHECK_RC(ltx_decoder_new(&d, source_read, &src), 0);
	CHECK_RC(ltx_decoder_next_page(d, &pgno, page), -EIO);
	CHECK_RC(ltx_decoder_next_page(d, &pgno, page), -EIO);
	CHECK_RC(ltx_decoder_finish(d, NULL), -EIO);
	ltx_decoder_free(d);
	d = NULL;
	source_init(&src, out.p, out.len, 0);
	src.fail_at = 0;
	src.fail_rc = -EINTR;
	CHECK_RC(ltx_decoder_new(&d, source_read, &src), -EINTR);
	CHECK(d == NULL);
	buf_free(&out);
	free(page);
}

static void test_decoder_api(void)
{
	struct ltx_header h = mk_hdr(1, 1024, 3, 1, 1, 0, 0);
	const struct pg pages[] = {{1, 1}, {2, 2}, {3, 3}};
	uint64_t post =
	    F | (fill_page_sum(1, 1, 1024) ^ fill_page_sum(2, 2, 1024) ^ fill_page_sum(3, 3, 1024));
	struct ltx_decoder *d = NULL;
	struct ltx_trailer t, t2;
	uint8_t page[1024];
	struct source src;
	struct buf out;
	uint32_t pgno = 0;

	buf_init(&out);
	CHECK_RC(encode_fill(&h, pages, 3, post, &out, &t), 0);

	/* finish() without reading the pages still checks them all. */
	source_init(&src, out.p, out.len, 0);
	CHECK_RC(ltx_decoder_new(&d, source_read, &src), 0);
	CHECK_RC(ltx_decoder_next_page(d, &pgno, page), 1);
	CHECK_RC(pgno, 1);
	CHECK(page[0] == 1 && page[1023] == 1);
	CHECK_RC(ltx_decoder_finish(d, &t2), 0);
	CHECK_EQ_U64(t2.file_checksum, t.file_checksum);
	CHECK_RC(ltx_decoder_finish(d, &t2), 0); /* idempotent */
	CHECK_RC(ltx_decoder_next_page(d, &pgno, page), 0);
	CHECK_RC(ltx_decoder_next_page(d, NULL, page), -EINVAL);
	ltx_decoder_free(d);
	d = NULL;

	/* Zero after the terminator, repeatedly; page untouched. */
	source_init(&src, out.p, out.len, 0);
	CHECK_RC(ltx_decoder_new(&d, source_read, &src), 0);
	while (ltx_decoder_next_page(d, &pgno, page) == 1)
		;
	memset(page, 0x5a, sizeof(page));
	pgno = 77;
	CHECK_RC(ltx_decoder_next_page(d, &pgno, page), 0);
	CHECK(pgno == 77 && page[0] == 0x5a);
	CHECK_RC(ltx_decoder_finish(d, NULL), 0);
	ltx_decoder_free(d);
	d = NULL;

	/* Errors leave outputs alone. */
	out.p[out.len - 20] ^= 1;
	source_init(&src, out.p, out.len, 0);
	memset(&t2, 0x33, sizeof(t2));
	CHECK_RC(ltx_decoder_new(&d, source_read, &src), 0);
	CHECK(ltx_decoder_finish(d, &t2) < 0);
	CHECK(t2.file_checksum == 0x3333333333333333);
	ltx_decoder_free(d);
	d = NULL;

	CHECK_RC(ltx_decoder_new(NULL, source_read, &src), -EINVAL);
	CHECK_RC(ltx_decoder_new(&d, NULL, &src), -EINVAL);
	CHECK(ltx_decoder_header(NULL) == NULL);
	CHECK_RC(ltx_decoder_finish(NULL, NULL), -EINVAL);
	ltx_decoder_free(NULL);
	buf_free(&out);
}

static void test_verify_fd(void)
{
	struct ltx_header h = mk_hdr(1, 512, 2, 1, 1, 1000, 0), gh;
	struct ltx_encoder *e = NULL;
	struct ltx_trailer t, gt;
	uint8_t page[512];
	FILE *f = tmpfile();
	int fd = fileno(f);

	CHECK(write(fd, "junk", 4) == 4);
	CHECK_RC(ltx_encoder_new(&e, &h, ltx_fd_write, &fd), 0);
	memset(page, 1, sizeof(page));
	CHECK_RC(ltx_encoder_add_page(e, 1, page), 0);
	memset(page, 2, sizeof(page));
	CHECK_RC(ltx_encoder_add_page(e, 2, page), 0);
	CHECK_RC(ltx_encoder_finish(e, 0xad2dffe333333333, &t), 0);
	ltx_encoder_free(e);
	CHECK_EQ_U64(t.file_checksum, 0xb595f85138c5a97e);

	CHECK(lseek(fd, 4, SEEK_SET) == 4);
	CHECK_RC(ltx_verify_fd(fd, &gh, &gt), 0);
	CHECK_EQ_U64(gh.timestamp, 1000);
	CHECK_EQ_U64(gt.file_checksum, 0xb595f85138c5a97e);
	CHECK(lseek(fd, 4, SEEK_SET) == 4);
	CHECK_RC(ltx_verify_fd(fd, NULL, NULL), 0);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	CHECK_RC(ltx_verify_fd(fd, NULL, NULL), -EBADMSG); /* "junk" is not the magic */
	CHECK_RC(ltx_verify_fd(-1, NULL, NULL), -EBADF);
	fclose(f);
}

/*
 * ltx.md 6.2 lock-page vector end to end: a compressed snapshot of 4096-byte
 * pages, commit = lock + 10, every page 'x', the lock page skipped. The encoder
 * must accept it, and the decoder must find the pages XOR to 0xc19b668c376662c7.
 * 1 GiB of pages flows through; about 5 MiB is stored.
 */
static void test_lock_page_snapshot(void)
{
	const uint32_t ps = 4096, lock = ltx_lock_pgno(ps), commit = lock + 10;
	struct ltx_header h = mk_hdr(LTX_FLAG_COMPRESS_LZ4, ps, commit, 1, 9, 0, 0);
	struct ltx_encoder *e = NULL;
	struct ltx_decoder *d = NULL;
	uint8_t *page = malloc(ps);
	struct ltx_trailer t;
	struct source src;
	struct buf out;
	uint32_t pgno, n = 0, prev = 0;
	int rc = 0;

	buf_init(&out);
	memset(page, 'x', ps);
	CHECK_RC(ltx_encoder_new(&e, &h, buf_sink_write, &out), 0);
	for (uint32_t p = 1; p <= commit && rc == 0; p++)
		if (p != lock)
			rc = ltx_encoder_add_page(e, p, page);
	CHECK_RC(rc, 0);
	CHECK_RC(ltx_encoder_add_page(e, commit, page), -EINVAL);
	CHECK_RC(ltx_encoder_finish(e, 0xc19b668c376662c7, &t), 0);
	ltx_encoder_free(e);
	fprintf(stderr, "1 GiB snapshot: %zu bytes compressed\n", out.len);

	source_init(&src, out.p, out.len, 0);
	CHECK_RC(ltx_decoder_new(&d, source_read, &src), 0);
	while ((rc = ltx_decoder_next_page(d, &pgno, page)) == 1) {
		if (pgno != prev + 1 && !(prev == lock - 1 && pgno == lock + 1))
			CHECK(0);
		prev = pgno;
		n++;
	}
	CHECK_RC(rc, 0);
	CHECK_RC(n, commit - 1);
	CHECK_RC(ltx_decoder_finish(d, &t), 0);
	CHECK_EQ_U64(t.post_apply_checksum, 0xc19b668c376662c7);
	ltx_decoder_free(d);
	buf_free(&out);
	free(page);
}

/* --- fuzz seeds ------------------------------------------------------------ */

static void write_seed(const char *dir, const char *name, const uint8_t *p, size_t n)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f) {
		CHECK(0);
		return;
	}
	CHECK(fwrite(p, 1, n, f) == n);
	fclose(f);
}

static void write_fuzz_corpus(const char *dir)
{
	uint8_t vec[256];
	size_t n = unhex(v1_lz4_hex, vec);
	struct buf out;

	write_seed(dir, "snapshot-lz4-pierrec.ltx", vec, n);
	for (uint32_t flags = 0; flags <= 1; flags++) {
		struct ltx_header s = mk_hdr(flags, 512, 2, 1, 1, 1000, 0);
		struct ltx_header inc = mk_hdr(flags, 512, 9, 7, 8, 5, F | 0x1234);
		struct ltx_header del = mk_hdr(flags, 512, 0, 3, 3, 3000, F | 1);
		const struct pg pages[] = {{2, 0}, {5, 0xaa}, {9, 0x33}};
		char name[64];

		buf_init(&out);
		CHECK_RC(encode_fill(&s, snap_pages, 2, 0xad2dffe333333333, &out, NULL), 0);
		snprintf(name, sizeof(name), "snapshot-%s.ltx", flags ? "lz4" : "raw");
		write_seed(dir, name, out.p, out.len);
		buf_free(&out);
		buf_init(&out);
		CHECK_RC(encode_fill(&inc, pages, 3, F | 0x99, &out, NULL), 0);
		snprintf(name, sizeof(name), "incremental-%s.ltx", flags ? "lz4" : "raw");
		write_seed(dir, name, out.p, out.len);
		buf_free(&out);
		buf_init(&out);
		CHECK_RC(encode_fill(&del, NULL, 0, F, &out, NULL), 0);
		snprintf(name, sizeof(name), "deletion-%s.ltx", flags ? "lz4" : "raw");
		write_seed(dir, name, out.p, out.len);
		buf_free(&out);
	}
	fprintf(stderr, "fuzz seeds written to %s\n", dir);
}

int main(void)
{
	const char *corpus = getenv("LTXFS_FUZZ_CORPUS");

	RUN(test_header_layout);
	RUN(test_header_validate);
	RUN(test_filenames);
	RUN(test_v1_compressed_vector_decode);
	RUN(test_v1_compressed_vector_encode);
	RUN(test_v1_uncompressed_vector);
	RUN(test_backup_client_snapshot_vector);
	RUN(test_v0314_compactor_vectors);
	RUN(test_litefs_shaped_file);
	RUN(test_encoder_rules);
	RUN(test_deletion_file);
	RUN(test_decoder_rules);
	RUN(test_decoder_lz4_frames);
	RUN(test_corruption);
	RUN(test_round_trips);
	RUN(test_checksum_is_logical);
	RUN(test_streaming);
	RUN(test_io_errors);
	RUN(test_decoder_api);
	RUN(test_verify_fd);
	RUN(test_lock_page_snapshot);
	if (corpus)
		write_fuzz_corpus(corpus);
	return UNIT_DONE();
}
