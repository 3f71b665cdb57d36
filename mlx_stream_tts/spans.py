"""Protected spans: code, paths, names, commands, URLs and numbers carried verbatim through translation.

A coding agent's English is full of spans that a translator must not touch: ``main.py``, ``src/app.ts``,
``parse_args()``, ``npm test -- --watch``, ``v2.1.0``, URLs, e-mail addresses, numbers. NLLB-200
transliterates, translates, mangles or drops them. :func:`protect` replaces each span with a short
placeholder that the model copies like any name, and :func:`restore` puts the span's exact source text
back into the translation::

    masked, spans = protect("Open src/app.ts and run npm test -- --watch.")
    # masked == "Open X1 and run X2.", spans[0].text == "src/app.ts", spans[1].text == "npm test -- --watch"
    restore("X1を開いてX2を実行します。", spans)   # -> "src/app.tsを開いてnpm test -- --watchを実行します。"

    translator = ProtectedTranslator(Translator.load())   # the same translate() contract

Placeholders are a capital letter and a number, ``X1``, ``X2``...: two ordinary pieces of every NLLB /
M2M100 sentencepiece vocabulary (never ``<unk>``, unlike rare symbols), and a token that Japanese text
itself uses for "something unnamed" (X社, X1), so the model keeps it as a name and copies it; it is short,
so the masked source is shorter than the raw one. The letter is one that does not stand alone in the
sentence (``X``, else ``Z``, ``Q``...), and every letter+digit token of the source is itself a span, so
an ``X1`` in the output can only be a placeholder.

Restoring never loses or repeats a span, whatever the model wrote:

- found once: the span replaces it, in the model's word order;
- mangled: ``x1``, ``X 1``, ``X-1``, full-width ``Ｘ１``, katakana ``エックス1`` are recognised; a lone ``X``
  or a bare ``1`` stands for the missing ones when their counts match (and is deleted otherwise);
- duplicated: the first copy is restored, the others are deleted; unknown numbers (``X7`` of two
  spans) are deleted; a span's text that the model wrote by itself is deleted too, so it comes out once;
- dropped: it is put beside a span that stood next to it in the source (``main.py and utils.py``), in
  source order, when that one survived; otherwise at the end of the sentence, before its closing
  punctuation, after ``、`` in Japanese/Chinese (a comma elsewhere).

What is protected (:func:`find_spans`): inline code in backticks, URLs, e-mail addresses, paths, file
names, identifiers (``snake_case``, ``camelCase``, ``PascalCase``, ``dotted.names``, ``calls()``, ``$VARS``,
``KEY=value``), command lines (a tool's name with its subcommands, options and arguments: ``rm -rf build``),
options (``--watch``), versions, numbers (with their unit or ``%``), hashes, key combinations and
operators. Ordinary English words, acronyms (``API``) and words in quotes are left to the model. A
sentence that is only spans and punctuation does not reach the model at all.

Limits: detection is by rules, tuned for English from coding agents; a command line without backticks
ends at the first word that reads as English, and a tool named by an English word (``make``, ``go``,
``find``) starts one only when an option, a path or one of its usual subcommands follows. A dropped span lands at the end of the sentence, which is where Japanese
puts the verb, not necessarily where the span belonged. Numbers lose the counters the model would
have added (``3 files`` -> ``3ファイル``, not ``3つのファイル``).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .languages import NO_SPACE_SCRIPTS, lang_script

logger = logging.getLogger(__name__)

__all__ = ["ProtectedTranslator", "Span", "find_spans", "protect", "restore"]


@dataclass(frozen=True)
class Span:
    """One protected piece of the source.

    Attributes:
        text: the source text, verbatim (what :func:`restore` puts back).
        kind: ``"code"``, ``"url"``, ``"email"``, ``"path"``, ``"file"``, ``"identifier"``, ``"command"``,
            ``"option"``, ``"version"``, ``"number"`` or ``"symbol"``.
        start, end: its place in the source text.
        placeholder: what stands for it in the masked text (``"X1"``); ``""`` from :func:`find_spans`.
        adjacent: only spaces, punctuation or a conjunction (``and``, ``or``, ``to``) separate it from the
            span before it in the source, so a dropped one may be put back beside that one.
    """

    text: str
    kind: str
    start: int
    end: int
    placeholder: str = ""
    adjacent: bool = False


# -- detection -------------------------------------------------------------------------------------

# File extensions that make ``name.ext`` a file name (not "e.g." or "Mr.Smith").
_EXTENSIONS = frozenset("""
py pyi pyc pyx ipynb ts tsx js jsx mjs cjs json jsonl md mdx rst txt toml yaml yml ini cfg conf env lock
rs go c h cc cpp cxx hpp hh cs java kt kts scala swift m mm rb php pl pm r lua dart zig ex exs erl hrl hs ml
sh bash zsh fish ps1 bat cmd vue svelte astro html htm css scss sass less sql csv tsv xml svg png jpg jpeg gif
webp ico pdf log tmp bak out o a so dylib dll exe bin wasm zip tar gz tgz bz2 xz whl egg jar war gradle nix
tf tfvars proto graphql gql prisma dockerfile mk cmake pro plist gemspec podspec sln csproj vcxproj xcodeproj
pt pth onnx safetensors gguf ckpt npz npy pkl parquet db sqlite sqlite3 map snap patch diff
""".split())
# Names that are files without an extension.
_FILE_NAMES = frozenset("""
Dockerfile Makefile GNUmakefile Gemfile Rakefile Procfile Justfile Jenkinsfile Vagrantfile Brewfile
README LICENSE CHANGELOG CONTRIBUTING CODEOWNERS
""".split())
# Folder names that make ``a/b`` a path rather than "and/or".
_DIRS = frozenset("""
src lib libs app apps bin build dist out test tests spec docs doc examples scripts tools config configs
node_modules vendor packages pkg cmd internal public static assets include components pages api utils
""".split())
# Tools whose name is not an English word: the start of a command line wherever they appear.
_TOOLS = frozenset("""
npm npx yarn pnpm pip pip3 pipx uv uvx conda mamba poetry pyenv virtualenv git gh svn hg cargo rustc rustup
gcc clang cmake ninja meson kubectl minikube helm terraform docker podman brew apt-get dnf pacman sudo rm mv
cp ls cd mkdir rmdir chmod chown ln grep rg egrep sed awk curl wget rsync scp ssh pytest tox nox ruff mypy
pyright flake8 pylint isort eslint tsc jest vitest webpack vite esbuild rollup turbo mvn gradle dotnet javac
xcodebuild swiftc composer php bundle rails deno bunx tsx ts-node nodemon pm2 ffmpeg jq tmux systemctl
journalctl lsof ps pkill killall htop df du pwd xargs chmod diff patch gdb lldb valgrind bazel
""".split())
# Tools named by an English word (or a language): a command only when options, a path or a known
# subcommand follow ("make sure" and "go ahead" are not commands).
_WORD_TOOLS: dict[str, frozenset[str]] = {
    "go": frozenset("test build run mod get vet fmt install generate work".split()),
    "make": frozenset("clean test build install all lint format check release docs".split()),
    "python": frozenset(),
    "node": frozenset(),
    "cat": frozenset(),
    "find": frozenset(),
    "echo": frozenset(),
    "touch": frozenset(),
    "kill": frozenset(),
    "head": frozenset(),
    "tail": frozenset(),
    "tar": frozenset(),
    "black": frozenset(),
    "prettier": frozenset(),
    "bun": frozenset("install run test add build x".split()),
    "java": frozenset(),
    "swift": frozenset("build test run package".split()),
    "ruby": frozenset(),
    "export": frozenset(),
    "source": frozenset(),
    "open": frozenset(),
    "which": frozenset(),
}
# Words after which a command line written without backticks has ended.
_STOP_WORDS = frozenset("""
a an the and or but so then than to into onto in on at of for with without from by as if when while until
because since before after again first now next also too here there this that these those it its is are
was were be been being will would should could can may might must do does did done you we i they he she
which who what where why how again instead locally once twice afterwards later still just only not no yes
pass passes passed fail fails failed failing work works worked run runs ran running succeed succeeds
succeeded finish finishes finished complete completes completed show shows showed say says said return
returns returned output outputs print prints printed give gives gave hang hangs crash crashes error errors
command commands script scripts step steps time times first second all any each every some both either
works fine ok okay cleanly successfully again please let lets let's i'll we'll you'll
""".split())

# Markdown code, URLs and calls with spaces inside: found on the whole text before the words are looked at.
_INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)([^\n]+?)(?<!`)\1(?!`)")
_URL = re.compile(r"\b(?:(?:https?|ftp|file|ssh|git|wss?)://|www\.)[^\s<>\"'`]+", re.IGNORECASE)
_CALL = re.compile(r"(?<![\w.$])[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*\((?!s\)|es\))[^()\n]{0,60}\)")
_WORD = re.compile(r"\S+")

_LEAD = "([{\"'“‘«<*"
_TRAIL = ".,;:!?\"'”’»>*…"
_OPTION = re.compile(r"--?[A-Za-z][\w.-]*(?:=\S*)?")
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|#\d+|\d+(?:[:/-]\d+)+|\d+(?:\.\d+)?[eE][+-]?\d+")
_VERSION = re.compile(r"[vV]\d+(?:\.\d+)*(?:[-+][\w.]+)?|\d+(?:\.\d+){2,}(?:[-+][\w.]+)?|\d+\.\d+[-+][\w.]+")
_UNIT = re.compile(r"\d+(?:\.\d+)?[A-Za-zµ]{1,3}")
_ORDINAL = re.compile(r"\d+(?:st|nd|rd|th)")
_ALNUM = re.compile(r"[A-Za-z]+\d+[A-Za-z\d]*")
_HEX = re.compile(r"(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,64}")
_EMAIL = re.compile(r"[\w.+-]+@[A-Za-z\d-]+(?:\.[A-Za-z\d-]+)+")
_SCP_URL = re.compile(r"[\w.-]+@[\w.-]+:[\w./~-]+")
_HOST_PORT = re.compile(r"(?:localhost|[\w-]+(?:\.[\w-]+)+|\d+(?:\.\d+){3}):\d{2,5}(?:/\S*)?")
_FILE = re.compile(r"[\w+@-][\w.+@-]*\.([A-Za-z\d]+)")
_DOTFILE = re.compile(r"\.[A-Za-z][\w.-]*")
_DOTTED = re.compile(r"[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+")
_SNAKE = re.compile(r"_*[A-Za-z\d]+(?:_+[A-Za-z\d]+)+_*|__\w+__")
_CAMEL = re.compile(r"[A-Za-z][A-Za-z\d]*")
_ENV = re.compile(r"\$\{?\w+\}?|%\w+%|[A-Za-z_]\w*=\S+")
_DECORATOR = re.compile(r"@[A-Za-z_][\w.]*")
_KEYS = re.compile(r"(?:ctrl|cmd|command|control|alt|option|opt|shift|meta|super|win|fn)(?:\+\S+)+", re.IGNORECASE)
_OPERATOR = re.compile(r"==|!=|===|!==|<=|>=|=>|->|&&|\|\||::|\+\+|--|\+=|-=|\*=|/=|\*\*|<<|>>|\|>|\?\?|:=")


def _strip_token(token: str) -> tuple[int, int, bool]:
    """(start, end) of a word's core within ``token`` without the punctuation around it, and whether
    sentence or clause punctuation followed it."""
    start, end = 0, len(token)
    while start < end and token[start] in _LEAD:
        start += 1
    core = token[start:end]
    if core in (".", "..") or core.endswith("/...") or (core.startswith(("./", "../")) and core.rstrip(".") == core):
        return start, end, False
    punct = False
    while end > start:
        ch = token[end - 1]
        if ch in _TRAIL:
            punct = punct or ch in ".,;:!?…"
            end -= 1
        elif ch in ")]}" and token.count(ch, start, end) > token.count({")": "(", "]": "[", "}": "{"}[ch], start, end):
            end -= 1
        else:
            break
    if token[end - 2:end] in ("'s", "’s") and end - 2 > start:
        end -= 2
    return start, end, punct


def _classify(core: str) -> str | None:
    """The kind of span one word is, or None for an ordinary word."""
    if not core or len(core) > 300:
        return None
    if _OPTION.fullmatch(core) and not core[1:].replace("-", "").isdigit():
        return "option"
    if _EMAIL.fullmatch(core):
        return "email"
    if _SCP_URL.fullmatch(core) or _HOST_PORT.fullmatch(core):
        return "url"
    if _VERSION.fullmatch(core):
        return "version"
    if _NUMBER.fullmatch(core):
        return "number"
    if _ORDINAL.fullmatch(core):
        return None
    if _UNIT.fullmatch(core) or _HEX.fullmatch(core):
        return "number"
    if "/" in core or "\\" in core:
        return "path" if _is_path(core) else None
    if core in (".", ".."):
        return None  # a path only inside a command line
    if core in _FILE_NAMES:
        return "file"
    m = _FILE.fullmatch(core)
    if m and m.group(1).lower() in _EXTENSIONS and not _is_abbreviation(core):
        return "file"
    if _DOTFILE.fullmatch(core) and len(core) > 2:
        return "file"
    if _CALL.fullmatch(core):
        return "identifier"
    if _DOTTED.fullmatch(core):
        return None if _is_abbreviation(core) else "identifier"
    if _SNAKE.fullmatch(core) or _ENV.fullmatch(core) or _DECORATOR.fullmatch(core):
        return "identifier"
    if _ALNUM.fullmatch(core):
        return "identifier"
    if _CAMEL.fullmatch(core) and (re.search(r"[a-z][A-Z]", core) or re.fullmatch(r"[A-Z]{2,}[a-z]{2,}", core)):
        return "identifier"
    if _KEYS.fullmatch(core):
        return "symbol"
    if _OPERATOR.fullmatch(core):
        return "symbol"
    return None


def _is_path(core: str) -> bool:
    if core.endswith("/...") and core.startswith(("./", "../")):
        return True  # Go's "every package below"
    if not re.search(r"[A-Za-z\d_~]", core) or "//" in core.replace("://", ""):
        return False
    if core.startswith(("/", "~", "./", "../", ".\\", "$")) or re.match(r"[A-Za-z]:\\", core) or "\\" in core:
        return True
    parts = [p for p in core.split("/") if p]
    if len(parts) >= 3 or core.endswith("/") or any(p in _DIRS for p in parts):
        return True
    # "and/or", "input/output", "yes/no" are English; a part with a dot, digit, _ or - is a path piece.
    return any(re.search(r"[._\d-]", p) or re.search(r"[a-z][A-Z]", p) for p in parts)


def _is_abbreviation(core: str) -> bool:
    """``e.g``, ``i.e``, ``a.m``, ``Ph.D``, ``U.S``: dotted, but not names."""
    parts = core.split(".")
    return all(len(p) <= 2 and p.isalpha() for p in parts)


@dataclass
class _Word:
    start: int  # the core's place in the text
    end: int
    core: str
    kind: str | None
    punct: bool  # sentence or clause punctuation right after it
    lead: bool  # an opening bracket or quote right before it


def find_spans(text: str) -> list[Span]:
    """The protected spans of ``text``, in order, without placeholders (see the module docstring).

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"find_spans() takes str, got {type(text).__name__}")
    taken: list[tuple[int, int, str]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e, _ in taken)

    for m in _INLINE_CODE.finditer(text):
        if m.group(2).strip():
            taken.append((m.start(), m.end(), "code"))
    for m in _URL.finditer(text):
        url = m.group(0)
        while url and (url[-1] in ".,;:!?'\"" or (url[-1] == ")" and url.count(")") > url.count("("))):
            url = url[:-1]
        if free(m.start(), m.start() + len(url)):
            taken.append((m.start(), m.start() + len(url), "url"))
    for m in _CALL.finditer(text):
        if " " in m.group(0) and free(m.start(), m.end()):
            taken.append((m.start(), m.end(), "identifier"))

    words: list[_Word] = []
    for m in _WORD.finditer(text):
        if not free(m.start(), m.end()):
            continue
        lo, hi, punct = _strip_token(m.group(0))
        if lo >= hi:
            continue
        core = m.group(0)[lo:hi]
        words.append(_Word(m.start() + lo, m.start() + hi, core, _classify(core), punct, lo > 0))
    _commands(words, taken, text)
    for w in words:
        if w.kind is not None and free(w.start, w.end):
            taken.append((w.start, w.end, w.kind))
    taken.sort()
    return _merge(text, taken)


