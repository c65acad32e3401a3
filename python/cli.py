"""The `raftcore` command: `raftcore bench` runs the cluster benchmark; `sim`,
`kv` and `ctl` hand the rest of the line to their own modules."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import raftcore


def _converted(text: str, convert, expected: str):
    """convert(text); an argparse error saying `expected` if it does not convert."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _int_list(text: str) -> list[int]:
    values = _converted(text, lambda t: [int(x) for x in t.split(",") if x.strip()],
                        "comma-separated integers")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    v = _converted(text, int, "an integer")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _seconds(text: str) -> float:
    v = _converted(text, float, "a number of seconds")
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raftcore", description="raftcore: Raft for Python")
    p.add_argument("--version", action="version", version=f"raftcore {raftcore.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("sim", help="deterministic simulation with fault injection "
                               "(raftcore sim --help)", add_help=False)
    sub.add_parser("kv", help="run one node of a key-value cluster (raftcore kv --help)",
                   add_help=False)
    sub.add_parser("ctl", help="operate a key-value cluster: status, health, members, keys "
                               "(raftcore ctl --help)", add_help=False)
    b = sub.add_parser("bench", help="cluster write benchmark (3 voters in process by default)",
                       description="openraft's cluster_benchmark workload: 3 voters in one "
                                   "process, in-memory log, LocalRouter; N clients each "
                                   "awaiting client_write in a loop. The asyncio floor is "
                                   "measured in the same run (over TCP also the TCP echo "
                                   "floor; with the file store the disk's fsync and "
                                   "sequential write bandwidth).")
    b.add_argument("--clients", type=_int_list, default=[1, 64, 256],
                   help="comma-separated client counts (default 1,64,256)")
    b.add_argument("--ops", type=_positive, default=None,
                   help="calls per client (default: about 200k entries per row)")
    b.add_argument("--batch", type=_positive, default=1,
                   help="entries per call; above 1 uses client_write_many")
    b.add_argument("--payload", type=_int_list, default=None,
                   help="comma-separated payload bytes per entry (default 8; 100 for "
                        "--memory); the table adds MB/s of payload applied")
    b.add_argument("--nodes", type=_int_list, default=[3],
                   help="comma-separated voter counts (default 3)")
    b.add_argument("--transport", choices=("local", "tcp"), default="local",
                   help="local: every node in this process on LocalRouter; tcp: every node "
                        "but the leader in a process of its own, over loopback TCP, and "
                        "beside each row the TCP floor (an echo from another process)")
    b.add_argument("--store", choices=("mem", "file"), default="mem",
                   help="log store: in memory, or FileLogStore (fsynced) on disk")
    b.add_argument("--dir", default=None,
                   help="where file stores go (default: the system temp dir; use a real "
                        "disk, not tmpfs)")
    b.add_argument("--memory", type=_int_list, default=None, metavar="N,N",
                   help="instead of the throughput rows: the leader process's RSS after "
                        "writing each of these entry counts, with snapshots off and with "
                        "the default snapshot policy")
    b.add_argument("--duration", type=_seconds, default=None, metavar="SECONDS",
                   help="instead of the throughput rows: a soak row writing for SECONDS "
                        "with the largest --clients count, reporting each second's put/s, "
                        "p99.9 latency and RSS")
    b.add_argument("--no-floor", action="store_true",
                   help="skip the floors (asyncio, and TCP's echo)")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also draw the run into FILE.png: throughput against clients, "
                        "each row's latency histogram, and where measured throughput "
                        "against voters, MB/s against payload, RSS against entries, the "
                        "soak over time (needs matplotlib: pip install 'raftcore[bench]')")
    b.add_argument("--compare-pysyncobj", action="store_true",
                   help="also run PySyncObj (3 processes on loopback, pipelined) in this "
                        "invocation and print each row's ratio to it (needs PySyncObj: "
                        "pip install 'raftcore[compare]')")
    b.add_argument("--pysyncobj-seconds", type=_seconds, default=5.0, metavar="S",
                   help="how long PySyncObj writes for (default 5)")
    b.add_argument("--embed", action="store_true",
                   help="instead: command throughput through the embedding layer "
                        "(EmbeddedNode.call on ReplCounter) against client_write doing the "
                        "same state-machine work, in the same in-process setup, at each "
                        "--clients count")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `sim` and `kv` own their arguments: hand them the rest of the line.
    if argv and argv[0] == "sim":
        from raftcore.testing import sim
        return sim.main(argv[1:])
    if argv and argv[0] == "kv":
        from raftcore import kv
        return kv.main(argv[1:])
    if argv and argv[0] == "ctl":
        from raftcore.kv import ctl
        return ctl.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    return 2


