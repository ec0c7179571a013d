/*
 * backup.c - continuous upload of every database's transactions to S3.
 *
 * See docs/backup.md for the layout and the argument; include/ltxfs/backup.h
 * for the keys, and backup_bucket.c for the listing and the head object this
 * file reads and writes. In short, on the primary, every backup.sync-interval:
 *
 *   MARKER   once per process: PUT P ltxfs-cluster with If-None-Match: *
 *            holding this cluster's ID. 412 (it exists): GET it; another
 *            cluster's ID refuses every upload with an error, logged once.
 *   LIST     once per primary term (and again after a PUT found its key
 *            taken): ListObjectsV2 of the prefix: every database's objects.
 *   HEAD     per database, once per term (learn): GET P <dbkey>/head, the
 *            objects it does not vouch for set aside (backup_objs_vouched),
 *            this term's writer appended and the head written back with
 *            If-Match on its ETag (If-None-Match: * when there is none). M,
 *            the chain's TXID, is the head's. After each upload that moves
 *            M, the head again (head_advance), If-Match on this term's last
 *            ETag: a 412 means a newer term took it over, and this term
 *            uploads nothing more for the database (fence).
 *   SYNC     per database whose position is above M (an idle database
 *            costs nothing): the post-apply checksum at M (a HEAD of that
 *            object, once per term), then the local LTX files M+1, M+2, ...
 *            merged into one object M+1..N (ltxmerge.c, up to 32 MiB of
 *            pages per object), uploaded with If-None-Match: * (a key taken
 *            by another writer: replaced with If-Match, see put_object) as
 *            P <dbkey>/0000/<M+1>-<N>.ltx. When the chain cannot continue
 *            (the bucket holds nothing for the database, the file M+1 is
 *            gone, or its pre-apply checksum is not the bucket's checksum
 *            at M: the bucket holds another history), a snapshot of the
 *            current state goes up as P <dbkey>/0009/1-<N>.ltx instead.
 *   SNAPSHOT per database, when the newest snapshot is snapshot-interval
 *            old and the database changed since: the snapshot is taken at
 *            P, the L0 chain brought to exactly P, the L0 objects since the
 *            last compaction compacted up to P, then 0009/1-<P>.ltx.
 *   COMPACT  per database, every compaction-interval: the L0 run after the
 *            last compacted object or snapshot (bkplan_compact), GET and
 *            merged into P <dbkey>/0001/<min>-<max>.ltx.
 *   RETAIN   per database, when bkplan_retention's answer may have changed
 *            (term start, a snapshot or compacted object leaving the
 *            window's start): DeleteObjects of what no restore in the
 *            retention window needs.
 *
 * The listing and this term's own uploads and deletions make each
 * database's object list (struct bdb's objs), which the last three steps
 * read instead of listing the bucket again.
 *
 * Every object carries the commit time of its last transaction and its
 * post-apply checksum as user metadata. A failed request is retried at the
 * next interval (log_warn_repeat: one line per distinct error); local
 * retention keeps every file above the uploaded TXID meanwhile
 * (backup_retention_floor), and /info and /metrics show the backlog from
 * db_get_backup, which this thread keeps current.
 *
 * THREADS. One thread, run_thread, owns struct bdb and the listing; it
 * reads the store (positions, LTX files) through the db API, which takes
 * db->mu for short copies only. backup_stop sets stop and the abort flag
 * (an S3 request in flight returns within 20 ms) and joins.
 * backup_retention_floor reads db_get_backup, so it needs no lock here.
 */
#include "ltxfs/backup.h"

#include "ltxfs/bkplan.h"
#include "ltxfs/clock.h"
#include "ltxfs/config.h"
#include "ltxfs/db.h"
#include "ltxfs/log.h"
#include "ltxfs/ltx.h"
#include "ltxfs/ltxmerge.h"
#include "ltxfs/restore.h"
#include "ltxfs/s3.h"
#include "ltxfs/store.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define MERGE_MAX_BYTES (32u << 20)
#define OBJECT_MAX	(4ull << 30)
#define PASS_OBJECTS	8

/* ------------------------------------------------------------ the uploader */

/* The bucket's side of one database, for this term (the thread's own). */
struct bdb {
	bool listed;   /* txid/key below come from this term's listing or uploads */
	uint64_t txid; /* M: highest TXID in the bucket */
	char *key;     /* the object that holds M (NULL when txid is 0) */
	bool have_sum; /* sum is the post-apply checksum at M */
	uint64_t sum;
	bool warned_ahead; /* the bucket is ahead of this node: said once */
	uint64_t objects;  /* uploaded by this process */
	int64_t uploaded_ms;
	int64_t pending_since_ms;
	uint64_t pending_bytes;
	/* The database's objects in the bucket: this term's listing, plus what
	 * this term uploaded, minus what it deleted (snapshots, retention). */
	struct backup_objs objs;
	size_t objs_cap;
	uint64_t snap_txid;	   /* the newest snapshot's TXID, 0: none */
	int64_t snap_ms;	   /* when the newest snapshot was written */
	int64_t next_retention_ms; /* when retention may delete something next */
	int64_t compact_ms;	   /* the last compaction's time (this term) */
	/* The head object (docs/backup.md, "Fencing"): this term's copy, with
	 * this term's writer as its last term once claimed, and its ETag. */
	struct backup_head head;
	char head_etag[128];
	bool head_dirty;    /* d->txid went past the head's TXID: update it */
	bool fenced;	    /* another uploader took the head: nothing more this term */
	uint64_t retry_max; /* the end of the L0 object whose PUT failed, 0: none */
};

