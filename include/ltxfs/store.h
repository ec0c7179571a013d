/*
 * store.h - the set of databases under <data.dir>/dbs, the node identity,
 * the exclusive claim on the data directory (store.c) and the cluster state
 * (store_cluster.c) (core layer).
 *
 * Threads: store_open/store_close run on the main thread before the mount
 * exists and after it is gone. Lookups and creation may be called from any
 * FUSE worker; store->mu protects the table. A struct db, once in the table,
 * stays until store_close (dropped databases keep their TXID), so callers may
 * keep the pointer without holding the lock.
 */
#ifndef LTXFS_STORE_H
#define LTXFS_STORE_H

#include "ltxfs/db.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store_options {
	const char *data_dir;
	const char *mount_dir;
	bool compress;
	bool replica; /* starts as a replica (see db_options.replica) */
};

struct store;

/*
 * Claim data_dir (flock; -EBUSY if another ltxfs holds it), create dbs/, and
 * open (recover) every database found. On error *errmsg names what failed.
 */
int store_open(struct store **ret, const struct store_options *opt, char *errmsg, size_t n);
/* Close every database cleanly (see db_free) and release the claim. NULL ok. */
void store_close(struct store *s);

uint64_t store_node_id(const struct store *s);
const char *store_data_dir(const struct store *s);

/* Database by name, or NULL. */
struct db *store_find(struct store *s, const char *name);
/* Database by name, created (directory and all) if absent. */
int store_get_or_create(struct store *s, const char *name, struct db **ret);
/* Number of databases ever known in this process, and the i-th (stable index). */
size_t store_count(struct store *s);
struct db *store_at(struct store *s, size_t i);

/* ---- cluster state (store_cluster.c; any thread; store->cmu) ---- */

/* Role: the FUSE layer refuses writes unless primary. */
void store_set_primary(struct store *s, bool primary);
bool store_is_primary(struct store *s);

/*
 * The lease (docs/leases.md). store_become_primary persists epoch in
 * <data.dir>/epoch (before any write can commit; -ESTALE if a larger epoch
 * was seen) and makes this node primary until until_ms (CLOCK_MONOTONIC ms).
 * Every commit checks the fence: primary, not fenced for a handoff, and
 * before the deadline; store_extend_lease moves the deadline after a renewal.
 * A static primary's deadline is INT64_MAX. hold_ms > 0 opens the adoption
 * window: commits wait that long after election so that replicas which
 * received more of the old primary's stream than this node can hand those
 * transactions over first (httpd.c); and after it, as long as an adoption
 * offer is in progress (store_adopt_begin/end), but no longer than
 * adopt_max_ms after the election. hold_ms <= 0 (a handoff): no wait.
 */
int store_become_primary(struct store *s, uint64_t epoch, int64_t until_ms, int64_t hold_ms,
			 int64_t adopt_max_ms);
void store_extend_lease(struct store *s, int64_t until_ms);
int64_t store_lease_until(struct store *s);
void store_set_fenced(struct store *s, bool fenced);
/* The fence's verdict now. */
bool store_accepts_writes(struct store *s);
/*
 * Primary and past the start of its term (the adoption window and any
 * adoption): what /info's isPrimary, .primary and /events report. Such a node
 * accepts writes unless fenced for a handoff or past its lease deadline.
 */
bool store_primary_ready(struct store *s);
/*
 * The role, store_primary_ready, store_accepts_writes and, when writes are
 * not accepted, why (as store_await_writes says it), all read at one instant
 * (GET /info: they must agree with each other).
 */
void store_write_state(struct store *s, bool *primary, bool *ready, bool *writable,
		       const char **why);
/*
 * Wait up to timeout_ms for this node to accept writes. 0: it does (at once
 * or after the wait). -EROFS: it is not primary, or stopped being (at once).
 * -ETIMEDOUT: it holds the lease but still does not accept writes at the
 * deadline. -ECANCELED: give_up(ctx) said so (called, under cmu, at the
 * start and at every wake-up; store_kick wakes the waiters). *why is a static
 * string saying what the node waited for (NULL after 0). Blocks on cmu's
 * condvar; the caller holds no lock.
 */
