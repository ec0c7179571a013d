/*
 * s3tool - the S3 client (include/ltxfs/s3.h) from the command line, for the
 * integration tests against moto (tests/integration/test_backup.py). Not a
 * unit test: it needs a server. Credentials from $S3_ACCESS_KEY and
 * $S3_SECRET_KEY.
 *
 *   s3tool ENDPOINT BUCKET put KEY DATA [if-none-match | if-match=ETAG] [meta=NAME:VALUE]
 *   s3tool ENDPOINT BUCKET get KEY [OFFSET LEN]
 *   s3tool ENDPOINT BUCKET head KEY [META-NAME]
 *   s3tool ENDPOINT BUCKET list PREFIX [MAX-KEYS [START-AFTER]]
 *   s3tool ENDPOINT BUCKET delete KEY
 *   s3tool ENDPOINT BUCKET delete-many KEY...
 *
 * Prints the result on stdout; on failure "error <errno name> <res.err>"
 * and exit 1.
 */
#include "ltxfs/httpc.h"
#include "ltxfs/s3.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int print_obj(void *ctx, const struct s3_object *o)
{
	printf("%s %" PRIu64 "\n", o->key, o->size);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 5)
		return 2;
	httpc_global_init();
	struct s3_options so = {.endpoint = argv[1],
				.force_path_style = true,
				.region = "us-east-1",
				.bucket = argv[2],
				.access_key_id = getenv("S3_ACCESS_KEY"),
				.secret_access_key = getenv("S3_SECRET_KEY")};
	struct s3 *s = NULL;
	struct s3_result res = {0};
	int r = s3_new(&s, &so);
	const char *cmd = argv[3], *key = argv[4];
	if (r == 0 && strcmp(cmd, "put") == 0 && argc >= 6) {
		struct s3_put_options po = {0};
		struct s3_meta meta[1];
		char etag[128], mbuf[256];
		for (int i = 6; i < argc; i++) {
			if (strcmp(argv[i], "if-none-match") == 0)
				po.if_none_match = true;
			else if (strncmp(argv[i], "if-match=", 9) == 0)
				po.if_match = argv[i] + 9;
			else if (strncmp(argv[i], "meta=", 5) == 0) {
				snprintf(mbuf, sizeof(mbuf), "%s", argv[i] + 5);
				char *c = strchr(mbuf, ':');
				if (c)
					*c++ = '\0';
				meta[0] = (struct s3_meta){mbuf, c ? c : ""};
				po.meta = meta;
				po.n_meta = 1;
			}
		}
		r = s3_put(s, key, argv[5], strlen(argv[5]), &po, etag, &res);
		if (r == 0)
			printf("etag %s\n", etag);
	} else if (r == 0 && strcmp(cmd, "get") == 0) {
		char *buf = NULL;
		size_t n = 0;
		uint64_t off = argc > 6 ? strtoull(argv[5], NULL, 10) : 0;
		uint64_t len = argc > 6 ? strtoull(argv[6], NULL, 10) : 0;
		r = s3_get(s, key, off, len, 1 << 20, &buf, &n, &res);
		if (r == 0)
			fwrite(buf, 1, n, stdout);
		free(buf);
	} else if (r == 0 && strcmp(cmd, "head") == 0) {
		struct s3_head h = {.n_meta = argc > 5 ? 1 : 0};
		if (argc > 5)
			h.meta[0].name = argv[5];
		r = s3_head(s, key, &h, &res);
		if (r == 0)
			printf("size %" PRIu64 " etag %s meta %s\n", h.size, h.etag,
			       h.n_meta && h.meta[0].found ? h.meta[0].value : "-");
	} else if (r == 0 && strcmp(cmd, "list") == 0) {
		int max = argc > 5 ? atoi(argv[5]) : 0;
		r = s3_list(s, key, argc > 6 ? argv[6] : NULL, max, print_obj, NULL, &res);
	} else if (r == 0 && strcmp(cmd, "delete") == 0) {
		r = s3_delete(s, key, &res);
	} else if (r == 0 && strcmp(cmd, "delete-many") == 0) {
		r = s3_delete_many(s, (const char *const *)argv + 4, (size_t)(argc - 4), &res);
	} else if (r == 0) {
		r = -EINVAL;
	}
	if (r < 0)
		printf("error %s %s\n", strerrorname_np(-r), res.err);
	s3_free(s);
	httpc_global_cleanup();
	return r < 0 ? 1 : 0;
}
