"""The Redis string commands over a KvStateMachine's map: what a write does
when its log entry is applied, and what a read answers, with Redis's
semantics and error strings.

Time. A write's entry carries the leader's wall clock (milliseconds) at the
time it was proposed; every node applies it with that time, so a deadline
(SET EX, EXPIRE) is the same absolute number on every node, and a key whose
deadline has passed is deleted by the first write that touches it, on every
node alike. Nothing here reads a clock: reads get `now` from their caller
(the leader's clock).

Each function takes the arguments as the client sent them (bytes) and
answers a reply value (see raftcore.kv.redis.resp); none raises for bad
input: a committed entry must apply the same way on every node.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

from raftcore.kv.redis.resp import error

INT_MAX = (1 << 63) - 1
INT_MIN = -(1 << 63)

E_NOT_INT = "ERR value is not an integer or out of range"
E_SYNTAX = "ERR syntax error"
E_OVERFLOW = "ERR increment or decrement would overflow"
OK = "OK"

_INT_RE = re.compile(rb"-?[1-9][0-9]{0,19}|0")


def parse_int(b: Any) -> Optional[int]:
    """Redis's strict integer (string2ll): no sign but '-', no leading
    zero or space, within 64 bits; None otherwise."""
    if type(b) is int:
        return b if INT_MIN <= b <= INT_MAX else None
    if type(b) is not bytes or not _INT_RE.fullmatch(b):
        return None
    v = int(b)
    return v if INT_MIN <= v <= INT_MAX else None


def as_bytes(v: Any) -> bytes:
    """A stored value as Redis shows it (values written through
    raftcore.kv.Client may be str or int)."""
    if type(v) is bytes:
        return v
    if type(v) is str:
        return v.encode()
    return str(v).encode()


#: Deleted keys whose modification index is remembered (for a WATCH that
#: saw them); past that the oldest are forgotten, and an absent key with no
#: record counts as modified when the newest forgotten one was.
MAX_TOMBSTONES = 100_000


class RedisState:
    """What the Redis commands keep beside the map, in a state machine and
    its snapshots: key -> expiry deadline (ms since the epoch); key ->
    modification index (live keys) and deleted key -> the index of its
    deletion, or [index, deadline] for a key deleted after its deadline
    had passed (the newest MAX_TOMBSTONES); the last index given out (see
    apply.py: one per entry); the index of the newest forgotten deletion;
    the newest leader clock an entry carried (a new leader's clock may be
    behind: time never goes back in the log); the leader clock until which
    entries record modification indexes (`tracking_until`, set by TRACK
    entries that WATCH proposes), and the index of the newest entry that
    did not (`untracked`). Every change happens in apply, so every node
    holds the same."""

    __slots__ = ("expires", "versions", "tombstones", "counter", "floor", "clock_ms",
                 "tracking_until", "untracked")

    def __init__(self) -> None:
        self.expires: dict[Any, int] = {}
        self.versions: dict[Any, int] = {}
        self.tombstones: dict[Any, int] = {}
        self.counter = 0
        self.floor = 0
        self.clock_ms = 0
        self.tracking_until = 0
        self.untracked = 0

    def dump(self) -> list:
        """A msgpack-able copy (the dicts' order kept: it decides evictions)."""
        return [list(self.expires.items()), list(self.versions.items()),
                list(self.tombstones.items()), self.counter, self.floor, self.clock_ms,
                self.tracking_until, self.untracked]

    @classmethod
    def load(cls, obj: Optional[list]) -> "RedisState":
        """From dump(); None (a snapshot made before the Redis commands):
        empty. A dump of six items (made before TRACK entries) recorded every
        modification: it loads with no entry untracked."""
        st = cls()
        if obj is not None:
            if len(obj) not in (6, 8):
                raise ValueError(f"the redis state has {len(obj)} parts, not 6 or 8")
            expires, versions, tombstones, st.counter, st.floor, st.clock_ms = obj[:6]
            if len(obj) == 8:
                st.tracking_until, st.untracked = obj[6:]
            st.expires = {k: d for k, d in expires}
            st.versions = {k: v for k, v in versions}
            st.tombstones = {k: v for k, v in tombstones}
            if not all(type(x) is int for x in (st.counter, st.floor, st.clock_ms,
                                                 st.tracking_until, st.untracked)):
                raise ValueError("the redis state's counters are not ints")
        return st


class Keyspace:
    """The map, the expiry deadlines (key -> ms) and the modification
    indexes (key -> int, for WATCH) of a state machine, at time `now`.

    `mutate`: apply (deletes keys found expired, sets modification
    indexes) or read only (hides expired keys, changes nothing).
    `per_command`: each modification takes the next index (an entry of an
    earlier version, see apply.py); else every modification takes the
    entry's, state.counter. `track`: modifications record their index
    (else the entry counts as state.untracked, see apply.py).
    `expiry_unchanged`: deleting a key whose deadline had passed leaves its
    index as a WATCH saw it while the key was hidden (Redis 7: a watched key
    that had expired already when WATCHed and is then deleted is no
    change); entries of earlier versions gave such a deletion a new index."""

    __slots__ = ("data", "expires", "state", "now", "mutate", "per_command", "track",
                 "expiry_unchanged")

    def __init__(self, sm: Any, now: int, mutate: bool, per_command: bool = False,
                 track: bool = True, expiry_unchanged: bool = True) -> None:
        self.data: dict = sm.data
        self.state: RedisState = sm.redis
        self.expires = self.state.expires
        self.now = now
        self.mutate = mutate
        self.per_command = per_command
        self.track = track or per_command
        self.expiry_unchanged = expiry_unchanged

    def alive(self, key: Any) -> bool:
        if key not in self.data:
            return False
        deadline = self.expires.get(key)
        if deadline is None or deadline > self.now:
            return True
        if self.mutate:
            self.remove(key)
        return False

    def get(self, key: Any) -> Any:
        return self.data[key] if self.alive(key) else None

    def put(self, key: Any, value: bytes, keep_ttl: bool = False) -> None:
        self.data[key] = value
        if not keep_ttl:
            self.expires.pop(key, None)
        self.touch(key)

    def remove(self, key: Any) -> bool:
        if key not in self.data:
            return False
        del self.data[key]
        deadline = self.expires.pop(key, None)
        st = self.state
        st.versions.pop(key, None)
        if not self.track:
            # Counted now, not only once the entry is applied: a deletion
            # by a transaction's check (an expired key) must change the
            # key's version for that very check.
            st.untracked = st.counter
            return True
        if self.per_command:
            st.counter += 1
        tombstones = st.tombstones
        tombstones.pop(key, None)
        if self.expiry_unchanged and deadline is not None and deadline <= self.now:
            tombstones[key] = [st.counter, deadline]
        else:
            tombstones[key] = st.counter
        if len(tombstones) > MAX_TOMBSTONES:
            # In deletion order, so the floor only grows.
            st.floor = _deleted_at(tombstones.pop(next(iter(tombstones))))
        return True

    def touch(self, key: Any) -> None:
        if not self.track:
            return
        st = self.state
        if self.per_command:
            st.counter += 1
        st.versions[key] = st.counter
        if st.tombstones:
            st.tombstones.pop(key, None)

    def version(self, key: Any) -> int:
        """The modification index of key as a WATCH sees it now (an
        expired key counts as modified at its deadline). An untracked
        entry may have modified any key: no key's index is below it."""
        self.alive(key)
        deadline = self.expires.get(key)
        if deadline is not None and deadline <= self.now:
            return -deadline            # hidden but not yet deleted
        st = self.state
        v = st.versions.get(key)
        if v is None:
            v = st.tombstones.get(key, st.floor)
            if type(v) is list:
                # Deleted once its deadline had passed: as it was while
                # hidden, unless an untracked entry came since (it may
                # have written the key without a record).
                if v[0] > st.untracked:
                    return -v[1]
                v = v[0]
        return max(v, st.untracked)


def _deleted_at(tombstone: Any) -> int:
    """The modification index of a deletion, from its tombstone."""
    return tombstone[0] if type(tombstone) is list else tombstone


# ------------------------------------------------------------- reads

def _get(ks: Keyspace, a: list) -> Any:
    v = ks.get(a[1])
    return None if v is None else as_bytes(v)


def _strlen(ks: Keyspace, a: list) -> Any:
    v = ks.get(a[1])
    return 0 if v is None else len(as_bytes(v))


def _exists(ks: Keyspace, a: list) -> Any:
    return sum(1 for k in a[1:] if ks.alive(k))


def _mget(ks: Keyspace, a: list) -> Any:
    return [_get(ks, [None, k]) for k in a[1:]]


def _pttl_of(ks: Keyspace, key: Any) -> int:
    if not ks.alive(key):
        return -2
    deadline = ks.expires.get(key)
    return -1 if deadline is None else max(0, deadline - ks.now)


def _ttl(ks: Keyspace, a: list) -> Any:
    t = _pttl_of(ks, a[1])
    return t if t < 0 else (t + 500) // 1000


def _pttl(ks: Keyspace, a: list) -> Any:
    return _pttl_of(ks, a[1])


def _dbsize(ks: Keyspace, a: list) -> Any:
    return len(ks.data)


def glob_regex(pattern: bytes) -> "re.Pattern[bytes]":
    """Redis's glob (stringmatchlen): * ? [abc] [^a-z] and \\ escapes."""
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i:i + 1]
        if c == b"*":
            out += b".*"
        elif c == b"?":
            out += b"."
        elif c == b"\\" and i + 1 < n:
            i += 1
            out += re.escape(pattern[i:i + 1])
        elif c == b"[":
            j = i + 1
            neg = j < n and pattern[j:j + 1] == b"^"
            if neg:
                j += 1
            items = bytearray()
            while j < n and pattern[j:j + 1] != b"]":
                if pattern[j:j + 1] == b"\\" and j + 1 < n:
                    j += 1
                    items += re.escape(pattern[j:j + 1])
                elif j + 2 < n and pattern[j + 1:j + 2] == b"-" and pattern[j + 2:j + 3] != b"]":
                    lo, hi = sorted((pattern[j], pattern[j + 2]))
                    items += b"%s-%s" % (re.escape(bytes([lo])), re.escape(bytes([hi])))
                    j += 2
                else:
                    items += re.escape(pattern[j:j + 1])
                j += 1
            if items:
                out += b"[" + (b"^" if neg else b"") + bytes(items) + b"]"
            else:                       # [] matches nothing, [^] any byte
                out += b"[\\s\\S]" if neg else b"(?!)"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(bytes(out), re.DOTALL)


