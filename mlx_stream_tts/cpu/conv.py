"""Kokoro's convolutions as float32 graphs that MLX's CPU backend runs fast (the voice's ``cpu-float32``).

MLX's CPU conv copies an im2col buffer (kernel x input size) through a slow strided copy, runs
dilated convs and strided transposed convs as direct loops (30-100x slower than GEMM), and its
compiled elementwise kernels are vectorised only when all their inputs have one shape. So:

- :func:`conv1d`: a long "same" conv as one GEMM per tap over shifted views of the input, summed in
  place by ``addmm`` (no im2col); with few outputs (``conv_post``: 128 -> 22), one GEMM onto every
  tap's output, then shifted sums; a short dilated conv as a plain conv over the ``d`` interleaved
  subsequences;
- :class:`ConvTranspose1d`: the ungrouped transposed conv as one GEMM and an overlap-add;
- :class:`AdaINResBlock1`: each AdaIN + Snake as ``u + sin(u)^2`` with ``u = x * (scale alpha) + shift
  alpha`` (the polynomial runs on one shape, vectorised), the snake's ``1 / alpha`` folded once into
  the next conv's weight.

:func:`to_cpu` swaps these in for the pure modules of a loaded model (``cpu/voice.py`` decides when);
``tests/test_dsp.py`` and ``tests/test_cpu_voice.py`` check them against PyTorch and the pure model.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn

from ..models import istftnet
from ..models.kokoro_dsp import sin_squared
from .modules import adopt, attach, swap

#: im2col size (length x kernel x channels) from which a stride-1 conv runs as accumulated GEMMs.
ADDMM_MIN_ELEMENTS = 1 << 19


def conv1d(x: mx.array, weight: mx.array, bias: mx.array | None = None, stride: int = 1, padding: int = 0,
           dilation: int = 1, groups: int = 1) -> mx.array:
    """``mx.conv1d(x, weight, stride, padding, dilation, groups) + bias``, rewritten where MLX's CPU
    conv is slow; x ``(B, L, in)``, weight ``(out, k, in / groups)``."""
    out_c, k, in_c = weight.shape
    d = dilation
    same = stride == 1 and padding == d * (k - 1) // 2 and groups == 1
    if same and k > 1 and out_c * k <= in_c * 2 and x.shape[1] * k * in_c >= ADDMM_MIN_ELEMENTS:
        # Few outputs: one GEMM onto every tap's output, then shifted sums; per-tap GEMMs with 22
        # columns run at a fraction of BLAS speed.
        b, length, _ = x.shape
        z = (x @ weight.transpose(2, 1, 0).reshape(in_c, k * out_c)).reshape(b, length, k, out_c)
        z = mx.pad(z, [(0, 0), (padding, padding), (0, 0), (0, 0)])
        y = z[:, 0:length, 0]
        for j in range(1, k):
            y = y + z[:, j * d: j * d + length, j]
        return y + bias if bias is not None else y
    if same and k > 1 and x.shape[1] * k * in_c >= ADDMM_MIN_ELEMENTS:
        length = x.shape[1]
        xp = mx.pad(x, [(0, 0), (padding, padding), (0, 0)])
        y = xp[:, :length] @ weight[:, 0].T if bias is None else mx.addmm(bias, xp[:, :length], weight[:, 0].T)
        for j in range(1, k):
            y = mx.addmm(y, xp[:, j * d : j * d + length], weight[:, j].T)
        return y
    if d == 1 or not same:
        y = mx.conv1d(x, weight, stride=stride, padding=padding, dilation=d, groups=groups)
        return y + bias if bias is not None else y
    b, length, _ = x.shape
    n = -(-length // d)
    x = mx.pad(x, [(0, 0), (0, n * d - length), (0, 0)])
    x = x.reshape(b, n, d, in_c).transpose(0, 2, 1, 3).reshape(b * d, n, in_c)
    y = mx.conv1d(x, weight, padding=(k - 1) // 2)
    y = y.reshape(b, d, n, out_c).transpose(0, 2, 1, 3).reshape(b, n * d, out_c)[:, :length]
    return y + bias if bias is not None else y


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` computed by :func:`conv1d`."""

    def __call__(self, x: mx.array) -> mx.array:
        return conv1d(x, self.weight, self.get("bias"), self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose1d(istftnet.ConvTranspose1d):
    """Ungrouped, one GEMM and an overlap-add; grouped (depthwise: fast in MLX), the pure module."""

    def __call__(self, x: mx.array) -> mx.array:
        if self.groups != 1:
            return super().__call__(x)
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


@partial(mx.compile, shapeless=True)
def _affine(x: mx.array, scale: mx.array, shift: mx.array) -> mx.array:
    return x * scale + shift


# Split from _affine so that the polynomial runs in a kernel whose inputs all have one shape: MLX's
# compiled CPU kernels are vectorised only then (with per-channel operands they step element by
# element, 3x slower).
@partial(mx.compile, shapeless=True)
def _plus_sin_squared(u: mx.array) -> mx.array:
    return u + sin_squared(u)


def scaled_snake(x: mx.array, scale: mx.array, shift: mx.array, alpha: mx.array) -> mx.array:
    """``alpha * snake(x * scale + shift, alpha)``: the caller folds ``1 / alpha`` into the next conv."""
    return _plus_sin_squared(_affine(x, scale * alpha, shift * alpha))


class AdaINResBlock1(istftnet.AdaINResBlock1):
    """The resblock with each AdaIN + Snake as :func:`scaled_snake` and ``1 / alpha`` in the convs' weights.

    Build with :meth:`from_block`, which folds the weights once.
    """

    folded1: list[mx.array]  #: ``convs1[i].weight / alpha1[i]`` (over input channels)
    folded2: list[mx.array]  #: ``convs2[i].weight / alpha2[i]``

    @classmethod
    def from_block(cls, block: istftnet.AdaINResBlock1) -> AdaINResBlock1:
        new = adopt(cls, block)
        folded1 = [c.weight * (1 / a) for c, a in zip(block.convs1, block.alpha1)]
        folded2 = [c.weight * (1 / a) for c, a in zip(block.convs2, block.alpha2)]
        mx.eval(folded1, folded2)  # now: a lazy array would be bound to this thread's stream
        attach(new, "folded1", folded1)
        attach(new, "folded2", folded2)
        return new

    def __call__(self, x: mx.array, s: mx.array, norm: istftnet.NormStats | None = None) -> mx.array:
        steps = zip(self.convs1, self.convs2, self.adain1, self.adain2, self.alpha1, self.alpha2,
                    self.folded1, self.folded2)
        for c1, c2, n1, n2, a1, a2, w1, w2 in steps:
            xt = conv1d(scaled_snake(x, *n1.scale_shift(x, s, norm), a1), w1, c1.get("bias"), c1.stride,
                        c1.padding, c1.dilation, c1.groups)
            xt = conv1d(scaled_snake(xt, *n2.scale_shift(xt, s, norm), a2), w2, c2.get("bias"), c2.stride,
                        c2.padding, c2.dilation, c2.groups)
            x = x + xt
        return x


def cpu_module(module: nn.Module) -> nn.Module | None:
    """The CPU float32 version of a pure module, or None for a module that has none."""
    kind = type(module)
    if kind is nn.Conv1d:
        return adopt(Conv1d, module)
    if kind is istftnet.ConvTranspose1d:
        return adopt(ConvTranspose1d, module)
    if kind is istftnet.AdaINResBlock1:
        return AdaINResBlock1.from_block(module)
    return None


def to_cpu(model: nn.Module) -> int:
    """Swap every pure conv and Snake resblock of ``model`` for its CPU version; returns how many.

    Modules already swapped for another version (the 8-bit ones) are left as they are.
    """
    return swap(model, cpu_module)
