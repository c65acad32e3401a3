"""LogWatch: waits for log records of the TCP transport in tests (shared by
test_tcp and test_tcp_auth; importable by name through conftest.py)."""
import asyncio
import logging

LOGGER = "raftcore.network.tcp"
GUARD = 10.0        # failure guard for a record that should come promptly


class LogWatch:
    """Collects WARNING+ records of the transport's logger (or `level`+
    records of `logger` and its children); `await wait(text)` returns the
    first record containing `text` (already seen or to come)."""

    def __init__(self, logger: str = LOGGER, level: int = logging.WARNING) -> None:
        self.records: list[logging.LogRecord] = []
        self._waiters: list[tuple[str, asyncio.Future]] = []
        self._logger = logger
        self._min_level = level
        self.handler = logging.Handler(level)
        self.handler.emit = self._emit

    def _emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        for w in list(self._waiters):
            if w[0] in record.getMessage() and not w[1].done():
                w[1].set_result(record)
                self._waiters.remove(w)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    def __enter__(self) -> "LogWatch":
        logger = logging.getLogger(self._logger)
        self._level = logger.level
        if logger.getEffectiveLevel() > self._min_level:
            logger.setLevel(self._min_level)
        logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger(self._logger)
        logger.removeHandler(self.handler)
        logger.setLevel(self._level)

    async def wait(self, text: str) -> logging.LogRecord:
        for r in self.records:
            if text in r.getMessage():
                return r
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((text, fut))
        try:
            return await asyncio.wait_for(fut, GUARD)
        except asyncio.TimeoutError:
            raise AssertionError(f"no log record containing {text!r}; got "
                                 f"{self.messages()}") from None
