/*
 * dbname.c - database names and their directories in the data directory.
 *
 * FORMAT. A name is the database's path in the mount ("app.db",
 * "tenants/42/app.db"); include/ltxfs/dbname.h states the rules. Names reach
 * us from the kernel (one component at a time, joined by the FUSE layer),
 * from peers (the stream, HTTP query strings) and from the data directory at
 * start; dbname_valid is the one check of all of them, so no name can climb
 * out of the directory it is joined to.
 *
 * The data directory keeps one directory per database directly under dbs/.
 * Root names are stored as they are, as LiteFS 0.5 stores them, so a LiteFS
 * data directory opens unchanged. Nested names are escaped into one component:
 * '%' -> "%25", '/' -> "%2F". Every nested name holds a '/', so its directory
 * holds "%2F"; a root name that holds "%2F" is refused, which keeps the map
 * one to one. Pure code; the unit test checks round trips and refusals.
 */
#include "ltxfs/dbname.h"

#include <errno.h>
#include <string.h>

bool dbname_valid(const char *name, size_t len)
{
	if (len == 0 || len > DBNAME_MAX)
		return false;
	size_t start = 0;
	bool nested = false;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && name[i] == '\0')
			return false;
		if (i < len && name[i] != '/')
			continue;
		size_t cl = i - start;
		if (cl == 0 || (cl == 1 && name[start] == '.') ||
		    (cl == 2 && name[start] == '.' && name[start + 1] == '.'))
			return false;
		if (i < len)
			nested = true;
		start = i + 1;
	}
	if (!nested)
		for (size_t i = 0; i + 3 <= len; i++)
			if (name[i] == '%' && name[i + 1] == '2' && name[i + 2] == 'F')
				return false;
	return true;
}

bool dbname_nested(const char *name)
{
	return strchr(name, '/') != NULL;
}

int dbname_to_dir(const char *name, char *buf, size_t n)
{
	size_t len = strlen(name), w = 0;
	if (!dbname_valid(name, len))
		return -EINVAL;
	bool nested = dbname_nested(name);
	for (size_t i = 0; i < len; i++) {
		const char *put = NULL;
		char one[2] = {name[i], '\0'};
		if (nested && name[i] == '%')
			put = "%25";
		else if (name[i] == '/')
			put = "%2F";
		else
			put = one;
		size_t pl = strlen(put);
		if (w + pl >= n)
			return -ENAMETOOLONG;
		memcpy(buf + w, put, pl);
		w += pl;
	}
	if (w >= n)
		return -ENAMETOOLONG;
	buf[w] = '\0';
	return 0;
}

int dbname_from_dir(const char *dir, char *buf, size_t n)
{
	size_t len = strlen(dir), w = 0;
	bool nested = strstr(dir, "%2F") != NULL;
	for (size_t i = 0; i < len; i++) {
		char c = dir[i];
		if (nested && c == '%') {
			if (i + 2 < len && dir[i + 1] == '2' && dir[i + 2] == '5')
				c = '%';
			else if (i + 2 < len && dir[i + 1] == '2' && dir[i + 2] == 'F')
				c = '/';
			else
				return -EINVAL;
			i += 2;
		} else if (c == '/') {
			return -EINVAL;
		}
		if (w + 1 >= n)
			return -ENAMETOOLONG;
		buf[w++] = c;
	}
	if (w >= n)
		return -ENAMETOOLONG;
	buf[w] = '\0';
	if (!dbname_valid(buf, w) || (nested && !dbname_nested(buf)))
		return -EINVAL;
	return 0;
}

const char *dbname_base(const char *name)
{
	const char *s = strrchr(name, '/');
	return s ? s + 1 : name;
}
