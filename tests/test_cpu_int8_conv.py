"""The 8-bit convolution kernel (mlx_stream_tts/cpu/kernels/int8_conv.c) against exact references, and
the vocoder modules built on it (``cpu/vocoder_int8.py``) against the pure model's."""

from __future__ import annotations

import mlx_stream_tts  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_stream_tts.cpu import int8_conv as _native
from mlx_stream_tts.cpu import vocoder_int8
from mlx_stream_tts.cpu.build import build
from mlx_stream_tts.models.istftnet import AdaINResBlock1, ConvTranspose1d, NormStats

needs_kernel = pytest.mark.skipif(_native.int8_conv() is None, reason="no AVX-512 VNNI or no C compiler here")


def conv_ref(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, dilation: int) -> np.ndarray:
    """"Same" 1-D conv in float64: x (T, C), w (O, K, C) -> (T, O)."""
    t = x.shape[0]
    out_c, k, _ = w.shape
    pad = dilation * (k - 1) // 2
    xp = np.pad(x.astype(np.float64), ((pad, pad), (0, 0)))
    y = np.zeros((t, out_c))
    for j in range(k):
        y += xp[j * dilation: j * dilation + t] @ w[:, j].T.astype(np.float64)
    return y if bias is None else y + bias


SHAPES = [  # T, C, O, K, dilation: rows below and around the 6-row tile, odd channel counts, O % 64 != 0
    (1, 4, 16, 3, 1), (5, 3, 70, 3, 1), (6, 128, 128, 3, 1), (7, 130, 22, 7, 3), (13, 256, 256, 11, 5),
    (64, 17, 65, 1, 1), (101, 128, 128, 11, 5),
]


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_integer_inputs_give_exact_results(shape, threads):
    # Inputs on the quantization grids (x in 0..255 with 0 and 255 present: scale 1, zero point 0;
    # every output channel's weights in -127..127 with +-127 present: scale 1) make the kernel
    # exact, so any indexing or packing slip shows as a wrong integer.
    t, c, o, k, d = shape
    rng = np.random.default_rng(sum(shape) + threads)
    x = rng.integers(0, 256, (t, c)).astype(np.float32)
    x.flat[0], x.flat[-1] = 0, 255
    w = rng.integers(-127, 128, (o, k, c)).astype(np.float32)
    w[:, 0, 0] = 127
    bias = rng.integers(-1000, 1000, o).astype(np.float32)
    y = _native.PackedConv(w, bias, d)(x, threads)
    np.testing.assert_array_equal(y, conv_ref(x, w, bias, d).astype(np.float32))


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES)
def test_real_inputs_stay_within_the_quantization_bound(shape):
    t, c, o, k, d = shape
    rng = np.random.default_rng(len(shape) * t + c)
    x = (rng.standard_normal((t, c)) * 3 + 0.5).astype(np.float32)
    w = (rng.standard_normal((o, k, c)) * 0.05).astype(np.float32)
    y = _native.PackedConv(w, None, d)(x, 2)
    ref = conv_ref(x, w, None, d)
    # Rounding moves each input by at most half its step, each weight by half its channel's step:
    # |error| <= sum |w| dx + |x| dw + dx dw over the window (plus float32 rounding).
    lo, hi = min(0.0, x.min()), max(0.0, x.max())
    dx = (hi - lo) / 255 / 2
    dw = np.abs(w).reshape(o, -1).max(axis=1) / 127 / 2
    ones = np.ones_like(x[:, :1])
    bound = conv_ref(ones * dx * np.ones_like(x), np.abs(w), None, d) \
        + conv_ref(np.abs(x), np.ones_like(w) * dw[:, None, None], None, d) \
        + conv_ref(ones * np.ones_like(x), np.ones_like(w) * dx * dw[:, None, None], None, d)
    err = np.abs(y - ref)
    assert (err <= bound * 1.001 + 1e-4).all(), float((err - bound).max())
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.999


@needs_kernel
def test_constant_and_zero_inputs():
    w = np.ones((16, 3, 8), np.float32)
    conv = _native.PackedConv(w, None, 1)
    np.testing.assert_array_equal(conv(np.zeros((10, 8), np.float32)), np.zeros((10, 16), np.float32))
    y = conv(np.full((10, 8), -2.0, np.float32))
    np.testing.assert_allclose(y, conv_ref(np.full((10, 8), -2.0), w, None, 1), rtol=1e-6)


