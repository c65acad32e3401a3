"""The embedding layer under simulation (workloads "dict" and "lock").

Each node's state machine is raftcore.embed's ReplicatedStateMachine holding
a ReplDict or a ReplLock, and clients call them through an EmbeddedNode on a
random live node, as a service would: sessions and retries, forwarding from
followers to the leader (over the simulated network), read barriers, and the
leader's tick entries. Entries are stamped with the simulation's clock (the
virtual loop's), so a seed replays exactly. Operations go into a lincheck
history: the dict's into the key-value model (ReplDict's set, delete, cas
and get are that model's), the lock's into lincheck.lock's model.

What a call's outcome means to the history: a result is a completed
operation; Timeout ("surely not applied", says the layer) drops it, so a
layer that was wrong about that shows as a violation; OutcomeUnknown and
any other error make it indeterminate.
"""
from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any, Callable, Optional

from raftcore.embed import EmbeddedNode, ReplDict, ReplLock
from raftcore.embed.forwarding import LeaderService
from raftcore.embed.replicated import ReplicatedStateMachine
from raftcore.errors import InvalidCommand, NetworkError, RaftError, Timeout
from raftcore.model import Node
from raftcore.testing.sim.state_machine import ReportsApplied

if TYPE_CHECKING:
    from raftcore.testing.sim.checker import Checker

#: The workloads: the key-value store of raftcore itself, and two of the
#: embedding layer's replicated objects.
WORKLOADS = ("kv", "dict", "lock")
#: Seconds between the leader's tick entries (a lock's leases expire).
TICK_INTERVAL = 0.1
_OBJECTS: dict[str, Callable[[], Any]] = {"dict": ReplDict, "lock": ReplLock}
#: What embed_call returns when the call gave no result.
NO_RESULT = object()


class SimReplicatedStateMachine(ReportsApplied, ReplicatedStateMachine):
    """ReplicatedStateMachine that reports every applied entry to the
    checker, with the simulator's durable-snapshot behaviour (a crash keeps
    the current snapshot, as a snapshot file would)."""

    def __init__(self, node_id: int, checker: "Checker", workload: str) -> None:
        super().__init__({workload: _OBJECTS[workload]()})
        self.node_id = node_id
        self.checker = checker
        self.workload = workload

    def restarted(self) -> "SimReplicatedStateMachine":
        """What the node finds after a restart: only its snapshot."""
        sm = SimReplicatedStateMachine(self.node_id, self.checker, self.workload)
        if self._snapshot is not None:
            sm._load(self._snapshot.meta, self._snapshot.data)
        return sm


class SimForwarder:
    """EmbeddedNode's forwarding over the simulated network: latency,
    partitions, losses and paused nodes apply, as to Raft's own messages."""

    def __init__(self, sim: Any, src: int) -> None:
        self.sim = sim
        self.src = src

    async def request(self, target: int, node: Optional[Node], msg: list) -> list:
        net = self.sim.net
        await net._hop(self.src, target)
        service = self.sim.services.get(target)
        if service is None or target in self.sim.down or not net.passes(self.src, target):
            raise NetworkError(f"forwarded call {self.src}->{target} lost")
        reply = await service.handlers()[msg[0]](msg)
        await net._hop(target, self.src)
        if not net.passes(target, self.src):
            raise NetworkError(f"reply {target}->{self.src} to a forwarded call lost")
        return reply

    async def close(self) -> None:
        pass


