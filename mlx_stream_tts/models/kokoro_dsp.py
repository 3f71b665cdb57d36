"""Kokoro's signal processing in MLX: the harmonic source, STFT and inverse STFT, linear interpolation,
and the polynomial sin / cos / tanh / GELU that the vocoder and PL-BERT use.

Follows hexgrad/kokoro ``kokoro/istftnet.py`` (``SineGen``, ``SourceModuleHnNSF``, ``TorchSTFT``) with
the behaviour of the shipped ONNX export where the two differ on purpose: the harmonic source is
deterministic (no random initial phase, no additive noise), and its STFT is a plain centred STFT
(reflect padding, periodic Hann window). The inverse STFT is ``torch.istft``'s (normalised by the
summed squared window), as in the reference PyTorch model; the ONNX export skips that normalisation
and comes out 1.5x (3.5 dB) louder. Everything here runs in float32: phases need the precision.

The transcendental functions are polynomials after range reduction rather than ``mx.sin`` /
``mx.tanh``: one graph on every device (compiled, the elementwise chain fuses into one kernel on a
GPU as on the CPU), hence one set of numbers to test; on MLX's CPU backend, whose ``sin``, ``tanh``
and ``exp`` are scalar loops, they are also ~10x faster. NumPy builds constant tables only.
"""

from __future__ import annotations

import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np

# ---------------------------------------------------------------------------------------------
# Polynomial transcendentals

# Taylor coefficients of sin(r) / r up to r^10: |error| < 6e-8 for |r| <= pi / 2.
_SIN_COEFFS = (1.0, -1 / 6, 1 / 120, -1 / 5040, 1 / 362880, -1 / 39916800)
# Taylor coefficients of tanh(y) / y up to y^10; used for |y| <= 9 / 16.
_TANH_COEFFS = (1.0, -1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925)


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
    """``sin(t) ** 2`` by range reduction and a polynomial, accurate to float32 rounding of ``t``."""
    s, _ = _sin_reduced(t)  # sin^2 has period pi: the sign (-1)^k drops out
    return s * s


@partial(mx.compile, shapeless=True)
def fast_sin(t: mx.array) -> mx.array:
    """``sin(t)`` by range reduction and a polynomial."""
    s, k = _sin_reduced(t)
    return s * (1 - 2 * (k - 2 * mx.floor(0.5 * k)))  # sin(r + k pi) = (-1)^k sin(r)


@partial(mx.compile, shapeless=True)
def fast_cos(t: mx.array) -> mx.array:
    return fast_sin(t + 0.5 * math.pi)


def tanh(x: mx.array) -> mx.array:
    """``tanh(x)`` within 2e-7: a polynomial at x / 16, then four steps of tanh(2y) = 2 tanh(y) / (1 + tanh(y)^2)."""
    t = _even_poly(mx.clip(x, -9.0, 9.0) * (1 / 16), _TANH_COEFFS)  # tanh(9) is 1 in float32
    for _ in range(4):
        t = 2 * t / (1 + t * t)
    return t


compiled_tanh = mx.compile(tanh, shapeless=True)


@partial(mx.compile, shapeless=True)
def gelu_approx(x: mx.array) -> mx.array:
    """GELU, tanh approximation (``nn.gelu_approx``, transformers' ``gelu_new``), with :func:`tanh`."""
    return 0.5 * x * (1 + tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))


# ---------------------------------------------------------------------------------------------
# Windows and interpolation


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window(n, periodic=True)``)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float64)


def linear_taps(length: int, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    i0, i1, w = linear_taps(x.shape[1], scale)
    w = mx.array(w)[None, :, None]
    return x[:, mx.array(i0)] * (1 - w) + x[:, mx.array(i1)] * w


# ---------------------------------------------------------------------------------------------
# The harmonic source


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
        i0, i1, w = linear_taps(length, scale)
        w[i1 == i0] = 0.0
        idx0, idx1 = mx.array(i0), mx.array(i1)
        phase = cycles[:, idx0] + mx.array(w)[None, :, None] * step[:, idx1]
        phase = phase - mx.floor(phase)
        uv = (mx.repeat(f0, scale, axis=1) > self.voiced_threshold).astype(mx.float32)[..., None]
        return fast_sin(2 * math.pi * phase) * self.sine_amp * uv


class SourceModuleHnNSF(nn.Module):
    """The excitation: the harmonics mixed by one linear layer, then tanh."""

    def __init__(self, sampling_rate: int, upsample_scale: int, harmonic_num: int = 8, voiced_threshold: float = 10.0):
        super().__init__()
        self.l_sin_gen = SineGen(sampling_rate, upsample_scale, harmonic_num, voiced_threshold=voiced_threshold)
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    def __call__(self, f0: mx.array) -> mx.array:
        """f0: ``(B, N)`` -> excitation ``(B, N * upsample_scale)``."""
        sines = self.l_sin_gen(f0)
        return compiled_tanh(self.l_linear(sines.astype(self.l_linear.weight.dtype)))[..., 0].astype(mx.float32)


# ---------------------------------------------------------------------------------------------
# STFT


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
        self._win_sq = mx.array((win**2).astype(np.float32))

    def _frames(self, x: mx.array) -> mx.array:
        """(B, T) -> (B, T // hop + 1, n_fft) centred frames, reflect padding."""
        p = self.n_fft // 2
        x = mx.concatenate([x[:, 1 : p + 1][:, ::-1], x, x[:, -p - 1 : -1][:, ::-1]], axis=1)
        n_blocks = x.shape[1] // self.hop
        blocks = x[:, : n_blocks * self.hop].reshape(x.shape[0], n_blocks, self.hop)
        n = n_blocks - self.overlap + 1
        return mx.concatenate([blocks[:, j : j + n] for j in range(self.overlap)], axis=-1)

    def _overlap_add(self, frames: mx.array, in_frame_order: bool = False) -> mx.array:
        """Frames ``(B, F, n_fft)`` hop apart -> their sum ``(B, (F + overlap - 1) * hop)``.

        Chunk j of frame f lands in block f + j; ``in_frame_order`` sums each block's chunks from the
        earliest frame on (as ``torch.istft`` does), else from the latest.
        """
        b, n, _ = frames.shape
        k = self.overlap
        chunks = frames.reshape(b, n, k, self.hop)
        order = range(k - 1, -1, -1) if in_frame_order else range(k)
        return sum(mx.pad(chunks[:, :, j], [(0, 0), (j, k - 1 - j), (0, 0)]) for j in order).reshape(b, -1)

    def transform(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """Signal ``(B, T)`` -> magnitude and phase ``(B, frames, bins)``."""
        spec = self._frames(x.astype(mx.float32)) @ self._forward
        re, im = spec[..., : self.bins], spec[..., self.bins :]
        return mx.sqrt(re * re + im * im), mx.arctan2(im, re)

    def inverse(self, magnitude: mx.array, phase: mx.array) -> mx.array:
        """Magnitude and phase ``(B, frames, bins)`` -> signal ``(B, hop * (frames - 1))``."""
        spec = mx.concatenate([magnitude * fast_cos(phase), magnitude * fast_sin(phase)], axis=-1)
        frames = spec.astype(mx.float32) @ self._inverse  # (B, F, n_fft)
        out = self._overlap_add(frames)
        # torch.istft's normalisation: divided by the summed squared windows.
        envelope = self._overlap_add(mx.broadcast_to(self._win_sq, (1, frames.shape[1], self.n_fft)), True)
        out = out * mx.reciprocal(mx.maximum(envelope, 1e-11))
        p = self.n_fft // 2
        return out[:, p : out.shape[1] - p]
