"""Command batches: the commands a node's callers make in one event-loop
turn go to the log as one entry.

Through the embedding layer, a command's own cost is small next to what
the log charges per entry (an entry admitted, encoded, replicated, stored
and applied on every node). A leader's callers that call at once (a service
under load: many requests in flight) therefore share an entry: the first
call of a turn starts a task, and when that task first runs, one loop turn
later, it takes every call made meanwhile and writes them as one BATCH entry
(raftcore.embed.replicated). A call alone goes as a CMD entry, as before
batching; so does a command marked @command(own_entry=True), whose index
must be its own.

A batch stays within Config.max_command_bytes: each call's encoded size is
bounded from above when it joins (head_size + args_size), and a call that would
overflow the open batch starts the next one. Several batches can be in the
log at once (the next turn's calls do not wait for this turn's entry).

Each call's outcome goes back to the node (answered / unanswered), which
settles the future the caller awaits, or retries the call on its own as
one it proposed alone: no coroutine stands between a batched call and its
caller.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional, Sequence

import msgpack

from raftcore.errors import RaftError

from raftcore.embed.forwarding import UNKNOWN, Clock, command_entry, reply_to_error
from raftcore.embed.replicated import BATCH, FAILED, SCALAR_TYPES

__all__ = ["CommandBatches", "head_size", "args_size", "names_at", "MAX_BATCH_CALLS"]

#: Calls in one entry at most (a bound on the work of one apply).
MAX_BATCH_CALLS = 4096
#: Encoded bytes of a BATCH entry besides its calls and client id (tag,
#: acked_below, stamp, the list header), at most.
_HEAD_BYTES = 40
#: Upper bound of the encoding of an int, float, bool or None.
_SCALAR_BYTES = 9


def head_size(obj: str, method: str) -> int:
    """An upper bound on the encoded bytes of a call's seq, object and
    method in a batch (a str's UTF-8 takes at most 4 bytes a character)."""
    return _SCALAR_BYTES + 4 * (len(obj) + len(method)) + 10


def args_size(args: Sequence[Any]) -> int:
    """An upper bound on the encoded bytes of `args`: scalars bounded here,
    anything else trial-encoded (whose error, TypeError, ValueError or
    OverflowError, says the args are not msgpack values)."""
    size = 5
    for a in args:
        t = type(a)
        if t is str:
            size += 4 * len(a) + 5
        elif t is bytes:
            size += len(a) + 5
        elif t in SCALAR_TYPES:
            size += _SCALAR_BYTES
        else:
            return len(msgpack.packb(args, use_bin_type=True))
    return size


class _Batch:
    """Calls taken together: (seq, object, method, args) flattened in
    `fields`, their reply futures in `futures`."""

    __slots__ = ("fields", "futures", "size", "deadline", "expired", "last_obj",
                 "last_method")

    def __init__(self, deadline: float, head: int) -> None:
        #: Calls' fields as the entry has them: object and method None when
        #: the same as the call before's (names_at gives them back).
        self.fields: list = []
        self.last_obj: Optional[str] = None
        self.last_method: Optional[str] = None
        self.futures: list[asyncio.Future] = []
        self.size = head
        #: Its first call's deadline (the others came in the same turn).
        self.deadline = deadline
        self.expired = False


def names_at(fields: list, k: int) -> tuple[str, str]:
    """The object and method of the call whose fields start at `k`."""
    while fields[k + 1] is None and fields[k + 2] is None:
        k -= 4
    return fields[k + 1], fields[k + 2]


class CommandBatches:
    """The batches of one node's own calls (EmbeddedNode's, while the node
    leads or is thought to).

    raft: the node's Raft; client_id: its session; clock: stamps entries;
    acked: the caller's oldest call still waiting (acked_below of every
    entry: the answers below it can go); max_bytes: the encoded size an
    entry may have (Config.max_command_bytes). Each call's outcome goes to
    answered(future, fields, k, answer) when its entry applied (the call's
    seq at fields[k]; names_at(fields, k) its object and method),
    else to unanswered(future, seq, object, method, args, reply, deadline)
    with the reply (forwarding.py's REDIRECT, UNKNOWN, ...): the node
    decides what the caller's future gets.
    """

    def __init__(self, raft: Any, client_id: Any, clock: Clock, acked: Callable[[], int],
                 max_bytes: int, answered: Callable[..., None],
                 unanswered: Callable[..., None]) -> None:
        self._raft = raft
        self._client_id = client_id
        self._clock = clock
        self._acked = acked
        self._max_bytes = max_bytes
        #: Encoded bytes of an entry's head, at most (the client id's own).
        self._head = _HEAD_BYTES + len(msgpack.packb(client_id, use_bin_type=True))
        self._answered = answered
        self._unanswered = unanswered
        self._loop = asyncio.get_running_loop()
        #: The batch calls join until its task takes it.
        self._open: Optional[_Batch] = None
        #: The batches open or in the log and their tasks, oldest (so
        #: earliest deadline) first; empty when a call would wait for no
        #: turn.
        self.in_flight: dict[_Batch, asyncio.Task] = {}

    def submit(self, seq: int, obj: str, method: str, args: Sequence[Any], size: int,
               own_entry: bool, deadline: float) -> asyncio.Future:
        """Call `seq` (`size`: its head_size + args_size; `deadline`: loop
        time it may wait until, see expire): the future its caller awaits
        (see answered / unanswered)."""
        fut = self._loop.create_future()
        batch = self._open
        if own_entry or size + self._head > self._max_bytes:
            # Alone: the runtime checks the exact size of a call too big to
            # share an entry (and refuses it if it is over the limit).
            batch = _Batch(deadline, self._head)
            self._start(batch)
        elif batch is None or batch.size + size > self._max_bytes \
                or len(batch.futures) >= MAX_BATCH_CALLS:
            batch = self._open = _Batch(deadline, self._head)
            self._start(batch)
        if obj == batch.last_obj and method == batch.last_method:
            batch.fields += (seq, None, None, args)     # as the call before
        else:
            batch.fields += (seq, obj, method, args)
            batch.last_obj, batch.last_method = obj, method
        batch.futures.append(fut)
        batch.size += size
        return fut

    def _start(self, batch: _Batch) -> None:
        self.in_flight[batch] = self._loop.create_task(self._write(batch))

    def expire(self, now: float) -> tuple[list, Optional[float]]:
        """The calls of the batches past their deadline at loop time `now`,
        as (future, seq, object, method) of those still waiting, and the
        next deadline of a batch in flight (None: none is)."""
        ended: list[tuple[Any, int, str, str]] = []
        for batch in self.in_flight:
            if batch.deadline > now:
                return ended, batch.deadline
            if batch.expired:
                continue
            batch.expired = True
            fields = batch.fields
            for i, fut in enumerate(batch.futures):
                if not fut.done():
                    ended.append((fut, fields[4 * i]) + names_at(fields, 4 * i))
        return ended, None

    async def _write(self, batch: _Batch) -> None:
        # One loop turn after the batch's first call: the calls made in
        # that turn have joined it.
        if self._open is batch:
            self._open = None
        try:
            await self._write_taken(batch)
        finally:
            del self.in_flight[batch]

    async def _write_taken(self, batch: _Batch) -> None:
        futures = batch.futures
        fields = batch.fields
        try:
            try:
                if len(futures) == 1:
                    seq, obj, method, args = fields
                    resp = await self._raft.client_write(command_entry(
                        self._client_id, seq, self._acked(), obj, method, args, self._clock))
                    answers = [resp.data]
                else:
                    entry = [BATCH, self._client_id, self._acked(), self._clock()]
                    entry += fields
                    answers = (await self._raft.client_write(entry)).data
            except RaftError as exc:
                self._unanswered_all(batch, reply_to_error(exc))
                return
        except BaseException as exc:
            # Cancelled (the node stops) or a bug: the entry may commit.
            self._unanswered_all(batch, [UNKNOWN, f"the batch's write ended with "
                                                  f"{type(exc).__name__}: {exc}"])
            raise
        if type(answers) is not list or len(answers) != len(futures):
            # Not an answer this layer gives (a node of another version?).
            answers = [(FAILED, f"the entry's answer is not one per call: {answers!r:.80}")] \
                * len(futures)
        answered = self._answered
        for i, fut in enumerate(futures):
            k = 4 * i
            answered(fut, fields, k, answers[i])

    def _unanswered_all(self, batch: _Batch, reply: list) -> None:
        fields = batch.fields
        for i, fut in enumerate(batch.futures):
            k = 4 * i
            obj, method = names_at(fields, k)
            self._unanswered(fut, fields[k], obj, method, fields[k + 3], reply, batch.deadline)

    async def close(self) -> None:
        """Waits for the batches in flight, once the Raft is shut down: their
        writes fail at once, and every call is settled through unanswered
        (cancelling a task that has not started would leave its calls'
        futures waiting for ever)."""
        await asyncio.gather(*self.in_flight.values(), return_exceptions=True)
