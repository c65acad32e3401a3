"""The WAL's OS layer: every file system call FileLogStore makes (FileOps),
and the two durability idioms the rest of raftcore shares with it.

`replace_file(path, data)` replaces a file so that a crash leaves either the
old content or the new one, never a mix or nothing: write `path.tmp`, fsync
it, rename it over `path`, fsync the directory (the rename is only durable
once the directory is). `fsync_dir(path)` makes a directory's entries
(creations, renames, deletions) durable.
"""
from __future__ import annotations

import fcntl
import os
from typing import Optional

__all__ = ["FileOps", "replace_file", "fsync_dir"]


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
    """

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
        zeros, with its blocks allocated where the file system can."""
        os.posix_fallocate(fd, offset, length)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def sync_data(self, fd: int) -> None:
        """fdatasync: the data and what is needed to read it back (the size)."""
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
            os.fsync(fd)
        finally:
            os.close(fd)

    def truncate(self, path: str, size: int) -> None:
        """Cuts `path` to `size` bytes and fsyncs it."""
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
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
