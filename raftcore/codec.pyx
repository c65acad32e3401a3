"""Conversion between raftcore values and msgpack-friendly primitives.

Used by the TCP transport (messages) and the file log store (entries,
votes). Every value becomes lists, ints and the application's own payloads;
nothing is pickled. Decoding validates shape and types and raises CodecError
naming what is wrong, so a malformed frame or record never becomes a
half-built message.

Layouts (all lists):
  entry batch    flat [term, index, kind, payload, term, index, ...]
                 (a membership payload is encoded with encode_membership; a
                 normal entry that carries its command's encoding, made once
                 at the leader's door, goes as kind ENCODED_NORMAL with that
                 encoding as a bin payload, byte for byte)
  membership     [[voter ids of each set], [[id, addr, data(, incarnation)], ...]]
                 (the incarnation only once the membership records one)
  vote           [term, node_id or None, committed]
  log id         [term, index] or None
  message        [type, fields..., identity] with type one of MSG_*; the last
                 field is the sender's cluster id in a request and the
                 answering node's incarnation in a response (None: not known)
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint8_t, uint64_t, uintptr_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy

from raftcore.types cimport (Entry, LogId, Vote, make_entry, make_encoded_entry, BLANK, NORMAL,
                            MEMBERSHIP)

import msgpack
from raftcore.membership cimport Membership
from raftcore.messages cimport (
    AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse, TransferLeaderRequest,
    SnapshotMeta, InstallSnapshotRequest, InstallSnapshotResponse)

from raftcore.errors import CodecError
from raftcore.node import Node

MSG_APPEND_ENTRIES = 1
MSG_APPEND_ENTRIES_RESPONSE = 2
MSG_VOTE = 3
MSG_VOTE_RESPONSE = 4
MSG_TRANSFER_LEADER = 5
MSG_INSTALL_SNAPSHOT = 6
MSG_INSTALL_SNAPSHOT_RESPONSE = 7

cdef inline long long _int(object v, str what) except? -1:
    if type(v) is not int:
        raise CodecError(f"{what} must be an integer, got {type(v).__name__}")
    if not -9223372036854775808 <= v <= 9223372036854775807:
        raise CodecError(f"{what} is out of range: {v}")
    return v


#: Terms at or above this are refused: a node must always be able to count
#: one term higher without overflowing its 64-bit term.
MAX_TERM = 2**62


cdef inline long long _term(object v, str what) except? -1:
    cdef long long t = _int(v, what)
    if t < 0 or t >= MAX_TERM:
        raise CodecError(f"{what} {t} is out of range [0, 2**62)")
    return t


cdef inline object _node_id(object v, str what):
    if v is not None and type(v) is not int:
        raise CodecError(f"{what} must be an integer node id or None, got {type(v).__name__}")
    return v


#: Longest cluster id or incarnation accepted (both are short random tokens).
MAX_IDENTITY_LENGTH = 64


cdef inline object _identity(object v, str what):
    if v is None:
        return None
    if type(v) is not str:
        raise CodecError(f"{what} must be a string or None, got {type(v).__name__}")
    if not 0 < len(<str>v) <= MAX_IDENTITY_LENGTH:
        raise CodecError(f"{what} must have 1 to {MAX_IDENTITY_LENGTH} characters, "
                         f"got {len(<str>v)}")
    return v


cdef inline list _list(object v, str what, Py_ssize_t n=-1):
    if type(v) is not list:
        raise CodecError(f"{what} must be a list, got {type(v).__name__}")
    if n >= 0 and len(<list>v) != n:
        raise CodecError(f"{what} must have {n} items, got {len(<list>v)}")
    return <list>v


# ----------------------------------------------------------------- values

def encode_membership(Membership m):
    nodes = []
    for node_id in sorted(m.nodes):
        n = m.nodes[node_id]
        if n is None:
            nodes.append([node_id, "", None])
        elif getattr(n, "incarnation", None) is None:
            nodes.append([node_id, n.addr, n.data])
        else:
            nodes.append([node_id, n.addr, n.data, n.incarnation])
    return [[sorted(c) for c in m.configs], nodes]


def decode_membership(obj):
    cdef list top = _list(obj, "membership", 2)
    cdef list cfgs = _list(top[0], "membership voter sets")
    configs = []
    for c in cfgs:
        ids = _list(c, "membership voter set")
        for i in ids:
            _int(i, "voter id")
        configs.append(ids)
    nodes = {}
    for item in _list(top[1], "membership nodes"):
        rec = _list(item, "membership node")
        if not 3 <= len(rec) <= 4:
            raise CodecError(f"membership node must have 3 or 4 items, got {len(rec)}")
        addr = rec[1]
        if type(addr) is not str:
            raise CodecError(f"node address must be a string, got {type(addr).__name__}")
        incarnation = _identity(rec[3], "node incarnation") if len(rec) == 4 else None
        nodes[_int(rec[0], "node id")] = Node(addr, rec[2], incarnation)
    try:
        return Membership(configs, nodes)
    except ValueError as exc:
        raise CodecError(f"invalid membership: {exc}") from None


def encode_vote(Vote v):
    return [v.term, v.node_id, v.committed]


def decode_vote(obj):
    cdef list v = _list(obj, "vote", 3)
    if type(v[2]) is not bool:
        raise CodecError("vote.committed must be a boolean")
    return Vote(_term(v[0], "vote.term"), _node_id(v[1], "vote.node_id"), v[2])


def encode_log_id(log_id):
    if log_id is None:
        return None
    return [(<LogId>log_id).term, (<LogId>log_id).index]


def decode_log_id(obj):
    if obj is None:
        return None
    cdef list v = _list(obj, "log id", 2)
    return LogId(_term(v[0], "log id term"), _int(v[1], "log id index"))


#: The wire and log kind of a normal entry sent as its command's encoding
#: (Entry.encoded); it is decoded back into an ENTRY_NORMAL entry.
ENCODED_NORMAL = 3


cpdef list encode_entries(list entries):
    """A flat list [term, index, kind, payload, ...] for a batch of entries."""
    cdef Py_ssize_t n = len(entries), i
    cdef list out = [None] * (4 * n)
    cdef Entry e
    for i in range(n):
        e = <Entry>entries[i]
        out[4 * i] = e.term
        out[4 * i + 1] = e.index
        if e.encoded is not None:
            out[4 * i + 2] = ENCODED_NORMAL
            out[4 * i + 3] = e.encoded
        else:
            out[4 * i + 2] = e.kind
            out[4 * i + 3] = encode_membership(e._payload) if e.kind == MEMBERSHIP else e._payload
    return out


cdef Entry _decode_encoded(long long term, long long index, object raw):
    if type(raw) is not bytes:
        raise CodecError(f"entry ({term}, {index}) is sent encoded, so its payload must be "
                         f"bytes, got {type(raw).__name__}")
    try:
        payload = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:
        raise CodecError(f"entry ({term}, {index}): its encoded command does not decode: "
                         f"{exc}") from None
    return make_encoded_entry(term, index, payload, <bytes>raw)


cpdef list decode_entries(object flat):
    """Entries from a flat list made by encode_entries; checks that indexes
    are consecutive."""
    cdef list f = _list(flat, "entries")
    cdef Py_ssize_t n = len(f), i
    cdef long long term, index, kind, prev = -1
    if n % 4:
        raise CodecError(f"an entry batch has 4 fields per entry; got {n} fields")
    cdef list out = [None] * (n // 4)
    for i in range(n // 4):
        term = _term(f[4 * i], "entry term")
        index = _int(f[4 * i + 1], "entry index")
        kind = _int(f[4 * i + 2], "entry kind")
        if term < 0 or index < 1:
            raise CodecError(f"entry ({term}, {index}) has a negative term or an index below 1")
        if prev >= 0 and index != prev + 1:
            raise CodecError(f"entry indexes must be consecutive: {index} follows {prev}")
        prev = index
        payload = f[4 * i + 3]
        if kind == ENCODED_NORMAL:
            out[i] = _decode_encoded(term, index, payload)
            continue
        if kind == MEMBERSHIP:
            payload = decode_membership(payload)
        elif kind != NORMAL and kind != BLANK:
            raise CodecError(f"unknown entry kind {kind}")
        out[i] = make_entry(term, index, <int>kind, payload)
    return out


def encode_snapshot_meta(SnapshotMeta meta):
    m = meta.membership
    return [meta.last_log_term, meta.last_log_index,
            encode_membership(m) if m is not None else None, meta.snapshot_id]


def decode_snapshot_meta(obj):
    cdef list v = _list(obj, "snapshot meta", 4)
    if type(v[3]) is not str:
        raise CodecError("snapshot id must be a string")
    return SnapshotMeta(_term(v[0], "snapshot last term"), _int(v[1], "snapshot last index"),
                        decode_membership(v[2]) if v[2] is not None else None, v[3])


# --------------------------------------------------------------- messages

cpdef list encode_message(object msg):
    """[type, fields...] for an RPC message."""
    cdef AppendEntriesRequest a
    cdef AppendEntriesResponse ar
    cdef VoteRequest v
    cdef VoteResponse vr
    cdef TransferLeaderRequest tl
    cdef InstallSnapshotRequest isr
    if type(msg) is AppendEntriesRequest:
        a = <AppendEntriesRequest>msg
        return [MSG_APPEND_ENTRIES, a.term, a.leader_id, a.prev_log_term, a.prev_log_index,
                a.leader_commit, encode_entries(a.entries), a.cluster_id]
    if type(msg) is AppendEntriesResponse:
        ar = <AppendEntriesResponse>msg
        return [MSG_APPEND_ENTRIES_RESPONSE, ar.term, ar.success, ar.matched,
                ar.conflict_index, ar.conflict_term, ar.incarnation]
    if type(msg) is VoteRequest:
        v = <VoteRequest>msg
        fields = [MSG_VOTE, v.term, v.candidate_id, v.last_log_term, v.last_log_index,
                  v.pre_vote, v.transfer, v.cluster_id]
        if v.fresh:
            # Only a cluster's first elections carry them: every other
            # request keeps the eight items earlier releases read.
            fields.append(sorted(v.fresh))
        return fields
    if type(msg) is VoteResponse:
        vr = <VoteResponse>msg
        return [MSG_VOTE_RESPONSE, vr.term, vr.granted, vr.voter_id, vr.incarnation]
    if type(msg) is TransferLeaderRequest:
        tl = <TransferLeaderRequest>msg
        return [MSG_TRANSFER_LEADER, tl.term, tl.leader_id, tl.last_log_index, tl.cluster_id]
    if type(msg) is InstallSnapshotRequest:
        isr = <InstallSnapshotRequest>msg
        return [MSG_INSTALL_SNAPSHOT, isr.term, isr.leader_id, encode_snapshot_meta(isr.meta),
                isr.offset, isr.data, isr.done, isr.cluster_id]
    if type(msg) is InstallSnapshotResponse:
        return [MSG_INSTALL_SNAPSHOT_RESPONSE, (<InstallSnapshotResponse>msg).term,
                (<InstallSnapshotResponse>msg).incarnation]
    raise CodecError(f"cannot encode a {type(msg).__name__}: not a raftcore message")


cpdef object decode_message(object obj):
    """The message encoded by encode_message; CodecError if malformed."""
    if type(obj) is not list or not obj:
        raise CodecError("a message must be a non-empty list [type, fields...]")
    cdef list m = <list>obj
    t = m[0]
    if t == MSG_APPEND_ENTRIES:
        _list(m, "AppendEntries", 8)
        req = AppendEntriesRequest(
            _term(m[1], "term"), _node_id(m[2], "leader_id"), _term(m[3], "prev_log_term"),
            _int(m[4], "prev_log_index"), decode_entries(m[6]), _int(m[5], "leader_commit"),
            0, _identity(m[7], "cluster id"))
        if req.entries and (<Entry>req.entries[0]).index != req.prev_log_index + 1:
            raise CodecError("AppendEntries entries must start right after prev_log_index")
        return req
    if t == MSG_APPEND_ENTRIES_RESPONSE:
        _list(m, "AppendEntriesResponse", 7)
        if type(m[2]) is not bool:
            raise CodecError("AppendEntriesResponse.success must be a boolean")
        return AppendEntriesResponse(_term(m[1], "term"), m[2], _int(m[3], "matched"),
                                     _int(m[4], "conflict_index"), _term(m[5], "conflict_term"),
                                     _identity(m[6], "incarnation"))
    if t == MSG_VOTE:
        if len(m) != 8 and len(m) != 9:
            raise CodecError(f"Vote must have 8 or 9 items, got {len(m)}")
        if type(m[5]) is not bool or type(m[6]) is not bool:
            raise CodecError("Vote.pre_vote and Vote.transfer must be booleans")
        fresh = ()
        if len(m) == 9:
            fresh = _list(m[8], "Vote.fresh")
            for i in fresh:
                if type(i) is not int:
                    raise CodecError(f"Vote.fresh must list integer voter ids, got "
                                     f"{type(i).__name__}")
        return VoteRequest(_term(m[1], "term"), _node_id(m[2], "candidate_id"),
                           _term(m[3], "last_log_term"), _int(m[4], "last_log_index"),
                           m[5], m[6], _identity(m[7], "cluster id"), fresh)
    if t == MSG_VOTE_RESPONSE:
        _list(m, "VoteResponse", 5)
        if type(m[2]) is not bool:
            raise CodecError("VoteResponse.granted must be a boolean")
        return VoteResponse(_term(m[1], "term"), m[2], _node_id(m[3], "voter_id"),
                            _identity(m[4], "incarnation"))
    if t == MSG_TRANSFER_LEADER:
        _list(m, "TransferLeader", 5)
        return TransferLeaderRequest(_term(m[1], "term"), _node_id(m[2], "leader_id"),
                                     _int(m[3], "last_log_index"), _identity(m[4], "cluster id"))
    if t == MSG_INSTALL_SNAPSHOT:
        _list(m, "InstallSnapshot", 8)
        if type(m[5]) is not bytes or type(m[6]) is not bool:
            raise CodecError("InstallSnapshot data must be bytes and done a boolean")
        offset = _int(m[4], "offset")
        if offset < 0:
            raise CodecError("InstallSnapshot offset must be >= 0")
        return InstallSnapshotRequest(_term(m[1], "term"), _node_id(m[2], "leader_id"),
                                      decode_snapshot_meta(m[3]), offset, m[5], m[6],
                                      _identity(m[7], "cluster id"))
    if t == MSG_INSTALL_SNAPSHOT_RESPONSE:
        _list(m, "InstallSnapshotResponse", 3)
        return InstallSnapshotResponse(_term(m[1], "term"), _identity(m[2], "incarnation"))
    raise CodecError(f"unknown message type {t!r}")


# ---------------------------------------------------------------- plain values
#
# pack_plain: the msgpack encoding (as msgpack.packb(value, use_bin_type=True)
# makes it, byte for byte) of a value built only of the exact types that
# decode back to themselves, for a command its caller hands over
# (Raft.client_write(owned=True)): the node applies the caller's object, not
# a decoded copy, so that object must be what every other node decodes.
# msgpack's own packer turns a tuple into a list and a bytearray or a
# subclass into its base type; this one refuses them (PlainValueError). It
# also refuses a list or dict that appears twice in the value: the leader
# would hold one object where every other node decodes two, and a state
# machine that changed one of them in place would change both only there.

#: Nesting deeper than this is refused (msgpack itself goes to about a
#: thousand levels; no command needs this many).
PLAIN_MAX_DEPTH = 511


class PlainValueError(ValueError):
    """A value given to pack_plain holds something other than exact None,
    bool, int (64-bit), float, str, bytes, list or dict."""


cdef struct _Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap
    # The lists and dicts written (borrowed pointers, only compared), if
    # keep_seen: pack_plain refuses one met twice.
    bint keep_seen
    void** seen
    Py_ssize_t nseen
    Py_ssize_t seen_cap


cdef int _open(_Buf* b, Py_ssize_t cap, bint keep_seen) except -1:
    b.data = <char*>PyMem_Malloc(cap)
    if b.data is NULL:
        raise MemoryError()
    b.size = 0
    b.cap = cap
    b.keep_seen = keep_seen
    b.seen = NULL
    b.nseen = 0
    b.seen_cap = 0
    return 0


cdef void _close(_Buf* b):
    PyMem_Free(b.data)
    PyMem_Free(b.seen)


cdef int _reserve(_Buf* b, Py_ssize_t n) except -1:
    cdef Py_ssize_t cap
    cdef char* grown
    if b.size + n <= b.cap:
        return 0
    cap = max(b.cap * 2, b.size + n)
    grown = <char*>PyMem_Realloc(b.data, cap)
    if grown is NULL:
        raise MemoryError()
    b.data = grown
    b.cap = cap
    return 0


cdef inline int _put_head(_Buf* b, uint8_t code, uint64_t value, int width) except -1:
    """`code` then `value` big-endian in `width` bytes (0: none)."""
    cdef int i
    _reserve(b, 1 + width)
    b.data[b.size] = <char>code
    for i in range(width):
        b.data[b.size + 1 + i] = <char>((value >> (8 * (width - 1 - i))) & 0xff)
    b.size += 1 + width
    return 0


cdef int _put_length(_Buf* b, Py_ssize_t n, uint8_t fix, Py_ssize_t fix_below,
                     uint8_t c8, uint8_t c16, uint8_t c32) except -1:
    """The header of a str, bin, array or map of n items or bytes; c8 == 0:
    the kind has no 8-bit form."""
    if n < fix_below:
        return _put_head(b, fix | <uint8_t>n, 0, 0)
    if c8 and n <= 0xff:
        return _put_head(b, c8, n, 1)
    if n <= 0xffff:
        return _put_head(b, c16, n, 2)
    if n <= 0xffffffff:
        return _put_head(b, c32, n, 4)
    raise PlainValueError(f"a str, bytes, list or dict of {n} items is over msgpack's limit")


cdef int _put_raw(_Buf* b, const char* p, Py_ssize_t n) except -1:
    _reserve(b, n)
    memcpy(b.data + b.size, p, n)
    b.size += n
    return 0


cdef int _put_int(_Buf* b, object value) except -1:
    cdef int64_t v
    cdef uint64_t u
    if value >= 0:
        u = value        # OverflowError past 2**64 - 1
        if u < 0x80:
            return _put_head(b, <uint8_t>u, 0, 0)
        if u <= 0xff:
            return _put_head(b, 0xcc, u, 1)
        if u <= 0xffff:
            return _put_head(b, 0xcd, u, 2)
        if u <= 0xffffffff:
            return _put_head(b, 0xce, u, 4)
        return _put_head(b, 0xcf, u, 8)
    v = value            # OverflowError below -2**63
    if v >= -32:
        return _put_head(b, <uint8_t>(v & 0xff), 0, 0)
    if v >= -0x80:
        return _put_head(b, 0xd0, <uint64_t>v, 1)
    if v >= -0x8000:
        return _put_head(b, 0xd1, <uint64_t>v, 2)
    if v >= -0x80000000:
        return _put_head(b, 0xd2, <uint64_t>v, 4)
    return _put_head(b, 0xd3, <uint64_t>v, 8)


cdef int _put_plain(_Buf* b, object value, int depth) except -1:
    """Writes `value`; notes its lists and dicts in b.seen (if kept)."""
    cdef type t = type(value)
    cdef Py_ssize_t n
    cdef const char* s
    cdef double d
    cdef uint64_t bits
    if depth > PLAIN_MAX_DEPTH:
        raise PlainValueError(f"nested deeper than {PLAIN_MAX_DEPTH} levels")
    if t is bytes:
        n = PyBytes_GET_SIZE(value)
        _put_length(b, n, 0, 0, 0xc4, 0xc5, 0xc6)
        return _put_raw(b, PyBytes_AS_STRING(value), n)
    if t is list:
        _note_container(b, value)
        _put_length(b, len(<list>value), 0x90, 16, 0, 0xdc, 0xdd)
        for item in <list>value:
            _put_plain(b, item, depth + 1)
        return 0
    if t is str:
        s = PyUnicode_AsUTF8AndSize(value, &n)     # UnicodeEncodeError: a lone surrogate
        _put_length(b, n, 0xa0, 32, 0xd9, 0xda, 0xdb)
        return _put_raw(b, s, n)
    if t is int:
        return _put_int(b, value)
    if value is None:
        return _put_head(b, 0xc0, 0, 0)
    if t is bool:
        return _put_head(b, 0xc3 if value else 0xc2, 0, 0)
    if t is float:
        d = value
        memcpy(&bits, &d, 8)
        return _put_head(b, 0xcb, bits, 8)
    if t is dict:
        _note_container(b, value)
        _put_length(b, len(<dict>value), 0x80, 16, 0, 0xde, 0xdf)
        for k, v in (<dict>value).items():
            _put_plain(b, k, depth + 1)
            _put_plain(b, v, depth + 1)
        return 0
    raise PlainValueError(f"a {t.__name__} is not a plain value: one handed over is made "
                          "of None, bool, int, float, str, bytes, list and dict only "
                          "(a tuple would arrive as a list, a subclass as its base)")


cdef inline int _note_container(_Buf* b, object container) except -1:
    cdef void** grown
    if not b.keep_seen:
        return 0
    if b.nseen == b.seen_cap:
        b.seen_cap = max(64, 2 * b.seen_cap)
        grown = <void**>PyMem_Realloc(b.seen, b.seen_cap * sizeof(void*))
        if grown is NULL:
            raise MemoryError()
        b.seen = grown
    b.seen[b.nseen] = <void*>container
    b.nseen += 1
    return 0


cdef int _by_address(const void* x, const void* y) noexcept nogil:
    cdef uintptr_t a = <uintptr_t>(<void**>x)[0]
    cdef uintptr_t c = <uintptr_t>(<void**>y)[0]
    return (a > c) - (a < c)


cdef int _check_unshared(_Buf* b) except -1:
    """PlainValueError if a container was noted twice (sorted, a pair of
    equal neighbours: cheaper than a set of ids per container)."""
    cdef Py_ssize_t i
    qsort(b.seen, b.nseen, sizeof(void*), _by_address)
    for i in range(1, b.nseen):
        if b.seen[i] == b.seen[i - 1]:
            raise PlainValueError(f"a {type(<object>b.seen[i]).__name__} appears twice in "
                                  "the value: each node would decode two, the leader holds "
                                  "one")
    return 0


cpdef bytes pack_plain(object value):
    """The msgpack encoding of `value`, identical to msgpack.packb(value,
    use_bin_type=True); PlainValueError if anything in it is not of an exact
    plain type or a list or dict appears twice in it (see above),
    OverflowError for an int past 64 bits."""
    cdef _Buf b
    _open(&b, 256, True)
    try:
        _put_plain(&b, value, 0)
        _check_unshared(&b)
        return PyBytes_FromStringAndSize(b.data, b.size)
    finally:
        _close(&b)


cpdef bytes pack_pairs(dict d, object pack):
    """The msgpack encoding of list(d.items()) (an array of [key, value]
    arrays), identical to what msgpack.packb makes of it: the plain keys and
    values written here, any other through `pack` (a msgpack Packer's pack,
    whose bytes go in as they are: msgpack values concatenate). For a
    snapshot of a large map taken on the event loop: no tuple per item, no
    list of them, a few times faster than msgpack's packer on plain data."""
    cdef _Buf b
    cdef Py_ssize_t pos = 0
    cdef PyObject* key
    cdef PyObject* value
    _open(&b, 4096, False)
    try:
        _put_length(&b, len(d), 0x90, 16, 0, 0xdc, 0xdd)
        while PyDict_Next(d, &pos, &key, &value):
            _put_head(&b, 0x92, 0, 0)
            _put_any(&b, <object>key, pack)
            _put_any(&b, <object>value, pack)
        return PyBytes_FromStringAndSize(b.data, b.size)
    finally:
        _close(&b)


cdef int _put_any(_Buf* b, object value, object pack) except -1:
    """`value` as _put_plain writes it or, if it is not plain, as `pack`
    encodes it (what _put_plain wrote of it before it found out is undone)."""
    cdef Py_ssize_t start = b.size
    cdef bytes packed
    try:
        return _put_plain(b, value, 0)
    except PlainValueError:
        b.size = start
    packed = pack(value)
    return _put_raw(b, PyBytes_AS_STRING(packed), PyBytes_GET_SIZE(packed))