def _commands(words: list[_Word], taken: list[tuple[int, int, str]], text: str) -> None:
    """Command lines: a tool's name and the arguments after it, taken as one span."""
    i = 0
    while i < len(words):
        w = words[i]
        head = w.core
        nxt = words[i + 1] if i + 1 < len(words) else None
        strong = head in _TOOLS or (w.kind in ("path", "file") and head.startswith(("./", "../", "/")) and nxt is not None
                                    and nxt.kind == "option" and nxt.start - w.end == 1 and not w.punct)  # ./run.sh -v
        if not strong and head in _WORD_TOOLS and nxt is not None and not w.punct and nxt.start - w.end == 1:
            strong = nxt.kind in ("option", "path", "file") or nxt.core in _WORD_TOOLS[head] or nxt.core in (".", "..")
        if not strong or (i > 0 and words[i - 1].core in ("a", "an", "the")):
            i += 1
            continue
        end, last, plain = w.end, "head", 0
        j = i + 1
        punct = w.punct
        while j < len(words) and not punct:
            t = words[j]
            gap = text[end:t.start]
            if gap in (' "', " '") and last == "option":  # a quoted value: -m "fix the bug"
                close = _closing_quote(words, j, gap[1], text)
                if close is None:
                    break
                j, end, punct, last = close + 1, words[close].end + 1, words[close].punct, "arg"
                continue
            if gap != " ":
                break
            if t.kind is not None or t.core in ("--", ".", "..", "-") or t.core in _TOOLS:
                last = t.kind or "arg"
            elif re.fullmatch(r"[a-z][\w.:@=+-]*", t.core) and t.core not in _STOP_WORDS and (
                    (last in ("head", "plain") and plain < 3) or last == "option"):
                last, plain = "plain", plain + 1
            else:
                break
            end, punct = t.end, t.punct
            j += 1
        taken.append((w.start, end, "command"))
        for k in range(i, j):
            words[k].kind = None  # inside the command: not spans of their own
        i = j


