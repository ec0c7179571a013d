/*
 * httpd_int.h - what the files of the HTTP server share (private to
 * src/edge; not installed).
 *
 * httpd.c owns struct httpd, its lifecycle, the request callback and the
 * reply helpers below; httpd_stream.c owns struct stream and struct spos
 * (replication: POST /stream, GET /ltx, POST /handoff); httpd_admin.c the
 * operator's endpoints. Every httpd_serve_* runs on the connection's own
 * thread (libmicrohttpd's thread-per-connection mode), after routing and
 * authorisation, and returns what MHD_queue_response returned (MHD_NO
 * closes the connection). Locks: h->mu, then the store's and a database's
 * own (never the other way round); nothing waits while holding h->mu.
 */
#ifndef LTXFS_HTTPD_INT_H
#define LTXFS_HTTPD_INT_H

#include "ltxfs/httpd.h"
#include "ltxfs/stream.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * A replica stream's record of one database (httpd_stream.c). txid and
 * checksum: what the replica has, or has been sent; floor: what it surely
 * holds (retention). Written by the sender thread under h->mu.
 */
struct spos {
	char name[STREAM_NAME_MAX + 1];
	uint64_t txid, checksum;
	uint64_t floor; /* TXID the replica surely holds (retention) */
};

/*
 * One POST /stream connection: what it sends (httpd_stream.c) and its
 * socket (httpd_sender.c). Until the upgrade, it belongs to the request
 * (struct request); from then on to whoever holds h->pump_mu (the sender
 * thread, or an inline send), except for the list links and pos, under
 * h->mu, and behind_since_ms. Only the sender thread frees it.
 */
struct stream {
	struct stream *prev, *next;
	struct httpd *h;
	struct spos *pos;
	size_t n, cap;
	uint64_t peer_id;
	bool ready_sent, ended, handoff_pending;
	int64_t last_hb; /* monotonic ms */
	uint8_t pend[STREAM_FRAME_HEADER + STREAM_LTX_META_MAX + STREAM_TOKEN_MAX + 64];
	size_t pend_len, pend_off;
	int fd;
	uint64_t fd_size, fd_off; /* the LTX frame's length and what was sent of it */
	struct db_snap *snap;	  /* the frame being sent is a snapshot still being built */
	/* snap's frame is not queued yet: its header is not fixed (SNAPSHOTS in
	 * httpd_stream.c); the frame's flags and database */
	bool snap_wait;
	uint32_t snap_flags;
	struct db *snap_db;
	struct db_ltx_blob *blob; /* the frame's LTX file from the LTX cache (db.h) */
	uint64_t sent_bytes;
	/* the socket (httpd_sender.c): out[out_off..out_len) is one HTTP chunk
	 * still to write; more: the last fill stopped before everything pending */
	int sock;
	struct MHD_UpgradeResponseHandle *urh;
	uint8_t *out;
	size_t out_off, out_len;
	bool more, closing;
	int64_t stuck_since; /* monotonic ms since when its socket took nothing, 0: it takes */
	/* LAGGING REPLICAS: monotonic ms since when something has been waiting to
	 * be sent, 0 while caught up (atomic: /info and /metrics read it) */
	int64_t behind_since_ms;
	bool lag_warned;
};

/* One request's state between on_request calls (*con_cls), httpd.c. */
struct request {
	char *body; /* the body in memory (POST /stream's position map) */
	size_t len;
	bool too_big; /* it passed MAX_POSMAP_BYTES and was dropped */
	int upfd;     /* POST /import: the upload goes to this file (-1: to body) */
	char uppath[4200];
	uint64_t uplen;
	int uperr;
	struct stream *stream; /* POST /stream until the upgrade; freed with the request */
};

struct httpd {
	struct MHD_Daemon *d;
	struct store *store;
	struct elector *elector;
	struct db_apply_hooks hooks;
	char *hostname;
	char *advertise_url;
	char *mount_dir, *data_dir, *token;
	bool read_auth;
	size_t nevents;		   /* open GET /events streams, under mu */
	pthread_mutex_t import_mu; /* one import at a time */
	/* a handoff in progress, under mu */
	uint64_t handoff_peer;
	char handoff_token[STREAM_TOKEN_MAX + 1];
	bool handoff_queued; /* the frame is queued: the successor may take the lease */
	pthread_mutex_t mu;  /* streams list, nstreams, nevents, handoff */
	struct stream streams;
	size_t nstreams;
	bool stopping; /* atomic: set once by httpd_stop */
	/* the sender thread (httpd_sender.c) */
	pthread_t sender;
	pthread_cond_t sender_cond; /* with mu: a stream was adopted, or sender_quit */
	bool sender_started;
	bool sender_quit; /* atomic: close every stream and exit */
	/* whoever pumps the streams holds it: the sender during a round, or a
	 * committing thread's inline send (httpd_sender.c, INLINE SENDS) */
	pthread_mutex_t pump_mu;
	bool pushing; /* under pump_mu: an inline send, which never waits */
};

