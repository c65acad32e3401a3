"""RedisServer: serves RESP on a node; one connection object per client.

A connection executes the commands its read buffer holds in order, as
runs: consecutive writes go to the backend together (in chunks, each of
which joins the node's next write round: a pipeline of 10,000 SETs costs a
few Raft rounds, not 10,000, and so do 256 clients sending one SET each),
consecutive reads together (one leadership confirmation); commands that
only concern the connection (PING, CLIENT, HELLO, ...) are answered on the
spot. The replies of one buffer leave in one write.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
import time
from typing import Any, Optional

from raftcore.kv.redis.apply import VERSION
from raftcore.kv.redis.commands import (PLAIN, READ, WRITE, check_write, command_reply,
                                        lookup, wrong_arity)
from raftcore.kv.redis.fast import encode_replies, plain_batch
from raftcore.kv.redis.keyspace import E_NOT_INT, OK, parse_int
from raftcore.kv.redis.resp import (DEFAULT_MAX_BULK, NULL_ARRAY, Map, RespParser, encode,
                                    error)

log = logging.getLogger("raftcore.kv.redis")

#: Redis version the server reports (the command semantics it follows).
REDIS_VERSION = "7.0.15"
#: A run of writes is cut into log entries of about this many argument
#: bytes (at most, by default; see RedisServer) and this many commands.
CHUNK_BYTES = 256 * 1024
CHUNK_COMMANDS = 4096
#: Commands parsed but not yet run above which a connection stops reading.
_MAX_QUEUED = 50_000

E_NOAUTH = "NOAUTH Authentication required."
E_WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
_client_ids = itertools.count(1)
#: How often a node with watching clients checks that tracking goes on
#: (seconds; a TRACK reaches TRACK_SPAN_MS ahead and is renewed at half).
TRACK_CHECK_INTERVAL = 5.0


class RedisServer:
    """RESP for one node: `await RedisServer.start(backend, host, port,
    raft=raft, password=...)`; `await server.close()`.

    backend: a ClusterBackend (write(cmds), read(cmds), submit(...)).
    password: as Redis's requirepass (AUTH / HELLO AUTH), or None.
    max_bulk: the largest bulk string accepted (proto-max-bulk-len).
    chunk_bytes: a run of writes is cut into log entries of about this many
        argument bytes (keep it well under Config.max_command_bytes)."""

    def __init__(self, backend: Any, raft: Any, password: Optional[bytes], max_bulk: int,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        self.backend = backend
        self.chunk_bytes = chunk_bytes
        self.raft = raft
        self.password = password
        self.max_bulk = max_bulk
        self.conns: set[_Connection] = set()
        self.started = time.time()
        self._server: Optional[asyncio.base_events.Server] = None
        self._tracker: Optional[asyncio.Task] = None
        self.port = 0

    @classmethod
    async def start(cls, backend: Any, host: str, port: int, *, raft: Any,
                    password: Optional[bytes] = None, max_bulk: int = DEFAULT_MAX_BULK,
                    chunk_bytes: int = CHUNK_BYTES) -> "RedisServer":
        self = cls(backend, raft, password, max_bulk, chunk_bytes)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._tracker = loop.create_task(self._keep_tracking(TRACK_CHECK_INTERVAL))
        return self

    async def _keep_tracking(self, interval: float) -> None:
        """Runs until cancelled: while a client of this node watches keys,
        renews the cluster's tracking of modification indexes (see
        apply.py), so that a WATCH held for long stays exact."""
        while True:
            await asyncio.sleep(interval)     # a period, not a wait for a condition
            if not any(c.watched for c in self.conns):
                continue
            try:
                refused = await self.backend.ensure_tracked()
            except Exception:     # a bug of ours: logged, and tried again next period
                log.error("renewing the tracking of watched keys failed", exc_info=True)
                continue
            if refused is not None:           # no quorum, say: retried next period
                log.info("could not renew the tracking of watched keys: %s", refused)

    async def close(self) -> None:
        if self._tracker is not None:
            self._tracker.cancel()
            await asyncio.gather(self._tracker, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for c in list(self.conns):
            c.abort()
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------ INFO

    def info(self, conn: "_Connection", section: Optional[bytes]) -> bytes:
        m = self.raft.metrics
        sm = self.backend.sm
        leader_addr = ""
        if m.current_leader is not None and m.membership is not None:
            n = m.membership.nodes.get(m.current_leader)
            leader_addr = getattr(n, "addr", "") or ""
        sections = {
            "server": [("redis_version", REDIS_VERSION), ("redis_mode", "standalone"),
                       ("process_id", os.getpid()), ("tcp_port", self.port),
                       ("uptime_in_seconds", int(time.time() - self.started)),
                       ("server_name", "raftcore")],
            "clients": [("connected_clients", len(self.conns))],
            "replication": [("role", "master")],
            "keyspace": [("db0", f"keys={len(sm.data)},expires={len(sm.redis.expires)},"
                                 "avg_ttl=0")] if sm.data else [],
            "raft": [("raft_node_id", m.id), ("raft_role", m.state.name.lower()),
                     ("raft_term", m.current_term),
                     ("raft_leader_id", "" if m.current_leader is None else m.current_leader),
                     ("raft_leader_addr", leader_addr),
                     ("raft_last_log_index", m.last_log_index),
                     ("raft_commit_index", m.committed if type(m.committed) is int
                      else getattr(m.committed, "index", 0) or 0),
                     ("raft_last_applied", m.last_applied_index),
                     ("raft_forward_retries", self.backend.client.retries),
                     ("raft_read_rounds", self.backend.read_rounds),
                     ("raft_write_rounds", self.backend.writes.rounds),
                     ("raft_write_commands", self.backend.writes.commands),
                     ("raft_read_mode", {0: "linearizable", 1: "lease", 2: "stale"}
                      [self.backend.read_mode])],
        }
        want = None if section is None else section.lower().decode(errors="replace")
        lines: list[str] = []
        for name, fields in sections.items():
            if want not in (None, "all", "everything", "default", name):
                continue
            lines.append(f"# {name.capitalize()}")
            lines.extend(f"{k}:{v}" for k, v in fields)
            lines.append("")
        return "\r\n".join(lines).encode()


def batch_kind(cmds: list) -> Optional[tuple[str, int]]:
    """(READ or WRITE, argument bytes) if `cmds` are all reads or all writes
    that pass the door, else None. fast.plain_batch answers the same for
    the batches it takes (the common ones), in C."""
    kind = None
    size = 0
    for args in cmds:
        spec, err = lookup(args)
        if err is not None:
            return None
        k = spec.kind
        if k is not kind:
            if kind is not None or (k is not WRITE and k is not READ):
                return None
            kind = k
        if k is WRITE and check_write(spec, args) is not None:
            return None
        size += sum(map(len, args))
    return kind, size


class _Connection(asyncio.Protocol):
    """One client: its parser, its queue of parsed commands and the task
    that runs them, and the connection's state (name, protocol version,
    authentication, MULTI queue, watched keys)."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.backend = server.backend
        self.parser = RespParser(server.max_bulk)
        self.transport: Any = None
        self.id = next(_client_ids)
        self.name: Optional[bytes] = None
        self.resp3 = False
        self.authed = server.password is None
        self.multi: Optional[list] = None     # queued commands while in MULTI
        self.multi_failed = False             # a command was refused while queuing
        self.watched: dict[bytes, int] = {}   # key -> modification index at WATCH
        self.queue: list[list[bytes]] = []
        self.wake = asyncio.Event()
        self.closing = False
        self.paused = False
        self.task: Optional[asyncio.Task] = None
        #: The task is running commands (they and the queue go in order).
        self.running = False
        #: A batch taken by the direct path awaits its replies.
        self.busy = False

    # ------------------------------------------------------ transport

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.conns.add(self)
        self.task = asyncio.get_running_loop().create_task(self._run())

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.server.conns.discard(self)
        self.closing = True
        self.wake.set()

    def data_received(self, data: bytes) -> None:
        cmds = self.parser.feed(data)
        if not cmds and self.parser.error is None:
            return                      # a partial command: nothing to run yet
        if self.busy or self.running or self.queue or not self._direct(cmds):
            self.queue.extend(cmds)
            self.wake.set()
            if len(self.queue) > _MAX_QUEUED and not self.paused:
                self.paused = True
                self.transport.pause_reading()

    # ------------------------------------------------------ direct path

    def _direct(self, cmds: list) -> bool:
        """Hands `cmds` to the backend without the task if they are all
        reads or all writes that pass the door (the common case: a client
        sending GETs or SETs, pipelined or not), in one chunk; the round
        answers in _answered. False (nothing done) for anything else, which
        the task runs: connection commands, transactions, errors, mixes.
        It saves the task's wake-up and its chain of coroutines per batch."""
        if self.multi is not None or not self.authed or self.closing or \
                self.parser.error is not None or len(cmds) > CHUNK_COMMANDS:
            return False
        got = plain_batch(cmds, PLAIN) or batch_kind(cmds)
        if got is None:
            return False
        kind, size = got
        if size > self.server.chunk_bytes and len(cmds) > 1:
            return False
        self.busy = True
        if kind is WRITE:
            self.backend.submit_write(cmds, size, self._answered)
        else:
            self.backend.submit_read(cmds, size, self._answered)
        return True

    def _answered(self, replies: Any, exc: Optional[BaseException]) -> None:
        """The replies of the batch _direct handed over (`exc`: its round
        failed, or was cancelled at shutdown)."""
        self.busy = False
        try:
            if exc is not None:
                if isinstance(exc, asyncio.CancelledError):
                    return
                raise exc
            if not self.transport.is_closing():
                self.transport.write(encode_replies(replies, self.resp3, encode))
            if self.queue or self.parser.error is not None:
                self.wake.set()             # what arrived meanwhile, in order
        except Exception:    # a bug of ours: this connection only
            log.error("serving the Redis client %s failed", self.id, exc_info=True)
            self.transport.abort()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
        self.wake.set()

    async def _run(self) -> None:
        try:
            while not self.closing:
                await self.wake.wait()
                self.wake.clear()
                if self.busy:
                    continue                # _answered wakes the task again
                self.running = True
                while self.queue and not self.closing:
                    cmds, self.queue = self.queue, []
                    if self.paused:
                        self.paused = False
                        self.transport.resume_reading()
                    out = await self._execute(cmds)
                    if not self.transport.is_closing():
                        self.transport.write(b"".join(out))
                self.running = False
                if self.parser.error is not None and not self.closing:
                    self.transport.write(encode(error("ERR Protocol error: "
                                                      + self.parser.error)))
                    self.closing = True
                if self.closing:
                    self.transport.close()
        except asyncio.CancelledError:
            raise
        except Exception:    # a bug of ours: this connection only
            log.error("serving the Redis client %s failed", self.id, exc_info=True)
            self.transport.abort()

    # ------------------------------------------------------- commands

    async def _execute(self, cmds: list) -> list[bytes]:
        """The encoded replies of `cmds`, run in order."""
        out: list[bytes] = [b""] * len(cmds)
        run: list[tuple[int, list]] = []       # (position, args) of a run of reads or writes
        run_kind = None
        resp3 = self.resp3
        for i, args in enumerate(cmds):
            spec, err = lookup(args)
            if err is None and not self.authed and spec.name not in ("auth", "hello", "quit"):
                err = error(E_NOAUTH)
            if self.multi is not None and (spec is None or spec.name not in
                                           ("exec", "discard", "multi", "watch", "quit")):
                if err is None:
                    self.multi.append(args)
                else:
                    self.multi_failed = True
                out[i] = encode(err or "QUEUED", resp3)
                continue
            if err is None and spec.kind == WRITE:
                err = check_write(spec, args)
            if err is not None:
                out[i] = encode(err, resp3)
                continue
            if spec.kind in (READ, WRITE):
                if run_kind != spec.kind:
                    await self._flush(run_kind, run, out)
                    run_kind = spec.kind
                run.append((i, args))
                continue
            await self._flush(run_kind, run, out)
            out[i] = encode(await self._local(spec.name, args), self.resp3)
            resp3 = self.resp3
            if self.closing:
                del out[i + 1:]
                break
        await self._flush(run_kind, run, out)
        return out

    async def _flush(self, kind: Optional[str], run: list, out: list) -> None:
        """Runs a run of reads or writes (in chunks) and fills in their replies."""
        if not run:
            return
        chunks = self._chunks(run)
        run.clear()
        run_chunk = self.backend.write if kind == WRITE else self.backend.read
        if len(chunks) == 1:
            replies = [await run_chunk(*chunks[0][1:])]
        else:
            # Handed over together: the chunks go in consecutive rounds, in order.
            replies = await asyncio.gather(*(run_chunk(*c[1:]) for c in chunks))
        resp3 = self.resp3
        for (positions, _, _), got in zip(chunks, replies):
            for i, r in zip(positions, got):
                out[i] = encode(r, resp3)

    def _chunks(self, run: list) -> list[tuple[list, list, int]]:
        """`run` cut into (positions, commands, argument bytes) of at most
        chunk_bytes (a larger command goes alone) and CHUNK_COMMANDS each."""
        limit = self.server.chunk_bytes
        chunks: list[tuple[list, list, int]] = []
        positions: list[int] = []
        cmds: list = []
        size = 0
        for i, args in run:
            cost = sum(map(len, args))
            if cmds and (size + cost > limit or len(cmds) >= CHUNK_COMMANDS):
                chunks.append((positions, cmds, size))
                positions, cmds, size = [], [], 0
            positions.append(i)
            cmds.append(args)
            size += cost
        chunks.append((positions, cmds, size))
        return chunks

    async def _local(self, name: str, args: list) -> Any:
        """The reply of a command the connection answers itself."""
        handler = getattr(self, "_cmd_" + name)
        return await handler(args)

    async def _cmd_ping(self, args: list) -> Any:
        if len(args) > 2:
            return wrong_arity("ping")
        return args[1] if len(args) == 2 else "PONG"

    async def _cmd_echo(self, args: list) -> Any:
        return args[1]

    async def _cmd_quit(self, args: list) -> Any:
        self.closing = True
        return OK

    async def _cmd_select(self, args: list) -> Any:
        db = parse_int(args[1])
        if db is None:
            return error(E_NOT_INT)
        return OK if db == 0 else error("ERR DB index is out of range")

    async def _cmd_command(self, args: list) -> Any:
        return command_reply(args)

    async def _cmd_info(self, args: list) -> Any:
        return self.server.info(self, args[1] if len(args) > 1 else None)

    async def _cmd_client(self, args: list) -> Any:
        sub = args[1].lower()
        n = len(args)
        if sub == b"id" and n == 2:
            return self.id
        if sub == b"getname" and n == 2:
            return self.name
        if sub == b"setname" and n == 3:
            return self._set_name(args[2])
        if sub == b"setinfo" and n == 4:
            return OK
        if sub in (b"id", b"getname", b"setname", b"setinfo"):
            return wrong_arity(f"client|{sub.decode()}")
        return error(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. "
                     "Try CLIENT HELP.")

    def _set_name(self, name: bytes) -> Any:
        if any(c <= 32 or c > 126 for c in name):
            return error("ERR Client names cannot contain spaces, newlines or special "
                         "characters.")
        self.name = name or None
        return OK

    async def _cmd_auth(self, args: list) -> Any:
        if len(args) > 3:
            return error("ERR syntax error")
        user, password = (b"default", args[1]) if len(args) == 2 else (args[1], args[2])
        if self.server.password is None and len(args) == 2:
            return error("ERR AUTH <password> called without any password configured for "
                         "the default user. Are you sure your configuration is correct?")
        return self._check_password(user, password) or OK

    def _check_password(self, user: bytes, password: bytes) -> Optional[dict]:
        want = self.server.password
        if user != b"default" or (want is not None and
                                  not hmac.compare_digest(password, want)):
            return error(E_WRONGPASS)
        self.authed = True
        return None

    async def _cmd_hello(self, args: list) -> Any:
        proto = None
        if len(args) > 1:
            proto = parse_int(args[1])
            if proto is None:
                return error("ERR Protocol version is not an integer or out of range")
        i, name, auth = 2, None, None
        while i < len(args):
            opt = args[i].lower()
            if opt == b"auth" and i + 2 < len(args):
                auth = (args[i + 1], args[i + 2])
                i += 3
            elif opt == b"setname" and i + 1 < len(args):
                name = args[i + 1]
                i += 2
            else:
                opt = args[i].decode(errors="replace")
                return error(f"ERR Syntax error in HELLO option '{opt}'")
        if proto is not None and proto not in (2, 3):
            return error("NOPROTO unsupported protocol version")
        if auth is not None:
            refused = self._check_password(*auth)
            if refused is not None:
                return refused
        if not self.authed:
            return error("NOAUTH HELLO must be called with the client already authenticated, "
                         "otherwise the HELLO <proto> AUTH <user> <pass> option can be used "
                         "to authenticate the client and select the RESP protocol version at "
                         "the same time")
        if name is not None:
            refused = self._set_name(name)
            if refused is not OK:
                return refused
        if proto is not None:
            self.resp3 = proto == 3
        return Map([(b"server", b"redis"), (b"version", REDIS_VERSION.encode()),
                    (b"proto", 3 if self.resp3 else 2), (b"id", self.id),
                    (b"mode", b"standalone"), (b"role", b"master"), (b"modules", [])])

    # --------------------------------------------------- transactions

    async def _cmd_multi(self, args: list) -> Any:
        if self.multi is not None:
            return error("ERR MULTI calls can not be nested")
        self.multi = []
        self.multi_failed = False
        return OK

    async def _cmd_discard(self, args: list) -> Any:
        if self.multi is None:
            return error("ERR DISCARD without MULTI")
        self._end_multi()
        return OK

    def _end_multi(self) -> None:
        self.multi = None
        self.multi_failed = False
        self.watched = {}

    async def _cmd_watch(self, args: list) -> Any:
        if self.multi is not None:
            return error("ERR WATCH inside MULTI is not allowed")
        keys = [k for k in dict.fromkeys(args[1:]) if k not in self.watched]
        if keys:
            refused = await self.backend.ensure_tracked()
            if refused is not None:
                return refused
            versions = await self.backend.read([[VERSION, k] for k in keys])
            for k, v in zip(keys, versions):
                if type(v) is not int:
                    return v             # the read failed: an error reply
                self.watched[k] = v
        return OK

    async def _cmd_unwatch(self, args: list) -> Any:
        self.watched = {}
        return OK

    async def _cmd_exec(self, args: list) -> Any:
        if self.multi is None:
            return error("ERR EXEC without MULTI")
        queued, failed, watched = self.multi, self.multi_failed, self.watched
        self._end_multi()
        if failed:
            return error("EXECABORT Transaction discarded because of previous errors.")
        specs = [lookup(a)[0] for a in queued]
        data = [a for a, spec in zip(queued, specs) if spec.kind in (READ, WRITE)]
        result = await self.backend.submit(data, [[k, v] for k, v in watched.items()])
        if result is None:
            return NULL_ARRAY            # a watched key changed
        if type(result) is not list:
            return result                # an error
        # Commands of the connection itself run now, in their place.
        replies = iter(result)
        return [next(replies) if spec.kind in (READ, WRITE) else await self._local(spec.name, a)
                for a, spec in zip(queued, specs)]
