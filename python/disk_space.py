"""A node on a full disk: when it enters and leaves the disk-full condition
(as etcd's NOSPACE alarm), the saves that must wait for space (a vote, a
snapshot install), and a leader handing over its leadership meanwhile.

Plain Python: none of it is per entry. The node (RaftCore) owns one
DiskSpace; it hears from the log store's space listener and from the saves
it runs, and tells the node to refuse or take writes again (set_disk_full).
"""
import asyncio
from typing import Any

from raftcore.engine import CANDIDATE, LEADER
from raftcore.errors import NoSpace, is_space_error
from raftcore.types import Vote


class DiskSpace:
    """Tracks what waits for disk space on one node and acts on it."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self._log_full = False            # the log store holds writes for lack of space
        self._waiting_for_space = False   # a vote or snapshot install waits for space
        listen = getattr(core.log_store, "set_space_listener", None)
        if listen is not None:
            listen(self._log_space)

    async def save_vote(self, vote) -> None:
        """Saves the vote; on a full disk waits (as store_when_space) until it can."""
        core = self._core
        try:
            await core.log_store.save_vote(vote)
            return
        except Exception as exc:
            if not is_space_error(exc):
                raise
            error = exc
        engine = core.engine
        if engine.state == CANDIDATE and engine.vote == vote and core.only_vote_requests_wait():
            # This node's vote for itself cannot be saved: call the election
            # off before a request leaves (its in-memory term would otherwise
            # answer, and depose, the leader). What waits on these commands
            # fails; the vote as saved is what is saved again until space is
            # freed (a probe: later votes are saved after it, in order).
            saved = await core.log_store.read_vote() or Vote(0, None, False)
            if engine.vote == vote and engine.abandon_campaign(saved):
                core.log.warning("node %s: cannot save its vote (disk full); no election",
                                 core.id)
                core.drop_deferred(NoSpace(f"node {core.id}: its disk is full: {error}"))
                vote = saved
        await self.store_when_space(core.log_store.save_vote, vote)

    async def store_when_space(self, save, *args) -> None:
        """await save(*args) (a vote save, a snapshot install). On a full disk
        it is tried again until space is freed, and nothing after it runs
        meanwhile: a vote counts, an installed snapshot replaces the log, and
        the commands that follow act, only once it is durable."""
        core = self._core
        delay = 0.05
        while True:
            try:
                await save(*args)
                break
            except Exception as exc:
                if not is_space_error(exc):
                    raise
                if not self._waiting_for_space:
                    self._waiting_for_space = True
                    self._space_changed(exc)
            # The engine steps on meanwhile (a new leader, a new term): its
            # state is reported, though its commands wait for this save.
            core.report_round()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            if core.stopped:
                return
        if self._waiting_for_space:
            self._waiting_for_space = False
            self._space_changed(None)

    def _log_space(self, err) -> None:
        """The log store's space listener: it holds writes for lack of disk
        space (err), or they went through (None)."""
        self._log_full = err is not None
        self._space_changed(err)

    def _space_changed(self, err) -> None:
        """Enters the disk-full condition on `err`; leaves it once neither
        the log nor a vote waits for space (as etcd's NOSPACE alarm)."""
        core = self._core
        if core.stopped:
            return
        if err is not None and core.no_space is None:
            core.set_disk_full(NoSpace(
                f"node {core.id} takes no writes: its disk is full ({err}); "
                "free space on its disk and it resumes by itself"))
            # WARNING: the store logs the error itself (a FileLogStore at ERROR).
            core.log.warning("node %s: disk full: it takes no writes, gives no votes and "
                             "does not campaign until space is freed: %s", core.id, err)
            self.hand_over_leadership()
        elif err is None and core.no_space is not None and not (self._log_full or
                                                                self._waiting_for_space):
            core.set_disk_full(None)
            core.log.warning("node %s: disk space is available again; it resumes", core.id)

    def hand_over_leadership(self) -> None:
        """A leader on a full disk asks the most caught-up voter to take
        over (again after a transfer that timed out)."""
        core = self._core
        engine = core.engine
        if engine.state != LEADER or engine.transfer_to is not None:
            return
        matched = engine.replication() or {}
        voters = [(m, i) for i, m in matched.items() if engine.membership.is_voter(i)]
        if not voters:
            return      # a single voter: nobody to hand over to
        target = max(voters)[1]
        core.log.warning("node %s: disk full; hands leadership to node %s", core.id, target)
        core.step(engine.transfer_leader, target, core.loop.time())
