/*
 * config.h - ltxfs.yml / litefs.yml: LiteFS 0.5 key names and defaults
 * (formats layer). See docs/config.md.
 *
 * Loading is strict: an unknown key, a wrong type, or a missing required key
 * fails with -EINVAL and a one-line message in err that names the file and the
 * dotted key, e.g. "/etc/litefs.yml: key 'data.retention': invalid duration 'x'".
 * LiteFS keys that ltxfs does not support yet are rejected with a message that
 * says so. Keys under lease.consul / lease.etcd are refused unless lease.type
 * names that backend. Before parsing, environment variables are expanded
 * exactly as LiteFS does (config_expand_env) unless expand_env is false.
 * Not thread-safe; call from main before starting threads.
 */
#ifndef LTXFS_CONFIG_H
#define LTXFS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct config_exec {
	char **argv; /* NULL-terminated, split with shell-word rules */
	bool if_candidate;
};

struct config {
	char *path; /* the file loaded, NULL when built from defaults */

	bool exit_on_error;	  /* default true */
	bool skip_sync;		  /* default false */
	struct config_exec *exec; /* array of n_exec entries; `exec:` string or list */
	size_t n_exec;

	struct {
		char *dir;	  /* required */
		bool allow_other; /* false */
		bool debug;	  /* false */
	} fuse;
	struct {
		char *dir;			       /* "/var/lib/litefs" */
		bool compress;			       /* true */
		int64_t retention_ms;		       /* 10m; 0 disables */
		int64_t retention_monitor_interval_ms; /* 1m */
	} data;
	struct {
		char *addr;	/* ":20202" */
		char *token;	/* shared secret; default: $LTXFS_HTTP_TOKEN; NULL: none */
		bool read_auth; /* false: read-only endpoints need no token */
	} http;
	struct {
		char *type;	     /* required: "static", "consul" or "etcd" */
		bool candidate;	     /* true */
		char *hostname;	     /* default: gethostname() */
		char *advertise_url; /* default: "http://<hostname>:<port of http.addr>" */
		/* After sync, a candidate asks the primary for a handoff. consul/etcd
		 * only; forced to false when candidate is false (LiteFS ignores it). */
		bool promote;		    /* false */
		int64_t reconnect_delay_ms; /* 1s, > 0 */
		int64_t demote_delay_ms;    /* 10s */
		struct {
			/* Required with type consul; may hold :TOKEN@ and a /prefix/ path. */
			char *url;
			char *key;	       /* required with type consul (no default) */
			int64_t ttl_ms;	       /* 10s, > 0 (Consul's server floor: 10s) */
			int64_t lock_delay_ms; /* 1s, 0 allowed */
		} consul;
		struct {
			/* NULL-terminated list of http(s) URLs; required with type etcd. */
			char **endpoints;
			size_t n_endpoints;
			char *key;	/* "ltxfs/primary" by default with type etcd */
			int64_t ttl_ms; /* 10s, >= 1s (etcd's server floor: 2s by default) */
			char *username; /* optional */
			char *password; /* optional; requires username */
		} etcd;
	} lease;
	/*
	 * Backups to S3 (docs/backup.md). type NULL: no backups. With type "s3",
	 * bucket is required and the credentials come from the file or, when
	 * absent there, from $AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY
	 * (config_finish). retention above 0 needs snapshot-interval above 0.
	 * restore-if-empty: a candidate with no data restores from the bucket.
	 */
	struct {
		char *type;	       /* NULL or "s3" */
		char *endpoint;	       /* NULL: AWS */
		bool force_path_style; /* false */
		char *region;	       /* "us-east-1" */
		char *bucket;	       /* required with type s3 */
		char *path; /* key prefix: "" or segments of [A-Za-z0-9._-] joined by '/' */
		char *access_key_id;		/* else $AWS_ACCESS_KEY_ID */
		char *secret_access_key;	/* else $AWS_SECRET_ACCESS_KEY */
		int64_t sync_interval_ms;	/* 1s, > 0 */
		int64_t snapshot_interval_ms;	/* 24h; 0: no scheduled snapshots */
		int64_t retention_ms;		/* 0: keep every object */
		int64_t compaction_interval_ms; /* 5m; 0: no compaction into level 1 */
		bool restore_if_empty;		/* false */
	} backup;
	struct {
		char *format; /* "text" | "json" */
		bool debug;   /* false */
	} log;
};

