"""KvStateMachine's Redis entries, without processes: time comes from the
entries (a follower never expires keys on its own clock), a retried session
write applies once, WATCH's modification indexes are recorded while TRACK
entries ask for them and an untracked entry aborts a WATCH it spans,
malformed entries are answered and never raise, and snapshots carry the
Redis state (and still load when made before it)."""
from __future__ import annotations

import asyncio
import random
import sys
import sysconfig

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftcore.errors import Fatal
from raftcore.kv import KvStateMachine
from raftcore.kv.state import KV_SNAPSHOT_FORMAT
from raftcore.kv.redis import keyspace
from raftcore.kv.redis.apply import (EXPIRE_DUE, MAX_TRACK_SPAN_MS, REDIS_CMD, REDIS_CMD_V1,
                                     REDIS_CMD_V2, REDIS_CMD_V3, TRACK, VERSION, NewerEntry,
                                     read_commands)
from raftcore.kv.redis.resp import is_error
from raftcore.messages import SnapshotMeta
from raftcore.types import ENTRY_NORMAL, Entry

from async_runner import run_guarded
from cluster_harness import (GUARD, Cluster, RecordingRouter, cluster_test, members,
                             wait_any_leader)


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


def tracked(now=0, span=1_000_000):
    """The entry WATCH proposes: entries stamped up to now + span record
    modification indexes."""
    return redis(now, [TRACK, span])


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
    log.apply(tracked(), redis(1, [b"SET", b"k", b"1"]))
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
    log.apply(tracked())
    # The fast path (SET, INCR) and the careful one (SET NX) alike.
    log.apply(redis(1, [b"SET", b"a", b"1"], [b"INCR", b"n"], [b"SET", b"b", b"2", b"NX"]))
    assert versions == {b"a": 2, b"n": 2, b"b": 2} and sm.redis.counter == 2
    log.apply(redis(2, [b"SET", b"a", b"2"], [b"DEL", b"b"]))
    assert versions == {b"a": 3, b"n": 2} and tombstones == {b"b": 3}
    # One int object per entry, not one per write.
    log.apply(redis(3, *[[b"SET", b"k%d" % i, b"v"] for i in range(50)]))
    assert len({id(versions[b"k%d" % i]) for i in range(50)}) == 1


def test_entries_record_modification_indexes_only_while_tracked():
    sm = KvStateMachine()
    log = Log(sm)
    st = sm.redis
    # No WATCH asked: the writes record nothing (one map write per SET),
    # and every key counts as modified by the newest such entry.
    log.apply(redis(1_000, [b"SET", b"a", b"1"], [b"INCR", b"n"], [b"SET", b"b", b"2", b"NX"],
                    [b"DEL", b"b"]))
    assert st.versions == {} and st.tombstones == {} and st.untracked == st.counter == 1
    assert read_commands(sm, 1_000, [[VERSION, b"a"], [VERSION, b"never"]]) == [1, 1]
    # A TRACK reaches span ms past its own stamp (and never shortens).
    assert log.apply(tracked(2_000, 500)) == [["OK"]]
    assert st.tracking_until == 2_500 and st.untracked == 2
    log.apply(tracked(2_100, 100))
    assert st.tracking_until == 2_500 and st.untracked == 2
    log.apply(redis(2_499, [b"SET", b"a", b"2"], [b"DEL", b"n"]))
    assert st.versions == {b"a": 4} and st.tombstones == {b"n": 4} and st.untracked == 2
    assert read_commands(sm, 2_499, [[VERSION, b"a"], [VERSION, b"n"], [VERSION, b"x"]]) == \
        [4, 4, 2]
    # Stamped at the end of the span: untracked again.
    log.apply(redis(2_500, [b"SET", b"c", b"1"]))
    assert b"c" not in st.versions and st.untracked == 5
    assert read_commands(sm, 2_500, [[VERSION, b"a"]]) == [5]


