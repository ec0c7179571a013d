/* Consecutive LTX files merged into one (include/ltxfs/ltxmerge.h): applied
 * to the state before the first, the merged file gives the state after the
 * last, with the right checksums, across a shrink and a regrowth. */
#include "unit.h"

#include "ltxfs/crc.h"
#include "ltxfs/ltx.h"
#include "ltxfs/ltxmerge.h"

#include <errno.h>

#define PS    512
#define FLAG  ((uint64_t)1 << 63)
#define MAXPG 16

/* A database image: pages[1..n]. */
struct model {
	uint8_t pages[MAXPG + 1][PS];
	uint32_t n;
};

static uint64_t model_sum(const struct model *m)
{
	uint64_t x = 0;
	for (uint32_t pg = 1; pg <= m->n; pg++)
		x ^= ltx_page_checksum(pg, m->pages[pg], PS);
	return FLAG | x;
}

/* One transaction: pages (pgno, fill byte) written, then commit; its LTX file into out. */
static void tx(struct model *m, uint64_t txid, uint32_t commit, const uint32_t *pg,
	       const uint8_t *val, size_t k, struct buf *out)
{
	uint64_t pre = model_sum(m);
	for (uint32_t p = commit + 1; p <= m->n; p++)
		memset(m->pages[p], 0, PS); /* truncated: a regrowth reads zeros */
	for (uint32_t p = m->n + 1; p <= commit; p++)
		memset(m->pages[p], 0, PS);
	m->n = commit;
	for (size_t i = 0; i < k; i++)
		memset(m->pages[pg[i]], val[i], PS);
	struct ltx_header h = {.page_size = PS, .commit = commit, .min_txid = txid,
			       .max_txid = txid, .timestamp = (int64_t)txid * 1000,
			       .pre_apply_checksum = txid == 1 ? 0 : pre, .epoch = txid};
	struct ltx_encoder *e = NULL;
	struct ltx_trailer t;
	buf_init(out);
	CHECK_RC(ltx_encoder_new(&e, &h, buf_sink_write, out), 0);
	if (txid == 1) {
		for (uint32_t p = 1; p <= commit; p++)
			CHECK_RC(ltx_encoder_add_page(e, p, m->pages[p]), 0);
	} else {
		for (size_t i = 0; i < k; i++)
			CHECK_RC(ltx_encoder_add_page(e, pg[i], m->pages[pg[i]]), 0);
	}
	CHECK_RC(ltx_encoder_finish(e, model_sum(m), &t), 0);
	ltx_encoder_free(e);
}

struct src {
	const struct buf *b;
	size_t off;
};

static ssize_t src_read(void *ctx, void *p, size_t n)
{
	struct src *s = ctx;
	size_t k = s->b->len - s->off < n ? s->b->len - s->off : n;
	memcpy(p, s->b->p + s->off, k);
	s->off += k;
	return (ssize_t)k;
}

static int add(struct ltx_merge *m, const struct buf *b)
{
	struct src s = {b, 0};
	return ltx_merge_add(m, src_read, &s);
}

static void test_merge_shrink_and_regrow(void)
{
	struct model m = {0}, base;
	struct buf f[5], out;
	uint32_t p1[] = {1, 2, 3, 4};
	uint8_t v1[] = {1, 2, 3, 4};
	tx(&m, 1, 4, p1, v1, 4, &f[0]);
	base = m;
	uint32_t p2[] = {2};
	uint8_t v2[] = {0x22};
	tx(&m, 2, 4, p2, v2, 1, &f[1]);
	uint32_t p3[] = {1};
	uint8_t v3[] = {0x31};
	tx(&m, 3, 2, p3, v3, 1, &f[2]); /* shrink to 2 pages */
	uint32_t p4[] = {3, 6};
	uint8_t v4[] = {0x43, 0x46};
	tx(&m, 4, 6, p4, v4, 2, &f[3]); /* regrow to 6: pages 4, 5 are zeros */
	uint32_t p5[] = {2};
	uint8_t v5[] = {0x52};
	tx(&m, 5, 6, p5, v5, 1, &f[4]);

	struct ltx_merge *mg = NULL;
	CHECK_RC(ltx_merge_new(&mg, 1 << 20), 0);
	CHECK_RC(add(mg, &f[0]), -EINVAL); /* a snapshot is not merged */
	for (int i = 1; i < 5; i++)
		CHECK_RC(add(mg, &f[i]), 0);
	CHECK_RC(add(mg, &f[2]), -ESTALE); /* does not follow */
	CHECK(ltx_merge_count(mg) == 4);
	struct ltx_header h;
	struct ltx_trailer t;
	buf_init(&out);
	CHECK_RC(ltx_merge_write(mg, LTX_FLAG_COMPRESS_LZ4, 7, buf_sink_write, &out, &h, &t), 0);
	ltx_merge_free(mg);
	CHECK(h.min_txid == 2 && h.max_txid == 5 && h.commit == 6 && h.epoch == 5);
	CHECK(h.timestamp == 5000 && h.node_id == 7);
	CHECK_EQ_U64(h.pre_apply_checksum, model_sum(&base));
	CHECK_EQ_U64(t.post_apply_checksum, model_sum(&m));

	/* apply the merged file to the state after tx 1: the state after tx 5 */
	struct ltx_decoder *d = NULL;
	struct src s = {&out, 0};
	CHECK_RC(ltx_decoder_new(&d, src_read, &s), 0);
	struct model got = base;
	uint8_t page[PS];
	uint32_t pgno, seen = 0;
	while (ltx_decoder_next_page(d, &pgno, page) == 1) {
		memcpy(got.pages[pgno], page, PS);
		seen++;
	}
	CHECK_RC(ltx_decoder_finish(d, NULL), 0);
	ltx_decoder_free(d);
	got.n = 6;
	CHECK(seen == 6); /* 1, 2, 3, 4 and 5 (zeros), 6 */
	for (uint32_t p = 1; p <= 6; p++)
		CHECK(memcmp(got.pages[p], m.pages[p], PS) == 0);
	CHECK_EQ_U64(model_sum(&got), t.post_apply_checksum);
	for (int i = 0; i < 5; i++)
		buf_free(&f[i]);
	buf_free(&out);
}

static void test_budget(void)
{
	struct model m = {0};
	struct buf f[3];
	uint32_t p1[] = {1, 2};
	uint8_t v1[] = {1, 2};
	tx(&m, 1, 2, p1, v1, 2, &f[0]);
	tx(&m, 2, 2, p1, v1, 2, &f[1]);
	tx(&m, 3, 2, p1, v1, 2, &f[2]);
	struct ltx_merge *mg = NULL;
	CHECK_RC(ltx_merge_new(&mg, PS), 0); /* one page's worth */
	CHECK_RC(add(mg, &f[1]), 0);	     /* the first always goes in */
	CHECK_RC(add(mg, &f[2]), -EFBIG);
	CHECK(ltx_merge_count(mg) == 1);
	uint64_t mn, mx;
	ltx_merge_range(mg, &mn, &mx);
	CHECK(mn == 2 && mx == 2);
	ltx_merge_free(mg);
	CHECK_RC(ltx_merge_new(&mg, PS), 0);
	struct buf out;
	buf_init(&out);
	CHECK_RC(ltx_merge_write(mg, 0, 0, buf_sink_write, &out, NULL, NULL), -ENODATA);
	ltx_merge_free(mg);
	for (int i = 0; i < 3; i++)
		buf_free(&f[i]);
	buf_free(&out);
}

int main(void)
{
	RUN(test_merge_shrink_and_regrow);
	RUN(test_budget);
	return UNIT_DONE();
}
