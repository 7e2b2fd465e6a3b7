#!/usr/bin/env bash
# The product path on the GPU machine (device tool, carry [".device", ".cache/gpu/c3"]):
#  1. SmolLM2 rebuilt from its GGUF (brought in two halves by earlier calls, in /tmp/lkg),
#     served by leank-server on the CUDA backend and on the CPU backend twice: the fp32
#     reference and --cpu-activations bf16 (rounded where the GPU rounds); 20 chat prompts
#     x 64 greedy tokens compared token for token with each reference, dense and with the
#     trained 70% LeanK mask (small sink/recent so the middle is really pruned):
#     greedy-smollm2-{dense,leank70}-{f32,bf16}.json, server logs in greedy-logs.tgz;
#  2. serving benchmark on a random-weight Llama-3.1-8B-shape model: leank-bench, 16K-token
#     inputs, 256 output tokens, dense vs LeanK (released mask), KV budget 40 GiB.
# Writes JSON under $OUT. Each phase is bounded in time.
set -uo pipefail
cd "$(dirname "$0")/../.."
B="${BUNDLE:-.device}/run"
W=/tmp/lkg
OUT=${OUT:-/tmp/leank-out}
mkdir -p "$OUT"
commit=$(cat .device/git_commit 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
start_server() {  # start_server PORT LOG ARGS...
  local port=$1 log=$2
  shift 2
  $B leank-server --host 127.0.0.1 --port "$port" --metrics-port 0 --log-level warn "$@" >"$log" 2>&1 &
  for _ in $(seq 1 240); do
    $B leank-cli --server "127.0.0.1:$port" --timeout 2 health >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "server on $port did not become SERVING:"; tail -20 "$log"; return 1
}
stop_servers() { pkill -TERM -f "leank-server --host 127.0.0.1" || true; sleep 2; }

if [[ ${PHASES:-12} == *1* ]]; then
  echo "== 1. SmolLM2: CUDA backend vs CPU reference through the server"
  cat $W/gguf.part1 $W/gguf.part2 >$W/model.gguf
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $W/*.whl || true
  PYTHONPATH=/tmp/site python3 tools/convert_smollm2.py --gguf $W/model.gguf --out /tmp/smollm2 \
    >"$OUT/convert.log" 2>&1 || { tail "$OUT/convert.log"; exit 1; }
  M=/tmp/smollm2
  MASK=train/masks/smollm2-135m-instruct/masks-s70.safetensors
  # greedy LABEL PORT0 [server args...]: CPU fp32 on PORT0, CPU bf16 on PORT0+1, CUDA on
  # PORT0+2, all with the same model/mask args; the CUDA server generates once per prompt.
  greedy() {
    local label=$1 p=$2
    shift 2
    start_server $p "$OUT/cpu-f32-$label.log" --model $M --backend cpu --num-threads 16 "$@" &&
      start_server $((p + 1)) "$OUT/cpu-bf16-$label.log" --model $M --backend cpu --num-threads 16 \
        --cpu-activations bf16 "$@" &&
      start_server $((p + 2)) "$OUT/cuda-$label.log" --model $M --backend ${TEST_BACKEND:-cuda} \
        --kv-cache-memory 4GiB "$@" &&
      timeout 240 python3 bench/gpu/compare_greedy.py --cli "$B leank-cli" --label $label \
        --test 127.0.0.1:$((p + 2)) \
        --ref f32=127.0.0.1:$p --json "$OUT/greedy-smollm2-$label-f32.json" \
        --ref bf16=127.0.0.1:$((p + 1)) --json "$OUT/greedy-smollm2-$label-bf16.json" | tail -4
    stop_servers
  }
  greedy dense 7101
  greedy leank70 7111 --masks $MASK --sink 16 --recent 32
  # The device tool brings back at most 8 files: the four JSONs stay loose, logs go in one.
  (cd "$OUT" && tar czf greedy-logs.tgz convert.log cpu-*.log cuda-*.log && rm -f convert.log cpu-*.log cuda-*.log) || true
fi

if [[ ${PHASES:-12} == *2* ]]; then
  echo "== 2. serving: random Llama-3.1-8B shape, 16K in / 256 out"
  L=/tmp/llama8b
  [[ -f $L/config.json ]] || PYTHONUNBUFFERED=1 python3 tools/make_random_llama.py --out $L --seed 0 | tail -1
  T=${TOKENIZER_DIR:-/tmp/smollm2}  # the random model borrows SmolLM2's tokenizer
  cp $T/tokenizer.json $T/tokenizer_config.json $L/
  for impl in dense leank; do
    args=(--model $L --backend cuda --kv-cache-memory 40GiB --max-num-seqs 64 --max-batched-tokens 8192
          --max-model-len 17000)
    [[ $impl == leank ]] && args+=(--masks tests/data/cache/llama3.1-8b-instruct.leank.safetensors)
    start_server 7200 "$OUT/serve-$impl.log" "${args[@]}" || continue
    $B leank-cli --server 127.0.0.1:7200 info | grep -E "kv_capacity|LeanK" | tee -a "$OUT/serving.txt"
    for c in ${CONC:-1 8 32 64}; do
      n=$(( c < 4 ? 4 : c ))
      timeout 150 $B leank-bench --server 127.0.0.1:7200 --concurrency $c --num-prompts $n \
        --input-len 16384 --output-len 256 --ignore-eos --warmup 0 \
        --json "$OUT/serving-$impl-c$c.json" 2>/dev/null | grep -E "Output token|Request throughput|Failed|Mean TTFT|Mean TPOT" \
        | sed "s/^/$impl c=$c /" | tee -a "$OUT/serving.txt"
    done
    stop_servers
  done
fi
echo "commit $commit"
# The device tool brings back at most 8 files: pack the serving results into one.
(cd "$OUT" && ls serving-*.json serve-*.log serving.txt >/dev/null 2>&1 && tar czf serving.tgz serving-*.json serving.txt serve-*.log && rm -f serving-*.json serve-*.log) || true
