"""`raftcore kv`: a replicated key-value node program, and its client.

One process runs one node::

    raftcore kv --id 1 --dir ./n1 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --init

with a durable FileLogStore in DIR/log, snapshots in DIR/snapshots, the TCP
transport, and a `KvStateMachine`. `--init` (on one node, the first time)
forms the cluster from --peers; on a node that already has a log it only
logs that and goes on, so a restart may keep the flag. Ctrl-C or SIGTERM
shuts the node down cleanly (exit status 0).

Client protocol. Clients talk to a node on its Raft port, in the frames of
`raftcore.network.tcp` (length, version byte, msgpack `[request_id,
message]`): the node's RaftServer hands message types from
SERVICE_TYPE_MIN up to the KvService here. Requests:

    [KV_WRITE, client_id, seq, acked_below, cmd]   cmd: ["set", key, value] |
                                                   ["delete", key] |
                                                   ["cas", key, expected, new]
    [KV_GET, key, mode]                            mode: READ_INDEX | LEASE | STALE
    [KV_STATUS]

and every reply is a list whose first item is a status:

    [OK, result, log_index]       a write: set -> previous value, delete ->
                                  removed value, cas -> [ok, current]
    [OK, value, present]          a get
    [OK, {status fields}]         a status
    [REDIRECT, leader_id, addr]   not the leader (id and addr None if unknown)
    [UNAVAILABLE, reason]         try again, here or elsewhere (no quorum, shutting down)
    [ERROR, reason]               a bad request; retrying will not help

Exactly-once writes. A write goes into the log as ["session", client_id,
seq, acked_below, cmd]. Each `Client` has a fresh random client id and
numbers its writes 1, 2, 3, ...; `acked_below` says that the client has its
answer for every seq below it (the Raft dissertation's 6.3). The state
machine keeps, per client, the responses of the seqs not yet acknowledged: a
write whose seq it has seen already is not applied again, and its original
response is returned; one below the acknowledged mark is refused (its
answer was already delivered, or the client gave up on it). Sessions are part
of the snapshots, so a node restored from a snapshot deduplicates the same
way. Sessions are kept for the `max_sessions` most recently active clients
(default 100,000); a client silent longer than that loses its session, and a
retry of its old write could then apply twice.

A write whose outcome a node cannot tell (it lost leadership, or shut down,
while the write was in flight) is answered UNAVAILABLE or REDIRECT, and the
client sends it again under the same seq: whether or not the first copy was
committed, it is applied once.

Reads. A get is linearizable by default: the leader confirms its leadership
with a quorum (ensure_linearizable, READ_INDEX), then reads its state
machine. `lease=True` uses the leader lease instead; `stale=True` reads
whatever node the request reaches, without asking anyone.

Durability. DIR/log is a FileLogStore (nothing is acknowledged before it is
fsynced on a majority); DIR/snapshots/snapshot holds the newest snapshot,
replaced atomically (written, fsynced, renamed) before the log is purged up
to it. A restart loads the snapshot and replays the log after it.

Shared secret. With --secret-file, peers and clients must pass the
transport's shared-secret handshake (see raftcore.network.tcp) before any
request is read; give the client the same secret (Client(secret=...)).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import signal
import struct
import sys
import threading
import uuid
import zlib
from typing import Any, Callable, Iterable, Optional, Sequence

import msgpack

from raftcore.codec import decode_snapshot_meta, encode_snapshot_meta
from raftcore.config import Config, SnapshotPolicy
from raftcore.errors import (ConfigError, ForwardToLeader, InvalidCommand, NotAllowed, RaftError,
                             StorageError, Timeout)
from raftcore.messages import SnapshotMeta
from raftcore.model import Node, ReadPolicy
from raftcore.network.tcp import (DEFAULT_MAX_FRAME_SIZE, SERVICE_TYPE_MIN, WIRE_VERSION,
                                  parse_address)
# The transport's shared-secret handshake, client side (see its module docstring).
from raftcore.network.tcp import AUTH_MAGIC, AuthError, check_secret, client_handshake
from raftcore.storage.base import Snapshot
from raftcore.storage.mem import MemStateMachine
from raftcore.types import LogId

__all__ = ["Client", "KvError", "KvStateMachine", "KvService", "main", "KV_WRITE", "KV_GET",
           "KV_STATUS", "write_request"]

log = logging.getLogger("raftcore.kv")

# ------------------------------------------------------------------ protocol

#: Message types of the client protocol (service types of the RaftServer).
KV_WRITE = SERVICE_TYPE_MIN
KV_GET = SERVICE_TYPE_MIN + 1
KV_STATUS = SERVICE_TYPE_MIN + 2

#: Reply statuses.
OK = 0
REDIRECT = 1
UNAVAILABLE = 2
ERROR = 3

#: Read modes of KV_GET.
READ_INDEX = 0
LEASE = 1
STALE = 2

#: The log command of a write made through a session.
SESSION_CMD = "session"

_WRITE_ARITY = {"set": 3, "delete": 2, "cas": 4}


def _check_key(key: Any) -> Optional[str]:
    """Why `key` cannot be a key, or None. Keys are str, bytes or int (not
    bool or float: True == 1 and 1.0 == 1 would alias in the map)."""
    if type(key) in (str, bytes, int):
        return None
    return f"a key must be a str, bytes or int, got {type(key).__name__} {key!r:.80}"


def _check_command(cmd: Any) -> Optional[str]:
    """Why `cmd` is not a valid write command, or None."""
    if not isinstance(cmd, (list, tuple)) or not cmd:
        return f"a write command is a list [op, key, ...], got {cmd!r:.80}"
    arity = _WRITE_ARITY.get(cmd[0]) if type(cmd[0]) is str else None
    if arity is None:
        return f"unknown write operation {cmd[0]!r:.40}; use set, delete or cas"
    if len(cmd) != arity:
        return f"{cmd[0]} takes {arity - 1} arguments, got {len(cmd) - 1}"
    return _check_key(cmd[1])


def _check_client_id(cid: Any) -> Optional[str]:
    if type(cid) in (str, bytes, int) and (type(cid) is int or 0 < len(cid) <= 256):
        return None
    return f"a client id must be a str or bytes of 1..256 items or an int, got {cid!r:.80}"


def write_request(client_id: Any, seq: int, cmd: list, acked_below: int) -> list:
    """The KV_WRITE message of one write (what Client sends)."""
    return [KV_WRITE, client_id, seq, acked_below, list(cmd)]


class KvError(RaftError):
    """A request the cluster refused (malformed, or a write that was given up
    on); retrying it will not help."""


# ------------------------------------------------------------ state machine

#: Version of KvStateMachine's snapshot data (what travels to followers).
KV_SNAPSHOT_FORMAT = 1
#: Snapshot file: magic, version, crc32 of the body, body length, then the
#: body: msgpack [encoded SnapshotMeta, data].
_SNAP_MAGIC = b"RCKVSNAP"
_SNAP_HEAD = struct.Struct(">8sIII")
_SNAP_FILE = "snapshot"
_snapshot_ids = itertools.count(1)


class _Session:
    """What the state machine keeps of one client: the responses of its
    writes at or above `floor` (the client has the answers below it)."""

    __slots__ = ("floor", "responses")

    def __init__(self, floor: int = 0, responses: Optional[dict] = None) -> None:
        self.floor = floor
        self.responses: dict[int, Any] = responses if responses is not None else {}


class KvStateMachine(MemStateMachine):
    """MemStateMachine's key-value map plus client sessions (exactly-once
    writes) and, with `path`, durable snapshots.

    Commands: MemStateMachine's (["set", k, v], ["delete", k], ["cas", k,
    expected, new]) and ["session", client_id, seq, acked_below, cmd], which
    applies `cmd` once per (client_id, seq) and answers ["ok", result],
    ["error", reason] (a malformed cmd) or ["stale", reason] (a seq below
    what the client acknowledged: not applied).

    path: a directory for snapshots, or None to keep them in memory only.
        A snapshot is written to a temporary file, fsynced and renamed over
        the previous one before build_snapshot or install_snapshot returns,
        so the node may purge its log up to it. Open with
        `await KvStateMachine.open(path)` to load the newest snapshot.
    executor(fn, *args) -> awaitable runs blocking file work; default: the
        event loop's thread pool (install_snapshot uses it; build_snapshot
        uses the one the runtime passes).
    max_sessions: clients whose sessions are kept (least recently active
        dropped first).
    """

    def __init__(self, path: Optional[str | os.PathLike] = None, *,
                 executor: Optional[Callable] = None, max_sessions: int = 100_000) -> None:
        super().__init__()
        if not isinstance(max_sessions, int) or max_sessions <= 0:
            raise ConfigError(f"max_sessions must be a positive int, got {max_sessions!r}")
        self.path = os.fspath(path) if path is not None else None
        self.max_sessions = max_sessions
        #: client id -> _Session, least recently active first.
        self.sessions: dict[Any, _Session] = {}
        #: Commands applied to the map (a deduplicated retry is not counted).
        self.applied_commands = 0
        #: Session writes answered from the session instead of applied again.
        self.deduplicated = 0
        self._executor = executor
        self._file_lock = threading.Lock()     # snapshot file writes, in executor threads
        self._file_index = -1                  # log index of the snapshot on disk
        self._file_meta: Optional[SnapshotMeta] = None   # and its meta
        if self.path is not None:
            self._load_file()

    @classmethod
    async def open(cls, path: str | os.PathLike, **kw: Any) -> "KvStateMachine":
        """Creates the state machine off the event loop (reading the snapshot)."""
        loop = asyncio.get_running_loop()
        executor = kw.get("executor") or (lambda fn, *a: loop.run_in_executor(None, fn, *a))
        return await executor(lambda: cls(path, **kw))

    def restarted(self) -> "KvStateMachine":
        sm = KvStateMachine(max_sessions=self.max_sessions)
        if self._snapshot is not None:
            sm._load(self._snapshot.meta, self._snapshot.data)
        return sm

    # ------------------------------------------------------------- apply

    def _apply_normal(self, data: dict, p: Any) -> Any:
        # MemStateMachine.apply walks the entries; a client command here is
        # either a session command or a plain one.
        if isinstance(p, (list, tuple)) and p and p[0] == SESSION_CMD:
            return self._apply_session(p)
        self.applied_commands += 1
        return self._apply_command(data, p)

    def _apply_session(self, p: Any) -> list:
        # Everything here is a function of the log alone: every node answers
        # and deduplicates the same way.
        if len(p) != 5:
            return ["error", f"a session command is [session, client_id, seq, acked_below, "
                             f"cmd], got {len(p)} items"]
        _, cid, seq, acked, cmd = p
        why = _check_client_id(cid)
        if why is None and (type(seq) is not int or seq < 1 or type(acked) is not int
                            or not 0 <= acked <= seq):
            why = f"seq must be an int >= 1 and acked_below an int in [0, seq], got " \
                  f"{seq!r:.40} and {acked!r:.40}"
        if why is not None:
            return ["error", why]
        sessions = self.sessions
        s = sessions.pop(cid, None)
        if s is None:
            s = _Session()
            if len(sessions) >= self.max_sessions:
                del sessions[next(iter(sessions))]
        sessions[cid] = s              # most recently active last
        if seq < s.floor:
            resp = ["stale", f"write {seq} of client {cid!r:.80} is older than what the "
                             f"client acknowledged ({s.floor}); it was not applied again"]
        else:
            resp = s.responses.get(seq)
            if resp is not None:
                self.deduplicated += 1
            else:
                why = _check_command(cmd)
                if why is not None:
                    resp = ["error", why]
                else:
                    resp = ["ok", self._run_command(self.data, cmd)]
                    self.applied_commands += 1
                s.responses[seq] = resp
        if acked > s.floor:
            s.floor = acked
            responses = s.responses
            for k in [k for k in responses if k < acked]:
                del responses[k]
        return resp

    # --------------------------------------------------------- snapshots

    def _state(self) -> dict:
        """The state to snapshot, captured now (values are never mutated in
        place, sessions' response maps are)."""
        return {
            "format": KV_SNAPSHOT_FORMAT,
            "items": list(self.data.items()),
            "sessions": [[cid, s.floor, list(s.responses.items())]
                         for cid, s in self.sessions.items()],
            "applied_commands": self.applied_commands,
            "deduplicated": self.deduplicated,
        }

    async def build_snapshot(self, executor: Callable) -> Snapshot:
        if self.last_applied is None:
            raise NotAllowed("nothing is applied yet; there is nothing to snapshot")
        state = self._state()
        last, membership = self.last_applied, self.last_membership
        meta = SnapshotMeta(last.term, last.index, membership,
                            f"{last.term}-{last.index}-{next(_snapshot_ids)}")
        data = await executor(self._encode_and_save, meta, state)
        snap = Snapshot(meta, data)
        if self._snapshot is None or \
                self._snapshot.meta.last_log_index <= meta.last_log_index:
            self._snapshot = snap
        return snap

    def _encode_and_save(self, meta: SnapshotMeta, state: dict) -> bytes:
        data = msgpack.packb(state, use_bin_type=True)
        if self.path is not None:
            self._save_file(meta, data)
        return data

    async def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._load(meta, data)           # validates before anything is written
        if self.path is not None:
            executor = self._executor
            if executor is None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self._save_file, meta, data)
            else:
                await executor(self._save_file, meta, data)

    def _parse(self, meta: SnapshotMeta, data: bytes) -> tuple:
        """(items, sessions, applied_commands, deduplicated) of the snapshot;
        StorageError if it cannot be read."""
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
            found = obj.get("format") if isinstance(obj, dict) else None
            if found != KV_SNAPSHOT_FORMAT:
                raise ValueError(f"format {found!r:.40}, expected {KV_SNAPSHOT_FORMAT}")
            items = {k: v for k, v in obj["items"]}
            sessions = {cid: _Session(floor, {seq: r for seq, r in responses})
                        for cid, floor, responses in obj["sessions"]}
            applied_commands, deduplicated = obj["applied_commands"], obj["deduplicated"]
            if type(applied_commands) is not int or type(deduplicated) is not int:
                raise ValueError("applied_commands or deduplicated is not an int")
        except Exception as exc:
            raise StorageError(f"KvStateMachine cannot read snapshot {meta.snapshot_id}: "
                               f"{exc}") from exc
        return items, sessions, applied_commands, deduplicated

    def _load(self, meta: SnapshotMeta, data: bytes) -> None:
        items, sessions, applied_commands, deduplicated = self._parse(meta, data)
        self.data = items
        self.sessions = sessions
        self.applied_commands = applied_commands
        self.deduplicated = deduplicated
        self.last_applied = LogId(meta.last_log_term, meta.last_log_index)
        self.last_membership = meta.membership
        self._snapshot = Snapshot(meta, data)

    # ------------------------------------------------------ snapshot file

    def _save_file(self, meta: SnapshotMeta, data: bytes) -> None:
        """Makes the snapshot durable as DIR/snapshot (executor thread)."""
        body = msgpack.packb([encode_snapshot_meta(meta), data], use_bin_type=True)
        blob = _SNAP_HEAD.pack(_SNAP_MAGIC, KV_SNAPSHOT_FORMAT, zlib.crc32(body),
                               len(body)) + body
        final = os.path.join(self.path, _SNAP_FILE)
        with self._file_lock:
            # A build that finishes after a newer snapshot was installed
            # must not replace it.
            if meta.last_log_index < self._file_index:
                return
            tmp = final + ".tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    view = memoryview(blob)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, final)
                _fsync_dir(self.path)
            except OSError as exc:
                try:
                    os.unlink(tmp)      # gives its space back; the last snapshot stays
                except OSError:
                    pass
                raise StorageError(f"KvStateMachine: writing the snapshot {final} failed: "
                                   f"{exc}") from exc
            self._file_index = meta.last_log_index
            self._file_meta = meta

    def durable_snapshot(self) -> Optional[SnapshotMeta]:
        """The snapshot in the file (none without a path): what a restart
        loads, so the node may purge its log up to it."""
        return self._file_meta

    def _load_file(self) -> None:
        path = self.path
        try:
            os.makedirs(path, exist_ok=True)
            tmp = os.path.join(path, _SNAP_FILE + ".tmp")
            if os.path.exists(tmp):
                # Never renamed into place: never reported durable.
                log.info("removing %s left by an interrupted snapshot write", tmp)
                os.unlink(tmp)
            final = os.path.join(path, _SNAP_FILE)
            try:
                with open(final, "rb") as f:
                    blob = f.read()
            except FileNotFoundError:
                return
        except OSError as exc:
            raise StorageError(f"KvStateMachine: cannot read snapshots in {path}: {exc}") \
                from exc
        head = _SNAP_HEAD.size
        if len(blob) < head:
            raise StorageError(f"{final}: truncated snapshot file ({len(blob)} bytes)")
        magic, version, crc, size = _SNAP_HEAD.unpack_from(blob)
        if magic != _SNAP_MAGIC:
            raise StorageError(f"{final} is not a raftcore kv snapshot file")
        if version != KV_SNAPSHOT_FORMAT:
            raise StorageError(f"{final}: snapshot format version {version}, this raftcore "
                               f"reads version {KV_SNAPSHOT_FORMAT}")
        body = blob[head:]
        if len(body) != size or zlib.crc32(body) != crc:
            raise StorageError(
                f"{final}: the snapshot file is damaged (length or checksum mismatch at "
                f"offset {head}); the log may be purged up to it, so the node refuses to start")
        try:
            meta_obj, data = msgpack.unpackb(body, raw=False, strict_map_key=False)
            meta = decode_snapshot_meta(meta_obj)
        except Exception as exc:
            raise StorageError(f"{final}: undecodable snapshot: {exc}") from exc
        self._load(meta, data)
        self._file_index = meta.last_log_index
        self._file_meta = meta
        log.info("loaded snapshot %s up to %s from %s", meta.snapshot_id, meta.last_log_id,
                 final)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------- service

