"""The translator's decoding step on the CPU in one C call: every row of a batch or beam per call.

A decoding step reads every decoder weight once and computes little; as MLX ops on the CPU it is ~800
small ops around ~50 products, and their dispatch cost a quarter of the step (see
``kernels/nllb_decode.c``). :class:`DecodingStep` runs the same step over the same weight buffers (the
MLX arrays', no copy) in one C call, whose products go through the gemv shim (``blas.py``): float32
weights through its matrix-vector kernel, MLX's 8- and 4-bit affine quantized weights through the
step's own row kernel on the shim's threads.

``cpu/translator.py`` prepares it for a model on the CPU; the decoding loops (``decoding.py``) use it for
greedy search (:meth:`SentenceState.step`), and for batches and beam search with every row in one call
per token (:meth:`DecodingStep.step_rows`; :meth:`SentenceState.fork` copies a beam). Half precision
keeps MLX ops. ``MLX_STREAM_TTS_NATIVE_DECODE=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..models.nllb import LMHead, Model, QuantizedLMHead
from . import blas as _blas
from .build import cpu_flags, disabled, failures, load
from .nllb_graph import CpuEmbedding, CpuLinear, CpuLMHead, FusedAttention

@lru_cache(maxsize=1)
def nllb_decode() -> ctypes.CDLL | None:
    """kernels/nllb_decode.c loaded, or None (no compiler, or ``MLX_STREAM_TTS_NATIVE_DECODE=0``)."""
    if disabled("MLX_STREAM_TTS_NATIVE_DECODE"):
        failures["nllb_decode.c"] = "turned off by MLX_STREAM_TTS_NATIVE_DECODE=0"
        return None
    # Built for this CPU: its quantized-product kernels ran ~2x faster so than with only the AVX-512 flags
    # (GCC 12, AMD EPYC). The CPU's flags go into the cache key, so another CPU builds its own.
    tag = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
    lib = load("nllb_decode.c", ("-march=native", f"-DMST_CPU_{tag}"))
    if lib is None:
        return None
    lib.mst_nllb_step.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.mst_nllb_step.restype = ctypes.c_int
    lib.mst_nllb_work_size.argtypes = [ctypes.c_int] * 4
    lib.mst_nllb_work_size.restype = ctypes.c_long
    ip = ctypes.POINTER(ctypes.c_int)
    lib.mst_nllb_step_rows.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ip, ctypes.c_int, ctypes.c_int,
                                       ip, ctypes.c_void_p]
    lib.mst_nllb_step_rows.restype = ctypes.c_int
    lib.mst_nllb_batch_size.argtypes = [ctypes.c_int] * 4
    lib.mst_nllb_batch_size.restype = ctypes.c_long
    lib.mst_nllb_set_kernel.argtypes = [ctypes.c_int]
    lib.mst_nllb_set_kernel.restype = ctypes.c_int
    lib.mst_nllb_set_kernel(2)  # the fastest the CPU has
    return lib

_ACTIVATIONS = {"relu": 0, "gelu": 1, "gelu_new": 2, "gelu_pytorch_tanh": 2, "silu": 3, "swish": 3}
_p = ctypes.c_void_p


class _Linear(ctypes.Structure):
    # Mirror of linear_t: weight, scales and offsets (quantized only), bias (optional).
    _fields_ = [("w", _p), ("scales", _p), ("offsets", _p), ("bias", _p)]


class _Struct(ctypes.Structure):
    # Mirror of nllb_decoder in kernels/nllb_decode.c.
    _fields_ = [
        *[(n, ctypes.c_int) for n in ("d", "heads", "ffn", "layers", "act", "n_out", "vocab", "n_positions",
                                      "position_offset", "max_len", "src_len", "bits", "group_size")],
        ("embed_scale", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("sgemm", _p),
        ("parallel", _p),
        ("norms", ctypes.POINTER(_p)),
        ("linears", ctypes.POINTER(_Linear)),
        ("final_w", _p),
        ("final_b", _p),
        ("head", _Linear),
        ("embed", _Linear),
        *[(n, _p) for n in ("positions", "cross_k", "cross_v", "self_k", "self_v", "work", "logits")],
    ]


_FLOAT_FORMS = (nn.Linear, CpuLinear, LMHead, CpuLMHead, nn.Embedding, CpuEmbedding)

# A linear layer as the step reads it: (weight, scales, offsets, bias); the middle two None for float32.
Entry = tuple


def _entry(module: nn.Module, bits: int, group_size: int) -> Entry:
    """A float32 ``Linear`` / ``LMHead`` / ``Embedding`` or an affine quantized one, as an entry."""
    bias = module.get("bias") if isinstance(module, (nn.Linear, nn.QuantizedLinear)) else None
    if type(module) in _FLOAT_FORMS:
        return (module.weight, None, None, bias)
    if type(module) in (nn.QuantizedLinear, QuantizedLMHead, nn.QuantizedEmbedding):
        if (module.bits, module.group_size) != (bits, group_size) or getattr(module, "mode", "affine") != "affine":
            raise ValueError("quantized with other settings than the config's")
        return (module.weight, module.scales, module.biases, bias)
    raise ValueError(f"a {type(module).__name__} layer, which the C step does not run")


def _view(a: mx.array) -> np.ndarray:
    """The array's own buffer, C-contiguous, as NumPy (no copy): float32, or uint32 quantized rows."""
    if a.dtype not in (mx.float32, mx.uint32):
        raise ValueError(f"{a.dtype} weights (the C step reads float32 or 8/4-bit quantized ones)")
    v = np.asarray(a)
    if not v.flags.c_contiguous:
        raise ValueError("a weight that is not contiguous")
    return v


