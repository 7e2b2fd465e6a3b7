#!/usr/bin/env bash
# Prepares the model folder and the LeanK masks on the model volume (a PVC), once.
# Runs as the init container of the leank-serve Deployment (image target `model-prep`).
#
# Where things go: the server's own settings, from the same ConfigMap as the server,
#   LEANK_MODEL   model folder to create (config.json, model.safetensors, tokenizer.json...)
#   LEANK_MASKS   masks file to create; empty: dense, nothing to do
# Where they come from (ConfigMap leank-model-source):
#   PREP_MODEL_SOURCE  smollm2           convert SmolLM2-135M-Instruct (shipped in the image)
#                      dir:/seed/PATH    copy a model folder from another mounted volume
#                      url:https://...   download a .tar / .tar.gz of the folder's files (or
#                                        of the folder itself: one top-level folder is unpacked)
#   PREP_MASKS_SOURCE  random            a random mask keeping 30% of K channels (smoke tests)
#                      file:/seed/PATH   copy a masks.safetensors from a mounted volume
#                      url:https://...   download a masks.safetensors
#                      (empty)           LEANK_MASKS must already exist, or be empty
#   PREP_FORCE         1: redo even when the target is complete
#
# Idempotent and safe when several pods start at once: each pod writes into its own
# temporary name and renames it into place; `.leank-ready` (written last) marks a complete
# target together with the source it came from, so a changed source is prepared again.
# Nothing incomplete is marked ready: the weights are checked the way the server opens them
# (model.safetensors, or model.safetensors.index.json and every shard it names, each holding
# all the bytes its header announces), so a download cut short fails here with an error line
# rather than leaving the server a folder it cannot load. A failed attempt's temporary files
# are removed.
set -euo pipefail

log() { echo "[model-prep] $*" >&2; }

# What is being prepared (for the error line of a command that fails under `set -e`) and the
# temporary file or folder being filled (removed unless it was published).
step=""
in_progress=""
die() { step=""; log "error: $*"; exit 1; }
on_exit() {
  local rc=$?
  if [ -n "$in_progress" ]; then rm -rf -- "$in_progress"; fi
  if ((rc != 0)) && [ -n "$step" ]; then
    log "error: $step failed (exit $rc); nothing was marked ready"
  fi
}
trap on_exit EXIT
trap 'exit 143' TERM INT

TOOLS=${PREP_TOOLS_DIR:-/opt/leank/tools}
PY=${PYTHON:-python3}
tag="$(hostname 2>/dev/null || echo pod).$$"  # unique per pod and per process

# ready_stamp DIR SOURCE: true when DIR was completed from SOURCE.
is_ready() { [ -f "$1/.leank-ready" ] && [ "$(cat "$1/.leank-ready")" = "$2" ]; }

# publish TMP FINAL SOURCE: moves a finished folder into place. A pod that finished first
# wins: its folder may already be in use by a running server, so it is never replaced
# (except with PREP_FORCE=1, which exists to replace it).
publish() {
  local tmp=$1 final=$2 src=$3 old="$2.old.$tag"
  if [ "${PREP_FORCE:-0}" != 1 ] && is_ready "$final" "$src"; then
    log "another pod prepared $final meanwhile; keeping it"
    rm -rf "$tmp"
    return
  fi
  if [ -e "$final" ]; then mv -T "$final" "$old"; fi
  if ! mv -T "$tmp" "$final" 2>/dev/null; then
    log "another pod published $final first; keeping theirs"
    rm -rf "$tmp"
  fi
  rm -rf "$old"
}

fetch_url() {  # fetch_url URL FILE (python: no curl in the image); one error line on failure
  "$PY" - "$1" "$2" <<'EOF'
import shutil, sys, urllib.request
url, out = sys.argv[1], sys.argv[2]
try:
    with urllib.request.urlopen(url, timeout=60) as r, open(out, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)
        want, got = r.headers.get("Content-Length"), f.tell()
        if want is not None and want.isdigit() and int(want) != got:
            raise OSError(f"got {got} of {want} bytes")
except Exception as e:  # HTTP errors, refused connections, short reads, timeouts, disk full
    sys.exit(f"[model-prep] error: download of {url} failed: {type(e).__name__}: {e}")
EOF
}

