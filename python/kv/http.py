"""`raftcore kv --http HOST:PORT`: a small read-only HTTP/1.1 server on
asyncio streams, for monitoring systems and people.

    GET /              the live status page (status_page.html, no external assets)
    GET /metrics       Prometheus text format (raftcore.kv.node_metrics)
    GET /health        200 {"healthy": true, ...} while a leader is known and the
                       node applies what is committed; 503 with the reason otherwise
    GET /status        this node's status: the KV_STATUS reply of KvService.status
    GET /cluster       every member's status, gathered by this node over the kv
                       client protocol (the page's data: it needs no other node's
                       HTTP address), and this node's write figures
    GET /openapi.json  an OpenAPI 3 description of the above

Only GET is served (405 otherwise); a malformed request gets 400, an
unknown path 404, and each connection carries one request (the answer
closes it). No request can make the node fail: a handler's error is a 500
logged here.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from importlib import resources
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import urlsplit

from raftcore.metrics import CONTENT_TYPE as PROMETHEUS_TYPE
from raftcore.model import ServerState
from raftcore.network.tcp import parse_address

log = logging.getLogger("raftcore.kv.http")

#: Longest request line or header line accepted.
MAX_LINE = 8192
#: Most header lines accepted.
MAX_HEADERS = 100
#: Seconds a client has to send its request head.
HEAD_TIMEOUT = 10.0
#: Seconds without progress of the applied index, while behind the commit
#: index, after which /health reports the node as not applying.
APPLY_STALL = 10.0
#: Seconds /cluster waits for each other member's status.
PEER_TIMEOUT = 1.0

JSON_TYPE = "application/json"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


class Response:
    """A status, a content type and a body."""

    def __init__(self, status: int, body: bytes | str, content_type: str = JSON_TYPE) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type

    @classmethod
    def json(cls, status: int, data: Any) -> "Response":
        return cls(status, json.dumps(data, separators=(",", ":")), JSON_TYPE)

    @classmethod
    def error(cls, status: int, message: str) -> "Response":
        return cls.json(status, {"error": message})


class HealthCheck:
    """Decides /health from the node's metrics: healthy while it is running,
    knows a leader (and is not campaigning: it heard from that leader within
    an election timeout), and applies what is committed (its applied index equals
    the commit index, or moved within the last APPLY_STALL seconds)."""

    def __init__(self, raft: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.raft = raft
        self.clock = clock
        self._applied = -1
        self._moved_at = clock()

    def check(self) -> tuple[bool, dict]:
        m = self.raft.metrics
        now = self.clock()
        applied = m.last_applied_index
        if applied != self._applied:
            self._applied, self._moved_at = applied, now
        reason = None
        if m.state == ServerState.SHUTDOWN:
            reason = "the node has shut down"
        elif m.current_leader is None or m.campaigning:
            reason = ("no leader known: the node hears from no leader and asks for votes "
                      "(an election is under way, or no quorum is reachable)")
        elif m.disk_full:
            reason = "the node's disk is full: it takes no writes"
        elif m.identity_stale:
            reason = ("the membership records another storage incarnation for this node: "
                      "remove it and add it back")
        elif applied < m.committed and now - self._moved_at > APPLY_STALL:
            reason = (f"the applied index {applied} is behind the commit index {m.committed} "
                      f"and has not moved for {now - self._moved_at:.0f}s")
        return reason is None, {
            "healthy": reason is None, "reason": reason, "node": m.id,
            "state": m.state.name, "leader": m.current_leader, "term": m.current_term,
            "committed": m.committed, "applied": applied}


class StatusApp:
    """The endpoints of one node: `await app.handle(path)` -> Response.

    `service`: the node's KvService (its status() is /status); `metrics`: a
    NodeMetrics; `peer_client`: makes the raftcore.kv.Client /cluster asks
    the other members with (given this node's address)."""

    def __init__(self, raft: Any, service: Any, metrics: Any, own_addr: str,
                 peer_client: Callable[[str], Any]) -> None:
        self.raft = raft
        self.service = service
        self.metrics = metrics
        self.own_addr = own_addr
        self.health = HealthCheck(raft)
        self._peer_client_factory = peer_client
        self._peers: Any = None
        self._page: Optional[bytes] = None
        self.routes: dict[str, Callable[[], Awaitable[Response]]] = {
            "/": self.page, "/metrics": self.prometheus, "/health": self.health_json,
            "/status": self.status_json, "/cluster": self.cluster_json,
            "/openapi.json": self.openapi_json,
        }

    async def handle(self, path: str) -> Response:
        route = self.routes.get(path)
        if route is None:
            return Response.error(404, f"no such path {path!r}; paths: "
                                       + ", ".join(sorted(self.routes)))
        return await route()

    async def page(self) -> Response:
        if self._page is None:
            self._page = resources.files("raftcore.kv").joinpath(
                "status_page.html").read_bytes()
        return Response(200, self._page, "text/html; charset=utf-8")

    async def prometheus(self) -> Response:
        return Response(200, self.metrics.text(), PROMETHEUS_TYPE)

    async def health_json(self) -> Response:
        healthy, body = self.health.check()
        return Response.json(200 if healthy else 503, body)

    async def status(self) -> dict:
        return self.service.status_dict()

    async def status_json(self) -> Response:
        return Response.json(200, await self.status())

    async def cluster_json(self) -> Response:
        own = await self.status()
        members = own.get("members") or [[own["id"], self.own_addr]]

        async def member(node_id: int, addr: str) -> dict:
            if node_id == own["id"]:
                return {"id": node_id, "addr": addr, "status": own, "error": None}
            try:
                st = await self._peer_client().status(node=addr)
                return {"id": node_id, "addr": addr, "status": st, "error": None}
            except Exception as exc:   # unreachable, refused, malformed: shown on the page
                return {"id": node_id, "addr": addr, "status": None,
                        "error": f"{type(exc).__name__}: {exc}"}

        nodes = await asyncio.gather(*(member(i, a) for i, a in members))
        return Response.json(200, {"node": own["id"], "time": time.time(), "nodes": nodes,
                                   "local": self.metrics.local_figures()})

    def _peer_client(self) -> Any:
        if self._peers is None:
            self._peers = self._peer_client_factory(self.own_addr)
        return self._peers

    async def openapi_json(self) -> Response:
        return Response.json(200, openapi())

    async def close(self) -> None:
        if self._peers is not None:
            await self._peers.close()
            self._peers = None


class HttpServer:
    """Serves a StatusApp on HOST:PORT; `await HttpServer.start(app, addr)`."""

    def __init__(self, app: StatusApp) -> None:
        self.app = app
        self._server: Optional[asyncio.AbstractServer] = None
        self._conns: set[asyncio.Task] = set()

    @classmethod
    async def start(cls, app: StatusApp, address: str) -> "HttpServer":
        """Listens on `address` (HOST:PORT; port 0 picks a free one)."""
        host, port = parse_address(address)
        self = cls(app)
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_LINE)
        return self

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()
        await self.app.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        method = ""
        try:
            try:
                method, path = await asyncio.wait_for(_read_head(reader), HEAD_TIMEOUT)
            except _BadRequest as exc:
                resp = Response.error(400, str(exc))
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return             # the client left or stalled: nobody to answer
            else:
                resp = await self._answer(method, path)
            await _write_response(writer, resp, method == "HEAD")
        except (ConnectionError, asyncio.CancelledError):
            pass                       # the client left, or the server closes
        except Exception:              # a bug here: log it, keep serving the others
            log.exception("http: answering a request failed")
        finally:
            self._conns.discard(task)
            writer.close()

    async def _answer(self, method: str, path: str) -> Response:
        if method != "GET":
            return Response.error(405, f"method {method} is not allowed: this API is "
                                       "read-only, use GET")
        try:
            return await self.app.handle(path)
        except Exception as exc:       # a bug: answer, log, keep serving
            log.exception("http: GET %s failed", path)
            return Response.error(500, f"{type(exc).__name__}: {exc}")


