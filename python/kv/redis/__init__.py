"""The Redis protocol of `raftcore kv` (`--redis HOST:PORT`): every node
serves RESP2/RESP3, so redis-cli, redis-py or redis-benchmark drive a
strongly consistent, durable cluster.

Modules: resp (the request parser and reply encoder), commands (the command
table, arity and door checks), keyspace (each command's semantics over the
state machine's map), apply (a Redis log entry, and reads), cluster (where
commands run: the leader's Raft, forwarded by followers under a kv
session), server (connections, pipelining, transactions), node (the
pieces a kv node starts).
"""
from raftcore.kv.redis.node import RedisNode
from raftcore.kv.redis.server import RedisServer

__all__ = ["RedisNode", "RedisServer"]
