"""ChangeMembers: the membership changes change_membership() accepts.

Each change maps the current (uniform) membership to a new voter set and a
new node map; change_membership() then moves the cluster there through a
joint configuration. Invariants checked here, with messages saying what to
do instead: voters always have a node entry; at least one voter remains;
add_voter_ids only promotes nodes the cluster already knows (learners).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from raftcore.errors import NotAllowed
from raftcore.model import Node


@dataclass(frozen=True)
class ChangeMembers:
    """One membership change (openraft's ChangeMembers). Build with the
    class methods: add_voter_ids, add_voters, remove_voters,
    replace_all_voters, add_nodes, set_nodes, remove_nodes."""

    kind: str
    ids: frozenset = frozenset()
    nodes: Mapping[int, Node] = field(default_factory=dict)

    @classmethod
    def add_voter_ids(cls, ids: Iterable[int]) -> "ChangeMembers":
        """Promote known nodes (learners) to voters."""
        return cls("add_voter_ids", frozenset(ids))

    @classmethod
    def add_voters(cls, nodes: Mapping[int, Node]) -> "ChangeMembers":
        """Add new nodes as voters directly (prefer add_learner first, so
        they catch up before they count toward commit). A voter whose log
        is still empty votes for nobody (it may be a member that lost its
        disk): should the leader be lost before the change commits, while
        such voters are needed for a majority, no leader can be elected."""
        return cls("add_voters", frozenset(nodes), dict(nodes))

    @classmethod
    def remove_voters(cls, ids: Iterable[int]) -> "ChangeMembers":
        return cls("remove_voters", frozenset(ids))

    @classmethod
    def replace_all_voters(cls, ids: Iterable[int]) -> "ChangeMembers":
        return cls("replace_all_voters", frozenset(ids))

    @classmethod
    def add_nodes(cls, nodes: Mapping[int, Node]) -> "ChangeMembers":
        """Add nodes as learners."""
        return cls("add_nodes", frozenset(nodes), dict(nodes))

    @classmethod
    def set_nodes(cls, nodes: Mapping[int, Node]) -> "ChangeMembers":
        """Replace the Node (address) of existing members."""
        return cls("set_nodes", frozenset(nodes), dict(nodes))

    @classmethod
    def remove_nodes(cls, ids: Iterable[int]) -> "ChangeMembers":
        """Remove learners (voters must be removed with remove_voters first)."""
        return cls("remove_nodes", frozenset(ids))

    def apply(self, voters: frozenset, nodes: Mapping[int, Any]) -> tuple[frozenset, dict]:
        """The (voters, nodes) after this change, from the current ones."""
        nodes = dict(nodes)
        k = self.kind
        if k == "add_voter_ids":
            unknown = sorted(self.ids - nodes.keys())
            if unknown:
                raise NotAllowed(f"nodes {unknown} are not members of the cluster; add them "
                                 "with add_learner first (or use ChangeMembers.add_voters)")
            voters = voters | self.ids
        elif k == "add_voters":
            for i, n in self.nodes.items():
                _check_node(i, n)
                nodes.setdefault(i, n)
            voters = voters | self.ids
        elif k == "remove_voters":
            voters = voters - self.ids
        elif k == "replace_all_voters":
            unknown = sorted(self.ids - nodes.keys())
            if unknown:
                raise NotAllowed(f"nodes {unknown} are not members of the cluster; add them "
                                 "with add_learner first")
            voters = frozenset(self.ids)
        elif k == "add_nodes":
            for i, n in self.nodes.items():
                _check_node(i, n)
                if i in nodes:
                    raise NotAllowed(f"node {i} is already a member; use set_nodes to "
                                     "change its address")
                nodes[i] = n
        elif k == "set_nodes":
            for i, n in self.nodes.items():
                _check_node(i, n)
                if i not in nodes:
                    raise NotAllowed(f"node {i} is not a member; use add_nodes or add_learner")
                nodes[i] = n
        elif k == "remove_nodes":
            still_voting = sorted(self.ids & voters)
            if still_voting:
                raise NotAllowed(f"nodes {still_voting} are voters; remove them with "
                                 "remove_voters first")
            for i in self.ids:
                nodes.pop(i, None)
        else:
            raise ValueError(f"unknown membership change {k!r}")
        if not voters:
            raise NotAllowed("this change would remove every voter; a cluster needs at "
                             "least one")
        return frozenset(voters), nodes


def _check_node(node_id: Any, node: Any) -> None:
    if not isinstance(node_id, int) or isinstance(node_id, bool):
        raise NotAllowed(f"node ids are ints, got {node_id!r}")
    if not isinstance(node, Node):
        raise NotAllowed(f"node {node_id}: expected a raftcore.Node, got {node!r}")
