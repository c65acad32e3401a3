# cython: annotation_typing=False
"""The runtime of one node: feeds the engine and executes its commands.

Concurrency model (one thread, one event loop):
- The engine is stepped synchronously wherever an event arrives: a client
  batch, an RPC handler, an RPC response, a flush notification, a timer.
  Each step is atomic (no await inside), so the engine is always consistent.
- The commands it emits are executed in order by one executor at a time
  (`_busy`). Most commands need no await (append to the log store, send an
  RPC, apply on a synchronous state machine), so they run right where the
  event arrived: `_run_sync`. The first command that must be awaited (a vote
  save, an async apply) and everything after it go to `_deferred`, which the
  node's core task drains in order; nothing runs synchronously until it is
  empty, so command order is kept. Both paths run each command through one
  routine, `_execute`, which dispatches on the command's kind.
- Client writes are queued and moved into the engine as one batch per event
  loop iteration (a call_soon callback), so writers that run together share
  one append and one AppendEntries per follower.
  PendingWrites (pending_writes.pyx) holds them, from the door check to
  the answer.
- Snapshots are built, streamed to followers and received by
  SnapshotTransfer (snapshot_transfer.py), off the per-write path.
- Linearizable reads waiting for a quorum and Raft.wait() conditions are
  kept by ReadWaiters and MetricWaiters (waiters.pyx), checked after each
  round.
- RPCs: every AppendEntries first goes to the NetworkClient's
  `append_entries_nowait(req, reply)` (the fast path declared in
  raftcore.network.base), which a peer in the same process answers
  synchronously when it is idle (LocalRouter), and which TcpNetwork sends at
  once, handing the answer to `reply` as the reply frame is read. A write
  then commits and applies without any task switch besides waking its
  client. Declined, and for every other RPC, the request runs in a task of
  its own (pipelined).
- Compiled: this module is Cython. The per-write path (taking a batch,
  executing commands, answering clients) runs as C calls, and steps the
  engine through engine.pxd; what is off that path stays plain methods.
- A handler answers only after its commands ran: a granted vote after
  save_vote returned (durable), an AppendEntries success after the log is
  flushed up to what it reports as matched.
"""
cimport cython
from raftcore.engine cimport (Engine, S_CANDIDATE, S_FOLLOWER, S_LEADER, S_LEARNER,
                              S_SHUTDOWN)
from raftcore.messages cimport AppendEntriesRequest, AppendEntriesResponse
from raftcore.commands cimport (
    Command, SaveVote, Append, Truncate, SendAppend, SendVote, Apply, SendTransfer, SendSnapshot,
    InstallSnapshot, Purge, CMD_SAVE_VOTE, CMD_APPEND, CMD_TRUNCATE, CMD_SEND_APPEND,
    CMD_SEND_VOTE, CMD_APPLY, CMD_SEND_TRANSFER, CMD_SEND_SNAPSHOT, CMD_INSTALL_SNAPSHOT,
    CMD_PURGE)
from raftcore.pending_writes cimport PendingWrites
from raftcore.types cimport Entry, LogId, Vote
from raftcore.waiters cimport MetricWaiters, ReadWaiters

import asyncio
import inspect
import logging
import random
from collections import deque
from typing import Any, Callable, Optional

from raftcore.errors import (ClusterMismatch, Fatal, NoSpace, OutcomeUnknown, RaftError,
                             StorageError, is_space_error)
from raftcore.network.base import ReplyCallback
# ClientWriteResponse: importable from here too (raftcore.raft re-exports it).
from raftcore.pending_writes import ClientWriteResponse
from raftcore.peers import PeerClients
from raftcore.snapshot_transfer import SnapshotTransfer
from raftcore.storage.base import new_identity_token

_Future = asyncio.Future

#: A message whose term is more than this above the node's own is refused,
#: its term not adopted. No real cluster holds 2**32 elections a node missed;
#: a peer sending such a term is corrupt or hostile, and adopting it would
#: push the cluster toward the largest term the wire carries (2**62), where
#: a node can no longer campaign in a term its peers read (found by fuzzing).
cdef long long TERM_JUMP_LIMIT = 2**32

# What RaftCore._execute returns for a command that must wait for the core task.
cdef object _DEFER = object()


@cython.freelist(16)
cdef class _AppendAnswer:
    """The `reply` of an AppendEntries handed to a NetworkClient's
    append_entries_nowait: called once as reply(response, error), with no
    task per request."""
    cdef RaftCore core
    cdef object target
    cdef AppendEntriesRequest req

    def __init__(self, RaftCore core, target, AppendEntriesRequest req) -> None:
        self.core = core
        self.target = target
        self.req = req

    def __call__(self, resp, exc) -> None:
        self.core._append_replied(self.target, self.req, resp, exc)


@cython.freelist(16)
cdef class _FlushDone:
    """The on_flushed callback of one append: reports (term, index) durable."""
    cdef RaftCore core
    cdef long long term, index

    def __init__(self, RaftCore core, long long term, long long index) -> None:
        self.core = core
        self.term = term
        self.index = index

    def __call__(self, err) -> None:
        self.core._on_flushed(err, self.term, self.index)