class KvService:
    """Serves the client protocol for one node: `handlers()` is the
    `services` mapping of its RaftServer."""

    def __init__(self, raft: Any, sm: KvStateMachine) -> None:
        self.raft = raft
        self.sm = sm

    def handlers(self) -> dict:
        return {KV_WRITE: self.write, KV_GET: self.get, KV_STATUS: self.status}

    def _redirect(self, e: ForwardToLeader) -> list:
        addr = getattr(e.leader_node, "addr", None) or None
        return [REDIRECT, e.leader_id, addr]

    async def write(self, msg: list) -> list:
        if len(msg) != 5:
            return [ERROR, "a write is [KV_WRITE, client_id, seq, acked_below, cmd]"]
        _, cid, seq, acked, cmd = msg
        why = _check_client_id(cid) or _check_command(cmd)
        if why is None and (type(seq) is not int or seq < 1 or type(acked) is not int
                            or not 0 <= acked <= seq):
            why = "seq must be an int >= 1 and acked_below an int in [0, seq]"
        if why is not None:
            return [ERROR, why]
        try:
            resp = await self.raft.client_write([SESSION_CMD, cid, seq, acked, cmd])
        except ForwardToLeader as e:
            return self._redirect(e)
        except InvalidCommand as e:    # over max_command_bytes: no node takes it
            return [ERROR, str(e)]
        except RaftError as e:         # shut down or failed: another node may serve it
            return [UNAVAILABLE, f"{type(e).__name__}: {e}"]
        status, value = resp.data
        if status == "ok":
            return [OK, value, resp.index]
        return [ERROR, value]

    async def get(self, msg: list) -> list:
        if len(msg) != 3 or msg[2] not in (READ_INDEX, LEASE, STALE):
            return [ERROR, "a get is [KV_GET, key, mode] with mode 0 (read index), 1 (lease) "
                           "or 2 (stale)"]
        key, mode = msg[1], msg[2]
        why = _check_key(key)
        if why is not None:
            return [ERROR, why]
        if mode != STALE:
            policy = ReadPolicy.LEASE_READ if mode == LEASE else ReadPolicy.READ_INDEX
            try:
                await self.raft.ensure_linearizable(policy)
            except ForwardToLeader as e:
                return self._redirect(e)
            except RaftError as e:     # no quorum confirmed it (Timeout), shut down, ...
                return [UNAVAILABLE, f"{type(e).__name__}: {e}"]
        data = self.sm.data
        return [OK, data.get(key), key in data]

    async def status(self, msg: list) -> list:
        m = self.raft.metrics
        members = []
        if m.membership is not None:
            members = [[i, getattr(n, "addr", "")] for i, n in sorted(m.membership.nodes.items())]
        leader_addr = None
        if m.current_leader is not None and m.membership is not None:
            n = m.membership.nodes.get(m.current_leader)
            leader_addr = getattr(n, "addr", None) or None
        return [OK, {
            "id": m.id,
            "state": m.state.name,
            "term": m.current_term,
            "leader": m.current_leader,
            "leader_addr": leader_addr,
            "last_log_index": m.last_log_index,
            "committed": m.committed,
            "applied": m.last_applied_index,
            "snapshot": m.snapshot.index if m.snapshot is not None else None,
            "purged": m.purged.index if m.purged is not None else 0,
            "members": members,
            "disk_full": m.disk_full,
            "keys": len(self.sm.data),
            "sessions": len(self.sm.sessions),
            "applied_commands": self.sm.applied_commands,
            "deduplicated": self.sm.deduplicated,
            "cluster_id": m.cluster_id,
            "incarnation": m.incarnation,
            # Its storage was wiped or replaced: it does not vote until
            # removed and added back (see the README, "Operating a cluster").
            "identity_stale": m.identity_stale,
            "stale_members": sorted(m.stale_members),
            "recorded_incarnations": [] if m.membership is None else [
                [i, getattr(n, "incarnation", None)]
                for i, n in sorted(m.membership.nodes.items())],
        }]


