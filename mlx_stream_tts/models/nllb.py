"""NLLB-200 / M2M100 encoder-decoder in MLX.

Follows transformers' ``models/m2m_100/modeling_m2m_100.py`` (``M2M100ForConditionalGeneration``):
pre-norm layers, final layer norms on both stacks, scaled token embeddings shared by encoder,
decoder and output projection, sinusoidal positions offset by ``pad_token_id + 1``. Weights come from
``convert/nllb.py``, which renames and lays them out once; loading here is strict.

Four things differ from the reference on purpose, all for decoding speed:
- The output projection runs on the positions the caller asks for (the last one when decoding).
- An optional ``lm_head`` replaces the tied projection: an ``(n, d_model)`` matrix over a subset of the
  vocabulary (``output_token_ids`` maps its rows back to real token ids), or an untied full head.
- Products with few rows (decoding) go through :func:`linear`, which splits the weight into chunks or
  leaves one-row products to the sgemv shim (see there): the same weights and results, decoding steps
  2-3x faster on a Linux CPU with OpenBLAS.
- On the CPU, fewer and larger ops per step (MLX's CPU ops cost microseconds each, and a step had
  ~1700): self-attention's q/k/v run as one product (``Attention.project``), layer norms as one
  compiled function (``LayerNorm``), biases inside the product (``mx.addmm``). Same float32 math.

Greedy decoding of one sentence on the CPU goes further: ``nllb_native.py`` runs each step in one C call
over this model's weights.
"""

from __future__ import annotations

import inspect
import math
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..cpu import blas as _blas


# Layout version of converted folders (config["mlx_stream_tts"]["format"]). 2: the output head is stored
# (n, d_model) like the reference's lm_head.weight; 1 stored it transposed.
FORMAT_VERSION = 2


@dataclass
class ModelArgs:
    model_type: str = "m2m_100"
    vocab_size: int = 256206
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    activation_function: str = "relu"
    max_position_embeddings: int = 1024
    scale_embedding: bool = True
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2
    tie_word_embeddings: bool = True
    # Ours, not in the reference config: rows kept in the output projection (None: all of them).
    output_vocab_size: int | None = None
    # Ours: {"group_size": 64, "bits": 8} when the linear layers and embeddings are quantized.
    quantization: dict[str, int] | None = None

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> ModelArgs:
        names = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in params.items() if k in names})

    @property
    def has_lm_head(self) -> bool:
        return self.output_vocab_size is not None or not self.tie_word_embeddings


def _activation(name: str):
    table = {
        "relu": nn.relu,
        "gelu": nn.gelu,
        "gelu_new": nn.gelu_approx,
        "gelu_pytorch_tanh": nn.gelu_approx,
        "silu": nn.silu,
        "swish": nn.silu,
    }
    if name not in table:
        raise ValueError(f"unsupported activation_function {name!r} (supported: {', '.join(table)})")
    return table[name]


