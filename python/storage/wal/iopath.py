"""Which OS calls the WAL makes for the idioms that are not on every platform.

FileLogStore is fastest with three Linux idioms, and each has a fallback for
platforms without it (macOS lacks all three):

- syncing a group's data: fdatasync (no metadata update when the file size
  is unchanged and the blocks are written already), else a full sync;
- a full sync: fsync; on macOS fcntl(F_FULLFSYNC), since macOS's fsync
  leaves the data in the drive's cache;
- preallocating segment space: on Linux, writing zeros ("zero-fill"; the
  blocks are allocated and written, so a full disk shows at allocation,
  and a group written over them leaves fdatasync no metadata to record);
  "posix_fallocate" reserves the blocks without writing them (a store can
  ask for it, on a copy-on-write file system say, where writing zeros
  ahead gains nothing); else growing the file with ftruncate (the new
  part reads as zeros; blocks are taken when the data is written, so a
  full disk shows at that write, which the writer handles the same way);
- waking the event loop from the compiled sync thread: an eventfd, else a
  pipe.

The choice is made once, at import: NATIVE is the best this platform has,
PORTABLE the fallbacks. Setting RAFTCORE_PORTABLE_IO=1 in the environment
makes the fallbacks the default (DEFAULT) even where the Linux calls exist,
so that CI runs the path macOS takes; a store can also be given one with
FileOps(io=PORTABLE). FileLogStore.io_path says which one a store uses.
"""
from __future__ import annotations

import fcntl
import os
import sys
from dataclasses import dataclass

__all__ = ["IOPath", "NATIVE", "PORTABLE", "DEFAULT", "PORTABLE_ENV", "portable_requested"]

#: The environment variable that forces the fallbacks ("1"; "0" or unset: not).
PORTABLE_ENV = "RAFTCORE_PORTABLE_IO"


@dataclass(frozen=True)
class IOPath:
    """The calls a store makes for each platform-dependent idiom (see the
    module docstring); each field names the call."""

    sync_data: str      # "fdatasync", or the full sync's name
    sync: str           # "fsync" or "F_FULLFSYNC"
    allocate: str       # "zero-fill", "posix_fallocate" or "ftruncate"
    wakeup: str         # "eventfd" or "pipe"

    @property
    def portable(self) -> bool:
        """No Linux-only call is used."""
        return (self.sync_data, self.allocate, self.wakeup) == \
            (self.sync, "ftruncate", "pipe")


def _full_sync_name() -> str:
    return "F_FULLFSYNC" if hasattr(fcntl, "F_FULLFSYNC") else "fsync"


def _native() -> IOPath:
    sync = _full_sync_name()
    return IOPath(
        sync_data="fdatasync" if hasattr(os, "fdatasync") and sync == "fsync" else sync,
        sync=sync,
        allocate=("zero-fill" if sys.platform.startswith("linux") else
                  "posix_fallocate" if hasattr(os, "posix_fallocate") else "ftruncate"),
        wakeup="eventfd" if hasattr(os, "eventfd") else "pipe")


def portable_requested(value: str | None) -> bool:
    """Reads RAFTCORE_PORTABLE_IO's value; raises ValueError naming the
    variable for anything but unset, "", "0" or "1"."""
    if value is None or value.strip() in ("", "0"):
        return False
    if value.strip() == "1":
        return True
    raise ValueError(f"{PORTABLE_ENV} must be 1 (use the portable I/O fallbacks) or 0, "
                     f"not {value!r}")


NATIVE = _native()
PORTABLE = IOPath(sync_data=NATIVE.sync, sync=NATIVE.sync, allocate="ftruncate", wakeup="pipe")
DEFAULT = PORTABLE if portable_requested(os.environ.get(PORTABLE_ENV)) else NATIVE
