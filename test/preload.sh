#!/usr/bin/env bash
# preload.sh LIB [PROBE] - real programs run with LD_PRELOAD=LIB (libbrainmm.so)
# and give the same results as without it:
#   - the library is mapped into a preloaded process (/proc/self/maps);
#   - PROBE (test/preload_probe.c, compiled here when not given) finds that
#     the blocks malloc, calloc, realloc, posix_memalign, aligned_alloc and
#     libc's own strdup return are BrainMM's, and, run without the preload,
#     that BrainMM is absent (so the probe really tells the two apart);
#   - python3 building big dicts, lists and strings prints the same checksum;
#   - sort (also with two threads) of 200k random lines gives the same output;
#   - cc, all of its processes preloaded, compiles a small C program that
#     then runs (also preloaded) and prints the right result;
#   - fork handlers registered before a dlopen of the library (so they run
#     inside BrainMM's) may allocate through it (test/fork_dlopen.c);
#   - ls -R /usr/include succeeds.
# Prints "N passed, N failed" and exits non-zero on any failure.
set -u

if [ $# -lt 1 ]; then
  echo "usage: $0 path/to/libbrainmm.so [path/to/preload_probe]" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
lib=$(readlink -f "$1")
probe=${2:-}
limit=120 # seconds for any one program: a hang fails instead of blocking

. "$here/check.sh"

if [ ! -f "$lib" ]; then
  fail "no library at $1"
  finish
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bmm-preload.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT

# Runs a command with the library preloaded (and a time limit).
preloaded() { timeout "$limit" env LD_PRELOAD="$lib" "$@"; }
plain() { timeout "$limit" env -u LD_PRELOAD "$@"; }

# ---- the library is mapped ------------------------------------------------
name=$(basename "$lib")
n=$(preloaded grep -c -F "$name" /proc/self/maps)
if [ "${n:-0}" -ge 1 ]; then pass "$name mapped in a preloaded process"; else fail "$name not in /proc/self/maps of a preloaded grep"; fi

# ---- the probe ------------------------------------------------------------
if [ -z "$probe" ]; then
  probe=$tmp/preload_probe
  if ! cc -std=c11 -O1 -o "$probe" "$here/preload_probe.c" -ldl 2>"$tmp/probe.err"; then
    cat "$tmp/probe.err" >&2
    fail "could not compile preload_probe.c"
    probe=
  fi
fi
if [ -n "$probe" ]; then
  plain "$probe" >"$tmp/probe.out" 2>&1
  rc=$?
  if [ "$rc" -eq 2 ]; then pass "probe without preload sees the system malloc"; else cat "$tmp/probe.out" >&2; fail "probe without preload exited $rc, expected 2"; fi
  preloaded "$probe" >"$tmp/probe.out" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then pass "probe with preload: malloc is BrainMM's"; else cat "$tmp/probe.out" >&2; fail "probe with preload exited $rc"; fi
fi

# ---- python3 --------------------------------------------------------------
if command -v python3 >/dev/null 2>&1; then
  cat >"$tmp/work.py" <<'EOF'
import hashlib
d = {}
for i in range(200000):
    d["key%d" % i] = [i, str(i) * (i % 7), {"x": i, "y": [i] * (i % 5)}]
top = sorted(d.items(), key=lambda kv: -kv[1][0])[:2000]
text = "".join(k for k, _ in top) * 40
chunks = [bytes(range(256)) * (i % 64) for i in range(5000)]
words = text.replace("key", " key").split()
h = hashlib.sha256()
h.update(text.encode())
for c in chunks:
    h.update(c)
h.update(repr(top[:200]).encode())
h.update(" ".join(sorted(set(words))).encode())
del d, chunks
print(len(text), len(words), h.hexdigest())
EOF
  want=$(PYTHONHASHSEED=0 plain python3 "$tmp/work.py" 2>&1)
  got=$(PYTHONHASHSEED=0 preloaded python3 "$tmp/work.py" 2>&1)
  if [ -n "$want" ] && [ "$want" = "$got" ]; then pass "python3 checksum $got"; else fail "python3: '$got' instead of '$want'"; fi
else
  echo "skip: python3 not found"
fi

# ---- sort -----------------------------------------------------------------
awk 'BEGIN { srand(42); for (i = 0; i < 200000; i++)
       printf "%d %x line-%d\n", int(rand() * 1000000000), int(rand() * 1000000000), i }' \
  >"$tmp/lines"
