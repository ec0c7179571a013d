/*
 * db_journal.c - the rollback-journal modes (DELETE, TRUNCATE, PERSIST,
 * exclusive locking): the commit point, commits prepared at SQLite's fsync
 * of the database, the syncer thread that makes them durable meanwhile, and
 * rolling back a hot journal.
 *
 * THE COMMIT POINT is the invalidation of the journal (db.c, THE MODEL):
 * db_unlink, db_truncate to 0 or db_open_file with O_TRUNC of the journal,
 * or a db_write at offset 0 that destroys its magic. Each calls
 * db_journal_commit before the operation is performed. It uses the prepared
 * commit if it still holds, or builds the transaction (db_journal_build):
 * the database header gives the new size, and the candidates are the dirty
 * pages within the old size plus every page past it. No history yet, a
 * changed page size, or a write before the page size was known makes the
 * transaction a snapshot of the file instead. The LTX file is fdatasynced
 * when the application asked for durability in this transaction (tx_synced).
 *
 * PREPARED COMMITS. In a rollback mode SQLite fsyncs the database file just
 * before the commit point, once every page of the transaction is in it.
 * db_fsync builds the LTX file right then and makes it durable on the syncer
 * thread while the application's fsync runs, so the durable LTX costs no
 * extra flush in sequence. A small one (its pages kept from the build, an
 * ltxjob) is encoded in memory and copied into the ring, and the syncer
 * fdatasyncs the ring; the file is not created until after the commit
 * point: there the job joins the queue (db_ltxout.c, QUEUED LTX FILES) and
 * the worker writes it after its reply (db_write_done). A big one (over
 * LTX_RING_MAX_LTX), or any when the ring is out of use, is written as a
 * file at once and the syncer fdatasyncs the file. The commit point uses
 * the prepared commit if no write reached the database or journal since
 * (write_gen), the position is unchanged and the fence still grants the
 * same epoch; otherwise it is dropped (record cancelled, file removed) and
 * the transaction is built afresh.
 *
 * State machine (db_int.h, CAPTURE STATES): JOURNAL OPEN -> PREPARED at the
 * database fsync (db_prep_build); PREPARED -> IDLE at the commit point when
 * db_prep_usable holds (the file is applied as it is, with no second
 * build); PREPARED -> JOURNAL OPEN when db_prep_drop removes it (written to
 * since, a failed sync, unusable at the commit point, a replica's apply,
 * shutdown). A prepared file's durability comes from its copy in the ring
 * (db_ring.c), or from an fdatasync of the file itself. prep_job holds a
 * prepared file not written yet.
 *
 * The syncer: one thread per database, started on first use, that makes a
 * prepared LTX file durable while the application's own fsync runs.
 * db_fsync (db.c) hands it one descriptor (syncer_start), performs the
 * application's fsync, then collects the result (syncer_wait); the syncer
 * fdatasyncs the descriptor (and with dirsync fsyncs ltx/) and reports.
 *
 * HOT JOURNALS. db_recover_journal rolls back a journal exactly as SQLite
 * would (valid header, and any super-journal it names still exists), or
 * deletes a cold one. It runs at start-up (db_recover.c, step 2) and before
 * a replica's first apply after this node was primary (db_settle,
 * db_apply.c), where it rolls back a transaction the fence refused.
 *
 * THREADS. db_journal_commit, db_prep_build and db_prep_drop run with db->mu
 * held: on the FUSE worker at a commit point or an fsync of the database;
 * db_prep_drop also on the replica thread (db_apply_scanned) and in db_free.
 * The syncer thread takes only its own sy->mu and never db->mu; db_fsync
 * waits for it without db->mu. db_recover_journal runs on db_open's thread,
 * or under db->mu with SQLite's locks taken through the apply hooks.
 */

#include "db_int.h"

#include "ltxfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------ building the transaction */

/*
 * Build the LTX file of the open rollback-journal transaction from its dirty
 * pages (db->mu held). Returns 1 with *t prepared (file written, with sync
 * made durable), 0 when there is nothing to commit, 2 when the transaction
 * needs a snapshot (*count and *page_size set, nothing built, nothing
 * changed: a prepare at fsync must not adopt a page size SQLite may still
 * roll back), or -errno.
 */
static int db_journal_build(struct db *db, bool sync, struct txrec *t, uint32_t *count,
			    uint32_t *page_size, struct ltxjob **ret_job)
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
		*page_size = dh.page_size;
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
	r = db_tx_prepare(db, pages, n, *count, &src, NULL, false, sync, t, ret_job);
	free(pages);
	return r;
}

/* -------------------------------------------------------- prepared commits */

