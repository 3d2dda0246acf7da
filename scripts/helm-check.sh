#!/usr/bin/env bash
# The Helm chart (helm/emostream), checked offline and strictly, as CI runs it:
#  - helm v3.22.0 built from the Go module proxy (once; cached in .cache/bin),
#  - `helm lint --strict` and `helm template` with the default values and values-production.yaml,
#  - every rendered object validated strictly (an unknown field or a wrong type fails):
#    built-in kinds with PyPI's kubernetes-validate (Kubernetes 1.30 schemas), KEDA's
#    ScaledObject and the Prometheus Operator's ServiceMonitor and PrometheusRule against their
#    CRDs' schemas (from the Go module proxy),
#  - a render with a misspelt field in each kind must fail that validation (the check can fail),
#  - bad values (grace period not above the shutdown timeout, more replicas than partitions)
#    must refuse to render,
#  - the daemon accepts the configuration the chart renders (`emostream check-config`),
#  - every PromQL expression — the alerts and the dashboard's panels — parses and passes
#    `promtool check rules` (promtool built once from the Go module proxy, cached).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
kube=1.30.0
helm=.cache/bin/helm
if [ ! -x "$helm" ]; then
  echo "building helm v3.22.0 from the Go module proxy (once, ~2 min)" >&2
  GOBIN="$root/.cache/bin" go install helm.sh/helm/v3/cmd/helm@v3.22.0
fi
promtool=.cache/bin/promtool
if [ ! -x "$promtool" ]; then
  # prometheus's go.mod has exclude directives, which `go install pkg@version` refuses: build it
  # as a dependency of a throw-away module instead.
  echo "building promtool (prometheus v0.316.0) from the Go module proxy (once, ~3 min)" >&2
  tmpmod=$(mktemp -d)
  (cd "$tmpmod" && go mod init promtoolbuild >/dev/null 2>&1 \
    && go get github.com/prometheus/prometheus/cmd/promtool@v0.316.0 >/dev/null 2>&1 \
    && go build -o "$root/$promtool" github.com/prometheus/prometheus/cmd/promtool)
  rm -rf "$tmpmod"
fi
venv=.cache/venv-k8s
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.30.0
fi
moddir() { (cd /tmp && go mod download -json "$1") | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'; }
keda=$(moddir github.com/kedacore/keda/v2@v2.21.0)
promop=$(moddir github.com/prometheus-operator/prometheus-operator@v0.85.0)
crds=("$keda/config/crd/bases/keda.sh_scaledobjects.yaml"
      "$promop/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
      "$promop/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml")
emostream=${EMOSTREAM_BIN:-target/release/emostream}
[ -x "$emostream" ] || cargo build --release --bin emostream
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
chart=helm/emostream
validate() { "$venv/bin/python" scripts/validate-manifests.py "$kube" "${crds[@]}" -- "$@"; }

for values in default production; do
  args=()
  [ "$values" = production ] && args=(-f "$chart/values-production.yaml")
  "$helm" lint --strict --kube-version "$kube" "$chart" "${args[@]}"
  "$helm" template emostream "$chart" --kube-version "$kube" "${args[@]}" > "$out/$values.yaml"
  validate "$out/$values.yaml"
  # The daemon's own start-up validation of the rendered TOML (token as the Secret gives it,
  # replica and transactional ids as the Deployment's env gives them from the pod name).
  "$venv/bin/python" - "$out/$values.yaml" "$out/$values.toml" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap" and "emostream.toml" in d.get("data", {}):
        open(sys.argv[2], "w").write(d["data"]["emostream.toml"])
PY
  EMOSTREAM__ADMIN__TOKEN=from-the-secret EMOSTREAM__REGISTRY__REPLICA_ID=emostream-0 \
    EMOSTREAM__KAFKA__TRANSACTIONAL_ID=emostream-emostream-0 \
    "$emostream" --config "$out/$values.toml" check-config
done
# The try-it page and live view are on with the default values, off in production.
python3 - "$out/default.toml" "$out/production.toml" <<'PY'
import sys, tomllib
ui = [tomllib.load(open(f, "rb"))["ui"]["enabled"] for f in sys.argv[1:]]
assert ui == [True, False], f"ui.enabled default/production: {ui}"
PY

# The alerts and the dashboard's queries, as rule files for promtool (the dashboard's Grafana
# variables replaced by plain values).
"$venv/bin/python" - "$out/production.yaml" "$chart/dashboards/emostream.json" "$out" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
rule = next(d for d in docs if d["kind"] == "PrometheusRule")
yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(f"{sys.argv[3]}/alerts.yaml", "w"))
dash = json.load(open(sys.argv[2]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
subst = {"$__rate_interval": "5m", "$namespace": "ns", "$service": "svc"}
rules = []
for i, e in enumerate(exprs):
    for k, v in subst.items():
        e = e.replace(k, v)
    rules.append({"record": f"dashboard:panel_{i}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(f"{sys.argv[3]}/dashboard.yaml", "w"))
PY
"$promtool" check rules "$out/alerts.yaml" "$out/dashboard.yaml"

# The validation must catch a misspelt field in a built-in kind and in each custom resource.
"$venv/bin/python" - "$out/production.yaml" "$out/broken.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "Deployment":
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    elif d["kind"] == "ScaledObject":
        d["spec"]["maxReplicaCount"] = "twelve"
    elif d["kind"] in ("ServiceMonitor", "PrometheusRule"):
        d["spec"]["unknownField"] = True
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if validate "$out/broken.yaml" > "$out/broken.log"; then
  cat "$out/broken.log"; echo "validation accepted misspelt fields" >&2; exit 1
fi
[ "$(grep -c '^FAIL' "$out/broken.log")" = 4 ] || { cat "$out/broken.log"; echo "expected 4 invalid objects" >&2; exit 1; }

# Bad values refuse to render, naming the problem.
refuse() {
  local want=$1; shift
  if "$helm" template emostream "$chart" --kube-version "$kube" "$@" > /dev/null 2> "$out/err"; then
    echo "rendered with $* (expected a refusal)" >&2; exit 1
  fi
  grep -q "$want" "$out/err" || { cat "$out/err"; exit 1; }
}
refuse terminationGracePeriodSeconds --set terminationGracePeriodSeconds=20
refuse "must not exceed kafka.inputPartitions" --set autoscaling.keda.enabled=true --set autoscaling.keda.maxReplicas=7
refuse "kafka.delivery" --set kafka.delivery=sometimes
echo "helm chart: lint, template, strict validation (and its negative checks), config: ok"
