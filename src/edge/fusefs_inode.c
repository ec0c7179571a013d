/*
 * fusefs_inode.c - names and inodes: what each name in the mount is, which
 * inode number and generation the kernel knows it by, and its attributes.
 *
 * NAMES. The namespace is flat. "<db>" is a database; "<db>-journal",
 * "<db>-wal", "<db>-shm" are its SQLite companions; "<db>-pos" is a virtual
 * 34-byte file with the position; "<db>-mj<HEX>" is a SQLite super-journal
 * (multi-database commits over ATTACH), passed through to dbs/<db>/mj<HEX>.
 * ".primary" and ".lag" are virtual files about the replication stream.
 * Names starting with '.' (other than those two) and "<db>-lock" (LiteFS's
 * HALT lock) are never databases. A name that is none of these may be a
 * plain file, kept in <data-dir>/files/ (fusefs_whole.c). Directories are
 * refused with EPERM (fusefs_ops.c).
 *
 * INODES. 1 is the root, 2 .primary, 3 .lag. Database i (its stable index
 * in the store) owns inodes 16 + 8i + kind (kind is enum db_file), so an
 * inode number never needs a table lookup and stays valid for the life of
 * the process; each (re)creation of a journal, WAL or SHM bumps a generation
 * so the kernel never confuses the new file with the old one. Super-journals
 * get numbers from 2^40 upward, in a list, plain files from 2^41 upward, in
 * another (fusefs_whole.c). FORGET needs no bookkeeping.
 *
 * ATTRIBUTES come from the backing file with the inode number replaced; the
 * root is 0777 on a primary and 0555 on a replica. The kernel caches entries
 * and attributes for CACHE_TIMEOUT (fusefs_fill_entry), except those of
 * .primary and .lag, which come and go and change size.
 *
 * THREADS AND LOCKS. Every function here runs on a FUSE worker, any number
 * at once. fs->mu guards the generation table and the super-journal list
 * and is held for a few instructions, never across I/O; the database table
 * is the store's (store->mu, inside store_find/store_at).
 */
#include "fusefs_int.h"

#include "ltxfs/dbname.h"
#include "ltxfs/store.h"

#include "ltxfs/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --------------------------------------------------------------- names */

static bool is_hex(const char *s)
{
	if (!*s || strlen(s) > 16)
		return false;
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'A' && *s <= 'F') ||
		      (*s >= 'a' && *s <= 'f')))
			return false;
	return true;
}

/* 0, or -ENOENT for names that can never exist, -ENAMETOOLONG. */
int fusefs_parse_name(const char *name, struct fname *f)
{
	static const struct {
		const char *suffix;
		int kind;
	} sfx[] = {{"-journal", DB_FILE_JOURNAL},
		   {"-wal", DB_FILE_WAL},
		   {"-shm", DB_FILE_SHM},
		   {"-pos", DB_FILE_POS}};
	size_t len = strlen(name);
	memset(f, 0, sizeof(*f));
	/* a hidden name is never a database; nor a path too long for one */
	if (len == 0 || dbname_base(name)[0] == '.' || len >= sizeof(f->db))
		return -ENOENT;
	for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
		size_t sl = strlen(sfx[i].suffix);
		if (len > sl && strcmp(name + len - sl, sfx[i].suffix) == 0) {
			memcpy(f->db, name, len - sl);
			f->kind = sfx[i].kind;
			return 0;
		}
	}
	const char *mj = strrchr(name, '-');
	if (mj && mj > name && strncmp(mj, "-mj", 3) == 0 && is_hex(mj + 3)) {
		memcpy(f->db, name, (size_t)(mj - name));
		snprintf(f->hex, sizeof(f->hex), "%s", mj + 3);
		f->kind = KIND_MJ;
		return 0;
	}
	if (len > 5 && strcmp(name + len - 5, "-lock") == 0)
		return -ENOENT; /* LiteFS's HALT lock file: not supported */
	memcpy(f->db, name, len);
	f->kind = DB_FILE_DB;
	return 0;
}

fuse_ino_t fusefs_db_ino(struct db *db, int kind)
{
	return INO_DB_BASE + (fuse_ino_t)db_index(db) * 8 + (fuse_ino_t)kind;
}

/* Room for database idx in the per-database tables (fs->mu held). */
static void tables_grow(struct fusefs *fs, size_t idx)
{
	if (idx < fs->ngen)
		return;
	size_t n = idx + 16;
	bool *h = realloc(fs->pos_hidden, n * sizeof(*h));
	if (h) {
		memset(h + fs->ngen, 0, (n - fs->ngen) * sizeof(*h));
		fs->pos_hidden = h;
	}
	void *p = h ? realloc(fs->gen, n * sizeof(*fs->gen)) : NULL;
	if (p) {
		fs->gen = p;
		memset(fs->gen + fs->ngen, 0, (n - fs->ngen) * sizeof(*fs->gen));
		fs->ngen = n;
	}
}

