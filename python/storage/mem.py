"""In-memory storage: MemLogStore and MemStateMachine (a KV map).

For tests and the benchmark: nothing survives the process, but a store
object survives a node's shutdown, so a restart within one process finds its
log and vote again.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Optional, Sequence

import msgpack

from raftcore.errors import NotAllowed, StorageError
from raftcore.messages import SnapshotMeta
from raftcore.storage.base import (FlushCallback, LogState, LogStore, Snapshot, StateMachine,
                                   StoreIdentity, new_identity_token)
from raftcore.types import ENTRY_MEMBERSHIP, ENTRY_NORMAL, Entry, LogId, Vote

#: Version of MemStateMachine's snapshot format.
SNAPSHOT_FORMAT = 1
_snapshot_ids = itertools.count(1)


class MemLogStore(LogStore):
    """A log and vote held in memory; flushed as soon as appended. Not
    persistent: a node purges it up to any snapshot (a simulated restart
    that keeps the object keeps MemStateMachine's snapshot too, see
    MemStateMachine.restarted).

    Each store is new storage: it gets its own incarnation (`incarnation`
    fixes it, for a simulation that must replay exactly)."""

    persistent = False

    def __init__(self, *, incarnation: Optional[str] = None) -> None:
        self._identity = StoreIdentity(None, incarnation or new_identity_token())
        self._vote: Optional[Vote] = None
        self._entries: list[Entry] = []     # _entries[i] has index _purged_index + 1 + i
        self._purged: Optional[LogId] = None
        self._committed: Optional[LogId] = None

    @property
    def _purged_index(self) -> int:
        return self._purged.index if self._purged is not None else 0

    async def read_vote(self) -> Optional[Vote]:
        return self._vote

    async def read_identity(self) -> Optional[StoreIdentity]:
        return self._identity

    async def save_cluster_id(self, cluster_id: str) -> None:
        self._identity = StoreIdentity(cluster_id, self._identity.incarnation)

    async def save_vote(self, vote: Vote) -> None:
        self._vote = vote

    async def get_log_state(self) -> LogState:
        last = self._entries[-1].log_id if self._entries else self._purged
        return LogState(self._purged, last)

    async def read_entries(self, first: int, last: int) -> list[Entry]:
        return self.entries(first, last)

    def entries(self, first: int, last: int) -> list[Entry]:
        """Entries first..last inclusive, synchronously."""
        base = self._purged_index + 1
        if first < base or last > base + len(self._entries) - 1:
            raise StorageError(
                f"MemLogStore holds entries {base}..{base + len(self._entries) - 1}; "
                f"{first}..{last} was asked for")
        return self._entries[first - base:last - base + 1]

    def append(self, entries: Sequence[Entry], on_flushed: FlushCallback) -> None:
        purged = self._purged
        expected = (purged.index if purged is not None else 0) + 1 + len(self._entries)
        if entries and entries[0].index != expected:
            raise StorageError(
                f"MemLogStore.append: the batch starts at index {entries[0].index}, "
                f"the log expects {expected}; appends must be contiguous")
        self._entries.extend(entries)
        on_flushed(None)

    def truncate_after(self, index: int) -> None:
        del self._entries[max(0, index - self._purged_index):]

    def purge(self, upto: LogId) -> None:
        if upto.index <= self._purged_index:
            return
        del self._entries[:upto.index - self._purged_index]
        self._purged = upto

    async def save_committed(self, committed: Optional[LogId]) -> None:
        self._committed = committed

    async def read_committed(self) -> Optional[LogId]:
        return self._committed


class MemStateMachine(StateMachine):
    """A key-value map. Commands (lists or tuples, msgpack-friendly):

    - ``("set", key, value)`` -> the previous value (or None)
    - ``("delete", key)`` -> the removed value (or None)
    - ``("cas", key, expected, new)`` -> ``[ok, current]``: sets `new` if the
      current value equals `expected` (None: absent); `current` is the value
      after the command.

    Read with get(key) after ensure_linearizable (or on any node, for a
    possibly stale read).

    Snapshots are kept in memory only: durable_snapshot() reports none, so a
    node pairing it with a persistent log store (FileLogStore) keeps its
    whole log and re-applies it after a restart; with MemLogStore the log is
    purged up to each snapshot.
    """

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.last_applied: Optional[LogId] = None
        self.last_membership: Any = None
        self._snapshot: Optional[Snapshot] = None

    def restarted(self) -> "MemStateMachine":
        """A new state machine holding only this one's current snapshot: what
        a node finds after a restart when its snapshots are durable but its
        applied state is not."""
        sm = self._empty_like()
        if self._snapshot is not None:
            sm._load(self._snapshot.meta, self._snapshot.data)
        return sm

    def _empty_like(self) -> "MemStateMachine":
        """A new, empty state machine configured like this one, for
        restarted() to load the snapshot into; a subclass whose constructor
        takes arguments overrides it."""
        return MemStateMachine()

    @staticmethod
    def set_cmd(key: Any, value: Any) -> list:
        return ["set", key, value]

    @staticmethod
    def delete_cmd(key: Any) -> list:
        return ["delete", key]

    @staticmethod
    def cas_cmd(key: Any, expected: Any, new: Any) -> list:
        return ["cas", key, expected, new]

    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default)

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        out: list[Any] = []
        data = self.data
        apply_normal = self._apply_normal
        for e in entries:
            if e.kind == ENTRY_NORMAL:
                out.append(apply_normal(data, e.payload))
            else:
                if e.kind == ENTRY_MEMBERSHIP:
                    self.last_membership = e.payload
                out.append(None)
        if entries:
            self.last_applied = entries[-1].log_id
        return out

    def _apply_normal(self, data: dict, payload: Any) -> Any:
        """Applies one client command (a subclass may add kinds of its own)."""
        return self._apply_command(data, payload)

    @classmethod
    def _apply_command(cls, data: dict, cmd: Any) -> Any:
        # A malformed command is answered with an error value, not raised:
        # it is committed already, and every node must apply it the same way.
        try:
            return cls._run_command(data, cmd)
        except TypeError as exc:   # an unhashable key, say
            return {"error": f"cannot apply {cmd!r}: {exc}"}

    @staticmethod
    def _run_command(data: dict, cmd: Any) -> Any:
        if not isinstance(cmd, (list, tuple)) or not cmd:
            return {"error": f"a command is a list [op, ...]; got {cmd!r}"}
        op = cmd[0]
        if op == "set" and len(cmd) == 3:
            prev = data.get(cmd[1])
            data[cmd[1]] = cmd[2]
            return prev
        if op == "delete" and len(cmd) == 2:
            return data.pop(cmd[1], None)
        if op == "cas" and len(cmd) == 4:
            cur = data.get(cmd[1])
            if cur == cmd[2]:
                data[cmd[1]] = cmd[3]
                return [True, cmd[3]]
            return [False, cur]
        return {"error": f"unknown command {cmd!r}; use set, delete or cas"}

    async def applied_state(self) -> tuple[Optional[LogId], Any]:
        return self.last_applied, self.last_membership

    # -- snapshots: msgpack of {"format", "items": [[key, value], ...]}

    async def build_snapshot(self, executor: Callable) -> Snapshot:
        if self.last_applied is None:
            raise NotAllowed("nothing is applied yet; there is nothing to snapshot")
        # Capture now (a shallow copy: applied values are never mutated in
        # place), serialize off the event loop.
        items = list(self.data.items())
        last, membership = self.last_applied, self.last_membership
        data = await executor(_encode_snapshot, items)
        meta = SnapshotMeta(last.term, last.index, membership,
                            f"{last.term}-{last.index}-{next(_snapshot_ids)}")
        snap = Snapshot(meta, data)
        if self._snapshot is None or \
                self._snapshot.meta.last_log_index <= meta.last_log_index:
            self._snapshot = snap
        return snap

    def get_current_snapshot(self) -> Optional[Snapshot]:
        return self._snapshot

    async def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._load(meta, data)

    def check_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._parse(meta, data)

    def _parse(self, meta: SnapshotMeta, data: bytes) -> dict:
        """The snapshot's items; StorageError if it cannot be read."""
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
            found = obj.get("format") if isinstance(obj, dict) else None
            if found != SNAPSHOT_FORMAT:
                raise ValueError(f"format {found!r:.40}, expected {SNAPSHOT_FORMAT}")
            return {k: v for k, v in obj["items"]}
        except Exception as exc:
            raise StorageError(f"MemStateMachine cannot read snapshot {meta.snapshot_id}: "
                               f"{exc}") from exc

    def _load(self, meta: SnapshotMeta, data: bytes) -> None:
        self.data = self._parse(meta, data)
        self.last_applied = LogId(meta.last_log_term, meta.last_log_index)
        self.last_membership = meta.membership
        self._snapshot = Snapshot(meta, data)


def _encode_snapshot(items: list) -> bytes:
    return msgpack.packb({"format": SNAPSHOT_FORMAT, "items": items}, use_bin_type=True)
