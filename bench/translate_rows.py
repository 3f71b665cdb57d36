"""Several rows at once: batches of sentences and beam search, the native step against MLX's ops.

    python bench/translate_rows.py                       # float32 and 8-bit, restricted head
    python bench/translate_rows.py --only ours-fp32-r32k --runs 3

Uses the random-weight 600M models that bench/translate.py builds and caches (run it once first, or
this script builds them). Each sentence is a 24-token source decoding exactly 32 tokens (greedy; the
random weights never emit </s> early here, checked), beams decode 16 tokens with 4 beams and no
repeated trigrams, as the translator's repetition guard does. 2 threads; best of --runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from translate import build_hf, build_ours, cache_dir  # noqa: E402  (bench/translate.py)

NAMES = ("ours-fp32-r32k", "ours-int8-r32k")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=list(NAMES), help="converted bench models to time")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per case (best is reported)")
    args = parser.parse_args(argv)

    import mlx_stream_tts  # noqa: F401  (OpenBLAS before mlx)
    from mlx_stream_tts.cpu import blas as _blas
    from mlx_stream_tts.translate import Translator

    _blas.set_blas_threads(2)
    folder = cache_dir()
    hf = build_hf(folder)
    sources = [[256] + [5 + i + b for i in range(22)] + [2] for b in range(4)]
    cases = [(f"batch of {n}", dict(sources=sources[:n], max_new_tokens=32), 32) for n in (1, 2, 4)]
    cases.append(("4 beams, 16 tokens", dict(sources=sources[:1], beam_size=4, no_repeat_ngram_size=3,
                                              max_new_tokens=16), None))
    print("| model | case | native ms | MLX ops ms | MLX / native |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.only:
        tr = Translator.load(build_ours(folder, hf, name))
        for label, kwargs, length in cases:
            times = {}
            for native in (True, False):
                tr.native = native
                out = tr.generate(tgt_lang_id=260, guard=False, **kwargs)  # warm-up
                assert length is None or all(len(o) == length for o in out), [len(o) for o in out]
                best = float("inf")
                for _ in range(args.runs):
                    start = time.perf_counter()
                    tr.generate(tgt_lang_id=260, guard=False, **kwargs)
                    best = min(best, time.perf_counter() - start)
                times[native] = best * 1000
            print(f"| {name} | {label} | {times[True]:.0f} | {times[False]:.0f} | {times[False] / times[True]:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
