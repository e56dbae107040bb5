"""The control plane: the services of a node, each a program under the node's supervisord
(its configuration is written by control/node.py, SERVICE_MODULES), and the CCS keys each one
writes (control/CCS.md has the values; only the master node's copy is writable).

    ccs               the node's copy of the cluster configuration store (redis-server)
    cluster_wd        membership and election (control/election.py): cluster:master,
                      cluster:nodes, cluster:nodes_version, cluster:fqdn (the first master);
                      run/state.json, run/removed.json on disk
    heartbeatd        node_heartbeat:<uid> every second; forwards ccs_forward_port to the master
    redis_mgr         the node's shard processes, as `shards` asks: shard_state
    node_wd           PINGs the node's shards: shard_health; the node's disk and own CCS copy:
                      node_health; on the master, the HA policy:
                      shard_failover actions (with their bdb_lock:<bdb>), replica moves and
                      restart_after in `shards`
    dmcproxy          every database's endpoint on the node (control/node_proxy.py, dmc/):
                      proxy_ack:<bdb>, endpoint_status:<bdb>; the endpoints' stats on
                      run/dmcproxy.sock, for the node's own services (control/proxy_stats.py
                      reads them)
    cnm_exec          on the master, runs `actions` with control/machines/: bdbs, shards,
                      bdb_map:<bdb>, actions, bdb_lock:<bdb>, cluster:counters; a deleted
                      database's proxy_ack:<bdb>, shard_state and shard_health fields
    cnm_http          the REST API: a new bdbs record, actions with their bdb_lock:<bdb>,
                      cluster:rest, cluster:counters, cluster:policy (PUT /v1/cluster),
                      cnm_http:config_lock (while it checks); users, roles, redis_acls,
                      login_failures:<name>, login_lockout:<name> (control/rest_access.py),
                      cluster:certificates; renews the node's certificates
                      (control/certificates.py)
    job_scheduler     on the master, scheduled backups: actions (bdb_backup), jobs:bdb_backup
    sentinel_service  the Sentinel protocol for clients (control/discovery.py): writes nothing
    pdns_server       the cluster's DNS zone (control/discovery.py): on the master, the
                      zone's serial, cluster:dns_zone
    metrics_exporter  Prometheus /metrics of the node's own figures (control/node_figures.py,
                      control/proxy_stats.py); writes nothing
    stats_archiver    the node's statistics history: stats:<interval>:<series> (stats_store.py)
    alert_mgr         on the master, alerts and the event log (control/alerts.py): alerts, logs,
                      logs:actions; delivers alert changes by webhook and e-mail
                      (control/alert_delivery.py)
    resource_mgr      on the master, memory: alerts (bdb_memory_limit), actions (shard_migrate)
    cm_server         the web UI (control/ui/), a client of the node's cnm_http: writes nothing

`dmc node add|remove` (control/local_cluster.py) writes node_add and node_remove actions.

Shared by them: control/schema.py (keys, the typed
records Bdb, Shard, Action and BdbMap, the requests users make), control/ccs.py (the
store's encoding, change notices and a service's session), control/cluster_view.py (nodes up,
load, pairs, failed shards, placement), control/redis_client.py (Redis on Trio).
The REST API's statistics, alerts and logs are control/rest_stats.py; its users, roles and
ACLs control/rest_access.py (records and role matrix: control/access.py). The cluster CA, the
nodes' certificates and the control plane's mutual TLS are control/certificates.py.
The operator's `dmc` command is control/cli.py (with control/db_cli.py, control/obs_cli.py,
control/access_cli.py and
dmc/cli.py's `local`).
"""
