/*
 * fusefs_dir.c - directories in the mount: mkdir, rmdir, lookup, listing,
 * and the path of every name the kernel sends.
 *
 * NAMES. The kernel names a file by (parent inode, one component). Every
 * handler first turns that into the file's PATH in the mount (fusefs_child):
 * "app.db" at the root, "tenants/42/app.db" below it. From there on a path
 * is a name like any other: a database's name is its path (dbname.h), a
 * plain file's is files/<path>. Components come from the kernel, which never
 * sends "", ".", ".." or a '/', so a joined path cannot leave the mount.
 *
 * WHERE DIRECTORIES LIVE. A directory of the mount is a real directory under
 * <data-dir>/files/: mkdir and rmdir are mkdir and rmdir there, plain files
 * sit in it, and its listing is that directory's entries plus the databases
 * whose name's parent is the directory's path. The store creates the parent
 * directories of a nested database when the database is created (on the
 * primary through the mount, on a replica when the stream brings it), so a
 * replica shows every directory that holds a database. An empty directory,
 * like a plain file, is local to its node.
 *
 * INODES. Directories get inode numbers from INO_DIR_BASE upward, listed in
 * fs->pdirs by path on first lookup and kept until unmount (as plain files
 * are). An inode whose directory is gone answers ESTALE.
 *
 * RMDIR refuses a directory that holds a database (ENOTEMPTY), as for any
 * other entry. RENAME of a directory renames it in files/ (its plain files
 * and subdirectories go with it), then renames each database below it the
 * way a database is renamed (fusefs_whole.c: a consistent copy installed
 * under the new name, then a drop of the old one; two transactions each,
 * replicated). It is atomic per database, not for the tree: a reader may
 * see some databases under the new path and others still under the old.
 *
 * THREADS. FUSE workers; fs->mu guards fs->pdirs for a few instructions.
 */
#include "fusefs_int.h"

#include "ltxfs/dbname.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/store.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The entry of path (fs->mu held). */
static struct pdir *pdir_get(struct fusefs *fs, const char *path)
{
	for (struct pdir *d = fs->pdirs; d; d = d->next)
		if (strcmp(d->path, path) == 0)
			return d;
	return NULL;
}

static fuse_ino_t pdir_add(struct fusefs *fs, const char *path)
{
	fuse_ino_t ino = 0;
	pthread_mutex_lock(&fs->mu);
	struct pdir *d = pdir_get(fs, path);
	if (!d && (d = calloc(1, sizeof(*d)))) {
		snprintf(d->path, sizeof(d->path), "%s", path);
		d->ino = INO_DIR_BASE + fs->pdir_next++;
		d->next = fs->pdirs;
		fs->pdirs = d;
	}
	if (d)
		ino = d->ino;
	pthread_mutex_unlock(&fs->mu);
	return ino;
}

int fusefs_dir_path(struct fusefs *fs, fuse_ino_t ino, char *buf, size_t n)
{
	if (ino == INO_ROOT) {
		buf[0] = '\0';
		return 0;
	}
	if (ino < INO_DIR_BASE)
		return -ENOTDIR;
	int r = -ESTALE;
	pthread_mutex_lock(&fs->mu);
	for (struct pdir *d = fs->pdirs; d; d = d->next)
		if (d->ino == ino) {
			r = snprintf(buf, n, "%s", d->path) < (int)n ? 0 : -ENAMETOOLONG;
			break;
		}
	pthread_mutex_unlock(&fs->mu);
	return r;
}

int fusefs_child(struct fusefs *fs, fuse_ino_t parent, const char *name, char *buf, size_t n)
{
	char dir[MOUNT_NAME_MAX];
	int r = fusefs_dir_path(fs, parent, dir, sizeof(dir));
	if (r < 0)
		return r;
	int len = dir[0] ? snprintf(buf, n, "%s/%s", dir, name) : snprintf(buf, n, "%s", name);
	return len < 0 || (size_t)len >= n ? -ENAMETOOLONG : 0;
}

static int dir_backing(struct fusefs *fs, const char *path, char *buf, size_t n)
{
	return fs_path(buf, n, "%s/files/%s", store_data_dir(fs->store), path);
}

