"""Linearizability checker for histories of the MemStateMachine key-value map.

A *history* is what clients saw: for every operation, who issued it, when it
was invoked, when (if ever) its response came back, and what the response
said. The history is *linearizable* if every operation can be given a single
instant between its invocation and its response at which it takes effect
atomically, such that running the operations one at a time in that order
against the sequential KV model gives exactly the responses the clients got.

Operations
----------
``Op(client, kind, key, args, call, ret, result, ok)``; ``kind`` and ``args``:

============  ================  =============================================
kind          args              result (what the client got)
============  ================  =============================================
``"read"``    ``()``            the value (``None``: absent)
``"set"``     ``(value,)``      the previous value (``None``: absent)
``"delete"``  ``()``            the removed value (``None``: was absent)
``"cas"``     ``(expected, new)`` ``[ok, current]``: `new` is stored when the
                                current value equals `expected` (``None``:
                                absent); `current` is the value afterwards
============  ================  =============================================

These are exactly MemStateMachine's commands (``["set", k, v]`` and so on)
plus the linearizable read. ``call`` and ``ret`` are times (floats).

- **Completed** operation (``ok=True``, ``ret`` set): it took effect exactly
  once, somewhere in ``[call, ret]``, and produced ``result``. A result of
  :data:`UNKNOWN` means "it happened, but do not check what it returned".
- **Indeterminate** operation (``ok=False``, or ``ret=None``): the client
  timed out or failed ambiguously. It may have taken effect at any instant
  after ``call`` -- even after every other operation -- or never; its result
  is not checked. (An indeterminate read has no effect and is ignored.)
- An operation that *definitely* did not happen (``ForwardToLeader`` before
  it was proposed, say) must not be in the history at all:
  :meth:`History.fail` drops it.

``ok`` may be omitted: it is then ``ret is not None``.

Ordering. Operation A precedes B when ``A.ret < B.call``. Equal times count
as concurrent (the lenient choice: it never invents a violation) unless both
events were recorded through :class:`History`, which numbers every event it
sees; then the recording order breaks the tie. A simulator on virtual time,
where a response and the next invocation often share one timestamp, should
therefore record through :class:`History`.

Values. A result is compared with the model's by *msgpack value*: two
values are the same when msgpack carries them as the same value, since that
is what a client gets back. ``True``, ``1`` and ``1.0`` are three different
values (a read that returns ``True`` after ``set(1)`` is a violation); a
tuple and a list with the same items are the same value (msgpack has one
array type, and turns tuples into lists in transit); dicts are the same
when their keys and values are, by this same rule; ``bytearray`` is
``bytes``; a NaN is the same value as a NaN; other floats compare with
``==``. A cas matches its expected value the way MemStateMachine's cas
does, though: with Python's ``==`` on the decoded values, so ``cas(1, x)``
succeeds on a stored ``True`` or ``1.0`` (and a list equals a tuple, and a
NaN matches nothing). Values are None, bools, numbers, str, bytes, lists,
tuples and dicts of them (any other hashable value is compared with
``==``). Keys must be hashable.

Recording
---------
::

    h = History()
    t = h.invoke("c1", "set", "x", (5,), now=loop.time())
    ...
    h.complete(t, previous_value, now=loop.time())   # or
    h.indeterminate(t)     # timed out: may or may not have happened
    h.fail(t)              # definitely did not happen: dropped
    result = check(h)

Operations still pending when the history is checked count as
indeterminate. ``complete`` after ``indeterminate`` is allowed (a late answer
to a timed-out request is still a true answer); any other second resolution
of a token raises ``ValueError``.

Checking
--------
``check(history, initial=None, *, budget=DEFAULT_BUDGET, minimize=True)``
returns a :class:`Result`:

- ``result.ok`` is ``True`` (linearizable), ``False`` (not linearizable: a
  definite verdict) or ``None`` (unknown: the search budget ran out before a
  verdict). ``bool(result)`` is ``result.ok is True``. Running out of budget
  never produces a verdict, only ``None`` (see "Budget" below).
- ``initial`` maps keys to their values before the history (default: every
  key absent). A value of :data:`UNKNOWN` means "some value, not known"
  (for checking a window cut out of a longer history, say).
- ``str(result)`` / ``result.explanation``: a readable report. For each key
  that is not linearizable it names the key and shows

  * the smallest failing sub-history found: ``KeyResult.witness``, a list of
    ``Op`` that is not linearizable on its own, starting from the value
    ``KeyResult.witness_initial`` (``UNKNOWN``: from any value), so
    ``check(kr.witness, initial={kr.key: kr.witness_initial})`` fails too;
  * the longest linearizable prefix the search found, in linearization
    order with the value after each step, and the operation that could not
    be linearized after it (``KeyResult.linearization``, ``.values``,
    ``.stuck``).

  The witness is found by shrinking, and only in ways that keep a violation
  a violation of the original history: (1) the shortest failing prefix
  (cut right after a response; operations pending at the cut become
  indeterminate); (2) the shortest failing suffix window of that, checked
  from an unknown value (operations that returned before the window start
  go, reads spanning its start go, writes spanning it become
  indeterminate); (3) relaxations, each kept only while the result still
  fails: drop a read, make a write indeterminate, stop checking a write's
  result (shown as "result not needed"); (4) dropping indeterminate
  (unknown-outcome) writes, before the relaxations and again after them,
  each kept out only when the rest still fails on its own. That one is not
  a relaxation, but the sub-history failed with
  those writes free to take effect or not, so it fails whichever of them
  took effect: the violation does not depend on them. ``minimize`` bounds
  the work (``True``: :data:`DEFAULT_MINIMIZE_BUDGET` search steps per
  failing key; an int: that many; ``False``: no shrinking); if it runs out,
  what was found so far is reported and says so.
- ``result.keys[key]`` is a :class:`KeyResult` for every key;
  ``result.failures`` and ``result.unknown`` list the bad ones.

Budget
------
One number bounds the search: ``budget``, in *search steps* per key
(default :data:`DEFAULT_BUDGET`, 20,000,000: up to about 10 seconds of
CPU, less on dense histories, where most steps are cheap). A step
is one turn of the search loop (trying one operation at one
configuration, or backtracking), one operation looked at while looking for
a forced step, or one comparison with a remembered configuration, so the
budget bounds the time spent whatever a configuration costs: on dense
histories (many concurrent operations, many of them indeterminate) one
configuration can cost hundreds of steps. ``KeyResult.steps`` and
``Result.steps`` say what was spent, ``.states`` how many configurations
were explored. ``raftcore sim --lin-budget`` sets it for the simulator.

Algorithm
---------
Wing & Gong's search with Lowe's improvements (G. Lowe, "Testing for
linearizability", 2017):

- *P-compositionality*: linearizability is local (Herlihy & Wing) and every
  KV operation touches one key, so each key's sub-history is checked on its
  own, with its own budget.
- The search walks a time-ordered doubly linked list of invocation and
  response events. It tries, in order, each operation whose invocation
  comes before the earliest outstanding response; it linearizes the first
  whose model step gives the recorded result and restarts from the head of
  the list; when it meets a response whose operation is not linearized yet,
  it backtracks (dancing-links removal and re-insertion: O(1) each).
- *Memoization*: a configuration is (set of linearized operations, value);
  one seen before is not explored again. Sets are int bitsets, values are
  interned to small ints.
- *Partial-order reduction*: an operation whose checked result pins the
  current value and that leaves it unchanged (a read of it, a failed cas
  that saw it) is linearized at once, as the only choice -- moved there
  from later in any linearization it sees the same value and changes
  nothing. This removes the blow-up from many concurrent reads. (A
  successful cas pins only "a value == the expected one": it is forced only
  when no other value in the history is == to that one.)
- *Indeterminate operations* have an invocation event and no response event
  (their response is at infinity), so they may be linearized any time after
  their invocation; the search succeeds once every *completed* operation is
  linearized, the rest "never happened". The memo table prunes by
  dominance: a configuration with the same completed set and value as one
  explored already, with a superset of the indeterminate operations used
  up, has fewer options and is skipped. Further, an indeterminate write is
  linearized only when it changes the value and a *follower* is open: an
  operation whose result shows the new value, or a cas with an unchecked
  result that expects it (after an indeterminate cas, also one that expects
  what that cas expected). Any linearization can be rearranged into that
  form (a write followed by anything else was overwritten unseen, or can be
  moved past what follows it), so nothing is lost; a write with no follower
  at all is removed before the search, and of two unused indeterminate
  sets of one value only the first is tried. In a simulator this removes
  most timed-out writes that never committed, and keeps the others from
  being tried at every step.
- An unknown initial value is searched as: each value that some unchecked
  cas expects, and "any other value", which becomes whatever the first
  operation to observe it saw.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Optional, Union

__all__ = ["Op", "History", "Result", "KeyResult", "check", "UNKNOWN", "KINDS"]


class _Unknown:
    """The type of :data:`UNKNOWN`."""

    __slots__ = ()
    _instance: Optional["_Unknown"] = None

    def __new__(cls) -> "_Unknown":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __reduce__(self) -> str:
        return "UNKNOWN"


#: A result that is not checked: the operation happened but its response is
#: not known (or not interesting). Indeterminate operations carry it.
UNKNOWN = _Unknown()

KINDS = ("read", "set", "delete", "cas")
_ARITY = {"read": 0, "set": 1, "delete": 0, "cas": 2}
_KIND_CODE = {"read": 0, "set": 1, "delete": 2, "cas": 3}
_READ, _SET, _DELETE, _CAS = 0, 1, 2, 3

#: The search budget per key, in search steps (see check()).
DEFAULT_BUDGET = 20_000_000
#: The budget for shrinking a failing key to a witness, in search steps.
DEFAULT_MINIMIZE_BUDGET = 6_000_000


@dataclass(frozen=True)
class Op:
    """One client operation on one key. See the module docstring."""

    client: Any
    kind: str
    key: Any
    args: tuple = ()
    call: float = 0.0
    ret: Optional[float] = None
    result: Any = None
    ok: Optional[bool] = None
    #: Event numbers assigned by History; they order events at equal times.
    call_seq: Optional[int] = field(default=None, repr=False)
    ret_seq: Optional[int] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in _ARITY:
            raise ValueError(f"Op kind must be one of {KINDS}; got {self.kind!r}")
        args = self.args
        if not isinstance(args, tuple):
            if isinstance(args, list):
                args = tuple(args)
            else:
                raise TypeError(f"Op args must be a tuple or list; got {args!r}")
            object.__setattr__(self, "args", args)
        if len(args) != _ARITY[self.kind]:
            raise ValueError(
                f"{self.kind} takes {_ARITY[self.kind]} argument(s) "
                f"({_args_help(self.kind)}); got args={args!r}")
        if not isinstance(self.call, (int, float)) or not math.isfinite(self.call):
            raise ValueError(f"Op call time must be a finite number; got {self.call!r}")
        ok = self.ok
        if ok is None:
            ok = self.ret is not None
            object.__setattr__(self, "ok", ok)
        if ok:
            if self.ret is None:
                raise ValueError("a completed Op (ok=True) needs its response time ret")
            if not isinstance(self.ret, (int, float)) or not math.isfinite(self.ret):
                raise ValueError(f"Op ret time must be a finite number; got {self.ret!r}")
            if self.ret < self.call:
                raise ValueError(f"Op returned (ret={self.ret!r}) before it was "
                                 f"invoked (call={self.call!r})")
            if (self.ret == self.call and self.call_seq is not None
                    and self.ret_seq is not None and self.ret_seq < self.call_seq):
                raise ValueError("Op response recorded before its invocation")
        else:
            # Indeterminate: the response is at infinity and unknown.
            object.__setattr__(self, "ret", None)
            object.__setattr__(self, "ret_seq", None)
            object.__setattr__(self, "result", UNKNOWN)

    @property
    def indeterminate(self) -> bool:
        return not self.ok

    def describe(self, index: Optional[int] = None) -> str:
        """One line: ``#index client: kind(args) -> result  [call, ret]``."""
        head = f"#{index} " if index is not None else ""
        args = ", ".join(_short(a) for a in (self.key,) + self.args)
        if self.ok:
            res = "?" if self.result is UNKNOWN else _short(self.result)
            span = f"[{self.call:g}, {self.ret:g}]"
        else:
            res = "? (indeterminate)"
            span = f"[{self.call:g}, -]"
        return f"{head}{self.client}: {self.kind}({args}) -> {res}  {span}"


