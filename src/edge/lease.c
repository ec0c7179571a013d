/*
 * lease.c - the backend-independent part of the primary lease: the calls
 * that dispatch through struct lease_ops, and LiteFS's value format. It knows
 * no backend; lease_backend.c builds one.
 */
#include "ltxfs/lease.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int lease_acquire(struct lease *l, const char *value, uint64_t *epoch, int64_t *ttl_ms)
{
	return l->aborted ? -ECANCELED : l->ops->acquire(l, value, epoch, ttl_ms);
}

int lease_acquire_handoff(struct lease *l, const char *token, const char *value, uint64_t *epoch,
			  int64_t *ttl_ms)
{
	return l->aborted ? -ECANCELED : l->ops->acquire_handoff(l, token, value, epoch, ttl_ms);
}

int lease_renew(struct lease *l, int64_t *ttl_ms)
{
	return l->aborted ? -ECANCELED : l->ops->renew(l, ttl_ms);
}

int lease_release(struct lease *l)
{
	return l->ops->release(l);
}

void lease_forget(struct lease *l)
{
	l->ops->forget(l);
}

int lease_observe(struct lease *l, uint64_t *index, int wait_ms, struct lease_holder *out)
{
	memset(out, 0, sizeof(*out));
	if (l->aborted || l->kicked) {
		l->kicked = false;
		return -ECANCELED;
	}
	int r = l->ops->observe(l, index, wait_ms, out);
	if (r == -ECANCELED || l->kicked) {
		l->kicked = false;
		return -ECANCELED;
	}
	return r;
}

int lease_handoff_token(struct lease *l, char *buf, size_t n)
{
	return l->ops->handoff_token(l, buf, n);
}

int lease_cluster_id(struct lease *l, const char *mine, char out[21])
{
	return l->aborted ? -ECANCELED : l->ops->cluster_id(l, mine, out);
}

void lease_abort(struct lease *l)
{
	if (l)
		l->aborted = true;
}

void lease_kick(struct lease *l)
{
	if (l)
		l->kicked = true;
}

void lease_free(struct lease *l)
{
	if (l)
		l->ops->free(l);
}

char *lease_value_encode(const char *hostname, const char *advertise_url)
{
	json_t *o = json_pack("{s:s, s:s}", "hostname", hostname, "advertise-url", advertise_url);
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	return s;
}

int lease_value_decode(const char *buf, size_t len, struct lease_holder *out)
{
	json_error_t err;
	out->present = false;
	out->hostname[0] = out->advertise_url[0] = '\0';
	if (len == 0)
		return 0; /* LiteFS: an empty value means no primary */
	json_t *o = json_loadb(buf, len, 0, &err);
	if (!o || !json_is_object(o)) {
		json_decref(o);
		return -EINVAL;
	}
	const char *h = json_string_value(json_object_get(o, "hostname"));
	const char *u = json_string_value(json_object_get(o, "advertise-url"));
	snprintf(out->hostname, sizeof(out->hostname), "%s", h ? h : "");
	snprintf(out->advertise_url, sizeof(out->advertise_url), "%s", u ? u : "");
	out->present = u && *u;
	json_decref(o);
	return 0;
}
