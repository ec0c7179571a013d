/*
 * db_int.h - the engine's private header: struct db, the records the db_*.c
 * files hand each other, the prototypes they share, and the few helpers so
 * small and hot that they stay static inline. Not installed: the contract
 * with the rest of ltxfs is include/ltxfs/db.h. The model (what a commit
 * point is in each journal mode, checksums, durability) is the essay at the
 * top of db.c.
 *
 * THE FILES, in the order in which they may call each other: a file calls
 * only files above it in this list, and the static inline helpers at the end
 * of this header (which call only db_ltxout.c and db_commit.c). There is no
 * exception. Calls that leave the engine go through the function pointers
 * the store and the edge installed (db_options.on_change and may_commit, the
 * db_apply_hooks).
 *
 *   db_util.c     the write fence, backing-file paths and opens, whether the
 *                 database exists, the page-checksum array
 *   db_ltxout.c   writing one LTX file; the queue of WAL commits whose files
 *                 are written after the reply; syncfs of the LTX directory
 *   db_ring.c     the LTX ring as the engine uses it: records of prepared
 *                 files, retiring an epoch, and the start-up helpers
 *   db_commit.c   the dirty-page set; one transaction: prepare, apply, abort;
 *                 drops and snapshots of the database file
 *   db_journal.c  rollback-journal modes: the commit point, prepared commits,
 *                 the syncer thread, rolling back a hot journal
 *   db_wal.c      WAL mode: the WAL tail, the frame scan, commit detection in
 *                 the write stream, the map of committed frames
 *   db_recover.c  start-up recovery (db_open), the clean-shutdown checksum file
 *   db_snap.c     what a primary sends: LTX files, streamed snapshots, exports
 *   db_apply.c    what a replica does: apply an LTX file, receive one
 *   db.c          open and free, getters, the public file operations (which
 *                 decide what an operation means and call the files above),
 *                 retention
 *
 * CAPTURE STATES. There is no single state variable: a database is in a
 * combination of the conditions below, each a set of struct db fields read
 * and written under db->mu. Each condition comes with its invariants; the
 * transitions follow, each with the function that performs it.
 *
 *   ABSENT         !exists, dbfd == -1: no database file (a new directory,
 *                  or a dropped database). pos may be non-zero: a dropped
 *                  database keeps its TXID, and its newest LTX file has
 *                  commit 0. No journal, WAL or dirty page is tracked.
 *
 *   IDLE           exists, dbfd open, neither JOURNAL OPEN nor WAL LIVE: no
 *                  transaction that SQLite protects, so a database write is
 *                  refused with EPERM. The dirty-page set is empty, or
 *                  holds only pages that checkpoints rewrote with their
 *                  committed content (they compare equal at the next
 *                  commit point). pgck[1..page_count] and xsum describe the
 *                  committed database, and db_cur_checksum(db) ==
 *                  pos.checksum (whenever pos.txid != 0; after a drop both
 *                  are LTX_CHECKSUM_FLAG).
 *
 *   JOURNAL OPEN   journal_active: SQLite wrote a journal header with the
 *                  magic at offset 0, so a rollback-mode transaction is open
 *                  (db_txn_pending). Database writes are allowed and every
 *                  page they touch is in the dirty-page set (dirty_all when
 *                  the page size was not known yet); tx_synced records an
 *                  fsync by the application. The file may hold uncommitted
 *                  pages while pgck still describes the committed state, so
 *                  snapshots and exports wait for the commit point
 *                  (lock_committed) and db_free saves no checksum file.
 *                  journal_exists just says the file exists (PERSIST and
 *                  TRUNCATE keep it between transactions).
 *
 *   PREPARED       prep != NULL, only inside JOURNAL OPEN, live, with no
 *                  sticky error: at SQLite's fsync of the database the
 *                  transaction's LTX file for TXID pos.txid + 1 was built:
 *                  written (prep->path), or with prep_job only encoded
 *                  (prep->blob), its file to be queued at the commit point;
 *                  with prep_in_ring, copied into the ring at prep_ring_off
 *                  (always so with prep_job). The in-memory state has not
 *                  moved.
 *                  prep_gen == write_gen while no write reached the database
 *                  or journal since; prep_pre is the checksum it was built
 *                  on; prep_synced once the file or its record is durable.
 *                  Its record must be cancelled durably before SQLite can
 *                  roll the transaction back (db_prep_drop).
 *
 *   WAL LIVE       wal_live: the WAL file has bytes (SQLite treats an empty
 *                  WAL as absent), so database writes are allowed: they are
 *                  checkpoints, and go into the dirty-page set like any
 *                  other. wal_exists: the file exists. wal_size and
 *                  wal_gen_end follow every write and truncation; bytes past
 *                  wal_gen_end are stale frames of an earlier generation.
 *
 *   WAL VALID      wal_valid: a valid WAL header was written at offset 0 in
 *                  this generation (walh). Every transaction committed in
 *                  [WAL_HEADER_SIZE, wal_end) is captured: pos includes it
 *                  and its LTX file exists or is queued. (wal_s1, wal_s2) is
 *                  the checksum chain at wal_end. The WAL tail wt[0, wt_len)
 *                  equals the file at [wal_end, wal_end + wt_len), and while
 *                  wt_pins > 0 an overlay points into it, so it is not
 *                  reallocated.
 *
 *   QUEUED         q_head != NULL: WAL commits, or prepared rollback-mode
 *                  commits (a job with blob), applied in memory (pos
 *                  includes them) whose LTX files are not written yet, in
 *                  TXID order, q_bytes of pages. q_busy: one thread is
 *                  writing them, possibly without db->mu. q_err: the last
 *                  attempt failed, and every db_write returns it until a
 *                  retry succeeds. The position advances at the commit;
 *                  whoever needs the LTX files drains the queue first
 *                  (db_queue_settle, db_lock_settled inside the engine,
 *                  db_write_queued_ltx outside it), and on_change fires
 *                  only once a file exists. q_unsynced and
 *                  q_sync_streak only decide when db_write_done drains.
 *
 *   UNSYNCED       ltx_unsynced: LTX files were written without fsync since
 *                  the last syncfs. ring_dirty: the ring holds records of its
 *                  current epoch, each the only durable copy of such a file.
 *                  While both hold, no LTX file is fsynced on its own before
 *                  a syncfs (db_sync_ring_covered), so that no durable file
 *                  follows one that only a record protects. ring_failed: the
 *                  ring is not used again and prepared files are fsynced.
 *
 *   STICKY ERROR   sticky_err != 0: capture lost step with SQLite, or pages
 *                  of an apply are half written. db_write and db_truncate
 *                  (but not of -shm) return it, no commit is prepared,
 *                  snapshots and exports fail with it (lock_committed), and
 *                  db_free saves no checksum file. Only a restart leaves it:
 *                  start-up recovery reconciles the files with the LTX chain.
 *                  (db_apply_ltx does not check it.)
 *
 *   RECOVERING     !live: db_open's recovery is running on one thread; the
 *                  fence is not asked and no commit is prepared. live from
 *                  then on, for the life of the struct db.
 *
 * Transitions:
 *
 *   RECOVERING   -> ABSENT or IDLE   db_open (db_recover, then live = true)
 *   ABSENT       -> IDLE             db_open_file (database, O_CREAT);
 *                                    db_apply_scanned (the first file of a
 *                                    database, or a snapshot of a new one)
 *   any          -> ABSENT           db_unlink (database), after
 *                                    db_commit_drop; db_apply_scanned
 *                                    (a commit-0 file)
 *   IDLE         -> JOURNAL OPEN     db_write (journal, magic at offset 0)
 *   JOURNAL OPEN -> PREPARED         db_fsync (database) -> db_prep_build
 *   PREPARED     -> JOURNAL OPEN     db_prep_drop: from db_fsync (written to
 *                                    since, or the sync failed), from
 *                                    db_journal_commit (not usable any
 *                                    more), db_apply_scanned, db_free
 *   JOURNAL OPEN -> IDLE             the commit point: db_journal_commit
 *   (or PREPARED)                    (using the prepared file when
 *                                    db_prep_usable), from db_unlink
 *                                    (journal), db_truncate (journal, 0),
 *                                    db_open_file (journal, O_TRUNC),
 *                                    db_write (journal, offset 0, no magic);
 *                                    also db_settle (a replica rolls back a
 *                                    transaction the fence refused) and
 *                                    db_unlink (database)
 *   IDLE         -> WAL LIVE         db_write (wal, n > 0); db_open_file
 *                                    (wal) of a non-empty file
 *   WAL LIVE     -> WAL VALID        db_wal_write (a WAL header at offset
 *                                    0), after db_sync_ltx
 *   WAL VALID    -> WAL VALID        db_wal_write (a frame completes a
 *                                    commit): db_wal_prepare, the write,
 *                                    db_tx_apply or db_tx_apply_queued,
 *                                    wal_advance
 *   WAL VALID    -> WAL LIVE, IDLE   db_wal_reset, after db_sync_ltx: from
 *                                    db_truncate (wal, below wal_end or to
 *                                    0), db_open_file (wal, O_TRUNC),
 *                                    db_unlink (wal or database), db_settle
 *   -> QUEUED                        db_tx_apply_queued (db_wal_write, a
 *                                    commit under DB_QUEUE_MAX_BYTES while
 *                                    less than DB_QUEUE_LIMIT is queued);
 *                                    db_journal_commit (a prepared commit
 *                                    with prep_job)
 *   QUEUED       -> empty            db_queue_drain: from db_write_done
 *                                    after the reply, db_write_queued_ltx
 *                                    when a caller needs the files, or
 *                                    db_queue_settle wherever the queue
 *                                    must be empty
 *   -> UNSYNCED                      db_queue_drain, db_tx_prepare without
 *                                    sync, db_apply_scanned; ring_dirty:
 *                                    db_ring_put
 *   UNSYNCED     -> synced           db_sync_ltx (syncfs); ring_dirty off:
 *                                    db_ring_retire, db_ring_recover
 *   any          -> STICKY ERROR     db_wal_write (SQLite rewound the WAL
 *                                    below a captured commit), db_prep_drop
 *                                    (a ring record could not be
 *                                    cancelled), db_apply_scanned (a page
 *                                    write failed)
 *
 * LOCKS. db->mu guards every field of struct db but these: dir, name,
 * ltx_dir, ltx_dirfd, opt and dirsync are fixed by db_open; idx is set by
 * the store before the database is shared; st_writes, st_commits,
 * st_removed and snap_locked are atomics. Three things happen with db->mu
 * let go in the middle of a state change, and each has its guard: the
 * queue writer (q_busy, others wait on q_cond), a commit waiting for the
 * queue inside db_tx_prepare (wt_pins keeps the WAL tail in place), and
 * db_fsync's own fsync while the syncer thread runs (write_gen tells
 * whether the prepared commit is still good afterwards).
 */

