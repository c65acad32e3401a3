"""What `raftcore kv --http` exposes at /metrics: the node's RaftMetrics
(raftcore.metrics) plus what the node program counts itself, in a
`prometheus_client` registry.

Counted here, once per client request or per snapshot (never per log entry,
so the write path of the Raft core is unchanged): KV writes and reads with
their outcome and latency (from the request's arrival to its reply, i.e. the
commit-and-apply latency a client sees), writes in flight, snapshot builds
and installs with their sizes, and the log's write-and-fsync time per group
commit (FileLogStore.sync_observer). Read at scrape time: log and snapshot bytes on
disk.

`prometheus_client` is an optional extra (`pip install 'raftcore[http]'`);
`require_prometheus_client()` says so when it is missing.
"""
from __future__ import annotations

import os
import time
from typing import Any, Awaitable, Callable, Iterator, Optional

from raftcore.kv.protocol import ERROR, KV_GET, KV_WRITE, OK, REDIRECT, UNAVAILABLE
from raftcore.metrics import metric_families

#: The extra that brings prometheus_client.
EXTRA = "raftcore[http]"

#: Latency buckets (seconds) of the request histograms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
#: Buckets (seconds) of the log's write-and-fsync histogram.
SYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0)
#: Size buckets (bytes) of the snapshot histogram.
SIZE_BUCKETS = tuple(float(4 ** k) for k in range(5, 16))

#: Reply status code -> the `result` label of a request counter.
_RESULTS = {OK: "ok", REDIRECT: "redirect", UNAVAILABLE: "unavailable", ERROR: "error"}


class MissingExtra(RuntimeError):
    """An optional dependency of the node program is not installed."""


