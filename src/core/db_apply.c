/*
 * db_apply.c - what a replica does with an LTX file from its primary:
 * verify it, install it, write its pages and move the position
 * (db_apply_ltx), while it is still arriving if it is large (db_recv_*).
 * docs/architecture.md section 9, "Applying one LTX file", walks the steps.
 *
 * TWO PASSES. Pass 1 (ltx_scan_run) touches nothing: it decodes and
 * verifies the whole file and notes every page's new checksum. Then
 * db_apply_scanned checks the chain (a non-snapshot starts at this position,
 * with the same page size, or covers it: OVERLAPPING FILES below) and that
 * the new checksums give the post-apply checksum the file records (-ESTALE,
 * -EBADMSG: nothing changed). It drops a
 * commit this node prepared and never made and retires the LTX ring, then
 * installs the file under its final name (a snapshot removes the older
 * files, or moves them to orphaned/<ms>/ with DB_APPLY_DIVERGED): from here
 * on the file is the redo record that start-up recovery re-applies over a
 * torn apply. Pass 2 takes SQLite's locks through the hooks, settles what
 * this node left as primary (db_settle: a hot journal rolled back, the
 * WAL's committed pages moved into the database file), writes the pages
 * (or renames the database file pass 1 built for a snapshot of a new
 * database, or deletes the files for a commit-0 file), and moves pgck,
 * xsum and the position; the -pos file shows the new one only once the
 * unlock hook has released SQLite's locks (VISIBLE POSITION, db.c). A
 * failed page write sets the sticky error.
 * Nothing is fsynced: the LTX files are made durable at shutdown.
 *
 * RECEIVING. A large LTX file is verified while it arrives: the receiver
 * appends bytes to fd and reports each append (db_recv_progress); a scanner
 * thread runs pass 1 on the bytes as they land, blocking for more, and for a
 * snapshot of a database this node does not have yet also builds the new
 * database file. db_recv_finish waits for the scan and applies the file;
 * nothing is applied unless the whole file verified.
 *
 * THREADS. The replica thread calls db_ltx_tmpfile, db_apply_ltx and
 * db_recv_*; an HTTP thread calls db_ltx_tmpfile and db_apply_ltx when a new
 * primary adopts transactions from a replica (httpd.c), and FUSE workers
 * call db_wal_mode. Pass 1 runs without db->mu (on the calling thread, or on
 * the scanner thread recv_run, which shares only rv->mu and the bytes
 * appended to fd with the receiver). db_apply_scanned takes db->mu to check
 * the chain and again to settle and write; the lock and unlock hooks are
 * called without db->mu (SQLite's kernel locks are always taken before it),
 * and so are invalidate and entries, after the new state is in place, and
 * on_change, after the unlock (GET /events then sees what -pos shows).
 */

#include "db_int.h"

#include "ltxfs/clock.h"
#include "ltxfs/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ----------------------------------------------------- the replica's files */

