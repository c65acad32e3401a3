"""`raftcore bench --embed`: the layer's command throughput against
client_write doing the same state-machine work (raftcore.bench_embed)."""
from __future__ import annotations

from raftcore import bench_embed, cli


def test_bench_embed_prints_both_sides_and_their_ratio_per_client_count(capsys):
    assert cli.main(["bench", "--embed", "--clients", "1,3", "--ops", "30"]) == 0
    out = capsys.readouterr().out
    assert "3 voters in one process, LocalRouter, MemLogStore" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if "client_write/s" in line)
    rows = [line.split() for line in lines[head + 1:head + 3]]
    assert [r[0] for r in rows] == ["1", "3"]
    assert [r[1] for r in rows] == ["30", "90"]        # calls per row: clients x ops
    for r in rows:
        assert r[4].endswith("%")


def test_each_side_applies_every_call_on_the_counter():
    import asyncio
    rows = asyncio.run(bench_embed.run_embed([2], 25))
    assert rows[0].ops == 50 and rows[0].client_write_per_s > 0 and rows[0].layer_per_s > 0
    assert rows[0].ratio == rows[0].layer_per_s / rows[0].client_write_per_s
