"""The streaming pipeline with fake stages: order, overlap, batching, cancel, errors, memory."""

from __future__ import annotations

import random
import threading
import time
import tracemalloc

import numpy as np
import pytest

from mlx_stream_tts.audio import NullSink
from mlx_stream_tts.chunking import code_cue
from mlx_stream_tts.chunking import speakable
from mlx_stream_tts.pipeline import Event
from mlx_stream_tts.pipeline import Pipeline as _Pipeline

from fakes import FakeTranslator, FakeVoice, RecordingSink, decode, encode, sentence_id


def Pipeline(*args, **kwargs) -> _Pipeline:  # noqa: N802 - stands in for the class in these tests
    """The pipeline without the listener's pacing (no silence between sentences, no early start): these
    tests check every chunk the sink gets. tests/test_early_start.py and tests/test_trim.py test the pacing."""
    kwargs.setdefault("sentence_gap", 0.0)
    kwargs.setdefault("early_start", False)
    return _Pipeline(*args, **kwargs)


def lines(ids) -> str:
    return "".join(f"Sentence {i} is here.\n" for i in ids)


def feed_in_pieces(p: Pipeline, text: str, seed: int = 0, max_piece: int = 40) -> None:
    rng = random.Random(seed)
    i = 0
    while i < len(text):
        n = rng.randint(1, max_piece)
        p.feed(text[i : i + n])
        i += n


class EventLog:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, stage: str) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.stage == stage]


def test_order_kept_nothing_lost_over_10000_sentences():
    n = 10_000
    log = EventLog()
    tr, voice, sink = FakeTranslator(), FakeVoice(chunks=3, chunk_len=4), RecordingSink()
    with Pipeline(tr, voice, sink, on_event=log, history=n) as p:
        feed_in_pieces(p, lines(range(n)))
    assert sink.received == [(i, j) for i in range(n) for j in range(3)]
    assert sink.closed and sink.opens == 1 and sink.sample_rate == 24_000
    # One of each event per sentence, for every sentence.
    for stage in ("fed", "chunked", "translated", "first_audio", "done"):
        assert sorted(e.seq for e in log.of(stage)) == list(range(n)), stage
    assert not log.of("error") and not log.of("skipped")
    assert [sentence_id(e.text) for e in log.of("done")] == list(range(n))
    assert sum(len(b) for b in tr.batches) == n
    # Stages ran on their own named threads.
    assert tr.threads == {"mlx_stream_tts-translate"}
    assert voice.threads == {"mlx_stream_tts-voice"} and sink.threads == {"mlx_stream_tts-sink"}
    timings = p.timings()
    assert len(timings) == n
    t = timings[17]
    assert t.source == "Sentence 17 is here." and t.spoken == "SENTENCE 17 IS HERE."
    assert t.fed <= t.chunked <= t.translated <= t.first_audio <= t.done
    assert t.first_audio_latency >= 0 and t.audio_seconds == pytest.approx(12 / 24_000)


def test_order_kept_with_real_chunker_small():
    sink = RecordingSink()
    with Pipeline(FakeTranslator(), FakeVoice(chunks=2, chunk_len=4), sink) as p:
        feed_in_pieces(p, lines(range(300)), seed=3, max_piece=7)
    assert sink.received == [(i, j) for i in range(300) for j in range(2)]


def test_stages_overlap():
    n, d = 16, 0.05
    tr = FakeTranslator(delay=d)
    voice = FakeVoice(chunks=1, chunk_len=4, delay=d)
    sink = RecordingSink(delay=d)
    with Pipeline(tr, voice, sink, max_batch=1) as p:
        t0 = time.perf_counter()
        p.feed(lines(range(n)))
        p.flush()
        wall = time.perf_counter() - t0
    assert sink.ids() == list(range(n))
    # Serial work would take 3*n*d = 2.4 s; pipelined about (n + 2) * d = 0.9 s.
    assert n * d <= wall < 0.6 * 3 * n * d, wall


