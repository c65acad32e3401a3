"""Leader leases under clock drift, across real `raftcore kv` processes.

Each node runs under libfaketime (Debian's `faketime`), which makes its
clocks -- the monotonic one the event loop reads included -- run at a chosen
rate. The nodes reach each other through `Links`, a proxy in this process
that can cut one node off from the others while clients still reach it
directly. A 3-node cluster led by node 1 stores k = "old"; node 1 is cut
off; nodes 2 and 3 elect a leader and store k = "new"; then node 1 is asked
for k under its lease.

The lease rests on max_clock_drift (rho): no clock runs more than 1 + rho
times as fast as another. With the followers' clocks that much faster than
the leader's, or the leader's that much slower, node 1's lease has ended
before anyone could elect a new leader, so it confirms the read with a quorum,
which it cannot reach, and never answers "old". The control runs the
leader's clock ten times slower, far beyond the bound: node 1 still trusts
its lease and answers "old", which shows that the check can fail.

As in test_kv_process, every wait polls a condition with a failure guard;
nothing sleeps for a fixed time and nothing asserts on timing.
"""
from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import subprocess

import msgpack
import pytest

from raftcore import kv
from raftcore.config import Config
from raftcore.errors import ConfigError
from raftcore.kv import KV_GET, LEASE, OK, Client

from proxy import Links, frame, read_frame
from kv_harness import HOST, free_ports, kv_test, node_cmd, status_of, until

#: The bound the tests check, the default one.
DRIFT = Config().max_clock_drift
#: Every node's options. Election timeouts long next to the round trips of
#: the test, so that a lease outlasting the followers' vote refusals by a
#: fraction of it shows as a stale read (as the lease of max_clock_drift 0
#: does, in most runs); a wide range, so that split votes are rare.
NODE_ARGS = ["--heartbeat", "0.05", "--election-timeout", "2.0,2.8", "--snapshot-every", "0",
             "--log-level", "INFO"]
#: libfaketime (Debian's package libfaketime, which `faketime` installs),
#: preloaded into each node. Not through the `faketime` wrapper: that runs the
#: node as its child, so killing it would leave the node running.
LIBFAKETIME = next(iter(sorted(
    glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
    + glob.glob("/usr/lib/faketime/libfaketimeMT.so.1")
    + glob.glob("/usr/local/lib/faketime/libfaketimeMT.so.1"))), None)


# ================================================================ settings

@pytest.mark.parametrize("value", [-0.1, float("inf"), float("nan"), "0.5", True, None])
def test_config_refuses_a_clock_drift_bound_that_is_not_a_finite_ratio(value):
    with pytest.raises(ConfigError, match=r"Config\.max_clock_drift must be a finite number >= 0"):
        Config(max_clock_drift=value)


def test_config_refuses_a_margin_that_leaves_no_lease():
    assert Config(max_clock_drift=0).max_clock_drift == 0
    with pytest.raises(ConfigError, match=r"lease_drift_margin \(0\.1\) must be below "
                                          r"election_timeout_min / \(1 \+ max_clock_drift\) "
                                          r"\(0\.1\)"):
        Config(election_timeout_min=0.15, max_clock_drift=0.5, lease_drift_margin=0.1)


def test_kv_sets_the_clock_drift_bound_from_its_command_line(capsys):
    base = ["--id", "1", "--dir", "d", "--listen", "127.0.0.1:7001"]
    assert kv.parse_args(base).config.max_clock_drift == DRIFT
    assert kv.parse_args(base + ["--max-clock-drift", "0.25"]).config.max_clock_drift == 0.25
    assert kv.main(base + ["--max-clock-drift", "-1"]) == 2
    assert "max_clock_drift must be a finite number >= 0" in capsys.readouterr().err
    assert kv.main(base + ["--max-clock-drift", "fast"]) == 2
    assert "--max-clock-drift: invalid float value: 'fast'" in capsys.readouterr().err


# =============================================================== processes

