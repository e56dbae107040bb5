"""dmcproxy: one database endpoint in front of its redis-server shards.

    dmcproxy --port 12000 --shard 127.0.0.1:7001 --shard 127.0.0.1:7002 --shard 127.0.0.1:7003
    dmcproxy --config db1.toml

The 16384 hash slots are split evenly over the shards in the order given, unless the config
file gives explicit slot ranges. On SIGHUP the config file is read again and its shard map
installed with the next version, without dropping client connections. With
--tls-cert-file/--tls-key-file the endpoint speaks TLS to its clients (terminated in the compiled
loop, dmc/fastpath/tls.pxi), optionally verifying their certificates against --tls-ca-cert-file;
SIGHUP loads the certificate files again (clients already connected keep theirs). With
--shard-tls the proxy's connections to its shards speak TLS (their tls-port, the shards'
certificates verified against --shard-tls-ca-cert-file, --shard-tls-cert-file/--shard-tls-key-file
presented as the proxy's own: a database's data_internode_encryption). This module
only sets things up and handles those rare events; the per-command work is in dmc._fastpath.
"""

from __future__ import annotations

import signal
import socket
import ssl
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field

import click

from dmc import _fastpath, cluster_api
from dmc.commands import table_from_shards
from dmc.shard_map import ShardMap


# redis-server's tls-auth-clients values -> Proxy.set_tls's client_auth
TLS_AUTH_CLIENTS = {"no": "none", "optional": "optional", "yes": "required"}


