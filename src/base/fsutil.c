/*
 * fsutil.c - full-length I/O loops, mkdir -p, atomic replace (base layer).
 *
 * CONTRACT. Every function returns 0 (or a byte count) or -errno, and none
 * logs: the caller knows what the file is and says so once. The I/O loops
 * retry EINTR and short transfers until n bytes are moved; the read loops
 * stop early only at end of file (a short count then means EOF, never an
 * error), the write loops never stop early.
 *
 * DURABILITY. fs_write_atomic is the one "replace a small file" recipe:
 * write <path>.tmp, fsync it, rename it over path, fsync the directory. A
 * crash leaves either the old file or the new one, plus perhaps a stale
 * .tmp that the next call truncates. fs_fsync_dir is the directory half on
 * its own, for callers that create or rename files themselves.
 *
 * THREADS. No state of its own: any thread may call any function. Two
 * threads replacing the same path at once would share its .tmp name; no
 * caller does (each such file has one writer).
 */
#include "ltxfs/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

ssize_t fs_pread_full(int fd, void *buf, size_t n, off_t off)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r = pread(fd, (char *)buf + done, n - done, off + (off_t)done);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

int fs_pwrite_full(int fd, const void *buf, size_t n, off_t off)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r = pwrite(fd, (const char *)buf + done, n - done, off + (off_t)done);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		done += (size_t)r;
	}
	return 0;
}

int fs_write_full(int fd, const void *buf, size_t n)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r = write(fd, (const char *)buf + done, n - done);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		done += (size_t)r;
	}
	return 0;
}

ssize_t fs_read_full(int fd, void *buf, size_t n)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r = read(fd, (char *)buf + done, n - done);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

int fs_mkdir_p(const char *path, mode_t mode)
{
	char tmp[4096];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof(tmp))
		return -ENAMETOOLONG;
	memcpy(tmp, path, len + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int fs_fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

int fs_unlink_if_exists(const char *path)
{
	if (unlink(path) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int fs_write_atomic(const char *path, const void *buf, size_t n)
{
	char tmp[4096], dir[4096];
	int r = fs_path(tmp, sizeof(tmp), "%s.tmp", path);
	if (r < 0)
		return r;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	r = fs_write_full(fd, buf, n);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	close(fd);
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		return r;
	}
	snprintf(dir, sizeof(dir), "%s", path);
	return fs_fsync_dir(dirname(dir));
}

int fs_read_file(const char *path, size_t max, char **ret, size_t *ret_len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	int r = 0;
	char *buf = NULL;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto out;
	}
	if ((uint64_t)st.st_size > max) {
		r = -EFBIG;
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		r = -ENOMEM;
		goto out;
	}
	ssize_t got = fs_read_full(fd, buf, (size_t)st.st_size);
	if (got < 0) {
		r = (int)got;
		goto out;
	}
	buf[got] = '\0';
	*ret = buf;
	if (ret_len)
		*ret_len = (size_t)got;
	buf = NULL;
out:
	free(buf);
	close(fd);
	return r;
}

int fs_path(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(buf, n, fmt, ap);
	va_end(ap);
	if (r < 0 || (size_t)r >= n)
		return -ENAMETOOLONG;
	return 0;
}
