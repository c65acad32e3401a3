"""KvStateMachine: the key-value map with client sessions (exactly-once
writes) and durable snapshot files."""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import struct
import threading
import zlib
from typing import Any, Callable, Optional

import msgpack

from raftcore.codec import decode_snapshot_meta, encode_snapshot_meta, pack_pairs
from raftcore.errors import ConfigError, NotAllowed, StorageError
from raftcore.kv.protocol import SESSION_CMD, check_client_id, check_command
from raftcore.kv.redis.apply import REDIS_TAGS, apply_redis, check_known
from raftcore.kv.redis.keyspace import RedisState
from raftcore.messages import SnapshotMeta
from raftcore.storage.base import Snapshot
from raftcore.storage.mem import MemStateMachine
from raftcore.storage.wal.oslayer import replace_file
from raftcore.types import LogId

log = logging.getLogger("raftcore.kv")

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
        #: The Redis commands' expiry deadlines and modification indexes.
        self.redis = RedisState()
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

    def _empty_like(self) -> "KvStateMachine":
        # Without the path: restarted() models a restart in memory, it does
        # not reread the snapshot file.
        return KvStateMachine(max_sessions=self.max_sessions)

    # ------------------------------------------------------------- apply

    def _apply_normal(self, data: dict, p: Any) -> Any:
        # MemStateMachine.apply walks the entries; a client command here is
        # either a session command or a plain one.
        if isinstance(p, (list, tuple)) and p:
            if p[0] == SESSION_CMD:
                return self._apply_session(p)
            if p[0] in REDIS_TAGS:
                self.applied_commands += 1
                return apply_redis(self, p)
            check_known(p[0])
        self.applied_commands += 1
        return self._apply_command(data, p)

    def _apply_session(self, p: Any) -> list:
        # Everything here is a function of the log alone: every node answers
        # and deduplicates the same way.
        if len(p) != 5:
            return ["error", f"a session command is [session, client_id, seq, acked_below, "
                             f"cmd], got {len(p)} items"]
        _, cid, seq, acked, cmd = p
        why = check_client_id(cid)
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
                resp = self._apply_checked(cmd)
                s.responses[seq] = resp
        if acked > s.floor:
            s.floor = acked
            responses = s.responses
            for k in [k for k in responses if k < acked]:
                del responses[k]
        return resp

    def _apply_checked(self, cmd: Any) -> list:
        """A session's command: ["ok", result] once applied, ["error", why]
        if malformed."""
        if isinstance(cmd, (list, tuple)) and cmd:
            if cmd[0] in REDIS_TAGS:
                self.applied_commands += 1
                return ["ok", apply_redis(self, cmd)]
            check_known(cmd[0])
        why = check_command(cmd)
        if why is not None:
            return ["error", why]
        self.applied_commands += 1
        return ["ok", self._run_command(self.data, cmd)]

    # --------------------------------------------------------- snapshots

    def capture(self) -> tuple[SnapshotMeta, bytes]:
        """The meta and the encoded state of a snapshot of what is applied
        now, at one log index. NotAllowed before anything is applied."""
        if self.last_applied is None:
            raise NotAllowed("nothing is applied yet; there is nothing to snapshot")
        last = self.last_applied
        meta = SnapshotMeta(last.term, last.index, self.last_membership,
                            f"{last.term}-{last.index}-{next(_snapshot_ids)}")
        return meta, self._encoded_state()

    def _encoded_state(self) -> bytes:
        """The state, encoded now: msgpack's encoding of the map {format,
        items: list(data.items()), sessions, applied_commands, deduplicated,
        redis}, with the items written by codec.pack_pairs.

        On the event loop, in one go. Capturing the items as a list there
        and leaving msgpack to encode them on a thread cost more: the list
        of a 100,000-key map took 18 ms, and the thread's 26 ms of packing
        held the interpreter lock against the loop, which lagged 40-50 ms
        twice per snapshot under pipelined Redis SETs; writing the items
        here takes about 12 ms."""
        packer = msgpack.Packer(use_bin_type=True)
        pack = packer.pack
        rest = {
            "sessions": [[cid, s.floor, list(s.responses.items())]
                         for cid, s in self.sessions.items()],
            "applied_commands": self.applied_commands,
            "deduplicated": self.deduplicated,
            # Added with the Redis commands; a snapshot without them (made
            # before) loads as no deadlines and no modification indexes.
            "redis": self.redis.dump(),
        }
        parts = [packer.pack_map_header(2 + len(rest)), pack("format"),
                 pack(KV_SNAPSHOT_FORMAT), pack("items"), pack_pairs(self.data, pack)]
        for key, value in rest.items():
            parts += (pack(key), pack(value))
        return b"".join(parts)

    async def build_snapshot(self, executor: Callable) -> Snapshot:
        meta, data = self.capture()
        if self.path is not None:
            await executor(self._save_file, meta, data)
        snap = Snapshot(meta, data)
        if self._snapshot is None or \
                self._snapshot.meta.last_log_index <= meta.last_log_index:
            self._snapshot = snap
        return snap

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
        """(items, sessions, applied_commands, deduplicated, redis state) of
        the snapshot; StorageError if it cannot be read."""
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
            redis_state = RedisState.load(obj.get("redis"))
        except Exception as exc:
            raise StorageError(f"KvStateMachine cannot read snapshot {meta.snapshot_id}: "
                               f"{exc}") from exc
        return items, sessions, applied_commands, deduplicated, redis_state

    def _load(self, meta: SnapshotMeta, data: bytes) -> None:
        items, sessions, applied_commands, deduplicated, redis_state = self._parse(meta, data)
        self.redis = redis_state
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
        blob = encode_snapshot_file(meta, data)
        final = os.path.join(self.path, _SNAP_FILE)
        with self._file_lock:
            # A build that finishes after a newer snapshot was installed
            # must not replace it.
            if meta.last_log_index < self._file_index:
                return
            try:
                replace_file(final, blob)
            except OSError as exc:
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
        meta, data = decode_snapshot_file(blob, final, "the log may be purged up to it, so "
                                                     "the node refuses to start")
        self._load(meta, data)
        self._file_index = meta.last_log_index
        self._file_meta = meta
        log.info("loaded snapshot %s up to %s from %s", meta.snapshot_id, meta.last_log_id,
                 final)


