"""The WAL's recovery: reading the segments back on open.

Every segment is read and each group is replayed only once its marker has
been read. Zeros after the last marker of a segment are allocated space, not
yet written. Anything else that follows the last marker of the last segment
is classified:

- a torn tail (the batch was never completely written, so never reported
  flushed): the file ends inside it, or it reads as zeros from a sector
  boundary on (a write into allocated space reaches the disk in whole
  512-byte sectors). It is cut off (the file truncated) and a WARNING is
  logged.
- corruption: a damaged record in a group whose marker is present (a valid
  marker of this or a later group follows it, or the group's own marker sits
  at the end of the file with only its checksum or one field damaged). The
  store refuses to open: StorageError naming the file and offset.

Anything wrong in a segment that is not the last one is corruption. A flushed
entry is therefore never dropped silently: either it is recovered, or the store
refuses to open. The other way round, refusing is the safe side: a batch torn
by a disk that persisted its end (marker) but not its middle, or damage that
happens to contain an intact marker, is reported as corruption.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from raftcore.codec import decode_entries, decode_log_id
from raftcore.errors import StorageError
from raftcore.storage.wal.index import LogIndex, Segment
from raftcore.storage.wal.oslayer import FileOps
from raftcore.storage.wal.records import (HEAD, HEAD_SIZE, MARKER, MARKER_FRAME_SIZE, MARKER_LEN,
                                          MARKER_LEN_BYTES, R_COMMITTED, R_ENTRIES, R_HEADER,
                                          R_MARKER, R_PURGE, R_TRUNCATE, READABLE_VERSIONS,
                                          RECORD_NAMES, SECTOR, frame, read_frame, unpack,
                                          zeros_from)
from raftcore.types import LogId

# The store's messages keep the logger name users and tests filter on.
log = logging.getLogger("raftcore.storage.file")


class Recovery:
    """Reads the segments of the store in directory `path` back: run()
    leaves the log in `index`, the commit point in `committed` and the
    segments kept in `segments`. `dir_fd`: the open directory (fsynced after
    a segment is removed)."""

    def __init__(self, ops: FileOps, path: str, dir_fd: int) -> None:
        self._ops = ops
        self.path = path
        self._dir_fd = dir_fd
        self.segments: list[Segment] = []
        self.index = LogIndex(1, None)
        self.committed: Optional[LogId] = None

    def _p(self, name: str) -> str:
        return os.path.join(self.path, name)

    def run(self, segs: list) -> None:
        """Replays segments `segs` ((number, file name), oldest first) into
        index, committed and segments; cuts a torn tail, removes a newest
        segment whose first group was torn; StorageError on damage."""
        for k in range(1, len(segs)):
            if segs[k][0] != segs[k - 1][0] + 1:
                raise StorageError(
                    f"FileLogStore {self.path}: segment {segs[k - 1][0] + 1} is missing "
                    f"between {segs[k - 1][1]} and {segs[k][1]}; refusing to open a log "
                    "with a hole")
        ix: Optional[LogIndex] = None
        committed: Optional[LogId] = None
        for k, (seq, name) in enumerate(segs):
            path = self._p(name)
            last = k == len(segs) - 1
            data = memoryview(self._ops.read_file(path))
            groups, good_end, torn = self._parse_segment(path, data, last)
            allocated = len(data)
            if torn:
                # Cut (_parse_segment logged it), so that no part of it is
                # read after a later group's marker.
                self._ops.truncate(path, good_end)
                allocated = good_end
            if not groups:
                if not last:
                    raise StorageError(
                        f"{path} holds no complete batch, but newer segments follow it: it "
                        "was damaged; refusing to open a log with a hole")
                # The first group of the newest segment was torn: a roll that
                # never completed.
                self._ops.unlink(path)
                self._ops.fsync(self._dir_fd)
                continue
            seg = Segment(seq, path, good_end, allocated)
            seg.groups = len(groups)
            # Before the header's other checks: a lost end of the segment
            # before is the precise diagnosis.
            self._check_previous_end(path, seq, groups[0][0])
            for gi, group in enumerate(groups):
                for ri, (rtype, payload, off) in enumerate(group):
                    try:
                        if gi == 0 and ri == 0:
                            if rtype != R_HEADER:
                                raise StorageError("the first record of a segment must be "
                                                   f"its header, found {RECORD_NAMES.get(rtype)}")
                            ix, committed = self._replay_header(ix, committed, seq,
                                                                unpack(payload))
                            continue
                        if rtype == R_ENTRIES:
                            entries = decode_entries(unpack(payload))
                            if entries:
                                if entries[0].index != ix.next_index:
                                    raise StorageError(
                                        f"entries from index {entries[0].index} follow the "
                                        f"log ending at {ix.next_index - 1}")
                                ix.entries.extend(entries)
                                if entries[-1].index > seg.max_index:
                                    seg.max_index = entries[-1].index
                        elif rtype == R_TRUNCATE:
                            ix.truncate_after(unpack(payload))
                        elif rtype == R_PURGE:
                            ix.purge(decode_log_id(unpack(payload)))
                        elif rtype == R_COMMITTED:
                            committed = decode_log_id(unpack(payload))
                        else:
                            raise StorageError(f"unexpected record type {rtype}")
                    except Exception as exc:
                        raise StorageError(
                            f"{path}: bad {RECORD_NAMES.get(rtype, 'unknown')} record at "
                            f"offset {off} (its checksum is intact, so this log was written "
                            f"by something else or a bug): {exc}") from exc
            self.segments.append(seg)
        if ix is None:
            return
        if ix.first > ix.purged_index + 1:
            raise StorageError(
                f"FileLogStore {self.path}: entries {ix.purged_index + 1}..{ix.first - 1} are "
                f"missing (the oldest segment left, {self.segments[0].path}, starts after "
                "them and they were never purged); refusing to open a log with a hole")
        self.index = ix
        self.committed = committed

    def _replay_header(self, ix: Optional[LogIndex], committed: Optional[LogId], seq: int,
                       h: Any) -> tuple:
        version = h[0]
        if version not in READABLE_VERSIONS:
            raise StorageError(f"segment format version {version}, expected one of "
                               f"{READABLE_VERSIONS}")
        if version == 1:
            version, hseq, start, purged, hcommitted = h
        else:
            version, hseq, start, purged, hcommitted, prev_size = h
            if type(prev_size) is not int or prev_size < 0:
                raise StorageError(f"the header's previous segment size is {prev_size!r}")
        if hseq != seq:
            raise StorageError(f"the header says segment {hseq}, the file name says {seq}")
        purged = decode_log_id(purged)
        if ix is None:
            return LogIndex(start, purged), decode_log_id(hcommitted)
        if start != ix.next_index or purged != ix.purged:
            raise StorageError(
                f"the header says the segment starts at index {start} with purged {purged}; "
                f"the segments before end at {ix.next_index - 1} with purged {ix.purged}")
        return ix, committed

    def _check_previous_end(self, path: str, seq: int, first_record: tuple) -> None:
        """A segment's header records how many bytes of groups the segment
        before it held when it was closed: a cut at a group boundary of an
        older segment (which no checksum sees) is refused, not replayed as
        a log with a hole. (A header that cannot say is reported by the replay.)"""
        if not self.segments or self.segments[-1].seq != seq - 1:
            return      # the first segment, or the one before was purged
        rtype, payload, _off = first_record
        try:
            h = unpack(payload)
            prev_size = h[5] if rtype == R_HEADER and h[0] != 1 else None
        except Exception:
            return
        if type(prev_size) is not int:
            return
        prev = self.segments[-1]
        if prev.size != prev_size:
            raise StorageError(
                f"{prev.path} holds {prev.size} bytes of batches, but {path} records that it "
                f"held {prev_size} when it was closed: flushed data is lost; refusing to open a "
                "log with a hole (restore this node's directory or rebuild the node from its "
                "peers)")

    def _parse_segment(self, path: str, data: memoryview,
                       last: bool) -> tuple[list, int, bool]:
        """The complete groups of a segment, as lists of (type, payload,
        offset), the offset where they end, and whether a torn tail of the
        last segment follows them (reported here, to be cut); raises
        StorageError on corruption."""
        groups: list = []
        pending: list = []
        pos = group_start = 0
        gseq = 1
        end = len(data)
        while pos < end:
            rec = read_frame(data, pos)
            if rec is None:
                break
            rtype, payload, nxt = rec
            if rtype == R_MARKER:
                if len(payload) != MARKER.size:
                    raise StorageError(f"{path}: malformed commit marker at offset {pos}")
                seq, glen = MARKER.unpack(payload)
                if seq != gseq or glen != pos - group_start or not pending:
                    raise StorageError(
                        f"{path}: the commit marker at offset {pos} says group {seq} of "
                        f"{glen} bytes, but it ends group {gseq} of {pos - group_start} bytes "
                        f"starting at offset {group_start}: records are missing or misplaced")
                groups.append(pending)
                pending = []
                gseq += 1
                group_start = nxt
            else:
                pending.append((rtype, payload, pos))
            pos = nxt
        if not pending and zeros_from(data, pos):
            return groups, pos, False   # the rest is allocated space (or nothing)
        # Something follows the last complete group: torn tail or corruption.
        bad = pos if pos < end else group_start
        committed_at = self._find_marker(data, pos + 1, gseq) if pos < end else None
        if committed_at is None:
            committed_at = self._tail_marker(data, group_start, gseq)
        if committed_at is not None:
            what = "damaged record" if pos < end else "records without their commit marker"
            raise StorageError(
                f"{path}: {what} at offset {bad}, inside a batch whose commit marker is "
                f"present (at offset {committed_at}): flushed data is damaged; refusing to "
                "open a log with a hole (restore this node's directory or rebuild the node "
                "from its peers)")
        if not last:
            raise StorageError(
                f"{path}: damaged or incomplete batch at offset {bad}, but newer segments "
                "follow this one, so it had been written completely: flushed data is "
                "damaged; refusing to open")
        log.warning(
            "FileLogStore %s: cut a torn tail from %s: %d bytes from offset %d, a batch that "
            "was never completely written (no commit marker), so never reported flushed",
            self.path, path, end - group_start, group_start)
        return groups, group_start, True

    @staticmethod
    def _find_marker(data: memoryview, start: int, min_seq: int) -> Optional[int]:
        """Offset of an intact commit marker of group min_seq or later at or
        after `start`, or None."""
        raw = data.obj if isinstance(data.obj, bytes) else bytes(data)
        i = raw.find(MARKER_LEN_BYTES, start)
        while i != -1:
            rec = read_frame(data, i)
            if rec is not None and rec[0] == R_MARKER and len(rec[1]) == MARKER.size:
                if MARKER.unpack(rec[1])[0] >= min_seq:
                    return i
            i = raw.find(MARKER_LEN_BYTES, i + 1)
        return None

    @staticmethod
    def _tail_marker(data: memoryview, group_start: int, gseq: int) -> Optional[int]:
        """Offset of the group's own commit marker where the written data
        ends if it is there with at most one of its fields damaged (a torn
        write leaves the file short or zero-filled from a sector boundary,
        never a marker with the right group number and length); else None.

        The written data ends where the final run of zeros starts (the rest
        of the file is allocated space), or up to a marker's length later:
        an intact marker may end in zero bytes."""
        raw = bytes(data[group_start:])
        zeros = group_start + len(raw.rstrip(b"\0"))   # file offset where the zeros start
        first = max(group_start + 1, zeros - MARKER_FRAME_SIZE)
        last = min(zeros, len(data) - MARKER_FRAME_SIZE)
        for at in range(first, last + 1):
            if Recovery._damaged_marker_at(data, at, group_start, gseq, zeros):
                return at
        return None

    @staticmethod
    def _damaged_marker_at(data: memoryview, at: int, group_start: int, gseq: int,
                           zeros: int) -> bool:
        # A power cut during this group's write can leave its last sector
        # unwritten, reading as zeros from a sector boundary on. When that
        # boundary falls in the marker's last bytes (group length, high bytes
        # of the group number), three fields are intact, yet the batch was
        # never fsynced, never reported flushed: a torn write, not damage.
        # So a marker whose every byte that differs from the one this group
        # would end with lies in the final run of zeros, starting at a sector
        # boundary, is that torn write.
        tail = bytes(data[at:at + MARKER_FRAME_SIZE])
        expected = frame(R_MARKER, MARKER.pack(gseq, (at - group_start) & 0xFFFFFFFF))
        diff = next((i for i in range(MARKER_FRAME_SIZE) if tail[i] != expected[i]), None)
        if diff is not None and -(-zeros // SECTOR) * SECTOR <= at + diff:
            return False
        length, _crc = HEAD.unpack_from(data, at)
        rtype = data[at + HEAD_SIZE]
        seq, glen = MARKER.unpack_from(data, at + HEAD_SIZE + 1)
        score = (length == MARKER_LEN) + (rtype == R_MARKER) + (seq == gseq) + \
            (glen == at - group_start)
        return score >= 3
