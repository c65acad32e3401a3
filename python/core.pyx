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
  Why one module of more than 800 lines: RaftCore is one cdef class, and a
  cdef class is defined in one module; what it holds is one concern, the
  executor of the engine's commands, whose cdef methods call each other
  as C calls on that path. Every piece that can leave it has (below).
- A handler answers only after its commands ran: a granted vote after
  save_vote returned (durable), an AppendEntries success after the log is
  flushed up to what it reports as matched.

The pieces around RaftCore are modules of their own, RaftCore owning one of
each: PendingWrites (pending_writes.pyx: client writes, from the door check
to the answer), ReadWaiters and MetricWaiters (waiters.pyx: reads waiting
for a quorum, Raft.wait() conditions), PeerClients (peers.pyx: a
NetworkClient per peer), SnapshotTransfer (snapshot_transfer.py: build,
send, receive), NodeIdentity (identity.py: cluster id and storage
incarnation), DiskSpace (disk_space.py: the disk-full condition and the
saves that wait for space), startup.py (the engine made from the Config and
restored from the stores), elections.py (vote and transfer RPCs) and
transitions.py (the log of role, term and leader changes). The plain-Python
ones reach the executor through the few def methods marked as theirs.

Why what is left stays one cdef class (over 900 lines): RaftCore is the one
executor of the engine's commands (`_execute`, `_run_sync`, `_deferred`),
and the per-write path through it (a write taken into the engine, appended,
replicated by the AppendEntries fast path, flushed, applied and answered)
runs as C calls between its own cdef methods and fields. Split across
modules, each step of a write would cross Python attribute lookups and
calls (or need a .pxd of RaftCore that every piece depends on), which the
per-write figures of `raftcore bench` would show. What is off that path
(RPC error and leader change counters, metrics building) could move out
next.
"""
cimport cython
from raftcore.engine cimport Engine, S_FOLLOWER, S_LEADER, S_LEARNER
from raftcore.messages cimport AppendEntriesRequest, AppendEntriesResponse
from raftcore.commands cimport (
    Command, SaveVote, Append, Truncate, SendAppend, SendVote, Apply, SendTransfer, SendSnapshot,
    InstallSnapshot, Purge, CMD_SAVE_VOTE, CMD_APPEND, CMD_TRUNCATE, CMD_SEND_APPEND,
    CMD_SEND_VOTE, CMD_APPLY, CMD_SEND_TRANSFER, CMD_SEND_SNAPSHOT, CMD_INSTALL_SNAPSHOT,
    CMD_PURGE)
from raftcore.pending_writes cimport PendingWrites
from raftcore.types cimport Entry, LogId
from raftcore.waiters cimport MetricWaiters, ReadWaiters

import asyncio
import inspect
import logging
from collections import deque
from typing import Any, Callable, Optional

from raftcore.errors import Fatal, OutcomeUnknown, RaftError, StorageError
from raftcore.network.base import ReplyCallback
# ClientWriteResponse: importable from here too (raftcore.raft re-exports it).
from raftcore.pending_writes import ClientWriteResponse
from raftcore.disk_space import DiskSpace
from raftcore.elections import send_transfer, send_vote
from raftcore.identity import NodeIdentity
from raftcore.peers import PeerClients
from raftcore.snapshot_transfer import SnapshotTransfer
from raftcore.startup import new_engine, restore
from raftcore.transitions import log_transition

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
    # Release what is applied (Entry.release_payload): not on a network
    # whose peers append the very Entry objects this node sends.
    cdef bint _release_applied
    cdef object _store_append, _sm_apply      # log_store.append, sm.apply (looked up once)
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
    #: Times this node learned of a new leader (counted with the transition
    #: log, so it costs nothing per entry).
    cdef readonly long long leader_changes
    #: (peer id, RPC name) -> RPCs to that peer that failed (no answer, a
    #: connection error, a refusal). Replaced, never changed in place, on a
    #: failure: RaftMetrics can hold it without a copy.
    cdef readonly dict rpc_errors
    cdef object _disk                         # DiskSpace: what waits for space, and why
    # executor state
    cdef bint _busy
    cdef object _deferred                     # deque: commands waiting for the core task
    cdef long long _cmds_taken                # commands taken from the engine so far
    cdef long long _cmds_done                 # commands executed so far
    cdef object _exec_waiters                 # deque: (commands-done target, future)
    # The log store's write_now (None: it has none), and whether a command
    # of the running step changed the log since it was last called.
    cdef object _log_write_now
    cdef bint _log_changed
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
    cdef object _identity                     # NodeIdentity: cluster id and incarnation

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
        self._log_write_now = getattr(log_store, "write_now", None)
        self._log_changed = False
        self._sm_apply = state_machine.apply
        self.loop = loop
        #: Runs blocking work (snapshots, fsync) off the event loop; a
        #: simulation replaces it with inline execution.
        self.executor = executor or (lambda fn, *a: loop.run_in_executor(None, fn, *a))
        self.log = logging.getLogger(f"raftcore.node.{node_id}")
        #: The engine class: Engine, or a test's subclass of it
        #: (raftcore.testing.faulty_engine).
        self.engine = new_engine(engine_type or Engine, node_id, config, loop.time())
        self.tick_enabled = config.enable_tick
        self._applied_term = 0
        self._applied_index = 0
        self.snapshot = None
        self.purged = None
        self.stopped = False
        self.changing_membership = False
        self._fatal = None
        self.no_space = None
        self._disk = DiskSpace(self)
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
        self._release_applied = not getattr(network, "shares_entries", False)
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
        self._identity = NodeIdentity(self)
        self.rpc_errors = {}

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
        await self._identity.load(cluster_id)
        await restore(self)
        # Committed entries the state machine has not applied yet.
        self._deferred.extend(self.engine.take_commands())
        self._seen_state = self.engine.state
        self._seen_term = self.engine.vote.term
        self._seen_leader = self.engine.leader_id

    async def cluster_id_for_initialize(self, cluster_id) -> None:
        """Before initialize: gives a fresh node its cluster id (`cluster_id`,
        or the one it has, or a new one), durably (see NodeIdentity)."""
        await self._identity.for_initialize(cluster_id)

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

    def client_write(self, payload, bint owned=False):
        """Writes `payload`; its coroutine returns the ClientWriteResponse
        once the entry is applied (see PendingWrites)."""
        return self._writes.client_write(payload, owned)

    def client_write_many(self, list payloads, bint owned=False):
        """Writes `payloads` as consecutive entries; its coroutine returns
        their ClientWriteResponses in order."""
        return self._writes.client_write_many(payloads, owned)

    def _flush_writes(self) -> None:
        self._writes.flush_scheduled = False
        self._run_sync()

    async def propose_membership(self, membership) -> Any:
        """Appends a membership entry; returns once it is applied here."""
        self.check_running()
        await self._identity.pins_committed()
        index = self.engine.change_membership(membership, self.loop.time())
        # Registered before the commands run: a one-node cluster commits and
        # applies the entry while they run.
        fut = self._writes.wait_for_entry(index, self.engine.vote.term)
        self._run_sync()
        return await fut

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
            await self._identity.admit_peer(req.cluster_id, req.candidate_id)
        resp = self.engine.handle_vote_request(req, self.loop.time())
        await self.run_commands()
        if not resp.granted:
            self._identity.vote_refused(req)
        return resp

    async def handle_transfer_leader(self, req) -> None:
        self.check_running()
        self._check_request_term(req.term)
        if req.cluster_id is not None and req.cluster_id != self.engine.cluster_id:
            await self._identity.admit_peer(req.cluster_id, req.leader_id)
        self.engine.handle_transfer_leader(req, self.loop.time())
        await self.run_commands()

    async def handle_install_snapshot(self, req):
        """One chunk of a snapshot; the last one installs it."""
        self.check_running()
        self._check_request_term(req.term)
        if req.cluster_id is not None and req.cluster_id != self.engine.cluster_id:
            await self._identity.admit_peer(req.cluster_id, req.leader_id)
        if req.term >= self.engine.vote.term:
            self._snapshots.receive_chunk(req)
        resp = self.engine.handle_install_snapshot(req, self.loop.time())
        await self.run_commands()
        return resp

    async def handle_append_entries(self, req):
        self.check_running()
        self._check_request_term(req.term)
        if req.cluster_id is not None and req.cluster_id != self.engine.cluster_id:
            await self._identity.admit_peer(req.cluster_id, req.leader_id)
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
        cdef Command cmd
        for i in range(len(cmds)):
            cmd = <Command>cmds[i]
            if cmd.kind == CMD_APPLY and self._log_changed:
                self._start_log_write()
            if self.stopped:
                # A store that failed at once reports it from inside the
                # call and the node stops: nothing more of the step runs.
                return True
            if self._execute(cmd, True) is not None:
                self._deferred.extend(cmds[i:])
                return False
        if self._log_changed:
            self._start_log_write()
        return True

    cdef void _start_log_write(self):
        """Has the log store start writing what this step appended now, not
        at the next loop iteration: once the step's AppendEntries are sent
        (a leader's sends go first, each wakes a follower) and before it
        applies (a follower's apply then overlaps its fsync). Saves a loop
        pass on the path every acknowledgement waits for."""
        self._log_changed = False
        if self._log_write_now is not None:
            self._log_write_now()

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
        await self._disk.store_when_space(self.sm.install_snapshot, meta, data)
        self._writes.fail_upto(meta.last_log_index, OutcomeUnknown(
            f"node {self.id} installed a snapshot up to index "
            f"{meta.last_log_index} before applying this write; it may or "
            "may not be committed"))
        self.last_applied = LogId(meta.last_log_term, meta.last_log_index)
        self.snapshot = self.last_applied
        self.log.info("node %s installed snapshot %s up to %s", self.id,
                      meta.snapshot_id, self.last_applied)

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
            self._log_changed = True
        elif kind == CMD_APPLY:
            entries = (<Apply>cmd).entries
            if self._sm_async:
                return _DEFER if inline else self._apply_async(entries)
            self._applied(entries, self._sm_apply(entries))
        elif kind == CMD_TRUNCATE:
            self.log_store.truncate_after((<Truncate>cmd).since - 1)
            self._writes.fail_truncated((<Truncate>cmd).since)
        elif kind == CMD_SEND_VOTE:
            self._spawn(send_vote(self, (<SendVote>cmd).target, (<SendVote>cmd).request))
        elif kind == CMD_SEND_TRANSFER:
            self._spawn(send_transfer(self, (<SendTransfer>cmd).target,
                                      (<SendTransfer>cmd).request))
        elif kind == CMD_PURGE:
            self.log_store.purge((<Purge>cmd).upto)
            self.purged = (<Purge>cmd).upto
        elif kind == CMD_SEND_SNAPSHOT:
            self._spawn(self._snapshots.send((<SendSnapshot>cmd).target))
        elif kind == CMD_SAVE_VOTE:
            return _DEFER if inline else self._disk.save_vote((<SaveVote>cmd).vote)
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
        # The log keeps these entries until a purge, and from now on needs
        # only their encodings (Entry.release_payload says why).
        if self._release_applied:
            for e in entries:
                (<Entry>e).release_payload()

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

    cdef void _take_append_answer(self, target, AppendEntriesRequest req,
                                  AppendEntriesResponse resp):
        """Steps the engine with a follower's answer and runs what it emits.
        The fast path's answer comes from the peer's side (in process, from
        inside its own handler): an error here is this node's, and stops
        this node rather than travel back into the peer as a failed answer."""
        try:
            if self._plausible_answer(target, resp.term):
                self.engine.handle_append_response(target, req, resp, self.loop.time())
            else:
                self.engine.handle_append_failure(target, req, self.loop.time())
        except Exception as err:
            self._die(err)
            return
        self._run_sync()

    cdef void _append_replied(self, target, AppendEntriesRequest req, resp, exc):
        """The answer of a request sent by append_entries_nowait (see _AppendAnswer)."""
        if self.stopped:
            return
        if exc is not None or type(resp) is not AppendEntriesResponse:
            self._append_failed(target, req, exc or RaftError(
                f"node {target} answered an AppendEntries with {type(resp).__name__}"))
            return
        self._take_append_answer(target, req, resp)

    def _append_failed(self, target: int, req, exc: BaseException) -> None:
        if self.stopped:
            return
        self.log.debug("append_entries to %s failed: %s", target, exc)
        self.count_rpc_error(target, "append_entries")
        self.engine.handle_append_failure(target, req, self.loop.time())

    def count_rpc_error(self, target, rpc: str) -> None:
        """Counts a failed RPC to `target` (see rpc_errors)."""
        key = (target, rpc)
        self.rpc_errors = {**self.rpc_errors, key: self.rpc_errors.get(key, 0) + 1}

    # ------------------------------------------------------------ snapshots

    def build_snapshot(self) -> asyncio.Future:
        """Starts building a snapshot (one at a time); returns the build's future."""
        return self._snapshots.build()

    # For SnapshotTransfer and elections.py (plain Python), which cannot call
    # cdef methods.

    def run_engine_output(self) -> None:
        """Runs what the engine emitted, after a step from outside."""
        self._run_sync()

    def peer_client(self, target):
        """The NetworkClient to `target`."""
        return self._client(target)

    def plausible_answer(self, target, long long term) -> bool:
        """False (and logged) for an answer of an implausibly high term."""
        return self._plausible_answer(target, term)

    # For DiskSpace (plain Python), which cannot reach the executor's state.

    def report_round(self) -> None:
        """Reports the engine's state as after a round (logs, timer, waiters)
        while a command waits for disk space."""
        self._after_round()

    def only_vote_requests_wait(self) -> bool:
        """True when nothing but vote requests waits to run after the
        command being executed."""
        return not self.engine.output and \
            all((<Command>c).kind == CMD_SEND_VOTE for c in self._deferred)

    def drop_deferred(self, err) -> None:
        """Drops the commands waiting to run (a campaign called off) and
        fails with `err` whatever waits on them."""
        self._cmds_done += len(self._deferred)
        self._deferred.clear()
        waiters, self._exec_waiters = self._exec_waiters, deque()
        for _, fut in waiters:
            _fail(fut, err)

    def set_disk_full(self, no_space) -> None:
        """Enters the disk-full condition (`no_space`: the NoSpace error
        writes get meanwhile; the queued ones are refused now) or leaves it
        (None)."""
        self.no_space = no_space
        self._writes.no_space = no_space
        self.engine.storage_full = no_space is not None
        if no_space is not None:
            self._writes.reject_pending()
        if self._metric_waiters.waiting:
            self.check_metric_waiters()

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
            if engine.identity_stale != self._identity.seen_self_stale:
                self._identity.log_identity_stale()
        if engine.stale_members != self._identity.seen_stale_members:
            self._identity.log_stale_members()
        if (engine.state != self._seen_state or engine.vote.term != self._seen_term
                or engine.leader_id != self._seen_leader):
            if engine.leader_id != self._seen_leader and engine.leader_id is not None:
                self.leader_changes += 1
            log_transition(self.log, self.id,
                           (self._seen_state, self._seen_term, self._seen_leader),
                           (engine.state, engine.vote.term, engine.leader_id))
            self._seen_state = engine.state
            self._seen_term = engine.vote.term
            self._seen_leader = engine.leader_id
            if engine.state != S_LEADER and self._writes.futs:
                self._writes.reject_pending()
        self._arm_timer()
        if self.no_space is not None and engine.state == S_LEADER and engine.transfer_to is None:
            self._disk.hand_over_leadership()
        if self._read_waiters.waiting:
            self._read_waiters.check()
        if self._metric_waiters.waiting:
            self.check_metric_waiters()

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
