/* The bucket layout's pure parts (include/ltxfs/backup.h): database keys
 * and times. */
#include "unit.h"

#include "ltxfs/backup.h"
#include "ltxfs/restore.h"

#include <errno.h>

static void key(const char *name, const char *want)
{
	char buf[256], back[256];
	CHECK_RC(backup_dbkey(name, buf, sizeof(buf)), 0);
	CHECK(strcmp(buf, want) == 0);
	CHECK_RC(backup_dbkey_decode(buf, back, sizeof(back)), 0);
	CHECK(strcmp(back, name) == 0);
}

static void test_dbkey(void)
{
	key("app.db", "app.db");
	key("tenants/42/app.db", "tenants~2F42~2Fapp.db");
	key("a~b", "a~7Eb");
	key("A b+c%", "A~20b~2Bc~25");
	char buf[8];
	CHECK_RC(backup_dbkey("abcdefgh", buf, sizeof(buf)), -ENAMETOOLONG);
	CHECK_RC(backup_dbkey_decode("a~2f", buf, sizeof(buf)), -EINVAL); /* lower-case hex */
	CHECK_RC(backup_dbkey_decode("a~41", buf, sizeof(buf)), -EINVAL); /* 'A' needs none */
	CHECK_RC(backup_dbkey_decode("a~", buf, sizeof(buf)), -EINVAL);
	CHECK_RC(backup_dbkey_decode("a~00", buf, sizeof(buf)), -EINVAL);
}

static void test_times(void)
{
	char buf[32];
	int64_t ms;
	backup_format_time(1796528112643, buf);
	CHECK(strcmp(buf, "2026-12-06T03:35:12.643Z") == 0);
	CHECK_RC(restore_parse_time(buf, &ms), 0);
	CHECK(ms == 1796528112643);
	CHECK_RC(restore_parse_time("2026-12-06T04:35:12.643999999+01:00", &ms), 0);
	CHECK(ms == 1796528112643);
	CHECK_RC(restore_parse_time("2026-12-06T03:35:12Z", &ms), 0);
	CHECK(ms == 1796528112000);
	CHECK_RC(restore_parse_time("2026-12-06 03:35:12Z", &ms), -EINVAL);
	CHECK_RC(restore_parse_time("2026-12-06T03:35:12", &ms), -EINVAL);
	CHECK_RC(restore_parse_time("2026-12-06T03:35:12.Z", &ms), -EINVAL);
	CHECK_RC(restore_parse_time("2026-13-06T03:35:12Z", &ms), -EINVAL);
}

/* The head object's text (docs/backup.md, "The head"): format, parse back, refusals. */
static void test_head_text(void)
{
	struct backup_head h = {.txid = 0x2a, .checksum = 0x8000000000001234ull}, back = {0};
	char *text = NULL;
	size_t n = 0;
	CHECK_RC(backup_head_add_term(&h, 1, "00000000000000AB-0000000000000001-0badcafe"), 0);
	CHECK_RC(backup_head_add_term(&h, 0x1f, "00000000000000CD-0000000000000002-12345678"), 0);
	CHECK_RC(backup_head_format(&h, &text, &n), 0);
	static const char want[] =
	    "ltxfs-head 1\ntxid 000000000000002a\nchecksum 8000000000001234\n"
	    "term 0000000000000001 00000000000000AB-0000000000000001-0badcafe\n"
	    "term 000000000000001f 00000000000000CD-0000000000000002-12345678\n";
	CHECK(n == strlen(want) && memcmp(text, want, n) == 0);
	CHECK_RC(backup_head_parse(text, n, &back), 0);
	CHECK(back.txid == h.txid && back.checksum == h.checksum && back.n == 2);
	CHECK(back.n == 2 && back.terms[1].start == 0x1f &&
	      strcmp(back.terms[1].writer, h.terms[1].writer) == 0);
	backup_head_release(&back);
	/* a head without terms (none claimed yet) parses */
	CHECK_RC(backup_head_parse(want, 61, &back), 0);
	CHECK(back.n == 0);
	backup_head_release(&back);
	static const char *bad[] = {
	    "ltxfs-head 2\ntxid 000000000000002a\nchecksum 0000000000000000\n",
	    "ltxfs-head 1\ntxid 2a\nchecksum 0000000000000000\n",
	    "ltxfs-head 1\ntxid 000000000000002A\nchecksum 0000000000000000\n",
	    "ltxfs-head 1\ntxid 000000000000002a\n",
	    "ltxfs-head 1\ntxid 000000000000002a\nchecksum 0000000000000000", /* no newline */
	    "ltxfs-head 1\ntxid 000000000000002a\nchecksum 0000000000000000\nterm "
	    "0000000000000001 \n",
	    /* terms out of order */
	    "ltxfs-head 1\ntxid 000000000000002a\nchecksum 0000000000000000\nterm "
	    "0000000000000009 a\nterm 0000000000000001 b\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK_RC(backup_head_parse(bad[i], strlen(bad[i]), &back), -EBADMSG);
	free(text);
	backup_head_release(&h);
	backup_head_release(NULL);
}

int main(void)
{
	RUN(test_dbkey);
	RUN(test_times);
	RUN(test_head_text);
	return UNIT_DONE();
}
