"""The `raftcore kv` node: Raft over TCP with a FileLogStore and a
KvStateMachine (run_node), serving the client protocol (KvService)."""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import time
from typing import Any, Awaitable, Callable, Optional

from raftcore.config import Config
from raftcore.errors import (ChangeInProgress, ForwardToLeader, InvalidCommand, NotAllowed,
                             RaftError, Timeout)
from raftcore.kv.protocol import (ADMIN_REFUSED, ERROR, KV_ADD_MEMBER, KV_GET, KV_MEMBERS,
                                  KV_REMOVE_MEMBER, KV_STATUS, KV_TRANSFER_LEADER, KV_WRITE,
                                  LEASE, OK, READ_INDEX, REDIRECT, SESSION_CMD, STALE,
                                  UNAVAILABLE, check_command, check_key, check_session,
                                  check_node_id, check_wait)
from raftcore.kv.protocol import KV_SNAPSHOT_BEGIN, KV_SNAPSHOT_READ    # snapshot save
from raftcore.kv.state import KvStateMachine
from raftcore.kv.tls import verifies_clients
from raftcore.member_changes import ChangeMembers
from raftcore.model import Node, ReadPolicy, ServerState
from raftcore.network.tcp import parse_address

log = logging.getLogger("raftcore.kv")


Handler = Callable[[list], Awaitable[list]]