# OpenBLAS runs a product with few rows through its general sgemm, which first packs (copies) the whole
# weight: a decoding step's 1 x 1024 @ 1024 x 4096 reached 5-25 GB/s on this project's 2-core machine, and
# collapsed further when another process held a core (its two threads wait on each other). Products with
# M*N*K below ~1e6 take its unpacked small-matrix kernel instead, at ~30 GB/s from one thread. So for few
# rows the weight's rows are split into chunks that fit and all chunks run as one batched matmul over a
# free reshape of the same memory (MLX's CPU backend calls sgemm once per chunk). Measured with the
# cmeel-openblas 0.3.31 build only: other BLAS libraries (macOS, no OpenBLAS found) keep plain products.
# With the gemv shim loaded (_blas.py), one-row products reach OpenBLAS's sgemv directly and skip this.
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
    if not _CHUNKING or rows > _MAX_CHUNKED_ROWS or rows * n * k <= _SMALL_PRODUCT or mx.default_device() != mx.cpu:
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


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same quantization) computed with :func:`linear`."""

    split = False  # set by Model.set_parallel

    def __call__(self, x: mx.array) -> mx.array:
        return linear(x, self["weight"], self.get("bias"), self.split, owner=self)


@partial(mx.compile, shapeless=True)
def _layer_norm(x: mx.array, weight: mx.array, bias: mx.array, inv_dims: mx.array) -> mx.array:
    # 1 / dims comes in as an array: a shapeless trace would keep a mean's divisor from the first shape.
    centered = x - x.sum(axis=-1, keepdims=True) * inv_dims
    var = (centered * centered).sum(axis=-1, keepdims=True) * inv_dims
    return centered * mx.rsqrt(var + 1e-5) * weight + bias


_inv_dims: dict[int, mx.array] = {}


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (eps 1e-5, affine) that runs as one compiled graph on the CPU.

    MLX's CPU backend has no fused layer norm: ``mx.fast.layer_norm`` falls back to ~15 small ops, and
    a decoding step has 37 norms, ~1/3 of its ops. Compiled, the elementwise parts fuse around the two
    reductions. Same formula in float32; other devices and dtypes keep ``mx.fast.layer_norm``.
    """

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype == mx.float32 and self.eps == 1e-5 and "bias" in self and mx.default_device() == mx.cpu:
            dims = x.shape[-1]
            inv = _inv_dims.get(dims)
            if inv is None:
                inv = _inv_dims[dims] = mx.array(1.0 / dims, dtype=mx.float32)
            return _layer_norm(x, self.weight, self.bias, inv)
        return super().__call__(x)


def sinusoidal_positions(num_positions: int, dims: int, padding_idx: int) -> mx.array:
    """The reference's fixed position table: [sin | cos] halves, a zero row at ``padding_idx``."""
    half = dims // 2
    step = math.log(10000) / (half - 1)
    freqs = mx.exp(mx.arange(half, dtype=mx.float32) * -step)
    angles = mx.arange(num_positions, dtype=mx.float32)[:, None] * freqs[None, :]
    table = mx.concatenate([mx.sin(angles), mx.cos(angles)], axis=1)
    if dims % 2 == 1:
        table = mx.concatenate([table, mx.zeros((num_positions, 1))], axis=1)
    keep = (mx.arange(num_positions) != padding_idx)[:, None]
    return table * keep


class Attention(nn.Module):
    def __init__(self, dims: int, num_heads: int):
        super().__init__()
        if dims % num_heads:
            raise ValueError(f"d_model {dims} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dims // num_heads) ** -0.5
        self.q_proj = Linear(dims, dims)
        self.k_proj = Linear(dims, dims)
        self.v_proj = Linear(dims, dims)
        self.out_proj = Linear(dims, dims)

    def heads(self, x: mx.array) -> mx.array:
        B, L, _ = x.shape
        return x.reshape(B, L, self.num_heads, -1).transpose(0, 2, 1, 3)  # (B, H, L, Dh)

    def attend(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None) -> mx.array:
        B, _, L, _ = q.shape
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))  # (B, L, D)

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        return self.attend(*self.project(x), mask)

    def project(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Queries, keys and values of ``x`` in heads, ``(B, H, L, Dh)`` each.

        On the CPU the three float32 projections run as one product over a ``(3 * D, D)`` matrix: a
        third of the products (and their ops) for a decoding step. The fused matrix is made once, and the
        q/k/v weights become row views of it (no extra memory); weights loaded later undo the fusion.
        """
        fused = self._fused() if mx.default_device() == mx.cpu else None
        if fused is None:
            return self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
        q, k, v = mx.split(linear(x, *fused, owner=self), 3, axis=-1)
        return self.heads(q), self.heads(k), self.heads(v)

    def _fused(self) -> tuple[mx.array, mx.array] | None:
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if not all(type(p) is Linear and "bias" in p and p.weight.dtype == mx.float32 for p in projs):
            return None  # quantized or half precision: separate products
        return self._fuse("_fused_qkv", ("weight", "bias"))

    def fused_quantized(self) -> tuple[mx.array, mx.array, mx.array, mx.array] | None:
        """q/k/v as one quantized ``(3 * D, ...)`` matrix: ``(weight, scales, biases, bias)``, for the native
        decoding step (one product instead of three), made as :meth:`_fused` makes the float one. None
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


class EncoderLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dims = args.d_model
        self.self_attn = Attention(dims, args.encoder_attention_heads)
        self.self_attn_layer_norm = LayerNorm(dims)
        self.fc1 = Linear(dims, args.encoder_ffn_dim)
        self.fc2 = Linear(args.encoder_ffn_dim, dims)
        self.final_layer_norm = LayerNorm(dims)
        self.act = _activation(args.activation_function)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        x = x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))
        if x.dtype == mx.float16:
            # The reference clamps fp16 encoder activations to stay finite; so do we.
            bound = 65504.0 - 1000.0
            x = mx.clip(x, -bound, bound)
        return x


