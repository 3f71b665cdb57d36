"""Greedy decoding steps of :mod:`.nllb` for one sentence on the CPU, one native call per token.

A decoding step reads every decoder weight once and computes little; as MLX ops on the CPU it is ~800
small ops around ~50 products, and their dispatch cost a quarter of the step (see
``data/nllb_decode.c``). :class:`NativeDecoder` runs the same step over the same weight buffers (the
MLX arrays', no copy) in one C call, whose products go through the gemv shim (``_blas.py``).

Used by ``Translator`` for one sentence at a time with greedy search when the model is float32 on
the CPU and the shim is loaded; batches, beam search, other dtypes and devices keep the MLX model.
``MLX_STREAM_TTS_NATIVE_DECODE=0`` turns it off.
"""

from __future__ import annotations

import ctypes

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .. import _blas, _native
from .nllb import Linear, LMHead, Model

_ACTIVATIONS = {"relu": 0, "gelu": 1, "gelu_new": 2, "gelu_pytorch_tanh": 2, "silu": 3, "swish": 3}
_fp = ctypes.POINTER(ctypes.c_float)


class _Struct(ctypes.Structure):
    # Mirror of nllb_decoder in data/nllb_decode.c.
    _fields_ = [
        *[(n, ctypes.c_int) for n in ("d", "heads", "ffn", "layers", "act", "n_out", "vocab", "n_positions",
                                      "position_offset", "max_len", "src_len")],
        ("embed_scale", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("sgemm", ctypes.c_void_p),
        ("w", ctypes.POINTER(ctypes.c_void_p)),
        *[(n, ctypes.c_void_p) for n in ("final_w", "final_b", "head", "embed", "positions", "cross_k", "cross_v",
                                         "self_k", "self_v", "work", "logits")],
    ]


def _view(a: mx.array) -> np.ndarray:
    """The array's own float32 buffer, C-contiguous, as NumPy (no copy); ValueError otherwise."""
    v = np.asarray(a)
    if v.dtype != np.float32 or not v.flags.c_contiguous:
        raise ValueError("not a contiguous float32 array")
    return v


def _usable(model: Model) -> bool:
    args = model.args
    if mx.default_device() != mx.cpu or _blas.gemv_shim is None or args.quantization:
        return False
    if args.activation_function not in _ACTIVATIONS or type(model.model.shared) is not nn.Embedding:
        return False
    return not args.has_lm_head or type(model.lm_head) is LMHead


def _step_arrays(model: Model) -> tuple[list[mx.array], dict[str, mx.array]]:
    """The arrays a step reads: 18 per decoder layer in data/nllb_decode.c's order, and
    the rest by name. ValueError when a layer's q/k/v cannot be fused (not float32 Linear layers)."""
    layers: list[mx.array] = []
    for layer in model.model.decoder.layers:
        attn, cross = layer.self_attn, layer.encoder_attn
        fused = attn._fused()  # made once, then the same arrays
        if fused is None:
            raise ValueError("self-attention projections not fusable")
        linears = (attn.out_proj, cross.q_proj, cross.out_proj, layer.fc1, layer.fc2)
        if any(type(lin) is not Linear or "bias" not in lin for lin in linears):
            raise ValueError("a quantized or bias-free projection")
        norms = (layer.self_attn_layer_norm, layer.encoder_attn_layer_norm, layer.final_layer_norm)
        (n1, n2, n3), (o, cq, co, f1, f2) = [(n.weight, n.bias) for n in norms], [(lin.weight, lin.bias) for lin in linears]
        layers += [*n1, *fused, *o, *n2, *cq, *co, *n3, *f1, *f2]
    head = model.lm_head.weight if model.args.has_lm_head else model.model.shared.weight
    final = model.model.decoder.layer_norm
    rest = dict(final_w=final.weight, final_b=final.bias, head=head, embed=model.model.shared.weight,
                positions=model._positions)
    return layers, rest


class NativeDecoder:
    """One sentence's greedy decoding steps in C over ``model``'s weights.

    ``start(memory, max_len)`` takes the encoder output ``(1, S, D)``, computes the cross-attention
    keys/values once (with MLX) and returns the sentence's state, whose ``step(token, pos)`` feeds one
    token. Build with :meth:`create`, which returns None where the model or machine does not allow it.
    """

    def __init__(self, model: Model, lib: ctypes.CDLL):
        self.model, self._lib = model, lib
        args = model.args
        self._arrays = _step_arrays(model)
        layers, rest = self._arrays
        self._views = {name: _view(a) for name, a in rest.items()}
        layer_views = [_view(a) for a in layers]
        pointers = (ctypes.c_void_p * len(layer_views))(*[v.ctypes.data for v in layer_views])
        self._keep = (layer_views, pointers)  # what the C side points into stays alive with us
        head = self._views["head"]
        s = self._s = _Struct()
        s.d, s.heads, s.ffn, s.layers = args.d_model, args.decoder_attention_heads, args.decoder_ffn_dim, args.decoder_layers
        s.act = _ACTIVATIONS[args.activation_function]
        s.n_out = head.shape[0]
        s.vocab = self._views["embed"].shape[0]
        s.n_positions = self._views["positions"].shape[0]
        s.position_offset = args.pad_token_id + 1
        s.embed_scale, s.eps = model.embed_scale, 1e-5
        s.sgemm = ctypes.cast(_blas.gemv_shim.cblas_sgemm, ctypes.c_void_p).value
        s.w = ctypes.cast(pointers, ctypes.POINTER(ctypes.c_void_p))
        for name in ("final_w", "final_b", "head", "embed", "positions"):
            setattr(s, name, self._views[name].ctypes.data)

    @classmethod
    def create(cls, model: Model) -> NativeDecoder | None:
        """A decoder for ``model``, or None: not on the CPU, not float32, no gemv shim, no C compiler."""
        if not _usable(model):
            return None
        lib = _native.nllb_decode()
        if lib is None:
            return None
        try:
            return cls(model, lib)
        except ValueError:  # a weight in another dtype or layout: the MLX path handles it
            return None

    def current(self) -> bool:
        """Whether the model still holds the weights this decoder points into (not reloaded since)."""
        try:
            layers, rest = _step_arrays(self.model)
        except ValueError:
            return False
        old_layers, old_rest = self._arrays
        return all(a is b for a, b in zip(layers, old_layers)) and all(rest[k] is old_rest[k] for k in rest)

    def start(self, memory: mx.array, max_len: int) -> NativeSentence:
        """Begin a sentence: ``memory`` ``(1, S, D)`` from the encoder; up to ``max_len`` target positions."""
        if memory.ndim != 3 or memory.shape[0] != 1:
            raise ValueError(f"one sentence at a time, got memory of shape {memory.shape}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, not {max_len}")
        layers = self.model.model.decoder.layers
        keys = mx.stack([layer.encoder_attn.k_proj(memory)[0] for layer in layers])
        values = mx.stack([layer.encoder_attn.v_proj(memory)[0] for layer in layers])
        mx.eval(keys, values)
        return NativeSentence(self, np.array(keys, np.float32), np.array(values, np.float32), max_len)


class NativeSentence:
    """The state of one sentence's decoding (:meth:`NativeDecoder.start`): caches, scores, work space."""

    def __init__(self, decoder: NativeDecoder, cross_k: np.ndarray, cross_v: np.ndarray, max_len: int):
        self._decoder = decoder  # keeps the weights' buffers alive
        s = self._s = _Struct.from_buffer_copy(decoder._s)
        layers, src_len, d = cross_k.shape
        self._cross = (np.ascontiguousarray(cross_k), np.ascontiguousarray(cross_v))
        self._cache = np.zeros((2, layers, max_len, d), np.float32)  # self-attention keys, values
        self._work = np.zeros(decoder._lib.mst_nllb_work_size(d, s.ffn, max_len, src_len), np.float32)
        self.logits = np.zeros(s.n_out, np.float32)
        s.src_len, s.max_len = src_len, max_len
        s.cross_k, s.cross_v = self._cross[0].ctypes.data, self._cross[1].ctypes.data
        s.self_k, s.self_v = self._cache[0].ctypes.data, self._cache[1].ctypes.data
        s.work, s.logits = self._work.ctypes.data, self.logits.ctypes.data
        self.max_len = max_len

    def step(self, token: int, pos: int, logits: bool = True) -> int:
        """Feed ``token`` at target position ``pos`` (0: the start token; positions in order); returns
        the output column with the highest score, its scores in ``logits`` (0 without ``logits``)."""
        if not 0 <= pos < self.max_len:
            raise ValueError(f"position {pos} outside the {self.max_len} started")
        best = self._decoder._lib.mst_nllb_step(ctypes.byref(self._s), int(token), int(pos), int(bool(logits)))
        if best < 0:
            raise ValueError(f"token {token} or position {pos} outside the model's range")
        return best
