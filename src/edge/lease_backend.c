/*
 * lease_backend.c - pick the lease backend that lease.type names.
 *
 * The only file that knows every backend. "static" leases have none: the
 * caller does not build a lease at all for them (config.h).
 */
#include "ltxfs/lease_backend.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int lease_new(struct lease **ret, const struct config *cfg, char *errmsg, size_t n)
{
	*ret = NULL;
	if (strcmp(cfg->lease.type, "consul") == 0)
		return lease_consul_new(ret, cfg, errmsg, n);
	if (strcmp(cfg->lease.type, "etcd") == 0)
		return lease_etcd_new(ret, cfg, errmsg, n);
	snprintf(errmsg, n, "lease type '%s' has no backend", cfg->lease.type);
	return -EINVAL;
}