# -------------------------------------------------------------------- client

_HEADER = struct.Struct(">IB")


class _Lost(Exception):
    """The connection failed before the reply came."""


class _Connection:
    """One pipelined connection of a Client to one node."""

    def __init__(self, addr: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_frame: int) -> None:
        self.addr = addr
        self.reader = reader
        self.writer = writer
        self.max_frame = max_frame
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False
        #: Set when the node refused this client for good (it wants the
        #: cluster's secret): raised by every call instead of retrying.
        self.failure: Optional[KvError] = None
        self._ids = itertools.count(1)
        self._packer = msgpack.Packer(use_bin_type=True)
        self.task = asyncio.get_running_loop().create_task(self._read_loop())

    async def call(self, msg: list, timeout: float) -> Any:
        # The transport may be closed (a failed write, a reset) before the
        # read loop has seen it; uvloop then refuses writes with RuntimeError.
        if self.closed or self.writer.transport.is_closing():
            self._close("closed")
            if self.failure is not None:
                raise self.failure
            raise _Lost(f"connection to {self.addr} is closed")
        rid = next(self._ids)
        try:
            body = self._packer.pack([rid, msg])
        except (TypeError, ValueError, OverflowError) as exc:
            raise KvError(f"cannot encode the request with msgpack: {exc}") from None
        if len(body) + 1 > self.max_frame:
            raise KvError(f"request of {len(body) + 1} bytes exceeds max_frame_size "
                          f"{self.max_frame}")
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
            try:
                self.writer.write(_HEADER.pack(len(body) + 1, WIRE_VERSION) + body)
            except (RuntimeError, OSError) as exc:
                self._close(f"write failed: {exc}")
                raise _Lost(f"connection to {self.addr} lost ({exc})") from None
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(rid, None)

    async def _read_loop(self) -> None:
        reason = "closed by the node"
        try:
            while True:
                try:
                    header = await self.reader.readexactly(_HEADER.size)
                except asyncio.IncompleteReadError:
                    break
                size, version = _HEADER.unpack(header)
                if version != WIRE_VERSION or not 1 <= size <= self.max_frame:
                    reason = f"bad reply frame (version {version}, {size} bytes)"
                    break
                body = await self.reader.readexactly(size - 1)
                obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
                if type(obj) is list and obj and obj[0] == AUTH_MAGIC:
                    self.failure = KvError(
                        f"node {self.addr} requires the cluster's shared secret: pass "
                        "Client(secret=...) (the nodes' --secret-file)")
                    reason = "the node asked for the shared-secret handshake"
                    break
                if type(obj) is not list or not 2 <= len(obj) <= 3:
                    reason = "reply is not [request_id, value]"
                    break
                fut = self.pending.pop(obj[0], None)
                if fut is None or fut.done():
                    continue
                if len(obj) == 3:
                    fut.set_exception(KvError(f"node {self.addr} failed to handle the "
                                              f"request: {obj[2]}"))
                else:
                    fut.set_result(obj[1])
        except asyncio.CancelledError:
            reason = "client closed"
            raise
        except (OSError, asyncio.IncompleteReadError) as exc:
            reason = f"connection error: {exc or type(exc).__name__}"
        except Exception as exc:     # undecodable reply
            reason = f"bad reply: {exc}"
        finally:
            self._close(reason)

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(self.failure or
                                  _Lost(f"connection to {self.addr} lost ({reason})"))
        self.pending.clear()

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self._close("client closed")


