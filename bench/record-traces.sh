#!/usr/bin/env bash
# record-traces.sh OUTDIR - records allocation traces of three real programs
# with libbrainmm-trace.so, for bmm-replay (tools/bmm-replay.c) to replay:
#   OUTDIR/python3.trace  python3 building dicts, lists and strings (~1-2 s),
#                         every object through malloc (PYTHONMALLOC=malloc)
#   OUTDIR/cc1.trace      cc -O2 compiling a generated C file of many
#                         functions: the biggest trace of the compilation,
#                         which is cc1's (the driver and as write their own)
#   OUTDIR/sqlite3.trace  sqlite3 inserting, indexing, updating and
#                         querying 200k rows of an in-memory database
# and prints the paths of the three files, one per line (progress goes to
# stderr). Takes about 30 s or less on two CPUs.
#
# Environment:
#   BMM_TRACE_LIB    the recorder (default: build/tools/libbrainmm-trace.so
#                    under the repository root)
#   BMM_TRACE_UNDER  an allocator library to record on top of, preloaded after
#                    the recorder (default: none, i.e. glibc's malloc); e.g.
#                    build/libbrainmm.so or libmimalloc.so.2
set -eu

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
lib=${BMM_TRACE_LIB:-$root/build/tools/libbrainmm-trace.so}
under=${BMM_TRACE_UNDER:-}
if [ ! -f "$lib" ]; then
  echo "$0: no recorder at $lib: build first (make), or set BMM_TRACE_LIB" >&2
  exit 2
fi
lib=$(readlink -f "$lib")
preload=$lib
if [ -n "$under" ]; then
  [ -f "$under" ] || { echo "$0: BMM_TRACE_UNDER=$under does not exist" >&2; exit 2; }
  preload="$lib $(readlink -f "$under")"
fi
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/bmm-record.XXXXXX")
trap 'rm -rf "$work"' EXIT

# record NAME COMMAND...: runs COMMAND (in $work) with the recorder
# preloaded, every process writing its own trace; keeps the biggest as
# OUTDIR/NAME.trace and prints its path.
record() {
  local name=$1
  shift
  local dir=$work/$name
  mkdir -p "$dir"
  local start=$SECONDS
  # the settings of this script are not the recorded program's business
  (cd "$work" && env -u BMM_TRACE_LIB -u BMM_TRACE_UNDER BMM_TRACE_FILE="$dir/%p.trace" \
    LD_PRELOAD="$preload" "$@") >"$dir.out" 2>&1 || {
    echo "$0: $name failed:" >&2
    tail -n 20 "$dir.out" >&2
    exit 1
  }
  local biggest
  biggest=$(ls -S "$dir"/*.trace 2>/dev/null | head -n 1)
  if [ -z "$biggest" ]; then
    echo "$0: $name wrote no trace" >&2
    exit 1
  fi
  mv "$biggest" "$out/$name.trace"
  echo "$name: $(($(ls "$dir"/*.trace 2>/dev/null | wc -l) + 1)) process(es) traced in" \
    "$((SECONDS - start)) s, kept $(stat -c %s "$out/$name.trace") bytes" >&2
  echo "$out/$name.trace"
}

# ---- python3 -------------------------------------------------------------------
# The interpreter itself, not a wrapper script (pyenv's shim would be traced
# as a few dozen shell processes). PYTHONMALLOC=malloc sends every object
# to malloc: with Python's own small-object allocator (pymalloc) in front,
# malloc sees only blocks above 512 bytes, a few thousand calls in all.
python=$(env -u LD_PRELOAD python3 -c 'import sys; print(sys.executable)')
cat >"$work/work.py" <<'EOF'
import random
random.seed(7)
table = {}
for i in range(60000):
    table["key-%d" % i] = [i, str(i) * (i % 9), {"n": i, "tags": ["t%d" % (i % 13)] * (i % 4)}]
rows = sorted(table.values(), key=lambda v: (v[0] * 7919) % 100003)
text = ",".join(v[1] for v in rows[:20000])
words = {}
for w in text.split(","):
    words[w] = words.get(w, 0) + 1
chunks = [bytes(random.getrandbits(8) for _ in range(i % 200)) for i in range(6000)]
for i in range(0, 60000, 2):
    del table["key-%d" % i]
matrix = [[x * y for x in range(150)] for y in range(200)]
print(len(table), len(words), sum(map(len, chunks)), sum(map(sum, matrix)))
EOF
record python3 env PYTHONMALLOC=malloc "$python" "$work/work.py"

# ---- cc: a large generated file --------------------------------------------------
awk -v nfunc=200 'BEGIN {
  print "#include <string.h>";
  print "struct item { int key; double weight; char name[24]; struct item *next; };";
  for (f = 0; f < nfunc; f++) {
    printf "int func_%d(struct item *it, int n, const char *s) {\n", f;
    printf "  int acc = %d; double w = 0;\n", f;
    printf "  for (int i = 0; i < n; i++, it = it->next) {\n";
    printf "    switch ((it->key + i) %% 5) {\n";
    for (c = 0; c < 5; c++)
      printf "    case %d: acc += it->key * %d + (int)strlen(s + (i & 3)); w += it->weight / %d.0; break;\n", c, f + c, c + 1;
    printf "    }\n    if (acc > %d) acc -= %d;\n  }\n", 100000 + f, f + 1;
    printf "  return acc + (int)w;\n}\n";
  }
  printf "int dispatch(int which, struct item *it, int n, const char *s) {\n  switch (which) {\n";
  for (f = 0; f < nfunc; f++) printf "  case %d: return func_%d(it, n, s);\n", f, f;
  printf "  }\n  return -1;\n}\n";
}' >"$work/big.c"
record cc1 cc -O2 -c -o "$work/big.o" "$work/big.c"

# ---- sqlite3 ---------------------------------------------------------------------
cat >"$work/work.sql" <<'EOF'
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, val REAL);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)
INSERT INTO t SELECT x, printf('name-%d-%s', x, hex(randomblob(8))), x % 97, x * 0.5 FROM c;
CREATE INDEX t_grp ON t(grp);
CREATE INDEX t_name ON t(name);
SELECT grp, count(*), sum(val), max(name) FROM t GROUP BY grp ORDER BY 2 DESC, 1 LIMIT 3;
SELECT count(*), sum(b.val) FROM t a JOIN t b ON b.id = a.id + 1 WHERE a.grp = 3;
UPDATE t SET name = name || '-updated' WHERE id % 3 = 0;
DELETE FROM t WHERE id % 5 = 0;
SELECT count(DISTINCT substr(name, 1, 9)), avg(length(name)) FROM t;
SELECT name FROM t WHERE name LIKE 'name-1234%' ORDER BY name LIMIT 3;
EOF
record sqlite3 sqlite3 :memory: ".read $work/work.sql"
