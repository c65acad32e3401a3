"""Node identity across real `raftcore kv` processes: a node whose directory
was wiped (kill -9, rm -rf, restarted with the README command) must not
silently rejoin; a restart with other --peers or a second --init is logged.

Uses kv_harness's KvCluster (processes killed on exit whatever
happens); every wait polls a condition with a failure guard.
"""
from __future__ import annotations

import shutil
import signal
import subprocess

from raftcore.kv import Client

from kv_harness import (GUARD, HOST, NODE_ARGS, KvCluster, free_ports, kv_test, node_cmd,
                        serving, statuses, until)


def recorded_all(st: dict | None, ids) -> bool:
    return st is not None and all(
        inc is not None for i, inc in st["recorded_incarnations"] if i in ids)


@kv_test
async def _wiped(c: KvCluster) -> None:
    async with serving(c) as (client, leader):
        for k in range(5):
            await client.set(f"k{k}", k)

        async def everyone_recorded():
            st = await statuses(c)
            return all(recorded_all(s, c.ids) for s in st.values())
        await until(everyone_recorded, "every incarnation recorded on every node", c)
        victim = next(i for i in c.ids if i != leader)
        old = (await statuses(c, [victim]))[victim]["incarnation"]

        c.kill(victim)
        shutil.rmtree(c.tmp / f"n{victim}")
        c.start(victim)                       # the README command, on an empty directory

        async def victim_stale():
            st = (await statuses(c, [victim]))[victim]
            return st if st is not None and st["identity_stale"] else None
        st = await until(victim_stale, "the wiped node to report itself stale", c)
        assert st["incarnation"] != old
        assert st["state"] != "LEADER"

        async def leader_reports():
            # Whichever node leads now (an overloaded machine may see an election).
            st = await statuses(c, [i for i in c.ids if i != victim])
            return any(s is not None and s["state"] == "LEADER"
                       and s["stale_members"] == [victim] for s in st.values())
        await until(leader_reports, "the leader to report the wiped node", c)
        assert "runs on storage incarnation" in c.log_text(victim)
        assert any(f"node {victim} answers from other storage" in c.log_text(i)
                   for i in c.ids if i != victim)

        # The cluster goes on without counting it, and it does not take over.
        assert await client.set("after", 1) is None
        st = (await statuses(c, [victim]))[victim]
        assert st["identity_stale"] and st["state"] != "LEADER"

        # The membership on disk wins over --peers, and a second --init says so.
        other = next(i for i in c.ids if i != victim)
        assert c.terminate(other) == 0, c.logs()
        c.peers += f",9={c.addrs[other].rsplit(':', 1)[0]}:1"
        c.start(other, init=True)

        async def warned():
            text = c.log_text(other)
            return ("disagrees with the membership in its log" in text
                    and "already initialized; --init ignored" in text)
        await until(warned, "warnings about --peers and --init", c)
        for line in c.log_text(other).splitlines():
            if "disagrees with the membership" in line or "--init ignored" in line:
                assert "WARNING" in line and f"nodes 1={c.addrs[1]}" in line, line
        assert await client.get("after") == 1


def test_a_node_restarted_on_a_wiped_directory_does_not_silently_rejoin(tmp_path):
    with KvCluster(tmp_path) as c:
        _wiped(c)


@kv_test
async def _foreign(c: KvCluster) -> None:
    # Cluster B: node 3 alone, in a directory of its own, with one key.
    b_port = free_ports(1)[0]
    b_dir = c.tmp / "b3"
    b = subprocess.Popen(node_cmd("--id", "3", "--dir", str(b_dir), "--peers",
                                  f"3={HOST}:{b_port}", *NODE_ARGS, "--init"),
                         stdout=open(c.tmp / "b3.log", "ab"), stderr=subprocess.STDOUT,
                         cwd=c.tmp)
    try:
        b_client = Client(f"{HOST}:{b_port}", timeout=GUARD)
        try:
            assert await b_client.set("b-only", 1) is None
            b_cluster = (await b_client.status())["cluster_id"]
        finally:
            await b_client.close()
    finally:
        b.send_signal(signal.SIGTERM)
        assert b.wait(GUARD) == 0

    # Cluster A; its node 3 is given a copy of B's directory.
    async with serving(c) as (client, leader):
        a_cluster = (await statuses(c, [leader]))[leader]["cluster_id"]
        assert a_cluster != b_cluster
        victim = 3 if leader != 3 else 2
        c.kill(victim)
        shutil.rmtree(c.tmp / f"n{victim}")
        shutil.copytree(b_dir, c.tmp / f"n{victim}")
        c.start(victim)

        # The transport's hello turns A's nodes away before any request.
        async def refused():
            return (f"the peer belongs to cluster {a_cluster}, this node to cluster "
                    f"{b_cluster}") in c.log_text(victim)
        await until(refused, "the node on B's directory to refuse A's leader", c)
        assert await client.set("a-key", 1) is None
        st = (await statuses(c, [victim]))[victim]
        assert st["cluster_id"] == b_cluster
        assert await client.get("b-only", node=c.addrs[leader]) is None


def test_a_node_on_another_clusters_directory_refuses_and_is_refused(tmp_path):
    with KvCluster(tmp_path) as c:
        _foreign(c)
