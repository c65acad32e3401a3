# cython: language_level=3, boundscheck=False, wraparound=False
"""The per-command paths of the Redis layer, compiled.

A profile of a node serving pipelined SETs put a fifth of the leader's
event-loop time into cutting requests into arguments (Python slicing, one
int() and one bytes object per token), and most of a follower's into
applying the commands of each entry; a batch's replies cost a Python call
each. These functions do the common cases in C and leave everything else to
the Python modules, which stay the reference:

- split_commands(buf, out, max_bulk): the complete multibulk commands at
  the start of `buf`, with nothing unusual about them. It stops, and
  RespParser's careful parser goes on from where it stopped, at anything
  else: a partial command, a count or a length that is not plain decimal
  digits, an argument over max_bulk or not followed by CRLF, more than
  FAST_ARGS arguments (a command that large may arrive in many reads: the
  careful parser does not cut it again at each). What it accepts, the
  careful parser would cut the same way.
- plain_batch(cmds, plain): the kind (a read or a write) and the argument
  bytes of a batch whose commands are all of one kind and need no check
  at the door (commands.PLAIN); None for anything else, which the
  connection's Python path classifies (and which stays the reference).
- encode_replies(replies, resp3, encode): the RESP bytes of a list of
  replies; bulk strings, integers, nil and +OK here, the rest through
  `encode` (resp.encode).
- run_commands(ks, cmds, run_command, ok, parse_int, per_command, track): the
  replies of a batch of commands against a Keyspace (apply.run_commands,
  which documents what it does); a plain GET, SET or INCR of a bytes key
  without a deadline here, every other command (and every error) through
  `run_command`. It brings the map slots of each 32 commands' keys into
  the cache before it applies them (dict_slots.pxd).
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_Contains, PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject

from raftcore.kv.redis.dict_slots cimport (
    RC_DICT_SLOTS_READ, TOUCH_MIN, TOUCH_SPAN, rc_first_probe_is, touch_key_slots)

cdef object INT64_MAX = (1 << 63) - 1

cdef enum:
    # Commands of more arguments than this take the careful path.
    FAST_ARGS = 64
    # Digits of a count or length the fast path reads (more: the careful path).
    MAX_DIGITS = 12


cdef inline Py_ssize_t _number(const char* p, Py_ssize_t i, Py_ssize_t end,
                               Py_ssize_t* value):
    """Reads plain decimal digits (no sign, no leading zero) from p[i] up to
    a CRLF; the index after the CRLF, or -1 if it is not that (or not all
    there yet)."""
    cdef Py_ssize_t v = 0
    cdef Py_ssize_t j = i
    cdef char c
    while j < end and j - i <= MAX_DIGITS:
        c = p[j]
        if c == c'\r':
            if j == i or j + 1 >= end or p[j + 1] != c'\n':
                return -1
            if p[i] == c'0' and j - i > 1:
                return -1
            value[0] = v
            return j + 2
        if c < c'0' or c > c'9':
            return -1
        v = v * 10 + (c - c'0')
        j += 1
    return -1


def split_commands(bytearray buf, list out, Py_ssize_t max_bulk) -> int:
    """Appends the complete, plain multibulk commands at the start of `buf`
    to `out` (each a list of bytes); returns where it stopped."""
    cdef const char* p = PyByteArray_AS_STRING(buf)
    cdef Py_ssize_t end = PyByteArray_GET_SIZE(buf)
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t i, n, k, size
    cdef list args
    while pos < end:
        if p[pos] != c'*':
            break
        i = _number(p, pos + 1, end, &n)
        if i < 0 or n <= 0 or n > FAST_ARGS:
            break
        args = []
        for k in range(n):
            if i >= end or p[i] != c'$':
                return pos
            i = _number(p, i + 1, end, &size)
            if i < 0 or size > max_bulk or i + size + 2 > end:
                return pos
            if p[i + size] != c'\r' or p[i + size + 1] != c'\n':
                return pos
            args.append(PyBytes_FromStringAndSize(p + i, size))
            i += size + 2
        out.append(args)
        pos = i
    return pos


def plain_batch(list cmds, dict plain):
    """(kind, argument bytes) of `cmds` if each is a list of bytes whose
    name `plain` maps to (kind, arity), with a valid argument count (arity
    as Redis's: n exactly, -n at least n), and all are of one kind; else
    None."""
    cdef Py_ssize_t size = 0, n, arity
    cdef PyObject* found
    kind = None
    for c in cmds:
        if type(c) is not list:
            return None
        n = len(<list>c)
        if n == 0:
            return None
        found = PyDict_GetItem(plain, (<list>c)[0])
        if found is NULL:
            return None
        k, arity = <tuple>found
        if (arity > 0 and n != arity) or n < -arity:
            return None
        if k is not kind:
            if kind is not None:
                return None
            kind = k
        for a in <list>c:
            if type(a) is not bytes:
                return None
            size += len(<bytes>a)
    return kind, size


def encode_replies(list replies, bint resp3, encode) -> bytes:
    """The RESP bytes of `replies`, one after the other."""
    cdef list parts = []
    cdef bytes nil = b"_\r\n" if resp3 else b"$-1\r\n"
    for r in replies:
        t = type(r)
        if t is bytes:
            parts.append(b"$%d\r\n%s\r\n" % (len(<bytes>r), <bytes>r))
        elif t is str and r == "OK":
            parts.append(b"+OK\r\n")
        elif t is int:
            parts.append(b":%d\r\n" % r)
        elif r is None:
            parts.append(nil)
        else:
            parts.append(encode(r, resp3))
    return b"".join(parts)


cdef inline void _modified(state, dict versions, dict tombstones, key, counter,
                           bint per_command) except *:
    """Key `key` was written: it takes the entry's modification index
    `counter` (WATCH), or the next one for an entry of an earlier version
    (see apply.py). The entry's index is one int shared by all its writes."""
    if per_command:
        counter = state.counter + 1
        state.counter = counter
    PyDict_SetItem(versions, key, counter)
    if tombstones:
        tombstones.pop(key, None)


DICT_SLOTS_READ = bool(RC_DICT_SLOTS_READ)


def first_probe_hits(dict d) -> int:
    """How many keys of `d` (a dict of bytes keys, or of any keys but str
    only) the slot their hash probes first names, as dict_slots reads the
    layout: most of a large dict's keys where DICT_SLOTS_READ (the smoke
    test checks it, for each wheel's CPython), 0 where not."""
    cdef Py_ssize_t hits = 0
    for key in d:
        hits += rc_first_probe_is(d, key, hash(key))
    return hits


def run_commands(ks, list cmds, run_command, ok, parse_int, bint per_command,
                 bint track) -> list:
    """The replies of `cmds` against the Keyspace `ks`, in order; `ok` is
    SET's reply, `parse_int` Redis's strict integer (keyspace.parse_int),
    `per_command` and `track` as Keyspace's."""
    cdef dict data = ks.data
    cdef dict expires = ks.expires
    cdef bint mutate = ks.mutate
    state = ks.state
    cdef dict versions = state.versions
    cdef dict tombstones = state.tombstones
    # The entry's index: the same all through the batch (an entry of an
    # earlier version moves it on at each write, in _modified).
    counter = state.counter
    cdef list out = []
    cdef list cmd
    cdef Py_ssize_t n
    cdef PyObject* found
    cdef Py_ssize_t at = 0, total = len(cmds)
    for c in cmds:
        # Each TOUCH_SPAN commands, their keys' map slots are brought into
        # the cache together (dict_slots).
        if RC_DICT_SLOTS_READ and at % TOUCH_SPAN == 0 and total - at >= TOUCH_MIN:
            touch_key_slots(data, cmds, at)
        at += 1
        if type(c) is list:
            cmd = <list>c
            n = len(cmd)
            if n == 2 or n == 3:
                key = cmd[1]
                if type(key) is bytes and not PyDict_Contains(expires, key):
                    name = cmd[0]
                    if n == 2 and (name == b"GET" or name == b"get"):
                        found = PyDict_GetItem(data, key)
                        if found is NULL or type(<object>found) is bytes:
                            out.append(None if found is NULL else <object>found)
                            continue
                    elif mutate and n == 2 and (name == b"INCR" or name == b"incr"):
                        # A stored integer below the maximum (anything else:
                        # run_command, which answers the error).
                        found = PyDict_GetItem(data, key)
                        value = 0 if found is NULL or <object>found is None else (
                            parse_int(<object>found) if type(<object>found) is bytes else None)
                        if value is not None and value < INT64_MAX:
                            value = value + 1
                            PyDict_SetItem(data, key, b"%d" % value)
                            if track:
                                _modified(state, versions, tombstones, key, counter,
                                          per_command)
                            out.append(value)
                            continue
                    elif mutate and n == 3 and (name == b"SET" or name == b"set"):
                        PyDict_SetItem(data, key, cmd[2])
                        if track:
                            _modified(state, versions, tombstones, key, counter,
                                      per_command)
                        out.append(ok)
                        continue
        out.append(run_command(ks, c))
    return out
