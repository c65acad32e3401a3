# Stub of the compiled python/network/reply.pyx.
from typing import Any, Callable, Optional

class ReplyCallback:
    """A future-like slot whose value goes to reply(value, None), or whose
    error to reply(None, error), once and synchronously when it is set."""
    reply: Optional[Callable[[Any, Optional[BaseException]], None]]
    def __init__(self, reply: Optional[Callable[[Any, Optional[BaseException]], None]]) -> None: ...
    def done(self) -> bool: ...
    def set_result(self, value: Any) -> None: ...
    def set_exception(self, exc: BaseException) -> None: ...

def hand_over(nowait: Callable[[Any, Any], bool], req: Any,
              reply: Callable[[Any, Optional[BaseException]], None], owner: Any) -> bool:
    """Calls nowait(req, reply) and holds it to the contract: False if it
    declined; True if it took the request or failed (reply got the error)."""
