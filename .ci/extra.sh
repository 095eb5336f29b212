#!/usr/bin/env bash
# Extra CI checks (called by .ci/run): the forward-auth tests against the real
# nginx and caddy from the distribution's packages. Idempotent: installs only
# what is missing. CI runs as root; elsewhere it uses sudo when it can.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
have nginx || missing+=(nginx-light)
have caddy || missing+=(caddy)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages start system services; the tests run their own instances.
  if command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl disable --now nginx caddy >/dev/null 2>&1 || true
  fi
fi
nginx -v 2>&1 || /usr/sbin/nginx -v
caddy version

SCOPEGATE_REQUIRE_PROXIES=1 cargo test --locked --test forward_auth
