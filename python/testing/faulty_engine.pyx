"""An engine with known-bad behaviours switched on, for the tests that prove
the simulator's checks catch them (`raftcore sim --bug NAME`).

The production engine (raftcore.engine.Engine) has no switch for them: this
subclass overrides the few rules involved. Bugs:
- "commit_prev_term": count a previous term's entries toward commit (Raft
  paper, Figure 8);
- "double_vote": grant a second vote in one term;
- "unconfirmed_reads": serve reads without confirming leadership.
"""
from raftcore.engine cimport Engine

#: The bugs this engine can have.
ENGINE_BUGS = ("commit_prev_term", "double_vote", "unconfirmed_reads")


cdef class FaultyEngine(Engine):
    """Engine with the `bugs` named (a subset of ENGINE_BUGS) switched on."""

    cdef readonly frozenset bugs
    cdef bint commit_prev_term, double_vote, unconfirmed_reads

    def __init__(self, node_id, *, bugs=(), **settings):
        unknown = sorted(set(bugs) - set(ENGINE_BUGS))
        if unknown:
            raise ValueError(f"unknown engine bug(s) {unknown}; known: {list(ENGINE_BUGS)}")
        Engine.__init__(self, node_id, **settings)
        self.bugs = frozenset(bugs)
        self.commit_prev_term = "commit_prev_term" in self.bugs
        self.double_vote = "double_vote" in self.bugs
        self.unconfirmed_reads = "unconfirmed_reads" in self.bugs

    cdef bint _commits_by_counting(self, long long index):
        return self.commit_prev_term or Engine._commits_by_counting(self, index)

    cdef bint _free_to_vote(self, candidate_id):
        return self.double_vote or Engine._free_to_vote(self, candidate_id)

    def read_index(self, double now):
        read = Engine.read_index(self, now)
        return (self.committed, 0) if self.unconfirmed_reads else read

    def lease_read(self, double now):
        read = Engine.lease_read(self, now)
        return self.committed if self.unconfirmed_reads else read


def engine_with_bugs(bugs):
    """The engine class for Raft.create(engine_type=...) with the engine bugs
    among `bugs` switched on (others, as the simulated disk's
    "ack_before_flush", are left to their owners); None if there are none."""
    mine = tuple(b for b in bugs if b in ENGINE_BUGS)
    if not mine:
        return None

    def faulty_engine(node_id, **settings):
        return FaultyEngine(node_id, bugs=mine, **settings)
    return faulty_engine
