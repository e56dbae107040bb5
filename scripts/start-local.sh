#!/usr/bin/env bash
# Starts a 3-node cluster on this machine (127.0.0.1-3, each node with its own supervisord, in
# the background) with one database, `default` (2 shards, replication on, port 12000 unless
# DMC_DB_PORT says otherwise), and prints the redis-cli line to use. Run again, it starts the
# stopped cluster. `dmc cluster stop` stops it, `dmc cluster delete` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
home="${DMC_HOME:-$HOME/.dmc}/cluster"
if [ -f "$home/cluster.json" ]; then
    dmc cluster start
else
    dmc cluster create --nodes 3
fi
if ! dmc db show default >/dev/null 2>&1; then
    dmc db create default --shards 2 --replication --port "${DMC_DB_PORT:-12000}"
else
    dmc db show default
fi
python3 - "$home" <<'PY'
import json, sys
from pathlib import Path
from control.cm_server import ui_url
from control.node import NodeConfig
home = Path(sys.argv[1])
node = json.loads((home / "node-1" / "node.json").read_text())
if "cm_server" in node["services"]:     # a cluster made before the UI existed has none
    print(f"web UI:   {ui_url(NodeConfig.load(home / 'node-1'))} (user admin, password in "
          f"{home / 'admin.json'}; its certificate is signed by the cluster CA: dmc cluster ca)")
print(f"REST API: http://{node['address']}:{node['rest_port']}/v1/bdbs "
      f"(the same user); status: dmc status")
PY
