#!/usr/bin/env bash
# A/B of leank-bench-kernels variants in one device call (carry [".device"]): the device
# tests first (FILTER), then ROUNDS rounds alternating the variants, each a set of extra
# arguments (VARIANTS, separated by '|'; default: the two decode load paths).
#   FILTER='Kernels/DecodeTest.*' VARIANTS='--pdl 1|--pdl 0' bench/kernels/ab_variants.sh
# The printed tables go to $OUT/ab.txt; the records to $OUT/ab-v<variant>-<round>.json, or, with
# MERGE=1, to one $OUT/ab-all.json (the device tool returns at most 8 files). A CTA scan:
#   MERGE=1 ROUNDS=1 BATCHES=8,32,64 CTX=16384,32768,65536 \
#     VARIANTS='--ctas 0|--ctas 264|--ctas 528|--ctas 792|--ctas 1056' bench/kernels/ab_variants.sh
set -uo pipefail
OUT=${OUT:-/tmp/o}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.device/lib:/usr/local/cuda/lib64
c=$(cat .device/git_commit)
timeout 150 stdbuf -oL .device/bin/leank_device_tests --gtest_brief=1 --gtest_filter="${FILTER:-*}" \
  > "$OUT/tests.log" 2>&1; echo "tests rc $?"
if [ "$(grep -c "PASSED" "$OUT/tests.log")" = 0 ]; then tail -30 "$OUT/tests.log"; exit 1; fi
grep -E "FAILED|PASSED|Failure|error|refused" "$OUT/tests.log" | head -30
IFS='|' read -r -a variants <<< "${VARIANTS:---loads tma|--loads cpasync}"
for r in $(seq 1 "${ROUNDS:-2}"); do
  for i in "${!variants[@]}"; do
    v=${variants[$i]}
    # shellcheck disable=SC2086
    .device/bin/leank-bench-kernels --batches "${BATCHES:-1,8,32,64}" --contexts "${CTX:-4096,16384,32768}" \
      --prefill 0 $v --git-commit "$c" --json "$OUT/ab-v$i-$r.json" > "$OUT/run.txt" 2>&1
    { echo "== variant $i ($v) round $r"; tail -n +2 "$OUT/run.txt"; } | tee -a "$OUT/ab.txt"
  done
done
rm -f "$OUT/run.txt"
if [ "${MERGE:-0}" = 1 ]; then
  python3 bench/kernels/results.py merge "$OUT/ab-all.json" "$OUT"/ab-v*-*.json && rm -f "$OUT"/ab-v*-*.json
fi