bool fusefs_pos_visible(struct fusefs *fs, struct db *db)
{
	if (db_exists(db))
		return true;
	struct db_pos pos;
	db_get_pos(db, &pos);
	if (pos.txid == 0)
		return false;
	size_t idx = db_index(db);
	pthread_mutex_lock(&fs->mu);
	bool hidden = idx < fs->ngen && fs->pos_hidden[idx];
	pthread_mutex_unlock(&fs->mu);
	return !hidden;
}

void fusefs_pos_hide(struct fusefs *fs, struct db *db, bool hide)
{
	size_t idx = db_index(db);
	pthread_mutex_lock(&fs->mu);
	tables_grow(fs, idx);
	if (idx < fs->ngen)
		fs->pos_hidden[idx] = hide;
	pthread_mutex_unlock(&fs->mu);
}

uint64_t fusefs_gen_get(struct fusefs *fs, struct db *db, int kind, bool bump)
{
	size_t idx = db_index(db);
	uint64_t g = 0;
	pthread_mutex_lock(&fs->mu);
	tables_grow(fs, idx);
	if (idx < fs->ngen) {
		if (bump)
			fs->gen[idx][kind]++;
		g = fs->gen[idx][kind];
	}
	pthread_mutex_unlock(&fs->mu);
	return g;
}

/* Resolve an inode to (db, kind); -ENOENT if unknown. */
int fusefs_ino_resolve(struct fusefs *fs, fuse_ino_t ino, struct db **db, int *kind,
		       struct mj *mjcopy)
{
	if (ino >= INO_MJ_BASE) {
		int r = -ENOENT;
		pthread_mutex_lock(&fs->mu);
		for (struct mj *m = fs->mjs; m; m = m->next)
			if (m->ino == ino) {
				*mjcopy = *m;
				r = 0;
				break;
			}
		pthread_mutex_unlock(&fs->mu);
		*kind = KIND_MJ;
		*db = NULL;
		return r;
	}
	if (ino < INO_DB_BASE)
		return -ENOENT;
	size_t idx = (ino - INO_DB_BASE) / 8;
	*kind = (int)((ino - INO_DB_BASE) % 8);
	if (*kind >= DB_FILE_N)
		return -ENOENT;
	*db = store_at(fs->store, idx);
	return *db ? 0 : -ENOENT;
}

int fusefs_mj_path(struct fusefs *fs, const struct mj *m, char *buf, size_t n)
{
	return store_super_journal_path(fs->store, m->db, m->hex, buf, n);
}

fuse_ino_t fusefs_mj_find(struct fusefs *fs, const char *name)
{
	fuse_ino_t ino = 0;
	pthread_mutex_lock(&fs->mu);
	for (struct mj *m = fs->mjs; m; m = m->next)
		if (strcmp(m->name, name) == 0)
			ino = m->ino;
	pthread_mutex_unlock(&fs->mu);
	return ino;
}

int fusefs_mj_add(struct fusefs *fs, const char *name, const struct fname *f, fuse_ino_t *ret)
{
	struct mj *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	snprintf(m->name, sizeof(m->name), "%s", name);
	snprintf(m->db, sizeof(m->db), "%s", f->db);
	snprintf(m->hex, sizeof(m->hex), "%s", f->hex);
	pthread_mutex_lock(&fs->mu);
	m->ino = INO_MJ_BASE + fs->mj_next++;
	m->next = fs->mjs;
	fs->mjs = m;
	pthread_mutex_unlock(&fs->mu);
	*ret = m->ino;
	return 0;
}

void fusefs_mj_remove(struct fusefs *fs, const char *name)
{
	pthread_mutex_lock(&fs->mu);
	for (struct mj **pp = &fs->mjs; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->name, name) == 0) {
			struct mj *m = *pp;
			*pp = m->next;
			free(m);
			break;
		}
	pthread_mutex_unlock(&fs->mu);
}

/* ------------------------------------------------------ virtual files */

/* Content of .primary (only on a connected replica) or .lag. */
int fusefs_virt_content(struct fusefs *fs, fuse_ino_t ino, char *buf, size_t n)
{
	if (ino == INO_PRIMARY) {
		char host[256];
		if (store_is_primary(fs->store) ||
		    store_upstream(fs->store, host, sizeof(host)) < 0)
			return -ENOENT;
		return snprintf(buf, n, "%s\n", host);
	}
	return snprintf(buf, n, "%+010d\n", (int)store_lag_ms(fs->store));
}

