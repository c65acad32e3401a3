"""The engine's identity rules: which storage incarnation the membership
records for each member, whether an answer counts, and recording the
incarnations members answered with (see "Identity" in engine.pyx).

Engine (engine.pyx) is one cdef class, and a cdef class is defined in one
module: its concerns are functions of the engine's state, one module each,
which its methods call.
"""
import dataclasses

from raftcore.types cimport make_entry, MEMBERSHIP
from raftcore.membership cimport Membership
from raftcore.messages cimport VoteRequest
from raftcore.progress cimport Progress
from raftcore cimport engine_replication as replication


cdef dict recorded_incarnations(Engine e):
    """Member id -> the incarnation the effective membership records."""
    if e.pins_of is not e.membership:
        e.pins = {}
        if e.membership is not None:
            for node_id, node in e.membership.nodes.items():
                inc = getattr(node, "incarnation", None)
                if inc is not None:
                    e.pins[node_id] = inc
        e.pins_of = e.membership
    return e.pins


cdef bint self_stale(Engine e):
    pinned = recorded_incarnations(e).get(e.id)
    return pinned is not None and pinned != e.incarnation


cdef frozenset NOBODY = frozenset()


cdef frozenset fresh_voters(Engine e):
    """The voters this node's vote requests may ask even on an empty log
    (VoteRequest.fresh): in a cluster's first elections, asked by the node
    that initialized it while its log is that first entry alone
    (untouched_initializer), all the others: no entry ever left that
    node, so nothing was acknowledged. Nobody else: any other voter with an empty
    log may be a member that lost its disk (may_vote_on_empty_log).

    (Not the voters a joint membership adds, although the candidate needs
    a majority of the old ones too: once the final membership is in force,
    entries commit on a majority of the new voters alone, which a wiped
    newcomer may have been part of; second review, finding S1. So voters
    added without a learner stage that never received an entry count as
    absent in elections until a leader reaches them.)"""
    if untouched_initializer(e):
        return e.membership.voter_ids - {e.id}
    return NOBODY


cdef bint untouched_initializer(Engine e):
    """Whether this node initialized the cluster and no leader has written to
    its log since: its log is the first entry alone, and that entry records
    this node's own incarnation (the one it made at initialize). With one
    initializing node, no entry then ever left it (it may have been
    elected, and crashed before its blank entry was durable).

    Two rules keep its log from becoming that entry alone again once a
    leader existed: a leader whose log was the first entry alone makes its
    own next entry durable before it sends any (first_entries_held; else
    followers could commit entries it then loses in a crash), and the
    first entry always travels with the next one (batch_end), so no other
    node holds it alone, wins an election with it and writes a different
    entry 2 that would truncate the initializer's. A store that keeps no
    incarnation (None, recorded as None) gets no protection from any of
    this: every such node with the first entry alone asks as an
    initializer would."""
    if e.log.last_index() != 1 or e.log.purged_index != 0:
        return False
    return recorded_incarnations(e).get(e.id) == e.incarnation


cdef bint may_vote_on_empty_log(Engine e, VoteRequest req):
    """Whether a node whose log is empty (no entry, no snapshot) may grant
    `req`. Such a node may be a member that lost its disk, with the entries
    it acknowledged; the record of its incarnation cannot stop it, as its
    own copy went with the disk and a candidate lagging behind may lack it
    (seed 17808671: a wiped voter elected a candidate that lacked entries
    the cluster had committed with the voter's old disk). So it grants only
    a request that counts it among the fresh voters (fresh_voters): no
    entry can have been acknowledged anywhere yet.

    Not even the candidate it voted for before. A rule that let it (so
    that a first leader that crashed before any entry left it could be
    elected again) was unsafe: a vote request of the first elections,
    delayed in the network, could reach a member after it lost its disk
    and plant such a vote for an initializer whose entries did leave it
    and that lacked entries the cluster committed with the member's old
    disk (review of session 16, finding H1). Counting such votes only when
    every voter grants was unsafe too (review of session 17: a candidate
    on an outdated voter set, and grants gathered over a long candidacy
    while members were wiped one after another). The price: a first
    leader that crashes before any entry reached another voter cannot be
    elected again (README "Identity"); first_leader_unheard keeps it from
    stepping down meanwhile.

    Once a leader's entries reach it, its log tells it whether the cluster
    recorded another incarnation for it (self_stale)."""
    return e.id in req.fresh


