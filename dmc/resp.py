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
