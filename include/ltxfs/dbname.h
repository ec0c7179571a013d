/*
 * dbname.h - database names, and where a name lives in the data directory
 * (format layer).
 *
 * A database's name is its path in the mount, relative to the mount's root:
 * "app.db" at the root, "tenants/42/app.db" in a subdirectory. The same
 * string names the database everywhere: the store, the HTTP API, the stream
 * (STREAM_NAME_MAX bytes at most) and its directory in the data directory.
 *
 * A VALID name is 1 to DBNAME_MAX bytes of components separated by single
 * '/': no empty component (no leading, trailing or doubled '/'), no "." or
 * "..", no NUL. So a valid name never escapes the directory it is joined to.
 * A root name may not contain "%2F" (it would read back as a nested name).
 *
 * THE DIRECTORY of a database is dbs/<dir>/ where <dir> is one path
 * component: a root name is used as it is (LiteFS 0.5's layout), a nested
 * name has '%' written as "%25" and '/' as "%2F" ("tenants%2F42%2Fapp.db").
 * dbname_from_dir reverses it: a directory name holding "%2F" is nested.
 *
 * Pure functions, no state, thread-safe.
 */
#ifndef LTXFS_DBNAME_H
#define LTXFS_DBNAME_H

#include <stdbool.h>
#include <stddef.h>

#define DBNAME_MAX 255

/* True when name (len bytes, not necessarily NUL-terminated) is valid. */
bool dbname_valid(const char *name, size_t len);

/* True when the valid name lies in a subdirectory (holds a '/'). */
bool dbname_nested(const char *name);

/*
 * The data-directory component for the valid name into buf (n bytes).
 * 0; -EINVAL (an invalid name); -ENAMETOOLONG.
 */
int dbname_to_dir(const char *name, char *buf, size_t n);

/*
 * The name whose directory component is dir, into buf (n bytes). 0;
 * -EINVAL when dir is not a directory dbname_to_dir writes (a bad escape,
 * an invalid name); -ENAMETOOLONG.
 */
int dbname_from_dir(const char *dir, char *buf, size_t n);

/* The part of the valid name after its last '/' (the name itself at the root). */
const char *dbname_base(const char *name);

#endif
