"""The engine's log replication: AppendEntries on the follower, answers on
the leader, the per-follower send window, heartbeat rounds and the commit
quorum (Raft paper, section 5.3).

Engine (engine.pyx) is one cdef class, and a cdef class is defined in one
module: its concerns are functions of the engine's state, one module each,
and its event methods call them (handle_append_entries here is the body of
Engine.handle_append_entries, whose docstring says what it does).
"""
from raftcore.engine cimport Engine, S_LEADER, SEQ_RING
from raftcore.types cimport Entry
from raftcore.quorum cimport QuorumTracker
from raftcore.progress cimport Progress, PROBE, SNAPSHOT
from raftcore.messages cimport AppendEntriesRequest, AppendEntriesResponse
from raftcore.commands cimport new_send_append, new_send_snapshot
from raftcore cimport engine_transfer as transfer
from raftcore cimport engine_identity as identity

from raftcore.errors import RaftError


cdef AppendEntriesResponse handle_append_entries(Engine e, AppendEntriesRequest req, double now):
    cdef long long prev, my_prev_term, conflict_at, last
    cdef Py_ssize_t i, n
    cdef Entry entry
    e.now = now
    if req.term < e.vote.term:
        return AppendEntriesResponse(e.vote.term, False, 0, 0, 0, e.incarnation)
    if e.state == S_LEADER and req.term == e.vote.term:
        raise RaftError(f"node {e.id} is leader of term {req.term} and received "
                        f"entries from {req.leader_id!r} in the same term: two leaders "
                        "in one term would break election safety")
    e._follow(req.term, req.leader_id, now)

    prev = req.prev_log_index
    if prev > e.log.last_index():
        return AppendEntriesResponse(e.vote.term, False, 0, e.log.last_index() + 1, 0,
                                     e.incarnation)
    if prev >= e.log.purged_index:
        my_prev_term = e.log.term_at(prev)
        if my_prev_term != req.prev_log_term:
            return AppendEntriesResponse(
                e.vote.term, False, 0, e.log.first_index_of_term_at(prev), my_prev_term,
                e.incarnation)

    # Skip the entries we already hold (matching, or covered by a purge),
    # truncate from the first conflict, append the rest.
    entries = req.entries
    n = len(entries)
    i = 0
    while i < n:
        entry = <Entry>entries[i]
        if entry.index <= e.log.purged_index:
            i += 1
            continue
        if entry.index > e.log.last_index():
            break
        if e.log.term_at(entry.index) != entry.term:
            e._truncate(entry.index)
            break
        i += 1
    if i < n:
        e._append_local(entries[i:] if i else entries)

    last = prev + n
    # Commit only what this request proved to match the leader's log.
    if req.leader_commit > e.committed and last > e.committed:
        e.committed = min(req.leader_commit, last)
        e._maybe_apply()
    return AppendEntriesResponse(e.vote.term, True, last, 0, 0, e.incarnation)


cdef object handle_append_response(Engine e, target, AppendEntriesRequest req,
                                   AppendEntriesResponse resp, double now):
    cdef long long hint, t
    e.now = now
    cdef Progress p = e._progress_for_answer(target, req.term, resp.term)
    if p is None:
        return
    if identity.answer_counts(e, target, resp.incarnation):
        # Any answer in our term shows the target still follows us.
        e.seq_quorum.update(target, req.seq)
    p = e.progress.get(target)
    if p is None:
        return
    if resp.success:
        e._record_match(p, resp.matched)
        if e.state != S_LEADER:
            return      # the commit removed this leader from the voters
        send_while_open(e, p)
        if e.transfer_to == target:
            transfer.maybe_send_transfer(e)
        if e.learned:
            identity.maybe_pin(e, True)
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
        send_while_open(e, p)
        return
    hint = resp.conflict_index
    if resp.conflict_term > 0:
        # Skip the follower's whole conflicting term at once; if we hold
        # that term too, resume right after our last entry of it.
        t = e.log.last_index_of_term(resp.conflict_term)
        if t > 0:
            hint = t + 1
    if hint > req.prev_log_index:
        hint = req.prev_log_index
    if hint < 1:
        hint = 1
    p.rejected(hint)
    send_while_open(e, p)


cdef void rebuild_replication(Engine e):
    """Progress for every other member and a quorum tracker for the
    effective membership; keeps what is known of existing followers."""
    cdef Progress p
    old = e.progress
    e.progress = {}
    next_index = e.log.last_index() + 1
    for node_id in sorted(e.membership.nodes):
        if node_id == e.id:
            continue
        p = old.get(node_id)
        if p is None:
            p = Progress(node_id, next_index, e.max_inflight)
        e.progress[node_id] = p
    recount_commit_quorum(e)
    e.seq_quorum = carried_seq_quorum(e)