@cython.no_gc_clear
cdef class RaftCore:
    """Executes one engine's commands against storage, network and state machine."""

    cdef public object id, config, network, log_store, sm, loop, executor, log
    cdef public Engine engine
    cdef bint _sm_async
    cdef object _store_append, _sm_apply      # log_store.append, sm.apply (looked up once)
    cdef object _rng
    cdef public bint tick_enabled
    # The last entry applied: kept as two numbers, made a LogId when asked
    # (no allocation per applied batch). term 0: nothing applied.
    cdef long long _applied_term, _applied_index
    # What the stores hold, as executed (the engine runs ahead of them while
    # commands wait to run): the newest snapshot, the purge point.
    cdef public object snapshot, purged
    cdef public bint stopped
    cdef public bint changing_membership     # a change_membership/add_learner is under way
    cdef public object _fatal
    cdef public object no_space               # NoSpace while the disk is full, else None
    cdef bint _log_full, _waiting_for_space   # the log store holds writes; a vote or
    #                                           snapshot install waits for space
    # executor state
    cdef bint _busy
    cdef object _deferred                     # deque: commands waiting for the core task
    cdef long long _cmds_taken                # commands taken from the engine so far
    cdef long long _cmds_done                 # commands executed so far
    cdef object _exec_waiters                 # deque: (commands-done target, future)
    # (index, future, AppendEntriesResponse or None): resolved once the log
    # is flushed up to index, with the response (an AppendEntries answer
    # waiting for its flush) or with None (wait_flushed).
    cdef list _flush_waiters
    # clients
    cdef PendingWrites _writes
    cdef MetricWaiters _metric_waiters
    cdef ReadWaiters _read_waiters
    # snapshots
    cdef long long _snap_every                # build a snapshot every N entries (-1: never)
    cdef object _snapshots                    # SnapshotTransfer: build, send, receive
    # network
    cdef object _peers                        # PeerClients: a NetworkClient per peer
    cdef object _clients_for                  # the membership _peers last followed
    cdef set _tasks
    cdef object _wakeup, _timer
    cdef double _timer_at
    # (state, term, leader) last logged
    cdef int _seen_state
    cdef long long _seen_term
    cdef object _seen_leader
    cdef object _core_task
    # identity
    cdef bint _keeps_identity                 # the log store keeps a cluster id and incarnation
    cdef object _identity_lock                # serializes saving the cluster id
    cdef dict _refusals_logged                # (sender, cluster id) -> when last logged
    cdef bint _seen_self_stale
    cdef object _seen_stale_members

    def __init__(self, node_id, config, network, log_store, state_machine, loop,
                 executor=None, engine_type=None) -> None:
        self.id = node_id
        self.config = config
        self.network = network
        self.log_store = log_store
        self.sm = state_machine
        # A state machine whose apply is a plain method is applied inline.
        self._sm_async = inspect.iscoroutinefunction(state_machine.apply)
        self._store_append = log_store.append
        self._sm_apply = state_machine.apply
        self.loop = loop
        #: Runs blocking work (snapshots, fsync) off the event loop; a
        #: simulation replaces it with inline execution.
        self.executor = executor or (lambda fn, *a: loop.run_in_executor(None, fn, *a))
        seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**63)
        self._rng = random.Random(seed)
        self.log = logging.getLogger(f"raftcore.node.{node_id}")
        #: The engine class: Engine, or a test's subclass of it
        #: (raftcore.testing.faulty_engine).
        self.engine = (engine_type or Engine)(
            node_id,
            heartbeat_interval=config.heartbeat_interval,
            election_timeout_min=config.election_timeout_min,
            election_timeout_max=config.election_timeout_max,
            max_payload_entries=config.max_payload_entries,
            max_payload_bytes=config.max_payload_bytes,
            max_inflight=config.max_inflight,
            rng=self._rng.random,
            now=loop.time(),
            lease_margin=config.lease_drift_margin,
            max_clock_drift=config.max_clock_drift,
            check_quorum=config.check_quorum,
            pre_vote=config.enable_pre_vote,
            keep_logs=config.max_in_snapshot_log_to_keep,
        )
        self.tick_enabled = config.enable_tick
        self.engine.heartbeat_enabled = config.enable_heartbeat
        self.engine.elect_enabled = config.enable_elect
        self._applied_term = 0
        self._applied_index = 0
        self.snapshot = None
        self.purged = None
        self.stopped = False
        self.changing_membership = False
        self._fatal = None
        self.no_space = None
        self._log_full = self._waiting_for_space = False
        listen = getattr(log_store, "set_space_listener", None)
        if listen is not None:
            listen(self._log_space)
        # executor state
        self._busy = False
        self._deferred = deque()
        self._cmds_taken = 0
        self._cmds_done = 0
        self._exec_waiters = deque()
        self._flush_waiters = []
        # clients
        self._writes = PendingWrites(self.engine, loop, node_id, config, self.check_running,
                                     self._flush_writes)
        self._metric_waiters = MetricWaiters()
        self._read_waiters = ReadWaiters(self, self.engine)
        # snapshots
        every = config.snapshot_policy.logs_since_last_snapshot
        self._snap_every = -1 if every is None else min(every, 2**62)
        self._snapshots = SnapshotTransfer(self)
        self._tasks = set()
        self._peers = PeerClients(network, self.log, self._spawn)
        self._clients_for = None
        self._wakeup = None
        self._timer = None
        self._timer_at = 0.0
        self._seen_state = -1
        self._seen_term = -1
        self._seen_leader = None
        self._core_task = None
        self._keeps_identity = False
        self._identity_lock = asyncio.Lock()
        self._refusals_logged = {}
        self._seen_self_stale = False
        self._seen_stale_members = set()

    @property
    def last_applied(self):
        """The LogId of the last entry applied to the state machine, or None."""
        if self._applied_term == 0 and self._applied_index == 0:
            return None
        return LogId(self._applied_term, self._applied_index)

    @last_applied.setter
    def last_applied(self, log_id):
        if log_id is None:
            self._applied_term = self._applied_index = 0
        else:
            self._applied_term = log_id.term
            self._applied_index = log_id.index

    # ------------------------------------------------------------ lifecycle

    async def load(self, cluster_id=None) -> None:
        """Restores the engine from the log store and state machine.
        `cluster_id`: the cluster the node must belong to (ClusterMismatch
        if the store belongs to another; adopted by a store without one)."""
        await self._load_identity(cluster_id)
        vote = await self.log_store.read_vote()
        state = await self.log_store.get_log_state()
        purged = state.last_purged_log_id
        last = state.last_log_id
        first = (purged.index if purged else 0) + 1
        entries = []
        if last is not None and last.index >= first:
            entries = await self.log_store.read_entries(first, last.index)
        committed = await self.log_store.read_committed()
        applied, sm_membership = await self.sm.applied_state()
        snap = self.sm.get_current_snapshot()
        meta = snap.meta if snap is not None else None
        if purged is not None and (meta is None or meta.last_log_index < purged.index):
            raise StorageError(
                f"node {self.id}: the log is purged up to {purged} but the state machine's "
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
                f"node {self.id}: the state machine applied only up to {applied} but the log "
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
            purged, entries = self._purge_on_start(ahead, purged, entries)
        base = meta.membership if meta is not None else sm_membership
        self.last_applied = applied
        self.snapshot = meta.last_log_id if meta is not None else None
        self.purged = purged
        self.engine.restore(vote if vote is not None else Vote(0, None, False), purged, entries,
                            committed.index if committed else 0,
                            applied.index if applied else 0, base, meta)
        # Committed entries the state machine has not applied yet.
        self._deferred.extend(self.engine.take_commands())
        if self.engine.vote.term > 0:
            # We may have followed a leader until just now, and a lease of
            # its may count on us: refuse votes for an election timeout.
            self.engine.refuse_votes_until(self.loop.time() + self.config.election_timeout_min)
        self._seen_state = self.engine.state
        self._seen_term = self.engine.vote.term
        self._seen_leader = self.engine.leader_id

    async def _load_identity(self, expected) -> None:
        identity = await self.log_store.read_identity()
        if identity is None:
            self.log.info("node %s: its log store keeps no identity; cluster and storage "
                          "identity checks are off for it", self.id)
            self.engine.cluster_id = expected
            return
        self._keeps_identity = True
        self.engine.incarnation = identity.incarnation
        self.engine.cluster_id = identity.cluster_id
        if expected is not None and identity.cluster_id not in (None, expected):
            raise ClusterMismatch(
                f"node {self.id}: its log store belongs to cluster {identity.cluster_id}, not "
                f"to cluster {expected}; refusing to start on another cluster's storage")
        if expected is not None and identity.cluster_id is None:
            await self._adopt_cluster(expected, "its configuration")

    async def _adopt_cluster(self, cluster_id, source) -> None:
        """Makes `cluster_id` this node's, durably, unless it has one already."""
        async with self._identity_lock:
            if self.engine.cluster_id is not None:
                return
            if self._keeps_identity:
                await self.log_store.save_cluster_id(cluster_id)
            self.engine.cluster_id = cluster_id
        self.log.info("node %s joined cluster %s (learned from %s)", self.id, cluster_id, source)

    async def cluster_id_for_initialize(self, cluster_id) -> None:
        """Before initialize: gives a fresh node its cluster id (`cluster_id`,
        or the one it has, or a new one), durably."""
        e = self.engine
        if e.last_log_index != 0 or e.purged_log_id is not None or e.vote.term != 0:
            return      # not fresh: engine.initialize refuses it, saying why
        mine = e.cluster_id
        if cluster_id is not None and mine is not None and cluster_id != mine:
            raise ClusterMismatch(f"node {self.id} already belongs to cluster {mine}; it "
                                  f"cannot initialize cluster {cluster_id}")
        if mine is None:
            await self._adopt_cluster(cluster_id or new_identity_token(), "initialize")

    async def _admit_peer(self, cluster_id, sender) -> None:
        """Lets a request of cluster `cluster_id` from `sender` through, adopting
        the id on first contact (durably, before answering anything, if the
        store keeps an identity); a request
        of another cluster is refused with ClusterMismatch and answered with
        nothing else."""
        if self.engine.cluster_id is None:
            await self._adopt_cluster(cluster_id, f"node {sender}")
        if cluster_id == self.engine.cluster_id:
            return
        msg = (f"node {self.id} belongs to cluster {self.engine.cluster_id} and refuses a "
               f"request from node {sender} of cluster {cluster_id}")
        now = self.loop.time()
        key = (sender, cluster_id)
        last = self._refusals_logged.get(key)
        if last is None or now - last >= 10.0:     # once per peer and id every 10 s
            if len(self._refusals_logged) > 1000:
                self._refusals_logged.clear()     # a peer sending ever new ids
            self._refusals_logged[key] = now
            self.log.warning("%s (a node of another cluster, or pointed at another "
                             "cluster's storage)", msg)
        raise ClusterMismatch(msg)

    def _purge_on_start(self, point: LogId, purged, entries):
        """The log does not reach, or conflicts at, what the state machine
        holds (`point`): drop the log up to there, and all of it on a conflict."""
        if entries:
            self.log_store.truncate_after(purged.index if purged else 0)
        self.log_store.purge(point)
        self.log.warning("node %s: the state machine holds up to %s, beyond or in conflict "
                         "with the log; the log is dropped up to there", self.id, point)
        return point, []

    def start(self) -> None:
        self._core_task = self.loop.create_task(self._core_loop(), name=f"raftcore-{self.id}")
        self._arm_timer()

    async def shutdown(self) -> None:
        if self.stopped and self._core_task is None:
            return
        self.stopped = True
        self.engine.shutdown()
        if self._timer is not None:
            self._timer.cancel()
        self._fail_everything(Fatal(
            f"node {self.id} has shut down; a write in progress may or may not have been "
            "committed"))
        tasks = list(self._tasks)
        if self._core_task is not None:
            tasks.append(self._core_task)
            self._core_task = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._peers.close()
        self.log.info("node %s shut down", self.id)

    def check_running(self) -> None:
        if self._fatal is not None:
            raise Fatal(f"node {self.id} stopped after an error: {self._fatal}") from self._fatal
        if self.stopped:
            raise Fatal(f"node {self.id} has shut down; create a new Raft to restart it")

    def _fail_everything(self, err: BaseException) -> None:
        self._writes.fail_all(err)
        for _, fut in self._exec_waiters:
            _fail(fut, err)
        self._exec_waiters.clear()
        self._metric_waiters.fail_all(err)
        for _, fut, _ in self._flush_waiters:
            _fail(fut, err)
        self._flush_waiters = []
        self._read_waiters.fail_all(err)

    def _die(self, exc: BaseException) -> None:
        """Stops the node after a storage or internal failure: better down
        than serving a log it could not write."""
        if self._fatal is not None:
            return
        self._fatal = exc
        self.log.error("node %s stops: %s", self.id, exc, exc_info=exc)
        self.stopped = True
        self.engine.shutdown()
        if self._timer is not None:
            self._timer.cancel()
        self._fail_everything(Fatal(f"node {self.id} stopped: {exc}"))

    # --------------------------------------------------------------- writes

    def client_write(self, payload):
        """Writes `payload`; its coroutine returns the ClientWriteResponse
        once the entry is applied (see PendingWrites)."""
        return self._writes.client_write(payload)

    def client_write_many(self, list payloads):
        """Writes `payloads` as consecutive entries; its coroutine returns
        their ClientWriteResponses in order."""
        return self._writes.client_write_many(payloads)

    def _flush_writes(self) -> None:
        self._writes.flush_scheduled = False
        self._run_sync()

    async def propose_membership(self, membership) -> Any:
        """Appends a membership entry; returns once it is applied here."""
        self.check_running()
        await self._pins_committed()
        index = self.engine.change_membership(membership, self.loop.time())
        # Registered before the commands run: a one-node cluster commits and
        # applies the entry while they run.
        fut = self._writes.wait_for_entry(index, self.engine.vote.term)
        self._run_sync()
        return await fut

    async def _pins_committed(self) -> None:
        """Waits (an election timeout at most) for a pending membership entry
        that only records incarnations (same voters as the committed one):
        a change proposed meanwhile would be refused as a second change."""
        e = self.engine
        deadline = self.loop.time() + self.config.election_timeout_max
        while e.state == S_LEADER and self.loop.time() < deadline:
            pending = e.membership_index
            committed = e.committed_membership
            if (pending <= e.committed or committed is None
                    or committed.configs != e.membership.configs):
                return
            fut = self.loop.create_future()
            self.add_metric_waiter(lambda m: m.committed >= pending or m.state != S_LEADER, fut)
            try:
                await asyncio.wait_for(fut, deadline - self.loop.time())
            except asyncio.TimeoutError:
                return      # change_membership then says what is pending
            finally:
                self.remove_metric_waiter(fut)

    def read_log_id(self, lease: bool):
        """Leader: the read point of a linearizable read (a coroutine of its
        LogId), once leadership is confirmed (see ReadWaiters)."""
        return self._read_waiters.read_log_id(lease)

    # ------------------------------------------------------------- handlers

    cdef void _check_request_term(self, long long term) except *:
        if term > self.engine.vote.term + TERM_JUMP_LIMIT:
            raise RaftError(
                f"node {self.id} refuses a request of term {term}: more than 2**32 above its "
                f"own term {self.engine.vote.term} (a corrupt or hostile peer)")

    cdef bint _plausible_answer(self, target, long long term):
        """False (and logged) for an answer whose term is implausibly high:
        the request is then treated as failed, the term not adopted."""
        if term > self.engine.vote.term + TERM_JUMP_LIMIT:
            self.log.warning("node %s ignores an answer of term %s from %s: more than 2**32 "
                             "above its own term %s", self.id, term, target,
                             self.engine.vote.term)
            return False
        return True

    async def handle_vote(self, req):
        self.check_running()
        self._check_request_term(req.term)
        if req.cluster_id is not None and req.cluster_id != self.engine.cluster_id:
            await self._admit_peer(req.cluster_id, req.candidate_id)
        resp = self.engine.handle_vote_request(req, self.loop.time())
        await self.run_commands()
        return resp

    async def handle_transfer_leader(self, req) -> None:
        self.check_running()
        self._check_request_term(req.term)
        if req.cluster_id is not None and req.cluster_id != self.engine.cluster_id:
            await self._admit_peer(req.cluster_id, req.leader_id)
        self.engine.handle_transfer_leader(req, self.loop.time())
        await self.run_commands()

    async def handle_install_snapshot(self, req):
        """One chunk of a snapshot; the last one installs it."""
        self.check_running()
        self._check_request_term(req.term)
        if req.cluster_id is not None and req.cluster_id != self.engine.cluster_id:
            await self._admit_peer(req.cluster_id, req.leader_id)
        if req.term >= self.engine.vote.term:
            self._snapshots.receive_chunk(req)
        resp = self.engine.handle_install_snapshot(req, self.loop.time())
        await self.run_commands()
        return resp

    async def handle_append_entries(self, req):
        self.check_running()
        self._check_request_term(req.term)
        if req.cluster_id is not None and req.cluster_id != self.engine.cluster_id:
            await self._admit_peer(req.cluster_id, req.leader_id)
        resp = self.engine.handle_append_entries(req, self.loop.time())
        await self.run_commands()
        if resp.success and self.engine.flushed < resp.matched:
            return await self._answer_when_flushed(resp)
        return resp

    cpdef bint try_append_entries_now(self, AppendEntriesRequest req, reply) except -1:
        """The synchronous fast path of handle_append_entries (a Raft's
        append_entries_nowait; the contract is raftcore.network.base's):
        False when the node cannot answer without awaiting (busy, or the
        request changes its vote), nothing done, and the caller uses
        handle_append_entries; True once the request is taken, its answer
        given to reply(response, None) now or, if it waits for the log
        flush, from the flush's completion (reply(None, error) if the node
        stops first)."""
        cdef Engine e = self.engine
        cdef AppendEntriesResponse resp
        if req is None:
            raise TypeError("try_append_entries_now needs an AppendEntriesRequest, got None")
        if (self.stopped or self._busy or self._deferred or req.term != e.vote.term
                or e.leader_id != req.leader_id or e.vote.node_id is None
                or (e.state != S_FOLLOWER and e.state != S_LEARNER)
                or (req.cluster_id is not e.cluster_id and req.cluster_id != e.cluster_id)):
            # (Another cluster id, or none while this node has one: the slow
            # path adopts it on first contact or refuses it, as for any request.)
            return False
        resp = e.handle_append_entries(req, self.loop.time())
        self._run_sync()
        if self.stopped:
            self.check_running()    # the commands failed (storage): raise, answer nothing
        if resp.success and e.flushed < resp.matched:
            self._flush_waiters.append((resp.matched, ReplyCallback(reply), resp))
        else:
            reply(resp, None)
        return True

    async def wait_flushed(self, index: int) -> None:
        """Returns once the local log is durable up to `index`."""
        if self.engine.flushed < index:
            fut = self.loop.create_future()
            self._flush_waiters.append((index, fut, None))
            await fut

    cdef object _answer_when_flushed(self, AppendEntriesResponse resp):
        """A future of `resp`, resolved once the log is flushed up to what it
        reports as matched: a follower acknowledges only durable entries."""
        fut = self.loop.create_future()
        self._flush_waiters.append((resp.matched, fut, resp))
        return fut

    cdef object _flushed_answer(self, AppendEntriesResponse resp):
        if self.engine.vote.term != resp.term:
            # A newer leader truncated the log meanwhile: the match claimed
            # in resp may no longer hold, so do not claim it.
            return AppendEntriesResponse(self.engine.vote.term, False, 0, 0, 0,
                                         self.engine.incarnation)
        return resp

    # ---------------------------------------------------------- executing

    cdef void _kick(self):
        """Wakes the core task to run deferred commands and engine output."""
        w = self._wakeup
        if w is not None and not w.done():
            w.set_result(None)

    async def _core_loop(self) -> None:
        while not self.stopped:
            self._wakeup = self.loop.create_future()
            # While an executor runs (possibly suspended in an await), it
            # drains all work before it lets go: only wait for the next kick.
            if not self._busy and (self._deferred or self.engine.output or self._writes.futs):
                self._wakeup.set_result(None)
            await self._wakeup
            if not self._busy:
                await self._run_async()

    async def run_commands(self) -> None:
        """Returns once every command emitted so far has been executed.

        What can run without awaiting runs here and now; the rest runs on
        this node's core task, never in the caller's task: a caller may be
        another node's RPC task, and its cancellation (that node shutting
        down) must not cut a command of this node in half."""
        target = self._cmds_taken + len(self.engine.output)
        if self._cmds_done >= target:
            return
        self._run_sync()
        if self._cmds_done >= target:
            return
        self.check_running()
        fut = self.loop.create_future()
        self._exec_waiters.append((target, fut))
        self._kick()
        await fut

    cdef void _run_sync(self):
        """Executes the engine's output here and now, up to the first command
        that must be awaited; that one and all later ones go to the core task."""
        if self._busy:
            return      # the running executor loops until the output is empty
        if self._deferred:
            self._kick()
            return
        cdef Engine engine = self.engine
        cdef list cmds
        self._busy = True
        try:
            while not self.stopped:
                if engine.output:
                    cmds = engine.take_commands()
                    self._cmds_taken += len(cmds)
                    if not self._execute_sync(cmds):
                        break
                elif self._writes.futs:
                    self._writes.take_pending()
                else:
                    break
        except Exception as exc:   # storage failure, or a bug: stop the node
            self._die(exc)
        finally:
            self._busy = False
        self._after_round()
        if self._deferred:
            self._kick()

    cdef bint _execute_sync(self, list cmds) except -1:
        """Runs commands that need no await; defers the rest. Returns False
        if it had to defer."""
        cdef Py_ssize_t i
        for i in range(len(cmds)):
            if self._execute(<Command>cmds[i], True) is not None:
                self._deferred.extend(cmds[i:])
                return False
        return True

    async def _run_async(self) -> None:
        """Drains deferred commands and engine output, awaiting as needed."""
        engine = self.engine
        deferred = self._deferred
        self._busy = True
        try:
            while not self.stopped:
                if deferred:
                    step = self._execute(<Command>deferred.popleft(), False)
                    if step is not None:
                        await step
                        self._command_done()
                elif engine.output:
                    cmds = engine.take_commands()
                    self._cmds_taken += len(cmds)
                    deferred.extend(cmds)
                elif self._writes.futs:
                    self._writes.take_pending()
                else:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # storage failure, or a bug: stop the node
            self._die(exc)
        finally:
            self._busy = False
        self._after_round()

    async def _apply_async(self, list entries) -> None:
        self._applied(entries, await self.sm.apply(entries))

    async def _install_snapshot(self, meta, long long drop_from) -> None:
        """Installs a snapshot received from the leader (InstallSnapshot)."""
        if drop_from:
            self.log_store.truncate_after(drop_from - 1)
            # Past the snapshot, the dropped entries are not in this leader's
            # log, but a later leader may still hold and commit them.
            self._writes.fail_truncated(meta.last_log_index + 1)
        data = self._snapshots.take_received(meta.snapshot_id)
        await self._store_when_space(self.sm.install_snapshot, meta, data)
        self._writes.fail_upto(meta.last_log_index, OutcomeUnknown(
            f"node {self.id} installed a snapshot up to index "
            f"{meta.last_log_index} before applying this write; it may or "
            "may not be committed"))
        self.last_applied = LogId(meta.last_log_term, meta.last_log_index)
        self.snapshot = self.last_applied
        self.log.info("node %s installed snapshot %s up to %s", self.id,
                      meta.snapshot_id, self.last_applied)

    async def _save_vote(self, vote) -> None:
        """Saves the vote; on a full disk waits (as _store_when_space) until it can."""
        try:
            await self.log_store.save_vote(vote)
            return
        except Exception as exc:
            if not is_space_error(exc):
                raise
            error = exc
        engine = self.engine
        if engine.state == S_CANDIDATE and engine.vote == vote and not engine.output and \
                all((<Command>c).kind == CMD_SEND_VOTE for c in self._deferred):
            # This node's vote for itself cannot be saved: call the election
            # off before a request leaves (its in-memory term would otherwise
            # answer, and depose, the leader). What waits on these commands
            # fails; the vote as saved is what is saved again until space is
            # freed (a probe: later votes are saved after it, in order).
            saved = await self.log_store.read_vote() or Vote(0, None, False)
            if engine.vote == vote and engine.abandon_campaign(saved):
                self.log.warning("node %s: cannot save its vote (disk full); no election",
                                 self.id)
                self._cmds_done += len(self._deferred)
                self._deferred.clear()
                waiters, self._exec_waiters = self._exec_waiters, deque()
                for _, fut in waiters:
                    _fail(fut, NoSpace(f"node {self.id}: its disk is full: {error}"))
                vote = saved
        await self._store_when_space(self.log_store.save_vote, vote)

    async def _store_when_space(self, save, *args) -> None:
        """await save(*args) (a vote save, a snapshot install). On a full disk
        it is tried again until space is freed, and nothing after it runs
        meanwhile: a vote counts, an installed snapshot replaces the log, and
        the commands that follow act, only once it is durable."""
        delay = 0.05
        while True:
            try:
                await save(*args)
                break
            except Exception as exc:
                if not is_space_error(exc):
                    raise
                if not self._waiting_for_space:
                    self._waiting_for_space = True
                    self._space_changed(exc)
            # The engine steps on meanwhile (a new leader, a new term): its
            # state is reported, though its commands wait for this save.
            self._after_round()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            if self.stopped:
                return
        if self._waiting_for_space:
            self._waiting_for_space = False
            self._space_changed(None)

    def _log_space(self, err) -> None:
        """The log store's space listener: it holds writes for lack of disk
        space (err), or they went through (None)."""
        self._log_full = err is not None
        self._space_changed(err)

    def _space_changed(self, err) -> None:
        """Enters the disk-full condition on `err`; leaves it once neither
        the log nor a vote waits for space (as etcd's NOSPACE alarm)."""
        if self.stopped:
            return
        engine = self.engine
        if err is not None and self.no_space is None:
            self.no_space = NoSpace(f"node {self.id} takes no writes: its disk is full ({err}); "
                                    "free space on its disk and it resumes by itself")
            engine.storage_full = True
            self._writes.no_space = self.no_space
            # WARNING: the store logs the error itself (a FileLogStore at ERROR).
            self.log.warning("node %s: disk full: it takes no writes, gives no votes and "
                             "does not campaign until space is freed: %s", self.id, err)
            self._writes.reject_pending()
            self._hand_over_leadership()
        elif err is None and self.no_space is not None and not (self._log_full or
                                                                self._waiting_for_space):
            self.no_space = None
            self._writes.no_space = None
            engine.storage_full = False
            self.log.warning("node %s: disk space is available again; it resumes", self.id)
        if self._metric_waiters.waiting:
            self.check_metric_waiters()

    def _hand_over_leadership(self) -> None:
        """A leader on a full disk asks the most caught-up voter to take
        over (again after a transfer that timed out)."""
        engine = self.engine
        if engine.state != S_LEADER or engine.transfer_to is not None:
            return
        matched = engine.replication() or {}
        voters = [(m, i) for i, m in matched.items() if engine.membership.is_voter(i)]
        if not voters:
            return      # a single voter: nobody to hand over to
        target = max(voters)[1]
        self.log.warning("node %s: disk full; hands leadership to node %s", self.id, target)
        self.step(engine.transfer_leader, target, self.loop.time())

    cdef void _command_done(self):
        self._cmds_done += 1
        waiters = self._exec_waiters
        if not waiters:
            return
        while waiters and waiters[0][0] <= self._cmds_done:
            _resolve(waiters.popleft()[1], None)

    cdef object _execute(self, Command cmd, bint inline):
        """The one executor of engine commands, for both paths. A command
        that needs no await runs here (and counts as done): returns None.
        One that must be awaited (a vote save, a snapshot install, an apply
        on an async state machine) returns the awaitable that runs it, to be
        awaited and then counted by the caller; with `inline` (the caller
        cannot await) it returns _DEFER instead and builds nothing."""
        cdef int kind = cmd.kind
        cdef Entry last
        cdef list entries
        if kind == CMD_SEND_APPEND:
            self._send_append_now((<SendAppend>cmd).target, (<SendAppend>cmd).request)
        elif kind == CMD_APPEND:
            entries = (<Append>cmd).entries
            last = entries[-1]
            self._store_append(entries, _FlushDone(self, last.term, last.index))
        elif kind == CMD_APPLY:
            entries = (<Apply>cmd).entries
            if self._sm_async:
                return _DEFER if inline else self._apply_async(entries)
            self._applied(entries, self._sm_apply(entries))
        elif kind == CMD_TRUNCATE:
            self.log_store.truncate_after((<Truncate>cmd).since - 1)
            self._writes.fail_truncated((<Truncate>cmd).since)
        elif kind == CMD_SEND_VOTE:
            self._spawn(self._send_vote((<SendVote>cmd).target, (<SendVote>cmd).request))
        elif kind == CMD_SEND_TRANSFER:
            self._spawn(self._send_transfer((<SendTransfer>cmd).target,
                                            (<SendTransfer>cmd).request))
        elif kind == CMD_PURGE:
            self.log_store.purge((<Purge>cmd).upto)
            self.purged = (<Purge>cmd).upto
        elif kind == CMD_SEND_SNAPSHOT:
            self._spawn(self._snapshots.send((<SendSnapshot>cmd).target))
        elif kind == CMD_SAVE_VOTE:
            return _DEFER if inline else self._save_vote((<SaveVote>cmd).vote)
        elif kind == CMD_INSTALL_SNAPSHOT:
            return _DEFER if inline else self._install_snapshot(
                (<InstallSnapshot>cmd).meta, (<InstallSnapshot>cmd).drop_from)
        else:
            raise RaftError(f"unknown engine command {cmd!r}")
        self._command_done()
        return None

    cdef void _on_flushed(self, err, long long term, long long index):
        if err is not None and not self.stopped:
            self._die(StorageError(f"the log store failed to flush up to index {index}: {err}"))
            return
        if self.stopped:
            return
        cdef Engine engine = self.engine
        engine.log_flushed(term, index)
        if self._flush_waiters:
            flushed = engine.flushed
            keep = []
            for w in self._flush_waiters:
                index, fut, resp = w
                if index > flushed:
                    keep.append(w)
                elif not fut.done():
                    fut.set_result(None if resp is None else self._flushed_answer(resp))
            self._flush_waiters = keep
        if engine.output and not self._busy:
            self._run_sync()

    cdef void _applied(self, list entries, responses):
        """Records an applied batch and answers the clients waiting on it."""
        cdef Entry last
        if len(responses) != len(entries):
            raise StorageError(f"the state machine returned {len(responses)} responses for "
                               f"{len(entries)} entries; it must return one per entry")
        last = entries[-1]
        self._applied_term = last.term
        self._applied_index = last.index
        if self._snap_every >= 0:
            snap = self.snapshot
            since = last.index - (snap.index if snap is not None else 0)
            if since >= self._snap_every and self._snapshots.building is None:
                self.build_snapshot()
        self._writes.answer_applied(entries, responses)

    # ------------------------------------------------------------ network

    cdef object _client(self, target):
        if self.engine.membership is not self._clients_for:
            self._revalidate_clients()
        return self._peers.client(target, self.engine.membership)

    def _revalidate_clients(self) -> None:
        """The membership changed: the clients of nodes that left it or whose
        address changed are closed (a new one is made on next use)."""
        self._clients_for = self.engine.membership
        self._peers.follow(self._clients_for)

    def _spawn(self, coro) -> None:
        t = self.loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    cdef void _send_append_now(self, target, AppendEntriesRequest req):
        if self.engine.membership is not self._clients_for:
            self._revalidate_clients()
        declined_by = self._peers.send_append_now(target, self.engine.membership, req,
                                                  _AppendAnswer(self, target, req))
        if declined_by is not None:
            self._spawn(self._send_append(declined_by, target, req))

    async def _send_append(self, client, target: int, req: AppendEntriesRequest) -> None:
        try:
            resp = await client.append_entries(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._append_failed(target, req, exc)
            return
        if self.stopped:
            return
        self._take_append_answer(target, req, resp)
        self._run_sync()

    cdef void _take_append_answer(self, target, AppendEntriesRequest req,
                                  AppendEntriesResponse resp):
        if self._plausible_answer(target, resp.term):
            self.engine.handle_append_response(target, req, resp, self.loop.time())
        else:
            self.engine.handle_append_failure(target, req, self.loop.time())

    cdef void _append_replied(self, target, AppendEntriesRequest req, resp, exc):
        """The answer of a request sent by append_entries_nowait (see _AppendAnswer)."""
        if self.stopped:
            return
        if exc is not None or type(resp) is not AppendEntriesResponse:
            self._append_failed(target, req, exc or RaftError(
                f"node {target} answered an AppendEntries with {type(resp).__name__}"))
            return
        self._take_append_answer(target, req, resp)
        self._run_sync()

    def _append_failed(self, target: int, req, exc: BaseException) -> None:
        if self.stopped:
            return
        self.log.debug("append_entries to %s failed: %s", target, exc)
        self.engine.handle_append_failure(target, req, self.loop.time())

    async def _send_vote(self, target: int, req) -> None:
        try:
            resp = await self._client(target).vote(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.debug("vote request to %s failed: %s", target, exc)
            return
        if self.stopped or not self._plausible_answer(target, resp.term):
            return
        self.engine.handle_vote_response(target, req, resp, self.loop.time())
        self._run_sync()

    async def _send_transfer(self, target: int, req) -> None:
        try:
            await self._client(target).transfer_leader(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The transfer times out in the engine and leadership resumes.
            self.log.info("handing leadership to %s failed: %s", target, exc)

    # ------------------------------------------------------------ snapshots

    def build_snapshot(self) -> asyncio.Future:
        """Starts building a snapshot (one at a time); returns the build's future."""
        return self._snapshots.build()

    # For SnapshotTransfer (plain Python), which cannot call cdef methods.

    def run_engine_output(self) -> None:
        """Runs what the engine emitted, after a step from outside."""
        self._run_sync()

    def peer_client(self, target):
        """The NetworkClient to `target`."""
        return self._client(target)

    def plausible_answer(self, target, long long term) -> bool:
        """False (and logged) for an answer of an implausibly high term."""
        return self._plausible_answer(target, term)

    # ------------------------------------------------------------- timers

    cdef void _arm_timer(self):
        cdef double at
        if self.stopped:
            return
        at = self.engine.next_deadline()
        if self._timer is not None:
            if at >= self._timer_at:
                return      # the armed timer fires first and re-arms then
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.stopped:
            return
        if self.tick_enabled:
            self.engine.tick(self.loop.time())
            self._run_sync()
            self._arm_timer()
        else:
            # Ticking is off: look again after a heartbeat interval.
            self._timer_at = self.loop.time() + self.config.heartbeat_interval
            self._timer = self.loop.call_at(self._timer_at, self._on_timer)

    def step(self, fn: Callable, *args: Any) -> Any:
        """Steps the engine from outside (triggers, initialize) and runs what
        it emits."""
        self.check_running()
        r = fn(*args)
        self._run_sync()
        return r

    # ------------------------------------------------------------ metrics

    cdef void _after_round(self):
        cdef Engine engine = self.engine
        if engine.membership is not self._clients_for:
            self._revalidate_clients()
            if engine.identity_stale != self._seen_self_stale:
                self._log_identity_stale()
        if engine.stale_members != self._seen_stale_members:
            self._log_stale_members()
        if (engine.state != self._seen_state or engine.vote.term != self._seen_term
                or engine.leader_id != self._seen_leader):
            self._log_transition((self._seen_state, self._seen_term, self._seen_leader),
                                 (engine.state, engine.vote.term, engine.leader_id))
            self._seen_state = engine.state
            self._seen_term = engine.vote.term
            self._seen_leader = engine.leader_id
            if engine.state != S_LEADER and self._writes.futs:
                self._writes.reject_pending()
        self._arm_timer()
        if self.no_space is not None and engine.state == S_LEADER and engine.transfer_to is None:
            self._hand_over_leadership()
        if self._read_waiters.waiting:
            self._read_waiters.check()
        if self._metric_waiters.waiting:
            self.check_metric_waiters()

    def _log_identity_stale(self) -> None:
        e = self.engine
        self._seen_self_stale = e.identity_stale
        if self._seen_self_stale:
            self.log.warning(
                "node %s runs on storage incarnation %s, but the membership records %s for "
                "it: its storage was wiped or replaced since it joined, so it may have "
                "forgotten its vote and entries it acknowledged. It does not vote or campaign, "
                "and its acknowledgements do not count, until it is removed from the cluster "
                "and added back", self.id, e.incarnation, e.recorded_incarnation(self.id))
        else:
            self.log.info("node %s: the membership now records its storage incarnation %s",
                          self.id, e.incarnation)

    def _log_stale_members(self) -> None:
        e = self.engine
        for m in sorted(e.stale_members - self._seen_stale_members):
            self.log.warning(
                "node %s (leader): node %s answers from other storage than the incarnation %s "
                "the membership records for it (wiped or replaced): its votes and "
                "acknowledgements do not count; it needs replacing (remove it and add it back)",
                self.id, m, e.recorded_incarnation(m))
        self._seen_stale_members = set(e.stale_members)

    def _log_transition(self, old: tuple, new: tuple) -> None:
        state, term, leader = new
        if state == S_LEADER and old[0] != S_LEADER:
            self.log.info("node %s became leader in term %s", self.id, term)
        elif state == S_CANDIDATE and (old[0] != S_CANDIDATE or old[1] != term):
            self.log.info("node %s started an election for term %s", self.id, term)
        elif old[0] == S_LEADER and state != S_LEADER and state != S_SHUTDOWN:
            self.log.info("node %s stepped down in term %s", self.id, term)
        elif leader != old[2] and leader is not None:
            self.log.info("node %s follows leader %s in term %s", self.id, leader, term)
        elif term != old[1]:
            self.log.debug("node %s moved to term %s", self.id, term)

    def add_metric_waiter(self, predicate: Callable, fut: asyncio.Future) -> None:
        self._metric_waiters.add(predicate, fut)

    def remove_metric_waiter(self, fut: asyncio.Future) -> None:
        self._metric_waiters.remove(fut)

    def check_metric_waiters(self) -> None:
        from raftcore.raft import build_metrics
        self._metric_waiters.check(build_metrics(self))


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
