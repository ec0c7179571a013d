/*
 * httpd.h - the node's HTTP server (edge layer; the only module that
 * includes libmicrohttpd, in httpd.c, httpd_stream.c and httpd_admin.c).
 * Serves replication (POST /stream, primary only; GET /ltx; POST
 * /handoff), node information (GET /info, /health; POST /promote) and the
 * operator's endpoints (/metrics, /events, /export, /import). It makes no
 * HTTP requests itself. docs/http-api.md lists every endpoint;
 * docs/protocol.md describes the node-to-node ones byte for byte.
 *
 * Threads: httpd_start/httpd_stop run on the main thread. Each connection
 * has its own thread (libmicrohttpd's thread-per-connection mode), so a
 * stream may block waiting for the next commit. httpd_retention_floor may be
 * called from any thread.
 */
#ifndef LTXFS_HTTPD_H
#define LTXFS_HTTPD_H

#include "ltxfs/elector.h"
#include "ltxfs/store.h"

#include <stddef.h>
#include <stdint.h>

struct httpd_options {
	const char *addr;     /* http.addr: ":20202", "127.0.0.1:20202", "[::1]:20202" */
	const char *hostname; /* lease.hostname, sent to replicas */
	const char *advertise_url;
	struct store *store;
	/*
	 * The lease side (elector.h) for POST /handoff, POST /promote and the
	 * primary shown by /info; NULL with a static lease (both endpoints then
	 * answer 409).
	 */
	struct elector *elector;
	/*
	 * The mount's apply hooks, lent to elector_adopt when a new primary
	 * adopts the transactions a replica got further in.
	 */
	struct db_apply_hooks hooks;
	const char *mount_dir; /* fuse.dir: POST /import writes through the mount */
	const char *data_dir;  /* data.dir: where an upload waits while it is checked */
	/*
	 * http.token: when set, node-to-node and mutating endpoints (/stream,
	 * /ltx, /handoff, /promote, /import) need "Authorization: Bearer
	 * <token>"; with read_auth the read-only ones too (/health never).
	 */
	const char *token;
	bool read_auth;
};

struct httpd;

/* Listen and serve. On error *errmsg names the address and the reason. */
int httpd_start(struct httpd **ret, const struct httpd_options *opt, char *errmsg, size_t n);
/* Attach the elector once it exists (it needs the replica, which needs the server up). */
void httpd_set_elector(struct httpd *h, struct elector *e);
/* End every stream with an END frame, stop listening, join, free. NULL ok. */
void httpd_stop(struct httpd *h);
/*
 * The highest TXID of database name that every connected replica is known
 * to hold: LTX files above it must survive retention. UINT64_MAX when no
 * connected replica needs any.
 */
uint64_t httpd_retention_floor(struct httpd *h, const char *name);
/* Number of replica streams open now. */
size_t httpd_stream_count(struct httpd *h);

#endif
