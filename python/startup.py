"""A node's engine at start: made from the node's Config, then restored
from its stores (the vote, the log, the commit point and what the state
machine holds, reconciled where a crash left them apart).

Plain Python: it runs once per node. RaftCore makes its engine with
new_engine, and its load() calls restore once the node's identity is loaded
(NodeIdentity.load), then executes the commands the engine emitted (the
committed entries not applied yet).
"""
import random
from typing import Any, Callable

from raftcore.errors import StorageError
from raftcore.types import LogId, Vote


def new_engine(engine_type: Callable[..., Any], node_id: Any, config: Any, now: float) -> Any:
    """An engine of `engine_type` (Engine, or a test's subclass of it) for
    node `node_id`, set up as `config` says; `now`: the loop's time."""
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**63)
    engine = engine_type(
        node_id,
        heartbeat_interval=config.heartbeat_interval,
        election_timeout_min=config.election_timeout_min,
        election_timeout_max=config.election_timeout_max,
        max_payload_entries=config.max_payload_entries,
        max_payload_bytes=config.max_payload_bytes,
        max_inflight=config.max_inflight,
        rng=random.Random(seed).random,
        now=now,
        lease_margin=config.lease_drift_margin,
        max_clock_drift=config.max_clock_drift,
        check_quorum=config.check_quorum,
        pre_vote=config.enable_pre_vote,
        keep_logs=config.max_in_snapshot_log_to_keep,
    )
    engine.heartbeat_enabled = config.enable_heartbeat
    engine.elect_enabled = config.enable_elect
    return engine


async def restore(core: Any) -> None:
    """Restores `core.engine` (a RaftCore's) from its log store and state
    machine, and what the node records they hold (last_applied, snapshot,
    purged). StorageError if the two cannot be reconciled."""
    vote = await core.log_store.read_vote()
    state = await core.log_store.get_log_state()
    purged = state.last_purged_log_id
    last = state.last_log_id
    first = (purged.index if purged else 0) + 1
    entries = []
    if last is not None and last.index >= first:
        entries = await core.log_store.read_entries(first, last.index)
    committed = await core.log_store.read_committed()
    applied, sm_membership = await core.sm.applied_state()
    snap = core.sm.get_current_snapshot()
    meta = snap.meta if snap is not None else None
    if purged is not None and (meta is None or meta.last_log_index < purged.index):
        raise StorageError(
            f"node {core.id}: the log is purged up to {purged} but the state machine's "
            f"snapshot covers only {meta.last_log_id if meta else 'nothing'}; the "
            "entries in between are lost. The state machine did not keep, across the "
            "restart, a snapshot its node purged the log behind: a StateMachine must "
            "write a snapshot durably before durable_snapshot() reports it, and load "
            "it when created again (see raftcore.storage.StateMachine). To bring the "
            "node back: fix the state machine, then replace this node's storage with "
            "empty storage and have the leader send it a snapshot (remove the node "
            "from the cluster and add it back), or restore its log store together with "
            "the state machine's snapshot files from the same moment")
    if applied is not None and purged is not None and applied.index < purged.index:
        raise StorageError(
            f"node {core.id}: the state machine applied only up to {applied} but the log "
            f"is purged up to {purged}; install its snapshot before starting")
    # The state machine may hold more than the log (a crash between
    # installing a snapshot and purging the log, say): what it holds
    # supersedes every entry up to there; later entries stay only if the
    # log matches at that point (openraft does the same).
    ahead = meta.last_log_id if meta is not None else None
    if applied is not None and (ahead is None or applied.index > ahead.index):
        ahead = applied
    if ahead is not None and ahead.index > (purged.index if purged else 0) and (
            last is None or ahead.index > last.index or
            entries[ahead.index - (purged.index if purged else 0) - 1].term != ahead.term):
        purged, entries = _purge_on_start(core, ahead, purged, entries)
    base = meta.membership if meta is not None else sm_membership
    core.last_applied = applied
    core.snapshot = meta.last_log_id if meta is not None else None
    core.purged = purged
    core.engine.restore(vote if vote is not None else Vote(0, None, False), purged, entries,
                        committed.index if committed else 0,
                        applied.index if applied else 0, base, meta)
    if core.engine.vote.term > 0:
        # We may have followed a leader until just now, and a lease of
        # its may count on us: refuse votes for an election timeout.
        core.engine.refuse_votes_until(core.loop.time() + core.config.election_timeout_min)


def _purge_on_start(core: Any, point: LogId, purged, entries):
    """The log does not reach, or conflicts at, what the state machine
    holds (`point`): drop the log up to there, and all of it on a conflict."""
    if entries:
        core.log_store.truncate_after(purged.index if purged else 0)
    core.log_store.purge(point)
    core.log.warning("node %s: the state machine holds up to %s, beyond or in conflict "
                     "with the log; the log is dropped up to there", core.id, point)
    return point, []
