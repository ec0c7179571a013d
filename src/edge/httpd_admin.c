/*
 * httpd_admin.c - the HTTP server's operator endpoints: GET /metrics, GET
 * /events, GET /export and POST /import (httpd.c routes to them;
 * docs/http-api.md describes each).
 *
 * GET /metrics. The Prometheus text format: node gauges, then one family
 * per database statistic (one pass over the databases, one ltx/ listing
 * each), then the process counters of metrics.c.
 *
 * GET /events. A stream of JSON lines, one per event, for as long as the
 * client stays; each connection runs on its own thread inside
 * libmicrohttpd's content-reader callback (events_read):
 *
 *   INIT   the first line: {"type":"init"} with the primary as this node
 *          sees it; every database's position is noted, without an event
 *   SCAN   after each change of the store (store_wait_change, at most 1 s):
 *          "primaryChange" when the primary or this node's role changed,
 *          a "tx" line for each database whose TXID moved
 *   IDLE   after 15 s with nothing to say, an empty line, so that idle
 *          proxies keep the connection
 *   END    the server stops (h->stopping): the response ends
 *
 * GET /export. A consistent copy of one database (db_export into an
 * unnamed file in the data directory), sent from that file.
 *
 * POST /import. on_request (httpd.c) writes the upload to a file beside the
 * data, never to memory. The handler makes it durable, checks it (it must
 * open as a SQLite database and pass PRAGMA integrity_check) and copies it
 * through the mount with SQLite's backup API, so the import is one ordinary
 * transaction that replicates like any other. import_mu lets one import run
 * at a time; only a node that accepts writes imports.
 *
 * Threads and locks: every handler runs on its connection's thread. They
 * read the store and the databases through their own locked accessors and
 * take h->mu only for the stream and event-stream counts.
 */
#include "httpd_int.h"
#include "ltxfs/clock.h"

#include "ltxfs/db.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/log.h"
#include "ltxfs/metrics.h"
#include "ltxfs/stream.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ----------------------------------------------------------- /metrics */

