/*
 * elector.h - who is primary, decided through a Consul or etcd lease (edge
 * layer). One thread runs the loop of elector.c: observe the lease key,
 * follow the holder as a replica, take the lease when it is free and this
 * node is a candidate, renew it while primary, demote on loss or at the
 * local deadline, and pass it on in a planned handoff. docs/leases.md has
 * the timing and safety argument.
 *
 * Adoption: a replica that connects to a newly elected primary with a
 * longer history hands its extra transactions over (elector_adopt). A
 * second thread, the adopter, fetches and applies them, so the lease loop
 * keeps renewing meanwhile.
 *
 * Threads: elector_start/elector_stop on the main thread. elector_promote,
 * elector_adopt and the handoff calls come from HTTP connection threads;
 * elector_handoff_received from the replica thread. All of them only post
 * requests to the elector's threads or read their state under its lock
 * (elector_promote also asks the primary for the handoff itself).
 */
#ifndef LTXFS_ELECTOR_H
#define LTXFS_ELECTOR_H

#include "ltxfs/lease.h"
#include "ltxfs/store.h"
#include "ltxfs/stream.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct elector_options {
	struct store *store;
	struct lease *lease; /* owned by the caller; outlives the elector */
	const char *hostname;
	const char *advertise_url;
	bool candidate;
	bool promote; /* lease.promote: ask for a handoff once caught up */
	int64_t reconnect_delay_ms;
	const char *token; /* http.token for POST /handoff (NULL: none) */
	/* Follow the primary at url (NULL: follow nobody). Called on the elector thread. */
	void (*follow)(void *ctx, const char *url);
	void *ctx;
};

struct elector;

int elector_start(struct elector **ret, const struct elector_options *opt);
/* Stop the loop; a primary releases its lease at once (no lock-delay). NULL ok. */
void elector_stop(struct elector *e);

/*
 * Primary side of a handoff (POST /handoff): fence every commit and return
 * the lease token to send to the successor. -EPERM when not primary.
 */
int elector_handoff_begin(struct elector *e, char *token, size_t n);
/* The successor has the token (ok: step down without releasing) or the handoff failed (unfence). */
void elector_handoff_end(struct elector *e, bool ok);
/* Replica side: a HANDOFF frame arrived; take the lease over with token. */
void elector_handoff_received(struct elector *e, const char *token);
/*
 * POST /promote on this node: ask the primary for a handoff and wait (up to
 * timeout_ms) until this node is primary. 0, or -errno with err filled.
 */
int elector_promote(struct elector *e, int timeout_ms, char *err, size_t n);
/* A replica's offer of the transactions it holds beyond this node (elector_adopt). */
struct elector_offer {
	const char *url;		    /* the replica's advertise URL, http:// or https:// */
	uint64_t peer;			    /* its node ID, for the log */
	const struct stream_pos *pos;	    /* its position map */
	size_t n;			    /* entries in pos */
	const struct db_apply_hooks *hooks; /* the mount's, to apply under SQLite's locks */
};

/*
 * A primary elected after an unclean failover adopts, while it has
 * committed nothing in its term (store_can_adopt), every transaction the
 * replica of o holds beyond this node's own position: the adopter thread
 * fetches each one (GET <url>/ltx) and applies it as a replica would
 * (docs/leases.md section 6.2). Until the offer is done, writes are held
 * back (store_adopt_begin/end), at most ADOPT_MAX_MS after the election
 * (elector.c). Returns when the offer has been dealt with
 * (failures are logged), or at once when the elector is stopping. Offers of
 * several replicas are taken one at a time. o and what it points to must
 * stay valid until the call returns. Any thread but the elector's.
 */
void elector_adopt(struct elector *e, const struct elector_offer *o);
/* The current primary's advertise URL and hostname as the lease says ("" when none). */
void elector_primary(struct elector *e, char *url, size_t un, char *host, size_t hn);

#endif
