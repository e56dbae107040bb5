#!/usr/bin/env bash
# Installs what the tests need and runs them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
exec python3 -m pytest "$@"
