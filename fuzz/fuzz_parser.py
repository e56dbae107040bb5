#!/usr/bin/env python3
"""Coverage-guided fuzzing of dmc's RESP parsers (dmc._fastpath.RequestParser and ReplyParser),
each checked against itself and against hiredis, the reference RESP reader.

    python fuzz/fuzz_parser.py -max_total_time=30 -rss_limit_mb=1024 [corpus_dir ...]

Any libFuzzer flag works; fuzz/resp.dict is used as the dictionary unless -dict= is given.

The input's first byte k tells how the rest is cut: the k & 7 bytes after it are chunk sizes
(each + 1, used in turn), and what follows is the payload, fed to both parsers in those chunks
(in one piece when k & 7 is 0). Checked for every input:

  * no crash, no memory blowup (libFuzzer's -rss_limit_mb), only the documented exceptions;
  * ReplyParser against itself: the frames re-concatenate to a prefix of the payload, each frame
    alone parses back to itself, and the chunking changes neither the frames nor whether the
    bytes are RESP;
  * ReplyParser against hiredis.Reader, fed the same payload: each frame that hiredis reads on
    its own as one value is the value hiredis reads at that place in the stream (same frames,
    same boundaries); where hiredis reports a protocol error, dmc has reported one by then or the
    frame there is one hiredis refuses on its own; where dmc reports a protocol error, hiredis
    reads no further value, but for dmc's two stricter checks (below).
  * RequestParser against itself: every argv, re-encoded as multibulk and parsed again, is the
    same argv; after a protocol error the parser keeps refusing input with the same text; the
    chunking changes neither the commands nor the error.
  * RequestParser against hiredis.Reader, for multibulk requests (a request is a RESP array of
    bulk strings, which hiredis reads as a reply): the commands are the arrays hiredis reads, in
    order, until the first value that is not a command; an array holding anything but bulk
    strings is a protocol error for dmc at that command, as for redis-server.

What is not comparable, and why:
  * ReplyParser finds frame boundaries, it does not decode (the proxy forwards reply bytes as
    they are), so it does not validate a scalar's contents: `:x`, `#x`, `,x`, `_x`, `(x`, a LF in
    a simple string are one frame to dmc and an error to hiredis. Nor does hiredis read every
    RESP3 value dmc frames: blob errors (`!`), streamed strings and aggregates (`$?`, `*?`),
    attributes (returned as separate values), maps with unhashable or repeated keys. Such a frame
    ends the comparison of the stream (hiredis refuses it, or reads it as other than one value).
  * dmc is stricter than hiredis twice: it checks the CRLF after a bulk payload of a reply
    (hiredis skips two bytes unchecked) and refuses an attribute of count -1 (hiredis reads nil).
  * On incomplete input the two report an error at different times (hiredis checks a type byte
    as soon as it arrives, dmc when its line is complete), so an error is compared only where
    the other parser has the bytes of a whole value.
  * An aggregate that announces more elements than the input has bytes is not given to hiredis
    (it allocates the whole list first); it cannot be a complete value anyway.
  * Inline commands are not RESP: hiredis has no reader for them (the tests compare them with a
    live redis-server instead). Empty multibulks (`*0`, `*-1`, which redis-server skips) are
    dropped from hiredis's values before comparing; a negative count other than -1 (skipped by
    redis-server, an error to hiredis) ends the comparison.

dmc._fastpath is compiled C, which atheris cannot instrument without a libFuzzer build of the
extension: it is fuzzed as a black box. The Python below is instrumented, and its checks walk the
frames and commands the parsers return, so that coverage follows the structure of what was parsed.
"""

from __future__ import annotations

import math
import os
import re
import sys

import atheris
import hiredis

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

with atheris.instrument_imports():
    # Only Python modules are instrumented; the parsers themselves are C.
    import dmc  # noqa: F401
    from dmc._fastpath import ProtocolError, ReplyParser, RequestParser
    from raw_resp import multibulk

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


_INCOMPLETE = object()     # hiredis's default, False, is also how it reads RESP3 `#f`


def hiredis_reads(pieces: list[bytes]) -> tuple[list, bool]:
    """What hiredis.Reader reads from the pieces: (values, whether it reported a protocol
    error)."""
    r = hiredis.Reader(notEnoughData=_INCOMPLETE)
    values = []
    for piece in pieces:
        r.feed(piece)
        while True:
            try:
                value = r.gets()
            except hiredis.ProtocolError:
                return values, True
            except TypeError:            # a map key hiredis cannot hash: not comparable
                return values, False
            if value is _INCOMPLETE:
                break
            values.append(value)
    return values, False


_AGGREGATE_HEADER = re.compile(rb"[*%~>|](\d+)")


