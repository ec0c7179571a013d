#!/bin/sh
# Build SQLite's own test programs from Debian's sqlite3 source package, the
# same version as the installed libsqlite3-dev, into a cache directory:
#
#   <cache>/<version>/testfixture   the TCL test harness (test/*.test)
#   <cache>/<version>/mptester      mptest/mptest.c, the multi-process tester
#   <cache>/<version>/src/          the source tree (test/, mptest/ scripts)
#
# <cache> is $LTXFS_SQLITE_CACHE, or /var/cache/ltxfs-sqlite. Prints the
# version directory on its last line. A second run, with the cache present,
# only checks it (well under a second). sqldiff comes from Debian's
# sqlite3-tools. The programs need tcl-dev, dpkg-dev, make and xz-utils and a
# deb-src entry for bookworm main (sh deploy/install-deps.sh --tests); this
# script adds the entry itself when apt has none.
#
#   sh tests/sqlite/build.sh            build if needed
#   sh tests/sqlite/build.sh --rebuild  throw the cached build away first
set -eu
CACHE=${LTXFS_SQLITE_CACHE:-/var/cache/ltxfs-sqlite}
VERSION=$(dpkg-query -W -f='${Version}' libsqlite3-dev 2>/dev/null) || {
	echo "build.sh: libsqlite3-dev is not installed (sh deploy/install-deps.sh)" >&2
	exit 1
}
DIR=$CACHE/$VERSION
if [ "${1:-}" = --rebuild ]; then
	rm -rf "$DIR"
fi
# The stamp is written last: a build that stopped halfway is redone.
if [ -f "$DIR/.built" ] && [ -x "$DIR/testfixture" ] && [ -x "$DIR/mptester" ]; then
	echo "$DIR"
	exit 0
fi

for tool in tclsh make cc dpkg-source xz; do
	command -v "$tool" >/dev/null 2>&1 || {
		echo "build.sh: $tool is missing (sh deploy/install-deps.sh --tests)" >&2
		exit 1
	}
done
[ -f /usr/include/tcl/tcl.h ] || [ -f /usr/include/tcl8.6/tcl.h ] || {
	echo "build.sh: tcl.h is missing: install tcl-dev (sh deploy/install-deps.sh --tests)" >&2
	exit 1
}

# A deb-src entry for the suite the binary packages come from, unless one is
# there already (deb822 "Types: ... deb-src" or a one-line "deb-src").
has_debsrc() {
	grep -Eqs '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' \
		/etc/apt/sources.list /etc/apt/sources.list.d/*.list \
		/etc/apt/sources.list.d/*.sources
}
if ! has_debsrc; then
	echo "build.sh: adding a deb-src entry (/etc/apt/sources.list.d/ltxfs-deb-src.sources)" >&2
	cat >/etc/apt/sources.list.d/ltxfs-deb-src.sources <<-'EOF'
		# Added by ltxfs tests/sqlite/build.sh: SQLite's source package, for its test programs.
		Types: deb-src
		URIs: http://deb.debian.org/debian
		Suites: bookworm bookworm-updates
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

		Types: deb-src
		URIs: http://deb.debian.org/debian-security
		Suites: bookworm-security
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	apt-get update -qq
fi

rm -rf "$DIR"
mkdir -p "$DIR"
WORK=$DIR/work
mkdir -p "$WORK"
cd "$WORK"
# The exact version of the installed library; apt-get source unpacks it
# with Debian's patches applied.
if ! apt-get source -qq "sqlite3=$VERSION" >apt-source.log 2>&1; then
	apt-get update -qq
	apt-get source -qq "sqlite3=$VERSION" >apt-source.log 2>&1 || {
		cat apt-source.log >&2
		echo "build.sh: apt-get source sqlite3=$VERSION failed" >&2
		exit 1
	}
fi
SRC=$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name 'sqlite3-*' | head -1)
[ -n "$SRC" ] && [ -f "$SRC/test/tester.tcl" ] || {
	echo "build.sh: no source tree with test/tester.tcl under $WORK" >&2
	exit 1
}
mv "$SRC" "$DIR/src"
rm -rf "$WORK"

# testfixture: SQLite's own configure and Makefile target (the amalgamation
# plus src/test*.c, with SQLITE_TEST and the harness's TCL extensions).
mkdir -p "$DIR/bld"
cd "$DIR/bld"
JOBS=$(nproc 2>/dev/null || echo 2)
"$DIR/src/configure" --with-tcl=/usr/lib/tcl8.6 --disable-shared >configure.log 2>&1 || {
	tail -30 configure.log >&2
	echo "build.sh: configure failed ($DIR/bld/configure.log)" >&2
	exit 1
}
make -j"$JOBS" testfixture >make.log 2>&1 || {
	tail -30 make.log >&2
	echo "build.sh: make testfixture failed ($DIR/bld/make.log)" >&2
	exit 1
}
cp testfixture "$DIR/testfixture"

# mptester: mptest/mptest.c against the same sqlite3.c, SQLite's Makefile
# target (with configure's HAVE_USLEEP: without it every 10 ms wait of the
# tester sleeps a whole second).
make -j"$JOBS" mptester >mptester.log 2>&1 || {
	tail -30 mptester.log >&2
	echo "build.sh: make mptester failed ($DIR/bld/mptester.log)" >&2
	exit 1
}
cp mptester "$DIR/mptester"
touch "$DIR/.built"
echo "$DIR"