def _bench(args) -> int:
    import uvloop

    if args.embed:
        from raftcore import bench_embed
        rows = uvloop.run(bench_embed.run_embed(args.clients, args.ops))
        print("raftcore bench --embed: 3 voters in one process, LocalRouter, MemLogStore "
              f"({bench_embed.machine_description()})")
        print(bench_embed.format_embed_table(rows))
        return 0

    from raftcore import bench, bench_plot, bench_pysyncobj

    # Missing optional packages fail here, before a run that would be wasted.
    try:
        if args.plot:
            bench_plot.check_can_plot(args.plot)
        if args.compare_pysyncobj:
            bench_pysyncobj.check_available()
    except (bench_plot.PlotUnavailable, bench_pysyncobj.PySyncObjUnavailable) as exc:
        print(f"raftcore bench: {exc}", file=sys.stderr)
        return 2
    if args.memory or args.duration:
        return _bench_long(args)

    disk = bench.DiskProbe(args.dir) if args.store == "file" else None
    try:
        rows = uvloop.run(bench.run_all(args.clients, args.ops, args.batch,
                                        args.payload or [8],
                                        floor=not args.no_floor,
                                        show_progress=not args.no_progress and not args.json,
                                        transport=args.transport, store=args.store,
                                        workdir=args.dir, nodes_list=args.nodes))
    except bench.BenchmarkError as exc:
        print(f"raftcore bench: {exc}", file=sys.stderr)
        return 1
    if disk is not None:
        disk.after(rows)
    pso, pso_error = _pysyncobj(args, rows) if args.compare_pysyncobj else (None, None)
    where = _where(args)
    if args.plot:
        bench_plot.plot(rows, args.plot, title=f"raftcore bench: {where}",
                        pysyncobj_wps=pso.writes_per_s if pso else None,
                        disk_mb_per_s=disk.seq_mb_per_s if disk else None)
    if args.json:
        from dataclasses import asdict
        print(json.dumps({"machine": bench.machine_description(),
                          "transport": args.transport, "store": args.store,
                          "fsync_p50_us": disk.fsync_us if disk else None,
                          "seq_write_mb_per_s": disk.seq_mb_per_s if disk else None,
                          "peak_rss_mb": round(bench.peak_rss_mb(), 1),
                          "rows": bench.rows_as_dicts(rows),
                          "pysyncobj": asdict(pso) if pso else None,
                          "pysyncobj_error": pso_error}, indent=2))
    else:
        print(f"raftcore bench: {where} ({bench.machine_description()})")
        print(bench.format_table(rows))
        if disk is not None:
            print(disk.describe())
        if pso is not None:
            print(f"PySyncObj {pso.version}: 3 processes on loopback, {pso.mode}, "
                  f"window {pso.window:,}: {pso.writes_per_s:,.0f} writes/s "
                  f"({pso.ok:,} in {pso.seconds:.1f} s"
                  f"{f', {pso.failed:,} failed' if pso.failed else ''}"
                  f"{f', {pso.elections} elections during it' if pso.elections else ''})")
        if args.plot:
            print(f"plot written to {args.plot}")
        print(f"peak RSS {bench.peak_rss_mb():.0f} MB")
    return 1 if pso_error else 0


def _where(args) -> str:
    voters = "/".join(str(n) for n in args.nodes)
    where = (f"{voters} voters in one process, LocalRouter" if args.transport == "local" else
             f"{voters} voters, one process each, loopback TCP")
    store = "MemLogStore" if args.store == "mem" else "FileLogStore (fsync)"
    return f"{where}, {store}"


def _pysyncobj(args, rows) -> tuple:
    """PySyncObj's figures (or the error that stopped it), each row's ratio set."""
    import uvloop

    from raftcore import bench_pysyncobj
    if not args.json:
        print(f"running PySyncObj for {args.pysyncobj_seconds:g} s ...", file=sys.stderr)
    try:
        pso = uvloop.run(bench_pysyncobj.run(seconds=args.pysyncobj_seconds))
    except RuntimeError as exc:     # still show raftcore's rows
        print(f"raftcore bench: {exc}", file=sys.stderr)
        return None, str(exc)
    for r in rows:
        r.vs_pysyncobj = r.puts_per_s / pso.writes_per_s
    return pso, None


def _bench_long(args) -> int:
    """The memory rows (--memory) and the soak row (--duration)."""
    import tempfile
    from dataclasses import asdict

    import uvloop

    from raftcore import bench, bench_long, bench_plot
    nodes = args.nodes[0]
    memory, soak = [], None
    workdir = tempfile.mkdtemp(prefix="raftcore-bench-long-", dir=args.dir)
    try:
        # The default policy first: memory the snapshots-off row grew to
        # stays in this process's allocator and would inflate the other row.
        for snapshots in (True, False) if args.memory else ():
            rowdir = tempfile.mkdtemp(dir=workdir)
            memory.append(uvloop.run(bench_long.run_memory(
                sorted(args.memory), snapshots, (args.payload or [100])[0],
                transport=args.transport, store=args.store, workdir=rowdir, nodes=nodes)))
        if args.duration:
            soak = uvloop.run(bench_long.run_soak(
                args.duration, max(args.clients), (args.payload or [8])[0],
                args.transport, args.store, tempfile.mkdtemp(dir=workdir), nodes))
    except bench.BenchmarkError as exc:
        print(f"raftcore bench: {exc}", file=sys.stderr)
        return 1
    finally:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    if args.plot:
        bench_plot.plot([], args.plot, title=f"raftcore bench: {_where(args)}",
                        memory=memory, soak=soak)
    if args.json:
        print(json.dumps({"machine": bench.machine_description(),
                          "transport": args.transport, "store": args.store,
                          "memory": [asdict(r) for r in memory],
                          "soak": asdict(soak) if soak else None}, indent=2))
        return 0
    print(f"raftcore bench: {_where(args)} ({bench.machine_description()})")
    if memory:
        print(bench_long.format_memory(memory))
    if soak:
        print(bench_long.format_soak(soak))
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
