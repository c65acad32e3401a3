"""The Raft handle: the public API of one node (openraft's `Raft`)."""
from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Iterable, Mapping, Optional, cast

import msgpack

from raftcore.config import Config
from raftcore.core import ClientWriteResponse, RaftCore
from raftcore.engine import CANDIDATE, LEADER
from raftcore.errors import (ChangeInProgress, ConfigError, ForwardToLeader, InvalidCommand,
                             Fatal, NotAllowed, Timeout)
from raftcore.member_changes import ChangeMembers
from raftcore.membership import Membership
from raftcore.messages import (AppendEntriesRequest, AppendEntriesResponse,
                               InstallSnapshotRequest, InstallSnapshotResponse,
                               TransferLeaderRequest, VoteRequest, VoteResponse)
from raftcore.model import Node, ReadPolicy, ServerState
from raftcore.network.base import AppendNowait, NetworkLike, RaftNode
from raftcore.storage.base import (LOG_STORE_METHODS, STATE_MACHINE_METHODS, LogStoreLike,
                                   StateMachineLike, missing_methods)
from raftcore.types import LogId, Vote

__all__ = ["Raft", "RaftMetrics", "ClientWriteResponse", "Wait", "Trigger", "RuntimeConfig"]


@dataclass(frozen=True)
class RaftMetrics:
    """A snapshot of a node's state (openraft's RaftMetrics)."""

    id: int
    state: ServerState
    current_term: int
    vote: Vote
    current_leader: Optional[int]
    last_log_index: int
    committed: int
    last_applied: Optional[LogId]
    snapshot: Optional[LogId]
    purged: Optional[LogId]
    #: The effective membership (the last one in the log, committed or not).
    membership: Optional[Membership]
    #: Leader only: follower id -> highest index known flushed there.
    replication: Optional[dict]
    #: The node's disk is full: it takes no writes, gives no votes and does
    #: not campaign until space is freed (it resumes by itself).
    disk_full: bool = False
    #: The cluster this node belongs to (None: not initialized nor contacted yet).
    cluster_id: Optional[str] = None
    #: This node's storage incarnation (None: its log store keeps none).
    incarnation: Optional[str] = None
    #: The membership records another incarnation for this node: its storage
    #: was wiped or replaced; it does not vote until removed and added back.
    identity_stale: bool = False
    #: Leader only: members answering from other storage than the membership
    #: records (wiped or replaced); they need replacing.
    stale_members: frozenset = frozenset()
    #: Times this node learned of a new leader since it started.
    leader_changes: int = 0
    #: A voter whose election timeout passed without word from a leader: it
    #: asks for votes (pre-vote or election). With pre-vote, `current_leader`
    #: still names the leader it last followed meanwhile.
    campaigning: bool = False
    #: (peer id, RPC name) -> RPCs to that peer that failed since the node
    #: started (no answer, a connection error): "append_entries", "vote",
    #: "install_snapshot", "transfer_leader".
    rpc_errors: Mapping = dataclasses.field(default_factory=dict)

    @property
    def last_applied_index(self) -> int:
        return self.last_applied.index if self.last_applied is not None else 0

    def to_dict(self) -> dict[str, Any]:
        """These metrics as plain data that `json.dumps` (or msgpack) takes:
        the state by name, log ids as {"term", "index"}, the vote as
        {"term", "node_id", "committed"}, the membership as {"configs":
        [[voter ids], ...], "nodes": {"id": {"addr", "data", "incarnation"}}},
        replication as {"follower id": matched index}. Mapping keys are
        strings (JSON's only key type); id lists are sorted. A Node's
        `data` is passed as the application gave it (JSON-ready if it is)."""
        return {
            "id": self.id,
            "state": self.state.name,
            "current_term": self.current_term,
            "vote": {"term": self.vote.term, "node_id": self.vote.node_id,
                     "committed": bool(self.vote.committed)},
            "current_leader": self.current_leader,
            "last_log_index": self.last_log_index,
            "committed": self.committed,
            "last_applied": _log_id_dict(self.last_applied),
            "snapshot": _log_id_dict(self.snapshot),
            "purged": _log_id_dict(self.purged),
            "membership": _membership_dict(self.membership),
            "replication": None if self.replication is None else {
                str(k): v for k, v in sorted(self.replication.items())},
            "disk_full": self.disk_full,
            "cluster_id": self.cluster_id,
            "incarnation": self.incarnation,
            "identity_stale": self.identity_stale,
            "stale_members": sorted(self.stale_members),
            "leader_changes": self.leader_changes,
            "campaigning": self.campaigning,
            "rpc_errors": [{"peer": peer, "rpc": rpc, "count": n}
                           for (peer, rpc), n in sorted(self.rpc_errors.items(), key=str)],
        }


