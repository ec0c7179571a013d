/* Restore's chain and retention's choice (include/ltxfs/bkplan.h): pure
 * functions over levels, TXID ranges and times. */
#include "unit.h"

#include "ltxfs/bkplan.h"

#define S    BKPLAN_SNAPSHOT
#define N(a) (sizeof(a) / sizeof((a)[0]))

static void test_snapshot_choice(void)
{
	struct bkplan_obj v[] = {
	    {S, 1, 10, 100}, {0, 11, 12, 110}, {S, 1, 20, 200}, {S, 1, 20, 150}, {0, 13, 20, 140}};
	CHECK_EQ_U64(bkplan_snapshot(v, N(v), UINT64_MAX), 2); /* highest TXID, latest written */
	CHECK_EQ_U64(bkplan_snapshot(v, N(v), 19), 0);
	CHECK_EQ_U64(bkplan_snapshot(v, N(v), 9), N(v)); /* none */
	CHECK_EQ_U64(bkplan_snapshot(v, 0, UINT64_MAX), 0);
}

static void test_chain_contiguous_with_limit_and_gap(void)
{
	struct bkplan_obj v[] = {{S, 1, 5, 0},	 {0, 6, 6, 1},	 {0, 7, 9, 2},
				 {0, 10, 12, 3}, {0, 14, 15, 4}, /* gap at 13 */
				 {0, 7, 8, 2}};
	size_t out[N(v) + 1];
	size_t k = bkplan_chain(v, N(v), 0, UINT64_MAX, out);
	CHECK_EQ_U64(k, 4);
	CHECK(out[0] == 0 && out[1] == 1 && out[2] == 2 && out[3] == 3);
	/* a limit inside 7-9: the object ending at 8 instead */
	k = bkplan_chain(v, N(v), 0, 8, out);
	CHECK_EQ_U64(k, 3);
	CHECK(out[2] == 5);
	/* a limit no object ends at stops short of it */
	k = bkplan_chain(v, N(v), 0, 11, out);
	CHECK_EQ_U64(v[out[k - 1]].max_txid, 9);
}

static void test_chain_prefers_the_highest_level(void)
{
	struct bkplan_obj v[] = {{S, 1, 5, 0}, {0, 6, 7, 1},   {0, 8, 9, 2},   {0, 10, 11, 3},
				 {1, 6, 9, 4}, {0, 12, 12, 5}, {1, 10, 12, 6}, {2, 6, 12, 7}};
	size_t out[N(v) + 1];
	size_t k = bkplan_chain(v, N(v), 0, UINT64_MAX, out);
	CHECK_EQ_U64(k, 2); /* the level-2 object covers 6-12 alone */
	CHECK_EQ_U64(out[1], 7);
	/* up to 11: the L1 6-9 then the L0 10-11 (L1 10-12 and L2 pass the limit) */
	k = bkplan_chain(v, N(v), 0, 11, out);
	CHECK_EQ_U64(k, 3);
	CHECK(out[1] == 4 && out[2] == 3);
}

static void test_retention_keeps_the_window(void)
{
	/* snapshots at t=100 (TXID 10), 200 (TXID 20), 300 (TXID 30); L0 between */
	struct bkplan_obj v[] = {{S, 1, 10, 100}, {0, 11, 15, 150}, {0, 16, 20, 199},
				 {S, 1, 20, 200}, {0, 21, 25, 250}, {0, 26, 30, 299},
				 {S, 1, 30, 300}, {0, 31, 31, 310}};
	bool del[N(v)];
	size_t n = 99;
	int64_t next = 0;
	/* window start 150: no snapshot after the first one is older; S is the first */
	CHECK_RC(bkplan_retention(v, N(v), 250, 100, del, &n, &next), 0);
	CHECK_EQ_U64(n, 0);
	CHECK_EQ_U64(next, 300); /* the snapshot of t=200 leaves the start at 300 */
	/* window start 250: S is the snapshot of t=200: what came before goes */
	CHECK_RC(bkplan_retention(v, N(v), 350, 100, del, &n, &next), 0);
	CHECK_EQ_U64(n, 3);
	CHECK(del[0] && del[1] && del[2]);
	for (size_t i = 3; i < N(v); i++)
		CHECK(!del[i]);
	CHECK_EQ_U64(next, 400);
	/* window start 99: nothing is older than the window: nothing goes */
	CHECK_RC(bkplan_retention(v, N(v), 199, 100, del, &n, &next), 0);
	CHECK_EQ_U64(n, 0);
	CHECK_EQ_U64(next, 200);
	/* far later: only the newest snapshot and what follows it stay */
	CHECK_RC(bkplan_retention(v, N(v), 100000, 100, del, &n, &next), 0);
	CHECK_EQ_U64(n, 6);
	CHECK(!del[6] && !del[7]);
	CHECK_EQ_U64(next, INT64_MAX);
}

static void test_retention_without_old_snapshot_deletes_nothing(void)
{
	struct bkplan_obj v[] = {{0, 1, 5, 10}, {S, 1, 5, 1000}, {0, 6, 9, 1001}};
	bool del[N(v)];
	size_t n = 99;
	int64_t next = 0;
	CHECK_RC(bkplan_retention(v, N(v), 1500, 1000, del, &n, &next), 0);
	CHECK_EQ_U64(n, 0);
	CHECK_EQ_U64(next, 2000);
	CHECK_RC(bkplan_retention(v, 0, 1500, 1000, del, &n, &next), 0);
	CHECK_EQ_U64(n, 0);
	CHECK_EQ_U64(next, INT64_MAX);
}

