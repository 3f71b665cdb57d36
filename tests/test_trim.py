"""Silence: the voice trims Kokoro's leading and trailing silence; the pipeline puts a short gap
between sentences only when they play back to back.

Fast tests drive ``Voice`` with a fake engine whose pads decode to silence, and the pipeline with
fake stages and a sink that plays in real time; the slow ones measure the real Kokoro voice.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mlx_stream_tts.pipeline import Pipeline
from mlx_stream_tts.voice import Prosody, TrimPlan, Voice, WindowPlan

from fakes import FakeTranslator, FakeVoice

SR = 24_000
SPF = 600


def edge_silence(audio: np.ndarray, level: float) -> tuple[float, float]:
    """Seconds before the first and after the last sample at ``level`` or above."""
    loud = np.flatnonzero(np.abs(audio) >= level)
    assert loud.size, "no sound at all"
    return loud[0] / SR, (audio.size - 1 - loud[-1]) / SR


def inner_pauses(audio: np.ndarray, level: float, min_seconds: float) -> list[float]:
    """Lengths of the quiet runs between sounds that last at least ``min_seconds``."""
    loud = np.flatnonzero(np.abs(audio) >= level)
    gaps = np.diff(loud) / SR
    return [float(g) for g in gaps if g >= min_seconds]


# ------------------------------------------------------------------------------------------------
# Voice with a fake engine: 12 silent frames before the speech, 30 after, a silent pause inside


class PaddedEngine:
    """Decodes pad tokens (id 0) and commas to silence and every other token to a tone, frame by frame
    (so windows do not show); energy follows the sound as Kokoro's does (-9 silent, +8 speech)."""

    samples_per_frame = SPF

    def __init__(self, comma_id: int):
        self.comma_id = comma_id

    def predict(self, ids: np.ndarray, style: np.ndarray, speed: float) -> Prosody:
        tokens = np.concatenate([[0], ids, [0]])
        dur = np.array([12] + [8 if t == self.comma_id else 3 for t in ids] + [30], dtype=np.int64)
        frames = int(dur.sum())
        voiced = np.repeat([(t != 0 and t != self.comma_id) for t in tokens], dur).astype(np.float32)
        asr = voiced[:, None] * np.ones((1, 4), np.float32)
        n = np.repeat(np.where(voiced > 0, 8.0, -9.0), 2).astype(np.float32)
        return Prosody(dur, asr, np.full(2 * frames, 120.0, np.float32), n)

    def decode(self, asr: np.ndarray, f0: np.ndarray, n: np.ndarray, style: np.ndarray) -> np.ndarray:
        cycle = np.sin(2 * np.pi * 8 * np.arange(SPF) / SPF)  # whole cycles per frame: frame-local
        return (0.3 * asr[:, :1] * cycle[None]).reshape(-1).astype(np.float32)


VOCAB = {ch: i + 1 for i, ch in enumerate("abcdefghijklmnoprstuwyz ,.!?")}


def padded_voice(trim: bool = True, plan: WindowPlan | None = None) -> Voice:
    styles = {"jf_alpha": np.zeros((510, 256), np.float32)}
    return Voice(PaddedEngine(VOCAB[","]), styles, VOCAB, g2p=lambda t: t, plan=plan, trim=trim)


TEXT = "kono ɸairu o ʃuːseː ʃite, tesuto o moːitʃido. " * 2  # ~90 ids: several windows


