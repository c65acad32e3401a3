"""The embedding layer: a Raft node in one call (`raftcore.start`), a plain
class as replicated state (`@raftcore.command` / `@raftcore.query`), ready
replicated objects, and leader-only tasks.

    class Counter:
        def __init__(self):
            self.value = 0

        @raftcore.command
        def add(self, n):
            self.value += n
            return self.value

        @raftcore.query
        def get(self):
            return self.value

    node = await raftcore.start(1, {1: "127.0.0.1:7001", 2: ..., 3: ...},
                                dir="./n1", state=Counter())
    await node.state.add(5)            # on any node: a follower forwards it
    await node.state.get()             # linearizable; node.state.stale.get()
    await node.stop()

Modules: node (start, EmbeddedNode), replicated (the markers and the state
machine adapter), command_apply (compiled: the apply of its entries and the
callers' sessions), batches (the calls of one turn in one entry),
pending_call (compiled: a batched call's awaitable),
forwarding (a follower's calls carried to the leader), deadlines (queries'
timer), objects (ReplDict, ReplCounter, ReplQueue, ReplLock).
"""
from raftcore.embed.node import CommandFailed, EmbeddedNode, ObjectProxy, service_config, start
from raftcore.embed.objects import ReplCounter, ReplDict, ReplLock, ReplQueue
from raftcore.embed.replicated import ApplyClock, ReplicatedStateMachine, applying, command, query

__all__ = ["start", "EmbeddedNode", "ObjectProxy", "CommandFailed", "service_config",
           "command", "query", "applying", "ApplyClock", "ReplicatedStateMachine",
           "ReplDict", "ReplCounter", "ReplQueue", "ReplLock"]
