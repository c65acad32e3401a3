# Stub of the compiled read and metric waiters (python/waiters.pyx); both
# are internal, owned by RaftCore.
import asyncio
from typing import Any, Callable, Optional

from raftcore.engine import Engine
from raftcore.types import LogId

class ReadWaiters:
    """The read points of linearizable reads on a leader, each answered once
    its round of heartbeats is confirmed by a quorum."""
    def __init__(self, core: Any, engine: Engine) -> None: ...
    async def read_log_id(self, lease: bool) -> LogId: ...

class MetricWaiters:
    """Futures waiting for a predicate on the node's metrics to hold."""
    def __init__(self) -> None: ...
    def add(self, predicate: Optional[Callable[[Any], bool]], fut: asyncio.Future[Any]) -> None: ...
    def remove(self, fut: asyncio.Future[Any]) -> None: ...