def _closing_quote(words: list[_Word], j: int, quote: str, text: str) -> int | None:
    """The index of the word that closes a quoted argument opened before ``words[j]``, within a few words."""
    for k in range(j, min(j + 8, len(words))):
        if text[words[k].end:words[k].end + 1] == quote:
            return k
    return None


# Between two spans: only these (and spaces or punctuation) make them neighbours.
_NEIGHBOUR_GAP = re.compile(r"[\s,;:/&+()\[\]|-]*(?:(?:and|or|to|vs\.?|then|,)[\s,;:/&+()\[\]|-]*)?")


def _merge(text: str, taken: list[tuple[int, int, str]]) -> list[Span]:
    """Spans in order; a command or option followed by more options (``npm test -- --watch``) is one."""
    spans: list[Span] = []
    for start, end, kind in taken:
        if spans:
            prev = spans[-1]
            gap = text[prev.end:start]
            if gap.isspace() and "\n" not in gap and (kind == "option" or prev.kind == "option" and kind == "command"
                                                       or prev.kind == "command" and kind in ("option", "path", "file")):
                merged_kind = "command" if "command" in (kind, prev.kind) else "option"
                spans[-1] = Span(text[prev.start:end], merged_kind, prev.start, end, adjacent=prev.adjacent)
                continue
            adjacent = bool(_NEIGHBOUR_GAP.fullmatch(gap))
        else:
            adjacent = False
        spans.append(Span(text[start:end], kind, start, end, adjacent=adjacent))
    return spans


