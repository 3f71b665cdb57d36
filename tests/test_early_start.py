"""Early start: when nothing is queued or playing, a long sentence's first clause is spoken before
the sentence has finished arriving; the rest follows as its tail. Also Pipeline.warm()."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from mlx_stream_tts.chunking import SentenceChunker, clause_head
from mlx_stream_tts.pipeline import Event, Pipeline

from fakes import FakeTranslator, FakeVoice

SR = 24_000

LONG = "I have read every file in the project folder carefully, and the tests pass on all three platforms now."
HEAD = "I have read every file in the project folder carefully,"
TAIL = "and the tests pass on all three platforms now."


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


class WatchedTranslator(FakeTranslator):
    """Uppercases; ``called`` is set at each call (the test waits for it)."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(delay=delay)
        self.called = threading.Event()

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        self.called.set()
        return super().translate(texts, src_lang, tgt_lang)


def words(text: str) -> list[str]:
    return text.split()


def bare_words(text: str) -> list[str]:
    """Words without commas and stops (a head is said ending in 、, the voice's clause comma)."""
    return re.sub(r"[,、.。]", "", text).split()


def feed_words(p: Pipeline, text: str, upto: int | None = None, pause: float = 0.0) -> None:
    """Feeds ``text`` word by word (``upto`` words), as a model streams it."""
    parts = [w + " " for w in text.split(" ")]
    parts[-1] = parts[-1][:-1]
    for part in parts[:upto]:
        p.feed(part)
        if pause:
            time.sleep(pause)


def test_head_reaches_the_translator_before_the_sentence_ends_when_idle():
    log, tr, voice = EventLog(), WatchedTranslator(), FakeVoice(chunks=1, chunk_len=240)
    with Pipeline(tr, voice, on_event=log) as p:
        n_head = len(words(HEAD))
        feed_words(p, LONG, upto=n_head + 1)  # the comma and one more word: nothing ends the sentence yet
        assert tr.called.wait(2.0), "the head was not sent on before the sentence ended"
        assert tr.batches == [[HEAD]]
        feed_words(p, " ".join(words(LONG)[n_head + 1:]))
        p.feed("\n")
        p.flush()
        timings = p.timings()
    assert tr.batches == [[HEAD], [TAIL]]
    # Nothing lost or doubled: head and tail speak the sentence's words, once each, in order.
    assert bare_words(" ".join(voice.texts)) == bare_words(LONG.upper())
    assert voice.texts[0].endswith("CAREFULLY、")  # said as a clause that goes on
    assert [(t.seq, t.part, t.source) for t in timings] == [(0, "head", HEAD), (1, "tail", TAIL)]
    assert [(e.seq, e.part) for e in log.of("done")] == [(0, "head"), (1, "tail")]
    assert all(e.part == "head" for e in log.events if e.seq == 0)
    # The head went on before the sentence's end had been fed.
    assert timings[0].chunked < timings[1].chunked


def test_no_early_start_while_speech_is_queued_or_playing():
    tr = WatchedTranslator()
    voice = FakeVoice(chunks=1, chunk_len=SR)  # 1 s of audio: the sink plays it in real time
    with Pipeline(tr, voice, sink=RealTimeSink()) as p:
        p.feed("Sentence 1 is here.\n")
        deadline = time.perf_counter() + 2.0
        while not voice.texts and time.perf_counter() < deadline:
            time.sleep(0.01)
        feed_words(p, LONG, upto=len(words(LONG)) - 1)  # all but the last word, while sentence 1 plays
        time.sleep(0.1)
        assert tr.batches == [["Sentence 1 is here."]]
        feed_words(p, " " + words(LONG)[-1])
        p.flush()
        timings = p.timings()
    assert tr.batches == [["Sentence 1 is here."], [LONG]]
    assert [t.part for t in timings] == [None, None]


class RealTimeSink:
    """Takes as long to write as the audio lasts (a sound card's pace)."""

    def open(self, sample_rate: int) -> None:
        pass

    def write(self, audio: np.ndarray) -> None:
        time.sleep(audio.size / SR)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class RecordingSink(RealTimeSink):
    """Real-time pace; keeps every write."""

    def __init__(self) -> None:
        self.writes: list[np.ndarray] = []

    def write(self, audio: np.ndarray) -> None:
        self.writes.append(np.array(audio))
        super().write(audio)


