"""SimStateMachine: the key-value state machine, reporting to the checker."""
from __future__ import annotations

from typing import TYPE_CHECKING

from raftcore.storage.mem import MemStateMachine

if TYPE_CHECKING:
    from raftcore.testing.sim.checker import Checker

class SimStateMachine(MemStateMachine):
    """MemStateMachine that reports every applied entry to the checker."""

    def __init__(self, node_id: int, checker: "Checker") -> None:
        super().__init__()
        self.node_id = node_id
        self.checker = checker

    def apply(self, entries):
        for e in entries:
            self.checker.applied(self.node_id, e)
        return super().apply(entries)

    def durable_snapshot(self):
        # A simulated crash keeps the current snapshot (restarted()), as a
        # snapshot store on disk would: the log may be purged behind it.
        snap = self._snapshot
        return snap.meta if snap is not None else None

    def _empty_like(self) -> "SimStateMachine":
        return SimStateMachine(self.node_id, self.checker)
