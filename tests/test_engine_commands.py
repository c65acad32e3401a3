"""The engine's typed commands (raftcore.commands) and the test-only engine
with known bugs (raftcore.testing.faulty_engine)."""
import pytest

import engine_harness as h     # tests/engine_harness.py, on the path through conftest.py

import raftcore.commands as commands
from raftcore.commands import (Append, Apply, Command, InstallSnapshot, Purge, SaveVote,
                               SendAppend, SendSnapshot, SendTransfer, SendVote, Truncate)
from raftcore.engine import Engine
from raftcore.messages import (AppendEntriesRequest, SnapshotMeta, TransferLeaderRequest,
                               VoteRequest, VoteResponse)
from raftcore.testing.faulty_engine import ENGINE_BUGS, FaultyEngine, engine_with_bugs
from raftcore.types import ENTRY_NORMAL, Entry, LogId, Vote

M3 = h.members({1, 2, 3})
ENTRIES = [Entry(1, 1, ENTRY_NORMAL, b"x")]
ONE_OF_EACH = [
    (SaveVote(Vote(2, 1)), commands.SAVE_VOTE),
    (Append(ENTRIES), commands.APPEND),
    (Truncate(4), commands.TRUNCATE),
    (SendAppend(2, AppendEntriesRequest(2, 1, 1, 1, ENTRIES, 1)), commands.SEND_APPEND),
    (SendVote(2, VoteRequest(2, 1, 1, 1)), commands.SEND_VOTE),
    (Apply(ENTRIES), commands.APPLY),
    (SendTransfer(3, TransferLeaderRequest(2, 1, 5)), commands.SEND_TRANSFER),
    (SendSnapshot(3), commands.SEND_SNAPSHOT),
    (InstallSnapshot(SnapshotMeta(1, 5, M3, "s"), 0), commands.INSTALL_SNAPSHOT),
    (Purge(LogId(1, 5)), commands.PURGE),
]


def test_each_command_class_has_its_own_kind():
    kinds = [kind for _, kind in ONE_OF_EACH]
    assert len(set(kinds)) == len(kinds)
    for cmd, kind in ONE_OF_EACH:
        assert isinstance(cmd, Command) and cmd.kind == kind


def test_commands_are_equal_when_of_one_class_with_equal_fields():
    assert SaveVote(Vote(2, 1)) == SaveVote(Vote(2, 1))
    assert SaveVote(Vote(2, 1)) != SaveVote(Vote(2, 3))
    assert Append(ENTRIES) != Apply(ENTRIES)          # same fields, another kind
    assert SendSnapshot(3) != (8, 3)


def test_a_command_prints_as_the_call_that_builds_it():
    assert repr(Truncate(4)) == "Truncate(4)"
    assert repr(SendVote(2, VoteRequest(2, 1, 1, 1))) == \
        "SendVote(2, VoteRequest(term=2, candidate=1, last=(1, 1)))"


def test_fields_are_read_only():
    with pytest.raises(AttributeError):
        SendSnapshot(3).target = 4


# ------------------------------------------------ the test-only faulty engine


def _voter(engine_type, **kw):
    e = engine_type(2, rng=h.constant(0.0), **h.DEFAULTS, **kw)
    e.restore(Vote(1, None), None, h.entries_of_terms([1]), 1, 1, M3)
    assert e.handle_vote_request(VoteRequest(2, 1, 1, 1), 0.0).granted
    e.take_commands()
    return e


def test_the_engine_grants_one_vote_per_term_and_the_double_vote_bug_a_second():
    second = VoteRequest(2, 3, 1, 1)
    assert not _voter(Engine).handle_vote_request(second, 0.0).granted
    faulty = _voter(FaultyEngine, bugs=["double_vote"])
    assert faulty.handle_vote_request(second, 0.0).granted
    assert faulty.take_commands() == [SaveVote(Vote(2, 3))]


def test_the_unconfirmed_reads_bug_serves_reads_without_a_round_or_a_lease():
    def leader(engine_type, **kw):
        e = engine_type(1, rng=h.constant(0.0), **h.DEFAULTS, **kw)
        e.restore(Vote(1, None), None, h.entries_of_terms([1]), 1, 1, M3)
        e.trigger_elect(0.0)
        req = h.sends(e.take_commands(), SendVote)[2][0]
        e.handle_vote_response(2, req, VoteResponse(2, True, 2), 0.0)
        return e
    assert leader(Engine).lease_read(0.0) == -1                 # no quorum answered yet
    assert leader(Engine).read_index(0.0)[1] > 0               # waits for a round
    faulty = leader(FaultyEngine, bugs=["unconfirmed_reads"])
    assert faulty.lease_read(0.0) == faulty.committed
    assert faulty.read_index(0.0) == (faulty.committed, 0)


def test_engine_with_bugs_keeps_to_the_engine_bugs_and_names_unknown_ones():
    assert engine_with_bugs(["ack_before_flush"]) is None       # the simulated disk's bug
    make = engine_with_bugs(["ack_before_flush", "double_vote"])
    e = make(1, rng=h.constant(0.0), **h.DEFAULTS)
    assert isinstance(e, FaultyEngine) and e.bugs == {"double_vote"}
    with pytest.raises(ValueError, match="no_such_bug"):
        FaultyEngine(1, bugs=["no_such_bug"], rng=h.constant(0.0), **h.DEFAULTS)
    assert set(ENGINE_BUGS) == {"commit_prev_term", "double_vote", "unconfirmed_reads"}


def test_the_production_engine_has_no_bug_switch():
    assert not [name for name in dir(Engine) if "bug" in name]
