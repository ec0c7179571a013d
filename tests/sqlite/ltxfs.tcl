# Sourced by testfixture in place of a test file (tests/sqlite/tclrun.py runs
# "testfixture ltxfs.tcl TEST --testdir="), in the plain directory and in the
# mount alike; it then sources TEST. It makes two changes to SQLite's
# harness, both listed among the exclusions in tests/sqlite/README.md.
#
# 1. The lock-byte page stays where every SQLite but the test harness has it,
# at 1 GiB. test/tester.tcl moves it to 64 KiB
# ("sqlite3_test_control_pending_byte 0x0010000") so that small test
# databases exercise it. ltxfs knows the real one only: a whole-file install
# takes SQLite's locks at PENDING_BYTE 0x40000000 (a testfixture locking at
# 64 KiB would not see them), and LTX files and checksums leave out the page
# at 1 GiB, not page 65 of a 1 KiB-page database. The lock-byte page through
# the mount is tested with a real 1 GiB database instead
# (tests/integration/test_sqlite_formats.py). A test case that needs the
# moved page then fails in the plain directory as well and is not compared.

rename sqlite3_test_control_pending_byte ltxfs_pending_byte
proc sqlite3_test_control_pending_byte {n} {
  ltxfs_pending_byte 0x40000000
}

# 2. [file delete] and [file copy] leave
# ltxfs's "<db>-pos" files alone. ltxfs lists a read-only <db>-pos beside
# every database in the mount (README.md, "What you see in the mount"), and
# the harness deletes and copies files by glob (db_save and db_restore in
# test/tester.tcl: "foreach f [glob test.db*] {forcedelete $f}"), which
# fails on it with EPERM ("not owner") and ends the whole test file. No
# SQLite test names a -pos file, and a plain directory has none, so this
# changes nothing outside the mount. tests/sqlite/README.md lists it among
# the exclusions.

rename file ltxfs_file

proc ltxfs_is_pos {name} {
  string match {*-pos} $name
}

proc file {sub args} {
  if {$sub eq "delete" || $sub eq "copy"} {
    set opts {}
    set names {}
    foreach a $args {
      if {[llength $names]==0 && [string match -* $a]} {
        lappend opts $a
      } else {
        lappend names $a
      }
    }
    if {$sub eq "delete"} {
      set keep {}
      foreach n $names {
        if {![ltxfs_is_pos $n]} { lappend keep $n }
      }
      if {[llength $keep]==0} { return }
      set names $keep
    } elseif {[llength $names]>=2} {
      set keep {}
      foreach n [lrange $names 0 end-1] {
        if {![ltxfs_is_pos $n]} { lappend keep $n }
      }
      if {[llength $keep]==0 || [ltxfs_is_pos [lindex $names end]]} { return }
      set names [concat $keep [list [lindex $names end]]]
    }
    set args [concat $opts $names]
  }
  tailcall ltxfs_file $sub {*}$args
}

set argv0 [lindex $argv 0]
set argv [lrange $argv 1 end]
source $argv0
