/*
 * db_commit.c - one transaction, whatever the journal mode: the dirty-page
 * set that rollback modes collect between two commit points, and the two
 * steps of every commit, prepare (db_tx_prepare) and apply (db_tx_apply).
 *
 * THE DIRTY-PAGE SET. db->dirty lists, in the order of arrival, every page
 * that a write to the database file touched since the last commit point, and
 * db->dirty_bits has one bit per page so that each is listed once. dirty_all
 * says that a write came before the page size was known (the transaction
 * then becomes a snapshot); tx_synced that the application fsynced the
 * database or the journal meanwhile. dirty_add runs on every database write
 * and is static inline in db_int.h (it calls the two grow functions here
 * only when the set needs room); dirty_clear runs at every commit point and
 * when the database or its journal goes away.
 *
 * ONE COMMIT (docs/architecture.md, section 4). db_tx_prepare takes the
 * candidate pages (struct txpage, sorted and unique: txpages_normalize) and
 * the new size, reads every page through a page source (src_dbfile here, or
 * src_wal for WAL frames) and:
 *   1. computes each page's LTX checksum; pages whose checksum equals the
 *      committed one (db->pgck), pages past the new size and the lock page
 *      drop out;
 *   2. returns 0 if nothing changed and the size is the same: a rollback or
 *      a no-op leaves no trace and uses no TXID;
 *   3. asks the fence for the lease epoch (db_fence; -EROFS refuses);
 *   4. writes ltx/ for TXID + 1, whose pre-apply checksum is the current one
 *      and whose post-apply checksum the new XOR; or, for a small WAL commit
 *      (ret_job), hands the page images it already read back as an ltxjob
 *      for the queue (db_ltxout.c) instead;
 *   5. returns 1 with a struct txrec that describes the new state.
 * Nothing in memory has changed at that point. The caller performs the
 * operation that makes SQLite's commit real, then db_tx_apply installs the
 * txrec (pgck, xsum, page_count, pos, and on_change), or db_tx_abort
 * removes its file when that operation failed.
 *
 * Snapshots cover every page 1..commit with min TXID 1: written when the
 * database has no history yet, when the page size changed, or when pages
 * were written before the page size was known
 * (db_commit_snapshot_from_file), and by start-up recovery for a database
 * that changed outside ltxfs. db_commit_drop writes the commit-0 file of a
 * dropped database.
 *
 * THREADS. Everything runs with db->mu held, on the FUSE worker whose
 * operation is the commit point, or on db_open's thread during recovery.
 * db_tx_prepare may wait on q_cond for the queue (db_queue_settle: a commit
 * that is not queued writes its file in TXID order), which lets db->mu go
 * meanwhile; a WAL commit pins the WAL tail around it (db_wal.c).
 */

#include "db_int.h"

#include "ltxfs/clock.h"
#include "ltxfs/log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

/* --------------------------------------------------------- the dirty pages */

/* Empty the set at a commit point; dirty_all and tx_synced go too. */
void dirty_clear(struct db *db)
{
	for (size_t i = 0; i < db->n_dirty; i++) {
		uint32_t p = db->dirty[i];
		db->dirty_bits[p / 64] &= ~(UINT64_C(1) << (p % 64));
	}
	db->n_dirty = 0;
	db->dirty_all = false;
	db->tx_synced = false;
}

/* Make room in the bitmap for page pgno (dirty_add, db_int.h). */
int dirty_grow_bits(struct db *db, uint32_t pgno)
{
	uint64_t cap = db->dirty_bits_cap ? db->dirty_bits_cap : 4096;
	while (cap <= pgno)
		cap *= 2;
	if (cap > (UINT64_C(1) << 32))
		return -EFBIG;
	uint64_t *b = realloc(db->dirty_bits, (size_t)(cap / 64) * sizeof(*b));
	if (!b)
		return -ENOMEM;
	memset(b + db->dirty_bits_cap / 64, 0,
	       (size_t)((cap - db->dirty_bits_cap) / 64) * sizeof(*b));
	db->dirty_bits = b;
	db->dirty_bits_cap = (uint32_t)(cap > UINT32_MAX ? UINT32_MAX : cap);
	return 0;
}

