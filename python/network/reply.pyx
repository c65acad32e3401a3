# cython: annotation_typing=False
"""ReplyCallback: the future-like slot of the AppendEntries fast path.

Compiled because both ends of every replicated batch go through it (the
follower's flush wait, the leader's reply frame); it belongs to the
transport contract (raftcore.network.base re-exports it), not the runtime.
"""
cimport cython


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