# -- masking ---------------------------------------------------------------------------------------

# Placeholder letters, first choice first, with how a Japanese model might spell them out.
_LETTERS = {"X": "エックス", "Z": "ゼット", "Q": "キュー", "K": "ケー", "W": "ダブリュー", "V": "ブイ", "J": "ジェー"}
_LETTER = re.compile(r"[^\W\d_]")


def protect(text: str) -> tuple[str, list[Span]]:
    """``text`` with each protected span replaced by a placeholder, and the spans.

    A text without spans comes back unchanged with ``[]``.

    Raises:
        TypeError: ``text`` is not a string.
    """
    spans = find_spans(text)
    if not spans:
        return text, []
    rest = "".join(text[a.end:b.start] for a, b in zip([Span("", "", 0, 0)] + spans, spans + [Span("", "", len(text), len(text))]))
    letter = next((c for c in _LETTERS if not re.search(rf"(?<![^\W_]){c}(?![^\W_])", rest, re.IGNORECASE)), "X")
    out, last, placed = [], 0, []
    for n, span in enumerate(spans, 1):
        ph = f"{letter}{n}"
        before = text[last:span.start]
        out.append(before)
        # A placeholder glued to a word would become part of it ("theX1"): keep a space around it.
        if span.start > 0 and (out[-1][-1:] if before else text[span.start - 1]).isalnum():
            out.append(" ")
        out.append(ph)
        if span.end < len(text) and text[span.end].isalnum():
            out.append(" ")
        placed.append(Span(span.text, span.kind, span.start, span.end, ph, span.adjacent))
        last = span.end
    out.append(text[last:])
    return "".join(out), placed


