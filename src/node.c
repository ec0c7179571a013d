/*
 * node.c - the life of a node (`ltxfs mount`): start-up and shutdown
 * order, signals, the supervised subprocess and the retention thread.
 *
 * START-UP, in this order (node_run, node_start), each step needing the
 * ones before it:
 *
 *   logging, and the lease backend if consul or etcd (a bad backend
 *     config is a usage error, exit 2, before anything starts)
 *   signals   SIGINT, SIGTERM, SIGHUP and SIGCHLD blocked, so every later
 *             thread inherits the mask and only this thread takes them
 *             (sigtimedwait); SIGPIPE ignored
 *   store     claims the data directory, recovers every database
 *   restore   backup.restore-if-empty on a candidate with no data and no
 *             lease holder: every database from the bucket (restore.c),
 *             before anything below can write or take the lease
 *   cluster ID  created by a static primary
 *   fusefs    the mount
 *   httpd     the HTTP server (needs the mount's apply hooks for adoption)
 *   replica   the stream client: every node but a static primary (a
 *             static replica follows lease.advertise-url; with consul or
 *             etcd it follows whomever the elector names)
 *   elector   consul or etcd: decides who is primary (elector.c)
 *   backup    the S3 uploader, when a backup section is configured
 *             (it uploads only while this node accepts writes)
 *   retention when data.retention > 0
 *
 * SUPERVISION (node_supervise). With an elected lease the commands wait
 * until this node is primary or caught up with one (skip-sync: no wait).
 * systemd is told READY. Every exec command but the last runs to
 * completion first (migrations; if-candidate ones only where writes are
 * possible); the last one, or the command after `mount --`, is supervised:
 * a child starts with the original signal mask. Then the loop reacts to
 * SIGCHLD (the supervised child's exit ends the node with its status),
 * SIGINT/SIGTERM/SIGHUP (forwarded to the child, which is waited for), and
 * every second checks that the mount is still there.
 *
 * SHUTDOWN (node_stop), in reverse: retention, backups, the elector (commits stop
 * and a held lease is released, so a successor may take over at once),
 * fusefs_begin_stop (an apply waiting for readers' locks gives up), the
 * replica, the HTTP server (streams get END), the mount, the lease, the
 * store. After a start-up error, with exit-on-error: false, the node first
 * stays up until SIGINT or SIGTERM so that it can be inspected.
 *
 * Exit status: 0 on a clean stop, 2 for configuration errors, 1 for
 * runtime errors, or the subprocess's own status.
 *
 * THREADS. node_run runs on the main thread and owns every other thread
 * through the modules it starts. The retention thread (retention_run)
 * wakes every data.retention-monitor-interval and prunes each database's
 * LTX files older than data.retention, keeping what a connected replica
 * still needs (httpd_retention_floor) and what is not in the backup bucket
 * yet (backup_retention_floor); its mutex guards only its stop
 * flag. The replica thread reaches the elector through on_handoff, and the
 * elector the replica through follow: callbacks wired here, so that the
 * two modules never call each other.
 */
#include "ltxfs/node.h"

#include "ltxfs/backup.h"
#include "ltxfs/restore.h"
#include "ltxfs/clock.h"
#include "ltxfs/elector.h"
#include "ltxfs/fusefs.h"
#include "ltxfs/httpd.h"
#include "ltxfs/lease.h"
#include "ltxfs/lease_backend.h"
#include "ltxfs/log.h"
#include "ltxfs/replica.h"
#include "ltxfs/store.h"

