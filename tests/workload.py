"""A client load that remembers every write the database acknowledged, to check afterwards that
none was lost and none came back wrong (failover, migration and resharding tests).

Each of `clients` threads has its own connection to the endpoint and writes its own keys in
order (`load:<client>:<n>` = n, a few keys per hash slot range), reading one back now and then;
every acknowledged SET is recorded, and every error, with its time. With `wait_replicas`, a SET
counts as acknowledged only once `WAIT wait_replicas 1000` after it answers that many.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from waiting import wait_until


@dataclass
class WriteLoad:
    host: str
    port: int
    clients: int = 4
    password: str | None = None
    wait_replicas: int = 0
    acked: dict[str, str] = field(default_factory=dict)
    acked_at: dict[str, float] = field(default_factory=dict)     # key -> time.monotonic()
    errors: list[tuple[float, str]] = field(default_factory=list)
    reads_wrong: list[tuple[str, str, str]] = field(default_factory=list)
    connect: Callable[[], redis.Redis] | None = None    # a client of one's own (RedisCluster ...)

    def __post_init__(self):
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> WriteLoad:
        for i in range(self.clients):
            t = threading.Thread(target=self._client, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> WriteLoad:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        return self

    @property
    def writes(self) -> int:
        return len(self.acked)

    def wait_writes(self, more: int = 100, timeout: float = 20.0) -> None:
        """Until `more` writes after now are acknowledged: the load runs across what the test
        just did (or is about to do)."""
        target = self.writes + more
        wait_until(lambda: self.writes >= target, timeout, what=f"{more} more writes")

    def _client(self, i: int) -> None:
        conn = self.connect() if self.connect else redis.Redis(
            host=self.host, port=self.port, password=self.password, socket_timeout=10,
            decode_responses=True)
        n = 0
        while not self._stop.is_set():
            key, value = f"load:{i}:{n}", str(n)
            try:
                conn.set(key, value)
                if self.wait_replicas and conn.wait(self.wait_replicas, 1000) < self.wait_replicas:
                    continue
                with self._lock:
                    self.acked[key] = value
                    self.acked_at[key] = time.monotonic()
                if n % 10 == 0:
                    back = conn.get(key)
                    if back != value:
                        self.reads_wrong.append((key, value, back))
                n += 1
            except redis.RedisError as exc:
                with self._lock:
                    self.errors.append((time.monotonic(), repr(exc)))
                time.sleep(0.01)
        conn.close()

    def lost(self, conn: redis.Redis) -> dict[str, tuple[str, str | None]]:
        """Acknowledged writes that are not there (or wrong): key -> (written, found)."""
        keys = list(self.acked)
        out = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            for key, found in zip(chunk, conn.mget(chunk)):
                if isinstance(found, bytes):
                    found = found.decode()
                if found != self.acked[key]:
                    out[key] = (self.acked[key], found)
        return out
