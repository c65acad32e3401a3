"""A command is encoded once, at the leader's door, and those bytes are what
the log stores, what the followers receive and what every node applies
(Entry.encoded; codec.ENCODED_NORMAL on the wire and in the WAL).

The engine and codec tests need no event loop. The cluster tests look at the
bytes themselves: in the leader's FileLogStore segments (read back from disk
after a restart), and in a follower's log store after the entries crossed a
real TCP connection, compared with msgpack's encoding of the command as the
caller passed it. A command handed over (client_write(owned=True)) is
encoded by codec.pack_plain, byte for byte as msgpack would, and the leader
applies the caller's object itself.
"""
from __future__ import annotations

import asyncio
import pickle

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftcore.codec import (ENCODED_NORMAL, PlainValueError, decode_entries, encode_entries,
                            pack_plain)
from raftcore.errors import CodecError, InvalidCommand
from raftcore.storage.file import FileLogStore
from raftcore.types import ENTRY_MEMBERSHIP, ENTRY_NORMAL, Entry

from cluster_harness import cluster_test, converge, running_cluster, stable_leader
from engine_harness import elect, members, restored
from test_poison_writes import file_cluster, leading, run
from test_tcp import TcpCluster, tcp_test
from test_tcp import stable_leader as tcp_stable_leader


def packed(cmd) -> bytes:
    return msgpack.packb(cmd, use_bin_type=True)


# ================================================================ engine, codec

def make_leader():
    engine = restored(1, members({1, 2, 3}))
    elect(engine, [2, 3])
    engine.take_commands()
    assert engine.leader_id == 1
    return engine


def test_the_engine_puts_the_door_encoding_on_its_entries():
    engine = make_leader()
    first = engine.client_write([["set", "a", 1], b"raw"], 1.0,
                                [packed(["set", "a", 1]), None])
    a, raw = engine.log.entries_between(first, first + 1)
    assert a.encoded == packed(["set", "a", 1]) and a.payload == ["set", "a", 1]
    # The byte cap of an append counts the encoding.
    assert a.size == len(a.encoded)
    assert raw.encoded is None and raw.payload == b"raw"


def test_the_engine_refuses_encodings_that_do_not_match_the_payloads():
    engine = make_leader()
    with pytest.raises(ValueError, match="1 encodings for 2 payloads"):
        engine.client_write([1, 2], 1.0, [None])
    with pytest.raises(TypeError):
        engine.client_write([1], 1.0, ["not bytes"])


def test_an_encoded_entry_crosses_the_codec_byte_for_byte():
    raw = packed({"k": [1, 2.5, None, b"\x00"]})
    entries = [Entry(2, 7, ENTRY_NORMAL, {"k": [1, 2.5, None, b"\x00"]}, raw),
               Entry(2, 8, ENTRY_NORMAL, b"plain")]
    flat = encode_entries(entries)
    assert flat[2] == ENCODED_NORMAL and flat[3] is raw
    assert flat[6] == ENTRY_NORMAL and flat[7] == b"plain"
    back = decode_entries(msgpack.unpackb(packed(flat), raw=False))
    assert back == entries
    assert back[0].kind == ENTRY_NORMAL and back[0].encoded == raw
    assert back[1].encoded is None


@pytest.mark.parametrize("payload, why", [
    ("text", "payload must be bytes, got str"),
    (b"\x92\x01", "does not decode"),            # a 2-item array with one item
    (b"\x01\x02", "does not decode"),            # trailing data
])
def test_a_malformed_encoded_entry_is_refused_naming_the_entry(payload, why):
    with pytest.raises(CodecError, match=r"entry \(3, 9\)") as err:
        decode_entries([3, 9, ENCODED_NORMAL, payload])
    assert why in str(err.value)


def test_only_a_normal_entry_carries_an_encoding():
    with pytest.raises(ValueError, match="only a normal entry"):
        Entry(1, 1, ENTRY_MEMBERSHIP, None, b"\x90")
    with pytest.raises(ValueError, match="only a normal entry"):
        Entry(1, 1, ENTRY_NORMAL, [], "\x90")


def test_a_released_entry_decodes_its_payload_again():
    cmd = {"k": [1, 2.5, None, b"\x00"]}
    e = Entry(2, 7, ENTRY_NORMAL, cmd, packed(cmd))
    assert e.payload is e.payload           # held, as built
    e.release_payload()
    first, second = e.payload, e.payload
    assert first == cmd and second == cmd and first is not second
    assert e == Entry(2, 7, ENTRY_NORMAL, cmd) and e.encoded == packed(cmd)
    assert pickle.loads(pickle.dumps(e)) == e
    # An entry without an encoding has nothing to decode from: it keeps its
    # payload.
    for kept in (Entry(2, 8, ENTRY_NORMAL, b"plain"), Entry(2, 9, ENTRY_NORMAL, ["x"])):
        payload = kept.payload
        kept.release_payload()
        assert kept.payload is payload


# ================================================================ file log, restart

def test_the_leader_logs_the_bytes_it_encoded_at_the_door(tmp_path):
    run(_logged_bytes, tmp_path)


async def _logged_bytes(tmp_path) -> None:
    cmd = ("set", "t", (1, {"x": 2.5}))
    async with file_cluster(tmp_path, 3, seed=21) as c:
        await converge(c.all())
        leader = await stable_leader(c.all())
        index = (await leader.client_write(cmd)).index
        await converge(c.all())
        dirs = {r.id: tmp_path / f"n{r.id}" for r in c.all()}
        in_memory = leader.log_store.entries(index, index)[0]
    assert in_memory.encoded == packed(cmd)
    # Read back from disk by a new store: the same bytes, on every node.
    for node_id, path in dirs.items():
        store = await FileLogStore.open(path)
        try:
            e = store.entries(index, index)[0]
        finally:
            await store.close()
        assert e.encoded == packed(cmd), node_id
        assert e.kind == ENTRY_NORMAL and e.payload == ["set", "t", [1, {"x": 2.5}]]