def encode_snapshot_file(meta: SnapshotMeta, data: bytes) -> bytes:
    """The bytes of a snapshot file (the format of DIR/snapshots/snapshot and
    of `raftcore ctl snapshot save`): a header with the format version, the
    length and the crc32 of the body, then the body, msgpack [meta, data]."""
    body = msgpack.packb([encode_snapshot_meta(meta), data], use_bin_type=True)
    return _SNAP_HEAD.pack(_SNAP_MAGIC, KV_SNAPSHOT_FORMAT, zlib.crc32(body), len(body)) + body


def decode_snapshot_file(blob: bytes, name: str, if_damaged: str = "") -> tuple:
    """(meta, data) of a snapshot file's bytes; StorageError naming the file
    `name` if it is not one, is of another version, truncated or damaged
    (`if_damaged`: what that means for the caller, added to that error)."""
    head = _SNAP_HEAD.size
    if len(blob) < head:
        raise StorageError(f"{name}: truncated snapshot file ({len(blob)} bytes)")
    magic, version, crc, size = _SNAP_HEAD.unpack_from(blob)
    if magic != _SNAP_MAGIC:
        raise StorageError(f"{name} is not a raftcore kv snapshot file")
    if version != KV_SNAPSHOT_FORMAT:
        raise StorageError(f"{name}: snapshot format version {version}, this raftcore "
                           f"reads version {KV_SNAPSHOT_FORMAT}")
    body = blob[head:]
    if len(body) != size or zlib.crc32(body) != crc:
        what = (f"truncated ({len(body)} of {size} bytes after the header)"
                if len(body) < size else "damaged (length or checksum mismatch)")
        raise StorageError(f"{name}: the snapshot file is {what}"
                           + (f"; {if_damaged}" if if_damaged else ""))
    try:
        meta_obj, data = msgpack.unpackb(body, raw=False, strict_map_key=False)
        meta = decode_snapshot_meta(meta_obj)
    except Exception as exc:
        raise StorageError(f"{name}: undecodable snapshot: {exc}") from exc
    return meta, data
