#!/usr/bin/env bash
# Side-by-side allocator benchmark for BrainMM: workloads x allocators.
#
# Runs every row of bench/workloads.txt under glibc (no preload), BrainMM and
# the Debian builds of mimalloc, jemalloc and tcmalloc (through LD_PRELOAD),
# interleaved: for each repeat, for each workload, every allocator runs once
# in turn (the first one rotates between repeats), so that a noisy neighbour
# slows all of them alike. Each run's wall time, CPU time (user + sys) and
# peak RSS are measured by this script (GNU time); the workload's own RESULT
# line is kept too. bench/report.py then writes a Markdown report of medians,
# with ratios to mimalloc, and charts.
#
# Usage: bench/run.sh [MICRO [LIBBRAINMM]]
#   MICRO        micro binary        (default: BUILD_DIR/bench/micro)
#   LIBBRAINMM   BrainMM shared lib  (default: BUILD_DIR/libbrainmm.so)
# The workload programs (w_*) are looked for next to MICRO. A relative path
# is taken from the current directory if it exists there, else from the
# repository root. Both can also be given as the environment variables MICRO
# and BRAINMM_LIB.
# Environment:
#   BUILD_DIR=D       build tree (default build, or MICRO's ../..)
#   WORKLOADS_FILE=F  table of rows (default bench/workloads.txt; micro's own
#                     rows when that file does not exist)
#   WORKLOADS=a,b     only these row ids (shell patterns: WORKLOADS='mem*')
#   ALLOCATORS=a,b    only these allocators (glibc brainmm mimalloc jemalloc
#                     tcmalloc)
#   QUICK=1           each row's quick arguments and 3 repeats (~1-2 min)
#   REPEATS=N         runs per (workload, allocator); default 5, 3 with QUICK
#   BUDGET=S          when REPEATS is not given, use fewer repeats if the run
#                     would take longer than S seconds (default 570, 110 with
#                     QUICK; 0 = no limit)
#   TRACES=0          do not record and replay allocation traces
#   NO_INSTALL=1      never apt-get install missing peers, time or gnuplot
#   RUN_TIMEOUT=S     kill a single run after S seconds (default 120)
#   RECORD_TIMEOUT=S  limit for bench/record-traces.sh (default 120)
#   RECORD_SCRIPT=F, REPLAY_BIN=F  trace recorder and replayer (default
#                     bench/record-traces.sh, BUILD_DIR/tools/bmm-replay)
#   RESULTS_DIR=D     where the outputs go (default bench/results)
#   NO_CHARTS=1       no charts
# Outputs in RESULTS_DIR: latest.csv (every run), latest.md (the report),
# time.png/.svg and memory.png/.svg (charts), latest.meta (what report.py
# needs besides the CSV), latest.log (stderr of failed runs).
# Exit status: 0, or 1 if a run crashed, hung, printed no RESULT line, used
# the wrong malloc or printed a checksum that differs from the other
# allocators' (timings never change it), 2 for a usage error.

set -u -o pipefail
export LC_ALL=C # '.' as the decimal point, in EPOCHREALTIME too

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$script_dir/.." && pwd)

case "${1:-}" in
-h | --help)
    sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
-*)
    printf 'run.sh: unknown option %s (see --help)\n' "$1" >&2
    exit 2
    ;;
esac

