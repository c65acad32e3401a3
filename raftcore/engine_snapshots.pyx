"""The engine's snapshots: installing one received from the leader, the
leader's side of a snapshot sent, and purging the log below a snapshot
(Raft paper, section 7).

Engine (engine.pyx) is one cdef class, and a cdef class is defined in one
module: its concerns are functions of the engine's state, one module each,
and its event methods call them (handle_install_snapshot here is the body of
Engine.handle_install_snapshot, whose docstring says what it does).
"""
from raftcore.engine cimport Engine, S_LEADER
from raftcore.types cimport LogId
from raftcore.progress cimport Progress, SNAPSHOT
from raftcore.messages cimport SnapshotMeta, InstallSnapshotRequest, InstallSnapshotResponse
from raftcore.commands cimport new_install_snapshot, new_purge
from raftcore cimport engine_replication as replication
from raftcore cimport engine_identity as identity


cdef object handle_install_snapshot(Engine e, InstallSnapshotRequest req, double now):
    cdef SnapshotMeta meta
    cdef long long si
    e.now = now
    if req.term < e.vote.term:
        return InstallSnapshotResponse(e.vote.term, e.incarnation)
    e._follow(req.term, req.leader_id, now)
    if not req.done:
        return InstallSnapshotResponse(e.vote.term, e.incarnation)
    meta = req.meta
    si = meta.last_log_index
    if si <= e.committed:
        # Already have all of it.
        return InstallSnapshotResponse(e.vote.term, e.incarnation)
    cdef long long drop_from = 0
    if e.log.term_at(si) == meta.last_log_term:
        keep = True
    else:
        keep = False
        if e.log.last_index() > e.log.purged_index:
            # Conflicting or missing: the whole log goes; the snapshot
            # replaces even committed entries, all of which it includes.
            drop_from = e.log.purged_index + 1
            e.log.truncate(drop_from)
    e.output.append(new_install_snapshot(meta, drop_from))
    e.snapshot_meta = meta
    e.output.append(new_purge(LogId(meta.last_log_term, si)))
    if keep:
        e.log.purge(si, meta.last_log_term)
    else:
        e.log.reset(si, meta.last_log_term)
        e.membership_log = []
    rebase_membership(e, si, meta.membership)
    if e.flushed < si:
        e.flushed = si
    e.committed = si
    e.applying = si
    e._maybe_apply()
    return InstallSnapshotResponse(e.vote.term, e.incarnation)


cdef object handle_snapshot_response(Engine e, target, InstallSnapshotRequest req,
                                     InstallSnapshotResponse resp, double now):
    e.now = now
    cdef Progress p = e._progress_for_answer(target, req.term, resp.term)
    if p is None:
        return
    cdef Progress answered = p
    identity.answer_counts(e, target, resp.incarnation)
    p = e.progress.get(target)
    if p is None or p is not answered:
        return      # reset meanwhile: the target restarted on new storage
    if p.state == SNAPSHOT:
        p.snapshot_done()
    e._record_match(p, req.meta.last_log_index)
    if e.state == S_LEADER:
        replication.send_while_open(e, p)


cdef void purge_upto(Engine e, long long upto):
    # Never purge what no snapshot holds, nor what is not applied yet.
    if e.snapshot_meta is None:
        return
    if upto > e.snapshot_meta.last_log_index:
        upto = e.snapshot_meta.last_log_index
    if upto > e.applying:
        upto = e.applying
    if upto > e.log.last_index():
        upto = e.log.last_index()
    if upto <= e.log.purged_index:
        return
    cdef long long term = e.log.term_at(upto)
    e.log.purge(upto, term)
    rebase_membership(e, upto, None)
    e.output.append(new_purge(LogId(term, upto)))


cdef void rebase_membership(Engine e, long long index, base):
    """Membership entries up to `index` are gone from the log: keep the
    last of them (or `base`, from a snapshot) as the base at `index`."""
    cdef list kept = []
    last_before = base
    for item in e.membership_log:
        if item[0] <= index:
            if base is None:
                last_before = item[1]
        else:
            kept.append(item)
    if last_before is not None:
        kept.insert(0, (index, last_before))
    e.membership_log = kept
    new = kept[len(kept) - 1][1] if kept else None
    if new is not e.membership:
        e.membership = new
        e._membership_changed()
