"""Declarations of the engine, so the compiled runtime (python/core.pyx)
steps it with C calls. The class body, its docstring and its invariants live
in engine.pyx."""
from raftcore.types cimport LogId, Vote, Entry
from raftcore.log cimport RaftLog
from raftcore.membership cimport Membership
from raftcore.quorum cimport QuorumTracker
from raftcore.progress cimport Progress
from raftcore.messages cimport (
    AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse, TransferLeaderRequest,
    SnapshotMeta, InstallSnapshotRequest, InstallSnapshotResponse)

# Send times of the last SEQ_RING heartbeat rounds, for the leader lease.
cdef enum:
    SEQ_RING = 256

# Server states (the module-level LEARNER ... SHUTDOWN in engine.pyx, and
# raftcore.ServerState, mirror them).
cdef enum:
    S_LEARNER = 0
    S_FOLLOWER = 1
    S_CANDIDATE = 2
    S_LEADER = 3
    S_SHUTDOWN = 4


# no_gc_clear is on the class in engine.pyx (Cython reads it only there).
cdef class Engine:
    cdef readonly object id
    cdef readonly list output
    # persistent
    cdef readonly Vote vote
    cdef readonly RaftLog log
    # volatile
    cdef readonly int state
    cdef readonly object leader_id
    cdef readonly long long committed
    cdef readonly long long flushed       # local log durable up to here
    cdef readonly long long applying      # last index handed to the state machine
    cdef readonly Membership membership   # effective: the last membership entry in the log
    cdef list membership_log               # [(index, Membership)] in log order
    # leader
    cdef dict progress                     # follower id -> Progress
    cdef QuorumTracker quorum
    # candidate
    cdef set granted
    # time
    cdef readonly double now
    cdef readonly double election_deadline
    cdef readonly double heartbeat_deadline
    # config and switches
    cdef double heartbeat_interval, election_min, election_max
    cdef long long max_payload_entries, max_payload_bytes
    cdef int max_inflight
    cdef object rng
    cdef public bint elect_enabled
    cdef public bint heartbeat_enabled
    # the runtime cannot save a vote (disk full): no campaign, no vote given
    cdef public bint storage_full
    # leader lease and read confirmation: every request carries the number
    # of the heartbeat round it belongs to (seq); a round is confirmed once a
    # quorum answered a request of it or a later one.
    cdef readonly long long hb_seq
    cdef double seq_times[SEQ_RING]
    cdef QuorumTracker seq_quorum
    # how long after the send time of a round a quorum answered the lease
    # holds: election_timeout_min / (1 + max_clock_drift) - lease_margin
    cdef readonly double lease_duration
    cdef bint check_quorum
    cdef readonly long long term_start_index   # leader: index of its blank entry
    cdef double leader_since
    # a follower refuses votes until then: it heard from a leader within
    # election_timeout_min (or restarted and forgot when it last did)
    cdef readonly double vote_refuse_until
    # leadership transfer
    cdef readonly object transfer_to
    cdef double transfer_deadline
    # Once this leader asked a node to take over, that node's transfer vote
    # (which bypasses lease refusals) may arrive at any later time, even
    # after the transfer was abandoned: the lease is given up for the rest
    # of the term (reads fall back to ReadIndex).
    cdef bint lease_forfeited
    # snapshots
    cdef readonly SnapshotMeta snapshot_meta   # the newest snapshot this node holds
    cdef long long keep_logs                   # entries kept below a snapshot when purging
    # pre-vote
    cdef bint pre_vote
    cdef readonly bint prevoting
    cdef set pre_granted
    # identity (see "Identity" in engine.pyx)
    cdef public object cluster_id          # stamped on every request this node sends (None: none)
    cdef public object incarnation         # this node's storage incarnation (None: not kept)
    cdef dict pins                         # member id -> incarnation recorded in `pins_of`
    cdef Membership pins_of                # the membership `pins` was read from
    cdef dict learned                      # leader: unrecorded member -> incarnation it answered
    cdef dict seen                         # leader: member id -> incarnation of its last answer
    cdef readonly set stale_members        # leader: members answering under another incarnation

    cdef void _follow(self, long long term, leader_id, double now)
    cdef Progress _progress_for_answer(self, target, long long req_term, long long resp_term)
    cdef void _record_match(self, Progress p, long long matched)
    cdef void _check_proposable(self)
    cdef long long _last_membership_index(self)
    cdef void _set_vote(self, Vote vote)
    cdef int _follower_state(self)
    cdef bint _can_campaign(self)
    cdef object _node_of(self, node_id)
    cdef void _reset_election_deadline(self)
    cdef void _become_follower(self, Vote vote, leader_id)
    cdef void _clear_leader_state(self)
    cdef void _append_local(self, list entries)
    cdef void _membership_appended(self, Entry e)
    cdef void _truncate(self, long long since)
    cdef void _membership_changed(self)
    cdef void _maybe_commit(self)
    # The rules raftcore.testing.faulty_engine breaks on purpose (to show the
    # simulator catches it): override them there, nowhere else.
    cdef bint _commits_by_counting(self, long long index)
    cdef bint _free_to_vote(self, candidate_id)
    cdef void _maybe_apply(self)

    # Stepped by the runtime on every write: C calls from python/core.pyx.
    cpdef list take_commands(self)
    cpdef long long client_write(self, list payloads, double now, list encoded=*) except? -1
    cpdef AppendEntriesResponse handle_append_entries(self, AppendEntriesRequest req, double now)
    cpdef handle_append_response(self, target, AppendEntriesRequest req,
                                 AppendEntriesResponse resp, double now)
    cpdef handle_append_failure(self, target, AppendEntriesRequest req, double now)
    cpdef log_flushed(self, long long term, long long index)
    cpdef tick(self, double now)
    cpdef double next_deadline(self)