int fusefs_virt_attr(struct fusefs *fs, fuse_ino_t ino, struct stat *st)
{
	char buf[300];
	int len = fusefs_virt_content(fs, ino, buf, sizeof(buf));
	if (len < 0)
		return len;
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = len;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_blksize = 4096;
	return 0;
}

/* --------------------------------------------------------------- attrs */

void fusefs_pos_attr(struct db *db, struct stat *st)
{
	struct db_pos pos;
	db_get_visible_pos(db, &pos); /* what a read of the file shows */
	memset(st, 0, sizeof(*st));
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = 34;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_mtim.tv_sec = pos.timestamp / 1000;
	st->st_mtim.tv_nsec = (pos.timestamp % 1000) * 1000000;
	st->st_ctim = st->st_mtim;
	st->st_atim = st->st_mtim;
	st->st_blksize = 4096;
}

/*
 * A file unlinked (a database dropped) while a process has it open: its
 * attributes are those of the open backing file, with no links, as on a
 * local file system (SQLite's fstat must keep working). -ENOENT otherwise.
 */
static int stat_open_handle(struct fusefs *fs, struct db *db, int kind, struct stat *st)
{
	int r = -ENOENT;
	pthread_mutex_lock(&fs->mu);
	for (struct handle *h = fs->handles.next; h != &fs->handles; h = h->next)
		if (h->db == db && h->kind == kind && h->fd >= 0) {
			r = fstat(h->fd, st) < 0 ? -errno : 0;
			break;
		}
	pthread_mutex_unlock(&fs->mu);
	return r;
}

int fusefs_get_attr(struct fusefs *fs, fuse_ino_t ino, struct stat *st)
{
	struct db *db;
	int kind;
	struct mj m;
	if (ino == INO_ROOT) {
		memset(st, 0, sizeof(*st));
		st->st_ino = INO_ROOT;
		st->st_mode = S_IFDIR | (store_is_primary(fs->store) ? 0777 : 0555);
		st->st_nlink = 2;
		st->st_uid = getuid();
		st->st_gid = getgid();
		return 0;
	}
	if (ino == INO_PRIMARY || ino == INO_LAG)
		return fusefs_virt_attr(fs, ino, st);
	if (ino >= INO_DIR_BASE)
		return fusefs_dir_attr(fs, ino, st);
	if (ino >= INO_FILE_BASE)
		return fusefs_plain_attr(fs, ino, st);
	int r = fusefs_ino_resolve(fs, ino, &db, &kind, &m);
	if (r < 0)
		return r;
	if (kind == KIND_MJ) {
		char path[4096];
		r = fusefs_mj_path(fs, &m, path, sizeof(path));
		if (r == 0 && stat(path, st) < 0)
			r = -errno;
	} else if (kind == DB_FILE_POS) {
		fusefs_pos_attr(db, st);
	} else {
		r = db_stat_file(db, (enum db_file)kind, st);
		if (r == -ENOENT)
			r = stat_open_handle(fs, db, kind, st);
		/*
		 * The kernel reached an inode whose file is gone through a dentry
		 * it still holds: a rename moved the source's dentry onto the
		 * target's name, or the daemon dropped the file (a replica's apply,
		 * a renamed database). ESTALE makes a path lookup start again with
		 * a fresh lookup; ENOENT would fail it (SQLite's stat of its
		 * database path would report the database moved, SQLITE_READONLY).
		 */
		if (r == -ENOENT)
			r = -ESTALE;
	}
	if (r == 0)
		st->st_ino = ino;
	return r;
}

void fusefs_fill_entry(struct fuse_entry_param *e, fuse_ino_t ino, uint64_t gen,
		       const struct stat *st)
{
	memset(e, 0, sizeof(*e));
	e->ino = ino;
	e->generation = gen;
	e->attr = *st;
	e->attr.st_ino = ino;
	e->attr_timeout = CACHE_TIMEOUT;
	e->entry_timeout = CACHE_TIMEOUT;
}

/* ------------------------------------------------------------ listing */

void fusefs_inodes_release(struct fusefs *fs)
{
	while (fs->mjs) {
		struct mj *m = fs->mjs;
		fs->mjs = m->next;
		free(m);
	}
	free(fs->gen);
	fs->gen = NULL;
	free(fs->pos_hidden);
	fs->pos_hidden = NULL;
	fs->ngen = 0;
}