class KvService:
    """Serves the client protocol for one node: `handlers()` is the
    `services` mapping of its RaftServer.

    address: the node's own HOST:PORT, reported by status.
    admin_allowed: whether admin requests (membership and leadership
        changes) are taken. The node decides it once for every connection:
        a RaftServer with a secret reads no request before the connection
        proved it, one whose TLS context requires a client certificate
        accepts no connection without a verified one; without either, only
        --insecure-admin allows them.
    """

    def __init__(self, raft: Any, sm: KvStateMachine, *, address: Optional[str] = None,
                 admin_allowed: bool = False) -> None:
        self.raft = raft
        self.sm = sm
        self.address = address
        self.admin_allowed = admin_allowed
        self._started = time.monotonic()

    def handlers(self) -> dict:
        from raftcore.kv.backup import SnapshotExports    # it imports the client side
        exports = SnapshotExports(self.raft, self.sm)
        return {
            KV_WRITE: self.write,
            KV_GET: self.get,
            KV_STATUS: self.status,
            KV_MEMBERS: self.members,
            KV_ADD_MEMBER: self._admin(self.add_member),
            KV_REMOVE_MEMBER: self._admin(self.remove_member),
            KV_TRANSFER_LEADER: self._admin(self.transfer_leader),
            KV_SNAPSHOT_BEGIN: exports.begin,
            KV_SNAPSHOT_READ: exports.read,
        }

    def _redirect(self, e: ForwardToLeader) -> list:
        addr = getattr(e.leader_node, "addr", None) or None
        return [REDIRECT, e.leader_id, addr]

    def _admin(self, handler: Handler) -> Handler:
        """`handler` behind the admin check, with the Raft errors it may
        raise turned into replies."""
        async def admin(msg: list) -> list:
            if not self.admin_allowed:
                return [ERROR, ADMIN_REFUSED]
            try:
                return await handler(msg)
            except ForwardToLeader as e:
                return self._redirect(e)
            except ChangeInProgress as e:  # one change at a time: ask again (--join does)
                return [UNAVAILABLE, str(e)]
            except NotAllowed as e:        # the last voter, ...
                return [ERROR, str(e)]
            except Timeout as e:
                return [ERROR, str(e)]
            except RaftError as e:         # shut down or failed: the next leader may serve it
                return [UNAVAILABLE, f"{type(e).__name__}: {e}"]
        return admin

    def _leader_metrics(self) -> Any:
        """This node's metrics; ForwardToLeader unless it leads."""
        m = self.raft.metrics
        if m.state != ServerState.LEADER:
            node = None
            if m.current_leader is not None and m.membership is not None:
                node = m.membership.nodes.get(m.current_leader)
            raise ForwardToLeader(m.current_leader, node)
        return m

    async def members(self, msg: list) -> list:
        """[KV_MEMBERS]: the leader's membership after a linearizable read
        (so an answer also proves a leader that a quorum confirms)."""
        if len(msg) != 1:
            return [ERROR, "a members request is [KV_MEMBERS]"]
        try:
            self._leader_metrics()
            read = await self.raft.ensure_linearizable(ReadPolicy.READ_INDEX)
        except ForwardToLeader as e:
            return self._redirect(e)
        except RaftError as e:         # no quorum confirmed the leader (Timeout), shut down
            return [UNAVAILABLE, f"{type(e).__name__}: {e}"]
        m = self.raft.metrics
        ms = m.membership
        voters = set(ms.voter_ids)
        return [OK, {
            "leader": m.current_leader,
            "term": m.current_term,
            "read_index": read.index,
            "joint": len(ms.configs) > 1,
            "members": [{"id": i, "address": getattr(n, "addr", ""), "voter": i in voters,
                         "incarnation": getattr(n, "incarnation", None),
                         "stale": i in m.stale_members}
                        for i, n in sorted(ms.nodes.items())],
        }]

    async def add_member(self, msg: list) -> list:
        """[KV_ADD_MEMBER, id, address, learner, incarnation, wait]: adds the
        node as a learner, waits (up to `wait` seconds) until it has caught
        up, then (unless `learner`) makes it a voter. A member at that
        address already is left as it is; one whose recorded storage
        incarnation differs from `incarnation` (its directory was wiped) is
        refused: it must be removed first."""
        if len(msg) != 6:
            return [ERROR, "an add is [KV_ADD_MEMBER, id, address, learner, incarnation, wait]"]
        _, nid, addr, learner, incarnation, wait = msg
        why = check_node_id(nid) or check_wait(wait)
        if why is None and type(learner) is not bool:
            why = f"learner must be true or false, got {learner!r:.40}"
        if why is None and incarnation is not None and type(incarnation) is not str:
            why = f"an incarnation is a str or nil, got {incarnation!r:.80}"
        if why is None:
            try:
                parse_address(addr)
            except ValueError as exc:
                why = str(exc)
        if why is not None:
            return [ERROR, why]
        m = self._leader_metrics()
        member = m.membership.nodes.get(nid)
        if member is not None:
            why = self._refuse_readd(nid, member, addr, incarnation, m)
            if why is not None:
                return [ERROR, why]
            if nid in m.membership.voter_ids:
                return [OK, {"id": nid, "address": addr, "voter": True, "changed": False}]
        # Caught up: it has every entry committed before it was added. (A
        # lag threshold alone would count a node that never answered as
        # caught up while the log is short.)
        target = m.committed
        await self.raft.add_learner(nid, Node(addr), blocking=False)
        try:
            await self.raft.wait(wait).metrics(
                lambda mm: mm.state != ServerState.LEADER
                or ((mm.replication or {}).get(nid) or 0) >= target,
                f"learner {nid} to catch up to index {target}")
        except Timeout:
            m = self.raft.metrics
            matched = (m.replication or {}).get(nid) or 0
            # UNAVAILABLE: asking again later may succeed (a large log takes
            # long to send), and --join does so.
            return [UNAVAILABLE, f"node {nid} at {addr} has not caught up within {wait:.3g}s "
                           f"(it has the log up to index {matched}, it needs {target}); it "
                           f"stays a learner. Check that it runs and that the leader reaches "
                           f"{addr}, then add it again (or remove it)"]
        self._leader_metrics()         # leadership lost meanwhile: the next leader goes on
        if not learner:
            await self.raft.change_membership(ChangeMembers.add_voter_ids({nid}))
        return [OK, {"id": nid, "address": addr, "voter": not learner,
                     "changed": member is None or not learner}]

    @staticmethod
    def _refuse_readd(nid: int, member: Any, addr: str, incarnation: Optional[str],
                      m: Any) -> Optional[str]:
        """Why a node that is already a member cannot be added (again) as
        asked, or None."""
        remove_first = f"remove it first (raftcore ctl members remove {nid})"
        if member.addr != addr:
            return (f"node {nid} is already a member, at {member.addr}; to add it at {addr}, "
                    f"{remove_first}")
        recorded = getattr(member, "incarnation", None)
        if nid in m.stale_members or (incarnation is not None and recorded is not None
                                      and recorded != incarnation):
            return (f"node {nid} is a member whose storage was wiped or replaced (a new "
                    f"incarnation, {incarnation}; the cluster recorded {recorded}): it cannot "
                    f"vote again under its old identity; {remove_first}, then add it again")
        return None

    async def remove_member(self, msg: list) -> list:
        """[KV_REMOVE_MEMBER, id]: removes a voter or a learner; a node that
        is not a member is answered `removed: false`."""
        if len(msg) != 2:
            return [ERROR, "a remove is [KV_REMOVE_MEMBER, id]"]
        nid = msg[1]
        why = check_node_id(nid)
        if why is not None:
            return [ERROR, why]
        ms = self._leader_metrics().membership
        if nid not in ms.nodes:
            return [OK, {"id": nid, "removed": False}]
        if nid in ms.voter_ids:
            change = ChangeMembers.remove_voters({nid})
        else:
            change = ChangeMembers.remove_nodes({nid})
        await self.raft.change_membership(change, retain=False)
        return [OK, {"id": nid, "removed": True}]

    async def transfer_leader(self, msg: list) -> list:
        """[KV_TRANSFER_LEADER, id, wait]: hands leadership to voter `id`,
        answered once this node follows it."""
        if len(msg) != 3:
            return [ERROR, "a transfer is [KV_TRANSFER_LEADER, id, wait]"]
        _, nid, wait = msg
        why = check_node_id(nid) or check_wait(wait)
        if why is not None:
            return [ERROR, why]
        m = self._leader_metrics()
        if nid == m.id:
            return [OK, {"leader": nid, "changed": False}]
        if nid not in m.membership.voter_ids:
            return [ERROR, f"node {nid} is not a voter of the cluster; leadership goes to a "
                           "voter only"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        # A transfer this node gives up on (the target did not catch up in
        # an election timeout) is asked again until the deadline.
        retry = self.raft.config.election_timeout_max * 2
        while self.raft.metrics.state == ServerState.LEADER:
            self.raft.trigger.transfer_leader(nid)
            try:
                await self.raft.wait(max(0.01, min(retry, deadline - loop.time()))).metrics(
                    lambda mm: mm.state != ServerState.LEADER, "leadership to move")
            except Timeout:
                if loop.time() >= deadline:
                    return [ERROR, f"leadership did not move to node {nid} within "
                                   f"{wait:.3g}s; node {m.id} still leads"]
        try:
            await self.raft.wait(max(0.01, deadline - loop.time())).current_leader(nid)
        except Timeout:
            return [ERROR, f"node {m.id} handed over leadership, but node {nid} is not known as "
                           f"the leader within {wait:.3g}s (now: "
                           f"{self.raft.metrics.current_leader})"]
        return [OK, {"leader": nid, "changed": True}]

    async def write(self, msg: list) -> list:
        if len(msg) != 5:
            return [ERROR, "a write is [KV_WRITE, client_id, seq, acked_below, cmd]"]
        _, cid, seq, acked, cmd = msg
        why = check_command(cmd) or check_session(cid, seq, acked)
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
        return [OK, self.status_dict()]

    def status_dict(self) -> dict:
        """This node's status: what KV_STATUS answers and `raftcore ctl
        status` shows (plain msgpack- and JSON-ready values)."""
        m = self.raft.metrics
        members = []
        if m.membership is not None:
            members = [[i, getattr(n, "addr", "")] for i, n in sorted(m.membership.nodes.items())]
        leader_addr = None
        if m.current_leader is not None and m.membership is not None:
            n = m.membership.nodes.get(m.current_leader)
            leader_addr = getattr(n, "addr", None) or None
        voters = set(m.membership.voter_ids) if m.membership is not None else set()
        replication = []
        if m.replication is not None:
            # The leader's view: how far behind its log each follower is.
            replication = [{"id": i, "matched": matched or 0,
                            "lag": max(0, m.last_log_index - (matched or 0))}
                           for i, matched in sorted(m.replication.items()) if i != m.id]
        return {
            "id": m.id,
            "address": self.address,
            "uptime": round(time.monotonic() - self._started, 3),
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
            "voters": sorted(voters),
            "learners": [i for i, _ in members if i not in voters],
            "replication": replication,
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
        }


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
    raft = server = joining = http = redis = None
    failed: list = []          # why joining the cluster failed, if it did
    status = 0
    try:
        sm = await KvStateMachine.open(os.path.join(args.dir, "snapshots"))
        net = TcpNetwork(args.client_ssl, rpc_timeout=config.rpc_timeout, secret=args.secret,
                         max_frame_size=args.max_frame_size)
        raft = await Raft.create(args.id, config, net, store, sm)
        admin = args.secret is not None or verifies_clients(args.server_ssl) \
            or args.insecure_admin
        service = KvService(raft, sm, address=args.listen, admin_allowed=admin)
        from raftcore.kv.redis import RedisNode     # --redis: RESP on this node
        redis = RedisNode(args, raft, sm)
        handlers = {**service.handlers(), **redis.handlers()}
        if getattr(args, "http", None):
            from raftcore.kv.http import start_http
            http, handlers = await start_http(args, raft, service, handlers, sm=sm,
                                              store=store)
        server = await RaftServer.start(raft, host, port, args.server_ssl,
                                        services=handlers, secret=args.secret,
                                        max_frame_size=args.max_frame_size)
        await redis.start()
        log.info("node %s serving on %s (data in %s)", args.id, args.listen, args.dir)
        _check_peers_against_disk(args, raft.metrics.membership)
        if args.join is not None:
            joining = asyncio.ensure_future(join_cluster(args, raft))
            joining.add_done_callback(lambda t: _joined(t, args, stop, failed))
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
        _tune_gc()
        if await _until_stopped(stop, raft) or failed:
            log.error("node %s stopped on an error (see above); exiting", args.id)
            status = 1
        else:
            log.info("node %s shutting down", args.id)
    finally:
        if joining is not None:
            joining.cancel()
            await asyncio.gather(joining, return_exceptions=True)
        # A second Ctrl-C while shutting down interrupts at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if redis is not None:
            await redis.close()
        if raft is not None:
            await raft.shutdown()
        if server is not None:
            await server.close()
        if http is not None:
            await http.close()
        await store.close()
    log.info("node %s stopped", args.id)
    return status


#: How long one attempt to join may take (catching up included) before the
#: node asks again.
JOIN_ATTEMPT_TIMEOUT = 120.0


async def join_cluster(args: argparse.Namespace, raft: Any) -> None:
    """--join: asks the cluster at args.join to add this node (learner, then
    voter); the leader answers at once if it is a voter already (a restart).
    Asks again while the cluster does not answer; raises KvError if the
    cluster refuses (say its storage is a new incarnation of a member)."""
    from raftcore.kv.client import Client

    # Even a node whose own log has it as a voter asks: a removed node may
    # never receive the entry that removed it.
    client = Client(args.join, timeout=JOIN_ATTEMPT_TIMEOUT, secret=args.secret,
                    ssl=args.client_ssl)
    try:
        while True:
            log.info("node %s asks the cluster at %s to add it (at %s)", args.id, args.join,
                     args.listen)
            try:
                r = await client.add_member(args.id, args.listen,
                                            incarnation=raft.metrics.incarnation)
            except Timeout as exc:
                log.warning("node %s could not join through %s yet: %s; asking again",
                            args.id, args.join, exc)
                continue
            if r["changed"]:
                log.info("node %s is a voter of the cluster", args.id)
            else:
                log.info("node %s is a voter of the cluster already; --join had nothing to do",
                         args.id)
            return
    finally:
        await client.close()


def _joined(task: "asyncio.Future", args: argparse.Namespace, stop: asyncio.Event,
            failed: list) -> None:
    """The end of join_cluster: a refusal stops the node."""
    if task.cancelled() or task.exception() is None:
        return
    log.error("node %s cannot join the cluster through %s: %s", args.id, args.join,
              task.exception())
    failed.append(task.exception())
    stop.set()


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


def _tune_gc() -> None:
    """Fewer garbage collections while the node serves. Every command it
    replicates allocates a few containers (a Redis write's argument list,
    its entry, a follower's decoded copy), so with the default threshold
    (700) the collector ran every few hundred commands, and walked the
    older generations now and then: py-spy put a sixth of a follower's
    CPU in it under pipelined SETs. What startup made is frozen (never walked again), and a young
    collection waits for 50,000 new containers."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _until_stopped(stop: asyncio.Event, raft: Any) -> bool:
    """Returns False on a stop signal, True once the node stopped on its
    own (a storage failure stops it: better down than serving a bad log)."""
    stopped = asyncio.ensure_future(stop.wait())
    # Not a metrics condition: that would build the metrics after every
    # round of writes, for the node's whole life.
    died = asyncio.ensure_future(raft.wait().stopped())
    try:
        await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
        return not stopped.done()
    finally:
        for f in (stopped, died):
            f.cancel()
        await asyncio.gather(stopped, died, return_exceptions=True)
