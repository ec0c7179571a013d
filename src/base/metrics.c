/*
 * metrics.c - process-wide counters and the FUSE latency histogram, and
 * their Prometheus text for GET /metrics (include/ltxfs/metrics.h).
 *
 * STATE. Static arrays of relaxed atomics, zero at start and never reset:
 * one count, one nanosecond sum and METRICS_NBUCKETS bucket counts per FUSE
 * operation (enum metrics_op), and one counter per enum metrics_counter.
 * metrics_op puts a duration in the first bucket whose bound holds it (the
 * render makes the counts cumulative, as Prometheus wants, and "+Inf" is the
 * operation's total count). Per-database figures are not here: they live in
 * struct db and the HTTP server renders them.
 *
 * THREADS. Any thread bumps any counter without a lock (FUSE workers, the
 * stream and replica threads, the elector, the backup uploader); the HTTP
 * thread reads them in metrics_render. Relaxed order is enough: each number
 * is read on its own, and a scrape may see one counter a moment ahead of
 * another.
 */
#include "ltxfs/metrics.h"

#include <stdatomic.h>

static const double bucket_le[METRICS_NBUCKETS] = {
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001,    0.0025,  0.005,	 0.01,	  0.025,  0.1,	   1.0,
};

static const char *const op_names[MOP_N] = {
    "lookup", "getattr", "setattr", "open",   "create",	 "read",  "write",
    "flush",  "release", "fsync",   "unlink", "readdir", "other",
};

static atomic_uint_fast64_t op_count[MOP_N];
static atomic_uint_fast64_t op_ns[MOP_N];
static atomic_uint_fast64_t op_bucket[MOP_N][METRICS_NBUCKETS];
static atomic_uint_fast64_t counters[MC_N];

void metrics_op(enum metrics_op op, int64_t ns)
{
	if ((unsigned)op >= MOP_N || ns < 0)
		return;
	atomic_fetch_add_explicit(&op_count[op], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&op_ns[op], (uint64_t)ns, memory_order_relaxed);
	double s = (double)ns / 1e9;
	for (int i = 0; i < METRICS_NBUCKETS; i++)
		if (s <= bucket_le[i]) {
			atomic_fetch_add_explicit(&op_bucket[op][i], 1, memory_order_relaxed);
			break;
		}
}

void metrics_add(enum metrics_counter c, uint64_t n)
{
	if ((unsigned)c < MC_N)
		atomic_fetch_add_explicit(&counters[c], n, memory_order_relaxed);
}

uint64_t metrics_get(enum metrics_counter c)
{
	return (unsigned)c < MC_N ? atomic_load_explicit(&counters[c], memory_order_relaxed) : 0;
}

void metrics_render(FILE *f)
{
	static const struct {
		const char *name, *type, *help;
	} cdesc[MC_FRAMES_LTX] = {
	    {"ltxfs_stream_sent_bytes_total", "counter",
	     "Replication stream bytes sent to replicas."},
	    {"ltxfs_stream_received_bytes_total", "counter",
	     "Replication stream bytes received from the primary."},
	    {"ltxfs_snapshots_sent_total", "counter", "Snapshots sent to replicas."},
	    {"ltxfs_snapshots_applied_total", "counter", "Snapshots applied from the primary."},
	    {"ltxfs_ltx_applied_total", "counter", "LTX files applied from the primary."},
	    {"ltxfs_apply_batches_total", "counter",
	     "Batches of LTX files applied from the primary under one lock."},
	    {"ltxfs_stream_inline_sends_total", "counter",
	     "Commits sent to every replica by the thread that committed them, without waking "
	     "the sender thread."},
	    {"ltxfs_lease_renewals_total", "counter", "Successful lease renewals."},
	    {"ltxfs_lease_renew_failures_total", "counter", "Failed lease renewals."},
	    {"ltxfs_lease_acquired_total", "counter", "Times this node became primary."},
	    {"ltxfs_lease_lost_total", "counter", "Times this node stepped down."},
	};
	for (int c = 0; c < MC_FRAMES_LTX; c++)
		fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", cdesc[c].name, cdesc[c].help,
			cdesc[c].name, cdesc[c].type, cdesc[c].name,
			(unsigned long long)metrics_get((enum metrics_counter)c));
	static const char *const ftype[] = {"ltx", "ready", "heartbeat", "end", "handoff"};
	fprintf(f, "# HELP ltxfs_http_frame_send_count Replication frames sent, by type.\n"
		   "# TYPE ltxfs_http_frame_send_count counter\n");
	for (int c = MC_FRAMES_LTX; c <= MC_FRAMES_HANDOFF; c++)
		fprintf(f, "ltxfs_http_frame_send_count{type=\"%s\"} %llu\n",
			ftype[c - MC_FRAMES_LTX],
			(unsigned long long)metrics_get((enum metrics_counter)c));
	static const char *const rkind[] = {"put", "get", "head", "list", "delete"};
	fprintf(f, "# HELP ltxfs_backup_requests_total S3 requests made for backups, by kind.\n"
		   "# TYPE ltxfs_backup_requests_total counter\n");
	for (int c = MC_BACKUP_REQ_PUT; c <= MC_BACKUP_REQ_DELETE; c++)
		fprintf(f, "ltxfs_backup_requests_total{kind=\"%s\"} %llu\n",
			rkind[c - MC_BACKUP_REQ_PUT],
			(unsigned long long)metrics_get((enum metrics_counter)c));
	fprintf(f,
		"# HELP ltxfs_backup_bytes_total Bytes sent to (up) and received from (down) S3.\n"
		"# TYPE ltxfs_backup_bytes_total counter\n"
		"ltxfs_backup_bytes_total{direction=\"up\"} %llu\n"
		"ltxfs_backup_bytes_total{direction=\"down\"} %llu\n"
		"# HELP ltxfs_backup_errors_total Failed S3 requests (not counting 404 and 412).\n"
		"# TYPE ltxfs_backup_errors_total counter\n"
		"ltxfs_backup_errors_total %llu\n",
		(unsigned long long)metrics_get(MC_BACKUP_BYTES_UP),
		(unsigned long long)metrics_get(MC_BACKUP_BYTES_DOWN),
		(unsigned long long)metrics_get(MC_BACKUP_ERRORS));
	fprintf(f, "# HELP ltxfs_fuse_op_duration_seconds FUSE operations served, by operation.\n"
		   "# TYPE ltxfs_fuse_op_duration_seconds histogram\n");
	for (int op = 0; op < MOP_N; op++) {
		uint64_t cum = 0, n = atomic_load(&op_count[op]);
		for (int i = 0; i < METRICS_NBUCKETS; i++) {
			cum += atomic_load(&op_bucket[op][i]);
			fprintf(f,
				"ltxfs_fuse_op_duration_seconds_bucket{op=\"%s\",le=\"%g\"} %llu\n",
				op_names[op], bucket_le[i], (unsigned long long)cum);
		}
		fprintf(f, "ltxfs_fuse_op_duration_seconds_bucket{op=\"%s\",le=\"+Inf\"} %llu\n",
			op_names[op], (unsigned long long)n);
		fprintf(f, "ltxfs_fuse_op_duration_seconds_sum{op=\"%s\"} %.9f\n", op_names[op],
			(double)atomic_load(&op_ns[op]) / 1e9);
		fprintf(f, "ltxfs_fuse_op_duration_seconds_count{op=\"%s\"} %llu\n", op_names[op],
			(unsigned long long)n);
	}
}
