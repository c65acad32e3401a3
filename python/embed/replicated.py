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
    ["rb", client_id, acked_below, stamp, seq, object, method, args, seq, ...]
        the commands one caller made in one event-loop turn (see
        raftcore.embed.batches), applied in order as if each had an "rc"
        entry of its own, except that they share the entry's index. A call
        of the same object and method as the one before it has None for
        both (a busy object's calls: no names to encode, store and decode
        each time).
    ["rt", stamp]
        a tick: the leader's clock, logged periodically so that time moves
        forward in the state (leases expire) without other writes.

The answer of a command is [OK, result], [FAILED, "Type: message"] (the
method raised; every node raised the same, the state is whatever the method
left) or [STALE, reason] (a seq below what its caller acknowledged). The
answer of an "rb" entry is the list of its commands' answers, in order.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from typing import Any, Callable, Optional, Sequence, TypeVar, overload

import msgpack

from raftcore.errors import ConfigError, NotAllowed, StorageError
# The entry tags, answer codes and the compiled apply of entries (the
# layer's hot path on every node).
from raftcore.embed.command_apply import (BATCH, CLIENT_ID_TYPES, CMD, FAILED, OK,
                                          SCALAR_TYPES, STALE, TICK, ApplyClock, CommandApplier,
                                          Session)
from raftcore.kv.state import decode_snapshot_file, encode_snapshot_file
from raftcore.messages import SnapshotMeta
from raftcore.storage.base import Snapshot, StateMachine
from raftcore.storage.wal.oslayer import replace_file
from raftcore.types import Entry, LogId

__all__ = ["command", "query", "applying", "ApplyClock", "ReplicatedStateMachine",
           "kind_of", "wants_own_entry", "Session", "CMD", "BATCH", "TICK", "OK", "FAILED",
           "STALE", "SCALAR_TYPES", "CLIENT_ID_TYPES"]

log = logging.getLogger("raftcore.embed")

#: Version of the snapshot data (what travels to followers and is saved).
SNAPSHOT_FORMAT = 1
_SNAP_FILE = "snapshot"
_snapshot_ids = itertools.count(1)

F = TypeVar("F", bound=Callable[..., Any])


@overload
def command(fn: F) -> F: ...


@overload
def command(*, own_entry: bool = False) -> Callable[[F], F]: ...


def command(fn: Optional[F] = None, *, own_entry: bool = False) -> Any:
    """Marks a method of a replicated class as a command: calling it through
    a node (`await node.state.method(...)`, on any node) appends it to the
    log, and every node runs it in log order. It must be deterministic (a
    function of the state, its arguments and `applying()` alone) and quick;
    its arguments and result are msgpack values.

    Commands called on one node in the same event-loop turn share a log
    entry, so `applying().index` is theirs in common. A command that must
    have an index of its own (a fencing token, as ReplLock.acquire's) is
    marked `@command(own_entry=True)`: it always goes in an entry alone."""
    def mark(f: F) -> F:
        f.__raftcore_kind__ = "command"         # type: ignore[attr-defined]
        f.__raftcore_own_entry__ = own_entry    # type: ignore[attr-defined]
        return f
    return mark(fn) if fn is not None else mark


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


def wants_own_entry(obj: Any, method: str) -> bool:
    """Whether command `method` of `obj` is marked @command(own_entry=True)."""
    fn = getattr(type(obj), method, None)
    return bool(getattr(fn, "__raftcore_own_entry__", False))


# Commands and queries run synchronously (no await inside), so the clock of
# the state machine running one cannot be swapped for another's meanwhile,
# even with several nodes in one process.
_current = ApplyClock()


def applying() -> ApplyClock:
    """The clock of the command (or query) running now: its entry's log
    index and the leader's time stamped in it. Read it only from inside a
    @command or @query method."""
    return _current


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
        self.clock = ApplyClock()
        self._applier = CommandApplier(self.clock, max_sessions, self._command)
        self.last_applied: Optional[LogId] = None
        self.last_membership: Any = None
        self._snapshot: Optional[Snapshot] = None
        self._durable: Optional[SnapshotMeta] = None
        self._file_lock = threading.Lock()
        if self.path is not None:
            self._load_file()

    # ------------------------------------------------------------- apply

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        global _current
        _current = self.clock
        return self._applier.apply(entries if type(entries) is list else list(entries), self)

    @property
    def max_sessions(self) -> int:
        """Callers whose answers are kept (the applier's bound)."""
        return self._applier.max_sessions

    @property
    def sessions(self) -> dict[Any, Session]:
        """client id -> Session (its floor and the answers kept for it),
        least recently active first."""
        return self._applier.sessions

    def _command(self, name: Any, method: Any) -> Optional[Callable[..., Any]]:
        """The bound @command `name.method`, or None (the applier keeps what
        it found: the objects stay the same, a snapshot restores their
        fields in place)."""
        obj = self.objects.get(name) if type(name) is str else None
        if obj is None or type(method) is not str or kind_of(obj, method) != "command":
            return None
        return getattr(obj, method)

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
            obj["sessions"] = {cid: Session(floor, dict(answers))
                               for cid, floor, answers in obj["sessions"]}
            return obj
        except Exception as exc:
            raise StorageError(f"cannot read snapshot {meta.snapshot_id} of the replicated "
                               f"objects: {exc}") from exc

    def _load(self, meta: SnapshotMeta, data: bytes) -> None:
        obj = self._parse(meta, data)
        for name, o in self.objects.items():
            restore_state(o, obj["objects"][name])
        self._applier.sessions = obj["sessions"]
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