/* Make room in the list for one more page (dirty_add, db_int.h). */
int dirty_grow_list(struct db *db)
{
	size_t cap = db->cap_dirty ? db->cap_dirty * 2 : 64;
	uint32_t *d = realloc(db->dirty, cap * sizeof(*d));
	if (!d)
		return -ENOMEM;
	db->dirty = d;
	db->cap_dirty = cap;
	return 0;
}

/* --------------------------------------------------------- one transaction */

static int cmp_txpage(const void *a, const void *b)
{
	const struct txpage *x = a, *y = b;
	if (x->pgno != y->pgno)
		return x->pgno < y->pgno ? -1 : 1;
	return x->where < y->where ? -1 : x->where > y->where;
}

/* Sort by pgno and keep the last image of each page. */
size_t txpages_normalize(struct txpage *p, size_t n)
{
	if (n == 0)
		return 0;
	qsort(p, n, sizeof(*p), cmp_txpage);
	size_t out = 0;
	for (size_t i = 0; i < n; i++) {
		if (out > 0 && p[out - 1].pgno == p[i].pgno)
			p[out - 1] = p[i];
		else
			p[out++] = p[i];
	}
	return out;
}

/* Remove a prepared transaction's file; the in-memory state never moved. */
void db_tx_abort(struct txrec *t)
{
	if (t->path[0])
		unlink(t->path);
	db_ltx_blob_unref(t->blob); /* never published: not committed */
	free(t->changed);
	memset(t, 0, sizeof(*t));
}

/*
 * Install a prepared transaction: page checksums, size, position, and
 * on_change. Empties *t.
 */
void db_tx_apply(struct db *db, struct txrec *t)
{
	if (t->snapshot)
		memset(db->pgck, 0, ((size_t)db->pgck_cap + 1) * sizeof(*db->pgck));
	for (size_t i = 0; i < t->n; i++)
		db->pgck[t->changed[i].pgno] = t->changed[i].ck;
	for (uint32_t pg = t->commit + 1; pg <= db->page_count; pg++)
		db->pgck[pg] = 0;
	db->page_count = t->commit;
	db->xsum = t->x;
	db_pos_set(db, t->txid, t->post, t->timestamp);
	db->last_epoch = t->epoch;
	__atomic_add_fetch(&db->st_commits, 1, __ATOMIC_RELAXED);
	log_debug("db '%s': committed txid %016" PRIx64 " (%zu pages, commit %u)", db->name,
		  t->txid, t->n, t->commit);
	db_ltx_cache_put(db, t->blob); /* a queued one's once its file exists */
	free(t->changed);
	memset(t, 0, sizeof(*t));
	/* a queued commit's file may not exist yet: whoever needs it writes
	 * the queue first (db_write_queued_ltx) */
	if (db->opt.on_change)
		db->opt.on_change(db->opt.change_ctx);
}

/*
 * Turn a set of page images (sorted, unique) plus a new size into the next
 * LTX file. Pages whose checksum is unchanged are left out. Returns 1 with
 * *t prepared, 0 if nothing changed (no file), or -errno (no file left).
 * With snapshot, every page 1..commit must be present and a snapshot LTX
 * (MinTXID 1) is written. With ret_job, a small transaction's file is not
 * written: *ret_job holds it for the queue (t->path stays empty).
 */
int db_tx_prepare(struct db *db, struct txpage *pages, size_t n, uint32_t commit,
		  const struct page_src *src, const struct walinfo *wi, bool snapshot, bool sync,
		  struct txrec *t, struct ltxjob **ret_job)
{
	uint8_t *buf = NULL, *img = NULL;
	uint64_t *crcs = NULL;
	size_t nchanged = 0, ps = db->page_size;
	uint32_t lock = ltx_lock_pgno(db->page_size);
	struct ltx_out o = {0};
	struct ltxjob *job = NULL;
	int r;