def _visible_keys(ks: Keyspace, pattern: Optional[bytes]) -> list:
    rx = None if pattern is None or pattern == b"*" else glob_regex(pattern)
    return [k if type(k) is bytes else as_bytes(k) for k in list(ks.data)
            if ks.alive(k) and (rx is None or rx.fullmatch(as_bytes(k)))]


def _keys(ks: Keyspace, a: list) -> Any:
    return _visible_keys(ks, a[1])


def _scan(ks: Keyspace, a: list) -> Any:
    cursor = parse_int(a[1])
    if cursor is None or cursor < 0:
        return error("ERR invalid cursor")
    pattern, count = None, 10
    i = 2
    while i < len(a):
        opt = a[i].lower()
        if i + 1 >= len(a):
            return error(E_SYNTAX)
        if opt == b"match":
            pattern = a[i + 1]
        elif opt == b"count":
            count = parse_int(a[i + 1])
            if count is None:
                return error(E_NOT_INT)
            if count < 1:
                return error(E_SYNTAX)
        elif opt != b"type":
            return error(E_SYNTAX)
        i += 2
    # The cursor is a position in the sorted key order (sorted per call).
    # Unlike Redis's, a key present for the whole scan can be missed if keys
    # before it are deleted between calls (positions shift); added keys can
    # make a key come twice.
    keys = sorted(k for k in ks.data if type(k) is bytes)
    page = keys[cursor:cursor + count]
    nxt = cursor + count if cursor + count < len(keys) else 0
    rx = None if pattern is None or pattern == b"*" else glob_regex(pattern)
    found = [k for k in page if ks.alive(k) and (rx is None or rx.fullmatch(k))]
    return [str(nxt).encode(), found]


