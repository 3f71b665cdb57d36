"""The phrase cache: hits and misses, LRU eviction, threads and processes, a broken file, latency."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlx_stream_tts.audio import to_int16
from mlx_stream_tts.phrase_cache import (
    NO_CACHE_ENV,
    CachedTranslator,
    CachedVoice,
    PhraseCache,
    fingerprint,
    open_default_cache,
)
from mlx_stream_tts.pipeline import Pipeline

RATE = 24_000
QUANTUM = 0.5 / 32767 + 1e-7  # int16 rounding, plus float32 rounding of the division


class Translator:
    """Uppercases; records each batch; optionally slow, failing, or answering "" for some texts."""

    def __init__(self, delay: float = 0.0, fail: bool = False, empty_for: str | None = None) -> None:
        self.delay, self.fail, self.empty_for = delay, fail, empty_for
        self.batches: list[list[str]] = []

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        self.batches.append(list(texts))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("translator broke")
        return ["" if t == self.empty_for else t.upper() for t in texts]


def tone(text: str, n: int) -> np.ndarray:
    """A tone whose pitch depends on the text, so that entries can be told apart."""
    f = 100 + sum(map(ord, text)) % 700
    return (0.6 * np.sin(2 * np.pi * f * np.arange(n) / RATE)).astype(np.float32)


class Voice:
    """Yields ``chunks`` pieces of a text-dependent tone; records calls; can fail or be slow."""

    sample_rate = RATE
    lang = "ja"

    def __init__(self, chunks: int = 3, chunk_len: int = 4800, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.chunks, self.chunk_len, self.delay, self.fail_at = chunks, chunk_len, delay, fail_at
        self.voice = "jf_alpha"
        self.calls: list[str] = []
        self.closed = 0

    def set_voice(self, name: str) -> None:
        self.voice = name

    def synthesize(self, text: str, speed: float = 1.0) -> Iterator[np.ndarray]:
        self.calls.append(text)
        whole = tone(text + self.voice + str(speed), self.chunks * self.chunk_len)
        try:
            for j in range(self.chunks):
                if self.delay:
                    time.sleep(self.delay / self.chunks)
                if j == self.fail_at:
                    raise RuntimeError("voice broke")
                yield whole[j * self.chunk_len:(j + 1) * self.chunk_len]
        finally:
            self.closed += 1


def collect(chunks: Iterator[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(chunks))


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[PhraseCache]:
    c = PhraseCache(tmp_path / "phrases.sqlite3", max_bytes=4 << 20)
    yield c
    c.close()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mlx_stream_tts.phrase_cache" and r.levelno >= logging.WARNING]


# -- translations -----------------------------------------------------------------------------------


def test_translation_hits_keep_order_and_only_misses_reach_the_model(cache: PhraseCache) -> None:
    inner = Translator()
    tr = CachedTranslator(inner, cache, model_id="m1")
    assert tr.translate(["Done.", "Let me run the tests."], "eng_Latn", "jpn_Jpan") == ["DONE.", "LET ME RUN THE TESTS."]
    out = tr.translate(["Next.", "Done.", "Other.", "Next.", "Let me run the tests."], "eng_Latn", "jpn_Jpan")
    assert out == ["NEXT.", "DONE.", "OTHER.", "NEXT.", "LET ME RUN THE TESTS."]
    assert inner.batches == [["Done.", "Let me run the tests."], ["Next.", "Other."]]  # one batch, each text once
    assert tr.translate(["Other.", "Done."], "eng_Latn", "jpn_Jpan") == ["OTHER.", "DONE."]
    assert len(inner.batches) == 2
    # Another model, language pair or option is another key.
    CachedTranslator(inner, cache, model_id="m2").translate(["Done."], "eng_Latn", "jpn_Jpan")
    tr.translate(["Done."], "eng_Latn", "fra_Latn")
    assert inner.batches[2:] == [["Done."], ["Done."]]
    s = cache.stats()
    assert s["entries"] == 6 and s["hits"] == 4 and s["misses"] == 7 and s["bytes"] > 0


def test_empty_translations_and_failures_are_not_stored(cache: PhraseCache) -> None:
    inner = Translator(empty_for="???")
    tr = CachedTranslator(inner, cache, model_id="m")
    assert tr.translate(["???", "Ok."], "en", "ja") == ["", "OK."]
    assert tr.translate(["???"], "en", "ja") == [""]
    assert inner.batches[-1] == ["???"]  # asked again: "" was not stored
    inner.fail = True
    with pytest.raises(RuntimeError, match="translator broke"):
        tr.translate(["Boom."], "en", "ja")
    inner.fail = False
    tr.translate(["Boom."], "en", "ja")
    assert inner.batches[-1] == ["Boom."]
    assert cache.stats()["entries"] == 2  # "Ok." and "Boom."


def test_translator_attributes_and_bad_input_pass_through(cache: PhraseCache) -> None:
    inner = Translator()
    inner.max_batch = 8
    tr = CachedTranslator(inner, cache, model_id="m")
    assert tr.max_batch == 8
    with pytest.raises(AttributeError):
        tr.translate(["ok", 3], "en", "ja")  # the inner translator's own error (here: int has no upper)


# -- audio --------------------------------------------------------------------------------------------


def test_audio_round_trip_is_within_the_int16_quantum_and_identical_at_the_sink(cache: PhraseCache) -> None:
    rng = np.random.default_rng(0)
    audio = np.clip(rng.normal(0, 0.4, 12_345), -1.2, 1.2).astype(np.float32)
    assert cache.put_audio("v", 1.0, "こんにちは", audio, RATE)
    got, rate = cache.get_audio("v", 1.0, "こんにちは")
    assert rate == RATE and got.dtype == np.float32 and got.shape == audio.shape
    err = np.abs(got - np.clip(audio, -1, 1)).max()
    print(f"round trip max error {err:.3g} (int16 quantum/2 = {0.5 / 32767:.3g})")
    assert err <= QUANTUM
    assert np.array_equal(to_int16(got), to_int16(audio))  # a sink writes the same PCM as the first time
    assert cache.get_audio("v", 1.25, "こんにちは") is None  # speed is part of the key
    assert cache.get_audio("w", 1.0, "こんにちは") is None


def test_voice_hit_replays_without_the_model_and_follows_the_voice_state(cache: PhraseCache) -> None:
    inner = Voice()
    voice = CachedVoice(inner, cache, voice_id="kokoro-1")
    assert voice.sample_rate == RATE and voice.lang == "ja"
    first = collect(voice.synthesize("テストを実行します。", 1.0))
    again = collect(voice.synthesize("テストを実行します。", 1.0))
    assert inner.calls == ["テストを実行します。"]
    assert again.shape == first.shape and np.abs(again - first).max() <= QUANTUM
    voice.set_voice("jm_kumo")  # passed through; the key follows the inner voice's name
    assert inner.voice == "jm_kumo"
    collect(voice.synthesize("テストを実行します。", 1.0))
    collect(voice.synthesize("テストを実行します。", 1.5))
    assert len(inner.calls) == 3
    voice.delay = 0.0  # attribute writes go to the inner voice too
    assert inner.delay == 0.0 and "delay" not in vars(voice)


def test_cancelled_or_failed_synthesis_stores_nothing(cache: PhraseCache) -> None:
    inner = Voice(chunks=4)
    voice = CachedVoice(inner, cache, voice_id="k")
    gen = voice.synthesize("途中で止める。", 1.0)
    next(gen)
    gen.close()  # what the pipeline does on cancel()
    assert inner.closed == 1  # the inner generator was closed too
    inner.fail_at = 2
    with pytest.raises(RuntimeError, match="voice broke"):
        collect(voice.synthesize("壊れる。", 1.0))
    assert cache.stats()["entries"] == 0
    inner.fail_at = None
    collect(voice.synthesize("途中で止める。", 1.0))
    assert cache.stats()["entries"] == 1


def test_too_long_or_too_big_audio_is_streamed_but_not_stored(tmp_path: Path) -> None:
    with PhraseCache(tmp_path / "c.sqlite3", max_bytes=1 << 20) as c:  # entries up to 128 KiB
        inner = Voice(chunks=2, chunk_len=40_000)  # 160 KB of int16
        voice = CachedVoice(inner, c, voice_id="k")
        assert collect(voice.synthesize("長い。", 1.0)).size == 80_000
        assert c.stats()["entries"] == 0
        assert not c.put_audio("k", 1.0, "31 s", np.zeros(31 * 8000, np.float32), 8000)  # over 30 s
        assert not c.put_translation("en", "ja", "m", "x", "あ" * 50_000)
        assert c.stats()["entries"] == 0


def test_lru_eviction_keeps_recently_used_entries_under_max_bytes(tmp_path: Path) -> None:
    max_bytes = 64 << 10
    with PhraseCache(tmp_path / "c.sqlite3", max_bytes=max_bytes) as c:
        clip = tone("x", 3000)  # 6 KB each: ~10 fit
        for i in range(40):
            assert c.put_audio("v", 1.0, f"phrase {i}", clip, RATE)
            assert c.get_audio("v", 1.0, "phrase 0") is not None  # kept in use all along
            assert c.stats()["bytes"] <= max_bytes
        assert c.get_translation("en", "ja", "m", "never") is None
        kept = [i for i in range(40) if c.get_audio("v", 1.0, f"phrase {i}") is not None]
        s = c.stats()
        print(f"kept {kept}, {s['entries']} entries, {s['bytes']} bytes")
        assert 0 in kept and 39 in kept and 38 in kept
        assert 1 not in kept and 10 not in kept  # the oldest unused ones went first
        assert 6 <= len(kept) <= 11 and s["entries"] == len(kept)


def test_clear_and_close(cache: PhraseCache) -> None:
    cache.put_translation("en", "ja", "m", "a", "あ")
    cache.put_audio("v", 1.0, "a", tone("a", 100), RATE)
    cache.clear()
    assert cache.stats()["entries"] == 0 and cache.stats()["bytes"] == 0
    assert cache.get_translation("en", "ja", "m", "a") is None
    cache.close()
    cache.close()
    assert not cache.put_translation("en", "ja", "m", "a", "あ")  # a closed cache is a no-op
    assert cache.get_translation("en", "ja", "m", "a") is None


# -- concurrency ------------------------------------------------------------------------------------


def test_two_threads_share_one_cache(cache: PhraseCache) -> None:
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for i in range(60):
                assert cache.put_translation("en", "ja", "m", f"{name} {i}", f"{name.upper()} {i}")
                assert cache.put_audio("v", 1.0, f"{name} {i}", tone(f"{name}{i}", 500), RATE)
                assert cache.get_translation("en", "ja", "m", f"{name} {i // 2}") == f"{name.upper()} {i // 2}"
                assert cache.get_audio("v", 1.0, f"{name} {i // 2}") is not None
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("voice", "translate")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert cache.stats()["entries"] == 240


_N = 600
_WRITER = textwrap.dedent("""
    import logging, sys, time
    import numpy as np
    from mlx_stream_tts.phrase_cache import PhraseCache
    logging.basicConfig(level=logging.WARNING)
    path, name, other, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    c = PhraseCache(path, max_bytes=16 << 20)
    assert c.put_translation("en", "ja", "m", "hello " + name, "here")
    deadline = time.time() + 30
    while c.get_translation("en", "ja", "m", "hello " + other) is None:  # start together
        assert time.time() < deadline, "the other writer never came"
        time.sleep(0.001)
    t0 = time.time()
    for i in range(n):
        assert c.put_translation("en", "ja", "m", f"{name} {i}", f"{name}-{i}"), i
        assert c.put_translation("en", "ja", "m", f"shared {i}", f"shared-{i}"), i
        if i % 6 == 0:
            assert c.put_audio("v", 1.0, f"{name} {i}", np.full(2400, 0.25, np.float32), 24000), i
        assert c.get_translation("en", "ja", "m", f"shared {i // 2}") == f"shared-{i // 2}"
    t1 = time.time()
    c.close()
    print("ok", t0, t1)
