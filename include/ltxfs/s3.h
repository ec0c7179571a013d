/*
 * s3.h - a small S3 client: PUT (with If-None-Match / If-Match), GET
 * (ranged), HEAD, ListObjectsV2 with continuation, DELETE, DeleteObjects
 * (edge layer).
 *
 * Requests go through httpc (libcurl) and are signed with SigV4 by sigv4.c,
 * so that what is signed is exactly what is sent (docs/backup.md, "Signing").
 * Addressing: path style (endpoint/bucket/key) when force_path_style, else
 * virtual-host style (bucket.host/key); without an endpoint, AWS's regional
 * endpoint https://s3.REGION.amazonaws.com. Object keys are sent and signed
 * encoded per RFC 3986 with '/' kept.
 *
 * Errors: every call returns 0 on a 2xx answer, or
 *   -ENOENT     404 (NoSuchKey, NoSuchBucket)
 *   -EEXIST     412 PreconditionFailed (If-None-Match: * on an existing key,
 *               or an If-Match that does not match)
 *   -EAGAIN     409 (ConditionalRequestConflict, OperationAborted) or 503 SlowDown
 *   -EACCES     403 (bad credentials, SignatureDoesNotMatch, AccessDenied)
 *   -EIO        other statuses, transport errors
 *   -ETIMEDOUT  no answer within the timeout
 *   -ECANCELED  the abort flag was set
 *   -EBADMSG    an answer that cannot be parsed
 * and fills res->err with one line naming the request, the key, the status,
 * S3's error code and message: "PUT 'a/b.ltx': 403 SignatureDoesNotMatch: The
 * request signature we calculated does not match ...".
 *
 * Threads: a struct s3 is immutable after s3_new and may be shared; each
 * call is independent. Counters (requests per kind, bytes, errors) go to
 * the process-wide metrics (metrics.h).
 */
#ifndef LTXFS_S3_H
#define LTXFS_S3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct s3_options {
	const char *endpoint; /* "http://127.0.0.1:9000"; NULL: AWS */
	bool force_path_style;
	const char *region; /* required */
	const char *bucket; /* required */
	const char *access_key_id;
	const char *secret_access_key;
	long timeout_ms;	    /* whole request; 0: 30 s */
	long connect_timeout_ms;    /* 0: 2 s */
	const volatile bool *abort; /* may be NULL */
};

struct s3;

/* Copy o. -EINVAL when region, bucket or a credential is missing, or the endpoint is no URL. */
int s3_new(struct s3 **ret, const struct s3_options *o);
void s3_free(struct s3 *s);

struct s3_result {
	long status;   /* HTTP status, 0 when none arrived */
	char code[64]; /* S3 error code, "" when none */
	char err[512]; /* one line, "" on success */
};

/* A user-metadata entry: sent as "x-amz-meta-<name>: <value>". */
struct s3_meta {
	const char *name;
	const char *value;
};

struct s3_put_options {
	bool if_none_match;   /* If-None-Match: *  (create only) */
	const char *if_match; /* If-Match: <etag>, or NULL */
	const struct s3_meta *meta;
	size_t n_meta;		  /* at most 4 */
	const char *content_type; /* NULL: application/octet-stream */
};

/* PUT body as key. *ret_etag (may be NULL; 128 bytes) gets the ETag. */
int s3_put(struct s3 *s, const char *key, const void *body, size_t n,
	   const struct s3_put_options *o, char *ret_etag, struct s3_result *res);

/*
 * GET key, bytes [off, off+len) (len 0: to the end; off 0 and len 0: whole),
 * into a malloc'd buffer (*ret, *ret_len; the caller frees) of at most max
 * bytes (-EFBIG beyond).
 */
int s3_get(struct s3 *s, const char *key, uint64_t off, uint64_t len, size_t max, char **ret,
	   size_t *ret_len, struct s3_result *res);

/* GET key whole, as s3_get, and its ETag into ret_etag (128 bytes). */
int s3_get_etag(struct s3 *s, const char *key, size_t max, char **ret, size_t *ret_len,
		char *ret_etag, struct s3_result *res);

struct s3_head {
	uint64_t size;
	char etag[128];
	/* x-amz-meta-* headers the caller asked for: values into these buffers */
	struct {
		const char *name;
		char value[128];
		bool found;
	} meta[4];
	size_t n_meta;
};

/* HEAD key: size, ETag and the named metadata. */
int s3_head(struct s3 *s, const char *key, struct s3_head *h, struct s3_result *res);

/* DELETE key (a missing key is success, as S3 answers 204). */
int s3_delete(struct s3 *s, const char *key, struct s3_result *res);

#define S3_DELETE_MAX 1000 /* keys per DeleteObjects request */

/*
 * DeleteObjects of n keys (1 to S3_DELETE_MAX) in one POST ?delete, quiet
 * mode, with its Content-MD5. A missing key counts as deleted. 0 when
 * every key is gone; -EIO when the answer lists an error for some key (the
 * first one's code and message in res): the caller may not know which
 * keys went, and deleting again is harmless.
 */
int s3_delete_many(struct s3 *s, const char *const *keys, size_t n, struct s3_result *res);

struct s3_object {
	const char *key;
	uint64_t size;
	const char *etag;
	const char *last_modified;
};

/*
 * ListObjectsV2 of the keys that start with prefix (may be "" or NULL) and
 * sort after start_after (NULL: none), every page (continuation tokens
 * followed), each object to fn in key order. fn returns 0 to go on, 1 to
 * stop (s3_list then returns 0), or -errno to fail with it. max_keys: per
 * page, 0 for S3's 1000.
 */
int s3_list(struct s3 *s, const char *prefix, const char *start_after, int max_keys,
	    int (*fn)(void *ctx, const struct s3_object *o), void *ctx, struct s3_result *res);

#endif