def needs_model(masked: str, spans: list[Span]) -> bool:
    """Whether anything but placeholders and punctuation is left to translate."""
    rest = masked
    for span in spans:
        rest = rest.replace(span.placeholder, " ")
    return bool(_LETTER.search(rest))


def _placeholder_letter(spans: list[Span]) -> str:
    return spans[0].placeholder.rstrip("0123456789") or "X"


def restore(translated: str, spans: list[Span], tgt_lang: str = "jpn_Jpan") -> str:
    """The translation of a masked text with every span's source text put back exactly once.

    Args:
        translated: what the model made of the masked text (anything: placeholders may be missing,
            repeated, mangled or moved).
        spans: :func:`protect`'s spans of that text.
        tgt_lang: the translation's language (where a dropped span goes and what separates it).

    Raises:
        TypeError: ``translated`` is not a string.
    """
    if not isinstance(translated, str):
        raise TypeError(f"restore() takes str, got {type(translated).__name__}")
    if not spans:
        return translated
    count = len(spans)
    letter = _placeholder_letter(spans)
    wide = chr(ord(letter) + 0xFEE0)
    name = _LETTERS.get(letter.upper(), letter)
    pattern = re.compile(
        rf"(?<![A-Za-z\uff21-\uff3a\uff41-\uff5a])(?:[{letter}{letter.lower()}{wide}{chr(ord(wide) + 0x20)}]|{name})"
        r"[ \u3000]?[-_‐−・]?[ \u3000]?(?P<n>[0-9\uff10-\uff19]{1,3})(?![0-9\uff10-\uff19])")
    cuts: list[tuple[int, int, int | None]] = []  # (start, end, span number or None to delete)
    found: set[int] = set()
    for m in pattern.finditer(translated):
        n = int(unicodedata.normalize("NFKC", m.group("n")))
        keep = 1 <= n <= count and n not in found  # a repeated or unknown number is deleted
        if keep:
            found.add(n)
        cuts.append((m.start(), m.end(), n if keep else None))
    missing = [n for n in range(1, count + 1) if n not in found]
    if missing:
        _recover(translated, cuts, missing, letter, name)
    cuts.sort()
    # Pieces: ("t", model text) or ("s", span number).
    pieces: list[tuple[str, Any]] = []
    last = 0
    for start, end, n in cuts:
        pieces.append(("t", translated[last:start]))
        if n is not None:
            pieces.append(("s", n))
        last = end
    pieces.append(("t", translated[last:]))
    # A span's text that the model wrote by itself would be heard twice.
    texts = sorted({s.text for s in spans if s.text.strip()}, key=len, reverse=True)
    pieces = [(k, _without(v, texts) if k == "t" else v) for k, v in pieces]
    present = {v for k, v in pieces if k == "s"}
    missing = [n for n in range(1, count + 1) if n not in present]
    if missing:
        logger.debug("restore: %d of %d spans not in the translation: put back by rule", len(missing), count)
        pieces = _place_missing(pieces, spans, missing, tgt_lang)
    return "".join(v if k == "t" else spans[v - 1].text for k, v in pieces)


