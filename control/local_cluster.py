"""Several nodes on one machine: what `dmc cluster create|stop` and `dmc node add|remove` do, and
what the tests use. Each node has its own address (127.0.0.N by default, or a network
namespace's), its own ports chosen free at run time, its own folder and its own supervisord;
everything else is the same code as one node per machine.

The cluster's folder holds `cluster.json`, the list of node folders, so that the CLI finds the
nodes' supervisor sockets and addresses; what the cluster *is* (members, master) lives in CCS and
in each node's cluster_wd.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import xmlrpc.client
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from control import ccs, certificates, schema
from control.cluster_wd import request
from control.discovery import DEFAULT_FQDN
from control.node import NodeConfig, admin_credentials, atomic_write, supervisor_rpc
from control.pdns_server import free_dns_port
from control.redis_client import RedisUnavailable, ReplyError
from control.redis_mgr import shard_pids, stop_all
from control.shard_link import ccs_link, client_context
from dmc.processes import free_port, pid_alive, processes_under

ADMIN_USER = "admin"

# Redis Enterprise's ports, each on the node's own address (`dmc cluster create` uses them by
# default; tests take free ones). Database endpoints are given from 10000, shards from 20000
# (control/schema.py DB_PORTS, SHARD_PORTS) either way; CCS, gossip and the forwarded CCS port
# are the node's own business and stay free ones.
WELL_KNOWN_PORTS = {"rest_port": 8080, "rest_tls_port": 9443, "metrics_port": 8070,
                    "sentinel_port": 8001, "dns_port": 53, "ui_port": 8443}


class ClusterError(RuntimeError):
    """Something an operator should read as one line."""


def loopback_addresses(n: int, first: str = "127.0.0.1") -> list[str]:
    a, b, c, d = (int(x) for x in first.split("."))
    if a != 127 or d + n - 1 > 254:
        raise ClusterError(f"cannot give {n} nodes loopback addresses from {first}")
    return [f"{a}.{b}.{c}.{d + i}" for i in range(n)]


@dataclass
class LocalCluster:
    home: Path
    nodes: dict[int, NodeConfig] = field(default_factory=dict)

    # ---- the registry --------------------------------------------------------------------

    @property
    def registry(self) -> Path:
        return self.home / "cluster.json"

    def save(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        atomic_write(self.registry, json.dumps(
            {"nodes": {str(uid): c.home for uid, c in sorted(self.nodes.items())}}, indent=2))

    @classmethod
    def load(cls, home: Path) -> LocalCluster:
        home = Path(home)
        try:
            data = json.loads((home / "cluster.json").read_text())
        except FileNotFoundError:
            raise ClusterError(f"no cluster in {home} (create one with `dmc cluster create`)") \
                from None
        return cls(home, {int(uid): NodeConfig.load(d) for uid, d in data["nodes"].items()})

    def node(self, uid: int) -> NodeConfig:
        if uid not in self.nodes:
            raise ClusterError(f"no node {uid} in this cluster (nodes: "
                               f"{', '.join(map(str, sorted(self.nodes)))})")
        return self.nodes[uid]

    # ---- create, add -----------------------------------------------------------------------

    @property
    def admin_file(self) -> Path:
        """admin.json (mode 0600): the REST API's admin user and password, for the CLI."""
        return self.home / "admin.json"

    def admin_login(self) -> tuple[str, str]:
        data = json.loads(self.admin_file.read_text())
        return data["username"], data["password"]

    @classmethod
    def create(cls, home: Path, addresses: list[str], *, record_history: bool = False,
               netns: list[str] | None = None, timeout: float = 30.0,
               admin_password: str | None = None,
               services: list[str] | None = None,
               name: str = DEFAULT_FQDN, well_known_ports: bool = False) -> LocalCluster:
        """A new cluster of nodes at `addresses`; with `well_known_ports` each node serves on
        Redis Enterprise's ports (WELL_KNOWN_PORTS, on its own address), else on free ones
        (what tests use)."""
        home = Path(home)
        if (home / "cluster.json").exists():
            raise ClusterError(f"a cluster already exists in {home} "
                               "(`dmc cluster start` starts it again, `dmc cluster delete` removes it)")
        cluster = cls(home)
        for i, address in enumerate(addresses):
            cluster.nodes[i + 1] = cluster._new_node(
                i + 1, address, record_history, netns[i] if netns else None,
                well_known_ports)
        password = admin_password or secrets.token_urlsafe(12)
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(cluster.admin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"username": ADMIN_USER, "password": password}, f)
        admin = admin_credentials(ADMIN_USER, password)
        ca = certificates.make_ca(name)
        for c in cluster.nodes.values():
            certificates.provision(c.dir, ca, c.uid, c.address, name)
        members = {uid: c.member_info() for uid, c in cluster.nodes.items()}
        for c in cluster.nodes.values():
            c.peers = members
            c.admin = admin
            c.cluster_fqdn = name
            if services is not None:
                c.services = list(services)
            c.save()
        cluster.save()
        try:
            for uid in cluster.nodes:
                cluster.start_node(uid)
            if not netns:
                cluster.wait_for_master(timeout)
                cluster.wait_ready(timeout)
        except BaseException:
            cluster.delete()
            raise
        return cluster

    def _new_node(self, uid: int, address: str, record_history: bool,
                  netns: str | None, well_known_ports: bool = False) -> NodeConfig:
        # In a namespace every port is free; they are still chosen at run time, never fixed.
        port_host = "127.0.0.1" if netns else address
        ports = set()
        while len(ports) < 9:
            ports.add(free_port(port_host))
        ccs_port, gossip_port, forward_port, rest_port, rest_tls_port, sentinel_port, \
            metrics_port, ccs_tls_port, ui_port = sorted(ports)
        dns_port = free_dns_port(port_host, exclude=ports)
        chosen = dict(ccs_port=ccs_port, gossip_port=gossip_port, ccs_tls_port=ccs_tls_port,
                      ccs_forward_port=forward_port, rest_port=rest_port,
                      rest_tls_port=rest_tls_port, sentinel_port=sentinel_port,
                      dns_port=dns_port, metrics_port=metrics_port, ui_port=ui_port)
        if well_known_ports:
            chosen.update(WELL_KNOWN_PORTS)
        return NodeConfig(uid=uid, address=address, home=str(self.home / f"node-{uid}"),
                          record_history=record_history, netns=netns, **chosen)

    def add_node(self, address: str | None = None, *, peer: tuple[str, int] | None = None,
                 netns: str | None = None, timeout: float = 120.0,
                 ca: certificates.Pair | None = None) -> NodeConfig:
        """Start a new node in this folder and wait until the master has taken it in. `peer`
        (address, gossip port) is any node of the cluster; by default one of this folder's.
        Its certificates are signed by `ca` (default: the CA of this folder's nodes; on a
        machine of its own, the cluster's CA as `dmc node join --ca-dir` reads it)."""
        if ca is not None and self.cluster_ca() is None and address:
            # nobody here to ask the members as: a client certificate of the cluster's CA
            asker = self.home / ".join-client"
            certificates.provision(asker, ca, 0, address, DEFAULT_FQDN)
            self._cp_dir = asker
        members = self._members(peer)
        uid = max(set(members) | set(self.nodes)) + 1    # a removed node's uid is not reused
        if address is None:
            first = members[min(members)]["address"]
            if not first.startswith("127."):
                raise ClusterError("give the new node's address (--address)")
            address = loopback_addresses(uid, first)[-1]
        config = self._new_node(uid, address, any(c.record_history for c in self.nodes.values()),
                                netns)
        config.peers = members
        config.admin = next((c.admin for c in self.nodes.values() if c.admin), {})
        config.cluster_fqdn = trio.run(_cluster_fqdn, members, self.nodes,
                                       self.client_certificates()) or next(
            (c.cluster_fqdn for c in self.nodes.values()), config.cluster_fqdn)
        if self.nodes:
            config.services = list(next(iter(self.nodes.values())).services)
        ca = ca or self.cluster_ca()
        if ca is not None:
            certificates.provision(config.dir, ca, uid, address, config.cluster_fqdn)
        self._check_accepted(config, members)
        config.save()
        self.nodes[uid] = config
        self.save()
        self.start_node(uid)
        if not netns:
            deadline = time.monotonic() + timeout
            while uid not in self.status(uid).get("members", {}):
                if time.monotonic() > deadline:
                    raise ClusterError(f"node {uid} did not join within {timeout}s")
                time.sleep(0.1)
            # With databases (cnm_exec on the nodes of this folder): ready once it serves them.
            through = [c for u, c in self.nodes.items() if u != uid and "cnm_exec" in c.services]
            if through and "cnm_exec" in config.services:
                action = trio.run(self._run_action, schema.new_action("node_add", "node", uid, {}),
                                  through, timeout)
                if action.status != "completed":
                    raise ClusterError(f"node {uid} joined but is not ready: "
                                       f"{action.error}")
        return config

    def _members(self, peer: tuple[str, int] | None = None) -> dict[int, dict]:
        """The cluster's members as a live cluster_wd tells them."""
        asked = [peer] if peer else [(c.address, c.gossip_port) for c in self.nodes.values()]
        for address, port in asked:
            try:
                reply = self._request(address, port, {"op": "status"}, 2.0)
            except (OSError, trio.TooSlowError, ConnectionError):
                continue
            if reply.get("members"):
                return {int(k): v for k, v in reply["members"].items()}
        where = f"{peer[0]}:{peer[1]}" if peer else "any node of this cluster"
        hint = "" if self.client_certificates() is not None or self.cluster_ca() else (
            " (a cluster with control-plane encryption answers only a certificate of its CA: "
            "give --ca-dir)")
        raise ClusterError(f"no cluster_wd answered at {where}{hint}")

    def remove_node(self, uid: int, timeout: float = 30.0) -> None:
        if uid not in self.nodes:
            raise ClusterError(f"no node {uid} on this machine's cluster folder")
        if self.status(uid).get("is_master"):
            # The master does not remove itself: stop it, let another node take over.
            self.stop_node(uid)
            self.wait_for_master(timeout, among=[u for u in self.nodes if u != uid])
        if "cnm_exec" in self.nodes[uid].services:
            action = trio.run(self._drain, uid, timeout)
            if action.status != "completed":
                raise ClusterError(f"node {uid} not removed: {action.error}")
        else:       # a cluster without databases: cluster_wd alone takes it out
            reply = self._ask_master({"op": "leave", "uid": uid}, timeout)
            if not reply.get("ok"):
                raise ClusterError(f"node {uid} not removed: {reply.get('error')}")
        self.stop_node(uid)
        shutil.rmtree(self.nodes.pop(uid).home, ignore_errors=True)
        self.save()

    # ---- processes -----------------------------------------------------------------------

    def _check_accepted(self, config: NodeConfig, members: dict[int, dict]) -> None:
        """ClusterError, before anything starts, if the cluster refuses the new node's
        certificate (not signed by the cluster CA): it could never join."""
        if not config.cpine:
            return
        tls = config.control_plane_tls()
        for info in members.values():
            try:
                trio.run(partial(request, ssl_context=tls.client()), info["address"],
                         info["gossip_port"], {"op": "status"}, 3.0)
                return
            except ConnectionError as exc:
                if "TLS" in str(exc):
                    shutil.rmtree(config.dir, ignore_errors=True)
                    raise ClusterError(f"node {info['uid']} refuses the new node's certificate "
                                       f"(is it signed by the cluster CA?): {exc}") from None
            except (OSError, trio.TooSlowError):
                continue

    def cluster_ca(self) -> certificates.Pair | None:
        """The cluster CA, from the certs folder of any of this folder's nodes."""
        for config in self.nodes.values():
            try:
                return certificates.read_ca(config.dir)
            except FileNotFoundError:
                continue
        return None

    def start_node(self, uid: int, timeout: float = 15.0) -> None:
        """The node's supervisord launched (it daemonizes) and answering. A cluster's nodes
        start one after the other: started all at once (tried), two of four test clusters at a
        load of 80 had no master after 90 s; why is not known yet."""
        config = self.node(uid)
        config.write_configs()
        out = os.open(config.dir / "logs" / "supervisord.out", os.O_WRONLY | os.O_CREAT |
                      os.O_APPEND, 0o600)
        with os.fdopen(out, "ab") as log:
            # umask 077 from the start: supervisord opens its own log before it applies the
            # umask its configuration gives
            result = subprocess.run(config.supervisord_argv(), stdout=log, check=False,
                                    stderr=subprocess.STDOUT, cwd=config.dir, umask=0o077)
        if result.returncode != 0:
            raise ClusterError(f"supervisord of node {uid} did not start "
                               f"(see {config.dir / 'logs'})")
        deadline = time.monotonic() + timeout
        while True:
            try:
                if supervisor_rpc(config.supervisor_sock).supervisor.getState()["statename"] \
                        == "RUNNING":
                    return
            except (OSError, xmlrpc.client.Error):
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"supervisord of node {uid} is not answering")
            time.sleep(0.05)

    def supervisor_pid(self, uid: int) -> int | None:
        try:
            return int(self.node(uid).supervisor_pidfile.read_text())
        except (OSError, ValueError):
            return None

    def node_pids(self, uid: int) -> dict[str, int]:
        """{service or 'supervisor': pid} of the node's live processes."""
        pids = {}
        sup = self.supervisor_pid(uid)
        if sup and pid_alive(sup):
            pids["supervisor"] = sup
            try:
                for p in supervisor_rpc(self.node(uid).supervisor_sock) \
                        .supervisor.getAllProcessInfo():
                    if p["pid"]:
                        pids[p["name"]] = p["pid"]
            except (OSError, xmlrpc.client.Error):
                pass
        pids.update(shard_pids(self.node(uid)))
        return pids

    def kill_node(self, uid: int) -> dict[str, int]:
        """kill -9 of every process of the node, supervisord first so nothing is restarted."""
        pids = self.node_pids(uid)
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_gone(pids.values(), 5.0)
        return pids

    def stop_node(self, uid: int, timeout: float = 15.0) -> None:
        self._stop_nodes([uid], timeout)

    def _stop_nodes(self, uids: list[int], timeout: float = 15.0) -> None:
        """Each node's supervisord told to shut its services down, all at once, then each
        waited for (kill -9 past `timeout`) and its shards stopped (redis_mgr.stop_all)."""
        pids = {uid: self.node_pids(uid) for uid in uids}
        for uid in uids:
            if pids[uid]:
                try:
                    supervisor_rpc(self.node(uid).supervisor_sock).supervisor.shutdown()
                except (OSError, xmlrpc.client.Error):
                    pass
        deadline = time.monotonic() + timeout
        for uid in uids:
            if not pids[uid]:
                continue
            services = [p for n, p in pids[uid].items() if not n.startswith("shard:")]
            if not _wait_gone(services, max(0.0, deadline - time.monotonic())):
                self.kill_node(uid)
            stop_all(self.node(uid))

    def start(self, timeout: float = 30.0) -> int:
        """Start every node again from its folder (its term, vote, members and CCS data)."""
        for uid in self.nodes:
            if not self.node_pids(uid):
                self.start_node(uid)
        return self.wait_for_master(timeout)

    def stop(self) -> None:
        """Every node at once: one node at a time, the nodes still up would fail the stopped
        one's master shards over to themselves, only to be stopped next."""
        self._stop_nodes(list(self.nodes))

    def delete(self) -> None:
        """Stop every node (a busy shard too: redis_mgr.stop_all), then remove the folders;
        refused, with nothing removed, while any process still runs from a node's folder."""
        self.stop()
        left = {uid: processes_under(config.home) for uid, config in self.nodes.items()}
        left = {uid: pids for uid, pids in left.items() if pids}
        if left:
            raise ClusterError("not deleted: processes of the cluster still run (" + "; ".join(
                f"node {uid}: pids {', '.join(map(str, pids))}" for uid, pids in
                sorted(left.items())) + ")")
        for config in self.nodes.values():
            shutil.rmtree(config.home, ignore_errors=True)
        self.registry.unlink(missing_ok=True)
        self.admin_file.unlink(missing_ok=True)

    # ---- asking cluster_wd -----------------------------------------------------------------

    def client_certificates(self) -> Path | None:
        """The node folder whose `cp` certificate this folder presents to the cluster (its
        admin requests to cluster_wd, CCS's tls-port): the first of its nodes with
        control-plane encryption, or a joining node's `.join-client`; None: plaintext."""
        if not hasattr(self, "_cp_dir"):
            self._cp_dir = next((c.dir for c in self.nodes.values() if c.cpine and
                                 certificates.cert_file(c.dir, "cp").exists()), None)
        return self._cp_dir

    def _request(self, address: str, port: int, msg: dict, timeout: float) -> dict:
        """One admin request to a cluster_wd, over mutual TLS with this folder's client
        certificate when it has one (control-plane encryption)."""
        where = self.client_certificates()
        context = client_context(where) if where is not None else None
        return trio.run(partial(request, ssl_context=context), address, port, msg, timeout)

    def status(self, uid: int, timeout: float = 1.0) -> dict:
        """The node's cluster_wd view ({} if it does not answer)."""
        config = self.node(uid)
        try:
            return self._request(config.address, config.gossip_port, {"op": "status"}, timeout)
        except (OSError, trio.TooSlowError, ConnectionError):
            return {}

    def masters(self) -> list[int]:
        return [uid for uid in self.nodes if self.status(uid).get("is_master")]

    def wait_for_master(self, timeout: float = 30.0, among=None) -> int:
        deadline = time.monotonic() + timeout
        while True:
            masters = [m for m in self.masters() if among is None or m in among]
            if len(masters) == 1:
                return masters[0]
            if time.monotonic() > deadline:
                raise ClusterError(f"no single master within {timeout}s (masters: {masters})")
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the master's CCS holds a heartbeat of every node: databases can be placed."""
        deadline = time.monotonic() + timeout
        while not trio.run(self._all_beating):
            if time.monotonic() > deadline:
                raise ClusterError(f"not every node's heartbeat reached CCS within {timeout}s")
            time.sleep(0.1)

    async def _all_beating(self) -> bool:
        for config in self.nodes.values():
            try:
                async with await ccs.connect_node(config, forwarded=True) as conn:
                    found = await conn.pipeline([("EXISTS", ccs.heartbeat_key(uid))
                                                 for uid in self.nodes])
                    return all(f == 1 for f in found)
            except (RedisUnavailable, ReplyError):
                continue
        return False

    async def _drain(self, uid: int, timeout: float) -> dict:
        """The master's cnm_exec moves every shard off node `uid`, then the node leaves."""
        return await self._run_action(schema.new_action("node_remove", "node", uid, {}),
                                      [c for u, c in self.nodes.items() if u != uid],
                                      timeout + 300)

    async def _run_action(self, action: dict, through: list[NodeConfig],
                          timeout: float) -> dict:
        """Submit an action for the master's cnm_exec (once) and follow it to its end, through
        any of `through`'s forwarded CCS ports."""
        submitted = False
        with trio.move_on_after(timeout):
            while True:
                for config in through:
                    try:
                        async with await ccs.connect_node(config, forwarded=True) as conn:
                            if not submitted:
                                await schema.submit(conn, action)
                                submitted = True
                            while action.status not in ("completed", "failed"):
                                await trio.sleep(0.2)
                                action = await schema.get_action(conn, action.action_uid) \
                                    or action
                            return action
                    except (RedisUnavailable, ReplyError):
                        continue
                await trio.sleep(0.5)
        schema.set_fields(action, status="failed", error=f"not done within {timeout:.0f}s")
        return action

    def _ask_master(self, msg: dict, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for config in self.nodes.values():
                view = self.status(config.uid)
                master = view.get("members", {}).get(view.get("master"))
                if master is None:
                    continue
                try:
                    reply = self._request(master["address"], master["gossip_port"], msg, 2.0)
                except (OSError, trio.TooSlowError, ConnectionError):
                    continue
                if reply.get("error") != "not the master":
                    return reply
            if time.monotonic() > deadline:
                raise ClusterError("no master answered")
            time.sleep(0.2)


async def _cluster_fqdn(members: dict[int, dict], local: dict[int, NodeConfig],
                        tls_dir: Path | None) -> str | None:
    """The cluster's name as CCS holds it (`cluster:fqdn`), from the first member's copy that
    answers (reached as shard_link.ccs_link says): a node joining from another machine has no
    sibling folder to copy it from."""
    for info in members.values():
        try:
            async with await ccs_link(info, local, tls_dir).connect(timeout=2.0) as conn:
                fqdn = ccs.unpack(await conn.execute("GET", ccs.FQDN))
        except (RedisUnavailable, ReplyError, OSError, KeyError):
            continue
        if fqdn:
            return fqdn
    return None


def _wait_gone(pids, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
