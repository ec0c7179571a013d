/*
 * db.h - one replicated SQLite database: its data directory, commit capture
 * into LTX files, and crash recovery (core layer). See src/core/db.c for the
 * design essay, src/core/db_int.h for the engine's files and capture states,
 * and docs/architecture.md for the safety argument.
 *
 * Threads: every function may be called from any FUSE worker thread; each
 * takes db->mu internally for as long as it needs (db_enforce_retention only
 * lists and unlinks files and needs no lock) and never calls out to FUSE, HTTP
 * or the network. Functions return 0 (or a count) or -errno.
 *
 * Ownership: a struct db is created by db_open() and freed by db_free() (NULL
 * ok); the store owns every db and frees them at shutdown. File descriptors
 * returned by db_open_file() belong to the caller, who closes them.
 */
#ifndef LTXFS_DB_H
#define LTXFS_DB_H

#include "ltxfs/ltx.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

enum db_file {
	DB_FILE_DB = 0,	 /* <name>            -> dbs/<name>/database */
	DB_FILE_JOURNAL, /* <name>-journal    -> dbs/<name>/journal */
	DB_FILE_WAL,	 /* <name>-wal        -> dbs/<name>/wal */
	DB_FILE_SHM,	 /* <name>-shm        -> dbs/<name>/shm */
	DB_FILE_POS,	 /* <name>-pos        virtual, 34 bytes */
	DB_FILE_N
};

struct db_options {
	bool compress;	       /* LZ4 page blocks in LTX files (data.compress) */
	uint64_t node_id;      /* written into every LTX header */
	const char *mount_dir; /* fuse.dir: resolves super-journal paths (may be NULL) */
	/*
	 * Start-up as a replica: a database that matches neither its last LTX
	 * file's pre- nor post-apply state but becomes the post-apply state when
	 * that file is re-applied was torn mid-apply; re-apply it. (On a primary
	 * such a database changed outside ltxfs and is kept as a new snapshot.)
	 */
	bool replica;
	/* Called (under the database's lock, so it must only signal) after every
	 * change of position: a commit, a drop, an applied LTX file. */
	void (*on_change)(void *ctx);
	void *change_ctx;
	/*
	 * The write fence (called with change_ctx under the database's lock at
	 * every commit point that would write an LTX file, after start-up
	 * recovery): true when this node may commit now, with the lease epoch
	 * to record in the LTX header. False refuses the commit-point operation
	 * with EROFS, so nothing commits on a node whose lease may be gone.
	 * NULL: always allowed, epoch 0.
	 */
	bool (*may_commit)(void *ctx, uint64_t *epoch);
	/*
	 * The number of replica streams this node serves (a counter the store
	 * keeps, read atomically; NULL: none). While it is not zero, the pages
	 * of WAL-mode commits whose LTX files were written stay in memory a
	 * while, for db_ltx_encode_queued (STREAMED FROM MEMORY, db_ltxout.c).
	 */
	const unsigned *followers;
};

struct db_pos {
	uint64_t txid;
	uint64_t checksum; /* post-apply checksum of txid; 0 when txid == 0 */
	int64_t timestamp; /* ms, of the last LTX file; 0 if none */
};

struct db;

/*
 * Open (and create when create is true) the database directory dir (that is
 * dbs/<name>) and run crash recovery: discard torn LTX files, roll back a hot
 * journal, turn committed WAL frames beyond the last LTX file into LTX files,
 * checkpoint the WAL into the database file, and check the database against
 * the last LTX file (see db_recover.c). Called by the store: at start-up
 * before the mount exists, and from a FUSE worker when a new database is
 * created.
 */
int db_open(struct db **ret, const char *dir, const char *name, bool create,
	    const struct db_options *opt);
/*
 * Clean shutdown: make every LTX file durable and persist the per-page
 * checksums so that the next start skips the full re-checksum. NULL ok.
 */
void db_free(struct db *db);

const char *db_name(const struct db *db);
/* A stable small integer the store assigns (the FUSE layer derives inode numbers from it). */
void db_set_index(struct db *db, size_t idx);
size_t db_index(const struct db *db);
/*
 * The position after the last committed transaction. A pure getter that
 * never waits for db->mu (a seqlock, db.c) and writes nothing, so a
 * WAL-mode commit's LTX file may still be queued (db_write_queued_ltx). Any
 * thread.
 */
