"""Declarations of the pending client writes (pending_writes.pyx), so the
runtime (core.pyx) moves them into the engine and answers them with C calls.
The docstrings live in pending_writes.pyx."""
from raftcore.engine cimport Engine


cdef class PendingWrites:
    cdef Engine engine
    cdef object loop, node_id
    cdef object _check_running        # the node's check_running: raises why it stopped
    cdef object _flush                # the node's callback that takes queued writes
    # Refused from now on: the node stopped (shut down, or failed).
    cdef bint closed
    # The node's NoSpace while its disk is full, else None (set by the node
    # with its own no_space: the door check reads it here, with no Python call).
    cdef public object no_space
    # Writes not yet in the log: payloads, their encodings (bytes, or None
    # for a payload carried as it is) and their futures, side by side (no
    # per-write tuple).
    cdef list payloads, encoded, futs
    cdef public bint flush_scheduled
    cdef Py_ssize_t open_writes              # writes queued or in the log, unanswered
    cdef Py_ssize_t _max_pending, _max_write_batch
    cdef Py_ssize_t _max_command              # Config.max_command_bytes
    cdef object _command_packer
    cdef object _packed                       # the encoding _admit made last (or None)
    cdef object _write_room
    cdef object _waiters                      # deque: [first index, term, futures]

    cdef object _admit(self, payload, bint owned)
    cdef object _admit_owned(self, payload)
    cdef int _check_size(self, bytes packed) except -1
    cdef list _admit_all(self, list payloads, list encodings, bint owned)
    cdef _check_writable(self)
    cdef void _schedule_flush(self)
    cdef void _writes_answered(self, Py_ssize_t n)
    cdef void take_pending(self)
    cdef void _take_write_batch(self)
    cdef void reject_pending(self)
    cdef object wait_for_entry(self, long long index, long long term)
    cdef void answer_applied(self, list entries, responses)
    cdef void fail_upto(self, long long index, err)
    cdef void fail_truncated(self, long long since)
    cdef void fail_all(self, err)
