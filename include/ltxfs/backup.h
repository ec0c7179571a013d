/*
 * backup.h - continuous backup of every database to S3, and the bucket
 * layout that restore reads (edge layer). docs/backup.md is the reference.
 *
 * LAYOUT (P is backup.path followed by '/', or nothing when the path is ""):
 *
 *   P ltxfs-cluster                                the cluster ID, "LFSC...\n"
 *   P <dbkey>/0000/<min %016x>-<max %016x>.ltx     transactions min..max
 *   P <dbkey>/0001/<min>-<max>.ltx                 L0 objects compacted (levels 1-8)
 *   P <dbkey>/0009/0000000000000001-<max>.ltx      a snapshot at max
 *
 * <dbkey> is the database name with every byte outside [A-Za-z0-9._-]
 * written as '~' and two upper-case hex digits ("tenants/42/app.db" ->
 * "tenants~2F42~2Fapp.db"): keys hold only characters that need no
 * encoding anywhere (URLs, SigV4, shells).
 *
 * THREADS. backup_start starts one thread that, every backup.sync-interval
 * while this node accepts writes (the primary), uploads what each database
 * committed since its last upload. It never holds a lock across a request.
 * backup_retention_floor is called by the retention thread.
 */
#ifndef LTXFS_BACKUP_H
#define LTXFS_BACKUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct store;
struct db;
struct s3;

#define BACKUP_LEVEL_L0	      0
#define BACKUP_LEVEL_L1	      1
#define BACKUP_LEVEL_SNAPSHOT 9
#define BACKUP_MARKER	      "ltxfs-cluster"
/* user metadata of every object (x-amz-meta-...) */
#define BACKUP_META_TIMESTAMP "ltxfs-timestamp"	    /* RFC 3339, ms: the state's commit time */
#define BACKUP_META_POST      "ltxfs-post-checksum" /* %016x */
#define BACKUP_META_WRITER    "ltxfs-writer" /* the uploader's term: see struct backup_head */
#define BACKUP_HEAD	      "head"	     /* P <dbkey>/head */
#define BACKUP_WRITER_LEN     48
#define BACKUP_HEAD_MAX	      (4u << 20)

/* The S3 client for cfg's backup section. 0, -EINVAL (*err says why), -ENOMEM. */
int backup_s3_new(const struct config *cfg, const volatile bool *abort, struct s3 **ret);

/* <dbkey> of a database name into buf (n bytes); 0 or -ENAMETOOLONG. */
int backup_dbkey(const char *name, char *buf, size_t n);
/* The name of a <dbkey>; 0, or -EINVAL when it is not one backup_dbkey writes. */
int backup_dbkey_decode(const char *key, char *buf, size_t n);
/* The prefix every key under backup.path starts with: "path/", or "" (n bytes). */
void backup_key_prefix(const char *path, char *buf, size_t n);
/* The head's key of a database: "<prefix><dbkey>/head" (n bytes). */
void backup_head_key(const char *prefix, const char *dbkey, char *buf, size_t n);

/* One object of a database's chain, as listed. */
struct backup_obj {
	char *key; /* malloc'd */
	int level;
	uint64_t min_txid, max_txid;
	uint64_t size;
	char last_modified[40];
};

/* Every object of a database, sorted by (max TXID, level), in a malloc'd array. */
struct backup_objs {
	struct backup_obj *v;
	size_t n;
};
void backup_objs_release(struct backup_objs *o);

struct bkplan_obj;
/*
 * The objects as bkplan sees them (level, range, time written from
 * last_modified; INT64_MAX, so never
 * deleted, when it does not parse), in a malloc'd array of o->n
 * entries in the same order. 0 or -ENOMEM.
 */
int backup_objs_plan(const struct backup_objs *o, struct bkplan_obj **ret);

/*
 * List the bucket under backup.path: the objects of database name (NULL: of
 * every database, for fn), and whether the marker exists. One listing of
 * the prefix with continuation. 0 or -errno with err (n bytes) saying why.
 */
int backup_list_db(struct s3 *s, const char *path, const char *name, struct backup_objs *ret,
		   char *err, size_t n);

/*
 * A database's head object (docs/backup.md, "Fencing"): the TXID the chain
 * has reached and its checksum, and every uploader term that held the head,
 * oldest first, each with the first TXID its objects may end at (the head's
 * TXID when it took the head over, plus one) and its writer
 * "<node %016X>-<epoch %016x>-<nonce %08x>", which every object it writes
 * carries as x-amz-meta-ltxfs-writer. The text:
 *
 *   ltxfs-head 1\n
 *   txid <%016x>\n
 *   checksum <%016x>\n
 *   term <start %016x> <writer>\n      (one line per term, oldest first)
 */
struct backup_head_term {
	uint64_t start;
	char writer[BACKUP_WRITER_LEN];
};
struct backup_head {
	uint64_t txid, checksum;
	struct backup_head_term *terms; /* malloc'd */
	size_t n;
};
/* Parse buf (n bytes) into *h (released by backup_head_release). 0, -EBADMSG, -ENOMEM. */
int backup_head_parse(const char *buf, size_t n, struct backup_head *h);
/* The text of h into a malloc'd buffer (*ret, *ret_n; the caller frees). 0 or -ENOMEM. */
int backup_head_format(const struct backup_head *h, char **ret, size_t *ret_n);
/* Append a term to h. 0 or -ENOMEM. */
int backup_head_add_term(struct backup_head *h, uint64_t start, const char *writer);
void backup_head_release(struct backup_head *h);
/*
 * GET the head of database name under path into *h and its ETag (128
 * bytes, may be NULL). 0, -ENOENT (no head: a bucket from before heads, or
 * nothing uploaded), -errno with err (n bytes) saying why.
 */
int backup_head_get(struct s3 *s, const char *path, const char *name, struct backup_head *h,
		    char *etag, char *err, size_t n);
/*
 * Keep in o only the objects the head vouches for (an object is used only
 * when this keeps it): those ending at or below h->txid and, when they end
 * at or after the second term's start, whose writer (one HEAD each) is the
 * writer of the term covering their end or of a later term. An object of a
 * fenced uploader ends in a later term's range and names an earlier writer.
 * *ret_dropped: how many went. 0 or -errno with err saying why.
 */
int backup_objs_vouched(struct s3 *s, const struct backup_head *h, struct backup_objs *o,
			size_t *ret_dropped, char *err, size_t n);

/* RFC 3339 in UTC with milliseconds ("2026-12-06T02:39:13.123Z") into buf[32]. */
void backup_format_time(int64_t ms, char buf[32]);

struct backup_options {
	struct store *store;
	const struct config *cfg;
};

struct backup;

/* Start the upload thread. 0, or -errno (the S3 configuration is invalid). */
int backup_start(struct backup **ret, const struct backup_options *o);
/* Stop and join it (an upload in flight is cancelled). NULL ok. */
void backup_stop(struct backup *b);

/*
 * The highest TXID whose LTX files local retention may remove for db: the
 * TXID the bucket holds while this node uploads, UINT64_MAX when it does
 * not (a replica; b NULL). Any thread.
 */
uint64_t backup_retention_floor(struct backup *b, struct db *db);

#endif
