/*
 * db_ltxcache.c - the newest committed LTX files, held in memory for the
 * replica streams (LTX CACHE).
 *
 * WHY. Every replica needs every transaction. Without this cache each stream
 * opened the transaction's LTX file, read and verified all of it, and closed
 * it again: per replica and per transaction, four system calls and a full
 * decode, 40-75 us of the primary's CPU. The bytes are already in memory when
 * the file is written, so the writer keeps them: a stream that finds its next
 * transaction here sends it with one copy into the socket buffer, whatever
 * the number of replicas. Files not held here (older ones, files this node
 * received as a replica) are still read from disk by db_ltx_open.
 *
 * WHAT IS HELD. The exact bytes of an LTX file as written (struct
 * db_ltx_blob, refcounted, immutable once published), at most
 * DB_LTX_CACHE_FILES files and DB_LTX_CACHE_BYTES bytes per database, and
 * only files of at most DB_LTX_CACHE_FILE_MAX bytes; the oldest go first.
 * The cache is a ring in TXID order: a published file starts right after the
 * newest one held, or the ring is emptied first.
 *
 * INVARIANT: the cache holds a file only while the same file exists on disk
 * under its name, or is queued to be written from these very bytes, and
 * only once its transaction is committed. So:
 *   - a file is published when its commit is made visible: the queue writer
 *     once the queued commit's file exists (db_queue_drain), db_tx_apply for a
 *     prepared rollback-mode commit, whose file may still wait in the queue
 *     (an aborted one, db_tx_abort, never is), db_commit_drop for a drop;
 *   - retention drops what it deletes (db_ltx_cache_trim below its floor);
 *   - anything that replaces the history (a replica's apply, which may
 *     install a snapshot and remove or orphan files) empties the cache.
 * A stream still checks a cached file's pre-apply checksum against the
 * replica's position, exactly as for a file read from disk.
 *
 * THREADS. lc_mu (struct db) guards the ring and is taken alone, never with
 * db->mu held by the caller's caller waiting on it: publishers hold db->mu
 * and take lc_mu inside it; streams (HTTP connection threads) take only
 * lc_mu. A blob reference taken under lc_mu stays valid after it is
 * released: blobs are freed at the last db_ltx_blob_unref.
 */

#include "db_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct db_ltx_blob *db_ltx_blob_new(const struct ltx_header *h, size_t len)
{
	struct db_ltx_blob *b = malloc(sizeof(*b) + len);
	if (!b)
		return NULL;
	b->refs = 1;
	b->h = *h;
	b->post = 0;
	b->len = len;
	return b;
}

void db_ltx_blob_unref(struct db_ltx_blob *b)
{
	if (b && __atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(b);
}

static struct db_ltx_blob *ring_at(struct db *db, size_t i)
{
	return db->lc[(db->lc_first + i) % DB_LTX_CACHE_FILES];
}

static void drop_oldest(struct db *db)
{
	struct db_ltx_blob *b = db->lc[db->lc_first];
	db->lc[db->lc_first] = NULL;
	db->lc_first = (db->lc_first + 1) % DB_LTX_CACHE_FILES;
	db->lc_n--;
	db->lc_bytes -= b->len;
	db_ltx_blob_unref(b);
}

static void drop_newest(struct db *db)
{
	size_t at = (db->lc_first + db->lc_n - 1) % DB_LTX_CACHE_FILES;
	struct db_ltx_blob *b = db->lc[at];
	db->lc[at] = NULL;
	db->lc_n--;
	db->lc_bytes -= b->len;
	db_ltx_blob_unref(b);
}

void db_ltx_cache_put(struct db *db, struct db_ltx_blob *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&db->lc_mu);
	/* a file that does not continue the ring replaces what is there */
	while (db->lc_n > 0 && ring_at(db, db->lc_n - 1)->h.max_txid >= b->h.min_txid)
		drop_newest(db);
	if (db->lc_n > 0 && ring_at(db, db->lc_n - 1)->h.max_txid + 1 != b->h.min_txid)
		while (db->lc_n > 0)
			drop_oldest(db);
	if (b->len > DB_LTX_CACHE_FILE_MAX) {
		pthread_mutex_unlock(&db->lc_mu);
		db_ltx_blob_unref(b);
		return;
	}
	while (db->lc_n > 0 &&
	       (db->lc_n == DB_LTX_CACHE_FILES || db->lc_bytes + b->len > DB_LTX_CACHE_BYTES))
		drop_oldest(db);
	db->lc[(db->lc_first + db->lc_n) % DB_LTX_CACHE_FILES] = b;
	db->lc_n++;
	db->lc_bytes += b->len;
	pthread_mutex_unlock(&db->lc_mu);
}

void db_ltx_cache_trim(struct db *db, uint64_t max_txid)
{
	pthread_mutex_lock(&db->lc_mu);
	while (db->lc_n > 0 && ring_at(db, 0)->h.max_txid <= max_txid)
		drop_oldest(db);
	pthread_mutex_unlock(&db->lc_mu);
}

void db_ltx_cache_clear(struct db *db)
{
	pthread_mutex_lock(&db->lc_mu);
	while (db->lc_n > 0)
		drop_oldest(db);
	pthread_mutex_unlock(&db->lc_mu);
}

int db_ltx_cached(struct db *db, uint64_t min_txid, struct db_ltx_blob **ret)
{
	int r = -ENOENT;
	*ret = NULL;
	pthread_mutex_lock(&db->lc_mu);
	if (db->lc_n > 0 && ring_at(db, 0)->h.min_txid <= min_txid) {
		/* newest first: a replica at the tip wants the file just committed */
		for (size_t i = db->lc_n; i-- > 0;) {
			struct db_ltx_blob *b = ring_at(db, i);
			if (b->h.min_txid < min_txid)
				break;
			if (b->h.min_txid == min_txid) {
				*ret = db_ltx_blob_ref(b);
				r = 0;
				break;
			}
		}
	}
	pthread_mutex_unlock(&db->lc_mu);
	return r;
}