class Client:
    """An async client of a `raftcore kv` cluster.

        client = Client("127.0.0.1:7001")           # any node; or a list of addresses
        await client.set("x", 1)                    # -> previous value
        await client.cas("x", 1, 2)                 # -> (swapped, current value)
        await client.get("x")                       # -> 2, linearizable
        await client.delete("x")                    # -> removed value
        await client.close()

    It learns the cluster's addresses from the first node it reaches, sends
    requests to the leader (following "not leader" answers), and retries on
    connection errors, timeouts and elections until `timeout` seconds have
    passed for the call, then raises raftcore.errors.Timeout. Writes carry
    this client's id and a sequence number: a write retried after a lost
    reply is applied once and answered with its original result. A write
    that raised Timeout may or may not have been applied; it is never
    applied after that call has returned.

    timeout: seconds one call may take, retries included.
    attempt_timeout: seconds one attempt waits for its reply before retrying.
    secret: the cluster's shared secret (bytes; a str is UTF-8 encoded), for
        nodes started with --secret-file: each connection proves it holds it
        (and checks that the node does) before any request.
    ssl: an ssl.SSLContext (client side) for nodes serving TLS.
    """

    def __init__(self, address: str | Iterable[str], *, timeout: float = 30.0,
                 attempt_timeout: float = 5.0, secret: Optional[bytes | str] = None,
                 ssl: Any = None, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        addrs = [address] if isinstance(address, str) else list(address)
        if not addrs:
            raise ConfigError("Client needs at least one node address")
        for a in addrs:
            parse_address(a)           # ValueError if malformed
        for name, v in (("timeout", timeout), ("attempt_timeout", attempt_timeout)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.client_id = uuid.uuid4().hex
        self._secret = check_secret(secret)
        self._ssl = ssl
        self._max_frame = max_frame_size
        self._addrs: list[str] = list(dict.fromkeys(addrs))   # known nodes, in order
        self._target = self._addrs[0]                         # where requests go first
        self._conns: dict[str, _Connection] = {}
        self._connecting: dict[str, asyncio.Task] = {}
        self._next_seq = 1
        self._in_flight: set[int] = set()
        self._learned = False          # members learned from a node's status
        #: Attempts that failed (connection lost or refused, no reply in
        #: attempt_timeout, no leader, unavailable) and were retried.
        self.retries = 0
        self._closed = False

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------- API

    async def set(self, key: Any, value: Any) -> Any:
        """Sets key to value; returns the previous value (None if absent)."""
        return await self._write(["set", key, value])

    async def delete(self, key: Any) -> Any:
        """Deletes key; returns the removed value (None if absent)."""
        return await self._write(["delete", key])

    async def cas(self, key: Any, expected: Any, new: Any) -> tuple[bool, Any]:
        """Sets key to `new` if its value equals `expected` (None: absent).
        Returns (swapped, the value after the call)."""
        ok, current = await self._write(["cas", key, expected, new])
        return ok, current

    async def get(self, key: Any, default: Any = None, *, stale: bool = False,
                  lease: bool = False, node: Optional[str] = None) -> Any:
        """The value of key, or `default` if absent.

        Linearizable by default (the leader confirms its leadership with a
        quorum first); `lease=True` relies on the leader lease instead.
        `stale=True` reads the local state of the node asked (`node`, or the
        one this client talks to), which may lag behind."""
        mode = STALE if stale else LEASE if lease else READ_INDEX
        reply = await self._request([KV_GET, key, mode], node=node)
        return reply[1] if reply[2] else default

    async def status(self, node: Optional[str] = None) -> dict:
        """The state of a node (`node`, or the one this client talks to):
        id, state, term, leader, leader_addr, last_log_index, committed,
        applied, snapshot, purged, members (a list of [id, address]), keys,
        sessions, applied_commands (writes applied to the map, each once),
        deduplicated (retried writes answered without applying them again)."""
        return (await self._request([KV_STATUS], node=node))[1]

    @property
    def addresses(self) -> list[str]:
        """The node addresses this client knows."""
        return list(self._addrs)

    async def close(self) -> None:
        self._closed = True
        for t in list(self._connecting.values()):
            t.cancel()
        for c in list(self._conns.values()):
            await c.close()
        self._conns.clear()

    # ------------------------------------------------------------ writes

    async def _write(self, cmd: list) -> Any:
        why = _check_command(cmd)
        if why is not None:
            raise KvError(why)
        seq = self._next_seq
        self._next_seq += 1
        self._in_flight.add(seq)
        try:
            # acked_below is computed per attempt: it only grows.
            reply = await self._request(
                lambda: write_request(self.client_id, seq, cmd, self._acked_below()))
        finally:
            self._in_flight.discard(seq)
        return reply[1]

    def _acked_below(self) -> int:
        return min(self._in_flight) if self._in_flight else self._next_seq

    # ---------------------------------------------------------- requests

    async def _request(self, msg: Any, node: Optional[str] = None) -> list:
        """Sends msg (or msg() per attempt) until a final answer: to the
        leader as far as this client knows, or first to `node` (retried there
        until it answers; a "not leader" answer is followed). Returns the OK
        reply; raises KvError for an ERROR reply, Timeout past the deadline."""
        if node is not None:
            parse_address(node)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        delay = 0.02
        last_error = "no attempt made"
        pinned = node            # stays set while the request must go to `node`
        while True:
            if self._closed:
                raise KvError("the client is closed")
            target = pinned or self._target
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Timeout(f"kv request not answered within {self.timeout}s; last error: "
                              f"{last_error}")
            wait = min(self.attempt_timeout, remaining)
            try:
                conn = await self._connection(target, wait)
                reply = await conn.call(msg() if callable(msg) else msg, wait)
            except (OSError, _Lost, asyncio.TimeoutError) as exc:
                last_error = f"{target}: {exc or type(exc).__name__}"
                if pinned is None:
                    self._next_target(target)
            else:
                if type(reply) is not list or not reply:
                    raise KvError(f"node {target} sent a malformed reply {reply!r:.100}")
                status = reply[0]
                if status == OK:
                    return reply
                if status == ERROR:
                    raise KvError(f"node {target} refused the request: {reply[1]}")
                if status == REDIRECT:
                    addr = reply[2]
                    if addr:
                        self._learn(addr)
                        pinned = None
                        if addr != target:
                            self._target = addr
                            continue          # straight to the leader
                    last_error = f"{target}: not the leader" + (
                        f" (leader {reply[1]} at {addr})" if addr else ", no leader known")
                    if not addr and pinned is None:
                        self._next_target(target)
                elif status == UNAVAILABLE:
                    last_error = f"{target}: unavailable: {reply[1]}"
                    if pinned is None:
                        self._next_target(target)
                else:
                    raise KvError(f"node {target} sent an unexpected reply {reply!r:.100}")
            # Back off before the next attempt (not a wait for a condition:
            # there is nothing to wait on in a cluster electing a leader).
            self.retries += 1
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 0.5)

    def _learn(self, addr: str) -> None:
        if addr not in self._addrs:
            try:
                parse_address(addr)
            except ValueError:
                return
            self._addrs.append(addr)

    def _next_target(self, failed: str) -> None:
        """After `failed` did not serve a request: try the next known node."""
        if self._target == failed and len(self._addrs) > 1:
            i = self._addrs.index(failed) if failed in self._addrs else -1
            self._target = self._addrs[(i + 1) % len(self._addrs)]

    async def _connection(self, addr: str, timeout: float) -> _Connection:
        conn = self._conns.get(addr)
        if conn is not None and not conn.closed:
            return conn
        task = self._connecting.get(addr)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open(addr, timeout))
            self._connecting[addr] = task
            task.add_done_callback(lambda t, a=addr: (
                self._connecting.pop(a, None), t.cancelled() or t.exception()))
        return await asyncio.shield(task)

    async def _open(self, addr: str, timeout: float) -> _Connection:
        host, port = parse_address(addr)
        kw = {"ssl": self._ssl} if self._ssl is not None else {}
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=1024 * 1024, **kw), timeout)
        if self._secret is not None:
            try:
                await asyncio.wait_for(client_handshake(reader, writer, self._secret), timeout)
            except BaseException as exc:
                writer.transport.abort()
                if isinstance(exc, AuthError):
                    raise KvError(f"node {addr}: authentication failed: {exc}") from None
                if isinstance(exc, asyncio.TimeoutError):
                    raise _Lost(f"no shared-secret handshake within {timeout:.3g}s (a node "
                                "started without --secret-file never sends one)") from None
                raise
        conn = _Connection(addr, reader, writer, self._max_frame)
        if self._closed:
            await conn.close()
            raise KvError("the client is closed")
        old = self._conns.get(addr)
        self._conns[addr] = conn
        if old is not None:
            await old.close()
        if not self._learned:
            # Learn the cluster's addresses, so that the client can go on if
            # the node it was given goes down.
            try:
                st = (await conn.call([KV_STATUS], timeout))[1]
                for _, a in st.get("members", []):
                    if a:
                        self._learn(a)
                        # A node that has not received the membership yet
                        # knows none: ask again on the next connection.
                        self._learned = True
                if st.get("leader_addr"):
                    self._learn(st["leader_addr"])
            except (KvError, _Lost, asyncio.TimeoutError, AttributeError, TypeError):
                if conn.failure is not None:
                    raise conn.failure from None
        return conn


