"""Faults inside (issue 12, section 4): a stuck stage does not hold up closing a cancelled pipeline; an
interrupted model build leaves nothing behind; `convert` without a network fails at once in one line.

The stuck stages are fakes that block on an Event. Each test releases what it blocked, after its
assertions and also from a timer, so that the code before the fix (close() waited for the stuck call)
fails these tests in seconds instead of hanging.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mlx_stream_tts import pipeline as pipeline_module
from mlx_stream_tts.pipeline import Pipeline

from fakes import FakeTranslator, FakeVoice, RecordingSink, encode, sentence_id

ROOT = Path(__file__).resolve().parent.parent  # the checkout whose package the subprocesses import
RELEASE_AFTER = 3.0  # seconds: the timer that frees a stuck call if the code under test waits for it


class StuckVoice(FakeVoice):
    """A voice whose synthesis of a sentence containing ``stuck_on`` blocks until ``release`` is set.

    Counts the calls inside ``synthesize`` at once (``most_at_once``) and the chunks yielded after
    a release.
    """

    def __init__(self, stuck_on: str = "stuck", use_mlx: bool = False) -> None:
        super().__init__(chunks=2, chunk_len=8, use_mlx=use_mlx)
        self.stuck_on = stuck_on
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()
        self._inside = 0
        self._count_lock = threading.Lock()
        self.most_at_once = 0

    def synthesize(self, text: str, speed: float = 1.0):
        with self._count_lock:
            self._inside += 1
            self.most_at_once = max(self.most_at_once, self._inside)
        try:
            if self.stuck_on in text:
                self.entered.set()
                self.release.wait()
                if self.use_mlx:  # the stuck call ends with MLX work on its own thread, as a real voice would
                    import mlx.core as mx

                    mx.eval(mx.ones((64,)) * 2)
                self.returned.set()
            yield from super().synthesize(text, speed)
        finally:
            with self._count_lock:
                self._inside -= 1


class StuckTranslator(FakeTranslator):
    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def translate(self, texts, src_lang, tgt_lang):
        if any("stuck" in t for t in texts):
            self.entered.set()
            self.release.wait()
        return super().translate(texts, src_lang, tgt_lang)


class StuckSink(RecordingSink):
    """A device whose write blocks and ignores ``abort()`` (a hung driver) until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release_event = threading.Event()
        self.entered = threading.Event()
        self.closes = 0
        self.closed_on: str | None = None

    def write(self, audio: np.ndarray) -> None:
        self.entered.set()
        self.release_event.wait()
        super().write(audio)

    def close(self) -> None:
        self.closes += 1
        self.closed_on = threading.current_thread().name
        super().close()


def _timer(event: threading.Event) -> threading.Timer:
    timer = threading.Timer(RELEASE_AFTER, event.set)
    timer.daemon = True
    timer.start()
    return timer


def _thread(name: str) -> threading.Thread | None:
    found = [t for t in threading.enumerate() if t.name == name]
    return found[-1] if found else None


def _abandoned(caplog, stage: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"abandoned a stuck {stage} call" in r.getMessage()]


@pytest.fixture
def quick():
    """The tests below assume the default grace; make sure nobody changed it to something slow."""
    assert getattr(pipeline_module, "ABANDON_AFTER", 0.2) <= 0.25


