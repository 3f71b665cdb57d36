"""Tests for the Claude Code hooks (mlx_stream_tts/hooks.py): payloads, settings, sessions.

Payload and transcript fixtures follow the documented formats (tests/fixtures/claude-hooks/SOURCES.md).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlx_stream_tts.hooks import (
    DEFAULT_COMMAND,
    HOOK_EVENTS,
    HookSessions,
    install,
    read_payload,
    settings_path,
    slim_payload,
    uninstall,
)

FIXTURES = Path(__file__).parent / "fixtures" / "claude-hooks"
ROOT = Path(__file__).parent.parent
POLL = 0.02
TURN_2 = (
    "The build compiles two C kernels.\n\n"
    "Then it converts the models.\n\n"
    "All 12 tests pass.\nNothing else to fix.\n\n"
)


# When the fixture's second prompt was submitted (its "u2" line): records before it are older turns.
TURN_2_SUBMITTED = 1_787_220_060.0  # 2026-08-20T10:01:00Z


def payload(name: str, transcript: Path) -> dict:
    raw = (FIXTURES / f"payload_{name}.json").read_bytes()
    data = read_payload(raw.replace(b"__TRANSCRIPT__", str(transcript).encode()))
    assert data is not None
    if name == "user_prompt_submit":
        data = slim_payload(data)  # as the hook sends it: stamped with the time it ran
    return data


def fixture_prompt(transcript: Path) -> dict:
    """The fixture's second prompt, stamped with the time it was submitted."""
    return {**payload("user_prompt_submit", transcript), "sent_at": TURN_2_SUBMITTED}


def fixture_lines() -> list[bytes]:
    return (FIXTURES / "transcript_two_turns.jsonl").read_bytes().splitlines(keepends=True)


def assistant_line(uuid: str, mid: str, text: str, stamp: str = "2099-01-01T00:00:00.000Z") -> bytes:
    obj = {
        "type": "assistant",
        "uuid": uuid,
        "timestamp": stamp,
        "isSidechain": False,
        "message": {"id": mid, "role": "assistant", "content": [{"type": "text", "text": text}]},
    }
    return (json.dumps(obj) + "\n").encode()


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