def test_trimmed_voice_keeps_a_short_lead_in_and_tail_in_every_mode():
    tp = TrimPlan()
    untrimmed = np.concatenate(list(padded_voice(trim=False).synthesize(TEXT, mode="oneshot")))
    lead0, tail0 = edge_silence(untrimmed, tp.level)
    assert lead0 >= 12 * SPF / SR - 0.011 and tail0 >= 30 * SPF / SR - 0.011  # the pads' silence is there
    voice = padded_voice(plan=WindowPlan(first=12, first_context=6, context=6, snap=3))
    outs = {}
    for mode in ("oneshot", "windowed"):
        chunks = list(voice.synthesize(TEXT, mode=mode))
        audio = np.concatenate(chunks)
        lead, tail = edge_silence(audio, tp.level)
        # The lead-in and tail as planned, give or take the fades' quiet first and last samples.
        assert tp.lead - 0.011 <= lead <= tp.lead + 0.001, (mode, lead)
        assert tp.tail - 0.011 <= tail <= tp.tail + 0.001, (mode, tail)
        assert abs(audio[0]) < 1e-3 and abs(audio[-1]) < 1e-3  # faded: no step at either end
        assert audio.size == untrimmed.size - round((lead0 - lead + tail0 - tail) * SR)
        outs[mode] = audio
    # The comma's silent frames inside the sentence are kept whole (8 frames = 0.2 s).
    assert any(abs(p - 8 * SPF / SR) < 0.002 for p in inner_pauses(outs["oneshot"], tp.level, 0.1))
    # The decoder is frame-local: windowed audio is one-shot audio, trimming included.
    np.testing.assert_allclose(outs["windowed"], outs["oneshot"], atol=1e-6)


def test_windowed_keeps_the_trailing_silence_in_the_last_chunk():
    # A long trailing pad must not become a chunk of its own that nobody can trim any more.
    voice = padded_voice(plan=WindowPlan(first=12, first_context=6, context=6, snap=0, margin=0.0))
    chunks = list(voice.synthesize("abab abab abab abab.", mode="windowed"))
    assert len(chunks) >= 2
    for chunk in chunks[:-1]:
        assert np.abs(chunk).max() >= TrimPlan().level
    assert edge_silence(np.concatenate(chunks), TrimPlan().level)[1] <= TrimPlan().tail + 0.001


def test_clause_mode_joins_trimmed_clauses_with_a_clause_pause():
    tp = TrimPlan()
    voice = padded_voice()
    chunks = list(voice.synthesize("abab, abab. abab", mode="clause"))
    assert len(chunks) == 3  # the pause rides on the next clause's first chunk
    audio = np.concatenate(chunks)
    pauses = inner_pauses(audio, tp.level, 0.05)
    # Each join: the first clause's tail, the pause, the next clause's lead-in.
    expected = [tp.tail + tp.clause_pause + tp.lead, tp.tail + tp.sentence_pause + tp.lead]
    assert len(pauses) == 2 and all(abs(p - e) < 0.012 for p, e in zip(pauses, expected)), pauses
    untrimmed = np.concatenate(list(padded_voice(trim=False).synthesize("abab, abab. abab", mode="clause")))
    assert all(p > 1.0 for p in inner_pauses(untrimmed, tp.level, 0.05))  # each clause's own pads


def test_audio_that_never_reaches_the_level_is_kept_whole():
    voice = padded_voice()
    voice.trim_plan = TrimPlan(level=0.5)  # above the fake's 0.3: nothing counts as sound
    trimmed = np.concatenate(list(voice.synthesize("abab.", mode="windowed")))
    untrimmed = np.concatenate(list(padded_voice(trim=False).synthesize("abab.", mode="windowed")))
    assert trimmed.size == untrimmed.size


# ------------------------------------------------------------------------------------------------
# The pipeline's gap between sentences


class PlayingSink:
    """Plays in real time: each write takes as long as its audio; records every write."""

    def __init__(self) -> None:
        self.writes: list[np.ndarray] = []
        self.times: list[float] = []
        self._lock = threading.Lock()

    def open(self, sample_rate: int) -> None:
        pass

    def write(self, audio: np.ndarray) -> None:
        with self._lock:
            self.writes.append(np.array(audio))
            self.times.append(time.perf_counter())
        time.sleep(audio.size / SR)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def silences(self) -> list[int]:
        """Sizes of the writes that are all silence (the pipeline's pauses)."""
        return [w.size for w in self.writes if not np.any(w)]


def test_gap_between_sentences_played_back_to_back():
    sink = PlayingSink()
    voice = FakeVoice(chunks=2, chunk_len=2400)  # 0.2 s a sentence, made at once
    with Pipeline(FakeTranslator(), voice, sink, sentence_gap=0.15, early_start=False) as p:
        p.feed("Sentence 1 is here. Sentence 2 is here. Sentence 3 is here.\n")
        p.flush()
        timings = p.timings()
    assert sink.silences() == [round(0.15 * SR)] * 2
    assert [t.pause for t in timings] == [0.0, pytest.approx(0.15), pytest.approx(0.15)]
    # The pause counts in audio_seconds (what the sink got for the sentence), not in its first audio.
    assert timings[1].audio_seconds == pytest.approx(0.2 + 0.15)
    assert sink.writes[2].size == round(0.15 * SR) and np.all(sink.writes[3] != 0)