# ------------------------------------------------------------ writes

def _set_options(a: list) -> Any:
    """SET's options: (nx, xx, get, keep_ttl, (unit_ms, value, absolute) or
    None), or an error."""
    nx = xx = get = keep = False
    exp = None
    i = 3
    while i < len(a):
        opt = a[i].lower()
        nxt = i + 1 < len(a)
        if opt == b"nx" and not xx:
            nx = True
        elif opt == b"xx" and not nx:
            xx = True
        elif opt == b"get":
            get = True
        elif opt == b"keepttl" and exp is None:
            keep = True
        elif opt in _EXPIRE_UNITS and not keep and nxt and (exp is None or exp[3] == opt):
            unit, absolute = _EXPIRE_UNITS[opt]
            exp = (unit, a[i + 1], absolute, opt)
            i += 1
        else:
            return error(E_SYNTAX)
        i += 1
    return nx, xx, get, keep, exp


_EXPIRE_UNITS = {b"ex": (1000, False), b"px": (1, False), b"exat": (1000, True),
                 b"pxat": (1, True)}


def _deadline(exp: tuple, now: int, command: str) -> Any:
    """The absolute deadline (ms) of an expire option, or an error."""
    unit, text, absolute = exp[0], exp[1], exp[2]
    v = parse_int(text)
    if v is None:
        return error(E_NOT_INT)
    invalid = error(f"ERR invalid expire time in '{command}' command")
    if v <= 0 or v > INT_MAX // unit:
        return invalid
    v *= unit
    if not absolute:
        v += now
        if v > INT_MAX:
            return invalid
    return v


