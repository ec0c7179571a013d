/*
 * test_config.c - ltxfs.yml / litefs.yml: defaults, the full schema, every
 * error path, LiteFS's env expansion, durations, exec splitting, YAML bools,
 * loading from disk and the search order; the effective configuration (the
 * log line against the dump, key by key) and the Go-compatible parsers
 * called directly.
 */
#include "ltxfs/config.h"
#include "unit.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#define PATH "/etc/test-litefs.yml"

/* A valid base that every error case can extend. */
#define BASE "fuse:\n  dir: /litefs\nlease:\n  type: static\n"

static char errbuf[1024];

static int parse(struct config *c, const char *yaml)
{
	int rc = config_init(c);
	if (rc)
		return rc;
	return config_parse(c, PATH, yaml, strlen(yaml), errbuf, sizeof(errbuf));
}

/* Parse must succeed; a failure is counted (callers then skip their checks). */
static bool parses(const char *yaml, struct config *c)
{
	int rc = parse(c, yaml);
	if (rc) {
		fprintf(stderr, "unexpected error %d: %s\n--- yaml:\n%s\n", rc, errbuf, yaml);
		unit_failures++;
	}
	return rc == 0;
}

/* Parse must fail with -EINVAL and a message naming PATH and every needle. */
static void expect_error_(const char *file, int line, const char *yaml, const char *needle1,
			  const char *needle2)
{
	struct config c;
	int rc = parse(&c, yaml);
	bool ok = rc == -EINVAL && strstr(errbuf, PATH ": ") == errbuf &&
		  (!needle1 || strstr(errbuf, needle1)) && (!needle2 || strstr(errbuf, needle2));
	if (!ok) {
		fprintf(stderr, "%s:%d: want -EINVAL with '%s' '%s', got %d: '%s'\n--- yaml:\n%s\n",
			file, line, needle1 ? needle1 : "", needle2 ? needle2 : "", rc, errbuf,
			yaml);
		unit_failures++;
	}
	config_release(&c);
}
#define expect_error(yaml, n1, n2) expect_error_(__FILE__, __LINE__, yaml, n1, n2)

static char *expand(const char *s)
{
	char *r = config_expand_env(s);
	if (!r) {
		fprintf(stderr, "config_expand_env OOM\n");
		exit(1);
	}
	return r;
}

#define CHECK_EXPAND(in, want)                                                                     \
	do {                                                                                       \
		char *got_ = expand(in);                                                           \
		if (strcmp(got_, (want)) != 0) {                                                   \
			fprintf(stderr, "%s:%d: expand(\"%s\") = \"%s\", want \"%s\"\n", __FILE__, \
				__LINE__, (in), got_, (want));                                     \
			unit_failures++;                                                           \
		}                                                                                  \
		free(got_);                                                                        \
	} while (0)

#define CHECK_STR(a, b)                                                                            \
	do {                                                                                       \
		const char *a_ = (a), *b_ = (b);                                                   \
		if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                           \
			fprintf(stderr, "%s:%d: %s == \"%s\" failed: got \"%s\"\n", __FILE__,      \
				__LINE__, #a, b_ ? b_ : "(null)", a_ ? a_ : "(null)");             \
			unit_failures++;                                                           \
		}                                                                                  \
	} while (0)

static const char *hostname(void)
{
	static char host[HOST_NAME_MAX + 1];
	gethostname(host, sizeof(host));
	host[HOST_NAME_MAX] = '\0';
	return host;
}

static size_t argc_of(char **argv)
{
	size_t n = 0;
	while (argv && argv[n])
		n++;
	return n;
}

/* ------------------------------------------------------------------------ */

static void test_defaults(void)
{
	struct config c;
	CHECK_RC(config_init(&c), 0);
	CHECK(c.path == NULL);
	CHECK(c.exit_on_error == true);
	CHECK(c.skip_sync == false);
	CHECK(c.exec == NULL && c.n_exec == 0);
	CHECK(c.fuse.dir == NULL);
	CHECK(!c.fuse.allow_other && !c.fuse.debug);
	CHECK_STR(c.data.dir, "/var/lib/litefs");
	CHECK(c.data.compress == true);
	CHECK_EQ_U64(c.data.retention_ms, 10 * 60 * 1000);
	CHECK_EQ_U64(c.data.retention_monitor_interval_ms, 60 * 1000);
	CHECK_STR(c.http.addr, ":20202");
	CHECK(c.lease.type == NULL);
	CHECK(c.lease.candidate == true);
	CHECK(c.lease.hostname == NULL && c.lease.advertise_url == NULL);
	CHECK(c.lease.promote == false);
	CHECK_EQ_U64(c.lease.reconnect_delay_ms, 1000);
	CHECK_EQ_U64(c.lease.demote_delay_ms, 10000);
	CHECK(c.lease.consul.url == NULL && c.lease.consul.key == NULL);
	CHECK_EQ_U64(c.lease.consul.ttl_ms, 10000);
	CHECK_EQ_U64(c.lease.consul.lock_delay_ms, 1000);
	CHECK(c.lease.etcd.endpoints == NULL && c.lease.etcd.n_endpoints == 0);
	CHECK(c.lease.etcd.key == NULL);
	CHECK_EQ_U64(c.lease.etcd.ttl_ms, 10000);
	CHECK(c.lease.etcd.username == NULL && c.lease.etcd.password == NULL);
	CHECK_STR(c.log.format, "text");
	CHECK(c.log.debug == false);
	config_release(&c);
	CHECK(c.data.dir == NULL && c.http.addr == NULL);
	config_release(&c); /* twice is fine */
	config_release(NULL);
}

static void test_minimal(void)
{
	struct config c;
	char want[600];
	if (parses(BASE, &c)) {
		CHECK_STR(c.fuse.dir, "/litefs");
		CHECK_STR(c.lease.type, "static");
		CHECK_STR(c.data.dir, "/var/lib/litefs");
		CHECK(c.data.compress && c.exit_on_error && c.lease.candidate);
		CHECK_EQ_U64(c.data.retention_ms, 600000);
		CHECK_STR(c.lease.hostname, hostname());
		snprintf(want, sizeof(want), "http://%s:20202", hostname());
		CHECK_STR(c.lease.advertise_url, want);
		CHECK(c.path == NULL); /* config_parse does not set it */
	}
	config_release(&c);

	/* The advertise URL follows the port of http.addr. */
	if (parses(BASE "http:\n  addr: \"127.0.0.1:8081\"\n", &c)) {
		snprintf(want, sizeof(want), "http://%s:8081", hostname());
		CHECK_STR(c.lease.advertise_url, want);
	}
	config_release(&c);
	if (parses(BASE "http:\n  addr: \"[::1]:9000\"\n  \nlog:\n  format: json\n", &c)) {
		snprintf(want, sizeof(want), "http://%s:9000", hostname());
		CHECK_STR(c.lease.advertise_url, want);
		CHECK_STR(c.log.format, "json");
	}
	config_release(&c);
	/* An IPv6 literal host name is bracketed. */
	if (parses(BASE "  hostname: \"fd00::1\"\n", &c))
		CHECK_STR(c.lease.advertise_url, "http://[fd00::1]:20202");
	config_release(&c);
	/* Empty hostname / advertise-url mean "derive", as in LiteFS. */
	if (parses(BASE "  hostname: \"\"\n  advertise-url: ''\n", &c)) {
		CHECK_STR(c.lease.hostname, hostname());
		snprintf(want, sizeof(want), "http://%s:20202", hostname());
		CHECK_STR(c.lease.advertise_url, want);
	}
	config_release(&c);
	/* Port 0 is fine when the advertise URL is given. */
	if (parses(BASE "  advertise-url: http://primary:20202\nhttp:\n  addr: \":0\"\n", &c))
		CHECK_STR(c.lease.advertise_url, "http://primary:20202");
	config_release(&c);
}

static void test_full(void)
{
	/* Every supported key, written the way LiteFS's sample litefs.yml writes them. */
	static const char yaml[] =
	    "# The FUSE section handles settings on the FUSE file system.\n"
	    "fuse:\n"
	    "  dir: \"/litefs\"\n"
	    "  allow-other: true\n"
	    "  debug: false\n"
	    "\n"
	    "# The data section specifies where internal LiteFS data is stored\n"
	    "data:\n"
	    "  dir: \"/var/lib/litefs\"\n"
	    "  compress: false\n"
	    "  retention: \"1h30m\"\n"
	    "  retention-monitor-interval: 30s\n"
	    "\n"
	    "exit-on-error: false\n"
	    "skip-sync: yes\n"
	    "\n"
	    "exec:\n"
	    "  - cmd: \"rails db:migrate\"\n"
	    "    if-candidate: true\n"
	    "  - cmd: \"rails server -b '0.0.0.0'\"\n"
	    "\n"
	    "http:\n"
	    "  addr: \":20203\"\n"
	    "\n"
	    "lease:\n"
	    "  type: \"static\"\n"
	    "  candidate: false\n"
	    "  hostname: \"node-1.internal\"\n"
	    "  advertise-url: \"http://primary.internal:20202\"\n"
	    "\n"
	    "log:\n"
	    "  format: json\n"
	    "  debug: true\n";
	struct config c;
	if (parses(yaml, &c)) {
		CHECK_STR(c.fuse.dir, "/litefs");
		CHECK(c.fuse.allow_other == true && c.fuse.debug == false);
		CHECK_STR(c.data.dir, "/var/lib/litefs");
		CHECK(c.data.compress == false);
		CHECK_EQ_U64(c.data.retention_ms, 90 * 60 * 1000);
		CHECK_EQ_U64(c.data.retention_monitor_interval_ms, 30000);
		CHECK(c.exit_on_error == false && c.skip_sync == true);
		CHECK_EQ_U64(c.n_exec, 2);
		if (c.n_exec == 2) {
			CHECK(c.exec[0].if_candidate == true && c.exec[1].if_candidate == false);
			CHECK_EQ_U64(argc_of(c.exec[0].argv), 2);
			CHECK_STR(c.exec[0].argv[0], "rails");
			CHECK_STR(c.exec[0].argv[1], "db:migrate");
			CHECK_EQ_U64(argc_of(c.exec[1].argv), 4);
			CHECK_STR(c.exec[1].argv[3], "0.0.0.0");
		}
		CHECK_STR(c.http.addr, ":20203");
		CHECK_STR(c.lease.type, "static");
		CHECK(c.lease.candidate == false);
		CHECK_STR(c.lease.hostname, "node-1.internal");
		CHECK_STR(c.lease.advertise_url, "http://primary.internal:20202");
		CHECK_STR(c.log.format, "json");
		CHECK(c.log.debug == true);
	}
	config_release(&c);

	/* Flow style and quoted keys are the same document. */
	if (parses("{\"fuse\": {dir: /mnt/x}, 'lease': {type: static, candidate: off, "
		   "advertise-url: 'http://p:20202'}}",
		   &c)) {
		CHECK_STR(c.fuse.dir, "/mnt/x");
		CHECK(c.lease.candidate == false);
	}
	config_release(&c);

	/* Only the first YAML document is read, as yaml.v3's Decode does. */
	if (parses("---\n" BASE "---\nnot: valid: here\n", &c))
		CHECK_STR(c.fuse.dir, "/litefs");
	config_release(&c);
}

