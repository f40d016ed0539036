"""The encrypted SQLite store-and-forward buffer. See ``docs/buffer.md``."""

from agent.buffer.aio import AsyncBuffer
from agent.buffer.keys import CredentialKeySource, FileKeySource, KeySource
from agent.buffer.results import RowClaim
from agent.buffer.store import AppendResult, Buffer, BufferConfig, BufferStats, Claim

__all__ = [
    "AppendResult",
    "AsyncBuffer",
    "Buffer",
    "BufferConfig",
    "BufferStats",
    "Claim",
    "CredentialKeySource",
    "FileKeySource",
    "KeySource",
    "RowClaim",
]
