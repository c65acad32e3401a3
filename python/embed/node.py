"""`raftcore.start()`: a whole node in one call, and EmbeddedNode, the
handle a service calls its replicated objects through."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import os
import secrets
import ssl as _ssl
import time
from typing import Any, Awaitable, Callable, Coroutine, Mapping, Optional, Sequence

from raftcore.config import Config, SnapshotPolicy
from raftcore.errors import (ConfigError, Fatal, InvalidCommand, NetworkError,
                             NotAllowed, OutcomeUnknown, RaftError, Timeout)
from raftcore.model import Node, ServerState
from raftcore.network.client import TcpNetwork, parse_address
from raftcore.network.server import RaftServer
from raftcore.raft import Raft, RaftMetrics
from raftcore.storage.base import LogStore
from raftcore.storage.file import FileLogStore
from raftcore.storage.mem import MemLogStore

from raftcore.embed.batches import CommandBatches, args_size, head_size, names_at
from raftcore.embed.deadlines import Deadlines
from raftcore.embed.pending_call import PendingCall
from raftcore.embed.forwarding import (DONE, EMBED_CALL, EMBED_READ, REDIRECT, REFUSED,
                                       UNAVAILABLE, UNKNOWN, Clock, Forwarder, Forwarding,
                                       LeaderService, node_status, propose,
                                       read_point, reply_to_error)
from raftcore.embed.replicated import (CMD, FAILED, OK, TICK, ReplicatedStateMachine,
                                       kind_of, wants_own_entry)

__all__ = ["start", "parse_peers", "EmbeddedNode", "ObjectProxy", "CommandFailed", "service_config"]

log = logging.getLogger("raftcore.embed")

#: Read modes of queries.
READ_MODES = ("linearizable", "lease", "stale")


class CommandFailed(RaftError):
    """The command's method raised while it was applied (on every node
    alike): the message names the exception. The entry is in the log; the
    state is whatever the method left."""


def service_config(**overrides: Any) -> Config:
    """Config defaults for a service node: pre-vote and check-quorum on,
    election timeouts fit for a loaded machine, a snapshot every 10,000
    entries; `overrides` are Config fields."""
    kw: dict[str, Any] = {
        "enable_pre_vote": True, "check_quorum": True, "heartbeat_interval": 0.1,
        "election_timeout_min": 0.5, "election_timeout_max": 1.0,
        "snapshot_policy": SnapshotPolicy.logs_since_last(10_000),
    }
    kw.update(overrides)
    return Config(**kw)


def parse_peers(text: str) -> dict[int, str]:
    """"1=host:port,2=host:port,...": id -> address; ConfigError naming the
    bad part."""
    from raftcore.kv.cli import _parse_peers
    try:
        return _parse_peers(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"peers {text!r:.200}: {exc}") from None


async def start(node_id: int, peers: Mapping[int, str] | str, *, state: Any,
                dir: Optional[str | os.PathLike] = None, secret: Optional[bytes] = None,
                ssl: Optional[tuple[_ssl.SSLContext, _ssl.SSLContext]] = None,
                listen: Optional[str] = None, config: Optional[Config] = None,
                init: Optional[bool] = None, timeout: float = 10.0,
                tick_interval: float = 1.0) -> "EmbeddedNode":
    """Starts node `node_id` of the cluster `peers` (id -> "host:port", or
    the text "1=host:port,2=host:port,...") and
    returns its handle once it serves (it need not know a leader yet).

    state: the replicated object (an instance of a class whose methods are
        marked @raftcore.command / @raftcore.query), or a mapping name ->
        object for several (`node.objects[name]`); every node passes
        objects of the same classes, freshly made.
    dir: the node's data directory: the log (FileLogStore, fsynced) in
        DIR/log, the newest snapshot in DIR/snapshots. None keeps everything
        in memory, for tests: every start is then a new incarnation of the
        node, which the others refuse to count until it is removed and
        added back.
    secret: the cluster's shared secret (every node the same): peers prove
        they hold it before any request is read (raftcore.network.tcp).
    ssl: (server context, client context) to speak TLS between nodes.
    listen: the address to serve on (default: the node's in `peers`).
    config: a raftcore.Config (default: service_config()).
    init: whether this node forms the cluster when its storage is fresh.
        None (the default): the node with the lowest id in `peers` does,
        and the others wait for it to contact them; a node that already has
        a log restarts from it and never initializes again. Pass False on
        a node that will be added to a running cluster (add_learner).
    timeout: seconds a call waits, across leader changes, before giving up.
    tick_interval: seconds between the leader's tick entries when an
        object wants time to move on its own (a lock's leases expiring).
    """
    if isinstance(peers, str):
        peers = parse_peers(peers)
    if not isinstance(peers, Mapping) or not peers:
        raise ConfigError(f"peers must be a non-empty mapping of node id -> 'host:port', got "
                          f"{peers!r:.80}")
    for i, addr in peers.items():
        if type(i) is not int:
            raise ConfigError(f"peers: node ids are ints, got {i!r}")
        try:
            parse_address(addr)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"peers: node {i}: {exc}") from None
    if listen is None:
        if node_id not in peers:
            raise ConfigError(f"node {node_id} is not in peers {sorted(peers)}: give it "
                              "listen='host:port'")
        listen = peers[node_id]
    try:
        host, port = parse_address(listen)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"listen: {exc}") from None
    objects = dict(state) if isinstance(state, Mapping) else {"state": state}
    for name, obj in objects.items():
        if obj is None or not any(kind_of(obj, m) for m in _methods_of(obj)):
            raise ConfigError(f"state {name!r}: {type(obj).__name__} has no method marked "
                              "@raftcore.command or @raftcore.query")
    if timeout <= 0 or tick_interval <= 0:
        raise ConfigError("timeout and tick_interval must be positive")
    config = config if config is not None else service_config()
    server_ssl, client_ssl = ssl if ssl is not None else (None, None)

    store: LogStore
    if dir is not None:
        os.makedirs(dir, exist_ok=True)
        store = await FileLogStore.open(os.path.join(dir, "log"))
    else:
        store = MemLogStore()
    raft = server = None
    try:
        if dir is not None:     # reads the newest snapshot: off the event loop
            sm = await asyncio.get_running_loop().run_in_executor(
                None, ReplicatedStateMachine, objects, os.path.join(dir, "snapshots"))
        else:
            sm = ReplicatedStateMachine(objects)
        net = TcpNetwork(client_ssl, rpc_timeout=config.rpc_timeout, secret=secret)
        raft = await Raft.create(node_id, config, net, store, sm)
        server = await RaftServer.start(raft, host, port, ssl=server_ssl, secret=secret,
                                        services=LeaderService(raft).handlers())
        forward_net = TcpNetwork(client_ssl, rpc_timeout=timeout, secret=secret)
        node = EmbeddedNode(raft, server, store, sm, Forwarder(forward_net, raft), timeout)
        if init if init is not None else node_id == min(peers):
            try:
                await raft.initialize({i: Node(a) for i, a in peers.items()})
                log.info("node %s initialized the cluster %s", node_id, dict(peers))
            except NotAllowed:
                pass            # a restart: the log has the cluster already
        node.start_ticks(tick_interval)
        return node
    except BaseException:
        if raft is not None:
            await raft.shutdown()
        if server is not None:
            await server.close()
        await store.close()
        raise


def _methods_of(obj: Any) -> list[str]:
    return [n for n in dir(type(obj)) if not n.startswith("__")]


# A call making attempts of its own (EmbeddedNode._outstanding; a batched
# call has its future there instead), a list for speed: [deadline, the task
# awaiting an attempt while one is in flight, whether the deadline sweep
# cancelled it, the object and method called].
_DEADLINE, _TASK, _EXPIRED, _OBJ, _METHOD = 0, 1, 2, 3, 4


def _result(obj: str, method: str, answer: Sequence[Any]) -> Any:
    """The result of a command's answer (replicated.py), or the error it
    means, raised."""
    code = answer[0]
    if code == OK:
        return answer[1]
    if code == FAILED:
        raise CommandFailed(f"{obj}.{method} failed: {answer[1]}")
    raise OutcomeUnknown(f"{obj}.{method}: {answer[1]}")


def _settle_from(fut: asyncio.Future, task: asyncio.Task) -> None:
    """Gives `fut` the outcome of `task` (unless it has one)."""
    if fut.done():
        return
    if task.cancelled():
        fut.cancel()
    elif task.exception() is not None:
        fut.set_exception(task.exception())     # type: ignore[arg-type]
    else:
        fut.set_result(task.result())


class EmbeddedNode:
    """A running node made by raftcore.start(). `node.raft` is the Raft
    underneath (membership changes, metrics, triggers)."""

    def __init__(self, raft: Raft, server: Optional[RaftServer], store: LogStore,
                 sm: ReplicatedStateMachine, forwarder: Forwarding, timeout: float,
                 clock: Clock = time.time, client_id: Optional[str] = None) -> None:
        """Used by raftcore.start (and by the simulator, which has no server
        and gives its own forwarder, clock and client id)."""
        self.raft = raft
        self.server = server
        self.store = store
        self.state_machine = sm
        self.timeout = timeout
        self._forwarder = forwarder
        #: Stamps the entries this node admits as leader (time.time).
        self.clock = clock
        self._loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._loop)
        #: This node's session: a fresh client id per start.
        self.client_id = client_id or f"{raft.id}-{secrets.token_hex(6)}"
        self._seq = 0
        #: seq -> the calls waiting for their answers, oldest first: a
        #: batched call's future, else its attempts' record (a list).
        self._outstanding: dict[int, Any] = {}
        #: The timer of the deadline sweep (_expire), while one is set.
        self._sweep: Optional[asyncio.TimerHandle] = None
        #: (object, method) -> (whether that @command wants an entry of its
        #: own, its head_size).
        self._commands: dict[tuple[str, str], tuple[bool, int]] = {}
        self._own_id = raft.id
        self._client_write = raft.client_write
        #: Calls making attempts of their own (not batched) now.
        self._proposing = 0
        self._batches = CommandBatches(raft, self.client_id, clock, self._oldest_call,
                                       raft.config.max_command_bytes, self._answered,
                                       self._unanswered)
        #: The node the last call went to when it was not this one.
        self._leader_hint: Optional[int] = None
        self._tasks: set[asyncio.Task] = set()
        self.objects = {name: ObjectProxy(self, name) for name in sm.objects}

    # ------------------------------------------------------------ access

    @property
    def id(self) -> int:
        return self.raft.id

    @property
    def state(self) -> "ObjectProxy":
        """The replicated object given as `state=` (with a mapping, use
        objects[name])."""
        try:
            return self.objects["state"]
        except KeyError:
            raise AttributeError("state= was a mapping: use node.objects[name]") from None

    @property
    def metrics(self) -> RaftMetrics:
        return self.raft.metrics

    @property
    def is_leader(self) -> bool:
        return self.raft.metrics.state == ServerState.LEADER

    async def wait_leader(self, timeout: Optional[float] = None) -> int:
        """The leader's id, once one is known (Timeout after `timeout`)."""
        m = await self.raft.wait(timeout or self.timeout).metrics(
            lambda m: m.current_leader is not None, "a leader")
        return m.current_leader      # type: ignore[return-value]

    # ----------------------------------------------------------- commands

    def call(self, obj: str, method: str, args: Sequence[Any] = ()) -> Coroutine[Any, Any, Any]:
        """Runs command `obj.method(*args)` through the log: awaiting what
        it returns (a coroutine: await it, or run it as a task) gives the
        command's result, from any node (a follower forwards it to the
        leader). A call retried after a leader change or a lost reply is
        applied once.

        Raises InvalidCommand at once for an argument that is not a msgpack
        value (or a method that is not a @command). Awaiting raises
        CommandFailed if the method raised, OutcomeUnknown if after
        `timeout` it cannot be known whether the command was applied,
        Timeout if it surely was not."""
        command = self._commands.get((obj, method))
        if command is None:
            command = self._command_of(obj, method)
        own_entry, head = command
        try:
            # Scalars need no trial encoding (the common case, kept cheap).
            size = head + args_size(args)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidCommand(f"{obj}.{method}: its arguments must be msgpack values "
                                 f"(None, bool, int, float, str, bytes, lists, maps): {exc}") \
                from None
        self._seq = seq = self._seq + 1
        deadline = self._loop.time() + self.timeout
        if self._sweep is None:
            self._sweep = self._loop.call_at(deadline, self._expire)
        hint = self._leader_hint
        if (hint is None or hint == self._own_id) and \
                (self._proposing or self._batches.in_flight):
            # Others are in flight: it joins this turn's batch. The caller
            # awaits the future itself (_answered settles it), bounded by
            # its batch's deadline (CommandBatches.expire).
            # A copy: the batch is encoded a turn later. A tuple: one of
            # scalars leaves the garbage collector's passes after its first.
            fut = self._outstanding[seq] = self._batches.submit(
                seq, obj, method, tuple(args), size, own_entry, deadline)
            return PendingCall(fut)
        w = self._outstanding[seq] = [deadline, None, False, obj, method]
        if hint is not None and hint != self._own_id:
            # Forwarded: attempts of its own.
            return self._attempts(seq, obj, method, list(args), w, None)
        # Alone: no turn to wait for, an entry of its own at once. Counted
        # from now, so that the calls made in this turn batch behind it.
        self._proposing += 1
        return self._alone(seq, obj, method, args, w)

    async def _alone(self, seq: int, obj: str, method: str, args: Sequence[Any],
                     w: list) -> Any:
        """A call proposed by itself (nothing else was in flight)."""
        outstanding = self._outstanding
        try:
            w[_TASK] = asyncio.current_task(self._loop)
            reply = None
            try:
                # command_entry(), inlined (the oldest call waiting is the
                # first key). The entry is encoded before this await
                # yields: args need no copy.
                answer = (await self._client_write([
                    CMD, self.client_id, seq, next(iter(outstanding)), obj, method, args,
                    self.clock()])).data
            except RaftError as exc:
                reply = reply_to_error(exc)
            except asyncio.CancelledError:
                if not self._timed_out(w):
                    raise
                reply = [UNKNOWN, "no answer within the timeout"]
            finally:
                w[_TASK] = None
                self._proposing -= 1
            if reply is not None:
                answer = await self._until_answered(seq, obj, method, list(args), w, reply)
        finally:
            del outstanding[seq]
        if answer[0] == OK:     # _result's common case, without the call
            return answer[1]
        return _result(obj, method, answer)

    async def _attempts(self, seq: int, obj: str, method: str, args: list, w: list,
                        reply: Optional[list]) -> Any:
        """A call answered by attempts of its own (forwarded, or after its
        batch got no answer: `reply`)."""
        try:
            answer = await self._until_answered(seq, obj, method, args, w, reply)
        finally:
            del self._outstanding[seq]
        return _result(obj, method, answer)

    def _answered(self, fut: asyncio.Future, fields: list, k: int,
                  answer: Sequence[Any]) -> None:
        """A batched call's entry applied (the call's seq at fields[k]; see
        CommandBatches): its caller gets the answer."""
        self._outstanding.pop(fields[k], None)  # gone if the sweep ended it
        if fut.done():          # cancelled by its caller, or past its deadline
            return
        if answer[0] == OK:     # _result's common case, without the call
            fut.set_result(answer[1])
            return
        obj, method = names_at(fields, k)
        try:
            fut.set_result(_result(obj, method, answer))
        except RaftError as exc:
            fut.set_exception(exc)

    def _unanswered(self, fut: asyncio.Future, seq: int, obj: str, method: str,
                    args: Sequence[Any], reply: list, deadline: float) -> None:
        """A batched call got no answer (a new leader, a lost entry...): it
        goes on with attempts of its own until `deadline`, its caller still
        awaiting `fut`."""
        if fut.done():
            self._outstanding.pop(seq, None)
            return
        w = self._outstanding[seq] = [deadline, None, False, obj, method]
        task = self._loop.create_task(self._attempts(seq, obj, method, list(args), w, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: _settle_from(fut, t))
        # A caller that stops waiting stops the attempts, as it would its own.
        fut.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)

    def _command_of(self, obj: str, method: str) -> tuple[bool, int]:
        """(whether @command `obj.method` wants an entry of its own, its
        head_size), looked up once; InvalidCommand if it is no command of
        this node's."""
        target = self.state_machine.objects.get(obj) if type(obj) is str else None
        if target is None or type(method) is not str or kind_of(target, method) != "command":
            raise InvalidCommand(f"{obj}.{method} is not a @command of this node's objects")
        command = self._commands[(obj, method)] = (wants_own_entry(target, method),
                                                   head_size(obj, method))
        return command

    def _expire(self) -> None:
        """The deadline sweep: ends the waits of the calls past their
        deadline. A batched call (its batch's deadline, CommandBatches.
        expire) gets OutcomeUnknown: its entry may still commit. An attempt
        in flight is cancelled (_timed_out); a call between attempts checks
        its deadline before the next one. Calls of either kind are made in
        order and share one timeout, so their deadlines come in that order:
        one timer at the earliest is enough."""
        self._sweep = None
        now = self._loop.time()
        outstanding = self._outstanding
        next_at: Optional[float] = None
        for w in outstanding.values():
            if type(w) is not list:
                continue            # batched: its batch's deadline
            if w[_DEADLINE] > now:
                next_at = w[_DEADLINE]
                break
            task = w[_TASK]
            if not w[_EXPIRED] and task is not None:
                w[_EXPIRED] = True
                task.cancel()
        ended, batch_at = self._batches.expire(now)
        for fut, seq, obj, method in ended:
            # Its caller is gone: not waiting any more.
            outstanding.pop(seq, None)
            fut.set_exception(OutcomeUnknown(
                f"{obj}.{method}: not known to be applied after {self.timeout}s, nor known not "
                "to be (no answer from the leader within the timeout); it is applied at most "
                "once"))
        if batch_at is not None and (next_at is None or batch_at < next_at):
            next_at = batch_at
        if next_at is not None:
            self._sweep = self._loop.call_at(next_at, self._expire)

    @staticmethod
    def _timed_out(w: list) -> bool:
        """Whether the CancelledError an attempt got is the sweep's (then
        taken back: the call goes on to raise what its deadline means), not
        a cancellation of the caller's (which goes on)."""
        if not w[_EXPIRED]:
            return False
        uncancel = getattr(w[_TASK], "uncancel", None)    # Python 3.11+
        return uncancel is None or uncancel() == 0

    def _oldest_call(self) -> int:
        # Seqs are issued in order and the dict keeps that order, so the
        # first key is the smallest.
        return next(iter(self._outstanding))

    async def _until_answered(self, seq: int, obj: str, method: str, args: list,
                              w: list, reply: Optional[list]) -> list:
        """The answer of call `seq` after a first reply that was not one
        (`reply`; None: no attempt was made yet): attempts at the leader
        until one answers or the deadline passes."""
        deadline = w[_DEADLINE]
        maybe_applied = ""          # why the outcome of an attempt is unknown
        last = "no leader was known"
        redirects = 0               # redirects followed since the last pause
        target = self._leader_hint
        while True:
            raft = self.raft
            if reply is None and self._loop.time() >= deadline:
                reply = [UNKNOWN if maybe_applied else UNAVAILABLE, last]
            elif reply is None:
                # Where the last call went (None: this node): no metrics are
                # built on the way of a call that goes where the last one did.
                target = self._leader_hint
                w[_TASK] = asyncio.current_task(self._loop)
                try:
                    if target is None or target == raft.id:
                        attempt = propose(raft, self.client_id, seq, self._oldest_call(), obj,
                                          method, args, self.clock)
                    else:
                        attempt = self._forwarder.request(
                            target, _node_of(raft.metrics, target),
                            [EMBED_CALL, self.client_id, seq, self._oldest_call(), obj,
                             method, args])
                    # Bounded by the call's deadline (the sweep): an entry
                    # that cannot commit (no quorum) must not hold the
                    # caller forever.
                    reply = await attempt
                except (NetworkError, Timeout, asyncio.TimeoutError) as exc:
                    reply = [UNKNOWN, f"no answer from the leader: {exc or 'timed out'}"]
                except asyncio.CancelledError:
                    if not self._timed_out(w):
                        raise
                    reply = [UNKNOWN, "no answer from the leader within the timeout"]
                finally:
                    w[_TASK] = None
            code = reply[0]
            if code == DONE:
                return reply[1]
            if code == REFUSED:
                raise InvalidCommand(f"{obj}.{method}: {reply[1]}")
            self._leader_hint = None
            if code == REDIRECT:
                last = "no leader was known"
                if reply[1] is not None and reply[1] != target and redirects < 3:
                    # Straight to the leader named (a few times at most: two
                    # nodes with stale views could send a call back and forth).
                    self._leader_hint = reply[1]
                    redirects += 1
                    reply = None
                    continue
            elif code == UNKNOWN:
                maybe_applied = last = str(reply[1])
            else:
                last = str(reply[1])
            reply = None
            redirects = 0
            if raft.metrics.state == ServerState.SHUTDOWN:
                raise Fatal(f"node {raft.id} is shut down")
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                if maybe_applied:
                    raise OutcomeUnknown(
                        f"{obj}.{method}: not known to be applied after {self.timeout}s, nor "
                        f"known not to be ({maybe_applied}); it is applied at most once")
                raise Timeout(f"{obj}.{method} was not applied within {self.timeout}s: {last}")
            await self._settle(min(remaining, 0.05))

    async def _settle(self, delay: float) -> None:
        # A short pause between attempts: an election or a reconnection is
        # under way, and asking again at once would only spin.
        await asyncio.sleep(delay)

    # ------------------------------------------------------------ queries

    async def query(self, obj: str, method: str, args: Sequence[Any] = (),
                    read: str = "linearizable") -> Any:
        """Runs @query `obj.method(*args)` on this node's copy, after a read
        barrier: "linearizable" (the leader confirms with a quorum that it
        leads; the read sees every call answered before it), "lease" (the
        leader's lease instead of the round trip; see the README on
        clocks), or "stale" (now, whatever this node has applied)."""
        sm = self.state_machine
        target = sm.objects.get(obj)
        if target is None or kind_of(target, method) != "query":
            raise InvalidCommand(f"{obj}.{method} is not a @query of this node's objects")
        if read not in READ_MODES:
            raise ConfigError(f"read must be one of {READ_MODES}, got {read!r}")
        if read != "stale":
            await self._barrier(read == "lease")
        return sm.run_query(obj, method, list(args))

    async def _barrier(self, lease: bool) -> None:
        deadline = self._loop.time() + self.timeout
        last = "no leader was known"
        while True:
            raft = self.raft
            m = raft.metrics
            try:
                if m.state == ServerState.LEADER:
                    attempt = read_point(raft, lease)
                elif m.current_leader is not None:
                    attempt = self._forwarder.request(
                        m.current_leader, _node_of(m, m.current_leader), [EMBED_READ, lease])
                else:
                    attempt = _answer([REDIRECT, None])
                reply = await self._deadlines.bounded(attempt, deadline)
            except (NetworkError, Timeout, asyncio.TimeoutError) as exc:
                reply = [UNKNOWN, str(exc) or "timed out"]
            if reply[0] == DONE:
                await raft.wait(max(deadline - self._loop.time(), 0.001)) \
                    .applied_index_at_least(reply[1], "the read point to be applied")
                return
            last = str(reply[1])
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise Timeout(f"no read point from a leader within {self.timeout}s: {last}")
            await self._settle(min(remaining, 0.05))

    # -------------------------------------------------------- leader work

    def on_leader(self, fn: Callable[[int], Awaitable[Any]]) -> asyncio.Task:
        """Runs `await fn(term)` each time this node becomes leader, and
        cancels it when the node stops leading (a leader cut off from a
        majority steps down within an election timeout: check-quorum).
        `term` is a fencing token: a newer leader's is higher. A leader cut
        off by a partition may run on for up to that long after a new one
        started: a resource that must not see both checks the token.
        Returns the runner task (cancelled by stop())."""
        task = self._loop.create_task(self._lead(fn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _lead(self, fn: Callable[[int], Awaitable[Any]]) -> None:
        wait = self.raft.wait
        while True:
            try:
                m = await wait().metrics(lambda m: m.state in (ServerState.LEADER,
                                                                 ServerState.SHUTDOWN), "lead")
            except RaftError:
                return
            if m.state != ServerState.LEADER:
                return
            term = m.current_term
            work = self._loop.create_task(_logged(fn(term), self.raft.id, term))
            lost = self._loop.create_task(wait().metrics(
                lambda m: m.state != ServerState.LEADER or m.current_term != term, "lost"))
            try:
                await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
                if work.done():
                    await lost       # done early: not again in this term
            except RaftError:
                pass
            finally:
                for t in (work, lost):
                    t.cancel()
                await asyncio.gather(work, lost, return_exceptions=True)

    def start_ticks(self, interval: float) -> None:
        """While this node leads, logs the time every `interval` seconds if
        an object wants time to move on its own (raft_needs_ticks: a lock's
        leases expire without other writes)."""
        if any(getattr(o, "raft_needs_ticks", False)
               for o in self.state_machine.objects.values()):
            self.on_leader(lambda term: self._tick(interval))

    async def _tick(self, interval: float) -> None:
        """Leader: logs the time every `interval` seconds."""
        while True:
            try:
                await self.raft.client_write([TICK, self.clock()])
            except RaftError as exc:
                log.debug("tick not written: %s", exc)
            await asyncio.sleep(interval)

    def status(self) -> dict[str, Any]:
        """The node's metrics as plain data, JSON-ready (for a service's
        status page): RaftMetrics.to_dict(), so the keys are the metrics'
        names: "state" ("LEADER", ...), "current_term", "current_leader",
        "last_log_index", "committed", "last_applied" ({"term", "index"}),
        "membership" ({"configs": [[voter ids], ...], "nodes": {...}}), ..."""
        return node_status(self.raft)

    async def run_until_signal(self) -> None:
        """Serves until SIGINT or SIGTERM (or until the node stops on an
        error), then stops the node: the last line of a service's main."""
        loop = self._loop
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        died = loop.create_task(self.raft.wait().stopped())
        signalled = loop.create_task(stop.wait())
        try:
            await asyncio.wait({died, signalled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for t in (died, signalled):
                t.cancel()
            await asyncio.gather(died, signalled, return_exceptions=True)
            await self.stop()

    async def stop(self) -> None:
        """Stops the node: leader tasks, forwarded connections, the server,
        the Raft and its log store."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._forwarder.close()
        await self.raft.shutdown()
        await self._batches.close()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self.server is not None:
            await self.server.close()
        await self.store.close()


async def _answer(reply: list[Any]) -> list[Any]:
    return reply


async def _logged(coro: Awaitable[Any], node_id: int, term: int) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("node %s: the leader task of term %s raised", node_id, term)


def _node_of(m: RaftMetrics, node_id: int) -> Optional[Node]:
    return m.membership.nodes.get(node_id) if m.membership is not None else None


class ObjectProxy:
    """`node.state` / `node.objects[name]`: its @command and @query methods
    as coroutine functions (`await node.state.add(1)`); `.stale` and
    `.lease` give queries with those read modes."""

    def __init__(self, node: EmbeddedNode, name: str, read: str = "linearizable") -> None:
        self._node = node
        self._name = name
        self._read = read

    @property
    def stale(self) -> "ObjectProxy":
        return ObjectProxy(self._node, self._name, "stale")

    @property
    def lease(self) -> "ObjectProxy":
        return ObjectProxy(self._node, self._name, "lease")

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        node, name = self._node, self._name
        kind = kind_of(node.state_machine.objects[name], method)
        if kind == "command":
            return lambda *args: node.call(name, method, args)
        if kind == "query":
            read = self._read
            return lambda *args: node.query(name, method, args, read)
        raise AttributeError(f"{name}.{method} is not a @command or @query method")
