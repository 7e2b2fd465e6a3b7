#!/usr/bin/env bash
# leank-generate: streams text, exit 0; bad usage/input exit 2 with a message naming it;
# model errors exit 3. Skips (exit 0 with a note) when SmolLM2 is not converted.
set -u
GEN=$1
ROOT=$2
RUN=("$GEN")
# shellcheck source=expect_lib.sh
source "$(dirname "$0")/expect_lib.sh"
expect greedy-chat 0 "Paris" -- --model "$MODEL" --chat "What is the capital of France?" --max-tokens 12
expect raw-prompt-stats 0 "decode .* tok/s" -- --model "$MODEL" --prompt "One, two, three," \
  --max-tokens 5 --stats --ignore-eos
expect masked 0 "finish: length" -- --model "$MODEL" --prompt "Hello" --max-tokens 4 --ignore-eos \
  --masks "$ROOT/tests/data/cache/smollm2-random50.leank.safetensors" --sink 32 --recent 64 --stats
expect no-prompt 2 "--prompt TEXT or --chat" -- --model "$MODEL"
expect empty-prompt 2 "prompt is empty" -- --model "$MODEL" --prompt ""
expect invalid-utf8 2 "UTF-8" -- --model "$MODEL" --prompt $'bad \xC3\x28 text'
expect too-long 2 "context length" -- --model "$MODEL" --prompt "hi" --max-tokens 9000
expect bad-temperature 2 "temperature" -- --model "$MODEL" --prompt "hi" --temperature -1
expect bad-gpu-sampling 2 "gpu-sampling" -- --model "$MODEL" --prompt "hi" --gpu-sampling maybe
expect cpu-ignores-gpu-sampling 0 "Paris" -- --model "$MODEL" --chat "What is the capital of France?" \
  --max-tokens 12 --gpu-sampling true
expect bad-log-level 2 "--log-level: loud not in" -- --model "$MODEL" --prompt "hi" --log-level loud
expect unknown-flag 2 "not expected" -- --model "$MODEL" --prompt "hi" --no-such-flag
expect missing-model 3 "config.json" -- --model /nonexistent/model --prompt "hi"
# Out-of-range numbers were taken as "the default" (negative budget, sink) or cut silently.
expect negative-kv 3 "kv_cache_bytes must be >= 0.*-5" -- --model "$MODEL" --prompt "hi" \
  --kv-cache-memory -5
expect negative-sink 3 "sink must be >= 0.*-5" -- --model "$MODEL" --prompt "hi" --sink -5 \
  --masks "$ROOT/tests/data/cache/smollm2-random50.leank.safetensors"
expect bad-mask 3 "shape|mask" -- --model "$MODEL" --prompt "hi" \
  --masks "$ROOT/tests/data/cache/llama3.1-8b-instruct.leank.safetensors"
exit $fail
