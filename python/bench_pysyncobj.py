"""`raftcore bench --compare-pysyncobj`: PySyncObj on the same machine, in
the same invocation. Needs PySyncObj (`pip install 'raftcore[compare]'`).

Three PySyncObj nodes run as processes of their own on loopback ports found
free just before, replicating a counter. Once a leader is elected and every
node is connected, the leader's process increments the counter as fast as
PySyncObj allows in its best pipelined mode: batched AppendEntries, writes
issued with callbacks, up to `window` of them in flight. It counts the writes
committed within `seconds` (and waits for those still in flight), and prints
one JSON line. Every node serves until its stdin closes.

    python -m raftcore.bench_pysyncobj --node I --addrs A,B,C --seconds S --window W
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Optional

from raftcore.bench import stop_process

INSTALL_HINT = "pip install 'raftcore[compare]'"


class PySyncObjUnavailable(RuntimeError):
    pass


def check_available() -> None:
    if importlib.util.find_spec("pysyncobj") is None:
        raise PySyncObjUnavailable(
            f"--compare-pysyncobj needs PySyncObj, which is not installed: {INSTALL_HINT}")


@dataclass
class PySyncObjResult:
    writes_per_s: float
    ok: int            # writes committed
    failed: int        # writes PySyncObj answered with an error
    seconds: float     # from the first write until the last one in flight answered
    window: int
    elections: int     # terms PySyncObj went through during the measurement
    nodes: int = 3
    mode: str = "pipelined: callbacks, batched AppendEntries"
    version: str = ""


# ------------------------------------------------------------- one node

def _node(index: int, addrs: list[str], seconds: float, window: int) -> int:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
    from pysyncobj.batteries import ReplCounter

    # Whatever happens to the parent, this process ends.
    deadline = threading.Timer(seconds + 60, os._exit, (3,))
    deadline.daemon = True
    deadline.start()

    # The benchmark closes our stdin when it is done (or dies).
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True).start()

    counter = ReplCounter()
    conf = SyncObjConf(appendEntriesUseBatch=True)
    node = SyncObj(addrs[index], addrs[:index] + addrs[index + 1:], conf=conf,
                   consumers=[counter])
    # Every node waits until it leads a cluster in which every peer is
    # connected, and has led it for a moment in the same term; only the
    # leader gets there, and if leadership moves before the writes start,
    # the new leader does.
    since = None
    while True:
        st = node.getStatus()
        leading = (st["leader"] == st["self"] and node.isReady() and
                   all(st[k] == 2 for k in st if k.startswith("partner_node_status_server_")))
        if not leading:
            since = None
        elif since is None or since[0] != st["raft_term"]:
            since = (st["raft_term"], time.monotonic())
        elif time.monotonic() - since[1] >= 0.5:
            break
        time.sleep(0.05)

    done = {"ok": 0, "failed": 0}
    reasons: dict = {}
    slots = threading.Semaphore(window)

    def answered(result, error):
        # Runs on PySyncObj's own thread, the only one counting.
        if error == FAIL_REASON.SUCCESS:
            done["ok"] += 1
        else:
            done["failed"] += 1
            reasons[error] = reasons.get(error, 0) + 1
        slots.release()

    inc = counter.inc
    term = st["raft_term"]
    issued = 0
    stalled = False
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end and not stalled:
        for _ in range(256):
            if not slots.acquire(timeout=10):
                stalled = True
                break
            inc(callback=answered)
            issued += 1
    for _ in range(window):                # wait for the writes still in flight
        if not slots.acquire(timeout=10):
            stalled = True
            break
    dt = time.perf_counter() - t0
    print(json.dumps({"ok": done["ok"], "failed": done["failed"], "issued": issued,
                      "seconds": dt, "stalled": stalled, "counter": counter.get(),
                      "fail_reasons": {str(k): v for k, v in reasons.items()},
                      "elections": node.getStatus()["raft_term"] - term}), flush=True)
    os._exit(0)


def _node_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m raftcore.bench_pysyncobj")
    p.add_argument("--node", type=int, required=True)
    p.add_argument("--addrs", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--window", type=int, required=True)
    args = p.parse_args(argv)
    return _node(args.node, args.addrs.split(","), args.seconds, args.window)


# ------------------------------------------------------------ the parent

def free_ports(n: int) -> list[int]:
    """n distinct loopback ports free at this moment (held open together so
    the kernel hands out different ones, then released for the nodes)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def _result_line(proc) -> Optional[dict]:
    while True:
        line = await proc.stdout.readline()
        if not line:
            return None
        if line.startswith(b"{"):
            return json.loads(line)


async def run(seconds: float = 5.0, window: int = 20_000,
              start_timeout: float = 30.0) -> PySyncObjResult:
    """Runs the three nodes and returns the leader's measurement."""
    check_available()
    from importlib.metadata import version

    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    procs, logs = [], []
    try:
        for i in range(3):
            log = tempfile.TemporaryFile()
            logs.append(log)
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "raftcore.bench_pysyncobj", "--node", str(i),
                "--addrs", ",".join(addrs), "--seconds", str(seconds), "--window", str(window),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log))
        readers = {asyncio.ensure_future(_result_line(p)) for p in procs}
        found = None
        limit = asyncio.get_running_loop().time() + start_timeout + seconds + 30
        while readers and found is None:
            left = limit - asyncio.get_running_loop().time()
            if left <= 0:
                break
            done, readers = await asyncio.wait(readers, timeout=left,
                                               return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                found = found or t.result()
        for t in readers:
            t.cancel()
        if found is None:
            raise RuntimeError("PySyncObj produced no measurement (no stable leader, or a "
                               "node failed):\n" + _tails(logs))
        if found["stalled"] or found["ok"] == 0:
            raise RuntimeError(f"PySyncObj stalled during the measurement ({found}):\n"
                               + _tails(logs))
        return PySyncObjResult(writes_per_s=found["ok"] / found["seconds"], ok=found["ok"],
                               failed=found["failed"], seconds=found["seconds"],
                               window=window, elections=found["elections"],
                               version=version("pysyncobj"))
    finally:
        for p in procs:
            await stop_process(p)
        for log in logs:
            log.close()


def _tails(logs) -> str:
    out = []
    for i, log in enumerate(logs):
        log.seek(0)
        text = log.read().decode(errors="replace").strip().splitlines()[-10:]
        if text:
            out.append(f"node {i} stderr:\n  " + "\n  ".join(text))
    return "\n".join(out) or "(no output from the nodes)"


if __name__ == "__main__":
    sys.exit(_node_main())
