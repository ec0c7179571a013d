/*
 * sigv4.c - AWS Signature Version 4, as S3 checks it.
 *
 * THE PROCESS (AWS's "Create a signed AWS API request"):
 *
 *   canonical request  METHOD \n URI \n QUERY \n
 *                      name:value \n ... (lower-case names, sorted) \n
 *                      \n
 *                      signed;header;names \n
 *                      payload SHA-256 (hex)
 *   string to sign     "AWS4-HMAC-SHA256" \n AMZDATE \n
 *                      DATE/REGION/SERVICE/aws4_request \n
 *                      hex SHA-256 of the canonical request
 *   signing key        HMAC("AWS4" + secret, DATE) -> HMAC(., REGION)
 *                      -> HMAC(., SERVICE) -> HMAC(., "aws4_request")
 *   signature          hex HMAC(signing key, string to sign)
 *
 * The URI and query arrive already canonical (s3.c builds them with
 * sigv4_uri_encode and sorts the parameters), so what is signed is exactly
 * what is sent: the reason ltxfs signs itself rather than through libcurl
 * 7.88's CURLOPT_AWS_SIGV4, which neither encodes nor sorts the query and
 * signs every header it is given (docs/backup.md). Signed headers are
 * always host, x-amz-content-sha256 and x-amz-date, plus the caller's.
 *
 * Pure code; the unit test checks AWS's published example signatures.
 */
#include "ltxfs/sigv4.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void hex(const unsigned char *in, size_t n, char *out)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[in[i] >> 4];
		out[2 * i + 1] = d[in[i] & 15];
	}
	out[2 * n] = '\0';
}

void sigv4_sha256_hex(const void *buf, size_t n, char out[SIGV4_SHA256_HEX])
{
	unsigned char md[32];
	unsigned int len = 0;
	EVP_Digest(buf, n, md, &len, EVP_sha256(), NULL);
	hex(md, 32, out);
}

void sigv4_md5(const void *buf, size_t n, unsigned char out[16])
{
	unsigned int len = 0;
	EVP_Digest(buf, n, out, &len, EVP_md5(), NULL);
}

static void hmac(const void *key, size_t kl, const char *msg, unsigned char out[32])
{
	unsigned int len = 32;
	HMAC(EVP_sha256(), key, (int)kl, (const unsigned char *)msg, strlen(msg), out, &len);
}

char *sigv4_uri_encode(const char *s, bool keep_slash)
{
	size_t n = strlen(s);
	char *out = malloc(3 * n + 1), *w = out;
	if (!out)
		return NULL;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		unsigned char c = *p;
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/'))
			*w++ = (char)c;
		else
			w += sprintf(w, "%%%02X", c);
	}
	*w = '\0';
	return out;
}

/* A growable string; err sticks at the first failure. */
struct sb {
	char *s;
	size_t len, cap;
	int err;
};

