/*
 * db_ltxout.c - LTX output: writing one LTX file, the queue of WAL commits
 * whose files are written after the reply, and the sync that makes the
 * files written without fsync durable.
 *
 * FORMAT. ltx/%016x-%016x.ltx, named by its min and max TXID, in the LTX
 * format of docs/ltx.md, encoded by src/format/ltx.c through a 64 KiB write
 * buffer (struct wbuf). A file is created under its final name, never as a
 * .tmp renamed into place: start-up recovery verifies the newest files and
 * discards a torn one (db_recover.c). ltx_out_begin creates it, the caller
 * adds pages, ltx_out_end writes the trailer, and ltx_out_abort (or a
 * failed ltx_out_end) unlinks it again.
 *
 * DURABILITY. ltx_out_end with sync fdatasyncs the file and, except on ext4
 * (see there), fsyncs ltx/. Files written without sync set ltx_unsynced;
 * db_sync_ltx drains the queue and runs syncfs on the LTX directory's file
 * system, before a WAL restart, truncation or unlink, a drop, a ring wrap
 * or retirement, and at shutdown. db_sync_ring_covered (db_int.h) runs it
 * before a file is fsynced on its own while the ring holds records.
 *
 * QUEUED LTX FILES. A WAL-mode commit of at most DB_QUEUE_MAX_BYTES of pages
 * does not write its LTX file inside the write that commits: the pages are
 * checksummed and copied under db->mu, the in-memory state advances, and the
 * file is queued. The FUSE worker writes the queue after it has replied to
 * SQLite (db_write_done), so file creation and compression overlap with the
 * application instead of adding to its commit latency, and it lets commits
 * gather first (GROUP COMMIT below). This is safe because
 * in WAL mode the WAL is the durable record (DURABILITY in db.c): a crash
 * before the file exists is repaired by recovery step 4. Files are written in
 * TXID order by one thread at a time (q_busy). The position (db_get_pos)
 * advances at the commit, before the file exists; a reader that needs the
 * files says so by calling db_write_queued_ltx (the -pos file's read, the
 * stream through db_ltx_open), and inside the engine the readers of LTX
 * files (snapshots, sync points before a WAL restart, shutdown) drain the
 * queue first. on_change fires at the commit, before the file exists: a
 * replica stream woken by it sends the commit from memory (STREAMED FROM
 * MEMORY below) and leaves the file to the queue writer. A write that fails
 * (disk full) stays queued, and every later write to the database fails with
 * that error until a retry succeeds.
 *
 * The queue also carries the files of small prepared rollback-mode commits
 * (db_journal.c, PREPARED COMMITS), pushed at the commit point: their bytes
 * were encoded at the fsync for the ring (ltxjob_encode), are in the LTX
 * cache already, and are written as they are (ltx_blob_write), one file
 * each, never grouped, and db_write_done writes them at once rather than
 * gathering. The ring's record is their durable copy until then.
 *
 * GROUP COMMIT. The queued commits a writer finds go into one range file
 * "min-max.ltx" (docs/ltx.md, "Range files"): up to DB_GROUP_MAX commits and
 * DB_QUEUE_MAX_BYTES of pages, each page with its newest image, ended early
 * by a commit that makes the database smaller. One file, one create and one
 * directory entry for the lot; the chain and its checksums stay exact. After
 * a reply, db_write_done lets commits gather: it writes the queue once
 * DB_GROUP_DEFER commits or DB_GROUP_DEFER_BYTES of pages wait, or the
 * oldest has waited DB_GROUP_DEFER_NS. Nobody who needs a file waits for
 * that: a -pos read, a backup, a snapshot or a sync point writes the queue
 * at once; a commit left queued when the application goes quiet costs
 * memory only, and the WAL holds it if the process dies.
 *
 * STREAMED FROM MEMORY. A replica stream does not need the files either:
 * db_ltx_encode_queued encodes the commits from the replica's position on
 * as one range file in memory, from the queued jobs, and sends that. Had the
 * stream written the queue instead, every round of the sender (one per
 * millisecond under load) would create a file of two or three commits, and
 * on ext4 file creation cost the primary more than the send itself (and on
 * a journaled ext4 it also lengthens the application's WAL fsyncs). A
 * commit's job may be written before every stream has sent it, so while
 * replicas follow (db_options.followers) the queue writer keeps written jobs
 * in a ring (r_ring, the newest DB_RETAIN_MAX and DB_RETAIN_MAX_BYTES)
 * instead of freeing them, and encoding continues from there into the
 * queue. The last range encoded (r_last) is reused by the next stream at
 * the same position while no commit came since, so fan-out encodes once.
 * The ranges sent need not match the files written: a replica installs
 * what it receives, and one that later resumes inside one of this node's
 * range files is sent that file and applies it over what it has
 * (OVERLAPPING FILES, db_apply.c). An apply that replaces this node's
 * history drops what is kept (db_retained_drop), so every job held is of
 * the current history, and the stream still checks the range's pre-apply
 * checksum against the replica's position. Encoding runs under db->mu, so
 * the jobs cannot be freed meanwhile; it is bounded by DB_GROUP_MAX commits
 * and DB_QUEUE_MAX_BYTES of pages.
 *
 * LTX CACHE. Each file's bytes are kept as it is encoded (struct wbuf's
 * copy) and published to db_ltxcache.c once its commits are visible.
 *
 * States (db_int.h, CAPTURE STATES: QUEUED, UNSYNCED): the queue is empty,
 * or holds jobs q_head..q_tail in TXID order; q_busy while a thread writes
 * them; q_err after a failed write. A job owns its page images and their
 * CRCs, or a reference to its encoded bytes (struct ltxjob), and is freed
 * once its file exists.
 *
 * THREADS. Everything here runs with db->mu held, on the FUSE worker whose
 * operation writes or needs the files (or db_open's thread). Two
 * exceptions take db->mu themselves and drain with db_queue_drain(db, true),
 * which lets db->mu go while it writes q_head: db_write_done, called by the
 * FUSE worker right after it replied to a WAL write or fsync, and
 * db_write_queued_ltx, called by any thread that needs the files; q_busy
 * reserves the queue to the one that writes, and everyone who needs it empty
 * waits on q_cond. Without db->mu it touches only
 * the job, the ltx_out and what db_open fixed (ltx_dir, ltx_dirfd).
 */

