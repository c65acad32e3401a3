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

The pieces: history (Op, History, verdicts), values (msgpack value
identity), search (one key's search), shrink (minimal witnesses), checking
(check() and its report). Another model: lock (``check_lock``, ``LockOp``,
``LockHistory``: a lock with leases and fencing tokens, the model of
raftcore.embed.ReplLock; see its docstring).
"""
from raftcore.testing.lincheck.checking import check
from raftcore.testing.lincheck.history import (DEFAULT_BUDGET, DEFAULT_MINIMIZE_BUDGET, KINDS,
                                               UNKNOWN, History, KeyResult, Op, Result)
from raftcore.testing.lincheck.lock import LockHistory, LockOp, check_lock

__all__ = ["Op", "History", "Result", "KeyResult", "check", "UNKNOWN", "KINDS",
           "DEFAULT_BUDGET", "DEFAULT_MINIMIZE_BUDGET", "LockOp", "LockHistory", "check_lock"]
