"""The Kokoro vocoder's DSP pieces against PyTorch on fixed inputs: the pure model's and the CPU
accelerator's convolutions (``cpu/conv.py``), the STFT, the harmonic source, the polynomial functions."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_stream_tts.cpu import conv as cpu_conv
from mlx_stream_tts.cpu.modules import adopt
from mlx_stream_tts.models import istftnet, kokoro_dsp
from mlx_stream_tts.models.istftnet import AdaIN1d, AdaINResBlock1, ConvTranspose1d
from mlx_stream_tts.models.kokoro_dsp import STFT, SineGen, interpolate_linear

torch = pytest.importorskip("torch")
F = torch.nn.functional

from kokoro_reference import torch_istft, torch_sine_source, torch_stft  # noqa: E402


def _nlc(x: np.ndarray) -> mx.array:
    return mx.array(np.ascontiguousarray(x.transpose(0, 2, 1)))


def _ncl(x: mx.array) -> np.ndarray:
    return np.array(x).transpose(0, 2, 1)


@pytest.mark.parametrize(
    "c_in, c_out, kernel, stride, padding, output_padding, groups",
    [
        (16, 8, 20, 10, 5, 0, 1),  # generator.ups.0
        (8, 4, 12, 6, 3, 0, 1),  # generator.ups.1
        (12, 12, 3, 2, 1, 1, 12),  # AdainResBlk1d.pool (depthwise)
        (5, 3, 7, 3, 2, 1, 1),  # kernel not a multiple of the stride
        (512, 256, 20, 10, 5, 0, 1),  # Kokoro's own widths: generator.ups.0
        (1090, 1090, 3, 2, 1, 1, 1090),  # decoder.decode.3.pool
    ],
)
@pytest.mark.parametrize("cpu", [False, True], ids=["pure", "cpu"])
def test_conv_transpose_matches_torch(c_in, c_out, kernel, stride, padding, output_padding, groups, cpu):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((c_in, c_out // groups, kernel)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal((2, c_in, 11)).astype(np.float32)
    ref = F.conv_transpose1d(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride=stride, padding=padding,
                             output_padding=output_padding, groups=groups).numpy()
    layer = ConvTranspose1d(c_in, c_out, kernel, stride, padding, output_padding, groups)
    # PyTorch (in, out / g, K) -> MLX (out, K, in / g), as the converter does.
    layer.weight = mx.array(w.reshape(groups, c_in // groups, c_out // groups, kernel).transpose(0, 2, 3, 1)
                            .reshape(c_out, kernel, c_in // groups))
    layer.bias = mx.array(b)
    if cpu:  # one GEMM and an overlap-add (ungrouped)
        layer = adopt(cpu_conv.ConvTranspose1d, layer)
    out = _ncl(layer(_nlc(x)))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel, dilation", [(3, 1), (3, 5), (7, 3), (11, 5), (11, 1)])
@pytest.mark.parametrize("path", ["pure", "cpu-gemm", "cpu-conv"])  # cpu: GEMMs / MLX conv (+ dilation split)
@pytest.mark.parametrize("c_out", [24, 2])  # 2: few outputs, one GEMM onto every tap's output
def test_conv1d_paths_match_torch(kernel, dilation, path, c_out, monkeypatch):
    monkeypatch.setattr(cpu_conv, "ADDMM_MIN_ELEMENTS", 0 if path == "cpu-gemm" else 1 << 40)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((c_out, 16, kernel)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal((1, 16, 41)).astype(np.float32)
    pad = dilation * (kernel - 1) // 2
    ref = F.conv1d(torch.tensor(x), torch.tensor(w), torch.tensor(b), padding=pad, dilation=dilation).numpy()
    layer = nn.Conv1d(16, c_out, kernel, padding=pad, dilation=dilation)
    layer.weight, layer.bias = mx.array(w.transpose(0, 2, 1)), mx.array(b)
    if path != "pure":
        layer = adopt(cpu_conv.Conv1d, layer)
    np.testing.assert_allclose(_ncl(layer(_nlc(x))), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cpu", [False, True], ids=["pure", "cpu"])
def test_strided_conv_matches_torch(cpu):
    # generator.noise_convs.0: kernel 12, stride 6, padding 3 over the 22 STFT channels.
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 22, 12)).astype(np.float32)
    x = rng.standard_normal((1, 22, 61)).astype(np.float32)
    ref = F.conv1d(torch.tensor(x), torch.tensor(w), stride=6, padding=3).numpy()
    layer = nn.Conv1d(22, 4, 12, stride=6, padding=3, bias=False)
    layer.weight = mx.array(w.transpose(0, 2, 1))
    if cpu:
        layer = adopt(cpu_conv.Conv1d, layer)
    np.testing.assert_allclose(_ncl(layer(_nlc(x))), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scale", [2, 300])
def test_linear_interpolation_matches_torch(scale):
    x = np.random.default_rng(3).standard_normal((1, 3, 9)).astype(np.float32)
    ref = F.interpolate(torch.tensor(x), scale_factor=scale, mode="linear").numpy()
    np.testing.assert_allclose(_ncl(interpolate_linear(_nlc(x), scale)), ref, atol=1e-5)


def test_nearest_upsampling_matches_torch():
    x = np.random.default_rng(4).standard_normal((1, 3, 7)).astype(np.float32)
    ref = F.interpolate(torch.tensor(x), scale_factor=2, mode="nearest").numpy()
    np.testing.assert_array_equal(_ncl(mx.repeat(_nlc(x), 2, axis=1)), ref)


def test_stft_matches_torch():
    x = np.random.default_rng(5).standard_normal((2, 600)).astype(np.float32)
    mag, phase = STFT(20, 5).transform(mx.array(x))
    ref_mag, ref_phase = torch_stft(x)
    assert mag.shape == ref_mag.shape == (2, 121, 11)
    np.testing.assert_allclose(np.array(mag), ref_mag, atol=1e-4, rtol=1e-4)
    # Compare phases as unit phasors (a phase of pi and -pi are the same).
    strong = ref_mag > 1e-3
    err = np.abs(np.exp(1j * np.array(phase)) - np.exp(1j * ref_phase))[strong]
    assert err.max() < 1e-3


def test_istft_matches_torch():
    rng = np.random.default_rng(6)
    mag = np.exp(rng.standard_normal((2, 121, 11))).astype(np.float32)
    phase = rng.uniform(-math.pi, math.pi, (2, 121, 11)).astype(np.float32)
    out = np.array(STFT(20, 5).inverse(mx.array(mag), mx.array(phase)))
    ref = torch_istft(mag, phase)
    assert out.shape == ref.shape == (2, 600)
    np.testing.assert_allclose(out, ref, atol=1e-4 * np.abs(ref).max())


def test_stft_round_trip():
    x = np.random.default_rng(7).standard_normal((1, 3000)).astype(np.float32)
    stft = STFT(20, 5)
    back = np.array(stft.inverse(*stft.transform(mx.array(x))))
    np.testing.assert_allclose(back, x, atol=1e-4)


def test_sine_source_matches_torch():
    rng = np.random.default_rng(8)
    f0 = rng.uniform(80, 400, (2, 40)).astype(np.float32)
    f0[:, 10:14] = 0.0  # unvoiced frames
    f0[0, 30:] = 5.0  # below the voicing threshold
    ours = np.array(SineGen(24000, 300, 8)(mx.array(f0)))
    ref = torch_sine_source(f0)
    assert ours.shape == ref.shape == (2, 12000, 9)
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_sin_squared_accuracy():
    t = np.linspace(-60, 60, 200_001).astype(np.float32)
    ours = np.array(kokoro_dsp.sin_squared(mx.array(t)))
    np.testing.assert_allclose(ours, np.sin(t.astype(np.float64)) ** 2, atol=5e-6)


def test_adain_matches_torch():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 6, 30)).astype(np.float32)
    s = rng.standard_normal((1, 4)).astype(np.float32)
    layer = AdaIN1d(4, 6)
    h = np.array(layer.fc(mx.array(s)))
    gamma, beta = torch.tensor(h[:, :6, None]), torch.tensor(h[:, 6:, None])
    ref = ((1 + gamma) * F.instance_norm(torch.tensor(x), eps=1e-5) + beta).numpy()
    np.testing.assert_allclose(_ncl(layer(_nlc(x), mx.array(s))), ref, atol=1e-4)


def test_fast_transcendentals_match_numpy():
    x = np.linspace(-40.0, 40.0, 200_001).astype(np.float32)
    xm = mx.array(x)
    np.testing.assert_allclose(np.array(kokoro_dsp.tanh(xm)), np.tanh(x.astype(np.float64)), atol=3e-7)
    # The error grows with |t| through float32 range reduction (t - k pi, k <= 13 here): under one ulp of 40.
    np.testing.assert_allclose(np.array(kokoro_dsp.fast_sin(xm)), np.sin(x.astype(np.float64)), atol=4e-6)
    np.testing.assert_allclose(np.array(kokoro_dsp.fast_cos(xm)), np.cos(x.astype(np.float64)), atol=4e-6)
    phase = mx.array(np.linspace(0, 1, 10_001, endpoint=False).astype(np.float32))  # SineGen's use
    np.testing.assert_allclose(np.array(kokoro_dsp.fast_sin(2 * np.pi * phase)),
                               np.sin(2 * np.pi * np.array(phase).astype(np.float64)), atol=5e-7)
    small = mx.array(np.linspace(-8, 8, 10_001).astype(np.float32))
    ref = F.gelu(torch.tensor(np.array(small)), approximate="tanh").numpy()
    np.testing.assert_allclose(np.array(kokoro_dsp.gelu_approx(small)), ref, atol=1e-6)


def test_norm_stats_pool_earlier_cores_with_the_window():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 40, 3)).astype(np.float32) * np.array([1.0, 2.0, 5.0], np.float32) + 1.5
    # Window 1: frames [0, 14), core [0, 10); window 2: frames [6, 40), core [10, 40). One row per frame.
    first = istftnet.NormStats(0, 10, 14)
    mean, var = first(mx.array(x[:, :14]))
    np.testing.assert_allclose(np.array(mean)[0, 0], x[0, :14].mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.array(var)[0, 0], x[0, :14].var(0), rtol=1e-5)
    second = istftnet.NormStats(4, 34, 34, prior=first)
    mean, var = second(mx.array(x[:, 6:40]))
    pooled = np.concatenate([x[0, :10], x[0, 6:40]])
    np.testing.assert_allclose(np.array(mean)[0, 0], pooled.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.array(var)[0, 0], pooled.var(0), rtol=1e-4)
    count, total, _ = second.totals[0]
    assert count == 40
    np.testing.assert_allclose(np.array(total)[0, 0], x[0].sum(0), rtol=1e-5)


def test_snake_is_the_reference_formula():
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((2, 50, 6)) * 3).astype(np.float32)
    alpha = rng.uniform(0.2, 3.0, 6).astype(np.float32)
    ref = torch.tensor(x) + torch.sin(torch.tensor(alpha) * torch.tensor(x)) ** 2 / torch.tensor(alpha)
    np.testing.assert_allclose(np.array(istftnet.snake(mx.array(x), mx.array(alpha))), ref.numpy(), atol=2e-6)


def test_cpu_resblock_matches_the_pure_one():
    """The CPU resblock: AdaIN + Snake as one affine then ``u + sin(u)^2``, ``1 / alpha`` folded into
    the conv weights once; the same function as the pure block up to float rounding."""
    rng = np.random.default_rng(11)
    block = AdaINResBlock1(24, 7, (1, 3, 5), 8)
    for i in range(3):
        block.alpha1[i] = mx.array(rng.uniform(0.3, 3, 24).astype(np.float32))
        block.alpha2[i] = mx.array(rng.uniform(0.3, 3, 24).astype(np.float32))
    x = mx.array(rng.standard_normal((2, 300, 24)).astype(np.float32))
    s = mx.array(rng.standard_normal((2, 8)).astype(np.float32))
    ref = np.array(block(x, s))
    fast = cpu_conv.AdaINResBlock1.from_block(block)
    out = np.array(fast(x, s))
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    norm_ref, norm_fast = istftnet.NormStats(10, 200, 300), istftnet.NormStats(10, 200, 300)
    np.testing.assert_allclose(np.array(fast(x[:1], s[:1], norm_fast)), np.array(block(x[:1], s[:1], norm_ref)),
                               atol=1e-4 * np.abs(ref).max())
    assert len(norm_fast.totals) == len(norm_ref.totals) == 6
