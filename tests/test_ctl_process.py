"""`raftcore ctl` and `raftcore kv --join` across real `raftcore kv`
processes: status, health, keys, leadership transfer, a 4th node joining
under a stream of writes, removing a node, replacing a node whose directory
was deleted, and admin requests refused without the secret.

ctl runs as `python -m raftcore.cli ctl ...` (asynchronously, so a stream of
writes in this process goes on meanwhile); every wait is a poll of a
condition under a failure guard (kv_harness.until).
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys

import pytest

from raftcore.kv import KvError, connection
from raftcore.kv.protocol import (ADMIN_REFUSED, ERROR, KV_ADD_MEMBER, KV_REMOVE_MEMBER,
                                  KV_TRANSFER_LEADER)
from raftcore.network.tcp import DEFAULT_MAX_FRAME_SIZE

from kv_harness import (GUARD, HOST, NODE_ARGS, KvCluster, WriteStream, free_ports, kv_test,
                        node_cmd, serving, statuses, until, wait_converged, wait_leader)


async def ctl(*args: str) -> tuple[int, str, str]:
    """Runs `raftcore ctl ARGS`: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "raftcore.cli", "ctl", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), GUARD)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"raftcore ctl {' '.join(args)} did not finish") from None
    return proc.returncode, out.decode(), err.decode()


async def ctl_ok(c: KvCluster, *args: str) -> str:
    """stdout of a ctl command that must succeed."""
    rc, out, err = await ctl(*args)
    assert rc == 0, f"raftcore ctl {' '.join(args)} exited {rc}: {err}\n{c.logs()}"
    assert err == ""
    return out


def endpoints(c: KvCluster, ids=None) -> list[str]:
    return ["--endpoints", ",".join(c.addrs[i] for i in (ids or c.procs))]


def start_joining(c: KvCluster, i: int, via: int, extra: list[str] = ()) -> list[str]:
    """Starts node i as a new node that joins the cluster through node
    `via` (`raftcore kv --listen ... --join ...`); returns its command."""
    if i not in c.addrs:
        c.addrs[i] = f"{HOST}:{free_ports(1)[0]}"
        c.ids.append(i)
    cmd = node_cmd("--id", str(i), "--dir", str(c.tmp / f"n{i}"), "--listen", c.addrs[i],
                   "--join", c.addrs[via], *NODE_ARGS, *c.extra, *extra)
    with open(c.log_path(i), "ab") as out:
        c.procs[i] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=c.tmp)
    return cmd


async def members_of(c: KvCluster, *options: str) -> dict:
    """{id: member} of `ctl members list --json`."""
    out = await ctl_ok(c, *endpoints(c), *options, "--json", "members", "list")
    return {m["id"]: m for m in json.loads(out)["members"]}


async def voters_are(c: KvCluster, ids: set, *options: str) -> bool:
    m = await members_of(c, *options)
    return {i for i, n in m.items() if n["voter"]} == ids and set(m) == ids


# ============================================================ arguments

@pytest.mark.parametrize("args, message", [
    (["--endpoints", "127.0.0.1", "status"], "not of the form 'host:port'"),
    (["--timeout", "0", "status"], "expected a positive number of seconds"),
    (["--tls-cert", "c.pem", "status"], "--tls-cert and --tls-key go together"),
    (["--secret-file", "/nonexistent", "status"], "--secret-file: cannot read /nonexistent"),
    (["members", "add", "x", "127.0.0.1:7004"], "a node id is an integer"),
    (["members", "add", "4", "nowhere"], "not of the form 'host:port'"),
    (["leader"], "the following arguments are required: transfer"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_ctl_arguments_are_refused_with_the_reason(args, message, capsys):
    from raftcore.kv import ctl as ctl_module
    assert ctl_module.main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--id", "4", "--dir", "d", "--listen", "127.0.0.1:7004", "--join", "127.0.0.1:7001",
      "--init", "--peers", "4=127.0.0.1:7004"], "give one of them"),
    (["--id", "4", "--dir", "d", "--listen", "0.0.0.0:7004", "--join", "127.0.0.1:7001"],
     "not 0.0.0.0:7004"),
    (["--id", "4", "--dir", "d", "--listen", "127.0.0.1:7004", "--tls-ca", "ca.pem"],
     "--tls-ca needs --tls-cert and --tls-key"),
    (["--id", "4", "--dir", "d", "--listen", "127.0.0.1:7004", "--tls-cert", "/nonexistent",
      "--tls-key", "/nonexistent"], "TLS: cannot load the certificate"),
])
def test_bad_node_tls_and_join_arguments_are_refused(args, message, capsys):
    from raftcore.kv import cli
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_a_node_that_cannot_be_reached_is_a_one_line_error():
    async def body():
        return await ctl("--endpoints", f"{HOST}:{free_ports(1)[0]}", "--timeout", "0.5",
                         "health")
    rc, out, err = kv_test(body)()
    assert rc == 1 and out == ""
    assert err.startswith("raftcore ctl: unhealthy: no leader confirmed by a quorum within "
                          "0.5s (kv request not answered within 0.5s")
    assert len(err.strip().splitlines()) == 1