def hiredis_can_read(payload: bytes) -> bool:
    """False when an aggregate announces more elements than the payload has bytes: hiredis
    allocates the list up front (seconds and gigabytes for `*700000000`), and such a value can
    never be complete here anyway."""
    return all(int(m.group(1)) <= len(payload) for m in _AGGREGATE_HEADER.finditer(payload))


def first_value_bytes(data: bytes) -> bytes:
    """The shortest prefix of data that hiredis reads a whole value from."""
    lo, hi = 1, len(data)
    while lo < hi:
        mid = (lo + hi) // 2
        if hiredis_reads([data[:mid]])[0]:
            hi = mid
        else:
            lo = mid + 1
    return data[:lo]


def parsed_before_error(make_parser, error_type, payload: bytes) -> tuple[list, str | None]:
    """What a fresh parser returns for the payload up to its first error (a feed that raises
    returns nothing, so the error's place is found by bisection), and the error's text."""
    try:
        return make_parser().feed(payload), None
    except error_type as e:
        error = str(e)
    lo, hi = 1, len(payload)        # the shortest prefix that raises
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            make_parser().feed(payload[:mid])
            lo = mid + 1
        except error_type:
            hi = mid
    return make_parser().feed(payload[:lo - 1]), error


def same_value(a, b) -> bool:
    """Equal as hiredis values, NaN equal to itself and errors by their text."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        # In order: keys may be errors, which compare by identity as dict keys.
        return len(a) == len(b) and all(same_value(ka, kb) and same_value(va, vb)
                                        for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    return type(a) is type(b) and a == b


_BULK_HEADER = re.compile(rb"[$=](\d+)\r\n")   # bulk and verbatim strings


def dmc_stricter(value_bytes: bytes) -> bool:
    """The bytes of a value hiredis reads and dmc refuses show one of dmc's two stricter checks:
    a bulk (or verbatim) payload not followed by CRLF, or an attribute of count -1; or hiredis
    read an attribute as a value of its own, while dmc frames it with the value it annotates."""
    if value_bytes[:1] == b"|" or b"\r\n|" in value_bytes:
        return True
    return any(value_bytes[m.end() + int(m.group(1)):m.end() + int(m.group(1)) + 2] != b"\r\n"
               for m in _BULK_HEADER.finditer(value_bytes))


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
    check_replies_against_hiredis(payload)
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


def check_replies_against_hiredis(payload: bytes) -> None:
    if not hiredis_can_read(payload):
        return
    frames, error = parsed_before_error(ReplyParser, ValueError, payload)
    theirs, their_error = hiredis_reads([payload])
    offset = 0
    for i, frame in enumerate(frames):
        alone, refused = hiredis_reads([frame])
        if refused or len(alone) != 1:
            return      # a frame hiredis does not read as one value: the comparison ends here
        assert i < len(theirs), ("hiredis stops before a frame dmc returned", frame, their_error)
        assert same_value(theirs[i], alone[0]), ("hiredis reads the frame otherwise", frame)
        offset += len(frame)
    if error is not None and len(theirs) > len(frames):
        refused = first_value_bytes(payload[offset:])
        assert dmc_stricter(refused), ("dmc refuses a value hiredis reads", refused, error)


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
    check_requests_against_hiredis(payload)
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
    assert whole_error == error, ("chunking changed the error", whole_error, error)
    if whole_error is None:
        assert whole_cmds == cmds, "chunking changed the commands"


def check_requests_against_hiredis(payload: bytes) -> None:
    if not hiredis_can_read(payload):
        return
    cmds, error = parsed_before_error(RequestParser, ProtocolError, payload)
    rest, i = payload, 0
    while rest[:1] == b"*":
        values, _ = hiredis_reads([rest])
        if not values:
            return      # incomplete, or refused by hiredis: not compared (see the docstring)
        value, size = values[0], len(first_value_bytes(rest))
        if value in ([], None):
            rest = rest[size:]       # an empty multibulk: redis-server skips it
            continue
        # Each element must be a bulk string (hiredis also reads `+x`, `=3 txt:x`, ... as bytes).
        pos, bulks = rest.index(b"\r\n") + 2, True
        for _ in value:
            if rest[pos:pos + 1] != b"$":
                bulks = False
                break
            pos += len(first_value_bytes(rest[pos:]))
        if not bulks or not all(type(a) is bytes for a in value):
            # An array of other than bulk strings: redis-server refuses it at that command.
            assert len(cmds) == i and error is not None, ("dmc accepts", value, cmds, error)
            return
        if i >= len(cmds):
            assert error is not None, ("dmc stops before the command hiredis reads", value)
            return
        assert cmds[i] == value, ("hiredis reads another command", cmds[i], value)
        rest, i = rest[size:], i + 1


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
check_replies_against_hiredis = atheris.instrument_func(check_replies_against_hiredis)
check_requests_against_hiredis = atheris.instrument_func(check_requests_against_hiredis)
TestOneInput = atheris.instrument_func(TestOneInput)

if __name__ == "__main__":
    main()
