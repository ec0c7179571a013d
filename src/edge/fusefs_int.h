/*
 * fusefs_int.h - what the files of the FUSE mount share (not installed).
 *
 *   fusefs.c        the session: mount, the loop and notifier threads, stop
 *   fusefs_inode.c  names, inode numbers, generations, super-journals,
 *                   attributes, the root listing
 *   fusefs_ops.c    the FUSE operations and the table libfuse calls
 *   fusefs_apply.c  the hooks a replica's db_apply_ltx() uses, and the
 *                   locks a whole-file install takes
 *   fusefs_whole.c  whole-file writes, renames, plain files
 *   fusefs_dir.c    directories, and the path of a (parent, name) pair
 *
 * Only these files include libfuse (through this header).
 */
#ifndef LTXFS_FUSEFS_INT_H
#define LTXFS_FUSEFS_INT_H

#define FUSE_USE_VERSION 312
#include "ltxfs/fusefs.h"

#include "ltxfs/db.h"

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#define INO_ROOT      1
#define INO_PRIMARY   2 /* .primary */
#define INO_LAG	      3 /* .lag */
#define INO_DB_BASE   16
#define INO_MJ_BASE   (UINT64_C(1) << 40)
#define KIND_MJ	      DB_FILE_N
#define KIND_VIRT     (DB_FILE_N + 1) /* .primary / .lag: handle->db is NULL */
#define KIND_FILE     (DB_FILE_N + 2) /* a plain file: files/<name>, passed through */
#define KIND_STAGE    (DB_FILE_N + 3) /* a whole-file write: a staging file, installed at close */
#define INO_FILE_BASE (UINT64_C(1) << 41)
#define INO_DIR_BASE  (UINT64_C(1) << 42)

/* A path in the mount ("tenants/42/notes.txt"), NUL included. */
#define MOUNT_NAME_MAX 1024

#define CACHE_TIMEOUT 86400.0

struct mj {
	struct mj *next;
	fuse_ino_t ino;
	char name[512]; /* its path in the mount */
	char db[256];
	char hex[32];
};

/* A plain file (or a whole-file create not yet closed): name <-> inode. */
struct pfile {
	struct pfile *next;
	fuse_ino_t ino;
	char name[MOUNT_NAME_MAX]; /* its path in the mount */
	int stagefd;		   /* a pending create's staging file (a dup), or -1 */
	bool stale; /* became a database: ESTALE, so the kernel looks the name up again */
};

/* A directory of the mount (fusefs_dir.c): path <-> inode. */
struct pdir {
	struct pdir *next;
	fuse_ino_t ino;
	char path[MOUNT_NAME_MAX];
};

/* A kernel dentry to invalidate once the current request has been answered. */
struct inval {
	struct inval *next;
	fuse_ino_t parent;
	char name[MOUNT_NAME_MAX]; /* one component */
};

/* An open file. Live handles are listed so that the ones the kernel never
 * releases (after the connection is aborted) are freed at stop. */
struct handle {
	struct handle *prev, *next;
	int fd;
	struct db *db;
	int kind;
	/* KIND_STAGE: the name being written, its inode, whether the staging
	 * file differs from what is installed (written or truncated) */
	bool dirty;
	fuse_ino_t ino;
	char name[MOUNT_NAME_MAX];
};

struct fusefs {
	struct store *store;
	/* notifier: invalidations cannot run inside a handler (the kernel holds
	 * the directory lock for create/unlink), so a thread sends them */
	pthread_t notifier;
	bool notifier_started;
	bool notifier_stop;
	pthread_cond_t notifier_cond;
	struct inval *invals, **invals_tail;
	struct fuse_session *se;
	pthread_t thread;
	bool thread_started;
	volatile bool done;
	char *mountpoint;
	unsigned max_threads;
	dev_t conn_dev; /* the mount's st_dev: names its /sys/fs/fuse/connections entry */

	pthread_mutex_t mu; /* generations and super-journals (also the notifier queue, handles) */
	uint64_t (*gen)[DB_FILE_N];
	bool *pos_hidden; /* a dropped database's -pos was unlinked (rm -r) */
	size_t ngen;	  /* of gen and pos_hidden */
	struct mj *mjs;
	uint64_t mj_next;
	struct handle handles; /* list head */
	struct pfile *pfiles;  /* plain files and pending creates (fs->mu) */
	uint64_t pfile_next;
	struct pdir *pdirs; /* directories (fs->mu) */
	uint64_t pdir_next;
	pthread_mutex_t install_mu; /* one whole-file install at a time */
	volatile bool stopping;
	/* writes waiting for this node to accept them, and applies waiting for
	 * SQLite locks (fusefs_apply.c), which make those writes give way (__atomic) */
	unsigned write_waiters;
	unsigned apply_waiting;
};

