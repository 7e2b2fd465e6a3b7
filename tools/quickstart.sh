#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install, build, fetch and convert
# SmolLM2-135M-Instruct, and stream a generation. Once the server exists, this starts
# leank-server and streams through leank-cli instead.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build.sh
python3 tools/convert_smollm2.py
MODEL=${LEANK_CACHE_DIR:-$PWD/.cache}/models/smollm2-135m-instruct
PROMPT=${1:-"Write a haiku about a lighthouse."}
if [ -x build/bin/leank-server ] && [ -x build/bin/leank-cli ]; then
  exec tools/serve_and_generate.sh "$MODEL" "$PROMPT"
fi
build/bin/leank-generate --model "$MODEL" --chat "$PROMPT" --max-tokens 96 --stats
