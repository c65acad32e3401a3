"""`raftcore bench --plot FILE.png`: throughput against clients, and the
latency histogram of each row. Needs matplotlib (`pip install 'raftcore[bench]'`).

Uses matplotlib's object API with the Agg renderer: no pyplot, no display,
no global backend switched under the caller.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional, Sequence

INSTALL_HINT = "pip install 'raftcore[bench]'"


class PlotUnavailable(RuntimeError):
    pass


def check_can_plot(path: str) -> None:
    """Raises PlotUnavailable unless a plot can be written to `path`; called
    before the benchmark runs, so a missing package or a bad path does not
    cost a whole run."""
    if importlib.util.find_spec("matplotlib") is None:
        raise PlotUnavailable(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}")
    if not path.lower().endswith(".png"):
        raise PlotUnavailable(f"--plot writes a PNG file; give a name ending in .png, not {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PlotUnavailable(f"--plot: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise PlotUnavailable(f"--plot: cannot write in folder {folder!r}")


def make_figure(rows: Sequence, title: str = "", pysyncobj_wps: Optional[float] = None,
                disk_mb_per_s: Optional[float] = None, memory: Sequence = (),
                soak=None):
    """The figure, one panel per measurement present: throughput against
    clients (one line per voter count and payload; the floors where
    measured) and each row's latency histogram; with several voter counts,
    put/s against voters; with several payloads, MB/s against payload (and
    the disk's sequential write bandwidth); the memory rows' RSS against
    entries; the soak's put/s, p99.9 latency and RSS per second."""
    from matplotlib.figure import Figure

    panels = []
    if rows:
        panels += [_throughput, _latency]
    if len({r.nodes for r in rows}) > 1:
        panels.append(_voters)
    if len({r.payload for r in rows}) > 1:
        panels.append(_goodput)
    if memory:
        panels.append(_memory)
    if soak is not None:
        panels += [_soak_throughput, _soak_rss]
    ctx = {"rows": sorted(rows, key=lambda r: (r.nodes, r.payload, r.clients)),
           "pysyncobj_wps": pysyncobj_wps, "disk_mb_per_s": disk_mb_per_s,
           "memory": memory, "soak": soak}
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    # Wide enough for the title even with one panel.
    fig = Figure(figsize=(max(8.0, 5.5 * ncols), 4.5 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).flat
    for draw, ax in zip(panels, axes):
        draw(ax, ctx)
        ax.grid(True, alpha=0.3)
    for ax in list(axes):        # the empty cell of an odd number of panels
        ax.remove()
    if title:
        fig.suptitle(title)
    return fig


def _series(rows: Sequence) -> dict:
    """Rows grouped by (voters, payload), each group sorted by clients."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.nodes, r.payload), []).append(r)
    return groups


def _thousands(ax) -> None:
    from matplotlib.ticker import FuncFormatter
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _throughput(ax, ctx) -> None:
    rows = ctx["rows"]
    batch = rows[0].batch
    groups = _series(rows)
    for (nodes, payload), group in groups.items():
        label = "raftcore" if len(groups) == 1 else f"raftcore, {nodes} voters, {payload} B"
        ax.plot([r.clients for r in group], [r.puts_per_s for r in group], "o-", label=label)
    first = next(iter(groups.values()))
    floor = [(r.clients, r.floor_per_s) for r in first if r.floor_per_s]
    if floor:
        ax.plot([c for c, _ in floor], [f for _, f in floor], "s--",
                label="asyncio floor (same run)")
    tcp = [(r.clients, r.tcp_floor_per_s) for r in first if r.tcp_floor_per_s]
    if tcp:
        ax.plot([c for c, _ in tcp], [f for _, f in tcp], "^--",
                label="TCP echo floor (same run)")
    if ctx["pysyncobj_wps"]:
        ax.axhline(ctx["pysyncobj_wps"], color="grey", linestyle=":",
                   label="PySyncObj, 3 processes, pipelined")
    xs = sorted({r.clients for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(c) for c in xs])
    ax.set_xlabel("clients")
    ax.set_ylabel("entries/s" if batch > 1 else "writes/s")
    ax.set_ylim(bottom=0)
    _thousands(ax)
    ax.set_title(f"throughput{f', batch {batch}' if batch > 1 else ''}")
    ax.legend(fontsize="small")


def _latency(ax, ctx) -> None:
    rows = ctx["rows"]
    batch = rows[0].batch
    several = len(_series(rows)) > 1
    for r in rows:
        h = r.latency_hist or {}
        edges, counts = h.get("edges_us", []), h.get("counts", [])
        total = sum(counts)
        if not total:
            continue
        label = f"{r.clients} client{'s' if r.clients > 1 else ''}"
        if several:
            label += f", {r.nodes} voters, {r.payload} B"
        ax.stairs([c / total for c in counts], edges, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency per call (us)" if batch == 1 else
                  f"latency per client_write_many of {batch} (us)")
    ax.set_ylabel("fraction of calls")
    ax.set_title("latency")
    ax.legend(fontsize="small")


def _voters(ax, ctx) -> None:
    by_clients: dict = {}
    for r in ctx["rows"]:
        by_clients.setdefault((r.clients, r.payload), []).append(r)
    for (clients, payload), group in sorted(by_clients.items()):
        group.sort(key=lambda r: r.nodes)
        ax.plot([r.nodes for r in group], [r.puts_per_s for r in group], "o-",
                label=f"{clients} clients, {payload} B")
    ax.set_xticks(sorted({r.nodes for r in ctx["rows"]}))
    ax.set_xlabel("voters")
    ax.set_ylabel("writes/s")
    ax.set_ylim(bottom=0)
    _thousands(ax)
    ax.set_title("throughput against voters")
    ax.legend(fontsize="small")


def _goodput(ax, ctx) -> None:
    by_clients: dict = {}
    for r in ctx["rows"]:
        by_clients.setdefault((r.clients, r.nodes), []).append(r)
    for (clients, nodes), group in sorted(by_clients.items()):
        group.sort(key=lambda r: r.payload)
        ax.plot([r.payload for r in group], [r.mb_per_s for r in group], "o-",
                label=f"{clients} clients, {nodes} voters")
    if ctx["disk_mb_per_s"]:
        ax.axhline(ctx["disk_mb_per_s"], color="grey", linestyle=":",
                   label="disk sequential write (same run)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("payload bytes per entry")
    ax.set_ylabel("MB/s of payload applied")
    ax.set_title("goodput against payload")
    ax.legend(fontsize="small")


def _memory(ax, ctx) -> None:
    for r in ctx["memory"]:
        label = "default snapshot policy" if r.snapshots else "snapshots off"
        ax.plot([0, *r.entries], [r.rss_start_mb, *r.rss_mb], "o-", label=label)
    ax.axhline(1024, color="grey", linestyle=":", label="1 GiB")
    ax.set_xlabel("entries written")
    ax.set_ylabel("leader process RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("memory")
    ax.legend(fontsize="small")


def _soak_throughput(ax, ctx) -> None:
    soak = ctx["soak"]
    secs = list(range(1, len(soak.per_second) + 1))
    ax.plot(secs, soak.per_second, "-", label="writes/s")
    ax.set_xlabel("second")
    ax.set_ylabel("writes/s")
    ax.set_ylim(bottom=0)
    _thousands(ax)
    lat = ax.twinx()
    lat.plot(secs, soak.p999_us, "-", color="tab:red", label="p99.9 latency (us)")
    lat.set_ylabel("p99.9 latency (us)")
    lat.set_ylim(bottom=0)
    ax.set_title(f"soak: {soak.clients} clients")
    ax.legend(loc="lower left", fontsize="small")
    lat.legend(loc="lower right", fontsize="small")


def _soak_rss(ax, ctx) -> None:
    soak = ctx["soak"]
    ax.plot([0, *range(1, len(soak.rss_mb) + 1)], [soak.rss_start_mb, *soak.rss_mb], "-")
    ax.set_xlabel("second")
    ax.set_ylabel("leader process RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("soak: memory")


def plot(rows: Sequence, path: str, title: str = "",
         pysyncobj_wps: Optional[float] = None, disk_mb_per_s: Optional[float] = None,
         memory: Sequence = (), soak=None) -> None:
    make_figure(rows, title, pysyncobj_wps, disk_mb_per_s, memory,
                soak).savefig(path, format="png", dpi=100)
