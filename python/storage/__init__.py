"""Storage: the LogStore and StateMachine interfaces and their implementations."""
from raftcore.storage.base import (FlushCallback, LogState, LogStore, Snapshot, StateMachine,
                                   StoreIdentity)
from raftcore.storage.mem import MemLogStore, MemStateMachine
from raftcore.storage.file import FileLogStore

__all__ = ["LogStore", "StateMachine", "LogState", "FlushCallback", "Snapshot", "MemLogStore",
           "MemStateMachine", "FileLogStore", "StoreIdentity"]
