"""RedisNode: the Redis side of one `raftcore kv` node (run_node makes one
for every node, so that any node serves the forwarded requests of another;
only a node started with --redis listens for Redis clients)."""
from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any, Optional

from raftcore.kv.redis.cluster import ClusterBackend, SessionClient
from raftcore.kv.redis.resp import DEFAULT_MAX_BULK
from raftcore.kv.redis.server import CHUNK_BYTES, RedisServer
from raftcore.network.tcp import DEFAULT_MAX_FRAME_SIZE, parse_address

log = logging.getLogger("raftcore.kv.redis")

#: Seconds a forwarded request may take, retries included, before the Redis
#: client gets an error (a write's then says its outcome is unknown).
FORWARD_TIMEOUT = 10.0
#: Seconds between the leader's checks for expired keys to delete.
EXPIRE_INTERVAL = 0.1


class RedisNode:
    """`handlers()` go into the node's RaftServer services; `start()` opens
    the RESP port if --redis was given; `close()`."""

    def __init__(self, args: argparse.Namespace, raft: Any, sm: Any) -> None:
        self.args = args
        peers = list(args.peers.values()) if getattr(args, "peers", None) else [args.listen]
        self.client = SessionClient(peers, timeout=FORWARD_TIMEOUT,
                                    attempt_timeout=min(5.0, FORWARD_TIMEOUT / 2),
                                    secret=getattr(args, "secret", None),
                                    max_frame_size=getattr(args, "max_frame_size",
                                                           DEFAULT_MAX_FRAME_SIZE))
        self.chunk_bytes = min(CHUNK_BYTES, args.config.max_command_bytes // 2)
        self.backend = ClusterBackend(raft, sm, self.client,
                                      getattr(args, "redis_reads", None) or "linearizable",
                                      round_bytes=self.chunk_bytes)
        self.raft = raft
        self.server: Optional[RedisServer] = None
        self._sweeper: Optional[asyncio.Task] = None

    def handlers(self) -> dict:
        return self.backend.handlers()

    async def start(self) -> None:
        # Every node: whichever leads deletes expired keys, --redis or not.
        self._sweeper = asyncio.get_running_loop().create_task(
            self.backend.sweep_expired(EXPIRE_INTERVAL))
        addr = getattr(self.args, "redis", None)
        if addr is None:
            return
        host, port = parse_address(addr)
        limit = self.args.config.max_command_bytes
        max_bulk = getattr(self.args, "redis_max_bulk", None) or min(DEFAULT_MAX_BULK, limit)
        self.server = await RedisServer.start(
            self.backend, host, port, raft=self.raft, max_bulk=max_bulk,
            chunk_bytes=self.chunk_bytes,
            password=getattr(self.args, "redis_password", None))
        log.info("node %s serving Redis clients on %s (%s reads)", self.args.id, addr,
                 self.args.redis_reads)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.server is not None:
            await self.server.close()
        await self.client.close()
