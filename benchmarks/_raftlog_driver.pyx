# A follower's append of a batch to the compiled RaftLog, for the
# micro-benchmarks. RaftLog's methods are cdef-only (the engine calls them
# from C), so this small module, compiled by benchmarks/conftest.py against
# the installed raftcore, calls them the way Engine.handle_append_entries
# does: skip the entries already held, truncate at the first conflict,
# append the rest.
from raftcore.log cimport RaftLog
from raftcore.types cimport Entry


def new_log():
    return RaftLog()


def append_batch(RaftLog log, long long prev_index, long long prev_term, list entries):
    """Appends `entries` (which follow (prev_term, prev_index)); returns the
    new last index, or -1 if the log does not hold prev."""
    cdef Py_ssize_t i = 0, n = len(entries)
    cdef Entry e
    if prev_index > log.last_index():
        return -1
    if prev_index >= log.purged_index and log.term_at(prev_index) != prev_term:
        return -1
    while i < n:
        e = <Entry>entries[i]
        if e.index <= log.purged_index:
            i += 1
            continue
        if e.index > log.last_index():
            break
        if log.term_at(e.index) != e.term:
            log.truncate(e.index)
            break
        i += 1
    if i < n:
        log.extend(entries[i:] if i else entries)
    return log.last_index()
