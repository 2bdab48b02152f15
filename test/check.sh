# check.sh: the counters the shell tests share; source it, then call
#   pass [WHAT]  a check passed (prints "ok: WHAT" when given one);
#   fail WHAT    a check failed (prints "FAIL: WHAT" on stderr);
#   finish       prints "N passed, N failed" and exits 1 if any failed,
# so a shell test reports like the C tests' check_done();
#   field "LINE" KEY   the value of KEY=value in a RESULT line (empty when
#                absent).
passed=0
failed=0
pass() {
  passed=$((passed + 1))
  if [ $# -gt 0 ]; then echo "ok: $*"; fi
}
fail() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
finish() {
  echo "$passed passed, $failed failed"
  if [ "$failed" -eq 0 ]; then exit 0; else exit 1; fi
}
field() { sed -n "s/.*[ ^]$2=\([^ ]*\).*/\1/p" <<<" $1"; }