class _BadRequest(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """(method, path) of the request; _BadRequest naming what is wrong."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest(f"the request line is longer than {MAX_LINE} bytes") from None
    parts = line.decode("latin-1").strip().split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest("malformed request line: expected 'METHOD /path HTTP/1.1'")
    method, target, _ = parts
    for _ in range(MAX_HEADERS):
        try:
            header = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(f"a header line is longer than {MAX_LINE} bytes") from None
        if header in (b"\r\n", b"\n"):
            break
        if b":" not in header:
            raise _BadRequest("malformed header line: expected 'Name: value'")
    else:
        raise _BadRequest(f"more than {MAX_HEADERS} header lines")
    if not method.isalpha() or not method.isupper():
        raise _BadRequest(f"malformed method {method!r}")
    path = urlsplit(target).path if target.startswith("/") else ""
    if not path:
        raise _BadRequest(f"the request target {target!r} is not a path starting with '/'")
    return method, path


async def _write_response(writer: asyncio.StreamWriter, resp: Response, head: bool) -> None:
    head_lines = [
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, '')}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if resp.status == 405:
        head_lines.append("Allow: GET")
    writer.write(("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1"))
    if not head:
        writer.write(resp.body)
    await writer.drain()


def openapi() -> dict:
    """The OpenAPI 3 description of the endpoints."""
    def json_response(description: str, schema: dict) -> dict:
        return {"description": description,
                "content": {JSON_TYPE: {"schema": schema}}}

    health = {"$ref": "#/components/schemas/Health"}
    nullable_int = {"type": ["integer", "null"]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "raftcore kv node", "version": "1",
                 "description": "Read-only monitoring endpoints of one `raftcore kv` node."},
        "paths": {
            "/": {"get": {"summary": "the live status page", "operationId": "page",
                          "responses": {"200": {"description": "an HTML page",
                                                "content": {"text/html": {"schema": {
                                                    "type": "string"}}}}}}},
            "/metrics": {"get": {
                "summary": "metrics in the Prometheus text format", "operationId": "metrics",
                "responses": {"200": {"description": "Prometheus text format 0.0.4",
                                      "content": {"text/plain": {"schema": {
                                          "type": "string"}}}}}}},
            "/health": {"get": {
                "summary": "whether the node knows a leader and applies what is committed",
                "operationId": "health",
                "responses": {"200": json_response("healthy", health),
                              "503": json_response("not healthy; `reason` says why",
                                                   health)}}},
            "/status": {"get": {
                "summary": "this node's status (as the kv client's status request)",
                "operationId": "status",
                "responses": {"200": json_response("the status",
                                                   {"$ref": "#/components/schemas/Status"})}}},
            "/cluster": {"get": {
                "summary": "every member's status, gathered by this node",
                "operationId": "cluster",
                "responses": {"200": json_response("the members",
                                                   {"$ref": "#/components/schemas/Cluster"})}}},
            "/openapi.json": {"get": {
                "summary": "this description", "operationId": "openapi",
                "responses": {"200": json_response("OpenAPI 3 document", {"type": "object"})}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "Health": {
                "type": "object",
                "required": ["healthy", "reason", "node", "state", "leader", "term",
                             "committed", "applied"],
                "properties": {
                    "healthy": {"type": "boolean"},
                    "reason": {"type": ["string", "null"]},
                    "node": {"type": "integer"},
                    "state": {"type": "string"},
                    "leader": nullable_int,
                    "term": {"type": "integer"},
                    "committed": {"type": "integer"},
                    "applied": {"type": "integer"}}},
            "Status": {
                "type": "object",
                "required": ["id", "state", "term", "leader", "last_log_index", "committed",
                             "applied", "members"],
                "properties": {
                    "id": {"type": "integer"},
                    "state": {"type": "string"},
                    "term": {"type": "integer"},
                    "leader": nullable_int,
                    "leader_addr": {"type": ["string", "null"]},
                    "last_log_index": {"type": "integer"},
                    "committed": {"type": "integer"},
                    "applied": {"type": "integer"},
                    "snapshot": nullable_int,
                    "purged": {"type": "integer"},
                    "members": {"type": "array", "items": {"type": "array"}}},
                "additionalProperties": True},
            "Cluster": {
                "type": "object", "required": ["node", "time", "nodes", "local"],
                "properties": {
                    "node": {"type": "integer"},
                    "time": {"type": "number"},
                    "nodes": {"type": "array", "items": {
                        "type": "object", "required": ["id", "addr", "status", "error"],
                        "properties": {
                            "id": {"type": "integer"},
                            "addr": {"type": "string"},
                            "status": {"oneOf": [{"$ref": "#/components/schemas/Status"},
                                                 {"type": "null"}]},
                            "error": {"type": ["string", "null"]}}}},
                    "local": {"type": "object", "required": ["writes_ok", "write_seconds"],
                              "properties": {"writes_ok": {"type": "integer"},
                                             "write_seconds": {"type": "number"}}}}},
        }},
    }


async def start_http(args: Any, raft: Any, service: Any, handlers: dict, *, sm: Any,
                     store: Any) -> tuple[HttpServer, dict]:
    """For run_node: serves `raftcore kv --http` on args.http; returns the
    server (close() it on exit) and the client protocol `handlers` with
    writes and reads counted for /metrics (serve those). `sm` and `store`:
    the node's state machine and log store, whose snapshots and log syncs
    are counted."""
    from raftcore.kv.client import Client
    from raftcore.kv.node_metrics import NodeMetrics

    metrics = NodeMetrics(raft, args.dir)
    metrics.watch_snapshots(sm)
    metrics.watch_log_store(store)

    def peer_client(own_addr: str) -> Client:
        return Client(own_addr, timeout=PEER_TIMEOUT, attempt_timeout=PEER_TIMEOUT,
                      secret=args.secret, ssl=args.client_ssl)

    app = StatusApp(raft, service, metrics, args.listen, peer_client)
    server = await HttpServer.start(app, args.http)
    log.info("node %s serves HTTP on %s (/, /metrics, /health, /status, /cluster, "
             "/openapi.json)", raft.id, args.http)
    return server, metrics.instrument(handlers)
