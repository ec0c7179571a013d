/*
 * httpd_sender.c - the one thread that writes every replica's stream.
 *
 * WHY ONE THREAD. A commit must reach every replica. With a thread per
 * stream, each commit woke each stream's thread, and on a virtual machine a
 * wake-up and the switch to that thread cost more than the send itself: the
 * primary paid 20-60 us of CPU per replica per transaction. Here a commit
 * wakes one thread, which writes each replica's socket in turn; what a
 * further replica costs is the send.
 *
 * CONNECTION. POST /stream is an HTTP/1.1 upgrade: the replica asks with
 * "Connection: Upgrade" and "Upgrade: ltxfs-stream", httpd_serve_stream
 * checks the request and answers 101, and libmicrohttpd then hands the
 * socket to httpd_sender_adopt, on the connection's thread. It makes the
 * socket non-blocking, links the stream into h->streams and wakes the
 * sender. From then on the socket is the sender's alone, until the sender
 * closes it with MHD_upgrade_action (the connection's thread has ended;
 * libmicrohttpd frees the connection after that close). The bytes after the 101 are HTTP chunked
 * coding, as before the upgrade was used, so the replica's decoder is unchanged.
 *
 * ROUND. The sender repeats rounds. In a round it pumps each stream: write
 * what its buffer still holds (one HTTP chunk: size line, up to
 * STREAM_BLOCK bytes of whole frames, CRLF); if that went out entirely,
 * fill the buffer once (stream_fill, httpd_stream.c) and write it. One fill
 * per stream per round keeps a replica that takes a snapshot or catches up
 * from starving the others. A pump ends in one of four states:
 *
 *   IDLE     nothing left to send: wait for the next commit
 *   MORE     the fill stopped at a full buffer: another round at once
 *   BLOCKED  the socket is full (the replica reads slowly): poll it
 *   CLOSE    END sent, or an error: close the socket, free the stream
 *
 * IDLE. With no stream at all, the sender sleeps on h->sender_cond until
 * one is adopted, so that commits on a primary without replicas wake
 * nobody (the change counter's bump is then one atomic increment).
 *
 * STUCK. A replica whose socket has taken nothing for SENDER_STUCK_MS
 * (30 s, libmicrohttpd's idle timeout, which no longer applies once the
 * connection is upgraded) is cut off: it no longer holds back retention
 * or keeps the sender polling. TCP_USER_TIMEOUT does the same for a peer
 * that vanished with data unacknowledged.
 *
 * WAITING. Between rounds, with every stream IDLE, the sender sleeps on the
 * store's change counter (store_wait_change) until the next commit, role
 * change or kick, or the next heartbeat is due. With a BLOCKED stream it
 * polls those sockets for room instead, for at most 1 ms, so the other
 * replicas' commits wait no longer than that.
 *
 * COALESCING. Rounds that send happen at most once per
 * SENDER_COALESCE_NS. While busy (the last two sending rounds were less
 * than 1.5 intervals apart) the sender sleeps out the rest of the interval
 * and finds the commits made meanwhile: under thousands of commits per
 * second, one wake-up and one send per replica carry many transactions,
 * and the replica applies them as one batch. When commits are further
 * apart, each wakes it at once. It adds at most 1 ms to the replication
 * lag.
 *
 * INLINE SENDS. Even so, each commit woke the sender, and that wake-up
 * (this VM's IPI, the switch, the sender's return to sleep) cost the
 * primary more than the send: 30-90 us per transaction in DELETE mode,
 * whose commits are too far apart to coalesce. So the FUSE worker that
 * committed sends it itself, after its reply: its operation defers the
 * wake-up (store_defer_begin/end), and store_defer_end calls
 * httpd_sender_push, the store's pusher, while the sender sleeps on standby
 * (store_wait_change_standby). The push takes pump_mu only if it is free
 * and pumps each stream that is quiet (nothing pending, no snapshot, no
 * file open) with h->pushing set, so that its fill sends only LTX files
 * already in the LTX cache (stream_next_cached): a prepared rollback-mode
 * commit's, or a range file just written. It returns true when every
 * stream ended IDLE; in any other case (the sender is pumping, a stream
 * is busy or blocked, a file must be written or read, a snapshot) it
 * returns false and the store wakes the sender, which does the rest. A
 * push is one send per replica, on a thread that is running anyway; the
 * sender stays asleep.
 *
 * SHUTDOWN. httpd_stop sets h->stopping: each stream's fill then queues an
 * END frame, the sender writes it and the closing zero-length chunk, and
 * closes the stream. Whatever is still open after that (a replica that does
 * not read) is closed by httpd_sender_stop, which then joins the thread.
 *
 * Threads and locks: whoever holds h->pump_mu (the sender during a round,
 * or a push) owns every adopted stream's socket and buffers; only the
 * sender frees a stream. h->mu guards the list, which both copy before
 * they pump; only the sender removes streams, so the copies stay valid
 * until it next takes pump_mu. Lock order: pump_mu, then h->mu.
 */