@needs_kernel
@pytest.mark.parametrize("dilation,k", [(1, 3), (3, 7), (5, 11), (1, 1)])
def test_int8_conv_module_matches_float(dilation, k):
    rng = np.random.default_rng(k)
    conv = nn.Conv1d(24, 40, k, padding=dilation * (k - 1) // 2, dilation=dilation)
    conv.weight = mx.array((rng.standard_normal((40, k, 24)) * 0.1).astype(np.float32))
    conv.bias = mx.array(rng.standard_normal(40).astype(np.float32))
    x = mx.array(rng.standard_normal((2, 50, 24)).astype(np.float32))
    ref = np.array(conv(x))
    y = np.array(vocoder_int8.Int8Conv1d.from_conv(conv)(x))
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() < 0.05 * np.abs(ref).max()
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.999


@needs_kernel
def test_resblock_int8_close_to_float():
    rng = np.random.default_rng(3)
    block = AdaINResBlock1(32, 7, (1, 3, 5), 16)
    for i in range(3):
        block.alpha1[i] = mx.array(rng.uniform(0.5, 2, 32).astype(np.float32))
        block.alpha2[i] = mx.array(rng.uniform(0.5, 2, 32).astype(np.float32))
    x = mx.array(rng.standard_normal((2, 300, 32)).astype(np.float32))
    s = mx.array(rng.standard_normal((2, 16)).astype(np.float32))
    ref = np.array(block(x, s))
    y = np.array(vocoder_int8.Int8AdaINResBlock1.from_block(block)(x, s))
    assert y.shape == ref.shape
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.999


def test_strided_or_grouped_convs_are_not_packable():
    assert not vocoder_int8.packable(nn.Conv1d(8, 8, 4, stride=2, padding=1))
    assert not vocoder_int8.packable(nn.Conv1d(8, 8, 3, padding=0))
    assert not vocoder_int8.packable(nn.Conv1d(8, 8, 3, padding=1, groups=2))
    assert vocoder_int8.packable(nn.Conv1d(8, 8, 7, padding=9, dilation=3))
    with pytest.raises(ValueError, match="stride-1"):
        vocoder_int8.Int8Conv1d.from_conv(nn.Conv1d(8, 8, 4, stride=2, padding=1))


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("MLX_STREAM_TTS_INT8", "0")
    _native.int8_conv.cache_clear()
    try:
        assert _native.int8_conv() is None
        with pytest.raises(RuntimeError, match="not available"):
            _native.PackedConv(np.zeros((8, 3, 8), np.float32), None, 1)
    finally:
        monkeypatch.delenv("MLX_STREAM_TTS_INT8")
        _native.int8_conv.cache_clear()


def test_no_compiler_or_unreadable_source_means_no_kernel(monkeypatch, tmp_path):
    monkeypatch.setenv("MLX_STREAM_TTS_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert build("int8_conv.c", ("-DMST_TEST_KEY",)) is None
    assert build("no_such_kernel.c") is None


@needs_kernel
def test_channel_stats_and_numpy_norm_stats_match_mlx():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((120, 20)) * 2 + 1).astype(np.float32)
    big = (rng.standard_normal((5000, 20)) * 2 + 1).astype(np.float32)  # large enough for threads
    for data, lo, hi, threads in [(x, 30, 90, 1), (big, 1000, 4100, 2), (big, 0, 5000, 3), (big, 4000, 9000, 2)]:
        st = _native.channel_stats(data, lo, hi, threads)
        core = data[lo:hi].astype(np.float64)
        np.testing.assert_allclose(st.total, data.sum(0, dtype=np.float64), rtol=1e-9)
        np.testing.assert_allclose(st.squares, (data.astype(np.float64) ** 2).sum(0), rtol=1e-9)
        np.testing.assert_allclose(st.core_total, core.sum(0), rtol=1e-9)
        np.testing.assert_allclose(st.core_squares, (core ** 2).sum(0), rtol=1e-9)
        np.testing.assert_array_equal(st.low, data.min(0))
        np.testing.assert_array_equal(st.high, data.max(0))
    empty = _native.channel_stats(np.zeros((0, 4), np.float32))
    assert not empty.total.any() and not empty.low.any() and not empty.high.any()
    # Two windows of 10 frames (12 rows per frame): the second pools the first's core.
    first_mx, first_np = NormStats(0, 6, 10), NormStats(0, 6, 10)
    for a, b in [(first_mx(mx.array(x[None])), vocoder_int8.numpy_stats(first_np, x))]:
        np.testing.assert_allclose(np.array(a[0]).ravel(), b[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.array(a[1]).ravel(), b[1], rtol=1e-4, atol=1e-6)
    y = (rng.standard_normal((120, 20)) + 3).astype(np.float32)
    m_mx, v_mx = NormStats(2, 8, 10, first_mx)(mx.array(y[None]))
    m_np, v_np = vocoder_int8.numpy_stats(NormStats(2, 8, 10, first_np), y)
    np.testing.assert_allclose(np.array(m_mx).ravel(), m_np, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(v_mx).ravel(), v_np, rtol=1e-4, atol=1e-5)
    # Against the definition: the first window's core (72 rows) and the whole second window.
    both = np.concatenate([x[:72], y]).astype(np.float64)
    np.testing.assert_allclose(m_np, both.mean(0), rtol=1e-9)
    np.testing.assert_allclose(v_np, both.var(0), rtol=1e-9)


@needs_kernel
def test_fused_snake_and_residual_match_the_separate_steps():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, 24)).astype(np.float32) * 3
    a = rng.uniform(0.5, 2, 24).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    w = (rng.standard_normal((16, 5, 24)) * 0.1).astype(np.float32)
    res = rng.standard_normal((40, 16)).astype(np.float32)
    conv = _native.PackedConv(w, None, 2)
    u = x * a + b
    snake = (u + np.sin(u.astype(np.float64)) ** 2).astype(np.float32)
    fused = conv(x, 2, snake=(a, b), residual=res)
    separate = conv(snake, 2) + res
    # Same quantization grid up to float rounding of the snake: equal within one input step.
    step = (snake.max() - min(0, snake.min())) / 255
    assert np.abs(fused - separate).max() <= step * np.abs(w).reshape(16, -1).sum(1).max()
    np.testing.assert_allclose(fused, conv_ref(snake, w, None, 2) + res, atol=0.05 * np.abs(separate).max())
    with pytest.raises(ValueError, match="shape"):
        conv(x, 1, residual=res[:10])


