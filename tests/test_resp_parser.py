"""The RESP parsers of dmc._fastpath, as a black box.

Replies: random RESP2/RESP3 values (every type, attributes, pushes, streamed strings and
aggregates) are encoded here, concatenated, and fed to ReplyParser split at every point (or a
sample of them, plus byte by byte): the frames must be exactly the encodings. hiredis is the
reference decoder for what it supports.

Requests: random binary-safe argv lists, encoded as multibulk and fed in random chunks, must come
back as themselves and as hiredis reads them. Inline commands and protocol errors are checked
against the texts and behaviour of redis-server (live, when it is installed).
"""

from __future__ import annotations

import math
import os
import random

import hiredis
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from raw_resp import RawClient, multibulk

from dmc._fastpath import ProtocolError, ReplyParser, RequestParser


# Multiplies every property test's number of examples, for a longer soak run than the default
# (which keeps this file to a few seconds): DMC_HYPOTHESIS_SCALE=20 pytest tests/test_resp_parser.py
SCALE = max(1, int(os.environ.get("DMC_HYPOTHESIS_SCALE", "1")))


# ==== a model of RESP values ==================================================================
#
# A value is a tuple whose first item is its type:
#   ("+", bytes) ("-", bytes) (":", int) ("$", bytes | None) ("*", list | None)
#   ("_",) (",", float) ("#", bool) ("(", int) ("!", bytes) ("=", fmt, bytes)
#   ("%", [(k, v)]) ("~", list) (">", list) ("|", [(k, v)], value)
#   ("$?", [chunk]) ("*?", list) ("~?", list) ("%?", [(k, v)])

def _dbl(x: float) -> bytes:
    if math.isnan(x):
        return b"nan"
    if math.isinf(x):
        return b"inf" if x > 0 else b"-inf"
    return repr(x).encode()


def encode(v) -> bytes:
    t = v[0]
    if t in ("+", "-"):
        return t.encode() + v[1] + b"\r\n"
    if t in (":", "("):
        return b"%s%d\r\n" % (t.encode(), v[1])
    if t in ("$", "!"):
        if v[1] is None:
            return t.encode() + b"-1\r\n"
        return b"%s%d\r\n%s\r\n" % (t.encode(), len(v[1]), v[1])
    if t == "=":
        body = v[1] + b":" + v[2]
        return b"=%d\r\n%s\r\n" % (len(body), body)
    if t == "_":
        return b"_\r\n"
    if t == ",":
        return b"," + _dbl(v[1]) + b"\r\n"
    if t == "#":
        return b"#t\r\n" if v[1] else b"#f\r\n"
    if t in ("*", "~", ">"):
        if v[1] is None:
            return t.encode() + b"-1\r\n"
        return b"%s%d\r\n" % (t.encode(), len(v[1])) + b"".join(encode(e) for e in v[1])
    if t == "%":
        return b"%%%d\r\n" % len(v[1]) + b"".join(encode(k) + encode(x) for k, x in v[1])
    if t == "|":
        return (b"|%d\r\n" % len(v[1]) + b"".join(encode(k) + encode(x) for k, x in v[1])
                + encode(v[2]))
    if t == "$?":
        return (b"$?\r\n" + b"".join(b";%d\r\n%s\r\n" % (len(c), c) for c in v[1])
                + b";0\r\n")
    if t in ("*?", "~?"):
        return t.encode() + b"\r\n" + b"".join(encode(e) for e in v[1]) + b".\r\n"
    if t == "%?":
        return b"%?\r\n" + b"".join(encode(k) + encode(x) for k, x in v[1]) + b".\r\n"
    raise AssertionError(t)


def children(v):
    t = v[0]
    if t in ("*", "~", ">", "*?", "~?"):
        return list(v[1] or ())
    if t in ("%", "%?"):
        return [x for kv in v[1] for x in kv]
    if t == "|":
        return [x for kv in v[1] for x in kv] + [v[2]]
    return []


def walk(v):
    yield v
    for c in children(v):
        yield from walk(c)


RESP2_TYPES = {"+", "-", ":", "$", "*"}
SCALAR_TYPES = {"+", "-", ":", "$", "_", ",", "#", "(", "!", "="}


def is_resp2(v) -> bool:
    return all(x[0] in RESP2_TYPES for x in walk(v))