struct backup {
	struct store *store;
	struct s3 *s3;
	char *path;
	char prefix[300];
	int64_t interval_ms;
	int64_t snapshot_interval_ms;	/* 0: no scheduled snapshots */
	int64_t retention_ms;		/* 0: no deletion */
	int64_t compaction_interval_ms; /* 0: no compaction */
	bool compress;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool stop;
	volatile bool abort;
	bool primary;	/* accepted writes at the last pass */
	bool marker_ok; /* the marker names this cluster */
	bool refused;	/* the marker names another cluster: nothing is uploaded */
	bool need_list;
	char writer[BACKUP_WRITER_LEN]; /* this term's, on every object and in the heads */
	struct backup_objs listing;	/* this term's listing (every database) */
	struct bdb *dbs;
	size_t ndbs;
	char last_err[LOG_LAST_LEN];
};

static void bdb_reset(struct bdb *d)
{
	free(d->key);
	d->key = NULL;
	d->listed = false;
	d->txid = 0;
	d->have_sum = false;
	d->warned_ahead = false;
	backup_objs_release(&d->objs);
	d->objs_cap = 0;
	d->snap_txid = 0;
	d->snap_ms = 0;
	d->next_retention_ms = 0;
	d->compact_ms = 0;
	backup_head_release(&d->head);
	d->head_etag[0] = '\0';
	d->head_dirty = false;
	d->fenced = false;
	d->retry_max = 0;
}

/* Add an object to d->objs (a copy of key), keeping them sorted by max TXID. */
static int objs_add(struct bdb *d, const char *key, int level, uint64_t mn, uint64_t mx,
		    uint64_t size, const char *last_modified)
{
	struct backup_objs *o = &d->objs;
	if (o->n == d->objs_cap) {
		size_t nc = d->objs_cap ? d->objs_cap * 2 : 16;
		struct backup_obj *v = realloc(o->v, nc * sizeof(*v));
		if (!v)
			return -ENOMEM;
		o->v = v;
		d->objs_cap = nc;
	}
	char *k = strdup(key);
	if (!k)
		return -ENOMEM;
	size_t at = o->n;
	while (at > 0 && (o->v[at - 1].max_txid > mx ||
			  (o->v[at - 1].max_txid == mx && o->v[at - 1].level > level)))
		at--;
	memmove(&o->v[at + 1], &o->v[at], (o->n - at) * sizeof(*o->v));
	struct backup_obj *b = &o->v[at];
	memset(b, 0, sizeof(*b));
	b->key = k;
	b->level = level;
	b->min_txid = mn;
	b->max_txid = mx;
	b->size = size;
	snprintf(b->last_modified, sizeof(b->last_modified), "%s", last_modified);
	o->n++;
	if (level == BACKUP_LEVEL_SNAPSHOT) {
		int64_t ms;
		if (mx > d->snap_txid)
			d->snap_txid = mx;
		if (restore_parse_time(last_modified, &ms) == 0 && ms > d->snap_ms)
			d->snap_ms = ms;
	}
	return 0;
}

/* Publish the state of one database for /info, /metrics and retention. */
static void publish(struct backup *b, struct db *db, struct bdb *d, bool enabled)
{
	struct db_pos pos;
	db_get_pos(db, &pos);
	struct db_backup bk = {.enabled = enabled,
			       .known = enabled && d->listed,
			       .txid = d->txid,
			       .uploaded_ms = d->uploaded_ms,
			       .objects = d->objects,
			       .fenced = enabled && d->fenced};
	if (enabled && d->listed && pos.txid > d->txid) {
		bk.backlog_txns = pos.txid - d->txid;
		bk.pending_since_ms = d->pending_since_ms;
		bk.backlog_bytes = d->pending_bytes;
	}
	db_set_backup(db, &bk);
}

static int check_marker(struct backup *b)
{
	char key[400], id[21], want[32], etag[128];
	struct s3_result res;
	store_cluster_id(b->store, id);
	if (!id[0])
		return -EAGAIN; /* no cluster ID yet */
	snprintf(key, sizeof(key), "%s%s", b->prefix, BACKUP_MARKER);
	snprintf(want, sizeof(want), "%s\n", id);
	struct s3_put_options po = {.if_none_match = true, .content_type = "text/plain"};
	int r = s3_put(b->s3, key, want, strlen(want), &po, etag, &res);
	if (r == 0) {
		log_info("backup: bucket prefix '%s' now belongs to cluster %s", b->prefix, id);
		b->marker_ok = true;
		return 0;
	}
	if (r != -EEXIST) {
		log_warn_repeat(b->last_err,
				"backup: cannot write the cluster marker: %s (retrying)", res.err);
		return r;
	}
	char *body = NULL;
	size_t n = 0;
	if ((r = s3_get(b->s3, key, 0, 0, 256, &body, &n, &res)) < 0) {
		log_warn_repeat(b->last_err,
				"backup: cannot read the cluster marker: %s (retrying)", res.err);
		return r;
	}
	bool same = n == strlen(want) && memcmp(body, want, n) == 0;
	if (!same) {
		char other[64];
		size_t k = n < sizeof(other) - 1 ? n : sizeof(other) - 1;
		memcpy(other, body, k);
		other[k] = '\0';
		other[strcspn(other, "\r\n")] = '\0';
		log_error(
		    "backup: bucket prefix '%s' holds the backups of cluster '%s', not of this "
		    "cluster %s: nothing will be uploaded (use another backup.path)",
		    b->prefix[0] ? b->prefix : "(the bucket's root)", other, id);
		b->refused = true;
		free(body);
		return -EEXIST;
	}
	free(body);
	b->marker_ok = true;
	return 0;
}

static int list_all(struct backup *b)
{
	char err[600];
	backup_objs_release(&b->listing);
	int r = backup_list_db(b->s3, b->path, NULL, &b->listing, err, sizeof(err));
	if (r < 0) {
		log_warn_repeat(b->last_err, "backup: cannot list the bucket: %s (retrying)", err);
		return r;
	}
	for (size_t i = 0; i < b->ndbs; i++)
		bdb_reset(&b->dbs[i]);
	b->need_list = false;
	return 0;
}

struct membuf {
	char *p;
	size_t n, cap;
};