log() { printf '%s\n' "$*" >&2; }
abspath() { # relative: from the current directory if it exists there, else the root
    case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) if [ -e "$1" ]; then printf '%s\n' "$PWD/$1"; else printf '%s\n' "$root/$1"; fi ;;
    esac
}
shortpath() { # for messages: drop the repository root prefix
    case "$1" in
    "$root"/*) printf '%s\n' "${1#"$root"/}" ;;
    *) printf '%s\n' "$1" ;;
    esac
}
fmt_dur() { # fmt_dur SECONDS -> M:SS
    local s=${1%.*}
    [ -n "$s" ] || s=0
    printf '%d:%02d' $((s / 60)) $((s % 60))
}
now_us() { # microseconds since the epoch
    local t=$EPOCHREALTIME
    printf '%s\n' "$((10#${t%.*} * 1000000 + 10#${t#*.}))"
}
start_us=$(now_us)

# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------
micro_arg=${1:-${MICRO:-}}
if [ -n "${BUILD_DIR:-}" ]; then
    build_dir=$(abspath "$BUILD_DIR")
elif [ -n "$micro_arg" ]; then
    build_dir=$(cd "$(dirname "$(abspath "$micro_arg")")/.." 2>/dev/null && pwd || echo "$root/build")
else
    build_dir=$root/build
fi
micro=$(abspath "${micro_arg:-$build_dir/bench/micro}")
brainmm_lib=$(abspath "${2:-${BRAINMM_LIB:-$build_dir/libbrainmm.so}}")
prog_dir=$(dirname "$micro")
replay_bin=$(abspath "${REPLAY_BIN:-$build_dir/tools/bmm-replay}")
workloads_file=$(abspath "${WORKLOADS_FILE:-bench/workloads.txt}")
record_script=$(abspath "${RECORD_SCRIPT:-$script_dir/record-traces.sh}")
quick=${QUICK:-0}
[ "$quick" = 0 ] && quick=""
if [ -n "$quick" ]; then
    repeats=${REPEATS:-3} budget=${BUDGET:-110}
else
    repeats=${REPEATS:-5} budget=${BUDGET:-570}
fi
results_dir=$(abspath "${RESULTS_DIR:-$script_dir/results}")
run_timeout=${RUN_TIMEOUT:-120}
record_timeout=${RECORD_TIMEOUT:-120}

is_count() { case "$1" in '' | *[!0-9]*) return 1 ;; esac; }
is_count "$repeats" && [ "$repeats" -gt 0 ] ||
    { log "run.sh: REPEATS must be a positive integer (got '$repeats')"; exit 2; }
is_count "$budget" || { log "run.sh: BUDGET must be a number of seconds (got '$budget')"; exit 2; }
is_count "$run_timeout" && [ "$run_timeout" -gt 0 ] ||
    { log "run.sh: RUN_TIMEOUT must be a positive number of seconds (got '$run_timeout')"; exit 2; }
is_count "$record_timeout" ||
    { log "run.sh: RECORD_TIMEOUT must be a number of seconds (got '$record_timeout')"; exit 2; }
# the budget trims only the default number of repeats, never an explicit one
[ -n "${REPEATS:-}" ] && budget=0
if [ ! -x "$micro" ]; then
    log "run.sh: micro binary not found: $(shortpath "$micro")"
    log "        build it first (make, or cmake --build build) and pass its path"
    log "        as the first argument, MICRO=... or BUILD_DIR=..."
    exit 2
fi
command -v python3 >/dev/null 2>&1 || { log "run.sh: python3 is required (bench/report.py)"; exit 2; }

# --------------------------------------------------------------------------
# Workloads: parallel arrays, one entry per row
# --------------------------------------------------------------------------
w_id=() w_prog=() w_args=() w_kind=() w_metric=() w_desc=()
declare -A seen_id=()

trim() { # trim VAR: strip leading and trailing blanks of $VAR
    local -n v=$1
    v=${v#"${v%%[![:space:]]*}"}
    v=${v%"${v##*[![:space:]]}"}
}
add_row() { # add_row ID PROGRAM ARGS KIND DESCRIPTION [WHERE]
    local id=$1 prog=$2 args=$3 kind=$4 desc=$5 where=${6:-} metric=""
    case "$id" in
    '' | [!A-Za-z0-9]* | *[!A-Za-z0-9_.+-]*)
        log "run.sh: ${where}bad workload id '$id' (letters, digits, _ . + -)"; exit 2 ;;
    esac
    [ -z "${seen_id[$id]:-}" ] || { log "run.sh: ${where}workload id '$id' appears twice"; exit 2; }
    [ -n "$prog" ] || { log "run.sh: ${where}no program for '$id'"; exit 2; }
    case "$kind" in
    *:*) metric=${kind#*:} kind=${kind%%:*} ;;
    esac
    case "$kind" in
    time) [ -n "$metric" ] || metric="mops seconds" ;;
    mem) [ -n "$metric" ] || metric="rss_mb rss_kb" ;;
    replay) [ -n "$metric" ] || metric="seconds" ;;
    *) log "run.sh: ${where}kind of '$id' must be time or mem (got '$kind')"; exit 2 ;;
    esac
    seen_id[$id]=1
    w_id+=("$id") w_prog+=("$prog") w_args+=("$args") w_kind+=("$kind")
    w_metric+=("$metric") w_desc+=("$desc")
}

if [ -f "$workloads_file" ]; then
    lineno=0
    while IFS= read -r line || [ -n "$line" ]; do
        lineno=$((lineno + 1))
        line=${line%$'\r'}
        trim line
        case "$line" in '' | '#'*) continue ;; esac
        IFS='|' read -r f_id f_prog f_args f_qargs f_kind f_desc <<<"$line"
        for f in f_id f_prog f_args f_qargs f_kind f_desc; do
            [ -n "${!f+x}" ] || printf -v "$f" '%s' ""
            trim "$f"
        done
        [ -n "$quick" ] && [ -n "$f_qargs" ] && f_args=$f_qargs
        add_row "$f_id" "$f_prog" "$f_args" "$f_kind" "$f_desc" "$(shortpath "$workloads_file"):$lineno: "
    done <"$workloads_file"
    [ "${#w_id[@]}" -gt 0 ] || { log "run.sh: no rows in $(shortpath "$workloads_file")"; exit 2; }
else
    if [ -n "${WORKLOADS_FILE:-}" ]; then
        log "run.sh: workloads file not found: $(shortpath "$workloads_file")"
        exit 2
    fi
    log "note: $(shortpath "$workloads_file") not found; using micro's own rows"
    if [ -n "$quick" ]; then a=5M b=10M c=1M; else a=20M b=40M c=5M; fi
    add_row small micro "small $a" time "random 16-1024 B in a window of 1000 live blocks"
    add_row fixed64 micro "fixed 64 $b" time "malloc(64)+free in a tight loop"
    add_row batch64 micro "batch 64 $b" time "100 x malloc(64), then free the 100"
    add_row prodcon micro "prodcon $c" time "16-256 B malloc'd by one thread, freed by another"
    for s in 16 32 48 64; do
        add_row "mem$s" micro "mem $s" mem "RSS to hold 100 MB of live $s B objects"
    done
fi

# WORKLOADS: shell patterns, matched against the ids
patterns=()
[ -n "${WORKLOADS:-}" ] && read -r -a patterns <<<"${WORKLOADS//,/ }"
wanted() { # wanted ID: does WORKLOADS select it?
    local p
    [ "${#patterns[@]}" -eq 0 ] && return 0
    for p in "${patterns[@]}"; do
        # shellcheck disable=SC2053 # $p is a pattern on purpose
        [[ $1 == $p ]] && return 0
    done
    return 1
}

# --------------------------------------------------------------------------
# Packages: peer allocators, GNU time, gnuplot
# --------------------------------------------------------------------------
multiarch=$(gcc -print-multiarch 2>/dev/null || true)
[ -n "$multiarch" ] || multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || true)
[ -n "$multiarch" ] || multiarch="$(uname -m)-linux-gnu"
ldconfig_bin=$(command -v ldconfig 2>/dev/null || echo /sbin/ldconfig)

find_lib() { # find_lib SONAME -> path on stdout, or nothing
    local soname=$1 dir p
    for dir in "/usr/lib/$multiarch" "/lib/$multiarch"; do
        [ -e "$dir/$soname" ] && { printf '%s\n' "$dir/$soname"; return 0; }
    done
    # ldconfig -p lines: "	libfoo.so.2 (libc6,x86-64) => /path/libfoo.so.2"
    p=$("$ldconfig_bin" -p 2>/dev/null |
        awk -v s="$soname" -v ma="$multiarch" '
            $1 == s { path = $NF; if (index(path, "/" ma "/")) { print path; exit }
                      if (first == "") first = path }
            END { if (first != "") print first }' | head -n 1)
    [ -n "$p" ] && [ -e "$p" ] && { printf '%s\n' "$p"; return 0; }
    return 1
}

peer_names=(mimalloc jemalloc tcmalloc)
peer_sonames=(libmimalloc.so.2 libjemalloc.so.2 libtcmalloc_minimal.so.4)
peer_pkgs=(libmimalloc2.0 libjemalloc2 libtcmalloc-minimal4)
peer_paths=("" "" "")

alloc_filter=()
[ -n "${ALLOCATORS:-}" ] && read -r -a alloc_filter <<<"${ALLOCATORS//,/ }"
for a in "${alloc_filter[@]+"${alloc_filter[@]}"}"; do
    case "$a" in
    glibc | brainmm | mimalloc | jemalloc | tcmalloc) ;;
    *) log "run.sh: unknown allocator '$a' in ALLOCATORS"; exit 2 ;;
    esac
done
alloc_wanted() {
    local a
    [ "${#alloc_filter[@]}" -eq 0 ] && return 0
    for a in "${alloc_filter[@]}"; do [ "$a" = "$1" ] && return 0; done
    return 1
}

time_bin=$(type -P time 2>/dev/null || true)
[ -n "$time_bin" ] || { [ -x /usr/bin/time ] && time_bin=/usr/bin/time; }
missing_pkgs=()
for i in "${!peer_names[@]}"; do
    alloc_wanted "${peer_names[i]}" || continue
    peer_paths[i]=$(find_lib "${peer_sonames[i]}" || true)
    [ -n "${peer_paths[i]}" ] || missing_pkgs+=("${peer_pkgs[i]}")
done
[ -n "$time_bin" ] || missing_pkgs+=(time)
[ -n "${NO_CHARTS:-}" ] && [ "${NO_CHARTS}" != 0 ] || command -v gnuplot >/dev/null 2>&1 ||
    missing_pkgs+=(gnuplot-nox)
if [ "${#missing_pkgs[@]}" -gt 0 ] && [ "${NO_INSTALL:-0}" != 1 ] &&
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${missing_pkgs[*]} ..."
    apt_install() { # one at a time, so that one unknown package spoils nothing
        local p ok=0
        for p in "$@"; do
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                -o DPkg::Lock::Timeout=300 "$p" >/dev/null 2>&1 || ok=1
        done
        return $ok
    }
    if ! apt_install "${missing_pkgs[@]}"; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1
        apt_install "${missing_pkgs[@]}" || log "apt-get install of some of ${missing_pkgs[*]} failed"
    fi
    for i in "${!peer_names[@]}"; do
        alloc_wanted "${peer_names[i]}" || continue
        [ -n "${peer_paths[i]}" ] || peer_paths[i]=$(find_lib "${peer_sonames[i]}" || true)
    done
    [ -n "$time_bin" ] || time_bin=$(type -P time 2>/dev/null || true)
fi

# How each run is measured. GNU time forks the run from a small process, so
# the child's peak RSS is its own (a child forked from python3 or bash would
# inherit their ~10 MB high-water mark through exec).
if [ -n "$time_bin" ]; then
    measure="wall time: this script's clock around each run (+~4 ms of exec overhead); CPU time (user+sys, 10 ms resolution) and peak RSS (maxrss): GNU time"
else
    log "note: GNU time not found (package 'time'): CPU time from python3 os.wait4, peak RSS not measured"
    measure="wall time: this script's clock around each run; CPU time: python3 os.wait4; peak RSS: not measured (no GNU time)"
fi
# Fallback measurer: python3 MEASURE_PY OUTFILE CMD... writes the same line as
# GNU time's -f format below, with NA for the peak RSS.
measure_py='
import os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write("BMMTIME %.2f %.2f NA\n" % (ru.ru_utime, ru.ru_stime))
sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
'

# --------------------------------------------------------------------------
# Allocators
# --------------------------------------------------------------------------
describe_exit() { # describe_exit RC
    if [ "$1" -eq 124 ]; then echo "timed out (RUN_TIMEOUT=$run_timeout s)"
    elif [ "$1" -gt 128 ]; then echo "was killed by signal $(($1 - 128)) ($(kill -l $(($1 - 128)) 2>/dev/null || echo ?))"
    else echo "failed with exit status $1"; fi
}
skipped=()
trial_failures=0
skip() { # skip WHAT REASON: say it now, and in the report's header
    log "skipping $1: $2"
    skipped+=("$1: $2")
}

timeout_cmd=()
command -v timeout >/dev/null 2>&1 && timeout_cmd=(timeout "$run_timeout")

# Each allocator: name and library ("" = glibc, no preload).
alloc_names=() alloc_libs=()
alloc_wanted glibc && { alloc_names+=(glibc); alloc_libs+=(""); }
add_alloc() { # add_alloc NAME LIB: keep it only if a quick run really uses it
    local name=$1 lib=$2 out from want real rc
    out=$(env LD_PRELOAD="$lib" "${timeout_cmd[@]}" "$micro" fixed 64 1000 2>&1 </dev/null)
    rc=$?
    if [ "$rc" -ne 0 ]; then
        skip "$name" "trial run 'micro fixed 64 1000' with LD_PRELOAD=$(shortpath "$lib") $(describe_exit "$rc")"
        trial_failures=$((trial_failures + 1))
        printf '%s\n' "$out" | grep . | head -n 5 | sed 's/^/    /' >&2
        return
    fi
    from=$(printf '%s\n' "$out" | sed -n 's/^RESULT .*malloc_from=\([^ ]*\).*/\1/p' | tail -n 1)
    want=$(basename "$lib")
    real=$(basename "$(readlink -f "$lib")")
    if [ "$from" != "$want" ] && [ "$from" != "$real" ]; then
        skip "$name" "malloc still comes from '${from:-?}' with LD_PRELOAD=$(shortpath "$lib")"
        trial_failures=$((trial_failures + 1))
        printf '%s\n' "$out" | grep -v '^RESULT' | head -n 5 | sed 's/^/    /' >&2
        return
    fi
    alloc_names+=("$name")
    alloc_libs+=("$lib")
}

