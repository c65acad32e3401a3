"""Small public value types: nodes, server states, read policies."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

from raftcore import engine as _engine


@dataclass(frozen=True)
class Node:
    """How to reach a cluster member: an address ("host:port") and optional app data.

    `incarnation` is recorded by the cluster, not given by the application:
    the id of the member's storage (LogStore.read_identity), pinned by the
    leader once the member answered. A member that later answers with another
    incarnation lost or replaced its storage (see the README's "Operating a
    cluster")."""

    addr: str = ""
    data: Any = field(default=None, compare=False)
    incarnation: Optional[str] = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.addr


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