/* Remove the prepared commit, and its ring record durably first. */
void db_prep_drop(struct db *db)
{
	if (!db->prep)
		return;
	bool synced = db->prep_synced, in_ring = db->prep_in_ring;
	bool had_file = db->prep->path[0] != 0;
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
	ltxjob_free(db->prep_job);
	db->prep_job = NULL;
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
	if (had_file && (synced || in_ring) && db->ltx_dirfd >= 0 && fsync(db->ltx_dirfd) < 0)
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

/*
 * db->mu held, at an fsync of the database file: build the open
 * transaction's LTX file (PREPARED COMMITS). Returns a descriptor to
 * fdatasync, of the ring holding a copy of the file or else of the file
 * (*dirsync then says whether ltx/ needs an fsync too), or -1 when there is
 * nothing to prepare.
 */
int db_prep_build(struct db *db, bool *dirsync)
{
	struct txrec *t;
	uint32_t count, ps;
	if (!db->journal_active || db->prep || db->sticky_err || !db->live)
		return -1;
	t = malloc(sizeof(*t));
	if (!t)
		return -1;
	uint64_t pre = db_cur_checksum(db);
	struct ltxjob *job = NULL;
	bool queue = !db->ring_failed && db->q_bytes < DB_QUEUE_LIMIT;
	int r = db_journal_build(db, false, t, &count, &ps, queue ? &job : NULL);
	if (r != 1) {
		free(t);
		return -1; /* nothing to commit, a snapshot, or an error the commit reports */
	}
	bool in_ring;
	if (job) {
		/* Encoded in memory. With its copy in the ring, the file waits in
		 * the queue until after the commit point; else it is written now
		 * and fdatasynced itself. */
		r = ltxjob_encode(job, &t->blob);
		in_ring = r == 0 && db_ring_put(db, t) == 0;
		if (in_ring) {
			ltxjob_set_blob(job, t->blob);
		} else {
			ltxjob_free(job);
			job = NULL;
			if (r == 0)
				r = db_queue_settle(db); /* files are written in TXID order */
			if (r == 0)
				r = ltx_blob_write(db, t->blob, t->path, sizeof(t->path));
			if (r < 0) {
				db_tx_abort(t);
				free(t);
				return -1;
			}
			db->ltx_unsynced = true;
		}
	} else {
		in_ring = db_ring_put(db, t) == 0;
	}
	int fd = in_ring ? fcntl(ltx_ring_fd(db->ring), F_DUPFD_CLOEXEC, 0)
			 : open(t->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (in_ring && (ltx_ring_cancel(db->ring, db->prep_ring_off) < 0 ||
				ltx_ring_sync(db->ring) < 0))
			db_ring_retire(db); /* writeback may have stored it */
		db_tx_abort(t);
		free(t);
		ltxjob_free(job);
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
	db->prep_job = job;
	db->prep_in_ring = in_ring;
	db->prep_synced = false;
	db->prep_gen = db->write_gen;
	db->prep_pre = pre;
	return fd;
}

/* -------------------------------------------------------- the commit point */

/*
 * Rollback-mode commit point (db->mu held). Uses the prepared commit if it
 * still holds; else reads the database header to learn the new size, builds
 * the transaction from the dirty pages plus any page past the old end, and
 * writes the LTX file if anything changed.
 */
int db_journal_commit(struct db *db)
{
	struct txrec t;
	uint32_t count = 0, ps = 0;
	int r;

	if (db_prep_usable(db)) {
		db->st_prep_used++;
		db_tx_apply(db, db->prep);
		if (db->prep_job) /* its file is written after the reply (db_write_done) */
			db_queue_push(db, db->prep_job);
		db->prep_job = NULL;
		free(db->prep);
		db->prep = NULL;
		db->prep_synced = false;
		db->prep_in_ring = false;
		dirty_clear(db);
		return 0;
	}
	db_prep_drop(db);
	r = db_journal_build(db, db->tx_synced, &t, &count, &ps, NULL);
	if (r == 2) {
		uint32_t old_ps = db->page_size;
		db->page_size = ps;
		r = db_commit_snapshot_from_file(db, count, db->tx_synced);
		if (r < 0)
			db->page_size = old_ps;
	} else if (r == 1)
		db_tx_apply(db, &t);
	if (r >= 0) {
		dirty_clear(db);
		r = 0;
	}
	return r;
}

/* -------------------------------------------------------------- the syncer */

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

/* Stop the thread and join it (NULL ok; without db->mu). */
void syncer_free(struct syncer *sy)
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
struct syncer *db_syncer(struct db *db)
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

/* Hand fd to the syncer (without db->mu); syncer_wait collects the result. */
void syncer_start(struct syncer *sy, int fd, bool dirsync)
{
	pthread_mutex_lock(&sy->mu);
	sy->fd = fd;
	sy->dirsync = dirsync;
	sy->done = false;
	pthread_cond_broadcast(&sy->cv);
	pthread_mutex_unlock(&sy->mu);
}

/* Wait for the sync syncer_start asked for: 0 or -errno. */
int syncer_wait(struct syncer *sy)
{
	pthread_mutex_lock(&sy->mu);
	while (!sy->done)
		pthread_cond_wait(&sy->cv, &sy->mu);
	int r = sy->result;
	pthread_mutex_unlock(&sy->mu);
	return r;
}

/* ------------------------------------------------------------ hot journals */

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
int db_recover_journal(struct db *db, bool *ret_touched)
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