void db_get_pos(struct db *db, struct db_pos *ret);
/*
 * The position the -pos file shows: db_get_pos's, except while a replica's
 * apply that moved it still holds SQLite's locks, when it is the position
 * before that apply; so a transaction the -pos file shows is readable
 * without waiting for a lock. Takes db->mu. Any thread.
 */
void db_get_visible_pos(struct db *db, struct db_pos *ret);
/*
 * Write the LTX files of WAL-mode commits that are still queued, on the
 * calling thread. Their committing FUSE worker normally writes them right
 * after its reply (db_write_done); a caller that needs every committed
 * transaction's file to exist now calls this first: the -pos file's read,
 * the stream before it sends a database's next file. db->mu is let go while
 * each file is compressed and written (a queue owner flag keeps the order);
 * the call returns once the queue is empty. 0, or the write error (then
 * writes to the database fail until a retry succeeds; the error is logged
 * once here). Any thread, db->mu not held.
 */
int db_write_queued_ltx(struct db *db);
/* Format the -pos file content: "%016x/%016x\n" (34 bytes) into buf[35]. */
void db_format_pos(const struct db_pos *pos, char buf[35]);
/* True while the database file exists (a dropped database keeps its TXID). */
bool db_exists(struct db *db);

/* stat() of the backing file of kind; -ENOENT when it does not exist. */
int db_stat_file(struct db *db, enum db_file kind, struct stat *st);
/*
 * Open the backing file of kind with open(2) flags (O_CREAT/O_EXCL/O_TRUNC
 * honoured). O_TRUNC on a journal is a commit point; on a WAL it is a reset.
 * A write-only open of a journal, WAL or -shm gets a read-write descriptor
 * (db_write reads WAL frames back through it).
 */
int db_open_file(struct db *db, enum db_file kind, int flags, mode_t mode, int *ret_fd);
/*
 * Write n bytes at off through fd (a descriptor from db_open_file), capturing
 * commits: see src/core/db.c (THE MODEL) and db_int.h. Returns 0 or -errno (-EPERM for a database
 * write outside any journal or WAL transaction, e.g. journal_mode=OFF/MEMORY or a non-SQLite file).
 */
int db_write(struct db *db, enum db_file kind, int fd, const void *buf, size_t n, off_t off);
/*
 * Call after replying to a write or an fsync of a WAL, from the same
 * thread: writes the LTX files of WAL-mode commits that db_write queued
 * (db_ltxout.c, QUEUED LTX FILES), so their creation is not part of the
 * write's latency. Errors are logged here and reported by the next db_write.
 */
void db_write_done(struct db *db);
/* ftruncate semantics (fd may be -1). Truncating a journal to 0 is a commit point. */
int db_truncate(struct db *db, enum db_file kind, int fd, off_t size);
/* unlink semantics. Unlinking the journal is a commit point; the database: drop. */
int db_unlink(struct db *db, enum db_file kind);
/* fsync/fdatasync of fd; also notes that the application asked for durability. */
int db_fsync(struct db *db, enum db_file kind, int fd, bool datasync);

/* Path of the backing file of kind into buf. */
int db_file_path(struct db *db, enum db_file kind, char *buf, size_t n);

/*
 * Delete LTX files last modified before cutoff_ms (ms since the epoch),
 * never the newest one and never one whose max TXID is above keep_after (a
 * connected replica still needs it; UINT64_MAX when none does). Returns the
 * number deleted or -errno.
 */
int db_enforce_retention(struct db *db, int64_t cutoff_ms, uint64_t keep_after);

/* ---- replication (primary side) ---- */

struct ltx_header;
struct ltx_trailer;
/*
 * Open the LTX file whose TXIDs start at min_txid (a one-transaction file
 * "min-min.ltx", or a range "min-max.ltx" that group commit wrote; *ret_h
 * says which), verified in full and rewound. It calls db_write_queued_ltx
 * first, so a committed transaction's file is found even while queued. -ENOENT when retention
 * removed it; -EBADMSG when it does not verify. The caller closes *ret_fd.
 */
