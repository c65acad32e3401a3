"""Per-follower replication progress with an in-flight window.

Invariants kept here: matched < next_index; matched never decreases;
in PROBE at most one request is out (probe_sent); in REPLICATE at most
inflight_cap requests are out and their last indexes are increasing.
"""
from libc.stdlib cimport malloc, free


cdef class Progress:
    """What the leader knows of one follower's log."""

    def __cinit__(self, long long node_id, long long next_index, int inflight_cap):
        if inflight_cap < 1:
            raise ValueError("inflight_cap must be at least 1")
        self.node_id = node_id
        self.matched = 0
        self.next_index = next_index
        self.state = PROBE
        self.probe_sent = False
        self.inflight_cap = inflight_cap
        self.inflight = <long long*>malloc(inflight_cap * sizeof(long long))
        if not self.inflight:
            raise MemoryError()
        self.inflight_count = 0
        self.inflight_start = 0

    def __dealloc__(self):
        free(self.inflight)

    cdef bint window_full(self):
        if self.state == SNAPSHOT:
            return True
        if self.state == PROBE:
            return self.probe_sent
        return self.inflight_count >= self.inflight_cap

    cdef void sent(self, long long last_index):
        """Records a request carrying entries up to last_index."""
        if self.state == PROBE:
            self.probe_sent = True
            return
        self.inflight[(self.inflight_start + self.inflight_count) % self.inflight_cap] = last_index
        self.inflight_count += 1
        self.next_index = last_index + 1

    cdef void snapshot_started(self, long long last_index):
        """A snapshot up to last_index is on its way: send nothing else until
        it is answered (snapshot_done() or failed())."""
        self.state = SNAPSHOT
        self.probe_sent = False
        self.inflight_count = 0
        self.inflight_start = 0
        self.next_index = last_index + 1

    cdef void snapshot_done(self):
        """The follower installed (or already had) the snapshot: find the
        matching point again, from the answer that reports it (acked)."""
        self.state = PROBE
        self.probe_sent = False

    cdef void free_upto(self, long long index):
        while self.inflight_count and self.inflight[self.inflight_start] <= index:
            self.inflight_start = (self.inflight_start + 1) % self.inflight_cap
            self.inflight_count -= 1

    cdef bint acked(self, long long matched):
        """A request succeeded with the follower matching up to `matched`.
        Returns True if matched advanced."""
        cdef bint advanced = matched > self.matched
        if advanced:
            self.matched = matched
        if self.state == SNAPSHOT:
            # Only the snapshot's own outcome (snapshot_done, failed) ends
            # this state: one stream at a time to a follower.
            return advanced
        if self.state == PROBE:
            # The matching point is known: stream from right after it. (An
            # answer to a heartbeat proves a match only up to `matched`; what
            # the follower holds beyond it is unknown, so resend from there.)
            self.state = REPLICATE
            self.probe_sent = False
            self.inflight_count = 0
            self.inflight_start = 0
            self.next_index = self.matched + 1
        else:
            self.free_upto(matched)
            if self.next_index <= self.matched:
                self.next_index = self.matched + 1
        return advanced

    cdef void rejected(self, long long hint):
        """The follower's log does not match before `hint`: probe from there."""
        self.state = PROBE
        self.probe_sent = False
        self.inflight_count = 0
        self.inflight_start = 0
        if hint <= self.matched:
            hint = self.matched + 1
        self.next_index = hint

    cdef void failed(self):
        """A request was lost: resend from the matching point, one at a time,
        from the next heartbeat on (probe_sent holds the probe back until
        then, so a peer that is down is not retried in a tight loop)."""
        self.state = PROBE
        self.probe_sent = True
        self.inflight_count = 0
        self.inflight_start = 0
        self.next_index = self.matched + 1

    def __repr__(self):
        st = ("probe", "replicate", "snapshot")[self.state]
        return (f"Progress(node={self.node_id}, matched={self.matched}, next={self.next_index}, "
                f"{st}, inflight={self.inflight_count})")
