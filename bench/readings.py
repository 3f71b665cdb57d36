"""How many coding terms ``normalize_ja`` reads the way Japanese developers say them.

Reads ``tests/fixtures/readings/terms.tsv`` (term, accepted readings, source), normalizes each term on
its own and compares the result with each accepted reading after ``kana_key``: both sides become one
run of katakana, without spaces or punctuation, with digits and kanji replaced by their readings (so
``123番`` and ``ヒャクニジューサンバン`` compare equal) and ヴ written as the plain row (ヴィート =
ビート). Prints the score, the misses with what was produced, and the time per term.

    python bench/readings.py [--terms PATH] [--quiet]
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

# This checkout's package first, not another one installed in editable mode.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlx_stream_tts.g2p_ja import normalize_ja, read_int

TERMS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "readings" / "terms.tsv"

_HIRA2KATA = {c: c + 0x60 for c in range(0x3041, 0x3097)}
_VU = {"ヴァ": "バ", "ヴィ": "ビ", "ヴェ": "ベ", "ヴォ": "ボ", "ヴ": "ブ"}
_KANJI_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆]+")
_NOT_KANA = re.compile(r"[^\u30a1-\u30faー]+")


def load_terms(path: Path = TERMS) -> list[tuple[str, list[str], str]]:
    """The term list: (term, accepted readings, source tag) per row; ``#`` lines are comments."""
    rows = []
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 3 or not cols[0] or not cols[1].strip():
            raise ValueError(f"{path.name} line {n}: expected term<TAB>reading[|reading...]<TAB>source")
        rows.append((cols[0], [r.strip() for r in cols[1].split("|") if r.strip()], cols[2].strip()))
    return rows


@functools.lru_cache(maxsize=4096)
def _kanji_reading(run: str) -> str:
    import pyopenjtalk

    return pyopenjtalk.g2p(run, kana=True)


def kana_key(text: str) -> str:
    """``text`` as one katakana run: what two readings must share to count as the same."""
    text = unicodedata.normalize("NFKC", text).translate(_HIRA2KATA)
    text = _KANJI_RUN.sub(lambda m: _kanji_reading(m.group()), text)
    text = re.sub(r"\d+", lambda m: read_int(m.group()), text)
    for vu, plain in _VU.items():
        text = text.replace(vu, plain)
    return _NOT_KANA.sub("", text)


def score(rows: list[tuple[str, list[str], str]], read: Callable[[str], str] = normalize_ja
          ) -> tuple[int, list[tuple[str, str, list[str]]], list[float]]:
    """(hits, misses as (term, produced, accepted), seconds per term) for ``read`` over ``rows``."""
    hits, misses, times = 0, [], []
    for term, readings, _ in rows:
        t0 = time.perf_counter()
        out = read(term)
        times.append(time.perf_counter() - t0)
        if kana_key(out) in {kana_key(r) for r in readings}:
            hits += 1
        else:
            misses.append((term, out, readings))
    return hits, misses, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--terms", type=Path, default=TERMS, help="term list (TSV)")
    ap.add_argument("--quiet", action="store_true", help="print the score only")
    args = ap.parse_args(argv)
    rows = load_terms(args.terms)
    normalize_ja("テスト")  # load the dictionaries outside the timings
    score(rows)  # and fill the per-word caches, as a long stream would
    hits, misses, times = score(rows)
    if not args.quiet:
        for term, out, readings in misses:
            print(f"MISS {term!r}: got {out!r}, want {' | '.join(readings)}")
    print(f"readings: {hits}/{len(rows)} = {100 * hits / len(rows):.1f}% "
          f"(warm: median {1e3 * statistics.median(times):.2f} ms, max {1e3 * max(times):.1f} ms per term)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
