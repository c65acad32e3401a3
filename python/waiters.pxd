"""Declarations of the read and metric waiters (waiters.pyx), so the runtime
(core.pyx) checks them after each round with C calls. The docstrings live in
waiters.pyx."""
from raftcore.engine cimport Engine


cdef class ReadWaiters:
    cdef object core
    cdef Engine engine
    cdef list waiting                 # (seq, term, future)

    cdef void check(self)
    cdef void fail_all(self, err)


cdef class MetricWaiters:
    cdef list waiting                 # (predicate, future), checked after each round
    cdef list until_stopped           # futures only the node's stop settles

    cdef void check(self, metrics)
    cdef void fail_all(self, err)