#include "httpd_int.h"
#include "ltxfs/clock.h"

#include "ltxfs/log.h"
#include "ltxfs/metrics.h"
#include "ltxfs/store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define SENDER_COALESCE_NS 1000000
/* A replica whose socket takes nothing for this long is cut off (STUCK). */
#define SENDER_STUCK_MS 30000

enum pump { PUMP_IDLE, PUMP_MORE, PUMP_BLOCKED, PUMP_CLOSE };

void httpd_sender_adopt(void *cls, struct MHD_Connection *c, void *con_cls, const char *extra_in,
			size_t extra_in_size, MHD_socket sock,
			struct MHD_UpgradeResponseHandle *urh)
{
	struct stream *s = cls;
	struct request *rq = con_cls;
	struct httpd *h = s->h;
	int one = 1;
	(void)c;
	(void)extra_in; /* a replica sends nothing after its position map */
	(void)extra_in_size;
	if (rq)
		rq->stream = NULL; /* the sender's now */
	s->sock = sock;
	s->urh = urh;
	int fl = fcntl(sock, F_GETFL);
	if (fl < 0 || fcntl(sock, F_SETFL, fl | O_NONBLOCK) < 0)
		s->closing = true; /* cannot happen on a socket; closed at once */
	setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* a peer that vanished without a reset is given up as a stuck one is */
	unsigned user_timeout = SENDER_STUCK_MS;
	setsockopt(sock, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout));
	pthread_mutex_lock(&h->mu);
	if (h->sender_quit) {
		/* the sender has gone (httpd_stop): nobody would close it */
		pthread_mutex_unlock(&h->mu);
		MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
		stream_discard(s);
		return;
	}
	s->next = h->streams.next;
	s->prev = &h->streams;
	s->next->prev = s;
	h->streams.next = s;
	h->nstreams++;
	store_followers_add(h->store, 1);
	pthread_cond_signal(&h->sender_cond);
	pthread_mutex_unlock(&h->mu);
	store_kick(h->store);
}

/* Put the n bytes at s->out + STREAM_CHUNK_HEAD into one HTTP chunk. */
static void chunk_wrap(struct stream *s, size_t n)
{
	char line[STREAM_CHUNK_HEAD];
	int k = snprintf(line, sizeof(line), "%zx\r\n", n);
	memcpy(s->out + STREAM_CHUNK_HEAD - k, line, (size_t)k);
	memcpy(s->out + STREAM_CHUNK_HEAD + n, "\r\n", 2);
	s->out_off = STREAM_CHUNK_HEAD - (size_t)k;
	s->out_len = STREAM_CHUNK_HEAD + n + 2;
}

