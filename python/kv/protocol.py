"""The client protocol of `raftcore kv`: message types, reply statuses, read
modes, and the checks both the service and the client apply to a request
(the wire format is described in the package docstring, raftcore.kv)."""
from __future__ import annotations

from typing import Any, Optional

from raftcore.errors import RaftError
from raftcore.network.tcp import SERVICE_TYPE_MIN

#: Message types of the client protocol (service types of the RaftServer).
KV_WRITE = SERVICE_TYPE_MIN
KV_GET = SERVICE_TYPE_MIN + 1
KV_STATUS = SERVICE_TYPE_MIN + 2
#: The membership, as the leader has it after a linearizable read (also the
#: health check: it succeeds only with a leader that a quorum confirms).
KV_MEMBERS = SERVICE_TYPE_MIN + 3
#: Admin requests: they change the cluster, so a node takes them only from
#: an authenticated client (see ADMIN_REFUSED).
KV_ADD_MEMBER = SERVICE_TYPE_MIN + 4
KV_REMOVE_MEMBER = SERVICE_TYPE_MIN + 5
KV_TRANSFER_LEADER = SERVICE_TYPE_MIN + 6
KV_SNAPSHOT_BEGIN = SERVICE_TYPE_MIN + 7      # snapshot save (raftcore.kv.backup)
KV_SNAPSHOT_READ = SERVICE_TYPE_MIN + 8

#: Reply statuses.
OK = 0
REDIRECT = 1
UNAVAILABLE = 2
ERROR = 3

#: Read modes of KV_GET.
READ_INDEX = 0
LEASE = 1
STALE = 2

#: The log command of a write made through a session.
SESSION_CMD = "session"

_WRITE_ARITY = {"set": 3, "delete": 2, "cas": 4}


def check_key(key: Any) -> Optional[str]:
    """Why `key` cannot be a key, or None. Keys are str, bytes or int (not
    bool or float: True == 1 and 1.0 == 1 would alias in the map)."""
    if type(key) in (str, bytes, int):
        return None
    return f"a key must be a str, bytes or int, got {type(key).__name__} {key!r:.80}"


def check_command(cmd: Any) -> Optional[str]:
    """Why `cmd` is not a valid write command, or None."""
    if not isinstance(cmd, (list, tuple)) or not cmd:
        return f"a write command is a list [op, key, ...], got {cmd!r:.80}"
    arity = _WRITE_ARITY.get(cmd[0]) if type(cmd[0]) is str else None
    if arity is None:
        return f"unknown write operation {cmd[0]!r:.40}; use set, delete or cas"
    if len(cmd) != arity:
        return f"{cmd[0]} takes {arity - 1} arguments, got {len(cmd) - 1}"
    return check_key(cmd[1])


def check_client_id(cid: Any) -> Optional[str]:
    """Why `cid` cannot be a session's client id, or None."""
    if type(cid) in (str, bytes, int) and (type(cid) is int or 0 < len(cid) <= 256):
        return None
    return f"a client id must be a str or bytes of 1..256 items or an int, got {cid!r:.80}"


def check_session(cid: Any, seq: Any, acked: Any) -> Optional[str]:
    """Why (client id, seq, acked_below) of a write cannot be a session's,
    or None."""
    why = check_client_id(cid)
    if why is None and (type(seq) is not int or seq < 1 or type(acked) is not int
                        or not 0 <= acked <= seq):
        why = "seq must be an int >= 1 and acked_below an int in [0, seq]"
    return why


#: Why a node refused an admin request from an unauthenticated client.
ADMIN_REFUSED = ("membership and leadership changes are refused: this node cannot tell who "
                 "is asking. Start the nodes with --secret-file (and give the same file to "
                 "raftcore ctl --secret-file, or Client(secret=...)), or with --tls-ca for "
                 "mutual TLS (clients then present a certificate: ctl --tls-cert/--tls-key), "
                 "or run them with --insecure-admin to allow any client")


def check_node_id(node_id: Any) -> Optional[str]:
    """Why `node_id` cannot be a node id, or None."""
    if type(node_id) is int and node_id >= 0:
        return None
    return f"a node id is an int >= 0, got {node_id!r:.80}"


def check_wait(seconds: Any) -> Optional[str]:
    """Why `seconds` cannot be how long an admin request may wait, or None."""
    if type(seconds) in (int, float) and 0 < seconds < float("inf"):
        return None
    return f"a wait is a positive number of seconds, got {seconds!r:.80}"


def write_request(client_id: Any, seq: int, cmd: list, acked_below: int) -> list:
    """The KV_WRITE message of one write (what Client sends)."""
    return [KV_WRITE, client_id, seq, acked_below, list(cmd)]


class KvError(RaftError):
    """A request the cluster refused (malformed, or a write that was given up
    on); retrying it will not help."""
