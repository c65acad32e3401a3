"""What a node logs as its role, term and leader change: becoming leader,
starting an election, stepping down, following a new leader (INFO), and
any other term change (DEBUG).

Plain Python: the node (RaftCore) compares (state, term, leader) with what
it logged last after each round, as C fields, and calls log_transition only
when they differ.
"""
import logging
from typing import Any

from raftcore.engine import CANDIDATE, LEADER, SHUTDOWN


def log_transition(log: logging.Logger, node_id: Any, old: tuple, new: tuple) -> None:
    """Logs the move of node `node_id` from `old` to `new`, each a
    (state, term, leader) triple."""
    state, term, leader = new
    if state == LEADER and old[0] != LEADER:
        log.info("node %s became leader in term %s", node_id, term)
    elif state == CANDIDATE and (old[0] != CANDIDATE or old[1] != term):
        log.info("node %s started an election for term %s", node_id, term)
    elif old[0] == LEADER and state != LEADER and state != SHUTDOWN:
        log.info("node %s stepped down in term %s", node_id, term)
    elif leader != old[2] and leader is not None:
        log.info("node %s follows leader %s in term %s", node_id, leader, term)
    elif term != old[1]:
        log.debug("node %s moved to term %s", node_id, term)