int db_ltx_tmpfile(struct db *db, int *ret_fd)
{
	int fd = openat(db->ltx_dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	*ret_fd = fd;
	return 0;
}

bool db_wants_snapshot(struct db *db)
{
	pthread_mutex_lock(&db->mu);
	bool w = db->want_snapshot;
	pthread_mutex_unlock(&db->mu);
	return w;
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

/* ----------------------------------------------------------------- helpers */

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

/*
 * Give the received file in fd its name in ltx/: a link straight to the
 * name, or, when a file of that name is left over, a link to name.tmp
 * renamed over it. Either way the name appears with the whole file.
 */
static int ltx_install(struct db *db, int fd, const struct ltx_header *h)
{
	char name[LTX_FILENAME_LEN + 1], tmp[LTX_FILENAME_LEN + 8], proc[64];
	ltx_format_filename(name, h->min_txid, h->max_txid);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	if (linkat(AT_FDCWD, proc, db->ltx_dirfd, name, AT_SYMLINK_FOLLOW) == 0)
		return 0;
	if (errno != EEXIST)
		return -errno;
	snprintf(tmp, sizeof(tmp), "%s.tmp", name);
	unlinkat(db->ltx_dirfd, tmp, 0);
	if (linkat(AT_FDCWD, proc, db->ltx_dirfd, tmp, AT_SYMLINK_FOLLOW) < 0 ||
	    renameat(db->ltx_dirfd, tmp, db->ltx_dirfd, name) < 0) {
		int r = -errno;
		unlinkat(db->ltx_dirfd, tmp, 0);
		return r;
	}
	return 0;
}

/*
 * OVERLAPPING FILES. A file covers this node's position when it began at or
 * before it and ends after it (db->mu held): a range file of the primary
 * whose first transactions this node already has. Its pages are the newest
 * images of every page its transactions changed, so applied over the
 * position it gives the state at its end exactly when this node's history
 * is the primary's; the post-apply checksum, computed from the page
 * checksums as always, proves it, and when it does not match, nothing is
 * changed and the node asks for a snapshot (want_snapshot). Same page size,
 * a database that exists, never a snapshot or a drop.
 */
static bool ltx_overlaps(const struct db *db, const struct ltx_header *h)
{
	return !ltx_header_is_snapshot(h) && h->commit > 0 && db->exists && db->dbfd >= 0 &&
	       db->page_count > 0 && h->page_size == db->page_size && db->pos.txid > 0 &&
	       h->min_txid <= db->pos.txid && db->pos.txid < h->max_txid;
}

/*
 * The verified file in fd as it will be installed here: the same pages and
 * post-apply checksum under header h (the part of the TXID range it adds,
 * this node's checksum as the pre-apply one), in a new anonymous file in
 * ltx/ (*ret_fd, rewound, the caller closes it).
 */
static int ltx_relabel(struct db *db, int fd, const struct ltx_header *h, uint64_t post,
		       int *ret_fd)
{
	struct ltx_decoder *dec = NULL;
	struct ltx_encoder *enc = NULL;
	struct ltx_trailer tr;
	uint8_t *page = malloc(h->page_size);
	uint32_t pgno;
	int out = -1;
	int r = page ? db_ltx_tmpfile(db, &out) : -ENOMEM;
	if (r == 0 && lseek(fd, 0, SEEK_SET) < 0)
		r = -errno;
	if (r == 0)
		r = ltx_decoder_new(&dec, ltx_fd_read, &fd);
	if (r == 0)
		r = ltx_encoder_new(&enc, h, ltx_fd_write, &out);
	while (r == 0 && (r = ltx_decoder_next_page(dec, &pgno, page)) == 1)
		r = ltx_encoder_add_page(enc, pgno, page);
	if (r == 0)
		r = ltx_decoder_finish(dec, &tr);
	if (r == 0)
		r = ltx_encoder_finish(enc, post, &tr);
	if (r == 0 && lseek(out, 0, SEEK_SET) < 0)
		r = -errno;
	ltx_encoder_free(enc);
	ltx_decoder_free(dec);
	free(page);
	if (r < 0 && out >= 0)
		close(out);
	*ret_fd = r == 0 ? out : -1;
	return r;
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

/* ------------------------------------------------------------------ pass 1 */

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

/* --------------------------------------------------------------- receiving */

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

/* ------------------------------------------------------------------ pass 2 */

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
	int relfd = -1;
	int r;

	page = malloc(h.page_size);
	if (!page) {
		r = -ENOMEM;
		goto out;
	}

	/* The chain: a non-snapshot must start exactly at this position, or
	 * cover it (OVERLAPPING FILES), and the result of applying it must be
	 * its post-apply checksum. */
	bool snapshot = ltx_header_is_snapshot(&h);
	db_lock_settled(db);
	bool overlap = ltx_overlaps(db, &h);
	struct db_pos at = db->pos;
	if (!snapshot && !overlap &&
	    (db->pos.txid + 1 != h.min_txid || db->pos.checksum != h.pre_apply_checksum)) {
		log_warn("db '%s': LTX %016" PRIx64 "-%016" PRIx64 " does not follow this node's "
			 "position %016" PRIx64 "/%016" PRIx64,
			 db->name, h.min_txid, h.max_txid, db->pos.txid, db->pos.checksum);
		pthread_mutex_unlock(&db->mu);
		r = -ESTALE;
		goto out;
	}
	/* A new page size (VACUUM after PRAGMA page_size) rewrites the whole
	 * database: such a file must hold every page up to its commit, or the
	 * result would mix pages of two sizes. */
	bool resized =
	    !snapshot && h.commit > 0 && db->page_count > 0 && db->page_size != h.page_size;
	if (resized) {
		uint32_t lock = ltx_lock_pgno(h.page_size);
		size_t want = h.commit - (lock <= h.commit ? 1 : 0);
		if (n != want) {
			pthread_mutex_unlock(&db->mu);
			log_warn("db '%s': LTX %016" PRIx64 "-%016" PRIx64 " changes the page size "
				 "from %" PRIu32 " to %" PRIu32 " but holds %zu of the %zu pages",
				 db->name, h.min_txid, h.max_txid, db->page_size, h.page_size, n,
				 want);
			r = -EBADMSG;
			goto out;
		}
	}
	/* A commit this node prepared and never made is abandoned (SQLite rolls
	 * it back from its journal); the file name is about to be the primary's.
	 * Records of this node's own commits must not replay over another's
	 * history after a crash (LTX RING, db_ring.c). */
	db_prep_drop(db);
	db_retained_drop(db); /* STREAMED FROM MEMORY: of the history this replaces */
	r = db_ring_retire(db);
	if (r < 0) {
		pthread_mutex_unlock(&db->mu);
		log_error("db '%s': cannot retire the LTX ring before applying LTX %016" PRIx64
			  "-%016" PRIx64 ": %s",
			  db->name, h.min_txid, h.max_txid, strerror(-r));
		goto out;
	}
	/* A snapshot or a resize replaces every page: its checksum is its own. */
	bool whole = snapshot || resized;
	uint64_t x = whole ? 0 : db->xsum;
	for (size_t i = 0; i < n; i++) {
		uint64_t old = (!whole && pg[i].pgno <= db->page_count) ? db->pgck[pg[i].pgno] : 0;
		x ^= old ^ pg[i].ck;
	}
	if (!whole)
		for (uint32_t p = h.commit + 1; p <= db->page_count; p++)
			x ^= db->pgck[p];
	if (h.commit == 0)
		x = 0;
	if (overlap && (LTX_CHECKSUM_FLAG | x) != tr.post_apply_checksum) {
		/* the file is sound (pass 1): this node's history is not the primary's */
		db->want_snapshot = true;
		pthread_mutex_unlock(&db->mu);
		log_warn("db '%s': LTX %016" PRIx64 "-%016" PRIx64 " covers this node's position "
			 "%016" PRIx64 "/%016" PRIx64 " but would give checksum %016" PRIx64
			 ", not the %016" PRIx64 " it records: this node's history differs from "
			 "the primary's; asking for a snapshot",
			 db->name, h.min_txid, h.max_txid, at.txid, at.checksum,
			 LTX_CHECKSUM_FLAG | x, tr.post_apply_checksum);
		r = -ESTALE;
		goto out;
	}
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
	 * recovery re-applies it over a torn apply). Files this node kept in
	 * memory as primary may be about to go (LTX CACHE). */
	db_ltx_cache_clear(db);
	if (overlap) {
		/* installed as the part it adds, chained to this node's files */
		h.min_txid = at.txid + 1;
		h.pre_apply_checksum = at.checksum;
		r = ltx_relabel(db, fd, &h, tr.post_apply_checksum, &relfd);
		if (r < 0) {
			log_error("db '%s': cannot write LTX %016" PRIx64 "-%016" PRIx64 ": %s",
				  db->name, h.min_txid, h.max_txid, strerror(-r));
			goto out;
		}
	}
	{
		r = ltx_install(db, relfd >= 0 ? relfd : fd, &h);
		if (r < 0)
			goto out;
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
	if (locked)
		db_pos_hold(db); /* the -pos file waits for the unlock (VISIBLE POSITION, db.c) */
	db_pos_set(db, h.max_txid, tr.post_apply_checksum, h.timestamp);
	db->last_epoch = h.epoch;
	db->ltx_unsynced = true;
	db->want_snapshot = false;
	pthread_mutex_unlock(&db->mu);
	(void)old_count;

	if (hk && hk->invalidate) {
		if (snapshot || resized || h.commit == 0 || settled)
			hk->invalidate(hk->ctx, db, 0, 0);
		else {
			apply_hooks_invalidate(hk, db, pg, n, h.page_size);
			hk->invalidate(hk->ctx, db, (uint64_t)h.commit * h.page_size, 0);
		}
	}
	if (hk && hk->entries && (created || dropped || unlinked))
		hk->entries(hk->ctx, db);
	r = 0;
out:
	if (locked) {
		hk->unlock(hk->ctx, db, token, r == 0 && h.commit > 0, h.page_size, h.commit);
		db_pos_release(db);
	}
	/* after the unlock: GET /events reports what the -pos file shows */
	if (r == 0 && db->opt.on_change)
		db->opt.on_change(db->opt.change_ctx);
	ltx_decoder_free(dec);
	free(page);
	if (relfd >= 0)
		close(relfd);
	ltx_scan_release(db, sc);
	return r;
}

/* ----------------------------------------------------------------- batches */

/*
 * BATCHES. A replica that is behind receives many small files at once; each
 * apply's fixed cost (SQLite's locks taken and released through the mount,
 * the wal-index header rewritten, the kernel's cache invalidated) is paid
 * once per batch instead of once per file. The checks are those of a single
 * apply, file by file: the chain (each file starts where the one before
 * ended, with its pre-apply checksum) and each file's post-apply checksum,
 * computed on the page checksums as the files before it left them. They run
 * on db->pgck itself with an undo log, under db->mu, before anything
 * changes; then every file is installed, and pages are written in TXID
 * order under one lock acquisition, each file's truncation as the single
 * path does it. Only plain files batch: a snapshot, a drop or a new page
 * size goes one file at a time through db_apply_scanned.
 */

struct undo {
	uint32_t pg;
	uint64_t ck;
};

static int undo_push(struct undo **u, size_t *n, size_t *cap, uint32_t pg, uint64_t ck)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 256;
		void *p = realloc(*u, c * sizeof(**u));
		if (!p)
			return -ENOMEM;
		*u = p;
		*cap = c;
	}
	(*u)[(*n)++] = (struct undo){pg, ck};
	return 0;
}

