"""Snapshots of one node: building them, streaming one to a follower, and
receiving one in chunks from the leader.

Plain Python: none of it is per entry. The node (RaftCore) owns one
SnapshotTransfer and steps the engine on what it reports; the engine decides
when a snapshot is sent, installed or may be purged behind.
"""
import asyncio
from typing import Any, Optional

from raftcore.errors import NotAllowed, RaftError
from raftcore.messages import InstallSnapshotRequest


class SnapshotTransfer:
    """Builds the node's snapshots, sends them to followers, receives them."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self.building: Optional[asyncio.Task] = None   # a build under way
        self._warned_log_kept = False                  # warned once that no snapshot is durable
        self._rx: Optional[tuple] = None                # (snapshot id, bytearray) being received
        self._ready: dict = {}                         # snapshot id -> received bytes

    # ------------------------------------------------------------ receiving

    def receive_chunk(self, req: InstallSnapshotRequest) -> None:
        """Adds one chunk of a snapshot from the leader; once the last one is
        in, the state machine checks the whole (RaftError if it refuses it)
        and it waits for the engine's install_snapshot (take_received)."""
        sid = req.meta.snapshot_id
        if req.offset == 0:
            self._rx = (sid, bytearray())
        rx = self._rx
        if rx is None or rx[0] != sid or len(rx[1]) != req.offset:
            have = f"{len(rx[1])} bytes of {rx[0]}" if rx else "nothing"
            self._rx = None
            raise RaftError(f"node {self._core.id}: snapshot chunk {sid} at offset {req.offset} "
                            f"does not follow what was received ({have}); restart the transfer")
        rx[1].extend(req.data)
        if req.done:
            data = bytes(rx[1])
            self._rx = None
            try:
                # Before the engine hears of it: a snapshot the state machine
                # cannot read is refused, and nothing here changes.
                self._core.sm.check_snapshot(req.meta, data)
            except Exception as exc:
                raise RaftError(f"node {self._core.id} refuses snapshot {sid}: {exc}") from exc
            self._ready[sid] = data

    def take_received(self, snapshot_id: Any) -> bytes:
        """The data of a snapshot received whole, for installing it."""
        return self._ready.pop(snapshot_id)

    # -------------------------------------------------------------- sending

    async def send(self, target: Any) -> None:
        """Streams the current snapshot to target in chunks, on its own task
        (heartbeats and replication to others go on). The engine asks for
        one stream per follower and waits for its outcome; a chunk that gets
        no answer (the network gives up on it within rpc_timeout, a stalled
        connection included) ends the stream as failed, and the engine starts
        a new one once the follower answers again."""
        core = self._core
        snap = core.sm.get_current_snapshot()
        term = core.engine.vote.term
        size = core.config.snapshot_max_chunk_size
        offset = 0
        try:
            if snap is None or snap.meta.last_log_index < core.engine.log.purged_index:
                # The log was dropped up to what the state machine holds
                # without a snapshot of it: take one now.
                snap = await self.build()
            client = core.peer_client(target)
            core.log.info("node %s sending snapshot %s up to %s to %s", core.id,
                          snap.meta.snapshot_id, snap.meta.last_log_id, target)
            data = snap.data
            while True:
                chunk = data[offset:offset + size]
                done = offset + len(chunk) >= len(data)
                req = InstallSnapshotRequest(term, core.id, snap.meta, offset, chunk, done,
                                             core.engine.cluster_id)
                resp = await client.install_snapshot(req)
                if resp.term != term or done or core.stopped or core.engine.vote.term != term:
                    break
                offset += len(chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            core.count_rpc_error(target, "install_snapshot")
            # (A stream of an earlier term reports nothing: the engine may
            # have started another one since.)
            if not core.stopped and core.engine.vote.term == term:
                core.log.info("node %s: the snapshot stream to %s failed at offset %s: %s; "
                              "a new one starts once it answers again", core.id, target,
                              offset, exc)
                self._failed(target)
            return
        if core.stopped:
            return
        if resp.term > term:
            if core.plausible_answer(target, resp.term):
                # A newer term: the engine steps down.
                core.engine.handle_snapshot_response(target, req, resp, core.loop.time())
                core.run_engine_output()
            elif core.engine.vote.term == term:
                self._failed(target)
            return
        if core.engine.vote.term != term:
            return      # no longer the leader of `term`: nothing to report
        if resp.term < term:
            # Below the term it was sent in: not an answer to trust.
            self._failed(target)
            return
        core.log.info("node %s sent snapshot %s to %s", core.id, snap.meta.snapshot_id, target)
        core.engine.handle_snapshot_response(target, req, resp, core.loop.time())
        core.run_engine_output()

    def _failed(self, target: Any) -> None:
        core = self._core
        core.engine.handle_snapshot_failure(target, core.loop.time())
        core.run_engine_output()

    # ------------------------------------------------------------- building

    def build(self) -> asyncio.Future:
        """Starts building a snapshot (one at a time); returns the build's future."""
        core = self._core
        core.check_running()
        if self.building is None:
            self.building = core.loop.create_task(self._build())
            # A build started by the snapshot policy has nobody awaiting it:
            # its failure is logged by _build, not left unretrieved.
            self.building.add_done_callback(_retrieve)
        return self.building

    async def _build(self) -> Any:
        core = self._core
        try:
            snap = await core.sm.build_snapshot(core.executor)
            if not core.stopped:
                core.log.info("node %s built snapshot %s up to %s", core.id,
                              snap.meta.snapshot_id, snap.meta.last_log_id)
                if core.snapshot is None or core.snapshot.index < snap.meta.last_log_index:
                    core.snapshot = snap.meta.last_log_id
                durable = self._purgeable(snap.meta)
                if durable is not None:
                    core.engine.snapshot_built(durable)
                core.run_engine_output()
            return snap
        except NotAllowed as exc:
            # Asked of a node that has applied nothing (only a caller can:
            # the policy builds after an apply). The caller gets the error;
            # the node has nothing wrong with it to report.
            core.log.info("node %s: no snapshot built: %s", core.id, exc)
            raise
        except Exception as exc:
            # The node goes on with the snapshot it has (on a full disk: until
            # space is freed, when the next build succeeds).
            core.log.error("node %s: building a snapshot failed: %s", core.id, exc)
            raise
        finally:
            self.building = None

    def _purgeable(self, built: Any) -> Any:
        """The snapshot the log may be purged behind: `built` when the log
        store forgets everything on a restart anyway, else the newest one
        the state machine reports durable (warned about once when it lags)."""
        core = self._core
        if not getattr(core.log_store, "persistent", True):
            return built
        report = getattr(core.sm, "durable_snapshot", None)
        durable = report() if report is not None else None
        if (durable is None or durable.last_log_index < built.last_log_index) \
                and not self._warned_log_kept:
            self._warned_log_kept = True
            core.log.warning(
                "node %s: the log is not purged past %s: %s reports %s as durable "
                "(durable_snapshot()), so the log store keeps every later entry; a state "
                "machine that writes its snapshots durably should report them there (see "
                "raftcore.storage.StateMachine). Not repeated.", core.id,
                durable.last_log_id if durable is not None else "its start",
                type(core.sm).__name__,
                f"only {durable.last_log_id}" if durable is not None else "no snapshot")
        return durable


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