class TimedTranslator(FakeTranslator):
    """Records when each translate call ran."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay=delay)
        self.spans: list[tuple[float, float]] = []

    def translate(self, texts, src_lang, tgt_lang):
        start = time.perf_counter()
        try:
            return super().translate(texts, src_lang, tgt_lang)
        finally:
            self.spans.append((start, time.perf_counter()))


class TimedVoice(FakeVoice):
    """Records when each chunk's computation started and ended."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.spans: list[tuple[float, float]] = []

    def synthesize(self, text, speed=1.0):
        inner = super().synthesize(text, speed)
        while True:
            start = time.perf_counter()
            chunk = next(inner, None)
            if chunk is None:
                return
            self.spans.append((start, time.perf_counter()))
            yield chunk


def _voice_during_second_translation(priority_lead, translate_delay):
    # Sentence 0 makes 16 chunks of 0.5 s audio at 0.04 s each; sentence 1 arrives once the voice is
    # ~2 s of audio ahead of real time, and its translation takes `translate_delay`.
    tr = TimedTranslator(delay=translate_delay)
    voice = TimedVoice(chunks=16, chunk_len=12_000, delay=16 * 0.04)
    log = EventLog()
    with Pipeline(tr, voice, NullSink(), priority_lead=priority_lead, on_event=log) as p:
        p.feed(lines([0]))
        deadline = time.perf_counter() + 5
        while not any(e.stage == "first_audio" for e in log.events) and time.perf_counter() < deadline:
            time.sleep(0.005)
        time.sleep(0.16)
        p.feed(lines([1]))
        p.flush()
        paused = p.voice_paused
    start, end = tr.spans[1]
    inside = [s for s in voice.spans if start + 0.01 < s[0] and s[1] < end]
    return inside, voice, paused


def test_voice_pauses_for_the_translator_while_its_audio_lasts():
    inside, voice, paused = _voice_during_second_translation(0.5, 0.3)
    assert len(voice.spans) == 32
    assert inside == [], inside  # no chunk computed while sentence 1 was being translated
    assert paused > 0.2
    # The control: without priority the voice keeps computing during the translation.
    inside, _, paused = _voice_during_second_translation(None, 0.3)
    assert len(inside) >= 3 and paused == 0.0


def test_voice_pause_ends_before_the_listener_would_hear_a_gap():
    # A 4 s translation outlasts the ~2 s of audio ahead: the voice must resume during it.
    inside, voice, paused = _voice_during_second_translation(0.5, 4.0)
    assert len(inside) >= 3 and paused > 1.0, (inside, paused)
    # Played in real time from its first chunk, sentence 0's audio never runs dry: each chunk is
    # ready before the audio made before it has finished playing.
    play_end = voice.spans[0][1]
    for _, ready in voice.spans[:16]:
        assert ready <= play_end + 0.05, (ready, play_end)
        play_end = max(play_end, ready) + 0.5


def test_batches_when_behind():
    tr = FakeTranslator(delay=0.02)
    sink = RecordingSink()
    with Pipeline(tr, FakeVoice(chunks=1, chunk_len=4), sink, max_batch=4) as p:
        p.feed(lines(range(40)))
    sizes = [len(b) for b in tr.batches]
    assert sum(sizes) == 40 and max(sizes) == 4 and all(1 <= s <= 4 for s in sizes)
    assert len(sizes) <= 15  # mostly full batches once behind
    assert sink.ids() == list(range(40))
    # A batch holds consecutive sentences, in order.
    flat = [sentence_id(t) for b in tr.batches for t in b]
    assert flat == list(range(40))


def test_no_batching_when_keeping_up():
    tr = FakeTranslator()
    with Pipeline(tr, FakeVoice(chunks=1, chunk_len=4), RecordingSink(), max_batch=8) as p:
        for i in range(5):
            p.feed(lines([i]))
            p.flush()
    assert [len(b) for b in tr.batches] == [1] * 5