static void test_nulls_keep_defaults(void)
{
	struct config c;
	if (parses(BASE "  candidate:\ndata:\n  dir: ~\n  compress: null\n  retention: NULL\n"
			"http:\nlog:\n  format: Null\nexit-on-error: ~\n",
		   &c)) {
		CHECK(c.lease.candidate == true);
		CHECK_STR(c.data.dir, "/var/lib/litefs");
		CHECK(c.data.compress == true);
		CHECK_EQ_U64(c.data.retention_ms, 600000);
		CHECK_STR(c.http.addr, ":20202");
		CHECK_STR(c.log.format, "text");
		CHECK(c.exit_on_error == true);
	}
	config_release(&c);
	/* Explicitly tagged nulls too, for values and sections. */
	if (parses(BASE
		   "data:\n  retention-monitor-interval: !!null ~\n  dir: !!null\nhttp: !!null ~\n",
		   &c)) {
		CHECK_EQ_U64(c.data.retention_monitor_interval_ms, 60000);
		CHECK_STR(c.data.dir, "/var/lib/litefs");
	}
	config_release(&c);
	/* Strings take any scalar's text. */
	if (parses(BASE "  hostname: 123\n", &c))
		CHECK_STR(c.lease.hostname, "123");
	config_release(&c);
	/* A document that is only comments is an empty config. */
	expect_error("# nothing here\n", "key 'fuse.dir' is required", NULL);
	expect_error("", "key 'fuse.dir' is required", NULL);
	expect_error("---\n~\n", "key 'fuse.dir' is required", NULL);
}

static void test_bools(void)
{
	static const char *const trues[] = {"true", "True",    "TRUE", "y",	     "Y",
					    "yes",  "Yes",     "YES",  "on",	     "On",
					    "ON",   "\"yes\"", "'on'", "!!bool true"};
	static const char *const falses[] = {"false", "False", "FALSE",	 "n",	"N",
					     "no",    "No",    "NO",	 "off", "Off",
					     "OFF",   "'no'",  "\"Off\""};
	static const char *const bad[] = {"yes please", "tRue", "1",	     "0",      "\"true\"",
					  "'false'",	"yep",	"1.0",	     "[true]", "{a: b}",
					  "enabled",	"ja",	"!!bool yes"};
	char yaml[256];
	struct config c;

	for (size_t i = 0; i < sizeof(trues) / sizeof(trues[0]); i++) {
		snprintf(yaml, sizeof(yaml),
			 "lease: {type: static}\nfuse:\n  dir: /x\n  debug: %s\n", trues[i]);
		if (parses(yaml, &c) && !c.fuse.debug) {
			fprintf(stderr, "'%s' did not read as true\n", trues[i]);
			unit_failures++;
		}
		config_release(&c);
	}
	for (size_t i = 0; i < sizeof(falses) / sizeof(falses[0]); i++) {
		snprintf(yaml, sizeof(yaml),
			 BASE "  advertise-url: http://p:20202\n  candidate: %s\n", falses[i]);
		if (parses(yaml, &c) && c.lease.candidate) {
			fprintf(stderr, "'%s' did not read as false\n", falses[i]);
			unit_failures++;
		}
		config_release(&c);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(yaml, sizeof(yaml), BASE "  candidate: %s\n", bad[i]);
		expect_error(yaml, "key 'lease.candidate'", NULL);
	}
	expect_error(BASE "  candidate: yes please\n",
		     "line 5: key 'lease.candidate': expected a boolean", "got 'yes please'");
	expect_error(BASE "  candidate: \"true\"\n", "key 'lease.candidate'", "got 'true'");
	expect_error(BASE "  candidate: [true]\n", "key 'lease.candidate'", "got a list");
	expect_error(BASE "  candidate: !!bool yes\n", "key 'lease.candidate'", "as !!bool");
}

static void test_durations(void)
{
	static const struct {
		const char *in;
		int64_t ms;
	} ok[] = {
	    {"0", 0},
	    {"+0", 0},
	    {"-0", 0},
	    {"0s", 0},
	    {"-0s", 0},
	    {"10m", 600000},
	    {"1m", 60000},
	    {"2h", 7200000},
	    {"1h30m", 5400000},
	    {"1m30s", 90000},
	    {"1h1m1s1ms", 3661001},
	    {"250ms", 250},
	    {"1.5s", 1500},
	    {".5s", 500},
	    {"5.s", 5000},
	    {"1.5h", 5400000},
	    {"+5s", 5000},
	    {"1000us", 1},
	    {"1500\xc2\xb5s", 2}, /* µ (micro sign), 1.5ms rounds up */
	    {"2000\xce\xbcs", 2}, /* μ (greek mu) */
	    {"1ns", 1},		  /* sub-millisecond rounds up, never to 0 */
	    {"999999ns", 1},
	    {"1000000ns", 1},
	    {"1000001ns", 2},
	    {"0.000000001s", 1},
	    {"2562047h", 2562047LL * 3600 * 1000},
	    {"9223372036854775807ns", 9223372036855LL},
	    {"1.00000000000000000000000000001s", 1000},
	};
	static const char *const bad[] = {
	    "",
	    "10",
	    "1x",
	    "s",
	    ".s",
	    "-.s",
	    "1.2.3s",
	    "1 s",
	    " 1s",
	    "1s ",
	    "1e3s",
	    "-1s",
	    "-1ns",
	    "+",
	    "-",
	    "1S",
	    "1sec",
	    "1H",
	    "3000000h",
	    "9223372036854775808ns",
	    "99999999999999999999s",
	    "1s-1s",
	    "0x1s",
	};
	int64_t ms;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		ms = -12345;
		int rc = config_parse_duration(ok[i].in, &ms);
		if (rc != 0 || ms != ok[i].ms) {
			fprintf(stderr, "duration '%s': rc %d ms %lld, want %lld\n", ok[i].in, rc,
				(long long)ms, (long long)ok[i].ms);
			unit_failures++;
		}
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ms = -12345;
		int rc = config_parse_duration(bad[i], &ms);
		if (rc != -EINVAL || ms != -12345) {
			fprintf(stderr, "duration '%s': rc %d, want -EINVAL and ret untouched\n",
				bad[i], rc);
			unit_failures++;
		}
	}
	CHECK_RC(config_parse_duration(NULL, &ms), -EINVAL);

	/* In YAML: plain 0 and "0" disable retention; negative and junk fail. */
	struct config c;
	if (parses(BASE "data:\n  retention: 0\n", &c))
		CHECK_EQ_U64(c.data.retention_ms, 0);
	config_release(&c);
	if (parses(BASE "data:\n  retention: \"0\"\n  retention-monitor-interval: 1.5s\n", &c)) {
		CHECK_EQ_U64(c.data.retention_ms, 0);
		CHECK_EQ_U64(c.data.retention_monitor_interval_ms, 1500);
	}
	config_release(&c);
	expect_error(BASE "data:\n  retention: 10\n", "line 6: key 'data.retention'",
		     "invalid duration '10'");
	expect_error(BASE "data:\n  retention: ten minutes\n", "key 'data.retention'",
		     "invalid duration");
	expect_error(BASE "data:\n  retention: -1m\n", "key 'data.retention'",
		     "negative duration '-1m'");
	expect_error(BASE "data:\n  retention-monitor-interval: 0s\n",
		     "key 'data.retention-monitor-interval'", "greater than zero");
	expect_error(BASE "data:\n  retention: {a: 1}\n", "key 'data.retention'",
		     "expected a duration, got a mapping");
}

static void test_unsupported_litefs_keys(void)
{
	static const char *const keys[] = {
	    "strict-verify",
	    "proxy.addr",
	    "proxy.target",
	    "proxy.db",
	    "proxy.max-lag",
	    "proxy.debug",
	    "proxy.passthrough",
	    "proxy.always-forward",
	    "proxy.primary-redirect-timeout",
	    "proxy.read-timeout",
	    "proxy.read-header-timeout",
	    "proxy.write-timeout",
	    "proxy.idle-timeout",
	    "backup.url",
	    "backup.cluster",
	    "backup.auth-token",
	    "tracing.enabled",
	    "tracing.path",
	    "tracing.max-size",
	    "tracing.max-count",
	    "tracing.compress",
	    "http.snapshot-timeout",
	    "lease.databases",
	    "log.timestamp",
	};
	char yaml[512], want[256];

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		/* Build "a:\n  b:\n    c: x" from "a.b.c", after a valid base. */
		char *w = yaml;
		const char *k = keys[i];
		int depth = 0;
		w += sprintf(w, "fuse:\n  dir: /litefs\n");
		while (k) {
			const char *dot = strchr(k, '.');
			int len = dot ? (int)(dot - k) : (int)strlen(k);
			w += sprintf(w, "%*s%.*s:%s", depth * 2, "", len, k, dot ? "\n" : " x\n");
			k = dot ? dot + 1 : NULL;
			depth++;
		}
		snprintf(want, sizeof(want),
			 "key '%s' is a LiteFS setting that ltxfs does not support yet", keys[i]);
		expect_error(yaml, want, NULL);
	}
	/* A whole section, empty or not, and a value equal to the default. */
	expect_error(BASE "proxy:\n", "key 'proxy' is a LiteFS setting", NULL);
	expect_error(BASE "proxy: {}\n", "key 'proxy' is a LiteFS setting", NULL);
	expect_error(BASE "backup: litefs-cloud\n", "key 'backup': expected a mapping", NULL);
	expect_error(BASE "strict-verify: false\n", "line 5: key 'strict-verify' is a LiteFS",
		     NULL);
	expect_error(BASE "  databases: [db]\n", "line 5: key 'lease.databases' is a LiteFS", NULL);
	/* Keys LiteFS itself does not know are plain unknown keys. */
	expect_error(BASE "proxy:\n  bogus: 1\n", "unknown key 'proxy.bogus'", NULL);
	expect_error(BASE "backup:\n  delay: 1s\n", "unknown key 'backup.delay'", NULL);
}

