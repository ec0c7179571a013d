/*
 * db.c - one database: commit capture into LTX files, and crash recovery.
 *
 * FILES. A database <name> lives in dbs/<name>/ of the data directory:
 * `database`, `journal`, `wal`, `shm`, and `ltx/%016x-%016x.ltx`, exactly as
 * LiteFS 0.5 lays it out. ltxfs adds `checksums` (written only at a clean
 * shutdown, removed at start) and `mj<HEX>` (SQLite super-journals).
 *
 * THE MODEL. SQLite's POSIX locks stay in the kernel: ltxfs implements no
 * getlk/setlk, so the kernel arbitrates every lock between processes exactly
 * as on a local disk and read transactions cost no round trip for locking.
 * Commits are recognised from the write stream itself, which SQLite orders
 * strictly because it holds its locks while it writes:
 *
 *   rollback modes  The commit point is the invalidation of the journal:
 *                   unlink (DELETE), truncation to 0 (TRUNCATE, or O_TRUNC),
 *                   or a write at offset 0 that destroys the journal magic
 *                   (PERSIST, and exclusive locking mode). Database writes
 *                   made between two commit points are recorded as a dirty
 *                   page set. At the commit point each dirty page is read
 *                   back and checksummed; pages whose checksum differs from
 *                   the committed state form the transaction. If none
 *                   differs and the size is unchanged (a ROLLBACK, including
 *                   one that played back pages spilled to the file, or a
 *                   statement that failed), no LTX file is written: a real
 *                   commit always changes page 1 (the change counter).
 *   WAL mode        The commit point is the completion of a frame whose
 *                   header carries a non-zero commit size and whose salt and
 *                   cumulative checksum chain from the last commit are valid,
 *                   i.e. the first moment WAL recovery would accept it. That
 *                   covers SQLite rewriting checksums of frames it overwrote
 *                   in place (walRewriteChecksums) and padding frames (they
 *                   change nothing, so they produce no LTX file).
 *
 * In both cases the transaction is captured *before* the write (or unlink)
 * that commits is performed. In rollback modes its LTX file is written then
 * (or was already, at SQLite's database fsync: PREPARED COMMITS); if it
 * cannot be written (disk full), the commit-point operation fails with that
 * error and SQLite reports it, leaving the database as after a failed commit.
 * In WAL mode the WAL is the durable record, so a small transaction's file
 * is queued and written just after the reply (QUEUED LTX FILES); nothing
 * outside this file observes the position before the file exists.
 *
 * Writes to the database file are allowed only inside a transaction SQLite
 * protects: while a journal exists, or while a WAL exists (checkpoints). Any
 * other write (journal_mode=OFF or MEMORY, or a non-SQLite file) is refused
 * with EPERM, because ltxfs could not tell when it commits.
 *
 * CHECKSUMS. pgck[pgno] holds the LTX page checksum of every committed page
 * and xsum their XOR, so the rolling database checksum is updated in O(pages
 * changed) per transaction and is never recomputed on the write path.
 *
 * DURABILITY. An LTX file is fdatasync'ed, with its directory, by the commit
 * point of a rollback-mode transaction in which the application asked for
 * durability (fsync of the database or journal), normally on the syncer
 * thread while the application's fsync of the database runs. In WAL mode the WAL itself
 * is the durable record: LTX files are written without fsync and made
 * durable (syncfs) before the WAL is restarted, truncated or deleted; start-up
 * recovery regenerates any LTX file that power loss tore from the WAL.
 *
 * RECOVERY (db_open, before the mount exists):
 *   1. Remove *.tmp files (and database.tmp); verify LTX files from the newest down and delete
 *      any that do not verify (torn by a crash), until one verifies. A torn file
 *      with a record in the LTX ring is written again from it instead.
 *   1b. Write the LTX ring's records that follow the newest intact file back
 *      as files while they chain (LTX RING); then syncfs and a new ring epoch.
 *   2. Roll back a hot journal (one SQLite would roll back: valid header, and
 *      any super-journal it names still exists); delete a cold one.
 *   3. Compute page checksums of the database file (or load them from the
 *      clean-shutdown file when nothing needed recovery).
 *   4. Walk the WAL's valid committed transactions on top of the file; if the
 *      state after transaction i equals the last LTX's post-apply checksum,
 *      transactions i+1.. become new LTX files. Then checkpoint the WAL into
 *      the database file and remove WAL and SHM.
 *   5. Compare with the last LTX: equal is fine; equal to its pre-apply
 *      checksum means the process died between writing the LTX and the commit
 *      point, so the LTX pages are applied; anything else means the database
 *      changed outside ltxfs: its current content is recorded as a snapshot
 *      LTX with the next TXID and a loud warning. Nothing is thrown away.
 *
 * THREADS. Any FUSE worker may call in; db->mu serialises all state changes
 * and the writes that carry them. The queued LTX files are written without
 * db->mu by the worker that replied (q_busy marks it); the syncer thread only
 * fdatasyncs a descriptor it is handed (the LTX ring, or a prepared file).
 * SQLite's own locks already serialise writers, so the mutex is uncontended
 * except against checkpoints.
 */
#include "ltxfs/db.h"
#include "ltxfs/clock.h"

#include "ltxfs/crc.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/log.h"
#include "ltxfs/ltx.h"
#include "ltxfs/ltxring.h"
#include "ltxfs/sqlfmt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define CKFILE_MAGIC "LTXFSCK1"
#define RING_NAME    "ltxring" /* dbs/<name>/ltxring: the LTX RING */

struct db {
	pthread_mutex_t mu;
	size_t idx;
	char *dir;
	char *name;
	char *ltx_dir;
	int ltx_dirfd; /* ltx_dir, opened once: files are created relative to it */
	struct db_options opt;

	bool exists;
	int dbfd; /* internal O_RDWR descriptor of `database`, -1 when absent */
	uint32_t page_size;
	uint32_t page_count; /* committed size in pages */
	uint64_t *pgck;	     /* [pgno] committed page checksum, index 0 unused */
	uint32_t pgck_cap;   /* entries allocated minus one */
	uint64_t xsum;	     /* XOR of pgck[1..page_count] */
	struct db_pos pos;

	/* rollback-journal tracking */
	bool journal_exists;
	bool
	    journal_active; /* a journal header with the magic was written: a transaction is open */
	uint64_t *dirty_bits;
	uint32_t dirty_bits_cap; /* in pages */
	uint32_t *dirty;
	size_t n_dirty, cap_dirty;
	bool dirty_all; /* page size was unknown when a write arrived */
	bool tx_synced; /* the application fsync'ed during this transaction */

	/* WAL tracking */
	bool wal_exists;
	bool wal_live;	      /* the WAL file has bytes: SQLite treats a 0-byte WAL as absent */
	uint64_t wal_size;    /* its size: every write and truncation passes through here */
	uint64_t wal_gen_end; /* end of the bytes written since the header: beyond it lie stale
				 frames of an earlier generation */
	bool wal_valid;
	struct wal_header walh;
	uint64_t wal_end; /* end of the last committed frame */
	uint32_t wal_s1, wal_s2;
	/* the WAL bytes at [wal_end, wal_end + wt_len), as in the file (WAL TAIL) */
	uint8_t *wt;
	size_t wt_len, wt_cap;
	unsigned wt_pins;    /* overlays pointing into wt are live: no realloc */
	uint64_t wt_cuts;    /* writes that overlapped the tail and were not merged */
	bool ltx_unsynced;   /* LTX files written since the last sync */
	int sticky_err;	     /* capture lost sync with SQLite: refuse writes until a restart */
	bool dirsync;	     /* fsync ltx/ after a new file: not on ext4 (see ltx_out_end) */
	bool ltx_trusted;    /* newest LTX accepted on the clean-shutdown cache's word */
	uint64_t txid_floor; /* highest TXID of a discarded torn file: TXIDs never go back */
	bool live;	     /* start-up recovery is over: commits go through the fence */
	uint64_t last_epoch; /* lease epoch recorded in the newest LTX file */
	uint64_t st_writes[DB_FILE_N], st_commits, st_removed; /* GET /metrics (atomics) */
	uint64_t st_prep_used, st_ring_records;		       /* db_stats diagnostics (db->mu) */

	/* LTX files of WAL commits not written yet (see QUEUED LTX FILES) */
	struct ltxjob *q_head, *q_tail;
	size_t q_bytes; /* page bytes queued */
	bool q_busy;	/* a thread is writing q_head */
	int q_err;	/* the last attempt failed: the error the next write reports */

	/* a rollback-mode commit built at the database fsync (PREPARED COMMITS) */
	struct txrec *prep; /* NULL when none */
	bool prep_synced;
	uint64_t prep_gen, prep_pre;
	uint64_t write_gen; /* writes to the database and journal files */
	bool prep_in_ring;  /* a copy of db->prep's file is the ring record at prep_ring_off */
	uint64_t prep_ring_off;
	struct ltx_ring *ring; /* durable copies of prepared files (LTX RING); NULL until used */
	bool ring_dirty;       /* the ring holds records of its current epoch */
	bool ring_failed;      /* the ring could not be created or reset: not used again */
	bool ring_warned;      /* a ring failure was logged: prepared files are fsynced */
	struct syncer *syncer;
	bool snap_locked;	/* the next snapshot is built under the lock (atomic) */
	bool q_unsynced;	/* the newest commit was queued and the WAL not fsync'ed since */
	unsigned q_sync_streak; /* commits in a row followed by an fsync of the WAL */
	pthread_cond_t q_cond;
};

/* The write fence (db_options.may_commit); recovery is never fenced. */
static int db_fence(struct db *db, uint64_t *epoch)
{
	*epoch = 0;
	if (!db->live || !db->opt.may_commit)
		return 0;
	if (db->opt.may_commit(db->opt.change_ctx, epoch))
		return 0;
	log_warn("db '%s': commit refused: this node does not hold the primary lease", db->name);
	return -EROFS;
}

/* ---------------------------------------------------------------- helpers */

static uint64_t db_cur_checksum(const struct db *db)
{
	return LTX_CHECKSUM_FLAG | db->xsum;
}

static const char *const file_names[DB_FILE_N] = {"database", "journal", "wal", "shm", NULL};

int db_file_path(struct db *db, enum db_file kind, char *buf, size_t n)
{
	if (kind >= DB_FILE_POS)
		return -EINVAL;
	return fs_path(buf, n, "%s/%s", db->dir, file_names[kind]);
}