#include "db_int.h"

#include "ltxfs/clock.h"

#include "ltxfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* ------------------------------------------------------------ one LTX file */

struct wbuf {
	int fd;
	size_t n;
	/* a copy of the bytes for the LTX CACHE (db_ltxcache.c), NULL once the
	 * file outgrew copy_max or memory ran short */
	struct db_ltx_blob *copy;
	size_t copy_cap, copy_max;
	uint8_t buf[1 << 16];
};

static void wbuf_copy(struct wbuf *w, const void *p, size_t n)
{
	if (!w->copy)
		return;
	size_t want = w->copy->len + n;
	if (want > w->copy_max) {
		free(w->copy);
		w->copy = NULL;
		return;
	}
	if (want > w->copy_cap) {
		size_t cap = w->copy_cap * 2 > want ? w->copy_cap * 2 : want;
		struct db_ltx_blob *b = realloc(w->copy, sizeof(*b) + cap);
		if (!b) {
			free(w->copy);
			w->copy = NULL;
			return;
		}
		w->copy = b;
		w->copy_cap = cap;
	}
	memcpy(w->copy->data + w->copy->len, p, n);
	w->copy->len = want;
}

/* fd -1: the bytes go to the copy alone (ltxjob_encode) */
static int wbuf_flush(struct wbuf *w)
{
	wbuf_copy(w, w->buf, w->n);
	int r = w->fd >= 0 ? fs_write_full(w->fd, w->buf, w->n) : 0;
	w->n = 0;
	return r;
}

static int wbuf_write(void *ctx, const void *p, size_t n)
{
	struct wbuf *w = ctx;
	if (w->n + n > sizeof(w->buf)) {
		int r = wbuf_flush(w);
		if (r < 0)
			return r;
		if (n > sizeof(w->buf)) {
			wbuf_copy(w, p, n);
			return w->fd >= 0 ? fs_write_full(w->fd, p, n) : 0;
		}
	}
	memcpy(w->buf + w->n, p, n);
	w->n += n;
	return 0;
}

