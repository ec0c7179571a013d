/*
 * db_ring.c - the LTX ring as the engine uses it. The ring file itself
 * (dbs/<name>/ltxring: a header block, then records of whole LTX files at
 * 4 KiB boundaries, each with its epoch, sequence number and TXID) is
 * src/format/ltxring.c; docs/architecture.md section 5 has its byte layout.
 *
 * LTX RING. A prepared file's durability comes from a copy in
 * the database's ring, fdatasynced while SQLite fsyncs the database: an
 * overwrite of allocated blocks, where an fdatasync of the new file would make
 * ext4 commit its journal. The file itself is written without sync, after
 * the commit point from the queue (db_ltxout.c), and made durable by the next
 * db_sync_ltx, which drains the queue and always runs before the ring wraps,
 * so every record that can be overwritten stands for a durable file. Start-up
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
 *
 * LTX RING at start-up. The records of the ring's epoch are loaded before step
 * 1: a file that step 1 finds torn, or out of the chain, is written again from its
 * record when one chains (ring_repair), so that a durable file after it is
 * not discarded with it. Step 1b (db_ring_recover) then restores the records
 * that follow the newest file, syncs every LTX file and starts a new epoch.
 *
 * States (db_int.h, CAPTURE STATES: UNSYNCED): no ring (db->ring NULL until
 * the first prepared commit), a ring with no record of its epoch, a ring
 * with records (ring_dirty), or a ring given up (ring_failed).
 *
 * THREADS. db_ring_put runs with db->mu held on the FUSE worker whose fsync
 * of the database prepares a commit (db_prep_build); db_ring_retire with
 * db->mu held from db_prep_build and db_prep_drop when a record cannot be
 * cancelled, and from the apply of another node's file (db_apply_scanned).
 * The start-up helpers (db_ring_load, ring_repair, db_ring_recover) run on
 * db_open's thread, before anyone else sees the db. The syncer thread
 * fdatasyncs a duplicate of the ring's descriptor and touches nothing here.
 */

#include "db_int.h"

#include "ltxfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

#define RING_NAME "ltxring" /* dbs/<name>/ltxring: the LTX RING */

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
int db_ring_put(struct db *db, const struct txrec *t)
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
	const void *bytes;
	if (t->blob) {
		bytes = t->blob->data;
		len = t->blob->len;
		r = len > LTX_RING_MAX_LTX ? -EFBIG : 0;
	} else {
		r = fs_read_file(t->path, LTX_RING_MAX_LTX, &buf, &len);
		bytes = buf;
	}
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
	r = ltx_ring_append(db->ring, t->txid, bytes, len, &db->prep_ring_off);
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
int db_ring_retire(struct db *db)
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

/* ---------------------------------------------------------------- start-up */

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

void ring_recs_release(struct ring_recs *rs)
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
int db_ring_load(struct db *db, struct ring_recs *rs)
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
int ring_repair(struct db *db, const struct ring_recs *rs, uint64_t mn, uint64_t mx, bool any_pre,
		uint64_t prev_post, struct ltx_header *h, struct ltx_trailer *t)
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
int db_ring_recover(struct db *db, const struct ring_recs *rs, struct ltx_header *lh,
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
		db_pos_set(db, h.max_txid, t.post_apply_checksum, h.timestamp);
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
