from typing import Any, Callable, Optional

from raftcore.membership import Membership
from raftcore.types import Entry, LogId, Vote

MSG_APPEND_ENTRIES: int
MSG_APPEND_ENTRIES_RESPONSE: int
MSG_VOTE: int
MSG_VOTE_RESPONSE: int
MSG_TRANSFER_LEADER: int

MAX_TERM: int

def encode_membership(m: Membership) -> list: ...
def decode_membership(obj: Any) -> Membership: ...
def encode_vote(v: Vote) -> list: ...
def decode_vote(obj: Any) -> Vote: ...
def encode_log_id(log_id: Optional[LogId]) -> Optional[list]: ...
def decode_log_id(obj: Any) -> Optional[LogId]: ...
#: Wire and log kind of a normal entry sent as its encoding (Entry.encoded).
ENCODED_NORMAL: int
def encode_entries(entries: list[Entry]) -> list: ...
def decode_entries(flat: Any) -> list[Entry]: ...
def encode_message(msg: Any) -> list: ...
def decode_message(obj: Any) -> Any: ...
MSG_INSTALL_SNAPSHOT: int
MSG_INSTALL_SNAPSHOT_RESPONSE: int

def encode_snapshot_meta(meta: Any) -> list: ...
def decode_snapshot_meta(obj: Any) -> Any: ...

#: Nesting deeper than this is refused by pack_plain.
PLAIN_MAX_DEPTH: int

class PlainValueError(ValueError):
    """A value given to pack_plain holds something other than exact None,
    bool, int (64-bit), float, str, bytes, list or dict."""

def pack_plain(value: Any) -> bytes:
    """msgpack.packb(value, use_bin_type=True), byte for byte, of a value
    built of exact plain types only (PlainValueError otherwise)."""
def pack_pairs(d: dict, pack: Callable[[Any], bytes]) -> bytes:
    """msgpack's encoding of list(d.items()), byte for byte: plain keys and
    values written directly, any other through `pack`."""
