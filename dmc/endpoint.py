"""One database endpoint served by threads of its own: how one process serves many databases.

An Endpoint owns its listening socket(s) and dmc._fastpath.Proxy(s), built as dmcproxy builds
its own (dmc.proxy.open_proxy), and the thread(s) that run the proxies' loops. The loops run
without the GIL and return to Python only when woken: everything else that touches a proxy (a
new shard map, pause and resume around a live migration, a new password, stats) is a function
run between two turns, through call(). The Cython core keeps no mutable state at module level,
so endpoints do not share anything.

threads=1: one Proxy, and call() runs the function on the loop's own thread. threads=N: N
Proxies (workers) on the same port, each with its own SO_REUSEPORT listening socket (the kernel
spreads the connections), loop, clients and shard connections, joined in a
dmc._fastpath.WorkerGroup (dmc/fastpath/workers.pxi: what stays per endpoint). call() then stops
every worker between two turns (WorkerGroup.stop) and runs the function on each before any loop
turns again, so a map change, pause or resume reaches every worker at once; stats() sums their
counters.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Self

from dmc import _fastpath
from dmc.proxy import ProxyConfig, install_shard_map, open_proxy
from dmc.shard_map import ShardMap


class EndpointStopped(RuntimeError):
    """The endpoint's loop is not running any more: nothing can be run on it."""


