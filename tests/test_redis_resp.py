"""The RESP request parser and reply encoder, without a server."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from raftcore.kv.redis.resp import NULL_ARRAY, Map, RespParser, encode, error

from redis_harness import encode_command

commands = st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=5), max_size=10)


@given(cmds=commands, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
def test_commands_are_the_same_however_the_bytes_arrive(cmds, cuts):
    parses_in_pieces(cmds, cuts)


def parses_in_pieces(cmds: list, cuts: list) -> None:
    """`cmds` encoded, fed cut at `cuts`, parse back to `cmds`."""
    data = b"".join(encode_command(c) for c in cmds)
    p = RespParser()
    got = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        got.extend(p.feed(data[last:cut]))
        last = cut
    assert got == cmds and p.error is None


# Arguments made of CRLFs and RESP markers: the fast path, which cuts at
# every CRLF, must hand each of those over to the careful parser.
tricky = st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b"$3", b"*2", b"a", b""]),
                  max_size=6).map(b"".join)


@given(cmds=st.lists(st.lists(tricky, min_size=1, max_size=4), max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_arguments_holding_crlf_and_markers_parse_exactly(cmds, cuts):
    parses_in_pieces(cmds, cuts)


def test_lengths_written_unusually_and_an_error_after_good_commands():
    p = RespParser()
    assert p.feed(b"*2\r\n$03\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n") == \
        [[b"GET", b"k"], [b"PING"]]
    assert p.feed(b"*1\r\n$4\r\nPING\r\n*1\r\n$-5\r\nxx\r\n") == [[b"PING"]]
    assert p.error == "invalid bulk length"


def test_a_large_bulk_string_in_many_pieces():
    value = bytes(range(256)) * 4000
    data = encode_command([b"SET", b"k", value])
    p = RespParser()
    got = []
    for i in range(0, len(data), 1000):
        got.extend(p.feed(data[i:i + 1000]))
    assert got == [[b"SET", b"k", value]]


def test_inline_commands_with_quotes():
    p = RespParser()
    assert p.feed(b'SET k "a b\\n"\r\nGET \'k\'\n\r\nPING\r\n') == \
        [[b"SET", b"k", b"a b\n"], [b"GET", b"k"], [b"PING"]]


def test_malformed_requests_stop_the_parser_with_redis_messages():
    for data, message in [(b"*1\r\n+GET\r\n", "expected '$', got '+'"),
                          (b"*x\r\n", "invalid multibulk length"),
                          (b"*1\r\n$-5\r\n", "invalid bulk length"),
                          (b"*1\r\n$11\r\n", "invalid bulk length"),
                          (b'GET "k\r\n', "unbalanced quotes in request"),
                          (b'GET "k"x\r\n', "unbalanced quotes in request"),
                          (b"*" + b"1" * 70_000, "too big mbulk count string"),
                          (b"*1\r\n$" + b"1" * 70_000, "too big bulk count string"),
                          (b"GET " + b"k" * 70_000, "too big inline request")]:
        p = RespParser(max_bulk=10)
        assert p.feed(b"*1\r\n$4\r\nPING\r\n" + data) == [[b"PING"]], data
        assert p.error == message, data
        assert p.feed(b"*1\r\n$4\r\nPING\r\n") == []       # nothing after it


def test_replies_in_resp2_and_resp3():
    assert encode("OK") == b"+OK\r\n"
    assert encode(b"v") == b"$1\r\nv\r\n"
    assert encode(-3) == b":-3\r\n"
    assert encode(None) == b"$-1\r\n" and encode(None, resp3=True) == b"_\r\n"
    assert encode(NULL_ARRAY) == b"*-1\r\n" and encode(NULL_ARRAY, resp3=True) == b"_\r\n"
    assert encode([b"a", None, 1]) == b"*3\r\n$1\r\na\r\n$-1\r\n:1\r\n"
    assert encode(error("ERR bad\r\nthing")) == b"-ERR bad  thing\r\n"
    m = Map([(b"proto", 3)])
    assert encode(m) == b"*2\r\n$5\r\nproto\r\n:3\r\n"
    assert encode(m, resp3=True) == b"%1\r\n$5\r\nproto\r\n:3\r\n"
