/*
 * hostport.h - split a "host:port" network address (base layer).
 *
 * The one parser of listen and peer addresses, used by the config validator
 * (http.addr) and by the HTTP server when it binds. Its rules are those of Go's
 * net.SplitHostPort, because LiteFS configs are read by Go: "host:port",
 * "[v6addr]:port" and ":port" are accepted; an IPv6 address must be in
 * brackets; an empty port is port 0 (the kernel picks one). The port must be a
 * decimal number from 0 to 65535; service names are not looked up. Pure, no
 * state, thread-safe.
 */
#ifndef LTXFS_HOSTPORT_H
#define LTXFS_HOSTPORT_H

#include <stddef.h>

/*
 * Split addr into its host (without brackets; "" for all interfaces) and port.
 * host may be NULL when only the port is wanted; otherwise it gets hostlen
 * bytes at most, NUL included. Returns 0, or -EINVAL with *why (if why is not
 * NULL) set to a static phrase naming what is wrong ("missing port", ...).
 * Nothing is written to host or port on failure.
 */
int hostport_split(const char *addr, char *host, size_t hostlen, unsigned *port, const char **why);

#endif
