/*
 * stream.h - the replication wire format (formats layer): the position map a
 * replica sends in POST /stream and the frames the primary answers with.
 * docs/protocol.md has the byte tables; every integer is big-endian.
 *
 *   position map   u32 count, then count entries sorted by name:
 *                  u32 nameLen, name, u64 TXID, u64 post-apply checksum
 *   frame          u32 type, u64 payload length, payload
 *
 * The request carries "Connection: Upgrade" and "Upgrade: ltxfs-stream"
 * (STREAM_UPGRADE); the primary answers 101 and the frames follow in HTTP
 * chunked coding (stream_chunked_*), ended by the zero-length chunk.
 *
 * Frame payloads:
 *   STREAM_LTX        u32 flags, u64 epoch, u32 nameLen, name,
 *                     u64 crc64(everything above), then the LTX file
 *   STREAM_READY      empty: the initial catch-up is complete
 *   STREAM_END        empty: the primary is closing the stream cleanly
 *   STREAM_HANDOFF    u64 epoch, u32 tokenLen, token (printable ASCII, at most
 *                     STREAM_TOKEN_MAX bytes): the primary hands its lease to
 *                     this replica, which has received everything before it
 *   STREAM_HEARTBEAT  i64 primary time in ms since the epoch, u64 epoch
 *
 * Pure code, no I/O. The parser is a push parser: feed it whatever arrived
 * and it calls back per frame, so a multi-gigabyte snapshot is never held in
 * memory. Not thread-safe; one parser per connection. Returns 0 or -errno:
 * -EBADMSG for bytes that break a rule (unknown type, bad length, bad CRC,
 * bad name), or whatever a callback returned.
 */
#ifndef LTXFS_STREAM_H
#define LTXFS_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum stream_frame_type {
	STREAM_LTX = 1,
	STREAM_READY = 2,
	STREAM_END = 3,
	STREAM_HANDOFF = 5,
	STREAM_HEARTBEAT = 7,
};

/* STREAM_LTX flags */
#define STREAM_LTX_DIVERGED 0x1u /* a snapshot sent because the replica's history diverged */

#define STREAM_UPGRADE	    "ltxfs-stream" /* the Upgrade token of POST /stream */
#define STREAM_NAME_MAX	    255
#define STREAM_TOKEN_MAX    200
#define STREAM_FRAME_HEADER 12 /* u32 type + u64 length */
#define STREAM_LTX_META_MAX (4 + 8 + 4 + STREAM_NAME_MAX + 8)

struct stream_pos {
	char name[STREAM_NAME_MAX + 1];
	uint64_t txid;
	uint64_t checksum;
};

/* A database name acceptable on the wire and in a data directory. */
bool stream_name_valid(const char *name, size_t len);

/*
 * Encode n positions (sorted here by name) into a malloc'd buffer. 0 or -errno.
 */
int stream_posmap_encode(struct stream_pos *pos, size_t n, uint8_t **ret, size_t *ret_len);
/*
 * Decode a whole position map. *ret is malloc'd (may be NULL when *ret_n is 0).
 * -EBADMSG for trailing bytes, a bad or duplicate name, or a count that does
 * not fit the buffer.
 */
int stream_posmap_decode(const uint8_t *buf, size_t len, struct stream_pos **ret, size_t *ret_n);

/* Frame header into out[STREAM_FRAME_HEADER]. */
void stream_frame_header(uint8_t out[STREAM_FRAME_HEADER], uint32_t type, uint64_t len);
/*
 * The metadata that opens an LTX frame's payload, for an LTX file of ltx_len
 * bytes. Writes the frame header and the metadata to out (at least
 * STREAM_FRAME_HEADER + STREAM_LTX_META_MAX bytes); returns the byte count.
 */
size_t stream_ltx_frame_begin(uint8_t *out, uint32_t flags, uint64_t epoch, const char *name,
			      uint64_t ltx_len);
/* A handoff frame into out[STREAM_FRAME_HEADER + 12 + STREAM_TOKEN_MAX]; returns its size. */
size_t stream_handoff_frame(uint8_t *out, uint64_t epoch, const char *token);
/* A heartbeat frame (header + payload) into out[STREAM_FRAME_HEADER + 16]; returns its size. */
size_t stream_heartbeat_frame(uint8_t *out, int64_t now_ms, uint64_t epoch);

struct stream_parser_cb {
	/* An LTX frame begins: its LTX file has ltx_len bytes. */
	int (*ltx_begin)(void *ctx, const char *name, uint32_t flags, uint64_t epoch,
			 uint64_t ltx_len);
	/* Bytes of the LTX file, in order. */
	int (*ltx_data)(void *ctx, const uint8_t *buf, size_t n);
	/* The LTX file is complete. */
	int (*ltx_end)(void *ctx);
	/* READY, END and HEARTBEAT (ms and epoch set for heartbeats only). */
	int (*control)(void *ctx, uint32_t type, int64_t ms, uint64_t epoch);
	void *ctx;
	/* HANDOFF: the lease token and the sender's epoch (NULL: ignored). */
	int (*handoff)(void *ctx, const char *token, uint64_t epoch);
};

struct stream_parser {
	struct stream_parser_cb cb;
	int state;
	uint8_t hdr[STREAM_FRAME_HEADER];
	uint8_t meta[STREAM_LTX_META_MAX];
	size_t have;	  /* bytes of hdr or meta collected */
	size_t meta_need; /* bytes of meta the current frame needs so far */
	uint32_t type;
	uint64_t len;	 /* payload length of the current frame */
	uint64_t remain; /* LTX bytes still to come */
	int err;	 /* sticky */
};

void stream_parser_init(struct stream_parser *p, const struct stream_parser_cb *cb);
/* Feed bytes. After an error every later call returns the same error. */
int stream_parser_feed(struct stream_parser *p, const uint8_t *buf, size_t n);
/* True between frames (a clean place for the stream to end). */
bool stream_parser_idle(const struct stream_parser *p);

/*
 * HTTP/1.1 chunked transfer coding (RFC 9112, 7.1), decoded by the replica
 * itself rather than by libcurl, so that one read from the socket, however
 * many chunks it holds, reaches the frame parser in one call (replica.c,
 * BATCHES). Chunk extensions and trailer fields are skipped. Each run of
 * body bytes goes to out(ctx, bytes, n), whose negative return stops the
 * feed and is returned. Malformed coding (a size that is not hex, more than
 * 15 hex digits, a chunk not followed by CRLF, bytes after the end) is
 * -EPROTO, sticky.
 */
struct stream_chunked {
	int state;
	uint64_t remain; /* bytes of the current chunk still to come */
	unsigned digits; /* hex digits of the size line so far */
	int err;
};
void stream_chunked_init(struct stream_chunked *c);
int stream_chunked_feed(struct stream_chunked *c, const uint8_t *buf, size_t n,
			int (*out)(void *ctx, const uint8_t *buf, size_t n), void *ctx);
/* True once the last chunk and the trailer section have been read. */
bool stream_chunked_done(const struct stream_chunked *c);

#endif
