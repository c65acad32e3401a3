"""redis-benchmark against a 3-process `raftcore kv --redis` cluster, and
against one durable redis-server in the same run (the bar a consistent
cluster is compared to).

    python benchmarks/redis_cluster.py [--dir DIR] [--requests N]

Starts 3 `raftcore kv` nodes (FileLogStore, all in DIR, so all three fsync
on one disk) and `redis-server --appendonly yes --appendfsync always`
(one node, durable, no replication), probes the disk's fsync latency, then
runs Debian's `redis-benchmark -t set,get,incr` with -c 1, -c 50, -c 256
and -c 50 -P 16 (10 times the requests) against the leader, a follower and
redis-server, and prints one table: requests/s, p50, and the ratio to
redis-server's row.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time

from raftcore.bench import fsync_samples_us
from raftcore.bench_pysyncobj import free_ports     # the package's one port helper

HOST = "127.0.0.1"
#: (label, redis-benchmark options, requests as a multiple of --requests):
#: pipelined runs go 5-20 times faster, and one of a tenth of a second
#: would measure mostly its start.
RUNS = [("-c 1", ["-c", "1"], 1), ("-c 50", ["-c", "50"], 1), ("-c 256", ["-c", "256"], 1),
        ("-c 50 -P 16", ["-c", "50", "-P", "16"], 10)]


def ask(port: int, *args: str) -> str:
    done = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, timeout=30)
    return done.stdout


def wait_for(cond, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def raft_info(port: int) -> dict[str, str]:
    """INFO raft of a node, as a dict of strings."""
    return dict(line.strip().split(":", 1) for line in ask(port, "INFO", "raft").splitlines()
                if ":" in line)


def raft_role(port: int) -> str:
    return raft_info(port).get("raft_role", "")


def rounds(port: int, leader_port: int) -> tuple[int, int, int]:
    """(write rounds, write commands) of a node and the leader's read rounds."""
    mine, lead = raft_info(port), raft_info(leader_port)
    return (int(mine["raft_write_rounds"]), int(mine["raft_write_commands"]),
            int(lead["raft_read_rounds"]))


def benchmark(port: int, requests: int, extra: list[str]) -> dict[str, tuple[float, float]]:
    """test -> (requests/s, p50 ms) of one redis-benchmark run."""
    out = subprocess.run(["redis-benchmark", "-h", HOST, "-p", str(port), "-t", "set,get,incr",
                          "-n", str(requests), "-r", "100000", "--csv", *extra],
                         capture_output=True, text=True, timeout=1800, check=True).stdout
    rows = {}
    for row in csv.DictReader(io.StringIO(out)):
        rows[row["test"]] = (float(row["rps"]), float(row["p50_latency_ms"]))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=None,
                   help="where each run makes a fresh data directory (default: the system's "
                        "temporary directory)")
    p.add_argument("--requests", type=int, default=100_000,
                   help="requests per run (10 times as many in the pipelined runs)")
    args = p.parse_args(argv)
    # A fresh directory per run: nodes left by an earlier run would keep that
    # run's membership (and its ports) and never elect a leader on these.
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="raftcore-redis-bench-", dir=args.dir)
    ports = free_ports(7)
    peers = ",".join(f"{i}={HOST}:{ports[i - 1]}" for i in (1, 2, 3))
    procs = []
    try:
        for i in (1, 2, 3):
            log = open(os.path.join(work, f"n{i}.log"), "ab")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "raftcore.cli", "kv", "--id", str(i), "--dir",
                 os.path.join(work, f"n{i}"), "--peers", peers, "--redis",
                 f"{HOST}:{ports[2 + i]}", "--log-level", "WARNING",
                 # As raftcore bench: a loaded machine does not depose the
                 # leader mid-row (the rows say whom they measured).
                 "--election-timeout", "1,2",
                 *(["--init"] if i == 1 else [])], stdout=log, stderr=subprocess.STDOUT))
        rdir = os.path.join(work, "redis-server")
        os.makedirs(rdir, exist_ok=True)
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(ports[6]), "--bind", HOST, "--dir", rdir,
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL))
        redis_ports = {i: ports[2 + i] for i in (1, 2, 3)}
        leader = wait_for(lambda: next((i for i, pt in redis_ports.items()
                                        if raft_role(pt) == "leader"), None), "a leader")
        follower = next(i for i in redis_ports if i != leader)
        wait_for(lambda: ask(ports[6], "PING").strip() == "PONG", "redis-server")
        fsync_p50 = statistics.median(fsync_samples_us(work)) / 1000
        print(f"fsync p50 of the disk under {work}: {fsync_p50:.2f} ms")
        targets = [("redis-server (appendfsync always)", ports[6]),
                   (f"raftcore leader (node {leader})", redis_ports[leader]),
                   (f"raftcore follower (node {follower})", redis_ports[follower])]
        # Batching, counted on the node asked: commands per write round
        # (log entry, or forwarded request), GETs per leadership round.
        print("| target | run | SET/s (p50 ms) | GET/s (p50 ms) | INCR/s (p50 ms) "
              "| writes/entry, GETs/read round |")
        print("| --- | --- | --- | --- | --- | --- |")
        base: dict = {}
        for label, extra, times in RUNS:
            requests = args.requests * times
            for name, port in targets:
                raft = not name.startswith("redis-server")
                before = rounds(port, redis_ports[leader]) if raft else None
                rows = benchmark(port, requests, extra)
                if not raft:
                    base = rows
                cells = []
                for test in ("SET", "GET", "INCR"):
                    rps, p50 = rows.get(test, (0.0, 0.0))
                    ratio = f", {rps / base[test][0]:.0%}" if test in base and \
                        not name.startswith("redis-server") and base[test][0] else ""
                    cells.append(f"{rps:,.0f} ({p50:.2f}{ratio})")
                if raft:
                    after = rounds(port, redis_ports[leader])
                    w_rounds, w_cmds, r_rounds = (a - b for a, b in zip(after, before))
                    cells.append(f"{w_cmds / max(1, w_rounds):.1f}, "
                                 f"{requests / max(1, r_rounds):.1f}")
                    if raft_role(redis_ports[leader]) != "leader":
                        raise SystemExit(f"node {leader} lost leadership during the row "
                                         f"above; its figures are not the leader's")
                else:
                    cells.append("")
                print(f"| {name} | {label} | " + " | ".join(cells) + " |", flush=True)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
