/*
 * ltxmerge.h - several consecutive LTX files merged into one that covers
 * their whole TXID range (formats layer).
 *
 * The merged file (docs/backup.md, "Objects") has the first file's min TXID
 * and pre-apply checksum, the last file's max TXID, commit, timestamp and
 * post-apply checksum, the highest epoch of its inputs, and for every page
 * the newest image among the inputs. Pages a shrinking commit cut off, and
 * not written again after, are zeros when the database grew back (what
 * applying the files one by one leaves in the file). Applying it to the
 * state before the first file gives the state after the last one, which the
 * post-apply checksum lets the applier verify.
 *
 * Inputs must chain: each file's min TXID follows the previous max, and its
 * pre-apply checksum is the previous post-apply checksum (else -ESTALE, and
 * the file is not added); all share a page size (-ESTALE). Snapshots are
 * not merged (-EINVAL). The page images are held in memory: an add that
 * would pass max_bytes of pages is refused with -EFBIG unless it is the
 * first file. Pure code, one thread per object.
 */
#ifndef LTXFS_LTXMERGE_H
#define LTXFS_LTXMERGE_H

#include "ltxfs/ltx.h"

#include <stddef.h>
#include <stdint.h>

struct ltx_merge;

int ltx_merge_new(struct ltx_merge **ret, size_t max_bytes);
void ltx_merge_free(struct ltx_merge *m);

/* Decode one whole file through fn/ctx (verified in full) and add it. */
int ltx_merge_add(struct ltx_merge *m, ltx_read_fn fn, void *ctx);
/* Files added so far, and the range they cover (0 and 0 when none). */
size_t ltx_merge_count(const struct ltx_merge *m);
void ltx_merge_range(const struct ltx_merge *m, uint64_t *min_txid, uint64_t *max_txid);

/*
 * Write the merged file through fn/ctx. flags: LTX_FLAG_COMPRESS_LZ4 or 0;
 * node_id goes into the header. *ret_h and *ret_t (may be NULL) get its
 * header and trailer. -ENODATA when nothing was added.
 */
int ltx_merge_write(struct ltx_merge *m, uint32_t flags, uint64_t node_id, ltx_write_fn fn,
		    void *ctx, struct ltx_header *ret_h, struct ltx_trailer *ret_t);

#endif
