cdef class Membership:
    cdef readonly tuple configs     # 1 voter set (uniform) or 2 (joint), each a frozenset of ids
    cdef readonly dict nodes        # every member (voters and learners): id -> Node
    cdef readonly frozenset voter_ids

    cpdef bint is_voter(self, node_id)
    cpdef bint is_quorum(self, granted)
