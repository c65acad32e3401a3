"""The safety invariants, checked continuously while a simulation runs."""
from __future__ import annotations

from typing import Any, Optional

from raftcore.engine import LEADER
from raftcore.raft import Raft
from raftcore.testing.sim.disk import SimDisk
from raftcore.testing.sim.settings import Violation

class Checker:
    """Safety invariants, checked as the simulation runs."""

    def __init__(self, trace: list, rafts: dict) -> None:
        self.trace = trace
        self.rafts = rafts                           # node -> its current Raft
        self.committed: dict[int, tuple] = {}        # index -> (term, kind, payload)
        # index -> a term no earlier than the one its entry was committed in
        self.committed_by: dict[int, int] = {}
        self.committed_payloads: dict[str, int] = {}  # repr(payload) -> index
        self.refused: dict[str, Any] = {}            # repr(payload) -> client
        self.leaders: dict[int, int] = {}            # term -> leader id
        self.votes: dict[int, dict] = {}             # node -> {term: voted for}
        self.max_term: dict[int, int] = {}
        self.incarnation: dict[int, tuple] = {}      # node -> (committed, applied)
        self.first: Optional[str] = None             # the first violation seen
        self.on_violation = None                     # called once, at the first

    def fail(self, msg: str) -> None:
        # A violation may surface inside the runtime (which then stops the
        # node): remember the first one, it is the one to report.
        if self.first is None:
            self.first = msg
            if self.on_violation is not None:
                self.on_violation()
        raise Violation(msg)

    def applied(self, node: int, e) -> None:
        rec = (e.term, e.kind, repr(e.payload))
        prev = self.committed.setdefault(e.index, rec)
        if prev is rec:
            self.committed_by[e.index] = self._highest_term()
            self.committed_payloads[rec[2]] = e.index
            if rec[2] in self.refused:
                self._refused_but_committed(self.refused[rec[2]], rec[2], e.index)
        elif prev != rec:
            self.fail(f"state machine safety: node {node} applied {rec} at index {e.index}, "
                      f"another node applied {prev}")

    def _highest_term(self) -> int:
        # The leader that committed an entry saved its term before it was
        # elected, so some node (up, or down with its last engine kept) is
        # at that term or later now.
        return max(r._core.engine.vote.term for r in self.rafts.values())

    def write_refused(self, client: Any, cmd: Any) -> None:
        """A client was told its write `cmd` did not take effect."""
        payload = repr(cmd)
        self.refused[payload] = client
        index = self.committed_payloads.get(payload)
        if index is not None:
            self._refused_but_committed(client, payload, index)

    def _refused_but_committed(self, client: Any, payload: str, index: int) -> None:
        self.fail(f"refused write committed: client {client} was told {payload} did not "
                  f"take effect (ForwardToLeader), yet it is committed at index {index}")

    def new_incarnation(self, node: int) -> None:
        self.incarnation[node] = (0, 0)

    def storage_lost(self, node: int) -> None:
        """The node restarts on new storage: it cast no vote there yet."""
        self.votes.pop(node, None)
        self.max_term.pop(node, None)

    def observe(self, node: int, raft: Raft, disk: SimDisk) -> None:
        core = raft._core
        if core._fatal is not None:
            self.fail(f"node {node} stopped on an internal error: {core._fatal}")
        e = core.engine
        # Votes as on disk: the engine's runs ahead while a save is under
        # way, and nothing acts on it until the save returns.
        vote = disk.durable["vote"]
        term, voted = (vote.term, vote.node_id) if vote is not None else (0, None)
        if term < self.max_term.get(node, 0):
            self.fail(f"node {node}: term went back from {self.max_term[node]} to {term}")
        self.max_term[node] = term
        if voted is not None:
            seen = self.votes.setdefault(node, {}).setdefault(term, voted)
            if seen != voted:
                self.fail(f"node {node} voted for {seen} and then {voted} in term {term}")
        if e.state == LEADER:
            prev = self.leaders.setdefault(term, node)
            if prev != node:
                self.fail(f"election safety: nodes {prev} and {node} both lead term {term}")
            if prev == node and not getattr(raft, "_sim_checked_term", None) == term:
                raft._sim_checked_term = term
                self._leader_complete(node, e)
        applied = core.last_applied.index if core.last_applied else 0
        purged = core.purged.index if core.purged else 0
        snap = core.snapshot.index if core.snapshot else 0
        last = e.last_log_index
        if not (snap <= applied <= e.committed <= last):
            self.fail(f"node {node}: expected purged {purged} <= snapshot {snap} <= applied "
                      f"{applied} <= committed {e.committed} <= last log {last}")
        if purged and snap < purged:
            self.fail(f"node {node}: purged {purged} beyond its snapshot {snap}")
        c0, a0 = self.incarnation.get(node, (0, 0))
        if e.committed < c0 or applied < a0:
            self.fail(f"node {node}: commit/applied went back ({c0}, {a0}) -> "
                      f"({e.committed}, {applied}) without a restart")
        self.incarnation[node] = (e.committed, applied)

    def _leader_complete(self, node: int, e) -> None:
        committed_by = self.committed_by
        for index, (term, _, _) in self.committed.items():
            if index <= e.log.purged_index or committed_by[index] >= e.vote.term:
                continue
            if index > e.last_log_index or e.log.term_of(index) != term:
                self.fail(f"leader completeness: node {node} leads term {e.vote.term} without "
                          f"committed entry {index} (term {term})")

