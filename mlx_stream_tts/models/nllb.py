"""NLLB-200 / M2M100 encoder-decoder in MLX: the reference model, the one every device runs.

Follows transformers' ``models/m2m_100/modeling_m2m_100.py`` (``M2M100ForConditionalGeneration``):
pre-norm layers, final layer norms on both stacks, scaled token embeddings shared by encoder,
decoder and output projection, sinusoidal positions offset by ``pad_token_id + 1``. Weights come from
``convert/nllb.py``, which renames and lays them out once; loading is strict.

Written as mlx-lm writes its models: plain ``nn.Linear`` / ``nn.LayerNorm`` layers,
``mx.fast.scaled_dot_product_attention``, a key/value cache written in place (``cache.py``). Nothing
here depends on the device: a CPU gets its speed from ``mlx_stream_tts/cpu/``, which swaps some of these
modules for equivalent ones after loading and is tested against this file.

Two things differ from the reference on purpose, both for decoding speed:
- The output projection runs on the positions the caller asks for (the last one when decoding).
- An optional ``lm_head`` replaces the tied projection: an ``(n, d_model)`` matrix over a subset of the
  vocabulary (``output_token_ids`` maps its rows back to real token ids), or an untied full head.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .cache import KVCache

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


ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "gelu_new": nn.gelu_approx,
    "gelu_pytorch_tanh": nn.gelu_approx,
    "silu": nn.silu,
    "swish": nn.silu,
}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation_function {name!r} (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


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
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.out_proj = nn.Linear(dims, dims)

    def heads(self, x: mx.array) -> mx.array:
        B, L, _ = x.shape
        return x.reshape(B, L, self.num_heads, -1).transpose(0, 2, 1, 3)  # (B, H, L, Dh)

    def qkv(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Queries, keys and values of ``x`` (self-attention), ``(B, H, L, Dh)`` each."""
        return self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))

    def keys_values(self, memory: mx.array) -> tuple[mx.array, mx.array]:
        """Cross-attention keys and values of the encoder output, ``(B, H, S, Dh)``: once per sentence."""
        return self.heads(self.k_proj(memory)), self.heads(self.v_proj(memory))

    def __call__(
        self,
        x: mx.array,
        mask: mx.array | str | None = None,
        cache: KVCache | None = None,
        keys_values: tuple[mx.array, mx.array] | None = None,
    ) -> mx.array:
        """Self-attention over ``x`` (and ``cache``), or cross-attention to ``keys_values``."""
        if keys_values is None:
            q, k, v = self.qkv(x)
            if cache is not None:
                k, v = cache.update_and_fetch(k, v)
        else:
            q, (k, v) = self.heads(self.q_proj(x)), keys_values
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        B, _, L, _ = q.shape
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))  # (B, L, D)


class EncoderLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dims = args.d_model
        self.self_attn = Attention(dims, args.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dims)
        self.fc1 = nn.Linear(dims, args.encoder_ffn_dim)
        self.fc2 = nn.Linear(args.encoder_ffn_dim, dims)
        self.final_layer_norm = nn.LayerNorm(dims)
        self.act = _activation(args.activation_function)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        x = x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))
        if x.dtype == mx.float16:
            # The reference clamps fp16 encoder activations to stay finite; so do we.
            bound = 65504.0 - 1000.0
            x = mx.clip(x, -bound, bound)
        return x


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dims = args.d_model
        self.self_attn = Attention(dims, args.decoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dims)
        self.encoder_attn = Attention(dims, args.decoder_attention_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(dims)
        self.fc1 = nn.Linear(dims, args.decoder_ffn_dim)
        self.fc2 = nn.Linear(args.decoder_ffn_dim, dims)
        self.final_layer_norm = nn.LayerNorm(dims)
        self.act = _activation(args.activation_function)

    def __call__(
        self,
        x: mx.array,
        cross: tuple[mx.array, mx.array],
        memory_mask: mx.array | None,
        self_mask: str | None,
        cache: KVCache,
    ) -> mx.array:
        x = x + self.self_attn(self.self_attn_layer_norm(x), self_mask, cache)
        x = x + self.encoder_attn(self.encoder_attn_layer_norm(x), memory_mask, keys_values=cross)
        return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))


