#!/usr/bin/env bash
# program.sh NAME: runs one real program for bench/modes.sh (which preloads
# BrainMM in the mode it measures) and prints its RESULT line, timing only
# the program itself:
#   RESULT workload=NAME seconds=S mops=1/S
# (mops= is runs per second, so that modes.sh's cost, default mops / mode
# mops, is the mode's time over the default's.) Programs:
#   python3         a script that builds 300k dict entries of lists, strings
#                   and tuples, sorts the keys (Python's own small-object
#                   allocator serves most objects, as in any Python program)
#   python3_malloc  the same with PYTHONMALLOC=malloc: every object through
#                   malloc, and the garbage collector walks them in
#                   allocation order
#   sqlite3         200k inserts, an index, a query, an update and a group-by
#                   in an in-memory database
#   cc              cc -O2 -c src/arena.c
# Exit status: the program's; 77 when its command is not installed.
set -u
export LC_ALL=C
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:-}
work=$(mktemp -d "${TMPDIR:-/tmp}/bmm-program.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT
need() { command -v "$1" >/dev/null 2>&1 || { echo "program.sh: $1 is not installed" >&2; exit 77; }; }
input=/dev/null
case "$name" in
python3 | python3_malloc)
  need python3
  cat >"$work/p.py" <<'EOF'
d = {}
for i in range(300000):
    d[str(i)] = [i, str(i) * 3, (i, i + 1)]
s = sum(len(v[1]) for v in d.values())
print(s, len(sorted(d.keys())))
EOF
  [ "$name" = python3_malloc ] && export PYTHONMALLOC=malloc
  cmd=(python3 "$work/p.py")
  ;;
sqlite3)
  need sqlite3
  input=$work/in.sql
  awk 'BEGIN {
    print "create table t(a integer primary key, b text, c real);"
    print "begin;"
    for (i = 0; i < 200000; i++) printf "insert into t(b, c) values(\x27name%d\x27, %d.5);\n", (i * 7919) % 100000, i
    print "commit;"
    print "create index ib on t(b);"
    print "select count(*), sum(c) from t where b like \x27name1%\x27;"
    print "update t set c = c + 1 where a % 3 = 0;"
    print "select b, count(*) from t group by b order by 2 desc limit 3;"
  }' >"$input"
  cmd=(sqlite3 :memory:)
  ;;
cc)
  need cc
  cmd=(cc -O2 -c -I"$root/include" -I"$root/src" "$root/src/arena.c" -o "$work/arena.o")
  ;;
*)
  echo "usage: program.sh python3|python3_malloc|sqlite3|cc" >&2
  exit 2
  ;;
esac
t0=$EPOCHREALTIME
"${cmd[@]}" <"$input" >"$work/out" || exit $?
t1=$EPOCHREALTIME
awk -v n="$name" -v a="$t0" -v b="$t1" \
  'BEGIN { s = b - a; printf "RESULT workload=%s seconds=%.4f mops=%.4f\n", n, s, 1 / s }'