/* A mount name taken apart: database, kind (enum db_file or KIND_MJ), super-journal hex. */
struct fname {
	int kind;
	char db[256];
	char hex[32];
};

/* A directory listing being built (fuse_add_direntry format); b->p is malloc'd. */
struct dirbuf {
	char *p;
	size_t size;
};

/* ---- fusefs_inode.c: names and inodes (any FUSE worker) ---- */

/* 0, or -ENOENT for names that can never exist, -ENAMETOOLONG. */
int fusefs_parse_name(const char *name, struct fname *f);
fuse_ino_t fusefs_db_ino(struct db *db, int kind);
/* The generation of (db, kind), incremented first if bump (fs->mu). */
uint64_t fusefs_gen_get(struct fusefs *fs, struct db *db, int kind, bool bump);
/* Resolve an inode to (db, kind), and a super-journal to a copy of its entry; -ENOENT if unknown.
 */
int fusefs_ino_resolve(struct fusefs *fs, fuse_ino_t ino, struct db **db, int *kind,
		       struct mj *mjcopy);
int fusefs_mj_path(struct fusefs *fs, const struct mj *m, char *buf, size_t n);
/* The inode of the super-journal called name in the mount, or 0. */
fuse_ino_t fusefs_mj_find(struct fusefs *fs, const char *name);
/* Number and list a super-journal just created; -ENOMEM. */
int fusefs_mj_add(struct fusefs *fs, const char *name, const struct fname *f, fuse_ino_t *ret);
void fusefs_mj_remove(struct fusefs *fs, const char *name);
/* Content of .primary or .lag; its length, or -ENOENT (.primary on a primary). */
int fusefs_virt_content(struct fusefs *fs, fuse_ino_t ino, char *buf, size_t n);
int fusefs_virt_attr(struct fusefs *fs, fuse_ino_t ino, struct stat *st);
void fusefs_pos_attr(struct db *db, struct stat *st);
/*
 * A database's -pos shows while the database exists, and after a drop
 * (with the position of the drop) until it is unlinked: fusefs_pos_hide.
 */
bool fusefs_pos_visible(struct fusefs *fs, struct db *db);
void fusefs_pos_hide(struct fusefs *fs, struct db *db, bool hide);
int fusefs_get_attr(struct fusefs *fs, fuse_ino_t ino, struct stat *st);
void fusefs_fill_entry(struct fuse_entry_param *e, fuse_ino_t ino, uint64_t gen,
		       const struct stat *st);
/* Free the generation table and the super-journal list (at stop). */
void fusefs_inodes_release(struct fusefs *fs);

/* ---- fusefs_dir.c: directories and paths (any FUSE worker) ---- */

/* The path of directory ino ("" for the root); -ENOTDIR (not a directory), -ESTALE. */
int fusefs_dir_path(struct fusefs *fs, fuse_ino_t ino, char *buf, size_t n);
/* The path of name in directory parent; -ENOTDIR, -ESTALE, -ENAMETOOLONG. */
int fusefs_child(struct fusefs *fs, fuse_ino_t parent, const char *name, char *buf, size_t n);
/* The inode of directory path (listed on first use), with its attributes; 0: not a directory. */
fuse_ino_t fusefs_dir_find(struct fusefs *fs, const char *path, struct stat *st);
/* The inode of directory path[0..len) if the kernel may know it (INO_ROOT for ""), else 0. */
fuse_ino_t fusefs_dir_known(struct fusefs *fs, const char *path, size_t len);
int fusefs_dir_attr(struct fusefs *fs, fuse_ino_t ino, struct stat *st);
bool fusefs_is_dir(struct fusefs *fs, const char *path);
/* mkdir of path, owned by uid:gid (the caller's); its inode and attributes. */
int fusefs_mkdir(struct fusefs *fs, const char *path, mode_t mode, uid_t uid, gid_t gid,
		 fuse_ino_t *ret_ino, struct stat *st);
