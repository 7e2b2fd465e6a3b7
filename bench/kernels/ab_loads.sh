#!/usr/bin/env bash
# A/B of the decode load paths in one call: tests first, then alternating rounds.
set -uo pipefail
OUT=${OUT:-/tmp/o}; mkdir -p $OUT
export LD_LIBRARY_PATH=$PWD/.device/lib:/usr/local/cuda/lib64
c=$(cat .device/git_commit)
timeout 150 stdbuf -oL .device/bin/leank_device_tests --gtest_brief=1 --gtest_filter="${FILTER:-*}" > $OUT/tests.log 2>&1; echo "tests rc $?"
if [ "$(grep -c "PASSED" $OUT/tests.log)" = 0 ]; then tail -30 $OUT/tests.log; exit 1; fi
grep -E "FAILED|PASSED|Failure|error|refused" $OUT/tests.log | head -30
for r in 1 2; do for l in tma cpasync; do
  .device/bin/leank-bench-kernels --batches ${BATCHES:-1,8,32,64} --contexts ${CTX:-4096,16384,32768} --prefill 0 --loads $l --git-commit $c --json $OUT/ab-$l-$r.json > $OUT/ab-$l-$r.txt 2>&1
  echo "== $l round $r"; tail -n +2 $OUT/ab-$l-$r.txt
done; done
