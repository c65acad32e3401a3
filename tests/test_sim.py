"""The deterministic simulator: virtual time, replay, fault coverage, and
proof that its checks catch known-bad behaviours."""
from __future__ import annotations

import asyncio

import pytest

from raftcore.testing import sim, virtual_loop
from raftcore.testing.virtual_loop import SimulationStalled, VirtualTimeLoop

SHORT = sim.SimSettings(duration=5.0)


def test_virtual_loop_jumps_to_the_next_timer_and_keeps_deadline_order():
    order = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(3600.0, order.append, "hour")
        loop.call_later(0.5, order.append, "half")
        t0 = loop.time()
        await asyncio.sleep(7200)
        return loop.time() - t0

    assert virtual_loop.run(main()) == 7200.0
    assert order == ["half", "hour"]


def test_virtual_loop_reports_a_stall_instead_of_hanging():
    async def main():
        await asyncio.get_running_loop().create_future()   # nothing will ever set it

    with pytest.raises(SimulationStalled):
        virtual_loop.run(main())


def test_inline_executor_runs_blocking_work_at_once():
    async def main():
        return await virtual_loop.inline_executor(sum, [1, 2, 3])

    assert virtual_loop.run(main()) == 6


def test_a_seed_replays_exactly():
    a = sim.run_seed(3, SHORT)
    b = sim.run_seed(3, SHORT)
    assert a.ok and b.ok, a.violation or b.violation
    assert a.trace == b.trace and a.ops == b.ops and a.faults == b.faults
    assert a.ops > 100


def test_seeds_pass_every_check_and_inject_every_fault_kind():
    faults = {}
    for seed in range(1, 9):
        r = sim.run_seed(seed, SHORT)
        assert r.ok, f"seed {seed}: {r.violation}\n" + "\n".join(r.trace[-30:])
        assert r.lin_unknown == 0, f"seed {seed}: linearizability undecided"
        for k, n in r.faults.items():
            faults[k] = faults.get(k, 0) + n
    missing = [k for k in sim.FAULT_KINDS if not faults.get(k)]
    assert not missing, f"fault kinds never injected: {missing}"


#: Each bug with the faults that expose it: a vote check needs elections, a
#: stale read needs a deposed leader, an early ack needs power cuts.
BUG_CASES = [
    ("double_vote", "voted for", sim.FAULT_KINDS),
    ("unconfirmed_reads", "not linearizable",
     ("isolate", "partition", "one_way", "drop", "crash_leader")),
    ("ack_before_flush", "", ("power_loss", "crash", "crash_leader", "drop")),
]


@pytest.mark.parametrize("bug, expect, faults", BUG_CASES, ids=[c[0] for c in BUG_CASES])
def test_the_checks_catch_a_known_bad_behaviour_within_ten_seeds(bug, expect, faults):
    settings = sim.SimSettings(duration=5.0, bugs=(bug,), fault_kinds=faults,
                               fault_interval=0.3)
    caught = []
    for seed in range(1, 11):
        r = sim.run_seed(seed, settings)
        if not r.ok:
            caught.append((seed, r.violation))
            break
    assert caught, f"{bug} went unnoticed in 10 seeds"
    assert expect in caught[0][1]


def test_settings_reject_an_unknown_fault_kind(capsys):
    with pytest.raises(SystemExit):
        sim.main(["--seeds", "1", "--faults", "meteor"])
    assert "unknown fault kinds" in capsys.readouterr().err


def test_command_line_prints_a_summary(capsys):
    assert sim.main(["--seeds", "1", "--duration", "2"]) == 0
    out = capsys.readouterr().out
    assert "seeds run: 1, violations: 0" in out and "faults injected:" in out
