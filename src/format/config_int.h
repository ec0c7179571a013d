/*
 * config_int.h - what the files of the configuration module share (private,
 * not installed). The module is:
 *
 *   config.c         lifecycle (init, release, deep copy), config_load, config_find
 *   config_yaml.c    config_parse: the libyaml document, scalar typing, messages
 *   config_schema.c  the key table, per-value checks, whole-file checks, defaults
 *   config_go.c      Go-compatible text parsers: durations, shell words, ExpandEnv
 *   config_dump.c    the effective configuration: YAML dump and the log line
 *
 * Nothing here is thread-safe; the module runs on the main thread before any
 * other thread starts (config.h).
 */
#ifndef LTXFS_CONFIG_INT_H
#define LTXFS_CONFIG_INT_H

#include "ltxfs/config.h"

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <yaml.h>

#ifndef HOST_NAME_MAX
#define HOST_NAME_MAX 255
#endif

#define SHOW_MAX	   48 /* bytes of an input value quoted in a message */
#define DOTTED_MAX	   160
#define DEFAULT_DATA_DIR   "/var/lib/litefs"
#define DEFAULT_HTTP_ADDR  ":20202"
#define DEFAULT_LOG_FORMAT "text"
#define DEFAULT_ETCD_KEY   "ltxfs/primary"

static inline bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* v[0..n) is exactly the NUL-terminated s. */
static inline bool text_is(const char *v, size_t n, const char *s)
{
	return strlen(s) == n && memcmp(v, s, n) == 0;
}

/* ------------------------------------------------------------------------ */
/* config_go.c: growable strings and word lists, Go helpers                 */
/* ------------------------------------------------------------------------ */

/* A growable NUL-terminated string; a failed allocation sets oom and stops it. */
struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

/* Append s[0..n) to b (nothing once b->oom is set). */
void config_sb_add(struct sbuf *b, const char *s, size_t n);
/* Return the NUL-terminated string (caller frees) or NULL on OOM; b is spent. */
char *config_sb_finish(struct sbuf *b);

/* A NULL-terminated list of malloc'd strings under construction. */
struct words {
	char **v;
	size_t n, cap;
};

/* Move cur's string to the end of w (cur is reset). 0 or -ENOMEM. */
int config_words_push(struct words *w, struct sbuf *cur);
/* Append a copy of s[0..n) to w. 0 or -ENOMEM. */
int config_words_add(struct words *w, const char *s, size_t n);

/* Go strings.TrimSpace on (*s, *n): ASCII space plus Unicode White_Space runes. */
void config_trim_space(const char **s, size_t *n);

/* Nanoseconds to milliseconds, rounding up so a non-zero value stays non-zero. */
int64_t config_ns_to_ms(int64_t ns);

/* ------------------------------------------------------------------------ */
/* config.c                                                                 */
/* ------------------------------------------------------------------------ */

/* Free n exec entries and the array. NULL-safe. */
void config_free_exec(struct config_exec *list, size_t n);
/* Deep copy src into dst (dst is overwritten). 0 or -ENOMEM (dst released). */
int config_copy(struct config *dst, const struct config *src);
/*
 * path made absolute against the working directory (as it is when getcwd
 * fails), not cleaned. Caller frees; NULL on OOM.
 */
char *config_abs_path(const char *path);

/* ------------------------------------------------------------------------ */
/* config_yaml.c: the parse context and its messages                        */
/* ------------------------------------------------------------------------ */

struct pctx {
	const char *path;
	char *err;
	size_t errlen;
	yaml_document_t *doc;
	struct config *cfg;	/* the working copy */
	const yaml_node_t *key; /* the key whose value is being read */
	/* The first key given under lease.consul / lease.etcd, and lease.promote,
	 * with their paths: config_finish() checks them against lease.type. */
	const yaml_node_t *consul_key, *etcd_key, *promote_key;
	const char *consul_path, *etcd_path;
};

/*
 * Write "<path>: [line N: ]<message>" to p->err (line when n is not NULL) and
 * return -EINVAL.
 */
int config_fail(struct pctx *p, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

struct shown {
	char s[SHOW_MAX * 2];
};

/* "'value'" for a scalar (sanitized, truncated), "a mapping" or "a list" otherwise. */
const char *config_show(const yaml_node_t *n, struct shown *sh);

/* ------------------------------------------------------------------------ */
/* config_schema.c: the key table and the checks                            */
/* ------------------------------------------------------------------------ */

enum kind {
	K_SECTION,	  /* a mapping of further keys */
	K_BOOL,		  /* bool at off */
	K_STRING,	  /* char * at off */
	K_DURATION,	  /* int64_t milliseconds at off */
	K_EXEC,		  /* exec: string or list */
	K_URL_LIST,	  /* char ** (NULL-terminated) at off, its size_t count right after */
	K_LITEFS,	  /* a LiteFS key ltxfs does not implement yet */
	K_LITEFS_SECTION, /* a LiteFS section ltxfs does not implement yet */
};

/* How the effective configuration shows a value (config_dump.c). */
enum mask {
	MASK_NONE,   /* as it is */
	MASK_SECRET, /* "*****" when set */
	MASK_URL,    /* URLs with the password of their userinfo replaced by "*****" */
};

typedef int (*check_fn)(struct pctx *p, const yaml_node_t *n, const char *dotted, void *field);

struct key_def {
	const char *path; /* dotted */
	enum kind kind;
	size_t off;
	check_fn check; /* run after a non-null value was stored */
	enum mask mask; /* how the effective configuration shows the value */
};

/*
 * Every key, in the order of the effective configuration: a section comes
 * right before its keys.
 */
extern const struct key_def config_keys[];
extern const size_t config_n_keys;

/* The entry for key name[0..len) under parent ("" for the top level), or NULL. */
const struct key_def *config_find_key(const char *parent, const char *name, size_t len);
/* s[0..n) starts with http:// or https:// (any case). */
bool config_http_scheme(const char *s, size_t n);
/* Whole-file checks and derived defaults, after every key was read. 0 or -errno. */
int config_finish(struct pctx *p);

#endif
