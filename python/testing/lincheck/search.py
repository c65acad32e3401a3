"""One key's sub-history compiled into a search problem, and the search for
a linearization within a budget of steps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from raftcore.testing.lincheck.history import UNKNOWN, Op, _CAS, _DELETE, _READ, _SET, _KIND_CODE
from raftcore.testing.lincheck.values import _Interner

_FAIL = -1
_NO_MATCH = -2            # a cas result that is not [ok, current]
_ANY = -3                 # the unknown initial value (initial=UNKNOWN), known
                          # to differ from every value in _Problem.excluded


@dataclass
class _Item:
    """One operation of a key's sub-history, as the checker sees it."""

    gi: int                 # index in the checked history
    op: Op
    checked: bool           # its result is compared with the model's
    completed: bool         # has a response (else indeterminate)
    call_key: tuple
    ret_key: Optional[tuple]


def _event_keys(op: Op) -> tuple[tuple, Optional[tuple]]:
    # Sorted by (time, class, seq): at equal times, unnumbered invocations
    # come first and unnumbered responses last (concurrent: lenient), and
    # numbered events keep their recording order.
    if op.call_seq is not None:
        ck = (op.call, 1, op.call_seq)
    else:
        ck = (op.call, 0, 0)
    if not op.ok:
        return ck, None
    if op.ret_seq is not None:
        rk = (op.ret, 1, op.ret_seq)
    else:
        rk = (op.ret, 2, 0)
    return ck, rk


