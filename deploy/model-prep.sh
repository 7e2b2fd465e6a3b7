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
#                      url:https://...   download a .tar / .tar.gz of the folder's files
#   PREP_MASKS_SOURCE  random            a random mask keeping 30% of K channels (smoke tests)
#                      file:/seed/PATH   copy a masks.safetensors from a mounted volume
#                      url:https://...   download a masks.safetensors
#                      (empty)           LEANK_MASKS must already exist, or be empty
#   PREP_FORCE         1: redo even when the target is complete
#
# Idempotent and safe when several pods start at once: each pod writes into its own
# temporary name and renames it into place; `.leank-ready` (written last) marks a complete
# target together with the source it came from, so a changed source is prepared again.
set -euo pipefail

log() { echo "[model-prep] $*" >&2; }
die() { log "error: $*"; exit 1; }

TOOLS=${PREP_TOOLS_DIR:-/opt/leank/tools}
PY=${PYTHON:-python3}
tag="$(hostname 2>/dev/null || echo pod).$$"  # unique per pod and per process

# ready_stamp DIR SOURCE: true when DIR was completed from SOURCE.
is_ready() { [ -f "$1/.leank-ready" ] && [ "$(cat "$1/.leank-ready")" = "$2" ]; }

# publish TMP FINAL SOURCE: moves a finished folder into place. A pod that finished first
# wins: its folder may already be in use by a running server, so it is never replaced.
publish() {
  local tmp=$1 final=$2 src=$3 old="$2.old.$tag"
  if is_ready "$final" "$src"; then
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

fetch_url() {  # fetch_url URL FILE (python: no curl in the image)
  "$PY" - "$1" "$2" <<'EOF'
import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f, 1 << 20)
EOF
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
  rm -rf "$tmp" && mkdir -p "$(dirname "$dir")"
  log "preparing $dir from $src"
  case "$src" in
    smollm2) "$PY" "$TOOLS/convert_smollm2.py" --out "$tmp" --force ;;
    dir:*) mkdir -p "$tmp" && cp -a "${src#dir:}/." "$tmp/" ;;
    url:*)
      mkdir -p "$tmp"
      fetch_url "${src#url:}" "$tmp/.download"
      tar -xf "$tmp/.download" -C "$tmp" && rm -f "$tmp/.download"
      ;;
    *) die "PREP_MODEL_SOURCE '$src': expected smollm2, dir:PATH or url:URL" ;;
  esac
  for f in config.json tokenizer.json; do
    [ -f "$tmp/$f" ] || die "$src gave no $f"
  done
  compgen -G "$tmp/*.safetensors" >/dev/null || die "$src gave no *.safetensors weights"
  echo "$src" >"$tmp/.leank-ready"
  publish "$tmp" "$dir" "$src"
  log "model ready: $dir"
}

prepare_masks() {
  local src=${PREP_MASKS_SOURCE:-} file=${LEANK_MASKS:-}
  if [ -z "$file" ]; then
    log "LEANK_MASKS is empty: serving dense"
    return
  fi
  [ -n "$src" ] || { [ -f "$file" ] || die "no PREP_MASKS_SOURCE and $file does not exist"; return; }
  # A masks file is one file: its stamp sits beside it.
  local stamp="$file.leank-ready"
  if [ "${PREP_FORCE:-0}" != 1 ] && [ -f "$file" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$src" ]; then
    log "masks ready: $file (from $src)"
    return
  fi
  local tmp="$file.tmp.$tag"
  mkdir -p "$(dirname "$file")"
  log "preparing $file from $src"
  case "$src" in
    random)
      # Shape from the model's config.json: layers, kv heads, head_dim.
      read -r layers heads head_dim < <("$PY" - "$LEANK_MODEL/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
heads = c.get("num_key_value_heads", c["num_attention_heads"])
head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
print(c["num_hidden_layers"], heads, head_dim)
EOF
      )
      "$PY" "$TOOLS/import_leank_mask.py" random "$tmp" --layers "$layers" --heads "$heads" \
        --head-dim "$head_dim" --kept-fraction 0.3 --align 16 --seed 1 --model "$(basename "$LEANK_MODEL")"
      ;;
    file:*) cp "${src#file:}" "$tmp" ;;
    url:*) fetch_url "${src#url:}" "$tmp" ;;
    *) die "PREP_MASKS_SOURCE '$src': expected random, file:PATH or url:URL" ;;
  esac
  "$PY" "$TOOLS/import_leank_mask.py" info "$tmp" >&2 || { rm -f "$tmp"; die "$src is not a LeanK masks file"; }
  chmod 0644 "$tmp"
  mv -f "$tmp" "$file"
  echo "$src" >"$stamp"
  log "masks ready: $file"
}

prepare_model
prepare_masks