/* Attributes as the mount shows them: writable on a node that accepts writes. */
static void dir_fix_attr(struct fusefs *fs, fuse_ino_t ino, struct stat *st)
{
	st->st_ino = ino;
	if (!store_is_primary(fs->store))
		st->st_mode &= ~(mode_t)0222;
}

fuse_ino_t fusefs_dir_find(struct fusefs *fs, const char *path, struct stat *st)
{
	char real[4096];
	if (!path[0] || dir_backing(fs, path, real, sizeof(real)) < 0 || stat(real, st) < 0 ||
	    !S_ISDIR(st->st_mode))
		return 0;
	fuse_ino_t ino = pdir_add(fs, path);
	if (ino)
		dir_fix_attr(fs, ino, st);
	return ino;
}

fuse_ino_t fusefs_dir_known(struct fusefs *fs, const char *path, size_t len)
{
	fuse_ino_t ino = 0;
	if (len == 0)
		return INO_ROOT;
	pthread_mutex_lock(&fs->mu);
	for (struct pdir *d = fs->pdirs; d && !ino; d = d->next)
		if (strlen(d->path) == len && memcmp(d->path, path, len) == 0)
			ino = d->ino;
	pthread_mutex_unlock(&fs->mu);
	return ino;
}

int fusefs_dir_attr(struct fusefs *fs, fuse_ino_t ino, struct stat *st)
{
	char path[MOUNT_NAME_MAX], real[4096];
	int r = fusefs_dir_path(fs, ino, path, sizeof(path));
	if (r == 0)
		r = dir_backing(fs, path, real, sizeof(real));
	if (r == 0 && (stat(real, st) < 0 || !S_ISDIR(st->st_mode)))
		r = -ESTALE;
	if (r == 0)
		dir_fix_attr(fs, ino, st);
	return r;
}

/* True when a database (not dropped) lies anywhere under path. */
static bool holds_database(struct fusefs *fs, const char *path)
{
	size_t pl = strlen(path), n = store_count(fs->store);
	for (size_t i = 0; i < n; i++) {
		struct db *db = store_at(fs->store, i);
		const char *name = db_name(db);
		if (strncmp(name, path, pl) == 0 && name[pl] == '/' && db_exists(db))
			return true;
	}
	return false;
}

/* True when path is taken by a database or one of its companion files. */
static bool database_name_taken(struct fusefs *fs, const char *path)
{
	struct fname f;
	struct db *db;
	return fusefs_parse_name(path, &f) == 0 && (db = store_find(fs->store, f.db)) &&
	       db_exists(db);
}

int fusefs_mkdir(struct fusefs *fs, const char *path, mode_t mode, uid_t uid, gid_t gid,
		 fuse_ino_t *ret_ino, struct stat *st)
{
	char real[4096];
	const char *base = dbname_base(path);
	if (path == base && (strcmp(base, ".primary") == 0 || strcmp(base, ".lag") == 0))
		return -EEXIST;
	if (database_name_taken(fs, path))
		return -EEXIST;
	/* room for a database name below it (dbname.h) */
	if (strlen(path) + 2 > DBNAME_MAX || !dbname_valid(path, strlen(path)))
		return -ENAMETOOLONG;
	int r = dir_backing(fs, path, real, sizeof(real));
	if (r < 0)
		return r;
	char files[4096];
	r = fs_path(files, sizeof(files), "%s/files", store_data_dir(fs->store));
	if (r == 0)
		r = fs_mkdir_p(files, 0755);
	if (r == 0 && mkdir(real, mode & 07777) < 0)
		r = -errno;
	if (r == 0 && lchown(real, uid, gid) < 0) {
		r = -errno;
		rmdir(real);
	}
	if (r == 0 && !(*ret_ino = fusefs_dir_find(fs, path, st)))
		r = -ENOENT;
	return r;
}

