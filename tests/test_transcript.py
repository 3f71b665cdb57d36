"""Tests for the Claude Code transcript follower (mlx_stream_tts/transcript.py).

The transcript fixture is built from the public formats listed in
tests/fixtures/claude-hooks/SOURCES.md; other cases are lines shaped like it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from mlx_stream_tts import transcript as transcript_module
from mlx_stream_tts.claude import is_error_text
from mlx_stream_tts.transcript import TranscriptFollower, is_user_prompt

FIXTURES = Path(__file__).parent / "fixtures" / "claude-hooks"
TURN_1 = ["It turns English text into spoken Japanese.\n\n"]
TURN_2 = [
    "The build compiles two C kernels.\n\n",
    "Then it converts the models.\n\n",
    "All 12 tests pass.\nNothing else to fix.\n\n",
]


def fixture_lines() -> list[bytes]:
    return (FIXTURES / "transcript_two_turns.jsonl").read_bytes().splitlines(keepends=True)


def line(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def assistant(uuid: str, mid: str, *blocks: dict, **extra) -> bytes:
    return line(
        {
            "type": "assistant",
            "uuid": uuid,
            "isSidechain": False,
            "timestamp": "2026-08-20T10:00:00.000Z",
            "message": {"id": mid, "role": "assistant", "model": "m", "content": list(blocks)},
            **extra,
        }
    )


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def prompt(uuid: str, content) -> bytes:
    return line({"type": "user", "uuid": uuid, "message": {"role": "user", "content": content}})


def test_whole_fixture_speaks_main_thread_text_once_in_order(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(fixture_lines()))
    follower = TranscriptFollower(path)
    pieces = follower.read_new()
    assert pieces == TURN_1 + TURN_2
    spoken = "".join(pieces)
    for never in ("SECRET", "TOOL OUTPUT", "SUBAGENT", "No response", "Explain the build", "pytest"):
        assert never not in spoken
    assert follower.read_new() == []  # nothing new: nothing again


def test_lines_one_at_a_time_give_the_same_pieces(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"")
    follower = TranscriptFollower(path)
    pieces = []
    for raw in fixture_lines():
        with path.open("ab") as f:
            f.write(raw)
        pieces += follower.read_new()
    assert pieces == TURN_1 + TURN_2


def test_partial_last_line_waits_for_its_newline(tmp_path):
    path = tmp_path / "t.jsonl"
    raw = assistant("a1", "m1", text("Hello there."))
    path.write_bytes(raw[:25])
    follower = TranscriptFollower(path)
    assert follower.read_new() == []
    with path.open("ab") as f:
        f.write(raw[25:-1])  # all but the newline: still being written
    assert follower.read_new() == []
    with path.open("ab") as f:
        f.write(b"\n")
    assert follower.read_new() == ["Hello there.\n\n"]


def test_skip_to_end_keeps_old_turns_quiet(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = fixture_lines()
    path.write_bytes(b"".join(lines[:3]))  # turn 1 only
    follower = TranscriptFollower(path)
    follower.skip_to_end()
    assert follower.read_new() == []
    with path.open("ab") as f:
        f.write(b"".join(lines[3:]))
    assert follower.read_new() == TURN_2


def test_skip_to_end_keeps_a_half_written_line(tmp_path):
    path = tmp_path / "t.jsonl"
    raw = assistant("a1", "m1", text("Late words."))
    path.write_bytes(prompt("u1", "hi") + raw[:10])
    follower = TranscriptFollower(path)
    follower.skip_to_end()
    with path.open("ab") as f:
        f.write(raw[10:])
    assert follower.read_new() == ["Late words.\n\n"]


def test_not_before_drops_late_writes_of_the_previous_turn(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"")
    follower = TranscriptFollower(path)
    follower.skip_to_end(not_before=1_787_220_000.0)  # 2026-08-20T10:00:00Z
    old = assistant("a1", "m1", text("Old."), timestamp="2026-08-20T09:59:59.000Z")
    new = assistant("a2", "m2", text("New."), timestamp="2026-08-20T10:00:01.000Z")
    path.write_bytes(old + new)
    assert follower.read_new() == ["New.\n\n"]


@pytest.mark.parametrize(
    "tail",
    [
        b"",  # the whole file is one turn
        b"x",
    ],
)
def test_seek_turn_start_reads_after_the_last_real_prompt(tmp_path, tail):
    path = tmp_path / "t.jsonl"
    lines = fixture_lines()
    path.write_bytes(b"".join(lines))
    follower = TranscriptFollower(path)
    follower.seek_turn_start()
    assert follower.read_new() == TURN_2  # tool results and meta lines are not prompts
    path.write_bytes(b"".join(lines[5:]))  # no prompt at all in the file
    follower = TranscriptFollower(path)
    follower.seek_turn_start()
    assert follower.read_new() == TURN_2


def test_seek_turn_start_scans_back_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(transcript_module, "_SCAN_BLOCK", 64)  # many blocks, lines cut across them
    path = tmp_path / "t.jsonl"
    interrupted = prompt("i1", [text("[Request interrupted by user]")])
    body = prompt("u1", "first") + assistant("a1", "m1", text("One.")) + prompt("u2", "second")
    body += assistant("a2", "m2", text("Two."))
    body += interrupted + assistant("a3", "m3", text("Three."))
    path.write_bytes(body)
    follower = TranscriptFollower(path)
    follower.seek_turn_start()
    assert follower.read_new() == ["Two.\n\n", "Three.\n\n"]


def test_is_user_prompt():
    assert is_user_prompt({"type": "user", "message": {"content": "hi"}})
    assert is_user_prompt({"type": "user", "message": {"content": [text("hi")]}})
    assert not is_user_prompt({"type": "user", "isMeta": True, "message": {"content": "x"}})
    assert not is_user_prompt({"type": "user", "isSidechain": True, "message": {"content": "x"}})
    tool_result = [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]
    assert not is_user_prompt({"type": "user", "message": {"content": tool_result}})
    assert not is_user_prompt({"type": "user", "message": {"content": "[Request interrupted by user]"}})
    assert not is_user_prompt({"type": "assistant", "message": {"content": "hi"}})
    assert not is_user_prompt("garbage")


def test_blocks_of_one_message_are_separate_paragraphs_and_deduplicated(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(
        assistant("a1", "m1", {"type": "thinking", "thinking": "hidden"})
        + assistant("a2", "m1", text("First."))
        + assistant("a3", "m1", {"type": "redacted_thinking", "data": "x"}, text("Second."))
        # the same blocks again under new line uuids (a rewrite): not spoken twice
        + assistant("a4", "m1", text("First."), text("Second."))
        + assistant("a5", "m1", {"type": "tool_use", "id": "t", "name": "Bash", "input": {}})
    )
    assert TranscriptFollower(path).read_new() == ["First.\n\n", "Second.\n\n"]


def error_record(uuid: str, text_value: str | None, code: str = "rate_limit", **extra) -> dict:
    content = [text(text_value)] if text_value is not None else []
    return {
        "type": "assistant",
        "uuid": uuid,
        "isApiErrorMessage": True,
        "error": code,
        "apiErrorStatus": 429,
        "message": {"model": "<synthetic>", "content": content},
        **extra,
    }


ERRORS_FIXTURE = [
    (True, "Please run /login. API Error 401: OAuth access token has expired. Re-authenticate to continue.\n\n"),
    (False, "Looking at the test now.\n\n"),
    (True, "API Error 500: Internal server error.\n\n"),
    (True, "You've hit your session limit. Resets 2pm.\n\n"),
    (True, "Claude Code error: rate limit reached.\n\n"),
]


def marked(pieces: list[str]) -> list[tuple[bool, str]]:
    return [(is_error_text(p), str(p)) for p in pieces]


def test_api_error_records_spoken_as_their_message_once_a_turn(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes((FIXTURES / "transcript_api_errors.jsonl").read_bytes())
    follower = TranscriptFollower(path)
    assert marked(follower.read_new()) == ERRORS_FIXTURE
    assert follower.turn_cue


def test_api_error_fixture_line_by_line_gives_the_same_pieces(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"")
    follower = TranscriptFollower(path)
    pieces = []
    for raw in (FIXTURES / "transcript_api_errors.jsonl").read_bytes().splitlines(keepends=True):
        for cut in (raw[: len(raw) // 2], raw[len(raw) // 2 :]):  # each line written in two parts
            with path.open("ab") as f:
                f.write(cut)
            pieces += follower.read_new()
    assert marked(pieces) == ERRORS_FIXTURE


def test_api_error_record_without_text_is_one_cue(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(line(error_record("e1", None)) + line(error_record("e2", "error")))
    follower = TranscriptFollower(path)
    assert marked(follower.read_new()) == [(True, "Claude Code error: rate limit reached.\n\n")]
    assert follower.turn_cue


def test_api_error_message_after_a_cue_and_same_message_once(tmp_path):
    path = tmp_path / "t.jsonl"
    message = "API Error: Unable to connect to API (ConnectionRefused)"
    path.write_bytes(
        line(error_record("e1", None))
        + line(error_record("e2", message, "server_error"))
        + line(error_record("e3", message, "server_error"))
    )
    follower = TranscriptFollower(path)
    assert marked(follower.read_new()) == [
        (True, "Claude Code error: rate limit reached.\n\n"),
        (True, "API Error: Unable to connect to API (connection refused).\n\n"),
    ]


def test_new_turn_hears_the_same_error_again(tmp_path):
    path = tmp_path / "t.jsonl"
    record = error_record("e1", "Not logged in · Please run /login", "authentication_failed")
    path.write_bytes(line(record))
    follower = TranscriptFollower(path)
    assert marked(follower.read_new()) == [(True, "Not logged in. Please run /login.\n\n")]
    with path.open("ab") as f:  # the same prompt retried: a new turn in the same read
        f.write(prompt("u9", "Try again.") + line({**record, "uuid": "e2"}))
    assert marked(follower.read_new()) == [(True, "Not logged in. Please run /login.\n\n")]
    follower.skip_to_end()
    assert not follower.turn_cue
    with path.open("ab") as f:
        f.write(line({**record, "uuid": "e3"}))
    assert len(follower.read_new()) == 1


def test_synthetic_record_that_is_not_an_error_is_not_spoken(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(line({"type": "assistant", "uuid": "s1", "isApiErrorMessage": False,
                           "message": {"model": "<synthetic>", "content": [text("No response requested.")]}}))
    assert TranscriptFollower(path).read_new() == []


def test_garbage_binary_and_wrong_types_are_skipped_and_logged(tmp_path, caplog):
    path = tmp_path / "t.jsonl"
    junk = bytes(range(256)) * 4
    path.write_bytes(
        b"not json at all\n"
        + junk.replace(b"\n", b"") + b"\n"
        + b'{"type":"assistant","message":"oops"}\n'
        + b'{"type":"assistant","message":{"content":[{"type":"text","text":7}, "x", null]}}\n'
        + b'{"type":"assistant", broken\n'
        + b'["assistant"]\n'
        + b'{"type":"assistant","uuid":"u","message":{"id":"m","content":"Still here \xff."}}\n'
    )
    with caplog.at_level(logging.WARNING, logger="mlx_stream_tts.transcript"):
        pieces = TranscriptFollower(path).read_new()
    assert pieces == ["Still here \ufffd.\n\n"]
    assert "not JSON" in caplog.text


def test_missing_file_is_logged_once_then_followed_when_it_appears(tmp_path, caplog):
    path = tmp_path / "later.jsonl"
    follower = TranscriptFollower(path)
    with caplog.at_level(logging.WARNING, logger="mlx_stream_tts.transcript"):
        assert follower.read_new() == []
        assert follower.read_new() == []
    assert caplog.text.count("cannot read") == 1
    path.write_bytes(assistant("a1", "m1", text("Now.")))
    assert follower.read_new() == ["Now.\n\n"]


def test_truncated_file_is_read_again_without_repeating(tmp_path, caplog):
    path = tmp_path / "t.jsonl"
    first = assistant("a1", "m1", text("Once."))
    path.write_bytes(prompt("u1", "hi") + first + assistant("a2", "m2", text("Twice.")))
    follower = TranscriptFollower(path)
    assert follower.read_new() == ["Once.\n\n", "Twice.\n\n"]
    path.write_bytes(prompt("u1", "hi") + first)  # shorter than the offset
    with caplog.at_level(logging.WARNING, logger="mlx_stream_tts.transcript"):
        assert follower.read_new() == []
    assert "truncated" in caplog.text
    with path.open("ab") as f:
        f.write(assistant("a3", "m3", text("New.")))
    assert follower.read_new() == ["New.\n\n"]


def test_replaced_file_is_followed(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(prompt("u1", "hi") + assistant("a1", "m1", text("Old.")))
    follower = TranscriptFollower(path)
    follower.skip_to_end()
    other = tmp_path / "new.jsonl"
    other.write_bytes(prompt("u2", "again") + assistant("a2", "m2", text("Fresh.")))
    os.replace(other, path)  # same size or not, another inode
    assert follower.read_new() == ["Fresh.\n\n"]


def test_huge_backlog_is_read_in_chunks_from_the_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(transcript_module, "READ_CHUNK", 4096)
    path = tmp_path / "t.jsonl"
    filler = line({"type": "user", "message": {"content": [{"type": "tool_result", "content": "z" * 900}]}})
    path.write_bytes(filler * 200 + assistant("a1", "m1", text("End.")))
    follower = TranscriptFollower(path)
    reads = 0
    pieces: list[str] = []
    while not pieces and reads < 1000:
        pieces = follower.read_new()
        reads += 1
    assert pieces == ["End.\n\n"]
    assert reads > 10  # bounded reads, each starting where the last one stopped
    assert follower.offset == path.stat().st_size


def test_line_longer_than_a_chunk_is_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(transcript_module, "READ_CHUNK", 1024)
    path = tmp_path / "t.jsonl"
    long_text = "word " * 2000
    path.write_bytes(assistant("a1", "m1", text(long_text)) + assistant("a2", "m2", text("After.")))
    pieces = TranscriptFollower(path).read_new()
    assert pieces[0] == long_text + "\n\n"


def test_over_long_line_is_dropped(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(transcript_module, "READ_CHUNK", 1024)
    monkeypatch.setattr(transcript_module, "MAX_LINE_BYTES", 4096)
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"type":"assistant",' + b"x" * 10_000)
    follower = TranscriptFollower(path)
    with caplog.at_level(logging.WARNING, logger="mlx_stream_tts.transcript"):
        assert follower.read_new() == []
        with path.open("ab") as f:
            f.write(b"x" * 5000 + b"\n" + assistant("a1", "m1", text("Next.")))
        pieces: list[str] = []
        for _ in range(10):  # the rest of the long line is skipped in bounded steps
            pieces += follower.read_new()
    assert pieces == ["Next.\n\n"]
    assert "longer than" in caplog.text


def test_covers_and_remainder_of_the_stop_text(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(assistant("a1", "m1", text("Look here.")) + assistant("a2", "m2", text("Part one.")))
    follower = TranscriptFollower(path)
    follower.read_new()
    assert follower.covers("Part one.")
    assert follower.covers("Look here.\n\nPart one.")
    assert follower.covers("one.")  # the last words
    assert not follower.covers("art one.")  # word boundary, not a suffix of a word
    assert not follower.covers("Part one.\n\nPart two.")
    assert follower.remainder("Part one.\n\nPart two.") == "Part two."
    assert follower.remainder("Something else.") == "Something else."
    follower.note_spoken("Part one.\n\nPart two.")
    assert follower.covers("Part one.\n\nPart two.")
    with path.open("ab") as f:  # the lagging transcript catches up: not spoken again
        f.write(assistant("a3", "m3", text("Part two.")))
    assert follower.read_new() == []
