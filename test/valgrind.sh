#!/usr/bin/env bash
# valgrind.sh BUILD_DIR: with BrainMM built with BMM_VALGRIND=ON (client
# requests), memcheck must (1) find no error in the stress test and the API
# contract test, (2) report exactly the blocks a program leaks, as definitely
# lost, with the function that allocated them, and (3) see a read past the end of a block.
# Skipped (exit 77) when valgrind is not installed.
set -u
. "$(dirname "$0")/check.sh"
build=$1
command -v valgrind >/dev/null 2>&1 || { echo "valgrind.sh: no valgrind: skipped"; exit 77; }
vg=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite)

"${vg[@]}" "$build/test/stress" 2 2 5 >/tmp/bmm_vg_stress.$$ 2>&1
rc=$?
[ $rc -eq 0 ] && pass "stress: memcheck clean" || fail "stress under memcheck: exit $rc: $(head -20 /tmp/bmm_vg_stress.$$)"

"${vg[@]}" "$build/test/contract_api" >/tmp/bmm_vg_contract.$$ 2>&1
rc=$?
[ $rc -eq 0 ] && pass "contract_api: memcheck clean" || fail "contract_api under memcheck: exit $rc: $(head -20 /tmp/bmm_vg_contract.$$)"

# The three blocks leak_three keeps are definitely lost at exit (nothing of
# BrainMM's may look like a pointer to them), each with leak_three in its
# allocation stack; the block it frees is gone.
out=$(valgrind --leak-check=full --show-leak-kinds=all "$build/test/valgrind_leak" 2>&1)
records=$(echo "$out" | grep -c "are definitely lost in loss record")
if echo "$out" | grep -q "in use at exit: [0-9,]* bytes in 3 blocks" && [ "$records" -eq 3 ] &&
   echo "$out" | grep -q "still reachable: 0 bytes in 0 blocks" &&
   [ "$(echo "$out" | grep -c 'by 0x[0-9A-F]*: leak_three')" -eq 3 ]; then
  pass "three lost blocks (small, large, huge): definitely lost, with their allocation site"
else
  fail "leak report under memcheck: $(echo "$out" | grep -E 'in use|loss record|leak_three|reachable' | head)"
fi

out=$(valgrind "$build/test/valgrind_leak" past 2>&1)
if echo "$out" | grep -q "Invalid read of size 1" && echo "$out" | grep -q "read_past_end"; then
  pass "a read past the end of a block, into a free one, is an invalid read"
else
  fail "read past the end under memcheck: $(echo "$out" | head -20)"
fi
out=$("${vg[@]}" "$build/test/valgrind_leak" grow_left 2>&1)
rc=$?
[ $rc -eq 0 ] && pass "a large block grown in place to the left: memcheck clean" ||
  fail "grow left under memcheck: exit $rc: $(echo "$out" | head -20)"
out=$("${vg[@]}" "$build/test/valgrind_leak" zeroed 2>&1)
rc=$?
[ $rc -eq 0 ] && pass "calloc of a fresh huge mapping and the pages API: memcheck clean" ||
  fail "zeroed memory and pages under memcheck: exit $rc: $(echo "$out" | head -20)"
rm -f /tmp/bmm_vg_stress.$$ /tmp/bmm_vg_contract.$$
finish
