"""Raft RPC messages. Immutable once built: the in-process router hands the
same object to the receiver, so neither side may change it after sending.

Identity: every request carries the sender's cluster id (None while it has
none) and every response the answering node's storage incarnation (None for
a store that keeps none); the runtime refuses requests of another cluster and
the engine checks incarnations against the membership."""


cdef class AppendEntriesRequest:
    """Leader -> follower: entries following (prev_log_term, prev_log_index);
    an empty `entries` list is a heartbeat."""

    def __init__(self, long long term, leader_id, long long prev_log_term,
                 long long prev_log_index, list entries, long long leader_commit,
                 long long seq=0, cluster_id=None):
        self.seq = seq
        self.cluster_id = cluster_id
        self.term = term
        self.leader_id = leader_id
        self.prev_log_term = prev_log_term
        self.prev_log_index = prev_log_index
        self.entries = entries
        self.leader_commit = leader_commit

    @property
    def last_index(self):
        return self.prev_log_index + len(self.entries)

    def __eq__(self, other):
        if not isinstance(other, AppendEntriesRequest):
            return NotImplemented
        cdef AppendEntriesRequest o = <AppendEntriesRequest>other
        return (self.term == o.term and self.leader_id == o.leader_id
                and self.prev_log_term == o.prev_log_term
                and self.prev_log_index == o.prev_log_index
                and self.entries == o.entries and self.leader_commit == o.leader_commit
                and self.cluster_id == o.cluster_id)

    __hash__ = None

    def __repr__(self):
        if self.entries:
            span = f"entries {self.prev_log_index + 1}..{self.prev_log_index + len(self.entries)}"
        else:
            span = "heartbeat"
        return (f"AppendEntriesRequest(term={self.term}, leader={self.leader_id!r}, "
                f"prev=({self.prev_log_term}, {self.prev_log_index}), {span}, "
                f"commit={self.leader_commit})")


cdef class AppendEntriesResponse:
    """Follower -> leader. On success `matched` is the last index the request
    made match; on failure the conflict hint lets the leader skip back fast."""

    def __init__(self, long long term, bint success, long long matched=0,
                 long long conflict_index=0, long long conflict_term=0, incarnation=None):
        self.incarnation = incarnation
        self.term = term
        self.success = success
        self.matched = matched
        self.conflict_index = conflict_index
        self.conflict_term = conflict_term

    def __eq__(self, other):
        if not isinstance(other, AppendEntriesResponse):
            return NotImplemented
        cdef AppendEntriesResponse o = <AppendEntriesResponse>other
        return (self.term == o.term and self.success == o.success and self.matched == o.matched
                and self.conflict_index == o.conflict_index
                and self.conflict_term == o.conflict_term and self.incarnation == o.incarnation)

    __hash__ = None

    def __repr__(self):
        if self.success:
            return f"AppendEntriesResponse(term={self.term}, ok, matched={self.matched})"
        return (f"AppendEntriesResponse(term={self.term}, reject, conflict_index="
                f"{self.conflict_index}, conflict_term={self.conflict_term})")


cdef class VoteRequest:
    """Candidate -> voter."""

    def __init__(self, long long term, candidate_id, long long last_log_term,
                 long long last_log_index, bint pre_vote=False, bint transfer=False,
                 cluster_id=None, fresh=()):
        self.cluster_id = cluster_id
        self.fresh = fresh if type(fresh) is frozenset else frozenset(fresh)
        self.term = term
        self.candidate_id = candidate_id
        self.last_log_term = last_log_term
        self.last_log_index = last_log_index
        self.pre_vote = pre_vote
        self.transfer = transfer

    def __eq__(self, other):
        if not isinstance(other, VoteRequest):
            return NotImplemented
        cdef VoteRequest o = <VoteRequest>other
        return (self.term == o.term and self.candidate_id == o.candidate_id
                and self.last_log_term == o.last_log_term
                and self.last_log_index == o.last_log_index
                and self.pre_vote == o.pre_vote and self.transfer == o.transfer
                and self.cluster_id == o.cluster_id and self.fresh == o.fresh)

    __hash__ = None

    def __repr__(self):
        flags = ((", pre-vote" if self.pre_vote else "") + (", transfer" if self.transfer else "")
                 + (f", fresh {sorted(self.fresh)}" if self.fresh else ""))
        return (f"VoteRequest(term={self.term}, candidate={self.candidate_id!r}, "
                f"last=({self.last_log_term}, {self.last_log_index}){flags})")


