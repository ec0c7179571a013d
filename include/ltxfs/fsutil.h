/*
 * fsutil.h - small, careful file-system helpers (base layer).
 *
 * Every function returns 0 (or a byte count) on success and -errno on failure;
 * none logs. Short reads/writes and EINTR are retried.
 */
#ifndef LTXFS_FSUTIL_H
#define LTXFS_FSUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* pread until n bytes or EOF. Returns bytes read (< n only at EOF) or -errno. */
ssize_t fs_pread_full(int fd, void *buf, size_t n, off_t off);
/* pwrite all n bytes. Returns 0 or -errno. */
int fs_pwrite_full(int fd, const void *buf, size_t n, off_t off);
/* write all n bytes at the current offset. Returns 0 or -errno. */
int fs_write_full(int fd, const void *buf, size_t n);
/* read until n bytes or EOF. Returns bytes read or -errno. */
ssize_t fs_read_full(int fd, void *buf, size_t n);

/* mkdir -p with mode; existing directories are fine. */
int fs_mkdir_p(const char *path, mode_t mode);
/* fsync the directory at path. */
int fs_fsync_dir(const char *path);
/* Remove a file; a missing file is not an error. */
int fs_unlink_if_exists(const char *path);
/*
 * Atomically replace path with the n bytes in buf: write path.tmp, fsync,
 * rename, fsync the directory.
 */
int fs_write_atomic(const char *path, const void *buf, size_t n);
/* Read a whole (small) file into a malloc'd NUL-terminated buffer the caller frees. */
int fs_read_file(const char *path, size_t max, char **ret, size_t *ret_len);
/* snprintf into buf; -ENAMETOOLONG if it does not fit. */
int fs_path(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