static void label_escape(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', f);
		if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

enum MHD_Result httpd_serve_metrics(struct httpd *h, struct MHD_Connection *c)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return MHD_NO;
	size_t n = store_count(h->store);
	pthread_mutex_lock(&h->mu);
	size_t streams = h->nstreams, events = h->nevents;
	pthread_mutex_unlock(&h->mu);
	fprintf(f,
		"# HELP ltxfs_db_count Databases this node manages.\n# TYPE ltxfs_db_count gauge\n"
		"ltxfs_db_count %zu\n",
		n);
	fprintf(f,
		"# HELP ltxfs_is_primary 1 on the primary (isPrimary in /info).\n"
		"# TYPE ltxfs_is_primary gauge\nltxfs_is_primary %d\n",
		store_primary_ready(h->store) ? 1 : 0);
	fprintf(f,
		"# HELP ltxfs_accepts_writes 1 while the write fence is open.\n"
		"# TYPE ltxfs_accepts_writes gauge\nltxfs_accepts_writes %d\n",
		store_accepts_writes(h->store) ? 1 : 0);
	fprintf(f,
		"# HELP ltxfs_epoch Highest lease epoch seen.\n# TYPE ltxfs_epoch gauge\n"
		"ltxfs_epoch %llu\n",
		(unsigned long long)store_epoch(h->store));
	fprintf(f,
		"# HELP ltxfs_subscriber_count Open GET /events streams.\n"
		"# TYPE ltxfs_subscriber_count gauge\nltxfs_subscriber_count %zu\n",
		events);
	fprintf(f,
		"# HELP ltxfs_http_stream_count Connected replica streams.\n"
		"# TYPE ltxfs_http_stream_count gauge\nltxfs_http_stream_count %zu\n",
		streams);
	fprintf(f,
		"# HELP ltxfs_lag_seconds Time behind the primary (0 on the primary).\n"
		"# TYPE ltxfs_lag_seconds gauge\nltxfs_lag_seconds %.3f\n",
		(double)store_lag_ms(h->store) / 1000.0);
	static const struct {
		const char *name, *type, *help;
	} per[] = {
	    {"ltxfs_db_txid", "gauge", "Current TXID."},
	    {"ltxfs_db_size_bytes", "gauge", "Committed database size."},
	    {"ltxfs_db_database_write_count", "counter", "Writes to the database file."},
	    {"ltxfs_db_journal_write_count", "counter", "Writes to the rollback journal."},
	    {"ltxfs_db_wal_write_count", "counter", "Writes to the WAL."},
	    {"ltxfs_db_shm_write_count", "counter", "Writes to the shared-memory file."},
	    {"ltxfs_db_commit_count", "counter", "Transactions committed on this node."},
	    {"ltxfs_db_grouped_commit_count", "counter",
	     "Commits written in range LTX files of several (group commit)."},
	    {"ltxfs_db_ltx_count", "gauge", "LTX files on disk."},
	    {"ltxfs_db_ltx_bytes", "gauge", "LTX bytes on disk."},
	    {"ltxfs_db_ltx_reap_count", "counter", "LTX files removed by retention."},
	    {"ltxfs_db_lag_seconds", "gauge", "Now minus the timestamp of the last transaction."},
	    {"ltxfs_backup_position", "gauge",
	     "Highest TXID in the backup bucket (this node uploads; 0: none or unknown)."},
	    {"ltxfs_backup_lag_seconds", "gauge",
	     "Age of the oldest transaction not uploaded yet (0: none waits)."},
	    {"ltxfs_backup_backlog_txns", "gauge", "Transactions committed and not uploaded yet."},
	    {"ltxfs_backup_backlog_bytes", "gauge",
	     "LTX bytes of the transactions read for the next upload and not uploaded yet."},
	    {"ltxfs_backup_objects_total", "counter", "Objects this process uploaded."},
	    {"ltxfs_backup_fenced", "gauge",
	     "1: another primary took the database's backup head over; this node uploads "
	     "nothing more for it in this term."},
	};
	double now_s = (double)clock_wall_ms() / 1e3;
	enum { NPER = sizeof(per) / sizeof(per[0]) };
	/* one pass over the databases (one ltx/ listing each), then the families */
	double *val = calloc(n ? n : 1, sizeof(double) * NPER);
	if (!val) {
		fclose(f);
		free(text);
		return MHD_NO;
	}
	for (size_t i = 0; i < n; i++) {
		struct db *db = store_at(h->store, i);
		struct db_stats st;
		struct db_pos p;
		uint64_t files, bytes;
		db_get_pos(db, &p);
		db_get_stats(db, &st);
		db_ltx_usage(db, &files, &bytes);
		double *v = val + i * NPER;
		v[0] = (double)p.txid;
		v[1] = (double)st.size_bytes;
		v[2] = (double)st.writes[DB_FILE_DB];
		v[3] = (double)st.writes[DB_FILE_JOURNAL];
		v[4] = (double)st.writes[DB_FILE_WAL];
		v[5] = (double)st.writes[DB_FILE_SHM];
		v[6] = (double)st.commits;
		v[7] = (double)st.grouped;
		v[8] = (double)files;
		v[9] = (double)bytes;
		v[10] = (double)st.ltx_removed;
		v[11] = p.timestamp ? now_s - (double)p.timestamp / 1000.0 : 0;
		struct db_backup bk;
		db_get_backup(db, &bk);
		v[12] = bk.enabled ? (double)bk.txid : 0;
		v[13] = bk.enabled && bk.pending_since_ms
			    ? now_s - (double)bk.pending_since_ms / 1000.0
			    : 0;
		v[14] = bk.enabled ? (double)bk.backlog_txns : 0;
		v[15] = bk.enabled ? (double)bk.backlog_bytes : 0;
		v[16] = (double)bk.objects;
		v[17] = bk.enabled && bk.fenced ? 1 : 0;
	}
	for (size_t m = 0; m < NPER; m++) {
		fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", per[m].name, per[m].help, per[m].name,
			per[m].type);
		for (size_t i = 0; i < n; i++) {
			fprintf(f, "%s{db=\"", per[m].name);
			label_escape(f, db_name(store_at(h->store, i)));
			fprintf(f, "\"} %.17g\n", val[i * NPER + m]);
		}
	}
	free(val);
	httpd_stream_metrics(h, f);
	metrics_render(f);
	fclose(f);
	struct MHD_Response *resp =
	    MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	return httpd_queue(h, c, MHD_HTTP_OK, resp, "Content-Type",
			   "text/plain; version=0.0.4; charset=utf-8", NULL);
}

/* ------------------------------------------------------------ /events */

struct evpos {
	char name[STREAM_NAME_MAX + 1];
	uint64_t txid;
};

