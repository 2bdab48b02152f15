#!/usr/bin/env bash
# Side-by-side allocator benchmark for BrainMM.
#
# Runs bench/micro under glibc (no preload), BrainMM and the Debian builds of
# mimalloc, jemalloc and tcmalloc (through LD_PRELOAD), interleaved: for each
# repeat, for each workload, every allocator runs once in turn, so that a
# noisy neighbour slows all of them alike. Prints a Markdown table of medians
# and writes it, with a CSV of every run, to bench/results/.
#
# Usage: bench/run.sh [MICRO [LIBBRAINMM]]
#   MICRO        micro binary        (default: build/bench/micro)
#   LIBBRAINMM   BrainMM shared lib  (default: build/libbrainmm.so)
# A relative path is taken from the current directory if it exists there,
# else from the repository root. Both can also be given as the environment
# variables MICRO and BRAINMM_LIB.
# Environment:
#   REPEATS=N       runs per (workload, allocator); default 5, 3 with QUICK=1
#   QUICK=1         smaller op counts and 3 repeats (well under a minute)
#   WORKLOADS=a,b   only these rows (ids: small fixed64 batch64 prodcon
#                   mem16 mem32 mem48 mem64)
#   NO_INSTALL=1    never try to apt-get install missing peer allocators
#   RUN_TIMEOUT=S   kill a single run after S seconds (default 120)
#   RESULTS_DIR=D   where latest.md/latest.csv go (default bench/results)
# Exit status: 0, or 1 if a run crashed, hung, printed no RESULT line or a
# checksum that differs from the other allocators' (timings never change
# it), 2 for a usage error.

set -u -o pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$script_dir/.." && pwd)

case "${1:-}" in
-h | --help)
    sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
esac

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

micro=$(abspath "${1:-${MICRO:-build/bench/micro}}")
brainmm_lib=$(abspath "${2:-${BRAINMM_LIB:-build/libbrainmm.so}}")
quick=${QUICK:-0}
[ "$quick" = 0 ] && quick=""
if [ -n "$quick" ]; then repeats=${REPEATS:-3}; else repeats=${REPEATS:-5}; fi
results_dir=${RESULTS_DIR:-$script_dir/results}
run_timeout=${RUN_TIMEOUT:-120}

log() { printf '%s\n' "$*" >&2; }

case "$repeats" in
'' | *[!0-9]* | 0)
    log "run.sh: REPEATS must be a positive integer (got '$repeats')"
    exit 2
    ;;
esac
if [ ! -x "$micro" ]; then
    log "run.sh: micro binary not found: $(shortpath "$micro")"
    log "        build it first (cmake --build build, or: cc -O2 -pthread -fno-builtin -o /tmp/micro bench/micro.c)"
    log "        and pass its path as the first argument or MICRO=..."
    exit 2
fi
command -v python3 >/dev/null 2>&1 || { log "run.sh: python3 is required for the summary"; exit 2; }

# --------------------------------------------------------------------------
# Workloads: id | label | metric key in the RESULT line | better | micro args
# --------------------------------------------------------------------------
if [ -n "$quick" ]; then
    small_ops=8M fixed_ops=10M pc_ops=1M
else
    small_ops=20M fixed_ops=40M pc_ops=5M
fi
all_workloads=(
    "small|small: random 16-1024 B, 1000 live|mops|higher|small $small_ops"
    "fixed64|fixed: malloc+free 64 B|mops|higher|fixed 64 $fixed_ops"
    "batch64|batch: 100 x 64 B, then free|mops|higher|batch 64 $fixed_ops"
    "prodcon|prodcon: 16-256 B, freed by 2nd thread|mops|higher|prodcon $pc_ops"
    "mem16|mem: 100 MB live as 16 B|rss_mb|lower|mem 16"
    "mem32|mem: 100 MB live as 32 B|rss_mb|lower|mem 32"
    "mem48|mem: 100 MB live as 48 B|rss_mb|lower|mem 48"
    "mem64|mem: 100 MB live as 64 B|rss_mb|lower|mem 64"
)
workloads=()
if [ -n "${WORKLOADS:-}" ]; then
    for want in ${WORKLOADS//,/ }; do
        found=""
        for w in "${all_workloads[@]}"; do
            [ "${w%%|*}" = "$want" ] && { workloads+=("$w"); found=1; }
        done
        [ -n "$found" ] || { log "run.sh: unknown workload id '$want'"; exit 2; }
    done
else
    workloads=("${all_workloads[@]}")
fi

# --------------------------------------------------------------------------
# Allocators
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

missing_pkgs=()
for i in "${!peer_names[@]}"; do
    peer_paths[i]=$(find_lib "${peer_sonames[i]}" || true)
    [ -n "${peer_paths[i]}" ] || missing_pkgs+=("${peer_pkgs[i]}")
done
if [ "${#missing_pkgs[@]}" -gt 0 ] && [ "${NO_INSTALL:-0}" != 1 ] &&
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${missing_pkgs[*]} ..."
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            -o DPkg::Lock::Timeout=300 "${missing_pkgs[@]}" >/dev/null 2>&1
    }
    if ! apt_install; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1
        apt_install || log "apt-get install ${missing_pkgs[*]} failed"
    fi
    for i in "${!peer_names[@]}"; do
        [ -n "${peer_paths[i]}" ] || peer_paths[i]=$(find_lib "${peer_sonames[i]}" || true)
    done
