"""A periodic task that runs on the leader only. Run three (ids 1, 2, 3):

    python examples/leader_task.py --id 1 --dir n1 \
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003

node.on_leader starts the task when the node becomes leader and cancels it
when the node stops leading; the task gets the term, which grows with every
new leader. A leader cut off by a partition steps down within an election
timeout, and may run on until then beside the new leader's task: the
replicated record below refuses a beat of an older term than it has seen,
which is how a resource tells the two apart.
"""
import argparse
import asyncio

import raftcore


class Beats:
    def __init__(self) -> None:
        self.term = 0
        self.count = 0

    @raftcore.command
    def beat(self, term: int) -> bool:
        if term < self.term:
            return False            # a deposed leader's late beat
        self.term = term
        self.count += 1
        return True


async def main(args: argparse.Namespace) -> None:
    node = await raftcore.start(args.id, args.peers, dir=args.dir, state=Beats())

    async def every_100ms(term: int) -> None:
        print(f"node {args.id} leads in term {term}")
        while True:
            if await node.state.beat(term):
                print(f"beat by node {args.id} in term {term}")
            await asyncio.sleep(0.1)

    node.on_leader(every_100ms)
    await node.run_until_signal()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, kind in (("--id", int), ("--peers", str), ("--dir", str)):
        parser.add_argument(name, type=kind, required=True)
    asyncio.run(main(parser.parse_args()))
