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
