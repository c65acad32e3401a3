"""Storage conformance suite: checks any LogStore or StateMachine against the
contracts in raftcore.storage.base (openraft's testing::Suite, for raftcore).

Run everything at once::

    from raftcore.testing.storage_suite import (
        LogStoreFactory, run_log_store_suite, run_state_machine_suite)

    await run_log_store_suite(LogStoreFactory(
        new=lambda: MyLogStore(fresh_dir()),           # a fresh, empty store
        reopen=lambda old: MyLogStore(old.path)))      # optional: same data, new object
    await run_state_machine_suite(MyStateMachine, command=lambda i: my_command(i))

or expose each check as its own pytest test::

    from raftcore.testing.storage_suite import LOG_STORE_CHECKS

    @pytest.mark.parametrize("check", [c for _, c in LOG_STORE_CHECKS],
                             ids=[n for n, _ in LOG_STORE_CHECKS])
    def test_my_log_store(check, tmp_path):
        asyncio.run(check(my_factory(tmp_path)))

Factories. `new()` returns a fresh, empty store (or an awaitable of one).
`reopen(store)`, when given, returns a store over what `store` persisted; the
suite has awaited `store.close()` before, and has waited for every append it
relies on to be reported flushed. With `reopen`, every log store check
verifies its state again after reopening (durability); an in-memory store
that outlives a node may return the same object. A check that needs it does
nothing extra without it.

What is checked. Log stores: vote save and read; append and read ranges;
reads see appends at once, before they are flushed; on_flushed is called
once per append, in order; gaps and overlaps are refused; truncate_after at
several points; purge at several points (including past the last entry); the
log state after purges and truncations; the initial state a node recovers
from the store (vote, log, a conflicting tail overwritten, a log ahead of or
behind the state machine); membership recovered from the log or, once purged
from it, from the state machine; the optional committed log id; the store's
identity (an incarnation made with the store, kept across reopens and new
for a new store, and a durable cluster id). State
machines: applying single and multiple entries, blank and membership entries
(None responses), mixed batches, applied_state, that batching does not
change responses, and the durability contract: a snapshot reported by
durable_snapshot() is there after a restart (`reopen`).

The "initial state" and "membership recovered" checks start a real node
(`Raft.create` on a LocalRouter, with ticks off so nothing moves) on the
stores and read its metrics: recovery is the runtime's work, so this checks
what a node actually gets from the store. The log store checks pair the store
under test with a MemStateMachine; the state machine checks pair the machine
under test with a MemLogStore.

State machine snapshots: build, carry the bytes in chunks to a fresh
machine, install, compare applied state, membership and later answers.

Not covered: log reads from a separate reader object (raftcore's LogStore
has no separate reader).

Modules: factories (LogStoreFactory, StateMachineFactory, SuiteFailure),
log_checks (the store alone), recovery_checks (what a node recovers from
it), sm_checks (state machines), runner (the check lists and runners),
helpers (what the checks share).
"""
from __future__ import annotations

from raftcore.testing.storage_suite.factories import (LogStoreFactory, StateMachineFactory,
                                                     SuiteFailure)
from raftcore.testing.storage_suite.runner import (LOG_STORE_CHECKS, STATE_MACHINE_CHECKS,
                                                  run_log_store_suite, run_state_machine_suite)

__all__ = [
    "LogStoreFactory", "StateMachineFactory", "SuiteFailure",
    "LOG_STORE_CHECKS", "STATE_MACHINE_CHECKS",
    "run_log_store_suite", "run_state_machine_suite",
]
