from raftcore.types cimport Entry


cdef class RaftLog:
    cdef list entries                      # entries[i] holds index purged_index + 1 + i
    cdef readonly long long purged_index   # last index no longer held (0: nothing purged)
    cdef readonly long long purged_term

    cdef inline long long last_index(self):
        return self.purged_index + len(self.entries)

    cdef inline bint is_empty(self):
        # No entry and no snapshot: a new node's log, or one that lost its
        # disk (engine_identity.may_vote_on_empty_log).
        return self.purged_index == 0 and not self.entries

    cdef long long last_term(self)
    cdef long long term_at(self, long long index)
    cdef Entry get(self, long long index)
    cdef void extend(self, list entries)
    cdef void append(self, Entry entry)
    cdef void truncate(self, long long since)
    cdef list slice(self, long long first, long long last)
    cdef long long first_index_of_term_at(self, long long index)
    cdef long long last_index_of_term(self, long long term)
    cdef void purge(self, long long upto, long long upto_term)
    cdef void reset(self, long long purged_index, long long purged_term)
