# cython: annotation_typing=False
"""PeerClients: one node's NetworkClient per peer, kept in step with the
membership, and the first step of every AppendEntries it sends (the fast
path of raftcore.network.base's contract).

Compiled: send_append_now runs once per follower per replicated batch. What
the answer does to the engine stays in the runtime (core.pyx), which hands
in the `reply` to call.
"""
import logging
from typing import Any

from raftcore.network.base import hand_over


cdef class PeerClients:
    """The NetworkClient of each peer a node has talked to, made by
    `network.client(target, node)` on first use. follow(membership) closes
    (through `spawn`, which runs a coroutine in a task the node tracks) the
    clients of peers that left the membership or whose address changed; a
    new one is made on next use."""

    cdef object network, log, spawn
    cdef dict _clients          # target -> (Node, NetworkClient)
    cdef dict _nowait           # target -> that client's append_entries_nowait

    def __init__(self, network, log: logging.Logger, spawn) -> None:
        self.network = network
        self.log = log
        self.spawn = spawn
        self._clients = {}
        self._nowait = {}

    cpdef object client(self, target, membership):
        """The client of `target` (made now, at its address in `membership`,
        if there is none)."""
        entry = self._clients.get(target)
        if entry is None:
            node = membership.nodes.get(target) if membership is not None else None
            c = self.network.client(target, node)
            # A client written to the method list alone, without the fast
            # path, declines every request: each goes through append_entries.
            self._nowait[target] = getattr(c, "append_entries_nowait", None) or _decline
            entry = self._clients[target] = (node, c)
        return entry[1]

    cpdef follow(self, membership):
        """Closes the clients of peers gone from `membership` or moved."""
        nodes = membership.nodes if membership is not None else {}
        for target, (node, c) in list(self._clients.items()):
            if target not in nodes or nodes[target] != node:
                del self._clients[target]
                del self._nowait[target]
                self.spawn(close_quietly(c, self.log))

    cpdef object send_append_now(self, target, membership, req, reply):
        """Hands `req` to the fast path of `target`'s client: None once taken
        (reply(response, error) is called once, maybe already) or failed
        (reply was given the error); the client, when it declined, for the
        caller to await its append_entries."""
        nowait = self._nowait.get(target)
        if nowait is None:
            self.client(target, membership)
            nowait = self._nowait[target]
        if hand_over(nowait, req, reply, self._clients[target][1]):
            return None
        return self._clients[target][1]

    async def close(self) -> None:
        """Closes every client."""
        for _, c in self._clients.values():
            await close_quietly(c, self.log)


def _decline(req, reply) -> bool:
    return False


async def close_quietly(client: Any, log: logging.Logger) -> None:
    try:
        await client.close()
    except Exception:  # a failing close must not stop the node
        log.debug("closing a network client failed", exc_info=True)