/* A write buffer for fd (-1: memory only) whose copy may grow to copy_max. */
static struct wbuf *wbuf_new(int fd, const struct ltx_header *h, size_t copy_max)
{
	struct wbuf *w = malloc(sizeof(*w));
	if (!w)
		return NULL;
	w->fd = fd;
	w->n = 0;
	w->copy_max = copy_max;
	w->copy = db_ltx_blob_new(h, 4096);
	w->copy_cap = w->copy ? 4096 : 0;
	if (w->copy)
		w->copy->len = 0;
	return w;
}

/* Create (truncate) ltx/<min>-<max>.ltx for writing; its path in path. */
static int ltx_create(struct db *db, const struct ltx_header *h, char *path, size_t size)
{
	char name[LTX_FILENAME_LEN + 1];
	ltx_format_filename(name, h->min_txid, h->max_txid);
	int r = fs_path(path, size, "%s/%s", db->ltx_dir, name);
	if (r < 0)
		return r;
	int fd = openat(db->ltx_dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	return fd < 0 ? -errno : fd;
}

/*
 * Create the LTX file of h under its final name and start its encoder.
 * On failure nothing is left behind.
 */
int ltx_out_begin(struct db *db, struct ltx_out *o, const struct ltx_header *h)
{
	int r;
	memset(o, 0, sizeof(*o));
	o->h = *h;
	int fd = ltx_create(db, h, o->path, sizeof(o->path));
	if (fd < 0)
		return fd;
	o->w = wbuf_new(fd, h, DB_LTX_CACHE_FILE_MAX); /* the copy: what the cache takes */
	if (!o->w) {
		close(fd);
		unlink(o->path);
		return -ENOMEM;
	}
	r = ltx_encoder_new(&o->enc, h, wbuf_write, o->w);
	if (r < 0) {
		close(o->w->fd);
		unlink(o->path);
		free(o->w->copy);
		free(o->w);
		o->w = NULL;
	}
	return r;
}

/* Stop writing the file and remove it (nothing when o holds no file). */
void ltx_out_abort(struct ltx_out *o)
{
	if (!o->w)
		return;
	ltx_encoder_free(o->enc);
	close(o->w->fd);
	unlink(o->path);
	free(o->w->copy);
	free(o->w);
	o->w = NULL;
	o->enc = NULL;
}

/* Finish the file; with sync, fdatasync it and fsync its directory. */
int ltx_out_end(struct db *db, struct ltx_out *o, uint64_t post, bool sync)
{
	struct ltx_trailer tr;
	int r = ltx_encoder_finish(o->enc, post, &tr);
	if (r == 0)
		r = wbuf_flush(o->w);
	if (r == 0 && sync)
		r = db_sync_ring_covered(db);
	if (r == 0 && sync && fdatasync(o->w->fd) < 0)
		r = -errno;
	/*
	 * On ext4, fsync of a newly created file also makes its directory entry
	 * durable: with a journal, the commit that fsync forces contains the
	 * create; without one, ext4_sync_parent() writes the parent. Elsewhere
	 * POSIX's rule applies and the directory is fsync'ed too.
	 */
	if (r == 0 && sync && db->dirsync && fsync(db->ltx_dirfd) < 0)
		r = -errno;
	if (r < 0) {
		ltx_out_abort(o);
		return r;
	}
	ltx_encoder_free(o->enc);
	close(o->w->fd);
	o->blob = o->w->copy;
	if (o->blob)
		o->blob->post = tr.post_apply_checksum;
	free(o->w);
	o->w = NULL;
	o->enc = NULL;
	return 0;
}

/* Make every LTX file written without fsync durable. */
int db_sync_ltx(struct db *db)
{
	int r = db_queue_settle(db);
	if (r < 0)
		return r;
	if (!db->ltx_unsynced)
		return 0;
	r = syncfs(db->ltx_dirfd) < 0 ? -errno : 0;
	if (r == 0)
		db->ltx_unsynced = false;
	return r;
}

/* Add job j's pages to enc. */
static int ltxjob_add_pages(struct ltx_encoder *enc, const struct ltxjob *j)
{
	int r = 0;
	for (size_t i = 0; i < j->n && r == 0; i++)
		r = ltx_encoder_add_page_crc(enc, j->pgnos[i], j->img + i * j->h.page_size,
					     j->crcs[i]);
	return r;
}

/*
 * Encode a file in memory only: header h, the pages add() gives the encoder,
 * post-apply checksum post; *ret holds its bytes and post-apply checksum.
 */
static int mem_encode(const struct ltx_header *h, uint64_t post,
		      int (*add)(struct ltx_encoder *enc, const void *ctx), const void *ctx,
		      struct db_ltx_blob **ret)
{
	struct ltx_encoder *enc = NULL;
	struct ltx_trailer tr;
	struct wbuf *w = wbuf_new(-1, h, SIZE_MAX);
	int r = w && w->copy ? ltx_encoder_new(&enc, h, wbuf_write, w) : -ENOMEM;
	*ret = NULL;
	if (r == 0)
		r = add(enc, ctx);
	if (r == 0)
		r = ltx_encoder_finish(enc, post, &tr);
	if (r == 0)
		r = wbuf_flush(w);
	if (r == 0 && !w->copy)
		r = -ENOMEM; /* wbuf_copy gave the copy up */
	if (r == 0) {
		w->copy->post = tr.post_apply_checksum;
		*ret = w->copy;
		w->copy = NULL;
	}
	ltx_encoder_free(enc);
	if (w)
		free(w->copy);
	free(w);
	return r;
}

static int add_job(struct ltx_encoder *enc, const void *ctx)
{
	return ltxjob_add_pages(enc, ctx);
}

/*
 * Encode job j's file in memory only (a prepared commit, PREPARED COMMITS in
 * db_journal.c): *ret holds its bytes and post-apply checksum. A job holds
 * at most DB_QUEUE_MAX_BYTES of pages, so this is bounded.
 */
int ltxjob_encode(const struct ltxjob *j, struct db_ltx_blob **ret)
{
	return mem_encode(&j->h, j->post, add_job, j, ret);
}

/*
 * Write the encoded file b under its name (without sync); its path in path.
 * On failure nothing is left behind.
 */
int ltx_blob_write(struct db *db, const struct db_ltx_blob *b, char *path, size_t size)
{
	int fd = ltx_create(db, &b->h, path, size);
	if (fd < 0)
		return fd;
	int r = fs_write_full(fd, b->data, b->len);
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0)
		unlink(path);
	return r;
}

