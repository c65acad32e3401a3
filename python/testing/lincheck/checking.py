"""check(): split a history by key, search each key, explain the verdicts."""
from __future__ import annotations

from typing import Any, Iterable, Optional, Union

from raftcore.testing.lincheck.history import (DEFAULT_BUDGET, DEFAULT_MINIMIZE_BUDGET, UNKNOWN,
                                               History, KeyResult, Op, Result, _short)
from raftcore.testing.lincheck.search import _Item, _Problem, _chain_list, _event_keys, _solve
from raftcore.testing.lincheck.shrink import _item_op, _minimize

def _check_key(key: Any, entries: list[tuple[int, Op]], initial: Any,
               budget: int, minimize_budget: int) -> KeyResult:
    items = []
    for gi, op in entries:
        ck, rk = _event_keys(op)
        items.append(_Item(gi, op, op.ok and op.result is not UNKNOWN, bool(op.ok), ck, rk))
    p = _Problem(items, initial)
    out = _solve(p, budget)
    kr = KeyResult(key, out.ok, [op for _, op in entries], [gi for gi, _ in entries],
                   out.states, out.steps)
    steps = _chain_list(out.chain)
    kr.linearization = [p.items[i].op for i, _ in steps]
    kr.values = [p.value(v) for _, v in steps]
    n_indet = sum(1 for _, op in entries if not op.ok)
    head = f"key {key!r} ({len(entries)} ops, {n_indet} indeterminate)"
    if out.ok is True:
        kr.explanation = (f"{head}: linearizable ({out.states} states explored, "
                          f"{out.steps} steps)")
        return kr
    if out.ok is None:
        kr.explanation = (f"{head}: unknown -- the search budget of {budget} steps "
                          f"ran out before a verdict ({out.states} states explored; "
                          f"longest linearizable prefix found: {len(steps)} ops)")
        return kr
    # Not linearizable.
    done = {i for i, _ in steps}
    rest = [i for i in range(len(p.items)) if p.completed[i] and i not in done]
    stuck_i = min(rest, key=lambda i: p.items[i].ret_key)
    kr.stuck = p.items[stuck_i].op
    value_after = p.value(steps[-1][1] if steps else out.init)
    lines = [f"{head}: NOT linearizable"]
    if minimize_budget > 0:
        w, w_init, complete = _minimize(p.items, initial, budget, minimize_budget,
                                        p.items[stuck_i].ret_key)
        kr.witness = [_item_op(it) for it in w]
        kr.witness_initial = w_init
        start = ("whatever the value before it" if w_init is UNKNOWN
                 else f"from the value {_short(w_init)}")
        lines.append(f"  smallest failing sub-history found ({len(w)} of {len(entries)} ops; "
                     f"not linearizable on its own, {start}"
                     f"{'' if complete else '; shrinking stopped at its budget'}):")
        for it in sorted(w, key=lambda it: it.call_key):
            note = ""
            if it.op.ok and not it.completed:
                note = "   (counted as indeterminate)"
            elif it.completed and not it.checked and it.op.result is not UNKNOWN:
                note = "   (result not needed)"
            lines.append(f"    {it.op.describe(it.gi)}{note}")
    lines.append(f"  longest linearizable prefix found ({len(steps)} ops, "
                 f"in linearization order, value after each):")
    shown = list(zip(steps, kr.linearization))
    if len(shown) > 12:
        lines.append(f"    ... {len(shown) - 12} earlier ops")
        shown = shown[-12:]
    if not shown:
        lines.append(f"    (none; initial value {initial!r})")
    for (i, v), op in shown:
        lines.append(f"    {op.describe(p.items[i].gi)}   => {_short(p.value(v))}")
    lines.append(f"  then stuck: {kr.stuck.describe(p.items[stuck_i].gi)} cannot take effect "
                 f"next (the value is {_short(value_after)}), nor after any other operation "
                 f"still open; every other order failed too")
    kr.explanation = "\n".join(lines)
    return kr


def check(history: Union[History, Iterable[Op]], initial: Optional[dict] = None, *,
          budget: int = DEFAULT_BUDGET,
          minimize: Union[bool, int] = True) -> Result:
    """Check `history` (a History or Ops) for linearizability against the
    KV model; see the module docstring.

    `initial`: values of keys before the history (absent keys: None;
    UNKNOWN: not known). `budget`: search steps per key (see "Budget" in
    the module docstring); when it runs out the key's verdict is None
    (unknown), never a guess. `minimize`: for a failing key, shrink it to a
    small failing sub-history within this many search steps (True:
    DEFAULT_MINIMIZE_BUDGET; False: do not)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"check: budget must be a positive number of search steps; "
                         f"got {budget!r}")
    if minimize is True:
        minimize_budget = DEFAULT_MINIMIZE_BUDGET
    elif minimize is False or minimize is None:
        minimize_budget = 0
    else:
        minimize_budget = int(minimize)
    ops = history.ops() if isinstance(history, History) else list(history)
    initial = dict(initial or {})
    by_key: dict[Any, list[tuple[int, Op]]] = {}
    for gi, op in enumerate(ops):
        if not isinstance(op, Op):
            raise TypeError(f"history item #{gi} is not an Op: {op!r}")
        try:
            by_key.setdefault(op.key, []).append((gi, op))
        except TypeError:
            raise TypeError(f"history item #{gi}: key {op.key!r} is not hashable") from None
    res = Result(ok=True, n_ops=len(ops))
    for key, entries in by_key.items():
        kr = _check_key(key, entries, initial.get(key), budget, minimize_budget)
        res.keys[key] = kr
        res.states += kr.states
        res.steps += kr.steps
    fails, unknown = res.failures, res.unknown
    n_indet = sum(1 for op in ops if not op.ok)
    summary = (f"{len(ops)} ops ({n_indet} indeterminate) on {len(by_key)} keys, "
               f"{res.states} states explored, {res.steps} steps")
    if fails:
        res.ok = False
        parts = [f"NOT linearizable: {len(fails)} of {len(by_key)} keys fail "
                 f"({', '.join(repr(k.key) for k in fails)}); {summary}"]
        parts += [k.explanation for k in fails]
        if unknown:
            parts.append("also unknown (budget ran out): "
                         + ", ".join(repr(k.key) for k in unknown))
        res.explanation = "\n".join(parts)
    elif unknown:
        res.ok = None
        res.explanation = "\n".join(
            [f"unknown: the search budget ran out on {len(unknown)} key(s) "
             f"({', '.join(repr(k.key) for k in unknown)}); no violation found; {summary}"]
            + [k.explanation for k in unknown])
    else:
        res.explanation = f"linearizable: {summary}"
    return res
