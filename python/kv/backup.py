"""Backups of a `raftcore kv` cluster: `snapshot save FILE` and `snapshot
restore FILE --dir D --id N --listen HOST:PORT` (as etcdctl / etcdutl).

Save. The leader makes a snapshot of its state machine at one applied log
index, after confirming its leadership with a quorum and applying up to the
read point (as a linearizable get does), so the snapshot holds every write
acknowledged before the save began. It is held in the leader's memory as the
bytes of a snapshot file and fetched in chunks, so a state larger than the
frame limit travels. Two requests of the client protocol (raftcore.kv):

    [KV_SNAPSHOT_BEGIN, chunk_size]      -> [OK, {transfer, size, crc32, chunk, addr,
                                              last_log_id, voters, nodes, keys, cluster_id}]
    [KV_SNAPSHOT_READ, transfer, offset] -> [OK, bytes, done]

A follower answers BEGIN with REDIRECT, as it does writes; `addr` is where
the chunks are read (the leader's address). A transfer is dropped once its
last chunk is read, or after IDLE_TIMEOUT seconds without a read; a node
keeps at most MAX_TRANSFERS at a time (more: UNAVAILABLE). The client checks
the size and crc32 of what it received, and the file's own checksum, before
it writes FILE atomically (written, fsynced, renamed).

The file is a kv snapshot file, the format of a node's
DIR/snapshots/snapshot (raftcore.kv.state.encode_snapshot_file): a header
with the format version, length and crc32, then the snapshot's meta (log id,
membership) and the state (KV_SNAPSHOT_FORMAT). A node's own snapshot file,
copied while it is stopped, restores the same way.

Restore. Makes D the data directory of the only node of a NEW cluster: a
fresh log store with a new cluster id and storage incarnation, and the
snapshot's state at its log id, with a membership of node N at HOST:PORT
alone. `raftcore kv --id N --dir D --listen HOST:PORT` then becomes the
leader of that one-node cluster, serving the snapshot's keys; nodes of the
old cluster refuse to talk with it (another cluster id). Other nodes join it
with `raftcore kv --join`. D must be missing or empty; it is built in a
sibling directory and renamed into place, so a failed restore leaves nothing.

The command line: `add_snapshot_commands(subparsers)` adds `save` and
`restore` to `raftcore ctl snapshot`.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import zlib
from typing import Any, Optional

from raftcore.errors import ForwardToLeader, RaftError, StorageError
from raftcore.kv.cli import _non_negative_int, address_argument
from raftcore.kv.client import Client
from raftcore.kv.protocol import (ERROR, KV_SNAPSHOT_BEGIN, KV_SNAPSHOT_READ, OK, REDIRECT,
                                  UNAVAILABLE, KvError)
from raftcore.kv.state import KvStateMachine, decode_snapshot_file, encode_snapshot_file
from raftcore.membership import Membership
from raftcore.messages import SnapshotMeta
from raftcore.model import Node, ReadPolicy
from raftcore.network.tcp import parse_address
from raftcore.storage.base import new_identity_token
from raftcore.storage.wal.oslayer import fsync_dir, replace_file
from raftcore.types import LogId, Vote

log = logging.getLogger("raftcore.kv")

#: Snapshot transfers one node keeps in memory at a time.
MAX_TRANSFERS = 4
#: Seconds a transfer is kept without a read before it is dropped.
IDLE_TIMEOUT = 60.0
#: Chunk sizes a client may ask for (the node also caps them at its
#: Config.snapshot_max_chunk_size, which fits its frame limit).
MIN_CHUNK = 1024
DEFAULT_CHUNK = 1024 * 1024
#: Room in a reply frame for what surrounds a chunk's bytes.
_FRAME_OVERHEAD = 256
#: Times a save starts over when its transfer is gone (leader restarted, say).
_SAVE_ATTEMPTS = 3
_NO_TRANSFER = "no snapshot transfer"

__all__ = ["SnapshotExports", "save_snapshot", "restore_snapshot", "add_snapshot_commands",
           "cmd_snapshot_save", "cmd_snapshot_restore", "MAX_TRANSFERS", "IDLE_TIMEOUT"]


# ================================================================ node side

class _Transfer:
    """One snapshot file being read by a client."""

    __slots__ = ("blob", "chunk", "timer")

    def __init__(self, blob: bytes, chunk: int, timer: asyncio.TimerHandle) -> None:
        self.blob = blob
        self.chunk = chunk
        self.timer = timer


class SnapshotExports:
    """The node's side of `snapshot save`: handlers of KV_SNAPSHOT_BEGIN
    (`begin`) and KV_SNAPSHOT_READ (`read`) for a KvService, serving
    snapshots of `sm`, the state machine of node `raft`."""

    def __init__(self, raft: Any, sm: KvStateMachine, *, max_transfers: int = MAX_TRANSFERS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.raft = raft
        self.sm = sm
        self.max_transfers = max_transfers
        self.idle_timeout = idle_timeout
        self._transfers: dict[str, _Transfer] = {}
        self._starting = 0         # begins past the limit check, not yet registered

    async def begin(self, msg: list) -> list:
        """[KV_SNAPSHOT_BEGIN, chunk_size]: snapshots the state machine."""
        if len(msg) != 2 or type(msg[1]) is not int or msg[1] < MIN_CHUNK:
            return [ERROR, f"a snapshot save is [KV_SNAPSHOT_BEGIN, chunk_size] with "
                           f"chunk_size an int >= {MIN_CHUNK}"]
        if len(self._transfers) + self._starting >= self.max_transfers:
            return [UNAVAILABLE, f"{self.max_transfers} snapshot saves are in progress on "
                                 f"this node; try again once one has finished"]
        self._starting += 1
        try:
            try:
                # Every write acknowledged before now is applied here after this.
                await self.raft.ensure_linearizable(ReadPolicy.READ_INDEX)
                meta, data = self.sm.capture()
                keys = len(self.sm.data)       # what was captured (same loop step)
            except ForwardToLeader as e:
                return [REDIRECT, e.leader_id, getattr(e.leader_node, "addr", None) or None]
            except RaftError as e:     # no quorum, shutting down, nothing applied yet
                return [UNAVAILABLE, f"{type(e).__name__}: {e}"]
            loop = asyncio.get_running_loop()
            blob = await loop.run_in_executor(None, encode_snapshot_file, meta, data)
            tid = new_identity_token()
            chunk = min(msg[1], self.raft.config.snapshot_max_chunk_size)
            self._transfers[tid] = _Transfer(blob, chunk, self._expiry(tid))
        finally:
            self._starting -= 1
        membership = meta.membership
        nodes = {} if membership is None else membership.nodes
        me = nodes.get(self.raft.metrics.id)
        log.info("snapshot save %s: %d bytes at log index %d, read in chunks of %d bytes",
                 tid, len(blob), meta.last_log_index, chunk)
        return [OK, {
            "transfer": tid,
            "size": len(blob),
            "crc32": zlib.crc32(blob),
            "chunk": chunk,
            "addr": getattr(me, "addr", None) or None,
            "last_log_id": [meta.last_log_term, meta.last_log_index],
            "voters": [] if membership is None else sorted(membership.voter_ids),
            "nodes": [[i, getattr(n, "addr", "")] for i, n in sorted(nodes.items())],
            "keys": keys,
            "cluster_id": self.raft.metrics.cluster_id,
        }]

    async def read(self, msg: list) -> list:
        """[KV_SNAPSHOT_READ, transfer, offset]: the chunk at offset."""
        if len(msg) != 3 or type(msg[1]) is not str or type(msg[2]) is not int or msg[2] < 0:
            return [ERROR, "a snapshot read is [KV_SNAPSHOT_READ, transfer, offset] with "
                           "offset an int >= 0"]
        tid, offset = msg[1], msg[2]
        t = self._transfers.get(tid)
        if t is None:
            return [ERROR, f"{_NO_TRANSFER} {tid!r:.40} on this node (it finished, was idle "
                           f"over {self.idle_timeout:g}s, or the node restarted); start the "
                           f"save again"]
        size = len(t.blob)
        if offset > size:
            return [ERROR, f"offset {offset} is past the end of the snapshot ({size} bytes)"]
        t.timer.cancel()
        data = t.blob[offset:offset + t.chunk]
        done = offset + len(data) >= size
        if done:
            del self._transfers[tid]
        else:
            t.timer = self._expiry(tid)
        return [OK, data, done]

    def _expiry(self, tid: str) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(self.idle_timeout, self._expire, tid)

    def _expire(self, tid: str) -> None:
        if self._transfers.pop(tid, None) is not None:
            log.info("snapshot save %s dropped: no chunk read for %gs", tid, self.idle_timeout)


# ============================================================== client side

async def save_snapshot(client: Client, path: str | os.PathLike, *,
                        chunk_size: Optional[int] = None) -> dict:
    """Saves a snapshot of the cluster `client` reaches to the file `path`
    (replaced atomically). Returns what the leader said of it (last_log_id,
    voters, nodes, keys, cluster_id, size) and chunks, largest_chunk.

    chunk_size: bytes per chunk asked for (default: 1 MiB, or less to fit
        the client's max_frame_size); the leader may send smaller ones.
    Raises KvError (refused, or the received bytes do not check out),
    raftcore.errors.Timeout, StorageError (FILE cannot be written)."""
    # Uses Client's internals (_request: leader finding, redirects,
    # retries; _max_frame): Client.save_snapshot is the public entry.
    room = client._max_frame - _FRAME_OVERHEAD
    chunk = min(chunk_size or DEFAULT_CHUNK, room)
    if chunk < MIN_CHUNK:
        raise KvError(f"chunk size {chunk} is below {MIN_CHUNK} bytes (max_frame_size too small)")
    for attempt in range(_SAVE_ATTEMPTS):
        info = (await client._request([KV_SNAPSHOT_BEGIN, chunk]))[1]
        try:
            blob, chunks, largest = await _fetch(client, info)
            break
        except KvError as exc:
            if _NO_TRANSFER not in str(exc) or attempt == _SAVE_ATTEMPTS - 1:
                raise
    if len(blob) != info["size"] or zlib.crc32(blob) != info["crc32"]:
        raise KvError(f"the snapshot received is not the one sent ({len(blob)} of "
                      f"{info['size']} bytes, or another crc32); nothing was written")
    try:
        decode_snapshot_file(blob, "the snapshot received")
    except StorageError as exc:
        raise KvError(f"{exc}; nothing was written") from None
    target = os.fspath(path)
    try:
        await asyncio.get_running_loop().run_in_executor(None, replace_file, target, blob)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from None
    return {**info, "file": target, "chunks": chunks, "largest_chunk": largest}


async def _fetch(client: Client, info: dict) -> tuple[bytes, int, int]:
    """The bytes of a transfer, read chunk by chunk from the node that began
    it; (bytes, chunks, largest chunk)."""
    addr = info["addr"]
    buf = bytearray()
    chunks = largest = 0
    while True:
        reply = await client._request([KV_SNAPSHOT_READ, info["transfer"], len(buf)],
                                      node=addr)
        data, done = reply[1], reply[2]
        if type(data) is not bytes or (not data and not done):
            raise KvError(f"node {addr} sent a malformed snapshot chunk")
        buf += data
        chunks += 1
        largest = max(largest, len(data))
        if done:
            return bytes(buf), chunks, largest
        if len(buf) > info["size"]:
            raise KvError(f"node {addr} sent more than the {info['size']} bytes it announced")


async def restore_snapshot(file: str | os.PathLike, data_dir: str | os.PathLike,
                           node_id: int, listen: str) -> dict:
    """Makes `data_dir` (missing or empty) the data directory of node
    `node_id`, listening on `listen`, the only member of a new cluster whose
    state is the snapshot in `file`. Returns cluster_id, incarnation,
    last_log_id, keys, dir. Raises StorageError (the file is not a sound
    snapshot, data_dir is not empty, or a write failed), ValueError (a bad
    address or id)."""
    from raftcore.storage.file import FileLogStore

    if type(node_id) is not int or node_id < 0:
        raise ValueError(f"the node id must be an int >= 0, got {node_id!r}")
    parse_address(listen)
    file, target = os.fspath(file), os.path.abspath(os.fspath(data_dir))
    loop = asyncio.get_running_loop()
    try:
        blob = await loop.run_in_executor(None, _read, file)
    except OSError as exc:
        raise StorageError(f"cannot read {file}: {exc.strerror or exc}") from None
    meta, data = decode_snapshot_file(blob, file, "it cannot be restored")
    state = KvStateMachine()
    await state.install_snapshot(meta, data)        # checks the state before anything is made
    _check_empty(target)
    work = f"{target}.restoring-{new_identity_token()}"
    try:
        os.makedirs(work)
        # The layout run_node uses: DIR/log and DIR/snapshots.
        store = await FileLogStore.open(os.path.join(work, "log"))
        try:
            identity = await store.read_identity()
            cluster_id = new_identity_token()
            await store.save_cluster_id(cluster_id)
            # A term no lower than the snapshot's: the node's first entry
            # comes after the snapshot's last, in a later term.
            await store.save_vote(Vote(meta.last_log_term))
            # The log starts after the snapshot, as on a node that installed it.
            store.purge(LogId(meta.last_log_term, meta.last_log_index))
        finally:
            await store.close()
        node = Node(listen, incarnation=identity.incarnation)
        new_meta = SnapshotMeta(meta.last_log_term, meta.last_log_index,
                                Membership([{node_id}], {node_id: node}),
                                f"restored-{meta.snapshot_id}")
        sm = await KvStateMachine.open(os.path.join(work, "snapshots"))
        await sm.install_snapshot(new_meta, data)
        await loop.run_in_executor(None, _move_into_place, work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return {"dir": target, "id": node_id, "listen": listen, "cluster_id": cluster_id,
            "incarnation": identity.incarnation,
            "last_log_id": [meta.last_log_term, meta.last_log_index],
            "keys": len(state.data), "from_snapshot": meta.snapshot_id}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _check_empty(target: str) -> None:
    if not os.path.lexists(target):
        return
    if not os.path.isdir(target):
        raise StorageError(f"--dir {target} exists and is not a directory; give a new or "
                           f"empty directory")
    if os.listdir(target):
        raise StorageError(f"--dir {target} is not empty; restore makes a new node and "
                           f"never writes over existing data: give a new or empty directory")


def _move_into_place(work: str, target: str) -> None:
    fsync_dir(work)
    if os.path.isdir(target):
        os.rmdir(target)           # empty (checked); fails if something appeared since
    os.rename(work, target)
    fsync_dir(os.path.dirname(target))


# ============================================================ command line

def add_snapshot_commands(sub: Any) -> None:
    """Adds `save` and `restore` to `sub`, the subparsers of `raftcore ctl
    snapshot`; each sets `run`, a ctl command (raftcore.kv.ctl)."""
    save = sub.add_parser(
        "save", help="save a consistent snapshot of the cluster's state to FILE",
        description="Save a snapshot of the state machine (at one log index, with its "
                    "membership) from the leader, streamed in chunks, to FILE (replaced "
                    "atomically). Any node's address will do: a follower redirects.")
    save.add_argument("file", metavar="FILE")
    save.add_argument("--chunk-size", type=_non_negative_int, default=None, metavar="BYTES",
                      help=f"bytes per chunk (default {DEFAULT_CHUNK}; the leader may send "
                           "smaller ones)")
    save.set_defaults(run=cmd_snapshot_save)
    restore = sub.add_parser(
        "restore", help="make a data directory for the first node of a new cluster from FILE",
        description="Make --dir the data directory of node --id of a NEW cluster (new "
                    "cluster id, only that node as member, at --listen) whose state is the "
                    "snapshot in FILE. Then run: raftcore kv --id N --dir D --listen "
                    "HOST:PORT; other nodes join it with raftcore kv --join.")
    restore.add_argument("file", metavar="FILE")
    restore.add_argument("--dir", required=True, metavar="D",
                         help="the new node's data directory (must be missing or empty)")
    restore.add_argument("--id", type=_non_negative_int, required=True, metavar="N",
                         help="the new node's id")
    restore.add_argument("--listen", type=address_argument, required=True, metavar="HOST:PORT",
                         help="the new node's address (its membership records it)")
    restore.set_defaults(run=cmd_snapshot_restore)


async def cmd_snapshot_save(client: Client, args: argparse.Namespace) -> tuple[dict, str, int]:
    """`raftcore ctl snapshot save FILE`: (result, its text, exit status 0)."""
    r = await client.save_snapshot(args.file, chunk_size=args.chunk_size)
    return r, (
        f"saved snapshot at log index {r['last_log_id'][1]} (term {r['last_log_id'][0]}) of "
        f"cluster {r['cluster_id']}: {r['keys']} keys, {r['size']} bytes in {r['chunks']} "
        f"chunks, members {', '.join(f'{i}={a}' for i, a in r['nodes'])} -> {r['file']}"), 0


async def cmd_snapshot_restore(client: Client,
                               args: argparse.Namespace) -> tuple[dict, str, int]:
    """`raftcore ctl snapshot restore FILE --dir D --id N --listen HOST:PORT`
    (reads no node: `client` is not used)."""
    r = await restore_snapshot(args.file, args.dir, args.id, args.listen)
    return r, (
        f"restored {r['keys']} keys at log index {r['last_log_id'][1]} into {r['dir']}: node "
        f"{r['id']} of new cluster {r['cluster_id']}; start it with: raftcore kv --id "
        f"{r['id']} --dir {r['dir']} --listen {r['listen']}"), 0
