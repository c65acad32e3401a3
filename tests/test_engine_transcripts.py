"""Data-driven engine tests (as etcd raft's testdata): each file in
tests/engine_transcripts/ is a scenario, a list of steps, each followed by
what the engines did, kept as golden text:

    # a comment
    elect 1
    ----
    1: SaveVote(Vote(term=2, node_id=1))
    1: SendVote(2, VoteRequest(term=2, candidate=1, last=(1, 1)))

Steps:
    cluster ID...      engines for voters ID... (log [(1, 1)] committed, term 1)
    elect ID           ID campaigns (trigger_elect)
    write ID DATA      client_write([DATA]) on ID
    flush ID           ID's log store reports all its log durable
    tick ID TIME       ID's timer fires at TIME (seconds)
    deliver            every message sent so far reaches its target, which
                       flushes what it appended; its answer goes back

After each step come the commands every engine emitted (node: command) and,
for deliver, each delivery (sender -> target: request => answer). A change of
the engine's output fails the test with a diff; to accept it, rerun with
RAFTCORE_REWRITE_TRANSCRIPTS=1 and review the files' diff.
"""
import difflib
import os
import pathlib

import pytest

import engine_harness as h     # tests/engine_harness.py, on the path through conftest.py
from raftcore.commands import SendAppend, SendVote
from raftcore.types import Vote

HERE = pathlib.Path(__file__).parent / "engine_transcripts"
REWRITE = os.environ.get("RAFTCORE_REWRITE_TRANSCRIPTS") == "1"


class Scenario:
    def __init__(self) -> None:
        self.engines = {}
        self.in_flight = []       # (sender, SendAppend / SendVote), in the order sent
        self.now = 0.0

    def step(self, line: str) -> list[str]:
        name, *args = line.split()
        out = []
        if name == "cluster":
            ids = [int(a) for a in args]
            membership = h.members(set(ids))
            self.engines = {i: h.restored(i, membership, terms=[1], vote=Vote(1, None),
                                          committed=1) for i in ids}
        elif name == "elect":
            self.engines[int(args[0])].trigger_elect(self.now)
        elif name == "write":
            self.engines[int(args[0])].client_write([args[1].encode()], self.now)
        elif name == "flush":
            h.flush_all(self.engines[int(args[0])])
        elif name == "tick":
            self.now = float(args[1])
            self.engines[int(args[0])].tick(self.now)
        elif name == "deliver":
            out += self._deliver()
        else:
            raise ValueError(f"unknown step {line!r}")
        return out + self._commands()

    def _commands(self) -> list[str]:
        out = []
        for i, e in sorted(self.engines.items()):
            for c in e.take_commands():
                out.append(f"{i}: {c!r}")
                if isinstance(c, (SendAppend, SendVote)):
                    self.in_flight.append((i, c))
        return out

    def _deliver(self) -> list[str]:
        out = []
        batch, self.in_flight = self.in_flight, []
        for src, c in batch:
            sender, target = self.engines[src], self.engines[c.target]
            if isinstance(c, SendVote):
                resp = target.handle_vote_request(c.request, self.now)
                sender.handle_vote_response(c.target, c.request, resp, self.now)
            else:
                resp = target.handle_append_entries(c.request, self.now)
                h.flush_all(target)     # a follower answers once durable
                sender.handle_append_response(c.target, c.request, resp, self.now)
            out.append(f"{src} -> {c.target}: {c.request!r} => {resp!r}")
        return out


def run(text: str) -> str:
    """The transcript `text` with each step's output computed afresh."""
    scenario = Scenario()
    result = []
    for stanza in text.strip().split("\n\n"):
        lines = stanza.split("\n")
        steps = [l for l in lines[:lines.index("----")] if l.strip()] if "----" in lines \
            else lines
        result += steps
        result.append("----")
        for step in steps:
            if not step.startswith("#"):
                result += scenario.step(step)
        result.append("")
    return "\n".join(result)


@pytest.mark.parametrize("path", sorted(HERE.glob("*.txt")), ids=lambda p: p.stem)
def test_engine_transcript(path):
    expected = path.read_text()
    actual = run(expected)
    if REWRITE:
        path.write_text(actual)
        return
    assert actual == expected, "engine output changed:\n" + "\n".join(difflib.unified_diff(
        expected.splitlines(), actual.splitlines(), "expected", "actual", lineterm=""))


def test_a_changed_output_is_caught():
    path = sorted(HERE.glob("*.txt"))[0]
    text = path.read_text()
    assert "SaveVote(Vote(term=2" in text
    assert run(text.replace("SaveVote(Vote(term=2", "SaveVote(Vote(term=9", 1)) == text
