"""heartbeatd: proves the node alive and gives local services one fixed address for CCS.

- Every second it writes `node_heartbeat:<uid>` to the CCS master with a TTL
  (`ccs.HEARTBEAT_TTL_MS`): when the key has expired, the node is shown as down. The value says
  when the node started, the state of each of its services, as its supervisord reports them,
  and the machine's memory (`memory_total`, bytes: what cnm_http books databases against), and
  where its metrics are (`metrics_url`: http or https, as node.json says).
- It listens on the node's forward socket (`run/ccs_forward.sock`, mode 0700; and on its
  `ccs_forward_port` only where no other host reaches it: NodeConfig.plain_tcp, as CCS's own
  plain port) and forwards every connection to the current CCS
  master, which it learns from the `cluster:master` record in the node's own CCS copy (re-read
  on every change notice, and every half second). When the master changes, forwarded
  connections are closed, so that clients reconnect to the new master. With control-plane
  encryption (the default) the heartbeat and every forwarded connection reach the master's CCS
  on its tls-port, over mutual TLS with the node's `cp` certificate: services keep speaking
  plain Redis to the local port, nothing crosses between nodes in the clear.
- Second line of defence for the one-master rule: if cluster_wd's lease (`run/lease.json`) has
  run out while the node's CCS copy is still writable, it fences the copy itself.

It never writes CCS except its own heartbeat key.
"""

from __future__ import annotations

import json
import logging
import os
import time
import xmlrpc.client

import trio

from control import ccs
from control.node import (
    FENCED_MIN_REPLICAS,
    NodeConfig,
    service_command,
    supervisor_rpc,
)
from control.redis_client import RedisUnavailable, ReplyError, connect

log = logging.getLogger("heartbeatd")

BEAT_EVERY = 1.0
MEMORY_TOTAL = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
FOLLOW_EVERY = 0.5
FORWARD_CONNECT_TIMEOUT = 2.0   # to the master's CCS, TLS handshake included
GUARD_EVERY = 0.05


def services_of(sock_path) -> list[dict]:
    """[{name, state, pid, start}] as supervisord reports them (blocking call)."""
    return [{"name": p["name"], "state": p["statename"], "pid": p["pid"], "start": p["start"]}
            for p in supervisor_rpc(sock_path).supervisor.getAllProcessInfo()]


