"""The clients' workload: random writes, compare-and-sets and linearizable
reads, each recorded in the history lincheck checks."""
from __future__ import annotations

import asyncio
import random

from raftcore.errors import ForwardToLeader, OutcomeUnknown, RaftError
from raftcore.model import ReadPolicy


class ClientWorkload:
    """Simulation's clients (a mixin: it uses Simulation's state)."""

    async def client(self, cid: int) -> None:
        rng = random.Random(self.rng.random())
        counter = 0
        while not self.stop:
            live = self.live()
            if not live:
                await asyncio.sleep(0.05)      # every node is down
                continue
            node = self.leader_guess() or rng.choice(live)
            key = f"k{rng.randrange(self.s.keys)}"
            r = rng.random()
            counter += 1
            if r < 0.5:
                value = f"c{cid}-{counter}"
                await self.write(cid, node, "set", key, (value,), ["set", key, value])
            elif r < 0.7:
                expected = rng.choice([None, f"c{rng.randrange(self.s.clients)}-{counter - 1}"])
                cur = node.state_machine.get(key)
                if rng.random() < 0.5:
                    expected = cur
                new = f"c{cid}-{counter}"
                await self.write(cid, node, "cas", key, (expected, new),
                                 ["cas", key, expected, new])
            else:
                await self.read(cid, node, key, rng)
            await asyncio.sleep(rng.uniform(0.0, 0.01))

    async def write(self, cid, node, kind, key, args, cmd) -> None:
        loop = asyncio.get_running_loop()
        tok = self.history.invoke(cid, kind, key, args, now=loop.time())
        self.ops += 1
        try:
            resp = await asyncio.wait_for(node.client_write(cmd), self.s.op_timeout)
        except ForwardToLeader:
            self.history.fail(tok)          # never proposed, or its entry was replaced
            self.checker.write_refused(cid, cmd)
        except (asyncio.TimeoutError, OutcomeUnknown, RaftError):
            self.history.indeterminate(tok)     # may take effect, even later
        else:
            self.history.complete(tok, resp.data, now=loop.time())

    async def read(self, cid, node, key, rng) -> None:
        loop = asyncio.get_running_loop()
        tok = self.history.invoke(cid, "read", key, (), now=loop.time())
        self.ops += 1
        policy = ReadPolicy.LEASE_READ if rng.random() < 0.5 else ReadPolicy.READ_INDEX
        try:
            await asyncio.wait_for(node.ensure_linearizable(policy), self.s.op_timeout)
        except (asyncio.TimeoutError, RaftError):
            self.history.fail(tok)          # a read that did not happen changes nothing
            return
        self.history.complete(tok, node.state_machine.get(key), now=loop.time())
