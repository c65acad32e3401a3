"""Storage: the LogStore and StateMachine interfaces and their implementations."""
from raftcore.storage.base import FlushCallback, LogState, LogStore, StateMachine
from raftcore.storage.mem import MemLogStore, MemStateMachine

__all__ = ["LogStore", "StateMachine", "LogState", "FlushCallback", "MemLogStore",
           "MemStateMachine"]
