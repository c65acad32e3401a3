"""Exceptions raised by raftcore. Every message says what went wrong and what to do."""
from __future__ import annotations

import errno
from typing import Any, Optional

_SPACE_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e)


class RaftError(Exception):
    """Base class of every raftcore error."""


class ForwardToLeader(RaftError):
    """This node is not the leader: send the request to `leader_id` at `leader_node`.

    Both are None while no leader is known (an election is under way); retry later.
    """

    def __init__(self, leader_id: Optional[int] = None, leader_node: Any = None):
        self.leader_id = leader_id
        self.leader_node = leader_node
        if leader_id is None:
            msg = "this node is not the leader and no leader is known yet; retry shortly"
        else:
            msg = f"this node is not the leader; forward the request to node {leader_id}"
            if leader_node is not None:
                msg += f" at {leader_node}"
        super().__init__(msg)


class NotAllowed(RaftError):
    """The call is not allowed in this node's current state."""


class ChangeInProgress(NotAllowed):
    """Another membership change has not finished yet: one change at a time.
    Unlike other NotAllowed refusals it passes by itself; ask again."""


class Timeout(RaftError):
    """A wait or an RPC did not complete in time."""


class OutcomeUnknown(RaftError):
    """A write may or may not have been committed, and this node can no
    longer tell: its entry was dropped from this node's log for a newer
    leader's (another node may still hold it and a later leader commit it),
    or a snapshot replaced the log before the write was applied here. Retry
    it only if it is idempotent (or carries a client id and sequence number,
    as `raftcore kv`'s client does)."""


class StorageError(RaftError):
    """The log store or state machine failed; the node stops rather than lose data."""


class NoSpace(StorageError):
    """The node's disk is full (ENOSPC or a quota): its log store holds its
    writes and retries them by itself, nothing written is lost or damaged.
    The node takes no client writes until space is freed (writes go to
    another leader meanwhile); free space on the disk and it resumes."""


def is_space_error(exc: Optional[BaseException]) -> bool:
    """Whether exc, or an error it was raised from, says the disk (or the
    user's quota) is full: a write that can succeed once space is freed,
    unlike other I/O errors."""
    while exc is not None:
        if isinstance(exc, NoSpace) or (isinstance(exc, OSError) and
                                        exc.errno in _SPACE_ERRNOS):
            return True
        exc = exc.__cause__
    return False


class NetworkError(RaftError):
    """A peer could not be reached; the RPC may or may not have been delivered."""


class ConfigError(RaftError, ValueError):
    """A Config field has an invalid value."""


class Fatal(RaftError):
    """The node has stopped (shut down, or a storage failure); it takes no more requests."""


class CodecError(RaftError, ValueError):
    """Bytes or values that do not decode to a valid raftcore message or record."""


class InvalidCommand(RaftError, ValueError):
    """A command refused before it entered the log: it is not a msgpack-able
    value that decodes back to itself (say a datetime, or a map whose key is
    a tuple), or it is larger than Config.max_command_bytes. Nothing was
    written; the same command will be refused again."""


class ClusterMismatch(RaftError):
    """A request from a node of another cluster (another cluster id), or a
    store that belongs to another cluster than the one a node was told."""
