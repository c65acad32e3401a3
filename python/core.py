"""The runtime of one node: feeds the engine and executes its commands.

Concurrency model (one thread, one event loop):
- The engine is stepped synchronously wherever an event arrives: a client
  batch, an RPC handler, an RPC response, a flush notification, a timer.
  Each step is atomic (no await inside), so the engine is always consistent.
- Commands the engine emits are executed in order by exactly one executor at
  a time (`_busy`). Whoever needs them executed becomes the executor if none
  is running (an RPC handler called by an idle peer runs them in the caller's
  task: no task switch), otherwise it waits for the running executor, which
  keeps going until the engine has no more output.
- A handler answers only after its commands ran: a granted vote after
  save_vote returned (durable), an AppendEntries success after the log is
  flushed up to what it reports as matched.
- Client writes are queued and go into the engine as one batch per executor
  round, so writers that arrive together share one append and one RPC.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from typing import Any, Callable, Optional

from raftcore.config import Config
from raftcore.engine import CANDIDATE, LEADER, SHUTDOWN, Engine
from raftcore.errors import Fatal, ForwardToLeader, RaftError, StorageError
from raftcore.messages import AppendEntriesRequest, AppendEntriesResponse
from raftcore.types import LogId

_STATE_NAMES = {0: "learner", 1: "follower", 2: "candidate", 3: "leader", 4: "shutdown"}


class ClientWriteResponse:
    """What client_write returns once the entry is committed and applied."""

    __slots__ = ("term", "index", "data")

    def __init__(self, term: int, index: int, data: Any) -> None:
        self.term = term
        self.index = index
        self.data = data

    @property
    def log_id(self) -> LogId:
        return LogId(self.term, self.index)

    def __repr__(self) -> str:
        return f"ClientWriteResponse(log_id=({self.term}, {self.index}), data={self.data!r})"


class RaftCore:
    """Executes one engine's commands against storage, network and state machine."""

    def __init__(self, node_id: int, config: Config, network: Any, log_store: Any,
                 state_machine: Any, loop: asyncio.AbstractEventLoop,
                 executor: Optional[Callable] = None) -> None:
        self.id = node_id
        self.config = config
        self.network = network
        self.log_store = log_store
        self.sm = state_machine
        self.loop = loop
        #: Runs blocking work (snapshots, fsync) off the event loop; a
        #: simulation replaces it with inline execution.
        self.executor = executor or (lambda fn, *a: loop.run_in_executor(None, fn, *a))
        seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**63)
        self._rng = random.Random(seed)
        self.log = logging.getLogger(f"raftcore.node.{node_id}")
        self.engine = Engine(
            node_id,
            heartbeat_interval=config.heartbeat_interval,
            election_timeout_min=config.election_timeout_min,
            election_timeout_max=config.election_timeout_max,
            max_payload_entries=config.max_payload_entries,
            max_payload_bytes=config.max_payload_bytes,
            max_inflight=config.max_inflight,
            rng=self._rng.random,
            now=loop.time(),
        )
        self.tick_enabled = True
        self.last_applied: Optional[LogId] = None
        self.stopped = False
        self._fatal: Optional[BaseException] = None
        # executor state
        self._busy = False
        self._taken = 0          # command batches taken from the engine
        self._executed = 0       # command batches fully executed
        self._exec_waiters: deque = deque()     # (batch number, future)
        self._flush_waiters: list = []          # (index, future), any order
        # clients
        self._pending_writes: deque = deque()   # (payload, future) not yet in the log
        self._write_room: Optional[asyncio.Future] = None
        self._client_waiters: deque = deque()   # [first index, term, futures]
        self._metric_waiters: list = []         # (predicate, future)
        self._clients: dict[int, Any] = {}
        self._tasks: set = set()
        self._wakeup: Optional[asyncio.Future] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = 0.0
        self._seen = (None, None, None)         # (state, term, leader) last logged
        self._core_task: Optional[asyncio.Task] = None

    # ------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        """Restores the engine from the log store and state machine."""
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
        self.last_applied = applied
        from raftcore.types import Vote
        self.engine.restore(vote if vote is not None else Vote(0, None, False), purged, entries,
                            committed.index if committed else 0,
                            applied.index if applied else 0, sm_membership)
        self.engine.take_commands()   # restore emits nothing that needs running
        self._seen = (self.engine.state, self.engine.vote.term, self.engine.leader_id)

    def start(self) -> None:
        self._core_task = self.loop.create_task(self._core_loop(), name=f"raftcore-{self.id}")
        self._arm_timer()

    async def shutdown(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.engine.shutdown()
        if self._timer is not None:
            self._timer.cancel()
        err = Fatal(f"node {self.id} has shut down; a write in progress may or may not "
                    "have been committed")
        self._fail_everything(err)
        tasks = list(self._tasks)
        if self._core_task is not None:
            tasks.append(self._core_task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in self._clients.values():
            try:
                await c.close()
            except Exception:  # a failing close must not stop the shutdown
                self.log.debug("closing a network client failed", exc_info=True)
        self.log.info("node %s shut down", self.id)

    def check_running(self) -> None:
        if self._fatal is not None:
            raise Fatal(f"node {self.id} stopped after an error: {self._fatal}") from self._fatal
        if self.stopped:
            raise Fatal(f"node {self.id} has shut down; create a new Raft to restart it")

    def _fail_everything(self, err: BaseException) -> None:
        for _, fut in self._pending_writes:
            _fail(fut, err)
        self._pending_writes.clear()
        for _, _, futs in self._client_waiters:
            for fut in futs:
                _fail(fut, err)
        self._client_waiters.clear()
        for _, fut in self._exec_waiters:
            _fail(fut, err)
        self._exec_waiters.clear()
        for _, fut in self._flush_waiters:
            _fail(fut, err)
        self._flush_waiters.clear()
        for _, fut in self._metric_waiters:
            _fail(fut, err)
        self._metric_waiters.clear()
        if self._write_room is not None:
            _fail(self._write_room, err)

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

    async def client_write_many(self, payloads: list) -> list:
        """Queues payloads for the next batch; returns their responses in order."""
        self.check_running()
        if self.engine.state != LEADER:
            raise ForwardToLeader(self.engine.leader_id, self.engine.leader_node())
        loop = self.loop
        while len(self._pending_writes) >= self.config.max_pending_writes:
            await self._wait_for_room()
        futs = []
        for p in payloads:
            fut = loop.create_future()
            self._pending_writes.append((p, fut))
            futs.append(fut)
        self._kick()
        if len(futs) == 1:
            return [await futs[0]]
        return list(await asyncio.gather(*futs))

    async def client_write(self, payload: Any) -> ClientWriteResponse:
        self.check_running()
        if self.engine.state != LEADER:
            raise ForwardToLeader(self.engine.leader_id, self.engine.leader_node())
        while len(self._pending_writes) >= self.config.max_pending_writes:
            await self._wait_for_room()
        fut = self.loop.create_future()
        self._pending_writes.append((payload, fut))
        self._kick()
        return await fut

    async def _wait_for_room(self) -> None:
        if self._write_room is None or self._write_room.done():
            self._write_room = self.loop.create_future()
        await self._write_room
        self.check_running()

    def _take_write_batch(self) -> None:
        """Moves queued client writes into the engine as one batch."""
        pending = self._pending_writes
        n = min(len(pending), self.config.max_write_batch)
        payloads = [None] * n
        futs = [None] * n
        for i in range(n):
            payloads[i], futs[i] = pending.popleft()
        if self._write_room is not None and not self._write_room.done():
            self._write_room.set_result(None)
        try:
            first = self.engine.client_write(payloads, self.loop.time())
        except ForwardToLeader as e:
            for fut in futs:
                _fail(fut, ForwardToLeader(e.leader_id, e.leader_node))
            return
        self._client_waiters.append([first, self.engine.vote.term, futs])

    # ------------------------------------------------------------- handlers

    async def handle_vote(self, req):
        self.check_running()
        resp = self.engine.handle_vote_request(req, self.loop.time())
        await self.run_commands()
        return resp

    async def handle_append_entries(self, req):
        self.check_running()
        resp = self.engine.handle_append_entries(req, self.loop.time())
        await self.run_commands()
        if resp.success and self.engine.flushed < resp.matched:
            fut = self.loop.create_future()
            self._flush_waiters.append((resp.matched, fut))
            await fut
            if self.engine.vote.term != resp.term:
                # A newer leader truncated the log meanwhile: the match
                # claimed above may no longer hold, so do not claim it.
                return AppendEntriesResponse(self.engine.vote.term, False, 0, 0, 0)
        return resp

    # ---------------------------------------------------------- executing

    def _kick(self) -> None:
        """Makes sure someone will run the engine's output and queued writes."""
        if not self._busy and self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _core_loop(self) -> None:
        while not self.stopped:
            self._wakeup = self.loop.create_future()
            if self._has_work():
                self._wakeup.set_result(None)
            await self._wakeup
            if not self._busy:
                await self._run_exclusive()

    def _has_work(self) -> bool:
        return bool(self.engine.output or self._pending_writes)

    async def run_commands(self) -> None:
        """Returns once every command emitted so far has been executed."""
        target = self._taken + (1 if self.engine.output else 0)
        if self._executed >= target:
            return
        if not self._busy:
            await self._run_exclusive()
            return
        fut = self.loop.create_future()
        self._exec_waiters.append((target, fut))
        await fut

    async def _run_exclusive(self) -> None:
        self._busy = True
        try:
            await self._execute_all()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:   # storage failure, or a bug: stop the node
            self._die(exc)
        finally:
            self._busy = False

    async def _execute_all(self) -> None:
        engine = self.engine
        while not self.stopped:
            if engine.output:
                cmds = engine.take_commands()
                self._taken += 1
                await self._execute(cmds)
                self._executed = self._taken
                waiters = self._exec_waiters
                while waiters and waiters[0][0] <= self._executed:
                    _resolve(waiters.popleft()[1], None)
            elif self._pending_writes and engine.state == LEADER:
                self._take_write_batch()
            elif self._pending_writes:
                err = ForwardToLeader(engine.leader_id, engine.leader_node())
                while self._pending_writes:
                    _fail(self._pending_writes.popleft()[1], err)
            else:
                break
        self._after_round()

    async def _execute(self, cmds: list) -> None:
        for cmd in cmds:
            kind = cmd[0]
            if kind == "send_append":
                self._spawn(self._send_append(cmd[1], cmd[2]))
            elif kind == "append":
                entries = cmd[1]
                last = entries[-1]
                term, index = last.term, last.index
                self.log_store.append(entries, lambda err, t=term, i=index: self._on_flushed(err, t, i))
            elif kind == "apply":
                await self._apply(cmd[1])
            elif kind == "save_vote":
                await self.log_store.save_vote(cmd[1])
            elif kind == "truncate":
                self.log_store.truncate_after(cmd[1] - 1)
                self._fail_truncated_writes(cmd[1])
            elif kind == "send_vote":
                self._spawn(self._send_vote(cmd[1], cmd[2]))
            else:
                raise RaftError(f"unknown engine command {kind!r}")

    def _on_flushed(self, err: Optional[BaseException], term: int, index: int) -> None:
        if err is not None:
            self._die(StorageError(f"the log store failed to flush up to index {index}: {err}"))
            return
        if self.stopped:
            return
        self.engine.log_flushed(term, index)
        flushed = self.engine.flushed
        if self._flush_waiters:
            keep = []
            for w in self._flush_waiters:
                if w[0] <= flushed:
                    _resolve(w[1], None)
                else:
                    keep.append(w)
            self._flush_waiters = keep
        if self.engine.output:
            self._kick()

    async def _apply(self, entries: list) -> None:
        responses = await self.sm.apply(entries)
        if len(responses) != len(entries):
            raise StorageError(f"the state machine returned {len(responses)} responses for "
                               f"{len(entries)} entries; it must return one per entry")
        last = entries[-1]
        self.last_applied = LogId(last.term, last.index)
        waiters = self._client_waiters
        if not waiters:
            return
        base = entries[0].index
        last_index = last.index
        while waiters and waiters[0][0] <= last_index:
            w = waiters[0]
            first, term, futs = w
            n = len(futs)
            upto = min(first + n - 1, last_index)
            for index in range(max(first, base), upto + 1):
                fut = futs[index - first]
                e = entries[index - base]
                if fut.done():
                    continue
                if e.term == term:
                    fut.set_result(ClientWriteResponse(term, index, responses[index - base]))
                else:
                    fut.set_exception(ForwardToLeader(self.engine.leader_id,
                                                      self.engine.leader_node()))
            if upto == first + n - 1:
                waiters.popleft()
            else:
                w[2] = futs[upto + 1 - first:]
                w[0] = upto + 1

    def _fail_truncated_writes(self, since: int) -> None:
        """Writes whose entries were truncated by a newer leader did not commit."""
        waiters = self._client_waiters
        while waiters:
            first, term, futs = waiters[-1]
            if first + len(futs) - 1 < since:
                break
            cut = max(since, first)
            err = ForwardToLeader(self.engine.leader_id, self.engine.leader_node())
            for fut in futs[cut - first:]:
                _fail(fut, err)
            if cut == first:
                waiters.pop()
            else:
                waiters[-1][2] = futs[:cut - first]
                break

    # ------------------------------------------------------------ network

    def _client(self, target: int):
        c = self._clients.get(target)
        if c is None:
            node = None
            if self.engine.membership is not None:
                node = self.engine.membership.nodes.get(target)
            c = self.network.client(target, node)
            self._clients[target] = c
        return c

    def _spawn(self, coro) -> None:
        t = self.loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _send_append(self, target: int, req: AppendEntriesRequest) -> None:
        try:
            resp = await self._client(target).append_entries(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.stopped:
                return
            self.log.debug("append_entries to %s failed: %s", target, exc)
            self.engine.handle_append_failure(target, req, self.loop.time())
            self._kick()
            return
        if self.stopped:
            return
        self.engine.handle_append_response(target, req, resp, self.loop.time())
        await self.run_commands()

    async def _send_vote(self, target: int, req) -> None:
        try:
            resp = await self._client(target).vote(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.debug("vote request to %s failed: %s", target, exc)
            return
        if self.stopped:
            return
        self.engine.handle_vote_response(target, req, resp, self.loop.time())
        await self.run_commands()

    # ------------------------------------------------------------- timers

    def _arm_timer(self) -> None:
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
            if self.engine.output:
                self._kick()
        if self.tick_enabled:
            self._arm_timer()
        else:
            # Ticking is off: look again after a heartbeat interval.
            self._timer_at = self.loop.time() + self.config.heartbeat_interval
            self._timer = self.loop.call_at(self._timer_at, self._on_timer)

    def step(self, fn: Callable, *args: Any) -> Any:
        """Steps the engine from outside an executor (triggers) and schedules
        the commands it emits."""
        self.check_running()
        r = fn(*args)
        self._kick()
        self._arm_timer()
        return r

    # ------------------------------------------------------------ metrics

    def _after_round(self) -> None:
        engine = self.engine
        seen = (engine.state, engine.vote.term, engine.leader_id)
        if seen != self._seen:
            self._log_transition(self._seen, seen)
            self._seen = seen
        self._arm_timer()
        if self._metric_waiters:
            self.check_metric_waiters()

    def _log_transition(self, old: tuple, new: tuple) -> None:
        state, term, leader = new
        if state == LEADER and old[0] != LEADER:
            self.log.info("node %s became leader in term %s", self.id, term)
        elif state == CANDIDATE and (old[0] != CANDIDATE or old[1] != term):
            self.log.info("node %s started an election for term %s", self.id, term)
        elif old[0] == LEADER and state != LEADER and state != SHUTDOWN:
            self.log.info("node %s stepped down in term %s", self.id, term)
        elif leader != old[2] and leader is not None:
            self.log.info("node %s follows leader %s in term %s", self.id, leader, term)
        elif term != old[1]:
            self.log.debug("node %s moved to term %s", self.id, term)

    def add_metric_waiter(self, predicate: Callable, fut: asyncio.Future) -> None:
        self._metric_waiters.append((predicate, fut))

    def remove_metric_waiter(self, fut: asyncio.Future) -> None:
        self._metric_waiters = [w for w in self._metric_waiters if w[1] is not fut]

    def check_metric_waiters(self, metrics_fn: Optional[Callable] = None) -> None:
        from raftcore.raft import build_metrics
        m = build_metrics(self)
        keep = []
        for pred, fut in self._metric_waiters:
            if fut.done():
                continue
            try:
                ok = pred(m)
            except Exception as exc:
                fut.set_exception(exc)
                continue
            if ok:
                fut.set_result(m)
            else:
                keep.append((pred, fut))
        self._metric_waiters = keep


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
