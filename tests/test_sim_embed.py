"""The embedding layer's replicated objects under the simulator's faults
(`raftcore sim --workload dict|lock`), and the lock model of the
linearizability checker (raftcore.testing.lincheck.lock)."""
from __future__ import annotations

import pytest

from raftcore.testing import sim
from raftcore.testing.lincheck.lock import LockHistory, LockOp, check_lock

# Seed ranges of their own: no other test uses them, and the hand runs of
# hundreds of seeds go from 18000000 (dict) and 18500000 (lock).
DICT_SEEDS = range(18990000, 18990002)
LOCK_SEEDS = range(18995000, 18995002)


def _settings(workload: str, **kw) -> sim.SimSettings:
    return sim.SimSettings(**{"duration": 3.0, "workload": workload, **kw})


@pytest.mark.parametrize("workload, seeds", [("dict", DICT_SEEDS), ("lock", LOCK_SEEDS)])
def test_replicated_objects_pass_every_check_under_faults(workload, seeds):
    for seed in seeds:
        r = sim.run_seed(seed, _settings(workload))
        assert r.ok, f"{workload} seed {seed}: {r.violation}\n" + "\n".join(r.trace[-30:])
        assert r.lin_unknown == 0, f"{workload} seed {seed}: linearizability undecided"
        assert r.ops >= 10, f"{workload} seed {seed}: only {r.ops} operations"


@pytest.mark.parametrize("workload, seed", [("dict", 18990010), ("lock", 18995010)])
def test_an_embed_seed_replays_exactly(workload, seed):
    a = sim.run_seed(seed, _settings(workload, duration=1.5))
    b = sim.run_seed(seed, _settings(workload, duration=1.5))
    assert a.trace == b.trace and a.ops == b.ops and a.ok == b.ok


# The engine's unconfirmed_reads bug: a deposed leader answers reads without
# asking a quorum; a dict get, or a lock's holder read, misses a newer write
# (for the lock, an acquire whose lease still runs). Three seeds from the
# first given: the third shows it.
@pytest.mark.parametrize("workload, first", [("dict", 18000100), ("lock", 18000217)])
def test_stale_reads_are_caught_by_the_linearizability_check(workload, first):
    settings = _settings(workload, bugs=("unconfirmed_reads",), fault_interval=0.3,
                         duration=5.0, fault_kinds=("isolate", "partition", "one_way", "drop",
                                                    "crash_leader"))
    caught = [r for r in (sim.run_seed(s, settings) for s in range(first, first + 3))
              if not r.ok]
    assert caught and "not linearizable" in caught[0].violation, caught


def test_lost_lock_entries_are_caught():
    # commit_prev_term (Figure 8 of the Raft paper) loses committed entries,
    # the lock's acquires among them.
    settings = _settings("lock", bugs=("commit_prev_term",), fault_kinds=("figure8",),
                         fault_interval=0.3)
    r = sim.run_seed(18500300, settings)
    assert not r.ok and "leader completeness" in r.violation, r.violation


def test_command_line_runs_the_lock_workload_and_names_it_in_the_reproduce_command(capsys):
    assert sim.main(["--seed", "18995020", "--duration", "2", "--workload", "lock"]) == 0
    assert "violations: 0" in capsys.readouterr().out
    assert sim.main(["--seed", "18500300", "--duration", "3", "--workload", "lock",
                     "--faults", "figure8", "--bug", "commit_prev_term",
                     "--fault-interval", "0.3"]) == 1
    out = capsys.readouterr().out
    assert "--workload lock" in out and "VIOLATION" in out


# ------------------------------------------------------------ lock model

T = True


def acq(client, lock, lease, call, ret, result, holder=None):
    return LockOp(client, "acquire", lock, (holder or client, lease), call, ret, result)


def test_lock_model_refuses_two_holders_at_once():
    ops = [acq("c1", "x", 10, 0, 1, [T, 5]), acq("c2", "x", 10, 2, 3, [T, 9])]
    res = check_lock(ops)
    assert res.ok is False
    assert "NOT linearizable" in res.explanation and "acquire('x', 'c2', 10)" in res.explanation


def test_lock_model_lets_another_holder_take_an_expired_lease():
    assert check_lock([acq("c1", "x", 1, 0, 1, [T, 5]), acq("c2", "x", 1, 3, 4, [T, 9])]).ok


def test_lock_model_refuses_a_token_that_does_not_grow():
    assert check_lock([acq("c1", "x", 1, 0, 1, [T, 9]),
                       acq("c2", "x", 1, 3, 4, [T, 5])]).ok is False
    # The same holder taking its live lock again keeps its token.
    assert check_lock([acq("c1", "x", 10, 0, 1, [T, 5]),
                       acq("c1", "x", 10, 2, 3, [T, 6])]).ok is False
    assert check_lock([acq("c1", "x", 10, 0, 1, [T, 5]), acq("c1", "x", 10, 2, 3, [T, 5])]).ok


def test_lock_model_reads_and_renewals():
    base = [acq("c1", "x", 10, 0, 1, [T, 5]),
            LockOp("c1", "release", "x", ("c1", 5), 1, 2, True),
            acq("c2", "x", 10, 2, 3, [T, 9])]
    assert check_lock(base + [LockOp("c3", "holder", "x", (), 4, 5, ["c2", 9])]).ok
    assert check_lock(base + [LockOp("c3", "holder", "x", (), 4, 5, ["c1", 5])]).ok is False
    renewed = [acq("c1", "x", 1, 0, 0.1, [T, 5]),
               LockOp("c1", "renew", "x", ("c1", 5, 1), 0.5, 0.6, True)]
    assert check_lock(renewed + [acq("c2", "x", 1, 1.2, 1.3, [False, "c1"])]).ok
    late = [acq("c1", "x", 1, 0, 0.1, [T, 5]),
            LockOp("c1", "renew", "x", ("c1", 5, 1), 3, 4, True)]
    assert check_lock(late).ok is False


def test_lock_model_indeterminate_acquire_may_or_may_not_have_happened():
    h = LockHistory()
    t = h.invoke("c1", "acquire", "x", ("c1", 10), now=0)
    h.indeterminate(t)
    t = h.invoke("c2", "acquire", "x", ("c2", 10), now=2)
    h.complete(t, [False, "c1"], now=3)
    t = h.invoke("c3", "holder", "x", (), now=4)
    h.complete(t, ["c1", 7], now=5)
    assert check_lock(h).ok
    # Without it, nobody held the lock: refusing c2 was wrong.
    assert check_lock([acq("c2", "x", 10, 2, 3, [False, "c1"])]).ok is False


def test_lock_history_refuses_an_operation_of_another_model():
    with pytest.raises(ValueError, match="acquire"):
        LockHistory().invoke("c1", "set", "x", (1,))
    with pytest.raises(ValueError, match=r"\(holder, token\)"):
        LockHistory().invoke("c1", "release", "x", ("c1",))