static int mem_write(void *ctx, const void *buf, size_t n)
{
	struct membuf *m = ctx;
	if (m->n + n > OBJECT_MAX)
		return -EFBIG;
	if (m->n + n > m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 1 << 16;
		while (cap < m->n + n)
			cap *= 2;
		char *p = realloc(m->p, cap);
		if (!p)
			return -ENOMEM;
		m->p = p;
		m->cap = cap;
	}
	memcpy(m->p + m->n, buf, n);
	m->n += n;
	return 0;
}

/*
 * PUT one object with its metadata (this term's writer among them),
 * If-None-Match: *. A key taken already: when the object there is this
 * term's own (an earlier PUT whose answer was lost), done; when another
 * writer's, it is no object the head vouches for (every key this term
 * writes ends past the head's TXID when the term claimed it, or holds what
 * a vouched object there holds), so this term, which holds the head,
 * replaces exactly that version (If-Match: its ETag). 0, -EEXIST (it
 * changed meanwhile), -errno.
 */
static int put_object(struct backup *b, const char *key, const struct membuf *body, int64_t ts_ms,
		      uint64_t post, struct s3_result *res)
{
	char ts[32], sum[17];
	backup_format_time(ts_ms, ts);
	snprintf(sum, sizeof(sum), "%016" PRIx64, post);
	struct s3_meta meta[] = {
	    {BACKUP_META_TIMESTAMP, ts}, {BACKUP_META_POST, sum}, {BACKUP_META_WRITER, b->writer}};
	struct s3_put_options po = {.if_none_match = true, .meta = meta, .n_meta = 3};
	int r = s3_put(b->s3, key, body->p, body->n, &po, NULL, res);
	if (r != -EEXIST)
		return r;
	struct s3_head h = {.n_meta = 1};
	h.meta[0].name = BACKUP_META_WRITER;
	if ((r = s3_head(b->s3, key, &h, res)) < 0)
		return r == -ENOENT ? -EEXIST : r; /* gone meanwhile: the next pass */
	if (h.meta[0].found && strcmp(h.meta[0].value, b->writer) == 0)
		return 0;
	log_warn("backup: object '%s' was written by %s, which the head does not vouch for "
		 "here: replacing it",
		 key, h.meta[0].found ? h.meta[0].value : "an unnamed writer");
	po.if_none_match = false;
	po.if_match = h.etag;
	return s3_put(b->s3, key, body->p, body->n, &po, NULL, res);
}

static void object_key(struct backup *b, struct db *db, int level, uint64_t mn, uint64_t mx,
		       char *buf, size_t n)
{
	char dbkey[1024], file[LTX_FILENAME_LEN + 1];
	backup_dbkey(db_name(db), dbkey, sizeof(dbkey));
	ltx_format_filename(file, mn, mx);
	snprintf(buf, n, "%s%s/%04x/%s", b->prefix, dbkey, level, file);
}

/* The post-apply checksum at M, from its object's metadata. */
static int fetch_sum(struct backup *b, struct bdb *d)
{
	struct s3_head h = {.n_meta = 1};
	struct s3_result res;
	h.meta[0].name = BACKUP_META_POST;
	int r = s3_head(b->s3, d->key, &h, &res);
	if (r < 0) {
		log_warn_repeat(b->last_err, "backup: %s (retrying)", res.err);
		return r;
	}
	char *e;
	uint64_t v = strtoull(h.meta[0].value, &e, 16);
	d->have_sum = true;
	d->sum = h.meta[0].found && strlen(h.meta[0].value) == 16 && !*e ? v : 0;
	return 0;
}

/* PUT d->head: If-Match its ETag, or If-None-Match: * when create. 0, -EEXIST (412), -errno. */
static int head_put(struct backup *b, struct db *db, struct bdb *d, bool create)
{
	char dbkey[1024], key[1600], *text = NULL, etag[128];
	size_t n = 0;
	struct s3_result res;
	backup_dbkey(db_name(db), dbkey, sizeof(dbkey));
	backup_head_key(b->prefix, dbkey, key, sizeof(key));
	int r = backup_head_format(&d->head, &text, &n);
	if (r < 0)
		return r;
	struct s3_put_options po = {.if_none_match = create,
				    .if_match = create ? NULL : d->head_etag,
				    .content_type = "text/plain"};
	r = s3_put(b->s3, key, text, n, &po, etag, &res);
	free(text);
	if (r == 0)
		snprintf(d->head_etag, sizeof(d->head_etag), "%s", etag);
	else if (r != -EEXIST)
		log_warn_repeat(b->last_err,
				"backup: db '%s': cannot write the head: %s (retrying)",
				db_name(db), res.err);
	return r;
}

/*
 * Another uploader took the head over (a 412 on this term's If-Match): this
 * node is a primary that lost its lease, or one that a newer primary
 * replaced. Nothing more goes up for db in this term; the head is read again
 * to say who holds it. Logged once.
 */
static void fence(struct backup *b, struct db *db, struct bdb *d)
{
	struct backup_head h = {0};
	char err[600];
	d->fenced = true;
	if (backup_head_get(b->s3, b->path, db_name(db), &h, NULL, err, sizeof(err)) == 0 && h.n)
		log_error("backup: db '%s': another primary took the backup over (the head names "
			  "writer %s at TXID %016" PRIx64 "; this node is %s): nothing more is "
			  "uploaded for it in this term",
			  db_name(db), h.terms[h.n - 1].writer, h.txid, b->writer);
	else
		log_error("backup: db '%s': another primary took the backup over (its head "
			  "changed): nothing more is uploaded for it in this term",
			  db_name(db));
	backup_head_release(&h);
	publish(b, db, d, true);
}

/*
 * The head at the chain's TXID (after an upload moved it). A 412 reads the
 * head: still this term's (its last term is this writer: an earlier PUT of
 * it took effect and its answer was lost), its ETag is taken and the PUT
 * tried again; another term's, this one is fenced. 0 or -errno (-EEXIST:
 * fenced).
 */
