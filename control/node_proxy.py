"""The node's dmcproxy: every database's endpoint on this node, served from the shard maps in CCS.

One process per node (the supervisord program `dmcproxy`), one dmc.endpoint.Endpoint per
database, each with its own thread and Cython event loop, listening on the node's address and the
database's port. A Trio task per database follows CCS:

- a new map version is installed between two turns of the endpoint's loop: connections stay
  open, requests already sent finish where they were sent, the next ones follow the new map;
- a map marked `paused` (cnm_exec's switch during failover, migration and resharding) pauses the
  endpoint: clients are still read, but nothing is sent to shards; once what was sent before is
  answered, the node acknowledges. The next, unpaused map is installed and the endpoint resumed
  in one step, so the held requests go to the new shards;
- every installed version is acknowledged in `proxy_ack:<bdb>` (field: this node), with the
  database record's version, so cnm_exec knows when every node serves a change;
- a changed password, client_query_buffer_limit, multi_slot_commands, port or proxy_threads is
  applied (a new port or thread count re-opens the endpoint: its clients reconnect);
- client TLS (`tls_mode` enabled; dmc/fastpath/tls.pxi): the endpoint serves the node's `proxy`
  certificate (control/certificates.py, signed by the cluster CA); with
  `enforce_client_authentication` enabled a client must present a certificate the cluster CA
  signed or one of the database's `authentication_ssl_client_certs` (together in
  `run/tls/<bdb>-clients.pem`). Switching TLS on or off applies to new connections (as in
  Redis Enterprise). A renewed certificate file (or a changed list) is loaded again at the next
  pass (one stat per file): new handshakes use it, connected clients keep theirs;
- data-path internode encryption (`data_internode_encryption`, DPINE): the endpoint reaches the
  shards on their tls-ports (the map's `tls_port`s) over TLS (dmc/fastpath/tls.pxi, the
  backends' side), verifying them against the cluster CA and showing the node's `cp`
  certificate; switching it on or off re-opens the endpoint (its clients reconnect);
- with `oss_cluster`, the OSS Cluster API's topology (dmc/cluster_api.py: the nodes of the
  map's master shards, each as its proxy, this node's address and the database's port) is set
  in the same call as each map, so CLUSTER SLOTS and -MOVED follow failovers and migrations;
- the clients of every endpoint share one input budget (node.json's proxy_input_budget, Redis's
  maxmemory-clients for input; dmc/fastpath/input_limit.pxi);
- a database that is gone (or being deleted) has its endpoint closed;
- an endpoint that cannot be opened because its port cannot be bound (a foreign process holds
  it) is reported in `endpoint_status:<bdb>` (field: this node) with the reason, and tried again
  every pass; the field is deleted once it is served.
- with replication, a request for a master shard that is down is held up to HOLD_MS
  (dmc/fastpath/hold.pxi) and sent to its successor when the failover's map is installed:
  clients see latency, not errors (without replication there is no successor: it fails at once,
  as before, while the shard is restarted).

Every endpoint's figures are served on `run/dmcproxy.sock` (control/proxy_stats.py) for the
node's metrics_exporter, stats_archiver and alert_mgr.

The data path never waits on the control plane: when CCS is away, endpoints keep serving with the
last map they had. The maps are also kept in `run/maps/<bdb>.json` (with the cluster's
data-path TLS policy they were served with), so a restarted dmcproxy serves its databases again
before CCS answers, as they were served.

The write fence: a node cut off from the cluster's majority may have its master shards failed
over on the other side, so its endpoints must not acknowledge writes any more. cluster_wd's
`run/lease.json` says until when the node knows it is on the majority's side (`majority_until`:
the last time a majority acknowledged the node as master, or the node heard its master, +
Timings.fence_window, 1.5 s); once that has passed (or the file says nothing), every endpoint
answers writes -READONLY (Proxy.fence; each endpoint is also given the lease's deadline,
Proxy.fence_until, so that its loop fences itself the moment it passes, without waiting for
this process to notice), until the node hears a master again. The majority fails a node's
shards over only once its heartbeat key has expired (3 s after its last heartbeat, written
every second: >= 2 s after a partition), so the fence is up before a replica on the other side
is promoted, while a late turn of a loaded machine (a CCS master that steps down for it) does
not stop the data path. Reads of data are refused too (-MASTERDOWN):
after a failover on the other side what the node's shards hold may be stale. When the lease
comes back the fence stays up until the endpoints serve the maps the master's CCS holds *now*
(read through the forwarded port, `_caught_up`): the node's last maps, and its own CCS copy
that is still catching up, may name a master that was failed over meanwhile -- writes sent there
would be acknowledged and lost, reads stale (a chaos run's partition showed both). A dmcproxy
that starts on the majority's side and cannot read the master's maps (CCS down on every node)
serves the maps it has, after one try: nothing fails shards over without CCS.
A request the fence refuses first waits up to FENCE_HOLD_MS, never sent, for the fence to be
down (dmc/fastpath/fence.pxi): the lease that lapses for a moment during an election (a master
that stepped down on a loaded machine) costs the node's clients latency, not errors; a node
that stays cut off answers the refusal then.

Local interfaces: `run/dmcproxy.sock` (NodeConfig.proxy_stats_sock), a unix socket for the
node's own services (metrics_exporter, stats_archiver, alert_mgr). A client sends one line,
`STATS\n`; the reply is one JSON object, `{"<bdb uid>": Endpoint.stats(), ...}` for every
endpoint served now (its "counters" as README's "Counters" describes them), then the socket is
closed. Anything else is answered `{"error": "..."}`. control/proxy_stats.py is its client.
"""