def hiredis_reads(v) -> bool:
    """hiredis 3.x reads RESP3 except blob errors and streamed values; its attributes come out
    as separate replies (and inside aggregates in a strange order), and map keys become dict
    keys (hashable ones only, and hiredis 3.5 pairs keys and values wrongly once a key repeats:
    `%3 :1 :1 :2 :2 :1 :3` reads as {1: None, 2: 3}), so keep those out of the comparison."""
    if any(x[0] in ("!", "|", "$?", "*?", "~?", "%?") for x in walk(v)):
        return False
    for x in walk(v):
        if x[0] == "%":
            if any(k[0] not in SCALAR_TYPES for k, _ in x[1]):
                return False
            keys = [to_python(k) for k, _ in x[1]]
            if len(set(keys)) != len(keys):
                return False
    return True


def to_python(v):
    """What hiredis.Reader() returns for v."""
    t = v[0]
    if t == "+":
        return v[1]
    if t == "-":
        return hiredis.ReplyError(v[1].decode("utf-8", "replace"))
    if t == ":":
        return v[1]
    if t == "(":
        return b"%d" % v[1]
    if t == "$":
        return v[1]
    if t == "=":
        return v[2]
    if t == "_":
        return None
    if t in (",", "#"):
        return v[1]
    if t in ("*", "~", ">"):
        return None if v[1] is None else [to_python(e) for e in v[1]]
    if t == "%":
        d = {}
        for k, x in v[1]:
            d[to_python(k)] = to_python(x)
        return d
    raise AssertionError(t)


def norm(x):
    """A comparable form of a decoded reply (errors compare by text, NaN equals itself)."""
    if isinstance(x, Exception):
        return ("error", type(x).__name__, str(x))
    if isinstance(x, float):
        return ("float", repr(x))
    if isinstance(x, bool):
        return ("bool", x)
    if isinstance(x, list):
        return [norm(e) for e in x]
    if isinstance(x, dict):
        return ("map", [(norm(k), norm(e)) for k, e in x.items()])
    return x


_NOT_ENOUGH = object()


def hiredis_all(data: bytes) -> list:
    r = hiredis.Reader(notEnoughData=_NOT_ENOUGH)   # the default sentinel, False, is `#f`
    r.feed(data)
    out = []
    while True:
        x = r.gets()
        if x is _NOT_ENOUGH:
            return out
        out.append(x)


# ---- strategies ------------------------------------------------------------------------------

# Payloads heavy in the bytes that matter to a framer.
TRICKY = [b"\r\n", b"\r", b"\n", b"$", b"*", b":", b"-1", b"0", b"?", b".", b";", b"|", b">",
          b"%", b"a", b"\x00", b"\xff", b"12"]
payload = st.one_of(st.binary(max_size=24),
                    st.lists(st.sampled_from(TRICKY), max_size=10).map(b"".join))
line = payload.map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
int64 = st.integers(-(2 ** 63), 2 ** 63 - 1)

resp2_leaves = st.one_of(
    st.tuples(st.just("+"), line),
    st.tuples(st.just("-"), line),
    st.tuples(st.just(":"), int64),
    st.tuples(st.just("$"), st.one_of(st.none(), payload)),
)
resp3_leaves = st.one_of(
    st.just(("_",)),
    st.tuples(st.just(","), st.floats(allow_nan=True, allow_infinity=True)),
    st.tuples(st.just("#"), st.booleans()),
    st.tuples(st.just("("), st.integers(-(10 ** 40), 10 ** 40)),
    st.tuples(st.just("!"), payload),
    st.tuples(st.just("="), st.sampled_from([b"txt", b"mkd"]), payload),
    st.tuples(st.just("$?"), st.lists(payload.filter(len), max_size=3)),
)
pairs = lambda s: st.lists(st.tuples(s, s), max_size=3)  # noqa: E731


def _resp2_aggregates(inner):
    return st.tuples(st.just("*"), st.one_of(st.none(), st.lists(inner, max_size=4)))


def _resp3_aggregates(inner):
    return st.one_of(
        _resp2_aggregates(inner),
        st.tuples(st.sampled_from(["~", ">"]), st.lists(inner, max_size=4)),
        st.tuples(st.just("%"), pairs(inner)),
        st.tuples(st.just("|"), pairs(inner).filter(len), inner),
        st.tuples(st.sampled_from(["*?", "~?"]), st.lists(inner, max_size=4)),
        st.tuples(st.just("%?"), pairs(inner)),
    )


