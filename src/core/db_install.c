/*
 * db_install.c - a whole database file written outside SQLite (cp, rsync,
 * shutil.copy, truncate, an editor's save, rename(2) onto a database)
 * becomes one transaction: db_install_validate checks the new file, and
 * db_install_build turns it into the LTX file that replaces every page. The
 * caller then applies that file with db_apply_ltx, the path a replica uses,
 * so readers and replicas see the old database or the whole new one.
 * docs/architecture.md section 11 describes the whole path.
 *
 * VALIDATION. The file must be a database SQLite would open without
 * complaint about its size: the 16-byte magic "SQLite format 3\0", a page
 * size that is a power of two from 512 to 65536, read/write versions 1 or 2,
 * a size that is a non-zero multiple of the page size, and, when the
 * header's page count is valid (its change counter equals the
 * version-valid-for number, as every SQLite since 3.7.0 writes it), a page
 * count equal to the size in pages. A truncated copy fails the last rule.
 * Each refusal is -EINVAL with a static reason for the edge to log.
 *
 * THE LTX FILE. Every page of the new file (the lock page excepted) with
 * commit = its page count, min = max = this position's TXID + 1 and the
 * current post-apply checksum as its pre-apply checksum: an ordinary
 * transaction that follows the chain, so the stream sends it as it is. When
 * the database has no committed pages yet, or the page size changes, it is
 * a snapshot (min TXID 1): replicas then receive a snapshot, as after
 * retention. The post-apply checksum is the XOR of the new pages' checksums
 * whatever the old pages were, since every old page is replaced or cut.
 *
 * CHANGE COUNTER. A SQLite connection that already has the database open
 * keeps its page cache while the change counter (header offset 24) is the
 * one it saw last. If the new file carries the same counter as the old
 * database, page 1 is installed with the counter plus one (and the
 * version-valid-for number with it when it was valid), so every connection
 * sees "changed by another process" and re-reads. Apart from that the bytes
 * installed are the bytes written.
 *
 * THREADS AND LOCKS. A FUSE worker calls both functions, with SQLite's own
 * locks already taken through the mount (the apply hooks), so no SQLite
 * writer is inside a transaction. db_install_build takes db->mu only to read
 * the position, the page size and the fence, then builds the file without
 * it; db_apply_ltx checks the chain again under db->mu.
 */

#include "db_int.h"

#include "ltxfs/byteorder.h"
#include "ltxfs/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int db_install_validate(int fd, uint32_t *ret_page_size, uint32_t *ret_npages, const char **why)
{
	uint8_t hb[SQLITE_HEADER_SIZE];
	struct sqlite_dbheader h;
	struct stat st;
	*why = NULL;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (st.st_size == 0) {
		*why = "the file is empty";
		return -EINVAL;
	}
	ssize_t got = fs_pread_full(fd, hb, sizeof(hb), 0);
	if (got < 0)
		return (int)got;
	if (got < (ssize_t)sizeof(hb) || memcmp(hb, "SQLite format 3", 16) != 0) {
		*why = "it does not start with the SQLite header";
		return -EINVAL;
	}
	if (sqlite_dbheader_parse(&h, hb, sizeof(hb)) < 0 || !ltx_page_size_valid(h.page_size)) {
		*why = "its SQLite header has an invalid page size";
		return -EINVAL;
	}
	if (h.write_version < 1 || h.write_version > 2 || h.read_version < 1 ||
	    h.read_version > 2) {
		*why = "its SQLite header has unknown file format versions";
		return -EINVAL;
	}
	if (st.st_size % h.page_size != 0) {
		*why = "its size is not a multiple of its page size (a truncated copy?)";
		return -EINVAL;
	}
	uint64_t npages = (uint64_t)st.st_size / h.page_size;
	if (npages > UINT32_MAX - 1) {
		*why = "it has more pages than SQLite allows";
		return -EINVAL;
	}
	if (h.page_count_valid && h.page_count != npages) {
		*why = "its size does not match the page count in its header (a truncated or "
		       "still-growing copy?)";
		return -EINVAL;
	}
	*ret_page_size = h.page_size;
	*ret_npages = (uint32_t)npages;
	return 0;
}

