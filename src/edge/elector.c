/*
 * elector.c - the role loop: Consul or etcd decides who is primary.
 *
 * The lease loop, one thread in two states:
 *
 *   FOLLOWER  lease_observe() (a blocking query or watch) tells who holds
 *             the key. A holder: follow its advertise-url as a replica and
 *             note its epoch (frames from an older epoch are refused from
 *             then on). No holder, and this node is a candidate: acquire.
 *             Won: check the cluster ID beside the key (compare-and-set),
 *             renew once, persist the epoch, and become PRIMARY. Lock-delay
 *             (Consul): retry after a second. A HANDOFF token received from
 *             the primary: take the lease over with it at once.
 *   PRIMARY   renew every TTL/3. Each renewal that succeeds moves the local
 *             deadline to send time + TTL - margin, where send time is taken
 *             before the request leaves, so the deadline always falls before
 *             the backend can free the key (Consul frees it no sooner than
 *             TTL after the last renewal it processed, etcd likewise). The
 *             fence (store_may_commit, checked at every commit point under
 *             the database lock) refuses commits past the deadline on its
 *             own, even if this thread is stuck. A renewal that says the
 *             session/lease is gone, or a deadline that passes, demotes the
 *             node at once; it then follows whoever holds the key next.
 *
 * Handoff (POST /handoff on the primary, asked by POST /promote on a
 * replica): the primary fences commits, its stream to that replica sends
 * everything up to the current position and then a HANDOFF frame with the
 * lease token (Consul session ID, etcd lease ID); the primary steps down
 * without releasing; the replica re-acquires the key with the token, which
 * gives a new epoch and needs no lock-delay. If the replica never does, the
 * lease expires and a normal election follows.
 *
 * Adoption (a new primary after an unclean failover; docs/leases.md 6.2).
 * For ADOPT_WINDOW_MS after an election the store refuses commits, and then
 * for as long as an offer is queued or running, up to ADOPT_MAX_MS after the
 * election (store_adopt_begin/end; writes through the mount wait meanwhile,
 * store_await_writes). The lease loop logs when writes open ("this node
 * accepts writes, N ms after it took the lease"). As long as nothing has
 * committed in the term (store_can_adopt) a replica
 * whose position is ahead on the same chain may hand its extra
 * transactions over. Its POST /stream handler (httpd_stream.c) posts an
 * offer (elector_adopt: the replica's URL and position map) and waits; the
 * adopter thread takes the offers one at a time and, per database the
 * replica is ahead in, fetches TXID+1, TXID+2, ... with GET <url>/ltx and
 * applies each with db_apply_ltx, whose chain check accepts only a
 * continuation of this node's own history. It stops at the first failure
 * or once something commits; the stream then starts from the position
 * reached. The adopter is a thread of its own so that a slow replica never
 * delays a renewal.
 *
 *   offer:  QUEUED --(adopter takes it)--> FETCHING --> DONE (caller wakes)
 *           QUEUED --(elector_stop)------------------> DONE
 *           (elector_stop also cuts a fetch short: FETCHING --> DONE)
 *
 * Threads: the elector thread runs the loop and is the only user of the
 * lease object, except lease_kick()/lease_abort() which interrupt it. The
 * adopter thread runs the offers. Other threads post requests under e->mu:
 * the HTTP connection threads (handoff, promote, adoption offers, which
 * wait on adopt_cond for their offer to be done) and the replica thread (a
 * received HANDOFF token). elector_stop joins both threads and then waits
 * until no caller is left inside elector_adopt before it frees anything.
 */
#include "ltxfs/elector.h"
#include "ltxfs/clock.h"

#include "ltxfs/fsutil.h"
#include "ltxfs/httpc.h"
#include "ltxfs/log.h"
#include "ltxfs/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct elector {
	struct elector_options opt;
	char *value;
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	volatile bool stop; /* also ends the adopter's requests (httpc abort) */
	bool primary;
	char token[256];    /* this primary's lease token */
	bool handing_off;   /* primary: fenced for a handoff */
	bool handed_off;    /* primary: the successor has the token */
	char rx_token[256]; /* follower: token received in a HANDOFF frame */
	bool rx;
	char follow_url[1024]; /* the primary followed now ("" none) */
	char follow_host[256];
	bool promote_pending;
	bool synced_once;   /* has been caught up with a primary in this process */
	int64_t elected_ms; /* primary: when this term began (CLOCK_MONOTONIC) */
	bool open_logged;   /* primary: "accepts writes" has been logged for this term */
	char last_err[LOG_LAST_LEN];
	/* adoption, under mu */
	struct offer *offers, **offers_tail; /* queued for the adopter */
	size_t adopt_callers;		     /* threads inside elector_adopt */
	pthread_cond_t adopt_cond;	     /* an offer queued or done; a caller left */
	pthread_t adopter;
	bool adopter_started;
};

