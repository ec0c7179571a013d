/*
 * clock.h - time in milliseconds, and deadlines for timed waits (base layer).
 *
 * The one place that turns clock_gettime into the integers the rest of the
 * code compares. CLOCK_MONOTONIC measures intervals (timeouts, lag, backoff);
 * CLOCK_REALTIME stamps what a user or another node reads (LTX timestamps,
 * retention cutoffs, log lines). All functions are thread-safe and never fail:
 * clock_gettime cannot fail for these two clocks.
 */
#ifndef LTXFS_CLOCK_H
#define LTXFS_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Milliseconds on CLOCK_MONOTONIC (an arbitrary epoch; for intervals only). */
static inline int64_t clock_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Nanoseconds on CLOCK_MONOTONIC. */
static inline int64_t clock_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
static inline int64_t clock_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * The absolute time ms milliseconds from now on clock clk, for
 * pthread_cond_timedwait (whose condition variable must use the same clock:
 * CLOCK_REALTIME by default, or the one set with pthread_condattr_setclock).
 * ms < 0 counts as 0.
 */
static inline struct timespec clock_deadline(clockid_t clk, int64_t ms)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	if (ms < 0)
		ms = 0;
	int64_t ns = ts.tv_nsec + (ms % 1000) * 1000000;
	ts.tv_sec += (time_t)(ms / 1000 + ns / 1000000000);
	ts.tv_nsec = (long)(ns % 1000000000);
	return ts;
}

#endif