class Recorder:
    """Collects the callbacks' calls, in order, and waits for conditions on them."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self._cond = threading.Condition()

    def _add(self, *call) -> None:
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()

    def on_text(self, sid: str, text: str) -> None:
        self._add("text", sid, text)

    def on_interrupt(self, sid: str) -> None:
        self._add("interrupt", sid)

    def on_turn_end(self, sid: str) -> None:
        self._add("end", sid)

    def text(self) -> str:
        with self._cond:
            return "".join(c[2] for c in self.calls if c[0] == "text")

    def wait(self, predicate, timeout: float = 3.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)


@pytest.fixture
def sessions():
    made: list[HookSessions] = []

    def make(recorder: Recorder, **kw) -> HookSessions:
        hs = HookSessions(
            recorder.on_text, recorder.on_interrupt, recorder.on_turn_end, poll=POLL, **kw
        )
        made.append(hs)
        return hs

    yield make
    for hs in made:
        hs.close()


# ----------------------------------------------------------------------------------- payloads


@pytest.mark.parametrize(
    "name",
    [
        "user_prompt_submit",
        "stop",
        "stop_hook_active",
        "subagent_stop",
        "stop_failure",
        "session_end",
    ],
)
def test_fixture_payloads_parse(name, tmp_path):
    data = payload(name, tmp_path / "t.jsonl")
    assert data["session_id"] == "00893aaf-19fa-41d2-8238-13269b9b3ca0"
    assert data["transcript_path"] == str(tmp_path / "t.jsonl")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        b'"Stop"',
        b'{"hook_event_name": 3, "session_id": "s"}',
        b'{"hook_event_name": "Stop"}',
        b'{"hook_event_name": "Stop", "session_id": ""}',
        b"{" * 100_000,
    ],
)
def test_bad_payloads_are_none_and_logged(raw, caplog):
    with caplog.at_level(logging.WARNING, logger="mlx_stream_tts.hooks"):
        assert read_payload(raw) is None
    assert "hook:" in caplog.text


def test_slim_payload_keeps_what_the_service_uses(tmp_path):
    data = payload("stop", tmp_path / "t.jsonl")
    slim = slim_payload(data)
    assert slim["last_assistant_message"] == data["last_assistant_message"]
    assert slim["stop_hook_active"] is False
    assert "background_tasks" not in slim and "permission_mode" not in slim
    assert abs(slim["sent_at"] - time.time()) < 5


def test_hook_module_imports_no_numpy_or_mlx_and_is_quick():
    code = (
        "import sys, time; t = time.perf_counter(); import mlx_stream_tts.hooks; "
        "dt = time.perf_counter() - t; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'mlx', 'orjson')]; "
        "print(heavy, dt)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    heavy, seconds = out.stdout.rsplit(" ", 1)
    assert heavy == "[]"
    assert float(seconds) < 0.5  # import only; well under the hook's budget on a quiet machine


# ------------------------------------------------------------------------------ settings file


def test_settings_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert settings_path(False) == tmp_path / "home" / ".claude" / "settings.json"
    assert settings_path(True, cwd=tmp_path / "proj") == tmp_path / "proj" / ".claude" / "settings.json"
    monkeypatch.chdir(tmp_path)
    assert settings_path(True) == tmp_path / ".claude" / "settings.json"
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "cfg"))
    assert settings_path(False) == tmp_path / "cfg" / "settings.json"


def test_install_creates_the_file_and_is_idempotent(tmp_path):
    path = tmp_path / ".claude" / "settings.json"
    assert install(path) is True
    first = path.read_bytes()
    settings = json.loads(first)
    assert list(settings["hooks"]) == list(HOOK_EVENTS)
    for event in HOOK_EVENTS:
        assert settings["hooks"][event] == [
            {"hooks": [{"type": "command", "command": DEFAULT_COMMAND, "timeout": 5}]}
        ]
    assert install(path) is False
    assert path.read_bytes() == first
    assert not [p for p in path.parent.iterdir() if p.name != "settings.json"]  # no temp files


def test_install_keeps_other_settings_and_hooks(tmp_path):
    path = tmp_path / "settings.json"
    theirs = {
        "model": "opus",
        "permissions": {"allow": ["Bash(git *)"]},
        "hooks": {
            "Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}],
            "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "guard"}]}],
        },
    }
    path.write_text(json.dumps(theirs))
    path.chmod(0o600)
    assert install(path, command="/opt/bin/mlx-stream-tts hook") is True
    settings = json.loads(path.read_text())
    assert settings["model"] == "opus" and settings["permissions"] == theirs["permissions"]
    assert settings["hooks"]["PreToolUse"] == theirs["hooks"]["PreToolUse"]
    assert settings["hooks"]["Stop"][0] == theirs["hooks"]["Stop"][0]
    assert settings["hooks"]["Stop"][1]["hooks"][0]["command"] == "/opt/bin/mlx-stream-tts hook"
    assert path.stat().st_mode & 0o777 == 0o600
    assert install(path, command="/opt/bin/mlx-stream-tts hook") is False
    assert uninstall(path, command="/opt/bin/mlx-stream-tts hook") is True
    assert json.loads(path.read_text()) == theirs
    assert uninstall(path, command="/opt/bin/mlx-stream-tts hook") is False


def test_uninstall_of_a_fresh_install_leaves_no_hooks_key(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"model": "opus"}')
    install(path)
    assert uninstall(path) is True
    assert json.loads(path.read_text()) == {"model": "opus"}


@pytest.mark.parametrize(
    "text",
    ['{"model": "opus",', "[1, 2]", '{"hooks": []}', '{"hooks": {"Stop": {}}}'],
)
def test_install_refuses_a_file_it_cannot_edit(tmp_path, text):
    path = tmp_path / "settings.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="unchanged"):
        install(path)
    assert path.read_text() == text


def test_install_accepts_an_empty_file(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("\n")
    assert install(path) is True
    assert set(json.loads(path.read_text())["hooks"]) == set(HOOK_EVENTS)


# ------------------------------------------------------------------------------ service side


def test_prompt_then_growing_transcript_then_stop(tmp_path, sessions):
    path = tmp_path / "t.jsonl"
    lines = fixture_lines()
    path.write_bytes(b"".join(lines[:4]))  # turn 1 is already there: never spoken
    rec = Recorder()
    hs = sessions(rec)
    hs.handle(fixture_prompt(path))
    assert rec.calls[0] == ("interrupt", "00893aaf-19fa-41d2-8238-13269b9b3ca0")

    def writer() -> None:
        for raw in lines[4:]:
            append(path, raw)
            time.sleep(POLL / 2)

    started = time.monotonic()
    thread = threading.Thread(target=writer)
    thread.start()
    # The first block is heard while the turn is still being written, within a few polls.
    assert rec.wait(lambda r: "two C kernels" in r.text())
    assert time.monotonic() - started < 1.0
    thread.join()
    assert rec.wait(lambda r: "Nothing else" in r.text())
    assert not any(c[0] == "end" for c in rec.calls)
    hs.handle(payload("stop", path))
    assert rec.wait(lambda r: r.calls[-1][0] == "end")
    assert rec.text() == TURN_2
    assert [c[0] for c in rec.calls].count("end") == 1


def test_stop_alone_speaks_the_turn_and_nothing_earlier(tmp_path, sessions):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(fixture_lines()))
    rec = Recorder()
    hs = sessions(rec)
    hs.handle(payload("stop", path))
    assert rec.wait(lambda r: r.calls and r.calls[-1][0] == "end")
    assert rec.text() == TURN_2
    assert not any(c[0] == "interrupt" for c in rec.calls)
    # A repeated Stop (another hook made Claude go on) says only what is new. (Its
    # last_assistant_message, an earlier block of the turn, was spoken already: not again.)
    append(path, assistant_line("a9", "msg_more", "One more thing."))
    hs.handle(payload("stop_hook_active", path))
    assert rec.wait(lambda r: [c[0] for c in r.calls].count("end") == 2)
    assert rec.text() == TURN_2 + "One more thing.\n\n"


def test_new_prompt_interrupts_and_old_text_stays_quiet(tmp_path, sessions):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"")
    rec = Recorder()
    hs = sessions(rec)
    hs.handle(payload("user_prompt_submit", path))
    append(path, assistant_line("a1", "m1", "First answer."))
    assert rec.wait(lambda r: "First answer." in r.text())
    # The previous turn's end lands in the file only after the next prompt (asynchronous writes):
    # its timestamp is older than the prompt, so it is not spoken in the new turn.
    hs.handle(payload("user_prompt_submit", path))
    append(path, assistant_line("a2", "m2", "Late old words.", stamp="2020-01-01T00:00:00.000Z"))
    append(path, assistant_line("a3", "m3", "Second answer."))
    assert rec.wait(lambda r: "Second answer." in r.text())
    kinds = [c[0] for c in rec.calls]
    assert kinds.count("interrupt") == 2
    assert kinds.index("interrupt", 1) < len(kinds) - 1
    assert "Late old words." not in rec.text()


def test_subagent_stop_speaks_nothing(tmp_path, sessions):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(fixture_lines()))
    rec = Recorder()
    hs = sessions(rec)
    hs.handle(payload("subagent_stop", path))
    time.sleep(10 * POLL)
    assert rec.calls == []


def test_lagging_transcript_speaks_the_stop_text_once(tmp_path, sessions):
    path = tmp_path / "t.jsonl"
    lines = fixture_lines()
    last = lines[14]
    assert b"All 12 tests pass" in last
    path.write_bytes(b"".join(lines[:14]))
    rec = Recorder()
    hs = sessions(rec, stop_grace=5 * POLL)
    hs.handle(fixture_prompt(path))
    append(path, b"".join(lines[4:14]))
    assert rec.wait(lambda r: "converts the models" in r.text())
    hs.handle(payload("stop", path))  # the final message is not in the file yet
    assert rec.wait(lambda r: r.calls[-1][0] == "end")
    assert rec.text() == TURN_2
    append(path, last)  # the file catches up later: not said twice
    time.sleep(10 * POLL)
    assert rec.text() == TURN_2


def test_stop_waits_briefly_for_a_lagging_transcript(tmp_path, sessions):
    path = tmp_path / "t.jsonl"
    lines = fixture_lines()
    path.write_bytes(b"".join(lines[:14]))
    rec = Recorder()
    hs = sessions(rec, stop_grace=2.0)
    hs.handle(payload("stop", path))
    time.sleep(3 * POLL)
    append(path, lines[14])  # arrives within the grace period: spoken from the file
    assert rec.wait(lambda r: r.calls and r.calls[-1][0] == "end")
    assert rec.text() == TURN_2


def test_stop_failure_speaks_the_message_claude_code_showed(tmp_path, sessions):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"")
    rec = Recorder()
    hs = sessions(rec)
    hs.handle(payload("user_prompt_submit", path))
    append(path, assistant_line("a1", "m1", "Starting."))
    assert rec.wait(lambda r: "Starting." in r.text())
    hs.handle(payload("stop_failure", path))
    assert rec.wait(lambda r: r.calls[-1][0] == "end")
    # The message the user saw (last_assistant_message), marked as an error the input reported.
    assert rec.text() == "Starting.\n\n\n\nAPI Error: Rate limit reached.\n\n"
    from mlx_stream_tts.claude import is_error_text

    assert rec.calls[-2][0] == "text" and is_error_text(rec.calls[-2][2])


def test_stop_failure_without_words_gives_the_cue(tmp_path, sessions):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"")
    rec = Recorder()
    hs = sessions(rec)
    hs.handle(payload("user_prompt_submit", path))
    bare = dict(payload("stop_failure", path), error_details="", last_assistant_message="")
    hs.handle(bare)
    assert rec.wait(lambda r: r.calls and r.calls[-1][0] == "end")
    assert "Claude Code error: rate limit reached." in rec.text()


def test_session_end_stops_following(tmp_path, sessions):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"")
    rec = Recorder()
    hs = sessions(rec)
    hs.handle(payload("user_prompt_submit", path))
    hs.handle(payload("session_end", path))
    time.sleep(5 * POLL)
    append(path, assistant_line("a1", "m1", "After the end."))
    time.sleep(10 * POLL)
    assert "After the end." not in rec.text()


def test_bad_payloads_and_missing_transcripts_do_not_raise(tmp_path, sessions, caplog):
    rec = Recorder()
    hs = sessions(rec)
    with caplog.at_level(logging.WARNING):
        hs.handle("garbage")  # type: ignore[arg-type]
        hs.handle({})
        hs.handle({"hook_event_name": "Stop", "session_id": "s"})  # no transcript_path
        hs.handle({"hook_event_name": "Stop", "session_id": "s", "transcript_path": 5})
        hs.handle({"hook_event_name": "Stop", "session_id": "s", "transcript_path": 5})
        # A transcript that does not exist: the Stop payload's own text is all there is to say.
        hs.handle(payload("stop", tmp_path / "missing.jsonl"))
        assert rec.wait(lambda r: r.calls and r.calls[-1][0] == "end")
    assert rec.text() == "All 12 tests pass.\nNothing else to fix.\n\n"
    assert "cannot read" in caplog.text


def test_handle_returns_at_once_while_on_text_blocks(tmp_path, sessions):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(fixture_lines()))
    release = threading.Event()
    rec = Recorder()

    def slow_text(sid: str, text: str) -> None:
        release.wait(5)
        rec.on_text(sid, text)

    hs = HookSessions(slow_text, rec.on_interrupt, rec.on_turn_end, poll=POLL)
    try:
        start = time.monotonic()
        hs.handle(payload("stop", path))
        hs.handle(payload("user_prompt_submit", path))
        assert time.monotonic() - start < 0.2
        release.set()
        # The new prompt came while the old turn was being said: the rest of it is dropped.
        assert rec.wait(lambda r: any(c[0] == "interrupt" for c in r.calls))
        time.sleep(10 * POLL)
        assert len(rec.text()) < len(TURN_2)
    finally:
        release.set()
        hs.close()


def test_close_stops_the_threads(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"")
    rec = Recorder()
    hs = HookSessions(rec.on_text, rec.on_interrupt, rec.on_turn_end, poll=POLL)
    before = threading.active_count()
    hs.handle(payload("user_prompt_submit", path))
    assert threading.active_count() == before + 1
    hs.close()
    assert threading.active_count() == before
    hs.handle(payload("user_prompt_submit", path))  # after close: ignored, no thread
    assert threading.active_count() == before
