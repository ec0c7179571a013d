/*
 * ltxring.h - the LTX ring: a preallocated file that holds copies of recent
 * LTX files, so that a rollback-mode commit is made durable by overwriting
 * blocks that already exist instead of by fsyncing a new inode (formats
 * layer; the design is in src/format/ltxring.c and docs/architecture.md §5).
 *
 * Ownership: ltx_ring_open() returns a ring that ltx_ring_free() (NULL ok)
 * closes. ltx_ring_load() returns a malloc'ed image the caller frees.
 *
 * Threads: a ring has no lock. Its owner (struct db) calls everything under
 * db->mu; its syncer thread fdatasyncs a duplicate of ltx_ring_fd() while no
 * record is being written.
 * Functions return 0 or -errno.
 */
#ifndef LTXFS_LTXRING_H
#define LTXFS_LTXRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LTX_RING_BLOCK	       4096u
#define LTX_RING_AREA	       (1u << 20)   /* bytes of records after the header block */
#define LTX_RING_MAX_LTX       (256u << 10) /* larger LTX files are fsynced as files */
#define LTX_RING_RECORD_HEADER 64u

/* A valid record of the ring's current epoch, as found by a scan. */
struct ltx_ring_record {
	uint64_t seq;	    /* appended after every record with a lower seq */
	uint64_t txid;	    /* the LTX file's max TXID */
	uint64_t off;	    /* of the record header in the ring file */
	const uint8_t *ltx; /* the LTX file's bytes (inside the scanned image) */
	size_t len;
};

/* Return 0 to go on, anything else stops the scan and is returned. */
typedef int (*ltx_ring_fn)(void *ctx, const struct ltx_ring_record *rec);

struct ltx_ring;

/*
 * Open the ring file at path. With create, a missing file, or one whose
 * header block is damaged or of another size, is (re)written: header plus
 * zeros, fdatasynced, and the directory fsynced; *ret_created tells (may be
 * NULL). Without create, a missing file is -ENOENT and a damaged one
 * -EBADMSG. An existing ring keeps its epoch, whose records a scan can read;
 * appending needs a new epoch first (ltx_ring_reset), else -ESTALE.
 */
int ltx_ring_open(struct ltx_ring **ret, const char *path, bool create, bool *ret_created);
void ltx_ring_free(struct ltx_ring *r);

/* The descriptor, for fdatasync on another thread (owned by the ring). */
int ltx_ring_fd(const struct ltx_ring *r);

/* Would a record of len LTX bytes fit between the write position and the end?
 * When not, the caller makes the files of all records durable and wraps. */
bool ltx_ring_fits(const struct ltx_ring *r, size_t len);
void ltx_ring_wrap(struct ltx_ring *r);

/* Write a record (not synced); *ret_off names it for ltx_ring_cancel.
 * -EFBIG if len exceeds LTX_RING_MAX_LTX, -ENOSPC if it does not fit,
 * -ESTALE on a ring opened from an existing file and not reset since. */
int ltx_ring_append(struct ltx_ring *r, uint64_t txid, const void *ltx, size_t len,
		    uint64_t *ret_off);

/* Zero the header of the record at off (not synced). */
int ltx_ring_cancel(struct ltx_ring *r, uint64_t off);

/* fdatasync the ring: an overwrite of allocated blocks, no inode change. */
int ltx_ring_sync(struct ltx_ring *r);

/* Start a new epoch: every record written so far stops counting. The
 * header is rewritten and fdatasynced; the next record goes first. On
 * failure the ring takes no more records (-ESTALE) until a reset succeeds. */
int ltx_ring_reset(struct ltx_ring *r);

/* Read the whole ring file (header block included) into *ret (malloc'ed). */
int ltx_ring_load(struct ltx_ring *r, uint8_t **ret, size_t *ret_len);

/*
 * Call fn for each valid record of the current epoch in a ring image (the
 * whole file). A damaged or foreign header is -EBADMSG; records that do not
 * verify are skipped. Untrusted bytes: fuzzed by fuzz_ltxring.
 */
int ltx_ring_scan(const uint8_t *img, size_t len, ltx_ring_fn fn, void *ctx);

#endif