/* --------------------------------------------------------------- the queue */

void db_queue_push(struct db *db, struct ltxjob *j)
{
	if (db->q_tail)
		db->q_tail->next = j;
	else
		db->q_head = j;
	if (!db->q_len)
		db->q_since_ns = clock_mono_ns();
	db->q_tail = j;
	db->q_len++;
	db->q_bytes += ltxjob_bytes(j);
}

static int ltxjob_write(struct db *db, const struct ltxjob *j, struct db_ltx_blob **ret_blob)
{
	if (j->blob) {
		/* published already, by db_tx_apply (LTX CACHE) */
		char path[4096];
		*ret_blob = NULL;
		return ltx_blob_write(db, j->blob, path, sizeof(path));
	}
	struct ltx_out o;
	int r = ltx_out_begin(db, &o, &j->h);
	if (r == 0 && (r = ltxjob_add_pages(o.enc, j)) < 0)
		ltx_out_abort(&o);
	if (r == 0)
		r = ltx_out_end(db, &o, j->post, false);
	*ret_blob = r == 0 ? o.blob : NULL;
	return r;
}

/* A page of a group: which job holds its newest image, and where. */
struct gpage {
	uint32_t pgno, job, idx;
};

static int cmp_gpage(const void *a, const void *b)
{
	const struct gpage *x = a, *y = b;
	if (x->pgno != y->pgno)
		return x->pgno < y->pgno ? -1 : 1;
	return x->job < y->job ? -1 : x->job > y->job;
}

/*
 * Whether job j, after prev, can join a range file that holds bytes of pages
 * so far (GROUP COMMIT): consecutive TXIDs that chain, the same page size, a
 * database that does not shrink, no prepared file, within DB_QUEUE_MAX_BYTES.
 */