/* One elector_adopt call's offer, on its caller's stack. */
struct offer {
	const struct elector_offer *o;
	struct offer *next;
	bool done; /* under mu: the caller may return */
};

/*
 * After an election (not a handoff, whose successor is exactly caught up),
 * commits wait this long: the other replicas reconnect within milliseconds
 * and one that received more of the dead primary's stream than this node
 * hands those transactions over (adopter thread, below) before anything new
 * commits on top.
 */
#define ADOPT_WINDOW_MS 500

/*
 * An adoption that began in the window holds writes back until it is done,
 * but no longer than this after the election: a replica that serves its
 * transactions slowly (or not at all: each GET /ltx may take 10 s) must not
 * keep the new primary read-only. Past it, the first commit ends adoption
 * and what was not adopted is orphaned on that replica (section 7 of
 * docs/leases.md).
 */
#define ADOPT_MAX_MS 10000

/* Margin between the local deadline and the earliest the backend frees the key. */
static int64_t margin_ms(int64_t ttl)
{
	return ttl >= 5000 ? 1000 : ttl / 5;
}

/* Sleep up to ms unless woken (stop, handoff). Caller holds e->mu. */
static void nap_locked(struct elector *e, int64_t ms)
{
	struct timespec ts = clock_deadline(CLOCK_MONOTONIC, ms);
	pthread_cond_timedwait(&e->cond, &e->mu, &ts);
}

static void nap(struct elector *e, int64_t ms)
{
	pthread_mutex_lock(&e->mu);
	if (!e->stop && !e->rx && !e->handed_off)
		nap_locked(e, ms);
	pthread_mutex_unlock(&e->mu);
}

static void follow(struct elector *e, const char *url, const char *host)
{
	pthread_mutex_lock(&e->mu);
	bool same = strcmp(e->follow_url, url ? url : "") == 0;
	snprintf(e->follow_url, sizeof(e->follow_url), "%s", url ? url : "");
	snprintf(e->follow_host, sizeof(e->follow_host), "%s", host ? host : "");
	pthread_mutex_unlock(&e->mu);
	if (same)
		return;
	if (url)
		log_info("primary is now %s (%s)", host && *host ? host : "?", url);
	e->opt.follow(e->opt.ctx, url);
}

static void demote(struct elector *e, const char *why)
{
	metrics_add(MC_LEASE_LOST, 1);
	store_set_primary(e->opt.store, false);
	store_set_fenced(e->opt.store, false);
	pthread_mutex_lock(&e->mu);
	e->primary = false;
	e->handing_off = e->handed_off = false;
	e->token[0] = '\0';
	pthread_mutex_unlock(&e->mu);
	log_warn("stepped down as primary: %s", why);
}

/* Cluster ID beside the key: set it from ours when absent; adopt or refuse a different one. */
static int check_cluster_id(struct elector *e)
{
	struct store *st = e->opt.store;
	char mine[21], stored[21];
	int r = store_ensure_cluster_id(st);
	if (r < 0)
		return r;
	store_cluster_id(st, mine);
	r = lease_cluster_id(e->opt.lease, mine, stored);
	if (r < 0)
		return r;
	if (!stored[0] || strcmp(stored, mine) == 0)
		return 0;
	bool empty = true;
	for (size_t i = 0, n = store_count(st); i < n && empty; i++) {
		struct db_pos p;
		db_get_pos(store_at(st, i), &p);
		empty = p.txid == 0;
	}
	if (empty && store_set_cluster_id(st, stored) == 0) {
		log_info("adopted cluster ID %s from the lease backend", stored);
		return 0;
	}
	log_warn_repeat(
	    e->last_err,
	    "lease backend holds cluster ID %s but this node has data of cluster %s; not "
	    "taking the lease (see docs/leases.md)",
	    stored, mine);
	return -EXDEV;
}

