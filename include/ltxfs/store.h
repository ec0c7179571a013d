/*
 * store.h - the set of databases under <data.dir>/dbs, the node identity and
 * the exclusive claim on the data directory (core layer).
 *
 * Threads: store_open/store_close run on the main thread before the mount
 * exists and after it is gone. Lookups and creation may be called from any
 * FUSE worker; store->mu protects the table. A struct db, once in the table,
 * stays until store_close (dropped databases keep their TXID), so callers may
 * keep the pointer without holding the lock.
 */
#ifndef LTXFS_STORE_H
#define LTXFS_STORE_H

#include "ltxfs/db.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store_options {
	const char *data_dir;
	const char *mount_dir;
	bool compress;
};

struct store;

/*
 * Claim data_dir (flock; -EBUSY if another ltxfs holds it), create dbs/, and
 * open (recover) every database found. On error *errmsg names what failed.
 */
int store_open(struct store **ret, const struct store_options *opt, char *errmsg, size_t n);
/* Close every database cleanly (see db_free) and release the claim. NULL ok. */
void store_close(struct store *s);

uint64_t store_node_id(const struct store *s);
const char *store_data_dir(const struct store *s);

/* Database by name, or NULL. */
struct db *store_find(struct store *s, const char *name);
/* Database by name, created (directory and all) if absent. */
int store_get_or_create(struct store *s, const char *name, struct db **ret);
/* Number of databases ever known in this process, and the i-th (stable index). */
size_t store_count(struct store *s);
struct db *store_at(struct store *s, size_t i);

/* Path of a super-journal file "<db>-mj<HEX>": dbs/<db>/mj<HEX>. */
int store_super_journal_path(struct store *s, const char *db, const char *hex, char *buf, size_t n);

#endif
