/*
 * fuzz_ltxring.c - feed bytes to the LTX ring scanner (ltx_ring_scan), which
 * start-up recovery runs over a ring file a crash may have left in any state.
 *
 * The first byte picks how the image is made:
 *   0  the bytes as they are (the header parser);
 *   1  a valid header block of a real ring, then the bytes (record parsing
 *      with the right epoch but arbitrary headers and CRCs);
 *   2  a valid header block, then the bytes cut into records that are framed
 *      and CRC'ed as ltx_ring_append would write them (a two-byte length,
 *      so records span several blocks, the payload taken cyclically from
 *      the input), each followed by a byte that, if not zero, flips one of
 *      the record's header bytes (valid records next to damaged ones).
 * Every record reported must lie inside the image and respect the limits; in
 * mode 2 with nothing flipped, every framed record must be reported.
 */
#include "ltxfs/crc.h"
#include "ltxfs/ltxring.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t g_hdr[LTX_RING_BLOCK];
static uint64_t g_epoch;

struct ctx {
	const uint8_t *img;
	size_t len;
	size_t n;
};

static int check(void *arg, const struct ltx_ring_record *rec)
{
	struct ctx *c = arg;
	if (rec->off < LTX_RING_BLOCK || rec->off % LTX_RING_BLOCK || rec->len > LTX_RING_MAX_LTX ||
	    rec->ltx != c->img + rec->off + LTX_RING_RECORD_HEADER ||
	    rec->off + LTX_RING_RECORD_HEADER + rec->len > c->len)
		abort();
	c->n++;
	return 0;
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void setup(void)
{
	char path[64];
	struct ltx_ring *r;
	uint8_t *img;
	size_t n;
	snprintf(path, sizeof(path), "/tmp/fuzz-ltxring-%d", (int)getpid());
	if (ltx_ring_open(&r, path, true, NULL) < 0 || ltx_ring_load(r, &img, &n) < 0)
		abort();
	memcpy(g_hdr, img, sizeof(g_hdr));
	for (int i = 7; i >= 0; i--)
		g_epoch = g_epoch << 8 | g_hdr[24 + i];
	free(img);
	ltx_ring_free(r);
	unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	if (!ready) {
		setup();
		ready = 1;
	}
	if (size == 0)
		return 0;
	int mode = data[0] % 3;
	data++;
	size--;
	struct ctx c = {0};
	if (mode == 0) {
		c.img = data;
		c.len = size;
		(void)ltx_ring_scan(data, size, check, &c);
		return 0;
	}
	if (size > 4096)
		size = 4096; /* mode 2 makes up to a block and a half of image per byte */
	size_t cap = LTX_RING_BLOCK + (mode == 1 ? size : size * 3 * LTX_RING_BLOCK);
	uint8_t *img = calloc(1, cap);
	if (!img)
		return 0;
	memcpy(img, g_hdr, LTX_RING_BLOCK);
	size_t len = LTX_RING_BLOCK, framed = 0;
	int flipped = 0;
	if (mode == 1) {
		memcpy(img + len, data, size);
		len += size;
	} else {
		/* records: a two-byte length (up to 12 KiB), that many payload
		 * bytes (from the input, cyclically), a flip byte */
		size_t i = 0;
		while (i + 2 <= size) {
			size_t n = ((size_t)data[i] | (size_t)data[i + 1] << 8) % (12 * 1024);
			i += 2;
			uint8_t *h = img + len;
			if (len + LTX_RING_RECORD_HEADER + n > cap)
				break;
			memcpy(h, "LTXRREC1", 8);
			put64(h + 8, g_epoch);
			put64(h + 16, framed + 1);
			put64(h + 24, framed + 100);
			put64(h + 32, n);
			for (size_t k = 0; k < n; k++)
				h[LTX_RING_RECORD_HEADER + k] = data[(i + k) % size];
			put64(h + 56,
			      crc64_iso(crc64_iso(0, h, 56), h + LTX_RING_RECORD_HEADER, n));
			i += n < 16 ? n : 16;
			if (i < size) {
				uint8_t f = data[i++];
				if (f) {
					h[(f % 13) * 5 % LTX_RING_RECORD_HEADER] ^= f;
					flipped = 1;
				}
			}
			len += (LTX_RING_RECORD_HEADER + n + LTX_RING_BLOCK - 1) / LTX_RING_BLOCK *
			       LTX_RING_BLOCK;
			framed++;
		}
	}
	c.img = img;
	c.len = len;
	if (ltx_ring_scan(img, len, check, &c) != 0)
		abort(); /* the header is valid */
	if (mode == 2 && !flipped && c.n != framed)
		abort();
	free(img);
	return 0;
}