int db_ltx_open(struct db *db, uint64_t min_txid, int *ret_fd, struct ltx_header *ret_h,
		struct ltx_trailer *ret_t);
/*
 * The same, for a replica at TXID txid - 1: the file that starts at txid,
 * else the range file that holds txid (its min TXID is lower; the replica
 * applies it over what it has, OVERLAPPING FILES in db_apply.c).
 */
int db_ltx_open_covering(struct db *db, uint64_t txid, int *ret_fd, struct ltx_header *ret_h,
			 struct ltx_trailer *ret_t);
/*
 * The newest committed LTX files, kept in memory as written (LTX CACHE,
 * src/core/db_ltxcache.c), so a replica stream sends a transaction without
 * opening, reading or verifying its file. A blob is immutable and
 * refcounted: db_ltx_cached returns 0 with a new reference to the file
 * whose TXIDs start at min_txid, or -ENOENT when it is not held (then
 * db_ltx_open reads it from disk); the caller drops the reference with
 * db_ltx_blob_unref (NULL ok). Any thread; takes only the cache's own lock.
 */
struct db_ltx_blob {
	unsigned refs;	     /* atomic */
	struct ltx_header h; /* as in data */
	uint64_t post;	     /* the trailer's post-apply checksum */
	size_t len;	     /* bytes of data: the whole file */
	uint8_t data[];
};
int db_ltx_cached(struct db *db, uint64_t min_txid, struct db_ltx_blob **ret);
void db_ltx_blob_unref(struct db_ltx_blob *b);
/*
 * The transactions from txid on, encoded from memory as one LTX range file
 * that ends at the newest commit this node holds in memory (STREAMED FROM
 * MEMORY, db_ltxout.c): WAL-mode commits whose files are queued, or were
 * written while replicas followed. No file is created: the range need not
 * match this node's files, whose boundaries group commit chooses (a replica
 * that later resumes inside one of them is sent the file that covers its
 * position, db_ltx_open_covering). Returns 0 with a new reference in *ret
 * (db_ltx_blob_unref), or -ENOENT when txid's commit is not held (a prepared
 * rollback-mode commit, an older one, one that no longer chains to the
 * position): then read the files. Takes db->mu. Any thread.
 */
int db_ltx_encode_queued(struct db *db, uint64_t txid, struct db_ltx_blob **ret);
/*
 * A snapshot streamed while it is built (db_snap.c, STREAMED SNAPSHOTS):
 * always uncompressed, so its length is known from the start. db_snap_start returns
 * once the header is fixed (-ENOENT: nothing committed yet); db_snap_info
 * gives the final length, the header and the post-apply checksum;
 * db_snap_read blocks until bytes are ready and returns up to max of them in
 * order, or the build's error (-EAGAIN: the database changed under an
 * optimistic build; the next snapshot takes the lock). db_snap_free stops a
 * build still running and joins it. One thread uses a db_snap at a time.
 *
 * Without waiting, for a thread that serves others meanwhile (the replica
 * streams' sender): db_snap_begin starts the build and returns at once;
 * the builder thread calls notify(ctx) when the header is fixed, when bytes
 * become ready and when the build ends; a build under the lock calls it
 * with db->mu held, so notify must not wait for anything (store_on_change
 * is one atomic increment and a futex wake).
 * db_snap_header returns 1 once the header is fixed (db_snap_info may then
 * be called), 0 before, or the build's error (-ENOENT as above).
 * db_snap_read_some returns the bytes ready now, up to max, or 0 when none
 * are yet, or the build's error.
 */
struct db_snap;
int db_snap_start(struct db *db, struct db_snap **ret);
int db_snap_begin(struct db *db, void (*notify)(void *ctx), void *ctx, struct db_snap **ret);
int db_snap_header(struct db_snap *sn);
ssize_t db_snap_read_some(struct db_snap *sn, void *buf, size_t max);
void db_snap_info(const struct db_snap *sn, uint64_t *size, struct ltx_header *h, uint64_t *post);
ssize_t db_snap_read(struct db_snap *sn, void *buf, size_t max);
void db_snap_free(struct db_snap *sn);

