"""Deadlines: one timer bounds every call of a node (raftcore.embed.deadlines)."""
from __future__ import annotations

import asyncio

import pytest

from async_runner import async_test
from raftcore.embed.deadlines import Deadlines

GUARD = 30.0


@async_test(GUARD)
async def test_an_attempt_past_its_deadline_times_out_and_the_others_finish():
    loop = asyncio.get_running_loop()
    d = Deadlines(loop)
    never = loop.create_future()
    release = asyncio.Event()

    async def answer(value):
        await release.wait()
        return value

    stuck = asyncio.ensure_future(d.bounded(never, loop.time() + 0.05))
    quick = [asyncio.ensure_future(d.bounded(answer(i), loop.time() + 60)) for i in range(50)]
    with pytest.raises(asyncio.TimeoutError):
        await stuck
    assert not any(t.done() for t in quick)      # later deadlines: still waiting
    release.set()
    assert await asyncio.gather(*quick) == list(range(50))
    assert d._heap == []                          # nothing left behind


@async_test(GUARD)
async def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    loop = asyncio.get_running_loop()
    d = Deadlines(loop)
    t = asyncio.ensure_future(d.bounded(loop.create_future(), loop.time() + 60))
    await asyncio.sleep(0)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    # A retry keeps its call's earlier deadline: it still expires on time.
    late = asyncio.ensure_future(d.bounded(loop.create_future(), loop.time() + 60))
    early = asyncio.ensure_future(d.bounded(loop.create_future(), loop.time() + 0.05))
    with pytest.raises(asyncio.TimeoutError):
        await early
    assert not late.done()
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
