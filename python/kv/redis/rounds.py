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

Both keep one round in flight: a request never joins a round that has
started, so what it waits for started after it arrived (a read's
confirmation cannot predate a write acknowledged before the read).
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

from raftcore.model import ReadPolicy

#: A round carries at most this many commands.
ROUND_COMMANDS = 4096


class _Request:
    __slots__ = ("cmds", "size", "fut")

    def __init__(self, cmds: list, size: int, fut: asyncio.Future) -> None:
        self.cmds = cmds
        self.size = size
        self.fut = fut


class CommandRounds:
    """Runs lists of commands through `call(cmds)` in shared rounds.

    call: returns the list of replies of `cmds` (one per command, in
        order), or one value (an error reply) that answers them all.
    max_bytes, max_commands: a round takes requests, in arrival order, up
        to this many argument bytes and commands (a larger request goes
        alone)."""

    def __init__(self, call: Callable[[list], Awaitable[Any]], max_bytes: int,
                 max_commands: int = ROUND_COMMANDS) -> None:
        self._call = call
        self.max_bytes = max_bytes
        self.max_commands = max_commands
        self._pending: list[_Request] = []
        self._task: Optional[asyncio.Task] = None
        #: Rounds run (each one call).
        self.rounds = 0
        #: Commands they carried.
        self.commands = 0

    async def run(self, cmds: list, size: int) -> list:
        """The replies of `cmds` (`size`: their argument bytes), once the
        round that carries them is done. Raises what `call` raised."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(cmds, size, fut))
        if self._task is None:
            # A task, not a direct call: the requests of every connection
            # that runs in this loop iteration join the first round too.
            self._task = asyncio.get_running_loop().create_task(self._rounds())
        return await fut

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
        try:
            while self._pending:
                await self._round(self._take())
        except BaseException:            # cancelled (shutdown): nobody is answered
            for req in self._pending:
                req.fut.cancel()
            self._pending.clear()
            raise
        finally:
            self._task = None

    async def _round(self, batch: list[_Request]) -> None:
        cmds = batch[0].cmds if len(batch) == 1 else [c for r in batch for c in r.cmds]
        self.rounds += 1
        self.commands += len(cmds)
        try:
            replies = await self._call(cmds)
        except asyncio.CancelledError:
            for req in batch:
                req.fut.cancel()
            raise
        except Exception as exc:         # for the callers to raise
            self._fail(batch, exc)
            return
        if type(replies) is list and len(replies) != len(cmds):
            self._fail(batch, RuntimeError(f"a round of {len(cmds)} commands got "
                                           f"{len(replies)} replies"))
            return
        pos = 0
        for req in batch:
            n = len(req.cmds)
            if not req.fut.done():       # its connection may be gone
                req.fut.set_result(replies[pos:pos + n] if type(replies) is list
                                   else [replies] * n)
            pos += n

    @staticmethod
    def _fail(batch: list[_Request], exc: Exception) -> None:
        for req in batch:
            if not req.fut.done():
                req.fut.set_exception(exc)


class ReadRounds:
    """Leadership confirmations shared by reads: every read that arrives
    before a round starts is served by that round; a read that arrives
    while one is in flight waits for the next (the round's read point may
    predate a write acknowledged before the read arrived)."""

    def __init__(self, raft: Any, policy: ReadPolicy) -> None:
        self.raft = raft
        self.policy = policy
        self._next: Optional[asyncio.Future] = None     # the round waiting reads share
        self._running = False
        #: Rounds run (each one ensure_linearizable).
        self.rounds = 0

    async def confirm(self) -> None:
        """Returns once a round that started after this call is confirmed
        and applied; raises what ensure_linearizable raised."""
        fut = self._next
        if fut is None:
            fut = self._next = asyncio.get_running_loop().create_future()
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._round())
        await asyncio.shield(fut)

    async def _round(self) -> None:
        # The reads that arrived until now share this round.
        fut, self._next = self._next, None
        self.rounds += 1
        try:
            await self.raft.ensure_linearizable(self.policy)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:       # for the readers to raise
            fut.set_exception(exc)
        else:
            fut.set_result(None)
        finally:
            if self._next is not None:
                asyncio.get_running_loop().create_task(self._round())
            else:
                self._running = False
