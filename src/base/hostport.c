/*
 * hostport.c - split "host:port" with Go's net.SplitHostPort rules.
 *
 * The grammar accepted (see include/ltxfs/hostport.h for the contract):
 *
 *     addr  := host ":" port | "[" v6 "]" ":" port
 *     host  := any bytes but ':', '[' and ']' (may be empty)
 *     v6    := any bytes but '[' and ']'
 *     port  := decimal digits, value <= 65535 (may be empty: port 0)
 *
 * The last ':' separates the port. A second ':' outside brackets is the
 * mistake of an unbracketed IPv6 address, and is named as such.
 */
#include "ltxfs/hostport.h"

#include <errno.h>
#include <string.h>

static int bad(const char **why, const char *what)
{
	if (why)
		*why = what;
	return -EINVAL;
}

int hostport_split(const char *addr, char *host, size_t hostlen, unsigned *port, const char **why)
{
	if (!addr)
		return bad(why, "missing address");
	const char *colon = strrchr(addr, ':');
	const char *hstart = addr, *hend, *rest = addr;
	if (!colon)
		return bad(why, "missing port");
	if (addr[0] == '[') {
		const char *end = strchr(addr, ']');
		if (!end)
			return bad(why, "missing ']'");
		if (end + 1 != colon)
			return bad(why, end[1] == ':' ? "too many colons" : "missing port");
		if (strchr(addr + 1, '['))
			return bad(why, "unexpected '['");
		hstart = addr + 1;
		hend = end;
		rest = end + 1;
	} else {
		if (memchr(addr, ':', (size_t)(colon - addr)))
			return bad(why, "too many colons (write IPv6 hosts as [addr]:port)");
		if (strchr(addr, '['))
			return bad(why, "unexpected '['");
		hend = colon;
	}
	if (strchr(rest, ']'))
		return bad(why, "unexpected ']'");
	unsigned long v = 0;
	for (const char *c = colon + 1; *c; c++) {
		if (*c < '0' || *c > '9' || (v = v * 10 + (unsigned long)(*c - '0')) > 65535)
			return bad(why, "the port must be a number from 0 to 65535");
	}
	if (host) {
		size_t len = (size_t)(hend - hstart);
		if (len >= hostlen)
			return bad(why, "host name too long");
		memcpy(host, hstart, len);
		host[len] = '\0';
	}
	*port = (unsigned)v;
	return 0;
}
