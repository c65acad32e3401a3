"""Redis requests of many connections share rounds: the writes that arrive
while a round is in flight go into the next round's one log entry, the
reads a follower forwards into one request. Asserted by counting calls
(a stand-in Raft whose writes wait at a gate the test opens), never by
timing."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_runner import async_test
from raftcore.codec import pack_plain
from raftcore.kv.protocol import OK, SESSION_CMD
from raftcore.kv.redis.apply import REDIS_CMD
from raftcore.kv.redis.cluster import NOT_HERE, ClusterBackend, SessionClient
from raftcore.kv.redis.resp import error
from raftcore.kv.redis.commands import PLAIN, READ, WRITE
from raftcore.kv.redis.fast import plain_batch
from raftcore.kv.redis.rounds import CommandRounds
from raftcore.kv.redis.server import CHUNK_COMMANDS, RedisServer, batch_kind
from redis_harness import encode_command

HOST = "127.0.0.1"


class Gated:
    """A call(cmds) whose rounds wait until the test opens their gate; it
    records each round's commands and answers each command with its key."""

    def __init__(self) -> None:
        self.rounds: list[list] = []
        self.gates: list[asyncio.Event] = []

    async def __call__(self, cmds: list) -> Any:
        self.rounds.append(cmds)
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return [c[1] for c in cmds]


async def until(cond) -> None:
    """Lets the loop run until cond() holds (the guard bounds the test)."""
    while not cond():
        await asyncio.sleep(0)


@async_test(10)
async def test_requests_that_arrive_during_a_round_share_the_next():
    call = Gated()
    rounds = CommandRounds(call, max_bytes=1 << 20)
    first = asyncio.ensure_future(rounds.run([[b"set", b"a"]], 1))
    await until(lambda: call.rounds)
    later = [asyncio.ensure_future(rounds.run([[b"set", b"k%d" % i], [b"set", b"l%d" % i]], 2))
             for i in range(10)]
    for _ in range(10):                  # everything that can run, runs
        await asyncio.sleep(0)
    assert len(call.rounds) == 1         # no round of their own while one is in flight
    call.gates[0].set()
    assert await first == [b"a"]
    await until(lambda: len(call.rounds) == 2)
    assert len(call.rounds[1]) == 20     # all ten requests, in arrival order
    call.gates[1].set()
    for i, t in enumerate(later):
        assert await t == [b"k%d" % i, b"l%d" % i]
    assert (rounds.rounds, rounds.commands) == (2, 21)


@async_test(10)
async def test_a_round_is_cut_at_its_byte_and_command_limits():
    call = Gated()
    rounds = CommandRounds(call, max_bytes=100, max_commands=3)
    blocker = asyncio.ensure_future(rounds.run([[b"set", b"x"]], 1))
    await until(lambda: call.rounds)
    sizes = [60, 30, 30, 500, 1, 1, 1, 1]
    reqs = [asyncio.ensure_future(rounds.run([[b"set", b"r%d" % i]], size))
            for i, size in enumerate(sizes)]
    await until(lambda: len(rounds._pending) == len(sizes))
    call.gates[0].set()
    for n in range(1, 5):                # 60+30 | 30 | 500 alone | 1+1+1 | 1
        await until(lambda: len(call.rounds) > n)
        call.gates[n].set()
    await until(lambda: len(call.rounds) == 6)
    call.gates[5].set()
    assert [len(r) for r in call.rounds[1:]] == [2, 1, 1, 3, 1]
    assert [await r for r in reqs] == [[b"r%d" % i] for i in range(len(sizes))]
    await blocker


