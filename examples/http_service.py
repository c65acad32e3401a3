"""A replicated key-value service over HTTP, three processes:

    python examples/http_service.py --id 1 --http 127.0.0.1:8001 --dir n1 \
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003    (and 2, 3)

    curl -X PUT localhost:8002/kv/a -d '"hello"'     # any node: followers forward
    curl localhost:8003/kv/a                          # linearizable read
    curl localhost:8001/metrics
    curl -X POST localhost:8001/learners -d '{"id": 4, "addr": "127.0.0.1:7004"}'
    curl -X POST localhost:8001/voters -d '[1, 2, 3, 4]'
"""
import argparse
import asyncio
from typing import Awaitable, Callable

from aiohttp import web

import raftcore

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Store:
    def __init__(self) -> None:
        self.data: dict = {}

    @raftcore.command
    def put(self, key: str, value: object) -> object:
        old, self.data[key] = self.data.get(key), value
        return old

    @raftcore.query
    def get(self, key: str) -> object:
        return self.data.get(key)


async def main(args: argparse.Namespace) -> None:
    node = await raftcore.start(args.id, args.peers, dir=args.dir, state=Store())

    async def put(req: web.Request) -> web.Response:
        return web.json_response({"old": await node.state.put(req.match_info["key"],
                                                              await req.json())})

    async def get(req: web.Request) -> web.Response:
        return web.json_response({"value": await node.state.get(req.match_info["key"])})

    async def metrics(req: web.Request) -> web.Response:
        return web.json_response(node.status())

    async def learners(req: web.Request) -> web.Response:
        body = await req.json()
        await node.raft.add_learner(body["id"], raftcore.Node(body["addr"]))
        return web.json_response(node.status())

    async def voters(req: web.Request) -> web.Response:
        await node.raft.change_membership(set(await req.json()))
        return web.json_response(node.status())

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except raftcore.RaftError as exc:      # no leader yet, not the leader, ...
            return web.json_response({"error": str(exc)}, status=503)

    app = web.Application(middlewares=[errors])
    app.add_routes([web.put("/kv/{key}", put), web.get("/kv/{key}", get),
                    web.get("/metrics", metrics), web.post("/learners", learners),
                    web.post("/voters", voters)])
    runner = web.AppRunner(app)
    await runner.setup()
    host, port = args.http.rsplit(":", 1)
    await web.TCPSite(runner, host, int(port)).start()
    await node.run_until_signal()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, kind in (("--id", int), ("--peers", str), ("--dir", str), ("--http", str)):
        parser.add_argument(name, type=kind, required=True)
    asyncio.run(main(parser.parse_args()))
