"""`raftcore kv ...`: the command line of the node program."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Optional, Sequence

from raftcore.config import Config, SnapshotPolicy
from raftcore.errors import ConfigError, StorageError
from raftcore.kv.service import run_node
from raftcore.kv.tls import add_tls_arguments, check_tls_arguments
from raftcore.network.tcp import DEFAULT_MAX_FRAME_SIZE, parse_address

log = logging.getLogger("raftcore.kv")

#: The smallest --max-frame-size (a write of a few KiB must fit).
_MIN_FRAME = 64 * 1024


def _parse_peers(text: str) -> dict[int, str]:
    """--peers ID=HOST:PORT,...: id -> address; ArgumentTypeError naming the
    bad part (an item, an id, a host, a port, a repeated id or address)."""
    peers: dict[int, str] = {}
    seen: dict[tuple[str, int], int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        nid, addr, (host, port) = _parse_peer(item)
        if nid in peers:
            raise argparse.ArgumentTypeError(f"node {nid} is listed twice")
        other = seen.setdefault((host.lower(), port), nid)
        if other != nid:
            raise argparse.ArgumentTypeError(
                f"nodes {other} and {nid} have the same address {addr}; each node "
                "needs its own HOST:PORT")
        peers[nid] = addr
    if not peers:
        raise argparse.ArgumentTypeError("no ID=HOST:PORT given")
    return peers


def _parse_peer(item: str) -> tuple[int, str, tuple[str, int]]:
    """(id, address, (host, port)) of one ID=HOST:PORT of --peers."""
    node_id, sep, addr = item.partition("=")
    node_id, addr = node_id.strip(), addr.strip()
    if not sep:
        raise argparse.ArgumentTypeError(
            f"{item!r} is not ID=HOST:PORT (no '='; e.g. 1=127.0.0.1:7001)")
    if not (node_id.isascii() and node_id.isdigit()):
        raise argparse.ArgumentTypeError(
            f"{item!r} is not ID=HOST:PORT: the id {node_id!r} is not an integer >= 0")
    nid = int(node_id)
    try:
        host_port = parse_address(addr)
    except ValueError as exc:
        hint = ("; separate the nodes with ',' (1=HOST:PORT,2=HOST:PORT)"
                if any(c in addr for c in ";= ") else "")
        raise argparse.ArgumentTypeError(f"node {nid}: {exc}{hint}") from None
    return nid, addr, host_port


def address_argument(text: str) -> str:
    """An argparse type: HOST:PORT, or an error naming what is wrong."""
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _timeouts(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected MIN,MAX in seconds (e.g. 0.15,0.3), got {text!r}") from None
    return lo, hi


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raftcore kv",
        description="Run one node of a replicated key-value store: a durable log in "
                    "--dir, Raft over TCP, and a client protocol on the same port "
                    "(use raftcore.kv.Client).",
        epilog="Example: raftcore kv --id 1 --dir ./n1 --peers "
               "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --init")
    p.add_argument("--id", type=_non_negative_int, required=True, help="this node's id")
    p.add_argument("--dir", required=True, help="data directory (created if missing)")
    p.add_argument("--peers", type=_parse_peers, default=None, metavar="ID=HOST:PORT,...",
                   help="the cluster: ID=HOST:PORT,... (this node included); needed with "
                        "--init or without --listen")
    p.add_argument("--listen", type=address_argument, default=None, metavar="HOST:PORT",
                   help="HOST:PORT to listen on (default: this node's address in --peers)")
    p.add_argument("--init", action="store_true",
                   help="form the cluster from --peers (on one node; does nothing on a node "
                        "that is already initialized)")
    p.add_argument("--join", type=address_argument, default=None, metavar="HOST:PORT",
                   help="join the cluster that the node at HOST:PORT belongs to: this node "
                        "(new and empty, at --listen) asks to be added as a learner, then "
                        "promoted to voter once it has caught up; nothing happens when it is "
                        "a voter already (a restart may keep the flag)")
    p.add_argument("--secret-file", default=None, metavar="FILE",
                   help="the cluster's shared secret (the file's contents, surrounding "
                        "whitespace removed): peers and clients must prove they hold it")
    add_tls_arguments(p, node=True)
    p.add_argument("--insecure-admin", action="store_true",
                   help="take membership and leadership changes from any client (by default "
                        "only from clients that proved the --secret-file or presented a "
                        "certificate checked against --tls-ca)")
    p.add_argument("--heartbeat", type=float, default=None, metavar="SECONDS",
                   help="leader heartbeat interval (default 0.05)")
    p.add_argument("--election-timeout", type=_timeouts, default=None, metavar="MIN,MAX",
                   help="election timeout range in seconds (default 0.15,0.3)")
    p.add_argument("--max-clock-drift", type=float, default=None, metavar="RATIO",
                   help="bound on clock rate differences between nodes that lease reads "
                        "rest on: no clock runs more than 1+RATIO times as fast as another "
                        "(default 0.5)")
    p.add_argument("--snapshot-every", type=_non_negative_int, default=5000, metavar="N",
                   help="build a snapshot every N applied entries; 0: never (default 5000)")
    p.add_argument("--keep-logs", type=_non_negative_int, default=1000, metavar="N",
                   help="entries kept in the log below the newest snapshot (default 1000)")
    p.add_argument("--no-pre-vote", action="store_true",
                   help="campaign without asking first whether a quorum would vote (by "
                        "default a node that rejoins cannot raise the term and depose a "
                        "leader that a majority still follows)")
    p.add_argument("--no-check-quorum", action="store_true",
                   help="a leader that hears from no quorum for an election timeout keeps "
                        "leading (by default it steps down)")
    p.add_argument("--max-command-bytes", type=_non_negative_int, default=None, metavar="N",
                   help="largest write accepted, in encoded bytes (default 1572864, 1.5 MiB)")
    p.add_argument("--max-frame-size", type=_non_negative_int, default=DEFAULT_MAX_FRAME_SIZE,
                   metavar="BYTES",
                   help="largest frame sent or accepted on the node's port (default "
                        f"{DEFAULT_MAX_FRAME_SIZE}); appends, snapshot chunks and writes are "
                        "kept below it")
    p.add_argument("--http", type=address_argument, default=None, metavar="HOST:PORT",
                   help="serve /metrics (Prometheus), /health, /status, /cluster, "
                        "/openapi.json and a live status page (/) over HTTP on HOST:PORT "
                        "(read-only; needs the extra: pip install 'raftcore[http]')")
    p.add_argument("--redis", type=address_argument, default=None, metavar="HOST:PORT",
                   help="also serve the Redis protocol (RESP2/RESP3) on HOST:PORT; a "
                        "follower forwards to the leader")
    p.add_argument("--redis-reads", choices=("linearizable", "lease", "stale"),
                   default="linearizable",
                   help="Redis reads: confirmed by a quorum (default), by the leader "
                        "lease, or from this node's state as it is")
    p.add_argument("--redis-password-file", default=None, metavar="FILE",
                   help="Redis clients must AUTH with this password (the file's contents, "
                        "surrounding whitespace removed), as Redis's requirepass")
    p.add_argument("--redis-max-bulk", type=_non_negative_int, default=None, metavar="N",
                   help="largest Redis bulk string accepted, in bytes (default 512 MB, "
                        "capped by --max-command-bytes)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO")
    return p


def read_secret_file(path: Optional[str], flag: str) -> Optional[bytes]:
    """The contents of the file given with `flag` (a secret or a password),
    surrounding whitespace removed; None without a file; ValueError naming
    the flag if it cannot be read or is empty."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise ValueError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ValueError(f"{flag}: {path} is empty")
    return secret


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parses and checks the command line; argparse errors (exit 2) for bad input."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.peers is not None and args.id not in args.peers:
        p.error(f"--id {args.id} is not one of the nodes in --peers "
                f"({', '.join(str(i) for i in sorted(args.peers))})")
    if args.init and args.peers is None:
        p.error("--init needs --peers: the members of the new cluster")
    if args.init and args.join is not None:
        p.error("--init forms a new cluster, --join joins an existing one: give one of them")
    if args.listen is None:
        if args.peers is None:
            p.error("give --listen HOST:PORT, or --peers with this node's address")
        args.listen = args.peers[args.id]
    if args.join is not None and parse_address(args.listen)[0] in ("0.0.0.0", "::"):
        p.error(f"--join registers --listen as this node's address, which the others "
                f"connect to: give an address they can reach, not {args.listen}")
    if args.http is not None:
        from raftcore.kv.node_metrics import MissingExtra, require_prometheus_client
        try:
            require_prometheus_client()
        except MissingExtra as exc:
            p.error(str(exc))
    try:
        args.secret = read_secret_file(args.secret_file, "--secret-file")
        args.redis_password = read_secret_file(args.redis_password_file,
                                               "--redis-password-file")
    except ValueError as exc:
        p.error(str(exc))
    check_tls_arguments(p, args, node=True)
    kw: dict[str, Any] = {
        "snapshot_policy": (SnapshotPolicy.logs_since_last(args.snapshot_every)
                            if args.snapshot_every else SnapshotPolicy.never()),
        "max_in_snapshot_log_to_keep": args.keep_logs,
        "enable_pre_vote": not args.no_pre_vote,
        "check_quorum": not args.no_check_quorum,
    }
    if args.heartbeat is not None:
        kw["heartbeat_interval"] = args.heartbeat
    if args.election_timeout is not None:
        kw["election_timeout_min"], kw["election_timeout_max"] = args.election_timeout
    if args.max_clock_drift is not None:
        kw["max_clock_drift"] = args.max_clock_drift
    if args.max_command_bytes is not None:
        kw["max_command_bytes"] = args.max_command_bytes
    _fit_frame_limit(p, args.max_frame_size, kw)
    try:
        args.config = Config(**kw)
    except ConfigError as exc:
        p.error(str(exc))
    return args


def _fit_frame_limit(p: argparse.ArgumentParser, frame: int, kw: dict) -> None:
    """Keeps what the node sends in one frame (a batch of entries, a snapshot
    chunk, a write) below --max-frame-size, leaving room for the rest of the
    message."""
    if frame < _MIN_FRAME:
        p.error(f"--max-frame-size must be at least {_MIN_FRAME} bytes, got {frame}")
    room = frame // 2
    defaults = Config()
    for name in ("max_payload_bytes", "snapshot_max_chunk_size", "max_command_bytes"):
        given = kw.get(name, getattr(defaults, name))
        if given > room:
            if name in kw:
                p.error(f"--max-command-bytes {given} does not fit in --max-frame-size "
                        f"{frame}: give at most {room}")
            kw[name] = room


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`raftcore kv ...`: runs one node until Ctrl-C or SIGTERM. Returns the
    exit status: 0 after a clean shutdown, 1 if the node could not start
    or stopped on an error, 2 for bad arguments."""
    import uvloop

    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:          # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return uvloop.run(run_node(args))
    except (StorageError, OSError) as exc:
        log.error("node %s cannot run: %s", args.id, exc)
        return 1
