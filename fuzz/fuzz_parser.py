#!/usr/bin/env python3
"""Coverage-guided fuzzing of dmc's RESP parsers (dmc._fastpath.RequestParser and ReplyParser).

    python fuzz/fuzz_parser.py -max_total_time=30 -rss_limit_mb=1024 [corpus_dir ...]

Any libFuzzer flag works; fuzz/resp.dict is used as the dictionary unless -dict= is given.

The input's first byte k tells how the rest is cut: the k & 7 bytes after it are chunk sizes
(each + 1, used in turn), and what follows is the payload, fed to both parsers in those chunks
(in one piece when k & 7 is 0). Checked for every input:

  * no crash, no memory blowup (libFuzzer's -rss_limit_mb), only the documented exceptions;
  * ReplyParser: the frames re-concatenate to a prefix of the payload, each frame alone parses
    back to itself, and the chunking does not change the frames or whether the bytes are RESP;
  * RequestParser: every argv, re-encoded as multibulk and parsed again, is the same argv; after
    a protocol error the parser keeps refusing input with the same text; the chunking does not
    change the commands or the error.

dmc._fastpath is compiled C, which atheris cannot instrument without a libFuzzer build of the
extension: it is fuzzed as a black box. The Python below is instrumented, and its checks walk the
frames and commands the parsers return, so that coverage follows the structure of what was parsed.
"""

from __future__ import annotations

import os
import sys

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

with atheris.instrument_imports():
    # Only Python modules are instrumented; the parsers themselves are C.
    import dmc  # noqa: F401
    from dmc._fastpath import ProtocolError, ReplyParser, RequestParser

INLINE_MAX = 65536   # beyond this much input without a newline, errors depend on the chunking


def split(data: bytes) -> tuple[list[bytes], bytes]:
    if not data:
        return [], b""
    k = data[0] & 7
    sizes = [b + 1 for b in data[1:1 + k]]
    payload = data[1 + k:]
    if not sizes:
        return [payload], payload
    pieces = []
    i = j = 0
    while i < len(payload):
        n = sizes[j % len(sizes)]
        pieces.append(payload[i:i + n])
        i += n
        j += 1
    return pieces, payload


def multibulk(argv: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in argv)


def walk_frame(frame: bytes) -> None:
    """Every frame the parser accepted ends in CRLF."""
    assert frame.endswith(b"\r\n"), frame


def check_replies(pieces: list[bytes], payload: bytes) -> None:
    p = ReplyParser()
    frames: list[bytes] = []
    failed = False
    for piece in pieces:
        try:
            frames += p.feed(piece)
        except ValueError:
            failed = True
            break
    joined = b"".join(frames)
    assert payload.startswith(joined), "frames are not a prefix of the input"
    for f in frames:
        assert type(f) is bytes and f, f
        assert ReplyParser().feed(f) == [f], ("a frame does not parse back to itself", f)
        if ReplyParser.is_push(f):
            assert f[:1] in (b">", b"|"), f
        walk_frame(f)
    whole = ReplyParser()
    try:
        whole_frames = whole.feed(payload)
        whole_failed = False
    except ValueError:
        whole_failed = True
    assert whole_failed == failed, ("chunking changed whether the input is RESP", failed)
    if not failed:
        assert whole_frames == frames, "chunking changed the frames"


def check_requests(pieces: list[bytes], payload: bytes) -> None:
    p = RequestParser()
    cmds: list[list[bytes]] = []
    error = None
    for piece in pieces:
        try:
            cmds += p.feed(piece)
        except ProtocolError as e:
            error = str(e)
            break
        assert 0 <= p.pending() <= len(payload)
    if error is not None:
        assert error.startswith("ERR Protocol error"), error
        try:
            p.feed(b"PING\r\n")
        except ProtocolError as e:
            assert str(e) == error, (str(e), error)
        else:
            raise AssertionError("input accepted after a protocol error")
    for argv in cmds:
        assert type(argv) is list and argv, argv
        assert all(type(a) is bytes for a in argv), argv
        assert RequestParser().feed(multibulk(argv)) == [argv], ("re-encoding changed", argv)
    if len(payload) > INLINE_MAX:
        return
    whole = RequestParser()
    try:
        whole_cmds = whole.feed(payload)
        whole_error = None
    except ProtocolError as e:
        whole_error = str(e)
    if whole_error is None:
        assert error is None, ("chunking caused", error)
        assert whole_cmds == cmds, "chunking changed the commands"
    elif error is None:
        # Known, reported: after a complete argument the parser waits for 4 bytes of the next
        # bulk header before looking, so an error in fewer bytes than that shows only later.
        assert p.pending() > 0
    else:
        assert whole_error == error, (whole_error, error)


def TestOneInput(data: bytes) -> None:
    pieces, payload = split(data)
    check_replies(pieces, payload)
    check_requests(pieces, payload)


def main() -> None:
    argv = list(sys.argv)
    if not any(a.startswith("-dict=") for a in argv[1:]):
        argv.insert(1, "-dict=" + os.path.join(HERE, "resp.dict"))
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


# Instrument the harness itself (a script is not imported, so instrument_imports skips it).
split = atheris.instrument_func(split)
walk_frame = atheris.instrument_func(walk_frame)
check_replies = atheris.instrument_func(check_replies)
check_requests = atheris.instrument_func(check_requests)
TestOneInput = atheris.instrument_func(TestOneInput)

if __name__ == "__main__":
    main()
