/*
 * backup_bucket.c - the backup bucket's layout, as the uploader (backup.c),
 * restore (restore.c) and the command line read and write it: database keys
 * (backup_dbkey), object keys and their listing per database
 * (backup_list_db, backup_objs_plan), and the per-database head object that
 * fences out an old primary (backup_head_*, backup_objs_vouched).
 * docs/backup.md, "The bucket, byte for byte" and "Fencing", is the
 * reference; include/ltxfs/backup.h is the contract.
 *
 * THE HEAD. Text: "ltxfs-head 1", the chain's TXID and its checksum, then one
 * "term <start> <writer>" line per uploader term, oldest first. A term's
 * objects end at or after its start. An object is vouched for when it ends at
 * or below the head's TXID and, from the second term's start on, its writer
 * (x-amz-meta-ltxfs-writer, one HEAD request) is the writer of the term whose
 * range holds its end, or of a later term.
 *
 * THREADS. None of its own: every function runs on its caller's thread
 * (the uploader, a restore, a command) and shares nothing but the s3 handle
 * it is given.
 */

#include "ltxfs/backup.h"

#include "ltxfs/bkplan.h"
#include "ltxfs/config.h"
#include "ltxfs/ltx.h"
#include "ltxfs/restore.h"
#include "ltxfs/s3.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------ layout */

int backup_dbkey(const char *name, char *buf, size_t n)
{
	static const char hx[] = "0123456789ABCDEF";
	size_t w = 0;
	for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
		unsigned char c = *p;
		bool plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			     (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
		if (w + (plain ? 1 : 3) >= n)
			return -ENAMETOOLONG;
		if (plain) {
			buf[w++] = (char)c;
		} else {
			buf[w++] = '~';
			buf[w++] = hx[c >> 4];
			buf[w++] = hx[c & 15];
		}
	}
	if (w >= n)
		return -ENAMETOOLONG;
	buf[w] = '\0';
	return 0;
}

static int unhex(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int backup_dbkey_decode(const char *key, char *buf, size_t n)
{
	size_t w = 0;
	char check[1024];
	for (const char *p = key; *p; p++) {
		char c = *p;
		if (c == '~') {
			int a = unhex(p[1]), b = a < 0 ? -1 : unhex(p[2]);
			if (a < 0 || b < 0 || (a == 0 && b == 0))
				return -EINVAL;
			c = (char)(a * 16 + b);
			p += 2;
		}
		if (w + 1 >= n)
			return -ENAMETOOLONG;
		buf[w++] = c;
	}
	buf[w] = '\0';
	/* one to one: only what backup_dbkey writes */
	if (w == 0 || backup_dbkey(buf, check, sizeof(check)) < 0 || strcmp(check, key) != 0)
		return -EINVAL;
	return 0;
}

void backup_format_time(int64_t ms, char buf[32])
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	char d[24];
	strftime(d, sizeof(d), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, 32, "%s.%03dZ", d, (int)(ms % 1000));
}

void backup_objs_release(struct backup_objs *o)
{
	if (!o)
		return;
	for (size_t i = 0; i < o->n; i++)
		free(o->v[i].key);
	free(o->v);
	memset(o, 0, sizeof(*o));
}

int backup_objs_plan(const struct backup_objs *o, struct bkplan_obj **ret)
{
	struct bkplan_obj *v = calloc(o->n ? o->n : 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < o->n; i++) {
		const struct backup_obj *b = &o->v[i];
		int64_t ms;
		v[i] = (struct bkplan_obj){
		    .level = b->level, .min_txid = b->min_txid, .max_txid = b->max_txid};
		if (restore_parse_time(b->last_modified, &ms) < 0)
			ms = INT64_MAX; /* unknown: retention never deletes it */
		v[i].time_ms = ms;
	}
	*ret = v;
	return 0;
}

int backup_s3_new(const struct config *cfg, const volatile bool *abort, struct s3 **ret)
{
	struct s3_options so = {.endpoint = cfg->backup.endpoint,
				.force_path_style = cfg->backup.force_path_style,
				.region = cfg->backup.region,
				.bucket = cfg->backup.bucket,
				.access_key_id = cfg->backup.access_key_id,
				.secret_access_key = cfg->backup.secret_access_key,
				.timeout_ms = 30000,
				.connect_timeout_ms = 2000,
				.abort = abort};
	return s3_new(ret, &so);
}

/* The prefix keys start with: "path/" or "". */
void backup_key_prefix(const char *path, char *buf, size_t n)
{
	snprintf(buf, n, "%s%s", path, path[0] ? "/" : "");
}

struct list_ctx {
	const char *prefix; /* "path/" */
	size_t plen;
	const char *name; /* the database, or NULL */
	char dbkey[1024];
	struct backup_objs *out;
	size_t cap;
	int err;
};

/*
 * "<dbkey>/<level %04x>/<min>-<max>.ltx" after the prefix: parsed, or
 * false for any other key (another tool's object, the marker).
 */