def test_cancel_drops_pending_stops_quickly_and_pipeline_is_reusable():
    log = EventLog()
    sink = RecordingSink(block=True)  # like a device whose buffer is full: write waits
    voice = FakeVoice(chunks=4, chunk_len=4, delay=0.01)
    p = Pipeline(FakeTranslator(), voice, sink, on_event=log)
    p.feed(lines(range(50)))
    assert sink.writing.wait(5.0)  # the first chunk is at the "device"
    for _ in range(3):  # let a few chunks through
        sink.release()
        time.sleep(0.02)
    t0 = time.perf_counter()
    p.cancel()
    took = time.perf_counter() - t0
    assert took < 0.2, took
    assert sink.aborts >= 1
    spoken_before = len(sink.received)
    # Nothing of the cancelled text reaches the sink afterwards.
    time.sleep(0.3)
    assert len(sink.received) == spoken_before <= 4
    # Reusable: new text is spoken in full and in order.
    sink.block = False
    p.feed(lines(range(100, 105)))
    p.flush()
    assert sink.ids()[-5:] == list(range(100, 105))
    assert all(sid < 50 or sid >= 100 for sid in sink.ids())
    assert len([e for e in log.of("done") if sentence_id(e.text) < 50]) <= 1
    p.close()
    assert sink.closed


def test_cancel_drops_text_held_by_the_chunker():
    sink = RecordingSink()
    with Pipeline(None, FakeVoice(chunks=1, chunk_len=4), sink) as p:
        p.feed("Sentence 1 is half")
        p.cancel()
        p.feed("Sentence 2 is here.\n")
    assert sink.ids() == [2]


def test_translator_failure_on_one_sentence():
    log = EventLog()
    tr = FakeTranslator(fail_on="Sentence 3 ")
    sink = RecordingSink()
    with Pipeline(tr, FakeVoice(chunks=2, chunk_len=4), sink, on_event=log, max_batch=8) as p:
        p.feed(lines(range(8)))  # likely batched together: the batch is retried one by one
    assert sink.ids() == [0, 1, 2, 4, 5, 6, 7]
    errors = log.of("error")
    assert len(errors) == 1 and errors[0].seq == 3
    assert errors[0].error.startswith("translate: RuntimeError") and errors[0].text == "Sentence 3 is here."
    assert p.timings()[3].error == errors[0].error and p.timings()[3].done is None


def test_translator_returning_the_wrong_shape_is_an_error_event():
    class Bad:
        def translate(self, texts, src_lang, tgt_lang):
            return texts[:-1]

    log = EventLog()
    with Pipeline(Bad(), None, None, on_event=log) as p:
        p.feed(lines([1]))
    assert [e.stage for e in log.events] == ["fed", "chunked", "error"]
    assert "list of 1 str" in log.events[-1].error


def test_voice_failure_on_one_sentence():
    log = EventLog()
    sink = RecordingSink()
    voice = FakeVoice(chunks=3, chunk_len=4, fail_on="SENTENCE 5 ", fail_after=1)
    with Pipeline(FakeTranslator(), voice, sink, on_event=log) as p:
        p.feed(lines(range(8)))
    # Sentence 5 got its first chunk out before failing; no "done" for it.
    full = [(i, j) for i in range(8) for j in range(3)]
    assert sink.received == [pair for pair in full if pair[0] != 5 or pair[1] == 0]
    errors = log.of("error")
    assert [(e.seq, e.error.split(":")[0]) for e in errors] == [(5, "voice")]
    assert 5 not in [e.seq for e in log.of("done")] and len(log.of("done")) == 7


def test_sink_failure_on_one_sentence():
    log = EventLog()
    sink = RecordingSink(fail_on_id=4)
    with Pipeline(FakeTranslator(), FakeVoice(chunks=2, chunk_len=4), sink, on_event=log) as p:
        p.feed(lines(range(7)))
    assert sink.ids() == [0, 1, 2, 3, 5, 6]
    errors = log.of("error")
    assert len(errors) == 1 and errors[0].seq == 4 and errors[0].error.startswith("sink: OSError")