#ifndef LTXFS_DB_INT_H
#define LTXFS_DB_INT_H

#include "ltxfs/db.h"
#include "ltxfs/crc.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/ltx.h"
#include "ltxfs/ltxring.h"
#include "ltxfs/sqlfmt.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

struct syncer; /* db_journal.c */

/* LTX CACHE (db_ltxcache.c): files and bytes held per database, largest file held */
#define DB_LTX_CACHE_FILES    1024u
#define DB_LTX_CACHE_BYTES    (8u << 20)
#define DB_LTX_CACHE_FILE_MAX (1u << 20)
struct wbuf; /* db_ltxout.c */

/*
 * One database, from db_open to db_free. Every field is read and written
 * under mu except those named under LOCKS above; CAPTURE STATES says which
 * combinations of them are valid.
 */
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
	/* the journal db_unlink removed, held open (O_PATH) so that the inode is
	 * evicted, its blocks freed (and discarded), after the reply: by
	 * db_write_done. -1 when none. */
	int evict_fd;
	uint32_t page_size;
	uint32_t page_count; /* committed size in pages */
	uint64_t *pgck;	     /* [pgno] committed page checksum, index 0 unused */
	uint32_t pgck_cap;   /* entries allocated minus one */
	uint64_t xsum;	     /* XOR of pgck[1..page_count] */
	/* POSITION: written under db->mu with db_pos_set, read without it by
	 * db_get_pos (a seqlock: pos_seq is odd while a write is under way) */
	struct db_pos pos;
	uint32_t pos_seq;
	/* VISIBLE POSITION (db.c), under db->mu: while pos_held, the -pos file
	 * shows pos_vis, the position before an apply that still holds SQLite's
	 * locks; otherwise pos itself */
	bool pos_held;
	struct db_pos pos_vis;
	/* OVERLAPPING FILES (db_apply.c), under db->mu: an LTX file that began
	 * before this position did not lead to the primary's state, so this
	 * node's history is not the primary's: ask for a snapshot */
	bool want_snapshot;
	struct db_backup bk; /* backups' state (db_set_backup), not the engine's */

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
	/* the WAL bytes at [wal_end, wal_end + wt_len), as in the file (WAL TAIL, db_wal.c) */
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
	uint64_t st_grouped; /* commits written in range files of several (atomic) */
	uint64_t st_prep_used, st_ring_records; /* db_stats diagnostics (db->mu) */

	/* LTX files of WAL commits not written yet (QUEUED LTX FILES, db_ltxout.c) */
	struct ltxjob *q_head, *q_tail;
	size_t q_bytes;	    /* page bytes queued */
	bool q_busy;	    /* a thread is writing q_head */
	size_t q_len;	    /* commits queued */
	int64_t q_since_ns; /* monotonic: when the oldest queued commit was queued */
	int q_err;	    /* the last attempt failed: the error the next write reports */
	/* written WAL commits kept for the streams (STREAMED FROM MEMORY, db_ltxout.c) */
	struct ltxjob **r_ring; /* DB_RETAIN_MAX slots, oldest at r_first; NULL until needed */
	size_t r_first, r_len, r_bytes;
	struct db_ltx_blob *r_last; /* the last range encoded, for the next stream that asks */

	/* a rollback-mode commit built at the database fsync (PREPARED COMMITS, db_journal.c) */
	struct txrec *prep; /* NULL when none */
	bool prep_synced;
	uint64_t prep_gen, prep_pre;
	uint64_t write_gen; /* writes to the database and journal files */
	bool prep_in_ring;  /* a copy of db->prep's file is the ring record at prep_ring_off */
	uint64_t prep_ring_off;
	/* db->prep's file when it is not written yet: queued at the commit point */
	struct ltxjob *prep_job;
	struct ltx_ring *ring; /* durable copies of prepared files (LTX RING); NULL until used */
	bool ring_dirty;       /* the ring holds records of its current epoch */
	bool ring_failed;      /* the ring could not be created or reset: not used again */
	bool ring_warned;      /* a ring failure was logged: prepared files are fsynced */
	struct syncer *syncer;
	bool snap_locked;	/* the next snapshot is built under the lock (atomic) */
	bool q_unsynced;	/* the newest commit was queued and the WAL not fsync'ed since */
	unsigned q_sync_streak; /* commits in a row followed by an fsync of the WAL */
	pthread_cond_t q_cond;

	/* the newest committed LTX files in memory (LTX CACHE, db_ltxcache.c), under lc_mu */
	pthread_mutex_t lc_mu;
	struct db_ltx_blob *lc[DB_LTX_CACHE_FILES]; /* a ring: lc_n from lc_first, TXID order */
	size_t lc_first, lc_n, lc_bytes;
};