class Heartbeatd:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.started = time.time()
        self.master: tuple[str, int] | None = None
        self.forwarded: set[trio.CancelScope] = set()
        self._notice = trio.Event()
        self._beat_now = trio.Event()
        self._local = None
        self._local_lock = trio.Lock()
        self.tls = config.control_plane_tls()   # to the master's CCS tls-port (mutual TLS)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_master)
            nursery.start_soon(self._listen_for_changes)
            nursery.start_soon(self._beat)
            nursery.start_soon(self._guard_lease)
            listeners = [await unix_listener(self.config.forward_socket)]
            if self.config.plain_tcp:
                listeners += await trio.open_tcp_listeners(self.config.ccs_forward_port,
                                                           host=self.config.address)
            await nursery.start(trio.serve_listeners, self._forward, listeners)
            log.info("node %d: heartbeatd up, CCS forwarded on %s%s", self.config.uid,
                     self.config.forward_socket,
                     f" and {self.config.address}:{self.config.ccs_forward_port}"
                     if self.config.plain_tcp else "")

    # ---- where is the CCS master ---------------------------------------------------------

    async def _local_ccs(self):
        """The node's own CCS copy; one connection, shared by this process's tasks."""
        async with self._local_lock:    # two tasks must not both connect
            if self._local is None or self._local.closed:
                self._local = await ccs.connect_node(self.config)
            return self._local

    async def _follow_master(self) -> None:
        while True:
            with trio.move_on_after(FOLLOW_EVERY):
                await self._notice.wait()
            self._notice = trio.Event()
            try:
                record = await ccs.read(await self._local_ccs(), ccs.MASTER)
            except (RedisUnavailable, ReplyError):
                continue
            master = None
            if record:    # the master's tls-port when both have one: CCS crosses nodes on TLS
                port = record.get("ccs_tls_port") if self.config.cpine else None
                master = (record["address"], port or record["ccs_port"])
            if master != self.master:
                log.info("CCS master is now %s", master)
                self.master = master
                self._beat_now.set()   # the new master has only replicated, aging heartbeats
                for scope in list(self.forwarded):
                    scope.cancel()

    async def _listen_for_changes(self) -> None:
        while True:
            try:
                async with ccs.subscribe_node(self.config, [ccs.CHANGES]) as sub:
                    async for _channel, key in sub:
                        if key == ccs.MASTER.encode():
                            self._notice.set()
            except (RedisUnavailable, ReplyError):
                await trio.sleep(0.5)

    # ---- the heartbeat -------------------------------------------------------------------

    async def _beat(self) -> None:
        conn = None
        while True:
            try:
                services = await trio.to_thread.run_sync(services_of, self.config.supervisor_sock)
            except (OSError, xmlrpc.client.Error) as exc:
                services = [{"name": "supervisor", "state": f"UNREACHABLE ({exc})", "pid": 0,
                             "start": 0}]
            value = {"time": time.time(), "started": self.started,
                     "address": self.config.address, "services": services,
                     "memory_total": MEMORY_TOTAL, "metrics_url": self.config.metrics_url}
            master = self.master
            try:
                if master is not None:
                    if conn is None or conn.closed or (conn.host, conn.port) != master:
                        if conn is not None:
                            await conn.aclose()
                        conn = await connect(*master, ssl_context=self._upstream_tls(master))
                    await conn.execute("SET", ccs.heartbeat_key(self.config.uid),
                                       ccs.pack(value), "PX", ccs.HEARTBEAT_TTL_MS)
            except (RedisUnavailable, ReplyError) as exc:
                log.debug("heartbeat not written: %s", exc)
                if conn is not None:
                    await conn.aclose()
                conn = None
            with trio.move_on_after(BEAT_EVERY):
                await self._beat_now.wait()
            self._beat_now = trio.Event()

    # ---- the forwarder -------------------------------------------------------------------

    def _upstream_tls(self, master: tuple[str, int]):
        """TLS to the master's CCS unless it is this node's own plain port."""
        if (master[0], master[1]) == (self.config.address, self.config.ccs_port):
            return None
        return self.tls.client()

    async def _forward(self, client: trio.SocketStream) -> None:
        master = self.master
        if master is None:
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self.forwarded.add(scope)
            try:
                with trio.fail_after(FORWARD_CONNECT_TIMEOUT):
                    upstream = await trio.open_tcp_stream(*master)
                    context = self._upstream_tls(master)
                    if context is not None:
                        upstream = trio.SSLStream(upstream, context, server_hostname=master[0])
                        await upstream.do_handshake()
                async with upstream, client, trio.open_nursery() as nursery:
                    nursery.start_soon(_pipe, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pipe, upstream, client, nursery.cancel_scope)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError):
                pass
            finally:
                self.forwarded.discard(scope)
        await trio.aclose_forcefully(client)

    # ---- lease guard ---------------------------------------------------------------------

    async def _guard_lease(self) -> None:
        while True:
            await trio.sleep(GUARD_EVERY)
            try:
                lease = json.loads(self.config.lease_file.read_text())
            except (OSError, ValueError):
                continue
            until = lease.get("lease_until")
            if lease.get("role") != "master" or until is None or time.monotonic() < until:
                continue
            try:
                local = await self._local_ccs()
                fence = await local.execute("CONFIG", "GET", "min-replicas-to-write")
                role = await local.execute("ROLE")
                if role[0] == b"master" and int(fence[1]) == 0:
                    await local.execute("CONFIG", "SET", "min-replicas-to-write",
                                        FENCED_MIN_REPLICAS)
                    log.warning("lease of term %s ran out with CCS writable: fenced it",
                                lease.get("term"))
            except (RedisUnavailable, ReplyError):
                pass


async def unix_listener(path) -> trio.SocketListener:
    """A listener on the unix socket `path` (a stale one from a previous run replaced),
    readable by the node's own user only."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    await sock.bind(str(path))
    os.chmod(path, 0o700)
    sock.listen(128)
    return trio.SocketListener(sock)


async def _pipe(src: trio.abc.Stream, dst: trio.abc.Stream, done: trio.CancelScope) -> None:
    try:
        async for data in src:
            await dst.send_all(data)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()


main = service_command("heartbeatd", Heartbeatd)

if __name__ == "__main__":
    main()
