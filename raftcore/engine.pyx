"""The Raft engine: a deterministic step function with no I/O.

Events come in as method calls (client writes, RPC requests and responses,
"log flushed up to X", timer ticks carrying the current time); the engine
updates its state and appends commands (raftcore.commands: SaveVote, Append,
Truncate, SendAppend, SendVote, Apply, SendTransfer, SendSnapshot,
InstallSnapshot, Purge; each documented there) to `self.output`, which the
runtime takes with take_commands() and executes in order.

Layout. Engine is one cdef class (its state is declared in engine.pxd), and
a cdef class is defined in one module: the concerns that stand apart are
functions of the engine in modules of their own, which its methods call:
engine_election (votes, campaigns, becoming leader), engine_replication
(AppendEntries on both sides, send windows, heartbeat rounds, the commit
quorum), engine_reads (ReadIndex, the lease, check_quorum), engine_transfer
(leadership transfer), engine_snapshots (installing one, the leader's side,
purging) and engine_identity (storage incarnations). Here stay the event
methods (what the runtime steps), the transitions every concern shares
(follow, step down, append, truncate, membership, commit, apply) and the
views: the class itself, which is one piece, hence this module's ~650 lines.

The runtime owns the clock and the randomness: times are plain floats
(seconds, from the event loop) and `rng` is a callable returning a float in
[0, 1), from a generator the runtime seeds.

Safety rules kept here:
- a vote is emitted as SaveVote before the response that grants it or the
  requests that ask for it (the runtime executes commands in order);
- an entry counts towards commit only once flushed (the leader's own log
  included), and only entries of the leader's own term are committed by
  counting (Raft paper, Figure 8);
- a follower never deletes entries that match the leader's; it truncates only
  from the first conflict, and never below its commit index.

Identity. Every request carries `cluster_id` (the runtime refuses another
cluster's) and every answer this node's storage `incarnation`. The membership
records each member's incarnation (Node.incarnation): the initializing node
records its own, and a leader records the others' from their first answers,
with a membership entry of the same voters (once no other change is
pending). A member answering under another incarnation than the recorded one
lost or replaced its storage, so it may have forgotten its vote and entries
it acknowledged: its votes and acknowledgements do not count (leader:
`stale_members`), it neither votes nor campaigns once it sees the record
(`identity_stale`), until it is removed and added back (the new record is
then taken from its answers). A wiped member lost the record too, and a
candidate lagging behind may lack it: a node whose log is empty votes only
where the request counts it among the fresh voters (VoteRequest.fresh: in
the cluster's first elections), until a leader's entries reach it
(engine_identity.may_vote_on_empty_log); the first leader does not step
down before a follower has its entries (first_leader_unheard).
"""

cimport cython
from libc.math cimport INFINITY
from raftcore.types cimport LogId, Vote, Entry, make_entry, make_encoded_entry, NORMAL, MEMBERSHIP
from raftcore.log cimport RaftLog
from raftcore.membership cimport Membership
from raftcore.progress cimport Progress, SNAPSHOT
from raftcore.messages cimport (
    AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse, TransferLeaderRequest,
    SnapshotMeta, InstallSnapshotRequest, InstallSnapshotResponse)
from raftcore.commands cimport new_save_vote, new_append, new_truncate, new_apply
from raftcore cimport engine_election as election
from raftcore cimport engine_replication as replication
from raftcore cimport engine_reads as reads
from raftcore cimport engine_transfer as transfer
from raftcore cimport engine_snapshots as snapshots
from raftcore cimport engine_identity as identity

from raftcore.errors import ChangeInProgress, ForwardToLeader, NotAllowed, RaftError

# ServerState values (raftcore.ServerState mirrors them).
LEARNER = 0
FOLLOWER = 1
CANDIDATE = 2
LEADER = 3
SHUTDOWN = 4

# S_LEARNER ... S_SHUTDOWN (the same values, for C code) and SEQ_RING are in
# engine.pxd.


