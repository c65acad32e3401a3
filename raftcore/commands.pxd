"""Declarations of the engine's commands (see commands.pyx), so the engine
builds them and the compiled runtime dispatches on `kind` with C calls."""
from raftcore.types cimport LogId, Vote
from raftcore.messages cimport (AppendEntriesRequest, VoteRequest, TransferLeaderRequest,
                                SnapshotMeta)

# Command kinds: what the runtime switches on (commands.pyx documents each).
cdef enum CommandKind:
    CMD_SAVE_VOTE = 1
    CMD_APPEND = 2
    CMD_TRUNCATE = 3
    CMD_SEND_APPEND = 4
    CMD_SEND_VOTE = 5
    CMD_APPLY = 6
    CMD_SEND_TRANSFER = 7
    CMD_SEND_SNAPSHOT = 8
    CMD_INSTALL_SNAPSHOT = 9
    CMD_PURGE = 10


cdef class Command:
    cdef readonly int kind
    cdef tuple _fields(self)


cdef class SaveVote(Command):
    cdef readonly Vote vote


cdef class Append(Command):
    cdef readonly list entries


cdef class Truncate(Command):
    cdef readonly long long since


cdef class SendAppend(Command):
    cdef readonly object target
    cdef readonly AppendEntriesRequest request


cdef class SendVote(Command):
    cdef readonly object target
    cdef readonly VoteRequest request


cdef class Apply(Command):
    cdef readonly list entries


cdef class SendTransfer(Command):
    cdef readonly object target
    cdef readonly TransferLeaderRequest request


cdef class SendSnapshot(Command):
    cdef readonly object target


cdef class InstallSnapshot(Command):
    cdef readonly SnapshotMeta meta
    cdef readonly long long drop_from


cdef class Purge(Command):
    cdef readonly LogId upto


# The engine's constructors: a bare allocation, no argument parsing.
cdef inline SaveVote new_save_vote(Vote vote):
    cdef SaveVote c = SaveVote.__new__(SaveVote)
    c.kind = CMD_SAVE_VOTE
    c.vote = vote
    return c


cdef inline Append new_append(list entries):
    cdef Append c = Append.__new__(Append)
    c.kind = CMD_APPEND
    c.entries = entries
    return c


cdef inline Truncate new_truncate(long long since):
    cdef Truncate c = Truncate.__new__(Truncate)
    c.kind = CMD_TRUNCATE
    c.since = since
    return c


cdef inline SendAppend new_send_append(target, AppendEntriesRequest request):
    cdef SendAppend c = SendAppend.__new__(SendAppend)
    c.kind = CMD_SEND_APPEND
    c.target = target
    c.request = request
    return c


cdef inline SendVote new_send_vote(target, VoteRequest request):
    cdef SendVote c = SendVote.__new__(SendVote)
    c.kind = CMD_SEND_VOTE
    c.target = target
    c.request = request
    return c


cdef inline Apply new_apply(list entries):
    cdef Apply c = Apply.__new__(Apply)
    c.kind = CMD_APPLY
    c.entries = entries
    return c


cdef inline SendTransfer new_send_transfer(target, TransferLeaderRequest request):
    cdef SendTransfer c = SendTransfer.__new__(SendTransfer)
    c.kind = CMD_SEND_TRANSFER
    c.target = target
    c.request = request
    return c


cdef inline SendSnapshot new_send_snapshot(target):
    cdef SendSnapshot c = SendSnapshot.__new__(SendSnapshot)
    c.kind = CMD_SEND_SNAPSHOT
    c.target = target
    return c


cdef inline InstallSnapshot new_install_snapshot(SnapshotMeta meta, long long drop_from):
    cdef InstallSnapshot c = InstallSnapshot.__new__(InstallSnapshot)
    c.kind = CMD_INSTALL_SNAPSHOT
    c.meta = meta
    c.drop_from = drop_from
    return c


cdef inline Purge new_purge(LogId upto):
    cdef Purge c = Purge.__new__(Purge)
    c.kind = CMD_PURGE
    c.upto = upto
    return c