struct events {
	struct httpd *h;
	struct evpos *pos;
	size_t n, cap;
	bool init_sent, primary;
	char primary_host[256];
	char *buf;
	size_t len, off;
	int64_t last_write;
};

static void ev_primary(struct events *e, bool *primary, char *host, size_t n)
{
	*primary = store_primary_ready(e->h->store); /* once it accepts writes */
	if (*primary)
		snprintf(host, n, "%s", e->h->hostname);
	else if (store_upstream(e->h->store, host, n) < 0)
		host[0] = '\0';
}

static void ev_append(struct events *e, json_t *o)
{
	char *t = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (!t)
		return;
	size_t k = strlen(t);
	char *nb = realloc(e->buf, e->len + k + 2);
	if (nb) {
		e->buf = nb;
		memcpy(e->buf + e->len, t, k);
		e->buf[e->len + k] = '\n';
		e->len += k + 1;
	}
	free(t);
}

static json_t *ev_primary_data(bool primary, const char *host)
{
	json_t *d = json_pack("{s:b}", "isPrimary", primary);
	if (host[0])
		json_object_set_new(d, "hostname", json_string(host));
	return d;
}

/* Queue what changed since the last call: init, primaryChange, tx. */
static void ev_scan(struct events *e)
{
	bool primary, initial = !e->init_sent;
	char host[256];
	ev_primary(e, &primary, host, sizeof(host));
	if (!e->init_sent) {
		ev_append(e, json_pack("{s:s,s:o}", "type", "init", "data",
				       ev_primary_data(primary, host)));
		e->init_sent = true;
		e->primary = primary;
		snprintf(e->primary_host, sizeof(e->primary_host), "%s", host);
	} else if (primary != e->primary || strcmp(host, e->primary_host) != 0) {
		ev_append(e, json_pack("{s:s,s:o}", "type", "primaryChange", "data",
				       ev_primary_data(primary, host)));
		e->primary = primary;
		snprintf(e->primary_host, sizeof(e->primary_host), "%s", host);
	}
	size_t n = store_count(e->h->store);
	for (size_t i = 0; i < n; i++) {
		struct db *db = store_at(e->h->store, i);
		struct db_pos p;
		struct db_stats st;
		db_get_visible_pos(db, &p); /* what the -pos file shows: readable */
		struct evpos *ep = NULL;
		for (size_t k = 0; k < e->n; k++)
			if (strcmp(e->pos[k].name, db_name(db)) == 0)
				ep = &e->pos[k];
		if (!ep) {
			if (e->n == e->cap) {
				size_t cap = e->cap ? e->cap * 2 : 8;
				void *np = realloc(e->pos, cap * sizeof(*e->pos));
				if (!np)
					return;
				e->pos = np;
				e->cap = cap;
			}
			ep = &e->pos[e->n++];
			snprintf(ep->name, sizeof(ep->name), "%s", db_name(db));
			ep->txid = initial ? p.txid : 0; /* known at init: no event */
		}
		if (p.txid == ep->txid)
			continue;
		ep->txid = p.txid;
		char txid[17], ck[17], when[96];
		snprintf(txid, sizeof(txid), "%016" PRIx64, p.txid);
		snprintf(ck, sizeof(ck), "%016" PRIx64, p.checksum);
		time_t t = (time_t)(p.timestamp / 1000);
		struct tm tm;
		gmtime_r(&t, &tm);
		snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, (int)(p.timestamp % 1000));
		db_get_stats(db, &st);
		ev_append(e, json_pack("{s:s,s:s,s:{s:s,s:s,s:i,s:i,s:s}}", "type", "tx", "db",
				       db_name(db), "data", "txID", txid, "postApplyChecksum", ck,
				       "pageSize", (int)st.page_size, "commit", (int)st.page_count,
				       "timestamp", when));
	}
}

static ssize_t events_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct events *e = cls;
	(void)pos;
	for (;;) {
		if (e->off < e->len) {
			size_t k = e->len - e->off < max ? e->len - e->off : max;
			memcpy(buf, e->buf + e->off, k);
			e->off += k;
			if (e->off == e->len)
				e->off = e->len = 0;
			e->last_write = clock_mono_ms();
			return (ssize_t)k;
		}
		if (__atomic_load_n(&e->h->stopping, __ATOMIC_ACQUIRE))
			return MHD_CONTENT_READER_END_OF_STREAM;
		uint64_t seq = store_change_seq(e->h->store);
		ev_scan(e);
		if (e->len)
			continue;
		if (clock_mono_ms() - e->last_write >= 15000) {
			/* keep-alive: an empty line, so idle proxies do not cut the stream */
			e->last_write = clock_mono_ms();
			buf[0] = '\n';
			return 1;
		}
		store_wait_change(e->h->store, seq, 1000);
	}
}

