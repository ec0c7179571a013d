/*
 * fusefs_whole.c - files written whole rather than through SQLite: a
 * database replaced by cp, install, shutil.copy, rsync, truncate or an
 * editor's save; rename(2) of a database; and plain files that are not
 * SQLite databases. docs/architecture.md section 11 is the design.
 *
 * TELLING THEM APART. A database is what SQLite opens: read-write, without
 * O_TRUNC or O_EXCL. An open for writing with O_WRONLY, O_TRUNC or O_EXCL
 * (what cp, shells, Python's open(..., "wb"), mkstemp use; SQLite never
 * opens a database file so) is a WHOLE-FILE WRITE. At close its first bytes
 * decide: a file that starts with "SQLite format 3\0" (or with a prefix of
 * it) is a database and must be a valid one; any other content is a plain
 * file, unless the name already is a database (then it is refused).
 *
 * STAGING. A whole-file handle writes into an unnamed staging file in
 * <data-dir>/files/ (O_TMPFILE), filled with the committed database first
 * unless the open truncates. Readers of the name see the installed database
 * meanwhile. A name that does not exist yet gets a plain-file inode and a
 * pending entry (struct pfile.stagefd) so that its attributes are those of
 * the staging file; other processes do not see the name before the close.
 *
 *   OPEN ──write/truncate──> DIRTY ──FLUSH──> installed (database or plain)
 *     └───────────────────────────────FLUSH, invalid──> refused (EINVAL)
 *   RELEASE of a handle whose FLUSH never installed: the pending name goes
 *
 * INSTALL (install()). At FLUSH (close(2) waits for it and reports its
 * error; RELEASE does not): SQLite's locks are taken through the mount, as
 * a replica's apply takes them (fusefs_apply.c), db_install_build turns the
 * staging file into one LTX transaction (validating it: a truncated copy is
 * refused and the old database stays), and db_apply_ltx installs it: the
 * same verified path a replica uses, so connections already open see a
 * database changed by another process, and replicas receive one LTX file.
 * The database file and ltx/ are fsynced before the reply. A writer killed
 * half way is closed by the kernel: its FLUSH finds an invalid file and the
 * old database stays. fs->install_mu lets one install
 * run at a time.
 *
 * PLAIN FILES live in <data-dir>/files/<name>, are passed through like
 * super-journals, listed in the root, and are local to the node: they are
 * not replicated (a replica's mount shows its own). Their inodes come from
 * INO_FILE_BASE upward, in fs->pfiles.
 *
 * RENAME (fusefs_rename; the kernel holds the root directory's lock, so
 * nothing here may look up or create a name in the mount): plain to plain
 * is a rename in files/; a plain file holding a SQLite database renamed
 * onto a database name (rsync's temp file, the write-then-rename idiom) is
 * installed there and the plain file removed; a database renamed is
 * installed under the new name from a consistent copy, then dropped under
 * the old one (two transactions, each replicated). Companion files (-wal,
 * -journal, -shm, -pos) are never renamed. Hard links are refused.
 *
 * THREADS. FUSE workers. fs->mu guards fs->pfiles for a few instructions;
 * install_mu is held across an install, which waits for SQLite readers'
 * locks (never with fs->mu held).
 */
#include "fusefs_int.h"

#include "ltxfs/dbname.h"
#include "ltxfs/fsutil.h"
#include "ltxfs/log.h"
#include "ltxfs/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char sqlite_magic[16] = "SQLite format 3";

/* ------------------------------------------------------------ plain files */

bool fusefs_plain_name_ok(const char *name)
{
	size_t len = strlen(name);
	const char *base = dbname_base(name);
	if (len == 0 || len >= MOUNT_NAME_MAX || !base[0] || strcmp(base, ".") == 0 ||
	    strcmp(base, "..") == 0)
		return false;
	/* .primary and .lag exist at the root only */
	return base != name || (strcmp(name, ".primary") != 0 && strcmp(name, ".lag") != 0);
}