@async_test(10)
async def test_up_to_max_in_flight_rounds_run_at_once_and_start_in_arrival_order():
    call = Gated()
    rounds = CommandRounds(call, max_bytes=1 << 20, max_in_flight=2)
    a = asyncio.ensure_future(rounds.run([[b"set", b"a"]], 1))
    await until(lambda: call.rounds)
    b = asyncio.ensure_future(rounds.run([[b"set", b"b"]], 1))
    await until(lambda: len(call.rounds) == 2)       # a second round while the first waits
    rest = [asyncio.ensure_future(rounds.run([[b"set", k]], 1)) for k in (b"c", b"d")]
    for _ in range(10):                  # everything that can run, runs
        await asyncio.sleep(0)
    assert len(call.rounds) == 2         # no third round: two are in flight
    call.gates[1].set()                  # the second ends first: the waiting go next
    assert await b == [b"b"]
    await until(lambda: len(call.rounds) == 3)
    assert [[c[1] for c in r] for r in call.rounds] == [[b"a"], [b"b"], [b"c", b"d"]]
    call.gates[0].set()
    call.gates[2].set()
    assert [await a] + [await t for t in rest] == [[b"a"], [b"c"], [b"d"]]
    with pytest.raises(ValueError, match="max_in_flight"):
        CommandRounds(call, max_bytes=1, max_in_flight=0)


@async_test(10)
async def test_a_request_that_arrives_as_the_last_round_ends_gets_a_round():
    # The request comes in a callback run after the round's answers and
    # before the loop has seen the round's task end (a client's data read
    # in that pass): the slot must be free by then, or nothing would ever
    # take it.
    call = Gated()
    rounds = CommandRounds(call, max_bytes=1 << 20, max_in_flight=1)
    loop = asyncio.get_running_loop()
    answers: list = []

    def first_done(replies, exc):
        answers.append(replies)
        loop.call_soon(rounds.submit, [[b"set", b"b"]], 1, lambda r, e: answers.append(r))
    rounds.submit([[b"set", b"a"]], 1, first_done)
    await until(lambda: call.rounds)
    call.gates[0].set()
    await until(lambda: len(call.rounds) == 2)
    call.gates[1].set()
    await until(lambda: len(answers) == 2)
    assert answers == [[b"a"], [b"b"]]


@async_test(10)
async def test_a_round_cancelled_before_it_started_cancels_its_requests_and_frees_its_slot():
    call = Gated()
    rounds = CommandRounds(call, max_bytes=1 << 20, max_in_flight=1)
    first = asyncio.ensure_future(rounds.run([[b"set", b"a"]], 1))
    await until(lambda: rounds._starting is not None)
    rounds._starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert call.rounds == []
    again = asyncio.ensure_future(rounds.run([[b"set", b"b"]], 1))
    await until(lambda: call.rounds)
    call.gates[0].set()
    assert await again == [b"b"]


@async_test(10)
async def test_a_forwarded_write_waits_until_every_earlier_write_has_settled():
    # Two writes in flight; the later one is refused locally first. It goes
    # to the leader only after the earlier one, whose local attempt fails
    # later, was forwarded and answered: the leader's log keeps their order.
    client = SessionClient([f"{HOST}:1"])
    forwarded: list[int] = []

    async def request(msg, *args, **kwargs):
        seq = msg()[2]
        forwarded.append(seq)
        return [OK, f"applied {seq}"]
    client._request = request
    first_refused = asyncio.get_running_loop().create_future()

    async def first_local(seq, acked):
        return await first_refused           # NOT_HERE: not the leader after all

    async def second_local(seq, acked):
        return NOT_HERE
    first = asyncio.ensure_future(client.redis_write([[b"set", b"k", b"1"]], None, first_local))
    await until(lambda: client._settled)
    second = asyncio.ensure_future(client.redis_write([[b"set", b"k", b"2"]], None,
                                                      second_local))
    for _ in range(10):                  # everything that can run, runs
        await asyncio.sleep(0)
    assert forwarded == [] and not second.done()
    first_refused.set_result(NOT_HERE)
    assert [await first, await second] == ["applied 1", "applied 2"]
    assert forwarded == [1, 2] and client._settled == {}
    await client.close()


@async_test(10)
async def test_one_answer_for_the_round_reaches_every_request_and_errors_are_raised():
    answers: list = [error("ERR refused"), RuntimeError("boom")]

    async def call(cmds):
        await asyncio.sleep(0)
        got = answers.pop(0)
        if isinstance(got, Exception):
            raise got
        return got
    rounds = CommandRounds(call, max_bytes=1 << 20)
    a, b = await asyncio.gather(rounds.run([[b"set", b"a"]] * 2, 2), rounds.run([[b"x"]], 1))
    assert a == [error("ERR refused")] * 2 and b == [error("ERR refused")]
    got = await asyncio.gather(rounds.run([[b"x"]], 1), rounds.run([[b"y"]], 1),
                               return_exceptions=True)
    assert [str(e) for e in got] == ["boom", "boom"]


