#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests: built-in kinds against the Kubernetes JSON
schemas shipped by kubernetes-validate (strict: unknown fields are errors), CRD kinds
against the local schemas in deploy/kubernetes/schemas/. A kind with no schema at all is
an error, not a warning (kubernetes-validate's CLI only warns).

usage: validate-k8s.py --k8s-version 1.28.0 [--k8s-version ...] FILE...
"""
import argparse
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate.utils as kv
import yaml

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "schemas"
# kind -> local schema file, for kinds defined by CRDs.
LOCAL = {("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring-v1.json"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-version", action="append", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    failures = 0
    for f in args.files:
        docs = [d for d in yaml.safe_load_all(open(f)) if d]
        if not docs:
            print(f"ERROR {f}: no objects rendered")
            failures += 1
        for d in docs:
            name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
            local = LOCAL.get((d.get("apiVersion"), d.get("kind")))
            try:
                if local:
                    schema = json.loads((SCHEMAS / local).read_text())
                    jsonschema.Draft202012Validator(schema).validate(d)
                    print(f"ok   {f}: {name} (local schema {local})")
                    continue
                for v in args.k8s_version:
                    kv.validate(d, v, strict=True)
                print(f"ok   {f}: {name} (Kubernetes {', '.join(args.k8s_version)}, strict)")
            except jsonschema.ValidationError as e:
                path = ".".join(str(p) for p in e.absolute_path)
                print(f"ERROR {f}: {name}: {path}: {e.message}")
                failures += 1
            except kv.SchemaNotFoundError as e:
                print(f"ERROR {f}: {name}: no schema: {e.message}")
                failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
