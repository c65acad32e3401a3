"""Values compared as msgpack values (see "Values" in the package docstring),
interned to small ints for the search."""
from __future__ import annotations

from typing import Any


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