def check_set(a: list, now: int = 0) -> Optional[dict]:
    """SET's syntax error (what it answers without touching the map), or None."""
    opts = _set_options(a)
    if type(opts) is dict:
        return opts
    if opts[4] is not None:
        d = _deadline(opts[4], now, "set")
        if type(d) is dict:
            return d
    return None


def _set(ks: Keyspace, a: list) -> Any:
    opts = _set_options(a)
    if type(opts) is dict:
        return opts
    nx, xx, get, keep, exp = opts
    deadline = None
    if exp is not None:
        deadline = _deadline(exp, ks.now, "set")
        if type(deadline) is dict:
            return deadline
    key = a[1]
    old = _get(ks, [None, key])
    if (nx and old is not None) or (xx and old is None):
        return old if get else None
    ks.put(key, a[2], keep_ttl=keep)
    if deadline is not None:
        if deadline <= ks.now:          # EXAT/PXAT in the past
            ks.remove(key)
        else:
            ks.expires[key] = deadline
    return old if get else OK


def _getset(ks: Keyspace, a: list) -> Any:
    old = _get(ks, a)
    ks.put(a[1], a[2])
    return old


def _setnx(ks: Keyspace, a: list) -> Any:
    if ks.alive(a[1]):
        return 0
    ks.put(a[1], a[2])
    return 1


def _del(ks: Keyspace, a: list) -> Any:
    return sum(1 for k in a[1:] if ks.alive(k) and ks.remove(k))


def _getdel(ks: Keyspace, a: list) -> Any:
    old = _get(ks, a)
    if old is not None:
        ks.remove(a[1])
    return old


def wrong_arity(name: str) -> dict:
    return error(f"ERR wrong number of arguments for '{name}' command")


def check_pairs(a: list) -> Optional[dict]:
    """MSET's and MSETNX's own arity check (key value pairs): in Redis it
    runs with the command, so inside MULTI such a command is queued and
    fails in EXEC."""
    return wrong_arity(a[0].lower().decode(errors="replace")) if len(a) % 2 == 0 else None


def _mset(ks: Keyspace, a: list) -> Any:
    refused = check_pairs(a)
    if refused is not None:
        return refused
    for i in range(1, len(a) - 1, 2):
        ks.put(a[i], a[i + 1])
    return OK


def _msetnx(ks: Keyspace, a: list) -> Any:
    refused = check_pairs(a)
    if refused is not None:
        return refused
    if any(ks.alive(a[i]) for i in range(1, len(a) - 1, 2)):
        return 0
    _mset(ks, a)
    return 1


def _incr_by(ks: Keyspace, key: Any, by: Optional[int], overflow: str = E_OVERFLOW) -> Any:
    if by is None:
        return error(E_NOT_INT)
    cur = ks.get(key)
    n = 0 if cur is None else parse_int(cur if type(cur) is not str else cur.encode())
    if n is None:
        return error(E_NOT_INT)
    n += by
    if not INT_MIN <= n <= INT_MAX:
        return error(overflow)
    ks.put(key, b"%d" % n, keep_ttl=True)
    return n


def _incr(ks: Keyspace, a: list) -> Any:
    return _incr_by(ks, a[1], 1)


def _decr(ks: Keyspace, a: list) -> Any:
    return _incr_by(ks, a[1], -1)


def _incrby(ks: Keyspace, a: list) -> Any:
    return _incr_by(ks, a[1], parse_int(a[2]))