/* Move pgck through file sc as its apply would; x is the running XOR. */
static int batch_step(struct db *db, const struct ltx_scan *sc, uint64_t *x, uint32_t *count,
		      struct undo **u, size_t *nu, size_t *cu)
{
	int r = 0;
	for (size_t k = 0; k < sc->n && r == 0; k++) {
		uint32_t pg = sc->pg[k].pgno;
		uint64_t old = pg <= *count ? db->pgck[pg] : 0;
		r = u ? undo_push(u, nu, cu, pg, db->pgck[pg]) : 0;
		if (r < 0)
			return r;
		*x ^= old ^ sc->pg[k].ck;
		db->pgck[pg] = sc->pg[k].ck;
	}
	for (uint32_t p = sc->h.commit + 1; p <= *count && r == 0; p++) {
		r = u ? undo_push(u, nu, cu, p, db->pgck[p]) : 0;
		if (r < 0)
			return r;
		*x ^= db->pgck[p];
		db->pgck[p] = 0;
	}
	*count = sc->h.commit;
	return r;
}

/*
 * Write the verified file f under its name in ltx/ with one write: a kill
 * leaves it whole or empty, and an empty or torn newest file is what
 * start-up recovery discards anyway; no page of it is written before this
 * returns. A file of that name left over is replaced through name.tmp.
 */
