"""pdns_server: the authoritative DNS server of the cluster's zone (its FQDN, `dmc cluster create
--name`, default `cluster.dmc.local`), on every node at the node's `dns_port`, UDP and TCP.

The zone (see control/discovery.py for which nodes a database's names give):
    <fqdn>                          SOA (this node the primary; the serial CCS's
                                    cluster:dns_zone, the same on every node), NS:
                                    node<uid>.<fqdn> of every node whose heartbeat is alive
    node<uid>.<fqdn>                A: the node's address
    redis-<port>.<fqdn>             A: the nodes whose proxies serve the database, per its proxy
    redis-<port>.internal.<fqdn>       policy (the master endpoint first)
Every record has a TTL of discovery.DNS_TTL seconds, short enough to follow a failover. A name
of the zone that does not exist answers NXDOMAIN (with the SOA, for negative caching), a name
that exists without records of the type asked NOERROR with no answer, a name outside the zone
REFUSED, an opcode other than QUERY NOTIMP. A UDP answer longer than the client can take (512
bytes, or its EDNS size) is sent truncated (TC) and the client retries over TCP.

Packets are parsed and written by dnslib; anything it cannot parse, and anything that is not a
query, is dropped without an answer. The view comes from the node's own CCS copy and answering
never waits on it: while CCS is away, the last view is served (after a restart, the one
kept on disk: control/discovery_follower.py). On the master node it also moves the zone's
serial on in CCS when the zone changes (its only write).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from functools import partial

import trio
from dnslib import (
    AAAA,
    EDNS0,
    NS,
    OPCODE,
    QTYPE,
    RCODE,
    RR,
    SOA,
    A,
    DNSHeader,
    DNSRecord,
)

from control import ccs
from control.discovery import DNS_TTL, DiscoveryView, node_dns_name
from control.cluster_view import master_here
from control.discovery_follower import READ_TIMEOUT, REFRESH_EVERY, ViewFollower, bump_serial
from control.redis_client import RedisUnavailable, ReplyError
from control.node import NodeConfig, service_command

log = logging.getLogger("pdns_server")

UDP_PLAIN_SIZE = 512        # RFC 1035, without EDNS
EDNS_SIZE = 1232            # the largest UDP answer we send (the DNS flag day's figure)
TCP_IDLE = 10.0             # a TCP connection without a query for this long is closed
SOA_TIMES = (60, 30, 600, DNS_TTL)    # refresh, retry, expire, minimum (negative-cache TTL)


def answer(request: DNSRecord, view: DiscoveryView, me: int, serial: int) -> DNSRecord | None:
    """The reply to one parsed request; None when nothing should be answered."""
    if request.header.qr:
        return None                         # a response sent to us: never answer it
    reply = DNSRecord(DNSHeader(id=request.header.id, bitmap=request.header.bitmap, qr=1,
                                aa=1, ra=0), q=request.q)
    reply.header.ad = 0                     # nothing here is DNSSEC-validated
    if _edns(request) is not None:
        reply.add_ar(EDNS0(udp_len=EDNS_SIZE))
    if request.header.opcode != OPCODE.QUERY:
        reply.header.rcode = RCODE.NOTIMP
        return reply
    if len(request.questions) != 1:
        reply.header.rcode = RCODE.FORMERR
        return reply
    zone = view.fqdn.lower().rstrip(".")
    question = request.questions[0]
    name = str(question.qname).lower().rstrip(".")
    if name != zone and not name.endswith("." + zone):
        reply.header.aa = 0
        reply.header.rcode = RCODE.REFUSED
        return reply
    qtype = question.qtype
    soa = RR(zone + ".", QTYPE.SOA, ttl=DNS_TTL, rdata=SOA(
        node_dns_name(me, zone) + ".", f"hostmaster.{zone}.", (serial, *SOA_TIMES)))
    records = view.dns_records()
    if name == zone:
        if qtype in (QTYPE.SOA, QTYPE.ANY):
            reply.add_answer(soa)
        if qtype in (QTYPE.NS, QTYPE.ANY):
            for node in view.name_servers():
                reply.add_answer(RR(zone + ".", QTYPE.NS, ttl=DNS_TTL,
                                    rdata=NS(node_dns_name(node.uid, zone) + ".")))
                reply.add_ar(*_address_records(node_dns_name(node.uid, zone), (node.address,),
                                               QTYPE.ANY))
        if not reply.rr:
            reply.add_auth(soa)
        return reply
    if name in records:
        reply.add_answer(*_address_records(str(question.qname), records[name], qtype))
        if not reply.rr:
            reply.add_auth(soa)           # the name exists, not with this type: NODATA
        return reply
    if not any(known.endswith("." + name) for known in records):   # not even a parent of one
        reply.header.rcode = RCODE.NXDOMAIN
    reply.add_auth(soa)
    return reply


def _address_records(name: str, addresses, qtype: int) -> list[RR]:
    out = []
    for address in addresses:
        is_v6 = ipaddress.ip_address(address).version == 6
        if qtype in (QTYPE.ANY, QTYPE.AAAA if is_v6 else QTYPE.A):
            rdata = AAAA(address) if is_v6 else A(address)
            out.append(RR(name, QTYPE.AAAA if is_v6 else QTYPE.A, ttl=DNS_TTL, rdata=rdata))
    return out


def _edns(request: DNSRecord):
    return next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)


def handle(packet: bytes, view: DiscoveryView, me: int, serial: int, *,
           udp: bool) -> bytes | None:
    """The answer to one packet as bytes, or None to drop it (it does not parse)."""
    try:
        request = DNSRecord.parse(packet)
        reply = answer(request, view, me, serial)
        if reply is None:
            return None
        data = reply.pack()
    except Exception as exc:    # noqa: BLE001 - any packet from anyone: whatever dnslib
        # raises on it (DNSError mostly, but also struct or unicode errors) drops the packet
        log.debug("dropped a malformed packet (%d bytes): %r", len(packet), exc)
        return None
    if udp:
        opt = _edns(request)
        limit = min(max(opt.rclass, UDP_PLAIN_SIZE), EDNS_SIZE) if opt else UDP_PLAIN_SIZE
        if len(data) > limit:
            truncated = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap,
                                            tc=1), q=request.q)
            data = truncated.pack()
    return data


def free_dns_port(host: str, exclude=()) -> int:
    """A port free right now for both UDP and TCP (the DNS server binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            if port in exclude:
                continue
            with socket.socket() as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
            return port


class PdnsServer:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.session = ccs.Session.of_node(config)
        self.follower = ViewFollower(self.session, config.cluster_fqdn,
                                     cache=config.run_dir / "discovery_view.pdns_server.json")

    def _handle(self, packet: bytes, *, udp: bool) -> bytes | None:
        view = self.follower.view
        return handle(packet, view, self.config.uid, max(view.serial, 1), udp=udp)

    async def _keep_serial(self) -> None:
        """On the master node: the zone's serial in CCS moves on when the zone changes, so
        every node answers the same SOA serial for the same zone (never a per-node clock)."""
        while True:
            try:
                with trio.fail_after(READ_TIMEOUT):
                    local = await self.session.local()
                    if await master_here(local, self.config.uid) and self.follower.view.read_at:
                        serial = await bump_serial(local, self.follower.view)
                        if serial is not None:
                            log.info("zone %s: serial %d", self.follower.view.fqdn, serial)
            except (RedisUnavailable, ReplyError, OSError, trio.TooSlowError) as exc:
                log.debug("serial not checked: %s", exc)
            await self.session.wait_changed(REFRESH_EVERY)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        udp = trio.socket.socket(socket.AF_INET6 if ":" in self.config.address
                                 else socket.AF_INET, socket.SOCK_DGRAM)
        await udp.bind((self.config.address, self.config.dns_port))
        with udp:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.follower.run)
                nursery.start_soon(self._serve_udp, udp)
                nursery.start_soon(self._keep_serial)
                await nursery.start(partial(trio.serve_tcp, self._serve_tcp,
                                            self.config.dns_port, host=self.config.address))
                log.info("node %d: pdns_server for %s on %s:%d (UDP, TCP)", self.config.uid,
                         self.config.cluster_fqdn, self.config.address, self.config.dns_port)
                task_status.started()

    async def _serve_udp(self, sock) -> None:
        while True:
            try:
                packet, peer = await sock.recvfrom(65535)
            except OSError:         # an ICMP error of an earlier answer, reported here
                continue
            data = self._handle(packet, udp=True)
            if data is not None:
                try:
                    await sock.sendto(data, peer)
                except OSError as exc:
                    log.debug("answer to %s not sent: %s", peer, exc)

    async def _serve_tcp(self, stream: trio.SocketStream) -> None:
        """Queries on one connection, each with a two-byte length (RFC 1035 4.2.2)."""
        buffer = bytearray()
        try:
            while True:
                while len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
                    with trio.move_on_after(TCP_IDLE) as idle:
                        data = await stream.receive_some(65537)
                    if idle.cancelled_caught or not data:
                        return
                    buffer += data
                size = int.from_bytes(buffer[:2], "big")
                packet, buffer[:] = bytes(buffer[2:2 + size]), buffer[2 + size:]
                data = self._handle(packet, udp=False)
                if data is None:
                    return           # a malformed query: the connection is dropped
                await stream.send_all(len(data).to_bytes(2, "big") + data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


main = service_command("pdns_server", PdnsServer)

if __name__ == "__main__":
    main()
