"""redis-py (sync and asyncio) against a 3-process `raftcore kv --redis`
cluster: the commands, pipelines (batched into few log entries),
transactions with WATCH, clients of a follower, RESP3, AUTH, bad input, and
a leader killed with -9 in the middle of a pipeline."""
from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from async_runner import run_guarded
from kv_harness import GUARD, wait_leader
from redis_harness import RedisKvCluster, RespClient, redis_leader, redis_server, wait_until


def _leader(c: RedisKvCluster) -> int:
    return run_guarded(wait_leader(c), 2 * GUARD)


def _client(c: RedisKvCluster, i: int, **kw) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=c.redis_ports[i], socket_timeout=GUARD, **kw)


def _raft_info(r: redis.Redis) -> dict:
    return r.info("raft")


def _deadlines(r: redis.Redis) -> int:
    """How many keys have a deadline (INFO keyspace's expires)."""
    return int(r.info("keyspace").get("db0", {}).get("expires", 0))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redis-py")
    with RedisKvCluster(tmp) as c:
        c.start_all()
        leader = _leader(c)
        yield c, leader, [i for i in c.ids if i != leader]


def test_every_command_through_a_follower_is_seen_by_every_node(cluster):
    c, leader, (f1, f2) = cluster
    r = _client(c, f1)
    other, lead = _client(c, f2), _client(c, leader)
    assert r.ping() is True
    assert r.echo(b"hi") == b"hi"
    assert r.set("py:a", "1") is True
    # Linearizable reads: every node sees the acknowledged write at once.
    assert other.get("py:a") == b"1" and lead.get("py:a") == b"1"
    assert r.set("py:a", "2", nx=True) is None
    assert r.set("py:a", "2", xx=True, get=True) == b"1"
    assert r.set("py:b", "x", ex=100) is True and 99 <= r.ttl("py:b") <= 100
    assert 0 < r.pttl("py:b") <= 100_000
    assert r.expire("py:b", 1000) is True and r.ttl("py:b") > 100
    assert r.persist("py:b") is True and r.ttl("py:b") == -1 and r.ttl("py:nope") == -2
    assert r.getset("py:a", "10") == b"2"
    assert r.setnx("py:a", "0") is False and r.setnx("py:c", "0") is True
    assert r.incr("py:a") == 11 and r.incrby("py:a", 5) == 16
    assert r.decr("py:a") == 15 and r.decrby("py:a", 10) == 5
    assert r.append("py:c", "abc") == 4 and r.strlen("py:c") == 4
    assert r.mset({"py:m1": "1", "py:m2": "2"}) is True
    assert r.msetnx({"py:m2": "x", "py:m3": "3"}) is False and r.get("py:m3") is None
    assert r.mget(["py:m1", "py:m2", "py:m3"]) == [b"1", b"2", None]
    assert r.exists("py:m1", "py:m2", "py:m3", "py:m1") == 3
    assert sorted(r.keys("py:m*")) == [b"py:m1", b"py:m2"]
    assert sorted(r.scan_iter("py:m*", count=2)) == [b"py:m1", b"py:m2"]
    assert r.getdel("py:m1") == b"1" and r.get("py:m1") is None
    assert r.delete("py:m2", "py:m3") == 1
    assert r.dbsize() == other.dbsize() >= 3
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.incr("py:c")
    assert r.get("py:c") == b"0abc"           # state unchanged by the refused INCR
    assert r.client_setname("tester") is True and r.client_getname() == "tester"
    assert isinstance(r.client_id(), int)
    info = _raft_info(r)
    assert info["raft_role"] == "follower" and info["raft_leader_id"] == leader
    assert _raft_info(lead)["raft_role"] == "leader"
    with pytest.raises(redis.ResponseError, match="unknown command 'NOSUCH'"):
        r.execute_command("NOSUCH", "x")


def test_expired_key_is_gone_on_every_node(cluster):
    c, leader, (f1, f2) = cluster
    r = _client(c, f1)
    assert r.set("py:short", "v", px=200) is True
    # The leader hides the key once its deadline passes, then proposes its
    # delete: every node ends without it.
    wait_until(lambda: r.get("py:short") is None, "the key to expire")
    for i in c.ids:
        stale = RespClient(c.redis_ports[i])
        try:
            wait_until(lambda: stale.call(b"EXISTS", b"py:short") == 0 and
                       _deadlines(_client(c, i)) == 0,
                       f"node {i} to delete the expired key")
        finally:
            stale.close()


def test_a_pipeline_of_10000_sets_costs_a_few_log_entries(cluster):
    c, leader, (f1, _) = cluster
    r = _client(c, f1)
    before = _raft_info(r)["raft_last_log_index"]
    pipe = r.pipeline(transaction=False)
    for i in range(10_000):
        pipe.set(f"bulk:{i}", i)
    pipe.get("bulk:9999")
    replies = pipe.execute()
    assert replies[:-1] == [True] * 10_000 and replies[-1] == b"9999"
    entries = _raft_info(_client(c, leader))["raft_last_log_index"] - before
    assert entries < 100, f"10,000 pipelined SETs took {entries} log entries"
    assert r.mget([f"bulk:{i}" for i in range(0, 10_000, 999)]) == \
        [str(i).encode() for i in range(0, 10_000, 999)]


