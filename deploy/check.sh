#!/usr/bin/env bash
# Validates every Kubernetes manifest under deploy/kubernetes against the
# Kubernetes OpenAPI (JSON) schemas, strictly (unknown fields are errors),
# for the oldest and the newest Kubernetes version we support.
#
# Tool: kubernetes-validate from PyPI (the schemas ship inside the package,
# so after the one-time install nothing is fetched). It is installed into a
# private virtualenv (default target/deploy-tools, override with
# $SCOPEGATE_DEPLOY_TOOLS); re-running reuses it.
#
# Prints one line per file; exits 1 if any manifest is invalid.
#
#   deploy/check.sh                      # all manifests
#   K8S_VERSIONS=1.33.0 deploy/check.sh  # other versions (space-separated)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tool_version="1.37.0"
# 1.30: lifecycle.preStop.sleep (used in the Deployments) is on by default
# from 1.30; 1.37: the newest schema kubernetes-validate $tool_version bundles.
read -r -a versions <<<"${K8S_VERSIONS:-1.30.0 1.37.0}"
tools="${SCOPEGATE_DEPLOY_TOOLS:-$root/target/deploy-tools}"
kv="$tools/bin/kubernetes-validate"

install_tool() {
  if [[ -x "$kv" ]] && [[ "$("$kv" --version 2>/dev/null)" == "$tool_version" ]]; then
    return 0
  fi
  echo "check.sh: installing kubernetes-validate==$tool_version into $tools" >&2
  rm -rf "$tools"
  python3 -m venv "$tools" >&2
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$tool_version" >&2
  [[ "$("$kv" --version)" == "$tool_version" ]]
}
install_tool

# Every YAML file under deploy/kubernetes except Kustomization files, which
# are kustomize input, not Kubernetes objects.
mapfile -t files < <(find deploy/kubernetes -type f \( -name '*.yaml' -o -name '*.yml' \) | LC_ALL=C sort)
if [[ ${#files[@]} -eq 0 ]]; then
  echo "check.sh: no manifests found under deploy/kubernetes" >&2
  exit 1
fi

failed=0
checked=0
for f in "${files[@]}"; do
  if [[ "$(basename "$f")" == kustomization.y*ml ]] || grep -qE '^kind:[[:space:]]*Kustomization[[:space:]]*$' "$f"; then
    echo "skip $f (kustomization, not a Kubernetes object)"
    continue
  fi
  out=""
  ok=1
  for v in "${versions[@]}"; do
    if ! o="$("$kv" --strict --quiet -k "$v" "$f" 2>&1)"; then
      ok=0
      out+="$o"$'\n'
    elif [[ -n "$o" ]]; then
      # --quiet prints only warnings and failures: treat a warning as a failure.
      ok=0
      out+="$o"$'\n'
    fi
  done
  checked=$((checked + 1))
  if [[ $ok -eq 1 ]]; then
    echo "ok   $f (kubernetes ${versions[*]}, strict)"
  else
    failed=$((failed + 1))
    echo "FAIL $f"
    printf '%s' "$out" | sed 's/^/     /'
  fi
done

echo "check.sh: $checked manifest file(s) checked with kubernetes-validate $tool_version, $failed invalid"
[[ $failed -eq 0 ]]
