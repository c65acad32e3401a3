"""The RPCs a node sends to elect a leader and to hand leadership over:
RequestVote, whose answer steps the engine, and TransferLeader, whose
answer nobody waits for (a transfer that fails times out in the engine,
and leadership resumes).

Plain Python: a few per election. The node (RaftCore) runs each in a task
of its own when its engine emits SendVote or SendTransfer.
"""
import asyncio
from typing import Any


async def send_vote(core: Any, target: int, req) -> None:
    """Asks `target` for its vote; its answer steps `core`'s engine.

    Given up after election_timeout_max: by then the campaign is over and
    a later answer would be ignored; the request would only make its voter
    adopt a term long passed."""
    try:
        resp = await asyncio.wait_for(core.peer_client(target).vote(req),
                                      core.config.election_timeout_max)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        core.log.debug("vote request to %s failed: %s", target, exc)
        core.count_rpc_error(target, "vote")
        return
    if core.stopped or not core.plausible_answer(target, resp.term):
        return
    core.engine.handle_vote_response(target, req, resp, core.loop.time())
    core.run_engine_output()


async def send_transfer(core: Any, target: int, req) -> None:
    """Asks `target` to take over the leadership of `core`'s node."""
    try:
        await core.peer_client(target).transfer_leader(req)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # The transfer times out in the engine and leadership resumes.
        core.log.info("handing leadership to %s failed: %s", target, exc)
        core.count_rpc_error(target, "transfer_leader")
