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

size_t bkplan_chain(const struct bkplan_obj *v, size_t n, size_t snap, uint64_t limit, size_t *out)
{
	size_t k = 0;
	out[k++] = snap;
	uint64_t cur = v[snap].max_txid;
	while (k <= n && cur < limit) {
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
		if (best == n)
			break;
		out[k++] = best;
		cur = v[best].max_txid;
	}
	return k;
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
		if (o->level != BKPLAN_SNAPSHOT)
			continue;
		if (o->time_ms > start) {
			/* leaves the window's start at time + retention: S may change then */
			if (o->time_ms <= INT64_MAX - retention_ms &&
			    o->time_ms + retention_ms < next)
				next = o->time_ms + retention_ms;
			continue;
		}
		if (keep == n || o->time_ms > v[keep].time_ms ||
		    (o->time_ms == v[keep].time_ms && o->max_txid > v[keep].max_txid))
			keep = i;
	}
	if (keep < n) {
		const struct bkplan_obj *s = &v[keep];
		for (size_t i = 0; i < n; i++)
			del[i] =
			    i != keep && v[i].max_txid <= s->max_txid && v[i].time_ms <= s->time_ms;
		/* never what the latest restore applies */
		size_t latest = bkplan_snapshot(v, n, UINT64_MAX);
		if (!(chain = malloc((n + 1) * sizeof(*chain)))) {
			r = -ENOMEM;
			goto out;
		}
		size_t k = bkplan_chain(v, n, latest, UINT64_MAX, chain);
		for (size_t j = 0; j < k; j++)
			del[chain[j]] = false;
		for (size_t i = 0; i < n; i++)
			count += del[i];
	}
	*ret_n = count;
	*ret_next_ms = next;
out:
	if (r < 0)
		for (size_t i = 0; i < n; i++)
			del[i] = false;
	free(chain);
	return r;
}
