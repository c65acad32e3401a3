"""Shared helpers of the tests of `raftcore kv --redis` (test_redis_*): a
cluster of node processes that serve RESP, a real `redis-server` to compare
with, and a small blocking RESP client that returns replies exactly as they
came (errors, simple strings and nils kept apart).

Tests import it by name (conftest.py puts this folder on sys.path).
"""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time

from kv_harness import GUARD, HOST, KvCluster, free_ports


class Err(str):
    """An error reply ("-ERR ...")."""


class Simple(str):
    """A simple string reply ("+OK")."""


class RedisKvCluster(KvCluster):
    """KvCluster whose nodes also serve Redis (`redis_ports[i]`)."""

    def __init__(self, tmp_path, n: int = 3, extra: list[str] = ()) -> None:
        super().__init__(tmp_path, n, extra)
        ports = free_ports(2 * n)        # raft and redis ports, all distinct
        self.addrs = {i: f"{HOST}:{p}" for i, p in zip(self.ids, ports[:n])}
        self.peers = ",".join(f"{i}={a}" for i, a in self.addrs.items())
        self.redis_ports = dict(zip(self.ids, ports[n:]))

    def start(self, i: int, init: bool = False, args: list[str] = ()) -> None:
        super().start(i, init, ["--redis", f"{HOST}:{self.redis_ports[i]}", *args])


def wait_until(cond, what: str, timeout: float = GUARD):
    """Polls cond() (blocking) until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _pong(port: int) -> bool:
    try:
        with RespClient(port, timeout=1.0) as c:
            return c.call(b"PING") == "PONG"
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(tmp_path, *extra: str):
    """A real redis-server (Debian's) on a free loopback port; yields the port."""
    port = free_ports(1)[0]
    d = tmp_path / f"redis-{port}"
    d.mkdir()
    log = open(d / "log", "wb")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                             "--appendonly", "no", "--dir", str(d), *extra],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _pong(port) or proc.poll() is not None, "redis-server to answer")
        assert proc.poll() is None, (d / "log").read_text()
        yield port
    finally:
        proc.kill()
        proc.wait()
        log.close()


def encode_command(args) -> bytes:
    args = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class _NullArray:
    def __repr__(self) -> str:
        return "NULL_ARRAY"


#: What RespClient reads for RESP2's null array (*-1), told apart from the
#: null bulk string ($-1, None): an aborted EXEC answers it.
NULL_ARRAY = _NullArray()


class RespClient:
    """A blocking RESP client: send(raw bytes), call(*args), read()."""

    def __init__(self, port: int, timeout: float = GUARD) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def __enter__(self) -> "RespClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.f.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(self, *args):
        self.send(encode_command(args))
        return self.read()

    def pipeline(self, commands: list) -> list:
        self.send(b"".join(encode_command(c) for c in commands))
        return [self.read() for _ in commands]

    def read(self):
        line = self.f.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection closed (got {line!r})")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return Simple(body.decode())
        if kind == b"-":
            return Err(body.decode())
        if kind == b":":
            return int(body)
        if kind in (b"$", b"="):
            n = int(body)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data
        if kind == b"*":
            n = int(body)
            return NULL_ARRAY if n < 0 else [self.read() for _ in range(n)]
        if kind == b"%":
            return {self.read(): self.read() for _ in range(int(body))}
        if kind == b"_":
            return None
        raise AssertionError(f"unexpected RESP line {line!r}")


def raft_info(port: int, password: bytes | None = None) -> dict:
    """INFO raft of the node serving Redis on `port`, as a dict of strings."""
    with RespClient(port, timeout=2.0) as c:
        if password is not None:
            assert c.call(b"AUTH", password) == "OK"
        text = c.call(b"INFO", b"raft")
    return dict(line.split(":", 1) for line in text.decode().splitlines() if ":" in line)


def redis_leader(c: RedisKvCluster, password: bytes | None = None) -> int:
    """The leader's id once every running node follows it (asked over RESP,
    which needs no cluster secret)."""
    def agreed():
        try:
            infos = {i: raft_info(c.redis_ports[i], password) for i in c.procs}
        except OSError:
            return None
        leaders = {v["raft_leader_id"] for v in infos.values()}
        lid = int(leaders.pop()) if len(leaders) == 1 and "" not in leaders else None
        return lid if lid is not None and infos[lid]["raft_role"] == "leader" else None
    return wait_until(agreed, "a leader that every node follows")
