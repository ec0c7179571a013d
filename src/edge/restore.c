/*
 * restore.c - a database rebuilt from the backup bucket: the plan, the
 * verified apply and the atomic write (include/ltxfs/restore.h says what
 * each does; docs/backup.md, "Restore", why).
 *
 * STATE of an apply: the output's page size and size in pages, pgck[pgno]
 * (the LTX page checksum of every page written or implied) and x, their
 * XOR; the database checksum is LTX_CHECKSUM_FLAG | x, as in the engine
 * (docs/ltx.md). A snapshot starts over; an incremental object must find
 * the checksum it names as its pre-apply checksum. Pages a larger commit
 * adds without writing them are zeros (the file was extended), and count
 * with a zero page's checksum; the lock page never counts and stays zero.
 *
 * Single-threaded: the CLI's thread runs it, one object at a time.
 */
#include "ltxfs/restore.h"

#include "ltxfs/backup.h"
#include "ltxfs/bkplan.h"
#include "ltxfs/config.h"
#include "ltxfs/crc.h"
#include "ltxfs/db.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/ltx.h"
#include "ltxfs/s3.h"
#include "ltxfs/store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHECKSUM_FLAG ((uint64_t)1 << 63)
#define OBJECT_MAX    (4ull << 30)

int restore_parse_time(const char *s, int64_t *ret_ms)
{
	int Y, M, D, h, m, sec, n = 0;
	if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &Y, &M, &D, &h, &m, &sec, &n) != 6 || n != 19)
		return -EINVAL;
	const char *p = s + n;
	int64_t frac_ms = 0;
	if (*p == '.') {
		int digits = 0;
		p++;
		while (*p >= '0' && *p <= '9') {
			if (digits < 3)
				frac_ms = frac_ms * 10 + (*p - '0');
			digits++;
			p++;
		}
		if (!digits || digits > 9)
			return -EINVAL;
		for (int i = digits; i < 3; i++)
			frac_ms *= 10;
	}
	int64_t off = 0;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int oh, om, k = 0;
		if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &k) != 2 || k != 5 || oh > 23 || om > 59)
			return -EINVAL;
		off = (oh * 60 + om) * 60 * (*p == '+' ? 1 : -1);
		p += 6;
	} else {
		return -EINVAL;
	}
	if (*p || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
		return -EINVAL;
	struct tm tm = {.tm_year = Y - 1900,
			.tm_mon = M - 1,
			.tm_mday = D,
			.tm_hour = h,
			.tm_min = m,
			.tm_sec = sec};
	time_t t = timegm(&tm);
	*ret_ms = ((int64_t)t - off) * 1000 + frac_ms;
	return 0;
}

