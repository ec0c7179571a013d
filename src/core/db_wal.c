/*
 * db_wal.c - WAL mode: recognising commits in the stream of writes to the
 * WAL, and reading what it holds.
 *
 * FORMAT (SQLite's; parsed by src/format/sqlfmt.c). A 32-byte header (magic,
 * version, page size, checkpoint sequence, salts, checksum), then frames: a
 * 24-byte frame header (page number, commit size, non-zero only on the last
 * frame of a transaction, the salts, the cumulative checksum) and one page.
 * A frame is valid when its salts are the header's and its checksum
 * continues the chain from the frame before it.
 *
 * COMMIT DETECTION (db_wal_write). A write at offset 0 with a valid header
 * starts a new generation: the LTX files of the old one are made durable
 * first (db_sync_ltx) and the chain starts at the header. Any other write
 * that completes a frame claiming to commit is a candidate: the frames from
 * wal_end on are scanned with the pending write overlaid (wal_scan_tx), the
 * first complete transaction is prepared with the WAL as page source
 * (db_wal_prepare, db_tx_prepare in db_commit.c), then the write is
 * performed, then the transaction is applied, or queued when it is small
 * (db_tx_apply_queued, QUEUED LTX FILES in db_ltxout.c), and wal_end
 * advances. A write below wal_end that changes committed bytes means SQLite
 * undid a commit that was captured: the sticky error refuses writes until a
 * restart.
 *
 * WAL TAIL. Commit detection reads back the frames of the transaction being
 * written: the frame header that claims to commit, every frame's checksum
 * chain, and the pages for the LTX file. db->wt keeps a copy of the bytes
 * written since the last commit, so that for transactions up to
 * WAL_TAIL_MAX those reads come from memory rather than from the file (four
 * preads per single-page commit, on the path SQLite waits on). It covers
 * [wal_end, wal_end + wt_len) and always equals the file there: a write is
 * merged before it reaches the file and the tail is emptied if that write
 * fails; a write that does not join the covered range, or would grow it past
 * WAL_TAIL_MAX, is not merged (the tail is cut where it begins), and reads
 * outside the range go to the file. While a commit is prepared with the
 * tail as its overlay, db->mu can be let go (a big commit waits for the
 * queue), so the tail is pinned: it is not reallocated meanwhile, and a
 * write that would need it to grow is cut instead.
 *
 * wal_frame_map maps every page of the committed prefix to its newest frame,
 * for snapshots, exports and a replica's settle. Start-up recovery
 * (db_recover.c) walks a WAL with wal_scan_tx, wal_read and src_wal too,
 * without an overlay.
 *
 * States (db_int.h, CAPTURE STATES: WAL LIVE, WAL VALID, QUEUED).
 *
 * THREADS. db_wal_write runs with db->mu held on the FUSE worker writing
 * the WAL; wal_frame_map with db->mu held on a snapshot builder, the HTTP
 * thread of an export, or the thread that applies (db_settle). A commit may
 * wait for the queue inside db_tx_prepare, which lets db->mu go: wt_pins
 * keeps the tail's buffer in place meanwhile, and a write that would grow it
 * is cut instead.
 */

#include "db_int.h"

#include "ltxfs/clock.h"

#include "ltxfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* --------------------------------------------------------- reading the WAL */

/* Read exactly len bytes at off from the file; -EPROTO if it is shorter. */
static int pread_exact(int fd, void *dst, size_t len, off_t off)
{
	ssize_t got = len ? fs_pread_full(fd, dst, len, off) : 0;
	if (got < 0)
		return (int)got;
	return (size_t)got < len ? -EPROTO : 0;
}

/*
 * Read len bytes at off from the WAL with the overlay applied; -EPROTO if
 * short. Only the parts the overlay does not cover are read from the file:
 * at a commit the whole page usually comes from the pending write.
 */
int wal_read(int fd, const struct overlay *ov, void *dst, size_t len, off_t off)
{
	off_t end = off + (off_t)len;
	if (!ov || !ov->n || ov->off >= end || ov->off + (off_t)ov->n <= off)
		return pread_exact(fd, dst, len, off);
	off_t a = off > ov->off ? off : ov->off;
	off_t b = end < ov->off + (off_t)ov->n ? end : ov->off + (off_t)ov->n;
	int r = pread_exact(fd, dst, (size_t)(a - off), off);
	if (r == 0)
		memcpy((uint8_t *)dst + (a - off), ov->buf + (a - ov->off), (size_t)(b - a));
	if (r == 0)
		r = pread_exact(fd, (uint8_t *)dst + (b - off), (size_t)(end - b), b);
	return r;
}

/* ------------------------------------------------------------ the WAL tail */

#define WAL_TAIL_MAX (2u << 20)
/* After a commit, a tail buffer bigger than this shrinks back (many databases). */
#define WAL_TAIL_KEEP (64u << 10)

