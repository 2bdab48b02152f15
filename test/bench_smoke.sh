#!/usr/bin/env bash
# bench_smoke.sh LIBBRAINMM BENCHDIR - every program of the benchmark suite
# (bench/workloads.txt's programs, BENCHDIR holding the build) on tiny
# sizes, under BrainMM (LD_PRELOAD) and under glibc, results checked for
# plausibility:
#   - each run exits 0 and prints exactly one RESULT line naming the malloc
#     it used (libbrainmm.so under the preload, libc otherwise);
#   - the work done is the work asked: micro's ops=, the w_* programs'
#     units= (threads x units per thread); rss_kb= is positive;
#   - the checksum is the same under both allocators (the work is fixed,
#     so a different one means a wrong result);
#   - micro mem: 100 MB of live objects need at least 100 MB of RSS and,
#     under BrainMM, less than 2.5 times that; growth rss: BrainMM gives
#     the freed GiB back within the delay;
#   - bench/modes.sh on one row and two modes writes its table;
#   - bench/program.sh cc (a real program for modes.sh) prints its RESULT
#     line with a positive time.
# Prints "N passed, N failed" and exits non-zero on any failure.
set -u

if [ $# -lt 2 ]; then
  echo "usage: $0 path/to/libbrainmm.so path/to/build/bench" >&2
  exit 2
fi
lib=$(readlink -f "$1")
dir=$2
root=$(cd "$(dirname "$0")/.." && pwd)
limit=60 # seconds for any one run

. "$(dirname "$0")/check.sh"


# run ALLOC PROGRAM ARGS...: the RESULT line of one run (empty on failure,
# which is reported).
run() {
  local alloc=$1 prog=$2 out rc
  shift 2
  if [ "$alloc" = brainmm ]; then
    out=$(timeout "$limit" env LD_PRELOAD="$lib" "$dir/$prog" "$@" 2>&1)
  else
    out=$(timeout "$limit" "$dir/$prog" "$@" 2>&1)
  fi
  rc=$?
  local lines
  lines=$(grep -c '^RESULT ' <<<"$out")
  if [ $rc -ne 0 ] || [ "$lines" -ne 1 ]; then
    fail "$alloc: $prog $*: exit $rc, $lines RESULT lines: $(tail -3 <<<"$out")"
    return
  fi
  grep '^RESULT ' <<<"$out"
}

# Each row: program, the work it must report (micro: ops, w_*: units; "-"
# for none), then its arguments.
rows=(
  "micro 20000 small 20k"
  "micro 50000 fixed 64 50k"
  "micro 50000 batch 64 50k"
  "micro 50000 aligned 64 50k 64"
  "micro 20000 prodcon 20k"
  "w_mixed 5000 1 5k 32"
  "w_larson 60000 2 30k 1024"
  "w_cache_thrash 4000 2 2k 8"
  "w_cache_scratch 4000 2 2k 8"
  "w_phases 5000 1 5k 2048"
  "w_realloc 5000 1 5k 64K"
  "w_large 600 2 300 32M"
  "w_fixed_mt 100000 2 50k 64"
  "w_rbtree 5000 1 5k 32"
  "w_strings 10000 2 5k 256"
  "growth - step 4"
  "growth - double 16"
  "growth - cycle 3"
)

for row in "${rows[@]}"; do
  read -r prog work args <<<"$row"
  # shellcheck disable=SC2086 # args are words on purpose
  mine=$(run brainmm "$prog" $args)
  # shellcheck disable=SC2086
  theirs=$(run glibc "$prog" $args)
  if [ -z "$mine" ] || [ -z "$theirs" ]; then continue; fi
  what="$prog $args"
  case "$(field "$mine" malloc_from)" in
  libbrainmm.so*) ;;
  *) fail "$what: malloc_from under the preload: $(field "$mine" malloc_from)" ;;
  esac
  case "$(field "$theirs" malloc_from)" in
  libc*) ;;
  *) fail "$what: malloc_from without the preload: $(field "$theirs" malloc_from)" ;;
  esac
  if [ "$work" != - ]; then
    key=units
    [ "$prog" = micro ] && key=ops
    [ "$(field "$mine" $key)" = "$work" ] || fail "$what: $key=$(field "$mine" $key), expected $work"
  fi
  rss=$(field "$mine" rss_kb)
  [ -z "$rss" ] || [ "$rss" -gt 0 ] || fail "$what: rss_kb=$rss"
  sum=$(field "$mine" checksum)
  if [ -n "$sum" ] && [ "$sum" = "$(field "$theirs" checksum)" ]; then
    pass "$what: checksum $sum under both"
  else
    fail "$what: checksum $sum under BrainMM, $(field "$theirs" checksum) under glibc"
  fi
done

# Memory rows: 100 MB of 64-byte objects.
for alloc in brainmm glibc; do
  line=$(run "$alloc" micro mem 64)
  [ -n "$line" ] || continue
  mb=$(field "$line" rss_mb)
  max=100000
  [ "$alloc" = brainmm ] && max=250
  if awk -v m="$mb" -v x="$max" 'BEGIN { exit !(m >= 99 && m < x) }'; then
    pass "$alloc: micro mem 64: $mb MB of RSS per 100 MB"
  else
    fail "$alloc: micro mem 64: rss_mb=$mb"
  fi
done

# growth rss: 1 GiB freed, then given back within the delay (BrainMM).
line=$(run brainmm growth rss 50)
if [ -n "$line" ]; then
  peak=$(field "$line" rss_peak_kb) after=$(field "$line" rss_after_delay_kb)
  if [ -n "$peak" ] && [ -n "$after" ] && [ "$peak" -gt 500000 ] && [ "$after" -lt $((peak / 4)) ]; then
    pass "growth rss: $peak KB at the peak, $after KB after the delay"
  else
    fail "growth rss: peak '$peak' KB, after the delay '$after' KB"
  fi
fi

# bench/modes.sh: one row, two modes.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bmm-bench-smoke.XXXXXX") || exit 2
mkdir -p "$tmp/build/bench"
ln -s "$lib" "$tmp/build/libbrainmm.so"
ln -s "$(readlink -f "$dir/micro")" "$tmp/build/bench/micro"
if BUILD_DIR="$tmp/build" RESULTS_DIR="$tmp/out" WORKLOADS=fixed64 QUICK=1 REPEATS=1 \
  MODES=default,secure bash "$root/bench/modes.sh" >/dev/null 2>"$tmp/err" &&
  grep -q '^| fixed64 |' "$tmp/out/modes.md" && grep -q 'geometric mean' "$tmp/out/modes.md"; then
  pass "bench/modes.sh: fixed64 in the default and secure modes"
else
  fail "bench/modes.sh: $(tail -3 "$tmp/err")"
fi
rm -rf "$tmp"

# bench/program.sh: the compile, under BrainMM.
res=$(LD_PRELOAD="$lib" timeout "$limit" bash "$root/bench/program.sh" cc 2>&1)
if grep -Eq '^RESULT workload=cc seconds=[0-9.]+ mops=[0-9.]+$' <<<"$res" &&
  awk '{ split($3, a, "="); exit !(a[2] > 0) }' <<<"$res"; then
  pass "bench/program.sh cc: $res"
else
  fail "bench/program.sh cc: $res"
fi

finish