if alloc_wanted brainmm; then
    if [ -e "$brainmm_lib" ]; then
        add_alloc brainmm "$brainmm_lib"
    else
        skip brainmm "$(shortpath "$brainmm_lib") not found"
    fi
fi
for i in "${!peer_names[@]}"; do
    alloc_wanted "${peer_names[i]}" || continue
    if [ -n "${peer_paths[i]}" ]; then
        add_alloc "${peer_names[i]}" "${peer_paths[i]}"
    else
        skip "${peer_names[i]}" "not installed (${peer_pkgs[i]}, ${peer_sonames[i]})"
    fi
done
nalloc=${#alloc_names[@]}
[ "$nalloc" -gt 0 ] || { log "run.sh: no allocator left to run"; exit 1; }

mkdir -p "$results_dir" || exit 2
csv=$results_dir/latest.csv
meta=$results_dir/latest.meta
logfile=$results_dir/latest.log
tmpdir=$(mktemp -d)
# the .new files become the outputs at the end; an early exit drops them
trap 'rm -rf "$tmpdir" "$csv.new" "$logfile.new"' EXIT

# --------------------------------------------------------------------------
# Trace replay rows (bench/record-traces.sh + build/tools/bmm-replay)
# --------------------------------------------------------------------------
: >"$logfile.new"
want_traces=1
[ "${TRACES:-1}" = 0 ] && want_traces=""
if [ -n "$want_traces" ] && [ "${#patterns[@]}" -gt 0 ]; then
    want_traces=""
    for p in "${patterns[@]}"; do
        case "$p" in replay* | '*' | '?'*) want_traces=1 ;; esac
    done
