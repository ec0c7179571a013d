/*
 * cli.c - the commands of the ltxfs binary other than mount and version:
 * import, export, status, run (clients of a node's HTTP API, default
 * http://localhost:20202, docs/http-api.md), ltx dump and ltx verify (read
 * an LTX file) and orphans (lists what a node set aside in its data
 * directory); none needs a mount. Also the configuration loader mount and
 * orphans share. Flags are parsed by flags.c; usage errors exit 2 with the
 * command's usage on stderr; failures exit 1 with one line naming what
 * failed.
 *
 * The bearer token for protected endpoints comes from $LTXFS_HTTP_TOKEN.
 * Import and export draw a progress bar on stderr when it is a terminal.
 *
 * THREADS. Each command runs on the main thread alone (libcurl's transfer
 * runs on it too); run forwards SIGINT, SIGTERM and SIGHUP to its child
 * from a signal handler.
 */
#include "ltxfs/cli.h"
#include "ltxfs/clock.h"

#include "ltxfs/config.h"
#include "ltxfs/crc.h"
#include "ltxfs/flags.h"
#include "ltxfs/httpc.h"
#include "ltxfs/ltx.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <libgen.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_URL "http://localhost:20202"

/* ------------------------------------------------------------ helpers */

/* Append name to url, percent-encoded as a query value (httpc_escape). */
static void append_escaped(char *url, size_t n, const char *name)
{
	char *e = httpc_escape(name);
	size_t k = strlen(url);
	if (e && k < n)
		snprintf(url + k, n - k, "%s", e);
	free(e);
}

static void auth_header(char *buf, size_t n)
{
	httpc_bearer(buf, n, getenv("LTXFS_HTTP_TOKEN"));
}

static void trim_url(char *url)
{
	size_t n = strlen(url);
	while (n && url[n - 1] == '/')
		url[--n] = '\0';
}

/* The "error" member of a JSON error body, or the body itself. */
static const char *error_text(const struct httpc_resp *r, char *buf, size_t n)
{
	json_error_t je;
	json_t *o = json_loadb(r->body, r->len, 0, &je);
	const char *e = json_string_value(json_object_get(o, "error"));
	snprintf(buf, n, "%s", e ? e : r->body);
	json_decref(o);
	size_t k = strlen(buf);
	while (k && buf[k - 1] == '\n')
		buf[--k] = '\0';
	return buf;
}

/* ----------------------------------------------------------- progress */

struct bar {
	bool on;
	bool up;
	int64_t last_ms;
	uint64_t total_hint;
};

static void bar_draw(struct bar *b, uint64_t now, uint64_t total, bool final)
{
	if (!b->on)
		return;
	int64_t t = clock_mono_ms();
	if (!final && t - b->last_ms < 100)
		return;
	b->last_ms = t;
	if (!total)
		total = b->total_hint;
	char line[128];
	if (total) {
		int width = 30, fill = (int)((double)now / (double)total * width);
		if (fill > width)
			fill = width;
		snprintf(line, sizeof(line), "\r%s [%.*s%*s] %3d%% %.1f/%.1f MB",
			 b->up ? "upload  " : "download", fill, "##############################",
			 width - fill, "", (int)((double)now * 100 / (double)total),
			 (double)now / 1e6, (double)total / 1e6);
	} else {
		snprintf(line, sizeof(line), "\r%s %.1f MB", b->up ? "upload  " : "download",
			 (double)now / 1e6);
	}
	fputs(line, stderr);
	if (final)
		fputc('\n', stderr);
	fflush(stderr);
}

static void on_progress(void *ctx, uint64_t down, uint64_t down_total, uint64_t up,
			uint64_t up_total)
{
	struct bar *b = ctx;
	if (b->up)
		bar_draw(b, up, up_total, false);
	else
		bar_draw(b, down, down_total, false);
}

/* ------------------------------------------------------------- import */

/*
 * The arguments of import and export, `-name NAME [-url URL] PATH`: 0, or
 * FLAGS_HELP or FLAGS_USAGE as flags_parse (a missing -name or PATH is a
 * usage error).
 */
