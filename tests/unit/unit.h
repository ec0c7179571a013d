/*
 * unit.h - a minimal assertion harness for the C unit tests, and the byte
 * buffer they share.
 *
 * A test program is a main() that calls RUN(test_case) for each case and
 * returns UNIT_DONE(). CHECK* macros count a failure and go on (a case runs
 * to its end); RUN prints "ok   <case>" or "FAIL <case>" on stderr, one line
 * per case, which tests/run.sh counts. A program that crashes or exits
 * non-zero without a FAIL line counts as one failure there. Single-threaded:
 * CHECK from another thread races on unit_failures.
 */
#ifndef LTXFS_UNIT_H
#define LTXFS_UNIT_H

#include "ltxfs/byteorder.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int unit_failures;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
			unit_failures++;                                                           \
		}                                                                                  \
	} while (0)

#define CHECK_EQ_U64(a, b)                                                                         \
	do {                                                                                       \
		uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);                                   \
		if (a_ != b_) {                                                                    \
			fprintf(stderr,                                                            \
				"%s:%d: %s == %s failed: 0x%016" PRIx64 " != 0x%016" PRIx64 "\n",  \
				__FILE__, __LINE__, #a, #b, a_, b_);                               \
			unit_failures++;                                                           \
		}                                                                                  \
	} while (0)

#define CHECK_RC(expr, want)                                                                       \
	do {                                                                                       \
		long r_ = (long)(expr);                                                            \
		if (r_ != (long)(want)) {                                                          \
			fprintf(stderr, "%s:%d: %s returned %ld, want %ld\n", __FILE__, __LINE__,  \
				#expr, r_, (long)(want));                                          \
			unit_failures++;                                                           \
		}                                                                                  \
	} while (0)

#define RUN(fn)                                                                                    \
	do {                                                                                       \
		int before_ = unit_failures;                                                       \
		fn();                                                                              \
		fprintf(stderr, "%s %s\n", unit_failures == before_ ? "ok  " : "FAIL", #fn);       \
	} while (0)

#define UNIT_DONE() (unit_failures ? 1 : 0)

/*
 * struct buf: a growable byte buffer the tests build files and LTX streams
 * in. It doubles as a write sink (buf_sink_write, the callback shape of
 * ltx_encoder_new) that counts writes and can fail once the total would pass
 * fail_at. Multi-byte integers go in big-endian, the order of every format
 * under test (byteorder.h). buf_init before use; buf_free takes a freed or
 * zeroed buffer. Allocation failure aborts: a test has no better answer.
 */
struct buf {
	uint8_t *p;
	size_t len, cap;
	size_t writes, max_write; /* sink: calls and the largest one */
	long fail_at;		  /* sink: fail once the total would pass this (-1: never) */
	int fail_rc;		  /* sink: what the failing call returns */
};

static inline void buf_init(struct buf *b)
{
	memset(b, 0, sizeof(*b));
	b->fail_at = -1;
}

static inline void buf_put(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		b->p = realloc(b->p, cap);
		if (!b->p)
			abort();
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static inline void buf_u32(struct buf *b, uint32_t v)
{
	uint8_t be[4];

	put_be32(be, v);
	buf_put(b, be, 4);
}

static inline void buf_u64(struct buf *b, uint64_t v)
{
	uint8_t be[8];

	put_be64(be, v);
	buf_put(b, be, 8);
}

static inline void buf_fill(struct buf *b, uint8_t c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		buf_put(b, &c, 1);
}

static inline void buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

static inline int buf_sink_write(void *ctx, const void *p, size_t n)
{
	struct buf *b = ctx;

	if (b->fail_at >= 0 && b->len + n > (size_t)b->fail_at)
		return b->fail_rc;
	buf_put(b, p, n);
	b->writes++;
	if (n > b->max_write)
		b->max_write = n;
	return 0;
}

/* The whole file at path into b (initialised here). false if it cannot be read. */
static inline bool buf_slurp(const char *path, struct buf *b)
{
	FILE *f = fopen(path, "rb");
	uint8_t chunk[65536];
	size_t n;
	bool ok;

	buf_init(b);
	if (!f)
		return false;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		buf_put(b, chunk, n);
	ok = !ferror(f);
	fclose(f);
	if (!ok)
		buf_free(b);
	return ok;
}

#endif
