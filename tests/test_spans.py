"""Protected spans (mlx_stream_tts/spans.py): detection precision on agent sentences, restoring whatever the
model writes (drops, copies, reorders, mangles), the ProtectedTranslator wrapper with fakes and with a tiny
random NLLB model, and the restored Japanese read by the reading step."""

from __future__ import annotations

import random
import re

import pytest

from mlx_stream_tts.spans import ProtectedTranslator, Span, find_spans, protect, restore

# (English sentence from a coding agent, the spans expected in it, in order).
TABLE = [
    # files, paths
    ("I'll start by reading main.py.", ["main.py"]),
    ("Let me look at src/app.ts first.", ["src/app.ts"]),
    ("The config lives in ~/.config/claude/settings.json on Linux.", ["~/.config/claude/settings.json"]),
    ("I created tests/test_parser.py with five new cases.", ["tests/test_parser.py"]),
    ("Both package.json and tsconfig.json need the new path alias.", ["package.json", "tsconfig.json"]),
    ("Add the variable to your .env file and restart.", [".env"]),
    ("The Dockerfile now copies the whole repo.", ["Dockerfile"]),
    ("Check C:\\Users\\dev\\project\\build.log for details.", ["C:\\Users\\dev\\project\\build.log"]),
    ("Look in /usr/local/bin for the binary.", ["/usr/local/bin"]),
    ("The generated files go to dist/ and are ignored by git.", ["dist/", "git"]),
    ("I moved the helpers from utils/strings.ts into lib/format.ts.", ["utils/strings.ts", "lib/format.ts"]),
    # identifiers
    ("The bug is in `parse_args()`: it ignores the last flag.", ["`parse_args()`"]),
    ("I renamed getUserById to fetchUser everywhere.", ["getUserById", "fetchUser"]),
    ("The function parse_config returns None when the file is missing.", ["parse_config"]),
    ("It raises a ValueError instead of a KeyError now.", ["ValueError", "KeyError"]),
    ("Call os.path.join instead of concatenating strings.", ["os.path.join"]),
    ("The test calls render(props, state) twice.", ["render(props, state)"]),
    ("Set MAX_RETRIES to a smaller value.", ["MAX_RETRIES"]),
    ("The __init__ method sets self.cache to an empty dict.", ["__init__", "self.cache"]),
    ("Use the @pytest.fixture decorator for shared setup.", ["@pytest.fixture"]),
    ("I exported NODE_ENV=production before building.", ["NODE_ENV=production"]),
    ("The script reads $HOME and ${XDG_CACHE_HOME}.", ["$HOME", "${XDG_CACHE_HOME}"]),
    ("The useEffect hook runs after every render.", ["useEffect"]),
    ("This is handled by the XMLHttpRequest wrapper.", ["XMLHttpRequest"]),
    # commands
    ("Run npm test -- --watch to keep the tests running.", ["npm test -- --watch"]),
    ("I ran rm -rf build and rebuilt from scratch.", ["rm -rf build"]),
    ("Now run `npm install` and then `npm run dev`.", ["`npm install`", "`npm run dev`"]),
    ("You can install it with pip install requests.", ["pip install requests"]),
    ("Let me run git status to see what changed.", ["git status"]),
    ("Use git commit -m \"fix parser\" when you are ready.", ["git commit -m \"fix parser\""]),
    ("Run go test ./... before pushing.", ["go test ./..."]),
    ("Try python -m pytest -x tests/ for a quicker loop.", ["python -m pytest -x tests/"]),
    ("Pass --dry-run to see what would change.", ["--dry-run"]),
    ("The -v flag prints every test name.", ["-v"]),
    ("I used cargo build --release for the benchmark.", ["cargo build --release"]),
    ("Then cd .. and run make clean.", ["cd ..", "make clean"]),
    ("Press Ctrl+C to stop the server.", ["Ctrl+C"]),
    ("You can run it with ./scripts/deploy.sh --env staging.", ["./scripts/deploy.sh --env staging"]),
    ("Try `docker compose up -d` to start the services.", ["`docker compose up -d`"]),
    ("The webpack.config.js file is missing the alias.", ["webpack.config.js"]),
    ("Use Array.prototype.map instead of a for loop.", ["Array.prototype.map"]),
    ("The endpoint /api/v1/users returns 404 for unknown ids.", ["/api/v1/users", "404"]),
    ("I updated the workflow in .github/workflows/ci.yml.", [".github/workflows/ci.yml"]),
    # urls, e-mail
    ("The docs are at https://docs.python.org/3/library/re.html if you need them.", ["https://docs.python.org/3/library/re.html"]),
    ("Open http://localhost:3000 in your browser.", ["http://localhost:3000"]),
    ("The server listens on localhost:8080 by default.", ["localhost:8080"]),
    ("Send the report to alice.smith@example.com, please.", ["alice.smith@example.com"]),
    ("See www.example.org (section 2) for the spec.", ["www.example.org", "2"]),
    # versions, numbers
    ("I upgraded React to v18.2.0 and everything still builds.", ["v18.2.0"]),
    ("This needs Python 3.11 or newer.", ["3.11"]),
    ("All 42 tests passed in 3.5 seconds.", ["42", "3.5"]),
    ("Coverage went from 81% to 93%.", ["81%", "93%"]),
    ("The file has 1,204 lines, and the function starts at line 310.", ["1,204", "310"]),
    ("That fixes issue #123.", ["#123"]),
    ("The request took 250ms on average.", ["250ms"]),
    ("Commit 3f2a9c1 introduced the regression.", ["3f2a9c1"]),
    ("It only fails on x86_64 with utf8 locales.", ["x86_64", "utf8"]),
    ("Bump the version to 2.0.0-beta.1 before the release.", ["2.0.0-beta.1"]),
    # none
    ("Let me make sure the tests pass before we go on.", []),
    ("I'll go ahead and fix that now.", []),
    ("The input/output handling is fine, and/or the retry is not needed.", []),
    ("This is the 2nd time the build failed, e.g. on Monday.", []),
    ("Git is a version control system, and Python is a language.", []),
    ("Done! Everything works as expected.", []),
    ("The API returns JSON, so the client can parse it.", []),
    ("I'll open a pull request when the tests are green.", []),
    ("Should I also update the documentation?", []),
    ("The \"quick fix\" would hide the real problem.", []),
    ("Let me think about the best way to structure this.", []),
    ("I'll commit this with the message \"Fix login redirect\".", []),
    ("I'll use a try/except block around the call; it's a well-known, backward-compatible fix.", []),
]

