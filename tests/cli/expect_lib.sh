# Sourced by the CLI tests (generate_cli_test.sh, server_startup_test.sh) after setting
# ROOT and RUN (the command line each case appends its arguments to).
#   MODEL: the converted SmolLM2 folder; the test skips (exit 0 with a note) without it.
#   expect NAME CODE PATTERN -- ARGS...: runs "${RUN[@]}" ARGS and checks the exit code and
#   that the output matches PATTERN (grep -iE); a mismatch prints FAIL and sets fail=1.
MODEL=${LEANK_CACHE_DIR:-$ROOT/.cache}/models/smollm2-135m-instruct
if [ ! -f "$MODEL/model.safetensors" ]; then
  echo "SKIP: $MODEL missing (run tools/convert_smollm2.py)"
  exit 0
fi
fail=0
expect() {
  local name=$1 code=$2 pattern=$3
  shift 4
  local out
  out=$("${RUN[@]}" "$@" 2>&1)
  local rc=$?
  if [ "$rc" -ne "$code" ] || ! grep -qiE -- "$pattern" <<<"$out"; then
    echo "FAIL $name: exit $rc (want $code), output: $out"
    fail=1
  else
    echo "ok   $name"
  fi
}
