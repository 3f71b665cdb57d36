"""The vocoder's 8-bit convolution kernel (kernels/int8_conv.c): packing, the convolution, channel statistics.

onnxruntime runs the shipped Kokoro file's convolutions in 8 bits; MLX's CPU backend has no fast
low-precision kernels. This kernel does the same with AVX-512 VNNI integer dot products: the input
quantized asymmetrically to uint8 (one scale per call), the weight to int8 (one scale per output
channel), exact int32 accumulation. An AdaIN + Snake before a conv is fused into its quantization.
Used by :mod:`.vocoder_int8`; available only where the CPU has AVX-512 VNNI and a C compiler exists.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .build import cpu_flags, disabled, failures, load

logger = logging.getLogger(__name__)

_INT8_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma")
_INT8_CPU = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "fma")

_f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_i8p = np.ctypeslib.ndpointer(np.int8, flags="C_CONTIGUOUS")
_i32p = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")


@lru_cache(maxsize=1)
def int8_conv() -> ctypes.CDLL | None:
    """kernels/int8_conv.c loaded, or None (no AVX-512 VNNI, no compiler, or ``MLX_STREAM_TTS_INT8=0``)."""
    if disabled("MLX_STREAM_TTS_INT8"):
        failures["int8_conv.c"] = "turned off by MLX_STREAM_TTS_INT8=0"
        return None
    if not set(_INT8_CPU) <= cpu_flags():
        failures["int8_conv.c"] = "this CPU lacks AVX-512 VNNI"
        return None
    lib = load("int8_conv.c", _INT8_FLAGS)
    if lib is None:
        return None
    c_int = ctypes.c_int
    lib.mst_s8_packed_size.argtypes = [c_int, c_int, c_int]
    lib.mst_s8_packed_size.restype = ctypes.c_long
    lib.mst_s8_pack.argtypes = [_f32p, c_int, c_int, c_int, _i8p, _f32p, _i32p]
    lib.mst_s8_pack.restype = c_int
    vp = ctypes.c_void_p  # optional arrays: None or a pointer
    lib.mst_s8_conv1d.argtypes = [
        _f32p, c_int, c_int, vp, vp, _i8p, _f32p, _i32p, vp, vp, c_int, c_int, c_int, c_int, _f32p, c_int, vp, vp,
    ]
    lib.mst_s8_scratch_size.argtypes = [c_int, c_int, c_int, c_int]
    lib.mst_s8_scratch_size.restype = ctypes.c_long
    lib.mst_s8_conv1d.restype = c_int
    f64p = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
    lib.mst_channel_stats.argtypes = [_f32p, c_int, c_int, c_int, c_int, f64p, f64p, f64p, f64p, _f32p, _f32p, c_int]
    lib.mst_channel_stats.restype = c_int
    return lib


def _ptr(a: np.ndarray | None, shape: tuple[int, ...]) -> int | None:
    """Address of an optional float32 array checked against ``shape`` (the caller keeps it alive)."""
    if a is None:
        return None
    if a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != shape:
        raise ValueError(f"expected a C-contiguous float32 array of shape {shape}, got {a.dtype} {a.shape}")
    return a.ctypes.data


@dataclass
class ChannelStats:
    """Per-channel statistics of a sequence ``(T, C)`` (:func:`channel_stats`); sums in float64."""

    total: np.ndarray  #: sum over all rows
    squares: np.ndarray  #: sum of squares over all rows
    core_total: np.ndarray  #: sum over rows [lo, hi)
    core_squares: np.ndarray  #: sum of squares over rows [lo, hi)
    low: np.ndarray  #: min over all rows (float32)
    high: np.ndarray  #: max over all rows (float32)


def channel_stats(x: np.ndarray, lo: int = 0, hi: int = 0, threads: int = 1) -> ChannelStats:
    """One pass over ``x`` ``(T, C)`` float32: the sums an instance norm needs (also over the rows
    ``[lo, hi)``) and each channel's range, rows split over ``threads``. Needs :func:`int8_conv`."""
    lib = int8_conv()
    if lib is None:
        raise RuntimeError("the int8 conv kernel is not available on this machine")
    x = np.ascontiguousarray(x, dtype=np.float32)
    c = x.shape[1]
    sums = [np.empty(c, np.float64) for _ in range(4)]
    low, high = np.empty(c, np.float32), np.empty(c, np.float32)
    if lib.mst_channel_stats(x, x.shape[0], c, int(lo), int(hi), *sums, low, high, int(threads)):
        raise MemoryError("channel_stats: out of memory")
    return ChannelStats(*sums, low, high)


