/*
 * db_recover.c - start-up recovery: what db_open does to a database
 * directory before the mount exists, so that the database file, the LTX
 * chain and the in-memory checksums agree again after any stop, clean or
 * not.
 *
 * RECOVERY (db_open, before the mount exists):
 *   1. Remove *.tmp files (and database.tmp); verify LTX files from the newest down and delete
 *      any that do not verify (torn by a crash), until one verifies. A torn file
 *      with a record in the LTX ring is written again from it instead.
 *   1b. Write the LTX ring's records that follow the newest intact file back
 *      as files while they chain (LTX RING, db_ring.c); then syncfs and a
 *      new ring epoch.
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
 * Where each step lives: db_recover drives them in this order. Step 1 is
 * db_recover_ltx, with ring_repair (db_ring.c) for a damaged file; 1b is
 * db_ring_recover (db_ring.c, LTX RING at start-up); 2 is
 * db_recover_journal (db_journal.c); 3 is db_checksum_file, or
 * db_load_checksums; 4 is db_recover_wal; 5 is db_reapply_result,
 * db_reapply_ltx and db_commit_snapshot_from_file (db_commit.c). A database
 * file that is gone while LTX files remain was deleted while ltxfs was not
 * running, and its deletion is recorded (db_commit_drop).
 *
 * THE CHECKSUM FILE (dbs/<name>/checksums). Written at a clean shutdown by
 * db_free (db_save_checksums) and removed when start-up reads it
 * (db_load_checksums), so that a start after a clean stop can skip reading
 * and checksumming the whole database file. Host byte order:
 *
 *     0  magic "LTXFSCK1"
 *     8  page size (u32)           12  page count (u32)
 *    16  TXID (u64)                24  post-apply checksum of that TXID (u64)
 *    32  size of the database file (u64)
 *    40  inode, ctime seconds, ctime nanoseconds of the file (3 x u64)
 *    64  the committed checksum of pages 1..page count (u64 each)
 *     -  CRC-64/ISO of every byte before it (u64)
 *
 * With it, step 1 checks the newest LTX file by its header and trailer
 * alone (ltx_check_clean) instead of decoding it in full. It counts only if
 * no WAL is left and every field matches the database file and that LTX
 * file (db_load_checksums); otherwise the newest LTX file is verified in
 * full after all, and step 3 checksums the database file.
 *
 * THREADS. All of it runs on db_open's thread (the main thread at start-up,
 * or the FUSE worker that creates a database), before any other thread can
 * see the db, so db->mu is not taken. db_checksum_file starts up to 8
 * checksum workers for a database of 64 MiB or more; each reads its own
 * range of pages and writes its own range of db->pgck, and all are joined
 * before it returns. db_save_checksums runs in db_free, after the last
 * operation.
 */

#include "db_int.h"

#include "ltxfs/byteorder.h"
#include "ltxfs/crc.h"
#include "ltxfs/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define CKFILE_MAGIC "LTXFSCK1"

/* ---------------------------------------------------------- page checksums */

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

/* --------------------------------------------------------------- LTX files */

/* Clean-shutdown checksum file. */
static int ckfile_path(struct db *db, char *buf, size_t n)
{
	return fs_path(buf, n, "%s/checksums", db->dir);
}

/*
 * After a clean shutdown every LTX file was synced, and the checksum cache
 * names the position. Then the newest file needs only its header and trailer
 * checked against the cache: decoding a large one (the file of a 1 GB
 * transaction) would dominate start-up. Returns 0 when trusted.
 */
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
	t->post_apply_checksum = get_be64(tb);
	t->file_checksum = 0;
	return t->post_apply_checksum == post ? 0 : -EINVAL;
}

/* Delete torn LTX files from the top; set db->pos from the newest good one. */
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
		int fd = db_ltx_file_open(db, maxes[2 * (n - 1) + 1], maxes[2 * (n - 1)]);
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

/* --------------------------------------------------------------------- WAL */

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