class GatedRaft:
    """A leader whose client_write waits at a gate; it records each entry
    and answers each Redis command of it with "OK"."""

    def __init__(self) -> None:
        self.entries: list[list] = []
        self.gates: list[asyncio.Event] = []

    async def client_write(self, cmd: list, owned: bool = False) -> Any:
        assert owned
        pack_plain(cmd)                # what a handed-over command must be
        self.entries.append(cmd)
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        assert cmd[0] == SESSION_CMD and cmd[4][0] == REDIS_CMD
        return type("Resp", (), {"data": ("ok", ["OK"] * len(cmd[4][2]))})()


async def _redis_on(raft: Any) -> tuple[RedisServer, SessionClient]:
    client = SessionClient([f"{HOST}:1"])          # never asked: the local Raft leads
    backend = ClusterBackend(raft, None, client)
    server = await RedisServer.start(backend, HOST, 0, raft=raft)
    return server, client


async def _reply(reader: asyncio.StreamReader) -> bytes:
    return await reader.readline()


@async_test(20)
async def test_sets_from_many_connections_go_into_few_log_entries():
    raft = GatedRaft()
    server, client = await _redis_on(raft)
    conns = [await asyncio.open_connection(HOST, server.port) for _ in range(20)]
    try:
        conns[0][1].write(encode_command([b"SET", b"k0", b"v"]))
        await until(lambda: raft.entries)
        conns[1][1].write(encode_command([b"SET", b"k1", b"v"]))
        await until(lambda: len(raft.entries) == 2)
        for i, (_, w) in enumerate(conns[2:], 2):
            w.write(encode_command([b"SET", b"k%d" % i, b"v"]))
        # Two rounds in flight (WRITE_ROUNDS_IN_FLIGHT): the rest wait.
        await until(lambda: len(server.backend.writes._pending) == 18)
        assert len(raft.entries) == 2
        raft.gates[0].set()
        await until(lambda: len(raft.entries) == 3)
        raft.gates[1].set()
        raft.gates[2].set()
        assert [await _reply(r) for r, _ in conns] == [b"+OK\r\n"] * 20
        # 20 SETs from 20 connections: 3 log entries, one sequence number each.
        assert [len(e[4][2]) for e in raft.entries] == [1, 1, 18]
        assert [e[2] for e in raft.entries] == [1, 2, 3]
        assert (server.backend.writes.rounds, server.backend.writes.commands) == (3, 20)
    finally:
        for _, w in conns:
            w.close()
        await server.close()
        await client.close()


@async_test(30)
async def test_a_long_pipeline_goes_in_rounds_of_whole_chunks():
    raft = GatedRaft()
    server, client = await _redis_on(raft)
    n = 2 * CHUNK_COMMANDS + 10
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(b"".join(encode_command([b"SET", b"k%d" % i, b"v"]) for i in range(n)))
        (conn,) = server.conns

        def received() -> int:
            return (sum(len(e[4][2]) for e in raft.entries) + len(conn.queue)
                    + sum(len(r.cmds) for r in server.backend.writes._pending))
        # The first round waits until the whole pipeline has arrived (in
        # however many reads): the rest then goes in one run.
        await until(lambda: raft.gates and received() == n)
        replies = asyncio.ensure_future(reader.readexactly(5 * n))
        while not replies.done():
            for gate in raft.gates:
                gate.set()
            await asyncio.sleep(0)
        assert replies.result() == b"+OK\r\n" * n
        # The part that came in the first read, then the rest: each cut
        # into chunks of at most CHUNK_COMMANDS, one log entry each.
        sizes = [len(e[4][2]) for e in raft.entries]
        assert sum(sizes) == n and max(sizes) <= CHUNK_COMMANDS and len(sizes) <= 4, sizes
        # In order: the entries carry the pipeline's keys in the order sent.
        keys = [c[1] for e in raft.entries for c in e[4][2]]
        assert keys == [b"k%d" % i for i in range(n)]
    finally:
        writer.close()
        await server.close()
        await client.close()


