#!/bin/sh
# Install everything ltxfs needs to build, run and test, from Debian 12's
# packages only. Safe to run again: apt-get skips what is installed.
#
#   sh deploy/install-deps.sh           build, run, and most of the tests
#   sh deploy/install-deps.sh --tests   also the tools only some tests run
#                                       (tests/run.sh): systemd-analyze,
#                                       man, groff, rsync, and what builds
#                                       SQLite's own test programs from
#                                       its source package (tests/sqlite/)
set -eu
PKGS="gcc clang libclang-rt-14-dev meson ninja-build pkg-config git
      fuse3 libfuse3-dev sqlite3 sqlite3-tools libsqlite3-dev
      libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev libyaml-dev liblz4-dev
      libssl-dev
      python3 python3-pytest python3-numpy python3-lz4 util-linux procps
      libsystemd-dev python3-yaml etcd-server"
TEST_PKGS="systemd man-db groff-base rsync tcl-dev dpkg-dev make xz-utils"
case "${1:-}" in
--tests) PKGS="$PKGS $TEST_PKGS" ;;
"") ;;
*)
	echo "usage: sh deploy/install-deps.sh [--tests]" >&2
	exit 2
	;;
esac
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# An image build has no /dev/fuse (the container gets it at run time):
# LTXFS_NO_FUSE_CHECK=1 skips the check there.
[ "${LTXFS_NO_FUSE_CHECK:-0}" = 1 ] && exit 0
modprobe fuse 2>/dev/null || true
test -e /dev/fuse || { echo "ltxfs needs /dev/fuse" >&2; exit 1; }
