"""Sentence segmentation on public golden-rule suites, streamed in small pieces.

Each case of each suite (``tests/fixtures/segmentation/*.jsonl``; origins and licences in
``SOURCES.md`` there) is fed to a fresh :class:`SentenceChunker` in random pieces of 1 to 7
characters, then flushed. A case counts as *exact* when the chunks are the expected sentences (inner
whitespace runs compared as one space), and as *streamed* when it is exact and every sentence but the
last came out of ``feed()``, i.e. before the case's text had ended: nothing was held back to the end
of the stream. Also times the chunker on a long text (characters per second, best of three).

    python bench/segmentation.py                 # per-suite scores and speed
    python bench/segmentation.py --failures 20   # and the first 20 failing cases of each suite
    python bench/segmentation.py --suite pysbd_golden_rules_en --seed 3
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one
from mlx_stream_tts.chunking import SentenceChunker  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "segmentation"


@dataclass
class Case:
    suite: str
    id: str
    text: str
    expected: list[str]


@dataclass
class Result:
    case: Case
    got: list[str]
    from_feed: int  # how many of ``got`` came out of feed(), before flush()

    @property
    def exact(self) -> bool:
        return [_norm(s) for s in self.got] == [_norm(s) for s in self.case.expected]

    @property
    def streamed(self) -> bool:
        return self.exact and self.from_feed >= len(self.got) - 1


def _norm(sentence: str) -> str:
    return " ".join(sentence.split())


def load_suites(folder: Path = FIXTURES, only: str | None = None) -> dict[str, list[Case]]:
    """Reads every ``<suite>.jsonl`` in folder: one {"id", "text", "expected"} object a line."""
    suites: dict[str, list[Case]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        if only and path.stem != only:
            continue
        cases = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                cases.append(Case(path.stem, str(row["id"]), row["text"], list(row["expected"])))
            except (ValueError, KeyError, TypeError) as exc:
                print(f"skipping {path.name}:{n}: {exc}", file=sys.stderr)
        suites[path.stem] = cases
    return suites


def run_case(case: Case, rng: random.Random, longest: int = 7) -> Result:
    """Streams one case in random pieces of 1..longest characters into a fresh chunker."""
    chunker = SentenceChunker("en")
    got: list[str] = []
    k, text = 0, case.text
    while k < len(text):
        n = rng.randint(1, longest)
        got += chunker.feed(text[k : k + n])
        k += n
    from_feed = len(got)
    return Result(case, got + chunker.flush(), from_feed)


def score(suites: dict[str, list[Case]], seed: int = 0) -> dict[str, list[Result]]:
    rng = random.Random(seed)
    return {name: [run_case(c, rng) for c in cases] for name, cases in suites.items()}


def speed(repeat: int = 3) -> float:
    """Characters per second on a long text made of every suite's cases, fed 5 characters at a time."""
    text = "\n\n".join(c.text for cases in load_suites().values() for c in cases)
    best = float("inf")
    for _ in range(repeat):
        chunker = SentenceChunker("en")
        t0 = time.perf_counter()
        for k in range(0, len(text), 5):
            chunker.feed(text[k : k + 5])
        chunker.flush()
        best = min(best, time.perf_counter() - t0)
    return len(text) / best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", help="only this suite (a file name without .jsonl)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random piece sizes")
    ap.add_argument("--failures", type=int, default=0, metavar="N", help="print the first N failures of each suite")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    args = ap.parse_args(argv)

    suites = load_suites(only=args.suite)
    if not suites:
        print(f"no suites found in {FIXTURES}", file=sys.stderr)
        return 1
    results = score(suites, args.seed)
    print(f"{'suite':34} {'cases':>6} {'exact':>8} {'streamed':>9}")
    total = exact = streamed = 0
    for name, rows in results.items():
        n, e, s = len(rows), sum(r.exact for r in rows), sum(r.streamed for r in rows)
        total, exact, streamed = total + n, exact + e, streamed + s
        print(f"{name:34} {n:6d} {100 * e / n:7.1f}% {100 * s / n:8.1f}%")
    print(f"{'all':34} {total:6d} {100 * exact / total:7.1f}% {100 * streamed / total:8.1f}%")
    if args.failures:
        for name, rows in results.items():
            bad = [r for r in rows if not r.streamed][: args.failures]
            for r in bad:
                why = "held to flush" if r.exact else "wrong"
                print(f"\n[{name} {r.case.id}] {why}\n  text: {r.case.text!r}")
                print(f"  want: {r.case.expected!r}\n  got:  {r.got!r}")
    if not args.no_speed:
        print(f"\nspeed: {speed() / 1e3:.0f} k chars/s (fed 5 characters at a time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
