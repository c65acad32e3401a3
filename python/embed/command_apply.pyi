"""Stubs of the compiled raftcore.embed.command_apply: applying the
embedding layer's entries (see raftcore.embed.replicated)."""
from typing import Any, Callable, Optional

OK: int
FAILED: int
STALE: int
CMD: str
BATCH: str
TICK: str
BATCH_HEAD: int
BATCH_STRIDE: int
SCALAR_TYPES: tuple[type, ...]
CLIENT_ID_TYPES: tuple[type, ...]

class ApplyClock:
    """The log position and the leader-stamped time of the entry being
    applied (or, outside apply, of the last one applied)."""
    index: int
    time: float
    def __init__(self) -> None: ...

class Session:
    """A caller's answers at or above `floor` (it has those below)."""
    floor: int
    answers: dict[int, Any]
    def __init__(self, floor: int = 0, answers: Optional[dict[int, Any]] = None) -> None: ...

def invoke(fn: Callable[..., Any], args: list[Any]) -> tuple[int, Any]: ...

class CommandApplier:
    """The sessions of a ReplicatedStateMachine and the apply of its entries."""
    sessions: dict[Any, Session]
    max_sessions: int
    def __init__(self, clock: ApplyClock, max_sessions: int,
                 lookup: Callable[[Any, Any], Optional[Callable[..., Any]]]) -> None: ...
    def apply(self, entries: list[Any], sm: Any) -> list[Any]: ...
    def apply_payload(self, p: Any) -> Any: ...
