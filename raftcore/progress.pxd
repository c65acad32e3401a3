cdef enum ProgressState:
    PROBE = 0        # finding where the follower's log matches: one request at a time
    REPLICATE = 1    # matching point known: stream entries, up to the in-flight window
    SNAPSHOT = 2     # the next entry is purged: a snapshot is being sent


cdef class Progress:
    cdef readonly long long node_id
    cdef readonly long long matched     # highest index known to be flushed on the follower
    cdef readonly long long next_index  # next index to send
    cdef readonly int state
    cdef readonly bint probe_sent       # PROBE: a request is out, wait for its answer
    cdef long long* inflight            # ring of last indexes of in-flight requests
    cdef readonly int inflight_count
    cdef int inflight_start
    cdef int inflight_cap

    cdef bint window_full(self)
    cdef void sent(self, long long last_index)
    cdef bint acked(self, long long matched)
    cdef void rejected(self, long long hint)
    cdef void failed(self)
    cdef void free_upto(self, long long index)
    cdef void snapshot_started(self, long long last_index)
    cdef void snapshot_done(self)
