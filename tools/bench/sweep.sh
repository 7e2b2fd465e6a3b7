#!/usr/bin/env bash
# Concurrency sweep of leank-bench against a running server, one JSON per point:
#   tools/bench/sweep.sh LABEL HOST:PORT OUTDIR [CONCURRENCY...] [-- extra leank-bench flags]
# e.g. the dense vs LeanK serving run of docs/benchmarks.md ("Serving"):
#   tools/bench/sweep.sh dense 127.0.0.1:50051 bench/results 1 8 32 64 -- \
#       --input-len 16384 --output-len 256 --ignore-eos
# writes OUTDIR/serving-LABEL-cN.json; plot with tools/plot_bench.py OUTDIR/serving-*.json.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,7p' "$0" >&2
  exit 2
fi
label=$1 server=$2 out=$3
shift 3
levels=()
while [[ $# -gt 0 && $1 != "--" ]]; do levels+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
[[ ${#levels[@]} -eq 0 ]] && levels=(1 8 32 64)
bench=${LEANK_BENCH:-$(ls -t "$(dirname "$0")"/../../build*/bin/leank-bench 2>/dev/null | head -1)}
[[ -x $bench ]] || { echo "leank-bench not found (set LEANK_BENCH)" >&2; exit 2; }
mkdir -p "$out"
# Provenance (bench/README.md: every record names its device, date and commit).
commit=$(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)
device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
[[ -z $device ]] && device="cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for c in "${levels[@]}"; do
  # At least 4 requests per client, so every point has a steady state.
  n=$(( c * 4 > 32 ? c * 4 : 32 ))
  "$bench" --server "$server" --concurrency "$c" --num-prompts "$n" --label "$label" \
    --metadata "sweep=concurrency" --metadata "git_commit=$commit" \
    --metadata "client_device=$device" --json "$out/serving-$label-c$c.json" "$@"
done
