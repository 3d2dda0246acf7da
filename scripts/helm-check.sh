#!/usr/bin/env bash
# The Helm chart (helm/emostream), checked offline and strictly, as CI runs it:
#  - helm v3.22.0 built from the Go module proxy (once; cached in .cache/bin),
#  - `helm lint --strict` and `helm template` with the default values (a Deployment),
#    values-production.yaml (a StatefulSet with KEDA) and a values file below that sets keys
#    through `config`, `extraConfig` and `extraEnv` (a Deployment with an HPA),
#  - every rendered object validated strictly (an unknown field or a wrong type fails):
#    built-in kinds with PyPI's kubernetes-validate (Kubernetes 1.30 schemas), KEDA's
#    ScaledObject and the Prometheus Operator's ServiceMonitor and PrometheusRule against their
#    CRDs' schemas (from the Go module proxy),
#  - a render with a misspelt field in each kind must fail that validation (the check can fail),
#  - the daemon accepts the configuration the chart renders (`emostream check-config`), and a
#    key set through `config` reaches it (an out-of-range one is refused by name),
#  - the rendered objects hold what the chart promises: each TOML table once with the merged
#    keys, no surge pod in a rollout, the StatefulSet's headless Service (not scraped),
#    autoscalers aimed at the workload, a runbook_url on every alert and the absent() alert,
#  - bad values (grace period not above the shutdown timeout, more replicas than partitions,
#    an unknown workload, keys the chart owns) must refuse to render,
#  - every PromQL expression — the alerts and the dashboard's panels — parses and passes
#    `promtool check rules` (promtool built once from the Go module proxy, cached), and
#    `promtool test rules` shows the "no events" and "metrics absent" alerts fire when they
#    should and not otherwise.
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

render() { "$helm" template emostream "$chart" --kube-version "$kube" "$@"; }
# The TOML of a render's ConfigMap.
toml_of() {
  "$venv/bin/python" - "$1" "$2" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap" and "emostream.toml" in d.get("data", {}):
        open(sys.argv[2], "w").write(d["data"]["emostream.toml"])
PY
}
# The daemon's own start-up validation of a rendered TOML (token as the Secret gives it,
# replica and transactional ids as the pod's env gives them from the pod name).
check_config() {
  EMOSTREAM__ADMIN__TOKEN=from-the-secret EMOSTREAM__REGISTRY__REPLICA_ID=emostream-0 \
    EMOSTREAM__KAFKA__TRANSACTIONAL_ID=emostream-emostream-0 \
    "$emostream" --config "$1" check-config
}

# Keys set through every door the chart has: `config` in sections the chart writes itself
# (batching, kafka, kafka.properties, log, api) and in one it does not (registry keys it does
# not set), extraConfig (TOML text; `config` wins where both set a key), and extraEnv.
cat > "$out/custom-values.yaml" <<'YAML'
kafka:
  properties:
    security.protocol: PLAINTEXT
config:
  batching:
    max_batch_size: 64
  kafka:
    commit_interval_ms: 500
    properties:
      fetch.wait.max.ms: "50"
  log:
    format: pretty
  api:
    enabled: false
  registry:
    shadow_min_agreement: 0.9
  backpressure:
    max_in_flight_bytes: 134217728
extraConfig: |
  [health]
  stall_timeout_ms = 120000
  [batching]
  max_wait_ms = 10
  max_batch_size = 16
extraEnv:
  - name: EMOSTREAM__LOG__LEVEL
    value: debug
  - name: NODE_NAME
    valueFrom:
      fieldRef:
        fieldPath: spec.nodeName
autoscaling:
  hpa:
    enabled: true
monitoring:
  serviceMonitor:
    enabled: true
  prometheusRule:
    enabled: true
    runbookBaseUrl: https://runbooks.example.com/emostream
YAML

for values in default production custom object-store; do
  args=()
  [ "$values" = production ] && args=(-f "$chart/values-production.yaml")
  [ "$values" = custom ] && args=(-f "$out/custom-values.yaml")
  [ "$values" = object-store ] && args=(-f "$chart/values-object-store.yaml")
  "$helm" lint --strict --kube-version "$kube" "$chart" "${args[@]}"
  render "${args[@]}" > "$out/$values.yaml"
  validate "$out/$values.yaml"
  toml_of "$out/$values.yaml" "$out/$values.toml"
  check_config "$out/$values.toml"
done

# What the renders hold.
"$venv/bin/python" - "$out" <<'PY'
import re, sys, tomllib, yaml
out = sys.argv[1]
docs = {v: [d for d in yaml.safe_load_all(open(f"{out}/{v}.yaml")) if d]
        for v in ("default", "production", "custom", "object-store")}
