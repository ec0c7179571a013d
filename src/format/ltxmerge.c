/*
 * ltxmerge.c - consecutive LTX files merged into one (the backup's upload
 * of "every transaction since the last upload" as one object).
 *
 * STATE. Every page image of every file added is kept as an entry (pgno,
 * sequence, bytes) in one array; the sequence is the order of the files.
 * A file whose commit is below a page number kills the entries of the
 * pages it cut off (they no longer exist after it), and lowers low_commit,
 * the smallest commit seen. At write time the entries are sorted by pgno
 * and, per pgno, the newest live one wins. Pages in (low_commit, commit]
 * that no live entry holds were cut off and never written again: applying
 * the files one by one leaves zeros there (the file was truncated, then
 * extended), so the merged file carries zero pages for them; the lock page
 * is never written. The merged header takes its fields as ltxmerge.h says.
 *
 * Memory: the page bytes (bounded by max_bytes, except for a first file
 * larger than it) plus 24 bytes of entry per page image.
 */
#include "ltxfs/ltxmerge.h"

#include "ltxfs/crc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct entry {
	uint32_t pgno;
	uint32_t seq;
	bool dead;
	uint8_t *page;
};

struct ltx_merge {
	size_t max_bytes, bytes;
	struct entry *e;
	size_t n, cap;
	size_t files;
	struct ltx_header first, last;
	uint64_t post;	      /* the last file's post-apply checksum */
	uint64_t epoch;	      /* highest epoch */
	uint32_t low_commit;  /* smallest commit among the files */
};

int ltx_merge_new(struct ltx_merge **ret, size_t max_bytes)
{
	struct ltx_merge *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->max_bytes = max_bytes;
	*ret = m;
	return 0;
}

void ltx_merge_free(struct ltx_merge *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n; i++)
		free(m->e[i].page);
	free(m->e);
	free(m);
}

size_t ltx_merge_count(const struct ltx_merge *m)
{
	return m->files;
}

void ltx_merge_range(const struct ltx_merge *m, uint64_t *min_txid, uint64_t *max_txid)
{
	*min_txid = m->files ? m->first.min_txid : 0;
	*max_txid = m->files ? m->last.max_txid : 0;
}

int ltx_merge_add(struct ltx_merge *m, ltx_read_fn fn, void *ctx)
{
	struct ltx_decoder *d = NULL;
	struct ltx_trailer t;
	size_t n0 = m->n;
	uint8_t *page = NULL;
	int r = ltx_decoder_new(&d, fn, ctx);
	if (r < 0)
		return r;
	const struct ltx_header *h = ltx_decoder_header(d);
	if (ltx_header_is_snapshot(h)) {
		r = -EINVAL;
		goto out;
	}
	if (m->files && (h->min_txid != m->last.max_txid + 1 || h->pre_apply_checksum != m->post ||
			 h->page_size != m->first.page_size)) {
		r = -ESTALE;
		goto out;
	}
	size_t added = 0;
	for (;;) {
		uint32_t pgno;
		if (!(page = malloc(h->page_size))) {
			r = -ENOMEM;
			goto out;
		}
		r = ltx_decoder_next_page(d, &pgno, page);
		if (r <= 0)
			break;
		added += h->page_size;
		if (m->files && m->bytes + added > m->max_bytes) {
			r = -EFBIG;
			goto out;
		}
		if (m->n == m->cap) {
			size_t nc = m->cap ? m->cap * 2 : 256;
			struct entry *e = realloc(m->e, nc * sizeof(*e));
			if (!e) {
				r = -ENOMEM;
				goto out;
			}
			m->e = e;
			m->cap = nc;
		}
		m->e[m->n++] = (struct entry){pgno, (uint32_t)m->files, false, page};
		page = NULL;
	}
	if (r < 0 || (r = ltx_decoder_finish(d, &t)) < 0)
		goto out;
	/* the file's own pages stay; older entries beyond its commit die */
	for (size_t i = 0; i < n0; i++)
		if (m->e[i].pgno > h->commit)
			m->e[i].dead = true;
	if (!m->files) {
		m->first = *h;
		m->low_commit = h->commit;
	}
	if (h->commit < m->low_commit)
		m->low_commit = h->commit;
	m->last = *h;
	m->post = t.post_apply_checksum;
	if (h->epoch > m->epoch)
		m->epoch = h->epoch;
	m->bytes += added;
	m->files++;
	r = 0;
out:
	if (r < 0) { /* drop what this file added */
		for (size_t i = n0; i < m->n; i++)
			free(m->e[i].page);
		m->n = n0;
	}
	free(page);
	ltx_decoder_free(d);
	return r;
}

static int cmp_entry(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	if (x->pgno != y->pgno)
		return x->pgno < y->pgno ? -1 : 1;
	return x->seq > y->seq ? -1 : x->seq < y->seq ? 1 : 0; /* newest first */
}

int ltx_merge_write(struct ltx_merge *m, uint32_t flags, uint64_t node_id, ltx_write_fn fn,
		    void *ctx, struct ltx_header *ret_h, struct ltx_trailer *ret_t)
{
	struct ltx_encoder *enc = NULL;
	struct ltx_trailer t;
	uint8_t *zero = NULL;
	int r;
	if (!m->files)
		return -ENODATA;
	if (m->n)
		qsort(m->e, m->n, sizeof(*m->e), cmp_entry);
	struct ltx_header h = {.flags = flags,
			       .page_size = m->first.page_size,
			       .commit = m->last.commit,
			       .min_txid = m->first.min_txid,
			       .max_txid = m->last.max_txid,
			       .timestamp = m->last.timestamp,
			       .pre_apply_checksum = m->first.pre_apply_checksum,
			       .node_id = node_id,
			       .epoch = m->epoch};
	uint32_t commit = h.commit, lock = ltx_lock_pgno(h.page_size);
	if (!(zero = calloc(1, h.page_size)))
		return -ENOMEM;
	if ((r = ltx_encoder_new(&enc, &h, fn, ctx)) < 0)
		goto out;
	size_t i = 0;
	uint32_t next = 1; /* the lowest pgno not yet written */
	while (r == 0) {
		/* the next pgno whose newest image is live (an older one never is
		 * when the newest is not: a cut kills every image before it) */
		while (i < m->n && (m->e[i].dead || m->e[i].pgno > commit)) {
			uint32_t pg = m->e[i].pgno;
			while (i < m->n && m->e[i].pgno == pg)
				i++;
		}
		uint32_t upto = i < m->n ? m->e[i].pgno : commit + 1;
		/* zero pages for pages cut off and not written again below it */
		for (uint32_t pg = next > m->low_commit + 1 ? next : m->low_commit + 1;
		     pg < upto && pg <= commit && r == 0; pg++)
			if (pg != lock)
				r = ltx_encoder_add_page(enc, pg, zero);
		if (i >= m->n || r < 0)
			break;
		uint32_t pg = m->e[i].pgno;
		r = ltx_encoder_add_page(enc, pg, m->e[i].page);
		next = pg + 1;
		while (i < m->n && m->e[i].pgno == pg) /* the older images */
			i++;
	}
	if (r == 0)
		r = ltx_encoder_finish(enc, m->post, &t);
	if (r == 0) {
		if (ret_h)
			*ret_h = h;
		if (ret_t)
			*ret_t = t;
	}
out:
	ltx_encoder_free(enc);
	free(zero);
	return r;
}
