"""A follower node for `raftcore bench --transport tcp`: one process, one node.

Started by the benchmark (python -m raftcore.bench_node --id N --store mem|file
--dir D [--no-snapshots]); prints the port it serves on, then serves until stdin closes or it
gets SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from raftcore.bench import ELECTION_TIMEOUTS, ProgressStateMachine, snapshot_policy
from raftcore.config import Config
from raftcore.network.tcp import RaftServer, TcpNetwork
from raftcore.raft import Raft
from raftcore.storage.file import FileLogStore
from raftcore.storage.mem import MemLogStore


async def serve(node_id: int, store: str, directory: str, snapshots: bool = True) -> None:
    config = Config(seed=node_id, snapshot_policy=snapshot_policy(snapshots), **ELECTION_TIMEOUTS)
    log_store = MemLogStore() if store == "mem" else await FileLogStore.open(directory)
    raft = await Raft.create(node_id, config, TcpNetwork(rpc_timeout=config.rpc_timeout),
                             log_store, ProgressStateMachine())
    server = await RaftServer.start(raft, "127.0.0.1", 0)
    print(server.port, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # The benchmark closes our stdin when it is done (or dies).
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(1) or stop.set())
    await stop.wait()
    await raft.shutdown()
    await server.close()
    await log_store.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m raftcore.bench_node")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--store", choices=("mem", "file"), default="mem")
    p.add_argument("--dir", default="")
    p.add_argument("--no-snapshots", action="store_true",
                   help="never build a snapshot (the log keeps every entry)")
    args = p.parse_args(argv)
    import uvloop
    uvloop.run(serve(args.id, args.store, args.dir, not args.no_snapshots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