/*
 * Write a consistent copy of the committed database, as a plain SQLite file
 * (rollback-mode header), into fd at offset 0 (GET /export). Holds the
 * database lock while it copies; every page is checked against its committed
 * checksum. -ENOENT for a database with no pages. *ret_pos: the position copied.
 */
int db_export(struct db *db, int fd, struct db_pos *ret_pos);

/* ---- whole-file writes (db_install.c) ---- */

/*
 * Check that fd holds a whole SQLite database: magic, page size, file format
 * versions, a size that is a non-zero multiple of the page size and equal to
 * the header's page count when that count is valid. 0 with the page size and
 * count, -EINVAL with *why (a static string) naming what is wrong, or the
 * read's -errno.
 */
int db_install_validate(int fd, uint32_t *ret_page_size, uint32_t *ret_npages, const char **why);
/*
 * Build the LTX file that replaces the committed database with the content
 * of srcfd as one transaction (validated first, as above; -EROFS when the
 * fence refuses). The caller holds SQLite's locks through the mount and
 * applies the file with db_apply_ltx, then closes *ret_ltxfd. A FUSE worker.
 */
int db_install_build(struct db *db, int srcfd, int *ret_ltxfd, const char **why);

/* ---- replication (replica side) ---- */

/* An anonymous file in the database's ltx directory to receive an LTX file into. */
int db_ltx_tmpfile(struct db *db, int *ret_fd);
/* True when the database file's header says WAL mode (bytes 18/19 == 2). */
bool db_wal_mode(struct db *db);
/*
 * True after a file that covered this node's position (OVERLAPPING FILES,
 * db_apply.c) did not lead to the primary's state: this node's history is
 * not the primary's, and it should ask for a snapshot (a replica leaves the
 * database out of its positions). Cleared by the next apply. Any thread.
 */
bool db_wants_snapshot(struct db *db);

/*
 * What the edge does around an apply: lock() takes SQLite's own locks
 * against readers (through the mount) before the first page is written;
 * invalidate() drops kernel-cached file data in [off, off+len) (len 0: to the
 * end) and the cached attributes; entries() drops cached directory entries
 * after the database appeared or disappeared; unlock() updates the
 * wal-index header for WAL readers (when ok) and releases the locks. lock()
 * and unlock() are called without the database lock held.
 */
struct db_apply_hooks {
	int (*lock)(void *ctx, struct db *db, void **token);
	void (*invalidate)(void *ctx, struct db *db, uint64_t off, uint64_t len);
	void (*entries)(void *ctx, struct db *db);
	void (*unlock)(void *ctx, struct db *db, void *token, bool ok, uint32_t page_size,
		       uint32_t npages);
	void *ctx;
};

#define DB_APPLY_DIVERGED 0x1u /* a snapshot replacing a diverged history: keep the old files */

/*
 * Apply the LTX file in fd (a replica receiving from its primary). Nothing
 * is written before the whole file verified: its checksums, its place in the
 * chain (a non-snapshot must start at this position, or begin before it and
 * end after it: OVERLAPPING FILES in db_apply.c, installed as the part it
 * adds) and the post-apply checksum the pages produce. Then the file is
 * installed in ltx/ (a snapshot
 * removes the older files, or with DB_APPLY_DIVERGED moves them to
 * orphaned/<ms>/), the pages are written under hk's locks, and the
 * position advances. Returns 0, -ESTALE (not the next file in the chain),
 * -EBADMSG (corrupt), or another -errno.
 */
int db_apply_ltx(struct db *db, int fd, uint32_t flags, const struct db_apply_hooks *hk);

/*
 * Apply n LTX files held in memory that follow one another (files[0]
 * continues this node's position, each next one the one before), as one:
 * every file is verified and its place in the chain and its post-apply
 * checksum checked before anything changes, each is written under its name
 * in ltx/, and the pages of all are written under one acquisition of hk's
 * locks (BATCHES in db_apply.c). A batch holding a snapshot, a drop or a new
 * page size is applied one file at a time. At most DB_APPLY_BATCH_MAX files
 * (-EINVAL beyond). Returns 0 with all applied, or the error of
 * db_apply_ltx: a file that does not verify or does not follow fails the
 * batch and nothing of it is applied (applied one at a time, the files
 * before it stay applied). The buffers stay the caller's.
 */