def one(v, kind, name=None):
    found = [d for d in docs[v] if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{v}: {len(found)} {kind} {name or ''}"
    return found[0]
def check(cond, what):
    if not cond:
        sys.exit(f"helm-check: {what}")

# Each TOML table once (a reopened table is invalid TOML), holding the merged keys.
toml = {}
for v in docs:
    text = open(f"{out}/{v}.toml").read()
    headers = re.findall(r"^\[([^\]]+)\]\s*$", text, re.M)
    check(len(headers) == len(set(headers)), f"{v}: a TOML table written twice: {headers}")
    toml[v] = tomllib.loads(text)
check([toml[v]["ui"]["enabled"] for v in ("default", "production")] == [True, False],
      "ui.enabled should be on with the default values, off in production")
c = toml["custom"]
want = {
    ("kafka", "commit_interval_ms"): 500,            # config, in the chart's [kafka]
    ("kafka", "brokers"): "kafka:9092",              # the chart's own key kept beside it
    ("batching", "max_batch_size"): 64,              # config wins over extraConfig's 16
    ("batching", "max_wait_ms"): 10,                 # extraConfig, in the same [batching]
    ("batching", "inference_workers"): 2,            # values.yaml's config kept
    ("health", "stall_timeout_ms"): 120000,          # extraConfig, a table the chart lacks
    ("log", "format"): "pretty",                     # config over the chart's json
    ("api", "enabled"): False,                       # false overrides the chart's true
    ("registry", "shadow_min_agreement"): 0.9,       # a float stays a float
    ("registry", "max_swaps_per_minute"): 10,        # a whole number stays an integer,
    ("backpressure", "max_in_flight_bytes"): 134217728,  # a large one too (not 1.34e+08)
}
for (section, key), value in want.items():
    got = c.get(section, {}).get(key)
    check(got == value and type(got) is type(value), f"custom: {section}.{key} = {got!r}, want {value!r}")
check(c["kafka"]["properties"] == {"security.protocol": "PLAINTEXT", "fetch.wait.max.ms": "50"},
      f"custom: kafka.properties = {c['kafka']['properties']}")
check(toml["default"]["log"]["format"] == "json", "the chart's log.format json is gone")

for v, kind in (("default", "Deployment"), ("production", "StatefulSet"), ("custom", "Deployment")):
    w = one(v, kind, "emostream")
    check(not [d for d in docs[v] if d["kind"] in ("Deployment", "StatefulSet") and d is not w],
          f"{v}: more than one workload")
    if kind == "Deployment":
        # No surge pod: at replicas = partitions it would never be Ready and stall the rollout.
        check(w["spec"]["strategy"] == {"type": "RollingUpdate",
                                        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
              f"{v}: Deployment strategy {w['spec'].get('strategy')}")
    else:
        check(w["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
              and w["spec"]["podManagementPolicy"] == "Parallel",
              f"{v}: StatefulSet update {w['spec'].get('updateStrategy')}")
        headless = one(v, "Service", w["spec"]["serviceName"])
        check(headless["spec"].get("clusterIP") == "None"
              and headless["spec"]["selector"] == w["spec"]["selector"]["matchLabels"],
              f"{v}: the StatefulSet's serviceName is not a headless Service over its pods")
    env = {e["name"]: e for e in w["spec"]["template"]["spec"]["containers"][0]["env"]}
    check(env["EMOSTREAM__KAFKA__TRANSACTIONAL_ID"]["value"] == "emostream-$(POD_NAME)"
          and env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name",
          f"{v}: transactional id not from the pod name")
    if v == "custom":
        check(env["EMOSTREAM__LOG__LEVEL"] == {"name": "EMOSTREAM__LOG__LEVEL", "value": "debug"}
              and env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName",
              "custom: extraEnv not in the container")
    # The autoscaler scales this workload.
    for d in docs[v]:
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = d["spec"]["scaleTargetRef"]
            check((ref.get("apiVersion"), ref.get("kind"), ref["name"]) == ("apps/v1", kind, "emostream"),
                  f"{v}: {d['kind']} targets {ref}")
    check(v == "default" or any(d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject") for d in docs[v]),
          f"{v}: no autoscaler rendered")
    # The ServiceMonitor scrapes each pod once, through the Service the alerts name.
    for sm in (d for d in docs[v] if d["kind"] == "ServiceMonitor"):
        sel = sm["spec"]["selector"]
        def selects(labels):
            ok = all(labels.get(k) == x for k, x in sel.get("matchLabels", {}).items())
            for e in sel.get("matchExpressions", []):
                check(e["operator"] == "NotIn", f"{v}: ServiceMonitor selector {e}")
                ok = ok and labels.get(e["key"]) not in e["values"]
            return ok
        picked = [d["metadata"]["name"] for d in docs[v] if d["kind"] == "Service" and selects(d["metadata"]["labels"])]
        check(picked == ["emostream"], f"{v}: the ServiceMonitor selects Services {picked}")

# The object-store registry: the URL is the daemon's registry.root, versions are cached in an
# emptyDir, credentials come from the Secret as environment, and no volume claim is made.
o = toml["object-store"]["registry"]
check(o.get("root") == "s3://ml-models/emostream" and o.get("cache_dir") == "/var/cache/emostream/registry"
      and o.get("poll_interval_ms") == 5000, f"object-store: [registry] {o}")
w = one("object-store", "Deployment", "emostream")
pod = w["spec"]["template"]["spec"]
c0 = pod["containers"][0]
mounts = {m["name"]: m["mountPath"] for m in c0["volumeMounts"]}
vols = {x["name"]: x for x in pod["volumes"]}
check(mounts.get("registry-cache") == "/var/cache/emostream/registry"
      and vols["registry-cache"].get("emptyDir", {}).get("sizeLimit") == "1Gi"
      and "registry" not in vols, f"object-store: volumes {vols}, mounts {mounts}")
check(c0.get("envFrom") == [{"secretRef": {"name": "emostream-registry-s3"}}],
      f"object-store: envFrom {c0.get('envFrom')}")
check(not [d for d in docs["object-store"] if d["kind"] == "PersistentVolumeClaim"],
      "object-store: a PersistentVolumeClaim was rendered")
check(not [d for d in docs["default"] + docs["production"] if d["kind"] in ("Deployment", "StatefulSet")
           and d["spec"]["template"]["spec"]["containers"][0].get("envFrom")],
      "envFrom without registry.url")

# Every alert links its runbook section; the absent() alert is there.
for v, base in (("production", "https://github.com/emostream/emostream/blob/main/docs/runbook.md"),
                ("custom", "https://runbooks.example.com/emostream")):
    rules = [r for g in one(v, "PrometheusRule")["spec"]["groups"] for r in g["rules"] if "alert" in r]
    for r in rules:
        url = r.get("annotations", {}).get("runbook_url")
        check(url == f"{base}#{r['alert'].lower()}", f"{v}: {r['alert']} runbook_url {url!r}")
    absent = [r for r in rules if r["alert"] == "EmostreamMetricsAbsent"]
    check(len(absent) == 1 and absent[0]["expr"].startswith("absent(emostream_consumed_total{")
          and absent[0].get("for") == "10m", f"{v}: EmostreamMetricsAbsent {absent}")
    if v == "production":
        print("alerts:", " ".join(r["alert"] for r in rules))
PY

# A key set through `config` reaches the daemon: an out-of-range one is refused by its name.
render --set config.batching.max_batch_size=0 > "$out/bad-key.yaml"
toml_of "$out/bad-key.yaml" "$out/bad-key.toml"
if check_config "$out/bad-key.toml" 2> "$out/err"; then
  echo "check-config accepted batching.max_batch_size = 0 set through config" >&2; exit 1
fi
grep -q "batching.max_batch_size" "$out/err" || { cat "$out/err"; exit 1; }

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
# Unit tests of the two alerts about silence (the pods create both counters at zero at
# start-up): consumed rising with labelled flat at 0 or absent fires "no events", with
# labelled rising it does not; no series at all fires "metrics absent" after its 10 minutes.
alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
def expect(name, extra_labels=None):
    r = alerts[name]
    return [{"exp_labels": {**r["labels"], **(extra_labels or {})}, "exp_annotations": r["annotations"]}]
consumed = {"series": 'emostream_consumed_total{service="emostream",pod="emostream-0"}', "values": "0+60x40"}
def labelled(values):
    return {"series": 'emostream_labelled_total{service="emostream",pod="emostream-0"}', "values": values}
tests = [
    {"interval": "1m", "input_series": [consumed, labelled("0x40")], "alert_rule_test": [
        {"eval_time": "5m", "alertname": "EmostreamNoEventsWhileInputFlows", "exp_alerts": []},
        {"eval_time": "30m", "alertname": "EmostreamNoEventsWhileInputFlows", "exp_alerts": expect("EmostreamNoEventsWhileInputFlows")},
        {"eval_time": "30m", "alertname": "EmostreamMetricsAbsent", "exp_alerts": []}]},
    {"interval": "1m", "input_series": [consumed], "alert_rule_test": [
        {"eval_time": "30m", "alertname": "EmostreamNoEventsWhileInputFlows", "exp_alerts": expect("EmostreamNoEventsWhileInputFlows")}]},
    {"interval": "1m", "input_series": [consumed, labelled("0+60x40")], "alert_rule_test": [
        {"eval_time": "30m", "alertname": "EmostreamNoEventsWhileInputFlows", "exp_alerts": []}]},
    {"interval": "1m", "input_series": [labelled("0+60x40")], "alert_rule_test": [
        {"eval_time": "5m", "alertname": "EmostreamMetricsAbsent", "exp_alerts": []},
        {"eval_time": "15m", "alertname": "EmostreamMetricsAbsent", "exp_alerts": expect("EmostreamMetricsAbsent", {"service": "emostream"})}]},
]
yaml.safe_dump({"rule_files": ["alerts.yaml"], "evaluation_interval": "1m", "tests": tests},
               open(f"{sys.argv[3]}/alerts-test.yaml", "w"))
PY
"$promtool" check rules "$out/alerts.yaml" "$out/dashboard.yaml"
"$promtool" test rules "$out/alerts-test.yaml"

# The validation must catch a misspelt field in each workload kind, the headless Service and
# each custom resource.
"$venv/bin/python" - "$out/default.yaml" "$out/production.yaml" "$out/broken.yaml" "$out/broken-want" <<'PY'
import sys, yaml
docs, want = [], []
for path in sys.argv[1:3]:
    for d in yaml.safe_load_all(open(path)):
        if not d:
            continue
        if d["kind"] in ("Deployment", "StatefulSet"):
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
        elif d["kind"] == "Service" and d["spec"].get("clusterIP") == "None":
            d["spec"]["publishNotReadyAdresses"] = True
        elif d["kind"] == "ScaledObject":
            d["spec"]["maxReplicaCount"] = "twelve"
        elif d["kind"] in ("ServiceMonitor", "PrometheusRule"):
            d["spec"]["unknownField"] = True
        else:
            docs.append(d)
            continue
        docs.append(d)
        want.append(f"{d['kind']} {d['metadata']['name']}")
yaml.safe_dump_all(docs, open(sys.argv[3], "w"))
open(sys.argv[4], "w").write("\n".join(sorted(want)) + "\n")
PY
if validate "$out/broken.yaml" > "$out/broken.log"; then
  cat "$out/broken.log"; echo "validation accepted misspelt fields" >&2; exit 1
fi
sed -n 's/^FAIL  [^:]*: \([^:]*\):.*/\1/p' "$out/broken.log" | sort > "$out/broken-got"
diff "$out/broken-want" "$out/broken-got" > /dev/null \
  || { cat "$out/broken.log"; echo "expected exactly these invalid:" >&2; cat "$out/broken-want" >&2; exit 1; }

# Bad values refuse to render, naming the problem.
refuse() {
  local want=$1; shift
  if render "$@" > /dev/null 2> "$out/err"; then
    echo "rendered with $* (expected a refusal)" >&2; exit 1
  fi
  grep -q "$want" "$out/err" || { cat "$out/err"; exit 1; }
}
refuse terminationGracePeriodSeconds --set terminationGracePeriodSeconds=20
refuse "must not exceed kafka.inputPartitions" --set autoscaling.keda.enabled=true --set autoscaling.keda.maxReplicas=7
refuse "replicaCount must not exceed kafka.inputPartitions" --set replicaCount=7
refuse "kafka.delivery" --set kafka.delivery=sometimes
refuse "workload must be Deployment or StatefulSet" --set workload=DaemonSet
refuse "rollingUpdate.maxUnavailable must be at least 1" --set rollingUpdate.maxUnavailable=0
refuse "must not set kafka.transactional_id" --set config.kafka.transactional_id=fixed
refuse "must not set admin.bind" --set-string extraConfig='[admin]
bind = "0.0.0.0:1"'
refuse "extraConfig is not valid TOML" --set-string extraConfig='[batching'
refuse "registry.enabled (a shared volume) or registry.url" --set registry.enabled=true --set registry.url=s3://b/p
refuse "registry.url must be s3://" --set registry.url=s3:/models/prod
refuse "registry.controlTopic needs registry.enabled or registry.url" --set registry.controlTopic=ctl
refuse "extraEnv must not set EMOSTREAM__ADMIN__TOKEN" --set extraEnv[0].name=EMOSTREAM__ADMIN__TOKEN --set extraEnv[0].value=x
echo "helm chart: lint, template, strict validation (and its negative checks), config, rollout, alerts: ok"