_local = threading.local()


def _scratch(size: int) -> np.ndarray:
    """This thread's scratch buffer for the kernel, grown to ``size`` bytes (kept: no page faults per call)."""
    buf = getattr(_local, "scratch", None)
    if buf is None or buf.size < size:
        buf = _local.scratch = np.empty(max(size, 1 << 16), np.uint8)
    return buf


class PackedConv:
    """A conv weight ``(out, k, in)`` quantized and packed once for :func:`int8_conv`'s kernel."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, dilation: int):
        lib = int8_conv()
        if lib is None:
            raise RuntimeError("the int8 conv kernel is not available on this machine")
        self._lib = lib
        w = np.ascontiguousarray(weight, dtype=np.float32)
        self.out_c, self.k, self.in_c = w.shape
        self.dilation = dilation
        self.packed = np.empty(lib.mst_s8_packed_size(self.out_c, self.k, self.in_c), np.int8)
        self.scale = np.empty(self.out_c, np.float32)
        self.wsum = np.empty(self.out_c, np.int32)
        if lib.mst_s8_pack(w, self.out_c, self.k, self.in_c, self.packed, self.scale, self.wsum):
            raise MemoryError("int8 conv: out of memory while packing a weight")
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)

    def __call__(self, x: np.ndarray, threads: int = 1, snake: tuple[np.ndarray, np.ndarray] | None = None,
                 residual: np.ndarray | None = None, out: np.ndarray | None = None,
                 value_range: tuple[float, float] | None = None) -> np.ndarray:
        """x ``(T, in)`` float32 -> ``(T, out)``, "same" padding.

        Args:
            threads: threads to split the rows over.
            snake: ``(a, b)``, each ``(in,)``: the conv's input is ``u + sin(u)^2`` with ``u = a x + b``
                instead of ``x`` (an AdaIN and a Snake whose ``1 / alpha`` the packed weight holds).
            residual: ``(T, out)``, added to the output.
            out: ``(T, out)`` float32 to write into (may be ``residual``, not ``x``); a new array if None.
            value_range: the input's (min, max) (after ``snake``) if known, e.g. from
                :func:`snake_range`: saves a pass over it. Values outside are clipped.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        t = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.in_c:
            raise ValueError(f"expected input (T, {self.in_c}), got {x.shape}")
        a, b = snake if snake is not None else (None, None)
        if out is None:
            out = np.empty((t, self.out_c), np.float32)
        elif np.shares_memory(out, x):
            raise ValueError("out must not overlap the input")
        _ptr(out, (t, self.out_c))
        pad = self.dilation * (self.k - 1) // 2
        scratch = _scratch(self._lib.mst_s8_scratch_size(t, self.in_c, self.k, self.dilation))
        err = self._lib.mst_s8_conv1d(
            x, t, self.in_c, _ptr(a, (self.in_c,)), _ptr(b, (self.in_c,)), self.packed, self.scale, self.wsum,
            _ptr(self.bias, (self.out_c,)), _ptr(residual, (t, self.out_c)), self.out_c, self.k, self.dilation,
            pad, out, int(threads), scratch.ctypes.data,
            None if value_range is None else (ctypes.c_float * 2)(*value_range),
        )
        if err:
            raise MemoryError("int8 conv: out of memory for the scratch buffer")
        return out


def snake_range(stats: ChannelStats, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Exact (min, max) of ``u + sin(u)^2`` with ``u = a x + b`` per channel, from ``x``'s channel ranges:
    the snake never decreases (its slope is ``1 + sin 2u >= 0``), so its extremes are at u's."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    u1, u2 = a64 * stats.low + b64, a64 * stats.high + b64
    lo, hi = np.minimum(u1, u2), np.maximum(u1, u2)
    return float((lo + np.sin(lo) ** 2).min()), float((hi + np.sin(hi) ** 2).max())