def _decrby(ks: Keyspace, a: list) -> Any:
    by = parse_int(a[2])
    if by == INT_MIN:
        return error("ERR decrement would overflow")
    return _incr_by(ks, a[1], None if by is None else -by)


def _append(ks: Keyspace, a: list) -> Any:
    cur = ks.get(a[1])
    v = a[2] if cur is None else as_bytes(cur) + a[2]
    ks.put(a[1], v, keep_ttl=True)
    return len(v)


def expire_args(a: list, unit: int, absolute: bool, command: str, now: int) -> Any:
    """(deadline, nx, xx, gt, lt) of EXPIRE and kin, or an error."""
    flags = set()
    for opt in a[3:]:
        o = opt.lower()
        if o not in (b"nx", b"xx", b"gt", b"lt"):
            return error(f"ERR Unsupported option {opt.decode(errors='replace')}")
        flags.add(o)
    if b"nx" in flags and flags & {b"xx", b"gt", b"lt"}:
        return error("ERR NX and XX, GT or LT options at the same time are not compatible")
    if b"gt" in flags and b"lt" in flags:
        return error("ERR GT and LT options at the same time are not compatible")
    v = parse_int(a[2])
    if v is None:
        return error(E_NOT_INT)
    invalid = error(f"ERR invalid expire time in '{command}' command")
    if v > INT_MAX // unit or v < INT_MIN // unit:
        return invalid
    v *= unit
    if not absolute:
        v += now
        if not INT_MIN <= v <= INT_MAX:
            return invalid
    return v, b"nx" in flags, b"xx" in flags, b"gt" in flags, b"lt" in flags


def _expire_generic(unit: int, absolute: bool, command: str) -> Callable:
    def run(ks: Keyspace, a: list) -> Any:
        got = expire_args(a, unit, absolute, command, ks.now)
        if type(got) is dict:
            return got
        deadline, nx, xx, gt, lt = got
        key = a[1]
        if not ks.alive(key):
            return 0
        cur = ks.expires.get(key)
        if (nx and cur is not None) or (xx and cur is None):
            return 0
        # No deadline counts as an infinite one for GT and LT.
        if (gt and (cur is None or deadline <= cur)) or (lt and cur is not None and
                                                         deadline >= cur):
            return 0
        if deadline <= ks.now:
            ks.remove(key)
        else:
            ks.expires[key] = deadline
            ks.touch(key)
        return 1
    return run


def _persist(ks: Keyspace, a: list) -> Any:
    if ks.alive(a[1]) and ks.expires.pop(a[1], None) is not None:
        ks.touch(a[1])
        return 1
    return 0


def _flushdb(ks: Keyspace, a: list) -> Any:
    if len(a) > 2 or (len(a) == 2 and a[1].lower() not in (b"async", b"sync")):
        return error(E_SYNTAX)
    for k in list(ks.data):
        ks.remove(k)
    return OK


def expire_due(ks: Keyspace) -> int:
    """Deletes every key whose deadline has passed (the leader proposes
    this periodically, so that expired keys do not linger); the count."""
    due = [k for k, d in ks.expires.items() if d <= ks.now]
    for k in due:
        ks.remove(k)
    return len(due)


#: name -> function(keyspace, args) of the commands that only read.
READS: dict[str, Callable[[Keyspace, list], Any]] = {
    "get": _get, "strlen": _strlen, "exists": _exists, "mget": _mget, "ttl": _ttl,
    "pttl": _pttl, "keys": _keys, "scan": _scan, "dbsize": _dbsize,
}

#: name -> function(keyspace, args) of the commands that write.
WRITES: dict[str, Callable[[Keyspace, list], Any]] = {
    "set": _set, "getset": _getset, "setnx": _setnx, "del": _del, "unlink": _del,
    "getdel": _getdel, "mset": _mset, "msetnx": _msetnx, "incr": _incr, "decr": _decr,
    "incrby": _incrby, "decrby": _decrby, "append": _append,
    "expire": _expire_generic(1000, False, "expire"),
    "pexpire": _expire_generic(1, False, "pexpire"),
    "expireat": _expire_generic(1000, True, "expireat"),
    "pexpireat": _expire_generic(1, True, "pexpireat"),
    "persist": _persist, "flushdb": _flushdb, "flushall": _flushdb,
}