static int ltx_write_named(struct db *db, const struct db_ltx_buf *f, const struct ltx_header *h)
{
	char name[LTX_FILENAME_LEN + 1], tmp[LTX_FILENAME_LEN + 8];
	ltx_format_filename(name, h->min_txid, h->max_txid);
	int fd = openat(db->ltx_dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0 && errno != EEXIST)
		return -errno;
	if (fd >= 0) {
		int r = fs_write_full(fd, f->data, f->len);
		close(fd);
		if (r < 0)
			unlinkat(db->ltx_dirfd, name, 0);
		return r;
	}
	snprintf(tmp, sizeof(tmp), "%s.tmp", name);
	fd = openat(db->ltx_dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	int r = fs_write_full(fd, f->data, f->len);
	close(fd);
	if (r == 0 && renameat(db->ltx_dirfd, tmp, db->ltx_dirfd, name) < 0)
		r = -errno;
	if (r < 0)
		unlinkat(db->ltx_dirfd, tmp, 0);
	return r;
}

static int cmp_applypage(const void *a, const void *b)
{
	const struct applypage *x = a, *y = b;
	return x->pgno < y->pgno ? -1 : x->pgno > y->pgno;
}

static int batch_apply(struct db *db, const struct db_ltx_buf *files, struct ltx_scan *sc, size_t n,
		       const struct db_apply_hooks *hk)
{
	struct undo *u = NULL;
	size_t nu = 0, cu = 0, done = 0;
	struct applypage *inv = NULL;
	size_t ninv = 0;
	uint8_t *page = NULL;
	void *token = NULL;
	bool locked = false;
	uint32_t ps = sc[0].h.page_size, maxc = 0, minc = UINT32_MAX;
	int r = 0;

	for (size_t i = 0; i < n; i++) {
		maxc = sc[i].h.commit > maxc ? sc[i].h.commit : maxc;
		minc = sc[i].h.commit < minc ? sc[i].h.commit : minc;
		ninv += sc[i].n;
	}
	page = malloc(ps);
	inv = malloc((ninv ? ninv : 1) * sizeof(*inv));
	if (!page || !inv) {
		r = -ENOMEM;
		goto out;
	}

	/* The checks, on pgck with an undo log: nothing changes yet. */
	db_lock_settled(db);
	r = pgck_reserve(db, maxc > db->page_count ? maxc : db->page_count);
	uint64_t x = db->xsum, txid = db->pos.txid, ck = db->pos.checksum;
	uint32_t count = db->page_count;
	for (size_t i = 0; i < n && r == 0; i++) {
		const struct ltx_header *h = &sc[i].h;
		if (h->min_txid != txid + 1 || h->pre_apply_checksum != ck) {
			log_warn("db '%s': LTX %016" PRIx64 "-%016" PRIx64 " does not follow "
				 "position %016" PRIx64 "/%016" PRIx64,
				 db->name, h->min_txid, h->max_txid, txid, ck);
			r = -ESTALE;
			break;
		}
		r = batch_step(db, &sc[i], &x, &count, &u, &nu, &cu);
		if (r == 0 && (LTX_CHECKSUM_FLAG | x) != sc[i].tr.post_apply_checksum) {
			log_warn("db '%s': applying LTX %016" PRIx64 "-%016" PRIx64 " would give "
				 "checksum %016" PRIx64 ", not the %016" PRIx64 " it records",
				 db->name, h->min_txid, h->max_txid, LTX_CHECKSUM_FLAG | x,
				 sc[i].tr.post_apply_checksum);
			r = -EBADMSG;
		}
		txid = h->max_txid;
		ck = sc[i].tr.post_apply_checksum;
	}
	while (nu > 0) {
		nu--;
		db->pgck[u[nu].pg] = u[nu].ck;
	}
	if (r == 0) {
		db_prep_drop(db);
		db_retained_drop(db);
		r = db_ring_retire(db);
		if (r < 0)
			log_error(
			    "db '%s': cannot retire the LTX ring before applying LTX files: %s",
			    db->name, strerror(-r));
	}
	pthread_mutex_unlock(&db->mu);
	if (r < 0)
		goto out;

	/* Install every file: the redo records of what follows. */
	db_ltx_cache_clear(db);
	for (size_t i = 0; i < n && r == 0; i++)
		r = ltx_write_named(db, &files[i], &sc[i].h);
	if (r < 0)
		goto out;

	/* One lock acquisition for the pages of every file. */
	if (hk && hk->lock) {
		r = hk->lock(hk->ctx, db, &token);
		if (r < 0)
			goto out;
		locked = true;
	}
	db_lock_settled(db);
	bool settled = false, unlinked = false;
	r = db_settle(db, &settled, &unlinked);
	if (r == 0)
		r = pgck_reserve(db, maxc > db->page_count ? maxc : db->page_count);
	if (r < 0) {
		pthread_mutex_unlock(&db->mu);
		log_error("db '%s': cannot settle the transaction this node left as primary: %s",
			  db->name, strerror(-r));
		goto out;
	}
	x = db->xsum;
	count = db->page_count;
	for (size_t i = 0; i < n && r == 0; i++) {
		struct ltx_decoder *dec = NULL;
		uint32_t pgno;
		size_t k = 0;
		struct ltx_mem m = {files[i].data, files[i].len, 0};
		r = ltx_decoder_new(&dec, ltx_mem_read, &m);
		while (r == 0 && (r = ltx_decoder_next_page(dec, &pgno, page)) == 1) {
			r = fs_pwrite_full(db->dbfd, page, ps, (off_t)(pgno - 1) * ps);
			k++;
		}
		ltx_decoder_free(dec);
		if (r == 0 && k != sc[i].n)
			r = -EIO; /* the file changed between the passes */
		/* a new size: the single path truncates to every commit */
		if (r == 0 && sc[i].h.commit != count &&
		    ftruncate(db->dbfd, (off_t)sc[i].h.commit * ps) < 0)
			r = -errno;
		if (r < 0) {
			/* Pages may be half written: refuse further applies until a
			 * restart re-applies the installed files. */
			db->sticky_err = -EIO;
			pthread_mutex_unlock(&db->mu);
			log_error("db '%s': applying LTX %016" PRIx64 "-%016" PRIx64 " failed: %s",
				  db->name, sc[i].h.min_txid, sc[i].h.max_txid, strerror(-r));
			goto out;
		}
		batch_step(db, &sc[i], &x, &count, NULL, NULL, NULL);
		db->page_count = count;
		db->xsum = x;
		if (locked)
			db_pos_hold(db); /* VISIBLE POSITION, db.c */
		db_pos_set(db, sc[i].h.max_txid, sc[i].tr.post_apply_checksum, sc[i].h.timestamp);
		db->last_epoch = sc[i].h.epoch;
		memcpy(inv + done, sc[i].pg, sc[i].n * sizeof(*inv));
		done += sc[i].n;
	}
	db->ltx_unsynced = true;
	pthread_mutex_unlock(&db->mu);

	if (hk && hk->invalidate) {
		if (settled) {
			hk->invalidate(hk->ctx, db, 0, 0);
		} else {
			size_t m = 0;
			qsort(inv, done, sizeof(*inv), cmp_applypage);
			for (size_t i = 0; i < done; i++)
				if (m == 0 || inv[m - 1].pgno != inv[i].pgno)
					inv[m++] = inv[i];
			apply_hooks_invalidate(hk, db, inv, m, ps);
			hk->invalidate(hk->ctx, db, (uint64_t)minc * ps, 0);
		}
	}
	if (hk && hk->entries && unlinked)
		hk->entries(hk->ctx, db);
	r = 0;
out:
	if (locked) {
		hk->unlock(hk->ctx, db, token, r == 0, ps, sc[n - 1].h.commit);
		db_pos_release(db);
	}
	/* after the unlock: GET /events reports what the -pos file shows */
	if (r == 0 && db->opt.on_change)
		db->opt.on_change(db->opt.change_ctx);
	free(u);
	free(inv);
	free(page);
	for (size_t i = 0; i < n; i++)
		ltx_scan_release(db, &sc[i]);
	return r;
}

int db_apply_ltx_batch(struct db *db, const struct db_ltx_buf *files, size_t n,
		       const struct db_apply_hooks *hk)
{
	struct ltx_scan *sc;
	size_t scanned = 0;
	int r = 0;
	if (n == 0)
		return 0;
	if (n > DB_APPLY_BATCH_MAX)
		return -EINVAL;
	sc = calloc(n, sizeof(*sc));
	if (!sc)
		return -ENOMEM;
	for (; scanned < n; scanned++) {
		struct ltx_mem m = {files[scanned].data, files[scanned].len, 0};
		r = ltx_scan_run(db, ltx_mem_read, &m, false, &sc[scanned]);
		if (r < 0)
			break;
	}
	if (r < 0) {
		for (size_t i = 0; i < scanned; i++)
			ltx_scan_release(db, &sc[i]);
		free(sc);
		return r;
	}
	/* Only plain files batch (BATCHES): same page size, no snapshot, no drop. */
	bool plain = true;
	pthread_mutex_lock(&db->mu);
	if (!db->exists || db->dbfd < 0 || db->page_count == 0)
		plain = false;
	for (size_t i = 0; i < n && plain; i++)
		if (ltx_header_is_snapshot(&sc[i].h) || sc[i].h.commit == 0 ||
		    sc[i].h.page_size != db->page_size)
			plain = false;
	if (plain && ltx_overlaps(db, &sc[0].h))
		plain = false; /* OVERLAPPING FILES go through db_apply_scanned */
	pthread_mutex_unlock(&db->mu);
	if (plain) {
		r = batch_apply(db, files, sc, n, hk);
	} else {
		/* one at a time, each from an anonymous file as received frames are */
		size_t i = 0;
		for (; i < n && r == 0; i++) {
			int fd = -1;
			r = db_ltx_tmpfile(db, &fd);
			if (r == 0)
				r = fs_write_full(fd, files[i].data, files[i].len);
			if (r == 0)
				r = db_apply_scanned(db, fd, &sc[i], 0, hk);
			else
				ltx_scan_release(db, &sc[i]);
			if (fd >= 0)
				close(fd);
		}
		for (; i < n; i++)
			ltx_scan_release(db, &sc[i]);
	}
	free(sc);
	return r;
}
