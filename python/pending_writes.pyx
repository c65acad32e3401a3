# cython: annotation_typing=False
"""Pending client writes of one node: from client_write to the answer.

- The door check: a command that cannot be encoded, does not decode to
  itself, or is over Config.max_command_bytes is refused (InvalidCommand)
  before it is queued; a node that is not a leader, has stopped or has a
  full disk refuses it too. The encoding made here is the one the log
  store writes and the followers receive (Entry.encoded).
- Writes are queued and moved into the engine as one batch per event loop
  iteration (the node's flush callback, scheduled with call_soon), so
  writers that run together share one append and one AppendEntries per
  follower; at most max_write_batch at a time, and writers wait while
  max_pending_writes are unanswered.
- Each batch in the log waits, as [first index, term, futures], until its
  entries are applied (answered with a ClientWriteResponse), truncated,
  skipped by a snapshot, or the node steps down or stops.

Compiled: the runtime (core.pyx) owns one PendingWrites and calls it through
pending_writes.pxd, with C calls on the per-write path.
"""
cimport cython
from raftcore.engine cimport Engine, S_LEADER
from raftcore.types cimport Entry, LogId

from collections import deque

import msgpack

from raftcore.codec import PlainValueError, pack_plain
from raftcore.errors import ForwardToLeader, InvalidCommand, NoSpace, OutcomeUnknown


@cython.freelist(256)
cdef class ClientWriteResponse:
    """What client_write returns once the entry is committed and applied."""

    cdef readonly long long term
    cdef readonly long long index
    cdef readonly object data

    def __init__(self, long long term, long long index, data) -> None:
        self.term = term
        self.index = index
        self.data = data

    @property
    def log_id(self) -> LogId:
        return LogId(self.term, self.index)

    def __repr__(self) -> str:
        return f"ClientWriteResponse(log_id=({self.term}, {self.index}), data={self.data!r})"


cdef class _Batch:
    """The answers to one client_write_many: one future for the caller, one
    slot per entry for the runtime. A slot behaves like a future where the
    runtime uses it (done, set_result, set_exception) but wakes nobody: the
    caller's future resolves once, with every response in order, or with the
    first error (entries of a failed batch may still commit, as with any
    cancelled or failed write)."""

    cdef object future
    cdef list results
    cdef Py_ssize_t left

    def __init__(self, future, Py_ssize_t n) -> None:
        self.future = future
        self.results = [None] * n
        self.left = n

    cdef list slots(self):
        return [_Slot(self, i) for i in range(len(self.results))]


@cython.freelist(64)
cdef class _Slot:
    cdef _Batch batch
    cdef Py_ssize_t i
    cdef bint answered

    def __init__(self, _Batch batch, Py_ssize_t i) -> None:
        self.batch = batch
        self.i = i
        self.answered = False

    def done(self) -> bool:
        return self.answered or self.batch.future.done()

    def set_result(self, value) -> None:
        if self.answered:
            return
        self.answered = True
        b = self.batch
        b.results[self.i] = value
        b.left -= 1
        if b.left == 0 and not b.future.done():
            b.future.set_result(b.results)

    def set_exception(self, exc) -> None:
        if self.answered:
            return
        self.answered = True
        if not self.batch.future.done():
            self.batch.future.set_exception(exc)