def test_no_gap_when_playback_has_already_run_dry():
    sink = PlayingSink()
    voice = FakeVoice(chunks=1, chunk_len=1200)  # 0.05 s
    with Pipeline(FakeTranslator(), voice, sink, sentence_gap=0.15) as p:
        p.feed("Sentence 1 is here.\n")
        p.flush()
        time.sleep(0.25)  # played out, and the gap's worth of silence heard already
        p.feed("Sentence 2 is here.\n")
        p.flush()
        timings = p.timings()
    assert sink.silences() == []
    assert [t.pause for t in timings] == [0.0, 0.0]


def test_only_the_rest_of_the_gap_when_playback_ran_dry_briefly():
    sink = PlayingSink()
    voice = FakeVoice(chunks=1, chunk_len=1200)
    with Pipeline(FakeTranslator(), voice, sink, sentence_gap=0.5) as p:
        p.feed("Sentence 1 is here.\n")
        p.flush()  # returns once written: the sink's write has played it
        time.sleep(0.2)
        p.feed("Sentence 2 is here.\n")
        p.flush()
        timings = p.timings()
    assert len(sink.silences()) == 1
    assert 0.2 < timings[1].pause < 0.3  # 0.5 s less the ~0.2 s of silence already heard


def test_gap_arguments_are_checked():
    with pytest.raises(ValueError, match="sentence_gap"):
        Pipeline(sentence_gap=-0.1)
    with pytest.raises(ValueError, match="clause_gap"):
        Pipeline(clause_gap=11)


# ------------------------------------------------------------------------------------------------
# The real voice


@pytest.fixture(scope="module")
def real_voice(tmp_path_factory):
    from convert.kokoro import convert_from_onnx, default_model_dir, is_converted

    path = default_model_dir()
    if not is_converted(path):
        path = convert_from_onnx(tmp_path_factory.mktemp("kokoro"), overwrite=True)
    return Voice.load(path)


@pytest.mark.slow
@pytest.mark.parametrize("text", ["はい。", "ファイルを読みました。"])
def test_real_voice_silence_at_the_ends_is_short(real_voice, text):
    level = TrimPlan().level
    real_voice.trim = False
    try:
        untrimmed = np.concatenate(list(real_voice.synthesize(text, mode="oneshot")))
    finally:
        real_voice.trim = True
    lead0, tail0 = edge_silence(untrimmed, level)
    assert lead0 > 0.2 and tail0 > 0.4  # measured 0.26-0.28 s and 0.46-0.59 s
    for mode in ("windowed", "oneshot"):
        audio = np.concatenate(list(real_voice.synthesize(text, mode=mode)))
        lead, tail = edge_silence(audio, level)
        assert lead < 0.06 and tail < 0.06, (mode, lead, tail)
        assert lead > 0.005 and tail > 0.005  # a lead-in and a tail are kept: no word is clipped
        assert abs(audio[0]) < 2e-3 and abs(audio[-1]) < 2e-3


@pytest.mark.slow
def test_real_voice_keeps_the_clause_pause_inside_a_sentence(real_voice):
    text = "テストを実行して、結果を確認します。"
    level = 0.01
    real_voice.trim = False
    try:
        untrimmed = np.concatenate(list(real_voice.synthesize(text, mode="oneshot")))
    finally:
        real_voice.trim = True
    trimmed = np.concatenate(list(real_voice.synthesize(text, mode="oneshot")))
    before, after = inner_pauses(untrimmed, level, 0.05), inner_pauses(trimmed, level, 0.05)
    assert before and after == before  # measured: 96, 186 and 90 ms, the comma's the longest
    assert max(after) > 0.15
    assert 0.6 < (untrimmed.size - trimmed.size) / SR < 1.2  # ~0.9 s of edge silence gone


@pytest.mark.slow
def test_real_voice_warm_once(real_voice):
    first = real_voice.warm()
    assert real_voice.warm() == 0.0
    assert first >= 0.0
