/*
 * fuzz_sqlfmt_wal.c - feed bytes to sqlfmt as a WAL: parse the header, then
 * walk the frames verifying the cumulative checksum the way walIndexRecover()
 * does. If the header does not parse, its raw fields are used anyway so the
 * frame code is reached without a valid header checksum. Also runs the
 * database-header parser over the same bytes.
 */
#include "ltxfs/sqlfmt.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sqlite_dbheader dh;
	struct wal_header h;
	uint32_t s1, s2;

	if (sqlite_dbheader_parse(&dh, data, size) == 0) {
		if (dh.page_size < 512 || dh.page_size > 65536 ||
		    (dh.page_size & (dh.page_size - 1)))
			abort();
	}
	if (size >= 8) {
		s1 = s2 = 0;
		wal_checksum(data[0] & 1, data, size & ~(size_t)7, &s1, &s2);
	}
	if (size < WAL_HEADER_SIZE)
		return 0;

	if (wal_header_parse(&h, data) == 0) {
		/* A parsed header is self-consistent. */
		s1 = s2 = 0;
		wal_checksum(h.big_endian, data, 24, &s1, &s2);
		if (s1 != h.cksum1 || s2 != h.cksum2 || h.version != 3007000 ||
		    h.big_endian != (h.magic & 1) || (h.magic & ~1u) != WAL_MAGIC_LE)
			abort();
	} else {
		memset(&h, 0, sizeof(h));
		h.magic = be32(data);
		h.big_endian = h.magic & 1;
		h.page_size = 512u << (data[8] % 8); /* 512..65536 */
		h.salt1 = be32(data + 16);
		h.salt2 = be32(data + 20);
		h.cksum1 = be32(data + 24);
		h.cksum2 = be32(data + 28);
	}

	s1 = h.cksum1;
	s2 = h.cksum2;
	for (uint64_t i = 0;; i++) {
		uint64_t off = wal_frame_offset(h.page_size, i);
		struct wal_frame_header f;
		uint32_t b1 = s1, b2 = s2;

		if (off + WAL_FRAME_HEADER_SIZE + h.page_size > size)
			break;
		wal_frame_header_parse(&f, data + off);
		if (!wal_frame_verify(&h, &s1, &s2, data + off,
				      data + off + WAL_FRAME_HEADER_SIZE)) {
			if (s1 != b1 || s2 != b2)
				abort(); /* must be left alone */
			break;
		}
		if (f.pgno == 0 || f.salt1 != h.salt1 || f.salt2 != h.salt2 || s1 != f.cksum1 ||
		    s2 != f.cksum2)
			abort();
	}
	return 0;
}