def test_a_watch_spanning_only_tracked_entries_is_exact_and_one_spanning_an_untracked_aborts():
    sm = KvStateMachine()
    log = Log(sm)
    log.apply(tracked(0, 1_000), redis(1, [b"SET", b"k", b"1"], [b"SET", b"other", b"1"]))
    seen = read_commands(sm, 1, [[VERSION, b"k"]])[0]
    # Another key changes: the transaction applies.
    log.apply(redis(2, [b"SET", b"other", b"2"]))
    assert log.apply([REDIS_CMD, 3, [[b"INCR", b"k"]], [[b"k", seen]]]) == [[2]]
    # The watched key changes and changes back: it aborts.
    seen = read_commands(sm, 3, [[VERSION, b"k"]])[0]
    log.apply(redis(4, [b"SET", b"k", b"9"]), redis(5, [b"SET", b"k", b"2"]))
    assert log.apply([REDIS_CMD, 6, [[b"INCR", b"k"]], [[b"k", seen]]]) == [None]
    # An untracked entry between WATCH and EXEC (the tracking was not
    # renewed) may have changed anything: it aborts though only `other`
    # changed.
    seen = read_commands(sm, 6, [[VERSION, b"k"]])[0]
    log.apply(redis(1_000, [b"SET", b"other", b"3"]))
    assert log.apply([REDIS_CMD, 1_001, [[b"INCR", b"k"]], [[b"k", seen]]]) == [None]
    # An EXEC entry that is itself untracked compares with the state before it.
    seen = read_commands(sm, 1_002, [[VERSION, b"k"]])[0]
    assert log.apply([REDIS_CMD, 1_002, [[b"INCR", b"k"]], [[b"k", seen]]]) == [[3]]
    assert sm.data[b"k"] == b"3"


def test_a_watched_key_that_expires_aborts_an_untracked_exec():
    # The key expires between WATCH and an EXEC whose entry is untracked:
    # the check's own deletion of the expired key is a modification.
    sm = KvStateMachine()
    log = Log(sm)
    log.apply(tracked(1_000, 60_000))
    seen = read_commands(sm, 1_001, [[VERSION, b"k"]])[0]          # absent
    log.apply(redis(1_002, [b"SET", b"k", b"x", b"PX", b"100"]))
    assert log.apply([REDIS_CMD, 61_000, [[b"SET", b"k", b"mine"]], [[b"k", seen]]]) == [None]
    # Another transaction's untracked check deletes an expired key and
    # aborts: that key's version never goes back to an earlier one.
    sm = KvStateMachine()
    log = Log(sm)
    log.apply(tracked(1_000, 60_000), redis(1_001, [b"SET", b"k", b"old"]))
    first = read_commands(sm, 1_002, [[VERSION, b"k"]])[0]
    log.apply(redis(1_003, [b"SET", b"k", b"new", b"PX", b"100"]))
    assert log.apply([REDIS_CMD, 61_000, [[b"SET", b"z", b"1"]],
                      [[b"k", 0], [b"z", 12_345]]]) == [None]
    assert read_commands(sm, 61_001, [[VERSION, b"k"]])[0] > first


def exec_entry(now, watched, tag=REDIS_CMD):
    """A transaction's entry: SET x 1 if every watched [key, index] holds."""
    return [tag, now, [[b"SET", b"x", b"1"]], watched]


def test_a_key_expired_already_when_watched_is_no_change_when_deleted():
    # Redis 7: WATCH of a key whose deadline had passed, then its deletion
    # (the leader's sweep, or a write's check), does not abort EXEC.
    sm = KvStateMachine()
    log = Log(sm)
    log.apply(tracked(1_000, 60_000), redis(1_000, [b"SET", b"k", b"v", b"PX", b"100"]),
              redis(1_000, [b"SET", b"j", b"v", b"PX", b"100"]))
    seen = read_commands(sm, 1_150, [[VERSION, b"k"], [VERSION, b"j"]])
    assert seen == [-1_100, -1_100] and b"k" in sm.data     # hidden, not yet deleted
    assert log.apply(redis(1_200, [EXPIRE_DUE])) == [[2]]
    assert b"k" not in sm.data
    assert read_commands(sm, 1_250, [[VERSION, b"k"]]) == [-1_100]
    assert log.apply(exec_entry(1_300, [[b"k", seen[0]], [b"j", seen[1]]])) == [["OK"]]
    # Written again after its deletion: that is a change.
    log.apply(redis(1_400, [b"SET", b"k", b"again"]))
    assert log.apply(exec_entry(1_500, [[b"k", seen[0]]])) == [None]
    # Deleted by the transaction's own check (no sweep came first): the same.
    log.apply(redis(2_000, [b"SET", b"k", b"v", b"PX", b"100"]))
    seen = read_commands(sm, 2_200, [[VERSION, b"k"]])[0]
    assert log.apply(exec_entry(2_300, [[b"k", seen]])) == [["OK"]]
    assert b"k" not in sm.data


