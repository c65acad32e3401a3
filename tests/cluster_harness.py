"""Shared helpers of the LocalRouter cluster tests (test_cluster,
test_membership, test_reads_and_leadership, ...): a router that records vote
requests, a cluster that shuts down every node it made, and conditions to
wait on.

Every test body is a coroutine run on a fresh uvloop event loop by a plain
sync test function (`cluster_test`). Tests synchronize only on conditions:
`raft.wait(...)`, or the vote requests the recording router saw. Timeouts
given to them are failure guards. Where a test shows that something does
NOT happen, it says so and watches an explicit observation window.

Tests import it by name: conftest.py puts this folder on sys.path (pytest
runs with --import-mode=importlib, which does not).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from raftcore import Config, Node, Raft, ServerState
from raftcore.errors import ForwardToLeader, OutcomeUnknown, Timeout
from raftcore.network import LocalRouter
from raftcore.storage import MemLogStore, MemStateMachine

from async_runner import async_test

HEARTBEAT = 0.02
ELECTION_MIN = 0.15
ELECTION_MAX = 0.30
#: Failure guard for conditions that should hold within a few elections.
GUARD = 5.0
#: Whole-test guard: a hang fails the test instead of the suite.
TEST_GUARD = 20.0

LEADER = ServerState.LEADER
FOLLOWER = ServerState.FOLLOWER
CANDIDATE = ServerState.CANDIDATE


def make_config(seed: int, **kw) -> Config:
    """The in-process clusters' Config: short timers unless `kw` overrides them."""
    timers = dict(heartbeat_interval=HEARTBEAT, election_timeout_min=ELECTION_MIN,
                  election_timeout_max=ELECTION_MAX)
    return Config(seed=seed, **{**timers, **kw})


def cluster_test(fn, guard: float = TEST_GUARD):
    """Runs an async test body on a fresh uvloop loop, with a whole-test guard."""
    return async_test(guard)(fn)


# ----------------------------------------------------------------- helpers

@dataclass
class VoteRecord:
    src: int
    dst: int
    req: Any
    #: The VoteResponse, or None when the request or its answer was lost.
    resp: Optional[Any]


class RecordingRouter(LocalRouter):
    """A LocalRouter that records every vote request it is asked to carry,
    delivered or not, so tests can wait for "node X campaigned and was
    answered" instead of for time to pass."""

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__(seed)
        self.votes: list[VoteRecord] = []
        self._waiters: list = []

    async def deliver(self, src, dst, handler_name, req):
        if handler_name != "vote":
            return await super().deliver(src, dst, handler_name, req)
        resp = None
        try:
            resp = await super().deliver(src, dst, handler_name, req)
            return resp
        finally:
            self.votes.append(VoteRecord(src, dst, req, resp))
            self._wake()

    def _wake(self) -> None:
        keep = []
        for pred, fut in self._waiters:
            if fut.done():
                continue
            if pred(self.votes):
                fut.set_result(None)
            else:
                keep.append((pred, fut))
        self._waiters = keep

    async def wait_votes(self, pred, timeout: float, msg: str) -> None:
        if pred(self.votes):
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"timed out after {timeout}s waiting for {msg}; last vote "
                          f"requests: {self.votes[-8:]}") from None


class Cluster:
    """Nodes on one router (a RecordingRouter unless a test brings its own),
    each with its own MemLogStore/MemStateMachine."""

    def __init__(self, router: LocalRouter, seed: int, cfg: dict) -> None:
        self.router = router
        self.seed = seed
        self.cfg = cfg
        self.nodes: dict[int, Raft] = {}
        self._created: list[Raft] = []

    def __getitem__(self, node_id: int) -> Raft:
        return self.nodes[node_id]

    @property
    def ids(self) -> list:
        return sorted(self.nodes)

    def all(self) -> list:
        return [self.nodes[i] for i in sorted(self.nodes)]

    def others(self, *exclude: Raft) -> list:
        ex = {r.id for r in exclude}
        return [r for r in self.all() if r.id not in ex]

    async def add_node(self, node_id: int, log_store=None, sm=None, **cfg) -> Raft:
        """Creates (or re-creates, on existing stores) node `node_id` and
        connects it to the router."""
        conf = make_config(self.seed * 100 + node_id + 50 * len(self._created),
                           **{**self.cfg, **cfg})
        raft = await Raft.create(node_id, conf, self.router.network(node_id),
                                 log_store if log_store is not None else MemLogStore(),
                                 sm if sm is not None else MemStateMachine())
        self._created.append(raft)
        self.nodes[node_id] = raft
        self.router.add(node_id, raft)
        return raft

    async def shutdown(self) -> None:
        errors = []
        for r in self._created:
            try:
                await r.shutdown()
            except Exception as exc:  # report, but shut the other nodes down too
                errors.append(exc)
        if errors:
            raise errors[0]


