#!/usr/bin/env bash
# Installs what leank-serve needs on Debian 12, by package name only (apt-get, pip).
# Idempotent: skips what is already there. Used by the README quick start and CI.
set -euo pipefail

# What building the C++ needs (also the container image's build stage, deploy/Dockerfile).
APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libspdlog-dev libfmt-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libpcre2-dev libcpp-httplib-dev libcli11-dev
)
# Light Python packages for the model converter and tests (no torch from PyPI).
PIP_PACKAGES=(gguf numpy safetensors tokenizers)
# LEANK_SETUP_MINIMAL=1 installs only the C++ build packages above (deploy/Dockerfile uses it);
# otherwise Python, the test tools and the pip packages come too.
if [ "${LEANK_SETUP_MINIMAL:-0}" != 1 ]; then
  APT_PACKAGES+=(
    python3 python3-pip python3-venv python3-numpy python3-pytest python3-torch python3-matplotlib
    python3-grpcio python3-protobuf python3-pyflakes yamllint tmux
  )
else
  PIP_PACKAGES=()
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Into python3 on PATH (what the README's commands run) and into Debian's /usr/bin/python3,
# which has python3-torch and runs the tests (train/run_tests.sh, the ctest Python tests): where
# python3 is another interpreter (pyenv), packages in only one of them left the other's tests
# that need them skipped.
PYS=("${PYTHON:-python3}")
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] &&
   [ "$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null)" != /usr/bin/python3 ]; then
  PYS+=(/usr/bin/python3)
fi
for PY in "${PYS[@]}"; do
  need_pip=()
  for p in "${PIP_PACKAGES[@]}"; do
    $PY -c "import $p" 2>/dev/null || need_pip+=("$p")
  done
  if ((${#need_pip[@]})); then
    echo "[setup] pip install ${need_pip[*]} ($PY)"
    user=(); [ "$(id -u)" -ne 0 ] && user=(--user)  # Debian's python3 is externally managed (PEP 668)
    $PY -m pip install -q --disable-pip-version-check "${need_pip[@]}" 2>/dev/null ||
      $PY -m pip install -q --disable-pip-version-check --break-system-packages "${user[@]}" "${need_pip[@]}"
  fi
done
echo "[setup] dependencies ready"
