"""cpu/translator.py: which translator a load gets (the pure model or the CPU accelerator), and what it
says when part of the accelerator cannot run."""

import logging

import pytest
from nllb_fixtures import get_converted, needs_accelerator

import mlx.core as mx
import mlx.nn as nn

from mlx_stream_tts import cpu
from mlx_stream_tts.cpu import blas as _blas
from mlx_stream_tts.cpu import nllb_graph
from mlx_stream_tts.cpu.nllb_step import DecodingStep, nllb_decode
from mlx_stream_tts.cpu.translator import STEP, accelerate
from mlx_stream_tts.models import nllb
from mlx_stream_tts.translate import Translator

REFERENCE_TYPES = (nn.Linear, nn.LayerNorm, nn.Embedding, nllb.Attention, nllb.LMHead, nllb.Model, nllb.M2M100Model,
                   nllb.Encoder, nllb.Decoder, nllb.EncoderLayer, nllb.DecoderLayer)
needs_step = pytest.mark.skipif(_blas.gemv_shim is None or nllb_decode() is None,
                                reason="no gemv shim or C compiler here")


def _pure(model) -> bool:
    return all(type(m) in REFERENCE_TYPES for _, m in model.named_modules())


@pytest.fixture
def step_off(monkeypatch):
    """The C step unavailable, as where no compiler exists; the once-per-process warning armed again."""
    monkeypatch.setenv("MLX_STREAM_TTS_NATIVE_DECODE", "0")
    monkeypatch.setattr(cpu, "_warned", set())
    nllb_decode.cache_clear()
    yield
    monkeypatch.delenv("MLX_STREAM_TTS_NATIVE_DECODE")
    nllb_decode.cache_clear()


def test_mlx_backend_swaps_nothing(tmp_path_factory, caplog):
    with caplog.at_level(logging.INFO, logger="mlx_stream_tts.cpu.translator"):
        tr = Translator.load(get_converted(tmp_path_factory, "d16"), backend="mlx")
    assert tr.accelerator is None and _pure(tr.model)
    assert "pure MLX model (backend 'mlx')" in caplog.text


def test_environment_forces_the_pure_model(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MLX_STREAM_TTS_BACKEND", "mlx")
    for backend in ("auto", "cpu"):
        tr = Translator.load(get_converted(tmp_path_factory, "d16"), backend=backend)
        assert tr.accelerator is None and _pure(tr.model)


@needs_accelerator
def test_gpu_keeps_the_pure_model(tmp_path_factory, monkeypatch):
    """Where MLX's default device is a GPU, "auto" changes nothing and "cpu" says why it cannot run."""
    model = Translator.load(get_converted(tmp_path_factory, "d16"), backend="mlx").model
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))
    assert accelerate(model, "auto") is None and _pure(model)
    with pytest.raises(cpu.AcceleratorError, match="CPU accelerator only"):
        accelerate(model, "cpu")


@needs_accelerator
@needs_step
def test_auto_on_this_cpu_applies_the_accelerator(tmp_path_factory, caplog):
    with caplog.at_level(logging.INFO, logger="mlx_stream_tts.cpu.translator"):
        tr = Translator.load(get_converted(tmp_path_factory, "d16"))
    acc = tr.accelerator
    assert acc is not None and isinstance(acc.step, DecodingStep) and not acc.parallel
    assert isinstance(tr.model.model.decoder.layers[0].self_attn, nllb_graph.FusedAttention)
    assert "one-call decoding step (float32)" in caplog.text
    quantized = Translator.load(get_converted(tmp_path_factory, "d64q", q_bits=8, q_group_size=32))
    assert quantized.accelerator.step is not None
    assert type(quantized.model.model.encoder.layers[0].fc1) is nllb_graph.CpuLinear  # float32 encoder
    graph = Translator.load(get_converted(tmp_path_factory, "d16"), c_step=False, parallel=True)
    assert graph.accelerator.step is None and graph.accelerator.parallel
    assert graph.model.model.decoder.layers[0].fc1.split


@needs_accelerator
def test_one_warning_when_the_step_cannot_be_built(tmp_path_factory, step_off, caplog):
    path = get_converted(tmp_path_factory, "d16")
    with caplog.at_level(logging.INFO, logger="mlx_stream_tts.cpu"):
        first, second = Translator.load(path), Translator.load(path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert STEP in warnings[0].getMessage() and "MLX_STREAM_TTS_NATIVE_DECODE=0" in warnings[0].getMessage()
    for tr in (first, second):  # the CPU graph still runs, decoding with MLX ops
        assert tr.accelerator is not None and tr.accelerator.step is None
        assert isinstance(tr.model.model.decoder.layers[0].fc1, nllb_graph.CpuLinear)
        assert len(tr.translate(["Hello world."], max_new_tokens=4)) == 1


@needs_accelerator
def test_cpu_backend_raises_with_the_reason(tmp_path_factory, step_off):
    with pytest.raises(cpu.AcceleratorError, match="MLX_STREAM_TTS_NATIVE_DECODE=0"):
        Translator.load(get_converted(tmp_path_factory, "d16"), backend="cpu")


@needs_accelerator
@needs_step
def test_half_precision_gets_the_graph_without_the_step(tmp_path_factory, caplog):
    """The C step reads float32 and 8/4-bit weights: a float16 model on the CPU decodes with MLX ops,
    with an INFO line and no warning, whatever the backend; dtype "auto" would have loaded float32."""
    path = get_converted(tmp_path_factory, "d16", dtype="float16")
    with caplog.at_level(logging.INFO, logger="mlx_stream_tts.cpu"):
        for backend in ("auto", "cpu"):
            tr = Translator.load(path, dtype=None, backend=backend)
            assert tr.accelerator.step is None and tr.model.model.shared.weight.dtype == mx.float16
    assert "float16 weights" in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert Translator.load(path).accelerator.step is not None  # dtype="auto": float32 on the CPU