int fusefs_plain_path(struct fusefs *fs, const char *name, char *buf, size_t n)
{
	return fs_path(buf, n, "%s/files/%s", store_data_dir(fs->store), name);
}

/* The entry called name (fs->mu held). */
static struct pfile *pfile_get(struct fusefs *fs, const char *name)
{
	for (struct pfile *p = fs->pfiles; p; p = p->next)
		if (strcmp(p->name, name) == 0)
			return p;
	return NULL;
}

/* The inode of name, listed if new; 0 when out of memory. */
static fuse_ino_t pfile_add(struct fusefs *fs, const char *name)
{
	fuse_ino_t ino = 0;
	pthread_mutex_lock(&fs->mu);
	struct pfile *p = pfile_get(fs, name);
	if (!p && (p = calloc(1, sizeof(*p)))) {
		snprintf(p->name, sizeof(p->name), "%s", name);
		p->stagefd = -1;
		p->ino = INO_FILE_BASE + fs->pfile_next++;
		p->next = fs->pfiles;
		fs->pfiles = p;
	}
	if (p)
		ino = p->ino;
	pthread_mutex_unlock(&fs->mu);
	return ino;
}

static void pfile_remove(struct fusefs *fs, const char *name)
{
	pthread_mutex_lock(&fs->mu);
	for (struct pfile **pp = &fs->pfiles; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->name, name) == 0) {
			struct pfile *p = *pp;
			*pp = p->next;
			if (p->stagefd >= 0)
				close(p->stagefd);
			free(p);
			break;
		}
	pthread_mutex_unlock(&fs->mu);
}

/*
 * The name became a database (an install from a create or a rename): the
 * kernel may still map the name to this inode (RENAME moves the source's
 * dentry to the target), so the inode answers ESTALE from now on and the
 * kernel looks the name up again. The entry is kept, nameless.
 */
static void pfile_retire(struct fusefs *fs, const char *name)
{
	pthread_mutex_lock(&fs->mu);
	struct pfile *p = pfile_get(fs, name);
	if (p) {
		p->stale = true;
		p->name[0] = '\0';
		if (p->stagefd >= 0)
			close(p->stagefd);
		p->stagefd = -1;
	}
	pthread_mutex_unlock(&fs->mu);
}

void fusefs_plain_release_all(struct fusefs *fs)
{
	while (fs->pfiles) {
		struct pfile *p = fs->pfiles;
		fs->pfiles = p->next;
		if (p->stagefd >= 0)
			close(p->stagefd);
		free(p);
	}
}

fuse_ino_t fusefs_plain_find(struct fusefs *fs, const char *name, struct stat *st)
{
	char path[4096];
	if (!fusefs_plain_name_ok(name))
		return 0;
	pthread_mutex_lock(&fs->mu);
	struct pfile *p = pfile_get(fs, name);
	if (p && p->stagefd >= 0 && fstat(p->stagefd, st) == 0) {
		fuse_ino_t ino = p->ino;
		pthread_mutex_unlock(&fs->mu);
		st->st_ino = ino;
		return ino;
	}
	pthread_mutex_unlock(&fs->mu);
	if (fusefs_plain_path(fs, name, path, sizeof(path)) < 0 || stat(path, st) < 0 ||
	    !S_ISREG(st->st_mode))
		return 0;
	fuse_ino_t ino = pfile_add(fs, name);
	st->st_ino = ino;
	return ino;
}

int fusefs_plain_resolve(struct fusefs *fs, fuse_ino_t ino, struct pfile *copy)
{
	int r = -ENOENT;
	pthread_mutex_lock(&fs->mu);
	for (struct pfile *p = fs->pfiles; p; p = p->next)
		if (p->ino == ino) {
			*copy = *p;
			r = p->stale ? -ESTALE : 0;
			break;
		}
	pthread_mutex_unlock(&fs->mu);
	return r;
}