async def ask(addr: str, msg: list) -> list:
    """One request to the node at addr, and its reply, with no retry and no
    redirect followed (unlike kv.Client)."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(frame([1, msg]))
        _, body = await read_frame(reader)
        rid, reply = msgpack.unpackb(body, raw=False)
        assert rid == 1, (rid, reply)
        return reply
    finally:
        writer.close()


class DriftCluster:
    """`raftcore kv` nodes 1..3, each with libfaketime at its own clock rate,
    connected through Links; kills whatever still runs on exit."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.direct = {i: f"{HOST}:{p}" for i, p in zip((1, 2, 3), free_ports(3))}
        self.links = Links(self.direct)
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, i: int, rate: float, *extra: str) -> None:
        peers = ",".join(f"{j}={a}" for j, a in self.links.addrs.items())
        with open(self.tmp / f"n{i}.log", "ab") as out:
            self.procs[i] = subprocess.Popen(
                node_cmd("--id", str(i), "--dir", str(self.tmp / f"n{i}"), "--peers", peers,
                         "--listen", self.direct[i], *NODE_ARGS, *extra),
                stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp,
                # Every clock of the node, the monotonic one included, runs
                # `rate` times as fast as real time from its start on.
                env=dict(os.environ, LD_PRELOAD=LIBFAKETIME, FAKETIME=f"+0 x{rate:.6f}",
                         FAKETIME_DONT_FAKE_MONOTONIC="0"))

    def logs(self, lines: int = 25) -> str:
        out = []
        for i in sorted(self.procs):
            text = (self.tmp / f"n{i}.log").read_text(errors="replace").splitlines()
            out.append(f"--- node {i} (last {lines} lines)\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    async def __aenter__(self) -> "DriftCluster":
        await self.links.start()
        return self

    async def __aexit__(self, *exc) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            p.wait()
            # libfaketime's per-process shared memory and semaphore, which a
            # killed process leaves behind.
            for name in (f"faketime_shm_{p.pid}", f"sem.faketime_sem_{p.pid}"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join("/dev/shm", name))
        await self.links.close()


async def _lease_read_from_a_cut_off_leader(tmp_path, leader_rate: float,
                                            follower_rate: float) -> list:
    """Node 1's answer to a lease read of k once nodes 2 and 3 stored k = "new"
    behind its back (see the module docstring)."""
    assert LIBFAKETIME, "these tests need libfaketime: apt-get install faketime"
    async with DriftCluster(tmp_path) as c:
        for i in (2, 3):
            c.start(i, follower_rate)
        await until(lambda: _all_answer(c, (2, 3)), "nodes 2 and 3 to serve", c)
        # The leader's heartbeats come at least every 0.05 s real time, well
        # within the followers' election timeouts, however slow its clock.
        c.start(1, leader_rate, "--init", "--heartbeat", f"{0.05 * leader_rate:.6f}")
        term = await until(lambda: _led_by(c, 1, (1, 2, 3)), "node 1 to lead nodes 2 and 3", c)
        async with Client(c.direct[1]) as client:
            await client.set("k", "old")
        assert await ask(c.direct[1], [KV_GET, "k", LEASE]) == [OK, "old", True]
        c.links.cut(1)
        await until(lambda: _new_leader(c, term), "nodes 2 and 3 to elect a new leader", c)
        async with Client([c.direct[2], c.direct[3]]) as client:
            await client.set("k", "new")
        return await ask(c.direct[1], [KV_GET, "k", LEASE])


async def _all_answer(c: DriftCluster, ids) -> bool:
    return all(await asyncio.gather(*(status_of(c.direct[i]) for i in ids)))


async def _led_by(c: DriftCluster, leader: int, ids):
    """The leader's term once every node in ids follows `leader`; None before."""
    st = await asyncio.gather(*(status_of(c.direct[i]) for i in ids))
    if all(s is not None and s["leader"] == leader for s in st):
        assert st[ids.index(leader)]["state"] == "LEADER"
        return st[0]["term"]
    other = [s["leader"] for s in st if s is not None and s["leader"] not in (None, leader)]
    assert not other, f"node {other[0]} leads before the cut: the scenario needs node {leader}\n" \
                      f"{c.logs()}"
    return None


async def _new_leader(c: DriftCluster, old_term: int) -> bool:
    st = await asyncio.gather(*(status_of(c.direct[i]) for i in (2, 3)))
    return any(s is not None and s["state"] == "LEADER" and s["term"] > old_term for s in st)


@pytest.mark.parametrize("leader_rate, follower_rate", [
    pytest.param(1.0, 1 + DRIFT, id="followers-clocks-fast-by-the-bound"),
    pytest.param(1 / (1 + DRIFT), 1.0, id="leader-clock-slow-by-the-bound"),
])
@kv_test
async def test_a_cut_off_leader_serves_no_stale_lease_read_within_the_clock_drift_bound(
        tmp_path, leader_rate, follower_rate):
    reply = await _lease_read_from_a_cut_off_leader(tmp_path, leader_rate, follower_rate)
    # Its lease over, node 1 could only confirm the read with a quorum: it
    # gave up (UNAVAILABLE) or stepped down (REDIRECT) instead of answering.
    assert reply[0] != OK, f"stale lease read from the cut-off leader: {reply}"


@kv_test
async def test_control_a_leader_clock_far_slower_than_the_bound_allows_serves_a_stale_read(
        tmp_path):
    reply = await _lease_read_from_a_cut_off_leader(tmp_path, 0.1, 1.0)
    assert reply == [OK, "old", True]