class DecoderCache:
    """What decoding keeps between steps: each decoder layer's self-attention :class:`KVCache`, and the
    cross-attention keys/values of the source (computed by the first :meth:`Model.decode` call)."""

    def __init__(self, layers: int):
        self.layers = [KVCache() for _ in range(layers)]
        self.cross: list[tuple[mx.array, mx.array]] | None = None

    @property
    def offset(self) -> int:
        """Target positions decoded so far."""
        return self.layers[0].offset

    def reorder(self, rows: mx.array) -> None:
        """Row ``i`` continues row ``rows[i]`` (beam search). The cross-attention rows stay: beams of one
        sentence share its source, and ``rows`` only moves rows within a sentence's group of beams."""
        for layer in self.layers:
            layer.reorder(rows)


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layers = [EncoderLayer(args) for _ in range(args.encoder_layers)]
        self.layer_norm = nn.LayerNorm(args.d_model)


class Decoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layers = [DecoderLayer(args) for _ in range(args.decoder_layers)]
        self.layer_norm = nn.LayerNorm(args.d_model)


class M2M100Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.shared = nn.Embedding(args.vocab_size, args.d_model)
        self.encoder = Encoder(args)
        self.decoder = Decoder(args)


class LMHead(nn.Module):
    """Output projection without bias, rows ``(n, d_model)`` as the reference's ``lm_head.weight``; when
    restricted, ``output_token_ids`` gives the real token id of each row."""

    def __init__(self, dims: int, num_outputs: int, restricted: bool):
        super().__init__()
        self.weight = mx.zeros((num_outputs, dims))
        if restricted:
            self.output_token_ids = mx.zeros((num_outputs,), dtype=mx.int32)

    def __call__(self, x: mx.array) -> mx.array:
        return x @ self.weight.T

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
        # Rows up to max_position_embeddings + offset, as in the reference; not a weight (the leading
        # underscore keeps it out of the parameters).
        self._positions = sinusoidal_positions(
            args.max_position_embeddings + args.pad_token_id + 1, args.d_model, args.pad_token_id
        )
        mx.eval(self._positions)  # a lazy graph would bind it to the thread that built the model

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

    def make_cache(self) -> DecoderCache:
        return DecoderCache(len(self.model.decoder.layers))

    def decode(
        self,
        ids: mx.array,
        memory: mx.array,
        cache: DecoderCache,
        memory_mask: mx.array | None = None,
    ) -> mx.array:
        """Run the decoder on new target ids ``(B, T)`` after what ``cache`` holds. Returns ``(B, T, D)``.

        The cross-attention keys/values of ``memory`` ``(B, S, D)`` are computed on the first call and
        kept in ``cache``. The hidden states go through :meth:`logits` for the positions the caller needs.
        """
        B, T = ids.shape
        offset = cache.offset
        self._check_length(offset + T)
        pad = self.args.pad_token_id
        # Generation in the reference feeds one token at a time with a cache, so a token's position is
        # its step (padding fed after a sentence ended keeps the padding row).
        steps = mx.arange(offset + 1, offset + T + 1, dtype=mx.int32)[None, :]
        positions = mx.where(ids != pad, steps + pad, pad)
        x = self._embed(ids, positions)
        layers = self.model.decoder.layers
        if cache.cross is None:
            cache.cross = [layer.encoder_attn.keys_values(memory) for layer in layers]
        self_mask = "causal" if T > 1 else None
        cross_mask = None if memory_mask is None else memory_mask[:, None, None, :]
        for layer, layer_cache, cross in zip(layers, cache.layers, cache.cross):
            x = layer(x, cross, cross_mask, self_mask, layer_cache)
        return self.model.decoder.layer_norm(x)

    def logits(self, hidden: mx.array) -> mx.array:
        """Output scores for hidden states ``(..., D)``: over the kept rows when restricted."""
        if self.args.has_lm_head:
            return self.lm_head(hidden)
        return self.model.shared.as_linear(hidden)

    def __call__(self, ids: mx.array, mask: mx.array | None, decoder_ids: mx.array) -> mx.array:
        """Full forward (tests): logits of every decoder position, ``(B, T, n)``."""
        memory = self.encode(ids, mask)
        return self.logits(self.decode(decoder_ids, memory, self.make_cache(), mask))


def quantize_model(model: Model, group_size: int, bits: int) -> None:
    """Quantize linear layers, the embedding and the output head in place (affine)."""

    def predicate(path: str, module: nn.Module) -> bool:
        return hasattr(module, "to_quantized") and module.weight.shape[-1] % group_size == 0

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)