static int head_advance(struct backup *b, struct db *db, struct bdb *d)
{
	d->head.txid = d->txid;
	d->head.checksum = d->sum;
	int r = head_put(b, db, d, false);
	if (r == -EEXIST) {
		struct backup_head h = {0};
		char err[600], etag[128];
		int g = backup_head_get(b->s3, b->path, db_name(db), &h, etag, err, sizeof(err));
		bool mine = g == 0 && h.n && strcmp(h.terms[h.n - 1].writer, b->writer) == 0;
		backup_head_release(&h);
		if (g < 0 && g != -ENOENT) {
			d->head_dirty = true;
			log_warn_repeat(b->last_err, "backup: db '%s': cannot read the head: %s",
					db_name(db), err);
			return g;
		}
		if (mine) {
			snprintf(d->head_etag, sizeof(d->head_etag), "%s", etag);
			r = head_put(b, db, d, false);
		}
	}
	d->head_dirty = r < 0 && r != -EEXIST;
	if (r == -EEXIST)
		fence(b, db, d);
	return r;
}

/*
 * This term's view of db: its objects from the listing, the head read and
 * claimed (this term's writer appended, If-Match on the ETag read, or
 * created If-None-Match: * when there is none), and, with a head, only the
 * objects it vouches for. The chain continues from the head's TXID; a
 * bucket from before heads continues from its highest object. A claim that
 * loses a race with a head update is tried again (three times, then at the
 * next pass). 0 or -errno.
 */
static int learn(struct backup *b, struct db *db, struct bdb *d)
{
	char dbkey[1024], err[600];
	struct backup_objs mine = {0};
	size_t cap = 0, dropped = 0;
	int r = 0;
	if (backup_dbkey(db_name(db), dbkey, sizeof(dbkey)) < 0)
		return -ENAMETOOLONG;
	size_t kl = strlen(dbkey), pl = strlen(b->prefix);
	for (int attempt = 0; attempt < 3; attempt++) {
		bool create = false;
		bdb_reset(d);
		backup_objs_release(&mine);
		cap = 0;
		for (size_t i = 0; i < b->listing.n; i++) { /* sorted by max TXID */
			const struct backup_obj *o = &b->listing.v[i];
			if (strncmp(o->key + pl, dbkey, kl) != 0 || o->key[pl + kl] != '/')
				continue;
			if (mine.n == cap) {
				cap = cap ? cap * 2 : 16;
				struct backup_obj *v = realloc(mine.v, cap * sizeof(*v));
				if (!v) {
					r = -ENOMEM;
					goto out;
				}
				mine.v = v;
			}
			mine.v[mine.n] = *o;
			if (!(mine.v[mine.n].key = strdup(o->key))) {
				r = -ENOMEM;
				goto out;
			}
			mine.n++;
		}
		r = backup_head_get(b->s3, b->path, db_name(db), &d->head, d->head_etag, err,
				    sizeof(err));
		if (r == -ENOENT) {
			create = true;
		} else if (r < 0) {
			log_warn_repeat(b->last_err, "backup: db '%s': cannot read the head: %s",
					db_name(db), err);
			goto out;
		} else if ((r = backup_objs_vouched(b->s3, &d->head, &mine, &dropped, err,
						    sizeof(err))) < 0) {
			log_warn_repeat(b->last_err, "backup: db '%s': %s (retrying)", db_name(db),
					err);
			goto out;
		}
		/* the chain's end: the head's, or (no head) the highest object's */
		for (size_t i = 0; i < mine.n; i++)
			if (create ? mine.v[i].max_txid >= d->txid
				   : mine.v[i].max_txid == d->head.txid) {
				free(d->key);
				if (!(d->key = strdup(mine.v[i].key))) {
					r = -ENOMEM;
					goto out;
				}
				d->txid = mine.v[i].max_txid;
			}
		if (create) {
			if (d->txid && (r = fetch_sum(b, d)) < 0)
				goto out;
			d->head.txid = d->txid;
			d->head.checksum = d->sum;
		} else {
			d->txid = d->head.txid;
			d->sum = d->head.checksum;
			d->have_sum = true;
		}
		/* already ours when an earlier claim took effect and its answer was lost */
		if ((!d->head.n || strcmp(d->head.terms[d->head.n - 1].writer, b->writer) != 0) &&
		    (r = backup_head_add_term(&d->head, d->txid + 1, b->writer)) < 0)
			goto out;
		r = head_put(b, db, d, create);
		if (r != -EEXIST)
			break;
	}
	if (r == -EEXIST)
		r = -EAGAIN; /* lost three races with head updates: the next pass */
	if (r < 0)
		goto out;
	if (dropped)
		log_warn("backup: db '%s': %zu object(s) in the bucket are not vouched for by "
			 "its head (a fenced primary's, or uploads the head never recorded): "
			 "ignored",
			 db_name(db), dropped);
	for (size_t i = 0; i < mine.n; i++) {
		const struct backup_obj *o = &mine.v[i];
		if ((r = objs_add(d, o->key, o->level, o->min_txid, o->max_txid, o->size,
				  o->last_modified)) < 0)
			goto out;
	}
	d->listed = true;
out:
	backup_objs_release(&mine);
	return r;
}

/*
 * The next object for db: the merged LTX files after M into *body with its
 * range and header (0), or 1 when the chain cannot continue (a snapshot is
 * needed), or -errno.
 */
