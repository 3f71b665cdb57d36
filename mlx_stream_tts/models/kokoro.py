"""Kokoro-82M (StyleTTS 2 inference graph) in MLX: phoneme ids + style vector -> 24 kHz audio.

Follows hexgrad/kokoro ``kokoro/model.py`` (``KModel.forward_with_tokens``) and ``kokoro/modules.py``
(PL-BERT ALBERT, ``TextEncoder``, ``ProsodyPredictor``, ``DurationEncoder``); the decoder is in
``istftnet.py``, the DSP in ``kokoro_dsp.py``. Arrays are channels-last ``(B, L, C)``. Batch size is 1
where durations are involved (each utterance has its own length), as in the reference.

Pure MLX, the same on every device: the CPU accelerator (``mlx_stream_tts/cpu/voice.py``) swaps some
modules of a loaded model for faster CPU versions; nothing here knows about it.

The folder format (written by ``convert/kokoro.py``): ``config.json``, ``model.safetensors``,
``voices.safetensors`` and ``vocab.json``. Weight norm is folded; each bidirectional LSTM is stored as
``weight_ih`` ``(8H, in)`` (forward gates then backward gates, order i, f, g, o), ``weight_hh``
``(2, H, 4H)`` and one summed ``bias`` ``(8H,)``.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .istftnet import AdainResBlk1d, Decoder, leaky_relu
from .kokoro_dsp import gelu_approx

FORMAT_VERSION = 1
RECONVERT_HINT = "re-run `mlx-stream-tts convert kokoro --out {path} --overwrite`"


def _default_plbert() -> dict:
    return {
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 2048,
        "max_position_embeddings": 512,
        "num_hidden_layers": 12,
        "embedding_size": 128,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
    }


def _default_istftnet() -> dict:
    return {
        "upsample_kernel_sizes": [20, 12],
        "upsample_rates": [10, 6],
        "gen_istft_hop_size": 5,
        "gen_istft_n_fft": 20,
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "resblock_kernel_sizes": [3, 7, 11],
        "upsample_initial_channel": 512,
    }


@dataclass
class ModelArgs:
    """Kokoro config (the reference ``config.json`` names; defaults are Kokoro-82M v1.0)."""

    n_token: int = 178
    hidden_dim: int = 512
    style_dim: int = 128
    n_layer: int = 3
    max_dur: int = 50
    text_encoder_kernel_size: int = 5
    n_mels: int = 80
    sample_rate: int = 24000
    plbert: dict = field(default_factory=_default_plbert)
    istftnet: dict = field(default_factory=_default_istftnet)
    # The reference hard-codes these decoder widths; fields here so that tests can shrink the model.
    decoder_hidden: int = 1024
    asr_res_dim: int = 64

    @classmethod
    def from_dict(cls, config: dict) -> ModelArgs:
        names = inspect.signature(cls).parameters
        args = cls(**{k: v for k, v in config.items() if k in names})
        args.plbert = {**_default_plbert(), **args.plbert}
        args.istftnet = {k: v for k, v in {**_default_istftnet(), **args.istftnet}.items()
                         if k in _default_istftnet()}
        return args


# ---------------------------------------------------------------------------------------------
# Building blocks


class LayerNorm(nn.Module):
    """Channel layer norm with the reference's ``gamma`` / ``beta`` names."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = mx.ones((channels,))
        self.beta = mx.zeros((channels,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.layer_norm(x, self.gamma, self.beta, self.eps)


class AdaLayerNorm(nn.Module):
    def __init__(self, style_dim: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.fc = nn.Linear(style_dim, 2 * channels)
        self.eps = eps

    def __call__(self, x: mx.array, s: mx.array) -> mx.array:
        gamma, beta = mx.split(self.fc(s)[:, None, :], 2, axis=-1)
        return (1 + gamma) * mx.fast.layer_norm(x, None, None, self.eps) + beta


@mx.compile
def _lstm_step(x_t: mx.array, h: mx.array, c: mx.array, w_hh: mx.array) -> tuple[mx.array, mx.array]:
    gates = x_t + h @ w_hh  # (2, B, 4H)
    i, f, g, o = mx.split(gates, 4, axis=-1)
    c = mx.sigmoid(f) * c + mx.sigmoid(i) * mx.tanh(g)
    return mx.sigmoid(o) * mx.tanh(c), c


class BiLSTM(nn.Module):
    """One-layer bidirectional LSTM (``nn.LSTM(bidirectional=True, batch_first=True)``).

    The input projection of both directions for all steps is one matmul; the recurrence runs both
    directions together, one compiled step per time step.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        scale = 1.0 / math.sqrt(hidden_size)
        self.hidden_size = hidden_size
        self.weight_ih = mx.random.uniform(-scale, scale, (8 * hidden_size, input_size))
        self.weight_hh = mx.random.uniform(-scale, scale, (2, hidden_size, 4 * hidden_size))
        self.bias = mx.random.uniform(-scale, scale, (8 * hidden_size,))

    def __call__(self, x: mx.array) -> mx.array:
        """x ``(B, T, in)`` -> ``(B, T, 2H)`` (forward then backward features)."""
        b, t, _ = x.shape
        hs = self.hidden_size
        xp = mx.addmm(self.bias, x, self.weight_ih.T).reshape(b, t, 2, 4 * hs)
        # Step k feeds position k to the forward direction and T-1-k to the backward one.
        xin = mx.stack([xp[:, :, 0], xp[:, ::-1, 1]], axis=0)  # (2, B, T, 4H)
        h = mx.zeros((2, b, hs), dtype=xp.dtype)
        c = h
        outs = []
        for k in range(t):
            h, c = _lstm_step(xin[:, :, k], h, c, self.weight_hh)
            outs.append(h)
        out = mx.stack(outs, axis=2)  # (2, B, T, H)
        return mx.concatenate([out[0], out[1][:, ::-1]], axis=-1)


# ---------------------------------------------------------------------------------------------
# PL-BERT (ALBERT, transformers' AlbertModel naming)


class AlbertEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, cfg: dict):
        super().__init__()
        e = cfg["embedding_size"]
        self.word_embeddings = nn.Embedding(vocab_size, e)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], e)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], e)
        self.LayerNorm = nn.LayerNorm(e, eps=cfg["layer_norm_eps"])

    def __call__(self, ids: mx.array) -> mx.array:
        pos = mx.arange(ids.shape[1])
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class AlbertAttention(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["hidden_size"]
        self.num_heads = cfg["num_attention_heads"]
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.dense = nn.Linear(d, d)
        self.LayerNorm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        b, t, d = x.shape
        nh = self.num_heads

        def heads(y: mx.array) -> mx.array:
            return y.reshape(b, t, nh, d // nh).transpose(0, 2, 1, 3)  # (B, nh, T, hd)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        ctx = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(d // nh), mask=mask)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, t, d)
        return self.LayerNorm(x + self.dense(ctx))


class AlbertLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.attention = AlbertAttention(cfg)
        self.ffn = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        self.ffn_output = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"])
        self.full_layer_layer_norm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        x = self.attention(x, mask)
        return self.full_layer_layer_norm(x + self.ffn_output(gelu_approx(self.ffn(x))))


class AlbertLayerGroup(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.albert_layers = [AlbertLayer(cfg)]


class AlbertEncoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.num_hidden_layers = cfg["num_hidden_layers"]
        self.embedding_hidden_mapping_in = nn.Linear(cfg["embedding_size"], cfg["hidden_size"])
        self.albert_layer_groups = [AlbertLayerGroup(cfg)]

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        x = self.embedding_hidden_mapping_in(x)
        layer = self.albert_layer_groups[0].albert_layers[0]
        for _ in range(self.num_hidden_layers):  # ALBERT shares one layer across depth
            x = layer(x, mask)
        return x


class CustomAlbert(nn.Module):
    def __init__(self, vocab_size: int, cfg: dict):
        super().__init__()
        self.embeddings = AlbertEmbeddings(vocab_size, cfg)
        self.encoder = AlbertEncoder(cfg)

    def __call__(self, ids: mx.array, mask: mx.array | None = None) -> mx.array:
        return self.encoder(self.embeddings(ids), mask)


# ---------------------------------------------------------------------------------------------
# Text encoder and prosody predictor


class TextEncoder(nn.Module):
    def __init__(self, channels: int, kernel_size: int, depth: int, n_symbols: int):
        super().__init__()
        self.embedding = nn.Embedding(n_symbols, channels)
        pad = (kernel_size - 1) // 2
        # Reference: Sequential(weight_norm(Conv1d), LayerNorm, LeakyReLU(0.2), Dropout).
        self.cnn = [[nn.Conv1d(channels, channels, kernel_size, padding=pad), LayerNorm(channels)]
                    for _ in range(depth)]
        self.lstm = BiLSTM(channels, channels // 2)

    def __call__(self, ids: mx.array) -> mx.array:
        x = self.embedding(ids)
        for conv, norm in self.cnn:
            x = leaky_relu(norm(conv(x)), 0.2)
        return self.lstm(x)


class DurationEncoder(nn.Module):
    def __init__(self, sty_dim: int, d_model: int, nlayers: int):
        super().__init__()
        self.lstms = []
        for _ in range(nlayers):
            self.lstms.append(BiLSTM(d_model + sty_dim, d_model // 2))
            self.lstms.append(AdaLayerNorm(sty_dim, d_model))

    def __call__(self, x: mx.array, style: mx.array) -> mx.array:
        """x ``(B, T, d_model)``, style ``(B, sty_dim)`` -> ``(B, T, d_model + sty_dim)``."""
        s = mx.broadcast_to(style[:, None, :], (x.shape[0], x.shape[1], style.shape[-1])).astype(x.dtype)
        x = mx.concatenate([x, s], axis=-1)
        for block in self.lstms:
            if isinstance(block, AdaLayerNorm):
                x = mx.concatenate([block(x, style), s], axis=-1)
            else:
                x = block(x)
        return x


class ProsodyPredictor(nn.Module):
    def __init__(self, style_dim: int, d_hid: int, nlayers: int, max_dur: int):
        super().__init__()
        self.text_encoder = DurationEncoder(style_dim, d_hid, nlayers)
        self.lstm = BiLSTM(d_hid + style_dim, d_hid // 2)
        self.duration_proj = _LinearNorm(d_hid, max_dur)
        self.shared = BiLSTM(d_hid + style_dim, d_hid // 2)
        self.F0 = [
            AdainResBlk1d(d_hid, d_hid, style_dim),
            AdainResBlk1d(d_hid, d_hid // 2, style_dim, upsample=True),
            AdainResBlk1d(d_hid // 2, d_hid // 2, style_dim),
        ]
        self.N = [
            AdainResBlk1d(d_hid, d_hid, style_dim),
            AdainResBlk1d(d_hid, d_hid // 2, style_dim, upsample=True),
            AdainResBlk1d(d_hid // 2, d_hid // 2, style_dim),
        ]
        self.F0_proj = nn.Conv1d(d_hid // 2, 1, 1)
        self.N_proj = nn.Conv1d(d_hid // 2, 1, 1)

    def F0Ntrain(self, x: mx.array, s: mx.array) -> tuple[mx.array, mx.array]:
        """Aligned features ``(B, F, C)`` -> F0 and energy curves ``(B, 2F)``."""
        x = self.shared(x)
        f0 = x
        for block in self.F0:
            f0 = block(f0, s)
        n = x
        for block in self.N:
            n = block(n, s)
        return self.F0_proj(f0)[..., 0], self.N_proj(n)[..., 0]


class _LinearNorm(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_layer = nn.Linear(in_dim, out_dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_layer(x)


# ---------------------------------------------------------------------------------------------
# The model


@dataclass
class Prosody:
    """What :meth:`Model.predict` gives the decoder (batch 1).

    Attributes:
        durations: frames per input token, int64 ``(T,)`` (boundary tokens included).
        asr: aligned text features ``(1, F, hidden_dim)``, ``F = durations.sum()``.
        f0: pitch curve in Hz ``(1, 2F)``.
        n: energy curve ``(1, 2F)``.
    """

    durations: np.ndarray
    asr: mx.array
    f0: mx.array
    n: mx.array

    @property
    def frames(self) -> int:
        return int(self.durations.sum())


class Model(nn.Module):
    """Kokoro-82M. Input ids include the boundary token 0 at both ends, as in the reference."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.bert = CustomAlbert(args.n_token, args.plbert)
        self.bert_encoder = nn.Linear(args.plbert["hidden_size"], args.hidden_dim)
        self.predictor = ProsodyPredictor(args.style_dim, args.hidden_dim, args.n_layer, args.max_dur)
        self.text_encoder = TextEncoder(args.hidden_dim, args.text_encoder_kernel_size, args.n_layer, args.n_token)
        self.decoder = Decoder(
            args.hidden_dim, args.style_dim, args.istftnet, hidden=args.decoder_hidden, asr_res_dim=args.asr_res_dim
        )

    @property
    def sample_rate(self) -> int:
        return self.args.sample_rate

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per aligned frame (one duration unit): 600 at 24 kHz, i.e. 40 frames/s."""
        ist = self.args.istftnet
        return 2 * math.prod(ist["upsample_rates"]) * ist["gen_istft_hop_size"]

    def _inputs(self, input_ids, style) -> tuple[mx.array, mx.array]:
        if isinstance(input_ids, mx.array):
            ids = input_ids.reshape(1, -1).astype(mx.int32)
        else:
            ids = mx.array(np.asarray(input_ids, dtype=np.int32).reshape(1, -1))
        n = ids.shape[1]
        if n < 2:
            raise ValueError("input_ids must hold at least the two boundary tokens")
        limit = self.args.plbert["max_position_embeddings"]
        if n > limit:
            raise ValueError(f"{n} input ids exceed the model's context of {limit} (boundary tokens included)")
        style = (style if isinstance(style, mx.array) else mx.array(np.asarray(style, np.float32))).reshape(1, -1)
        if style.shape[1] != 2 * self.args.style_dim:
            raise ValueError(f"style must have {2 * self.args.style_dim} values, got {style.shape[1]}")
        return ids, style.astype(mx.float32)

    def duration_logits(self, input_ids, style) -> tuple[mx.array, mx.array]:
        """Per-token duration logits ``(1, T, max_dur)`` and the duration encoder's output ``d``."""
        ids, style = self._inputs(input_ids, style)
        s = style[:, self.args.style_dim :]
        d_en = self.bert_encoder(self.bert(ids))
        d = self.predictor.text_encoder(d_en, s)
        return self.predictor.duration_proj(self.predictor.lstm(d)), d

    def predict(self, input_ids, style, speed: float = 1.0, durations=None) -> Prosody:
        """Durations, aligned text features, F0 and energy for one utterance.

        Args:
            input_ids: token ids ``(T,)`` or ``(1, T)``, ``[0, ids..., 0]``.
            style: the voice's style vector for this length, ``(256,)`` or ``(1, 256)``.
            speed: speaking rate; durations are divided by it.
            durations: force these per-token frame counts (length ``T``) instead of predicting them.

        Returns:
            A :class:`Prosody`; its arrays are lazy MLX arrays (``durations`` is numpy).
        """
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        ids, style_arr = self._inputs(input_ids, style)
        logits, d = self.duration_logits(ids, style_arr)
        if durations is None:
            total = mx.sigmoid(logits.astype(mx.float32)).sum(axis=-1)[0] / speed
            # The one host read per utterance; round half to even like torch.round / ONNX Round.
            dur = np.maximum(np.rint(np.array(total)), 1).astype(np.int64)
        else:
            dur = np.asarray(durations, dtype=np.int64).reshape(-1)
            if dur.shape[0] != ids.shape[1] or (dur < 0).any() or dur.sum() == 0:
                raise ValueError(f"durations must be {ids.shape[1]} non-negative ints with a positive sum")
        idx = mx.array(np.repeat(np.arange(dur.shape[0]), dur).astype(np.int32))
        s = style_arr[:, self.args.style_dim :]
        f0, n = self.predictor.F0Ntrain(d[:, idx], s)
        asr = self.text_encoder(ids)[:, idx]
        return Prosody(durations=dur, asr=asr, f0=f0, n=n)

    def decode(self, asr: mx.array, f0: mx.array, n: mx.array, style) -> mx.array:
        """Audio for aligned features: asr ``(1, F, C)``, f0 / n ``(1, 2F)`` -> float32 ``(F * 600,)``.

        Works on any window of frames; note that the decoder's instance norms take their statistics
        over the window, so a window's audio differs slightly from the same span of a full decode.
        """
        if f0.shape[-1] != 2 * asr.shape[1] or n.shape[-1] != f0.shape[-1]:
            raise ValueError(f"f0 / n must have 2 * {asr.shape[1]} frames, got {f0.shape[-1]} / {n.shape[-1]}")
        style = style if isinstance(style, mx.array) else mx.array(np.asarray(style, np.float32))
        s = style.reshape(1, -1)[:, : self.args.style_dim].astype(asr.dtype)
        return self.decoder(asr, f0.reshape(1, -1), n.reshape(1, -1), s)[0]

    def __call__(self, input_ids, style, speed: float = 1.0) -> tuple[mx.array, np.ndarray]:
        """One-shot synthesis: ``(audio (samples,) float32 MLX array, durations (T,) int64)``."""
        p = self.predict(input_ids, style, speed)
        return self.decode(p.asr, p.f0, p.n, style), p.durations


def ref_style(voice: np.ndarray, num_phonemes: int) -> np.ndarray:
    """The style vector a voice pack gives an utterance of ``num_phonemes`` ids (boundaries excluded)."""
    table = np.asarray(voice).reshape(voice.shape[0], -1)
    return table[min(max(num_phonemes, 1), table.shape[0]) - 1]


def _private_arrays(model: nn.Module) -> list[mx.array]:
    """Arrays a module holds outside its parameters: ``_name`` entries and plain attributes."""
    found = []
    for _, module in model.named_modules():
        for value in [*(v for k, v in module.items() if k.startswith("_")), *vars(module).values()]:
            values = value.values() if isinstance(value, dict) else [value]
            found.extend(v for v in values if isinstance(v, mx.array))
    return found


def load_model(path: str | Path) -> Model:
    """Load a converted Kokoro folder (our format only, strictly).

    Weights stored as float16 are upcast: the model computes in float32 (float16 is a storage format
    here; on the CPU it is slower and overflows in the vocoder).

    Args:
        path: folder with ``config.json`` and ``model.safetensors``.

    Raises:
        FileNotFoundError: the folder or a file is missing.
        ValueError: a tensor is missing, unexpected or of the wrong shape, or the config is not ours.
    """
    path = Path(path).expanduser()
    hint = RECONVERT_HINT.format(path=path)
    config_file, weights_file = path / "config.json", path / "model.safetensors"
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"Kokoro model folder {path} has no {f.name}: {hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {config_file} ({err}): {hint}") from None
    if not isinstance(config, dict) or config.get("model_type") != "kokoro" \
            or config.get("format_version") != FORMAT_VERSION:
        got = config if not isinstance(config, dict) else {k: config.get(k) for k in ("model_type", "format_version")}
        raise ValueError(f"{config_file} is not a kokoro folder of format {FORMAT_VERSION} ({got}): {hint}")
    model = Model(ModelArgs.from_dict(config))
    try:
        weights = mx.load(str(weights_file))
    except Exception as err:  # mlx raises RuntimeError / ValueError for unreadable files
        raise ValueError(f"cannot read {weights_file} ({err}): {hint}") from None
    check_weights(model, weights, hint)
    weights = {k: v.astype(mx.float32) for k, v in weights.items()}
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    mx.eval(model.parameters())
    # Constant tables held as private attributes (STFT bases, harmonic numbers) are not parameters:
    # evaluate them too, or the model only runs on the thread that loaded it (a lazy array is bound
    # to the thread that built its graph).
    mx.eval(_private_arrays(model))
    return model


def check_weights(model: Model, weights: dict[str, mx.array], hint: str = "") -> None:
    """Raise ``ValueError`` naming the first missing, unexpected or misshapen tensor."""
    expected = dict(nn.utils.tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    suffix = f": {hint}" if hint else ""
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"Kokoro weights lack tensor {missing[0]!r}{more}{suffix}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ValueError(f"Kokoro weights have unexpected tensor {unexpected[0]!r}{more}{suffix}")
    for k, v in expected.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            got, want = tuple(weights[k].shape), tuple(v.shape)
            raise ValueError(f"Kokoro tensor {k!r} has shape {got}, expected {want}{suffix}")


def load_voices(path: str | Path) -> dict[str, np.ndarray]:
    """Voice packs of a converted folder: name -> float32 ``(510, 256)`` style table."""
    file = Path(path).expanduser() / "voices.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: {RECONVERT_HINT.format(path=Path(path))}")
    return {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(file)).items()}


def load_vocab(path: str | Path) -> dict[str, int]:
    """Phoneme -> id table of a converted folder."""
    file = Path(path).expanduser() / "vocab.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: {RECONVERT_HINT.format(path=Path(path))}")
    return {str(k): int(v) for k, v in json.loads(file.read_text(encoding="utf-8")).items()}
