"""Declarations of engine_snapshots.pyx, called by the engine."""
from raftcore.engine cimport Engine
from raftcore.messages cimport InstallSnapshotRequest, InstallSnapshotResponse

cdef object handle_install_snapshot(Engine e, InstallSnapshotRequest req, double now)
cdef object handle_snapshot_response(Engine e, target, InstallSnapshotRequest req,
                                     InstallSnapshotResponse resp, double now)
cdef void purge_upto(Engine e, long long upto)
cdef void rebase_membership(Engine e, long long index, base)
