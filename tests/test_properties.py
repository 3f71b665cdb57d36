"""Property-based tests of the input side: the stream-json reader, ``source.iter_text`` and the chunker.

What must hold for any input (random bytes, random or mutated JSON, real captures cut anywhere,
invalid UTF-8, NUL bytes, 10 MB lines, deep nesting):

- nothing raises out of ``StreamJsonReader`` / ``iter_text`` / ``SentenceChunker`` / ``speakable``,
  and the reader's catch-all for handler bugs never fires;
- the spoken text does not depend on where the input was cut into reads (or, for the chunker, into
  pieces), as the modules' docstrings promise;
- for the chunker, what its docstring promises: chunks are the input's own text with surrounding
  whitespace stripped (nothing lost, nothing added, in order), never empty, within the length cap,
  and a flushed chunker is as good as a new one.

Example counts come from the hypothesis profile (tests/conftest.py): "ci" by default, "nightly"
(10,000 per property) with ``HYPOTHESIS_PROFILE=nightly`` or ``pytest -m nightly``.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import pickle
import time
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

from mlx_stream_tts import chunking, claude  # noqa: E402
from mlx_stream_tts.chunking import SentenceChunker, is_code_block, speakable  # noqa: E402
from mlx_stream_tts.claude import CUE_NO_RESULT, StreamJsonReader  # noqa: E402
from mlx_stream_tts.source import BINARY_SAMPLE, BinaryInput, binary_reason, iter_text  # noqa: E402

pytestmark = pytest.mark.nightly

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = sorted((ROOT / "tests" / "fixtures" / "stream-json").glob("*.jsonl")) + sorted(
    (ROOT / "examples").glob("*.jsonl"))
CAPTURE_BYTES = {path.name: path.read_bytes() for path in CAPTURES}
MB = 1 << 20


# -- helpers -------------------------------------------------------------------------------------

class _Records(logging.Handler):
    """Collects the records of one logger while a test body runs (caplog does not fit @given)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Catching:
    """``with _Catching() as log:`` then ``log.crashes`` lists the reader's swallowed exceptions."""

    def __enter__(self) -> _Records:
        self.handler = _Records()
        self.logger = logging.getLogger(claude.__name__)
        self.level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.handler)
        return self.handler

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def _crashes(log: _Records) -> list[str]:
    # The reader wraps each handler in a catch-all that logs with exc_info: a record with exc_info
    # is a reader bug (or an input shape it did not foresee), hidden from the user but real.
    return [f"{r.getMessage()}: {r.exc_info[1]!r}" for r in log.records if r.exc_info]


def _pieces(out: object) -> list[str]:
    assert isinstance(out, list) and all(isinstance(p, str) and p for p in out), out
    return out  # type: ignore[return-value]


def read_all(data: bytes, cuts: list[int] = (), tools: bool = False) -> tuple[str, str]:
    """(text released by the feeds, text released by finish) for ``data`` read in pieces cut at ``cuts``."""
    reader = StreamJsonReader(tools=tools)
    said: list[str] = []
    start = 0
    for cut in sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]:
        said += _pieces(reader.feed(data[start:cut]))
        start = cut
    return "".join(said), "".join(_pieces(reader.finish()))


def spoken(data: bytes, cuts: list[int] = (), tools: bool = False) -> str:
    fed, finished = read_all(data, cuts, tools)
    return fed + finished


