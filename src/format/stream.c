/*
 * stream.c - encoder and push parser for the replication wire format.
 *
 * The parser is a small state machine over the incoming bytes:
 *
 *   HDR    collect the 12-byte frame header; validate type and length
 *   META   (LTX frames) collect flags, epoch, name length, name and the CRC
 *          of those fields; the name length decides how much more to read
 *   DATA   (LTX frames) pass the LTX file's bytes to the callback
 *   CTRL   (HEARTBEAT) collect the fixed-size payload
 *   HANDOFF collect epoch, token length and token (at most STREAM_TOKEN_MAX),
 *          checked to be printable ASCII before the callback sees it
 *
 * Every length is bounded before anything is buffered: heartbeat payloads
 * are 16 bytes, handoff payloads at most 12 + STREAM_TOKEN_MAX and LTX
 * metadata at most STREAM_LTX_META_MAX (which holds either), so hostile
 * input can make the parser fail but never allocate.
 */
#include "ltxfs/stream.h"
#include "ltxfs/byteorder.h"

#include "ltxfs/crc.h"
#include "ltxfs/dbname.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { ST_HDR, ST_META, ST_DATA, ST_CTRL, ST_HANDOFF };

bool stream_name_valid(const char *name, size_t len)
{
	/* a database's path in the mount (dbname.h): "app.db", "tenants/42/app.db" */
	return len <= STREAM_NAME_MAX && dbname_valid(name, len);
}

static int cmp_pos(const void *a, const void *b)
{
	return strcmp(((const struct stream_pos *)a)->name, ((const struct stream_pos *)b)->name);
}

int stream_posmap_encode(struct stream_pos *pos, size_t n, uint8_t **ret, size_t *ret_len)
{
	size_t len = 4;
	if (n > 1)
		qsort(pos, n, sizeof(*pos), cmp_pos);
	for (size_t i = 0; i < n; i++) {
		size_t nl = strlen(pos[i].name);
		if (!stream_name_valid(pos[i].name, nl))
			return -EINVAL;
		len += 4 + nl + 16;
	}
	uint8_t *b = malloc(len), *p = b;
	if (!b)
		return -ENOMEM;
	put_be32(p, (uint32_t)n);
	p += 4;
	for (size_t i = 0; i < n; i++) {
		size_t nl = strlen(pos[i].name);
		put_be32(p, (uint32_t)nl);
		memcpy(p + 4, pos[i].name, nl);
		p += 4 + nl;
		put_be64(p, pos[i].txid);
		put_be64(p + 8, pos[i].checksum);
		p += 16;
	}
	*ret = b;
	*ret_len = len;
	return 0;
}

int stream_posmap_decode(const uint8_t *buf, size_t len, struct stream_pos **ret, size_t *ret_n)
{
	struct stream_pos *v = NULL;
	size_t off = 4;
	*ret = NULL;
	*ret_n = 0;
	if (len < 4)
		return -EBADMSG;
	uint32_t n = get_be32(buf);
	/* every entry takes at least 21 bytes: bound the allocation by the input */
	if (n > (len - 4) / 21)
		return -EBADMSG;
	if (n > 0) {
		v = calloc(n, sizeof(*v));
		if (!v)
			return -ENOMEM;
	}
	for (uint32_t i = 0; i < n; i++) {
		if (len - off < 4)
			goto bad;
		uint32_t nl = get_be32(buf + off);
		off += 4;
		if (nl > len - off || len - off - nl < 16 ||
		    !stream_name_valid((const char *)buf + off, nl))
			goto bad;
		memcpy(v[i].name, buf + off, nl);
		v[i].name[nl] = '\0';
		off += nl;
		v[i].txid = get_be64(buf + off);
		v[i].checksum = get_be64(buf + off + 8);
		off += 16;
		if (i > 0 && strcmp(v[i - 1].name, v[i].name) >= 0)
			goto bad; /* sorted and unique */
	}
	if (off != len)
		goto bad;
	*ret = v;
	*ret_n = n;
	return 0;
bad:
	free(v);
	return -EBADMSG;
}

void stream_frame_header(uint8_t out[STREAM_FRAME_HEADER], uint32_t type, uint64_t len)
{
	put_be32(out, type);
	put_be64(out + 4, len);
}

size_t stream_ltx_frame_begin(uint8_t *out, uint32_t flags, uint64_t epoch, const char *name,
			      uint64_t ltx_len)
{
	size_t nl = strlen(name);
	size_t meta = 4 + 8 + 4 + nl + 8;
	uint8_t *m = out + STREAM_FRAME_HEADER;
	stream_frame_header(out, STREAM_LTX, meta + ltx_len);
	put_be32(m, flags);
	put_be64(m + 4, epoch);
	put_be32(m + 12, (uint32_t)nl);
	memcpy(m + 16, name, nl);
	put_be64(m + 16 + nl, crc64_iso(0, m, 16 + nl));
	return STREAM_FRAME_HEADER + meta;
}