resp2_values = st.recursive(resp2_leaves, _resp2_aggregates, max_leaves=12)
resp3_values = st.recursive(st.one_of(resp2_leaves, resp3_leaves), _resp3_aggregates,
                            max_leaves=12)
hiredis_values = resp3_values.filter(hiredis_reads)


# ==== replies: framing ========================================================================

def feed_in_chunks(parser, wire: bytes, size: int) -> list:
    out = []
    for i in range(0, len(wire), size):
        out += parser.feed(wire[i:i + size])
    return out


def _split_points(n: int, rng: random.Random):
    if n <= 300:
        return range(n + 1)
    return sorted({0, 1, n - 1, n} | {rng.randrange(n + 1) for _ in range(150)})


def _assert_frames_at_every_split(encoded: list[bytes]):
    data = b"".join(encoded)
    rng = random.Random(len(data))
    for i in _split_points(len(data), rng):
        p = ReplyParser()
        first = p.feed(data[:i])
        # Whatever came out of the first part is a prefix of the answer, never a partial frame.
        assert first == encoded[:len(first)], i
        assert first + p.feed(data[i:]) == encoded, i
        assert p.feed(b"") == []
    p = ReplyParser()
    frames = []
    for i in range(len(data)):
        frames += p.feed(data[i:i + 1])
    assert frames == encoded


@settings(max_examples=300 * SCALE, deadline=None)
@given(st.lists(resp3_values, min_size=1, max_size=4))
@example([("|", [(("+", b"key"), ("+", b"val"))], (">", [("+", b"message"), ("$", b"x")]))])
@example([("*?", [("*?", [("$?", [b"ab", b"c"])]), ("%?", [(("_",), ("*", None))])])])
@example([("$", b"\r\n" * 300), ("*", [("$", b"")] * 40)])
def test_reply_frames_at_every_split_point(values):
    encoded = [encode(v) for v in values]
    _assert_frames_at_every_split(encoded)
    for v, f in zip(values, encoded):
        while v[0] == "|":   # an attribute annotates the value after it
            v = v[2]
        assert ReplyParser.is_push(f) == (v[0] == ">"), f


@settings(max_examples=100 * SCALE, deadline=None)
@given(st.lists(resp3_values, min_size=1, max_size=6), st.data())
def test_reply_frames_in_random_chunks(values, data):
    encoded = [encode(v) for v in values]
    wire = b"".join(encoded)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    p = ReplyParser()
    frames = []
    for a, b in zip([0] + cuts, cuts + [len(wire)]):
        frames += p.feed(wire[a:b])
    assert frames == encoded


def test_large_bulk_reply_in_chunks():
    big = random.Random(1).randbytes(1 << 20) + b"\r\n$5\r\n"
    encoded = [b"+OK\r\n", encode(("$", big)), encode((">", [("+", b"x")])), b":1\r\n"]
    assert feed_in_chunks(ReplyParser(), b"".join(encoded), 4096) == encoded


def test_reply_parser_accepts_bytearray_and_memoryview():
    p = ReplyParser()
    assert p.feed(bytearray(b"+OK\r\n:")) == [b"+OK\r\n"]
    assert p.feed(memoryview(b"1\r\n")) == [b":1\r\n"]


@pytest.mark.parametrize("data", [
    b"hello\r\n",                     # not a type byte
    b"+a\rb\r\n",                     # CR without LF in a line
    b"$abc\r\n",                      # bulk length not a number
    b"$-2\r\n",                       # bulk length below -1
    b"$01\r\n",                       # leading zero
    b"$3\r\nabcd\r\n",                # payload longer than announced
    b"*2\r\n:1\r\n?\r\n",             # bad type inside an aggregate
    b".\r\n",                         # end of a stream outside of one
    b"*2\r\n.\r\n",                   # end of a stream inside a bounded aggregate
    b"$?\r\nx\r\n",                   # a streamed string chunk not starting with ';'
    b"|-1\r\n",                       # negative attribute count
    b"*?\r\n" * 65 + b".\r\n" * 65,   # streams nested deeper than the parser's stack
])
def test_reply_parser_rejects_non_resp(data):
    with pytest.raises(ValueError):
        ReplyParser().feed(data)


