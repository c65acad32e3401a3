"""Value types of the Raft engine: log ids, votes and log entries.

All are immutable once built: the in-process router passes them between nodes
by reference, so no node may change what another node holds. One exception
changes nothing a reader can see: a node releases the decoded payload of an
entry it has applied (Entry.release_payload), and `payload` then decodes it
again from the entry's encoding, to an equal value.
"""
cimport cython
import msgpack

ENTRY_BLANK = BLANK
ENTRY_NORMAL = NORMAL
ENTRY_MEMBERSHIP = MEMBERSHIP


cdef class LogId:
    """The id of a log entry: the term of the leader that created it, and its index."""

    def __init__(self, long long term, long long index):
        self.term = term
        self.index = index

    def __repr__(self):
        return f"LogId({self.term}, {self.index})"

    def __eq__(self, other):
        if not isinstance(other, LogId):
            return NotImplemented
        return self.term == (<LogId>other).term and self.index == (<LogId>other).index

    def __lt__(self, LogId other):
        return (self.term, self.index) < (other.term, other.index)

    def __le__(self, LogId other):
        return (self.term, self.index) <= (other.term, other.index)

    def __hash__(self):
        return hash((self.term, self.index))

    def __reduce__(self):
        return (LogId, (self.term, self.index))


cdef class Vote:
    """What a node has voted for: a term, the node it voted for, and whether
    that vote was granted by a quorum (a leader's own vote)."""

    def __init__(self, long long term, node_id=None, bint committed=False):
        self.term = term
        self.node_id = node_id
        self.committed = committed

    def __repr__(self):
        c = ", committed" if self.committed else ""
        return f"Vote(term={self.term}, node_id={self.node_id!r}{c})"

    def __eq__(self, other):
        if not isinstance(other, Vote):
            return NotImplemented
        cdef Vote o = <Vote>other
        return self.term == o.term and self.node_id == o.node_id and self.committed == o.committed

    def __hash__(self):
        return hash((self.term, self.node_id, self.committed))

    def __reduce__(self):
        return (Vote, (self.term, self.node_id, self.committed))


cdef inline long long _payload_size(object payload):
    # Only byte-like payloads have a size known without encoding them; other
    # payloads are capped by entry count alone.
    if type(payload) is bytes or type(payload) is str or type(payload) is bytearray:
        return len(payload)
    return 0


# no_gc: the log holds every entry since the last purge, often millions;
# keeping them out of the cyclic GC spares a traversal of the whole log on
# each full collection. An entry cannot be part of a reference cycle unless a
# payload refers back to its own entry, which raftcore never does.
@cython.no_gc
@cython.freelist(256)
cdef class Entry:
    """One log entry. kind is ENTRY_BLANK, ENTRY_NORMAL or ENTRY_MEMBERSHIP.

    `encoded`, on a normal entry, is the payload's msgpack encoding as the
    leader made it when it admitted the command: the log store writes it and
    the transport sends it byte for byte, and every node applies what it
    decodes to (`payload`). Entries compare equal by term, index, kind and
    payload alone.

    Once a node has applied an entry that carries its encoding, it releases
    the decoded payload (release_payload): the log holds every entry until
    the next snapshot's purge, often hundreds of thousands of commands, and
    their decoded objects were most of a node's memory (about 250 bytes per
    pipelined Redis SET against 30 encoded) and of the garbage collector's
    walks. Reading `payload` afterwards decodes the encoding again, as a
    follower did when the entry arrived, so it reads equal to what was
    applied; only a lagging reader (a test, a log dump) pays for that."""

    def __init__(self, long long term, long long index, int kind=NORMAL, payload=None,
                 encoded=None):
        if kind < BLANK or kind > MEMBERSHIP:
            raise ValueError(f"unknown entry kind {kind}")
        if encoded is not None and (kind != NORMAL or type(encoded) is not bytes):
            raise ValueError("only a normal entry carries an encoding, and it is bytes")
        self.term = term
        self.index = index
        self.kind = kind
        self._payload = payload
        self._released = False
        self.encoded = encoded
        self.size = _payload_size(payload) if encoded is None else len(<bytes>encoded)

    @property
    def payload(self):
        """The application value (a Membership for a membership entry, None
        for a blank)."""
        if self._released:
            return msgpack.unpackb(self.encoded, raw=False, strict_map_key=False)
        return self._payload

    cpdef void release_payload(self):
        """Drops the decoded payload of an entry that carries its encoding
        (`payload` decodes it again on each later read); does nothing to one
        without."""
        if self.encoded is not None:
            self._payload = None
            self._released = True

    @property
    def log_id(self):
        return LogId(self.term, self.index)

    def __repr__(self):
        kinds = ("blank", "normal", "membership")
        return f"Entry({self.term}, {self.index}, {kinds[self.kind]}, {self.payload!r})"

    def __eq__(self, other):
        if not isinstance(other, Entry):
            return NotImplemented
        cdef Entry o = <Entry>other
        return (self.term == o.term and self.index == o.index and self.kind == o.kind
                and self.payload == o.payload)

    def __hash__(self):
        return hash((self.term, self.index, self.kind))

    def __reduce__(self):
        return (Entry, (self.term, self.index, self.kind, self.payload, self.encoded))


cdef Entry make_entry(long long term, long long index, int kind, object payload):
    """Builds an Entry without going through Python argument parsing."""
    cdef Entry e = Entry.__new__(Entry)
    e.term = term
    e.index = index
    e.kind = kind
    e._payload = payload
    e.size = _payload_size(payload)
    return e


cdef Entry make_encoded_entry(long long term, long long index, object payload, bytes encoded):
    """A normal entry carrying its payload's msgpack encoding (see Entry)."""
    cdef Entry e = make_entry(term, index, NORMAL, payload)
    e.encoded = encoded
    e.size = len(encoded)
    return e
