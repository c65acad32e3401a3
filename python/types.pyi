from typing import Any, Optional

ENTRY_BLANK: int
ENTRY_NORMAL: int
ENTRY_MEMBERSHIP: int

class LogId:
    term: int
    index: int
    def __init__(self, term: int, index: int) -> None: ...
    def __lt__(self, other: LogId) -> bool: ...
    def __le__(self, other: LogId) -> bool: ...

class Vote:
    term: int
    node_id: Optional[int]
    committed: bool
    def __init__(self, term: int, node_id: Optional[int] = None, committed: bool = False) -> None: ...

class Entry:
    term: int
    index: int
    kind: int
    payload: Any
    size: int
    #: The payload's msgpack encoding as the leader admitted it (None: a bytes
    #: payload, a blank or membership entry, or an entry built without one).
    encoded: Optional[bytes]
    def __init__(self, term: int, index: int, kind: int = ..., payload: Any = None,
                 encoded: Optional[bytes] = None) -> None: ...
    @property
    def log_id(self) -> LogId: ...