def test_on_event_exceptions_are_logged_not_fatal(caplog):
    def boom(event):
        raise ValueError("callback bug")

    sink = RecordingSink()
    with Pipeline(None, FakeVoice(chunks=1, chunk_len=4), sink, on_event=boom) as p:
        p.feed(lines(range(3)))
    assert sink.ids() == [0, 1, 2]
    assert "on_event callback failed" in caplog.text


def test_worker_crash_is_raised_from_flush_and_close():
    class BrokenSink(RecordingSink):
        def open(self, sample_rate):
            raise OSError("device vanished")

    log = EventLog()
    sink = BrokenSink()
    p = Pipeline(None, FakeVoice(chunks=1, chunk_len=4), sink, on_event=log)
    p.feed(lines(range(3)))
    with pytest.raises(OSError, match="device vanished"):
        p.flush()
    p.feed(lines(range(3, 40)))  # does not hang although the sink stage is gone
    with pytest.raises(OSError, match="device vanished"):
        p.close()
    assert sink.closed and not any(t.is_alive() for t in p._threads)
    # Every sentence that could not be played is reported.
    assert sorted(e.seq for e in log.of("error")) == list(range(40))


def test_flush_releases_held_text_and_waits_for_the_sink():
    sink = RecordingSink(delay=0.02)
    p = Pipeline(FakeTranslator(), FakeVoice(chunks=2, chunk_len=4), sink)
    p.feed("Sentence 1 is here.\nSentence 2 has no end yet")
    p.flush()
    # Both sentences were handed to the sink before flush returned, the unfinished one included.
    assert sink.received == [(1, 0), (1, 1), (2, 0), (2, 1)]
    p.feed(lines([3]))
    p.flush()
    assert sink.ids() == [1, 2, 3]
    p.flush()  # nothing pending: returns at once
    p.close()
    p.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        p.feed("more")


def test_context_manager_cancels_on_exception():
    sink = RecordingSink(block=True)
    p = Pipeline(None, FakeVoice(chunks=2, chunk_len=4), sink)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with p:
            p.feed(lines(range(20)))
            assert sink.writing.wait(5.0)
            raise KeyboardInterrupt
    assert time.perf_counter() - t0 < 2.0
    assert sink.aborts >= 1 and sink.closed
    assert not any(t.is_alive() for t in p._threads)
    assert len(sink.received) == 0  # the blocked chunk was aborted, nothing after it was played


def test_code_block_gets_the_cue_without_translation():
    log = EventLog()
    tr = FakeTranslator()
    voice = FakeVoice(chunks=1, chunk_len=4)
    text = "Sentence 1 is here.\n```python\nx = 42\nprint(x)\n```\nSentence 2 is here.\n"
    with Pipeline(tr, voice, RecordingSink(), on_event=log) as p:
        feed_in_pieces(p, text, max_piece=5)
    assert voice.texts == ["SENTENCE 1 IS HERE.", code_cue("ja"), "SENTENCE 2 IS HERE."]
    assert not any("print" in t for b in tr.batches for t in b)
    assert [e.text for e in log.of("first_audio")][1] == code_cue("ja")


def test_a_short_one_line_code_block_is_read_untranslated_as_speakable_says():
    # The same rule as speakable(code="cue"), which --dry-run prints: a command's output is read.
    voice = FakeVoice(chunks=1, chunk_len=4)
    tr = FakeTranslator()
    block = "```\nsubagent-ran\n```\n"
    with Pipeline(tr, voice, RecordingSink(), sentence_gap=0, early_start=False) as p:
        p.feed("Sentence 1 is here.\n" + block)
    assert voice.texts == ["SENTENCE 1 IS HERE.", speakable(block.strip(), "en", code="cue")] == \
        ["SENTENCE 1 IS HERE.", "subagent-ran"]
    assert not any("subagent" in t for b in tr.batches for t in b)


