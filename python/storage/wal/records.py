"""The WAL's on-disk format: file names, record framing, format version.

Directory layout::

    FORMAT                  "raftcore-filelog" and the format version
    LOCK                    flock()ed while a store has the directory open
    vote                    the vote, replaced atomically (vote.tmp, fsync, rename, fsync dir)
    identity                the cluster id and the store's incarnation (made with the
                            directory; a new directory is a new incarnation), replaced
                            atomically like the vote
    seg-000000000001.log    log segments, numbered consecutively; the last one is written

Records. Every record is framed as::

    u32 length   (of type + payload), little endian
    u32 crc32    (zlib.crc32 over length, type and payload)
    u8  type
    payload

with a msgpack payload (codec.encode_* layouts) except for the commit marker.
Record types: HEADER (first record of every segment: format version, segment
number, index of its first entry, purged log id, committed log id, and from
version 2 the byte length of the previous segment's groups), ENTRIES
(one appended batch), TRUNCATE (index), PURGE (log id), COMMITTED (log id),
MARKER (group number within the segment, byte length of the group), VOTE
and IDENTITY (the only record of their files).
"""
from __future__ import annotations

import re
import struct
import zlib
from typing import Any, Optional

import msgpack

from raftcore.errors import StorageError

#: On-disk format version, in FORMAT, in every segment header and in the vote file.
#: Version 2 segments may end in allocated zeros, which version 1 readers take
#: for damage. Version 3 entry records may hold entries of kind
#: codec.ENCODED_NORMAL (a command as the leader encoded it), which version 2
#: readers do not know. Older directories are read, and upgraded on open.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
FORMAT_NAME = "raftcore-filelog"

R_HEADER = 1
R_ENTRIES = 2
R_TRUNCATE = 3
R_PURGE = 4
R_COMMITTED = 5
R_MARKER = 6
R_VOTE = 7
R_IDENTITY = 8
RECORD_NAMES = {R_HEADER: "header", R_ENTRIES: "entries", R_TRUNCATE: "truncate",
                R_PURGE: "purge", R_COMMITTED: "committed", R_MARKER: "commit marker",
                R_VOTE: "vote", R_IDENTITY: "identity"}

HEAD = struct.Struct("<II")             # length of (type + payload), crc32
LEN_TYPE = struct.Struct("<IB")         # what the crc covers before the payload
HEAD_TYPE = struct.Struct("<IIB")       # length, crc32, type
MARKER = struct.Struct("<QI")           # group number in the segment, group byte length
HEAD_SIZE = HEAD.size                   # 8
MARKER_LEN = 1 + MARKER.size            # 13: type + marker payload
MARKER_FRAME_SIZE = HEAD_SIZE + MARKER_LEN   # 21
MARKER_LEN_BYTES = struct.pack("<I", MARKER_LEN)
MAX_RECORD = (1 << 32) - 1
# The smallest unit a disk writes: a torn write zero-fills from a multiple of it.
SECTOR = 512

FORMAT_FILE = "FORMAT"
LOCK_FILE = "LOCK"
VOTE_FILE = "vote"
VOTE_TMP = "vote.tmp"
IDENTITY_FILE = "identity"
IDENTITY_TMP = "identity.tmp"
SEG_RE = re.compile(r"^seg-(\d{12})\.log$")


def seg_name(seq: int) -> str:
    """The file name of segment number `seq`."""
    return f"seg-{seq:012d}.log"


def frame_head(rtype: int, payload: bytes) -> bytes:
    """The 9 bytes (length, crc32, type) that go before `payload`."""
    length = len(payload) + 1
    if length > MAX_RECORD:
        raise StorageError(f"a log record of {length} bytes is over the limit of "
                           f"{MAX_RECORD} bytes; append smaller batches")
    return HEAD_TYPE.pack(length, zlib.crc32(payload, zlib.crc32(LEN_TYPE.pack(length, rtype))),
                          rtype)


def frame(rtype: int, payload: bytes) -> bytes:
    """One framed record."""
    return frame_head(rtype, payload) + payload


def read_frame(data: Any, pos: int) -> Optional[tuple[int, memoryview, int]]:
    """(type, payload, next position) of the record at pos in the memoryview
    `data`, or None if no intact record starts there."""
    end = len(data)
    if pos + HEAD_SIZE + 1 > end:
        return None
    length, crc = HEAD.unpack_from(data, pos)
    nxt = pos + HEAD_SIZE + length
    if length < 1 or nxt > end:
        return None
    rtype = data[pos + HEAD_SIZE]
    payload = data[pos + HEAD_SIZE + 1:nxt]
    if zlib.crc32(payload, zlib.crc32(LEN_TYPE.pack(length, rtype))) != crc:
        return None
    return rtype, payload, nxt


def zeros_from(data: memoryview, pos: int) -> bool:
    """Whether data holds only zero bytes from pos on (True at the end)."""
    n = len(data) - pos
    return n <= 0 or data[pos:].tobytes() == bytes(n)


def unpack(payload: Any) -> Any:
    """A record's msgpack payload as Python values."""
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)

