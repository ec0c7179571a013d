/*
 * fusefs.h - the FUSE mount (edge layer; the only module that includes libfuse).
 *
 * Lifecycle, all on the main thread: fusefs_start() mounts and starts the
 * worker threads; fusefs_stop() unmounts, joins them and frees everything.
 * Between the two, FUSE worker threads call into store/db.
 */
#ifndef LTXFS_FUSEFS_H
#define LTXFS_FUSEFS_H

#include "ltxfs/store.h"

#include <stdbool.h>

struct fusefs_options {
	const char *mountpoint;
	bool allow_other;
	bool debug;
	unsigned max_threads; /* 0: default */
};

struct fusefs;

/* Mount (unmounting a stale mount left by a crashed process first). */
int fusefs_start(struct fusefs **ret, struct store *store, const struct fusefs_options *opt,
		 char *errmsg, size_t n);
/* True once the worker loop has ended on its own (e.g. unmounted from outside). */
bool fusefs_done(struct fusefs *fs);
/*
 * The hooks a replica's db_apply_ltx() needs: SQLite's locks taken through
 * this mount, kernel cache invalidation, the wal-index header. Valid until
 * fusefs_stop(); call db_apply_ltx() from a thread that is not a FUSE worker.
 */
void fusefs_apply_hooks(struct fusefs *fs, struct db_apply_hooks *ret);
/* Make waits for readers' locks in apply hooks give up (-ESHUTDOWN). NULL ok. */
void fusefs_begin_stop(struct fusefs *fs);
/* Unmount, join the workers, free. NULL ok. */
void fusefs_stop(struct fusefs *fs);

#endif
