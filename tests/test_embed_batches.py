"""Command batches of the embedding layer: the calls a node makes in one
event-loop turn share a log entry, each applied once and answered as if
alone; a command marked own_entry never shares one; a batch stays under
the entry size limit; batched calls without a quorum end at their deadline;
and the state machine's apply of a batch entry, retries and malformed
entries included (no event loop: asserting on what apply answers)."""
from __future__ import annotations

import asyncio

import pytest

import raftcore
from async_runner import async_test
from raftcore.embed import ReplCounter, ReplDict, ReplLock
from raftcore.embed.replicated import BATCH, CMD, FAILED, OK, STALE, ReplicatedStateMachine
from raftcore.errors import OutcomeUnknown
from raftcore.types import Entry
from test_embed_node import (GUARD, Account, leader_alone, leader_of, peers_of, start_all,
                             stop_all)

CALLS = 200


@async_test(GUARD)
async def test_calls_made_together_share_entries_and_each_is_applied_once():
    nodes = await start_all(peers_of(), Account)
    try:
        leader = nodes[await leader_of(nodes)]
        before = leader.metrics.last_log_index
        results = await asyncio.gather(*(leader.state.deposit(1) for _ in range(CALLS)))
        # Each deposit applied once, in some order: the running balances.
        assert sorted(results) == list(range(1, CALLS + 1))
        # Far fewer entries than calls: they went in batches.
        entries = leader.metrics.last_log_index - before
        assert entries < CALLS // 4, entries
        for node in nodes.values():
            assert await node.state.get() == CALLS
            assert node.state_machine.objects["state"].history == [1] * CALLS
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_calls_run_as_tasks_and_a_cancelled_one_leaves_the_others_be():
    """A call is a coroutine to asyncio (create_task), batched or alone;
    cancelling one stops its wait only."""
    nodes = await start_all(peers_of(), Account)
    try:
        leader = nodes[await leader_of(nodes)]
        alone = asyncio.get_running_loop().create_task(leader.state.deposit(1))
        assert await alone == 1
        # create_task takes coroutines only (so does TaskGroup's).
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(leader.state.deposit(1)) for _ in range(50)]
        assert sorted(await asyncio.gather(*tasks)) == list(range(2, 52))
        calls = [asyncio.ensure_future(leader.state.deposit(1)) for _ in range(20)]
        calls[5].cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(done[5], asyncio.CancelledError)
        assert len([d for d in done if isinstance(d, int)]) == 19
        # The cancelled call may still have been applied: 70 or 71 deposits.
        assert await leader.state.get() in (70, 71)
        assert await leader.state.deposit(1) in (71, 72)
        bad = await asyncio.gather(*(asyncio.ensure_future(leader.state.deposit(-1))
                                     for _ in range(5)), return_exceptions=True)
        assert all(isinstance(b, raftcore.CommandFailed) and "positive" in str(b)
                   for b in bad), bad
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_an_own_entry_command_never_shares_its_entry():
    """ReplLock.acquire: its token is its entry's index, so acquires made
    together still get tokens of their own."""
    nodes = await start_all(peers_of(), lambda: {"locks": ReplLock(), "n": ReplCounter()})
    try:
        leader = nodes[await leader_of(nodes)]
        locks, counter = leader.objects["locks"], leader.objects["n"]
        calls = [locks.acquire(f"lock-{i}", f"holder-{i}", 30.0) for i in range(20)]
        calls += [counter.add(1) for _ in range(20)]
        answers = await asyncio.gather(*calls)
        tokens = [a[1] for a in answers[:20]]
        assert all(a[0] is True for a in answers[:20])
        assert len(set(tokens)) == 20, tokens
        assert sorted(answers[20:]) == list(range(1, 21))
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_a_batch_stays_under_the_entry_size_limit():
    limit = 64 * 1024
    nodes = await start_all(peers_of(), Account)
    try:
        leader = nodes[await leader_of(nodes)]
        assert leader.raft.config.max_command_bytes > limit
        leader._batches._max_bytes = limit      # as a node with that Config
        record = _Record()
        leader.state_machine.objects["rec"] = record
        for node in nodes.values():
            node.state_machine.objects["rec"] = record if node is leader else _Record()
        before = leader.metrics.last_log_index
        blob = "x" * 8000
        results = await asyncio.gather(*(leader.call("rec", "keep", [blob, i])
                                         for i in range(40)))
        assert sorted(results) == list(range(40))
        # 40 calls of 8 KB under a 64 KiB limit: at least 5 entries.
        assert leader.metrics.last_log_index - before >= 5
    finally:
        await stop_all(nodes)


class _Record:
    def __init__(self) -> None:
        self.seen: list = []

    @raftcore.command
    def keep(self, blob: str, i: int) -> int:
        self.seen.append(i)
        return i