def _args_help(kind: str) -> str:
    return {"read": "none", "set": "(value,)", "delete": "none",
            "cas": "(expected, new)"}[kind]


def _short(v: Any, limit: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit - 3] + "..."


class History:
    """Records a history as it happens, for :func:`check`.

    Each event gets a sequence number, so events with equal timestamps keep
    the order in which they were recorded (see "Ordering" in the module
    docstring)."""

    _PENDING, _DONE, _INDET, _FAILED = range(4)

    def __init__(self) -> None:
        # [status, client, kind, key, args, call, call_seq, ret, ret_seq, result]
        self._recs: list[list] = []
        self._seq = 0

    def invoke(self, client: Any, kind: str, key: Any, args: Union[tuple, list] = (),
               now: float = 0.0) -> int:
        """An operation was invoked at `now`; returns its token."""
        # Validate now rather than at check time.
        Op(client, kind, key, tuple(args), now)
        self._seq += 1
        self._recs.append([self._PENDING, client, kind, key, tuple(args), now,
                           self._seq, None, None, None])
        return len(self._recs) - 1

    def _rec(self, token: int) -> list:
        if not isinstance(token, int) or not 0 <= token < len(self._recs):
            raise ValueError(f"unknown History token {token!r}")
        return self._recs[token]

    def complete(self, token: int, result: Any, now: float) -> None:
        """The operation's response, `result`, arrived at `now`."""
        r = self._rec(token)
        if r[0] not in (self._PENDING, self._INDET):
            raise ValueError(f"History token {token} was already "
                             f"{'completed' if r[0] == self._DONE else 'failed'}")
        if now < r[5]:
            raise ValueError(f"History.complete: now={now!r} is before the "
                             f"invocation at {r[5]!r}")
        self._seq += 1
        r[0], r[7], r[8], r[9] = self._DONE, now, self._seq, result

    def indeterminate(self, token: int) -> None:
        """The operation timed out or failed ambiguously: it may or may not
        have taken effect."""
        r = self._rec(token)
        if r[0] != self._PENDING:
            raise ValueError(f"History token {token} is not pending")
        r[0] = self._INDET

    def fail(self, token: int) -> None:
        """The operation definitely did not take effect: drop it."""
        r = self._rec(token)
        if r[0] != self._PENDING:
            raise ValueError(f"History token {token} is not pending")
        r[0] = self._FAILED

    @property
    def pending(self) -> int:
        return sum(1 for r in self._recs if r[0] == self._PENDING)

    def ops(self) -> list[Op]:
        """The history so far, in invocation order: completed operations,
        and indeterminate ones (including any still pending)."""
        out = []
        for st, client, kind, key, args, call, cseq, ret, rseq, result in self._recs:
            if st == self._FAILED:
                continue
            if st == self._DONE:
                out.append(Op(client, kind, key, args, call, ret, result, True, cseq, rseq))
            else:
                out.append(Op(client, kind, key, args, call, None, UNKNOWN, False, cseq, None))
        return out

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops())

    def __len__(self) -> int:
        return sum(1 for r in self._recs if r[0] != self._FAILED)