def _log_id_dict(log_id: Optional[LogId]) -> Optional[dict[str, int]]:
    return None if log_id is None else {"term": log_id.term, "index": log_id.index}


def _membership_dict(m: Optional[Membership]) -> Optional[dict[str, Any]]:
    if m is None:
        return None
    return {
        "configs": [sorted(c) for c in m.configs],
        "nodes": {str(i): {"addr": getattr(n, "addr", ""), "data": getattr(n, "data", None),
                           "incarnation": getattr(n, "incarnation", None)}
                  for i, n in sorted(m.nodes.items())},
    }


def build_metrics(core: RaftCore) -> RaftMetrics:
    e = core.engine
    return RaftMetrics(
        id=core.id,
        state=ServerState(e.state),
        current_term=e.vote.term,
        vote=e.vote,
        current_leader=e.leader_id,
        last_log_index=e.last_log_index,
        committed=e.committed,
        last_applied=core.last_applied,
        snapshot=core.snapshot,
        purged=core.purged,
        membership=e.membership,
        replication=e.replication(),
        disk_full=core.no_space is not None,
        cluster_id=e.cluster_id,
        incarnation=e.incarnation,
        identity_stale=e.identity_stale,
        stale_members=frozenset(e.stale_members),
        leader_changes=core.leader_changes,
        campaigning=e.prevoting or e.state == CANDIDATE,
        rpc_errors=core.rpc_errors,
    )


