"""A node's identity: the cluster its storage belongs to and the
incarnation of that storage, adopted, checked against its peers' requests,
and reported when the membership says it or a member is stale; a leader's
membership change waits for the entry that records members' incarnations.

Plain Python: none of it is per entry. The node (RaftCore) owns one
NodeIdentity; the cluster id and incarnation themselves live in the engine,
which counts votes and acknowledgements by them.
"""
import asyncio
import math
from typing import Any

from raftcore.engine import LEADER
from raftcore.errors import ClusterMismatch
from raftcore.storage.base import new_identity_token


#: Seconds between two warnings that this node refuses votes on an empty log.
EMPTY_LOG_WARNING_INTERVAL = 10.0


class NodeIdentity:
    """Loads, adopts and enforces one node's cluster id; logs what the
    membership says of its own and its members' storage incarnations."""

    def __init__(self, core: Any) -> None:
        self._core = core                 # the node (RaftCore)
        self.id = core.id
        self.engine = core.engine         # holds the cluster id and incarnation
        self.log_store = core.log_store
        self.loop = core.loop
        self.log = core.log
        self.keeps_identity = False      # the log store keeps a cluster id and incarnation
        self._lock = asyncio.Lock()       # serializes saving the cluster id
        self._empty_log_warned_at = -math.inf   # loop time of the last empty-log warning
        self._refusals_logged: dict = {}  # (sender, cluster id) -> when last logged
        # What the membership said when last logged: whether it records
        # another incarnation for this node; (leader) the stale members.
        self.seen_self_stale = False
        self.seen_stale_members: set = set()

    async def load(self, expected) -> None:
        """Reads the identity the log store keeps, at start. `expected`: the
        cluster the node must belong to (ClusterMismatch if the store belongs
        to another; adopted by a store without one)."""
        identity = await self.log_store.read_identity()
        if identity is None:
            self.log.info("node %s: its log store keeps no identity; cluster and storage "
                          "identity checks are off for it", self.id)
            self.engine.cluster_id = expected
            return
        self.keeps_identity = True
        self.engine.incarnation = identity.incarnation
        self.engine.cluster_id = identity.cluster_id
        if expected is not None and identity.cluster_id not in (None, expected):
            raise ClusterMismatch(
                f"node {self.id}: its log store belongs to cluster {identity.cluster_id}, not "
                f"to cluster {expected}; refusing to start on another cluster's storage")
        if expected is not None and identity.cluster_id is None:
            await self.adopt(expected, "its configuration")

    async def adopt(self, cluster_id, source) -> None:
        """Makes `cluster_id` this node's, durably, unless it has one already."""
        async with self._lock:
            if self.engine.cluster_id is not None:
                return
            if self.keeps_identity:
                await self.log_store.save_cluster_id(cluster_id)
            self.engine.cluster_id = cluster_id
        self.log.info("node %s joined cluster %s (learned from %s)", self.id, cluster_id, source)

    async def for_initialize(self, cluster_id) -> None:
        """Before initialize: gives a fresh node its cluster id (`cluster_id`,
        or the one it has, or a new one), durably."""
        e = self.engine
        if e.last_log_index != 0 or e.purged_log_id is not None or e.vote.term != 0:
            return      # not fresh: engine.initialize refuses it, saying why
        mine = e.cluster_id
        if cluster_id is not None and mine is not None and cluster_id != mine:
            raise ClusterMismatch(f"node {self.id} already belongs to cluster {mine}; it "
                                  f"cannot initialize cluster {cluster_id}")
        if mine is None:
            await self.adopt(cluster_id or new_identity_token(), "initialize")

    async def admit_peer(self, cluster_id, sender) -> None:
        """Lets a request of cluster `cluster_id` from `sender` through, adopting
        the id on first contact (durably, before answering anything, if the
        store keeps an identity); a request
        of another cluster is refused with ClusterMismatch and answered with
        nothing else."""
        if self.engine.cluster_id is None:
            await self.adopt(cluster_id, f"node {sender}")
        if cluster_id == self.engine.cluster_id:
            return
        msg = (f"node {self.id} belongs to cluster {self.engine.cluster_id} and refuses a "
               f"request from node {sender} of cluster {cluster_id}")
        now = self.loop.time()
        key = (sender, cluster_id)
        last = self._refusals_logged.get(key)
        if last is None or now - last >= 10.0:     # once per peer and id every 10 s
            if len(self._refusals_logged) > 1000:
                self._refusals_logged.clear()     # a peer sending ever new ids
            self._refusals_logged[key] = now
            self.log.warning("%s (a node of another cluster, or pointed at another "
                             "cluster's storage)", msg)
        raise ClusterMismatch(msg)

    async def pins_committed(self) -> None:
        """Waits (an election timeout at most) for a pending membership entry
        that only records incarnations (same voters as the committed one):
        a change proposed meanwhile would be refused as a second change."""
        e = self.engine
        deadline = self.loop.time() + self._core.config.election_timeout_max
        while e.state == LEADER and self.loop.time() < deadline:
            pending = e.membership_index
            committed = e.committed_membership
            if (pending <= e.committed or committed is None
                    or committed.configs != e.membership.configs):
                return
            fut = self.loop.create_future()
            self._core.add_metric_waiter(
                lambda m: m.committed >= pending or m.state != LEADER, fut)
            try:
                await asyncio.wait_for(fut, deadline - self.loop.time())
            except asyncio.TimeoutError:
                return      # change_membership then says what is pending
            finally:
                self._core.remove_metric_waiter(fut)

    def log_identity_stale(self) -> None:
        """The membership changed whether it records this node's storage incarnation."""
        e = self.engine
        self.seen_self_stale = e.identity_stale
        if self.seen_self_stale:
            self.log.warning(
                "node %s runs on storage incarnation %s, but the membership records %s for "
                "it: its storage was wiped or replaced since it joined, so it may have "
                "forgotten its vote and entries it acknowledged. It does not vote or campaign, "
                "and its acknowledgements do not count, until it is removed from the cluster "
                "and added back", self.id, e.incarnation, e.recorded_incarnation(self.id))
        else:
            self.log.info("node %s: the membership now records its storage incarnation %s",
                          self.id, e.incarnation)

    def log_stale_members(self) -> None:
        """Leader: the members answering under another incarnation changed."""
        e = self.engine
        for m in sorted(e.stale_members - self.seen_stale_members):
            self.log.warning(
                "node %s (leader): node %s answers from other storage than the incarnation %s "
                "the membership records for it (wiped or replaced): its votes and "
                "acknowledgements do not count; it needs replacing (remove it and add it back)",
                self.id, m, e.recorded_incarnation(m))
        self.seen_stale_members = set(e.stale_members)

    def vote_refused(self, req: Any) -> None:
        """Says, at most every EMPTY_LOG_WARNING_INTERVAL seconds, why this
        node refused `req` if its log is empty and the request does not
        count it fresh (engine_identity.may_vote_on_empty_log): an operator
        facing a cluster without a leader must learn that this node waits
        for a leader's entries."""
        engine = self._core.engine
        if not engine.log_empty or self.id in req.fresh:
            return
        now = self.loop.time()
        if now < self._empty_log_warned_at + EMPTY_LOG_WARNING_INTERVAL:
            return
        self._empty_log_warned_at = now
        self.log.warning(
            "node %s refuses to vote for %s: its log is empty, so it may be a member that "
            "lost its disk (and the entries it acknowledged); it votes once a leader's entries "
            "reach it. Elections need a majority of voters that hold entries: bring back a "
            "node that holds them", self.id, req.candidate_id)
