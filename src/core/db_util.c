/*
 * db_util.c - the small helpers every other db_*.c file uses, kept apart so
 * that none of those files has to call one listed after it (db_int.h, THE
 * FILES). No state of its own:
 *
 *   db_fence      the write fence: asks db_options.may_commit whether this
 *                 node may commit now, and under which lease epoch (written
 *                 into the LTX header); -EROFS refuses the commit-point
 *                 operation. Start-up recovery (!db->live) is never fenced.
 *   db_file_path  dbs/<name>/database, journal, wal and shm
 *   open_backing  open(2) of one of them
 *   db_exists     whether the database file exists (a dropped database
 *                 keeps its TXID)
 *   db_ltx_file_open  open(2) of an LTX file by its TXIDs (_min: by its first)
 *   pgck_reserve  room in db->pgck, the committed checksum of every page
 *
 * db_cur_checksum and read_db_page, which the commit path calls per
 * transaction and per page, are static inline in db_int.h.
 *
 * THREADS. db_fence, open_backing and pgck_reserve are called with db->mu
 * held (or by db_open's thread before anyone else sees the db); db_fence
 * calls may_commit under db->mu, and the store's fence takes only its leaf
 * lock (docs/architecture.md, section 2). db_file_path and db_ltx_file_open
 * read only what db_open fixed and need no lock. db_exists takes db->mu itself.
 */

#include "db_int.h"

#include "ltxfs/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>

/* The write fence (db_options.may_commit); recovery is never fenced. */
int db_fence(struct db *db, uint64_t *epoch)
{
	*epoch = 0;
	if (!db->live || !db->opt.may_commit)
		return 0;
	if (db->opt.may_commit(db->opt.change_ctx, epoch))
		return 0;
	log_warn("db '%s': commit refused: this node does not hold the primary lease", db->name);
	return -EROFS;
}

static const char *const file_names[DB_FILE_N] = {"database", "journal", "wal", "shm", NULL};

int db_file_path(struct db *db, enum db_file kind, char *buf, size_t n)
{
	if (kind >= DB_FILE_POS)
		return -EINVAL;
	return fs_path(buf, n, "%s/%s", db->dir, file_names[kind]);
}

bool db_exists(struct db *db)
{
	pthread_mutex_lock(&db->mu);
	bool e = db->exists;
	pthread_mutex_unlock(&db->mu);
	return e;
}

/* Open ltx/<min_txid>-<max_txid>.ltx read-only: a descriptor, or -errno. */
int db_ltx_file_open(struct db *db, uint64_t min_txid, uint64_t max_txid)
{
	char name[LTX_FILENAME_LEN + 1], path[4096];
	ltx_format_filename(name, min_txid, max_txid);
	int r = fs_path(path, sizeof(path), "%s/%s", db->ltx_dir, name);
	if (r < 0)
		return r;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/*
 * Open the LTX file whose TXIDs start at min_txid: the one-transaction file
 * "min-min.ltx", or else a range file "min-max.ltx" (group commit, QUEUED
 * LTX FILES in db_ltxout.c), found by listing ltx/; with covering, when none
 * starts there, the range file that holds min_txid (OVERLAPPING FILES in
 * db_apply.c). A descriptor, or -errno.
 */
int db_ltx_file_open_min(struct db *db, uint64_t min_txid, bool covering)
{
	int fd = db_ltx_file_open(db, min_txid, min_txid);
	if (fd != -ENOENT)
		return fd;
	DIR *d = opendir(db->ltx_dir);
	struct dirent *de;
	uint64_t cmin = 0, cmax = 0;
	if (!d)
		return -errno;
	fd = -ENOENT;
	while ((de = readdir(d))) {
		uint64_t mn, mx;
		if (ltx_parse_filename(de->d_name, &mn, &mx) < 0)
			continue;
		if (mn == min_txid) {
			fd = openat(dirfd(d), de->d_name, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				fd = -errno;
			break;
		}
		if (covering && mn < min_txid && min_txid <= mx) {
			cmin = mn;
			cmax = mx;
		}
	}
	closedir(d);
	if (fd == -ENOENT && cmax)
		fd = db_ltx_file_open(db, cmin, cmax);
	return fd;
}

int pgck_reserve(struct db *db, uint32_t npages)
{
	if (npages <= db->pgck_cap)
		return 0;
	uint32_t cap = db->pgck_cap ? db->pgck_cap : 64;
	while (cap < npages)
		cap = cap > UINT32_MAX / 2 ? npages : cap * 2;
	uint64_t *p = realloc(db->pgck, ((size_t)cap + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	memset(p + db->pgck_cap + 1, 0, (size_t)(cap - db->pgck_cap) * sizeof(*p));
	db->pgck = p;
	db->pgck_cap = cap;
	return 0;
}

int open_backing(struct db *db, enum db_file kind, int flags, mode_t mode, int *ret_fd)
{
	char path[4096];
	int r = db_file_path(db, kind, path, sizeof(path));
	if (r < 0)
		return r;
	int fd = open(path, flags | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	*ret_fd = fd;
	return 0;
}
