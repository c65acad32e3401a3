"""Applying the embedding layer's entries (see raftcore.embed.replicated
for their layout), compiled: every node applies every caller's commands, so
this is the layer's hot path on every node (raftcore bench --embed: a third
of a call's time when it was Python).

Everything here is a function of the log alone: every node answers the same
way, malformed entries included (they are committed).

Answers are tuples: kept in a session until the caller has them, and a
tuple of scalars is left alone by the garbage collector after its first
pass.
"""
import msgpack

from raftcore.types cimport MEMBERSHIP, NORMAL, Entry

#: Answer codes of a command.
OK = 0
FAILED = 1
STALE = 2

#: Entry tags and the layout of a batch (replicated.py documents them).
CMD = "rc"
BATCH = "rb"
TICK = "rt"
#: Fields of one call in a BATCH entry (seq, object, method, args), after
#: its BATCH_HEAD fields (tag, client_id, acked_below, stamp).
BATCH_HEAD = 4
BATCH_STRIDE = 4

#: Types whose values are msgpack values as they are (no trial encoding needed).
SCALAR_TYPES = (int, str, type(None), bool, float, bytes)
#: What a session's client id may be (hashable as msgpack decodes it).
CLIENT_ID_TYPES = (str, bytes, int)


cdef class ApplyClock:
    """The log position and the leader-stamped time of the entry being
    applied (or, outside apply, of the last one applied)."""

    #: Log index of the entry (a lock's fencing token is its acquire's).
    cdef public long long index
    #: Seconds since the epoch, by the leaders' clocks, never going back.
    cdef public double time

    def __init__(self):
        self.index = 0
        self.time = 0.0


cdef class Session:
    """A caller's answers at or above `floor` (it has those below)."""

    cdef public object floor
    cdef public dict answers

    def __init__(self, floor=0, answers=None):
        self.floor = floor
        self.answers = answers if answers is not None else {}


cpdef tuple invoke(fn, list args):
    """(OK, result) of `fn(*args)`, or (FAILED, "Type: message") if it
    raised or its result is not a msgpack value."""
    try:
        result = fn(*args)
        if type(result) not in SCALAR_TYPES:
            msgpack.packb(result, use_bin_type=True)
    except Exception as exc:
        return (FAILED, f"{type(exc).__name__}: {exc}")
    return (OK, result)


cdef list _stale(cid, seq, floor):
    return [STALE, f"call {seq!r:.20} of {cid!r:.60} is older than what its caller "
                   f"acknowledged ({floor}); not applied again"]


