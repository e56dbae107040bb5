"""cluster_wd: the node's member of the cluster. It gossips with the other nodes over TCP
(msgpack frames; mutual TLS with the nodes' `cp` certificates unless control-plane encryption is
off: a node whose certificate the cluster CA did not sign is not heard, so it can neither join
nor vote), takes part in the master election (`control.election`), keeps the cluster's
membership, and makes the node's CCS copy follow the election:

- master holding its lease: the copy is promoted (REPLICAOF NO ONE) and made writable, its CCS
  position given this term (ccs.POSITION), then the master record and the member list are
  written to it;
- anything else: the copy is fenced (it refuses writes) first, then pointed at the master's copy.

The election learns the copy's CCS position from here: read at every reconcile, and again just
before a vote request is answered (a voter must not count its copy as less far than it is).

It never makes its CCS copy writable unless this node is master for the current term with a
lease a majority renewed, and it fences the copy before the lease ends.

A node removed from the cluster stops: told by node_remove, or, if it was down or cut off then,
when it finds a membership newer than its own without it (run/removed.json keeps it out).

Run by supervisord as `python -m control.cluster_wd --node-dir DIR`.
"""

from __future__ import annotations

import json
import logging
import time
import xmlrpc.client
from functools import partial
from pathlib import Path

import msgpack
import trio

from control import ccs
from control.election import CANDIDATE, MASTER, Election, Observation, Timings
from control.tls import handshake_error
from control.node import (FENCED_MIN_REPLICAS, NodeConfig, atomic_write, service_command,
                          supervisor_rpc)
from control.redis_client import RedisUnavailable, ReplyError, checked
from control.redis_mgr import stop_all

log = logging.getLogger("cluster_wd")

MAX_FRAME = 1 << 20
CONNECT_TIMEOUT = 0.3       # a gossip connection's TCP connect
HANDSHAKE_TIMEOUT = 1.0     # a TLS handshake, either side
RECONCILE_EVERY = 0.3
LEASE_FILE_EVERY = 0.1      # run/lease.json's majority_until is rewritten this often


def monotonic_of(trio_time: float | None) -> float | None:
    """Trio's clock has an offset of its own; other processes compare time.monotonic()."""
    if trio_time is None:
        return None
    return trio_time - trio.current_time() + time.monotonic()


class FileVoteStore:
    """state.json: the durable (term, voted_for) and the last membership this node adopted."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def load(self) -> tuple[int, int | None]:
        return self.data.get("term", 0), self.data.get("voted_for")

    def save(self, term: int, voted_for: int | None) -> None:
        self.data.update(term=term, voted_for=voted_for)
        atomic_write(self.path, json.dumps(self.data))

    def members(self) -> tuple[dict[int, dict], int] | None:
        if "members" not in self.data:
            return None
        return {int(k): v for k, v in self.data["members"].items()}, self.data["members_version"]

    def save_members(self, members: dict[int, dict], version: int) -> None:
        self.data.update(members={str(k): v for k, v in members.items()}, members_version=version)
        atomic_write(self.path, json.dumps(self.data))


class Gossip:
    """One outgoing connection per peer, messages one way; replies travel on the replier's own
    connection. Sending never blocks: a message that cannot go now is dropped, as the election
    expects of a network."""

    def __init__(self, nursery: trio.Nursery, me: int, tls=None):
        self.nursery = nursery
        self.me = me
        self.tls = tls                    # tls.ControlPlaneTLS, or None: plain TCP
        self.outboxes: dict[int, trio.MemorySendChannel] = {}
        self.addresses: dict[int, tuple[str, int]] = {}

    def set_peers(self, members: dict[int, dict]) -> None:
        for uid, info in members.items():
            if uid == self.me:
                continue
            self.addresses[uid] = (info["address"], info["gossip_port"])
            if uid not in self.outboxes:
                send, receive = trio.open_memory_channel(64)
                self.outboxes[uid] = send
                self.nursery.start_soon(self._outbox, uid, receive)
        for uid in set(self.outboxes) - set(members):
            self.outboxes.pop(uid).close()

    def send(self, uid: int, msg: dict) -> None:
        outbox = self.outboxes.get(uid)
        if outbox is not None:
            try:
                outbox.send_nowait(msg)
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass

    async def _outbox(self, uid: int, receive: trio.MemoryReceiveChannel) -> None:
        packer = msgpack.Packer(use_bin_type=True)
        stream = None
        retry_at = 0.0
        async with receive:
            async for msg in receive:
                if stream is None:
                    if trio.current_time() < retry_at:
                        continue
                    try:
                        stream = await open_stream(*self.addresses[uid], self.tls)
                    except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                        log.debug("gossip to node %d: %s", uid, exc)
                    if stream is None:
                        retry_at = trio.current_time() + 0.2
                        continue
                try:
                    with trio.fail_after(0.5):
                        await stream.send_all(packer.pack(msg))
                except (OSError, trio.BrokenResourceError, trio.TooSlowError):
                    await trio.aclose_forcefully(stream)
                    stream = None
                    retry_at = trio.current_time() + 0.1
        if stream is not None:
            await trio.aclose_forcefully(stream)


async def read_frames(stream: trio.abc.Stream):
    """Yield the msgpack maps arriving on a stream; stops at EOF or at a malformed frame."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=MAX_FRAME)
    async for data in stream:
        unpacker.feed(data)
        for msg in unpacker:
            if not isinstance(msg, dict):
                return
            yield msg


