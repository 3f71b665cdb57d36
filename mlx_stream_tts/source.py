"""Input to text pieces: bytes as they arrive (stdin, a file, a client's frames), in stream-json or text.

``iter_text(fmt="auto")`` tells the two formats apart while streaming, from the first few lines: a
stream-json input that starts mid-line (``tail -c``, a pipe joined late, a cut capture) begins with the
tail of a JSON line, which is skipped, and the first line that parses as a stream-json object decides.
Input that looks binary is refused (:class:`BinaryInput`) unless the format is ``"text"``.

Standard library only: the service's clients import this and must start fast.
"""

from __future__ import annotations

import codecs
import logging
import os
import select
from collections.abc import Iterator
from typing import BinaryIO

logger = logging.getLogger(__name__)

__all__ = ["BinaryInput", "binary_reason", "detect_format", "iter_text", "read_pieces"]

_READ_SIZE = 65536

#: Auto-detection skips at most this many leading lines that look like the tail of a cut JSON line.
DETECT_LINES = 4
#: ...and reads at most this much before deciding (a first line this long without a newline).
DETECT_BYTES = 1 << 20
#: The binary check looks at this much of the input's start.
BINARY_SAMPLE = 4096
#: Share of that sample (in characters) that may be invalid UTF-8 or control characters.
BINARY_SHARE = 0.10

# A cut JSON line's tail ends with the object's closing brace; one longer than this also holds a key.
_SHORT_TAIL = 64
# Controls that text legitimately holds (terminal output carries ESC and backspace).
_TEXT_CONTROLS = frozenset("\t\n\r\f\v\b\x1b")


