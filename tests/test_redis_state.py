"""KvStateMachine's Redis entries, without processes: time comes from the
entries (a follower never expires keys on its own clock), a retried session
write applies once, malformed entries are answered and never raise, and
snapshots carry the Redis state (and still load when made before it)."""
from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from raftcore.kv import KvStateMachine
from raftcore.kv.redis.apply import EXPIRE_DUE, REDIS_CMD, REDIS_CMD_V1, read_commands
from raftcore.kv.redis.resp import is_error
from raftcore.messages import SnapshotMeta
from raftcore.types import ENTRY_NORMAL, Entry

from async_runner import run_guarded


class Log:
    """Applies payloads as consecutive entries."""

    def __init__(self, sm: KvStateMachine) -> None:
        self.sm = sm
        self.index = 0

    def apply(self, *payloads):
        out = []
        for p in payloads:
            self.index += 1
            out.extend(self.sm.apply([Entry(1, self.index, ENTRY_NORMAL, p)]))
        return out


def redis(now, *cmds):
    return [REDIS_CMD, now, [list(c) for c in cmds]]


def test_deadlines_come_from_the_entries_not_the_clock():
    sm = KvStateMachine()
    log = Log(sm)
    assert log.apply(redis(1_000, [b"SET", b"k", b"v", b"PX", b"500"])) == [["OK"]]
    assert sm.redis.expires[b"k"] == 1_500
    # Reads at the leader's time: hidden once the deadline passed ...
    assert read_commands(sm, 1_499, [[b"GET", b"k"], [b"PTTL", b"k"]]) == [b"v", 1]
    assert read_commands(sm, 1_500, [[b"GET", b"k"], [b"TTL", b"k"]]) == [None, -2]
    # ... but nothing is deleted until an entry says so.
    assert b"k" in sm.data
    assert log.apply(redis(1_200, [EXPIRE_DUE])) == [[0]]     # not yet at that entry's time
    assert log.apply(redis(1_600, [EXPIRE_DUE])) == [[1]]
    assert b"k" not in sm.data and not sm.redis.expires


def test_time_in_the_log_never_goes_back():
    sm = KvStateMachine()
    log = Log(sm)
    log.apply(redis(10_000, [b"SET", b"k", b"v", b"PX", b"100"]),
              redis(20_000, [b"SET", b"other", b"v"]))
    # A later entry stamped by a leader whose clock is behind: the key is
    # still expired for it.
    assert log.apply(redis(5_000, [b"GET", b"k"])) == [[None]]
    assert sm.redis.clock_ms == 20_000


def test_a_retried_session_write_applies_once():
    sm = KvStateMachine()
    log = Log(sm)
    write = ["session", "node-a", 1, 0, redis(1, [b"INCR", b"n"], [b"INCR", b"n"])]
    first, again = log.apply(write, write)
    assert first == again == ["ok", [1, 2]]
    assert sm.data[b"n"] == b"2" and sm.deduplicated == 1


def test_a_transaction_applies_only_if_watched_keys_are_unchanged():
    sm = KvStateMachine()
    log = Log(sm)
    log.apply(redis(1, [b"SET", b"k", b"1"]))
    seen = read_commands(sm, 1, [[b"__version__", b"k"], [b"__version__", b"absent"]])
    log.apply(redis(2, [b"SET", b"k", b"2"]), redis(3, [b"SET", b"k", b"1"]))
    assert log.apply([REDIS_CMD, 4, [[b"INCR", b"k"]], [[b"k", seen[0]]]]) == [None]
    assert log.apply([REDIS_CMD, 5, [[b"INCR", b"absent"]], [[b"absent", seen[1]]]]) == [[1]]
    # A deleted key keeps its mark: deleting it changes it.
    now = read_commands(sm, 6, [[b"__version__", b"absent"]])[0]
    log.apply(redis(6, [b"DEL", b"absent"]))
    assert log.apply([REDIS_CMD, 7, [], [[b"absent", now]]]) == [None]


def test_every_write_of_an_entry_takes_that_entry_s_modification_index():
    sm = KvStateMachine()
    log = Log(sm)
    versions, tombstones = sm.redis.versions, sm.redis.tombstones
    # The fast path (SET, INCR) and the careful one (SET NX) alike.
    log.apply(redis(1, [b"SET", b"a", b"1"], [b"INCR", b"n"], [b"SET", b"b", b"2", b"NX"]))
    assert versions == {b"a": 1, b"n": 1, b"b": 1} and sm.redis.counter == 1
    log.apply(redis(2, [b"SET", b"a", b"2"], [b"DEL", b"b"]))
    assert versions == {b"a": 2, b"n": 1} and tombstones == {b"b": 2}
    # One int object per entry, not one per write.
    log.apply(redis(3, *[[b"SET", b"k%d" % i, b"v"] for i in range(50)]))
    assert len({id(versions[b"k%d" % i]) for i in range(50)}) == 1


def test_entries_of_earlier_versions_keep_one_modification_index_per_write():
    sm = KvStateMachine()
    log = Log(sm)
    old = [REDIS_CMD_V1, 1, [[b"SET", b"a", b"1"], [b"INCR", b"n"], [b"SET", b"b", b"2", b"NX"],
                             [b"DEL", b"a"]]]
    log.apply(old)
    assert sm.redis.versions == {b"n": 2, b"b": 3} and sm.redis.tombstones == {b"a": 4}
    log.apply(redis(2, [b"SET", b"c", b"1"]))
    assert sm.redis.versions[b"c"] == 5 == sm.redis.counter
    # A WATCH recorded by an earlier version still decides alike.
    assert log.apply([REDIS_CMD_V1, 3, [[b"INCR", b"n"]], [[b"n", 2]]]) == [[2]]
    assert log.apply([REDIS_CMD_V1, 4, [[b"INCR", b"n"]], [[b"n", 2]]]) == [None]


