# Stub of the compiled pending client writes (python/pending_writes.pyx).
# PendingWrites is internal (owned by RaftCore); ClientWriteResponse is
# public, re-exported by raftcore.core and raftcore.raft.
import asyncio
from typing import Any, Callable, Optional

from raftcore.config import Config
from raftcore.engine import Engine
from raftcore.types import LogId

class ClientWriteResponse:
    """What client_write returns once the entry is committed and applied."""
    def __init__(self, term: int, index: int, data: Any) -> None: ...
    @property
    def term(self) -> int: ...
    @property
    def index(self) -> int: ...
    @property
    def data(self) -> Any: ...
    @property
    def log_id(self) -> LogId: ...

class PendingWrites:
    """The client writes of one node, queued or in its log, until answered."""
    no_space: Optional[Exception]
    flush_scheduled: bool
    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, node_id: Any,
                 config: Config, check_running: Callable[[], None],
                 flush: Callable[[], None]) -> None: ...
    async def client_write(self, payload: Any, owned: bool = False) -> ClientWriteResponse: ...
    async def client_write_many(self, payloads: list[Any],
                                owned: bool = False) -> list[ClientWriteResponse]: ...