static int pgck_reserve(struct db *db, uint32_t npages)
{
	if (npages <= db->pgck_cap)
		return 0;
	uint32_t cap = db->pgck_cap ? db->pgck_cap : 64;
	while (cap < npages)
		cap = cap > UINT32_MAX / 2 ? npages : cap * 2;
	uint64_t *p = realloc(db->pgck, ((size_t)cap + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	memset(p + db->pgck_cap + 1, 0, (size_t)(cap - db->pgck_cap) * sizeof(*p));
	db->pgck = p;
	db->pgck_cap = cap;
	return 0;
}

static void dirty_clear(struct db *db)
{
	for (size_t i = 0; i < db->n_dirty; i++) {
		uint32_t p = db->dirty[i];
		db->dirty_bits[p / 64] &= ~(UINT64_C(1) << (p % 64));
	}
	db->n_dirty = 0;
	db->dirty_all = false;
	db->tx_synced = false;
}

static int dirty_add(struct db *db, uint32_t pgno)
{
	if (pgno >= db->dirty_bits_cap) {
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
	}
	uint64_t bit = UINT64_C(1) << (pgno % 64);
	if (db->dirty_bits[pgno / 64] & bit)
		return 0;
	if (db->n_dirty == db->cap_dirty) {
		size_t cap = db->cap_dirty ? db->cap_dirty * 2 : 64;
		uint32_t *d = realloc(db->dirty, cap * sizeof(*d));
		if (!d)
			return -ENOMEM;
		db->dirty = d;
		db->cap_dirty = cap;
	}
	db->dirty[db->n_dirty++] = pgno;
	db->dirty_bits[pgno / 64] |= bit;
	return 0;
}

/* Read page pgno of the database file; bytes past EOF read as zeros. */
static int read_db_page(struct db *db, uint32_t pgno, uint8_t *buf)
{
	ssize_t r = fs_pread_full(db->dbfd, buf, db->page_size, (off_t)(pgno - 1) * db->page_size);
	if (r < 0)
		return (int)r;
	if ((size_t)r < db->page_size)
		memset(buf + r, 0, db->page_size - (size_t)r);
	return 0;
}

/* ------------------------------------------------------- LTX file output */

struct wbuf {
	int fd;
	size_t n;
	uint8_t buf[1 << 16];
};

static int wbuf_flush(struct wbuf *w)
{
	int r = fs_write_full(w->fd, w->buf, w->n);
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
		if (n > sizeof(w->buf))
			return fs_write_full(w->fd, p, n);
	}
	memcpy(w->buf + w->n, p, n);
	w->n += n;
	return 0;
}

struct ltx_out {
	struct wbuf *w;
	struct ltx_encoder *enc;
	char path[4096];
	struct ltx_header h;
};

static int ltx_out_begin(struct db *db, struct ltx_out *o, const struct ltx_header *h)
{
	char name[LTX_FILENAME_LEN + 1];
	int r;
	memset(o, 0, sizeof(*o));
	o->h = *h;
	ltx_format_filename(name, h->min_txid, h->max_txid);
	r = fs_path(o->path, sizeof(o->path), "%s/%s", db->ltx_dir, name);
	if (r < 0)
		return r;
	o->w = malloc(sizeof(*o->w));
	if (!o->w)
		return -ENOMEM;
	o->w->n = 0;
	o->w->fd = openat(db->ltx_dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (o->w->fd < 0) {
		r = -errno;
		free(o->w);
		o->w = NULL;
		return r;
	}
	r = ltx_encoder_new(&o->enc, h, wbuf_write, o->w);
	if (r < 0) {
		close(o->w->fd);
		unlink(o->path);
		free(o->w);
		o->w = NULL;
	}
	return r;
}

static void ltx_out_abort(struct ltx_out *o)
{
	if (!o->w)
		return;
	ltx_encoder_free(o->enc);
	close(o->w->fd);
	unlink(o->path);
	free(o->w);
	o->w = NULL;
	o->enc = NULL;
}

static int db_sync_ring_covered(struct db *db);

/* Finish the file; with sync, fdatasync it and fsync its directory. */
static int ltx_out_end(struct db *db, struct ltx_out *o, uint64_t post, bool sync)
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
	free(o->w);
	o->w = NULL;
	o->enc = NULL;
	return 0;
}

/* Make every LTX file written without fsync durable. */
static int db_queue_settle(struct db *db);

static int db_sync_ltx(struct db *db)
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

/*
 * db->mu held, before an LTX file is made durable on its own: files whose
 * durability is only a copy in the LTX ring must not end up behind a durable
 * one, or after a power loss recovery would discard the durable file with a
 * torn one before it. syncfs covers them (and that file, once written).
 */
static int db_sync_ring_covered(struct db *db)
{
	return db->ring_dirty && db->ltx_unsynced ? db_sync_ltx(db) : 0;
}

/* ------------------------------------------------------ committing a tx */

/* A page of a transaction: where its new image is (file offset of the WAL
 * frame, or unused for the database file) and its new checksum. */
struct txpage {
	uint32_t pgno;
	uint64_t where;
	uint64_t ck;
};

struct page_src {
	int (*read)(void *ctx, const struct txpage *p, uint8_t *buf);
	void *ctx;
};

static int cmp_txpage(const void *a, const void *b)
{
	const struct txpage *x = a, *y = b;
	if (x->pgno != y->pgno)
		return x->pgno < y->pgno ? -1 : 1;
	return x->where < y->where ? -1 : x->where > y->where;
}

/* Sort by pgno and keep the last image of each page. */
static size_t txpages_normalize(struct txpage *p, size_t n)
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

struct walinfo {
	int64_t offset, size;
	uint32_t salt1, salt2;
};

/* A prepared transaction: its LTX file exists, the in-memory state is not
 * updated yet (db_tx_apply) or the file is removed again (db_tx_abort). */
struct txrec {
	struct txpage *changed; /* pgno + new checksum */
	size_t n;
	uint32_t commit;
	bool snapshot;
	uint64_t x, post, txid, epoch;
	int64_t timestamp;
	char path[4096]; /* the LTX file written, "" when it is queued */
	bool queued;
};

/*
 * QUEUED LTX FILES. A WAL-mode commit of at most DB_QUEUE_MAX_BYTES of pages
 * does not write its LTX file inside the write that commits: the pages are
 * checksummed and copied under db->mu, the in-memory state advances, and the
 * file is queued. The FUSE worker writes it right after it has replied to
 * SQLite (db_write_done), so file creation and compression overlap with the
 * application instead of adding to its commit latency. This is safe because
 * in WAL mode the WAL is the durable record (DURABILITY above): a crash
 * before the file exists is repaired by recovery step 4. Files are written in
 * TXID order by one thread at a time (q_busy). Every reader of the position
 * or of LTX files (db_get_pos, snapshots, the stream, sync points before a
 * WAL restart, shutdown) first waits for the queue to drain, so outside
 * db.c a queued commit is never observable without its file; on_change fires
 * once the file exists. A write that fails (disk full) stays queued, and
 * every later write to the database fails with that error until a retry
 * succeeds.
 */
#define DB_QUEUE_MAX_BYTES (1u << 20)
/* Beyond this much queued, commits write their files themselves (backpressure). */
#define DB_QUEUE_LIMIT (8u << 20)

struct ltxjob {
	struct ltxjob *next;
	struct ltx_header h;
	uint64_t post;
	size_t n;
	uint32_t *pgnos;
	uint64_t *crcs; /* ltx_page_crc of each page, folded into the file checksum */
	uint8_t *img;	/* n pages of h.page_size bytes */
};

static void ltxjob_free(struct ltxjob *j)
{
	if (!j)
		return;
	free(j->pgnos);
	free(j->crcs);
	free(j->img);
	free(j);
}

static int ltxjob_write(struct db *db, const struct ltxjob *j)
{
	struct ltx_out o;
	int r = ltx_out_begin(db, &o, &j->h);
	for (size_t i = 0; i < j->n && r == 0; i++) {
		r = ltx_encoder_add_page_crc(o.enc, j->pgnos[i], j->img + i * j->h.page_size,
					     j->crcs[i]);
		if (r < 0)
			ltx_out_abort(&o);
	}
	if (r == 0)
		r = ltx_out_end(db, &o, j->post, false);
	return r;
}

/*
 * Write every queued LTX file (db->mu held). With unlock, db->mu is released
 * while a file is written, so commits and reads go on meanwhile. Returns 0
 * or the error of the file that could not be written (it stays queued).
 */
static int db_queue_drain(struct db *db, bool unlock)
{
	int r = 0;
	while (db->q_busy)
		pthread_cond_wait(&db->q_cond, &db->mu);
	if (!db->q_head)
		return 0;
	db->q_busy = true;
	struct ltxjob *j;
	while ((j = db->q_head)) {
		if (unlock)
			pthread_mutex_unlock(&db->mu);
		r = ltxjob_write(db, j);
		if (unlock)
			pthread_mutex_lock(&db->mu);
		if (r < 0)
			break;
		db->ltx_unsynced = true;
		db->q_head = j->next;
		if (!db->q_head)
			db->q_tail = NULL;
		db->q_bytes -= j->n * j->h.page_size;
		ltxjob_free(j);
		if (db->opt.on_change)
			db->opt.on_change(db->opt.change_ctx);
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

/* db->mu held: make sure no commit is queued. 0 or the write error. */
static int db_queue_settle(struct db *db)
{
	if (db->q_head || db->q_busy)
		return db_queue_drain(db, false);
	return 0;
}

/* Lock db->mu with every queued LTX file written (as far as possible). */
static void db_lock_settled(struct db *db)
{
	pthread_mutex_lock(&db->mu);
	db_queue_settle(db);
}

void db_write_done(struct db *db)
{
	pthread_mutex_lock(&db->mu);
	/*
	 * When the application fsyncs the WAL right after each commit, write
	 * the files after that fsync rather than during it: creating files
	 * while it runs makes it wait for the filesystem journal. It takes two
	 * such commits in a row: with synchronous=NORMAL a checkpoint also
	 * fsyncs the WAL right after a commit, and the next commit, which no
	 * fsync follows, must not wait for one.
	 */
	if (db->q_head && !db->q_busy && !(db->q_unsynced && db->q_sync_streak >= 2))
		db_queue_drain(db, true);
	pthread_mutex_unlock(&db->mu);
}

static void db_tx_abort(struct txrec *t)
{
	if (t->path[0])
		unlink(t->path);
	free(t->changed);
	memset(t, 0, sizeof(*t));
}

static void db_tx_apply(struct db *db, struct txrec *t)
{
	if (t->snapshot)
		memset(db->pgck, 0, ((size_t)db->pgck_cap + 1) * sizeof(*db->pgck));
	for (size_t i = 0; i < t->n; i++)
		db->pgck[t->changed[i].pgno] = t->changed[i].ck;
	for (uint32_t pg = t->commit + 1; pg <= db->page_count; pg++)
		db->pgck[pg] = 0;
	db->page_count = t->commit;
	db->xsum = t->x;
	db->pos.txid = t->txid;
	db->pos.checksum = t->post;
	db->pos.timestamp = t->timestamp;
	db->last_epoch = t->epoch;
	__atomic_add_fetch(&db->st_commits, 1, __ATOMIC_RELAXED);
	log_debug("db '%s': committed txid %016" PRIx64 " (%zu pages, commit %u)", db->name,
		  t->txid, t->n, t->commit);
	bool queued = t->queued;
	free(t->changed);
	memset(t, 0, sizeof(*t));
	if (db->opt.on_change && !queued)
		db->opt.on_change(db->opt.change_ctx); /* else once the file is written */
}

/* Apply a prepared queued commit and append its file to the queue. */
static void db_tx_apply_queued(struct db *db, struct txrec *t, struct ltxjob *j)
{
	t->queued = true;
	db_tx_apply(db, t);
	if (db->q_tail)
		db->q_tail->next = j;
	else
		db->q_head = j;
	db->q_tail = j;
	db->q_bytes += j->n * j->h.page_size;
	db->q_unsynced = true;
}

/*
 * Turn a set of page images (sorted, unique) plus a new size into the next
 * LTX file. Pages whose checksum is unchanged are left out. Returns 1 with
 * *t prepared, 0 if nothing changed (no file), or -errno (no file left).
 * With snapshot, every page 1..commit must be present and a snapshot LTX
 * (MinTXID 1) is written. With ret_job, a small transaction's file is not
 * written: *ret_job holds it for the queue (t->path stays empty).
 */
static int db_tx_prepare(struct db *db, struct txpage *pages, size_t n, uint32_t commit,
			 const struct page_src *src, const struct walinfo *wi, bool snapshot,
			 bool sync, struct txrec *t, struct ltxjob **ret_job)
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
static int db_commit_pages(struct db *db, struct txpage *pages, size_t n, uint32_t commit,
			   const struct page_src *src, const struct walinfo *wi, bool snapshot,
			   bool sync, bool *ret_written)
{
	struct txrec t;
	int r = db_tx_prepare(db, pages, n, commit, src, wi, snapshot, sync, &t, NULL);
	*ret_written = r == 1;
	if (r == 1)
		db_tx_apply(db, &t);
	return r < 0 ? r : 0;
}

/* Page source: the database file. */
static int src_dbfile(void *ctx, const struct txpage *p, uint8_t *buf)
{
	return read_db_page(ctx, p->pgno, buf);
}

/* Write an LTX "deleted" file (commit 0). */
static int db_commit_drop(struct db *db)
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
	if (db->pgck)
		memset(db->pgck, 0, ((size_t)db->pgck_cap + 1) * sizeof(*db->pgck));
	db->page_count = 0;
	db->xsum = 0;
	db->pos.txid = h.max_txid;
	db->pos.checksum = LTX_CHECKSUM_FLAG;
	db->pos.timestamp = h.timestamp;
	db->last_epoch = epoch;
	if (db->opt.on_change)
		db->opt.on_change(db->opt.change_ctx);
	return 0;
}

/* Snapshot of the database file's current content as the next TXID. */
static int db_commit_snapshot_from_file(struct db *db, uint32_t count, bool sync)
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

/*
 * Rollback-mode commit point. Reads the database header to learn the new
 * size, builds the transaction from the dirty pages plus any page past the old
 * end, and writes the LTX file if anything changed.
 */
/*
 * Build the LTX file of the open rollback-journal transaction from its dirty
 * pages (db->mu held). Returns 1 with *t prepared (file written, with sync
 * made durable), 0 when there is nothing to commit, 2 when the transaction
 * needs a snapshot (*count set, nothing built), or -errno.
 */
static int db_journal_build(struct db *db, bool sync, struct txrec *t, uint32_t *count)
{
	uint8_t hdr[SQLITE_HEADER_SIZE];
	struct sqlite_dbheader dh;
	struct stat st;
	struct txpage *pages = NULL;
	size_t n = 0;
	int r = 0;

	if (db->n_dirty == 0 && !db->dirty_all)
		return 0;
	if (fstat(db->dbfd, &st) < 0)
		return -errno;
	ssize_t got = fs_pread_full(db->dbfd, hdr, sizeof(hdr), 0);
	if (got < 0)
		return (int)got;
	if (got < (ssize_t)sizeof(hdr) || sqlite_dbheader_parse(&dh, hdr, sizeof(hdr)) < 0) {
		if (st.st_size == 0 && db->page_count == 0)
			return 0; /* still empty */
		log_error("db '%s': database file has no valid SQLite header at commit", db->name);
		return -EIO;
	}
	*count =
	    dh.page_count_valid ? dh.page_count : (uint32_t)((uint64_t)st.st_size / dh.page_size);
	if (db->pos.txid == 0 || (db->page_size && dh.page_size != db->page_size) ||
	    db->dirty_all) {
		db->page_size = dh.page_size;
		return 2;
	}
	size_t cap = db->n_dirty + (*count > db->page_count ? *count - db->page_count : 0);
	pages = calloc(cap ? cap : 1, sizeof(*pages));
	if (!pages)
		return -ENOMEM;
	for (size_t i = 0; i < db->n_dirty; i++)
		if (db->dirty[i] <= db->page_count) /* new pages are added below */
			pages[n++].pgno = db->dirty[i];
	for (uint32_t pg = db->page_count + 1; pg <= *count; pg++)
		pages[n++].pgno = pg;
	n = txpages_normalize(pages, n);
	struct page_src src = {src_dbfile, db};
	r = db_tx_prepare(db, pages, n, *count, &src, NULL, false, sync, t, NULL);
	free(pages);
	return r;
}

/*
 * LTX RING (src/ltxring.c). A prepared file's durability comes from a copy in
 * the database's ring, fdatasynced while SQLite fsyncs the database: an
 * overwrite of allocated blocks, where an fdatasync of the new file would make
 * ext4 commit its journal. The file itself is written without sync and made
 * durable by the next db_sync_ltx, which always runs before the ring wraps, so
 * every record that can be overwritten stands for a durable file. Start-up
 * recovery writes the files of records that follow the newest intact LTX file
 * (db_ring_recover). Rules that keep a record from replaying a commit that
 * did not happen:
 *   - a dropped prepared commit's record is zeroed and the ring fdatasynced
 *     before SQLite can roll the transaction back (db_prep_drop);
 *   - before this node applies another node's LTX file, every file is synced
 *     and the ring starts a new epoch, so none of its records count
 *     (db_ring_retire): they could chain from a shared ancestor;
 *   - after start-up recovery the same happens.
 * LTX files over LTX_RING_MAX_LTX are fdatasynced as files, and so are files
 * built outside the prepared path; while the ring holds records, syncfs runs
 * first (db_sync_ring_covered), so that no durable file follows one
 * that only a record protects: recovery discards every file after a damaged
 * one. It also repairs a damaged file from its record first (ring_repair).
 * A ring that cannot be created or reset is not used again (ring_failed).
 */

/* db->mu held. Ring failures fall back to fsyncing the file; say so once. */
static void db_ring_warn(struct db *db, const char *what, int err)
{
	if (db->ring_warned)
		return;
	db->ring_warned = true;
	log_warn("db '%s': LTX ring: %s: %s; prepared LTX files are fsynced instead", db->name,
		 what, strerror(-err));
}

/*
 * db->mu held: put a copy of the prepared file t into the ring. Returns 0
 * with db->prep_ring_off set, or 1 when the file must be synced itself.
 */
static int db_ring_put(struct db *db, const struct txrec *t)
{
	char *buf = NULL;
	size_t len = 0;
	int r;

	if (db->ring_failed)
		return 1;
	if (!db->ring) {
		char path[4096];
		bool created = false;
		r = fs_path(path, sizeof(path), "%s/" RING_NAME, db->dir);
		if (r == 0)
			r = ltx_ring_open(&db->ring, path, true, &created);
		if (r == 0 && !created)
			r = ltx_ring_reset(db->ring); /* only recovery reads old records */
		if (r < 0) {
			ltx_ring_free(db->ring);
			db->ring = NULL;
			db->ring_failed = true; /* not tried again on every commit */
			db_ring_warn(db, "cannot create or open it", r);
			return 1;
		}
	}
	r = fs_read_file(t->path, LTX_RING_MAX_LTX, &buf, &len);
	if (r == -EFBIG) {
		r = 1; /* a big transaction: its own fdatasync is cheap beside its writes */
		goto out;
	}
	if (r < 0)
		goto out;
	if (!ltx_ring_fits(db->ring, len)) {
		/* every file an old record stands for becomes durable first */
		r = db_sync_ltx(db);
		if (r < 0)
			goto out;
		ltx_ring_wrap(db->ring);
	}
	r = ltx_ring_append(db->ring, t->txid, buf, len, &db->prep_ring_off);
	if (r == -ESTALE)
		db->ring_failed = true; /* a reset failed */
	if (r == 0) {
		db->ring_dirty = true;
		db->st_ring_records++;
	}
out:
	if (r < 0)
		db_ring_warn(db, "cannot write a record", r);
	free(buf);
	return r == 0 ? 0 : 1;
}

/*
 * db->mu held: make every LTX file durable, then start a new epoch so that
 * no record of the ring counts any more.
 */
static int db_ring_retire(struct db *db)
{
	if (!db->ring || !db->ring_dirty)
		return 0;
	int r = db_sync_ltx(db);
	if (r == 0)
		r = ltx_ring_reset(db->ring);
	if (r == 0)
		db->ring_dirty = false;
	else
		db->ring_failed = true;
	return r;
}

/*
 * PREPARED COMMITS. In a rollback mode SQLite fsyncs the database file just
 * before the commit point, once every page of the transaction is in it.
 * db_fsync builds the LTX file right then and fdatasyncs it on the syncer
 * thread while the application's fsync runs, so the durable LTX costs no
 * extra flush in sequence. The commit point uses the prepared file if no
 * write reached the database or journal since (write_gen), the position is
 * unchanged and the fence still grants the same epoch; otherwise the file
 * is removed and the transaction is built afresh.
 */
static void db_prep_drop(struct db *db)
{
	if (!db->prep)
		return;
	bool synced = db->prep_synced, in_ring = db->prep_in_ring;
	/*
	 * Its record goes first, durably: recovery would otherwise write the
	 * file again and roll forward a transaction SQLite rolls back. If that
	 * fails, no record of this epoch may count any more.
	 */
	if (in_ring && db->ring) {
		int r = ltx_ring_cancel(db->ring, db->prep_ring_off);
		if (r == 0)
			r = ltx_ring_sync(db->ring);
		if (r < 0 && (r = db_ring_retire(db)) < 0) {
			/* A restart could replay it: take no more writes, say why. */
			log_error(
			    "db '%s': cannot cancel the LTX ring record of a dropped prepared "
			    "commit (TXID %016" PRIx64 "): %s; refusing writes",
			    db->name, db->prep->txid, strerror(-r));
			if (!db->sticky_err)
				db->sticky_err = -EIO;
		}
	}
	db_tx_abort(db->prep);
	free(db->prep);
	db->prep = NULL;
	db->prep_synced = false;
	db->prep_in_ring = false;
	/*
	 * A durable prepared file whose removal is not durable would come back
	 * after a power loss, and recovery (step 5) would roll its transaction
	 * forward although SQLite rolled it back. Rare: only a commit that
	 * fails or changes after SQLite's database fsync drops a prepared file.
	 * A file whose copy was in the ring was not fsynced, but another
	 * database's syncfs may have made it durable.
	 */
	if ((synced || in_ring) && db->ltx_dirfd >= 0 && fsync(db->ltx_dirfd) < 0)
		log_warn("db '%s': cannot make the removal of a dropped prepared LTX file "
			 "durable: %s",
			 db->name, strerror(errno));
}

static bool db_prep_usable(struct db *db)
{
	uint64_t epoch;
	if (!db->prep || !db->prep_synced || db->prep_gen != db->write_gen ||
	    db->pos.txid + 1 != db->prep->txid || db->prep_pre != db_cur_checksum(db))
		return false;
	if (db_fence(db, &epoch) < 0 || epoch != db->prep->epoch)
		return false;
	return true;
}

static int db_journal_commit(struct db *db)
{
	struct txrec t;
	uint32_t count = 0;
	int r;

	if (db_prep_usable(db)) {
		db->st_prep_used++;
		db_tx_apply(db, db->prep);
		free(db->prep);
		db->prep = NULL;
		db->prep_synced = false;
		db->prep_in_ring = false;
		dirty_clear(db);
		return 0;
	}
	db_prep_drop(db);
	r = db_journal_build(db, db->tx_synced, &t, &count);
	if (r == 2)
		r = db_commit_snapshot_from_file(db, count, db->tx_synced);
	else if (r == 1)
		db_tx_apply(db, &t);
	if (r >= 0) {
		dirty_clear(db);
		r = 0;
	}
	return r;
}

/* ----------------------------------------------------------------- WAL */

/* A pending write that is not in the file yet but must be seen by reads. */
struct overlay {
	const uint8_t *buf;
	size_t n;
	off_t off;
};

struct walsrc {
	struct db *db;
	int fd;
	const struct overlay *ov;
};

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
static int wal_read(int fd, const struct overlay *ov, void *dst, size_t len, off_t off)
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

/*
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
 */
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

static int src_wal(void *ctx, const struct txpage *p, uint8_t *buf)
{
	struct walsrc *s = ctx;
	return wal_read(s->fd, s->ov, buf, s->db->page_size,
			(off_t)p->where + WAL_FRAME_HEADER_SIZE);
}

struct wal_tx {
	uint64_t start, end;
	uint32_t commit;
	uint32_t s1, s2;
	struct txpage *pages;
	size_t n, cap;
};

/*
 * Find the first complete, valid transaction starting at offset start with
 * checksum state (s1, s2). Returns 1 and fills tx, 0 if there is none (yet),
 * or -errno.
 */
static int wal_scan_tx(const struct wal_header *wh, int fd, const struct overlay *ov,
		       uint64_t start, uint32_t s1, uint32_t s2, struct wal_tx *tx)
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

static void db_wal_reset(struct db *db)
{
	db->wal_valid = false;
	db->wal_end = 0;
	db->wt_len = 0;
}

static int db_wal_write(struct db *db, int fd, const uint8_t *buf, size_t n, off_t off)
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

/* ------------------------------------------------------------ public ops */

const char *db_name(const struct db *db)
{
	return db->name;
}

void db_set_index(struct db *db, size_t idx)
{
	db->idx = idx;
}

size_t db_index(const struct db *db)
{
	return db->idx;
}

void db_get_pos(struct db *db, struct db_pos *ret)
{
	db_lock_settled(db);
	*ret = db->pos;
	pthread_mutex_unlock(&db->mu);
}

void db_format_pos(const struct db_pos *pos, char buf[35])
{
	snprintf(buf, 35, "%016" PRIx64 "/%016" PRIx64 "\n", pos->txid, pos->checksum);
}

bool db_exists(struct db *db)
{
	pthread_mutex_lock(&db->mu);
	bool e = db->exists;
	pthread_mutex_unlock(&db->mu);
	return e;
}

uint64_t db_checksum(struct db *db)
{
	db_lock_settled(db);
	uint64_t c = db_cur_checksum(db);
	pthread_mutex_unlock(&db->mu);
	return c;
}

int db_stat_file(struct db *db, enum db_file kind, struct stat *st)
{
	char path[4096];
	if (kind == DB_FILE_DB && !db_exists(db))
		return -ENOENT;
	int r = db_file_path(db, kind, path, sizeof(path));
	if (r < 0)
		return r;
	return stat(path, st) < 0 ? -errno : 0;
}

static int open_backing(struct db *db, enum db_file kind, int flags, mode_t mode, int *ret_fd)
{
	char path[4096];
	int r = db_file_path(db, kind, path, sizeof(path));
	if (r < 0)
		return r;
	int fd = open(path, flags | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	*ret_fd = fd;
	return 0;
}

int db_open_file(struct db *db, enum db_file kind, int flags, mode_t mode, int *ret_fd)
{
	int r = 0;
	pthread_mutex_lock(&db->mu);
	switch (kind) {
	case DB_FILE_DB:
		if (!db->exists) {
			if (!(flags & O_CREAT)) {
				r = -ENOENT;
				break;
			}
			r = open_backing(db, DB_FILE_DB, O_RDWR | O_CREAT, 0644, &db->dbfd);
			if (r < 0)
				break;
			db->exists = true;
		} else if ((flags & O_CREAT) && (flags & O_EXCL)) {
			r = -EEXIST;
			break;
		}
		if (flags & O_TRUNC) {
			struct stat st;
			if (fstat(db->dbfd, &st) < 0) {
				r = -errno;
				break;
			}
			if (st.st_size != 0) {
				r = -EPERM; /* truncating a live database is not a transaction */
				break;
			}
			flags &= ~O_TRUNC; /* a no-op on an empty file */
		}
		r = open_backing(db, kind, flags & ~(O_CREAT | O_EXCL), mode, ret_fd);
		break;
	case DB_FILE_JOURNAL:
	case DB_FILE_WAL:
	case DB_FILE_SHM:
		if (!db->exists) {
			r = -ENOENT;
			break;
		}
		if ((flags & O_TRUNC) && kind == DB_FILE_JOURNAL) {
			r = db_journal_commit(db);
			if (r < 0)
				break;
			db->journal_active = false;
		}
		if ((flags & O_TRUNC) && kind == DB_FILE_WAL) {
			r = db_sync_ltx(db);
			if (r < 0)
				break;
			db_wal_reset(db);
			db->wal_live = false;
		}
		r = open_backing(db, kind, flags, mode, ret_fd);
		if (r < 0)
			break;
		if (kind == DB_FILE_JOURNAL)
			db->journal_exists = true;
		else if (kind == DB_FILE_WAL) {
			struct stat st;
			db->wal_exists = true;
			if (fstat(*ret_fd, &st) == 0) {
				db->wal_size = db->wal_gen_end = (uint64_t)st.st_size;
				db->wal_live = st.st_size > 0;
			}
		}
		break;
	default:
		r = -EINVAL;
	}
	pthread_mutex_unlock(&db->mu);
	return r;
}

int db_write(struct db *db, enum db_file kind, int fd, const void *buf, size_t n, off_t off)
{
	int r = 0;
	if ((unsigned)kind < DB_FILE_N)
		__atomic_add_fetch(&db->st_writes[kind], 1, __ATOMIC_RELAXED);
	if (kind == DB_FILE_SHM)
		return fs_pwrite_full(fd, buf, n, off);
	pthread_mutex_lock(&db->mu);
	if (db->sticky_err) {
		r = db->sticky_err;
		pthread_mutex_unlock(&db->mu);
		return r;
	}
	if (db->q_err && (r = db_queue_settle(db)) < 0) {
		pthread_mutex_unlock(&db->mu);
		return r;
	}
	switch (kind) {
	case DB_FILE_DB:
		if (!db->journal_active && !db->wal_live) {
			r = -EPERM;
			break;
		}
		/*
		 * Every database write is recorded, whatever the journal mode: a
		 * checkpoint's writes change nothing committed, so at the next
		 * rollback-mode commit point they compare equal.
		 */
		db->write_gen++;
		{
			if (db->page_size == 0 && off == 0 && n >= SQLITE_HEADER_SIZE) {
				struct sqlite_dbheader dh;
				if (sqlite_dbheader_parse(&dh, buf, n) == 0)
					db->page_size = dh.page_size;
			}
			if (db->page_size == 0) {
				db->dirty_all = true;
			} else {
				uint64_t first = (uint64_t)off / db->page_size + 1;
				uint64_t lastp = ((uint64_t)off + n - 1) / db->page_size + 1;
				for (uint64_t p = first; p <= lastp && r == 0 && n > 0; p++)
					r = p > UINT32_MAX ? -EFBIG : dirty_add(db, (uint32_t)p);
				if (r < 0)
					break;
			}
		}
		r = fs_pwrite_full(fd, buf, n, off);
		break;
	case DB_FILE_JOURNAL:
		if (off == 0 && n >= 8 && memcmp(buf, journal_magic, 8) != 0) {
			/* PERSIST mode (and exclusive locking): header zeroed. This
			 * write is the commit point, so it is counted after the
			 * prepared commit was checked (PREPARED COMMITS). */
			r = db_journal_commit(db);
			if (r < 0)
				break;
			db->journal_active = false;
		}
		db->write_gen++;
		r = fs_pwrite_full(fd, buf, n, off);
		if (r == 0 && off == 0 && n >= 8 && memcmp(buf, journal_magic, 8) == 0)
			db->journal_active = true;
		break;
	case DB_FILE_WAL:
		if (db->q_unsynced) { /* no fsync between that commit and this write */
			db->q_unsynced = false;
			db->q_sync_streak = 0;
		}
		r = db_wal_write(db, fd, buf, n, off);
		if (r == 0 && n > 0) {
			db->wal_live = true;
			if ((uint64_t)off + n > db->wal_size)
				db->wal_size = (uint64_t)off + n;
			if ((uint64_t)off + n > db->wal_gen_end)
				db->wal_gen_end = (uint64_t)off + n;
		}
		break;
	default:
		r = -EINVAL;
	}
	pthread_mutex_unlock(&db->mu);
	return r;
}

int db_truncate(struct db *db, enum db_file kind, int fd, off_t size)
{
	char path[4096];
	int r = 0;
	if (kind >= DB_FILE_POS)
		return -EPERM;
	pthread_mutex_lock(&db->mu);
	if (db->sticky_err && kind != DB_FILE_SHM) {
		r = db->sticky_err;
		goto out;
	}
	if (kind == DB_FILE_DB && !db->exists) {
		r = -ENOENT;
		goto out;
	}
	/*
	 * Outside a journal, SQLite truncates the database only after a commit
	 * that shrank it (pager_end_transaction: the file is larger than the
	 * image): that removes nothing committed, so it is allowed.
	 */
	if (kind == DB_FILE_DB && !db->journal_active && !db->wal_live &&
	    (uint64_t)size < (uint64_t)db->page_count * db->page_size) {
		r = -EPERM;
		goto out;
	}
	if (kind == DB_FILE_JOURNAL && size == 0) {
		r = db_journal_commit(db);
		if (r < 0)
			goto out;
		db->journal_active = false;
	}
	if (kind == DB_FILE_WAL) {
		r = db_sync_ltx(db);
		if (r < 0)
			goto out;
		if ((uint64_t)size < db->wal_end || size == 0)
			db_wal_reset(db);
		else if ((uint64_t)size - db->wal_end < db->wt_len)
			db->wt_len = (size_t)((uint64_t)size - db->wal_end);
		if (size == 0)
			db->wal_live = false;
		db->wal_size = (uint64_t)size;
		if (db->wal_gen_end > (uint64_t)size)
			db->wal_gen_end = (uint64_t)size;
	}
	if (kind == DB_FILE_DB || kind == DB_FILE_JOURNAL)
		db->write_gen++;
	if (fd >= 0) {
		if (ftruncate(fd, size) < 0)
			r = -errno;
	} else {
		r = db_file_path(db, kind, path, sizeof(path));
		if (r == 0 && truncate(path, size) < 0)
			r = -errno;
	}
out:
	pthread_mutex_unlock(&db->mu);
	return r;
}

int db_unlink(struct db *db, enum db_file kind)
{
	char path[4096];
	int r = 0;
	pthread_mutex_lock(&db->mu);
	switch (kind) {
	case DB_FILE_JOURNAL:
		r = db_journal_commit(db);
		if (r < 0)
			break;
		r = db_file_path(db, kind, path, sizeof(path));
		if (r == 0 && unlink(path) < 0)
			r = -errno;
		if (r == 0 || r == -ENOENT)
			db->journal_exists = db->journal_active = false;
		break;
	case DB_FILE_WAL:
		r = db_sync_ltx(db);
		if (r < 0)
			break;
		r = db_file_path(db, kind, path, sizeof(path));
		if (r == 0 && unlink(path) < 0)
			r = -errno;
		if (r == 0 || r == -ENOENT) {
			db->wal_exists = db->wal_live = false;
			db->wal_size = db->wal_gen_end = 0;
			db_wal_reset(db);
		}
		break;
	case DB_FILE_SHM:
		r = db_file_path(db, kind, path, sizeof(path));
		if (r == 0 && unlink(path) < 0)
			r = -errno;
		break;
	case DB_FILE_DB:
		if (!db->exists) {
			r = -ENOENT;
			break;
		}
		r = db_sync_ltx(db);
		if (r == 0)
			r = db_commit_drop(db);
		if (r < 0)
			break;
		for (int k = DB_FILE_DB; k <= DB_FILE_SHM; k++) {
			if (db_file_path(db, k, path, sizeof(path)) == 0)
				fs_unlink_if_exists(path);
		}
		if (db->dbfd >= 0)
			close(db->dbfd);
		db->dbfd = -1;
		db->exists = false;
		db->journal_exists = db->journal_active = db->wal_exists = db->wal_live = false;
		db_wal_reset(db);
		dirty_clear(db);
		fs_fsync_dir(db->dir);
		break;
	default:
		r = -EPERM;
	}
	pthread_mutex_unlock(&db->mu);
	return r;
}

/*
 * The syncer: one thread per database, started on first use, that makes a
 * prepared LTX file durable while the application's own fsync runs.
 */
struct syncer {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int fd;	    /* to sync; -1 when idle */
	int result; /* of the last sync */
	bool done, stop;
	bool dirsync; /* then fsync dirfd too (this job's) */
	int dirfd;    /* the database's ltx/ (db->ltx_dirfd, which outlives the syncer) */
};

static void *syncer_run(void *arg)
{
	struct syncer *sy = arg;
	pthread_mutex_lock(&sy->mu);
	for (;;) {
		while (sy->fd < 0 && !sy->stop)
			pthread_cond_wait(&sy->cv, &sy->mu);
		if (sy->fd < 0)
			break;
		int fd = sy->fd;
		bool dirsync = sy->dirsync;
		pthread_mutex_unlock(&sy->mu);
		int r = fdatasync(fd) < 0 ? -errno : 0;
		if (r == 0 && dirsync && fsync(sy->dirfd) < 0)
			r = -errno;
		pthread_mutex_lock(&sy->mu);
		sy->fd = -1;
		sy->result = r;
		sy->done = true;
		pthread_cond_broadcast(&sy->cv);
	}
	pthread_mutex_unlock(&sy->mu);
	return NULL;
}

static void syncer_free(struct syncer *sy)
{
	if (!sy)
		return;
	pthread_mutex_lock(&sy->mu);
	sy->stop = true;
	pthread_cond_broadcast(&sy->cv);
	pthread_mutex_unlock(&sy->mu);
	pthread_join(sy->th, NULL);
	pthread_mutex_destroy(&sy->mu);
	pthread_cond_destroy(&sy->cv);
	free(sy);
}

/* db->mu held. */
static struct syncer *db_syncer(struct db *db)
{
	if (db->syncer)
		return db->syncer;
	struct syncer *sy = calloc(1, sizeof(*sy));
	if (!sy)
		return NULL;
	sy->fd = -1;
	sy->dirfd = db->ltx_dirfd;
	pthread_mutex_init(&sy->mu, NULL);
	pthread_cond_init(&sy->cv, NULL);
	if (pthread_create(&sy->th, NULL, syncer_run, sy) != 0) {
		pthread_mutex_destroy(&sy->mu);
		pthread_cond_destroy(&sy->cv);
		free(sy);
		return NULL;
	}
	db->syncer = sy;
	return sy;
}

static void syncer_start(struct syncer *sy, int fd, bool dirsync)
{
	pthread_mutex_lock(&sy->mu);
	sy->fd = fd;
	sy->dirsync = dirsync;
	sy->done = false;
	pthread_cond_broadcast(&sy->cv);
	pthread_mutex_unlock(&sy->mu);
}

static int syncer_wait(struct syncer *sy)
{
	pthread_mutex_lock(&sy->mu);
	while (!sy->done)
		pthread_cond_wait(&sy->cv, &sy->mu);
	int r = sy->result;
	pthread_mutex_unlock(&sy->mu);
	return r;
}

/*
 * db->mu held, at an fsync of the database file: build the open
 * transaction's LTX file (PREPARED COMMITS). Returns a descriptor to
 * fdatasync, of the ring holding a copy of the file or else of the file
 * (*dirsync then says whether ltx/ needs an fsync too), or -1 when there is
 * nothing to prepare.
 */
static int db_prep_build(struct db *db, bool *dirsync)
{
	struct txrec *t;
	uint32_t count;
	if (!db->journal_active || db->prep || db->sticky_err || !db->live)
		return -1;
	t = malloc(sizeof(*t));
	if (!t)
		return -1;
	uint64_t pre = db_cur_checksum(db);
	int r = db_journal_build(db, false, t, &count);
	if (r != 1) {
		free(t);
		return -1; /* nothing to commit, a snapshot, or an error the commit reports */
	}
	bool in_ring = db_ring_put(db, t) == 0;
	int fd = in_ring ? fcntl(ltx_ring_fd(db->ring), F_DUPFD_CLOEXEC, 0)
			 : open(t->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (in_ring && (ltx_ring_cancel(db->ring, db->prep_ring_off) < 0 ||
				ltx_ring_sync(db->ring) < 0))
			db_ring_retire(db); /* writeback may have stored it */
		db_tx_abort(t);
		free(t);
		return -1;
	}
	if (!in_ring && db_sync_ring_covered(db) < 0) {
		close(fd);
		db_tx_abort(t);
		free(t);
		return -1;
	}
	*dirsync = !in_ring && db->dirsync;
	db->prep = t;
	db->prep_in_ring = in_ring;
	db->prep_synced = false;
	db->prep_gen = db->write_gen;
	db->prep_pre = pre;
	return fd;
}

int db_fsync(struct db *db, enum db_file kind, int fd, bool datasync)
{
	struct syncer *sy = NULL;
	int pfd = -1, pr = 0;
	bool dirsync = false;
	if (kind == DB_FILE_SHM)
		return (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? -errno : 0;
	pthread_mutex_lock(&db->mu);
	if (kind == DB_FILE_DB) {
		if (db->prep && db->prep_gen != db->write_gen)
			db_prep_drop(db); /* written to since: build it again */
		if (db->journal_active && !db->prep && (sy = db_syncer(db)) != NULL)
			pfd = db_prep_build(db, &dirsync);
	} else if (kind == DB_FILE_WAL) {
		if (db->q_unsynced) /* synchronous=FULL: an fsync follows each commit */
			db->q_sync_streak++;
		db->q_unsynced = false;
	}
	pthread_mutex_unlock(&db->mu);
	if (pfd >= 0)
		syncer_start(sy, pfd, dirsync);
	int r = (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? -errno : 0;
	if (pfd >= 0) {
		pr = syncer_wait(sy);
		close(pfd);
	}
	if (kind == DB_FILE_WAL)
		return r;
	pthread_mutex_lock(&db->mu);
	if (pfd >= 0 && pr < 0) {
		if (db->prep) /* it may be durable even so: the drop fsyncs ltx/ */
			db->prep_synced = true;
		db_prep_drop(db); /* the commit point builds and syncs it again */
	} else if (pfd >= 0 && db->prep)
		db->prep_synced = true;
	if (r == 0 && db->journal_active)
		db->tx_synced = true;
	pthread_mutex_unlock(&db->mu);
	return r;
}

int db_enforce_retention(struct db *db, int64_t cutoff_ms, uint64_t keep_after)
{
	struct db_pos pos;
	db_get_pos(db, &pos); /* a prepared commit's file is newer than the newest commit */
	DIR *d = opendir(db->ltx_dir);
	struct dirent *de;
	uint64_t newest = 0;
	int n = 0;
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d))) {
		uint64_t mn, mx;
		if (ltx_parse_filename(de->d_name, &mn, &mx) == 0 && mx > newest)
			newest = mx;
	}
	rewinddir(d);
	while ((de = readdir(d))) {
		uint64_t mn, mx;
		struct stat st;
		if (ltx_parse_filename(de->d_name, &mn, &mx) < 0 || mx == newest ||
		    mx > keep_after || mx >= pos.txid)
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, 0) < 0)
			continue;
		int64_t mtime = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
		if (mtime >= cutoff_ms)
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) == 0)
			n++;
	}
	closedir(d);
	__atomic_add_fetch(&db->st_removed, (uint64_t)n, __ATOMIC_RELAXED);
	return n;
}

