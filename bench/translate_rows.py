"""Several rows at once: batches of sentences and beam search, on the C step, the CPU graph's MLX ops and
the pure model.

    python bench/translate_rows.py                       # float32 and 8-bit, restricted head
    python bench/translate_rows.py --only ours-fp32-r32k --runs 3

Uses the random-weight 600M models that bench/translate.py builds and caches (run it once first, or
this script builds them). Each sentence is a 24-token source decoding exactly 32 tokens (greedy; the
random weights never emit </s> early here, checked), beams decode 16 tokens with 4 beams and no
repeated trigrams, as the translator's repetition guard does. 2 threads; best of --runs.

Columns: "C step" is the default on this machine (backend "auto"), "CPU graph" the same modules with
every step as MLX ops (``c_step=False``), "pure" the model of models/nllb.py (what a Mac runs) in a
child process with ``MLX_STREAM_TTS_BACKEND=mlx``, so no part of the accelerator is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from translate import build_hf, build_ours, cache_dir  # noqa: E402  (bench/translate.py)

NAMES = ("ours-fp32-r32k", "ours-int8-r32k")
MODES = {"step": "C step ms", "graph": "CPU graph ms", "pure": "pure ms"}


def cases() -> list[tuple[str, dict, int | None]]:
    sources = [[256] + [5 + i + b for i in range(22)] + [2] for b in range(4)]
    out = [(f"batch of {n}", dict(sources=sources[:n], max_new_tokens=32), 32) for n in (1, 2, 4)]
    out.append(("4 beams, 16 tokens", dict(sources=sources[:1], beam_size=4, no_repeat_ngram_size=3,
                                           max_new_tokens=16), None))
    return out


def time_mode(path: Path, mode: str, runs: int) -> list[float]:
    """Best ms of each case for one way of decoding (run in this process)."""
    import mlx_stream_tts  # noqa: F401  (OpenBLAS before mlx)
    from mlx_stream_tts.cpu import blas as _blas
    from mlx_stream_tts.translate import Translator

    _blas.set_blas_threads(2)
    tr = Translator.load(path, dtype=None, c_step=mode == "step")
    assert (tr.accelerator is None) == (mode == "pure"), "pure rows need MLX_STREAM_TTS_BACKEND=mlx"
    times = []
    for _, kwargs, length in cases():
        out = tr.generate(tgt_lang_id=260, guard=False, **kwargs)  # warm-up
        assert length is None or all(len(o) == length for o in out), [len(o) for o in out]
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            tr.generate(tgt_lang_id=260, guard=False, **kwargs)
            best = min(best, time.perf_counter() - start)
        times.append(best * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=list(NAMES), help="converted bench models to time")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per case (best is reported)")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = cache_dir()
    if args.child:
        name, mode = args.child
        print("RESULT " + json.dumps(time_mode(folder / name, mode, args.runs)))
        return 0

    hf = build_hf(folder)
    print("| model | case | " + " | ".join(MODES.values()) + " | graph / C step | pure / C step |")
    print("| --- | --- | " + " | ".join("---" for _ in MODES) + " | --- | --- |")
    for name in args.only:
        build_ours(folder, hf, name)
        times = {}
        for mode in MODES:  # each in its own process: the pure one without the accelerator
            env = dict(os.environ, MLX_STREAM_TTS_BACKEND="mlx") if mode == "pure" else dict(os.environ)
            proc = subprocess.run([sys.executable, __file__, "--child", name, mode, "--runs", str(args.runs)],
                                  capture_output=True, text=True, env=env)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{name} {mode}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                times[mode] = [float("nan")] * len(cases())
            else:
                times[mode] = json.loads(line[0][7:])
        for i, (label, _, _) in enumerate(cases()):
            row = [times[m][i] for m in MODES]
            print(f"| {name} | {label} | " + " | ".join(f"{t:.0f}" for t in row)
                  + f" | {row[1] / row[0]:.2f} | {row[2] / row[0]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