/* --------------------------------------------- a transaction (db_commit.c) */

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
	char path[4096];	  /* the LTX file written, "" when it is queued */
	struct db_ltx_blob *blob; /* its bytes, published by db_tx_apply (LTX CACHE) */
};

/* ------------------------------------------------ LTX output (db_ltxout.c) */

struct ltx_out {
	struct wbuf *w;
	struct db_ltx_blob *blob; /* the file's bytes once ltx_out_end succeeded, or NULL */
	struct ltx_encoder *enc;
	char path[4096];
	struct ltx_header h;
};

/* A WAL-mode commit of at most this many bytes of pages is queued (QUEUED LTX
 * FILES, db_ltxout.c). */
#define DB_QUEUE_MAX_BYTES (1u << 20)
/* Most written WAL commits, and their bytes of pages, kept in memory for the
 * streams while replicas follow (STREAMED FROM MEMORY, db_ltxout.c): enough to
 * cover the time between the queue writer and the sender (a few ms), small
 * enough for thousands of databases. */
#define DB_RETAIN_MAX	    256
#define DB_RETAIN_MAX_BYTES (1u << 20)
/* Most queued commits one range file holds (GROUP COMMIT, db_ltxout.c). */
#define DB_GROUP_MAX 256
/* After a reply, queued commits wait to share a file until there are this many,
 * this many bytes of pages, or the oldest waited this long (GROUP COMMIT). */
