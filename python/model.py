"""Small public value types: nodes, server states, read policies."""
from __future__ import annotations

import enum

from raftcore import engine as _engine
from raftcore.node import Node

__all__ = ["Node", "ServerState", "ReadPolicy"]


class ServerState(enum.IntEnum):
    """A node's role, as in openraft."""

    LEARNER = _engine.LEARNER
    FOLLOWER = _engine.FOLLOWER
    CANDIDATE = _engine.CANDIDATE
    LEADER = _engine.LEADER
    SHUTDOWN = _engine.SHUTDOWN


class ReadPolicy(enum.Enum):
    """How ensure_linearizable confirms leadership."""

    READ_INDEX = "read_index"
    LEASE_READ = "lease_read"
