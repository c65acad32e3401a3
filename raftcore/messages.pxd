cdef class AppendEntriesRequest:
    cdef readonly long long term
    cdef readonly object leader_id
    cdef readonly long long prev_log_term
    cdef readonly long long prev_log_index
    cdef readonly list entries
    cdef readonly long long leader_commit
    cdef readonly long long seq            # sender-local: heartbeat round it belongs to (not sent)
    cdef readonly object cluster_id        # the sender's cluster id (None: not known)


cdef class AppendEntriesResponse:
    cdef readonly long long term
    cdef readonly bint success
    cdef readonly long long matched        # success: the follower's log matches up to here
    cdef readonly long long conflict_index # failure: first index the leader should try
    cdef readonly long long conflict_term  # failure: term of the follower's entry at prev (0: none)
    cdef readonly object incarnation       # the answering node's storage incarnation (or None)


cdef class VoteRequest:
    cdef readonly long long term
    cdef readonly object candidate_id
    cdef readonly long long last_log_term
    cdef readonly long long last_log_index
    cdef readonly bint pre_vote            # a pre-vote: asks "would you vote?", changes nothing
    cdef readonly bint transfer            # asked by a leadership transfer: bypasses the lease
    cdef readonly object cluster_id
    cdef readonly frozenset fresh          # voters that may grant on an empty log: none can
                                           # have acknowledged what this election decides
                                           # (engine_identity.fresh_voters)


cdef class VoteResponse:
    cdef readonly long long term
    cdef readonly bint granted
    cdef readonly object voter_id
    cdef readonly object incarnation


cdef class TransferLeaderRequest:
    cdef readonly long long term
    cdef readonly object leader_id
    cdef readonly long long last_log_index
    cdef readonly object cluster_id


cdef class SnapshotMeta:
    cdef readonly long long last_log_term
    cdef readonly long long last_log_index
    cdef readonly object membership       # Membership in force at last_log_index
    cdef readonly str snapshot_id


cdef class InstallSnapshotRequest:
    cdef readonly long long term
    cdef readonly object leader_id
    cdef readonly SnapshotMeta meta
    cdef readonly long long offset
    cdef readonly bytes data
    cdef readonly bint done
    cdef readonly object cluster_id


cdef class InstallSnapshotResponse:
    cdef readonly long long term
    cdef readonly object incarnation