#define DB_GROUP_DEFER	     32
#define DB_GROUP_DEFER_BYTES (256u << 10)
#define DB_GROUP_DEFER_NS    10000000
/* Beyond this much queued, commits write their files themselves (backpressure). */
#define DB_QUEUE_LIMIT (8u << 20)

/* A queued commit: its LTX file, to be written by db_queue_drain. */
struct ltxjob {
	struct ltxjob *next;
	struct ltx_header h;
	uint64_t post;
	size_t n;
	uint32_t *pgnos;
	uint64_t *crcs; /* ltx_page_crc of each page, folded into the file checksum */
	uint8_t *img;	/* n pages of h.page_size bytes */
	/* or, with n 0: a prepared rollback-mode commit's file, encoded already
	 * (its bytes are in the ring and the LTX cache), written as it is and
	 * never grouped with others */
	struct db_ltx_blob *blob;
};

/* ---------------------------------------------------------- WAL (db_wal.c) */

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

/* A transaction found in the WAL (wal_scan_tx). */
struct wal_tx {
	uint64_t start, end;
	uint32_t commit;
	uint32_t s1, s2;
	struct txpage *pages;
	size_t n, cap;
};

/* ------------------------------------------------ the LTX ring (db_ring.c) */

/* The ring's records, read at start-up (LTX RING at start-up, db_ring.c). */
struct ring_recs {
	struct ltx_ring_record *v;
	size_t n, cap;
	uint8_t *img; /* the ring file, which v[].ltx points into */
};

