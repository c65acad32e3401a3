"""examples/http_service.py written on the Raft API directly, to compare
(README, "Lines of code"). It does less than the original: a follower
redirects a write or a read to the leader's HTTP address instead of
forwarding it, a write retried after a lost reply may apply twice, and its
snapshots stay in memory (the log is never purged).

    python examples/http_service_on_raft.py --id 1 --dir n1 \
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
        --http-peers 1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003
"""
import argparse
import asyncio
import os
import signal
from typing import Any, Callable, Optional, Sequence

import msgpack
from aiohttp import web

from raftcore import ENTRY_MEMBERSHIP, ENTRY_NORMAL, Config, Entry, LogId, Node, Raft, RaftError
from raftcore import ReadPolicy, SnapshotMeta
from raftcore.errors import ForwardToLeader
from raftcore.network import RaftServer, TcpNetwork
from raftcore.storage import FileLogStore, Snapshot, StateMachine


class Store(StateMachine):
    def __init__(self) -> None:
        self.data: dict = {}
        self.last_applied: Optional[LogId] = None
        self.membership: Any = None
        self.snapshot: Optional[Snapshot] = None

    def apply(self, entries: Sequence[Entry]) -> list:
        out: list = []
        for e in entries:
            if e.kind == ENTRY_NORMAL:
                key, value = e.payload
                out.append(self.data.get(key))
                self.data[key] = value
            else:
                if e.kind == ENTRY_MEMBERSHIP:
                    self.membership = e.payload
                out.append(None)
            self.last_applied = e.log_id
        return out

    async def applied_state(self) -> tuple:
        return self.last_applied, self.membership

    async def build_snapshot(self, executor: Callable) -> Snapshot:
        assert self.last_applied is not None
        data = msgpack.packb(self.data)
        meta = SnapshotMeta(self.last_applied.term, self.last_applied.index, self.membership,
                            f"{self.last_applied.index}")
        self.snapshot = Snapshot(meta, data)
        return self.snapshot

    def get_current_snapshot(self) -> Optional[Snapshot]:
        return self.snapshot

    async def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self.data = msgpack.unpackb(data, strict_map_key=False)
        self.last_applied = LogId(meta.last_log_term, meta.last_log_index)
        self.membership = meta.membership
        self.snapshot = Snapshot(meta, data)


def parse(text: str) -> dict:
    return {int(i): a for i, a in (item.split("=") for item in text.split(","))}


async def main(args: argparse.Namespace) -> None:
    peers, http_peers = parse(args.peers), parse(args.http_peers)
    config = Config(enable_pre_vote=True, check_quorum=True)
    os.makedirs(args.dir, exist_ok=True)
    store = await FileLogStore.open(os.path.join(args.dir, "log"))
    raft = await Raft.create(args.id, config, TcpNetwork(rpc_timeout=config.rpc_timeout),
                             store, Store())
    host, port = peers[args.id].rsplit(":", 1)
    server = await RaftServer.start(raft, host, int(port))
    if args.id == min(peers):
        try:
            await raft.initialize({i: Node(a) for i, a in peers.items()})
        except RaftError:
            pass                    # initialized before: restarting

    def to_leader(req: web.Request, e: ForwardToLeader) -> web.Response:
        if e.leader_id is None:
            return web.json_response({"error": "no leader yet"}, status=503)
        raise web.HTTPTemporaryRedirect(f"http://{http_peers[e.leader_id]}{req.path}")

    async def put(req: web.Request) -> web.Response:
        try:
            resp = await raft.client_write([req.match_info["key"], await req.json()])
        except ForwardToLeader as e:
            return to_leader(req, e)
        return web.json_response({"old": resp.data})

    async def get(req: web.Request) -> web.Response:
        try:
            await raft.ensure_linearizable(ReadPolicy.READ_INDEX)
        except ForwardToLeader as e:
            return to_leader(req, e)
        return web.json_response({"value": raft.state_machine.data.get(req.match_info["key"])})

    async def metrics(req: web.Request) -> web.Response:
        m = raft.metrics
        return web.json_response({"id": m.id, "state": m.state.name, "term": m.current_term,
                                  "leader": m.current_leader, "applied": m.last_applied_index,
                                  "voters": sorted(m.membership.voter_ids) if m.membership else []})

    async def learners(req: web.Request) -> web.Response:
        body = await req.json()
        try:
            await raft.add_learner(body["id"], Node(body["addr"]))
        except ForwardToLeader as e:
            return to_leader(req, e)
        return await metrics(req)

    async def voters(req: web.Request) -> web.Response:
        try:
            await raft.change_membership(set(await req.json()))
        except ForwardToLeader as e:
            return to_leader(req, e)
        return await metrics(req)

    app = web.Application()
    app.add_routes([web.put("/kv/{key}", put), web.get("/kv/{key}", get),
                    web.get("/metrics", metrics), web.post("/learners", learners),
                    web.post("/voters", voters)])
    runner = web.AppRunner(app)
    await runner.setup()
    http_host, http_port = http_peers[args.id].rsplit(":", 1)
    await web.TCPSite(runner, http_host, int(http_port)).start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await raft.shutdown()
    await server.close()
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--peers", "--http-peers", "--dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--id", type=int, required=True)
    asyncio.run(main(parser.parse_args()))
