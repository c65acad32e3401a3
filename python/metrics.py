"""A node's metrics in the Prometheus text format, for any HTTP server.

`metric_families(raft.metrics)` lists what a RaftMetrics says as gauge and
counter families (name, type, help, samples); `prometheus_text(...)` renders
them in the Prometheus text exposition format (version 0.0.4), so a service
that embeds raftcore can serve them from its own HTTP server::

    body = raftcore.metrics.prometheus_text(raft.metrics)
    # Content-Type: raftcore.metrics.CONTENT_TYPE

Nothing here needs the `prometheus_client` package; `raftcore kv --http`
feeds the same families into a prometheus_client registry (raftcore.kv.http).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from raftcore.model import ServerState

__all__ = ["MetricFamily", "metric_families", "prometheus_text", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class MetricFamily:
    """One metric: its name, "gauge" or "counter", help text, and samples as
    (labels, value) pairs. A counter's samples are exposed as NAME_total."""

    name: str
    kind: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> "MetricFamily":
        self.samples.append((labels, value))
        return self


def metric_families(m: Any, prefix: str = "raftcore_") -> list[MetricFamily]:
    """The families of one node's RaftMetrics `m`. Every node reports its
    term, role, leader, log indexes and membership size; a leader also
    reports each follower's match index and lag (entries behind its log).
    Each sample is labelled with the node's id (`node`)."""
    node = str(m.id)

    def fam(name: str, kind: str, help: str) -> MetricFamily:
        return MetricFamily(prefix + name, kind, help)

    def one(name: str, value: float, help: str, kind: str = "gauge") -> MetricFamily:
        return fam(name, kind, help).add(value, node=node)

    role = fam("role", "gauge", "1 for the node's current role, 0 for the others")
    for state in ServerState:
        role.add(1 if m.state == state else 0, node=node, role=state.name.lower())
    membership = m.membership
    voters = learners = 0
    if membership is not None:
        voters = len(membership.voter_ids)
        learners = len(membership.learner_ids)
    out = [
        one("term", m.current_term, "the node's current term"),
        role,
        one("is_leader", 1 if m.state == ServerState.LEADER else 0,
            "1 while the node is the leader"),
        one("leader_known", 0 if m.current_leader is None else 1,
            "1 while the node knows a leader"),
        one("leader_id", -1 if m.current_leader is None else m.current_leader,
            "the id of the leader this node knows, -1 if none"),
        one("campaigning", 1 if getattr(m, "campaigning", False) else 0,
            "1 while the node hears from no leader and asks for votes"),
        one("leader_changes", getattr(m, "leader_changes", 0),
            "times the node learned of a new leader since it started", "counter"),
        one("last_log_index", m.last_log_index, "index of the last entry in the node's log"),
        one("committed_index", m.committed, "highest index the node knows committed"),
        one("applied_index", m.last_applied_index,
            "index of the last entry applied to the state machine"),
        one("snapshot_index", m.snapshot.index if m.snapshot is not None else 0,
            "last index the newest snapshot covers, 0 if none"),
        one("purged_index", m.purged.index if m.purged is not None else 0,
            "last index purged from the log, 0 if none"),
        fam("members", "gauge", "members of the effective membership by kind")
        .add(voters, node=node, kind="voter").add(learners, node=node, kind="learner"),
        one("disk_full", 1 if m.disk_full else 0,
            "1 while the node's disk is full (no writes, no votes)"),
        one("identity_stale", 1 if m.identity_stale else 0,
            "1 if the membership records another storage incarnation for this node"),
    ]
    match = fam("peer_match_index", "gauge",
                "leader only: highest index known flushed on each follower")
    lag = fam("peer_lag", "gauge", "leader only: entries each follower is behind the "
                                   "leader's last log index")
    for peer, matched in sorted((m.replication or {}).items()):
        matched = matched or 0
        match.add(matched, node=node, peer=str(peer))
        lag.add(max(0, m.last_log_index - matched), node=node, peer=str(peer))
    errors = fam("rpc_errors", "counter", "RPCs to each peer that failed (no answer, a "
                                          "connection error), by RPC")
    for (peer, rpc), n in sorted(getattr(m, "rpc_errors", {}).items(), key=str):
        errors.add(n, node=node, peer=str(peer), rpc=rpc)
    out += [match, lag, errors]
    return out


def prometheus_text(m: Any, prefix: str = "raftcore_",
                    extra: Optional[Iterable[MetricFamily]] = None) -> str:
    """The Prometheus text format of the families of RaftMetrics `m`, and
    of `extra` families an application adds (served as CONTENT_TYPE)."""
    lines: list[str] = []
    for f in [*metric_families(m, prefix), *(extra or ())]:
        lines.append(f"# HELP {f.name} {_escape_help(f.help)}")
        lines.append(f"# TYPE {f.name} {f.kind}")
        name = f.name + "_total" if f.kind == "counter" else f.name
        for labels, value in f.samples:
            lines.append(f"{name}{_labels(labels)} {_value(value)}")
    return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))