static bool group_continues(const struct ltxjob *prev, const struct ltxjob *j, size_t bytes)
{
	return !j->blob && !prev->blob && j->h.page_size == prev->h.page_size &&
	       j->h.commit >= prev->h.commit && j->h.min_txid == prev->h.max_txid + 1 &&
	       j->h.pre_apply_checksum == prev->post &&
	       bytes + ltxjob_bytes(j) <= DB_QUEUE_MAX_BYTES;
}

/*
 * GROUP COMMIT: the k queued commits g[0..k) (consecutive TXIDs, the same
 * page size, commits that never shrink) as one range file "min-max.ltx":
 * the first one's min TXID and pre-apply checksum, the last one's max TXID,
 * commit, timestamp and post-apply checksum, the highest epoch, and each
 * page's newest image. Applying it to the state before g[0] gives the state
 * after g[k-1], which its post-apply checksum proves. group_plan gives the
 * header and the pages in pgno order (*ret_v, *ret_u of them; free *ret_v).
 */
static int group_plan(struct ltxjob *const *g, size_t k, struct ltx_header *ret_h,
		      struct gpage **ret_v, size_t *ret_u)
{
	const struct ltxjob *first = g[0], *last = g[k - 1];
	size_t total = 0, m = 0;
	for (size_t i = 0; i < k; i++)
		total += g[i]->n;
	struct gpage *v = malloc((total ? total : 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < k; i++)
		for (size_t p = 0; p < g[i]->n; p++)
			v[m++] = (struct gpage){g[i]->pgnos[p], (uint32_t)i, (uint32_t)p};
	qsort(v, m, sizeof(*v), cmp_gpage);
	size_t u = 0;
	for (size_t i = 0; i < m; i++) {
		if (v[i].pgno > last->h.commit)
			continue;
		if (u > 0 && v[u - 1].pgno == v[i].pgno)
			v[u - 1] = v[i]; /* a later job's image */
		else
			v[u++] = v[i];
	}
	struct ltx_header h = last->h;
	h.min_txid = first->h.min_txid;
	h.pre_apply_checksum = first->h.pre_apply_checksum;
	h.wal_offset = first->h.wal_offset;
	h.wal_size = last->h.wal_offset + last->h.wal_size - first->h.wal_offset;
	for (size_t i = 0; i < k; i++)
		if (g[i]->h.epoch > h.epoch)
			h.epoch = g[i]->h.epoch;
	*ret_h = h;
	*ret_v = v;
	*ret_u = u;
	return 0;
}

static int group_add_pages(struct ltx_encoder *enc, struct ltxjob *const *g, const struct gpage *v,
			   size_t u)
{
	int r = 0;
	for (size_t i = 0; i < u && r == 0; i++) {
		const struct ltxjob *j = g[v[i].job];
		r = ltx_encoder_add_page_crc(enc, v[i].pgno, j->img + v[i].idx * j->h.page_size,
					     j->crcs[v[i].idx]);
	}
	return r;
}

struct group_pages {
	struct ltxjob *const *g;
	const struct gpage *v;
	size_t u;
};

static int add_group(struct ltx_encoder *enc, const void *ctx)
{
	const struct group_pages *p = ctx;
	return group_add_pages(enc, p->g, p->v, p->u);
}

/*
 * The range file of g[0..k): written as ltx/min-max.ltx (its bytes in
 * *ret_blob for the LTX CACHE, when they were kept), or with db NULL only
 * encoded in memory (STREAMED FROM MEMORY).
 */
static int ltxgroup_out(struct db *db, struct ltxjob *const *g, size_t k,
			struct db_ltx_blob **ret_blob)
{
	if (db && k == 1)
		return ltxjob_write(db, g[0], ret_blob);
	struct ltx_header h;
	struct gpage *v;
	size_t u;
	*ret_blob = NULL;
	int r = group_plan(g, k, &h, &v, &u);
	if (r < 0)
		return r;
	struct group_pages p = {g, v, u};
	if (!db) {
		r = mem_encode(&h, g[k - 1]->post, add_group, &p, ret_blob);
	} else {
		struct ltx_out o;
		r = ltx_out_begin(db, &o, &h);
		if (r == 0 && (r = add_group(o.enc, &p)) < 0)
			ltx_out_abort(&o);
		if (r == 0)
			r = ltx_out_end(db, &o, g[k - 1]->post, false);
		*ret_blob = r == 0 ? o.blob : NULL;
	}
	free(v);
	return r;
}

/* ------------------------------------------------- STREAMED FROM MEMORY */

/* The i-th written commit kept (0: the oldest). */
static struct ltxjob *retained_at(const struct db *db, size_t i)
{
	return db->r_ring[(db->r_first + i) % DB_RETAIN_MAX];
}

static void retained_pop(struct db *db)
{
	struct ltxjob *o = retained_at(db, 0);
	db->r_first = (db->r_first + 1) % DB_RETAIN_MAX;
	db->r_len--;
	db->r_bytes -= ltxjob_bytes(o);
	ltxjob_free(o);
}

/* Keep written job j for the streams, or free it (db->mu held). */
static void retain_or_free(struct db *db, struct ltxjob *j)
{
	const unsigned *f = db->opt.followers;
	bool keep = !j->blob && f && __atomic_load_n(f, __ATOMIC_RELAXED) > 0;
	if (keep && !db->r_ring)
		db->r_ring = calloc(DB_RETAIN_MAX, sizeof(*db->r_ring));
	if (!keep || !db->r_ring) {
		if (db->r_len)
			db_retained_drop(db);
		ltxjob_free(j);
		return;
	}
	j->next = NULL;
	if (db->r_len == DB_RETAIN_MAX)
		retained_pop(db);
	db->r_ring[(db->r_first + db->r_len) % DB_RETAIN_MAX] = j;
	db->r_len++;
	db->r_bytes += ltxjob_bytes(j);
	while (db->r_len > 1 && db->r_bytes > DB_RETAIN_MAX_BYTES)
		retained_pop(db);
}

void db_retained_drop(struct db *db)
{
	while (db->r_len)
		retained_pop(db);
	db->r_first = 0;
	db_ltx_blob_unref(db->r_last);
	db->r_last = NULL;
}

/* Where txid's commit is among those kept: its index, or r_len when absent. */
static size_t retained_find(const struct db *db, uint64_t txid)
{
	if (db->r_len == 0 || txid < retained_at(db, 0)->h.min_txid)
		return db->r_len;
	/* one TXID per WAL commit: its index is the distance from the oldest */
	uint64_t guess = txid - retained_at(db, 0)->h.min_txid;
	if (guess < db->r_len && retained_at(db, guess)->h.min_txid == txid)
		return (size_t)guess;
	size_t i = 0;
	while (i < db->r_len && retained_at(db, i)->h.min_txid != txid)
		i++;
	return i;
}

int db_ltx_encode_queued(struct db *db, uint64_t txid, struct db_ltx_blob **ret)
{
	struct ltxjob *g[DB_GROUP_MAX];
	size_t k = 0, bytes = 0;
	int r = -ENOENT;
	*ret = NULL;
	pthread_mutex_lock(&db->mu);
	/* the last range encoded, if it still reaches the newest commit */
	if (db->r_last && db->r_last->h.min_txid == txid &&
	    db->r_last->h.max_txid == db->pos.txid && db->r_last->post == db->pos.checksum) {
		__atomic_add_fetch(&db->r_last->refs, 1, __ATOMIC_RELAXED);
		*ret = db->r_last;
		pthread_mutex_unlock(&db->mu);
		return 0;
	}
	/* from the commits kept, then from the queue */
	size_t i = retained_find(db, txid);
	struct ltxjob *j = NULL;
	if (i == db->r_len)
		for (j = db->q_head; j && j->h.min_txid != txid;)
			j = j->next;
	for (;;) {
		struct ltxjob *c = i < db->r_len ? retained_at(db, i) : j;
		if (!c || k == DB_GROUP_MAX || c->blob)
			break;
		if (k > 0 && !group_continues(g[k - 1], c, bytes))
			break;
		bytes += ltxjob_bytes(c);
		g[k++] = c;
		if (i < db->r_len) {
			if (++i == db->r_len)
				j = db->q_head;
		} else {
			j = j->next;
		}
	}
	/* Every job held is of the current history: an apply drops them
	 * (db_retained_drop), and the stream checks the pre-apply checksum. */
	if (k > 0)
		r = ltxgroup_out(NULL, g, k, ret);
	if (r == 0) {
		__atomic_add_fetch(&(*ret)->refs, 1, __ATOMIC_RELAXED);
		db_ltx_blob_unref(db->r_last);
		db->r_last = *ret;
	}
	pthread_mutex_unlock(&db->mu);
	return r;
}

/*
 * Write every queued LTX file (db->mu held). With unlock, db->mu is released
 * while a file is written, so commits and reads go on meanwhile. Commits
 * that queued up while the previous file was written go into one range file
 * (GROUP COMMIT). Returns 0 or the error of the file that could not be
 * written (its commits stay queued).
 */
int db_queue_drain(struct db *db, bool unlock)
{
	struct ltxjob *g[DB_GROUP_MAX];
	int r = 0;
	while (db->q_busy)
		pthread_cond_wait(&db->q_cond, &db->mu);
	if (!db->q_head)
		return 0;
	db->q_busy = true;
	while (db->q_head) {
		size_t k = 0, bytes = 0;
		for (struct ltxjob *j = db->q_head; j && k < DB_GROUP_MAX; j = j->next) {
			if (k > 0 && !group_continues(g[k - 1], j, bytes))
				break;
			bytes += ltxjob_bytes(j);
			g[k++] = j;
		}
		if (unlock)
			pthread_mutex_unlock(&db->mu);
		struct db_ltx_blob *blob;
		r = ltxgroup_out(db, g, k, &blob);
		if (unlock)
			pthread_mutex_lock(&db->mu);
		if (r < 0)
			break;
		db_ltx_cache_put(db, blob); /* its commits are visible already */
		db->ltx_unsynced = true;
		for (size_t i = 0; i < k; i++) {
			db->q_head = g[i]->next;
			db->q_bytes -= ltxjob_bytes(g[i]);
			retain_or_free(db, g[i]);
		}
		db->q_len -= k;
		db->q_since_ns = clock_mono_ns(); /* the rest queued while it was written */
		if (!db->q_head)
			db->q_tail = NULL;
		if (k > 1)
			__atomic_add_fetch(&db->st_grouped, (uint64_t)k, __ATOMIC_RELAXED);
	}
	if (r < 0 && !db->q_err)
		log_error("db '%s': cannot write the LTX file of a commit: %s (writes fail until "
			  "it can be written)",
			  db->name, strerror(-r));
	else if (r == 0 && db->q_err)
		log_info("db '%s': queued LTX files written", db->name);
	db->q_err = r;
	db->q_busy = false;
	pthread_cond_broadcast(&db->q_cond);
	return r;
}

int db_write_queued_ltx(struct db *db)
{
	pthread_mutex_lock(&db->mu);
	int r = db->q_head || db->q_busy ? db_queue_drain(db, true) : 0;
	pthread_mutex_unlock(&db->mu);
	return r;
}

void db_write_done(struct db *db)
{
	pthread_mutex_lock(&db->mu);
	int evict = db->evict_fd;
	db->evict_fd = -1;
	/*
	 * When the application fsyncs the WAL right after each commit, write
	 * the files after that fsync rather than during it: creating files
	 * while it runs makes it wait for the filesystem journal. It takes two
	 * such commits in a row: with synchronous=NORMAL a checkpoint also
	 * fsyncs the WAL right after a commit, and the next commit, which no
	 * fsync follows, must not wait for one.
	 */
	if (db->q_head && !db->q_busy && !(db->q_unsynced && db->q_sync_streak >= 2) &&
	    (db->q_head->blob || /* a prepared file: never grouped, nothing to wait for */
	     db->q_len >= DB_GROUP_DEFER || db->q_bytes >= DB_GROUP_DEFER_BYTES ||
	     clock_mono_ns() - db->q_since_ns >= DB_GROUP_DEFER_NS))
		db_queue_drain(db, true);
	pthread_mutex_unlock(&db->mu);
	if (evict >= 0)
		close(evict); /* the unlinked journal's blocks go now (db_unlink) */
}
