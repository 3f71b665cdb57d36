"""Kokoro's decoder in MLX: the iSTFTNet vocoder (StyleTTS 2) and the AdaIN residual blocks.

Follows hexgrad/kokoro ``kokoro/istftnet.py`` (adapted from yl4579/StyleTTS2 ``Modules/istftnet.py``):
``Decoder``, ``Generator``, ``AdaINResBlock1``, ``AdainResBlk1d``, ``AdaIN1d``. The harmonic source and
the STFT are in ``kokoro_dsp.py``. Also holds the AdaIN residual blocks that the prosody predictor
shares with the decoder.

Arrays are channels-last, ``(B, L, C)``; conv weights are MLX's ``(out, kernel, in / groups)``. Weight
norm is folded at conversion. This file is the one reference implementation, what runs on every
device; ``mlx_stream_tts/cpu`` swaps some of its modules for faster CPU versions after loading, and
is tested against it.

Departures from the reference, on purpose:

- the generator evaluates its graph block by block (see :meth:`Generator.synthesize`);
- its instance norms may take statistics pooled over earlier windows of the same sentence
  (:class:`NormStats`), for decoding a sentence window by window.
"""

from __future__ import annotations

import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from .kokoro_dsp import STFT, SourceModuleHnNSF, fast_sin, sin_squared

_SQRT_HALF = 1.0 / math.sqrt(2.0)


def leaky_relu(x: mx.array, slope: float) -> mx.array:
    return mx.maximum(x, slope * x)


@partial(mx.compile, shapeless=True)
def snake(x: mx.array, alpha: mx.array) -> mx.array:
    """Snake1D: ``x + sin(alpha x)^2 / alpha`` (alpha ``(C,)`` here, ``(1, C, 1)`` in the reference)."""
    return x + sin_squared(alpha * x) / alpha


@partial(mx.compile, shapeless=True)
def _affine_leaky(x: mx.array, scale: mx.array, shift: mx.array) -> mx.array:
    """``leaky_relu(x * scale + shift, 0.2)``: an AdaIN written as its per-channel affine, then the activation."""
    y = x * scale + shift
    return mx.maximum(y, 0.2 * y)


class ConvTranspose1d(nn.Module):
    """Transposed 1-D convolution (PyTorch semantics), weight ``(out, kernel, in / groups)``.

    ``nn.ConvTranspose1d`` has no ``groups``, which the depthwise upsampling of ``AdainResBlk1d`` needs.
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

    def __call__(self, x: mx.array) -> mx.array:
        y = mx.conv_transpose1d(x, self.weight, stride=self.stride, padding=self.padding,
                                output_padding=self.output_padding, groups=self.groups)
        return y + self.bias


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

    The sums it keeps are lazy until evaluated with the generator's block that made them
    (:meth:`pending`): left lazy to the window's end, each would hold its layer's input alive.
    """

    def __init__(self, lo: int, hi: int, frames: int, prior: NormStats | None = None):
        self.lo, self.hi, self.frames = lo, hi, frames
        self.prior = prior.totals if prior is not None else None
        #: Per layer: (rows, sum, sum of squares) over the cores so far, this window's included.
        self.totals: list[tuple[int, mx.array, mx.array]] = []
        self._pending: list[mx.array] = []

    def core_rows(self, rows: int) -> tuple[int, int]:
        """The core ``[lo, hi)`` in rows of a layer whose input has ``rows`` rows."""
        per = rows // self.frames  # rows per frame at this layer's rate
        return min(self.lo * per, rows), min(self.hi * per, rows)

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """Mean and variance ``(B, 1, C)`` for the layer whose input is ``x``; records its core's sums."""
        rows = x.shape[1]
        lo, hi = self.core_rows(rows)
        core = x[:, lo:hi]
        c_sum, c_sq = core.sum(axis=1, keepdims=True), (core * core).sum(axis=1, keepdims=True)
        n0, s0, q0 = self.prior[len(self.totals)] if self.prior else (0, 0.0, 0.0)
        total = (n0 + hi - lo, s0 + c_sum, q0 + c_sq)
        self.totals.append(total)
        self._pending += total[1:]
        if not self.prior:
            return mx.mean(x, axis=1, keepdims=True), mx.var(x, axis=1, keepdims=True)
        n = n0 + rows
        mean = (s0 + x.sum(axis=1, keepdims=True)) / n
        return mean, mx.maximum((q0 + (x * x).sum(axis=1, keepdims=True)) / n - mean * mean, 0.0)

    def pending(self) -> list[mx.array]:
        """The sums recorded since the last call (to evaluate now), and forgets them."""
        out, self._pending = self._pending, []
        return out