fi
if [ -n "$want_traces" ] && [ -f "$record_script" ]; then
    if [ ! -x "$replay_bin" ]; then
        skip "trace replay" "$(shortpath "$replay_bin") not built"
    else
        trace_dir=$results_dir/traces
        rm -rf "$trace_dir" && mkdir -p "$trace_dir"
        log "recording allocation traces with bench/record-traces.sh (at most ${record_timeout} s) ..."
        rec_start=$(now_us)
        rec_cmd=(bash "$record_script" "$trace_dir")
        [ "$record_timeout" -gt 0 ] && command -v timeout >/dev/null 2>&1 &&
            rec_cmd=(timeout "$record_timeout" "${rec_cmd[@]}")
        # the recorder library of this build tree, unless one is given
        rec_env=(BUILD_DIR="$build_dir" REPLAY_BIN="$replay_bin")
        [ -z "${BMM_TRACE_LIB:-}" ] && [ -f "$build_dir/tools/libbrainmm-trace.so" ] &&
            rec_env+=(BMM_TRACE_LIB="$build_dir/tools/libbrainmm-trace.so")
        rec_out=$(env "${rec_env[@]}" "${rec_cmd[@]}" 2>"$trace_dir/record.stderr" </dev/null)
        rec_rc=$?
        {
            printf '=== bench/record-traces.sh (exit status %d)\n' "$rec_rc"
            printf '%s\n' "$rec_out"
            cat "$trace_dir/record.stderr"
        } >>"$logfile.new"
        traces=()
        while IFS= read -r t; do # the paths it printed, or else what it left
            trim t
            case "$t" in /*) ;; '') continue ;; *) t=$trace_dir/$t ;; esac
            [ -f "$t" ] && [ -s "$t" ] && traces+=("$t")
        done <<<"$rec_out"
        if [ "${#traces[@]}" -eq 0 ]; then
            for t in "$trace_dir"/*.trace; do [ -s "$t" ] && traces+=("$t"); done
        fi
        rec_s=$((($(now_us) - rec_start) / 1000000))
        if [ "$rec_rc" -ne 0 ]; then
            skip "trace replay" "bench/record-traces.sh $(describe_exit "$rec_rc" | sed "s/RUN_TIMEOUT=$run_timeout/RECORD_TIMEOUT=$record_timeout/") after ${rec_s} s (see latest.log)"
            traces=()
        elif [ "${#traces[@]}" -eq 0 ]; then
            skip "trace replay" "bench/record-traces.sh recorded no trace (see latest.log)"
        else
            log "recorded ${#traces[@]} trace(s) in ${rec_s} s"
        fi
        for t in "${traces[@]+"${traces[@]}"}"; do
            name=$(basename "$t")
            name=${name%.trace}
            name=$(printf '%s' "$name" | tr -c 'A-Za-z0-9_.+-' '_')
            id="replay-$name"
            [ -z "${seen_id[$id]:-}" ] || continue
            add_row "$id" "$replay_bin" "$t" replay "replay of the allocation trace $(basename "$t")"
        done
    fi
fi

# --------------------------------------------------------------------------
# Rows to run: selected by WORKLOADS, with a program that exists
# --------------------------------------------------------------------------
for p in "${patterns[@]+"${patterns[@]}"}"; do
    hit=""
    # shellcheck disable=SC2053 # $p is a pattern on purpose
    for id in "${w_id[@]}"; do [[ $id == $p ]] && { hit=1; break; }; done
    if [ -z "$hit" ]; then
        case "$p" in
        replay*) skip "$p" "no such trace replay row" ;;
        *) log "run.sh: no workload id matches '$p' (ids: ${w_id[*]})"; exit 2 ;;
        esac
    fi
done
rows=() # indexes into w_*
r_path=()
for i in "${!w_id[@]}"; do
    wanted "${w_id[i]}" || continue
    prog=${w_prog[i]}
    case "$prog" in
    micro) path=$micro ;;
    */*) path=$(abspath "$prog") ;;
    *) path=$prog_dir/$prog ;;
    esac
    if [ ! -x "$path" ]; then
        skip "${w_id[i]}" "program $(shortpath "$path") not found (not built?)"
        continue
    fi
    rows+=("$i")
    r_path[i]=$path
    # placeholders in arguments: {root} the repository, {build} the build tree
    w_args[i]=${w_args[i]//\{root\}/$root}
    w_args[i]=${w_args[i]//\{build\}/$build_dir}
done
nrows=${#rows[@]}
[ "$nrows" -gt 0 ] || { log "run.sh: no workload left to run"; exit 1; }

# --------------------------------------------------------------------------
# Estimate: from the previous run in the same mode, if there is one
# --------------------------------------------------------------------------
total=$((repeats * nrows * nalloc))
ids_sel=""
for i in "${rows[@]}"; do ids_sel+="${w_id[i]} "; done
estimate=""
if [ -f "$csv" ] && [ -f "$meta" ] &&
    grep -qx $'quick\t'"${quick:-0}" "$meta" 2>/dev/null; then
    # mean wall time of each (workload, allocator) of the last run, summed
    # over this run's pairs; nothing if any pair is missing from it
    estimate=$(awk -F, -v ids="$ids_sel" -v allocs="${alloc_names[*]}" -v reps="$repeats" '
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        $col["status"] == "ok" { k = $col["workload"] SUBSEP $col["allocator"]
                                 sum[k] += $col["wall_s"]; n[k]++ }
        END { nw = split(ids, w, " "); na = split(allocs, a, " "); t = 0
              for (i = 1; i <= nw; i++) for (j = 1; j <= na; j++) {
                  k = w[i] SUBSEP a[j]; if (!(k in n)) exit
                  t += sum[k] / n[k] + 0.02 }
              printf "%d\n", t * reps + 0.5 }' "$csv" 2>/dev/null)
fi
mode="${quick:+QUICK, }$repeats repeat$([ "$repeats" = 1 ] || echo s)"
msg="$nrows workload(s) x $nalloc allocator(s) (${alloc_names[*]}) x $repeats = $total runs ($mode)"
if [ -n "$estimate" ]; then
    log "$msg; estimated $(fmt_dur "$estimate") from the previous run"
else
    log "$msg; time estimate after the first repeat"
fi
[ "$budget" -gt 0 ] && log "time budget: ${budget} s (fewer repeats if needed; REPEATS=N or BUDGET=0 to disable)"

# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------
printf 'workload,allocator,repeat,wall_s,cpu_s,maxrss_kb,metric,value,kind,status,result\n' >"$csv.new"
outfile=$tmpdir/out errfile=$tmpdir/err timefile=$tmpdir/time

failures=0
n=0
loop_start=$(now_us)
for ((rep = 1; rep <= repeats; rep++)); do
    for i in "${rows[@]}"; do
        wid=${w_id[i]}
        if [ "${w_kind[i]}" = replay ]; then
            wargs=("${w_args[i]}") # a trace's path, taken whole
        else
            read -r -a wargs <<<"${w_args[i]}"
        fi
        # rotate the starting allocator each repeat, so none is always first
        for ((k = 0; k < nalloc; k++)); do
            a=$(((k + rep - 1) % nalloc))
            name=${alloc_names[a]}
            lib=${alloc_libs[a]}
            n=$((n + 1))
            if [ -n "$lib" ]; then envcmd=(env LD_PRELOAD="$lib"); else envcmd=(env -u LD_PRELOAD); fi
            cmd=("${timeout_cmd[@]}" "${envcmd[@]}" "${r_path[i]}" "${wargs[@]+"${wargs[@]}"}")
            now=$(now_us)
            el=$(((now - start_us) / 1000000))
            if [ "$n" -gt 1 ]; then
                left=$(((now - loop_start) / (n - 1) * (total - n + 1) / 1000000))
                eta=", ~$(fmt_dur "$left") left"
            else
                eta=""
            fi
            printf '[%d/%d %s%s] %s %s ... ' "$n" "$total" "$(fmt_dur "$el")" "$eta" "$wid" "$name" >&2

            : >"$timefile"
            t0=$(now_us)
            if [ -n "$time_bin" ]; then
                "$time_bin" -f 'BMMTIME %U %S %M' -o "$timefile" "${cmd[@]}" >"$outfile" 2>"$errfile" </dev/null
            else
                python3 -c "$measure_py" "$timefile" "${cmd[@]}" >"$outfile" 2>"$errfile" </dev/null
            fi
            rc=$?
            t1=$(now_us)
            wall=$(((t1 - t0) / 1000000)).$(printf '%06d' $(((t1 - t0) % 1000000)))

            # cpu, maxrss, metric, value, malloc_from, result line
            IFS=$'\t' read -r cpu rss metric value from result < <(
                awk -v cands="${w_metric[i]}" '
                    FILENAME == ARGV[1] && /^RESULT / { res = substr($0, 8) }
                    FILENAME == ARGV[2] && /^BMMTIME / { cpu = sprintf("%.2f", $2 + $3); rss = $4 }
                    END {
                        nf = split(res, f, " ")
                        for (j = 1; j <= nf; j++) { p = index(f[j], "=")
                            if (p > 1) kv[substr(f[j], 1, p - 1)] = substr(f[j], p + 1) }
                        nc = split(cands, c, " "); m = c[1]; v = ""
                        for (j = 1; j <= nc; j++) if (c[j] in kv && kv[c[j]] != "") { m = c[j]; v = kv[m]; break }
                        from = ("malloc_from" in kv) ? kv["malloc_from"] : ""
                        printf "%s\t%s\t%s\t%s\t%s\t%s\n", cpu == "" ? "NA" : cpu,
                            rss == "" ? "NA" : rss, m, v == "" ? "NA" : v,
                            from == "" ? "-" : from, res == "" ? "-" : res
                    }' "$outfile" "$timefile")
            [ "$result" = - ] && result=""
            [ "$from" = - ] && from=""

            status=ok
            if [ "$rc" -ne 0 ]; then
                if [ "$rc" -eq 124 ]; then status=timeout
                elif [ "$rc" -gt 128 ]; then status=signal-$((rc - 128))
                else status=exit-$rc; fi
                why=$(describe_exit "$rc")
            elif [ -z "$result" ]; then
                status=no-result why="no RESULT line"
            elif [ "$value" = NA ]; then
                status=no-metric why="RESULT line has no ${w_metric[i]// / or }"
            elif [ -n "$from" ] && { if [ -n "$lib" ]; then
                [ "$from" != "$(basename "$lib")" ] && [ "$from" != "$(basename "$(readlink -f "$lib")")" ]
            else
                case "$from" in libc.so* | libc-*) false ;; *) true ;; esac
            fi; }; then
                status=wrong-malloc why="malloc came from $from"
            fi

            if [ "$status" = ok ]; then
                if [ "$rss" = NA ]; then rss_txt=""; else
                    x=$((rss * 1024 / 100000)) # tenths of MB (10^6 B)
                    rss_txt=", peak RSS $((x / 10)).$((x % 10)) MB"
                fi
                log "${wall%???} s, cpu $cpu s$rss_txt, $metric=$value"
            else
                failures=$((failures + 1))
                log "FAILED: $why"
                head -n 3 "$errfile" | sed 's/^/    /' >&2
                {
                    printf '=== %s %s repeat %d: %s\n$ %s\n' "$wid" "$name" "$rep" "$why" "${cmd[*]}"
                    head -n 40 "$errfile"
                    tail -n 5 "$outfile"
                } >>"$logfile.new"
            fi
            printf '%s,%s,%d,%s,%s,%s,%s,%s,%s,%s,"%s"\n' "$wid" "$name" "$rep" "$wall" "$cpu" \
                "$rss" "$metric" "$value" "${w_kind[i]}" "$status" "${result//\"/\"\"}" >>"$csv.new"
        done
    done

    # Budget: after each repeat, keep only as many repeats as still fit.
    now=$(now_us)
    per_rep=$(((now - loop_start) / rep + 1))
    if [ "$budget" -gt 0 ] && [ "$rep" -lt "$repeats" ]; then
        left_us=$((budget * 1000000 - (now - start_us) - 5000000)) # 5 s for the report
        fit=$((rep + (left_us > 0 ? left_us / per_rep : 0)))
        if [ "$fit" -lt "$repeats" ]; then
            log "time budget ${budget} s: $fit repeat(s) instead of $repeats (BUDGET=0 or REPEATS=N to override)"
            skipped+=("repeats: $fit instead of $repeats, to stay within the time budget of ${budget} s")
            repeats=$fit
            total=$((repeats * nrows * nalloc))
        fi
    fi
    if [ "$rep" -eq 1 ] && [ "$repeats" -gt 1 ]; then
        log "first repeat took $(fmt_dur $(((now - loop_start) / 1000000))); about $(fmt_dur $((per_rep * (repeats - 1) / 1000000))) to go"
    fi
done
elapsed=$((($(now_us) - start_us) / 1000000))
mv "$csv.new" "$csv"
mv "$logfile.new" "$logfile"

# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
{
    printf 'format\t1\n'
    printf 'quick\t%s\n' "${quick:-0}"
    printf 'repeats\t%s\n' "$repeats"
    printf 'elapsed_s\t%s\n' "$elapsed"
    printf 'failures\t%s\n' "$((failures + trial_failures))"
    printf 'measure\t%s\n' "$measure"
    printf 'workloads_file\t%s\n' "$(shortpath "$workloads_file")"
    printf 'build_dir\t%s\n' "$(shortpath "$build_dir")"
    printf 'root\t%s\n' "$root"
    for i in "${rows[@]}"; do
        prog=${w_prog[i]}
        [ "${w_kind[i]}" = replay ] && prog=bmm-replay
        args=${w_args[i]}
        [ "${w_kind[i]}" = replay ] && args=$(shortpath "$args")
        printf 'workload\t%s\t%s\t%s\t%s\t%s\n' "${w_id[i]}" "${w_kind[i]}" \
            "${w_metric[i]%% *}" "$prog${args:+ $args}" "${w_desc[i]}"
    done
    for a in "${!alloc_names[@]}"; do
        name=${alloc_names[a]} lib=${alloc_libs[a]} pkg=""
        if [ -z "$lib" ]; then
            pkg=libc6
        else
            for j in "${!peer_names[@]}"; do
                [ "${peer_names[j]}" = "$name" ] && pkg=${peer_pkgs[j]}
            done
        fi
        printf 'allocator\t%s\t%s\t%s\n' "$name" "$(shortpath "${lib:-none}")" "$pkg"
    done
    for s in "${skipped[@]+"${skipped[@]}"}"; do printf 'skipped\t%s\n' "$s"; done
} >"$meta"

report_args=()
[ -n "${NO_CHARTS:-}" ] && [ "${NO_CHARTS}" != 0 ] && report_args+=(--no-charts)
python3 "$script_dir/report.py" "${report_args[@]+"${report_args[@]}"}" "$csv"
report_rc=$?
total_s=$((($(now_us) - start_us) / 1000000))
outs=""
for f in latest.md latest.csv time.png time.svg memory.png memory.svg; do
    [ -f "$results_dir/$f" ] && outs+=" $f"
done
log "results in $(shortpath "$results_dir")/:$outs"
log "total time $(fmt_dur "$total_s")"

# Timings never decide the exit status; crashes, hangs and errors do.
status=0
if [ "$failures" -gt 0 ] || [ "$trial_failures" -gt 0 ]; then
    log "run.sh: $failures run(s) and $trial_failures trial run(s) failed (see $(shortpath "$logfile"))"
    status=1
fi
case "$report_rc" in
0) ;;
3) log "run.sh: checksums differ between allocators (see the report's header)"; status=1 ;;
*) log "run.sh: bench/report.py failed (exit status $report_rc)"; status=1 ;;
esac
exit "$status"
