/*
 * bkplan.c - restore's chain and retention's choice over backup objects
 * (include/ltxfs/bkplan.h says what each returns; docs/backup.md why).
 *
 * Both walk the array once per step: a chain of k objects over n objects
 * costs O(k * n), which for the tens of thousands of objects a day of
 * one-second uploads leaves is a few milliseconds once per restore or per
 * retention check. Pure code: no I/O, no clock, no allocation but the
 * chain's scratch array in bkplan_retention.
 */
#include "ltxfs/bkplan.h"

#include <errno.h>
#include <stdlib.h>

size_t bkplan_snapshot(const struct bkplan_obj *v, size_t n, uint64_t limit)
{
	size_t best = n;
	for (size_t i = 0; i < n; i++) {
		const struct bkplan_obj *o = &v[i];
		if (o->level != BKPLAN_SNAPSHOT || o->max_txid > limit)
			continue;
		if (best == n || o->max_txid > v[best].max_txid ||
		    (o->max_txid == v[best].max_txid && o->time_ms >= v[best].time_ms))
			best = i;
	}
	return best;
}

size_t bkplan_next(const struct bkplan_obj *v, size_t n, uint64_t cur, uint64_t limit)
{
	size_t best = n;
	for (size_t i = 0; i < n; i++) {
		const struct bkplan_obj *o = &v[i];
		if (o->level < 0 || o->level >= BKPLAN_SNAPSHOT || o->min_txid != cur + 1 ||
		    o->max_txid > limit || o->max_txid < o->min_txid)
			continue;
		if (best == n || o->max_txid > v[best].max_txid ||
		    (o->max_txid == v[best].max_txid && o->level > v[best].level))
			best = i;
	}
	return best;
}

size_t bkplan_chain(const struct bkplan_obj *v, size_t n, size_t snap, uint64_t limit, size_t *out)
{
	size_t k = 0;
	out[k++] = snap;
	uint64_t cur = v[snap].max_txid;
	while (k <= n && cur < limit) {
		size_t best = bkplan_next(v, n, cur, limit);
		if (best == n)
			break;
		out[k++] = best;
		cur = v[best].max_txid;
	}
	return k;
}

/* The object of level `level` ending at end and starting above floor (the latest written). */
static size_t ending_at(const struct bkplan_obj *v, size_t n, int level, uint64_t end,
			uint64_t floor)
{
	size_t best = n;
	for (size_t i = 0; i < n; i++)
		if (v[i].level == level && v[i].max_txid == end && v[i].min_txid > floor &&
		    v[i].min_txid <= end && (best == n || v[i].time_ms > v[best].time_ms))
			best = i;
	return best;
}

size_t bkplan_compact(const struct bkplan_obj *v, size_t n, int level, size_t *out)
{
	uint64_t floor = 0, top = 0;
	size_t k = 0;
	/* never across a snapshot: a restore starting from it needs the objects
	 * that start right after it, which a compacted object spanning it would
	 * let retention delete */
	for (size_t i = 0; i < n; i++)
		if (v[i].level > level && v[i].max_txid > floor)
			floor = v[i].max_txid;
	for (size_t i = 0; i < n; i++)
		if (v[i].level == level && v[i].min_txid > floor && v[i].max_txid > top)
			top = v[i].max_txid;
	for (size_t at = top ? ending_at(v, n, level, top, floor) : n; at < n && k < n;) {
		out[k++] = at;
		if (v[at].min_txid <= floor + 1)
			break;
		at = ending_at(v, n, level, v[at].min_txid - 1, floor);
	}
	for (size_t i = 0; i < k / 2; i++) { /* oldest first */
		size_t t = out[i];
		out[i] = out[k - 1 - i];
		out[k - 1 - i] = t;
	}
	return k >= 2 ? k : 0;
}

int bkplan_retention(const struct bkplan_obj *v, size_t n, int64_t now_ms, int64_t retention_ms,
		     bool *del, size_t *ret_n, int64_t *ret_next_ms)
{
	int64_t start = now_ms - retention_ms;
	size_t keep = n, count = 0;
	int64_t next = INT64_MAX;
	size_t *chain = NULL;
	int r = 0;

	for (size_t i = 0; i < n; i++) {
		const struct bkplan_obj *o = &v[i];
		del[i] = false;
		if (o->level == 0)
			continue;
		if (o->time_ms > start) {
			/* leaves the window's start at time + retention: the answer may change */
			if (o->time_ms <= INT64_MAX - retention_ms &&
			    o->time_ms + retention_ms < next)
				next = o->time_ms + retention_ms;
			continue;
		}
		if (o->level != BKPLAN_SNAPSHOT)
			continue;
		if (keep == n || o->time_ms > v[keep].time_ms ||
		    (o->time_ms == v[keep].time_ms && o->max_txid > v[keep].max_txid))
			keep = i;
	}
	/* 1. what precedes S */
	if (keep < n) {
		const struct bkplan_obj *s = &v[keep];
		for (size_t i = 0; i < n; i++)
			del[i] =
			    i != keep && v[i].max_txid <= s->max_txid && v[i].time_ms <= s->time_ms;
	}
	/* 2. what a compacted object written before the window's start covers */
	for (size_t i = 0; i < n; i++) {
		const struct bkplan_obj *c = &v[i];
		if (c->level < 1 || c->level >= BKPLAN_SNAPSHOT || c->time_ms > start)
			continue;
		for (size_t j = 0; j < n; j++)
			if (v[j].level < c->level && v[j].min_txid >= c->min_txid &&
			    v[j].max_txid <= c->max_txid && v[j].time_ms <= c->time_ms)
				del[j] = true;
	}
	/* 3. never what the latest restore applies */
	size_t latest = bkplan_snapshot(v, n, UINT64_MAX);
	if (latest < n) {
		if (!(chain = malloc((n + 1) * sizeof(*chain)))) {
			r = -ENOMEM;
			goto out;
		}
		size_t k = bkplan_chain(v, n, latest, UINT64_MAX, chain);
		for (size_t j = 0; j < k; j++)
			del[chain[j]] = false;
	}
	for (size_t i = 0; i < n; i++)
		count += del[i];
	*ret_n = count;
	*ret_next_ms = next;
out:
	if (r < 0)
		for (size_t i = 0; i < n; i++)
			del[i] = false;
	free(chain);
	return r;
}