@dataclass
class ProxyConfig:
    port: int = 12000
    bind: str = "127.0.0.1"
    shards: list[tuple[str, int]] = field(default_factory=list)
    slot_ranges: list[list[tuple[int, int]]] | None = None
    max_clients: int = 10000
    backend_timeout_ms: int = 5000
    conns_per_shard: int = 1
    client_output_limit_mb: int = 256
    client_query_buffer_limit: int = 1 << 30   # Redis's default: a client's unparsed input
    maxmemory_clients: int = 0      # the process's input budget, every client's (0: none)
    password: str = ""
    timeout: int = 0
    multi_slot_commands: str = "refuse"
    tracking_max_keys: int = 0      # CLIENT TRACKING: keys the proxy remembers (0: Redis's 1000000)
    wait_shards_s: float = 30.0
    hold_ms: int = 0            # a request for a shard that is down waits this long for a new map
    fence_hold_ms: int = 0      # a request the node's fence refuses waits this long for it first
    oss_cluster: bool = False   # the OSS Cluster API, this proxy the cluster's one node (cluster_api)
    threads: int = 1            # worker threads (event loops) serving the port (dmc/endpoint.py)
    tls_cert_file: str = ""     # client TLS: the endpoint's certificate (PEM chain); "": plaintext
    tls_key_file: str = ""      #   and its key
    tls_ca_cert_file: str = ""  #   CA(s) client certificates are verified against
    tls_auth_clients: str = "no"    # no | optional | yes, as redis-server's tls-auth-clients
    tls_authorized_names: list[str] = field(default_factory=list)   # a client certificate's
                                #   subject CN or DNS SAN must be one of them (none: any)
    tls_min_version: str = "1.2"    # "1.2" | "1.3": clients and shards (min_data_TLS_version)
    tls_ciphers: str = ""       # TLS 1.2 cipher list, OpenSSL's syntax ("": its defaults)
    tls_ciphersuites: str = ""  # TLS 1.3 ciphersuites ("": OpenSSL's defaults)
    tls_handshake_timeout: float = 10.0     # s a client may take for its handshake (0: forever)
    shard_tls: bool = False     # shard TLS: the shards' addresses are their tls-ports
    shard_tls_ca_cert_file: str = ""    # the shards' certificates are verified against it
    shard_tls_cert_file: str = ""       # the proxy's client certificate (PEM) and key, if any
    shard_tls_key_file: str = ""

    def apply_shard_tls(self, proxy: _fastpath.Proxy) -> None:
        """The shard TLS settings on proxy (between two turns of its loop), files loaded now."""
        if not self.shard_tls:
            proxy.set_shard_tls(None)
            return
        if not self.shard_tls_ca_cert_file:
            raise ValueError("shard TLS needs the CA file the shards' certificates verify against")
        proxy.set_shard_tls(self.shard_tls_ca_cert_file, self.shard_tls_cert_file or None,
                            self.shard_tls_key_file or self.shard_tls_cert_file or None,
                            self.tls_min_version, self.tls_ciphers, self.tls_ciphersuites)

    def shard_ssl_context(self) -> ssl.SSLContext | None:
        """The same, for the blocking connections made before the loop runs (COMMAND)."""
        if not self.shard_tls:
            return None
        context = ssl.create_default_context(cafile=self.shard_tls_ca_cert_file or None)
        context.check_hostname = False      # (as the loop's: the CA signs only the cluster's nodes)
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        if self.tls_min_version == "1.3":
            context.minimum_version = ssl.TLSVersion.TLSv1_3
        if self.shard_tls_cert_file:
            context.load_cert_chain(self.shard_tls_cert_file,
                                    self.shard_tls_key_file or self.shard_tls_cert_file)
        return context

    def apply_tls(self, proxy: _fastpath.Proxy) -> None:
        """The TLS settings on proxy (between two turns of its loop): loaded from the files
        now, so calling it again rotates the certificate for new connections."""
        if self.tls_auth_clients not in TLS_AUTH_CLIENTS:
            raise ValueError(f"tls_auth_clients must be one of {', '.join(TLS_AUTH_CLIENTS)}, "
                             f"not {self.tls_auth_clients!r}")
        if not self.tls_cert_file:
            proxy.set_tls(None)
            return
        proxy.set_tls(self.tls_cert_file, self.tls_key_file or self.tls_cert_file,
                      self.tls_ca_cert_file or None, TLS_AUTH_CLIENTS[self.tls_auth_clients],
                      self.tls_authorized_names, self.tls_min_version, self.tls_ciphers,
                      self.tls_ciphersuites)
        proxy.tls_handshake_timeout = self.tls_handshake_timeout

    def shard_map(self, version: int) -> ShardMap:
        if self.slot_ranges:
            return ShardMap(version, tuple(self.shards),
                            tuple(tuple(map(tuple, r)) for r in self.slot_ranges))
        return ShardMap.even(self.shards, version)


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {text!r}")
    return socket.gethostbyname(host or "127.0.0.1"), int(port)