class BinaryInput(ValueError):
    """The input does not look like text: NUL bytes, or mostly invalid UTF-8 or control bytes.

    ``str(err)`` reads "input looks binary (<why>)"; ``err.reason`` is the part in parentheses.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"input looks binary ({reason})")
        self.reason = reason


def read_pieces(stream: BinaryIO, size: int = _READ_SIZE) -> Iterator[bytes]:
    """Yield bytes as soon as they arrive (a live pipe gives partial lines: don't wait for EOF)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # in-memory streams have no descriptor
        fd = None
    read = getattr(stream, "read1", stream.read)
    while True:
        if fd is not None:
            # Wait in short slices, not in one blocking read: a signal (Ctrl-C) delivered to another
            # thread of the process (MLX's, OpenBLAS's) does not interrupt a read in this one, and its
            # Python handler runs only once this thread runs Python code again.
            while not select.select([fd], [], [], 0.05)[0]:
                pass
        data = os.read(fd, size) if fd is not None else read(size)
        if not data:
            return
        yield data


def binary_reason(sample: bytes, final: bool = True) -> str | None:
    """Why ``sample`` (the start of an input) is not text, or None when it may be text.

    Args:
        sample: the first bytes of the input (up to :data:`BINARY_SAMPLE` are looked at).
        final: the input ends here (a character cut at the end of a longer input is not held
            against it).

    Returns:
        A short reason such as ``"NUL bytes in its first 4 KB"``, or None.
    """
    sample = sample[:BINARY_SAMPLE]
    where = f"its first {BINARY_SAMPLE // 1024} KB" if len(sample) >= BINARY_SAMPLE else f"its {len(sample)} bytes"
    if b"\0" in sample:
        return f"NUL bytes in {where}"
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(sample, final=final and len(sample) < BINARY_SAMPLE)
    if not text:
        return None
    # A literal U+FFFD in the input is text; only the ones the decoder made count.
    bad = text.count("\ufffd") - sample.count("\ufffd".encode())
    bad += sum(1 for ch in text if (ch < " " and ch not in _TEXT_CONTROLS) or ch == "\x7f")
    # A cut at the start of the input leaves at most 3 stray bytes of a character: not binary.
    if bad > 3 and bad > BINARY_SHARE * len(text):
        return f"{100 * bad // len(text)}% of {where} is not UTF-8 text"
    return None


class _BinaryCheck:
    """Watches the first :data:`BINARY_SAMPLE` bytes as they arrive; raises BinaryInput once sure."""

    def __init__(self) -> None:
        self.sample = b""

    @property
    def done(self) -> bool:
        return len(self.sample) >= BINARY_SAMPLE

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self.sample += data[: BINARY_SAMPLE - len(self.sample)]
        # NUL bytes decide at once; the share only on a full sample (or at the end: finish()),
        # so that the first characters of a slow pipe do not decide alone.
        if b"\0" in self.sample or self.done:
            self._check(final=False)

    def finish(self) -> None:
        if not self.done:
            self._check(final=True)

    def _check(self, final: bool) -> None:
        reason = binary_reason(self.sample, final=final)
        if reason:
            raise BinaryInput(reason)


def _json_tail(line: bytes) -> bool:
    """True if ``line`` (stripped, not parseable) may be the end of a JSON line cut at its start."""
    return line.endswith(b"}") and (len(line) <= _SHORT_TAIL or b'":' in line)


def detect_format(head: bytes, final: bool = False) -> tuple[str | None, int]:
    """Decide between stream-json and text from the start of an input.

    Blank lines are passed over. The first complete line that parses as a stream-json object (a
    JSON object with a string ``type``) means stream-json; up to :data:`DETECT_LINES` lines before it
    may be tails of a cut JSON line (ending in ``}``), which the reader must skip. Any other line means
    text. Past :data:`DETECT_BYTES` without a decision, an unfinished line holding ``"type":`` means
    stream-json (its rest is skipped), else text.

    Args:
        head: the input's bytes so far.
        final: the input ends with ``head`` (its last line counts even without a newline).

    Returns:
        ``(fmt, start)``: ``fmt`` is ``"stream-json"``, ``"text"``, or None while more input is
        needed; for stream-json, ``start`` is the offset where the reader should begin (``-1``: after
        the next newline still to come). ``start`` is 0 for text.
    """
    from .claude import looks_like_stream_json

    tails = 0
    pos = 0
    while True:
        end = head.find(b"\n", pos)
        if end < 0 and not final:
            break
        line = head[pos:] if end < 0 else head[pos:end]
        stripped = line.strip()
        if stripped:
            if looks_like_stream_json(stripped):
                if pos:
                    logger.debug("input format: stream-json; skipped the cut start %r", head[: min(pos, 80)])
                return "stream-json", pos
            if not _json_tail(stripped.removeprefix(b"\xef\xbb\xbf")) or tails >= DETECT_LINES:
                return "text", 0
            tails += 1
        if end < 0:  # the input ended with only tails of JSON lines: nothing in it to say
            return ("stream-json", len(head)) if tails else ("text", 0)
        pos = end + 1
    if len(head) >= DETECT_BYTES:
        if b'"type":' in head[pos:]:
            return "stream-json", -1
        return "text", 0
    return None, 0


def iter_text(stream: BinaryIO, fmt: str = "auto", tools: bool = False) -> Iterator[str]:
    """Turn an input byte stream into the text pieces to speak, as they arrive.

    Args:
        stream: binary input (stdin or a file).
        fmt: "stream-json", "text", or "auto" (see :func:`detect_format`: stream-json if one of the
            first lines is a JSON object with a "type", the tail of a cut line before it skipped).
        tools: speak a short summary of each tool call (stream-json only).

    Raises:
        BinaryInput: (while iterating) the input's first bytes hold NUL bytes or are mostly not
            UTF-8 text, and ``fmt`` is not ``"text"``. Pieces may have been yielded before.
    """
    from .claude import StreamJsonReader

    check = _BinaryCheck() if fmt != "text" else None
    pieces = read_pieces(stream)
    if check is not None:
        pieces = _checked(pieces, check)
    head = b""
    if fmt == "auto":
        # Peek until the first lines decide (or the input ends): a live pipe is never read to EOF.
        decided, start = None, 0
        peeked = bytearray()
        for data in pieces:
            peeked += data
            # Only a new line or the budget can change the answer (a long line in small reads
            # must not be rescanned for each one).
            if b"\n" in data or len(peeked) >= DETECT_BYTES:
                decided, start = detect_format(bytes(peeked))
                if decided:
                    break
        head = bytes(peeked)
        if decided is None:
            decided, start = detect_format(head, final=True)
        fmt = decided
        logger.debug("input format: %s", fmt)
        if fmt == "stream-json":
            if start < 0:  # decided inside an over-long first line: skip to its end
                pieces = _after_newline(pieces)
                head = b""
            else:
                head = head[start:]
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


def _checked(pieces: Iterator[bytes], check: _BinaryCheck) -> Iterator[bytes]:
    for data in pieces:
        check.feed(data)
        yield data
    check.finish()


def _after_newline(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """The bytes after the next newline (the rest of a cut line dropped)."""
    for data in pieces:
        cut = data.find(b"\n")
        if cut >= 0:
            yield data[cut + 1 :]
            yield from pieces
            return
