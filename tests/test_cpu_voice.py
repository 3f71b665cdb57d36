"""The voice's CPU accelerator (``cpu/voice.py``): what it chooses, that it swaps and restores modules
without touching the parameters, and that the accelerated model computes what the pure one does.

On a tiny random model (``kokoro_reference.TINY``: Kokoro's layer structure with 16 channels); the real
weights are in ``test_kokoro_parity.py``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlx_stream_tts.cpu as cpu
from kokoro_reference import needs_accelerator, tiny_model, write_tiny
from mlx_stream_tts.cpu import AcceleratorError
from mlx_stream_tts.cpu import int8_conv as _native
from mlx_stream_tts.cpu.modules import replaced
from mlx_stream_tts.cpu.voice import accelerate, restore
from mlx_stream_tts.voice import MlxEngine, Prosody

ROOT = Path(__file__).resolve().parents[1]
HAS_INT8 = _native.int8_conv() is not None
STYLE = np.random.default_rng(5).standard_normal(16).astype(np.float32)
IDS = np.array([3, 5, 7, 2, 9, 4, 6, 8, 11, 12] * 3)


@pytest.fixture(scope="module")
def model():
    m = tiny_model()
    yield m
    restore(m)


@pytest.fixture(scope="module")
def prosody(model) -> Prosody:
    """The tiny model's prosody with a speech-like pitch: its own F0 is near 0 Hz, i.e. unvoiced, and
    a silent harmonic source would leave one resblock normalising nothing but rounding noise."""
    restore(model)
    p = MlxEngine(model, backend="mlx").predict(IDS, STYLE, 1.0)
    t = np.arange(p.f0.size, dtype=np.float32)
    f0 = (160 + 40 * np.sin(t / 9.0)) * (np.sin(t / 23.0) > -0.8)  # with a few unvoiced stretches
    return Prosody(p.durations, p.asr, f0.astype(np.float32), p.n)


def _pure_modules(model: nn.Module) -> bool:
    return all(type(m).__module__.startswith(("mlx_stream_tts.models.", "mlx.nn.")) for _, m in model.named_modules())


def _decode(model, p: Prosody) -> np.ndarray:
    audio = model.decode(mx.array(p.asr[None]), mx.array(p.f0[None]), mx.array(p.n[None]), mx.array(STYLE))
    return np.array(audio)


def _windows(engine: MlxEngine, p: Prosody) -> list[np.ndarray]:
    """Three windows with pooled statistics, as ``Voice`` cuts a sentence."""
    f = p.frames
    decode = engine.window_decoder(p, STYLE)
    return [decode(0, f // 3 + 4, 0, f // 3), decode(f // 3 - 4, 2 * f // 3 + 4, f // 3, 2 * f // 3),
            decode(2 * f // 3 - 4, f, 2 * f // 3, f)]


def test_mlx_backend_swaps_nothing(model):
    assert accelerate(model, "mlx") == "mlx"
    assert replaced(model) == [] and _pure_modules(model)
    assert accelerate(model, "auto", "float32") == ("mlx" if cpu.resolve_backend() == "mlx" else "cpu-float32")
    assert accelerate(model, "mlx", "float32") == "mlx"
    assert replaced(model) == [] and _pure_modules(model)


@needs_accelerator
@pytest.mark.parametrize("precision", ["auto", "int8", "float32"])
def test_accelerate_swaps_modules_and_restore_puts_them_back(model, prosody, precision):
    if precision == "int8" and not HAS_INT8:
        pytest.skip("no AVX-512 VNNI or no C compiler: the int8 kernel is not built here")
    before = dict(nn.utils.tree_flatten(model.parameters()))
    pure = _decode(model, prosody)
    expected = "cpu-int8" if precision != "float32" and HAS_INT8 else "cpu-float32"
    assert accelerate(model, "auto", precision) == expected
    names = replaced(model)
    assert "decoder.generator.resblocks.0" in names and "text_encoder.cnn.0.0" in names
    assert ("decoder.generator" in names) == (expected == "cpu-int8")  # the NumPy generator of the int8 path
    # Swapped, not copied: the same parameter names and arrays.
    after = dict(nn.utils.tree_flatten(model.parameters()))
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    restore(model)
    assert replaced(model) == [] and _pure_modules(model)
    np.testing.assert_array_equal(_decode(model, prosody), pure)


@needs_accelerator
def test_float32_accelerator_matches_the_pure_model(model, prosody):
    restore(model)
    engine = MlxEngine(model, backend="mlx")
    pure, pure_windows = _decode(model, prosody), _windows(engine, prosody)
    assert engine.accelerate("auto", "float32") == "cpu-float32"
    assert (engine.backend, engine.precision) == ("cpu", "float32")
    try:
        fast, fast_windows = _decode(model, prosody), _windows(engine, prosody)
    finally:
        restore(model)
    # The same sums in another order (measured ~3e-6 of the peak).
    assert np.abs(fast - pure).max() <= 1e-4 * np.abs(pure).max()
    for a, b in zip(fast_windows, pure_windows):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


@needs_accelerator
@pytest.mark.skipif(not HAS_INT8, reason="no AVX-512 VNNI or no C compiler: the int8 kernel is not built here")
def test_int8_accelerator_is_close_to_the_pure_model(model, prosody):
    restore(model)
    engine = MlxEngine(model, backend="mlx")
    pure, pure_windows = _decode(model, prosody), _windows(engine, prosody)
    assert engine.accelerate("auto", "int8") == "cpu-int8"
    try:
        fast, fast_windows = _decode(model, prosody), _windows(engine, prosody)
    finally:
        restore(model)
    # 8-bit convolutions and activations: close, not equal (measured ~0.997 on this random model;
    # the real weights keep their log-mel bars in test_kokoro_parity.py).
    for a, b in [(fast, pure), *zip(fast_windows, pure_windows)]:
        assert a.shape == b.shape and np.corrcoef(a, b)[0, 1] > 0.99


def test_environment_forces_the_pure_model(model, monkeypatch):
    monkeypatch.setenv("MLX_STREAM_TTS_BACKEND", "mlx")
    for backend in ("auto", "cpu", "mlx"):
        assert accelerate(model, backend) == "mlx"
    assert replaced(model) == []
    engine = MlxEngine(model)
    assert (engine.backend, engine.precision) == ("mlx", "float32")


def test_a_gpu_gets_the_pure_model(model, monkeypatch):
    monkeypatch.delenv("MLX_STREAM_TTS_BACKEND", raising=False)  # the device decides here, not the environment
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))
    monkeypatch.setattr(_native, "int8_conv", lambda: pytest.fail("nothing is packed or built for a GPU"))
    assert accelerate(model, "auto") == "mlx" and replaced(model) == []
    with pytest.raises(AcceleratorError, match="only serves MLX's CPU device"):
        accelerate(model, "cpu")
    with pytest.raises(AcceleratorError, match="int8.*Device\\(gpu"):
        MlxEngine(model, precision="int8")
    assert MlxEngine(model).backend == "mlx"


def test_bad_arguments(model):
    with pytest.raises(AcceleratorError, match="precision='int8'.*backend='mlx'"):
        accelerate(model, "mlx", "int8")
    with pytest.raises(AcceleratorError, match="precision='int8'.*backend='mlx'"):
        MlxEngine(model, backend="mlx", precision="int8")
    with pytest.raises(ValueError, match="precision"):
        accelerate(model, "auto", "half")
    with pytest.raises(ValueError, match="backend"):
        accelerate(model, "gpu")
    assert replaced(model) == []


@pytest.fixture
def no_int8_kernel(monkeypatch):
    """The 8-bit kernel unavailable (as on a CPU without AVX-512 VNNI), the one-time warning re-armed."""
    monkeypatch.setenv("MLX_STREAM_TTS_INT8", "0")
    monkeypatch.setattr(cpu, "_warned", set())
    _native.int8_conv.cache_clear()
    try:
        yield
    finally:
        monkeypatch.delenv("MLX_STREAM_TTS_INT8")
        _native.int8_conv.cache_clear()


@needs_accelerator
def test_without_the_8bit_kernel_auto_warns_once_and_runs_float32(model, no_int8_kernel, caplog):
    with caplog.at_level(logging.INFO, logger="mlx_stream_tts.cpu"):
        assert accelerate(model, "auto") == "cpu-float32"
        assert accelerate(model, "auto", "auto") == "cpu-float32"
    restore(model)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "8-bit vocoder" in warnings[0].message and "MLX_STREAM_TTS_INT8=0" in warnings[0].message
    assert "AVX-512 VNNI" in warnings[0].message
    assert any("cpu-float32" in r.message for r in caplog.records if r.levelno == logging.INFO)


@needs_accelerator
def test_without_the_8bit_kernel_cpu_or_int8_raise_with_the_reason(model, no_int8_kernel):
    with pytest.raises(AcceleratorError, match="8-bit vocoder.*MLX_STREAM_TTS_INT8=0"):
        accelerate(model, "cpu")
    with pytest.raises(AcceleratorError, match="precision='int8'.*MLX_STREAM_TTS_INT8=0.*AVX-512 VNNI"):
        accelerate(model, "auto", "int8")
    assert replaced(model) == []
    assert accelerate(model, "cpu", "float32") == "cpu-float32"
    restore(model)


@needs_accelerator
def test_engine_switches_and_reports_what_runs(model):
    engine = MlxEngine(model)
    try:
        assert engine.backend == "cpu" and engine.precision == ("int8" if HAS_INT8 else "float32")
        assert engine.accelerate("mlx") == "mlx" and replaced(model) == []
        assert (engine.backend, engine.precision) == ("mlx", "float32")
        assert engine.accelerate("cpu", "float32") == "cpu-float32"
        with pytest.raises(AcceleratorError):
            engine.accelerate("mlx", "int8")
        # A failed switch leaves the pure model, and says so.
        assert (engine.backend, engine.precision) == ("mlx", "float32") and replaced(model) == []
    finally:
        restore(model)


def test_the_pure_engine_needs_no_accelerator_module():
    """``backend="mlx"``: no module of the accelerator's voice part is imported (only ``cpu.blas``,
    which binds MLX to OpenBLAS at import, and what it needs)."""
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import numpy as np, mlx_stream_tts\n"
        "from kokoro_reference import tiny_model\n"
        "from mlx_stream_tts.voice import MlxEngine\n"
        "e = MlxEngine(tiny_model(), backend='mlx')\n"
        "p = e.predict(np.array([3, 5, 7, 2, 9] * 4), np.ones(16, np.float32), 1.0)\n"
        "e.window_decoder(p, np.ones(16, np.float32))(0, p.frames, 0, p.frames)\n"
        "print(sorted(m for m in sys.modules if m.startswith('mlx_stream_tts.cpu')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own subprocess's list of names
    assert set(loaded) <= {"mlx_stream_tts.cpu", "mlx_stream_tts.cpu.blas", "mlx_stream_tts.cpu.build"}, loaded


def test_voice_load_takes_the_backend(tmp_path):
    from mlx_stream_tts.voice import Voice

    # Voice styles are 256 values wide: the tiny model with Kokoro's style width.
    write_tiny(tmp_path / "tiny", config={**__import__("kokoro_reference").TINY, "style_dim": 128})
    with pytest.raises(ValueError, match="backend"):
        Voice.load(tmp_path / "tiny", backend="metal")
    with pytest.raises(ValueError, match="precision"):
        Voice.load(tmp_path / "tiny", precision="half")
    voice = Voice.load(tmp_path / "tiny", backend="mlx", mode="oneshot")
    assert (voice.engine.backend, voice.engine.precision) == ("mlx", "float32")
    assert replaced(voice.engine.model) == []
    audio = np.concatenate(list(voice.synthesize("はい。")))
    assert audio.size > 0 and np.isfinite(audio).all()