@dataclass
class KeyResult:
    """The verdict for one key's sub-history."""

    key: Any
    ok: Optional[bool]
    ops: list[Op]                       # the key's operations, as given
    indices: list[int]                  # their positions in the checked history
    states: int = 0                     # configurations explored
    steps: int = 0                      # search steps spent (the budget's unit)
    #: ok: a linearization (completed operations, plus the indeterminate ones
    #: that took effect). Not ok: the longest linearizable prefix found.
    linearization: list[Op] = field(default_factory=list)
    #: The value after each operation of `linearization`.
    values: list[Any] = field(default_factory=list)
    #: Not ok: the completed operation that could not be linearized after
    #: the longest prefix.
    stuck: Optional[Op] = None
    #: Not ok: the smallest failing sub-history found (not linearizable on
    #: its own; some results replaced by UNKNOWN, some writes indeterminate).
    witness: list[Op] = field(default_factory=list)
    #: The key's value the witness fails from: UNKNOWN means from any value
    #: (check it with ``check(witness, initial={key: UNKNOWN})``).
    witness_initial: Any = None
    explanation: str = ""

    def __bool__(self) -> bool:
        return self.ok is True


@dataclass
class Result:
    """The verdict for a whole history. ``ok``: True, False or None (unknown)."""

    ok: Optional[bool]
    keys: dict = field(default_factory=dict)          # key -> KeyResult
    n_ops: int = 0
    states: int = 0
    steps: int = 0
    explanation: str = ""

    @property
    def failures(self) -> list[KeyResult]:
        return [k for k in self.keys.values() if k.ok is False]

    @property
    def unknown(self) -> list[KeyResult]:
        return [k for k in self.keys.values() if k.ok is None]

    def __bool__(self) -> bool:
        return self.ok is True

    def __str__(self) -> str:
        return self.explanation