WITH_SPANS = [(s, e) for s, e in TABLE if e]


@pytest.mark.parametrize("sentence, expected", TABLE, ids=[s[:40] for s, _ in TABLE])
def test_detection(sentence, expected):
    spans = find_spans(sentence)
    assert [s.text for s in spans] == expected
    for span in spans:
        assert sentence[span.start:span.end] == span.text


def test_detection_kinds():
    kinds = {s.text: s.kind for s in find_spans(
        "Run npm test -- --watch on src/app.ts, see https://x.org or a@b.io, v2.1.0, 42 and parse_args().")}
    assert kinds == {"npm test -- --watch": "command", "src/app.ts": "path", "https://x.org": "url",
                     "a@b.io": "email", "v2.1.0": "version", "42": "number", "parse_args()": "identifier"}


def _count_ok(out: str, spans: list[Span]) -> bool:
    """Each span's text occurs in ``out`` exactly as often as the spans (and the spans around it) put it there."""
    return all(out.count(s.text) == sum(o.text.count(s.text) for o in spans) for s in spans)


def test_protect_masks_with_placeholders_and_identity_restores_the_source():
    for sentence, expected in WITH_SPANS:
        masked, spans = protect(sentence)
        assert [s.placeholder for s in spans] == [f"X{i}" for i in range(1, len(expected) + 1)]
        rest = re.sub(r"X\d+", " ", masked)
        for span in spans:
            assert span.text not in rest  # nothing of a span is left for the model to mangle
        assert restore(masked, spans) == sentence


def test_placeholder_letter_avoids_a_letter_of_the_sentence():
    masked, spans = protect("Press X to close main.py.")
    assert spans[0].placeholder == "Z1" and masked == "Press X to close Z1."
    assert restore("Xを押してZ1を閉じます。", spans) == "Xを押してmain.pyを閉じます。"


def test_text_without_spans_is_unchanged():
    assert protect("Let me check the tests.") == ("Let me check the tests.", [])
    assert restore("テストを確認します。", []) == "テストを確認します。"


def test_placeholder_glued_to_a_word_gets_spaces():
    masked, spans = protect("the`foo`bar")
    assert masked == "the X1 bar" and spans[0].text == "`foo`"


# What fake models do with the placeholders. Each takes (masked text, number of spans, rng).
def _translate_words(text):
    """Neighbours translated: every English word becomes a Japanese one, placeholders stay."""
    return re.sub(r"\b(?![XZQK]\d)[A-Za-z']+\b", lambda m: "語", text).replace(".", "。")


