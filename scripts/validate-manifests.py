#!/usr/bin/env python3
"""Strict offline validation of rendered Kubernetes manifests (helm template output).

Built-in kinds go through kubernetes-validate (the Kubernetes OpenAPI schemas shipped in the
PyPI package, --strict: an unknown field or a wrong type fails). Custom resources (KEDA's
ScaledObject, the Prometheus Operator's ServiceMonitor and PrometheusRule) are checked against
the openAPIV3Schema of their CRDs, made strict the same way (additionalProperties: false
wherever a schema lists properties and does not preserve unknown fields).

usage: validate-manifests.py KUBE_VERSION CRD_FILE... -- MANIFEST_FILE...
"""
import sys

import jsonschema
import kubernetes_validate
import yaml


def strict(schema):
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        # CRDs carry Go (RE2) patterns; Python wants inline flags at the very start.
        if isinstance(out.get("pattern"), str) and "(?i)" in out["pattern"]:
            out["pattern"] = "(?i)" + out["pattern"].replace("(?i)", "")
        if (
            "properties" in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in out
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schemas(paths):
    schemas = {}
    for path in paths:
        for crd in yaml.safe_load_all(open(path)):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                schema = strict(v["schema"]["openAPIV3Schema"])
                # apiVersion, kind and metadata are the API server's, not the CRD's.
                schema.setdefault("properties", {})
                for k in ("apiVersion", "kind", "metadata"):
                    schema["properties"].setdefault(k, {})
                schemas[(f"{group}/{v['name']}", kind)] = schema
    return schemas


def main():
    args = sys.argv[1:]
    sep = args.index("--")
    version, crds, manifests = args[0], args[1:sep], args[sep + 1 :]
    schemas = crd_schemas(crds)
    failures, checked = 0, 0
    for path in manifests:
        for doc in yaml.safe_load_all(open(path)):
            if not doc:
                continue
            checked += 1
            name = f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            try:
                if key in schemas:
                    jsonschema.validate(doc, schemas[key])
                else:
                    kubernetes_validate.validate(doc, version, strict=True)
                print(f"ok    {name}")
            except Exception as e:  # noqa: BLE001 - every failure is reported the same way
                failures += 1
                msg = getattr(e, "message", str(e))
                print(f"FAIL  {name}: {msg}")
    print(f"{checked} objects, {failures} invalid")
    sys.exit(1 if failures or not checked else 0)


if __name__ == "__main__":
    main()