static int parse_transfer(const char *cmd, const char *usage, int argc, char **argv,
			  const char **name, const char **url, const char **path)
{
	size_t got;
	const struct flag flags[] = {{"name", name, NULL}, {"url", url, NULL}, {NULL}};
	const struct flags_spec spec = {cmd, usage, flags, path, 1};
	int r = flags_parse(&spec, argc, argv, &got, NULL);
	if (r)
		return r;
	if (!*name || got != 1)
		return flags_usage_error(&spec, "%s",
					 !*name ? "-name is required" : "PATH is required");
	return 0;
}

static const char import_usage[] =
    "Usage: ltxfs import -name NAME [-url URL] PATH\n\n"
    "Upload the SQLite database at PATH to the primary as database NAME,\n"
    "creating or replacing it on every node. The primary checks the file\n"
    "(PRAGMA integrity_check) before it touches anything.\n\n"
    "  -name NAME   database name in the mount\n"
    "  -url URL     a node's HTTP address (default " DEFAULT_URL ")\n";

int cmd_import(int argc, char **argv)
{
	const char *name = NULL, *url = DEFAULT_URL, *pos[1];
	int r = parse_transfer("ltxfs import", import_usage, argc, argv, &name, &url, pos);
	if (r)
		return r == FLAGS_HELP ? 0 : 2;
	int fd = open(pos[0], O_RDONLY | O_CLOEXEC);
	struct stat sb;
	if (fd < 0 || fstat(fd, &sb) < 0) {
		fprintf(stderr, "ltxfs import: cannot read %s: %s\n", pos[0], strerror(errno));
		if (fd >= 0)
			close(fd);
		return 1;
	}
	if (sb.st_size == 0) {
		fprintf(stderr, "ltxfs import: %s is empty\n", pos[0]);
		close(fd);
		return 1;
	}
	void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m == MAP_FAILED) {
		fprintf(stderr, "ltxfs import: cannot map %s: %s\n", pos[0], strerror(errno));
		return 1;
	}
	char u[2048], auth[600], err[700];
	snprintf(u, sizeof(u), "%s", url);
	trim_url(u);
	strncat(u, "/import?name=", sizeof(u) - strlen(u) - 1);
	append_escaped(u, sizeof(u), name);
	auth_header(auth, sizeof(auth));
	struct bar b = {
	    .on = isatty(STDERR_FILENO), .up = true, .total_hint = (uint64_t)sb.st_size};
	struct httpc_req req = {
	    .method = "POST",
	    .url = u,
	    .body = m,
	    .body_len = (size_t)sb.st_size,
	    /* the list ends at its first NULL: the optional header goes last */
	    .headers = {"Content-Type: application/vnd.sqlite3", auth[0] ? auth : NULL},
	    .progress = on_progress,
	    .pctx = &b};
	struct httpc_resp resp;
	r = httpc_do(&req, &resp);
	munmap(m, (size_t)sb.st_size);
	if (b.on)
		bar_draw(&b, (uint64_t)sb.st_size, (uint64_t)sb.st_size, true);
	if (r < 0) {
		fprintf(stderr, "ltxfs import: %s\n", resp.err);
		httpc_resp_release(&resp);
		return 1;
	}
	if (resp.status != 200) {
		fprintf(stderr, "ltxfs import: %s refused: HTTP %ld: %s\n", url, resp.status,
			error_text(&resp, err, sizeof(err)));
		httpc_resp_release(&resp);
		return 1;
	}
	json_error_t je;
	json_t *o = json_loadb(resp.body, resp.len, 0, &je);
	printf("imported %s into '%s' at TXID %s\n", pos[0], name,
	       json_string_value(json_object_get(o, "txid")) ?: "?");
	json_decref(o);
	httpc_resp_release(&resp);
	return 0;
}

/* ------------------------------------------------------------- export */

static const char export_usage[] =
    "Usage: ltxfs export -name NAME [-url URL] PATH\n\n"
    "Download a consistent copy of database NAME from any node into PATH,\n"
    "written atomically (temporary file, fsync, rename, fsync of the directory).\n\n"
    "  -name NAME   database name in the mount\n"
    "  -url URL     a node's HTTP address (default " DEFAULT_URL ")\n";

struct dl {
	int fd;
	int err;
};

static bool dl_write(void *ctx, const char *buf, size_t n)
{
	struct dl *d = ctx;
	while (n > 0) {
		ssize_t w = write(d->fd, buf, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			d->err = errno ? errno : EIO;
			return false;
		}
		buf += w;
		n -= (size_t)w;
	}
	return true;
}

/*
 * A stale -journal, -wal or -shm beside PATH would be taken for the new
 * file's own (a hot journal rolled back into it): remove them first.
 */