/* Fill defaults (every pointer owned by cfg). 0 or -ENOMEM. */
int config_init(struct config *cfg);
/* Free everything cfg owns and zero it. NULL-safe. */
void config_release(struct config *cfg);

/*
 * Parse YAML text (already expanded) into cfg, which config_init() filled.
 * path is used only in messages. Validates and fills derived defaults.
 */
int config_parse(struct config *cfg, const char *path, const char *text, size_t len, char *err,
		 size_t errlen);
/* Read the file at path, expand env if asked, and config_parse() it. */
int config_load(struct config *cfg, const char *path, bool expand_env, char *err, size_t errlen);

/*
 * Search order without -config: ./ltxfs.yml, ./litefs.yml, /etc/ltxfs.yml,
 * /etc/litefs.yml. Returns 0 and a malloc'd path, or -ENOENT.
 */
int config_find(char **ret_path);

/*
 * LiteFS's ExpandEnv: $VAR, ${VAR}, ${ VAR }, and the expressions
 * ${A == B} / ${A != B} where each side is a variable name or a quoted
 * literal ('x' or "x"), yielding "true"/"false". Returns a malloc'd string
 * (caller frees) or NULL on OOM.
 */
char *config_expand_env(const char *text);

/*
 * Print the effective configuration as YAML to f, secrets masked (http.token,
 * lease.etcd.password, the password in lease.consul.url and in
 * lease.etcd.endpoints): `ltxfs mount -check-config`.
 */
void config_dump(const struct config *cfg, FILE *f);

/*
 * The same keys and values as config_dump(), masked the same way, as one line
 * of space-separated dotted pairs for the start-up log:
 * 'exit-on-error=true ... fuse.dir="/litefs" ... http.token="*****" ...'.
 * Each item of a list repeats its key ('exec={cmd: "app", if-candidate: true}',
 * 'lease.etcd.endpoints="http://etcd:2379"'). Returns 0 and a malloc'd string
 * in *ret (caller frees), or -ENOMEM (*ret untouched).
 */
int config_log_line(const struct config *cfg, char **ret);

/*
 * The Go-compatible parsers (config_go.c): text in, value or error out, no
 * state, reentrant. config_expand_env() above is the third one (it also reads
 * the environment).
 */

/*
 * A non-negative Go duration ("10m", "1m30s", "250ms", "2h", "0") in
 * milliseconds, rounded up. 0 or -EINVAL (*ret_ms untouched).
 */
int config_parse_duration(const char *s, int64_t *ret_ms);

/*
 * Go's time.ParseDuration on s[0..len), in full: a sign, fractions, the units
 * ns us µs μs ms s m h, the whole int64 range of nanoseconds. 0 or -EINVAL
 * (*ret_ns untouched).
 */
int config_parse_duration_ns(const char *s, size_t len, int64_t *ret_ns);

#define CONFIG_DURATION_MAX 24 /* bytes config_format_duration() needs, NUL included */

/*
 * A duration as the effective configuration shows it: "10s" for whole
 * seconds, "1500ms" otherwise; config_parse_duration() reads it back. Writes
 * at most len bytes to buf and returns buf.
 */
char *config_format_duration(int64_t ms, char *buf, size_t len);

/*
 * Split a command into words as LiteFS's exec does (go-shellwords): words are
 * separated by unquoted space, tab, CR or LF; '...' is literal; "..." keeps
 * spaces; a backslash outside single quotes escapes the next character; ""
 * is an empty word. The shell operators ; & | < > ( ) and ` outside quotes
 * are refused (there is no shell), as are unterminated quotes and an empty
 * command. Returns 0 and a NULL-terminated argv of at least one word in
 * *ret_argv (free with config_argv_free), -EINVAL with the reason in why
 * (when why is not NULL; e.g. "the command is empty"), or -ENOMEM. *ret_argv
 * is untouched on failure.
 */
int config_split_words(const char *s, char ***ret_argv, char *why, size_t whylen);

/* Free a NULL-terminated argv of malloc'd strings. NULL-safe. */
void config_argv_free(char **argv);

#endif
