/* Database names (include/ltxfs/dbname.h): what is valid, and the one-to-one
 * map between names and their directories in dbs/. */
#include "unit.h"

#include "ltxfs/dbname.h"

#include <errno.h>
#include <string.h>

static bool valid(const char *s)
{
	return dbname_valid(s, strlen(s));
}

static void test_valid(void)
{
	CHECK(valid("app.db"));
	CHECK(valid("tenants/42/app.db"));
	CHECK(valid("a%b"));
	CHECK(valid(".hidden"));
	CHECK(valid("x/a%2Fb")); /* nested: escaped, so no clash */
	static const char *const bad[] = {"",	   ".",	     "..",   "/app.db", "app.db/", "a//b",
					  "a/./b", "a/../b", "../x", "..",	"x/..",	   "a%2Fb"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(!valid(bad[i]));
	CHECK(!dbname_valid("a\0b", 3));
	char big[DBNAME_MAX + 2];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	CHECK(!valid(big));
	big[DBNAME_MAX] = '\0';
	CHECK(valid(big));
}

static void round_trip(const char *name, const char *want_dir)
{
	char dir[1024], back[DBNAME_MAX + 1];
	CHECK(dbname_to_dir(name, dir, sizeof(dir)) == 0);
	CHECK(strcmp(dir, want_dir) == 0);
	CHECK(strchr(dir, '/') == NULL);
	CHECK(dbname_from_dir(dir, back, sizeof(back)) == 0);
	CHECK(strcmp(back, name) == 0);
}

static void test_dirs(void)
{
	round_trip("app.db", "app.db"); /* LiteFS's layout at the root */
	round_trip("a%b", "a%b");
	round_trip("a%25b", "a%25b");
	round_trip("tenants/42/app.db", "tenants%2F42%2Fapp.db");
	round_trip("x/a%2Fb", "x%2Fa%252Fb");
	round_trip("x/100%", "x%2F100%25");
	char buf[DBNAME_MAX + 1], small[4];
	CHECK(dbname_from_dir("a%2F..", buf, sizeof(buf)) == -EINVAL);
	CHECK(dbname_from_dir("%2Fa", buf, sizeof(buf)) == -EINVAL);
	CHECK(dbname_from_dir("a%2Fb%", buf, sizeof(buf)) == -EINVAL);
	CHECK(dbname_from_dir("a%2Fb%41", buf, sizeof(buf)) == -EINVAL);
	CHECK(dbname_to_dir("../x", buf, sizeof(buf)) == -EINVAL);
	CHECK(dbname_to_dir("abcdef", small, sizeof(small)) == -ENAMETOOLONG);
	CHECK(strcmp(dbname_base("a/b/c.db"), "c.db") == 0);
	CHECK(strcmp(dbname_base("c.db"), "c.db") == 0);
	CHECK(dbname_nested("a/b") && !dbname_nested("ab"));
}

int main(void)
{
	RUN(test_valid);
	RUN(test_dirs);
	return UNIT_DONE();
}