class LayerCache:
    """Self-attention keys/values so far, and the cross-attention keys/values of the source."""

    def __init__(self):
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.cross_keys: mx.array | None = None
        self.cross_values: mx.array | None = None

    @property
    def offset(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        if self.keys is None:
            self.keys, self.values = k, v
        else:
            self.keys = mx.concatenate([self.keys, k], axis=2)
            self.values = mx.concatenate([self.values, v], axis=2)
        return self.keys, self.values

    def reorder(self, index: mx.array) -> None:
        """Keep the rows ``index`` of the self-attention cache (beam search).

        Beams of one sentence share its source, so the cross-attention rows need no reordering as long
        as ``index`` only moves rows within a sentence's group of beams.
        """
        if self.keys is not None:
            self.keys, self.values = self.keys[index], self.values[index]


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dims = args.d_model
        self.self_attn = Attention(dims, args.decoder_attention_heads)
        self.self_attn_layer_norm = LayerNorm(dims)
        self.encoder_attn = Attention(dims, args.decoder_attention_heads)
        self.encoder_attn_layer_norm = LayerNorm(dims)
        self.fc1 = Linear(dims, args.decoder_ffn_dim)
        self.fc2 = Linear(args.decoder_ffn_dim, dims)
        self.final_layer_norm = LayerNorm(dims)
        self.act = _activation(args.activation_function)

    def __call__(
        self,
        x: mx.array,
        memory: mx.array,
        memory_mask: mx.array | None,
        self_mask: mx.array | None,
        cache: LayerCache,
    ) -> mx.array:
        attn = self.self_attn
        q, k, v = attn.project(self.self_attn_layer_norm(x))
        k, v = cache.append(k, v)
        x = x + attn.attend(q, k, v, self_mask)

        cross = self.encoder_attn
        if cache.cross_keys is None:
            cache.cross_keys = cross.heads(cross.k_proj(memory))
            cache.cross_values = cross.heads(cross.v_proj(memory))
        h = self.encoder_attn_layer_norm(x)
        x = x + cross.attend(cross.heads(cross.q_proj(h)), cache.cross_keys, cache.cross_values, memory_mask)

        return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layers = [EncoderLayer(args) for _ in range(args.encoder_layers)]
        self.layer_norm = LayerNorm(args.d_model)


class Decoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layers = [DecoderLayer(args) for _ in range(args.decoder_layers)]
        self.layer_norm = LayerNorm(args.d_model)


class M2M100Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.shared = nn.Embedding(args.vocab_size, args.d_model)
        self.encoder = Encoder(args)
        self.decoder = Decoder(args)


class LMHead(nn.Module):
    """Output projection without bias, rows ``(n, d_model)`` as the reference's ``lm_head.weight``; when
    restricted, ``output_token_ids`` gives the real token id of each row."""

    split = False

    def __init__(self, dims: int, num_outputs: int, restricted: bool):
        super().__init__()
        self.weight = mx.zeros((num_outputs, dims))
        if restricted:
            self.output_token_ids = mx.zeros((num_outputs,), dtype=mx.int32)

    def __call__(self, x: mx.array) -> mx.array:
        return linear(x, self.weight, split=self.split, owner=self)

    def to_quantized(self, group_size: int = 64, bits: int = 8, mode: str = "affine", **_) -> QuantizedLMHead:
        q = QuantizedLMHead(self.weight.shape[1], self.weight.shape[0], "output_token_ids" in self, group_size, bits)
        q.weight, q.scales, q.biases = mx.quantize(self.weight, group_size, bits)
        if "output_token_ids" in self:
            q.output_token_ids = self.output_token_ids
        return q


class QuantizedLMHead(nn.Module):
    """Quantized output projection: rows ``(n, d_model)`` as ``mx.quantized_matmul`` wants them."""

    def __init__(self, dims: int, num_outputs: int, restricted: bool, group_size: int, bits: int):
        super().__init__()
        self.group_size, self.bits = group_size, bits
        self.weight, self.scales, self.biases = mx.quantize(mx.zeros((num_outputs, dims)), group_size, bits)
        if restricted:
            self.output_token_ids = mx.zeros((num_outputs,), dtype=mx.int32)

    def __call__(self, x: mx.array) -> mx.array:
        return mx.quantized_matmul(
            x, self.weight, self.scales, self.biases, transpose=True, group_size=self.group_size, bits=self.bits
        )


class Model(nn.Module):
    """M2M100ForConditionalGeneration: ``encode`` once per batch of sentences, ``decode`` step by step."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model = M2M100Model(args)
        if args.has_lm_head:
            n = args.output_vocab_size or args.vocab_size
            self.lm_head = LMHead(args.d_model, n, restricted=args.output_vocab_size is not None)
        self.embed_scale = math.sqrt(args.d_model) if args.scale_embedding else 1.0
        # Rows up to max_position_embeddings + offset, as in the reference; not a weight.
        self._positions = sinusoidal_positions(
            args.max_position_embeddings + args.pad_token_id + 1, args.d_model, args.pad_token_id
        )
        mx.eval(self._positions)  # a lazy graph would bind it to the thread that built the model
        self._split_head = False

    def set_parallel(self, on: bool) -> None:
        """Run the large products of decoding steps on two CPU streams (see :func:`linear`).

        Faster when a second core is free (the decoder then uses both), slower when another busy
        process (e.g. the voice) holds it. Off by default.
        """
        for _, module in self.named_modules():
            if isinstance(module, (Linear, LMHead)):
                module.split = on
        self._split_head = on

    @property
    def output_token_ids(self) -> mx.array | None:
        """Real token id of each output column when the vocabulary is restricted, else None."""
        head = getattr(self, "lm_head", None)
        return head.output_token_ids if head is not None and "output_token_ids" in head else None

    def _check_length(self, length: int) -> None:
        if length > self.args.max_position_embeddings:
            raise ValueError(
                f"sequence of {length} tokens is longer than max_position_embeddings="
                f"{self.args.max_position_embeddings}"
            )

    def _embed(self, ids: mx.array, positions: mx.array) -> mx.array:
        x = self.model.shared(ids) * self.embed_scale
        return x + self._positions[positions].astype(x.dtype)

    def encode(self, ids: mx.array, mask: mx.array | None = None) -> mx.array:
        """Encode source ids ``(B, S)``; ``mask`` ``(B, S)`` is True on real tokens. Returns ``(B, S, D)``."""
        self._check_length(ids.shape[1])
        pad = self.args.pad_token_id
        real = ids != pad
        # Position of each real token counts the real tokens so far; padding keeps the padding row.
        positions = mx.cumsum(real.astype(mx.int32), axis=1) * real + pad
        x = self._embed(ids, positions)
        attn_mask = None if mask is None else mask[:, None, None, :]
        for layer in self.model.encoder.layers:
            x = layer(x, attn_mask)
        return self.model.encoder.layer_norm(x)

    def make_cache(self) -> list[LayerCache]:
        return [LayerCache() for _ in self.model.decoder.layers]

    def decode(
        self,
        ids: mx.array,
        memory: mx.array,
        cache: list[LayerCache],
        memory_mask: mx.array | None = None,
    ) -> mx.array:
        """Run the decoder on new target ids ``(B, T)`` after what ``cache`` holds. Returns ``(B, T, D)``.

        The cross-attention keys/values of ``memory`` are computed on the first call and kept in
        ``cache``. The hidden states go through :meth:`logits` for the positions the caller needs.
        """
        B, T = ids.shape
        offset = cache[0].offset
        self._check_length(offset + T)
        pad = self.args.pad_token_id
        # Generation in the reference feeds one token at a time with a cache, so a token's position is
        # its step (padding fed after a sentence ended keeps the padding row).
        steps = mx.arange(offset + 1, offset + T + 1, dtype=mx.int32)[None, :]
        positions = mx.where(ids != pad, steps + pad, pad)
        x = self._embed(ids, positions)
        self_mask = None
        if T > 1:
            keys = mx.arange(offset + T)[None, :]
            self_mask = (keys <= (mx.arange(T)[:, None] + offset))[None, None]  # (1, 1, T, offset+T)
        cross_mask = None if memory_mask is None else memory_mask[:, None, None, :]
        for layer, layer_cache in zip(self.model.decoder.layers, cache):
            x = layer(x, memory, cross_mask, self_mask, layer_cache)
        return self.model.decoder.layer_norm(x)

    def dequantize_encoder(self) -> int:
        """Replace the encoder's quantized linear layers, and the cross-attention key/value projections
        (run once per sentence over the source), by float32 ones; returns how many.

        MLX's quantized CPU kernels took ~2.4 s for the 600M encoder over 24 tokens, float32 ~50 ms; the
        decoder's layers, read at every token, keep their bytes (the native step runs them fast). Costs
        ~0.7 GB for the 600M model.
        """
        swapped = 0

        def swap(parent: nn.Module, name: str) -> None:
            nonlocal swapped
            q = getattr(parent, name)
            if not isinstance(q, nn.QuantizedLinear) or getattr(q, "mode", "affine") != "affine":
                return
            weight = mx.dequantize(q.weight, q.scales, q.biases, group_size=q.group_size, bits=q.bits)
            lin = Linear(weight.shape[1], weight.shape[0], bias="bias" in q)
            lin.weight = weight.astype(mx.float32)
            if "bias" in q:
                lin.bias = q.bias.astype(mx.float32)
            setattr(parent, name, lin)
            swapped += 1

        for layer in self.model.encoder.layers:
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                swap(layer.self_attn, name)
            swap(layer, "fc1")
            swap(layer, "fc2")
        for layer in self.model.decoder.layers:
            swap(layer.encoder_attn, "k_proj")
            swap(layer.encoder_attn, "v_proj")
        mx.eval(self.parameters())
        return swapped

    def logits(self, hidden: mx.array) -> mx.array:
        """Output scores for hidden states ``(..., D)``: over the kept rows when restricted."""
        if self.args.has_lm_head:
            return self.lm_head(hidden)
        shared = self.model.shared
        if isinstance(shared, nn.Embedding):
            return linear(hidden, shared.weight, split=self._split_head)
        return shared.as_linear(hidden)

    def __call__(self, ids: mx.array, mask: mx.array | None, decoder_ids: mx.array) -> mx.array:
        """Full forward (tests): logits of every decoder position, ``(B, T, n)``."""
        memory = self.encode(ids, mask)
        return self.logits(self.decode(decoder_ids, memory, self.make_cache(), mask))


def quantize_model(model: Model, group_size: int, bits: int) -> None:
    """Quantize linear layers, the embedding and the output head in place."""

    def predicate(path: str, module: nn.Module) -> bool:
        if not hasattr(module, "to_quantized"):
            return False
        weight = module.weight
        return weight.shape[-1] % group_size == 0

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)