#include <systemd/sd-daemon.h>

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Retention: every interval, prune LTX files older than the retention. */
struct retention {
	struct store *store;
	struct httpd *httpd;
	struct backup *backup; /* NULL without backups */
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
			/* what a replica still needs, and what is not in the bucket yet */
			uint64_t floor = httpd_retention_floor(r->httpd, db_name(db));
			uint64_t bfloor = backup_retention_floor(r->backup, db);
			int k = db_enforce_retention(db, cutoff, bfloor < floor ? bfloor : floor);
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

/* Everything a running node holds; torn down by node_stop. */
struct node {
	const struct config *cfg;
	char **cmd;    /* after `mount --`, or NULL */
	bool elected;  /* consul or etcd: the elector decides the role */
	bool primary;  /* a static-lease candidate */
	sigset_t mask; /* the signals this thread takes */
	sigset_t oldmask;
	struct store *store;
	struct fusefs *fs;
	struct httpd *httpd;
	struct replica *replica;
	struct lease *lease;
	struct elector *elector;
	struct backup *backup;
	struct retention ret;
	bool ret_started;
	pid_t child;  /* the supervised subprocess, or -1 */
	bool running; /* start-up completed: supervising */
};

/*
 * backup.restore-if-empty on a candidate whose data directory holds no data:
 * unless a primary holds the lease (then this node follows it, as any
 * replica), every database of the bucket is restored into the store, with
 * the bucket's cluster ID, before anything can write. 0, or 1 after logging
 * the error (the node does not start empty: that would begin a new history
 * beside the bucket's).
 */
static int restore_if_empty(struct node *n)
{
	const struct config *cfg = n->cfg;
	char err[1024] = "", id[21];
	size_t count = 0;
	int r;
	if (n->elected) {
		struct lease_holder h = {0};
		uint64_t index = 0;
		if ((r = lease_observe(n->lease, &index, 0, &h)) < 0) {
			log_error(
			    "restore-if-empty: cannot tell whether a primary holds the lease: "
			    "%s",
			    n->lease->err[0] ? n->lease->err : strerror(-r));
			return 1;
		}
		if (h.present) {
			log_info(
			    "restore-if-empty: %s holds the lease: following it, not restoring",
			    h.hostname);
			return 0;
		}
	}
	log_info("restore-if-empty: no data here: restoring every database from bucket '%s'%s%s",
		 cfg->backup.bucket, cfg->backup.path[0] ? ", prefix " : "", cfg->backup.path);
	int64_t t0 = clock_mono_ms();
	if ((r = restore_into_store(cfg, n->store, cfg->data.dir, &count, err, sizeof(err))) < 0) {
		log_error("restore-if-empty: %s; not starting with an empty data directory", err);
		return 1;
	}
	store_cluster_id(n->store, id);
	if (!id[0])
		log_info("restore-if-empty: the bucket holds no backup: starting empty");
	else
		log_info("restore-if-empty: restored %zu database(s) of cluster %s in %lld ms",
			 count, id, (long long)(clock_mono_ms() - t0));
	return 0;
}

/* Start the modules in order (see the top of this file); 0, or 1 after logging the error. */
static int node_start(struct node *n)
{
	const struct config *cfg = n->cfg;
	char err[1024] = "";
	struct store_options so = {.data_dir = cfg->data.dir,
				   .mount_dir = cfg->fuse.dir,
				   .compress = cfg->data.compress,
				   .replica = !n->primary};
	int r = store_open(&n->store, &so, err, sizeof(err));
	if (r < 0) {
		log_error("cannot open data directory: %s", err[0] ? err : strerror(-r));
		return 1;
	}
	if (cfg->backup.type && cfg->backup.restore_if_empty && cfg->lease.candidate &&
	    !store_has_data(n->store) && restore_if_empty(n) != 0)
		return 1;
	if (n->primary && (r = store_ensure_cluster_id(n->store)) < 0) {
		log_error("cannot write the cluster ID: %s", strerror(-r));
		return 1;
	}
	log_info("node id %016" PRIX64 ", %zu database(s)", store_node_id(n->store),
		 store_count(n->store));
	struct fusefs_options fo = {.mountpoint = cfg->fuse.dir,
				    .allow_other = cfg->fuse.allow_other,
				    .debug = cfg->fuse.debug};
	r = fusefs_start(&n->fs, n->store, &fo, err, sizeof(err));
	if (r < 0) {
		log_error("%s", err);
		return 1;
	}
	log_info("mounted at %s", cfg->fuse.dir);
	struct httpd_options ho = {.addr = cfg->http.addr,
				   .hostname = cfg->lease.hostname,
				   .advertise_url = cfg->lease.advertise_url,
				   .store = n->store,
				   .mount_dir = cfg->fuse.dir,
				   .data_dir = cfg->data.dir,
				   .token = cfg->http.token,
				   .read_auth = cfg->http.read_auth};
	fusefs_apply_hooks(n->fs, &ho.hooks);
	r = httpd_start(&n->httpd, &ho, err, sizeof(err));
	if (r < 0) {
		log_error("%s", err);
		return 1;
	}
	log_info("http server listening on %s", cfg->http.addr);
	if (!n->primary) {
		struct replica_options ro = {
		    .store = n->store,
		    .primary_url = n->elected ? NULL : cfg->lease.advertise_url,
		    .advertise_url = n->elected ? cfg->lease.advertise_url : NULL,
		    .token = cfg->http.token,
		    .on_handoff = on_handoff,
		    .handoff_ctx = &n->elector};
		fusefs_apply_hooks(n->fs, &ro.hooks);
		r = replica_start(&n->replica, &ro);
		if (r < 0) {
			log_error("cannot start the replica stream: %s", strerror(-r));
			return 1;
		}
		if (!n->elected)
			log_info("replicating from %s", cfg->lease.advertise_url);
	}
	if (n->elected) {
		struct elector_options eo = {.store = n->store,
					     .lease = n->lease,
					     .hostname = cfg->lease.hostname,
					     .advertise_url = cfg->lease.advertise_url,
					     .candidate = cfg->lease.candidate,
					     .promote = cfg->lease.promote,
					     .reconnect_delay_ms = cfg->lease.reconnect_delay_ms,
					     .token = cfg->http.token,
					     .follow = follow,
					     .ctx = n->replica};
		r = elector_start(&n->elector, &eo);
		if (r < 0) {
			log_error("cannot start the lease loop: %s", strerror(-r));
			return 1;
		}
		httpd_set_elector(n->httpd, n->elector);
		log_info("primary chosen by a %s lease", cfg->lease.type);
	}
	if (cfg->backup.type) {
		struct backup_options bo = {.store = n->store, .cfg = cfg};
		r = backup_start(&n->backup, &bo);
		if (r < 0) {
			log_error("cannot start backups: %s", strerror(-r));
			return 1;
		}
		log_info("backups to s3 bucket '%s'%s%s every %lld ms (uploaded by the primary)",
			 cfg->backup.bucket, cfg->backup.path[0] ? ", prefix " : "",
			 cfg->backup.path, (long long)cfg->backup.sync_interval_ms);
	}
	if (cfg->data.retention_ms > 0) {
		n->ret.store = n->store;
		n->ret.httpd = n->httpd;
		n->ret.backup = n->backup;
		n->ret.retention_ms = cfg->data.retention_ms;
		n->ret.interval_ms = cfg->data.retention_monitor_interval_ms;
		if (pthread_create(&n->ret.thread, NULL, retention_run, &n->ret) == 0)
			n->ret_started = true;
	}
	return 0;
}

/*
 * Run the exec commands and supervise the last one until a signal, its
 * exit or the loss of the mount; returns the exit status.
 */
static int node_supervise(struct node *n)
{
	const struct config *cfg = n->cfg;
	int status = 0;
	/*
	 * With an elected lease, as LiteFS: the commands run once this node is
	 * primary or caught up with one (skip-sync: at once), so that
	 * migrations see the cluster's data and a replica's reads are current.
	 */
	if (n->elected && !cfg->skip_sync && (n->cmd || cfg->n_exec > 0)) {
		log_info("waiting to be primary or in sync before starting the command");
		/* with lease.promote a candidate first waits for its promotion, so
		 * that if-candidate migrations run on the primary, as LiteFS */
		bool want_primary = cfg->lease.promote && cfg->lease.candidate;
		for (;;) {
			if (store_accepts_writes(n->store) ||
			    (!want_primary && store_caught_up(n->store)))
				break;
			struct timespec ts = {0, 50000000};
			int sig = sigtimedwait(&n->mask, NULL, &ts);
			if (sig == SIGINT || sig == SIGTERM) {
				log_info("received signal %d before the command started", sig);
				return 0;
			}
		}
	}
	/* systemd Type=notify: the mount and the HTTP server are up */
	sd_notifyf(0, "READY=1\nSTATUS=%s",
		   n->elected	? "following the lease"
		   : n->primary ? "primary"
				: "replica");
	char **run = n->cmd;
	if (!run && cfg->n_exec > 0)
		run = cfg->exec[cfg->n_exec - 1].argv;
	if (cfg->n_exec > 1 && !n->cmd) {
		/* every command but the last runs to completion first (migrations) */
		for (size_t i = 0; i + 1 < cfg->n_exec; i++) {
			if (cfg->exec[i].if_candidate &&
			    (!cfg->lease.candidate ||
			     (n->elected && !store_accepts_writes(n->store))))
				continue; /* migrations run only where writes are possible */
			pid_t p = spawn(cfg->exec[i].argv, &n->oldmask);
			int ws = 0;
			while (p > 0 && waitpid(p, &ws, 0) < 0 && errno == EINTR)
				;
			if (p < 0 || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
				log_error("exec command '%s' failed", cfg->exec[i].argv[0]);
				return 1;
			}
		}
	}
	if (run) {
		n->child = spawn(run, &n->oldmask);
		if (n->child < 0) {
			log_error("cannot start '%s': %s", run[0], strerror(errno));
			return 1;
		}
		log_info("started subprocess '%s' (pid %d)", run[0], (int)n->child);
	}

	n->running = true;
	for (;;) {
		struct timespec ts = {1, 0};
		int sig = sigtimedwait(&n->mask, NULL, &ts);
		if (sig < 0) {
			if (n->fs && fusefs_done(n->fs)) {
				log_warn("mount at %s went away", cfg->fuse.dir);
				status = 1;
				break;
			}
			continue;
		}
		if (sig == SIGCHLD) {
			int ws;
			pid_t p;
			while ((p = waitpid(-1, &ws, WNOHANG)) > 0) {
				if (p != n->child)
					continue;
				status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
				log_info("subprocess exited with status %d", status);
				n->child = -1;
			}
			if (run && n->child < 0)
				break;
			continue;
		}
		log_info("received signal %d, shutting down", sig);
		if (n->child > 0) {
			kill(n->child, sig);
			int ws;
			while (waitpid(n->child, &ws, 0) < 0 && errno == EINTR)
				;
			status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
			n->child = -1;
		}
		break;
	}
	return status;
}

/* Stop what node_start started, in reverse order (NULLs skipped). */
static void node_stop(struct node *n, int status)
{
	if (!n->running && status == 1 && !n->cfg->exit_on_error) {
		/* exit-on-error: false, as LiteFS: stay up so the node can be inspected */
		log_warn("exit-on-error is false: staying up after the start-up error above until "
			 "SIGINT or SIGTERM");
		for (;;) {
			int sig = sigwaitinfo(&n->mask, NULL);
			if (sig == SIGINT || sig == SIGTERM)
				break;
			if (sig == SIGCHLD)
				while (waitpid(-1, NULL, WNOHANG) > 0)
					;
		}
	}
	sd_notify(0, "STOPPING=1");
	if (n->ret_started) {
		pthread_mutex_lock(&n->ret.mu);
		n->ret.stop = true;
		pthread_cond_signal(&n->ret.cond);
		pthread_mutex_unlock(&n->ret.mu);
		pthread_join(n->ret.thread, NULL);
	}
	backup_stop(n->backup); /* a backlog stays local; the next primary uploads it */
	/* The lease goes first: commits stop and a successor may take over now. */
	if (n->httpd)
		httpd_set_elector(n->httpd, NULL);
	elector_stop(n->elector);
	fusefs_begin_stop(n->fs);
	replica_stop(n->replica);
	httpd_stop(n->httpd);
	fusefs_stop(n->fs);
	lease_free(n->lease);
	store_close(n->store);
	if (status == 0 || status == 1)
		log_info("stopped");
}

int node_run(const struct config *cfg, char **cmd)
{
	/*
	 * Each commit allocates and frees an LTX encoder (about 128 KiB with
	 * LZ4). Above glibc's default threshold that is an mmap/munmap pair per
	 * commit, and every munmap in a multi-threaded process is a TLB
	 * shootdown across CPUs. Keep such buffers on the heap.
	 */
	mallopt(M_MMAP_THRESHOLD, 16 << 20);
	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	struct node n = {
	    .cfg = cfg,
	    .cmd = cmd,
	    .child = -1,
	    .ret = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER}};
	char err[1024] = "";
	log_init(strcmp(cfg->log.format, "json") == 0, cfg->log.debug);
	/* Static lease, as LiteFS: a candidate is the primary; any other node
	 * replicates from lease.advertise-url, which names the primary. With
	 * consul or etcd every node starts as a replica and the elector decides. */
	n.elected = strcmp(cfg->lease.type, "static") != 0;
	n.primary = !n.elected && cfg->lease.candidate;
	if (n.elected && lease_new(&n.lease, cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "ltxfs: %s: %s\n", cfg->path, err);
		return 2;
	}
	log_info("ltxfs %s starting: config %s, data %s, mount %s, %s", LTXFS_VERSION, cfg->path,
		 cfg->data.dir, cfg->fuse.dir,
		 n.elected   ? (cfg->lease.candidate ? "candidate (elected lease)"
						     : "replica (elected lease, not a candidate)")
		 : n.primary ? "primary (static lease)"
			     : "replica");
	log_config(cfg);

	/* Signals are taken synchronously by this thread only. */
	sigemptyset(&n.mask);
	sigaddset(&n.mask, SIGINT);
	sigaddset(&n.mask, SIGTERM);
	sigaddset(&n.mask, SIGCHLD);
	sigaddset(&n.mask, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &n.mask, &n.oldmask);
	signal(SIGPIPE, SIG_IGN);

	int status = node_start(&n);
	if (status == 0)
		status = node_supervise(&n);
	node_stop(&n, status);
	return status;
}