/*
 * httpd.c: queue resp as the answer with status. Its headers: Ltxfs-Node-Id
 * and, once the node has one, Ltxfs-Cluster-Id, then the (name, value)
 * pairs given, in order, up to a NULL name. resp is destroyed here (MHD
 * keeps its own reference). Returns what MHD_queue_response returned.
 */
__attribute__((sentinel)) enum MHD_Result httpd_queue(struct httpd *h, struct MHD_Connection *c,
						      unsigned status, struct MHD_Response *resp,
						      ...);
/* obj (its reference is taken) as a JSON body ending with a newline; NULL: no memory. */
struct MHD_Response *httpd_json_response(json_t *obj);
/* Queue obj (its reference is taken) as a JSON body ending with a newline. */
enum MHD_Result httpd_reply_json(struct httpd *h, struct MHD_Connection *c, unsigned status,
				 json_t *obj);
/* Queue {"error":msg}. */
enum MHD_Result httpd_reply_error(struct httpd *h, struct MHD_Connection *c, unsigned status,
				  const char *msg);

/* httpd_stream.c: replication, node to node. */
enum MHD_Result httpd_serve_stream(struct httpd *h, struct MHD_Connection *c, struct request *rq);
enum MHD_Result httpd_serve_ltx(struct httpd *h, struct MHD_Connection *c);
enum MHD_Result httpd_serve_handoff(struct httpd *h, struct MHD_Connection *c);
/*
 * The next bytes of s's stream, up to max, for the sender thread: whole
 * frames as far as they fit. Returns the number of bytes (0: nothing to
 * send now), STREAM_FILL_END once the END frame has been handed over, or
 * STREAM_FILL_ERROR (the stream must be cut; the replica reconnects).
 * *more says something is still pending. Runs under h->pump_mu: on the
 * sender thread, or in an inline send (h->pushing), which stops with *more
 * set where only the sender may go on (a file not in the LTX cache, a
 * snapshot).
 */
#define STREAM_FILL_END	  (-1)
#define STREAM_FILL_ERROR (-2)
#define STREAM_BLOCK	  (256u << 10)
/* a heartbeat after this long without a frame */
#define HEARTBEAT_MS 1000
/* room for an HTTP chunk's size line before the bytes of a block */
#define STREAM_CHUNK_HEAD 16
ssize_t stream_fill(struct stream *s, uint8_t *buf, size_t max, bool *more);
/* LAGGING REPLICAS (httpd_stream.c): something is (behind) or is not waiting
 * to be sent to s; by the holder of pump_mu. */
void stream_note_behind(struct stream *s, bool behind);
/* Free what a stream holds, not linked into h's list (the upgrade did not
 * happen); takes NULL. */
void stream_discard(struct stream *s);
/* Unlink s from h's list, log the disconnect, free it (the sender, after closing its socket). */
void stream_free(struct stream *s);
/* GET /info's "replicas": each connected stream's node ID and positions (takes h->mu). */
json_t *httpd_stream_replicas(struct httpd *h);
/* GET /metrics: the lag gauges of the connected replicas (takes h->mu). */
void httpd_stream_metrics(struct httpd *h, FILE *f);

/* httpd_sender.c: the thread that writes every replica's stream. */
int httpd_sender_start(struct httpd *h);
/* Close the streams still open and join the thread (httpd_stop). */
void httpd_sender_stop(struct httpd *h);
/* MHD's upgrade handler of POST /stream (cls: the struct stream). */
void httpd_sender_adopt(void *cls, struct MHD_Connection *c, void *con_cls, const char *extra_in,
			size_t extra_in_size, MHD_socket sock,
			struct MHD_UpgradeResponseHandle *urh);

/* httpd_admin.c: the operator's endpoints. */
enum MHD_Result httpd_serve_metrics(struct httpd *h, struct MHD_Connection *c);
enum MHD_Result httpd_serve_events(struct httpd *h, struct MHD_Connection *c);
enum MHD_Result httpd_serve_export(struct httpd *h, struct MHD_Connection *c);
enum MHD_Result httpd_serve_import(struct httpd *h, struct MHD_Connection *c, struct request *rq);

#endif