def test_reply_parser_deep_streams_within_limit():
    data = b"*?\r\n" * 64 + b".\r\n" * 64
    assert ReplyParser().feed(data) == [data]


# ---- parser bugs found and fixed, kept as regressions ------------------------------------------

def test_is_push_sees_through_attributes():
    """An attribute annotates the value that follows it; the frame is a push all the same."""
    frame = b"|1\r\n+key\r\n+val\r\n>2\r\n+message\r\n+hello\r\n"
    assert ReplyParser().feed(frame) == [frame]
    assert ReplyParser.is_push(frame)


@pytest.mark.parametrize("data", [
    b"%4611686018427387904\r\n",                # 2 * count overflows a long long
    b"|4611686018427387904\r\n+x\r\n",          # same, in an attribute
    b"*2\r\n*9223372036854775807\r\n",          # remaining + count overflows
])
def test_huge_aggregate_counts_are_never_complete_frames(data):
    """A header announcing ~2**62 elements cannot be a complete frame: the parser must wait
    or refuse, not return the header (the proxy would forward half a reply and lose sync)."""
    try:
        frames = ReplyParser().feed(data)
    except ValueError:
        return
    assert frames == [], frames


# ==== replies: hiredis as the reference decoder ===============================================

def _check_against_hiredis(values):
    encoded = [encode(v) for v in values]
    wire = b"".join(encoded)
    frames = feed_in_chunks(ReplyParser(), wire, 7)
    assert frames == encoded
    expected = [norm(to_python(v)) for v in values]
    assert [norm(x) for x in hiredis_all(wire)] == expected
    for frame, want in zip(frames, expected):
        assert [norm(x) for x in hiredis_all(frame)] == [want]


@settings(max_examples=150 * SCALE, deadline=None)
@given(st.lists(resp2_values, min_size=1, max_size=5))
def test_resp2_frames_decode_like_hiredis(values):
    _check_against_hiredis(values)


@settings(max_examples=100 * SCALE, deadline=None)
@given(st.lists(hiredis_values, min_size=1, max_size=5))
def test_resp3_frames_decode_like_hiredis(values):
    _check_against_hiredis(values)


# ==== requests: multibulk =====================================================================

arg = st.one_of(st.binary(max_size=20),
                st.lists(st.sampled_from(TRICKY + [b" ", b'"', b"'"]), max_size=8).map(b"".join))
argvs = st.lists(arg, min_size=1, max_size=8)


def feed_chunks(parser, wire: bytes, cuts) -> list:
    out = []
    for a, b in zip([0] + cuts, cuts + [len(wire)]):
        out += parser.feed(wire[a:b])
    return out


@settings(max_examples=200 * SCALE, deadline=None)
@given(st.lists(argvs, min_size=1, max_size=5), st.data())
@example([[b"SET", b"k\r\n", b"\r\n$3\r\n"]], None)
def test_multibulk_requests_in_random_chunks(cmds, data):
    wire = b"".join(multibulk(c) for c in cmds)
    if data is None:
        cuts = list(range(1, len(wire)))
    else:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    p = RequestParser()
    assert feed_chunks(p, wire, cuts) == cmds
    assert p.pending() == 0
    # hiredis reads the same bytes as the same arrays of bulk strings.
    assert hiredis_all(wire) == cmds


@settings(max_examples=60 * SCALE, deadline=None)
@given(argvs)
def test_multibulk_request_at_every_split_point(argv):
    parts = [multibulk(argv), b"PING\r\n"]
    expected = [argv, [b"PING"]]
    wire = b"".join(parts)
    for i in range(len(wire) + 1):
        p = RequestParser()
        first = p.feed(wire[:i])
        assert first == expected[:len(first)]
        assert p.pending() == i - len(b"".join(parts[:len(first)]))
        assert first + p.feed(wire[i:]) == expected
        assert p.pending() == 0


def test_empty_requests_are_skipped():
    wire = b"*0\r\n*-1\r\n\r\n\n   \r\n*1\r\n$4\r\nPING\r\n*-5\r\n\t\r\nECHO x\r\n"
    assert RequestParser().feed(wire) == [[b"PING"], [b"ECHO", b"x"]]
    p = RequestParser()
    assert feed_chunks(p, wire, list(range(1, len(wire)))) == [[b"PING"], [b"ECHO", b"x"]]
    assert p.pending() == 0