#define INSTALL_CHUNK (1u << 20)

int db_install_build(struct db *db, int srcfd, int *ret_ltxfd, const char **why)
{
	uint32_t ps = 0, npages = 0;
	uint8_t *buf = NULL;
	struct ltx_encoder *e = NULL;
	int fd = -1;
	uint64_t epoch = 0;
	struct ltx_header h;
	int r = db_install_validate(srcfd, &ps, &npages, why);
	if (r < 0)
		return r;

	/* What the new file replaces: position, page size, change counter. */
	uint32_t old_counter = 0;
	bool have_old = false;
	pthread_mutex_lock(&db->mu);
	r = db->sticky_err ? db->sticky_err : db_fence(db, &epoch);
	struct db_pos pos = db->pos;
	bool snapshot = pos.txid == 0 || (db->page_count > 0 && db->page_size != ps);
	if (r == 0 && db->exists && db->dbfd >= 0 && db->page_count > 0) {
		uint8_t c[4];
		if (fs_pread_full(db->dbfd, c, 4, 24) == 4) {
			old_counter = get_be32(c);
			have_old = true;
		}
	}
	pthread_mutex_unlock(&db->mu);
	if (r < 0)
		goto out;

	memset(&h, 0, sizeof(h));
	h.flags = db->opt.compress ? LTX_FLAG_COMPRESS_LZ4 : 0;
	h.page_size = ps;
	h.commit = npages;
	h.min_txid = snapshot ? 1 : pos.txid + 1;
	h.max_txid = pos.txid + 1;
	h.timestamp = clock_wall_ms();
	h.pre_apply_checksum = snapshot ? 0 : pos.checksum;
	h.node_id = db->opt.node_id;
	h.epoch = epoch;

	uint32_t chunk_pages = INSTALL_CHUNK / ps ? INSTALL_CHUNK / ps : 1;
	buf = malloc((size_t)chunk_pages * ps);
	if (!buf) {
		r = -ENOMEM;
		goto out;
	}
	r = db_ltx_tmpfile(db, &fd);
	if (r == 0)
		r = ltx_encoder_new(&e, &h, ltx_fd_write, &fd);
	if (r < 0)
		goto out;
	uint32_t lock_pg = ltx_lock_pgno(ps);
	uint64_t x = 0;
	for (uint32_t first = 1; first <= npages && r == 0; first += chunk_pages) {
		uint32_t n = npages - first + 1 < chunk_pages ? npages - first + 1 : chunk_pages;
		ssize_t got =
		    fs_pread_full(srcfd, buf, (size_t)n * ps, (off_t)(first - 1) * (off_t)ps);
		if (got != (ssize_t)((size_t)n * ps)) {
			/* the writer changed the file under us */
			r = got < 0 ? (int)got : -EIO;
			break;
		}
		if (first == 1 && have_old && get_be32(buf + 24) == old_counter) {
			bool valid_for = get_be32(buf + 92) == old_counter;
			put_be32(buf + 24, old_counter + 1);
			if (valid_for)
				put_be32(buf + 92, old_counter + 1);
		}
		for (uint32_t i = 0; i < n && r == 0; i++) {
			uint32_t pg = first + i;
			if (pg == lock_pg)
				continue;
			const uint8_t *p = buf + (size_t)i * ps;
			uint64_t crc = ltx_page_crc(pg, p, ps);
			x ^= LTX_CHECKSUM_FLAG | crc;
			r = ltx_encoder_add_page_crc(e, pg, p, crc);
		}
	}
	if (r == 0) {
		struct ltx_trailer tr;
		r = ltx_encoder_finish(e, LTX_CHECKSUM_FLAG | x, &tr);
	}
	if (r == 0 && fdatasync(fd) < 0)
		r = -errno;
	if (r == 0) {
		*ret_ltxfd = fd;
		fd = -1;
	}
out:
	ltx_encoder_free(e);
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}