def members(ids) -> dict:
    return {i: Node(f"n{i}") for i in ids}


class running_cluster:
    """async with running_cluster(3, seed, **config) as c: ... (node 1 is
    initialized with members 1..n, or every node with init_all; every node
    is shut down on exit). `router`: the router to use instead of a
    RecordingRouter."""

    def __init__(self, n: int, seed: int, *, init_all: bool = False,
                 router: Optional[LocalRouter] = None, **cfg) -> None:
        self.n = n
        self.init_all = init_all
        self.cluster = Cluster(router or RecordingRouter(seed=seed), seed, cfg)

    async def __aenter__(self) -> Cluster:
        c = self.cluster
        ids = range(1, self.n + 1)
        try:
            for i in ids:
                await c.add_node(i)
            if self.init_all:
                # Nodes initialized one by one must agree on the cluster id.
                for i in ids:
                    await c[i].initialize(members(ids), cluster_id=f"cluster-{c.seed}")
            else:
                await c[1].initialize(members(ids))
        except BaseException:
            await c.shutdown()
            raise
        return c

    async def __aexit__(self, *exc) -> None:
        await self.cluster.shutdown()


async def wait_any_leader(nodes: list, timeout: float = GUARD) -> Raft:
    """The first of `nodes` to be leader (now or within `timeout`)."""
    tasks = [asyncio.ensure_future(r.wait(timeout).state(LEADER)) for r in nodes]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.exception() is None:
                    return nodes[tasks.index(t)]
        raise Timeout(f"none of nodes {[r.id for r in nodes]} became leader within {timeout}s: "
                      + "; ".join(str(r.metrics) for r in nodes))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def stable_leader(nodes: list, timeout: float = GUARD) -> Raft:
    """A leader among `nodes` that every one of `nodes` follows in its term."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        leader = await wait_any_leader(nodes, max(remaining, 0.01))
        term = leader.metrics.current_term
        lid = leader.id
        results = await asyncio.gather(*(
            r.wait(max(min(remaining, 1.0), 0.01)).metrics(
                lambda m: m.current_leader == lid and m.current_term == term,
                f"all follow leader {lid} in term {term}")
            for r in nodes), return_exceptions=True)
        if not any(isinstance(x, BaseException) for x in results):
            return leader
        if loop.time() >= deadline:
            raise next(x for x in results if isinstance(x, BaseException))


async def write_retry(nodes: list, cmd, timeout: float = GUARD):
    """Writes cmd through whichever of `nodes` leads, retrying on ForwardToLeader
    (a write refused or failed with ForwardToLeader was not committed) and on
    OutcomeUnknown (cmd must be safe to apply twice, as a set is)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        leader = await stable_leader(nodes, max(deadline - loop.time(), 0.01))
        try:
            return await leader.client_write(cmd)
        except (ForwardToLeader, OutcomeUnknown):
            if loop.time() >= deadline:
                raise


async def wait_all_applied(nodes: list, index: int, timeout: float = GUARD) -> None:
    await asyncio.gather(*(r.wait(timeout).applied_index_at_least(index) for r in nodes))


async def converge(nodes: list) -> int:
    """Commits a marker through the current leader and waits until every node
    applied it; returns its index."""
    resp = await write_retry(nodes, ["set", "__marker__", "converged"])
    await wait_all_applied(nodes, resp.index)
    return resp.index


async def leader_after_a_write(c: Cluster) -> tuple[Raft, int]:
    """Waits for a leader all nodes follow, writes a=1 through it and waits
    until every node applied that; returns the leader and its term."""
    leader = await stable_leader(c.all())
    base = await leader.client_write(["set", "a", 1])
    await wait_all_applied(c.all(), base.index)
    return leader, leader.metrics.current_term


async def stays(raft: Raft, pred, window: float, msg: str) -> None:
    """Asserts pred(metrics) holds throughout an observation window of
    `window` seconds (metrics are checked at every state change)."""
    assert pred(raft.metrics), f"node {raft.id}: {msg} does not hold now: {raft.metrics}"
    with pytest.raises(Timeout):
        await raft.wait(window).metrics(lambda m: not pred(m), f"not ({msg})")