static bool parse_key(const char *rest, char *dbkey, size_t dn, int *level, uint64_t *mn,
		      uint64_t *mx)
{
	size_t len = strlen(rest);
	if (len < 1 + 6 + LTX_FILENAME_LEN)
		return false;
	const char *file = rest + len - LTX_FILENAME_LEN, *lv = file - 6;
	if (lv[0] != '/' || lv[5] != '/' || ltx_parse_filename(file, mn, mx) < 0)
		return false;
	/* levels 0000 (uploads), 0001-0008 (compacted), 0009 (snapshots) */
	if (memcmp(lv, "/000", 4) != 0 || lv[4] < '0' || lv[4] > '9')
		return false;
	*level = lv[4] - '0';
	size_t kl = (size_t)(lv - rest);
	if (kl == 0 || kl >= dn || memchr(rest, '/', kl))
		return false;
	memcpy(dbkey, rest, kl);
	dbkey[kl] = '\0';
	if (*level == BACKUP_LEVEL_SNAPSHOT && *mn != 1)
		return false;
	return true;
}

static int on_obj(void *ctx, const struct s3_object *o)
{
	struct list_ctx *c = ctx;
	char dbkey[1024];
	int level;
	uint64_t mn, mx;
	if (strncmp(o->key, c->prefix, c->plen) != 0)
		return 0; /* "path" listed without its '/': "pathX/..." */
	if (!parse_key(o->key + c->plen, dbkey, sizeof(dbkey), &level, &mn, &mx))
		return 0;
	if (c->name && strcmp(dbkey, c->dbkey) != 0)
		return 0;
	struct backup_objs *out = c->out;
	if (out->n == c->cap) {
		size_t nc = c->cap ? c->cap * 2 : 64;
		struct backup_obj *v = realloc(out->v, nc * sizeof(*v));
		if (!v)
			return -ENOMEM;
		out->v = v;
		c->cap = nc;
	}
	struct backup_obj *b = &out->v[out->n];
	memset(b, 0, sizeof(*b));
	if (!(b->key = strdup(o->key)))
		return -ENOMEM;
	b->level = level;
	b->min_txid = mn;
	b->max_txid = mx;
	b->size = o->size;
	snprintf(b->last_modified, sizeof(b->last_modified), "%s", o->last_modified);
	out->n++;
	return 0;
}

static int cmp_obj(const void *a, const void *b)
{
	const struct backup_obj *x = a, *y = b;
	if (x->max_txid != y->max_txid)
		return x->max_txid < y->max_txid ? -1 : 1;
	if (x->level != y->level)
		return x->level < y->level ? -1 : 1;
	return strcmp(x->key, y->key);
}

int backup_list_db(struct s3 *s, const char *path, const char *name, struct backup_objs *ret,
		   char *err, size_t n)
{
	char prefix[512];
	struct s3_result res;
	struct list_ctx c = {.name = name, .out = ret};
	memset(ret, 0, sizeof(*ret));
	backup_key_prefix(path, prefix, sizeof(prefix));
	c.prefix = prefix;
	c.plen = strlen(prefix);
	if (name && backup_dbkey(name, c.dbkey, sizeof(c.dbkey)) < 0) {
		snprintf(err, n, "database name too long");
		return -ENAMETOOLONG;
	}
	/* The configured path, without the '/' after it: one listing of the
	 * whole cluster (docs/backup.md, "Listing"). */
	int r = s3_list(s, path, NULL, 0, on_obj, &c, &res);
	if (r < 0) {
		snprintf(err, n, "%s", res.err);
		backup_objs_release(ret);
		return r;
	}
	if (ret->n)
		qsort(ret->v, ret->n, sizeof(*ret->v), cmp_obj);
	return 0;
}

/* ------------------------------------------------------------------ head */

void backup_head_release(struct backup_head *h)
{
	if (!h)
		return;
	free(h->terms);
	memset(h, 0, sizeof(*h));
}

