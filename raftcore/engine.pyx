"""The Raft engine: a deterministic step function with no I/O.

Events come in as method calls (client writes, RPC requests and responses,
"log flushed up to X", timer ticks carrying the current time); the engine
updates its state and appends commands (raftcore.commands: SaveVote, Append,
Truncate, SendAppend, SendVote, Apply, SendTransfer, SendSnapshot,
InstallSnapshot, Purge; each documented there) to `self.output`, which the
runtime takes with take_commands() and executes in order.

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
then taken from its answers).
"""
import dataclasses

cimport cython
from libc.math cimport INFINITY
from raftcore.types cimport LogId, Vote, Entry, make_entry, BLANK, NORMAL, MEMBERSHIP
from raftcore.log cimport RaftLog
from raftcore.membership cimport Membership
from raftcore.quorum cimport QuorumTracker
from raftcore.progress cimport Progress, PROBE, REPLICATE, SNAPSHOT
from raftcore.messages cimport (
    AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse, TransferLeaderRequest,
    SnapshotMeta, InstallSnapshotRequest, InstallSnapshotResponse)
from raftcore.commands cimport (
    new_save_vote, new_append, new_truncate, new_send_append, new_send_vote, new_apply,
    new_send_transfer, new_send_snapshot, new_install_snapshot, new_purge)

