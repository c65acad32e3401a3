"""The programs in examples/, each run as three real processes, with a
kill -9 of the leader while they work."""
from __future__ import annotations

import asyncio
import json
import pathlib
import re
import sys
import subprocess
import os

import aiohttp

from kv_harness import GUARD, HOST, KvCluster, free_ports, kv_test, until

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


class ExampleCluster(KvCluster):
    """Processes of one example program: node i runs
    `python -u examples/SCRIPT --id i --peers ... --dir n<i> ARGS(i)`."""

    def __init__(self, tmp_path, script: str, args=lambda i: []) -> None:
        super().__init__(tmp_path, 3)
        self.script = str(EXAMPLES / script)
        self.args = args

    def start(self, i: int, init: bool = False, args=()) -> None:
        assert i not in self.procs, f"node {i} is running"
        with open(self.log_path(i), "ab") as out:
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-u", self.script, "--id", str(i), "--peers", self.peers,
                 "--dir", str(self.tmp / f"n{i}"), *self.args(i), *args],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp, env=dict(os.environ))

    def lines(self, i: int, pattern: str) -> list:
        """The matches of `pattern` in node i's output, in order."""
        return re.findall(pattern, self.log_text(i))


async def http(session, method: str, url: str, body=None):
    """(status, json) of a request, or None when the node does not answer."""
    try:
        async with session.request(method, url, json=body,
                                   timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status, await r.json()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None


@kv_test
async def test_http_service_keeps_every_acknowledged_write_through_a_leader_kill(tmp_path):
    web = dict(zip((1, 2, 3), free_ports(3)))
    with ExampleCluster(tmp_path, "http_service.py",
                        lambda i: ["--http", f"{HOST}:{web[i]}"]) as c:
        c.start_all()
        async with aiohttp.ClientSession() as s:
            async def leader():
                st = [await http(s, "GET", f"http://{HOST}:{web[i]}/metrics") for i in c.procs]
                ids = {r[1]["current_leader"] for r in st if r is not None and r[0] == 200}
                return ids.pop() if len(ids) == 1 and None not in ids and all(st) else None
            lead = await until(leader, "a leader every node agrees on", c)
            acked: dict = {}
            stop = False

            async def writer(j: int) -> None:
                n = attempts = 0
                while not stop:
                    target = list(c.procs)[(n + attempts) % len(c.procs)]
                    r = await http(s, "PUT", f"http://{HOST}:{web[target]}/kv/w{j}-{n}", n)
                    if r is None or r[0] != 200:
                        attempts += 1      # tried elsewhere next; it may have been applied
                        continue
                    # Only a put retried on another node may find its own value.
                    assert r[1] == {"old": None} or (attempts and r[1] == {"old": n}), \
                        f"w{j}-{n} applied twice: {r}"
                    acked[f"w{j}-{n}"] = n
                    n += 1
                    attempts = 0
            writers = [asyncio.ensure_future(writer(j)) for j in range(4)]
            await until(lambda: _true(len(acked) >= 100), "100 acknowledged writes", c)
            c.kill(lead)                                   # kill -9 while it works
            before = len(acked)
            await until(lambda: _true(len(acked) >= before + 100),
                        "100 more writes after the leader's kill", c)
            stop = True
            await asyncio.gather(*writers)
            c.start(lead)
            for i in (1, 2, 3):
                for key, value in list(acked.items())[::7]:
                    r = await until(lambda: http(s, "GET", f"http://{HOST}:{web[i]}/kv/{key}"),
                                    f"node {i} to answer", c)
                    assert r == (200, {"value": value}), (i, key, r)
            lead = await until(leader, "a leader after the restart", c)
            r = await http(s, "POST", f"http://{HOST}:{web[lead]}/voters", [1, 2, 3])
            assert r is not None and r[0] == 200 and r[1]["membership"]["configs"] == [[1, 2, 3]], r
            other = 3 if lead != 3 else 1
            r = await http(s, "POST", f"http://{HOST}:{web[other]}/voters", [1, 2])
            assert r is not None and r[0] == 503 and "not the leader" in r[1]["error"], r


async def _true(value):
    return value


async def status_of(addr: str):
    """A node's status (raftcore.embed.forwarding.EMBED_STATUS), or None."""
    from raftcore.embed.forwarding import DONE, EMBED_STATUS
    from raftcore.kv.connection import connect
    try:
        conn = await connect(addr, 1.0, max_frame=1 << 20)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        reply = await conn.call([EMBED_STATUS], 1.0)
        return reply[1] if reply[0] == DONE else None
    except Exception:
        return None
    finally:
        await conn.close()


async def embed_leader(c: ExampleCluster) -> int:
    """The leader every running node follows."""
    async def agreed():
        st = [await status_of(c.addrs[i]) for i in c.procs]
        ids = {s["current_leader"] for s in st if s is not None}
        if None in st or len(ids) != 1:
            return None
        lid = ids.pop()
        return lid if lid in c.procs else None
    return await until(agreed, "a leader every running node follows", c)


def count(c: ExampleCluster, pattern: str, ids=(1, 2, 3)) -> int:
    return sum(len(c.lines(i, pattern)) for i in ids)


@kv_test
async def test_lock_job_moves_to_a_new_holder_with_a_higher_token_after_a_kill(tmp_path):
    with ExampleCluster(tmp_path, "lock_job.py") as c:
        c.start_all()
        holder = await until(lambda: _true(next(
            (i for i in c.procs if len(c.lines(i, r"step \d+ token")) >= 20), None)),
            "20 steps of the job", c)
        old = {int(t) for t in c.lines(holder, r"step \d+ token (\d+)")}
        lead = await embed_leader(c)
        c.kill(holder)                                    # kill -9 the holder mid-job
        if lead != holder:
            # Then the Raft leader too, once the job moved on (2 of 3 left).
            # The killed holder comes back only after another process took
            # the lock: restarted at once, it could win the lock itself.
            await until(lambda: _true(count(c, r"holds the lock", [i for i in c.procs
                                                                  if i != holder]) >= 1),
                        "a new holder", c)
            c.start(holder)
            c.kill(lead)
        new = await until(lambda: _true({int(t) for i in c.procs for t in c.lines(
            i, r"step \d+ token (\d+)") if int(t) > max(old)}), "steps under a newer token", c)
        assert min(new) > max(old)
        for i in c.procs:
            assert not c.lines(i, "fenced off"), c.logs()
        # Every token was used by one worker alone.
        owners: dict = {}
        for i in (1, 2, 3):
            for token, who in c.lines(i, r"step \d+ token (\d+) by (\S+)"):
                assert owners.setdefault(token, who) == who, (token, who, owners)


@kv_test
async def test_leader_task_moves_to_the_new_leader_with_a_higher_term(tmp_path):
    with ExampleCluster(tmp_path, "leader_task.py") as c:
        c.start_all()
        lead = await embed_leader(c)
        await until(lambda: _true(len(c.lines(lead, r"beat by node")) >= 10), "10 beats", c)
        assert count(c, r"beat by node", [i for i in c.procs if i != lead]) == 0
        old_term = max(int(t) for t in c.lines(lead, r"in term (\d+)"))
        c.kill(lead)                                    # kill -9 the leader mid-task
        terms = await until(lambda: _true([int(t) for i in c.procs for t in c.lines(
            i, r"beat by node \d+ in term (\d+)")]), "beats from a new leader", c)
        assert min(terms) > old_term
        new_lead = await embed_leader(c)
        other = next(i for i in c.procs if i != new_lead)
        assert not c.lines(other, r"beat by node"), c.logs()


@kv_test
async def test_job_queue_finishes_every_job_once_through_a_leader_kill(tmp_path):
    jobs = 150
    with ExampleCluster(tmp_path, "job_queue.py",
                        lambda i: ["--jobs", str(jobs)] if i == 1 else []) as c:
        c.start_all()
        await until(lambda: _true(count(c, r"did job") >= 30), "30 jobs done", c)
        lead = await embed_leader(c)
        c.kill(lead)                                    # kill -9 the leader mid-work
        await until(lambda: _true(any(c.lines(i, rf"all {jobs} jobs done") for i in c.procs)),
                    f"all {jobs} jobs done", c)
        done = [int(j) for i in (1, 2, 3) for j in c.lines(i, r"did job (\d+)")]
        assert len(done) == len(set(done)), "a job was completed twice"
        # Jobs the killed worker completed but did not get to print count for it too.
        assert set(done) <= set(range(jobs))


@kv_test
async def test_the_same_service_on_the_raft_api_serves_writes_and_reads(tmp_path):
    """examples/http_service_on_raft.py, the README's comparison: a follower
    redirects to the leader."""
    web = dict(zip((1, 2, 3), free_ports(3)))
    http_peers = ",".join(f"{i}={HOST}:{p}" for i, p in web.items())
    with ExampleCluster(tmp_path, "http_service_on_raft.py",
                        lambda i: ["--http-peers", http_peers]) as c:
        c.start_all()
        async with aiohttp.ClientSession() as s:
            for i in (1, 2, 3):
                r = await until(lambda: _ok(http(s, "PUT", f"http://{HOST}:{web[i]}/kv/k{i}", i)),
                                f"a write through node {i}", c)
                assert r[1] == {"old": None}
            for i in (1, 2, 3):
                r = await until(lambda: _ok(http(s, "GET", f"http://{HOST}:{web[i]}/kv/k3")),
                                f"a read through node {i}", c)
                assert r[1] == {"value": 3}


async def _ok(request):
    r = await request
    return r if r is not None and r[0] == 200 else None
