/*
 * replica.c - follow the primary's stream and apply what it sends.
 *
 * One connection at a time, on the replica thread:
 *
 *   CONNECT  POST <url>/stream with the position map of every local
 *            database, this node's ID and (once known) the cluster ID.
 *   HEADERS  101 from a primary (the stream is an upgraded connection,
 *            httpd_sender.c; 200 from an older primary): adopt its cluster
 *            ID if this node has
 *            none, refuse it (and retry later) if it differs; .primary
 *            appears with the primary's hostname.
 *   FRAMES   each LTX frame under 4 MiB is received in memory, a larger
 *            one into an anonymous file in the database's ltx directory
 *            (verified while it arrives); when complete it is verified and
 *            applied (db_apply_ltx), small ones in batches (BATCHES below);
 *            nothing of a torn or corrupt frame is ever applied. READY
 *            marks the catch-up done; HEARTBEAT and LTX timestamps feed
 *            .lag; END is a clean close by the primary.
 *   CLOSED   .primary disappears; reconnect after a back-off that starts
 *            at 50 ms and doubles to 2 s (reset by a stream that worked).
 *
 * A stream that stays silent for 5 s (the primary sends a heartbeat every
 * second) is treated as dead. Every error ends the stream; the position map
 * of the next connection tells the primary where to resume.
 *
 * The connection is one streamed request of httpc (httpc_do with on_data,
 * raw_body): each read goes from libcurl's 256 KiB receive buffer through
 * the chunked-coding decoder (stream_chunked_feed) to the frame parser and
 * on to the frame's file with no copy in between.
 *
 * Threads: everything above runs on the replica thread (replica_run).
 * replica_follow, called on the elector thread, swaps the URL under mu,
 * bumps gen and sets cut, which httpc polls: the stream in flight ends
 * within 20 ms and the thread connects to the new primary at once.
 * replica_start and replica_stop run on the main thread.
 */
#include "ltxfs/replica.h"
#include "ltxfs/clock.h"

#include "ltxfs/fsutil.h"
#include "ltxfs/httpc.h"
#include "ltxfs/log.h"
#include "ltxfs/ltx.h"
#include "ltxfs/metrics.h"
#include "ltxfs/stream.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

struct replica {
	struct replica_options opt;
	char *url;	   /* under mu; NULL: follow nobody */
	uint64_t gen;	   /* bumped by replica_follow: the stream in flight ends */
	uint64_t conn_gen; /* gen of the stream in flight */
	volatile bool cut; /* under mu: replica_follow ended the stream in flight */
	long last_status;  /* HTTP status of the last connection (0: none) */
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	volatile bool stopping;
	char last_err[LOG_LAST_LEN];
};

/* Most frames applied as one batch (BATCHES below). */
#define APPLY_BATCH_MAX DB_APPLY_BATCH_MAX

/* One connection's state. */
struct conn {
	struct replica *r;
	struct stream_parser parser;
	long status;
	bool checked; /* status and cluster ID checked */
	bool ended;   /* END frame received */
	bool worked;  /* at least one frame arrived */
	char hostname[256];
	char cluster_id[32];
	char peer_id[32];
	/* current LTX frame */
	struct db *db;
	int fd;
	uint32_t flags;
	struct db_recv *rv; /* large frames are verified as they arrive */
	uint64_t got;
	char err[256];
	bool chunked; /* the body comes in chunked transfer coding, decoded here */
	struct stream_chunked dechunk;
	uint8_t *mem; /* a frame under RECV_PIPELINE_MIN arrives here, not in fd */
	/* complete frames of pend_db not applied yet (BATCHES below) */
	struct db *pend_db;
	size_t npend, pend_bytes;
	struct pending {
		struct db_ltx_buf f; /* owns f.data */
		struct ltx_header h;
	} pend[APPLY_BATCH_MAX];
};

/* ----------------------------------------------------------- frames */

/* Frames from this size on are verified while they arrive (src/core/db_apply.c, RECEIVING);
 * smaller ones are received in memory. */
#define RECV_PIPELINE_MIN (4u << 20)
/* Pending frames are applied once they hold this many bytes. */
#define APPLY_BATCH_BYTES (32u << 20)