class GatedForward(SessionClient):
    """A follower's client: every forwarded read waits at a gate."""

    def __init__(self) -> None:
        super().__init__([f"{HOST}:1"])
        self.reads: list[tuple[int, list]] = []
        self.gates: list[asyncio.Event] = []

    async def redis_read(self, mode: int, cmds: list) -> list:
        self.reads.append((mode, cmds))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return [c[1] for c in cmds]


class FollowerRaft:
    async def ensure_linearizable(self, policy):
        from raftcore.errors import ForwardToLeader
        raise ForwardToLeader(None, None)


@async_test(20)
async def test_a_followers_reads_go_to_the_leader_in_shared_requests():
    n = 12
    client = GatedForward()
    backend = ClusterBackend(FollowerRaft(), None, client)
    try:
        first = asyncio.ensure_future(backend.read([[b"get", b"a"]]))
        await until(lambda: client.reads)
        rest = [asyncio.ensure_future(backend.read([[b"get", b"k%d" % i]])) for i in range(n)]
        await until(lambda: len(backend.forwarded_reads._pending) == n)
        client.gates[0].set()
        assert await first == [b"a"]
        await until(lambda: len(client.reads) == 2)
        client.gates[1].set()
        assert [await t for t in rest] == [[b"k%d" % i] for i in range(n)]
        assert [len(cmds) for _, cmds in client.reads] == [1, n]
    finally:
        await client.close()


@async_test(20)
async def test_what_arrives_while_a_batch_is_in_flight_is_answered_after_it_in_order():
    # The first SET goes to the round from data_received (no task); what
    # the client sends while it waits (a connection command, another SET,
    # then a malformed frame) runs after it, and the replies keep the order.
    raft = GatedRaft()
    server, client = await _redis_on(raft)
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(encode_command([b"SET", b"k1", b"v"]))
        await until(lambda: raft.entries)
        (conn,) = server.conns
        writer.write(encode_command([b"PING"]) + encode_command([b"SET", b"k2", b"v"])
                     + b"*1\r\n$x\r\n")
        await until(lambda: conn.parser.error is not None)
        assert len(raft.entries) == 1 and conn.queue    # waiting behind the first SET
        raft.gates[0].set()
        await until(lambda: len(raft.entries) == 2)
        raft.gates[1].set()
        assert await reader.read() == (b"+OK\r\n+PONG\r\n+OK\r\n"
                                       b"-ERR Protocol error: invalid bulk length\r\n")
        assert [[c[1] for c in e[4][2]] for e in raft.entries] == [[b"k1"], [b"k2"]]
    finally:
        writer.close()
        await server.close()
        await client.close()


_names = st.sampled_from([b"SET", b"set", b"Set", b"GET", b"get", b"INCR", b"incrby", b"DEL",
                          b"MSET", b"EXPIRE", b"GETSET", b"PING", b"MULTI", b"nope", b"MGET"])
_args = st.lists(st.sampled_from([b"k", b"v", b"EX", b"10", b"abc", b"NX", b""]), max_size=4)


@settings(max_examples=500, deadline=None)
@given(cmds=st.lists(st.builds(lambda n, a: [n, *a], _names, _args), min_size=1, max_size=6))
def test_the_compiled_door_check_takes_only_what_the_python_one_takes_alike(cmds):
    got = plain_batch(cmds, PLAIN)
    if got is not None:
        assert got == batch_kind(cmds)


def test_the_compiled_door_check_takes_plain_reads_and_writes():
    assert plain_batch([[b"SET", b"k", b"v"], [b"incr", b"n"]], PLAIN) == (WRITE, 10)
    assert plain_batch([[b"GET", b"k"], [b"MGET", b"a", b"b"]], PLAIN) == (READ, 10)
    for left_to_python in ([[b"SET", b"k", b"v", b"EX", b"10"]],     # options are checked
                           [[b"GET", b"k"], [b"SET", b"k", b"v"]],     # a mix
                           [[b"INCRBY", b"k", b"1"]], [[b"PING"]], [[b"GET"]], [[b"nope"]]):
        assert plain_batch(left_to_python, PLAIN) is None

