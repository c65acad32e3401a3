"""Storage: the LogStore and StateMachine interfaces and their implementations."""
from raftcore.storage.base import (FlushCallback, LogState, LogStore, LogStoreLike, Snapshot,
                                   StateMachine, StateMachineLike, StoreIdentity)
from raftcore.messages import SnapshotMeta
from raftcore.types import ENTRY_BLANK, ENTRY_MEMBERSHIP, ENTRY_NORMAL, Entry, LogId
from raftcore.storage.mem import MemLogStore, MemStateMachine
from raftcore.storage.file import FileLogStore

__all__ = ["LogStore", "StateMachine", "LogState", "FlushCallback", "Snapshot", "MemLogStore",
           "MemStateMachine", "FileLogStore", "StoreIdentity", "LogStoreLike", "StateMachineLike",
           "SnapshotMeta", "Entry", "LogId", "ENTRY_NORMAL", "ENTRY_BLANK", "ENTRY_MEMBERSHIP"]
