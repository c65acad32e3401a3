"""How a KvStateMachine applies a Redis log entry, and how a node answers
Redis reads from its state machine.

A Redis entry is [REDIS_CMD, now_ms, commands] or, for MULTI/EXEC,
[REDIS_CMD, now_ms, commands, watched] with watched a list of [key,
modification index] recorded by WATCH: the transaction applies only if
every watched key still has that index, else it answers None (EXEC's nil).
Its response is the list of the commands' replies.

Modification indexes: each Redis entry takes the next value of a counter,
and every key it writes, deletes or expires gets that value. A WATCH reads
between entries, so a key changed (even changed back) by any later entry
has another index at EXEC. Expiry, as in Redis 7: a WATCH sees a key
whose deadline has passed as modified at that deadline (its index is
-deadline), and deleting it keeps that index (its tombstone records the
deadline), so a key that had expired already when watched is no change
when the sweep deletes it. One index per entry, not per command: every
write of the entry stores one shared int, so the apply allocates none and
frees none per command (a third of a pipelined SET's apply). Entries
written by earlier versions (as a restarted node may apply again from its
log) keep their old rules: REDIS_CMD_V1 one index per command, both
V1 and REDIS_CMD_V2 always tracked (below), V1 to REDIS_CMD_V3 a new
index for the deletion of an expired key (Keyspace.expiry_unchanged); the
same log gives the same indexes on every node, whatever snapshot it
started from.

Tracking. Recording indexes costs a second map write per modified key
(a sixth of a pipelined SET's cost on every node), and only WATCH needs
them; so, as Redis tracks only watched keys, an entry records them only
while some WATCH may be open: a node that serves a WATCH first makes sure
that entries stamped up to TRACK_SPAN_MS ahead record them, by proposing
a TRACK entry (its own write round) when less than half of that is left,
and renews it while any of its clients watches keys. An entry stamped
after `tracking_until` records nothing and becomes `untracked`: every
key's index counts as at least that (Keyspace.version), so a WATCH that
spans an untracked entry aborts, as if its keys had changed; one spanning
tracked entries only is exact. That includes the deletion of an expired
key by the transaction's own check (Keyspace.remove counts an untracked
deletion at once). The decision is the entry's own stamp against the
applied state, so every node makes the same.
"""
from __future__ import annotations

import re
from typing import Any

from raftcore.errors import StorageError
from raftcore.kv.redis.fast import run_commands as fast_run_commands
from raftcore.kv.redis.keyspace import OK, READS, WRITES, Keyspace, expire_due, parse_int
from raftcore.kv.redis.resp import error

#: The first item of a Redis entry in the log.
REDIS_CMD = "redis4"
#: The first item of the Redis entries earlier versions wrote: one
#: modification index per command (V1), or per entry, always recorded
#: (V2), or tracked but giving the deletion of an expired key a new index
#: (V3). A node of such a version answers a REDIS_CMD entry as malformed,
#: so every node of a cluster is upgraded before a new one leads.
REDIS_CMD_V1 = "redis"
REDIS_CMD_V2 = "redis2"
REDIS_CMD_V3 = "redis3"
#: The tags of the Redis entries this version applies.
REDIS_TAGS = (REDIS_CMD, REDIS_CMD_V3, REDIS_CMD_V2, REDIS_CMD_V1)
#: An internal command the leader proposes: delete every key whose deadline
#: has passed (a client cannot send it: it is in no command table).
EXPIRE_DUE = b"__expire_due__"
#: An internal read: a key's modification index (for WATCH).
VERSION = b"__version__"
#: An internal command: [TRACK, span_ms] makes the entries stamped up to
#: span_ms after this one's record modification indexes (see above).
TRACK = b"__track__"
#: How far ahead a TRACK reaches, and the most one may ask.
TRACK_SPAN_MS = 60_000
MAX_TRACK_SPAN_MS = 3_600_000


#: The tags later versions will give their Redis entries.
_LATER_TAG = re.compile(r"redis([5-9]|[1-9][0-9]+)")


