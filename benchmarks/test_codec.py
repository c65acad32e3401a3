"""AppendEntries on the wire: raftcore.codec (compiled) beside a plain-Python
codec of the same layout, each with the msgpack framing the TCP transport
does around it (`Packer.pack([request_id, message])` out,
`unpackb(body)[1]` in).

Run: pytest benchmarks/
"""
import msgpack
import pytest

from raftcore.codec import (MAX_IDENTITY_LENGTH, MAX_TERM, MSG_APPEND_ENTRIES, decode_message,
                            encode_message)
from raftcore.errors import CodecError
from raftcore.messages import AppendEntriesRequest
from raftcore.types import ENTRY_BLANK, ENTRY_NORMAL, Entry

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


# ---------------------------------------------------------------- reference
# The compiled codec's AppendEntries layout and checks in plain Python, for
# normal and blank entries (membership entries are not part of the benchmark).

def py_encode_append_entries(req):
    flat = []
    for e in req.entries:
        flat += (e.term, e.index, e.kind, e.payload)
    return [MSG_APPEND_ENTRIES, req.term, req.leader_id, req.prev_log_term,
            req.prev_log_index, req.leader_commit, flat, req.cluster_id]


def _int(v, what):
    if type(v) is not int:
        raise CodecError(f"{what} must be an integer, got {type(v).__name__}")
    if not _I64_MIN <= v <= _I64_MAX:
        raise CodecError(f"{what} is out of range: {v}")
    return v


def _term(v, what):
    t = _int(v, what)
    if t < 0 or t >= MAX_TERM:
        raise CodecError(f"{what} {t} is out of range [0, 2**62)")
    return t


def _list(v, what, n=-1):
    if type(v) is not list:
        raise CodecError(f"{what} must be a list, got {type(v).__name__}")
    if n >= 0 and len(v) != n:
        raise CodecError(f"{what} must have {n} items, got {len(v)}")
    return v


def _identity(v, what):
    if v is None:
        return None
    if type(v) is not str:
        raise CodecError(f"{what} must be a string or None, got {type(v).__name__}")
    if not 0 < len(v) <= MAX_IDENTITY_LENGTH:
        raise CodecError(f"{what} must have 1 to {MAX_IDENTITY_LENGTH} characters, "
                         f"got {len(v)}")
    return v


def py_decode_entries(flat):
    f = _list(flat, "entries")
    if len(f) % 4:
        raise CodecError(f"an entry batch has 4 fields per entry; got {len(f)} fields")
    out = []
    prev = -1
    for i in range(0, len(f), 4):
        term = _term(f[i], "entry term")
        index = _int(f[i + 1], "entry index")
        kind = _int(f[i + 2], "entry kind")
        if index < 1:
            raise CodecError(f"entry ({term}, {index}) has a negative term or an index below 1")
        if prev >= 0 and index != prev + 1:
            raise CodecError(f"entry indexes must be consecutive: {index} follows {prev}")
        prev = index
        if kind != ENTRY_NORMAL and kind != ENTRY_BLANK:
            raise CodecError(f"unsupported entry kind {kind}")
        out.append(Entry(term, index, kind, f[i + 3]))
    return out


def py_decode_append_entries(obj):
    m = _list(obj, "AppendEntries", 8)
    if m[0] != MSG_APPEND_ENTRIES:
        raise CodecError(f"not an AppendEntries message: type {m[0]!r}")
    leader_id = m[2]
    if leader_id is not None and type(leader_id) is not int:
        raise CodecError("leader_id must be an integer node id or None")
    req = AppendEntriesRequest(_term(m[1], "term"), leader_id, _term(m[3], "prev_log_term"),
                               _int(m[4], "prev_log_index"), py_decode_entries(m[6]),
                               _int(m[5], "leader_commit"), 0, _identity(m[7], "cluster id"))
    if req.entries and req.entries[0].index != req.prev_log_index + 1:
        raise CodecError("AppendEntries entries must start right after prev_log_index")
    return req


# ---------------------------------------------------------------- benchmarks

def _request(n):
    prev = 1000
    entries = [Entry(5, prev + 1 + i, ENTRY_NORMAL, b"x" * 16) for i in range(n)]
    return AppendEntriesRequest(5, 1, 5, prev, entries, prev - 3, cluster_id="cluster-1")


IMPLS = {
    "cython": (encode_message, decode_message),
    "python": (py_encode_append_entries, py_decode_append_entries),
}
SIZES = [1, 64]


def _unpack(body):
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("entries", SIZES)
def test_append_entries_encode(benchmark, impl, entries):
    req = _request(entries)
    encode = IMPLS[impl][0]
    pack = msgpack.Packer(use_bin_type=True).pack
    # Same bytes on the wire from both implementations.
    assert pack([7, py_encode_append_entries(req)]) == pack([7, encode_message(req)])

    benchmark.group = f"AppendEntries encode + msgpack, {entries} entries"
    body = benchmark(lambda: pack([7, encode(req)]))
    assert decode_message(_unpack(body)[1]) == req


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("entries", SIZES)
def test_append_entries_decode(benchmark, impl, entries):
    req = _request(entries)
    body = msgpack.Packer(use_bin_type=True).pack([7, encode_message(req)])
    decode = IMPLS[impl][1]
    # Both decode the frame into the request that was sent.
    assert py_decode_append_entries(_unpack(body)[1]) == decode_message(_unpack(body)[1]) == req

    benchmark.group = f"AppendEntries msgpack + decode, {entries} entries"
    got = benchmark(lambda: decode(_unpack(body)[1]))
    assert got == req