# ====================================================== a running cluster

@kv_test
async def _status_health_keys_transfer(c: KvCluster) -> None:
    async with serving(c) as (client, leader):
        ep = endpoints(c)
        text = await ctl_ok(c, *ep, "status")
        lines = text.splitlines()
        assert lines[0].split()[:3] == ["ID", "ADDRESS", "ROLE"]
        rows = {int(line.split()[0]): line.split() for line in lines[1:4]}
        assert sorted(rows) == [1, 2, 3]
        assert [r[2] for r in rows.values()].count("LEADER") == 1
        assert rows[leader][2] == "LEADER" and rows[leader][1] == c.addrs[leader]

        await ctl_ok(c, *ep, "set", "greeting", "hello world")
        assert await ctl_ok(c, *ep, "get", "greeting") == "hello world\n"
        assert await client.get("greeting") == "hello world"
        assert await ctl_ok(c, *ep, "cas", "greeting", "hello world", "bye") == "OK\n"
        rc, _, err = await ctl(*ep, "cas", "greeting", "hello world", "again")
        assert rc == 1 and "it is bye; nothing changed" in err
        follower = next(i for i in c.ids if i != leader)
        # A stale read on a follower sees the write once that follower applied it.
        async def follower_has_it():
            return await ctl(*endpoints(c, [follower]), "get", "--stale", "greeting") == \
                (0, "bye\n", "")
        await until(follower_has_it, "the follower to apply the cas", c)
        assert await ctl_ok(c, *ep, "del", "greeting") == "1\n"
        assert await ctl_ok(c, *ep, "del", "greeting") == "0\n"
        rc, out, err = await ctl(*ep, "get", "greeting")
        assert (rc, out, err) == (1, "", "raftcore ctl: key 'greeting' not found\n")

        # --json: every node, the leader's view of each follower's lag.
        st = json.loads(await ctl_ok(c, *ep, "--json", "status"))
        assert st["leader"] == leader
        nodes = {n["id"]: n for n in st["nodes"]}
        assert sorted(nodes) == [1, 2, 3]
        for i, n in nodes.items():
            assert n["reachable"] and n["address"] == c.addrs[i]
            assert n["cluster_id"] == st["cluster_id"] and n["leader"] == leader
            assert n["uptime"] > 0 and n["voters"] == [1, 2, 3]
        assert {r["id"] for r in nodes[leader]["replication"]} == {1, 2, 3} - {leader}
        for r in nodes[leader]["replication"]:
            assert r["lag"] == nodes[leader]["last_log_index"] - r["matched"] >= 0
        assert re.fullmatch(rf"healthy: leader {leader}, term {nodes[leader]['term']}, "
                            r"read index \d+\n", await ctl_ok(c, *ep, "health"))
        health = json.loads(await ctl_ok(c, *ep, "--json", "health"))
        assert health["healthy"] is True and health["leader"] == leader

        # Leadership moves to the node asked for, and ctl says so.
        assert await ctl_ok(c, *ep, "leader", "transfer", str(follower)) == \
            f"node {follower} is the leader\n"
        assert await wait_leader(c) == follower
        assert await ctl_ok(c, *ep, "leader", "transfer", str(follower)) == \
            f"node {follower} is the leader already\n"
        rc, _, err = await ctl(*ep, "leader", "transfer", "9")
        assert rc == 1 and "node 9 is not a voter" in err

        # A node that does not answer is not promoted: it stays a learner.
        absent = f"{HOST}:{free_ports(1)[0]}"
        rc, _, err = await ctl(*ep, "--timeout", "2", "members", "add", "5", absent)
        assert rc == 1 and f"node 5 at {absent} has not caught up within" in err, err
        assert "it stays a learner" in err
        assert (await members_of(c))[5]["voter"] is False
        assert await ctl_ok(c, *ep, "members", "remove", "5") == "node 5 removed\n"
        assert await voters_are(c, {1, 2, 3})

        # A malformed admin request is answered with the reason; the node goes on.
        conn = await connection.connect(c.addrs[follower], GUARD,
                                        max_frame=DEFAULT_MAX_FRAME_SIZE)
        try:
            for bad, why in (([KV_ADD_MEMBER, 4], "an add is"),
                             ([KV_ADD_MEMBER, -1, "127.0.0.1:1", False, None, 1.0], "node id"),
                             ([KV_ADD_MEMBER, 4, "nowhere", False, None, 1.0], "host:port"),
                             ([KV_ADD_MEMBER, 4, "127.0.0.1:1", 1, None, 1.0], "learner"),
                             ([KV_REMOVE_MEMBER, "x"], "node id"),
                             ([KV_TRANSFER_LEADER, 2, -1], "a wait is")):
                reply = await conn.call(bad, GUARD)
                assert reply[0] == ERROR and why in reply[1], (bad, reply)
        finally:
            await conn.close()

        # A majority down: no health, and status names the unreachable nodes.
        others = [i for i in c.ids if i != follower]
        for i in others:
            c.kill(i)
        rc, out, err = await ctl(*ep, "--timeout", "2", "health")
        assert rc == 1 and out == ""
        assert err.startswith("raftcore ctl: unhealthy: no leader confirmed by a quorum "
                              "within 2s")
        assert len(err.strip().splitlines()) == 1
        rc, out, err = await ctl(*ep, "status")
        assert rc == 1
        rows = {int(line.split()[0]): line.split() for line in out.splitlines()[1:4]}
        assert all(rows[i][2] == "UNREACHABLE" for i in others), out
        assert rows[follower][2] in ("LEADER", "FOLLOWER", "CANDIDATE"), out