def load_config(path: str) -> ProxyConfig:
    """A TOML file:

        port = 12000
        bind = "127.0.0.1"
        shards = ["127.0.0.1:7001", "127.0.0.1:7002"]
        # optional: explicit ranges, one list per shard
        slots = [[[0, 8191]], [[8192, 16383]]]
        max_clients = 10000
        backend_timeout_ms = 5000
        conns_per_shard = 1
        client_output_limit_mb = 256
        client_query_buffer_limit = 1073741824   # bytes of unparsed input a client may hold
        maxmemory_clients = 0   # bytes of unparsed input of all clients together (0: no limit)
        password = ""        # the database password (AUTH / HELLO AUTH, user `default`)
        timeout = 0          # seconds a client may stay idle (0: forever), as Redis's `timeout`
        hold_ms = 0          # a request for a shard that is down waits this long for a new map
        multi_slot_commands = "refuse"   # or "sequential": keys of several shards in steps
        oss_cluster = false  # the OSS Cluster API: CLUSTER SLOTS ... with this proxy as the one node
        threads = 1          # worker threads serving the port (their own clients and shard connections)
        tracking_max_keys = 0   # CLIENT TRACKING keys remembered, as tracking-table-max-keys (0: 1000000)
        tls_cert_file = ""   # client TLS: certificate (PEM, chain) and key; "": plaintext
        tls_key_file = ""
        tls_ca_cert_file = ""   # client certificates are verified against these CAs
        tls_auth_clients = "no" # "optional" or "yes" (a client certificate is required)
        tls_authorized_names = []   # names (CN or DNS SAN) a client certificate must carry one of
        tls_min_version = "1.2"     # or "1.3", for clients and shards
        tls_ciphers = ""            # TLS 1.2 cipher list ("": OpenSSL's defaults)
        tls_ciphersuites = ""       # TLS 1.3 ciphersuites
        tls_handshake_timeout = 10.0    # a client still in its TLS handshake after this is closed
        shard_tls = false    # connections to the shards over TLS (the shards' tls-ports)
        shard_tls_ca_cert_file = ""  # the shards' certificates verify against it
        shard_tls_cert_file = ""     # the proxy's client certificate and key (tls-auth-clients)
        shard_tls_key_file = ""
    """
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    known = {"port", "bind", "shards", "slots", "max_clients", "backend_timeout_ms",
             "conns_per_shard", "client_output_limit_mb", "client_query_buffer_limit",
             "maxmemory_clients", "password", "timeout", "wait_shards_s", "multi_slot_commands",
             "tracking_max_keys", "hold_ms", "oss_cluster", "threads", "tls_cert_file",
             "tls_key_file", "tls_ca_cert_file", "tls_auth_clients", "tls_authorized_names",
             "tls_min_version", "tls_ciphers", "tls_ciphersuites", "tls_handshake_timeout",
             "shard_tls",
             "shard_tls_ca_cert_file", "shard_tls_cert_file", "shard_tls_key_file"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown settings in {path}: {', '.join(sorted(unknown))}")
    cfg = ProxyConfig()
    for key in known - {"shards", "slots"}:
        if key in raw:
            setattr(cfg, key, type(getattr(cfg, key))(raw[key]))
    cfg.shards = [parse_address(s) for s in raw.get("shards", [])]
    if "slots" in raw:
        cfg.slot_ranges = [[tuple(r) for r in shard] for shard in raw["slots"]]
    return cfg


def listen(bind: str, port: int, reuse_port: bool = False) -> socket.socket:
    """reuse_port: one of several sockets on the same port (an endpoint's worker threads), among
    which the kernel spreads the connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((bind, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def bind_failure(bind: str, port: int) -> str | None:
    """Why `listen(bind, port)` fails here now (None: it works); the socket is closed again."""
    try:
        listen(bind, port).close()
        return None
    except OSError as exc:
        return f"{bind}:{port}: {exc.strerror or exc}"


def wait_for_table(shards, deadline_s: float, ssl_context: ssl.SSLContext | None = None):
    """(command table, redis_version) from the first shard that answers; shards may still be
    starting."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return table_from_shards(shards, ssl_context=ssl_context)
        except ConnectionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


def open_proxy(cfg: ProxyConfig, shard_map: ShardMap,
               reuse_port: bool = False) -> tuple[socket.socket, _fastpath.Proxy]:
    """The listening socket on cfg.bind:cfg.port and a Proxy serving it with cfg's limits and
    password, its command table from the map's shards (waited for up to cfg.wait_shards_s),
    shard_map installed, TLS set up if cfg asks for it. The one way a database endpoint is
    built: dmcproxy and
    dmc.endpoint.Endpoint both use it. The caller owns the socket."""
    sock = listen(cfg.bind, cfg.port, reuse_port)
    try:
        table, version = wait_for_table(list(shard_map.shards), cfg.wait_shards_s,
                                        cfg.shard_ssl_context())
        proxy = _fastpath.Proxy(sock.fileno(), table, max_clients=cfg.max_clients,
                                backend_timeout_ms=cfg.backend_timeout_ms,
                                conns_per_shard=cfg.conns_per_shard, server_version=version,
                                client_output_limit=cfg.client_output_limit_mb << 20,
                                password=cfg.password or None, idle_timeout_s=cfg.timeout,
                                multi_slot_commands=cfg.multi_slot_commands,
                                tracking_max_keys=cfg.tracking_max_keys,
                                client_query_limit=cfg.client_query_buffer_limit,
                                hold_ms=cfg.hold_ms, fence_hold_ms=cfg.fence_hold_ms)
        cfg.apply_tls(proxy)
        cfg.apply_shard_tls(proxy)
        install_shard_map(proxy, shard_map)
        if cfg.oss_cluster:
            apply_standalone_cluster(proxy, shard_map, sock.getsockname()[:2])
    except BaseException:
        sock.close()
        raise
    return sock, proxy


def install_shard_map(proxy: _fastpath.Proxy, shard_map: ShardMap) -> bool:
    """Between two turns of proxy's loop; False when the map is not newer than the proxy's."""
    return proxy.apply_shard_map(shard_map.version, list(shard_map.shards),
                                 shard_map.slot_owners())


def apply_standalone_cluster(proxy: _fastpath.Proxy, shard_map: ShardMap, myself) -> None:
    """The OSS Cluster API of a standalone dmcproxy: one node, itself, serves every slot."""
    host, port = myself
    if host == "0.0.0.0":
        host = "127.0.0.1"
    cluster_api.apply(proxy, shard_map, lambda shard: (host, port), (host, port))


class ProxyService:
    """The proxy process: listening socket, command table, shard map, signals."""

    def __init__(self, cfg: ProxyConfig, config_path: str | None = None):
        if not cfg.shards:
            raise ValueError("at least one shard is needed")
        self.cfg = cfg
        self.config_path = config_path
        _fastpath.set_input_budget(cfg.maxmemory_clients)
        self.endpoint = None
        if cfg.threads > 1:
            from dmc.endpoint import Endpoint     # (it builds its proxies with open_proxy)
            settings = {k: v for k, v in vars(cfg).items()
                        if k not in ("port", "bind", "shards", "slot_ranges", "password",
                                     "threads")}
            self.endpoint = Endpoint(cfg.bind, cfg.port, cfg.password, cfg.shard_map(version=1),
                                     threads=cfg.threads, **settings)
            self.sock, self.proxy = self.endpoint.sock, self.endpoint.proxy
        else:
            self.sock, self.proxy = open_proxy(cfg, cfg.shard_map(version=1))
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()

    def apply(self, shard_map: ShardMap) -> bool:
        def install(proxy):
            installed = install_shard_map(proxy, shard_map)
            if installed and self.cfg.oss_cluster:
                apply_standalone_cluster(proxy, shard_map, self.sock.getsockname()[:2])
            return installed
        # One thread: signal handlers run between two turns of the loop; else every worker.
        return self.endpoint.call(install) if self.endpoint else install(self.proxy)

    def reload(self) -> None:
        """SIGHUP: the certificate files loaded again, the config file's shard map installed."""
        cfg = self.cfg
        try:
            if self.config_path:
                cfg = load_config(self.config_path)
                for name in ("tls_cert_file", "tls_key_file", "tls_ca_cert_file",
                             "tls_auth_clients", "tls_authorized_names", "tls_min_version",
                             "tls_ciphers", "tls_ciphersuites", "tls_handshake_timeout"):
                    setattr(self.cfg, name, getattr(cfg, name))
            if self.cfg.tls_cert_file or self.proxy.tls:
                if self.endpoint:
                    self.endpoint.call(self.cfg.apply_tls)
                else:
                    self.cfg.apply_tls(self.proxy)
                log(f"TLS certificate loaded from {self.cfg.tls_cert_file}"
                    if self.cfg.tls_cert_file else "TLS off")
        except (OSError, ValueError) as exc:
            log(f"reload failed, keeping the TLS settings in use: {exc}")
            return
        if not self.config_path:
            return
        try:
            self.apply(cfg.shard_map(version=self.proxy.map_version + 1))
            log(f"shard map version {self.proxy.map_version} from {self.config_path}")
        except (OSError, ValueError) as exc:
            log(f"reload failed, keeping shard map version {self.proxy.map_version}: {exc}")

    def serve(self) -> None:
        if self.endpoint is None:
            signal.signal(signal.SIGTERM, lambda *_: self.proxy.stop())
            signal.signal(signal.SIGINT, lambda *_: self.proxy.stop())
            signal.signal(signal.SIGHUP, lambda *_: self.reload())
            self.proxy.run()
            self.sock.close()
            return
        # Worker threads serve; the main thread waits for signals.
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload())
        self.endpoint.start()
        while not self._stop.wait(0.2):
            pass
        self.endpoint.stop()