class AdaIN1d(nn.Module):
    """``(1 + gamma(s)) * InstanceNorm(x) + beta(s)``."""

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

    def __call__(self, x: mx.array, s: mx.array, norm: NormStats | None = None) -> mx.array:
        scale, shift = self.scale_shift(x, s, norm)
        return x * scale + shift


class AdainResBlk1d(nn.Module):
    """Residual block with AdaIN; ``upsample=True`` doubles the length (nearest + depthwise conv)."""

    def __init__(self, dim_in: int, dim_out: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        self.learned_sc = dim_in != dim_out
        self.conv1 = nn.Conv1d(dim_in, dim_out, 3, padding=1)
        self.conv2 = nn.Conv1d(dim_out, dim_out, 3, padding=1)
        self.norm1 = AdaIN1d(style_dim, dim_in)
        self.norm2 = AdaIN1d(style_dim, dim_out)
        if self.learned_sc:
            self.conv1x1 = nn.Conv1d(dim_in, dim_out, 1, bias=False)
        if upsample:
            self.pool = ConvTranspose1d(dim_in, dim_in, 3, stride=2, padding=1, output_padding=1, groups=dim_in)

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
            nn.Conv1d(channels, channels, kernel_size, padding=d * (kernel_size - 1) // 2, dilation=d)
            for d in dilation
        ]
        self.convs2 = [
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilation
        ]
        self.adain1 = [AdaIN1d(style_dim, channels) for _ in dilation]
        self.adain2 = [AdaIN1d(style_dim, channels) for _ in dilation]
        self.alpha1 = [mx.ones((channels,)) for _ in dilation]
        self.alpha2 = [mx.ones((channels,)) for _ in dilation]

    def __call__(self, x: mx.array, s: mx.array, norm: NormStats | None = None) -> mx.array:
        for c1, c2, n1, n2, a1, a2 in zip(self.convs1, self.convs2, self.adain1, self.adain2, self.alpha1, self.alpha2):
            xt = c1(snake(n1(x, s, norm), a1))
            xt = c2(snake(n2(xt, s, norm), a2))
            x = x + xt
        return x


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
                    nn.Conv1d(gen_istft_n_fft + 2, c_out, stride_f0 * 2, stride=stride_f0, padding=(stride_f0 + 1) // 2)
                )
                self.noise_res.append(AdaINResBlock1(c_out, 7, (1, 3, 5), style_dim))
            else:
                self.noise_convs.append(nn.Conv1d(gen_istft_n_fft + 2, c_out, 1))
                self.noise_res.append(AdaINResBlock1(c_out, 11, (1, 3, 5), style_dim))
        self.post_n_fft = gen_istft_n_fft
        self.conv_post = nn.Conv1d(c_out, gen_istft_n_fft + 2, 7, padding=3)
        self.stft = STFT(gen_istft_n_fft, gen_istft_hop_size)

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

        The graph is evaluated piece by piece, the noise branch and then each resblock of each
        upsampling (``mx.async_eval``: the host goes on building the next piece, it never waits), with
        the norm statistics each piece makes: as one graph, the parallel branches keep all their
        full-rate buffers alive (on the CPU, 620 vs 520 MB for 5 s of audio). The returned audio is
        lazy; reading it is the one host synchronisation.
        """
        har = har.astype(x.dtype)
        for i in range(self.num_upsamples):
            x = leaky_relu(x, 0.1)
            x_source = self.noise_res[i](self.noise_convs[i](har), s, norm)
            mx.async_eval(x_source, *(norm.pending() if norm is not None else ()))
            x = self.ups[i](x)
            if i == self.num_upsamples - 1:
                x = mx.concatenate([x[:, 1:2], x], axis=1)  # ReflectionPad1d((1, 0))
            x = x + x_source
            xs = None
            for j in range(self.num_kernels):
                y = self.resblocks[i * self.num_kernels + j](x, s, norm)
                xs = y if xs is None else xs + y
                mx.async_eval(xs, *(norm.pending() if norm is not None else ()))
            x = xs / self.num_kernels
        return self.head(x)

    def head(self, x: mx.array) -> mx.array:
        """The last features ``(B, L, C)`` -> log-magnitude and phase (``conv_post``) -> iSTFT -> audio."""
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
        self.F0_conv = nn.Conv1d(1, 1, 3, stride=2, padding=1)
        self.N_conv = nn.Conv1d(1, 1, 3, stride=2, padding=1)
        self.asr_res = [nn.Conv1d(dim_in, asr_res_dim, 1)]
        self.generator = Generator(style_dim, **istftnet)

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