def test_bytes_after_a_bulk_payload_are_skipped_like_redis():
    # redis-server does not check the two bytes that end a bulk payload.
    assert RequestParser().feed(b"*1\r\n$4\r\nPINGxy") == [[b"PING"]]


def test_large_bulk_request_in_4k_chunks():
    big = random.Random(2).randbytes(1 << 20)
    wire = multibulk([b"SET", b"key", big]) + multibulk([b"GET", b"key"])
    p = RequestParser()
    got = []
    for i in range(0, len(wire), 4096):
        got += p.feed(wire[i:i + 4096])
        if not got:
            assert p.pending() == min(i + 4096, len(wire))
    assert got == [[b"SET", b"key", big], [b"GET", b"key"]]
    assert p.pending() == 0


def test_many_arguments():
    argv = [b"%d" % i for i in range(5000)]
    assert RequestParser().feed(multibulk(argv)) == [argv]


def test_request_parser_accepts_bytearray_and_memoryview():
    p = RequestParser()
    assert p.feed(bytearray(b"PING\r\n*1\r\n")) == [[b"PING"]]
    assert p.feed(memoryview(b"$4\r\nPING\r\n")) == [[b"PING"]]


# ==== requests: inline ========================================================================

# What redis-server 7 makes of inline lines (sdssplitargs); each checked against a live server by
# test_inline_table_agrees_with_redis_server. A str is the protocol error's text.
UNBALANCED = "ERR Protocol error: unbalanced quotes in request"
INLINE = [
    (b"PING\r\n", [b"PING"]),
    (b"PING\n", [b"PING"]),
    (b"  get   key  \r\n", [b"get", b"key"]),
    (b"get\tkey\r\n", [b"get", b"key"]),
    (b"get a\rb\r\n", [b"get", b"a", b"b"]),
    (b"set a \"b\\x41c\" 'd e'\r\n", [b"set", b"a", b"bAc", b"d e"]),
    (b'echo "a\\nb\\r\\t\\b\\a\\\\\\"z"\r\n', [b"echo", b'a\nb\r\t\x08\x07\\"z']),
    (b'echo "\\x4g\\xff\\x00\\q"\r\n', [b"echo", b"x4g\xff\x00q"]),
    (b"echo 'it\\'s' 'a\\nb'\r\n", [b"echo", b"it's", b"a\\nb"]),
    (b'echo a"b c" d\'e f\'\r\n', [b"echo", b"ab c", b"de f"]),
    (b"echo \"\" ''\r\n", [b"echo", b"", b""]),
    (b'echo "a"\tb\r\n', [b"echo", b"a", b"b"]),
    (b"echo \xff\xfe\x01\r\n", [b"echo", b"\xff\xfe\x01"]),
    (b'echo a\\x41\r\n', [b"echo", b"a\\x41"]),
    (b'echo "a"b\r\n', UNBALANCED),
    (b"echo 'a'b\r\n", UNBALANCED),
    (b'echo "abc\r\n', UNBALANCED),
    (b"echo 'abc\r\n", UNBALANCED),
    (b'echo "abc\\"\r\n', UNBALANCED),
    (b'echo "\\\r\n', UNBALANCED),
    # sdssplitargs ends an unquoted argument only at ' ', '\t', '\r', '\n' (and NUL): a vertical
    # tab or form feed inside an argument is part of it (they only count as blanks between
    # arguments, where isspace() is used).
    pytest.param(b"echo a\x0bb c\x0cd\r\n", [b"echo", b"a\x0bb", b"c\x0cd"], id="vt-ff-inside-arg"),
    (b"echo \x0ba \x0c\r\n", [b"echo", b"a"]),
]


def _parse(wire: bytes):
    try:
        return RequestParser().feed(wire)
    except ProtocolError as e:
        return str(e)


@pytest.mark.parametrize("wire,expected", INLINE)
def test_inline_commands(wire, expected):
    got = _parse(wire)
    if isinstance(expected, str):
        assert got == expected
    else:
        assert got == [expected]
        # The same, byte by byte.
        p = RequestParser()
        assert feed_chunks(p, wire, list(range(1, len(wire)))) == [expected]


