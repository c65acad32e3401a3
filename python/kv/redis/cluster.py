"""Where a node's Redis commands run: reads and writes on the leader's
Raft, forwarded there by a follower.

A write goes into the log under this node's kv session (a
raftcore.kv.Client's client id and sequence number): on the leader the
first attempt calls the local Raft directly; if that node is not (or no
longer) the leader, the same sequence number goes to the leader through
the Client, which follows redirects and retries, so a write retried after a
leader change is applied once. A write whose outcome is still unknown when
the Client gives up is answered with an error, and is never applied after
that. Reads are linearizable by default: the leader confirms its leadership
(ReadIndex, or the lease) and runs them against its state machine; with
`reads="stale"` a node runs them against its own state.

The writes of all the node's connections share rounds (rounds.py): those
that arrive while one round is in flight go into the next round's one log
entry, under one sequence number; likewise the reads a follower forwards
go to the leader in one request per round.

Nodes ask each other with two service messages of the kv port:

    [REDIS_WRITE, client_id, seq, acked_below, commands, watched] -> [OK, response]
    [REDIS_READ, mode, commands]                          -> [OK, replies]

(or REDIRECT / UNAVAILABLE / ERROR as the kv protocol's other requests).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Optional

from raftcore.errors import ForwardToLeader, InvalidCommand, RaftError
from raftcore.kv.client import Client
from raftcore.kv.protocol import (ERROR, LEASE, OK, READ_INDEX, REDIRECT, SESSION_CMD, STALE,
                                  UNAVAILABLE, check_session)
from raftcore.kv.redis.apply import (EXPIRE_DUE, REDIS_CMD, TRACK, TRACK_SPAN_MS, read_commands,
                                     run_commands)
from raftcore.kv.redis.keyspace import Keyspace
from raftcore.kv.redis.resp import error, is_error
from raftcore.kv.redis.rounds import CommandRounds, ReadRounds, future_answer
from raftcore.model import ReadPolicy, ServerState
from raftcore.network.framing import SERVICE_TYPE_MIN

log = logging.getLogger("raftcore.kv.redis")

#: Service message types between nodes (clear of the kv protocol's).
REDIS_WRITE = SERVICE_TYPE_MIN + 32
REDIS_READ = SERVICE_TYPE_MIN + 33

READ_MODES = {"linearizable": READ_INDEX, "lease": LEASE, "stale": STALE}

#: Write rounds a node keeps in flight: while one entry is replicated and
#: fsynced, the next is proposed (one more costs smaller entries; 2 gave
#: the most pipelined SETs/s in benchmarks/redis_cluster.py).
WRITE_ROUNDS_IN_FLIGHT = 2

#: `done(replies, exc)`: how a batch submitted without a coroutine is answered.
Answer = Callable[[Any, Optional[BaseException]], None]


def now_ms() -> int:
    """The leader's wall clock, stamped into each Redis entry."""
    return int(time.time() * 1000)


class SessionClient(Client):
    """The node's own kv Client, with the session write of a Redis batch
    whose first attempt may be made locally.

    Several writes may be in flight (the write rounds of the node's
    connections). Their local attempts reach the Raft in sequence order,
    so the leader's log keeps it; a write that goes to the leader over the
    network waits until every earlier write has settled, so a forwarded
    write cannot overtake one made before it (whose local attempt may
    still fail and be forwarded in turn)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: seq -> resolved once that write has settled, for the writes in flight.
        self._settled: dict[int, asyncio.Future] = {}

    async def redis_write(self, cmds: list, watched: Optional[list],
                          local: Callable[[int, int], Awaitable[Any]]) -> Any:
        """The response of `cmds` (and `watched`, for a transaction),
        applied as one entry under the next seq.
        `local(seq, acked_below)` tries it on this node's Raft (NOT_HERE:
        not the leader, or its outcome there is unknown); then the leader
        is asked through the network under the same seq."""
        seq = self._next_seq
        self._next_seq += 1
        self._in_flight.add(seq)
        settled = self._settled[seq] = asyncio.get_running_loop().create_future()
        try:
            got = await local(seq, self._acked_below())
            if got is NOT_HERE:
                for earlier in [f for s, f in self._settled.items() if s < seq]:
                    await earlier
                got = (await self._request(lambda: [REDIS_WRITE, self.client_id, seq,
                                                    self._acked_below(), cmds, watched]))[1]
            return got
        finally:
            self._in_flight.discard(seq)
            del self._settled[seq]
            settled.set_result(None)

    async def redis_read(self, mode: int, cmds: list) -> list:
        """The replies of read `cmds` as the leader runs them."""
        return (await self._request([REDIS_READ, mode, cmds]))[1]


#: What a local attempt of SessionClient.redis_write answers when this node
#: could not apply the write (None is an answer: EXEC's nil).
NOT_HERE: Any = object()


def _refusal(e: RaftError) -> list:
    """The kv protocol's answer to a request this node cannot serve."""
    if isinstance(e, ForwardToLeader):
        return [REDIRECT, e.leader_id, getattr(e.leader_node, "addr", None) or None]
    return [UNAVAILABLE, f"{type(e).__name__}: {e}"]


