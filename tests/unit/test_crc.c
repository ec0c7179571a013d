/*
 * test_crc.c - CRC-64/GO-ISO, page and database checksums against the
 * vectors of ltx.md 6 and 10.1.
 */
#include "unit.h"

#include "ltxfs/crc.h"

#include <pthread.h>
#include <time.h>

/* Bit-at-a-time reference straight from the parameters (ltx.md 6.1). */
static uint64_t crc_ref(uint64_t crc, const uint8_t *p, size_t n)
{
	crc = ~crc;
	while (n--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc & 1) ? (crc >> 1) ^ UINT64_C(0xD800000000000000) : crc >> 1;
	}
	return ~crc;
}

/* Database checksum of pages 1..n, each page_size bytes of fill[i] (lock page skipped). */
static uint64_t db_checksum(const uint8_t *fill, uint32_t n, uint32_t page_size)
{
	uint8_t *page = malloc(page_size);
	uint64_t c = 0;

	for (uint32_t i = 0; i < n; i++) {
		if (i + 1 == ltx_lock_pgno(page_size))
			continue;
		memset(page, fill[i], page_size);
		c ^= ltx_page_checksum(i + 1, page, page_size);
	}
	free(page);
	return LTX_CHECKSUM_FLAG | c;
}

static void *thread_check(void *arg)
{
	*(uint64_t *)arg = crc64_iso(0, "123456789", 9);
	return NULL;
}

/* First use from several threads at once: the lazy table init must be safe. */
static void test_first_use_threads(void)
{
	pthread_t th[4];
	uint64_t got[4] = {0};

	for (int i = 0; i < 4; i++)
		CHECK(pthread_create(&th[i], NULL, thread_check, &got[i]) == 0);
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		CHECK_EQ_U64(got[i], 0xB90956C775A41001);
	}
}

static void test_check_value(void)
{
	CHECK_EQ_U64(crc64_iso(0, "123456789", 9), 0xB90956C775A41001);
	CHECK_EQ_U64(crc64_iso(0, "", 0), 0);
	CHECK_EQ_U64(crc64_iso(0, NULL, 0), 0);
	CHECK_EQ_U64(crc_ref(0, (const uint8_t *)"123456789", 9), 0xB90956C775A41001);
}

/* Chaining: crc(crc(a), b) == crc(a || b) at every split point. */
static void test_chaining(void)
{
	const char *s = "123456789";
	uint8_t buf[300];

	for (size_t i = 0; i <= 9; i++)
		CHECK_EQ_U64(crc64_iso(crc64_iso(0, s, i), s + i, 9 - i), 0xB90956C775A41001);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	uint64_t whole = crc64_iso(0, buf, sizeof(buf));
	for (size_t i = 0; i <= sizeof(buf); i++)
		CHECK_EQ_U64(crc64_iso(crc64_iso(0, buf, i), buf + i, sizeof(buf) - i), whole);
}

/* The table method against the bitwise reference at every alignment and short length. */
static void test_against_reference(void)
{
	uint8_t buf[1024 + 16];
	uint64_t x = 0x9E3779B97F4A7C15;

	for (size_t i = 0; i < sizeof(buf); i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf[i] = (uint8_t)x;
	}
	for (size_t off = 0; off < 16; off++)
		for (size_t n = 0; n <= 70; n++)
			CHECK_EQ_U64(crc64_iso(0, buf + off, n), crc_ref(0, buf + off, n));
	for (size_t off = 0; off < 8; off++)
		CHECK_EQ_U64(crc64_iso(0, buf + off, 1024), crc_ref(0, buf + off, 1024));
	CHECK_EQ_U64(crc64_iso(0x1234, buf, 333), crc_ref(0x1234, buf, 333));
}

static void test_lock_pgno(void)
{
	CHECK_RC(ltx_lock_pgno(512), 2097153);
	CHECK_RC(ltx_lock_pgno(1024), 1048577);
	CHECK_RC(ltx_lock_pgno(4096), 262145);
	CHECK_RC(ltx_lock_pgno(65536), 16385);
	CHECK_RC(ltx_lock_pgno(0), 0);
}

