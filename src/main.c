/*
 * main.c - the ltxfs command: `ltxfs mount`, `ltxfs orphans`, `ltxfs version`.
 *
 * Start-up order: config -> logging -> store (claims the data directory and
 * recovers every database) -> FUSE mount -> HTTP server -> replica stream
 * (a static-lease node with candidate: false follows lease.advertise-url;
 * with consul or etcd every node starts following nobody) -> elector (consul
 * or etcd: decides who is primary, see elector.c) -> optional subprocess.
 * Shutdown stops the elector first, which releases a held lease. The main
 * thread then waits for SIGINT/SIGTERM (forwarded to the subprocess) or for
 * the subprocess to exit, and shuts down in reverse order. Exit status: 0 on
 * a clean stop, 2 for usage and configuration errors, 1 for runtime errors,
 * or the subprocess's own status.
 */
#include "ltxfs/cli.h"
#include "ltxfs/clock.h"
#include "ltxfs/config.h"
#include "ltxfs/elector.h"
#include "ltxfs/fusefs.h"
#include "ltxfs/httpc.h"
#include "ltxfs/httpd.h"
#include "ltxfs/lease.h"
#include "ltxfs/lease_backend.h"
#include "ltxfs/ltx.h"
#include "ltxfs/log.h"
#include "ltxfs/replica.h"
#include "ltxfs/store.h"

#include <systemd/sd-daemon.h>

#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
		"ltxfs %s - SQLite replication through a FUSE file system\n\n"
		"Usage:\n"
		"  ltxfs mount [-config PATH] [-no-expand-env] [-check-config] [-- CMD ARGS...]\n"
		"  ltxfs import -name NAME [-url URL] PATH\n"
		"  ltxfs export -name NAME [-url URL] PATH\n"
		"  ltxfs status [-url URL] [-json]\n"
		"  ltxfs run [-url URL] [-promote] [-if-candidate] -- CMD ARGS...\n"
		"  ltxfs ltx dump FILE | ltxfs ltx verify FILE\n"
		"  ltxfs orphans [-config PATH]\n"
		"  ltxfs version\n\n"
		"Without -config, ltxfs reads ./ltxfs.yml, ./litefs.yml, /etc/ltxfs.yml or\n"
		"/etc/litefs.yml, the first that exists. Flags may start with - or --.\n",
		LTXFS_VERSION);
}

/* "-x", "--x" -> "x"; NULL when arg is not a flag. */
static const char *flag_name(const char *arg)
{
	if (arg[0] != '-' || arg[1] == '\0')
		return NULL;
	return arg[1] == '-' ? arg + 2 : arg + 1;
}

/* Retention: every interval, prune LTX files older than the retention. */
struct retention {
	struct store *store;
	struct httpd *httpd;
	int64_t retention_ms, interval_ms;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool stop;
	pthread_t thread;
};

