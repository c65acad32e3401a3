"""The Redis command table: each command's arity, kind and key positions
(what COMMAND reports), the checks a write passes before it goes into the
log, and Redis's error strings for requests refused at the door."""
from __future__ import annotations

import time
from typing import Any, NamedTuple, Optional

from raftcore.kv.redis.keyspace import (E_NOT_INT, INT_MIN, check_pairs, check_set,
                                        expire_args, parse_int, wrong_arity)
from raftcore.kv.redis.resp import error

#: Kinds: served by the connection itself, a read of the map, a write (a
#: log entry), or a transaction control command.
CONN, READ, WRITE, TX = "conn", "read", "write", "tx"


class Spec(NamedTuple):
    name: str
    arity: int          # Redis's: n exactly, -n at least n (the name counts)
    kind: str
    first_key: int
    last_key: int
    step: int


def _table(*rows: tuple) -> dict[str, Spec]:
    return {r[0]: Spec(*r) for r in rows}


COMMANDS: dict[str, Spec] = _table(
    ("ping", -1, CONN, 0, 0, 0), ("echo", 2, CONN, 0, 0, 0), ("select", 2, CONN, 0, 0, 0),
    ("command", -1, CONN, 0, 0, 0), ("client", -2, CONN, 0, 0, 0), ("info", -1, CONN, 0, 0, 0),
    ("hello", -1, CONN, 0, 0, 0), ("auth", -2, CONN, 0, 0, 0), ("quit", -1, CONN, 0, 0, 0),
    ("dbsize", 1, READ, 0, 0, 0), ("get", 2, READ, 1, 1, 1), ("strlen", 2, READ, 1, 1, 1),
    ("exists", -2, READ, 1, -1, 1), ("mget", -2, READ, 1, -1, 1), ("ttl", 2, READ, 1, 1, 1),
    ("pttl", 2, READ, 1, 1, 1), ("keys", 2, READ, 0, 0, 0), ("scan", -2, READ, 0, 0, 0),
    ("set", -3, WRITE, 1, 1, 1), ("getset", 3, WRITE, 1, 1, 1), ("setnx", 3, WRITE, 1, 1, 1),
    ("del", -2, WRITE, 1, -1, 1), ("unlink", -2, WRITE, 1, -1, 1),
    ("getdel", 2, WRITE, 1, 1, 1), ("mset", -3, WRITE, 1, -1, 2),
    ("msetnx", -3, WRITE, 1, -1, 2), ("incr", 2, WRITE, 1, 1, 1), ("decr", 2, WRITE, 1, 1, 1),
    ("incrby", 3, WRITE, 1, 1, 1), ("decrby", 3, WRITE, 1, 1, 1),
    ("append", 3, WRITE, 1, 1, 1), ("expire", -3, WRITE, 1, 1, 1),
    ("pexpire", -3, WRITE, 1, 1, 1), ("expireat", -3, WRITE, 1, 1, 1),
    ("pexpireat", -3, WRITE, 1, 1, 1), ("persist", 2, WRITE, 1, 1, 1),
    ("flushdb", -1, WRITE, 0, 0, 0), ("flushall", -1, WRITE, 0, 0, 0),
    ("multi", 1, TX, 0, 0, 0), ("exec", 1, TX, 0, 0, 0), ("discard", 1, TX, 0, 0, 0),
    ("watch", -2, TX, 1, -1, 1), ("unwatch", 1, TX, 0, 0, 0),
)

_EXPIRES = {"expire": (1000, False), "pexpire": (1, False), "expireat": (1000, True),
            "pexpireat": (1, True)}


def unknown_command(args: list) -> dict:
    """Redis's answer to a command it does not know (its arguments quoted,
    up to 128 bytes of them)."""
    shown = ""
    for a in args[1:]:
        if len(shown) >= 128:
            break
        shown += "'%s' " % a.decode(errors="replace")[:128 - len(shown)]
    name = args[0].decode(errors="replace")[:128]
    return error(f"ERR unknown command '{name}', with args beginning with: {shown}")


#: The specs by the names clients send most (lower and upper case): no
#: lower() and decode() per command for those.
_BY_SENT_NAME: dict[bytes, Spec] = {
    **{n.encode(): s for n, s in COMMANDS.items()},
    **{n.upper().encode(): s for n, s in COMMANDS.items()}}


def lookup(args: list) -> tuple[Optional[Spec], Optional[dict]]:
    """(spec, None) for a known command with a valid argument count, else
    (spec or None, the error to answer)."""
    spec = _BY_SENT_NAME.get(args[0])
    if spec is None:
        spec = COMMANDS.get(args[0].lower().decode(errors="replace"))
        if spec is None:
            return None, unknown_command(args)
    n = len(args)
    if (spec.arity > 0 and n != spec.arity) or n < -spec.arity:
        return spec, wrong_arity(spec.name)
    return spec, None


def check_write(spec: Spec, args: list) -> Optional[dict]:
    """The error a write gets at the door (syntax, a non-integer argument,
    an invalid expire time): then it never reaches the log. None if it may
    go in; errors that depend on the stored value come from apply."""
    name = spec.name
    if name in ("mset", "msetnx"):
        return check_pairs(args)
    if name == "set":             # a plain SET has nothing to check
        return check_set(args, int(time.time() * 1000)) if len(args) > 3 else None
    if name in ("incrby", "decrby"):
        by = parse_int(args[2])
        if by is None:
            return error(E_NOT_INT)
        if name == "decrby" and by == INT_MIN:
            return error("ERR decrement would overflow")
    if name in _EXPIRES:
        unit, absolute = _EXPIRES[name]
        got = expire_args(args, unit, absolute, name, int(time.time() * 1000))
        if type(got) is dict:
            return got
    return None


def command_info(spec: Spec) -> list:
    """COMMAND's entry for a command (Redis 7's ten fields)."""
    flags = {CONN: ["fast"], READ: ["readonly"], WRITE: ["write"], TX: ["fast"]}[spec.kind]
    return [spec.name.encode(), spec.arity, flags, spec.first_key, spec.last_key, spec.step,
            [], [], [], []]


def command_reply(args: list) -> Any:
    """COMMAND, COMMAND COUNT, COMMAND INFO name..., COMMAND DOCS (empty:
    redis-cli then uses its own help)."""
    if len(args) == 1:
        return [command_info(s) for s in COMMANDS.values()]
    sub = args[1].lower()
    if sub == b"count" and len(args) == 2:
        return len(COMMANDS)
    if sub == b"info":
        return [command_info(COMMANDS[a.lower().decode(errors="replace")])
                if a.lower().decode(errors="replace") in COMMANDS else None for a in args[2:]]
    if sub == b"docs":
        return []
    if sub in (b"count", b"list", b"getkeys"):
        return wrong_arity(f"command|{sub.decode()}") if sub == b"count" else []
    return error(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. "
                 "Try COMMAND HELP.")

#: Writes whose door check (check_write) has nothing to check.
_UNCHECKED_WRITES = ("getset", "setnx", "del", "unlink", "getdel", "incr", "decr", "append",
                     "persist")

#: Sent name -> (kind, arity) of the commands that a batch classified by
#: fast.plain_batch may hold: every read, and the writes with nothing to
#: check at the door (SET only as SET key value: its options are checked).
#: Anything else, or a wrong argument count, is left to the Python path.
PLAIN: dict[bytes, tuple[str, int]] = {
    sent: (spec.kind, 3 if spec.name == "set" else spec.arity)
    for sent, spec in _BY_SENT_NAME.items()
    if spec.kind == READ or spec.name == "set" or spec.name in _UNCHECKED_WRITES}