/*
 * Merge a write into the tail (db->mu held). Returns true when every byte of
 * it at or above wal_end is now covered, so that the tail alone can overlay
 * the file for reads.
 */
static bool wal_tail_merge(struct db *db, const uint8_t *buf, size_t n, off_t off)
{
	uint64_t base = db->wal_end;
	if ((uint64_t)off + n <= base)
		return true;
	if ((uint64_t)off < base) {
		buf += base - (uint64_t)off;
		n -= (size_t)(base - (uint64_t)off);
		off = (off_t)base;
	}
	uint64_t rel = (uint64_t)off - base, end = rel + n;
	if (rel > db->wt_len)
		return false; /* leaves a gap: the tail covers none of it */
	if (end > WAL_TAIL_MAX)
		goto cut;
	if (end > db->wt_cap) {
		if (db->wt_pins)
			goto cut; /* db->mu may have been let go with an overlay live */
		size_t cap = db->wt_cap ? db->wt_cap : 16384;
		while (cap < end)
			cap *= 2;
		uint8_t *p = realloc(db->wt, cap);
		if (!p)
			goto cut;
		db->wt = p;
		db->wt_cap = cap;
	}
	memcpy(db->wt + rel, buf, n);
	if (end > db->wt_len)
		db->wt_len = (size_t)end;
	return true;
cut:
	/* not merged: the tail must not cover the bytes this write changes (a
	 * frame rewritten in place can start inside it and end past the limit) */
	if (rel < db->wt_len)
		db->wt_cuts++;
	db->wt_len = (size_t)rel;
	return false;
}

/* ---------------------------------------------------- finding transactions */

/* Move wal_end forward to a commit boundary, keeping the tail beyond it. */
static void wal_advance(struct db *db, uint64_t end, uint32_t s1, uint32_t s2)
{
	uint64_t d = end - db->wal_end;
	if (end < db->wal_end || d >= db->wt_len) {
		db->wt_len = 0;
	} else {
		memmove(db->wt, db->wt + d, db->wt_len - (size_t)d);
		db->wt_len -= (size_t)d;
	}
	if (db->wt_cap > WAL_TAIL_KEEP && db->wt_len <= WAL_TAIL_KEEP && !db->wt_pins) {
		uint8_t *p = realloc(db->wt, WAL_TAIL_KEEP);
		if (p) {
			db->wt = p;
			db->wt_cap = WAL_TAIL_KEEP;
		}
	}
	db->wal_end = end;
	db->wal_s1 = s1;
	db->wal_s2 = s2;
}

/* Page source (db_tx_prepare): a frame's page, read through the overlay. */
int src_wal(void *ctx, const struct txpage *p, uint8_t *buf)
{
	struct walsrc *s = ctx;
	return wal_read(s->fd, s->ov, buf, s->db->page_size,
			(off_t)p->where + WAL_FRAME_HEADER_SIZE);
}

/*
 * Find the first complete, valid transaction starting at offset start with
 * checksum state (s1, s2). Returns 1 and fills tx, 0 if there is none (yet),
 * or -errno.
 */
int wal_scan_tx(const struct wal_header *wh, int fd, const struct overlay *ov, uint64_t start,
		uint32_t s1, uint32_t s2, struct wal_tx *tx)
{
	size_t fsz = WAL_FRAME_HEADER_SIZE + wh->page_size;
	uint8_t *frame = malloc(fsz);
	int r = 0;
	if (!frame)
		return -ENOMEM;
	tx->n = 0;
	for (uint64_t off = start;; off += fsz) {
		r = wal_read(fd, ov, frame, fsz, (off_t)off);
		if (r == -EPROTO) {
			r = 0;
			break;
		}
		if (r < 0)
			break;
		if (!wal_frame_verify(wh, &s1, &s2, frame, frame + WAL_FRAME_HEADER_SIZE))
			break;
		struct wal_frame_header fh;
		wal_frame_header_parse(&fh, frame);
		if (tx->n == tx->cap) {
			size_t cap = tx->cap ? tx->cap * 2 : 16;
			struct txpage *p = realloc(tx->pages, cap * sizeof(*p));
			if (!p) {
				r = -ENOMEM;
				break;
			}
			tx->pages = p;
			tx->cap = cap;
		}
		tx->pages[tx->n++] = (struct txpage){.pgno = fh.pgno, .where = off};
		if (fh.commit) {
			tx->start = start;
			tx->end = off + fsz;
			tx->commit = fh.commit;
			tx->s1 = s1;
			tx->s2 = s2;
			r = 1;
			break;
		}
	}
	free(frame);
	return r;
}

