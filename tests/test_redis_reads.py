"""Redis reads: leadership confirmations shared by the reads that arrived
before each round (ReadRounds, with a stand-in Raft), and the
--redis-reads lease|stale modes on a real cluster."""
from __future__ import annotations

import asyncio

import pytest
import redis

from async_runner import run_guarded
from kv_harness import GUARD, wait_leader
from raftcore.kv.redis.rounds import ReadRounds
from raftcore.model import ReadPolicy
from redis_harness import RedisKvCluster, wait_until


class GatedRaft:
    """ensure_linearizable waits until the test opens the gate of its round."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = []

    async def ensure_linearizable(self, policy):
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()


def test_reads_share_rounds_and_a_late_read_waits_for_the_next():
    async def main():
        raft = GatedRaft()
        rounds = ReadRounds(raft, ReadPolicy.READ_INDEX)
        first = [asyncio.ensure_future(rounds.confirm()) for _ in range(10)]
        while not raft.gates:
            await asyncio.sleep(0)
        late = [asyncio.ensure_future(rounds.confirm()) for _ in range(5)]
        for _ in range(10):             # let everything that can run, run
            await asyncio.sleep(0)
        # One round for the first ten; none of their own for the late ones.
        assert len(raft.gates) == 1 and rounds.rounds == 1
        raft.gates[0].set()
        await asyncio.gather(*first)
        assert not any(t.done() for t in late)
        while len(raft.gates) < 2:      # the next round starts when the first ends
            await asyncio.sleep(0)
        raft.gates[1].set()
        await asyncio.gather(*late)
        assert rounds.rounds == 2
    run_guarded(main(), 10)


@pytest.mark.parametrize("mode", ["lease", "stale"])
def test_read_modes(tmp_path, mode):
    with RedisKvCluster(tmp_path, extra=["--redis-reads", mode]) as c:
        c.start_all()
        leader = run_guarded(wait_leader(c), 2 * GUARD)
        clients = {i: redis.Redis(port=c.redis_ports[i], socket_timeout=GUARD) for i in c.ids}
        assert clients[leader].set("m:k", "v") is True
        for i, r in clients.items():
            assert r.info("raft")["raft_read_mode"] == mode
            if mode == "lease":          # confirmed reads see the write at once
                assert r.get("m:k") == b"v"
            else:                        # a follower's own state catches up
                wait_until(lambda: r.get("m:k") == b"v", f"node {i} to apply the write")
