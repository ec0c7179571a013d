/*
 * fusefs.c - the mount: a flat namespace over the databases of the store,
 * served by a FUSE session. This file holds the session's life; the names
 * and inodes are in fusefs_inode.c, the operations (and the kernel caching
 * policy) in fusefs_ops.c, the replica-apply lock protocol in
 * fusefs_apply.c, what they share in fusefs_int.h.
 *
 * LIFE OF A MOUNT, all on the main thread:
 *
 *   fusefs_start      detach a stale mount left by a crashed process
 *                     (ENOTCONN), create the mount directory, open the
 *                     session (fsname=ltxfs, default_permissions, maybe
 *                     allow_other), mount, start the loop thread, then the
 *                     notifier thread
 *   fusefs_begin_stop make a replica apply that waits for readers' locks
 *                     give up (before replica_stop, so the join is quick)
 *   fusefs_stop       stop the notifier; end the session and unmount lazily;
 *                     join the loop, or after 10 s abort the connection
 *                     through fusectl; free the handles the kernel never
 *                     released, the inode tables and fs
 *
 * THREADS.
 *
 *   loop      one; fuse_session_loop_mt() owns libfuse's worker pool (up to
 *             max_threads, default 16, 8 kept idle, no clone_fd) and
 *             returns once the mount is gone; then fs->done is set, which
 *             the main thread polls (fusefs_done)
 *   workers   run the op_* handlers of fusefs_ops.c, each replying exactly
 *             once, never doing network I/O
 *   notifier  one; sends the entry invalidations the handlers queue
 *             (fusefs_queue_inval): an invalidation cannot run inside a
 *             handler, because the kernel serves create and unlink holding
 *             the directory's lock, so it is sent after the reply
 *   replica   not ours: calls the apply hooks (fusefs_apply.c)
 *
 * LOCKS. fs->mu guards the notifier's queue, the handle list, the
 * generation table and the super-journal list; it is a leaf, held for a
 * few instructions and never across a FUSE request or I/O. SQLite's POSIX
 * locks stay in the kernel: there are no getlk/setlk/flock handlers.
 */
#include "fusefs_int.h"

#include "ltxfs/clock.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mount.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------ notifier */

/*
 * Queue an invalidation of the entry of path db+suffix (sent after the
 * reply). A directory the kernel never looked up holds no dentry to drop.
 */
void fusefs_queue_inval(struct fusefs *fs, const char *db, const char *suffix)
{
	const char *slash = strrchr(db, '/');
	fuse_ino_t parent = fusefs_dir_known(fs, db, slash ? (size_t)(slash - db) : 0);
	if (!parent)
		return;
	struct inval *iv = calloc(1, sizeof(*iv));
	if (!iv)
		return; /* the entry then expires on its own */
	iv->parent = parent;
	snprintf(iv->name, sizeof(iv->name), "%s%s", slash ? slash + 1 : db, suffix);
	pthread_mutex_lock(&fs->mu);
	*fs->invals_tail = iv;
	fs->invals_tail = &iv->next;
	pthread_cond_signal(&fs->notifier_cond);
	pthread_mutex_unlock(&fs->mu);
}

static void *notifier_run(void *arg)
{
	struct fusefs *fs = arg;
	pthread_mutex_lock(&fs->mu);
	for (;;) {
		while (!fs->invals && !fs->notifier_stop)
			pthread_cond_wait(&fs->notifier_cond, &fs->mu);
		if (!fs->invals)
			break;
		struct inval *iv = fs->invals;
		fs->invals = iv->next;
		if (!fs->invals)
			fs->invals_tail = &fs->invals;
		pthread_mutex_unlock(&fs->mu);
		if (!fs->notifier_stop) {
			int r = fuse_lowlevel_notify_inval_entry(fs->se, iv->parent, iv->name,
								 strlen(iv->name));
			if (r < 0 && r != -ENOENT)
				log_debug("invalidate '%s': %s", iv->name, strerror(-r));
		}
		free(iv);
		pthread_mutex_lock(&fs->mu);
	}
	pthread_mutex_unlock(&fs->mu);
	return NULL;
}

/* ----------------------------------------------------------- lifecycle */

__attribute__((format(printf, 2, 0))) static void fuse_log_sink(enum fuse_log_level level,
								const char *fmt, va_list ap)
{
	char buf[1024];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	size_t n = strlen(buf);
	if (n && buf[n - 1] == '\n')
		buf[n - 1] = '\0';
	if (level <= FUSE_LOG_ERR)
		log_error("fuse: %s", buf);
	else if (level <= FUSE_LOG_NOTICE)
		log_info("fuse: %s", buf);
	else
		log_debug("fuse: %s", buf);
}

static void *loop_thread(void *arg)
{
	struct fusefs *fs = arg;
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	if (cfg) {
		fuse_loop_cfg_set_clone_fd(cfg, 0);
		fuse_loop_cfg_set_max_threads(cfg, fs->max_threads ? fs->max_threads : 16);
		fuse_loop_cfg_set_idle_threads(cfg, 8);
	}
	int r = fuse_session_loop_mt(fs->se, cfg);
	if (r != 0)
		log_debug("fuse loop ended: %d", r);
	fuse_loop_cfg_destroy(cfg);
	fs->done = true;
	return NULL;
}