async def open_stream(address: str, port: int, tls=None) -> trio.abc.Stream:
    """A connection to a cluster_wd: over mutual TLS when `tls` (ControlPlaneTLS) is on. The
    TCP connection gets CONNECT_TIMEOUT (a partitioned peer must not hold the outbox long), the
    handshake HANDSHAKE_TIMEOUT; past either, trio.TooSlowError; a refused handshake is
    trio.BrokenResourceError."""
    with trio.fail_after(CONNECT_TIMEOUT):
        stream = await trio.open_tcp_stream(address, port)
    context = tls.client() if tls is not None else None
    if context is None:
        return stream
    secure = trio.SSLStream(stream, context, server_hostname=address)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await secure.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(secure)
        raise
    return secure


async def request(address: str, port: int, msg: dict, timeout: float = 2.0, *,
                  ssl_context=None) -> dict:
    """One admin request to a node's cluster_wd (the CLI and joining nodes use this), over
    TLS with `ssl_context` (a client certificate the cluster CA signed). A refused TLS
    handshake is a ConnectionError that says so (with TLS 1.3 the server's refusal of the
    client's certificate arrives with the first read)."""
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(address, port)
            if ssl_context is not None:
                stream = trio.SSLStream(stream, ssl_context, server_hostname=address)
            async with stream:
                await stream.send_all(msgpack.packb({"type": "admin", **msg}, use_bin_type=True))
                async for reply in read_frames(stream):
                    return reply
    except trio.BrokenResourceError as exc:
        raise ConnectionError(f"cluster_wd {address}:{port}: {handshake_error(exc)}") from None
    raise ConnectionError(f"cluster_wd {address}:{port} closed the connection")


