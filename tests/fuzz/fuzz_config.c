/*
 * fuzz_config.c - libFuzzer target for the config layer: expand env over
 * arbitrary bytes, parse the result, and parse the raw bytes too (embedded
 * NULs and all). Every path must return cleanly and free everything.
 * Seeds: tests/fuzz/corpus/config/.
 */
#include "ltxfs/config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	/* Give the expression and variable paths something to find. */
	setenv("FLY_REGION", "ord", 1);
	setenv("PRIMARY_REGION", "ord", 1);
	setenv("FUZZ_DIR", "/litefs", 1);
	setenv("FUZZ_YAML", "fuse:\n  dir: /x\n", 1);
	return 0;
}

static void parse(const char *text, size_t len)
{
	struct config cfg;
	char err[256];
	if (config_init(&cfg) < 0)
		return;
	if (config_parse(&cfg, "fuzz.yml", text, len, err, sizeof(err)) < 0 &&
	    memchr(err, '\0', sizeof(err)) == NULL)
		abort(); /* the message must always be terminated */
	config_release(&cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';

	char *x = config_expand_env(s);
	if (x) {
		parse(x, strlen(x));
		free(x);
	}
	parse((const char *)data, size);

	int64_t ms;
	(void)config_parse_duration(s, &ms);
	free(s);
	return 0;
}
