"""The chunker on public sentence-segmentation suites (tests/fixtures/segmentation), streamed.

The suites' origins and licences are in tests/fixtures/segmentation/SOURCES.md; bench/segmentation.py
prints the scores. These tests hold the scores at their floors, check that the sentences do not
depend on how the text was cut into pieces, and that nothing but a case's last sentence waits for
the end of the stream.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from mlx_stream_tts.chunking import SentenceChunker

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "segmentation"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_segmentation", ROOT / "bench" / "segmentation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _bench()
SUITES = bench.load_suites(FIXTURES)

# Share of cases exactly right with every sentence but the last released before the text ended
# (measured: see the report in bench/segmentation.py; the floors sit just under it).
FLOORS = {
    "pysbd_golden_rules_en": 1.0,
    "pysbd_tests_en": 0.95,
    "pragmatic_segmenter_en": 0.88,
    "sentencex_en": 0.85,
    "fast_sentence_segment": 0.95,
    "syntok_ospl_pairs": 0.89,
    # That project's own conventions (a numbered heading or a bibliography entry is one sentence),
    # which speech does not need; tracked so that a change is seen.
    "fast_sentence_segment_conventions": 0.25,
}


def test_every_suite_is_present_and_attributed():
    sources = (FIXTURES / "SOURCES.md").read_text(encoding="utf-8")
    assert set(SUITES) == set(FLOORS)
    for name, cases in SUITES.items():
        assert f"`{name}.jsonl`" in sources, name
        assert len(cases) >= 40, name
        for case in cases:  # segmentation only: the sentences give back the text
            assert "".join("".join(case.expected).split()) == "".join(case.text.split()), case.id


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_suite_score_floor(name):
    results = bench.score({name: SUITES[name]}, seed=0)[name]
    streamed = sum(r.streamed for r in results) / len(results)
    assert streamed >= FLOORS[name], f"{name}: {streamed:.3f} < {FLOORS[name]}"


def test_golden_rules_every_earlier_sentence_before_the_text_ends():
    # One character at a time: each sentence but the last comes out of feed(), never flush().
    for case in SUITES["pysbd_golden_rules_en"]:
        chunker = SentenceChunker()
        fed = [s for ch in case.text for s in chunker.feed(ch)]
        rest = chunker.flush()
        assert len(rest) <= 1, (case.text, rest)
        assert [" ".join(s.split()) for s in fed + rest] == case.expected


def test_sentences_do_not_depend_on_the_pieces():
    rng = random.Random(7)
    for cases in SUITES.values():
        for case in cases[::3]:
            whole = SentenceChunker()
            expected = whole.feed(case.text) + whole.flush()
            chunker, got, k = SentenceChunker(), [], 0
            while k < len(case.text):
                n = rng.randint(1, 9)
                got += chunker.feed(case.text[k : k + n])
                k += n
            assert got + chunker.flush() == expected, case.id


def test_loader_skips_bad_lines(tmp_path, capsys):
    good = {"id": "a", "text": "Hi. Bye.", "expected": ["Hi.", "Bye."]}
    (tmp_path / "mini.jsonl").write_text(json.dumps(good) + "\n{not json\n" + json.dumps({"id": "b"}) + "\n\n")
    suites = bench.load_suites(tmp_path)
    assert [c.id for c in suites["mini"]] == ["a"]
    err = capsys.readouterr().err
    assert "mini.jsonl:2" in err and "mini.jsonl:3" in err


def test_scoring_counts_a_sentence_held_to_the_end_as_not_streamed():
    case = bench.Case("t", "x", "Hi. Bye.", ["Hi.", "Bye."])
    assert bench.Result(case, ["Hi.", "Bye."], from_feed=1).streamed
    assert not bench.Result(case, ["Hi.", "Bye."], from_feed=0).streamed  # "Hi." waited for flush()
    assert not bench.Result(case, ["Hi. Bye."], from_feed=0).exact
    assert bench.Result(case, ["Hi.", "Bye."], from_feed=0).exact