def _recover(text: str, cuts: list[tuple[int, int, int | None]], missing: list[int], letter: str, name: str) -> None:
    """Mangled placeholders: a lone letter, or a bare number, standing for the missing ones (in order)."""

    def outside(m: re.Match) -> bool:
        return all(m.end() <= s or m.start() >= e for s, e, _ in cuts)

    wide = chr(ord(letter) + 0xFEE0)
    lone = [m for m in re.finditer(
        rf"(?<![A-Za-z\d\uff10-\uff19\uff21-\uff3a\uff41-\uff5a])(?:[{letter}{letter.lower()}{wide}{chr(ord(wide) + 0x20)}]|{name})"
        r"(?![A-Za-z\d\uff10-\uff19\uff21-\uff3a\uff41-\uff5a])", text) if outside(m)]
    if lone:
        if len(lone) == len(missing):
            cuts.extend((m.start(), m.end(), n) for m, n in zip(lone, missing))
            missing.clear()
            return
        cuts.extend((m.start(), m.end(), None) for m in lone)  # debris of placeholders: never source text
    bare = [m for m in re.finditer(r"(?<![A-Za-z\d.,\uff10-\uff19])[0-9\uff10-\uff19]{1,3}(?![A-Za-z\d.,\uff10-\uff19])", text)
            if outside(m)]
    numbers = [int(unicodedata.normalize("NFKC", m.group(0))) for m in bare]
    if bare and len(bare) == len(missing) and sorted(numbers) == sorted(missing):
        cuts.extend((m.start(), m.end(), n) for m, n in zip(bare, numbers))
        missing.clear()


