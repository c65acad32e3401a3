# cython: annotation_typing=False
"""The compiled part of the AppendEntries fast path's contract
(raftcore.network.base re-exports it): hand_over, which every caller of an
append_entries_nowait goes through, and ReplyCallback.

Compiled because both ends of every replicated batch go through it (the
leader's send, the follower's answer); it belongs to the transport
contract, not the runtime.
"""
cimport cython

import logging

_log = logging.getLogger("raftcore.network")


def hand_over(nowait, req, reply, owner) -> bool:
    """Calls `nowait(req, reply)` (the append_entries_nowait of `owner`) and
    holds it to the contract: False if it declined (send the request the
    ordinary way); True if it took the request, or failed, reply then
    having been given the error (it raised, or broke the contract by
    returning something else than True or False: a bug logged at ERROR)."""
    try:
        taken = nowait(req, reply)
    except Exception as exc:
        reply(None, exc)
        return True
    if taken is True or taken is False:
        return taken
    reason = (f"{type(owner).__name__}.append_entries_nowait returned {taken!r}; it must "
              "return True (taken: reply is called) or False (declined)")
    _log.error("%s", reason)
    reply(None, TypeError(reason))
    return True


@cython.freelist(16)
cdef class ReplyCallback:
    """Stands in for the future of an answer that comes later: the answer
    goes to reply(value, None) or reply(None, error), once, synchronously,
    when it is set (a future's done callbacks would run one loop iteration
    later). Anything that settles futures (a list of waiters, a table of
    pending requests) can hold one beside real futures: it has done(),
    set_result() and set_exception()."""
    cdef public object reply
    cdef bint answered

    def __init__(self, reply) -> None:
        self.reply = reply

    def done(self) -> bool:
        return self.answered

    def set_result(self, value) -> None:
        if not self.answered:
            self.answered = True
            self.reply(value, None)

    def set_exception(self, exc) -> None:
        if not self.answered:
            self.answered = True
            self.reply(None, exc)
