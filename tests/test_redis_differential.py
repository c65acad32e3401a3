"""Differential test: the same random command sequences go to a real
redis-server and to a 3-node `raftcore kv --redis` cluster (to the leader
or to a follower, sent one by one or pipelined), and every reply must be
the same, byte for byte (errors' text included).

Only what Redis leaves open is normalized: the order of KEYS and of a
one-page SCAN, the exact number a positive TTL/PTTL gives, and CLIENT ID."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kv_harness import wait_leader
from async_runner import run_guarded
from redis_harness import RedisKvCluster, RespClient, redis_server

KEYS = [b"k1", b"k2", b"k3", b"n"]
VALUES = [b"", b"1", b"-5", b"abc", b"9223372036854775807", b"-9223372036854775808", b"01",
          b" 1", b"+1", b"3.5", b"x" * 20]
INTS = [b"0", b"1", b"-1", b"100", b"9223372036854775807", b"-9223372036854775808", b"x",
        b"1.5", b"9223372036854775808", b""]
#: Deadlines far enough out that none passes during an example (timing is
#: not what this test compares), in the past, or invalid.
SECONDS = [b"100", b"1000", b"-1", b"0", b"x", b"4611686018427387904", b"99999999999999999"]
MILLIS = [b"100000", b"2000000", b"-1", b"0", b"x", b"9223372036854775807"]

key = st.sampled_from(KEYS)
value = st.sampled_from(VALUES)
keys = st.lists(key, min_size=0, max_size=4)


def _cmd(name, *parts):
    return st.tuples(st.just(name), *parts).map(lambda t: [t[0], *_flat(t[1:])])


def _flat(parts):
    out = []
    for p in parts:
        if isinstance(p, (list, tuple)):
            out.extend(_flat(p))
        else:
            out.append(p)
    return out


set_option = st.one_of(
    st.sampled_from([[b"NX"], [b"XX"], [b"GET"], [b"KEEPTTL"], [b"nx"], [b"BAD"]]),
    st.tuples(st.sampled_from([b"EX", b"ex"]), st.sampled_from(SECONDS)).map(list),
    st.tuples(st.just(b"PX"), st.sampled_from(MILLIS)).map(list))
expire_option = st.lists(st.sampled_from([b"NX", b"XX", b"GT", b"LT", b"YY"]), max_size=2)
pattern = st.sampled_from([b"*", b"k*", b"k[12]", b"k?", b"?", b"n", b"[^k]*", b"*3", b"\\k*"])

command = st.one_of(
    _cmd(b"GET", key), _cmd(b"SET", key, value, st.lists(set_option, max_size=3)),
    _cmd(b"GETSET", key, value), _cmd(b"SETNX", key, value), _cmd(b"DEL", keys),
    _cmd(b"EXISTS", keys), _cmd(b"MGET", keys),
    _cmd(b"MSET", st.lists(st.one_of(key, value), max_size=5)),
    _cmd(b"MSETNX", st.lists(st.one_of(key, value), max_size=5)),
    _cmd(b"INCR", key), _cmd(b"DECR", key), _cmd(b"INCRBY", key, st.sampled_from(INTS)),
    _cmd(b"DECRBY", key, st.sampled_from(INTS)), _cmd(b"APPEND", key, value),
    _cmd(b"STRLEN", key), _cmd(b"GETDEL", key),
    _cmd(b"EXPIRE", key, st.sampled_from(SECONDS), expire_option),
    _cmd(b"PEXPIRE", key, st.sampled_from(MILLIS), expire_option),
    _cmd(b"TTL", key), _cmd(b"PTTL", key), _cmd(b"PERSIST", key),
    _cmd(b"KEYS", pattern), _cmd(b"SCAN", st.just(b"0"), st.just(b"MATCH"), pattern,
                                    st.just(b"COUNT"), st.just(b"1000")),
    _cmd(b"DBSIZE"), _cmd(b"PING", st.lists(value, max_size=2)), _cmd(b"ECHO", value),
    _cmd(b"SELECT", st.sampled_from([b"0", b"x"])),
    _cmd(b"NOSUCHCOMMAND", st.lists(value, max_size=3)),
    # Wrong arities.
    _cmd(b"GET", keys.filter(lambda k: len(k) != 1)),
    _cmd(b"INCR", st.lists(key, min_size=2, max_size=2)),
    # Transactions (one connection: its own writes also invalidate a WATCH).
    _cmd(b"MULTI"), _cmd(b"EXEC"), _cmd(b"DISCARD"), _cmd(b"WATCH", keys),
    _cmd(b"UNWATCH"),
)


def normalize(cmd: list, reply):
    name = cmd[0].upper()
    if name in (b"TTL", b"PTTL") and isinstance(reply, int) and reply > 0:
        return "positive"
    if name == b"KEYS" and isinstance(reply, list):
        return sorted(reply)
    if name == b"SCAN" and isinstance(reply, list) and len(reply) == 2:
        return [reply[0], sorted(reply[1])]
    if name == b"EXEC" and isinstance(reply, list):
        return [normalize(c, r) for c, r in zip(cmd[1], reply)]
    return type(reply).__name__, reply


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redis-diff")
    with redis_server(tmp) as port, RedisKvCluster(tmp) as c:
        c.start_all()
        run_guarded(wait_leader(c), 60)
        yield port, c


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cmds=st.lists(command, min_size=1, max_size=25),
       pipelined=st.booleans(), node=st.integers(min_value=1, max_value=3))
def test_same_replies_as_redis_server(servers, cmds, pipelined, node):
    port, c = servers
    with RespClient(port) as real, RespClient(c.redis_ports[node]) as ours:
        for client in (real, ours):
            assert client.call(b"FLUSHDB") == "OK"
        if pipelined:
            got_real, got_ours = real.pipeline(cmds), ours.pipeline(cmds)
        else:
            got_real = [real.call(*cmd) for cmd in cmds]
            got_ours = [ours.call(*cmd) for cmd in cmds]
    queued: list = []
    for cmd, a, b in zip(cmds, got_real, got_ours):
        # EXEC's replies are normalized like the commands queued before it.
        name = cmd[0].upper()
        if name == b"MULTI":
            queued = []
        elif name == b"EXEC":
            cmd = [cmd[0], queued]
            queued = []
        elif b == "QUEUED":
            queued.append(cmd)
        assert normalize(cmd, a) == normalize(cmd, b), (
            f"{b' '.join(cmd if name != b'EXEC' else [b'EXEC'])!r}: redis-server answered "
            f"{a!r}, raftcore {b!r}\nsequence: {cmds}")
