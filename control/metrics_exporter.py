"""metrics_exporter: the node's Prometheus endpoint, `http://<address>:<metrics_port>/metrics`
(node.json's `metrics_port`; Redis Enterprise uses 8070), served by prometheus-client; https
(as RE) when node.json names a certificate and its key (`metrics_tls_cert`,
`metrics_tls_key`, PEM files), with the cluster's control-plane TLS policy
(min_control_TLS_version, control_cipher_suites; followed as the REST API's HTTPS follows it,
control/tls.py's LiveContext). The heartbeat carries the URL, so `dmc status --json` shows it.

Every scrape reads fresh figures (control/node_figures.py: the node's dmcproxy endpoints over
their stats socket, the INFO of the node's shards, the machine), each source with a deadline, in
a custom Collector: nothing is computed on the data path per request. Rates (`*_req`, bytes,
evictions) are over the span since the previous reading (at least a second; the first scrape
after a start measures from the service's start).

Names, meanings and units are RE's v1 metrics: `bdb_*` (rates in ops/s and bytes/s, latencies
in seconds, memory in bytes), `listener_*` per endpoint, `node_*`, and per shard `redis_*`, with
the labels `cluster`, `bdb`, `node`, `shard`, `role`, `listener`. Exact counts are also
exported v2-style as counters (`endpoint_read_requests_total`, ...) with latency histograms
(`endpoint_read_requests_latency_histogram`, in seconds) when the data path counts them.

Each node exports only what it owns: its own proxy's part of every database and its own shards,
so each figure is counted once in the cluster and a database's figure is the sum over the nodes
(`sum by (bdb) (bdb_total_req)`; an average latency is `sum(listener_acc_latency) /
sum(endpoint_total_responses)`). `bdb_memory_limit` and `bdb_up` are exported once, by the node
of the database's first master shard.
"""

from __future__ import annotations

import logging

import trio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from control import ccs, tls
from control.node import NodeConfig, service_command
from control.node_figures import CLASSES, NodeReader, Reading, figures, finish

log = logging.getLogger("metrics_exporter")

SCRAPE_DEADLINE = 3.0       # a scrape answers within this, with what answered
MIN_SPAN = 1.0              # rates are measured over at least this many seconds

