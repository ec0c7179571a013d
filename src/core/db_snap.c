/*
 * db_snap.c - what a primary sends: a committed LTX file as it is
 * (db_ltx_open), a snapshot of the whole database streamed while it is built
 * (db_snap_*), and a plain copy of the database (db_export).
 *
 * FORMAT. A streamed snapshot is an LTX file (docs/ltx.md) with min TXID 1
 * and max TXID the position, always uncompressed, whose epoch is that of the
 * newest LTX file. Its length is LTX_HEADER_SIZE + n * (4 + page size) + 4 +
 * LTX_TRAILER_SIZE for the n pages of the database but the lock page. An
 * export is a SQLite file in rollback mode (bytes 18 and 19 set to 1): no
 * -wal comes with it.
 *
 * STREAMED SNAPSHOTS. db_snap_start builds an uncompressed snapshot on a
 * builder thread and returns as soon as its header is fixed; the stream
 * sends bytes as they are produced (db_snap_read), so building, sending and
 * the replica's verification overlap. The replica streams' sender, which
 * serves every replica from one thread, uses the forms that never wait:
 * db_snap_begin returns before the header is fixed, db_snap_header and
 * db_snap_read_some say what is ready now, and the builder calls the
 * notify function it was given whenever that changes. Uncompressed, the length is known in
 * advance (the stream frame carries it): header, every page but the lock
 * page with its 4-byte number, the 4-byte end marker and the trailer.
 *
 * Two modes. OPTIMISTIC (the default): under db->mu the builder only takes
 * the position, a copy of the committed page checksums, the map of committed
 * WAL frames and its own descriptors of the database file and the WAL; it
 * then reads pages without the lock and checks each against the copied
 * checksum, handing the bytes over through a bounded ring in memory (the
 * builder waits for the sender, never the other way round, and no commit
 * waits for either). A page that no longer matches (a checkpoint or a
 * rollback-mode transaction rewrote it meanwhile) ends the frame with an
 * error; the replica discards it and reconnects. The next snapshot of that
 * database is then LOCKED: built under db->mu into an anonymous file, which
 * the sender reads as it grows, so the lock is held for the build only and
 * not while the bytes travel.
 *
 * COMMITTED PAGES. Snapshots and exports read only committed state: they
 * take db->mu when no rollback-mode transaction is open (lock_committed) and
 * the queue is drained, then read each page from its newest committed WAL
 * frame (wal_frame_map) or else from the database file, and check it
 * against its committed checksum (read_committed_page, snap_read_page).
 *
 * THREADS. The sender (httpd_sender.c) and HTTP connection threads call
 * db_ltx_open (a stream, GET /ltx); the sender calls db_snap_begin,
 * db_snap_header, db_snap_info, db_snap_read_some and db_snap_free, a backup
 * the waiting forms (one thread per db_snap at a time); one builder thread
 * per snapshot runs snap_run and calls notify (under db->mu in a LOCKED
 * build, so notify must never wait). db_snap_free
 * cancels a builder still waiting for a transaction to end (lock_committed). The builder holds
 * db->mu while it captures (OPTIMISTIC) or for the whole build (LOCKED); the hand-over between
 * builder and sender is guarded by sn->mu alone, and neither waits for the other while it holds
 * db->mu. db_export runs on the HTTP thread of GET /export with db->mu held for the whole copy.
 */

#include "db_int.h"

#include "ltxfs/clock.h"
#include "ltxfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* --------------------------------------------------------------- LTX files */

static int ltx_open(struct db *db, uint64_t min_txid, bool covering, int *ret_fd,
		    struct ltx_header *ret_h, struct ltx_trailer *ret_t)
{
	struct ltx_header h;
	struct ltx_trailer t;
	db_write_queued_ltx(db); /* an error leaves the file missing: -ENOENT below */
	int fd = db_ltx_file_open_min(db, min_txid, covering);
	if (fd < 0)
		return fd;
	int r = ltx_verify_fd(fd, &h, &t);
	if (r == 0 && lseek(fd, 0, SEEK_SET) < 0)
		r = -errno;
	if (r < 0) {
		close(fd);
		return r;
	}
	*ret_fd = fd;
	if (ret_h)
		*ret_h = h;
	if (ret_t)
		*ret_t = t;
	return 0;
}

int db_ltx_open(struct db *db, uint64_t min_txid, int *ret_fd, struct ltx_header *ret_h,
		struct ltx_trailer *ret_t)
{
	return ltx_open(db, min_txid, false, ret_fd, ret_h, ret_t);
}

