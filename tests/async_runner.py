"""The one way tests run an async body: on a fresh uvloop loop, under a
whole-test guard (a hang fails that test instead of stalling the suite).

Tests import it by name (conftest.py puts this folder on sys.path).
"""
from __future__ import annotations

import asyncio
import functools
from typing import Any, Awaitable, Callable

import uvloop


def run_guarded(awaitable: Awaitable, guard: float, *, loop_errors_fail: bool = False) -> Any:
    """Runs `awaitable` on a fresh uvloop loop, cancelled after `guard`
    seconds, and returns its result. With `loop_errors_fail`, the test also
    fails if anything reached the loop's exception handler (an error in a
    callback or a task nobody awaited: a transport must not leave those)."""
    errors: list = []

    async def guarded():
        if loop_errors_fail:
            asyncio.get_running_loop().set_exception_handler(
                lambda loop, ctx: errors.append(ctx))
        return await asyncio.wait_for(awaitable, guard)
    result = uvloop.run(guarded())
    assert not errors, f"unhandled errors in the event loop: {errors}"
    return result


def async_test(guard: float, *, loop_errors_fail: bool = False) -> Callable:
    """Decorator: a plain test function that runs the decorated coroutine
    function (with the test's arguments) through run_guarded."""
    def decorate(fn: Callable[..., Awaitable]) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return run_guarded(fn(*args, **kwargs), guard, loop_errors_fail=loop_errors_fail)
        return wrapper
    return decorate
