"""The WAL's in-memory view: every entry since the last purge (LogIndex),
and the segment files that hold them (Segment).

Reads are served from LogIndex alone; the segments are only written (and
read back once, by recovery on open).
"""
from __future__ import annotations

from typing import Optional

from raftcore.types import LogId


class LogIndex:
    """Entries since the last purge: entries[i] has index first + i.

    In a live store first == purged index + 1. While replaying, first can be
    higher: the entries between were in segments already deleted, and a
    later purge record must cover them (checked at the end of recovery).
    """

    __slots__ = ("first", "entries", "purged")

    def __init__(self, first: int, purged: Optional[LogId]) -> None:
        self.first = first
        self.entries: list = []
        self.purged = purged

    @property
    def purged_index(self) -> int:
        return self.purged.index if self.purged is not None else 0

    @property
    def next_index(self) -> int:
        return self.first + len(self.entries)

    @property
    def last_log_id(self) -> Optional[LogId]:
        if self.entries:
            return self.entries[-1].log_id
        if self.first == self.purged_index + 1:
            return self.purged
        return None     # only mid-replay

    def truncate_after(self, index: int) -> None:
        if index < self.first - 1:
            self.entries = []
            self.first = max(index, self.purged_index) + 1
        else:
            del self.entries[index - self.first + 1:]

    def purge(self, upto: LogId) -> None:
        if upto.index <= self.purged_index:
            return
        self.purged = upto
        if upto.index >= self.first:
            del self.entries[:upto.index - self.first + 1]
            self.first = upto.index + 1


class Segment:
    """One segment file: its number, path, and how much of it is used."""

    __slots__ = ("seq", "path", "size", "allocated", "max_index", "groups")

    def __init__(self, seq: int, path: str, size: int = 0, allocated: int = 0) -> None:
        self.seq = seq
        self.path = path
        self.size = size        # bytes of groups taken (event loop thread)
        self.allocated = allocated  # file length (flush thread, once open)
        self.max_index = 0      # highest entry index ever written in it
        self.groups = 0         # groups (commit markers) in it

    def __repr__(self) -> str:
        return f"Segment({self.seq}, size={self.size}, max_index={self.max_index})"


def deletable(segments: list, purged_index: int) -> list:
    """The oldest segments (never the last one) holding only purged entries."""
    out = []
    for seg in segments[:-1]:
        if seg.max_index > purged_index:
            break
        out.append(seg)
    return out
