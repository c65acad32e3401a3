"""`snapshot save` and `snapshot restore` (raftcore.kv.backup) across real
`raftcore kv` processes: a save from a 3-node cluster under write load
restores into a new one-node cluster that serves every key acknowledged
before the save began, under a new cluster id the old nodes refuse; a
snapshot larger than the nodes' frame limit, saved through a follower; and
files that must not restore (truncated, damaged, not a snapshot) or a --dir
that is not empty, refused with a clear error and nothing written; a save
from a cluster with a shared secret, refused without it; and a restored node
that two new nodes join (`raftcore kv --join`), all three serving the saved
keys.

The commands run as processes, built by snapshot_cmd (the one place to
change when they move under `raftcore ctl snapshot`). Waits poll a
condition under kv_harness's failure guard; processes are killed on exit.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from raftcore.kv import OK, UNAVAILABLE, Client, KvError, KvStateMachine, connection
from raftcore.kv.backup import MAX_TRANSFERS, MIN_CHUNK
from raftcore.kv.cli import parse_args
from raftcore.kv.protocol import KV_SNAPSHOT_BEGIN, KV_SNAPSHOT_READ
from raftcore.kv.state import encode_snapshot_file
from raftcore.membership import Membership
from raftcore.model import Node
from raftcore.storage.file import FileLogStore
from raftcore.types import ENTRY_MEMBERSHIP, ENTRY_NORMAL, Entry, LogId

from async_runner import run_guarded
from kv_harness import (GUARD, HOST, NODE_ARGS, KvCluster, WriteStream, free_ports, kv_test,
                        node_cmd, serving, statuses, until)
from test_ctl_process import start_joining, voters_are


def snapshot_cmd(command: str, *args: str, endpoints: list[str] = (),
                 secret_file=None) -> list[str]:
    """The command line of `snapshot save|restore ...` with JSON output."""
    opts = ["--endpoints", ",".join(endpoints)] if endpoints else []
    if secret_file is not None:
        opts += ["--secret-file", str(secret_file)]
    return [sys.executable, "-m", "raftcore.cli", "ctl", *opts, "--json", "snapshot", command,
            *args]


async def run_cmd(cmd: list[str], cwd) -> tuple[int, str, str]:
    """Runs a command without blocking the event loop (writers go on
    meanwhile); (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=cwd, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), GUARD)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{cmd} did not finish within {GUARD}s")
    return proc.returncode, out.decode(), err.decode()


async def save(c: KvCluster, path, endpoints: list[str]) -> dict:
    status, out, err = await run_cmd(snapshot_cmd("save", str(path), endpoints=endpoints), c.tmp)
    assert status == 0, f"snapshot save failed: {err}\n{c.logs()}"
    return json.loads(out)


async def restore(c: KvCluster, path, data_dir, node_id: int, listen: str) -> dict:
    status, out, err = await run_cmd(snapshot_cmd("restore", str(path), "--dir", str(data_dir),
                                                  "--id", str(node_id), "--listen", listen),
                                     c.tmp)
    assert status == 0, f"snapshot restore failed: {err}"
    return json.loads(out)


def start_restored(c: KvCluster, i: int, data_dir, extra: list[str] = ()) -> None:
    """Starts node i on a restored directory as the README says (no --peers:
    the membership is on disk); KvCluster kills it on exit."""
    assert i not in c.procs
    with open(c.log_path(i), "ab") as out:
        c.procs[i] = subprocess.Popen(
            node_cmd("--id", str(i), "--dir", str(data_dir), "--listen", c.addrs[i],
                     *NODE_ARGS, *extra),
            stdout=out, stderr=subprocess.STDOUT, cwd=c.tmp)


async def restored_leader(c: KvCluster, i: int, cluster_id: str) -> dict:
    """The status of restored node i once it leads its one-node cluster."""
    async def leading():
        st = (await statuses(c, [i]))[i]
        return st if st is not None and st["state"] == "LEADER" else None
    st = await until(leading, f"restored node {i} to lead its own cluster", c)
    assert st["cluster_id"] == cluster_id
    assert st["members"] == [[i, c.addrs[i]]]
    return st


# ====================================================== across processes