/*
 * BATCHES. A complete small frame that continues a database's chain is not
 * applied at once: it waits in c->pend, and everything pending is applied
 * as one batch (db_apply_ltx_batch) once the read from the socket that
 * completed it has been parsed, before a frame of another database, a large
 * frame, a snapshot or a control frame, and when APPLY_BATCH_MAX frames or
 * APPLY_BATCH_BYTES wait. A replica at the primary's pace gets one frame
 * per read and applies it at once; one that is behind gets many per read
 * and pays the apply's fixed cost (SQLite's locks, the wal-index header,
 * invalidations) once for all.
 * Frames still pending when a stream fails are dropped, never applied: the
 * next position map asks for them again.
 */
static void pend_drop(struct conn *c)
{
	for (size_t i = 0; i < c->npend; i++)
		free((void *)c->pend[i].f.data);
	c->npend = 0;
	c->pend_bytes = 0;
	c->pend_db = NULL;
}

static int pend_flush(struct conn *c)
{
	struct db_ltx_buf files[APPLY_BATCH_MAX];
	size_t n = c->npend;
	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		files[i] = c->pend[i].f;
	int r = db_apply_ltx_batch(c->pend_db, files, n, &c->r->opt.hooks);
	const struct ltx_header *first = &c->pend[0].h, *last = &c->pend[n - 1].h;
	if (r < 0) {
		snprintf(c->err, sizeof(c->err),
			 "db '%s': rejected LTX %016" PRIx64 "-%016" PRIx64 " from the primary: %s",
			 db_name(c->pend_db), first->min_txid, last->max_txid,
			 r == -EBADMSG	? "corrupt"
			 : r == -ESTALE ? "does not follow this node's position"
					: strerror(-r));
		pend_drop(c);
		return r;
	}
	log_debug("db '%s': applied %zu LTX file(s) %016" PRIx64 "-%016" PRIx64,
		  db_name(c->pend_db), n, first->min_txid, last->max_txid);
	metrics_add(MC_LTX_APPLIED, n);
	metrics_add(MC_APPLY_BATCHES, 1);
	store_note_primary_time(c->r->opt.store, last->timestamp, false);
	pend_drop(c);
	return 0;
}

static int on_ltx_begin(void *ctx, const char *name, uint32_t flags, uint64_t epoch, uint64_t len)
{
	struct conn *c = ctx;
	int r = store_note_epoch(c->r->opt.store, epoch);
	if (r == -ESTALE) {
		snprintf(c->err, sizeof(c->err),
			 "refusing a frame of epoch %" PRIu64 ": epoch %" PRIu64
			 " was seen, so the sender is no longer the primary",
			 epoch, store_epoch(c->r->opt.store));
		return r;
	}
	r = store_get_or_create(c->r->opt.store, name, &c->db);
	if (r < 0) {
		snprintf(c->err, sizeof(c->err), "cannot create database '%s': %s", name,
			 strerror(-r));
		return r;
	}
	if (c->npend && (c->db != c->pend_db || len >= RECV_PIPELINE_MIN)) {
		r = pend_flush(c);
		if (r < 0)
			return r;
	}
	c->flags = flags;
	c->got = 0;
	if (len < RECV_PIPELINE_MIN) {
		c->mem = malloc(len ? (size_t)len : 1);
		if (!c->mem) {
			snprintf(c->err, sizeof(c->err), "db '%s': no memory for a frame", name);
			return -ENOMEM;
		}
		return 0;
	}
	r = db_ltx_tmpfile(c->db, &c->fd);
	if (r < 0) {
		snprintf(c->err, sizeof(c->err), "db '%s': cannot create a temporary file: %s",
			 name, strerror(-r));
		return r;
	}
	r = db_recv_start(c->db, c->fd, &c->rv);
	if (r < 0) {
		snprintf(c->err, sizeof(c->err), "db '%s': cannot start verifying: %s",
			 db_name(c->db), strerror(-r));
		return r;
	}
	return 0;
}

