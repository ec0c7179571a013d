/*
 * s3xml.c - the S3 XML documents ltxfs reads (ListObjectsV2, Error).
 *
 * FORMAT. S3 answers ListObjectsV2 with
 *
 *   <ListBucketResult xmlns="...">
 *     <IsTruncated>true</IsTruncated>
 *     <Contents><Key>a/b</Key><LastModified>2026-...Z</LastModified>
 *               <ETag>"9b2c..."</ETag><Size>1152</Size>...</Contents>
 *     ...
 *     <NextContinuationToken>...</NextContinuationToken>
 *   </ListBucketResult>
 *
 * and a failed request with <Error><Code>..</Code><Message>..</Message>...
 * </Error>. The scanner below finds an element by name between two bounds:
 * the first "<Name" followed by '>' or whitespace (so <Key> is not taken for
 * <KeyCount>), and the first "</Name>" after it. Elements of these documents
 * do not nest inside one of the same name, so that is exact for them. Text is
 * entity-decoded (&amp; &lt; &gt; &quot; &apos; &#N; &#xN;, a code point
 * encoded as UTF-8); an unknown or malformed entity is -EBADMSG. CDATA and
 * comments are not expected from S3 and not handled.
 *
 * Bounds: at most S3XML_MAX_OBJECTS Contents per document, S3XML_MAX_TEXT
 * bytes per value. Pure code; a fuzz target.
 */
#include "ltxfs/s3xml.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The next element name in [p, end): its content in [*in, *in_end), and the end of it. */
static const char *find_elem(const char *p, const char *end, const char *name, const char **in,
			     const char **in_end)
{
	size_t nl = strlen(name);
	while (p < end) {
		const char *lt = memchr(p, '<', (size_t)(end - p));
		if (!lt || (size_t)(end - lt) < nl + 2)
			return NULL;
		p = lt + 1;
		if (memcmp(p, name, nl) != 0)
			continue;
		char c = p[nl];
		if (c != '>' && c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '/')
			continue;
		const char *gt = memchr(p + nl, '>', (size_t)(end - (p + nl)));
		if (!gt)
			return NULL;
		if (gt[-1] == '/') { /* <Name/>: empty */
			*in = *in_end = gt + 1;
			return gt + 1;
		}
		const char *q = gt + 1;
		while (q < end) {
			const char *cl = memchr(q, '<', (size_t)(end - q));
			if (!cl || (size_t)(end - cl) < nl + 3)
				return NULL;
			if (cl[1] == '/' && memcmp(cl + 2, name, nl) == 0 && cl[2 + nl] == '>') {
				*in = gt + 1;
				*in_end = cl;
				return cl + 3 + nl;
			}
			q = cl + 1;
		}
		return NULL;
	}
	return NULL;
}