@kv_test
async def _save_under_load(c: KvCluster) -> None:
    async with serving(c) as (client, leader):
        stream = WriteStream(client)
        await stream.acked_at_least(150, c, "before the save")
        old_cluster = (await statuses(c, [leader]))[leader]["cluster_id"]
        before = stream.expected()          # every key acknowledged before the save began
        saved = await save(c, c.tmp / "backup.snap", list(c.addrs.values()))
        await stream.acked_at_least(stream.acked + 20, c, "after the save")
        await stream.stop()
        assert saved["cluster_id"] == old_cluster
        assert sorted(saved["voters"]) == c.ids

        # Node `victim`'s address now belongs to a node of a new cluster.
        victim = next(i for i in c.ids if i != leader)
        c.kill(victim)
        made = await restore(c, c.tmp / "backup.snap", c.tmp / "restored", victim,
                             c.addrs[victim])
        assert made["cluster_id"] != old_cluster
        assert made["last_log_id"] == saved["last_log_id"] and made["keys"] == saved["keys"]
        old_log = len(c.log_text(victim))
        start_restored(c, victim, c.tmp / "restored")
        st = await restored_leader(c, victim, made["cluster_id"])
        assert st["keys"] == saved["keys"]
        # It starts as a node that installed the snapshot, nothing to repair.
        assert "the log is dropped" not in c.log_text(victim)[old_log:]

        reader = Client(c.addrs[victim], timeout=GUARD)
        try:
            keys = sorted(before)
            values = await asyncio.gather(*(reader.get(k) for k in keys))
            for k, v in zip(keys, values):
                # A counter may have moved on between `before` and the save.
                if k.startswith("c"):
                    assert v is not None and v >= before[k], (k, v, before[k])
                else:
                    assert v == before[k], (k, v, before[k])
            assert await reader.set("new-cluster", 1) is None
        finally:
            await reader.close()

        # The old cluster's nodes and the restored one refuse each other.
        async def refused():
            return (f"the peer belongs to cluster {old_cluster}, this node to cluster "
                    f"{made['cluster_id']}") in c.log_text(victim)
        await until(refused, "the restored node to refuse the old cluster's leader", c)
        assert await client.set("old-cluster", 1) is None
        assert (await statuses(c, [victim]))[victim]["cluster_id"] == made["cluster_id"]


def test_a_snapshot_saved_under_write_load_restores_a_new_cluster_serving_every_acked_key(
        tmp_path):
    with KvCluster(tmp_path) as c:
        _save_under_load(c)


#: The nodes' frame limit in the large-snapshot test, and the bytes written.
FRAME = 256 * 1024
VALUE = 60 * 1024
LARGE_KEYS = 24


@kv_test
async def _larger_than_a_frame(c: KvCluster) -> None:
    async with serving(c) as (client, leader):
        values = {f"big{k}": bytes([k]) * VALUE for k in range(LARGE_KEYS)}
        for k, v in values.items():
            await client.set(k, v)
        follower = next(i for i in c.ids if i != leader)
        saved = await save(c, c.tmp / "big.snap", [c.addrs[follower]])
        # Redirected: the leader made the snapshot and sent the chunks.
        assert saved["addr"] == c.addrs[leader]
        assert saved["size"] > 4 * FRAME
        assert (c.tmp / "big.snap").stat().st_size == saved["size"]
        assert saved["largest_chunk"] < FRAME and saved["chunks"] > saved["size"] // FRAME

        # A transfer is gone once read; an unknown one is refused by name.
        with pytest.raises(KvError, match="no snapshot transfer"):
            await client._request([KV_SNAPSHOT_READ, "nope", 0], node=c.addrs[leader])
        with pytest.raises(KvError, match="chunk_size an int"):
            await client._request([KV_SNAPSHOT_BEGIN, "big"], node=c.addrs[leader])

        await _transfers_are_bounded(c.addrs[leader])

        c.kill(follower)
        made = await restore(c, c.tmp / "big.snap", c.tmp / "restored", follower,
                             c.addrs[follower])
        start_restored(c, follower, c.tmp / "restored", ["--max-frame-size", str(FRAME)])
        await restored_leader(c, follower, made["cluster_id"])
        reader = Client(c.addrs[follower], timeout=GUARD, max_frame_size=FRAME)
        try:
            for k, v in values.items():
                assert await reader.get(k) == v, k
        finally:
            await reader.close()