static void sb_add(struct sb *b, const char *s, size_t n)
{
	if (b->err)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 512;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->s, cap);
		if (!p) {
			b->err = -ENOMEM;
			return;
		}
		b->s = p;
		b->cap = cap;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void sb_str(struct sb *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

/* A header's value as SigV4 signs it: trimmed, runs of spaces folded. */
static void sb_value(struct sb *b, const char *v)
{
	while (*v == ' ' || *v == '\t')
		v++;
	const char *end = v + strlen(v);
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	bool space = false;
	for (const char *p = v; p < end; p++) {
		if (*p == ' ' || *p == '\t') {
			space = true;
			continue;
		}
		if (space)
			sb_add(b, " ", 1);
		space = false;
		sb_add(b, p, 1);
	}
}

struct hdr {
	char name[128];
	const char *value;
};

static int cmp_hdr(const void *a, const void *b)
{
	return strcmp(((const struct hdr *)a)->name, ((const struct hdr *)b)->name);
}

#define MAX_HEADERS 16

int sigv4_authorization(const struct sigv4_req *r, char *out, size_t n, char **creq)
{
	struct hdr h[MAX_HEADERS + 3];
	size_t nh = 0;
	struct sb c = {0}, sts = {0}, names = {0};
	int rc = 0;

	if (r->n_headers > MAX_HEADERS || strlen(r->amz_date) != 16)
		return -EINVAL;
	const struct sigv4_header fixed[] = {{"host", r->host},
					     {"x-amz-content-sha256", r->payload_sha256},
					     {"x-amz-date", r->amz_date}};
	for (size_t i = 0; i < 3 + r->n_headers; i++) {
		const struct sigv4_header *s = i < 3 ? &fixed[i] : &r->headers[i - 3];
		size_t nl = strlen(s->name);
		if (nl == 0 || nl >= sizeof(h[0].name))
			return -EINVAL;
		for (size_t k = 0; k <= nl; k++)
			h[nh].name[k] =
			    (char)((s->name[k] >= 'A' && s->name[k] <= 'Z') ? s->name[k] + 32
									    : s->name[k]);
		h[nh].value = s->value;
		for (size_t k = 0; k < nh; k++)
			if (strcmp(h[k].name, h[nh].name) == 0)
				return -EINVAL;
		nh++;
	}
	qsort(h, nh, sizeof(h[0]), cmp_hdr);

	sb_str(&c, r->method);
	sb_str(&c, "\n");
	sb_str(&c, r->uri);
	sb_str(&c, "\n");
	sb_str(&c, r->query ? r->query : "");
	sb_str(&c, "\n");
	for (size_t i = 0; i < nh; i++) {
		sb_str(&c, h[i].name);
		sb_str(&c, ":");
		sb_value(&c, h[i].value);
		sb_str(&c, "\n");
		if (i)
			sb_str(&names, ";");
		sb_str(&names, h[i].name);
	}
	sb_str(&c, "\n");
	sb_str(&c, names.s ? names.s : "");
	sb_str(&c, "\n");
	sb_str(&c, r->payload_sha256);
	if ((rc = c.err ? c.err : names.err) < 0)
		goto out;

	char date[9], chash[SIGV4_SHA256_HEX], scope[256];
	memcpy(date, r->amz_date, 8);
	date[8] = '\0';
	if (snprintf(scope, sizeof(scope), "%s/%s/%s/aws4_request", date, r->region, r->service) >=
	    (int)sizeof(scope)) {
		rc = -EINVAL;
		goto out;
	}
	sigv4_sha256_hex(c.s, c.len, chash);
	sb_str(&sts, "AWS4-HMAC-SHA256\n");
	sb_str(&sts, r->amz_date);
	sb_str(&sts, "\n");
	sb_str(&sts, scope);
	sb_str(&sts, "\n");
	sb_str(&sts, chash);
	if ((rc = sts.err) < 0)
		goto out;

	unsigned char k[32];
	char *ks = NULL;
	if (asprintf(&ks, "AWS4%s", r->secret_key) < 0) {
		rc = -ENOMEM;
		goto out;
	}
	hmac(ks, strlen(ks), date, k);
	explicit_bzero(ks, strlen(ks));
	free(ks);
	hmac(k, 32, r->region, k);
	hmac(k, 32, r->service, k);
	hmac(k, 32, "aws4_request", k);
	unsigned char sig[32];
	char sighex[65];
	hmac(k, 32, sts.s, sig);
	explicit_bzero(k, sizeof(k));
	hex(sig, 32, sighex);
	if (snprintf(out, n, "AWS4-HMAC-SHA256 Credential=%s/%s,SignedHeaders=%s,Signature=%s",
		     r->access_key, scope, names.s, sighex) >= (int)n) {
		rc = -ENAMETOOLONG;
		goto out;
	}
	if (creq) {
		*creq = c.s;
		c.s = NULL;
	}
out:
	free(c.s);
	free(sts.s);
	free(names.s);
	return rc;
}