int fusefs_plain_attr(struct fusefs *fs, fuse_ino_t ino, struct stat *st)
{
	struct pfile p;
	char path[4096];
	int r = -ENOENT;
	pthread_mutex_lock(&fs->mu);
	for (struct pfile *q = fs->pfiles; q; q = q->next)
		if (q->ino == ino) {
			p = *q;
			r = q->stale	      ? -ESTALE
			    : q->stagefd >= 0 ? (fstat(q->stagefd, st) < 0 ? -errno : 1)
					      : 0;
			break;
		}
	pthread_mutex_unlock(&fs->mu);
	if (r == 0) {
		r = fusefs_plain_path(fs, p.name, path, sizeof(path));
		if (r == 0 && stat(path, st) < 0)
			r = -errno;
	}
	if (r >= 0) {
		st->st_ino = ino;
		r = 0;
	}
	return r;
}

int fusefs_plain_stage_dup(struct fusefs *fs, fuse_ino_t ino)
{
	int r = -ENOENT;
	pthread_mutex_lock(&fs->mu);
	for (struct pfile *q = fs->pfiles; q; q = q->next)
		if (q->ino == ino && q->stagefd >= 0) {
			r = fcntl(q->stagefd, F_DUPFD_CLOEXEC, 0);
			if (r < 0)
				r = -errno;
			break;
		}
	pthread_mutex_unlock(&fs->mu);
	return r;
}

int fusefs_plain_unlink(struct fusefs *fs, const char *name)
{
	char path[4096];
	if (!fusefs_plain_name_ok(name))
		return -ENOENT;
	int r = fusefs_plain_path(fs, name, path, sizeof(path));
	if (r == 0 && unlink(path) < 0)
		r = -errno;
	if (r == 0)
		pfile_remove(fs, name);
	return r;
}

/* ------------------------------------------------------------- staging */

bool fusefs_whole_flags(int flags)
{
	return (flags & O_ACCMODE) == O_WRONLY || (flags & (O_TRUNC | O_EXCL));
}

/* An unnamed file in <data-dir>/files/ (which is created on first use). */
static int stage_tmpfile(struct fusefs *fs, int *ret_fd)
{
	char dir[4096];
	int r = fs_path(dir, sizeof(dir), "%s/files", store_data_dir(fs->store));
	if (r == 0)
		r = fs_mkdir_p(dir, 0755);
	if (r < 0)
		return r;
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	*ret_fd = fd;
	return 0;
}

int fusefs_stage_open(struct fusefs *fs, struct fuse_file_info *fi, const char *name, struct db *db,
		      bool trunc, fuse_ino_t *ret_ino, struct stat *st)
{
	int fd = -1, dupfd = -1;
	fuse_ino_t ino;
	int r = stage_tmpfile(fs, &fd);
	if (r < 0)
		goto out;
	if (db && !trunc && db_exists(db)) {
		struct db_pos pos;
		r = db_export(db, fd, &pos); /* a consistent copy to start from */
		if (r == -ENOENT)
			r = 0;
		if (r < 0)
			goto out;
	}
	if (db) {
		ino = fusefs_db_ino(db, DB_FILE_DB);
	} else {
		dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		if (dupfd < 0) {
			r = -errno;
			goto out;
		}
		ino = pfile_add(fs, name);
		pthread_mutex_lock(&fs->mu);
		struct pfile *p = pfile_get(fs, name);
		if (!p)
			r = -ENOMEM;
		else if (p->stagefd >= 0)
			r = -EBUSY; /* another process is creating the same name */
		else {
			p->stagefd = dupfd;
			dupfd = -1;
		}
		pthread_mutex_unlock(&fs->mu);
		if (r < 0)
			goto out;
	}
	if (fstat(fd, st) < 0) {
		r = -errno;
		goto out;
	}
	st->st_ino = ino;
	r = fusefs_handle_new(fs, fi, fd, db, KIND_STAGE);
	if (r < 0)
		goto out;
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	fd = -1;
	h->dirty = trunc || !db;
	h->ino = ino;
	snprintf(h->name, sizeof(h->name), "%s", name);
	*ret_ino = ino;
out:
	if (fd >= 0)
		close(fd);
	if (dupfd >= 0)
		close(dupfd);
	return r;
}

