/*
 * log.h - leveled, thread-safe logging to stderr (text or JSON lines).
 *
 * Contract: log_* may be called from any thread at any time, including before
 * log_init() (defaults: text format, info level). Library layers (base, formats,
 * core) log only at debug level; edges and main log errors once, where they are
 * handled. Names taken from input are quoted with single quotes by the caller.
 */
#ifndef LTXFS_LOG_H
#define LTXFS_LOG_H

#include <stdbool.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* Configure the sink. json selects one JSON object per line. */
void log_init(bool json, bool debug);

/* True when messages at this level are written (cheap; check before costly formatting). */
bool log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...)                                                                             \
	do {                                                                                       \
		if (log_enabled(LOG_DEBUG))                                                        \
			log_msg(LOG_DEBUG, __VA_ARGS__);                                           \
	} while (0)
/*
 * A failure that a loop keeps retrying: logged at WARN the first time and
 * whenever the message changes, at DEBUG while it repeats, so a node cut off
 * for an hour logs one line, not one a second. last (LOG_LAST_LEN bytes, the
 * caller's, one per loop) holds the previous message; the caller clears it
 * (last[0] = '\0') once the operation succeeds. Thread: the loop's own.
 */
#define LOG_LAST_LEN 512
void log_warn_repeat(char last[LOG_LAST_LEN], const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