/* ------------------------------------------------------------- recovery */

/* Checksum every page of the database file into db->pgck (parallel for big files). */
struct ckjob {
	struct db *db;
	uint32_t first, last; /* inclusive */
	uint64_t x;
	int r;
};

static void *ckjob_run(void *arg)
{
	struct ckjob *j = arg;
	struct db *db = j->db;
	uint32_t lock = ltx_lock_pgno(db->page_size);
	size_t chunk_pages = (1u << 20) / db->page_size;
	if (chunk_pages == 0)
		chunk_pages = 1;
	uint8_t *buf = malloc(chunk_pages * db->page_size);
	if (!buf) {
		j->r = -ENOMEM;
		return NULL;
	}
	for (uint32_t pg = j->first; pg <= j->last && j->r == 0;) {
		size_t cnt = j->last - pg + 1 < chunk_pages ? j->last - pg + 1 : chunk_pages;
		ssize_t got = fs_pread_full(db->dbfd, buf, cnt * db->page_size,
					    (off_t)(pg - 1) * db->page_size);
		if (got < 0) {
			j->r = (int)got;
			break;
		}
		if ((size_t)got < cnt * db->page_size)
			memset(buf + got, 0, cnt * db->page_size - (size_t)got);
		for (size_t i = 0; i < cnt; i++, pg++) {
			if (pg == lock) {
				db->pgck[pg] = 0;
				continue;
			}
			uint64_t c = ltx_page_checksum(pg, buf + i * db->page_size, db->page_size);
			db->pgck[pg] = c;
			j->x ^= c;
		}
	}
	free(buf);
	return NULL;
}