cdef class PendingWrites:
    """The client writes of one node, queued or in its log, until answered."""

    def __init__(self, Engine engine, loop, node_id, config, check_running, flush) -> None:
        """`check_running`: the node's, raising why it stopped; `flush`: the
        node's callback that takes the queued writes (it clears
        flush_scheduled)."""
        self.engine = engine
        self.loop = loop
        self.node_id = node_id
        self._check_running = check_running
        self._flush = flush
        self.closed = False
        self.no_space = None
        self.payloads = []
        self.encoded = []
        self.futs = []
        self.flush_scheduled = False
        self.open_writes = 0
        self._max_pending = min(config.max_pending_writes, 2**62)
        self._max_write_batch = min(config.max_write_batch, 2**62)
        self._max_command = min(config.max_command_bytes, 2**62)
        self._command_packer = msgpack.Packer(use_bin_type=True)
        self._write_room = None
        self._waiters = deque()

    async def client_write(self, payload, bint owned=False):
        payload = self._admit(payload, owned)
        packed = self._packed
        self._check_writable()
        if self.open_writes >= self._max_pending:
            await self._wait_for_room(1)
        fut = self.loop.create_future()
        self.payloads.append(payload)
        self.encoded.append(packed)
        self.futs.append(fut)
        self.open_writes += 1
        self._schedule_flush()
        return await fut

    async def client_write_many(self, list payloads, bint owned=False):
        cdef Py_ssize_t n = len(payloads)
        cdef list encodings = [None] * n
        payloads = self._admit_all(payloads, encodings, owned)
        self._check_writable()
        if self.open_writes + n > self._max_pending:
            await self._wait_for_room(n)
        batch = _Batch(self.loop.create_future(), n)
        self.payloads.extend(payloads)
        self.encoded.extend(encodings)
        self.futs.extend(batch.slots())
        self.open_writes += n
        self._schedule_flush()
        return await batch.future

    cdef void _schedule_flush(self):
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    cdef object _admit(self, payload, bint owned):
        """The command as every node will apply it: what its msgpack encoding
        decodes to (a tuple becomes a list), the form the log store, the
        transport and a restart give it. InvalidCommand if it has no
        encoding, does not decode, or is over max_command_bytes: refused
        here, it never reaches the log, where it would stop the node (a
        store that cannot write it) or replication (a frame that cannot be
        built or read).

        The command is encoded here once: the entry carries the encoding
        (left in self._packed), the log store writes it and the followers
        receive it byte for byte (Entry.encoded), and the leader too
        applies what it decodes to, never the caller's object, which the
        caller may still change. A bytes payload goes as it is (None).

        `owned`: the caller hands the command over (Raft.client_write says
        what that promises), so it is encoded by pack_plain, which refuses
        anything that would not decode to an equal object of the same
        types, and applied as it is: no decoded copy (a pipelined Redis
        write's pack and unpack were a twelfth of the leader's busy time)."""
        self._packed = None
        # Bytes decode to equal bytes and cost 5 bytes of header at most:
        # the common payload is not encoded at all.
        if type(payload) is bytes and len(<bytes>payload) + 5 <= self._max_command:
            return payload
        if owned:
            return self._admit_owned(payload)
        try:
            packed = self._command_packer.pack(payload)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidCommand(f"the command cannot be encoded with msgpack ({exc}); a "
                                 "command is made of None, bool, int (64-bit), float, str, "
                                 "bytes, lists and maps") from None
        self._check_size(packed)
        try:
            payload = msgpack.unpackb(packed, raw=False, strict_map_key=False)
        except (TypeError, ValueError) as exc:
            raise InvalidCommand(f"the command does not decode from its msgpack encoding "
                                 f"({exc}); a map key that is a tuple decodes as a list, "
                                 "which cannot be a key") from None
        self._packed = packed
        return payload

    cdef object _admit_owned(self, payload):
        try:
            packed = pack_plain(payload)
        except (PlainValueError, OverflowError, UnicodeEncodeError) as exc:
            raise InvalidCommand(f"the command handed over cannot be applied as it is: "
                                 f"{exc}") from None
        self._check_size(packed)
        self._packed = packed
        return payload

    cdef int _check_size(self, bytes packed) except -1:
        if len(packed) > self._max_command:
            raise InvalidCommand(f"the command is {len(packed)} bytes encoded, over "
                                 f"Config.max_command_bytes ({self._max_command})")
        return 0

    cdef list _admit_all(self, list payloads, list encodings, bint owned):
        # Fills `encodings` (as long as `payloads`) with what _admit made.
        cdef Py_ssize_t i
        cdef list admitted = [None] * len(payloads)
        for i in range(len(payloads)):
            try:
                admitted[i] = self._admit(payloads[i], owned)
                encodings[i] = self._packed
            except InvalidCommand as exc:
                raise InvalidCommand(f"command {i} of the batch: {exc}; nothing of the batch "
                                     "was written") from None
        return admitted

    cdef _check_writable(self):
        if self.closed:
            self._check_running()
        if self.engine.state != S_LEADER:
            raise ForwardToLeader(self.engine.leader_id, self.engine.leader_node())
        if self.no_space is not None:
            raise NoSpace(str(self.no_space))

    async def _wait_for_room(self, Py_ssize_t n):
        # Writers wait while the leader holds max_pending_writes unanswered
        # writes; one batch larger than the limit waits for an empty queue.
        cdef Py_ssize_t limit = self._max_pending
        while self.open_writes and self.open_writes + n > limit:
            if self._write_room is None or self._write_room.done():
                self._write_room = self.loop.create_future()
            await self._write_room
            self._check_writable()

    cdef void _writes_answered(self, Py_ssize_t n):
        self.open_writes -= n
        room = self._write_room
        if room is not None and self.open_writes < self._max_pending and not room.done():
            room.set_result(None)

    cdef void take_pending(self):
        """Queued writes go into the log on a leader, back to their writers
        with the leader's address elsewhere."""
        if self.engine.state == S_LEADER and self.no_space is None:
            self._take_write_batch()
        else:
            self.reject_pending()

    cdef void _take_write_batch(self):
        """Moves queued client writes into the engine as one batch."""
        cdef list payloads = self.payloads
        cdef list encoded = self.encoded
        cdef list futs = self.futs
        cdef Py_ssize_t n = len(payloads)
        if n <= self._max_write_batch:
            self.payloads = []
            self.encoded = []
            self.futs = []
        else:
            n = self._max_write_batch
            self.payloads = payloads[n:]
            self.encoded = encoded[n:]
            self.futs = futs[n:]
            payloads = payloads[:n]
            encoded = encoded[:n]
            futs = futs[:n]
        try:
            first = self.engine.client_write(payloads, self.loop.time(), encoded)
        except ForwardToLeader as e:
            for fut in futs:
                _fail(fut, ForwardToLeader(e.leader_id, e.leader_node))
            self._writes_answered(n)
            return
        self._waiters.append([first, self.engine.vote.term, futs])

    cdef void reject_pending(self):
        if self.engine.state == S_LEADER and self.no_space is not None:
            err = NoSpace(str(self.no_space))
        else:
            err = ForwardToLeader(self.engine.leader_id, self.engine.leader_node())
        futs = self.futs
        self.payloads = []
        self.encoded = []
        self.futs = []
        for fut in futs:
            _fail(fut, err)
        self._writes_answered(len(futs))

    cdef object wait_for_entry(self, long long index, long long term):
        """A future answered as a write at `index` of `term` is (an entry the
        node appended itself: a membership change); it counts as a pending
        write."""
        fut = self.loop.create_future()
        self.open_writes += 1
        self._waiters.append([index, term, [fut]])
        return fut

    cdef void answer_applied(self, list entries, responses):
        """Answers the writes among `entries`, applied with `responses`."""
        cdef Entry last, e
        cdef long long base, last_index, first, term, upto, start, index
        cdef Py_ssize_t n, answered
        cdef list futs, w
        waiters = self._waiters
        if not waiters:
            return
        last = entries[-1]
        base = entries[0].index
        last_index = last.index
        answered = 0
        while waiters and waiters[0][0] <= last_index:
            w = waiters[0]
            first, term, futs = w
            n = len(futs)
            upto = min(first + n - 1, last_index)
            start = max(first, base)
            for index in range(start, upto + 1):
                fut = futs[index - first]
                if fut.done():       # the caller gave up waiting
                    continue
                e = entries[index - base]
                if e.term == term:
                    fut.set_result(ClientWriteResponse(term, index, responses[index - base]))
                else:
                    fut.set_exception(ForwardToLeader(self.engine.leader_id,
                                                      self.engine.leader_node()))
            answered += upto + 1 - start
            if upto == first + n - 1:
                waiters.popleft()
            else:
                w[2] = futs[upto + 1 - first:]
                w[0] = upto + 1
        self._writes_answered(answered)

    cdef void fail_upto(self, long long index, err):
        """Answers `err` to writes at indexes up to `index` (skipped by a snapshot)."""
        waiters = self._waiters
        while waiters and waiters[0][0] <= index:
            w = waiters[0]
            first, _, futs = w
            upto = min(first + len(futs) - 1, index)
            for fut in futs[:upto + 1 - first]:
                _fail(fut, err)
            self._writes_answered(upto + 1 - first)
            if upto == first + len(futs) - 1:
                waiters.popleft()
            else:
                w[2] = futs[upto + 1 - first:]
                w[0] = upto + 1

    cdef void fail_truncated(self, long long since):
        """Answers OutcomeUnknown to writes at indexes >= `since`, whose
        entries left this node's log: that only shows the current leader
        lacks them; another node may still hold them and a later leader
        commit them."""
        waiters = self._waiters
        err = OutcomeUnknown(
            f"node {self.node_id} dropped this write's entry (from index {since} on) for a "
            "newer leader's log; another node may still hold it and commit it, so the write "
            "may or may not take effect")
        while waiters:
            first, term, futs = waiters[-1]
            if first + len(futs) - 1 < since:
                break
            cut = max(since, first)
            for fut in futs[cut - first:]:
                _fail(fut, err)
            self._writes_answered(len(futs) - (cut - first))
            if cut == first:
                waiters.pop()
            else:
                waiters[-1][2] = futs[:cut - first]
                break

    cdef void fail_all(self, err):
        """The node stopped: every write, queued or in the log, fails with
        `err`, and later ones are refused."""
        self.closed = True
        for fut in self.futs:
            _fail(fut, err)
        self.payloads = []
        self.encoded = []
        self.futs = []
        for _, _, futs in self._waiters:
            for fut in futs:
                _fail(fut, err)
        self._waiters.clear()
        self.open_writes = 0
        if self._write_room is not None:
            _fail(self._write_room, err)


cdef inline void _fail(fut, exc):
    if not fut.done():
        fut.set_exception(exc)