/* ------------------------------------------------------------- install */

/* Entry invalidations of a database appearing, from inside a rename: queued. */
static void queue_entries(void *ctx, struct db *db)
{
	static const char *const sfx[] = {"", "-journal", "-wal", "-shm", "-pos"};
	for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++)
		fusefs_queue_inval(ctx, db_name(db), sfx[i]);
}

/*
 * Make an install durable before close(2) returns: the database file, and
 * the ltx/ directory that holds the new LTX file under its final name (the
 * apply path leaves both to the next fsync, as a replica may).
 */
static int sync_installed(struct db *db, const char **why)
{
	char path[4096], dir[4096];
	int r = db_file_path(db, DB_FILE_DB, path, sizeof(path));
	int fd = r == 0 ? open(path, O_RDONLY | O_CLOEXEC) : -1;
	if (r == 0 && (fd < 0 || fsync(fd) < 0))
		r = -errno;
	if (fd >= 0)
		close(fd);
	char *slash = strrchr(path, '/');
	if (r == 0 && slash) {
		*slash = '\0';
		r = fs_path(dir, sizeof(dir), "%s/ltx", path);
		if (r == 0)
			r = fs_fsync_dir(dir);
		if (r == 0)
			r = fs_fsync_dir(path);
	}
	if (r < 0)
		*why = "installed, but it could not be made durable";
	return r;
}

/*
 * Install the database in srcfd as the new content of database name (created
 * if absent) in one transaction. 0; -EINVAL with *why; -EROFS (fence);
 * another -errno. dir_locked: called inside a rename.
 */
static int install(struct fusefs *fs, const char *name, int srcfd, bool dir_locked,
		   const char **why)
{
	uint32_t ps, npages;
	struct db *db = NULL;
	void *tok = NULL;
	bool locked = false;
	int ltxfd = -1;
	*why = NULL;
	int r = db_install_validate(srcfd, &ps, &npages, why);
	if (r < 0)
		return r;
	pthread_mutex_lock(&fs->install_mu);
	r = store_get_or_create(fs->store, name, &db);
	if (r == -EINVAL) {
		*why = "the name is not a valid database name";
		goto out;
	}
	if (r < 0)
		goto out;
	r = fusefs_install_lock(fs, db, dir_locked, &tok);
	if (r < 0) {
		*why = "cannot take SQLite's locks on the database";
		goto out;
	}
	locked = true;
	r = db_install_build(db, srcfd, &ltxfd, why);
	if (r < 0)
		goto out;
	struct db_apply_hooks hk;
	fusefs_apply_hooks(fs, &hk);
	hk.lock = NULL; /* taken above */
	hk.unlock = NULL;
	if (dir_locked)
		hk.entries = queue_entries;
	r = db_apply_ltx(db, ltxfd, 0, &hk);
	if (r < 0 && !*why)
		*why = r == -ESTALE ? "the database changed while the file was installed"
				    : "the transaction could not be applied";
	if (r == 0)
		r = sync_installed(db, why);
out:
	if (locked)
		fusefs_install_unlock(fs, db, tok, r == 0, ps, npages, dir_locked);
	pthread_mutex_unlock(&fs->install_mu);
	if (ltxfd >= 0)
		close(ltxfd);
	return r;
}

/* A name that may become a database: parses as one and is not hidden. */
static bool db_name_ok(const char *name)
{
	struct fname f;
	return dbname_base(name)[0] != '.' && fusefs_parse_name(name, &f) == 0 &&
	       f.kind == DB_FILE_DB && dbname_valid(name, strlen(name));
}

/* True when the file starts like a SQLite database (its first bytes, up to 16). */
static bool starts_like_sqlite(int fd, off_t *ret_size)
{
	char head[16];
	struct stat st;
	*ret_size = 0;
	if (fstat(fd, &st) < 0 || st.st_size == 0)
		return false;
	*ret_size = st.st_size;
	size_t n = st.st_size < 16 ? (size_t)st.st_size : 16;
	ssize_t got = fs_pread_full(fd, head, n, 0);
	return got == (ssize_t)n && memcmp(head, sqlite_magic, n) == 0;
}

