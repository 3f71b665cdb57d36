"""Input to text pieces: bytes as they arrive (stdin, a file, a client's frames), in stream-json or text.

Standard library only: the service's clients import this and must start fast.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Iterator
from typing import BinaryIO

logger = logging.getLogger(__name__)

_READ_SIZE = 65536


def read_pieces(stream: BinaryIO, size: int = _READ_SIZE) -> Iterator[bytes]:
    """Yield bytes as soon as they arrive (a live pipe gives partial lines: don't wait for EOF)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # in-memory streams have no descriptor
        fd = None
    read = getattr(stream, "read1", stream.read)
    while True:
        data = os.read(fd, size) if fd is not None else read(size)
        if not data:
            return
        yield data


def iter_text(stream: BinaryIO, fmt: str = "auto", tools: bool = False) -> Iterator[str]:
    """Turn an input byte stream into the text pieces to speak, as they arrive.

    Args:
        stream: binary input (stdin or a file).
        fmt: "stream-json", "text", or "auto" (stream-json if the first non-blank line is a JSON object
            with a "type", else plain text).
        tools: speak a short summary of each tool call (stream-json only).
    """
    from .claude import StreamJsonReader, looks_like_stream_json

    pieces = read_pieces(stream)
    head = b""
    if fmt == "auto":
        # Peek until the first non-blank line is complete (or the input ends).
        for data in pieces:
            head += data
            stripped = head.lstrip()
            if b"\n" in stripped or len(stripped) > 1 << 20:
                break
        first = head.lstrip().split(b"\n", 1)[0]
        fmt = "stream-json" if looks_like_stream_json(first) else "text"
        logger.debug("input format: %s", fmt)
    if fmt == "stream-json":
        reader = StreamJsonReader(tools=tools)
        if head:
            yield from reader.feed(head)
        for data in pieces:
            yield from reader.feed(data)
        yield from reader.finish()
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    if head:
        yield decoder.decode(head)
    for data in pieces:
        text = decoder.decode(data)
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