/* -ENOTEMPTY for a directory holding a database or a file. */
int fusefs_rmdir(struct fusefs *fs, const char *path);
/* A directory renamed, with every database below it (fusefs_rename_tree). */
int fusefs_dir_rename(struct fusefs *fs, const char *from, const char *to);
/* Directory ino's entries into b (0, -ENOMEM, -ENOTDIR, -ESTALE). */
int fusefs_dir_listing(fuse_req_t req, struct fusefs *fs, fuse_ino_t ino, struct dirbuf *b);
void fusefs_dirs_release(struct fusefs *fs);

/* ---- fusefs_whole.c: whole-file writes, plain files, renames ---- */

/* A path a plain file may have: under MOUNT_NAME_MAX bytes; not ".primary" or ".lag". */
bool fusefs_plain_name_ok(const char *name);
/* "<data-dir>/files/<name>" into buf. */
int fusefs_plain_path(struct fusefs *fs, const char *name, char *buf, size_t n);
/* The inode of plain file name (listed on first use); 0 when it does not exist. */
fuse_ino_t fusefs_plain_find(struct fusefs *fs, const char *name, struct stat *st);
/* Resolve a plain file's inode to a copy of its entry; -ENOENT. */
int fusefs_plain_resolve(struct fusefs *fs, fuse_ino_t ino, struct pfile *copy);
int fusefs_plain_attr(struct fusefs *fs, fuse_ino_t ino, struct stat *st);
/* A dup of a pending create's staging file (the caller closes it); -ENOENT. */
int fusefs_plain_stage_dup(struct fusefs *fs, fuse_ino_t ino);
/* True when flags ask for a whole-file write (O_WRONLY, O_TRUNC or O_EXCL). */
bool fusefs_whole_flags(int flags);
/*
 * A whole-file handle on name (db NULL for a name that does not exist yet;
 * pending creates get a plain-file inode): a staging file in files/, filled
 * with the committed database unless trunc. *ret_ino: the inode to reply.
 */
int fusefs_stage_open(struct fusefs *fs, struct fuse_file_info *fi, const char *name, struct db *db,
		      bool trunc, fuse_ino_t *ret_ino, struct stat *st);
/* At FLUSH: install a dirty staging file (0, or -EINVAL/-EIO... logged here). */
int fusefs_stage_flush(struct fusefs *fs, struct handle *h);
/* At RELEASE of a staging handle: forget a pending create that never installed. */
void fusefs_stage_release(struct fusefs *fs, struct handle *h);
/* rename(2) of path from to path to (the kernel holds the directories' locks). */
int fusefs_rename(struct fusefs *fs, const char *from, const char *to, unsigned flags);
/*
 * SQLite opening an empty plain file under a database name (touch, then
 * sqlite3): it becomes an empty database; -ESTALE makes the kernel look the
 * name up again. 1: not such a file (open it as a plain file).
 */
int fusefs_plain_to_database(struct fusefs *fs, const char *name);
/*
 * Inside a directory rename: every database under from renamed under to
 * (each a copy installed, then a drop). 0, or the first failure (logged;
 * the databases not yet renamed stay under their old names).
 */
int fusefs_rename_tree(struct fusefs *fs, const char *from, const char *to);
/* unlink of a plain file. */
int fusefs_plain_unlink(struct fusefs *fs, const char *name);
void fusefs_plain_release_all(struct fusefs *fs);
int fusefs_handle_new(struct fusefs *fs, struct fuse_file_info *fi, int fd, struct db *db,
		      int kind);

/* ---- fusefs_apply.c: locks for a whole-file install on the primary ---- */

/* Take SQLite's locks on db through the mount; dir_locked: inside a
 * rename, where nothing may be looked up or created (see fusefs_apply.c). */
int fusefs_install_lock(struct fusefs *fs, struct db *db, bool dir_locked, void **token);
void fusefs_install_unlock(struct fusefs *fs, struct db *db, void *token, bool ok,
			   uint32_t page_size, uint32_t npages, bool dir_locked);

/* ---- fusefs_ops.c: the FUSE operations ---- */

extern const struct fuse_lowlevel_ops fusefs_ops;
void fusefs_handle_free(struct fusefs *fs, struct handle *h);

/* ---- fusefs.c: the session ---- */

/* Queue an invalidation of the root entry db+suffix (sent after the reply). */
void fusefs_queue_inval(struct fusefs *fs, const char *db, const char *suffix);

#endif
