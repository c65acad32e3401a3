"""A job that runs on one process at a time, guarded by a replicated lock
with a lease and a fencing token. Run three (ids 1, 2, 3):

    python examples/lock_job.py --id 1 --dir n1 \
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003

The holder renews its lease between steps; if it dies, its lease runs out
(the leader's ticks move time on) and another process takes the lock with
a higher token. The ledger, the resource the job writes to, refuses a token
older than the newest it has seen: a holder that stalled past its lease
cannot write after its successor has.
"""
import argparse
import asyncio

import raftcore

LEASE = 1.0     # seconds


class Ledger:
    def __init__(self) -> None:
        self.token = 0
        self.steps: list = []

    @raftcore.command
    def record(self, token: int, who: str, step: int) -> bool:
        if token < self.token:
            return False            # fenced off: a newer holder has written
        self.token = token
        self.steps.append([token, who, step])
        return True

    @raftcore.query
    def count(self) -> int:
        return len(self.steps)


async def job(node: raftcore.EmbeddedNode, me: str) -> None:
    locks, ledger = node.objects["locks"], node.objects["ledger"]
    while True:
        try:
            ok, token = await locks.acquire("job", me, LEASE)
            if not ok:
                await asyncio.sleep(LEASE / 4)
                continue
            print(f"{me} holds the lock, token {token}")
            step = 0
            while await locks.renew("job", me, token, LEASE):
                step += 1
                if not await ledger.record(token, me, step):
                    print(f"{me} was fenced off at token {token}")
                    break
                print(f"step {step} token {token} by {me}")
                await asyncio.sleep(0.02)         # the work
        except raftcore.RaftError as exc:     # no leader for a while, ...
            print(f"{me}: {type(exc).__name__}, trying again")
            await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> None:
    node = await raftcore.start(args.id, args.peers, dir=args.dir,
                                state={"locks": raftcore.ReplLock(), "ledger": Ledger()})
    # A holder name of this process alone: restarted, it is another holder
    # and does not take over a lease it cannot know it had.
    worker = asyncio.ensure_future(job(node, f"worker-{node.client_id}"))
    await node.run_until_signal()
    worker.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, kind in (("--id", int), ("--peers", str), ("--dir", str)):
        parser.add_argument(name, type=kind, required=True)
    asyncio.run(main(parser.parse_args()))
