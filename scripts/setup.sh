#!/usr/bin/env bash
# Installs what dmc needs on a fresh Debian machine (run as root): redis-server, redis-tools and
# libssl-dev (and iproute2 for the tests) from apt when absent, then the dmc package itself, editable,
# with its compiled extension.
# Usage: scripts/setup.sh [pip extras, e.g. "test"]
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
# the compiled data path links OpenSSL for client TLS (dmc/fastpath/tls.pxi)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
# `ip netns` puts the nodes of the partition tests in network namespaces of their own
if [ "${1:-}" = test ] && ! command -v ip >/dev/null 2>&1; then missing+=(iproute2); fi
# the discovery tests compare sentinel_service with a real redis-sentinel, and ask pdns_server with dig
if [ "${1:-}" = test ] && ! command -v redis-sentinel >/dev/null 2>&1; then missing+=(redis-sentinel); fi
if [ "${1:-}" = test ] && ! command -v dig >/dev/null 2>&1; then missing+=(bind9-dnsutils); fi
# the web UI's tests drive Debian's headless Chromium through its chromedriver (selenium)
if [ "${1:-}" = test ] && ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi
if [ "${1:-}" = test ] && ! command -v chromedriver >/dev/null 2>&1; then missing+=(chromium-driver); fi
if ((${#missing[@]})); then
  echo "installing ${missing[*]} from apt" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

spec="."
[ -n "${1:-}" ] && spec=".[$1]"
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e "$spec"
# The editable install builds dmc/_fastpath.*.so next to its source; fail loudly if it did not.
python3 -c "import dmc._fastpath" || { echo "dmc._fastpath did not build" >&2; exit 1; }