fi

describe_exit() { # describe_exit RC
    if [ "$1" -eq 124 ]; then echo "timed out"
    elif [ "$1" -gt 128 ]; then echo "was killed by signal $(($1 - 128)) ($(kill -l $(($1 - 128)) 2>/dev/null || echo ?))"
    else echo "failed with exit status $1"; fi
}
skipped=()
trial_failures=0
skip() { # skip NAME REASON: say it now, and in the table's header
    log "skipping $1: $2"
    skipped+=("$1: $2")
}

timeout_cmd=()
command -v timeout >/dev/null 2>&1 && timeout_cmd=(timeout "$run_timeout")

# Each allocator: name and library ("" = glibc, no preload).
alloc_names=(glibc)
alloc_libs=("")
add_alloc() { # add_alloc NAME LIB: keep it only if a quick run really uses it
    local name=$1 lib=$2 out from want real
    out=$(env LD_PRELOAD="$lib" "${timeout_cmd[@]}" "$micro" fixed 64 1000 2>&1)
    local rc=$?
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

if [ -e "$brainmm_lib" ]; then
    add_alloc brainmm "$brainmm_lib"
else
    skip brainmm "$(shortpath "$brainmm_lib") not found"
fi
for i in "${!peer_names[@]}"; do
    if [ -n "${peer_paths[i]}" ]; then
        add_alloc "${peer_names[i]}" "${peer_paths[i]}"
    else
        skip "${peer_names[i]}" "not installed (${peer_pkgs[i]}, ${peer_sonames[i]})"
    fi
done

# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------
mkdir -p "$results_dir"
csv="$results_dir/latest.csv"
raw="$results_dir/latest.raw"
md="$results_dir/latest.md"
printf 'workload,allocator,repeat,value\n' >"$csv"
: >"$raw"
errfile=$(mktemp)
trap 'rm -f "$errfile"' EXIT

nalloc=${#alloc_names[@]}
total=$((repeats * ${#workloads[@]} * nalloc))
n=0
failures=0
start_time=$(date +%s)
for ((rep = 1; rep <= repeats; rep++)); do
    for w in "${workloads[@]}"; do
        IFS='|' read -r wid _label metric _better wargs <<<"$w"
        # rotate the starting allocator each repeat, so none is always first
        for ((k = 0; k < nalloc; k++)); do
            a=$(((k + rep - 1) % nalloc))
            name=${alloc_names[a]}
            lib=${alloc_libs[a]}
            n=$((n + 1))
            printf '[%d/%d] %s %s ... ' "$n" "$total" "$wid" "$name" >&2
            # shellcheck disable=SC2086 # wargs is a list of words
            if [ -z "$lib" ]; then
                out=$(env -u LD_PRELOAD "${timeout_cmd[@]}" "$micro" $wargs 2>"$errfile")
            else
                out=$(env LD_PRELOAD="$lib" "${timeout_cmd[@]}" "$micro" $wargs 2>"$errfile")
            fi
            rc=$?
            line=$(printf '%s\n' "$out" | grep '^RESULT ' | tail -n 1)
            value=$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n "s/^$metric=//p")
            if [ "$rc" -ne 0 ] || [ -z "$value" ]; then
                failures=$((failures + 1))
                if [ "$rc" -ne 0 ]; then log "FAILED: $(describe_exit "$rc")"; else log "FAILED: no RESULT line"; fi
                head -n 3 "$errfile" | sed 's/^/    /' >&2
                value=NA
            else
                if [ "$metric" = rss_mb ]; then log "$value MB"; else log "$value Mops/s"; fi
            fi
            printf '%s,%s,%d,%s\n' "$wid" "$name" "$rep" "$value" >>"$csv"
            printf '%s %s %d %s\n' "$wid" "$name" "$rep" "${line:-RESULT missing}" >>"$raw"
            [ "$value" = NA ] && sed 's/^/    stderr: /' "$errfile" | head -n 20 >>"$raw"
        done
    done
done
elapsed=$(($(date +%s) - start_time))

# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }
alloc_info=("glibc=glibc $(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}'), no preload")
for ((a = 1; a < nalloc; a++)); do
    name=${alloc_names[a]}
    info="$(shortpath "${alloc_libs[a]}")"
    for i in "${!peer_names[@]}"; do
        [ "${peer_names[i]}" = "$name" ] && info="${peer_pkgs[i]} $(pkg_version "${peer_pkgs[i]}"), $info"
    done
    alloc_info+=("$name=$info")
done
cpu_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)
[ -n "$cpu_model" ] || cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
git_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "no commit")
[ -n "$(git -C "$root" status --porcelain 2>/dev/null | head -n 1)" ] && git_rev="$git_rev (+ local changes)"

export BENCH_DATE BENCH_ARCH BENCH_NPROC BENCH_CPU BENCH_KERNEL BENCH_REPEATS \
    BENCH_QUICK BENCH_ELAPSED BENCH_GIT BENCH_MICRO BENCH_FAILURES
BENCH_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
BENCH_ARCH=$(uname -m)
BENCH_NPROC=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)
BENCH_CPU=${cpu_model:-unknown}
BENCH_KERNEL=$(uname -r)
BENCH_REPEATS=$repeats
BENCH_QUICK=${quick:-0}
BENCH_ELAPSED=$elapsed
BENCH_GIT=$git_rev
BENCH_MICRO=$(shortpath "$micro")
BENCH_FAILURES=$failures
BENCH_SKIPPED=$(printf '%s\n' "${skipped[@]+"${skipped[@]}"}")
export BENCH_SKIPPED

python3 - "$csv" "$md" "$raw" "${alloc_names[*]}" "${alloc_info[@]}" -- "${workloads[@]}" <<'PY'
import csv, os, statistics, sys

csv_path, md_path, raw_path = sys.argv[1:4]
names = sys.argv[4].split()
rest = sys.argv[5:]
sep = rest.index("--")
infos = dict(x.split("=", 1) for x in rest[:sep])
rows = [w.split("|") for w in rest[sep + 1:]]  # id|label|metric|better|args

values, failed = {}, {}
with open(csv_path, newline="") as f:
    for r in csv.DictReader(f):
        key = (r["workload"], r["allocator"])
        if r["value"] == "NA":
            failed[key] = failed.get(key, 0) + 1
        else:
            values.setdefault(key, []).append(float(r["value"]))

# The checksum depends only on the workload's fixed seed: every allocator and
# every repeat must print the same one, or some allocator lost data.
sums = {}
with open(raw_path) as f:
    for line in f:
        parts = line.split()
        if len(parts) > 3 and parts[3] == "RESULT":
            kv = dict(p.split("=", 1) for p in parts[4:] if "=" in p)
            if "checksum" in kv:
                sums.setdefault(parts[0], {}).setdefault(kv["checksum"], set()).add(parts[1])
mismatch = {w: c for w, c in sums.items() if len(c) > 1}

def med(wid, name):
    v = values.get((wid, name))
    return statistics.median(v) if v else None

def cell(wid, name):
    m = med(wid, name)
    if m is None:
        return "FAIL" if (wid, name) in failed else "–"
    s = f"{m:.1f}" if m >= 10 else f"{m:.2f}"
    if (wid, name) in failed:
        s += f" ({failed[(wid, name)]} failed)"
    return s

def ratio(wid, a, b):
    x, y = med(wid, a), med(wid, b)
    return f"{x / y:.2f}×" if x is not None and y else "–"

def target(wid, better):
    """The issue's target for this row, and whether the medians meet it."""
    b, m, g = med(wid, "brainmm"), med(wid, "mimalloc"), med(wid, "glibc")
    if wid == "small":
        text = "≥ mimalloc and ≥ 2× glibc"
        if b is None or m is None or g is None:
            return text
        return text + (" — met" if b >= m and b >= 2 * g else " — not met")
    if better == "lower":
        text = "≤ 102 MB"
        if b is None:
            return text
        return text + (" — met" if b <= 102 else " — not met")
    return ""

E = os.environ
out = []
out.append("# BrainMM micro-benchmark, side by side\n")
out.append(f"- date: {E['BENCH_DATE']}; machine: `{E['BENCH_ARCH']}`, "
           f"nproc {E['BENCH_NPROC']}, {E['BENCH_CPU']}; kernel {E['BENCH_KERNEL']}")
out.append(f"- BrainMM tree: {E['BENCH_GIT']}; harness: `{E['BENCH_MICRO']}`")
out.append(f"- {E['BENCH_REPEATS']} repeat{'' if E['BENCH_REPEATS'] == '1' else 's'}, interleaved (repeat → workload → "
           f"allocator, start rotated each repeat); cells are medians"
           + ("; QUICK run (short op counts)" if E["BENCH_QUICK"] != "0" else "")
           + f"; {int(E['BENCH_ELAPSED'])} s in total")
out.append("- allocators: " + "; ".join(f"**{n}**: {infos.get(n, '')}" for n in names))
for line in E.get("BENCH_SKIPPED", "").splitlines():
    if line.strip():
        out.append(f"- skipped {line}")
for wid, c in sorted(mismatch.items()):
    detail = "; ".join(f"{k} from {', '.join(sorted(v))}" for k, v in c.items())
    out.append(f"- **checksum mismatch in {wid}** (data corrupted?): {detail}")
if int(E["BENCH_FAILURES"]):
    out.append(f"- **{E['BENCH_FAILURES']} run(s) failed**: see latest.raw")
out.append("")
out.append("Throughput rows are Mops/s (million malloc+free pairs per second): "
           "**higher is better**. Memory rows are MB (10^6 bytes) of RSS to hold "
           "100 MB of live objects: **lower is better**, 100 is ideal. "
           "Ratios are BrainMM's median divided by the peer's median. "
           "A verdict in the target column decided by less than the spread in "
           "the second table is noise; run again or with more REPEATS.\n")

head = ["workload", "unit"] + names + ["brainmm / mimalloc", "brainmm / glibc", "target (issue)"]
out.append("| " + " | ".join(head) + " |")
out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(names) + 2) + ["---"]) + "|")
for wid, label, metric, better, _ in rows:
    unit = "Mops/s ↑" if better == "higher" else "MB RSS ↓"
    cells = [label, unit] + [cell(wid, n) for n in names]
    cells += [ratio(wid, "brainmm", "mimalloc"), ratio(wid, "brainmm", "glibc"), target(wid, better)]
    out.append("| " + " | ".join(cells) + " |")

