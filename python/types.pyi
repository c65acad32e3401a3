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
    size: int
    #: The payload's msgpack encoding as the leader admitted it (None: a bytes
    #: payload, a blank or membership entry, or an entry built without one).
    encoded: Optional[bytes]
    def __init__(self, term: int, index: int, kind: int = ..., payload: Any = None,
                 encoded: Optional[bytes] = None) -> None: ...
    @property
    def payload(self) -> Any:
        """The application value (decoded again from `encoded` at each read
        once released)."""
    def release_payload(self) -> None:
        """Drops the decoded payload of an entry that carries its encoding
        (a node does, once it applied the entry); nothing for one without."""
    @property
    def log_id(self) -> LogId: ...
