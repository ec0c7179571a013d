/*
 * lease_backend.h - build the lease backend a config names (edge layer).
 *
 * The constructors of the backends that implement struct lease_ops
 * (lease.h), and lease_new(), which picks one by lease.type. Kept apart from
 * lease.h so that the backends depend on the interface and nothing depends
 * back on them except this factory.
 */
#ifndef LTXFS_LEASE_BACKEND_H
#define LTXFS_LEASE_BACKEND_H

#include "ltxfs/config.h"
#include "ltxfs/lease.h"

#include <stddef.h>

/*
 * Build the backend cfg->lease.type names ("consul" or "etcd"). 0, or -errno
 * with errmsg (n bytes) saying why. *ret is NULL on failure.
 */
int lease_new(struct lease **ret, const struct config *cfg, char *errmsg, size_t n);
/* Consul session lock (lease_consul.c). Same contract. */
int lease_consul_new(struct lease **ret, const struct config *cfg, char *errmsg, size_t n);
/* etcd lease and transaction (lease_etcd.c). Same contract. */
int lease_etcd_new(struct lease **ret, const struct config *cfg, char *errmsg, size_t n);

#endif
