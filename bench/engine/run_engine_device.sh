#!/usr/bin/env bash
# The one script run on the GPU machine for the CUDA backend (device tool, carry
# [".device"], made by ../shared/tools/device-bundle .device build/bin/leank_cuda_backend_tests
# build/bin/leank_gpu_sampling_tests build/bin/leank-bench-engine, plus
# build/bin/leank_model_kernels_tests copied into .device/bin): device tests first, then the random Llama-3.1-8B model is written
# to local disk and leank-bench-engine times it; HF transformers peer last (optional).
#   bench/engine/run_engine_device.sh [tests|bench|all|peer] [extra bench args...]
set -uo pipefail
mode=${1:-all}; shift || true
OUT=${OUT:-/tmp/leank-out}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
B=${BUNDLE:-.device}
commit=$(cat $B/git_commit 2>/dev/null || echo unknown)
export LEANK_TEST_DATA_DIR=$here/tests/data
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
status=0
if [[ $mode == tests || $mode == all ]]; then
  echo "== device tests"
  for t in leank_device_tests leank_model_kernels_tests leank_gpu_sampling_tests leank_cuda_backend_tests leank_cuda_graph_buckets_tests; do
    [[ -x $B/bin/$t ]] || continue
    timeout 240 $B/run $t --gtest_brief=1 >>"$OUT/backend-tests.log" 2>&1 || status=1
  done
  grep -E "^\[ (logits|vs HF|greedy|preflight|seed)|FAILED|PASSED|Failure|error|Expected|Which|actual" "$OUT/backend-tests.log" | head -80
fi
if [[ $mode == bench || $mode == all || $mode == peer ]]; then
  model=/tmp/llama8b
  if [[ ! -f $model/config.json ]]; then
    PYTHONUNBUFFERED=1 python3 tools/make_random_llama.py --out $model --seed 0 2>&1 | tail -2
  fi
fi
if [[ $mode == bench || $mode == all ]]; then
  echo "== leank-bench-engine"
  $B/run leank-bench-engine --model $model --mask tests/data/cache/llama3.1-8b-instruct.leank.safetensors \
    --git-commit "$commit" --scenarios gemv,batch1,capacity,prefill --decode-steps 256 --json "$OUT/engine.json" "$@" 2>&1 | tee "$OUT/bench.log" || status=1
fi
if [[ $mode == bench || $mode == all ]]; then
  echo "== variants (batch 1, 1K, dense): without CUDA graphs, without the GEMV kernel"
  $B/run leank-bench-engine --model $model --mask tests/data/cache/llama3.1-8b-instruct.leank.safetensors \
    --git-commit "$commit" --scenarios batch1 --contexts 1024 --impls dense --graphs false \
    --json "$OUT/engine-nographs.json" 2>&1 | grep batch1
  $B/run leank-bench-engine --model $model --mask tests/data/cache/llama3.1-8b-instruct.leank.safetensors \
    --git-commit "$commit" --scenarios batch1 --contexts 1024 --impls dense --gemv false \
    --json "$OUT/engine-nogemv.json" 2>&1 | grep batch1
fi
if [[ $mode == peer || $mode == all ]] && [[ -f bench/engine/hf_peer.py ]]; then
  echo "== HF transformers peer"
  PYTHONUNBUFFERED=1 timeout 240 python3 bench/engine/hf_peer.py --model $model --git-commit "$commit" \
    --json "$OUT/engine-hf.json" 2>&1 | tail -8 || status=1
fi
exit $status
