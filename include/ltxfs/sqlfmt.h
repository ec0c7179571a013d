/*
 * sqlfmt.h - SQLite's on-disk formats that ltxfs must read (formats layer):
 * the 100-byte database header, the WAL header and frames with their
 * cumulative checksums, and the rollback journal (segments, page records,
 * per-record checksums, the super-journal name).
 *
 * Pure code over caller-supplied bytes or a caller-owned fd (read-only; it
 * never writes). Objects are not thread-safe. Returns 0 or -errno:
 *   -EBADMSG  the bytes are not the format (bad magic, bad checksum, bad field)
 *   -EPROTO   truncated
 *   -ENOMEM   out of memory; others come from pread.
 * Facts follow SQLite 3.40 (src/pager.c, src/wal.c, fileformat2.html).
 */
#ifndef LTXFS_SQLFMT_H
#define LTXFS_SQLFMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- database header ---- */
#define SQLITE_HEADER_SIZE 100

struct sqlite_dbheader {
	uint32_t page_size;	    /* decoded: the value 1 means 65536 */
	uint8_t write_version;	    /* 1 legacy/rollback, 2 WAL */
	uint8_t read_version;	    /* 1 legacy/rollback, 2 WAL */
	uint32_t change_counter;    /* offset 24 */
	uint32_t page_count;	    /* offset 28, "in-header database size" */
	uint32_t version_valid_for; /* offset 92 */
	bool page_count_valid;	    /* page_count != 0 && change_counter == version_valid_for */
};

/* Parse: requires n >= 100, the "SQLite format 3\0" magic and a valid page size. */
int sqlite_dbheader_parse(struct sqlite_dbheader *h, const uint8_t *buf, size_t n);

/* ---- WAL ---- */
#define WAL_HEADER_SIZE	      32
#define WAL_FRAME_HEADER_SIZE 24
#define WAL_MAGIC_LE	      0x377f0682u /* checksums in little-endian words */
#define WAL_MAGIC_BE	      0x377f0683u /* checksums in big-endian words */

struct wal_header {
	uint32_t magic;
	uint32_t version; /* 3007000 */
	uint32_t page_size;
	uint32_t ckpt_seq;
	uint32_t salt1, salt2;
	uint32_t cksum1, cksum2; /* checksum of the first 24 header bytes */
	bool big_endian;	 /* magic & 1 */
};

struct wal_frame_header {
	uint32_t pgno;
	uint32_t commit; /* database size in pages after commit; 0 if not a commit frame */
	uint32_t salt1, salt2;
	uint32_t cksum1, cksum2;
};

/* Parse and verify magic, version, page size and the header checksum. */
int wal_header_parse(struct wal_header *h, const uint8_t buf[WAL_HEADER_SIZE]);
void wal_frame_header_parse(struct wal_frame_header *f, const uint8_t buf[WAL_FRAME_HEADER_SIZE]);
/*
 * SQLite's walChecksumBytes: fold n bytes (n % 8 == 0) into (*s1, *s2), reading
 * 32-bit words in native order when big_endian matches the host, else swapped.
 */
void wal_checksum(bool big_endian, const uint8_t *buf, size_t n, uint32_t *s1, uint32_t *s2);
/*
 * Verify one frame the way WAL recovery does: salts must equal the header's,
 * and the checksum of the first 8 header bytes + the page, chained from
 * (*s1, *s2), must equal the frame's. On success updates *s1 and *s2 and returns
 * true; on failure leaves them alone and returns false. page_size from h.
 */
bool wal_frame_verify(const struct wal_header *h, uint32_t *s1, uint32_t *s2,
		      const uint8_t fhdr[WAL_FRAME_HEADER_SIZE], const uint8_t *page);
/* Byte offset of frame i (0-based) for page_size. */
static inline uint64_t wal_frame_offset(uint32_t page_size, uint64_t i)
{
	return WAL_HEADER_SIZE + i * (uint64_t)(WAL_FRAME_HEADER_SIZE + page_size);
}

/* ---- wal-index (-shm) header ---- */
/*
 * The first 136 bytes of the -shm file (wal.c WalIndexHdr twice, then
 * WalCkptInfo), in the host's byte order. SHM_LOCK_* are the fcntl lock bytes
 * SQLite's unix VFS uses in the -shm file.
 */
#define SHM_HEADER_SIZE	 136
#define SHM_LOCK_WRITE	 120
#define SHM_LOCK_CKPT	 121
#define SHM_LOCK_RECOVER 122
#define SHM_LOCK_READ(i) (123 + (i))
#define SHM_NREADER	 5
/* The rollback-mode lock bytes in the database file (os.h). */
#ifndef SQLITE_PENDING_BYTE
#define SQLITE_PENDING_BYTE 0x40000000u
#endif
#define SQLITE_RESERVED_BYTE (SQLITE_PENDING_BYTE + 1)
#define SQLITE_SHARED_FIRST  (SQLITE_PENDING_BYTE + 2)
#define SQLITE_SHARED_SIZE   510

/*
 * Build a wal-index header that tells readers "the WAL is empty and the
 * database file holds npages pages of page_size", with a change counter one
 * above old's (old: the current first 136 bytes, or NULL) so that every
 * reader drops its page cache at its next read transaction. Salts and the
 * reader marks of old are kept; nBackfill is 0. out receives 136 bytes.
 */
void shm_header_build(uint8_t out[SHM_HEADER_SIZE], const uint8_t *old, uint32_t page_size,
		      uint32_t npages);

/* ---- rollback journal ---- */
#define JOURNAL_HEADER_MIN 28
extern const uint8_t journal_magic[8]; /* d9 d5 05 f9 20 a1 63 d7 */

struct journal_header {
	uint32_t nrec;	       /* 0xffffffff: "use the file size" */
	uint32_t nonce;	       /* checksum initializer */
	uint32_t initial_size; /* database size in pages before the transaction */
	uint32_t sector_size;
	uint32_t page_size;
};

/* Parse a segment header at buf (n >= 28). -EBADMSG unless the magic matches. */
int journal_header_parse(struct journal_header *h, const uint8_t *buf, size_t n);
/* SQLite's pager_cksum: nonce + every 200th byte from the end of the page. */
uint32_t journal_page_checksum(uint32_t nonce, const uint8_t *page, uint32_t page_size);

/*
 * Journal reader over fd, for hot-journal rollback. It walks every segment the
 * way pager_playback() does for a hot journal (nRec 0xffffffff means "as many
 * records as the file holds"; a record whose checksum fails ends playback),
 * yielding original page images. initial_size/page_size come from the first
 * segment header. db_page_size is the database's page size if known (0 = take
 * the journal's).
 */
struct journal_reader;
int journal_reader_new(struct journal_reader **ret, int fd, uint32_t db_page_size);
const struct journal_header *journal_reader_header(const struct journal_reader *r);
/* 1 with a record in *pgno/page (page_size bytes), 0 at the end. */
int journal_reader_next(struct journal_reader *r, uint32_t *pgno, uint8_t *page);
void journal_reader_free(struct journal_reader *r);

/*
 * The super-journal name recorded at the end of a journal (pager.c
 * readSuperJournal). Returns 1 and a NUL-terminated name in buf, 0 if the
 * journal names none, or -errno. -ENAMETOOLONG if it does not fit in n.
 */
int journal_super_name(int fd, char *buf, size_t n);

#endif