static void *retention_run(void *arg)
{
	struct retention *r = arg;
	pthread_mutex_lock(&r->mu);
	while (!r->stop) {
		struct timespec ts = clock_deadline(CLOCK_REALTIME, r->interval_ms);
		pthread_cond_timedwait(&r->cond, &r->mu, &ts);
		if (r->stop)
			break;
		pthread_mutex_unlock(&r->mu);
		int64_t cutoff = clock_wall_ms() - r->retention_ms;
		size_t n = store_count(r->store);
		for (size_t i = 0; i < n; i++) {
			struct db *db = store_at(r->store, i);
			int k = db_enforce_retention(db, cutoff,
						     httpd_retention_floor(r->httpd, db_name(db)));
			if (k > 0)
				log_debug("db '%s': retention removed %d LTX file(s)", db_name(db),
					  k);
			else if (k < 0)
				log_warn("db '%s': retention failed: %s", db_name(db),
					 strerror(-k));
		}
		pthread_mutex_lock(&r->mu);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

/* The replica thread hands a HANDOFF token to the elector (which exists by then). */
static void on_handoff(void *ctx, const char *token)
{
	struct elector **e = ctx;
	if (*e)
		elector_handoff_received(*e, token);
}

static void follow(void *ctx, const char *url)
{
	replica_follow(ctx, url);
}

/*
 * The effective configuration as one log line of dotted keys
 * ("fuse.dir=/litefs data.dir=..."), secrets masked, so that a log line stays
 * one event (config_log_line).
 */
static void log_config(const struct config *cfg)
{
	char *line = NULL;
	if (config_log_line(cfg, &line) < 0)
		return;
	log_info("effective configuration: %s", line);
	free(line);
}

static pid_t spawn(char **argv, const sigset_t *oldmask)
{
	pid_t pid = fork();
	if (pid == 0) {
		sigprocmask(SIG_SETMASK, oldmask, NULL);
		execvp(argv[0], argv);
		fprintf(stderr, "ltxfs: cannot run '%s': %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	return pid;
}

static int cmd_mount(int argc, char **argv)
{
	/*
	 * Each commit allocates and frees an LTX encoder (about 128 KiB with
	 * LZ4). Above glibc's default threshold that is an mmap/munmap pair per
	 * commit, and every munmap in a multi-threaded process is a TLB
	 * shootdown across CPUs. Keep such buffers on the heap.
	 */
	mallopt(M_MMAP_THRESHOLD, 16 << 20);
	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	const char *config_path = NULL;
	bool expand = true, check_only = false, running = false;
	char **cmd = NULL;
	struct config cfg;
	char err[1024] = "";
	char *found = NULL;
	struct store *store = NULL;
	struct fusefs *fs = NULL;
	struct httpd *httpd = NULL;
	struct replica *replica = NULL;
	struct lease *lease = NULL;
	struct elector *elector = NULL;
	int status = 0;
	pid_t child = -1;
	struct retention ret = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
	bool ret_started = false;

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			if (i + 1 < argc)
				cmd = argv + i + 1;
			break;
		}
		const char *f = flag_name(argv[i]);
		if (!f) {
			fprintf(stderr, "ltxfs mount: unexpected argument '%s'\n\n", argv[i]);
			usage(stderr);
			return 2;
		}
		const char *eq = strchr(f, '=');
		size_t fl = eq ? (size_t)(eq - f) : strlen(f);
		if (fl == 6 && strncmp(f, "config", 6) == 0) {
			if (eq)
				config_path = eq + 1;
			else if (i + 1 < argc)
				config_path = argv[++i];
			else {
				fprintf(stderr, "ltxfs mount: flag -config needs a path\n");
				return 2;
			}
		} else if (strcmp(f, "no-expand-env") == 0) {
			expand = false;
		} else if (strcmp(f, "check-config") == 0) {
			check_only = true;
		} else if (strcmp(f, "h") == 0 || strcmp(f, "help") == 0) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "ltxfs mount: unknown flag '%s'\n\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	/* As LiteFS: $HOSTNAME is usable in the config and set for subprocesses. */
	char host[256];
	if (!getenv("HOSTNAME") && gethostname(host, sizeof(host)) == 0) {
		host[sizeof(host) - 1] = '\0';
		setenv("HOSTNAME", host, 0);
	}
	if (!config_path) {
		if (config_find(&found) < 0) {
			fprintf(stderr,
				"ltxfs: no config file: none of ./ltxfs.yml, ./litefs.yml, "
				"/etc/ltxfs.yml, /etc/litefs.yml exists (use -config PATH)\n");
			return 2;
		}
		config_path = found;
	}
	if (config_init(&cfg) < 0) {
		free(found);
		return 1;
	}
	if (config_load(&cfg, config_path, expand, err, sizeof(err)) < 0) {
		fprintf(stderr, "ltxfs: %s\n", err);
		config_release(&cfg);
		free(found);
		return 2;
	}
	free(found);
	if (check_only) {
		/* validate what mount would, print the effective config, mount nothing */
		if (strcmp(cfg.lease.type, "static") != 0 &&
		    lease_new(&lease, &cfg, err, sizeof(err)) < 0) {
			fprintf(stderr, "ltxfs: %s: %s\n", cfg.path, err);
			config_release(&cfg);
			return 2;
		}
		lease_free(lease);
		config_dump(&cfg, stdout);
		config_release(&cfg);
		return 0;
	}
	log_init(strcmp(cfg.log.format, "json") == 0, cfg.log.debug);
	/* Static lease, as LiteFS: a candidate is the primary; any other node
	 * replicates from lease.advertise-url, which names the primary. With
	 * consul or etcd every node starts as a replica and the elector decides. */
	bool elected = strcmp(cfg.lease.type, "static") != 0;
	bool primary = !elected && cfg.lease.candidate;
	if (elected && lease_new(&lease, &cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "ltxfs: %s: %s\n", cfg.path, err);
		config_release(&cfg);
		return 2;
	}
	log_info("ltxfs %s starting: config %s, data %s, mount %s, %s", LTXFS_VERSION, cfg.path,
		 cfg.data.dir, cfg.fuse.dir,
		 elected   ? (cfg.lease.candidate ? "candidate (elected lease)"
						  : "replica (elected lease, not a candidate)")
		 : primary ? "primary (static lease)"
			   : "replica");
	log_config(&cfg);

	/* Signals are taken synchronously by this thread only. */
	sigset_t mask, oldmask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &mask, &oldmask);
	signal(SIGPIPE, SIG_IGN);

	struct store_options so = {.data_dir = cfg.data.dir,
				   .mount_dir = cfg.fuse.dir,
				   .compress = cfg.data.compress,
				   .replica = !primary};
	int r = store_open(&store, &so, err, sizeof(err));
	if (r < 0) {
		log_error("cannot open data directory: %s", err[0] ? err : strerror(-r));
		status = 1;
		goto out;
	}
	if (primary && (r = store_ensure_cluster_id(store)) < 0) {
		log_error("cannot write the cluster ID: %s", strerror(-r));
		status = 1;
		goto out;
	}
	log_info("node id %016" PRIX64 ", %zu database(s)", store_node_id(store),
		 store_count(store));
	struct fusefs_options fo = {.mountpoint = cfg.fuse.dir,
				    .allow_other = cfg.fuse.allow_other,
				    .debug = cfg.fuse.debug};
	r = fusefs_start(&fs, store, &fo, err, sizeof(err));
	if (r < 0) {
		log_error("%s", err);
		status = 1;
		goto out;
	}
	log_info("mounted at %s", cfg.fuse.dir);
	struct httpd_options ho = {.addr = cfg.http.addr,
				   .hostname = cfg.lease.hostname,
				   .advertise_url = cfg.lease.advertise_url,
				   .store = store,
				   .mount_dir = cfg.fuse.dir,
				   .data_dir = cfg.data.dir,
				   .token = cfg.http.token,
				   .read_auth = cfg.http.read_auth};
	fusefs_apply_hooks(fs, &ho.hooks);
	r = httpd_start(&httpd, &ho, err, sizeof(err));
	if (r < 0) {
		log_error("%s", err);
		status = 1;
		goto out;
	}
	log_info("http server listening on %s", cfg.http.addr);
	if (!primary) {
		struct replica_options ro = {
		    .store = store,
		    .primary_url = elected ? NULL : cfg.lease.advertise_url,
		    .advertise_url = elected ? cfg.lease.advertise_url : NULL,
		    .token = cfg.http.token,
		    .on_handoff = on_handoff,
		    .handoff_ctx = &elector};
		fusefs_apply_hooks(fs, &ro.hooks);
		r = replica_start(&replica, &ro);
		if (r < 0) {
			log_error("cannot start the replica stream: %s", strerror(-r));
			status = 1;
			goto out;
		}
		if (!elected)
			log_info("replicating from %s", cfg.lease.advertise_url);
	}
	if (elected) {
		struct elector_options eo = {.store = store,
					     .lease = lease,
					     .hostname = cfg.lease.hostname,
					     .advertise_url = cfg.lease.advertise_url,
					     .candidate = cfg.lease.candidate,
					     .promote = cfg.lease.promote,
					     .reconnect_delay_ms = cfg.lease.reconnect_delay_ms,
					     .token = cfg.http.token,
					     .follow = follow,
					     .ctx = replica};
		r = elector_start(&elector, &eo);
		if (r < 0) {
			log_error("cannot start the lease loop: %s", strerror(-r));
			status = 1;
			goto out;
		}
		httpd_set_elector(httpd, elector);
		log_info("primary chosen by a %s lease", cfg.lease.type);
	}
	if (cfg.data.retention_ms > 0) {
		ret.store = store;
		ret.httpd = httpd;
		ret.retention_ms = cfg.data.retention_ms;
		ret.interval_ms = cfg.data.retention_monitor_interval_ms;
		if (pthread_create(&ret.thread, NULL, retention_run, &ret) == 0)
			ret_started = true;
	}

	/*
	 * With an elected lease, as LiteFS: the commands run once this node is
	 * primary or caught up with one (skip-sync: at once), so that
	 * migrations see the cluster's data and a replica's reads are current.
	 */
	if (elected && !cfg.skip_sync && (cmd || cfg.n_exec > 0)) {
		log_info("waiting to be primary or in sync before starting the command");
		/* with lease.promote a candidate first waits for its promotion, so
		 * that if-candidate migrations run on the primary, as LiteFS */
		bool want_primary = cfg.lease.promote && cfg.lease.candidate;
		for (;;) {
			if (store_accepts_writes(store) ||
			    (!want_primary && store_caught_up(store)))
				break;
			struct timespec ts = {0, 50000000};
			int sig = sigtimedwait(&mask, NULL, &ts);
			if (sig == SIGINT || sig == SIGTERM) {
				log_info("received signal %d before the command started", sig);
				goto out;
			}
		}
	}
	/* systemd Type=notify: the mount and the HTTP server are up */
	sd_notifyf(0, "READY=1\nSTATUS=%s",
		   elected   ? "following the lease"
		   : primary ? "primary"
			     : "replica");
	char **run = cmd;
	if (!run && cfg.n_exec > 0)
		run = cfg.exec[cfg.n_exec - 1].argv;
	if (cfg.n_exec > 1 && !cmd) {
		/* every command but the last runs to completion first (migrations) */
		for (size_t i = 0; i + 1 < cfg.n_exec; i++) {
			if (cfg.exec[i].if_candidate &&
			    (!cfg.lease.candidate || (elected && !store_accepts_writes(store))))
				continue; /* migrations run only where writes are possible */
			pid_t p = spawn(cfg.exec[i].argv, &oldmask);
			int ws = 0;
			while (p > 0 && waitpid(p, &ws, 0) < 0 && errno == EINTR)
				;
			if (p < 0 || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
				log_error("exec command '%s' failed", cfg.exec[i].argv[0]);
				status = 1;
				goto out;
			}
		}
	}
	if (run) {
		child = spawn(run, &oldmask);
		if (child < 0) {
			log_error("cannot start '%s': %s", run[0], strerror(errno));
			status = 1;
			goto out;
		}
		log_info("started subprocess '%s' (pid %d)", run[0], (int)child);
	}

	running = true;
	for (;;) {
		struct timespec ts = {1, 0};
		int sig = sigtimedwait(&mask, NULL, &ts);
		if (sig < 0) {
			if (fs && fusefs_done(fs)) {
				log_warn("mount at %s went away", cfg.fuse.dir);
				status = 1;
				break;
			}
			continue;
		}
		if (sig == SIGCHLD) {
			int ws;
			pid_t p;
			while ((p = waitpid(-1, &ws, WNOHANG)) > 0) {
				if (p != child)
					continue;
				status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
				log_info("subprocess exited with status %d", status);
				child = -1;
			}
			if (run && child < 0)
				break;
			continue;
		}
		log_info("received signal %d, shutting down", sig);
		if (child > 0) {
			kill(child, sig);
			int ws;
			while (waitpid(child, &ws, 0) < 0 && errno == EINTR)
				;
			status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
			child = -1;
		}
		break;
	}
out:
	if (!running && status == 1 && !cfg.exit_on_error) {
		/* exit-on-error: false, as LiteFS: stay up so the node can be inspected */
		log_warn("exit-on-error is false: staying up after the start-up error above until "
			 "SIGINT or SIGTERM");
		for (;;) {
			int sig = sigwaitinfo(&mask, NULL);
			if (sig == SIGINT || sig == SIGTERM)
				break;
			if (sig == SIGCHLD)
				while (waitpid(-1, NULL, WNOHANG) > 0)
					;
		}
	}
	sd_notify(0, "STOPPING=1");
	if (ret_started) {
		pthread_mutex_lock(&ret.mu);
		ret.stop = true;
		pthread_cond_signal(&ret.cond);
		pthread_mutex_unlock(&ret.mu);
		pthread_join(ret.thread, NULL);
	}
	/* The lease goes first: commits stop and a successor may take over now. */
	if (httpd)
		httpd_set_elector(httpd, NULL);
	elector_stop(elector);
	fusefs_begin_stop(fs);
	replica_stop(replica);
	httpd_stop(httpd);
	fusefs_stop(fs);
	lease_free(lease);
	store_close(store);
	if (status == 0 || status == 1)
		log_info("stopped");
	config_release(&cfg);
	return status;
}

static int scandir_sorted(const char *dir, struct dirent ***ret)
{
	return scandir(dir, ret, NULL, alphasort);
}

/*
 * `ltxfs orphans`: the transactions this node set aside when it rejoined a
 * cluster whose history had moved on (dbs/<db>/orphaned/<ms>/), one line per
 * LTX file with what an operator needs to decide what to do with it.
 */
static int cmd_orphans(int argc, char **argv)
{
	const char *config_path = NULL;
	char *found = NULL, err[1024] = "", dbs[4096];
	struct config cfg;
	int n = 0, total = 0;
	for (int i = 0; i < argc; i++) {
		const char *f = flag_name(argv[i]);
		if (f && strcmp(f, "config") == 0 && i + 1 < argc)
			config_path = argv[++i];
		else if (f && strncmp(f, "config=", 7) == 0)
			config_path = f + 7;
		else if (f && (strcmp(f, "h") == 0 || strcmp(f, "help") == 0)) {
			printf(
			    "Usage: ltxfs orphans [-config PATH]\n\n"
			    "Lists the LTX files set aside in <data.dir>/dbs/<db>/orphaned/ when\n"
			    "this node rejoined a cluster whose history had diverged from its "
			    "own.\n");
			return 0;
		} else {
			fprintf(stderr,
				"ltxfs orphans: unknown argument '%s'\n\nUsage: ltxfs orphans "
				"[-config PATH]\n",
				argv[i]);
			return 2;
		}
	}
	if (!config_path && config_find(&found) < 0) {
		fprintf(stderr, "ltxfs: no config file (use -config PATH)\n");
		return 2;
	}
	if (config_init(&cfg) < 0)
		return 1;
	if (config_load(&cfg, config_path ? config_path : found, true, err, sizeof(err)) < 0) {
		fprintf(stderr, "ltxfs: %s\n", err);
		config_release(&cfg);
		free(found);
		return 2;
	}
	free(found);
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

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	const char *f = flag_name(cmd);
	if (strcmp(cmd, "version") == 0 || (f && strcmp(f, "version") == 0)) {
		printf("ltxfs %s\n", LTXFS_VERSION);
		return 0;
	}
	if (strcmp(cmd, "mount") == 0) {
		httpc_global_init();
		int rc = cmd_mount(argc - 2, argv + 2);
		httpc_global_cleanup();
		return rc;
	}
	static const struct {
		const char *name;
		int (*fn)(int, char **);
		bool curl;
	} cmds[] = {
	    {"orphans", cmd_orphans, false}, {"import", cmd_import, true},
	    {"export", cmd_export, true},    {"status", cmd_status, true},
	    {"run", cmd_run, true},	     {"ltx", cmd_ltx, false},
	};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmd, cmds[i].name) == 0) {
			if (cmds[i].curl)
				httpc_global_init();
			int rc = cmds[i].fn(argc - 2, argv + 2);
			if (cmds[i].curl)
				httpc_global_cleanup();
			return rc;
		}
	if (f && (strcmp(f, "h") == 0 || strcmp(f, "help") == 0)) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "ltxfs: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