int db_ltx_open_covering(struct db *db, uint64_t txid, int *ret_fd, struct ltx_header *ret_h,
			 struct ltx_trailer *ret_t)
{
	return ltx_open(db, txid, true, ret_fd, ret_h, ret_t);
}

/* --------------------------------------------------------- committed pages */

/*
 * Take db->mu at a committed state: in rollback modes the file holds
 * uncommitted pages while a journal is active, so wait for the commit point
 * (SQLite's write phase is short, but a transaction that spilled its cache
 * keeps the journal active until it ends). Returns with the lock held, 0,
 * the sticky error, or -ECANCELED once *cancel (atomic, NULL ok) is set.
 */
static int lock_committed(struct db *db, const bool *cancel)
{
	db_lock_settled(db);
	while (db->journal_active && !db->sticky_err) {
		if (cancel && __atomic_load_n(cancel, __ATOMIC_ACQUIRE))
			return -ECANCELED;
		pthread_mutex_unlock(&db->mu);
		usleep(1000);
		db_lock_settled(db);
	}
	return db->sticky_err;
}

/*
 * Committed page pg (db->mu held): from the WAL when map (wal_frame_map)
 * has it there, else from the database file; checked against its committed
 * checksum. what names the caller in the error log.
 */
static int read_committed_page(struct db *db, const uint64_t *map, int walfd, uint32_t pg,
			       uint8_t *page, const char *what, uint64_t *ret_crc)
{
	uint64_t crc = 0;
	int r;
	if (map && map[pg]) {
		ssize_t n = fs_pread_full(walfd, page, db->page_size, (off_t)map[pg]);
		r = n < 0 ? (int)n : n == (ssize_t)db->page_size ? 0 : -EIO;
	} else {
		r = read_db_page(db, pg, page);
	}
	if (r == 0)
		crc = ltx_page_crc(pg, page, db->page_size);
	if (ret_crc)
		*ret_crc = crc;
	if (r == 0 && (LTX_CHECKSUM_FLAG | crc) != db->pgck[pg]) {
		log_error("db '%s': page %u does not match its committed checksum while %s",
			  db->name, pg, what);
		r = -EIO;
	}
	return r;
}

/* ------------------------------------------------------ streamed snapshots */

#define SNAP_CHUNK (1u << 20)
#define SNAP_RING  8u /* chunks buffered between builder and sender (optimistic) */

struct db_snap {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct db *db;
	bool locked;	  /* mode LOCKED: bytes go to fd */
	int fd;		  /* LOCKED: the anonymous file */
	uint8_t *ring;	  /* OPTIMISTIC: SNAP_RING chunks */
	uint64_t size;	  /* final length */
	uint64_t written; /* bytes produced */
	uint64_t sent;	  /* bytes handed to the sender */
	int err;
	bool header_ready, done, cancel;
	struct ltx_header h;
	struct ltx_trailer t;
	uint8_t *buf; /* the chunk being filled */
	size_t n;
	/* OPTIMISTIC: what was captured under the lock */
	uint64_t *ck;
	uint64_t *map;
	int dbfd, walfd;
	uint8_t *rbuf; /* pages rfirst.. of the database file, read ahead */
	uint32_t rfirst, rn;
	void (*notify)(void *ctx); /* db_snap_begin's, or NULL */
	void *notify_ctx;
};

static void snap_notify(struct db_snap *sn)
{
	if (sn->notify)
		sn->notify(sn->notify_ctx);
}

#define SNAP_READ_PAGES 256

/* Hand the filled chunk over: append to the file, or wait for ring room. */
static int snap_publish(struct db_snap *sn)
{
	int r = 0;
	if (sn->locked)
		r = fs_pwrite_full(sn->fd, sn->buf, sn->n, (off_t)sn->written);
	pthread_mutex_lock(&sn->mu);
	if (!sn->locked) {
		while (!sn->cancel &&
		       sn->written + sn->n - sn->sent > (uint64_t)SNAP_RING * SNAP_CHUNK)
			pthread_cond_wait(&sn->cv, &sn->mu);
		/* chunks are whole SNAP_CHUNKs except the last: positions stay aligned */
		size_t slot = (size_t)(sn->written / SNAP_CHUNK % SNAP_RING);
		memcpy(sn->ring + slot * SNAP_CHUNK, sn->buf, sn->n);
	}
	if (r == 0)
		sn->written += sn->n;
	bool cancel = sn->cancel;
	pthread_cond_broadcast(&sn->cv);
	pthread_mutex_unlock(&sn->mu);
	sn->n = 0;
	snap_notify(sn);
	return r < 0 ? r : cancel ? -ECANCELED : 0;
}

