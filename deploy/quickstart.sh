#!/bin/sh
# Quick start: install what is missing, build, and start a local three-node
# cluster on loopback with the embedded default (static lease): node1 is the
# primary (HTTP 127.0.0.1:20201), node2 and node3 replicate from it. Writes
# rows on the primary with the sqlite3 CLI and reads them back from a
# replica's mount. Leaves the cluster running; it prints how to stop it.
set -eu
cd "$(dirname "$0")/.."
sh deploy/install-deps.sh
[ -d build ] || meson setup build --buildtype=release -Dwerror=true >/dev/null
ninja -C build >/dev/null
BIN=$PWD/build/src/ltxfs
BASE=${LTXFS_DEMO_DIR:-/tmp/ltxfs-demo}
mkdir -p "$BASE"
port=20201
for node in node1 node2 node3; do
	candidate=false
	[ "$node" = node1 ] && candidate=true
	mkdir -p "$BASE/$node"
	sed -e "s#@BASE@#$BASE#g" -e "s#@NODE@#$node#g" -e "s#@PORT@#$port#g" \
		-e "s#@CANDIDATE@#$candidate#g" deploy/quickstart.yml > "$BASE/$node/ltxfs.yml"
	port=$((port + 1))
	if grep -qs " $BASE/$node/mnt " /proc/mounts; then
		echo "$node is already mounted at $BASE/$node/mnt"
		continue
	fi
	nohup "$BIN" mount -config "$BASE/$node/ltxfs.yml" > "$BASE/$node/ltxfs.log" 2>&1 &
	echo $! > "$BASE/$node/ltxfs.pid"
	i=0
	until grep -qs " $BASE/$node/mnt fuse.ltxfs " /proc/mounts; do
		i=$((i + 1)); [ $i -lt 300 ] || { cat "$BASE/$node/ltxfs.log"; exit 1; }
		sleep 0.1
	done
done
DB=$BASE/node1/mnt/demo.db
sqlite3 "$DB" <<'SQL'
PRAGMA journal_mode=wal;
CREATE TABLE IF NOT EXISTS visits(id INTEGER PRIMARY KEY, who TEXT, at TEXT);
INSERT INTO visits(who, at) VALUES('alice', datetime('now'));
INSERT INTO visits(who, at) VALUES('bob', datetime('now'));
INSERT INTO visits(who, at) VALUES('carol', datetime('now'));
SQL
want=$(cat "$DB-pos")
for node in node2 node3; do
	i=0
	until [ "$(cat "$BASE/$node/mnt/demo.db-pos" 2>/dev/null)" = "$want" ]; do
		i=$((i + 1)); [ $i -lt 300 ] || { cat "$BASE/$node/ltxfs.log"; exit 1; }
		sleep 0.05
	done
done
echo "--- written on the primary (node1), read back from replica node2's mount:"
sqlite3 -header -column "$BASE/node2/mnt/demo.db" \
	"SELECT * FROM visits ORDER BY id DESC LIMIT 5;"
echo "--- positions (TXID/checksum), identical on all three nodes:"
for node in node1 node2 node3; do printf '%s %s' "$node" "$(cat "$BASE/$node/mnt/demo.db-pos")"; echo; done
echo "--- node2 follows $(cat "$BASE/node2/mnt/.primary"), lag $(cat "$BASE/node2/mnt/.lag") ms"
echo "--- a write on a replica is refused:"
sqlite3 "$BASE/node3/mnt/demo.db" "INSERT INTO visits(who) VALUES('mallory');" 2>&1 || true
echo
echo "The cluster is running (mounts $BASE/node{1,2,3}/mnt, logs $BASE/node*/ltxfs.log)."
echo "Stop it with: kill \$(cat $BASE/node*/ltxfs.pid)"
