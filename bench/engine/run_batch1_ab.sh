#!/usr/bin/env bash
# A/B of the batch-1 decode path on the GPU machine (device tool, carry [".device"] made by
# ../shared/tools/device-bundle .device build/bin/leank-bench-engine ...): model-kernel
# device tests, then leank-bench-engine batch 1 at 1K and 32K with programmatic dependent
# launch and the fused GEMVs on/off, then the per-kind device-time profile.
set -uo pipefail
OUT=${OUT:-/tmp/leank-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
B=.device
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
if [[ -x $B/bin/leank_model_kernels_tests ]]; then
  timeout 120 $B/run leank_model_kernels_tests --gtest_brief=1 2>&1 | tail -4
fi
model=/tmp/llama8b
[[ -f $model/config.json ]] || PYTHONUNBUFFERED=1 python3 tools/make_random_llama.py --out $model --seed 0 | tail -1
M=(--model $model --mask tests/data/cache/llama3.1-8b-instruct.leank.safetensors
   --git-commit "$(cat $B/git_commit 2>/dev/null || echo unknown)")
i=0
run() {  # run LABEL [env...] -- [bench args...]
  local label=$1; shift
  local envs=()
  while [[ $# -gt 0 && $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  echo "== $label"
  env "${envs[@]}" $B/run leank-bench-engine "${M[@]}" --scenarios batch1 \
    --contexts ${CONTEXTS:-1024} --impls ${IMPLS:-dense} --decode-steps ${STEPS:-256} "$@" \
    --json "$OUT/ab-$i.json" 2>&1 | grep -E "^batch1"
  i=$((i + 1))
}
run "old path: no PDL, no fusion" -- --pdl false --fused-norm false
run "PDL, no fusion" -- --fused-norm false
for cols in 1 2 4; do
  run "PDL, RMSNorm fused, $cols cols/warp" LEANK_GEMV_COLS_NORM=$cols --
done
run "no PDL, RMSNorm fused" -- --pdl false
echo "== device time per kind (graphs off)"
LEANK_CUDA_PROFILE=1 $B/run leank-bench-engine "${M[@]}" --scenarios batch1 --contexts 1024 \
  --impls dense --graphs false 2>&1 | grep -E "profile|batch1"
(cd "$OUT" && tar czf ab.tgz ab-*.json && rm -f ab-*.json)