async def _transfers_are_bounded(addr: str) -> None:
    """Saves begun and never read are kept up to MAX_TRANSFERS; one more is
    answered UNAVAILABLE until one of them has been read to its end."""
    conn = await connection.connect(addr, GUARD, max_frame=FRAME)
    try:
        begun = [await conn.call([KV_SNAPSHOT_BEGIN, MIN_CHUNK], GUARD)
                 for _ in range(MAX_TRANSFERS)]
        assert [r[0] for r in begun] == [OK] * MAX_TRANSFERS
        refused = await conn.call([KV_SNAPSHOT_BEGIN, MIN_CHUNK], GUARD)
        assert refused[0] == UNAVAILABLE and "in progress" in refused[1], refused
        info, offset, done = begun[0][1], 0, False
        while not done:
            _, data, done = await conn.call([KV_SNAPSHOT_READ, info["transfer"], offset], GUARD)
            assert len(data) <= MIN_CHUNK
            offset += len(data)
        assert offset == info["size"]
        assert (await conn.call([KV_SNAPSHOT_BEGIN, MIN_CHUNK], GUARD))[0] == OK
    finally:
        await conn.close()


def test_a_snapshot_larger_than_the_frame_limit_is_saved_through_a_follower(tmp_path):
    with KvCluster(tmp_path, extra=["--max-frame-size", str(FRAME)]) as c:
        _larger_than_a_frame(c)


@kv_test
async def _with_secret(c: KvCluster, secret_file) -> None:
    c.start(1, init=True)
    client = Client(c.addrs[1], timeout=GUARD, secret=secret_file.read_bytes().strip())
    try:
        assert await client.set("guarded", 1) is None
    finally:
        await client.close()
    status, out, err = await run_cmd(snapshot_cmd("save", str(c.tmp / "s.snap"),
                                                  endpoints=[c.addrs[1]],
                                                  secret_file=secret_file), c.tmp)
    assert status == 0, err
    assert json.loads(out)["keys"] == 1
    status, out, err = await run_cmd(
        snapshot_cmd("save", str(c.tmp / "t.snap"), endpoints=[c.addrs[1]]), c.tmp)
    assert status == 1 and "requires the cluster's shared secret" in err, err
    assert not (c.tmp / "t.snap").exists()


