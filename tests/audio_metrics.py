"""Objective comparisons of synthesized speech: log-mel spectra, DTW alignment, seams at joins.

Used by the voice tests and the benchmarks to judge a streaming method against one-shot synthesis
of the same text. Everything is numpy and works on float32 mono audio.

- :func:`log_mel`: log-magnitude mel spectrogram (10 ms hop by default).
- :func:`dtw_path`: dynamic time warping between two feature sequences.
- :func:`aligned_logmel_correlation`: Pearson correlation of two log-mel spectrograms after DTW,
  the quality number of the streaming methods (>= 0.97 is the bar for the default).
- :func:`speech_duration` / :func:`duration_ratio`: length of the speech between leading and
  trailing silence.
- :func:`seam_scores`: how much a join stands out: sample-level jump and high-frequency burst at
  the join, each relative to the audio around it (a click scores far above 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "SeamScore",
    "aligned_logmel_correlation",
    "dtw_path",
    "duration_ratio",
    "log_mel",
    "mel_filterbank",
    "seam_scores",
    "speech_duration",
]


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular HTK-style mel filters.

    Returns:
        ``(n_mels, n_fft // 2 + 1)`` float32 weights.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None] - lower) / (center - lower)
    down = (upper - bins[None]) / (upper - center)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def log_mel(audio: np.ndarray, sample_rate: int = 24_000, n_fft: int = 1024, hop: int = 240,
            n_mels: int = 80, floor_db: float = 80.0) -> np.ndarray:
    """Log mel spectrogram (natural log of power), floored ``floor_db`` below its maximum.

    The floor keeps digital silence from dominating correlations with huge negative values.

    Returns:
        ``(frames, n_mels)`` float32.
    """
    x = np.asarray(audio, dtype=np.float32).ravel()
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    x = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = power @ mel_filterbank(sample_rate, n_fft, n_mels).T
    logmel = np.log(np.maximum(mel, 1e-10))
    return np.maximum(logmel, logmel.max() - floor_db * np.log(10) / 10).astype(np.float32)


def dtw_path(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost monotonic alignment of two feature sequences (Euclidean frame distance).

    Args:
        a: ``(n, d)`` features.
        b: ``(m, d)`` features.

    Returns:
        Index arrays ``(ia, ib)`` of equal length: frame ``ia[k]`` of ``a`` pairs with ``ib[k]`` of ``b``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("dtw_path needs two non-empty sequences")
    cost = np.sqrt(np.maximum(
        (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T, 0.0))
    acc = np.empty((n, m))
    acc[0] = np.cumsum(cost[0])
    for i in range(1, n):
        # Vertical and diagonal steps are vectorised; the horizontal recurrence
        # D[i, j] = min(t[j], D[i, j-1] + c[i, j]) is a running minimum of t - cumsum(c).
        t = cost[i] + np.minimum(acc[i - 1], np.concatenate(([np.inf], acc[i - 1, :-1])))
        s = np.cumsum(cost[i])
        acc[i] = s + np.minimum.accumulate(t - s)
    ia, ib = [n - 1], [m - 1]
    i, j = n - 1, m - 1
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            step = np.argmin((acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]))
            i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
        ia.append(i)
        ib.append(j)
    return np.array(ia[::-1]), np.array(ib[::-1])


def aligned_logmel_correlation(reference: np.ndarray, test: np.ndarray,
                               sample_rate: int = 24_000) -> float:
    """Pearson correlation of two log-mel spectrograms after aligning their frames with DTW.

    Leading and trailing silence is trimmed first, so that a different pause length at the ends
    does not count as a spectral difference.
    """
    ref = log_mel(_trim(reference, sample_rate), sample_rate)
    tst = log_mel(_trim(test, sample_rate), sample_rate)
    ia, ib = dtw_path(ref, tst)
    return float(np.corrcoef(ref[ia].ravel(), tst[ib].ravel())[0, 1])


def _speech_bounds(audio: np.ndarray, sample_rate: int, threshold_db: float = -40.0,
                   frame: float = 0.01) -> tuple[int, int]:
    x = np.asarray(audio, dtype=np.float32).ravel()
    hop = max(1, int(frame * sample_rate))
    n = x.size // hop
    if n == 0:
        return 0, 0
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-20)
    loud = np.nonzero(20 * np.log10(rms / (rms.max() + 1e-20)) > threshold_db)[0]
    if loud.size == 0:
        return 0, 0
    return int(loud[0] * hop), int((loud[-1] + 1) * hop)


def _trim(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    start, end = _speech_bounds(audio, sample_rate)
    x = np.asarray(audio, dtype=np.float32).ravel()
    return x[start:end] if end > start else x


def speech_duration(audio: np.ndarray, sample_rate: int = 24_000) -> float:
    """Seconds from the first to the last 10 ms frame within 40 dB of the loudest one."""
    start, end = _speech_bounds(audio, sample_rate)
    return (end - start) / sample_rate


def duration_ratio(reference: np.ndarray, test: np.ndarray, sample_rate: int = 24_000) -> float:
    """``speech_duration(test) / speech_duration(reference)``."""
    ref = speech_duration(reference, sample_rate)
    if ref == 0:
        raise ValueError("the reference audio is silent")
    return speech_duration(test, sample_rate) / ref


@dataclass(frozen=True)
class SeamScore:
    """How one join compares with the audio around it (about 1 or less = like its neighbourhood).

    Attributes:
        position: sample index of the join.
        jump: largest sample-to-sample step within 1 ms of the join, over the 99th percentile of
            steps in the surrounding 100 ms.
        flux: high-frequency energy (second difference, mostly > 6 kHz) in the 4 ms around the
            join, over its median across the surrounding 100 ms.

    Both denominators are floored at a small fraction of the same measure over the whole signal,
    so that a join in near-silence is judged against audible levels, not against the noise floor.
    """

    position: int
    jump: float
    flux: float


def seam_scores(audio: np.ndarray, positions: list[int] | np.ndarray,
                sample_rate: int = 24_000) -> list[SeamScore]:
    """Scores each join position for clicks (sample jumps and high-frequency bursts).

    A clean join scores near or below 1 on both; a click gives a jump and a flux well above 1
    (a 0.3 step in speech at -15 dBFS scores > 3 and > 10).
    """
    x = np.asarray(audio, dtype=np.float64).ravel()
    diff = np.abs(np.diff(x))
    hp = np.diff(x, n=2)
    near = max(1, int(0.001 * sample_rate))
    span = int(0.05 * sample_rate)
    win = int(0.004 * sample_rate)
    if diff.size == 0 or hp.size < win:
        return [SeamScore(int(p), 0.0, 0.0) for p in positions]
    energy = np.convolve(hp**2, np.ones(win) / win, mode="valid")  # energy[s] = mean(hp[s:s+win]**2)
    jump_floor = 0.1 * np.percentile(diff, 99)
    flux_floor = 0.01 * np.median(energy[energy > 0]) if (energy > 0).any() else 1e-12
    out = []
    for p in np.asarray(positions, dtype=np.int64):
        lo, hi = max(0, p - span), min(diff.size, p + span)
        local = diff[max(0, p - near): min(diff.size, p + near)]
        ref = max(np.percentile(diff[lo:hi], 99), jump_floor)
        jump = float(local.max() / ref) if local.size else 0.0
        around = energy[max(0, p - span): max(1, min(energy.size, p + span))]
        at = energy[min(max(0, p - win // 2), energy.size - 1)]
        flux = float(at / max(np.median(around), flux_floor)) if around.size else 0.0
        out.append(SeamScore(int(p), jump, flux))
    return out