static int snap_write(void *ctx, const void *p, size_t n)
{
	struct db_snap *sn = ctx;
	while (n > 0) {
		size_t k = SNAP_CHUNK - sn->n < n ? SNAP_CHUNK - sn->n : n;
		memcpy(sn->buf + sn->n, p, k);
		sn->n += k;
		p = (const uint8_t *)p + k;
		n -= k;
		if (sn->n == SNAP_CHUNK) {
			int r = snap_publish(sn);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

/* db->mu held: fix the header, and for OPTIMISTIC capture what the build needs. */
static int snap_capture(struct db_snap *sn)
{
	struct db *db = sn->db;
	if (db->pos.txid == 0)
		return -ENOENT;
	struct ltx_header h = {
	    .page_size = db->page_size ? db->page_size : 4096,
	    .commit = db->exists ? db->page_count : 0,
	    .min_txid = 1,
	    .max_txid = db->pos.txid,
	    .timestamp = db->pos.timestamp ? db->pos.timestamp : clock_wall_ms(),
	    .node_id = db->opt.node_id,
	    .epoch = db->last_epoch, /* the term that wrote the state it captures */
	};
	uint32_t lock = ltx_lock_pgno(h.page_size);
	uint64_t npages = h.commit - (lock <= h.commit ? 1 : 0);
	sn->h = h;
	sn->t.post_apply_checksum = db->exists ? db->pos.checksum : LTX_CHECKSUM_FLAG;
	sn->size = LTX_HEADER_SIZE + npages * (4 + (uint64_t)h.page_size) + 4 + LTX_TRAILER_SIZE;
	if (sn->locked || h.commit == 0)
		return 0;
	char path[4096];
	int r = wal_frame_map(db, &sn->map);
	if (r < 0)
		return r;
	sn->walfd = sn->map ? r : -1;
	sn->ck = malloc(((size_t)h.commit + 1) * sizeof(*sn->ck));
	if (!sn->ck)
		return -ENOMEM;
	memcpy(sn->ck, db->pgck, ((size_t)h.commit + 1) * sizeof(*sn->ck));
	r = db_file_path(db, DB_FILE_DB, path, sizeof(path));
	if (r == 0 && (sn->dbfd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		r = -errno;
	return r;
}

/*
 * OPTIMISTIC: page pg as committed at capture time (*out points at it, in
 * page or in the read-ahead), or -EAGAIN if it was rewritten since.
 */
static int snap_read_page(struct db_snap *sn, uint32_t pg, uint8_t *page, const uint8_t **out,
			  uint64_t *crc)
{
	size_t ps = sn->h.page_size;
	ssize_t n;
	if (sn->map && sn->map[pg]) {
		n = fs_pread_full(sn->walfd, page, ps, (off_t)sn->map[pg]);
		if (n < 0)
			return (int)n;
		if ((size_t)n < ps)
			memset(page + n, 0, ps - (size_t)n);
		*out = page;
	} else {
		if (!sn->rn || pg < sn->rfirst || pg >= sn->rfirst + sn->rn) {
			n = fs_pread_full(sn->dbfd, sn->rbuf, SNAP_READ_PAGES * ps,
					  (off_t)(pg - 1) * (off_t)ps);
			if (n < 0)
				return (int)n;
			memset(sn->rbuf + n, 0, SNAP_READ_PAGES * ps - (size_t)n);
			sn->rfirst = pg;
			sn->rn = SNAP_READ_PAGES;
		}
		*out = sn->rbuf + (pg - sn->rfirst) * ps;
	}
	*crc = ltx_page_crc(pg, *out, (uint32_t)ps);
	return (LTX_CHECKSUM_FLAG | *crc) == sn->ck[pg] ? 0 : -EAGAIN;
}

static void *snap_run(void *arg)
{
	struct db_snap *sn = arg;
	struct db *db = sn->db;
	struct ltx_encoder *enc = NULL;
	uint64_t *map = NULL;
	uint8_t *page = NULL;
	int walfd = -1, r;

	r = lock_committed(db, &sn->cancel);
	if (r == 0)
		r = snap_capture(sn);
	if (!sn->locked)
		pthread_mutex_unlock(&db->mu);
	pthread_mutex_lock(&sn->mu);
	sn->header_ready = true;
	sn->err = r;
	pthread_cond_broadcast(&sn->cv);
	pthread_mutex_unlock(&sn->mu);
	snap_notify(sn);
	if (r < 0)
		goto out;

	page = malloc(sn->h.page_size);
	if (!sn->locked)
		sn->rbuf = malloc((size_t)SNAP_READ_PAGES * sn->h.page_size);
	if (!page || (!sn->locked && !sn->rbuf)) {
		r = -ENOMEM;
		goto out;
	}
	if (sn->locked && sn->h.commit > 0) {
		r = wal_frame_map(db, &map);
		if (r < 0)
			goto out;
		walfd = map ? r : -1;
		r = 0;
	}
	r = ltx_encoder_new(&enc, &sn->h, snap_write, sn);
	uint32_t lock = ltx_lock_pgno(sn->h.page_size);
	for (uint32_t pg = 1; r == 0 && pg <= sn->h.commit; pg++) {
		if (pg == lock)
			continue;
		uint64_t crc;
		const uint8_t *p = page;
		if (sn->locked)
			r = read_committed_page(db, map, walfd, pg, page, "building a snapshot",
						&crc);
		else
			r = snap_read_page(sn, pg, page, &p, &crc);
		if (r == 0)
			r = ltx_encoder_add_page_crc(enc, pg, p, crc);
	}
	if (r == 0)
		r = ltx_encoder_finish(enc, sn->t.post_apply_checksum, &sn->t);
	if (r == -EAGAIN) {
		log_info("db '%s': the database changed while a snapshot was streamed; the next "
			 "one is built under the lock",
			 db->name);
		__atomic_store_n(&db->snap_locked, true, __ATOMIC_RELAXED);
	}
out:
	if (sn->locked)
		pthread_mutex_unlock(&db->mu);
	if (r == 0 && sn->n > 0)
		r = snap_publish(sn);
	if (r == 0 && sn->written != sn->size)
		r = -EIO;
	ltx_encoder_free(enc);
	if (walfd >= 0)
		close(walfd);
	free(map);
	free(page);
	pthread_mutex_lock(&sn->mu);
	if (!sn->err)
		sn->err = r;
	sn->done = true;
	pthread_cond_broadcast(&sn->cv);
	pthread_mutex_unlock(&sn->mu);
	snap_notify(sn);
	return NULL;
}

void db_snap_free(struct db_snap *sn)
{
	if (!sn)
		return;
	pthread_mutex_lock(&sn->mu);
	__atomic_store_n(&sn->cancel, true, __ATOMIC_RELEASE); /* lock_committed reads it */
	pthread_cond_broadcast(&sn->cv);
	pthread_mutex_unlock(&sn->mu);
	pthread_join(sn->th, NULL);
	pthread_mutex_destroy(&sn->mu);
	pthread_cond_destroy(&sn->cv);
	if (sn->fd >= 0)
		close(sn->fd);
	if (sn->dbfd >= 0)
		close(sn->dbfd);
	if (sn->walfd >= 0)
		close(sn->walfd);
	free(sn->map);
	free(sn->ck);
	free(sn->rbuf);
	free(sn->ring);
	free(sn->buf);
	free(sn);
}

int db_snap_begin(struct db *db, void (*notify)(void *ctx), void *ctx, struct db_snap **ret)
{
	struct db_snap *sn = calloc(1, sizeof(*sn));
	int r;
	*ret = NULL;
	if (!sn)
		return -ENOMEM;
	sn->db = db;
	sn->notify = notify;
	sn->notify_ctx = ctx;
	sn->fd = sn->dbfd = sn->walfd = -1;
	pthread_mutex_init(&sn->mu, NULL);
	pthread_cond_init(&sn->cv, NULL);
	sn->locked = __atomic_exchange_n(&db->snap_locked, false, __ATOMIC_RELAXED);
	sn->buf = malloc(SNAP_CHUNK);
	if (sn->locked)
		sn->fd = openat(db->ltx_dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	else
		sn->ring = malloc((size_t)SNAP_RING * SNAP_CHUNK);
	if (sn->locked && sn->fd < 0)
		r = -errno;
	else if (!sn->buf || (!sn->locked && !sn->ring))
		r = -ENOMEM;
	else
		r = pthread_create(&sn->th, NULL, snap_run, sn) != 0 ? -EAGAIN : 0;
	if (r < 0) {
		/* no thread to join: release here what db_snap_free would */
		pthread_mutex_destroy(&sn->mu);
		pthread_cond_destroy(&sn->cv);
		if (sn->fd >= 0)
			close(sn->fd);
		free(sn->ring);
		free(sn->buf);
		free(sn);
		return r;
	}
	*ret = sn;
	return 0;
}

int db_snap_header(struct db_snap *sn)
{
	pthread_mutex_lock(&sn->mu);
	int r = !sn->header_ready ? 0 : sn->err < 0 ? sn->err : 1;
	pthread_mutex_unlock(&sn->mu);
	return r;
}

int db_snap_start(struct db *db, struct db_snap **ret)
{
	struct db_snap *sn;
	int r = db_snap_begin(db, NULL, NULL, &sn);
	if (r < 0)
		return r;
	pthread_mutex_lock(&sn->mu);
	while (!sn->header_ready)
		pthread_cond_wait(&sn->cv, &sn->mu);
	r = sn->err;
	pthread_mutex_unlock(&sn->mu);
	if (r < 0) {
		db_snap_free(sn);
		return r;
	}
	*ret = sn;
	return 0;
}

void db_snap_info(const struct db_snap *sn, uint64_t *size, struct ltx_header *h, uint64_t *post)
{
	*size = sn->size;
	*h = sn->h;
	*post = sn->t.post_apply_checksum;
}

ssize_t db_snap_read(struct db_snap *sn, void *buf, size_t max)
{
	pthread_mutex_lock(&sn->mu);
	while (sn->written <= sn->sent && !sn->done)
		pthread_cond_wait(&sn->cv, &sn->mu);
	pthread_mutex_unlock(&sn->mu);
	ssize_t r = db_snap_read_some(sn, buf, max);
	return r == 0 ? -EIO : r; /* done, and nothing more: cannot be (size is exact) */
}

ssize_t db_snap_read_some(struct db_snap *sn, void *buf, size_t max)
{
	ssize_t r;
	pthread_mutex_lock(&sn->mu);
	if (sn->written <= sn->sent && !sn->done) {
		pthread_mutex_unlock(&sn->mu);
		return 0;
	}
	if (sn->written <= sn->sent) {
		r = sn->err ? sn->err : -EIO;
		pthread_mutex_unlock(&sn->mu);
		return r;
	}
	uint64_t off = sn->sent, avail = sn->written - off;
	size_t k = avail < max ? (size_t)avail : max;
	if (sn->locked) {
		pthread_mutex_unlock(&sn->mu);
		r = pread(sn->fd, buf, k, (off_t)off);
		if (r < 0)
			return -errno;
		pthread_mutex_lock(&sn->mu);
	} else {
		/* within one chunk of the ring; the builder does not reuse it yet */
		size_t in = (size_t)(off % SNAP_CHUNK);
		if (k > SNAP_CHUNK - in)
			k = SNAP_CHUNK - in;
		memcpy(buf, sn->ring + (size_t)(off / SNAP_CHUNK % SNAP_RING) * SNAP_CHUNK + in, k);
		r = (ssize_t)k;
	}
	sn->sent += (uint64_t)r;
	pthread_cond_broadcast(&sn->cv);
	pthread_mutex_unlock(&sn->mu);
	return r;
}

/* ------------------------------------------------------------------ export */

int db_export(struct db *db, int fd, struct db_pos *ret_pos)
{
	uint64_t *map = NULL;
	uint8_t *page = NULL;
	int walfd = -1, r;
	r = lock_committed(db, NULL);
	if (r < 0)
		goto out;
	if (!db->exists || db->page_count == 0 || db->dbfd < 0) {
		r = -ENOENT;
		goto out;
	}
	page = malloc(db->page_size);
	if (!page) {
		r = -ENOMEM;
		goto out;
	}
	r = wal_frame_map(db, &map);
	if (r < 0)
		goto out;
	walfd = map ? r : -1;
	uint32_t lock = ltx_lock_pgno(db->page_size);
	for (uint32_t pg = 1; pg <= db->page_count; pg++) {
		if (pg == lock) {
			memset(page, 0, db->page_size);
			r = 0;
		} else {
			r = read_committed_page(db, map, walfd, pg, page, "exporting", NULL);
		}
		if (r == 0)
			r = fs_pwrite_full(fd, page, db->page_size,
					   (off_t)(pg - 1) * db->page_size);
		if (r < 0)
			goto out;
	}
	/* A standalone copy is a rollback-mode file: no -wal comes with it. */
	if (page && fs_pread_full(fd, page, 20, 0) == 20 && page[18] == 2 && page[19] == 2) {
		static const uint8_t legacy[2] = {1, 1};
		r = fs_pwrite_full(fd, legacy, 2, 18);
		if (r < 0)
			goto out;
	}
	if (ret_pos)
		*ret_pos = db->pos;
	r = 0;
out:
	pthread_mutex_unlock(&db->mu);
	if (walfd >= 0)
		close(walfd);
	free(map);
	free(page);
	return r;
}
