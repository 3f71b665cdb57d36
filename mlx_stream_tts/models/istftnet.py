"""Kokoro's iSTFTNet decoder (StyleTTS 2 vocoder) in MLX.

Follows hexgrad/kokoro ``kokoro/istftnet.py`` (adapted from yl4579/StyleTTS2 ``Modules/istftnet.py``),
with the behaviour of the shipped ONNX export where the two differ on purpose:

- the harmonic source is deterministic: no random initial phase, no additive noise;
- the harmonic source's STFT is a plain centred STFT (reflect padding, periodic Hann window).

The inverse STFT is ``torch.istft``'s (normalised by the summed squared window), as in the reference
PyTorch model; the ONNX export skips that normalisation and comes out 1.5x (3.5 dB) louder.

Arrays are channels-last, ``(B, L, C)``; conv weights are ``(out, kernel, in)``. Weight norm is folded at
conversion. Also holds the AdaIN residual blocks that the prosody predictor shares with the decoder.
"""

from __future__ import annotations

import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..cpu import blas as _blas
from ..cpu import int8_conv as _native

_SQRT_HALF = 1.0 / math.sqrt(2.0)


def leaky_relu(x: mx.array, slope: float) -> mx.array:
    return mx.maximum(x, slope * x)


# Taylor coefficients of sin(r) / r up to r^10: |error| < 6e-8 for |r| <= pi / 2.
_SIN_COEFFS = (1.0, -1 / 6, 1 / 120, -1 / 5040, 1 / 362880, -1 / 39916800)


def _even_poly(y: mx.array, coeffs: tuple[float, ...]) -> mx.array:
    """``y * (c0 + c1 y^2 + c2 y^4 + ...)`` by Horner's rule in ``y^2``."""
    z = y * y
    p = coeffs[-1]
    for c in coeffs[-2::-1]:
        p = p * z + c
    return y * p


def _sin_reduced(t: mx.array) -> tuple[mx.array, mx.array]:
    """``sin(r)`` for ``r = t - k pi`` in [-pi/2, pi/2], and ``k``."""
    k = mx.round(t * (1 / math.pi))
    return _even_poly(t - k * math.pi, _SIN_COEFFS), k


def sin_squared(t: mx.array) -> mx.array:
    """``sin(t) ** 2`` by range reduction and a polynomial.

    MLX's CPU ``sin`` is scalar (about 30 ns per element); this is 10x faster and fuses under
    ``mx.compile``. Accurate to float32 rounding of ``t``.
    """
    s, _ = _sin_reduced(t)  # sin^2 has period pi: the sign (-1)^k drops out
    return s * s


@partial(mx.compile, shapeless=True)
def fast_sin(t: mx.array) -> mx.array:
    """``sin(t)`` by range reduction and a polynomial (MLX's CPU ``sin`` is scalar, ~15 ns per element)."""
    s, k = _sin_reduced(t)
    return s * (1 - 2 * (k - 2 * mx.floor(0.5 * k)))  # sin(r + k pi) = (-1)^k sin(r)


@partial(mx.compile, shapeless=True)
def fast_cos(t: mx.array) -> mx.array:
    return fast_sin(t + 0.5 * math.pi)


# Taylor coefficients of tanh(y) / y up to y^10; used for |y| <= 9 / 16.
_TANH_COEFFS = (1.0, -1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925)


def tanh(x: mx.array) -> mx.array:
    """``tanh(x)`` within 2e-7: a polynomial at x / 16, then four steps of tanh(2y) = 2 tanh(y) / (1 + tanh(y)^2).

    MLX's CPU ``tanh``, ``exp`` and ``sigmoid`` are scalar (~13 ns per element); this is vectorised
    and fuses under ``mx.compile`` (ALBERT's GELU, the harmonic source).
    """
    t = _even_poly(mx.clip(x, -9.0, 9.0) * (1 / 16), _TANH_COEFFS)  # tanh(9) is 1 in float32
    for _ in range(4):
        t = 2 * t / (1 + t * t)
    return t


_compiled_tanh = mx.compile(tanh, shapeless=True)


@partial(mx.compile, shapeless=True)
def gelu_approx(x: mx.array) -> mx.array:
    """GELU, tanh approximation (``nn.gelu_approx``, transformers' ``gelu_new``), with :func:`tanh`."""
    return 0.5 * x * (1 + tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))


def snake(x: mx.array, alpha: mx.array) -> mx.array:
    # Snake1D: x + sin^2(alpha x) / alpha (alpha: (C,) here, (1, C, 1) in the reference).
    return x + sin_squared(alpha * x) / alpha


@partial(mx.compile, shapeless=True)
def _affine(x: mx.array, scale: mx.array, shift: mx.array) -> mx.array:
    return x * scale + shift


# Split so that the polynomial runs in a kernel whose inputs all have one shape: MLX's compiled CPU
# kernels are vectorised only then (with per-channel operands they step element by element, 3x slower).
@partial(mx.compile, shapeless=True)
def _plus_sin_squared(u: mx.array) -> mx.array:
    return u + sin_squared(u)


def _scaled_snake(x: mx.array, scale: mx.array, shift: mx.array, alpha: mx.array) -> mx.array:
    """``alpha * snake(x * scale + shift, alpha)``; the caller folds ``1 / alpha`` into the next conv."""
    return _plus_sin_squared(_affine(x, scale * alpha, shift * alpha))


