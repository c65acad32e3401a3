"""Rounds shared by the Redis connections of a node.

Many clients, one Raft round each, would cost one log entry, one session
sequence number and one replication message per client; here the requests
of every connection that arrive while a round is in flight wait and go
together in the next one:

- CommandRounds: lists of commands (writes, or reads forwarded to the
  leader) that arrive while a round is in flight go into the next round's
  one call (one log entry, one forwarded request), cut at a byte and a
  command limit; each caller gets the replies of its own commands.
- ReadRounds: leadership confirmations (ReadIndex or lease) shared by every
  read that arrived before a round started.

A request never joins a round that has started, so what it waits for
started after it arrived (a read's confirmation cannot predate a write
acknowledged before the read). ReadRounds keep one round in flight;
CommandRounds may keep several (`max_in_flight`), started in arrival
order: the leader proposes their entries in that order, so the log keeps
it, while one round's entry is replicated and fsynced the next is taken
in and encoded.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

from raftcore.model import ReadPolicy

#: A round carries at most this many commands.
ROUND_COMMANDS = 4096

#: Rounds of commands in flight at once, by default.
ROUNDS_IN_FLIGHT = 1


class _Request:
    """Commands waiting for a round, and whom to answer: `done(replies,
    exc)`, called once (exc: what the round raised, else None)."""

    __slots__ = ("cmds", "size", "done")

    def __init__(self, cmds: list, size: int, done: Callable[[Any, Any], None]) -> None:
        self.cmds = cmds
        self.size = size
        self.done = done


def future_answer(fut: asyncio.Future) -> Callable[[Any, Any], None]:
    """A `done(value, exc)` that resolves `fut` (a CancelledError cancels
    it; nothing happens if it is done already: its waiter may be gone)."""
    def done(value: Any, exc: Any) -> None:
        if fut.done():
            return
        if exc is None:
            fut.set_result(value)
        elif isinstance(exc, asyncio.CancelledError):
            fut.cancel()
        else:
            fut.set_exception(exc)
    return done


class CommandRounds:
    """Runs lists of commands through `call(cmds)` in shared rounds.

    call: returns the list of replies of `cmds` (one per command, in
        order), or one value (an error reply) that answers them all.
    max_bytes, max_commands: a round takes requests, in arrival order, up
        to this many argument bytes and commands (a larger request goes
        alone).
    max_in_flight: rounds running at once; each next one starts, with
        what waits, when one ends or when a request arrives and fewer
        run. Their calls start in order (a call's first step runs before
        the next round is taken), so a caller whose calls reach one place
        in that step keeps their order there; whatever ordering a call's
        later steps need is the caller's (SessionClient forwards in
        sequence order)."""

    def __init__(self, call: Callable[[list], Awaitable[Any]], max_bytes: int,
                 max_commands: int = ROUND_COMMANDS,
                 max_in_flight: int = ROUNDS_IN_FLIGHT) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._call = call
        self.max_bytes = max_bytes
        self.max_commands = max_commands
        self.max_in_flight = max_in_flight
        self._pending: list[_Request] = []
        self._tasks: set[asyncio.Task] = set()   # each runs rounds while requests wait
        self._starting: Optional[asyncio.Task] = None   # created, not yet running
        #: Rounds run (each one call).
        self.rounds = 0
        #: Commands they carried.
        self.commands = 0

    async def run(self, cmds: list, size: int) -> list:
        """The replies of `cmds` (`size`: their argument bytes), once the
        round that carries them is done. Raises what `call` raised."""
        fut = asyncio.get_running_loop().create_future()
        self.submit(cmds, size, future_answer(fut))
        return await fut

    def submit(self, cmds: list, size: int, done: Callable[[Any, Any], None]) -> None:
        """As run, without a coroutine: `done(replies, None)` once the round
        that carries `cmds` is done, or `done(None, exc)` with what `call`
        raised (a CancelledError if the rounds were cancelled)."""
        self._pending.append(_Request(cmds, size, done))
        self._start()

    def _start(self) -> None:
        if self._starting is not None or len(self._tasks) >= self.max_in_flight:
            return
        # A task, not a direct call: the requests of every connection that
        # runs in this loop iteration join the round too.
        task = self._starting = asyncio.get_running_loop().create_task(self._rounds())
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        if self._starting is task:
            # Cancelled before its first step (the loop shutting down): as
            # a cancelled round, nobody waiting is answered; the slot is free.
            # (A task that ran freed its slot itself, as it ended: by the
            # time this callback runs, a request may have come and found
            # every slot taken.)
            self._starting = None
            self._tasks.discard(task)
            self._cancel_waiting()

    def _take(self) -> list[_Request]:
        """The requests of the next round, in arrival order."""
        pending = self._pending
        n = size = count = 0
        while n < len(pending):
            req = pending[n]
            if n and (size + req.size > self.max_bytes
                      or count + len(req.cmds) > self.max_commands):
                break
            size += req.size
            count += len(req.cmds)
            n += 1
        taken = pending[:n]
        del pending[:n]
        return taken

    async def _rounds(self) -> None:
        self._starting = None
        try:
            while self._pending:
                batch = self._take()
                if self._pending:
                    self._start()        # what this round leaves may go at once
                await self._round(batch)
        except BaseException:            # cancelled (shutdown): nobody is answered
            self._cancel_waiting()
            raise
        finally:
            self._tasks.discard(asyncio.current_task())

    async def _round(self, batch: list[_Request]) -> None:
        cmds = batch[0].cmds if len(batch) == 1 else [c for r in batch for c in r.cmds]
        self.rounds += 1
        self.commands += len(cmds)
        try:
            replies = await self._call(cmds)
        except asyncio.CancelledError as exc:
            self._fail(batch, exc)
            raise
        except Exception as exc:         # for the callers to raise
            self._fail(batch, exc)
            return
        if type(replies) is list and len(replies) != len(cmds):
            self._fail(batch, RuntimeError(f"a round of {len(cmds)} commands got "
                                           f"{len(replies)} replies"))
            return
        if len(batch) == 1:
            req = batch[0]
            req.done(replies if type(replies) is list else [replies] * len(cmds), None)
            return
        pos = 0
        for req in batch:
            n = len(req.cmds)
            req.done(replies[pos:pos + n] if type(replies) is list else [replies] * n, None)
            pos += n

    @staticmethod
    def _fail(batch: list[_Request], exc: BaseException) -> None:
        for req in batch:
            req.done(None, exc)

    def _cancel_waiting(self) -> None:
        """Ends every request not yet in a round, as cancelled."""
        waiting, self._pending = self._pending, []
        self._fail(waiting, asyncio.CancelledError())


class ReadRounds:
    """Leadership confirmations shared by reads: every read that arrives
    before a round starts is served by that round; a read that arrives
    while one is in flight waits for the next (the round's read point may
    predate a write acknowledged before the read arrived)."""

    def __init__(self, raft: Any, policy: ReadPolicy) -> None:
        self.raft = raft
        self.policy = policy
        self._waiting: list[Callable[[Any], None]] = []   # the next round's readers
        self._running = False
        #: Rounds run (each one ensure_linearizable).
        self.rounds = 0

    async def confirm(self) -> None:
        """Returns once a round that started after this call is confirmed
        and applied; raises what ensure_linearizable raised."""
        fut = asyncio.get_running_loop().create_future()
        answer = future_answer(fut)
        self.add(lambda exc: answer(None, exc))
        await fut

    def add(self, done: Callable[[Any], None]) -> None:
        """As confirm, without a coroutine (one future less per read):
        `done(None)` once a round that started after this call is confirmed
        and applied, `done(exc)` with what ensure_linearizable raised (a
        CancelledError if the round was cancelled)."""
        self._waiting.append(done)
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._round())

    async def _round(self) -> None:
        # The reads that arrived until now share this round.
        waiting, self._waiting = self._waiting, []
        self.rounds += 1
        try:
            await self.raft.ensure_linearizable(self.policy)
        except asyncio.CancelledError as exc:
            self._answer(waiting, exc)
            raise
        except Exception as exc:       # for the readers to raise
            self._answer(waiting, exc)
        else:
            self._answer(waiting, None)
        finally:
            if self._waiting:
                asyncio.get_running_loop().create_task(self._round())
            else:
                self._running = False

    @staticmethod
    def _answer(waiting: list, exc: Any) -> None:
        for done in waiting:
            done(exc)
