from typing import Any, Iterable, Optional

from raftcore.types import Entry

class AppendEntriesRequest:
    term: int
    leader_id: Any
    prev_log_term: int
    prev_log_index: int
    entries: list[Entry]
    leader_commit: int
    seq: int
    cluster_id: Optional[str]
    def __init__(self, term: int, leader_id: Any, prev_log_term: int, prev_log_index: int,
                 entries: list[Entry], leader_commit: int, seq: int = 0,
                 cluster_id: Optional[str] = None) -> None: ...
    @property
    def last_index(self) -> int: ...

class AppendEntriesResponse:
    term: int
    success: bool
    matched: int
    conflict_index: int
    conflict_term: int
    incarnation: Optional[str]
    def __init__(self, term: int, success: bool, matched: int = 0, conflict_index: int = 0,
                 conflict_term: int = 0, incarnation: Optional[str] = None) -> None: ...

class VoteRequest:
    term: int
    candidate_id: Any
    last_log_term: int
    last_log_index: int
    pre_vote: bool
    transfer: bool
    cluster_id: Optional[str]
    fresh: frozenset[int]
    def __init__(self, term: int, candidate_id: Any, last_log_term: int,
                 last_log_index: int, pre_vote: bool = False, transfer: bool = False,
                 cluster_id: Optional[str] = None, fresh: Iterable[int] = ()) -> None: ...

class VoteResponse:
    term: int
    granted: bool
    voter_id: Optional[Any]
    incarnation: Optional[str]
    def __init__(self, term: int, granted: bool, voter_id: Any = None,
                 incarnation: Optional[str] = None) -> None: ...

class TransferLeaderRequest:
    term: int
    leader_id: Any
    last_log_index: int
    cluster_id: Optional[str]
    def __init__(self, term: int, leader_id: Any, last_log_index: int,
                 cluster_id: Optional[str] = None) -> None: ...

class SnapshotMeta:
    last_log_term: int
    last_log_index: int
    membership: Any
    snapshot_id: str
    def __init__(self, last_log_term: int, last_log_index: int, membership: Any,
                 snapshot_id: str) -> None: ...
    @property
    def last_log_id(self) -> Any: ...

class InstallSnapshotRequest:
    term: int
    leader_id: Any
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool
    cluster_id: Optional[str]
    def __init__(self, term: int, leader_id: Any, meta: SnapshotMeta, offset: int, data: bytes,
                 done: bool, cluster_id: Optional[str] = None) -> None: ...

class InstallSnapshotResponse:
    term: int
    incarnation: Optional[str]
    def __init__(self, term: int, incarnation: Optional[str] = None) -> None: ...
