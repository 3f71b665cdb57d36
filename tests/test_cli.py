"""The `mlx-stream-tts` command, end to end in subprocesses (no model needed: --dry-run / --no-voice)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_stream_tts.cli import main
from mlx_stream_tts.source import iter_text

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "stream-json"

# Per capture: phrases a listener must hear exactly once (SOURCES.md), and what must not be heard.
HEAR = {
    "01_plain_text_ok": ["ok"],
    "04_partial_haiku_text_deltas": ["Silent print statement", "reveals the hidden truth now", "off by one, again"],
    "05_thinking_three_bash_tools": [
        "Here are three ways to reverse a string in Python",
        "The most Pythonic and concise approach.",
        "Uses the built-in reversed",
        "3. Loop accumulation",
        "Manual reversal by iterating in reverse.",
        "Let me test each one",
        "All three pass.",
        "Fastest, most idiomatic",
        "Readable, lazy iterator",
        "least efficient",
        "For production code, s[::-1] is the standard choice.",
    ],
    "07_partial_hello_minimal": ["hello"],
    "08_partial_tool_input_json_delta": ["Listed contents of the working directory."],
    "12_parallel_tool_calls": ["Done."],
    "13_subagent_multi_result": [
        "Subagent launched successfully.",
        "It will run echo subagent-ran in the background and I'll receive a notification when it completes.",
        "Done.",
        "The subagent completed successfully.",
        "The output of running echo subagent-ran is",
    ],
}
NOT_HEAR = {
    "05_thinking_three_bash_tools": ["✓", "def ", "python3", "signature"],
    "08_partial_tool_input_json_delta": ["ls -la", "drwx", "total "],
    "13_subagent_multi_result": ["The command executed successfully", "Here's the output"],
}


def run_cli(*args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlx_stream_tts", *args],
        input=stdin, capture_output=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def test_every_fixture_dry_run_hears_each_phrase_once():
    for name, phrases in HEAR.items():
        proc = run_cli("speak", str(FIXTURES / f"{name}.jsonl"), "--dry-run")
        assert proc.returncode == 0, proc.stderr.decode()
        out = proc.stdout.decode()
        spoken = " ".join(out.split())
        for phrase in phrases:
            assert spoken.count(phrase) == 1, (name, phrase, out)
        for phrase in NOT_HEAR.get(name, []):
            assert phrase not in spoken, (name, phrase, out)
        # One sentence per line, nothing blank.
        assert all(line.strip() for line in out.splitlines()), out


def test_subagent_output_line_heard_once():
    # Capture 13 ends with a one-line code block holding the command's output: it is read, once.
    proc = run_cli("speak", str(FIXTURES / "13_subagent_multi_result.jsonl"), "--dry-run")
    lines = proc.stdout.decode().splitlines()
    assert lines.count("subagent-ran") == 1, lines


def test_stdin_plain_text_and_auto_detection():
    proc = run_cli("speak", "-", "--dry-run", stdin=b"Hello there. This is **plain** text.\nNext line")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == ["Hello there.", "This is plain text.", "Next line"]


def test_same_file_read_as_stream_json_and_text_differs():
    path = str(FIXTURES / "07_partial_hello_minimal.jsonl")
    as_json = run_cli("speak", path, "--dry-run", "--format", "stream-json").stdout.decode()
    as_text = run_cli("speak", path, "--dry-run", "--format", "text").stdout.decode()
    assert as_json.split() == ["hello"]
    assert '"type"' in as_text  # plain-text mode reads the raw lines


def test_garbage_input_never_crashes():
    # Lines that are not stream-json (or not what the reader knows) are skipped, never a crash.
    garbage = b"\xff\xfe{{{\n{not json\n" + b'{"type": "assistant", "message": 5}\n' + b"[1, 2]\n"
    proc = run_cli("speak", "-", "--dry-run", "--format", "stream-json", stdin=garbage)
    assert proc.returncode == 0, proc.stderr.decode()
    # The stream ended with no result: that is spoken as an error cue, not swallowed.
    assert "Claude Code" in proc.stdout.decode()
    proc = run_cli("speak", "-", "--dry-run", stdin=garbage)
    assert proc.returncode == 0, proc.stderr.decode()
    # Binary bytes are refused with a clear message (exit 2), in either format.
    binary = bytes(range(256)) * 50 + garbage
    for fmt in ("stream-json", "auto"):
        proc = run_cli("speak", "-", "--dry-run", "--format", fmt, stdin=binary)
        assert proc.returncode == 2 and b"input looks binary" in proc.stderr and b"Traceback" not in proc.stderr


def test_empty_input():
    proc = run_cli("speak", "-", "--dry-run", stdin=b"")
    assert proc.returncode == 0 and proc.stdout == b""


def test_subtitles_without_models_keep_order():
    text = "".join(f"Sentence number {i} is here. " for i in range(50)).encode()
    proc = run_cli("speak", "-", "--to", "none", "--lang", "en", "--no-voice", "--no-play", "--text", stdin=text)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == [f"Sentence number {i} is here." for i in range(50)]


def test_missing_file_and_bad_usage():
    proc = run_cli("speak", "/nonexistent/file.jsonl", "--dry-run")
    assert proc.returncode != 0 and b"cannot read" in proc.stderr
    proc = run_cli("speak", "--pcm", "--out", "x.wav")
    assert proc.returncode == 2 and b"exclusive" in proc.stderr
    proc = run_cli("speak", "--speed", "0")
    assert proc.returncode == 2


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0 and b"speak" in proc.stdout and b"convert" in proc.stdout
    proc = run_cli("convert", "--help")
    assert proc.returncode == 0 and b"nllb" in proc.stdout and b"kokoro" in proc.stdout


def test_iter_text_on_in_memory_streams_and_split_utf8():
    data = "こんにちは。世界。".encode()
    stream = io.BytesIO(data)
    assert "".join(iter_text(stream, "text")) == "こんにちは。世界。"
    json_stream = io.BytesIO((FIXTURES / "01_plain_text_ok.jsonl").read_bytes())
    assert "".join(iter_text(json_stream)).strip() == "ok"


def test_main_dry_run_in_process(capsys):
    assert main(["speak", str(FIXTURES / "12_parallel_tool_calls.jsonl"), "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["Done."]


@pytest.mark.parametrize("flag", ["--tools"])
def test_tool_summaries_flag(flag):
    proc = run_cli("speak", str(FIXTURES / "08_partial_tool_input_json_delta.jsonl"), "--dry-run", flag)
    out = proc.stdout.decode()
    assert "Running Bash" in out and "Listed contents of the working directory." in out


def test_missing_translator_model_says_how_to_convert(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_stream_tts", "speak", "-", "--no-play"],
        input=b"Hello there.", capture_output=True, timeout=120, cwd=ROOT,
        env={**os.environ, "MLX_STREAM_TTS_CACHE": str(tmp_path)},
    )
    assert proc.returncode != 0
    assert b"mlx-stream-tts convert nllb" in proc.stderr


def test_unknown_target_language_lists_close_matches():
    proc = run_cli("speak", "-", "--no-play", "--to", "jpn_Japn", stdin=b"Hello.")
    assert proc.returncode != 0 and b"jpn_Jpan" in proc.stderr


def test_no_voice_never_opens_the_sound_card(tmp_path, monkeypatch, capsys):
    from mlx_stream_tts import audio

    def no_device(*args, **kwargs):
        raise audio.AudioDeviceError("no sound card here")

    monkeypatch.setattr(audio, "SoundDeviceSink", no_device)
    text = tmp_path / "in.txt"
    text.write_text("One sentence here. Another one there.\n")
    # Subtitles only, without --no-play: nothing is played, so no device is needed.
    assert main(["speak", str(text), "--to", "none", "--lang", "en", "--no-voice", "--text"]) == 0
    assert capsys.readouterr().out.splitlines() == ["One sentence here.", "Another one there."]


def test_failed_sentences_give_a_nonzero_exit_and_a_count(tmp_path, monkeypatch, capsys, caplog):
    import logging

    from fakes import FakeVoice

    from mlx_stream_tts import voice as voice_module

    monkeypatch.setattr(voice_module.Voice, "load", classmethod(lambda cls, *a, **k: FakeVoice(fail_on="broken")))
    text = tmp_path / "in.txt"
    out = tmp_path / "out.wav"
    text.write_text("This one is fine. This one is broken. This one is fine too.\n")
    with caplog.at_level(logging.WARNING):
        code = main(["speak", str(text), "--to", "none", "--lang", "en", "--out", str(out)])
    assert code == 1
    assert "1 of 3 sentences could not be spoken" in capsys.readouterr().err
    failures = [r for r in caplog.records if "broken" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(failures) == 1, [r.getMessage() for r in failures]  # logged once, not twice
    text.write_text("All of these are fine. Really fine.\n")
    assert main(["speak", str(text), "--to", "none", "--lang", "en", "--out", str(out)]) == 0
    assert out.exists()


def test_every_sentence_failing_leaves_no_wav_and_a_nonzero_exit(tmp_path, monkeypatch, capsys, caplog):
    import logging

    from fakes import FakeVoice

    from mlx_stream_tts import voice as voice_module

    # Weights that load but make the voice raise on every sentence.
    monkeypatch.setattr(voice_module.Voice, "load", classmethod(lambda cls, *a, **k: FakeVoice(fail_on="")))
    text = tmp_path / "in.txt"
    out = tmp_path / "out.wav"
    text.write_text("One. Two. Three.\n")
    with caplog.at_level(logging.WARNING):
        code = main(["speak", str(text), "--to", "none", "--lang", "en", "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"3 of 3 sentences could not be spoken (see the errors above); no file written at {out}" in err
    assert len([r for r in caplog.records if "cannot voice" in r.getMessage()]) == 3  # each once
    assert os.listdir(tmp_path) == ["in.txt"]  # no empty WAV, no temporary file


def _read_then_close(args: list[str], stdin: bytes, nbytes: int | None = None) -> tuple[int, bytes, bytes, float]:
    """Run the CLI, read its first line (or ``nbytes``) and close the pipe, as `| head` does. Returns the
    exit code, what was read, stderr and the seconds it ran on after the reader left."""
    import time

    proc = subprocess.Popen([sys.executable, "-m", "mlx_stream_tts", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(stdin)
    proc.stdin.close()
    got = proc.stdout.read(nbytes) if nbytes else proc.stdout.readline()
    proc.stdout.close()
    left = time.perf_counter()
    err = proc.stderr.read()
    code = proc.wait(timeout=120)
    return code, got, err, time.perf_counter() - left


@pytest.mark.parametrize("flags", [["--no-voice", "--text"], ["--dry-run"]])
def test_a_reader_that_leaves_stops_the_run_quietly(flags):
    text = "".join(f"Sentence number {i} is here. " for i in range(3000)).encode()
    code, got, err, _ = _read_then_close(["speak", "-", "--to", "none", "--lang", "en", *flags], text)
    assert got == b"Sentence number 0 is here.\n"
    assert code == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()[-2000:]


@pytest.mark.slow
def test_pcm_reader_that_leaves_stops_the_voice_at_once(tmp_path_factory):
    from mlx_stream_tts.cpu import resolve_backend

    if resolve_backend("auto") == "mlx":
        pytest.skip("MLX_STREAM_TTS_BACKEND=mlx: the pure voice's window in flight takes tens of seconds on a CPU, "
                    "and a call in flight is not abandoned yet (issue #12)")
    from convert.kokoro import convert_from_onnx, default_model_dir, is_converted

    voice_dir = default_model_dir()
    if not is_converted(voice_dir):
        voice_dir = convert_from_onnx(tmp_path_factory.mktemp("kokoro"), overwrite=True)
    text = ("テストを実行します。" * 200).encode()  # ~2 minutes of speech
    code, got, err, after = _read_then_close(["speak", "-", "--to", "none", "--pcm", "--voice-dir", str(voice_dir)],
                                             text, nbytes=1000)
    assert len(got) == 1000
    assert code == 0 and b"Traceback" not in err, err.decode()[-2000:]
    assert after < 10, f"synthesized on for {after:.1f} s after the reader left"