/*
 * Just won the lease. After an election: check the cluster ID and renew once
 * so that the deadline counts from a known renewal. After a handoff (t0 >= 0:
 * the takeover began with a renewal sent at t0, and this node was already
 * streaming from the same cluster) neither is needed: every millisecond here
 * is write unavailability.
 */
static void become_primary(struct elector *e, uint64_t epoch, int64_t t0, int64_t ttl)
{
	struct lease *l = e->opt.lease;
	bool handoff = t0 >= 0;
	int r;
	if (!handoff) {
		r = check_cluster_id(e);
		if (r < 0) {
			if (r != -EXDEV)
				log_warn_repeat(
				    e->last_err,
				    "cannot check the cluster ID in the lease backend: %s", l->err);
			lease_release(l);
			/* a cluster ID mismatch needs an operator: do not churn the key */
			nap(e, r == -EXDEV ? 10 * e->opt.reconnect_delay_ms
					   : e->opt.reconnect_delay_ms);
			return;
		}
		t0 = clock_mono_ms();
		r = lease_renew(l, &ttl);
		if (r < 0) {
			log_warn_repeat(e->last_err, "renewing the lease just acquired failed: %s",
					l->err);
			lease_release(l);
			return;
		}
	}
	r = store_become_primary(e->opt.store, epoch, t0 + ttl - margin_ms(ttl),
				 handoff ? 0 : ADOPT_WINDOW_MS, ADOPT_MAX_MS);
	if (r < 0) {
		log_error("cannot become primary with epoch %" PRIu64 " (highest seen %" PRIu64
			  "): %s",
			  epoch, store_epoch(e->opt.store), strerror(-r));
		lease_release(l);
		nap(e, e->opt.reconnect_delay_ms);
		return;
	}
	follow(e, NULL, NULL);
	pthread_mutex_lock(&e->mu);
	e->primary = true;
	e->elected_ms = clock_mono_ms();
	e->open_logged = false;
	e->promote_pending = false;
	if (lease_handoff_token(l, e->token, sizeof(e->token)) < 0)
		e->token[0] = '\0';
	pthread_mutex_unlock(&e->mu);
	e->last_err[0] = '\0';
	metrics_add(MC_LEASE_ACQUIRED, 1);
	log_info("this node is now the primary (lease %s, epoch %" PRIu64 ", ttl %" PRId64 " ms)",
		 l->ops->name, epoch, ttl);
}

/*
 * Log once per term when the start of the term is over (the node now says
 * isPrimary and accepts writes), and wake /events streams and waiters. Until
 * then the loop naps no later than the next moment it can end (the window,
 * the adoption cap); the end of an adoption wakes it (elector_adopt).
 */
static int64_t note_open(struct elector *e, int64_t now)
{
	if (e->open_logged)
		return INT64_MAX;
	if (store_primary_ready(e->opt.store)) {
		e->open_logged = true;
		store_kick(e->opt.store);
		log_info("this node accepts writes, %" PRId64 " ms after it took the lease",
			 now - e->elected_ms);
		return INT64_MAX;
	}
	int64_t w = e->elected_ms + ADOPT_WINDOW_MS;
	if (now >= w)
		w = e->elected_ms + ADOPT_MAX_MS;
	return w > now ? w : now + 1;
}

