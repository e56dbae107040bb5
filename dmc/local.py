"""The embedded local default: N redis-server shards and one dmcproxy in front of them, on
127.0.0.1, started as background processes of their own.

Used by `dmc local start|stop|status` (the README's first command), and by the tests and
benchmarks, which need exactly the same real processes. Everything it starts is recorded in a
state file so that `stop` (or a test's teardown) can take it all down again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dmc.processes import (REDIS_SERVER, free_port, pid_alive, port_is_free, stop_process,
                           wait_for_port)


def start_redis(port: int, workdir: Path, *extra: str) -> subprocess.Popen:
    """A redis-server on 127.0.0.1:port with no persistence, in its own session."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / f"redis-{port}.log", "ab")
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no", *extra],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        wait_for_port(port, proc=proc)
    except (RuntimeError, TimeoutError):
        stop_process(proc)
        raise
    return proc


def start_redis_on_free_port(workdir: Path, *extra: str, attempts: int = 3):
    """(port, process) of a redis-server on a port found free; another process may take the
    port between the check and redis's bind, so a few ports are tried."""
    cluster = "--cluster-enabled" in extra
    for attempt in range(attempts):
        port = free_port(below=65536 - 10000 if cluster else 65536)
        try:
            return port, start_redis(port, workdir, *extra)
        except (RuntimeError, TimeoutError):
            if attempt == attempts - 1:
                raise



@contextmanager
def redis_servers(workdir: Path, count: int, *extra: str) -> Iterator[list[tuple[int, subprocess.Popen]]]:
    """`count` redis-servers on free ports, [(port, process)], stopped on the way out."""
    started = []
    try:
        for _ in range(count):
            started.append(start_redis_on_free_port(workdir, *extra))
        yield started
    finally:
        for _, proc in started:
            stop_process(proc)


def start_proxy(shards: list[tuple[str, int]], port: int = 0, workdir: Path | None = None,
                *extra: str) -> tuple[subprocess.Popen, int]:
    """A dmcproxy over the shards; returns the process and the port it serves."""
    args = [sys.executable, "-m", "dmc.proxy", "--port", str(port)]
    for host, p in shards:
        args += ["--shard", f"{host}:{p}"]
    args += list(extra)
    stderr = open(workdir / "dmcproxy.log", "ab") if workdir else None
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
    if stderr:
        stderr.close()
    line = proc.stdout.readline().decode()
    if not line.startswith("dmcproxy listening on"):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"dmcproxy did not start: {line!r}")
    served = int(line.split()[3].rsplit(":", 1)[1])
    return proc, served


@dataclass
class LocalDatabase:
    """What `dmc local start` started, as written to its state file."""
    workdir: str
    port: int
    proxy_pid: int
    shards: list[dict] = field(default_factory=list)    # {"port": .., "pid": ..}

    @property
    def state_file(self) -> Path:
        return Path(self.workdir) / "local.json"

    def save(self) -> None:
        self.state_file.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, workdir: Path) -> "LocalDatabase | None":
        path = Path(workdir) / "local.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def alive(self) -> dict[str, bool]:
        out = {"dmcproxy": pid_alive(self.proxy_pid)}
        for s in self.shards:
            out[f"shard:{s['port']}"] = pid_alive(s["pid"])
        return out

    def stop(self) -> None:
        stop_process(self.proxy_pid)
        for s in self.shards:
            stop_process(s["pid"])
        self.state_file.unlink(missing_ok=True)


def start_local(workdir: Path, shards: int = 3, port: int = 12000) -> LocalDatabase:
    """Start `shards` redis-servers and a dmcproxy on `port` (a free one if it is taken)."""
    workdir.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen] = []
    try:
        shard_ports = []
        for _ in range(shards):
            p, proc = start_redis_on_free_port(workdir / "shards")
            started.append(proc)
            shard_ports.append(p)
        if not port_is_free(port):
            port = free_port()
        proxy, served = start_proxy([("127.0.0.1", p) for p in shard_ports], port, workdir)
        # Let the proxy outlive us: nobody reads its stdout after the ready line.
        proxy.stdout.close()
    except BaseException:
        for proc in started:
            stop_process(proc)
        raise
    db = LocalDatabase(str(workdir), served, proxy.pid,
                       [{"port": p, "pid": proc.pid} for p, proc in zip(shard_ports, started)])
    db.save()
    return db
