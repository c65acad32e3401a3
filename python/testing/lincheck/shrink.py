"""Shrinking a failing key's history to a small witness of the violation."""
from __future__ import annotations

import bisect
from dataclasses import replace
from typing import Any, Callable, Optional

from raftcore.testing.lincheck.history import UNKNOWN, Op
from raftcore.testing.lincheck.search import _Item, _Problem, _solve

def _prefix_items(items: list[_Item], cut: tuple) -> list[_Item]:
    """The history as seen right after the event with sort key `cut`:
    operations invoked later are left out, those still pending become
    indeterminate."""
    out = []
    for it in items:
        if it.call_key > cut:
            continue
        if it.completed and it.ret_key > cut:
            it = replace(it, completed=False, checked=False, ret_key=None)
        out.append(it)
    return out


def _window_items(items: list[_Item], cut: tuple) -> list[_Item]:
    """The history from the invocation with sort key `cut` on, to be checked
    from an unknown value: operations that returned before `cut` are left
    out; of those spanning it, reads are left out and writes become
    indeterminate; indeterminate operations stay. A relaxation: if the
    history is linearizable, so is this (start from the value right after
    the last operation left out; spanning writes placed before that point
    are "never")."""
    out = []
    for it in items:
        if it.call_key >= cut or not it.completed:
            out.append(it)
        elif it.ret_key >= cut and it.op.kind != "read":
            out.append(replace(it, completed=False, checked=False, ret_key=None))
    return out


def _first_true(f: Callable[[int], bool], lo: int, hi: int, start: int) -> int:
    """The smallest k in (lo, hi] with f(k), for f monotone (False, then
    True) with f(hi) known True: probe `start`, gallop away from it, then
    bisect. (f(k) True is the costly case here, so galloping keeps most
    probes on the cheap side.)"""
    if lo < start < hi:
        if f(start):
            hi = start
            step = 1
            while hi - step > lo:
                if f(hi - step):
                    hi -= step
                    step *= 2
                else:
                    lo = hi - step
                    break
        else:
            lo = start
            step = 1
            while lo + step < hi:
                if f(lo + step):
                    hi = lo + step
                    break
                lo += step
                step *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _minimize(items: list[_Item], initial: Any, check_budget: int,
              budget: int, hint: Optional[tuple] = None) -> tuple[list[_Item], Any, bool]:
    """A small sub-history of `items` (which fail) that still fails on its
    own, and the initial value it fails from (UNKNOWN: any); spends at most
    `budget` search steps, at most `check_budget` on one check. The flag
    says whether shrinking ran to the end (else it stopped early: the result
    is still a failing sub-history)."""
    left = [budget]
    stopped = [False]
    cap = [check_budget]        # per check
    last = [0]                  # steps the last failing check took

    def fails(cand: list[_Item], init: Any) -> bool:
        if left[0] <= 0:
            stopped[0] = True
            return False
        out = _solve(_Problem(cand, init), min(cap[0], left[0]))
        left[0] -= out.steps
        if out.ok is None and left[0] <= 0:
            stopped[0] = True
        if out.ok is False:
            last[0] = out.steps
        return out.ok is False

    # 1. The shortest failing prefix (linearizability is prefix-closed, so
    #    failing is monotone in the cut). The search usually got stuck on
    #    the response that made it fail: try there first.
    rets = sorted(it.ret_key for it in items if it.completed)
    start = bisect.bisect_left(rets, hint) if hint is not None else len(rets) - 1
    k = _first_true(lambda k: fails(_prefix_items(items, rets[k]), initial),
                    -1, len(rets) - 1, min(start, len(rets) - 1))
    cur = sorted(_prefix_items(items, rets[k]), key=lambda it: it.call_key)

    # 2. The shortest window (see _window_items) that still fails from any
    #    value: a later cut only relaxes more, so failing is monotone again.
    #    Short windows are cheap to check: start from the end.
    calls = sorted({it.call_key for it in cur if it.completed}, reverse=True)
    k = _first_true(lambda k: fails(_window_items(cur, calls[k]), UNKNOWN),
                    -1, len(calls), 0)
    if k < len(calls):
        cur = _window_items(cur, calls[k])
        initial = UNKNOWN

    # 3. Relaxations, kept while the sub-history still fails. Each only
    #    widens what is allowed (drop a read; let a write be indeterminate;
    #    stop checking a write's result), so a violation that survives them
    #    is a violation of the original history. ddmin-style: relax chunks,
    #    halving the chunk size.
    def full(it: _Item) -> Optional[_Item]:
        if not it.completed:
            return _SKIP
        if it.op.kind == "read":
            return None
        return replace(it, completed=False, checked=False, ret_key=None)

    def uncheck(it: _Item) -> Optional[_Item]:
        if not it.completed or not it.checked or it.op.kind == "read":
            return _SKIP
        return replace(it, checked=False)

    def drop(it: _Item) -> Optional[_Item]:
        return None if not it.completed and it.op.kind != "read" else _SKIP

    def build(cur: list[_Item], pick: Callable[[_Item], Optional[_Item]],
              which: Callable[[int], bool]) -> list[_Item]:
        out = []
        for j, it in enumerate(cur):
            r = pick(it) if which(j) else _SKIP
            if r is _SKIP:
                out.append(it)
            elif r is not None:
                out.append(r)
        return out

    def relax_round(cur: list[_Item], pick: Callable[[_Item], Optional[_Item]]) -> list[_Item]:
        pending = [j for j, it in enumerate(cur) if pick(it) is not _SKIP]
        relaxed: set[int] = set()
        size = len(pending)
        while pending and not stopped[0]:
            for start in range(0, len(pending), size):
                chunk = set(pending[start:start + size])
                if fails(build(cur, pick, lambda j: j in relaxed or j in chunk), initial):
                    relaxed.update(chunk)
            pending = [j for j in pending if j not in relaxed]
            if size == 1:
                break
            size = max(1, size // 2)
        return build(cur, pick, lambda j: j in relaxed)

    # Relaxing can make the search much harder (many writes free to move);
    # a relaxation whose check costs far more than the current witness's
    # is not worth it: cap the checks, and treat running out as "keep".
    cap[0] = min(check_budget, max(150_000, 10 * last[0]))
    # Unknown-outcome (indeterminate) writes go first, and again once some
    # completed writes became indeterminate: a drop is kept only when the
    # rest still fails on its own (a check that runs out keeps the write).
    # The sub-history failed with them free to take effect or not, so it
    # fails whichever of them took effect: the violation does not need them.
    cur = relax_round(cur, drop)
    cur = relax_round(cur, full)
    cur = relax_round(cur, drop)
    cur = relax_round(cur, uncheck)
    # What the search actually uses (irrelevant indeterminate writes go).
    return _Problem(cur, initial).items, initial, not stopped[0]


_SKIP: Any = object()      # "this relaxation does not apply to that operation"


def _item_op(it: _Item) -> Op:
    op = it.op
    if not it.completed:
        return replace(op, ret=None, ret_seq=None, result=UNKNOWN, ok=False) if op.ok else op
    if not it.checked and op.result is not UNKNOWN:
        return replace(op, result=UNKNOWN)
    return op