int fusefs_rmdir(struct fusefs *fs, const char *path)
{
	char real[4096];
	struct stat st;
	if (database_name_taken(fs, path))
		return -ENOTDIR;
	if (holds_database(fs, path))
		return -ENOTEMPTY;
	int r = dir_backing(fs, path, real, sizeof(real));
	if (r == 0 && lstat(real, &st) == 0 && !S_ISDIR(st.st_mode))
		r = -ENOTDIR;
	if (r == 0 && rmdir(real) < 0)
		r = -errno;
	if (r == 0) {
		pthread_mutex_lock(&fs->mu);
		for (struct pdir **pp = &fs->pdirs; *pp; pp = &(*pp)->next)
			if (strcmp((*pp)->path, path) == 0) {
				struct pdir *d = *pp;
				*pp = d->next;
				free(d);
				break;
			}
		pthread_mutex_unlock(&fs->mu);
	}
	return r;
}

/* Replace the prefix `from` of s (a path, or a path below it) by `to`. */
static void move_prefix(char *s, size_t n, const char *from, const char *to)
{
	char tmp[MOUNT_NAME_MAX];
	size_t fl = strlen(from);
	if (strncmp(s, from, fl) != 0 || (s[fl] != '\0' && s[fl] != '/'))
		return;
	if (snprintf(tmp, sizeof(tmp), "%s%s", to, s + fl) < (int)sizeof(tmp))
		snprintf(s, n, "%s", tmp);
}

int fusefs_dir_rename(struct fusefs *fs, const char *from, const char *to)
{
	char sreal[4096], dreal[4096];
	if (database_name_taken(fs, to))
		return -ENOTDIR;
	if (holds_database(fs, to))
		return -ENOTEMPTY;
	/* a directory cannot move below itself (the kernel checks it too) */
	size_t fl = strlen(from);
	if (strncmp(to, from, fl) == 0 && to[fl] == '/')
		return -EINVAL;
	if (strlen(to) + 2 > DBNAME_MAX || !dbname_valid(to, strlen(to)))
		return -ENAMETOOLONG;
	int r = dir_backing(fs, from, sreal, sizeof(sreal));
	if (r == 0)
		r = dir_backing(fs, to, dreal, sizeof(dreal));
	if (r == 0 && rename(sreal, dreal) < 0)
		r = -errno;
	if (r < 0)
		return r;
	pthread_mutex_lock(&fs->mu);
	for (struct pdir **pp = &fs->pdirs; *pp;) {
		struct pdir *d = *pp;
		if (strcmp(d->path, to) == 0) { /* an empty target directory went */
			*pp = d->next;
			free(d);
			continue;
		}
		move_prefix(d->path, sizeof(d->path), from, to);
		pp = &d->next;
	}
	for (struct pfile *p = fs->pfiles; p; p = p->next)
		move_prefix(p->name, sizeof(p->name), from, to);
	pthread_mutex_unlock(&fs->mu);
	if (!holds_database(fs, from))
		return 0;
	/*
	 * The databases below: each copied under its new name, then dropped
	 * under the old one. On a failure the ones left keep their old names,
	 * and their directories are made again so that they stay listed.
	 */
	r = fusefs_rename_tree(fs, from, to);
	if (r < 0) {
		size_t n = store_count(fs->store);
		for (size_t i = 0; i < n; i++) {
			struct db *db = store_at(fs->store, i);
			const char *name = db_name(db), *slash = strrchr(name, '/');
			char path[4096];
			if (slash && db_exists(db) &&
			    fs_path(path, sizeof(path), "%s/files/%.*s", store_data_dir(fs->store),
				    (int)(slash - name), name) == 0)
				fs_mkdir_p(path, 0755);
		}
	}
	return r < 0 ? -EIO : 0;
}

bool fusefs_is_dir(struct fusefs *fs, const char *path)
{
	char real[4096];
	struct stat st;
	return path[0] && dir_backing(fs, path, real, sizeof(real)) == 0 && stat(real, &st) == 0 &&
	       S_ISDIR(st.st_mode);
}

static void dirbuf_add(fuse_req_t req, struct dirbuf *b, const char *name, fuse_ino_t ino,
		       mode_t mode)
{
	struct stat st;
	memset(&st, 0, sizeof(st));
	st.st_ino = ino;
	st.st_mode = mode;
	size_t old = b->size;
	size_t need = fuse_add_direntry(req, NULL, 0, name, NULL, 0);
	char *p = realloc(b->p, old + need);
	if (!p)
		return;
	b->p = p;
	b->size += need;
	fuse_add_direntry(req, b->p + old, need, name, &st, (off_t)b->size);
}