def test_the_leader_applies_the_command_as_admitted_not_as_the_caller_changed_it(tmp_path):
    run(_changed_after_submit, tmp_path)


async def _changed_after_submit(tmp_path) -> None:
    async with file_cluster(tmp_path, 3, seed=22) as c:
        await converge(c.all())
        leader = await stable_leader(c.all())
        value = {"n": 1}
        write = asyncio.ensure_future(leader.client_write(["set", "v", value]))
        await asyncio.sleep(0)          # the write is admitted, not yet applied
        value["n"] = 2                  # the caller reuses its object
        await write
        await converge(c.all())
        for r in c.all():
            assert r.state_machine.data["v"] == {"n": 1}, r.id


# ================================================================ over TCP

@tcp_test
async def test_a_follower_stores_the_leaders_bytes_after_tcp():
    cmds = [["set", "a", [1, 2]], {"op": "x", "v": b"\xff" * 40}, ("t", 3)]
    async with TcpCluster() as c:
        await c.start(3, seed=23)
        leader = await tcp_stable_leader(c.all())
        indexes = [(await leader.client_write(cmd)).index for cmd in cmds]
        await converge(c.all())
        for r in c.all():
            # (The leader may put a membership entry recording incarnations
            # between the writes.)
            got = [r.log_store.entries(i, i)[0] for i in indexes]
            assert [e.encoded for e in got] == [packed(cmd) for cmd in cmds], r.id
            assert got[2].payload == ["t", 3]


@cluster_test
async def test_nodes_that_share_entries_in_process_keep_what_they_applied():
    # On a LocalRouter a follower appends the leader's own Entry objects:
    # were the leader to release one it applied first, each follower would
    # decode it again to apply it.
    cmd = ["set", "p", [1]]
    async with running_cluster(3, 26) as c:
        await converge(c.all())
        leader = await stable_leader(c.all())
        index = (await leader.client_write(cmd)).index
        await converge(c.all())
        for r in c.all():
            e = r.log_store.entries(index, index)[0]
            assert e.payload == cmd and e.payload is e.payload, r.id


@tcp_test
async def test_every_node_releases_the_decoded_commands_it_applied():
    # The log keeps entries until a purge; once applied, only their
    # encodings: `payload` decodes afresh at each read (a new object).
    cmd = ["set", "r", [1, {"x": b"y"}]]
    async with TcpCluster() as c:
        await c.start(3, seed=24)
        leader = await tcp_stable_leader(c.all())
        index = (await leader.client_write(cmd)).index
        await converge(c.all())
        for r in c.all():
            e = r.log_store.entries(index, index)[0]
            assert r.state_machine.data["r"] == [1, {"x": b"y"}], r.id
            assert e.payload == cmd and e.payload is not e.payload, r.id


# ================================================================ handed over

plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=20)
    | st.dictionaries(st.text() | st.binary() | st.integers(-2**63, 2**63), inner, max_size=8),
    max_leaves=60)


@settings(max_examples=300, deadline=None)
@given(plain_values)
def test_a_plain_value_packs_as_msgpack_packs_it(value):
    assert pack_plain(value) == packed(value)


class Key(str):
    pass


@pytest.mark.parametrize("value, what", [
    (["set", "k", (1, 2)], "a tuple"),
    ({"k": bytearray(b"x")}, "a bytearray"),
    ([Key("k")], "a Key"),
    ({(1, 2): 1}, "a tuple"),
    ([[1], "x", [1]], None),                       # equal, not the same: fine
])
def test_a_value_that_would_arrive_as_something_else_does_not_pack_plain(value, what):
    if what is None:
        assert pack_plain(value) == packed(value)
        return
    with pytest.raises(PlainValueError, match=what):
        pack_plain(value)


def test_a_list_or_dict_that_appears_twice_does_not_pack_plain():
    # The leader would hold one object where the other nodes decode two: a
    # state machine changing one in place would change both only there.
    shared, table = [1], {"a": 1}
    for value in ([shared, shared], {"x": [shared], "y": shared}, [table, [table]]):
        with pytest.raises(PlainValueError, match="appears twice"):
            pack_plain(value)
    looped: list = []
    looped.append(looped)
    with pytest.raises(PlainValueError, match="nested deeper than 511"):
        pack_plain(looped)


def test_a_handed_over_command_is_applied_as_it_is_and_travels_as_encoded(tmp_path):
    run(_handed_over, tmp_path)


async def _handed_over(tmp_path) -> None:
    async with leading(tmp_path, seed=25) as (c, leader):
        value = [1, {"x": b"y"}]
        index = (await leader.client_write(["set", "h", value], owned=True)).index
        await converge(c.all())
        # The leader applied the caller's object itself; the others what its
        # encoding decodes to.
        assert leader.state_machine.data["h"] is value
        for r in c.all():
            assert r.state_machine.data["h"] == value, r.id
            assert r.log_store.entries(index, index)[0].encoded == packed(["set", "h", value])
        # A command that would arrive as something else is refused whole,
        # before the log.
        last = leader.metrics.last_log_index
        with pytest.raises(InvalidCommand, match="handed over.*a tuple"):
            await leader.client_write(["set", "t", (1, 2)], owned=True)
        with pytest.raises(InvalidCommand, match="command 1 of the batch.*a bytearray"):
            await leader.client_write_many([["set", "a", 1], ["set", "b", bytearray(b"z")]],
                                           owned=True)
        assert leader.metrics.last_log_index == last