static int db_checksum_file(struct db *db, uint32_t count)
{
	int r = pgck_reserve(db, count);
	if (r < 0)
		return r;
	memset(db->pgck, 0, ((size_t)db->pgck_cap + 1) * sizeof(*db->pgck));
	db->xsum = 0;
	db->page_count = count;
	if (count == 0)
		return 0;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int nt = (uint64_t)count * db->page_size < (64u << 20) ? 1 : (int)(ncpu > 8 ? 8 : ncpu);
	if (nt < 1)
		nt = 1;
	struct ckjob jobs[8];
	pthread_t th[8];
	uint32_t per = count / (uint32_t)nt;
	bool started[8] = {false};
	for (int i = 0; i < nt; i++) {
		jobs[i] = (struct ckjob){db, 1 + (uint32_t)i * per,
					 i == nt - 1 ? count : (uint32_t)(i + 1) * per, 0, 0};
		if (nt > 1 && pthread_create(&th[i], NULL, ckjob_run, &jobs[i]) == 0)
			started[i] = true;
	}
	for (int i = 0; i < nt; i++) {
		if (started[i])
			pthread_join(th[i], NULL);
		else
			ckjob_run(&jobs[i]); /* single-threaded, or no thread available */
	}
	for (int i = 0; i < nt; i++) {
		if (jobs[i].r < 0)
			r = jobs[i].r;
		db->xsum ^= jobs[i].x;
	}
	return r;
}

static int db_file_page_count(struct db *db, uint32_t *ret)
{
	uint8_t hdr[SQLITE_HEADER_SIZE];
	struct sqlite_dbheader dh;
	struct stat st;
	*ret = 0;
	if (fstat(db->dbfd, &st) < 0)
		return -errno;
	if (st.st_size == 0)
		return 0;
	ssize_t got = fs_pread_full(db->dbfd, hdr, sizeof(hdr), 0);
	if (got < 0)
		return (int)got;
	if (got < (ssize_t)sizeof(hdr) || sqlite_dbheader_parse(&dh, hdr, sizeof(hdr)) < 0)
		return -EBADMSG;
	db->page_size = dh.page_size;
	*ret =
	    dh.page_count_valid ? dh.page_count : (uint32_t)((uint64_t)st.st_size / dh.page_size);
	return 0;
}

/* Delete torn LTX files from the top; set db->pos from the newest good one. */
/*
 * After a clean shutdown every LTX file was synced, and the checksum cache
 * names the position. Then the newest file needs only its header and trailer
 * checked against the cache: decoding a large one (the file of a 1 GB
 * transaction) would dominate start-up. Returns 0 when trusted.
 */
static int ckfile_path(struct db *db, char *buf, size_t n);

static int ltx_check_clean(struct db *db, int fd, struct ltx_header *h, struct ltx_trailer *t)
{
	char path[4096];
	uint8_t ck[40], hb[LTX_HEADER_SIZE], tb[LTX_TRAILER_SIZE];
	struct stat st;
	if (ckfile_path(db, path, sizeof(path)) < 0)
		return -ENOENT;
	int cfd = open(path, O_RDONLY | O_CLOEXEC);
	if (cfd < 0)
		return -ENOENT;
	ssize_t got = fs_pread_full(cfd, ck, sizeof(ck), 0);
	close(cfd);
	if (got != (ssize_t)sizeof(ck) || memcmp(ck, CKFILE_MAGIC, 8) != 0)
		return -EINVAL;
	uint64_t txid, post;
	memcpy(&txid, ck + 16, 8);
	memcpy(&post, ck + 24, 8);
	if (fstat(fd, &st) < 0 || st.st_size < LTX_HEADER_SIZE + LTX_TRAILER_SIZE ||
	    fs_pread_full(fd, hb, sizeof(hb), 0) != (ssize_t)sizeof(hb) ||
	    fs_pread_full(fd, tb, sizeof(tb), st.st_size - LTX_TRAILER_SIZE) != (ssize_t)sizeof(tb))
		return -EINVAL;
	if (ltx_header_decode(h, hb) < 0 || h->max_txid != txid)
		return -EINVAL;
	t->post_apply_checksum = (uint64_t)tb[0] << 56 | (uint64_t)tb[1] << 48 |
				 (uint64_t)tb[2] << 40 | (uint64_t)tb[3] << 32 |
				 (uint64_t)tb[4] << 24 | (uint64_t)tb[5] << 16 |
				 (uint64_t)tb[6] << 8 | tb[7];
	t->file_checksum = 0;
	return t->post_apply_checksum == post ? 0 : -EINVAL;
}

/*
 * LTX RING at start-up. The records of the ring's epoch are loaded before step
 * 1: a file that step 1 finds torn, or out of the chain, is written again from its
 * record when one chains (ring_repair), so that a durable file after it is
 * not discarded with it. Step 1b (db_ring_recover) then restores the records
 * that follow the newest file, syncs every LTX file and starts a new epoch.
 */
struct ring_recs {
	struct ltx_ring_record *v;
	size_t n, cap;
	uint8_t *img; /* the ring file, which v[].ltx points into */
};

