"""Helpers for driving raftcore engines synchronously in unit tests.

Test modules import it as ``import engine_harness as h``: conftest.py puts
the tests folder on sys.path (the suite runs with ``--import-mode=importlib``,
which does not).

The engine's output is typed (raftcore.commands): tests compare commands
with ``==`` (``SaveVote(Vote(2, 1))``), select them by class, and read their
fields by name.

Nothing here sleeps or reads a clock: time is a float the test passes in, and
randomness (election timeouts) comes from a callable the test chooses.

``isolated`` runs a test in a forked child process. The engine is compiled
code; if it crashes the interpreter (a segfault), that must show up as one
failing test that names the crash, not as a pytest run that dies halfway and
reports nothing about the other tests.
"""
from __future__ import annotations

import faulthandler
import functools
import os
import signal
import traceback

from raftcore.commands import Append, Apply, SaveVote, SendAppend, SendVote, Truncate
from raftcore.engine import Engine
from raftcore.membership import Membership
from raftcore.messages import VoteResponse
from raftcore.types import ENTRY_NORMAL, Entry, LogId, Vote

# ---------------------------------------------------------------- isolation


def isolated(test):
    """Runs the decorated test in a forked child; a crash of the child (a
    signal such as SIGSEGV) fails the test with the child's Python traceback
    at the moment of the crash, printed by faulthandler."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        __tracebackhide__ = True
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            status = 1
            try:
                os.close(read_fd)
                out = os.fdopen(write_fd, "w", buffering=1)
                faulthandler.enable(file=out, all_threads=False)
                try:
                    test(*args, **kwargs)
                except BaseException:
                    out.write("FAILED\n" + traceback.format_exc())
                else:
                    out.write("PASSED\n")
                    status = 0
                out.flush()
            finally:
                os._exit(status)
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            report = pipe.read()
        _, wait_status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(wait_status):
            sig = signal.Signals(os.WTERMSIG(wait_status)).name
            raise AssertionError(
                f"the compiled engine crashed the interpreter with {sig}; "
                f"Python stack at the crash:\n{report}") from None
        if report.startswith("PASSED"):
            return
        raise AssertionError(
            report[len("FAILED\n"):] if report.startswith("FAILED") else report) from None

    return wrapper


# ------------------------------------------------------------------ builders

DEFAULTS = dict(
    heartbeat_interval=0.5,
    election_timeout_min=1.0,
    election_timeout_max=2.0,
    max_payload_entries=64,
    max_payload_bytes=1 << 20,
    max_inflight=4,
)


def constant(value):
    """An rng that always returns `value`: the election timeout is then
    exactly election_timeout_min + value * (max - min)."""
    return lambda: value


def make_engine(node_id, rng=0.0, now=0.0, **config):
    cfg = dict(DEFAULTS)
    cfg.update(config)
    return Engine(node_id, rng=constant(rng) if isinstance(rng, (int, float)) else rng,
                  now=now, **cfg)


def members(*voter_sets, learners=()):
    """Membership of the given voter sets (one, or two when joint) plus learners."""
    ids = set(learners)
    for s in voter_sets:
        ids |= set(s)
    return Membership([set(s) for s in voter_sets], {i: f"node-{i}" for i in sorted(ids)})


def payload(term, index):
    return f"t{term}i{index}".encode()


def entries_of_terms(terms, start=1):
    """Normal entries with the given terms from index `start` on. The payload
    is a function of (term, index), so two logs that hold the same log id hold
    the same entry, as Raft's log matching property requires."""
    return [Entry(t, start + i, ENTRY_NORMAL, payload(t, start + i)) for i, t in enumerate(terms)]


def restored(node_id, membership, terms=(), vote=None, committed=0, rng=0.0, **config):
    """An engine restored from a log with the given terms (index 1 on), all of
    it flushed, with `committed` entries committed and applied."""
    e = make_engine(node_id, rng=rng, **config)
    if vote is None:
        vote = Vote(max(terms, default=0), None, False)
    e.restore(vote, None, entries_of_terms(terms), committed, committed, membership)
    cmds = e.take_commands()
    assert cmds == [], f"restore of a fully applied log must emit nothing, got {cmds}"
    return e


def elect(engine, granting, now=0.0):
    """Makes `engine` campaign (trigger_elect) and feeds it granted votes from
    `granting`, in order. Returns (vote request, commands emitted by the
    election and the votes)."""
    engine.trigger_elect(now)
    cmds = engine.take_commands()
    reqs = [c.request for c in cmds if isinstance(c, SendVote)]
    assert reqs, f"no vote request was sent: {cmds}"
    req = reqs[0]
    for voter in granting:
        engine.handle_vote_response(voter, req, VoteResponse(req.term, True, voter), now)
        cmds += engine.take_commands()
    return req, cmds