/* An object written after S is kept even when it ends at or below S's TXID
 * (a partitioned old primary's late upload), and a snapshot of another
 * history with a higher TXID (the latest restore's start) stays. */
static void test_retention_is_conservative(void)
{
	struct bkplan_obj v[] = {
	    {S, 1, 50, 10},  /* old history, newest TXID */
	    {0, 41, 45, 12}, /* written after S: kept */
	    {S, 1, 40, 20},  /* S: the newest written before the window */
	    {0, 20, 40, 5},  /* before S: goes */
	    {S, 1, 30, 4},   /* older snapshot: goes */
	    {0, 51, 60, 30}, /* after the latest snapshot */
	};
	bool del[N(v)];
	size_t n = 0;
	int64_t next = 0;
	CHECK_RC(bkplan_retention(v, N(v), 100, 50, del, &n, &next), 0);
	CHECK_EQ_U64(n, 2);
	CHECK(!del[0] && !del[1] && !del[2] && del[3] && del[4] && !del[5]);
}

static void test_compact_selects_the_run_after_the_last_compaction(void)
{
	struct bkplan_obj v[] = {
	    {S, 1, 5, 0},   {0, 6, 7, 1},   {0, 8, 9, 2},   {1, 6, 9, 3},
	    {0, 10, 10, 4}, {0, 11, 13, 5}, {0, 14, 20, 6}, {0, 11, 12, 4}, /* a fork: older */
	};
	size_t out[N(v)];
	size_t k = bkplan_compact(v, N(v), 0, out);
	CHECK_EQ_U64(k, 3);
	CHECK(out[0] == 4 && out[1] == 5 && out[2] == 6);
	/* one object after the last L1: nothing to do */
	CHECK_EQ_U64(bkplan_compact(v, 5, 0, out), 0);
	/* nothing at all */
	CHECK_EQ_U64(bkplan_compact(v, 0, 0, out), 0);
	/* a gap ends the run: only what chains to the top */
	struct bkplan_obj g[] = {{S, 1, 5, 0}, {0, 6, 7, 1}, {0, 9, 10, 2}, {0, 11, 11, 3}};
	k = bkplan_compact(g, N(g), 0, out);
	CHECK_EQ_U64(k, 2);
	CHECK(out[0] == 2 && out[1] == 3);
	/* never across a snapshot */
	struct bkplan_obj s[] = {{S, 1, 5, 0}, {0, 6, 7, 1},   {0, 8, 9, 2},
				 {S, 1, 9, 3}, {0, 10, 10, 4}, {0, 11, 12, 5}};
	k = bkplan_compact(s, N(s), 0, out);
	CHECK_EQ_U64(k, 2);
	CHECK(out[0] == 4 && out[1] == 5);
}

/* L0 objects a compacted object covers go once that object was written
 * before the window's start; not before (a restore into the window may
 * need to stop inside its range). */
static void test_retention_of_compacted_objects(void)
{
	struct bkplan_obj v[] = {{S, 1, 5, 0},	  {0, 6, 7, 10},   {0, 8, 9, 20},
				 {1, 6, 9, 30},	  {0, 10, 11, 40}, {0, 12, 13, 50},
				 {1, 10, 13, 60}, {0, 14, 14, 70}};
	bool del[N(v)];
	size_t n = 0;
	int64_t next = 0;
	/* window start 35: the first L1 is before it, the second after */
	CHECK_RC(bkplan_retention(v, N(v), 135, 100, del, &n, &next), 0);
	CHECK_EQ_U64(n, 2);
	CHECK(del[1] && del[2]);
	CHECK(!del[0] && !del[3] && !del[4] && !del[5] && !del[6] && !del[7]);
	CHECK_EQ_U64(next, 160);
	/* window start 29: no L1 before it */
	CHECK_RC(bkplan_retention(v, N(v), 129, 100, del, &n, &next), 0);
	CHECK_EQ_U64(n, 0);
	CHECK_EQ_U64(next, 130);
	/* both: the snapshot and the two L1 objects and the last L0 stay */
	CHECK_RC(bkplan_retention(v, N(v), 1000, 100, del, &n, &next), 0);
	CHECK_EQ_U64(n, 4);
	CHECK(!del[0] && !del[3] && !del[6] && !del[7]);
	/* and a restore to the latest still chains: snapshot, L1, L1, L0 */
	size_t out[N(v) + 1];
	CHECK_EQ_U64(bkplan_chain(v, N(v), 0, UINT64_MAX, out), 4);
	CHECK(out[1] == 3 && out[2] == 6 && out[3] == 7);
}

int main(void)
{
	RUN(test_snapshot_choice);
	RUN(test_chain_contiguous_with_limit_and_gap);
	RUN(test_chain_prefers_the_highest_level);
	RUN(test_retention_keeps_the_window);
	RUN(test_retention_without_old_snapshot_deletes_nothing);
	RUN(test_retention_is_conservative);
	RUN(test_compact_selects_the_run_after_the_last_compaction);
	RUN(test_retention_of_compacted_objects);
	return UNIT_DONE();
}
