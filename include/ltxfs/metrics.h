/*
 * metrics.h - process-wide counters for GET /metrics (base layer).
 *
 * Everything here is a relaxed atomic, bumped on hot paths without locks and
 * read by the HTTP thread that renders the Prometheus text. Per-database
 * counters live in struct db (db_stats); these are the ones that belong to
 * no database: FUSE operations with a latency histogram, replication stream
 * traffic, snapshots, lease renewals.
 */
#ifndef LTXFS_METRICS_H
#define LTXFS_METRICS_H

#include <stdint.h>
#include <stdio.h>

enum metrics_op {
	MOP_LOOKUP,
	MOP_GETATTR,
	MOP_SETATTR,
	MOP_OPEN,
	MOP_CREATE,
	MOP_READ,
	MOP_WRITE,
	MOP_FLUSH,
	MOP_RELEASE,
	MOP_FSYNC,
	MOP_UNLINK,
	MOP_READDIR,
	MOP_OTHER,
	MOP_N
};

enum metrics_counter {
	MC_STREAM_BYTES_SENT,	  /* replication stream bytes written to replicas */
	MC_STREAM_BYTES_RECEIVED, /* replication stream bytes read from the primary */
	MC_SNAPSHOTS_SENT,
	MC_SNAPSHOTS_APPLIED,
	MC_LTX_APPLIED,
	MC_APPLY_BATCHES, /* applies of one or more LTX files under one lock (replica.c) */
	MC_STREAM_PUSHES, /* commits sent by the committing thread (httpd_sender.c, INLINE SENDS) */
	MC_LEASE_RENEWALS,
	MC_LEASE_RENEW_FAILURES,
	MC_LEASE_ACQUIRED,
	MC_LEASE_LOST,
	MC_FRAMES_LTX, /* replication frames sent, by type (LiteFS's frame_send_count) */
	MC_FRAMES_READY,
	MC_FRAMES_HEARTBEAT,
	MC_FRAMES_END,
	MC_FRAMES_HANDOFF,
	MC_BACKUP_REQ_PUT, /* S3 requests of backups, by kind (s3.c) */
	MC_BACKUP_REQ_GET,
	MC_BACKUP_REQ_HEAD,
	MC_BACKUP_REQ_LIST,
	MC_BACKUP_REQ_DELETE,
	MC_BACKUP_BYTES_UP,   /* bytes of PUT bodies */
	MC_BACKUP_BYTES_DOWN, /* bytes of GET bodies */
	MC_BACKUP_ERRORS,     /* failed S3 requests (not 404 or 412) */
	MC_N
};

#define METRICS_NBUCKETS 14 /* upper bounds in metrics.c, seconds; +Inf implied */

/* Record one FUSE operation that took ns nanoseconds. */
void metrics_op(enum metrics_op op, int64_t ns);
void metrics_add(enum metrics_counter c, uint64_t n);
uint64_t metrics_get(enum metrics_counter c);
/* Write the FUSE histogram and the counters in Prometheus text format. */
void metrics_render(FILE *f);

#endif