static int ring_collect(void *ctx, const struct ltx_ring_record *rec)
{
	struct ring_recs *rs = ctx;
	if (rs->n == rs->cap) {
		size_t cap = rs->cap ? rs->cap * 2 : 64;
		struct ltx_ring_record *v = realloc(rs->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		rs->v = v;
		rs->cap = cap;
	}
	rs->v[rs->n++] = *rec;
	return 0;
}

static void ring_recs_release(struct ring_recs *rs)
{
	free(rs->v);
	free(rs->img);
	memset(rs, 0, sizeof(*rs));
}

/* The record for txid with the highest sequence number, or NULL. */
static const struct ltx_ring_record *ring_find(const struct ring_recs *rs, uint64_t txid)
{
	const struct ltx_ring_record *best = NULL;
	for (size_t i = 0; rs && i < rs->n; i++)
		if (rs->v[i].txid == txid && (!best || rs->v[i].seq > best->seq))
			best = &rs->v[i];
	return best;
}

/* Open the ring, if there is one, and read its records into *rs. */
static int db_ring_load(struct db *db, struct ring_recs *rs)
{
	char path[4096];
	size_t len = 0;
	int r = fs_path(path, sizeof(path), "%s/" RING_NAME, db->dir);
	if (r < 0)
		return r;
	r = ltx_ring_open(&db->ring, path, false, NULL);
	if (r == -ENOENT)
		return 0;
	if (r == 0)
		r = ltx_ring_load(db->ring, &rs->img, &len);
	if (r == 0)
		r = ltx_ring_scan(rs->img, len, ring_collect, rs);
	if (r == -EBADMSG) {
		/* rewritten at its next use; a reset never leaves records needed */
		log_warn("db '%s': ignoring the LTX ring: its header is damaged", db->name);
		ring_recs_release(rs);
		r = 0;
	}
	return r;
}

/*
 * Write a record as the fdatasynced LTX file of its single TXID, if its
 * header names that TXID, (unless any_pre) its pre-apply checksum is pre,
 * its page size is the database's (when known), and the written file
 * verifies. 1 with h and t filled; 0 when the record does not qualify
 * (nothing left, a warning); -errno.
 */
static int ring_write(struct db *db, const struct ltx_ring_record *rec, bool any_pre, uint64_t pre,
		      struct ltx_header *h, struct ltx_trailer *t)
{
	char name[LTX_FILENAME_LEN + 1];
	const char *why = NULL;
	if (rec->len < LTX_HEADER_SIZE || ltx_header_decode(h, rec->ltx) < 0 ||
	    h->min_txid != rec->txid || h->max_txid != rec->txid)
		why = "its header does not name that single transaction";
	else if (!any_pre && h->pre_apply_checksum != pre)
		why = "its pre-apply checksum does not follow the LTX file before it";
	else if (db->page_size && h->commit > 0 && h->page_size != db->page_size)
		why = "its page size differs";
	if (why) {
		log_warn("db '%s': LTX ring record for TXID %016" PRIx64 " not used: %s", db->name,
			 rec->txid, why);
		return 0;
	}
	ltx_format_filename(name, h->min_txid, h->max_txid);
	int fd = openat(db->ltx_dirfd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	int r = fs_write_full(fd, rec->ltx, rec->len);
	if (r == 0 && fdatasync(fd) < 0)
		r = -errno;
	if (r == 0 && lseek(fd, 0, SEEK_SET) < 0)
		r = -errno;
	int v = r == 0 ? ltx_verify_fd(fd, h, t) : 0;
	close(fd);
	if (r == 0 && v < 0) {
		log_warn("db '%s': LTX ring record for TXID %016" PRIx64 " not used: it does not "
			 "verify (%s)",
			 db->name, rec->txid, strerror(-v));
		unlinkat(db->ltx_dirfd, name, 0);
		return 0;
	}
	if (r < 0)
		unlinkat(db->ltx_dirfd, name, 0);
	return r < 0 ? r : 1;
}

/* Step 1: the file of [mn, mx] is torn or does not link (prev_post, unless
 * any_pre); write it again from the ring if a record qualifies. */
static int ring_repair(struct db *db, const struct ring_recs *rs, uint64_t mn, uint64_t mx,
		       bool any_pre, uint64_t prev_post, struct ltx_header *h,
		       struct ltx_trailer *t)
{
	const struct ltx_ring_record *rec = mn == mx ? ring_find(rs, mx) : NULL;
	if (!rec)
		return 0;
	int r = ring_write(db, rec, any_pre, prev_post, h, t);
	if (r == 1)
		log_warn("db '%s': LTX file of TXID %016" PRIx64 " was torn or broke the chain; "
			 "written again from the LTX ring",
			 db->name, mx);
	return r;
}

/*
 * Step 1b: restore the records that follow the position while they chain,
 * then make every LTX file durable and start a new ring epoch. lh and lt
 * become the newest restored file's.
 */
static int db_ring_recover(struct db *db, const struct ring_recs *rs, struct ltx_header *lh,
			   struct ltx_trailer *lt)
{
	unsigned restored = 0;
	int r = 0;
	if (!db->ring)
		return 0;
	while (db->pos.txid > 0) {
		const struct ltx_ring_record *rec = ring_find(rs, db->pos.txid + 1);
		struct ltx_header h;
		struct ltx_trailer t;
		if (!rec)
			break;
		r = ring_write(db, rec, false, db->pos.checksum, &h, &t);
		if (r <= 0)
			break;
		*lh = h;
		*lt = t;
		db->pos.txid = h.max_txid;
		db->pos.checksum = t.post_apply_checksum;
		db->pos.timestamp = h.timestamp;
		db->last_epoch = h.epoch;
		if (!db->page_size)
			db->page_size = h.page_size;
		restored++;
	}
	if (r < 0)
		return r;
	r = 0;
	if (restored) {
		if (fsync(db->ltx_dirfd) < 0)
			return -errno;
		db->ltx_trusted = false;
		log_warn("db '%s': restored %u LTX file(s) up to TXID %016" PRIx64 " from the LTX "
			 "ring: a crash lost or tore them",
			 db->name, restored, db->pos.txid);
	}
	/* Every LTX file durable: no record is needed any more. */
	if (syncfs(db->ltx_dirfd) < 0)
		return -errno;
	return ltx_ring_reset(db->ring);
}

static int db_recover_ltx(struct db *db, struct ltx_header *last_h, struct ltx_trailer *last_t,
			  bool trust_clean, const struct ring_recs *rs)
{
	DIR *d = opendir(db->ltx_dir);
	struct dirent *de;
	uint64_t *maxes = NULL;
	size_t n = 0, cap = 0;
	int r = 0;
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		uint64_t mn, mx;
		size_t len = strlen(de->d_name);
		if (len > 4 && strcmp(de->d_name + len - 4, ".tmp") == 0) {
			unlinkat(dirfd(d), de->d_name, 0);
			continue;
		}
		if (ltx_parse_filename(de->d_name, &mn, &mx) < 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			uint64_t *m = realloc(maxes, cap * 2 * sizeof(*m));
			if (!m) {
				r = -ENOMEM;
				goto out;
			}
			maxes = m;
		}
		maxes[2 * n] = mx;
		maxes[2 * n + 1] = mn;
		n++;
	}
	/* newest first: sort pairs by max txid */
	for (size_t i = 1; i < n; i++) {
		uint64_t a = maxes[2 * i], b = maxes[2 * i + 1];
		size_t j = i;
		while (j > 0 && maxes[2 * (j - 1)] > a) {
			maxes[2 * j] = maxes[2 * (j - 1)];
			maxes[2 * j + 1] = maxes[2 * (j - 1) + 1];
			j--;
		}
		maxes[2 * j] = a;
		maxes[2 * j + 1] = b;
	}
	memset(&db->pos, 0, sizeof(db->pos));
	db->txid_floor = 0;
	bool clean = false;
	if (trust_clean && n > 0) {
		char name[LTX_FILENAME_LEN + 1], path[4096];
		ltx_format_filename(name, maxes[2 * (n - 1) + 1], maxes[2 * (n - 1)]);
		int fd = fs_path(path, sizeof(path), "%s/%s", db->ltx_dir, name) == 0
			     ? open(path, O_RDONLY | O_CLOEXEC)
			     : -1;
		if (fd >= 0) {
			clean = ltx_check_clean(db, fd, last_h, last_t) == 0;
			close(fd);
		}
	}
	if (!clean) {
		/*
		 * After an unclean stop, files written since the last sync may be
		 * torn anywhere, not only the newest: power loss can keep N+1 and
		 * tear N. Verify the newest files (up to 1024 or 64 MiB) in order,
		 * with their checksum links, and discard from the first bad one up;
		 * the WAL walk then writes them again.
		 */
		size_t lo = n > 1024 ? n - 1024 : 0;
		uint64_t bytes = 0, prev_post = 0;
		for (size_t i = n; i-- > lo;) {
			char name[LTX_FILENAME_LEN + 1], path[4096];
			struct stat st;
			ltx_format_filename(name, maxes[2 * i + 1], maxes[2 * i]);
			if (fs_path(path, sizeof(path), "%s/%s", db->ltx_dir, name) == 0 &&
			    stat(path, &st) == 0)
				bytes += (uint64_t)st.st_size;
			if (bytes > (64u << 20)) {
				lo = i + 1;
				break;
			}
		}
		for (size_t i = lo; i < n; i++) {
			char name[LTX_FILENAME_LEN + 1], path[4096];
			struct ltx_header h;
			struct ltx_trailer t;
			ltx_format_filename(name, maxes[2 * i + 1], maxes[2 * i]);
			if (fs_path(path, sizeof(path), "%s/%s", db->ltx_dir, name) < 0)
				continue;
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0) {
				r = -errno;
				goto out;
			}
			int v = ltx_verify_fd(fd, &h, &t);
			close(fd);
			if (v < 0 && v != -EBADMSG && v != -EPROTO && v != -EINVAL) {
				r = v;
				goto out;
			}
			bool linked = v == 0 && (i == lo || ltx_header_is_snapshot(&h) ||
						 h.pre_apply_checksum == prev_post);
			if (!linked) {
				r = ring_repair(db, rs, maxes[2 * i + 1], maxes[2 * i], i == lo,
						prev_post, &h, &t);
				if (r < 0)
					goto out;
				linked = r == 1;
				r = 0;
			}
			if (!linked) {
				for (size_t k = n; k-- > i;) {
					ltx_format_filename(name, maxes[2 * k + 1], maxes[2 * k]);
					if (fs_path(path, sizeof(path), "%s/%s", db->ltx_dir,
						    name) < 0)
						continue;
					log_warn(
					    "db '%s': discarding LTX file %s: %s", db->name, name,
					    k == i
						? (v < 0
						       ? "it does not verify (torn by a crash)"
						       : "its pre-apply checksum breaks the chain")
						: "it follows a damaged file");
					if (maxes[2 * k] > db->txid_floor)
						db->txid_floor = maxes[2 * k];
					unlink(path);
				}
				n = i;
				break;
			}
			prev_post = t.post_apply_checksum;
		}
	}
	for (size_t i = n; i-- > 0;) {
		char name[LTX_FILENAME_LEN + 1], path[4096];
		ltx_format_filename(name, maxes[2 * i + 1], maxes[2 * i]);
		if (fs_path(path, sizeof(path), "%s/%s", db->ltx_dir, name) < 0)
			continue;
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			r = -errno;
			goto out;
		}
		int v = -EINVAL;
		if (clean && i == n - 1 && ltx_check_clean(db, fd, last_h, last_t) == 0) {
			v = 0;
			db->ltx_trusted = true;
		} else {
			if (lseek(fd, 0, SEEK_SET) < 0)
				v = -errno;
			else
				v = ltx_verify_fd(fd, last_h, last_t);
		}
		close(fd);
		if (v < 0 && v != -EBADMSG && v != -EPROTO && v != -EINVAL) {
			r = v; /* an I/O problem, not a torn file: do not delete anything */
			goto out;
		}
		if (v == 0) {
			db->pos.txid = last_h->max_txid;
			db->pos.checksum = last_t->post_apply_checksum;
			db->pos.timestamp = last_h->timestamp;
			db->last_epoch = last_h->epoch;
			if (!db->page_size)
				db->page_size = last_h->page_size;
			break;
		}
		log_warn("db '%s': discarding LTX file %s that does not verify (%s): torn by a "
			 "crash",
			 db->name, name, strerror(-v));
		if (maxes[2 * i] > db->txid_floor)
			db->txid_floor = maxes[2 * i];
		unlink(path);
	}
out:
	free(maxes);
	closedir(d);
	return r;
}

/*
 * Does the super-journal a journal names still exist? A path inside the mount
 * ("<mount>/<db>-mj<HEX>") lives in our storage as dbs/<db>/mj<HEX>; any other
 * path is a real file elsewhere (a multi-database commit with a database that
 * is not on ltxfs) and is checked where it is.
 */
static bool super_journal_exists(struct db *db, const char *recorded)
{
	const char *mnt = db->opt.mount_dir;
	size_t ml = mnt ? strlen(mnt) : 0;
	if (!(ml && strncmp(recorded, mnt, ml) == 0 && recorded[ml] == '/'))
		return access(recorded, F_OK) == 0;
	const char *base = recorded + ml + 1;
	const char *last = NULL;
	for (const char *mj = strstr(base, "-mj"); mj; mj = strstr(mj + 1, "-mj"))
		last = mj;
	if (!last || strchr(base, '/'))
		return false;
	char path[4096];
	if (fs_path(path, sizeof(path), "%s/../%.*s/mj%s", db->dir, (int)(last - base), base,
		    last + 3) < 0)
		return false;
	return access(path, F_OK) == 0;
}

/* Roll back a hot journal exactly as SQLite would; delete a cold one. */
static int db_recover_journal(struct db *db, bool *ret_touched)
{
	char path[4096];
	struct journal_reader *jr = NULL;
	uint8_t *page = NULL;
	int fd = -1, r;
	*ret_touched = false;
	r = db_file_path(db, DB_FILE_JOURNAL, path, sizeof(path));
	if (r < 0)
		return r;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	uint8_t hdr[JOURNAL_HEADER_MIN];
	ssize_t got = fs_pread_full(fd, hdr, sizeof(hdr), 0);
	bool hot = got == (ssize_t)sizeof(hdr) && memcmp(hdr, journal_magic, 8) == 0;
	if (hot) {
		char super[4096];
		int s = journal_super_name(fd, super, sizeof(super));
		if (s == 1 && !super_journal_exists(db, super))
			hot = false; /* the multi-database commit completed */
	}
	if (hot) {
		uint32_t pgno;
		r = journal_reader_new(&jr, fd, db->page_size);
		if (r < 0)
			goto out;
		const struct journal_header *jh = journal_reader_header(jr);
		if (db->page_size == 0)
			db->page_size = jh->page_size;
		page = malloc(jh->page_size);
		if (!page) {
			r = -ENOMEM;
			goto out;
		}
		uint32_t nrec = 0;
		while ((r = journal_reader_next(jr, &pgno, page)) == 1) {
			r = fs_pwrite_full(db->dbfd, page, jh->page_size,
					   (off_t)(pgno - 1) * jh->page_size);
			if (r < 0)
				goto out;
			nrec++;
		}
		if (r < 0)
			goto out;
		if (ftruncate(db->dbfd, (off_t)jh->initial_size * jh->page_size) < 0) {
			r = -errno;
			goto out;
		}
		if (fsync(db->dbfd) < 0) {
			r = -errno;
			goto out;
		}
		log_warn("db '%s': rolled back a hot journal (%u pages, size %u pages)", db->name,
			 nrec, jh->initial_size);
		*ret_touched = true;
	}
	if (unlink(path) < 0) {
		r = -errno;
		goto out;
	}
	r = fs_fsync_dir(db->dir);
out:
	free(page);
	journal_reader_free(jr);
	if (fd >= 0)
		close(fd);
	return r;
}

/*
 * Apply a recovered WAL transaction to the in-memory checksum state, using the
 * page checksums already computed into its pages (p->ck).
 */
static void wal_tx_apply_checksums(struct db *db, const struct wal_tx *tx, uint32_t lock)
{
	for (size_t k = 0; k < tx->n; k++) {
		const struct txpage *p = &tx->pages[k];
		if (p->pgno > tx->commit || p->pgno == lock)
			continue;
		db->xsum ^= (p->pgno <= db->page_count ? db->pgck[p->pgno] : 0) ^ p->ck;
		db->pgck[p->pgno] = p->ck;
	}
	for (uint32_t pg = tx->commit + 1; pg <= db->page_count; pg++) {
		db->xsum ^= db->pgck[pg];
		db->pgck[pg] = 0;
	}
	db->page_count = tx->commit;
}

/*
 * Bring the WAL's committed transactions into the LTX chain and the database
 * file, then remove WAL and SHM. last_post is the last LTX's post-apply
 * checksum (0 when there is none).
 */
