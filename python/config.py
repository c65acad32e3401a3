"""Config: the tunables of a Raft node, validated on construction."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional

from raftcore.errors import ConfigError


#: Config fields that are durations in seconds.
SECONDS_FIELDS = ("heartbeat_interval", "election_timeout_min", "election_timeout_max",
                  "rpc_timeout", "lease_drift_margin")
#: Longest duration accepted (etcd's cap on its election timeout): a larger
#: one is milliseconds typed as seconds far more often than a real setting.
MAX_SECONDS = 50.0


@dataclass(frozen=True)
class SnapshotPolicy:
    """When a node builds a snapshot on its own (openraft's SnapshotPolicy)."""

    #: Build once this many entries were applied since the last snapshot;
    #: None: never (only trigger.snapshot() builds one).
    logs_since_last_snapshot: Optional[int] = 5000

    @classmethod
    def logs_since_last(cls, n: int) -> "SnapshotPolicy":
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ConfigError(f"SnapshotPolicy.logs_since_last needs a positive int, got {n!r}")
        return cls(n)

    @classmethod
    def never(cls) -> "SnapshotPolicy":
        return cls(None)


@dataclass(frozen=True)
class Config:
    """Runtime settings of one node. Times are in seconds (at most MAX_SECONDS;
    non-finite values are refused).

    Names and defaults follow openraft's Config where it has the field.
    """

    cluster_name: str = "raftcore"
    #: A leader sends a heartbeat this often (openraft: 50 ms).
    heartbeat_interval: float = 0.050
    #: A follower that hears no leader for a random time in
    #: [election_timeout_min, election_timeout_max) starts an election.
    election_timeout_min: float = 0.150
    election_timeout_max: float = 0.300
    #: Most entries in one AppendEntries request.
    max_payload_entries: int = 300
    #: Most payload bytes in one AppendEntries request (byte-like payloads
    #: are counted; a single larger entry still travels alone).
    max_payload_bytes: int = 4 * 1024 * 1024
    #: AppendEntries requests in flight to one follower (pipelining window).
    max_inflight: int = 64
    #: Largest command client_write accepts, in msgpack-encoded bytes (etcd
    #: refuses requests above 1.5 MiB): a larger one is refused with
    #: InvalidCommand instead of holding up replication.
    max_command_bytes: int = 1536 * 1024
    #: Client writes that may wait in the leader for a batch; more writers
    #: wait for room instead of memory growing without bound.
    max_pending_writes: int = 65536
    #: Most writes put into the log as one batch.
    max_write_batch: int = 4096
    #: An RPC with no answer after this long counts as lost.
    rpc_timeout: float = 1.0
    #: The leader lease (LEASE_READ) also ends this much earlier, for what
    #: max_clock_drift does not cover: the resolution of the event loop's
    #: clock, and the time between reading it and acting on it.
    lease_drift_margin: float = 0.015
    #: The bound the leader lease rests on: no node's clock runs more than
    #: (1 + max_clock_drift) times as fast as another's. A follower refuses
    #: votes for election_timeout_min by its own clock after hearing from the
    #: leader, so the leader trusts its lease for election_timeout_min /
    #: (1 + max_clock_drift) - lease_drift_margin by its clock, counted from
    #: the send of the latest heartbeat a quorum acknowledged. 0.5 is far
    #: above what crystal clocks (parts per million) and NTP's slewing (at
    #: most 500 ppm) do, and with the default timeouts it keeps the lease
    #: longer than a heartbeat interval. Clocks that may drift more than this
    #: bound make lease reads stale: then raise it, or read with READ_INDEX.
    max_clock_drift: float = 0.5
    #: A leader that has not heard from a quorum for an election timeout
    #: steps down (and stops taking writes).
    check_quorum: bool = True
    #: Before a real election, ask whether a quorum would vote: a node that
    #: rejoins after a partition then does not raise the term.
    enable_pre_vote: bool = False
    #: add_learner(blocking=True) returns once the learner is within this
    #: many entries of the leader's log (openraft's default).
    replication_lag_threshold: int = 5000
    #: When to build snapshots (default: every 5000 applied entries).
    snapshot_policy: SnapshotPolicy = field(default_factory=SnapshotPolicy)
    #: Snapshots travel to followers in chunks of at most this many bytes.
    snapshot_max_chunk_size: int = 3 * 1024 * 1024
    #: Entries kept in the log below the newest snapshot when purging, so a
    #: follower slightly behind still catches up from the log.
    max_in_snapshot_log_to_keep: int = 1000
    #: Seed of the node's random generator (election timeouts); None: random.
    seed: int | None = None
    #: Initial runtime switches (see Raft.runtime_config): feed time to the
    #: engine, send heartbeats as leader, start elections on timeout.
    enable_tick: bool = True
    enable_heartbeat: bool = True
    enable_elect: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("cluster_name", "seed"):
                continue
            if f.name == "max_clock_drift":
                if (not isinstance(v, (int, float)) or isinstance(v, bool)
                        or not 0 <= v < math.inf):
                    raise ConfigError("Config.max_clock_drift must be a finite number >= 0 "
                                      f"(a ratio of clock rates), got {v!r}")
                continue
            if f.name == "snapshot_policy":
                if not isinstance(v, SnapshotPolicy):
                    raise ConfigError("Config.snapshot_policy must be a SnapshotPolicy "
                                      "(SnapshotPolicy.logs_since_last(n) or .never())")
                continue
            if f.name == "max_in_snapshot_log_to_keep":
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise ConfigError(f"Config.{f.name} must be an int >= 0, got {v!r}")
                continue
            if f.name.startswith("enable_") or f.name == "check_quorum":
                if not isinstance(v, bool):
                    raise ConfigError(f"Config.{f.name} must be True or False, got {v!r}")
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ConfigError(f"Config.{f.name} must be a number, got {v!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"Config.{f.name} must be a finite number, got {v!r}")
            if f.name in SECONDS_FIELDS and v > MAX_SECONDS:
                raise ConfigError(
                    f"Config.{f.name} is in seconds; {v!r} s is over the {MAX_SECONDS:g} s "
                    f"limit (milliseconds? {v!r} ms is {v / 1000!r})")
            if v <= 0:
                raise ConfigError(f"Config.{f.name} must be positive, got {v!r}")
        for f in ("max_payload_entries", "max_payload_bytes", "max_inflight",
                  "max_pending_writes", "max_write_batch", "replication_lag_threshold",
                  "snapshot_max_chunk_size", "max_command_bytes"):
            if not isinstance(getattr(self, f), int):
                raise ConfigError(f"Config.{f} must be an integer, got {getattr(self, f)!r}")
        if self.election_timeout_min >= self.election_timeout_max:
            raise ConfigError(
                f"Config.election_timeout_min ({self.election_timeout_min}) must be below "
                f"election_timeout_max ({self.election_timeout_max})")
        lease_bound = self.election_timeout_min / (1 + self.max_clock_drift)
        if self.lease_drift_margin >= lease_bound:
            raise ConfigError(
                f"Config.lease_drift_margin ({self.lease_drift_margin}) must be below "
                f"election_timeout_min / (1 + max_clock_drift) ({lease_bound:.6g}): the "
                "lease is that minus this margin")
        if self.heartbeat_interval >= self.election_timeout_min:
            raise ConfigError(
                f"Config.heartbeat_interval ({self.heartbeat_interval}) must be below "
                f"election_timeout_min ({self.election_timeout_min}), or followers time "
                "out between heartbeats")
