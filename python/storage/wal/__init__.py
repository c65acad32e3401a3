"""The write-ahead log behind FileLogStore (raftcore.storage.file), split by
concern: records (on-disk format), oslayer (file system calls, atomic file
replacement), index (the in-memory log), recovery (reading it back), writer
(group commit), threads (where the writes run), iopath (the platform's OS
calls and their portable fallbacks)."""