def test_watch_aborts_on_a_change_even_if_changed_back(cluster):
    c, leader, (f1, f2) = cluster
    r, other = _client(c, f1), _client(c, f2)
    r.set("tx:k", "1")
    with r.pipeline() as pipe:
        pipe.watch("tx:k")
        other.set("tx:k", "2")
        other.set("tx:k", "1")                # changed back: still a change
        pipe.multi()
        pipe.set("tx:k", "3")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert r.get("tx:k") == b"1"
    with r.pipeline() as pipe:
        pipe.watch("tx:k")
        other.set("tx:unwatched", "1")       # another key: no abort
        pipe.multi()
        pipe.incr("tx:k").get("tx:k")
        assert pipe.execute() == [2, b"2"]
    # A command refused while queuing: EXECABORT, nothing applied.
    raw = RespClient(c.redis_ports[f2])
    try:
        assert raw.call(b"MULTI") == "OK"
        assert raw.call(b"SET", b"tx:k", b"9") == "QUEUED"
        assert raw.call(b"GET").startswith("ERR wrong number of arguments")
        assert raw.call(b"EXEC").startswith("EXECABORT")
    finally:
        raw.close()
    assert r.get("tx:k") == b"2"


def _expiring_watch(r: redis.Redis, key: str, hidden_at_watch: bool) -> str:
    """WATCH `key`, which has a deadline and has passed it before the WATCH
    (hidden_at_watch) or after; once the server has deleted it, EXEC:
    "applied" or "aborted"."""
    wait_until(lambda: _deadlines(r) == 0, "no key with a deadline")
    r.set(key, "v", px=300)
    with r.pipeline() as pipe:
        if hidden_at_watch:
            wait_until(lambda: r.get(key) is None, "the key to expire")
            pipe.watch(key)
        else:
            pipe.watch(key)
            wait_until(lambda: r.get(key) is None, "the key to expire")
        wait_until(lambda: _deadlines(r) == 0, "the expired key's deletion")
        pipe.multi()
        pipe.set(f"{key}:done", "1")
        try:
            pipe.execute()
        except redis.WatchError:
            return "aborted"
        return "applied"


def test_watch_of_an_expiring_key_decides_as_redis_server(cluster, tmp_path):
    # Redis 7: a key that had expired already when watched is no change
    # when it is deleted; one that expires after the WATCH aborts EXEC.
    c, leader, (f1, _) = cluster
    with redis_server(tmp_path) as port:
        real = redis.Redis(host="127.0.0.1", port=port, socket_timeout=GUARD)
        for hidden in (True, False):
            expected = _expiring_watch(real, "exp:k", hidden)
            assert expected == ("applied" if hidden else "aborted")
            for i in (leader, f1):
                assert _expiring_watch(_client(c, i), f"exp:{i}", hidden) == expected, \
                    (i, hidden)


def test_asyncio_client_with_resp3(cluster):
    c, leader, (f1, _) = cluster

    async def main():
        r = aioredis.Redis(host="127.0.0.1", port=c.redis_ports[f1], protocol=3)
        try:
            assert await r.set("aio:x", "1") is True
            assert await r.get("aio:x") == b"1"
            async with r.pipeline(transaction=True) as p:
                p.incr("aio:x").incrby("aio:x", 10).get("aio:nope")
                assert await p.execute() == [2, 12, None]
            got = await asyncio.gather(*(r.incr("aio:n") for _ in range(50)))
            assert sorted(got) == list(range(1, 51))
        finally:
            await r.aclose()
    run_guarded(main(), GUARD)
    raw = RespClient(c.redis_ports[f1])
    try:
        hello = raw.call(b"HELLO", b"3")
        assert hello[b"proto"] == 3 and hello[b"server"] == b"redis"
        assert raw.call(b"GET", b"aio:nope") is None       # RESP3 null
    finally:
        raw.close()


