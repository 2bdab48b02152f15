#!/usr/bin/env bash
# modes.sh: what BrainMM's run-time modes cost against its default mode, on
# the throughput rows (kind "time") of bench/workloads.txt. Every row runs
# under LD_PRELOAD of BrainMM in each mode:
#   default        no option set
#   stats          BMM_SHOW_STATS=1 (statistics table at exit)
#   secure         BMM_SECURE=1
#   secure2        BMM_SECURE=2 (whole freed blocks checked)
#   leak_sampled   BMM_LEAK_REPORT=1 BMM_LEAK_SAMPLE=524288 (report at exit)
# Interleaved: for each repeat, for each row, every mode runs once (the first
# mode rotating). Writes RESULTS_DIR/modes.md, and prints it: each row's median
# Mops/s (mops= of its RESULT line) per mode, each mode's cost (default Mops/s
# / mode Mops/s; 1.07x: 7% slower) and their geometric means. All runs preload
# one copy of BUILD_DIR/libbrainmm.so taken at the start (a rebuild meanwhile
# changes nothing). Programs' stderr is discarded, but failed runs' is kept
# in RESULTS_DIR/modes.log.
#
# Then real programs, the same way (bench/program.sh times each; rows
# prog_python3, prog_python3_malloc, prog_sqlite3, prog_cc; one whose
# command is not installed is skipped with a line): their geometric mean is
# given apart, since a program spends most of its time outside malloc.
#
# Environment (all optional):
#   QUICK=1          each row's quick arguments, 2 repeats
#   REPEATS=N        runs per (row, mode); default 3, 2 with QUICK
#   WORKLOADS=a,b    only these row ids (shell patterns: WORKLOADS='larson*')
#   MODES=a,b        only these modes, the first is the baseline (default:
#                    default,stats,secure,secure2,leak_sampled)
#   PROGRAMS=0       no real programs
#   RUN_TIMEOUT=S    kill a run after S seconds (default 120)
#   BUILD_DIR, RESULTS_DIR   the build tree and the output directory
# Exit status: 0; 1 if a run crashed, hung, printed no mops= or did not use
# BrainMM (timings never change it); 2 for a usage error.
set -u -o pipefail
export LC_ALL=C
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${1:-}" in
-h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
?*) echo "modes.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac
die() { echo "modes.sh: $*" >&2; exit 2; }
build=${BUILD_DIR:-$root/build}
out=${RESULTS_DIR:-$root/bench/results}
run_timeout=${RUN_TIMEOUT:-120}
quick=0 repeats=${REPEATS:-3}
[ "${QUICK:-0}" = 1 ] && quick=1 repeats=${REPEATS:-2}
case "$repeats" in '' | *[!0-9]* | 0) die "REPEATS must be a positive integer" ;; esac
[ -f "$build/libbrainmm.so" ] || die "$build/libbrainmm.so not built"

# mode_env MODE: its environment assignments (none for default)
mode_env() {
  case "$1" in
  default) ;;
  stats) echo BMM_SHOW_STATS=1 ;;
  secure) echo BMM_SECURE=1 ;;
  secure2) echo BMM_SECURE=2 ;;
  leak_sampled) echo BMM_LEAK_REPORT=1 BMM_LEAK_SAMPLE=524288 ;;
  *) return 1 ;;
  esac
}
IFS=, read -r -a modes <<<"${MODES:-default,stats,secure,secure2,leak_sampled}"
[ "${#modes[@]}" -ge 1 ] || die "MODES is empty"
for m in "${modes[@]}"; do mode_env "$m" >/dev/null || die "unknown mode '$m' in MODES"; done

# Rows: the "time" rows of workloads.txt that WORKLOADS selects
IFS=, read -r -a patterns <<<"${WORKLOADS:-*}"
ids=() progs=() argss=()
while IFS='|' read -r id prog args qargs kind _; do
  read -r id <<<"$id"; read -r prog <<<"$prog"; read -r kind <<<"$kind"; read -r qargs <<<"$qargs"
  case "$id" in '' | '#'*) continue ;; esac
  [ "$kind" = time ] || continue
  for p in "${patterns[@]}"; do
    # shellcheck disable=SC2053 # $p is a pattern on purpose
    if [[ $id == $p ]]; then
      [ "$quick" = 1 ] && [ -n "$qargs" ] && args=$qargs
      ids+=("$id") progs+=("$build/bench/$prog") argss+=("$args")
      break
    fi
  done
