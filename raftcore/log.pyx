"""The in-memory log index held by the engine.

Invariant: the log is contiguous from purged_index + 1 to last_index, and
terms never decrease along it (each leader appends after the entries of
earlier terms). Entries are shared references, never copied.
"""
cimport cython
from raftcore.types cimport Entry


# no_gc_clear: when a garbage cycle holding this object is collected, its
# typed fields must not be reset to None under code (a finalizer, say) that
# may still call into it; cleared fields would crash typed cdef access.
@cython.no_gc_clear
cdef class RaftLog:
    """Entries from purged_index + 1 on, with O(1) access by index."""

    def __cinit__(self, long long purged_index=0, long long purged_term=0):
        self.entries = []
        self.purged_index = purged_index
        self.purged_term = purged_term

    cdef long long last_term(self):
        if self.entries:
            return (<Entry>self.entries[len(self.entries) - 1]).term
        return self.purged_term

    cdef long long term_at(self, long long index):
        """Term of the entry at index; -1 if the log does not know it."""
        if index == self.purged_index:
            return self.purged_term
        if index < self.purged_index or index > self.purged_index + len(self.entries):
            return -1
        return (<Entry>self.entries[index - self.purged_index - 1]).term

    cdef Entry get(self, long long index):
        return <Entry>self.entries[index - self.purged_index - 1]

    cdef void extend(self, list entries):
        self.entries.extend(entries)

    cdef void append(self, Entry entry):
        self.entries.append(entry)

    cdef void truncate(self, long long since):
        """Drops every entry with index >= since."""
        del self.entries[since - self.purged_index - 1:]

    cdef list slice(self, long long first, long long last):
        """Entries first..last inclusive (both within the log)."""
        return self.entries[first - self.purged_index - 1:last - self.purged_index]

    cdef long long first_index_of_term_at(self, long long index):
        """The first index holding the same term as the entry at `index`."""
        cdef long long term = self.term_at(index)
        cdef long long lo = self.purged_index + 1, hi = index, mid
        # Terms are non-decreasing: binary search for the first entry of `term`.
        while lo < hi:
            mid = (lo + hi) // 2
            if self.term_at(mid) < term:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef long long last_index_of_term(self, long long term):
        """The last index holding `term`, or -1 if the log has no entry of it."""
        cdef long long lo = self.purged_index + 1, hi = self.last_index(), mid
        # Binary search for the last entry with a term <= `term`.
        while lo <= hi:
            mid = (lo + hi) // 2
            if self.term_at(mid) <= term:
                lo = mid + 1
            else:
                hi = mid - 1
        if hi > self.purged_index and self.term_at(hi) == term:
            return hi
        return -1

    cdef void purge(self, long long upto, long long upto_term):
        """Drops every entry up to and including `upto` (which may lie past
        the last entry: then the log is empty after it)."""
        if upto <= self.purged_index:
            return
        del self.entries[:upto - self.purged_index]
        self.purged_index = upto
        self.purged_term = upto_term

    cdef void reset(self, long long purged_index, long long purged_term):
        """Drops every entry: the log now starts after (purged_term, purged_index)."""
        self.entries = []
        self.purged_index = purged_index
        self.purged_term = purged_term

    # Python views, for the runtime and tests.
    @property
    def last_log_index(self):
        return self.last_index()

    @property
    def last_log_term(self):
        return self.last_term()

    def term_of(self, index):
        return self.term_at(index)

    def entries_between(self, first, last):
        if first < self.purged_index + 1 or last > self.last_index():
            raise IndexError(f"entries {first}..{last} are outside the log "
                             f"{self.purged_index + 1}..{self.last_index()}")
        return self.slice(first, last)

    def __len__(self):
        return len(self.entries)