class Endpoint:
    """A database endpoint on bind:port over the shards of shard_map, served by a thread.

    settings: the other fields of dmc.proxy.ProxyConfig (max_clients, backend_timeout_ms,
    conns_per_shard, client_output_limit_mb, timeout, wait_shards_s, hold_ms). The command table
    is read from the map's shards here, so the constructor waits for one of them to answer.
    threads: worker threads (event loops) serving the endpoint.
    """

    def __init__(self, bind: str, port: int, password: str | None, shard_map: ShardMap, *,
                 tick_ms: int = 100, threads: int = 1, **settings: Any):
        if not 1 <= threads <= 64:
            raise ValueError(f"an endpoint has 1 to 64 threads, not {threads}")
        cfg = ProxyConfig(port=port, bind=bind, shards=list(shard_map.shards),
                          password=password or "", **settings)
        self.workers: list[tuple[socket.socket, _fastpath.Proxy]] = []
        try:
            for _ in range(threads):
                self.workers.append(open_proxy(cfg, shard_map, reuse_port=threads > 1))
                cfg.port = self.workers[0][0].getsockname()[1]    # port 0: the one it got
            self.group = _fastpath.WorkerGroup([p for _, p in self.workers]) if threads > 1 \
                else None
        except BaseException:
            for sock, proxy in self.workers:
                proxy.close()
                sock.close()
            raise
        self.sock, self.proxy = self.workers[0]
        self.bind, self.port = self.sock.getsockname()[:2]
        self.threads = threads
        self.tick_ms = tick_ms
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._done = False          # the loop has ended: call() is refused
        self._closed = False

    # ---- life cycle ------------------------------------------------------------------------

    def start(self) -> Self:
        with self._lock:
            if self._threads or self._stopping:
                raise RuntimeError("an endpoint is started once")
            self._threads = [threading.Thread(target=self._serve, args=(proxy,), daemon=True,
                                              name=f"endpoint:{self.port}" + (f":{i}" if i else ""))
                             for i, (_, proxy) in enumerate(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """End the loops, wait for their threads, close every connection and the listening
        sockets. Functions still waiting to run fail with EndpointStopped."""
        with self._lock:
            self._stopping = True
            threads = list(self._threads)
        for _, proxy in self.workers:
            proxy.wakeup()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()
        if not self._closed:
            self._closed = True
            for sock, proxy in self.workers:
                proxy.close()
                sock.close()
            self.group = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self, proxy: _fastpath.Proxy) -> None:
        try:
            while True:
                proxy.run_until_wakeup(self.tick_ms)
                if proxy is self.proxy:
                    self._run_calls()
                if self._stopping:
                    return
        finally:
            with self._lock:
                self._done = True
            if proxy is self.proxy:
                self._run_calls(EndpointStopped(f"endpoint on port {self.port} stopped"))

    def _run_calls(self, refusal: Exception | None = None) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            if refusal is not None:
                future.set_exception(refusal)
                continue
            try:
                future.set_result(fn(self.proxy))
            except BaseException as exc:  # noqa: BLE001 - the caller gets it; the loop goes on
                future.set_exception(exc)

    # ---- running things on the loop's thread -----------------------------------------------

    def call(self, fn: Callable[[_fastpath.Proxy], Any], timeout: float | None = None) -> Any:
        """fn(proxy) for every worker, between two turns of its loop (all workers stopped at
        once when there are several); the first worker's result, or the exception raised here.
        Before start() (and on a loop's own thread) fn runs at once."""
        return self.call_each(fn, timeout)[0]

    def call_each(self, fn: Callable[[_fastpath.Proxy], Any],
                  timeout: float | None = None) -> list:
        """fn(proxy) for every worker, as call(); every result, in worker order."""
        with self._lock:
            if self._done or self._closed:
                raise EndpointStopped(f"endpoint on port {self.port} is stopped")
            inline = not self._threads or threading.current_thread() in self._threads
            if not inline and self.group is None:
                future: Future = Future()
                self._calls.put((fn, future))
        if inline:
            return [fn(proxy) for _, proxy in self.workers]
        if self.group is None:
            self.proxy.wakeup()
            return [future.result(timeout)]
        # Every worker waits outside its loop's turns meanwhile: safe to touch from here.
        self.group.stop()
        try:
            return [fn(proxy) for _, proxy in self.workers]
        finally:
            self.group.start()

    def apply_shard_map(self, shard_map: ShardMap) -> bool:
        return self.call(lambda p: install_shard_map(p, shard_map))

    def set_password(self, password: str | None) -> None:
        self.call(lambda p: p.set_password(password))

    def pause(self) -> None:
        self.call(lambda p: p.pause())

    def resume(self) -> None:
        self.call(lambda p: p.resume())

    def inflight(self) -> int:
        return sum(self.call_each(lambda p: p.inflight()))

    def wait_drained(self, timeout: float) -> bool:
        """Paused: until the requests sent before the pause are all answered (inflight() is 0);
        False if that takes longer than timeout seconds."""
        deadline = time.monotonic() + timeout
        while self.inflight():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def stats(self, timeout: float | None = None) -> dict:
        """The proxy's stats (dmc._fastpath.Proxy.stats), read between two turns of its loop;
        its "counters" are the endpoint's (README's "Counters"): with several workers, summed
        over them (sum_stats)."""
        return sum_stats(self.call_each(lambda p: p.stats(), timeout))


# Counters that are not summed over workers: the largest is the endpoint's.
_MAX_COUNTERS = {"max_pipeline", "uptime_s"}


def sum_stats(each: list[dict]) -> dict:
    """One endpoint's stats from its workers': counts summed (latency histograms bucket by
    bucket, per-command counters command by command), max_pipeline and uptime the largest; the
    shard map's fields from the first worker, with every worker's shard connections listed."""
    if len(each) == 1:
        return each[0]
    out = dict(each[0])
    for key in ("held_bytes", "inflight", "clients", "total_connections",
                "rejected_connections", "client_query_buffer_limit_disconnections",
                "evicted_clients", "tls_handshake_failures", "tls_handshake_timeouts",
                "shard_tls_failures"):
        out[key] = sum(s[key] for s in each)
    out["shards"] = [dict(shard, conns=[c for s in each for c in s["shards"][i]["conns"]])
                     for i, shard in enumerate(each[0]["shards"])]
    commands: dict[str, tuple] = {}
    for s in each:
        for name, figures in s["commands"].items():
            old = commands.get(name, (0,) * len(figures))
            commands[name] = tuple(a + b for a, b in zip(old, figures))
    out["commands"] = commands
    counters = {}
    for key, first in each[0]["counters"].items():
        values = [s["counters"][key] for s in each]
        if key == "latency_buckets_us":
            counters[key] = first
        elif key == "latency_histogram":
            counters[key] = {cls: [sum(col) for col in zip(*(v[cls] for v in values))]
                             for cls in first}
        elif key in _MAX_COUNTERS:
            counters[key] = max(values)
        else:
            counters[key] = sum(values)
    out["counters"] = counters
    return out