BDB_GAUGES = {      # RE v1 name -> (statistic, description)
    "bdb_total_req": ("total_req", "Rate of all requests on the database (ops/sec)"),
    "bdb_read_req": ("read_req", "Rate of read requests on the database (ops/sec)"),
    "bdb_write_req": ("write_req", "Rate of write requests on the database (ops/sec)"),
    "bdb_other_req": ("other_req", "Rate of other requests on the database (ops/sec)"),
    "bdb_total_res": ("total_res", "Rate of all responses on the database (ops/sec)"),
    "bdb_avg_latency": ("avg_latency", "Average latency of operations (seconds)"),
    "bdb_avg_read_latency": ("avg_read_latency", "Average latency of reads (seconds)"),
    "bdb_avg_write_latency": ("avg_write_latency", "Average latency of writes (seconds)"),
    "bdb_conns": ("conns", "Number of client connections to the database"),
    "bdb_ingress_bytes": ("ingress_bytes", "Rate of incoming network traffic (bytes/sec)"),
    "bdb_egress_bytes": ("egress_bytes", "Rate of outgoing network traffic (bytes/sec)"),
    "bdb_total_connections_received": ("total_connections_received",
                                       "Rate of new client connections (connections/sec)"),
    "bdb_instantaneous_ops_per_sec": ("instantaneous_ops_per_sec",
                                      "Request rate handled by the database's shards (ops/sec)"),
    "bdb_used_memory": ("used_memory", "Memory used by the database (bytes)"),
    "bdb_no_of_keys": ("no_of_keys", "Number of keys in the database"),
    "bdb_evicted_objects": ("evicted_objects", "Rate of key evictions (evictions/sec)"),
    "bdb_expired_objects": ("expired_objects", "Rate of keys expired (expirations/sec)"),
    "bdb_monitor_sessions_count": ("monitors", "Clients connected in monitor mode"),
    "bdb_pubsub_channels": ("pubsub_channels", "Pub/sub channels with subscribed clients"),
    "bdb_pubsub_patterns": ("pubsub_patterns", "Pub/sub patterns with subscribed clients"),
}
LISTENER_GAUGES = {
    "listener_conns": ("conns", "Number of clients connected to the endpoint"),
    "listener_total_req": ("total_req", "Request rate handled by the endpoint (ops/sec)"),
    "listener_read_req": ("read_req", "Rate of read requests on the endpoint (ops/sec)"),
    "listener_write_req": ("write_req", "Rate of write requests on the endpoint (ops/sec)"),
    "listener_other_req": ("other_req", "Rate of other requests on the endpoint (ops/sec)"),
    "listener_total_res": ("total_res", "Rate of all responses on the endpoint (ops/sec)"),
    "listener_read_res": ("read_res", "Rate of read responses on the endpoint (ops/sec)"),
    "listener_write_res": ("write_res", "Rate of write responses on the endpoint (ops/sec)"),
    "listener_other_res": ("other_res", "Rate of other responses on the endpoint (ops/sec)"),
    "listener_ingress_bytes": ("ingress_bytes", "Rate of incoming traffic (bytes/sec)"),
    "listener_egress_bytes": ("egress_bytes", "Rate of outgoing traffic (bytes/sec)"),
    "listener_total_connections_received": ("total_connections_received",
                                            "Rate of new client connections (connections/sec)"),
    "listener_monitor_sessions_count": ("monitors", "Clients in monitor mode on the endpoint"),
}
# cumulative, from the raw counters of the reading (v1 listener_acc_*, v2 endpoint_*)
LISTENER_COUNTERS = {
    "listener_acc_latency": ("latency_us", 1e-6, "Sum of the latencies of all commands "
                             "(seconds)"),
    "listener_acc_read_latency": ("read_latency_us", 1e-6, "Sum of the read latencies (s)"),
    "listener_acc_write_latency": ("write_latency_us", 1e-6, "Sum of the write latencies (s)"),
    "listener_acc_other_latency": ("other_latency_us", 1e-6, "Sum of the other latencies (s)"),
    "listener_max_connections_exceeded": ("rejected_connections", 1,
                                          "Connections refused for max clients"),
    "endpoint_read_requests": ("read_req", 1, "Read requests received"),
    "endpoint_write_requests": ("write_req", 1, "Write requests received"),
    "endpoint_other_requests": ("other_req", 1, "Other requests received"),
    "endpoint_total_requests": ("total_req", 1, "Requests received"),
    "endpoint_read_responses": ("read_res", 1, "Read responses sent"),
    "endpoint_write_responses": ("write_res", 1, "Write responses sent"),
    "endpoint_other_responses": ("other_res", 1, "Other responses sent"),
    "endpoint_total_responses": ("total_res", 1, "Responses sent"),
    "endpoint_client_connections": ("total_connections_received", 1,
                                    "Client connections accepted"),
    "endpoint_ingress": ("ingress_bytes", 1, "Bytes received from clients"),
    "endpoint_egress": ("egress_bytes", 1, "Bytes sent to clients"),
    "endpoint_errors": ("errors", 1, "Error replies sent"),
    "endpoint_auth_failures": ("auth_failures", 1, "Failed AUTH attempts"),
}
NODE_GAUGES = {
    "node_cpu_user": ("cpu_user", "CPU time portion spent in user space (0-1)"),
    "node_cpu_system": ("cpu_system", "CPU time portion spent in the kernel (0-1)"),
    "node_cpu_idle": ("cpu_idle", "CPU idle time portion (0-1)"),
    "node_free_memory": ("free_memory", "Free memory in the node (bytes)"),
    "node_available_memory": ("available_memory", "Free memory less what the node's shards "
                              "may still use up to their limits (bytes)"),
    "node_conns": ("conns", "Number of clients connected to endpoints on the node"),
    "node_total_req": ("total_req", "Request rate handled by endpoints on the node (ops/sec)"),
    "node_ingress_bytes": ("ingress_bytes", "Rate of incoming traffic to the node (bytes/sec)"),
    "node_egress_bytes": ("egress_bytes", "Rate of outgoing traffic from the node (bytes/sec)"),
    "node_persistent_storage_free": ("persistent_storage_free", "Free disk space (bytes)"),
    "node_persistent_storage_avail": ("persistent_storage_avail",
                                      "Disk space available to the node's processes (bytes)"),
}
SHARD_GAUGES = {
    "redis_used_memory": ("used_memory", "Memory used by the shard (bytes)"),
    "redis_connected_clients": ("connected_clients", "Client connections to the shard"),
    "redis_master_link_status": ("master_link_status", "Replica link to its master "
                                 "(1 up, 2 down, 3 none)"),
    "redis_master_repl_offset": ("master_repl_offset", "Bytes sent to replicas by the shard"),
    "redis_db0_keys": ("db0_keys", "Total key count"),
    "redis_evicted_keys": ("evicted_keys", "Keys evicted since the shard started"),
    "redis_expired_keys": ("expired_keys", "Keys expired since the shard started"),
    "redis_total_commands_processed": ("total_commands_processed",
                                       "Commands processed since the shard started"),
    "redis_maxmemory": ("maxmemory", "The shard's memory limit (bytes)"),
}


