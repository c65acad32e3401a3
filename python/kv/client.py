"""raftcore.kv.Client: an async client of a `raftcore kv` cluster."""
from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any, Iterable, Optional

from raftcore.errors import ConfigError, Timeout
from raftcore.kv.connection import Connection, ConnectionLost, connect
from raftcore.kv.protocol import (ERROR, KV_ADD_MEMBER, KV_GET, KV_MEMBERS, KV_REMOVE_MEMBER,
                                  KV_STATUS, KV_TRANSFER_LEADER, LEASE, OK, READ_INDEX, REDIRECT,
                                  STALE, UNAVAILABLE, KvError, check_command, check_node_id,
                                  write_request)
from raftcore.network.tcp import DEFAULT_MAX_FRAME_SIZE, check_secret, parse_address


class Client:
    """An async client of a `raftcore kv` cluster.

        client = Client("127.0.0.1:7001")           # any node; or a list of addresses
        await client.set("x", 1)                    # -> previous value
        await client.cas("x", 1, 2)                 # -> (swapped, current value)
        await client.get("x")                       # -> 2, linearizable
        await client.delete("x")                    # -> removed value
        await client.close()

    It learns the cluster's addresses from the first node it reaches, sends
    requests to the leader (following "not leader" answers), and retries on
    connection errors, timeouts and elections until `timeout` seconds have
    passed for the call, then raises raftcore.errors.Timeout. Writes carry
    this client's id and a sequence number: a write retried after a lost
    reply is applied once and answered with its original result. A write
    that raised Timeout may or may not have been applied; it is never
    applied after that call has returned.

    timeout: seconds one call may take, retries included.
    attempt_timeout: seconds one attempt waits for its reply before retrying.
    secret: the cluster's shared secret (bytes; a str is UTF-8 encoded), for
        nodes started with --secret-file: each connection proves it holds it
        (and checks that the node does) before any request.
    ssl: an ssl.SSLContext (client side) for nodes serving TLS.
    """

    def __init__(self, address: str | Iterable[str], *, timeout: float = 30.0,
                 attempt_timeout: float = 5.0, secret: Optional[bytes | str] = None,
                 ssl: Any = None, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        addrs = [address] if isinstance(address, str) else list(address)
        if not addrs:
            raise ConfigError("Client needs at least one node address")
        for a in addrs:
            parse_address(a)           # ValueError if malformed
        for name, v in (("timeout", timeout), ("attempt_timeout", attempt_timeout)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.client_id = uuid.uuid4().hex
        self._secret = check_secret(secret)
        self._ssl = ssl
        self._max_frame = max_frame_size
        self._addrs: list[str] = list(dict.fromkeys(addrs))   # known nodes, in order
        self._target = self._addrs[0]                         # where requests go first
        self._conns: dict[str, Connection] = {}
        self._connecting: dict[str, asyncio.Task] = {}
        self._next_seq = 1
        self._in_flight: set[int] = set()
        self._learned = False          # members learned from a node's status
        #: Attempts that failed (connection lost or refused, no reply in
        #: attempt_timeout, no leader, unavailable) and were retried.
        self.retries = 0
        self._closed = False

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------- API

    async def set(self, key: Any, value: Any) -> Any:
        """Sets key to value; returns the previous value (None if absent)."""
        return await self._write(["set", key, value])

    async def delete(self, key: Any) -> Any:
        """Deletes key; returns the removed value (None if absent)."""
        return await self._write(["delete", key])

    async def cas(self, key: Any, expected: Any, new: Any) -> tuple[bool, Any]:
        """Sets key to `new` if its value equals `expected` (None: absent).
        Returns (swapped, the value after the call)."""
        ok, current = await self._write(["cas", key, expected, new])
        return ok, current

    async def get(self, key: Any, default: Any = None, *, stale: bool = False,
                  lease: bool = False, node: Optional[str] = None) -> Any:
        """The value of key, or `default` if absent.

        Linearizable by default (the leader confirms its leadership with a
        quorum first); `lease=True` relies on the leader lease instead.
        `stale=True` reads the local state of the node asked (`node`, or the
        one this client talks to), which may lag behind."""
        mode = STALE if stale else LEASE if lease else READ_INDEX
        reply = await self._request([KV_GET, key, mode], node=node)
        return reply[1] if reply[2] else default

    async def status(self, node: Optional[str] = None, *,
                     timeout: Optional[float] = None) -> dict:
        """The state of a node (`node`, or the one this client talks to):
        id, state, term, leader, leader_addr, last_log_index, committed,
        applied, snapshot, purged, members (a list of [id, address]), keys,
        sessions, applied_commands (writes applied to the map, each once),
        deduplicated (retried writes answered without applying them again),
        and address, uptime (seconds), voters, learners, replication (the
        leader's: [{id, matched, lag}] per follower), cluster_id, ...
        `timeout`: seconds this call may take, if not the client's."""
        return (await self._request([KV_STATUS], node=node, timeout=timeout))[1]

    # ------------------------------------------------------ the cluster

    async def members(self) -> dict:
        """The membership as the leader has it, after it confirmed its
        leadership with a quorum: leader, term, read_index, joint (a change
        is half-way), and members, a list of {id, address, voter,
        incarnation, stale} (stale: its storage was wiped or replaced)."""
        return (await self._request([KV_MEMBERS]))[1]

    async def health(self) -> dict:
        """Returns {leader, term, read_index} when a leader is known and a
        linearizable read succeeds within `timeout`; raises Timeout (or
        KvError) otherwise."""
        m = await self.members()
        return {"leader": m["leader"], "term": m["term"], "read_index": m["read_index"]}

    async def add_member(self, node_id: int, address: str, *, learner: bool = False,
                         incarnation: Optional[str] = None) -> dict:
        """Adds node `node_id` at `address` as a learner, waits until it has
        caught up (it holds every entry committed when it was added), then
        promotes it to voter (unless
        `learner`). The node must be running (started with --listen, or
        with --join, which calls this). A member already there at that
        address is left as it is. `incarnation`: the node's storage
        incarnation, so that a node whose storage was wiped is refused
        until removed. Returns {id, address, voter, changed}. Needs an
        authenticated client (secret, client certificate) unless the nodes
        run with --insecure-admin; raises KvError if refused, Timeout if the
        node did not catch up within `timeout` (it then stays a learner)."""
        why = check_node_id(node_id)
        if why is not None:
            raise KvError(why)
        parse_address(address)
        budget = self._patient_budget()
        return (await self._request(lambda: [KV_ADD_MEMBER, node_id, address, bool(learner),
                                             incarnation, budget()], patient=True))[1]

    async def remove_member(self, node_id: int) -> bool:
        """Removes node `node_id` (a voter or a learner) from the cluster;
        False if it was not a member. Admin rights as add_member."""
        why = check_node_id(node_id)
        if why is not None:
            raise KvError(why)
        return (await self._request([KV_REMOVE_MEMBER, node_id], patient=True))[1]["removed"]

    async def save_snapshot(self, path: str | os.PathLike, *,
                            chunk_size: Optional[int] = None) -> dict:
        """Saves a consistent snapshot of the cluster's state (one applied
        log index, with its membership), streamed from the leader in
        chunks, to the file `path` (replaced atomically); what `raftcore ctl
        snapshot save` does. See raftcore.kv.backup.save_snapshot."""
        from raftcore.kv.backup import save_snapshot     # it imports this module
        return await save_snapshot(self, path, chunk_size=chunk_size)

    async def transfer_leader(self, node_id: int) -> bool:
        """Hands leadership to voter `node_id`; returns once the old leader
        follows it (False if it led already). Admin rights as add_member."""
        why = check_node_id(node_id)
        if why is not None:
            raise KvError(why)
        budget = self._patient_budget()
        reply = await self._request(lambda: [KV_TRANSFER_LEADER, node_id, budget()],
                                    patient=True)
        return reply[1]["changed"]

    def _patient_budget(self):
        """A function of the seconds an admin request may wait on the node:
        most of what remains of this call's timeout, so that the node's own
        answer (say "not caught up") arrives before the call times out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        return lambda: max(0.05, (deadline - loop.time()) * 0.9 - 0.1)

    @property
    def addresses(self) -> list[str]:
        """The node addresses this client knows."""
        return list(self._addrs)

    async def close(self) -> None:
        self._closed = True
        for t in list(self._connecting.values()):
            t.cancel()
        for c in list(self._conns.values()):
            await c.close()
        self._conns.clear()

    # ------------------------------------------------------------ writes

    async def _write(self, cmd: list) -> Any:
        why = check_command(cmd)
        if why is not None:
            raise KvError(why)
        seq = self._next_seq
        self._next_seq += 1
        self._in_flight.add(seq)
        try:
            # acked_below is computed per attempt: it only grows.
            reply = await self._request(
                lambda: write_request(self.client_id, seq, cmd, self._acked_below()))
        finally:
            self._in_flight.discard(seq)
        return reply[1]

    def _acked_below(self) -> int:
        return min(self._in_flight) if self._in_flight else self._next_seq

    # ---------------------------------------------------------- requests

    async def _request(self, msg: Any, node: Optional[str] = None,
                       patient: bool = False, timeout: Optional[float] = None) -> list:
        """Sends msg (or msg() per attempt) until a final answer: to the
        leader as far as this client knows, or first to `node` (retried there
        until it answers; a "not leader" answer is followed). Returns the OK
        reply; raises KvError for an ERROR reply, Timeout past the deadline.
        `patient`: an attempt waits for its reply until the deadline, not
        attempt_timeout (a request that takes long on purpose: sent again
        while the first copy runs, it would be refused as a second change)."""
        if node is not None:
            parse_address(node)
        loop = asyncio.get_running_loop()
        timeout = self.timeout if timeout is None else timeout
        deadline = loop.time() + timeout
        delay = 0.02
        last_error = "no attempt made"
        pinned = node            # stays set while the request must go to `node`
        while True:
            if self._closed:
                raise KvError("the client is closed")
            target = pinned or self._target
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Timeout(f"kv request not answered within {timeout}s; last error: "
                              f"{last_error}")
            wait = min(self.attempt_timeout, remaining)
            try:
                conn = await self._connection(target, wait)
                reply = await conn.call(msg() if callable(msg) else msg,
                                        remaining if patient else wait)
            except (OSError, ConnectionLost, asyncio.TimeoutError) as exc:
                last_error = f"{target}: {exc or type(exc).__name__}"
                if pinned is None:
                    self._next_target(target)
            else:
                if type(reply) is not list or not reply:
                    raise KvError(f"node {target} sent a malformed reply {reply!r:.100}")
                status = reply[0]
                if status == OK:
                    return reply
                if status == ERROR:
                    raise KvError(f"node {target} refused the request: {reply[1]}")
                if status == REDIRECT:
                    addr = reply[2]
                    if addr:
                        self._learn(addr)
                        pinned = None
                        if addr != target:
                            self._target = addr
                            continue          # straight to the leader
                    last_error = f"{target}: not the leader" + (
                        f" (leader {reply[1]} at {addr})" if addr else ", no leader known")
                    if not addr and pinned is None:
                        self._next_target(target)
                elif status == UNAVAILABLE:
                    last_error = f"{target}: unavailable: {reply[1]}"
                    if pinned is None:
                        self._next_target(target)
                else:
                    raise KvError(f"node {target} sent an unexpected reply {reply!r:.100}")
            # Back off before the next attempt (not a wait for a condition:
            # there is nothing to wait on in a cluster electing a leader).
            self.retries += 1
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 0.5)

    def _learn(self, addr: str) -> None:
        if addr not in self._addrs:
            try:
                parse_address(addr)
            except ValueError:
                return
            self._addrs.append(addr)

    def _next_target(self, failed: str) -> None:
        """After `failed` did not serve a request: try the next known node."""
        if self._target == failed and len(self._addrs) > 1:
            i = self._addrs.index(failed) if failed in self._addrs else -1
            self._target = self._addrs[(i + 1) % len(self._addrs)]

    async def _connection(self, addr: str, timeout: float) -> Connection:
        conn = self._conns.get(addr)
        if conn is not None and not conn.closed:
            return conn
        task = self._connecting.get(addr)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open(addr, timeout))
            self._connecting[addr] = task
            task.add_done_callback(lambda t, a=addr: (
                self._connecting.pop(a, None), t.cancelled() or t.exception()))
        return await asyncio.shield(task)

    async def _open(self, addr: str, timeout: float) -> Connection:
        conn = await connect(addr, timeout, ssl=self._ssl, secret=self._secret,
                             max_frame=self._max_frame)
        if self._closed:
            await conn.close()
            raise KvError("the client is closed")
        old = self._conns.get(addr)
        self._conns[addr] = conn
        if old is not None:
            await old.close()
        if not self._learned:
            # Learn the cluster's addresses, so that the client can go on if
            # the node it was given goes down.
            try:
                st = (await conn.call([KV_STATUS], timeout))[1]
                for _, a in st.get("members", []):
                    if a:
                        self._learn(a)
                        # A node that has not received the membership yet
                        # knows none: ask again on the next connection.
                        self._learned = True
                if st.get("leader_addr"):
                    self._learn(st["leader_addr"])
            except (KvError, ConnectionLost, asyncio.TimeoutError, AttributeError, TypeError):
                if conn.failure is not None:
                    raise conn.failure from None
        return conn
