/*
 * fuzz_sqlfmt_journal.c - write the bytes to a memfd and read them as a hot
 * rollback journal: every record journal_reader yields, then the
 * super-journal name with several buffer sizes. The database page size
 * handed to the reader (0, 512 or 4096) is picked from the input length so
 * the bytes themselves stay a journal.
 */
#include "ltxfs/sqlfmt.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t page[65536];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint32_t db_page_sizes[] = {0, 512, 4096};
	static int fd = -1;
	struct journal_reader *r = NULL;
	const struct journal_header *h;
	char name[600];
	uint32_t pgno;
	int rc;

	if (fd < 0) {
		fd = memfd_create("fuzz-journal", 0);
		if (fd < 0)
			abort();
	}
	if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
		abort();

	rc = journal_reader_new(&r, fd, db_page_sizes[size % 3]);
	if (rc == 0) {
		h = journal_reader_header(r);
		if (h->page_size < 512 || h->page_size > 65536 ||
		    (h->page_size & (h->page_size - 1)))
			abort();
		while ((rc = journal_reader_next(r, &pgno, page)) == 1) {
			/* Only pages inside the original database come out. */
			if (pgno == 0 || pgno > h->initial_size)
				abort();
		}
		if (rc != 0 || journal_reader_next(r, &pgno, page) != 0)
			abort();
		journal_reader_free(r);
	} else if (rc != -EBADMSG && rc != -EPROTO) {
		abort();
	}

	static const size_t sizes[] = {0, 1, 16, sizeof(name)};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		rc = journal_super_name(fd, name, sizes[i]);
		if (rc == 1 && (name[0] == '\0' || strlen(name) >= sizes[i]))
			abort();
		if (rc != 0 && rc != 1 && rc != -ENAMETOOLONG)
			abort();
	}
	return 0;
}
