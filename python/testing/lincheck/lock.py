"""Linearizability of a lock service with leases and fencing tokens (the
model of raftcore.embed.ReplLock), checked lock by lock.

Operations (LockOp; `key` is the lock's name):

===========  ========================  ===================================
kind         args                      result
===========  ========================  ===================================
``acquire``  ``(holder, lease)``       ``[True, token]`` or ``[False, h]``
                                       (``h`` holds it)
``renew``    ``(holder, token, lease)`` ``True`` (extended) or ``False``
``release``  ``(holder, token)``       ``True`` (freed) or ``False``
``holder``   ``()``                    ``[holder, token]`` or ``None`` (a
                                       read)
===========  ========================  ===================================

The model. A lock is free, or held by one holder under a token until its
lease expires. Each write takes effect at an instant T of the lock's clock:
the time the leader stamped in the log, which never goes back along the log
and lies between the operation's call and return (the recorder must use the
clock the leaders stamp with). T is not observed, so the model keeps what it
knows of the times as intervals: the earliest time the next write may take
effect, and the earliest and latest time the current lease may end. At T:

- acquire by h: if the lock is live and h holds it, [True, its token] and
  the lease now ends at T + lease; if another holder has it, [False, that
  holder]; if it is free or expired, h takes it under a fresh token (the
  log index of the acquire), greater than every token the lock had before:
  [True, token], the lease ending at T + lease;
- renew: True, the lease ending at T + lease, if the lock is live under
  that holder and token; else False;
- release: True, the lock free, if the lock is live under that holder and
  token; else False;
- holder (a read): the state at the time of the last entry applied before
  it: any time between the previous write's and the read's return.

So in any linearization accepted, tokens only grow and two holders never
overlap: an acquire by another holder succeeds only once the previous
holder released or its lease ran out.

Lenient where time is not known: the intervals are kept per lock (not
across locks), an operation may take effect at any time they allow, an
indeterminate acquire's token is any token greater than those before it.
It never invents a violation; it can miss one that only exact times would
show.

The search is Wing & Gong's with memoized configurations (the set of
operations linearized and the model's state); indeterminate operations may
take effect any time after their call, or never; one that would change
nothing is not tried, and an indeterminate acquire or renew by a holder
that no later result names (nor a later operation of its own) is left out:
nothing could have seen it take effect. ``check_lock(history, budget=...)`` returns a
lincheck Result (ok True, False, or None when the budget ran out); a
failing lock's explanation shows the longest linearizable prefix found and
the operation that could not follow it (no shrinking: the prefix is the
witness).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Iterable, Optional, Union

from raftcore.testing.lincheck.history import (DEFAULT_BUDGET, UNKNOWN, History, KeyResult, Op,
                                               Result, _short)
from raftcore.testing.lincheck.search import _event_keys

__all__ = ["LockOp", "LockHistory", "check_lock", "LOCK_KINDS"]

_LOCK_ARITY = {"acquire": 2, "renew": 3, "release": 2, "holder": 0}
LOCK_KINDS = tuple(_LOCK_ARITY)
_INF = math.inf

# The model's state: (holder, token, lease ends at least, lease ends at
# most, next write at least, highest token so far). holder None: free.
# token None: held under a token not known (an indeterminate acquire's).
_State = tuple
_FREE: _State = (None, None, 0.0, 0.0, -_INF, 0)


class LockOp(Op):
    """One operation on one lock (see the module docstring)."""

    ARITY: ClassVar[dict[str, int]] = _LOCK_ARITY

    @staticmethod
    def args_help(kind: str) -> str:
        return {"acquire": "(holder, lease)", "renew": "(holder, token, lease)",
                "release": "(holder, token)", "holder": "none"}[kind]


class LockHistory(History):
    """A History of lock operations (invoke with LockOp's kinds)."""

    op_type = LockOp


def _token_matches(token: Optional[int], tok: Any) -> list[Optional[int]]:
    """The tokens the lock may have if `tok` is (or is not: None in the
    list) the one it holds under: an unknown token may be either."""
    if token is None:
        return [tok, None]
    return [token] if token == tok else [None]


def _branches(op: Op, s: _State) -> list[tuple[bool, float, float]]:
    """When `op` (a write) may take effect in state `s`: (live, earliest,
    latest) for the lock live at T, and for it free or expired at T."""
    holder, _, elo, ehi, tlo, _ = s
    lo = max(op.call, tlo)
    hi = op.ret if op.ok else _INF
    if lo > hi:
        return []
    out = []
    if holder is not None and lo < ehi:
        out.append((True, lo, min(hi, ehi)))
    if holder is None:
        out.append((False, lo, hi))
    elif hi >= elo:
        out.append((False, max(lo, elo), hi))
    return out


def _step(op: Op, s: _State, checked: bool) -> list[_State]:
    """The states `op` may lead to from `s`, giving its recorded result
    (any result when not `checked`)."""
    holder, token, elo, ehi, tlo, maxtok = s
    res = op.result
    if op.kind == "holder":
        return _read(op, s)
    out: list[_State] = []
    for live, lo, hi in _branches(op, s):
        if op.kind == "acquire":
            h, lease = op.args
            if live and holder != h:
                if not checked or _same(res, [False, holder]):
                    out.append((holder, token, max(elo, lo), ehi, lo, maxtok))
            elif live:
                if not checked:
                    out.append((h, token, lo + lease, hi + lease, lo, maxtok))
                elif _is_grant(res) and (token is None or res[1] == token):
                    out.append((h, res[1], lo + lease, hi + lease, lo, maxtok))
            elif not checked:
                out.append((h, None, lo + lease, hi + lease, lo, maxtok))
            elif _is_grant(res) and res[1] > maxtok:
                out.append((h, res[1], lo + lease, hi + lease, lo, res[1]))
            continue
        h, tok = op.args[0], op.args[1]
        for t in (_token_matches(token, tok) if live and holder == h else [None]):
            done = t is not None
            if checked and res is not done:
                continue
            if not done:
                nxt = (holder, token, max(elo, lo) if live else elo, ehi, lo, maxtok)
                if live or holder is None:
                    out.append(nxt)
                else:   # expired at T: the lock is as good as free
                    out.append((None, None, 0.0, 0.0, lo, maxtok))
            elif op.kind == "renew":
                out.append((h, t, lo + op.args[2], hi + op.args[2], lo, maxtok))
            else:
                out.append((None, None, 0.0, 0.0, lo, maxtok))
    return out


def _read(op: Op, s: _State) -> list[_State]:
    holder, token, elo, ehi, tlo, maxtok = s
    res = op.result
    out = []
    if res is None and (holder is None or op.ret >= elo):
        out.append(s)
    if (holder is not None and tlo < ehi and isinstance(res, (list, tuple)) and len(res) == 2
            and res[0] == holder and (token is None or token == res[1])):
        out.append((holder, res[1], max(elo, tlo), ehi, tlo, maxtok))
    return out


def _is_grant(res: Any) -> bool:
    return (isinstance(res, (list, tuple)) and len(res) == 2 and res[0] is True
            and type(res[1]) is int)


def _same(res: Any, expected: list) -> bool:
    return isinstance(res, (list, tuple)) and list(res) == expected


def _changes(s: _State, ns: _State) -> bool:
    """Whether a step from s to ns does more than narrow the times (an
    indeterminate operation that does only that need not be tried: never
    taking effect leaves more possible)."""
    return s[:2] != ns[:2] or s[5] != ns[5] or ns[3] > s[3]


def _observed(op: Op, later: list[Op]) -> bool:
    """Whether an indeterminate acquire or renew by h could matter: only an
    operation that saw h hold the lock (its result names h) or one of h's
    own shows that it took effect; with none, leaving it out loses no
    linearization (the others saw the lock free or expired either way)."""
    h = op.args[0]
    for o in later:
        if o.kind != "holder" and o.args[0] == h:
            return True
        r = o.result
        if isinstance(r, (list, tuple)) and len(r) == 2 and h in (r[0], r[1]):
            return True
    return False


def _relevant(entries: list[tuple[int, Op]]) -> list[Op]:
    """The operations the search needs, in call order: indeterminate reads
    and unobserved indeterminate acquires and renewals go (_observed)."""
    ops = sorted((op for _, op in entries if op.ok or op.kind != "holder"),
                 key=lambda op: _event_keys(op)[0])
    keep = []
    for op in ops:
        if not op.ok and op.kind in ("acquire", "renew"):
            later = [o for o in ops if o.ok and o is not op
                     and _event_keys(o)[1] > _event_keys(op)[0]]
            if not _observed(op, later):
                continue
        keep.append(op)
    return keep


def _lowest_zero(bits: int) -> int:
    return ((~bits) & (bits + 1)).bit_length() - 1


def _check_lock_key(key: Any, entries: list[tuple[int, Op]], budget: int) -> KeyResult:
    ops = _relevant(entries)
    n = len(ops)
    call_key = [_event_keys(op)[0] for op in ops]
    checked = [bool(op.ok) and op.result is not UNKNOWN for op in ops]
    # The completed operations in response order: the first of them not
    # linearized yet bounds what may go next.
    by_ret = sorted((i for i in range(n) if ops[i].ok), key=lambda i: _event_keys(ops[i])[1])
    rank = {i: r for r, i in enumerate(by_ret)}
    all_ret = (1 << len(by_ret)) - 1
    kr = KeyResult(key, None, [op for _, op in entries], [gi for gi, _ in entries])
    seen: set = set()
    # (operations linearized, completed ones by response rank, state, path)
    stack: list = [(0, 0, _FREE, None)]
    best: Any = None
    best_depth = -1
    steps = 0
    while stack:
        done, done_r, s, path = stack.pop()
        depth = bin(done_r).count("1")
        if depth > best_depth:
            best_depth, best = depth, path
        if done_r == all_ret:
            kr.ok = True
            best = path
            break
        limit = _event_keys(ops[by_ret[_lowest_zero(done_r)]])[1]
        for i in range(_lowest_zero(done), n):
            if call_key[i] > limit:
                break
            if (done >> i) & 1:
                continue
            steps += 1
            op = ops[i]
            for ns in _step(op, s, checked[i]):
                if not op.ok and not _changes(s, ns):
                    continue
                cfg = (done | (1 << i), ns)
                if cfg not in seen:
                    seen.add(cfg)
                    r = done_r | (1 << rank[i]) if op.ok else done_r
                    stack.append((cfg[0], r, ns, (i, ns, path)))
        if steps > budget:
            break
    else:
        kr.ok = False
    kr.states, kr.steps = len(seen), steps
    chain = []
    while best is not None:
        chain.append(best[:2])
        best = best[2]
    chain.reverse()
    kr.linearization = [ops[i] for i, _ in chain]
    kr.values = [ns[:2] for _, ns in chain]
    _explain(kr, ops, by_ret, chain, budget)
    return kr


def _explain(kr: KeyResult, ops: list[Op], completed: list[int], chain: list,
             budget: int) -> None:
    n_indet = sum(1 for op in kr.ops if not op.ok)
    head = f"lock {kr.key!r} ({len(kr.ops)} ops, {n_indet} indeterminate)"
    if kr.ok is True:
        kr.explanation = f"{head}: linearizable ({kr.states} states explored)"
        return
    if kr.ok is None:
        kr.explanation = (f"{head}: unknown -- the search budget of {budget} steps ran out "
                          f"({kr.states} states explored)")
        return
    done = {i for i, _ in chain}
    stuck = min((i for i in completed if i not in done), key=lambda i: _event_keys(ops[i])[1])
    kr.stuck = ops[stuck]
    kr.witness = [ops[i] for i, _ in chain] + [ops[stuck]]
    lines = [f"{head}: NOT linearizable",
             f"  longest linearizable prefix found ({len(chain)} ops, in linearization "
             "order, [holder, token] after each):"]
    shown = list(zip(chain, kr.linearization))
    if len(shown) > 12:
        lines.append(f"    ... {len(shown) - 12} earlier ops")
        shown = shown[-12:]
    for (i, ns), op in shown:
        lines.append(f"    {op.describe()}   => {_short(list(ns[:2]))}")
    lines.append(f"  then stuck: {kr.stuck.describe()} cannot take effect next, nor after "
                 "any other operation still open; every other order failed too")
    kr.explanation = "\n".join(lines)


def check_lock(history: Union[History, Iterable[Op]], *,
               budget: int = DEFAULT_BUDGET) -> Result:
    """Checks a history of lock operations against the lock model (see
    the module docstring), each lock on its own within `budget` search
    steps."""
    ops = history.ops() if isinstance(history, History) else list(history)
    by_key: dict[Any, list[tuple[int, Op]]] = {}
    for gi, op in enumerate(ops):
        if not isinstance(op, LockOp):
            raise TypeError(f"history item #{gi} is not a LockOp: {op!r}")
        by_key.setdefault(op.key, []).append((gi, op))
    res = Result(ok=True, n_ops=len(ops))
    for key, entries in by_key.items():
        kr = res.keys[key] = _check_lock_key(key, entries, budget)
        res.states += kr.states
        res.steps += kr.steps
    fails, unknown = res.failures, res.unknown
    summary = f"{len(ops)} lock ops on {len(by_key)} locks, {res.states} states explored"
    if fails:
        res.ok = False
        res.explanation = "\n".join([f"NOT linearizable: {len(fails)} of {len(by_key)} locks "
                                     f"fail; {summary}"] + [k.explanation for k in fails])
    elif unknown:
        res.ok = None
        res.explanation = "\n".join([f"unknown: the search budget ran out on {len(unknown)} "
                                     f"lock(s); no violation found; {summary}"]
                                    + [k.explanation for k in unknown])
    else:
        res.explanation = f"linearizable: {summary}"
    return res