/* The part of name below dir ("" the root), or NULL if name is not directly in it. */
static const char *in_dir(const char *name, const char *dir)
{
	size_t dl = strlen(dir);
	if (dl) {
		if (strncmp(name, dir, dl) != 0 || name[dl] != '/')
			return NULL;
		name += dl + 1;
	}
	return strchr(name, '/') ? NULL : name;
}

/*
 * A directory's listing, built afresh for every READDIR: no buffer lives
 * between requests, so nothing can be freed under a READDIR that the kernel
 * still has in flight when RELEASEDIR arrives (seen with an interrupted
 * syscall). Offsets are byte offsets into the listing; if entries come or go
 * between two calls, one may be seen twice or not at all, which POSIX allows
 * for a directory that changes while it is read.
 */
int fusefs_dir_listing(fuse_req_t req, struct fusefs *fs, fuse_ino_t ino, struct dirbuf *b)
{
	char dir[MOUNT_NAME_MAX];
	int r = fusefs_dir_path(fs, ino, dir, sizeof(dir));
	if (r < 0)
		return r;
	bool root = ino == INO_ROOT;
	dirbuf_add(req, b, ".", ino, S_IFDIR);
	dirbuf_add(req, b, "..", INO_ROOT, S_IFDIR);
	if (root) {
		struct stat vst;
		if (fusefs_virt_attr(fs, INO_PRIMARY, &vst) == 0)
			dirbuf_add(req, b, ".primary", INO_PRIMARY, S_IFREG);
		dirbuf_add(req, b, ".lag", INO_LAG, S_IFREG);
	}
	static const char *const sfx[DB_FILE_N] = {"", "-journal", "-wal", "-shm", "-pos"};
	size_t n = store_count(fs->store);
	for (size_t i = 0; i < n; i++) {
		struct db *db = store_at(fs->store, i);
		const char *base = in_dir(db_name(db), dir);
		struct stat st;
		char name[512];
		if (!base)
			continue;
		for (int k = 0; k < DB_FILE_N; k++) {
			if (k == DB_FILE_POS ? !fusefs_pos_visible(fs, db)
					     : db_stat_file(db, (enum db_file)k, &st) < 0)
				continue;
			snprintf(name, sizeof(name), "%s%s", base, sfx[k]);
			dirbuf_add(req, b, name, fusefs_db_ino(db, k), S_IFREG);
		}
	}
	pthread_mutex_lock(&fs->mu);
	for (struct mj *m = fs->mjs; m; m = m->next) {
		const char *base = in_dir(m->name, dir);
		if (base)
			dirbuf_add(req, b, base, m->ino, S_IFREG);
	}
	pthread_mutex_unlock(&fs->mu);
	/* plain files and directories (files/<dir>) */
	char real[4096];
	DIR *d = dir_backing(fs, dir, real, sizeof(real)) == 0 ? opendir(real) : NULL;
	struct dirent *de;
	while (d && (de = readdir(d))) {
		char path[MOUNT_NAME_MAX];
		struct stat st;
		fuse_ino_t cino;
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
		    (root && strncmp(de->d_name, ".ltxfs-link.", 12) == 0))
			continue;
		if ((dir[0] ? snprintf(path, sizeof(path), "%s/%s", dir, de->d_name)
			    : snprintf(path, sizeof(path), "%s", de->d_name)) >= (int)sizeof(path))
			continue;
		if ((cino = fusefs_dir_find(fs, path, &st)) != 0)
			dirbuf_add(req, b, de->d_name, cino, S_IFDIR);
		else if ((cino = fusefs_plain_find(fs, path, &st)) != 0)
			dirbuf_add(req, b, de->d_name, cino, S_IFREG);
	}
	if (d)
		closedir(d);
	return b->p ? 0 : -ENOMEM;
}

void fusefs_dirs_release(struct fusefs *fs)
{
	while (fs->pdirs) {
		struct pdir *d = fs->pdirs;
		fs->pdirs = d->next;
		free(d);
	}
}
