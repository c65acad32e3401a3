"""SimNetwork: the in-process router with latency, loss, duplication and pauses."""
from __future__ import annotations

import asyncio
import random
from typing import Any

from raftcore.errors import NetworkError, RaftError
from raftcore.network.local import LocalRouter
from raftcore.types import ENTRY_BLANK

def _carries_blank(req: Any) -> bool:
    entries = getattr(req, "entries", None)
    return bool(entries) and any(e.kind == ENTRY_BLANK for e in entries)



class SimNetwork(LocalRouter):
    """LocalRouter with per-message random latency (hence reordering),
    duplication, paused nodes and message filters; every delivery goes
    through a task.

    A filter is a predicate f(src, dst, handler_name, request); a request
    it returns true for is lost. Scripted faults use them to lose exactly
    the messages a schedule needs lost."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self._rng = rng
        self.dup_rate = 0.0
        self.blank_loss = 0.0     # chance to lose a request carrying a new term's blank entry
        self.paused: dict[int, asyncio.Event] = {}
        self.filters: list = []

    def deliver_nowait(self, src, dst, req, reply):
        return False          # always the asynchronous path: latency applies

    async def _hop(self, a: int, b: int) -> None:
        await asyncio.sleep(self._rng.uniform(0.0002, 0.004))
        for n in (a, b):
            ev = self.paused.get(n)
            if ev is not None:
                await ev.wait()

    async def deliver(self, src, dst, handler_name, req):
        await self._hop(src, dst)
        target = self.node(dst)
        if (target is None or not self.passes(src, dst)
                or (self.blank_loss and _carries_blank(req)
                    and self._rng.random() < self.blank_loss)
                or any(f(src, dst, handler_name, req) for f in self.filters)):
            self.dropped += 1
            raise NetworkError(f"message {src}->{dst} lost")
        if self.dup_rate and self._rng.random() < self.dup_rate:
            asyncio.ensure_future(self._duplicate(target, handler_name, req))
        resp = await getattr(target, handler_name)(req)
        await self._hop(dst, src)
        if not self.passes(dst, src):
            self.dropped += 1
            raise NetworkError(f"response {dst}->{src} lost")
        self.delivered += 1
        return resp

    async def _duplicate(self, target, handler_name, req):
        await asyncio.sleep(self._rng.uniform(0.0, 0.02))
        try:
            await getattr(target, handler_name)(req)
        except RaftError:
            pass

