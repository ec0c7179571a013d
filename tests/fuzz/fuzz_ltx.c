/*
 * fuzz_ltx.c - feed arbitrary bytes to the LTX v1 decoder through a memory
 * read callback (in chunks whose size the input picks), and check:
 *   - no crash, leak or undefined behaviour on any input;
 *   - next_page() returns only 1, 0 or a negative errno, and errors stick;
 *   - every accepted file re-encodes to the same file checksum (the v1
 *     checksum covers logical content, so the compressor does not matter),
 *     and an accepted uncompressed file re-encodes to the same bytes (when
 *     its reserved header bytes are zero, as every writer leaves them).
 * Each uncompressed input is decoded a second time with its file checksum
 * fixed up, so that mutations reach the checks behind the checksum.
 */
#include "ltxfs/crc.h"
#include "ltxfs/ltx.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_KEPT (32u << 20) /* keep at most this much page data for the re-encode */

struct mem {
	const uint8_t *p;
	size_t len, pos, chunk;
};

static ssize_t mem_read(void *ctx, void *buf, size_t n)
{
	struct mem *m = ctx;
	size_t k = m->len - m->pos;

	if (k > n)
		k = n;
	if (k > m->chunk)
		k = m->chunk;
	memcpy(buf, m->p + m->pos, k);
	m->pos += k;
	return (ssize_t)k;
}

struct out {
	uint8_t *p;
	size_t len, cap;
};

static int out_write(void *ctx, const void *buf, size_t n)
{
	struct out *o = ctx;

	if (o->len + n > o->cap) {
		size_t cap = o->cap ? o->cap * 2 : 4096;
		while (cap < o->len + n)
			cap *= 2;
		uint8_t *p = realloc(o->p, cap);
		if (!p)
			return -ENOMEM;
		o->p = p;
		o->cap = cap;
	}
	memcpy(o->p + o->len, buf, n);
	o->len += n;
	return 0;
}

/* Re-encode what was decoded; the trailer must come out the same. */
static void reencode(const uint8_t *data, size_t size, const struct ltx_header *h,
		     const uint32_t *pgnos, const uint8_t *pages, size_t n,
		     const struct ltx_trailer *want)
{
	struct ltx_encoder *e = NULL;
	struct out o = {0};
	struct ltx_trailer t;

	if (ltx_encoder_new(&e, h, out_write, &o) < 0)
		abort();
	for (size_t i = 0; i < n; i++)
		if (ltx_encoder_add_page(e, pgnos[i], pages + i * h->page_size) < 0)
			abort();
	if (ltx_encoder_finish(e, want->post_apply_checksum, &t) < 0)
		abort();
	/* The reserved header bytes are hashed but not kept; we write them as zeros. */
	for (size_t i = 80; i < LTX_HEADER_SIZE; i++)
		if (data[i] != 0)
			goto out;
	if (t.file_checksum != want->file_checksum)
		abort();
	if (!(h->flags & LTX_FLAG_COMPRESS_LZ4) && (o.len != size || memcmp(o.p, data, size) != 0))
		abort();
out:
	ltx_encoder_free(e);
	free(o.p);
}

static void decode_one(const uint8_t *data, size_t size)
{
	struct mem m = {data, size, 0, 0};
	struct ltx_decoder *d = NULL;
	struct ltx_trailer t;
	uint32_t *pgnos = NULL;
	uint8_t *pages = NULL, *page = NULL;
	size_t n = 0, cap = 0;
	bool kept = true;
	uint32_t pgno;
	int rc;

	/* Read chunk size: derived from the input, without changing the file bytes. */
	m.chunk = size ? 1 + data[size / 2] % 200 : 1;
	if (size && (data[size - 1] & 0x80))
		m.chunk = SIZE_MAX;

	rc = ltx_decoder_new(&d, mem_read, &m);
	if (rc < 0) {
		if (d != NULL)
			abort();
		return;
	}
	const struct ltx_header h = *ltx_decoder_header(d);
	page = malloc(h.page_size);
	if (!page)
		abort();
	while ((rc = ltx_decoder_next_page(d, &pgno, page)) == 1) {
		if (pgno == 0 || pgno > h.commit)
			abort();
		if (!kept)
			continue;
		if ((n + 1) * (size_t)h.page_size > MAX_KEPT) {
			kept = false;
			continue;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			pgnos = realloc(pgnos, cap * sizeof(*pgnos));
			pages = realloc(pages, cap * (size_t)h.page_size);
			if (!pgnos || !pages)
				abort();
		}
		pgnos[n] = pgno;
		memcpy(pages + n * h.page_size, page, h.page_size);
		n++;
	}
	if (rc < 0) {
		/* Errors are sticky. */
		if (ltx_decoder_next_page(d, &pgno, page) != rc || ltx_decoder_finish(d, &t) != rc)
			abort();
		goto out;
	}
	if (rc != 0)
		abort();
	rc = ltx_decoder_finish(d, &t);
	if (rc == 0 && kept)
		reencode(data, size, &h, pgnos, pages, n, &t);
out:
	ltx_decoder_free(d);
	free(page);
	free(pages);
	free(pgnos);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *fixed;
	uint64_t c;

	decode_one(data, size);

	/*
	 * Mutations almost never keep the file checksum right, which hides the
	 * trailer, snapshot and re-encode paths. For an uncompressed file the
	 * hashed bytes are the file minus its last 8, so fix the checksum up and
	 * decode again.
	 */
	if (size < LTX_HEADER_SIZE + 4 + LTX_TRAILER_SIZE || (data[7] & LTX_FLAG_COMPRESS_LZ4))
		return 0;
	fixed = malloc(size);
	if (!fixed)
		abort();
	memcpy(fixed, data, size);
	c = LTX_CHECKSUM_FLAG | crc64_iso(0, fixed, size - 8);
	for (int i = 0; i < 8; i++)
		fixed[size - 8 + i] = (uint8_t)(c >> (56 - 8 * i));
	decode_one(fixed, size);
	free(fixed);
	return 0;
}