static void test_errors(void)
{
	/* Unknown keys, top level and nested, with the line. */
	expect_error(BASE "foo: 1\n", "line 5: unknown key 'foo'", NULL);
	expect_error("fuse:\n  dir: /litefs\n  mountpoint: /x\nlease:\n  type: static\n",
		     "line 3: unknown key 'fuse.mountpoint'", NULL);
	expect_error(BASE "Fuse:\n  dir: /x\n", "unknown key 'Fuse'", NULL);
	expect_error(BASE "fuse.dir: /x\n", "unknown key 'fuse.dir'", NULL);
	expect_error(BASE "<<: {a: b}\n", "unknown key '<<'", NULL);
	expect_error(BASE "? [a, b]\n: c\n", "keys must be strings", NULL);
	expect_error(BASE "data:\n  \"di\\tr\": x\n", "unknown key 'data.di\\tr'", NULL);

	/* Wrong types. */
	expect_error(BASE "data:\n  dir:\n    a: b\n", "line 6: key 'data.dir'",
		     "expected a string, got a mapping");
	expect_error(BASE "data:\n  dir: [a]\n", "key 'data.dir'", "got a list");
	expect_error(BASE "fuse: 5\n", "key 'fuse'", NULL);
	expect_error("fuse: /litefs\nlease:\n  type: static\n", "key 'fuse'",
		     "expected a mapping of settings, got '/litefs'");
	expect_error("fuse: ''\nlease:\n  type: static\n", "key 'fuse'", "got ''");
	expect_error("- fuse\n- lease\n", "at the top level, got a list", NULL);
	expect_error("just a string\n", "at the top level, got 'just a string'", NULL);
	expect_error(BASE "data:\n  dir: !!int abc\n", "key 'data.dir'", "as !!int");
	expect_error(BASE "data:\n  dir: \"/a\\0b\"\n", "key 'data.dir'", "NUL");

	/* Duplicates, in any mapping. */
	expect_error("fuse:\n  dir: /a\n  dir: /b\nlease:\n  type: static\n",
		     "line 3: key 'fuse.dir' is defined twice (first at line 2)", NULL);
	expect_error(BASE "fuse:\n  debug: true\n", "key 'fuse' is defined twice", NULL);
	expect_error(BASE "exec:\n  - cmd: a\n    cmd: b\n", "key 'exec[0].cmd' is defined twice",
		     NULL);

	/* YAML syntax errors carry the line and the column. */
	expect_error("fuse:\n  dir: [a\n", "line 3, column 1: YAML syntax error", NULL);
	expect_error("fuse:\n  dir: /a\n bad: x\n", "line 3, column", "YAML syntax error");
	expect_error("fuse: {dir: *nope}\n", "YAML syntax error", "undefined alias");
	expect_error("a: \"\\q\"\n", "line 1, column", "YAML syntax error");
	expect_error("fuse:\n  dir: /x\x01\n", "line 2, column 10: YAML syntax error", NULL);
	expect_error("fuse:\n\tdir: /x\n", "line 2, column 1: YAML syntax error", NULL);

	/* Required keys. */
	expect_error("lease:\n  type: static\n", "key 'fuse.dir' is required", NULL);
	expect_error("fuse:\n  dir:\nlease:\n  type: static\n", "key 'fuse.dir' is required", NULL);
	expect_error("fuse:\n  dir: /litefs\n", "key 'lease.type' is required",
		     "'static', 'consul' or 'etcd'");
	expect_error("fuse:\n  dir: \"\"\nlease:\n  type: static\n", "key 'fuse.dir'",
		     "must not be empty");
	expect_error(BASE "data:\n  dir: ''\n", "key 'data.dir'", "must not be empty");

	/* lease.type (consul and etcd: see test_lease_*). */
	expect_error("fuse:\n  dir: /l\nlease:\n  type: raft\n",
		     "line 4: key 'lease.type': unknown lease type 'raft'",
		     "allowed: 'static', 'consul', 'etcd'");
	expect_error("fuse:\n  dir: /l\nlease:\n  type: Consul\n", "unknown lease type 'Consul'",
		     NULL);
	expect_error("fuse:\n  dir: /l\nlease:\n  type: ''\n", "unknown lease type ''", NULL);
	expect_error("fuse:\n  dir: /l\nlease:\n  type: Static\n", "unknown lease type 'Static'",
		     NULL);

	/* fuse.dir and data.dir. */
	expect_error(BASE "data:\n  dir: /litefs\n", "'fuse.dir' and 'data.dir'",
		     "different directories");
	expect_error(BASE "data:\n  dir: /litefs/\n", "'fuse.dir' and 'data.dir'", NULL);
	expect_error(BASE "data:\n  dir: //litefs/./x/..\n", "'fuse.dir' and 'data.dir'", NULL);
	expect_error(BASE "data:\n  dir: /litefs/data\n", "key 'data.dir'", "inside fuse.dir");
	expect_error("fuse:\n  dir: /\nlease:\n  type: static\n", "key 'data.dir'",
		     "inside fuse.dir");
	struct config c;
	if (parses(BASE "data:\n  dir: /litefs-data\n", &c))
		CHECK_STR(c.data.dir, "/litefs-data");
	config_release(&c);

	/* log.format, http.addr, advertise-url. */
	expect_error(BASE "log:\n  format: xml\n", "key 'log.format'",
		     "expected 'text' or 'json', got 'xml'");
	expect_error(BASE "http:\n  addr: 20202\n", "key 'http.addr'", "missing port");
	expect_error(BASE "http:\n  addr: \"::1:80\"\n", "key 'http.addr'", "too many colons");
	expect_error(BASE "http:\n  addr: \":http\"\n", "key 'http.addr'", "0 to 65535");
	expect_error(BASE "http:\n  addr: \":65536\"\n", "key 'http.addr'", "0 to 65535");
	expect_error(BASE "http:\n  addr: \"[::1\"\n", "key 'http.addr'", NULL);
	expect_error(BASE "http:\n  addr: ''\n", "key 'http.addr'", NULL);
	expect_error(BASE "http:\n  addr: \":0\"\n", "key 'lease.advertise-url' is required", NULL);
	expect_error(BASE "  advertise-url: primary:20202\n", "key 'lease.advertise-url'",
		     "http:// or https://");

	/* A message never overflows a small buffer, and a NULL buffer is fine. */
	char small[16];
	CHECK(config_init(&c) == 0);
	CHECK_RC(config_parse(&c, PATH, "foo: 1\n", 7, small, sizeof(small)), -EINVAL);
	CHECK(strlen(small) == sizeof(small) - 1);
	CHECK_RC(config_parse(&c, PATH, "foo: 1\n", 7, NULL, 0), -EINVAL);
	CHECK_RC(config_parse(&c, NULL, "foo: 1\n", 7, errbuf, sizeof(errbuf)), -EINVAL);
	CHECK(strstr(errbuf, "<config>: ") == errbuf);
	config_release(&c);

	/* Long values are truncated and control characters escaped in messages. */
	char yaml[512];
	snprintf(yaml, sizeof(yaml), BASE "log:\n  format: \"%0200d\\x01\"\n", 7);
	expect_error(yaml, "key 'log.format'", "...'");
	CHECK(strlen(errbuf) < 200);
}

static void test_failed_parse_leaves_cfg_untouched(void)
{
	struct config c;
	if (!parses(BASE "log:\n  debug: true\n", &c))
		return;
	CHECK_RC(config_parse(&c, PATH, "fuse:\n  dir: /other\n  bogus: 1\n", 31, errbuf,
			      sizeof(errbuf)),
		 -EINVAL);
	CHECK_STR(c.fuse.dir, "/litefs");
	CHECK(c.log.debug == true);
	/* A second successful parse starts from the values already in cfg. */
	const char *more = "fuse:\n  dir: /other\nexec: a b\n";
	CHECK_RC(config_parse(&c, PATH, more, strlen(more), errbuf, sizeof(errbuf)), 0);
	CHECK_STR(c.fuse.dir, "/other");
	CHECK_STR(c.lease.type, "static");
	CHECK(c.log.debug == true);
	CHECK_EQ_U64(c.n_exec, 1);
	/* ... and a failing one keeps the exec list intact. */
	CHECK_RC(config_parse(&c, PATH, "exec: 'x\n", 9, errbuf, sizeof(errbuf)), -EINVAL);
	CHECK_EQ_U64(c.n_exec, 1);
	if (c.n_exec == 1)
		CHECK_STR(c.exec[0].argv[1], "b");
	config_release(&c);
}

static void test_exec(void)
{
	struct config c;
	/* String form, shell-word rules. */
	if (parses(BASE "exec: >-\n  myapp --name 'two words' \"dq \\\"x\\\" $y\" a\\ b ''"
			"  \"\" c'd'\"e\" \\' tab\\\tx\n",
		   &c)) {
		CHECK_EQ_U64(c.n_exec, 1);
		char **a = c.n_exec ? c.exec[0].argv : NULL;
		CHECK_EQ_U64(argc_of(a), 10);
		if (argc_of(a) == 10) {
			CHECK_STR(a[0], "myapp");
			CHECK_STR(a[1], "--name");
			CHECK_STR(a[2], "two words");
			CHECK_STR(a[3], "dq \"x\" $y");
			CHECK_STR(a[4], "a b");
			CHECK_STR(a[5], "");
			CHECK_STR(a[6], "");
			CHECK_STR(a[7], "cde");
			CHECK_STR(a[8], "'");
			CHECK_STR(a[9], "tab\tx");
		}
		CHECK(c.exec[0].if_candidate == false);
	}
	config_release(&c);
	/* Backslashes: literal in single quotes, escape anything elsewhere. */
	if (parses(BASE "exec: 'echo ''a\\b'' \"c\\d\" e\\\\f'\n", &c)) {
		char **a = c.exec[0].argv;
		CHECK_EQ_U64(argc_of(a), 4);
		if (argc_of(a) == 4) {
			CHECK_STR(a[1], "a\\b");
			CHECK_STR(a[2], "cd");
			CHECK_STR(a[3], "e\\f");
		}
	}
	config_release(&c);
	/* List form. */
	if (parses(BASE "exec:\n  - cmd: migrate --up\n    if-candidate: yes\n"
			"  - {cmd: \"serve -p 8080\", if-candidate: false}\n  - cmd: tail\n",
		   &c)) {
		CHECK_EQ_U64(c.n_exec, 3);
		if (c.n_exec == 3) {
			CHECK(c.exec[0].if_candidate && !c.exec[1].if_candidate &&
			      !c.exec[2].if_candidate);
			CHECK_STR(c.exec[0].argv[1], "--up");
			CHECK_STR(c.exec[1].argv[2], "8080");
			CHECK_EQ_U64(argc_of(c.exec[2].argv), 1);
		}
	}
	config_release(&c);
	/* Empty list and null clear exec. */
	if (parses(BASE "exec: []\n", &c))
		CHECK(c.n_exec == 0 && c.exec == NULL);
	config_release(&c);
	if (parses(BASE "exec:\n", &c))
		CHECK(c.n_exec == 0 && c.exec == NULL);
	config_release(&c);
	/* Aliases work. */
	if (parses(BASE "exec:\n  - &m {cmd: run}\n  - *m\n", &c))
		CHECK_EQ_U64(c.n_exec, 2);
	config_release(&c);

	expect_error(BASE "exec: \"run 'me\"\n", "key 'exec'", "unterminated quote");
	expect_error(BASE "exec: 'run \"me'\n", "key 'exec'", "unterminated quote");
	expect_error(BASE "exec: run me\\\n", "key 'exec'", "unterminated backslash");
	expect_error(BASE "exec: \"app > log\"\n", "key 'exec'", "'>' is shell syntax");
	expect_error(BASE "exec: \"a; b\"\n", "key 'exec'", "';' is shell syntax");
	expect_error(BASE "exec: \"a && b\"\n", "key 'exec'", "'&'");
	expect_error(BASE "exec: \"a | b\"\n", "key 'exec'", "'|'");
	expect_error(BASE "exec: \"echo $(date)\"\n", "key 'exec'", "'('");
	expect_error(BASE "exec: \"echo `date`\"\n", "key 'exec'", "'`'");
	expect_error(BASE "exec: \"   \"\n", "key 'exec'", "the command is empty");
	expect_error(BASE "exec: ''\n", "key 'exec'", "the command is empty");
	expect_error(BASE "exec: 123\n", "key 'exec'", "got '123'");
	expect_error(BASE "exec: true\n", "key 'exec'", "got 'true'");
	expect_error(BASE "exec: {cmd: x}\n", "key 'exec'", "got a mapping");
	expect_error(BASE "exec:\n  - run\n", "line 6: key 'exec[0]'", "got 'run'");
	expect_error(BASE "exec:\n  - cmd: a\n  -\n", "key 'exec[1]'", NULL);
	expect_error(BASE "exec:\n  - cmd: a\n  - if-candidate: true\n",
		     "key 'exec[1].cmd' is required", NULL);
	expect_error(BASE "exec:\n  - cmd: a\n    when: x\n", "unknown key 'exec[0].when'", NULL);
	expect_error(BASE "exec:\n  - cmd: a\n    if-candidate: maybe\n",
		     "key 'exec[0].if-candidate'", "got 'maybe'");
	expect_error(BASE "exec:\n  - cmd: [a]\n", "key 'exec[0].cmd'", "got a list");
	expect_error(BASE "exec:\n  - cmd: \"a 'b\"\n", "key 'exec[0].cmd'", "unterminated");
	/* Quoted operators are fine. */
	if (parses(BASE "exec: \"sh -c 'a; b > c'\"\n", &c)) {
		CHECK_EQ_U64(argc_of(c.exec[0].argv), 3);
		CHECK_STR(c.exec[0].argv[2], "a; b > c");
	}
	config_release(&c);
}

