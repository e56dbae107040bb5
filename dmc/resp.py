"""RESP encoding of commands, for the Python side of dmc: the proxy's own queries to its shards
(dmc/commands.py) and the control plane's Redis client (control/redis_client.py). The data path
proper encodes and parses in compiled code (dmc/fastpath/resp.pxi); this is for the rare calls
made from Python."""

from __future__ import annotations


def encode_command(args) -> bytes:
    """One command as a RESP array of bulk strings. str is sent as UTF-8, int and float as their
    decimal text; anything else (bool, None) is a TypeError, not a silent "True" or "None"."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            arg = str(arg).encode()
        elif not isinstance(arg, (bytes, bytearray)):
            raise TypeError(f"cannot send {type(arg).__name__} {arg!r} to Redis")
        out += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(out)


def encode_commands(commands) -> bytes:
    """Several commands, pipelined."""
    return b"".join(encode_command(cmd) for cmd in commands)


class Verbatim(str):
    """A verbatim string reply (RESP3 `=`, `txt` format; RESP2: a bulk string)."""


def encode_reply(value, proto: int = 2) -> bytes:
    """A reply in RESP2 or RESP3, for the replies the proxy serves from values made in Python
    (dmc/cluster_api.py): int, str/bytes (bulk), Verbatim, list (array), dict (a map in RESP3,
    a flat array of keys and values in RESP2), None (null)."""
    if isinstance(value, bool):
        raise TypeError("bool is not a RESP reply")
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, Verbatim) and proto == 3:
        data = b"txt:" + value.encode()
        return b"=%d\r\n%s\r\n" % (len(data), data)
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, (bytes, bytearray)):
        return b"$%d\r\n%s\r\n" % (len(value), bytes(value))
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(encode_reply(v, proto) for v in value)
    if isinstance(value, dict):
        items = b"".join(encode_reply(k, proto) + encode_reply(v, proto) for k, v in value.items())
        return (b"%%%d\r\n" % len(value) if proto == 3 else b"*%d\r\n" % (2 * len(value))) + items
    if value is None:
        return b"_\r\n" if proto == 3 else b"$-1\r\n"
    raise TypeError(f"cannot encode {type(value).__name__} as a RESP reply")
