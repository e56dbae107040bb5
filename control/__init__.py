"""The control plane: the services of a node, each a program under the node's supervisord
(its configuration is written by control/node.py), and the CCS keys each one writes
(control/CCS.md has the values; only the master node's copy is writable).

    ccs            the node's copy of the cluster configuration store (redis-server)
    cluster_wd     membership and election (control/election.py): cluster:master,
                   cluster:nodes, cluster:nodes_version; run/state.json on disk
    heartbeatd     node_heartbeat:<uid> every second; forwards ccs_forward_port to the master
    redis_mgr      the node's shard processes, as `shards` asks: shard_state
    node_wd        PINGs the node's shards: shard_health; on the master, the HA policy:
                   shard_failover actions, replica moves and restart_after in `shards`
    dmcproxy       every database's endpoint on the node (control/node_proxy.py, dmc/):
                   proxy_ack:<bdb>; the endpoints' stats on run/dmcproxy.sock, for the node's
                   own services (control/proxy_stats.py reads them)
    cnm_exec       on the master, runs `actions` with control/machines/: bdbs, shards,
                   bdb_map:<bdb>, actions, bdb_lock:<bdb> (released), cluster:counters
    cnm_http       the REST API: a new bdbs record, actions with their bdb_lock:<bdb>,
                   cluster:rest, cluster:counters
    job_scheduler  on the master, scheduled backups: actions (bdb_backup), jobs:bdb_backup

Shared by them: control/schema.py (keys, records, the requests users make), control/ccs.py (the
store's encoding, change notices and a service's session), control/cluster_view.py (nodes up,
load, pairs, failed shards, placement), control/redis_client.py (Redis on Trio).
The operator's `dmc` command is control/cli.py (with control/db_cli.py and dmc/cli.py's `local`).
"""
