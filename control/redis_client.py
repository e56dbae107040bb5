"""The control plane's Redis client: one TCP connection per `Redis`, RESP2 commands encoded here,
replies parsed by `hiredis.Reader`, all I/O on Trio. It owns connecting (with optional AUTH),
request/reply with a per-call deadline, pipelines, and plain SUBSCRIBE; it does not own
reconnection, pooling or retries - callers decide what a lost shard means.

Any failure that may leave a reply owed on the wire (timeout, cancellation, lost connection)
closes the connection, since a later call would otherwise read that reply as its own.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Self

import hiredis
import trio

from dmc.resp import encode_command, encode_commands

__all__ = ["Redis", "RedisUnavailable", "ReplyError", "Subscription", "connect", "info",
           "parse_info", "subscribe"]


class ReplyError(Exception):
    """An error reply from Redis; `kind` is its first word (ERR, READONLY, NOREPLICAS, ...)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.kind = text.split(" ", 1)[0]


class RedisUnavailable(OSError):
    """Could not connect, the connection was lost, or no reply came within the timeout."""


def _convert(reply):
    # hiredis returns error replies (also those nested in EXEC's array) as objects, not raised
    if isinstance(reply, hiredis.ReplyError):
        return ReplyError(str(reply))
    if isinstance(reply, list):
        return [_convert(r) for r in reply]
    return reply


class Redis:
    """One connection; made by `connect`. Safe to share between tasks of one Trio run."""

    def __init__(self, stream: trio.abc.Stream, host: str, port: int, timeout: float):
        self.host, self.port = host, port
        self._stream = stream
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._lock = trio.Lock()   # one request+reply at a time keeps replies matched to callers
        self._closed = False

    def __repr__(self) -> str:
        return f"<Redis {self.host}:{self.port}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._closed

    async def execute(self, *args) -> object:
        (reply,) = await self._exchange(encode_command(args), 1, self._timeout)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def pipeline(self, commands: list[tuple]) -> list:
        """Replies in order; an error reply is a ReplyError in the list, not raised."""
        if not commands:
            return []
        return await self._exchange(encode_commands(commands), len(commands),
                                    self._timeout)

    async def aclose(self) -> None:
        self._closed = True
        await trio.aclose_forcefully(self._stream)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    def _unavailable(self, why: str) -> RedisUnavailable:
        return RedisUnavailable(f"redis {self.host}:{self.port}: {why}")

    async def _exchange(self, payload: bytes, nreplies: int, timeout: float) -> list:
        """Send payload (if any), then read nreplies replies, all within timeout (which also
        covers waiting for the lock, so a call is bounded however many tasks share us)."""
        owed = False
        try:
            with trio.fail_after(timeout):
                async with self._lock:
                    if self._closed:
                        raise self._unavailable("connection is closed")
                    owed = bool(payload)
                    if payload:
                        await self._stream.send_all(payload)
                    replies = [await self._read_reply() for _ in range(nreplies)]
                    owed = False
                    return replies
        except RedisUnavailable:
            owed = True   # closed already, or closed by the server: either way done with
            raise
        except trio.TooSlowError:
            raise self._unavailable(f"no reply within {timeout}s") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                hiredis.ProtocolError) as exc:
            owed = True   # the stream or the parser is unusable from here on
            raise self._unavailable(f"connection lost ({exc!r})") from exc
        finally:
            if owed:
                await self.aclose()

    async def _read_reply(self):
        while (reply := self._reader.gets()) is False:
            data = await self._stream.receive_some(65536)
            if not data:
                raise self._unavailable("connection closed by the server")
            self._reader.feed(data)
        return _convert(reply)


def checked(replies: list) -> list:
    """A pipeline's replies, its first error reply raised (Redis.pipeline returns them in the
    list: a master whose copy was fenced meanwhile answers NOREPLICAS or READONLY)."""
    for reply in replies:
        if isinstance(reply, ReplyError):
            raise reply
    return replies


def parse_info(text: bytes | str) -> dict[str, str]:
    """INFO's reply as {field: value} (section headers and blank lines dropped)."""
    if isinstance(text, bytes):
        text = text.decode()
    return dict(line.split(":", 1) for line in text.splitlines()
                if ":" in line and not line.startswith("#"))


async def info(conn: Redis, section: str) -> dict[str, str]:
    """INFO `section` of the server behind `conn`, parsed."""
    return parse_info(await conn.execute("INFO", section))


async def connect(host: str, port: int, *, timeout: float = 1.0,
                  password: str | None = None, ssl_context: ssl.SSLContext | None = None,
                  unix_path: str | None = None) -> Redis:
    """A connection to host:port (or to the unix socket `unix_path`, host and port then only
    name it in errors), authenticated if password is given, over TLS with
    `ssl_context` (redis-server's tls-port; the handshake is made within the timeout). A
    refused AUTH raises ReplyError (WRONGPASS, ...): the server is there, so it is not
    RedisUnavailable; a refused handshake is RedisUnavailable."""
    try:
        with trio.fail_after(timeout):
            stream = await (trio.open_unix_socket(unix_path) if unix_path is not None
                            else trio.open_tcp_stream(host, port))
            if ssl_context is not None:
                stream = trio.SSLStream(stream, ssl_context, server_hostname=host)
                await stream.do_handshake()
    except trio.TooSlowError:
        raise RedisUnavailable(f"redis {host}:{port}: no connection within {timeout}s") from None
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__ or exc
        raise RedisUnavailable(f"redis {host}:{port}: TLS handshake failed "
                               f"({getattr(cause, 'verify_message', None) or cause})") from exc
    except OSError as exc:
        raise RedisUnavailable(f"redis {host}:{port}: cannot connect ({exc})") from exc
    conn = Redis(stream, host, port, timeout)
    if password is not None:
        try:
            await conn.execute("AUTH", password)
        except BaseException:
            await conn.aclose()
            raise
    return conn


class Subscription:
    """`async for channel, message in sub`: published messages, waited for without a deadline.
    Cancelling a wait is harmless (nothing is owed), so `trio.move_on_after` around it is fine."""

    def __init__(self, conn: Redis):
        self._conn = conn

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> tuple[bytes, bytes]:
        while True:
            (frame,) = await self._conn._exchange(b"", 1, math.inf)
            if isinstance(frame, list) and len(frame) == 3 and frame[0] == b"message":
                return frame[1], frame[2]


@asynccontextmanager
async def subscribe(host: str, port: int, channels: list[str], *, timeout: float = 1.0,
                    password: str | None = None, ssl_context: ssl.SSLContext | None = None,
                    unix_path: str | None = None) -> AsyncIterator[Subscription]:
    """A Subscription on its own connection, already active when the context is entered."""
    if not channels:
        raise ValueError("subscribe needs at least one channel")
    async with await connect(host, port, timeout=timeout, password=password,
                             ssl_context=ssl_context, unix_path=unix_path) as conn:
        payload = encode_command(("SUBSCRIBE", *channels))
        # one confirmation per channel; read one at a time so that a single error reply
        # (NOAUTH, ...) for the whole command is raised rather than waited past
        for _ in channels:
            (reply,) = await conn._exchange(payload, 1, timeout)
            payload = b""
            if isinstance(reply, ReplyError):
                raise reply
        yield Subscription(conn)