def repr_arg(a: bytes) -> bytes:
    """sdscatrepr(), as redis-cli quotes an argument."""
    out = [b'"']
    for c in a:
        ch = bytes([c])
        if ch in b'\\"':
            out.append(b"\\" + ch)
        elif ch in b"\n\r\t\a\b":
            out.append(b"\\" + b"nrtab"[b"\n\r\t\a\b".index(ch):][:1])
        elif 0x20 <= c < 0x7F:
            out.append(ch)
        else:
            out.append(b"\\x%02x" % c)
    out.append(b'"')
    return b"".join(out)


@settings(max_examples=200 * SCALE, deadline=None)
@given(argvs, st.sampled_from([b" ", b"\t", b"  ", b" \t "]), st.sampled_from([b"\r\n", b"\n"]))
def test_inline_quoted_arguments_round_trip(argv, sep, eol):
    wire = sep.join(repr_arg(a) for a in argv) + eol
    assert RequestParser().feed(wire) == [argv]


@settings(max_examples=100 * SCALE, deadline=None)
@given(st.lists(st.lists(st.binary(min_size=1, max_size=8).filter(
    lambda a: not any(c in a for c in b" \t\r\n\x0b\x0c\"'\x00")), min_size=1, max_size=6),
    min_size=1, max_size=4), st.data())
def test_inline_pipeline_in_random_chunks(cmds, data):
    cmds = [c for c in cmds if not c[0].startswith(b"*")]   # that would be a multibulk
    wire = b"".join(b" ".join(c) + b"\r\n" for c in cmds)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    p = RequestParser()
    assert feed_chunks(p, wire, cuts) == cmds
    assert p.pending() == 0


def test_inline_and_multibulk_interleaved():
    wire = b"PING\r\n" + multibulk([b"GET", b"a b"]) + b"GET 'a b'\r\n" + multibulk([b"X"])
    expected = [[b"PING"], [b"GET", b"a b"], [b"GET", b"a b"], [b"X"]]
    assert RequestParser().feed(wire) == expected
    assert feed_chunks(RequestParser(), wire, list(range(1, len(wire)))) == expected


# ==== requests: protocol errors ===============================================================