/* One stream's share of a round (ROUND above); *sent when bytes went out. */
static enum pump pump(struct stream *s, bool *sent)
{
	bool filled = false;
	for (;;) {
		if (s->out_off < s->out_len) {
			ssize_t k = send(s->sock, s->out + s->out_off, s->out_len - s->out_off,
					 MSG_DONTWAIT | MSG_NOSIGNAL);
			if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
				return PUMP_BLOCKED;
			if (k < 0) {
				if (!s->h->pushing) /* else the sender's retry logs it */
					log_info("stream to replica %016" PRIX64 ": %s", s->peer_id,
						 strerror(errno));
				s->closing = true;
				return PUMP_CLOSE;
			}
			*sent = true;
			s->stuck_since = 0;
			s->out_off += (size_t)k;
			if (s->out_off < s->out_len)
				return PUMP_BLOCKED;
			s->out_off = s->out_len = 0;
		}
		if (s->closing)
			return PUMP_CLOSE;
		if (filled)
			return s->more ? PUMP_MORE : PUMP_IDLE;
		ssize_t n = stream_fill(s, s->out + STREAM_CHUNK_HEAD, STREAM_BLOCK, &s->more);
		if (n == STREAM_FILL_ERROR) {
			s->closing = true; /* (a push leaves the closing to the sender) */
			return PUMP_CLOSE;
		}
		if (n == STREAM_FILL_END) {
			/* the zero-length chunk ends the body */
			memcpy(s->out, "0\r\n\r\n", 5);
			s->out_off = 0;
			s->out_len = 5;
			s->closing = true;
			continue;
		}
		if (n == 0) /* (more: an inline send left the rest to the sender) */
			return s->more ? PUMP_MORE : PUMP_IDLE;
		chunk_wrap(s, (size_t)n);
		filled = true;
	}
}

static void stream_close(struct stream *s)
{
	MHD_upgrade_action(s->urh, MHD_UPGRADE_ACTION_CLOSE);
	stream_free(s);
}

/* Sleep out the rest of the coalescing interval after last; false if it was over. */
static bool coalesce_sleep(int64_t last)
{
	int64_t since = clock_mono_ns() - last;
	if (since < 0 || since >= SENDER_COALESCE_NS)
		return false;
	struct timespec ts = {0, (long)(SENDER_COALESCE_NS - since)};
	nanosleep(&ts, NULL);
	return true;
}

static void *sender_main(void *arg)
{
	struct httpd *h = arg;
	struct stream **v = NULL;
	struct pollfd *pf = NULL;
	size_t cap = 0;
	int64_t last_send = 0;
	bool busy = false;
	pthread_setname_np(pthread_self(), "ltxfs-sender");
	for (;;) {
		uint64_t seq = store_change_seq(h->store);
		bool quit = __atomic_load_n(&h->sender_quit, __ATOMIC_ACQUIRE);
		size_t n = 0;
		pthread_mutex_lock(&h->mu);
		/* no replica: commits need not wake this thread (IDLE below) */
		while (h->nstreams == 0 && !__atomic_load_n(&h->sender_quit, __ATOMIC_ACQUIRE))
			pthread_cond_wait(&h->sender_cond, &h->mu);
		if (h->nstreams > cap) {
			size_t want = h->nstreams * 2;
			struct stream **nv = realloc(v, want * sizeof(*v));
			struct pollfd *np = nv ? realloc(pf, want * sizeof(*pf)) : NULL;
			if (nv)
				v = nv;
			if (np) {
				pf = np;
				cap = want;
			}
		}
		for (struct stream *s = h->streams.next; s != &h->streams && n < cap; s = s->next)
			v[n++] = s;
		pthread_mutex_unlock(&h->mu);
		pthread_mutex_lock(&h->pump_mu);
		bool more = false, sent = false;
		size_t nblocked = 0;
		int64_t wait_ms = HEARTBEAT_MS, now_ms = clock_mono_ms();
		for (size_t i = 0; i < n; i++) {
			struct stream *s = v[i];
			enum pump p = quit ? PUMP_CLOSE : pump(s, &sent);
			if (p == PUMP_CLOSE) {
				stream_close(s);
				continue;
			}
			if (p == PUMP_MORE)
				more = true;
			if (p == PUMP_BLOCKED)
				stream_note_behind(s, true); /* its bytes wait in its buffer */
			if (p == PUMP_BLOCKED && !s->stuck_since)
				s->stuck_since = now_ms;
			if (p == PUMP_BLOCKED && now_ms - s->stuck_since >= SENDER_STUCK_MS) {
				log_warn("replica %016" PRIX64
					 " took nothing for %d s: closing its "
					 "stream (it reconnects and resumes from its position)",
					 s->peer_id, SENDER_STUCK_MS / 1000);
				stream_close(s);
				continue;
			}
			if (p == PUMP_BLOCKED)
				pf[nblocked++] = (struct pollfd){.fd = s->sock, .events = POLLOUT};
			int64_t hb = HEARTBEAT_MS - (now_ms - s->last_hb);
			if (hb < wait_ms)
				wait_ms = hb;
		}
		pthread_mutex_unlock(&h->pump_mu);
		if (quit)
			break;
		if (sent) {
			int64_t now = clock_mono_ns();
			busy = now - last_send < SENDER_COALESCE_NS * 3 / 2;
			last_send = now;
		}
		if (more)
			continue;
		if (nblocked > 0) {
			poll(pf, nblocked, 1);
			continue;
		}
		if (busy && coalesce_sleep(last_send) && store_change_seq(h->store) != seq)
			continue;
		/* on standby: a commit's thread may send it (INLINE SENDS) */
		store_wait_change_standby(h->store, seq, wait_ms > 1 ? (int)wait_ms : 1);
		coalesce_sleep(last_send); /* woken sooner than that after the last send */
	}
	free(v);
	free(pf);
	return NULL;
}