	memset(t, 0, sizeof(*t));
	if (ret_job)
		*ret_job = NULL;
	r = pgck_reserve(db, commit > db->page_count ? commit : db->page_count);
	if (r < 0)
		return r;
	/* Small transactions keep their images from pass 1 (no second read). */
	if (n > 0 && n <= DB_QUEUE_MAX_BYTES / ps) {
		img = malloc(n * ps);
		crcs = malloc(n * sizeof(*crcs));
		if (!img || !crcs) {
			free(img);
			free(crcs);
			img = NULL;
			crcs = NULL;
		}
	}
	buf = malloc(ps);
	if (!buf) {
		free(img);
		free(crcs);
		return -ENOMEM;
	}

	/* Pass 1: new checksums; keep changed pages (and images) at the front. */
	uint64_t x = db->xsum;
	for (size_t i = 0; i < n; i++) {
		struct txpage *p = &pages[i];
		if (p->pgno == 0 || p->pgno > commit || p->pgno == lock)
			continue;
		uint8_t *b = img ? img + nchanged * ps : buf;
		r = src->read(src->ctx, p, b);
		if (r < 0)
			goto out;
		uint64_t crc = ltx_page_crc(p->pgno, b, db->page_size);
		p->ck = LTX_CHECKSUM_FLAG | crc;
		uint64_t old = p->pgno <= db->page_count ? db->pgck[p->pgno] : 0;
		if (p->ck == old && !snapshot)
			continue;
		x ^= old ^ p->ck;
		if (crcs)
			crcs[nchanged] = crc;
		pages[nchanged++] = *p;
	}
	for (uint32_t pg = commit + 1; pg <= db->page_count; pg++)
		x ^= db->pgck[pg];
	if (snapshot) {
		size_t want = commit - (lock <= commit ? 1 : 0);
		if (nchanged != want) {
			r = -EIO; /* a snapshot must hold every page */
			goto out;
		}
		x = 0;
		for (size_t i = 0; i < nchanged; i++)
			x ^= pages[i].ck;
	} else if (nchanged == 0 && commit == db->page_count) {
		r = 0; /* a rollback or a no-op: leaves no trace */
		goto out;
	}
	uint64_t epoch;
	r = db_fence(db, &epoch);
	if (r < 0)
		goto out;

	struct ltx_header h = {
	    .flags = db->opt.compress ? LTX_FLAG_COMPRESS_LZ4 : 0,
	    .page_size = db->page_size,
	    .commit = commit,
	    .min_txid = snapshot ? 1 : db->pos.txid + 1,
	    .max_txid = db->pos.txid + 1,
	    .timestamp = clock_wall_ms(),
	    .pre_apply_checksum = snapshot ? 0 : db_cur_checksum(db),
	    .node_id = db->opt.node_id,
	    .epoch = epoch,
	};
	if (wi && !snapshot) {
		h.wal_offset = wi->offset;
		h.wal_size = wi->size;
		h.wal_salt1 = wi->salt1;
		h.wal_salt2 = wi->salt2;
	}
	t->changed = malloc((nchanged ? nchanged : 1) * sizeof(*t->changed));
	if (!t->changed) {
		r = -ENOMEM;
		goto out;
	}
	t->post = LTX_CHECKSUM_FLAG | x;
	for (size_t i = 0; i < nchanged; i++)
		t->changed[i] = pages[i];
	if (ret_job && img && !snapshot) {
		job = calloc(1, sizeof(*job));
		if (job)
			job->pgnos = malloc((nchanged ? nchanged : 1) * sizeof(*job->pgnos));
		if (!job || !job->pgnos) {
			r = -ENOMEM;
			goto out;
		}
		for (size_t i = 0; i < nchanged; i++)
			job->pgnos[i] = pages[i].pgno;
		job->h = h;
		job->post = t->post;
		job->n = nchanged;
		job->img = img;
		job->crcs = crcs;
		img = NULL;
		crcs = NULL;
		*ret_job = job;
		job = NULL;
	} else {
		r = db_queue_settle(db); /* files are written in TXID order */
		if (r == 0)
			r = ltx_out_begin(db, &o, &h);
		if (r < 0)
			goto out;
		for (size_t i = 0; i < nchanged; i++) {
			const uint8_t *b = img ? img + i * ps : buf;
			if (!img) {
				r = src->read(src->ctx, &pages[i], buf);
				if (r == 0 && ltx_page_checksum(pages[i].pgno, buf,
								db->page_size) != pages[i].ck)
					r = -EIO; /* changed under us: SQLite holds its lock */
			}
			if (r == 0 && img)
				r = ltx_encoder_add_page_crc(o.enc, pages[i].pgno, b, crcs[i]);
			else if (r == 0)
				r = ltx_encoder_add_page(o.enc, pages[i].pgno, b);
			if (r < 0) {
				ltx_out_abort(&o);
				goto out;
			}
		}
		r = ltx_out_end(db, &o, t->post, sync);
		if (r < 0)
			goto out;
		if (!sync)
			db->ltx_unsynced = true;
		memcpy(t->path, o.path, sizeof(t->path));
		t->blob = o.blob;
	}
	t->n = nchanged;
	t->commit = commit;
	t->snapshot = snapshot;
	t->x = x;
	t->txid = h.max_txid;
	t->epoch = h.epoch;
	t->timestamp = h.timestamp;
	r = 1;
out:
	if (r <= 0) {
		free(t->changed);
		t->changed = NULL;
	}
	ltxjob_free(job);
	free(img);
	free(crcs);
	free(buf);
	return r;
}