ERR = "ERR Protocol error: "
ERRORS = [
    (b"*1\r\n$abc\r\n", ERR + "invalid bulk length"),
    (b"*a\r\n", ERR + "invalid multibulk length"),
    (b"*2\r\n:3\r\n", ERR + "expected '$', got ':'"),
    (b"*1\r\n\xff\r\n", ERR + "expected '$', got '\xff'"),
    (b"x" * 70000, ERR + "too big inline request"),
    (b"*1\r\n$600000000\r\n", ERR + "invalid bulk length"),
    (b"*1\r\n$-1\r\n", ERR + "invalid bulk length"),
    (b"*1\r\n$01\r\n", ERR + "invalid bulk length"),
    (b"*1\r\n$+1\r\n", ERR + "invalid bulk length"),
    (b"*1\r\n$\r\n", ERR + "invalid bulk length"),
    (b"*01\r\n", ERR + "invalid multibulk length"),
    (b"*+1\r\n", ERR + "invalid multibulk length"),
    (b"*\r\n", ERR + "invalid multibulk length"),
    (b"*99999999999999999999\r\n", ERR + "invalid multibulk length"),
    (b"*" + b"1" * 70000, ERR + "too big mbulk count string"),
    (b"*1\r\n$" + b"1" * 70000, ERR + "too big bulk count string"),
    (b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$x\r\n", ERR + "invalid bulk length"),
    (b'PING\r\nGET "a\r\n', UNBALANCED),
]


@pytest.mark.parametrize("wire,text", ERRORS, ids=lambda x: repr(x[:24]) if isinstance(x, bytes) else None)
def test_protocol_errors(wire, text):
    p = RequestParser()
    with pytest.raises(ProtocolError) as e:
        p.feed(wire)
    assert str(e.value) == text
    # The parser refuses everything afterwards.
    for more in (b"", b"PING\r\n"):
        with pytest.raises(ProtocolError) as again:
            p.feed(more)
        assert str(again.value) == text


def test_commands_before_an_error_in_another_chunk_are_returned():
    p = RequestParser()
    assert p.feed(b"PING\r\n") == [[b"PING"]]
    with pytest.raises(ProtocolError):
        p.feed(b"*a\r\n")


def test_inline_just_under_the_limit():
    arg = b"x" * 60000
    p = RequestParser()
    got = []
    for i in range(0, len(arg), 4096):
        got += p.feed(arg[i:i + 4096])
    assert got == [] and p.pending() == len(arg)
    assert p.feed(b"\r\n") == [[arg]]


@pytest.mark.parametrize(
    "wire,text", ERRORS + [(b"*2\r\n$1\r\na\r\n:\r\n", ERR + "expected '$', got ':'")],
    ids=lambda x: repr(x[:24]) if isinstance(x, bytes) else None)
def test_protocol_errors_fed_byte_by_byte(wire, text):
    """redis-server answers a protocol error as soon as the offending bytes are read. Fed in
    small pieces, the parser must raise by the time the last byte is in, not wait for more:
    the bytes it waits for before parsing again (`need`) must never hold an error back, or a
    client that waits for the answer hangs."""
    step = 4096 if len(wire) > 1000 else 1
    p = RequestParser()
    with pytest.raises(ProtocolError) as e:
        for i in range(0, len(wire), step):
            p.feed(wire[i:i + step])
    assert str(e.value) == text


# ==== against a live redis-server =============================================================

@pytest.fixture(scope="module")
def redis_port(single_redis):
    """A plain redis-server on 127.0.0.1 (conftest), for checking the parser's notion of redis."""
    return single_redis.connection_pool.connection_kwargs["port"]


def _redis_replies(port: int, wire: bytes, count: int) -> list:
    """Send wire, read up to `count` replies (fewer if the server closes the connection)."""
    with RawClient(port, timeout=5) as c:
        c.send_bytes(wire)
        return c.replies(count, closed_ok=True)


def _redis_inline_argv(port: int, line: bytes):
    """What redis-server makes of an inline line: a list of arguments, or the error text."""
    replies = _redis_replies(port, b"DEL dmc:argv\r\nRPUSH dmc:argv " + line + b"\r\n"
                             b"LRANGE dmc:argv 0 -1\r\n", 3)
    push = replies[1]
    if isinstance(push, tuple):         # ("error", text)
        if push[1].startswith("ERR Protocol error"):
            return push[1]
        return None    # wrong number of arguments: RPUSH with no value
    assert push == len(replies[2])
    return replies[2]


@pytest.mark.parametrize("wire,expected", INLINE)
def test_inline_table_agrees_with_redis_server(redis_port, wire, expected):
    line = wire.rstrip(b"\n").rstrip(b"\r")
    assert _redis_inline_argv(redis_port, line) == expected


@pytest.mark.parametrize("wire,text", ERRORS, ids=lambda x: repr(x[:24]) if isinstance(x, bytes) else None)
def test_error_table_agrees_with_redis_server(redis_port, wire, text):
    replies = _redis_replies(redis_port, wire, 3)
    assert replies[-1] == ("error", text.encode("latin-1").decode("utf-8", "replace"))


# Bytes that matter to sdssplitargs, vertical tab and form feed among them (blanks between
# arguments, part of an unquoted one: test_inline_commands[vt-ff-inside-arg]). NUL is left out
# because redis-server's strchr() stops at it and never sees the end of the line.
INLINE_ALPHABET = [b" ", b"\t", b"\r", b'"', b"'", b"\\", b"x", b"4", b"1", b"f", b"G", b"n",
                   b"r", b"t", b"a", b"b", b"\xc3", b"\xff", b"\x01", b"\x0b", b"\x0c"]


@settings(max_examples=150 * SCALE, deadline=None)
@given(st.lists(st.sampled_from(INLINE_ALPHABET), max_size=16).map(b"".join))
@example(b"\"a\\x41\" 'b\\'c'")
def test_inline_splitting_agrees_with_redis_server(redis_port, line):
    theirs = _redis_inline_argv(redis_port, line)
    ours = _parse(b"RPUSH dmc:argv " + line + b"\r\n")
    if isinstance(ours, str):
        assert theirs == ours
    elif len(ours[0]) < 3:
        assert theirs is None
    else:
        assert theirs == ours[0][2:]