from __future__ import annotations

import json
import logging
import os
import time

import msgspec
import trio

from control import ccs, schema
from control.node import NodeConfig, atomic_write, service_command
from control.redis_client import RedisUnavailable, ReplyError
from control.sealing import reveal_text
from control.tls import ca_file, cert_file, files_stamp, key_file
from dmc import cluster_api
from dmc._fastpath import set_input_budget
from dmc.endpoint import Endpoint, EndpointStopped
from dmc.proxy import ProxyConfig, bind_failure, install_shard_map
from dmc.shard_map import ShardMap

log = logging.getLogger("dmcproxy")

FOLLOW_EVERY = 1.0          # a pass without change notices
FENCE_CHECK_EVERY = 0.1     # run/lease.json is read this often for the write fence
# s for reading the master's maps before the fence comes down (the fence stays up meanwhile: a
# longer time costs nothing, a shorter one fails again and again on a loaded machine)
CATCH_UP_TIMEOUT = 5.0
DRAIN_TIMEOUT = 5.0         # a paused endpoint's in-flight requests have this long to finish
STATS_REQUEST = b"STATS\n"
STATS_TIMEOUT = 5.0         # a local client has this long to ask; an endpoint, to answer
WAIT_SHARDS = 3.0           # a new endpoint waits this long for a shard to give its command table
HOLD_MS = 5000              # a request for a dead master shard waits this long for its failover
FENCE_HOLD_MS = 1500        # a request the fence refuses waits this long for it to be down (under
#   the chaos clients' 2 s reply timeout: a node that stays cut off answers its refusal)
# Test hook: with DMC_TEST_REFUSE_PAUSED_MAPS=<database name> in the services' environment, a
# paused map of that database is installed but never acknowledged, as by an endpoint whose
# requests never drain: the switch that published it fails (tests/test_dbaas.py: a reshard
# rolled back).
REFUSE_PAUSED_MAPS = os.environ.get("DMC_TEST_REFUSE_PAUSED_MAPS", "")


def relays_here(smap: ShardMap, address: str) -> bool:
    """Whether this node's proxy of a database relays the shards' keyspace notifications to
    its pub/sub shard (the map's first): one proxy of the database does, the one on that
    shard's node, so that a subscriber gets each notification once (a proxy on every node
    would publish it again each) and the relay follows the shard's failover."""
    return smap.shards[0][0] == address