static void test_expand_env(void)
{
	setenv("LTXFS_T_FOO", "bar", 1);
	setenv("LTXFS_T_EMPTY", "", 1);
	setenv("LTXFS_T_DOLLAR", "$LTXFS_T_FOO", 1);
	setenv("LTXFS_T_Q", "it's", 1);
	unsetenv("LTXFS_T_UNSET");
	unsetenv("LTXFS_T_UNSET2");

	/* Plain forms. */
	CHECK_EXPAND("", "");
	CHECK_EXPAND("no dollars", "no dollars");
	CHECK_EXPAND("$LTXFS_T_FOO", "bar");
	CHECK_EXPAND("${LTXFS_T_FOO}", "bar");
	CHECK_EXPAND("${ LTXFS_T_FOO }", "bar");
	CHECK_EXPAND("${\tLTXFS_T_FOO\n}", "bar");
	CHECK_EXPAND("${\xc2\xa0LTXFS_T_FOO\xe3\x80\x80}", "bar"); /* Unicode spaces trimmed */
	CHECK_EXPAND("x$LTXFS_T_FOO.y", "xbar.y");
	CHECK_EXPAND("$LTXFS_T_FOO-x", "bar-x");
	CHECK_EXPAND("$LTXFS_T_FOOx", "");
	CHECK_EXPAND("${LTXFS_T_FOO}x", "barx");
	CHECK_EXPAND("$LTXFS_T_FOO$LTXFS_T_FOO", "barbar");
	CHECK_EXPAND("$LTXFS_T_DOLLAR", "$LTXFS_T_FOO"); /* values are not re-expanded */

	/* Unset and empty expand to nothing. */
	CHECK_EXPAND("a${LTXFS_T_UNSET}b", "ab");
	CHECK_EXPAND("a$LTXFS_T_UNSET/b", "a/b");
	CHECK_EXPAND("[$LTXFS_T_EMPTY]", "[]");

	/* '$' handling, as Go's os.Expand. */
	CHECK_EXPAND("$", "$");
	CHECK_EXPAND("cost: 5$", "cost: 5$");
	CHECK_EXPAND("$ x", "$ x");
	CHECK_EXPAND("$.x", "$.x");
	CHECK_EXPAND("a$/b", "a$/b");
	CHECK_EXPAND("$$", "");	  /* "$$" is the special variable '$', unset */
	CHECK_EXPAND("$1x", "x"); /* special variables are one character */
	CHECK_EXPAND("$-x", "x");
	CHECK_EXPAND("${1}", "");
	CHECK_EXPAND("${}", ""); /* bad syntax: eaten */
	CHECK_EXPAND("a${}b", "ab");
	CHECK_EXPAND("${LTXFS_T_FOO", "LTXFS_T_FOO"); /* no '}': "${" eaten */
	CHECK_EXPAND("x${", "x");

	/* Nested braces misuse: the first '}' ends the name. */
	CHECK_EXPAND("${A${LTXFS_T_FOO}}", "}");
	CHECK_EXPAND("${LTXFS_T_FOO == '${LTXFS_T_FOO}'}", "'}");
	CHECK_EXPAND("${{LTXFS_T_FOO}}", "}");
	CHECK_EXPAND("${LTXFS_T FOO}", "");

	/* Expressions. */
	setenv("FLY_REGION", "ord", 1);
	setenv("PRIMARY_REGION", "ord", 1);
	CHECK_EXPAND("${FLY_REGION == PRIMARY_REGION}", "true");
	CHECK_EXPAND("${FLY_REGION != PRIMARY_REGION}", "false");
	CHECK_EXPAND("${ FLY_REGION==PRIMARY_REGION }", "true");
	setenv("PRIMARY_REGION", "iad", 1);
	CHECK_EXPAND("${FLY_REGION == PRIMARY_REGION}", "false");
	CHECK_EXPAND("${FLY_REGION != PRIMARY_REGION}", "true");
	CHECK_EXPAND("${LTXFS_T_UNSET == LTXFS_T_UNSET2}", "true"); /* both "" */
	CHECK_EXPAND("${LTXFS_T_UNSET == LTXFS_T_EMPTY}", "true");
	CHECK_EXPAND("${LTXFS_T_UNSET == FLY_REGION}", "false");
	CHECK_EXPAND("${LTXFS_T_FOO == 'bar'}", "true");
	CHECK_EXPAND("${LTXFS_T_FOO == \"bar\"}", "true");
	CHECK_EXPAND("${LTXFS_T_FOO=='bar'}", "true");
	CHECK_EXPAND("${  LTXFS_T_FOO   !=   \"bar\"  }", "false");
	CHECK_EXPAND("${LTXFS_T_FOO == 'baz'}", "false");
	CHECK_EXPAND("${LTXFS_T_FOO != 'baz'}", "true");
	CHECK_EXPAND("${LTXFS_T_UNSET == ''}", "true");
	CHECK_EXPAND("${LTXFS_T_FOO == ''}", "false");
	CHECK_EXPAND("${LTXFS_T_FOO == 'b r'}", "false");
	CHECK_EXPAND("${LTXFS_T_Q == 'it's'}", "true"); /* greedy literal, as LiteFS's regexp */
	CHECK_EXPAND("${LTXFS_T_FOO == '\"bar\"'}", "false");
	/* Extension: a quoted literal on the left. */
	CHECK_EXPAND("${'bar' == LTXFS_T_FOO}", "true");
	CHECK_EXPAND("${\"x\" != 'x'}", "false");
	CHECK_EXPAND("${'a' == 'b'}", "false");
	/* Not expressions: looked up as names, which contain '=' and so are "". */
	CHECK_EXPAND("${LTXFS_T_FOO = 'bar'}", "");
	CHECK_EXPAND("${LTXFS_T_FOO == 'bar}", "");
	CHECK_EXPAND("${LTXFS_T_FOO == 'bar\"}", "");
	CHECK_EXPAND("${LTXFS_T_FOO == bar baz}", "");
	CHECK_EXPAND("${LTXFS_T_FOO ===  'bar'}", "");
	CHECK_EXPAND("${LTXFS-T == 'x'}", "");
	CHECK_EXPAND("${== 'x'}", "");
	CHECK_EXPAND("${LTXFS_T_FOO ==}", "");
	CHECK_EXPAND("${LTXFS_T_FOO == 'a\nb'}", "");
	CHECK_EXPAND("${LTXFS_T_FOO\v== 'bar'}", ""); /* RE2's \s has no \v */
	CHECK_EXPAND("$LTXFS_T_FOO == 'bar'", "bar == 'bar'");

	/* $HOSTNAME falls back to the host name, as LiteFS sets it before reading. */
	char *saved = getenv("HOSTNAME") ? strdup(getenv("HOSTNAME")) : NULL;
	unsetenv("HOSTNAME");
	CHECK_EXPAND("$HOSTNAME", hostname());
	setenv("HOSTNAME", "from-env", 1);
	CHECK_EXPAND("${HOSTNAME}", "from-env");
	if (saved)
		setenv("HOSTNAME", saved, 1);
	else
		unsetenv("HOSTNAME");
	free(saved);

	/* The Fly.io pattern, end to end. */
	static const char fly[] = "fuse:\n  dir: \"${LTXFS_T_MNT}\"\n"
				  "lease:\n  type: static\n"
				  "  candidate: ${FLY_REGION == PRIMARY_REGION}\n"
				  "  advertise-url: \"http://${PRIMARY_REGION}.primary:20202\"\n"
				  "  hostname: ${LTXFS_T_UNSET}\n";
	setenv("LTXFS_T_MNT", "/mnt/fly", 1);
	struct config c;
	char *x = expand(fly);
	if (parses(x, &c)) {
		CHECK_STR(c.fuse.dir, "/mnt/fly");
		CHECK(c.lease.candidate == false);
		CHECK_STR(c.lease.advertise_url, "http://iad.primary:20202");
		CHECK_STR(c.lease.hostname, hostname());
	}
	config_release(&c);
	free(x);
	setenv("PRIMARY_REGION", "ord", 1);
	x = expand(fly);
	if (parses(x, &c))
		CHECK(c.lease.candidate == true);
	config_release(&c);
	free(x);

	/* "candidate: ${UNSET}" is a null value: the default (true) stays. */
	x = expand(BASE "  candidate: ${LTXFS_T_UNSET}\n");
	if (parses(x, &c))
		CHECK(c.lease.candidate == true);
	config_release(&c);
	free(x);
}

/* Write content to dir/name; return the path in buf. */
static const char *write_file(const char *dir, const char *name, const char *content, size_t len,
			      char *buf, size_t buflen)
{
	snprintf(buf, buflen, "%s/%s", dir, name);
	FILE *f = fopen(buf, "wb");
	if (!f) {
		perror(buf);
		exit(1);
	}
	fwrite(content, 1, len, f);
	fclose(f);
	return buf;
}

static void test_load(void)
{
	char dir[] = "/tmp/ltxfs-test-config-XXXXXX", path[PATH_MAX];
	struct config c;
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		unit_failures++;
		return;
	}
	setenv("LTXFS_T_DIR", "/mnt/env", 1);
	static const char yml[] = "fuse:\n  dir: $LTXFS_T_DIR\nlease:\n  type: static\n";
	write_file(dir, "litefs.yml", yml, strlen(yml), path, sizeof(path));

	CHECK_RC(config_init(&c), 0);
	CHECK_RC(config_load(&c, path, true, errbuf, sizeof(errbuf)), 0);
	CHECK_STR(c.path, path);
	CHECK_STR(c.fuse.dir, "/mnt/env");
	config_release(&c);

	CHECK_RC(config_init(&c), 0);
	CHECK_RC(config_load(&c, path, false, errbuf, sizeof(errbuf)), 0);
	CHECK_STR(c.fuse.dir, "$LTXFS_T_DIR"); /* -no-expand-env */
	config_release(&c);

	/* Errors name the path. */
	static const char bad[] = "fuse:\n  dir: /x\n  debug: sure\nlease:\n  type: static\n";
	write_file(dir, "bad.yml", bad, strlen(bad), path, sizeof(path));
	CHECK_RC(config_init(&c), 0);
	CHECK_RC(config_load(&c, path, true, errbuf, sizeof(errbuf)), -EINVAL);
	CHECK(strstr(errbuf, path) == errbuf && strstr(errbuf, "line 3: key 'fuse.debug'"));
	CHECK(c.path == NULL);
	config_release(&c);

	snprintf(path, sizeof(path), "%s/missing.yml", dir);
	CHECK_RC(config_init(&c), 0);
	CHECK_RC(config_load(&c, path, true, errbuf, sizeof(errbuf)), -ENOENT);
	CHECK(strstr(errbuf, path) == errbuf && strstr(errbuf, "cannot open"));
	CHECK_RC(config_load(&c, dir, true, errbuf, sizeof(errbuf)), -EISDIR);
	CHECK(strstr(errbuf, dir) == errbuf);
	CHECK_RC(config_load(&c, NULL, true, errbuf, sizeof(errbuf)), -EINVAL);
	config_release(&c);

	write_file(dir, "nul.yml", "fuse:\n  dir: /x\0\n", 17, path, sizeof(path));
	CHECK_RC(config_init(&c), 0);
	CHECK_RC(config_load(&c, path, true, errbuf, sizeof(errbuf)), -EINVAL);
	CHECK(strstr(errbuf, "NUL byte") != NULL);
	config_release(&c);

	/* Bounded: more than 1 MiB is refused. */
	size_t big = 1024 * 1024 + 10;
	char *content = malloc(big);
	memset(content, '#', big);
	write_file(dir, "big.yml", content, big, path, sizeof(path));
	free(content);
	CHECK_RC(config_init(&c), 0);
	CHECK_RC(config_load(&c, path, true, errbuf, sizeof(errbuf)), -EFBIG);
	config_release(&c);

	/* A file of exactly 0 bytes is an empty config. */
	write_file(dir, "empty.yml", "", 0, path, sizeof(path));
	CHECK_RC(config_init(&c), 0);
	CHECK_RC(config_load(&c, path, true, errbuf, sizeof(errbuf)), -EINVAL);
	CHECK(strstr(errbuf, "key 'fuse.dir' is required") != NULL);
	config_release(&c);

	const char *names[] = {"litefs.yml", "bad.yml", "nul.yml", "big.yml", "empty.yml"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}

