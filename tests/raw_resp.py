"""RESP on a plain socket, for tests that choose the exact bytes a server reads (a whole
pipeline in one write, inline commands, broken frames) or must tell "no reply yet" from "no
reply ever", which redis-py hides. `multibulk` is the tests' one encoder of a command; replies
are decoded by hiredis and returned as `replies.plain` makes them (errors as ("error", text))."""

from __future__ import annotations

import socket

import hiredis

from replies import plain

# hiredis's default "no complete reply yet" value, False, is also how it decodes RESP3 `#f`.
_INCOMPLETE = object()


def multibulk(argv) -> bytes:
    """One command as a RESP array of bulk strings; str and int arguments are encoded first."""
    args = [a if isinstance(a, (bytes, bytearray)) else str(a).encode() for a in argv]
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class RawClient:
    """One client connection: what is sent is exactly what the test wrote."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = hiredis.Reader(notEnoughData=_INCOMPLETE)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, *commands) -> None:
        """Every command (a sequence of arguments) in one write."""
        self.sock.sendall(b"".join(multibulk(c) for c in commands))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, n: int, timeout: float = 10.0, closed_ok: bool = False) -> list:
        """The next n replies; fewer if the server closes the connection and `closed_ok`."""
        out = []
        self.sock.settimeout(timeout)
        while len(out) < n:
            reply = self.reader.gets()
            if reply is not _INCOMPLETE:
                out.append(plain(reply))
                continue
            data = self.sock.recv(65536)
            if not data:
                if closed_ok:
                    break
                raise ConnectionError(f"closed after {len(out)} of {n} replies")
            self.reader.feed(data)
        return out

    def call(self, *commands) -> list:
        self.send(*commands)
        return self.replies(len(commands))

    def replies_until_quiet(self, quiet: float = 0.3) -> tuple[list, bool]:
        """Every reply that arrives until the server closes the connection or sends nothing
        for `quiet` s: (replies, closed by the server). For comparing a whole exchange with
        redis-server's when the number of replies is part of what is compared."""
        self.sock.settimeout(quiet)
        closed = False
        try:
            while data := self.sock.recv(65536):
                self.reader.feed(data)
            closed = True
        except TimeoutError:
            pass
        out = []
        while (reply := self.reader.gets()) is not _INCOMPLETE:
            out.append(plain(reply))
        return out, closed

    def nothing_within(self, seconds: float) -> bool:
        """True if no reply byte arrives within `seconds` (a closed connection sends none)."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True
        return not data

    def close(self) -> None:
        self.sock.close()