/*
 * Functions shared between the db_*.c files, by the file that defines them,
 * in the call order above. Unless a line says otherwise, the caller holds
 * db->mu (or is db_open's thread during recovery). Each definition has the
 * full comment.
 */

/* db_util.c */
int db_fence(struct db *db, uint64_t *epoch); /* 0 with the epoch, or -EROFS */
int pgck_reserve(struct db *db, uint32_t npages);
int db_ltx_file_open(struct db *db, uint64_t min_txid, uint64_t max_txid); /* fd or -errno */
/* Forget the written commits kept for the streams (db->mu held). */
void db_retained_drop(struct db *db);
/* min-min or a range min-max; with covering, else the file whose range holds min_txid */
int db_ltx_file_open_min(struct db *db, uint64_t min_txid, bool covering);
int open_backing(struct db *db, enum db_file kind, int flags, mode_t mode, int *ret_fd);

/* db_ltxout.c */
int ltx_out_begin(struct db *db, struct ltx_out *o, const struct ltx_header *h);
void ltx_out_abort(struct ltx_out *o);
int ltx_out_end(struct db *db, struct ltx_out *o, uint64_t post, bool sync);
int db_sync_ltx(struct db *db); /* drain the queue, then syncfs if anything is unsynced */
int db_queue_drain(struct db *db, bool unlock);
void db_queue_push(struct db *db, struct ltxjob *j);		     /* append in TXID order */
int ltxjob_encode(const struct ltxjob *j, struct db_ltx_blob **ret); /* in memory */
int ltx_blob_write(struct db *db, const struct db_ltx_blob *b, char *path, size_t size);

