"""The AppendEntries fast path (append_entries_nowait) and its contract
(raftcore.network.base), on LocalRouter: an answer that waits for the log
flush goes to reply once, a transport that breaks the contract is named in
the log, a client without the fast path still replicates, and an error
while taking a fast-path answer stops the node that made it, not its peer.

Every test body is a coroutine run on a fresh uvloop event loop by a plain
sync test function (`cluster_test`); tests synchronize through
`raft.wait(...)` conditions, whose timeouts are failure guards.
"""
from __future__ import annotations

import asyncio
import logging

import pytest

from raftcore import Config, Raft
from raftcore.engine import Engine
from raftcore.errors import Fatal
from raftcore.messages import AppendEntriesRequest
from raftcore.network import LocalRouter
from raftcore.storage import MemLogStore, MemStateMachine
from raftcore.types import ENTRY_NORMAL, Entry

from cluster_harness import (GUARD, cluster_test, make_config, members, running_cluster,
                             wait_all_applied, wait_any_leader)
from log_watch import LogWatch


class GatedMemLogStore(MemLogStore):
    """A MemLogStore whose flushes are held while `held` is a list."""

    def __init__(self) -> None:
        super().__init__()
        self.held = None

    def append(self, entries, on_flushed) -> None:
        if self.held is None:
            return super().append(entries, on_flushed)
        super().append(entries, lambda err: None)      # stored now, reported later
        self.held.append(on_flushed)

    def release(self) -> None:
        held, self.held = self.held, None
        for cb in held:
            cb(None)


@cluster_test
async def test_an_append_answer_waiting_for_the_flush_goes_to_reply_once():
    """append_entries_nowait(req, reply) takes the request (True); an answer
    that must wait for the log flush is handed to reply(response, None)
    from the flush's completion, once; one still waiting when the node
    stops gets the error."""
    store = GatedMemLogStore()
    router = LocalRouter()
    node = await Raft.create(2, Config(seed=3), router.network(2), store, MemStateMachine())
    router.add(2, node)
    try:
        first = await node.append_entries(AppendEntriesRequest(
            1, 1, 0, 0, [Entry(1, 1, ENTRY_NORMAL, b"a")], 0, 1))
        assert first.success and first.matched == 1
        store.held = []
        replies = []
        taken = node.append_entries_nowait(
            AppendEntriesRequest(1, 1, 1, 1, [Entry(1, 2, ENTRY_NORMAL, b"b")], 0, 2),
            lambda resp, exc: replies.append((resp, exc)))
        assert taken is True and replies == []
        store.release()
        assert len(replies) == 1
        resp, exc = replies[0]
        assert exc is None and resp.success and resp.matched == 2
        store.held = []
        taken = node.append_entries_nowait(
            AppendEntriesRequest(1, 1, 1, 2, [Entry(1, 3, ENTRY_NORMAL, b"c")], 0, 3),
            lambda resp, exc: replies.append((resp, exc)))
        assert taken is True and len(replies) == 1
    finally:
        await node.shutdown()
    assert len(replies) == 2 and replies[1][0] is None and isinstance(replies[1][1], Fatal)


class BrokenContractRouter(LocalRouter):
    """A transport whose fast path breaks the contract of
    raftcore.network.base: it returns None (neither True nor False) for
    every AppendEntries, and never calls reply."""

    def deliver_nowait(self, src, dst, req, reply):
        self.broken_calls = getattr(self, "broken_calls", 0) + 1
        return None


@cluster_test
async def test_a_transport_breaking_the_fast_path_contract_is_named_in_the_log():
    with LogWatch("raftcore", logging.ERROR) as watch:
        async with running_cluster(3, 31, router=BrokenContractRouter(seed=31)) as c:
            record = await watch.wait("LocalClient.append_entries_nowait returned None")
            assert "it must return True" in record.getMessage()
            assert c.router.broken_calls > 0