def test_code_block_skipped_when_asked():
    log = EventLog()
    voice = FakeVoice(chunks=1, chunk_len=4)
    text = "Sentence 1 is here.\n```python\nprint(42)\n```\nSentence 2 is here.\n"
    with Pipeline(FakeTranslator(), voice, RecordingSink(), code="skip", on_event=log) as p:
        p.feed(text)
    assert voice.texts == ["SENTENCE 1 IS HERE.", "SENTENCE 2 IS HERE."]
    assert [e.error for e in log.of("skipped")] == ["code block"]


def test_sentence_with_nothing_to_say_is_skipped_with_an_event():
    log = EventLog()
    tr = FakeTranslator()
    with Pipeline(tr, FakeVoice(chunks=1, chunk_len=4), RecordingSink(), on_event=log) as p:
        p.feed("Sentence 1 is here.\n---\nSentence 2 is here.\n")
    skipped = log.of("skipped")
    assert len(skipped) == 1 and skipped[0].text == "---"
    assert [sentence_id(t) for b in tr.batches for t in b] == [1, 2]


def test_without_translator_text_is_spoken_as_is():
    voice = FakeVoice(chunks=1, chunk_len=4)
    with Pipeline(None, voice, RecordingSink(), lang="en") as p:
        p.feed(lines([7, 8]))
    assert voice.texts == ["Sentence 7 is here.", "Sentence 8 is here."]


def test_without_voice_chunks_and_translates_for_subtitles():
    log = EventLog()
    sink = RecordingSink()
    with Pipeline(FakeTranslator(), None, sink, on_event=log) as p:
        p.feed(lines(range(3)))
    assert [e.text for e in log.of("done")] == [f"SENTENCE {i} IS HERE." for i in range(3)]
    assert sink.writes == 0 and sink.opens == 0 and sink.closed


def test_without_sink_audio_is_discarded():
    p = Pipeline(None, FakeVoice(chunks=2, chunk_len=10), None)
    p.feed(lines(range(4)))
    p.close()
    assert isinstance(p.sink, NullSink) and p.sink.samples == 80


def test_mlx_inside_fake_stages_on_worker_threads():
    sink = RecordingSink()
    tr = FakeTranslator(use_mlx=True)
    voice = FakeVoice(chunks=2, chunk_len=16, use_mlx=True)
    with Pipeline(tr, voice, sink) as p:
        p.feed(lines(range(5)))
    assert sink.received == [(i, j) for i in range(5) for j in range(2)]
    assert voice.threads == {"mlx_stream_tts-voice"}


@pytest.mark.slow
def test_memory_stays_flat():
    n_warm, n = 500, 10_000
    sink = RecordingSink(keep=False)
    tr, voice = FakeTranslator(record=False), FakeVoice(chunks=2, chunk_len=16, record=False)
    p = Pipeline(tr, voice, sink, history=100)
    p.feed(lines(range(n_warm)))
    p.flush()
    tracemalloc.start()
    try:
        base = tracemalloc.take_snapshot()
        text = lines(range(n_warm, n_warm + n))
        for start in range(0, len(text), 4096):
            p.feed(text[start : start + 4096])
        p.flush()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    p.close()
    assert sink.writes == 2 * (n_warm + n) and sink.out_of_order == 0
    growth = sum(s.size_diff for s in after.compare_to(base, "filename"))
    # The text itself (230 kB) is alive in this frame; the rest must not grow with n (~70 B per
    # sentence kept would already be 700 kB).
    assert growth < len(text) + 100_000, growth
    assert len(p.timings()) == 100


def test_bad_arguments():
    with pytest.raises(ValueError, match="code"):
        Pipeline(code="shout")
    with pytest.raises(ValueError, match="max_batch"):
        Pipeline(max_batch=0)
    p = Pipeline()
    with pytest.raises(TypeError):
        p.feed(b"bytes")  # type: ignore[arg-type]
    p.close()


def test_fake_voice_encoding_round_trips():
    assert decode(np.full(8, encode(9999, 15), dtype=np.float32)) == (9999, 15)
    with pytest.raises(AssertionError):
        decode(np.array([encode(1, 0), encode(1, 1)], dtype=np.float32))