def require_prometheus_client() -> None:
    """Raises MissingExtra naming the extra unless prometheus_client imports."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MissingExtra(
            "--http needs the prometheus_client package, which is not installed; install "
            f"the node program's HTTP extra: pip install '{EXTRA}'") from None


class NodeMetrics:
    """The registry of one node: `text()` is the body of /metrics.

    `raft`: the node's Raft; `data_dir`: its --dir (for the bytes on disk)."""

    def __init__(self, raft: Any, data_dir: Optional[str] = None) -> None:
        from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                                       disable_created_metrics)

        # No NAME_created series: they double the scrape for nothing
        # (process-wide, as it suits the node program).
        disable_created_metrics()
        self.raft = raft
        self.data_dir = data_dir
        self.registry = reg = CollectorRegistry(auto_describe=False)
        node = ("node",)
        self.requests = Counter("raftcore_kv_requests", "client requests answered, by "
                                "operation and result", ["node", "op", "result"], registry=reg)
        self.write_latency = Histogram(
            "raftcore_kv_write_latency_seconds", "from a write's arrival to its reply "
            "(committed on a quorum and applied here, or refused)", node,
            buckets=LATENCY_BUCKETS, registry=reg)
        self.read_latency = Histogram(
            "raftcore_kv_read_latency_seconds", "from a read's arrival to its reply",
            node, buckets=LATENCY_BUCKETS, registry=reg)
        self.pending_writes = Gauge("raftcore_kv_pending_writes", "client writes received "
                                    "and not answered yet", node, registry=reg)
        self.snapshots = Counter("raftcore_snapshots", "snapshots built here or installed "
                                 "from the leader", ["node", "kind"], registry=reg)
        self.snapshot_size = Histogram(
            "raftcore_snapshot_size_bytes", "size of each snapshot built or installed",
            ["node", "kind"], buckets=SIZE_BUCKETS, registry=reg)
        self.sync_latency = Histogram(
            "raftcore_log_sync_seconds", "write and fsync of each group of log records "
            "(group commit: one per batch of appends, not per entry)", node,
            buckets=SYNC_BUCKETS, registry=reg)
        self.disk_bytes = Gauge("raftcore_disk_bytes", "bytes on disk, by what they hold",
                                ["node", "what"], registry=reg)
        self._node = str(raft.id)
        #: Writes answered OK here and the sum of their latencies (seconds),
        #: for the status page's chart.
        self.writes_ok = 0
        self.write_seconds = 0.0
        reg.register(_RaftCollector(raft))
        self.node_disk_bytes_refresh()

    # ---------------------------------------------------- the node's side

    def instrument(self, handlers: dict) -> dict:
        """The client protocol handlers of a KvService with writes and reads
        counted and timed (one clock read on arrival and one on reply)."""
        out = dict(handlers)
        if KV_WRITE in handlers:
            out[KV_WRITE] = self._timed(handlers[KV_WRITE], "write", self.write_latency,
                                        self.pending_writes.labels(self._node))
        if KV_GET in handlers:
            out[KV_GET] = self._timed(handlers[KV_GET], "read", self.read_latency, None)
        return out

    def _timed(self, handler: Callable[[list], Awaitable[list]], op: str, histogram: Any,
               in_flight: Any) -> Callable[[list], Awaitable[list]]:
        observe = histogram.labels(self._node).observe
        counters = {code: self.requests.labels(self._node, op, name)
                    for code, name in _RESULTS.items()}
        clock = time.perf_counter
        is_write = op == "write"

        async def timed(msg: list) -> list:
            if in_flight is not None:
                in_flight.inc()
            start = clock()
            try:
                reply = await handler(msg)
            finally:
                if in_flight is not None:
                    in_flight.dec()
            took = clock() - start
            observe(took)
            status = reply[0] if reply else None
            counter = counters.get(status)
            if counter is not None:
                counter.inc()
            if status == OK and is_write:
                self.writes_ok += 1
                self.write_seconds += took
            return reply

        return timed

    def watch_snapshots(self, sm: Any) -> None:
        """Counts the snapshots state machine `sm` builds and installs, with
        their sizes (wraps its two snapshot methods on this instance)."""
        build, install = sm.build_snapshot, sm.install_snapshot
        built = self.snapshots.labels(self._node, "build")
        installed = self.snapshots.labels(self._node, "install")
        built_size = self.snapshot_size.labels(self._node, "build")
        installed_size = self.snapshot_size.labels(self._node, "install")

        async def build_snapshot(executor: Callable) -> Any:
            snap = await build(executor)
            built.inc()
            built_size.observe(len(snap.data))
            return snap

        async def install_snapshot(meta: Any, data: bytes) -> None:
            await install(meta, data)
            installed.inc()
            installed_size.observe(len(data))

        sm.build_snapshot = build_snapshot
        sm.install_snapshot = install_snapshot

    def watch_log_store(self, store: Any) -> None:
        """Times each group write-and-fsync of a FileLogStore (its
        sync_observer); a log store without one is left alone."""
        if hasattr(store, "sync_observer"):
            store.sync_observer = self.sync_latency.labels(self._node).observe

    # ------------------------------------------------------------- scrape

    def node_disk_bytes_refresh(self) -> None:
        """Sets the bytes on disk of the log and the snapshots (a listing of
        two directories, at scrape time)."""
        if self.data_dir is None:
            return
        for what in ("log", "snapshots"):
            self.disk_bytes.labels(self._node, what).set(
                _dir_bytes(os.path.join(self.data_dir, what)))

    def text(self) -> bytes:
        """The body of /metrics (Prometheus text format)."""
        from prometheus_client import generate_latest

        self.node_disk_bytes_refresh()
        return generate_latest(self.registry)

    def local_figures(self) -> dict:
        """Running totals for the status page: writes answered OK by this
        node and the sum of their latencies in seconds."""
        return {"writes_ok": self.writes_ok, "write_seconds": self.write_seconds}


class _RaftCollector:
    """Feeds raftcore.metrics' families of the node's current RaftMetrics
    into the registry at each scrape."""

    def __init__(self, raft: Any) -> None:
        self.raft = raft

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for f in metric_families(self.raft.metrics):
            kind = CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily
            names = list(f.samples[0][0]) if f.samples else ["node"]
            out = kind(f.name, f.help, labels=names)
            for labels, value in f.samples:
                out.add_metric([labels[n] for n in names], value)
            yield out


def _dir_bytes(path: str) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    if e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
                except OSError:
                    continue      # removed meanwhile (a purged segment)
    except OSError:
        return 0
    return total