static void events_free(void *cls)
{
	struct events *e = cls;
	pthread_mutex_lock(&e->h->mu);
	e->h->nevents--;
	pthread_mutex_unlock(&e->h->mu);
	free(e->pos);
	free(e->buf);
	free(e);
}

enum MHD_Result httpd_serve_events(struct httpd *h, struct MHD_Connection *c)
{
	struct events *e = calloc(1, sizeof(*e));
	if (!e)
		return MHD_NO;
	e->h = h;
	e->last_write = clock_mono_ms();
	struct MHD_Response *resp =
	    MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, events_read, e, events_free);
	if (!resp) {
		free(e);
		return MHD_NO;
	}
	pthread_mutex_lock(&h->mu);
	h->nevents++;
	pthread_mutex_unlock(&h->mu);
	return httpd_queue(h, c, MHD_HTTP_OK, resp, "Content-Type", "application/x-ndjson",
			   "Cache-Control", "no-cache", NULL);
}

/* ------------------------------------------------------------ /export */

enum MHD_Result httpd_serve_export(struct httpd *h, struct MHD_Connection *c)
{
	const char *name = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "name");
	if (!name || !stream_name_valid(name, strlen(name)))
		return httpd_reply_error(h, c, MHD_HTTP_BAD_REQUEST, "want name=DATABASE");
	struct db *db = store_find(h->store, name);
	if (!db || !db_exists(db))
		return httpd_reply_error(h, c, MHD_HTTP_NOT_FOUND, "no such database");
	int fd = open(h->data_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		return httpd_reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, strerror(errno));
	struct db_pos p;
	int r = db_export(db, fd, &p);
	struct stat sb;
	if (r == 0 && fstat(fd, &sb) < 0)
		r = -errno;
	if (r < 0) {
		close(fd);
		return httpd_reply_error(
		    h, c, r == -ENOENT ? MHD_HTTP_NOT_FOUND : MHD_HTTP_INTERNAL_SERVER_ERROR,
		    r == -ENOENT ? "the database is empty" : strerror(-r));
	}
	struct MHD_Response *resp = MHD_create_response_from_fd((size_t)sb.st_size, fd);
	if (!resp) {
		close(fd);
		return MHD_NO;
	}
	char txid[17];
	snprintf(txid, sizeof(txid), "%016" PRIx64, p.txid);
	return httpd_queue(h, c, MHD_HTTP_OK, resp, "Content-Type", "application/vnd.sqlite3",
			   "Ltxfs-Txid", txid, NULL);
}

/* ------------------------------------------------------------ /import */

/* Check the uploaded file is a SQLite database that passes integrity_check. */
static int import_check(const char *path, char *err, size_t n)
{
	sqlite3 *s = NULL;
	sqlite3_stmt *st = NULL;
	int r = -EINVAL;
	char uri[4300];
	snprintf(uri, sizeof(uri), "file:%s?mode=ro", path);
	if (sqlite3_open_v2(uri, &s, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK) {
		snprintf(err, n, "cannot open the upload: %s",
			 s ? sqlite3_errmsg(s) : "out of memory");
		goto out;
	}
	if (sqlite3_prepare_v2(s, "PRAGMA integrity_check", -1, &st, NULL) != SQLITE_OK) {
		snprintf(err, n, "not a SQLite database: %s", sqlite3_errmsg(s));
		goto out;
	}
	int rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		snprintf(err, n, "not a SQLite database: %s", sqlite3_errmsg(s));
		goto out;
	}
	const char *res = (const char *)sqlite3_column_text(st, 0);
	if (!res || strcmp(res, "ok") != 0) {
		snprintf(err, n, "the database fails integrity_check: %.300s", res ? res : "?");
		goto out;
	}
	r = 0;
out:
	sqlite3_finalize(st);
	sqlite3_close(s);
	return r;
}

/*
 * Copy the checked upload into <mount>/<name> with SQLite's backup API, as
 * any client of the mount would write: SQLite takes its locks, journals the
 * change, bumps the change counter and the schema cookie (so connections
 * already open re-read the schema), and ltxfs captures one transaction that
 * replicates like any other.
 */
