/*
 * log.c - leveled logging to stderr. One write(2) per line so that lines from
 * different threads never interleave.
 *
 * FORMAT. Text: "<UTC time, ms> <LEVEL> <message>"; JSON (log.format: json):
 * one object per line, {"time":...,"level":...,"msg":...}, with the message
 * escaped. A message is cut at 2 KiB; the line is built in a stack buffer
 * and written whole, so nothing is allocated.
 *
 * STATE. Two atomics set by log_init (format and lowest level; before it,
 * text at INFO). log_warn_repeat keeps no state of its own: the caller's
 * buffer holds the last message, so a loop that fails the same way every
 * second logs one WARN line and then DEBUG lines until the message changes.
 *
 * THREADS. Any thread, at any time, including before log_init.
 */
#include "ltxfs/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_bool log_json;
static atomic_int log_min = LOG_INFO;

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void log_init(bool json, bool debug)
{
	atomic_store(&log_json, json);
	atomic_store(&log_min, debug ? LOG_DEBUG : LOG_INFO);
}

bool log_enabled(enum log_level level)
{
	return (int)level >= atomic_load(&log_min);
}

/* Append s to out as a JSON string body (no quotes), escaping as needed. */
static size_t json_escape(char *out, size_t cap, const char *s)
{
	size_t n = 0;
	for (; *s && n + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			out[n++] = '\\';
			out[n++] = (char)c;
		} else if (c < 0x20) {
			n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
		} else {
			out[n++] = (char)c;
		}
	}
	return n;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	if (!log_enabled(level))
		return;
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);
	char when[96];
	snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);

	char line[4608];
	size_t n;
	if (atomic_load(&log_json)) {
		n = (size_t)snprintf(line, sizeof(line),
				     "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"", when,
				     level_names[level]);
		n += json_escape(line + n, sizeof(line) - n - 4, msg);
		n += (size_t)snprintf(line + n, sizeof(line) - n, "\"}\n");
	} else {
		n = (size_t)snprintf(line, sizeof(line), "%s %-5s %s\n", when, level_names[level],
				     msg);
	}
	if (n >= sizeof(line))
		n = sizeof(line) - 1;
	ssize_t w = write(STDERR_FILENO, line, n);
	(void)w;
}

void log_warn_repeat(char last[LOG_LAST_LEN], const char *fmt, ...)
{
	char msg[LOG_LAST_LEN];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (strcmp(msg, last) == 0) {
		log_debug("%s", msg);
		return;
	}
	memcpy(last, msg, sizeof(msg));
	log_warn("%s", msg);
}
