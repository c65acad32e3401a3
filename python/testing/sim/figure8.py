"""The scripted fault: Figure 8 of the Raft paper, played by the real nodes."""
from __future__ import annotations

import asyncio
import random
from typing import Optional

from raftcore.engine import LEADER
from raftcore.raft import Raft
from raftcore.testing.sim.settings import _GaveUp


class Figure8:
    """Simulation's Figure 8 script (a mixin: it uses Simulation's state)."""

    async def figure8(self, rng: random.Random) -> None:
        """Figure 8 of the Raft paper, played by the real nodes.

        (a) Leader A of term t1 is cut off and appends entries X that no
            other node gets (the script writes one); A crashes.
        (b) E, the most up-to-date of the rest, is elected in a later term
            t2 by nodes that lack X, appends its blank entry at X's first
            index and crashes before any of its appends leaves (they are
            lost): E alone holds a conflicting entry of a newer term.
        (c) A restarts and is elected in t3 > t2 (E is down). X reaches a
            majority, but every request carrying an entry of t3 is lost (A
            now sends one entry per request, so X travels apart from them).
            X is on a majority, no entry of t3 is; A crashes.
        (d) E restarts and is elected in t4: its last entry (term t2) is
            newer than X's, so the nodes holding X vote for it. E replaces
            X everywhere with its own entries.

        All legal as long as X was never committed: a leader commits only by
        counting entries of its own term. A leader that counts older terms'
        entries (the "commit_prev_term" bug) commits and applies X in (c),
        and the checker finds E leading without it in (d).

        It starts by healing every other fault and waiting for a settled
        cluster (a leader that all voters, three or more, follow); without
        one it does nothing more. Once it starts it counts itself in
        self.faults (a run may end in the middle of it). Automatic elections
        are off while it runs and it triggers each election, so the scripted
        node wins every term. A step whose state does not come within a
        bounded virtual time ends the script (logged); everything heals
        either way."""
        self.crash_next_leader = None
        await self.heal_all()
        try:
            await self._until(lambda: self._settled_leader() is not None, 3.0,
                              "settled leader with all voters up")
        except _GaveUp as exc:
            self.log(f"figure8 not started: {exc}")
            return
        self.faults["figure8"] += 1
        tag = f"figure8-{self.faults['figure8']}"      # its client in the history
        leader = self._settled_leader()
        a = leader.id
        voters = sorted(leader._core.engine.membership.voter_ids)
        others = [v for v in voters if v != a]
        majority = len(voters) // 2 + 1
        for r in self.live():
            r.runtime_config.elect(False)
        own: list = []

        def lose(f):
            own.append(f)
            self.net.filters.append(f)
            return f

        def unlose(f):
            own.remove(f)
            self.net.filters.remove(f)

        self.log(f"figure8: leader {a} of term {leader._core.engine.vote.term}, voters {voters}")
        try:
            # (a) A alone gets new entries.
            cut_a = lose(lambda src, dst, handler, req: a in (src, dst))
            await self._until(lambda: all(self._durable_last(o) == self._last(o) for o in others),
                              1.0, "flush on the others")
            top = max(self._last(o)[1] for o in others)
            key = f"k{rng.randrange(self.s.keys)}"
            asyncio.ensure_future(self.script_write(tag, a, key))
            await self._until(lambda: self._durable_last(a)[1] > top, 1.0,
                              f"entries beyond {top} flushed on {a}")
            self.log(f"figure8: {a} alone holds {top + 1}..{self._durable_last(a)[1]}")
            self.held.add(a)
            await self.crash(a)

            # (b) E leads a newer term; its entries stay with it.
            best = max(self._durable_last(o) for o in others)
            e = rng.choice([o for o in others if self._durable_last(o) == best])
            cut_e = lose(lambda src, dst, handler, req: src == e and handler != "vote")
            t2 = await self._elect(e)
            k = self.rafts[e]._core.engine.term_start_index
            await self._until(lambda: self._durable_term_at(e, k) == t2, 1.0,
                              f"blank entry {k} flushed on {e}")
            self.log(f"figure8: {e} leads term {t2}; only it holds entry {k} of term {t2}")
            self.held.add(e)
            await self.crash(e)

            # (c) A leads again; its old entries reach a majority, none of its term's do.
            unlose(cut_a)
            unlose(cut_e)
            lose(lambda src, dst, handler, req: src == a and handler == "append_entries"
                 and any(x.term == req.term for x in req.entries))
            self.held.discard(a)
            await self.restart(a, max_payload_entries=1, enable_elect=False)
            t3 = await self._elect(a)
            x_last = self.rafts[a]._core.engine.term_start_index - 1
            x_term = self._durable_term_at(a, x_last)
            await self._until(lambda: sum(self._durable_term_at(v, x_last) == x_term
                                          for v in voters if v != e) >= majority,
                              2.0, f"entry {x_last} on a majority")
            await asyncio.sleep(0.1)    # acks come back; heartbeats go out
            if sum(self._durable_last(v)[0] == t3 for v in voters if v != e) >= majority:
                raise _GaveUp(f"an entry of term {t3} reached a majority")
            self.log(f"figure8: {a} leads term {t3}; entries up to {x_last} (term {x_term}) "
                     f"are on a majority, no entry of term {t3} is")
            self.held.add(a)
            await self.crash(a)

            # (d) E leads again and replaces A's old entries from k on.
            self.held.discard(e)
            await self.restart(e, enable_elect=False)
            t4 = await self._elect(e)
            self.log(f"figure8: {e} leads term {t4}, its entries replace those from {k} on")
            ee = self.rafts[e]._core.engine
            await self._until(lambda: ee.committed >= ee.term_start_index, 2.0,
                              f"commit of term {t4} on {e}")
            self.log("figure8: done")
        except _GaveUp as exc:
            self.log(f"figure8: gave up: {exc}")
        finally:
            for f in list(own):
                unlose(f)
            held, self.held = sorted(self.held), set()
            for r in self.live():
                r.runtime_config.elect(True)
            for n in held:
                await self.restart(n)

    def _settled_leader(self) -> Optional[Raft]:
        """The leader, if every voter (three at least, not joint) is up and
        follows it, and it has committed an entry of its term."""
        leader = self.leader_guess()
        if leader is None:
            return None
        e = leader._core.engine
        m = e.membership
        if m.is_joint or len(m.voter_ids) < 3 or e.committed < e.term_start_index:
            return None
        for v in m.voter_ids:
            if v in self.down or v not in self.rafts:
                return None
            ev = self.rafts[v]._core.engine
            if ev.vote.term != e.vote.term or ev.leader_id != leader.id:
                return None
        return leader

    async def _elect(self, n: int, within: float = 3.0) -> int:
        """Triggers elections on n until it leads; returns its term."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            r = self.rafts[n]
            r.trigger.elect()
            retry = loop.time() + 0.1
            while loop.time() < retry:
                if r._core.engine.state == LEADER:
                    return r._core.engine.vote.term
                await asyncio.sleep(0.001)
        raise _GaveUp(f"node {n} was not elected within {within}s")

    async def _until(self, cond, within: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not cond():
            if loop.time() >= deadline:
                raise _GaveUp(f"no {what} within {within}s")
            await asyncio.sleep(0.001)

    def _last(self, n: int) -> tuple:
        e = self.rafts[n]._core.engine
        return (e.last_log_term, e.last_log_index)

    def _durable_last(self, n: int) -> tuple:
        """(term, index) of the last entry on node n's disk."""
        d = self.disks[n].durable
        if d["entries"]:
            return (d["entries"][-1].term, d["entries"][-1].index)
        return (d["purged"].term, d["purged"].index) if d["purged"] is not None else (0, 0)

    def _durable_term_at(self, n: int, index: int) -> Optional[int]:
        """Term of the entry at `index` on node n's disk (None: not there)."""
        d = self.disks[n].durable
        k = index - (d["purged"].index if d["purged"] is not None else 0) - 1
        return d["entries"][k].term if 0 <= k < len(d["entries"]) else None
