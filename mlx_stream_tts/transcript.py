"""Follow a Claude Code session transcript (JSONL) and pick out the assistant text to speak.

Interactive ``claude`` sessions write their conversation to ``~/.claude/projects/<dir>/<session>.jsonl``
(the ``transcript_path`` of every hook payload). The file only grows during a turn: one line per
record, ``type`` ``user`` / ``assistant`` / ``system`` / ``summary`` / bookkeeping types, with the
Anthropic message under ``message``. A streamed assistant message is written as several lines that
share ``message.id`` (and ``requestId``), usually one content block per line, each line with its own
``uuid``. Sub-agent records carry ``isSidechain: true``; CLI-made records carry ``isMeta: true`` or
the model ``<synthetic>``; tool results are ``user`` lines. Sources of these shapes:
tests/fixtures/claude-hooks/SOURCES.md.

What is spoken follows the stream-json reader (``claude.py``): main-thread assistant ``text`` blocks,
in order, each once and each ending with a paragraph break. An API error record (``isApiErrorMessage``
or ``error``, model ``<synthetic>``) is spoken as the message the user sees ("Not logged in · Please
run /login" -> "Not logged in. Please run /login."), cleaned by :func:`claude.error_message`, as an
:class:`~mlx_stream_tts.claude.ErrorText` piece; a record without a readable message gets a short cue.
Each message is said once a turn (a retried call can fail twice alike), a cue at most once a turn.
Thinking, tool calls, tool results, user text, sidechain and meta records are never spoken.

The file is read incrementally from a byte offset (never whole again), a line still being written is
left for the next read, and damaged input (garbage, binary junk, over-long lines, a file truncated or
replaced) is logged and skipped, never raised.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any

from .claude import PARAGRAPH, ErrorText, error_cue, error_message, text_blocks

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency; json is only a fallback
    import json

    _loads = json.loads

logger = logging.getLogger(__name__)

__all__ = ["TranscriptFollower", "is_user_prompt"]

# One read_new() call reads at most this much, so that a huge backlog is spoken in steps instead of
# stalling the caller; the rest comes on the next calls.
READ_CHUNK = 4 * 1024 * 1024
# A line longer than this without a newline is skipped, not buffered (binary junk must not eat the
# memory). Real transcript lines reach a few MB (a tool result with a whole file).
MAX_LINE_BYTES = 64 * 1024 * 1024
# How far back from the end seek_turn_start() looks for the turn's prompt before giving up.
MAX_SCAN_BYTES = 64 * 1024 * 1024
_SCAN_BLOCK = 1024 * 1024

# Dedup memory: message ids, line uuids and fallback texts are unique per turn or so; old ones are
# dropped to bound memory in long sessions.
_MAX_SEEN = 4096
_MAX_FALLBACK = 8

_INTERRUPTED = "[Request interrupted by user"
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\S+")


def _norm(text: str) -> str:
    """Text with runs of whitespace made one space, for comparing copies of the same words."""
    return _SPACE.sub(" ", text).strip()


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch of an ISO-8601 ``timestamp`` field, or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def is_user_prompt(obj: Any) -> bool:
    """Tell whether a transcript record is a prompt a person typed (a turn's first line).

    Tool results, interruption notices, meta records (hook feedback, reminders), compaction
    summaries and sidechain (sub-agent) records are not prompts.

    Args:
        obj: one parsed transcript line.

    Returns:
        True for a main-thread user prompt.
    """
    if not isinstance(obj, dict) or obj.get("type") != "user":
        return False
    if obj.get("isSidechain") is True or obj.get("isMeta") is True:
        return False
    if obj.get("isCompactSummary") is True or "toolUseResult" in obj:
        return False
    message = obj.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            return False
        texts = text_blocks(content)
        has_image = any(isinstance(b, dict) and b.get("type") == "image" for b in content)
        if not texts and not has_image:
            return False
    elif isinstance(content, str):
        texts = [content]
    else:
        return False
    return not any(text.lstrip().startswith(_INTERRUPTED) for text in texts)


class TranscriptFollower:
    """Incremental reader of one session transcript, returning the assistant text to speak.

    Not thread-safe: use one follower per transcript from one thread.

    Args:
        path: the transcript (``transcript_path`` of a hook payload). It may not exist yet.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._offset = 0  # bytes handled: always at a line start
        self._discarding = False  # inside an over-long line, skipping to its newline
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file read
        self._not_before: float | None = None
        self._seen_uuids: OrderedDict[str, None] = OrderedDict()
        self._seen_blocks: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._fallback: list[str] = []  # normalised texts spoken from outside the transcript
        self._turn_texts: list[str] = []  # normalised texts spoken this turn, in order
        self.turn_cue = False  # an error (message or cue) was spoken this turn
        self._turn_errors: set[str] = set()  # error messages spoken this turn, normalised
        self._missing_logged = False

    # ------------------------------------------------------------------------------- position

    @property
    def offset(self) -> int:
        """Bytes of the file already handled (the next read starts here)."""
        return self._offset

    def skip_to_end(self, not_before: float | None = None, size: int | None = None) -> None:
        """Mark everything in the file now (and any line older than ``not_before``) as handled.

        Used on a new prompt: earlier turns are not spoken. The transcript is written
        asynchronously, so the end of the previous turn may land after this call; ``not_before``
        (the time the prompt was submitted, seconds since the epoch) keeps such late lines quiet.

        Args:
            not_before: assistant records timestamped before this are never spoken.
            size: the file's size when the prompt came (default: its size now); what was appended
                since is read.
        """
        def place(file_size: int) -> int:
            return self._line_start_at_or_before(file_size if size is None else max(0, min(size, file_size)))

        self._reposition(not_before, place)

    def seek_turn_start(self) -> None:
        """Position after the last prompt a person typed, so the current turn is read in full.

        Used when the turn's prompt was missed (a Stop for a session never seen). Scans backwards
        from the end in blocks, at most ``MAX_SCAN_BYTES``; with no prompt in the file the whole
        file is the turn.
        """
        self._reposition(None, self._find_turn_start)

    def _reposition(self, not_before: float | None, place) -> None:
        """Start a new turn at ``place(file size)`` (at 0 when the file cannot be read now)."""
        self._new_turn()
        self._not_before = not_before
        self._discarding = False
        stat = self._stat()
        if stat is None:
            self._offset = 0
            return
        self._identity = (stat.st_dev, stat.st_ino)
        self._offset = place(stat.st_size)

    def _new_turn(self) -> None:
        self._turn_texts = []
        self._new_error_turn()

    def _new_error_turn(self) -> None:
        self.turn_cue = False
        self._turn_errors.clear()

    def _stat(self) -> os.stat_result | None:
        try:
            stat = self.path.stat()
        except OSError as err:
            if not self._missing_logged:
                logger.warning("transcript: cannot read %s (%s)", self.path, err.strerror or err)
                self._missing_logged = True
            return None
        self._missing_logged = False
        return stat

    def _line_start_at_or_before(self, size: int) -> int:
        """The offset just after the last newline before ``size`` (a line being written is kept)."""
        pos = size
        try:
            with self.path.open("rb") as f:
                while pos > 0:
                    start = max(0, pos - _SCAN_BLOCK)
                    f.seek(start)
                    block = f.read(pos - start)
                    cut = block.rfind(b"\n")
                    if cut >= 0:
                        return start + cut + 1
                    pos = start
                    if size - pos > MAX_LINE_BYTES:
                        return size  # one giant unfinished line: nothing worth keeping
        except OSError as err:
            logger.warning("transcript: cannot read %s (%s)", self.path, err)
            return size
        return 0

    def _find_turn_start(self, size: int) -> int:
        end = self._line_start_at_or_before(size)
        pos = end
        carry = b""  # the start of a line whose beginning is in the next block back
        limit = max(0, end - MAX_SCAN_BYTES)
        try:
            with self.path.open("rb") as f:
                while pos > limit:
                    start = max(limit, pos - _SCAN_BLOCK)
                    f.seek(start)
                    data = f.read(pos - start) + carry
                    lines = data.split(b"\n")
                    # lines[0] may begin before `start`: keep it for the next block unless at 0.
                    first_complete = 0 if start == 0 else 1
                    line_end = start + len(data)
                    for index in range(len(lines) - 1, first_complete - 1, -1):
                        line = lines[index]
                        line_start = line_end - len(line)
                        line_end = line_start - 1  # before its preceding newline
                        if b'"user"' not in line:  # cheap filter: most lines are not user records
                            continue
                        obj = self._parse(line.strip())
                        if is_user_prompt(obj):
                            return min(end, line_start + len(line) + 1)
                    carry = lines[0] if first_complete else b""
                    pos = start
                    if len(carry) > MAX_LINE_BYTES:
                        carry = b""
        except OSError as err:
            logger.warning("transcript: cannot read %s (%s)", self.path, err)
            return end
        if limit > 0:
            logger.warning(
                "transcript: no prompt in the last %d MB of %s; reading from there",
                MAX_SCAN_BYTES // (1024 * 1024),
                self.path,
            )
            return self._line_start_after(limit)
        return 0

    def _line_start_after(self, pos: int) -> int:
        try:
            with self.path.open("rb") as f:
                f.seek(pos)
                while True:
                    block = f.read(_SCAN_BLOCK)
                    if not block:
                        return pos
                    cut = block.find(b"\n")
                    if cut >= 0:
                        return pos + cut + 1
                    pos += len(block)
        except OSError:
            return pos

    # -------------------------------------------------------------------------------- reading

    def read_new(self) -> list[str]:
        """Read what was appended since the last call and return the text pieces to speak.

        Returns:
            Text pieces in order (each text block ends with a paragraph break); empty if nothing
            new, or if the file is missing or unreadable (logged once).
        """
        stat = self._stat()
        if stat is None:
            return []
        identity = (stat.st_dev, stat.st_ino)
        if self._identity is not None and identity != self._identity:
            logger.warning("transcript: %s was replaced; reading the new file", self.path)
            self._restart()
        elif stat.st_size < self._offset:
            logger.warning("transcript: %s shrank (truncated); reading it again", self.path)
            self._restart()
        self._identity = identity
        if stat.st_size <= self._offset:
            return []
        available = stat.st_size - self._offset
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read(min(READ_CHUNK, available))
                # A line longer than one chunk: read on to its newline (or to the line limit), or
                # the next call would start again at the same line start.
                more = data
                while b"\n" not in more and len(data) < min(available, MAX_LINE_BYTES):
                    more = f.read(min(READ_CHUNK, available - len(data)))
                    if not more:
                        break
                    data += more
        except OSError as err:
            logger.warning("transcript: cannot read %s (%s)", self.path, err)
            return []
        return self._handle_bytes(data)

    def _restart(self) -> None:
        """After a truncation or replacement: read again from the start (or the turn's start).

        Lines already spoken are recognised (uuid, message id) and old turns are kept quiet by the
        prompt time when there is one, else by seeking the current turn's prompt again.
        """
        self._discarding = False
        if self._not_before is None:
            stat = self._stat()
            self._offset = self._find_turn_start(stat.st_size) if stat else 0
        else:
            self._offset = 0

    def _handle_bytes(self, data: bytes) -> list[str]:
        out: list[str] = []
        bad = 0
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            line = data[start:end]
            start = end + 1
            if self._discarding:
                self._discarding = False
                continue
            if not self._handle_line(line, out):
                bad += 1
        self._offset += start
        rest = len(data) - start
        if rest >= MAX_LINE_BYTES or (self._discarding and rest):
            if not self._discarding:
                logger.warning(
                    "transcript: skipped a line longer than %d bytes in %s", MAX_LINE_BYTES, self.path
                )
            self._discarding = True
            self._offset += rest  # the line's start is dropped; the rest up to its newline too
        if bad:
            logger.warning("transcript: skipped %d line(s) that are not JSON in %s", bad, self.path)
        return out

    @staticmethod
    def _parse(line: bytes) -> Any:
        try:
            return _loads(line)
        except (ValueError, RecursionError):
            pass
        # A broken character inside a string should not lose the whole line.
        text = line.decode("utf-8", "replace")
        if "\ufffd" not in text:
            return None
        try:
            return _loads(text)
        except (ValueError, RecursionError):
            return None

    def _handle_line(self, raw: bytes, out: list[str]) -> bool:
        """Add the pieces of one line to ``out``; False if it is not JSON."""
        line = raw.strip()
        if not line:
            return True
        if b'"assistant"' not in line:
            # Only assistant records are ever spoken: other lines (some MB of tool output) are not
            # parsed; one that cannot be a JSON object is counted as damage. After an error, a new
            # prompt in the same read starts a turn whose own error must be heard again.
            if self.turn_cue and b'"user"' in line and is_user_prompt(self._parse(line)):
                self._new_error_turn()
            return line.startswith(b"{")
        obj = self._parse(line)
        if obj is None:
            return False
        if isinstance(obj, dict) and obj.get("type") == "assistant":
            try:
                self._on_assistant(obj, out)
            except Exception:  # an input shape not foreseen must not stop the follower
                logger.warning("transcript: failed to handle an assistant line; skipped", exc_info=True)
        return True

    def _on_assistant(self, obj: dict, out: list[str]) -> None:
        if obj.get("isSidechain") is True or obj.get("isMeta") is True:
            return  # a sub-agent's or the CLI's own record
        uuid = obj.get("uuid")
        if isinstance(uuid, str):
            if uuid in self._seen_uuids:
                return  # the same line again (rewritten or duplicated)
            self._remember(self._seen_uuids, uuid)
        if self._not_before is not None:
            stamp = _timestamp(obj.get("timestamp"))
            # Timestamps are cut to the millisecond: one written in the prompt's own millisecond is not older.
            if stamp is not None and stamp < self._not_before - 0.001:
                logger.debug("transcript: assistant line from before the prompt not spoken")
                return
        message = obj.get("message")
        if not isinstance(message, dict):
            return
        content = message.get("content")
        error = obj.get("error")
        if (isinstance(error, str) and error) or obj.get("isApiErrorMessage") is True:
            self._on_error(error, obj.get("apiErrorStatus"), content, out)
            return
        if message.get("model") == "<synthetic>":
            return  # a CLI-made message that is not an error ("No response requested.")
        mid = message.get("id")
        key_owner = mid if isinstance(mid, str) else uuid if isinstance(uuid, str) else None
        for text in text_blocks(content):
            if not text.strip():
                continue
            norm = _norm(text)
            if key_owner is not None:
                key = (key_owner, norm)
                if key in self._seen_blocks:
                    continue
                self._remember(self._seen_blocks, key)
            if any(norm in spoken for spoken in self._fallback):
                continue  # already spoken from the Stop payload while the transcript lagged
            out.append(text + PARAGRAPH)
            self._turn_texts.append(norm)

    def _on_error(self, code: Any, status: Any, content: Any, out: list[str]) -> None:
        """Speak an API error record as the stream-json reader does: its message, else a cue."""
        text = "\n".join(text_blocks(content)) or None
        message = error_message(text)
        if message is None:
            if self.turn_cue:
                return
            message = error_cue(code, status, text)
        else:
            key = _norm(message)
            if key in self._turn_errors:
                return
            self._turn_errors.add(key)
        self.turn_cue = True
        out.append(ErrorText(message + PARAGRAPH))

    @staticmethod
    def _remember(seen: OrderedDict, key: Any) -> None:
        seen[key] = None
        while len(seen) > _MAX_SEEN:
            seen.popitem(last=False)

    # --------------------------------------------------------------------- the Stop payload text

    def covers(self, text: str) -> bool:
        """Tell whether ``text`` (a Stop payload's ``last_assistant_message``) was spoken this turn.

        True when its words were spoken this turn, whole words in a row: usually the last block,
        or the last blocks of the message joined.
        """
        wanted = _norm(text)
        if not wanted:
            return True
        if f" {wanted} " in f" {' '.join(self._turn_texts)} ":
            return True
        return any(wanted in spoken for spoken in self._fallback)

    def remainder(self, text: str) -> str:
        """The part of ``text`` not yet spoken: after the longest run of this turn's last blocks
        that it starts with (the transcript had the message's first blocks only), else all of it.
        """
        wanted = _norm(text)
        for k in range(len(self._turn_texts), 0, -1):
            prefix = " ".join(self._turn_texts[-k:])
            if wanted.startswith(prefix) and (
                len(wanted) == len(prefix) or wanted[len(prefix)] == " "
            ):
                words = len(prefix.split())
                matches = list(_WORD.finditer(text))
                return text[matches[words].start() :] if words < len(matches) else ""
        return text

    def note_spoken(self, text: str) -> None:
        """Record text spoken from outside the transcript so its later copy there stays quiet."""
        norm = _norm(text)
        if norm:
            self._fallback.append(norm)
            del self._fallback[:-_MAX_FALLBACK]
            self._turn_texts.append(norm)