/* db_ltxcache.c: publish (takes the reference), drop files up to max_txid,
 * drop all; lc_mu only */
struct db_ltx_blob *db_ltx_blob_new(const struct ltx_header *h, size_t len);
void db_ltx_cache_put(struct db *db, struct db_ltx_blob *b);
void db_ltx_cache_trim(struct db *db, uint64_t max_txid);
void db_ltx_cache_clear(struct db *db);

/* db_ring.c */
/* 0: in the ring; 1: sync the file. Copies t->blob, or else reads t->path. */
int db_ring_put(struct db *db, const struct txrec *t);
int db_ring_retire(struct db *db);
int db_ring_load(struct db *db, struct ring_recs *rs); /* start-up */
void ring_recs_release(struct ring_recs *rs);
int ring_repair(struct db *db, const struct ring_recs *rs, uint64_t mn, uint64_t mx, bool any_pre,
		uint64_t prev_post, struct ltx_header *h, struct ltx_trailer *t);
int db_ring_recover(struct db *db, const struct ring_recs *rs, struct ltx_header *lh,
		    struct ltx_trailer *lt);

/* db_commit.c */
void dirty_clear(struct db *db);
int dirty_grow_bits(struct db *db, uint32_t pgno); /* for dirty_add */
int dirty_grow_list(struct db *db);		   /* for dirty_add */
size_t txpages_normalize(struct txpage *p, size_t n);
int db_tx_prepare(struct db *db, struct txpage *pages, size_t n, uint32_t commit,
		  const struct page_src *src, const struct walinfo *wi, bool snapshot, bool sync,
		  struct txrec *t, struct ltxjob **ret_job);
void db_tx_apply(struct db *db, struct txrec *t);
/* Set db->pos (POSITION in db.c); db->mu held. */
void db_pos_set(struct db *db, uint64_t txid, uint64_t checksum, int64_t timestamp);
/* VISIBLE POSITION (db.c): db_pos_hold with db->mu held, before the first
 * db_pos_set of an apply that holds SQLite's locks; db_pos_release without
 * db->mu, once they are released. */
void db_pos_hold(struct db *db);
void db_pos_release(struct db *db);
void db_tx_abort(struct txrec *t);
int db_commit_pages(struct db *db, struct txpage *pages, size_t n, uint32_t commit,
		    const struct page_src *src, const struct walinfo *wi, bool snapshot, bool sync,
		    bool *ret_written);
int src_dbfile(void *ctx, const struct txpage *p, uint8_t *buf); /* page source: database */
int db_commit_drop(struct db *db);
int db_commit_snapshot_from_file(struct db *db, uint32_t count, bool sync);

/* db_journal.c */
int db_journal_commit(struct db *db); /* the rollback-mode commit point */
void db_prep_drop(struct db *db);
int db_prep_build(struct db *db, bool *dirsync);
struct syncer *db_syncer(struct db *db);
void syncer_start(struct syncer *sy, int fd, bool dirsync); /* without db->mu */
int syncer_wait(struct syncer *sy);			    /* without db->mu */
void syncer_free(struct syncer *sy);			    /* NULL ok; without db->mu */
int db_recover_journal(struct db *db, bool *ret_touched);

/* db_wal.c */
int wal_read(int fd, const struct overlay *ov, void *dst, size_t len, off_t off);
int src_wal(void *ctx, const struct txpage *p, uint8_t *buf); /* page source: WAL */
int wal_scan_tx(const struct wal_header *wh, int fd, const struct overlay *ov, uint64_t start,
		uint32_t s1, uint32_t s2, struct wal_tx *tx);
int db_wal_write(struct db *db, int fd, const uint8_t *buf, size_t n, off_t off);
/* The map and the WAL's descriptor; 0 and no map when nothing is committed; -errno. */
int wal_frame_map(struct db *db, uint64_t **ret);