# no_gc_clear: when a garbage cycle holding this object is collected, its
# typed fields must not be reset to None under code (a finalizer, say) that
# may still call into it; cleared fields would crash typed cdef access.
@cython.no_gc_clear
cdef class Engine:
    """One node's Raft state. Not thread-safe; the runtime steps it from one task."""

    # Attributes are declared in engine.pxd, each with what it holds.

    def __init__(self, node_id, *, double heartbeat_interval, double election_timeout_min,
                 double election_timeout_max, long long max_payload_entries,
                 long long max_payload_bytes, int max_inflight, rng, double now=0.0,
                 double lease_margin=0.0, double max_clock_drift=0.0,
                 bint check_quorum=False, bint pre_vote=False, long long keep_logs=0):
        if not election_timeout_min < election_timeout_max:
            raise ValueError("election_timeout_min must be below election_timeout_max")
        self.id = node_id
        self.output = []
        self.vote = Vote(0, None, False)
        self.log = RaftLog(0, 0)
        self.state = S_LEARNER
        self.leader_id = None
        self.committed = 0
        self.flushed = 0
        self.applying = 0
        self.membership = None
        self.membership_log = []
        self.progress = {}
        self.quorum = None
        self.granted = set()
        self.heartbeat_interval = heartbeat_interval
        self.election_min = election_timeout_min
        self.election_max = election_timeout_max
        self.max_payload_entries = max_payload_entries
        self.max_payload_bytes = max_payload_bytes
        self.max_inflight = max_inflight
        self.rng = rng
        self.elect_enabled = True
        self.heartbeat_enabled = True
        if not 0.0 <= max_clock_drift < INFINITY:
            raise ValueError("max_clock_drift must be a finite ratio >= 0")
        # Followers refuse votes for election_timeout_min by their clocks
        # after hearing from us; a clock up to (1 + max_clock_drift) times
        # faster than ours ends that sooner, by our clock.
        self.lease_duration = election_timeout_min / (1.0 + max_clock_drift) - lease_margin
        if not (lease_margin >= 0.0 and self.lease_duration > 0.0):
            raise ValueError("lease_margin must be within [0, election_timeout_min / "
                             "(1 + max_clock_drift))")
        self.check_quorum = check_quorum
        self.pre_vote = pre_vote
        self.hb_seq = 0
        self.seq_quorum = None
        self.term_start_index = 0
        self.leader_since = 0.0
        self.vote_refuse_until = -1e300
        self.transfer_to = None
        self.transfer_deadline = 0.0
        self.lease_forfeited = False
        self.prevoting = False
        self.pre_granted = set()
        self.cluster_id = None
        self.incarnation = None
        self.pins = {}
        self.pins_of = None
        self.learned = {}
        self.seen = {}
        self.stale_members = set()
        self.snapshot_meta = None
        if keep_logs < 0:
            raise ValueError("keep_logs must be >= 0")
        self.keep_logs = keep_logs
        self.now = now
        self._reset_election_deadline()
        self.heartbeat_deadline = now

    # ------------------------------------------------------------------ output

    cpdef list take_commands(self):
        """Returns the commands emitted since the last call, in order."""
        cdef list out = self.output
        self.output = []
        return out

    # ---------------------------------------------------------------- restore

    def restore(self, Vote vote, purged, list entries, long long committed=0,
                long long applied=0, base_membership=None, SnapshotMeta snapshot=None):
        """Loads persisted state on start-up: the vote, the last purged log id
        (or None), the unpurged entries (all flushed), the saved commit index
        and what the state machine has applied. Emits nothing."""
        cdef Entry e
        cdef long long purged_index = 0, purged_term = 0
        if purged is not None:
            purged_index = (<LogId>purged).index
            purged_term = (<LogId>purged).term
        self.vote = vote
        self.log = RaftLog(purged_index, purged_term)
        self.log.extend(entries)
        self.flushed = self.log.last_index()
        self.membership_log = []
        if base_membership is not None:
            self.membership_log.append((purged_index, base_membership))
        for e in entries:
            if e.kind == MEMBERSHIP:
                self.membership_log.append((e.index, e._payload))
        self.membership = self.membership_log[-1][1] if self.membership_log else None
        self.committed = max(committed, applied)
        self.applying = applied
        self.snapshot_meta = snapshot
        self.state = self._follower_state()
        self.leader_id = None
        self._reset_election_deadline()
        self._maybe_apply()

    # ----------------------------------------------------------- initialize

    def initialize(self, Membership membership, bint elect=True):
        """Appends the first membership entry and, if this node is a voter,
        starts an election right away. Only on a node that never had a log
        or a vote."""
        if not self.log.is_empty() or self.vote.term != 0:
            raise NotAllowed(
                f"node {self.id} is already initialized (last log index "
                f"{self.log.last_index()}, term {self.vote.term}); "
                "initialize only a fresh node")
        cdef Entry first = make_entry(0, 1, MEMBERSHIP, membership)
        self._append_local([first])
        self.state = self._follower_state()
        if elect and membership.is_voter(self.id):
            election.start_election(self, False)

    # ------------------------------------------------------------------ time

    cpdef tick(self, double now):
        """Advances time: a leader sends heartbeats when due, a follower or
        candidate starts an election when its timeout has passed."""
        self.now = now
        if self.state == S_LEADER:
            if self.transfer_to is not None and now >= self.transfer_deadline:
                # The transfer did not complete within an election timeout:
                # give up on it and lead on.
                self.transfer_to = None
            if self.check_quorum and reads.quorum_silent(self, now) \
                    and not identity.first_leader_unheard(self):
                # No quorum heard from for an election timeout: this leader
                # may be cut off; stop taking writes and step down.
                self._become_follower(self.vote, None)
                return
            if now >= self.heartbeat_deadline and self.heartbeat_enabled:
                identity.maybe_pin(self, False)
                replication.broadcast_heartbeat(self)
        elif now >= self.election_deadline:
            if self.elect_enabled and self._can_campaign() and not self.storage_full:
                election.campaign(self)
            else:
                self._reset_election_deadline()

    cpdef double next_deadline(self):
        """The time at which tick() next has work to do."""
        if self.state == S_LEADER:
            return self.heartbeat_deadline
        return self.election_deadline

    def trigger_elect(self, double now):
        """Starts an election now (openraft's trigger().elect())."""
        self.now = now
        if identity.self_stale(self):
            raise NotAllowed(f"node {self.id} runs on other storage than the membership "
                             "records for it (wiped or replaced); it cannot be elected until "
                             "it is removed and added back")
        if not self._can_campaign():
            raise NotAllowed(f"node {self.id} is not a voter of {self.membership!r}; "
                             "only voters can be elected")
        if self.state == S_LEADER:
            return
        if self.storage_full:
            raise NotAllowed(f"node {self.id} cannot save a vote (its disk is full); "
                             "free space on the disk first")
        election.start_election(self, False)

    def trigger_heartbeat(self, double now):
        """Sends a heartbeat to every follower now."""
        self.now = now
        if self.state != S_LEADER:
            raise NotAllowed(f"node {self.id} is not the leader; only a leader sends heartbeats")
        replication.broadcast_heartbeat(self)

    def shutdown(self):
        self.state = S_SHUTDOWN
        self.progress = {}

    # ------------------------------------------------------------ client I/O

    cpdef long long client_write(self, list payloads, double now, list encoded=None) except? -1:
        """Appends one entry per payload (a batch), starts replicating it and
        returns the index of the first one. `encoded`, when given, holds
        each payload's msgpack encoding (bytes, or None for a payload
        carried as it is), side by side with `payloads`: the entries carry
        it to the log store and the followers (Entry.encoded). Raises
        ForwardToLeader on a node that is not the leader."""
        cdef long long first, index, term
        cdef Py_ssize_t i, n = len(payloads)
        cdef list entries
        cdef object raw
        if encoded is not None and len(encoded) != n:
            raise ValueError(f"{len(encoded)} encodings for {n} payloads")
        self.now = now
        self._check_proposable()
        term = self.vote.term
        first = self.log.last_index() + 1
        entries = [None] * n
        for i in range(n):
            raw = None if encoded is None else encoded[i]
            if raw is None:
                entries[i] = make_entry(term, first + i, NORMAL, payloads[i])
            else:
                entries[i] = make_encoded_entry(term, first + i, payloads[i], <bytes?>raw)
        self._append_local(entries)
        replication.replicate_all(self)
        return first

    def change_membership(self, Membership membership, double now):
        """Appends a membership entry (in force at once) and replicates it;
        returns its index. One change at a time: ChangeInProgress (a
        NotAllowed) while the last membership entry is not committed."""
        self.now = now
        self._check_proposable()
        cdef long long pending = self._last_membership_index()
        if pending > self.committed:
            raise ChangeInProgress(
                f"a membership change is in progress (entry {pending} is not committed "
                "yet); wait for it to commit before the next change")
        cdef long long index = self.log.last_index() + 1
        membership = identity.with_incarnations(self, membership)
        self.learned = {}       # recorded now (or no longer members)
        self._append_local([make_entry(self.vote.term, index, MEMBERSHIP, membership)])
        replication.replicate_all(self)
        return index

    # ---------------------------------------------------------------- reads

    def read_index(self, double now):
        """Leader: starts confirming leadership for a linearizable read.
        Returns (read_index, seq): the read may proceed once confirmed_seq
        reaches seq (a quorum answered this round) and the state machine has
        applied read_index. Raises ForwardToLeader elsewhere."""
        return reads.read_index(self, now)

    def lease_read(self, double now):
        """Leader: the read index if the leader lease holds now (no round
        trip needed), else -1. Raises ForwardToLeader elsewhere."""
        return reads.lease_read(self, now)

    @property
    def confirmed_seq(self):
        """The latest heartbeat round a quorum has answered (leader only)."""
        if self.state != S_LEADER or self.seq_quorum is None:
            return 0
        return self.seq_quorum.accepted

    def lease_valid(self, double now):
        return self.state == S_LEADER and reads.lease_valid(self, now)

    def refuse_votes_until(self, double t):
        """Refuse vote requests until t. The runtime calls it on restart:
        the node forgot when it last heard from a leader, so it assumes it
        just did (a leader may hold a lease counting on this node)."""
        if t > self.vote_refuse_until:
            self.vote_refuse_until = t

    # ------------------------------------------------------- leadership

    def transfer_leader(self, target, double now):
        """Leader: hands leadership to `target` once it has caught up; until
        the transfer completes or times out (an election timeout), writes are
        refused with ForwardToLeader and the lease is not used."""
        return transfer.transfer_leader(self, target, now)

    def handle_transfer_leader(self, TransferLeaderRequest req, double now):
        """The leader asks this node to campaign now (it has the whole log)."""
        return transfer.handle_transfer_leader(self, req, now)

    def abandon_campaign(self, Vote saved):
        """The runtime cannot save this candidate's vote for itself (its disk
        is full) and none of its vote requests has left: the election is
        called off, and the node is a follower again under `saved`, the vote
        it last saved. Returns False (changing nothing) if it is no
        candidate."""
        if self.state != S_CANDIDATE or self.vote.node_id != self.id:
            return False
        self.vote = saved
        self.state = self._follower_state()
        self.leader_id = None
        self._clear_leader_state()
        self._reset_election_deadline()
        return True

    # -------------------------------------------------------------- storage

    cpdef log_flushed(self, long long term, long long index):
        """The local log store has made everything up to (term, index) durable."""
        if index <= self.flushed or self.log.term_at(index) != term:
            # Old news, or an entry that has since been truncated.
            return
        cdef bint was_held = self.state == S_LEADER and replication.first_entries_held(self)
        self.flushed = index
        if was_held and not replication.first_entries_held(self):
            replication.replicate_all(self)
        # The leader's flush is its own ack; either way, entries committed
        # meanwhile (possibly by followers alone) may now be applied here.
        if self.state == S_LEADER and self.quorum.update(self.id, index):
            self._maybe_commit()
        self._maybe_apply()

    # ------------------------------------------------------------ snapshots

    def snapshot_built(self, SnapshotMeta meta):
        """The state machine has a new snapshot covering up to
        meta.last_log_index; purge the log below it (keeping keep_logs)."""
        if self.snapshot_meta is None or meta.last_log_index > self.snapshot_meta.last_log_index:
            self.snapshot_meta = meta
        snapshots.purge_upto(self, meta.last_log_index - self.keep_logs)

    def purge_log(self, long long upto):
        """Deletes log entries up to `upto`, but never one that is not in a
        snapshot or not applied yet."""
        snapshots.purge_upto(self, upto)

    def handle_install_snapshot(self, InstallSnapshotRequest req, double now):
        """A chunk of a snapshot from the leader. Every chunk proves the
        leader alive; the last one (done) installs the snapshot: the log is
        kept after the snapshot's last entry if it matches there, and
        dropped entirely otherwise."""
        return snapshots.handle_install_snapshot(self, req, now)

    def handle_snapshot_response(self, target, InstallSnapshotRequest req,
                                 InstallSnapshotResponse resp, double now):
        """The target installed (or already had) the snapshot req.meta."""
        return snapshots.handle_snapshot_response(self, target, req, resp, now)

    def handle_snapshot_failure(self, target, double now):
        """Sending a snapshot failed: try again from the next heartbeat."""
        cdef Progress p
        self.now = now
        if self.state != S_LEADER:
            return
        p = self.progress.get(target)
        if p is None or p.state != SNAPSHOT:
            return
        p.failed()

    # ------------------------------------------------------------- election

    def handle_vote_request(self, VoteRequest req, double now):
        """Returns the VoteResponse; a granted vote is preceded by SaveVote
        in the output, and the runtime sends the response only after it."""
        return election.handle_vote_request(self, req, now)

    def handle_vote_response(self, target, VoteRequest req, VoteResponse resp, double now):
        return election.handle_vote_response(self, target, req, resp, now)

    # ---------------------------------------------------------- replication

    cpdef AppendEntriesResponse handle_append_entries(self, AppendEntriesRequest req, double now):
        """Returns the AppendEntriesResponse. On success the runtime sends it
        only once the local log is flushed up to resp.matched."""
        return replication.handle_append_entries(self, req, now)

    cpdef handle_append_response(self, target, AppendEntriesRequest req,
                                 AppendEntriesResponse resp, double now):
        return replication.handle_append_response(self, target, req, resp, now)

    cpdef handle_append_failure(self, target, AppendEntriesRequest req, double now):
        """An AppendEntries request got no answer (peer down, dropped, timed out)."""
        cdef Progress p
        self.now = now
        if self.state != S_LEADER or req.term != self.vote.term:
            return
        p = self.progress.get(target)
        if p is None or not req.entries or p.state == SNAPSHOT:
            return      # (a request sent before the snapshot started: it waits for that)
        p.failed()      # resend from the matching point, at the next heartbeat

    # --------------------------------------------------------------- views

    @property
    def last_log_index(self):
        return self.log.last_index()

    @property
    def log_empty(self):
        """Whether the log holds no entry and no snapshot (a new node's,
        or one that lost its disk): such a node votes only as
        engine_identity.may_vote_on_empty_log allows."""
        return self.log.is_empty()

    @property
    def last_log_term(self):
        return self.log.last_term()

    def last_log_id(self):
        return LogId(self.log.last_term(), self.log.last_index())

    def leader_node(self):
        return self._node_of(self.leader_id)

    @property
    def committed_membership(self):
        """The last membership entry at or below the commit index."""
        cdef Py_ssize_t i
        for i in range(len(self.membership_log) - 1, -1, -1):
            if self.membership_log[i][0] <= self.committed:
                return self.membership_log[i][1]
        return None

    @property
    def membership_index(self):
        """Index of the effective membership's entry (0: none in the log)."""
        return self._last_membership_index()

    @property
    def snapshot_log_id(self):
        if self.snapshot_meta is None:
            return None
        return LogId(self.snapshot_meta.last_log_term, self.snapshot_meta.last_log_index)

    @property
    def purged_log_id(self):
        if self.log.purged_index == 0:
            return None
        return LogId(self.log.purged_term, self.log.purged_index)

    def replication(self):
        """Leader only: follower id -> matched index; None elsewhere."""
        cdef Progress p
        if self.state != S_LEADER:
            return None
        return {p.node_id: p.matched for p in self.progress.values()}

    def progress_of(self, node_id):
        return self.progress.get(node_id)

    def entries(self, long long first, long long last):
        return self.log.entries_between(first, last)

    # ----------------------------------------------------------- internals

    cdef void _follow(self, long long term, leader_id, double now):
        """A message from the leader of `term` (>= ours): follow it."""
        if term > self.vote.term or self.vote.node_id is None:
            self._become_follower(Vote(term, leader_id, True), leader_id)
        elif (self.state != S_FOLLOWER and self.state != S_LEARNER) or self.leader_id != leader_id:
            self._become_follower(self.vote, leader_id)
        self._reset_election_deadline()
        self.prevoting = False
        # The leader's lease counts on us not voting for anyone else for a
        # while after hearing from it.
        self.vote_refuse_until = now + self.election_min

    cdef Progress _progress_for_answer(self, target, long long req_term, long long resp_term):
        """The target's progress if its answer to a request of ours still
        matters; a higher term in it makes this node step down first."""
        if resp_term > self.vote.term:
            self._become_follower(Vote(resp_term, None, False), None)
            return None
        if self.state != S_LEADER or req_term != self.vote.term:
            return None
        return self.progress.get(target)

    cdef void _record_match(self, Progress p, long long matched):
        """The follower holds everything up to `matched`: maybe commit more."""
        if p.acked(matched) and self.quorum is not None and p.node_id not in self.stale_members:
            if self.quorum.update(p.node_id, p.matched):
                self._maybe_commit()

    cdef void _check_proposable(self):
        if self.state != S_LEADER:
            raise ForwardToLeader(self.leader_id, self._node_of(self.leader_id))
        if self.transfer_to is not None:
            raise ForwardToLeader(self.transfer_to, self._node_of(self.transfer_to))

    cdef long long _last_membership_index(self):
        if self.membership_log:
            return self.membership_log[len(self.membership_log) - 1][0]
        return 0

    cdef bint _free_to_vote(self, candidate_id):
        """One vote per term: none cast yet in this term, or for this candidate."""
        return self.vote.node_id is None or self.vote.node_id == candidate_id

    cdef void _set_vote(self, Vote vote):
        if vote != self.vote:
            self.vote = vote
            self.output.append(new_save_vote(vote))

    cdef int _follower_state(self):
        if self.membership is not None and self.membership.is_voter(self.id):
            return S_FOLLOWER
        return S_LEARNER

    cdef bint _can_campaign(self):
        return (self.membership is not None and self.membership.is_voter(self.id)
                and not identity.self_stale(self))

    cdef object _node_of(self, node_id):
        if node_id is None or self.membership is None:
            return None
        return self.membership.nodes.get(node_id)

    cdef void _reset_election_deadline(self):
        self.election_deadline = self.now + self.election_min + \
            (self.election_max - self.election_min) * float(self.rng())

    cdef void _become_follower(self, Vote vote, leader_id):
        # The election timer restarts on becoming a follower (as in etcd's
        # becomeFollower): a deposed leader whose old deadline has long passed
        # must not campaign at once against the leader that just replaced it.
        if self.state == S_LEADER or self.state == S_CANDIDATE or vote.term != self.vote.term:
            self._reset_election_deadline()
        self._set_vote(vote)
        self.state = self._follower_state()
        self.leader_id = leader_id
        self._clear_leader_state()

    cdef void _clear_leader_state(self):
        self.progress = {}
        self.quorum = None
        self.seq_quorum = None
        self.granted = set()
        self.transfer_to = None
        self.prevoting = False
        self.pre_granted = set()
        self.learned = {}
        self.seen = {}
        self.stale_members = set()

    cdef void _append_local(self, list entries):
        cdef Entry e
        self.log.extend(entries)
        for e in entries:
            if e.kind == MEMBERSHIP:
                self._membership_appended(e)
        self.output.append(new_append(entries))

    cdef void _membership_appended(self, Entry e):
        # A membership entry is in force as soon as it is in the log.
        self.membership_log.append((e.index, e._payload))
        self.membership = e._payload
        self._membership_changed()

    cdef void _truncate(self, long long since):
        if since <= self.committed:
            raise RaftError(f"node {self.id} was asked to delete committed entries from "
                            f"index {since} (committed {self.committed}); this breaks "
                            "Raft's log matching and must never happen")
        self.log.truncate(since)
        if self.flushed >= since:
            self.flushed = since - 1
        self.output.append(new_truncate(since))
        # A truncated membership entry is no longer in force: revert.
        if self.membership_log and self.membership_log[-1][0] >= since:
            while self.membership_log and self.membership_log[-1][0] >= since:
                self.membership_log.pop()
            self.membership = self.membership_log[-1][1] if self.membership_log else None
            self._membership_changed()

    cdef void _membership_changed(self):
        if self.state == S_LEADER:
            replication.rebuild_replication(self)
        elif self.state != S_CANDIDATE and self.state != S_SHUTDOWN:
            self.state = self._follower_state()

    cdef void _maybe_commit(self):
        cdef long long candidate = self.quorum.accepted
        if candidate <= self.committed:
            return
        if not self._commits_by_counting(candidate):
            return
        self.committed = candidate
        self._maybe_apply()
        if not self.membership.is_voter(self.id) and \
                self._last_membership_index() <= self.committed:
            transfer.step_down_removed(self)

    cdef bint _commits_by_counting(self, long long index):
        # Figure 8: only an entry of the current term is committed by counting.
        return self.log.term_at(index) == self.vote.term

    cdef void _maybe_apply(self):
        cdef long long upto = self.committed
        if upto > self.flushed:
            upto = self.flushed
        if upto > self.applying:
            entries = self.log.slice(self.applying + 1, upto)
            self.applying = upto
            self.output.append(new_apply(entries))

    # -------------------------------------------------------------- identity

    @property
    def identity_stale(self):
        """True if the membership records another storage incarnation for
        this node: its storage was wiped or replaced since it joined, so it
        may have forgotten its vote and what it acknowledged. It neither votes
        nor campaigns until it is removed and added back."""
        return identity.self_stale(self)

    def recorded_incarnation(self, node_id):
        """The incarnation the effective membership records for node_id, or None."""
        return identity.recorded_incarnations(self).get(node_id)
