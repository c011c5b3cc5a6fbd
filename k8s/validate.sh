#!/usr/bin/env bash
# Render every overlay under ROOT (default: this folder) with `kubectl kustomize`
# and validate every object offline against the Kubernetes schemas of the
# oldest and newest versions supported, rejecting unknown fields.
# Usage: k8s/validate.sh [ROOT] (kubectl and kubernetes-validate on PATH).
set -euo pipefail
ROOT="${1:-$(dirname "$0")}"
VERSIONS="${K8S_VERSIONS:-1.29.0 1.37.0}"  # native sidecars need 1.29
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
  for version in $VERSIONS; do
    if kubernetes-validate --strict --quiet --no-warn -k "$version" "$out/$name.yaml"; then
      echo "k8s-validate: $name is valid for Kubernetes $version"
    else
      echo "k8s-validate: $name is NOT valid for Kubernetes $version"; status=1
    fi
  done
done
exit $status
