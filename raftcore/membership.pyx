"""Cluster membership: one voter configuration, or two while joint.

Invariant (checked on construction): every voter appears in `nodes`; a
membership has at least one non-empty voter set. Learners are the nodes that
are in no voter set.
"""
cimport cython


# no_gc_clear: when a garbage cycle holding this object is collected, its
# typed fields must not be reset to None under code (a finalizer, say) that
# may still call into it; cleared fields would crash typed cdef access.
@cython.no_gc_clear
cdef class Membership:
    """Voter configurations and the nodes (addresses) of every member.

    `configs` holds one set of voter ids, or two during a joint change
    (old, new): a decision then needs a majority of each.
    """

    def __init__(self, configs, nodes):
        cfgs = tuple(frozenset(c) for c in configs)
        if not 1 <= len(cfgs) <= 2:
            raise ValueError(f"a membership has 1 or 2 voter sets, got {len(cfgs)}")
        if not any(cfgs):
            raise ValueError("a membership needs at least one voter")
        nodes = dict(nodes)
        voters = frozenset().union(*cfgs)
        missing = voters - nodes.keys()
        if missing:
            raise ValueError(f"voters {sorted(missing)} have no node entry")
        self.configs = cfgs
        self.nodes = nodes
        self.voter_ids = voters

    @property
    def learner_ids(self):
        return frozenset(self.nodes.keys() - self.voter_ids)

    @property
    def is_joint(self):
        return len(self.configs) == 2

    cpdef bint is_voter(self, node_id):
        return node_id in self.voter_ids

    cpdef bint is_quorum(self, granted):
        """True if `granted` holds a majority of every voter set."""
        cdef frozenset cfg
        for cfg in self.configs:
            if len(cfg) and 2 * len(cfg & granted) <= len(cfg):
                return False
        return True

    def node(self, node_id):
        return self.nodes.get(node_id)

    def __eq__(self, other):
        if not isinstance(other, Membership):
            return NotImplemented
        return self.configs == (<Membership>other).configs and self.nodes == (<Membership>other).nodes

    def __hash__(self):
        return hash(self.configs)

    def __repr__(self):
        cfgs = " + ".join("{" + ", ".join(map(str, sorted(c))) + "}" for c in self.configs)
        learners = sorted(self.learner_ids)
        extra = f", learners {learners}" if learners else ""
        return f"Membership({cfgs}{extra})"

    def __reduce__(self):
        return (Membership, ([sorted(c) for c in self.configs], self.nodes))
