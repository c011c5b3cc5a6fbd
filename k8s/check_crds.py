"""Validate the custom resources of a rendered overlay against vendored CRD schemas.

kubernetes-validate knows the built-in kinds only (and passes any other kind
silently), so ``validate.sh`` hands each rendered overlay to this script first:

    check_crds.py --label NAME CRD_DIR RENDERED CORE_OUT

Objects of a built-in API group (``v1``, ``apps/v1``, ``*.k8s.io/...``) are written
to CORE_OUT for kubernetes-validate (the file is copied byte for byte when there is
no other kind). Every other object is validated against the ``openAPIV3Schema`` of
its CRD in CRD_DIR, rejecting unknown fields as the API server's strict field
validation does; an object whose CRD is not vendored fails. CEL rules
(``x-kubernetes-validations``) are not evaluated: only the API server can.
Without the ``jsonschema`` package the objects are checked for apiVersion, kind,
metadata.name and the required fields of ``spec`` only, and a note says so.
Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Schema = dict[str, Any]
# group, version, kind -> (schema, CRD file name)
Crds = dict[tuple[str, str, str], tuple[Schema, str]]
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def is_custom(api_version: str) -> bool:
    """Whether ``api_version`` is outside the built-in groups ("", apps, batch, policy,
    autoscaling and every ``*.k8s.io``)."""
    group = api_version.rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def load_crds(folder: Path) -> Crds:
    crds: Crds = {}
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", False):
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    crds[key] = (version["schema"]["openAPIV3Schema"], path.name)
    return crds


def strict(schema: Any) -> Any:
    """``schema`` as JSON Schema with unknown fields refused and ``nullable`` honoured."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if "properties" in out and not schema.get("x-kubernetes-preserve-unknown-fields"):
        if schema.get("x-kubernetes-embedded-resource"):  # apiVersion, kind, metadata implied
            implied = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}}
            out["properties"] = {**implied, "metadata": {"type": "object"}, **out["properties"]}
        out.setdefault("additionalProperties", False)
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        out["type"] = [schema["type"], "null"]
    return out


def schema_errors(obj: dict[str, Any], schema: Schema) -> Iterator[str]:
    import jsonschema  # type: ignore[import-untyped]  # main falls back when it is missing

    validator = jsonschema.Draft4Validator(strict(schema))
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
        where = ".".join(str(p) for p in error.path) or "(root)"
        yield f"{where}: {error.message}"


def required_errors(obj: dict[str, Any], schema: Schema) -> Iterator[str]:
    """The fallback: the required fields of the object and of its spec."""
    for key in schema.get("required", []):
        if key not in obj:
            yield f"(root): {key!r} is a required property"
    spec_schema = schema.get("properties", {}).get("spec", {})
    spec = obj.get("spec")
    if isinstance(spec, dict):
        for key in spec_schema.get("required", []):
            if key not in spec:
                yield f"spec: {key!r} is a required property"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="", help="the overlay's name, for the messages")
    parser.add_argument("crds", type=Path)
    parser.add_argument("rendered", type=Path)
    parser.add_argument("core_out", type=Path)
    args = parser.parse_args(argv)
    prefix = f"k8s-validate: {args.label}" if args.label else "k8s-validate:"

    documents = [d for d in yaml.safe_load_all(args.rendered.read_text(encoding="utf-8")) if d]
    custom = [d for d in documents if is_custom(str(d.get("apiVersion", "")))]
    if not custom:
        shutil.copyfile(args.rendered, args.core_out)
        return 0
    core = [d for d in documents if not is_custom(str(d.get("apiVersion", "")))]
    args.core_out.write_text(yaml.safe_dump_all(core, sort_keys=False), encoding="utf-8")

    try:
        import jsonschema  # noqa: F401

        check, how = schema_errors, "valid against the vendored CRD schemas"
    except ImportError:
        check, how = required_errors, "checked for apiVersion, kind and required fields only"
        print(f"{prefix}: NOTE: jsonschema is not installed, so custom resources are {how}")

    crds = load_crds(args.crds)
    failed = False
    for obj in custom:
        api_version, kind = str(obj["apiVersion"]), str(obj.get("kind", ""))
        name = str((obj.get("metadata") or {}).get("name", ""))
        group, _, version = api_version.rpartition("/")
        label = f"{kind}/{name or '?'} ({api_version})"
        found = crds.get((group, version, kind))
        problems: list[str]
        source = ""
        if found is None:
            problems = [f"no CRD for {api_version} {kind} under {args.crds}"]
        else:
            schema, source = found
            problems = list(check(obj, schema))
            if not DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253:
                problems.insert(0, f"metadata.name: {name!r} is not a DNS subdomain")
        if problems:
            failed = True
            for problem in problems:
                print(f"{prefix}: {label} is NOT valid: {problem}")
        else:
            print(f"{prefix}: {label} is {how} ({source})")
    if not failed:
        print(f"{prefix}: (CEL rules, x-kubernetes-validations, are left to the API server)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