static int put_utf8(char *w, unsigned long cp)
{
	if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return -1;
	if (cp < 0x80) {
		w[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		w[0] = (char)(0xC0 | (cp >> 6));
		w[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		w[0] = (char)(0xE0 | (cp >> 12));
		w[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		w[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	w[0] = (char)(0xF0 | (cp >> 18));
	w[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	w[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	w[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Decode [p, end) into out (n bytes). 0, or -EBADMSG (bad entity, too long, a NUL). */
static int decode_text(const char *p, const char *end, char *out, size_t n)
{
	size_t w = 0;
	if ((size_t)(end - p) > S3XML_MAX_TEXT)
		return -EBADMSG;
	while (p < end) {
		char tmp[4];
		int k = 1;
		if (*p == '\0')
			return -EBADMSG;
		if (*p != '&') {
			tmp[0] = *p++;
		} else {
			const char *semi = memchr(p, ';', (size_t)(end - p));
			if (!semi || semi - p > 12)
				return -EBADMSG;
			size_t el = (size_t)(semi - p - 1);
			const char *e = p + 1;
			if (el == 3 && memcmp(e, "amp", 3) == 0)
				tmp[0] = '&';
			else if (el == 2 && memcmp(e, "lt", 2) == 0)
				tmp[0] = '<';
			else if (el == 2 && memcmp(e, "gt", 2) == 0)
				tmp[0] = '>';
			else if (el == 4 && memcmp(e, "quot", 4) == 0)
				tmp[0] = '"';
			else if (el == 4 && memcmp(e, "apos", 4) == 0)
				tmp[0] = '\'';
			else if (el >= 2 && e[0] == '#') {
				unsigned long cp = 0;
				bool hx = e[1] == 'x';
				size_t i = hx ? 2 : 1;
				if (i >= el)
					return -EBADMSG;
				for (; i < el; i++) {
					char c = e[i];
					int d = c >= '0' && c <= '9'	     ? c - '0'
						: hx && c >= 'a' && c <= 'f' ? c - 'a' + 10
						: hx && c >= 'A' && c <= 'F' ? c - 'A' + 10
									     : -1;
					if (d < 0 || cp > 0x10FFFF)
						return -EBADMSG;
					cp = cp * (hx ? 16 : 10) + (unsigned long)d;
				}
				if ((k = put_utf8(tmp, cp)) < 0)
					return -EBADMSG;
			} else {
				return -EBADMSG;
			}
			p = semi + 1;
		}
		if (w + (size_t)k >= n)
			return -EBADMSG;
		memcpy(out + w, tmp, (size_t)k);
		w += (size_t)k;
	}
	out[w] = '\0';
	return 0;
}

/* The decoded text of the first element name in [p, end) as a malloc'd string ("" if none). */
static int text_dup(const char *p, const char *end, const char *name, char **ret, bool *found)
{
	const char *in, *in_end;
	char *buf = malloc(S3XML_MAX_TEXT + 1);
	int r = 0;
	if (!buf)
		return -ENOMEM;
	buf[0] = '\0';
	bool f = find_elem(p, end, name, &in, &in_end) != NULL;
	if (f)
		r = decode_text(in, in_end, buf, S3XML_MAX_TEXT + 1);
	if (r < 0) {
		free(buf);
		return r;
	}
	if (found)
		*found = f;
	*ret = buf;
	return 0;
}

void s3xml_list_release(struct s3xml_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++) {
		free(l->objs[i].key);
		free(l->objs[i].etag);
		free(l->objs[i].last_modified);
	}
	free(l->objs);
	free(l->next_token);
	memset(l, 0, sizeof(*l));
}

int s3xml_parse_list(const char *xml, size_t len, struct s3xml_list *ret)
{
	const char *end = xml + len, *in, *in_end, *p;
	int r = 0;
	memset(ret, 0, sizeof(*ret));
	if (!find_elem(xml, end, "ListBucketResult", &in, &in_end))
		return -EBADMSG;
	end = in_end;
	/* Top-level fields: look only outside the Contents elements. */
	const char *first = NULL, *ci, *ce;
	if (find_elem(in, end, "Contents", &ci, &ce)) {
		first = ci;
		while (first > in && *first != '<')
			first--;
	}
	char *t = NULL;
	bool found = false;
	if ((r = text_dup(in, first ? first : end, "IsTruncated", &t, &found)) < 0)
		goto fail;
	if (!found && first) { /* after the Contents */
		free(t);
		const char *last = in, *x;
		while ((x = find_elem(last, end, "Contents", &ci, &ce)))
			last = x;
		if ((r = text_dup(last, end, "IsTruncated", &t, &found)) < 0)
			goto fail;
	}
	ret->truncated = strcmp(t, "true") == 0;
	free(t);
	/* NextContinuationToken is never inside a Contents element. */
	if ((r = text_dup(in, end, "NextContinuationToken", &ret->next_token, &found)) < 0)
		goto fail;
	if (!found) {
		free(ret->next_token);
		ret->next_token = NULL;
	}
	size_t cap = 0;
	for (p = in;;) {
		const char *x = find_elem(p, end, "Contents", &ci, &ce);
		if (!x)
			break;
		p = x;
		if (ret->n == S3XML_MAX_OBJECTS) {
			r = -EBADMSG;
			goto fail;
		}
		if (ret->n == cap) {
			size_t nc = cap ? cap * 2 : 64;
			struct s3xml_object *o = realloc(ret->objs, nc * sizeof(*o));
			if (!o) {
				r = -ENOMEM;
				goto fail;
			}
			ret->objs = o;
			cap = nc;
		}
		struct s3xml_object *o = &ret->objs[ret->n];
		memset(o, 0, sizeof(*o));
		ret->n++;
		char *sz = NULL;
		if ((r = text_dup(ci, ce, "Key", &o->key, &found)) < 0)
			goto fail;
		if (!found || !o->key[0]) {
			r = -EBADMSG;
			goto fail;
		}
		if ((r = text_dup(ci, ce, "ETag", &o->etag, NULL)) < 0 ||
		    (r = text_dup(ci, ce, "LastModified", &o->last_modified, NULL)) < 0 ||
		    (r = text_dup(ci, ce, "Size", &sz, NULL)) < 0)
			goto fail;
		char *e;
		errno = 0;
		o->size = strtoull(sz, &e, 10);
		bool bad = !sz[0] || *e || errno || sz[0] == '-';
		free(sz);
		if (bad) {
			r = -EBADMSG;
			goto fail;
		}
	}
	return 0;
fail:
	s3xml_list_release(ret);
	return r;
}

int s3xml_parse_error(const char *xml, size_t len, char *code, size_t code_n, char *msg,
		      size_t msg_n)
{
	const char *end = xml + len, *in, *in_end, *ci, *ce;
	char buf[S3XML_MAX_TEXT + 1];
	if (code_n)
		code[0] = '\0';
	if (msg_n)
		msg[0] = '\0';
	if (!find_elem(xml, end, "Error", &in, &in_end))
		return -EBADMSG;
	if (find_elem(in, in_end, "Code", &ci, &ce) &&
	    decode_text(ci, ce, buf, sizeof(buf)) == 0 && code_n)
		snprintf(code, code_n, "%s", buf);
	if (find_elem(in, in_end, "Message", &ci, &ce) &&
	    decode_text(ci, ce, buf, sizeof(buf)) == 0 && msg_n)
		snprintf(msg, msg_n, "%s", buf);
	return 0;
}