def test_a_key_alive_when_watched_that_expires_aborts():
    sm = KvStateMachine()
    log = Log(sm)
    log.apply(tracked(1_000, 60_000), redis(1_000, [b"SET", b"k", b"v", b"PX", b"100"]))
    seen = read_commands(sm, 1_050, [[VERSION, b"k"]])[0]
    log.apply(redis(1_200, [EXPIRE_DUE]))
    assert log.apply(exec_entry(1_300, [[b"k", seen]])) == [None]


def test_an_untracked_entry_after_an_expired_key_s_deletion_aborts_its_watch():
    # The untracked entry may have written the key without a record.
    sm = KvStateMachine()
    log = Log(sm)
    log.apply(tracked(1_000, 1_000), redis(1_000, [b"SET", b"k", b"v", b"PX", b"100"]))
    seen = read_commands(sm, 1_150, [[VERSION, b"k"]])[0]
    log.apply(redis(1_200, [EXPIRE_DUE]), redis(5_000, [b"SET", b"other", b"1"]))
    assert sm.redis.untracked == sm.redis.counter
    assert log.apply(exec_entry(5_100, [[b"k", seen]])) == [None]


def test_entries_of_the_third_tag_give_an_expired_key_s_deletion_a_new_index():
    sm = KvStateMachine()
    log = Log(sm)
    log.apply(tracked(1_000, 60_000),
              [REDIS_CMD_V3, 1_000, [[b"SET", b"k", b"v", b"PX", b"100"]]])
    seen = read_commands(sm, 1_150, [[VERSION, b"k"]])[0]
    log.apply([REDIS_CMD_V3, 1_200, [[EXPIRE_DUE]]])
    assert sm.redis.tombstones[b"k"] == sm.redis.counter
    assert log.apply(exec_entry(1_300, [[b"k", seen]], REDIS_CMD_V3)) == [None]


def test_forgotten_deletions_raise_the_floor_in_deletion_order(monkeypatch):
    monkeypatch.setattr(keyspace, "MAX_TOMBSTONES", 2)
    sm = KvStateMachine()
    log = Log(sm)
    log.apply(tracked(1_000, 60_000), redis(1_000, [b"SET", b"a", b"v", b"PX", b"100"]),
              redis(1_001, [b"SET", b"b", b"v"], [b"SET", b"c", b"v"]))
    absent = read_commands(sm, 1_001, [[VERSION, b"z"]])[0]
    log.apply(redis(1_200, [EXPIRE_DUE]))                     # a: [index, deadline]
    deleted_a = sm.redis.counter
    log.apply(redis(1_300, [b"DEL", b"b"]), redis(1_400, [b"DEL", b"c"]))
    assert b"a" not in sm.redis.tombstones and sm.redis.floor == deleted_a
    # An absent key without a record now counts as modified at the floor.
    assert read_commands(sm, 1_500, [[VERSION, b"z"]])[0] == deleted_a > absent


def test_entries_of_the_previous_tag_are_always_tracked():
    # Entries tagged REDIS_CMD_V2 were written when every entry recorded
    # its indexes: replayed, they still do (a node restarting from an
    # older snapshot and one replaying more of the log agree).
    sm = KvStateMachine()
    log = Log(sm)
    log.apply([REDIS_CMD_V2, 1, [[b"SET", b"k", b"1"], [b"SET", b"other", b"1"]]])
    assert sm.redis.versions == {b"k": 1, b"other": 1} and sm.redis.untracked == 0
    seen = read_commands(sm, 1, [[VERSION, b"k"]])[0]
    log.apply([REDIS_CMD_V2, 2, [[b"SET", b"other", b"2"]]])
    assert log.apply([REDIS_CMD_V2, 3, [[b"INCR", b"k"]], [[b"k", seen]]]) == [[2]]


