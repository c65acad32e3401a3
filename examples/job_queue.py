"""A replicated job queue worked by every process. Run three (ids 1, 2, 3),
one of them with --jobs N to queue jobs 0..N-1:

    python examples/job_queue.py --id 1 --dir n1 --jobs 200 \
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003

A worker claims a job for a lease; if it dies with the job, the lease runs
out (the time is the leader's, stamped in each entry) and another worker
claims it. A job is completed once: the claim's holder completes it.
"""
import argparse
import asyncio
from typing import Any, Optional

import raftcore

LEASE = 2.0     # seconds a claim lasts


class Jobs:
    def __init__(self) -> None:
        self.todo: dict = {}        # job id -> payload, in the order added
        self.claims: dict = {}      # job id -> [worker, lease end]
        self.done: dict = {}        # job id -> worker

    @raftcore.command
    def add(self, jobs: list) -> int:
        for job_id, payload in jobs:
            if job_id not in self.done:
                self.todo[job_id] = payload
        return len(self.todo)

    @raftcore.command
    def claim(self, worker: str) -> Optional[list]:
        now = raftcore.applying().time
        for job_id, payload in self.todo.items():
            claim = self.claims.get(job_id)
            if claim is None or claim[1] <= now:
                self.claims[job_id] = [worker, now + LEASE]
                return [job_id, payload]
        return None

    @raftcore.command
    def complete(self, job_id: int, worker: str) -> bool:
        if self.claims.get(job_id, [None])[0] != worker:
            return False            # its claim ran out and went to another worker
        del self.todo[job_id], self.claims[job_id]
        self.done[job_id] = worker
        return True

    @raftcore.query
    def progress(self) -> list:
        return [len(self.todo), len(self.done)]


async def work(node: raftcore.EmbeddedNode, me: str, jobs: int) -> None:
    if jobs:
        await node.state.add([[j, f"payload {j}"] for j in range(jobs)])
    while True:
        try:
            job: Any = await node.state.claim(me)
            if job is None:
                todo, done = await node.state.progress()
                if todo == 0 and done:
                    print(f"all {done} jobs done")
                await asyncio.sleep(0.2)
                continue
            await asyncio.sleep(0.01)             # the work
            if await node.state.complete(job[0], me):
                print(f"{me} did job {job[0]}")
        except raftcore.RaftError as exc:
            print(f"{me}: {type(exc).__name__}, trying again")
            await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> None:
    node = await raftcore.start(args.id, args.peers, dir=args.dir, state=Jobs())
    worker = asyncio.ensure_future(work(node, f"worker-{args.id}", args.jobs))
    await node.run_until_signal()
    worker.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, kind in (("--id", int), ("--peers", str), ("--dir", str)):
        parser.add_argument(name, type=kind, required=True)
    parser.add_argument("--jobs", type=int, default=0)
    asyncio.run(main(parser.parse_args()))
