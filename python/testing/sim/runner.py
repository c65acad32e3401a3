"""Running seeds: run_seed and the `raftcore sim` command line."""
from __future__ import annotations

import argparse
import asyncio
import collections
import time
from typing import Optional

from raftcore.testing import lincheck
from raftcore.testing.lincheck.lock import check_lock
from raftcore.testing.sim.cluster import Simulation
from raftcore.testing.sim.embedded import WORKLOADS
from raftcore.testing.sim.settings import BUGS, FAULT_KINDS, SimResult, SimSettings, Violation
from raftcore.testing.virtual_loop import VirtualTimeLoop


def run_seed(seed: int, settings: Optional[SimSettings] = None) -> SimResult:
    """Runs one seed; never raises for a violation (the result says)."""
    settings = settings or SimSettings()
    sim = Simulation(seed, settings)
    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)
    result = SimResult(seed=seed, ok=True)
    try:
        try:
            loop.run_until_complete(sim.run())
        except Violation as v:
            result.ok, result.violation = False, str(v)
        if sim.checker.first is not None:
            result.ok, result.violation = False, sim.checker.first
        if result.ok:
            if settings.workload == "lock":
                lin = check_lock(sim.history, budget=settings.lin_budget)
            else:
                lin = lincheck.check(sim.history, budget=settings.lin_budget)
            if lin.ok is False:
                result.ok = False
                result.violation = f"not linearizable:\n{lin.explanation}"
            elif lin.ok is None:
                result.undecided = lin.explanation
            result.lin_unknown = len(lin.unknown)
    finally:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        asyncio.set_event_loop(None)
        loop.close()
    result.trace = sim.trace
    result.faults = sim.faults
    result.ops = sim.ops
    result.stalled = sim.stalled
    result.virtual_seconds = getattr(sim, "virtual_seconds", 0.0)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="raftcore sim",
                                description="Deterministic simulation with fault injection")
    p.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    p.add_argument("--seed", type=int, default=None, help="run only this seed, with its trace")
    p.add_argument("--first", type=int, default=1, help="first seed")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--duration", type=float, default=12.0,
                   help="virtual seconds of faults and load (a run stops at its first violation)")
    p.add_argument("--bug", action="append", default=[], choices=BUGS,
                   help="switch on a known-bad behaviour (to see it caught)")
    p.add_argument("--faults", default=None,
                   help="comma-separated fault kinds to inject (default: all): "
                        f"{', '.join(FAULT_KINDS)}; figure8 plays Figure 8 of the "
                        "Raft paper step by step (what commit_prev_term gets wrong)")
    p.add_argument("--fault-interval", type=float, default=0.4,
                   help="mean virtual seconds between faults")
    p.add_argument("--workload", default="kv", choices=WORKLOADS,
                   help="what the clients drive: raftcore's key-value state machine (kv), "
                        "or the embedding layer's replicated objects through EmbeddedNode: "
                        "ReplDict (dict) or ReplLock (lock), each checked against its "
                        "model (default kv)")
    p.add_argument("--log", default="ERROR",
                   help="level of raftcore's own log records to print (default ERROR)")
    p.add_argument("--lin-budget", type=int, default=lincheck.DEFAULT_BUDGET, metavar="STEPS",
                   help="search budget of the linearizability check, in search steps per "
                        f"key (default {lincheck.DEFAULT_BUDGET:,}); a key it cannot decide "
                        "within it makes its seed undecided")
    p.add_argument("--allow-undecided", action="store_true",
                   help="exit 0 even if the linearizability of some seed stays undecided "
                        "(they are still reported)")
    args = p.parse_args(argv)
    import logging
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("raftcore").setLevel(args.log.upper())
    if args.nodes < 1:
        p.error("--nodes must be at least 1")
    if args.lin_budget < 1:
        p.error("--lin-budget must be a positive number of search steps")
    kinds = FAULT_KINDS
    if args.faults:
        kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
        unknown = sorted(set(kinds) - set(FAULT_KINDS))
        if unknown:
            p.error(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")
    settings = SimSettings(nodes=args.nodes, duration=args.duration, bugs=tuple(args.bug),
                           fault_kinds=kinds, fault_interval=args.fault_interval,
                           spares=2 if args.nodes > 1 else 0, lin_budget=args.lin_budget,
                           workload=args.workload)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    faults: collections.Counter = collections.Counter()
    ops = failed = undecided = undecided_keys = stalled = 0
    t0 = time.perf_counter()
    for seed in seeds:
        r = run_seed(seed, settings)
        faults.update(r.faults)
        ops += r.ops
        if not r.ok:
            failed += 1
            print(f"seed {seed}: VIOLATION: {r.violation}")
            print(f"  reproduce: {_reproduce_command(seed, args, kinds)}")
            print("  last events:")
            for line in r.trace[-40:]:
                print("   ", line)
        elif r.lin_unknown:
            undecided += 1
            undecided_keys += r.lin_unknown
            print(f"seed {seed}: UNDECIDED: {r.undecided}")
            print(f"  reproduce: {_reproduce_command(seed, args, kinds)} "
                  f"(or try a larger --lin-budget)")
        elif args.seed is not None:
            for line in r.trace:
                print("   ", line)
        if r.ok and r.stalled:
            stalled += 1
            print(f"seed {seed}: no leader after healing, as designed: {r.stalled}")
    dt = time.perf_counter() - t0
    print(f"seeds run: {len(seeds)}, violations: {failed}, undecided: {undecided} seeds "
          f"({undecided_keys} keys), stalled as designed: {stalled}, operations checked: {ops}, "
          f"{dt:.1f}s")
    print("faults injected: " + ", ".join(f"{k} {faults[k]}" for k in FAULT_KINDS))
    return 1 if failed or (undecided and not args.allow_undecided) else 0


def _reproduce_command(seed: int, args: argparse.Namespace, kinds: tuple) -> str:
    """The command that replays `seed` with the settings of this run."""
    cmd = (f"raftcore sim --seed {seed} --nodes {args.nodes} --duration {args.duration}"
           + "".join(f" --bug {b}" for b in args.bug))
    if args.faults:
        cmd += f" --faults {','.join(kinds)}"
    cmd += f" --fault-interval {args.fault_interval}"
    if args.workload != "kv":
        cmd += f" --workload {args.workload}"
    if args.lin_budget != lincheck.DEFAULT_BUDGET:
        cmd += f" --lin-budget {args.lin_budget}"
    return cmd