static int build_merged(struct backup *b, struct db *db, struct bdb *d, uint64_t upto,
			struct membuf *body, struct ltx_header *rh, struct ltx_trailer *rt)
{
	struct ltx_merge *m = NULL;
	uint64_t bytes = 0;
	int r = ltx_merge_new(&m, MERGE_MAX_BYTES);
	if (r < 0)
		return r;
	for (uint64_t t = d->txid + 1; t <= upto && !b->abort; t++) {
		int fd = -1;
		struct ltx_header h;
		struct ltx_trailer tr;
		r = db_ltx_open(db, t, &fd, &h, &tr);
		if (r == -ENOENT && t == d->txid + 1) {
			log_info("backup: db '%s': LTX file %016" PRIx64
				 " is not here (retention, or a snapshot): uploading a snapshot",
				 db_name(db), t);
			r = 1;
			goto out;
		}
		if (r < 0) {
			if (t > d->txid + 1) { /* upload what chains so far */
				r = 0;
				break;
			}
			goto out;
		}
		if (t == d->txid + 1) {
			if (!d->pending_since_ms)
				d->pending_since_ms = h.timestamp;
			if (h.pre_apply_checksum != d->sum) {
				close(fd);
				log_warn(
				    "backup: db '%s': the bucket's checksum at TXID %016" PRIx64
				    " is %016" PRIx64 ", this node's is %016" PRIx64
				    ": another history; uploading a snapshot",
				    db_name(db), d->txid, d->sum, h.pre_apply_checksum);
				r = 1;
				goto out;
			}
		}
		struct stat st;
		if (fstat(fd, &st) == 0)
			bytes += (uint64_t)st.st_size;
		r = ltx_merge_add(m, ltx_fd_read, &fd);
		close(fd);
		if (r == 0)
			t = h.max_txid; /* a range file (group commit) holds up to there */
		if (r == -EFBIG || r == -ESTALE) {
			r = 0;
			break;
		}
		if (r < 0)
			goto out;
	}
	if (b->abort) {
		r = -ECANCELED;
		goto out;
	}
	d->pending_bytes = bytes;
	r = ltx_merge_write(m, b->compress ? LTX_FLAG_COMPRESS_LZ4 : 0, store_node_id(b->store),
			    mem_write, body, rh, rt);
out:
	ltx_merge_free(m);
	return r;
}

/* A snapshot of the current state into *body. 0, -ENOENT (nothing to snapshot), -errno. */
static int build_snapshot(struct backup *b, struct db *db, struct membuf *body,
			  struct ltx_header *rh, struct ltx_trailer *rt)
{
	struct db_snap *sn = NULL;
	uint64_t size = 0, post = 0;
	char buf[1 << 16];
	int r = db_snap_start(db, &sn);
	if (r < 0)
		return r;
	db_snap_info(sn, &size, rh, &post);
	while (body->n < size && !b->abort) {
		ssize_t k = db_snap_read(sn, buf, sizeof(buf));
		if (k <= 0) {
			r = k < 0 ? (int)k : -EIO;
			break;
		}
		if ((r = mem_write(body, buf, (size_t)k)) < 0)
			break;
	}
	db_snap_free(sn);
	if (r == 0 && body->n != size)
		r = b->abort ? -ECANCELED : -EIO;
	rt->post_apply_checksum = post;
	return r;
}

/* After a PUT of key: the bucket's side of db is at max_txid with checksum post. */
static int uploaded(struct backup *b, struct db *db, struct bdb *d, const char *key, int level,
		    const struct ltx_header *h, uint64_t post, uint64_t size)
{
	char now[32];
	int64_t ms = clock_wall_ms();
	backup_format_time(ms, now);
	log_debug("backup: db '%s': uploaded '%s'", db_name(db), key);
	free(d->key);
	d->key = strdup(key);
	d->txid = h->max_txid;
	d->sum = post;
	d->have_sum = true;
	d->objects++;
	d->uploaded_ms = ms;
	d->pending_since_ms = 0;
	d->pending_bytes = 0;
	publish(b, db, d, true);
	if (level != BACKUP_LEVEL_L0 && d->next_retention_ms > ms + b->retention_ms)
		d->next_retention_ms = ms + b->retention_ms; /* the window may move past it */
	return objs_add(d, key, level, h->min_txid, h->max_txid, size, now);
}

/*
 * Upload what db committed after M up to target, in as many objects as it
 * takes (at most PASS_OBJECTS). 0 when the bucket reached target or nothing
 * more can go now, -errno.
 */
static int sync_l0(struct backup *b, struct db *db, struct bdb *d, uint64_t target)
{
	int r = 0;
	/*
	 * What was committed when the pass reached this database goes up, in one
	 * object unless the size budget cuts it (then more, at most PASS_OBJECTS);
	 * what commits meanwhile waits for the next pass, so a busy database
	 * costs about two PUTs (object, head) per sync-interval and cannot starve the others.
	 */
	for (int round = 0;; round++) {
		struct db_pos pos;
		db_get_pos(db, &pos);
		if (pos.txid <= d->txid || b->abort) {
			if (pos.txid < d->txid && !d->warned_ahead) {
				d->warned_ahead = true;
				log_warn(
				    "backup: db '%s': the bucket holds TXID %016" PRIx64
				    ", beyond this node's %016" PRIx64
				    " (a lost primary's transactions): a snapshot goes up once "
				    "this node passes it",
				    db_name(db), d->txid, pos.txid);
			}
			if (pos.txid == d->txid) {
				d->pending_since_ms = 0;
				d->pending_bytes = 0;
			}
			return 0;
		}
		if (round == PASS_OBJECTS || d->txid >= target)
			return 0;
		if (d->txid && !d->have_sum && (r = fetch_sum(b, d)) < 0)
			return r;
		uint64_t upto = pos.txid < target ? pos.txid : target;
		/* after a failed PUT, the same range again: when the failure was a
		 * lost answer, the object is there (put_object finds it ours), and
		 * no second object overlaps it */
		if (d->retry_max > d->txid && d->retry_max < upto)
			upto = d->retry_max;
		struct membuf body = {0};
		struct ltx_header h;
		struct ltx_trailer t;
		int level = BACKUP_LEVEL_L0;
		r = d->txid && d->sum ? build_merged(b, db, d, upto, &body, &h, &t) : 1;
		if (r == 1) {
			free(body.p);
			body = (struct membuf){0};
			level = BACKUP_LEVEL_SNAPSHOT;
			if (!d->pending_since_ms)
				d->pending_since_ms = pos.timestamp;
			r = build_snapshot(b, db, &body, &h, &t);
			if (r == -ENOENT) { /* nothing committed, or dropped: nothing to restore */
				free(body.p);
				return 0;
			}
			if (r == 0 && h.max_txid <= d->txid) {
				free(body.p); /* still behind the bucket */
				return 0;
			}
		}
		if (r < 0) {
			free(body.p);
			log_warn_repeat(b->last_err, "backup: db '%s': cannot build the object: %s",
					db_name(db), strerror(-r));
			return r;
		}
		char key[1400];
		struct s3_result res;
		publish(b, db, d, true); /* the backlog shows while the PUT is in flight */
		object_key(b, db, level, h.min_txid, h.max_txid, key, sizeof(key));
		r = put_object(b, key, &body, h.timestamp, t.post_apply_checksum, &res);
		free(body.p);
		if (r == -EEXIST) {
			log_warn("backup: db '%s': object '%s' exists already (another primary "
				 "wrote it): reading the bucket again",
				 db_name(db), key);
			b->need_list = true;
			return r;
		}
		if (r < 0) {
			d->retry_max = level == BACKUP_LEVEL_L0 ? h.max_txid : 0;
			log_warn_repeat(b->last_err,
					"backup: db '%s': upload failed, %" PRIu64
					" transaction(s) wait locally: %s (retrying)",
					db_name(db), pos.txid - d->txid, res.err);
			return r;
		}
		if ((r = uploaded(b, db, d, key, level, &h, t.post_apply_checksum, body.n)) < 0)
			return r;
		if ((r = head_advance(b, db, d)) < 0)
			return r == -EEXIST ? 0 : r;
	}
}

