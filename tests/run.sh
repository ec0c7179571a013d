#!/bin/sh
# The whole test suite, from a clean clone on Debian 12 as root:
#   1. install what is missing (Debian packages only)
#   2. build under ASan+UBSan (warnings are errors) and run the C unit tests
#   3. build the libFuzzer targets with clang and give each a short run
#   4. run the integration tests (real FUSE mounts, real SQLite clients)
#      against the sanitized binary
# The last line is "N passed, N failed" over all three kinds of test.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
sh deploy/install-deps.sh || exit 1

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

echo "== integration tests"
LTXFS_BIN=$ROOT/build-ci/src/ltxfs LTXFS_BUILD=$ROOT/build-ci \
	/usr/bin/python3 -m pytest -q -p no:cacheprovider --junitxml="$OUT/pytest.xml" \
	tests/integration

/usr/bin/python3 - "$OUT" <<'PY'
import re, sys, xml.etree.ElementTree as ET
out = sys.argv[1]
unit = open(out + "/unit.txt").read()
def count(label):
    m = re.search(r"^%s:\s+(\d+)" % label, unit, re.M)
    return int(m.group(1)) if m else 0
upass = count("Ok")
ufail = count("Fail") + count("Timeout") + count("Unexpected Pass")
if upass + ufail == 0:
    ufail = 1  # the unit stage did not run
fpass, ffail = (int(x) for x in open(out + "/fuzz.txt").read().split())
try:
    s = ET.parse(out + "/pytest.xml").getroot()
    s = s.find("testsuite") if s.tag == "testsuites" else s
    total = int(s.get("tests"))
    pfail = int(s.get("failures")) + int(s.get("errors"))
    ppass = total - pfail - int(s.get("skipped"))
except Exception:
    ppass, pfail = 0, 1
print("unit %d/%d, fuzz %d/%d, integration %d/%d" % (
    upass, upass + ufail, fpass, fpass + ffail, ppass, ppass + pfail))
print("%d passed, %d failed" % (upass + fpass + ppass, ufail + ffail + pfail))
sys.exit(1 if ufail + ffail + pfail else 0)
PY
