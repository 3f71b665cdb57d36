"""The streaming pipeline: text pieces in, audio out, every stage on its own thread.

::

    feed(piece) -> chunker -> [text q] -> translate worker -> [voice q] -> voice worker -> [audio q] -> sink worker

The chunker runs in the caller's thread inside ``feed``; each arrow is a bounded ``queue.Queue``, so a
slow stage pushes back on the ones before it and ``feed`` blocks only when everything is full. Items
carry a sequence number and a *generation*: ``cancel()`` bumps the generation, and every stage drops
items of an older one without working on them. ``flush()`` sends a barrier down the queues and waits
for it to reach the end; ``close()`` sends the end-of-stream sentinel the same way.

The translator and the voice are called only from their own worker thread: MLX arrays are bound to
the thread that built them, so those stages hand over Python strings and numpy arrays only.

Pacing for the listener: the voice trims its own silence, and the voice worker puts ``sentence_gap``
seconds of silence before a sentence whose audio is ready while the previous one still plays (when
playback has run dry, that silence has already been heard: only the rest of the gap is added).
With ``early_start``, a long sentence that arrives while nothing is queued or playing is not waited
for: its first clause (``chunking.clause_head``) goes ahead as a *head* part, and the rest follows as
its *tail* part, joined with the shorter ``clause_gap``. Each part is an item of its own (its own
sequence number, events and timing, ``part="head"`` / ``"tail"``); a whole sentence has ``part=None``.
While speech is queued or playing, sentences wait for their end as before (a whole sentence
translates better).

A stage that is stuck does not hold up the end of a cancelled pipeline: when ``close()`` finds that only
cancelled work stands between it and the end (nothing fed since ``cancel()`` is waiting), it gives that
work ``ABANDON_AFTER`` seconds, then abandons the call in progress: the worker thread is left to
finish it as a daemon, its result is dropped, and the thread ends (releasing its MLX streams) as soon
as the call returns. Each stage object (translator, voice) is called by one thread at a time, across
pipelines too: a later pipeline given the same voice waits for the abandoned call to return before it
uses the voice (MLX models are not to be driven from two threads at once).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .threads import release_thread_streams
from .audio import NullSink
from .claude import is_error_text
from .g2p_ja import describe_unsupported, unsupported_words
from .chunking import SentenceChunker, code_cue, is_code_block, speakable
from .types import SAMPLE_RATE, SinkLike, TranslatorLike, VoiceLike

logger = logging.getLogger(__name__)

#: Event stages, in the order a sentence goes through them.
STAGES = ("fed", "chunked", "translated", "first_audio", "done", "skipped", "error")
#: What a sentence started early is cut into (``Event.part``, ``SentenceTiming.part``): one or more
#: heads (each the first clause of what remained), then the tail. A whole sentence has ``part=None``.
PARTS = ("head", "tail")
_TERMINAL = ("done", "skipped", "error")
#: Seconds ``close()`` waits for cancelled work before it abandons the stage call still running.
ABANDON_AFTER = 0.15
_TICK = 0.05  # how often a wait that may have to give up looks again


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to one sentence.

    Attributes:
        seq: the sentence's sequence number (0, 1, ... in the order fed).
        stage: one of ``STAGES``.
        t: ``time.perf_counter()`` when it happened.
        text: the source sentence for ``fed``, ``chunked``, ``skipped`` and ``error``; the text that
            is spoken (translated, or the code cue) for ``translated``, ``first_audio`` and ``done``.
        error: for ``error``: the failing stage and the exception (``"translate: ValueError(...)"``);
            for ``skipped``: why.
        part: ``None`` for a whole sentence; ``"head"`` or ``"tail"`` for the parts of a sentence
            started early (see ``PARTS``): a tail's head is the item just before it (``seq - 1``).
        reported_error: the sentence is an error that the input reported (a piece fed as
            ``claude.ErrorText``: Claude Code's own error message, or a cue for one), not a failure
            of a stage here (that is ``stage == "error"``).
    """

    seq: int
    stage: str
    t: float
    text: str
    error: str | None = None
    part: str | None = None
    reported_error: bool = False


@dataclass(slots=True)
class SentenceTiming:
    """What happened to one sentence and when (``time.perf_counter()`` seconds; None = not reached).

    ``audio_seconds`` is what was handed to the sink for it, the pause before it included; ``pause`` is
    the silence the pipeline put before it (``sentence_gap`` or ``clause_gap``); ``part`` is None for a
    whole sentence and ``"head"`` / ``"tail"`` for the parts of one started early (as ``Event.part``);
    ``reported_error`` as ``Event.reported_error``.
    """

    seq: int
    source: str
    spoken: str | None = None
    fed: float | None = None
    chunked: float | None = None
    translated: float | None = None
    first_audio: float | None = None
    done: float | None = None
    skipped: str | None = None
    error: str | None = None
    audio_seconds: float = 0.0
    part: str | None = None
    pause: float = 0.0
    reported_error: bool = False

    @staticmethod
    def _diff(end: float | None, start: float | None) -> float | None:
        return None if end is None or start is None else end - start

    @property
    def chunk_latency(self) -> float | None:
        """From the sentence's first character fed to the sentence being cut."""
        return self._diff(self.chunked, self.fed)

    @property
    def translate_latency(self) -> float | None:
        """From chunked to translated (queueing included)."""
        return self._diff(self.translated, self.chunked)

    @property
    def first_audio_latency(self) -> float | None:
        """From chunked to its first audio handed to the sink."""
        return self._diff(self.first_audio, self.chunked)

    @property
    def fed_to_first_audio(self) -> float | None:
        """From its first character fed to its first audio handed to the sink."""
        return self._diff(self.first_audio, self.fed)

    @property
    def total(self) -> float | None:
        """From chunked to all its audio handed to the sink."""
        return self._diff(self.done, self.chunked)


