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
#     and replays cleanly.
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

finish
