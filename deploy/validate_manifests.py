#!/usr/bin/env python3
"""Schema check of rendered Kubernetes manifests, offline (deploy/check.sh).

Built-in kinds are checked against the Kubernetes API's OpenAPI schemas shipped in the PyPI
package kubernetes-validate, in strict mode (an unknown field is an error), for each
--k8s-version. Custom resources need a schema of their own: deploy/schemas/<kind>-<group>-
<version>.json (the ServiceMonitor's is a strict subset of the Prometheus Operator CRD). An
object of a kind with no schema is an error.

  deploy/validate_manifests.py --k8s-version 1.29.0 --k8s-version 1.37.0 FILE.yaml...
"""

import argparse
import json
import sys
from pathlib import Path

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:
    sys.exit(f"[schema] missing Python package: {e.name} (pip install kubernetes-validate PyYAML)")

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def crd_schema(obj):
    group, _, version = obj["apiVersion"].rpartition("/")
    path = SCHEMAS / f"{obj['kind'].lower()}-{group.split('.')[0]}-{version}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k8s-version", action="append", required=True)
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args()
    failures = checked = 0
    for f in args.files:
        for obj in (d for d in yaml.safe_load_all(f.read_text()) if d):
            what = f"{f}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            custom = crd_schema(obj)
            if custom is not None:
                errors = sorted(jsonschema.Draft202012Validator(custom).iter_errors(obj), key=str)
                for e in errors:
                    print(f"FAIL {what} (custom schema): {'.'.join(map(str, e.path))}: {e.message}")
                failures += bool(errors)
                checked += 1
                continue
            for v in args.k8s_version:
                try:
                    kubernetes_validate.validate(obj, v, strict=True)
                except kubernetes_validate.SchemaNotFoundError:
                    print(f"FAIL {what}: no schema for {obj['apiVersion']} {obj['kind']} "
                          f"in Kubernetes {v} (add deploy/schemas/ for a custom resource)")
                    failures += 1
                except kubernetes_validate.ValidationError as e:
                    err = e.args[0] if e.args else e
                    path = ".".join(map(str, getattr(err, "path", [])))
                    print(f"FAIL {what} against Kubernetes {v}: {path}: {getattr(err, 'message', err)}")
                    failures += 1
                checked += 1
    print(f"[schema] {checked} checks of {len(args.files)} files, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