static int compact_once(struct backup *b, struct db *db, struct bdb *d);

/*
 * A scheduled snapshot (backup.snapshot-interval): when the newest snapshot
 * in the bucket is that old and the database changed since, the current
 * state goes up at level 9. The snapshot is taken first, at TXID P; the L0
 * chain is brought to exactly P (commits after the pass began), so that
 * the chain continues from the snapshot with no gap; with compaction on,
 * the L0 objects since the last compaction are compacted up to P (no
 * compacted object spans a snapshot, so they would stay L0 objects for
 * good); then the snapshot goes up. 0 (done, or not due), -errno.
 */
static int scheduled_snapshot(struct backup *b, struct db *db, struct bdb *d)
{
	struct db_pos pos;
	int64_t now = clock_wall_ms();
	if (!b->snapshot_interval_ms || now - d->snap_ms < b->snapshot_interval_ms)
		return 0;
	db_get_pos(db, &pos);
	if (pos.txid <= d->snap_txid || d->txid < d->snap_txid || !d->txid)
		return 0; /* unchanged since the last snapshot, or no chain yet */
	struct membuf body = {0};
	struct ltx_header h;
	struct ltx_trailer t;
	char key[1400];
	struct s3_result res;
	int r = build_snapshot(b, db, &body, &h, &t);
	if (r == -ENOENT) {
		r = 0; /* dropped meanwhile */
		goto out;
	}
	if (r < 0) {
		log_warn_repeat(b->last_err, "backup: db '%s': cannot build the snapshot: %s",
				db_name(db), strerror(-r));
		goto out;
	}
	if (h.max_txid > d->txid && (r = sync_l0(b, db, d, h.max_txid)) < 0)
		goto out;
	if (d->fenced)
		goto out;
	if (d->txid != h.max_txid)
		goto out; /* the chain did not reach P (a cut, the bucket ahead): next pass */
	if (d->snap_txid == h.max_txid)
		goto out; /* the chain's own snapshot went up at P meanwhile */
	if (b->compaction_interval_ms) {
		/* a failure leaves them L0 objects: logged there, not fatal here */
		while (!b->abort && !b->need_list && compact_once(b, db, d) == 0)
			;
		if (b->need_list)
			goto out;
	}
	object_key(b, db, BACKUP_LEVEL_SNAPSHOT, h.min_txid, h.max_txid, key, sizeof(key));
	r = put_object(b, key, &body, h.timestamp, t.post_apply_checksum, &res);
	if (r == -EEXIST) { /* this very snapshot is there (the chain's own) */
		d->snap_ms = now;
		d->snap_txid = h.max_txid;
		r = 0;
		goto out;
	}
	if (r < 0) {
		log_warn_repeat(b->last_err,
				"backup: db '%s': snapshot upload failed: %s (retrying)",
				db_name(db), res.err);
		goto out;
	}
	log_info("backup: db '%s': scheduled snapshot at TXID %016" PRIx64 " uploaded", db_name(db),
		 h.max_txid);
	r = uploaded(b, db, d, key, BACKUP_LEVEL_SNAPSHOT, &h, t.post_apply_checksum, body.n);
out:
	free(body.p);
	return r;
}

/*
 * Retention (backup.retention): delete, oldest first, the objects bkplan
 * finds no longer needed for a restore to any point of the window. Runs
 * when the answer may have changed (d->next_retention_ms): at the start of
 * a term, and when a snapshot leaves the window's start. 0 or -errno (a
 * failed DELETE: tried again at the next pass).
 */
