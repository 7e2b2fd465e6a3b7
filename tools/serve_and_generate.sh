#!/usr/bin/env bash
# Starts leank-server on a loopback port with MODEL, waits until it reports SERVING,
# streams one chat generation through leank-cli, then stops the server (SIGTERM, drain).
#   tools/serve_and_generate.sh MODEL_DIR "prompt" [extra leank-server flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1
PROMPT=$2
shift 2
BIN=${BIN:-build/bin}
PORT=${LEANK_PORT:-50051}
METRICS_PORT=${LEANK_METRICS_PORT:-9090}
LOG=${TMPDIR:-/tmp}/leank-server.$$.log
"$BIN/leank-server" --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
  --metrics-port "$METRICS_PORT" "$@" >"$LOG" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
echo "[quickstart] leank-server (pid $server) loading $MODEL; log: $LOG" >&2
serving=0
for _ in $(seq 1 120); do
  if "$BIN/leank-cli" --server "127.0.0.1:$PORT" --timeout 2 health >/dev/null 2>&1; then
    serving=1
    break
  fi
  kill -0 $server 2>/dev/null || { cat "$LOG" >&2; echo "[quickstart] server exited" >&2; exit 3; }
  sleep 1
done
if [ "$serving" -ne 1 ]; then
  tail -n 20 "$LOG" >&2
  echo "[quickstart] leank-server did not report SERVING within 120 s (log: $LOG)" >&2
  exit 3
fi
"$BIN/leank-cli" --server "127.0.0.1:$PORT" info >&2
echo "[quickstart] > $PROMPT" >&2
"$BIN/leank-cli" --server "127.0.0.1:$PORT" generate --chat --max-tokens 96 --temperature 0 \
  --stats "$PROMPT"
echo >&2
echo "[quickstart] metrics: curl -s localhost:$METRICS_PORT/metrics | grep ^leank: ; stopping server" >&2
