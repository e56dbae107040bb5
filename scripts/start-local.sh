#!/usr/bin/env bash
# Starts the local default database: 3 redis-server shards and a dmcproxy on 127.0.0.1, in the
# background, and prints the redis-cli line to use. `dmc local stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec dmc local start "$@"