def _without(text: str, span_texts: list[str]) -> str:
    for t in span_texts:
        if t in text:
            text = text.replace(t, "")
    return text


_END = re.compile(r"[\s。．.!?！？…」』)）\"'”’]*\Z")


def _place_missing(pieces: list[tuple[str, Any]], spans: list[Span], missing: list[int],
                   tgt_lang: str) -> list[tuple[str, Any]]:
    """Put back dropped spans: beside a surviving neighbour from the source, else at the sentence's end."""
    cjk = lang_script(tgt_lang) in NO_SPACE_SCRIPTS
    todo = list(missing)
    changed = True
    while todo and changed:
        changed = False
        for n in list(todo):
            where = None
            if spans[n - 1].adjacent and ("s", n - 1) in pieces:  # after the span before it
                where = pieces.index(("s", n - 1)) + 1
                insert = [("t", " "), ("s", n)]
            elif n < len(spans) and spans[n].adjacent and ("s", n + 1) in pieces:  # before the span after it
                where = pieces.index(("s", n + 1))
                insert = [("s", n), ("t", " ")]
            if where is not None:
                pieces[where:where] = insert
                todo.remove(n)
                changed = True
    if todo:
        body = "".join(v if k == "t" else "\0" for k, v in pieces)
        tail = _END.search(body).group(0) if body else ""
        sep = "、" if cjk else ", "
        # Cut the closing punctuation off the last text piece (spans hold no punctuation of the model's).
        k = len(pieces) - 1
        while tail and k >= 0:
            kind, value = pieces[k]
            if kind != "t":
                break
            take = min(len(tail), len(value))
            pieces[k] = ("t", value[: len(value) - take])
            suffix = value[len(value) - take:]
            tail = tail[: len(tail) - take]
            if suffix:
                pieces.insert(k + 1, ("t", suffix))
            k -= 1
        insert_at = len(pieces)
        while insert_at > 0 and pieces[insert_at - 1][0] == "t" and _END.fullmatch(pieces[insert_at - 1][1]):
            insert_at -= 1
        has_text = any(v.strip() if k == "t" else True for k, v in pieces[:insert_at])
        added: list[tuple[str, Any]] = []
        for i, n in enumerate(todo):
            if i or has_text:
                added.append(("t", sep))
            added.append(("s", n))
        pieces[insert_at:insert_at] = added
    return pieces


