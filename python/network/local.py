"""LocalRouter: an in-process network between Raft nodes, with fault injection.

Every message is delivered by calling the target's RPC handler (the same one
a TCP server calls) with the message object; nodes share nothing else.
Messages are immutable, so passing them by reference is safe. A delivery to
a node whose runtime is idle runs its handler directly in the sender's task,
with no extra task switch.
"""
from __future__ import annotations

import asyncio
import functools
import random
from typing import Any, Optional

from raftcore.errors import NetworkError
from raftcore.network.base import Network, NetworkClient, Reply


class LocalRouter:
    """Connects Raft nodes living in one process.

    router = LocalRouter(); raft = await Raft.create(1, cfg, router.network(1), ...);
    router.add(1, raft)

    Faults: isolate(node) / restore(node); cut(src, dst) drops src->dst only;
    set_drop_rate(p) loses a fraction of messages (requests and responses);
    set_delay(seconds) delays each delivery. heal() clears all faults.

    Extending: a subclass overrides deliver() (every request the awaited
    way) and deliver_nowait() (the AppendEntries fast path; return False to
    send everything through deliver()), calling super() to deliver, and may
    use node() and passes() (the fault check).
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        self._nodes: dict[int, Any] = {}
        self._nowait: dict[int, Any] = {}     # node -> its append_entries_nowait
        self._isolated: set[int] = set()
        self._cut: set[tuple[int, int]] = set()
        self._drop_rate = 0.0
        self._delay = 0.0
        self._rng = random.Random(seed)
        #: Messages delivered and lost, by kind, for tests and diagnostics.
        self.delivered = 0
        self.dropped = 0

    # -- wiring
    def network(self, node_id: int) -> "LocalNetwork":
        return LocalNetwork(self, node_id)

    def add(self, node_id: int, raft: Any) -> None:
        self._nodes[node_id] = raft
        self._nowait[node_id] = raft.append_entries_nowait

    def remove(self, node_id: int) -> None:
        self._nodes.pop(node_id, None)
        self._nowait.pop(node_id, None)

    # -- faults
    def isolate(self, node_id: int) -> None:
        self._isolated.add(node_id)

    def restore(self, node_id: int) -> None:
        self._isolated.discard(node_id)

    def cut(self, src: int, dst: int) -> None:
        """Loses every message from src to dst (one direction only)."""
        self._cut.add((src, dst))

    def uncut(self, src: int, dst: int) -> None:
        self._cut.discard((src, dst))

    def set_drop_rate(self, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"drop rate must be within [0, 1], got {rate}")
        self._drop_rate = rate

    def set_delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds}")
        self._delay = seconds

    def heal(self) -> None:
        self._isolated.clear()
        self._cut.clear()
        self._drop_rate = 0.0
        self._delay = 0.0

    def passes(self, src: int, dst: int) -> bool:
        """Whether a message from src to dst gets through the injected faults
        (isolation, cuts, the drop rate: drawn once per call)."""
        if src in self._isolated or dst in self._isolated or (src, dst) in self._cut:
            return False
        if self._drop_rate and self._rng.random() < self._drop_rate:
            return False
        return True

    def node(self, node_id: int) -> Any:
        """The node added as `node_id`, or None."""
        return self._nodes.get(node_id)

    # -- delivery: the extension points of subclasses (latency, loss,
    #    recording, ...); an override calls super() to deliver.
    async def deliver(self, src: int, dst: int, handler_name: str, req: Any) -> Any:
        """Carries one request from src to dst: awaits the target's handler
        `handler_name` ("append_entries", "vote", "install_snapshot",
        "transfer_leader") and returns its response, or raises NetworkError
        if the request or its response is lost."""
        if self._delay:
            await asyncio.sleep(self._delay)
        target = self._nodes.get(dst)
        if target is None:
            self.dropped += 1
            raise NetworkError(f"node {dst} is not connected to the router")
        if not self.passes(src, dst):
            self.dropped += 1
            raise NetworkError(f"message {src}->{dst} lost (fault injected)")
        resp = await getattr(target, handler_name)(req)
        if not self.passes(dst, src):
            self.dropped += 1
            raise NetworkError(f"response {dst}->{src} lost (fault injected)")
        self.delivered += 1
        return resp

    def deliver_nowait(self, src: int, dst: int, req: Any, reply: Reply) -> bool:
        """The AppendEntries fast path from src to dst (the contract of
        raftcore.network.base): hands `req` to the target's
        append_entries_nowait, which answers through `reply`, now when it
        is idle. False (declined: deliver() carries it) under a delay, or
        when the target cannot answer without awaiting. An override that
        returns False sends every AppendEntries through deliver()."""
        if self._delay:
            return False
        nowait = self._nowait.get(dst)
        if nowait is None:
            self.dropped += 1
            raise NetworkError(f"node {dst} is not connected to the router")
        if self._isolated or self._cut or self._drop_rate:
            if not self.passes(src, dst):
                self.dropped += 1
                raise NetworkError(f"message {src}->{dst} lost (fault injected)")
            # The answer crosses the faults too, whenever it comes.
            reply = functools.partial(self._answer_through_faults, src, dst, reply)
            return nowait(req, reply)
        if nowait(req, reply):
            self.delivered += 1
            return True
        return False

    def _answer_through_faults(self, src: int, dst: int, reply: Reply, resp: Any,
                               exc: Optional[BaseException]) -> None:
        if exc is None and not self.passes(dst, src):
            self.dropped += 1
            exc, resp = NetworkError(f"response {dst}->{src} lost (fault injected)"), None
        elif exc is None:
            self.delivered += 1
        reply(resp, exc)


class LocalNetwork(Network):
    """The Network of one node on a LocalRouter."""

    # Requests go by reference: a follower appends the leader's entries.
    shares_entries = True

    def __init__(self, router: LocalRouter, node_id: int) -> None:
        self._router = router
        self._id = node_id

    def client(self, target: int, node: Any) -> NetworkClient:
        return LocalClient(self._router, self._id, target)


class LocalClient(NetworkClient):
    __slots__ = ("_router", "_src", "_dst", "append_entries_nowait")

    def __init__(self, router: LocalRouter, src: int, dst: int) -> None:
        self._router = router
        self._src = src
        self._dst = dst
        # The router's fast path with this link's ends bound in (a C-level
        # partial: no Python frame of its own per delivery).
        self.append_entries_nowait = functools.partial(router.deliver_nowait, src, dst)

    async def append_entries(self, req):
        return await self._router.deliver(self._src, self._dst, "append_entries", req)

    async def install_snapshot(self, req):
        return await self._router.deliver(self._src, self._dst, "install_snapshot", req)

    async def transfer_leader(self, req):
        return await self._router.deliver(self._src, self._dst, "transfer_leader", req)

    async def vote(self, req):
        return await self._router.deliver(self._src, self._dst, "vote", req)
