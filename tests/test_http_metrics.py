"""Metrics and health over HTTP (issue 13): RaftMetrics.to_dict, the
library's Prometheus text (raftcore.metrics), and `raftcore kv --http` on a
3-node cluster of real processes: /metrics parsed by prometheus_client's
own parser and checked against the nodes' status, /health turning 503 once
the majority is gone, and requests the server must refuse without failing.

Every wait is a poll of a condition with a deadline (kv_harness.until).
"""
from __future__ import annotations

import json
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from cluster_harness import cluster_test, converge, running_cluster, stable_leader
from http_harness import HttpKvCluster, get, get_json, http_request, wait_http
from kv_harness import GUARD, kv_test, serving, status_of, until, wait_leader
from raftcore.kv.http import APPLY_STALL, HealthCheck
from raftcore.metrics import CONTENT_TYPE, metric_families, prometheus_text
from raftcore.model import ServerState
from raftcore.raft import RaftMetrics
from raftcore.types import LogId, Vote


def samples(text: str) -> dict:
    """(sample name, sorted label items) -> value, by prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in got, f"no sample {name}{labels}; have {sorted(k for k in got if k[0] == name)}"
    return got[key]


# ================================================================ library

@cluster_test
async def test_metrics_to_dict_round_trips_through_json_on_leader_and_follower():
    async with running_cluster(3, seed=1301) as c:
        leader = await stable_leader(c.all())
        for i in range(5):
            await leader.client_write(["set", f"k{i}", i])
        await converge(c.all())
        for raft in c.all():
            m = raft.metrics
            d = m.to_dict()
            assert json.loads(json.dumps(d)) == d
            assert d["id"] == raft.id
            assert d["state"] == m.state.name
            assert d["current_term"] == m.current_term
            assert d["vote"] == {"term": m.vote.term, "node_id": m.vote.node_id,
                                 "committed": bool(m.vote.committed)}
            assert d["last_applied"] == {"term": m.last_applied.term,
                                         "index": m.last_applied.index}
            assert d["committed"] == m.committed == m.last_applied_index
            assert d["membership"]["configs"] == [[1, 2, 3]]
            assert sorted(d["membership"]["nodes"]) == ["1", "2", "3"]
            assert d["membership"]["nodes"]["2"]["addr"] == "n2"
            assert d["leader_changes"] >= 1
        d = leader.metrics.to_dict()
        assert d["state"] == "LEADER"
        assert d["replication"] == {str(i): leader.metrics.last_log_index
                                    for i in (1, 2, 3) if i != leader.id}
        follower = c.others(leader)[0].metrics.to_dict()
        assert follower["replication"] is None
        assert follower["current_leader"] == leader.id
        assert d["rpc_errors"] == []

        # An unreachable follower: the leader counts its failed AppendEntries.
        lost = c.others(leader)[0]
        c.router.isolate(lost.id)
        m = await leader.wait(GUARD).metrics(
            lambda m: m.rpc_errors.get((lost.id, "append_entries"), 0) >= 1,
            "a failed AppendEntries to the isolated follower")
        d = m.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert {"peer": lost.id, "rpc": "append_entries",
                "count": m.rpc_errors[(lost.id, "append_entries")]} in d["rpc_errors"]
        got = samples(prometheus_text(m))
        assert value(got, "raftcore_rpc_errors_total", node=str(leader.id), peer=str(lost.id),
                     rpc="append_entries") >= 1


@cluster_test
async def test_prometheus_text_of_a_leader_parses_and_carries_its_metrics():
    async with running_cluster(3, seed=1302) as c:
        leader = await stable_leader(c.all())
        await leader.client_write(["set", "a", 1])
        await converge(c.all())
        m = leader.metrics
        text = prometheus_text(m)
        got = samples(text)
        node = str(leader.id)
        assert value(got, "raftcore_term", node=node) == m.current_term
        assert value(got, "raftcore_role", node=node, role="leader") == 1
        assert value(got, "raftcore_role", node=node, role="follower") == 0
        assert value(got, "raftcore_is_leader", node=node) == 1
        assert value(got, "raftcore_leader_id", node=node) == leader.id
        assert value(got, "raftcore_leader_changes_total", node=node) == m.leader_changes >= 1
        assert value(got, "raftcore_committed_index", node=node) == m.committed
        assert value(got, "raftcore_applied_index", node=node) == m.last_applied_index
        assert value(got, "raftcore_last_log_index", node=node) == m.last_log_index
        assert value(got, "raftcore_members", node=node, kind="voter") == 3
        assert value(got, "raftcore_campaigning", node=node) == 0
        for peer in c.others(leader):
            assert value(got, "raftcore_peer_match_index", node=node,
                         peer=str(peer.id)) == m.last_log_index
            assert value(got, "raftcore_peer_lag", node=node, peer=str(peer.id)) == 0
        follower = c.others(leader)[0]
        fgot = samples(prometheus_text(follower.metrics))
        assert value(fgot, "raftcore_role", node=str(follower.id), role="follower") == 1
        assert not [k for k in fgot if k[0] == "raftcore_peer_lag"]
        assert "version=0.0.4" in CONTENT_TYPE
        # Every family has the help and type lines the format requires.
        for f in metric_families(m):
            assert f"# TYPE {f.name} {f.kind}\n" in text


def test_kv_http_without_prometheus_client_exits_naming_the_extra(tmp_path):
    # The node program as installed, with prometheus_client made unimportable.
    code = ("import sys; sys.modules['prometheus_client'] = None; "
            "from raftcore.kv.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, "--id", "1", "--dir", str(tmp_path / "n1"),
                        "--listen", "127.0.0.1:7001", "--http", "127.0.0.1:7002"],
                       capture_output=True, text=True, timeout=GUARD)
    assert p.returncode == 2, p
    assert "pip install 'raftcore[http]'" in p.stderr
    assert "prometheus_client" in p.stderr
    assert not (tmp_path / "n1").exists()


class _FakeRaft:
    """Just the metrics HealthCheck reads, set by the test."""

    def __init__(self, **kw) -> None:
        self.set(**kw)

    def set(self, state=ServerState.FOLLOWER, leader=1, committed=10, applied=10, **kw) -> None:
        self.metrics = RaftMetrics(
            id=2, state=state, current_term=3, vote=Vote(3, leader, True),
            current_leader=leader, last_log_index=committed, committed=committed,
            last_applied=LogId(3, applied) if applied else None, snapshot=None, purged=None,
            membership=None, replication=None, **kw)


def test_health_names_what_is_wrong():
    now = [100.0]
    raft = _FakeRaft()
    health = HealthCheck(raft, clock=lambda: now[0])
    assert health.check() == (True, {"healthy": True, "reason": None, "node": 2,
                                     "state": "FOLLOWER", "leader": 1, "term": 3,
                                     "committed": 10, "applied": 10})
    cases = [
        (dict(leader=None), "no leader known"),
        (dict(campaigning=True), "no leader known"),
        (dict(state=ServerState.SHUTDOWN), "has shut down"),
        (dict(disk_full=True), "disk is full"),
        (dict(identity_stale=True), "another storage incarnation"),
    ]
    for kw, reason in cases:
        raft.set(**kw)
        ok, body = health.check()
        assert not ok and reason in body["reason"], (kw, body)
    # Behind the commit index: healthy while the applied index moves, not
    # once it stands still for APPLY_STALL seconds.
    raft.set(committed=50, applied=20)
    assert health.check()[0]
    now[0] += APPLY_STALL / 2
    raft.set(committed=60, applied=30)
    assert health.check()[0]
    now[0] += APPLY_STALL + 1
    ok, body = health.check()
    assert not ok and "applied index 30 is behind the commit index 60" in body["reason"]
    raft.set(committed=60, applied=60)
    assert health.check()[0]


# ========================================================== real processes

@kv_test
async def test_metrics_of_a_live_cluster_match_the_status_of_every_node(tmp_path):
    with HttpKvCluster(tmp_path) as c:
        async with serving(c) as (client, leader):
            await wait_http(c)
            writes = 130          # past the snapshot interval (50) twice
            for i in range(writes):
                await client.set(f"k{i}", i)
            assert await client.get("k0") == 0

            async def idle_and_converged():
                st = {i: await status_of(c.addrs[i]) for i in c.ids}
                ok = all(s is not None and s["applied"] == st[leader]["last_log_index"]
                         and s["last_log_index"] == st[leader]["last_log_index"]
                         for s in st.values())
                # Uptime moves on by itself; everything else must stand still.
                return {i: {k: v for k, v in s.items() if k != "uptime"}
                        for i, s in st.items()} if ok else None
            before = await until(idle_and_converged, "every node to apply everything", c)

            scraped = {}
            for i in c.ids:
                status, headers, body = await get(c.http[i], "/metrics")
                assert status == 200
                assert headers["content-type"].startswith("text/plain")
                scraped[i] = samples(body.decode())
            after = await until(idle_and_converged, "the cluster to stay converged", c)
            assert after == before, "the cluster moved while it was scraped"

            for i, got in scraped.items():
                st, node = before[i], str(i)
                role = st["state"].lower()
                assert value(got, "raftcore_role", node=node, role=role) == 1
                assert value(got, "raftcore_term", node=node) == st["term"]
                assert value(got, "raftcore_leader_id", node=node) == st["leader"] == leader
                assert value(got, "raftcore_last_log_index", node=node) == st["last_log_index"]
                assert value(got, "raftcore_committed_index", node=node) == st["committed"]
                assert value(got, "raftcore_applied_index", node=node) == st["applied"]
                assert value(got, "raftcore_snapshot_index", node=node) == st["snapshot"]
                assert value(got, "raftcore_purged_index", node=node) == st["purged"]
                assert value(got, "raftcore_members", node=node, kind="voter") == 3
                assert value(got, "raftcore_leader_changes_total", node=node) >= 1
                assert value(got, "raftcore_disk_bytes", node=node, what="log") > 0
                assert value(got, "raftcore_disk_bytes", node=node, what="snapshots") > 0
                assert value(got, "raftcore_snapshots_total", node=node, kind="build") >= 2
                assert value(got, "raftcore_snapshot_size_bytes_count", node=node,
                             kind="build") == value(got, "raftcore_snapshots_total",
                                                    node=node, kind="build")
                assert value(got, "raftcore_kv_pending_writes", node=node) == 0
                # Every node's log synced groups of the writes.
                assert value(got, "raftcore_log_sync_seconds_count", node=node) >= 1
                assert value(got, "raftcore_log_sync_seconds_sum", node=node) > 0

            got, node = scraped[leader], str(leader)
            for peer in c.ids:
                if peer != leader:
                    assert value(got, "raftcore_peer_match_index", node=node, peer=str(peer)) \
                        == before[peer]["last_log_index"]
                    assert value(got, "raftcore_peer_lag", node=node, peer=str(peer)) == 0
            ok_writes = value(got, "raftcore_kv_requests_total", node=node, op="write",
                              result="ok")
            # Each write answered once, unless an attempt timed out and was resent.
            assert writes <= ok_writes <= writes + client.retries
            answered = sum(value(got, "raftcore_kv_requests_total", node=node, op="write",
                                 result=r) for r in ("ok", "redirect", "unavailable", "error"))
            assert value(got, "raftcore_kv_write_latency_seconds_count", node=node) == answered
            assert value(got, "raftcore_kv_write_latency_seconds_sum", node=node) > 0
            assert value(got, "raftcore_kv_write_latency_seconds_bucket", node=node,
                         le="+Inf") == answered
            assert value(got, "raftcore_kv_requests_total", node=node, op="read",
                         result="ok") >= 1
            assert value(got, "raftcore_kv_read_latency_seconds_count", node=node) >= 1

            # /status is the node's KV_STATUS answer.
            for i in c.ids:
                code, st = await get_json(c.http[i], "/status")
                assert code == 200
                kv_st = await status_of(c.addrs[i])
                assert 0 <= kv_st.pop("uptime") - st.pop("uptime") < GUARD
                assert st == kv_st


@kv_test
async def test_health_is_200_with_a_leader_and_503_with_a_reason_once_the_majority_is_killed(
        tmp_path):
    with HttpKvCluster(tmp_path) as c:
        async with serving(c) as (client, leader):
            await wait_http(c)
            await client.set("x", 1)
            for i in c.ids:
                async def healthy():
                    code, body = await get_json(c.http[i], "/health")
                    return (code, body) if code == 200 else None
                code, body = await until(healthy, f"node {i} to be healthy", c)
                assert body["healthy"] is True and body["reason"] is None
                assert body["leader"] == leader and body["node"] == i

            survivor = next(i for i in c.ids if i != leader)
            for i in c.ids:
                if i != survivor:
                    c.kill(i)

            async def unhealthy():
                code, body = await get_json(c.http[survivor], "/health")
                return (code, body) if code == 503 else None
            code, body = await until(unhealthy, f"node {survivor} to report itself unhealthy", c)
            assert body["healthy"] is False
            assert "no leader" in body["reason"]
            assert body["node"] == survivor and body["state"] != "LEADER"
            # The survivor counts its failed RPCs (vote requests) to the dead nodes.
            dead = [i for i in c.ids if i != survivor]

            async def rpc_errors_counted():
                _, _, text = await get(c.http[survivor], "/metrics")
                got = samples(text.decode())
                return all(got.get(("raftcore_rpc_errors_total",
                                    (("node", str(survivor)), ("peer", str(i)),
                                     ("rpc", "vote"))), 0) >= 1 for i in dead)
            await until(rpc_errors_counted, "failed vote requests to the dead nodes counted", c)

            # Back to healthy once a majority runs again.
            c.start(leader)
            assert await wait_leader(c) in (leader, survivor)

            async def healthy_again():
                code, body = await get_json(c.http[survivor], "/health")
                return code == 200
            await until(healthy_again, f"node {survivor} to be healthy again", c)


@kv_test
async def test_http_server_refuses_bad_requests_and_keeps_serving(tmp_path):
    with HttpKvCluster(tmp_path, n=1) as c:
        c.start(1, init=True)
        await wait_leader(c)
        await wait_http(c)
        addr = c.http[1]
        cases = [
            (b"garbage\r\n\r\n", 400, "malformed request line"),
            (b"GET /health\r\n\r\n", 400, "malformed request line"),
            (b"GET health HTTP/1.1\r\n\r\n", 400, "not a path"),
            (b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed header"),
            (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 400, "longer than"),
            (b"POST /status HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405, "read-only"),
            (b"DELETE / HTTP/1.1\r\n\r\n", 405, "use GET"),
            (b"GET /nope HTTP/1.1\r\n\r\n", 404, "/metrics"),
            (b"GET /metrics/ HTTP/1.1\r\n\r\n", 404, "no such path"),
        ]
        for raw, want, text in cases:
            status, headers, body = await http_request(addr, raw)
            assert status == want, (raw[:40], status, body)
            assert headers["content-type"] == "application/json"
            assert text in json.loads(body)["error"], (raw[:40], body)
            if want == 405:
                assert headers["allow"] == "GET"
        # A client that connects and leaves without a word does no harm either.
        host, port = addr.rsplit(":", 1)
        import asyncio
        _, w = await asyncio.open_connection(host, int(port))
        w.close()
        code, body = await get_json(addr, "/health")
        assert code == 200 and body["state"] == ServerState.LEADER.name
        status, _, body = await get(addr, "/metrics?x=1")
        assert status == 200 and b"raftcore_term" in body
        assert c.procs[1].poll() is None