static int apply_retention(struct backup *b, struct db *db, struct bdb *d)
{
	int64_t now = clock_wall_ms(), next = INT64_MAX;
	if (!b->retention_ms || now < d->next_retention_ms || !d->objs.n)
		return 0;
	struct bkplan_obj *v = NULL;
	const char **keys = NULL;
	size_t n = 0, ok_end = 0; /* the requests for d->objs.v[0..ok_end) succeeded */
	bool *del = calloc(d->objs.n, sizeof(*del));
	int r = del ? backup_objs_plan(&d->objs, &v) : -ENOMEM;
	if (r < 0 || (r = bkplan_retention(v, d->objs.n, now, b->retention_ms, del, &n, &next)) < 0)
		goto out;
	d->next_retention_ms = next;
	if (!n)
		goto out;
	if (!(keys = calloc(n < S3_DELETE_MAX ? n : S3_DELETE_MAX, sizeof(*keys)))) {
		r = -ENOMEM;
		goto out;
	}
	/* DeleteObjects, up to 1000 keys a request, oldest first (d->objs is
	 * sorted by max TXID); what a request deleted leaves d->objs below */
	for (size_t i = 0, k; !b->abort; ok_end = i) {
		struct s3_result res;
		for (k = 0; i < d->objs.n && k < S3_DELETE_MAX; i++)
			if (del[i])
				keys[k++] = d->objs.v[i].key;
		if (k == 0)
			break;
		if ((r = s3_delete_many(b->s3, keys, k, &res)) < 0) {
			/* what this request named stays listed: deleting it again is
			 * harmless, and it is no object a restore in the window needs */
			log_warn_repeat(b->last_err,
					"backup: db '%s': retention cannot delete: %s (retrying)",
					db_name(db), res.err);
			d->next_retention_ms = 0;
			break;
		}
		log_debug("backup: db '%s': retention deleted %zu object(s)", db_name(db), k);
	}
	/* d->objs without what was deleted */
	size_t w = 0;
	for (size_t i = 0; i < d->objs.n; i++) {
		if (i < ok_end && del[i])
			free(d->objs.v[i].key);
		else
			d->objs.v[w++] = d->objs.v[i];
	}
	d->objs.n = w;
out:
	free(keys);
	free(v);
	free(del);
	return r;
}

/*
 * One compacted object: the L0 run bkplan_compact chooses, downloaded,
 * verified and merged (ltxmerge.c checks that each object's pre-apply
 * checksum is the previous one's post-apply checksum), uploaded at level
 * 0001 as <first min>-<last max>. A run that passes the merge budget is cut
 * there (the rest is the next object's). 1 when there was nothing (more)
 * to compact, 0 after an upload, -errno.
 */
static int compact_once(struct backup *b, struct db *db, struct bdb *d)
{
	struct bkplan_obj *v = NULL;
	size_t *idx = NULL, k = 0, added = 0;
	struct ltx_merge *m = NULL;
	struct membuf body = {0};
	struct ltx_header h;
	struct ltx_trailer t;
	struct s3_result res;
	char key[1400];
	int r = backup_objs_plan(&d->objs, &v);
	if (r < 0)
		goto out;
	if (!(idx = calloc(d->objs.n + 1, sizeof(*idx)))) {
		r = -ENOMEM;
		goto out;
	}
	if (!(k = bkplan_compact(v, d->objs.n, BACKUP_LEVEL_L0, idx))) {
		r = 1;
		goto out;
	}
	if ((r = ltx_merge_new(&m, MERGE_MAX_BYTES)) < 0)
		goto out;
	for (size_t j = 0; j < k && !b->abort; j++) {
		const struct backup_obj *o = &d->objs.v[idx[j]];
		char *buf = NULL;
		size_t len = 0;
		if ((r = s3_get(b->s3, o->key, 0, 0, OBJECT_MAX, &buf, &len, &res)) < 0) {
			log_warn_repeat(b->last_err, "backup: db '%s': compaction: %s (retrying)",
					db_name(db), res.err);
			goto out;
		}
		struct ltx_mem src = {buf, len, 0};
		r = ltx_merge_add(m, ltx_mem_read, &src);
		free(buf);
		if (r == -EFBIG)
			break;
		if (r < 0) {
			/* -ESTALE: not the previous object's history (a partitioned old
			 * primary's object); -EBADMSG: corrupt */
			log_warn_repeat(b->last_err,
					"backup: db '%s': compaction stops at '%s': %s",
					db_name(db), o->key,
					r == -ESTALE ? "it does not continue the object before it"
						     : strerror(-r));
			if (r == -ESTALE || r == -EBADMSG)
				r = 0;
			break;
		}
		added++;
	}
	if (b->abort) {
		r = -ECANCELED;
		goto out;
	}
	if (r < 0)
		goto out;
	if (added < 2) {
		r = 1; /* nothing worth an object */
		goto out;
	}
	if ((r = ltx_merge_write(m, b->compress ? LTX_FLAG_COMPRESS_LZ4 : 0,
				 store_node_id(b->store), mem_write, &body, &h, &t)) < 0) {
		log_warn_repeat(b->last_err, "backup: db '%s': compaction: cannot merge: %s",
				db_name(db), strerror(-r));
		goto out;
	}
	object_key(b, db, BACKUP_LEVEL_L1, h.min_txid, h.max_txid, key, sizeof(key));
	r = put_object(b, key, &body, h.timestamp, t.post_apply_checksum, &res);
	if (r == -EEXIST) {
		b->need_list = true; /* written already: the listing will show it */
		goto out;
	}
	if (r < 0) {
		log_warn_repeat(b->last_err, "backup: db '%s': compaction upload failed: %s",
				db_name(db), res.err);
		goto out;
	}
	log_debug("backup: db '%s': compacted %zu objects into '%s'", db_name(db), added, key);
	char now[32];
	int64_t ms = clock_wall_ms();
	backup_format_time(ms, now);
	if (b->retention_ms && d->next_retention_ms > ms + b->retention_ms)
		d->next_retention_ms = ms + b->retention_ms; /* what it covers may go then */
	r = objs_add(d, key, BACKUP_LEVEL_L1, h.min_txid, h.max_txid, body.n, now);
out:
	ltx_merge_free(m);
	free(body.p);
	free(idx);
	free(v);
	return r;
}

/* Compaction into level 0001 every backup.compaction-interval. 0 or -errno. */
static int compact_db(struct backup *b, struct db *db, struct bdb *d)
{
	int64_t now = clock_wall_ms();
	int r = 0;
	if (!b->compaction_interval_ms || now - d->compact_ms < b->compaction_interval_ms)
		return 0;
	for (int round = 0; round < PASS_OBJECTS && !b->abort && !b->need_list; round++)
		if ((r = compact_once(b, db, d)) != 0)
			break;
	if (r >= 0)
		d->compact_ms = now; /* a failure is tried again at the next pass */
	return r < 0 ? r : 0;
}