@needs_kernel
def test_snake_range_is_the_exact_range_and_matches_the_measured_pass():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((500, 33)) * 4).astype(np.float32)
    a = rng.uniform(-2, 2, 33).astype(np.float32)  # negative scales swap a channel's ends
    b = rng.standard_normal(33).astype(np.float32)
    u = x.astype(np.float64) * a + b
    v = u + np.sin(u) ** 2
    lo, hi = _native.snake_range(_native.channel_stats(x), a, b)
    assert lo == pytest.approx(v.min(), abs=1e-5) and hi == pytest.approx(v.max(), abs=1e-5)
    w = (rng.standard_normal((40, 3, 33)) * 0.1).astype(np.float32)
    conv = _native.PackedConv(w, None, 1)
    measured = conv(x, 2, snake=(a, b))
    given = conv(x, 2, snake=(a, b), value_range=(lo, hi))
    # The same grid up to float rounding of the range: at most one quantization step apart per input.
    step = (max(hi, 0) - min(lo, 0)) / 255
    assert np.abs(given - measured).max() <= step * np.abs(w).reshape(40, -1).sum(1).max()


@needs_kernel
@pytest.mark.parametrize("k,stride,padding,output_padding", [(12, 6, 3, 0), (20, 10, 5, 0), (7, 3, 0, 2), (4, 4, 0, 0)])
def test_transposed_conv_int8_matches_float(k, stride, padding, output_padding):
    rng = np.random.default_rng(k)
    up = ConvTranspose1d(32, 16, k, stride=stride, padding=padding, output_padding=output_padding)
    up.weight = mx.array((rng.standard_normal((16, k, 32)) * 0.1).astype(np.float32))
    up.bias = mx.array(rng.standard_normal(16).astype(np.float32))
    x = mx.array(rng.standard_normal((1, 40, 32)).astype(np.float32))
    ref = np.array(up(x))
    y = np.array(vocoder_int8.Int8ConvTranspose1d.from_conv(up)(x))
    assert y.shape == ref.shape
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.999
    grouped = ConvTranspose1d(8, 8, 3, stride=2, padding=1, output_padding=1, groups=8)
    with pytest.raises(ValueError, match="ungrouped"):
        vocoder_int8.Int8ConvTranspose1d.from_conv(grouped)


@needs_kernel
def test_a_damaged_cached_kernel_is_built_again(monkeypatch, tmp_path):
    monkeypatch.setenv("MLX_STREAM_TTS_CACHE", str(tmp_path))
    _native.int8_conv.cache_clear()
    try:
        path = build("int8_conv.c", _native._INT8_FLAGS)
        assert path is not None and path.parent.parent == tmp_path
        path.write_bytes(b"not a shared library")
        _native.int8_conv.cache_clear()
        lib = _native.int8_conv()
        assert lib is not None and path.stat().st_size > 1000
    finally:
        monkeypatch.delenv("MLX_STREAM_TTS_CACHE")
        _native.int8_conv.cache_clear()