/* ------------------------------------------------------------------------ */
/* Lease backends                                                           */
/* ------------------------------------------------------------------------ */

/* Valid consul and etcd bases (7 and 6 lines); more lease keys can follow. */
#define CONSUL                                                                                     \
	"fuse:\n  dir: /litefs\nlease:\n  type: consul\n  consul:\n    url: "                      \
	"http://localhost:8500\n"                                                                  \
	"    key: litefs/primary\n"
#define ETCD                                                                                       \
	"fuse:\n  dir: /litefs\nlease:\n  type: etcd\n  etcd:\n    endpoints: "                    \
	"[http://127.0.0.1:2379]\n"

static void test_lease_common(void)
{
	struct config c;
	/* Defaults with each backend; static leaves the backend settings alone. */
	if (parses(BASE, &c)) {
		CHECK(c.lease.promote == false);
		CHECK_EQ_U64(c.lease.reconnect_delay_ms, 1000);
		CHECK_EQ_U64(c.lease.demote_delay_ms, 10000);
		CHECK(c.lease.consul.url == NULL && c.lease.consul.key == NULL);
		CHECK(c.lease.etcd.endpoints == NULL && c.lease.etcd.key == NULL);
	}
	config_release(&c);

	if (parses(BASE "  promote: false\n  reconnect-delay: 2s\n  demote-delay: 0\n", &c)) {
		CHECK(c.lease.promote == false);
		CHECK_EQ_U64(c.lease.reconnect_delay_ms, 2000);
		CHECK_EQ_U64(c.lease.demote_delay_ms, 0);
	}
	config_release(&c);
	if (parses(CONSUL "  promote: true\n  reconnect-delay: 250ms\n  demote-delay: 1m\n", &c)) {
		CHECK(c.lease.promote == true);
		CHECK_EQ_U64(c.lease.reconnect_delay_ms, 250);
		CHECK_EQ_U64(c.lease.demote_delay_ms, 60000);
	}
	config_release(&c);
	if (parses(ETCD "  promote: yes\n", &c))
		CHECK(c.lease.promote == true);
	config_release(&c);
	/* Nulls keep the defaults. */
	if (parses(CONSUL "  promote:\n  reconnect-delay: ~\n  demote-delay: null\n", &c)) {
		CHECK(c.lease.promote == false);
		CHECK_EQ_U64(c.lease.reconnect_delay_ms, 1000);
		CHECK_EQ_U64(c.lease.demote_delay_ms, 10000);
	}
	config_release(&c);

	/*
	 * LiteFS asks for a handoff only on candidates and ignores promote
	 * elsewhere, so the Fly pattern (candidate from the region, promote:
	 * true) loads on every node; the flag reads false on non-candidates.
	 */
	if (parses(CONSUL "  candidate: false\n  promote: true\n", &c)) {
		CHECK(c.lease.candidate == false);
		CHECK(c.lease.promote == false);
	}
	config_release(&c);

	expect_error(BASE "  promote: true\n",
		     "line 5: key 'lease.promote': handoff needs a consul or etcd lease",
		     "lease.type is 'static'");
	expect_error(BASE "  candidate: false\n  advertise-url: http://p:20202\n  promote: on\n",
		     "line 7: key 'lease.promote': handoff needs a consul or etcd lease", NULL);
	expect_error(BASE "  promote: maybe\n", "line 5: key 'lease.promote'",
		     "expected a boolean (true or false), got 'maybe'");
	expect_error(BASE "  reconnect-delay: 0\n", "line 5: key 'lease.reconnect-delay'",
		     "greater than zero");
	expect_error(BASE "  reconnect-delay: 5\n", "key 'lease.reconnect-delay'",
		     "invalid duration '5'");
	expect_error(BASE "  demote-delay: -10s\n", "line 5: key 'lease.demote-delay'",
		     "negative duration '-10s'");
	expect_error(BASE "  demote-delay: [1s]\n", "key 'lease.demote-delay'",
		     "expected a duration, got a list");
}

static void test_lease_consul(void)
{
	struct config c;
	char want[600];
	if (parses(CONSUL, &c)) {
		CHECK_STR(c.lease.type, "consul");
		CHECK(c.lease.candidate == true && c.lease.promote == false);
		CHECK_STR(c.lease.consul.url, "http://localhost:8500");
		CHECK_STR(c.lease.consul.key, "litefs/primary");
		CHECK_EQ_U64(c.lease.consul.ttl_ms, 10000);
		CHECK_EQ_U64(c.lease.consul.lock_delay_ms, 1000);
		CHECK(c.lease.etcd.endpoints == NULL && c.lease.etcd.n_endpoints == 0);
		CHECK(c.lease.etcd.key == NULL);
		CHECK_STR(c.lease.hostname, hostname());
		snprintf(want, sizeof(want), "http://%s:20202", hostname());
		CHECK_STR(c.lease.advertise_url, want);
	}
	config_release(&c);
	/* A non-candidate keeps the derived advertise URL (it is its own, not the primary's). */
	if (parses(CONSUL "  candidate: false\n", &c)) {
		snprintf(want, sizeof(want), "http://%s:20202", hostname());
		CHECK_STR(c.lease.advertise_url, want);
	}
	config_release(&c);
	if (parses(CONSUL "    ttl: 15s\n    lock-delay: 0\n", &c)) {
		CHECK_EQ_U64(c.lease.consul.ttl_ms, 15000);
		CHECK_EQ_U64(c.lease.consul.lock_delay_ms, 0);
	}
	config_release(&c);
	if (parses(CONSUL "    ttl: 1m\n    lock-delay: 250ms\n", &c)) {
		CHECK_EQ_U64(c.lease.consul.ttl_ms, 60000);
		CHECK_EQ_U64(c.lease.consul.lock_delay_ms, 250);
	}
	config_release(&c);
	/* A token and a key prefix in the URL are kept as written; nulls keep defaults. */
	if (parses("fuse: {dir: /l}\nlease:\n  type: consul\n  consul:\n"
		   "    url: \"https://:s3cret@consul-iad-11.fly-shared.net/myapp-1x2/\"\n"
		   "    key: \"litefs/myapp\"\n    ttl: ~\n    lock-delay:\n",
		   &c)) {
		CHECK_STR(c.lease.consul.url,
			  "https://:s3cret@consul-iad-11.fly-shared.net/myapp-1x2/");
		CHECK_STR(c.lease.consul.key, "litefs/myapp");
		CHECK_EQ_U64(c.lease.consul.ttl_ms, 10000);
		CHECK_EQ_U64(c.lease.consul.lock_delay_ms, 1000);
	}
	config_release(&c);
	/* The section may come before lease.type; an empty section is nothing. */
	if (parses("fuse: {dir: /l}\nlease:\n  consul: {url: 'HTTP://c:8500', key: k}\n"
		   "  type: consul\n",
		   &c))
		CHECK_STR(c.lease.consul.url, "HTTP://c:8500");
	config_release(&c);
	if (parses(BASE "  consul: {}\n", &c))
		CHECK(c.lease.consul.url == NULL);
	config_release(&c);
	if (parses(BASE "  consul:\n", &c))
		CHECK(c.lease.consul.url == NULL);
	config_release(&c);

	/* Required keys. */
	static const char need_url[] =
	    "key 'lease.consul.url' is required with 'lease.type: consul'";
	static const char need_key[] =
	    "key 'lease.consul.key' is required with 'lease.type: consul'";
	expect_error("fuse: {dir: /l}\nlease:\n  type: consul\n", need_url, NULL);
	expect_error("fuse: {dir: /l}\nlease:\n  type: consul\n  consul:\n", need_url, NULL);
	expect_error("fuse: {dir: /l}\nlease:\n  type: consul\n  consul:\n    key: k\n", need_url,
		     NULL);
	expect_error(
	    "fuse: {dir: /l}\nlease:\n  type: consul\n  consul:\n    url: ''\n    key: k\n",
	    need_url, NULL);
	expect_error("fuse: {dir: /l}\nlease:\n  type: consul\n  consul:\n    url: http://c\n",
		     need_key, NULL);
	expect_error("fuse: {dir: /l}\nlease:\n  type: consul\n  consul:\n    url: http://c\n"
		     "    key: \"\"\n",
		     need_key, NULL);

	/* Values. */
	expect_error("fuse: {dir: /l}\nlease:\n  type: consul\n  consul:\n    url: localhost:8500\n"
		     "    key: k\n",
		     "line 5: key 'lease.consul.url': expected an http:// or https:// URL",
		     "got 'localhost:8500'");
	/* A URL with credentials is never echoed. */
	expect_error("fuse: {dir: /l}\nlease:\n  type: consul\n  consul:\n"
		     "    url: consul://:s3cret@host/\n    key: k\n",
		     "line 5: key 'lease.consul.url'", "not shown");
	CHECK(strstr(errbuf, "s3cret") == NULL);
	expect_error(CONSUL "    ttl: 0\n", "line 8: key 'lease.consul.ttl'", "greater than zero");
	expect_error(CONSUL "    ttl: 0s\n", "key 'lease.consul.ttl'", "greater than zero");
	expect_error(CONSUL "    ttl: 10\n", "key 'lease.consul.ttl'", "invalid duration '10'");
	expect_error(CONSUL "    lock-delay: -1s\n", "line 8: key 'lease.consul.lock-delay'",
		     "negative duration");
	expect_error(CONSUL "    key: [a]\n", "key 'lease.consul.key' is defined twice", NULL);
	expect_error("fuse: {dir: /l}\nlease:\n  type: consul\n  consul:\n    url: http://c\n"
		     "    key: [a]\n",
		     "key 'lease.consul.key'", "expected a string, got a list");
	expect_error(CONSUL "    token: x\n", "line 8: unknown key 'lease.consul.token'", NULL);
	expect_error(BASE "  consul: yes\n", "line 5: key 'lease.consul'",
		     "expected a mapping of settings");

	/* Consul settings with another lease type, wherever they are written. */
	expect_error(BASE "  consul:\n    url: http://localhost:8500\n",
		     "line 6: key 'lease.consul.url' is set but lease.type is 'static'", NULL);
	expect_error("fuse: {dir: /l}\nlease:\n  consul:\n    ttl: 15s\n  type: static\n",
		     "line 4: key 'lease.consul.ttl' is set but lease.type is 'static'", NULL);
	expect_error(ETCD "  consul:\n    key: k\n",
		     "line 8: key 'lease.consul.key' is set but lease.type is 'etcd'", NULL);
	expect_error(BASE "  consul:\n    lock-delay:\n", "key 'lease.consul.lock-delay' is set",
		     NULL);
}

