#!/bin/sh
# Runs train/'s unit tests on the CPU. CI: apt-get install python3-torch python3-pytest
# (Debian 12: torch 1.13, numpy 1.24); `safetensors` and `transformers` are optional (tests that
# need them are skipped). Usage: train/run_tests.sh [python] [pytest args...]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
py=${1:-/usr/bin/python3}
[ $# -gt 0 ] && shift
cd "$here/.."
exec "$py" -m pytest -q -p no:cacheprovider train/tests "$@"
