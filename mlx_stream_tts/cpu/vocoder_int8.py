"""The decoder's convolutions in 8 bits on the CPU (the voice's ``cpu-int8``), as onnxruntime runs
the shipped Kokoro file: 2-5x faster than float32 on a CPU with AVX-512 VNNI.

:func:`to_int8` swaps, in a loaded model's decoder:

- the stride-1 convs of the frame-rate blocks (``encode``, ``decode``, ``asr_res``) for
  :class:`Int8Conv1d` (the weight packed once by :class:`.int8_conv.PackedConv`);
- the generator's upsampling convs for :class:`Int8ConvTranspose1d` (the GEMM in 8 bits, the
  overlap-add in NumPy);
- its Snake resblocks for :class:`Int8AdaINResBlock1`: each AdaIN + Snake fused into the quantization
  of the conv after it, the snake's ``1 / alpha`` folded into the packed weight, the residual add
  into that conv's output;
- the generator itself for :class:`Int8Generator`, which runs the resblocks in NumPy between the
  upsampling convs (no MLX round trip per block: MLX's elementwise CPU kernels are single-threaded
  and cost more than the 8-bit convs themselves).

``conv_post`` stays float32, as in the shipped ONNX: its output is the log-magnitude, and in 8 bits
the audio's log-mel correlation with float32 fell from ~0.988 to ~0.96. The noise convs, the strided
``F0_conv`` and ``N_conv`` and the depthwise ``pool`` are small and stay float32 too: ``cpu/voice.py``
gives them, and the rest of the model, the float32 CPU versions of ``conv.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..models import istftnet
from ..models.istftnet import NormStats, leaky_relu
from . import int8_conv as kernel
from .blas import blas_threads
from .modules import adopt, attach


def packable(conv: nn.Conv1d) -> bool:
    """Whether the 8-bit kernel runs this conv: stride 1, "same" padding, no groups."""
    k = conv.weight.shape[1]
    return conv.stride == 1 and conv.padding == conv.dilation * (k - 1) // 2 and conv.groups == 1


def _pack(conv: nn.Conv1d, in_scale: mx.array | None = None) -> kernel.PackedConv:
    """``conv``'s weight (times ``in_scale`` over its input channels) packed for the kernel."""
    mx.eval(conv.weight, *([] if in_scale is None else [in_scale]))
    w = np.asarray(conv.weight.astype(mx.float32))  # a view of the loaded weight, no copy
    if in_scale is not None:
        w = w * np.asarray(in_scale, np.float32)
    bias = np.array(conv["bias"]) if "bias" in conv else None
    return kernel.PackedConv(w, bias, conv.dilation)


def _per_sequence(x: mx.array, run: Callable[[np.ndarray, int], np.ndarray]) -> mx.array:
    """``run(sequence (L, C) float32, threads) -> (L', C')`` over ``x``'s batch.

    The kernel needs the input's values: this evaluates the graph up to here; the result enters
    MLX as a new array.
    """
    mx.eval(x)
    xs = np.asarray(x.astype(mx.float32))
    threads = blas_threads()
    out = [run(xs[i], threads) for i in range(xs.shape[0])]
    return mx.array(out[0][None] if len(out) == 1 else np.stack(out)).astype(x.dtype)


class Int8Conv1d(nn.Conv1d):
    """A stride-1 "same" conv on the 8-bit kernel; build with :meth:`from_conv`."""

    packed: kernel.PackedConv

    @classmethod
    def from_conv(cls, conv: nn.Conv1d) -> Int8Conv1d:
        if not packable(conv):
            raise ValueError(f"the 8-bit kernel runs stride-1 'same' convs only, not {conv}")
        new = adopt(cls, conv)
        attach(new, "packed", _pack(conv))
        return new

    def __call__(self, x: mx.array) -> mx.array:
        return _per_sequence(x, self.packed)