def test_cancelled_pipeline_with_a_stuck_voice_closes_at_once(caplog, quick):
    caplog.set_level(logging.WARNING, logger="mlx_stream_tts.pipeline")
    voice, sink = StuckVoice(), RecordingSink()
    p = Pipeline(None, voice, sink, sentence_gap=0.0, early_start=False)
    timer = _timer(voice.release)
    try:
        # Enough sentences behind the stuck one to fill the queue into the voice stage.
        p.feed("Sentence 1 is fine.\nSentence 2 is stuck.\n" + "".join(f"Sentence {i} waits.\n" for i in range(3, 40)))
        assert voice.entered.wait(5.0)
        time.sleep(0.1)
        assert p._voice_q.full()
        stuck_thread = _thread("mlx_stream_tts-voice")
        p.cancel()
        t0 = time.perf_counter()
        p.close()
        elapsed = time.perf_counter() - t0
        assert elapsed < 0.5, f"close() took {elapsed:.2f} s"
        assert not voice.release.is_set()  # it returned while the call was still stuck
        assert sink.closed
        assert len(_abandoned(caplog, "voice")) == 1
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [_abandoned(caplog, "voice")[0].getMessage()]
        # The other workers are gone; only the stuck one is left, as a daemon.
        assert not p._threads[0].is_alive() and not p._threads[2].is_alive()
        assert stuck_thread is not None and stuck_thread.is_alive() and stuck_thread.daemon
        # Later calls behave: close again is a no-op, feed says the pipeline is closed.
        t0 = time.perf_counter()
        p.close()
        assert time.perf_counter() - t0 < 0.05
        with pytest.raises(RuntimeError, match="closed"):
            p.feed("More text.")
        p.cancel()  # harmless after close
        written = sink.writes
        voice.release.set()
        stuck_thread.join(2.0)
        # The abandoned call's result was dropped: nothing reached the (closed) sink, the thread ended.
        assert not stuck_thread.is_alive()
        assert sink.writes == written and 2 not in sink.ids()
        assert len(_abandoned(caplog, "voice")) == 1
    finally:
        timer.cancel()
        voice.release.set()


def test_abandoned_call_ends_its_thread_and_frees_its_mlx_streams(monkeypatch, quick):
    released: list[str] = []
    real = pipeline_module.release_thread_streams

    def record() -> None:
        released.append(threading.current_thread().name)
        real()

    monkeypatch.setattr(pipeline_module, "release_thread_streams", record)
    voice = StuckVoice(use_mlx=True)
    p = Pipeline(None, voice, RecordingSink(), sentence_gap=0.0, early_start=False)
    timer = _timer(voice.release)
    try:
        p.feed("Sentence 1 is stuck.\n")
        assert voice.entered.wait(5.0)
        stuck_thread = _thread("mlx_stream_tts-voice")
        p.cancel()
        p.close()
        assert "mlx_stream_tts-voice" not in released  # still inside the call
        voice.release.set()
        stuck_thread.join(2.0)
        assert voice.returned.is_set() and not stuck_thread.is_alive()
        assert released.count("mlx_stream_tts-voice") == 1
    finally:
        timer.cancel()
        voice.release.set()


def test_a_later_pipeline_waits_for_the_abandoned_call_before_using_the_same_voice(caplog, quick):
    caplog.set_level(logging.WARNING, logger="mlx_stream_tts.pipeline")
    voice = StuckVoice()
    first_sink, second_sink = RecordingSink(), RecordingSink()
    first = Pipeline(None, voice, first_sink, sentence_gap=0.0, early_start=False)
    timer = _timer(voice.release)
    try:
        first.feed("Sentence 7 is stuck.\n")
        assert voice.entered.wait(5.0)
        first.cancel()
        first.close()
        second = Pipeline(None, voice, second_sink, sentence_gap=0.0, early_start=False)
        second.feed("Sentence 8 is new.\n")
        time.sleep(0.3)
        # The voice is not driven from two threads at once: the new sentence waits for the old call.
        assert voice.most_at_once == 1 and second_sink.writes == 0
        assert "inside a call abandoned by an earlier pipeline" in caplog.text
        voice.release.set()
        second.close()
        assert second_sink.ids() == [8] and voice.most_at_once == 1
        assert first_sink.writes == 0  # the abandoned sentence 7 went nowhere
    finally:
        timer.cancel()
        voice.release.set()


def test_a_later_pipeline_can_still_be_cancelled_and_closed_while_it_waits(quick):
    voice = StuckVoice()
    first = Pipeline(None, voice, RecordingSink(), sentence_gap=0.0, early_start=False)
    timer = _timer(voice.release)
    try:
        first.feed("Sentence 1 is stuck.\n")
        assert voice.entered.wait(5.0)
        first.cancel()
        first.close()
        second = Pipeline(None, voice, RecordingSink(), sentence_gap=0.0, early_start=False)
        second.feed("Sentence 2 waits for the voice.\n")
        time.sleep(0.1)
        second.cancel()
        t0 = time.perf_counter()
        second.close()
        assert time.perf_counter() - t0 < 0.5
        assert not any(t.is_alive() for t in second._threads)  # waiting for a lock is not a stuck call
    finally:
        timer.cancel()
        voice.release.set()