static void fail(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(char *err, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, n, fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------------------ plan */

struct plan {
	const struct backup_obj **v; /* snapshot first, then L0 in order */
	size_t n;
};

/*
 * The chain from snapshot s up to limit (bkplan_chain: the objects ending
 * furthest, the highest level among equals).
 */
static int chain_from(const struct backup_objs *all, const struct backup_obj *s, uint64_t limit,
		      struct plan *p)
{
	struct bkplan_obj *v = NULL;
	size_t *idx = NULL;
	int r = backup_objs_plan(all, &v);
	if (r < 0)
		return r;
	p->v = calloc(all->n + 1, sizeof(*p->v));
	idx = calloc(all->n + 1, sizeof(*idx));
	if (!p->v || !idx) {
		free(p->v);
		p->v = NULL;
		r = -ENOMEM;
		goto out;
	}
	p->n = bkplan_chain(v, all->n, (size_t)(s - all->v), limit, idx);
	for (size_t i = 0; i < p->n; i++)
		p->v[i] = &all->v[idx[i]];
out:
	free(idx);
	free(v);
	return r;
}

/* The object's commit time from its metadata (ms), or -1. */
static int64_t object_time(struct s3 *s, const struct backup_obj *o)
{
	struct s3_head h = {.n_meta = 1};
	struct s3_result res;
	int64_t ms;
	h.meta[0].name = BACKUP_META_TIMESTAMP;
	if (s3_head(s, o->key, &h, &res) < 0 || !h.meta[0].found ||
	    restore_parse_time(h.meta[0].value, &ms) < 0)
		return -1;
	return ms;
}

static int make_plan(struct s3 *s, const struct backup_objs *all, const struct restore_options *o,
		     struct plan *p, char *err, size_t n)
{
	uint64_t limit = o->txid ? o->txid : UINT64_MAX;
	const struct backup_obj *snap = NULL;
	for (size_t i = all->n; i-- > 0;) { /* newest first */
		const struct backup_obj *x = &all->v[i];
		if (x->level != BACKUP_LEVEL_SNAPSHOT || x->max_txid > limit)
			continue;
		if (o->has_time) {
			int64_t t = object_time(s, x);
			if (t < 0 || t > o->time_ms)
				continue;
		}
		snap = x;
		break;
	}
	if (!snap) {
		fail(err, n, "no snapshot of '%s' at or before %s in the bucket", o->db,
		     o->txid	   ? "that TXID"
		     : o->has_time ? "that time"
				   : "now");
		return all->n ? -ENOENT : -ENOENT;
	}
	int r = chain_from(all, snap, limit, p);
	if (r < 0)
		return r;
	uint64_t reached = p->v[p->n - 1]->max_txid;
	if (o->txid && reached != o->txid) {
		/* the ends of objects around the target, from a chain without limit */
		struct plan full = {0};
		char near[256] = "";
		size_t w = 0;
		if (chain_from(all, snap, UINT64_MAX, &full) == 0)
			for (size_t i = 0; i < full.n && w < sizeof(near) - 40; i++) {
				uint64_t t = full.v[i]->max_txid;
				if (i + 3 < full.n && full.v[i + 3]->max_txid < o->txid)
					continue;
				w += (size_t)snprintf(near + w, sizeof(near) - w, "%s%" PRIx64,
						      w ? ", " : "", t);
				if (t > o->txid && i + 1 < full.n && full.v[i + 1]->max_txid > t &&
				    w > 60)
					break;
			}
		free(full.v);
		fail(err, n,
		     "TXID %" PRIx64 " of '%s' cannot be restored: it is not the end of an "
		     "uploaded object, or the chain has a gap before it (restorable TXIDs nearby: "
		     "%s)",
		     o->txid, o->db, near[0] ? near : "none");
		free(p->v);
		p->v = NULL;
		return -ENOENT;
	}
	return 0;
}

/*
 * Keep in all only what db's head vouches for (backup_objs_vouched), the
 * head into *head (*has_head false when the bucket has none: objects from
 * before heads, all kept). *ret_dropped may be NULL. 0 or -errno with err.
 */
static int vouched(struct s3 *s, const struct config *cfg, const char *db, struct backup_objs *all,
		   struct backup_head *head, bool *has_head, size_t *ret_dropped, char *err,
		   size_t n)
{
	size_t dropped = 0;
	int r = backup_head_get(s, cfg->backup.path, db, head, NULL, err, n);
	*has_head = r == 0;
	if (r == -ENOENT)
		r = 0;
	else if (r == 0)
		r = backup_objs_vouched(s, head, all, &dropped, err, n);
	if (ret_dropped)
		*ret_dropped = dropped;
	return r;
}

/* ----------------------------------------------------------------- apply */

struct out {
	int fd;
	uint32_t page_size, npages;
	uint64_t *pgck; /* [1..npages] */
	uint64_t x;
	uint64_t txid;
	int64_t timestamp; /* of the last object applied */
};

static int resize(struct out *w, uint32_t commit)
{
	uint32_t lock = ltx_lock_pgno(w->page_size);
	if (commit > w->npages) {
		uint64_t *v = realloc(w->pgck, ((size_t)commit + 1) * sizeof(*v));
		if (!v)
			return -ENOMEM;
		memset(v + w->npages + 1, 0, (size_t)(commit - w->npages) * sizeof(*v));
		w->pgck = v;
	}
	for (uint32_t pg = commit + 1; pg <= w->npages; pg++) {
		w->x ^= w->pgck[pg];
		w->pgck[pg] = 0;
	}
	w->npages = commit;
	(void)lock;
	if (ftruncate(w->fd, (off_t)commit * w->page_size) < 0)
		return -errno;
	return 0;
}

static int apply_object(struct out *w, const struct backup_obj *o, const char *buf, size_t len,
			const struct restore_options *opt, bool *stop, char *err, size_t n)
{
	struct ltx_decoder *d = NULL;
	struct ltx_mem src = {buf, len, 0};
	struct ltx_trailer t;
	uint8_t *page = NULL;
	int r = ltx_decoder_new(&d, ltx_mem_read, &src);
	if (r < 0) {
		fail(err, n, "object '%s' is corrupt: %s", o->key,
		     r == -EPROTO    ? "truncated"
		     : r == -EBADMSG ? "not an LTX file"
				     : strerror(-r));
		return r;
	}
	const struct ltx_header *h = ltx_decoder_header(d);
	if (h->min_txid != o->min_txid || h->max_txid != o->max_txid) {
		fail(err, n,
		     "object '%s' holds TXIDs %" PRIx64 "-%" PRIx64 ", not what its name says",
		     o->key, h->min_txid, h->max_txid);
		r = -EBADMSG;
		goto out;
	}
	if (opt->has_time && h->timestamp > opt->time_ms && !ltx_header_is_snapshot(h)) {
		*stop = true; /* committed after the target time */
		goto out;
	}
	if (ltx_header_is_snapshot(h)) {
		w->page_size = h->page_size;
		free(w->pgck);
		w->pgck = NULL;
		w->npages = 0;
		w->x = 0;
		if (ftruncate(w->fd, 0) < 0) {
			r = -errno;
			goto out;
		}
	} else if (h->page_size != w->page_size ||
		   h->pre_apply_checksum != (CHECKSUM_FLAG | w->x)) {
		fail(err, n,
		     "object '%s' does not apply: its pre-apply checksum is %016" PRIx64
		     ", the database's checksum at TXID %" PRIx64 " is %016" PRIx64,
		     o->key, h->pre_apply_checksum, w->txid, CHECKSUM_FLAG | w->x);
		r = -EBADMSG;
		goto out;
	}
	uint32_t old = w->npages;
	if ((r = resize(w, h->commit > w->npages ? h->commit : w->npages)) < 0)
		goto out;
	if (!(page = malloc(h->page_size))) {
		r = -ENOMEM;
		goto out;
	}
	for (;;) {
		uint32_t pgno;
		r = ltx_decoder_next_page(d, &pgno, page);
		if (r <= 0)
			break;
		uint64_t ck = ltx_decoder_page_checksum(d);
		if ((r = fs_pwrite_full(w->fd, page, h->page_size,
					(off_t)(pgno - 1) * h->page_size)) < 0)
			break;
		w->x ^= w->pgck[pgno] ^ ck;
		w->pgck[pgno] = ck;
	}
	if (r == 0)
		r = ltx_decoder_finish(d, &t);
	if (r < 0) {
		fail(err, n, "object '%s' is corrupt: %s", o->key,
		     r == -EBADMSG  ? "a checksum or a page rule fails"
		     : r == -EPROTO ? "truncated"
				    : strerror(-r));
		goto out;
	}
	/* pages the growth added without writing them are zeros */
	memset(page, 0, h->page_size);
	uint32_t lock = ltx_lock_pgno(h->page_size);
	for (uint32_t pg = old + 1; pg <= h->commit; pg++)
		if (!w->pgck[pg] && pg != lock) {
			w->pgck[pg] = ltx_page_checksum(pg, page, h->page_size);
			w->x ^= w->pgck[pg];
		}
	if ((r = resize(w, h->commit)) < 0)
		goto out;
	if ((CHECKSUM_FLAG | w->x) != t.post_apply_checksum) {
		fail(err, n,
		     "object '%s' does not verify: after its pages the database checksum is "
		     "%016" PRIx64 ", its post-apply checksum says %016" PRIx64,
		     o->key, CHECKSUM_FLAG | w->x, t.post_apply_checksum);
		r = -EBADMSG;
		goto out;
	}
	w->txid = h->max_txid;
	w->timestamp = h->timestamp;
out:
	free(page);
	ltx_decoder_free(d);
	return r;
}

int restore_run(const struct restore_options *o, uint64_t *ret_txid, char *err, size_t n)
{
	struct s3 *s = NULL;
	struct backup_objs all = {0};
	struct plan p = {0};
	struct bkplan_obj *pv = NULL;
	struct out w = {.fd = -1};
	struct backup_head head = {0};
	bool has_head = false;
	char tmp[4200] = "";
	int r;
	if ((r = backup_s3_new(o->cfg, NULL, &s)) < 0) {
		fail(err, n, "invalid backup configuration: %s", strerror(-r));
		return r;
	}
	if ((r = backup_list_db(s, o->cfg->backup.path, o->db, &all, err, n)) < 0)
		goto out;
	if ((r = vouched(s, o->cfg, o->db, &all, &head, &has_head, NULL, err, n)) < 0)
		goto out;
	if (!all.n) {
		fail(err, n, "the bucket holds no backup of '%s'", o->db);
		r = -ENOENT;
		goto out;
	}
	if ((r = make_plan(s, &all, o, &p, err, n)) < 0)
		goto out;
	snprintf(tmp, sizeof(tmp), "%s.tmp-restore-XXXXXX", o->output);
	if ((w.fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
		r = -errno;
		fail(err, n, "cannot create a file beside '%s': %s", o->output, strerror(-r));
		tmp[0] = '\0';
		goto out;
	}
	uint64_t total = 0, done = 0;
	for (size_t i = 0; i < p.n; i++)
		total += p.v[i]->size;
	for (size_t i = 0; i < p.n; i++) {
		char *buf = NULL;
		size_t len = 0;
		struct s3_result res;
		bool stop = false;
		if ((r = s3_get(s, p.v[i]->key, 0, 0, OBJECT_MAX, &buf, &len, &res)) < 0) {
			fail(err, n, "%s", res.err);
			goto out;
		}
		r = apply_object(&w, p.v[i], buf, len, o, &stop, err, n);
		free(buf);
		if (r < 0)
			goto out;
		if (stop && p.v[i]->level != BACKUP_LEVEL_L0 &&
		    p.v[i]->level != BACKUP_LEVEL_SNAPSHOT) {
			/* a compacted object ends after the target time: the objects it
			 * covers instead, as far as they go before it */
			if (!pv && (r = backup_objs_plan(&all, &pv)) < 0)
				goto out;
			size_t k = i;
			for (uint64_t cur = w.txid, lim = p.v[i]->max_txid - 1;;) {
				size_t j = bkplan_next(pv, all.n, cur, lim);
				if (j == all.n || k > all.n)
					break;
				p.v[k++] = &all.v[j];
				cur = all.v[j].max_txid;
			}
			if (k > i) {
				p.n = k;
				i--;
				continue;
			}
		}
		if (stop)
			break;
		done += p.v[i]->size;
		if (o->log)
			fprintf(o->log, "applied %s (TXID %" PRIx64 ")\n", p.v[i]->key, w.txid);
		if (o->progress)
			fprintf(stderr, "\rrestoring '%s': %3d%% (%zu/%zu objects)", o->db,
				total ? (int)(done * 100 / total) : 100, i + 1, p.n);
	}
	if (o->progress)
		fputc('\n', stderr);
	if (o->has_time && !w.txid) {
		fail(err, n, "'%s' has no state at or before that time in the bucket", o->db);
		r = -ENOENT;
		goto out;
	}
	if (has_head && !o->txid && !o->has_time &&
	    (w.txid != head.txid || (head.checksum && (CHECKSUM_FLAG | w.x) != head.checksum))) {
		fail(err, n,
		     "the chain of '%s' reaches TXID %" PRIx64 " (checksum %016" PRIx64
		     "), its head says TXID %" PRIx64 " (checksum %016" PRIx64
		     "): an object is missing",
		     o->db, w.txid, CHECKSUM_FLAG | w.x, head.txid, head.checksum);
		r = -EBADMSG;
		goto out;
	}
	/* rollback mode, as /export writes it: the file comes without a -wal */
	static const uint8_t one[2] = {1, 1};
	uint8_t hdr[20];
	if (!o->raw && fs_pread_full(w.fd, hdr, sizeof(hdr), 0) == (ssize_t)sizeof(hdr) &&
	    memcmp(hdr, "SQLite format 3", 16) == 0 && (r = fs_pwrite_full(w.fd, one, 2, 18)) < 0)
		goto io;
	if (fsync(w.fd) < 0 || rename(tmp, o->output) < 0) {
		r = -errno;
		goto io;
	}
	tmp[0] = '\0';
	char dir[4200];
	snprintf(dir, sizeof(dir), "%s", o->output);
	fs_fsync_dir(dirname(dir));
	*ret_txid = w.txid;
	if (o->result)
		*o->result = (struct restore_result){.txid = w.txid,
						     .checksum = CHECKSUM_FLAG | w.x,
						     .timestamp = w.timestamp,
						     .page_size = w.page_size,
						     .npages = w.npages};
	r = 0;
	goto out;
io:
	fail(err, n, "cannot write '%s': %s", o->output, strerror(-r));
out:
	if (w.fd >= 0)
		close(w.fd);
	if (tmp[0])
		unlink(tmp);
	free(w.pgck);
	free(p.v);
	free(pv);
	backup_objs_release(&all);
	backup_head_release(&head);
	s3_free(s);
	return r;
}

int restore_list(const struct config *cfg, const char *db, FILE *out, char *err, size_t n)
{
	struct s3 *s = NULL;
	struct backup_objs all = {0};
	struct backup_head head = {0};
	bool has_head = false;
	size_t dropped = 0;
	int r = backup_s3_new(cfg, NULL, &s);
	if (r < 0) {
		fail(err, n, "invalid backup configuration: %s", strerror(-r));
		return r;
	}
	if ((r = backup_list_db(s, cfg->backup.path, db, &all, err, n)) < 0)
		goto out;
	if ((r = vouched(s, cfg, db, &all, &head, &has_head, &dropped, err, n)) < 0)
		goto out;
	if (!all.n) {
		fail(err, n, "the bucket holds no backup of '%s'", db);
		r = -ENOENT;
		goto out;
	}
	if (has_head && head.n)
		fprintf(out, "head: TXID %016" PRIx64 ", %zu term(s), the last by %s\n", head.txid,
			head.n, head.terms[head.n - 1].writer);
	else
		fprintf(out, "head: none (objects uploaded before heads: all are listed)\n");
	if (dropped)
		fprintf(out,
			"%zu object(s) not vouched for by the head (a fenced primary's, or "
			"uploads the head never recorded): not listed, never restored\n",
			dropped);
	fprintf(out, "%-8s  %-16s  %-16s  %12s  %s\n", "kind", "min_txid", "max_txid", "size",
		"uploaded");
	uint64_t bytes = 0;
	for (size_t i = 0; i < all.n; i++) {
		const struct backup_obj *o = &all.v[i];
		char kind[16];
		if (o->level == BACKUP_LEVEL_SNAPSHOT)
			snprintf(kind, sizeof(kind), "snapshot");
		else
			snprintf(kind, sizeof(kind), "l%d", o->level);
		fprintf(out, "%-8s  %016" PRIx64 "  %016" PRIx64 "  %12" PRIu64 "  %s\n", kind,
			o->min_txid, o->max_txid, o->size, o->last_modified);
		bytes += o->size;
	}
	/* what the newest snapshot's chain reaches */
	const struct backup_obj *snap = NULL;
	for (size_t i = all.n; i-- > 0 && !snap;)
		if (all.v[i].level == BACKUP_LEVEL_SNAPSHOT)
			snap = &all.v[i];
	fprintf(out, "%zu object(s), %" PRIu64 " bytes\n", all.n, bytes);
	if (snap) {
		struct plan p = {0};
		if ((r = chain_from(&all, snap, UINT64_MAX, &p)) < 0)
			goto out;
		fprintf(out,
			"restorable: TXID %" PRIx64 " (snapshot) to %" PRIx64
			" (latest), at the end of each object after the snapshot\n",
			snap->max_txid, p.v[p.n - 1]->max_txid);
		free(p.v);
	} else {
		fprintf(out, "restorable: nothing (no snapshot)\n");
	}
	r = 0;
out:
	backup_objs_release(&all);
	backup_head_release(&head);
	s3_free(s);
	return r;
}

/* ------------------------------------------------------ disaster recovery */

/*
 * The restored file at path as an LTX snapshot at res->txid, applied to db:
 * its position becomes the bucket's (TXID, checksum). 0 or -errno.
 */
static int install_snapshot(struct store *store, struct db *db, const char *path,
			    const struct restore_result *res)
{
	struct ltx_encoder *e = NULL;
	struct ltx_trailer t;
	uint8_t *page = NULL;
	int src = -1, fd = -1, r;
	struct ltx_header h = {.page_size = res->page_size,
			       .commit = res->npages,
			       .min_txid = 1,
			       .max_txid = res->txid,
			       .timestamp = res->timestamp,
			       .node_id = store_node_id(store)};
	if ((src = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		r = -errno;
		goto out;
	}
	if ((r = db_ltx_tmpfile(db, &fd)) < 0)
		goto out;
	if (!(page = malloc(res->page_size))) {
		r = -ENOMEM;
		goto out;
	}
	if ((r = ltx_encoder_new(&e, &h, ltx_fd_write, &fd)) < 0)
		goto out;
	uint32_t lock = ltx_lock_pgno(res->page_size);
	for (uint32_t pg = 1; pg <= res->npages; pg++) {
		if (pg == lock)
			continue;
		ssize_t k =
		    fs_pread_full(src, page, res->page_size, (off_t)(pg - 1) * res->page_size);
		if (k != (ssize_t)res->page_size) {
			r = k < 0 ? (int)k : -EIO;
			goto out;
		}
		if ((r = ltx_encoder_add_page(e, pg, page)) < 0)
			goto out;
	}
	if ((r = ltx_encoder_finish(e, res->checksum, &t)) < 0)
		goto out;
	r = db_apply_ltx(db, fd, 0, NULL);
out:
	ltx_encoder_free(e);
	free(page);
	if (src >= 0)
		close(src);
	if (fd >= 0)
		close(fd);
	return r;
}

/* The cluster ID in the bucket's marker into id[21]; -ENOENT when there is none. */
static int read_marker(struct s3 *s, const char *path, char id[21], char *err, size_t n)
{
	char key[600], *body = NULL;
	size_t len = 0;
	struct s3_result res;
	snprintf(key, sizeof(key), "%s%s%s", path, path[0] ? "/" : "", BACKUP_MARKER);
	int r = s3_get(s, key, 0, 0, 256, &body, &len, &res);
	if (r == -ENOENT)
		return r;
	if (r < 0) {
		fail(err, n, "%s", res.err);
		return r;
	}
	size_t k = len < 20 ? len : 20;
	memcpy(id, body, k);
	id[k] = '\0';
	free(body);
	if (!store_cluster_id_valid(id)) {
		fail(err, n, "the bucket's marker '%s' holds no cluster ID", key);
		return -EBADMSG;
	}
	return 0;
}

int restore_into_store(const struct config *cfg, struct store *store, const char *data_dir,
		       size_t *ret_n, char *err, size_t n)
{
	struct s3 *s = NULL;
	struct backup_objs all = {0};
	char id[21], mine[21], prefix[600], tmp[4200] = "";
	const char *path = cfg->backup.path;
	char **seenv = NULL; /* the <dbkey>s done */
	size_t done = 0, nseen = 0;
	int r;
	*ret_n = 0;
	if ((r = backup_s3_new(cfg, NULL, &s)) < 0) {
		fail(err, n, "invalid backup configuration: %s", strerror(-r));
		return r;
	}
	if ((r = read_marker(s, path, id, err, n)) < 0) {
		if (r == -ENOENT)
			r = 0; /* no backup of any cluster there: nothing to restore */
		goto out;
	}
	store_cluster_id(store, mine);
	if (mine[0] && strcmp(mine, id) != 0) {
		fail(err, n,
		     "this node belongs to cluster %s, the bucket holds the backups of cluster %s",
		     mine, id);
		r = -EXDEV;
		goto out;
	}
	if ((r = backup_list_db(s, path, NULL, &all, err, n)) < 0)
		goto out;
	snprintf(prefix, sizeof(prefix), "%s%s", path, path[0] ? "/" : "");
	size_t pl = strlen(prefix);
	for (size_t i = 0; i < all.n; i++) {
		/* each database once: the listing is sorted by TXID, not by key */
		const char *k = all.v[i].key + pl, *slash = strchr(k, '/');
		char dbkey[1024], name[1024];
		bool seen = false;
		if (!slash || (size_t)(slash - k) >= sizeof(dbkey))
			continue;
		memcpy(dbkey, k, (size_t)(slash - k));
		dbkey[slash - k] = '\0';
		for (size_t j = 0; j < nseen && !seen; j++)
			seen = strcmp(seenv[j], dbkey) == 0;
		if (seen)
			continue;
		char **v = realloc(seenv, (nseen + 1) * sizeof(*v));
		if (!v || !(v[nseen] = strdup(dbkey))) {
			if (v)
				seenv = v;
			r = -ENOMEM;
			goto out;
		}
		seenv = v;
		nseen++;
		if (backup_dbkey_decode(dbkey, name, sizeof(name)) < 0)
			continue; /* not one of ours */
		struct restore_result res = {0};
		struct restore_options o = {.cfg = cfg, .db = name, .raw = true, .result = &res};
		uint64_t txid = 0;
		struct db *db = NULL;
		snprintf(tmp, sizeof(tmp), "%s/.ltxfs-restore-%zu", data_dir, done);
		unlink(tmp);
		o.output = tmp;
		if ((r = restore_run(&o, &txid, err, n)) < 0)
			goto out;
		if (!res.npages) { /* dropped: its latest state is no database */
			unlink(tmp);
			tmp[0] = '\0';
			continue;
		}
		if ((r = store_get_or_create(store, name, &db)) < 0) {
			fail(err, n, "cannot create database '%s': %s", name, strerror(-r));
			goto out;
		}
		if ((r = install_snapshot(store, db, tmp, &res)) < 0) {
			fail(err, n, "cannot install database '%s' at TXID %" PRIx64 ": %s", name,
			     txid, strerror(-r));
			goto out;
		}
		unlink(tmp);
		tmp[0] = '\0';
		done++;
	}
	if ((r = store_set_cluster_id(store, id)) < 0) {
		fail(err, n, "cannot store cluster ID %s: %s", id, strerror(-r));
		goto out;
	}
	*ret_n = done;
out:
	if (tmp[0])
		unlink(tmp);
	for (size_t i = 0; i < nseen; i++)
		free(seenv[i]);
	free(seenv);
	backup_objs_release(&all);
	s3_free(s);
	return r;
}
