/*
 * ltx.h - the LTX v1 file format as LiteFS 0.5 writes it (formats layer).
 *
 * See docs/ltx.md for the byte tables. A file is a 100-byte header, a page
 * block (for each page in ascending pgno order: be32 pgno + page bytes, then a
 * 4-byte zero terminator; with LTX_FLAG_COMPRESS_LZ4 that whole block is one LZ4
 * frame), and a 16-byte trailer (post-apply checksum, file checksum). The file
 * checksum is LTX_CHECKSUM_FLAG | crc64 over header, the *uncompressed* page
 * block and the post-apply checksum, so it does not depend on the compressor.
 *
 * Pure code: bytes in, structs out. No threads, no I/O policy; I/O goes through
 * caller-supplied callbacks. Objects are not thread-safe; use one per thread.
 * All functions return 0 (or a positive count where stated) or -errno:
 *   -EINVAL   invalid argument or invalid header field
 *   -EBADMSG  corrupt data: bad magic, checksum mismatch, bad LZ4, rule broken
 *   -EPROTO   truncated input (EOF before the structure ended)
 *   -ENOMEM   out of memory
 *   other     whatever the read/write callback returned
 */
#ifndef LTXFS_LTX_H
#define LTXFS_LTX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define LTX_MAGIC	      "LTX1"
#define LTX_HEADER_SIZE	      100
#define LTX_TRAILER_SIZE      16
#define LTX_FLAG_COMPRESS_LZ4 0x1u
#define LTX_FILENAME_LEN      37 /* "%016x-%016x.ltx": 16 + 1 + 16 + 4 */

struct ltx_header {
	uint32_t flags;
	uint32_t page_size;
	uint32_t commit; /* database size in pages after apply; 0 = deleted */
	uint64_t min_txid;
	uint64_t max_txid;
	int64_t timestamp; /* ms since the Unix epoch */
	uint64_t pre_apply_checksum;
	int64_t wal_offset;
	int64_t wal_size;
	uint32_t wal_salt1;
	uint32_t wal_salt2;
	uint64_t node_id;
	uint64_t epoch; /* ltxfs: lease epoch of the writer, in LiteFS's reserved bytes 80..87 */
};

struct ltx_trailer {
	uint64_t post_apply_checksum;
	uint64_t file_checksum;
};

static inline bool ltx_header_is_snapshot(const struct ltx_header *h)
{
	return h->min_txid == 1;
}

/* True for 512..65536 powers of two. */
bool ltx_page_size_valid(uint32_t page_size);
/* Check every header rule of ltx.md 2 (v1 flags mask 0x1). 0 or -EINVAL. */
int ltx_header_validate(const struct ltx_header *h);
/* Serialize (no validation). */
void ltx_header_encode(const struct ltx_header *h, uint8_t out[LTX_HEADER_SIZE]);
/* Parse and validate: -EBADMSG for a bad magic, -EINVAL for an invalid field. */
int ltx_header_decode(struct ltx_header *h, const uint8_t in[LTX_HEADER_SIZE]);

/* "%016x-%016x.ltx" into buf (at least LTX_FILENAME_LEN + 1 bytes). */
void ltx_format_filename(char *buf, uint64_t min_txid, uint64_t max_txid);
/* Parse a file name of exactly that shape. 0 or -EINVAL. */
int ltx_parse_filename(const char *name, uint64_t *min_txid, uint64_t *max_txid);
/* 16 lowercase hex digits at s (no terminator needed) into *ret; 0 or -EINVAL. */
int ltx_parse_hex16(const char *s, uint64_t *ret);

/* Sink/source callbacks. write: 0 or -errno. read: bytes read (0 at EOF) or -errno. */
typedef int (*ltx_write_fn)(void *ctx, const void *buf, size_t n);
typedef ssize_t (*ltx_read_fn)(void *ctx, void *buf, size_t n);

/*
 * Encoder. ltx_encoder_new() validates the header and writes it. Pages must
 * come in strictly ascending pgno order, pgno <= commit, never the lock page;
 * a snapshot must supply every page 1..commit except the lock page (checked in
 * finish). finish() writes the terminator and trailer and returns the trailer.
 * The encoder never takes ownership of ctx. Free with ltx_encoder_free (NULL ok).
 */
struct ltx_encoder;
int ltx_encoder_new(struct ltx_encoder **ret, const struct ltx_header *h, ltx_write_fn fn,
		    void *ctx);
int ltx_encoder_add_page(struct ltx_encoder *e, uint32_t pgno, const void *page);
/* The same, with crc = ltx_page_crc(pgno, page) already computed by the caller
 * (it is folded into the file checksum instead of a second pass). */
int ltx_encoder_add_page_crc(struct ltx_encoder *e, uint32_t pgno, const void *page, uint64_t crc);
int ltx_encoder_finish(struct ltx_encoder *e, uint64_t post_apply_checksum,
		       struct ltx_trailer *ret);
void ltx_encoder_free(struct ltx_encoder *e);

/*
 * Decoder. ltx_decoder_new() reads and validates the header. next_page()
 * returns 1 with a page in *pgno/page (page_size bytes), 0 after the
 * terminator. finish() reads the trailer, requires EOF, and checks the file
 * checksum and, for snapshots, that the pages XOR to the post-apply checksum.
 * The decoder enforces every rule the encoder does (order, pgno <= commit, no
 * lock page, snapshot completeness, exact page length, exactly one LZ4 frame)
 * and bounds every allocation by the page size.
 */
struct ltx_decoder;
int ltx_decoder_new(struct ltx_decoder **ret, ltx_read_fn fn, void *ctx);
const struct ltx_header *ltx_decoder_header(const struct ltx_decoder *d);
int ltx_decoder_next_page(struct ltx_decoder *d, uint32_t *pgno, void *page);
/* The page checksum (ltx_page_checksum) of the page next_page last returned. */
uint64_t ltx_decoder_page_checksum(const struct ltx_decoder *d);
int ltx_decoder_finish(struct ltx_decoder *d, struct ltx_trailer *ret);
void ltx_decoder_free(struct ltx_decoder *d);

/* Convenience: fd-backed callbacks (ctx points to an int fd). */
int ltx_fd_write(void *ctx, const void *buf, size_t n);
ssize_t ltx_fd_read(void *ctx, void *buf, size_t n);
/* A file held in memory, read from off on (ctx points to a struct ltx_mem). */
struct ltx_mem {
	const void *p;
	size_t n, off;
};
ssize_t ltx_mem_read(void *ctx, void *buf, size_t n);

/* Decode a whole file from fd (current offset) and verify it. hdr/tr may be NULL. */
int ltx_verify_fd(int fd, struct ltx_header *hdr, struct ltx_trailer *tr);

#endif
