"""Stub for the compiled raftcore.storage.sync_worker (see sync_worker.pyx)."""
from typing import Optional

#: The sync calls this build can make, the preferred one first
#: (("fdatasync", "fsync") on Linux, ("F_FULLFSYNC",) on macOS).
SYNC_CALLS: tuple[str, ...]


class SyncWorker:
    """Runs pwrite + sync jobs (fdatasync or a full sync) on a thread of its own,
    GIL-free."""

    sync_call: str

    def __init__(self, notify_fd: int, sync: Optional[str] = None) -> None: ...
    def submit(self, fd: int, data: bytes, offset: int) -> None: ...
    def result(self) -> Optional[OSError]: ...
    def stop(self) -> None: ...
    def run(self) -> None: ...
