#!/usr/bin/env bash
# CPU reference engine and scheduler benchmarks -> bench/results/cpu-<date>.json
# (device, date and git commit inside). Run after tools/build.sh and tools/convert_smollm2.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-build/bin}
MODEL=${LEANK_CACHE_DIR:-$PWD/.cache}/models/smollm2-135m-instruct
out=bench/results/cpu-$(date -u +%Y%m%d).json
engine=$("$BIN/leank-bench-cpu" --model "$MODEL" --prompt-tokens 128 --decode-tokens 64 \
  --batches 1,4 --json /dev/stdout | tail -n 1)
masked=$("$BIN/leank-bench-cpu" --model "$MODEL" --prompt-tokens 128 --decode-tokens 64 \
  --batches 1 --masks tests/data/cache/smollm2-random50.leank.safetensors --json /dev/stdout | tail -n 1)
sched=$("$BIN/leank-bench-scheduler" --seqs 256 --steps 2000)
python3 - "$out" "$engine" "$masked" "$sched" <<'PY'
import json, subprocess, sys, datetime, os
out, engine, masked, sched = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
meta = {"device": f"CPU: {cpu}, {os.cpu_count()} cores",
        "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
records = json.loads(engine) + json.loads(masked) + [json.loads(sched)]
for r in records:
    r.update(meta)
json.dump(records, open(out, "w"), indent=1)
for r in records:
    print({k: v for k, v in r.items() if k not in ("device", "git_commit", "date", "model")})
print("wrote", out)
PY