def _quantization(model: Model) -> tuple[int, int]:
    q = model.args.quantization
    return (int(q["bits"]), int(q["group_size"])) if q else (0, 0)


def _check(model: Model) -> None:
    """ValueError saying why the step cannot run ``model``'s configuration."""
    bits, group_size = _quantization(model)
    if bits not in (0, 4, 8) or (bits and group_size % 16):
        raise ValueError(f"{bits}-bit quantization in groups of {group_size} (the C step runs 8 or 4 bits "
                         "in groups of a multiple of 16)")
    if model.args.activation_function not in _ACTIVATIONS:
        raise ValueError(f"activation {model.args.activation_function!r}")


def unsupported(model: Model) -> str | None:
    """Why the step cannot run ``model`` (its quantization, activation or weight dtype), or None."""
    try:
        _check(model)
        for a in _flat(*_step_arrays(model)):
            if a is not None and mx.issubdtype(a.dtype, mx.floating) and a.dtype != mx.float32:
                raise ValueError(f"{a.dtype} weights (the C step reads float32 or 8/4-bit quantized ones)")
    except ValueError as err:
        return str(err)
    return None


def _step_arrays(model: Model) -> tuple[list[mx.array], list[Entry], dict]:
    """What a step reads: per decoder layer its 6 layer-norm arrays and 8 linear entries (in the order of
    kernels/nllb_decode.c's enums; q/k/v as one fused matrix where possible, k and v then empty), and the rest by
    name. ValueError for a layer the step cannot run (e.g. half precision)."""
    bits, group_size = _quantization(model)
    norms: list[mx.array] = []
    linears: list[Entry] = []
    empty = (None, None, None, None)
    for layer in model.model.decoder.layers:
        attn, cross = layer.self_attn, layer.encoder_attn
        for norm in (layer.self_attn_layer_norm, layer.encoder_attn_layer_norm, layer.final_layer_norm):
            norms += [norm.weight, norm.bias]
        fusing = isinstance(attn, FusedAttention)  # the CPU graph's attention (nllb_graph.py)
        fused = attn.fused() if fusing else None  # float32 q/k/v: one matrix, made once
        fused_q = attn.fused_quantized() if fusing and fused is None and bits else None  # the same quantized
        if fused is not None:
            qkv = [(fused[0], None, None, fused[1]), empty, empty]
        elif fused_q is not None and (attn.q_proj.bits, attn.q_proj.group_size) == (bits, group_size):
            qkv = [fused_q, empty, empty]
        else:
            qkv = [_entry(m, bits, group_size) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
        linears += qkv + [_entry(m, bits, group_size)
                          for m in (attn.out_proj, cross.q_proj, cross.out_proj, layer.fc1, layer.fc2)]
    shared = model.model.shared
    head = _entry(model.lm_head, bits, group_size) if model.args.has_lm_head else _entry(shared, bits, group_size)
    final = model.model.decoder.layer_norm
    rest = dict(final_w=final.weight, final_b=final.bias, head=head, embed=_entry(shared, bits, group_size),
                positions=model._positions)
    return norms, linears, rest


def _flat(norms, linears, rest) -> list:
    return [*norms, *(a for e in linears for a in e), *rest["head"], *rest["embed"], rest["final_w"],
            rest["final_b"], rest["positions"]]


class DecodingStep:
    """Decoding steps in C over ``model``'s weights.

    ``start(memory, max_len)`` takes a sentence's encoder output ``(1, S, D)``, computes the
    cross-attention keys/values once (with MLX) and returns the sentence's state, whose ``step(token,
    pos)`` feeds one token; :meth:`step_rows` feeds several sentences (or beams) at once. Build with
    :meth:`create`, which returns None where the model or machine does not allow it.
    """

    MAX_ROWS = 64  # kernels/nllb_decode.c's MAX_ROWS: sentences in one step_rows call

    def __init__(self, model: Model, lib: ctypes.CDLL):
        """The step over ``model``'s weights with the loaded kernels/nllb_decode.c; ValueError saying why
        where the model cannot have it (half precision, other quantization). Needs the gemv shim."""
        if _blas.gemv_shim is None:
            raise RuntimeError("the gemv shim is not loaded (cpu/blas.py)")
        _check(model)
        self.model, self._lib = model, lib
        args = model.args
        self._arrays = _step_arrays(model)
        norms, linears, rest = self._arrays
        views = {id(a): _view(a) for a in _flat(*self._arrays) if a is not None}
        address = lambda a: None if a is None else views[id(a)].ctypes.data  # noqa: E731
        entry = lambda e: _Linear(*(address(a) for a in e))  # noqa: E731
        norm_table = (_p * len(norms))(*(address(a) for a in norms))
        linear_table = (_Linear * len(linears))(*(entry(e) for e in linears))
        self._keep = (views, norm_table, linear_table)  # what the C side points into stays alive with us
        head, embed = rest["head"], rest["embed"]
        s = self._s = _Struct()
        s.d, s.heads, s.ffn, s.layers = args.d_model, args.decoder_attention_heads, args.decoder_ffn_dim, args.decoder_layers
        s.act = _ACTIVATIONS[args.activation_function]
        s.n_out, s.vocab = head[0].shape[0], embed[0].shape[0]
        s.n_positions = rest["positions"].shape[0]
        s.position_offset = args.pad_token_id + 1
        s.bits, s.group_size = _quantization(model)
        s.embed_scale, s.eps = model.embed_scale, 1e-5
        s.sgemm = ctypes.cast(_blas.gemv_shim.cblas_sgemm, _p).value
        s.parallel = ctypes.cast(_blas.gemv_shim.mst_gemv_shim_parallel, _p).value
        s.norms = ctypes.cast(norm_table, ctypes.POINTER(_p))
        s.linears = ctypes.cast(linear_table, ctypes.POINTER(_Linear))
        s.final_w, s.final_b, s.positions = address(rest["final_w"]), address(rest["final_b"]), address(rest["positions"])
        s.head, s.embed = entry(head), entry(embed)
        for e in [*linears, head, embed]:
            if e[0] is not None and (e[1] is None) != (views[id(e[0])].dtype == np.float32):
                raise ValueError("a float weight that is not float32")

    @classmethod
    def create(cls, model: Model) -> DecodingStep | None:
        """The step for ``model``, or None: not on the CPU, half precision, no gemv shim, no C compiler."""
        lib = nllb_decode()
        if lib is None or _blas.gemv_shim is None or mx.default_device() != mx.cpu:
            return None
        try:
            return cls(model, lib)
        except ValueError:  # a weight in another dtype or layout: MLX ops decode it
            return None

    def current(self) -> bool:
        """Whether the model still holds the weights this step points into (not reloaded since)."""
        try:
            now = _flat(*_step_arrays(self.model))
        except ValueError:
            return False
        before = _flat(*self._arrays)
        return len(now) == len(before) and all(a is b for a, b in zip(now, before))

    def step_rows(self, sentences: list[SentenceState], tokens: list[int], pos: int, logits: bool = True) -> list[int]:
        """One step of several sentences (or beams) of this step at the same position ``pos``: the
        float32 weights are read once for all of them. Returns each one's best output column."""
        n = len(sentences)
        if n != len(tokens) or not 1 <= n <= self.MAX_ROWS:
            raise ValueError(f"{n} sentences and {len(tokens)} tokens (1 to {self.MAX_ROWS} rows)")
        if any(s._owner is not self for s in sentences):
            raise ValueError("a sentence of another DecodingStep")
        if any(not 0 <= pos < s.max_len for s in sentences):
            raise ValueError(f"position {pos} outside a sentence's {min(s.max_len for s in sentences)} started")
        s0 = self._s
        size = self._lib.mst_nllb_batch_size(n, s0.d, s0.ffn, s0.n_out)
        batch = self.__dict__.get("_batch")
        if batch is None or batch.size < size:
            batch = self._batch = np.empty(size, np.float32)
        rows = (_p * n)(*(ctypes.addressof(s._s) for s in sentences))
        best = (ctypes.c_int * n)()
        if self._lib.mst_nllb_step_rows(rows, n, (ctypes.c_int * n)(*map(int, tokens)), int(pos), int(bool(logits)),
                                        best, batch.ctypes.data):
            raise ValueError(f"a token of {list(tokens)} or position {pos} outside the model's range")
        return list(best) if logits else [0] * n

    def start(self, memory: mx.array, max_len: int) -> SentenceState:
        """Begin a sentence: ``memory`` ``(1, S, D)`` from the encoder; up to ``max_len`` target positions."""
        if memory.ndim != 3 or memory.shape[0] != 1:
            raise ValueError(f"one sentence at a time, got memory of shape {memory.shape}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, not {max_len}")
        layers = self.model.model.decoder.layers
        keys = mx.stack([layer.encoder_attn.k_proj(memory)[0] for layer in layers])
        values = mx.stack([layer.encoder_attn.v_proj(memory)[0] for layer in layers])
        mx.eval(keys, values)
        return SentenceState(self, np.array(keys, np.float32), np.array(values, np.float32), max_len)


class SentenceState:
    """The state of one sentence's decoding (:meth:`DecodingStep.start`): caches, scores, work space."""

    def __init__(self, owner: DecodingStep, cross_k: np.ndarray, cross_v: np.ndarray, max_len: int):
        self._owner = owner  # keeps the weights' buffers alive
        s = self._s = _Struct.from_buffer_copy(owner._s)
        layers, src_len, d = cross_k.shape
        self._cross = (np.ascontiguousarray(cross_k), np.ascontiguousarray(cross_v))
        self._cache = np.zeros((2, layers, max_len, d), np.float32)  # self-attention keys, values
        self._work = np.zeros(owner._lib.mst_nllb_work_size(d, s.ffn, max_len, src_len), np.float32)
        self.logits = np.zeros(s.n_out, np.float32)
        s.src_len, s.max_len = src_len, max_len
        s.cross_k, s.cross_v = self._cross[0].ctypes.data, self._cross[1].ctypes.data
        s.self_k, s.self_v = self._cache[0].ctypes.data, self._cache[1].ctypes.data
        s.work, s.logits = self._work.ctypes.data, self.logits.ctypes.data
        self.max_len = max_len

    def fork(self) -> SentenceState:
        """A copy of this state with its own caches (the same source): another beam of the sentence."""
        other = SentenceState(self._owner, *self._cross, self.max_len)
        other._cache[...] = self._cache
        other.logits[...] = self.logits
        return other

    def caches(self, rows: int) -> np.ndarray:
        """A copy of the self-attention keys/values of the first ``rows`` positions."""
        return self._cache[:, :, :rows].copy()

    def set_caches(self, caches: np.ndarray) -> None:
        """Take keys/values from :meth:`caches` (of a beam of the same sentence) for its positions."""
        self._cache[:, :, : caches.shape[2]] = caches

    def step(self, token: int, pos: int, logits: bool = True) -> int:
        """Feed ``token`` at target position ``pos`` (0: the start token; positions in order); returns
        the output column with the highest score, its scores in ``logits`` (0 without ``logits``)."""
        if not 0 <= pos < self.max_len:
            raise ValueError(f"position {pos} outside the {self.max_len} started")
        best = self._owner._lib.mst_nllb_step(ctypes.byref(self._s), int(token), int(pos), int(bool(logits)))
        if best < 0:
            raise ValueError(f"token {token} or position {pos} outside the model's range")
        return best
