"""The simulator's settings, results and the errors its checks raise."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

from raftcore.testing import lincheck

#: Fault kinds the simulator injects (all of them, with the default settings).
FAULT_KINDS = ("isolate", "partition", "one_way", "ring", "drop", "duplicate", "crash",
               "crash_leader", "crash_new_leader", "lose_blanks", "power_loss",
               "pause", "elect", "snapshot", "purge", "transfer", "add_learner", "promote",
               "remove_voter", "figure8", "disk_full", "wipe")

#: Known-bad behaviours a test can switch on to show the checks catch them.
BUGS = ("commit_prev_term", "double_vote", "unconfirmed_reads", "ack_before_flush")


class Violation(AssertionError):
    """A safety or liveness check failed."""


class _GaveUp(Exception):
    """A scripted fault could not bring about the state its next step needs."""


@dataclass
class SimSettings:
    nodes: int = 5
    spares: int = 2               # extra nodes that membership faults may add
    duration: float = 12.0        # virtual seconds of faults and load
    clients: int = 4
    keys: int = 4
    op_timeout: float = 1.0
    fault_interval: float = 0.4   # mean virtual seconds between faults
    heal_within: float = 20.0     # liveness: virtual seconds allowed after healing
    bugs: tuple = ()
    fault_kinds: tuple = FAULT_KINDS
    #: AppendEntries batch sizes to pick from (1 makes every entry its own
    #: message: more partial replication, more Figure 8 situations).
    payload_entries: tuple = (1, 4, 16)
    #: The linearizability check's search budget per key (lincheck.check).
    lin_budget: int = lincheck.DEFAULT_BUDGET
    #: What the clients drive: "kv" (raftcore's key-value state machine),
    #: "dict" or "lock" (the embedding layer's ReplDict / ReplLock).
    workload: str = "kv"


@dataclass
class SimResult:
    seed: int
    ok: bool
    violation: str = ""
    trace: list = field(default_factory=list)
    faults: collections.Counter = field(default_factory=collections.Counter)
    ops: int = 0
    virtual_seconds: float = 0.0
    lin_unknown: int = 0          # keys whose linearizability was not decided
    undecided: str = ""           # the checker's report on them (no violation found)
    stalled: str = ""             # why no leader came back, when the engine intends it

