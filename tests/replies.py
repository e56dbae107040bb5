"""Replies in a form tests compare: errors as ("error", text), nested lists kept."""

from __future__ import annotations

from dmc.resp import encode_commands


def plain(reply):
    if isinstance(reply, Exception):
        return ("error", str(reply))
    if isinstance(reply, list):
        return [plain(x) for x in reply]
    return reply


class Push(list):
    """A RESP3 push frame (`>`): told apart from an array, which a client must not mix up."""


class Error(bytes):
    """An error reply (`-`, `!`), kept as its text."""


class Incomplete(Exception):
    pass


def parse_frame(buf: bytes, pos: int = 0):
    """(value, next position) of the RESP2/RESP3 frame at buf[pos:]; Incomplete if it is not all
    there yet. Arrays, sets and pushes are lists (Push for pushes), maps dicts, nulls None,
    errors Error, simple strings and bulks bytes, integers int, doubles float."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        raise Incomplete
    kind, line, pos = buf[pos:pos + 1], buf[pos + 1:eol], eol + 2
    if kind in (b"+", b"(", b","):
        return (line if kind == b"+" else int(line) if kind == b"(" else float(line)), pos
    if kind == b"-":
        return Error(line), pos
    if kind == b":":
        return int(line), pos
    if kind == b"_":
        return None, pos
    if kind == b"#":
        return line == b"t", pos
    if kind in (b"$", b"=", b"!"):
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise Incomplete
        body = buf[pos:pos + n]
        return (Error(body) if kind == b"!" else body), pos + n + 2
    if kind in (b"*", b"~", b">", b"%", b"|"):
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n * 2 if kind in (b"%", b"|") else n):
            item, pos = parse_frame(buf, pos)
            items.append(item)
        if kind == b"|":            # an attribute: its frame follows
            return parse_frame(buf, pos)
        if kind == b"%":
            return dict(zip(items[::2], items[1::2])), pos
        return (Push(items) if kind == b">" else items), pos
    raise ValueError(f"not RESP: {buf[pos - len(line) - 2:pos]!r}")


class RespConn:
    """One client connection speaking raw RESP, replies typed (pushes apart from arrays): what
    is sent is exactly what the test wrote, and nothing a client library adds (HELLO, CLIENT
    SETINFO, a reply it expects)."""

    def __init__(self, port: int, timeout: float = 5.0):
        import socket
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, *commands) -> None:
        self.sock.sendall(encode_commands(commands))

    def read(self, timeout: float | None = None):
        """The next frame; socket.timeout (TimeoutError) if none comes within timeout."""
        return parse_frame(self.read_raw(timeout))[0]

    def read_raw(self, timeout: float | None = None) -> bytes:
        """The next frame's exact bytes (a nil array and a nil bulk differ there)."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            try:
                _, pos = parse_frame(self.buf)
                frame, self.buf = self.buf[:pos], self.buf[pos:]
                return frame
            except Incomplete:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("connection closed")
                self.buf += data

    def call_raw(self, *args) -> bytes:
        """One command's reply, its exact bytes."""
        self.send(args)
        return self.read_raw()

    def call(self, *args):
        """One command's reply; pushes that arrive first are skipped."""
        self.send(args)
        while isinstance(reply := self.read(), Push):
            pass
        return reply

    def frames_until(self, marker: bytes) -> list:
        """Every frame up to the PING `marker` sent after them (its reply not included): what
        the commands before it answered, pushes included, in order."""
        self.send(["PING", marker])
        frames = []
        while (frame := self.read()) != marker:
            frames.append(frame)
        return frames

    def close(self) -> None:
        self.sock.close()


def on_both(ports, run):
    """run(port) on the plain redis-server and through dmc ({"redis": port, "dmc": port}):
    (redis's answer, dmc's), to compare."""
    return run(ports["redis"]), run(ports["dmc"])