class ClusterWatchdog:
    def __init__(self, config: NodeConfig, timings: Timings | None = None):
        self.config = config
        self.timings = timings or Timings()
        self.store = FileVoteStore(config.dir / "state.json")
        self.ccs_writable = False
        self._ccs = None
        self._ccs_position: tuple[int, int] | None = None   # None: the copy not read (yet)
        self._position_conn = None          # the copy, for the read before a vote
        self._position_lock = trio.Lock()
        self._term_written: int | None = None    # the term this node wrote to POSITION
        self._published = (None, None)   # (term, members version) written to CCS as master
        self._lease_written: float | None = None    # the majority_until in run/lease.json
        self._changed = trio.Event()
        self._stopping = False

    # ---- wiring --------------------------------------------------------------------------

    async def run(self) -> None:
        members, version = self.store.members() or (dict(self.config.peers), 0)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            if self.config.removed_file.exists():       # started again after its removal
                self._removed("started again after its removal")
            self.tls = self.config.control_plane_tls()
            self.gossip = Gossip(nursery, self.config.uid, self.tls)
            self.election = Election(self.config.uid, members, self.gossip.send, self.store,
                                     self.timings, ccs_position=lambda: self._ccs_position,
                                     members_version=version, on_change=self._on_change)
            self.gossip.set_peers(members)
            await nursery.start(partial(trio.serve_tcp, self._serve, self.config.gossip_port,
                                        host=self.config.address))
            nursery.start_soon(self.election.run)
            nursery.start_soon(self._reconcile_loop)
            nursery.start_soon(self._lease_file_loop)
            nursery.start_soon(self._join_loop)
            log.info("node %d: cluster_wd up on %s:%d, term %d, %d members", self.config.uid,
                     self.config.address, self.config.gossip_port, self.election.term,
                     len(members))

    def _on_change(self, obs: Observation) -> None:
        election = getattr(self, "election", None)   # None while Election starts
        if election is not None and self.store.data.get("members_version") != \
                election.members_version:
            self.store.save_members(election.members, election.members_version)
            self.gossip.set_peers(election.members)
        self._record(obs)
        self._write_lease(obs)
        self._changed.set()

    def _record(self, obs: Observation) -> None:
        if not self.config.record_history:
            return
        line = {"time": time.monotonic(), "wall": time.time(), "node": obs.node,
                "term": obs.term, "role": obs.role, "master": obs.master,
                "lease_until": monotonic_of(obs.lease_until), "started": obs.started,
                "ccs_writable": self.ccs_writable}
        with open(self.config.history_file, "a") as f:
            f.write(json.dumps(line) + "\n")

    def _write_lease(self, obs: Observation) -> None:
        """run/lease.json: heartbeatd fences the CCS copy itself if this lease runs out while
        the copy is still writable (cluster_wd gone or stuck); dmcproxy refuses writes once
        `majority_until` (Election.majority_until) has passed, or the file is not renewed."""
        lease = monotonic_of(obs.lease_until) if obs.role == MASTER else None
        election = getattr(self, "election", None)
        majority = monotonic_of(election.majority_until()) if election is not None else None
        self._lease_written = majority
        tmp = self.config.lease_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"term": obs.term, "role": obs.role, "master": obs.master,
                                   "lease_until": lease, "majority_until": majority}))
        tmp.replace(self.config.lease_file)

    async def _lease_file_loop(self) -> None:
        """A replica's majority_until moves on with every heartbeat of its master, which is
        no change for on_change: written here, when it moved."""
        while True:
            await trio.sleep(LEASE_FILE_EVERY)
            majority = monotonic_of(self.election.majority_until())
            written = self._lease_written
            if majority != written and (majority is None or written is None
                                        or abs(majority - written) >= LEASE_FILE_EVERY / 2):
                self._write_lease(self.election.observation())

    # ---- gossip in -----------------------------------------------------------------------

    async def _serve(self, stream: trio.SocketStream) -> None:
        context = self.tls.server()
        if context is not None:
            peer = stream.socket.getpeername()[0]
            stream = trio.SSLStream(stream, context, server_side=True)
            try:
                with trio.fail_after(2 * HANDSHAKE_TIMEOUT):
                    await stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
                # a node (or a client) without a certificate of the cluster CA: not heard
                self._refused(peer, exc)
                await trio.aclose_forcefully(stream)
                return
        try:
            async for msg in read_frames(stream):
                if msg.get("type") == "admin":
                    reply = self._admin(msg)
                    await stream.send_all(msgpack.packb(reply, use_bin_type=True))
                elif msg.get("type") == "vote_request":
                    # answered once the copy's position is read, in a task of its own: the
                    # heartbeats behind it on this stream are not held up by the read
                    self.nursery.start_soon(self._answer_vote, msg)
                else:
                    self.election.receive(msg)
        except (OSError, trio.BrokenResourceError, ValueError, msgpack.ExtraData,
                msgpack.FormatError, msgpack.StackError):
            pass

    def _refused(self, peer: str, exc: BaseException) -> None:
        """Logged once a minute per address: a foreign node retries every 0.2 s."""
        now = time.monotonic()
        refused = self.__dict__.setdefault("_refused_at", {})
        if now - refused.get(peer, -60) >= 60:
            refused[peer] = now
            log.warning("refused a control-plane connection from %s: %s", peer,
                        handshake_error(exc))

    def _admin(self, msg: dict) -> dict:
        e = self.election
        op = msg.get("op")
        if op == "status":
            return {"ok": True, "uid": e.uid, "term": e.term, "role": e.role,
                    "master": e.master, "is_master": e.is_master(),
                    "members": e.members, "members_version": e.members_version,
                    "ccs_writable": self.ccs_writable}
        if op == "removed":
            # This node was taken out of the cluster (node_remove's last step): it remembers
            # it (run/removed.json: it does not ask to join again) and stops its supervisord,
            # so every service of it stops; its shards were moved off before.
            self._removed("told by the master")
            return {"ok": True}
        if op not in ("join", "leave"):
            return {"ok": False, "error": f"unknown op {op!r}"}
        if not e.is_master():
            return {"ok": False, "error": "not the master", "master": e.master}
        members = dict(e.members)
        if op == "join":
            info = msg.get("member")
            if not isinstance(info, dict) or not isinstance(info.get("uid"), int):
                return {"ok": False, "error": "join needs a member with a uid"}
            known = members.get(info["uid"])
            if known == info:
                return {"ok": True, "members_version": e.members_version}
            if known is not None and known.get("address") != info.get("address"):
                return {"ok": False, "error": f"node id {info['uid']} is taken by "
                                              f"{known.get('address')}"}
            members[info["uid"]] = info
        else:
            uid = msg.get("uid")
            if uid not in members:
                return {"ok": False, "error": f"node {uid} is not a member"}
            if len(members) == 1:
                return {"ok": False, "error": "cannot remove the last node"}
            del members[uid]
        e.set_members(members, e.members_version + 1)
        log.info("members now %s (version %d)", sorted(members), e.members_version)
        return {"ok": True, "members_version": e.members_version}

    def _removed(self, how: str) -> None:
        """This node is no member any more: run/removed.json (it never asks to join again),
        then its supervisord stops, and with it every service of the node."""
        if self._stopping:
            return
        self._stopping = True
        atomic_write(self.config.removed_file, json.dumps({"time": time.time(), "how": how}))
        log.warning("node %d was removed from the cluster (%s): stopping its services",
                    self.config.uid, how)
        self.nursery.start_soon(self._stop_node)

    async def _stop_node(self) -> None:
        await trio.sleep(0.2)           # the answer to node_remove goes out first
        await trio.to_thread.run_sync(stop_removed_node, self.config)

    async def _join_loop(self) -> None:
        """A node not yet a member asks the nodes it knows until the master takes it in; a node
        that was removed never asks (`dmc node add` makes a new one). A member that hears no
        master asks the others for their membership: a newer one without this node means it
        was removed while it was down or cut off (it was never told), and it stops."""
        me = self.config.member_info()
        while True:
            if self.config.removed_file.exists():
                await trio.sleep(1)
                continue
            if self.config.uid in self.election.members:
                if self.election.master is None or self.election.role == CANDIDATE:
                    await self._check_still_member()
                await trio.sleep(1)
                continue
            for uid, info in list(self.election.members.items()):
                try:
                    reply = await request(info["address"], info["gossip_port"],
                                          {"op": "join", "member": me}, timeout=1.0,
                                          ssl_context=self.tls.client())
                except ConnectionError as exc:
                    if "TLS" in str(exc):
                        log.warning("join through node %d refused: %s", uid, exc)
                    continue
                except (OSError, trio.TooSlowError):
                    continue
                if reply.get("ok"):
                    log.info("joined through node %d", uid)
                    break
            await trio.sleep(0.5)

    async def _check_still_member(self) -> None:
        """Ask every other member for its membership; a newer version without this node is its
        removal (membership versions come from masters only, and a node taken back in is a
        new node with a new uid)."""
        e = self.election
        for uid, info in list(e.members.items()):
            if uid == self.config.uid:
                continue
            try:
                reply = await request(info["address"], info["gossip_port"], {"op": "status"},
                                      timeout=1.0, ssl_context=self.tls.client())
            except (OSError, trio.TooSlowError, ConnectionError, ValueError):
                continue
            version, members = reply.get("members_version"), reply.get("members")
            if isinstance(version, int) and isinstance(members, dict) and \
                    version > e.members_version and self.config.uid not in \
                    {int(k) for k in members}:
                self._removed(f"node {uid}'s membership version {version} has it no more")
                return

    # ---- CCS follows the election ----------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            with trio.move_on_after(RECONCILE_EVERY):
                await self._changed.wait()
            self._changed = trio.Event()
            try:
                await self._reconcile()
            except (RedisUnavailable, ReplyError) as exc:
                log.warning("ccs: %s", exc)
                self._ccs_position = None
                if self._ccs is not None:
                    await self._ccs.aclose()
                    self._ccs = None
                await trio.sleep(0.1)

    async def _reconcile(self) -> None:
        if self._ccs is None or self._ccs.closed:
            self._ccs = await ccs.connect_node(self.config)
        r = self._ccs
        role = await r.execute("ROLE")
        is_replica = role[0] == b"slave"
        self._ccs_position = await ccs.read_position(r)
        fenced = int((await r.execute("CONFIG", "GET", "min-replicas-to-write"))[1]) != 0
        e = self.election
        if e.is_master():
            if is_replica:
                await r.execute("REPLICAOF", "NO", "ONE")
            if fenced or self._term_written != e.term:
                # Writable, and in the same round trip at this term's position: every write
                # of this master is then ordered after every write of earlier terms, so a copy
                # restarted from an old AOF never counts as fresher than one that has them.
                # (The fence refuses the HSET before the CONFIG SET: one pipeline, which Redis
                # runs as it reads it, before any other client's command.)
                checked(await r.pipeline([("CONFIG", "SET", "min-replicas-to-write", 0),
                                          ("HSET", ccs.POSITION, "term", e.term),
                                          ("HINCRBY", ccs.POSITION, "index", 1)]))
                self._term_written = e.term
            if not self.ccs_writable:
                self._set_writable(True)
            if self._published != (e.term, e.members_version):
                await self._publish_as_master(r)
            return
        if not fenced and not is_replica:
            await r.execute("CONFIG", "SET", "min-replicas-to-write", FENCED_MIN_REPLICAS)
        if self.ccs_writable:
            # (Also when heartbeatd fenced the copy first, its lease out: the copy is not
            # writable any more, and the election history must not say it still is -- a chaos
            # run's partition showed a stepped-down node "writable" for 17 s.)
            self._set_writable(False)
        self._published = (None, None)
        master = e.members.get(e.master) if e.master != self.config.uid else None
        if master is not None:
            # over TLS (the copy's tls-replication) to the master's tls-port, when both have one
            port = master.get("ccs_tls_port") if self.config.cpine else None
            target = (master["address"].encode(), port or master["ccs_port"])
            if not is_replica or (role[1], role[2]) != target:
                await r.execute("REPLICAOF", master["address"], target[1])
                log.info("ccs: replicating node %d at %s:%d%s", e.master, *target,
                         " over TLS" if port else "")

    async def _answer_vote(self, msg: dict) -> None:
        await self._read_position()
        self.election.receive(msg)

    async def _read_position(self) -> None:
        """The copy's position read now (the reconcile's may be 0.3 s old); None if the copy
        does not answer, and the vote is refused."""
        async with self._position_lock:
            try:
                if self._position_conn is None or self._position_conn.closed:
                    self._position_conn = await ccs.connect_node(self.config)
                self._ccs_position = await ccs.read_position(self._position_conn)
            except (RedisUnavailable, ReplyError):
                self._ccs_position = None
                if self._position_conn is not None:
                    await self._position_conn.aclose()
                    self._position_conn = None

    def _set_writable(self, writable: bool) -> None:
        self.ccs_writable = writable
        log.info("ccs: %s in term %d at position %s", "writable" if writable else "fenced",
                 self.election.term, self._ccs_position)
        self._on_change(self.election.observation())

    async def _publish_as_master(self, r) -> None:
        """The master record and the member list, in one round trip, not waited for (the
        reconcile that fences the copy must not be held up; the next master writes its own)."""
        e = self.election
        me = self.config
        record = {"uid": me.uid, "term": e.term, "address": me.address,
                  "ccs_port": me.ccs_port, "ccs_tls_port": me.ccs_tls_port if me.cpine else 0,
                  "since": time.time()}
        # The cluster's name is set once, by its first master; a node that joins takes it
        # from CCS (LocalCluster.add_node), so node.json never decides it for the cluster.
        await ccs.commit(r, [("SET", ccs.MASTER, ccs.pack(record)),
                             ("PUBLISH", ccs.CHANGES, ccs.MASTER),
                             ("SET", ccs.FQDN, ccs.pack(me.cluster_fqdn), "NX"),
                             ("MULTI",), ("DEL", ccs.NODES)] + [
            ("HSET", ccs.NODES, str(uid), ccs.pack(info)) for uid, info in e.members.items()
        ] + [("SET", ccs.NODES_VERSION, ccs.pack(e.members_version)),
             ("PUBLISH", ccs.CHANGES, ccs.NODES), ("EXEC",)], wait=False)
        self._published = (e.term, e.members_version)


def stop_removed_node(config: NodeConfig) -> None:
    """Stop every shard process left on the node, then its supervisord (and so this service)."""
    stop_all(config)
    try:
        supervisor_rpc(config.supervisor_sock).supervisor.shutdown()
    except (OSError, xmlrpc.client.Error) as exc:
        log.warning("supervisord not stopped: %s", exc)


main = service_command("cluster_wd", ClusterWatchdog)

if __name__ == "__main__":
    main()