LC_ALL=C plain sort "$tmp/lines" >"$tmp/sorted.want"
LC_ALL=C preloaded sort "$tmp/lines" >"$tmp/sorted.got"
rc=$?
if [ "$rc" -eq 0 ] && cmp -s "$tmp/sorted.want" "$tmp/sorted.got"; then pass "sort of 200k lines"; else fail "sort of 200k lines (exit $rc) differs"; fi
LC_ALL=C preloaded sort --parallel=2 -S 4M -n "$tmp/lines" >"$tmp/sorted.got"
rc=$?
LC_ALL=C plain sort --parallel=2 -S 4M -n "$tmp/lines" >"$tmp/sorted.want"
if [ "$rc" -eq 0 ] && cmp -s "$tmp/sorted.want" "$tmp/sorted.got"; then pass "sort --parallel=2 -n of 200k lines"; else fail "sort --parallel=2 -n (exit $rc) differs"; fi

# ---- cc -------------------------------------------------------------------
if command -v cc >/dev/null 2>&1; then
  cat >"$tmp/prog.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct node { struct node *next; unsigned long value; char text[24]; };
static int cmp(const void *a, const void *b) {
  unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
  return x < y ? -1 : x > y;
}
int main(void) {
  struct node *head = NULL;
  unsigned long x = 12345, sum = 0;
  for (int i = 0; i < 100000; i++) {
    struct node *n = malloc(sizeof *n);
    if (!n) return 1;
    x = x * 6364136223846793005UL + 1442695040888963407UL;
    n->value = x >> 33;
    snprintf(n->text, sizeof n->text, "%lu", n->value);
    n->next = head;
    head = n;
  }
  unsigned long *v = NULL;
  size_t count = 0;
  for (struct node *n = head; n; n = n->next) {
    v = realloc(v, (count + 1) * sizeof *v);
    if (!v) return 1;
    v[count++] = strtoul(n->text, NULL, 10);
  }
  qsort(v, count, sizeof *v, cmp);
  for (size_t i = 0; i < count; i += 1000) sum = sum * 31 + v[i];
  while (head) { struct node *n = head->next; free(head); head = n; }
  free(v);
  printf("%zu %lu\n", count, sum);
  return 0;
}
EOF
  if plain cc -O1 -o "$tmp/prog.plain" "$tmp/prog.c"; then
    want=$(plain "$tmp/prog.plain")
    if preloaded cc -O2 -o "$tmp/prog" "$tmp/prog.c"; then
      pass "cc compiled under preload"
      got=$(plain "$tmp/prog")
      if [ -n "$want" ] && [ "$got" = "$want" ]; then pass "the program cc built runs: $got"; else fail "program built under preload printed '$got', expected '$want'"; fi
      got=$(preloaded "$tmp/prog")
      if [ -n "$want" ] && [ "$got" = "$want" ]; then pass "the program runs under preload"; else fail "program under preload printed '$got', expected '$want'"; fi
    else
      fail "cc under preload failed"
    fi
  else
    fail "cc without preload failed: no compiler to test with"
  fi
else
  echo "skip: cc not found"
fi

# ---- fork handlers around BrainMM's own ------------------------------------
# A program's fork handlers registered before it dlopens the library run
# inside BrainMM's; one that allocates must not hang (it did while fork held
# the deferred-free hook's registration count).
if cc -std=c11 -O1 -pthread -o "$tmp/fork_dlopen" "$here/fork_dlopen.c" -ldl 2>"$tmp/fd.err"; then
  for where in prepare parent child; do
    out=$(timeout 20 env -u LD_PRELOAD "$tmp/fork_dlopen" "$lib" "$where" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && [ "$(grep -c 'handler done' <<<"$out")" -eq 1 ]; then
      pass "a fork handler ($where) that allocates, registered before dlopen"
    else
      fail "fork handler ($where) registered before dlopen: exit $rc: $out"
    fi
  done
else
  cat "$tmp/fd.err" >&2
  fail "could not compile fork_dlopen.c"
fi

# ---- ls -------------------------------------------------------------------
if preloaded ls -R /usr/include >/dev/null; then pass "ls -R /usr/include"; else fail "ls -R /usr/include under preload"; fi

finish
