/*
 * restore.h - a database rebuilt from the backup bucket (edge layer), for
 * `ltxfs restore` and `ltxfs backups` (src/cli_backup.c).
 *
 * THE PLAN (bkplan.h). From the objects of one database (backup.h's
 * layout): the newest snapshot at or below the target, then objects of
 * levels 0-8 that each start right after the previous one's max TXID, the
 * one that goes furthest without passing the target first, the highest
 * level among equals. A target TXID must be an object's max TXID (objects
 * cover several transactions: a TXID inside one is refused, naming the
 * nearest restorable ones). A target time takes the newest state whose
 * commit time (the LTX header's timestamp) is at or before it; a compacted
 * object that ends after it is replaced by the objects it covers.
 *
 * THE APPLY. Each object is downloaded whole, decoded and verified (file
 * checksum, page rules), its pre-apply checksum must equal the rolling
 * database checksum of the pages written so far, and after its pages the
 * checksum must equal its post-apply checksum. Any failure names the
 * object. The result is written to a temporary file beside the output,
 * fsynced and renamed over it, with bytes 18-19 of the header set to 1
 * (rollback mode, as /export writes it: no -wal comes with it).
 */
#ifndef LTXFS_RESTORE_H
#define LTXFS_RESTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct config;
struct store;

/* The state a restore reached. */
struct restore_result {
	uint64_t txid;
	uint64_t checksum; /* the database checksum at txid (its post-apply checksum) */
	int64_t timestamp; /* commit time of txid, ms */
	uint32_t page_size, npages;
};

struct restore_options {
	const struct config *cfg; /* its backup section */
	const char *db;		  /* the database's name */
	const char *output;	  /* the file to write */
	uint64_t txid;		  /* 0: latest */
	bool has_time;
	int64_t time_ms; /* with has_time: the newest state at or before it */
	bool progress;	 /* a progress bar on stderr */
	FILE *log;	 /* one line per object applied, or NULL */
	bool raw;	 /* keep header bytes 18-19 as committed (no rollback-mode patch) */
	struct restore_result *result; /* filled on success, or NULL */
};

/* Restore as described above; the TXID reached in *ret_txid. 0 or -errno with err (n bytes). */
int restore_run(const struct restore_options *o, uint64_t *ret_txid, char *err, size_t n);

/* Print what can be restored for db: objects, TXID ranges, snapshots, sizes. 0 or -errno. */
int restore_list(const struct config *cfg, const char *db, FILE *out, char *err, size_t n);

/*
 * Disaster recovery (backup.restore-if-empty; docs/backup.md). Into store,
 * which holds no data: every database of the bucket at its latest state,
 * each restored as above into a file under data_dir, turned into an LTX
 * snapshot at the bucket's TXID and applied (db_apply_ltx), so the rolling
 * checksum and the TXIDs continue the bucket's chain; then the cluster ID
 * of the bucket's marker becomes the store's. *ret_n: databases restored
 * (0 when the bucket holds no backup of a cluster: nothing changed).
 * -EXDEV when the store has another cluster ID. 0 or -errno with err.
 */
int restore_into_store(const struct config *cfg, struct store *store, const char *data_dir,
		       size_t *ret_n, char *err, size_t n);

/* RFC 3339 ("2026-12-06T02:39:13.123456Z", "...+02:00") to ms since the epoch. 0 or -EINVAL. */
int restore_parse_time(const char *s, int64_t *ret_ms);

#endif