def test_ctl_status_health_keys_and_leader_transfer(tmp_path):
    with KvCluster(tmp_path, extra=["--insecure-admin"]) as c:
        _status_health_keys_transfer(c)


@kv_test
async def _join_under_load(c: KvCluster) -> None:
    async with serving(c) as (client, leader):
        writes = WriteStream(client)
        await writes.acked_at_least(200, c, "before the 4th node")
        cmd = start_joining(c, 4, via=leader)
        await until(lambda: voters_are(c, {1, 2, 3, 4}), "node 4 to be a voter", c)
        at_join = writes.acked
        await writes.acked_at_least(at_join + 200, c, "after node 4 joined")
        await writes.stop()
        await wait_converged(c, writes.expected(), writes.acked)

        # The same command again: node 4 is a voter already and stays one.
        assert c.terminate(4) == 0
        with open(c.log_path(4), "ab") as out:
            c.procs[4] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=c.tmp)

        async def said_so():
            return c.log_text(4).count("--join had nothing to do") == 1
        await until(said_so, "node 4 to see it is a voter already", c)
        assert await voters_are(c, {1, 2, 3, 4})
        assert await client.set("after restart", 1) is None
        await wait_converged(c, {**writes.expected(), "after restart": 1}, writes.acked + 1)


def test_a_fourth_node_joins_under_write_load_and_a_restart_changes_nothing(tmp_path):
    with KvCluster(tmp_path, extra=["--insecure-admin"]) as c:
        _join_under_load(c)