size_t stream_heartbeat_frame(uint8_t *out, int64_t now_ms, uint64_t epoch)
{
	stream_frame_header(out, STREAM_HEARTBEAT, 16);
	put_be64(out + STREAM_FRAME_HEADER, (uint64_t)now_ms);
	put_be64(out + STREAM_FRAME_HEADER + 8, epoch);
	return STREAM_FRAME_HEADER + 16;
}

void stream_parser_init(struct stream_parser *p, const struct stream_parser_cb *cb)
{
	memset(p, 0, sizeof(*p));
	p->cb = *cb;
	p->state = ST_HDR;
}

bool stream_parser_idle(const struct stream_parser *p)
{
	return p->err == 0 && p->state == ST_HDR && p->have == 0;
}

/* The frame header is complete: decide what follows. */
static int on_header(struct stream_parser *p)
{
	p->type = get_be32(p->hdr);
	p->len = get_be64(p->hdr + 4);
	p->have = 0;
	switch (p->type) {
	case STREAM_LTX:
		/* flags, epoch, name length, at least one name byte, CRC */
		if (p->len < 4 + 8 + 4 + 1 + 8)
			return -EBADMSG;
		p->meta_need = 16;
		p->state = ST_META;
		return 0;
	case STREAM_READY:
	case STREAM_END:
		if (p->len != 0)
			return -EBADMSG;
		p->state = ST_HDR;
		return p->cb.control ? p->cb.control(p->cb.ctx, p->type, 0, 0) : 0;
	case STREAM_HEARTBEAT:
		if (p->len != 16)
			return -EBADMSG;
		p->meta_need = 16;
		p->state = ST_CTRL;
		return 0;
	case STREAM_HANDOFF:
		/* epoch, token length, at least one token byte */
		if (p->len < 8 + 4 + 1 || p->len > 8 + 4 + STREAM_TOKEN_MAX)
			return -EBADMSG;
		p->meta_need = (size_t)p->len;
		p->state = ST_HANDOFF;
		return 0;
	default:
		return -EBADMSG;
	}
}

/* A complete HANDOFF payload: u64 epoch, u32 token length, token. */
static int on_handoff(struct stream_parser *p)
{
	uint32_t tl = get_be32(p->meta + 8);
	if ((uint64_t)tl + 12 != p->len)
		return -EBADMSG;
	char token[STREAM_TOKEN_MAX + 1];
	memcpy(token, p->meta + 12, tl);
	token[tl] = '\0';
	for (uint32_t i = 0; i < tl; i++)
		if (token[i] < 0x21 || token[i] > 0x7e)
			return -EBADMSG;
	p->have = 0;
	p->state = ST_HDR;
	return p->cb.handoff ? p->cb.handoff(p->cb.ctx, token, get_be64(p->meta)) : 0;
}

size_t stream_handoff_frame(uint8_t *out, uint64_t epoch, const char *token)
{
	size_t tl = strlen(token);
	stream_frame_header(out, STREAM_HANDOFF, 12 + tl);
	put_be64(out + STREAM_FRAME_HEADER, epoch);
	put_be32(out + STREAM_FRAME_HEADER + 8, (uint32_t)tl);
	memcpy(out + STREAM_FRAME_HEADER + 12, token, tl);
	return STREAM_FRAME_HEADER + 12 + tl;
}

/* The first 16 metadata bytes tell the name length; then the rest arrives. */
static int on_meta(struct stream_parser *p)
{
	if (p->meta_need == 16) {
		uint32_t nl = get_be32(p->meta + 12);
		if (nl == 0 || nl > STREAM_NAME_MAX || p->len < 16 + (uint64_t)nl + 8)
			return -EBADMSG;
		p->meta_need = 16 + nl + 8;
		return 0;
	}
	uint32_t nl = get_be32(p->meta + 12);
	if (get_be64(p->meta + 16 + nl) != crc64_iso(0, p->meta, 16 + nl))
		return -EBADMSG;
	if (!stream_name_valid((const char *)p->meta + 16, nl))
		return -EBADMSG;
	char name[STREAM_NAME_MAX + 1];
	memcpy(name, p->meta + 16, nl);
	name[nl] = '\0';
	p->remain = p->len - p->meta_need;
	p->state = ST_DATA;
	p->meta_need = 0;
	p->have = 0;
	int r = p->cb.ltx_begin ? p->cb.ltx_begin(p->cb.ctx, name, get_be32(p->meta),
						  get_be64(p->meta + 4), p->remain)
				: 0;
	if (r == 0 && p->remain == 0) {
		p->state = ST_HDR;
		r = p->cb.ltx_end ? p->cb.ltx_end(p->cb.ctx) : 0;
	}
	return r;
}

