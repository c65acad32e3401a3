"""The `raftcore kv` node: Raft over TCP with a FileLogStore and a
KvStateMachine (run_node), serving the client protocol (KvService)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import Any

from raftcore.config import Config
from raftcore.errors import ForwardToLeader, InvalidCommand, NotAllowed, RaftError
from raftcore.kv.protocol import (ERROR, KV_GET, KV_STATUS, KV_WRITE, LEASE, OK, READ_INDEX,
                                  REDIRECT, SESSION_CMD, STALE, UNAVAILABLE, check_client_id,
                                  check_command, check_key)
from raftcore.kv.protocol import KV_SNAPSHOT_BEGIN, KV_SNAPSHOT_READ    # snapshot save
from raftcore.kv.state import KvStateMachine
from raftcore.model import Node, ReadPolicy
from raftcore.network.tcp import parse_address

log = logging.getLogger("raftcore.kv")


class KvService:
    """Serves the client protocol for one node: `handlers()` is the
    `services` mapping of its RaftServer."""

    def __init__(self, raft: Any, sm: KvStateMachine) -> None:
        self.raft = raft
        self.sm = sm

    def handlers(self) -> dict:
        # Imported here: `python -m raftcore.kv.backup` would otherwise find it
        # imported already (by raftcore.kv) when it runs it as __main__.
        from raftcore.kv.backup import SnapshotExports    # snapshot save
        exports = SnapshotExports(self.raft, self.sm)
        return {KV_WRITE: self.write, KV_GET: self.get, KV_STATUS: self.status,
                KV_SNAPSHOT_BEGIN: exports.begin,
                KV_SNAPSHOT_READ: exports.read}

    def _redirect(self, e: ForwardToLeader) -> list:
        addr = getattr(e.leader_node, "addr", None) or None
        return [REDIRECT, e.leader_id, addr]

    async def write(self, msg: list) -> list:
        if len(msg) != 5:
            return [ERROR, "a write is [KV_WRITE, client_id, seq, acked_below, cmd]"]
        _, cid, seq, acked, cmd = msg
        why = check_client_id(cid) or check_command(cmd)
        if why is None and (type(seq) is not int or seq < 1 or type(acked) is not int
                            or not 0 <= acked <= seq):
            why = "seq must be an int >= 1 and acked_below an int in [0, seq]"
        if why is not None:
            return [ERROR, why]
        try:
            resp = await self.raft.client_write([SESSION_CMD, cid, seq, acked, cmd])
        except ForwardToLeader as e:
            return self._redirect(e)
        except InvalidCommand as e:    # over max_command_bytes: no node takes it
            return [ERROR, str(e)]
        except RaftError as e:         # shut down or failed: another node may serve it
            return [UNAVAILABLE, f"{type(e).__name__}: {e}"]
        status, value = resp.data
        if status == "ok":
            return [OK, value, resp.index]
        return [ERROR, value]

    async def get(self, msg: list) -> list:
        if len(msg) != 3 or msg[2] not in (READ_INDEX, LEASE, STALE):
            return [ERROR, "a get is [KV_GET, key, mode] with mode 0 (read index), 1 (lease) "
                           "or 2 (stale)"]
        key, mode = msg[1], msg[2]
        why = check_key(key)
        if why is not None:
            return [ERROR, why]
        if mode != STALE:
            policy = ReadPolicy.LEASE_READ if mode == LEASE else ReadPolicy.READ_INDEX
            try:
                await self.raft.ensure_linearizable(policy)
            except ForwardToLeader as e:
                return self._redirect(e)
            except RaftError as e:     # no quorum confirmed it (Timeout), shut down, ...
                return [UNAVAILABLE, f"{type(e).__name__}: {e}"]
        data = self.sm.data
        return [OK, data.get(key), key in data]

    async def status(self, msg: list) -> list:
        m = self.raft.metrics
        members = []
        if m.membership is not None:
            members = [[i, getattr(n, "addr", "")] for i, n in sorted(m.membership.nodes.items())]
        leader_addr = None
        if m.current_leader is not None and m.membership is not None:
            n = m.membership.nodes.get(m.current_leader)
            leader_addr = getattr(n, "addr", None) or None
        return [OK, {
            "id": m.id,
            "state": m.state.name,
            "term": m.current_term,
            "leader": m.current_leader,
            "leader_addr": leader_addr,
            "last_log_index": m.last_log_index,
            "committed": m.committed,
            "applied": m.last_applied_index,
            "snapshot": m.snapshot.index if m.snapshot is not None else None,
            "purged": m.purged.index if m.purged is not None else 0,
            "members": members,
            "disk_full": m.disk_full,
            "keys": len(self.sm.data),
            "sessions": len(self.sm.sessions),
            "applied_commands": self.sm.applied_commands,
            "deduplicated": self.sm.deduplicated,
            "cluster_id": m.cluster_id,
            "incarnation": m.incarnation,
            # Its storage was wiped or replaced: it does not vote until
            # removed and added back (see the README, "Operating a cluster").
            "identity_stale": m.identity_stale,
            "stale_members": sorted(m.stale_members),
            "recorded_incarnations": [] if m.membership is None else [
                [i, getattr(n, "incarnation", None)]
                for i, n in sorted(m.membership.nodes.items())],
        }]


async def run_node(args: argparse.Namespace) -> int:
    """Runs one node as configured by parse_args until SIGINT or SIGTERM;
    returns the exit status."""
    from raftcore.network.tcp import RaftServer, TcpNetwork
    from raftcore.raft import Raft
    from raftcore.storage.file import FileLogStore

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, port = parse_address(args.listen)
    config: Config = args.config
    os.makedirs(args.dir, exist_ok=True)
    store = await FileLogStore.open(os.path.join(args.dir, "log"))
    raft = server = redis = None
    status = 0
    try:
        sm = await KvStateMachine.open(os.path.join(args.dir, "snapshots"))
        net = TcpNetwork(rpc_timeout=config.rpc_timeout, secret=args.secret,
                         max_frame_size=args.max_frame_size)
        raft = await Raft.create(args.id, config, net, store, sm)
        service = KvService(raft, sm)
        from raftcore.kv.redis import RedisNode     # --redis: RESP on this node
        redis = RedisNode(args, raft, sm)
        server = await RaftServer.start(raft, host, port,
                                        services={**service.handlers(), **redis.handlers()},
                                        secret=args.secret,
                                        max_frame_size=args.max_frame_size)
        await redis.start()
        log.info("node %s serving on %s (data in %s)", args.id, args.listen, args.dir)
        _check_peers_against_disk(args, raft.metrics.membership)
        if args.init:
            members = {i: Node(a) for i, a in sorted(args.peers.items())}
            try:
                await raft.initialize(members)
                log.info("node %s initialized the cluster %s", args.id,
                         ", ".join(f"{i}={a}" for i, a in members.items()))
            except NotAllowed:
                log.warning("node %s is already initialized; --init ignored: it belongs to "
                            "cluster %s (%s)", args.id, raft.metrics.cluster_id,
                            _describe_membership(raft.metrics.membership))
        if await _until_stopped(stop, raft):
            log.error("node %s stopped on an error (see above); exiting", args.id)
            status = 1
        else:
            log.info("node %s shutting down", args.id)
    finally:
        # A second Ctrl-C while shutting down interrupts at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if redis is not None:
            await redis.close()
        if raft is not None:
            await raft.shutdown()
        if server is not None:
            await server.close()
        await store.close()
    log.info("node %s stopped", args.id)
    return status


def _describe_membership(m: Any) -> str:
    if m is None:
        return "no membership in its log yet"
    voters = " + ".join("{" + ", ".join(map(str, sorted(c))) + "}" for c in m.configs)
    nodes = ", ".join(f"{i}={getattr(n, 'addr', '')}" for i, n in sorted(m.nodes.items()))
    return f"voters {voters}, nodes {nodes}"


def _check_peers_against_disk(args: argparse.Namespace, membership: Any) -> None:
    """The membership on disk wins over --peers (so that a restart after a
    membership change works); a disagreement is worth a warning."""
    if args.peers is None or membership is None:
        return
    on_disk = {i: getattr(n, "addr", "") for i, n in membership.nodes.items()}
    if on_disk != args.peers or set(membership.voter_ids) != set(args.peers):
        log.warning("node %s: --peers %s disagrees with the membership in its log (%s); "
                    "the membership in the log is used", args.id,
                    ",".join(f"{i}={a}" for i, a in sorted(args.peers.items())),
                    _describe_membership(membership))


async def _until_stopped(stop: asyncio.Event, raft: Any) -> bool:
    """Returns False on a stop signal, True once the node stopped on its
    own (a storage failure stops it: better down than serving a bad log)."""
    from raftcore.model import ServerState

    stopped = asyncio.ensure_future(stop.wait())
    # Resolves when the node reaches SHUTDOWN, or fails (Fatal) when it dies.
    died = asyncio.ensure_future(
        raft.wait().metrics(lambda m: m.state == ServerState.SHUTDOWN, "shutdown"))
    try:
        await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
        return not stopped.done()
    finally:
        for f in (stopped, died):
            f.cancel()
        await asyncio.gather(stopped, died, return_exceptions=True)
