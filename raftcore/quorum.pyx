"""The value accepted by a quorum (the commit candidate), kept incrementally.

For each voter set we keep its voters' values sorted in descending order. A
node's value only grows (matched indexes never go back within a term), so an
update moves one slot towards the front: O(voters) with no sorting and no
allocation. The quorum value of a set of n voters is the value at position
n // 2 of its sorted slots (a majority holds at least that much); a joint
membership accepts the minimum over its sets.
"""
from libc.stdlib cimport malloc, free


cdef class QuorumTracker:
    """Tracks the value a quorum of voters holds, for majority or joint sets.

    `configs` is a sequence of voter-id collections (one, or two when joint).
    Every voter starts at value 0.
    """

    def __cinit__(self, configs):
        cdef int total = 0, i, j, pos
        cfgs = [sorted(c) for c in configs]
        self.nconfigs = len(cfgs)
        for c in cfgs:
            total += len(c)
        self.slots = <VoterSlot*>malloc(max(total, 1) * sizeof(VoterSlot))
        self.offsets = <int*>malloc(max(self.nconfigs, 1) * sizeof(int))
        self.sizes = <int*>malloc(max(self.nconfigs, 1) * sizeof(int))
        if not self.slots or not self.offsets or not self.sizes:
            raise MemoryError()
        pos = 0
        for i in range(self.nconfigs):
            self.offsets[i] = pos
            self.sizes[i] = len(cfgs[i])
            for j in range(self.sizes[i]):
                self.slots[pos].node_id = cfgs[i][j]
                self.slots[pos].value = 0
                pos += 1
        self.accepted = 0

    def __dealloc__(self):
        free(self.slots)
        free(self.offsets)
        free(self.sizes)

    cdef bint update(self, long long node_id, long long value):
        """Raises node_id's value (never lowers it). Returns True if the quorum
        value changed."""
        cdef int c, i, start, end
        cdef VoterSlot tmp
        cdef bint moved = False
        for c in range(self.nconfigs):
            start = self.offsets[c]
            end = start + self.sizes[c]
            for i in range(start, end):
                if self.slots[i].node_id == node_id:
                    if value <= self.slots[i].value:
                        break
                    self.slots[i].value = value
                    moved = True
                    # Bubble the raised slot towards the front to keep the order.
                    while i > start and self.slots[i - 1].value < self.slots[i].value:
                        tmp = self.slots[i - 1]
                        self.slots[i - 1] = self.slots[i]
                        self.slots[i] = tmp
                        i -= 1
                    break
        if not moved:
            return False
        cdef long long old = self.accepted
        self.accepted = self._recompute()
        return self.accepted != old

    cdef long long _recompute(self):
        cdef long long best = -1, v
        cdef int c
        for c in range(self.nconfigs):
            if self.sizes[c] == 0:
                continue
            v = self.slots[self.offsets[c] + self.sizes[c] // 2].value
            if best < 0 or v < best:
                best = v
        return best if best > 0 else 0

    def set(self, node_id, value):
        """Python entry point for update(); returns whether the quorum value changed."""
        return self.update(node_id, value)

    def value_of(self, node_id):
        cdef int i
        for i in range(self.offsets[self.nconfigs - 1] + self.sizes[self.nconfigs - 1]):
            if self.slots[i].node_id == node_id:
                return self.slots[i].value
        return None
