#!/usr/bin/env bash
# extras.sh: the benchmarks of BrainMM's own API, which link the library
# instead of running under LD_PRELOAD: bmm_move16 against memmove (with its
# chart) and the JIT heap against an mmap/mprotect per function. Run by
# `make bench` after bench/run.sh; writes RESULTS_DIR/api.md and move16.png.
# Timings never decide the exit status.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
out=${RESULTS_DIR:-$root/bench/results}
mkdir -p "$out"
md=$out/api.md
{
  echo "# BrainMM API benchmarks"
  echo
  echo "- **date**: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs; $(uname -m)"
  echo
} > "$md"

if [ -x "$build/bench/move16" ]; then
  echo "extras: bmm_move16 vs memmove" >&2
  ms=5
  [ "${QUICK:-0}" = 1 ] && ms=2
  {
    echo "## bmm_move16 against memmove (GB/s, medians; ratio above 1: move16 faster)"
    echo
    echo '```'
    "$build/bench/move16" --mode all --ms "$ms" --data "$out/move16.dat" 2>&1 | grep -v '^RESULT'
    echo '```'
    echo
  } >> "$md"
  if command -v gnuplot >/dev/null 2>&1; then
    gnuplot -e "datafile='$out/move16.dat'; outfile='$out/move16.png'" "$root/bench/move16.gp" &&
      echo "Chart: \`move16.png\`." >> "$md"
  fi
else
  echo "extras: skipping move16: $build/bench/move16 not built" >&2
fi

if [ -x "$build/bench/jit" ]; then
  echo "extras: JIT heap vs mmap/mprotect" >&2
  {
    echo
    echo "## JIT heap: allocate, write, flush, call, free small functions"
    echo
    echo "| mode | functions | ns per function |"
    echo "|---|---:|---:|"
    "$build/bench/jit" 2>&1 | sed -n 's/^RESULT .*mode=\([^ ]*\).*functions=\([0-9]*\).*ns_per_function=\([0-9.]*\).*/| \1 | \2 | \3 |/p'
  } >> "$md"
else
  echo "extras: skipping jit: $build/bench/jit not built" >&2
fi
echo "extras: wrote $md" >&2
exit 0