static void run_primary(struct elector *e, int64_t *next_renew)
{
	struct lease *l = e->opt.lease;
	int64_t wake = note_open(e, clock_mono_ms());
	pthread_mutex_lock(&e->mu);
	int64_t now = clock_mono_ms();
	if (wake > *next_renew)
		wake = *next_renew;
	if (!e->stop && !e->handed_off && now < wake)
		nap_locked(e, wake - now);
	bool handed = e->handed_off, stop = e->stop;
	pthread_mutex_unlock(&e->mu);
	if (stop)
		return;
	if (handed) {
		lease_forget(l);
		demote(e, "the lease was handed to another node");
		return;
	}
	now = clock_mono_ms();
	if (now < *next_renew)
		return;
	int64_t ttl = l->ttl_ms;
	int r = lease_renew(l, &ttl);
	if (r == 0) {
		/*
		 * The session/lease lives; does the key still name this term? An
		 * operator may have deleted or overwritten it (locks are advisory),
		 * and a successor may then hold it already.
		 */
		struct lease_holder hd;
		uint64_t idx = 0;
		if (lease_observe(l, &idx, 0, &hd) == 0 &&
		    (!hd.present || strcmp(hd.advertise_url, e->opt.advertise_url) != 0 ||
		     hd.epoch != store_epoch(e->opt.store))) {
			log_error("the lease key no longer names this node's term (%s)",
				  hd.present ? hd.advertise_url : "no holder");
			demote(e, "lease key changed under this node");
			lease_release(l);
			return;
		}
		store_extend_lease(e->opt.store, now + ttl - margin_ms(ttl));
		metrics_add(MC_LEASE_RENEWALS, 1);
		*next_renew = now + ttl / 3;
		e->last_err[0] = '\0';
		return;
	}
	if (r == -ESTALE) {
		log_error("the primary lease is gone: %s", l->err);
		demote(e, "lease lost");
		return;
	}
	if (r == -ECANCELED)
		return;
	metrics_add(MC_LEASE_RENEW_FAILURES, 1);
	log_warn_repeat(e->last_err, "renewing the primary lease failed: %s (retrying)", l->err);
	*next_renew = clock_mono_ms() + 1000;
	if (clock_mono_ms() >= store_lease_until(e->opt.store)) {
		log_error("could not renew the primary lease before its local deadline");
		demote(e, "lease deadline passed");
		lease_release(l); /* best effort: lets a successor in sooner */
	}
}

/* POST <url>/handoff?nodeID=<this node>: 0, or -errno with err filled. */
static int request_handoff(struct elector *e, const char *url, long timeout_ms, char *err, size_t n)
{
	char u[1200], auth[600];
	struct httpc_resp resp;
	httpc_bearer(auth, sizeof(auth), e->opt.token);
	snprintf(u, sizeof(u), "%s/handoff?nodeID=%016" PRIX64, url, store_node_id(e->opt.store));
	struct httpc_req req = {.method = "POST",
				.url = u,
				.headers = {auth[0] ? auth : NULL},
				.timeout_ms = timeout_ms};
	int r = httpc_do(&req, &resp);
	if (r < 0) {
		snprintf(err, n, "handoff request to %s failed: %s", url, resp.err);
	} else if (resp.status != 200) {
		snprintf(err, n, "primary %s refused the handoff: HTTP %ld %.200s", url,
			 resp.status, resp.body);
		r = -EIO;
	}
	httpc_resp_release(&resp);
	return r;
}

static void ask_handoff(struct elector *e, const char *url)
{
	char err[512];
	if (request_handoff(e, url, 10000, err, sizeof(err)) < 0)
		log_warn("%s", err);
}

/*
 * A node with no data that has never been in sync with a primary must not
 * lead an existing cluster: its empty databases would replace everyone's
 * (the others would keep theirs only as orphans). It may lead when it has
 * data, when it was caught up with a primary in this process, or when the
 * backend holds no cluster ID yet (a new cluster).
 */
static bool may_lead(struct elector *e)
{
	if (e->synced_once || store_has_data(e->opt.store))
		return true;
	char stored[21];
	int r = lease_cluster_id(e->opt.lease, NULL, stored);
	if (r < 0) {
		log_warn_repeat(e->last_err,
				"cannot read the cluster ID from the lease backend: %s",
				e->opt.lease->err);
		return false;
	}
	if (!stored[0])
		return true;
	log_warn_repeat(e->last_err,
			"not taking the lease: this node has no data and has not caught up with a "
			"primary of cluster %s yet",
			stored);
	return false;
}