class _Problem:
    """A key's sub-history compiled for the search: values interned, the
    operations that cannot matter removed, events in time order."""

    def __init__(self, items: list[_Item], initial: Any) -> None:
        intern = self.intern = _Interner()
        # Reads whose result is not checked (indeterminate ones) do nothing;
        # nor does anything invoked after the last response.
        items = [it for it in items if it.op.kind != "read" or it.checked]
        last_ret = max((it.ret_key for it in items if it.completed), default=None)
        items = [it for it in items if it.completed or (
            last_ret is not None and it.call_key < last_ret)]
        n = len(items)
        kind, a, b = [0] * n, [0] * n, [0] * n
        chk, rok, rval = [False] * n, [False] * n, [0] * n
        for i, it in enumerate(items):
            op = it.op
            k = kind[i] = _KIND_CODE[op.kind]
            if k == _SET:
                a[i] = intern(op.args[0])
            elif k == _CAS:
                a[i] = intern(op.args[0])
                b[i] = intern(op.args[1])
            if it.checked:
                chk[i] = True
                r = op.result
                if k != _CAS:
                    rval[i] = intern(r)
                elif isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], bool):
                    rok[i] = r[0]
                    rval[i] = intern(r[1])
                else:
                    rval[i] = _NO_MATCH
        init_id = None if initial is UNKNOWN else intern(initial)
        # A cas matches values equal under ==, not only the very value it
        # expects: the bookkeeping below is by these classes of values. `ac`:
        # the class a cas expects (_NO_MATCH: it matches nothing).
        eq, never = intern.cas_classes()
        self.eq = eq
        ac = [_NO_MATCH if x in never and kind[i] == _CAS else eq[x] for i, x in enumerate(a)]

        # Who observes a value v (its class): the operations whose recorded
        # result is possible only if the value before them was v, and the
        # cas operations whose result is not checked that expect v.
        def observed(j: int) -> Optional[int]:
            if chk[j]:
                if kind[j] != _CAS:
                    return eq[rval[j]]
                if rok[j]:
                    return ac[j]
                if rval[j] == _NO_MATCH or eq[rval[j]] == ac[j]:
                    return None     # a failed cas cannot show its expected value
                return eq[rval[j]]
            return ac[j] if kind[j] == _CAS else None

        def written(j: int) -> int:
            return 0 if kind[j] == _DELETE else (ac[j] if kind[j] == _SET else eq[b[j]])

        observers: dict[int, set[int]] = {}
        for j in range(n):
            v = observed(j)
            if v is not None:
                observers.setdefault(v, set()).add(j)
        # A cas whose result is not checked and that expects what an
        # indeterminate cas expects also follows it usefully (see _search).
        loose_cas: dict[int, set[int]] = {}
        for j in range(n):
            if kind[j] == _CAS and not chk[j]:
                loose_cas.setdefault(ac[j], set()).add(j)

        def followers(i: int) -> set[int]:
            f = observers.get(written(i), set())
            if kind[i] == _CAS:
                f = f | loose_cas.get(ac[i], set())
            return f - {i}

        # The search linearizes an indeterminate write only right before a
        # follower. One with none is never needed; leaving it out can leave
        # others without one (a dropped cas observed what it expected, and
        # followed other indeterminate cas): a worklist.
        writers: dict[int, list[int]] = {}
        for i in range(n):
            if not items[i].completed:
                writers.setdefault(written(i), []).append(i)
        indet_cas: dict[int, list[int]] = {}
        for i in range(n):
            if not items[i].completed and kind[i] == _CAS:
                indet_cas.setdefault(ac[i], []).append(i)
        dropped: set[int] = set()
        work = [i for i in range(n) if not items[i].completed]
        while work:
            i = work.pop()
            if i in dropped or followers(i):
                continue
            dropped.add(i)
            v = observed(i)
            if v is not None:
                observers[v].discard(i)
                work += writers.get(v, ())     # they may have lost their last follower
            if kind[i] == _CAS:
                loose_cas[ac[i]].discard(i)
                work += indet_cas.get(ac[i], ())
        keep = [i for i in range(n) if i not in dropped]
        renum = {old: new for new, old in enumerate(keep)}
        self.items = [items[i] for i in keep]
        self.kind = [kind[i] for i in keep]
        self.a = [a[i] for i in keep]
        self.ac = [ac[i] for i in keep]
        self.b = [b[i] for i in keep]
        self.chk = [chk[i] for i in keep]
        self.rok = [rok[i] for i in keep]
        self.rval = [rval[i] for i in keep]
        self.completed = [items[i].completed for i in keep]
        # Completed operations whose checked result pins the value before
        # them exactly (see the forced step in _search). A successful cas
        # pins only what it matched: any value == its expected one.
        class_size: dict[int, int] = {}
        for c in eq:
            class_size[c] = class_size.get(c, 0) + 1
        self.pins = [self.completed[i] and self.chk[i]
                     and not (self.kind[i] == _CAS and self.rok[i]
                              and class_size.get(self.ac[i], 0) > 1)
                     for i in range(len(keep))]
        # Initial values to search from. For an unknown one: each value a
        # cas whose result is not checked expects (such a cas succeeds or
        # fails depending on it), and _ANY for "any other value", which
        # takes whatever value the first operation to observe it saw.
        if init_id is None:
            loose = {self.ac[i] for i in range(len(keep))
                     if self.kind[i] == _CAS and not self.chk[i]}
            self.excluded = {v for v in range(len(eq)) if eq[v] in loose}
            self.inits = sorted(self.excluded) + [_ANY]
        else:
            self.excluded = set()
            self.inits = [init_id]
        self.observers = {v: [renum[j] for j in sorted(js)]
                          for v, js in observers.items() if js}
        self.loose_cas = {v: [renum[j] for j in sorted(js)]
                          for v, js in loose_cas.items() if js}
        # An indeterminate write's invocation event can wait until its first
        # follower is invoked: before that it is never linearized.
        ev = []
        for new, old in enumerate(keep):
            it = items[old]
            ck = it.call_key
            if not it.completed:
                ck = max(ck, min(items[j].call_key for j in followers(old)))
            ev.append((ck, 0, new))
            if it.completed:
                ev.append((it.ret_key, 1, new))
        ev.sort()
        self.events = ev

    def value(self, v: int) -> Any:
        return UNKNOWN if v == _ANY else self.intern.values[v]


@dataclass
class _SearchOutcome:
    ok: Optional[bool]
    states: int         # configurations explored
    chain: Any          # linked cells (item index, value id, parent): the
                        # linearization (ok) or the longest prefix (not ok)
    init: int = 0       # the initial value id it starts from
    steps: int = 0      # search steps spent (what the budget counts)


def _solve(p: _Problem, budget: int) -> _SearchOutcome:
    """Search from each of p's initial values (several only when the
    initial value is unknown), within one budget of search steps."""
    best: Optional[_SearchOutcome] = None
    states = steps = 0
    unknown = False
    for init in p.inits:
        if steps >= budget:
            unknown = True
            break
        out = _search(p, budget - steps, init)
        states += out.states
        steps += out.steps
        if out.ok:
            out.states, out.steps = states, steps
            return out
        unknown = unknown or out.ok is None
        if best is None or len(_chain_list(out.chain)) > len(_chain_list(best.chain)):
            best = out
    assert best is not None
    return _SearchOutcome(None if unknown else False, states, best.chain, best.init, steps)