static int on_ltx_data(void *ctx, const uint8_t *buf, size_t n)
{
	struct conn *c = ctx;
	if (c->mem) { /* the parser never passes the frame's length */
		memcpy(c->mem + c->got, buf, n);
		c->got += n;
		return 0;
	}
	int r = fs_write_full(c->fd, buf, n);
	if (r < 0) {
		snprintf(c->err, sizeof(c->err), "db '%s': writing a received LTX file: %s",
			 db_name(c->db), strerror(-r));
		return r;
	}
	c->got += n;
	if (c->rv)
		db_recv_progress(c->rv, c->got);
	return 0;
}

static int on_ltx_end(void *ctx)
{
	struct conn *c = ctx;
	uint8_t hb[LTX_HEADER_SIZE];
	struct ltx_header h;
	memset(&h, 0, sizeof(h));
	if (c->mem && c->got >= sizeof(hb))
		ltx_header_decode(&h, c->mem);
	else if (!c->mem && pread(c->fd, hb, sizeof(hb), 0) == (ssize_t)sizeof(hb))
		ltx_header_decode(&h, hb);
	uint32_t flags = (c->flags & STREAM_LTX_DIVERGED) ? DB_APPLY_DIVERGED : 0;
	int r;
	if (c->mem && !flags && h.commit > 0 && !ltx_header_is_snapshot(&h)) {
		c->pend[c->npend].f = (struct db_ltx_buf){c->mem, (size_t)c->got};
		c->pend[c->npend].h = h;
		c->npend++;
		c->pend_bytes += c->got;
		c->pend_db = c->db;
		c->mem = NULL;
		return c->npend == APPLY_BATCH_MAX || c->pend_bytes >= APPLY_BATCH_BYTES
			   ? pend_flush(c)
			   : 0;
	}
	r = pend_flush(c);
	if (r == 0 && c->mem) {
		/* a small snapshot, drop or DIVERGED frame: applied alone, from a file */
		r = db_ltx_tmpfile(c->db, &c->fd);
		if (r == 0)
			r = fs_write_full(c->fd, c->mem, (size_t)c->got);
		free(c->mem);
		c->mem = NULL;
	}
	if (r < 0) {
		if (c->fd >= 0)
			close(c->fd);
		c->fd = -1;
		return r;
	}
	if (c->rv)
		r = db_recv_finish(c->rv, flags, &c->r->opt.hooks);
	else
		r = db_apply_ltx(c->db, c->fd, flags, &c->r->opt.hooks);
	c->rv = NULL;
	close(c->fd);
	c->fd = -1;
	if (r < 0) {
		snprintf(c->err, sizeof(c->err),
			 "db '%s': rejected LTX %016" PRIx64 "-%016" PRIx64 " from the primary: %s",
			 db_name(c->db), h.min_txid, h.max_txid,
			 r == -EBADMSG	? "corrupt"
			 : r == -ESTALE ? "does not follow this node's position"
					: strerror(-r));
		return r;
	}
	log_debug("db '%s': applied LTX %016" PRIx64 "-%016" PRIx64, db_name(c->db), h.min_txid,
		  h.max_txid);
	metrics_add(ltx_header_is_snapshot(&h) ? MC_SNAPSHOTS_APPLIED : MC_LTX_APPLIED, 1);
	store_note_primary_time(c->r->opt.store, h.timestamp, false);
	return 0;
}

static int on_control(void *ctx, uint32_t type, int64_t ms, uint64_t epoch)
{
	struct conn *c = ctx;
	int r = pend_flush(c);
	if (r < 0)
		return r;
	if (type == STREAM_HEARTBEAT && store_note_epoch(c->r->opt.store, epoch) == -ESTALE) {
		snprintf(c->err, sizeof(c->err),
			 "refusing a heartbeat of epoch %" PRIu64 ": epoch %" PRIu64
			 " was seen, so the sender is no longer the primary",
			 epoch, store_epoch(c->r->opt.store));
		return -ESTALE;
	}
	switch (type) {
	case STREAM_READY:
		log_info("caught up with primary %s", c->hostname);
		store_set_ready(c->r->opt.store);
		break;
	case STREAM_HEARTBEAT:
		store_note_primary_time(c->r->opt.store, ms, true);
		break;
	case STREAM_END:
		c->ended = true;
		break;
	}
	return 0;
}