out.append("\nRun-to-run spread, (max − min) / median of the repeats:\n")
out.append("| workload | " + " | ".join(names) + " |")
out.append("|---|" + "|".join(["---:"] * len(names)) + "|")
for wid, label, *_ in rows:
    cells = []
    for n in names:
        v = values.get((wid, n))
        if v and len(v) > 1 and statistics.median(v) > 0:
            cells.append(f"{(max(v) - min(v)) / statistics.median(v) * 100:.0f}%")
        else:
            cells.append("–")
    out.append(f"| {wid} | " + " | ".join(cells) + " |")

text = "\n".join(out) + "\n"
with open(md_path, "w") as f:
    f.write(text)
sys.stdout.write(text)
sys.exit(3 if mismatch else 0)
PY
summary_rc=$?
log "wrote $(shortpath "$md"), $(shortpath "$csv") and $(shortpath "$raw")"

# Timings never decide the exit status; crashes, hangs and errors do.
if [ "$failures" -gt 0 ] || [ "$trial_failures" -gt 0 ] || [ "$summary_rc" -ne 0 ]; then
    [ "$((failures + trial_failures))" -gt 0 ] &&
        log "run.sh: $failures run(s) and $trial_failures trial run(s) failed"
    [ "$summary_rc" -eq 3 ] && log "run.sh: checksums differ between allocators (see the table's header)"
    [ "$summary_rc" -ne 0 ] && [ "$summary_rc" -ne 3 ] && log "run.sh: the summary script failed"
    exit 1
fi
exit 0
