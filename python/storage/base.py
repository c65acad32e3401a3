"""The storage interfaces: LogStore (the Raft log and vote) and StateMachine.

Both are batch-oriented: a call carries a batch of entries, never one await
per entry.
"""
from __future__ import annotations

import abc
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Protocol, Sequence

from raftcore.messages import SnapshotMeta
from raftcore.types import Entry, LogId, Vote

#: Called by a LogStore once an appended batch is durable: with None, or with
#: the exception that kept it from becoming durable.
FlushCallback = Callable[[Optional[BaseException]], None]


@dataclass(frozen=True)
class Snapshot:
    """A snapshot: what it covers (meta) and the state machine's bytes."""

    meta: SnapshotMeta
    data: bytes


@dataclass(frozen=True)
class LogState:
    """What a log store holds: the last purged log id and the last log id
    (None when there is none). last_log_id is the last purged id when the
    store holds no entries after it."""

    last_purged_log_id: Optional[LogId]
    last_log_id: Optional[LogId]


@dataclass(frozen=True)
class StoreIdentity:
    """Who a log store belongs to: the cluster id (None until the node
    initializes a cluster or first hears from one) and the store's
    incarnation, a random id made once, when the store's storage is created
    (a wiped or replaced store has a new one)."""

    cluster_id: Optional[str]
    incarnation: str


class LogStoreLike(Protocol):
    """What Raft.create needs of a log store, as a type: LogStore's methods
    that the node calls (subclassing LogStore gives the optional ones)."""

    def read_vote(self) -> Awaitable[Optional[Vote]]: ...
    def save_vote(self, vote: Vote) -> Awaitable[None]: ...
    def get_log_state(self) -> Awaitable[LogState]: ...
    def read_entries(self, first: int, last: int) -> Awaitable[list[Entry]]: ...
    def append(self, entries: Sequence[Entry], on_flushed: FlushCallback) -> None: ...
    def truncate_after(self, index: int) -> None: ...
    def purge(self, upto: LogId) -> None: ...
    def read_committed(self) -> Awaitable[Optional[LogId]]: ...
    def read_identity(self) -> Awaitable[Optional["StoreIdentity"]]: ...


class StateMachineLike(Protocol):
    """What Raft.create needs of a state machine, as a type (StateMachine's
    methods that the node calls)."""

    def apply(self, entries: Sequence[Entry]) -> Any: ...
    def applied_state(self) -> Awaitable[tuple[Optional[LogId], Any]]: ...
    def build_snapshot(self, executor: Callable) -> Awaitable["Snapshot"]: ...
    def get_current_snapshot(self) -> Optional["Snapshot"]: ...
    def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> Awaitable[None]: ...
    def check_snapshot(self, meta: SnapshotMeta, data: bytes) -> None: ...


#: The methods Raft.create checks a log store and a state machine for.
LOG_STORE_METHODS = ("read_vote", "save_vote", "get_log_state", "read_entries", "append",
                     "truncate_after", "purge", "read_committed", "read_identity")
STATE_MACHINE_METHODS = ("apply", "applied_state", "build_snapshot", "get_current_snapshot",
                         "install_snapshot", "check_snapshot")


def missing_methods(obj: Any, names: Sequence[str]) -> list[str]:
    """The names in `names` that `obj` has no method of."""
    return [n for n in names if not callable(getattr(obj, n, None))]


def new_identity_token() -> str:
    """A fresh random cluster id or incarnation (16 hex digits)."""
    return secrets.token_hex(8)