def test_a_save_proves_the_clusters_secret_and_is_refused_without_it(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    with KvCluster(tmp_path, n=1, extra=["--secret-file", str(secret)]) as c:
        _with_secret(c, secret)


# ============================================================ files only

def snapshot_file(path, keys: int = 10) -> bytes:
    """Writes a snapshot file of a small 3-node cluster's state to `path`."""
    sm = KvStateMachine()
    members = Membership([{1, 2, 3}], {i: Node(f"{HOST}:{7000 + i}") for i in (1, 2, 3)})
    sm.apply([Entry(1, 1, ENTRY_MEMBERSHIP, members)]
             + [Entry(1, 2 + k, ENTRY_NORMAL, ["set", f"k{k}", k]) for k in range(keys)])
    meta, data = sm.capture()
    blob = encode_snapshot_file(meta, data)
    path.write_bytes(blob)
    return blob


def run_restore(tmp_path, file, data_dir) -> subprocess.CompletedProcess:
    port = free_ports(1)[0]
    return subprocess.run(snapshot_cmd("restore", str(file), "--dir", str(data_dir), "--id",
                                       "5", "--listen", f"{HOST}:{port}"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=GUARD)


def test_a_restored_directory_holds_the_state_a_new_cluster_id_and_only_the_new_node(
        tmp_path):
    snapshot_file(tmp_path / "s.snap")
    done = run_restore(tmp_path, tmp_path / "s.snap", tmp_path / "d")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["keys"] == 10 and made["last_log_id"] == [1, 11]
    sm = KvStateMachine(tmp_path / "d" / "snapshots")
    assert sm.data == {f"k{k}": k for k in range(10)}
    assert sm.last_membership.voter_ids == {5}
    assert list(sm.last_membership.nodes) == [5]
    assert sm.last_membership.nodes[5].addr == made["listen"]

    async def identity():
        store = await FileLogStore.open(tmp_path / "d" / "log")
        try:
            return (await store.read_identity(), await store.read_vote(),
                    await store.get_log_state())
        finally:
            await store.close()
    ident, vote, log_state = run_guarded(identity(), GUARD)
    # The log starts after the snapshot; the node's term is the snapshot's.
    assert log_state.last_purged_log_id == LogId(1, 11)
    assert ident.cluster_id == made["cluster_id"] and ident.incarnation == made["incarnation"]
    assert sm.last_membership.nodes[5].incarnation == ident.incarnation
    assert vote.term == 1
    assert [p.name for p in tmp_path.iterdir() if "restoring" in p.name] == []


def _truncated(blob: bytes) -> bytes:
    return blob[:-7]


def _flipped(blob: bytes) -> bytes:
    i = len(blob) // 2
    return blob[:i] + bytes([blob[i] ^ 0x40]) + blob[i + 1:]


@pytest.mark.parametrize("damage, message", [
    (_truncated, "the snapshot file is truncated"),
    (_flipped, "the snapshot file is damaged"),
    (lambda blob: blob[:10], "truncated snapshot file (10 bytes)"),
    (lambda blob: b"hello, world, this is not a snapshot", "is not a raftcore kv snapshot file"),
])
def test_a_truncated_or_damaged_file_is_refused_and_nothing_is_written(tmp_path, damage,
                                                                        message):
    blob = snapshot_file(tmp_path / "good.snap")
    (tmp_path / "bad.snap").write_bytes(damage(blob))
    done = run_restore(tmp_path, tmp_path / "bad.snap", tmp_path / "d")
    assert done.returncode == 1
    assert message in done.stderr and "bad.snap" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.snap", "good.snap"]


def test_a_missing_file_is_refused_by_name(tmp_path):
    done = run_restore(tmp_path, tmp_path / "absent.snap", tmp_path / "d")
    assert done.returncode == 1
    assert "cannot read" in done.stderr and "absent.snap" in done.stderr, done.stderr
    assert not (tmp_path / "d").exists()


def test_a_directory_that_is_not_empty_is_refused_and_left_as_it_was(tmp_path):
    snapshot_file(tmp_path / "s.snap")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    done = run_restore(tmp_path, tmp_path / "s.snap", tmp_path / "d")
    assert done.returncode == 1
    assert "is not empty" in done.stderr, done.stderr
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "s.snap"]
    # An empty directory is fine.
    (tmp_path / "d" / "keep.txt").unlink()
    done = run_restore(tmp_path, tmp_path / "s.snap", tmp_path / "d")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["log", "snapshots"]


# ============================================================ the node's frame limit

def test_the_frame_limit_caps_what_a_node_sends_in_one_frame():
    args = parse_args(["--id", "1", "--dir", "d", "--listen", f"{HOST}:7001",
                       "--max-frame-size", str(FRAME)])
    assert args.max_frame_size == FRAME
    for name in ("max_payload_bytes", "snapshot_max_chunk_size", "max_command_bytes"):
        assert getattr(args.config, name) <= FRAME // 2, name


@pytest.mark.parametrize("extra, message", [
    (["--max-frame-size", "1000"], "--max-frame-size must be at least"),
    (["--max-frame-size", str(FRAME), "--max-command-bytes", str(FRAME)],
     "does not fit in --max-frame-size"),
])
def test_a_frame_limit_too_small_for_what_it_must_carry_is_refused(capsys, extra, message):
    with pytest.raises(SystemExit):
        parse_args(["--id", "1", "--dir", "d", "--listen", f"{HOST}:7001", *extra])
    assert message in capsys.readouterr().err


@kv_test
async def _restored_then_joined(c: KvCluster, new: KvCluster) -> None:
    async with serving(c) as (client, leader):
        written = {f"r{k}": k for k in range(60)}
        for k, v in written.items():
            await client.set(k, v)
        saved = await save(c, c.tmp / "grow.snap", [c.addrs[leader]])
    for i in c.ids:
        c.kill(i)
    # The new cluster: node 1 restored from the file, nodes 2 and 3 join it
    # with `raftcore kv --join`, as the README says.
    made = await restore(new, c.tmp / "grow.snap", new.tmp / "n1", 1, new.addrs[1])
    start_restored(new, 1, new.tmp / "n1", new.extra)
    await restored_leader(new, 1, made["cluster_id"])
    for i in (2, 3):
        start_joining(new, i, via=1)
    await until(lambda: voters_are(new, {1, 2, 3}), "nodes 2 and 3 to join as voters", new)
    reader = Client(list(new.addrs.values()), timeout=GUARD)
    try:
        assert await reader.set("after", 1) is None
        for i in new.ids:
            async def holds_everything():
                got = await asyncio.gather(*(reader.get(k, stale=True, node=new.addrs[i])
                                             for k in [*written, "after"]))
                return got == [*written.values(), 1]
            await until(holds_everything, f"node {i} to serve every restored key", new)
        st = await statuses(new, new.ids)
        assert {s["cluster_id"] for s in st.values()} == {made["cluster_id"]}
        assert made["cluster_id"] != saved["cluster_id"]
    finally:
        await reader.close()


def test_a_restored_node_and_two_joined_ones_serve_the_saved_keys(tmp_path):
    (tmp_path / "new").mkdir()
    with KvCluster(tmp_path) as c, KvCluster(tmp_path / "new", extra=["--insecure-admin"]) as new:
        _restored_then_joined(c, new)
