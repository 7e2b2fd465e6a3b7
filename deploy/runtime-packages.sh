#!/usr/bin/env bash
# Prints the Debian/Ubuntu packages that own the shared libraries the given binaries load,
# one per line, so the image's runtime stage installs exactly those (and no -dev package).
# Libraries under /usr/local/cuda* come from the CUDA runtime base image, and the driver's
# (libcuda, libnvidia-*) from the host through the NVIDIA container toolkit: both skipped.
#   deploy/runtime-packages.sh build/bin/leank-server [more binaries...]
set -euo pipefail
(($#)) || { echo "usage: $0 BINARY..." >&2; exit 2; }

declare -A packages=() seen=()
status=0
for bin in "$@"; do
  while read -r name _ path _; do
    case "$name" in
      libcuda.so* | libnvidia-*) continue ;;  # the driver's: mounted at run time
    esac
    if [ "$path" = "not" ]; then
      echo "error: $bin needs $name, which is not found" >&2
      status=1
      continue
    fi
    real=$(realpath "$path")
    case "$real" in /usr/local/cuda*) continue ;; esac
    [ -z "${seen[$real]:-}" ] || continue
    seen[$real]=1
    # usrmerge: dpkg may list the file under /usr/lib or /lib; ask for both paths.
    owner=$( { dpkg -S "$real" || dpkg -S "${real#/usr}"; } 2>/dev/null |
      cut -d: -f1 | grep -v -- '-dev$' | head -n1 || true)
    if [ -z "$owner" ]; then
      echo "error: no package owns $real (needed by $bin as $name)" >&2
      status=1
      continue
    fi
    packages[$owner]=1
  done < <(ldd "$bin" | awk '$2 == "=>" {print $1, $2, $3, $4}')
done
((status == 0)) || exit "$status"
printf '%s\n' "${!packages[@]}" | sort