static void test_lease_etcd(void)
{
	struct config c;
	char want[600];
	if (parses(ETCD, &c)) {
		CHECK_STR(c.lease.type, "etcd");
		CHECK_EQ_U64(c.lease.etcd.n_endpoints, 1);
		CHECK_STR(c.lease.etcd.endpoints[0], "http://127.0.0.1:2379");
		CHECK(c.lease.etcd.endpoints[1] == NULL);
		CHECK_STR(c.lease.etcd.key, "ltxfs/primary");
		CHECK_EQ_U64(c.lease.etcd.ttl_ms, 10000);
		CHECK(c.lease.etcd.username == NULL && c.lease.etcd.password == NULL);
		CHECK(c.lease.consul.url == NULL && c.lease.consul.key == NULL);
		snprintf(want, sizeof(want), "http://%s:20202", hostname());
		CHECK_STR(c.lease.advertise_url, want);
	}
	config_release(&c);

	/* List forms. */
	static const char *const lists[] = {
	    "[http://a:2379, 'https://b:2379', HTTP://c:2379]",
	    "\n      - http://a:2379\n      - \"https://b:2379\"\n      - HTTP://c:2379",
	    "\"http://a:2379,https://b:2379,HTTP://c:2379\"",
	    "' http://a:2379 ,\thttps://b:2379 , HTTP://c:2379 '",
	    "http://a:2379,https://b:2379, HTTP://c:2379",
	};
	char yaml[512];
	for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
		snprintf(yaml, sizeof(yaml),
			 "fuse: {dir: /l}\nlease:\n  type: etcd\n  etcd:\n    endpoints: %s\n",
			 lists[i]);
		if (parses(yaml, &c)) {
			CHECK_EQ_U64(c.lease.etcd.n_endpoints, 3);
			if (c.lease.etcd.n_endpoints == 3) {
				CHECK_STR(c.lease.etcd.endpoints[0], "http://a:2379");
				CHECK_STR(c.lease.etcd.endpoints[1], "https://b:2379");
				CHECK_STR(c.lease.etcd.endpoints[2], "HTTP://c:2379");
				CHECK(c.lease.etcd.endpoints[3] == NULL);
			}
		}
		config_release(&c);
	}
	/* One URL in a plain string. */
	if (parses(
		"fuse: {dir: /l}\nlease:\n  type: etcd\n  etcd:\n    endpoints: https://e:2379\n",
		&c)) {
		CHECK_EQ_U64(c.lease.etcd.n_endpoints, 1);
		CHECK_STR(c.lease.etcd.endpoints[0], "https://e:2379");
	}
	config_release(&c);
	/* The comma form is what an environment variable gives. */
	setenv("LTXFS_T_ETCD", "http://e1:2379,http://e2:2379", 1);
	char *x = expand("fuse: {dir: /l}\nlease:\n  type: etcd\n  etcd:\n"
			 "    endpoints: \"${LTXFS_T_ETCD}\"\n");
	if (parses(x, &c)) {
		CHECK_EQ_U64(c.lease.etcd.n_endpoints, 2);
		if (c.lease.etcd.n_endpoints == 2)
			CHECK_STR(c.lease.etcd.endpoints[1], "http://e2:2379");
	}
	config_release(&c);
	free(x);

	/* Every key. */
	if (parses(ETCD "    key: myapp/lock\n    ttl: 5s\n    username: root\n"
			"    password: \"p@ss: word\"\n",
		   &c)) {
		CHECK_STR(c.lease.etcd.key, "myapp/lock");
		CHECK_EQ_U64(c.lease.etcd.ttl_ms, 5000);
		CHECK_STR(c.lease.etcd.username, "root");
		CHECK_STR(c.lease.etcd.password, "p@ss: word");
	}
	config_release(&c);
	if (parses(ETCD "    ttl: 1s\n    username: root\n    key: ''\n", &c)) {
		CHECK_EQ_U64(c.lease.etcd.ttl_ms, 1000);
		CHECK_STR(c.lease.etcd.username, "root");
		CHECK(c.lease.etcd.password == NULL);
		CHECK_STR(c.lease.etcd.key, "ltxfs/primary"); /* empty means the default */
	}
	config_release(&c);

	/* At least one endpoint. */
	static const char need[] = "key 'lease.etcd.endpoints' is required with 'lease.type: etcd'";
	expect_error("fuse: {dir: /l}\nlease:\n  type: etcd\n", need, NULL);
	expect_error("fuse: {dir: /l}\nlease:\n  type: etcd\n  etcd:\n    key: k\n", need, NULL);
	expect_error("fuse: {dir: /l}\nlease:\n  type: etcd\n  etcd:\n    endpoints: []\n", need,
		     NULL);
	expect_error("fuse: {dir: /l}\nlease:\n  type: etcd\n  etcd:\n    endpoints:\n", need,
		     NULL);
	expect_error("fuse: {dir: /l}\nlease:\n  type: etcd\n  etcd:\n    endpoints: ''\n", need,
		     NULL);
	x = expand("fuse: {dir: /l}\nlease:\n  type: etcd\n  etcd:\n"
		   "    endpoints: \"${LTXFS_T_UNSET}\"\n");
	expect_error(x, need, NULL);
	free(x);

	/* Bad endpoints name the item and its line. */
#define ETCD_EP "fuse: {dir: /l}\nlease:\n  type: etcd\n  etcd:\n    endpoints:"
	expect_error(ETCD_EP " [localhost:2379]\n", "line 5: key 'lease.etcd.endpoints[0]'",
		     "expected an http:// or https:// URL, got 'localhost:2379'");
	expect_error(ETCD_EP "\n      - http://a:2379\n      - ftp://b\n",
		     "line 7: key 'lease.etcd.endpoints[1]'", "got 'ftp://b'");
	expect_error(ETCD_EP " [http://a, ~]\n", "key 'lease.etcd.endpoints[1]'",
		     "expected an http:// or https:// URL, got '~'");
	expect_error(ETCD_EP " [http://a, '']\n", "key 'lease.etcd.endpoints[1]'", "got ''");
	expect_error(ETCD_EP " [http://a, [http://b]]\n", "key 'lease.etcd.endpoints[1]'",
		     "expected a string, got a list");
	expect_error(ETCD_EP " ['http://a,http://b']\n", "key 'lease.etcd.endpoints[0]'",
		     "one URL per list item");
	expect_error(ETCD_EP " 'http://a,,http://b'\n", "line 5: key 'lease.etcd.endpoints'",
		     "empty URL in the comma-separated list");
	expect_error(ETCD_EP " 'http://a, '\n", "key 'lease.etcd.endpoints'", "empty URL");
	expect_error(ETCD_EP " ',http://a'\n", "key 'lease.etcd.endpoints'", "empty URL");
	expect_error(ETCD_EP " 'http://a, b:2379'\n", "line 5: key 'lease.etcd.endpoints'",
		     "URLs separated by commas, got 'b:2379'");
	expect_error(ETCD_EP " 2379\n", "key 'lease.etcd.endpoints'", "got '2379'");
	expect_error(ETCD_EP " {a: b}\n", "line 5: key 'lease.etcd.endpoints'",
		     "expected a list of URLs or a comma-separated string, got a mapping");
	expect_error(ETCD_EP " \"http://a\\0\"\n", "key 'lease.etcd.endpoints'", "NUL");
	expect_error(ETCD_EP " !!int http://a\n", "key 'lease.etcd.endpoints'", "as !!int");
#undef ETCD_EP

	/* ttl, credentials, unknown keys. */
	expect_error(ETCD "    ttl: 500ms\n", "line 7: key 'lease.etcd.ttl'", "at least 1s");
	expect_error(ETCD "    ttl: 0\n", "key 'lease.etcd.ttl'", "at least 1s");
	expect_error(ETCD "    ttl: 2\n", "key 'lease.etcd.ttl'", "invalid duration");
	expect_error(ETCD "    password: pw\n",
		     "key 'lease.etcd.password' is set without lease.etcd.username", NULL);
	expect_error(ETCD "    password: pw\n    username: ''\n",
		     "key 'lease.etcd.password' is set without lease.etcd.username", NULL);
	expect_error(ETCD "    username: {a: b}\n", "key 'lease.etcd.username'",
		     "expected a string, got a mapping");
	expect_error(ETCD "    cert: x\n", "line 7: unknown key 'lease.etcd.cert'", NULL);
	expect_error(BASE "  etcd: [http://a]\n", "line 5: key 'lease.etcd'",
		     "expected a mapping of settings, got a list");

	/* etcd settings with another lease type. */
	expect_error(CONSUL "  etcd:\n    endpoints: [http://127.0.0.1:2379]\n",
		     "line 9: key 'lease.etcd.endpoints' is set but lease.type is 'consul'", NULL);
	expect_error(BASE "  etcd:\n    key: k\n    ttl: 5s\n",
		     "line 6: key 'lease.etcd.key' is set but lease.type is 'static'", NULL);
	if (parses(BASE "  etcd: {}\n", &c))
		CHECK(c.lease.etcd.n_endpoints == 0 && c.lease.etcd.key == NULL);
	config_release(&c);
}

/* Parsing on top of an existing config deep-copies, replaces and frees the lease settings. */
static void test_lease_reparse(void)
{
	struct config c;
	if (!parses(ETCD "    username: u\n    password: p\n", &c))
		return;
	const char *more = "log:\n  debug: true\n";
	CHECK_RC(config_parse(&c, PATH, more, strlen(more), errbuf, sizeof(errbuf)), 0);
	CHECK_EQ_U64(c.lease.etcd.n_endpoints, 1);
	CHECK_STR(c.lease.etcd.endpoints[0], "http://127.0.0.1:2379");
	CHECK_STR(c.lease.etcd.password, "p");
	/* A new list replaces the old one. */
	more = "lease:\n  etcd:\n    endpoints: http://x:1,http://y:2\n";
	CHECK_RC(config_parse(&c, PATH, more, strlen(more), errbuf, sizeof(errbuf)), 0);
	CHECK_EQ_U64(c.lease.etcd.n_endpoints, 2);
	/* Clearing it fails validation and leaves cfg as it was. */
	more = "lease:\n  etcd:\n    endpoints: ~\n";
	CHECK_RC(config_parse(&c, PATH, more, strlen(more), errbuf, sizeof(errbuf)), -EINVAL);
	CHECK(strstr(errbuf, "key 'lease.etcd.endpoints' is required") != NULL);
	CHECK_EQ_U64(c.lease.etcd.n_endpoints, 2);
	if (c.lease.etcd.n_endpoints == 2)
		CHECK_STR(c.lease.etcd.endpoints[1], "http://y:2");
	config_release(&c);
	CHECK(c.lease.etcd.endpoints == NULL && c.lease.etcd.n_endpoints == 0);

	if (!parses(CONSUL, &c))
		return;
	more = "lease:\n  consul:\n    key: other\n";
	CHECK_RC(config_parse(&c, PATH, more, strlen(more), errbuf, sizeof(errbuf)), 0);
	CHECK_STR(c.lease.consul.url, "http://localhost:8500");
	CHECK_STR(c.lease.consul.key, "other");
	config_release(&c);
}