static int on_handoff(void *ctx, const char *token, uint64_t epoch)
{
	struct conn *c = ctx;
	int r = pend_flush(c);
	if (r < 0)
		return r;
	log_info("primary %s handed its lease to this node (epoch %" PRIu64 ")", c->hostname,
		 epoch);
	if (c->r->opt.on_handoff)
		c->r->opt.on_handoff(c->r->opt.handoff_ctx, token);
	return 0;
}

/* ------------------------------------------------------------- HTTP */

/* The response headers the stream needs (httpc on_header). */
static void on_header(void *ctx, const char *name, const char *value)
{
	struct conn *c = ctx;
	if (strcasecmp(name, "Ltxfs-Hostname") == 0)
		snprintf(c->hostname, sizeof(c->hostname), "%s", value);
	else if (strcasecmp(name, "Ltxfs-Cluster-Id") == 0)
		snprintf(c->cluster_id, sizeof(c->cluster_id), "%s", value);
	else if (strcasecmp(name, "Ltxfs-Node-Id") == 0)
		snprintf(c->peer_id, sizeof(c->peer_id), "%s", value);
	else if (strcasecmp(name, "Transfer-Encoding") == 0 && strcasecmp(value, "chunked") == 0)
		c->chunked = true;
}

static void on_status(void *ctx, long status)
{
	struct conn *c = ctx;
	c->status = status;
	if (status == 101)
		c->chunked = true; /* the frames follow in chunked coding (stream.h) */
}

/* The primary accepted the stream: 101, or 200 from an ltxfs without upgrades. */
static bool status_ok(long status)
{
	return status == 101 || status == 200;
}

/* The first body bytes: check who answered before applying anything. */
static int check_peer(struct conn *c)
{
	struct store *st = c->r->opt.store;
	char mine[21];
	if (!status_ok(c->status)) {
		snprintf(c->err, sizeof(c->err), "primary answered HTTP %ld", c->status);
		return -EPROTO;
	}
	store_cluster_id(st, mine);
	if (!store_cluster_id_valid(c->cluster_id)) {
		snprintf(c->err, sizeof(c->err), "primary sent no valid cluster ID");
		return -EPROTO;
	}
	if (!mine[0]) {
		int r = store_set_cluster_id(st, c->cluster_id);
		if (r < 0) {
			snprintf(c->err, sizeof(c->err), "cannot store cluster ID: %s",
				 strerror(-r));
			return r;
		}
		log_info("joined cluster %s", c->cluster_id);
	} else if (strcmp(mine, c->cluster_id) != 0) {
		snprintf(c->err, sizeof(c->err),
			 "primary belongs to cluster %s, this node to %s: not following it",
			 c->cluster_id, mine);
		return -EPROTO;
	}
	store_set_upstream(st, c->hostname[0] ? c->hostname : c->r->url);
	log_info("connected to primary %s (%s)", c->hostname, c->r->url);
	return 0;
}

static int feed_parser(void *ctx, const uint8_t *buf, size_t n)
{
	struct conn *c = ctx;
	return stream_parser_feed(&c->parser, buf, n);
}

/*
 * Each read of the body, straight from the receive buffer (httpc on_data,
 * raw: the chunked transfer coding is decoded here, so a read that holds
 * many chunks is one call and its frames one batch).
 */
static bool on_body(void *ctx, const char *buf, size_t n)
{
	struct conn *c = ctx;
	metrics_add(MC_STREAM_BYTES_RECEIVED, n);
	if (!c->checked) {
		c->checked = true;
		if (check_peer(c) < 0)
			return false;
	}
	if (!status_ok(c->status))
		return false;
	c->worked = true;
	int r = c->chunked
		    ? stream_chunked_feed(&c->dechunk, (const uint8_t *)buf, n, feed_parser, c)
		    : feed_parser(c, (const uint8_t *)buf, n);
	if (c->dechunk.err && !c->err[0])
		snprintf(c->err, sizeof(c->err),
			 "malformed chunked transfer coding from the primary");
	if (r < 0) {
		if (!c->err[0])
			snprintf(c->err, sizeof(c->err), "malformed stream frame from the primary");
		return false;
	}
	return pend_flush(c) == 0; /* what this chunk completed, as one batch */
}

