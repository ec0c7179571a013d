#!/bin/sh
# Quick start: install what is missing, build, mount one ltxfs node on the
# embedded default config (static lease, this node is the primary), run a short
# SQLite workload through the mount and show what ltxfs recorded.
# Leaves the node running; it prints how to stop it.
set -eu
cd "$(dirname "$0")/.."
sh deploy/install-deps.sh
[ -d build ] || meson setup build --buildtype=release -Dwerror=true >/dev/null
ninja -C build >/dev/null
BIN=$PWD/build/src/ltxfs
BASE=${LTXFS_DEMO_DIR:-/tmp/ltxfs-demo}
mkdir -p "$BASE"
sed -e "s#@BASE@#$BASE#g" deploy/quickstart.yml > "$BASE/ltxfs.yml"
if grep -qs " $BASE/mnt " /proc/mounts; then
	echo "a demo node is already mounted at $BASE/mnt"
else
	nohup "$BIN" mount -config "$BASE/ltxfs.yml" > "$BASE/ltxfs.log" 2>&1 &
	echo $! > "$BASE/ltxfs.pid"
	i=0
	until grep -qs " $BASE/mnt fuse.ltxfs " /proc/mounts; do
		i=$((i + 1)); [ $i -lt 300 ] || { cat "$BASE/ltxfs.log"; exit 1; }
		sleep 0.1
	done
fi
DB=$BASE/mnt/demo.db
sqlite3 "$DB" <<'SQL'
PRAGMA journal_mode=wal;
CREATE TABLE IF NOT EXISTS visits(id INTEGER PRIMARY KEY, who TEXT, at TEXT);
INSERT INTO visits(who, at) VALUES('alice', datetime('now'));
INSERT INTO visits(who, at) VALUES('bob', datetime('now'));
INSERT INTO visits(who, at) VALUES('carol', datetime('now'));
SQL
echo "--- rows, read back through the mount:"
sqlite3 -header -column "$DB" "SELECT * FROM visits ORDER BY id DESC LIMIT 5;"
echo "--- replication position (TXID/checksum) in $DB-pos:"
cat "$DB-pos"
echo "--- one LTX file per committed transaction in $BASE/data/dbs/demo.db/ltx:"
ls "$BASE/data/dbs/demo.db/ltx" | tail -5
echo
echo "ltxfs is running (pid $(cat "$BASE/ltxfs.pid"), log $BASE/ltxfs.log)."
echo "Use any SQLite client on $BASE/mnt. Stop it with: kill \$(cat $BASE/ltxfs.pid)"
