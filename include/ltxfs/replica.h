/*
 * replica.h - the replica side of replication (edge layer; its HTTP goes
 * through httpc). One thread follows the primary: it posts this
 * node's positions to <primary URL>/stream, verifies and applies every LTX
 * file that comes back (db_apply_ltx with the mount's hooks), and reconnects
 * with back-off after any error, a primary restart or a cut link.
 *
 * Threads: replica_start/replica_stop on the main thread; everything else on
 * the replica's own thread.
 */
#ifndef LTXFS_REPLICA_H
#define LTXFS_REPLICA_H

#include "ltxfs/db.h"
#include "ltxfs/store.h"

struct replica_options {
	struct store *store;
	struct db_apply_hooks hooks; /* from fusefs_apply_hooks() */
	const char *primary_url;     /* the static lease's advertise-url; NULL: none yet */
	const char *advertise_url;   /* this node's own URL, sent so a new primary can adopt */
	const char *token;	     /* http.token, sent as a bearer token (NULL: none) */
	/* A HANDOFF frame arrived (replica thread): the lease token. NULL: ignored. */
	void (*on_handoff)(void *ctx, const char *token);
	void *handoff_ctx;
};

struct replica;

int replica_start(struct replica **ret, const struct replica_options *opt);
/*
 * Follow another primary (NULL: none): the current stream ends and the next
 * one goes to url. Any thread.
 */
int replica_follow(struct replica *r, const char *url);
/* Abort the stream, join the thread, free. NULL ok. */
void replica_stop(struct replica *r);

#endif
