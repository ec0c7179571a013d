/* unit.h - a minimal assertion harness for the C unit tests. */
#ifndef LTXFS_UNIT_H
#define LTXFS_UNIT_H

#include <inttypes.h>
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
			fprintf(stderr, "%s:%d: %s == %s failed: 0x%016" PRIx64 " != 0x%016" PRIx64 \
				"\n", __FILE__, __LINE__, #a, #b, a_, b_);                         \
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
		fprintf(stderr, "%s %s\n", unit_failures == before_ ? "ok  " : "FAIL", #fn);      \
	} while (0)

#define UNIT_DONE() (unit_failures ? 1 : 0)

#endif
