/*
 * crc.h - CRC-64/GO-ISO and the LTX page and database checksums (base layer).
 *
 * CRC parameters (ltx.md 6.1): reflected polynomial 0xD800000000000000, init and
 * xorout all ones, so that crc64_iso(0, "123456789", 9) == 0xB90956C775A41001 and
 * crc64_iso(crc64_iso(0, a, n), b, m) == crc64_iso(0, a||b, n+m) (Go's Hash64).
 *
 * Page checksum: LTX_CHECKSUM_FLAG | crc64(be32(pgno) || page).
 * Database checksum: LTX_CHECKSUM_FLAG | XOR of the page checksums of pages
 * 1..N, the lock page excluded; an empty database is LTX_CHECKSUM_FLAG.
 * Thread-safe, no allocation.
 */
#ifndef LTXFS_CRC_H
#define LTXFS_CRC_H

#include <stddef.h>
#include <stdint.h>

#define LTX_CHECKSUM_FLAG (UINT64_C(1) << 63)
/* SQLite's PENDING_BYTE: the page that holds it is never stored or checksummed. */
#define SQLITE_PENDING_BYTE 0x40000000u

uint64_t crc64_iso(uint64_t crc, const void *buf, size_t n);
uint64_t ltx_page_checksum(uint32_t pgno, const void *page, uint32_t page_size);
/* crc64(be32(pgno) || page) without the flag: the page checksum is
 * LTX_CHECKSUM_FLAG | this, and crc64_combine folds it into a file's CRC. */
uint64_t ltx_page_crc(uint32_t pgno, const void *page, uint32_t page_size);
/* crc64_iso(0, a || b) from crc1 = crc64_iso(0, a), crc2 = crc64_iso(0, b)
 * and len2 = the length of b; about 100 ns for a length seen before. */
uint64_t crc64_combine(uint64_t crc1, uint64_t crc2, size_t len2);
/* PENDING_BYTE / page_size + 1 */
uint32_t ltx_lock_pgno(uint32_t page_size);

#endif