/* Upload what db committed, then a snapshot, compaction and retention when due. */
static int sync_db(struct backup *b, struct db *db, struct bdb *d)
{
	struct db_pos pos;
	int r = 0;
	if (!d->listed && (r = learn(b, db, d)) < 0)
		return r;
	if (d->fenced)
		return 0;
	db_get_pos(db, &pos);
	r = sync_l0(b, db, d, pos.txid);
	/* a head update that failed after an upload (and no upload since) */
	if (r == 0 && d->head_dirty && !d->fenced && (r = head_advance(b, db, d)) == -EEXIST)
		r = 0;
	/* no snapshot, compaction or retention over objects the head does not
	 * vouch for yet */
	if (r < 0 || b->need_list || d->fenced || d->head_dirty)
		return r;
	if ((r = scheduled_snapshot(b, db, d)) < 0 || b->need_list)
		return r;
	if ((r = compact_db(b, db, d)) < 0 || b->need_list)
		return r;
	return apply_retention(b, db, d);
}

/* One pass over every database; 0 or the first error. */
static int pass(struct backup *b)
{
	int r;
	if (b->refused)
		return -EEXIST;
	if (!b->marker_ok && (r = check_marker(b)) < 0)
		return r;
	if (b->need_list && (r = list_all(b)) < 0)
		return r;
	size_t n = store_count(b->store);
	if (n > b->ndbs) {
		struct bdb *v = realloc(b->dbs, n * sizeof(*v));
		if (!v)
			return -ENOMEM;
		memset(v + b->ndbs, 0, (n - b->ndbs) * sizeof(*v));
		b->dbs = v;
		b->ndbs = n;
	}
	int first = 0;
	for (size_t i = 0; i < n && !b->abort; i++) {
		struct db *db = store_at(b->store, i);
		r = sync_db(b, db, &b->dbs[i]);
		publish(b, db, &b->dbs[i], true);
		if (r < 0 && !first)
			first = r;
		if (b->need_list)
			break;
	}
	return first;
}

/* A writer for a new term: this node, its epoch, and a random nonce. */
static void new_writer(struct backup *b)
{
	uint32_t nonce = 0;
	if (getrandom(&nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce))
		nonce = (uint32_t)clock_wall_ms() ^ (uint32_t)getpid();
	snprintf(b->writer, sizeof(b->writer), "%016" PRIX64 "-%016" PRIx64 "-%08" PRIx32,
		 store_node_id(b->store), store_epoch(b->store), nonce);
}

static void *run_thread(void *arg)
{
	struct backup *b = arg;
	pthread_mutex_lock(&b->mu);
	while (!b->stop) {
		struct timespec ts = clock_deadline(CLOCK_REALTIME, b->interval_ms);
		pthread_cond_timedwait(&b->cond, &b->mu, &ts);
		if (b->stop)
			break;
		pthread_mutex_unlock(&b->mu);
		bool primary = store_accepts_writes(b->store);
		if (primary != b->primary) {
			b->primary = primary;
			new_writer(b);
			b->need_list = true; /* a new term reads the bucket again */
			for (size_t i = 0; i < b->ndbs; i++) {
				bdb_reset(&b->dbs[i]);
				publish(b, store_at(b->store, i), &b->dbs[i], primary);
			}
		}
		if (primary && pass(b) == 0)
			b->last_err[0] = '\0';
		pthread_mutex_lock(&b->mu);
	}
	pthread_mutex_unlock(&b->mu);
	return NULL;
}

int backup_start(struct backup **ret, const struct backup_options *o)
{
	struct backup *b = calloc(1, sizeof(*b));
	int r;
	if (!b)
		return -ENOMEM;
	pthread_mutex_init(&b->mu, NULL);
	pthread_cond_init(&b->cond, NULL);
	b->store = o->store;
	b->interval_ms = o->cfg->backup.sync_interval_ms;
	b->snapshot_interval_ms = o->cfg->backup.snapshot_interval_ms;
	b->retention_ms = o->cfg->backup.retention_ms;
	b->compaction_interval_ms = o->cfg->backup.compaction_interval_ms;
	b->compress = o->cfg->data.compress;
	b->need_list = true;
	if (!(b->path = strdup(o->cfg->backup.path ? o->cfg->backup.path : ""))) {
		r = -ENOMEM;
		goto fail;
	}
	backup_key_prefix(b->path, b->prefix, sizeof(b->prefix));
	if ((r = backup_s3_new(o->cfg, &b->abort, &b->s3)) < 0)
		goto fail;
	if ((r = -pthread_create(&b->thread, NULL, run_thread, b)) < 0)
		goto fail;
	*ret = b;
	return 0;
fail:
	s3_free(b->s3);
	free(b->path);
	pthread_mutex_destroy(&b->mu);
	pthread_cond_destroy(&b->cond);
	free(b);
	return r;
}

void backup_stop(struct backup *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&b->mu);
	b->stop = true;
	b->abort = true;
	pthread_cond_signal(&b->cond);
	pthread_mutex_unlock(&b->mu);
	pthread_join(b->thread, NULL);
	for (size_t i = 0; i < b->ndbs; i++)
		bdb_reset(&b->dbs[i]);
	free(b->dbs);
	backup_objs_release(&b->listing);
	s3_free(b->s3);
	free(b->path);
	pthread_mutex_destroy(&b->mu);
	pthread_cond_destroy(&b->cond);
	free(b);
}

uint64_t backup_retention_floor(struct backup *b, struct db *db)
{
	if (!b)
		return UINT64_MAX;
	struct db_backup bk;
	db_get_backup(db, &bk);
	if (!bk.enabled) /* a primary's first pass has not run yet: keep everything */
		return store_accepts_writes(b->store) ? 0 : UINT64_MAX;
	return bk.known ? bk.txid : 0;
}