@async_test(GUARD)
async def test_batched_calls_without_a_quorum_end_at_their_deadline():
    nodes = await start_all(peers_of(), Account)
    try:
        node = await leader_alone(nodes)
        answers = await asyncio.gather(*(node.state.deposit(1) for _ in range(30)),
                                       return_exceptions=True)
        assert all(isinstance(a, OutcomeUnknown) for a in answers), answers
        assert not node._outstanding
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_stopping_a_node_settles_every_call_in_flight():
    nodes = await start_all(peers_of(), Account)
    try:
        node = await leader_alone(nodes, timeout=30.0)
        nodes.pop(node.id)
        calls = [asyncio.ensure_future(node.state.deposit(1)) for _ in range(20)]
        await node.stop()
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(d, raftcore.RaftError) for d in done), done
        assert not node._outstanding and not node._batches.in_flight
    finally:
        await stop_all(nodes)


# ----------------------------------------------------- the state machine alone

def _apply(sm: ReplicatedStateMachine, index: int, payload) -> object:
    return sm.apply([Entry(1, index, payload=payload)])[0]


def _batch(cid, acked, *calls) -> list:
    entry = [BATCH, cid, acked, 1000.0]
    for c in calls:
        entry += c
    return entry


def test_a_batch_entry_answers_each_call_in_order_and_a_retry_with_its_first_answer():
    sm = ReplicatedStateMachine({"n": ReplCounter()})
    answers = _apply(sm, 1, _batch("c", 1, [1, "n", "add", [5]], [2, "n", "add", [1]],
                                   [3, "n", "nope", []], [4, "n", "add", ["x"]]))
    assert answers[0] == (OK, 5) and answers[1] == (OK, 6)
    assert answers[2][0] == FAILED and "no command 'n'.'nope'" in answers[2][1]
    assert answers[3][0] == FAILED and "TypeError" in answers[3][1]
    # The same calls again (a retry after a lost reply): the kept answers,
    # nothing applied twice; a call alone (CMD) sees the same session.
    again = _apply(sm, 2, _batch("c", 1, [2, "n", "add", [1]], [1, "n", "add", [5]]))
    assert again == [(OK, 6), (OK, 5)]
    assert _apply(sm, 3, [CMD, "c", 2, 1, "n", "add", [1], 1001.0]) == (OK, 6)
    assert sm.objects["n"].value == 6
    # Acknowledged below 5: older calls are stale, not applied again.
    assert _apply(sm, 4, _batch("c", 5, [5, "n", "add", [10]])) == [(OK, 16)]
    stale = _apply(sm, 5, _batch("c", 5, [1, "n", "add", [5]]))
    assert stale[0][0] == STALE and sm.objects["n"].value == 16
    assert sm.clock.time == 1001.0 and sm.clock.index == 5


def test_calls_of_the_same_command_as_the_one_before_leave_out_its_names():
    sm = ReplicatedStateMachine({"n": ReplCounter(), "d": ReplDict()})
    answers = _apply(sm, 1, _batch("c", 1, [1, "n", "add", [1]], [2, None, None, [2]],
                                   [3, "d", "set", ["k", 1]], [4, None, None, ["j", 2]],
                                   [5, "n", "add", [3]]))
    assert [a[0] for a in answers] == [OK] * 5
    assert [answers[0][1], answers[1][1], answers[4][1]] == [1, 3, 6]
    assert sm.objects["d"].items == {"k": 1, "j": 2}
    # Nothing before it to stand for: refused, nothing applied.
    first = _apply(sm, 2, _batch("c", 6, [6, None, None, [1]]))
    assert first[0][0] == FAILED and sm.objects["n"].value == 6


@pytest.mark.parametrize("payload", [
    [BATCH, "c", 0, 1.0],                               # no calls
    [BATCH, "c", 0, 1.0, 1, "n", "add"],                # a call cut short
    [BATCH, ["unhashable"], 0, 1.0, 1, "n", "add", [1]],
    [BATCH, "c", 0, 1.0, [1], "n", "add", [1]],         # a seq that is no int
    [BATCH, "c", 0, 1.0, 1, ["n"], "add", [1]],         # an unhashable object name
    [BATCH, "c", 0, 1.0, 1, "n", "add", "not a list"],
])
def test_a_malformed_batch_entry_is_answered_failed_and_changes_nothing(payload):
    sm = ReplicatedStateMachine({"n": ReplCounter()})
    answer = _apply(sm, 1, payload)
    flat = answer if answer and isinstance(answer[0], (list, tuple)) else [answer]
    assert all(a[0] in (FAILED, STALE) for a in flat), answer
    assert sm.objects["n"].value == 0
    # The state machine goes on with well-formed entries.
    assert _apply(sm, 2, _batch("d", 1, [1, "n", "add", [2]])) == [(OK, 2)]
