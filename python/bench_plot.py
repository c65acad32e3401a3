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


def make_figure(rows: Sequence, title: str = "", pysyncobj_wps: Optional[float] = None):
    """The figure: left, throughput (one point per row's client count) of
    raftcore and, where measured, the asyncio floor; right, each row's
    latency histogram as the fraction of calls per bucket."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    tput, hist = fig.subplots(1, 2)
    rows = sorted(rows, key=lambda r: r.clients)
    batch = rows[0].batch if rows else 1
    unit = "entries/s" if batch > 1 else "writes/s"

    xs = [r.clients for r in rows]
    tput.plot(xs, [r.puts_per_s for r in rows], "o-", label="raftcore")
    floor = [(r.clients, r.floor_per_s) for r in rows if r.floor_per_s]
    if floor:
        tput.plot([c for c, _ in floor], [f for _, f in floor], "s--",
                  label="asyncio floor (same run)")
    if pysyncobj_wps:
        tput.axhline(pysyncobj_wps, color="grey", linestyle=":",
                     label="PySyncObj, 3 processes, pipelined")
    tput.set_xscale("log", base=2)
    tput.set_xticks(xs, [str(c) for c in xs])
    tput.set_xlabel("clients")
    tput.set_ylabel(unit)
    tput.set_ylim(bottom=0)
    tput.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    tput.set_title(f"throughput{f', batch {batch}' if batch > 1 else ''}")
    tput.grid(True, alpha=0.3)
    tput.legend()

    for r in rows:
        h = r.latency_hist or {}
        edges, counts = h.get("edges_us", []), h.get("counts", [])
        total = sum(counts)
        if not total:
            continue
        hist.stairs([c / total for c in counts], edges, label=f"{r.clients} client{'s' if r.clients > 1 else ''}")
    hist.set_xscale("log")
    hist.set_xlabel("latency per call (us)" if batch == 1 else
                    f"latency per client_write_many of {batch} (us)")
    hist.set_ylabel("fraction of calls")
    hist.set_title("latency")
    hist.grid(True, alpha=0.3)
    hist.legend()
    if title:
        fig.suptitle(title)
    return fig


def plot(rows: Sequence, path: str, title: str = "",
         pysyncobj_wps: Optional[float] = None) -> None:
    make_figure(rows, title, pysyncobj_wps).savefig(path, format="png", dpi=100)
