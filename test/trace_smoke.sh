#!/usr/bin/env bash
# trace_smoke.sh TRACELIB REPLAY VICTIM - the trace recorder and bmm-replay,
# end to end, on tiny sizes:
#   - VICTIM (test/trace_victim.c) runs under LD_PRELOAD=TRACELIB in its
#     "work" and "idle" modes; the difference between the two traces (what
#     libc allocates for itself cancels out) has exactly the operations,
#     live bytes and live objects the victim says it made and left;
#   - the trace needs no record skipped, and has the victim's 2 threads;
#   - REPLAY replays it single-threaded and with --threads 4: same op count,
#     it ends with the recorded live bytes and objects, RSS > 0, no failures;
#   - --fixed-heap on a heap too small stops with a failure point inside the
#     trace, and on a large one (checking the heap after every operation)
#     completes; an unknown --heap is refused;
#   - "fork" mode: the child's own trace starts with the blocks it inherited
#     and replays cleanly;
#   - edge cases: a first allocation by memalign that the next allocator
#     rounds up; exec (the new image writes NAME.2, the old file stays); a
#     _Fork child (not recorded, the parent's trace whole); a constructor
#     that changes directory (a relative name is from the start); signal
#     handlers that fork or exit (no hang); equal times across two chunks
#     replay in op rank order.
# Prints "N passed, N failed" and exits non-zero on any failure.
set -u

