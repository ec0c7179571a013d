/*
 * store_int.h - the store's state, shared by store.c (the table of
 * databases, the claim on the data directory) and store_cluster.c (the
 * cluster state). Not installed.
 */
#ifndef LTXFS_STORE_INT_H
#define LTXFS_STORE_INT_H

#include "ltxfs/store.h"

#include <pthread.h>

struct store {
	pthread_mutex_t mu;
	char *data_dir;
	char *dbs_dir;
	char *mount_dir;
	int lock_fd;
	uint64_t node_id;
	unsigned followers; /* replica streams served (atomic): db_options.followers */
	struct db_options dbopt;
	struct db **dbs;
	size_t n, cap;

	/* cluster state, under cmu (store_cluster.c) */
	pthread_mutex_t cmu;
	pthread_cond_t ccond;
	/* the change counter: a futex word, atomic, outside cmu (store_wait_change) */
	uint32_t chg;
	uint32_t chg_waiters; /* threads in store_wait_change (atomic) */
	uint32_t chg_standby; /* threads in store_wait_change_standby (atomic) */
	/* DEFERRED WAKE-UPS (store_cluster.c): the pusher, set and read under push_lock */
	pthread_rwlock_t push_lock;
	bool (*push)(void *ctx);
	void *push_ctx;
	bool primary;
	char cluster_id[21];
	char upstream[256]; /* "" when not connected */
	int64_t primary_ms; /* primary clock of the last frame */
	int64_t local_ms;   /* local clock when it arrived */
	bool synced;
	bool caught_up;
	bool ready;	     /* READY received on the current stream (cleared when it ends) */
	uint64_t epoch;	     /* highest lease epoch seen (persisted in <data>/epoch) */
	int64_t until_ms;    /* CLOCK_MONOTONIC deadline of this primary's lease */
	bool fenced;	     /* a handoff is in progress: no commits */
	int64_t hold_until;  /* CLOCK_MONOTONIC: no commits before (adoption window) */
	int64_t adopt_until; /* CLOCK_MONOTONIC: an adoption holds commits no later than this */
	unsigned adopting;   /* adoption offers queued or running (store_adopt_begin) */
	bool opened;	     /* the start of this term is over: it stays over */
	bool term_committed; /* a commit happened since this node became primary */
	bool candidate;	     /* informational, for /info */
};

/*
 * store_cluster.c, called by store_open/store_close on the main thread.
 * store_cluster_init sets up cmu, ccond and the starting role (cannot
 * fail); store_cluster_load reads <data.dir>/epoch and <data.dir>/clusterid
 * (s->data_dir set; a missing file is no error); store_cluster_release
 * destroys what init made.
 */
void store_cluster_init(struct store *s, bool replica);
void store_cluster_load(struct store *s);
void store_cluster_release(struct store *s);

/* db_options.may_commit: the write fence (takes cmu, under db->mu). */
bool store_may_commit(void *ctx, uint64_t *epoch);
/* db_options.on_change is store_on_change (ltxfs/store.h). */

#endif