/* Build the position map of every local database. */
static int posmap(struct store *st, uint8_t **ret, size_t *len)
{
	size_t n = store_count(st), k = 0;
	struct stream_pos *v = calloc(n ? n : 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct db *db = store_at(st, i);
		struct db_pos p;
		db_get_pos(db, &p);
		if (p.txid == 0)
			continue;
		/* left out, the primary sends a snapshot (OVERLAPPING FILES, db_apply.c) */
		if (db_wants_snapshot(db))
			continue;
		snprintf(v[k].name, sizeof(v[k].name), "%s", db_name(db));
		v[k].txid = p.txid;
		v[k].checksum = p.checksum;
		k++;
	}
	int r = stream_posmap_encode(v, k, ret, len);
	free(v);
	return r;
}

/* Log a failure once; repeats of the same message go to debug until a stream works. */
/* One connection; returns true if it made progress (resets the back-off). */
static bool run_once(struct replica *r)
{
	struct store *st = r->opt.store;
	struct conn c;
	uint8_t *body = NULL;
	size_t blen = 0;
	char url[2048], hid[64], hcid[64], hadv[1100], hauth[600];
	struct httpc_resp resp = {0};
	bool progress = false;

	char base[1024];
	pthread_mutex_lock(&r->mu);
	if (!r->url) {
		pthread_mutex_unlock(&r->mu);
		return false;
	}
	snprintf(base, sizeof(base), "%s", r->url);
	r->conn_gen = r->gen;
	r->cut = false;
	pthread_mutex_unlock(&r->mu);
	memset(&c, 0, sizeof(c));
	c.r = r;
	c.fd = -1;
	struct stream_parser_cb cb = {on_ltx_begin, on_ltx_data, on_ltx_end,
				      on_control,   &c,		 on_handoff};
	stream_parser_init(&c.parser, &cb);
	stream_chunked_init(&c.dechunk);
	if (posmap(st, &body, &blen) < 0)
		return false;
	snprintf(url, sizeof(url), "%s/stream", base);
	/*
	 * A stream that stays silent for 5 s (less than 1 byte per second: the
	 * primary sends a heartbeat every second) is dead. The 256 KiB receive
	 * buffer matches the primary's 256 KiB blocks.
	 */
	struct httpc_req req = {.method = "POST",
				.url = url,
				.body = (const char *)body,
				.body_len = blen,
				.connect_timeout_ms = 3000,
				.low_speed_bytes = 1,
				.low_speed_s = 5,
				.keepalive = true,
				.buffer_size = 256L * 1024,
				.raw_body = true,
				.abort = &r->stopping,
				.abort2 = &r->cut,
				.on_data = on_body,
				.on_header = on_header,
				.on_status = on_status,
				.ctx = &c};
	size_t nh = 0;
	snprintf(hid, sizeof(hid), "Ltxfs-Node-Id: %016" PRIX64, store_node_id(st));
	req.headers[nh++] = hid;
	char cid[21];
	store_cluster_id(st, cid);
	if (cid[0]) {
		snprintf(hcid, sizeof(hcid), "Ltxfs-Cluster-Id: %s", cid);
		req.headers[nh++] = hcid;
	}
	httpc_bearer(hauth, sizeof(hauth), r->opt.token);
	if (hauth[0])
		req.headers[nh++] = hauth;
	if (r->opt.advertise_url) {
		snprintf(hadv, sizeof(hadv), "Ltxfs-Advertise-Url: %s", r->opt.advertise_url);
		req.headers[nh++] = hadv;
	}
	req.headers[nh++] = "Content-Type: application/octet-stream";
	req.headers[nh++] = "Connection: Upgrade";
	req.headers[nh++] = "Upgrade: " STREAM_UPGRADE;
	int hr = httpc_do(&req, &resp);
	if (!c.checked && hr == 0) {
		/* a response with no body at all: an error status */
		c.status = resp.status;
		snprintf(c.err, sizeof(c.err), "primary answered HTTP %ld", c.status);
	}
	progress = c.worked;
	r->last_status = c.status;
	if (progress)
		r->last_err[0] = '\0';
	if (r->stopping || r->gen != r->conn_gen)
		goto out;
	if (c.ended && stream_parser_idle(&c.parser))
		log_info("primary %s closed the stream", c.hostname);
	else if (c.err[0])
		log_warn_repeat(r->last_err, "replication stream from %s: %s (retrying)", base,
				c.err);
	else if (hr < 0)
		log_warn_repeat(r->last_err, "replication stream from %s (retrying)", resp.err);
	else
		log_warn_repeat(r->last_err,
				"replication stream from %s ended without an END frame (retrying)",
				base);
out:
	pend_drop(&c);
	free(c.mem);
	db_recv_free(c.rv);
	if (c.fd >= 0)
		close(c.fd);
	if (c.checked && status_ok(c.status))
		store_set_upstream(st, NULL);
	httpc_resp_release(&resp);
	free(body);
	return progress;
}

