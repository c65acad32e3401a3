"""SimStateMachine: the key-value state machine, reporting to the checker (and
ReportsApplied, what the embedding layer's simulated state machine shares)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raftcore.storage.mem import MemStateMachine

if TYPE_CHECKING:
    from raftcore.testing.sim.checker import Checker

class ReportsApplied:
    """A state machine mixin: reports every applied entry to the checker,
    and keeps its current snapshot across a simulated crash (restarted()),
    as a snapshot store on disk would: the log may be purged behind it."""

    node_id: int
    checker: "Checker"
    _snapshot: Any

    def apply(self, entries):
        for e in entries:
            self.checker.applied(self.node_id, e)
        return super().apply(entries)       # type: ignore[misc]

    def durable_snapshot(self):
        snap = self._snapshot
        return snap.meta if snap is not None else None


class SimStateMachine(ReportsApplied, MemStateMachine):
    """MemStateMachine that reports every applied entry to the checker."""

    def __init__(self, node_id: int, checker: "Checker") -> None:
        super().__init__()
        self.node_id = node_id
        self.checker = checker

    def _empty_like(self) -> "SimStateMachine":
        return SimStateMachine(self.node_id, self.checker)
