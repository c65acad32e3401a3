"""Shared helpers of the tests of `raftcore kv --http` (test_http_*): a
KvCluster whose nodes also serve HTTP, and a small HTTP GET through asyncio
streams (one request per connection, as the node serves them).

Tests import it by name (conftest.py puts this folder on sys.path).
"""
from __future__ import annotations

import asyncio
import json

from kv_harness import HOST, KvCluster, free_ports, until


class HttpKvCluster(KvCluster):
    """A KvCluster whose node i also serves `--http` on self.http[i]."""

    def __init__(self, tmp_path, n: int = 3, extra: list[str] = ()) -> None:
        super().__init__(tmp_path, n, extra)
        self.http = {i: f"{HOST}:{p}" for i, p in zip(self.ids, free_ports(n))}

    def start(self, i: int, init: bool = False, args: list[str] = ()) -> None:
        super().start(i, init, ["--http", self.http[i], *args])

    def url(self, i: int, path: str = "/") -> str:
        return f"http://{self.http[i]}{path}"


async def http_request(addr: str, raw: bytes) -> tuple[int, dict, bytes]:
    """Sends `raw` to HOST:PORT `addr` and reads the answer until the node
    closes the connection: (status, headers with lower-case names, body)."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    assert data.startswith(b"HTTP/1.1 "), f"no HTTP answer to {raw[:60]!r}: {data[:200]!r}"
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    # The answer to HEAD has the headers of the full answer and no body
    # (unless the request was too malformed to be taken for a HEAD).
    length = int(headers["content-length"])
    assert len(body) == length or (raw.startswith(b"HEAD ") and not body), (headers, body[:200])
    return status, headers, body


async def get(addr: str, path: str) -> tuple[int, dict, bytes]:
    return await http_request(addr, f"GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n".encode())


async def get_json(addr: str, path: str) -> tuple[int, dict]:
    status, headers, body = await get(addr, path)
    assert headers["content-type"] == "application/json", headers
    return status, json.loads(body)


async def wait_http(c: HttpKvCluster) -> None:
    """Until every running node answers /health (with 200 or 503)."""
    async def answering():
        for i in c.procs:
            try:
                await get(c.http[i], "/health")
            except OSError:
                return False
        return True
    await until(answering, "every node to serve HTTP", c)