static int import_into(struct httpd *h, const char *src_path, const char *name, char *err, size_t n)
{
	sqlite3 *src = NULL, *dst = NULL;
	sqlite3_backup *b = NULL;
	char dpath[4400];
	int r = -EIO;
	snprintf(dpath, sizeof(dpath), "%s/%s", h->mount_dir, name);
	char *slash = strrchr(dpath, '/');
	if (strchr(name, '/') && slash) {
		/* a database in a subdirectory: its directories, made through the mount */
		*slash = '\0';
		int mr = fs_mkdir_p(dpath, 0755);
		*slash = '/';
		if (mr < 0) {
			snprintf(err, n, "cannot make the directories of %.200s: %s", dpath,
				 strerror(-mr));
			goto out;
		}
	}
	if (sqlite3_open_v2(src_path, &src, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
	    sqlite3_open_v2(dpath, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
		SQLITE_OK) {
		snprintf(err, n, "cannot open %.200s: %s", dpath,
			 dst   ? sqlite3_errmsg(dst)
			 : src ? sqlite3_errmsg(src)
			       : "out of memory");
		goto out;
	}
	sqlite3_busy_timeout(dst, 10000);
	b = sqlite3_backup_init(dst, "main", src, "main");
	if (!b) {
		snprintf(err, n, "cannot start the copy: %s", sqlite3_errmsg(dst));
		goto out;
	}
	int rc;
	while ((rc = sqlite3_backup_step(b, 4096)) == SQLITE_OK || rc == SQLITE_BUSY ||
	       rc == SQLITE_LOCKED)
		if (rc != SQLITE_OK)
			sqlite3_sleep(5);
	sqlite3_backup_finish(b);
	b = NULL;
	if (rc != SQLITE_DONE) {
		snprintf(err, n, "copying into %.200s failed: %s%s", dpath, sqlite3_errstr(rc),
			 rc == SQLITE_READONLY ? " (a WAL database cannot change its page size: "
						 "remove it first)"
					       : "");
		goto out;
	}
	r = 0;
out:
	sqlite3_backup_finish(b);
	sqlite3_close(dst);
	sqlite3_close(src);
	return r;
}

enum MHD_Result httpd_serve_import(struct httpd *h, struct MHD_Connection *c, struct request *rq)
{
	char err[600];
	const char *name = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "name");
	if (!name || !stream_name_valid(name, strlen(name)))
		return httpd_reply_error(h, c, MHD_HTTP_BAD_REQUEST, "want name=DATABASE");
	if (rq->uperr)
		return httpd_reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, strerror(rq->uperr));
	if (rq->upfd < 0 || rq->uplen == 0)
		return httpd_reply_error(h, c, MHD_HTTP_BAD_REQUEST,
					 "empty upload: send the SQLite file as the body");
	if (!store_accepts_writes(h->store))
		return httpd_reply_error(
		    h, c, MHD_HTTP_CONFLICT,
		    store_is_primary(h->store)
			? "this primary does not accept writes right now (handoff or "
			  "lease renewal in progress): retry"
			: "this node is not the primary: import on the primary");
	if (fsync(rq->upfd) < 0) {
		snprintf(err, sizeof(err), "cannot store the upload: %s", strerror(errno));
		return httpd_reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, err);
	}
	if (import_check(rq->uppath, err, sizeof(err)) < 0) {
		log_warn("import of '%s' refused: %s", name, err);
		return httpd_reply_error(h, c, MHD_HTTP_BAD_REQUEST, err);
	}
	pthread_mutex_lock(&h->import_mu);
	int r = import_into(h, rq->uppath, name, err, sizeof(err));
	pthread_mutex_unlock(&h->import_mu);
	if (r < 0) {
		log_warn("import of '%s' failed: %s", name, err);
		return httpd_reply_error(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, err);
	}
	struct db *db = store_find(h->store, name);
	struct db_pos p = {0};
	if (db)
		db_get_pos(db, &p);
	char txid[17];
	snprintf(txid, sizeof(txid), "%016" PRIx64, p.txid);
	log_info("db '%s': imported %" PRIu64 " bytes as TXID %s", name, rq->uplen, txid);
	return httpd_reply_json(
	    h, c, MHD_HTTP_OK,
	    json_pack("{s:s,s:s,s:I}", "name", name, "txid", txid, "bytes", (json_int_t)rq->uplen));
}