/* ------------------------------------------------------------------ step 5 */

/* Apply the pages of an LTX file to the database file (recovery only). */
static int db_reapply_ltx(struct db *db, const struct ltx_header *h)
{
	struct ltx_decoder *dec = NULL;
	uint8_t *page = NULL;
	int fd, r;
	fd = db_ltx_file_open(db, h->min_txid, h->max_txid);
	if (fd < 0)
		return fd;
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
	struct ltx_decoder *dec = NULL;
	uint8_t *page = NULL;
	uint64_t x = ltx_header_is_snapshot(h) ? 0 : db->xsum, res = 0;
	uint32_t pgno;
	int fd, r;
	fd = db_ltx_file_open(db, h->min_txid, h->max_txid);
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

/*
 * A replica killed in the middle of a batch (BATCHES, db_apply.c) has every
 * file of the batch installed and the pages written up to some point, file
 * by file in TXID order. Re-applying the newest files in order from one at
 * or before the first unapplied one gives exactly the last file's state, as
 * long as every file before them was fully applied: a batch holds at most
 * DB_APPLY_BATCH_MAX files and completes before the next begins, so the
 * newest DB_APPLY_BATCH_MAX files of the chain suffice. Only plain files
 * batch, so the walk back stops at a snapshot or a drop.
 */
static int cmp_u64pair(const void *a, const void *b)
{
	const uint64_t *x = a, *y = b;
	return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* The newest chain of plain files ending at the position: *ret (pairs of
 * min, max TXID, oldest first) and its length, at most DB_APPLY_BATCH_MAX. */
static size_t batch_tail(struct db *db, uint64_t **ret)
{
	DIR *d = opendir(db->ltx_dir);
	struct dirent *de;
	uint64_t *v = NULL;
	size_t n = 0, cap = 0;
	*ret = NULL;
	if (!d)
		return 0;
	while ((de = readdir(d))) {
		uint64_t mn, mx;
		if (ltx_parse_filename(de->d_name, &mn, &mx) < 0 || mx > db->pos.txid || mn == 1)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			void *p = realloc(v, cap * 2 * sizeof(*v));
			if (!p)
				break;
			v = p;
		}
		v[2 * n] = mn;
		v[2 * n + 1] = mx;
		n++;
	}
	closedir(d);
	if (n == 0) {
		free(v);
		return 0;
	}
	qsort(v, n, 2 * sizeof(*v), cmp_u64pair);
	size_t k = 0;
	uint64_t want = db->pos.txid;
	while (k < n && k < DB_APPLY_BATCH_MAX && v[2 * (n - 1 - k) + 1] == want) {
		want = v[2 * (n - 1 - k)] - 1;
		k++;
	}
	memmove(v, v + 2 * (n - k), k * 2 * sizeof(*v));
	*ret = v;
	return k;
}

/* What re-applying files v[0..n) in order over the current state gives. */
static uint64_t batch_reapply_result(struct db *db, const uint64_t *v, size_t n)
{
	uint64_t *ck = NULL, x = db->xsum, res = 0;
	uint32_t count = db->page_count, cap = db->page_count;
	uint8_t *page = NULL;
	for (size_t i = 0; i < n; i++) {
		struct ltx_decoder *dec = NULL;
		uint32_t pgno;
		int r, fd = db_ltx_file_open(db, v[2 * i], v[2 * i + 1]);
		if (fd < 0)
			goto out;
		r = ltx_decoder_new(&dec, ltx_fd_read, &fd);
		const struct ltx_header *h = r == 0 ? ltx_decoder_header(dec) : NULL;
		if (h && (h->commit == 0 || h->page_size != db->page_size))
			r = -EINVAL;
		if (r == 0 && h->commit > cap) {
			void *p = realloc(ck, ((size_t)h->commit + 1) * sizeof(*ck));
			r = p ? 0 : -ENOMEM;
			if (p) {
				if (!ck)
					memcpy(p, db->pgck, ((size_t)cap + 1) * sizeof(*ck));
				ck = p;
				memset(ck + cap + 1, 0, (size_t)(h->commit - cap) * sizeof(*ck));
				cap = h->commit;
			}
		}
		if (r == 0 && !ck) {
			ck = malloc(((size_t)cap + 1) * sizeof(*ck));
			r = ck ? 0 : -ENOMEM;
			if (ck)
				memcpy(ck, db->pgck, ((size_t)cap + 1) * sizeof(*ck));
		}
		if (r == 0 && !page && !(page = malloc(db->page_size)))
			r = -ENOMEM;
		while (r == 0 && (r = ltx_decoder_next_page(dec, &pgno, page)) == 1) {
			uint64_t c = ltx_page_checksum(pgno, page, db->page_size);
			x ^= (pgno <= count ? ck[pgno] : 0) ^ c;
			ck[pgno] = c;
			r = 0;
		}
		if (r == 0)
			for (uint32_t p = h->commit + 1; p <= count; p++) {
				x ^= ck[p];
				ck[p] = 0;
			}
		if (r == 0)
			count = h->commit;
		ltx_decoder_free(dec);
		close(fd);
		if (r < 0)
			goto out;
	}
	res = LTX_CHECKSUM_FLAG | x;
out:
	free(ck);
	free(page);
	return res;
}

/* ------------------------------------------------------- the checksum file */

int db_save_checksums(struct db *db)
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

/* After pages were re-applied: the file's checksums again; 1 when they give
 * the position's checksum, 0 when not, or -errno. */
static int rechecksum(struct db *db, uint32_t *count)
{
	int r = db_file_page_count(db, count);
	if (r == 0)
		r = db_checksum_file(db, *count);
	return r < 0 ? r : db_cur_checksum(db) == db->pos.checksum;
}

/* ------------------------------------------------------------------ driver */

int db_recover(struct db *db)
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
			r = rechecksum(db, &count);
		if (r != 0)
			return r < 0 ? r : 0;
	}
	uint64_t *tail = NULL;
	size_t ntail = db->opt.replica && db->page_size ? batch_tail(db, &tail) : 0;
	if (ntail > 1 && batch_reapply_result(db, tail, ntail) == db->pos.checksum) {
		log_warn("db '%s': completing the apply of %zu LTX files up to TXID %016" PRIx64
			 " (a replica stopped in the middle of a batch)",
			 db->name, ntail, db->pos.txid);
		r = 0;
		for (size_t i = 0; i < ntail && r == 0; i++) {
			struct ltx_header th = {.min_txid = tail[2 * i],
						.max_txid = tail[2 * i + 1]};
			uint8_t hb[LTX_HEADER_SIZE];
			int fd = db_ltx_file_open(db, th.min_txid, th.max_txid);
			r = fd < 0 ? fd
			    : fs_pread_full(fd, hb, sizeof(hb), 0) == (ssize_t)sizeof(hb)
				? ltx_header_decode(&th, hb)
				: -EIO;
			if (fd >= 0)
				close(fd);
			if (r == 0)
				r = db_reapply_ltx(db, &th);
		}
		free(tail);
		tail = NULL;
		if (r == 0)
			r = rechecksum(db, &count);
		if (r != 0)
			return r < 0 ? r : 0;
	}
	free(tail);
	/* TXIDs never go back: past a discarded torn file, which may have been a
	 * range of several (group commit), whatever its TXIDs were */
	uint64_t at = db->txid_floor > db->pos.txid + 1 ? db->txid_floor : db->pos.txid + 1;
	log_warn("db '%s': database checksum %016" PRIx64 " does not match the last LTX file "
		 "(%016" PRIx64 " at TXID %016" PRIx64 "): it changed outside ltxfs; recording "
		 "its current content as a snapshot at TXID %016" PRIx64,
		 db->name, db_cur_checksum(db), db->pos.checksum, db->pos.txid, at);
	db->pos.txid = at - 1;
	return db_commit_snapshot_from_file(db, db->page_count, true);
}
