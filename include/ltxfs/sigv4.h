/*
 * sigv4.h - AWS Signature Version 4 for S3 requests (formats layer).
 *
 * Pure code: strings in, strings out, no I/O. Implements the signing process
 * AWS documents ("Signature Version 4 signing process", "Authenticating
 * Requests: Using the Authorization Header"): a canonical request, a string
 * to sign over its SHA-256, and an HMAC-SHA256 chain from the secret key
 * through date, region, service and "aws4_request". OpenSSL 3 (libcrypto)
 * computes SHA-256 and HMAC-SHA256; nothing else of it is used.
 *
 * Functions return 0 or -errno: -ENAMETOOLONG when the output buffer is too
 * small, -EINVAL for an argument outside the rules below, -ENOMEM.
 * Thread-safe: no state.
 */
#ifndef LTXFS_SIGV4_H
#define LTXFS_SIGV4_H

#include <stdbool.h>
#include <stddef.h>

#define SIGV4_SHA256_HEX 65 /* 64 hex digits and a NUL */

/* Hex SHA-256 of n bytes (lowercase). */
void sigv4_sha256_hex(const void *buf, size_t n, char out[SIGV4_SHA256_HEX]);
/* MD5 of n bytes: a DeleteObjects request must carry it (Content-MD5). */
void sigv4_md5(const void *buf, size_t n, unsigned char out[16]);

/*
 * RFC 3986 encoding as SigV4 wants it: every byte but A-Z a-z 0-9 - . _ ~
 * becomes %XX with upper-case hex; '/' is kept when keep_slash (an object
 * key in a path), encoded otherwise (a query value). A malloc'd string the
 * caller frees, or NULL on OOM.
 */
char *sigv4_uri_encode(const char *s, bool keep_slash);

struct sigv4_header {
	const char *name;  /* any case; signed lower-cased */
	const char *value; /* signed trimmed, inner runs of spaces folded to one */
};

struct sigv4_req {
	const char *method;	    /* "GET", "PUT", ... */
	const char *uri;	    /* the canonical URI: the path as sent, already encoded */
	const char *query;	    /* the canonical query string (sorted, encoded), or "" */
	const char *host;	    /* the Host header as sent: host[:port] */
	const char *amz_date;	    /* X-Amz-Date, "YYYYMMDDTHHMMSSZ" */
	const char *payload_sha256; /* X-Amz-Content-Sha256: hex SHA-256 of the body */
	/* Further headers to sign (x-amz-meta-*, If-None-Match, Range, ...): the
	 * caller sends the same ones. Names must differ from host, x-amz-date and
	 * x-amz-content-sha256 and from each other. */
	const struct sigv4_header *headers;
	size_t n_headers;
	const char *region;
	const char *service; /* "s3" */
	const char *access_key;
	const char *secret_key;
};

/*
 * The Authorization header's value ("AWS4-HMAC-SHA256 Credential=...,
 * SignedHeaders=...,Signature=...") into out (n bytes). When creq is not NULL,
 * the canonical request is also returned there (malloc'd; the caller frees;
 * for tests and debug logs).
 */
int sigv4_authorization(const struct sigv4_req *r, char *out, size_t n, char **creq);

#endif
