"""Link-message codecs shared by relays and clients: chunked transfer of a signed directory."""

from __future__ import annotations

import struct

from .wire import LINK_BODY_LEN, MSG_DIRECTORY

_CHUNK_HEAD = struct.Struct("!II")  # total length, offset
CHUNK_LEN = LINK_BODY_LEN - _CHUNK_HEAD.size


class CodecError(ValueError):
    """A malformed chunk."""


def directory_messages(raw: bytes) -> list[bytes]:
    """MSG_DIRECTORY messages carrying raw; one empty message when there is no directory."""
    if not raw:
        return [bytes([MSG_DIRECTORY]) + _CHUNK_HEAD.pack(0, 0)]
    return [
        bytes([MSG_DIRECTORY])
        + _CHUNK_HEAD.pack(len(raw), offset)
        + raw[offset : offset + CHUNK_LEN]
        for offset in range(0, len(raw), CHUNK_LEN)
    ]


class ChunkAssembler:
    """Reassembles one chunked transfer; chunks may come in any order."""

    def __init__(self, max_total: int) -> None:
        self.max_total = max_total
        self._total = -1
        self._chunks: dict[int, bytes] = {}

    def add(self, body: bytes) -> bytes | None:
        """The whole transfer once complete (b"" for an empty one), else None."""
        if len(body) < _CHUNK_HEAD.size:
            raise CodecError("short chunk")
        total, offset = _CHUNK_HEAD.unpack_from(body)
        if total > self.max_total or offset % CHUNK_LEN or offset >= max(total, 1):
            raise CodecError("bad chunk header")
        if total != self._total:  # a new transfer replaces an unfinished one
            self._total, self._chunks = total, {}
        if total == 0:
            return b""
        self._chunks[offset] = body[_CHUNK_HEAD.size :][: min(CHUNK_LEN, total - offset)]
        if sum(len(c) for c in self._chunks.values()) < total:
            return None
        raw = b"".join(self._chunks[o] for o in sorted(self._chunks))
        self._total, self._chunks = -1, {}
        return raw