def test_a_malformed_track_is_answered_and_changes_nothing():
    sm = KvStateMachine()
    log = Log(sm)
    for span in (0, -5, MAX_TRACK_SPAN_MS + 1, b"10", None, 1.5):
        (reply,) = log.apply(redis(1, [TRACK, span]))
        assert is_error(reply[0]) and sm.redis.tracking_until == 0, span
    # Not a read either.
    assert is_error(read_commands(sm, 1, [[TRACK, 100]])[0])
    assert sm.redis.tracking_until == 0


def test_entries_of_earlier_versions_keep_one_modification_index_per_write():
    sm = KvStateMachine()
    log = Log(sm)
    old = [REDIS_CMD_V1, 1, [[b"SET", b"a", b"1"], [b"INCR", b"n"], [b"SET", b"b", b"2", b"NX"],
                             [b"DEL", b"a"]]]
    log.apply(tracked(), old)        # index 1, then one per write of `old`
    assert sm.redis.versions == {b"n": 3, b"b": 4} and sm.redis.tombstones == {b"a": 5}
    log.apply(redis(2, [b"SET", b"c", b"1"]))
    assert sm.redis.versions[b"c"] == 6 == sm.redis.counter
    # A WATCH recorded by an earlier version still decides alike.
    assert log.apply([REDIS_CMD_V1, 3, [[b"INCR", b"n"]], [[b"n", 3]]]) == [[2]]
    assert log.apply([REDIS_CMD_V1, 4, [[b"INCR", b"n"]], [[b"n", 3]]]) == [None]
    # They record indexes whether tracked or not (as their versions did).
    log.apply(redis(2_000_000, [b"SET", b"c", b"2"]))
    log.apply([REDIS_CMD_V1, 2_000_001, [[b"SET", b"d", b"1"]]])
    assert sm.redis.versions[b"d"] == sm.redis.counter == 9 and sm.redis.untracked == 8


def test_a_log_of_every_kind_gives_every_node_the_same_indexes_whatever_its_snapshot():
    payloads = [[REDIS_CMD_V1, 1, [[b"SET", b"a", b"1"], [b"SET", b"b", b"1"]]],
                [REDIS_CMD_V2, 2, [[b"SET", b"a", b"2"], [b"DEL", b"b"]]],
                [REDIS_CMD_V1, 3, [[b"INCR", b"n"], [b"SET", b"a", b"3"]]],
                [REDIS_CMD_V2, 4, [[b"SET", b"c", b"1"]], [[b"a", 4]]],
                redis(5, [b"SET", b"c", b"2"], [b"INCR", b"n"]),
                tracked(6, 10),
                redis(7, [b"SET", b"a", b"4"], [b"DEL", b"c"]),
                [REDIS_CMD, 8, [[b"INCR", b"n"]], [[b"a", 7]]],
                redis(20, [b"SET", b"d", b"1"]),
                tracked(21, 1_000),
                [REDIS_CMD_V3, 22, [[b"SET", b"e", b"1", b"PX", b"5"]]],
                [REDIS_CMD_V3, 30, [[EXPIRE_DUE]]],
                redis(31, [b"SET", b"f", b"1", b"PX", b"5"]),
                redis(40, [EXPIRE_DUE]),
                [REDIS_CMD, 41, [[b"INCR", b"n"]], [[b"f", -36]]]]
    whole = KvStateMachine()
    Log(whole).apply(*payloads)
    for cut in range(1, len(payloads)):
        first = KvStateMachine()
        log = Log(first)
        log.apply(*payloads[:cut])
        if cut <= 4:
            # Only entries of earlier versions so far: what their snapshot
            # (six parts) loads as.
            assert first.redis.dump()[6:] == [0, 0]

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
    assert older.data == sm.data and older.redis.dump() == [[], [], [], 0, 0, 0, 0, 0]
    # Made before TRACK entries: six parts, every modification recorded.
    six = KvStateMachine()
    old["redis"] = sm.redis.dump()[:6]
    run_guarded(six.install_snapshot(SnapshotMeta(1, 1, None, "six"),
                                     msgpack.packb(old, use_bin_type=True)), 10)
    assert six.redis.dump() == sm.redis.dump()[:6] + [0, 0]


