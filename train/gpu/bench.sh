#!/bin/bash
# GPU call 1: park the GGUF's first half in /tmp/lk and time the training/eval steps.
set -euo pipefail
mkdir -p /tmp/lk
cp .cache/dev/c1/gguf.part1 /tmp/lk/
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 train/gpu/bench.py /tmp/lk/bench.json 3
cp /tmp/lk/bench.json $OUT/
