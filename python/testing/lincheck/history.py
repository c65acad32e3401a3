"""The model's vocabulary: operations (Op), the History that records them,
and the verdicts (KeyResult, Result)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Optional, Union


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
    #: The model's operation kinds and their number of arguments (a subclass
    #: for another model, such as lincheck.lock.LockOp, gives its own).
    ARITY: ClassVar[dict[str, int]] = _ARITY

    def __post_init__(self) -> None:
        if self.kind not in self.ARITY:
            raise ValueError(f"Op kind must be one of {tuple(self.ARITY)}; got {self.kind!r}")
        args = self.args
        if not isinstance(args, tuple):
            if isinstance(args, list):
                args = tuple(args)
            else:
                raise TypeError(f"Op args must be a tuple or list; got {args!r}")
            object.__setattr__(self, "args", args)
        if len(args) != self.ARITY[self.kind]:
            raise ValueError(
                f"{self.kind} takes {self.ARITY[self.kind]} argument(s) "
                f"({self.args_help(self.kind)}); got args={args!r}")
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

    @staticmethod
    def args_help(kind: str) -> str:
        """What `kind` takes, for an error message."""
        return _args_help(kind)

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
    #: The type of the operations recorded (a subclass for another model
    #: gives its Op subclass).
    op_type: type = Op

    def __init__(self) -> None:
        # [status, client, kind, key, args, call, call_seq, ret, ret_seq, result]
        self._recs: list[list] = []
        self._seq = 0

    def invoke(self, client: Any, kind: str, key: Any, args: Union[tuple, list] = (),
               now: float = 0.0) -> int:
        """An operation was invoked at `now`; returns its token."""
        # Validate now rather than at check time.
        self.op_type(client, kind, key, tuple(args), now)
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
                out.append(self.op_type(client, kind, key, args, call, ret, result, True,
                                        cseq, rseq))
            else:
                out.append(self.op_type(client, kind, key, args, call, None, UNKNOWN, False,
                                        cseq, None))
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

