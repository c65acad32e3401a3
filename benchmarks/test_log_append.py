"""Log append of a batch on a follower: the compiled RaftLog (driven from C
by benchmarks/_raftlog_driver.pyx, as the engine drives it) beside a
plain-Python list-based log running the same algorithm.

Run: pytest benchmarks/
"""
import pytest

from raftcore.types import ENTRY_NORMAL, Entry

#: A log longer than this starts over, so a long benchmark run stays small.
MAX_LOG = 100_000
TERM = 3


class PyLog:
    """Reference: the RaftLog's layout in plain Python (entries[i] holds
    index purged_index + 1 + i)."""

    __slots__ = ("entries", "purged_index", "purged_term")

    def __init__(self, purged_index=0, purged_term=0):
        self.entries = []
        self.purged_index = purged_index
        self.purged_term = purged_term

    def last_index(self):
        return self.purged_index + len(self.entries)

    def term_at(self, index):
        if index == self.purged_index:
            return self.purged_term
        if index < self.purged_index or index > self.purged_index + len(self.entries):
            return -1
        return self.entries[index - self.purged_index - 1].term

    def truncate(self, since):
        del self.entries[since - self.purged_index - 1:]

    def extend(self, entries):
        self.entries.extend(entries)


def py_append_batch(log, prev_index, prev_term, entries):
    """Reference of _raftlog_driver.append_batch, line for line: a deliberate
    copy, the plain-Python side of the comparison (the benchmark times the
    same algorithm compiled and interpreted)."""
    n = len(entries)
    i = 0
    if prev_index > log.last_index():
        return -1
    if prev_index >= log.purged_index and log.term_at(prev_index) != prev_term:
        return -1
    while i < n:
        e = entries[i]
        if e.index <= log.purged_index:
            i += 1
            continue
        if e.index > log.last_index():
            break
        if log.term_at(e.index) != e.term:
            log.truncate(e.index)
            break
        i += 1
    if i < n:
        log.extend(entries[i:] if i else entries)
    return log.last_index()


# Every entry a log may hold before it starts over: POOL[i] has index i + 1.
POOL = [Entry(TERM, i + 1, ENTRY_NORMAL, b"x" * 16) for i in range(MAX_LOG + 512)]


def _appender(new_log, append_batch, batch, held):
    """One call appends a batch of `batch` entries whose first `held` the log
    already has (a resent request), starting over past MAX_LOG entries."""
    state = [new_log(), 0]

    def step():
        log, last = state
        if last > MAX_LOG:
            log = state[0] = new_log()
            last = 0
        prev = last - held if last >= held else 0
        state[1] = append_batch(log, prev, TERM if prev else 0, POOL[prev:prev + batch])
        return state[1]

    return state, step


def _log_ids(log_entries):
    return [(e.term, e.index) for e in log_entries]


CASES = {"new-1": (1, 0), "new-64": (64, 0), "new-256": (256, 0), "half-held-64": (64, 32)}


@pytest.mark.parametrize("impl", ["cython", "python"])
@pytest.mark.parametrize("case", list(CASES))
def test_log_append_batch(benchmark, raftlog_driver, impl, case):
    batch, held = CASES[case]
    # Both implementations build the same log from the same calls.
    c_state, c_step = _appender(raftlog_driver.new_log, raftlog_driver.append_batch, batch, held)
    p_state, p_step = _appender(PyLog, py_append_batch, batch, held)
    for _ in range(50):
        assert c_step() == p_step()
    c_log, p_log = c_state[0], p_state[0]
    assert c_log.last_log_index == p_log.last_index() > 0
    assert _log_ids(c_log.entries_between(1, c_log.last_log_index)) == _log_ids(p_log.entries)

    step = c_step if impl == "cython" else p_step
    benchmark.group = f"log append of a batch ({case}), per call"
    assert benchmark(step) > 0