if [ $# -lt 3 ]; then
  echo "usage: $0 path/to/libbrainmm-trace.so path/to/bmm-replay path/to/trace_victim" >&2
  exit 2
fi
lib=$(readlink -f "$1")
replay=$2
victim=$3
limit=120 # seconds for any one program

. "$(dirname "$0")/check.sh"

# check NAME GOT WANT
check() {
  if [ -n "$2" ] && [ "$2" = "$3" ]; then pass "$1 ($2)"; else fail "$1: got '$2', expected '$3'"; fi
}

for f in "$lib" "$replay" "$victim"; do
  [ -f "$f" ] || { fail "missing $f"; finish; }
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bmm-trace.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT

# record MODE: runs the victim under the tracer; prints its stdout.
record() {
  mkdir -p "$tmp/$1"
  BMM_TRACE_FILE="$tmp/$1/%p.trace" timeout "$limit" env LD_PRELOAD="$lib" "$victim" "$1"
}

work_out=$(record work) || fail "victim (work) exited $?"
idle_out=$(record idle) || fail "victim (idle) exited $?"
work_trace=$(ls "$tmp"/work/*.trace 2>/dev/null)
idle_trace=$(ls "$tmp"/idle/*.trace 2>/dev/null)
if [ "$(wc -w <<<"$work_trace")" -ne 1 ] || [ "$(wc -w <<<"$idle_trace")" -ne 1 ]; then
  fail "expected one trace file per run, got: $work_trace / $idle_trace"
  finish
fi
pass "one trace file per run ($(stat -c %s "$work_trace") bytes)"

work_info=$("$replay" "$work_trace" --info 2>&1)
idle_info=$("$replay" "$idle_trace" --info 2>&1)
echo "$work_info"
victim_line=$(grep '^victim ' <<<"$work_out")
for key in ops live_bytes live_objects; do
  info_key=$key
  [ "$key" = ops ] || info_key=final_$key
  w=$(field "$work_info" "$info_key")
  i=$(field "$idle_info" "$info_key")
  v=$(field "$victim_line" "$key")
  if [ -z "$w" ] || [ -z "$i" ] || [ -z "$v" ]; then
    fail "$key: missing value (trace '$w', idle '$i', victim '$v')"
  else
    check "trace minus idle trace: $key as the victim counted" "$((w - i))" "$v"
  fi
done
check "no record skipped" "$(field "$work_info" skipped)" 0
check "the victim's threads are in the trace" "$(field "$work_info" threads)" 3
ops=$(field "$work_info" ops)
live=$(field "$work_info" final_live_bytes)
objects=$(field "$work_info" final_live_objects)

# replay_check LABEL ARGS...: one replay, checked for plausibility.
replay_check() {
  local label=$1
  shift
  local out rc
  out=$(timeout "$limit" "$replay" "$work_trace" "$@" 2>&1)
  rc=$?
  echo "$out"
  check "$label: exit status" "$rc" 0
  local line
  line=$(grep '^RESULT ' <<<"$out")
  check "$label: op count" "$(field "$line" ops)" "$ops"
  check "$label: final live bytes" "$(field "$line" final_live_bytes)" "$live"
  check "$label: final live objects" "$(field "$line" final_live_objects)" "$objects"
  check "$label: no failed allocation" "$(field "$line" failed)" 0
  local rss
  rss=$(field "$line" peak_rss_kb)
  if [ "${rss:-0}" -gt 0 ] 2>/dev/null; then pass "$label: peak RSS $rss KiB"; else fail "$label: peak RSS '$rss'"; fi
  local frag
  frag=$(field "$line" fragmentation)
  if [[ "$frag" =~ ^[0-9]+\.[0-9]+$ ]]; then pass "$label: fragmentation $frag"; else fail "$label: fragmentation '$frag'"; fi
}
replay_check "single-threaded replay"
replay_check "replay with --threads 4" --threads 4
threads=$(field "$(timeout "$limit" "$replay" "$work_trace" --threads 4 2>/dev/null)" threads)
if [ "${threads:-0}" -ge 2 ] 2>/dev/null; then pass "multi-threaded replay used $threads threads"; else fail "multi-threaded replay used '$threads' threads"; fi

# ---- fixed heap ------------------------------------------------------------
out=$(timeout "$limit" "$replay" "$work_trace" --fixed-heap 64K 2>&1)
rc=$?
echo "$out"
check "fixed heap too small: exit status" "$rc" 0
check "fixed heap too small: does not complete" "$(field "$out" completed)" no
done_ops=$(field "$out" replayed_ops)
used_pct=$(field "$out" used_pct)
if [ "${done_ops:-0}" -gt 0 ] 2>/dev/null && [ "$done_ops" -lt "$ops" ]; then
  pass "fixed heap too small: fails after $done_ops of $ops operations"
else
  fail "fixed heap too small: replayed_ops '$done_ops' of $ops"
fi
if awk -v p="${used_pct:-x}" 'BEGIN { exit !(p + 0 > 0 && p + 0 <= 100) }'; then
  pass "fixed heap too small: ${used_pct}% in use at the failure"
else
  fail "fixed heap too small: used_pct '$used_pct'"
fi

out=$(timeout "$limit" "$replay" "$work_trace" --fixed-heap 32M --check-heap 2>&1)
rc=$?
echo "$out"
check "fixed heap large enough (checked): exit status" "$rc" 0
check "fixed heap large enough: completes" "$(field "$out" completed)" yes
check "fixed heap large enough: all operations" "$(field "$out" replayed_ops)" "$ops"
check "fixed heap large enough: final live bytes" "$(field "$out" live_bytes)" "$live"

if "$replay" "$work_trace" --fixed-heap 1M --heap no-such-heap >/dev/null 2>&1; then
  fail "an unknown --heap was accepted"
else
  pass "an unknown --heap is refused"
fi

# ---- fork --------------------------------------------------------------------
fork_out=$(record fork) || fail "victim (fork) exited $?"
traces=$(ls "$tmp"/fork/*.trace 2>/dev/null | wc -l)
check "fork: parent and child each wrote a trace" "$traces" 2
child_trace=
parent_info=
for f in "$tmp"/fork/*.trace; do
  info=$("$replay" "$f" --info 2>&1)
  if [ "$(field "$info" forked)" = 1 ]; then
    child_trace=$f
    child_info=$info
  else
    parent_info=$info
  fi
done
if [ -n "$child_trace" ]; then
  echo "$child_info"
  child_ops=$(field "$(grep '^child ' <<<"$fork_out")" ops)
  inherit=$(field "$child_info" inherit)
  check "fork: the child inherited the parent's live objects" "$inherit" \
    "$(field "$parent_info" final_live_objects)"
  check "fork: the child's own operations" "$(($(field "$child_info" ops) - inherit))" "$child_ops"
  check "fork: no record skipped" "$(field "$child_info" skipped)" 0
  out=$(timeout "$limit" "$replay" "$child_trace" 2>&1)
  rc=$?
  check "fork: the child's trace replays" "$rc" 0
  check "fork: replay ends with the child's live bytes" "$(field "$out" final_live_bytes)" \
    "$(field "$child_info" final_live_bytes)"
else
  fail "fork: no trace marked forked"
fi

# ---- edge cases ----------------------------------------------------------------
# info FILE KEY: one field of bmm-replay --info.
info() {
  field "$("$replay" "$1" --info 2>&1)" "$2"
}

# The process's first allocation a memalign the next allocator rounds up.
out=$(record memalign) && pass "memalign(24, 100) first: succeeds" ||
  fail "memalign(24, 100) first: victim exited $?: $out"

# exec keeps the pid: the image before it keeps its trace, the new one
# writes NAME.2.
record exec >/dev/null || fail "exec: victim exited $?"
first=$(ls "$tmp"/exec/*.trace 2>/dev/null)
if [ "$(wc -w <<<"$first")" -eq 1 ] && [ -f "$first.2" ]; then
  before=$(info "$first" ops)
  if [ "${before:-0}" -gt 16 ] 2>/dev/null; then
    pass "exec: the image before the exec kept its trace ($before operations)"
  else
    fail "exec: the image before the exec: '$before' operations"
  fi
  check "exec: the image after it, in NAME.2" "$(info "$first.2" ops)" 16
  check "exec: same pid" "$(info "$first.2" pid)" "$(info "$first" pid)"
else
  fail "exec: expected NAME and NAME.2, got: $(ls "$tmp"/exec)"
fi

# A _Fork child (no fork handlers) is not recorded, and leaves the parent's
# trace whole.
out=$(record underfork) || fail "underfork: victim exited $?"
files=$(ls "$tmp"/underfork/)
if [ "$(wc -w <<<"$files")" -eq 1 ]; then
  f=$tmp/underfork/$files
  check "_Fork: the parent's operations only" "$(info "$f" ops)" "$(field "$out" ops)"
  check "_Fork: no record skipped" "$(info "$f" skipped)" 0
else
  fail "_Fork: expected one trace, got: $files"
fi

# A constructor of the program changes directory before the first
# allocation: a relative name is from where the program started.
mkdir -p "$tmp/rel/sub"
(cd "$tmp/rel" && VICTIM_CHDIR=sub BMM_TRACE_FILE=rel.trace timeout "$limit" \
  env LD_PRELOAD="$lib" "$victim" small >/dev/null) || fail "chdir: victim exited $?"
if [ -f "$tmp/rel/rel.trace" ] && [ ! -e "$tmp/rel/sub/rel.trace" ]; then
  pass "a relative trace name is from the starting directory"
else
  fail "relative trace name: $(cd "$tmp/rel" && find . -name '*.trace')"
fi

# A signal handler that forks, or exits, while the program allocates: it
# interrupts a call of the tracer's now and then, whose locks it must not
# wait for. Ten runs each, none may hang.
for mode in sigfork sigexit; do
  hung=0
  for i in 1 2 3 4 5 6 7 8 9 10; do
    mkdir -p "$tmp/$mode"
    BMM_TRACE_FILE="$tmp/$mode/%p.trace" timeout 10 env LD_PRELOAD="$lib" "$victim" "$mode"
    [ $? -eq 124 ] && hung=$((hung + 1))
  done
  check "$mode: runs that hung" "$hung" 0
done

# Records of equal time in two threads' chunks, the free's chunk first in
# the file: the allocation still comes first.
"$victim" write-tie "$tmp/tie.trace" || fail "write-tie exited $?"
out=$("$replay" "$tmp/tie.trace" 2>&1)
check "equal times across chunks: final live bytes" "$(field "$out" final_live_bytes)" 0
check "equal times across chunks: no record skipped" "$(info "$tmp/tie.trace" skipped)" 0

finish