/* Link the staging file in as files/<name> (atomically replacing it). */
static int link_plain(struct fusefs *fs, int fd, const char *name)
{
	char path[4096], tmp[4200], proc[64];
	int r = fusefs_plain_path(fs, name, path, sizeof(path));
	if (r < 0)
		return r;
	snprintf(tmp, sizeof(tmp), "%s/files/.ltxfs-link.%d", store_data_dir(fs->store), fd);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	unlink(tmp);
	if (linkat(AT_FDCWD, proc, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW) < 0 || rename(tmp, path) < 0) {
		r = -errno;
		unlink(tmp);
	}
	return r;
}

int fusefs_stage_flush(struct fusefs *fs, struct handle *h)
{
	const char *why = NULL;
	off_t size = 0;
	int r = 0;
	bool pending = !h->db; /* a create of a new name */
	if (!h->dirty)
		return 0;
	if (!store_accepts_writes(fs->store)) {
		r = -EACCES;
		why = "this node does not accept writes";
		goto out;
	}
	bool sqlite = starts_like_sqlite(h->fd, &size);
	if (pending && size == 0)
		return 0; /* nothing written yet (a dup closed first, as dd does): decided at
			     release */
	struct db *db = h->db ? h->db : store_find(fs->store, h->name);
	bool is_db = db && db_exists(db);
	if (is_db || (sqlite && db_name_ok(h->name))) {
		if (!sqlite) {
			r = -EINVAL;
			why = "it is not a SQLite database and the name is one (remove the "
			      "database first)";
			goto out;
		}
		r = install(fs, h->name, h->fd, false, &why);
		if (r == 0) {
			h->db = store_find(fs->store, h->name);
			log_info("db '%s': installed a whole-file write of %lld bytes", h->name,
				 (long long)size);
		}
	} else {
		r = link_plain(fs, h->fd, h->name);
		if (r < 0)
			why = "cannot store the plain file";
		else
			h->kind = KIND_FILE; /* later writes go to the file itself */
	}
out:
	h->dirty = false;
	if (pending) {
		/* a pending create: the name is now a database, a plain file, or nothing */
		pthread_mutex_lock(&fs->mu);
		struct pfile *p = pfile_get(fs, h->name);
		if (p && p->stagefd >= 0) {
			close(p->stagefd);
			p->stagefd = -1;
		}
		pthread_mutex_unlock(&fs->mu);
		if (r == 0 && h->kind != KIND_FILE) {
			pfile_retire(fs, h->name);
			fusefs_queue_inval(fs, h->name, "");
		} else if (h->kind != KIND_FILE) {
			pfile_remove(fs, h->name);
			fusefs_queue_inval(fs, h->name, "");
		}
	}
	if (r < 0) {
		log_warn("refused the write of '%s' (%lld bytes): %s: %s", h->name, (long long)size,
			 why ? why : "error", strerror(-r));
		if (r != -EACCES && r != -EROFS && r != -EINVAL && r != -ENOSPC)
			r = -EIO;
	}
	return r;
}

void fusefs_stage_release(struct fusefs *fs, struct handle *h)
{
	if (h->kind != KIND_STAGE || h->db)
		return;
	bool pending = false;
	pthread_mutex_lock(&fs->mu);
	struct pfile *p = pfile_get(fs, h->name);
	pending = p && p->stagefd >= 0;
	pthread_mutex_unlock(&fs->mu);
	if (!pending)
		return;
	struct stat st;
	if (h->dirty && fstat(h->fd, &st) == 0 && st.st_size == 0 &&
	    link_plain(fs, h->fd, h->name) == 0) {
		/* created and closed empty (touch, a shell's > with no output): a plain file */
		pthread_mutex_lock(&fs->mu);
		struct pfile *q = pfile_get(fs, h->name);
		if (q && q->stagefd >= 0) {
			close(q->stagefd);
			q->stagefd = -1;
		}
		pthread_mutex_unlock(&fs->mu);
		return;
	}
	pfile_remove(fs, h->name);
	fusefs_queue_inval(fs, h->name, "");
}