class PipelineError(RuntimeError):
    """A pipeline worker died outside a per-sentence call (the cause is chained)."""


# -- items travelling through the queues ---------------------------------------------------------


@dataclass(slots=True)
class _Sentence:
    gen: int
    seq: int
    source: str
    part: str | None = None


@dataclass(slots=True)
class _Spoken:
    gen: int
    seq: int
    source: str
    text: str
    part: str | None = None


@dataclass(slots=True)
class _Audio:
    gen: int
    seq: int
    source: str
    text: str
    audio: np.ndarray | None  # None marks the end of the sentence
    failed: bool = False
    pause: bool = False  # silence the pipeline put before the sentence (not its first audio)


@dataclass(slots=True)
class _Barrier:
    reached: threading.Event
    warm: dict[str, float] | None = None  # Pipeline.warm(): each stage warms itself on the way


class _Stop:
    """End of stream: each worker passes it on and returns."""


_STOP = _Stop()


class Pipeline:
    """Streams text to speech through chunker, translator, voice and sink worker threads.

    Args:
        translator: translates sentences (``None``: speak the text as it is).
        voice: speaks sentences (``None``: chunk and translate only, e.g. for subtitles).
        sink: takes the audio (``None``: audio is produced and discarded).
        src_lang: translator source language code.
        tgt_lang: translator target language code.
        lang: language of the fed text, for sentence splitting and cleanup.
        speed: speech speed passed to the voice.
        code: what to say for a code block: ``"cue"`` (a short spoken cue in the voice's
            language), ``"skip"`` or ``"read"``.
        max_pending: sentences that may wait for translation before ``feed`` blocks.
        on_event: called with each :class:`Event`, from the thread where it happens (the caller's
            for ``fed``/``chunked``, a worker's for the rest): it must be quick and must not call
            back into the pipeline, or it stalls that stage. Its exceptions are logged.
        history: how many sentences ``timings()`` remembers (older ones are forgotten).
        max_batch: most sentences translated in one call when several are waiting.
        priority_lead: translation goes first: while the translator runs, the voice pauses between
            chunks as long as the audio it has made is more than this many seconds ahead of real-time
            playback (so the listener hears no gap). On a small CPU the two stages otherwise share
            the cores and the next sentence's translation, the wait a listener hears, takes ~2x as
            long. ``None``: never pause.
        sentence_gap: seconds of silence between two sentences spoken back to back (the voice trims
            its own). Put in only when the next sentence is ready while the previous one still plays;
            when playback ran dry, only what is left of the gap.
        clause_gap: the same between the parts of a sentence started early (a clause pause).
        early_start: when nothing is queued or playing, speak the first clause of a long sentence
            before its end has arrived (see the module docstring). Only with a voice.
        min_early_words: words the first clause needs before it may go ahead early (Japanese
            input, ``lang="ja"``: twice as many characters).
        cue_lang: the language of the cues (a code block): by default the voice's, else the
            translation's, else the text's (a dry run without a voice passes the voice's).

    Use as a context manager to ``close()`` on exit (``cancel()`` first if an exception, such as
    KeyboardInterrupt, is leaving the block).
    """

    def __init__(
        self,
        translator: TranslatorLike | None = None,
        voice: VoiceLike | None = None,
        sink: SinkLike | None = None,
        *,
        src_lang: str = "eng_Latn",
        tgt_lang: str = "jpn_Jpan",
        lang: str = "en",
        speed: float = 1.0,
        code: str = "cue",
        max_pending: int = 64,
        on_event: Callable[[Event], None] | None = None,
        history: int = 1000,
        max_batch: int = 8,
        priority_lead: float | None = 0.5,
        sentence_gap: float = 0.2,
        clause_gap: float = 0.1,
        early_start: bool = True,
        min_early_words: int = 8,
        cue_lang: str | None = None,
    ) -> None:
        if code not in ("cue", "skip", "read"):
            raise ValueError(f"code must be 'cue', 'skip' or 'read', got {code!r}")
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        for name, value in (("max_pending", max_pending), ("history", history), ("max_batch", max_batch)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.translator = translator
        self.voice = voice
        self.sink: SinkLike = sink if sink is not None else NullSink()
        self.src_lang, self.tgt_lang, self.lang = src_lang, tgt_lang, lang
        self.speed = speed
        self.code = code
        self.max_batch = max_batch
        self.on_event = on_event
        self.history = history
        if priority_lead is not None and priority_lead < 0:
            raise ValueError(f"priority_lead must be >= 0 or None, got {priority_lead}")
        self.priority_lead = priority_lead
        for name, value in (("sentence_gap", sentence_gap), ("clause_gap", clause_gap)):
            if not 0 <= value <= 10:
                raise ValueError(f"{name} must be within 0 and 10 seconds, got {value}")
        if min_early_words < 1:
            raise ValueError(f"min_early_words must be >= 1, got {min_early_words}")
        self.sentence_gap, self.clause_gap = float(sentence_gap), float(clause_gap)
        self.early_start, self.min_early_words = bool(early_start), int(min_early_words)
        # The code cue is said in the language that is spoken (code_cue() takes "ja" or "jpn_Jpan").
        self._cue_lang = cue_lang or (voice.lang if voice is not None else tgt_lang if translator is not None else lang)
        self._sample_rate = int(getattr(voice, "sample_rate", SAMPLE_RATE))
        # One thread at a time in each stage object, across pipelines (see the module docstring).
        self._locks = {"translate": _stage_lock(translator), "voice": _stage_lock(voice)}

        self._text_q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._voice_q: queue.Queue = queue.Queue(maxsize=max(2, max_batch))
        self._audio_q: queue.Queue = queue.Queue(maxsize=16)

        self._feed_lock = threading.Lock()  # the chunker and sequence numbers
        self._chunker = SentenceChunker(lang=lang)
        self._chunker_gen = 0
        self._next_seq = 0
        self._pending_since: float | None = None  # when the chunker's held text began arriving
        self._tail_next = False  # the chunker's next chunk is the tail of a sentence started early
        self._open: dict[int, int] = {}  # seq -> gen of each item queued and not yet done/skipped/failed
        self._parts: dict[int, str] = {}  # seq -> part, while open
        self._reported: set[int] = set()  # seqs of errors the input reported (ErrorText), while open
        self._last_voiced: tuple[int, int, str | None] = (-1, -1, None)  # (gen, seq, part), voice thread

        self._gen = 0  # bumped by cancel(); read without a lock (an int read is atomic)
        self._sink_lock = threading.Lock()  # the sink worker's check-then-write vs. cancel()
        self._sink_opened = False
        self._timing_lock = threading.Lock()
        self._timings: OrderedDict[int, SentenceTiming] = OrderedDict()
        self._crash: BaseException | None = None
        self._crash_stage = ""
        self._closed = False
        self._close_lock = threading.Lock()
        self._quit = threading.Event()  # set by close(): workers return at their next step
        self._in_call: dict[str, float] = {}  # stage -> since when its worker is inside a stage call
        self._sink_close_owed = False  # close() could not close the sink: the sink worker does it
        self._sink_closed = False
        self._translator_idle = threading.Event()  # cleared while the translator runs
        self._translator_idle.set()
        self._play_end = 0.0  # when the audio made so far would end, played in real time (voice thread)
        self.voice_paused = 0.0  # seconds the voice waited for the translator (a statistic)

        self._threads = [
            threading.Thread(target=self._run, args=(name, loop, inq, outq), name=f"mlx_stream_tts-{name}", daemon=True)
            for name, loop, inq, outq in (
                ("translate", self._translate_loop, self._text_q, self._voice_q),
                ("voice", self._voice_loop, self._voice_q, self._audio_q),
                ("sink", self._sink_loop, self._audio_q, None),
            )
        ]
        for thread in self._threads:
            thread.start()

    # -- public API ----------------------------------------------------------------------------

    def feed(self, text: str) -> None:
        """Add a piece of text (any size, cut anywhere); complete sentences go on at once.

        Blocks only while ``max_pending`` sentences wait for translation (back-pressure).

        Raises:
            RuntimeError: after ``close()``.
            TypeError: when ``text`` is not a string.
        """
        if not isinstance(text, str):
            raise TypeError(f"feed() takes str, got {type(text).__name__}")
        if self._closed:
            raise RuntimeError("the pipeline is closed")
        if not text:
            return
        with self._feed_lock:
            gen = self._sync_chunker()
            now = time.perf_counter()
            if is_error_text(text):
                # An error the input reports is a paragraph of its own: what came before goes on as
                # itself, then each of its sentences, marked (and never started early).
                self._queue_sentences(self._chunker.flush(), gen, now)
                self._pending_since = now
                self._queue_sentences(self._chunker.feed(text) + self._chunker.flush(), gen, now, reported=True)
                self._pending_since = None
                return
            if self._pending_since is None and not text.isspace():
                self._pending_since = now
            sentences = self._chunker.feed(text)
            if sentences:
                self._queue_sentences(sentences, gen, now)
            head = self._chunker.split_head(self.min_early_words) if self._may_start_early() else None
            if head:
                self._queue_sentences([head], gen, now, head=True)
            if sentences or head:
                # What the chunker still holds began in this piece (or, rarely, slightly earlier).
                self._pending_since = now if self._chunker.pending.strip() else None

    def flush(self) -> None:
        """Release the text the chunker holds and wait until everything fed so far reached the sink.

        Raises:
            The exception of a worker that died outside a per-sentence call.
        """
        if self._closed:
            self._raise_crash()
            return
        self._release_held()
        self._wait_barrier()
        self._raise_crash()

    def close(self) -> None:
        """Flush, let the workers finish, and close the sink. Idempotent.

        After ``cancel()`` (nothing fed since is waiting) it returns within about ``ABANDON_AFTER`` +
        0.1 s (0.25 s) even when a stage call is stuck: that call is abandoned (see the module docstring) and
        logged once as a warning.

        Raises:
            The exception of a worker that died outside a per-sentence call.
        """
        with self._close_lock:
            if self._closed:
                return
            reached = False
            try:
                self._release_held()
                reached = self._wait_barrier(may_abandon=True)
                self._raise_crash()
            except BaseException as err:
                if err is not self._crash:
                    self.cancel()  # interrupted (Ctrl-C) while waiting for the audio: stop it now
                raise
            finally:
                self._closed = True
                self._stop_workers(patient=reached)

    def cancel(self) -> None:
        """Drop everything pending in every stage and the sink's buffer; audio stops at once.

        The pipeline stays usable: text fed afterwards is spoken as usual. Work already inside a
        model call (one translation batch, one audio chunk) finishes in the background and is dropped.
        """
        if self._closed:
            return
        self._gen += 1
        with self._timing_lock:
            self._open.clear()
            self._parts.clear()
            self._reported.clear()
        # The first abort unblocks a write waiting for buffer space; the second, once the sink
        # worker has let go of the sink, drops anything it wrote between its check and the abort.
        # A write that the abort did not unblock (a hung device) keeps the lock: then cancel() does not
        # wait for it (close() abandons it).
        if self._sink_opened:
            self.sink.abort()
        if self._sink_lock.acquire(timeout=_TICK):
            try:
                if self._sink_opened:
                    self.sink.abort()
            finally:
                self._sink_lock.release()

    def warm(self) -> dict[str, float]:
        """Warms the stages before the first text: each one that has a ``warm()`` method runs it once, on
        the worker thread that will use it (kernels built, caches primed). Blocks until done.

        Returns:
            Seconds each stage took (``"translate"``, ``"voice"``), for those that have ``warm()``.

        Raises:
            RuntimeError: after ``close()``.
            The exception of a worker that died outside a per-sentence call.
        """
        if self._closed:
            raise RuntimeError("the pipeline is closed")
        spent: dict[str, float] = {}
        self._wait_barrier(warm=spent)
        self._raise_crash()
        return dict(spent)

    def timings(self) -> list[SentenceTiming]:
        """Per-sentence times of the last ``history`` sentences, oldest first (copies)."""
        with self._timing_lock:
            return [dataclasses.replace(t) for t in self._timings.values()]

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
            return False
        self.cancel()
        try:
            self.close()
        except Exception:
            logger.exception("while closing the pipeline after %s", exc_type.__name__)
        return False

    # -- feeding (caller's thread) ---------------------------------------------------------------

    def _release_held(self) -> None:
        """Queue the text the chunker holds as the last sentence(s)."""
        with self._feed_lock:
            gen = self._sync_chunker()
            now = time.perf_counter()
            sentences = self._chunker.flush()
            if sentences:
                self._queue_sentences(sentences, gen, now)
            self._pending_since = None

    def _sync_chunker(self) -> int:
        # Called with _feed_lock held: text held back from before a cancel() is dropped.
        gen = self._gen
        if gen != self._chunker_gen:
            self._chunker = SentenceChunker(lang=self.lang)
            self._chunker_gen = gen
            self._pending_since = None
            self._tail_next = False  # the rest of a sentence started early went with the old chunker
        return gen

    def _queue_sentences(self, sentences: list[str], gen: int, now: float, head: bool = False,
                         reported: bool = False) -> None:
        for i, source in enumerate(sentences):
            seq = self._next_seq
            self._next_seq += 1
            fed = self._pending_since if i == 0 and self._pending_since is not None else now
            part = "head" if head else "tail" if i == 0 and self._tail_next else None
            if i == 0:
                self._tail_next = head
            with self._timing_lock:
                self._timings[seq] = SentenceTiming(seq=seq, source=source, fed=fed, chunked=now, part=part,
                                                    reported_error=reported)
                while len(self._timings) > self.history:
                    self._timings.popitem(last=False)
                if part is not None:
                    self._parts[seq] = part
                if reported:
                    self._reported.add(seq)
                self._open[seq] = gen
            self._emit(seq, "fed", source, t=fed)
            self._emit(seq, "chunked", source, t=now)
            if gen != self._gen:
                continue  # cancelled while we were blocked on the queue: drop the rest
            self._put(self._text_q, _Sentence(gen, seq, source, part))

    def _may_start_early(self) -> bool:
        """Early start is on and nothing is queued, in a stage, or still playing (by real time)."""
        if not self.early_start or self.voice is None:
            return False
        gen = self._gen
        with self._timing_lock:
            if any(g == gen for g in self._open.values()):
                return False
        return time.perf_counter() >= self._play_end

    # -- events and timings ------------------------------------------------------------------

    def _emit(self, seq: int, stage: str, text: str, error: str | None = None, t: float | None = None, **fields) -> None:
        t = time.perf_counter() if t is None else t
        with self._timing_lock:
            part = self._parts.get(seq)
            reported = seq in self._reported
            if stage in _TERMINAL:
                self._parts.pop(seq, None)
                self._open.pop(seq, None)
                self._reported.discard(seq)
            timing = self._timings.get(seq)
            if timing is not None:
                if stage in ("translated", "first_audio", "done"):
                    setattr(timing, stage, t)
                if stage == "error":
                    timing.error = error
                elif stage == "skipped":
                    timing.skipped = error
                for key, value in fields.items():
                    setattr(timing, key, value)
        if self.on_event is not None:
            try:
                self.on_event(Event(seq, stage, t, text, error, part, reported))
            except Exception:
                logger.exception("on_event callback failed on %s event of sentence %d", stage, seq)

    def _fail(self, seq: int, stage: str, source: str, err: BaseException) -> None:
        debug = logger.isEnabledFor(logging.DEBUG)
        logger.error("sentence %d: %s failed on %r: %r", seq, stage, _short(source), err, exc_info=err if debug else None)
        self._emit(seq, "error", source, error=f"{stage}: {err!r}")

    # -- workers ---------------------------------------------------------------------------------

    def _run(self, name: str, loop: Callable[[], None], inq: queue.Queue, outq: queue.Queue | None) -> None:
        try:
            loop()
        except BaseException as err:
            logger.exception("the %s worker crashed", name)
            if self._crash is None:
                self._crash, self._crash_stage = err, name
            self._drain_after_crash(name, inq, outq)
        finally:
            release_thread_streams()  # MLX models ran here: free this thread's streams before it ends

    def _drain_after_crash(self, name: str, inq: queue.Queue, outq: queue.Queue | None) -> None:
        # Keep the queues moving so that feed() never blocks forever and barriers still arrive;
        # every sentence lost here is reported.
        while True:
            item = inq.get()
            if isinstance(item, _Stop) or self._quit.is_set():
                return
            if isinstance(item, _Barrier):
                if outq is not None:
                    self._put(outq, item)
                else:
                    item.reached.set()
                continue
            ended = isinstance(item, _Audio) and item.audio is None and not item.failed
            if isinstance(item, _Sentence | _Spoken) or ended:
                if item.gen == self._gen:
                    self._emit(item.seq, "error", item.source, error=f"{name}: worker crashed earlier")

    def _pass_control(self, item: object, outq: queue.Queue, stage: str = "") -> bool:
        """Forward a barrier (warming this worker's stage first if asked); True when the worker must stop
        (the sentinel, or ``close()`` under way)."""
        if isinstance(item, _Stop) or self._quit.is_set():
            return True
        if isinstance(item, _Barrier) and item.warm is not None and stage:
            self._warm_stage(stage, item.warm)
        self._put(outq, item)
        return False

    def _put(self, q: queue.Queue, item: object) -> bool:
        """``q.put(item)``, blocking while the queue is full, unless ``close()`` gives up on the workers
        meanwhile (False: the item was not queued)."""
        while True:
            try:
                q.put(item, timeout=_TICK if self._quit.is_set() else 1.0)
                return True
            except queue.Full:
                if self._quit.is_set():
                    return False

    def _enter(self, stage: str, gen: int | None = None) -> bool:
        """Take the stage object's lock before calling into it; False (not taken) when ``cancel()`` made
        the work stale (``gen``) or ``close()`` gave up while an earlier pipeline's abandoned call held it."""
        lock = self._locks.get(stage)
        if lock is not None and not lock.acquire(blocking=False):
            logger.warning("the %s is still inside a call abandoned by an earlier pipeline; waiting for it", stage)
            while not lock.acquire(timeout=_TICK):
                if self._quit.is_set() or (gen is not None and gen != self._gen):
                    return False
        self._in_call[stage] = time.perf_counter()
        return True

    def _leave(self, stage: str) -> None:
        self._in_call.pop(stage, None)
        lock = self._locks.get(stage)
        if lock is not None:
            lock.release()

    def _warm_stage(self, stage: str, spent: dict[str, float]) -> None:
        model = self.translator if stage == "translate" else self.voice
        warm = getattr(model, "warm", None)
        if not callable(warm) or not self._enter(stage):
            return
        started = time.perf_counter()
        try:
            warm(self.src_lang, self.tgt_lang) if stage == "translate" else warm()
        except Exception:  # a failed warm-up costs the first sentence some time, nothing more
            logger.exception("warming the %s stage failed", stage)
        finally:
            self._leave(stage)
        spent[stage] = time.perf_counter() - started

    def _translate_loop(self) -> None:
        while True:
            item = self._text_q.get()
            if not isinstance(item, _Sentence) or self._quit.is_set():
                if self._pass_control(item, self._voice_q, "translate"):
                    return
                continue
            batch, control = [item], None
            if self.translator is not None:
                # Behind: take what is already waiting, up to max_batch, in one model call.
                while len(batch) < self.max_batch:
                    try:
                        nxt = self._text_q.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(nxt, _Sentence):
                        control = nxt
                        break
                    batch.append(nxt)
            self._translate_batch(batch)
            if control is not None and self._pass_control(control, self._voice_q, "translate"):
                return

    def _prepare(self, item: _Sentence) -> tuple[str, bool] | None:
        """(text to say, needs translation) for one sentence, or None when there is nothing to say."""
        code = is_code_block(item.source)
        if code and self.code == "skip":
            self._emit(item.seq, "skipped", item.source, error="code block")
            return None
        if code and self.code == "cue":
            # A short one-line block (a command's output, a name) is read as it is, as speakable() does;
            # any other block is the cue, in the language that is spoken.
            said = speakable(item.source, self.lang, code="cue")
            if not said.strip() or said == code_cue(self.lang):
                return code_cue(self._cue_lang), False
            return said, False
        # Code read aloud is not translated either: a translation model garbles it.
        text = speakable(item.source, self.lang, code=self.code)
        if not text.strip():
            self._emit(item.seq, "skipped", item.source, error="nothing to say")
            return None
        if item.part == "head":
            text = _as_clause(text, self.lang)  # cleanup drops a trailing comma: the clause goes on
        return text, self.translator is not None and not code

    def _translate_batch(self, batch: list[_Sentence]) -> None:
        prepared: list[tuple[_Sentence, str, bool]] = []
        for item in batch:
            if item.gen != self._gen:
                continue
            try:
                ready = self._prepare(item)
            except Exception as err:  # a cleanup bug on one odd sentence must not stop the stream
                self._fail(item.seq, "speakable", item.source, err)
                continue
            if ready is not None:
                prepared.append((item, *ready))
        todo = [(item, text) for item, text, needs in prepared if needs]
        results: dict[int, str | BaseException] = {}
        if todo:
            results = self._translate_many(todo)
        for item, text, needs in prepared:
            if item.gen != self._gen:
                continue
            if needs:
                result = results[item.seq]
                if isinstance(result, BaseException):
                    self._fail(item.seq, "translate", item.source, result)
                    continue
                text = result
                if not text.strip():
                    logger.warning("sentence %d: the translator gave nothing for %r; skipped", item.seq, _short(item.source))
                    self._emit(item.seq, "skipped", item.source, error="empty translation")
                    continue
            if item.part == "head":
                # Said as a clause that goes on (rising, not falling as at a sentence end).
                text = _as_clause(text, self._cue_lang)
            self._emit(item.seq, "translated", text, spoken=text)
            if not self._put(self._voice_q, _Spoken(item.gen, item.seq, item.source, text, item.part)):
                return

    def _translate_many(self, todo: list[tuple[_Sentence, str]]) -> dict[int, str | BaseException]:
        texts = [text for _, text in todo]
        try:
            out = self._call_translator(texts, todo[0][0].gen)
        except _Dropped:
            return {item.seq: "" for item, _ in todo}
        except Exception as err:
            if len(todo) == 1:
                return {todo[0][0].seq: err}
            # Find the sentence that fails: the others are still spoken.
            logger.warning("translating a batch of %d failed (%r); retrying one by one", len(todo), err)
            results: dict[int, str | BaseException] = {}
            for item, text in todo:
                if item.gen != self._gen:
                    results[item.seq] = ""
                    continue
                try:
                    results[item.seq] = self._call_translator([text], item.gen)[0]
                except _Dropped:
                    results[item.seq] = ""
                except Exception as one_err:
                    results[item.seq] = one_err
            return results
        return {item.seq: result for (item, _), result in zip(todo, out)}

    def _call_translator(self, texts: list[str], gen: int) -> list[str]:
        assert self.translator is not None
        if not self._enter("translate", gen):
            raise _Dropped
        self._translator_idle.clear()
        try:
            out = self.translator.translate(texts, self.src_lang, self.tgt_lang)
        finally:
            self._translator_idle.set()
            self._leave("translate")
        if not isinstance(out, list) or len(out) != len(texts) or not all(isinstance(s, str) for s in out):
            raise TypeError(f"translate() must return a list of {len(texts)} str, got {_describe(out)}")
        return out

    def _voice_loop(self) -> None:
        while True:
            item = self._voice_q.get()
            if not isinstance(item, _Spoken) or self._quit.is_set():
                if self._pass_control(item, self._audio_q, "voice"):
                    return
                continue
            if item.gen != self._gen:
                continue
            if self.voice is None:
                # Nothing to hand to a sink: the sentence is done once translated (subtitles only).
                self._emit(item.seq, "done", item.text)
                continue
            if not self._enter("voice", item.gen):
                continue
            failed = spoke = False
            chunks = None
            gap = self.clause_gap if self._continues(item) else self.sentence_gap
            self._last_voiced = (item.gen, item.seq, item.part)
            try:
                chunks = iter(self.voice.synthesize(item.text, self.speed))
                while True:
                    self._yield_to_translator(item.gen)
                    chunk = next(chunks, _END)  # synthesis runs here: generators compute lazily
                    if chunk is _END or item.gen != self._gen or self._quit.is_set():
                        break  # an abandoned call's result is dropped here
                    audio = _check_chunk(chunk)
                    if audio.size:
                        spoke = True
                        now = time.perf_counter()
                        if gap:
                            self._put_pause(item, gap, now)
                            gap = 0.0
                        self._play_end = max(self._play_end, now) + audio.shape[0] / self._sample_rate
                        if not self._put(self._audio_q, _Audio(item.gen, item.seq, item.source, item.text, audio)):
                            break
            except Exception as err:
                failed = True
                self._fail(item.seq, "voice", item.source, err)
            finally:
                try:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()  # stop a generator left early by cancel()
                finally:
                    self._leave("voice")
            if not (failed or spoke) and item.gen == self._gen and not self._quit.is_set():
                # The voice had nothing it could say (e.g. a script it cannot read): say so, and why.
                found = unsupported_words(item.text)
                why = f"nothing the voice can say: {describe_unsupported(found)}" if found else "nothing the voice can say"
                self._emit(item.seq, "skipped", item.source, error=why)
                failed = True  # its end-of-sentence mark then brings no "done" event
            self._put(self._audio_q, _Audio(item.gen, item.seq, item.source, item.text, None, failed=failed))

    def _continues(self, item: _Spoken) -> bool:
        """True when ``item`` goes on the sentence whose head was voiced just before it."""
        gen, seq, part = self._last_voiced
        return item.part in PARTS and part == "head" and (gen, seq) == (item.gen, item.seq - 1)

    def _put_pause(self, item: _Spoken, gap: float, now: float) -> None:
        """Silence before the first audio of ``item``: ``gap`` less what playback has already been silent."""
        if self._play_end <= 0.0:
            return  # nothing was played before
        seconds = gap - max(0.0, now - self._play_end)
        samples = int(round(seconds * self._sample_rate))
        if samples > 0:
            self._play_end = max(self._play_end, now) + samples / self._sample_rate
            silence = np.zeros(samples, np.float32)
            self._put(self._audio_q, _Audio(item.gen, item.seq, item.source, item.text, silence, pause=True))

    def _yield_to_translator(self, gen: int) -> None:
        """Wait while the translator runs and the audio already made covers the wait (see priority_lead)."""
        if self.priority_lead is None or self.translator is None:
            return
        start = time.perf_counter()
        while not self._translator_idle.is_set() and gen == self._gen:
            spare = self._play_end - time.perf_counter() - self.priority_lead
            if spare <= 0:
                break
            self._translator_idle.wait(timeout=min(spare, 0.05))  # short: notice cancel() too
        self.voice_paused += time.perf_counter() - start

    def _sink_loop(self) -> None:
        try:
            self._sink_items()
        finally:
            if self._sink_close_owed:  # close() found the sink inside a stuck write: close it now
                with self._sink_lock:
                    try:
                        self._close_sink()
                    except Exception:
                        logger.exception("closing the sink after its stuck write failed")

    def _sink_items(self) -> None:
        current = -1  # the sentence whose chunks are arriving
        samples = paused = 0
        failed = started = False
        while True:
            item = self._audio_q.get()
            if isinstance(item, _Stop) or self._quit.is_set():
                return
            if isinstance(item, _Barrier):
                item.reached.set()
                continue
            if item.gen != self._gen:
                continue
            if item.seq != current:
                current, samples, paused, failed, started = item.seq, 0, 0, False, False
            if item.audio is None:
                if not (failed or item.failed):
                    rate = self._sample_rate
                    self._emit(item.seq, "done", item.text, audio_seconds=samples / rate, pause=paused / rate)
                continue
            if failed:
                continue
            with self._sink_lock:
                if item.gen != self._gen or self._quit.is_set():
                    continue
                if not self._sink_opened:
                    self.sink.open(self._sample_rate)  # a failure here is fatal: no audio can go anywhere
                    self._sink_opened = True
                self._in_call["sink"] = time.perf_counter()
                try:
                    self.sink.write(item.audio)
                except Exception as err:
                    failed = True
                    self._fail(item.seq, "sink", item.source, err)
                    continue
                finally:
                    self._in_call.pop("sink", None)
            if item.pause:
                paused += item.audio.size
            elif not started:
                started = True
                self._emit(item.seq, "first_audio", item.text)
            samples += item.audio.size

    # -- waiting ---------------------------------------------------------------------------------

    def _wait_barrier(self, warm: dict[str, float] | None = None, may_abandon: bool = False) -> bool:
        """Send a barrier down the stages and wait for it to reach the end (True).

        With ``may_abandon`` (``close()``), give up (False) once only cancelled work has held it up for
        ``ABANDON_AFTER`` seconds: a stage stuck in a call of a cancelled sentence.
        """
        barrier = _Barrier(threading.Event(), warm)
        stale_since: float | None = None

        def give_up() -> bool:
            nonlocal stale_since
            if not all(t.is_alive() for t in self._threads):
                stage = f" (the {self._crash_stage} worker crashed first)" if self._crash is not None else ""
                raise PipelineError(f"a pipeline worker thread is gone{stage}") from self._crash
            if self._quit.is_set():
                raise RuntimeError("the pipeline was closed")
            if not may_abandon or self._current_work():
                stale_since = None
                return False
            now = time.perf_counter()
            stale_since = now if stale_since is None else stale_since
            return now - stale_since >= ABANDON_AFTER

        # The timeouts only let us notice workers that are gone or stuck; the barrier normally sets the event.
        tick = _TICK if may_abandon else 1.0
        while True:
            try:
                self._text_q.put(barrier, timeout=tick)
                break
            except queue.Full:
                if give_up():
                    return False
        while not barrier.reached.wait(timeout=tick):
            if give_up():
                return False
        return True

    def _current_work(self) -> bool:
        """True while a sentence fed since the last ``cancel()`` has not been done, skipped or failed."""
        gen = self._gen
        with self._timing_lock:
            return any(g == gen for g in self._open.values())

    def _stop_workers(self, patient: bool) -> None:
        """End the workers and close the sink. ``patient``: they are idle (the last barrier went through);
        else they get 0.05 s, and a worker still inside a stage call then is abandoned (a daemon thread
        that ends when the call returns; its result is dropped)."""
        self._quit.set()
        for q in (self._text_q, self._voice_q, self._audio_q):
            # Nothing queued matters any more; emptying the queue frees a worker blocked on putting into it.
            try:
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass
            try:
                q.put_nowait(_STOP)
            except queue.Full:
                pass  # refilled meanwhile: its worker has items to take and sees _quit at the next one
        deadline = time.perf_counter() + (5.0 if patient else 0.05)
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.perf_counter()))
        now = time.perf_counter()
        for name, thread in zip(("translate", "voice", "sink"), self._threads):
            if thread.is_alive():
                since = self._in_call.get(name)
                if since is not None:
                    logger.warning("abandoned a stuck %s call (running for %.1f s); its result is dropped",
                                   name, now - since)
                else:
                    logger.warning("%s did not stop; abandoned", thread.name)
        if not self._sink_lock.acquire(timeout=5.0 if patient else _TICK):
            # The sink worker is inside a stuck write: it closes the sink when the write returns (unless
            # it has just let go, which the second try sees).
            self._sink_close_owed = True
            if not self._sink_lock.acquire(blocking=False):
                return
        try:
            self._close_sink()
        finally:
            self._sink_lock.release()

    def _close_sink(self) -> None:
        # Called with _sink_lock held, by close() or by the sink worker: whichever comes first.
        if not self._sink_closed:
            self._sink_closed = True
            self.sink.close()

    def _raise_crash(self) -> None:
        if self._crash is not None:
            raise self._crash