cdef class VoteResponse:
    """Voter -> candidate; granted only once the vote is on disk."""

    def __init__(self, long long term, bint granted, voter_id=None, incarnation=None):
        self.incarnation = incarnation
        self.term = term
        self.granted = granted
        self.voter_id = voter_id

    def __eq__(self, other):
        if not isinstance(other, VoteResponse):
            return NotImplemented
        cdef VoteResponse o = <VoteResponse>other
        return (self.term == o.term and self.granted == o.granted and self.voter_id == o.voter_id
                and self.incarnation == o.incarnation)

    __hash__ = None

    def __repr__(self):
        g = "granted" if self.granted else "refused"
        return f"VoteResponse(term={self.term}, {g}, voter={self.voter_id!r})"


cdef class TransferLeaderRequest:
    """Leader -> the node it hands leadership to: "you have my whole log up
    to last_log_index; campaign now" (Raft's TimeoutNow)."""

    def __init__(self, long long term, leader_id, long long last_log_index, cluster_id=None):
        self.cluster_id = cluster_id
        self.term = term
        self.leader_id = leader_id
        self.last_log_index = last_log_index

    def __eq__(self, other):
        if not isinstance(other, TransferLeaderRequest):
            return NotImplemented
        cdef TransferLeaderRequest o = <TransferLeaderRequest>other
        return (self.term == o.term and self.leader_id == o.leader_id
                and self.last_log_index == o.last_log_index and self.cluster_id == o.cluster_id)

    __hash__ = None

    def __repr__(self):
        return (f"TransferLeaderRequest(term={self.term}, leader={self.leader_id!r}, "
                f"last_log_index={self.last_log_index})")


cdef class SnapshotMeta:
    """What a snapshot covers: the last log id it includes, the membership in
    force there, and an id naming this particular snapshot."""

    def __init__(self, long long last_log_term, long long last_log_index, membership,
                 str snapshot_id):
        self.last_log_term = last_log_term
        self.last_log_index = last_log_index
        self.membership = membership
        self.snapshot_id = snapshot_id

    @property
    def last_log_id(self):
        from raftcore.types import LogId
        return LogId(self.last_log_term, self.last_log_index)

    def __eq__(self, other):
        if not isinstance(other, SnapshotMeta):
            return NotImplemented
        cdef SnapshotMeta o = <SnapshotMeta>other
        return (self.last_log_term == o.last_log_term and self.last_log_index == o.last_log_index
                and self.membership == o.membership and self.snapshot_id == o.snapshot_id)

    __hash__ = None

    def __repr__(self):
        return (f"SnapshotMeta(last=({self.last_log_term}, {self.last_log_index}), "
                f"{self.membership!r}, id={self.snapshot_id!r})")


cdef class InstallSnapshotRequest:
    """Leader -> follower: one chunk of a snapshot, at `offset`; `done` on the
    last one."""

    def __init__(self, long long term, leader_id, SnapshotMeta meta, long long offset,
                 bytes data, bint done, cluster_id=None):
        self.cluster_id = cluster_id
        self.term = term
        self.leader_id = leader_id
        self.meta = meta
        self.offset = offset
        self.data = data
        self.done = done

    def __repr__(self):
        return (f"InstallSnapshotRequest(term={self.term}, leader={self.leader_id!r}, "
                f"{self.meta!r}, offset={self.offset}, {len(self.data)} bytes"
                f"{', done' if self.done else ''})")


cdef class InstallSnapshotResponse:
    def __init__(self, long long term, incarnation=None):
        self.term = term
        self.incarnation = incarnation

    def __eq__(self, other):
        if not isinstance(other, InstallSnapshotResponse):
            return NotImplemented
        return (self.term == (<InstallSnapshotResponse>other).term
                and self.incarnation == (<InstallSnapshotResponse>other).incarnation)

    __hash__ = None

    def __repr__(self):
        return f"InstallSnapshotResponse(term={self.term})"