/* Prepare and apply at once. */
int db_commit_pages(struct db *db, struct txpage *pages, size_t n, uint32_t commit,
		    const struct page_src *src, const struct walinfo *wi, bool snapshot, bool sync,
		    bool *ret_written)
{
	struct txrec t;
	int r = db_tx_prepare(db, pages, n, commit, src, wi, snapshot, sync, &t, NULL);
	*ret_written = r == 1;
	if (r == 1)
		db_tx_apply(db, &t);
	return r < 0 ? r : 0;
}

/* Page source: the database file. */
int src_dbfile(void *ctx, const struct txpage *p, uint8_t *buf)
{
	return read_db_page(ctx, p->pgno, buf);
}

/* Write an LTX "deleted" file (commit 0). */
int db_commit_drop(struct db *db)
{
	struct ltx_out o;
	uint64_t epoch;
	if (db->pos.txid == 0)
		return 0;
	int fr = db_fence(db, &epoch);
	if (fr < 0)
		return fr;
	struct ltx_header h = {
	    .flags = db->opt.compress ? LTX_FLAG_COMPRESS_LZ4 : 0,
	    .page_size = db->page_size ? db->page_size : 4096,
	    .commit = 0,
	    .min_txid = db->pos.txid + 1,
	    .max_txid = db->pos.txid + 1,
	    .timestamp = clock_wall_ms(),
	    .pre_apply_checksum = db->pos.checksum ? db->pos.checksum : db_cur_checksum(db),
	    .node_id = db->opt.node_id,
	    .epoch = epoch,
	};
	int r = ltx_out_begin(db, &o, &h);
	if (r == 0)
		r = ltx_out_end(db, &o, LTX_CHECKSUM_FLAG, true);
	if (r < 0)
		return r;
	db_ltx_cache_put(db, o.blob);
	if (db->pgck)
		memset(db->pgck, 0, ((size_t)db->pgck_cap + 1) * sizeof(*db->pgck));
	db->page_count = 0;
	db->xsum = 0;
	db_pos_set(db, h.max_txid, LTX_CHECKSUM_FLAG, h.timestamp);
	db->last_epoch = epoch;
	if (db->opt.on_change)
		db->opt.on_change(db->opt.change_ctx);
	return 0;
}

/* Snapshot of the database file's current content as the next TXID. */
int db_commit_snapshot_from_file(struct db *db, uint32_t count, bool sync)
{
	uint32_t lock = ltx_lock_pgno(db->page_size);
	struct txpage *pages = calloc(count ? count : 1, sizeof(*pages));
	size_t n = 0;
	bool written;
	if (!pages)
		return -ENOMEM;
	for (uint32_t pg = 1; pg <= count; pg++)
		if (pg != lock)
			pages[n++].pgno = pg;
	struct page_src src = {src_dbfile, db};
	int r = db_commit_pages(db, pages, n, count, &src, NULL, true, sync, &written);
	free(pages);
	return r;
}