/* db_recover.c */
int db_recover(struct db *db);	      /* db_open's thread */
int db_save_checksums(struct db *db); /* db_free, after the last operation */

/*
 * Static inline helpers: on the write path once per write, per transaction
 * or per page, where they were inlined before the engine was split into
 * files; they call only db_ltxout.c and db_commit.c.
 */

/* The checksum of the committed database (db.c, CHECKSUMS). */
static inline uint64_t db_cur_checksum(const struct db *db)
{
	return LTX_CHECKSUM_FLAG | db->xsum;
}

/* Read page pgno of the database file; bytes past EOF read as zeros. */
static inline int read_db_page(struct db *db, uint32_t pgno, uint8_t *buf)
{
	ssize_t r = fs_pread_full(db->dbfd, buf, db->page_size, (off_t)(pgno - 1) * db->page_size);
	if (r < 0)
		return (int)r;
	if ((size_t)r < db->page_size)
		memset(buf + r, 0, db->page_size - (size_t)r);
	return 0;
}

/* db->mu held: make sure no commit is queued. 0 or the write error. */
static inline int db_queue_settle(struct db *db)
{
	if (db->q_head || db->q_busy)
		return db_queue_drain(db, false);
	return 0;
}

/* Lock db->mu with every queued LTX file written (as far as possible). */
static inline void db_lock_settled(struct db *db)
{
	pthread_mutex_lock(&db->mu);
	db_queue_settle(db);
}

/*
 * db->mu held, before an LTX file is made durable on its own: files whose
 * durability is only a copy in the LTX ring must not end up behind a durable
 * one, or after a power loss recovery would discard the durable file with a
 * torn one before it. syncfs covers them (and that file, once written).
 */
static inline int db_sync_ring_covered(struct db *db)
{
	return db->ring_dirty && db->ltx_unsynced ? db_sync_ltx(db) : 0;
}

/* A new reference to b (refcounted, db_ltxcache.c). */
static inline struct db_ltx_blob *db_ltx_blob_ref(struct db_ltx_blob *b)
{
	__atomic_add_fetch(&b->refs, 1, __ATOMIC_RELAXED);
	return b;
}

/* Make j a job whose file is written from b (a reference taken): its page
 * images are not needed any more. */
static inline void ltxjob_set_blob(struct ltxjob *j, struct db_ltx_blob *b)
{
	free(j->pgnos);
	free(j->crcs);
	free(j->img);
	j->pgnos = NULL;
	j->crcs = NULL;
	j->img = NULL;
	j->n = 0;
	j->blob = db_ltx_blob_ref(b);
}

/* NULL ok. Every commit calls it (db_tx_prepare), most with NULL. */
static inline void ltxjob_free(struct ltxjob *j)
{
	if (!j)
		return;
	free(j->pgnos);
	free(j->crcs);
	free(j->img);
	db_ltx_blob_unref(j->blob);
	free(j);
}

/* Bytes a queued commit holds (q_bytes). */
static inline size_t ltxjob_bytes(const struct ltxjob *j)
{
	return j->blob ? j->blob->len : j->n * j->h.page_size;
}

/* Forget the WAL's contents: a new generation must begin with a header. */
static inline void db_wal_reset(struct db *db)
{
	db->wal_valid = false;
	db->wal_end = 0;
	db->wt_len = 0;
}

/*
 * Add page pgno to the dirty-page set (db_commit.c). On every write to the
 * database file; the set grows out of line.
 */
static inline int dirty_add(struct db *db, uint32_t pgno)
{
	int r;
	if (pgno >= db->dirty_bits_cap && (r = dirty_grow_bits(db, pgno)) < 0)
		return r;
	uint64_t bit = UINT64_C(1) << (pgno % 64);
	if (db->dirty_bits[pgno / 64] & bit)
		return 0;
	if (db->n_dirty == db->cap_dirty && (r = dirty_grow_list(db)) < 0)
		return r;
	db->dirty[db->n_dirty++] = pgno;
	db->dirty_bits[pgno / 64] |= bit;
	return 0;
}

#endif
