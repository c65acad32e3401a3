"""The shared durability helpers of raftcore.storage.wal.oslayer: replacing a
file atomically (replace_file, FileOps.replace_file) and fsyncing a
directory (fsync_dir), and FileLogStore's use of them for its small files."""
from __future__ import annotations

import errno
import os

import pytest

from raftcore.errors import StorageError
from raftcore.storage import FileLogStore
from raftcore.storage.wal.oslayer import FileOps, fsync_dir, replace_file


class CallLog(FileOps):
    """Records the calls the helpers make, by file name."""

    def __init__(self):
        self.calls = []
        self.dir_fds = set()

    def open_dir(self, path):
        fd = super().open_dir(path)
        self.dir_fds.add(fd)
        self.calls.append(("open_dir", os.path.basename(path)))
        return fd

    def write_file(self, path, data):
        self.calls.append(("write_file", os.path.basename(path)))
        super().write_file(path, data)

    def rename(self, src, dst):
        self.calls.append(("rename", os.path.basename(src), os.path.basename(dst)))
        super().rename(src, dst)

    def fsync(self, fd):
        self.calls.append(("fsync", "dir" if fd in self.dir_fds else "file"))
        super().fsync(fd)

    def close(self, fd):
        self.calls.append(("close", "dir" if fd in self.dir_fds else "file"))
        super().close(fd)


class FailingRename(FileOps):
    def rename(self, src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src)


class FullDisk(FileOps):
    """write_file of a file named `victim` writes half its data, then fails
    with ENOSPC (as a write on a full disk does)."""

    def __init__(self, victim):
        self.victim = victim

    def write_file(self, path, data):
        if os.path.basename(path) != self.victim:
            return super().write_file(path, data)
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def test_replace_file_replaces_the_content_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "state"
    path.write_bytes(b"old content")
    replace_file(str(path), b"new")
    assert path.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["state"]


def test_replace_file_creates_a_missing_file(tmp_path):
    replace_file(str(tmp_path / "state"), b"first")
    assert (tmp_path / "state").read_bytes() == b"first"


def test_replace_file_renames_a_synced_copy_then_syncs_the_directory(tmp_path):
    ops = CallLog()
    replace_file(str(tmp_path / "state"), b"data", ops)
    assert ops.calls == [
        ("open_dir", tmp_path.name),
        ("write_file", "state.tmp"),            # FileOps.write_file fsyncs the file
        ("rename", "state.tmp", "state"),
        ("fsync", "dir"),                       # the rename is durable only now
        ("close", "dir"),
    ]


def test_replace_file_that_fails_keeps_the_old_content_and_removes_the_copy(tmp_path):
    path = tmp_path / "state"
    path.write_bytes(b"old content")
    with pytest.raises(OSError) as info:
        replace_file(str(path), b"new content", FullDisk("state.tmp"))
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["state"]


def test_replace_file_whose_rename_fails_keeps_the_old_content_and_removes_the_copy(
        tmp_path):
    path = tmp_path / "state"
    path.write_bytes(b"old content")
    with pytest.raises(OSError):
        replace_file(str(path), b"new content", FailingRename())
    assert path.read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["state"]


def test_fsync_dir_syncs_and_closes_the_directory(tmp_path):
    ops = CallLog()
    fsync_dir(str(tmp_path), ops)
    assert ops.calls == [("open_dir", tmp_path.name), ("fsync", "dir"), ("close", "dir")]


@pytest.mark.parametrize("victim", ["FORMAT.tmp", "identity.tmp"])
def test_a_store_whose_small_file_cannot_be_written_leaves_no_copy(tmp_path, victim):
    with pytest.raises(StorageError, match="cannot open"):
        FileLogStore(tmp_path / "store", ops=FullDisk(victim))
    assert victim not in os.listdir(tmp_path / "store")