static int db_recover_wal(struct db *db, bool *ret_touched)
{
	char path[4096];
	struct wal_tx *txs = NULL;
	size_t ntx = 0, captx = 0;
	uint64_t *base = NULL;
	uint8_t *page = NULL;
	int fd = -1, r;
	*ret_touched = false;

	r = db_file_path(db, DB_FILE_WAL, path, sizeof(path));
	if (r < 0)
		return r;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	uint8_t hb[WAL_HEADER_SIZE];
	struct wal_header wh;
	if (fs_pread_full(fd, hb, sizeof(hb), 0) != (ssize_t)sizeof(hb) ||
	    wal_header_parse(&wh, hb) < 0)
		goto remove; /* nothing SQLite would recover either */
	if (db->page_size && wh.page_size != db->page_size) {
		log_warn("db '%s': WAL page size %u differs from database page size %u; ignoring "
			 "the WAL",
			 db->name, wh.page_size, db->page_size);
		goto remove;
	}
	db->page_size = wh.page_size;

	/* every valid committed transaction */
	uint64_t off = WAL_HEADER_SIZE;
	uint32_t s1 = wh.cksum1, s2 = wh.cksum2;
	for (;;) {
		if (ntx == captx) {
			captx = captx ? captx * 2 : 8;
			struct wal_tx *t = realloc(txs, captx * sizeof(*t));
			if (!t) {
				r = -ENOMEM;
				goto out;
			}
			txs = t;
		}
		memset(&txs[ntx], 0, sizeof(txs[ntx]));
		r = wal_scan_tx(&wh, fd, NULL, off, s1, s2, &txs[ntx]);
		if (r < 0) {
			free(txs[ntx].pages);
			goto out;
		}
		if (r == 0) {
			free(txs[ntx].pages);
			break;
		}
		txs[ntx].n = txpages_normalize(txs[ntx].pages, txs[ntx].n);
		off = txs[ntx].end;
		s1 = txs[ntx].s1;
		s2 = txs[ntx].s2;
		ntx++;
	}
	r = 0;
	if (ntx == 0)
		goto remove;

	/* Pass A: the state after each transaction, on a copy. */
	uint32_t maxc = db->page_count;
	for (size_t i = 0; i < ntx; i++)
		if (txs[i].commit > maxc)
			maxc = txs[i].commit;
	r = pgck_reserve(db, maxc);
	if (r < 0)
		goto out;
	size_t bytes = ((size_t)db->pgck_cap + 1) * sizeof(uint64_t);
	base = malloc(bytes);
	page = malloc(wh.page_size);
	if (!base || !page) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(base, db->pgck, bytes);
	uint64_t base_x = db->xsum;
	uint32_t base_count = db->page_count;
	uint32_t lock = ltx_lock_pgno(wh.page_size);
	/* Without LTX history the WAL is only checkpointed; step 5 snapshots. */
	long match = db->pos.txid == 0			       ? (long)ntx
		     : db_cur_checksum(db) == db->pos.checksum ? 0
							       : -1;
	for (size_t i = 0; i < ntx; i++) {
		for (size_t k = 0; k < txs[i].n; k++) {
			struct txpage *p = &txs[i].pages[k];
			if (p->pgno > txs[i].commit || p->pgno == lock)
				continue;
			r = wal_read(fd, NULL, page, wh.page_size,
				     (off_t)p->where + WAL_FRAME_HEADER_SIZE);
			if (r < 0)
				goto out;
			p->ck = ltx_page_checksum(p->pgno, page, wh.page_size);
		}
		wal_tx_apply_checksums(db, &txs[i], lock);
		if (db->pos.txid && db_cur_checksum(db) == db->pos.checksum && match != (long)ntx)
			match = (long)i + 1;
	}
	/* Pass B: from the base again, write LTX files for transactions past the match. */
	memcpy(db->pgck, base, bytes);
	db->xsum = base_x;
	db->page_count = base_count;
	if (match < 0) {
		log_warn("db '%s': no WAL state matches the last LTX file; the check after the "
			 "checkpoint decides",
			 db->name);
		match = (long)ntx; /* apply everything silently; step 5 reconciles */
	}
	for (size_t i = 0; i < ntx; i++) {
		struct walsrc ws = {db, fd, NULL};
		struct page_src src = {src_wal, &ws};
		if ((long)i < match) {
			wal_tx_apply_checksums(db, &txs[i], lock);
			continue;
		}
		struct walinfo wi = {(int64_t)txs[i].start, (int64_t)(txs[i].end - txs[i].start),
				     wh.salt1, wh.salt2};
		bool written;
		r = db_commit_pages(db, txs[i].pages, txs[i].n, txs[i].commit, &src, &wi,
				    db->pos.txid == 0, true, &written);
		if (r < 0)
			goto out;
		if (written)
			log_warn("db '%s': recovered committed WAL transaction as LTX %016" PRIx64,
				 db->name, db->pos.txid);
	}

	/* Checkpoint: the latest image of every page into the database file. */
	{
		size_t total = 0, k = 0;
		for (size_t i = 0; i < ntx; i++)
			total += txs[i].n;
		struct txpage *all = malloc((total ? total : 1) * sizeof(*all));
		if (!all) {
			r = -ENOMEM;
			goto out;
		}
		for (size_t i = 0; i < ntx; i++)
			for (size_t m = 0; m < txs[i].n; m++)
				all[k++] = txs[i].pages[m];
		total = txpages_normalize(all, total); /* last frame of each page */
		for (size_t i = 0; i < total && r == 0; i++) {
			if (all[i].pgno > txs[ntx - 1].commit)
				continue;
			r = wal_read(fd, NULL, page, wh.page_size,
				     (off_t)all[i].where + WAL_FRAME_HEADER_SIZE);
			if (r == 0)
				r = fs_pwrite_full(db->dbfd, page, wh.page_size,
						   (off_t)(all[i].pgno - 1) * wh.page_size);
		}
		free(all);
		if (r < 0)
			goto out;
	}
	if (ftruncate(db->dbfd, (off_t)txs[ntx - 1].commit * wh.page_size) < 0 ||
	    fsync(db->dbfd) < 0) {
		r = -errno;
		goto out;
	}
	*ret_touched = true;
remove:
	close(fd);
	fd = -1;
	r = unlink(path) < 0 && errno != ENOENT ? -errno : 0;
	if (r == 0)
		r = fs_fsync_dir(db->dir);
out:
	if (fd >= 0)
		close(fd);
	for (size_t i = 0; i < ntx; i++)
		free(txs[i].pages);
	free(txs);
	free(base);
	free(page);
	return r;
}

/* Apply the pages of an LTX file to the database file (recovery only). */
static int db_reapply_ltx(struct db *db, const struct ltx_header *h)
{
	char name[LTX_FILENAME_LEN + 1], path[4096];
	struct ltx_decoder *dec = NULL;
	uint8_t *page = NULL;
	int fd, r;
	ltx_format_filename(name, h->min_txid, h->max_txid);
	r = fs_path(path, sizeof(path), "%s/%s", db->ltx_dir, name);
	if (r < 0)
		return r;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	r = ltx_decoder_new(&dec, ltx_fd_read, &fd);
	if (r < 0)
		goto out;
	page = malloc(h->page_size);
	if (!page) {
		r = -ENOMEM;
		goto out;
	}
	uint32_t pgno;
	while ((r = ltx_decoder_next_page(dec, &pgno, page)) == 1) {
		r = fs_pwrite_full(db->dbfd, page, h->page_size, (off_t)(pgno - 1) * h->page_size);
		if (r < 0)
			goto out;
	}
	if (r < 0)
		goto out;
	struct ltx_trailer tr;
	r = ltx_decoder_finish(dec, &tr);
	if (r < 0)
		goto out;
	if (ftruncate(db->dbfd, (off_t)h->commit * h->page_size) < 0 || fsync(db->dbfd) < 0)
		r = -errno;
out:
	free(page);
	ltx_decoder_free(dec);
	close(fd);
	return r;
}

/* The database checksum that re-applying the LTX file h over the current
 * state would give (0 if the file cannot be read). */
static uint64_t db_reapply_result(struct db *db, const struct ltx_header *h)
{
	char name[LTX_FILENAME_LEN + 1], path[4096];
	struct ltx_decoder *dec = NULL;
	uint8_t *page = NULL;
	uint64_t x = ltx_header_is_snapshot(h) ? 0 : db->xsum, res = 0;
	uint32_t pgno;
	int fd, r;
	ltx_format_filename(name, h->min_txid, h->max_txid);
	if (fs_path(path, sizeof(path), "%s/%s", db->ltx_dir, name) < 0)
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	page = malloc(h->page_size);
	if (!page || ltx_decoder_new(&dec, ltx_fd_read, &fd) < 0)
		goto out;
	while ((r = ltx_decoder_next_page(dec, &pgno, page)) == 1) {
		if (!ltx_header_is_snapshot(h) && pgno <= db->page_count)
			x ^= db->pgck[pgno];
		x ^= ltx_page_checksum(pgno, page, h->page_size);
	}
	if (r < 0)
		goto out;
	if (!ltx_header_is_snapshot(h))
		for (uint32_t p = h->commit + 1; p <= db->page_count; p++)
			x ^= db->pgck[p];
	res = LTX_CHECKSUM_FLAG | (h->commit ? x : 0);
out:
	ltx_decoder_free(dec);
	free(page);
	close(fd);
	return res;
}

/* Clean-shutdown checksum file. */
static int ckfile_path(struct db *db, char *buf, size_t n)
{
	return fs_path(buf, n, "%s/checksums", db->dir);
}

static int db_save_checksums(struct db *db)
{
	char path[4096];
	struct stat st;
	int r = ckfile_path(db, path, sizeof(path));
	if (r < 0 || db->dbfd < 0)
		return r;
	if (fstat(db->dbfd, &st) < 0)
		return -errno;
	size_t n = 8 + 4 + 4 + 8 + 8 + 8 + 24 + (size_t)db->page_count * 8 + 8;
	uint8_t *b = malloc(n);
	if (!b)
		return -ENOMEM;
	uint8_t *p = b;
	memcpy(p, CKFILE_MAGIC, 8);
	p += 8;
	memcpy(p, &db->page_size, 4);
	p += 4;
	memcpy(p, &db->page_count, 4);
	p += 4;
	memcpy(p, &db->pos.txid, 8);
	p += 8;
	memcpy(p, &db->pos.checksum, 8);
	p += 8;
	uint64_t size = (uint64_t)st.st_size;
	memcpy(p, &size, 8);
	p += 8;
	/* identity of the file: any change while ltxfs is down invalidates this */
	uint64_t id[3] = {(uint64_t)st.st_ino, (uint64_t)st.st_ctim.tv_sec,
			  (uint64_t)st.st_ctim.tv_nsec};
	memcpy(p, id, sizeof(id));
	p += sizeof(id);
	if (db->page_count)
		memcpy(p, db->pgck + 1, (size_t)db->page_count * 8);
	p += (size_t)db->page_count * 8;
	uint64_t crc = crc64_iso(0, b, (size_t)(p - b));
	memcpy(p, &crc, 8);
	r = fs_write_atomic(path, b, n);
	free(b);
	return r;
}

/* Load the checksum file if it matches the database exactly; always remove it. */
static bool db_load_checksums(struct db *db, uint32_t count)
{
	char path[4096];
	char *b = NULL;
	size_t len = 0;
	bool ok = false;
	struct stat st;
	if (ckfile_path(db, path, sizeof(path)) < 0)
		return false;
	if (fs_read_file(path, (size_t)count * 8 + 128, &b, &len) < 0)
		goto out;
	if (len != 8 + 4 + 4 + 8 + 8 + 8 + 24 + (size_t)count * 8 + 8 || memcmp(b, CKFILE_MAGIC, 8))
		goto out;
	uint64_t crc;
	memcpy(&crc, b + len - 8, 8);
	if (crc != crc64_iso(0, b, len - 8))
		goto out;
	uint32_t ps, pc;
	uint64_t txid, ck, size;
	memcpy(&ps, b + 8, 4);
	memcpy(&pc, b + 12, 4);
	memcpy(&txid, b + 16, 8);
	memcpy(&ck, b + 24, 8);
	memcpy(&size, b + 32, 8);
	if (fstat(db->dbfd, &st) < 0)
		goto out;
	uint64_t id[3];
	memcpy(id, b + 40, sizeof(id));
	if (ps != db->page_size || pc != count || txid != db->pos.txid || ck != db->pos.checksum ||
	    size != (uint64_t)st.st_size || id[0] != (uint64_t)st.st_ino ||
	    id[1] != (uint64_t)st.st_ctim.tv_sec || id[2] != (uint64_t)st.st_ctim.tv_nsec)
		goto out;
	if (pgck_reserve(db, count) < 0)
		goto out;
	memset(db->pgck, 0, ((size_t)db->pgck_cap + 1) * sizeof(*db->pgck));
	db->xsum = 0;
	if (count)
		memcpy(db->pgck + 1, b + 64, (size_t)count * 8);
	for (uint32_t i = 1; i <= count; i++)
		db->xsum ^= db->pgck[i];
	db->page_count = count;
	ok = db_cur_checksum(db) == db->pos.checksum;
out:
	free(b);
	if (unlink(path) == 0)
		fs_fsync_dir(db->dir);
	return ok;
}

static int db_recover(struct db *db)
{
	struct ltx_header lh;
	struct ltx_trailer lt;
	char path[4096];
	bool touched_j = false, touched_w = false;
	uint32_t count = 0;
	int r;

	memset(&lh, 0, sizeof(lh));
	/* a database file a replica was building from a snapshot (RECEIVING) */
	if (fs_path(path, sizeof(path), "%s/database.tmp", db->dir) == 0)
		fs_unlink_if_exists(path);
	struct ring_recs rs = {0};
	r = db_ring_load(db, &rs);
	if (r == 0)
		r = db_recover_ltx(db, &lh, &lt, true, &rs);
	if (r == 0)
		r = db_ring_recover(db, &rs, &lh, &lt);
	ring_recs_release(&rs);
	if (r < 0) {
		ltx_ring_free(db->ring);
		db->ring = NULL;
		return r;
	}
	r = db_file_path(db, DB_FILE_DB, path, sizeof(path));
	if (r < 0)
		return r;
	db->dbfd = open(path, O_RDWR | O_CLOEXEC);
	if (db->dbfd < 0 && errno == ENOENT && db->opt.replica && db->pos.txid && lh.commit != 0 &&
	    ltx_header_is_snapshot(&lh)) {
		/* a replica stopped between installing a snapshot and writing it */
		db->dbfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	}
	if (db->dbfd < 0) {
		if (errno != ENOENT)
			return -errno;
		/* no database: a dropped one, or a new directory */
		db->exists = false;
		if (db_file_path(db, DB_FILE_JOURNAL, path, sizeof(path)) == 0)
			fs_unlink_if_exists(path);
		if (db_file_path(db, DB_FILE_WAL, path, sizeof(path)) == 0)
			fs_unlink_if_exists(path);
		if (db_file_path(db, DB_FILE_SHM, path, sizeof(path)) == 0)
			fs_unlink_if_exists(path);
		if (db->pos.txid && lh.commit != 0) {
			/* deleted while ltxfs was not running: record the deletion */
			log_warn("db '%s': database file is gone; recording its deletion",
				 db->name);
			return db_commit_drop(db);
		}
		return 0;
	}
	db->exists = true;
	if (db_file_path(db, DB_FILE_SHM, path, sizeof(path)) == 0)
		fs_unlink_if_exists(path);

	r = db_recover_journal(db, &touched_j);
	if (r < 0)
		return r;
	r = db_file_page_count(db, &count);
	if (r == -EBADMSG) {
		log_error("db '%s': database file is not a SQLite database", db->name);
		return -EBADMSG;
	}
	if (r < 0)
		return r;
	char wal[4096];
	bool has_wal =
	    db_file_path(db, DB_FILE_WAL, wal, sizeof(wal)) == 0 && access(wal, F_OK) == 0;
	/* The cache describes the database file only when no WAL adds to it. */
	if (!(db->page_size && !has_wal && db_load_checksums(db, count))) {
		if (db->ltx_trusted) {
			/* the cache did not hold up: verify the newest file after all */
			db->ltx_trusted = false;
			r = db_recover_ltx(db, &lh, &lt, false, NULL);
			if (r < 0)
				return r;
		}
		r = db_checksum_file(db, count);
		if (r < 0)
			return r;
	}
	if (has_wal) {
		r = db_recover_wal(db, &touched_w);
		if (r < 0)
			return r;
	}
	if (touched_w) {
		/* the file now holds the checkpointed state; trust it, not the walk */
		r = db_file_page_count(db, &count);
		if (r == 0)
			r = db_checksum_file(db, count);
		if (r < 0)
			return r;
	}

	uint64_t cur = db_cur_checksum(db);
	if (db->pos.txid == 0) {
		if (db->page_count == 0) {
			db->xsum = 0;
			return 0;
		}
		/* a snapshot continues from any TXID a discarded file had used */
		if (db->txid_floor > 0)
			db->pos.txid = db->txid_floor - 1;
		log_warn("db '%s': database has no valid LTX history; recording it as snapshot "
			 "TXID %016" PRIx64,
			 db->name, db->pos.txid + 1);
		return db_commit_snapshot_from_file(db, db->page_count, true);
	}
	if (cur == db->pos.checksum)
		return 0;
	if ((!ltx_header_is_snapshot(&lh) && cur == lh.pre_apply_checksum) ||
	    (db->opt.replica && db_reapply_result(db, &lh) == db->pos.checksum)) {
		/* died between the LTX file and the commit point: finish the commit */
		log_warn("db '%s': completing transaction %016" PRIx64 " from its LTX file "
			 "(an interrupted commit or replica apply)",
			 db->name, lh.max_txid);
		r = db_reapply_ltx(db, &lh);
		if (r == 0)
			r = db_file_page_count(db, &count);
		if (r == 0)
			r = db_checksum_file(db, count);
		if (r < 0)
			return r;
		if (db_cur_checksum(db) == db->pos.checksum)
			return 0;
	}
	log_warn("db '%s': database checksum %016" PRIx64 " does not match the last LTX file "
		 "(%016" PRIx64 " at TXID %016" PRIx64 "): it changed outside ltxfs; recording "
		 "its current content as a snapshot at TXID %016" PRIx64,
		 db->name, db_cur_checksum(db), db->pos.checksum, db->pos.txid, db->pos.txid + 1);
	return db_commit_snapshot_from_file(db, db->page_count, true);
}