def sends(cmds, kind=SendAppend):
    """{target: [request, ...]} of the send commands of one class (SendAppend,
    SendVote, SendTransfer), in order."""
    out = {}
    for c in cmds:
        if isinstance(c, kind):
            out.setdefault(c.target, []).append(c.request)
    return out


def only(reqs):
    assert len(reqs) == 1, f"expected exactly one request, got {reqs}"
    return reqs[0]


def log_ids(engine):
    return [(e.term, e.index) for e in engine.entries(1, engine.last_log_index)]


def last_of(req):
    return req.prev_log_index + len(req.entries)


def flush_all(engine):
    """Reports the whole local log durable (the log store's flush callback)."""
    if engine.last_log_index:
        engine.log_flushed(engine.last_log_term, engine.last_log_index)


def deliver_append(leader, follower, req, now=0.0, flush=True):
    """Hands `req` to `follower`; the follower flushes what it appended (the
    runtime answers a success only after that) and the answer goes back to
    `leader`. Returns (response, follower's commands, leader's commands)."""
    resp = follower.handle_append_entries(req, now)
    f_cmds = follower.take_commands()
    if flush:
        flush_all(follower)
        f_cmds += follower.take_commands()
    leader.handle_append_response(follower.id, req, resp, now)
    return resp, f_cmds, leader.take_commands()


# ----------------------------------------------------------- a whole node


class Node:
    """An engine plus what its runtime would hold: the durable vote, a log
    store that executes the engine's append/truncate commands, the state
    machine's applied entries, and the messages it sent. Checks, as commands
    are executed, the contracts the runtime relies on."""

    def __init__(self, engine, disk=(), applied=()):
        self.engine = engine
        self.id = engine.id
        self.saved_vote = engine.vote
        self.disk = list(disk)          # entries, index i + 1 at position i
        self.pending_flush = []         # (term, index) appended but not yet reported durable
        self.applied = list(applied)    # entries handed to the state machine, in order
        self.outbox = []          # ("vote"/"append", target, request)
        self.history = []         # every command, in order

    def run(self):
        """Executes every pending command; returns them."""
        e = self.engine
        cmds = e.take_commands()
        for c in cmds:
            self.history.append(c)
            if isinstance(c, SaveVote):
                v, before = c.vote, self.saved_vote
                assert v.term >= before.term, \
                    f"node {self.id}: saved term went back from {before} to {v}"
                if v.term == before.term and before.node_id is not None:
                    assert v.node_id == before.node_id, \
                        f"node {self.id}: voted twice in term {v.term}: {before} then {v}"
                self.saved_vote = v
            elif isinstance(c, Append):
                entries = c.entries
                assert entries, f"node {self.id}: empty append"
                assert entries[0].index == len(self.disk) + 1, \
                    f"node {self.id}: append at {entries[0].index} leaves a gap after {len(self.disk)}"
                for k, ent in enumerate(entries):
                    assert ent.index == entries[0].index + k, f"node {self.id}: non-contiguous append"
                self.disk.extend(entries)
                self.pending_flush.append((entries[-1].term, entries[-1].index))
            elif isinstance(c, Truncate):
                since = c.since
                assert since > len(self.applied), \
                    f"node {self.id}: truncate from {since} deletes applied entries"
                del self.disk[since - 1:]
                self.pending_flush = [(t, i) for (t, i) in self.pending_flush if i < since]
            elif isinstance(c, Apply):
                entries = c.entries
                assert entries, f"node {self.id}: empty apply"
                first = len(self.applied) + 1
                assert [x.index for x in entries] == list(range(first, first + len(entries))), \
                    f"node {self.id}: apply out of order: have {len(self.applied)}, got {entries}"
                assert entries[-1].index <= min(e.committed, e.flushed), \
                    (f"node {self.id}: applies {entries[-1].index} beyond committed {e.committed} "
                     f"/ flushed {e.flushed}")
                self.applied.extend(entries)
            elif isinstance(c, SendVote):
                self.outbox.append(("vote", c.target, c.request))
            elif isinstance(c, SendAppend):
                self.outbox.append(("append", c.target, c.request))
            else:
                raise AssertionError(f"unknown command {c!r}")
        assert self.disk == e.entries(1, e.last_log_index), \
            f"node {self.id}: the log store diverged from the engine's log"
        return cmds

    def flush_one(self):
        """The log store reports its oldest pending append durable."""
        term, index = self.pending_flush.pop(0)
        self.engine.log_flushed(term, index)
        return self.run()

    def flush(self):
        while self.pending_flush:
            self.flush_one()


