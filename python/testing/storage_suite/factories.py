"""The suite's factories (how it makes the stores under test) and its failure."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Union

from raftcore.storage.base import LogStore, StateMachine


#: Failure guard for a flush to be reported; never a means of waiting.
FLUSH_GUARD = 30.0


class SuiteFailure(AssertionError):
    """One or more conformance checks failed; the message lists them."""


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


@dataclass
class LogStoreFactory:
    """Makes log stores for the suite: `new()` a fresh empty one, and
    optionally `reopen(old)` one over the data `old` persisted (old is closed)."""

    new: Callable[[], Union[LogStore, Awaitable[LogStore]]]
    reopen: Optional[Callable[[LogStore], Union[LogStore, Awaitable[LogStore]]]] = None

    async def make(self) -> LogStore:
        return await _maybe_await(self.new())

    async def cycle(self, store: LogStore) -> LogStore:
        """Closes and reopens `store` when the factory can; else returns it."""
        if self.reopen is None:
            return store
        await store.close()
        return await _maybe_await(self.reopen(store))


def _default_command(i: int) -> Any:
    # MemStateMachine's set: responses differ (previous values), keys repeat.
    return ["set", f"key{i % 4}", i]


@dataclass
class StateMachineFactory:
    """Makes fresh state machines for the suite; `command(i)` makes the
    payload of the i-th normal entry (default: MemStateMachine's
    ``["set", key, value]``); `reopen(old)`, when given, makes the state
    machine a restarted process would make over what `old` persisted (as
    the application creates it on start-up). Without `reopen`, a machine
    that reports a durable snapshot fails the durability check: the suite
    cannot see it survive a restart."""

    new: Callable[[], Union[StateMachine, Awaitable[StateMachine]]]
    command: Callable[[int], Any] = _default_command
    reopen: Optional[Callable[[StateMachine],
                              Union[StateMachine, Awaitable[StateMachine]]]] = None

    async def make(self) -> StateMachine:
        return await _maybe_await(self.new())


def _log_factory(f: Any) -> LogStoreFactory:
    return f if isinstance(f, LogStoreFactory) else LogStoreFactory(f)


def _sm_factory(f: Any, command: Optional[Callable] = None,
                reopen: Optional[Callable] = None) -> StateMachineFactory:
    if isinstance(f, StateMachineFactory):
        return f
    return StateMachineFactory(f, command or _default_command, reopen)