int db_open(struct db **ret, const char *dir, const char *name, bool create,
	    const struct db_options *opt)
{
	struct db *db = calloc(1, sizeof(*db));
	char ltx[4096];
	int r;
	if (!db)
		return -ENOMEM;
	pthread_mutex_init(&db->mu, NULL);
	pthread_cond_init(&db->q_cond, NULL);
	db->dbfd = -1;
	db->ltx_dirfd = -1;
	db->opt = *opt;
	db->dir = strdup(dir);
	db->name = strdup(name);
	if (!db->dir || !db->name) {
		r = -ENOMEM;
		goto fail;
	}
	r = fs_path(ltx, sizeof(ltx), "%s/ltx", dir);
	if (r < 0)
		goto fail;
	db->ltx_dir = strdup(ltx);
	if (!db->ltx_dir) {
		r = -ENOMEM;
		goto fail;
	}
	if (create) {
		r = fs_mkdir_p(ltx, 0755);
		if (r < 0)
			goto fail;
	} else {
		struct stat st;
		if (stat(dir, &st) < 0) {
			r = -errno;
			goto fail;
		}
		r = fs_mkdir_p(ltx, 0755);
		if (r < 0)
			goto fail;
	}
	db->ltx_dirfd = open(ltx, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (db->ltx_dirfd < 0) {
		r = -errno;
		goto fail;
	}
	struct statfs sfs;
	db->dirsync = !(statfs(ltx, &sfs) == 0 && sfs.f_type == 0xEF53 /* EXT4_SUPER_MAGIC */);
	r = db_recover(db);
	if (r < 0)
		goto fail;
	db->live = true;
	*ret = db;
	return 0;
fail:
	db_free(db);
	return r;
}

void db_free(struct db *db)
{
	if (!db)
		return;
	if (db->ltx_dir) {
		pthread_mutex_lock(&db->mu);
		db_sync_ltx(db);
		pthread_mutex_unlock(&db->mu);
		if (db->exists && db->dbfd >= 0 && !db->sticky_err && db->page_size &&
		    !db->journal_active)
			db_save_checksums(db);
	}
	if (db->dbfd >= 0)
		close(db->dbfd);
	syncer_free(db->syncer);
	pthread_mutex_lock(&db->mu);
	db_prep_drop(db);
	pthread_mutex_unlock(&db->mu);
	ltx_ring_free(db->ring);
	pthread_mutex_destroy(&db->mu);
	pthread_cond_destroy(&db->q_cond);
	while (db->q_head) { /* only if the last attempt to write them failed */
		struct ltxjob *j = db->q_head;
		db->q_head = j->next;
		ltxjob_free(j);
	}
	free(db->pgck);
	free(db->dirty_bits);
	free(db->dirty);
	free(db->wt);
	free(db->dir);
	free(db->name);
	free(db->ltx_dir);
	if (db->ltx_dirfd >= 0)
		close(db->ltx_dirfd);
	free(db);
}

/* ---------------------------------------------------------- replication */

int db_ltx_open(struct db *db, uint64_t min_txid, int *ret_fd, struct ltx_header *ret_h,
		struct ltx_trailer *ret_t)
{
	char name[LTX_FILENAME_LEN + 1], path[4096];
	struct ltx_header h;
	struct ltx_trailer t;
	ltx_format_filename(name, min_txid, min_txid);
	db_lock_settled(db); /* the file of a queued commit exists from here on */
	pthread_mutex_unlock(&db->mu);
	int r = fs_path(path, sizeof(path), "%s/%s", db->ltx_dir, name);
	if (r < 0)
		return r;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	r = ltx_verify_fd(fd, &h, &t);
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

/* Map every page in the committed WAL prefix to its newest frame. */
static int wal_frame_map(struct db *db, uint64_t **ret)
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

/*
 * Take db->mu at a committed state: in rollback modes the file holds
 * uncommitted pages while a journal is active, so wait for the commit point
 * (SQLite's write phase is short). Returns with the lock held, 0 or the
 * sticky error.
 */
static int lock_committed(struct db *db)
{
	db_lock_settled(db);
	while (db->journal_active && !db->sticky_err) {
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

/*
 * STREAMED SNAPSHOTS. db_snap_start builds an uncompressed snapshot on a
 * builder thread and returns as soon as its header is fixed; the stream
 * sends bytes as they are produced (db_snap_read), so building, sending and
 * the replica's verification overlap. Uncompressed, the length is known in
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
 */
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
};

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

	r = lock_committed(db);
	if (r == 0)
		r = snap_capture(sn);
	if (!sn->locked)
		pthread_mutex_unlock(&db->mu);
	pthread_mutex_lock(&sn->mu);
	sn->header_ready = true;
	sn->err = r;
	pthread_cond_broadcast(&sn->cv);
	pthread_mutex_unlock(&sn->mu);
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
	return NULL;
}

void db_snap_free(struct db_snap *sn)
{
	if (!sn)
		return;
	pthread_mutex_lock(&sn->mu);
	sn->cancel = true;
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

int db_snap_start(struct db *db, struct db_snap **ret)
{
	struct db_snap *sn = calloc(1, sizeof(*sn));
	int r;
	*ret = NULL;
	if (!sn)
		return -ENOMEM;
	sn->db = db;
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
	ssize_t r;
	pthread_mutex_lock(&sn->mu);
	while (sn->written <= sn->sent && !sn->done)
		pthread_cond_wait(&sn->cv, &sn->mu);
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

int db_export(struct db *db, int fd, struct db_pos *ret_pos)
{
	uint64_t *map = NULL;
	uint8_t *page = NULL;
	int walfd = -1, r;
	r = lock_committed(db);
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

int db_ltx_tmpfile(struct db *db, int *ret_fd)
{
	int fd = openat(db->ltx_dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	*ret_fd = fd;
	return 0;
}

bool db_wal_mode(struct db *db)
{
	uint8_t v[2] = {0, 0};
	pthread_mutex_lock(&db->mu);
	if (db->exists && db->dbfd >= 0 && fs_pread_full(db->dbfd, v, 2, 18) != 2)
		v[0] = 0;
	pthread_mutex_unlock(&db->mu);
	return v[0] == 2 && v[1] == 2;
}

/* A page the apply writes: where, and its new checksum. */
struct applypage {
	uint32_t pgno;
	uint64_t ck;
};

/* Move every LTX file of the replaced history into orphaned/<time>/. */
static void ltx_orphan_all(struct db *db, uint64_t keep_min, uint64_t keep_max)
{
	char odir[4096];
	DIR *d = opendir(db->ltx_dir);
	struct dirent *de;
	int moved = 0;
	if (!d)
		return;
	if (fs_path(odir, sizeof(odir), "%s/orphaned/%" PRId64, db->dir, clock_wall_ms()) < 0) {
		closedir(d);
		return;
	}
	while ((de = readdir(d))) {
		uint64_t mn, mx;
		char to[4096 + 512];
		if (ltx_parse_filename(de->d_name, &mn, &mx) < 0 ||
		    (mn == keep_min && mx == keep_max))
			continue;
		if (moved == 0 && fs_mkdir_p(odir, 0755) < 0)
			break;
		if (fs_path(to, sizeof(to), "%s/%s", odir, de->d_name) < 0)
			continue;
		if (renameat(dirfd(d), de->d_name, AT_FDCWD, to) == 0)
			moved++;
	}
	closedir(d);
	if (moved)
		log_warn("db '%s': this node's history diverged from the primary's: its %d LTX "
			 "file(s), among them transactions no other node has, were moved to %s "
			 "(list them with `ltxfs orphans`)",
			 db->name, moved, odir);
}

/* Delete every LTX file but the one named keep_min-keep_max. */
static void ltx_remove_others(struct db *db, uint64_t keep_min, uint64_t keep_max)
{
	DIR *d = opendir(db->ltx_dir);
	struct dirent *de;
	if (!d)
		return;
	while ((de = readdir(d))) {
		uint64_t mn, mx;
		if (ltx_parse_filename(de->d_name, &mn, &mx) == 0 &&
		    !(mn == keep_min && mx == keep_max))
			unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
}

static void apply_hooks_invalidate(const struct db_apply_hooks *hk, struct db *db,
				   const struct applypage *pg, size_t n, uint32_t page_size)
{
	size_t i = 0;
	while (i < n) {
		size_t j = i + 1;
		while (j < n && pg[j].pgno == pg[j - 1].pgno + 1)
			j++;
		hk->invalidate(hk->ctx, db, (uint64_t)(pg[i].pgno - 1) * page_size,
			       (uint64_t)(j - i) * page_size);
		i = j;
	}
}

void db_get_stats(struct db *db, struct db_stats *st)
{
	memset(st, 0, sizeof(*st));
	for (int k = 0; k < DB_FILE_N; k++)
		st->writes[k] = __atomic_load_n(&db->st_writes[k], __ATOMIC_RELAXED);
	st->commits = __atomic_load_n(&db->st_commits, __ATOMIC_RELAXED);
	st->ltx_removed = __atomic_load_n(&db->st_removed, __ATOMIC_RELAXED);
	db_lock_settled(db);
	st->wal_tail_cuts = db->wt_cuts;
	st->prepared_used = db->st_prep_used;
	st->ring_records = db->st_ring_records;
	st->size_bytes = db->exists ? (uint64_t)db->page_count * db->page_size : 0;
	st->page_size = db->page_size;
	st->page_count = db->exists ? db->page_count : 0;
	pthread_mutex_unlock(&db->mu);
}

void db_ltx_usage(struct db *db, uint64_t *files, uint64_t *bytes)
{
	*files = *bytes = 0;
	DIR *d = opendir(db->ltx_dir);
	struct dirent *de;
	if (!d)
		return;
	while ((de = readdir(d))) {
		uint64_t a, b;
		struct stat sb;
		if (ltx_parse_filename(de->d_name, &a, &b) == 0 &&
		    fstatat(dirfd(d), de->d_name, &sb, 0) == 0) {
			(*files)++;
			*bytes += (uint64_t)sb.st_size;
		}
	}
	closedir(d);
}

bool db_txn_pending(struct db *db)
{
	pthread_mutex_lock(&db->mu);
	bool active = db->journal_active;
	pthread_mutex_unlock(&db->mu);
	return active;
}

/*
 * Before a replica's first apply after this node was primary (caller holds
 * db->mu and SQLite's locks through the apply hooks, so no SQLite writer is
 * inside a transaction): a journal left by a transaction the fence refused
 * is hot and is rolled back, exactly as SQLite would; committed WAL frames
 * not yet checkpointed are copied into the database file and the WAL is
 * emptied, because applied pages go to the database file and the WAL-index
 * header the unlock hook writes describes an empty WAL. *touched says the
 * database file changed (its kernel cache must go); *removed that a journal
 * file was deleted (its directory entry must go).
 */
static int db_settle(struct db *db, bool *touched, bool *removed)
{
	uint64_t *map = NULL;
	uint8_t *page = NULL;
	int r, wfd = -1;
	bool t = false;
	char jpath[4096];
	*touched = *removed = false;
	/* a journal, hot or cold, goes behind the kernel's back: its entry must go too */
	if (db_file_path(db, DB_FILE_JOURNAL, jpath, sizeof(jpath)) == 0 &&
	    access(jpath, F_OK) == 0)
		*removed = true;
	r = db->dbfd >= 0 ? db_recover_journal(db, &t) : 0;
	if (r < 0)
		return r;
	if (t)
		*touched = true;
	db->journal_exists = db->journal_active = false;
	dirty_clear(db);
	if (!db->wal_valid || db->wal_end <= WAL_HEADER_SIZE || db->dbfd < 0)
		return 0;
	r = wal_frame_map(db, &map);
	if (r < 0)
		return r;
	wfd = r;
	r = 0;
	if (map) {
		page = malloc(db->page_size);
		if (!page) {
			r = -ENOMEM;
			goto out;
		}
		for (uint32_t pg = 1; pg <= db->page_count && r == 0; pg++) {
			if (!map[pg])
				continue;
			ssize_t got = fs_pread_full(wfd, page, db->page_size, (off_t)map[pg]);
			if (got != (ssize_t)db->page_size)
				r = got < 0 ? (int)got : -EIO;
			else
				r = fs_pwrite_full(db->dbfd, page, db->page_size,
						   (off_t)(pg - 1) * db->page_size);
		}
		if (r < 0)
			goto out;
		if (ftruncate(db->dbfd, (off_t)db->page_count * db->page_size) < 0 ||
		    fdatasync(db->dbfd) < 0) {
			r = -errno;
			goto out;
		}
		log_warn("db '%s': moved the WAL's committed pages into the database file before "
			 "following the new primary",
			 db->name);
	}
	{
		char path[4096];
		r = db_file_path(db, DB_FILE_WAL, path, sizeof(path));
		if (r == 0 && truncate(path, 0) < 0 && errno != ENOENT)
			r = -errno;
	}
	if (r == 0) {
		db_wal_reset(db);
		db->wal_size = db->wal_gen_end = 0;
		db->wal_live = false;
		*touched = true;
	}
out:
	if (wfd >= 0)
		close(wfd);
	free(map);
	free(page);
	return r;
}

/* What pass 1 learnt of an LTX file. */
struct ltx_scan {
	struct ltx_header h;
	struct ltx_trailer tr;
	struct applypage *pg;
	size_t n, cap;
	int stagefd;	/* the new database file built from a snapshot, or -1 */
	uint8_t *stage; /* pages waiting to be written to stagefd, contiguous */
	uint32_t stage_first, stage_n;
};

#define STAGE_PAGES 256

static int scan_stage_flush(struct ltx_scan *sc)
{
	if (sc->stage_n == 0)
		return 0;
	int r = fs_pwrite_full(sc->stagefd, sc->stage, (size_t)sc->stage_n * sc->h.page_size,
			       (off_t)(sc->stage_first - 1) * sc->h.page_size);
	sc->stage_n = 0;
	return r;
}

static int scan_stage_page(struct ltx_scan *sc, uint32_t pgno, const uint8_t *page)
{
	int r = 0;
	if (sc->stage_n && (sc->stage_n == STAGE_PAGES || pgno != sc->stage_first + sc->stage_n))
		r = scan_stage_flush(sc);
	if (sc->stage_n == 0)
		sc->stage_first = pgno;
	memcpy(sc->stage + (size_t)sc->stage_n * sc->h.page_size, page, sc->h.page_size);
	sc->stage_n++;
	return r;
}

static void ltx_scan_release(struct db *db, struct ltx_scan *sc)
{
	free(sc->pg);
	sc->pg = NULL;
	free(sc->stage);
	sc->stage = NULL;
	if (sc->stagefd >= 0) {
		char path[4096];
		close(sc->stagefd);
		if (fs_path(path, sizeof(path), "%s/database.tmp", db->dir) == 0)
			unlink(path);
		sc->stagefd = -1;
	}
}

/*
 * Pass 1, before anything is touched: decode and verify the whole file
 * (page order, file checksum, snapshot completeness) and note each page's
 * new checksum. With stage, a snapshot of a database that does not exist
 * here yet is also written, page by page, to database.tmp, which the apply
 * renames into place instead of a second pass.
 */
static int ltx_scan_run(struct db *db, ltx_read_fn fn, void *ctx, bool stage, struct ltx_scan *sc)
{
	struct ltx_decoder *dec = NULL;
	uint8_t *page = NULL;
	uint32_t pgno;
	int r;

	memset(sc, 0, sizeof(*sc));
	sc->stagefd = -1;
	r = ltx_decoder_new(&dec, fn, ctx);
	if (r < 0)
		return r;
	sc->h = *ltx_decoder_header(dec);
	page = malloc(sc->h.page_size);
	if (!page) {
		r = -ENOMEM;
		goto out;
	}
	if (stage && ltx_header_is_snapshot(&sc->h) && sc->h.commit > 0 && !db_exists(db)) {
		char path[4096];
		r = fs_path(path, sizeof(path), "%s/database.tmp", db->dir);
		if (r == 0) {
			sc->stagefd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
			if (sc->stagefd < 0)
				r = -errno;
		}
		if (r < 0)
			goto out;
		sc->stage = malloc((size_t)STAGE_PAGES * sc->h.page_size);
		if (!sc->stage) {
			r = -ENOMEM;
			goto out;
		}
	}
	while ((r = ltx_decoder_next_page(dec, &pgno, page)) == 1) {
		if (sc->n == sc->cap) {
			sc->cap = sc->cap ? sc->cap * 2 : 64;
			void *p = realloc(sc->pg, sc->cap * sizeof(*sc->pg));
			if (!p) {
				r = -ENOMEM;
				goto out;
			}
			sc->pg = p;
		}
		sc->pg[sc->n].pgno = pgno;
		sc->pg[sc->n].ck = ltx_decoder_page_checksum(dec);
		sc->n++;
		if (sc->stagefd >= 0) {
			r = scan_stage_page(sc, pgno, page);
			if (r < 0)
				goto out;
		}
	}
	if (r < 0)
		goto out;
	r = ltx_decoder_finish(dec, &sc->tr);
	if (r == 0 && sc->stagefd >= 0)
		r = scan_stage_flush(sc);
	if (r == 0 && sc->stagefd >= 0 &&
	    ftruncate(sc->stagefd, (off_t)sc->h.commit * sc->h.page_size) < 0)
		r = -errno;
out:
	ltx_decoder_free(dec);
	free(page);
	if (r < 0)
		ltx_scan_release(db, sc);
	return r;
}

static int db_apply_scanned(struct db *db, int fd, struct ltx_scan *sc, uint32_t flags,
			    const struct db_apply_hooks *hk);

int db_apply_ltx(struct db *db, int fd, uint32_t flags, const struct db_apply_hooks *hk)
{
	struct ltx_scan sc;
	if (lseek(fd, 0, SEEK_SET) < 0)
		return -errno;
	int r = ltx_scan_run(db, ltx_fd_read, &fd, false, &sc);
	if (r == 0)
		r = db_apply_scanned(db, fd, &sc, flags, hk);
	return r;
}

/*
 * RECEIVING. A large LTX file is verified while it arrives: the receiver
 * appends bytes to fd and reports each append (db_recv_progress); a scanner
 * thread runs pass 1 on the bytes as they land, blocking for more, and for a
 * snapshot of a database this node does not have yet also builds the new
 * database file. db_recv_finish waits for the scan and applies the file;
 * nothing is applied unless the whole file verified.
 */
struct db_recv {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct db *db;
	int fd;
	uint64_t off, written;
	bool eof, abort, done;
	int err;
	struct ltx_scan sc;
};

static ssize_t recv_read(void *ctx, void *buf, size_t n)
{
	struct db_recv *rv = ctx;
	pthread_mutex_lock(&rv->mu);
	while (rv->written <= rv->off && !rv->eof && !rv->abort)
		pthread_cond_wait(&rv->cv, &rv->mu);
	bool abort = rv->abort;
	uint64_t avail = rv->written - rv->off;
	pthread_mutex_unlock(&rv->mu);
	if (abort)
		return -ECANCELED;
	if (avail == 0)
		return 0; /* the end of what was sent */
	ssize_t r = pread(rv->fd, buf, n < avail ? n : (size_t)avail, (off_t)rv->off);
	if (r < 0)
		return -errno;
	rv->off += (uint64_t)r;
	return r;
}

static void *recv_run(void *arg)
{
	struct db_recv *rv = arg;
	int r = ltx_scan_run(rv->db, recv_read, rv, true, &rv->sc);
	pthread_mutex_lock(&rv->mu);
	rv->err = r;
	rv->done = true;
	pthread_cond_broadcast(&rv->cv);
	pthread_mutex_unlock(&rv->mu);
	return NULL;
}

int db_recv_start(struct db *db, int fd, struct db_recv **ret)
{
	struct db_recv *rv = calloc(1, sizeof(*rv));
	*ret = NULL;
	if (!rv)
		return -ENOMEM;
	rv->db = db;
	rv->fd = fd;
	rv->sc.stagefd = -1;
	pthread_mutex_init(&rv->mu, NULL);
	pthread_cond_init(&rv->cv, NULL);
	if (pthread_create(&rv->th, NULL, recv_run, rv) != 0) {
		pthread_mutex_destroy(&rv->mu);
		pthread_cond_destroy(&rv->cv);
		free(rv);
		return -EAGAIN;
	}
	*ret = rv;
	return 0;
}

void db_recv_progress(struct db_recv *rv, uint64_t written)
{
	pthread_mutex_lock(&rv->mu);
	rv->written = written;
	pthread_cond_broadcast(&rv->cv);
	pthread_mutex_unlock(&rv->mu);
}

/* Stop feeding the scanner (abort: it fails at once) and join it. */
static int recv_join(struct db_recv *rv, bool abort)
{
	pthread_mutex_lock(&rv->mu);
	if (abort)
		rv->abort = true;
	rv->eof = true;
	pthread_cond_broadcast(&rv->cv);
	pthread_mutex_unlock(&rv->mu);
	pthread_join(rv->th, NULL);
	pthread_mutex_destroy(&rv->mu);
	pthread_cond_destroy(&rv->cv);
	return rv->err;
}

void db_recv_free(struct db_recv *rv)
{
	if (!rv)
		return;
	if (recv_join(rv, true) == 0)
		ltx_scan_release(rv->db, &rv->sc);
	free(rv);
}

int db_recv_finish(struct db_recv *rv, uint32_t flags, const struct db_apply_hooks *hk)
{
	int r = recv_join(rv, false);
	if (r == 0 && rv->off != rv->written) {
		ltx_scan_release(rv->db, &rv->sc);
		r = -EBADMSG; /* bytes after the trailer */
	}
	if (r == 0)
		r = db_apply_scanned(rv->db, rv->fd, &rv->sc, flags, hk);
	else if (r == -ECANCELED)
		r = -EIO;
	free(rv);
	return r;
}

/* The rest of an apply, after pass 1. Releases sc. */
static int db_apply_scanned(struct db *db, int fd, struct ltx_scan *sc, uint32_t flags,
			    const struct db_apply_hooks *hk)
{
	struct ltx_decoder *dec = NULL;
	struct applypage *pg = sc->pg;
	size_t n = sc->n;
	uint8_t *page = NULL;
	struct ltx_header h = sc->h;
	struct ltx_trailer tr = sc->tr;
	void *token = NULL;
	bool locked = false, created = false, dropped = false;
	uint32_t pgno;
	int r;

	page = malloc(h.page_size);
	if (!page) {
		r = -ENOMEM;
		goto out;
	}

	/* The chain: a non-snapshot must start exactly at this position, and
	 * the result of applying it must be its post-apply checksum. */
	bool snapshot = ltx_header_is_snapshot(&h);
	db_lock_settled(db);
	if (!snapshot &&
	    (db->pos.txid + 1 != h.min_txid || db->pos.checksum != h.pre_apply_checksum)) {
		log_warn("db '%s': LTX %016" PRIx64 "-%016" PRIx64 " does not follow this node's "
			 "position %016" PRIx64 "/%016" PRIx64,
			 db->name, h.min_txid, h.max_txid, db->pos.txid, db->pos.checksum);
		pthread_mutex_unlock(&db->mu);
		r = -ESTALE;
		goto out;
	}
	if (!snapshot && h.commit > 0 && db->page_count > 0 && db->page_size != h.page_size) {
		pthread_mutex_unlock(&db->mu);
		r = -EBADMSG;
		goto out;
	}
	/* A commit this node prepared and never made is abandoned (SQLite rolls
	 * it back from its journal); the file name is about to be the primary's.
	 * Records of this node's own commits must not replay over another's
	 * history after a crash (LTX RING). */
	db_prep_drop(db);
	r = db_ring_retire(db);
	if (r < 0) {
		pthread_mutex_unlock(&db->mu);
		log_error("db '%s': cannot retire the LTX ring before applying LTX %016" PRIx64
			  "-%016" PRIx64 ": %s",
			  db->name, h.min_txid, h.max_txid, strerror(-r));
		goto out;
	}
	uint64_t x = snapshot ? 0 : db->xsum;
	for (size_t i = 0; i < n; i++) {
		uint64_t old =
		    (!snapshot && pg[i].pgno <= db->page_count) ? db->pgck[pg[i].pgno] : 0;
		x ^= old ^ pg[i].ck;
	}
	if (!snapshot)
		for (uint32_t p = h.commit + 1; p <= db->page_count; p++)
			x ^= db->pgck[p];
	if (h.commit == 0)
		x = 0;
	pthread_mutex_unlock(&db->mu);
	if ((LTX_CHECKSUM_FLAG | x) != tr.post_apply_checksum) {
		log_warn("db '%s': applying LTX %016" PRIx64 "-%016" PRIx64 " would give checksum "
			 "%016" PRIx64 ", not the %016" PRIx64 " it records",
			 db->name, h.min_txid, h.max_txid, LTX_CHECKSUM_FLAG | x,
			 tr.post_apply_checksum);
		r = -EBADMSG;
		goto out;
	}

	/* Install the file: it is the redo record of what follows (start-up
	 * recovery re-applies it over a torn apply). */
	{
		char name[LTX_FILENAME_LEN + 1], path[4096], tmp[4096 + 8], proc[64];
		ltx_format_filename(name, h.min_txid, h.max_txid);
		r = fs_path(path, sizeof(path), "%s/%s", db->ltx_dir, name);
		if (r < 0)
			goto out;
		snprintf(tmp, sizeof(tmp), "%s.tmp", path);
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
		unlink(tmp);
		if (linkat(AT_FDCWD, proc, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW) < 0 ||
		    rename(tmp, path) < 0) {
			r = -errno;
			unlink(tmp);
			goto out;
		}
		if (snapshot) {
			if (flags & DB_APPLY_DIVERGED)
				ltx_orphan_all(db, h.min_txid, h.max_txid);
			else
				ltx_remove_others(db, h.min_txid, h.max_txid);
		}
	}

	/* Pass 2: take SQLite's locks against readers, write the pages. */
	if (hk && hk->lock) {
		r = hk->lock(hk->ctx, db, &token);
		if (r < 0)
			goto out;
		locked = true;
	}
	if (lseek(fd, 0, SEEK_SET) < 0) {
		r = -errno;
		goto out;
	}
	db_lock_settled(db);
	bool settled = false, unlinked = false;
	r = db_settle(db, &settled, &unlinked);
	if (r < 0) {
		pthread_mutex_unlock(&db->mu);
		log_error("db '%s': cannot settle the transaction this node left as primary: %s",
			  db->name, strerror(-r));
		goto out;
	}
	if (h.commit == 0) {
		static const enum db_file kinds[] = {DB_FILE_DB, DB_FILE_JOURNAL, DB_FILE_WAL,
						     DB_FILE_SHM};
		char path[4096];
		for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
			if (db_file_path(db, kinds[i], path, sizeof(path)) == 0)
				fs_unlink_if_exists(path);
		if (db->dbfd >= 0)
			close(db->dbfd);
		db->dbfd = -1;
		dropped = db->exists;
		db->exists = false;
		if (db->pgck)
			memset(db->pgck, 0, ((size_t)db->pgck_cap + 1) * sizeof(*db->pgck));
		db->page_count = 0;
		db->xsum = 0;
	} else if (sc->stagefd >= 0 && !db->exists && db->dbfd < 0) {
		/* A snapshot of a new database: its file was built in pass 1. */
		char from[4096], to[4096];
		r = pgck_reserve(db, h.commit);
		if (r == 0)
			r = fs_path(from, sizeof(from), "%s/database.tmp", db->dir);
		if (r == 0)
			r = db_file_path(db, DB_FILE_DB, to, sizeof(to));
		if (r == 0 && rename(from, to) < 0)
			r = -errno;
		if (r < 0) {
			pthread_mutex_unlock(&db->mu);
			goto out;
		}
		db->dbfd = sc->stagefd;
		sc->stagefd = -1;
		created = true;
		db->exists = true;
		memset(db->pgck, 0, ((size_t)db->pgck_cap + 1) * sizeof(*db->pgck));
		for (size_t k = 0; k < n; k++)
			db->pgck[pg[k].pgno] = pg[k].ck;
		db->page_size = h.page_size;
		db->page_count = h.commit;
		db->xsum = x;
	} else {
		if (!db->exists || db->dbfd < 0) {
			if (db->dbfd < 0)
				r = open_backing(db, DB_FILE_DB, O_RDWR | O_CREAT, 0644, &db->dbfd);
			if (r < 0) {
				pthread_mutex_unlock(&db->mu);
				goto out;
			}
			created = !db->exists;
			db->exists = true;
		}
		r = pgck_reserve(db, h.commit > db->page_count ? h.commit : db->page_count);
		if (r == 0 && lseek(fd, 0, SEEK_SET) < 0)
			r = -errno;
		if (r == 0)
			r = ltx_decoder_new(&dec, ltx_fd_read, &fd);
		size_t i = 0;
		while (r == 0 && (r = ltx_decoder_next_page(dec, &pgno, page)) == 1) {
			r = fs_pwrite_full(db->dbfd, page, h.page_size,
					   (off_t)(pgno - 1) * h.page_size);
			i++;
		}
		if (r == 0 && i != n)
			r = -EIO; /* the file changed between the passes */
		if (r == 0 && ftruncate(db->dbfd, (off_t)h.commit * h.page_size) < 0)
			r = -errno;
		if (r < 0) {
			/* Pages may be half written: refuse further applies until a
			 * restart re-applies the installed file. */
			db->sticky_err = -EIO;
			pthread_mutex_unlock(&db->mu);
			log_error("db '%s': applying LTX %016" PRIx64 "-%016" PRIx64 " failed: %s",
				  db->name, h.min_txid, h.max_txid, strerror(-r));
			goto out;
		}
		if (snapshot || db->page_size != h.page_size)
			memset(db->pgck, 0, ((size_t)db->pgck_cap + 1) * sizeof(*db->pgck));
		for (size_t k = 0; k < n; k++)
			db->pgck[pg[k].pgno] = pg[k].ck;
		for (uint32_t p = h.commit + 1; p <= db->page_count; p++)
			db->pgck[p] = 0;
		db->page_size = h.page_size;
		db->page_count = h.commit;
		db->xsum = x;
	}
	uint32_t old_count = db->page_count;
	db->pos.txid = h.max_txid;
	db->pos.checksum = tr.post_apply_checksum;
	db->pos.timestamp = h.timestamp;
	db->last_epoch = h.epoch;
	db->ltx_unsynced = true;
	pthread_mutex_unlock(&db->mu);
	(void)old_count;

	if (hk && hk->invalidate) {
		if (snapshot || h.commit == 0 || settled)
			hk->invalidate(hk->ctx, db, 0, 0);
		else {
			apply_hooks_invalidate(hk, db, pg, n, h.page_size);
			hk->invalidate(hk->ctx, db, (uint64_t)h.commit * h.page_size, 0);
		}
	}
	if (hk && hk->entries && (created || dropped || unlinked))
		hk->entries(hk->ctx, db);
	if (db->opt.on_change)
		db->opt.on_change(db->opt.change_ctx);
	r = 0;
out:
	if (locked)
		hk->unlock(hk->ctx, db, token, r == 0 && h.commit > 0, h.page_size, h.commit);
	ltx_decoder_free(dec);
	free(page);
	ltx_scan_release(db, sc);
	return r;
}