def test_a_snapshot_is_encoded_as_msgpack_encodes_the_state_map():
    # The items are written by codec.pack_pairs, the rest by msgpack: the
    # bytes must be msgpack's own encoding of the whole map, so a snapshot
    # reads the same on a build that encodes it the plain way.
    sm = KvStateMachine()
    Log(sm).apply(redis(1_000, [b"SET", b"k", b"v", b"EX", b"100"], [b"SET", b"n", b"1"]))
    sm.data["kv"] = ["a", {"b": 2.5}]
    sm.data[b"odd"] = (1, msgpack.ExtType(3, b"x"))     # not plain: msgpack writes it
    _, data = sm.capture()
    state = {
        "format": KV_SNAPSHOT_FORMAT,
        "items": list(sm.data.items()),
        "sessions": [[cid, s.floor, list(s.responses.items())]
                     for cid, s in sm.sessions.items()],
        "applied_commands": sm.applied_commands,
        "deduplicated": sm.deduplicated,
        "redis": sm.redis.dump(),
    }
    assert data == msgpack.packb(state, use_bin_type=True)


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
@given(batches=st.lists(st.tuples(st.integers(min_value=0, max_value=200), _batch,
                                  st.booleans()), max_size=6))
def test_a_batch_applies_as_its_commands_one_by_one(batches):
    # run_commands' compiled path (plain SET/GET/INCR of a key without a
    # deadline) against run_command for every command, in the same order:
    # the same replies and the same map, deadlines and modification
    # indexes, tracked or not.
    from raftcore.kv.redis.apply import run_command, run_commands
    from raftcore.kv.redis.keyspace import Keyspace
    fast, slow = KvStateMachine(), KvStateMachine()
    now = 0
    for step, cmds, track in batches:
        now += step
        cmds = [list(c) for c in cmds]
        for mutate in (True, False):
            got = run_commands(Keyspace(fast, now, mutate, track=track), cmds)
            ks = Keyspace(slow, now, mutate, track=track)
            assert got == [run_command(ks, c) for c in cmds]
        assert fast.data == slow.data and fast.redis.dump() == slow.redis.dump()


def test_a_long_batch_on_a_large_map_applies_as_its_commands_one_by_one():
    # Batches longer than the span whose map slots run_commands brings into
    # the cache (dict_slots), on a map large enough for many probes to
    # collide, holding deleted slots, str keys beside bytes ones and keys
    # with deadlines: the same replies and the same map as run_command's.
    from raftcore.kv.redis.apply import run_command, run_commands
    from raftcore.kv.redis.keyspace import Keyspace
    rnd = random.Random(5)
    fast, slow = KvStateMachine(), KvStateMachine()
    for sm in (fast, slow):
        ks = Keyspace(sm, 0, True)
        for i in range(5000):
            run_command(ks, [b"SET", b"k%d" % i, b"%d" % i])
        for i in range(0, 5000, 7):
            run_command(ks, [b"DEL", b"k%d" % i])
        for i in range(3, 5000, 50):
            run_command(ks, [b"PEXPIRE", b"k%d" % i, b"100000"])

    def command():
        key = b"k%d" % rnd.randrange(6000)
        return rnd.choice([[b"SET", key, b"v%d" % rnd.randrange(99)], [b"GET", key],
                           [b"INCR", key], [b"DEL", key], [b"set", key, b"x"],
                           [b"SET", "str-key", b"v"], [b"GET", key, b"extra"]])
    for n in (9, 31, 32, 33, 100, 700):
        cmds = [command() for _ in range(n)]
        got = run_commands(Keyspace(fast, 10, True), cmds)
        ks = Keyspace(slow, 10, True)
        assert got == [run_command(ks, c) for c in cmds]
        assert fast.data == slow.data and fast.redis.dump() == slow.redis.dump()