int backup_head_add_term(struct backup_head *h, uint64_t start, const char *writer)
{
	struct backup_head_term *v = realloc(h->terms, (h->n + 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	h->terms = v;
	v[h->n].start = start;
	snprintf(v[h->n].writer, sizeof(v[h->n].writer), "%s", writer);
	h->n++;
	return 0;
}

/* A writer: printable, no space, shorter than BACKUP_WRITER_LEN. */
static bool writer_valid(const char *w, size_t n)
{
	if (n == 0 || n >= BACKUP_WRITER_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if (w[i] <= ' ' || w[i] > '~')
			return false;
	return true;
}

static int hex16(const char *p, size_t n, uint64_t *ret)
{
	return n == 16 && ltx_parse_hex16(p, ret) == 0 ? 0 : -EBADMSG;
}

int backup_head_parse(const char *buf, size_t n, struct backup_head *ret)
{
	struct backup_head h = {0};
	size_t line = 0;
	int r = 0;
	for (size_t off = 0; off < n && r == 0; line++) {
		const char *p = buf + off, *nl = memchr(p, '\n', n - off);
		if (!nl) {
			r = -EBADMSG; /* every line ends with a newline */
			break;
		}
		size_t len = (size_t)(nl - p);
		off += len + 1;
		if (line == 0) {
			if (len != 12 || memcmp(p, "ltxfs-head 1", 12) != 0)
				r = -EBADMSG;
		} else if (line == 1) {
			r = len > 5 && memcmp(p, "txid ", 5) == 0 ? hex16(p + 5, len - 5, &h.txid)
								  : -EBADMSG;
		} else if (line == 2) {
			r = len > 9 && memcmp(p, "checksum ", 9) == 0
				? hex16(p + 9, len - 9, &h.checksum)
				: -EBADMSG;
		} else {
			uint64_t start;
			char w[BACKUP_WRITER_LEN];
			if (len < 5 + 16 + 2 || memcmp(p, "term ", 5) != 0 || p[21] != ' ' ||
			    hex16(p + 5, 16, &start) < 0 || !writer_valid(p + 22, len - 22) ||
			    (h.n && start < h.terms[h.n - 1].start)) {
				r = -EBADMSG;
				break;
			}
			memcpy(w, p + 22, len - 22);
			w[len - 22] = '\0';
			r = backup_head_add_term(&h, start, w);
		}
	}
	if (r == 0 && line < 3)
		r = -EBADMSG;
	if (r < 0) {
		backup_head_release(&h);
		return r;
	}
	*ret = h;
	return 0;
}

int backup_head_format(const struct backup_head *h, char **ret, size_t *ret_n)
{
	size_t cap = 64 + h->n * (5 + 16 + 1 + BACKUP_WRITER_LEN + 1), w = 0;
	char *p = malloc(cap);
	if (!p)
		return -ENOMEM;
	w += (size_t)snprintf(p + w, cap - w,
			      "ltxfs-head 1\ntxid %016" PRIx64 "\nchecksum %016" PRIx64 "\n",
			      h->txid, h->checksum);
	for (size_t i = 0; i < h->n; i++)
		w += (size_t)snprintf(p + w, cap - w, "term %016" PRIx64 " %s\n", h->terms[i].start,
				      h->terms[i].writer);
	*ret = p;
	*ret_n = w;
	return 0;
}

void backup_head_key(const char *prefix, const char *dbkey, char *buf, size_t n)
{
	snprintf(buf, n, "%s%s/%s", prefix, dbkey, BACKUP_HEAD);
}

int backup_head_get(struct s3 *s, const char *path, const char *name, struct backup_head *h,
		    char *etag, char *err, size_t n)
{
	char prefix[512], dbkey[1024], key[1600], tag[128];
	char *body = NULL;
	size_t len = 0;
	struct s3_result res;
	backup_key_prefix(path, prefix, sizeof(prefix));
	if (backup_dbkey(name, dbkey, sizeof(dbkey)) < 0) {
		snprintf(err, n, "database name too long");
		return -ENAMETOOLONG;
	}
	backup_head_key(prefix, dbkey, key, sizeof(key));
	int r = s3_get_etag(s, key, BACKUP_HEAD_MAX, &body, &len, etag ? etag : tag, &res);
	if (r == -ENOENT)
		return r;
	if (r < 0) {
		snprintf(err, n, "%s", res.err);
		return r;
	}
	if ((r = backup_head_parse(body, len, h)) < 0)
		snprintf(err, n, "the head object '%s' does not parse", key);
	free(body);
	return r;
}

int backup_objs_vouched(struct s3 *s, const struct backup_head *h, struct backup_objs *o,
			size_t *ret_dropped, char *err, size_t n)
{
	size_t w = 0, dropped = 0;
	int r = 0;
	for (size_t i = 0; i < o->n; i++) {
		struct backup_obj *x = &o->v[i];
		bool keep = x->max_txid <= h->txid;
		if (keep && r == 0 && h->n >= 2 && x->max_txid >= h->terms[1].start) {
			struct s3_head hd = {.n_meta = 1};
			struct s3_result res;
			size_t cover = 0, mine = SIZE_MAX;
			hd.meta[0].name = BACKUP_META_WRITER;
			if ((r = s3_head(s, x->key, &hd, &res)) == -ENOENT) {
				r = 0; /* deleted since the listing (retention) */
				keep = false;
			} else if (r < 0) {
				snprintf(err, n, "%s", res.err);
			} else {
				for (size_t j = 0; j < h->n; j++) {
					if (h->terms[j].start <= x->max_txid)
						cover = j;
					if (hd.meta[0].found &&
					    strcmp(h->terms[j].writer, hd.meta[0].value) == 0)
						mine = j;
				}
				/* the writer of the term covering its end, or a later
				 * term's (a compaction of older objects) */
				keep = mine != SIZE_MAX && mine >= cover;
			}
		}
		if (keep) {
			o->v[w++] = *x;
		} else {
			free(x->key);
			dropped++;
		}
	}
	o->n = w;
	*ret_dropped = dropped;
	return r;
}