@cluster_test
async def test_raft_append_entries_nowait_is_the_documented_fast_path_not_an_instance_shadow():
    async with running_cluster(1, 41) as c:
        raft = c[1]
        assert "append_entries_nowait" not in vars(raft)
        assert "raftcore.network.base" in type(raft).append_entries_nowait.__doc__
        # What a transport calls: the contract's (req, reply) -> bool.
        replies = []
        assert raft.append_entries_nowait(
            AppendEntriesRequest(1, 2, 0, 0, [], 0), lambda r, e: replies.append((r, e))) \
            in (True, False)


class _ClientWithoutFastPath:
    """A NetworkClient written to the method list alone: no
    append_entries_nowait (the contract's fast path is optional)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def append_entries(self, req):
        return await self.inner.append_entries(req)

    async def vote(self, req):
        return await self.inner.vote(req)

    async def install_snapshot(self, req):
        return await self.inner.install_snapshot(req)

    async def transfer_leader(self, req):
        return await self.inner.transfer_leader(req)

    async def close(self) -> None:
        pass


class _NoFastPathNetwork:
    def __init__(self, inner) -> None:
        self.inner = inner

    def client(self, target, node):
        return _ClientWithoutFastPath(self.inner.client(target, node))

    def __getattr__(self, name):
        return getattr(self.inner, name)


@cluster_test
async def test_a_client_without_the_fast_path_replicates_through_append_entries():
    router = LocalRouter(seed=51)
    nodes = []
    try:
        for i in (1, 2, 3):
            nodes.append(await Raft.create(i, make_config(51 * 10 + i),
                                           _NoFastPathNetwork(router.network(i)),
                                           MemLogStore(), MemStateMachine()))
            router.add(i, nodes[-1])
        await nodes[0].initialize(members(range(1, 4)))
        leader = await wait_any_leader(nodes)
        resp = await leader.client_write(["set", "k", 1])
        await wait_all_applied(nodes, resp.index)
        assert all(n._core._fatal is None for n in nodes)
    finally:
        for n in nodes:
            await n.shutdown()


class _EngineFailingOnAnAnswer(Engine):
    """An engine with a bug: it raises on the first answer to an append that
    carries entries, once armed."""
    armed = False
    failures_after = []

    def handle_append_response(self, target, req, resp, now):
        if req.entries and type(self).armed:
            type(self).armed = False
            raise RuntimeError("engine bug on an AppendEntries answer")
        return Engine.handle_append_response(self, target, req, resp, now)

    def handle_append_failure(self, target, req, now):
        if req.entries:
            type(self).failures_after.append(target)
        return Engine.handle_append_failure(self, target, req, now)


@cluster_test
async def test_an_error_handling_a_fast_path_answer_stops_that_node_not_the_peer():
    router = LocalRouter(seed=52)
    nodes = []
    try:
        for i in (1, 2, 3):
            nodes.append(await Raft.create(i, make_config(52 * 10 + i), router.network(i),
                                           MemLogStore(), MemStateMachine(),
                                           engine_type=_EngineFailingOnAnAnswer))
            router.add(i, nodes[-1])
        await nodes[0].initialize(members(range(1, 4)))
        leader = await wait_any_leader(nodes)
        await leader.client_write(["set", "k", 0])
        died = asyncio.ensure_future(leader.wait(GUARD).stopped())
        _EngineFailingOnAnAnswer.armed = True
        with pytest.raises(Fatal):
            await asyncio.wait_for(leader.client_write(["set", "k", 1]), GUARD)
        assert "engine bug" in str(leader._core._fatal)
        # wait().stopped() gives the error that stopped the node.
        assert await died is leader._core._fatal
        # The answer was not handed back as a failure a second time, and the
        # follower that called it goes on.
        assert _EngineFailingOnAnAnswer.failures_after == []
        assert all(n._core._fatal is None for n in nodes if n is not leader)
    finally:
        for n in nodes:
            await n.shutdown()