static void run_follower(struct elector *e, uint64_t *index)
{
	struct lease *l = e->opt.lease;
	char token[256];
	uint64_t epoch = 0;
	int64_t ttl;
	int r;

	pthread_mutex_lock(&e->mu);
	bool rx = e->rx;
	snprintf(token, sizeof(token), "%s", e->rx_token);
	e->rx = false;
	pthread_mutex_unlock(&e->mu);
	if (rx) {
		int64_t t0 = clock_mono_ms();
		r = lease_acquire_handoff(l, token, e->value, &epoch, &ttl);
		if (r == 0) {
			become_primary(e, epoch, t0, ttl);
			return;
		}
		log_warn_repeat(e->last_err, "taking over the handed-off lease failed: %s",
				r == LEASE_HELD ? "the key changed hands" : l->err);
	}

	struct lease_holder hd;
	pthread_mutex_lock(&e->mu);
	bool promote = e->promote_pending;
	pthread_mutex_unlock(&e->mu);
	int wait = promote ? 1000 : 5000;
	r = lease_observe(l, index, *index ? wait : 0, &hd);
	if (r == -ECANCELED)
		return;
	if (r < 0) {
		log_warn_repeat(e->last_err, "reading the primary lease failed: %s", l->err);
		*index = 0;
		nap(e, e->opt.reconnect_delay_ms);
		return;
	}
	bool mine = hd.present && strcmp(hd.advertise_url, e->opt.advertise_url) == 0;
	if (hd.present && !mine) {
		if (store_note_epoch(e->opt.store, hd.epoch) < 0)
			log_warn_repeat(e->last_err,
					"the lease names epoch %" PRIu64 ", older than %" PRIu64
					" seen before; following it anyway",
					hd.epoch, store_epoch(e->opt.store));
		follow(e, hd.advertise_url, hd.hostname);
		if (store_caught_up(e->opt.store))
			e->synced_once = true;
		if (promote && store_caught_up(e->opt.store)) {
			pthread_mutex_lock(&e->mu);
			e->promote_pending = false;
			pthread_mutex_unlock(&e->mu);
			log_info("lease.promote: asking %s for a handoff", hd.advertise_url);
			ask_handoff(e, hd.advertise_url);
		}
		return;
	}
	if (!mine)
		follow(e, NULL, NULL);
	if (!e->opt.candidate)
		return; /* the next observe blocks until the key changes */
	if (!may_lead(e)) {
		nap(e, e->opt.reconnect_delay_ms);
		*index = 0;
		return;
	}
	r = lease_acquire(l, e->value, &epoch, &ttl);
	if (r == 0) {
		become_primary(e, epoch, -1, ttl);
		return;
	}
	*index = 0;
	if (r == LEASE_HELD) {
		if (mine) /* our own key from an earlier run: wait for it to expire */
			nap(e, e->opt.reconnect_delay_ms);
		return;
	}
	if (r == LEASE_DELAYED) {
		log_debug("lease is in lock-delay; retrying");
		nap(e, e->opt.reconnect_delay_ms);
		return;
	}
	if (r != -ECANCELED) {
		log_warn_repeat(e->last_err, "acquiring the primary lease failed: %s", l->err);
		nap(e, e->opt.reconnect_delay_ms);
	}
}

static void *elector_run(void *arg)
{
	struct elector *e = arg;
	uint64_t index = 0;
	int64_t next_renew = 0;
	for (;;) {
		pthread_mutex_lock(&e->mu);
		bool stop = e->stop, primary = e->primary;
		pthread_mutex_unlock(&e->mu);
		if (stop)
			break;
		if (primary) {
			run_primary(e, &next_renew);
			if (!e->primary)
				index = 0;
		} else {
			run_follower(e, &index);
			if (e->primary)
				next_renew = clock_mono_ms() + e->opt.lease->ttl_ms / 3;
		}
	}
	if (e->primary) {
		/* Stop commits first, then free the key for a successor at once. */
		store_set_primary(e->opt.store, false);
		int r = lease_release(e->opt.lease);
		if (r < 0)
			log_warn("releasing the primary lease failed: %s", e->opt.lease->err);
		else
			log_info("released the primary lease");
		e->primary = false;
	}
	return NULL;
}

/* ------------------------------------------------------------ adoption */

/* httpc on_data: the fetched LTX file into its temporary file. */
static bool to_fd(void *ctx, const char *buf, size_t n)
{
	return fs_write_full(*(int *)ctx, buf, n) == 0;
}

/*
 * A primary elected after its predecessor died, with nothing committed yet
 * in its term, takes over the transactions a connecting replica received
 * beyond this node's own position: the replica serves them (GET /ltx) and
 * each is verified and chained exactly as a replica applies it, so only a
 * continuation of this node's own history is accepted. Without this, a
 * transaction that reached some replica but not the new primary would be
 * orphaned. Adopter thread.
 */