/* A stream an inline send may pump: nothing pending, in progress or ending. */
static bool stream_quiet(const struct stream *s)
{
	return s->ready_sent && !s->more && !s->closing && !s->ended && s->out_off == s->out_len &&
	       s->pend_len == 0 && s->fd < 0 && !s->snap && !s->blob;
}

/* The most streams an inline send pumps; with more, the sender does it. */
#define PUSH_MAX 16

/* The store's pusher (INLINE SENDS): true when every stream is IDLE. */
static bool httpd_sender_push(void *ctx)
{
	struct httpd *h = ctx;
	struct stream *v[PUSH_MAX];
	size_t n = 0;
	bool done = true;
	if (pthread_mutex_trylock(&h->pump_mu) != 0)
		return false; /* the sender is pumping, or another push */
	if (__atomic_load_n(&h->sender_quit, __ATOMIC_ACQUIRE)) {
		pthread_mutex_unlock(&h->pump_mu);
		return false;
	}
	pthread_mutex_lock(&h->mu);
	for (struct stream *s = h->streams.next; s != &h->streams; s = s->next) {
		if (n == PUSH_MAX) {
			done = false;
			break;
		}
		v[n++] = s;
	}
	pthread_mutex_unlock(&h->mu);
	h->pushing = true;
	bool sent = false;
	for (size_t i = 0; i < n; i++)
		if (!stream_quiet(v[i]) || pump(v[i], &sent) != PUMP_IDLE)
			done = false;
	h->pushing = false;
	pthread_mutex_unlock(&h->pump_mu);
	if (done && sent)
		metrics_add(MC_STREAM_PUSHES, 1);
	return done;
}

int httpd_sender_start(struct httpd *h)
{
	pthread_cond_init(&h->sender_cond, NULL);
	pthread_mutex_init(&h->pump_mu, NULL);
	int r = pthread_create(&h->sender, NULL, sender_main, h);
	if (r != 0) {
		pthread_cond_destroy(&h->sender_cond);
		pthread_mutex_destroy(&h->pump_mu);
		return -r;
	}
	h->sender_started = true;
	store_set_pusher(h->store, httpd_sender_push, h);
	return 0;
}

void httpd_sender_stop(struct httpd *h)
{
	if (!h->sender_started)
		return;
	store_set_pusher(h->store, NULL, NULL); /* returns once no push is under way */
	pthread_mutex_lock(&h->mu);		/* against httpd_sender_adopt */
	__atomic_store_n(&h->sender_quit, true, __ATOMIC_RELEASE);
	pthread_cond_signal(&h->sender_cond);
	pthread_mutex_unlock(&h->mu);
	store_kick(h->store);
	pthread_join(h->sender, NULL);
	pthread_cond_destroy(&h->sender_cond);
	pthread_mutex_destroy(&h->pump_mu);
	h->sender_started = false;
}
