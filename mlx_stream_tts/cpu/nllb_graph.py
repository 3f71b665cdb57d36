"""The translator's graph on MLX's CPU backend: the same math as ``models/nllb.py`` in fewer, larger ops.

On a CPU each MLX op costs microseconds of dispatch and a decoding step of the reference model has
~1700 of them around its ~50 products, and OpenBLAS reads a one-row product's weight slowly (it packs
the whole weight first). :func:`rewrite` swaps modules of a loaded model for subclasses that hold the
same arrays and compute the same float32 results, as ``nn.quantize`` swaps layers:

- ``nn.Linear`` -> :class:`CpuLinear`, ``LMHead`` -> :class:`CpuLMHead`, the tied ``nn.Embedding`` ->
  :class:`CpuEmbedding`: products through :func:`linear` (row chunks that suit OpenBLAS's small-matrix
  kernel, one-row products left to the gemv shim with weight views prepared once, biases inside the
  product with ``mx.addmm``, optionally split over two streams: :func:`set_parallel`);
- ``Attention`` -> :class:`FusedAttention`: self-attention's q/k/v as one product over a fused matrix
  whose row views become the three weights (no extra memory); :meth:`FusedAttention.fused_quantized`
  makes the same for 8/4-bit layers, for the C decoding step;
- ``nn.LayerNorm`` -> :class:`CompiledLayerNorm`: one compiled graph instead of ~15 small ops;

and :func:`dequantize_encoder` runs a quantized model's encoder in float32 (MLX's quantized CPU kernels
are slow). ``tests/test_cpu_nllb_graph.py`` checks each against the reference modules.
"""

from __future__ import annotations

import math
import threading
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from ..models.nllb import Attention, LMHead, Model
from . import blas as _blas

# OpenBLAS runs a product with few rows through its general sgemm, which first packs (copies) the whole
# weight: a decoding step's 1 x 1024 @ 1024 x 4096 reached 5-25 GB/s on this project's 2-core machine, and
# collapsed further when another process held a core (its two threads wait on each other). Products with
# M*N*K below ~1e6 take its unpacked small-matrix kernel instead, at ~30 GB/s from one thread. So for few
# rows the weight's rows are split into chunks that fit and all chunks run as one batched matmul over a
# free reshape of the same memory (MLX's CPU backend calls sgemm once per chunk). Measured with the
# cmeel-openblas 0.3.31 build only: other BLAS libraries (no OpenBLAS found) keep plain products.
# With the gemv shim loaded (blas.py), one-row products reach its kernel directly and skip this.
_CHUNKING = _blas.active_blas is not None and "openblas" in _blas.active_blas.lower()
_SMALL_PRODUCT = 1 << 19  # M * chunk * K at most: half of OpenBLAS's limit, to stay clear of it
_MAX_CHUNKED_ROWS = 16  # at 32 rows the packed sgemm was as fast
_MIN_SPLIT_PRODUCT = 1 << 20  # smaller products are not worth a second stream's synchronization

_streams = threading.local()  # MLX streams belong to the thread that made them


def _side_stream() -> mx.Stream:
    stream = getattr(_streams, "side", None)
    if stream is None:
        stream = _streams.side = mx.new_stream(mx.cpu)
    return stream


def _chunked(x2: mx.array, weight: mx.array, chunk: int) -> mx.array:
    """``x2 (rows, k) @ weight.T`` as one batched product over row chunks of ``weight``."""
    rows, k = x2.shape
    n = weight.shape[0]
    blocks = n // chunk
    main = blocks * chunk
    out = x2[None] @ weight[:main].reshape(blocks, chunk, k).swapaxes(1, 2)  # (blocks, rows, chunk)
    out = out.reshape(rows, main) if rows == 1 else out.swapaxes(0, 1).reshape(rows, main)
    if main < n:
        out = mx.concatenate([out, x2 @ weight[main:].T], axis=1)
    return out


def _prepared(owner: nn.Module, weight: mx.array, bias: mx.array | None) -> tuple[mx.array, mx.array | None]:
    """``weight.T`` and ``bias`` as ``(1, n)``, evaluated once per weight (views, no copies): leaves in
    every later step's graph instead of a transpose and a broadcast per product."""
    cached = owner.__dict__.get("_prepared")  # outside the parameter tree on purpose
    if cached is None or cached[0] is not weight or cached[1] is not bias:
        prepared = (weight.T, None if bias is None else bias.reshape(1, -1))
        mx.eval([a for a in prepared if a is not None])
        cached = (weight, bias, *prepared)
        object.__setattr__(owner, "_prepared", cached)
    return cached[2], cached[3]