def metric_families(config: NodeConfig, before: Reading, now: Reading) -> list:
    """Every metric of the node, from two readings (pure: tested without a server)."""
    node, cluster = str(config.uid), config.cluster_fqdn
    stats = figures(before, now)
    out = []

    def gauges(table, labels, rows):
        for name, (stat, doc) in table.items():
            family = GaugeMetricFamily(name, doc, labels=labels)
            for values, figures_of in rows:
                if figures_of.get(stat) is not None:
                    family.add_metric(values, float(figures_of[stat]))
            out.append(family)

    bdb_rows = [([cluster, str(u), node], finish(part)) for u, part in
                sorted(stats["bdbs"].items())]
    gauges(BDB_GAUGES, ["cluster", "bdb", "node"], bdb_rows)
    limit = GaugeMetricFamily("bdb_memory_limit", "Configured RAM limit for the database "
                              "(bytes)", labels=["cluster", "bdb"])
    up = GaugeMetricFamily("bdb_up", "Database is up and running (every master shard "
                           "answers)", labels=["cluster", "bdb"])
    for uid, bdb in sorted(now.bdbs.items()):
        masters = sorted(u for u, s in now.shard_records.items()
                         if s.bdb_uid == uid and s.role == "master")
        if not masters or now.shard_records[masters[0]].node_uid != config.uid:
            continue
        if bdb.memory_size:
            limit.add_metric([cluster, str(uid)], float(bdb.memory_size))
        up.add_metric([cluster, str(uid)], float(bdb.status == "active"))
    out += [limit, up]

    listener_rows = [([cluster, str(u), node, f"{u}:1"], finish(part))
                     for u, part in sorted(stats["bdbs"].items()) if u in now.proxies]
    labels = ["cluster", "bdb", "node", "listener"]
    gauges(LISTENER_GAUGES, labels, listener_rows)
    for name, (counter, scale, doc) in LISTENER_COUNTERS.items():
        family = CounterMetricFamily(name, doc, labels=labels)
        for uid, raw in sorted(now.proxies.items()):
            if counter in raw:
                family.add_metric([cluster, str(uid), node, f"{uid}:1"], raw[counter] * scale)
        out.append(family)
    for cls in CLASSES:
        family = HistogramMetricFamily(f"endpoint_{cls}_requests_latency_histogram",
                                       f"Latency of {cls} requests (seconds)", labels=labels)
        for uid, raw in sorted(now.proxies.items()):
            counts = (raw.get("latency_histogram") or {}).get(cls)
            bounds = raw.get("latency_buckets_us")
            if not counts or not bounds or len(counts) != len(bounds) + 1:
                continue
            buckets, total = [], 0
            for bound, count in zip([*(b / 1e6 for b in bounds), float("inf")], counts):
                total += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
            family.add_metric([cluster, str(uid), node, f"{uid}:1"], buckets,
                              raw.get(f"{cls}_latency_us", 0) / 1e6)
        out.append(family)

    gauges(NODE_GAUGES, ["cluster", "node"], [([cluster, node], stats["node"])])
    node_up = GaugeMetricFamily("node_up", "Node is part of the cluster and connected",
                                labels=["cluster", "node"])
    node_up.add_metric([cluster, node], float(bool(now.node.get("member"))))
    out.append(node_up)

    shard_labels = ["cluster", "bdb", "node", "shard", "role"]
    shard_rows = []
    for uid, s in sorted(now.shards.items()):
        record = now.shard_records.get(uid)
        shard_rows.append(([cluster, str(now.bdb_of(uid)), node, str(uid),
                            s.get("role") or (record.role if record else "")], s))
    gauges(SHARD_GAUGES, shard_labels, shard_rows)
    redis_up = GaugeMetricFamily("redis_up", "Shard is up and running (answers INFO)",
                                 labels=shard_labels)
    for values, s in shard_rows:
        redis_up.add_metric(values, float(s.get("up", 0)))
    out.append(redis_up)
    return out