class NewerEntry(StorageError):
    """A committed entry was written by a later version of raftcore, with
    rules this node does not know: applying it otherwise (as an unknown
    command) would part this node's state from the others', so the node
    stops instead. Upgrade it and start it again: it applies the entry
    then, from its log."""


def check_known(tag: Any) -> None:
    """Raises NewerEntry if `tag` is a later version's Redis entry tag."""
    # startswith first: every kv command applied passes here (its op is a str).
    if type(tag) is str and tag.startswith("redis") and _LATER_TAG.fullmatch(tag):
        raise NewerEntry(f"a committed Redis entry is tagged {tag!r}: a later version of "
                         f"raftcore wrote it (this one applies "
                         f"{', '.join(repr(t) for t in reversed(REDIS_TAGS))}); upgrade this "
                         f"node, which stops rather than apply it differently from the others")


def apply_redis(sm: Any, p: Any) -> Any:
    """Applies one Redis entry to `sm` (a KvStateMachine); its response.
    Never raises: a committed entry must apply alike on every node."""
    if len(p) not in (3, 4) or type(p[1]) is not int or not isinstance(p[2], list):
        return error("ERR malformed redis entry")
    now = max(sm.redis.clock_ms, p[1])
    st = sm.redis
    st.clock_ms = now
    per_command = p[0] == REDIS_CMD_V1
    if not per_command:
        st.counter += 1         # this entry's modification index
    track = p[0] == REDIS_CMD_V1 or p[0] == REDIS_CMD_V2 or now < st.tracking_until
    ks = Keyspace(sm, now, True, per_command, track, expiry_unchanged=p[0] == REDIS_CMD)
    if len(p) == 4:
        try:
            if any(ks.version(k) != v for k, v in p[3]):
                return None
        except (TypeError, ValueError):
            return error("ERR malformed watch list")
    if not track:
        # After the watch check: it compares with the state before this
        # entry, which an untracked entry changes only from here on.
        st.untracked = st.counter
    return run_commands(ks, p[2])


def run_commands(ks: Keyspace, cmds: list) -> list:
    """The replies of `cmds`, in order. The common commands (a plain SET,
    GET or INCR of a bytes key that has no deadline) take a compiled path of their
    own (fast.run_commands): on every node, each command of a batched entry
    would otherwise go through the name lookup, SET's option parsing and
    the expiry checks, which are most of the cost of applying it. What
    that path does to the map and the modification indexes is exactly what
    run_command does (a key with a deadline takes run_command)."""
    return fast_run_commands(ks, cmds, run_command, OK, parse_int, ks.per_command, ks.track)


def run_command(ks: Keyspace, cmd: Any) -> Any:
    """One command's reply (a read or a write, as `ks` allows)."""
    try:
        name = cmd[0].lower()
        if name == EXPIRE_DUE:
            return expire_due(ks) if ks.mutate else error("ERR not a read")
        if name == VERSION:
            return ks.version(cmd[1])
        if name == TRACK:
            return _track(ks, cmd[1]) if ks.mutate else error("ERR not a read")
        name = name.decode()
        fn = READS.get(name) or (WRITES.get(name) if ks.mutate else None)
        if fn is None:
            return error(f"ERR cannot run {name!r:.40} here")
        return fn(ks, cmd)
    except Exception as exc:   # a malformed command in the log: answered, never raised
        return error(f"ERR malformed command: {type(exc).__name__}")


def _track(ks: Keyspace, span_ms: Any) -> Any:
    if type(span_ms) is not int or not 0 < span_ms <= MAX_TRACK_SPAN_MS:
        return error(f"ERR a track span is 1 to {MAX_TRACK_SPAN_MS} ms")
    st = ks.state
    st.tracking_until = max(st.tracking_until, ks.now + span_ms)
    return OK


def read_commands(sm: Any, now_ms: int, cmds: list) -> list:
    """The replies of read commands against `sm` at the time now_ms (the
    leader's clock, never older than the newest entry's)."""
    return run_commands(Keyspace(sm, max(now_ms, sm.redis.clock_ms), False), cmds)