class Raft(RaftNode):
    """One Raft node. Create with `await Raft.create(...)`."""

    def __init__(self, core: RaftCore) -> None:
        self._core = core
        self.trigger = Trigger(core)
        self.runtime_config = RuntimeConfig(core)

    @classmethod
    async def create(cls, node_id: int, config: Config, network: NetworkLike,
                     log_store: LogStoreLike, state_machine: StateMachineLike, *,
                     executor: Optional[Callable] = None,
                     cluster_id: Optional[str] = None,
                     engine_type: Optional[Callable] = None) -> "Raft":
        """Loads the node's state from its stores and starts its runtime.

        `executor(fn, *args)` runs blocking work and returns an awaitable;
        by default the event loop's thread pool (a simulation runs it inline).
        `cluster_id`, when the caller knows the cluster the node belongs to:
        raises ClusterMismatch if the log store belongs to another one (a
        store without one adopts it). Otherwise the node learns its cluster
        id at initialize or from the first node that contacts it.
        `engine_type`: the engine class to step, None for raftcore's; only
        tests change it (raftcore.testing.faulty_engine breaks rules on
        purpose, to show the simulator's checks catch it).
        """
        if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id < 0:
            raise ConfigError(f"node_id must be a non-negative int, got {node_id!r}")
        if not isinstance(config, Config):
            raise ConfigError(f"config must be a raftcore.Config, got {type(config).__name__}")
        for arg, value, names, what in (
                ("network", network, ("client",), "raftcore.network.Network"),
                ("log_store", log_store, LOG_STORE_METHODS, "raftcore.storage.LogStore"),
                ("state_machine", state_machine, STATE_MACHINE_METHODS,
                 "raftcore.storage.StateMachine")):
            if value is None:
                raise ConfigError(f"{arg} is None: give a {what}")
            missing = missing_methods(value, names)
            if missing:
                raise ConfigError(f"{arg} ({type(value).__name__}) is not a {what}: it has no "
                                  f"{', '.join(missing)} (subclass {what})")
        configure = getattr(network, "configure", None)    # (a Network need not subclass)
        if configure is not None:
            configure(config)
        core = RaftCore(node_id, config, network, log_store, state_machine,
                        asyncio.get_running_loop(), executor, engine_type)
        await core.load(cluster_id)
        core.start()
        return cls(core)

    # ------------------------------------------------------------- cluster

    @property
    def id(self) -> int:
        return self._core.id

    @property
    def config(self) -> Config:
        return self._core.config

    async def initialize(self, members: Mapping[int, Node] | Iterable[int], *,
                         cluster_id: Optional[str] = None) -> None:
        """Makes this fresh node the first member of a cluster of `members`
        (id -> Node, or ids alone). Raises NotAllowed on a node that already
        has a log or a vote.

        The node makes the cluster's id (or takes `cluster_id`); the others
        adopt it when it first contacts them, and refuse any other cluster's
        requests from then on. Initialize one node; to initialize every node
        of the new cluster instead, give them all the same members and the
        same `cluster_id` (nodes of different cluster ids refuse each other).
        The membership records this node's storage incarnation; the leader
        records the others' from their first answers."""
        self._core.check_running()
        if not isinstance(members, Mapping):
            members = {i: Node() for i in members}
        if not members:
            raise ConfigError("initialize needs at least one member")
        for k, v in members.items():
            if not isinstance(k, int) or isinstance(k, bool):
                raise ConfigError(f"member ids must be ints, got {k!r}")
            if not isinstance(v, Node):
                raise ConfigError(f"member {k}: expected a raftcore.Node, got {v!r}")
        _check_nodes(members)
        core = self._core
        await core.cluster_id_for_initialize(cluster_id)
        members = dict(members)
        me = members.get(self.id)
        if me is not None and core.engine.incarnation is not None:
            members[self.id] = dataclasses.replace(me, incarnation=core.engine.incarnation)
        membership = Membership([set(members)], members)
        # The first membership entry is made durable before this node votes
        # for itself: a crash in between must not leave a vote without the
        # log it was for (the node could then never be initialized again).
        core.step(core.engine.initialize, membership, False)
        await core.run_commands()
        await core.wait_flushed(1)
        if membership.is_voter(self.id) and core.engine.leader_id is None:
            # The election goes on in the background.
            core.step(core.engine.trigger_elect, core.loop.time())

    # --------------------------------------------------------------- writes

    def client_write(self, cmd: Any, *,
                     owned: bool = False) -> Coroutine[Any, Any, ClientWriteResponse]:
        """Proposes `cmd`; returns once it is committed and applied here
        (a coroutine: ``await raft.client_write(cmd)``).

        `cmd` must be a msgpack-able value that decodes back to itself, of
        at most Config.max_command_bytes encoded; otherwise InvalidCommand
        is raised and nothing is written. Every node, this one included,
        applies what the encoding decodes to (a tuple arrives as a list).

        `owned=True` hands `cmd` over, saving that decoded copy: this node
        applies `cmd` itself. The caller promises not to change it, or
        anything in it, from now on, nor to put any list or dict of it in
        another command (every other node decodes a fresh copy of each
        command; a state machine that changed a shared one in place would
        change both only here). It must be built of exact None, bool, int
        (64-bit), float, str, bytes, list and dict only (a tuple, a
        bytearray or a subclass would arrive as something else on the
        other nodes), with no list or dict appearing twice in it: anything
        else is refused with InvalidCommand.

        Raises ForwardToLeader (with the leader's id and Node when known) on
        a node that is not the leader, or when another entry was committed
        at the write's index: either way the write did not take effect.
        Raises OutcomeUnknown when this node can no longer tell (its entry
        left this node's log, yet another node may commit it): retry only an
        idempotent write. If the caller cancels the call, the write may still
        commit: cancellation only stops waiting for it.
        """
        # The runtime's coroutine itself, not one wrapping it: one frame
        # less on every write.
        return self._core.client_write(cmd, owned)

    async def client_write_many(self, cmds: list, *,
                                owned: bool = False) -> list[ClientWriteResponse]:
        """Proposes the commands as one batch; returns their responses in
        order once all are applied. Same errors, cancellation and `owned`
        as client_write; one invalid command refuses the whole batch."""
        if not isinstance(cmds, list):
            cmds = list(cmds)
        if not cmds:
            return []
        return await self._core.client_write_many(cmds, owned)

    # ---------------------------------------------------------- membership

    async def add_learner(self, node_id: int, node: Node, blocking: bool = True,
                          timeout: Optional[float] = None) -> Optional[ClientWriteResponse]:
        """Adds `node_id` as a learner: it receives the log but does not vote.

        With `blocking`, returns once the learner is within
        Config.replication_lag_threshold entries of the leader's log (or
        raises Timeout after `timeout` seconds). Returns the response of the
        membership entry, or None if the node was already this learner.
        InvalidCommand if the Node cannot go into the log (its data is not a
        msgpack value)."""
        core = self._core
        self._leader_or_forward()
        # A leader always has a membership (its first entry is one).
        m = cast(Membership, core.engine.membership)
        if node_id in m.voter_ids:
            raise NotAllowed(f"node {node_id} is already a voter of {m!r}")
        ChangeMembers.add_nodes({node_id: node}).apply(m.voter_ids, {})   # validates
        _check_nodes({node_id: node})
        resp = None
        if m.nodes.get(node_id) != node:
            async with self._membership_change():
                m = cast(Membership, core.engine.membership)
                resp = await core.propose_membership(
                    Membership(m.configs, {**m.nodes, node_id: node}))
        if blocking:
            lag = core.config.replication_lag_threshold
            await self.wait(timeout).metrics(
                lambda mm: mm.state != ServerState.LEADER or (
                    mm.replication is not None
                    and mm.replication.get(node_id, 0) + lag >= mm.last_log_index),
                f"learner {node_id} to catch up")
            self._leader_or_forward()
        return resp

    async def change_membership(self, changes: "ChangeMembers | Iterable[int]",
                                retain: bool = False) -> ClientWriteResponse:
        """Changes the voters: a set of ids replaces all voters; a
        ChangeMembers adds, removes or replaces voters and nodes.

        A voter change goes through a joint configuration (old and new voter
        sets both must agree), then the new one alone; the call returns once
        the final membership is committed and applied here. With `retain`,
        removed voters stay as learners. One change at a time: NotAllowed
        while another is in progress."""
        core = self._core
        self._leader_or_forward()
        if not isinstance(changes, ChangeMembers):
            changes = ChangeMembers.replace_all_voters(changes)
        async with self._membership_change():
            m = cast(Membership, core.engine.membership)   # a leader's: never None
            if m.is_joint:
                # A change interrupted by a leader change: finish it first.
                m2 = Membership([m.configs[1]], m.nodes)
                await core.propose_membership(m2)
                m = m2
            old_voters = m.configs[0]
            new_voters, nodes = changes.apply(old_voters, m.nodes)
            _check_nodes(nodes)
            if new_voters == old_voters:
                return await core.propose_membership(Membership([new_voters], nodes))
            await core.propose_membership(
                Membership([old_voters, new_voters], {**m.nodes, **nodes}))
            final_nodes = dict(nodes)
            if not retain:
                for removed in old_voters - new_voters:
                    final_nodes.pop(removed, None)
            return await core.propose_membership(Membership([new_voters], final_nodes))

    def _leader_or_forward(self) -> None:
        core = self._core
        core.check_running()
        if core.engine.state != LEADER:
            raise ForwardToLeader(core.engine.leader_id, core.engine.leader_node())

    def _membership_change(self) -> "_MembershipChange":
        return _MembershipChange(self._core)

    # --------------------------------------------------------------- reads

    async def get_read_linearizer(self, policy: ReadPolicy = ReadPolicy.READ_INDEX) -> LogId:
        """Leader: confirms leadership and returns the read log id. Any node
        whose state machine has applied that index may then serve a read that
        sees every write acknowledged before this call (wait on a follower
        with wait().applied_index_at_least(log_id.index)).

        READ_INDEX confirms with a round trip to a quorum; LEASE_READ uses
        the leader lease when it holds (safe while clock rates differ by no
        more than Config.max_clock_drift) and falls back to READ_INDEX. Raises
        ForwardToLeader on a node that is not the leader, Timeout if a
        quorum does not answer within two election timeouts."""
        if not isinstance(policy, ReadPolicy):
            raise ConfigError(f"policy must be a ReadPolicy, got {policy!r}")
        self._leader_or_forward()
        return await self._core.read_log_id(policy is ReadPolicy.LEASE_READ)

    async def ensure_linearizable(self, policy: ReadPolicy = ReadPolicy.READ_INDEX) -> LogId:
        """Leader: returns once a read of this node's state machine is
        linearizable (sees every write acknowledged before the call): after
        get_read_linearizer and the local apply of the read log id."""
        log_id = await self.get_read_linearizer(policy)
        core = self._core
        if (core.last_applied.index if core.last_applied else 0) < log_id.index:
            await self.wait(2 * core.config.election_timeout_max).applied_index_at_least(
                log_id.index, "the read point to be applied")
        return log_id

    # ------------------------------------------------------------- RPC side

    async def append_entries(self, req: AppendEntriesRequest) -> AppendEntriesResponse:
        """Handles an AppendEntries request from the leader (called by a transport)."""
        return await self._core.handle_append_entries(req)

    @property
    def append_entries_nowait(self) -> AppendNowait:
        """The fast path of append_entries, for a transport in the same event
        loop: `append_entries_nowait(req, reply) -> bool` as
        raftcore.network.base declares it (False: the node cannot answer
        without awaiting, call append_entries; True: reply(response, error)
        is called once, now or from the log flush's completion). It is the
        runtime's compiled method itself, so a delivery is one C call; a
        transport looks it up once per node."""
        return self._core.try_append_entries_now

    async def install_snapshot(self, req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        """Handles one InstallSnapshotRequest chunk (called by a transport)."""
        return await self._core.handle_install_snapshot(req)

    async def transfer_leader(self, req: TransferLeaderRequest) -> None:
        """Handles a TransferLeaderRequest: the leader asks this node to
        campaign now (called by a transport)."""
        await self._core.handle_transfer_leader(req)

    async def vote(self, req: VoteRequest) -> VoteResponse:
        """Handles a RequestVote from a candidate (called by a transport)."""
        return await self._core.handle_vote(req)

    # --------------------------------------------------------------- state

    @property
    def metrics(self) -> RaftMetrics:
        return build_metrics(self._core)

    @property
    def state_machine(self) -> Any:
        return self._core.sm

    @property
    def log_store(self) -> Any:
        return self._core.log_store

    def wait(self, timeout: Optional[float] = None) -> "Wait":
        """Conditions on metrics to wait for; each raises Timeout after `timeout` s."""
        return Wait(self._core, timeout)

    async def shutdown(self) -> None:
        """Stops the node: pending writes fail with Fatal, timers and RPCs stop."""
        await self._core.shutdown()


def _check_nodes(nodes: Mapping[int, Any]) -> None:
    """InvalidCommand unless every Node can go into the log: a membership
    entry is stored and replicated with msgpack like any command, and one
    that cannot be encoded would stop the node's log store."""
    for node_id, node in nodes.items():
        if node is None:
            continue
        try:
            if type(node.addr) is not str:
                raise TypeError(f"addr must be a str, got {type(node.addr).__name__}")
            msgpack.unpackb(msgpack.packb(node.data, use_bin_type=True), raw=False,
                            strict_map_key=False)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidCommand(f"node {node_id}: its Node cannot go into the log ({exc}); "
                                 "a Node's addr is a str and its data a msgpack value") from None


class Wait:
    """raft.wait(timeout).<condition>(...): resolves with the metrics that met it."""

    def __init__(self, core: RaftCore, timeout: Optional[float]) -> None:
        self._core = core
        self._timeout = timeout

    async def metrics(self, predicate: Callable[[RaftMetrics], bool], msg: str = "") -> RaftMetrics:
        core = self._core
        core.check_running()
        m = build_metrics(core)
        if predicate(m):
            return m
        fut = core.loop.create_future()
        core.add_metric_waiter(predicate, fut)
        try:
            return await asyncio.wait_for(fut, self._timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"node {core.id}: timed out after {self._timeout}s waiting for "
                          f"{msg or 'a metrics condition'}; last metrics: "
                          f"{build_metrics(core)}") from None
        finally:
            core.remove_metric_waiter(fut)

    async def stopped(self) -> Optional[BaseException]:
        """Returns once the node has stopped: None if it was shut down, or
        the error that stopped it (a storage failure, say). Nothing is
        checked per round meanwhile, so a program may wait on this for
        the node's whole life at no cost to its writes."""
        core = self._core
        if not core.stopped:
            fut = core.loop.create_future()
            core.add_metric_waiter(None, fut)
            try:
                await asyncio.wait_for(fut, self._timeout)
            except Fatal:
                pass
            except asyncio.TimeoutError:
                raise Timeout(f"node {core.id}: timed out after {self._timeout}s waiting for "
                              "the node to stop") from None
            finally:
                core.remove_metric_waiter(fut)
        return core._fatal

    async def state(self, state: ServerState, msg: str = "") -> RaftMetrics:
        return await self.metrics(lambda m: m.state == state, msg or f"state {state.name}")

    async def current_leader(self, leader_id: int, msg: str = "") -> RaftMetrics:
        return await self.metrics(lambda m: m.current_leader == leader_id,
                                  msg or f"leader {leader_id}")

    async def log_index_at_least(self, index: int, msg: str = "") -> RaftMetrics:
        return await self.metrics(lambda m: m.last_log_index >= index,
                                  msg or f"last log index >= {index}")

    async def applied_index_at_least(self, index: int, msg: str = "") -> RaftMetrics:
        return await self.metrics(lambda m: m.last_applied_index >= index,
                                  msg or f"applied index >= {index}")

    async def members(self, ids: Iterable[int], msg: str = "") -> RaftMetrics:
        want = frozenset(ids)
        return await self.metrics(
            lambda m: (m.membership is not None and not m.membership.is_joint
                       and m.membership.voter_ids == want),
            msg or f"voters exactly {sorted(want)} (not joint)")

    async def snapshot(self, log_id: LogId, msg: str = "") -> RaftMetrics:
        return await self.metrics(lambda m: m.snapshot is not None and m.snapshot >= log_id,
                                  msg or f"snapshot at {log_id}")


class Trigger:
    """Manual triggers (openraft's raft.trigger())."""

    def __init__(self, core: RaftCore) -> None:
        self._core = core

    def elect(self) -> None:
        """Starts an election now. NotAllowed on a node that is not a voter."""
        core = self._core
        core.step(core.engine.trigger_elect, core.loop.time())

    def heartbeat(self) -> None:
        """Sends heartbeats to every follower now. NotAllowed unless leader."""
        core = self._core
        core.step(core.engine.trigger_heartbeat, core.loop.time())


    def snapshot(self) -> "asyncio.Future":
        """Builds a snapshot now (off the event loop where the state machine
        allows); the log is then purged per max_in_snapshot_log_to_keep,
        behind the newest snapshot the state machine reports durable
        (StateMachine.durable_snapshot).
        Returns a future of the Snapshot; awaiting it is optional."""
        return self._core.build_snapshot()

    def purge_log(self, upto: int) -> None:
        """Deletes log entries up to `upto`, never past the newest snapshot
        reported durable (or, with a log store that is not persistent, built)
        or the last applied entry."""
        core = self._core
        core.step(core.engine.purge_log, upto)

    def transfer_leader(self, to: int) -> None:
        """Leader: hands leadership to voter `to` once it has caught up. Writes
        are refused with ForwardToLeader meanwhile; if the transfer has not
        completed within an election timeout, this node leads on."""
        core = self._core
        core.step(core.engine.transfer_leader, to, core.loop.time())


class _MembershipChange:
    """Serializes membership changes made through one Raft handle."""

    def __init__(self, core: RaftCore) -> None:
        self._core = core

    async def __aenter__(self) -> None:
        if self._core.changing_membership:
            raise ChangeInProgress("a membership change is in progress on this node; wait for it "
                             "to finish before the next one")
        self._core.changing_membership = True

    async def __aexit__(self, *exc: Any) -> None:
        self._core.changing_membership = False


class RuntimeConfig:
    """Switches that change a running node's behaviour (openraft's runtime_config())."""

    def __init__(self, core: RaftCore) -> None:
        self._core = core

    def heartbeat(self, enabled: bool) -> None:
        """Leader: send periodic heartbeats or not."""
        self._core.engine.heartbeat_enabled = bool(enabled)

    def elect(self, enabled: bool) -> None:
        """Follower: start an election on timeout or not."""
        self._core.engine.elect_enabled = bool(enabled)

    def tick(self, enabled: bool) -> None:
        """Feed time to the engine at all (no heartbeats, no elections when off)."""
        self._core.tick_enabled = bool(enabled)