/*
 * Prepare the first complete transaction after wal_end (with the pending
 * write overlaid). Returns 1 with *t (and the new WAL position in *tx) ready
 * to apply, 0 if there is none or it changes nothing (then the WAL position
 * in *tx is still advanced when tx->end != 0), or -errno.
 */
static int db_wal_prepare(struct db *db, int fd, const struct overlay *ov, struct wal_tx *tx,
			  struct txrec *t, struct ltxjob **ret_job)
{
	int r = wal_scan_tx(&db->walh, fd, ov, db->wal_end, db->wal_s1, db->wal_s2, tx);
	if (r <= 0) {
		tx->end = 0;
		return r;
	}
	size_t n = txpages_normalize(tx->pages, tx->n);
	struct walsrc ws = {db, fd, ov};
	struct page_src src = {src_wal, &ws};
	struct walinfo wi = {(int64_t)tx->start, (int64_t)(tx->end - tx->start), db->walh.salt1,
			     db->walh.salt2};
	if (db->page_size == 0)
		db->page_size = db->walh.page_size;
	return db_tx_prepare(db, tx->pages, n, tx->commit, &src, &wi, db->pos.txid == 0, false, t,
			     ret_job);
}

/* Commit every complete transaction already in the file. */
static int db_wal_commit_all(struct db *db, int fd)
{
	struct wal_tx tx = {0};
	struct txrec t;
	int r;
	for (;;) {
		struct overlay tov = {db->wt, db->wt_len, (off_t)db->wal_end};
		db->wt_pins++; /* a big commit may wait for the queue without db->mu */
		r = db_wal_prepare(db, fd, &tov, &tx, &t, NULL);
		db->wt_pins--;
		if (r < 0 || tx.end == 0)
			break;
		if (r == 1)
			db_tx_apply(db, &t);
		wal_advance(db, tx.end, tx.s1, tx.s2);
	}
	free(tx.pages);
	return r < 0 ? r : 0;
}

/* ------------------------------------------------------------------ writes */

/* Apply a prepared queued commit and append its file to the queue. */
static void db_tx_apply_queued(struct db *db, struct txrec *t, struct ltxjob *j)
{
	db_tx_apply(db, t);
	db_queue_push(db, j);
	db->q_unsynced = true;
}