class NodeCollector:
    """prometheus-client's custom collector: every collect() (one per scrape, on the HTTP
    server's thread) reads fresh figures in the service's Trio loop."""

    def __init__(self, exporter: MetricsExporter):
        self.exporter = exporter

    def collect(self):
        try:
            before, now = trio.from_thread.run(self.exporter.readings,
                                               trio_token=self.exporter.token)
        except Exception as exc:        # noqa: BLE001 - a scrape that fails is empty, logged
            log.warning("scrape without figures: %s", exc)
            return []
        return metric_families(self.exporter.config, before, now)


class MetricsExporter:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.session = ccs.Session.of_node(config)
        self.reader = NodeReader(config, self.session)
        self.baseline: Reading | None = None
        self.lock = trio.Lock()
        self.token = None

    async def readings(self) -> tuple[Reading, Reading]:
        """(the baseline, a fresh reading); the fresh one becomes the baseline once it is
        MIN_SPAN newer, so rates are over at least that span."""
        async with self.lock:
            with trio.fail_after(SCRAPE_DEADLINE):
                now = await self.reader.read()
            before = self.baseline or now
            if self.baseline is None or now.time - self.baseline.time >= MIN_SPAN:
                self.baseline = now
            return before, now

    async def run(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(NodeCollector(self))
        files = {}
        if self.config.metrics_tls_cert and self.config.metrics_tls_key:
            files = {"certfile": self.config.metrics_tls_cert,
                     "keyfile": self.config.metrics_tls_key}
        server, _thread = start_http_server(self.config.metrics_port, self.config.address,
                                            registry=registry, **files)
        log.info("node %d: metrics on %s", self.config.uid, self.config.metrics_url)
        try:
            async with trio.open_nursery() as nursery:
                if files:
                    # prometheus-client's context, made once: kept following the files and
                    # the control-plane TLS policy as the REST API's is
                    live = tls.LiveContext(server.socket.context, self.config.dir,
                                           files["certfile"], files["keyfile"])
                    nursery.start_soon(tls.keep_following, live.refresh, log, "metrics")
                await self.readings()
                await trio.sleep_forever()
        finally:
            server.shutdown()


main = service_command("metrics_exporter", MetricsExporter)

if __name__ == "__main__":
    main()