def linear(
    x: mx.array,
    weight: mx.array,
    bias: mx.array | None = None,
    split: bool = False,
    owner: nn.Module | None = None,
) -> mx.array:
    """``x @ weight.T (+ bias)`` for a float ``weight`` of shape ``(out, in)``, fast for few rows on CPU.

    With ``split``, a large product with few rows runs its two halves of output rows on two MLX CPU
    streams (two cores): ~15% more read speed when the second core is free, a loss when it is busy.
    (One-row products through the gemv shim split only when OpenBLAS runs one thread.) ``owner``, the
    module that holds ``weight``, keeps its prepared views for one-row products (see ``_prepared``).
    """
    *lead, k = x.shape
    rows = math.prod(lead)
    n = weight.shape[0]
    if not _CHUNKING or rows > _MAX_CHUNKED_ROWS or rows * n * k <= _SMALL_PRODUCT:
        return x @ weight.T if bias is None else mx.addmm(bias, x, weight.T)
    x2 = x.reshape(rows, k)
    if rows == 1 and _blas.gemv_shim is not None and weight.dtype == mx.float32 and x.dtype == mx.float32:
        # The shim runs this sgemm as a matrix-vector product: in place, no chunks needed (only float32
        # reaches BLAS; MLX's own half-precision kernels keep the chunks, which suit them). It is
        # threaded, so a second stream only helps when BLAS runs one thread (measured).
        split = split and _blas.blas_threads() == 1
        if not (split and rows * n * k >= _MIN_SPLIT_PRODUCT):
            weight_t, bias2 = _prepared(owner, weight, bias) if owner is not None else (weight.T, bias)
            # The bias inside the product (the shim takes beta == 1): one op instead of two.
            out = x2 @ weight_t if bias2 is None else mx.addmm(bias2, x2, weight_t)
            return out.reshape(*lead, n)
        product = lambda w: x2 @ w.T  # noqa: E731
        half = n // 2
    else:
        chunk = 1 << max(3, int(math.log2(max(1, _SMALL_PRODUCT // (rows * k)))))
        product = lambda w: _chunked(x2, w, chunk)  # noqa: E731
        half = (n // 2 // chunk) * chunk
    if split and half and rows * n * k >= _MIN_SPLIT_PRODUCT:
        first = product(weight[:half])
        with mx.stream(_side_stream()):
            second = product(weight[half:])
        out = mx.concatenate([first, second], axis=1)
    else:
        out = product(weight)
    if bias is not None:
        out = out + bias
    return out.reshape(*lead, n)


class CpuLinear(nn.Linear):
    """``nn.Linear`` (same parameters) computed with :func:`linear`."""

    split = False  # set by set_parallel

    def __call__(self, x: mx.array) -> mx.array:
        return linear(x, self["weight"], self.get("bias"), self.split, owner=self)


class CpuLMHead(LMHead):
    """``LMHead`` computed with :func:`linear`."""

    split = False

    def __call__(self, x: mx.array) -> mx.array:
        return linear(x, self.weight, split=self.split, owner=self)


class CpuEmbedding(nn.Embedding):
    """``nn.Embedding`` whose tied output projection (``as_linear``) runs through :func:`linear`."""

    split = False

    def as_linear(self, x: mx.array) -> mx.array:
        return linear(x, self.weight, split=self.split, owner=self)


@partial(mx.compile, shapeless=True)
def _layer_norm(x: mx.array, weight: mx.array, bias: mx.array, inv_dims: mx.array) -> mx.array:
    # 1 / dims comes in as an array: a shapeless trace would keep a mean's divisor from the first shape.
    centered = x - x.sum(axis=-1, keepdims=True) * inv_dims
    var = (centered * centered).sum(axis=-1, keepdims=True) * inv_dims
    return centered * mx.rsqrt(var + 1e-5) * weight + bias


_inv_dims: dict[int, mx.array] = {}


class CompiledLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (eps 1e-5, affine) that runs as one compiled graph in float32.

    MLX's CPU backend has no fused layer norm: ``mx.fast.layer_norm`` falls back to ~15 small ops, and
    a decoding step has 37 norms, ~1/3 of its ops. Compiled, the elementwise parts fuse around the two
    reductions. Same formula; other dtypes keep ``mx.fast.layer_norm``.
    """

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype == mx.float32 and self.eps == 1e-5 and "bias" in self:
            dims = x.shape[-1]
            inv = _inv_dims.get(dims)
            if inv is None:
                inv = _inv_dims[dims] = mx.array(1.0 / dims, dtype=mx.float32)
            return _layer_norm(x, self.weight, self.bias, inv)
        return super().__call__(x)


class FusedAttention(Attention):
    """``Attention`` whose self-attention q/k/v run as one product over a ``(3 * D, D)`` matrix: a third
    of the products (and their ops) of a decoding step. The fused matrix is made once and the q/k/v
    weights become row views of it (no extra memory); weights loaded later undo the fusion."""

    def qkv(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        fused = self.fused()
        if fused is None:
            return super().qkv(x)
        q, k, v = mx.split(linear(x, *fused, owner=self), 3, axis=-1)
        return self.heads(q), self.heads(k), self.heads(v)

    def fused(self) -> tuple[mx.array, mx.array] | None:
        """q/k/v as one float32 ``(weight, bias)``; None unless all three are float32 with biases."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if not all(type(p) in (nn.Linear, CpuLinear) and "bias" in p and p.weight.dtype == mx.float32
                   for p in projs):
            return None  # quantized or half precision: separate products
        return self._fuse("_fused_float", ("weight", "bias"))

    def fused_quantized(self) -> tuple[mx.array, mx.array, mx.array, mx.array] | None:
        """q/k/v as one quantized ``(3 * D, ...)`` matrix: ``(weight, scales, biases, bias)``, for the C
        decoding step (one product instead of three), made as :meth:`fused` makes the float one. None
        unless all three are affine-quantized alike."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if not all(type(p) is nn.QuantizedLinear and "bias" in p and getattr(p, "mode", "affine") == "affine"
                   for p in projs):
            return None
        if len({(p.group_size, p.bits) for p in projs}) != 1:
            return None
        return self._fuse("_fused_quantized", ("weight", "scales", "biases", "bias"))

    def _fuse(self, key: str, names: tuple[str, ...]) -> tuple[mx.array, ...]:
        """The q/k/v layers' arrays ``names`` as one ``(3 * D, ...)`` array each, made once and kept under
        ``key`` (outside the parameter tree on purpose). The three layers' arrays become row views of
        them (no extra memory); weights loaded later undo the fusion."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        current = [p[n] for p in projs for n in names]
        cached = self.__dict__.get(key)
        if cached is not None and all(a is b for a, b in zip(cached[-1], current)):
            return cached[:-1]
        fused = tuple(mx.concatenate([p[n] for p in projs]) for n in names)
        mx.eval(fused)
        rows = projs[0].weight.shape[0]
        for i, p in enumerate(projs):
            for n, whole in zip(names, fused):
                setattr(p, n, whole[i * rows : (i + 1) * rows])
        views = [p[n] for p in projs for n in names]
        mx.eval(views)
        object.__setattr__(self, key, (*fused, views))
        return fused


# Reference module type -> its CPU form (exact types: quantized layers and subclasses are left alone).
_CPU_FORMS: dict[type, type] = {
    nn.Linear: CpuLinear,
    LMHead: CpuLMHead,
    nn.Embedding: CpuEmbedding,
    nn.LayerNorm: CompiledLayerNorm,
    Attention: FusedAttention,
}


def _as(cls: type, module: nn.Module) -> nn.Module:
    """A ``cls`` instance holding ``module``'s arrays, children and attributes (no copies)."""
    new = cls.__new__(cls)
    dict.update(new, module)
    new.__dict__.update(module.__dict__)
    return new


def _swap(module: nn.Module) -> tuple[nn.Module, int]:
    """``module`` with every descendant of a type in ``_CPU_FORMS`` swapped; how many were swapped."""
    count = 0
    for key, value in list(module.items()):
        if isinstance(value, nn.Module):
            module[key], n = _swap(value)
            count += n
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, nn.Module):
                    value[i], n = _swap(item)
                    count += n
    cls = _CPU_FORMS.get(type(module))
    return (module, count) if cls is None else (_as(cls, module), count + 1)


def rewrite(model: Model) -> int:
    """Swap ``model``'s modules for their CPU forms in place (see the module docstring); returns how many.

    Float32 self-attention q/k/v are fused here, once (their weights become views of the fused matrix).
    """
    model.model, count = _swap(model.model)
    if "lm_head" in model:
        model.lm_head, n = _swap(model.lm_head)
        count += n
    for _, module in model.named_modules():
        if isinstance(module, FusedAttention):
            module.fused()
    return count


def set_parallel(model: Model, on: bool) -> None:
    """Run the large products of decoding steps on two CPU streams (see :func:`linear`).

    Faster when a second core is free (the decoder then uses both), slower when another busy
    process (e.g. the voice) holds it. Off by default.
    """
    for _, module in model.named_modules():
        if isinstance(module, (CpuLinear, CpuLMHead, CpuEmbedding)):
            module.split = on


def dequantize_encoder(model: Model) -> int:
    """Replace the encoder's quantized linear layers, and the cross-attention key/value projections
    (run once per sentence over the source), by float32 ones; returns how many.

    MLX's quantized CPU kernels took ~2.4 s for the 600M encoder over 24 tokens, float32 ~50 ms; the
    decoder's layers, read at every token, keep their bytes (the C step runs them fast). Costs ~0.7 GB
    for the 600M model.
    """
    swapped = 0

    def swap(parent: nn.Module, name: str) -> None:
        nonlocal swapped
        q = getattr(parent, name)
        if not isinstance(q, nn.QuantizedLinear) or getattr(q, "mode", "affine") != "affine":
            return
        weight = mx.dequantize(q.weight, q.scales, q.biases, group_size=q.group_size, bits=q.bits)
        lin = CpuLinear(weight.shape[1], weight.shape[0], bias="bias" in q)
        lin.weight = weight.astype(mx.float32)
        if "bias" in q:
            lin.bias = q.bias.astype(mx.float32)
        setattr(parent, name, lin)
        swapped += 1

    for layer in model.model.encoder.layers:
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            swap(layer.self_attn, name)
        swap(layer, "fc1")
        swap(layer, "fc2")
    for layer in model.model.decoder.layers:
        swap(layer.encoder_attn, "k_proj")
        swap(layer.encoder_attn, "v_proj")
    mx.eval(model.parameters())
    return swapped