static int remove_sidecars(const char *path)
{
	static const char *const sfx[] = {"-journal", "-wal", "-shm"};
	char p[4300];
	for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
		snprintf(p, sizeof(p), "%s%s", path, sfx[i]);
		if (unlink(p) < 0 && errno != ENOENT)
			return -1;
	}
	return 0;
}

int cmd_export(int argc, char **argv)
{
	const char *name = NULL, *url = DEFAULT_URL, *pos[1];
	int r = parse_transfer("ltxfs export", export_usage, argc, argv, &name, &url, pos);
	if (r)
		return r == FLAGS_HELP ? 0 : 2;
	char tmp[4200], u[2048], auth[600], err[700], dir[4200];
	snprintf(tmp, sizeof(tmp), "%s.tmp-XXXXXX", pos[0]);
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "ltxfs export: cannot create a file beside %s: %s\n", pos[0],
			strerror(errno));
		return 1;
	}
	snprintf(u, sizeof(u), "%s", url);
	trim_url(u);
	strncat(u, "/export?name=", sizeof(u) - strlen(u) - 1);
	append_escaped(u, sizeof(u), name);
	auth_header(auth, sizeof(auth));
	struct dl d = {fd, 0};
	struct bar b = {.on = isatty(STDERR_FILENO), .up = false};
	struct httpc_req req = {.method = "GET",
				.url = u,
				.headers = {auth[0] ? auth : NULL},
				.on_data = dl_write,
				.ctx = &d,
				.progress = on_progress,
				.pctx = &b};
	struct httpc_resp resp;
	r = httpc_do(&req, &resp);
	if (r == 0 && resp.status != 200) {
		/* the error body went to the file: read it back for the message */
		char body[600] = "";
		ssize_t k = pread(fd, body, sizeof(body) - 1, 0);
		body[k > 0 ? k : 0] = '\0';
		struct httpc_resp er = {.body = body, .len = strlen(body)};
		fprintf(stderr, "ltxfs export: %s refused: HTTP %ld: %s\n", url, resp.status,
			error_text(&er, err, sizeof(err)));
		r = -1;
	} else if (r < 0 || d.err) {
		fprintf(stderr, "ltxfs export: %s\n", d.err ? strerror(d.err) : resp.err);
		r = -1;
	} else if (fsync(fd) < 0 || remove_sidecars(pos[0]) < 0 || rename(tmp, pos[0]) < 0) {
		fprintf(stderr, "ltxfs export: cannot write %s: %s\n", pos[0], strerror(errno));
		r = -1;
	} else {
		snprintf(dir, sizeof(dir), "%s", pos[0]);
		int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			fsync(dfd);
			close(dfd);
		}
		struct stat sb;
		fstat(fd, &sb);
		if (b.on)
			bar_draw(&b, (uint64_t)sb.st_size, (uint64_t)sb.st_size, true);
		printf("exported '%s' (%lld bytes) to %s\n", name, (long long)sb.st_size, pos[0]);
	}
	close(fd);
	if (r < 0)
		unlink(tmp);
	httpc_resp_release(&resp);
	return r < 0 ? 1 : 0;
}

/* ------------------------------------------------------------- status */

static const char status_usage[] = "Usage: ltxfs status [-url URL] [-json]\n\n"
				   "Show a node's role, its primary, its databases and, on the\n"
				   "primary, the connected replicas and their positions.\n\n"
				   "  -url URL   a node's HTTP address (default " DEFAULT_URL ")\n"
				   "  -json      print the node's /info document instead\n";

static int get_info(const char *url, json_t **ret)
{
	char u[2048], auth[600], err[700];
	snprintf(u, sizeof(u), "%s", url);
	trim_url(u);
	strncat(u, "/info", sizeof(u) - strlen(u) - 1);
	auth_header(auth, sizeof(auth));
	struct httpc_req req = {
	    .method = "GET", .url = u, .headers = {auth[0] ? auth : NULL}, .timeout_ms = 10000};
	struct httpc_resp resp;
	int r = httpc_do(&req, &resp);
	if (r < 0) {
		fprintf(stderr, "ltxfs: %s\n", resp.err);
	} else if (resp.status != 200) {
		fprintf(stderr, "ltxfs: %s: HTTP %ld: %s\n", u, resp.status,
			error_text(&resp, err, sizeof(err)));
		r = -1;
	} else {
		json_error_t je;
		*ret = json_loadb(resp.body, resp.len, 0, &je);
		if (!*ret) {
			fprintf(stderr, "ltxfs: %s: malformed JSON: %s\n", u, je.text);
			r = -1;
		}
	}
	httpc_resp_release(&resp);
	return r;
}