/* The LiteFS getting-started-fly config, through config_load with env expansion. */
static void test_lease_fly(void)
{
	static const char yml[] = "fuse:\n"
				  "  dir: \"/litefs\"\n"
				  "\n"
				  "data:\n"
				  "  dir: \"/var/lib/litefs\"\n"
				  "\n"
				  "exit-on-error: false\n"
				  "\n"
				  "exec:\n"
				  "  - cmd: \"bin/rails db:prepare\"\n"
				  "    if-candidate: true\n"
				  "  - cmd: \"bin/rails server\"\n"
				  "\n"
				  "lease:\n"
				  "  type: \"consul\"\n"
				  "  candidate: ${FLY_REGION == PRIMARY_REGION}\n"
				  "  promote: true\n"
				  "  advertise-url: "
				  "\"http://${FLY_ALLOC_ID}.vm.${FLY_APP_NAME}.internal:20202\"\n"
				  "\n"
				  "  consul:\n"
				  "    url: \"${FLY_CONSUL_URL}\"\n"
				  "    key: \"litefs/${FLY_APP_NAME}\"\n";
	char dir[] = "/tmp/ltxfs-test-fly-XXXXXX", path[PATH_MAX];
	struct config c;
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		unit_failures++;
		return;
	}
	write_file(dir, "litefs.yml", yml, strlen(yml), path, sizeof(path));
	setenv("FLY_APP_NAME", "myapp", 1);
	setenv("FLY_ALLOC_ID", "e784079b449483", 1);
	setenv("FLY_CONSUL_URL", "https://:tok3n@consul-iad-11.fly-shared.net/myapp-1x2y3z/", 1);
	setenv("FLY_REGION", "ord", 1);
	setenv("PRIMARY_REGION", "ord", 1);

	CHECK_RC(config_init(&c), 0);
	CHECK_RC(config_load(&c, path, true, errbuf, sizeof(errbuf)), 0);
	CHECK_STR(c.lease.type, "consul");
	CHECK(c.lease.candidate == true && c.lease.promote == true);
	CHECK_STR(c.lease.advertise_url, "http://e784079b449483.vm.myapp.internal:20202");
	CHECK_STR(c.lease.consul.url, "https://:tok3n@consul-iad-11.fly-shared.net/myapp-1x2y3z/");
	CHECK_STR(c.lease.consul.key, "litefs/myapp");
	CHECK_EQ_U64(c.lease.consul.ttl_ms, 10000);
	CHECK_EQ_U64(c.lease.consul.lock_delay_ms, 1000);
	CHECK_STR(c.lease.hostname, hostname());
	CHECK(c.exit_on_error == false && c.n_exec == 2);
	config_release(&c);

	/* A replica in another region: not a candidate, so no promotion. */
	setenv("FLY_REGION", "syd", 1);
	CHECK_RC(config_init(&c), 0);
	CHECK_RC(config_load(&c, path, true, errbuf, sizeof(errbuf)), 0);
	CHECK(c.lease.candidate == false && c.lease.promote == false);
	CHECK_STR(c.lease.consul.key, "litefs/myapp");
	config_release(&c);

	/* Outside Fly the Consul URL is unset: the message says what is missing. */
	unsetenv("FLY_CONSUL_URL");
	CHECK_RC(config_init(&c), 0);
	CHECK_RC(config_load(&c, path, true, errbuf, sizeof(errbuf)), -EINVAL);
	CHECK(strstr(errbuf, path) == errbuf);
	CHECK(strstr(errbuf, "key 'lease.consul.url' is required with 'lease.type: consul'"));
	config_release(&c);

	unlink(path);
	rmdir(dir);
}

static void test_find(void)
{
	char dir[] = "/tmp/ltxfs-test-find-XXXXXX", path[PATH_MAX], want[PATH_MAX * 2];
	char *old = getcwd(NULL, 0), *found = NULL;
	if (!mkdtemp(dir) || !old || chdir(dir) < 0) {
		perror("test_find setup");
		unit_failures++;
		free(old);
		return;
	}
	char *cwd = getcwd(NULL, 0); /* dir, with symlinks resolved */

	bool etc = access("/etc/ltxfs.yml", F_OK) == 0 || access("/etc/litefs.yml", F_OK) == 0;
	if (!etc)
		CHECK_RC(config_find(&found), -ENOENT);

	write_file(dir, "litefs.yml", "x", 1, path, sizeof(path));
	CHECK_RC(config_find(&found), 0);
	snprintf(want, sizeof(want), "%s/litefs.yml", cwd);
	CHECK_STR(found, want);
	free(found);
	found = NULL;

	write_file(dir, "ltxfs.yml", "x", 1, path, sizeof(path));
	CHECK_RC(config_find(&found), 0);
	snprintf(want, sizeof(want), "%s/ltxfs.yml", cwd);
	CHECK_STR(found, want);
	free(found);

	unlink(path);
	snprintf(path, sizeof(path), "%s/litefs.yml", dir);
	unlink(path);
	if (chdir(old) < 0)
		perror("chdir");
	rmdir(dir);
	free(cwd);
	free(old);
}

/* ------------------------------------------------------------------------ */
/* The effective configuration: config_dump and config_log_line             */
/* ------------------------------------------------------------------------ */

static char *dump_of(const struct config *c)
{
	char *s = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&s, &n);
	if (!f) {
		fprintf(stderr, "open_memstream failed\n");
		exit(1);
	}
	config_dump(c, f);
	fclose(f);
	return s;
}

/*
 * The dump's YAML as "dotted.key=value" pairs joined by spaces: what the log
 * line must be. A section names the keys below it; a list item ("- x")
 * repeats the key of its list.
 */
static char *pairs_of_dump(char *yaml)
{
	char sect[4][64] = {"", "", "", ""}, *out = NULL;
	size_t outlen = 0;
	FILE *o = open_memstream(&out, &outlen);
	bool first = true;
	for (char *line = yaml, *nl; line && *line; line = nl ? nl + 1 : NULL) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		size_t ind = strspn(line, " "), lvl = ind / 2;
		char *k = line + ind, *colon = strstr(k, ": ");
		size_t kl = strlen(k);
		if (k[0] == '#' || kl == 0 || lvl > 3)
			continue;
		if (k[0] == '-') { /* an item of the list one level up */
			fprintf(o, "%s", first ? "" : " ");
			for (size_t l = 0; l < lvl; l++)
				fprintf(o, "%s%s", l ? "." : "", sect[l]);
			fprintf(o, "=%s", k + 2);
		} else if (!colon && k[kl - 1] == ':') {
			snprintf(sect[lvl], sizeof(sect[lvl]), "%.*s", (int)kl - 1, k);
			continue;
		} else {
			fprintf(o, "%s", first ? "" : " ");
			for (size_t l = 0; l < lvl; l++)
				fprintf(o, "%s.", sect[l]);
			fprintf(o, "%.*s=%s", (int)(colon - k), k, colon + 2);
		}
		first = false;
	}
	fclose(o);
	return out;
}

/* The log line holds exactly the dump's keys and values, in the same order. */
static void check_line_matches_dump(const struct config *c)
{
	char *yaml = dump_of(c), *want = pairs_of_dump(yaml), *line = NULL;
	CHECK_RC(config_log_line(c, &line), 0);
	if (line && strcmp(line, want) != 0) {
		fprintf(stderr, "log line:\n%s\nwant (from the dump):\n%s\n", line, want);
		unit_failures++;
	}
	/* Key by key, so that a failure names the key. */
	for (char *p = want, *next; p && *p; p = next) {
		next = strstr(p, " ");
		while (next && !(next[1] >= 'a' && next[1] <= 'z'))
			next = strstr(next + 1, " ");
		size_t n = next ? (size_t)(next - p) : strlen(p);
		if (line && !memmem(line, strlen(line), p, n)) {
			fprintf(stderr, "log line lacks '%.*s'\n", (int)n, p);
			unit_failures++;
		}
		if (next)
			next++;
	}
	free(line);
	free(want);
	free(yaml);
}

