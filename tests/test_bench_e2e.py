"""bench/e2e.py's timing and metric helpers, with fake engines (no models, a few seconds)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import e2e  # noqa: E402

RATE = e2e.SAMPLE_RATE


# --------------------------------------------------------------------------------- text in


def test_paced_slices_pieces_into_tokens_at_the_model_rate():
    schedule = e2e.paced(["Hello world. ", "Bye."], tokens_per_s=10, chars_per_token=4)
    assert "".join(text for _, text in schedule) == "Hello world. Bye."
    assert all(len(text) <= 4 for _, text in schedule)
    times = [t for t, _ in schedule]
    assert times[0] == 0.0 and times == sorted(times)
    # 40 characters a second: the slice after 13 characters arrives at 13 / 40 s.
    assert dict((text, t) for t, text in schedule)["Bye."] == pytest.approx(13 / 40)
    with pytest.raises(ValueError):
        e2e.paced(["x"], 0, 4)


def test_capture_pieces_follow_the_reader_line_by_line_and_defaults_pick_the_longest():
    pieces = e2e.capture_pieces(e2e.QUICK_CAPTURE)
    assert len(pieces) > 5  # text deltas, not one joined piece
    assert "".join(pieces).startswith("Let me run the tests")
    captures = e2e.default_captures(3)
    sizes = [len("".join(e2e.capture_pieces(p))) for p in captures]
    assert len(captures) == 3 and sizes == sorted(sizes, reverse=True)
    assert captures[0].name == "05_thinking_three_bash_tools.jsonl"


def test_capture_pieces_refuse_an_empty_or_missing_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="no assistant text"):
        e2e.capture_pieces(empty)
    with pytest.raises(ValueError, match="cannot read"):
        e2e.capture_pieces(tmp_path / "missing.jsonl")


def test_fixed_costs_and_stand_in_japanese_depend_on_the_source_only():
    short, long = "All tests pass.", "The tests are failing because the fixture path changed in the last commit."
    assert e2e.new_tokens(short) < e2e.new_tokens(long)
    assert e2e.source_tokens(long) == round(len(long) / e2e.SRC_CHARS_PER_TOKEN)
    ja = e2e.stand_in_japanese(long)
    assert ja == e2e.stand_in_japanese(long)  # deterministic: both sides speak the same text
    assert len(ja) == round(e2e.JA_PER_EN_CHAR * len(long)) and ja.endswith("。")
    assert all(not ch.isascii() for ch in ja)
    assert e2e.stand_in_japanese("Hi.") != "" and len(e2e.stand_in_japanese("Hi.")) >= 4


# --------------------------------------------------------------------------- device clock


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_device_clock_plays_chunks_back_to_back_and_blocks_like_a_buffer():
    clock = FakeClock()
    sink = e2e.DeviceClockSink(buffer_s=1.0, clock=clock, sleep=clock.sleep)
    sink.open(RATE)
    quiet_then_loud = np.concatenate([np.zeros(RATE // 2), np.full(RATE, 0.5)]).astype(np.float32)
    sink.write(quiet_then_loud)  # 1.5 s: returns once only 1 s is left ahead of the device
    first = sink.played[0]
    assert (first.start, first.end) == (100.0, 101.5)
    assert first.audible == pytest.approx(100.5)
    assert clock.slept == [pytest.approx(0.5)]
    sink.write(np.zeros(RATE // 4, np.float32))  # queued behind the first chunk, all silence
    assert sink.played[1].start == pytest.approx(101.5) and sink.played[1].audible is None
    clock.now = 110.0  # idle device: the next chunk plays when written
    sink.write(np.full(RATE // 10, 0.5, np.float32))
    assert sink.played[2].start == 110.0
    sink.wait()
    assert clock.now == pytest.approx(110.1)


# ------------------------------------------------------------------------------- metrics


def _sentence(seq, end, chunks, audible=None, translate=None, synth_compute=0.0):
    return {"seq": seq, "end": end, "chunks": chunks, "play_start": chunks[0][0] if chunks else None,
            "play_end": chunks[-1][1] if chunks else None, "audio_s": sum(b - a for a, b in chunks),
            "audible": audible, "translate_start": translate[0] if translate else None,
            "translate_end": translate[1] if translate else None, "synth_compute": synth_compute}


def test_instant_engine_starts_wait_for_the_sentence_before():
    assert e2e.instant_starts([1.0, 2.0, 10.0], [3.0, 1.0, 1.0]) == [1.0, 4.0, 10.0]


def test_run_values_and_summary_on_a_known_timeline():
    run = {"sentences": [
        # Sentence 0 ends at 1 s, plays 2-5 s (audible from 2.1 s), translated in one 0.5 s call.
        _sentence(0, 1.0, [(2.0, 5.0)], audible=2.1, translate=(1.0, 1.5), synth_compute=0.5),
        # Sentence 1 ends at 3 s (while 0 plays) and starts 1 s after 0 ends, with a 0.5 s stall inside.
        _sentence(1, 3.0, [(6.0, 7.0), (7.5, 8.0)], translate=(3.0, 4.0), synth_compute=1.0),
        _sentence(2, 4.0, []),  # skipped: no audio, left out
    ]}
    values = e2e.run_values(run)
    m = e2e.summarize(dict(values, cpu_s=2.0))
    assert m["first_audio_s"] == 2.0 and m["first_audible_s"] == 2.1
    assert values["latency"] == [1.0, 3.0]
    # Instant engine: 0 at 1 s (extra 1 s); 1 when 0 would have ended, 1 + 3 = 4 s (extra 2 s).
    assert values["extra"] == [1.0, 2.0] and m["extra_max_s"] == 2.0 and m["extra_median_s"] == 1.5
    assert m["silence_total_s"] == pytest.approx(1.0) and m["silence_max_s"] == pytest.approx(1.0)
    assert m["stall_total_s"] == pytest.approx(0.5)
    assert m["audio_s"] == pytest.approx(4.5) and m["sentences"] == 2
    assert m["rtf"] == pytest.approx((0.5 + 1.0 + 0.5 + 1.0) / 4.5)
    assert m["cpu_s"] == 2.0
    pooled = e2e.summarize(e2e.pool([values, values]))
    assert pooled["sentences"] == 4 and pooled["silence_total_s"] == pytest.approx(2.0)
    assert e2e.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    assert e2e.percentile([], 50) is None


def test_table_gives_ratios_and_skips_empty_rows():
    text = e2e.table({"ours": {"first_audio_s": 1.0, "rtf": 0.2}, "peer": {"first_audio_s": 4.0, "rtf": 0.5}})
    row = next(line for line in text.splitlines() if line.startswith("| time to first audio"))
    assert row.split("|")[2:5] == [" 1.00 ", " 4.00 ", " 0.25 "]
    assert "peak RSS" not in text


# ------------------------------------------------------------------- replays, fake engines


class SlowTranslator:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def translate(self, texts, src_lang, tgt_lang):
        time.sleep(self.seconds)
        return [f"ja:{t}" for t in texts]

    def __call__(self, text: str) -> str:
        return self.translate([text], "eng_Latn", "jpn_Jpan")[0]


class FakeVoice:
    """0.05 s of silence then 0.25 s of tone per sentence, in two chunks, after ``seconds`` of work."""

    sample_rate, lang = RATE, "ja"

    def __init__(self, seconds: float):
        self.seconds = seconds

    def synthesize(self, text, speed=1.0):
        time.sleep(self.seconds)
        yield np.zeros(int(0.05 * RATE), np.float32)
        yield np.full(int(0.25 * RATE), 0.3, np.float32)

    def whole(self, text: str) -> np.ndarray:
        return np.concatenate(list(self.synthesize(text)))


SCHEDULE = e2e.paced(["One is here. Two is here. Three is here."], tokens_per_s=200, chars_per_token=4)


def _check_order(run):
    lines = run["sentences"]
    assert [s["source"] for s in lines] == ["One is here.", "Two is here.", "Three is here."]
    for s in lines:
        assert s["fed"] <= s["end"] <= s["translate_start"] < s["translate_end"] <= s["synth_start"] <= s["play_start"]
        assert s["pieces"][0] <= s["fed"] and s["pieces"][-1] == pytest.approx(s["end"], abs=1e-3)
        assert s["audio_s"] == pytest.approx(0.3)
        assert s["audible"] == pytest.approx(s["play_start"] + 0.05)
    return lines


def test_replays_of_fake_engines_show_the_peer_waiting_and_ours_overlapping():
    voice = FakeVoice(0.02)
    peer = e2e.replay_peer(SCHEDULE, SlowTranslator(0.1), voice.whole, e2e.DeviceClockSink())
    ours = e2e.replay_ours(SCHEDULE, SlowTranslator(0.1), voice, e2e.DeviceClockSink(), priority_lead=None,
                           sentence_gap=0, early_start=False)  # the fake audio alone, as the peer plays it
    p, o = _check_order(peer), _check_order(ours)
    # The peer takes the next sentence only once the one before has played; ours translates it meanwhile.
    assert all(b["translate_start"] >= a["play_end"] - 1e-3 for a, b in zip(p, p[1:]))
    assert any(b["translate_start"] < a["play_end"] for a, b in zip(o, o[1:]))
    pm, om = (e2e.summarize(e2e.run_values(r)) for r in (peer, ours))
    assert pm["silence_total_s"] > 0.15  # two gaps of ~0.1 s translation + voice while text was complete
    assert om["silence_total_s"] < pm["silence_total_s"]
    assert om["extra_median_s"] < pm["extra_median_s"]
    assert e2e.different_work(ours, peer) == []  # same sentences, same spoken text, same tokens
    assert peer["pieces"][0][0] == pytest.approx(0.0, abs=1e-3)
    assert "".join(text for _, text in ours["pieces"]) == "".join(text for _, text in SCHEDULE)


def test_replay_ours_passes_pipeline_options_through():
    with pytest.raises(TypeError, match="no_such_option"):
        e2e.replay_ours(SCHEDULE, None, FakeVoice(0.0), e2e.DeviceClockSink(), no_such_option=True)


def test_pipeline_option_parsing():
    assert e2e._option("priority_lead=none") == ("priority_lead", None)
    assert e2e._option("priority_lead=0.25") == ("priority_lead", 0.25)
    assert e2e._option("code=skip") == ("code", "skip")
    with pytest.raises(Exception, match="KEY=VALUE"):
        e2e._option("oops")
    args = e2e.parse_args(["--quick", "--pipeline-option", "priority_lead=1"])
    assert args.pipeline_options == {"priority_lead": 1} and args.captures == [e2e.QUICK_CAPTURE]


def test_different_work_names_what_differs():
    a = {"sentences": [{"seq": 0, "source": "Hi.", "spoken": "ja", "tokens": 4}]}
    b = {"sentences": [{"seq": 0, "source": "Hi.", "spoken": "ja", "tokens": 5}]}
    assert e2e.different_work(a, a) == []
    assert e2e.different_work(a, b) == ["sentence 0: tokens 4 (ours) != 5 (peer)"]
    assert "sentences" in e2e.different_work(a, {"sentences": []})[0]


def test_plot_draws_both_sides_of_a_run(tmp_path):
    pytest.importorskip("matplotlib")
    import e2e_plot

    voice = FakeVoice(0.0)
    fast = SlowTranslator(0.0)
    sides = {"ours": e2e.replay_ours(SCHEDULE, fast, voice, e2e.DeviceClockSink(buffer_s=math.inf), sentence_gap=0),
             "peer": e2e.replay_peer(SCHEDULE, fast, voice.whole, e2e.DeviceClockSink(buffer_s=math.inf))}
    run = {"tokens_per_s": 200, "chars_per_token": 4,
           "scenarios": {"stream": {side: {"engine": "fake", "captures": [dict(r, capture="x.jsonl")]}
                                    for side, r in sides.items()}}}
    out = e2e_plot.plot(run, tmp_path / "e2e.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no 'cold' scenario"):
        e2e_plot.plot(run, tmp_path / "x.png", scenario="cold")
