"""Node: how to reach a cluster member. A leaf module (it imports nothing of
raftcore), so that the engine's codec can build the nodes of a membership it
decodes without importing the runtime."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


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
