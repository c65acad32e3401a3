"""The random faults the simulator injects (figure8.py holds the scripted one)."""
from __future__ import annotations

import asyncio
import random

from raftcore.errors import RaftError
from raftcore.member_changes import ChangeMembers
from raftcore.model import Node
from raftcore.raft import Raft


class FaultInjection:
    """Simulation's faults (a mixin: it uses Simulation's state)."""

    async def inject_faults(self) -> None:
        rng = random.Random(self.rng.random())
        while True:
            await asyncio.sleep(rng.expovariate(1.0 / self.s.fault_interval))
            kind = rng.choice(self.s.fault_kinds)
            try:
                did = await self.fault(kind, rng)
            except (RaftError, asyncio.TimeoutError) as exc:
                self.log(f"fault {kind} refused: {exc}")
                continue
            if did:
                self.faults[kind] += 1

    async def fault(self, kind: str, rng: random.Random) -> bool:
        net = self.net
        ids = sorted(i for i in self.started)
        live = [i for i in ids if i not in self.down]
        if kind == "isolate":
            n = rng.choice(ids)
            net.isolate(n)
            self.log(f"isolate {n}")
            self.later(rng.uniform(0.2, 2.0), lambda: (net.restore(n), self.log(f"restore {n}")))
        elif kind == "partition":
            side = set(rng.sample(ids, rng.randrange(1, len(ids))))
            for a in side:
                for b in ids:
                    if b not in side:
                        net.cut(a, b)
                        net.cut(b, a)
            self.log(f"partition {sorted(side)} | {sorted(set(ids) - side)}")
            self.later(rng.uniform(0.3, 2.0), self.heal_links)
        elif kind == "one_way":
            a, b = rng.sample(ids, 2)
            net.cut(a, b)
            self.log(f"cut {a}->{b}")
            self.later(rng.uniform(0.2, 2.0), lambda: (net.uncut(a, b), self.log(f"uncut {a}->{b}")))
        elif kind == "ring":
            order = ids[:]
            rng.shuffle(order)
            ring = {(order[k], order[(k + 1) % len(order)]) for k in range(len(order))}
            ring |= {(b, a) for a, b in ring}
            for a in ids:
                for b in ids:
                    if a != b and (a, b) not in ring:
                        net.cut(a, b)
            self.log(f"ring {order}")
            self.later(rng.uniform(0.3, 2.0), self.heal_links)
        elif kind == "drop":
            rate = rng.uniform(0.05, 0.4)
            net.set_drop_rate(rate)
            self.log(f"drop {rate:.2f}")
            self.later(rng.uniform(0.3, 2.0), lambda: (net.set_drop_rate(0.0), self.log("drop 0")))
        elif kind == "duplicate":
            net.dup_rate = rng.uniform(0.05, 0.3)
            self.log(f"duplicate {net.dup_rate:.2f}")
            self.later(rng.uniform(0.3, 2.0), lambda: setattr(net, "dup_rate", 0.0))
        elif kind == "crash":
            if not live:
                return False
            n = rng.choice(live)
            await self.crash(n)
            self.later(rng.uniform(0.1, 2.0), lambda: asyncio.ensure_future(self.restart(n)))
        elif kind == "crash_leader":
            leader = self.leader_guess()
            if leader is None:
                return False
            n = leader.id
            await self.crash(n)
            self.later(rng.uniform(0.05, 1.0), lambda: asyncio.ensure_future(self.restart(n)))
        elif kind == "lose_blanks":
            # New leaders' first entries get lost while older entries get
            # through: old-term entries reach a majority before the new
            # term's do (the situation Figure 8 of the Raft paper is about).
            net.blank_loss = rng.uniform(0.5, 1.0)
            self.log(f"lose blanks {net.blank_loss:.2f}")
            self.later(rng.uniform(0.3, 2.0), lambda: setattr(net, "blank_loss", 0.0))
        elif kind == "crash_new_leader":
            # The next node to win an election crashes within a few ms, often
            # before its first entry of the new term reaches anyone: logs
            # then diverge the way Figure 8 of the Raft paper draws them.
            self.crash_next_leader = rng.uniform(0.0, 0.003)
            self.log("crash the next new leader")
        elif kind == "power_loss":
            # Several nodes lose power at once: unflushed writes are gone on
            # all of them.
            if len(live) < 2:
                return False
            victims = rng.sample(live, rng.randrange(2, len(live) + 1))
            for n in victims:
                await self.crash(n)
            self.log(f"power loss {victims}")
            for n in victims:
                self.later(rng.uniform(0.05, 1.0),
                           lambda n=n: asyncio.ensure_future(self.restart(n)))
        elif kind == "pause":
            if not live:
                return False
            n = rng.choice(live)
            if n in net.paused:
                return False
            net.paused[n] = asyncio.Event()
            self.rafts[n].runtime_config.tick(False)
            self.log(f"pause {n}")
            self.later(rng.uniform(0.1, 1.0), lambda: self.resume(n))
        elif kind == "disk_full":
            if not live:
                return False
            n = rng.choice(live)
            disk = self.disks[n]
            disk.fill()
            self.log(f"disk full {n}")
            self.later(rng.uniform(0.2, 2.0), lambda: (disk.free(), self.log(f"disk freed {n}")))
        elif kind == "wipe":
            return await self.wipe(rng)
        elif kind == "figure8":
            await self.figure8(rng)
            return False        # counted as it started: a run may end in the middle of it
        elif kind in ("elect", "snapshot", "purge", "transfer"):
            if not live:
                return False
            n = rng.choice(live)
            r = self.rafts[n]
            if kind == "elect":
                r.trigger.elect()
            elif kind == "snapshot":
                fut = r.trigger.snapshot()
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            elif kind == "purge":
                r.trigger.purge_log(r.metrics.last_applied_index)
            else:
                leader = self.leader_guess()
                if leader is None:
                    return False
                to = rng.choice(sorted(leader.metrics.membership.voter_ids))
                leader.trigger.transfer_leader(to)
                n = f"{leader.id}->{to}"
            self.log(f"{kind} {n}")
        else:
            return await self.membership_fault(kind, rng)
        return True

    async def membership_fault(self, kind: str, rng: random.Random) -> bool:
        leader = self.leader_guess()
        if leader is None:
            return False
        m = leader.metrics.membership
        if kind == "add_learner":
            spare = [i for i in self.all_ids if i not in m.nodes and i not in self.down]
            if not spare:
                return False
            n = rng.choice(spare)
            if n not in self.started:
                await self.start_node(n)
            self.log(f"add_learner {n}")
            self.background(leader.add_learner(n, Node(f"sim-{n}"), blocking=False))
        elif kind == "promote":
            if not m.learner_ids:
                return False
            n = rng.choice(sorted(m.learner_ids))
            self.log(f"promote {n}")
            self.background(leader.change_membership(ChangeMembers.add_voter_ids({n})))
        else:
            if len(m.voter_ids) <= 3 or (self.wiped is not None
                                         and not self.replaced(leader, self.wiped)):
                # Not while a wiped voter awaits its replacement: with it
                # stale, fewer voters may leave no quorum.
                return False
            n = rng.choice(sorted(m.voter_ids))
            retain = rng.random() < 0.5
            self.log(f"remove_voter {n} (retain={retain}, leader {leader.id})")
            self.background(leader.change_membership(ChangeMembers.remove_voters({n}),
                                                     retain=retain))
        return True

    async def wipe(self, rng: random.Random) -> bool:
        """Restarts a live member on empty storage under its old id, or, if
        one was wiped before, replaces that one first."""
        leader = self.leader_guess()
        if leader is None:
            return False
        if self.wiped is not None and not self.replaced(leader, self.wiped):
            n = self.wiped
            if self.replacement is None:
                self.replacement = "running"
                self.log(f"replace wiped {n}")
                self.background(self.replace_wiped(leader, n))
            return False        # counted when it wiped
        self.wiped, self.replacement = None, None
        # Only a member whose incarnation a committed membership records:
        # before that, a wiped node cannot be told from a new one (the README
        # says so), and a wiped leader may take the only copy of an
        # uncommitted membership with it, leaving no node that may campaign.
        committed = leader._core.engine.committed_membership
        if committed is None:
            return False
        members = committed.nodes
        live = [i for i in sorted(members) if i not in self.down and i in self.rafts
                and members[i].incarnation is not None]
        # A wiped voter votes no more until it is replaced, which needs a
        # leader: the other voters must still make a quorum, in the committed
        # membership and in any change in flight (two removals decided on
        # stale views can leave two voters; seed 17906334 wiped one of them).
        memberships = (committed, leader._core.engine.membership)
        live = [i for i in live
                if all(m.is_quorum(m.voter_ids - {i}) for m in memberships)]
        if not live:
            return False
        n = rng.choice(live)
        self.wiped_voter = n in committed.voter_ids
        await self.crash(n)
        self.checker.storage_lost(n)
        self.down.discard(n)
        await self.start_node(n)
        self.wiped = n
        self.log(f"wipe {n}: restarted on empty storage")
        return True

    async def replace_wiped(self, leader: Raft, n: int) -> None:
        """What an operator does for a node that lost its disk: remove it
        from the membership, add it back and, if it voted, promote it."""
        try:
            m = leader.metrics.membership
            if n in m.voter_ids:
                await leader.change_membership(ChangeMembers.remove_voters({n}))
            elif n in m.nodes:
                await leader.change_membership(ChangeMembers.remove_nodes({n}))
            await leader.add_learner(n, Node(f"sim-{n}"), blocking=False)
            if self.wiped_voter:
                await leader.change_membership(ChangeMembers.add_voter_ids({n}))
            self.replacement = "done"
            self.log(f"replaced wiped {n}")
        finally:
            if self.replacement == "running":
                self.replacement = None     # failed: the next "wipe" fault retries

    def replaced(self, leader: Raft, n: int) -> bool:
        """True once the replacement of wiped node n took effect: n runs,
        the leader's committed membership and n's own record n's current
        incarnation, and n is a voter again if it was one.
        Before that n may not vote (its log still says it is stale), so
        wiping another member could leave no quorum."""
        if n in self.down or self.replacement == "running":
            return False
        incarnation = self.rafts[n]._core.engine.incarnation
        # Committed on the leader: a membership change still in flight can
        # be lost with the next wiped node (seed 12100340).
        committed = leader._core.engine.committed_membership
        member = committed.nodes.get(n) if committed is not None else None
        return (self.rafts[n]._core.engine.recorded_incarnation(n) == incarnation
                and member is not None and member.incarnation == incarnation
                and (n in committed.voter_ids or not self.wiped_voter))
