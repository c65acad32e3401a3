"""Replicated state as a plain class: the @command and @query markers and
ReplicatedStateMachine, the StateMachine that applies a class's commands in
log order on every node, deduplicates retried calls by session, and
snapshots the class's fields durably.

Log entries written by the embedding layer (msgpack lists):

    ["rc", client_id, seq, acked_below, object, method, args, stamp]
        a command: `object.method(*args)`, at most once per (client_id,
        seq); `acked_below`: the caller has every answer below that seq, so
        the answers kept for it can go. `stamp`: the leader's wall clock
        (time.time()) when it admitted the command.
    ["rt", stamp]
        a tick: the leader's clock, logged periodically so that time moves
        forward in the state (leases expire) without other writes.

The answer of a command entry is [OK, result], [FAILED, "Type: message"]
(the method raised; every node raised the same, the state is whatever the
method left) or [STALE, reason] (a seq below what its caller acknowledged).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from typing import Any, Callable, Optional, Sequence, TypeVar

import msgpack

from raftcore.errors import ConfigError, NotAllowed, StorageError
from raftcore.kv.state import decode_snapshot_file, encode_snapshot_file
from raftcore.messages import SnapshotMeta
from raftcore.storage.base import Snapshot, StateMachine
from raftcore.storage.wal.oslayer import replace_file
from raftcore.types import ENTRY_MEMBERSHIP, ENTRY_NORMAL, Entry, LogId

__all__ = ["command", "query", "applying", "ApplyClock", "ReplicatedStateMachine",
           "kind_of", "CMD", "TICK", "OK", "FAILED", "STALE"]

log = logging.getLogger("raftcore.embed")

#: Entry tags.
CMD = "rc"
TICK = "rt"
#: Answer codes of a command entry.
OK = 0
FAILED = 1
STALE = 2

#: Version of the snapshot data (what travels to followers and is saved).
SNAPSHOT_FORMAT = 1
_SNAP_FILE = "snapshot"
_snapshot_ids = itertools.count(1)
#: What a session's client id may be (hashable as msgpack decodes it).
CLIENT_ID_TYPES = (str, bytes, int)
#: Types whose values are msgpack values as they are (no trial encoding needed).
SCALAR_TYPES = (int, str, type(None), bool, float, bytes)

F = TypeVar("F", bound=Callable[..., Any])


def command(fn: F) -> F:
    """Marks a method of a replicated class as a command: calling it through
    a node (`await node.state.method(...)`, on any node) appends it to the
    log, and every node runs it in log order. It must be deterministic (a
    function of the state, its arguments and `applying()` alone) and quick;
    its arguments and result are msgpack values."""
    fn.__raftcore_kind__ = "command"     # type: ignore[attr-defined]
    return fn


def query(fn: F) -> F:
    """Marks a method of a replicated class as a query: called through a
    node, it runs on that node's copy after a read barrier (linearizable by
    default; see EmbeddedNode.query) and must not change the state."""
    fn.__raftcore_kind__ = "query"       # type: ignore[attr-defined]
    return fn


def kind_of(obj: Any, method: str) -> Optional[str]:
    """"command", "query" or None for `method` of `obj`'s class."""
    fn = getattr(type(obj), method, None)
    return getattr(fn, "__raftcore_kind__", None)


class ApplyClock:
    """The log position and the leader-stamped time of the entry being
    applied (or, outside apply, of the last one applied)."""

    __slots__ = ("index", "time")

    def __init__(self) -> None:
        #: Log index of the entry (a lock's fencing token is its acquire's).
        self.index = 0
        #: Seconds since the epoch, by the leaders' clocks, never going back.
        self.time = 0.0


# Commands and queries run synchronously (no await inside), so the clock of
# the state machine running one cannot be swapped for another's meanwhile,
# even with several nodes in one process.
_current = ApplyClock()


def applying() -> ApplyClock:
    """The clock of the command (or query) running now: its entry's log
    index and the leader's time stamped in it. Read it only from inside a
    @command or @query method."""
    return _current


class _Session:
    """A caller's answers at or above `floor` (it has those below)."""

    __slots__ = ("floor", "answers")

    def __init__(self, floor: int = 0, answers: Optional[dict] = None) -> None:
        self.floor = floor
        self.answers: dict[int, list] = answers if answers is not None else {}


def state_of(obj: Any) -> Any:
    """What a snapshot keeps of `obj`: its own `raft_snapshot()` if it has
    one, else its fields named in `__raft_fields__`, else its public
    instance attributes."""
    hook = getattr(obj, "raft_snapshot", None)
    if hook is not None:
        return hook()
    names = getattr(obj, "__raft_fields__", None)
    if names is None:
        names = [n for n in vars(obj) if not n.startswith("_")]
    return {n: getattr(obj, n) for n in names}


