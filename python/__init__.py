"""raftcore: Raft consensus for Python with a compiled Cython engine.

The engine is a compiled extension. If it is missing (a source checkout that
was never built, or a broken install), importing raftcore fails here with a
message saying so: there is no pure-Python fallback.
"""
import importlib.metadata as _metadata

try:
    from raftcore import engine as _engine  # noqa: F401  (compiled)
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "raftcore's compiled engine (raftcore.engine) is missing or failed to load: "
        f"{exc}. Install the package with `pip install .` (it compiles the Cython "
        "sources in raftcore/), and run Python from outside the source tree."
    ) from exc

from raftcore.config import Config
from raftcore.errors import ForwardToLeader, NotAllowed, RaftError, StorageError, Timeout
from raftcore.member_changes import ChangeMembers
from raftcore.membership import Membership
from raftcore.model import Node, ReadPolicy, ServerState
from raftcore.types import ENTRY_BLANK, ENTRY_MEMBERSHIP, ENTRY_NORMAL, Entry, LogId, Vote
from raftcore.messages import SnapshotMeta
from raftcore.raft import Raft, RaftMetrics, ClientWriteResponse
from raftcore.embed import (CommandFailed, EmbeddedNode, ReplCounter, ReplDict, ReplLock,
                            ReplQueue, applying, command, query, start)

__all__ = [
    "Raft", "RaftMetrics", "ChangeMembers", "ClientWriteResponse", "Config", "Node", "ServerState",
    "ReadPolicy", "Membership", "Entry", "LogId", "Vote", "RaftError",
    "ForwardToLeader", "NotAllowed", "Timeout", "StorageError",
    "ENTRY_NORMAL", "ENTRY_BLANK", "ENTRY_MEMBERSHIP", "SnapshotMeta",
    "start", "EmbeddedNode", "command", "query", "applying", "CommandFailed",
    "ReplDict", "ReplCounter", "ReplQueue", "ReplLock",
]
# The version is written once, in pyproject.toml; the installed metadata carries it.
__version__ = _metadata.version("raftcore")