int fusefs_plain_to_database(struct fusefs *fs, const char *name)
{
	char path[4096];
	struct stat st;
	struct db *db;
	int fd;
	if (!db_name_ok(name) || fusefs_plain_path(fs, name, path, sizeof(path)) < 0 ||
	    stat(path, &st) < 0 || st.st_size != 0)
		return 1;
	pthread_mutex_lock(&fs->install_mu);
	int r = store_get_or_create(fs->store, name, &db);
	if (r == 0 && db_exists(db))
		r = -EEXIST;
	if (r == 0)
		r = db_open_file(db, DB_FILE_DB, O_RDWR | O_CREAT, st.st_mode & 07777, &fd);
	if (r == 0) {
		close(fd);
		unlink(path);
		pfile_retire(fs, name);
		fusefs_queue_inval(fs, name, "");
		fusefs_queue_inval(fs, name, "-pos");
		r = -ESTALE;
	}
	pthread_mutex_unlock(&fs->install_mu);
	return r == -EINVAL || r == -EEXIST ? 1 : r;
}

/* -------------------------------------------------------------- rename */

enum what { W_NONE, W_DB, W_COMPANION, W_PLAIN };

static enum what classify(struct fusefs *fs, const char *name, struct db **ret_db)
{
	struct fname f;
	struct stat st;
	*ret_db = NULL;
	if (fusefs_parse_name(name, &f) == 0) {
		struct db *db = store_find(fs->store, f.db);
		if (db && db_exists(db)) {
			*ret_db = db;
			return f.kind == DB_FILE_DB ? W_DB : W_COMPANION;
		}
	}
	return fusefs_plain_find(fs, name, &st) ? W_PLAIN : W_NONE;
}

/*
 * Database from renamed to to (inside a rename): a consistent copy installed
 * under the new name, then a drop of the old one; two transactions, each
 * replicated. 0, or -errno with *why.
 */
static int rename_database(struct fusefs *fs, struct db *sdb, const char *from, const char *to,
			   const char **why)
{
	int fd = -1;
	if (!db_name_ok(to)) {
		*why = "a database can only be renamed to a database name";
		return -EINVAL;
	}
	int r = stage_tmpfile(fs, &fd);
	if (r == 0) {
		struct db_pos pos;
		r = db_export(sdb, fd, &pos);
	}
	if (r < 0)
		*why = "cannot copy the database";
	if (r == 0)
		r = install(fs, to, fd, true, why);
	if (fd >= 0)
		close(fd);
	if (r < 0)
		return r;
	r = db_unlink(sdb, DB_FILE_DB);
	if (r < 0) {
		*why = "installed under the new name, but the old one could not be dropped";
		return r;
	}
	fusefs_pos_hide(fs, sdb, true); /* a rename leaves nothing under the old name */
	static const char *const sfx[] = {"", "-journal", "-wal", "-shm", "-pos"};
	for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
		fusefs_queue_inval(fs, from, sfx[i]);
		fusefs_queue_inval(fs, to, sfx[i]);
	}
	return 0;
}

int fusefs_rename_tree(struct fusefs *fs, const char *from, const char *to)
{
	const char *why = NULL;
	size_t fl = strlen(from), n = store_count(fs->store);
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		struct db *db = store_at(fs->store, i);
		char oldn[DBNAME_MAX + 1], newn[MOUNT_NAME_MAX];
		snprintf(oldn, sizeof(oldn), "%s", db_name(db));
		if (strncmp(oldn, from, fl) != 0 || oldn[fl] != '/' || !db_exists(db))
			continue;
		if (snprintf(newn, sizeof(newn), "%s%s", to, oldn + fl) >= (int)sizeof(newn) ||
		    !dbname_valid(newn, strlen(newn))) {
			r = -ENAMETOOLONG;
			why = "the new name is too long for a database";
		} else {
			r = rename_database(fs, db, oldn, newn, &why);
		}
		if (r < 0)
			log_error("rename of directory '%s' to '%s': database '%s' stays: %s: %s",
				  from, to, oldn, why ? why : "error", strerror(-r));
		else
			log_info("db '%s': renamed to '%s'", oldn, newn);
	}
	return r;
}