class NodeProxy:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.session = ccs.Session.of_node(config)
        self.endpoints: dict[int, Endpoint] = {}
        self.applied: dict[int, dict] = {}     # bdb uid -> {version, paused, port, password}
        self.tasks: dict[int, trio.CancelScope] = {}
        self.maps_dir = config.run_dir / "maps"
        self.fenced = True          # until lease.json says the node is on the majority's side
        self.lost_majority = False  # the lease was out once while this process ran
        self.lease_until = 0.0      # the majority lease the endpoints enforce by themselves
        self.failures: dict[int, str] = {}     # bdb uid -> why its endpoint is not served
        self.installing: dict[int, trio.Lock] = {}
        # the cluster's min_data_TLS_version and ciphers, as read with the databases (before
        # CCS answers: as cached with the maps, _serve_cached)
        self.tls_policy = schema.data_tls_policy(schema.CLUSTER_POLICY_DEFAULTS)

    async def run(self) -> None:
        set_input_budget(self.config.proxy_input_budget)
        self.maps_dir.mkdir(parents=True, exist_ok=True)
        until = self._majority_until()
        if until is not None:   # on the majority's side now: the cached maps open unfenced
            self.fenced, self.lease_until = False, until
        await self._serve_cached()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard_majority)   # not after CCS answers (watch)
                await nursery.start(self.session.watch)
                await nursery.start(self._serve_stats)
                while True:
                    try:
                        for uid in await schema.bdbs(await self.session.local()):
                            if uid not in self.tasks:
                                self.tasks[uid] = trio.CancelScope()
                                nursery.start_soon(self._follow, uid)
                    except (RedisUnavailable, ReplyError) as exc:
                        log.debug("CCS away, serving the last maps: %s", exc)
                    await self._changed(FOLLOW_EVERY)
        finally:
            for endpoint in self.endpoints.values():
                endpoint.stop()

    async def _changed(self, timeout: float) -> None:
        event = self.session.changed
        with trio.move_on_after(timeout):
            if event is not None:
                await event.wait()
            else:
                await trio.sleep(timeout)

    def _majority_until(self) -> float | None:
        """Until when (time.monotonic()) the node knows it is on the majority's side, if now."""
        try:
            until = json.loads(self.config.lease_file.read_text()).get("majority_until")
        except (OSError, ValueError, AttributeError):
            return None
        if isinstance(until, (int, float)) and time.monotonic() < until:
            return float(until)
        return None

    async def _guard_majority(self) -> None:
        """The fence of every endpoint follows the node's majority lease: up when it is out
        (and, in the endpoints' own loops, as soon as its deadline passes), down once the lease
        is back and the master's maps are served."""
        while True:
            until = self._majority_until()
            fenced = until is None
            if self.fenced and not fenced and self.lost_majority \
                    and not await self._caught_up():
                fenced = True       # back on the majority's side, its maps not here yet: again
            if fenced:      # cut off (or not known to be on the majority's side) meanwhile
                self.lost_majority = True
            lease = 0.0 if fenced else until
            if fenced != self.fenced or lease != self.lease_until:
                if fenced != self.fenced:
                    if fenced:
                        log.warning("node cut off from the cluster's majority: writes and "
                                    "reads refused")
                    else:
                        log.info("node on the majority's side: writes and reads served")
                self.fenced, self.lease_until = fenced, lease
                for endpoint in list(self.endpoints.values()):
                    await self._apply_fence(endpoint)
            await trio.sleep(FENCE_CHECK_EVERY)

    async def _caught_up(self) -> bool:
        """Every endpoint serves the map the master's CCS holds now (on a connection of its
        own through the forwarded port, so that one left hanging by a partition is not used)."""
        conn = None
        try:
            with trio.fail_after(CATCH_UP_TIMEOUT):
                conn = await ccs.connect_node(self.config, forwarded=True,
                                              timeout=CATCH_UP_TIMEOUT)
                for uid in list(self.endpoints):
                    bdb, shard_map = await schema.get_bdb(conn, uid), \
                        await schema.get_map(conn, uid)
                    if bdb is not None and shard_map is not None:
                        await self._install(uid, bdb, shard_map)
            return True
        except (RedisUnavailable, ReplyError, OSError, ValueError, EndpointStopped,
                trio.TooSlowError) as exc:
            log.info("back on the majority's side, the master's maps not read yet: %s", exc)
            return False
        finally:
            if conn is not None:
                with trio.CancelScope(shield=True):
                    await conn.aclose()

    async def _apply_fence(self, endpoint: Endpoint) -> None:
        while True:     # again if the fence moved meanwhile: the last call made wins
            fenced, lease = self.fenced, self.lease_until

            def apply(proxy, fenced=fenced, lease=lease):
                proxy.fence_until(lease)
                proxy.fence(fenced)
            try:
                await trio.to_thread.run_sync(endpoint.call, apply)
            except EndpointStopped:
                return
            if (fenced, lease) == (self.fenced, self.lease_until):
                return

    async def _serve_cached(self) -> None:
        """The databases of run/maps/, served before CCS answers, with the cluster's data-path
        TLS policy they were last served with (cached beside each map: a restarted dmcproxy
        whose CCS is away does not fall back to the defaults, a TLS 1.2 client refused at a
        1.3 minimum stays refused)."""
        for path in self.maps_dir.glob("*.json"):
            try:
                cached = json.loads(path.read_text())
                self.tls_policy = cached.get("tls_policy") or self.tls_policy
                await self._install(int(path.stem), msgspec.convert(cached["bdb"], schema.Bdb),
                                    msgspec.convert(cached["map"], schema.BdbMap))
            except (OSError, ValueError, KeyError, msgspec.ValidationError) as exc:
                log.warning("cached map %s not served: %s", path.name, exc)

    # ---- local interfaces ----------------------------------------------------------------

    async def _serve_stats(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        path = self.config.proxy_stats_sock
        path.unlink(missing_ok=True)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(path))
        sock.listen(16)
        listener = trio.SocketListener(sock)
        try:
            task_status.started()
            await trio.serve_listeners(self._answer_stats, [listener])
        finally:
            path.unlink(missing_ok=True)

    async def _answer_stats(self, stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            with trio.move_on_after(STATS_TIMEOUT):
                while b"\n" not in request and len(request) < 64:
                    chunk = await stream.receive_some(64)
                    if not chunk:
                        break
                    request += chunk
            if request.strip().upper() != STATS_REQUEST.strip():
                reply = {"error": f"unknown request {request[:32]!r}: send STATS"}
            else:
                reply = await self.endpoint_stats()
            try:
                await stream.send_all(json.dumps(reply).encode() + b"\n")
            except trio.BrokenResourceError:
                pass

    async def endpoint_stats(self) -> dict[str, dict]:
        """{bdb uid (str): Endpoint.stats()} of the endpoints served now; each is read on its
        endpoint's own thread between two turns of its loop."""
        out = {}
        for uid, endpoint in list(self.endpoints.items()):
            try:
                out[str(uid)] = await trio.to_thread.run_sync(endpoint.stats, STATS_TIMEOUT)
            except (EndpointStopped, TimeoutError):
                continue        # closed or re-opened meanwhile: not served now
        return out

    # ---- one database ------------------------------------------------------------------

    async def _follow(self, uid: int) -> None:
        with self.tasks[uid]:
            try:
                while True:
                    try:
                        local = await self.session.local()
                        self.tls_policy = schema.data_tls_policy(
                            await schema.cluster_policy(local))
                        bdb = await schema.get_bdb(local, uid)
                        shard_map = await schema.get_map(local, uid)
                        if bdb is None or bdb.status == "deleting" or shard_map is None:
                            if bdb is None or bdb.status == "deleting":
                                self._close(uid)
                                if bdb is None:
                                    return
                        else:
                            await self._install(uid, bdb, shard_map)
                    except (RedisUnavailable, ReplyError) as exc:
                        log.debug("database %d: CCS away: %s", uid, exc)
                    except (OSError, ValueError, EndpointStopped) as exc:
                        log.warning("database %d: not served: %s", uid, exc)
                    await self._changed(FOLLOW_EVERY)
            finally:
                self.tasks.pop(uid, None)

    async def _install(self, uid: int, bdb: schema.Bdb, shard_map: schema.BdbMap) -> None:
        # One at a time per database (_follow's and _caught_up's): a version is compared with
        # the one applied and installed in one step, never an older map after a newer.
        async with self.installing.setdefault(uid, trio.Lock()):
            await self._install_one(uid, bdb, shard_map)

    async def _install_one(self, uid: int, bdb: schema.Bdb, shard_map: schema.BdbMap) -> None:
        applied = self.applied.get(uid, {})
        endpoint = self.endpoints.get(uid)
        smap = ShardMap.from_dict(served_map(bdb, shard_map))
        password = reveal_text(self.config.dir, bdb.authentication_redis_pass) \
            or None
        multi_slot = bdb.multi_slot_commands or "refuse"
        threads = bdb.proxy_threads or 1
        tls = self._tls(uid, bdb)
        dpine = bdb.data_internode_encryption
        if endpoint is not None and (applied.get("port") != bdb.port or
                                     applied.get("threads") != threads or
                                     applied.get("dpine") != dpine):
            self._close(uid)
            endpoint, applied = None, {}
        if endpoint is None:
            reason = bind_failure(self.config.address, bdb.port)
            if reason is not None:
                await self._report(uid, reason)
                raise OSError(f"port {bdb.port} cannot be bound: {reason}")
            endpoint = await trio.to_thread.run_sync(self._open, bdb, password, smap, multi_slot,
                                                     threads, {**tls, **self._shard_tls(bdb)})
            self.endpoints[uid] = endpoint
            await self._report(uid, None)
            await self._apply_fence(endpoint)
            applied = {"version": smap.version, "paused": False, "port": bdb.port,
                       "password": password, "multi_slot_commands": multi_slot,
                       "threads": threads, "tls": tls_stamp(tls), "dpine": dpine}
            log.info("database %d served on %s:%d, map version %d", uid, self.config.address,
                     bdb.port, smap.version)
        paused = shard_map.paused
        relay = relays_here(smap, self.config.address)
        if smap.version > applied.get("version", 0) or paused != applied.get("paused"):
            def switch(proxy, smap=smap, paused=paused):
                install_shard_map(proxy, smap)
                proxy.set_keyspace_relay(relay)
                self._apply_cluster_api(proxy, bdb, smap)    # the topology of that map, at once
                proxy.pause() if paused else proxy.resume()
            await trio.to_thread.run_sync(endpoint.call, switch)
            if paused and (REFUSE_PAUSED_MAPS == bdb.name or not
                           await trio.to_thread.run_sync(endpoint.wait_drained, DRAIN_TIMEOUT)):
                log.warning("database %d: requests still in flight after %ss", uid, DRAIN_TIMEOUT)
                return      # no acknowledgement: cnm_exec does not switch under our feet
            applied.update(version=smap.version, paused=paused, keyspace_relay=relay)
        if relay != applied.get("keyspace_relay"):      # (a new endpoint relays until told)
            await trio.to_thread.run_sync(
                endpoint.call, lambda proxy: proxy.set_keyspace_relay(relay))
            applied["keyspace_relay"] = relay
        if bdb.oss_cluster != applied.get("oss_cluster"):
            await trio.to_thread.run_sync(
                endpoint.call, lambda proxy: self._apply_cluster_api(proxy, bdb, smap))
            applied["oss_cluster"] = bdb.oss_cluster
        hold = HOLD_MS if bdb.replication else 0
        if hold != applied.get("hold_ms"):
            def set_hold(proxy, hold=hold):
                proxy.hold_ms = hold
            await trio.to_thread.run_sync(endpoint.call, set_hold)
            applied["hold_ms"] = hold
        if password != applied.get("password"):
            await trio.to_thread.run_sync(endpoint.set_password, password)
            applied["password"] = password
        if query_buffer_limit(bdb) != applied.setdefault("query_buffer_limit",
                                                         query_buffer_limit(bdb)):
            limit = query_buffer_limit(bdb)
            await trio.to_thread.run_sync(endpoint.call,
                                          lambda proxy: proxy.set_client_query_limit(limit))
            applied["query_buffer_limit"] = limit
        if tls_stamp(tls) != applied.get("tls"):
            await trio.to_thread.run_sync(endpoint.call, ProxyConfig(**tls).apply_tls)
            applied["tls"] = tls_stamp(tls)
            log.info("database %d: client TLS %s", uid,
                     "on, client certificates " + ("required" if "tls_ca_cert_file" in tls
                                                   else "not asked for") if tls else "off")
        shard_tls = self._shard_tls(bdb)
        if tls_stamp(shard_tls) != applied.setdefault("shard_tls", tls_stamp(shard_tls)):
            # The node's renewed `cp` certificate, for connections opened to shards from now on.
            await trio.to_thread.run_sync(endpoint.call, ProxyConfig(**shard_tls).apply_shard_tls)
            applied["shard_tls"] = tls_stamp(shard_tls)
            log.info("database %d: shard TLS certificate loaded again", uid)
        if multi_slot != applied.get("multi_slot_commands"):
            await trio.to_thread.run_sync(
                endpoint.call, lambda proxy: proxy.set_multi_slot_commands(multi_slot))
            applied["multi_slot_commands"] = multi_slot
        self.applied[uid] = applied
        await trio.to_thread.run_sync(self._cache, uid, bdb, shard_map)
        await self._ack(uid, bdb, applied)

    def _apply_cluster_api(self, proxy, bdb: schema.Bdb, smap: ShardMap) -> None:
        """The OSS Cluster API on (bdb.oss_cluster) or off. A shard's address is its node's, so
        the node serving its slots is the proxy at that address and the database's port."""
        if bdb.oss_cluster:
            cluster_api.apply(proxy, smap, lambda shard: (shard[0], bdb.port),
                              (self.config.address, bdb.port))
        else:
            cluster_api.apply(proxy, None, None, (self.config.address, bdb.port))

    async def _report(self, uid: int, reason: str | None) -> None:
        """Write (or clear) this node's failure to serve the database, when it changes."""
        if reason is not None and self.failures.get(uid) == reason:
            return
        key = schema.endpoint_status_key(uid)
        try:
            if reason is None:
                await ccs.delete(await self.session.master(), key, self.config.uid)
                self.failures.pop(uid, None)
            else:
                log.warning("database %d: endpoint failed: %s", uid, reason)
                await ccs.write(await self.session.master(), key, {
                    "status": "failed", "reason": reason, "time": time.time()},
                    field=self.config.uid)
                self.failures[uid] = reason
        except (RedisUnavailable, ReplyError) as exc:
            log.debug("database %d: endpoint status not written: %s", uid, exc)

    def _open(self, bdb: schema.Bdb, password: str | None, smap: ShardMap,
              multi_slot: str = "refuse", threads: int = 1, tls: dict | None = None) -> Endpoint:
        return Endpoint(self.config.address, bdb.port, password, smap, threads=threads,
                        wait_shards_s=WAIT_SHARDS, multi_slot_commands=multi_slot,
                        fence_hold_ms=FENCE_HOLD_MS,
                        client_query_buffer_limit=query_buffer_limit(bdb), **(tls or {})).start()

    def _tls(self, uid: int, bdb: schema.Bdb) -> dict:
        """The endpoint's client TLS as ProxyConfig's tls_* settings ({}: plaintext). The
        trusted client certificates are written to run/tls/<uid>-clients.pem when they change."""
        if bdb.tls_mode != "enabled":
            return {}
        d = self.config.dir
        tls = {"tls_cert_file": str(cert_file(d, "proxy")),
               "tls_key_file": str(key_file(d, "proxy")), **self.tls_policy}
        if bdb.enforce_client_authentication == "enabled":
            trusted = ca_file(d).read_text() + "".join(
                c["client_cert"].strip() + "\n" for c in bdb.authentication_ssl_client_certs)
            path = self.config.run_dir / "tls" / f"{uid}-clients.pem"
            path.parent.mkdir(mode=0o700, exist_ok=True)
            if not path.exists() or path.read_text() != trusted:
                atomic_write(path, trusted)
            tls.update(tls_ca_cert_file=str(path), tls_auth_clients="yes",
                       tls_authorized_names=list(bdb.authorized_names))
        return tls

    def _shard_tls(self, bdb: schema.Bdb) -> dict:
        """ProxyConfig's shard_tls_* settings of the database ({}: plaintext shards)."""
        if not bdb.data_internode_encryption:
            return {}
        d = self.config.dir
        return {"shard_tls": True, "shard_tls_ca_cert_file": str(ca_file(d)),
                "shard_tls_cert_file": str(cert_file(d, "cp")),
                "shard_tls_key_file": str(key_file(d, "cp")), **self.tls_policy}

    def _close(self, uid: int) -> None:
        endpoint = self.endpoints.pop(uid, None)
        self.applied.pop(uid, None)
        (self.maps_dir / f"{uid}.json").unlink(missing_ok=True)
        if endpoint is not None:
            endpoint.stop()
            log.info("database %d: endpoint closed", uid)

    def _cache(self, uid: int, bdb: schema.Bdb, shard_map: schema.BdbMap) -> None:
        atomic_write(self.maps_dir / f"{uid}.json",
                     json.dumps({"bdb": schema.as_dict(bdb), "map": schema.as_dict(shard_map),
                                 "tls_policy": self.tls_policy}))

    async def _ack(self, uid: int, bdb: schema.Bdb, applied: dict) -> None:
        value = {"version": applied["version"], "paused": applied["paused"],
                 "bdb_version": bdb.version, "time": time.time()}
        acks = await ccs.read_hash(await self.session.local(), schema.ack_key(uid))
        old = acks.get(self.config.uid) or {}
        if {k: old.get(k) for k in ("version", "paused", "bdb_version")} == \
                {k: value[k] for k in ("version", "paused", "bdb_version")}:
            return
        await ccs.write(await self.session.master(), schema.ack_key(uid), value,
                        field=self.config.uid)


def served_map(bdb: schema.Bdb, shard_map: schema.BdbMap) -> dict:
    """The map as the endpoint serves it: with DPINE each shard's address is its tls-port
    (one without a tls-port keeps its port; redis_mgr leaves it plaintext too)."""
    served = schema.as_dict(shard_map)
    if bdb.data_internode_encryption:
        for shard in served["shards"]:
            if shard.get("tls_port"):
                host = shard["address"].rpartition(":")[0]
                shard["address"] = f"{host}:{shard['tls_port']}"
    return served


def tls_stamp(tls: dict) -> tuple:
    """The TLS settings and their files' identities: a change means the endpoint must load
    them again."""
    return tuple(sorted(tls.items())) + files_stamp(
        path for name, path in sorted(tls.items()) if name.endswith("_file"))


def query_buffer_limit(bdb: schema.Bdb) -> int:
    return bdb.client_query_buffer_limit or schema.DEFAULT_QUERY_BUFFER


main = service_command("dmcproxy", NodeProxy)

if __name__ == "__main__":
    main()