class EmbedWorkload:
    """Simulation's clients of the embedding layer (a mixin: it uses
    Simulation's state)."""

    def embed_node(self, i: int, raft: Any, disk: Any, sm: SimReplicatedStateMachine) -> None:
        """Wraps node i's new incarnation in an EmbeddedNode."""
        clock = asyncio.get_running_loop().time
        self.incarnations[i] = self.incarnations.get(i, 0) + 1
        node = EmbeddedNode(raft, None, disk, sm, SimForwarder(self, i), self.s.op_timeout,
                            clock=clock, client_id=f"{i}.{self.incarnations[i]}")
        node.start_ticks(TICK_INTERVAL)
        self.embedded[i] = node
        self.services[i] = LeaderService(raft, clock)

    async def embed_client(self, cid: int) -> None:
        rng = random.Random(self.rng.random())
        counter = 0
        while not self.stop:
            live = [i for i in sorted(self.embedded) if i not in self.down]
            if not live:
                await asyncio.sleep(0.05)      # every node is down
                continue
            node = self.embedded[rng.choice(live)]
            counter += 1
            if self.s.workload == "dict":
                await self.dict_op(cid, node, rng, counter)
            else:
                await self.lock_round(cid, node, rng)
            await asyncio.sleep(rng.uniform(0.0, 0.01))

    # ------------------------------------------------------------- dict

    async def dict_op(self, cid: int, node: EmbeddedNode, rng: random.Random,
                      counter: int) -> None:
        key = f"k{rng.randrange(self.s.keys)}"
        r = rng.random()
        new = f"c{cid}-{counter}"
        if r < 0.4:
            await self.embed_call(cid, node, "set", key, (new,), "set", [key, new])
        elif r < 0.5:
            await self.embed_call(cid, node, "delete", key, (), "delete", [key])
        elif r < 0.7:
            expected = node.state_machine.objects["dict"].items.get(key)  # maybe stale
            if rng.random() < 0.3:
                expected = rng.choice([None, f"c{rng.randrange(self.s.clients)}-{counter - 1}"])
            await self.embed_call(cid, node, "cas", key, (expected, new), "cas",
                                  [key, expected, new])
        else:
            await self.embed_read(cid, node, "read", key, "get", [key], rng)

    # ------------------------------------------------------------- lock

    async def lock_round(self, cid: int, node: EmbeddedNode, rng: random.Random) -> None:
        """Takes a lock, renews it a few times (reading its holder before
        each renewal), then releases it or walks away (its lease then runs
        out on the leader's ticks); refused, reads the holder."""
        name = f"L{rng.randrange(max(1, self.s.keys // 2))}"
        me = f"c{cid}"
        if rng.random() < 0.2:
            await self.embed_read(cid, node, "holder", name, "holder", [name], rng)
            return
        lease = rng.choice((0.05, 0.2, 0.5))
        got = await self.embed_call(cid, node, "acquire", name, (me, lease), "acquire",
                                    [name, me, lease])
        if not (isinstance(got, list) and got[0] is True):
            # Refused: it looks who holds the lock, then waits a little.
            await self.embed_read(cid, node, "holder", name, "holder", [name], rng)
            await asyncio.sleep(rng.uniform(0.0, 0.1))
            return
        token = got[1]
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(rng.uniform(0.0, lease))
            # The holder looks before it renews (as a job checks it still
            # leads): reads while the lock changes hands are what show a
            # stale read.
            await self.embed_read(cid, node, "holder", name, "holder", [name], rng)
            if self.stop or await self.embed_call(cid, node, "renew", name,
                                                  (me, token, lease), "renew",
                                                  [name, me, token, lease]) is not True:
                return
        if rng.random() < 0.7:
            await self.embed_call(cid, node, "release", name, (me, token), "release",
                                  [name, me, token])

    # --------------------------------------------------------- recording

    async def embed_call(self, cid: Any, node: EmbeddedNode, kind: str, key: Any,
                         args: tuple, method: str, call_args: list) -> Any:
        """Calls a command through `node`, recorded as `kind` on `key`;
        returns its result (NO_RESULT when it gave none)."""
        loop = asyncio.get_running_loop()
        tok = self.history.invoke(cid, kind, key, args, now=loop.time())
        self.ops += 1
        try:
            result = await node.call(self.s.workload, method, call_args)
        except Timeout:
            self.history.fail(tok)          # the layer says: surely not applied
        except InvalidCommand as exc:
            self.history.fail(tok)
            self.checker.fail(f"client {cid}: {kind} on {key!r} refused: {exc}")
        except RaftError:
            self.history.indeterminate(tok)     # may take effect, even later
        else:
            self.history.complete(tok, result, now=loop.time())
            return result
        return NO_RESULT

    async def embed_read(self, cid: Any, node: EmbeddedNode, kind: str, key: Any,
                         method: str, call_args: list, rng: random.Random) -> None:
        loop = asyncio.get_running_loop()
        tok = self.history.invoke(cid, kind, key, (), now=loop.time())
        self.ops += 1
        read = "lease" if rng.random() < 0.5 else "linearizable"
        try:
            result = await node.query(self.s.workload, method, call_args, read)
        except RaftError:
            self.history.fail(tok)          # a read that did not happen changes nothing
            return
        self.history.complete(tok, result, now=loop.time())

    def embed_script_write(self, tag: str, i: int, key: str) -> Any:
        """A write of a scripted fault (figure8) through node i."""
        node = self.embedded[i]
        if self.s.workload == "dict":
            return self.embed_call(tag, node, "set", key, (tag,), "set", [key, tag])
        name = f"L{int(key[1:]) % max(1, self.s.keys // 2)}"
        return self.embed_call(tag, node, "acquire", name, (tag, 0.5), "acquire",
                               [name, tag, 0.5])

    async def embed_final_write_and_read(self, leader: Any) -> bool:
        """Liveness: a command and a read through the leader's node."""
        node = self.embedded[leader.id]
        self.final_attempts += 1
        if self.s.workload == "dict":
            value = f"done-{self.final_attempts}"
            ok = await self.embed_call("final", node, "set", "final", (value,), "set",
                                       ["final", value]) is not NO_RESULT
        else:
            got = await self.embed_call("final", node, "acquire", "final", ("final", 1.0),
                                        "acquire", ["final", "final", 1.0])
            ok = isinstance(got, list) and got[0] is True
        if not ok:
            return False
        try:
            await node.query(self.s.workload, "get" if self.s.workload == "dict" else "holder",
                             ["final"])
        except RaftError:
            return False
        return True