static const char *jstr(json_t *o, const char *k)
{
	const char *v = json_string_value(json_object_get(o, k));
	return v ? v : "";
}

int cmd_status(int argc, char **argv)
{
	const char *url = DEFAULT_URL;
	bool as_json = false;
	const struct flag flags[] = {{"url", &url, NULL}, {"json", NULL, &as_json}, {NULL}};
	const struct flags_spec spec = {"ltxfs status", status_usage, flags};
	int r = flags_parse(&spec, argc, argv, NULL, NULL);
	if (r)
		return r == FLAGS_HELP ? 0 : 2;
	json_t *o = NULL;
	if (get_info(url, &o) < 0)
		return 1;
	if (as_json) {
		char *t = json_dumps(o, JSON_INDENT(2));
		puts(t ? t : "{}");
		free(t);
		json_decref(o);
		return 0;
	}
	json_t *pr = json_object_get(o, "primary");
	printf("node       %s (%s)\n", jstr(o, "nodeID"), jstr(o, "hostname"));
	printf("cluster    %s\n", jstr(o, "clusterID")[0] ? jstr(o, "clusterID") : "(none yet)");
	printf("role       %s%s, %s lease, epoch %lld%s\n", jstr(o, "role"),
	       json_is_true(json_object_get(o, "acceptsWrites")) ? " (accepts writes)" : "",
	       jstr(o, "lease"), (long long)json_integer_value(json_object_get(o, "epoch")),
	       json_is_true(json_object_get(o, "candidate")) ? ", candidate" : "");
	if (jstr(o, "writesHeld")[0])
		printf("writes     held back: %s\n", jstr(o, "writesHeld"));
	if (pr)
		printf("primary    %s%s%s\n", jstr(pr, "hostname"),
		       jstr(pr, "advertiseURL")[0] ? " " : "", jstr(pr, "advertiseURL"));
	else
		printf("primary    (none known)\n");
	if (!json_is_true(json_object_get(o, "isPrimary"))) {
		long long lag = (long long)json_integer_value(json_object_get(o, "lag"));
		if (lag >= 2147483647LL)
			printf("lag        not synced yet\n");
		else
			printf("lag        %lld ms\n", lag);
	}
	json_t *dbs = json_object_get(o, "databases");
	/* the stream is shared, so a replica's lag is the same for every database */
	long long lag = json_is_true(json_object_get(o, "isPrimary"))
			    ? 0
			    : (long long)json_integer_value(json_object_get(o, "lag"));
	char lagtxt[32];
	if (lag >= 2147483647LL)
		snprintf(lagtxt, sizeof(lagtxt), "not synced");
	else
		snprintf(lagtxt, sizeof(lagtxt), "%lld ms", lag);
	printf("\n%-24s %-16s %12s  %s\n", "DATABASE", "TXID", "SIZE", "LAG");
	for (size_t i = 0; i < json_array_size(dbs); i++) {
		json_t *d = json_array_get(dbs, i);
		printf("%-24s %-16s %12lld  %s%s\n", jstr(d, "name"), jstr(d, "txid"),
		       (long long)json_integer_value(json_object_get(d, "size")), lagtxt,
		       json_is_true(json_object_get(d, "exists")) ? "" : "  (deleted)");
	}
	/* backups: only while this node uploads (a primary with a backup section) */
	bool bhead = false;
	for (size_t i = 0; i < json_array_size(dbs); i++) {
		json_t *d = json_array_get(dbs, i), *bk = json_object_get(d, "backup");
		if (!bk)
			continue;
		if (!bhead) {
			printf("\n%-24s %-16s %10s  %s\n", "BACKUP", "UPLOADED TXID", "LAG",
			       "BACKLOG");
			bhead = true;
		}
		if (!json_is_true(json_object_get(bk, "known"))) {
			printf("%-24s %-16s %10s  %s\n", jstr(d, "name"), "(bucket not read yet)",
			       "-", "-");
			continue;
		}
		printf("%-24s %-16s %9.1fs  %lld txn(s)\n", jstr(d, "name"),
		       jstr(bk, "uploadedTxid"),
		       json_number_value(json_object_get(bk, "lagSeconds")),
		       (long long)json_integer_value(json_object_get(bk, "backlogTxns")));
	}
	json_t *reps = json_object_get(o, "replicas");
	if (reps) {
		printf("\n%-18s %-24s %-16s %8s %9s\n", "REPLICA", "DATABASE", "SENT TXID",
		       "BEHIND", "LAG");
		if (json_array_size(reps) == 0)
			printf("(no replica connected)\n");
		for (size_t i = 0; i < json_array_size(reps); i++) {
			json_t *rp = json_array_get(reps, i),
			       *rd = json_object_get(rp, "databases");
			double rlag = json_number_value(json_object_get(rp, "lagSeconds"));
			const char *mark =
			    json_is_true(json_object_get(rp, "lagging")) ? "  lagging" : "";
			if (json_array_size(rd) == 0)
				printf("%-18s %-24s %-16s %8s %8.1fs%s\n", jstr(rp, "nodeID"), "-",
				       "-", "-", rlag, mark);
			for (size_t k = 0; k < json_array_size(rd); k++) {
				json_t *d = json_array_get(rd, k);
				printf("%-18s %-24s %-16s %8lld %8.1fs%s\n", jstr(rp, "nodeID"),
				       jstr(d, "name"), jstr(d, "txid"),
				       (long long)json_integer_value(json_object_get(d, "behind")),
				       rlag, mark);
			}
		}
	}
	json_decref(o);
	return 0;
}