def test_a_log_of_both_kinds_gives_every_node_the_same_indexes_whatever_its_snapshot():
    payloads = [[REDIS_CMD_V1, 1, [[b"SET", b"a", b"1"], [b"SET", b"b", b"1"]]],
                redis(2, [b"SET", b"a", b"2"], [b"DEL", b"b"]),
                [REDIS_CMD_V1, 3, [[b"INCR", b"n"], [b"SET", b"a", b"3"]]],
                redis(4, [b"SET", b"c", b"1"], [b"INCR", b"n"])]
    whole = KvStateMachine()
    Log(whole).apply(*payloads)
    for cut in range(1, len(payloads)):
        first = KvStateMachine()
        log = Log(first)
        log.apply(*payloads[:cut])

        async def build(sm=first):
            return await sm.build_snapshot(lambda fn, *a: _now(fn(*a)))
        snap = run_guarded(build(), 10)
        restored = KvStateMachine()
        run_guarded(restored.install_snapshot(snap.meta, snap.data), 10)
        rest = Log(restored)
        rest.index = log.index
        rest.apply(*payloads[cut:])
        assert restored.redis.dump() == whole.redis.dump(), cut
        assert restored.data == whole.data


junk = st.recursive(st.one_of(st.none(), st.integers(), st.binary(max_size=5),
                              st.text(max_size=5)),
                    lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(now=junk, cmds=junk, watched=junk, use_watch=st.booleans())
def test_malformed_entries_are_answered_never_raised(now, cmds, watched, use_watch):
    sm = KvStateMachine()
    entry = [REDIS_CMD, now, cmds] + ([watched] if use_watch else [])
    (reply,) = Log(sm).apply(entry, )
    assert reply is None or is_error(reply) or isinstance(reply, list)


def test_snapshot_keeps_the_redis_state_and_old_snapshots_load():
    sm = KvStateMachine()
    log = Log(sm)
    log.apply(redis(1_000, [b"SET", b"k", b"v", b"EX", b"100"], [b"DEL", b"gone"],
                    [b"SET", b"gone", b"x"], [b"DEL", b"gone"]))

    async def build():
        return await sm.build_snapshot(lambda fn, *a: _now(fn(*a)))
    snap = run_guarded(build(), 10)
    copy = KvStateMachine()
    run_guarded(copy.install_snapshot(snap.meta, snap.data), 10)
    assert copy.redis.dump() == sm.redis.dump() and copy.data == sm.data
    # A snapshot made before the Redis commands existed: no "redis" field.
    old = msgpack.unpackb(snap.data, raw=False, strict_map_key=False)
    del old["redis"]
    older = KvStateMachine()
    run_guarded(older.install_snapshot(SnapshotMeta(1, 1, None, "old"),
                                       msgpack.packb(old, use_bin_type=True)), 10)
    assert older.data == sm.data and older.redis.dump() == [[], [], [], 0, 0, 0]


async def _now(value):
    return value


_keys = st.sampled_from([b"a", b"b", b"c", "s", 7])
_values = st.one_of(st.binary(max_size=4), st.sampled_from(
    [b"1", b"-3", b"007", b"9223372036854775806", b"9223372036854775807", "str", 5, None]))
_batch = st.lists(st.one_of(
    st.tuples(st.sampled_from([b"SET", b"set", b"Set"]), _keys, _values),
    st.tuples(st.sampled_from([b"GET", b"get", b"gEt"]), _keys),
    st.tuples(st.sampled_from([b"SET"]), _keys, _values, st.sampled_from([b"PX", b"XX", b"NX"]),
              st.sampled_from([b"1", b"50"])),
    st.tuples(st.sampled_from([b"DEL", b"INCR", b"incr", b"PERSIST"]), _keys),
    st.tuples(st.sampled_from([b"PEXPIRE"]), _keys, st.sampled_from([b"1", b"100"])),
    st.tuples(st.sampled_from([b"SET", b"GET"])),
    st.just([b"SET", [b"unhashable"], b"v"]),
), max_size=30)


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(st.tuples(st.integers(min_value=0, max_value=200), _batch), max_size=6))
def test_a_batch_applies_as_its_commands_one_by_one(batches):
    # run_commands' compiled path (plain SET/GET/INCR of a key without a
    # deadline) against run_command for every command, in the same order:
    # the same replies and the same map, deadlines and modification indexes.
    from raftcore.kv.redis.apply import run_command, run_commands
    from raftcore.kv.redis.keyspace import Keyspace
    fast, slow = KvStateMachine(), KvStateMachine()
    now = 0
    for step, cmds in batches:
        now += step
        cmds = [list(c) for c in cmds]
        for mutate in (True, False):
            got = run_commands(Keyspace(fast, now, mutate), cmds)
            ks = Keyspace(slow, now, mutate)
            assert got == [run_command(ks, c) for c in cmds]
        assert fast.data == slow.data and fast.redis.dump() == slow.redis.dump()