@partial(mx.compile, shapeless=True)
def _affine_leaky(x: mx.array, scale: mx.array, shift: mx.array) -> mx.array:
    y = x * scale + shift
    return mx.maximum(y, 0.2 * y)


#: im2col size (length x kernel x channels) from which a stride-1 conv runs as accumulated GEMMs.
ADDMM_MIN_ELEMENTS = 1 << 19


def _per_sequence(x: mx.array, kernel) -> mx.array:
    """``kernel(sequence (L, C) float32, threads) -> (L', C')`` (an 8-bit CPU kernel) over ``x``'s batch.

    The kernel needs the input's values: this evaluates the graph up to here (the vocoder already
    evaluates block by block); the result enters MLX as a new array.
    """
    mx.eval(x)
    xs = np.asarray(x.astype(mx.float32))
    threads = _blas.blas_threads()
    out = [kernel(xs[i], threads) for i in range(xs.shape[0])]
    return mx.array(out[0][None] if len(out) == 1 else np.stack(out)).astype(x.dtype)


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` with faster CPU paths for Kokoro's shapes.

    MLX's CPU conv copies an im2col buffer (kernel x input size) through a slow strided copy, and
    runs dilated convs as a direct loop (30x slower than GEMM). When that buffer would be large
    (the vocoder's long, narrow layers) this sums one GEMM per tap over shifted views of the input
    instead (no copy; ``addmm`` accumulates in place); a small dilated conv is a plain conv over the
    ``d`` interleaved subsequences.
    """

    #: The weight in 8 bits for the CPU kernel (:meth:`pack_int8`), or None: float32 in MLX.
    int8: _native.PackedConv | None = None

    def pack_int8(self, in_scale: mx.array | None = None) -> bool:
        """Run this conv with the 8-bit CPU kernel (data/int8_conv.c) from now on; False if unavailable.

        Only stride-1 "same" convs qualify. ``in_scale`` is folded into the packed weight: the
        caller must pass that same ``in_scale`` (or none) on every call.
        """
        out_c, k, in_c = self.weight.shape
        same = self.stride == 1 and self.padding == self.dilation * (k - 1) // 2 and self.groups == 1
        if not same or _native.int8_conv() is None:
            return False
        mx.eval(self.weight, *([] if in_scale is None else [in_scale]))
        w = np.asarray(self.weight.astype(mx.float32))  # a view of the loaded weight, no copy
        if in_scale is not None:
            w = w * np.asarray(in_scale, np.float32)
        bias = np.array(self["bias"]) if "bias" in self else None
        self.int8 = _native.PackedConv(w, bias, self.dilation)
        return True

    def __call__(self, x: mx.array, in_scale: mx.array | None = None) -> mx.array:
        """x ``(B, L, in)``; ``in_scale`` ``(in,)`` multiplies the input channels (folded into the weight)."""
        if self.int8 is not None and mx.default_device() == mx.cpu:
            return _per_sequence(x, self.int8)
        out_c, k, in_c = self.weight.shape
        d = self.dilation
        w = self.weight if in_scale is None else self.weight * in_scale
        same = self.stride == 1 and self.padding == d * (k - 1) // 2 and self.groups == 1
        if same and k > 1 and out_c * k <= in_c * 2 and x.shape[1] * k * in_c >= ADDMM_MIN_ELEMENTS:
            # Few outputs (conv_post: 128 -> 22): one GEMM onto every tap's output, then shifted sums;
            # per-tap GEMMs with 22 columns run at a fraction of BLAS speed.
            b, length, _ = x.shape
            z = (x @ w.transpose(2, 1, 0).reshape(in_c, k * out_c)).reshape(b, length, k, out_c)
            z = mx.pad(z, [(0, 0), (self.padding, self.padding), (0, 0), (0, 0)])
            y = z[:, 0:length, 0]
            for j in range(1, k):
                y = y + z[:, j * d: j * d + length, j]
            return y + self.bias if "bias" in self else y
        if same and k > 1 and x.shape[1] * k * in_c >= ADDMM_MIN_ELEMENTS:
            length = x.shape[1]
            xp = mx.pad(x, [(0, 0), (self.padding, self.padding), (0, 0)])
            y = xp[:, :length] @ w[:, 0].T if "bias" not in self else mx.addmm(self.bias, xp[:, :length], w[:, 0].T)
            for j in range(1, k):
                y = mx.addmm(y, xp[:, j * d : j * d + length], w[:, j].T)
            return y
        if d == 1 or not same:
            y = mx.conv1d(x, w, stride=self.stride, padding=self.padding, dilation=d, groups=self.groups)
            return y + self.bias if "bias" in self else y
        b, length, _ = x.shape
        n = -(-length // d)
        x = mx.pad(x, [(0, 0), (0, n * d - length), (0, 0)])
        x = x.reshape(b, n, d, in_c).transpose(0, 2, 1, 3).reshape(b * d, n, in_c)
        y = mx.conv1d(x, w, padding=(k - 1) // 2)
        y = y.reshape(b, d, n, out_c).transpose(0, 2, 1, 3).reshape(b, n * d, out_c)[:, :length]
        return y + self.bias if "bias" in self else y


class ConvTranspose1d(nn.Module):
    """Transposed 1-D convolution (PyTorch semantics), weight ``(out, kernel, in / groups)``.

    Ungrouped, it runs as one GEMM and an overlap-add: MLX's CPU transposed conv with a stride is a
    direct loop, 50-100x slower. The grouped (depthwise) case is fast in MLX and stays there.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        groups: int = 1,
    ):
        super().__init__()
        scale = 1.0 / math.sqrt(in_channels * kernel_size)
        self.weight = mx.random.uniform(-scale, scale, (out_channels, kernel_size, in_channels // groups))
        self.bias = mx.zeros((out_channels,))
        self.stride, self.padding, self.output_padding, self.groups = stride, padding, output_padding, groups

    #: The weight in 8 bits as one GEMM ``(kernel * out, 1, in)`` for the CPU kernel, or None.
    int8: _native.PackedConv | None = None

    def pack_int8(self) -> bool:
        """Run the GEMM of this (ungrouped) transposed conv with the 8-bit CPU kernel from now on."""
        if self.groups != 1 or _native.int8_conv() is None:
            return False
        out_c, k, in_c = self.weight.shape
        w = np.asarray(self.weight.astype(mx.float32)).transpose(1, 0, 2).reshape(k * out_c, 1, in_c)
        self.int8 = _native.PackedConv(w, None, 1)
        return True

    def _int8_sequence(self, xs: np.ndarray, threads: int) -> np.ndarray:
        # The GEMM in the 8-bit kernel, the overlap-add in place in NumPy (no MLX round trip of the
        # kernel-times-longer tap array).
        out_c, k, _ = self.weight.shape
        s, m = self.stride, -(-k // self.stride)
        length = xs.shape[0]
        end = (length - 1) * s + k - self.padding + self.output_padding
        taps = self.int8(xs, threads).reshape(length, k, out_c)
        full = np.empty((max(length + m - 1, -(-end // s)) * s, out_c), np.float32)
        full[length * s:] = 0
        for j in range(m):  # tap block j of input step t lands in output block t + j
            width = min(s, k - j * s)
            view = full[j * s: (j + length) * s].reshape(length, s, out_c)
            if j == 0:
                view[:, :width] = taps[:, :width]
                view[:, width:] = 0
            else:
                view[:, :width] += taps[:, j * s: j * s + width]
        full[self.padding: end] += np.asarray(self.bias, np.float32)
        return full[self.padding: end]

    def __call__(self, x: mx.array) -> mx.array:
        if self.int8 is not None and mx.default_device() == mx.cpu:
            return _per_sequence(x, self._int8_sequence)
        if self.groups != 1:
            y = mx.conv_transpose1d(
                x, self.weight, stride=self.stride, padding=self.padding,
                output_padding=self.output_padding, groups=self.groups,
            )
            return y + self.bias
        out_c, k, in_c = self.weight.shape
        s = self.stride
        b, length, _ = x.shape
        m = -(-k // s)
        y = (x @ self.weight.transpose(2, 1, 0).reshape(in_c, k * out_c)).reshape(b, length, k, out_c)
        if m * s != k:
            y = mx.pad(y, [(0, 0), (0, 0), (0, m * s - k), (0, 0)])
        y = y.reshape(b, length, m, s, out_c)
        # Tap block j of input step t lands in output block t + j.
        full = y[:, :, 0]
        if m > 1:
            full = mx.pad(full, [(0, 0), (0, m - 1), (0, 0), (0, 0)])
            for j in range(1, m):
                full = full + mx.pad(y[:, :, j], [(0, 0), (j, m - 1 - j), (0, 0), (0, 0)])
        full = full.reshape(b, (length + m - 1) * s, out_c)
        end = (length - 1) * s + k - self.padding + self.output_padding
        if end > full.shape[1]:
            full = mx.pad(full, [(0, 0), (0, end - full.shape[1]), (0, 0)])
        return full[:, self.padding : end] + self.bias


class InstanceNorm(nn.Module):
    """Instance norm over time with the affine parameters that the reference module carries."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        mean = mx.mean(x, axis=1, keepdims=True)
        var = mx.var(x, axis=1, keepdims=True)
        return (x - mean) * mx.rsqrt(var + self.eps) * self.weight + self.bias


class NormStats:
    """Instance-norm statistics for decoding a sentence window by window.

    Called once per AdaIN layer of the generator, in order, with that layer's input for the window
    ``(1, L, C)``; frames ``[lo, hi)`` of the window's ``frames`` are its core (the rest is
    context). With ``prior`` (the stats of the window before), each layer normalises with the mean
    and variance over the earlier windows' cores and this whole window together, instead of this
    window alone: later windows see statistics closer to the whole sentence's (one-shot's).
    """

    def __init__(self, lo: int, hi: int, frames: int, prior: NormStats | None = None):
        self.lo, self.hi, self.frames = lo, hi, frames
        self.prior = prior.totals if prior is not None else None
        #: Per layer: (rows, sum, sum of squares) over the cores so far, this window's included.
        self.totals: list[tuple[int, mx.array, mx.array]] = []

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        rows = x.shape[1]
        per = rows // self.frames  # rows per frame at this layer's rate
        core = x[:, self.lo * per: self.hi * per]
        c_sum, c_sq = core.sum(axis=1, keepdims=True), (core * core).sum(axis=1, keepdims=True)
        # Evaluated now: left lazy, these sums would hold every norm layer's input alive until the
        # window's end (measured: MLX peak 0.96 GB -> 0.57 GB over bench/tts.py's sentences, no slower).
        mx.eval(c_sum, c_sq)
        n0, s0, q0 = self.prior[len(self.totals)] if self.prior else (0, 0.0, 0.0)
        self.totals.append((n0 + core.shape[1], s0 + c_sum, q0 + c_sq))
        if not self.prior:
            return mx.mean(x, axis=1, keepdims=True), mx.var(x, axis=1, keepdims=True)
        n = n0 + rows
        mean = (s0 + x.sum(axis=1, keepdims=True)) / n
        return mean, mx.maximum((q0 + (x * x).sum(axis=1, keepdims=True)) / n - mean * mean, 0.0)

    def core_rows(self, rows: int) -> tuple[int, int]:
        """The core ``[lo, hi)`` in rows of a layer whose input has ``rows`` rows."""
        per = rows // self.frames  # rows per frame at this layer's rate
        return min(self.lo * per, rows), min(self.hi * per, rows)

    def numpy_stats(self, x: np.ndarray, stats: _native.ChannelStats | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`__call__` for one sequence ``(L, C)`` in NumPy (the 8-bit path), in float64.

        ``stats``: ``x``'s channel statistics over :meth:`core_rows`, if already computed.
        """
        rows = x.shape[0]
        lo, hi = self.core_rows(rows)
        st = stats if stats is not None else _native.channel_stats(x, lo, hi)
        n0, s0, q0 = self.prior[len(self.totals)] if self.prior else (0, 0.0, 0.0)
        s0, q0 = np.asarray(s0, np.float64).reshape(-1), np.asarray(q0, np.float64).reshape(-1)
        self.totals.append((n0 + hi - lo, s0 + st.core_total, q0 + st.core_squares))
        n = n0 + rows
        mean = (s0 + st.total) / n
        return mean, np.maximum((q0 + st.squares) / n - mean * mean, 0.0)


class AdaIN1d(nn.Module):
    def __init__(self, style_dim: int, channels: int):
        super().__init__()
        self.norm = InstanceNorm(channels)
        self.fc = nn.Linear(style_dim, 2 * channels)

    def scale_shift(self, x: mx.array, s: mx.array, norm: NormStats | None = None) -> tuple[mx.array, mx.array]:
        """Per-channel ``(scale, shift)`` with ``AdaIN(x) = x * scale + shift``, each ``(B, 1, C)``.

        ``norm`` replaces the statistics over ``x``'s own time axis (see :class:`NormStats`).
        """
        gamma, beta = mx.split(self.fc(s)[:, None, :], 2, axis=-1)
        if norm is None:
            mean, var = mx.mean(x, axis=1, keepdims=True), mx.var(x, axis=1, keepdims=True)
        else:
            mean, var = norm(x)
        inv = mx.rsqrt(var + self.norm.eps) * self.norm.weight
        scale = inv * (1 + gamma)
        return scale, (self.norm.bias - mean * inv) * (1 + gamma) + beta

    def __call__(self, x: mx.array, s: mx.array) -> mx.array:
        scale, shift = self.scale_shift(x, s)
        return x * scale + shift


class AdainResBlk1d(nn.Module):
    """Residual block with AdaIN; ``upsample=True`` doubles the length (nearest + depthwise conv)."""

    def __init__(self, dim_in: int, dim_out: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        self.learned_sc = dim_in != dim_out
        self.conv1 = Conv1d(dim_in, dim_out, 3, padding=1)
        self.conv2 = Conv1d(dim_out, dim_out, 3, padding=1)
        self.norm1 = AdaIN1d(style_dim, dim_in)
        self.norm2 = AdaIN1d(style_dim, dim_out)
        if self.learned_sc:
            self.conv1x1 = Conv1d(dim_in, dim_out, 1, bias=False)
        if upsample:
            self.pool = ConvTranspose1d(dim_in, dim_in, 3, stride=2, padding=1, output_padding=1, groups=dim_in)

    def pack_int8(self) -> bool:
        convs = [self.conv1, self.conv2] + ([self.conv1x1] if self.learned_sc else [])
        return all([c.pack_int8() for c in convs])

    def _shortcut(self, x: mx.array) -> mx.array:
        if self.upsample:
            x = mx.repeat(x, 2, axis=1)
        if self.learned_sc:
            x = self.conv1x1(x)
        return x

    def _residual(self, x: mx.array, s: mx.array) -> mx.array:
        x = _affine_leaky(x, *self.norm1.scale_shift(x, s))
        if self.upsample:
            x = self.pool(x)
        x = self.conv1(x)
        x = _affine_leaky(x, *self.norm2.scale_shift(x, s))
        return self.conv2(x)

    def __call__(self, x: mx.array, s: mx.array) -> mx.array:
        return (self._residual(x, s) + self._shortcut(x)) * _SQRT_HALF


class AdaINResBlock1(nn.Module):
    """HiFi-GAN style resblock with AdaIN and Snake activations."""

    def __init__(self, channels: int, kernel_size: int, dilation: tuple[int, ...], style_dim: int):
        super().__init__()
        self.convs1 = [
            Conv1d(channels, channels, kernel_size, padding=d * (kernel_size - 1) // 2, dilation=d)
            for d in dilation
        ]
        self.convs2 = [
            Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilation
        ]
        self.adain1 = [AdaIN1d(style_dim, channels) for _ in dilation]
        self.adain2 = [AdaIN1d(style_dim, channels) for _ in dilation]
        self.alpha1 = [mx.ones((channels,)) for _ in dilation]
        self.alpha2 = [mx.ones((channels,)) for _ in dilation]

    def pack_int8(self) -> bool:
        # The snake's 1 / alpha is folded into the next conv's weight (see ``_scaled_snake``).
        packed = [c.pack_int8(1 / a) for cs, alphas in ((self.convs1, self.alpha1), (self.convs2, self.alpha2))
                  for c, a in zip(cs, alphas)]
        return all(packed)

    def _snake_args(self, x: np.ndarray, style: np.ndarray, adain: AdaIN1d, alpha: np.ndarray,
                    norm: NormStats | None) -> dict:
        """The kernel's arguments for ``alpha * snake(AdaIN(x), alpha) = u + sin(u)^2``, ``u = a x + b``
        (NumPy): ``snake=(a, b)`` and the exact range of the result (one pass over ``x`` in all)."""
        threads = _blas.blas_threads()
        if norm is None:
            st = _native.channel_stats(x, threads=threads)
            mean = st.total / x.shape[0]
            var = np.maximum(st.squares / x.shape[0] - mean * mean, 0.0)
        else:
            st = _native.channel_stats(x, *norm.core_rows(x.shape[0]), threads=threads)
            mean, var = norm.numpy_stats(x, st)
        gamma, beta = np.split(style, 2)
        inv = np.asarray(adain.norm.weight) / np.sqrt(var + adain.norm.eps)
        scale = inv * (1 + gamma)
        shift = (np.asarray(adain.norm.bias) - mean * inv) * (1 + gamma) + beta
        a, b = (scale * alpha).astype(np.float32), (shift * alpha).astype(np.float32)
        return {"snake": (a, b), "value_range": _native.snake_range(st, a, b)}

    @property
    def is_int8(self) -> bool:
        return self.convs1[0].int8 is not None and mx.default_device() == mx.cpu

    def run_int8(self, h: np.ndarray, s: mx.array, norm: NormStats | None = None,
                 scratch: np.ndarray | None = None) -> np.ndarray:
        """The block on the 8-bit kernel, for one sequence ``h`` ``(L, C)`` float32, updated in place.

        Each AdaIN + Snake runs fused into the conv after it (as the kernel quantizes its input) and
        the residual add in that conv's output: MLX's elementwise CPU kernels are single-threaded and
        cost more than the 8-bit convs themselves. ``scratch``: a buffer like ``h`` to reuse.
        """
        styles = [n.fc(s) for n in (*self.adain1, *self.adain2)]
        mx.eval(styles)
        styles = [np.asarray(st[0], np.float64) for st in styles]
        threads = _blas.blas_threads()
        xt = scratch if scratch is not None else np.empty_like(h)
        steps = zip(self.convs1, self.convs2, self.adain1, self.adain2, self.alpha1, self.alpha2,
                    styles[: len(self.convs1)], styles[len(self.convs1):])
        for c1, c2, n1, n2, a1, a2, s1, s2 in steps:
            c1.int8(h, threads, out=xt, **self._snake_args(h, s1, n1, np.asarray(a1, np.float64), norm))
            args = self._snake_args(xt, s2, n2, np.asarray(a2, np.float64), norm)
            c2.int8(xt, threads, residual=h, out=h, **args)  # h += conv2(snake(AdaIN(xt)))
        return h

    def __call__(self, x: mx.array, s: mx.array, norm: NormStats | None = None) -> mx.array:
        if self.is_int8 and x.shape[0] == 1:
            mx.eval(x)
            return mx.array(self.run_int8(np.array(x[0], np.float32), s, norm)[None]).astype(x.dtype)
        for c1, c2, n1, n2, a1, a2 in zip(self.convs1, self.convs2, self.adain1, self.adain2, self.alpha1, self.alpha2):
            xt = c1(_scaled_snake(x, *n1.scale_shift(x, s, norm), a1), 1 / a1)
            xt = c2(_scaled_snake(xt, *n2.scale_shift(xt, s, norm), a2), 1 / a2)
            x = x + xt
        return x


# ---------------------------------------------------------------------------------------------
# DSP: the harmonic source, STFT and inverse STFT (always float32: phases need the precision).


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window(n, periodic=True)``)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float64)


def _linear_taps(length: int, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of linear upsampling by ``scale``, ``align_corners=False``.

    Output step ``j`` reads ``(1 - w) * x[i0] + w * x[i1]`` with ``i1 = min(i0 + 1, length - 1)``.
    """
    src = np.clip((np.arange(length * scale) + 0.5) / scale - 0.5, 0.0, None)
    i0 = np.minimum(np.floor(src).astype(np.int32), length - 1)
    i1 = np.minimum(i0 + 1, length - 1)
    return i0, i1, (src - i0).astype(np.float32)


def interpolate_linear(x: mx.array, scale: int) -> mx.array:
    """Linear upsampling along axis 1 by an integer factor (``F.interpolate(mode="linear")``).

    Args:
        x: ``(B, L, C)``.
        scale: integer factor; the output has ``L * scale`` steps.
    """
    i0, i1, w = _linear_taps(x.shape[1], scale)
    w = mx.array(w)[None, :, None]
    return x[:, mx.array(i0)] * (1 - w) + x[:, mx.array(i1)] * w


class SineGen(nn.Module):
    """Harmonic sine source, without the reference's random phase and noise (as in the ONNX export).

    The reference computes the phase at frame rate and interpolates it linearly to the sample rate;
    this does the same in cycles, wrapping the running sum to [0, 1) so that float32 keeps the
    phase exact over long utterances (the reference's float32 phase in radians drifts).
    """

    def __init__(self, sampling_rate: int, upsample_scale: int, harmonic_num: int, sine_amp: float = 0.1,
                 voiced_threshold: float = 10.0):
        super().__init__()
        self.sampling_rate = sampling_rate
        self.upsample_scale = upsample_scale
        self._harmonics = mx.arange(1, harmonic_num + 2, dtype=mx.float32)
        self.sine_amp = sine_amp
        self.voiced_threshold = voiced_threshold

    def __call__(self, f0: mx.array) -> mx.array:
        """f0: ``(B, N)`` at frame rate -> sines ``(B, N * upsample_scale, harmonics)``."""
        scale = self.upsample_scale
        length = f0.shape[1]
        f0 = f0.astype(mx.float32)
        fn = f0[..., None] * self._harmonics  # (B, N, H)
        rad = fn / self.sampling_rate
        rad = rad - mx.floor(rad)  # cycles per sample, in [0, 1)
        step = rad * scale  # cycles per frame
        # Phase at each frame's centre, in cycles, wrapped as it accumulates.
        cycles = mx.cumsum(step - mx.floor(step), axis=1)
        cycles = cycles - mx.floor(cycles)
        # Linear interpolation between frame centres: phase(j) = cycles[i0] + w * step[i1], where
        # step[i1] = cycles[i1] - cycles[i0] before wrapping (and 0 past the last centre, i1 = i0).
        i0, i1, w = _linear_taps(length, scale)
        w[i1 == i0] = 0.0
        idx0, idx1 = mx.array(i0), mx.array(i1)
        phase = cycles[:, idx0] + mx.array(w)[None, :, None] * step[:, idx1]
        phase = phase - mx.floor(phase)
        uv = (mx.repeat(f0, scale, axis=1) > self.voiced_threshold).astype(mx.float32)[..., None]
        return fast_sin(2 * math.pi * phase) * self.sine_amp * uv


class SourceModuleHnNSF(nn.Module):
    def __init__(self, sampling_rate: int, upsample_scale: int, harmonic_num: int = 8, voiced_threshold: float = 10.0):
        super().__init__()
        self.l_sin_gen = SineGen(sampling_rate, upsample_scale, harmonic_num, voiced_threshold=voiced_threshold)
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    def __call__(self, f0: mx.array) -> mx.array:
        """f0: ``(B, N)`` -> excitation ``(B, N * upsample_scale)``."""
        sines = self.l_sin_gen(f0)
        return _compiled_tanh(self.l_linear(sines.astype(self.l_linear.weight.dtype)))[..., 0].astype(mx.float32)


class STFT:
    """Centred STFT / inverse STFT with a periodic Hann window, as ``torch.stft`` / ``torch.istft``.

    Implemented with matmuls: ``n_fft`` must be a multiple of ``hop`` (20 / 5 in Kokoro).
    """

    def __init__(self, n_fft: int, hop: int):
        if n_fft % hop:
            raise ValueError(f"n_fft ({n_fft}) must be a multiple of hop ({hop})")
        self.n_fft, self.hop, self.overlap = n_fft, hop, n_fft // hop
        bins = n_fft // 2 + 1
        self.bins = bins
        win = hann_window(n_fft)
        n = np.arange(n_fft)
        k = np.arange(bins)
        ang = 2 * np.pi * np.outer(n, k) / n_fft  # (n_fft, bins)
        # Forward: windowed frame @ [cos | -sin] -> [real | imag].
        fwd = np.concatenate([np.cos(ang), -np.sin(ang)], axis=1) * win[:, None]
        self._forward = mx.array(fwd.astype(np.float32))
        # Inverse (irfft of the one-sided spectrum, imag of DC / Nyquist ignored), then the window.
        c = np.full(bins, 2.0)
        c[0] = 1.0
        if n_fft % 2 == 0:
            c[-1] = 1.0
        inv = np.concatenate([np.cos(ang).T * c[:, None], -np.sin(ang).T * c[:, None]], axis=0) / n_fft
        self._inverse = mx.array((inv * win[None, :]).astype(np.float32))  # (2 * bins, n_fft)
        self._win_sq = (win**2).astype(np.float32)
        self._envelopes: dict[int, mx.array] = {}

    def _frames(self, x: mx.array) -> mx.array:
        """(B, T) -> (B, T // hop + 1, n_fft) centred frames, reflect padding."""
        p = self.n_fft // 2
        x = mx.concatenate([x[:, 1 : p + 1][:, ::-1], x, x[:, -p - 1 : -1][:, ::-1]], axis=1)
        n_blocks = x.shape[1] // self.hop
        blocks = x[:, : n_blocks * self.hop].reshape(x.shape[0], n_blocks, self.hop)
        n = n_blocks - self.overlap + 1
        return mx.concatenate([blocks[:, j : j + n] for j in range(self.overlap)], axis=-1)

    def transform(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """Signal ``(B, T)`` -> magnitude and phase ``(B, frames, bins)``."""
        spec = self._frames(x.astype(mx.float32)) @ self._forward
        re, im = spec[..., : self.bins], spec[..., self.bins :]
        return mx.sqrt(re * re + im * im), mx.arctan2(im, re)

    def _envelope(self, n_frames: int) -> mx.array:
        env = self._envelopes.get(n_frames)
        if env is None:
            total = np.zeros((n_frames + self.overlap - 1) * self.hop, np.float32)
            for f in range(n_frames):
                total[f * self.hop : f * self.hop + self.n_fft] += self._win_sq
            env = mx.array(1.0 / np.maximum(total, 1e-11))
            if len(self._envelopes) > 64:
                self._envelopes.clear()
            self._envelopes[n_frames] = env
        return env

    def inverse(self, magnitude: mx.array, phase: mx.array) -> mx.array:
        """Magnitude and phase ``(B, frames, bins)`` -> signal ``(B, hop * (frames - 1))``."""
        spec = mx.concatenate([magnitude * fast_cos(phase), magnitude * fast_sin(phase)], axis=-1)
        frames = spec.astype(mx.float32) @ self._inverse  # (B, F, n_fft)
        b, n, _ = frames.shape
        k = self.overlap
        chunks = frames.reshape(b, n, k, self.hop)
        # Overlap-add: chunk j of frame f lands in block f + j.
        out = sum(mx.pad(chunks[:, :, j], [(0, 0), (j, k - 1 - j), (0, 0)]) for j in range(k))
        out = out.reshape(b, -1) * self._envelope(n)
        p = self.n_fft // 2
        return out[:, p : out.shape[1] - p]


class Generator(nn.Module):
    def __init__(
        self,
        style_dim: int,
        resblock_kernel_sizes: list[int],
        upsample_rates: list[int],
        upsample_initial_channel: int,
        resblock_dilation_sizes: list[list[int]],
        upsample_kernel_sizes: list[int],
        gen_istft_n_fft: int,
        gen_istft_hop_size: int,
        sampling_rate: int = 24000,
    ):
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.upsample_scale = math.prod(upsample_rates) * gen_istft_hop_size
        self.m_source = SourceModuleHnNSF(sampling_rate, self.upsample_scale, harmonic_num=8, voiced_threshold=10)
        self.ups = []
        self.noise_convs = []
        self.noise_res = []
        self.resblocks = []
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            c_in = upsample_initial_channel // (2**i)
            c_out = upsample_initial_channel // (2 ** (i + 1))
            self.ups.append(ConvTranspose1d(c_in, c_out, k, stride=u, padding=(k - u) // 2))
            for kr, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(AdaINResBlock1(c_out, kr, tuple(d), style_dim))
            if i + 1 < len(upsample_rates):
                stride_f0 = math.prod(upsample_rates[i + 1 :])
                self.noise_convs.append(
                    Conv1d(gen_istft_n_fft + 2, c_out, stride_f0 * 2, stride=stride_f0, padding=(stride_f0 + 1) // 2)
                )
                self.noise_res.append(AdaINResBlock1(c_out, 7, (1, 3, 5), style_dim))
            else:
                self.noise_convs.append(Conv1d(gen_istft_n_fft + 2, c_out, 1))
                self.noise_res.append(AdaINResBlock1(c_out, 11, (1, 3, 5), style_dim))
        self.post_n_fft = gen_istft_n_fft
        self.conv_post = Conv1d(c_out, gen_istft_n_fft + 2, 7, padding=3)
        self.stft = STFT(gen_istft_n_fft, gen_istft_hop_size)

    def pack_int8(self) -> bool:
        """The resblocks' and upsampling convs in 8 bits; False if the kernel is unavailable.

        ``conv_post`` stays float32 (as in the shipped ONNX): its output is the log-magnitude, and in
        8 bits the audio's log-mel correlation with float32 fell from ~0.988 to ~0.96. The strided
        noise convs are small and stay too.
        """
        return all([block.pack_int8() for block in [*self.resblocks, *self.noise_res, *self.ups]])

    def source(self, f0: mx.array) -> mx.array:
        """f0 ``(B, N)`` -> the harmonic source's STFT, magnitude then phase ``(B, N * scale / hop + 1, n_fft + 2)``."""
        mag, phase = self.stft.transform(self.m_source(f0))
        return mx.concatenate([mag, phase], axis=-1)

    def __call__(self, x: mx.array, s: mx.array, f0: mx.array) -> mx.array:
        """x ``(B, L, C)``, style ``(B, S)``, f0 ``(B, N)`` -> audio ``(B, N * upsample_scale)``."""
        return self.synthesize(x, s, self.source(f0))

    def synthesize(self, x: mx.array, s: mx.array, har: mx.array, norm: NormStats | None = None) -> mx.array:
        """Audio from features ``x`` ``(B, L, C)`` and the source's STFT ``har`` (from :meth:`source`).

        A window of a sentence may pass the matching rows of the sentence's ``x`` and ``har``
        (frames ``[lo, hi)``: rows ``[2 lo, 2 hi)`` and ``[120 lo, 120 hi + 1)``) so that its
        harmonic source keeps the sentence's phase; ``norm`` sets the instance-norm statistics.
        """
        har = har.astype(x.dtype)
        if self.resblocks[0].is_int8 and x.shape[0] == 1:
            return self._synthesize_int8(x, s, har, norm)
        for i in range(self.num_upsamples):
            x = leaky_relu(x, 0.1)
            x_source = self.noise_res[i](self.noise_convs[i](har), s, norm)
            mx.eval(x_source)
            x = self.ups[i](x)
            if i == self.num_upsamples - 1:
                x = mx.concatenate([x[:, 1:2], x], axis=1)  # ReflectionPad1d((1, 0))
            x = x + x_source
            xs = None
            for j in range(self.num_kernels):
                y = self.resblocks[i * self.num_kernels + j](x, s, norm)
                xs = y if xs is None else xs + y
                # Evaluated block by block: as one graph the parallel branches keep all their
                # full-rate buffers alive (620 vs 520 MB for 5 s of audio) and run ~10% slower.
                mx.eval(xs)
            x = xs / self.num_kernels
        x = self.conv_post(leaky_relu(x, 0.01)).astype(mx.float32)
        bins = self.post_n_fft // 2 + 1
        spec = mx.exp(x[..., :bins])
        phase = fast_sin(x[..., bins:])
        return self.stft.inverse(spec, phase)

    def _synthesize_int8(self, x: mx.array, s: mx.array, har: mx.array, norm: NormStats | None) -> mx.array:
        """:meth:`synthesize` with the resblocks on the 8-bit kernel, in NumPy between the upsampling
        convs (no MLX round trip per block)."""
        for i in range(self.num_upsamples):
            x = leaky_relu(x, 0.1)
            source = self.noise_convs[i](har)
            mx.eval(source)
            x_source = np.array(source[0], np.float32)
            x_source = self.noise_res[i].run_int8(x_source, s, norm)
            x = self.ups[i](x)
            mx.eval(x)
            up = np.asarray(x[0])
            if i == self.num_upsamples - 1:
                up = np.concatenate([up[1:2], up])  # ReflectionPad1d((1, 0))
            base = up + x_source  # a new array: the blocks' common input
            total = np.zeros_like(base)
            h, scratch = np.empty_like(base), np.empty_like(base)
            for j in range(self.num_kernels):
                np.copyto(h, base)
                total += self.resblocks[i * self.num_kernels + j].run_int8(h, s, norm, scratch)
            total *= 1.0 / self.num_kernels
            x = mx.array(total[None])
        x = self.conv_post(leaky_relu(x, 0.01)).astype(mx.float32)
        bins = self.post_n_fft // 2 + 1
        return self.stft.inverse(mx.exp(x[..., :bins]), fast_sin(x[..., bins:]))


class Decoder(nn.Module):
    def __init__(
        self,
        dim_in: int,
        style_dim: int,
        istftnet: dict,
        hidden: int = 1024,
        asr_res_dim: int = 64,
    ):
        super().__init__()
        self.encode = AdainResBlk1d(dim_in + 2, hidden, style_dim)
        cat = hidden + 2 + asr_res_dim
        self.decode = [
            AdainResBlk1d(cat, hidden, style_dim),
            AdainResBlk1d(cat, hidden, style_dim),
            AdainResBlk1d(cat, hidden, style_dim),
            AdainResBlk1d(cat, istftnet["upsample_initial_channel"], style_dim, upsample=True),
        ]
        self.F0_conv = Conv1d(1, 1, 3, stride=2, padding=1)
        self.N_conv = Conv1d(1, 1, 3, stride=2, padding=1)
        self.asr_res = [Conv1d(dim_in, asr_res_dim, 1)]
        self.generator = Generator(style_dim, **istftnet)

    def pack_int8(self) -> bool:
        """Every stride-1 conv of the decoder in 8 bits on the CPU (see :meth:`Conv1d.pack_int8`)."""
        blocks = [self.encode, *self.decode]
        return all([b.pack_int8() for b in blocks] + [self.asr_res[0].pack_int8(), self.generator.pack_int8()])

    def unpack_int8(self) -> None:
        """Back to float32 convolutions in MLX."""
        for _, module in self.named_modules():
            if isinstance(module, (Conv1d, ConvTranspose1d)):
                module.int8 = None

    def __call__(self, asr: mx.array, f0_curve: mx.array, n: mx.array, s: mx.array) -> mx.array:
        """asr ``(B, L, dim_in)``, f0 and n ``(B, 2L)``, style ``(B, style_dim)`` -> audio ``(B, samples)``."""
        return self.generator(self.features(asr, f0_curve, n, s), s, f0_curve)

    def features(self, asr: mx.array, f0_curve: mx.array, n: mx.array, s: mx.array) -> mx.array:
        """The frame-rate part: the generator's input ``(B, 2L, upsample_initial_channel)``."""
        dtype = asr.dtype
        f0 = self.F0_conv(f0_curve[..., None].astype(dtype))
        n = self.N_conv(n[..., None].astype(dtype))
        x = self.encode(mx.concatenate([asr, f0, n], axis=-1), s)
        asr_res = self.asr_res[0](asr)
        res = True
        for block in self.decode:
            # The residual features join every block up to and including the upsampling one.
            if res:
                x = mx.concatenate([x, asr_res, f0, n], axis=-1)
            x = block(x, s)
            res = res and not block.upsample
        return x