# --------------------------------------------------------------------------
# Values


class _Tag:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_SEQ_TAG, _MAP_TAG, _SET_TAG = _Tag("seq"), _Tag("map"), _Tag("set")
_BOOL_TAG, _FLOAT_TAG, _NAN_TAG = _Tag("bool"), _Tag("float"), _Tag("nan")


def _freeze(v: Any, typed: bool) -> Any:
    """A hashable stand-in for `v`; see "Values" in the module docstring.
    typed: equal exactly when the values are the same msgpack value (bool,
    int and float apart; NaN equal to NaN). Not typed: Python's ==, as
    MemStateMachine's cas compares (True == 1 == 1.0; for values holding a
    NaN see _holds_nan). Lists and tuples with equal items are equal either
    way."""
    if isinstance(v, (list, tuple)):
        return (_SEQ_TAG, tuple(_freeze(x, typed) for x in v))
    if isinstance(v, dict):
        return (_MAP_TAG, frozenset((_freeze(k, typed), _freeze(x, typed))
                                    for k, x in v.items()))
    if isinstance(v, (set, frozenset)):
        return (_SET_TAG, frozenset(_freeze(x, typed) for x in v))
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if typed and isinstance(v, (bool, float)):
        if v != v:
            return _NAN_TAG
        return (_BOOL_TAG if isinstance(v, bool) else _FLOAT_TAG, v)
    try:
        hash(v)
    except TypeError:
        raise TypeError(f"lincheck cannot compare the value {v!r}: use msgpack-like "
                        f"values (None, bool, numbers, str, bytes, lists, dicts)") from None
    return v


