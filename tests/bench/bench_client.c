/*
 * bench_client - one SQLite client for the benchmarks (linked against the
 * system SQLite, the same binary for every side of a comparison).
 *
 *   bench_client insert DB MODE SYNC N     N single-row INSERT transactions
 *   bench_client select DB MODE N          N point SELECTs by rowid (autocommit)
 *
 * Prints one line: "<ops/s> <p50 us> <p99 us>".
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void die(sqlite3 *db, const char *what)
{
	fprintf(stderr, "bench_client: %s: %s\n", what, sqlite3_errmsg(db));
	exit(1);
}

static void exec(sqlite3 *db, const char *sql)
{
	char *err = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
		fprintf(stderr, "bench_client: %s: %s\n", sql, err);
		exit(1);
	}
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: bench_client insert|select DB MODE [SYNC] N\n");
		return 2;
	}
	const char *op = argv[1], *path = argv[2], *mode = argv[3];
	int insert = strcmp(op, "insert") == 0;
	const char *sync = insert ? argv[4] : "full";
	long n = atol(argv[insert ? 5 : 4]);
	sqlite3 *db;
	char sql[256];
	if (sqlite3_open(path, &db) != SQLITE_OK)
		die(db, "open");
	sqlite3_busy_timeout(db, 10000);
	snprintf(sql, sizeof(sql), "PRAGMA journal_mode=%s", mode);
	exec(db, sql);
	snprintf(sql, sizeof(sql), "PRAGMA synchronous=%s", sync);
	exec(db, sql);
	exec(db, "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, num INTEGER, data TEXT)");
	double *lat = malloc(sizeof(double) * (size_t)n);
	sqlite3_stmt *st;
	if (insert) {
		if (sqlite3_prepare_v2(db, "INSERT INTO t(num, data) VALUES(?, ?)", -1, &st,
				       NULL) != SQLITE_OK)
			die(db, "prepare");
		char data[200];
		memset(data, 'x', sizeof(data));
		for (long i = 0; i < n; i++) {
			double t0 = now_us();
			sqlite3_bind_int64(st, 1, i);
			sqlite3_bind_text(st, 2, data, sizeof(data), SQLITE_STATIC);
			if (sqlite3_step(st) != SQLITE_DONE)
				die(db, "insert");
			sqlite3_reset(st);
			lat[i] = now_us() - t0;
		}
	} else {
		sqlite3_int64 rows = 0;
		if (sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &st, NULL) != SQLITE_OK)
			die(db, "prepare");
		if (sqlite3_step(st) == SQLITE_ROW)
			rows = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
		if (rows == 0) {
			fprintf(stderr, "bench_client: select needs rows\n");
			return 1;
		}
		if (sqlite3_prepare_v2(db, "SELECT num, data FROM t WHERE id = ?", -1, &st, NULL) !=
		    SQLITE_OK)
			die(db, "prepare");
		unsigned seed = 1;
		for (long i = 0; i < n; i++) {
			double t0 = now_us();
			seed = seed * 1103515245u + 12345u;
			sqlite3_bind_int64(st, 1, 1 + (sqlite3_int64)(seed % (unsigned)rows));
			if (sqlite3_step(st) != SQLITE_ROW)
				die(db, "select");
			sqlite3_reset(st);
			lat[i] = now_us() - t0;
		}
	}
	sqlite3_finalize(st);
	double total = 0;
	for (long i = 0; i < n; i++)
		total += lat[i];
	qsort(lat, (size_t)n, sizeof(double), cmp_d);
	printf("%.1f %.1f %.1f\n", n / (total / 1e6), lat[n / 2], lat[(n * 99) / 100]);
	free(lat);
	sqlite3_close(db);
	return 0;
}