def test_cancelled_pipeline_with_a_stuck_translator_closes_at_once(caplog, quick):
    caplog.set_level(logging.WARNING, logger="mlx_stream_tts.pipeline")
    translator, sink = StuckTranslator(), RecordingSink()
    p = Pipeline(translator, FakeVoice(), sink, sentence_gap=0.0, early_start=False)
    timer = _timer(translator.release)
    try:
        p.feed("Sentence 1 is stuck.\n" + "".join(f"Sentence {i} waits.\n" for i in range(2, 20)))
        assert translator.entered.wait(5.0)
        p.cancel()
        t0 = time.perf_counter()
        p.close()
        assert time.perf_counter() - t0 < 0.5
        assert sink.closed and len(_abandoned(caplog, "translate")) == 1
        translator.release.set()
        p._threads[0].join(2.0)
        assert not p._threads[0].is_alive() and sink.writes == 0
    finally:
        timer.cancel()
        translator.release.set()


def test_cancelled_pipeline_with_a_hung_sink_closes_at_once_and_the_sink_is_closed_once(caplog, quick):
    caplog.set_level(logging.WARNING, logger="mlx_stream_tts.pipeline")
    sink = StuckSink()
    p = Pipeline(None, FakeVoice(chunks=2, chunk_len=4), sink, sentence_gap=0.0, early_start=False)
    timer = _timer(sink.release_event)
    try:
        p.feed("".join(f"Sentence {i} is here.\n" for i in range(20)))
        assert sink.entered.wait(5.0)
        t0 = time.perf_counter()
        p.cancel()  # abort() does not unblock this device
        assert time.perf_counter() - t0 < 0.2
        t0 = time.perf_counter()
        p.close()
        assert time.perf_counter() - t0 < 0.5
        assert len(_abandoned(caplog, "sink")) == 1
        assert sink.closes == 0  # not closed under a write that is still running
        sink.release_event.set()
        p._threads[2].join(2.0)
        assert not p._threads[2].is_alive()
        assert sink.closes == 1 and sink.closed_on == "mlx_stream_tts-sink"
    finally:
        timer.cancel()
        sink.release_event.set()


def test_close_without_cancel_still_waits_for_a_slow_voice():
    """Abandoning is only for cancelled work: what was fed and not cancelled is spoken."""
    voice = StuckVoice()
    sink = RecordingSink()
    p = Pipeline(None, voice, sink, sentence_gap=0.0, early_start=False)
    p.feed("Sentence 4 is stuck for a while.\n")
    assert voice.entered.wait(5.0)
    threading.Timer(0.6, voice.release.set).start()
    t0 = time.perf_counter()
    p.close()
    assert time.perf_counter() - t0 >= 0.5
    assert sink.ids() == [4] and sink.closed
    assert not any(t.is_alive() for t in p._threads)


def test_fake_encoding_sanity():
    assert sentence_id("Sentence 12 is stuck.") == 12 and encode(1, 0) > 0


# -- an interrupted build leaves nothing behind -------------------------------------------------------

_BUILD = "import mlx_stream_tts; from convert.kokoro import ensure_default_model; print(ensure_default_model())"


def _build(cache: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "MLX_STREAM_TTS_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-c", _BUILD], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


def _build_leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(".kokoro-82m"))


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_the_first_voice_build_leaves_nothing_and_the_next_build_works(tmp_path):
    from convert.kokoro import is_converted

    cache = tmp_path / "cache"
    cache.mkdir()
    build = _build(cache)
    try:
        # Kill it while its temporary folder exists (polled: the writing phase lasts about a second).
        deadline = time.monotonic() + 60
        while not _build_leftovers(cache) and build.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert _build_leftovers(cache), "the build never made its temporary folder"
        build.send_signal(signal.SIGTERM)
        _, err = build.communicate(timeout=30)
    finally:
        if build.poll() is None:
            build.kill()
    assert build.returncode in (128 + signal.SIGTERM, -signal.SIGTERM), err.decode()[-2000:]
    assert b"Traceback" not in err
    assert _build_leftovers(cache) == []
    assert not (cache / "kokoro-82m").exists() or is_converted(cache / "kokoro-82m")
    # The next build completes.
    again = _build(cache)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()[-2000:]
    assert is_converted(cache / "kokoro-82m") and _build_leftovers(cache) == []