def test_warming_the_cache_changes_no_batch_it_cannot_read():
    # What dict_slots must leave alone (a touch reads the map's internals
    # only): a map that is not a dict (the lookups answer as they always
    # did, instead of reading memory that is not a map's), and a batch a
    # command shortens while it runs (iteration sees the list as it is
    # now; a touch of the old length would fail on the missing commands).
    from types import SimpleNamespace as NS
    from raftcore.kv.redis.fast import run_commands

    def keyspace(data):
        return NS(data=data, expires={}, mutate=True,
                  state=NS(versions={}, tombstones={}, counter=0))
    gets = [[b"GET", b"k%d" % i] for i in range(40)]
    assert run_commands(keyspace(None), gets, None, "OK", int, False, False) == [None] * 40

    for n in (34, 39, 40, 70):
        cmds = [[b"TRUNCATE"]] + [[b"GET", b"a"]] * (n - 1)

        def run_command(ks, cmd):
            del cmds[33:]
            return "truncated"
        replies = run_commands(keyspace({b"a": b"1"}), cmds, run_command, "OK", int, False,
                               False)
        assert replies == ["truncated"] + [b"1"] * 32


def test_the_map_layout_read_to_warm_the_cache_is_the_interpreter_s():
    # dict_slots reads CPython's dict internals (3.11 to 3.13). A key
    # whose first probed slot names it is found only if the index, its
    # width and the entries are read where the interpreter keeps them.
    from raftcore.kv.redis import fast
    d = {b"key:%012d" % i: b"v" for i in range(20000)}
    reads = (sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 13)
             and not sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert fast.DICT_SLOTS_READ == reads
    hits = fast.first_probe_hits(d)
    if reads:
        # At this load (20,000 of 32,768 slots) most keys sit where they hash.
        assert len(d) // 2 < hits <= len(d)
        # A key alone in its map sits where it hashes.
        assert fast.first_probe_hits({b"a": 1}) == 1
    else:
        assert hits == 0
    # A map of str keys has another layout, never read.
    assert fast.first_probe_hits({"a": 1, "b": 2}) == 0


def test_an_entry_of_a_later_version_stops_the_node_instead_of_applying_otherwise():
    # A node of this version that meets a later version's Redis entry
    # (a rolling upgrade, say) must not take it for an unknown command and
    # part from the nodes that apply it.
    for later in ("redis5", "redis12"):
        for payload in ([later, 1, [[b"SET", b"k", b"1"]]],
                        ["session", "n1-abc", 1, 0, [later, 1, [[b"SET", b"k", b"1"]]]]):
            sm = KvStateMachine()
            with pytest.raises(NewerEntry, match=f"tagged '{later}'.*upgrade this node"):
                Log(sm).apply(payload)
            assert b"k" not in sm.data
    # What is not a Redis tag stays an unknown command, answered.
    sm = KvStateMachine()
    assert Log(sm).apply(["redis05", 1, []], ["session", "c", 1, 0, ["redisx", 1]]) == [
        {"error": "unknown command ['redis05', 1, []]; use set, delete or cas"},
        ["error", "unknown write operation 'redisx'; use set, delete or cas"]]


@cluster_test
async def test_a_node_meeting_a_later_version_s_entry_stops_with_the_reason():
    c = Cluster(RecordingRouter(seed=7), 7, {})
    try:
        for i in (1, 2, 3):
            await c.add_node(i, sm=KvStateMachine())
        await c[1].initialize(members([1, 2, 3]))
        leader = await wait_any_leader(c.all())
        with pytest.raises(Fatal, match="tagged 'redis5'.*upgrade this node"):
            await leader.client_write(["redis5", 1, [[b"SET", b"k", b"1"]]])
        assert isinstance(await leader.wait(GUARD).stopped(), NewerEntry)
        # The next leader commits the entry and stops alike as it applies it
        # (the last node then has no quorum to learn that it is committed).
        others = c.others(leader)
        waits = [asyncio.ensure_future(r.wait(4 * GUARD).stopped()) for r in others]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert any(w.exception() is None and isinstance(w.result(), NewerEntry) for w in done)
        assert all(b"k" not in r._core.sm.data for r in c.all())
    finally:
        await c.shutdown()