def _holds_nan(v: Any) -> bool:
    """Whether `v` holds a NaN: no cas matches such a value (NaN != NaN, and
    msgpack decodes a fresh object, so no identity shortcut applies)."""
    if isinstance(v, float):
        return v != v
    if isinstance(v, (list, tuple, set, frozenset)):
        return any(_holds_nan(x) for x in v)
    if isinstance(v, dict):
        return any(_holds_nan(k) or _holds_nan(x) for k, x in v.items())
    return False


class _Interner:
    """Maps values to small ints, one per msgpack value; None is 0."""

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {None: 0}
        self.values: list[Any] = [None]

    def cas_classes(self) -> tuple[list[int], set[int]]:
        """For each value id, the smallest id of a value that a cas counts
        as equal to it (MemStateMachine's ==); and the ids of the values
        that no cas matches, not even itself (they hold a NaN)."""
        first: dict[Any, int] = {}
        classes, never = [], set()
        for i, v in enumerate(self.values):
            if _holds_nan(v):
                classes.append(i)
                never.add(i)
            else:
                classes.append(first.setdefault(_freeze(v, False), i))
        return classes, never

    def __call__(self, v: Any) -> int:
        f = _freeze(v, True)
        i = self.ids.get(f)
        if i is None:
            i = self.ids[f] = len(self.values)
            self.values.append(v)
        return i


# --------------------------------------------------------------------------
# One key: compile and search

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


# --------------------------------------------------------------------------
# Shrinking a failing key to a small witness


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


# --------------------------------------------------------------------------
# Checking


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