static void adopt(struct elector *e, const struct elector_offer *o)
{
	struct store *st = e->opt.store;
	for (size_t i = 0; i < o->n && store_can_adopt(st); i++) {
		const struct stream_pos *pm = &o->pos[i];
		struct db *db = store_find(st, pm->name);
		struct db_pos p;
		if (!db)
			continue;
		db_get_pos(db, &p);
		if (p.txid == 0 || pm->txid <= p.txid)
			continue;
		char *qname = httpc_escape(pm->name);
		if (!qname)
			break;
		uint64_t got = 0;
		for (uint64_t tx = p.txid + 1; tx <= pm->txid && store_can_adopt(st); tx++) {
			char url[1400];
			int fd;
			struct httpc_resp resp;
			if (db_ltx_tmpfile(db, &fd) < 0)
				break;
			snprintf(url, sizeof(url), "%s/ltx?db=%s&txid=%016" PRIx64, o->url, qname,
				 tx);
			char auth[600];
			httpc_bearer(auth, sizeof(auth), e->opt.token);
			struct httpc_req req = {.method = "GET",
						.url = url,
						.headers = {auth[0] ? auth : NULL},
						.timeout_ms = 10000,
						.abort = &e->stop,
						.on_data = to_fd,
						.ctx = &fd};
			int r = httpc_do(&req, &resp);
			if (r == 0 && resp.status != 200)
				r = -ENOENT;
			httpc_resp_release(&resp);
			if (r == 0)
				r = db_apply_ltx(db, fd, 0, o->hooks);
			close(fd);
			if (r < 0) {
				log_warn("db '%s': cannot adopt TXID %016" PRIx64
					 " from replica %016" PRIX64 ": %s",
					 pm->name, tx, o->peer, strerror(-r));
				break;
			}
			/* the file may have been a range (group commit): go on after it */
			struct db_pos np;
			db_get_pos(db, &np);
			got += np.txid - tx + 1;
			tx = np.txid;
		}
		free(qname);
		if (got)
			log_warn("db '%s': adopted %" PRIu64
				 " transaction(s) from replica %016" PRIX64
				 " that the previous primary had sent to it but not to this node",
				 pm->name, got, o->peer);
	}
}

/* The adopter thread: run the queued offers in turn; at stop, drop the rest. */
static void *adopter_run(void *arg)
{
	struct elector *e = arg;
	pthread_mutex_lock(&e->mu);
	for (;;) {
		while (!e->stop && !e->offers)
			pthread_cond_wait(&e->adopt_cond, &e->mu);
		struct offer *f = e->offers;
		if (!f)
			break; /* stopping, nothing queued */
		e->offers = f->next;
		if (!e->offers)
			e->offers_tail = &e->offers;
		bool stop = e->stop;
		pthread_mutex_unlock(&e->mu);
		if (!stop)
			adopt(e, f->o);
		pthread_mutex_lock(&e->mu);
		f->done = true;
		pthread_cond_broadcast(&e->adopt_cond);
	}
	pthread_mutex_unlock(&e->mu);
	return NULL;
}

void elector_adopt(struct elector *e, const struct elector_offer *o)
{
	struct offer f = {.o = o};
	pthread_mutex_lock(&e->mu);
	if (e->stop || !e->adopter_started) {
		pthread_mutex_unlock(&e->mu);
		return;
	}
	e->adopt_callers++;
	/* writes wait for this offer, within ADOPT_MAX_MS (cmu is a leaf lock) */
	store_adopt_begin(e->opt.store);
	*e->offers_tail = &f;
	e->offers_tail = &f.next;
	pthread_cond_broadcast(&e->adopt_cond);
	while (!f.done)
		pthread_cond_wait(&e->adopt_cond, &e->mu);
	store_adopt_end(e->opt.store);
	e->adopt_callers--;
	pthread_cond_broadcast(&e->adopt_cond);
	pthread_cond_broadcast(&e->cond); /* the lease loop logs when writes open */
	pthread_mutex_unlock(&e->mu);
}

/* ----------------------------------------------------------- lifecycle */