def _search(p: _Problem, budget: int, init: int) -> _SearchOutcome:
    """Wing & Gong / Lowe search over p; see the module docstring."""
    events = p.events
    E = len(events)
    n_completed = sum(p.completed)
    if n_completed == 0:
        return _SearchOutcome(True, 0, None, init)
    # Nodes 1..E in time order; 0 is the head; -1 ends the list.
    nxt = list(range(1, E + 2))
    nxt[E] = -1
    prv = list(range(-1, E))
    is_call = [False] * (E + 1)
    node_item = [0] * (E + 1)
    match = [-1] * (E + 1)
    ret_node = {}
    for pos, (_, is_ret, i) in enumerate(events, start=1):
        node_item[pos] = i
        if is_ret:
            ret_node[i] = pos
        else:
            is_call[pos] = True
    for pos in range(1, E + 1):
        if is_call[pos]:
            match[pos] = ret_node.get(node_item[pos], -1)

    kind, a, b, chk, rok, rval = p.kind, p.a, p.b, p.chk, p.rok, p.rval
    eq, ac, pins = p.eq, p.ac, p.pins
    completed = p.completed
    excluded = p.excluded

    def step(i: int, state: int) -> int:
        """The KV model's step: the new value, or _FAIL when the model's
        answer differs from the recorded one."""
        k = kind[i]
        if state == _ANY:
            # The unknown value (none of `excluded`) is whatever this
            # operation saw.
            if not chk[i]:
                # set, delete; or a cas, whose expected value is excluded
                return a[i] if k == _SET else (0 if k == _DELETE else _ANY)
            v = rval[i]
            if k == _CAS:
                if v == _NO_MATCH:
                    return _FAIL
                if rok[i]:
                    return (b[i] if v == b[i] and ac[i] != _NO_MATCH and a[i] not in excluded
                            else _FAIL)
                if eq[v] == ac[i]:
                    return _FAIL
            if v in excluded:
                return _FAIL
            return a[i] if k == _SET else (0 if k == _DELETE else v)
        if k == _READ:
            return state if (not chk[i] or state == rval[i]) else _FAIL
        if k == _SET:
            return a[i] if (not chk[i] or state == rval[i]) else _FAIL
        if k == _DELETE:
            return 0 if (not chk[i] or state == rval[i]) else _FAIL
        if eq[state] == ac[i]:
            ns, won = b[i], True
        else:
            ns, won = state, False
        if chk[i] and (won != rok[i] or ns != rval[i]):
            return _FAIL
        return ns

    observers = p.observers
    loose_cas = p.loose_cas
    call_node = [0] * len(kind)
    for pos in range(1, E + 1):
        if is_call[pos]:
            call_node[node_item[pos]] = pos
    first_ret = 0       # the first response node in the list; 0: not known
    # same_prev[i]: the indeterminate set/delete of the same value whose
    # invocation node comes last before i's; -1: none.
    same_prev = [-1] * len(kind)
    last_of: dict[int, int] = {}
    for pos in range(1, E + 1):
        i = node_item[pos]
        if is_call[pos] and not completed[i] and kind[i] in (_SET, _DELETE):
            w = a[i] if kind[i] == _SET else 0
            same_prev[i] = last_of.get(w, -1)
            last_of[w] = i

    seen: dict[tuple, list] = {(0, init): [0]}
    state = init
    cbits = 0          # completed items linearized
    ibits = 0          # indeterminate items linearized
    remaining = n_completed
    stack: list[tuple[int, int, bool]] = []
    cell = None
    best = None
    best_depth = 0
    states = 0
    # The budget counts steps, not configurations: every loop turn, every
    # operation looked at by the forced-step scan and every remembered
    # configuration compared with costs one, so that the budget bounds the
    # time whatever a configuration costs to explore.
    work_left = budget
    node = nxt[0]
    fresh_config = True     # just arrived at a new configuration
    forcing = False         # node is this configuration's forced step
    while True:
        if remaining == 0:
            return _SearchOutcome(True, states, cell, init, budget - work_left)
        work_left -= 1
        if work_left < 0:
            return _SearchOutcome(None, states, best, init, budget)
        if fresh_config:
            # Partial-order reduction: a completed operation whose checked
            # result pins the value to the current one and that leaves it
            # unchanged (a read of it, say) can be linearized now, as the
            # only choice: moved here from later in any linearization, it
            # sees the same value and changes nothing.
            fresh_config = False
            x = nxt[0]
            while x != -1 and is_call[x]:
                j = node_item[x]
                if pins[j] and step(j, state) == state:
                    forcing = True
                    break
                x = nxt[x]
                work_left -= 1
            node = x if forcing else nxt[0]
        if node != -1 and is_call[node]:
            i = node_item[node]
            ns = step(i, state)
            if ns != _FAIL and not completed[i]:
                # An indeterminate operation is linearized only if it changes
                # the value and a follower is open right now: an operation
                # that observes the new value or, after a cas, a cas whose
                # result is not checked expecting the same value. Sound: in
                # any linearization, an indeterminate write followed by
                # anything else can be dropped (overwritten unseen) or moved
                # later past the cas (result not checked) that follows it:
                # a set or delete overwrites whatever that cas did, and a cas
                # not expecting the same value fails either way. Every
                # checked result stays the same. And of two unused
                # indeterminate sets (or deletes) of one value, only the one
                # invoked first: they are interchangeable.
                j = same_prev[i]
                while j != -1 and (ibits >> j) & 1:
                    j = same_prev[j]
                if ns == state or j != -1:
                    ns = _FAIL
                elif ns != _ANY:
                    if first_ret == 0:
                        x = node
                        while x != -1 and is_call[x]:
                            x = nxt[x]
                        first_ret = x if x != -1 else E + 1
                    done = cbits | ibits
                    for j in observers.get(eq[ns], ()):
                        if j != i and call_node[j] < first_ret and not (done >> j) & 1:
                            break
                    else:
                        if kind[i] != _CAS:
                            ns = _FAIL
                        else:
                            for j in loose_cas.get(ac[i], ()):
                                if j != i and call_node[j] < first_ret and not (done >> j) & 1:
                                    break
                            else:
                                ns = _FAIL
            if ns != _FAIL:
                if completed[i]:
                    ncb, nib = cbits | (1 << i), ibits
                else:
                    ncb, nib = cbits, ibits | (1 << i)
                key = (ncb, ns)
                used = seen.get(key)
                fresh = True
                if used is None:
                    seen[key] = [nib]
                else:
                    work_left -= len(used)
                    for y in used:
                        if y & ~nib == 0:       # explored with fewer used up
                            fresh = False
                            break
                    if fresh:
                        used.append(nib)
                if fresh:
                    states += 1
                    stack.append((node, state, forcing))
                    forcing = False
                    fresh_config = True
                    cell = (i, ns, cell)
                    if len(stack) > best_depth:
                        best_depth = len(stack)
                        best = cell
                    state, cbits, ibits = ns, ncb, nib
                    # lift: unlink the invocation and its response
                    lp, ln = prv[node], nxt[node]
                    nxt[lp] = ln
                    if ln != -1:
                        prv[ln] = lp
                    r = match[node]
                    if r != -1:
                        lp, ln = prv[r], nxt[r]
                        nxt[lp] = ln
                        if ln != -1:
                            prv[ln] = lp
                        remaining -= 1
                    first_ret = 0
                    node = nxt[0]
                    continue
            if forcing:
                # The forced step leads where the search has been: this
                # configuration fails too.
                forcing = False
                node = -1
            else:
                node = nxt[node]
        else:
            # A response whose operation is not linearized yet: backtrack.
            if not stack:
                return _SearchOutcome(False, states, best, init, budget - work_left)
            first_ret = 0
            node, state, forced = stack.pop()
            i = node_item[node]
            cell = cell[2]
            if completed[i]:
                cbits ^= 1 << i
            else:
                ibits ^= 1 << i
            r = match[node]
            if r != -1:
                remaining += 1
                lp, ln = prv[r], nxt[r]
                nxt[lp] = r
                if ln != -1:
                    prv[ln] = r
            lp, ln = prv[node], nxt[node]
            nxt[lp] = node
            if ln != -1:
                prv[ln] = node
            # A forced step was the only choice: keep backtracking.
            node = -1 if forced else nxt[node]


def _chain_list(chain: Any) -> list[tuple[int, int]]:
    out = []
    while chain is not None:
        out.append((chain[0], chain[1]))
        chain = chain[2]
    out.reverse()
    return out