def restore_state(obj: Any, state: Any) -> None:
    """Puts `state` (from state_of) back into `obj`."""
    hook = getattr(obj, "raft_restore", None)
    if hook is not None:
        hook(state)
        return
    for name, value in state.items():
        setattr(obj, name, value)


class ReplicatedStateMachine(StateMachine):
    """Applies the commands of named replicated objects (see the module
    docstring for the entries).

    objects: name -> the application's object (its class marks methods
        with @command / @query).
    path: a directory for the snapshot file, or None to keep snapshots in
        memory (the node then never purges a persistent log). A snapshot is
        fsynced and renamed into place before it is reported durable; the
        newest one is loaded when the state machine is created.
    max_sessions: callers whose answers are kept (least recently active
        dropped first).
    """

    def __init__(self, objects: dict[str, Any], path: Optional[str | os.PathLike] = None, *,
                 max_sessions: int = 10_000) -> None:
        if not objects:
            raise ConfigError("ReplicatedStateMachine needs at least one object")
        for name in objects:
            if type(name) is not str:
                raise ConfigError(f"replicated object names are str, got {name!r}")
        self.objects = dict(objects)
        self.path = os.fspath(path) if path is not None else None
        self.max_sessions = max_sessions
        self.clock = ApplyClock()
        self.sessions: dict[Any, _Session] = {}
        self.last_applied: Optional[LogId] = None
        self.last_membership: Any = None
        self._snapshot: Optional[Snapshot] = None
        self._durable: Optional[SnapshotMeta] = None
        self._file_lock = threading.Lock()
        self._commands: dict[tuple, Callable[..., Any]] = {}
        if self.path is not None:
            self._load_file()

    # ------------------------------------------------------------- apply

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        global _current
        _current = clock = self.clock
        out: list[Any] = []
        for e in entries:
            kind = e.kind
            if kind != ENTRY_NORMAL:
                if kind == ENTRY_MEMBERSHIP:
                    self.last_membership = e.payload
                out.append(None)
                continue
            # The index is a lock's fencing token (applying().index).
            clock.index = e.index
            out.append(self._apply_one(e.payload))
        if entries:
            self.last_applied = entries[-1].log_id
        return out

    def _apply_one(self, p: Any) -> Any:
        # Everything here is a function of the log alone: every node answers
        # the same way, malformed entries included (they are committed).
        if type(p) is not list or not p:
            return [FAILED, f"not an entry of the embedding layer: {p!r:.80}"]
        tag = p[0]
        if tag == TICK and len(p) == 2:
            self._advance(p[1])
            return None
        if tag != CMD or len(p) != 8:
            return [FAILED, f"not an entry of the embedding layer: {p!r:.80}"]
        _, cid, seq, acked, name, method, args, stamp = p
        self._advance(stamp)
        if type(cid) not in CLIENT_ID_TYPES:
            return [FAILED, f"a client id is a str, bytes or int, got {cid!r:.60}"]
        s = self.sessions.pop(cid, None)
        if s is None:
            s = _Session()
            if len(self.sessions) >= self.max_sessions:
                del self.sessions[next(iter(self.sessions))]
        self.sessions[cid] = s          # most recently active last
        answer: Optional[list]
        if type(seq) is not int or seq < s.floor:
            answer = [STALE, f"call {seq!r:.20} of {cid!r:.60} is older than what its caller "
                             f"acknowledged ({s.floor}); not applied again"]
        else:
            answer = s.answers.get(seq)
            if answer is None:
                answer = s.answers[seq] = self._run(name, method, args)
        if type(acked) is int and acked > s.floor:
            answers = s.answers
            if acked - s.floor <= len(answers):
                # The common case: the floor moves by a few calls.
                for k in range(s.floor, acked):
                    answers.pop(k, None)
            else:
                s.answers = {k: v for k, v in answers.items() if k >= acked}
            s.floor = acked
        return answer

    def _advance(self, stamp: Any) -> None:
        # Leaders' clocks may disagree: the state's time never goes back.
        if type(stamp) in (int, float) and stamp > self.clock.time:
            self.clock.time = float(stamp)

    def _command(self, name: Any, method: Any) -> Optional[Callable[..., Any]]:
        """The bound @command `name.method`, or None (looked up once: the
        objects stay the same, a snapshot restores their fields in place)."""
        key = (name, method)
        fn = self._commands.get(key)
        if fn is None:
            obj = self.objects.get(name) if type(name) is str else None
            if obj is None or type(method) is not str or kind_of(obj, method) != "command":
                return None
            fn = self._commands[key] = getattr(obj, method)
        return fn

    def _run(self, name: Any, method: Any, args: Any) -> list:
        try:
            fn = self._command(name, method)
        except TypeError:       # an unhashable name or method
            fn = None
        if fn is None or type(args) is not list:
            return [FAILED, f"no command {name!r:.40}.{method!r:.40} taking a list of "
                            "arguments on this node"]
        try:
            result = fn(*args)
            if type(result) not in SCALAR_TYPES:
                msgpack.packb(result, use_bin_type=True)
        except Exception as exc:
            return [FAILED, f"{type(exc).__name__}: {exc}"]
        return [OK, result]

    def run_query(self, name: str, method: str, args: Sequence[Any]) -> Any:
        """Runs a @query method on this node's copy now (no read barrier)."""
        global _current
        _current = self.clock
        return getattr(self.objects[name], method)(*args)

    async def applied_state(self) -> tuple[Optional[LogId], Any]:
        return self.last_applied, self.last_membership

    # --------------------------------------------------------- snapshots

    def _capture(self) -> bytes:
        return msgpack.packb({
            "format": SNAPSHOT_FORMAT,
            "objects": {n: state_of(o) for n, o in self.objects.items()},
            "sessions": [[cid, s.floor, list(s.answers.items())]
                         for cid, s in self.sessions.items()],
            "time": self.clock.time,
        }, use_bin_type=True)

    async def build_snapshot(self, executor: Callable) -> Snapshot:
        last = self.last_applied
        if last is None:
            raise NotAllowed("nothing is applied yet; there is nothing to snapshot")
        # Encoded now, on the event loop: the objects change in place, so
        # encoding them in another thread would race the next apply.
        data = self._capture()
        meta = SnapshotMeta(last.term, last.index, self.last_membership,
                            f"{last.term}-{last.index}-{next(_snapshot_ids)}")
        if self.path is not None:
            await executor(self._save_file, meta, data)
        return self._keep(Snapshot(meta, data))

    def _keep(self, snap: Snapshot) -> Snapshot:
        """Makes `snap` the current snapshot unless a newer one is (an
        install may have finished while it was being saved)."""
        cur = self._snapshot
        if cur is None or cur.meta.last_log_index <= snap.meta.last_log_index:
            self._snapshot = snap
        return snap

    def get_current_snapshot(self) -> Optional[Snapshot]:
        return self._snapshot

    def durable_snapshot(self) -> Optional[SnapshotMeta]:
        return self._durable

    def check_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._parse(meta, data)

    async def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._load(meta, data)
        if self.path is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._save_file, meta, data)

    def _parse(self, meta: SnapshotMeta, data: bytes) -> dict:
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
            found = obj.get("format") if isinstance(obj, dict) else None
            if found != SNAPSHOT_FORMAT:
                raise ValueError(f"format {found!r:.40}, expected {SNAPSHOT_FORMAT}")
            missing = set(self.objects) - set(obj["objects"])
            if missing:
                raise ValueError(f"it holds no state for {sorted(missing)}")
            obj["sessions"] = {cid: _Session(floor, dict(answers))
                               for cid, floor, answers in obj["sessions"]}
            return obj
        except Exception as exc:
            raise StorageError(f"cannot read snapshot {meta.snapshot_id} of the replicated "
                               f"objects: {exc}") from exc

    def _load(self, meta: SnapshotMeta, data: bytes) -> None:
        obj = self._parse(meta, data)
        for name, o in self.objects.items():
            restore_state(o, obj["objects"][name])
        self.sessions = obj["sessions"]
        self.clock.time = float(obj["time"])
        self.clock.index = meta.last_log_index
        self.last_applied = LogId(meta.last_log_term, meta.last_log_index)
        self.last_membership = meta.membership
        self._snapshot = Snapshot(meta, data)

    def _save_file(self, meta: SnapshotMeta, data: bytes) -> None:
        """Makes the snapshot durable (executor thread), never replacing a
        newer one."""
        with self._file_lock:
            if self._durable is not None and \
                    meta.last_log_index < self._durable.last_log_index:
                return
            final = os.path.join(self.path or "", _SNAP_FILE)
            try:
                replace_file(final, encode_snapshot_file(meta, data))
            except OSError as exc:
                raise StorageError(f"writing the snapshot {final} failed: {exc}") from exc
            self._durable = meta

    def _load_file(self) -> None:
        final = os.path.join(self.path or "", _SNAP_FILE)
        try:
            os.makedirs(self.path or "", exist_ok=True)
            with open(final, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot read the snapshot {final}: {exc}") from exc
        meta, data = decode_snapshot_file(blob, final, "the log may be purged up to it, so "
                                                     "the node refuses to start")
        self._load(meta, data)
        self._durable = meta
        log.info("loaded snapshot %s up to %s from %s", meta.snapshot_id, meta.last_log_id,
                 final)