int db_wal_write(struct db *db, int fd, const uint8_t *buf, size_t n, off_t off)
{
	int r;
	if (off == 0 && n >= WAL_HEADER_SIZE) {
		struct wal_header wh;
		/* A new WAL generation: everything before it was checkpointed.
		 * The LTX files of the old generation must be durable first. */
		r = db_sync_ltx(db);
		if (r < 0)
			return r;
		r = fs_pwrite_full(fd, buf, n, off);
		if (r < 0) {
			db->wt_len = 0; /* part of it may have reached bytes the tail holds */
			return r;
		}
		db->wal_gen_end = n;
		if (wal_header_parse(&wh, buf) == 0) {
			db->walh = wh;
			db->wal_valid = true;
			db->wt_len = 0;
			db->wal_end = WAL_HEADER_SIZE;
			db->wal_s1 = wh.cksum1;
			db->wal_s2 = wh.cksum2;
			if (db->page_size == 0)
				db->page_size = wh.page_size;
			if (n > WAL_HEADER_SIZE)
				r = db_wal_commit_all(db, fd);
		} else {
			db_wal_reset(db);
		}
		return r;
	}
	if (db->wal_valid && (uint64_t)off < db->wal_end) {
		/*
		 * SQLite may split a frame's page at its sync point
		 * (walWriteToLog/iSyncPoint). When the bytes after the split are
		 * already on disk from an earlier WAL generation, the chain verifies
		 * before the second half arrives; that half then rewrites identical
		 * bytes, which is harmless.
		 */
		size_t below =
		    (uint64_t)off + n <= db->wal_end ? n : (size_t)(db->wal_end - (uint64_t)off);
		uint8_t *cur = malloc(below);
		if (!cur)
			return -ENOMEM;
		ssize_t got = fs_pread_full(fd, cur, below, off);
		bool same = got == (ssize_t)below && memcmp(cur, buf, below) == 0;
		free(cur);
		if (same && below == n)
			return 0;
		if (same)
			goto above; /* the rest lies past the last commit: the usual path */
		/*
		 * SQLite rewrites frames it had committed only when it undid a
		 * commit whose frames were already written (a failed WAL fsync or
		 * wal-index append, wal.c sqlite3WalFrames/WalUndo). Our chain
		 * holds that transaction, and so does the WAL file: SQLite's own
		 * recovery on reopen finds it committed. Refuse writes (which
		 * would overwrite it) until a restart, whose recovery reconciles
		 * the chain with the WAL.
		 */
		log_error("db '%s': SQLite rewound the WAL below a captured commit (offset %lld < "
			  "%llu); refusing writes until ltxfs restarts and resynchronises",
			  db->name, (long long)off, (unsigned long long)db->wal_end);
		db->sticky_err = -EIO;
		return -EIO;
	}
above:
	if (!db->wal_valid)
		return fs_pwrite_full(fd, buf, n, off);

	/* What reads see: the tail when it took the write, else the write itself. */
	struct overlay wov = {buf, n, off};
	const struct overlay *ov = &wov;
	struct overlay tov;
	if (wal_tail_merge(db, buf, n, off)) {
		tov = (struct overlay){db->wt, db->wt_len, (off_t)db->wal_end};
		ov = &tov;
	}

	/*
	 * Does this write complete a frame that claims to commit? Look at the
	 * frame holding the write's last byte (SQLite writes a frame as its
	 * header, then its page, or rewrites a header in place).
	 */
	uint64_t fsz = WAL_FRAME_HEADER_SIZE + db->walh.page_size;
	uint64_t last = (uint64_t)off + n - 1;
	bool candidate = false;
	if (last >= WAL_HEADER_SIZE) {
		uint64_t fstart = WAL_HEADER_SIZE + (last - WAL_HEADER_SIZE) / fsz * fsz;
		if (fstart >= db->wal_end) {
			uint8_t fh[WAL_FRAME_HEADER_SIZE];
			/* bytes past wal_gen_end are stale: the frame is not complete */
			uint64_t size = db->wal_gen_end > last + 1 ? db->wal_gen_end : last + 1;
			if (size >= fstart + fsz &&
			    wal_read(fd, ov, fh, sizeof(fh), (off_t)fstart) == 0) {
				struct wal_frame_header f;
				wal_frame_header_parse(&f, fh);
				candidate = f.commit != 0;
			}
		}
	}
	if (candidate) {
		/* LTX first, then the write that makes SQLite's commit real. */
		struct wal_tx tx = {0};
		struct txrec t;
		struct ltxjob *job = NULL;
		db->wt_pins++; /* a big commit may wait for the queue without db->mu */
		r = db_wal_prepare(db, fd, ov, &tx, &t, db->q_bytes < DB_QUEUE_LIMIT ? &job : NULL);
		db->wt_pins--;
		free(tx.pages);
		if (r < 0) {
			db->wt_len = 0; /* it holds the write, which the file does not */
			return r;
		}
		int w = fs_pwrite_full(fd, buf, n, off);
		if (w < 0) {
			db->wt_len = 0;
			ltxjob_free(job);
			if (r == 1)
				db_tx_abort(&t);
			return w;
		}
		if (r == 1 && job)
			db_tx_apply_queued(db, &t, job);
		else if (r == 1)
			db_tx_apply(db, &t);
		if (tx.end) {
			wal_advance(db, tx.end, tx.s1, tx.s2);
			/* more complete transactions in one write (not SQLite's habit) */
			uint64_t have = (uint64_t)off + n > db->wal_gen_end ? (uint64_t)off + n
									    : db->wal_gen_end;
			if (have >= tx.end + fsz)
				return db_wal_commit_all(db, fd);
		}
		return 0;
	}
	r = fs_pwrite_full(fd, buf, n, off);
	if (r < 0)
		db->wt_len = 0;
	return r;
}

/* ---------------------------------------------------- the committed frames */

/* Map every page in the committed WAL prefix to its newest frame. */
int wal_frame_map(struct db *db, uint64_t **ret)
{
	char path[4096];
	uint64_t *map = NULL;
	int r, fd = -1;
	*ret = NULL;
	if (!db->wal_valid || db->wal_end <= WAL_HEADER_SIZE)
		return 0;
	map = calloc((size_t)db->page_count + 1, sizeof(*map));
	if (!map)
		return -ENOMEM;
	r = db_file_path(db, DB_FILE_WAL, path, sizeof(path));
	if (r < 0)
		goto out;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	uint64_t fsz = WAL_FRAME_HEADER_SIZE + (uint64_t)db->walh.page_size;
	for (uint64_t off = WAL_HEADER_SIZE; off + fsz <= db->wal_end; off += fsz) {
		uint8_t fh[WAL_FRAME_HEADER_SIZE];
		struct wal_frame_header f;
		ssize_t n = fs_pread_full(fd, fh, sizeof(fh), (off_t)off);
		if (n < 0) {
			r = (int)n;
			goto out;
		}
		if (n != (ssize_t)sizeof(fh)) {
			r = -EIO;
			goto out;
		}
		wal_frame_header_parse(&f, fh);
		if (f.pgno >= 1 && f.pgno <= db->page_count)
			map[f.pgno] = off + WAL_FRAME_HEADER_SIZE;
	}
	*ret = map;
	map = NULL;
	r = fd;
	fd = -1;
out:
	if (fd >= 0)
		close(fd);
	free(map);
	return r;
}
