/*
 * bkplan.h - the choices made over a database's backup objects, as pure
 * functions of their levels, TXID ranges and times (format layer): which
 * objects a restore applies, which ones retention deletes. No S3, no
 * clock: the caller lists the bucket and passes "now". docs/backup.md,
 * "Snapshots and retention", gives the argument.
 *
 * An object is a level, a TXID range and the time it was written (S3's
 * LastModified, or the upload time for an object this process wrote).
 * Levels 0-8 hold transactions min..max (0: one upload, 1-8: compacted);
 * level 9 (BKPLAN_SNAPSHOT) is a whole database at max (min is 1).
 *
 * Indices are into the caller's array, in any order; nothing is kept.
 */
#ifndef LTXFS_BKPLAN_H
#define LTXFS_BKPLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BKPLAN_SNAPSHOT 9

struct bkplan_obj {
	int level;
	uint64_t min_txid, max_txid;
	int64_t time_ms; /* when it was written, ms since the epoch */
};

/*
 * The snapshot a restore to limit starts from (UINT64_MAX: the latest):
 * the one with the highest max TXID at or below limit, the latest written
 * among equals. n when there is none.
 */
size_t bkplan_snapshot(const struct bkplan_obj *v, size_t n, uint64_t limit);

/*
 * The object a restore applies after TXID cur: the incremental object
 * (levels 0-8) that starts at cur + 1 and ends furthest without passing
 * limit; among objects ending at the same TXID, the highest level (one
 * compacted object instead of several). n when there is none.
 */
size_t bkplan_next(const struct bkplan_obj *v, size_t n, uint64_t cur, uint64_t limit);

/*
 * The chain a restore applies from the snapshot v[snap]: bkplan_next
 * repeatedly. Indices into out (room for n + 1), the snapshot first; the
 * count is returned. The chain ends at a gap or at limit.
 */
size_t bkplan_chain(const struct bkplan_obj *v, size_t n, size_t snap, uint64_t limit, size_t *out);

/*
 * Compaction of `level` into level + 1: the run of level objects to merge,
 * indices into out (room for n), oldest first; the count, or 0 when there
 * are fewer than two. The run ends at the highest TXID an object of the
 * level holds and goes back through objects that each end right before the
 * next one starts (the latest written among several), down to the end of
 * the highest object of a higher level, snapshots included: what a
 * previous compaction covered is not taken again, and no compacted object
 * spans a snapshot (a restore from that snapshot needs the objects starting
 * right after it).
 */
size_t bkplan_compact(const struct bkplan_obj *v, size_t n, int level, size_t *out);

/*
 * Retention: which objects are no longer needed to restore any point in
 * the window [now - retention, now]. Deleted:
 *   1. with S the snapshot written last at or before the window's start:
 *      every other object ending at or below S's TXID and written no
 *      later than S (a restore into the window starts from S or later);
 *   2. an object covered by an object of a higher level (1-8) that was
 *      written at or before the window's start, and written no later than
 *      it (the window's restores reach past the compacted object's end);
 * but never what the latest restore applies (the newest snapshot's chain).
 *
 * del[i] is set for each object to delete (del has n entries); the count
 * goes to *ret_n. *ret_next_ms is when the answer can change next without
 * a new object: the time a snapshot or a compacted object leaves the window's start (INT64_MAX:
 * never). 0 or -ENOMEM.
 */
int bkplan_retention(const struct bkplan_obj *v, size_t n, int64_t now_ms, int64_t retention_ms,
		     bool *del, size_t *ret_n, int64_t *ret_next_ms);

#endif