/* ltx.md 10.1 and 10.2 database checksums. */
static void test_db_vectors(void)
{
	/* ltx:ltx_test.go TestChecksumReader: 3 x 512 B of 0x01, 0x02, 0x03. */
	CHECK_EQ_U64(db_checksum((const uint8_t[]){1, 2, 3}, 3, 512), 0xefffffffecd99000);
	/* TestDecoder: 1024 B pages "2", "3". */
	CHECK_EQ_U64(db_checksum((const uint8_t[]){'2', '3'}, 2, 1024), 0xe1899b6d587aaaaa);
	/* DecodeDatabaseTo/OK: 512 B pages "2", "3"; and the XOR-delta collision of ltx.md 12.2. */
	CHECK_EQ_U64(db_checksum((const uint8_t[]){'2', '3'}, 2, 512), 0x8b87423eeeeeeeee);
	CHECK_EQ_U64(db_checksum((const uint8_t[]){0x03, 0x02}, 2, 512), 0x8b87423eeeeeeeee);
	/* compactor_test.go */
	CHECK_EQ_U64(db_checksum((const uint8_t[]){0x81, 0x82, 0x83}, 3, 1024), 0x8a249272ad9f7dea);
	CHECK_EQ_U64(db_checksum((const uint8_t[]){0x81}, 1, 1024), 0xeb953fc47685d740);
	CHECK_EQ_U64(db_checksum((const uint8_t[]){'1'}, 1, 512), 0xeb1a999231044ddd);
	/* litefs:backup_client_test.go */
	CHECK_EQ_U64(db_checksum((const uint8_t[]){0x01}, 1, 512), 0xe4e4aaa102377eee);
	CHECK_EQ_U64(db_checksum((const uint8_t[]){0x05}, 1, 512), 0x99b1d11ab98cc555);
	/* ltx.md 10.2: the snapshot (pages 0x01, 0x02) and the incremental (page 2 = 0x03). */
	CHECK_EQ_U64(db_checksum((const uint8_t[]){0x01, 0x02}, 2, 512), 0xad2dffe333333333);
	CHECK_EQ_U64(db_checksum((const uint8_t[]){0x01, 0x03}, 2, 512), 0xa678a10ddddddddd);
	/* An empty database (ltx.md 6.2, LiteFS convention). */
	CHECK_EQ_U64(db_checksum(NULL, 0, 512), 0x8000000000000000);
}

/*
 * ltx.md 6.2 lock-page vector: 4096 B pages, commit = lock + 10, all 'x', the
 * lock page zero. Excluded gives 0xc19b668c376662c7, included 0xacacffacd92fc33c.
 * Computed page by page (1 GiB of input, one page of memory).
 */
static void test_lock_page_vector(void)
{
	const uint32_t ps = 4096, lock = ltx_lock_pgno(ps), commit = lock + 10;
	uint8_t *page = malloc(ps), *zero = calloc(1, ps);
	uint64_t c = 0;

	CHECK_RC(commit, 262155);
	memset(page, 'x', ps);
	for (uint32_t p = 1; p <= commit; p++)
		if (p != lock)
			c ^= ltx_page_checksum(p, page, ps);
	CHECK_EQ_U64(LTX_CHECKSUM_FLAG | c, 0xc19b668c376662c7);
	c ^= ltx_page_checksum(lock, zero, ps);
	CHECK_EQ_U64(LTX_CHECKSUM_FLAG | c, 0xacacffacd92fc33c);
	free(page);
	free(zero);
}

static void test_page_checksum_definition(void)
{
	uint8_t page[512], buf[516];

	memset(page, 0xab, sizeof(page));
	buf[0] = 0x01;
	buf[1] = 0x02;
	buf[2] = 0x03;
	buf[3] = 0x04;
	memcpy(buf + 4, page, sizeof(page));
	CHECK_EQ_U64(ltx_page_checksum(0x01020304, page, sizeof(page)),
		     LTX_CHECKSUM_FLAG | crc_ref(0, buf, sizeof(buf)));
}

/* crc(a || b) from crc(a), crc(b) and len(b), for many lengths, twice each (the cache). */
static void test_combine(void)
{
	uint8_t buf[70000];
	uint32_t x = 12345;
	for (size_t i = 0; i < sizeof(buf); i++) {
		x = x * 1103515245u + 12345u;
		buf[i] = (uint8_t)(x >> 16);
	}
	static const size_t lens[] = {1, 2, 3, 7, 8, 100, 516, 1028, 4100, 8196, 65540, 69000};
	for (int round = 0; round < 2; round++)
		for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
			size_t la = 777 + i, lb = lens[i];
			if (la + lb > sizeof(buf))
				la = sizeof(buf) - lb;
			uint64_t a = crc64_iso(0, buf, la), b = crc64_iso(0, buf + la, lb);
			CHECK_EQ_U64(crc64_combine(a, b, lb), crc64_iso(0, buf, la + lb));
		}
	CHECK_EQ_U64(crc64_combine(42, 7, 0), 42);
	CHECK_EQ_U64(LTX_CHECKSUM_FLAG | ltx_page_crc(9, buf, 4096),
		     ltx_page_checksum(9, buf, 4096));
}

/* Not a pass/fail check: prints throughput so regressions are visible in the log. */
static void test_speed(void)
{
	size_t n = 64u << 20;
	uint8_t *buf = malloc(n);
	struct timespec a, b;
	uint64_t c;

	memset(buf, 0x5a, n);
	clock_gettime(CLOCK_MONOTONIC, &a);
	c = crc64_iso(0, buf, n);
	clock_gettime(CLOCK_MONOTONIC, &b);
	double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
	fprintf(stderr, "crc64_iso: %.0f MB/s (%016" PRIx64 ")\n", (double)n / 1e6 / s, c);
	free(buf);
}

int main(void)
{
	RUN(test_first_use_threads);
	RUN(test_check_value);
	RUN(test_chaining);
	RUN(test_against_reference);
	RUN(test_lock_pgno);
	RUN(test_db_vectors);
	RUN(test_page_checksum_definition);
	RUN(test_lock_page_vector);
	RUN(test_combine);
	RUN(test_speed);
	return UNIT_DONE();
}