from raftcore.errors import ForwardToLeader, NotAllowed, RaftError

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
                self.membership_log.append((e.index, e.payload))
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
        if self.log.last_index() != 0 or self.log.purged_index != 0 or self.vote.term != 0:
            raise NotAllowed(
                f"node {self.id} is already initialized (last log index "
                f"{self.log.last_index()}, term {self.vote.term}); "
                "initialize only a fresh node")
        cdef Entry first = make_entry(0, 1, MEMBERSHIP, membership)
        self._append_local([first])
        self.state = self._follower_state()
        if elect and membership.is_voter(self.id):
            self._start_election(False)

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
            if self.check_quorum and self._quorum_silent(now):
                # No quorum heard from for an election timeout: this leader
                # may be cut off; stop taking writes and step down.
                self._become_follower(self.vote, None)
                return
            if now >= self.heartbeat_deadline and self.heartbeat_enabled:
                self._maybe_pin(False)
                self._broadcast_heartbeat()
        elif now >= self.election_deadline:
            if self.elect_enabled and self._can_campaign() and not self.storage_full:
                self._campaign()
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
        if self._self_stale():
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
        self._start_election(False)

    def trigger_heartbeat(self, double now):
        """Sends a heartbeat to every follower now."""
        self.now = now
        if self.state != S_LEADER:
            raise NotAllowed(f"node {self.id} is not the leader; only a leader sends heartbeats")
        self._broadcast_heartbeat()

    def shutdown(self):
        self.state = S_SHUTDOWN
        self.progress = {}

    # ------------------------------------------------------------ client I/O

    cpdef long long client_write(self, list payloads, double now) except? -1:
        """Appends one entry per payload (a batch), starts replicating it and
        returns the index of the first one. Raises ForwardToLeader on a
        node that is not the leader."""
        cdef long long first, index, term
        cdef Py_ssize_t i, n = len(payloads)
        cdef list entries
        self.now = now
        self._check_proposable()
        term = self.vote.term
        first = self.log.last_index() + 1
        entries = [None] * n
        for i in range(n):
            entries[i] = make_entry(term, first + i, NORMAL, payloads[i])
        self._append_local(entries)
        self._replicate_all()
        return first

    def change_membership(self, Membership membership, double now):
        """Appends a membership entry (in force at once) and replicates it;
        returns its index. One change at a time: NotAllowed while the last
        membership entry is not committed."""
        self.now = now
        self._check_proposable()
        cdef long long pending = self._last_membership_index()
        if pending > self.committed:
            raise NotAllowed(
                f"a membership change is in progress (entry {pending} is not committed "
                "yet); wait for it to commit before the next change")
        cdef long long index = self.log.last_index() + 1
        membership = self._with_incarnations(membership)
        self.learned = {}       # recorded now (or no longer members)
        self._append_local([make_entry(self.vote.term, index, MEMBERSHIP, membership)])
        self._replicate_all()
        return index

    # ---------------------------------------------------------------- reads

    def read_index(self, double now):
        """Leader: starts confirming leadership for a linearizable read.
        Returns (read_index, seq): the read may proceed once confirmed_seq
        reaches seq (a quorum answered this round) and the state machine has
        applied read_index. Raises ForwardToLeader elsewhere."""
        self.now = now
        self._check_proposable()
        cdef long long seq = self._broadcast_heartbeat()
        return self._read_point(), seq

    def lease_read(self, double now):
        """Leader: the read index if the leader lease holds now (no round
        trip needed), else -1. Raises ForwardToLeader elsewhere."""
        self.now = now
        self._check_proposable()
        if self._lease_valid(now):
            return self._read_point()
        return -1

    @property
    def confirmed_seq(self):
        """The latest heartbeat round a quorum has answered (leader only)."""
        if self.state != S_LEADER or self.seq_quorum is None:
            return 0
        return self.seq_quorum.accepted

    def lease_valid(self, double now):
        return self.state == S_LEADER and self._lease_valid(now)

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
        self.now = now
        if self.state != S_LEADER:
            raise ForwardToLeader(self.leader_id, self._node_of(self.leader_id))
        if target == self.id:
            return
        if not self.membership.is_voter(target):
            raise NotAllowed(f"node {target} is not a voter of {self.membership!r}; "
                             "leadership can only go to a voter")
        self.transfer_to = target
        self.transfer_deadline = now + self.election_max
        self._maybe_send_transfer()

    def handle_transfer_leader(self, TransferLeaderRequest req, double now):
        """The leader asks this node to campaign now (it has the whole log)."""
        self.now = now
        if req.term != self.vote.term or req.leader_id != self.leader_id:
            return
        if not self._can_campaign() or self.log.last_index() < req.last_log_index \
                or self.storage_full:
            return
        self._start_election(True)

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
        self.flushed = index
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
        self._purge_upto(meta.last_log_index - self.keep_logs)

    def purge_log(self, long long upto):
        """Deletes log entries up to `upto`, but never one that is not in a
        snapshot or not applied yet."""
        self._purge_upto(upto)

    def handle_install_snapshot(self, InstallSnapshotRequest req, double now):
        """A chunk of a snapshot from the leader. Every chunk proves the
        leader alive; the last one (done) installs the snapshot: the log is
        kept after the snapshot's last entry if it matches there, and
        dropped entirely otherwise."""
        cdef SnapshotMeta meta
        cdef long long si
        self.now = now
        if req.term < self.vote.term:
            return InstallSnapshotResponse(self.vote.term, self.incarnation)
        self._follow(req.term, req.leader_id, now)
        if not req.done:
            return InstallSnapshotResponse(self.vote.term, self.incarnation)
        meta = req.meta
        si = meta.last_log_index
        if si <= self.committed:
            # Already have all of it.
            return InstallSnapshotResponse(self.vote.term, self.incarnation)
        cdef long long drop_from = 0
        if self.log.term_at(si) == meta.last_log_term:
            keep = True
        else:
            keep = False
            if self.log.last_index() > self.log.purged_index:
                # Conflicting or missing: the whole log goes; the snapshot
                # replaces even committed entries, all of which it includes.
                drop_from = self.log.purged_index + 1
                self.log.truncate(drop_from)
        self.output.append(new_install_snapshot(meta, drop_from))
        self.snapshot_meta = meta
        self.output.append(new_purge(LogId(meta.last_log_term, si)))
        if keep:
            self.log.purge(si, meta.last_log_term)
        else:
            self.log.reset(si, meta.last_log_term)
            self.membership_log = []
        self._rebase_membership(si, meta.membership)
        if self.flushed < si:
            self.flushed = si
        self.committed = si
        self.applying = si
        self._maybe_apply()
        return InstallSnapshotResponse(self.vote.term, self.incarnation)

    def handle_snapshot_response(self, target, InstallSnapshotRequest req,
                                 InstallSnapshotResponse resp, double now):
        """The target installed (or already had) the snapshot req.meta."""
        self.now = now
        cdef Progress p = self._progress_for_answer(target, req.term, resp.term)
        if p is None:
            return
        cdef Progress answered = p
        self._answer_counts(target, resp.incarnation)
        p = self.progress.get(target)
        if p is None or p is not answered:
            return      # reset meanwhile: the target restarted on new storage
        if p.state == SNAPSHOT:
            p.snapshot_done()
        self._record_match(p, req.meta.last_log_index)
        if self.state == S_LEADER:
            self._send_while_open(p)

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
        self.now = now
        cdef bint granted = False
        if self._self_stale():
            # This node may have forgotten a vote it cast in req.term.
            return VoteResponse(self.vote.term, False, self.id, self.incarnation)
        if req.term < self.vote.term or self.storage_full:
            # storage_full: a vote counts only once saved, and it cannot be;
            # not even the term is adopted (saving it would fail too).
            return VoteResponse(self.vote.term, False, self.id, self.incarnation)
        if not req.transfer and req.candidate_id != self.leader_id and (
                now < self.vote_refuse_until
                or (self.state == S_LEADER and self._lease_valid(now))):
            # A leader may be counting on this node for its lease: refuse,
            # and do not even adopt the higher term (so a removed or
            # partitioned node cannot depose a healthy leader).
            return VoteResponse(self.vote.term, False, self.id, self.incarnation)
        cdef long long my_last_term = self.log.last_term()
        cdef bint up_to_date = (req.last_log_term > my_last_term or (
            req.last_log_term == my_last_term and req.last_log_index >= self.log.last_index()))
        if req.pre_vote:
            # Would we vote in req.term? Answer without changing anything.
            return VoteResponse(self.vote.term, req.term > self.vote.term and up_to_date, self.id,
                                self.incarnation)
        if req.term > self.vote.term:
            self._become_follower(Vote(req.term, None, False), None)
        if self._free_to_vote(req.candidate_id) and up_to_date and self.state != S_LEADER:
            granted = True
            self._set_vote(Vote(req.term, req.candidate_id, False))
            self._reset_election_deadline()
        return VoteResponse(self.vote.term, granted, self.id, self.incarnation)

    def handle_vote_response(self, target, VoteRequest req, VoteResponse resp, double now):
        self.now = now
        if resp.term > self.vote.term and not (req.pre_vote and resp.granted):
            self._become_follower(Vote(resp.term, None, False), None)
            return
        pinned = self._pins().get(target)
        if pinned is not None and pinned != resp.incarnation:
            return      # the voter's storage was replaced: it may have voted in this term
        if req.pre_vote:
            if not self.prevoting or req.term != self.vote.term + 1 or not resp.granted:
                return
            self.pre_granted.add(target)
            if self.membership.is_quorum(self.pre_granted):
                self._start_election(False)
            return
        if self.state != S_CANDIDATE or req.term != self.vote.term or not resp.granted:
            return
        self.granted.add(target)
        if self.membership.is_quorum(self.granted):
            self._become_leader()

    # ---------------------------------------------------------- replication

    cpdef AppendEntriesResponse handle_append_entries(self, AppendEntriesRequest req, double now):
        """Returns the AppendEntriesResponse. On success the runtime sends it
        only once the local log is flushed up to resp.matched."""
        cdef long long prev, my_prev_term, conflict_at, last
        cdef Py_ssize_t i, n
        cdef Entry e
        self.now = now
        if req.term < self.vote.term:
            return AppendEntriesResponse(self.vote.term, False, 0, 0, 0, self.incarnation)
        if self.state == S_LEADER and req.term == self.vote.term:
            raise RaftError(f"node {self.id} is leader of term {req.term} and received "
                            f"entries from {req.leader_id!r} in the same term: two leaders "
                            "in one term would break election safety")
        self._follow(req.term, req.leader_id, now)

        prev = req.prev_log_index
        if prev > self.log.last_index():
            return AppendEntriesResponse(self.vote.term, False, 0, self.log.last_index() + 1, 0,
                                         self.incarnation)
        if prev >= self.log.purged_index:
            my_prev_term = self.log.term_at(prev)
            if my_prev_term != req.prev_log_term:
                return AppendEntriesResponse(
                    self.vote.term, False, 0, self.log.first_index_of_term_at(prev), my_prev_term,
                    self.incarnation)

        # Skip the entries we already hold (matching, or covered by a purge),
        # truncate from the first conflict, append the rest.
        entries = req.entries
        n = len(entries)
        i = 0
        while i < n:
            e = <Entry>entries[i]
            if e.index <= self.log.purged_index:
                i += 1
                continue
            if e.index > self.log.last_index():
                break
            if self.log.term_at(e.index) != e.term:
                self._truncate(e.index)
                break
            i += 1
        if i < n:
            self._append_local(entries[i:] if i else entries)

        last = prev + n
        # Commit only what this request proved to match the leader's log.
        if req.leader_commit > self.committed and last > self.committed:
            self.committed = min(req.leader_commit, last)
            self._maybe_apply()
        return AppendEntriesResponse(self.vote.term, True, last, 0, 0, self.incarnation)

    cpdef handle_append_response(self, target, AppendEntriesRequest req,
                                 AppendEntriesResponse resp, double now):
        cdef long long hint, t
        self.now = now
        cdef Progress p = self._progress_for_answer(target, req.term, resp.term)
        if p is None:
            return
        if self._answer_counts(target, resp.incarnation):
            # Any answer in our term shows the target still follows us.
            self.seq_quorum.update(target, req.seq)
        p = self.progress.get(target)
        if p is None:
            return
        if resp.success:
            self._record_match(p, resp.matched)
            if self.state != S_LEADER:
                return      # the commit removed this leader from the voters
            self._send_while_open(p)
            if self.transfer_to == target:
                self._maybe_send_transfer()
            if self.learned:
                self._maybe_pin(True)
            return
        if p.state == SNAPSHOT:
            # The follower lacks what the snapshot on its way brings; only
            # that snapshot's outcome decides what to send next.
            return
        if req.prev_log_index <= p.matched:
            # Refused before an earlier request (reordered) made the log
            # match: what it carried was not taken. Resend from the match,
            # or the leader would wait forever for entries it thinks in flight.
            p.rejected(p.matched + 1)
            self._send_while_open(p)
            return
        hint = resp.conflict_index
        if resp.conflict_term > 0:
            # Skip the follower's whole conflicting term at once; if we hold
            # that term too, resume right after our last entry of it.
            t = self.log.last_index_of_term(resp.conflict_term)
            if t > 0:
                hint = t + 1
        if hint > req.prev_log_index:
            hint = req.prev_log_index
        if hint < 1:
            hint = 1
        p.rejected(hint)
        self._send_while_open(p)

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

    cdef void _purge_upto(self, long long upto):
        # Never purge what no snapshot holds, nor what is not applied yet.
        if self.snapshot_meta is None:
            return
        if upto > self.snapshot_meta.last_log_index:
            upto = self.snapshot_meta.last_log_index
        if upto > self.applying:
            upto = self.applying
        if upto > self.log.last_index():
            upto = self.log.last_index()
        if upto <= self.log.purged_index:
            return
        cdef long long term = self.log.term_at(upto)
        self.log.purge(upto, term)
        self._rebase_membership(upto, None)
        self.output.append(new_purge(LogId(term, upto)))

    cdef void _rebase_membership(self, long long index, base):
        """Membership entries up to `index` are gone from the log: keep the
        last of them (or `base`, from a snapshot) as the base at `index`."""
        cdef list kept = []
        last_before = base
        for item in self.membership_log:
            if item[0] <= index:
                if base is None:
                    last_before = item[1]
            else:
                kept.append(item)
        if last_before is not None:
            kept.insert(0, (index, last_before))
        self.membership_log = kept
        new = kept[len(kept) - 1][1] if kept else None
        if new is not self.membership:
            self.membership = new
            self._membership_changed()

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

    cdef long long _read_point(self):
        # A new leader learns the true commit point only by committing an
        # entry of its term: until then its blank entry is the read point.
        if self.committed > self.term_start_index:
            return self.committed
        return self.term_start_index

    cdef double _quorum_contact_time(self):
        """Send time of the latest round a quorum answered; -inf if unknown."""
        cdef long long acc
        if self.seq_quorum is None:
            return -1e300
        acc = self.seq_quorum.accepted
        if acc <= 0 or self.hb_seq - acc >= SEQ_RING:
            return -1e300
        return self.seq_times[acc % SEQ_RING]

    cdef bint _lease_valid(self, double now):
        if self.transfer_to is not None or self.lease_forfeited:
            return False
        return now < self._quorum_contact_time() + self.lease_duration

    cdef bint _quorum_silent(self, double now):
        cdef double t = self._quorum_contact_time()
        if t < self.leader_since:
            t = self.leader_since     # nothing answered yet: count from the start
        return now - t > self.election_max

    cdef void _maybe_send_transfer(self):
        cdef Progress p = self.progress.get(self.transfer_to)
        if p is None or p.matched < self.log.last_index():
            return
        self.lease_forfeited = True
        self.output.append(new_send_transfer(self.transfer_to, TransferLeaderRequest(
            self.vote.term, self.id, self.log.last_index(), self.cluster_id)))

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
                and not self._self_stale())

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

    cdef void _campaign(self):
        """Election timeout: a pre-vote round first if enabled, else an election."""
        if not self.pre_vote:
            self._start_election(False)
            return
        self._reset_election_deadline()
        self.prevoting = True
        self.pre_granted = {self.id}
        if self.membership.is_quorum(self.pre_granted):
            self._start_election(False)
            return
        cdef VoteRequest req = VoteRequest(self.vote.term + 1, self.id, self.log.last_term(),
                                           self.log.last_index(), True, False, self.cluster_id)
        for target in sorted(self.membership.voter_ids):
            if target != self.id:
                self.output.append(new_send_vote(target, req))

    cdef void _start_election(self, bint transfer):
        self._set_vote(Vote(self.vote.term + 1, self.id, False))
        self.state = S_CANDIDATE
        self.leader_id = None
        self._clear_leader_state()
        self.granted = {self.id}
        self._reset_election_deadline()
        if self.membership.is_quorum(self.granted):
            self._become_leader()
            return
        cdef VoteRequest req = VoteRequest(self.vote.term, self.id, self.log.last_term(),
                                           self.log.last_index(), False, transfer, self.cluster_id)
        for target in sorted(self.membership.voter_ids):
            if target != self.id:
                self.output.append(new_send_vote(target, req))

    cdef void _become_leader(self):
        self._set_vote(Vote(self.vote.term, self.id, True))
        self.state = S_LEADER
        self.leader_id = self.id
        self.granted = set()
        self.leader_since = self.now
        self.lease_forfeited = False
        self._rebuild_replication()
        # A blank entry of the new term lets the leader commit (and learn the
        # commit point of) everything before it (Raft paper, section 8).
        self.term_start_index = self.log.last_index() + 1
        self._append_local([make_entry(self.vote.term, self.term_start_index, BLANK, None)])
        self._broadcast_heartbeat()

    cdef void _rebuild_replication(self):
        """Progress for every other member and a quorum tracker for the
        effective membership; keeps what is known of existing followers."""
        cdef Progress p
        old = self.progress
        self.progress = {}
        next_index = self.log.last_index() + 1
        for node_id in sorted(self.membership.nodes):
            if node_id == self.id:
                continue
            p = old.get(node_id)
            if p is None:
                p = Progress(node_id, next_index, self.max_inflight)
            self.progress[node_id] = p
        self._recount_commit_quorum()
        self.seq_quorum = self._carried_seq_quorum()

    cdef QuorumTracker _carried_seq_quorum(self):
        """The heartbeat-round tracker (read confirmation, lease, check_quorum)
        for the voter sets now in force. A voter that stays keeps the rounds
        it answered: it did answer them, and forgetting them would look like
        a silent quorum to check_quorum. A voter added answered none as a
        voter, a removed one no longer counts, and answers under another
        incarnation than the membership records count for nothing."""
        cdef QuorumTracker old = self.seq_quorum
        cdef QuorumTracker carried = QuorumTracker(self.membership.configs)
        carried.update(self.id, self.hb_seq)
        if old is None:
            return carried
        pins = self._pins()
        for voter in self.membership.voter_ids:
            answered = old.value_of(voter)      # None: not a voter before
            if not answered or voter == self.id:
                continue
            pinned = pins.get(voter)
            if pinned is None or pinned == self.seen.get(voter):
                carried.update(voter, answered)
        return carried

    cdef void _recount_commit_quorum(self):
        """The commit quorum from what each follower holds, leaving out the
        members answering from other storage than the membership records."""
        cdef Progress p
        self.quorum = QuorumTracker(self.membership.configs)
        self.quorum.update(self.id, self.flushed)
        for p in self.progress.values():
            if p.matched and p.node_id not in self.stale_members:
                self.quorum.update(p.node_id, p.matched)

    cdef void _append_local(self, list entries):
        cdef Entry e
        self.log.extend(entries)
        for e in entries:
            if e.kind == MEMBERSHIP:
                self._membership_appended(e)
        self.output.append(new_append(entries))

    cdef void _membership_appended(self, Entry e):
        # A membership entry is in force as soon as it is in the log.
        self.membership_log.append((e.index, e.payload))
        self.membership = e.payload
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
            self._rebuild_replication()
        elif self.state != S_CANDIDATE and self.state != S_SHUTDOWN:
            self.state = self._follower_state()

    cdef void _replicate_all(self):
        cdef Progress p
        for p in self.progress.values():
            self._send_while_open(p)

    cdef void _send_while_open(self, Progress p):
        """Sends entries to p while its window has room."""
        cdef long long last = self.log.last_index()
        while p.next_index <= last and not p.window_full():
            self._send_entries(p)

    cdef void _send_entries(self, Progress p):
        cdef long long prev = p.next_index - 1
        if prev < self.log.purged_index:
            # The entries the follower needs are purged: send the snapshot
            # (the runtime builds one first if the state machine has none).
            p.snapshot_started(self.log.purged_index)
            self.output.append(new_send_snapshot(p.node_id))
            return
        cdef long long end = self._batch_end(p.next_index)
        cdef AppendEntriesRequest req = AppendEntriesRequest(
            self.vote.term, self.id, self.log.term_at(prev), prev,
            self.log.slice(p.next_index, end), self.committed, self.hb_seq, self.cluster_id)
        p.sent(end)
        self.output.append(new_send_append(p.node_id, req))

    cdef long long _batch_end(self, long long first):
        """Last index of a batch starting at `first`, capped by entry count and bytes."""
        cdef long long last = self.log.last_index()
        cdef long long end = first + self.max_payload_entries - 1
        cdef long long total = 0, i
        if end > last:
            end = last
        for i in range(first, end + 1):
            total += self.log.get(i).size
            if total > self.max_payload_bytes and i > first:
                return i - 1
        return end

    cdef long long _broadcast_heartbeat(self):
        """Sends a request of a new heartbeat round to every follower;
        returns the round's number."""
        cdef Progress p
        cdef long long prev
        self.heartbeat_deadline = self.now + self.heartbeat_interval
        self.hb_seq += 1
        self.seq_times[self.hb_seq % SEQ_RING] = self.now
        if self.seq_quorum is not None:
            self.seq_quorum.update(self.id, self.hb_seq)
        for p in self.progress.values():
            if p.state == PROBE and p.next_index <= self.log.last_index() and \
                    p.next_index > self.log.purged_index:
                # Probing (or resuming after a lost request): once per
                # heartbeat, resend from the next index. A duplicate of a
                # probe still out is harmless. (A follower that needs the
                # snapshot gets the plain heartbeat: its answer starts the
                # snapshot, so none is streamed to a node that is down.)
                p.probe_sent = False
                self._send_entries(p)
                continue
            # An empty request at the point known to match: keeps the
            # follower's timer reset and carries the commit index.
            prev = p.matched
            if prev < self.log.purged_index:
                prev = self.log.purged_index
            self.output.append(new_send_append(p.node_id, AppendEntriesRequest(
                self.vote.term, self.id, self.log.term_at(prev), prev, [],
                min(self.committed, prev), self.hb_seq, self.cluster_id)))
        return self.hb_seq

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
            self._step_down_removed()

    cdef bint _commits_by_counting(self, long long index):
        # Figure 8: only an entry of the current term is committed by counting.
        return self.log.term_at(index) == self.vote.term

    cdef void _step_down_removed(self):
        """The committed membership no longer has this leader as a voter:
        hand leadership to the most up-to-date voter and step down."""
        cdef Progress p, best = None
        for p in self.progress.values():
            if self.membership.is_voter(p.node_id) and (best is None or p.matched > best.matched):
                best = p
        if best is not None and best.matched >= self.log.last_index():
            self.output.append(new_send_transfer(best.node_id, TransferLeaderRequest(
                self.vote.term, self.id, self.log.last_index(), self.cluster_id)))
        self._become_follower(self.vote, None)

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
        return self._self_stale()

    def recorded_incarnation(self, node_id):
        """The incarnation the effective membership records for node_id, or None."""
        return self._pins().get(node_id)

    cdef dict _pins(self):
        """Member id -> the incarnation the effective membership records."""
        if self.pins_of is not self.membership:
            self.pins = {}
            if self.membership is not None:
                for node_id, node in self.membership.nodes.items():
                    inc = getattr(node, "incarnation", None)
                    if inc is not None:
                        self.pins[node_id] = inc
            self.pins_of = self.membership
        return self.pins

    cdef bint _self_stale(self):
        pinned = self._pins().get(self.id)
        return pinned is not None and pinned != self.incarnation

    cdef bint _answer_counts(self, target, incarnation):
        """Leader: notes the incarnation `target` answered with. False if its
        answer must not count: the membership records another one."""
        cdef bint recount = False
        if target in self.seen and self.seen[target] != incarnation and target in self.progress:
            # The target restarted on other storage: what it acknowledged
            # before is gone. Replicate to it as to a new node (its old match
            # would have the leader resend past its log end for ever).
            self.progress[target] = Progress(target, self.log.last_index() + 1,
                                             self.max_inflight)
            recount = True
        self.seen[target] = incarnation
        pinned = self._pins().get(target)
        cdef bint counts = pinned is None or pinned == incarnation
        if pinned is None and incarnation is not None:
            self.learned[target] = incarnation
        if counts:
            self.stale_members.discard(target)
        elif target not in self.stale_members:
            self.stale_members.add(target)
            recount = True
        if recount:
            # Commit forgets its acknowledgements. (The heartbeat rounds it
            # answered stay counted: it did answer them; the next ones do not.)
            self._recount_commit_quorum()
        return counts

    cdef Membership _with_incarnations(self, Membership m):
        """`m` with the incarnations known for its nodes that it does not
        record: those the effective membership records (a node removed in
        between is not in it any more) and those members answered with."""
        known = dict(self.learned)
        known.update(self._pins())
        if self.incarnation is not None:
            known.setdefault(self.id, self.incarnation)
        nodes = dict(m.nodes)
        cdef bint changed = False
        for node_id, node in m.nodes.items():
            inc = known.get(node_id)
            if inc is None or getattr(node, "incarnation", 1) is not None \
                    or not dataclasses.is_dataclass(node):
                continue
            nodes[node_id] = dataclasses.replace(node, incarnation=inc)
            changed = True
        return Membership(m.configs, nodes) if changed else m

    cdef void _maybe_pin(self, bint all_known):
        """Leader: records in the membership the incarnations members answered
        with, once the leader's term has committed an entry and no other
        membership change is pending. One entry, same voters. With
        `all_known`, only once every member's is known (one entry for all;
        the heartbeat records what is known)."""
        cdef bint changed = False
        pins = self._pins()
        if not self.learned and (self.incarnation is None or self.id in pins):
            return
        if all_known:
            for node_id in self.membership.nodes:
                if node_id not in pins and node_id not in self.learned and node_id != self.id:
                    return
        if (self.membership.is_joint or self.transfer_to is not None
                or self.committed < self.term_start_index
                or self._last_membership_index() > self.committed):
            return
        learned = dict(self.learned)
        if self.incarnation is not None:
            learned[self.id] = self.incarnation
        nodes = dict(self.membership.nodes)
        for node_id, inc in learned.items():
            node = nodes.get(node_id)
            if node_id in pins or not dataclasses.is_dataclass(node) \
                    or not hasattr(node, "incarnation"):
                continue
            nodes[node_id] = dataclasses.replace(node, incarnation=inc)
            changed = True
        self.learned = {}
        if changed:
            self._append_local([make_entry(self.vote.term, self.log.last_index() + 1, MEMBERSHIP,
                                           Membership(self.membership.configs, nodes))])
            self._replicate_all()
