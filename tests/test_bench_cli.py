"""`raftcore bench` extras: --plot, --compare-pysyncobj, the latency
histogram behind the plot, and 4096 clients."""
import json
import sys

import pytest

from raftcore import bench, bench_plot, cli
from raftcore.bench import BenchRow, latency_histogram

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _row(clients, puts, floor=None, lat_ns=(30_000, 40_000, 41_000, 900_000)):
    s = sorted(lat_ns)
    return BenchRow(clients=clients, ops=len(s), batch=1, seconds=1.0, puts_per_s=puts,
                    ns_per_op=1e9 / puts, p50_us=s[len(s) // 2] / 1e3, p99_us=s[-1] / 1e3,
                    floor_per_s=floor, of_floor=puts / floor if floor else None,
                    latency_hist=latency_histogram(s))


def _refuse_to_run(monkeypatch):
    def run_all(*args, **kwargs):
        raise AssertionError("the benchmark ran before the option was checked")
    monkeypatch.setattr(bench, "run_all", run_all)


# ------------------------------------------------------------ histogram

def test_latency_histogram_puts_every_call_in_the_bucket_holding_it():
    values = sorted([800, 1_000, 1_250, 9_999, 10_000, 10_001, 3_000_000, 3_000_000])
    h = latency_histogram(values)
    edges, counts = h["edges_us"], h["counts"]
    assert len(edges) == len(counts) + 1
    assert edges == sorted(edges) and len(set(edges)) == len(edges)
    assert sum(counts) == len(values)
    assert edges[0] <= values[0] / 1e3 and values[-1] / 1e3 < edges[-1]
    # Rebuild the counts by hand from the edges.
    expect = [sum(1 for v in values if lo <= v / 1e3 < hi) for lo, hi in zip(edges, edges[1:])]
    assert counts == expect
    # Ten buckets per decade: 0.8 us to 3000 us spans under four decades.
    assert len(counts) <= 40


def test_latency_histogram_of_one_value_has_one_bucket_holding_it():
    h = latency_histogram([5_000])
    assert h["counts"] == [1]
    assert h["edges_us"][0] <= 5.0 < h["edges_us"][1]


# ------------------------------------------------------------------ plot

def test_figure_plots_throughput_per_client_count_and_a_histogram_per_row():
    rows = [_row(64, 300_000, floor=1_000_000), _row(1, 25_000, floor=200_000)]
    fig = bench_plot.make_figure(rows, pysyncobj_wps=30_000)
    tput, hist = fig.axes
    lines = {l.get_label(): l for l in tput.get_lines()}
    assert list(lines["raftcore"].get_xdata()) == [1, 64]
    assert list(lines["raftcore"].get_ydata()) == [25_000, 300_000]
    assert list(lines["asyncio floor (same run)"].get_ydata()) == [200_000, 1_000_000]
    assert list(lines["PySyncObj, 3 processes, pipelined"].get_ydata()) == [30_000, 30_000]
    steps = hist.patches
    assert sorted(p.get_label() for p in steps) == ["1 client", "64 clients"]
    for p in steps:
        assert sum(p.get_data().values) == pytest.approx(1.0)


def test_figure_without_floor_has_only_the_raftcore_line():
    fig = bench_plot.make_figure([_row(1, 25_000), _row(8, 80_000)])
    assert [l.get_label() for l in fig.axes[0].get_lines()] == ["raftcore"]


def test_bench_plot_writes_a_png_of_the_run(tmp_path, capsys):
    from matplotlib.image import imread

    path = tmp_path / "bench.png"
    rc = cli.main(["bench", "--clients", "1,4", "--ops", "20", "--no-floor", "--no-progress",
                   "--plot", str(path)])
    assert rc == 0
    assert f"plot written to {path}" in capsys.readouterr().out
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = imread(path).shape
    assert width > 600 and height > 300


def test_bench_plot_without_matplotlib_fails_before_running(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib fails
    _refuse_to_run(monkeypatch)
    rc = cli.main(["bench", "--clients", "1", "--ops", "20", "--plot", str(tmp_path / "b.png")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install 'raftcore[bench]'" in err
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("name, complaint", [
    ("bench.svg", "ending in .png"),
    ("no-such-folder/bench.png", "does not exist"),
])
def test_bench_plot_rejects_a_bad_file_name_before_running(monkeypatch, tmp_path, capsys,
                                                           name, complaint):
    _refuse_to_run(monkeypatch)
    rc = cli.main(["bench", "--ops", "20", "--plot", str(tmp_path / name)])
    assert rc == 2
    assert complaint in capsys.readouterr().err


# ------------------------------------------------------------- pysyncobj

def test_compare_pysyncobj_without_the_package_fails_before_running(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pysyncobj", None)
    _refuse_to_run(monkeypatch)
    rc = cli.main(["bench", "--clients", "1", "--ops", "20", "--compare-pysyncobj"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "PySyncObj" in err and "pip install 'raftcore[compare]'" in err


@pytest.mark.parametrize("seconds", ["0", "-1", "abc", "inf", "nan"])
def test_pysyncobj_seconds_must_be_a_positive_number(seconds, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--compare-pysyncobj", "--pysyncobj-seconds", seconds])
    assert exc.value.code == 2
    assert "--pysyncobj-seconds" in capsys.readouterr().err


def test_table_shows_each_rows_ratio_to_pysyncobj():
    row = _row(1, 30_000)
    row.vs_pysyncobj = 1.5
    head, line = bench.format_table([row]).splitlines()
    assert head.split()[-2:] == ["x", "PySyncObj"]
    assert line.split()[-1] == "1.50"


def test_compare_pysyncobj_runs_it_and_reports_the_ratio(capsys):
    rc = cli.main(["bench", "--clients", "1,2", "--ops", "20", "--no-floor", "--json",
                   "--compare-pysyncobj", "--pysyncobj-seconds", "1"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    pso = out["pysyncobj"]
    assert pso["nodes"] == 3 and pso["ok"] > 0 and pso["writes_per_s"] > 0
    assert pso["writes_per_s"] == pytest.approx(pso["ok"] / pso["seconds"])
    for r in out["rows"]:
        assert r["vs_pysyncobj"] == pytest.approx(r["puts_per_s"] / pso["writes_per_s"])


def test_a_failed_pysyncobj_run_still_reports_raftcores_rows(monkeypatch, capsys):
    from raftcore import bench_pysyncobj

    async def no_leader(seconds):
        raise RuntimeError("PySyncObj produced no measurement (no stable leader)")
    monkeypatch.setattr(bench_pysyncobj, "run", no_leader)
    rc = cli.main(["bench", "--clients", "1", "--ops", "20", "--no-floor", "--json",
                   "--compare-pysyncobj"])
    assert rc == 1
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["pysyncobj"] is None and "no stable leader" in out["pysyncobj_error"]
    assert out["rows"][0]["puts_per_s"] > 0 and out["rows"][0]["vs_pysyncobj"] is None
    assert "no stable leader" in captured.err


# --------------------------------------------------------------- clients

def test_bench_runs_4096_clients_and_reports_peak_rss(capsys):
    rc = cli.main(["bench", "--clients", "4096", "--ops", "2", "--no-floor", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["rows"]
    assert row["clients"] == 4096 and row["ops"] == 8192 and row["puts_per_s"] > 0
    # One call in LATENCY_SAMPLE per client is timed, the first one always.
    assert sum(row["latency_hist"]["counts"]) == 4096 * -(-2 // bench.LATENCY_SAMPLE)
    assert out["peak_rss_mb"] > 0


def test_latency_is_sampled_once_every_latency_sample_calls_per_client(capsys):
    ops = 2 * bench.LATENCY_SAMPLE + 1          # calls 0, 16 and 32 of each client are timed
    rc = cli.main(["bench", "--clients", "2", "--ops", str(ops), "--no-floor", "--json"])
    assert rc == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["ops"] == 2 * ops
    assert sum(row["latency_hist"]["counts"]) == 2 * 3
    assert 0 < row["p50_us"] <= row["p99_us"]


# ------------------------------------------------------------ a lost leader

@pytest.mark.parametrize("lost", ["refused", "unknown"])
def test_a_row_whose_leader_loses_leadership_is_a_clear_error(monkeypatch, capsys, lost):
    """An election during a row (an overloaded machine) makes client_write
    raise ForwardToLeader (or OutcomeUnknown, for a write whose entry the new
    leader replaced): the run stops with a message saying so, exit status 1,
    the cluster closed; no traceback, no figures."""
    from raftcore.errors import ForwardToLeader, OutcomeUnknown
    error = ForwardToLeader(2, None) if lost == "refused" else OutcomeUnknown("replaced")
    real = bench.start_cluster
    clusters = []

    async def start(*args, **kwargs):
        c = await real(*args, **kwargs)
        clusters.append(c)
        write, calls = c.leader.client_write, [0]

        def losing(payload):
            calls[0] += 1
            if calls[0] == 50:
                raise error
            return write(payload)
        c.leader.client_write = losing
        return c
    monkeypatch.setattr(bench, "start_cluster", start)
    rc = cli.main(["bench", "--clients", "4", "--ops", "100", "--no-floor", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 1 and "lost its leadership during the 4-client row" in out.err, out
    assert "Traceback" not in out.err and "put/s" not in out.out
    [c] = clusters
    assert c.leader.metrics.state.name == "SHUTDOWN"


# ----------------------------------------------------------- scale rows

def _json_run(capsys, *argv):
    rc = cli.main(["bench", "--no-progress", "--json", *argv])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def test_nodes_gives_one_row_per_voter_count(capsys):
    out = _json_run(capsys, "--nodes", "1,5", "--clients", "1,3", "--ops", "20", "--no-floor")
    assert [(r["nodes"], r["clients"]) for r in out["rows"]] == [(1, 1), (1, 3), (5, 1), (5, 3)]
    for r in out["rows"]:
        assert r["ops"] == 20 * r["clients"] and r["puts_per_s"] > 0


def test_nodes_over_tcp_start_a_process_per_follower_and_measure_the_tcp_floor(capsys):
    out = _json_run(capsys, "--transport", "tcp", "--nodes", "2", "--clients", "16",
                    "--ops", "20")
    (row,) = out["rows"]
    assert row["nodes"] == 2 and row["ops"] == 320
    assert row["tcp_floor_per_s"] > 0
    assert row["of_tcp_floor"] == pytest.approx(row["puts_per_s"] / row["tcp_floor_per_s"])
    assert row["of_floor"] == pytest.approx(row["puts_per_s"] / row["floor_per_s"])


def test_tcp_floor_echoes_every_round_trip():
    import uvloop
    from raftcore.bench_echo import run_tcp_floor
    assert uvloop.run(run_tcp_floor(3, 20, 1024)) > 0


def test_payloads_give_goodput_and_the_share_of_the_disks_bandwidth(capsys, tmp_path):
    out = _json_run(capsys, "--payload", "16,4096", "--clients", "2", "--ops", "20",
                    "--store", "file", "--dir", str(tmp_path), "--no-floor")
    assert out["seq_write_mb_per_s"] > 0 and out["fsync_p50_us"] > 0
    assert [r["payload"] for r in out["rows"]] == [16, 4096]
    for r in out["rows"]:
        assert r["mb_per_s"] == pytest.approx(r["puts_per_s"] * r["payload"] / 1e6)
        assert r["of_disk_write"] == pytest.approx(r["mb_per_s"] / out["seq_write_mb_per_s"])
    assert list(tmp_path.iterdir()) == []      # probes and stores cleaned up


def test_table_names_the_new_columns(capsys, tmp_path):
    rc = cli.main(["bench", "--no-progress", "--clients", "1", "--ops", "20", "--payload",
                   "64", "--store", "file", "--dir", str(tmp_path), "--no-floor"])
    assert rc == 0
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if "put/s" in line)
    for column in ("nodes", "payload", "MB/s", "of disk"):
        assert column in head
    assert "sequential write of this disk" in out


def test_memory_rows_report_rss_and_the_log_at_each_checkpoint(capsys):
    out = _json_run(capsys, "--memory", "300,600", "--nodes", "3")
    default, off = out["memory"]
    assert default["snapshots"] is True and off["snapshots"] is False
    for r in (default, off):
        assert r["payload"] == 100 and r["entries"] == [300, 600]
        assert r["rss_start_mb"] > 0 and all(m > 0 for m in r["rss_mb"])
    # Snapshots off: the log holds every entry written (and the first
    # leader's blank and membership entries).
    assert all(kept >= n for kept, n in zip(off["log_entries"], off["entries"]))


async def _retained_after_purge(snapshots: bool) -> tuple:
    """Writes 12,000 entries to an in-process cluster; with snapshots, waits
    for the purge behind the snapshot at 10,000: (entries the leader's log
    holds, entries written)."""
    from raftcore import bench_long
    cluster = await bench.start_cluster(bench.bench_config(64, 100, snapshots))
    try:
        leader = cluster.leader
        for k in range(0, 12_000, 500):
            await leader.client_write_many(bench_long.distinct_payloads(100, 500, k))
        if snapshots:
            keep = leader.config.max_in_snapshot_log_to_keep
            await leader.wait(30).metrics(
                lambda m: m.purged is not None and m.purged.index >= 10_000 - keep,
                "the purge behind the snapshot at 10,000 entries")
        return bench_long.log_entries(leader), leader.metrics.last_log_index
    finally:
        await cluster.close()


def test_the_log_keeps_a_bounded_tail_once_snapshotted_and_purged():
    import uvloop
    kept, last = uvloop.run(_retained_after_purge(True))
    assert last >= 12_000
    # Entries after the purge point only: at most those written since the
    # snapshot at 10,000 and the kept max_in_snapshot_log_to_keep below it.
    assert kept <= last - (10_000 - 1000)
    kept, last = uvloop.run(_retained_after_purge(False))
    assert kept == last


def test_duration_reports_each_second(capsys):
    out = _json_run(capsys, "--duration", "2", "--clients", "4")
    soak = out["soak"]
    assert soak["clients"] == 4 and soak["seconds"] >= 2
    assert len(soak["per_second"]) == len(soak["p999_us"]) == len(soak["rss_mb"]) >= 2
    assert sum(soak["per_second"]) > 0 and soak["puts_per_s"] > 0
    assert soak["rss_start_mb"] > 0 and soak["rss_end_mb"] > 0


@pytest.mark.parametrize("option, value", [("--nodes", "0"), ("--payload", "16,x"),
                                           ("--memory", "-5"), ("--duration", "0")])
def test_scale_options_refuse_bad_values(option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", option, value])
    assert exc.value.code == 2
    assert option in capsys.readouterr().err


def test_plot_draws_voters_goodput_memory_and_soak_panels():
    from raftcore.bench_long import MemoryRow, SoakRow
    rows = []
    for nodes in (3, 5):
        for payload in (16, 1024):
            r = _row(8, 10_000 * payload / nodes, floor=100_000)
            r.nodes, r.payload, r.mb_per_s = nodes, payload, r.puts_per_s * payload / 1e6
            rows.append(r)
    memory = [MemoryRow(True, 100, 3, 30.0, [1000, 2000], [40.0, 41.0], [900, 950], [1, 2])]
    soak = SoakRow(4, 8, 3, 3.0, 100.0, 30.0, 31.0, [100, 99, 101], [900.0, 950.0, 910.0],
                   [50.0, 51.0, 50.0], [30.5, 30.7, 31.0])
    fig = bench_plot.make_figure(rows, disk_mb_per_s=500.0, memory=memory, soak=soak)
    titles = [ax.get_title() for ax in fig.axes]
    for t in ("throughput", "latency", "throughput against voters", "goodput against payload",
              "memory", "soak: 4 clients", "soak: memory"):
        assert t in titles
    voters = fig.axes[titles.index("throughput against voters")]
    assert sorted(l.get_label() for l in voters.get_lines()) == ["8 clients, 1024 B",
                                                                 "8 clients, 16 B"]
    mem = fig.axes[titles.index("memory")]
    default = next(l for l in mem.get_lines() if l.get_label() == "default snapshot policy")
    assert list(default.get_ydata()) == [30.0, 40.0, 41.0]


def test_plot_of_a_memory_run_writes_a_png(capsys, tmp_path):
    path = tmp_path / "m.png"
    rc = cli.main(["bench", "--memory", "200", "--plot", str(path)])
    assert rc == 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
