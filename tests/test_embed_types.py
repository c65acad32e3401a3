"""Raft.create refuses wrong stores and networks with an error naming the
argument; the types the README names import from where it says."""
from __future__ import annotations

import pytest

from async_runner import async_test
from raftcore import Config, Raft
from raftcore.errors import ConfigError
from raftcore.network import LocalRouter
from raftcore.storage import MemLogStore, MemStateMachine


class NoPurge:
    """A log store missing methods."""

    async def read_vote(self):
        return None


@pytest.mark.parametrize("which, bad, message", [
    ("log_store", None, "log_store is None: give a raftcore.storage.LogStore"),
    ("state_machine", None, "state_machine is None"),
    ("network", None, "network is None"),
    ("log_store", NoPurge(), "log_store (NoPurge) is not a raftcore.storage.LogStore: it has "
                             "no save_vote, get_log_state"),
    ("state_machine", MemLogStore(), "state_machine (MemLogStore) is not a "
                                     "raftcore.storage.StateMachine: it has no apply"),
    ("network", object(), "network (object) is not a raftcore.network.Network: it has no "
                          "client"),
])
@async_test(10)
async def test_create_refuses_a_wrong_argument_naming_it(which, bad, message):
    args = {"network": LocalRouter().network(1), "log_store": MemLogStore(),
            "state_machine": MemStateMachine()}
    args[which] = bad
    with pytest.raises(ConfigError) as info:
        await Raft.create(1, Config(), args["network"], args["log_store"],
                          args["state_machine"])
    assert message in str(info.value)


def test_the_readme_types_import_from_raftcore_and_raftcore_storage():
    import raftcore
    import raftcore.storage
    from raftcore.messages import SnapshotMeta
    from raftcore.types import ENTRY_NORMAL, Entry
    for module in (raftcore, raftcore.storage):
        assert module.ENTRY_NORMAL == ENTRY_NORMAL
        assert module.Entry is Entry and module.SnapshotMeta is SnapshotMeta


def code_lines(path) -> int:
    """Lines holding code: not blank, a comment or a docstring (a string
    standing alone as a statement)."""
    import io
    import tokenize
    lines: set = set()
    logical: list = []
    skipped = (tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT,
               tokenize.ENDMARKER)
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type in skipped:
            continue
        if tok.type != tokenize.NEWLINE:
            logical.append(tok)
            continue
        if not (len(logical) == 1 and logical[0].type == tokenize.STRING):
            for t in logical:
                lines.update(range(t.start[0], t.end[0] + 1))
        logical = []
    return len(lines)


def test_the_readme_counts_the_lines_of_the_two_services_right():
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    for name in ("http_service.py", "http_service_on_raft.py"):
        row = re.search(rf"\| (\d+) \| `examples/{name}`", readme)
        assert row is not None, f"no README row for {name}"
        assert int(row.group(1)) == code_lines(root / "examples" / name), name
