"""`speak --dry-run` prints exactly what speech says: the same inputs through `--dry-run` and through the
pipeline with a voice (a fake one that records what it is asked to say) give the same sentences."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_stream_tts.pipeline import Pipeline
from mlx_stream_tts.source import iter_text

from fakes import FakeVoice
from nllb_fixtures import get_converted

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = sorted((ROOT / "tests" / "fixtures" / "stream-json").glob("*.jsonl")) + sorted(
    (ROOT / "examples").glob("claude_session_en.jsonl"))

MARKDOWN = (
    "# Plan\n\nI'll read `main.py` first, then run **all** the tests.\n\n"
    "```bash\npytest -q\n```\n\n"
    "```python\nx = compute(1, 2)\nprint(x)\n```\n\n"
    "- Fix the parser.\n- Update the docs at https://example.com/docs.\n\n"
    "| file | status |\n|---|---|\n| a.py | ok |\n\nDone. Version v2.1.0 is out.\n"
).encode()


def dry_run(data: bytes, *args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "mlx_stream_tts", "speak", "-", "--dry-run", *args], input=data,
                          capture_output=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc.stdout.decode().splitlines()


def spoken(data: bytes, translator=None, lang: str = "en") -> list[str]:
    """What a voice is asked to say for ``data``, through the pipeline as `speak` builds it."""
    voice = FakeVoice(chunks=1, chunk_len=4)
    with Pipeline(translator=translator, voice=voice, lang=lang, sentence_gap=0, early_start=False) as p:
        for piece in iter_text(io.BytesIO(data), "auto"):
            p.feed(piece)
    return voice.texts


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_dry_run_is_what_is_spoken_without_translation(path):
    data = path.read_bytes()
    assert dry_run(data, "--to", "none", "--lang", "en") == spoken(data)


def test_dry_run_is_what_is_spoken_for_markdown_and_code():
    said = spoken(MARKDOWN)
    assert dry_run(MARKDOWN, "--to", "none", "--lang", "en") == said
    # The two code blocks: the one-line command is read, the statement block is the cue.
    assert "pytest -q" in said and any("コード" in s for s in said)


@pytest.mark.slow
def test_dry_run_is_what_is_spoken_with_the_translator(tmp_path_factory):
    from mlx_stream_tts.spans import ProtectedTranslator
    from mlx_stream_tts.translate import Translator

    model = get_converted(tmp_path_factory, "d20gelu")
    translator = ProtectedTranslator(Translator.load(model))  # as `speak` wraps it (no cache in tests)
    data = MARKDOWN
    said = spoken(data, translator=translator)
    printed = dry_run(data, "--model-dir", str(model))
    assert printed == said
    # Cues in the target language, spans back verbatim whatever the tiny model made of the rest.
    assert any("コード" in s for s in said)
    assert any("main.py" in s for s in said) and any("v2.1.0" in s for s in said)
