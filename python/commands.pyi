# Stub of the compiled engine commands (raftcore/commands.pyx documents each).
from typing import Any

from raftcore.messages import (AppendEntriesRequest, SnapshotMeta, TransferLeaderRequest,
                               VoteRequest)
from raftcore.types import Entry, LogId, Vote

SAVE_VOTE: int
APPEND: int
TRUNCATE: int
SEND_APPEND: int
SEND_VOTE: int
APPLY: int
SEND_TRANSFER: int
SEND_SNAPSHOT: int
INSTALL_SNAPSHOT: int
PURGE: int

class Command:
    """Base of every command; `kind` is one of the constants above."""
    @property
    def kind(self) -> int: ...

class SaveVote(Command):
    """Persist `vote` before any later command runs."""
    def __init__(self, vote: Vote) -> None: ...
    @property
    def vote(self) -> Vote: ...

class Append(Command):
    """Write `entries` to the local log; report the flush."""
    def __init__(self, entries: list[Entry]) -> None: ...
    @property
    def entries(self) -> list[Entry]: ...

class Truncate(Command):
    """Delete local entries >= `since`."""
    def __init__(self, since: int) -> None: ...
    @property
    def since(self) -> int: ...

class SendAppend(Command):
    """Send AppendEntries `request` to `target`; report the answer."""
    def __init__(self, target: Any, request: AppendEntriesRequest) -> None: ...
    @property
    def target(self) -> Any: ...
    @property
    def request(self) -> AppendEntriesRequest: ...

class SendVote(Command):
    """Send the vote (or pre-vote) `request` to `target`; report the answer."""
    def __init__(self, target: Any, request: VoteRequest) -> None: ...
    @property
    def target(self) -> Any: ...
    @property
    def request(self) -> VoteRequest: ...

class Apply(Command):
    """Apply the committed `entries` to the state machine, in order."""
    def __init__(self, entries: list[Entry]) -> None: ...
    @property
    def entries(self) -> list[Entry]: ...

class SendTransfer(Command):
    """Ask `target` to campaign now (leadership transfer)."""
    def __init__(self, target: Any, request: TransferLeaderRequest) -> None: ...
    @property
    def target(self) -> Any: ...
    @property
    def request(self) -> TransferLeaderRequest: ...

class SendSnapshot(Command):
    """Stream the current snapshot to `target`; report the outcome."""
    def __init__(self, target: Any) -> None: ...
    @property
    def target(self) -> Any: ...

class InstallSnapshot(Command):
    """Install the received snapshot `meta` durably, first deleting local
    entries >= `drop_from` (0: keep the log)."""
    def __init__(self, meta: SnapshotMeta, drop_from: int) -> None: ...
    @property
    def meta(self) -> SnapshotMeta: ...
    @property
    def drop_from(self) -> int: ...

class Purge(Command):
    """Delete local entries up to and including `upto`."""
    def __init__(self, upto: LogId) -> None: ...
    @property
    def upto(self) -> LogId: ...
