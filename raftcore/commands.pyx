"""The engine's commands: what it asks the runtime to do, in order.

The engine (engine.pyx) appends them to its output as it steps; the runtime
takes them with Engine.take_commands() and executes them in the order given
(python/core.pyx, RaftCore._execute). One class per kind, each with the
fields it needs; `kind` (an int, CMD_* in commands.pxd, the constants below
in Python) is what the runtime switches on. They are created once per batch
of entries, never per entry, by the constructors in commands.pxd.

    SaveVote(vote)              persist `vote` before anything after it runs
    Append(entries)             write to the local log; report the flush
                                (Engine.log_flushed)
    Truncate(since)             delete local entries >= since
    SendAppend(target, request) send AppendEntries; report the answer
                                (handle_append_response / _failure)
    SendVote(target, request)   send RequestVote (or a pre-vote)
    Apply(entries)              apply to the state machine, in order
    SendTransfer(target, request)
                                ask `target` to campaign now (leadership transfer)
    SendSnapshot(target)        stream the current snapshot to target; report
                                handle_snapshot_response or _failure (no other
                                stream to target is asked for before)
    InstallSnapshot(meta, drop_from)
                                install the received snapshot, durably, first
                                deleting local entries >= drop_from (0: keep
                                the log)
    Purge(upto)                 delete local entries up to the LogId `upto`

Commands compare equal when of the same kind with equal fields, and print as
the call that builds them, so tests assert on them directly.
"""
cimport cython

SAVE_VOTE = CMD_SAVE_VOTE
APPEND = CMD_APPEND
TRUNCATE = CMD_TRUNCATE
SEND_APPEND = CMD_SEND_APPEND
SEND_VOTE = CMD_SEND_VOTE
APPLY = CMD_APPLY
SEND_TRANSFER = CMD_SEND_TRANSFER
SEND_SNAPSHOT = CMD_SEND_SNAPSHOT
INSTALL_SNAPSHOT = CMD_INSTALL_SNAPSHOT
PURGE = CMD_PURGE


# No freelist: Cython keeps one only for a class without a base. no_gc: a
# command holds no reference cycle (values, messages, lists of entries), so
# it skips the garbage collector's tracking, which a tuple pays.
@cython.no_gc
cdef class Command:
    """Base of every command: `kind` says which one it is."""

    cdef tuple _fields(self):
        return ()

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == (<Command>other)._fields()

    def __ne__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() != (<Command>other)._fields()

    __hash__ = None     # entries are lists: commands are compared, not hashed

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(map(repr, self._fields()))})"


@cython.no_gc
cdef class SaveVote(Command):
    """Persist `vote` (the term and whom this node voted for) before any
    later command runs: a vote counts only once durable."""

    def __init__(self, Vote vote):
        self.kind = CMD_SAVE_VOTE
        self.vote = vote

    cdef tuple _fields(self):
        return (self.vote,)


@cython.no_gc
cdef class Append(Command):
    """Write `entries` (consecutive, after the local log's end) to the log
    store, and report Engine.log_flushed once they are durable."""

    def __init__(self, list entries):
        self.kind = CMD_APPEND
        self.entries = entries

    cdef tuple _fields(self):
        return (self.entries,)


@cython.no_gc
cdef class Truncate(Command):
    """Delete the local log entries from index `since` on (they conflict
    with the leader's); writes waiting on them fail."""

    def __init__(self, long long since):
        self.kind = CMD_TRUNCATE
        self.since = since

    cdef tuple _fields(self):
        return (self.since,)


@cython.no_gc
cdef class SendAppend(Command):
    """Send the AppendEntries `request` to `target` and report its answer
    (handle_append_response) or its loss (handle_append_failure)."""

    def __init__(self, target, AppendEntriesRequest request):
        self.kind = CMD_SEND_APPEND
        self.target = target
        self.request = request

    cdef tuple _fields(self):
        return (self.target, self.request)


@cython.no_gc
cdef class SendVote(Command):
    """Send the vote (or pre-vote) `request` to `target` and report its
    answer (handle_vote_response)."""

    def __init__(self, target, VoteRequest request):
        self.kind = CMD_SEND_VOTE
        self.target = target
        self.request = request

    cdef tuple _fields(self):
        return (self.target, self.request)


@cython.no_gc
cdef class Apply(Command):
    """Apply the committed `entries` to the state machine, in order, and
    answer the clients waiting on them."""

    def __init__(self, list entries):
        self.kind = CMD_APPLY
        self.entries = entries

    cdef tuple _fields(self):
        return (self.entries,)


@cython.no_gc
cdef class SendTransfer(Command):
    """Ask `target`, which holds the whole log, to campaign now (leadership
    transfer, or a leader removed from the voters handing over)."""

    def __init__(self, target, TransferLeaderRequest request):
        self.kind = CMD_SEND_TRANSFER
        self.target = target
        self.request = request

    cdef tuple _fields(self):
        return (self.target, self.request)


@cython.no_gc
cdef class SendSnapshot(Command):
    """Stream the current snapshot to `target` (building one first if the
    state machine has none) and report handle_snapshot_response or
    handle_snapshot_failure; no other stream to `target` is asked for before."""

    def __init__(self, target):
        self.kind = CMD_SEND_SNAPSHOT
        self.target = target

    cdef tuple _fields(self):
        return (self.target,)


@cython.no_gc
cdef class InstallSnapshot(Command):
    """Install the snapshot `meta` received from the leader, durably, first
    deleting the local entries from `drop_from` on (0: keep the log)."""

    def __init__(self, SnapshotMeta meta, long long drop_from):
        self.kind = CMD_INSTALL_SNAPSHOT
        self.meta = meta
        self.drop_from = drop_from

    cdef tuple _fields(self):
        return (self.meta, self.drop_from)


@cython.no_gc
cdef class Purge(Command):
    """Delete the local log entries up to and including `upto` (a LogId):
    a snapshot holds them."""

    def __init__(self, LogId upto):
        self.kind = CMD_PURGE
        self.upto = upto

    cdef tuple _fields(self):
        return (self.upto,)
