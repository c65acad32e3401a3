"""Ready replicated objects: ReplDict, ReplCounter, ReplQueue, ReplLock.

Give them to raftcore.start as `state={"name": ReplDict(), ...}` and call
them through `node.objects["name"]`; every method below is a @command or a
@query (see raftcore.embed.replicated)."""
from __future__ import annotations

from typing import Any, Optional

from raftcore.embed.replicated import applying, command, query

__all__ = ["ReplDict", "ReplCounter", "ReplQueue", "ReplLock"]


class ReplDict:
    """A map of msgpack keys (str, bytes, int) to msgpack values."""

    def __init__(self) -> None:
        self.items: dict[Any, Any] = {}

    @command
    def set(self, key: Any, value: Any) -> Any:
        """Sets `key`; returns the previous value (None if absent)."""
        prev = self.items.get(key)
        self.items[key] = value
        return prev

    @command
    def delete(self, key: Any) -> Any:
        """Removes `key`; returns its value (None if absent)."""
        return self.items.pop(key, None)

    @command
    def cas(self, key: Any, expected: Any, new: Any) -> list:
        """Sets `key` to `new` if it holds `expected` (None: absent);
        returns [done, value after]."""
        cur = self.items.get(key)
        if cur != expected:
            return [False, cur]
        self.items[key] = new
        return [True, new]

    @query
    def get(self, key: Any, default: Any = None) -> Any:
        return self.items.get(key, default)

    @query
    def keys(self) -> list:
        return list(self.items)

    @query
    def size(self) -> int:
        return len(self.items)


class ReplCounter:
    """An integer."""

    def __init__(self) -> None:
        self.value = 0

    @command
    def add(self, n: int = 1) -> int:
        """Adds `n` (an int); returns the new value."""
        if type(n) is not int:
            raise TypeError(f"add takes an int, got {type(n).__name__}")
        self.value += n
        return self.value

    @query
    def get(self) -> int:
        return self.value


class ReplQueue:
    """A FIFO queue of msgpack values, with an optional bound."""

    def __init__(self, maxsize: int = 0) -> None:
        self.items: list[Any] = []
        self.maxsize = maxsize

    @command
    def put(self, item: Any) -> bool:
        """Appends `item`; False (not added) when the queue is full."""
        if self.maxsize and len(self.items) >= self.maxsize:
            return False
        self.items.append(item)
        return True

    @command
    def pop(self) -> list:
        """Takes the oldest item: [True, item], or [False, None] if empty."""
        if not self.items:
            return [False, None]
        return [True, self.items.pop(0)]

    @query
    def peek(self) -> Any:
        return self.items[0] if self.items else None

    @query
    def size(self) -> int:
        return len(self.items)


class ReplLock:
    """Named locks held for a lease, with fencing tokens.

    The time is the leader's clock stamped in each entry (applying().time);
    the leader also logs a tick every tick_interval (raftcore.start), so a
    lease whose holder died expires without other writes. A lock's token is
    the log index of the acquire that took it: it grows with every new
    holder, so a resource that remembers the highest token it saw refuses
    a late write of a holder whose lease had expired.
    """

    #: raftcore.start makes the leader log ticks for objects that say so.
    raft_needs_ticks = True

    def __init__(self) -> None:
        #: name -> [holder, token, expires]
        self.locks: dict[str, list] = {}

    def _live(self, name: str) -> Optional[list]:
        cur = self.locks.get(name)
        if cur is not None and cur[2] <= applying().time:
            return None
        return cur

    # In an entry of its own: its index is the token, unique to this acquire.
    @command(own_entry=True)
    def acquire(self, name: str, holder: str, lease: float) -> list:
        """Takes `name` for `lease` seconds if it is free or expired (or
        renews it if `holder` has it): [True, token] or [False, holder]."""
        if type(lease) not in (int, float) or lease <= 0:
            raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")
        clock = applying()
        cur = self._live(name)
        if cur is not None and cur[0] != holder:
            return [False, cur[0]]
        token = cur[1] if cur is not None else clock.index
        self.locks[name] = [holder, token, clock.time + lease]
        return [True, token]

    @command
    def renew(self, name: str, holder: str, token: int, lease: float) -> bool:
        """Extends the lease if `holder` still has `name` under `token`."""
        cur = self._live(name)
        if cur is None or cur[0] != holder or cur[1] != token:
            return False
        cur[2] = applying().time + lease
        return True

    @command
    def release(self, name: str, holder: str, token: int) -> bool:
        """Frees `name` if `holder` has it under `token`."""
        cur = self._live(name)
        if cur is None or cur[0] != holder or cur[1] != token:
            return False
        del self.locks[name]
        return True

    @query
    def holder(self, name: str) -> Optional[list]:
        """[holder, token] of `name` while its lease runs, else None (as of
        the last entry this node applied)."""
        cur = self._live(name)
        return None if cur is None else [cur[0], cur[1]]