# ---------------------------------------------------------------- the program

def _parse_peers(text: str) -> dict[int, str]:
    """--peers ID=HOST:PORT,...: id -> address; ArgumentTypeError naming the
    bad part (an item, an id, a host, a port, a repeated id or address)."""
    peers: dict[int, str] = {}
    seen: dict[tuple[str, int], int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        nid, addr, (host, port) = _parse_peer(item)
        if nid in peers:
            raise argparse.ArgumentTypeError(f"node {nid} is listed twice")
        other = seen.setdefault((host.lower(), port), nid)
        if other != nid:
            raise argparse.ArgumentTypeError(
                f"nodes {other} and {nid} have the same address {addr}; each node "
                "needs its own HOST:PORT")
        peers[nid] = addr
    if not peers:
        raise argparse.ArgumentTypeError("no ID=HOST:PORT given")
    return peers


def _parse_peer(item: str) -> tuple[int, str, tuple[str, int]]:
    """(id, address, (host, port)) of one ID=HOST:PORT of --peers."""
    node_id, sep, addr = item.partition("=")
    node_id, addr = node_id.strip(), addr.strip()
    if not sep:
        raise argparse.ArgumentTypeError(
            f"{item!r} is not ID=HOST:PORT (no '='; e.g. 1=127.0.0.1:7001)")
    if not (node_id.isascii() and node_id.isdigit()):
        raise argparse.ArgumentTypeError(
            f"{item!r} is not ID=HOST:PORT: the id {node_id!r} is not an integer >= 0")
    nid = int(node_id)
    try:
        host_port = parse_address(addr)
    except ValueError as exc:
        hint = ("; separate the nodes with ',' (1=HOST:PORT,2=HOST:PORT)"
                if any(c in addr for c in ";= ") else "")
        raise argparse.ArgumentTypeError(f"node {nid}: {exc}{hint}") from None
    return nid, addr, host_port


def _address(text: str) -> str:
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _timeouts(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected MIN,MAX in seconds (e.g. 0.15,0.3), got {text!r}") from None
    return lo, hi


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raftcore kv",
        description="Run one node of a replicated key-value store: a durable log in "
                    "--dir, Raft over TCP, and a client protocol on the same port "
                    "(use raftcore.kv.Client).",
        epilog="Example: raftcore kv --id 1 --dir ./n1 --peers "
               "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --init")
    p.add_argument("--id", type=_non_negative_int, required=True, help="this node's id")
    p.add_argument("--dir", required=True, help="data directory (created if missing)")
    p.add_argument("--peers", type=_parse_peers, default=None, metavar="ID=HOST:PORT,...",
                   help="the cluster: ID=HOST:PORT,... (this node included); needed with "
                        "--init or without --listen")
    p.add_argument("--listen", type=_address, default=None, metavar="HOST:PORT",
                   help="HOST:PORT to listen on (default: this node's address in --peers)")
    p.add_argument("--init", action="store_true",
                   help="form the cluster from --peers (on one node; does nothing on a node "
                        "that is already initialized)")
    p.add_argument("--secret-file", default=None, metavar="FILE",
                   help="the cluster's shared secret (the file's contents, surrounding "
                        "whitespace removed): peers and clients must prove they hold it")
    p.add_argument("--heartbeat", type=float, default=None, metavar="SECONDS",
                   help="leader heartbeat interval (default 0.05)")
    p.add_argument("--election-timeout", type=_timeouts, default=None, metavar="MIN,MAX",
                   help="election timeout range in seconds (default 0.15,0.3)")
    p.add_argument("--max-clock-drift", type=float, default=None, metavar="RATIO",
                   help="bound on clock rate differences between nodes that lease reads "
                        "rest on: no clock runs more than 1+RATIO times as fast as another "
                        "(default 0.5)")
    p.add_argument("--snapshot-every", type=_non_negative_int, default=5000, metavar="N",
                   help="build a snapshot every N applied entries; 0: never (default 5000)")
    p.add_argument("--keep-logs", type=_non_negative_int, default=1000, metavar="N",
                   help="entries kept in the log below the newest snapshot (default 1000)")
    p.add_argument("--no-pre-vote", action="store_true",
                   help="campaign without asking first whether a quorum would vote (by "
                        "default a node that rejoins cannot raise the term and depose a "
                        "leader that a majority still follows)")
    p.add_argument("--no-check-quorum", action="store_true",
                   help="a leader that hears from no quorum for an election timeout keeps "
                        "leading (by default it steps down)")
    p.add_argument("--max-command-bytes", type=_non_negative_int, default=None, metavar="N",
                   help="largest write accepted, in encoded bytes (default 1572864, 1.5 MiB)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parses and checks the command line; argparse errors (exit 2) for bad input."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.peers is not None and args.id not in args.peers:
        p.error(f"--id {args.id} is not one of the nodes in --peers "
                f"({', '.join(str(i) for i in sorted(args.peers))})")
    if args.init and args.peers is None:
        p.error("--init needs --peers: the members of the new cluster")
    if args.listen is None:
        if args.peers is None:
            p.error("give --listen HOST:PORT, or --peers with this node's address")
        args.listen = args.peers[args.id]
    args.secret = None
    if args.secret_file is not None:
        try:
            with open(args.secret_file, "rb") as f:
                args.secret = f.read().strip()
        except OSError as exc:
            p.error(f"--secret-file: cannot read {args.secret_file}: {exc.strerror or exc}")
        if not args.secret:
            p.error(f"--secret-file: {args.secret_file} is empty")
    kw: dict[str, Any] = {
        "snapshot_policy": (SnapshotPolicy.logs_since_last(args.snapshot_every)
                            if args.snapshot_every else SnapshotPolicy.never()),
        "max_in_snapshot_log_to_keep": args.keep_logs,
        "enable_pre_vote": not args.no_pre_vote,
        "check_quorum": not args.no_check_quorum,
    }
    if args.heartbeat is not None:
        kw["heartbeat_interval"] = args.heartbeat
    if args.election_timeout is not None:
        kw["election_timeout_min"], kw["election_timeout_max"] = args.election_timeout
    if args.max_clock_drift is not None:
        kw["max_clock_drift"] = args.max_clock_drift
    if args.max_command_bytes is not None:
        kw["max_command_bytes"] = args.max_command_bytes
    try:
        args.config = Config(**kw)
    except ConfigError as exc:
        p.error(str(exc))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`raftcore kv ...`: runs one node until Ctrl-C or SIGTERM. Returns the
    exit status: 0 after a clean shutdown, 1 if the node could not start
    or stopped on an error, 2 for bad arguments."""
    import uvloop

    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:          # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return uvloop.run(run_node(args))
    except (StorageError, OSError) as exc:
        log.error("node %s cannot run: %s", args.id, exc)
        return 1


async def run_node(args: argparse.Namespace) -> int:
    """Runs one node as configured by parse_args until SIGINT or SIGTERM;
    returns the exit status."""
    from raftcore.network.tcp import RaftServer, TcpNetwork
    from raftcore.raft import Raft
    from raftcore.storage.file import FileLogStore

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, port = parse_address(args.listen)
    config: Config = args.config
    os.makedirs(args.dir, exist_ok=True)
    store = await FileLogStore.open(os.path.join(args.dir, "log"))
    raft = server = None
    status = 0
    try:
        sm = await KvStateMachine.open(os.path.join(args.dir, "snapshots"))
        net = TcpNetwork(rpc_timeout=config.rpc_timeout, secret=args.secret)
        raft = await Raft.create(args.id, config, net, store, sm)
        service = KvService(raft, sm)
        server = await RaftServer.start(raft, host, port, services=service.handlers(),
                                        secret=args.secret)
        log.info("node %s serving on %s (data in %s)", args.id, args.listen, args.dir)
        _check_peers_against_disk(args, raft.metrics.membership)
        if args.init:
            members = {i: Node(a) for i, a in sorted(args.peers.items())}
            try:
                await raft.initialize(members)
                log.info("node %s initialized the cluster %s", args.id,
                         ", ".join(f"{i}={a}" for i, a in members.items()))
            except NotAllowed:
                log.warning("node %s is already initialized; --init ignored: it belongs to "
                            "cluster %s (%s)", args.id, raft.metrics.cluster_id,
                            _describe_membership(raft.metrics.membership))
        if await _until_stopped(stop, raft):
            log.error("node %s stopped on an error (see above); exiting", args.id)
            status = 1
        else:
            log.info("node %s shutting down", args.id)
    finally:
        # A second Ctrl-C while shutting down interrupts at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if raft is not None:
            await raft.shutdown()
        if server is not None:
            await server.close()
        await store.close()
    log.info("node %s stopped", args.id)
    return status


def _describe_membership(m: Any) -> str:
    if m is None:
        return "no membership in its log yet"
    voters = " + ".join("{" + ", ".join(map(str, sorted(c))) + "}" for c in m.configs)
    nodes = ", ".join(f"{i}={getattr(n, 'addr', '')}" for i, n in sorted(m.nodes.items()))
    return f"voters {voters}, nodes {nodes}"


def _check_peers_against_disk(args: argparse.Namespace, membership: Any) -> None:
    """The membership on disk wins over --peers (so that a restart after a
    membership change works); a disagreement is worth a warning."""
    if args.peers is None or membership is None:
        return
    on_disk = {i: getattr(n, "addr", "") for i, n in membership.nodes.items()}
    if on_disk != args.peers or set(membership.voter_ids) != set(args.peers):
        log.warning("node %s: --peers %s disagrees with the membership in its log (%s); "
                    "the membership in the log is used", args.id,
                    ",".join(f"{i}={a}" for i, a in sorted(args.peers.items())),
                    _describe_membership(membership))


async def _until_stopped(stop: asyncio.Event, raft: Any) -> bool:
    """Returns False on a stop signal, True once the node stopped on its
    own (a storage failure stops it: better down than serving a bad log)."""
    from raftcore.model import ServerState

    stopped = asyncio.ensure_future(stop.wait())
    # Resolves when the node reaches SHUTDOWN, or fails (Fatal) when it dies.
    died = asyncio.ensure_future(
        raft.wait().metrics(lambda m: m.state == ServerState.SHUTDOWN, "shutdown"))
    try:
        await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
        return not stopped.done()
    finally:
        for f in (stopped, died):
            f.cancel()
        await asyncio.gather(stopped, died, return_exceptions=True)