FAKES = {
    "identity": lambda t, n, r: t,
    "neighbours translated": lambda t, n, r: _translate_words(t),
    "all dropped": lambda t, n, r: re.sub(r"[XZQK]\d+", "", _translate_words(t)),
    "first dropped": lambda t, n, r: re.sub(r"[XZQK]1(?!\d)", "", t),
    "nothing at all": lambda t, n, r: "",
    "duplicated": lambda t, n, r: re.sub(r"([XZQK]\d+)", r"\1 \1", t),
    "reordered": lambda t, n, r: " ".join(reversed(t.split())),
    "lower case and spaced": lambda t, n, r: re.sub(r"([XZQK])(\d+)", lambda m: f"{m[1].lower()} {m[2]}", t),
    "full width": lambda t, n, r: re.sub(r"([XZQK])(\d+)", lambda m: chr(ord(m[1]) + 0xFEE0)
                                         + "".join(chr(ord(c) + 0xFEE0) for c in m[2]), t),
    "katakana": lambda t, n, r: re.sub(r"X(\d+)", r"エックス\1", t),
    "letter lost": lambda t, n, r: re.sub(r"[XZQK](\d+)", r"\1", _translate_words(t)),
    "number lost": lambda t, n, r: re.sub(r"([XZQK])\d+", r"\1", _translate_words(t)),
    "unknown numbers": lambda t, n, r: t + f" X{n + 1} X{n + 7}",
    "copies the spans": None,  # filled in the test: the model writes a span's text itself
}


@pytest.mark.parametrize("fake", sorted(FAKES))
def test_every_span_once_whatever_the_model_writes(fake):
    rng = random.Random(3)
    for sentence, expected in WITH_SPANS:
        masked, spans = protect(sentence)
        if fake == "copies the spans":
            out = masked + " " + spans[0].text + "です。"
        else:
            out = FAKES[fake](masked, len(spans), rng)
        restored = restore(out, spans)
        assert _count_ok(restored, spans), (fake, sentence, out, restored)
        assert not re.search(r"(?<![A-Za-z])[XZ]\d", restored.replace(sentence, "")) or fake == "identity", restored


def test_random_garbage_with_mangled_placeholders():
    rng = random.Random(7)
    pieces = ["を", "開いて", "。", "、", " ", "実行", "X", "x", "Ｘ", "エックス", "-", "1", "2", "3", "１", "9"]
    for _ in range(300):
        sentence, _ = rng.choice(WITH_SPANS)
        _, spans = protect(sentence)
        parts = [rng.choice(pieces) for _ in range(rng.randint(0, 12))]
        parts += [s.placeholder for s in spans if rng.random() < 0.5] * rng.randint(1, 2)
        rng.shuffle(parts)
        out = "".join(parts)
        restored = restore(out, spans)
        assert _count_ok(restored, spans), (sentence, out, restored)


def test_where_a_dropped_span_goes():
    _, spans = protect("Compare main.py and utils.py, then run the tests again.")
    assert [s.adjacent for s in spans] == [False, True]
    # The neighbour survived: the dropped one goes right after it, in source order.
    assert restore("X1を比較してから、テストを再実行します。", spans) == "main.py utils.pyを比較してから、テストを再実行します。"
    assert restore("X2を比較します。", spans) == "main.py utils.pyを比較します。"
    # No neighbour: at the end, before the closing punctuation, after 、 (a comma in other languages).
    _, spans = protect("Open main.py and then fix the bug in the parser.")
    assert restore("開いてバグを修正します。", spans) == "開いてバグを修正します、main.py。"
    assert restore("Ouvrez et corrigez le bug.", spans, "fra_Latn") == "Ouvrez et corrigez le bug, main.py."
    assert restore("", spans) == "main.py"


def test_duplicates_keep_the_first_copy():
    _, spans = protect("Open main.py now.")
    assert restore("X1を開いてX1を今。", spans) == "main.pyを開いてを今。"