cdef QuorumTracker carried_seq_quorum(Engine e):
    """The heartbeat-round tracker (read confirmation, lease, check_quorum)
    for the voter sets now in force. A voter that stays keeps the rounds
    it answered: it did answer them, and forgetting them would look like
    a silent quorum to check_quorum. A voter added answered none as a
    voter, a removed one no longer counts, and answers under another
    incarnation than the membership records count for nothing."""
    cdef QuorumTracker old = e.seq_quorum
    cdef QuorumTracker carried = QuorumTracker(e.membership.configs)
    carried.update(e.id, e.hb_seq)
    if old is None:
        return carried
    pins = identity.recorded_incarnations(e)
    for voter in e.membership.voter_ids:
        answered = old.value_of(voter)      # None: not a voter before
        if not answered or voter == e.id:
            continue
        pinned = pins.get(voter)
        if pinned is None or pinned == e.seen.get(voter):
            carried.update(voter, answered)
    return carried


cdef void recount_commit_quorum(Engine e):
    """The commit quorum from what each follower holds, leaving out the
    members answering from other storage than the membership records."""
    cdef Progress p
    e.quorum = QuorumTracker(e.membership.configs)
    e.quorum.update(e.id, e.flushed)
    for p in e.progress.values():
        if p.matched and p.node_id not in e.stale_members:
            e.quorum.update(p.node_id, p.matched)


cdef void replicate_all(Engine e):
    cdef Progress p
    for p in e.progress.values():
        send_while_open(e, p)


cdef bint first_entries_held(Engine e):
    """Whether this leader holds its entries back: its own log is durable
    up to the first entry only. Its log must never again be that entry
    alone once any follower may hold more (engine_identity.
    untouched_initializer): a crash would lose unflushed entries that
    followers committed. Whatever the term: a first leader deposed before
    its blank entry was durable, and elected again, must hold too (third
    review, F1). (A store that keeps no incarnation has no such protection
    to keep: nothing is held.)"""
    return e.flushed < 2 and e.incarnation is not None


cdef void send_while_open(Engine e, Progress p):
    """Sends entries to p while its window has room."""
    cdef long long last = e.log.last_index()
    if first_entries_held(e):
        return
    while p.next_index <= last and not p.window_full():
        send_entries(e, p)


cdef void send_entries(Engine e, Progress p):
    cdef long long prev = p.next_index - 1
    if prev < e.log.purged_index:
        # The entries the follower needs are purged: send the snapshot
        # (the runtime builds one first if the state machine has none).
        p.snapshot_started(e.log.purged_index)
        e.output.append(new_send_snapshot(p.node_id))
        return
    cdef long long end = batch_end(e, p.next_index)
    cdef AppendEntriesRequest req = AppendEntriesRequest(
        e.vote.term, e.id, e.log.term_at(prev), prev,
        e.log.slice(p.next_index, end), e.committed, e.hb_seq, e.cluster_id)
    p.sent(end)
    e.output.append(new_send_append(p.node_id, req))


cdef long long batch_end(Engine e, long long first):
    """Last index of a batch starting at `first`, capped by entry count and
    bytes; a batch of the first entry carries the second too, if there is
    one (engine_identity.untouched_initializer: no follower may hold the
    first entry alone)."""
    cdef long long last = e.log.last_index()
    cdef long long end = first + e.max_payload_entries - 1
    cdef long long least = 2 if first == 1 else first
    cdef long long total = 0, i
    if end < least:
        end = least
    if end > last:
        end = last
    for i in range(first, end + 1):
        total += e.log.get(i).size
        if total > e.max_payload_bytes and i > least:
            return i - 1
    return end


cdef long long broadcast_heartbeat(Engine e):
    """Sends a request of a new heartbeat round to every follower;
    returns the round's number."""
    cdef Progress p
    cdef long long prev
    e.heartbeat_deadline = e.now + e.heartbeat_interval
    e.hb_seq += 1
    e.seq_times[e.hb_seq % SEQ_RING] = e.now
    if e.seq_quorum is not None:
        e.seq_quorum.update(e.id, e.hb_seq)
    for p in e.progress.values():
        if p.state == PROBE and p.next_index <= e.log.last_index() and \
                p.next_index > e.log.purged_index and not first_entries_held(e):
            # Probing (or resuming after a lost request): once per
            # heartbeat, resend from the next index. A duplicate of a
            # probe still out is harmless. (A follower that needs the
            # snapshot gets the plain heartbeat: its answer starts the
            # snapshot, so none is streamed to a node that is down.)
            p.probe_sent = False
            send_entries(e, p)
            continue
        # An empty request at the point known to match: keeps the
        # follower's timer reset and carries the commit index.
        prev = p.matched
        if prev < e.log.purged_index:
            prev = e.log.purged_index
        e.output.append(new_send_append(p.node_id, AppendEntriesRequest(
            e.vote.term, e.id, e.log.term_at(prev), prev, [],
            min(e.committed, prev), e.hb_seq, e.cluster_id)))
    return e.hb_seq