""")


def test_two_processes_write_and_read_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    root = Path(__file__).resolve().parents[1]  # this checkout's package, not an installed one
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name, other, str(_N)], cwd=root,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, other in (("service", "speak"), ("speak", "service"))
    ]
    results = [p.communicate(timeout=60) for p in procs]
    spans = []
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and out.startswith("ok "), err
        assert "WARNING" not in err, err
        spans.append([float(x) for x in out.split()[1:]])
    together = min(spans[0][1], spans[1][1]) - max(spans[0][0], spans[1][0])
    print(f"writers ran {spans[0][1] - spans[0][0]:.2f} s and {spans[1][1] - spans[1][0]:.2f} s, together {together:.2f} s")
    assert together > 0
    with PhraseCache(path, max_bytes=16 << 20) as c:
        for name in ("service", "speak"):
            for i in range(_N):
                assert c.get_translation("en", "ja", "m", f"{name} {i}") == f"{name}-{i}"
                if i % 6 == 0:
                    assert c.get_audio("v", 1.0, f"{name} {i}") is not None
        assert all(c.get_translation("en", "ja", "m", f"shared {i}") == f"shared-{i}" for i in range(_N))
        assert c.stats()["entries"] == 2 + 2 * _N + _N + 2 * len(range(0, _N, 6))


# -- a broken file or folder --------------------------------------------------------------------


def test_corrupt_file_is_rebuilt_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "phrases.sqlite3"
    path.write_bytes(os.urandom(10_000))
    with caplog.at_level(logging.WARNING):
        c = PhraseCache(path)
    assert any("corrupt" in m for m in warnings_of(caplog))
    assert c.put_translation("en", "ja", "m", "Done.", "完了。")
    assert c.get_translation("en", "ja", "m", "Done.") == "完了。"
    c.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_file_corrupted_while_open_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "phrases.sqlite3"
    with PhraseCache(path) as c:
        for i in range(50):
            c.put_audio("v", 1.0, str(i), tone(str(i), 2000), RATE)
    c = PhraseCache(path)
    assert c.get_audio("v", 1.0, "3") is not None
    size = path.stat().st_size
    with open(path, "r+b") as f:  # junk over every page after the first, under the open connection
        f.seek(4096)
        f.write(os.urandom(size - 4096))
    with caplog.at_level(logging.WARNING):
        results = [c.get_audio("v", 1.0, str(i)) for i in range(50)]
        c.put_translation("en", "ja", "m", "after", "後")
    assert any("corrupt" in m for m in warnings_of(caplog))
    assert results.count(None) > 0
    assert c.get_translation("en", "ja", "m", "after") == "後"  # working again, empty
    c.close()


def test_unopenable_path_degrades_to_a_no_op_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        c = PhraseCache(blocker / "phrases.sqlite3")
        inner_tr, inner_voice = Translator(), Voice()
        tr = CachedTranslator(inner_tr, c, model_id="m")
        voice = CachedVoice(inner_voice, c, voice_id="k")
        for _ in range(3):
            assert tr.translate(["Done."], "en", "ja") == ["DONE."]
            assert collect(voice.synthesize("完了。")).size == 3 * 4800
            assert not c.put_audio("v", 1.0, "a", tone("a", 100), RATE)
    assert len(inner_tr.batches) == 3 and len(inner_voice.calls) == 3
    assert len(warnings_of(caplog)) == 1
    assert c.stats()["available"] is False
    c.close()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_degrades_to_a_no_op(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with caplog.at_level(logging.WARNING):
            c = PhraseCache(folder / "phrases.sqlite3")
            for _ in range(3):
                assert not c.put_translation("en", "ja", "m", "a", "あ")
                assert c.get_translation("en", "ja", "m", "a") is None
        assert len(warnings_of(caplog)) == 1
        c.close()
    finally:
        folder.chmod(0o755)


def test_locked_database_skips_writes_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "phrases.sqlite3"
    c = PhraseCache(path, timeout=0.2)
    assert c.put_translation("en", "ja", "m", "a", "あ")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in the middle of a long write
    try:
        with caplog.at_level(logging.WARNING):
            t0 = time.perf_counter()
            assert not any([c.put_translation("en", "ja", "m", f"b{i}", "い") for i in range(3)])
            assert time.perf_counter() - t0 < 3.0
            reads = []
            for _ in range(40):  # reads go on (WAL); their use stamps wait without blocking the read
                t0 = time.perf_counter()
                assert c.get_translation("en", "ja", "m", "a") == "あ"
                reads.append(time.perf_counter() - t0)
        assert len(warnings_of(caplog)) == 1
        assert max(reads) < 0.1, max(reads)  # far below the 0.2 s a blocked write would wait
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert c.put_translation("en", "ja", "m", "c", "う")  # works again once the lock is gone
    c.close()


def test_full_database_skips_writes_with_one_warning(cache: PhraseCache, caplog: pytest.LogCaptureFixture) -> None:
    cache.put_translation("en", "ja", "m", "a", "あ")
    # A disk that is full, as SQLite sees it: no page may be added to the file.
    pages = cache._conn.execute("PRAGMA page_count").fetchone()[0]
    cache._conn.execute(f"PRAGMA max_page_count = {pages}")
    with caplog.at_level(logging.WARNING):
        assert not cache.put_audio("v", 1.0, "big", tone("big", 200_000), RATE)
        assert not cache.put_audio("v", 1.0, "big 2", tone("big", 200_000), RATE)
    assert len(warnings_of(caplog)) == 1 and "full" in warnings_of(caplog)[0]
    assert cache.get_translation("en", "ja", "m", "a") == "あ"
    assert cache.get_audio("v", 1.0, "big") is None


# -- turning it on and off --------------------------------------------------------------------------


def test_env_var_and_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_STREAM_TTS_CACHE", str(tmp_path))
    monkeypatch.setenv(NO_CACHE_ENV, "1")
    assert open_default_cache() is None
    assert not (tmp_path / "phrases.sqlite3").exists()
    c = open_default_cache(enabled=True)
    assert c is not None and c.path == tmp_path / "phrases.sqlite3"
    c.close()
    monkeypatch.setenv(NO_CACHE_ENV, "0")
    c = open_default_cache()
    assert c is not None and c.put_translation("en", "ja", "m", "a", "あ")
    c.close()
    assert open_default_cache(enabled=False) is None
    monkeypatch.delenv(NO_CACHE_ENV)
    c = open_default_cache()
    assert c is not None and c.get_translation("en", "ja", "m", "a") == "あ"  # it persisted
    c.close()


def test_no_cache_wrappers_pass_through() -> None:
    inner_tr, inner_voice = Translator(), Voice()
    tr, voice = CachedTranslator(inner_tr, None, "m"), CachedVoice(inner_voice, None, "k")
    for _ in range(2):
        assert tr.translate(["a"], "en", "ja") == ["A"]
        collect(voice.synthesize("あ"))
    assert len(inner_tr.batches) == 2 and len(inner_voice.calls) == 2


def test_fingerprint_changes_with_the_model_files(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"d_model": 8}')
    (model / "model.safetensors").write_bytes(b"\0" * 100)
    a = fingerprint(model)
    assert fingerprint(model) == a and len(a) == 16
    (model / "config.json").write_text('{"d_model": 9}')
    b = fingerprint(model)
    (model / "model.safetensors").write_bytes(b"\0" * 101)
    c = fingerprint(model)
    assert len({a, b, c}) == 3
    with pytest.raises(FileNotFoundError, match="no such"):
        fingerprint(tmp_path / "missing")


# -- latency ------------------------------------------------------------------------------------------


def test_voice_hit_yields_its_first_chunk_at_once(cache: PhraseCache) -> None:
    inner = Voice(chunks=10, chunk_len=RATE, delay=0.5)  # 10 s of audio, 50 ms per chunk when not cached
    voice = CachedVoice(inner, cache, voice_id="k")
    collect(voice.synthesize("長めの文です。", 1.0))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        first = next(iter(voice.synthesize("長めの文です。", 1.0)))
        times.append(time.perf_counter() - t0)
        assert first.size > 0
    assert len(inner.calls) == 1
    print(f"cached voice: first chunk of a 10 s phrase after {min(times) * 1e3:.2f} ms (max {max(times) * 1e3:.2f} ms)")
    assert min(times) < 0.05


class TimedSink:
    def __init__(self) -> None:
        self.first_write: float | None = None
        self.audio: list[np.ndarray] = []

    def open(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def write(self, audio: np.ndarray) -> None:
        if self.first_write is None:
            self.first_write = time.perf_counter()
        self.audio.append(np.array(audio))

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def run_once(path: Path, text: str) -> tuple[float, np.ndarray, Translator, Voice]:
    """One pipeline run on a fresh cache object over ``path``: seconds from feed to the sink's first write."""
    inner_tr, inner_voice = Translator(delay=0.15), Voice(chunks=3, chunk_len=4800, delay=0.15)
    sink = TimedSink()
    with PhraseCache(path) as cache:
        pipe = Pipeline(CachedTranslator(inner_tr, cache, "nllb"), CachedVoice(inner_voice, cache, "kokoro"), sink)
        t0 = time.perf_counter()
        pipe.feed(text)
        pipe.flush()
        pipe.close()
    assert sink.first_write is not None
    return sink.first_write - t0, np.concatenate(sink.audio), inner_tr, inner_voice


def test_pipeline_speaks_a_cached_sentence_within_50_ms(tmp_path: Path) -> None:
    path = tmp_path / "phrases.sqlite3"
    text = "Let me run the tests."
    cold, audio1, tr1, voice1 = run_once(path, text)
    warm, audio2, tr2, voice2 = run_once(path, text)  # another run, as another process would
    print(f"pipeline: sentence end -> sink {cold * 1e3:.1f} ms cold, {warm * 1e3:.1f} ms cached")
    assert tr1.batches == [[text]] and voice1.calls == [text.upper()]
    assert tr2.batches == [] and voice2.calls == []
    assert cold > 0.15  # the fakes take 0.15 s to translate and 0.05 s per audio chunk
    assert warm < 0.05
    assert audio2.shape == audio1.shape and np.array_equal(to_int16(audio2), to_int16(audio1))