/* ---------------------------------------------------------------- run */

static const char run_usage[] =
    "Usage: ltxfs run [-url URL] [-promote] [-if-candidate] -- CMD ARGS...\n\n"
    "Run a command against a node, as `litefs run`:\n"
    "  -promote       first ask the node to become primary (POST /promote)\n"
    "  -if-candidate  run the command only if the node is a lease candidate\n"
    "                 (exit 0 without running it otherwise)\n"
    "  -url URL       the node's HTTP address (default " DEFAULT_URL ")\n"
    "The exit status is the command's.\n";

static volatile pid_t run_child;

static void forward_signal(int sig)
{
	if (run_child > 0)
		kill(run_child, sig);
}

int cmd_run(int argc, char **argv)
{
	const char *url = DEFAULT_URL;
	bool promote = false, if_candidate = false;
	char **rest = NULL, err[700];
	const struct flag flags[] = {{"url", &url, NULL},
				     {"promote", NULL, &promote},
				     {"if-candidate", NULL, &if_candidate},
				     {NULL}};
	const struct flags_spec spec = {"ltxfs run", run_usage, flags, .rest = true};
	int r = flags_parse(&spec, argc, argv, NULL, &rest);
	if (r)
		return r == FLAGS_HELP ? 0 : 2;
	if (!rest || !rest[0])
		return flags_usage_error(&spec, "a command is required after --");
	if (if_candidate) {
		json_t *o = NULL;
		if (get_info(url, &o) < 0)
			return 1;
		bool cand = json_is_true(json_object_get(o, "candidate"));
		json_decref(o);
		if (!cand) {
			fprintf(stderr, "ltxfs run: %s is not a candidate; not running %s\n", url,
				rest[0]);
			return 0;
		}
	}
	if (promote) {
		char u[2048], auth[600];
		snprintf(u, sizeof(u), "%s", url);
		trim_url(u);
		strncat(u, "/promote", sizeof(u) - strlen(u) - 1);
		auth_header(auth, sizeof(auth));
		struct httpc_req req = {.method = "POST",
					.url = u,
					.headers = {auth[0] ? auth : NULL},
					.timeout_ms = 30000};
		struct httpc_resp resp;
		r = httpc_do(&req, &resp);
		if (r < 0 || resp.status != 200) {
			fprintf(stderr, "ltxfs run: promotion failed: %s\n",
				r < 0 ? resp.err : error_text(&resp, err, sizeof(err)));
			httpc_resp_release(&resp);
			return 1;
		}
		httpc_resp_release(&resp);
	}
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "ltxfs run: fork: %s\n", strerror(errno));
		return 1;
	}
	if (pid == 0) {
		execvp(rest[0], rest);
		fprintf(stderr, "ltxfs run: cannot run '%s': %s\n", rest[0], strerror(errno));
		_exit(127);
	}
	/* forward SIGINT/SIGTERM/SIGHUP to the command while waiting */
	run_child = pid;
	struct sigaction sa = {.sa_handler = forward_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	int ws = 0;
	while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

/* ---------------------------------------------------------------- ltx */

static const char ltx_usage[] =
    "Usage: ltxfs ltx dump FILE\n"
    "       ltxfs ltx verify FILE\n\n"
    "dump prints an LTX file's header, pages (number and checksum) and\n"
    "trailer; verify checks every page, the file checksum and, for a\n"
    "snapshot, the database checksum, and exits 1 if anything is wrong.\n";

int cmd_ltx(int argc, char **argv)
{
	const char *pos[2];
	size_t got;
	const struct flags_spec spec = {"ltxfs ltx", ltx_usage, NULL, pos, 2};
	int r = flags_parse(&spec, argc, argv, &got, NULL);
	if (r)
		return r == FLAGS_HELP ? 0 : 2;
	if (got != 2 || (strcmp(pos[0], "dump") != 0 && strcmp(pos[0], "verify") != 0))
		return flags_usage_error(&spec, "want 'dump FILE' or 'verify FILE'");
	bool dump = strcmp(pos[0], "dump") == 0;
	int fd = open(pos[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "ltxfs ltx: cannot open %s: %s\n", pos[1], strerror(errno));
		return 1;
	}
	struct ltx_decoder *d = NULL;
	struct ltx_trailer tr;
	uint8_t *page = NULL;
	uint32_t pgno;
	size_t npages = 0;
	r = ltx_decoder_new(&d, ltx_fd_read, &fd);
	if (r == 0) {
		const struct ltx_header *h = ltx_decoder_header(d);
		if (dump) {
			time_t t = (time_t)(h->timestamp / 1000);
			char when[64];
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
			printf("file:               %s\n", pos[1]);
			printf("flags:              0x%08x%s\n", h->flags,
			       h->flags & LTX_FLAG_COMPRESS_LZ4 ? " (lz4)" : "");
			printf("page size:          %u\n", h->page_size);
			printf("commit:             %u pages%s\n", h->commit,
			       h->commit == 0 ? " (database deleted)" : "");
			printf("txid:               %016" PRIx64 "-%016" PRIx64 "%s\n", h->min_txid,
			       h->max_txid, ltx_header_is_snapshot(h) ? " (snapshot)" : "");
			printf("timestamp:          %s (%" PRId64 " ms)\n", when, h->timestamp);
			printf("pre-apply checksum: %016" PRIx64 "\n", h->pre_apply_checksum);
			printf("wal:                offset %" PRId64 ", size %" PRId64
			       ", salts %08x %08x\n",
			       h->wal_offset, h->wal_size, h->wal_salt1, h->wal_salt2);
			printf("node id:            %016" PRIX64 "\n", h->node_id);
			printf("epoch:              %" PRIu64 "\n", h->epoch);
		}
		page = malloc(h->page_size);
		if (!page)
			r = -ENOMEM;
		while (r == 0 && (r = ltx_decoder_next_page(d, &pgno, page)) == 1) {
			if (dump)
				printf("page %10u  checksum %016" PRIx64 "\n", pgno,
				       ltx_page_checksum(pgno, page, h->page_size));
			npages++;
			r = 0;
		}
		if (r == 0)
			r = ltx_decoder_finish(d, &tr);
	}
	if (r == 0 && dump) {
		printf("post-apply checksum: %016" PRIx64 "\n", tr.post_apply_checksum);
		printf("file checksum:       %016" PRIx64 "\n", tr.file_checksum);
	}
	if (r == 0)
		printf("%s: ok (%zu pages)\n", pos[1], npages);
	else
		fprintf(stderr, "%s: does not verify: %s%s\n", pos[1],
			r == -EBADMSG  ? "corrupt (checksum, order or framing)"
			: r == -EINVAL ? "invalid header"
				       : strerror(-r),
			npages ? "" : "");
	ltx_decoder_free(d);
	free(page);
	close(fd);
	return r == 0 ? 0 : 1;
}

/* ------------------------------------------------------------- config */

int cli_load_config(struct config *cfg, const char *path, bool expand_env)
{
	char *found = NULL, err[1024] = "";
	if (!path) {
		if (config_find(&found) < 0) {
			fprintf(stderr,
				"ltxfs: no config file: none of ./ltxfs.yml, ./litefs.yml, "
				"/etc/ltxfs.yml, /etc/litefs.yml exists (use -config PATH)\n");
			return 2;
		}
		path = found;
	}
	if (config_init(cfg) < 0) {
		free(found);
		return 1;
	}
	if (config_load(cfg, path, expand_env, err, sizeof(err)) < 0) {
		fprintf(stderr, "ltxfs: %s\n", err);
		config_release(cfg);
		free(found);
		return 2;
	}
	free(found);
	return 0;
}

/* ------------------------------------------------------------ orphans */

static int scandir_sorted(const char *dir, struct dirent ***ret)
{
	return scandir(dir, ret, NULL, alphasort);
}

static const char orphans_usage[] =
    "Usage: ltxfs orphans [-config PATH]\n\n"
    "Lists the LTX files set aside in <data.dir>/dbs/<db>/orphaned/ when\n"
    "this node rejoined a cluster whose history had diverged from its own.\n";

/*
 * `ltxfs orphans`: the transactions this node set aside when it rejoined a
 * cluster whose history had moved on (dbs/<db>/orphaned/<ms>/), one line per
 * LTX file with what an operator needs to decide what to do with it.
 */
int cmd_orphans(int argc, char **argv)
{
	const char *config_path = NULL;
	char dbs[4096];
	struct config cfg;
	int n = 0, total = 0;
	const struct flag flags[] = {{"config", &config_path, NULL}, {NULL}};
	const struct flags_spec spec = {"ltxfs orphans", orphans_usage, flags};
	int rc = flags_parse(&spec, argc, argv, NULL, NULL);
	if (rc)
		return rc == FLAGS_HELP ? 0 : 2;
	rc = cli_load_config(&cfg, config_path, true);
	if (rc)
		return rc;
	snprintf(dbs, sizeof(dbs), "%s/dbs", cfg.data.dir);
	struct dirent **dl = NULL;
	int nd = scandir_sorted(dbs, &dl);
	for (int i = 0; i < nd; i++) {
		char od[4096 + 512];
		struct dirent **sets = NULL;
		snprintf(od, sizeof(od), "%s/%s/orphaned", dbs, dl[i]->d_name);
		int ns = dl[i]->d_name[0] == '.' ? -1 : scandir_sorted(od, &sets);
		for (int j = 0; j < ns; j++) {
			char sd[8192];
			struct dirent **files = NULL;
			snprintf(sd, sizeof(sd), "%s/%s", od, sets[j]->d_name);
			int nf = sets[j]->d_name[0] == '.' ? -1 : scandir_sorted(sd, &files);
			if (nf > 0) {
				time_t t = (time_t)(strtoll(sets[j]->d_name, NULL, 10) / 1000);
				char when[64];
				strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
				printf("db %s: set aside at %s in %s\n", dl[i]->d_name, when, sd);
				n++;
			}
			for (int k = 0; k < nf; k++) {
				char fp[8448];
				struct ltx_header h;
				uint64_t a, b;
				if (ltx_parse_filename(files[k]->d_name, &a, &b) == 0) {
					snprintf(fp, sizeof(fp), "%s/%s", sd, files[k]->d_name);
					int fd = open(fp, O_RDONLY | O_CLOEXEC);
					int r = fd < 0 ? -errno : ltx_verify_fd(fd, &h, NULL);
					if (fd >= 0)
						close(fd);
					if (r == 0)
						printf("  %s  txid %016" PRIx64 "-%016" PRIx64
						       "  epoch %" PRIu64 "  node %016" PRIX64
						       "  commit %u pages  %s\n",
						       files[k]->d_name, h.min_txid, h.max_txid,
						       h.epoch, h.node_id, h.commit,
						       ltx_header_is_snapshot(&h) ? "snapshot"
										  : "");
					else
						printf("  %s  does not verify: %s\n",
						       files[k]->d_name, strerror(-r));
					total++;
				}
				free(files[k]);
			}
			free(files);
			free(sets[j]);
		}
		free(sets);
		free(dl[i]);
	}
	free(dl);
	if (n == 0)
		printf("no orphaned transactions under %s\n", dbs);
	else
		printf("%d set(s), %d LTX file(s): transactions committed here that the cluster "
		       "never received. Compare them with the current database before removing a "
		       "set's directory.\n",
		       n, total);
	config_release(&cfg);
	return 0;
}