def test_head_and_tail_are_joined_with_the_clause_gap():
    sink = RecordingSink()
    voice = FakeVoice(chunks=2, chunk_len=SR // 10)  # 0.2 s each part
    with Pipeline(FakeTranslator(), voice, sink, sentence_gap=0.3, clause_gap=0.08) as p:
        feed_words(p, LONG, upto=len(words(HEAD)) + 1)
        feed_words(p, " " + " ".join(words(LONG)[len(words(HEAD)) + 1:]))  # while the head plays
        p.feed(" Sentence 3 is here.\n")
        p.flush()
        timings = p.timings()
    assert [t.part for t in timings] == ["head", "tail", None]
    assert [t.pause for t in timings] == [0.0, pytest.approx(0.08), pytest.approx(0.3)]
    silences = [w.size for w in sink.writes if not np.any(w)]
    assert silences == [round(0.08 * SR), round(0.3 * SR)]


@pytest.mark.parametrize(
    "text",
    [
        "There were more than 1,000 files and 2,000 lines in 3,500 folders today.",
        "Please run `make test ARGS=a, b, c, d, e, f, g, h, i, j` in the folder today.",
        "The result (as shown in the table, which lists every file here) was fine.",
        "Read https://example.com/a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p for all the details now.",
    ],
)
def test_no_early_start_inside_numbers_code_urls_or_brackets(text):
    tr = WatchedTranslator()
    with Pipeline(tr, FakeVoice(chunks=1, chunk_len=240)) as p:
        feed_words(p, text)
        p.flush()
        timings = p.timings()
    assert len(tr.batches) == 1  # one sentence (its code and link said the usual way)
    assert [(t.source, t.part) for t in timings] == [(text, None)]


def test_clause_head_rules():
    assert clause_head("one two three four five six seven eight, nine") == len("one two three four five six seven eight,")
    assert clause_head("one two three four five six seven, eight nine") is None  # 7 words before the comma
    assert clause_head("one two three four five six seven eight, nine", min_words=9) is None
    # Before a clause word, once it is whole ("andrew" is no clause word).
    assert clause_head("one two three four five six seven eight and nine") == len("one two three four five six seven eight")
    assert clause_head("one two three four five six seven eight andrew nine") is None
    assert clause_head("one two three four five six seven eight and") is None  # "and" may still grow
    assert clause_head("one two three four five six seven eight,") is None  # nothing after it yet
    assert clause_head("it cost 1,000 or 2,000 dollars per seat per month, so") is not None
    assert clause_head("このファイルには多くの関数が含まれていて、それぞれ", "ja") == len("このファイルには多くの関数が含まれていて、")
    assert clause_head("短い文です、それぞれ", "ja") is None


def test_chunker_split_head_keeps_the_rest_pending():
    c = SentenceChunker()
    assert c.feed("Done. " + HEAD + " and the") == ["Done."]
    assert c.split_head(8) == HEAD
    assert c.pending.strip() == "and the"
    assert c.feed(" tests pass. Next") == ["and the tests pass."]
    assert c.flush() == ["Next"]
    c = SentenceChunker()
    c.feed("```\nx = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], and more code here\n")
    assert c.split_head(2) is None  # inside a code block


def test_japanese_input_starts_early_at_the_comma():
    voice = FakeVoice(chunks=1, chunk_len=240)
    text = "このファイルには多くの関数が含まれていて、それぞれのテストを順番に実行します。"
    with Pipeline(None, voice, lang="ja") as p:
        for ch in text[:25]:
            p.feed(ch)
        deadline = time.perf_counter() + 2.0
        while not voice.texts and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert voice.texts == ["このファイルには多くの関数が含まれていて、"]  # said as a clause that goes on
        for ch in text[25:]:
            p.feed(ch)
        p.flush()
        timings = p.timings()
    assert "".join(voice.texts) == text
    assert [t.part for t in timings] == ["head", "tail"]


def test_cancel_between_head_and_tail_drops_the_tail():
    log, tr, voice = EventLog(), WatchedTranslator(), FakeVoice(chunks=1, chunk_len=240)
    with Pipeline(tr, voice, on_event=log) as p:
        feed_words(p, LONG, upto=len(words(HEAD)) + 3)
        assert tr.called.wait(2.0)
        p.cancel()
        feed_words(p, " platforms now.")  # the end of the cancelled sentence: spoken as it comes
        p.feed(" Sentence 2 is here.\n")
        p.flush()
    spoken = " ".join(voice.texts)
    assert "AND THE TESTS" not in spoken and "Sentence 2 is here.".upper() in spoken
    assert not [e for e in log.events if e.part == "tail"]


def test_switches():
    for kwargs, voice in (({"early_start": False}, FakeVoice()), ({}, None)):
        tr = WatchedTranslator()
        with Pipeline(tr, voice, **kwargs) as p:
            feed_words(p, LONG, upto=len(words(HEAD)) + 2)
            time.sleep(0.1)
            assert tr.batches == []  # no voice: nothing plays, nothing to start early (subtitles)
            feed_words(p, " ".join(words(LONG)[len(words(HEAD)) + 2:]))
            p.flush()
        assert tr.batches == [[LONG]]
    with pytest.raises(ValueError, match="min_early_words"):
        Pipeline(min_early_words=0)


# ------------------------------------------------------------------------------------------------
# warm()


class WarmTranslator(FakeTranslator):
    def __init__(self) -> None:
        super().__init__()
        self.warmed: list[tuple[str, str, str]] = []

    def warm(self, src_lang: str, tgt_lang: str) -> float:
        self.warmed.append((threading.current_thread().name, src_lang, tgt_lang))
        time.sleep(0.02)
        return 0.02


class WarmVoice(FakeVoice):
    def __init__(self) -> None:
        super().__init__()
        self.warmed: list[str] = []

    def warm(self) -> float:
        self.warmed.append(threading.current_thread().name)
        raise RuntimeError("no kernels today")  # logged; the pipeline goes on


def test_warm_runs_each_stage_on_its_worker_thread(caplog):
    tr, voice = WarmTranslator(), WarmVoice()
    with Pipeline(tr, voice, tgt_lang="fra_Latn") as p:
        spent = p.warm()
        p.feed("Sentence 1 is here.\n")
    assert tr.warmed == [("mlx_stream_tts-translate", "eng_Latn", "fra_Latn")]
    assert voice.warmed == ["mlx_stream_tts-voice"]
    assert set(spent) == {"translate", "voice"} and spent["translate"] >= 0.02
    assert "warming the voice stage failed" in caplog.text
    assert voice.texts == ["SENTENCE 1 IS HERE."]
    with Pipeline(FakeTranslator(), FakeVoice()) as p:  # stages without warm(): nothing to do
        assert p.warm() == {}
    with pytest.raises(RuntimeError, match="closed"):
        p.warm()


@pytest.mark.slow
def test_real_voice_first_sentence_cold_and_warm(tmp_path_factory):
    """Warming runs on the voice's thread and the first sentence is then spoken; prints its time to
    first audio with a cold and a warmed voice."""
    from convert.kokoro import convert_from_onnx, default_model_dir, is_converted
    from mlx_stream_tts.voice import Voice

    path = default_model_dir()
    if not is_converted(path):
        path = convert_from_onnx(tmp_path_factory.mktemp("kokoro"), overwrite=True)
    latency = {}
    for case in ("cold", "warm"):
        voice = Voice.load(path)
        with Pipeline(None, voice, lang="ja") as p:
            if case == "warm":
                spent = p.warm()
                assert spent["voice"] > 0
            p.feed("ファイルを読みました。\n")
            p.flush()
            latency[case] = p.timings()[0].first_audio_latency
    # Both spoke; the times are printed, not compared (a shared machine: timings belong to bench/).
    assert all(v is not None and v > 0 for v in latency.values()), latency
    print(f"\nfirst sentence, chunked -> first audio: cold {latency['cold']:.3f} s, warm {latency['warm']:.3f} s")


@pytest.mark.slow
def test_translator_warm_once(tmp_path_factory):
    from mlx_stream_tts.translate import Translator

    from nllb_fixtures import get_converted

    translator = Translator.load(get_converted(tmp_path_factory, "d20gelu"))
    assert translator.warm("eng_Latn", "jpn_Jpan") > 0.0
    assert translator.warm("eng_Latn", "jpn_Jpan") == 0.0  # already warm: nothing done