def _errors(cmds: list, message: str) -> list:
    return [error(message)] * len(cmds)


class ClusterBackend:
    """Runs a connection's batches of reads and writes for a node."""

    def __init__(self, raft: Any, sm: Any, client: SessionClient, reads: str = "linearizable",
                 round_bytes: int = 256 * 1024) -> None:
        """round_bytes: a log entry (or a forwarded read) of the writes of
        several connections carries about this many argument bytes at most
        (keep it well under Config.max_command_bytes)."""
        self.raft = raft
        self.sm = sm
        self.client = client
        self.read_mode = READ_MODES[reads]
        self._rounds = {READ_INDEX: ReadRounds(raft, ReadPolicy.READ_INDEX),
                        LEASE: ReadRounds(raft, ReadPolicy.LEASE_READ)}
        #: Writes of all connections, one log entry per round.
        self.writes = CommandRounds(self.submit, round_bytes,
                                    max_in_flight=WRITE_ROUNDS_IN_FLIGHT)
        self._read_view: Optional[tuple] = None   # (rounds, round number, Keyspace)
        #: Reads a follower forwards, one request to the leader per round.
        self.forwarded_reads = CommandRounds(self._forward_read, round_bytes)

    @property
    def read_rounds(self) -> int:
        """Leadership confirmations run for reads on this node."""
        return sum(r.rounds for r in self._rounds.values())

    def handlers(self) -> dict:
        """The service handlers of the node-to-node messages."""
        return {REDIS_WRITE: self._serve_write, REDIS_READ: self._serve_read}

    # ------------------------------------------------------------ writes

    def write(self, cmds: list, size: Optional[int] = None) -> Awaitable[list]:
        """The replies of write commands (`size`: their argument bytes),
        applied in one log entry together with the writes of the other
        connections that arrive while a round is in flight."""
        if size is None:
            size = sum(len(a) for c in cmds for a in c)
        return self.writes.run(cmds, size)

    def submit_write(self, cmds: list, size: int, done: Answer) -> None:
        """As write, without a coroutine: `done(replies, None)`, or
        `done(None, exc)` if the round failed (a bug, or cancelled)."""
        self.writes.submit(cmds, size, done)

    async def submit(self, cmds: list, watched: Optional[list] = None) -> Any:
        """The response of one log entry of `cmds`: their replies, an error
        reply, or (a transaction, `watched` given) None if a watched key
        changed."""
        try:
            return await self.client.redis_write(
                cmds, watched, lambda seq, acked: self._local_write(cmds, watched, seq, acked))
        except RaftError as exc:         # Timeout, KvError: the outcome is unknown
            return error(f"ERR the write's outcome is unknown ({exc}); it will not be "
                         "applied later")

    async def _local_write(self, cmds: list, watched: Optional[list], seq: int,
                           acked: int) -> Any:
        try:
            return await self._propose(self.client.client_id, seq, acked, cmds, watched)
        except RaftError:
            # Not the leader, or no longer: the leader gets the same seq,
            # so a copy committed here meanwhile is not applied twice.
            return NOT_HERE

    async def _propose(self, cid: Any, seq: int, acked: int, cmds: list,
                       watched: Optional[list]) -> Any:
        """Proposes the session entry of `cmds`; its response (an error
        reply if refused). ForwardToLeader / RaftError as client_write."""
        entry = [REDIS_CMD, now_ms(), cmds]
        if watched is not None:
            entry.append(watched)
        try:
            # Owned: every part is built here or by the RESP parser (lists,
            # bytes, str, int), and none is changed once proposed.
            resp = await self.raft.client_write([SESSION_CMD, cid, seq, acked, entry],
                                                owned=True)
        except InvalidCommand as exc:    # too large: no node takes it
            return error(f"ERR {exc}")
        status, value = resp.data
        return value if status == "ok" else error(f"ERR {value}")

    async def _serve_write(self, msg: list) -> list:
        if len(msg) != 6 or not isinstance(msg[4], list) or \
                not (msg[5] is None or isinstance(msg[5], list)):
            return [ERROR, "a redis write is [REDIS_WRITE, client_id, seq, acked_below, cmds, "
                           "watched]"]
        _, cid, seq, acked, cmds, watched = msg
        why = check_session(cid, seq, acked)
        if why is not None:
            return [ERROR, why]
        try:
            return [OK, await self._propose(cid, seq, acked, cmds, watched)]
        except RaftError as e:
            return _refusal(e)

    async def sweep_expired(self, interval: float) -> None:
        """Runs until cancelled: while this node leads, proposes every
        `interval` seconds the deletion of keys whose deadline passed (reads
        hide them already; this frees them on every node)."""
        expires = self.sm.redis.expires
        while True:
            await asyncio.sleep(interval)     # a period, not a wait for a condition
            if not expires or self.raft.metrics.state != ServerState.LEADER:
                expires = self.sm.redis.expires       # a snapshot install replaces it
                continue
            now = now_ms()
            if any(d <= now for d in expires.values()):
                # An error reply (no quorum, say) is retried next period.
                try:
                    await self.write([[EXPIRE_DUE]])
                except Exception:     # a bug of ours: logged, and tried again next period
                    log.error("proposing the deletion of expired keys failed", exc_info=True)
            expires = self.sm.redis.expires

    async def ensure_tracked(self) -> Any:
        """Makes sure that entries record modification indexes for at least
        half of TRACK_SPAN_MS from now (see apply.py: WATCH calls this
        before it reads them, and the server while a client watches keys):
        proposes a TRACK entry if less is left. None, or the error reply
        of that write. The time is the later of this node's clock and the
        newest entry's stamp (the leader's clock, which decides): a node
        whose clock is behind still sees a span run out once entries are
        stamped past it, so a WATCH retried after an abort renews it."""
        st = self.sm.redis
        if st.tracking_until - max(now_ms(), st.clock_ms) > TRACK_SPAN_MS // 2:
            return None
        reply = (await self.write([[TRACK, TRACK_SPAN_MS]], len(TRACK) + 8))[0]
        return reply if is_error(reply) else None

    # ------------------------------------------------------------- reads

    async def read(self, cmds: list, size: Optional[int] = None) -> list:
        """The replies of read commands (`size`: their argument bytes):
        linearizable unless the node runs with --redis-reads lease|stale."""
        if size is None:
            size = sum(len(a) for c in cmds for a in c)
        fut = asyncio.get_running_loop().create_future()
        self.submit_read(cmds, size, future_answer(fut))
        return await fut

    def submit_read(self, cmds: list, size: int, done: Answer) -> None:
        """As read, without a coroutine: `done(replies, None)` (now, in
        stale mode), or `done(None, exc)` if a round failed (a bug, or
        cancelled). The leader runs the reads as soon as their round is
        confirmed, in the round's own callbacks: no task per reader."""
        mode = self.read_mode
        if mode == STALE:
            done(read_commands(self.sm, now_ms(), cmds), None)
            return
        rounds = self._rounds[mode]
        rounds.add(lambda exc: self._confirmed(exc, rounds, cmds, size, done))

    def _confirmed(self, exc: Optional[BaseException], rounds: ReadRounds, cmds: list,
                   size: int, done: Answer) -> None:
        if exc is None:
            # The readers of one round are answered one after the other in
            # one callback of the loop: they share one view of the state
            # (the same applied state and the same time), made once. Within
            # that answering, rounds.rounds is this round's number (the next
            # round starts after it).
            view = self._read_view
            if view is None or view[0] is not rounds or view[1] != rounds.rounds:
                view = self._read_view = (rounds, rounds.rounds, Keyspace(
                    self.sm, max(now_ms(), self.sm.redis.clock_ms), False))
            done(run_commands(view[2], cmds), None)
        elif isinstance(exc, ForwardToLeader):
            def forwarded(replies: Any, failed: Optional[BaseException]) -> None:
                if isinstance(failed, RaftError):
                    done(_errors(cmds, f"ERR no leader answered the read ({failed})"), None)
                else:
                    done(replies, failed)
            self.forwarded_reads.submit(cmds, size, forwarded)
        elif isinstance(exc, RaftError):
            done(_errors(cmds, f"ERR the read could not be confirmed ({exc})"), None)
        else:
            done(None, exc)

    def _forward_read(self, cmds: list) -> Awaitable[list]:
        # One mode per node: every forwarded round is in this node's mode.
        return self.client.redis_read(self.read_mode, cmds)

    async def _leader_read(self, mode: int, cmds: list) -> list:
        await self._rounds[mode].confirm()
        return read_commands(self.sm, now_ms(), cmds)

    async def _serve_read(self, msg: list) -> list:
        if len(msg) != 3 or msg[1] not in (READ_INDEX, LEASE) or not isinstance(msg[2], list):
            return [ERROR, "a redis read is [REDIS_READ, mode, cmds]"]
        try:
            return [OK, await self._leader_read(msg[1], msg[2])]
        except RaftError as e:
            return _refusal(e)
