"""One database endpoint served by a thread of its own: how one process serves many databases.

An Endpoint owns a listening socket and a dmc._fastpath.Proxy, built as dmcproxy builds its own
(dmc.proxy.open_proxy), and the thread that runs the proxy's loop. The loop runs without the GIL
and returns to Python only when woken: everything else that touches the proxy (a new shard map,
pause and resume around a live migration, a new password, stats) is a function run on that
thread between two turns, through call(). Nothing here touches the proxy from another thread;
the Cython core keeps no mutable state at module level, so endpoints do not share anything.
"""

from __future__ import annotations

import queue
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
    """

    def __init__(self, bind: str, port: int, password: str | None, shard_map: ShardMap, *,
                 tick_ms: int = 100, **settings: Any):
        cfg = ProxyConfig(port=port, bind=bind, shards=list(shard_map.shards),
                          password=password or "", **settings)
        self.sock, self.proxy = open_proxy(cfg, shard_map)
        self.bind, self.port = self.sock.getsockname()[:2]
        self.tick_ms = tick_ms
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._done = False          # the loop has ended: call() is refused
        self._closed = False

    # ---- life cycle ------------------------------------------------------------------------

    def start(self) -> Self:
        with self._lock:
            if self._thread is not None or self._stopping:
                raise RuntimeError("an endpoint is started once")
            self._thread = threading.Thread(target=self._serve, name=f"endpoint:{self.port}",
                                            daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the loop, wait for its thread, close every connection and the listening socket.
        Functions still waiting to run fail with EndpointStopped."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self.proxy.wakeup()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if not self._closed:
            self._closed = True
            self.proxy.close()
            self.sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self) -> None:
        try:
            while True:
                self.proxy.run_until_wakeup(self.tick_ms)
                self._run_calls()
                if self._stopping:
                    return
        finally:
            with self._lock:
                self._done = True
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
        """fn(proxy), run on the loop's thread between two turns; its result, or its exception
        raised here. Before start() (and on the loop's own thread) fn runs at once."""
        with self._lock:
            if self._done or self._closed:
                raise EndpointStopped(f"endpoint on port {self.port} is stopped")
            inline = self._thread is None or self._thread is threading.current_thread()
            if not inline:
                future: Future = Future()
                self._calls.put((fn, future))
        if inline:
            return fn(self.proxy)
        self.proxy.wakeup()
        return future.result(timeout)

    def apply_shard_map(self, shard_map: ShardMap) -> bool:
        return self.call(lambda p: install_shard_map(p, shard_map))

    def set_password(self, password: str | None) -> None:
        self.call(lambda p: p.set_password(password))

    def pause(self) -> None:
        self.call(lambda p: p.pause())

    def resume(self) -> None:
        self.call(lambda p: p.resume())

    def inflight(self) -> int:
        return self.call(lambda p: p.inflight())

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
        its "counters" are the endpoint's (README's "Counters")."""
        return self.call(lambda p: p.stats(), timeout)
