"""The suite's check lists (in run order) and the runners that run them all."""
from __future__ import annotations

import traceback
from typing import Any, Awaitable, Callable, Optional, Union

from raftcore.testing.storage_suite.factories import (LogStoreFactory, StateMachineFactory,
                                                     SuiteFailure, _log_factory, _sm_factory)
from raftcore.testing.storage_suite.log_checks import (
    check_append_and_read_ranges, check_append_refuses_gaps_and_overlaps,
    check_committed_round_trip, check_identity, check_initial_state,
    check_log_state_after_purge_and_truncate, check_on_flushed_once_per_append_in_order,
    check_purge_at_several_points, check_reads_see_appends_before_flush,
    check_save_and_read_vote, check_truncate_after_at_several_points,
    check_truncate_twice_and_unflushed)
from raftcore.testing.storage_suite.recovery_checks import (
    check_initial_state_conflicting_tail_overwritten, check_initial_state_from_vote_and_log,
    check_initial_state_log_ahead_of_state_machine,
    check_initial_state_state_machine_ahead_of_log, check_membership_from_log,
    check_membership_from_state_machine, check_membership_log_newer_than_state_machine)
from raftcore.testing.storage_suite.sm_checks import (
    sm_check_apply_blank, sm_check_apply_membership, sm_check_apply_mixed_batch,
    sm_check_apply_multiple, sm_check_apply_single, sm_check_batching_does_not_change_responses,
    sm_check_durable_snapshot_survives_restart, sm_check_initial_applied_state,
    sm_check_membership_recovered_from_state_machine, sm_check_snapshot_build_transfer_install,
    sm_check_snapshot_of_nothing_is_refused_or_empty)


LOG_STORE_CHECKS: list[tuple[str, Callable[[LogStoreFactory], Awaitable[None]]]] = [
    (fn.__name__[len("check_"):], fn) for fn in (
        check_initial_state,
        check_identity,
        check_save_and_read_vote,
        check_append_and_read_ranges,
        check_append_refuses_gaps_and_overlaps,
        check_on_flushed_once_per_append_in_order,
        check_reads_see_appends_before_flush,
        check_truncate_after_at_several_points,
        check_truncate_twice_and_unflushed,
        check_purge_at_several_points,
        check_log_state_after_purge_and_truncate,
        check_committed_round_trip,
        check_initial_state_from_vote_and_log,
        check_initial_state_conflicting_tail_overwritten,
        check_initial_state_log_ahead_of_state_machine,
        check_initial_state_state_machine_ahead_of_log,
        check_membership_from_log,
        check_membership_from_state_machine,
        check_membership_log_newer_than_state_machine,
    )
]


STATE_MACHINE_CHECKS: list[tuple[str, Callable[[StateMachineFactory], Awaitable[None]]]] = [
    (fn.__name__[len("sm_check_"):], fn) for fn in (
        sm_check_initial_applied_state,
        sm_check_apply_single,
        sm_check_apply_multiple,
        sm_check_apply_blank,
        sm_check_apply_membership,
        sm_check_apply_mixed_batch,
        sm_check_batching_does_not_change_responses,
        sm_check_membership_recovered_from_state_machine,
        sm_check_snapshot_build_transfer_install,
        sm_check_snapshot_of_nothing_is_refused_or_empty,
        sm_check_durable_snapshot_survives_restart,
    )
]


async def _run_all(checks: list, factory: Any, kind: str) -> None:
    failures = []
    for name, check in checks:
        try:
            await check(factory)
        except Exception as exc:
            failures.append((name, exc))
    if failures:
        lines = [f"{len(failures)} of {len(checks)} {kind} checks failed:"]
        for name, exc in failures:
            lines.append(f"--- {name}: {exc!r}")
            lines.append("".join(traceback.format_exception(exc)).rstrip())
        raise SuiteFailure("\n".join(lines)) from failures[0][1]


async def run_log_store_suite(factory: Union[LogStoreFactory, Callable],
                              reopen: Optional[Callable] = None) -> None:
    """Runs every log store check; raises SuiteFailure listing the failed ones.

    `factory` is a LogStoreFactory, or a callable making a fresh store (then
    `reopen` may be given separately)."""
    f = _log_factory(factory)
    if reopen is not None:
        f = LogStoreFactory(f.new, reopen)
    await _run_all(LOG_STORE_CHECKS, f, "log store")


async def run_state_machine_suite(factory: Union[StateMachineFactory, Callable],
                                  command: Optional[Callable[[int], Any]] = None,
                                  reopen: Optional[Callable] = None) -> None:
    """Runs every state machine check; raises SuiteFailure listing the failed
    ones. `command(i)` makes the payload of the i-th normal entry; `reopen`
    as in StateMachineFactory."""
    await _run_all(STATE_MACHINE_CHECKS, _sm_factory(factory, command, reopen),
                   "state machine")