int elector_start(struct elector **ret, const struct elector_options *opt)
{
	struct elector *e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->opt = *opt;
	e->value = lease_value_encode(opt->hostname, opt->advertise_url);
	if (!e->value) {
		free(e);
		return -ENOMEM;
	}
	e->promote_pending = opt->promote;
	e->offers_tail = &e->offers;
	pthread_mutex_init(&e->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&e->cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&e->adopt_cond, NULL);
	store_set_primary(opt->store, false);
	store_set_candidate(opt->store, opt->candidate);
	int r = pthread_create(&e->adopter, NULL, adopter_run, e);
	if (r) {
		elector_stop(e);
		return -r;
	}
	e->adopter_started = true;
	r = pthread_create(&e->thread, NULL, elector_run, e);
	if (r) {
		elector_stop(e);
		return -r;
	}
	e->started = true;
	*ret = e;
	return 0;
}

void elector_stop(struct elector *e)
{
	if (!e)
		return;
	pthread_mutex_lock(&e->mu);
	e->stop = true;
	pthread_cond_broadcast(&e->cond);
	pthread_cond_broadcast(&e->adopt_cond);
	pthread_mutex_unlock(&e->mu);
	lease_kick(e->opt.lease);
	if (e->started)
		pthread_join(e->thread, NULL);
	if (e->adopter_started)
		pthread_join(e->adopter, NULL);
	/* every offer is done now; wait for their callers to leave elector_adopt */
	pthread_mutex_lock(&e->mu);
	while (e->adopt_callers > 0)
		pthread_cond_wait(&e->adopt_cond, &e->mu);
	pthread_mutex_unlock(&e->mu);
	pthread_mutex_destroy(&e->mu);
	pthread_cond_destroy(&e->cond);
	pthread_cond_destroy(&e->adopt_cond);
	free(e->value);
	free(e);
}

int elector_handoff_begin(struct elector *e, char *token, size_t n)
{
	pthread_mutex_lock(&e->mu);
	int r = 0;
	if (!e->primary || !e->token[0])
		r = -EPERM;
	else if (e->handing_off || e->handed_off)
		r = -EBUSY;
	else {
		e->handing_off = true;
		snprintf(token, n, "%s", e->token);
	}
	pthread_mutex_unlock(&e->mu);
	if (r == 0)
		store_set_fenced(e->opt.store, true);
	return r;
}

void elector_handoff_end(struct elector *e, bool ok)
{
	pthread_mutex_lock(&e->mu);
	e->handing_off = false;
	if (ok)
		e->handed_off = true;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->mu);
	if (!ok)
		store_set_fenced(e->opt.store, false);
}

void elector_handoff_received(struct elector *e, const char *token)
{
	pthread_mutex_lock(&e->mu);
	snprintf(e->rx_token, sizeof(e->rx_token), "%s", token);
	e->rx = true;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->mu);
	lease_kick(e->opt.lease);
}

int elector_promote(struct elector *e, int timeout_ms, char *err, size_t n)
{
	char url[1024];
	pthread_mutex_lock(&e->mu);
	bool primary = e->primary;
	snprintf(url, sizeof(url), "%s", e->follow_url);
	pthread_mutex_unlock(&e->mu);
	if (primary) {
		snprintf(err, n, "this node is already the primary");
		return -EALREADY;
	}
	if (!e->opt.candidate) {
		snprintf(err, n, "this node is not a candidate (lease.candidate: false)");
		return -EPERM;
	}
	if (!url[0]) {
		snprintf(err, n, "no primary to hand over from");
		return -ENOENT;
	}
	int r = request_handoff(e, url, timeout_ms, err, n);
	if (r < 0)
		return r;
	int64_t end = clock_mono_ms() + timeout_ms;
	while (clock_mono_ms() < end) {
		if (store_accepts_writes(e->opt.store))
			return 0;
		struct timespec ts = {0, 2000000};
		nanosleep(&ts, NULL);
	}
	snprintf(err, n, "the handoff frame arrived but this node did not become primary in time");
	return -ETIMEDOUT;
}

void elector_primary(struct elector *e, char *url, size_t un, char *host, size_t hn)
{
	pthread_mutex_lock(&e->mu);
	snprintf(url, un, "%s", e->primary ? e->opt.advertise_url : e->follow_url);
	snprintf(host, hn, "%s", e->primary ? e->opt.hostname : e->follow_host);
	pthread_mutex_unlock(&e->mu);
}