class Reads(io.RawIOBase):
    """A binary stream whose reads end at the given offsets (a pipe that delivers in odd pieces)."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self._data = data
        self._ends = sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        while self._ends and self._ends[0] <= self._pos:
            self._ends.pop(0)
        if not self._ends:
            return b""
        end = self._ends[0] if size < 0 else min(self._ends[0], self._pos + size)
        data, self._pos = self._data[self._pos:end], end
        return data

    read = read1

    def fileno(self) -> int:  # read_pieces must use read1, not os.read
        raise io.UnsupportedOperation("no descriptor")


def cuts_for(data: st.DataObject, length: int, most: int = 24) -> list[int]:
    return data.draw(st.lists(st.integers(0, length), max_size=most), label="cuts")


# -- strategies ----------------------------------------------------------------------------------

# Bytes biased towards what the reader looks at: newlines, braces, quotes, the type key, BOMs,
# invalid UTF-8 and NULs, mixed with anything at all.
_SYNTAX = [b"\n", b"\r\n", b"{", b"}", b"[", b"]", b'"', b":", b",", b'"type"', b'"assistant"', b'"result"',
           b'"stream_event"', b'"text"', b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\x00", b"\\u0000", b"\\", b" "]
junk_bytes = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.one_of(st.binary(max_size=24), st.sampled_from(_SYNTAX)), max_size=200).map(b"".join),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def _real_objects() -> list[dict]:
    objects = []
    for data in CAPTURE_BYTES.values():
        for line in data.splitlines():
            if line.strip():
                objects.append(json.loads(line))
    return objects


REAL_OBJECTS = _real_objects()


@st.composite
def mutated_object(draw: st.DrawFn) -> object:
    """A real stream-json line with one value somewhere inside it replaced, removed, or left alone."""
    obj = copy.deepcopy(draw(st.sampled_from(REAL_OBJECTS)))
    action = draw(st.sampled_from(["keep", "replace", "delete", "retype"]))
    if action == "keep":
        return obj
    parent, key = None, None
    node = obj
    while isinstance(node, (dict, list)) and node and draw(st.integers(0, 3)):  # walk down a random path
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, draw(st.sampled_from(keys))
        node = node[key]
    if parent is None:
        return draw(json_values) if action != "retype" else {"type": draw(json_values)}
    if action == "delete":
        del parent[key]
    elif action == "retype" and isinstance(parent, dict):
        parent["type"] = draw(st.sampled_from(["text", "tool_use", "text_delta", "assistant", "result", "message_start",
                                               "content_block_start", "content_block_stop", "input_json_delta"]))
    else:
        parent[key] = draw(json_values)
    return obj


def _line(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


stream_lines = st.lists(mutated_object(), max_size=30).map(lambda objs: b"\n".join(map(_line, objs)) + b"\n")

# Text for the chunker: pieces that exercise its rules (abbreviations, initials, numbers, quotes,
# brackets, code spans and fences, lists, tables, headings, CJK) glued at random, or any text at all.
_TOKENS = ["Hello", "world", "it", "The", "a", " ", " ", "  ", ".", ". ", "!", "?", "?!", "...", "…", ",", ";", ":",
           " - ", "—", "\n", "\n\n", "\t", "Mr.", "Dr. Smith", "e.g.", "i.e.", "U.S.", "etc.", "No. 5", "3.14",
           "1,000", "J. R. R.", '"', "'", "“", "”", "(", ")", "[", "]", "`", "`x`", "```", "```py\n", "~~~", "    ",
           "- ", "* ", "1. ", "a) ", "# ", "## ", "> ", "| a | b |", "|---|---|", "**", "_", "https://x.io/a.b",
           "🎉", "日本語", "です", "。", "、", "「", "」", "！", "？", "は", "\r", "\u00a0", "\u3000", "A" * 30]
chunk_text = st.one_of(
    st.lists(st.sampled_from(_TOKENS), max_size=120).map("".join),
    st.text(max_size=400),
)


def chunk(text: str, cuts: list[int] = (), lang: str = "en", max_chars: int = 200,
          chunker: SentenceChunker | None = None) -> list[str]:
    chunker = chunker or SentenceChunker(lang=lang, max_chars=max_chars)
    out: list[str] = []
    start = 0
    for cut in sorted({c for c in cuts if 0 < c < len(text)}) + [len(text)]:
        out += chunker.feed(text[start:cut])
        start = cut
    out += chunker.flush()
    assert chunker.pending == ""
    return out


def _visible(text: str) -> str:
    return "".join(text.split())


# == the stream-json reader ==========================================================================

@given(junk_bytes, st.booleans(), st.data())
def test_reader_survives_any_bytes_and_ignores_how_they_are_cut(data, tools, draw):
    with _Catching() as log:
        whole = spoken(data, tools=tools)
        assert spoken(data, cuts_for(draw, len(data)), tools=tools) == whole
    assert not _crashes(log)


@given(stream_lines, st.booleans(), st.data())
def test_reader_survives_mutated_real_lines_and_ignores_how_they_are_cut(data, tools, draw):
    with _Catching() as log:
        whole = spoken(data, tools=tools)
        assert spoken(data, cuts_for(draw, len(data)), tools=tools) == whole
    assert not _crashes(log), _crashes(log)


@given(st.lists(st.text(max_size=60), max_size=6), st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n \t\n"]),
       st.booleans(), st.data())
def test_reader_speaks_any_text_once_in_order(texts, newline, bom, draw):
    """Any unicode (NUL and other controls included), in plain assistant lines, is spoken as it is."""
    lines = [{"type": "assistant", "message": {"id": f"m{i}", "content": [{"type": "text", "text": t}]}}
             for i, t in enumerate(texts)]
    lines.append({"type": "result", "subtype": "success", "result": texts[-1] if texts else ""})
    data = (b"\xef\xbb\xbf" if bom else b"") + newline.join(map(_line, lines)) + newline
    expected = "".join(t + "\n\n" for t in texts if t)
    with _Catching() as log:
        assert spoken(data, cuts_for(draw, len(data))) == expected
    assert not _crashes(log)


@given(st.sampled_from(sorted(CAPTURE_BYTES)), st.booleans(), st.data())
def test_reader_gives_the_same_text_for_a_capture_however_it_is_split(name, tools, draw):
    data = CAPTURE_BYTES[name]
    by_line = "".join(claude.parse_stream_json(data.splitlines(), tools=tools))
    assert spoken(data, cuts_for(draw, len(data), most=200), tools=tools) == by_line


def test_reader_captures_fed_one_byte_at_a_time():
    for name, data in CAPTURE_BYTES.items():
        assert spoken(data, list(range(len(data)))) == spoken(data), name


def _normalized(text: str) -> str:
    return " ".join(text.replace(CUE_NO_RESULT, " ").split())


def test_reader_captures_cut_at_every_byte_offset(monkeypatch):
    """A stream that stops anywhere (the writer killed) says a prefix of what the whole says, then at
    most the "ended without a result" cue; nothing raises."""
    crashes: list[str] = []

    def warning(msg, *args, exc_info=None, **kwargs):  # 100,000 cut lines: only the crashes matter here
        if exc_info:
            crashes.append(msg % args)

    monkeypatch.setattr(claude.logger, "warning", warning)
    offsets = 0
    for name, data in CAPTURE_BYTES.items():
        whole_fed, whole_finished = read_all(data)
        whole = _normalized(whole_fed + whole_finished)
        reader = StreamJsonReader()
        fed = ""
        for k in range(len(data) + 1):
            if k:
                fed += "".join(_pieces(reader.feed(data[k - 1:k])))
            assert whole_fed.startswith(fed), (name, k)
            cut = pickle.loads(pickle.dumps(reader))  # the stream ends here (a copy: the reader goes on)
            said = _normalized(fed + "".join(_pieces(cut.finish())))
            assert whole.startswith(said), (name, k, said[-80:])
            offsets += 1
    assert offsets == sum(len(d) + 1 for d in CAPTURE_BYTES.values())
    assert not crashes, crashes


# == iter_text (the CLI's and the service's input path) ===============================================

@given(junk_bytes, st.sampled_from(["text", "stream-json"]), st.data())
def test_iter_text_survives_any_bytes_in_a_given_format(data, fmt, draw):
    stream = Reads(data, cuts_for(draw, len(data)))
    try:
        out = "".join(_pieces(list(iter_text(stream, fmt))))
    except BinaryInput as err:  # stream-json refuses what looks binary (only --format text speaks it)
        assert fmt == "stream-json" and binary_reason(data[:BINARY_SAMPLE]) is not None, err
        return
    if fmt == "text":  # text is decoded whole, whatever the reads cut through (multi-byte characters too)
        assert out == data.decode("utf-8", "replace")
    else:
        assert out == spoken(data)


@given(junk_bytes, st.data())
def test_iter_text_auto_on_any_bytes_answers_or_refuses_clearly(data, draw):
    try:
        list(iter_text(Reads(data, cuts_for(draw, len(data))), "auto"))
    except ValueError as err:  # a refusal (binary input) must say why
        assert str(err).strip()


@given(st.sampled_from(sorted(CAPTURE_BYTES)), st.data())
def test_iter_text_auto_detects_captures_however_they_are_split(name, draw):
    data = CAPTURE_BYTES[name]
    out = "".join(iter_text(Reads(data, cuts_for(draw, len(data), most=200)), "auto"))
    assert out == spoken(data)


@given(st.sampled_from(sorted(CAPTURE_BYTES)), st.data())
def test_iter_text_auto_never_reads_json_aloud_when_the_input_starts_mid_line(name, draw):
    data = CAPTURE_BYTES[name]
    last_line = data.rstrip(b"\n").rfind(b"\n")
    start = draw.draw(st.integers(1, max(1, last_line)), label="start")
    out = "".join(iter_text(Reads(data[start:], cuts_for(draw, len(data) - start)), "auto"))
    assert '"type"' not in out and '":"' not in out, out[:120]


# == bad lines: invalid UTF-8, NUL bytes, 10 MB lines, deep nesting ===================================

def _assistant(text: str) -> bytes:
    return _line({"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}}) + b"\n"


@given(st.text(min_size=1, max_size=40).filter(str.strip), st.lists(st.integers(0x80, 0xFF), min_size=1, max_size=4),
       st.data())
def test_reader_salvages_a_line_with_invalid_utf8_in_its_text(text, junk, draw):
    bad = bytes(junk) if not _is_utf8(bytes(junk)) else b"\xff" + bytes(junk)
    data = _assistant(text).replace(b'"text": "', b'"text": "' + bad, 1)
    assert bad in data
    with _Catching() as log:
        said = spoken(data, cuts_for(draw, len(data)))
    assert "\ufffd" in said and text in said and CUE_NO_RESULT in said
    assert not _crashes(log)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_nul_bytes_between_inside_and_escaped():
    data = (b"\x00\x00\n" + _assistant("one\x00two")  # an escaped NUL in the text is kept
            + b'{"type":"assistant","message":{"content":[{"type":"text","text":"raw\x00nul"}]}}\n'  # invalid JSON
            + b"\x00" + _assistant("three"))  # a NUL before a line: not JSON
    with _Catching() as log:
        said = spoken(data)
    assert said.startswith("one\x00two\n\n") and "raw" not in said and "three" not in said
    assert not _crashes(log)


def test_a_10_mb_text_line_is_spoken_whole_from_64_kb_reads():
    text = ("All good here. " * (10 * MB // 15 + 1))[: 10 * MB]
    data = _assistant(text)
    started = time.perf_counter()
    fed, finished = read_all(data, list(range(0, len(data), 65536)))
    assert fed == text + "\n\n" and finished == CUE_NO_RESULT + "\n\n"
    assert time.perf_counter() - started < 10


def test_a_10_mb_junk_line_is_skipped_and_the_next_line_spoken():
    data = b"\xfe{" * (5 * MB) + b"\n" + _assistant("after the junk")
    fed, _ = read_all(data, list(range(0, len(data), 65536)))
    assert fed == "after the junk\n\n"


def test_a_line_over_the_limit_is_dropped_with_bounded_memory(monkeypatch):
    monkeypatch.setattr(claude, "MAX_LINE_BYTES", MB)
    reader = StreamJsonReader()
    biggest = 0
    for _ in range(10 * 16):  # 10 MB with no newline, in 64 KB reads
        assert reader.feed(b"x" * 65536) == []
        biggest = max(biggest, len(reader._buffer))
    assert biggest <= MB
    assert reader.feed(b"tail of the long line\n" + _assistant("next")) == ["next\n\n"]


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_skipped(depth):
    nests = [b"[" * depth + b"]" * depth,
             b'{"a":' * depth + b"1" + b"}" * depth,
             _line({"type": "assistant", "message": {"content": [{"type": "text", "text": "deep"}]}})[:-2]
             + b',"x":' + b"[" * depth + b"]" * depth + b"}}",
             b"[" * depth]  # never closed
    data = b"\n".join(nests) + b"\n" + _assistant("still here")
    with _Catching() as log:
        said = spoken(data, list(range(0, len(data), 4096)))
    assert said.endswith("still here\n\n" + CUE_NO_RESULT + "\n\n")
    assert not _crashes(log)


# == the chunker ====================================================================================

@given(chunk_text, st.sampled_from(["en", "ja"]), st.sampled_from([20, 40, 200]), st.data())
def test_chunks_do_not_depend_on_how_the_text_is_cut(text, lang, max_chars, draw):
    whole = chunk(text, lang=lang, max_chars=max_chars)
    assert chunk(text, cuts_for(draw, len(text), most=40), lang=lang, max_chars=max_chars) == whole
    # One character at a time: the hardest cut of all.
    assert chunk(text, list(range(len(text))), lang=lang, max_chars=max_chars) == whole


@given(chunk_text, st.sampled_from(["en", "ja"]), st.sampled_from([20, 40, 200]))
def test_chunks_are_the_input_itself_stripped_and_capped(text, lang, max_chars):
    chunks = chunk(text, lang=lang, max_chars=max_chars)
    assert _visible("".join(chunks)) == _visible(text)  # nothing lost, nothing added, in order
    pos = 0
    for c in chunks:
        assert c.strip(), chunks
        found = text.find(c, pos)  # each chunk is a slice of the input, after the one before
        assert found >= 0, (c, text)
        pos = found + len(c)
        assert c == c.rstrip(), c
        if is_code_block(c) or c[0].isspace():
            continue  # code blocks are never split, and an indented one keeps its indentation
        assert c == c.lstrip(), c
        # The cap cuts a run without spaces at 3 x max_chars, once the punctuation being looked
        # at (up to _SCAN_LIMIT characters: "!!!!", "...") is passed.
        assert len(c) <= 3 * max_chars + chunking._SCAN_LIMIT, (len(c), c[:80])


def test_every_indented_chunk_is_recognised_as_code():
    chunks = chunk(" \tresult = compute(a, b); store(result)\n")
    assert chunks == [" \tresult = compute(a, b); store(result)"]  # kept indented: the chunker took it as code
    assert is_code_block(chunks[0])
    assert speakable(chunks[0]) == "code block"


@given(chunk_text, chunk_text, st.sampled_from(["en", "ja"]))
def test_a_flushed_chunker_is_as_good_as_a_new_one(first, second, lang):
    chunker = SentenceChunker(lang=lang)
    chunk(first, chunker=chunker)
    assert chunk(second, chunker=chunker) == chunk(second, lang=lang)


@given(st.one_of(chunk_text, st.text()), st.sampled_from(["en", "ja"]), st.sampled_from(["cue", "skip", "read"]))
def test_speakable_returns_clean_text_for_anything(text, lang, code):
    said = speakable(text, lang=lang, code=code)
    assert isinstance(said, str)
    assert said == said.strip() and "  " not in said
    assert not any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for ch in said), repr(said)


def test_a_one_line_code_block_read_aloud_has_its_whitespace_collapsed():
    # Found by test_speakable_returns_clean_text_for_anything: "\tHello\tHello" was said with its tab.
    assert speakable("\tnpm\t  test") == "npm test"
    assert speakable("```\nmake   all\n```") == "make all"


def test_chunker_refuses_non_text_clearly():
    with pytest.raises(TypeError, match="takes str"):
        SentenceChunker().feed(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes str"):
        speakable(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_chars"):
        SentenceChunker(max_chars=5)


@pytest.mark.parametrize("kind", ["one word", "no punctuation"])
def test_10_mb_without_a_sentence_end_is_cut_with_bounded_memory(kind):
    unit = "a" * 1000 if kind == "one word" else "word " * 200
    chunker = SentenceChunker(max_chars=200)
    longest = held = count = 0
    started = time.perf_counter()
    piece = unit * 64
    rounds = 10 * MB // len(piece)
    for _ in range(rounds):
        for c in chunker.feed(piece):
            longest, count = max(longest, len(c)), count + 1
        held = max(held, len(chunker.pending))
    for c in chunker.flush():
        longest, count = max(longest, len(c)), count + 1
    assert longest <= 600 and held <= 600 and count >= rounds * len(piece) // 600
    assert time.perf_counter() - started < 30
