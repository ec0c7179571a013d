/*
 * lease.h - the primary lease held in Consul or etcd (edge layer). One key
 * names the primary; its value is LiteFS's JSON
 * {"hostname": ..., "advertise-url": ...}. Each term has an epoch, a number
 * the backend makes strictly larger for every new holder (Consul: the
 * ModifyIndex of the acquiring write; etcd: the revision of the write that
 * took the key), used to fence stale primaries (docs/leases.md).
 *
 * Every call is one attempt: the elector (elector.c) owns the loops, the
 * timing and the local deadline. Results: 0 on success, LEASE_HELD when
 * another node holds the key, LEASE_DELAYED when Consul's lock-delay blocks
 * a new holder, -ESTALE when this node's session/lease is gone (lost),
 * -EACCES for an authorisation failure (configuration error), any other
 * -errno for a transient failure (network, 5xx) after which the state is
 * unknown.
 *
 * Backends (lease_consul.c, lease_etcd.c) fill in struct lease_ops and are
 * built by lease_backend.h; this header and lease.c know none of them, so the
 * dependency runs one way: lease_backend.c -> lease_consul.c, lease_etcd.c ->
 * lease.c.
 *
 * Threads: one lease object is used by the elector thread only, except
 * lease_abort() (any thread), which makes a blocked call return -ECANCELED.
 */
#ifndef LTXFS_LEASE_H
#define LTXFS_LEASE_H

#include "ltxfs/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LEASE_HELD    1
#define LEASE_DELAYED 2

struct lease_holder {
	bool present; /* a node holds the key */
	char hostname[256];
	char advertise_url[1024];
	uint64_t epoch;
};

struct lease;

struct lease_ops {
	const char *name;
	int (*acquire)(struct lease *l, const char *value, uint64_t *epoch, int64_t *ttl_ms);
	int (*acquire_handoff)(struct lease *l, const char *token, const char *value,
			       uint64_t *epoch, int64_t *ttl_ms);
	int (*renew)(struct lease *l, int64_t *ttl_ms);
	int (*release)(struct lease *l);
	void (*forget)(struct lease *l);
	int (*observe)(struct lease *l, uint64_t *index, int wait_ms, struct lease_holder *out);
	int (*handoff_token)(struct lease *l, char *buf, size_t n);
	int (*cluster_id)(struct lease *l, const char *mine, char out[21]);
	void (*free)(struct lease *l);
};

struct lease {
	const struct lease_ops *ops;
	volatile bool aborted;
	volatile bool kicked; /* lease_kick(): the current observe returns early */
	int64_t ttl_ms;	      /* configured TTL */
	char err[512];	      /* the last failure, for logs */
};

/* Try to take the key with value; on success *epoch and the granted TTL. */
int lease_acquire(struct lease *l, const char *value, uint64_t *epoch, int64_t *ttl_ms);
/* Take the key over with the session/lease a handing-off primary passed on. */
int lease_acquire_handoff(struct lease *l, const char *token, const char *value, uint64_t *epoch,
			  int64_t *ttl_ms);
/* Extend the lease once; *ttl_ms is the TTL the backend granted. */
int lease_renew(struct lease *l, int64_t *ttl_ms);
/* Give the key up at once (no lock-delay for the successor) and end the session/lease. */
int lease_release(struct lease *l);
/* Drop the session/lease without touching it (it was handed to another node). */
void lease_forget(struct lease *l);
/*
 * Read who holds the key. With *index > 0, block up to wait_ms until it may
 * have changed since *index (Consul blocking query, etcd watch); *index is
 * updated for the next call. Spurious returns are allowed.
 */
int lease_observe(struct lease *l, uint64_t *index, int wait_ms, struct lease_holder *out);
/* The token a successor needs to take the lease over (session or lease ID). */
int lease_handoff_token(struct lease *l, char *buf, size_t n);
/*
 * The cluster ID kept beside the key: stored from mine when absent
 * (compare-and-set, so racing nodes agree), else the stored one, into out.
 */
int lease_cluster_id(struct lease *l, const char *mine, char out[21]);
/* Make blocked and future calls return -ECANCELED. Any thread. */
void lease_abort(struct lease *l);
/* Make a blocked lease_observe() return now (-ECANCELED); the next call blocks again. */
void lease_kick(struct lease *l);
/* NULL ok. */
void lease_free(struct lease *l);

/* LiteFS's value: {"hostname":...,"advertise-url":...}; malloc'd. */
char *lease_value_encode(const char *hostname, const char *advertise_url);
/* Parse it into out (present set when it holds an advertise-url). 0 or -EINVAL. */
int lease_value_decode(const char *buf, size_t len, struct lease_holder *out);

#endif
