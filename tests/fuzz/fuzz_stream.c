/*
 * fuzz_stream.c - libFuzzer target for the replication wire format: the
 * position map a primary decodes from any client, and the frame parser a
 * replica runs over whatever the network delivers. The input is fed to the
 * parser in pieces whose sizes come from the input itself, so every state
 * boundary is crossed; then the same bytes go through the chunked transfer
 * decoder (stream_chunked_feed) into a second parser. Seeds:
 * tests/fuzz/corpus/stream/.
 */
#include "ltxfs/stream.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct sink {
	uint64_t want, got;
	int frames;
};

static int begin(void *ctx, const char *name, uint32_t flags, uint64_t epoch, uint64_t len)
{
	struct sink *s = ctx;
	(void)flags;
	(void)epoch;
	if (!stream_name_valid(name, strlen(name)))
		abort(); /* the parser must never hand out a bad name */
	s->want = len;
	s->got = 0;
	return 0;
}

static int data_cb(void *ctx, const uint8_t *buf, size_t n)
{
	struct sink *s = ctx;
	(void)buf;
	s->got += n;
	if (s->got > s->want)
		abort();
	return 0;
}

static int end(void *ctx)
{
	struct sink *s = ctx;
	if (s->got != s->want)
		abort();
	s->frames++;
	return 0;
}

static int control(void *ctx, uint32_t type, int64_t ms, uint64_t epoch)
{
	(void)ctx;
	(void)type;
	(void)ms;
	(void)epoch;
	return 0;
}

static int handoff(void *ctx, const char *token, uint64_t epoch)
{
	(void)ctx;
	(void)epoch;
	size_t n = strlen(token);
	/* a token is 1..STREAM_TOKEN_MAX printable bytes, and survives a round trip */
	if (n == 0 || n > STREAM_TOKEN_MAX)
		abort();
	for (size_t i = 0; i < n; i++)
		if (token[i] < 0x21 || token[i] > 0x7e)
			abort();
	uint8_t f[STREAM_FRAME_HEADER + 12 + STREAM_TOKEN_MAX];
	if (stream_handoff_frame(f, epoch, token) != STREAM_FRAME_HEADER + 12 + n)
		abort();
	return 0;
}

static int feed(void *ctx, const uint8_t *buf, size_t n)
{
	if (n == 0)
		abort(); /* the decoder never hands out empty runs */
	return stream_parser_feed(ctx, buf, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct stream_pos *pos = NULL;
	size_t n = 0;
	if (stream_posmap_decode(data, size, &pos, &n) == 0) {
		uint8_t *enc = NULL;
		size_t elen = 0;
		/* a map that decodes re-encodes to the same bytes */
		if (stream_posmap_encode(pos, n, &enc, &elen) != 0 || elen != size ||
		    memcmp(enc, data, size) != 0)
			abort();
		free(enc);
	}
	free(pos);

	struct sink s = {0};
	struct stream_parser_cb cb = {begin, data_cb, end, control, &s, handoff};
	struct stream_parser p;
	stream_parser_init(&p, &cb);
	size_t off = 0, step = size ? (size_t)data[0] % 37 + 1 : 1;
	while (off < size) {
		size_t k = size - off < step ? size - off : step;
		if (stream_parser_feed(&p, data + off, k) < 0)
			break;
		off += k;
		step = step * 3 % 61 + 1;
	}

	/* the same bytes as a chunked body, decoded in pieces into a fresh parser */
	struct sink s2 = {0};
	struct stream_parser_cb cb2 = {begin, data_cb, end, control, &s2, handoff};
	struct stream_parser p2;
	struct stream_chunked ch;
	stream_parser_init(&p2, &cb2);
	stream_chunked_init(&ch);
	off = 0;
	step = size ? (size_t)data[size - 1] % 23 + 1 : 1;
	while (off < size) {
		size_t k = size - off < step ? size - off : step;
		if (stream_chunked_feed(&ch, data + off, k, feed, &p2) < 0)
			break;
		off += k;
		step = step * 5 % 43 + 1;
	}
	return 0;
}