static void *replica_run(void *arg)
{
	struct replica *r = arg;
	int64_t backoff = 50;
	uint64_t last_gen = 0;
	while (!r->stopping) {
		pthread_mutex_lock(&r->mu);
		while (!r->stopping && !r->url)
			pthread_cond_wait(&r->cond, &r->mu);
		uint64_t gen = r->gen;
		pthread_mutex_unlock(&r->mu);
		if (r->stopping)
			break;
		if (gen != last_gen) /* a new primary: its failures so far are not ours */
			backoff = 50;
		last_gen = gen;
		int64_t t0 = clock_mono_ms();
		bool progress = run_once(r);
		if (r->stopping)
			break;
		if (r->gen != gen) { /* a new primary: connect at once */
			backoff = 50;
			continue;
		}
		if (progress && clock_mono_ms() - t0 > 1000)
			backoff = 50;
		if (r->last_status == 503 && backoff > 100)
			backoff = 100; /* elected but not serving yet: it will be in a moment */
		struct timespec ts = clock_deadline(CLOCK_MONOTONIC, backoff);
		pthread_mutex_lock(&r->mu);
		while (!r->stopping && r->gen == gen &&
		       pthread_cond_timedwait(&r->cond, &r->mu, &ts) == 0)
			;
		pthread_mutex_unlock(&r->mu);
		backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
	}
	return NULL;
}

int replica_start(struct replica **ret, const struct replica_options *opt)
{
	struct replica *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->opt = *opt;
	if (opt->primary_url) {
		r->url = strdup(opt->primary_url);
		if (!r->url) {
			free(r);
			return -ENOMEM;
		}
		size_t n = strlen(r->url);
		while (n && r->url[n - 1] == '/')
			r->url[--n] = '\0';
	}
	pthread_mutex_init(&r->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cond, &ca);
	pthread_condattr_destroy(&ca);
	int e = pthread_create(&r->thread, NULL, replica_run, r);
	if (e) {
		replica_stop(r);
		return -e;
	}
	r->started = true;
	*ret = r;
	return 0;
}

int replica_follow(struct replica *r, const char *url)
{
	char *u = NULL;
	if (url) {
		if (!(u = strdup(url)))
			return -ENOMEM;
		size_t n = strlen(u);
		while (n && u[n - 1] == '/')
			u[--n] = '\0';
	}
	pthread_mutex_lock(&r->mu);
	if ((!u && !r->url) || (u && r->url && strcmp(u, r->url) == 0)) {
		pthread_mutex_unlock(&r->mu);
		free(u);
		return 0;
	}
	free(r->url);
	r->url = u;
	__atomic_add_fetch(&r->gen, 1, __ATOMIC_RELAXED);
	r->cut = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->mu);
	if (!u)
		store_set_upstream(r->opt.store, NULL);
	return 0;
}

void replica_stop(struct replica *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->mu);
	r->stopping = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->mu);
	if (r->started)
		pthread_join(r->thread, NULL);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cond);
	free(r->url);
	free(r);
}