done <"$root/bench/workloads.txt"
prog_ids=()
if [ "${PROGRAMS:-1}" != 0 ]; then
  for p in python3 python3_malloc sqlite3 cc; do
    for pat in "${patterns[@]}"; do
      # shellcheck disable=SC2053 # $pat is a pattern on purpose
      [[ prog_$p == $pat ]] || continue
      if command -v "${p%_malloc}" >/dev/null 2>&1; then
        ids+=("prog_$p") progs+=("$root/bench/program.sh") argss+=("$p") prog_ids+=("prog_$p")
      else
        echo "modes.sh: ${p%_malloc} is not installed: row prog_$p skipped" >&2
      fi
      break
    done
  done
fi
[ "${#ids[@]}" -gt 0 ] || die "no time rows match WORKLOADS=${WORKLOADS:-}"

mkdir -p "$out" || die "cannot create $out"
tmp=$(mktemp -d) || die "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
lib=$tmp/libbrainmm.so # the snapshot every run preloads
cp -L "$build/libbrainmm.so" "$lib" || die "cannot copy $build/libbrainmm.so"
built=$(date -u -r "$build/libbrainmm.so" '+%Y-%m-%d %H:%M:%S UTC')
data=$tmp/data # one line per run: row mode mops seconds, or row mode FAIL reason
: >"$data"
: >"$out/modes.log"
total=$((repeats * ${#ids[@]} * ${#modes[@]}))
n=0 failures=0 start=$SECONDS
for ((rep = 0; rep < repeats; rep++)); do
  for i in "${!ids[@]}"; do
    read -r -a args <<<"${argss[i]}"
    for ((k = 0; k < ${#modes[@]}; k++)); do
      m=${modes[(k + rep) % ${#modes[@]}]}
      read -r -a menv <<<"$(mode_env "$m")"
      n=$((n + 1))
      printf 'modes: [%d/%d] %s %s ... ' "$n" "$total" "${ids[i]}" "$m" >&2
      cmd=(timeout "$run_timeout" env LD_PRELOAD="$lib" "${menv[@]+"${menv[@]}"}" "${progs[i]}" "${args[@]}")
      { "${cmd[@]}" >"$tmp/out" 2>"$tmp/err" </dev/null; } 2>/dev/null # no "Segmentation fault" from bash
      rc=$?
      res=$(grep -m 1 '^RESULT ' "$tmp/out")
      mops=$(sed -n 's/.* mops=\([0-9.]*\).*/\1/p' <<<"$res")
      secs=$(sed -n 's/.* seconds=\([0-9.]*\).*/\1/p' <<<"$res")
      from=$(sed -n 's/.* malloc_from=\([^ ]*\).*/\1/p' <<<"$res")
      if [ "$rc" -eq 124 ]; then why="timed out after $run_timeout s"
      elif [ "$rc" -gt 128 ]; then why="killed by signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null))"
      elif [ "$rc" -ne 0 ]; then why="exit status $rc"
      elif [ -z "$mops" ]; then why="no mops= in a RESULT line"
      elif [ -n "$from" ] && [ "$from" != libbrainmm.so ]; then why="malloc came from $from"
      else
        echo "$mops Mops/s" >&2
        echo "${ids[i]} $m $mops ${secs:--}" >>"$data"
        continue
      fi
      failures=$((failures + 1))
      echo "FAILED: $why" >&2
      tail -n 3 "$tmp/err" | sed 's/^/    /' >&2
      echo "${ids[i]} $m FAIL $why" >>"$data"
      { echo "=== ${ids[i]} $m repeat $((rep + 1)): $why"; echo "\$ ${cmd[*]}"
        tail -n 40 "$tmp/err"; tail -n 5 "$tmp/out"; } >>"$out/modes.log"
    done
  done
done

# Report: medians, costs against the first mode, geometric means
hash=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git -C "$root" status --porcelain -- src include 2>/dev/null)" ] && hash="$hash, src/ or include/ modified"
{
  echo "# BrainMM run-time modes against the default mode"
  echo
  echo "- **date**: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs; $(uname -m); git $hash"
  echo "- **library**: \`$build/libbrainmm.so\` built $built (copied at the start)"
  echo "- **runs**: $repeats repeat(s) per (row, mode)$([ "$quick" = 1 ] && echo ", QUICK arguments"), interleaved; $((SECONDS - start)) s"
  printf -- '- **modes**:'
  for m in "${modes[@]}"; do e=$(mode_env "$m"); printf " \`%s\` (%s)" "$m" "${e:-no option}"; done
  printf '\n\nMedians of Mops/s (higher is better); *cost* = %s Mops/s / mode Mops/s (above 1x: slower).\n\n' "${modes[0]}"
  python3 - "$data" "$(IFS=,; echo "${modes[*]}")" "$(IFS=,; echo "${ids[*]}")" \
    "$(IFS=,; echo "${prog_ids[*]+"${prog_ids[*]}"}")" <<'EOF'
import math, statistics, sys
modes, rows = sys.argv[2].split(","), sys.argv[3].split(",")
programs = set(filter(None, sys.argv[4].split(",")))
runs = {}  # (row, mode) -> [(mops, seconds or None)], None for a failed run
for f in map(str.split, open(sys.argv[1])):
    runs.setdefault((f[0], f[1]), []).append(
        None if f[2] == "FAIL" else (float(f[2]), None if f[3] == "-" else float(f[3])))
def med(row, mode, i):  # median of mops (i=0) or seconds (1); None if a run failed
    v = runs.get((row, mode), [])
    ok = v and None not in v and None not in [x[i] for x in v]
    return statistics.median(x[i] for x in v) if ok else None
def cell(row, mode):  # median mops, or how many runs failed
    v, r = med(row, mode, 0), runs.get((row, mode), [])
    return "**failed** %d/%d" % (r.count(None), len(r)) if v is None else "%.2f" % v if v >= 1 else "%.3g" % v
def rate(row, mode, by_secs):  # what costs compare: median mops, or 1 / median seconds
    v = med(row, mode, 1 if by_secs else 0)
    return (1 / v if by_secs else v) if v else None
base, others, notes = modes[0], modes[1:], False
costs = {m: [] for m in modes[1:]}  # the suite's rows
pcosts = {m: [] for m in modes[1:]}  # real programs
print("| workload | %s Mops/s |" % base + "".join(" %s Mops/s | %s cost |" % (m, m) for m in others))
print("|---|---:|" + "---:|---:|" * len(others))
for row in rows:
    b = med(row, base, 0)  # mops= with under 3 significant digits: compare seconds= instead
    by_secs = b is not None and b < 0.1 and bool(med(row, base, 1))
    notes |= by_secs
    r0, cells = rate(row, base, by_secs), [cell(row, base)]
    for m in others:
        r = rate(row, m, by_secs)
        c = r0 / r if r0 and r else None
        (pcosts if row in programs else costs)[m] += [c] if c else []
        cells += [cell(row, m), "%.2fx" % c if c else ""]
    print("| %s%s | %s |" % (row, " †" if by_secs else "", " | ".join(cells)))
def geo(cs):
    return ["%.2fx" % math.exp(sum(map(math.log, c)) / len(c)) if c else "" for c in cs.values()]
name = "**geometric mean**" if not programs else "**geometric mean** (suite rows)"
print("| %s | |" % name + "".join(" | %s |" % g for g in geo(costs)))
if programs:
    print("| **geometric mean** (prog_ rows) | |" + "".join(" | %s |" % g for g in geo(pcosts)))
if notes:
    print("\n† mops= has too few digits here: cost = mode seconds= / %s seconds= (medians; the work is fixed)." % base)
EOF
} | tee "$out/modes.md"
echo "modes: $n runs in $((SECONDS - start)) s; table in $out/modes.md" >&2
[ "$failures" -eq 0 ] || { echo "modes: $failures run(s) failed (see $out/modes.log)" >&2; exit 1; }