/* Abort a FUSE connection through fusectl (mounted here if it is not). */
static void abort_connection(dev_t dev)
{
	const char *dir = "/sys/fs/fuse/connections";
	char path[128];
	snprintf(path, sizeof(path), "%s/%u/abort", dir, (unsigned)minor(dev));
	if (access(path, W_OK) != 0 && mount("fusectl", dir, "fusectl", 0, NULL) != 0)
		log_warn("cannot mount fusectl at %s: %s", dir, strerror(errno));
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "1", 1) != 1)
		log_error("cannot abort the FUSE connection (%s): %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* A mount left behind by a crashed process answers ENOTCONN: detach it. */
static void unmount_stale(const char *mnt)
{
	struct stat st;
	if (stat(mnt, &st) < 0 && errno == ENOTCONN) {
		log_info("unmounting stale mount at '%s'", mnt);
		if (umount2(mnt, MNT_DETACH) < 0)
			log_warn("cannot unmount stale mount at '%s': %s", mnt, strerror(errno));
	}
}

int fusefs_start(struct fusefs **ret, struct store *store, const struct fusefs_options *opt,
		 char *errmsg, size_t n)
{
	struct fusefs *fs = calloc(1, sizeof(*fs));
	char optstr[256];
	int r = 0;
	if (!fs)
		return -ENOMEM;
	pthread_mutex_init(&fs->mu, NULL);
	pthread_mutex_init(&fs->install_mu, NULL);
	pthread_cond_init(&fs->notifier_cond, NULL);
	fs->invals_tail = &fs->invals;
	fs->handles.next = fs->handles.prev = &fs->handles;
	fs->store = store;
	fs->max_threads = opt->max_threads;
	fs->mountpoint = strdup(opt->mountpoint);
	if (!fs->mountpoint) {
		r = -ENOMEM;
		goto fail;
	}
	fuse_set_log_func(fuse_log_sink);
	unmount_stale(opt->mountpoint);
	r = fs_mkdir_p(opt->mountpoint, 0755);
	if (r < 0) {
		snprintf(errmsg, n, "cannot create mount directory '%s': %s", opt->mountpoint,
			 strerror(-r));
		goto fail;
	}
	snprintf(optstr, sizeof(optstr), "fsname=ltxfs,subtype=ltxfs,default_permissions%s",
		 opt->allow_other ? ",allow_other" : "");
	char a0[] = "ltxfs", a1[] = "-o", a3[] = "-d";
	char *argv[] = {a0, a1, optstr, opt->debug ? a3 : NULL, NULL};
	struct fuse_args args = FUSE_ARGS_INIT(opt->debug ? 4 : 3, argv);
	fs->se = fuse_session_new(&args, &fusefs_ops, sizeof(fusefs_ops), fs);
	fuse_opt_free_args(&args);
	if (!fs->se) {
		snprintf(errmsg, n, "cannot create FUSE session");
		r = -EIO;
		goto fail;
	}
	if (fuse_session_mount(fs->se, opt->mountpoint) != 0) {
		snprintf(errmsg, n, "cannot mount FUSE file system at '%s'", opt->mountpoint);
		r = -EIO;
		goto fail;
	}
	if (pthread_create(&fs->thread, NULL, loop_thread, fs) != 0) {
		snprintf(errmsg, n, "cannot start FUSE threads");
		r = -EAGAIN;
		fuse_session_unmount(fs->se);
		goto fail;
	}
	fs->thread_started = true;
	struct stat mst;
	if (stat(opt->mountpoint, &mst) == 0)
		fs->conn_dev = mst.st_dev;
	if (pthread_create(&fs->notifier, NULL, notifier_run, fs) == 0)
		fs->notifier_started = true;
	*ret = fs;
	return 0;
fail:
	fusefs_stop(fs);
	return r;
}

bool fusefs_done(struct fusefs *fs)
{
	return fs->done;
}

void fusefs_begin_stop(struct fusefs *fs)
{
	if (fs)
		fs->stopping = true;
}

void fusefs_stop(struct fusefs *fs)
{
	if (!fs)
		return;
	fs->stopping = true;
	if (fs->notifier_started) {
		pthread_mutex_lock(&fs->mu);
		fs->notifier_stop = true;
		pthread_cond_signal(&fs->notifier_cond);
		pthread_mutex_unlock(&fs->mu);
		pthread_join(fs->notifier, NULL);
	}
	while (fs->invals) {
		struct inval *iv = fs->invals;
		fs->invals = iv->next;
		free(iv);
	}
	if (fs->se) {
		fuse_session_exit(fs->se);
		if (fs->thread_started) {
			/*
			 * The lazy unmount ends the workers' loop once no process
			 * has a file open in the mount. One that keeps a file open
			 * could hold shutdown forever; after a grace period the
			 * connection is aborted, so no request can arrive after
			 * the store is closed (that process then gets ENOTCONN,
			 * and a transaction it had open is rolled back at the next
			 * start).
			 */
			fuse_session_unmount(fs->se);
			struct timespec ts = clock_deadline(CLOCK_REALTIME, 10000);
			if (pthread_timedjoin_np(fs->thread, NULL, &ts) != 0) {
				log_warn("files are still open in %s; aborting the FUSE connection",
					 fs->mountpoint);
				abort_connection(fs->conn_dev);
				pthread_join(fs->thread, NULL);
			}
		}
		fuse_session_destroy(fs->se);
	}
	while (fs->handles.next != &fs->handles) /* never released: connection aborted */
		fusefs_handle_free(fs, fs->handles.next);
	fusefs_inodes_release(fs);
	fusefs_plain_release_all(fs);
	fusefs_dirs_release(fs);
	free(fs->mountpoint);
	pthread_cond_destroy(&fs->notifier_cond);
	pthread_mutex_destroy(&fs->mu);
	pthread_mutex_destroy(&fs->install_mu);
	free(fs);
}