cdef bint first_leader_unheard(Engine e):
    """Leader: whether it is the cluster's first leader (its own term wrote
    every entry after the first) and no other voter has acknowledged an
    entry yet (a learner's or a stale member's acknowledgement votes for
    nobody). The other voters' logs may all be empty then, and their votes
    count only for an untouched initializer (may_vote_on_empty_log), which
    it is no longer: were it to step down for a silent quorum
    (check_quorum), no leader could be elected again. It leads on until a
    voter answers (with pre-vote off, a node that missed the first
    elections may still depose it by a higher term)."""
    cdef Progress p
    if e.log.purged_index != 0 or e.log.last_index() < 2 or e.log.term_at(2) != e.vote.term:
        return False
    for p in e.progress.values():
        if p.matched > 0 and e.membership.is_voter(p.node_id) \
                and p.node_id not in e.stale_members:
            return False
    return True


cdef bint answer_counts(Engine e, target, incarnation):
    """Leader: notes the incarnation `target` answered with. False if its
    answer must not count: the membership records another one."""
    cdef bint recount = False
    if target in e.seen and e.seen[target] != incarnation and target in e.progress:
        # The target restarted on other storage: what it acknowledged
        # before is gone. Replicate to it as to a new node (its old match
        # would have the leader resend past its log end for ever).
        e.progress[target] = Progress(target, e.log.last_index() + 1, e.max_inflight)
        recount = True
    e.seen[target] = incarnation
    pinned = recorded_incarnations(e).get(target)
    cdef bint counts = pinned is None or pinned == incarnation
    if pinned is None and incarnation is not None:
        e.learned[target] = incarnation
    if counts:
        e.stale_members.discard(target)
    elif target not in e.stale_members:
        e.stale_members.add(target)
        recount = True
    if recount:
        # Commit forgets its acknowledgements. (The heartbeat rounds it
        # answered stay counted: it did answer them; the next ones do not.)
        replication.recount_commit_quorum(e)
    return counts


cdef Membership with_incarnations(Engine e, Membership m):
    """`m` with the incarnations known for its nodes that it does not
    record: those the effective membership records (a node removed in
    between is not in it any more) and those members answered with."""
    known = dict(e.learned)
    known.update(recorded_incarnations(e))
    if e.incarnation is not None:
        known.setdefault(e.id, e.incarnation)
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


cdef void maybe_pin(Engine e, bint all_known):
    """Leader: records in the membership the incarnations members answered
    with, once the leader's term has committed an entry and no other
    membership change is pending. One entry, same voters. With
    `all_known`, only once every member's is known (one entry for all;
    the heartbeat records what is known)."""
    cdef bint changed = False
    pins = recorded_incarnations(e)
    if not e.learned and (e.incarnation is None or e.id in pins):
        return
    if all_known:
        for node_id in e.membership.nodes:
            if node_id not in pins and node_id not in e.learned and node_id != e.id:
                return
    if (e.membership.is_joint or e.transfer_to is not None
            or e.committed < e.term_start_index
            or e._last_membership_index() > e.committed):
        return
    learned = dict(e.learned)
    if e.incarnation is not None:
        learned[e.id] = e.incarnation
    nodes = dict(e.membership.nodes)
    for node_id, inc in learned.items():
        node = nodes.get(node_id)
        if node_id in pins or not dataclasses.is_dataclass(node) \
                or not hasattr(node, "incarnation"):
            continue
        nodes[node_id] = dataclasses.replace(node, incarnation=inc)
        changed = True
    e.learned = {}
    if changed:
        e._append_local([make_entry(e.vote.term, e.log.last_index() + 1, MEMBERSHIP,
                                       Membership(e.membership.configs, nodes))])
        replication.replicate_all(e)