class LogStore(abc.ABC):
    """The Raft log and the vote of one node.

    Contract:
    - append() returns once the entries are readable through
      read_entries(); it calls on_flushed(None) once they are durable, in
      the order the appends were made. Replication goes on meanwhile: the
      leader counts its own flush toward commit like a follower's ack.
    - truncate_after() and purge() keep the log contiguous; a truncation is
      durable before any later append is reported flushed.
    - save_vote() returns only once the vote is durable.
    - read_identity() returns the same incarnation for as long as the
      storage exists, and save_cluster_id() returns only once the id is
      durable. A store that overrides neither keeps no identity: its node
      then runs without the cluster and incarnation checks.
    - A store never calls back into the node from inside a call other than
      through on_flushed.
    - `persistent` says whether the log outlives the process. A store that
      keeps nothing once its process ends (MemLogStore) sets it to False:
      the node then purges it up to any snapshot, since on a restart it
      forgets more than the state machine could.
    - Optional: a store that batches the appends of a loop iteration before
      writing them may have write_now(), which starts that write at once.
      The node calls it after a step that appended, once the step's
      AppendEntries are sent (FileLogStore has it).
    """

    #: True when the log survives a restart of the process (see above).
    persistent: bool = True

    @abc.abstractmethod
    async def read_vote(self) -> Optional[Vote]:
        """The last saved vote, or None for a fresh store."""

    @abc.abstractmethod
    async def save_vote(self, vote: Vote) -> None:
        """Saves the vote; returns once it is durable."""

    @abc.abstractmethod
    async def get_log_state(self) -> LogState:
        """The last purged and last log ids."""

    @abc.abstractmethod
    async def read_entries(self, first: int, last: int) -> list[Entry]:
        """Entries first..last inclusive; all of them must be present."""

    @abc.abstractmethod
    def append(self, entries: Sequence[Entry], on_flushed: FlushCallback) -> None:
        """Appends a batch after the current last entry (contiguous indexes).

        Returns once the entries are readable; calls on_flushed once they
        are durable (possibly before returning)."""

    @abc.abstractmethod
    def truncate_after(self, index: int) -> None:
        """Deletes every entry with an index above `index`."""

    @abc.abstractmethod
    def purge(self, upto: LogId) -> None:
        """Deletes every entry up to and including `upto`."""

    async def save_committed(self, committed: Optional[LogId]) -> None:
        """Optionally records the commit point, to re-apply less after a
        restart. Never on the per-commit path; the default keeps nothing."""

    async def read_committed(self) -> Optional[LogId]:
        """The last saved commit point, if the store keeps one."""
        return None

    def set_space_listener(self, listener: Optional[Callable[[Optional[BaseException]],
                                                             None]]) -> None:
        """Optional: a store that can run out of disk space without failing
        calls listener(NoSpace error) when it starts holding writes back for
        lack of space (it retries them by itself; their on_flushed waits),
        and listener(None) once they went through. Its save_vote raises
        raftcore.errors.NoSpace, leaving the saved vote as it was. The
        default (a store that never runs out) never calls it."""

    async def read_identity(self) -> Optional[StoreIdentity]:
        """The store's cluster id and incarnation (made when the storage was
        created), or None for a store that keeps no identity (the default)."""
        return None

    async def save_cluster_id(self, cluster_id: str) -> None:
        """Records the cluster id durably; returns once it is. Called only
        on a store whose read_identity() returns an identity."""
        raise NotImplementedError(f"{type(self).__name__} keeps no identity")

    async def close(self) -> None:
        """Releases resources; further calls are errors."""


class StateMachine(abc.ABC):
    """The application's replicated state.

    apply() gets a batch of committed entries, in log order, and returns one
    response per entry: the reply to the client for normal entries, None for
    blank and membership entries. It may be a plain method or a coroutine
    function: a plain one is called inline on the write path (no task
    switch), so it must be quick and never block; one that does I/O should
    be `async def`.

    Snapshots and the log (the durability contract). A node purges its log
    only up to a snapshot the state machine reports, through
    durable_snapshot(), as durable: written so that after a restart of the
    process the new state machine object returns it (or a newer one) from
    get_current_snapshot() and applied_state(). A snapshot must be durable
    before it is reported there, because the entries it covers may then be
    deleted from the log store for good. The default reports nothing, and
    the log of a persistent log store is then never purged (a warning says
    so): a state machine that keeps its snapshots in memory only stays
    correct, its node re-applying the whole log after a restart. A state
    machine that writes its snapshots to disk implements durable_snapshot()
    and loads its newest snapshot when it is created again.
    install_snapshot() returns only once the installed snapshot is durable
    (the node then drops its log up to it). Check an implementation with
    raftcore.testing.storage_suite (give StateMachineFactory a `reopen`).
    """

    @abc.abstractmethod
    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        """Applies the entries in order; returns one response per entry
        (or, when defined with `async def`, an awaitable of them)."""

    @abc.abstractmethod
    async def applied_state(self) -> tuple[Optional[LogId], Any]:
        """The last applied log id and the last membership applied (or None)."""

    @abc.abstractmethod
    async def build_snapshot(self, executor: Callable) -> Snapshot:
        """Takes a snapshot of everything applied so far and keeps it as the
        current snapshot. Must not block the event loop: capture the state
        quickly, then do the heavy work (serializing, writing) through
        `executor(fn, *args)`, which returns an awaitable. Apply, appends and
        replication go on meanwhile."""

    @abc.abstractmethod
    def get_current_snapshot(self) -> Optional[Snapshot]:
        """The newest snapshot built or installed, or None."""

    def durable_snapshot(self) -> Optional[SnapshotMeta]:
        """The newest snapshot that survives a restart of the process (see
        the class docstring), or None: the node never purges its log past
        it. Called after each snapshot build; it must be quick and not block
        (report what is already known to be written). The default, None,
        keeps the whole log of a persistent log store."""
        return None

    @abc.abstractmethod
    async def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replaces the whole state with the snapshot's and keeps it as the
        current snapshot; returns once that is durable. An error raised from
        ENOSPC or EDQUOT (raftcore.errors.is_space_error) is taken for a full
        disk: the node calls it again until it succeeds, so it must be
        repeatable; any other error stops the node."""

    def check_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Raises StorageError if `data` is not a snapshot this state machine
        can install. Called once the last chunk of a snapshot sent by a
        leader has arrived, before anything changes: a snapshot that fails
        is refused (its sender gets the error) and the node goes on as it
        was. The default accepts everything; a state machine whose
        install_snapshot can reject data should check the same here."""