@kv_test
async def _members_with_secret(c: KvCluster, secret: list[str]) -> None:
    c.start_all()
    ep = endpoints(c)

    async def healthy():
        return (await ctl(*ep, *secret, "health"))[0] == 0
    await until(healthy, "a healthy cluster", c)
    # Node 4 starts empty, knowing nobody; `members add` brings it in.
    c.addrs[4] = f"{HOST}:{free_ports(1)[0]}"
    c.ids.append(4)
    with open(c.log_path(4), "ab") as out:
        c.procs[4] = subprocess.Popen(
            node_cmd("--id", "4", "--dir", str(c.tmp / "n4"), "--listen", c.addrs[4],
                     *NODE_ARGS, *secret), stdout=out, stderr=subprocess.STDOUT, cwd=c.tmp)
    assert await ctl_ok(c, *ep, *secret, "members", "add", "4", c.addrs[4]) == \
        f"node 4 at {c.addrs[4]} added (voter)\n"
    assert await voters_are(c, {1, 2, 3, 4}, *secret)
    assert await ctl_ok(c, *ep, *secret, "members", "add", "4", c.addrs[4]) == \
        f"node 4 at {c.addrs[4]} is already a member (voter)\n"
    rc, _, err = await ctl(*ep, *secret, "members", "add", "4", f"{HOST}:1")
    assert rc == 1 and f"node 4 is already a member, at {c.addrs[4]}" in err
    assert await ctl_ok(c, *ep, *secret, "members", "remove", "4") == "node 4 removed\n"
    assert await voters_are(c, {1, 2, 3}, *secret)
    # Without the secret, ctl gets no answer at all, and says what to pass.
    rc, out, err = await ctl(*ep, "members", "list")
    assert (rc, out) == (1, "")
    assert "requires the cluster's shared secret" in err and "ctl --secret-file" in err


def test_with_the_secret_ctl_adds_and_removes_a_member(tmp_path):
    (tmp_path / "secret").write_bytes(b"cluster secret\n")
    secret = ["--secret-file", str(tmp_path / "secret")]
    with KvCluster(tmp_path, extra=secret) as c:
        _members_with_secret(c, secret)


@kv_test
async def _replace_wiped_node(c: KvCluster) -> None:
    async with serving(c) as (client, leader):
        for k in range(50):
            await client.set(f"k{k}", k)
        victim = next(i for i in c.ids if i != leader)
        ep = endpoints(c, [leader])
        c.kill(victim)
        shutil.rmtree(c.tmp / f"n{victim}")
        # Its new, empty storage is a new incarnation: the cluster refuses it.
        start_joining(c, victim, via=leader)
        assert await asyncio.get_running_loop().run_in_executor(
            None, c.procs[victim].wait, GUARD) == 1
        c.procs.pop(victim)
        assert "storage was wiped or replaced" in c.log_text(victim)
        assert f"raftcore ctl members remove {victim}" in c.log_text(victim)

        assert await ctl_ok(c, *ep, "members", "remove", str(victim)) == \
            f"node {victim} removed\n"
        assert await voters_are(c, set(c.ids) - {victim})
        rc, _, err = await ctl(*ep, "members", "remove", str(victim))
        assert (rc, err) == (1, f"raftcore ctl: node {victim} is not a member of the cluster\n")
        assert await client.set("while removed", 1) is None

        start_joining(c, victim, via=leader)
        await until(lambda: voters_are(c, set(c.ids)), f"node {victim} to be a voter again", c)
        await until(lambda: client.get("while removed", stale=True, node=c.addrs[victim]),
                    f"node {victim} to catch up", c)
        for k in range(50):
            assert await client.get(f"k{k}", stale=True, node=c.addrs[victim]) == k
        st = (await statuses(c, [victim]))[victim]
        assert st["identity_stale"] is False and st["state"] == "FOLLOWER"


def test_a_node_whose_directory_was_deleted_is_removed_then_joins_again(tmp_path):
    with KvCluster(tmp_path, extra=["--insecure-admin"]) as c:
        _replace_wiped_node(c)


@kv_test
async def _admin_refused(c: KvCluster) -> None:
    async with serving(c) as (client, leader):
        ep = endpoints(c)
        for args in (["members", "add", "4", f"{HOST}:{free_ports(1)[0]}"],
                     ["members", "remove", str(leader)],
                     ["leader", "transfer", str(next(i for i in c.ids if i != leader))]):
            rc, out, err = await ctl(*ep, *args)
            assert (rc, out) == (1, ""), (args, rc, out, err)
            assert err.strip().endswith(ADMIN_REFUSED), err
            assert "--secret-file" in err and "--tls-ca" in err and "--insecure-admin" in err
        with pytest.raises(KvError, match="membership and leadership changes are refused"):
            await client.remove_member(leader)
        # Nothing changed; reading the membership needs no rights.
        assert await voters_are(c, {1, 2, 3})
        assert (await client.members())["leader"] == leader


def test_membership_changes_without_the_secret_or_insecure_admin_are_refused(tmp_path):
    with KvCluster(tmp_path) as c:
        _admin_refused(c)

