"""RESP, the Redis serialization protocol: an incremental request parser
(multibulk and inline commands) and the reply encoder (RESP2 and RESP3).

Replies are plain values, the same ones the state machine stores in the log
and the nodes send each other (all msgpack-able):

    bytes         a bulk string          str      a simple string (+OK)
    int           an integer             None     nil ($-1 / _ in RESP3)
    list          an array               {"err": "ERR ..."}   an error
    Map(pairs)    a map (HELLO's answer; a flat array in RESP2)
    NULL_ARRAY    the nil of an array (*-1 / _ in RESP3: an aborted EXEC)
"""
from __future__ import annotations

from typing import Any, Optional

from raftcore.kv.redis.fast import split_commands

#: Redis's limits on a request (proto-max-bulk-len default 512 MB; a
#: multibulk of at most 1024*1024*1024 arguments; inline requests up to 64 KB).
DEFAULT_MAX_BULK = 512 * 1024 * 1024
MAX_MULTIBULK = 1024 * 1024 * 1024
MAX_INLINE = 64 * 1024


class ProtocolError(Exception):
    """A malformed request: Redis answers "-ERR Protocol error: ..." and
    closes the connection."""


def error(message: str) -> dict:
    """The reply value of an error (message starts with its code, e.g. "ERR")."""
    return {"err": message}


def is_error(reply: Any) -> bool:
    return type(reply) is dict and "err" in reply


class Map(list):
    """A reply that RESP3 sends as a map: a list of (key, value) pairs."""


class _NullArray:
    """The type of NULL_ARRAY (only that one instance is used)."""

    def __repr__(self) -> str:
        return "NULL_ARRAY"


#: Redis's null array: an EXEC whose transaction a WATCH aborted answers it
#: (RESP2 has a null bulk string and a null array; RESP3 one null).
NULL_ARRAY = _NullArray()


class RespParser:
    """Cuts the bytes a connection receives into commands (lists of bytes).

    feed(data) returns every command complete so far; a partial one waits
    for more data. A malformed request sets `error` (Redis's message after
    "Protocol error: "): the commands before it are returned, nothing after
    it is parsed, and the connection is to be closed."""

    def __init__(self, max_bulk: int = DEFAULT_MAX_BULK) -> None:
        self.max_bulk = max_bulk
        self._buf = bytearray()
        # The buffer length below which parsing cannot make progress (a bulk
        # string whose bytes have not all arrived): skips re-parsing a large
        # argument for every chunk of it.
        self._need = 0
        self.error: Optional[str] = None

    def feed(self, data: bytes) -> list[list[bytes]]:
        if self.error is not None:
            return []
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return []
        out: list[list[bytes]] = []
        self._need = 0
        # The common requests in C (fast), the rest below.
        pos = split_commands(buf, out, self.max_bulk)
        end = len(buf)
        try:
            while pos < end:
                if buf[pos] == 0x2A:            # '*'
                    got = self._multibulk(buf, pos)
                else:
                    got = self._inline(buf, pos)
                if got is None:
                    break
                cmd, pos = got
                if cmd:
                    out.append(cmd)
        except ProtocolError as exc:
            self.error = str(exc)
        finally:
            del buf[:pos]
        return out

    def _multibulk(self, buf: bytearray, pos: int) -> Optional[tuple[list, int]]:
        # The per-argument path of every request: one find, one int() and
        # one copy per argument, no call of our own.
        first = pos
        find = buf.find
        end = len(buf)
        i = find(b"\r\n", pos)
        if i < 0:
            if end - pos > MAX_INLINE:
                raise ProtocolError("too big mbulk count string")
            return None
        try:
            n = int(buf[pos + 1:i])
        except ValueError:
            n = MAX_MULTIBULK + 1
        if n > MAX_MULTIBULK:
            raise ProtocolError("invalid multibulk length")
        pos = i + 2
        args: list[bytes] = []
        append = args.append
        max_bulk = self.max_bulk
        for _ in range(n):
            if pos >= end:
                return None
            if buf[pos] != 0x24:                # '$'
                raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
            i = find(b"\r\n", pos)
            if i < 0:
                if end - pos > MAX_INLINE:
                    raise ProtocolError("too big bulk count string")
                return None
            try:
                size = int(buf[pos + 1:i])
            except ValueError:
                size = -1
            if size < 0 or size > max_bulk:
                raise ProtocolError("invalid bulk length")
            start = i + 2
            pos = start + size + 2
            if end < pos:
                self._need = pos - first        # the buffer starts at `first` next time
                return None
            append(bytes(buf[start:pos - 2]))
        return args, pos

    def _inline(self, buf: bytearray, pos: int) -> Optional[tuple[list, int]]:
        i = buf.find(b"\n", pos)
        if i < 0:
            if len(buf) - pos > MAX_INLINE:
                raise ProtocolError("too big inline request")
            return None
        line = bytes(buf[pos:i]).rstrip(b"\r")
        return split_inline(line), i + 1


def split_inline(line: bytes) -> list[bytes]:
    """The arguments of an inline command (spaces separate them; "..." and
    '...' quote, with backslash escapes inside double quotes)."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i:i + 1].isspace():
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = None
        while True:
            if i >= n:
                if quote is not None:
                    raise ProtocolError("unbalanced quotes in request")
                break
            c = line[i:i + 1]
            if quote is None:
                if c.isspace():
                    break
                if c in (b'"', b"'"):
                    quote = c
                else:
                    cur += c
                i += 1
                continue
            if quote == b'"' and c == b"\\" and i + 1 < n:
                i += 1
                cur += _ESCAPES.get(line[i:i + 1], line[i:i + 1])
            elif c == quote:
                i += 1
                if i < n and not line[i:i + 1].isspace():
                    raise ProtocolError("unbalanced quotes in request")
                break
            else:
                cur += c
            i += 1
        args.append(bytes(cur))


_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"a": b"\a"}


def encode(reply: Any, resp3: bool = False) -> bytes:
    """The RESP bytes of one reply value."""
    t = type(reply)
    # The replies of GET, SET and INCR, without the list of a nested reply.
    if t is bytes:
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if t is str:
        return b"+%s\r\n" % reply.encode()
    if t is int:
        return b":%d\r\n" % reply
    out: list[bytes] = []
    _encode(reply, resp3, out)
    return b"".join(out)


def _encode(r: Any, resp3: bool, out: list) -> None:
    t = type(r)
    if t is bytes:
        out.append(b"$%d\r\n%s\r\n" % (len(r), r))
    elif t is str:
        out.append(b"+%s\r\n" % r.encode())
    elif t is int:
        out.append(b":%d\r\n" % r)
    elif r is None:
        out.append(b"_\r\n" if resp3 else b"$-1\r\n")
    elif r is NULL_ARRAY:
        out.append(b"_\r\n" if resp3 else b"*-1\r\n")
    elif t is Map:
        out.append(b"%c%d\r\n" % ((0x25, len(r)) if resp3 else (0x2A, 2 * len(r))))
        for k, v in r:
            _encode(k, resp3, out)
            _encode(v, resp3, out)
    elif t is list or t is tuple:
        out.append(b"*%d\r\n" % len(r))
        for x in r:
            _encode(x, resp3, out)
    elif t is dict and "err" in r:
        msg = str(r["err"]).replace("\r", " ").replace("\n", " ")
        out.append(b"-%s\r\n" % msg.encode())
    elif t is bool:
        out.append(b":%d\r\n" % int(r))
    else:
        raise TypeError(f"no RESP encoding for {r!r:.80}")
