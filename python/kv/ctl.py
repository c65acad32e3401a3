"""`raftcore ctl`: a `raftcore kv` cluster from the shell (as etcdctl).

    raftcore ctl --endpoints 127.0.0.1:7001,127.0.0.1:7002 status
    raftcore ctl health
    raftcore ctl members list | add ID HOST:PORT [--learner] | remove ID
    raftcore ctl leader transfer ID
    raftcore ctl get KEY [--stale] | set KEY VALUE | del KEY | cas KEY OLD NEW
    raftcore ctl snapshot save FILE | restore FILE --dir D --id N --listen HOST:PORT

Plain text by default, `--json` for scripts. Exit status 0 on success, 1
with a one-line error on stderr otherwise (2 for bad arguments). Every
command is a method of raftcore.kv.Client; this module only parses and
prints.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, Callable, Optional, Sequence

from raftcore.errors import RaftError, Timeout
from raftcore.kv.backup import add_snapshot_commands
from raftcore.kv.cli import address_argument, read_secret_file
from raftcore.kv.client import Client
from raftcore.kv.tls import add_tls_arguments, check_tls_arguments

#: Seconds `status` waits for each node at most: a node down is reported,
#: not waited for.
STATUS_TIMEOUT = 3.0
#: What a command returns: (data for --json, text for a person, exit status).
Result = tuple[Any, str, int]


class CtlError(Exception):
    """A command that failed: its message is the one line printed."""


# ------------------------------------------------------------ commands

async def cmd_status(client: Client, args: argparse.Namespace) -> Result:
    """Every node of the membership: the membership comes from any endpoint
    (and the leader's, once known), then each node is asked itself."""
    first = await client.status()
    addrs = dict((i, a) for i, a in first["members"])
    if not addrs:
        addrs = {first["id"]: first.get("address") or client.addresses[0]}
    rows = await _statuses(client, addrs)
    leader = next((s for s in rows.values() if s.get("state") == "LEADER"), None)
    if leader is not None and any(i not in rows for i, _ in leader["members"]):
        addrs.update((i, a) for i, a in leader["members"])
        rows = await _statuses(client, addrs)
    nodes = [rows[i] for i in sorted(rows)]
    if leader is not None:
        lag = {r["id"]: r["lag"] for r in leader["replication"]}
        for n in nodes:
            n["lag"] = lag.get(n["id"]) if n["reachable"] else None
    unreachable = [n["id"] for n in nodes if not n["reachable"]]
    data = {"cluster_id": first.get("cluster_id"),
            "leader": leader["id"] if leader is not None else None, "nodes": nodes}
    return data, _status_table(data), 1 if unreachable else 0


async def _statuses(client: Client, addrs: dict) -> dict:
    async def one(i: int, addr: str) -> dict:
        try:
            st = await client.status(node=addr, timeout=min(client.timeout, STATUS_TIMEOUT))
        except (RaftError, OSError) as exc:
            return {"id": i, "address": addr, "reachable": False, "error": str(exc)}
        return {**st, "address": st.get("address") or addr, "reachable": True}
    got = await asyncio.gather(*(one(i, a) for i, a in addrs.items()))
    return {r["id"]: r for r in got}


def _status_table(data: dict) -> str:
    head = ["ID", "ADDRESS", "ROLE", "TERM", "LEADER", "LAST LOG", "COMMITTED", "APPLIED",
            "SNAPSHOT", "LAG", "UPTIME"]
    rows = []
    notes = []
    for n in data["nodes"]:
        if not n["reachable"]:
            rows.append([n["id"], n["address"], "UNREACHABLE"] + [""] * (len(head) - 3))
            notes.append(f"node {n['id']} ({n['address']}): {n['error']}")
            continue
        role = n["state"] + (" (stale)" if n.get("identity_stale") else "")
        rows.append([n["id"], n["address"], role, n["term"], _dash(n["leader"]),
                     n["last_log_index"], n["committed"], n["applied"], _dash(n["snapshot"]),
                     _dash(n.get("lag")), _duration(n["uptime"])])
    lines = _table(head, rows)
    lines.append(f"cluster {data['cluster_id']}, leader "
                 f"{_dash(data['leader'])}; LAG: entries behind the leader's log")
    return "\n".join(lines + notes)


async def cmd_health(client: Client, args: argparse.Namespace) -> Result:
    """`health`: a leader confirmed by a quorum, or exit status 1."""
    try:
        h = await client.health()
    except Timeout as exc:
        raise CtlError(f"unhealthy: no leader confirmed by a quorum within {args.timeout:g}s "
                       f"({exc})") from None
    return ({"healthy": True, **h},
            f"healthy: leader {h['leader']}, term {h['term']}, read index {h['read_index']}", 0)


async def cmd_members_list(client: Client, args: argparse.Namespace) -> Result:
    """`members list`: the leader's membership."""
    m = await client.members()
    rows = [[n["id"], n["address"], "voter" if n["voter"] else "learner",
             "leader" if n["id"] == m["leader"] else "",
             "storage replaced: remove and add it again" if n["stale"] else ""]
            for n in m["members"]]
    text = _table(["ID", "ADDRESS", "ROLE", "LEADER", "NOTE"], rows)
    if m["joint"]:
        text.append("a membership change is half-way (joint configuration)")
    return m, "\n".join(text), 0


async def cmd_members_add(client: Client, args: argparse.Namespace) -> Result:
    """`members add ID HOST:PORT [--learner]`."""
    r = await client.add_member(args.id, args.address, learner=args.learner)
    role = "voter" if r["voter"] else "learner"
    what = "added" if r["changed"] else "is already a member"
    return r, f"node {args.id} at {args.address} {what} ({role})", 0


async def cmd_members_remove(client: Client, args: argparse.Namespace) -> Result:
    """`members remove ID`: exit status 1 if it was not a member."""
    if not await client.remove_member(args.id):
        raise CtlError(f"node {args.id} is not a member of the cluster")
    return {"id": args.id, "removed": True}, f"node {args.id} removed", 0


async def cmd_leader_transfer(client: Client, args: argparse.Namespace) -> Result:
    """`leader transfer ID`."""
    changed = await client.transfer_leader(args.id)
    text = f"node {args.id} is the leader" + ("" if changed else " already")
    return {"leader": args.id, "changed": changed}, text, 0


_ABSENT = object()


async def cmd_get(client: Client, args: argparse.Namespace) -> Result:
    """`get KEY [--stale]`: exit status 1 if the key is absent."""
    value = await client.get(args.key, _ABSENT, stale=args.stale)
    if value is _ABSENT:
        raise CtlError(f"key {args.key!r} not found")
    return {"key": args.key, "value": _jsonable(value)}, _show(value), 0


async def cmd_set(client: Client, args: argparse.Namespace) -> Result:
    """`set KEY VALUE`."""
    prev = await client.set(args.key, args.value)
    return {"key": args.key, "previous": _jsonable(prev)}, "OK", 0


async def cmd_del(client: Client, args: argparse.Namespace) -> Result:
    """`del KEY`: prints how many keys it deleted (0 or 1)."""
    prev = await client.delete(args.key)
    deleted = 0 if prev is None else 1
    return {"key": args.key, "deleted": deleted, "previous": _jsonable(prev)}, str(deleted), 0


async def cmd_cas(client: Client, args: argparse.Namespace) -> Result:
    """`cas KEY OLD NEW`: exit status 1 if KEY was not OLD."""
    swapped, current = await client.cas(args.key, args.old, args.new)
    if not swapped:
        now = "absent" if current is None else _show(current)
        raise CtlError(f"key {args.key!r} was not {args.old!r}: it is {now}; nothing changed")
    return {"key": args.key, "swapped": True, "value": _jsonable(current)}, "OK", 0


# ---------------------------------------------------------- formatting

def _table(head: list, rows: list) -> list[str]:
    cells = [[str(c) for c in r] for r in [head] + rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m")) if v]
    return "".join(parts) + f"{s}s"


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(_jsonable(value))


def _jsonable(value: Any) -> Any:
    """A stored value as JSON can carry it (bytes as text, with a \\x
    escape per byte that is not printable ASCII)."""
    if isinstance(value, bytes):
        return value.decode("ascii", "backslashreplace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    return value


# ------------------------------------------------------- command line

def _node_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"a node id is an integer >= 0, got {text!r}")
    return int(text)


def _endpoints(text: str) -> list[str]:
    addrs = [address_argument(a.strip()) for a in text.split(",") if a.strip()]
    if not addrs:
        raise argparse.ArgumentTypeError("no HOST:PORT given")
    return addrs


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return v


def _command(sub: Any, name: str, run: Callable, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(run=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raftcore ctl", description="Operate a raftcore kv cluster: status, health, "
        "membership, leadership, keys.",
        epilog="Example: raftcore ctl --endpoints 127.0.0.1:7001 members add 4 "
               "127.0.0.1:7004")
    p.add_argument("--endpoints", type=_endpoints, default=["127.0.0.1:7001"],
                   metavar="HOST:PORT,...", help="nodes to ask, any of the cluster "
                                                 "(default 127.0.0.1:7001)")
    p.add_argument("--secret-file", default=None, metavar="FILE",
                   help="the cluster's shared secret (the nodes' --secret-file)")
    add_tls_arguments(p, node=False)
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    p.add_argument("--timeout", type=_seconds, default=10.0, metavar="S",
                   help="seconds a command may take, retries included (default 10; members "
                        "add waits this long for the new node to catch up)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(sub, "status", cmd_status, "every node: role, term, leader, indexes, lag, uptime")
    _command(sub, "health", cmd_health,
             "exit 0 if a leader is known and a linearizable read succeeds")
    members = sub.add_parser("members", help="list, add or remove members").add_subparsers(
        dest="members_command", required=True, metavar="list|add|remove")
    _command(members, "list", cmd_members_list, "the members, as the leader has them")
    add = _command(members, "add", cmd_members_add,
                   "add a running node: as a learner, then, once it has caught up, a voter")
    add.add_argument("id", type=_node_id, metavar="ID")
    add.add_argument("address", type=address_argument, metavar="HOST:PORT")
    add.add_argument("--learner", action="store_true", help="leave it a learner")
    _command(members, "remove", cmd_members_remove,
             "remove a voter or learner").add_argument("id", type=_node_id, metavar="ID")
    leader = sub.add_parser("leader", help="leadership").add_subparsers(
        dest="leader_command", required=True, metavar="transfer")
    _command(leader, "transfer", cmd_leader_transfer,
             "hand leadership to a voter").add_argument("id", type=_node_id, metavar="ID")
    get = _command(sub, "get", cmd_get, "a key's value (linearizable unless --stale)")
    get.add_argument("key", metavar="KEY")
    get.add_argument("--stale", action="store_true",
                     help="read the first endpoint's state, which may lag behind")
    put = _command(sub, "set", cmd_set, "set a key to a value (a string)")
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE")
    _command(sub, "del", cmd_del, "delete a key; prints 1 if it existed, else 0").add_argument(
        "key", metavar="KEY")
    cas = _command(sub, "cas", cmd_cas, "set KEY to NEW if its value is OLD")
    for name in ("key", "old", "new"):
        cas.add_argument(name, metavar=name.upper())
    add_snapshot_commands(sub.add_parser("snapshot", help="save or restore a snapshot")
                          .add_subparsers(dest="snapshot_command", required=True,
                                          metavar="save|restore"))
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parses and checks the command line; argparse errors (exit 2) for bad input."""
    p = build_parser()
    args = p.parse_args(argv)
    try:
        args.secret = read_secret_file(args.secret_file, "--secret-file")
    except ValueError as exc:
        p.error(str(exc))
    check_tls_arguments(p, args, node=False)
    return args


async def run(args: argparse.Namespace) -> Result:
    """Runs the parsed command against the cluster."""
    client = Client(args.endpoints, timeout=args.timeout,
                    attempt_timeout=min(args.timeout, 2.0), secret=args.secret,
                    ssl=args.client_ssl)
    try:
        return await args.run(client, args)
    finally:
        await client.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`raftcore ctl ...`; returns the exit status."""
    import uvloop

    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:          # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        data, text, status = uvloop.run(run(args))
    except (CtlError, RaftError, OSError, ValueError) as exc:
        print(f"raftcore ctl: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else text)
    return status