check_weights() {  # check_weights DIR: complete weights, as the server will open them
  "$PY" - "$1" <<'EOF'
import json, os, struct, sys
folder = sys.argv[1]


def fail(msg):
    sys.exit(f"[model-prep] error: {msg}")


def check(path):
    """The tensors of a safetensors file whose bytes are all there (a cut download's are not)."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            fail(f"{name}: {size} bytes: truncated")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            fail(f"{name}: a {n}-byte header in a {size}-byte file: truncated or not safetensors")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            fail(f"{name}: the header is not JSON ({e}): truncated or not safetensors")
    if not isinstance(header, dict):
        fail(f"{name}: the header is not a JSON object")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        fail(f"{name}: a tensor without valid data_offsets")
    if 8 + n + end > size:
        fail(f"{name}: {size} bytes, but its header describes {8 + n + end}: truncated")
    return header


index = os.path.join(folder, "model.safetensors.index.json")
if os.path.exists(index):
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        fail(f"model.safetensors.index.json: no valid weight_map ({type(e).__name__}: {e})")
    missing = [s for s in shards if not os.path.isfile(os.path.join(folder, str(s)))]
    if missing:
        fail(f"model.safetensors.index.json names {len(shards)} shards and {len(missing)} are "
             f"missing: {', '.join(map(str, missing[:3]))}{' ...' if len(missing) > 3 else ''}")
    for s in shards:
        tensors = check(os.path.join(folder, s))
        absent = [t for t, where in weight_map.items() if where == s and t not in tensors]
        if absent:
            fail(f"{s} lacks tensor {absent[0]}, which model.safetensors.index.json puts there")
elif os.path.isfile(os.path.join(folder, "model.safetensors")):
    check(os.path.join(folder, "model.safetensors"))
else:
    found = ", ".join(sorted(os.listdir(folder))[:8]) or "nothing"
    fail("neither model.safetensors nor model.safetensors.index.json, which the server loads "
         f"(found: {found})")
EOF
}

# unwrap_single_folder DIR: an archive of the folder itself (llama/config.json, ...) rather
# than of its files: move that one folder's files up.
unwrap_single_folder() {
  local dir=$1 entries
  [ ! -e "$dir/config.json" ] || return 0
  mapfile -t entries < <(find "$dir" -mindepth 1 -maxdepth 1)
  if ((${#entries[@]} == 1)) && [ -d "${entries[0]}" ] && [ -f "${entries[0]}/config.json" ]; then
    log "the archive holds one folder, $(basename "${entries[0]}")/: using its files"
    mv -T "${entries[0]}" "$dir/.leank-unwrap"
    find "$dir/.leank-unwrap" -mindepth 1 -maxdepth 1 -exec mv -t "$dir" {} +
    rmdir "$dir/.leank-unwrap"
  fi
}

prepare_model() {
  local src=${PREP_MODEL_SOURCE:-} dir=${LEANK_MODEL:-}
  [ -n "$dir" ] || die "LEANK_MODEL is empty: the server needs a model folder"
  [ -n "$src" ] || { [ -f "$dir/config.json" ] || die "no PREP_MODEL_SOURCE and $dir has no config.json"; return; }
  if [ "${PREP_FORCE:-0}" != 1 ] && is_ready "$dir" "$src"; then
    log "model ready: $dir (from $src)"
    return
  fi
  local tmp="$dir.tmp.$tag"
  step="preparing $dir from $src"
  rm -rf "$tmp" && mkdir -p "$(dirname "$dir")"
  in_progress=$tmp
  log "$step"
  case "$src" in
    smollm2) "$PY" "$TOOLS/convert_smollm2.py" --out "$tmp" --force ;;
    dir:*)
      [ -d "${src#dir:}" ] || die "PREP_MODEL_SOURCE $src: no such folder (is its volume mounted?)"
      mkdir -p "$tmp" && cp -a "${src#dir:}/." "$tmp/"
      ;;
    url:*)
      mkdir -p "$tmp"
      fetch_url "${src#url:}" "$tmp/.download"
      tar -xf "$tmp/.download" -C "$tmp" || die "$src is not a readable (or a complete) tar archive"
      rm -f "$tmp/.download"
      unwrap_single_folder "$tmp"
      ;;
    *) die "PREP_MODEL_SOURCE '$src': expected smollm2, dir:PATH or url:URL" ;;
  esac
  for f in config.json tokenizer.json; do
    [ -f "$tmp/$f" ] || die "$src gave no $f (found: $(ls -A "$tmp" | head -n 8 | tr '\n' ' '))"
  done
  check_weights "$tmp"
  echo "$src" >"$tmp/.leank-ready"
  publish "$tmp" "$dir" "$src"
  in_progress=""
  # Pods that disagree on the source must not share a folder: each would replace the other's.
  is_ready "$dir" "$src" ||
    die "$dir now holds a model from '$(cat "$dir/.leank-ready" 2>/dev/null || echo nothing)', not" \
      "from '$src': a pod with another PREP_MODEL_SOURCE replaced it; give each model version" \
      "its own LEANK_MODEL path"
  step=""
  log "model ready: $dir"
}

prepare_masks() {
  local src=${PREP_MASKS_SOURCE:-} file=${LEANK_MASKS:-}
  if [ -z "$file" ]; then
    log "LEANK_MASKS is empty: serving dense"
    return
  fi
  [ -n "$src" ] || { [ -f "$file" ] || die "no PREP_MASKS_SOURCE and $file does not exist"; return; }
  # A masks file is one file: its stamp sits beside it. The stamp names the masks source
  # only, so a ready file is also checked against the model now in LEANK_MODEL (a `random`
  # mask of the previous model, or a file for another model, is not ready for this one).
  local stamp="$file.leank-ready"
  if [ "${PREP_FORCE:-0}" != 1 ] && [ -f "$file" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$src" ]; then
    if "$PY" "$TOOLS/import_leank_mask.py" info "$file" --config "$LEANK_MODEL" >/dev/null 2>&1; then
      log "masks ready: $file (from $src)"
      return
    fi
    log "$file (from $src) does not fit the model in $LEANK_MODEL: preparing it again"
  fi
  local tmp="$file.tmp.$tag"
  step="preparing $file from $src"
  mkdir -p "$(dirname "$file")"
  in_progress=$tmp
  log "$step"
  case "$src" in
    random)
      # Shape (layers, kv heads, head_dim) from the model's config.json.
      "$PY" "$TOOLS/import_leank_mask.py" random "$tmp" --config "$LEANK_MODEL" \
        --kept-fraction 0.3 --align 16 --seed 1 --model "$(basename "$LEANK_MODEL")" >&2
      ;;
    file:*)
      [ -f "${src#file:}" ] || die "PREP_MASKS_SOURCE $src: no such file (is its volume mounted?)"
      cp "${src#file:}" "$tmp"
      ;;
    url:*) fetch_url "${src#url:}" "$tmp" ;;
    *) die "PREP_MASKS_SOURCE '$src': expected random, file:PATH or url:URL" ;;
  esac
  "$PY" "$TOOLS/import_leank_mask.py" info "$tmp" >&2 || die "$src is not a LeanK masks file"
  # The server refuses a mask of another shape at start-up (a crash loop): refuse it here.
  "$PY" "$TOOLS/import_leank_mask.py" info "$tmp" --config "$LEANK_MODEL" >/dev/null ||
    die "$src is a masks file for another model than the one in $LEANK_MODEL"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$file"
  in_progress=""
  echo "$src" >"$stamp"
  step=""
  log "masks ready: $file"
}

prepare_model
prepare_masks
