#!/bin/sh
# The whole test suite, from a clean clone on Debian 12 as root:
#   1. install what is missing (Debian packages only, the test tools included)
#   2. build under ASan+UBSan (warnings are errors) and run the C unit tests
#   3. build the libFuzzer targets with clang and give each a short run
#   4. build SQLite's own test programs from Debian's source package (cached)
#   5. run the integration tests (real FUSE mounts, real SQLite clients,
#      SQLite's TCL tests and mptester) against the sanitized binary
# The last line is "N passed, N failed" over all three kinds of test.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
sh deploy/install-deps.sh --tests || exit 1

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
OUT=$ROOT/build-ci/results
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== build (ASan+UBSan)"
if [ ! -d build-ci/meson-info ]; then
	meson setup build-ci -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true \
		>/dev/null || exit 1
fi
ninja -C build-ci || exit 1

echo "== unit tests"
# Each unit program prints "ok   <case>" or "FAIL <case>" per case on stderr
# (tests/unit/unit.h); meson keeps that stderr in testlog.json, which the
# summary below counts. A stale log must not count for this run.
rm -f build-ci/meson-logs/testlog.json
meson test -C build-ci --suite unit --print-errorlogs --num-processes 2 | tee "$OUT/unit.txt"

echo "== fuzz smoke runs"
if [ ! -d build-fuzz/meson-info ]; then
	CC=clang meson setup build-fuzz -Dfuzzers=true -Dtests=false \
		-Db_sanitize=address,undefined -Db_lundef=false >/dev/null || exit 1
fi
ninja -C build-fuzz >/dev/null || exit 1
fpass=0
ffail=0
for f in build-fuzz/tests/fuzz/fuzz_*; do
	[ -f "$f" ] && [ -x "$f" ] || continue
	name=${f##*/fuzz_}
	work=$(mktemp -d)
	[ -d "tests/fuzz/corpus/$name" ] && cp -r "tests/fuzz/corpus/$name/." "$work/"
	if "$f" -runs=30000 -max_total_time=60 "$work" >"$OUT/fuzz_$name.log" 2>&1; then
		fpass=$((fpass + 1))
		echo "ok   fuzz_$name"
	else
		ffail=$((ffail + 1))
		echo "FAIL fuzz_$name"
		tail -30 "$OUT/fuzz_$name.log"
	fi
	rm -rf "$work"
done
echo "$fpass $ffail" > "$OUT/fuzz.txt"

echo "== SQLite's test programs (tests/sqlite/build.sh, cached)"
# testfixture and mptester from Debian's sqlite3 source package, for
# tests/integration/test_sqlite_*.py. A failed build is not fatal here: those
# tests then fail, each with build.sh's output.
sh tests/sqlite/build.sh || echo "tests/sqlite/build.sh failed: the SQLite tests will fail"

echo "== integration tests"
LTXFS_BIN=$ROOT/build-ci/src/ltxfs LTXFS_BUILD=$ROOT/build-ci \
	/usr/bin/python3 -m pytest -q -p no:cacheprovider --junitxml="$OUT/pytest.xml" \
	tests/integration

/usr/bin/python3 - "$OUT" build-ci/meson-logs/testlog.json <<'PY'
import json, re, sys, xml.etree.ElementTree as ET
out, testlog = sys.argv[1], sys.argv[2]
# Unit test cases, not programs: each "ok   <case>" line is a pass, each
# "FAIL <case>" line a failure. A program that failed (crashed, timed out,
# exited non-zero: LeakSanitizer exits 66) without a FAIL line, or that ran
# no case at all, is one more failure.
upass = ufail = 0
try:
    with open(testlog) as f:
        programs = [json.loads(l) for l in f if l.strip()]
except (OSError, ValueError):
    programs = []
for t in programs:
    text = (t.get("stderr") or "") + (t.get("stdout") or "")
    ok = len(re.findall(r"^ok   \S+$", text, re.M))
    bad = len(re.findall(r"^FAIL \S+$", text, re.M))
    upass += ok
    ufail += bad
    if bad == 0 and (t.get("result") != "OK" or t.get("returncode") != 0 or ok == 0):
        ufail += 1
        print("unit program %s: %s, exit status %s, %d case(s) passed, no FAIL line" % (
            t.get("name"), t.get("result"), t.get("returncode"), ok))
if not programs:
    ufail = 1  # the unit stage did not run
    print("unit tests: no results in %s" % testlog)
fpass, ffail = (int(x) for x in open(out + "/fuzz.txt").read().split())
try:
    s = ET.parse(out + "/pytest.xml").getroot()
    s = s.find("testsuite") if s.tag == "testsuites" else s
    total = int(s.get("tests"))
    # a skipped test checked nothing: it counts as failed, not as passed
    pskip = int(s.get("skipped"))
    pfail = int(s.get("failures")) + int(s.get("errors")) + pskip
    ppass = total - pfail
    if pskip:
        print("integration tests: %d skipped (counted as failed)" % pskip)
except Exception:
    ppass, pfail = 0, 1
print("unit %d/%d, fuzz %d/%d, integration %d/%d" % (
    upass, upass + ufail, fpass, fpass + ffail, ppass, ppass + pfail))
print("%d passed, %d failed" % (upass + fpass + ppass, ufail + ffail + pfail))
sys.exit(1 if ufail + ffail + pfail else 0)
PY