def log(msg: str) -> None:
    print(f"dmcproxy: {msg}", file=sys.stderr, flush=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--port", type=int, help="Port of the database endpoint (0: any free port). [12000]")
@click.option("--bind", help="Address to listen on. [127.0.0.1]")
@click.option("--shard", "shards", multiple=True, metavar="HOST:PORT",
              help="A shard, in slot order; repeat for each shard.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML config file; re-read on SIGHUP.")
@click.option("--max-clients", type=int, help="Most client connections at once. [10000]")
@click.option("--backend-timeout-ms", type=int,
              help="A shard that has not answered in this time is reconnected; its pending "
                   "commands get an error (0: never). [5000]")
@click.option("--conns-per-shard", type=int, help="Pipelined connections per shard. [1]")
@click.option("--client-output-limit-mb", type=int,
              help="A client owed more reply bytes than this is disconnected (0: no limit). [256]")
@click.option("--client-query-buffer-limit", type=int,
              help="A client holding more unparsed input (bytes) is disconnected, as Redis's "
                   "client-query-buffer-limit (0: no limit). [1073741824]")
@click.option("--maxmemory-clients", type=int,
              help="Budget of unparsed input of all clients (bytes): past it the clients with "
                   "the most are disconnected, as Redis's client eviction (0: none). [0]")
@click.option("--password", help="Database password: clients must AUTH (user `default`).")
@click.option("--timeout", type=int, help="Close clients idle this many seconds (0: never). [0]")
@click.option("--multi-slot-commands", type=click.Choice(["refuse", "sequential"]),
              help="Multi-key commands over keys of several shards: refuse (CROSSSLOT) or "
                   "sequential (carried out in single-shard steps). [refuse]")
@click.option("--tracking-max-keys", type=int,
              help="CLIENT TRACKING: keys remembered; past it, keys are evicted with an "
                   "invalidation, as Redis's tracking-table-max-keys (0: 1000000). [0]")
@click.option("--threads", type=click.IntRange(1, 64),
              help="Worker threads serving the port, each with its own event loop, clients and "
                   "shard connections (SO_REUSEPORT spreads the connections). [1]")
@click.option("--tls-cert-file", type=click.Path(exists=True, dir_okay=False),
              help="Client TLS: the endpoint's certificate (PEM, with its chain); clients must "
                   "speak TLS.")
@click.option("--tls-key-file", type=click.Path(exists=True, dir_okay=False),
              help="The certificate's private key (PEM).")
@click.option("--tls-ca-cert-file", type=click.Path(exists=True, dir_okay=False),
              help="CA certificate(s) client certificates are verified against.")
@click.option("--tls-auth-clients", type=click.Choice(list(TLS_AUTH_CLIENTS)),
              help="Client certificates: no (not asked for), optional (verified if sent) or "
                   "yes (required), as redis-server's tls-auth-clients. [no]")
@click.option("--tls-authorized-name", "tls_authorized_names", multiple=True, metavar="NAME",
              help="A client certificate must name one of these (subject CN or DNS SAN, "
                   "exactly); repeat for each. [any]")
@click.option("--tls-min-version", type=click.Choice(["1.2", "1.3"]),
              help="Oldest TLS version accepted from clients and used to shards. [1.2]")
@click.option("--tls-ciphers", help="TLS 1.2 cipher list (OpenSSL's syntax). [OpenSSL's]")
@click.option("--tls-ciphersuites", help="TLS 1.3 ciphersuites (OpenSSL's syntax). [OpenSSL's]")
@click.option("--tls-handshake-timeout", type=float,
              help="Seconds a client may take for its TLS handshake; then it is closed "
                   "(0: no limit). [10]")
@click.option("--shard-tls", is_flag=True, default=None,
              help="Connect to the shards over TLS (the --shard addresses are their tls-ports).")
@click.option("--shard-tls-ca-cert-file", type=click.Path(exists=True, dir_okay=False),
              help="CA certificate(s) the shards' certificates are verified against.")
@click.option("--shard-tls-cert-file", type=click.Path(exists=True, dir_okay=False),
              help="The proxy's client certificate for the shards (PEM; tls-auth-clients yes).")
@click.option("--shard-tls-key-file", type=click.Path(exists=True, dir_okay=False),
              help="Its private key (PEM).")
@click.option("--oss-cluster", is_flag=True, default=None,
              help="The OSS Cluster API: CLUSTER SLOTS/SHARDS/NODES ... answered with this proxy "
                   "as the cluster's one node, for cluster clients.")
def main(port, bind, shards, config_path, max_clients, backend_timeout_ms, conns_per_shard,
         client_output_limit_mb, client_query_buffer_limit, maxmemory_clients, password,
         timeout, multi_slot_commands, tracking_max_keys, threads, tls_cert_file, tls_key_file,
         tls_ca_cert_file, tls_auth_clients, tls_authorized_names, tls_min_version, tls_ciphers,
         tls_ciphersuites, tls_handshake_timeout, shard_tls, shard_tls_ca_cert_file, shard_tls_cert_file,
         shard_tls_key_file, oss_cluster):
    """Serve one database over its redis-server shards."""
    try:
        cfg = load_config(config_path) if config_path else ProxyConfig()
        for name, value in (("port", port), ("bind", bind), ("max_clients", max_clients),
                            ("backend_timeout_ms", backend_timeout_ms),
                            ("conns_per_shard", conns_per_shard),
                            ("client_output_limit_mb", client_output_limit_mb),
                            ("client_query_buffer_limit", client_query_buffer_limit),
                            ("maxmemory_clients", maxmemory_clients),
                            ("password", password), ("timeout", timeout),
                            ("multi_slot_commands", multi_slot_commands),
                            ("tracking_max_keys", tracking_max_keys),
                            ("oss_cluster", oss_cluster), ("threads", threads),
                            ("tls_cert_file", tls_cert_file), ("tls_key_file", tls_key_file),
                            ("tls_ca_cert_file", tls_ca_cert_file),
                            ("tls_auth_clients", tls_auth_clients),
                            ("tls_authorized_names", list(tls_authorized_names) or None),
                            ("tls_min_version", tls_min_version), ("tls_ciphers", tls_ciphers),
                            ("tls_ciphersuites", tls_ciphersuites),
                            ("tls_handshake_timeout", tls_handshake_timeout),
                            ("shard_tls", shard_tls),
                            ("shard_tls_ca_cert_file", shard_tls_ca_cert_file),
                            ("shard_tls_cert_file", shard_tls_cert_file),
                            ("shard_tls_key_file", shard_tls_key_file)):
            if value is not None:
                setattr(cfg, name, value)
        if shards:
            cfg.shards = [parse_address(s) for s in shards]
        service = ProxyService(cfg, config_path)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    # The first line on stdout is the contract with scripts and tests: the port we serve.
    print(f"dmcproxy listening on {cfg.bind}:{service.port} over {len(cfg.shards)} shards"
          + (" (TLS)" if cfg.tls_cert_file else ""), flush=True)
    service.serve()


if __name__ == "__main__":
    main()