cdef class CommandApplier:
    """The sessions of a ReplicatedStateMachine and the apply of its entries.

    clock: the state machine's ApplyClock (its time moves with the stamps);
    lookup(object, method): the bound @command, or None.
    """

    #: client id -> Session, least recently active first.
    cdef dict _sessions
    cdef public Py_ssize_t max_sessions
    cdef ApplyClock clock
    #: The most recently active session and its client id (no reordering
    #: of the sessions while one caller's entries follow each other).
    cdef object last_cid
    cdef Session last_session
    cdef object lookup
    #: (object, method) -> bound @command, filled as commands are first run.
    cdef dict commands
    #: The command found last (last_fn), by its object and method names.
    cdef object last_name, last_method, last_fn

    def __init__(self, ApplyClock clock, Py_ssize_t max_sessions, lookup):
        self.sessions = {}
        self.max_sessions = max_sessions
        self.clock = clock
        self.lookup = lookup
        self.commands = {}
        self.last_name = self.last_method = self.last_fn = None

    @property
    def sessions(self):
        return self._sessions

    @sessions.setter
    def sessions(self, dict sessions):
        self._sessions = sessions
        self.last_cid = None
        self.last_session = None

    def apply(self, list entries, sm):
        """The answers of `entries` (None for a blank or membership entry);
        keeps sm.last_membership and sm.last_applied. The clock's index is
        each entry's while it applies (applying().index)."""
        cdef Entry e
        cdef list out = []
        cdef ApplyClock clock = self.clock
        for e in entries:
            if e.kind != NORMAL:
                if e.kind == MEMBERSHIP:
                    sm.last_membership = e.payload
                out.append(None)
                continue
            clock.index = e.index
            out.append(self.apply_payload(e.payload))
        if entries:
            sm.last_applied = entries[-1].log_id
        return out

    cpdef object apply_payload(self, p):
        """The answer of a normal entry's payload (see the module docstring
        of replicated.py): an answer, a list of them for a batch, None for
        a tick."""
        cdef Py_ssize_t n, i
        cdef list e
        if type(p) is not list or not p:
            return [FAILED, f"not an entry of the embedding layer: {p!r:.80}"]
        e = <list>p
        tag = e[0]
        n = len(e)
        if tag == CMD and n == 8:
            # [CMD, client_id, seq, acked_below, object, method, args, stamp]
            self._advance(e[7])
            s = self._session(e[1])
            if s is None:
                return [FAILED, f"a client id is a str, bytes or int, got {e[1]!r:.60}"]
            answer = self._answer(s, e[1], e[2], e[4], e[5], e[6])
            self._acknowledge(s, e[3])
            return answer
        if tag == BATCH and n > BATCH_HEAD and (n - BATCH_HEAD) % BATCH_STRIDE == 0:
            self._advance(e[3])
            s = self._session(e[1])
            if s is None:
                return [[FAILED, f"a client id is a str, bytes or int, got {e[1]!r:.60}"]] * \
                    ((n - BATCH_HEAD) // BATCH_STRIDE)
            cid = e[1]
            answers = []
            name = method = None
            for i in range(BATCH_HEAD, n, BATCH_STRIDE):
                # Object and method both None: the previous call's.
                if e[i + 1] is not None or e[i + 2] is not None:
                    name, method = e[i + 1], e[i + 2]
                answers.append(self._answer(s, cid, e[i], name, method, e[i + 3]))
            self._acknowledge(s, e[2])
            return answers
        if tag == TICK and n == 2:
            self._advance(e[1])
            return None
        return [FAILED, f"not an entry of the embedding layer: {p!r:.80}"]

    cdef Session _session(self, cid):
        """The session of client `cid`, made the most recently active (None
        for a client id of the wrong type)."""
        if type(cid) not in CLIENT_ID_TYPES:
            return None
        if self.last_session is not None and type(cid) is type(self.last_cid) \
                and cid == self.last_cid:
            return self.last_session        # already the most recently active
        cdef dict sessions = self._sessions
        s = sessions.pop(cid, None)
        if s is None:
            s = Session()
            if len(sessions) >= self.max_sessions:
                del sessions[next(iter(sessions))]
        sessions[cid] = s          # most recently active last
        self.last_cid = cid
        self.last_session = <Session>s
        return <Session>s

    cdef object _answer(self, Session s, cid, seq, name, method, args):
        """Call `seq`'s answer: run now, or kept from when it first ran (a
        retry), or STALE below the session's floor."""
        if type(seq) is not int or seq < s.floor:
            return _stale(cid, seq, s.floor)
        answer = s.answers.get(seq)
        if answer is None:
            answer = s.answers[seq] = self._run(name, method, args)
        return answer

    cdef tuple _run(self, name, method, args):
        if name == self.last_name and method == self.last_method:
            # Calls come in runs of one command (a batch of a busy
            # object's): no key to build and hash.
            fn = self.last_fn
        else:
            try:
                key = (name, method)
                fn = self.commands.get(key)
                if fn is None:
                    fn = self.lookup(name, method)
                    if fn is not None:
                        self.commands[key] = fn
            except TypeError:       # an unhashable name or method
                fn = None
            if fn is not None:
                self.last_name, self.last_method, self.last_fn = name, method, fn
        if fn is None or type(args) is not list:
            return (FAILED, f"no command {name!r:.40}.{method!r:.40} taking a list of "
                            "arguments on this node")
        return invoke(fn, <list>args)

    cdef void _acknowledge(self, Session s, acked) except *:
        """Drops the answers below `acked`: the caller has them."""
        if type(acked) is not int or not acked > s.floor:
            return
        cdef dict answers = s.answers
        if acked - s.floor <= len(answers):
            # The common case: the floor moves by a few calls.
            for k in range(s.floor, acked):
                answers.pop(k, None)
        else:
            s.answers = {k: v for k, v in answers.items() if k >= acked}
        s.floor = acked

    cdef void _advance(self, stamp) except *:
        # Leaders' clocks may disagree: the state's time never goes back.
        if (type(stamp) is float or type(stamp) is int) and stamp > self.clock.time:
            self.clock.time = float(stamp)