_END = object()


class _Dropped(Exception):
    """A stage call not made: its sentence was cancelled, or the pipeline closed, while it waited."""


_locks_guard = threading.Lock()
_stage_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stage_lock(stage: object | None) -> threading.Lock | None:
    """The lock that lets one thread at a time into ``stage`` (shared by every pipeline given it);
    None for no stage, or one that cannot be weakly referenced (then unguarded)."""
    if stage is None:
        return None
    with _locks_guard:
        try:
            lock = _stage_locks.get(stage)
            if lock is None:
                lock = _stage_locks[stage] = threading.Lock()
        except TypeError:
            return None
    return lock


def _check_chunk(chunk: object) -> np.ndarray:
    audio = np.asarray(chunk, dtype=np.float32)
    if audio.ndim == 2 and 1 in audio.shape:
        audio = audio.reshape(-1)
    if audio.ndim != 1:
        raise ValueError(f"voice chunks must be mono 1-D audio, got shape {audio.shape}")
    if not np.isfinite(audio).all():
        logger.warning("voice produced non-finite samples; they are silenced")
        audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    return audio


_ENDS = ".。!！?？,、，;；:：…"


def _as_clause(text: str, lang: str) -> str:
    """``text`` ending in a clause comma of ``lang`` (Japanese 、, else ",") instead of a sentence end."""
    comma = "、" if lang.lower().startswith(("ja", "jpn")) else ","
    return text.rstrip().rstrip(_ENDS).rstrip() + comma


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _describe(value: object) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} ({', '.join(sorted({type(v).__name__ for v in value})) or 'empty'})"
    return type(value).__name__