def test_bad_input_gets_redis_errors_and_reaches_no_log(tmp_path):
    with RedisKvCluster(tmp_path, extra=["--max-command-bytes", "65536",
                                         "--redis-max-bulk", "100000"]) as c:
        c.start_all()
        leader = _leader(c)
        port = c.redis_ports[leader]
        r = _client(c, leader)
        r.set("bad:n", "abc")
        # INCR of a stored non-integer is refused when it applies: in the
        # log, with Redis's error, the value unchanged.
        with pytest.raises(redis.ResponseError, match="not an integer or out of range"):
            r.incr("bad:n")
        before = _raft_info(r)["raft_last_log_index"]
        with RespClient(port) as raw:
            assert raw.call(b"GET").startswith("ERR wrong number of arguments for 'get'")
            assert raw.call(b"SET", b"k", b"v", b"EX", b"0") == \
                "ERR invalid expire time in 'set' command"
            assert raw.call(b"INCRBY", b"k", b"1.5") == \
                "ERR value is not an integer or out of range"
            assert raw.call(b"PING") == "PONG"              # still usable
            # A value the parser takes but the log does not: refused alone,
            # its neighbours in the pipeline applied.
            got = raw.pipeline([[b"SET", b"big:1", b"1"], [b"SET", b"big:2", b"x" * 80_000],
                                [b"SET", b"big:3", b"3"]])
            assert got[0] == got[2] == "OK" and got[1].startswith("ERR "), got
            raw.send(b"*1\r\n$200000\r\n")                 # over --redis-max-bulk
            assert raw.read() == "ERR Protocol error: invalid bulk length"
            with pytest.raises(ConnectionError):
                raw.read()                                 # Redis closes too
        with RespClient(port) as raw:
            raw.send(b"*2\r\n$3\r\nGET\r\nx\r\n")
            assert raw.read() == "ERR Protocol error: expected '$', got 'x'"
        with RespClient(port) as raw:
            raw.send(b'SET "unbalanced x\r\n')
            assert raw.read() == "ERR Protocol error: unbalanced quotes in request"
        with RespClient(port) as raw:
            raw.send(b"SET inline:k 'a b'\r\nGET inline:k\r\n")   # inline commands
            assert raw.read() == "OK" and raw.read() == b"a b"
        # Clients that go away mid-command or before reading their replies.
        for partial in (b"*3\r\n$3\r\nSET\r\n$1\r\nk",
                        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" * 500):
            with RespClient(port) as raw:
                raw.send(partial)
        assert r.ping() is True
        assert r.get("bad:n") == b"abc"
        assert r.get("big:2") is None and r.get("big:3") == b"3"
        # Only big:1, big:3 and the inline SET reached the log: the requests
        # refused at the door never did.
        assert _raft_info(r)["raft_last_log_index"] == before + 3
        for i in c.ids:
            text = c.log_text(i)
            assert "Traceback" not in text and " ERROR " not in text, text


def test_auth_with_password_file_in_a_cluster_with_a_shared_secret(tmp_path):
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret\n")
    cluster_secret = tmp_path / "cluster-secret"
    cluster_secret.write_text("another one")
    # The follower forwards under the cluster's secret; Redis clients use
    # the Redis password.
    with RedisKvCluster(tmp_path, extra=["--redis-password-file", str(secret),
                                         "--secret-file", str(cluster_secret)]) as c:
        c.start_all()
        leader = redis_leader(c, b"s3cret")
        f = next(i for i in c.ids if i != leader)
        once = Retry(NoBackoff(), 0)       # redis-py retries a refused login by default
        with pytest.raises(redis.AuthenticationError, match="must be called with the client "
                                                            "already authenticated"):
            _client(c, f, retry=once).set("a", "1")
        with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
            _client(c, f, password="wrong", retry=once).ping()
        r = _client(c, f, password="s3cret")
        assert r.set("a", "1") is True and r.get("a") == b"1"
        with RespClient(c.redis_ports[f]) as raw:
            assert raw.call(b"GET", b"a") == "NOAUTH Authentication required."
            assert raw.call(b"AUTH", b"default", b"s3cret") == "OK"
            assert raw.call(b"GET", b"a") == b"1"


def test_kill_leader_mid_pipeline_acknowledged_writes_survive(tmp_path):
    with RedisKvCluster(tmp_path) as c:
        c.start_all()
        leader = _leader(c)
        f = next(i for i in c.ids if i != leader)
        r = _client(c, f)
        acked: dict[str, int] = {}
        incr_acked = incr_unknown = 0
        incr_seen: list[int] = []
        errors: list[str] = []
        retries_before = _raft_info(r)["raft_forward_retries"]
        for rounds in range(40):
            if rounds == 10:
                c.kill(leader)
            pipe = r.pipeline(transaction=False)
            for j in range(50):
                pipe.set(f"fo:{rounds}:{j}", rounds)
                pipe.incr("fo:counter")
            replies = pipe.execute(raise_on_error=False)
            for j in range(50):
                s, n = replies[2 * j], replies[2 * j + 1]
                if s is True:
                    acked[f"fo:{rounds}:{j}"] = rounds
                else:
                    errors.append(str(s))
                if isinstance(n, int):
                    incr_acked += 1
                    incr_seen.append(n)
                else:
                    incr_unknown += 1
        # The follower's retries toward the new leader are counted...
        assert _raft_info(r)["raft_forward_retries"] > retries_before
        # ... and a write the client got no answer for is an error saying
        # its outcome is unknown, never a silent second apply.
        assert all("outcome is unknown" in e for e in errors), errors[:3]
        assert len(incr_seen) == len(set(incr_seen)), "an INCR was applied twice"
        total = int(r.get("fo:counter"))
        assert incr_acked <= total <= incr_acked + incr_unknown
        keys = list(acked)
        got = r.mget(keys)
        lost = [k for k, v in zip(keys, got) if v is None or int(v) != acked[k]]
        assert not lost, f"acknowledged writes lost: {lost[:10]}"
