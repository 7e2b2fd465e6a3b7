#!/usr/bin/env bash
# leank-server start-up errors: bad flags exit 2, a model/mask/backend/cache that cannot
# be served exits 1; either way at once (no hang, no crash) with one message naming what
# was wrong. Skips (exit 0 with a note) when SmolLM2 is not converted.
set -u
SERVER=$1
ROOT=$2
# Defaults through the env twins, so that a case may still give the flag.
RUN=(env LEANK_PORT=0 LEANK_METRICS_PORT=0 LEANK_WARMUP=false timeout 60 "$SERVER")
# shellcheck source=expect_lib.sh
source "$(dirname "$0")/expect_lib.sh"
MASKS=$ROOT/tests/data/cache
expect port-range 2 "--port: outside \[0, 65535\]" -- --model "$MODEL" --port 70000
expect negative-kv 2 "--kv-cache-memory: must be >= 0" -- --model "$MODEL" --kv-cache-memory -1
expect missing-model 1 "/nonexistent/model/config.json: cannot open" -- --model /nonexistent/model
expect context-beyond-model 1 "max_model_len 9000 exceeds.*max_position_embeddings 8192" -- \
  --model "$MODEL" --max-model-len 9000
expect mask-of-another-model 1 "mask shape \[28, 4, 128\] does not match the model's \[30, 3, 64\]" \
  -- --model "$MODEL" --masks "$MASKS/qwen2.5-7b-instruct.leank.safetensors"
expect kv-too-small 1 "KV cache budget of 1048576 bytes holds no useful sequence" -- \
  --model "$MODEL" --kv-cache-memory 1MiB --masks "$MASKS/smollm2-random50.leank.safetensors"
if ! nvidia-smi -L >/dev/null 2>&1; then
  expect cuda-without-gpu 1 "loading the model failed: .*CUDA" -- --model "$MODEL" --backend cuda
fi

# A config.json that does not match the weights (the weights and tokenizer linked in).
BAD=$(mktemp -d)
trap 'rm -rf "$BAD"' EXIT
bad_config() {  # bad_config SED-EXPRESSION: $BAD/model with config.json edited
  rm -rf "$BAD/model" && mkdir "$BAD/model"
  for f in model.safetensors tokenizer.json tokenizer_config.json; do
    ln -s "$(realpath "$MODEL/$f")" "$BAD/model/$f"
  done
  sed -E "$1" "$MODEL/config.json" >"$BAD/model/config.json"
}
bad_config 's/"num_hidden_layers": *30/"num_hidden_layers": 29/'
expect fewer-layers 1 "num_hidden_layers is 29 but the safetensors hold 30 layers" -- \
  --model "$BAD/model"
bad_config 's/"num_hidden_layers": *30/"num_hidden_layers": 2147483647/'
expect huge-layer-count 1 "num_hidden_layers is 2147483647 but the safetensors hold 30" -- \
  --model "$BAD/model"
bad_config 's/"eos_token_id": *2/"eos_token_id": 1000000/'
expect eos-outside-vocab 1 "eos_token_id' \(1000000\) must be in \[0, vocab_size 49152\)" -- \
  --model "$BAD/model"
exit $fail