int stream_parser_feed(struct stream_parser *p, const uint8_t *buf, size_t n)
{
	int r = 0;
	if (p->err)
		return p->err;
	while (n > 0 && r == 0) {
		size_t k;
		switch (p->state) {
		case ST_HDR:
			k = STREAM_FRAME_HEADER - p->have;
			k = k < n ? k : n;
			memcpy(p->hdr + p->have, buf, k);
			p->have += k;
			if (p->have == STREAM_FRAME_HEADER)
				r = on_header(p);
			break;
		case ST_META:
			k = p->meta_need - p->have;
			k = k < n ? k : n;
			memcpy(p->meta + p->have, buf, k);
			p->have += k;
			if (p->have == p->meta_need)
				r = on_meta(p);
			break;
		case ST_HANDOFF:
			k = p->meta_need - p->have;
			k = k < n ? k : n;
			memcpy(p->meta + p->have, buf, k);
			p->have += k;
			if (p->have == p->meta_need)
				r = on_handoff(p);
			break;
		case ST_CTRL:
			k = p->meta_need - p->have;
			k = k < n ? k : n;
			memcpy(p->meta + p->have, buf, k);
			p->have += k;
			if (p->have == p->meta_need) {
				p->have = 0;
				p->state = ST_HDR;
				if (p->cb.control)
					r = p->cb.control(p->cb.ctx, p->type,
							  (int64_t)get_be64(p->meta),
							  get_be64(p->meta + 8));
			}
			break;
		default: /* ST_DATA */
			k = p->remain < n ? (size_t)p->remain : n;
			r = p->cb.ltx_data ? p->cb.ltx_data(p->cb.ctx, buf, k) : 0;
			p->remain -= k;
			if (r == 0 && p->remain == 0) {
				p->state = ST_HDR;
				p->have = 0;
				r = p->cb.ltx_end ? p->cb.ltx_end(p->cb.ctx) : 0;
			}
			break;
		}
		buf += k;
		n -= k;
	}
	if (r < 0)
		p->err = r;
	return r;
}

/* -------------------------------------------------- chunked transfer coding */

enum {
	CH_SIZE,    /* hex digits of a chunk size */
	CH_EXT,	    /* a chunk extension, up to CR */
	CH_SIZE_LF, /* the LF of the size line */
	CH_DATA,    /* chunk bytes */
	CH_DATA_CR, /* the CRLF after the chunk */
	CH_DATA_LF,
	CH_TRAILER,  /* the start of a trailer line, or the final CRLF */
	CH_TR_LINE,  /* a trailer field, up to LF */
	CH_FINAL_LF, /* the LF of the final CRLF */
	CH_DONE,
};

void stream_chunked_init(struct stream_chunked *c)
{
	memset(c, 0, sizeof(*c));
	c->state = CH_SIZE;
}

bool stream_chunked_done(const struct stream_chunked *c)
{
	return c->err == 0 && c->state == CH_DONE;
}

static int hexval(uint8_t b)
{
	if (b >= '0' && b <= '9')
		return b - '0';
	if (b >= 'a' && b <= 'f')
		return b - 'a' + 10;
	if (b >= 'A' && b <= 'F')
		return b - 'A' + 10;
	return -1;
}

int stream_chunked_feed(struct stream_chunked *c, const uint8_t *buf, size_t n,
			int (*out)(void *ctx, const uint8_t *buf, size_t n), void *ctx)
{
	size_t i = 0;
	while (c->err == 0 && i < n) {
		uint8_t b = buf[i];
		int h;
		switch (c->state) {
		case CH_SIZE:
			h = hexval(b);
			if (h >= 0 && c->digits < 15) {
				c->remain = c->remain << 4 | (uint64_t)h;
				c->digits++;
			} else if (c->digits > 0 && (b == ';' || b == ' ' || b == '\t')) {
				c->state = CH_EXT;
			} else if (c->digits > 0 && b == '\r') {
				c->state = CH_SIZE_LF;
			} else {
				c->err = -EPROTO;
			}
			i++;
			break;
		case CH_EXT:
			if (b == '\r')
				c->state = CH_SIZE_LF;
			i++;
			break;
		case CH_SIZE_LF:
			if (b != '\n') {
				c->err = -EPROTO;
				break;
			}
			c->digits = 0;
			c->state = c->remain ? CH_DATA : CH_TRAILER;
			i++;
			break;
		case CH_DATA: {
			size_t k = n - i < c->remain ? n - i : (size_t)c->remain;
			int r = out(ctx, buf + i, k);
			if (r < 0)
				return r;
			c->remain -= k;
			i += k;
			if (c->remain == 0)
				c->state = CH_DATA_CR;
			break;
		}
		case CH_DATA_CR:
		case CH_DATA_LF:
			if (b != (c->state == CH_DATA_CR ? '\r' : '\n')) {
				c->err = -EPROTO;
				break;
			}
			c->state = c->state == CH_DATA_CR ? CH_DATA_LF : CH_SIZE;
			i++;
			break;
		case CH_TRAILER:
			c->state = b == '\r' ? CH_FINAL_LF : CH_TR_LINE;
			i++;
			break;
		case CH_TR_LINE:
			if (b == '\n')
				c->state = CH_TRAILER;
			i++;
			break;
		case CH_FINAL_LF:
			if (b != '\n') {
				c->err = -EPROTO;
				break;
			}
			c->state = CH_DONE;
			i++;
			break;
		default: /* CH_DONE: nothing may follow */
			c->err = -EPROTO;
			break;
		}
	}
	return c->err;
}
