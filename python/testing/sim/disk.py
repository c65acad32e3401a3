"""SimDisk: a log store that loses what was not flushed when its node crashes."""
from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Optional

from raftcore.errors import NoSpace
from raftcore.storage.base import LogState, LogStore, StoreIdentity

class SimDisk(LogStore):
    """A log store whose writes become durable only after a simulated fsync.

    `durable` survives crash(); what was appended, truncated or purged since
    the last flush is lost. Flushes complete after a random latency, in order;
    with the "ack_before_flush" bug, on_flushed fires before the data is
    durable (what an implementation that acks before fsync does)."""

    def __init__(self, rng: random.Random, durable: Optional[dict] = None,
                 ack_before_flush: bool = False) -> None:
        self.rng = rng
        self.durable = durable if durable is not None else {
            "vote": None, "entries": [], "purged": None, "committed": None,
            "identity": StoreIdentity(None, "%016x" % rng.getrandbits(64))}
        self.entries = list(self.durable["entries"])
        self.purged = self.durable["purged"]
        self.vote = self.durable["vote"]
        self.pending: list = []       # ops not yet durable
        self.waiting: list = []       # on_flushed callbacks of pending appends
        self.flush_scheduled = False
        self.crashed = False
        self.ack_before_flush = ack_before_flush
        # A full disk holds flushes (retried) and refuses vote saves.
        self.full = False
        self.space_reported = False
        self.space_listener = None

    def set_space_listener(self, listener):
        self.space_listener = listener

    def fill(self) -> None:
        self.full = True

    def free(self) -> None:
        self.full = False

    def _base(self) -> int:
        return self.purged.index if self.purged is not None else 0

    async def read_vote(self):
        return self.vote

    async def save_vote(self, vote):
        await asyncio.sleep(self.rng.uniform(0.0002, 0.002))
        if self.full:
            raise NoSpace("simulated full disk: the vote cannot be saved")
        if not self.crashed:
            self.vote = vote
            self.durable["vote"] = vote

    async def get_log_state(self):
        last = self.entries[-1].log_id if self.entries else self.purged
        return LogState(self.purged, last)

    async def read_identity(self):
        return self.durable["identity"]

    async def save_cluster_id(self, cluster_id):
        await asyncio.sleep(self.rng.uniform(0.0002, 0.002))
        if not self.crashed:
            self.durable["identity"] = dataclasses.replace(self.durable["identity"],
                                                           cluster_id=cluster_id)

    async def read_entries(self, first, last):
        base = self._base()
        return self.entries[first - base - 1:last - base]

    def append(self, entries, on_flushed):
        if self.crashed:
            return
        self.entries.extend(entries)
        self.pending.append(("append", list(entries)))
        if self.ack_before_flush:
            on_flushed(None)
        else:
            self.waiting.append(on_flushed)
        self._schedule_flush()

    def truncate_after(self, index):
        if self.crashed:
            return
        del self.entries[max(0, index - self._base()):]
        self.pending.append(("truncate", index))
        self._schedule_flush()

    def purge(self, upto):
        if self.crashed or upto.index <= self._base():
            return
        del self.entries[:upto.index - self._base()]
        self.purged = upto
        self.pending.append(("purge", upto))
        self._schedule_flush()

    async def save_committed(self, committed):
        self.durable["committed"] = committed

    async def read_committed(self):
        return self.durable["committed"]

    def _schedule_flush(self):
        if not self.flush_scheduled:
            self.flush_scheduled = True
            # Mostly quick, sometimes a slow disk.
            delay = self.rng.uniform(0.0001, 0.003)
            if self.rng.random() < 0.05 or self.ack_before_flush:
                # A slow disk; a store that acks early typically syncs lazily.
                delay = self.rng.uniform(0.01, 0.05 if not self.ack_before_flush else 0.2)
            asyncio.get_running_loop().call_later(delay, self._flush)

    def _flush(self):
        self.flush_scheduled = False
        if self.crashed:
            return
        if self.full:
            if not self.space_reported and self.space_listener is not None:
                self.space_reported = True
                self.space_listener(NoSpace("simulated full disk"))
            self._schedule_flush()      # retried until space is freed
            return
        d = self.durable
        for op in self.pending:
            if op[0] == "append":
                d["entries"].extend(op[1])
            elif op[0] == "truncate":
                base = d["purged"].index if d["purged"] is not None else 0
                del d["entries"][max(0, op[1] - base):]
            else:
                base = d["purged"].index if d["purged"] is not None else 0
                if op[1].index > base:
                    del d["entries"][:op[1].index - base]
                    d["purged"] = op[1]
        self.pending = []
        callbacks, self.waiting = self.waiting, []
        if self.space_reported:
            self.space_reported = False
            self.space_listener(None)
        for cb in callbacks:
            cb(None)

    def crash(self) -> dict:
        """Loses everything not yet flushed; returns the durable state."""
        self.crashed = True
        self.pending = []
        self.waiting = []
        return self.durable