def test_the_next_build_removes_what_killed_builds_left(tmp_path):
    from convert.staging import LEGACY_STALE_AFTER, remove_stale

    target = tmp_path / "kokoro-82m"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".kokoro-82m.tmp-{dead.pid}-abc", tmp_path / f".kokoro-82m.old-{dead.pid}"]
    legacy_old, legacy_new = tmp_path / ".kokoro-82m-a1b2c3d4", tmp_path / ".kokoro-82m-e5f6g7h8"
    live = tmp_path / f".kokoro-82m.tmp-{os.getpid()}-xyz"  # a build under way in this process
    other = tmp_path / ".nllb-200.tmp-1-abc"  # another model's folder: not ours to judge
    for folder in (*stale, legacy_old, legacy_new, live, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    past = time.time() - LEGACY_STALE_AFTER - 60
    os.utime(legacy_old, (past, past))
    removed = remove_stale(target)
    assert sorted(removed) == sorted([*stale, legacy_old])
    assert all(not p.exists() for p in removed)
    assert legacy_new.exists() and live.exists() and other.exists()


def test_a_failed_conversion_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import convert.kokoro as kokoro

    def broken_write(out_dir, *args, **kwargs):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kokoro, "_write_folder", broken_write)
    with pytest.raises(OSError, match="No space"):
        kokoro.convert_from_onnx(tmp_path / "kokoro-82m")
    assert list(tmp_path.iterdir()) == []


# -- `convert nllb` without a network -------------------------------------------------------------------


def _convert(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "PROXY" not in k.upper()}
    # .invalid never resolves (RFC 2606): no network, wherever the test runs. An empty hub cache.
    environment.update(HF_ENDPOINT="https://hub.invalid", HF_HOME=str(tmp_path / "hf"), **env)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mlx_stream_tts", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=60)
    return done, time.monotonic() - started


@pytest.mark.parametrize("verbose", [(), ("-v",)])
def test_convert_nllb_without_network_says_so_in_one_line_at_once(tmp_path, verbose):
    out = tmp_path / "out"
    done, seconds = _convert(tmp_path, *verbose, "convert", "nllb", "facebook/nllb-200-distilled-600M", "--out", str(out))
    assert done.returncode == 1
    assert seconds < 10
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "mlx-stream-tts convert nllb: cannot download facebook/nllb-200-distilled-600M: no network "
        "(cannot resolve hub.invalid: " + lines[0].split("cannot resolve hub.invalid: ", 1)[-1]
    ], done.stderr
    assert lines[0].endswith("; download it elsewhere and pass the folder")
    assert "Traceback" not in done.stderr and "Retry" not in done.stderr
    assert not out.exists()


def test_convert_nllb_with_hf_hub_offline_says_so_at_once(tmp_path):
    done, seconds = _convert(tmp_path, "convert", "nllb", "facebook/nllb-200-distilled-600M", "--out",
                             str(tmp_path / "out"), HF_HUB_OFFLINE="1")
    assert done.returncode == 1 and seconds < 10
    assert done.stderr.strip().splitlines() == [
        "mlx-stream-tts convert nllb: cannot download facebook/nllb-200-distilled-600M: no network "
        "(HF_HUB_OFFLINE is set); download it elsewhere and pass the folder"
    ]


def test_convert_kokoro_from_the_hub_without_network_says_so_in_one_line(tmp_path):
    done, seconds = _convert(tmp_path, "convert", "kokoro", "--from-pytorch", "hexgrad/Kokoro-82M", "--out",
                             str(tmp_path / "out"))
    assert done.returncode == 1 and seconds < 10
    assert done.stderr.strip().splitlines() == [
        "mlx-stream-tts convert kokoro: cannot download hexgrad/Kokoro-82M: no network "
        "(cannot resolve hub.invalid: " + done.stderr.split("cannot resolve hub.invalid: ", 1)[-1].strip()
    ]
    assert "download it elsewhere and pass the folder" in done.stderr
