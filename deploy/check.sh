#!/usr/bin/env bash
# Validates everything under deploy/ and helm/ without a cluster or a Docker engine.
# Tools come from .ci/install-deploy-tools.sh (run by .ci/run); a missing tool is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=$PWD/.tools
export PATH="$TOOLS/bin:$PATH"
failures=0
step() { printf '%-58s' "$1"; shift; if out=$("$@" 2>&1); then echo ok; else echo FAILED; echo "$out" | sed 's/^/    /'; failures=$((failures + 1)); fi; }

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "missing $1: run .ci/install-deploy-tools.sh" >&2; exit 1; }
}
need promtool; need helm; need docker-compose
[[ -x $TOOLS/venv/bin/kubernetes-validate ]] || { echo "missing kubernetes-validate: run .ci/install-deploy-tools.sh" >&2; exit 1; }

# Prometheus
step "promtool check config (compose)" promtool check config deploy/prometheus/prometheus.yml
# Debian's promtool is built without Kubernetes discovery, so the Kubernetes example is
# checked as YAML with the same rule file, its scrape config parsed by Python.
step "prometheus-kubernetes.yml parses, keeps agentfleet pods" "$TOOLS/venv/bin/python" -c '
import sys, yaml
c = yaml.safe_load(open("deploy/prometheus/prometheus-kubernetes.yml"))
job = c["scrape_configs"][0]
assert job["kubernetes_sd_configs"][0]["role"] == "pod"
assert any(r.get("regex") == "agentfleet" and r["action"] == "keep" for r in job["relabel_configs"])
assert c["rule_files"] == ["alerts.yml"]
'
step "promtool check rules" promtool check rules deploy/prometheus/alerts.yml
step "promtool test rules" promtool test rules deploy/prometheus/alerts_test.yml

# Grafana
step "dashboard structure" python3 deploy/grafana/check_dashboard.py deploy/grafana/dashboards/agentfleet.json
step "dashboard type-checks against @grafana/schema" deploy/grafana/schema-check.sh

# Compose
step "docker-compose config" docker-compose -f docker-compose.yml config -q

# Helm
chart=helm/agentfleet
step "helm lint --strict (default values)" helm lint --strict "$chart"
step "helm lint --strict (full values)" helm lint --strict "$chart" -f "$chart/ci/full-values.yaml"
render() { helm template agentfleet "$chart" --namespace agentfleet "$@"; }
# kubernetes-validate knows the built-in kinds offline; the KEDA ScaledObject and the
# ServiceMonitor are CRDs it has no schema for, so they are split off and checked for their
# required fields by deploy/check_crds.py.
validate() {
  local out; out=$(mktemp)
  render "$@" | "$TOOLS/venv/bin/python" deploy/check_crds.py --strip > "$out"
  "$TOOLS/venv/bin/kubernetes-validate" --strict --quiet "$out"
  rm -f "$out"
}
step "helm template | kubernetes-validate --strict (default)" validate
step "helm template | kubernetes-validate --strict (full)" validate -f "$chart/ci/full-values.yaml"
step "CRDs of the full values (ScaledObject, ServiceMonitor)" bash -c "helm template agentfleet $chart -f $chart/ci/full-values.yaml | $TOOLS/venv/bin/python deploy/check_crds.py --check"

if [[ $failures -gt 0 ]]; then
  echo "deploy checks: $failures failed"
  exit 1
fi
echo "deploy checks: all passed"
