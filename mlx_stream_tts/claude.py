"""Claude Code ``--output-format stream-json`` lines -> the text a listener should hear.

Follows the wire format that the Claude Code CLI writes (with or without
``--include-partial-messages``) as the official Agent SDK reads it
(anthropics/claude-agent-sdk-python, ``_internal/message_parser.py``), and what real captures show
(tests/fixtures/stream-json/, notes in /work/shared/notes/claude-stream-json.md).

What is spoken: main-thread assistant text, in order, once. With partial messages the same text
arrives up to three times (``text_delta`` pieces, the ``assistant`` line for the block, then
``result.result``); deltas are spoken as they come and the other copies are recognised and skipped.
Each text block ends with a paragraph break ("\\n\\n") so a downstream sentence chunker closes the
last sentence at once instead of waiting for the next block. Optionally (``tools=True``) each
main-thread tool call gets a one-line summary ("Running Bash: pytest -q.").

Errors: when the CLI reports a failure with a message of its own (the ``<synthetic>`` assistant line
that the user sees on screen: "Not logged in · Please run /login"), that message is spoken, cleaned
for the ear (see :func:`error_message`); a failure with no readable text gets a short English cue
("Claude Code error: rate limit reached."). Either is a paragraph of its own and comes as an
:class:`ErrorText`, a ``str`` whose ``error`` attribute is True, so that a consumer can tell it from
the assistant's words; plain text pieces are plain ``str``.

Bad input (garbage, invalid UTF-8, truncated lines, wrong field types, unknown types) is logged and
skipped; it never raises out of the reader.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency; json is only a fallback
    _loads = json.loads

logger = logging.getLogger(__name__)

__all__ = [
    "ErrorText",
    "StreamJsonReader",
    "error_cue",
    "error_message",
    "is_error_text",
    "looks_like_stream_json",
    "parse_stream_json",
    "text_blocks",
]

PARAGRAPH = "\n\n"

# A line longer than this without a newline is dropped rather than buffered forever (a pipe that
# carries binary junk must not eat the memory). Real lines reach ~100 KB.
MAX_LINE_BYTES = 64 * 1024 * 1024

# How many messages' block state to keep: an assistant line only ever refers to the message being
# streamed, so a short history is plenty; older state is dropped to bound memory in long sessions.
_MAX_MESSAGES = 32
# Texts spoken but not yet matched by a `result` (see _on_result); bounded for turns with no result.
_MAX_PENDING = 256

_CUE_PREFIX = "Claude Code error: "
CUE_INTERRUPTED = "Claude Code: request interrupted."
CUE_NO_RESULT = _CUE_PREFIX + "the stream ended without a result."

# `error` codes the CLI puts on its own (`<synthetic>`) assistant lines; the SDK documents the
# first six, the rest were seen in the wild.
_ERROR_CODES = {
    "authentication_failed": "authentication failed",
    "billing_error": "billing problem",
    "rate_limit": "rate limit reached",
    "invalid_request": "invalid request",
    "server_error": "server error",
    "model_not_found": "model not found",
    "overloaded": "server overloaded",
    "overloaded_error": "server overloaded",
    "oauth_org_not_allowed": "organization not allowed",
    "account_on_hold": "account on hold",
    "verification_required": "verification required",
    "max_output_tokens": "output token limit reached",
    "cloud_credential_error": "cloud credentials problem",
}
_HTTP_STATUS = {
    400: "invalid request",
    401: "authentication failed",
    402: "billing problem",
    403: "permission denied",
    404: "not found",
    413: "request too large",
    429: "rate limit reached",
    500: "server error",
    502: "server error",
    503: "service unavailable",
    504: "server timeout",
    529: "server overloaded",
}
_RESULT_SUBTYPES = {
    "error_max_turns": "reached the maximum number of turns",
    "error_max_budget_usd": "reached the budget limit",
    "error_max_structured_output_retries": "could not produce the structured output",
}

# Tool input fields worth naming, most telling first; path-like ones are shortened to the file name.
_TOOL_FIELDS = (
    "command",
    "file_path",
    "notebook_path",
    "pattern",
    "url",
    "query",
    "path",
    "description",
    "prompt",
    "skill",
    "subject",
)
_PATH_FIELDS = frozenset({"file_path", "notebook_path", "path"})
_SUMMARY_WORDS = 8
_CUE_WORDS = 12

_ERROR_PREFIX = re.compile(r"^\s*(?:api\s+)?error\s*:\s*", re.IGNORECASE)
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(eq=False)
class _Block:
    """One content block of a message, as seen so far (compared by identity)."""

    kind: str  # "text", "tool_use", "thinking", ...
    text: str = ""  # the text said so far; for tool_use with tools=True, the partial input JSON
    tool_id: str | None = None
    name: str | None = None
    claimed: bool = False  # its `assistant` copy has arrived
    done: bool = False  # no more text will be spoken for it
    announced: bool = False  # tool summary given


def _preview(raw: str | bytes, limit: int = 80) -> str:
    text = raw if isinstance(raw, str) else raw[: limit * 4].decode("utf-8", "replace")
    text = text[:limit]
    return repr(text) + ("..." if len(raw) > limit else "")


def _parse_object(raw: str | bytes) -> Any:
    """Parse one line; salvage lines whose only fault is invalid UTF-8. Raises ValueError."""
    try:
        return _loads(raw)
    except RecursionError as err:
        raise ValueError("nested too deeply") from err
    except ValueError:
        if not isinstance(raw, bytes):
            raise
    # Bytes that are not UTF-8: a broken character inside a string should not lose the whole line.
    text = raw.decode("utf-8", "replace")
    if "\ufffd" not in text:
        raise ValueError("not JSON")
    try:
        obj = _loads(text)
    except RecursionError as err:
        raise ValueError("nested too deeply") from err
    logger.warning("stream-json: invalid UTF-8 replaced in line %s", _preview(raw))
    return obj


def _strip_line(raw: str | bytes) -> str | bytes:
    """Surrounding whitespace and a byte-order mark removed."""
    raw = raw.strip()
    return raw.removeprefix(_UTF8_BOM) if isinstance(raw, bytes) else raw.removeprefix("\ufeff")


def looks_like_stream_json(first_line: str | bytes) -> bool:
    """Tell whether a line is Claude Code stream-json (a JSON object with a string ``type``).

    Args:
        first_line: a complete line of the input (``source.detect_format`` tries the first few, since
            the first one may be the tail of a cut line).

    Returns:
        True if it parses as a JSON object whose ``type`` is a string.
    """
    raw = _strip_line(first_line)
    if not raw:
        return False
    try:
        obj = _parse_object(raw)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("type"), str)


def _first_words(text: str, limit: int) -> str:
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    words = line.split()
    return " ".join(words[:limit]).rstrip(".,;:!?")


def _short_message(message: Any) -> str | None:
    """A human error message cut to a few speakable words, or None."""
    if not isinstance(message, str):
        return None
    text = message.strip().split(" · ", 1)[0]
    text = text.split("{", 1)[0]  # "API Error: 400 {...json...}" -> keep the words before the JSON
    for _ in range(2):
        text = _ERROR_PREFIX.sub("", text)
    short = _first_words(text, _CUE_WORDS)
    return short or None


def _error_phrase(code: Any = None, status: Any = None, message: Any = None) -> str:
    """Pick the most telling short phrase for an error from what the CLI gave."""
    if isinstance(code, str) and code in _ERROR_CODES:
        return _ERROR_CODES[code]
    if code == "unknown":
        code = None
    if isinstance(status, int) and not isinstance(status, bool) and status in _HTTP_STATUS:
        return _HTTP_STATUS[status]
    short = _short_message(message)
    if short:
        return short
    if isinstance(code, str) and code.strip():
        return code.strip().replace("_", " ")
    if isinstance(status, int) and not isinstance(status, bool):
        return f"API error {status}"
    return "unknown error"


def _error_cue(phrase: str) -> str:
    return f"{_CUE_PREFIX}{phrase.rstrip('.')}."


def error_cue(code: Any = None, status: Any = None, message: Any = None) -> str:
    """The short spoken cue for a Claude Code error, worded as the stream-json reader words it.

    Args:
        code: the CLI's error code (``"rate_limit"``, ``"authentication_failed"``, ...), if any.
        status: the HTTP status of the API error, if any.
        message: the error text shown to the user, if any.

    Returns:
        A sentence such as ``"Claude Code error: rate limit reached."``.
    """
    return _error_cue(_error_phrase(code, status, message))


class ErrorText(str):
    """A text piece that reports an error: Claude Code's own message, or a cue for a failure.

    It is a ``str`` (code that only wants the text needs nothing new) with ``error = True``. Only the
    piece itself is marked: what ``+``, slicing or ``strip()`` make of it is a plain ``str``, so a
    consumer reads the mark where it receives the piece (:func:`is_error_text`). An error piece is
    always a whole paragraph of its own (it ends with a paragraph break, and the text before it was
    closed), so every sentence a chunker cuts from it belongs to the error.
    """

    __slots__ = ()
    error = True


def is_error_text(piece: Any) -> bool:
    """Tell whether a text piece from a reader reports an error (an :class:`ErrorText`)."""
    return getattr(piece, "error", False) is True


# -- error messages, cleaned for the ear -----------------------------------------------------------

_JSON_DECODER = json.JSONDecoder()
# The parts of one CLI message are joined by a middle dot: "Not logged in · Please run /login".
_PART_SEPARATOR = re.compile(r"\s+[·•∙]\s+|\s*\n\s*")
_API_STATUS = re.compile(r"\b(API Error):?\s+(\d{3})\b([\s:]*)(?=(.?))", re.IGNORECASE)
_EPOCH_SUFFIX = re.compile(r"\|\s*\d{9,}\s*$")  # "Claude AI usage limit reached|1752757200" (old CLIs)
# "resets 2pm (Europe/Helsinki)": the listener's own time zone, noise when read aloud.
_TIME_ZONE = re.compile(r"\s*\((?:UTC|GMT|[A-Za-z]+(?:/[A-Za-z0-9_+-]+)+)\)")
_URL = re.compile(r"\b(?:https?|wss?)://(?:www\.)?([^\s/?#<>()\[\]\"']+)[^\s<>()\[\]\"']*", re.IGNORECASE)
_REQUEST_ID = re.compile(r"[\s,;(]*\b(?:request[ _]?id\W*)?req_[A-Za-z0-9]+\)?", re.IGNORECASE)
_PAREN_CODE = re.compile(r"\((E[A-Z0-9_]{2,}|[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+)\)")
_SNAKE_WORD = re.compile(r"(?<![\w./-])[a-z]+(?:_[a-z]+)+(?![\w./-])")
_CAMEL_PART = re.compile(r"[A-Z][a-z0-9]*")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=\S)")
# A sentence that says what to do is kept even when it comes after the budget.
_INSTRUCTION = re.compile(
    r"^(?:please\s+)?(?:run|try|check|use|set|visit|wait|log\s?in|re-?authenticate|switch|upgrade|"
    r"update|contact|restart|retry|pick|select)\b",
    re.IGNORECASE,
)
_MESSAGE_CHARS = 240
# Only the start of a message is read: what is said is short, and the cleaning stays cheap on junk.
_MESSAGE_SCAN = 4000
_MESSAGE_SENTENCES = 3
_INSTRUCTION_CHARS = 320
# Node.js / libuv socket error codes as the CLI shows them ("Unable to connect to API (ECONNRESET)").
_ERRNO = {
    "ECONNREFUSED": "connection refused",
    "ECONNRESET": "connection reset",
    "ECONNABORTED": "connection aborted",
    "ETIMEDOUT": "timed out",
    "ENOTFOUND": "host not found",
    "EAI_AGAIN": "name lookup failed",
    "EHOSTUNREACH": "host unreachable",
    "ENETUNREACH": "network unreachable",
    "ENETDOWN": "network down",
    "EPIPE": "connection closed",
    "EPROTO": "protocol error",
}


def _json_detail(obj: Any) -> str | None:
    """The human part of an API error body: ``error.message``, else ``message``."""
    if not isinstance(obj, dict):
        return None
    inner = obj.get("error")
    for source in (inner, obj):
        if isinstance(source, dict):
            message = source.get("message")
            if isinstance(message, str) and message.strip():
                return message.strip()
    return None


def _without_json(text: str) -> str:
    """Replace an embedded API error body ("API Error: 500 {...}") by its message, if it has one."""
    start = text.find("{")
    if start < 0:
        return text
    head = text[:start].rstrip()
    try:
        obj, end = _JSON_DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):  # cut or not JSON: salvage a "message" field, drop the rest
        found = re.search(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)"', text[start:])
        detail = found.group(1).replace('\\"', '"') if found else None
        tail = ""
    else:
        detail = _json_detail(obj)
        tail = text[end:].strip()
    joined = f"{head.rstrip(':')}: {detail}" if head and detail else head or detail or ""
    return f"{joined} {tail}".strip() if tail else joined


def _code_words(match: re.Match) -> str:
    code = match.group(1)
    if code in _ERRNO:
        words = _ERRNO[code]
    elif code.startswith("E") and code.isupper():
        return match.group(0)  # an unknown errno-style code: left for the reading step to spell
    else:
        words = " ".join(part.lower() for part in _CAMEL_PART.findall(code))
    return f"({words})"


def _clean_part(part: str) -> str:
    part = _EPOCH_SUFFIX.sub("", part)
    part = _TIME_ZONE.sub("", part)
    part = _REQUEST_ID.sub("", part)
    part = _URL.sub(lambda m: m.group(1).rstrip(".,;:!?"), part)
    # "API Error: 401 OAuth token expired" -> "API Error 401: OAuth token expired"; a lower-case
    # word with no colon before it goes on the sentence ("API Error 400 due to ...").
    part = _API_STATUS.sub(
        lambda m: f"{m.group(1)} {m.group(2)}"
        + (" " if m.group(4).islower() and ":" not in m.group(3) else ": "),
        part,
    )
    part = _PAREN_CODE.sub(_code_words, part)
    part = _SNAKE_WORD.sub(lambda m: m.group(0).replace("_", " "), part)
    part = " ".join(part.split()).strip(" :,;-")
    if not part:
        return ""
    if part[0].islower():
        part = part[0].upper() + part[1:]
    return part if part[-1] in ".!?" else part + "."


def _cut(sentences: list[str]) -> list[str]:
    """The first sentences within the budget, and a later one that says what to do if it fits."""
    kept: list[str] = []
    size = 0
    for sentence in sentences:
        if len(kept) >= _MESSAGE_SENTENCES or (kept and size + 1 + len(sentence) > _MESSAGE_CHARS):
            break
        kept.append(sentence)
        size += len(sentence) + bool(size)
    if len(kept[0]) > _MESSAGE_CHARS:  # one very long sentence: cut at a word
        words = kept[0][:_MESSAGE_CHARS].rsplit(" ", 1)[0]
        kept[0] = words.rstrip(" ,;:") + "."
        size = len(kept[0])
    if not any(_INSTRUCTION.match(s) for s in kept):
        for sentence in sentences[len(kept) :]:
            if _INSTRUCTION.match(sentence) and size + 1 + len(sentence) <= _INSTRUCTION_CHARS:
                kept.append(sentence)
                break
    return kept


def error_message(message: Any) -> str | None:
    """An error message as the CLI shows it, made fit to be read aloud, or None if it has no words.

    The parts that the CLI joins with " · " become sentences; an embedded API error body
    (``API Error: 500 {"type":"error","error":{"message":"Internal server error"},...}``) becomes its
    message ("API Error 500: Internal server error."); request ids, time zone names and the epoch
    suffix of old usage-limit messages are dropped; a URL is reduced to its host; socket error codes
    are said in words ("(ECONNREFUSED)" -> "(connection refused)"); commands and options ("/login",
    "--model") are kept as they are, for the reading step. A long message keeps its first sentences
    (about 240 characters) plus the first later sentence that says what to do.

    Args:
        message: the text of the CLI's error (any type; non-strings give None).

    Returns:
        The cleaned message, ending with a full stop, or None when fewer than two words are left
        (then a cue says what failed).
    """
    if not isinstance(message, str):
        return None
    text = _without_json(message[:_MESSAGE_SCAN].strip())
    parts = [_clean_part(part) for part in _PART_SEPARATOR.split(text)]
    sentences = [s for part in parts if part for s in _SENTENCE_BREAK.split(part)]
    if not sentences:
        return None
    cleaned = " ".join(_cut(sentences))
    words = [w for w in cleaned.split() if sum(c.isalpha() for c in w) >= 2]
    return cleaned if len(words) >= 2 else None


def _tool_summary(name: Any, tool_input: Any) -> str:
    """ "Running <tool>: <a few words from its input>." """
    label = name if isinstance(name, str) and name.strip() else "a tool"
    if label.startswith("mcp__"):  # mcp__server__tool_name -> "server tool name"
        label = " ".join(part.replace("_", " ") for part in label.split("__")[1:] if part)
    detail = ""
    if isinstance(tool_input, dict):
        command = tool_input.get("command")
        description = tool_input.get("description")
        if isinstance(command, str) and command.strip():
            one_line = "\n" not in command.strip() and len(command.split()) <= _SUMMARY_WORDS
            # A multi-line script reads badly; its description (if any) says it better.
            if not one_line and isinstance(description, str) and description.strip():
                detail = _first_words(description, _SUMMARY_WORDS)
            else:
                detail = _first_words(command, _SUMMARY_WORDS)
        else:
            for key in _TOOL_FIELDS:
                value = tool_input.get(key)
                if isinstance(value, str) and value.strip():
                    if key in _PATH_FIELDS:
                        value = PurePosixPath(value.strip()).name or value
                    detail = _first_words(value, _SUMMARY_WORDS)
                    break
    return f"Running {label}: {detail}." if detail else f"Running {label}."


class StreamJsonReader:
    """Push-style reader of Claude Code stream-json output.

    Feed it lines (``feed_line``) or raw chunks of the byte stream (``feed``); each call returns the
    text pieces that input releases, ready to hand to a sentence chunker: the plain text joined into
    one ``str``, each error paragraph an :class:`ErrorText` of its own. However the input is cut, the
    pieces joined are the same, and so is which text is marked as an error. Call ``finish`` at the end
    of the stream. Not thread-safe: use one reader per stream, from one thread.

    Args:
        tools: also speak a short summary of each main-thread tool call.
    """

    def __init__(self, tools: bool = False) -> None:
        self.tools = tools
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long line, skipping to its newline
        self._out: list[str] = []
        # Block state by (parent_tool_use_id, message id) then content-block index. Only the main
        # thread (parent None) is recorded: sub-agent events are dropped before they reach it.
        self._messages: OrderedDict[tuple[str | None, str | None], dict[Any, _Block]] = (
            OrderedDict()
        )
        self._current_message: str | None = None
        self._open: _Block | None = None  # block whose text was spoken without a paragraph break
        self._pending: list[_Block] = []  # spoken text not yet matched by a result
        self._announced_tools: set[str] = set()
        self._seen_result = False
        self._turn_open = False
        self._turn_cue = False  # an error (message or cue) or the interruption cue was given this turn
        self._turn_errors: set[str] = set()  # error messages spoken this turn, whitespace collapsed
        # A rejected rate limit is told only when the turn has no message of its own for it: the
        # CLI's "You've hit your session limit · resets 2pm" follows the event a moment later.
        self._held_cue: str | None = None
        self._rate_limit_status: str | None = None

    # ----------------------------------------------------------------------------------- input

    def feed(self, data: str | bytes) -> list[str]:
        """Accept an arbitrary chunk of the stream; complete lines are parsed, the rest buffered.

        Args:
            data: bytes (or text) as read from a pipe, cut anywhere (even inside a character).

        Returns:
            The text pieces released by the complete lines in ``data``.
        """
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        elif isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif not isinstance(data, bytes):
            logger.warning("stream-json: feed() ignores a %s", type(data).__name__)
            return []
        self._out = []
        if b"\n" not in data:
            self._append(data)
            return self._take()
        buffer = self._buffer
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
                logger.warning("stream-json: dropped a line longer than %d bytes", MAX_LINE_BYTES)
            else:
                buffer += data[start:end]
                line = bytes(buffer)
                buffer.clear()
                self._handle_raw(line)
            start = end + 1
        self._append(data[start:])
        return self._take()

    def feed_line(self, line: str | bytes) -> list[str]:
        """Parse one complete line (a trailing newline is allowed).

        Args:
            line: one stream-json line, as text or bytes. Embedded newlines split it into lines.

        Returns:
            The text pieces this line releases (possibly none).
        """
        self._out = []
        if isinstance(line, (bytes, bytearray)):
            for part in bytes(line).split(b"\n"):
                self._handle_raw(part)
        elif isinstance(line, str):
            for part in line.split("\n"):
                self._handle_raw(part)
        else:
            logger.warning("stream-json: feed_line() ignores a %s", type(line).__name__)
        return self._take()

    def finish(self) -> list[str]:
        """End of stream: parse a last line left without a newline and report an unfinished turn.

        Returns:
            The remaining text pieces (e.g. an error cue if no ``result`` ended the last turn).
        """
        self._out = []
        if self._discarding:
            logger.warning("stream-json: dropped a line longer than %d bytes", MAX_LINE_BYTES)
        elif self._buffer.strip():
            line = bytes(self._buffer)
            if not self._handle_raw(line, last=True):
                logger.warning("stream-json: truncated last line dropped: %s", _preview(line))
        self._buffer.clear()
        self._discarding = False
        self._release_held_cue()
        if (self._turn_open or not self._seen_result) and not self._turn_cue:
            self._cue(CUE_NO_RESULT, error=True)
        self._close_paragraph()
        self._turn_open = False
        self._seen_result = True
        self._end_turn()
        return self._take()

    def _append(self, data: bytes) -> None:
        if self._discarding or not data:
            return
        self._buffer += data
        if len(self._buffer) > MAX_LINE_BYTES:
            self._buffer.clear()
            self._discarding = True

    def _take(self) -> list[str]:
        """The output of one call: plain text joined into one piece, each error run into one
        :class:`ErrorText`, in order."""
        out, self._out = self._out, []
        pieces: list[str] = []
        run: list[str] = []
        for part in out:
            if run and is_error_text(part) != is_error_text(run[0]):
                pieces.append(_joined(run))
                run = []
            run.append(part)
        if run:
            pieces.append(_joined(run))
        return [piece for piece in pieces if piece]

    def _handle_raw(self, raw: str | bytes, last: bool = False) -> bool:
        """Parse and dispatch one line; False if it could not be parsed as a JSON object."""
        raw = _strip_line(raw)
        if not raw:
            return True
        try:
            obj = _parse_object(raw)
        except ValueError:
            if not last:  # finish() words its own warning for a cut last line
                logger.warning("stream-json: skipped a line that is not JSON: %s", _preview(raw))
            return False
        if not isinstance(obj, dict):
            logger.warning("stream-json: skipped JSON that is not an object: %s", _preview(raw))
            return True
        kind = obj.get("type")
        handler = self._HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            if isinstance(kind, str):
                logger.debug("stream-json: ignored line of type %r", kind)
            else:
                logger.warning("stream-json: skipped an object without a string 'type'")
            return True
        try:
            handler(self, obj)
        except Exception:  # a reader bug or an input shape not foreseen must not end the stream
            logger.warning("stream-json: failed to handle a %r line; skipped", kind, exc_info=True)
        return True

    # ---------------------------------------------------------------------------------- output

    def _say(self, block: _Block, text: str) -> None:
        """Speak text of `block`, with a paragraph break first if another block was left open."""
        if not text:
            return
        if self._open is not block:  # a held cue goes between blocks, never inside one
            self._release_held_cue()
        if self._open is not None and self._open is not block:
            self._out.append(PARAGRAPH)
        if block.kind == "text" and not block.text:  # first words of a text block
            self._pending.append(block)
            del self._pending[:-_MAX_PENDING]
        self._out.append(text)
        self._open = block

    def _end(self, block: _Block) -> None:
        block.done = True
        if self._open is block:
            self._out.append(PARAGRAPH)
            self._open = None

    def _close_paragraph(self) -> None:
        if self._open is not None:
            self._end(self._open)

    def _paragraph(self, text: str, error: bool = False) -> None:
        """Speak `text` as a paragraph of its own (cues, tool summaries, error messages)."""
        self._close_paragraph()
        if error:
            self._out.append(ErrorText(text + PARAGRAPH))
        else:
            self._release_held_cue()
            self._out.append(text + PARAGRAPH)

    def _cue(self, text: str, error: bool = False) -> None:
        self._turn_cue = True
        self._paragraph(text, error=error)

    def _error(self, phrase: str) -> None:
        """A cue for an error without a readable message, unless the turn already told one: an auth
        failure shows as a synthetic assistant line *and* an error result."""
        if not self._turn_cue:
            self._held_cue = None
            self._cue(_error_cue(phrase), error=True)

    def _report(self, code: Any, status: Any, text: Any) -> None:
        """An error the CLI reported: its message if it has one (each different message once a
        turn: a retried call can fail twice alike), else a cue."""
        message = error_message(text)
        if message is None:
            self._error(_error_phrase(code, status, text))
            return
        key = " ".join(message.split())
        if key in self._turn_errors:
            return
        self._turn_errors.add(key)
        self._held_cue = None
        self._cue(message, error=True)

    def _release_held_cue(self) -> None:
        if self._held_cue is not None:
            phrase, self._held_cue = self._held_cue, None
            self._error(phrase)

    def _end_turn(self) -> None:
        self._turn_cue = False
        self._turn_errors.clear()
        self._held_cue = None

    def _announce(self, block: _Block | None, tool_id: Any, name: Any, tool_input: Any) -> None:
        if isinstance(tool_id, str):
            if tool_id in self._announced_tools:
                return
            self._announced_tools.add(tool_id)
            if len(self._announced_tools) > 4096:  # ids are unique; forget old ones in long runs
                self._announced_tools = {tool_id}
        if block is not None:
            if block.announced:
                return
            block.announced = True
        self._paragraph(_tool_summary(name, tool_input))

    # -------------------------------------------------------------------------------- handlers

    def _message_blocks(self, message_id: str | None, create: bool) -> dict[Any, _Block] | None:
        key = (None, message_id)
        blocks = self._messages.get(key)
        if blocks is None and create:
            blocks = self._messages[key] = {}
            while len(self._messages) > _MAX_MESSAGES:
                self._messages.popitem(last=False)
        return blocks

    def _on_stream_event(self, obj: dict) -> None:
        if obj.get("parent_tool_use_id") is not None:
            return  # sub-agent traffic: not the main reply (and must not touch main-thread state)
        event = obj.get("event")
        if not isinstance(event, dict):
            logger.warning("stream-json: stream_event without an 'event' object skipped")
            return
        self._turn_open = True
        etype = event.get("type")
        if etype == "message_start":
            message = event.get("message")
            mid = message.get("id") if isinstance(message, dict) else None
            self._current_message = mid if isinstance(mid, str) else None
            self._message_blocks(self._current_message, create=True)
            return
        if etype not in ("content_block_start", "content_block_delta", "content_block_stop"):
            return  # message_delta, message_stop, ping, error: nothing to say
        index = event.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = None
        blocks = self._message_blocks(self._current_message, create=True)
        block = blocks.get(index)

        if etype == "content_block_start":
            content = event.get("content_block")
            content = content if isinstance(content, dict) else {}
            if block is None:
                kind = content.get("type")
                block = blocks[index] = _Block(kind if isinstance(kind, str) else "unknown")
                tool_id, name = content.get("id"), content.get("name")
                block.tool_id = tool_id if isinstance(tool_id, str) else None
                block.name = name if isinstance(name, str) else None
            initial = content.get("text")
            if block.kind == "text" and isinstance(initial, str) and initial:
                self._stream_text(block, initial)
        elif etype == "content_block_delta":
            delta = event.get("delta")
            dtype = delta.get("type") if isinstance(delta, dict) else None
            if dtype == "text_delta":
                text = delta.get("text")
                if not isinstance(text, str):
                    logger.warning("stream-json: text_delta without a string 'text' skipped")
                    return
                if block is None:  # no content_block_start seen: still speak it
                    block = blocks[index] = _Block("text")
                if block.kind != "text":
                    logger.warning("stream-json: text_delta for a %r block skipped", block.kind)
                    return
                self._stream_text(block, text)
            elif dtype == "input_json_delta" and self.tools:
                part = delta.get("partial_json")
                if block is None:
                    block = blocks[index] = _Block("tool_use")
                if block.kind == "tool_use" and isinstance(part, str):
                    block.text += part
        else:  # content_block_stop
            if block is None:
                return
            if block.kind == "tool_use" and self.tools and not block.announced:
                tool_input: Any = {}
                if block.text.strip():
                    try:
                        tool_input = _loads(block.text)
                    except ValueError:
                        logger.warning("stream-json: tool input is not JSON; summary without it")
                self._announce(block, block.tool_id, block.name, tool_input)
            if block.kind == "text" and not block.claimed:
                self._end(block)
            block.done = True

    def _stream_text(self, block: _Block, text: str) -> None:
        if block.done:
            # Its `assistant` copy (or its stop) came already; whatever it said was spoken then.
            logger.debug("stream-json: text_delta after its block ended skipped")
            return
        self._say(block, text)
        block.text += text

    def _on_assistant(self, obj: dict) -> None:
        if obj.get("parent_tool_use_id") is not None:
            return  # a sub-agent's message
        message = obj.get("message")
        if not isinstance(message, dict):
            logger.warning("stream-json: assistant line without a 'message' object skipped")
            return
        self._turn_open = True
        content = message.get("content")
        error = obj.get("error")
        api_error = obj.get("isApiErrorMessage") is True or obj.get("is_api_error_message") is True
        if (isinstance(error, str) and error) or api_error:
            status = obj.get("apiErrorStatus", obj.get("api_error_status"))
            self._report(error, status, _content_text(content))
            return
        if message.get("model") == "<synthetic>":
            # A CLI-made message that is not an error (e.g. "No response requested.").
            logger.info("stream-json: synthetic assistant message not spoken")
            return
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        elif not isinstance(content, list):
            logger.warning("stream-json: assistant message content is not a list; skipped")
            return
        mid = message.get("id")
        if not isinstance(mid, str):
            mid = self._current_message
        streamed = self._message_blocks(mid, create=False)
        for item in content:
            if not isinstance(item, dict):
                logger.warning("stream-json: content block that is not an object skipped")
                continue
            kind = item.get("type")
            if kind == "text":
                text = item.get("text")
                if not isinstance(text, str):
                    logger.warning("stream-json: text block without a string 'text' skipped")
                    continue
                self._assistant_text(streamed, text)
            elif kind == "tool_use" and self.tools:
                block = self._claim(streamed, "tool_use")
                self._announce(block, item.get("id"), item.get("name"), item.get("input"))

    @staticmethod
    def _claim(streamed: dict[Any, _Block] | None, kind: str) -> _Block | None:
        """The first streamed block of `kind` that no assistant line has claimed yet (in order)."""
        if not streamed:
            return None
        for block in streamed.values():
            if block.kind == kind and not block.claimed:
                block.claimed = True
                return block
        return None

    def _assistant_text(self, streamed: dict[Any, _Block] | None, text: str) -> None:
        block = self._claim(streamed, "text")
        if block is None:  # not streamed (no partial messages): speak it whole
            block = _Block("text")
            self._say(block, text)
            block.text = text
            self._end(block)
            return
        if text != block.text and not block.done:
            if text.startswith(block.text):
                # Deltas were lost or are late: say only what the deltas did not.
                self._say(block, text[len(block.text) :])
                block.text = text
            else:
                logger.warning(
                    "stream-json: assistant text differs from its streamed deltas; kept the deltas"
                )
        self._end(block)

    def _on_result(self, obj: dict) -> None:
        cue_given = self._turn_cue
        subtype = obj.get("subtype")
        subtype = subtype if isinstance(subtype, str) else ""
        terminal = obj.get("terminal_reason")
        text = obj.get("result")
        is_error = (
            obj.get("is_error") is True or subtype.startswith("error") or terminal == "api_error"
        )
        if terminal == "aborted_streaming":
            self._pending.clear()
            if not cue_given:
                self._cue(CUE_INTERRUPTED)
        elif is_error:
            self._pending.clear()
            if not cue_given:
                self._result_error(obj, subtype, terminal, text)
        elif not isinstance(text, str) or not text.strip():
            self._pending.clear()
        elif self._match_pending(text):
            pass
        elif self._pending:
            # The turn spoke; the result only repeats (part of) it in some other shape.
            self._pending.clear()
        else:
            # A turn that produced no assistant text (e.g. a local command): the result is all
            # there is to hear.
            self._close_paragraph()
            block = _Block("text")
            self._say(block, text)
            block.text = text
            self._end(block)
            self._pending.clear()
        self._release_held_cue()
        self._seen_result = True
        self._turn_open = False
        self._end_turn()

    def _match_pending(self, text: str) -> bool:
        """Match a result's text against spoken blocks; drop it and all blocks before it.

        A background sub-agent can make a second result follow the first with no new assistant
        line: each result repeats one block (the last of its turn), so matched blocks are dropped
        and later blocks are kept for the next result. Matching is only against blocks spoken and
        not yet matched, never against earlier turns, so that a short answer repeated by a later
        turn ("ok") is still heard.
        """
        wanted = text.strip()
        for i, block in enumerate(self._pending):
            if block.text.strip() == wanted:
                del self._pending[: i + 1]
                return True
        return False

    def _result_error(self, obj: dict, subtype: str, terminal: Any, text: Any) -> None:
        """A failed turn that told nothing yet (no synthetic line came): its `result` text is the
        message the CLI shows; a limit subtype or an `errors` list (diagnostics) gets a cue."""
        status = obj.get("api_error_status")
        if subtype in _RESULT_SUBTYPES:
            self._error(_RESULT_SUBTYPES[subtype])
            return
        errors = obj.get("errors")
        messages = []
        if isinstance(errors, list):
            # "[ede_diagnostic] ..." entries are CLI internals, not a reason a person can act on.
            messages = [
                e for e in errors if isinstance(e, str) and e.strip() and not e.startswith("[ede_")
            ]
        if not messages and error_message(text) is not None:
            self._report(None, status, text)
            return
        if self._held_cue is not None:  # a rejected rate limit says more than "API error"
            self._release_held_cue()
            return
        phrase = _error_phrase(None, status, messages[0] if messages else text)
        if phrase == "unknown error" and subtype.startswith("error_"):
            phrase = subtype.removeprefix("error_").replace("_", " ")
        elif phrase == "unknown error" and terminal == "api_error":
            phrase = "API error"
        self._error(phrase)

    def _on_rate_limit(self, obj: dict) -> None:
        info = obj.get("rate_limit_info")
        status = info.get("status") if isinstance(info, dict) else None
        if not isinstance(status, str):
            return
        if status == "rejected" and self._rate_limit_status != "rejected" and not self._turn_cue:
            self._held_cue = _ERROR_CODES["rate_limit"]
        self._rate_limit_status = status

    def _on_system(self, obj: dict) -> None:
        if obj.get("subtype") == "init":
            self._turn_open = True  # first line of every turn

    def _on_ignored(self, obj: dict) -> None:
        """`user` lines (tool results, replayed prompts, interruptions) are not Claude speaking."""

    _HANDLERS = {
        "stream_event": _on_stream_event,
        "assistant": _on_assistant,
        "result": _on_result,
        "rate_limit_event": _on_rate_limit,
        "system": _on_system,
        "user": _on_ignored,
    }


def text_blocks(content: Any) -> list[str]:
    """The texts of a message's ``text`` blocks, in order (a string content is one block).

    Thinking, tool_use, tool_result and malformed blocks are left out; each text returned is one
    paragraph to speak (the readers end each with a paragraph break).

    Args:
        content: an Anthropic message's ``content`` (a string or a list of blocks).

    Returns:
        The block texts, possibly empty.
    """
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [
        item["text"]
        for item in content
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str)
    ]


def _joined(parts: list[str]) -> str:
    joined = "".join(parts)
    return ErrorText(joined) if is_error_text(parts[0]) else joined


def _content_text(content: Any) -> str | None:
    """The text of a message's content (string or blocks), for error messages."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(text_blocks(content)) or None
    return None


def parse_stream_json(lines: Iterable[str | bytes], tools: bool = False) -> Iterator[str]:
    """Turn Claude Code stream-json lines into the text pieces to speak, as they arrive.

    Args:
        lines: stream-json lines (text or bytes, with or without their newline).
        tools: also speak a short summary of each main-thread tool call.

    Yields:
        Text pieces; text blocks and cues end with a paragraph break ("\\n\\n"); errors come as
        :class:`ErrorText` pieces.
    """
    reader = StreamJsonReader(tools=tools)
    for line in lines:
        yield from reader.feed_line(line)
    yield from reader.finish()