struct db_ltx_buf {
	const uint8_t *data;
	size_t len;
};
#define DB_APPLY_BATCH_MAX 256 /* most files in one batch (start-up recovery relies on it) */
int db_apply_ltx_batch(struct db *db, const struct db_ltx_buf *files, size_t n,
		       const struct db_apply_hooks *hk);

/*
 * The same apply for a file still arriving (db_apply.c, RECEIVING): fd is
 * the file being appended to; after each append call db_recv_progress with
 * the bytes written so far. Pass 1 runs on a thread as bytes land, and a
 * snapshot of a database this node does not have is written straight to its
 * new file.
 * db_recv_finish, once everything was appended, waits for that thread and
 * applies (as db_apply_ltx; fd stays the caller's); db_recv_free abandons
 * it. Either frees rv. Called from one thread.
 */
struct db_recv;
int db_recv_start(struct db *db, int fd, struct db_recv **ret);
void db_recv_progress(struct db_recv *rv, uint64_t written);
int db_recv_finish(struct db_recv *rv, uint32_t flags, const struct db_apply_hooks *hk);
void db_recv_free(struct db_recv *rv);

/*
 * True while a rollback-mode transaction is open (its journal header was
 * written and no commit point has passed). On a node that lost the lease in
 * the middle of a write, the FUSE layer lets SQLite write the database and
 * journal while this holds, so that SQLite can roll the refused transaction
 * back itself; the fence refuses its commit. db_apply_ltx rolls back what is
 * left (a hot journal) and moves committed WAL pages into the database file
 * before it applies anything.
 */
bool db_txn_pending(struct db *db);

/*
 * Backups (src/edge/backup.c keeps it; /info, /metrics and retention read
 * it). Plain state under db->mu, copied in and out; the engine does not use it.
 */
struct db_backup {
	bool enabled;		  /* this node uploads this database (a primary with backups) */
	bool known;		  /* the bucket's position was read in this term */
	uint64_t txid;		  /* highest TXID in the bucket's chain, 0: none or unknown */
	int64_t uploaded_ms;	  /* wall ms of the last successful upload, 0: none */
	int64_t pending_since_ms; /* commit time of the oldest transaction not uploaded, 0: none */
	uint64_t backlog_txns;	  /* transactions committed and not uploaded */
	uint64_t backlog_bytes;	  /* their LTX files' bytes (an estimate while not read) */
	uint64_t objects;	  /* objects this node uploaded for the database */
	bool fenced;		  /* another primary took the database's backup head over */
};
void db_set_backup(struct db *db, const struct db_backup *b);
void db_get_backup(struct db *db, struct db_backup *ret);

/* Counters and sizes for GET /metrics and `ltxfs status`. */
struct db_stats {
	uint64_t writes[DB_FILE_N]; /* write calls per file kind */
	uint64_t commits;	    /* transactions committed here (not applied) */
	uint64_t ltx_removed;	    /* LTX files removed by retention */
	uint64_t grouped;	    /* commits written in range files of several (group commit) */
	uint64_t size_bytes;	    /* committed database size */
	uint32_t page_size, page_count;
	uint64_t wal_tail_cuts; /* diagnostic: WAL writes that overlapped the in-memory
				   WAL tail and were not merged into it (db_wal.c,
				   WAL TAIL) */
	uint64_t prepared_used; /* diagnostic: rollback-mode commits that used the file
				   prepared at the database fsync (db_journal.c,
				   PREPARED COMMITS) */
	uint64_t ring_records;	/* diagnostic: prepared files made durable by a copy in
				   the LTX ring rather than an fsync of their own */
};
/* Snapshot of the counters and sizes (no I/O; any thread). */
void db_get_stats(struct db *db, struct db_stats *st);
/* LTX files in ltx/ and their bytes (lists the directory: GET /metrics only). */
void db_ltx_usage(struct db *db, uint64_t *files, uint64_t *bytes);

#endif