class Int8ConvTranspose1d(istftnet.ConvTranspose1d):
    """An ungrouped transposed conv: its GEMM on the 8-bit kernel, the overlap-add in NumPy."""

    packed: kernel.PackedConv  #: the weight as one GEMM ``(kernel * out, 1, in)``

    @classmethod
    def from_conv(cls, conv: istftnet.ConvTranspose1d) -> Int8ConvTranspose1d:
        if conv.groups != 1:
            raise ValueError("the 8-bit kernel runs ungrouped transposed convs only")
        new = adopt(cls, conv)
        out_c, k, in_c = conv.weight.shape
        mx.eval(conv.weight)
        w = np.asarray(conv.weight.astype(mx.float32)).transpose(1, 0, 2).reshape(k * out_c, 1, in_c)
        attach(new, "packed", kernel.PackedConv(w, None, 1))
        attach(new, "bias_np", np.asarray(conv.bias, np.float32))
        return new

    def sequence(self, xs: np.ndarray, threads: int) -> np.ndarray:
        """One sequence ``(L, in)`` float32 -> ``(L', out)``; the overlap-add in place (no MLX round
        trip of the kernel-times-longer tap array)."""
        out_c, k, _ = self.weight.shape
        s, m = self.stride, -(-k // self.stride)
        length = xs.shape[0]
        end = (length - 1) * s + k - self.padding + self.output_padding
        taps = self.packed(xs, threads).reshape(length, k, out_c)
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
        full[self.padding: end] += self.bias_np
        return full[self.padding: end]

    def __call__(self, x: mx.array) -> mx.array:
        return _per_sequence(x, self.sequence)


def numpy_stats(norm: NormStats, x: np.ndarray, stats: kernel.ChannelStats | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``norm(x)`` for one sequence ``(L, C)`` in NumPy, in float64 (see :class:`.istftnet.NormStats`).

    ``stats``: ``x``'s channel statistics over ``norm.core_rows``, if already computed.
    """
    rows = x.shape[0]
    lo, hi = norm.core_rows(rows)
    st = stats if stats is not None else kernel.channel_stats(x, lo, hi)
    n0, s0, q0 = norm.prior[len(norm.totals)] if norm.prior else (0, 0.0, 0.0)
    s0, q0 = np.asarray(s0, np.float64).reshape(-1), np.asarray(q0, np.float64).reshape(-1)
    norm.totals.append((n0 + hi - lo, s0 + st.core_total, q0 + st.core_squares))
    n = n0 + rows
    mean = (s0 + st.total) / n
    return mean, np.maximum((q0 + st.squares) / n - mean * mean, 0.0)


class Int8AdaINResBlock1(istftnet.AdaINResBlock1):
    """The Snake resblock on the 8-bit kernel, in NumPy; build with :meth:`from_block`."""

    packed1: list[kernel.PackedConv]  #: ``convs1[i]`` with ``1 / alpha1[i]`` folded in
    packed2: list[kernel.PackedConv]  #: ``convs2[i]`` with ``1 / alpha2[i]`` folded in

    @classmethod
    def from_block(cls, block: istftnet.AdaINResBlock1) -> Int8AdaINResBlock1:
        new = adopt(cls, block)
        attach(new, "packed1", [_pack(c, 1 / a) for c, a in zip(block.convs1, block.alpha1)])
        attach(new, "packed2", [_pack(c, 1 / a) for c, a in zip(block.convs2, block.alpha2)])
        return new

    @staticmethod
    def _snake_args(x: np.ndarray, style: np.ndarray, adain: istftnet.AdaIN1d, alpha: np.ndarray,
                    norm: NormStats | None) -> dict:
        """The kernel's arguments for ``alpha * snake(AdaIN(x), alpha) = u + sin(u)^2``, ``u = a x + b``
        (NumPy): ``snake=(a, b)`` and the exact range of the result (one pass over ``x`` in all)."""
        threads = blas_threads()
        if norm is None:
            st = kernel.channel_stats(x, threads=threads)
            mean = st.total / x.shape[0]
            var = np.maximum(st.squares / x.shape[0] - mean * mean, 0.0)
        else:
            st = kernel.channel_stats(x, *norm.core_rows(x.shape[0]), threads=threads)
            mean, var = numpy_stats(norm, x, st)
        gamma, beta = np.split(style, 2)
        inv = np.asarray(adain.norm.weight) / np.sqrt(var + adain.norm.eps)
        scale = inv * (1 + gamma)
        shift = (np.asarray(adain.norm.bias) - mean * inv) * (1 + gamma) + beta
        a, b = (scale * alpha).astype(np.float32), (shift * alpha).astype(np.float32)
        return {"snake": (a, b), "value_range": kernel.snake_range(st, a, b)}

    def run(self, h: np.ndarray, s: mx.array, norm: NormStats | None = None,
            scratch: np.ndarray | None = None) -> np.ndarray:
        """The block for one sequence ``h`` ``(L, C)`` float32, updated in place (and returned).

        ``scratch``: a buffer like ``h`` to reuse.
        """
        styles = [n.fc(s) for n in (*self.adain1, *self.adain2)]
        mx.eval(styles)
        styles = [np.asarray(st[0], np.float64) for st in styles]
        threads = blas_threads()
        xt = scratch if scratch is not None else np.empty_like(h)
        steps = zip(self.packed1, self.packed2, self.adain1, self.adain2, self.alpha1, self.alpha2,
                    styles[: len(self.convs1)], styles[len(self.convs1):])
        for c1, c2, n1, n2, a1, a2, s1, s2 in steps:
            c1(h, threads, out=xt, **self._snake_args(h, s1, n1, np.asarray(a1, np.float64), norm))
            args = self._snake_args(xt, s2, n2, np.asarray(a2, np.float64), norm)
            c2(xt, threads, residual=h, out=h, **args)  # h += conv2(snake(AdaIN(xt)))
        return h

    def __call__(self, x: mx.array, s: mx.array, norm: NormStats | None = None) -> mx.array:
        if norm is not None and x.shape[0] != 1:
            raise ValueError("windowed statistics (norm) are for one sequence at a time")
        mx.eval(x)
        xs = np.array(x.astype(mx.float32))
        out = [self.run(xs[i], s[i: i + 1], norm) for i in range(xs.shape[0])]
        return mx.array(np.stack(out)).astype(x.dtype)


class Int8Generator(istftnet.Generator):
    """The generator with its resblocks (:class:`Int8AdaINResBlock1`) run in NumPy between the
    upsampling convs; ``conv_post`` and the iSTFT in MLX. Build with :func:`to_int8`."""

    def synthesize(self, x: mx.array, s: mx.array, har: mx.array, norm: NormStats | None = None) -> mx.array:
        if x.shape[0] == 1:
            return self._synthesize_one(x, s, har.astype(x.dtype), norm)
        if norm is not None:
            raise ValueError("windowed statistics (norm) are for one sequence at a time")
        return mx.concatenate([self._synthesize_one(x[i: i + 1], s[i: i + 1], har[i: i + 1].astype(x.dtype), None)
                               for i in range(x.shape[0])])

    def _synthesize_one(self, x: mx.array, s: mx.array, har: mx.array, norm: NormStats | None) -> mx.array:
        for i in range(self.num_upsamples):
            x = leaky_relu(x, 0.1)
            source = self.noise_convs[i](har)
            mx.eval(source)
            x_source = np.array(source[0], np.float32)
            x_source = self.noise_res[i].run(x_source, s, norm)
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
                total += self.resblocks[i * self.num_kernels + j].run(h, s, norm, scratch)
            total *= 1.0 / self.num_kernels
            x = mx.array(total[None])
        return self.head(x)


def to_int8(decoder: istftnet.Decoder) -> None:
    """Swap the decoder's convolutions listed in the module docstring for their 8-bit versions.

    Needs :func:`.int8_conv.int8_conv` (the kernel) to be available.
    """
    for block in (decoder.encode, *decoder.decode):
        for name in ("conv1", "conv2", "conv1x1"):
            if name in block and packable(block[name]):
                block[name] = Int8Conv1d.from_conv(block[name])
    decoder.asr_res = [Int8Conv1d.from_conv(c) if packable(c) else c for c in decoder.asr_res]
    gen = adopt(Int8Generator, decoder.generator)
    gen.resblocks = [Int8AdaINResBlock1.from_block(b) for b in gen.resblocks]
    gen.noise_res = [Int8AdaINResBlock1.from_block(b) for b in gen.noise_res]
    gen.ups = [Int8ConvTranspose1d.from_conv(u) for u in gen.ups]
    decoder.generator = gen
