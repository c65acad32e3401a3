"""The WAL's OS layer: every file system call FileLogStore makes (FileOps),
and the two durability idioms the rest of raftcore shares with it.

Calls that not every platform has, or needs (fdatasync, preallocation by
writing zeros or by posix_fallocate), go through the store's IOPath
(raftcore.storage.wal.iopath), which names the fallback used where they
are missing or RAFTCORE_PORTABLE_IO=1 forces it.

`replace_file(path, data)` replaces a file so that a crash leaves either the
old content or the new one, never a mix or nothing: write `path.tmp`, fsync
it, rename it over `path`, fsync the directory (the rename is only durable
once the directory is). `fsync_dir(path)` makes a directory's entries
(creations, renames, deletions) durable.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
from typing import Optional

from raftcore.storage.wal.iopath import DEFAULT, IOPath

__all__ = ["FileOps", "replace_file", "fsync_dir"]

log = logging.getLogger("raftcore.storage")

#: What posix_fallocate fails with on a file system that cannot reserve
#: blocks (musl's libc reports it instead of emulating, as glibc does).
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.ENOSYS})

#: Zero-filling writes this many bytes per call (one buffer, shared).
_ZEROS = bytes(1 << 20)


class FileOps:
    """The file system calls FileLogStore makes, in one place.

    A test can pass a subclass (FileLogStore(..., ops=...)) to inject failures
    (ENOSPC, EIO) or to model a power cut that keeps only fsynced bytes; a
    store given one makes every call through it (with plain FileOps, most
    groups are written and synced by compiled code instead: SyncWorker).
    Methods run on the event loop thread during open and close, and in
    between on the store's flush thread, one call at a time. With an
    executor given they run through it instead; a thread pool may then run
    a vote save beside a log write, so they must be thread-safe (plain os
    calls are).

    `io`: the calls made for the idioms some platforms lack (allocate,
    sync_data, fsync); DEFAULT unless given. allocate and sync_data pick
    their primitive (zero_fill, fallocate or extend; fdatasync or fsync) by
    it, so a test's subclass overriding the primitives sees which path is
    taken.
    """

    #: A class default, so that subclasses need not call __init__.
    io: IOPath = DEFAULT

    def __init__(self, io: Optional[IOPath] = None) -> None:
        if io is not None:
            self.io = io

    def makedirs(self, path: str) -> None:
        """Creates `path` and missing parents, each made durable in its parent."""
        missing = []
        p = os.path.abspath(path)
        while not os.path.isdir(p):
            missing.append(p)
            p = os.path.dirname(p)
        os.makedirs(path, exist_ok=True)
        for d in reversed(missing):
            fsync_dir(os.path.dirname(d))

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def open_dir(self, path: str) -> int:
        return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    def open_lock(self, path: str) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_segment(self, path: str, create: bool) -> int:
        """Opens a segment for positioned writes (pwrite); `create`: a new
        file, which must not exist."""
        flags = os.O_WRONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return os.open(path, flags, 0o644)

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """Makes the file at least offset + length bytes long, the new part
        zeros, with its blocks allocated where the platform can (io.allocate)."""
        if self.io.allocate == "zero-fill":
            self.zero_fill(fd, offset, length)
            return
        if self.io.allocate == "posix_fallocate":
            try:
                self.fallocate(fd, offset, length)
                return
            except OSError as exc:
                if exc.errno not in _NO_FALLOCATE:
                    raise
                self._take_ftruncate(exc)
        self.extend(fd, offset + length)

    def _take_ftruncate(self, exc: OSError) -> None:
        """The file system refused posix_fallocate as unsupported: from now
        on this store grows its files with ftruncate (io_path says so), and
        a full disk shows on a write instead of on the allocation."""
        log.warning("posix_fallocate is not supported here (%s); growing segment files "
                    "with ftruncate instead (their blocks are no longer reserved ahead)", exc)
        self.io = dataclasses.replace(self.io, allocate="ftruncate")

    def zero_fill(self, fd: int, offset: int, length: int) -> None:
        """Writes `length` zeros at `offset`: the blocks are allocated and
        written (ENOSPC shows here), so a later write over them changes no
        file system metadata and fdatasync has only the data to flush. Over
        posix_fallocate's blocks (unwritten extents on ext4 and XFS) each
        fdatasync also records that they now hold data: measured on an ext4
        VM disk, 8 KB write + fdatasync took 180 us there against 130 us
        over written zeros, and one more wait for the disk.

        The store calls it at the file's end only. It takes all the space
        or none of it, as posix_fallocate does: if a write fails (a full
        disk, a quota), the file is cut back to `offset` before the error is
        raised, so no partial run of zeros holds the disk's last free
        blocks. (The store asks for more than a group needs only while
        free_space says there is room: see GroupCommit._allocate.)"""
        end = offset + length
        pos = offset
        try:
            while pos < end:
                n = min(len(_ZEROS), end - pos)
                self.pwrite(fd, memoryview(_ZEROS)[:n], pos)
                pos += n
        except OSError:
            try:
                self.shrink(fd, offset)
            except OSError:
                log.warning("cutting a segment back after a failed zero-fill failed too; "
                            "its zeros stay allocated", exc_info=True)
            raise

    def shrink(self, fd: int, size: int) -> None:
        """Cuts the file back to `size` bytes, not synced: what it gives
        back held nothing."""
        os.ftruncate(fd, size)

    def free_space(self, fd: int) -> int:
        """Bytes an unprivileged writer may still take on fd's file system
        (a hint: it decides how much is allocated ahead, never whether a
        write is tried)."""
        st = os.fstatvfs(fd)
        return st.f_bavail * st.f_frsize

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        """posix_fallocate: the blocks are reserved (ENOSPC shows here)."""
        os.posix_fallocate(fd, offset, length)

    def extend(self, fd: int, size: int) -> None:
        """Grows the file to `size` bytes with ftruncate (never shrinks it);
        the new part reads as zeros and takes blocks when written."""
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        """Makes the file's data and metadata durable (see full_sync)."""
        full_sync(fd, self.io)

    def sync_data(self, fd: int) -> None:
        """Makes the data durable and readable back (its size too): fdatasync
        where io.sync_data says so, else a full fsync."""
        if self.io.sync_data == "fdatasync":
            self.fdatasync(fd)
        else:
            self.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write_file(self, path: str, data: bytes) -> None:
        """Creates or replaces `path` with `data` and fsyncs it (not its directory)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.write(fd, data)
            full_sync(fd, self.io)
        finally:
            os.close(fd)

    def truncate(self, path: str, size: int) -> None:
        """Cuts `path` to `size` bytes and fsyncs it."""
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            full_sync(fd, self.io)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def remove_quietly(self, path: str) -> None:
        """Unlinks `path` if it can; for clean-ups on an error path, where
        the error being reported matters more than this one."""
        try:
            self.unlink(path)
        except OSError:
            pass

    def replace_file(self, path: str, data: bytes, dir_fd: int) -> None:
        """Replaces `path` with `data` atomically and durably (see the module
        docstring); `dir_fd` is the open directory holding `path`. If the
        write or the rename fails, the temporary file is removed (giving its
        space back) and `path` is unchanged."""
        tmp = path + ".tmp"
        try:
            self.write_file(tmp, data)
            self.rename(tmp, path)
        except OSError:
            self.remove_quietly(tmp)
            raise
        self.fsync(dir_fd)


def full_sync(fd: int, io: IOPath) -> None:
    """Makes fd's data and metadata durable: fsync, or on macOS F_FULLFSYNC
    (its fsync leaves them in the drive's cache)."""
    if io.sync == "F_FULLFSYNC":
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        os.fsync(fd)


_PLAIN = FileOps()


def fsync_dir(path: str, ops: Optional[FileOps] = None) -> None:
    """Makes the entries of directory `path` durable (fsync on the directory)."""
    ops = ops or _PLAIN
    fd = ops.open_dir(path)
    try:
        ops.fsync(fd)
    finally:
        ops.close(fd)


def replace_file(path: str, data: bytes, ops: Optional[FileOps] = None) -> None:
    """Replaces file `path` with `data` atomically and durably: on return the
    new content survives a crash, and a crash before leaves the old one.
    Raises OSError (the old content stays, the temporary `path.tmp` is
    removed)."""
    ops = ops or _PLAIN
    fd = ops.open_dir(os.path.dirname(os.path.abspath(path)))
    try:
        ops.replace_file(path, data, fd)
    finally:
        ops.close(fd)