int store_await_writes(struct store *s, int timeout_ms, bool (*give_up)(void *), void *ctx,
		       const char **why);
/* An adoption offer is queued or running (the elector): writes wait for it, within the cap. */
void store_adopt_begin(struct store *s);
void store_adopt_end(struct store *s);
/* Primary and nothing committed in this term yet: a replica's longer history may be adopted. */
bool store_can_adopt(struct store *s);
/* Highest epoch seen; store_note_epoch raises (and persists) it, or -ESTALE if epoch is older. */
uint64_t store_epoch(struct store *s);
int store_note_epoch(struct store *s, uint64_t epoch);
/* Connected to a primary and caught up with it (READY received on this stream). */
bool store_caught_up(struct store *s);
/* The replica received READY (the upstream must be set first). */
void store_set_ready(struct store *s);
/* Some database has a position (TXID > 0). */
bool store_has_data(struct store *s);
/* lease.candidate, for /info. */
void store_set_candidate(struct store *s, bool candidate);
bool store_is_candidate(struct store *s);

/*
 * Cluster ID: "LFSC" + 16 uppercase hex digits, kept in <data.dir>/clusterid
 * as LiteFS does. store_cluster_id copies it into buf[21] ("" when none).
 * store_ensure_cluster_id creates one if none exists (a primary);
 * store_set_cluster_id adopts the primary's (a replica; written atomically).
 * -EINVAL for a malformed ID.
 */
void store_cluster_id(struct store *s, char buf[21]);
int store_ensure_cluster_id(struct store *s);
int store_set_cluster_id(struct store *s, const char *id);
bool store_cluster_id_valid(const char *id);

/*
 * The primary this replica is connected to: its hostname (NULL: not
 * connected, so .primary disappears) and the primary clock of the last frame
 * received with the local time it arrived (for .lag).
 */
void store_set_upstream(struct store *s, const char *hostname);
int store_upstream(struct store *s, char *buf, size_t n); /* -ENOENT if none */
void store_note_primary_time(struct store *s, int64_t primary_ms, bool caught_up);
/* Milliseconds behind the primary; 0 on a primary; INT32_MAX before the first sync. */
int64_t store_lag_ms(struct store *s);

/* Change notification: a counter bumped on every position change. */
uint64_t store_change_seq(struct store *s);
/* Wait until the counter differs from seen, or timeout_ms; returns it. */
uint64_t store_wait_change(struct store *s, uint64_t seen, int timeout_ms);
/* Wake every waiter (shutdown). */
void store_kick(struct store *s);
/* Bump the counter (ctx is the store): any thread, lock-free; a db's
 * on_change, and a snapshot builder's notify (db_snap_begin). Between
 * store_defer_begin and store_defer_end on the calling thread, it wakes
 * nobody (below). */
void store_on_change(void *ctx);
/*
 * A replica stream began (+1) or ended (-1) on this node: while any is
 * open, the databases keep their newest written commits in memory for the
 * streams (db_options.followers). Any thread.
 */
void store_followers_add(struct store *s, int delta);

/*
 * Deferred wake-ups (store_cluster.c, DEFERRED WAKE-UPS). A thread about to
 * reply to a client calls store_defer_begin before work that may commit and
 * store_defer_end after its reply, on the same thread, always in pairs (a
 * FUSE operation's wrapper). store_defer_end offers a change made in
 * between to the pusher, if no thread sleeps in store_wait_change; the
 * pusher returns true when it did everything a thread sleeping in
 * store_wait_change_standby would have done for the change, which then
 * sleeps on. Otherwise everyone is woken.
 */
void store_defer_begin(struct store *s);
void store_defer_end(struct store *s);
/* Like store_wait_change, for a thread whose work the pusher can do. */
uint64_t store_wait_change_standby(struct store *s, uint64_t seen, int timeout_ms);
/* Set (NULL: clear) the pusher; waits for a push under way to return. It runs
 * on the thread of store_defer_end, with no lock of the store or a db held. */
void store_set_pusher(struct store *s, bool (*push)(void *ctx), void *ctx);

/* Path of a super-journal file "<db>-mj<HEX>": dbs/<db>/mj<HEX>. */
int store_super_journal_path(struct store *s, const char *db, const char *hex, char *buf, size_t n);

#endif
