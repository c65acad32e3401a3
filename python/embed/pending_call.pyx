"""PendingCall: what EmbeddedNode.call returns for a batched call.

A batched call's caller waits on the future its batch settles (no
coroutine per call: raftcore bench --embed). A bare future would do for
`await` and asyncio.gather, but asyncio.create_task and TaskGroup take
coroutines only; PendingCall is both: `await` goes straight to the
future's own iterator, and it speaks the coroutine protocol (send / throw
/ close, registered as a collections.abc.Coroutine) for a task that drives
it. Compiled, it costs one small object a call. (A subclass of
asyncio.Future would need no wrapper, but takes the event loop's slow
path on every wake-up: a fifth fewer calls a second.)
"""
import collections.abc


cdef class PendingCall:
    """An awaitable of a batched call's result (see the module docstring)."""

    cdef object fut
    cdef object steps

    def __cinit__(self, fut):
        self.fut = fut
        self.steps = None

    def __await__(self):
        # An asyncio future's iterator is its __await__'s: iter() reaches
        # it through the type's slot, with no method lookup.
        return iter(self.fut)

    cdef object _steps(self):
        if self.steps is None:
            self.steps = iter(self.fut)
        return self.steps

    def send(self, value):
        return self._steps().send(value)

    def throw(self, typ, val=None, tb=None):
        if val is None:
            return self._steps().throw(typ)
        return self._steps().throw(typ, val, tb)

    def close(self):
        if self.steps is not None:
            self.steps.close()

    def __repr__(self):
        return f"<PendingCall {self.fut!r}>"


collections.abc.Coroutine.register(PendingCall)
