#!/usr/bin/env bash
# leank-server start-up errors: bad flags exit 2, a model/mask/backend/cache that cannot
# be served exits 1; either way at once (no hang, no crash) with one message naming what
# was wrong. Skips (exit 0 with a note) when SmolLM2 is not converted.
set -u
SERVER=$1
ROOT=$2
MODEL=${LEANK_CACHE_DIR:-$ROOT/.cache}/models/smollm2-135m-instruct
if [ ! -f "$MODEL/model.safetensors" ]; then
  echo "SKIP: $MODEL missing (run tools/convert_smollm2.py)"
  exit 0
fi
fail=0
expect() {  # expect NAME CODE PATTERN -- ARGS...
  local name=$1 code=$2 pattern=$3
  shift 4
  local out
  out=$(timeout 60 "$SERVER" --port 0 --metrics-port 0 --warmup false "$@" 2>&1)
  local rc=$?
  if [ "$rc" -ne "$code" ] || ! grep -qiE -- "$pattern" <<<"$out"; then
    echo "FAIL $name: exit $rc (want $code), output: $out"
    fail=1
  else
    echo "ok   $name"
  fi
}
expect context-beyond-model 1 "max_model_len 9000 exceeds.*max_position_embeddings 8192" -- \
  --model "$MODEL" --max-model-len 9000
exit $fail