def test_fed_time_is_when_the_sentence_began_arriving():
    p = Pipeline(None, None, None)
    p.feed("Sentence 1 is")
    time.sleep(0.1)
    p.feed(" here. Sentence 2")
    time.sleep(0.1)
    p.feed(" is here.\n")
    p.flush()
    p.close()
    t1, t2 = p.timings()
    assert 0.09 < t1.chunk_latency < 0.5
    # Sentence 2 began in the second piece.
    assert 0.09 < t2.chunk_latency < 0.5 and t2.fed == pytest.approx(t1.chunked, abs=0.01)


def test_ctrl_c_while_close_waits_for_the_audio_stops_it():
    import _thread

    sink = RecordingSink(block=True)  # the "device" would take forever
    p = Pipeline(None, FakeVoice(chunks=2, chunk_len=4), sink)
    p.feed(lines(range(10)))
    assert sink.writing.wait(5.0)
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        p.close()
    assert time.perf_counter() - t0 < 2.0
    assert sink.aborts >= 1 and sink.closed and len(sink.received) == 0
    assert not any(t.is_alive() for t in p._threads)


def test_an_error_the_input_reports_is_marked_in_events_and_timings():
    from mlx_stream_tts.claude import ErrorText

    events = []
    with Pipeline(FakeTranslator(), FakeVoice(), RecordingSink(), on_event=events.append, sentence_gap=0,
                  early_start=False) as p:
        p.feed("Sentence 1 is plain. And sentence 2 is held")
        p.feed(ErrorText("\n\nNot logged in. Please run 3 login.\n\n"))
        p.feed("Sentence 4 is plain again.")
    chunked = [(e.text, e.reported_error) for e in events if e.stage == "chunked"]
    assert chunked == [("Sentence 1 is plain.", False), ("And sentence 2 is held", False),
                       ("Not logged in.", True), ("Please run 3 login.", True),
                       ("Sentence 4 is plain again.", False)]
    spoken = {e.seq: e.reported_error for e in events if e.stage == "done"}
    assert spoken == {0: False, 1: False, 2: True, 3: True, 4: False}
    assert [t.reported_error for t in p.timings()] == [False, False, True, True, False]


def test_a_sentence_the_voice_cannot_say_is_reported_as_skipped_with_the_script():
    class SilentOnCyrillic(FakeVoice):
        def synthesize(self, text, speed=1.0):
            if any("\u0400" <= ch <= "\u04ff" for ch in text):
                return iter(())  # what the real voice does: nothing it can read, no audio
            return super().synthesize(text, speed)

    events = []
    with Pipeline(None, SilentOnCyrillic(chunks=1), RecordingSink(), lang="en", on_event=events.append,
                  sentence_gap=0, early_start=False) as p:
        p.feed("Sentence 1 is fine. Привет мир. Sentence 3 is fine.")
    skipped = [(e.text, e.error) for e in events if e.stage == "skipped"]
    assert skipped == [("Привет мир.", "nothing the voice can say: 2 words in Cyrillic script: Привет, мир")]
    assert [e.seq for e in events if e.stage == "done"] == [0, 2]


def test_an_empty_translation_is_logged_and_skipped(caplog):
    class Empty(FakeTranslator):
        def translate(self, texts, src_lang, tgt_lang):
            return ["" if "2" in t else t for t in texts]

    events = []
    with caplog.at_level("WARNING", logger="mlx_stream_tts.pipeline"):
        with Pipeline(Empty(), FakeVoice(), RecordingSink(), on_event=events.append, sentence_gap=0,
                      early_start=False) as p:
            p.feed("Sentence 1 is here. Sentence 2 is lost. Sentence 3 is here.")
    assert [(e.seq, e.error) for e in events if e.stage == "skipped"] == [(1, "empty translation")]
    assert sum("gave nothing" in r.getMessage() for r in caplog.records) == 1
