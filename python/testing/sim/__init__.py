"""Deterministic simulation of a raftcore cluster under faults.

Runs the real engine and runtime — the same Raft, RaftCore and Engine users
run — on a virtual-time event loop (virtual_loop), with a simulated network
(latency, loss, duplication, reordering, partitions, paused nodes) and a
simulated disk that loses what was written but not flushed when its node
crashes. Every random choice flows from one seed, so `raftcore sim --seed S`
replays a run exactly.

While the cluster runs, clients write, compare-and-set and read
(linearizable reads) with timeouts; each operation goes into a history that
raftcore.testing.lincheck checks at the end (a key it cannot decide within
its budget, --lin-budget, makes the seed undecided: reported with its
reproduce command, and a failure unless --allow-undecided). Invariants are
checked continuously:

- election safety: at most one leader per term;
- state machine safety / log matching / committed entries never change: no
  two applications of one index differ, across nodes and restarts;
- leader completeness: a leader of a term later than every term any node
  had reached when an entry was first applied holds that entry (a leader of
  an older term, elected by nodes that had not heard of the newer one, need
  not: it can commit nothing);
- no refused write commits: a write answered ForwardToLeader (it did not
  take effect) never shows up as a committed entry (write payloads are
  unique);
- per node: purged <= snapshot <= applied <= committed <= last log index;
  term never decreases and a vote in a term never changes, across restarts;
  commit and applied never decrease within one incarnation.

At the end every fault heals; within a bounded virtual time there must be one
leader, converged members, and a write and a read that succeed (liveness).

One fault, "wipe", is an operator's bad day: a node loses its disk and is
restarted under its old id on empty storage (a new storage incarnation). It
must not vote or count toward commit; the next "wipe" fault replaces it the
way an operator would (removes it, adds it back, promotes it again). Only
once the replaced node runs and both it and the leader see the membership
record its new incarnation does a "wipe" fault wipe another node, so at most
one member is wiped or stale at a time. The checker
forgets the wiped node's vote history (its new storage voted in no term).

Most faults are random. One, "figure8", is a script: it drives the cluster
through Figure 8 of the Raft paper (see Simulation.figure8), the one schedule
under which counting an older term's entries toward commit loses a committed
entry; random faults almost never line it up.

The pieces, one concern a module: settings (settings, results, errors),
disk and state_machine (the simulated stores), network (the simulated
network), checker (the invariants), cluster (Simulation: the nodes' lives
and the liveness check), workload (clients), faults and figure8 (the
faults), runner (run_seed and the command line).
"""
from raftcore.testing.sim.checker import Checker
from raftcore.testing.sim.cluster import Simulation
from raftcore.testing.sim.disk import SimDisk
from raftcore.testing.sim.network import SimNetwork
from raftcore.testing.sim.runner import main, run_seed
from raftcore.testing.sim.settings import (BUGS, FAULT_KINDS, SimResult, SimSettings,
                                           Violation)
from raftcore.testing.sim.state_machine import SimStateMachine

__all__ = ["BUGS", "FAULT_KINDS", "Checker", "SimDisk", "SimNetwork", "SimResult",
           "SimSettings", "SimStateMachine", "Simulation", "Violation", "main", "run_seed"]