static bool line_has(const char *line, const char *pair)
{
	size_t n = strlen(pair);
	for (const char *p = line; (p = strstr(p, pair)) != NULL; p++)
		if ((p == line || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
			return true;
	return false;
}

#define CHECK_LINE_HAS(line, pair)                                                                 \
	do {                                                                                       \
		if (!(line) || !line_has((line), (pair))) {                                        \
			fprintf(stderr, "%s:%d: log line lacks '%s': %s\n", __FILE__, __LINE__,    \
				(pair), (line) ? (line) : "(null)");                               \
			unit_failures++;                                                           \
		}                                                                                  \
	} while (0)

static void test_log_line(void)
{
	struct config c;
	char *line = NULL;

	/* etcd: a list of masked URLs, a masked password and token, an exec list. */
	setenv("LTXFS_HTTP_TOKEN", "tok-s3cret-value", 1);
	if (parses("exec:\n"
		   "  - cmd: app -name 'a b' x\\\\y \\\"q\\\"\n"
		   "    if-candidate: true\n"
		   "  - cmd: migrate\n"
		   "fuse:\n  dir: /litefs\n"
		   "data:\n  retention: 1500ms\n"
		   "lease:\n  type: etcd\n  hostname: node1\n"
		   "  etcd:\n"
		   "    endpoints: \"http://root:pw-s3cret@e1:2379, https://e2:2379\"\n"
		   "    username: root\n    password: pw-s3cret\n",
		   &c)) {
		check_line_matches_dump(&c);
		CHECK_RC(config_log_line(&c, &line), 0);
		CHECK_LINE_HAS(line, "exit-on-error=true");
		CHECK_LINE_HAS(line, "exec={cmd: \"app -name a b x\\\\y \\\"q\\\"\", if-candidate: "
				     "true}");
		CHECK_LINE_HAS(line, "exec={cmd: \"migrate\", if-candidate: false}");
		CHECK_LINE_HAS(line, "fuse.dir=\"/litefs\"");
		CHECK_LINE_HAS(line, "data.retention=1500ms");
		CHECK_LINE_HAS(line, "data.retention-monitor-interval=60s");
		CHECK_LINE_HAS(line, "http.token=\"*****\"");
		CHECK_LINE_HAS(line, "lease.type=\"etcd\"");
		CHECK_LINE_HAS(line, "lease.etcd.endpoints=\"http://root:*****@e1:2379\"");
		CHECK_LINE_HAS(line, "lease.etcd.endpoints=\"https://e2:2379\"");
		CHECK_LINE_HAS(line, "lease.etcd.password=\"*****\"");
		CHECK_LINE_HAS(line, "lease.etcd.username=\"root\"");
		CHECK_LINE_HAS(line, "log.debug=false");
		CHECK(line && !strstr(line, "s3cret"));
		CHECK(line && !strstr(line, "consul") && !strchr(line, '\n'));
		free(line);
		line = NULL;
	}
	config_release(&c);
	unsetenv("LTXFS_HTTP_TOKEN");

	/* consul: the token in the URL is masked; no exec key without a command. */
	if (parses("fuse:\n  dir: /litefs\nlease:\n  type: consul\n  consul:\n"
		   "    url: https://:ctok-s3cret@consul:8500/pre/\n    key: litefs/app\n",
		   &c)) {
		check_line_matches_dump(&c);
		CHECK_RC(config_log_line(&c, &line), 0);
		CHECK_LINE_HAS(line, "lease.consul.url=\"https://:*****@consul:8500/pre/\"");
		CHECK_LINE_HAS(line, "lease.consul.ttl=10s");
		CHECK_LINE_HAS(line, "http.token=null");
		CHECK(line && !strstr(line, "s3cret") && !strstr(line, "exec") &&
		      !strstr(line, "etcd"));
		free(line);
		line = NULL;
	}
	config_release(&c);

	/* The defaults alone (no path, no lease type). */
	CHECK_RC(config_init(&c), 0);
	check_line_matches_dump(&c);
	CHECK_RC(config_log_line(&c, &line), 0);
	CHECK(line && strncmp(line, "exit-on-error=true skip-sync=false fuse.dir=null ", 49) == 0);
	free(line);
	config_release(&c);
}

/* ------------------------------------------------------------------------ */
/* The Go-compatible parsers, called directly                               */
/* ------------------------------------------------------------------------ */

static void test_go_duration_ns(void)
{
	static const struct {
		const char *in;
		int64_t ns;
	} ok[] = {
	    {"0", 0},
	    {"-0", 0},
	    {"1h30m", 5400LL * 1000000000},
	    {"-1.5us", -1500},
	    {"+2\xc2\xb5s", 2000},
	    {"1ns", 1},
	    {".5ms", 500000},
	    {"9223372036854775807ns", INT64_MAX},
	    {"-9223372036854775808ns", INT64_MIN},
	    {"-2562047h", -2562047LL * 3600 * 1000000000},
	};
	static const char *const bad[] = {"",	 "1",	"-", "1d", "9223372036854775808ns",
					  "1s ", "--1s"};
	int64_t ns;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		ns = 12345;
		int rc = config_parse_duration_ns(ok[i].in, strlen(ok[i].in), &ns);
		if (rc != 0 || ns != ok[i].ns) {
			fprintf(stderr, "duration_ns '%s': rc %d ns %lld, want %lld\n", ok[i].in,
				rc, (long long)ns, (long long)ok[i].ns);
			unit_failures++;
		}
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ns = 12345;
		CHECK_RC(config_parse_duration_ns(bad[i], strlen(bad[i]), &ns), -EINVAL);
		CHECK(ns == 12345);
	}
	/* The length bounds the text: no NUL needed, nothing read past it. */
	CHECK_RC(config_parse_duration_ns("1m30s", 2, &ns), 0);
	CHECK(ns == 60LL * 1000000000);
	CHECK_RC(config_parse_duration_ns("10s", 2, &ns), -EINVAL);
	CHECK_RC(config_parse_duration_ns(NULL, 0, &ns), -EINVAL);

	/* The dump's form reads back. */
	static const int64_t ms[] = {0, 1, 999, 1000, 1500, 600000, 9223372036854LL};
	char buf[CONFIG_DURATION_MAX];
	int64_t back;
	CHECK_STR(config_format_duration(600000, buf, sizeof(buf)), "600s");
	CHECK_STR(config_format_duration(1500, buf, sizeof(buf)), "1500ms");
	CHECK_STR(config_format_duration(0, buf, sizeof(buf)), "0s");
	for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
		back = -1;
		CHECK_RC(
		    config_parse_duration(config_format_duration(ms[i], buf, sizeof(buf)), &back),
		    0);
		CHECK(back == ms[i]);
	}
	CHECK(strlen(config_format_duration(INT64_MIN, buf, sizeof(buf))) < sizeof(buf));
}

static void test_go_split_words(void)
{
	char **argv = NULL, *sentinel[] = {NULL};
	char why[160];

	CHECK_RC(config_split_words("run -x 'a b' \"c\\\"d\" e\\ f '' \"\"\tg\\\\h", &argv, why,
				    sizeof(why)),
		 0);
	static const char *const want[] = {"run", "-x", "a b", "c\"d", "e f", "", "", "g\\h"};
	CHECK_EQ_U64(argc_of(argv), sizeof(want) / sizeof(want[0]));
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]) && i < argc_of(argv); i++)
		CHECK_STR(argv[i], want[i]);
	config_argv_free(argv);
	config_argv_free(NULL);

	static const struct {
		const char *in, *why;
	} bad[] = {
	    {"a | b", "'|' is shell syntax, but the command runs without a shell"},
	    {"a;b", "';' is shell syntax"},
	    {"echo `id`", "'`' is shell syntax"},
	    {"'open", "unterminated quote in the command"},
	    {"x \"open", "unterminated quote in the command"},
	    {"trailing\\", "unterminated backslash escape in the command"},
	    {" \t\r\n", "the command is empty"},
	    {"", "the command is empty"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		argv = sentinel;
		why[0] = 'x';
		why[1] = '\0';
		int rc = config_split_words(bad[i].in, &argv, why, sizeof(why));
		if (rc != -EINVAL || argv != sentinel || !strstr(why, bad[i].why)) {
			fprintf(stderr, "split '%s': rc %d why '%s', want -EINVAL '%s'\n",
				bad[i].in, rc, why, bad[i].why);
			unit_failures++;
		}
		CHECK_RC(config_split_words(bad[i].in, &argv, NULL, 0), -EINVAL);
	}
	/* Quoted, the operators are words; '$' is literal. */
	argv = NULL;
	CHECK_RC(config_split_words("sh -c 'a | b; $X'", &argv, NULL, 0), 0);
	CHECK_EQ_U64(argc_of(argv), 3);
	if (argc_of(argv) == 3)
		CHECK_STR(argv[2], "a | b; $X");
	config_argv_free(argv);
}

static void test_backup(void)
{
	struct config c;
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	CHECK(parse(&c, BASE "backup:\n  type: s3\n  endpoint: http://127.0.0.1:9000\n"
			     "  force-path-style: true\n  bucket: backups\n  path: cluster-a/x\n"
			     "  access-key-id: AK\n  secret-access-key: SK\n"
			     "  sync-interval: 250ms\n  restore-if-empty: false\n") == 0);
	CHECK(c.backup.type && strcmp(c.backup.type, "s3") == 0);
	CHECK(c.backup.force_path_style);
	CHECK(c.backup.region && strcmp(c.backup.region, "us-east-1") == 0);
	CHECK(c.backup.path && strcmp(c.backup.path, "cluster-a/x") == 0);
	CHECK(c.backup.sync_interval_ms == 250);
	char *line = NULL;
	CHECK(config_log_line(&c, &line) == 0);
	CHECK(line && strstr(line, "backup.bucket=\"backups\""));
	CHECK(line && strstr(line, "backup.secret-access-key=\"*****\""));
	CHECK(line && !strstr(line, "SK\""));
	CHECK(line && strstr(line, "backup.snapshot-interval=86400s") &&
	      strstr(line, "backup.retention=0s"));
	free(line);
	CHECK(c.backup.snapshot_interval_ms == 24 * 3600 * 1000 && c.backup.retention_ms == 0);
	CHECK(c.backup.compaction_interval_ms == 5 * 60 * 1000);
	config_release(&c);
	/* snapshots and retention */
	CHECK(parse(&c, BASE "backup:\n  type: s3\n  bucket: backups\n  access-key-id: AK\n"
			     "  secret-access-key: SK\n  snapshot-interval: 1h\n  retention: 72h\n"
			     "  compaction-interval: 0s\n") == 0);
	CHECK(c.backup.snapshot_interval_ms == 3600 * 1000);
	CHECK(c.backup.retention_ms == 72 * 3600 * 1000);
	CHECK(c.backup.compaction_interval_ms == 0);
	config_release(&c);
	/* no backup section: none shown */
	CHECK(parse(&c, BASE) == 0);
	CHECK(!c.backup.type && c.backup.sync_interval_ms == 1000);
	line = NULL;
	CHECK(config_log_line(&c, &line) == 0);
	CHECK(line && !strstr(line, "backup"));
	free(line);
	config_release(&c);
	/* credentials from the environment */
	setenv("AWS_ACCESS_KEY_ID", "envak", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsk", 1);
	CHECK(parse(&c, BASE "backup:\n  type: s3\n  bucket: backups\n") == 0);
	CHECK(c.backup.access_key_id && strcmp(c.backup.access_key_id, "envak") == 0);
	CHECK(c.backup.secret_access_key && strcmp(c.backup.secret_access_key, "envsk") == 0);
	CHECK(c.backup.path && strcmp(c.backup.path, "") == 0);
	config_release(&c);
	unsetenv("AWS_SECRET_ACCESS_KEY");
	expect_error(
	    BASE "backup:\n  type: s3\n  bucket: backups\n",
	    "key 'backup.secret-access-key' is not set and $AWS_SECRET_ACCESS_KEY is empty", NULL);
	unsetenv("AWS_ACCESS_KEY_ID");
	expect_error(BASE "backup:\n  type: s3\n", "key 'backup.bucket' is required", NULL);
	expect_error(BASE "backup:\n  bucket: b12\n", "key 'backup.type' is required", NULL);
	expect_error(BASE "backup:\n  type: litefs-cloud\n", "LiteFS Cloud backups are not", NULL);
	expect_error(BASE "backup:\n  type: gcs\n", "unknown backup type 'gcs'", NULL);
	expect_error(BASE "backup:\n  type: s3\n  bucket: B\n", "invalid bucket name 'B'", NULL);
	expect_error(BASE "backup:\n  type: s3\n  path: /a\n", "invalid key prefix '/a'", NULL);
	expect_error(BASE "backup:\n  type: s3\n  path: a//b\n", "invalid key prefix", NULL);
	expect_error(BASE "backup:\n  type: s3\n  path: a/\n", "invalid key prefix", NULL);
	expect_error(BASE "backup:\n  type: s3\n  endpoint: ftp://x\n", "expected an http://",
		     NULL);
	expect_error(BASE "backup:\n  type: s3\n  bucket: bbb\n  access-key-id: a\n"
			  "  secret-access-key: b\n  snapshot-interval: 0s\n  retention: 24h\n",
		     "key 'backup.retention' needs 'backup.snapshot-interval' above zero", NULL);
	CHECK(parse(&c, BASE "backup:\n  type: s3\n  bucket: bbb\n  access-key-id: a\n"
			     "  secret-access-key: b\n  restore-if-empty: true\n") == 0);
	CHECK(c.backup.restore_if_empty);
	config_release(&c);
	expect_error(BASE "backup:\n  restore-if-empty: true\n", "key 'backup.type' is required",
		     NULL);
	expect_error(BASE "backup:\n  sync-interval: 0s\n",
		     "key 'backup.sync-interval': must be greater than zero", NULL);
	expect_error(BASE "backup:\n  url: http://x\n", "key 'backup.url' is a LiteFS setting",
		     NULL);
}

int main(void)
{
	RUN(test_defaults);
	RUN(test_minimal);
	RUN(test_full);
	RUN(test_nulls_keep_defaults);
	RUN(test_bools);
	RUN(test_durations);
	RUN(test_unsupported_litefs_keys);
	RUN(test_errors);
	RUN(test_failed_parse_leaves_cfg_untouched);
	RUN(test_exec);
	RUN(test_expand_env);
	RUN(test_load);
	RUN(test_lease_common);
	RUN(test_lease_consul);
	RUN(test_lease_etcd);
	RUN(test_lease_reparse);
	RUN(test_lease_fly);
	RUN(test_find);
	RUN(test_log_line);
	RUN(test_go_duration_ns);
	RUN(test_go_split_words);
	RUN(test_backup);
	return UNIT_DONE();
}
