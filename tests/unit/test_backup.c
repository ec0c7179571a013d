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

int main(void)
{
	RUN(test_dbkey);
	RUN(test_times);
	return UNIT_DONE();
}
