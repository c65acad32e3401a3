"""A partitioned-then-healed node does not depose a leader that a majority
still follows, across real `raftcore kv` processes.

Three nodes reach each other through `Links` (tests/proxy.py), clients reach
them directly. Node 3 is cut off from its peers while the leader keeps
taking writes, for as long as it takes node 3 to time out and campaign three
times; then the cut heals. With pre-vote (the default) node 3 only asks
whether it would win, which raises no term: the leader keeps its id and
term, node 3 catches up, and no acknowledged write is lost. The control runs
node 3 with --no-pre-vote: each of its campaigns raises its term, and once
healed its answers carry that term to the leader, which steps down.

Node 3 hears nothing while cut off, so it surely campaigns each election
timeout: the control does not depend on timing. Every wait polls a status or
a log condition (kv_harness's `until`); nothing asserts on timing.
"""
from __future__ import annotations

from raftcore.kv import Client

from proxy import Links
from kv_harness import (GUARD, KvCluster, WriteStream, kv_test, status_of, statuses, until,
                        wait_converged, wait_leader)

#: The node cut off and healed.
CUT = 3
#: Campaigns node 3 makes while cut off: each would raise its term without
#: pre-vote.
CAMPAIGNS = 3
#: Writes the leader acknowledges before the cut, and again during it.
WRITES = 100
#: Election timeouts longer than kv_harness's NODE_ARGS, so that a leader stalled
#: by a loaded machine does not lose its lease to node 2 while node 3 is cut
#: off (which would fail the test for another reason than node 3).
ELECTION_TIMEOUT = ["--election-timeout", "1.0,1.5"]


class ProxiedCluster(KvCluster):
    """A KvCluster whose nodes reach each other through Links."""

    def __init__(self, tmp_path) -> None:
        super().__init__(tmp_path, extra=ELECTION_TIMEOUT)
        self.links = Links(self.addrs)

    async def start_links(self) -> None:
        await self.links.start()
        self.peers = ",".join(f"{i}={a}" for i, a in self.links.addrs.items())

    def start(self, i: int, init: bool = False, args: list[str] = ()) -> None:
        super().start(i, init, ["--listen", self.addrs[i], *args])


async def _partition_and_heal(c: ProxiedCluster, cut_node_args: list[str]) -> dict:
    """Runs the scenario (module docstring) with node 3 started with
    `cut_node_args`; returns what it saw: the leader and term before the cut,
    node 3's term during the cut and every node's status once healed."""
    await c.start_links()
    for i in c.ids:
        # Node 3 logs at DEBUG, where its failed vote requests show.
        c.start(i, init=i == 1,
                args=[*cut_node_args, "--log-level", "DEBUG"] if i == CUT else [])
    leader = await wait_leader(c)
    # Node 1 alone starts with the membership, so it leads.
    assert leader != CUT, f"node {CUT} leads: the scenario needs it a follower\n{c.logs()}"
    term = (await status_of(c.addrs[leader]))["term"]
    client = Client([c.addrs[i] for i in c.ids if i != CUT], timeout=GUARD)
    stream = WriteStream(client)
    try:
        await stream.acked_at_least(WRITES, c, "before the cut")
        failed_vote = f"vote request to {leader} failed"
        failed_before = c.log_text(CUT).count(failed_vote)
        c.links.cut(CUT)
        await until(lambda: _logged_more(c, CUT, failed_vote, failed_before + CAMPAIGNS),
                    f"node {CUT} to campaign {CAMPAIGNS} times while cut off", c)
        await stream.acked_at_least(stream.acked + WRITES, c, "during the cut")
        cut_status = await status_of(c.addrs[CUT])
        target = (await status_of(c.addrs[leader]))["committed"]
        assert cut_status["applied"] < target, (
            f"node {CUT} applied {cut_status['applied']} while cut off, the leader has "
            f"committed {target}: it was not cut off\n{c.logs()}")
        c.links.heal()
        healed = await until(lambda: _settled(c, target),
                             f"every node to follow one leader and node {CUT} to apply up to "
                             f"{target}", c)
        await stream.stop()
        await wait_converged(c, stream.expected(), stream.acked)
    finally:
        await stream.stop()
        await client.close()
        await c.links.close()
    return {"leader": leader, "term": term, "cut_term": cut_status["term"], "healed": healed}


async def _logged_more(c: KvCluster, i: int, line: str, times: int) -> bool:
    return c.log_text(i).count(line) >= times


async def _settled(c: KvCluster, target: int) -> dict | None:
    """Every node's status once all follow one leader in one term and node 3
    has applied up to target; None before."""
    st = await statuses(c)
    if any(s is None for s in st.values()):
        return None
    if len({(s["leader"], s["term"]) for s in st.values()}) != 1:
        return None
    leader = st[c.ids[0]]["leader"]
    if leader is None or st[leader]["state"] != "LEADER" or st[CUT]["applied"] < target:
        return None
    return st


@kv_test
async def _healed_with_pre_vote(c: ProxiedCluster) -> None:
    seen = await _partition_and_heal(c, [])
    leader, term = seen["leader"], seen["term"]
    assert seen["cut_term"] == term, (
        f"node {CUT} moved to term {seen['cut_term']} while cut off, the leader's is {term}: "
        f"pre-vote should keep its term\n{c.logs()}")
    for i, s in seen["healed"].items():
        assert (s["leader"], s["term"]) == (leader, term), (
            f"node {i} reports leader {s['leader']} in term {s['term']} after the heal; node "
            f"{leader} led in term {term} before node {CUT} was cut off\n{c.logs()}")


def test_a_partitioned_then_healed_follower_rejoins_without_deposing_the_leader(tmp_path):
    with ProxiedCluster(tmp_path) as c:
        _healed_with_pre_vote(c)


@kv_test
async def _healed_without_pre_vote(c: ProxiedCluster) -> None:
    seen = await _partition_and_heal(c, ["--no-pre-vote"])
    term = seen["term"]
    assert seen["cut_term"] >= term + CAMPAIGNS, (seen["cut_term"], term)
    healed_term = seen["healed"][CUT]["term"]
    assert healed_term > term, (
        f"the cluster is still in term {healed_term} after the heal: node {CUT}'s higher term "
        f"({seen['cut_term']}) did not reach the leader\n{c.logs()}")


def test_control_without_pre_vote_a_healed_follower_deposes_the_leader(tmp_path):
    with ProxiedCluster(tmp_path) as c:
        _healed_without_pre_vote(c)