def test_restore_rejects_non_strings():
    with pytest.raises(TypeError):
        restore(None, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        find_spans(3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- the wrapper


class _Fake:
    """An inner translator that records what it was asked and answers with ``answer(text)``."""

    def __init__(self, answer=lambda t: t):
        self.answer = answer
        self.calls: list[list[str]] = []
        self.tokenizer = "inner's"

    def translate(self, texts, src_lang="eng_Latn", tgt_lang="jpn_Jpan", **options):
        if not isinstance(texts, list):
            raise TypeError("translate() takes a list of strings")
        self.calls.append(list(texts))
        self.options = options
        return [self.answer(t) for t in texts]

    def warm(self):
        return 1.5


def test_wrapper_masks_batches_and_restores():
    inner = _Fake(lambda t: _translate_words(t))
    tr = ProtectedTranslator(inner)
    texts = ["Open src/app.ts and run npm test -- --watch.", "Hello there.", "", "src/app.ts", "`npm test`."]
    out = tr.translate(texts, "eng_Latn", "jpn_Jpan", beam_size=2)
    # One batch; texts that are only spans never reach the model.
    assert inner.calls == [["Open X1 and run X2.", "Hello there.", ""]] and inner.options == {"beam_size": 2}
    assert out[0] == "語 src/app.ts 語 語 npm test -- --watch。"
    assert out[1:] == ["語 語。", "", "src/app.ts", "`npm test`."]
    assert tr.stats["skipped"] == 2 and tr.stats["spans"] == 4
    # Other attributes are the inner translator's.
    assert tr.tokenizer == "inner's" and tr.warm() == 1.5
    assert list(tr.translate_stream("Open main.py.")) == ["語 main.py。"]


def test_wrapper_when_every_text_is_spans_calls_nothing():
    inner = _Fake()
    assert ProtectedTranslator(inner).translate(["main.py", "42.", "https://x.org"]) == ["main.py", "42.", "https://x.org"]
    assert inner.calls == []


def test_wrapper_errors():
    tr = ProtectedTranslator(_Fake())
    with pytest.raises(TypeError, match="list of strings"):
        tr.translate("not a list")  # the inner translator's own error
    bad = ProtectedTranslator(_Fake())
    bad.inner.translate = lambda texts, *a, **k: ["only one"]
    with pytest.raises(TypeError, match="list of 2 str"):
        bad.translate(["Open main.py.", "Hello."])


def test_phrase_cache_inside_shares_entries_between_spans(tmp_path):
    """ProtectedTranslator(CachedTranslator(...)): the cache keys are the masked texts, so a sentence
    that differs only in a file name or number is a hit."""
    from mlx_stream_tts.phrase_cache import CachedTranslator, PhraseCache

    inner = _Fake(lambda t: _translate_words(t))
    with PhraseCache(tmp_path / "c.sqlite3") as cache:
        tr = ProtectedTranslator(CachedTranslator(inner, cache, model_id="m"))
        assert tr.translate(["Let me read main.py."]) == ["語 語 語 main.py。"]
        assert tr.translate(["Let me read utils/io.py."]) == ["語 語 語 utils/io.py。"]
        assert inner.calls == [["Let me read X1."]] and cache.hits == 1


# ------------------------------------------------------------- a real (tiny, random) NLLB model


@pytest.fixture(scope="module")
def tiny_translator(tmp_path_factory):
    from nllb_fixtures import get_converted

    from mlx_stream_tts.translate import Translator

    return Translator.load(get_converted(tmp_path_factory, "d20gelu"), backend="mlx")


@pytest.mark.slow  # builds the tiny checkpoint (~10-20 s on a loaded machine) unless another test did
def test_tiny_model_every_span_verbatim_once_and_readable(tiny_translator):
    from mlx_stream_tts.g2p_ja import normalize_ja

    tr = ProtectedTranslator(tiny_translator)
    sentences = [s for s, _ in WITH_SPANS[::3]] + ["Let me look at src/app.ts first.",
                                                   "I ran rm -rf build and rebuilt from scratch."]
    out = tr.translate(sentences, "eng_Latn", "jpn_Jpan")
    assert len(out) == len(sentences) and tiny_translator is tr.inner
    for sentence, restored in zip(sentences, out):
        _, spans = protect(sentence)
        assert _count_ok(restored, spans), (sentence, restored)
        rest = restored
        for span in sorted(spans, key=lambda s: -len(s.text)):
            rest = rest.replace(span.text, " ")
        assert not re.search(r"[XＸxｘ]\s?\d", rest), restored  # no placeholder left over
        assert normalize_ja(restored).strip()
    # The reading step reads the restored spans piece by piece.
    path = normalize_ja(out[-2])
    assert "スラッシュ" in path and "ドット" in path, path
    assert "ビルド" in normalize_ja(out[-1])


def test_wrapper_survives_a_failing_restore(monkeypatch, caplog):
    from mlx_stream_tts import spans as spans_module

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(spans_module, "restore", broken)
    out = ProtectedTranslator(_Fake(lambda t: t.replace("Open", "開く"))).translate(["Open main.py and README."])
    assert out == ["開く  and . main.py README"] and "restoring failed" in caplog.text