# -- the stage wrapper -----------------------------------------------------------------------------


class ProtectedTranslator:
    """A translator that carries protected spans through the inner one verbatim (see the module docstring).

    Texts are masked with :func:`protect`, the ones with words left go to the inner translator in one
    batch (a text that is only spans comes back as it is), and :func:`restore` puts the spans back.
    Other attributes (``warm``, ``tokenizer``...) are the inner translator's.

    Args:
        inner: the translator (``translate(texts, src_lang, tgt_lang)``).

    Attributes:
        stats: running counts: ``texts``, ``spans``, ``skipped`` (texts that did not need the model),
            ``restored_by_rule`` (spans the model dropped, put back by rule).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stats = {"texts": 0, "spans": 0, "skipped": 0, "restored_by_rule": 0}

    def translate(self, texts: list[str], src_lang: str = "eng_Latn", tgt_lang: str = "jpn_Jpan",
                  **options: Any) -> list[str]:
        """Translations of ``texts`` in order; options (``beam_size``...) go to the inner translator."""
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self.inner.translate(texts, src_lang, tgt_lang, **options)  # its own errors for bad input
        masked: list[tuple[str, list[Span]]] = []
        for text in texts:
            try:
                masked.append(protect(text))
            except Exception as err:  # noqa: BLE001  (a bug here must not cost the sentence: translate it unprotected)
                logger.warning("protected spans: could not scan %r (%s); translating it as it is", text[:80], err)
                masked.append((text, []))
        ask = [i for i, (m, s) in enumerate(masked) if not s or needs_model(m, s)]
        got = self.inner.translate([masked[i][0] for i in ask], src_lang, tgt_lang, **options) if ask else []
        if not isinstance(got, list) or len(got) != len(ask) or not all(isinstance(s, str) for s in got):
            raise TypeError(f"the inner translate() must return a list of {len(ask)} str, got {type(got).__name__}")
        model = dict(zip(ask, got))
        out = []
        for i, (text, (m, spans)) in enumerate(zip(texts, masked)):
            self.stats["texts"] += 1
            self.stats["spans"] += len(spans)
            if i not in model:
                self.stats["skipped"] += 1
                out.append(text.strip())
                continue
            out.append(self._restore(model[i], spans, tgt_lang))
        return out

    def _restore(self, translated: str, spans: list[Span], tgt_lang: str) -> str:
        if not spans:
            return translated
        try:
            restored = restore(translated, spans, tgt_lang)
        except Exception as err:  # noqa: BLE001  (never lose the spans: the model's text, then each span once)
            logger.warning("protected spans: restoring failed (%s); spans appended", err)
            for span in sorted(spans, key=lambda s: -len(s.placeholder)):  # X12 before X1
                translated = translated.replace(span.placeholder, "")
            return " ".join([translated, *(s.text for s in spans)]).strip()
        # Bookkeeping only: how often a rule, not the model, put a span in place.
        self.stats["restored_by_rule"] += sum(1 for s in spans if s.placeholder not in translated)
        return restored

    def translate_stream(self, text: str, src_lang: str = "eng_Latn", tgt_lang: str = "jpn_Jpan",
                         **options: Any) -> Iterator[str]:
        """The whole translation as one piece: a placeholder cannot be restored before it is complete."""
        yield self.translate([text], src_lang, tgt_lang, **options)[0]

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self.inner, name)
