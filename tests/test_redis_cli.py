"""redis-cli (Debian's redis-tools) against a 3-process `raftcore kv
--redis` cluster: an interactive session on a terminal, one-shot commands,
and `--pipe` mass insertion of 100,000 keys through a follower."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from async_runner import run_guarded
from kv_harness import GUARD, wait_leader
from redis_harness import RedisKvCluster, RespClient


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redis-cli")
    with RedisKvCluster(tmp) as c:
        c.start_all()
        leader = run_guarded(wait_leader(c), 2 * GUARD)
        yield c, leader, [i for i in c.ids if i != leader]


class Terminal:
    """redis-cli on a pseudo-terminal (TERM=dumb: plain line editing)."""

    def __init__(self, port: int) -> None:
        self.prompt = f"127.0.0.1:{port}> ".encode()
        master, slave = pty.openpty()
        self.fd = master
        self.proc = subprocess.Popen(["redis-cli", "-p", str(port)], stdin=slave, stdout=slave,
                                     stderr=slave, close_fds=True,
                                     env={**os.environ, "TERM": "dumb"})
        os.close(slave)
        self.until_prompt()

    def until_prompt(self) -> str:
        out = b""
        deadline = time.monotonic() + GUARD
        while not out.endswith(self.prompt):
            assert time.monotonic() < deadline, f"no prompt after {out!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                out += os.read(self.fd, 4096)
        return out[:-len(self.prompt)].decode().replace("\r\n", "\n")

    def run(self, line: str) -> str:
        """What redis-cli prints for one typed line (the echo left out)."""
        os.write(self.fd, line.encode() + b"\n")
        return self.until_prompt().split("\n", 1)[1]

    def close(self) -> None:
        os.write(self.fd, b"quit\n")
        try:
            assert self.proc.wait(GUARD) == 0
        finally:
            os.close(self.fd)


def test_interactive_session_on_a_follower(cluster):
    c, leader, (f1, _) = cluster
    t = Terminal(c.redis_ports[f1])
    try:
        assert t.run("PING") == "PONG\n"
        assert t.run("SET cli:a hello") == "OK\n"
        assert t.run("GET cli:a") == '"hello"\n'
        assert t.run("APPEND cli:a ' world'") == "(integer) 11\n"
        assert t.run("INCR cli:a") == "(error) ERR value is not an integer or out of range\n"
        assert t.run("MSET cli:b 1 cli:c 2") == "OK\n"
        assert t.run("KEYS cli:[bc]") in ('1) "cli:b"\n2) "cli:c"\n', '1) "cli:c"\n2) "cli:b"\n')
        assert t.run("EXPIRE cli:b 100") == "(integer) 1\n"
        assert t.run("TTL cli:b") == "(integer) 100\n"
        assert t.run("GET cli:nope") == "(nil)\n"
        assert t.run("FROB x") == \
            "(error) ERR unknown command 'FROB', with args beginning with: 'x' \n"
        assert t.run("SELECT 0") == "OK\n"
        assert "raft_role:follower" in t.run("INFO raft")
        assert t.run("HELLO 3").startswith('1# "server" => "redis"\n')
        assert t.run("GET cli:nope") == "(nil)\n"
    finally:
        t.close()


def test_one_shot_commands(cluster):
    c, leader, (f1, f2) = cluster

    def cli(port, *args):
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                              timeout=GUARD, check=True, text=True).stdout
    assert cli(c.redis_ports[f1], "SET", "cli:one", "1") == "OK\n"
    assert cli(c.redis_ports[f2], "INCRBY", "cli:one", "41") == "42\n"
    assert cli(c.redis_ports[leader], "GET", "cli:one") == "42\n"


def test_pipe_mass_insertion_of_100000_keys(cluster, tmp_path):
    c, leader, (f1, _) = cluster
    n = 100_000
    data = tmp_path / "mass.resp"
    with open(data, "wb") as f:
        for i in range(n):
            k, v = b"mass:%d" % i, b"value-%d" % i
            f.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
    with open(data, "rb") as f:
        done = subprocess.run(["redis-cli", "-p", str(c.redis_ports[f1]), "--pipe"], stdin=f,
                              capture_output=True, timeout=4 * GUARD, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"errors: 0, replies: {n}" in done.stdout, done.stdout
    with RespClient(c.redis_ports[leader]) as r:
        assert r.call(b"GET", b"mass:0") == b"value-0"
        assert r.call(b"GET", b"mass:99999") == b"value-99999"
        assert sorted(r.call(b"KEYS", b"mass:9999?")) == [b"mass:9999%d" % i for i in range(10)]
        assert len(r.call(b"KEYS", b"mass:*")) == n


@pytest.mark.parametrize("args, message", [
    (["--redis", "nohost"], "--redis"),
    (["--redis", "127.0.0.1:1", "--redis-reads", "sometimes"], "--redis-reads"),
    (["--redis", "127.0.0.1:1", "--redis-password-file", "/nonexistent/pw"],
     "--redis-password-file: cannot read /nonexistent/pw"),
])
def test_bad_redis_options_are_usage_errors(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "raftcore.cli", "kv", "--id", "1", "--dir",
                           str(tmp_path), "--listen", "127.0.0.1:1", *args],
                          capture_output=True, text=True, timeout=GUARD)
    assert done.returncode == 2 and message in done.stderr, done.stderr
