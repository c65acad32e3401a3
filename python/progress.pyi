class Progress:
    node_id: int
    matched: int
    next_index: int
    state: int
    probe_sent: bool
    inflight_count: int
    def __init__(self, node_id: int, next_index: int, inflight_cap: int) -> None: ...