int fusefs_rename(struct fusefs *fs, const char *from, const char *to, unsigned flags)
{
	struct db *sdb, *ddb;
	const char *why = NULL;
	char spath[4096], dpath[4096];
	int fd = -1, r;
	if (flags & RENAME_EXCHANGE)
		return -EINVAL;
	if (fusefs_is_dir(fs, from)) {
		if ((flags & RENAME_NOREPLACE) && (fusefs_is_dir(fs, to) || classify(fs, to, &ddb)))
			return -EEXIST;
		if (!store_accepts_writes(fs->store))
			return -EACCES;
		return fusefs_dir_rename(fs, from, to);
	}
	if (fusefs_is_dir(fs, to))
		return -EISDIR;
	enum what s = classify(fs, from, &sdb), d = classify(fs, to, &ddb);
	if (s == W_NONE)
		return -ENOENT;
	if ((flags & RENAME_NOREPLACE) && d != W_NONE)
		return -EEXIST;
	if (strcmp(from, to) == 0)
		return 0;
	if (s == W_COMPANION || d == W_COMPANION) {
		log_warn("rename '%s' to '%s' refused: a database's -journal, -wal, -shm or "
			 "-pos file is never renamed",
			 from, to);
		return -EPERM;
	}
	if (!store_accepts_writes(fs->store))
		return -EACCES;
	if (!fusefs_plain_name_ok(to))
		return -EINVAL;

	if (s == W_PLAIN) {
		r = fusefs_plain_path(fs, from, spath, sizeof(spath));
		if (r < 0)
			return r;
		fd = open(spath, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		off_t size;
		bool sqlite = starts_like_sqlite(fd, &size);
		if (d == W_DB || (sqlite && db_name_ok(to))) {
			if (!sqlite) {
				r = -EINVAL;
				why = "it is not a SQLite database and the target is one";
				goto out;
			}
			r = install(fs, to, fd, true, &why);
			if (r == 0) {
				unlink(spath);
				pfile_retire(fs, from);
				if (d == W_PLAIN)
					fusefs_plain_unlink(fs, to);
				/* the kernel moves the old inode to the new name */
				fusefs_queue_inval(fs, to, "");
				fusefs_queue_inval(fs, to, "-pos");
			}
			goto out;
		}
		r = fusefs_plain_path(fs, to, dpath, sizeof(dpath));
		if (r == 0 && rename(spath, dpath) < 0)
			r = -errno;
		if (r == 0) {
			pfile_remove(fs, to);
			pthread_mutex_lock(&fs->mu);
			struct pfile *p = pfile_get(fs, from);
			if (p)
				snprintf(p->name, sizeof(p->name), "%s", to);
			pthread_mutex_unlock(&fs->mu);
		}
		goto out;
	}

	/* A database: a consistent copy installed under the new name, then a drop. */
	if (d == W_PLAIN)
		fusefs_plain_unlink(fs, to);
	r = rename_database(fs, sdb, from, to, &why);
	if (r < 0)
		goto out;
	log_info("db '%s': renamed to '%s'", from, to);
out:
	if (fd >= 0)
		close(fd);
	if (r < 0) {
		log_warn("rename '%s' to '%s' refused: %s: %s", from, to, why ? why : "error",
			 strerror(-r));
		if (r != -EACCES && r != -EROFS && r != -EINVAL && r != -ENOSPC && r != -ENOENT)
			r = -EIO;
	}
	return r;
}
