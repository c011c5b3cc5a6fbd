#!/usr/bin/env bash
# Render every overlay under ROOT (default: this folder) with `kubectl kustomize`
# and validate every object offline against the Kubernetes schemas of the
# oldest and newest versions supported, rejecting unknown fields. Custom
# resources (CloudNativePG's Cluster, say), which kubernetes-validate would pass
# unchecked, are validated by check_crds.py against the CRDs vendored in
# ROOT/crds instead; an overlay without any is validated exactly as before.
# Usage: k8s/validate.sh [ROOT] (kubectl and kubernetes-validate on PATH).
set -euo pipefail
ROOT="${1:-$(dirname "$0")}"
VERSIONS="${K8S_VERSIONS:-1.29.0 1.37.0}"  # native sidecars need 1.29
CHECK_CRDS="$(dirname "$0")/check_crds.py"
# kubernetes-validate's own interpreter has PyYAML and jsonschema (its dependencies).
shebang="$(head -n 1 "$(command -v kubernetes-validate)" 2>/dev/null || true)"
case "$shebang" in '#!'*python*) default_python="${shebang#\#!}" ;; *) default_python=python3 ;; esac
PYTHON="${PYTHON:-$default_python}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
for overlay in "$ROOT"/overlays/*/; do
  name="$(basename "$overlay")"
  if ! kubectl kustomize "$overlay" > "$out/$name.yaml" 2> "$out/$name.err"; then
    echo "k8s-validate: $name does not render:"; grep -v '^# Warning' "$out/$name.err" || true
    status=1; continue
  fi
  if grep -q . "$out/$name.err"; then  # deprecations and the like: fix them, do not ship them
    echo "k8s-validate: $name renders with warnings:"; cat "$out/$name.err"; status=1
  fi
  # The built-in kinds go on to kubernetes-validate (in $name.core.yaml, the same
  # bytes when there is no custom resource); the others are checked here.
  # shellcheck disable=SC2086  # PYTHON may be "/usr/bin/env python3"
  if ! $PYTHON "$CHECK_CRDS" --label "$name" "$ROOT/crds" "$out/$name.yaml" "$out/$name.core.yaml"; then
    status=1
  fi
  for version in $VERSIONS; do
    if kubernetes-validate --strict --quiet --no-warn -k "$version" "$out/$name.core.yaml"; then
      echo "k8s-validate: $name is valid for Kubernetes $version"
    else
      echo "k8s-validate: $name is NOT valid for Kubernetes $version"; status=1
    fi
  done
done
exit $status
