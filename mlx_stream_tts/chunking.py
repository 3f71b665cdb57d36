"""Incremental sentence chunking of streamed text, and the cleanup of a chunk into speakable text.

``SentenceChunker`` takes text in pieces of any size and releases each sentence as soon as its end
is certain; the result never depends on where the pieces were cut, because every decision looks
only at text already seen and waits (``_NeedMore``) when the characters it needs have not arrived.
Markdown blocks are kept whole: a fenced (or indented) code block is one chunk, a table row is one
chunk, and newlines, headings and list items end a sentence. The sentence rules are general ones
(abbreviation classes, initials, acronyms, numbers, ellipses, quotes, Japanese brackets) in the
spirit of the "golden rules" of Pragmatic Segmenter / pySBD, written for streaming.

``speakable`` then turns one chunk into what a voice should read (markdown, URLs, emoji removed).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable, Iterator

logger = logging.getLogger(__name__)

__all__ = ["SentenceChunker", "chunk_sentences", "code_cue", "is_code_block", "speakable"]

# --------------------------------------------------------------------------------------------
# Character classes

_TERMS = frozenset(".!?…。！？｡．‼⁇⁈⁉")
_CJK_TERMS = frozenset("。！？｡．")
_BANGS = frozenset("!?！？‼⁇⁈⁉")
# Closers that may follow a sentence's final punctuation (markdown emphasis markers included, so
# that "**Done.** Next" splits).
_CLOSERS = frozenset(")]}\"'”’»›」』）】〉》〕*_~")
_OPENERS = frozenset("([{\"'“‘«‹「『（【〈《〔*_~")
# Quotes and brackets tracked for depth: no sentence ends inside them (long ones meet the cap).
_DEPTH_OPEN = frozenset("“‘«([「『（【")
_DEPTH_CLOSE = frozenset("”’»)]」』）】\"'")
_QUOTE_CHARS = "\"'“”‘’«»()[]「」『』（）【】"
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
# Hiragana that, ending a line, show the line was cut mid-phrase (particles).
_JA_PARTICLES = frozenset("はがをにでともへやの")
# After a Japanese quote or exclamation, these continue the sentence (「…！」と言った, …！って).
_JA_QUOTE_CONT = frozenset("とっ")

# Characters where the scanner must stop and decide something. Every match is one character and
# looks only backwards, so a match found now is also the first one when more text has come.
_HOT = re.compile(r"[.!?…。！？｡．‼⁇⁈⁉\n`\"'“”‘’«»()\[\]「」『』（）【】]|(?<=\s)[•⁃]")
_HOT_WS = re.compile(_HOT.pattern + r"|\s")
# The number or letter of an inline list marker (" 2. ", " b) ") that ends at a "." or ")".
_MARKER_HEAD = re.compile(r"(?<=\s)(?:\d{1,3}|[a-z])\Z")
_SCAN_LIMIT = 64  # how far a single decision may look (runs of dots, gaps, words)
_CODE_SPAN_MAX = 100  # an inline `code` span longer than this is not code but a stray backtick
_TICKS_OR_NL = re.compile(r"`+|\n")
_HAS_WORD = re.compile(r"[^\W_]")
_LEAD_WS = re.compile(r"\s*")
_SPACE = re.compile(r"\s")
_SQ_CLOSE = re.compile(r"(?<=\S)'|\n")
_PAREN_ITEM = re.compile(r"\((?:\d{1,3}|[A-Za-z]|[ivxlcIVXLC]{1,5})\)")
# Emoji and other pictographs: after a sentence end they belong to that sentence ("Done! 🎉").
_PICTOGRAPHS = "\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\ufe0e\ufe0f\u200d\u20e3"
_SYMBOL_RE = re.compile(f"[{_PICTOGRAPHS}]")
_LINE_MARKERS = re.compile(r"^\s*(?:>\s*)*(?:[-*+•]\s+|\d{1,3}[.)]\s+)?")

# --------------------------------------------------------------------------------------------
# Abbreviations (lower case, without the final period)

# Never end a sentence: titles and words that always precede something.
_TITLES = frozenset(
    "mr mrs ms mx dr prof st mt ft rev hon gen gov sen rep pres capt cmdr col lt maj sgt cpl pvt "
    "adm fr messrs mmes mme mlle e.g i.e cf vs v viz a.k.a w.r.t esp".split()
)
# Often end a sentence: a capitalized word after them starts a new one (unless it is a company
# suffix, "Co. Ltd.").
_ENDERS = frozenset("etc co inc ltd corp llc plc bros gmbh pty lp llp".split())
_COMPANY_SUFFIXES = frozenset("ltd inc co corp llc plc gmbh kg limited ag sa pty lp llp".split())
# Degrees follow the name they qualify, so they often end a sentence: a capitalized word after them
# starts a new one ("She earned her Ph.D. Tom was impressed").
_POSTPOSITIVE = frozenset("ph.d m.d b.a m.a b.s m.s b.sc m.sc d.phil ll.b ll.m m.b.a d.d.s r.n".split())
# Eras behave like times of day: "founded in 753 B.C. Augustus ..." ends, "In 44 B.C. Caesar ..." not.
_ERAS = frozenset("b.c a.d c.e b.c.e a.h".split())
# Units: after a number ("5 ft.") they end a sentence before a capitalized word, never before a
# number ("5 ft. 3 in. long"); elsewhere they are read as their own kind ("in" a word, "lb" generic).
_UNITS = frozenset(
    "in ft yd yds mi lb lbs oz kg g mg km cm mm m hr hrs min mins sec secs gal qt pt tsp tbsp sq cu".split()
)
# Before a number they never end a sentence ("No. 5"); otherwise they are ordinary words ("No.").
_NUMBER_ABBREVS = frozenset("no nos nr n° num".split())
# Other abbreviations: they end a sentence only before a word that typically starts one.
_GENERIC = frozenset(
    "jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur thurs fri sat sun "
    "fig figs eq eqs vol vols ch chap sec sect p pp art para pt pts op ed eds trans est approx ca "
    "cca al dept univ assn assoc ave blvd rd hwy apt bldg min max hr hrs mins secs ref refs ver "
    "misc ex jr sr esq incl resp dist govt intl natl cm mm km kg lb lbs oz".split()
    # Less common titles and ranks (prepositive: a name follows).
    + "insp supt asst atty mgr dir dep cllr commr pfc brig amb ens spc sfc det msgr supr secy treas "
    "lieut cpt cdr cmdt comdr sup supt rt revd hons mgmt".split()
    # Bibliographic and legal references, and parts of a work.
    + "ibid ib cit loc viz ff fn fns nn cols bk bks ser suppl supp repr illus bibl anon orig paras "
    "subsec subch cl cls sch regs chs fol fols ll vv ann comp comps abbr abbrev encyc juris eccl "
    "adj adv conj interj pron fem masc neut colloq syn esp approx".split()
    # Places, units, organisations and other short forms that are no English words.
    + "ln ct pl sq ste ter terr pkwy rte twp jct ctr isl riv lk mtn cyn hts expy fwy tpke cres cir "
    "yd yds qt tbsp tsp wk wks mos yr yrs ext tel mfg grp div qty std avg diam biol chem surg pharm "
    "appt attn estd".split()
)
# Times of day: before one of these capitalized words they do not end the sentence ("at 10 a.m.
# Pacific time", "at 9 a.m. Monday").
_TIME_ZONES = frozenset(
    "pacific eastern central mountain atlantic alaska hawaii local standard daylight summer winter "
    "universal greenwich coordinated".split()
)
# Days and months go on a time only when what follows them does ("at 9 a.m. Monday, June 5",
# "at 9 a.m. Monday." but not "at 3 p.m. Saturday was busy").
_DATES = frozenset(
    "monday tuesday wednesday thursday friday saturday sunday january february march april may june "
    "july august september october november december mon tue tues wed thu thur thurs fri sat sun jan "
    "feb mar apr jun jul aug sep sept oct nov dec".split()
)
_DATE_TAIL = frozenset("morning afternoon evening night".split())
_OPENING_PREPS = frozenset("at on in by by around about before after until till since from during early late every".split())
# Interjections spelled without a vowel: unlike "Mgr." or "Pfc." they are words, not abbreviations.
_VOWELLESS_WORDS = frozenset("hmm hm mmm mm shh sh ssh psst pst brr grr tsk pfft zzz nth".split())
_VOWELLESS_RE = re.compile(r"[B-DF-HJ-NP-TV-Z][b-df-hj-np-tv-z]{1,4}")
# Names spelled with "!": before a capitalized word they end a sentence only like abbreviations.
_BANG_NAMES = frozenset("yahoo yum jeopardy wham joomla e airplane oliver panic".split())
# Closed-class words that typically start a sentence: after an acronym ("U.S."), an initial or a
# generic abbreviation, a capitalized word from this list starts a new sentence; any other
# capitalized word is taken as a proper-noun continuation ("the U.S. Government").
_STARTERS = frozenset(
    """the a an this that these those there then thus hence i he she it we you they my his her its
    our your their who what when where why how which whose but and or so yet if as at in on of for
    to by with from after before since while although though because however also now here let
    let's please do does did don't doesn't didn't is are was were be been has have had can could
    would should must shall not no yes some many most all each every both one another other such
    only first next finally meanwhile otherwise therefore instead perhaps maybe sometimes usually
    i'm i've i'll i'd he's she's it's we're they're you're that's there's what's here's""".split()
)

_ACRONYM_RE = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
# Reference marks after a sentence end belong to it ("martyr.[1] The", "a gas. [1][2] It").
_REF_MARKS = re.compile(r"(?: ?\[\d{1,3}\])+")
# An ellipsis after ! or ? ("Happy! ... no one", "Happy? . . .  No one").
_AFTER_BANG_ELLIPSIS = re.compile(r"\.(?: ?\.){2,}")
# Words that begin with an apostrophe: no quote opens there ("'Tis", "get 'em", "the 'nineties",
# and the clitics of tokenized text: "Walter 's brother", "they 're").
_ELISIONS = frozenset(
    "tis twas twere twill em til cause cos round bout n nuff ere neath gainst scuse s re ll ve d m t "
    "twenties thirties forties fifties sixties seventies eighties nineties".split()
)
_LETTERS = re.compile(r"[A-Za-z]+")
_NUMBER_BEFORE = re.compile(r"\d[\d,.]*\s+\Z")
_MARKER_ONLY_RE = re.compile(r"[*_\s]*(?:[•⁃‣◦▪\-*+]\s*)?[*_]*(?:\d{1,3}|[A-Za-z]|[ivxIVX]{2,4})")
# "world.Today": a period between a word and a capitalized word with no space.
_GLUED_PREV_RE = re.compile(r"(?:[A-Za-z]*[a-z]|\d[\d,]*)")
_GLUED_NEXT_RE = re.compile(r"([A-Z][a-z]+)[.!?,;:'\"”’)\]]*")

# Split candidates for over-long text, best first: (pattern, split before the match?).
_CAP_TIERS = (
    (re.compile(r"[;:；：](?=\s)|\s[—–-]+\s|[—–]|[。！？｡](?!\s*[」』）】])"), False),
    (re.compile(r",(?=\s)|[、，]"), False),
    (
        re.compile(
            r"\s(?=(?:and|but|or|so|yet|because|which|while|whereas|although|though|when|where"
            r"|if|unless|until|since|then|that)\b)"
        ),
        True,
    ),
    (re.compile(r"\s"), True),
    (re.compile(r"(?<=[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f])(?=\S)"), True),
)

_TEXT, _FENCE, _ICODE = "text", "fence", "icode"


class _NeedMore(Exception):
    """Raised when a decision needs characters that have not arrived yet."""


def _norm_lang(lang: str) -> str:
    if not isinstance(lang, str):
        raise TypeError(f"lang must be a language code string such as 'en' or 'ja', got {lang!r}")
    low = lang.strip().lower()
    return "ja" if low.startswith(("ja", "jpn")) else "en"


class SentenceChunker:
    """Splits streamed text into sentences (and markdown blocks), each released once certain.

    Feed pieces of any size with :meth:`feed`; call :meth:`flush` at the end of the stream. The
    chunks are the input's own text with surrounding whitespace stripped, and do not depend on how
    the input was cut into pieces. After :meth:`flush` the chunker is empty and can be reused.

    Args:
        lang: ``"en"`` or ``"ja"`` (other codes get the English rules). English and Japanese
            punctuation are understood in both; ``"ja"`` also joins a line cut after a particle.
        max_chars: the length cap. A sentence that reaches it is split at a strong clause
            boundary (``;``, ``:``, dash) if it has one; one that reaches 1.5 times it at the best
            weaker boundary (comma, before a conjunction, then any space); a run without any space
            is cut at three times it. Code blocks are never split; a table row only at three
            times it.

    Raises:
        ValueError: when ``max_chars`` is below 20.
    """

    def __init__(self, lang: str = "en", max_chars: int = 200) -> None:
        if not isinstance(max_chars, int) or max_chars < 20:
            raise ValueError(f"max_chars must be an int >= 20, got {max_chars!r}")
        self.lang = _norm_lang(lang)
        self.max_chars = max_chars
        self._soft = max_chars * 3 // 2
        self._hard = 3 * max_chars
        self._reset()

    # -- public API -------------------------------------------------------------------------

    def feed(self, text: str) -> list[str]:
        """Adds a piece of text; returns the sentences whose end is now certain.

        Raises:
            TypeError: when ``text`` is not a string.
        """
        if not isinstance(text, str):
            raise TypeError(f"feed() takes str, got {type(text).__name__}")
        if not text:
            return []
        self._buf += text
        return self._scan(final=False)

    def flush(self) -> list[str]:
        """Ends the stream: returns every remaining chunk and empties the chunker."""
        out = self._scan(final=True)
        rest = "".join(self._held) + self._buf[self._seg :]
        self._held = []
        chunk = self._clean(rest, self._mode == _ICODE)
        if chunk:
            out.append(chunk)
        self._reset()
        return out

    @property
    def pending(self) -> str:
        """The text held back, waiting for its sentence end."""
        return "".join(self._held) + self._buf[self._seg :]

    def split_head(self, min_words: int = 8) -> str | None:
        """Ends the sentence still arriving at its first clause boundary (see :func:`clause_head`).

        For an early start: when nothing is being spoken, the first clause of a long sentence can
        go ahead while the rest is still being written. Only the part already known not to end the
        sentence is looked at, and only in running text (no code block, table, heading, open
        quote, bracket or inline code span). The rest stays pending and comes out as the next chunk.

        Returns:
            The head (cleaned like any chunk), or None when there is no such boundary yet.
        """
        if self._mode != _TEXT or self._held or self._classify or self._line_kind not in ("text", "list", "quote"):
            return None
        seg = self._seg
        k = clause_head(self._buf[seg : self._i], self.lang, min_words)
        if k is None or any(a < seg + k < b for a, b in self._protect):
            return None
        out: list[str] = []
        self._break_at(seg + k, out)
        return out[0] if out else None

    # -- state ------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._buf = ""
        self._held: list[str] = []  # finished lines of a long code block, moved out of _buf
        self._seg = 0  # start of the current chunk in _buf
        self._i = 0  # next position to examine; everything in [_seg, _i) is decided "no end"
        self._line = 0  # start of the current line
        self._line_kind = "text"  # text | list | quote | heading | table | blank
        self._classify = True  # the line at _i still has to be classified
        self._prev_blank = True
        self._list_ctx = False
        self._mode = _TEXT
        self._fence: tuple[str, int] = ("`", 3)
        self._fbody = False  # in a code block: the rest of the current line is body
        self._depth = 0  # open quotes and brackets
        self._protect: list[tuple[int, int]] = []  # inline code spans in the current chunk
        self._cap_phase = 0  # 0: short; 1: past max_chars; 2: past 1.5 x max_chars, no split found
        self._cap_scan = 0
        self._final = False

    def _ch(self, k: int) -> str:
        """The character at k; "" past the end of a finished stream; _NeedMore otherwise."""
        if k < len(self._buf):
            return self._buf[k]
        if self._final:
            return ""
        raise _NeedMore

    # -- scanning -----------------------------------------------------------------------------

    def _scan(self, final: bool) -> list[str]:
        self._final = final
        out: list[str] = []
        try:
            while self._step(out):
                pass
        except _NeedMore:
            pass
        self._compact()
        return out

    def _step(self, out: list[str]) -> bool:
        if self._mode != _TEXT:
            return self._step_block(out)
        if self._classify:
            if self._i >= len(self._buf) and not self._final:
                return False
            return self._start_line()
        if self._seg < self._i and self._buf[self._seg].isspace():
            # Leading whitespace is no part of the chunk: it must not count towards the cap.
            self._seg = _LEAD_WS.match(self._buf, self._seg, self._i).end()
        if self._cap(out):
            return True
        buf, n, i, seg = self._buf, len(self._buf), self._i, self._seg
        if i >= n:
            return False
        limit = seg + self._cap_threshold()
        regex = _HOT_WS if self._cap_phase == 2 else _HOT
        m = regex.search(buf, i, min(n, limit))
        if m is not None:
            return self._handle(m, out)
        if n >= limit:
            self._i = limit
            return True
        self._i = n
        return False

    def _handle(self, m: re.Match, out: list[str]) -> bool:
        # Handlers change no state before they may raise _NeedMore: the same decision is then taken
        # again from the same place when more text has come.
        j = m.start()
        c = self._buf[j]
        if c == "\n":
            return self._on_newline(j, out)
        if c == "`":
            return self._on_backtick(j)
        if c in ".)" and self._inline_marker(j, out):
            return True
        if c in _QUOTE_CHARS:
            return self._on_quote(j)
        if c in _TERMS:
            if self._line_kind in ("table", "heading"):
                self._i = j + 1
                return True
            return self._on_terminator(j, out)
        if c in "•⁃" and self._list_continues(j, c):
            return self._break_at(j, out)
        self._i = j + 1
        return True

    def _break_at(self, k: int, out: list[str]) -> bool:
        """Ends the current chunk at k; the next one starts there."""
        chunk = self._clean("".join(self._held) + self._buf[self._seg : k], self._mode == _ICODE)
        self._held = []
        if chunk:
            out.append(chunk)
        self._seg = self._i = self._cap_scan = k
        self._depth = 0
        self._protect = []
        self._cap_phase = 0
        if k == 0 or self._buf[k - 1] == "\n":
            self._line = k
            self._classify = True
        return True

    @staticmethod
    def _clean(chunk: str, indented_code: bool) -> str:
        if indented_code:  # keep the first line's indentation: it marks the chunk as code
            return re.sub(r"\A(?:[ \t]*\r?\n)+", "", chunk.rstrip())
        return chunk.strip()

    def _compact(self) -> None:
        """Drops emitted text from the buffer (and moves long code blocks out of it)."""
        if self._mode != _TEXT and self._i - self._seg > 1 << 16:
            self._held.append(self._buf[self._seg : self._i])
            self._seg = self._i
        # Keep a few characters before the chunk: some rules look one character back.
        cut = min(self._seg, self._line if self._line >= self._i - 1024 else self._i - 1024) - 16
        if cut > 4096 and cut * 2 > len(self._buf):
            self._buf = self._buf[cut:]
            self._seg -= cut
            self._i -= cut
            self._line = max(0, self._line - cut)
            self._cap_scan = max(0, self._cap_scan - cut)
            self._protect = [(a - cut, b - cut) for a, b in self._protect]

    # -- lines --------------------------------------------------------------------------------

    def _classify_line(self, p: int) -> tuple[str, int, int]:
        """(kind, position of the first content character, indentation) of the line at p.

        Kinds: blank, fence, icode, heading, table, quote, list, text.
        """
        q, indent = p, 0
        while True:
            ch = self._ch(q)
            if ch in ("", "\n"):
                return "blank", q, indent
            if not ch.isspace():
                break
            indent += 4 if ch == "\t" else 1 if ch == " " else 0  # as _indent_width (is_code_block)
            q += 1
            if q - p > _SCAN_LIMIT:
                return "text", q, indent
        if indent >= 4 and self._prev_blank and not self._list_ctx:
            return "icode", q, indent
        if ch in "`~":
            run = 1
            while run < _SCAN_LIMIT and self._ch(q + run) == ch:
                run += 1
            if run < 3:
                return "text", q, indent
            if ch == "`":  # a backtick fence's info string has no backtick ("```x``` y" is inline)
                k = q + 3
                while True:
                    c2 = self._ch(k)
                    if c2 in ("", "\n") or k - q > 4 * _SCAN_LIMIT:
                        break
                    if c2 == "`" and self._buf[k - 1] != "`":
                        return "text", q, indent
                    k += 1
            return "fence", q, indent
        if ch == "#":
            run = 1
            while run <= 6 and self._ch(q + run) == "#":
                run += 1
            after = self._ch(q + run)
            return ("heading" if run <= 6 and (after == "" or after.isspace()) else "text"), q, indent
        if ch == "|":
            return "table", q, indent
        if ch == ">":
            k = q
            while True:
                c2 = self._ch(k)
                if c2 == "" or not (c2 == ">" or c2 in " \t"):
                    break
                k += 1
                if k - q > _SCAN_LIMIT:
                    break
            return "quote", k, indent
        if ch in "•⁃‣◦▪":
            return "list", q, indent
        if ch in "-*+":
            after = self._ch(q + 1)
            return ("list" if after in (" ", "\t") else "text"), q, indent
        if "0" <= ch <= "9":
            k = q + 1
            while k - q < 3 and "0" <= self._ch(k) <= "9":
                k += 1
            if self._ch(k) in (".", ")") and self._ch(k + 1) in (" ", "\t"):
                return "list", q, indent
            return "text", q, indent
        if ch.isascii() and ch.isalpha():
            if self._ch(q + 1) in (".", ")") and self._ch(q + 2) in (" ", "\t"):
                return "list", q, indent
        return "text", q, indent

    def _start_line(self) -> bool:
        i = self._i
        kind, pos, indent = self._classify_line(i)
        self._classify = False
        self._line = i
        if kind == "blank":
            self._prev_blank = True
            self._line_kind = "blank"
            if self._final and pos >= len(self._buf):
                self._i = len(self._buf)
            return True
        self._prev_blank = False
        if kind == "list":
            self._list_ctx = True
        elif indent < 2:
            self._list_ctx = False
        if kind == "fence":
            self._mode = _FENCE
            ch = self._buf[pos]
            run = 0
            while run < _SCAN_LIMIT and pos + run < len(self._buf) and self._buf[pos + run] == ch:
                run += 1
            self._fence = (ch, run)
            self._i = pos + run
            self._fbody = True
        elif kind == "icode":
            self._mode = _ICODE
            self._fbody = True
        else:
            self._line_kind = kind
        return True

    def _step_block(self, out: list[str]) -> bool:
        """Scans a fenced or indented code block, line by line, until it ends."""
        buf = self._buf
        while True:
            i = self._i
            if self._fbody:
                k = buf.find("\n", i)
                if k < 0:
                    self._i = len(buf)
                    return False
                self._i = k + 1
                self._fbody = False
                continue
            # At the start of a line inside the block.
            q = i
            while True:
                ch = self._ch(q)
                if ch == "" or ch == "\n" or not (ch in " \t"):
                    break
                q += 1
                if q - i > _SCAN_LIMIT:
                    break
            if ch == "":  # end of stream
                self._i = len(buf)
                return False
            if self._mode == _ICODE:
                indent = buf[i:q].replace("\t", "    ")
                if ch == "\n" or len(indent) >= 4:
                    self._fbody = ch != "\n"
                    self._i = q + 1 if ch == "\n" else q
                    continue
                self._break_at(i, out)
                self._mode = _TEXT
                self._prev_blank = False
                return True
            fch, flen = self._fence
            run = 0
            while self._ch(q + run) == fch:
                run += 1
                if run > _SCAN_LIMIT:
                    break
            closing = run >= flen
            k = q + run
            while closing:
                c2 = self._ch(k)
                if c2 in ("", "\n"):
                    break
                if c2 not in " \t\r" or k - q > _SCAN_LIMIT:
                    closing = False
                k += 1
            if not closing:
                self._fbody = True
                self._i = q
                continue
            self._mode = _TEXT
            self._prev_blank = False
            end = k + 1 if k < len(buf) else k
            return self._break_at(end, out)

    def _on_newline(self, j: int, out: list[str]) -> bool:
        kind = self._line_kind
        if kind in ("heading", "table", "blank"):
            return self._break_at(j + 1, out)
        line = self._buf[max(self._line, j - 200) : j]
        wrapped = self._soft_wrappable(line)
        if not wrapped and kind != "list":
            return self._break_at(j + 1, out)
        q = j + 1
        while True:  # the next line's first visible character decides most cases alone
            c0 = self._ch(q)
            if not c0 or c0 == "\n" or not c0.isspace():
                break
            q += 1
            if q - j > _SCAN_LIMIT:
                break
        if not (c0.islower() or _CJK_RE.match(c0) or (kind == "quote" and c0 == ">")):
            return self._break_at(j + 1, out)
        nkind, pos, indent = self._classify_line(j + 1)
        if nkind == "quote" and kind == "quote":
            nkind = "text"
        # An indented lower-case line after a list item continues the item even when it is short.
        wrapped = wrapped or indent >= 2
        if nkind != "text" or not wrapped or not self._continues(line, self._ch(pos)):
            return self._break_at(j + 1, out)
        self._line = j + 1
        self._i = j + 1
        return True

    def _soft_wrappable(self, line: str) -> bool:
        """Whether a line without final punctuation looks like prose cut by a line wrap."""
        s = _LINE_MARKERS.sub("", line).strip()
        if not s or s[-1] == ":":
            return False
        if s[-1] in ",;(-–—、":
            return True
        if self.lang == "ja" and s[-1] in _JA_PARTICLES and len(s) > 1 and _CJK_RE.match(s[-2]):
            return True
        return len(s.split()) >= 3

    def _continues(self, line: str, c0: str) -> bool:
        if not c0:
            return False
        if c0.islower() and c0 < "\u0250":
            return True
        s = line.rstrip()
        return self.lang == "ja" and bool(s) and s[-1] in _JA_PARTICLES and bool(_CJK_RE.match(c0))

    # -- inline code and list markers -----------------------------------------------------------

    def _on_backtick(self, j: int) -> bool:
        buf = self._buf
        k = j
        while self._ch(k) == "`":
            k += 1
            if k - j > 16:
                break
        run, p, limit = k - j, k, j + _CODE_SPAN_MAX
        while True:
            end = min(len(buf), limit)
            m = _TICKS_OR_NL.search(buf, p, end)
            if m is None:
                if len(buf) >= limit or self._final:
                    break  # no closing run close enough: a stray backtick
                raise _NeedMore
            if m.group() == "\n":
                break
            if m.end() >= len(buf) and not self._final:
                raise _NeedMore  # the run may grow
            if m.end() - m.start() == run:
                self._protect.append((j, m.end()))
                self._i = m.end()
                return True
            p = m.end()
        self._i = k
        return True

    def _inline_marker(self, j: int, out: list[str]) -> bool:
        """At the "." or ")" of a list marker (" 2. ", " 2) ", " 2.) "), splits before it when it
        continues the list that this chunk began ("1. first item 2. second item")."""
        if self._line_kind == "table" or j - self._seg < 3:
            return False
        m = _MARKER_HEAD.search(self._buf, max(self._seg, j - 4), j)
        if m is None:
            return False
        end = j + 1
        if self._buf[j] == "." and self._ch(end) == ")":
            end += 1
        after = self._ch(end)
        if not after.isspace() or not self._list_continues(m.start(), self._buf[m.start() : end]):
            return False
        return self._break_at(m.start(), out)

    def _list_continues(self, p: int, marker: str) -> bool:
        """Whether the marker at p follows the marker this chunk starts with (1. -> 2., a) -> b))."""
        head = self._buf[self._seg : p].lstrip()
        if not head.strip():
            return False
        if marker in ("•", "⁃"):
            return head.startswith(marker)
        body, style = (marker[:-2], ".)") if marker.endswith(".)") else (marker[:-1], marker[-1])
        if body.isdigit():
            prev = str(int(body) - 1) if int(body) > 1 else ""
        else:
            prev = chr(ord(body) - 1) if body > "a" else ""
        return bool(prev) and re.match(r"(?:[•⁃]\s*)?" + re.escape(prev + style) + r"\s", head) is not None

    # -- sentence ends ------------------------------------------------------------------------

    def _prev_token(self, j: int) -> str:
        """The word right before position j (within the chunk), without opening quotes/brackets."""
        s = self._buf[max(self._seg, j - _SCAN_LIMIT) : j]
        tok = s.split()[-1] if s and not s[-1].isspace() else ""
        return tok.lstrip("([{\"'“‘«「『*_`")

    def _token_kind(self, j: int, tok: str) -> str:
        """What the word before a period at j is: marker (the chunk is only "1" or "a"), title,
        ender, numabbr, acronym, initial, generic (abbreviations), number or plain."""
        if j - self._seg <= _SCAN_LIMIT and _MARKER_ONLY_RE.fullmatch(self._buf[self._seg : j].strip()):
            return "marker"
        if not tok:
            return "plain"
        low = tok.lower().rstrip("'’")
        if low in _TITLES:
            return "title"
        if low in _ENDERS or low in _POSTPOSITIVE:
            return "ender"
        if low in _NUMBER_ABBREVS:
            return "numabbr"
        if _ACRONYM_RE.fullmatch(tok):
            if low in ("a.m", "p.m"):
                return "time"
            if low in _ERAS:
                return "era"
            return "acronym"
        if low in _UNITS and _NUMBER_BEFORE.search(self._buf, max(self._seg, j - len(tok) - 12), j - len(tok)):
            return "unit"
        if len(tok) == 1 and tok.isupper():
            return "initial"
        if low in _GENERIC or (len(tok) == 1 and tok.islower()):
            return "generic"
        if _VOWELLESS_RE.fullmatch(tok) and low not in _VOWELLESS_WORDS:
            return "generic"  # "Mgr.", "Pfc.", "Jct.": a capitalized word without a vowel is a short form
        if tok[-1].isdigit():
            return "number"
        return "plain"

    def _on_terminator(self, j: int, out: list[str]) -> bool:
        """Decides whether the final punctuation at j ends the sentence.

        The cluster (more marks and closing quotes) is read first, then the next visible
        character. Kinds: period, bang (! ?), cjk (。！？．), ellipsis (... …), spaced3 and
        spaced4 (". . ." and ". . . ." standing alone), attached_spaced ("word. . . .": the
        sentence ends at the word and the ellipsis begins the next one).
        """
        buf = self._buf
        c = buf[j]
        attached = j > self._seg and not buf[j - 1].isspace()
        if c in _CJK_TERMS or c in "！？":
            kind = "cjk"
        else:
            kind = "bang" if c in _BANGS else "ellipsis" if c == "…" else "period"
        dots = 0
        e = j
        if c == ".":
            # A spaced ellipsis ". . ." (not ". .NET").
            while self._ch(e + 1) == " " and self._ch(e + 2) == ".":
                after = self._ch(e + 3)
                if after and (after.isalnum() or after == "_"):
                    break
                dots += 1
                e += 2
                if dots > 16:
                    break
            if dots:
                dots += 1
                if attached and dots >= 4:
                    kind = "attached_spaced"
                else:
                    kind = "spaced4" if dots >= 4 and not attached else "spaced3"
        # The rest of the cluster: more final punctuation and closing quotes/brackets.
        depth = self._depth
        has_closer = False
        e += 1
        while e - j <= _SCAN_LIMIT:
            ch = self._ch(e)
            if ch in _TERMS:
                if kind == "period" and ch in ".…":
                    kind = "ellipsis"
                elif ch in _CJK_TERMS:
                    kind = "cjk"
                elif ch in _BANGS and kind == "period":
                    kind = "bang"
                e += 1
            elif ch in _CLOSERS and ch:
                has_closer = True
                if ch in _DEPTH_CLOSE:
                    depth = max(0, depth - 1)
                e += 1
            else:
                break
        if kind == "ellipsis" and j > self._seg and buf[j - 1] in "[(":
            return self._no_break(e, depth, -1)  # "[...]" marks an omission, not an end
        e = self._ref_marks(e)
        nx = self._ch(e)
        if nx == "":
            return self._end_at(e, depth, out)
        tok = self._prev_token(j) if kind in ("period", "attached_spaced") else ""
        tkind = self._token_kind(j, tok) if tok or kind == "period" or c == "．" else "plain"
        if kind == "period" and not attached and tkind == "plain":
            # Tokenized text sets a period off by a space: "Mr . Robinson", "U.S . Highway 190".
            word = self._prev_token(j - 1) if j - 1 > self._seg and buf[j - 1] == " " else ""
            if word.lower() in _TITLES or _ACRONYM_RE.fullmatch(word):
                tkind = "title" if word.lower() in _TITLES else "acronym"
        if tkind == "marker" and kind in ("period", "bang", "cjk"):
            self._depth = depth
            self._i = e
            return True
        if not nx.isspace():
            return self._glued(j, e, nx, kind, depth, has_closer, out)

        # Whitespace follows: find the next visible character.
        plain_end = kind in ("bang", "cjk", "ellipsis", "spaced3", "spaced4") or (
            kind == "period" and tkind in ("plain", "number")
        )
        q, newlines, last_nl = e, 0, -1
        while True:
            ch = self._ch(q)
            if ch == "" or not ch.isspace():
                break
            if ch == "\n":
                newlines += 1
                last_nl = q
                if newlines >= 2 or plain_end or kind == "attached_spaced":
                    k = j + 1 if kind == "attached_spaced" and tkind in ("plain", "number") else e
                    return self._end_at(k, depth, out)
            q += 1
            if q - e > _SCAN_LIMIT:
                return self._end_at(e, depth, out)
        if ch == "":
            return self._end_at(e, depth, out)
        if newlines:
            nkind, _, _ = self._classify_line(last_nl + 1)
            if nkind != "text":
                return self._end_at(e, depth, out)
        if depth > 0:
            return self._no_break(q, depth, last_nl)
        if kind == "bang" and ch == "." and not newlines:
            return self._bang_ellipsis(q, depth, out)
        if ch == "(" and not has_closer and self._starter_follows(q + 1):
            return self._end_at(e, depth, out)  # "... the same line. (How about a sentence?)"
        if ch in "([":
            # A parenthesis after a sentence end belongs to that sentence, unless it is a list
            # marker such as "(b)" or "(iv)".
            close = buf.find(")", q, q + 9)
            if close < 0 and len(buf) < q + 9 and not self._final:
                raise _NeedMore
            if close > 0 and _PAREN_ITEM.fullmatch(buf, q, close + 1):
                return self._end_at(e, depth, out)
            return self._no_break(q, depth, last_nl)
        if _SYMBOL_RE.match(ch):
            return self._after_symbols(q, depth, last_nl, kind, tkind, out)
        if kind == "cjk":
            return self._end_at(e, depth, out)
        # The first letter of the next word, through any opening quotes or brackets.
        a_pos = q
        while self._ch(a_pos) in _OPENERS and a_pos - q < 8:
            a_pos += 1
        a = self._ch(a_pos)
        if a == "":
            return self._end_at(e, depth, out)
        if a_pos == q and "a" <= a <= "z" and kind in ("period", "bang") and tkind != "title" and len(tok) != 1:
            # "... the store. w) hello x) hello": a letter list marker starts a new item.
            m2 = self._ch(q + 1)
            if m2 in (".", ")"):
                m3 = self._ch(q + 2)
                if m3.isspace() or (m2 == "." and m3 == ")" and self._ch(q + 3).isspace()):
                    return self._end_at(e, depth, out)
        if kind == "bang":
            split = not a.islower()
            if split and c == "!" and self._prev_token(j).lower() in _BANG_NAMES:
                split = self._period_splits("generic", a, a_pos)  # "Yahoo! Research" is a name
        elif kind in ("ellipsis", "spaced3"):
            split = kind == "ellipsis" and not (a.islower() or a.isdigit())
        elif kind == "spaced4":
            split = a.isupper()
        elif kind == "attached_spaced":
            if a.isupper() and tkind in ("plain", "number"):
                return self._end_at(j + 1, depth, out)
            split = False
        else:
            split = self._period_splits(tkind, a, a_pos)
        if split:
            return self._end_at(e, depth, out)
        return self._no_break(q, depth, last_nl)

    def _ref_marks(self, e: int) -> int:
        """The end of the reference marks ("[1]", " [2][3]") that start at e, or e."""
        if self._ch(e) not in "[ " or (self._ch(e) == " " and self._ch(e + 1) != "["):
            return e
        limit = e + 6 * 8
        m = _REF_MARKS.match(self._buf, e, limit)
        end = m.end() if m else e
        if len(self._buf) < end + 6 and not self._final:
            raise _NeedMore  # "[12" so far, or another mark may follow
        return end

    def _bang_ellipsis(self, q: int, depth: int, out: list[str]) -> bool:
        """"Happy! ... no one" goes on; "Happy! ...  No one" ends after the ellipsis."""
        limit = q + 16
        m = _AFTER_BANG_ELLIPSIS.match(self._buf, q, limit)
        if m is None or m.end() >= len(self._buf):
            if not self._final and len(self._buf) < limit:
                raise _NeedMore
            if m is None:
                return self._no_break(q, depth, -1)
        r = m.end()
        while self._ch(r).isspace() and r - q < _SCAN_LIMIT:
            r += 1
        a = self._ch(r)
        if a == "" or not a.islower():
            return self._end_at(m.end(), depth, out)
        return self._no_break(r, depth, -1)

    def _starter_follows(self, k: int) -> bool:
        """Whether a capitalized sentence starter begins at k ("(How about ...", "(This is ...")."""
        end = k
        while self._ch(end).isalpha() or self._ch(end) in "'’":
            end += 1
            if end - k > 12:
                return False
        word = self._buf[k:end]
        return word[:1].isupper() and word.lower() in _STARTERS

    def _after_symbols(self, q: int, depth: int, last_nl: int, kind: str, tkind: str, out: list[str]) -> bool:
        """Emoji after a sentence end stay with it; the sentence then ends after them if it ends."""
        r = end = q
        while r - q < 16:
            ch = self._ch(r)
            if ch == "" or ch == "\n":
                return self._end_at(end, depth, out)
            if _SYMBOL_RE.match(ch):
                end = r + 1
            elif not ch.isspace():
                break
            r += 1
        if _SYMBOL_RE.match(ch) or ch.isspace() or kind == "cjk":
            return self._end_at(end, depth, out)
        if kind == "period":
            split = ch.isupper() and tkind in ("plain", "number", "ender")
        else:
            split = not ch.islower()
        if split:
            return self._end_at(end, depth, out)
        return self._no_break(r, depth, last_nl)

    def _end_at(self, k: int, depth: int, out: list[str]) -> bool:
        """Ends the sentence at k, unless it would have no word at all ("! ! !", "...")."""
        if _HAS_WORD.search(self._buf, self._seg, k) is None:
            self._depth = depth
            self._i = k
            return True
        return self._break_at(k, out)

    def _on_quote(self, j: int) -> bool:
        """Tracks the depth of quotes and brackets; straight quotes open or close by context."""
        buf = self._buf
        c = buf[j]
        prev = buf[j - 1] if j > 0 else " "
        opening_ctx = prev.isspace() or prev in _OPENERS
        if c in "()" and prev in ":;" and j > 0:
            delta = 0  # an emoticon, :( or ;)
        elif c in _DEPTH_OPEN:
            delta = 1
        elif c == '"':
            delta = 1 if opening_ctx else -1
        elif c in "'’":
            nxt = self._ch(j + 1)
            if c == "'" and opening_ctx and nxt.isalpha():
                delta = 0 if self._elision(j + 1) else 1 if self._single_quote_closes(j) else 0
            elif prev.isalnum() and nxt.isalnum():
                delta = 0  # an apostrophe: don't, Jane's
            else:
                delta = -1 if not prev.isspace() else 0
        else:
            delta = -1
        self._depth = max(0, self._depth + delta)
        self._i = j + 1
        return True

    def _elision(self, k: int) -> bool:
        """Whether the word at k, after an apostrophe, is an elision ("'tis", "'em", "'nineties")."""
        end = k
        while self._ch(end).isalpha():
            end += 1
            if end - k > 12:
                return False
        return self._buf[k:end].lower() in _ELISIONS

    def _single_quote_closes(self, j: int) -> bool:
        """Whether the ' at j opens a quote: a closing ' follows on the line ("'nineties" has none)."""
        buf, p, limit = self._buf, j + 2, j + max(150, self._soft)
        while True:
            m = _SQ_CLOSE.search(buf, p, min(len(buf), limit))
            if m is None:
                if len(buf) >= limit or self._final:
                    return False
                raise _NeedMore
            if m.group() == "\n":
                return False
            if not self._ch(m.end()).isalnum():  # not an apostrophe inside a word (isn't)
                return True
            p = m.end()

    def _no_break(self, q: int, depth: int, last_nl: int) -> bool:
        self._depth = depth
        if last_nl >= 0:
            self._line = last_nl + 1
        self._i = q
        return True

    def _date_goes_on(self, k: int) -> bool:
        """After a day or month name ending at k: punctuation, a number or "morning" follows."""
        ch = self._ch(k)
        if ch != " ":
            return ch != "" and not ch.isalpha()
        m = re.compile(r" *([a-z]+|\d)").match(self._buf, k)
        end = m.end() if m else k
        if end >= len(self._buf) and not self._final:
            raise _NeedMore
        return m is not None and (m.group(1).isdigit() or m.group(1) in _DATE_TAIL)

    def _opens_sentence(self, a_pos: int) -> bool:
        """Whether the time before a_pos ends an opening adverbial: the sentence so far starts with a
        preposition ("At 5 a.m. Mr. Smith left", "On Monday at 6 a.m. Mr. Smith arrived")."""
        head = self._buf[self._seg : a_pos]
        clause = max(head.rfind(": "), head.rfind("; ")) + 1  # "He noted: In 44 B.C. Caesar died."
        words = head[clause:].split(None, 1)
        return bool(words) and words[0].strip("\"'“‘(").lower() in _OPENING_PREPS

    def _period_splits(self, tkind: str, a: str, a_pos: int) -> bool:
        """Whether "<token>. <a...>" ends a sentence, given the token's kind."""
        if a.islower() or tkind == "title":
            return False
        if a.isdigit():
            # A time is not followed by a number ("7 a.m. is before 7 p.m. 7 a.m. is ...").
            return tkind in ("plain", "number", "ender", "time")
        if not (a.isascii() and a.isupper()):
            return tkind in ("plain", "number", "numabbr", "ender", "unit")
        if tkind in ("plain", "number", "numabbr", "unit"):
            return True
        # A capitalized word: read it whole.
        k = a_pos
        while True:
            ch = self._ch(k)
            if not ch or not (ch.isalpha() or ch in "'’-") or k - a_pos > 32:
                break
            k += 1
        word = self._buf[a_pos:k]
        if tkind in ("time", "era"):
            # A time or era usually closes its clause, so a capitalized word after it starts a new
            # sentence ("at 6 p.m. Mr. Smith left", "in 753 B.C. Augustus ..."), unless the time
            # ends an opening adverbial ("At 5 a.m. Mr. Smith left", "In 44 B.C. Caesar ...") or
            # the word goes on with it: a time zone ("at 10 a.m. Pacific time", "p.m. PDT") or a
            # date ("at 9 a.m. Monday, June 5").
            low = word.lower()
            if tkind == "time" and (low in _TIME_ZONES or (word.isupper() and len(word) > 1)):
                return False
            if low in _DATES and self._date_goes_on(k):
                return False
            return low in _STARTERS or not self._opens_sentence(a_pos)
        word = word.lower()
        if tkind == "ender":
            return word not in _COMPANY_SUFFIXES
        return word in _STARTERS and self._ch(k) != "."

    def _glued(
        self, j: int, e: int, nx: str, kind: str, depth: int, has_closer: bool, out: list[str]
    ) -> bool:
        """Decides a sentence end followed directly by a visible character."""
        buf = self._buf
        c = buf[j]
        prev = buf[j - 1] if j > 0 else ""
        if kind == "cjk":
            if c == "．" and e == j + 1 and prev.isdigit() and nx.isdigit():
                return self._no_break(e, depth, -1)
            if depth > 0 or nx in "、，," or nx == "っ" or (nx == "と" and (has_closer or c in "！？")):
                return self._no_break(e, depth, -1)
            return self._end_at(e, depth, out)
        if kind in ("period", "bang") and _CJK_RE.match(nx) and (_CJK_RE.match(prev) or has_closer):
            if depth > 0 or (nx in _JA_QUOTE_CONT and (kind == "bang" or has_closer)):
                return self._no_break(e, depth, -1)
            return self._end_at(e, depth, out)
        if kind == "period" and e == j + 1 and nx.isupper() and prev.isalnum():
            # "world.Today": split unless the token looks like a name, path, URL or address.
            tok = self._prev_token(j)
            if len(tok) >= 2 and _GLUED_PREV_RE.fullmatch(tok) and self._token_kind(j, tok) in ("plain", "number"):
                m = _SPACE.search(buf, e, e + _SCAN_LIMIT)
                if m is None and len(buf) < e + _SCAN_LIMIT and not self._final:
                    raise _NeedMore
                k = m.start() if m else min(len(buf), e + _SCAN_LIMIT)
                word = _GLUED_NEXT_RE.fullmatch(buf, e, k)
                # After a capitalized word only a sentence starter splits ("React.Component" stays).
                if word and (tok[0].islower() or tok[0].isdigit() or word.group(1).lower() in _STARTERS | _TITLES):
                    return self._end_at(e, depth, out)
        return self._no_break(e, depth, -1)

    # -- length cap ---------------------------------------------------------------------------

    def _cap_threshold(self) -> int:
        """The chunk length at which the length cap looks for a split next."""
        if self._cap_phase == 2 or self._line_kind == "table":
            return self._hard
        return self.max_chars if self._cap_phase == 0 else self._soft

    def _cap(self, out: list[str]) -> bool:
        """Splits an over-long chunk: at max_chars only at a strong clause boundary (; : dash),
        at 1.5 x max_chars at the best weaker one, at 3 x max_chars anywhere."""
        seg, i = self._seg, self._i
        if i - seg < self._cap_threshold():
            return False
        if self._line_kind == "table" and self._cap_phase == 0:
            self._cap_phase = 1
        if self._cap_phase == 0:
            self._cap_phase = 1
            k = self._best_split(seg, i, self.max_chars // 3, _CAP_TIERS[:1])
            return k is not None and self._break_at(k, out)
        if self._cap_phase == 1:
            k = self._best_split(seg, i, self.max_chars // 3) or self._best_split(seg, i, 0)
            self._cap_phase = 2
        else:
            k = self._best_split(max(seg, self._cap_scan), i, 0)
        self._cap_scan = i
        if k is None:
            if i - seg < self._hard:
                return False
            k = i  # no space in 3 x max_chars: cut where we are
        return self._break_at(k, out)

    def _best_split(self, start: int, end: int, min_len: int, tiers=_CAP_TIERS) -> int | None:
        """The best place in [start, end) to cut the current chunk, or None."""
        seg, buf = self._seg, self._buf
        for regex, before in tiers:
            best = None
            for m in regex.finditer(buf, start, end):
                k = m.start() if before else m.end()
                if k - seg < max(min_len, 1):
                    continue
                if any(a < k < b for a, b in self._protect):
                    continue
                best = k
            if best is not None:
                return best
        return None


# -- clause boundaries (early start) ----------------------------------------------------------------

#: Words that open a new clause: an early start may cut just before them.
_CLAUSE_WORDS = ("and", "but", "or", "so", "because", "which", "who", "whose", "when", "where", "while",
                 "if", "unless", "although", "though", "since", "until", "whereas", "then")
# A comma (or semicolon) followed by a space and more text; or the space before a clause word.
_EN_CLAUSE = re.compile(r"[,;](?=\s+\S)|(?P<before>\s)(?=(?:" + "|".join(_CLAUSE_WORDS) + r")\s)", re.IGNORECASE)
_JA_CLAUSE = re.compile(r"[、，,](?=\s*\S)")
_PAIRS = ("()", "[]", "{}", "“”", "「」", "『』", "（）", "【】")


def clause_head(text: str, lang: str = "en", min_words: int = 8) -> int | None:
    """Where the start of a sentence may be cut off to be spoken early: the end of its first clause.

    English: after a comma or semicolon, or before a clause word (and, but, because, which, when,
    if, ...; see ``_CLAUSE_WORDS``), once the head has ``min_words`` words and something follows.
    Japanese (``lang="ja"``): after 、 once the head has ``2 * min_words`` characters. Never inside
    an inline code span (an odd number of backticks before the cut), an open bracket or quote, or
    a number such as ``1,000`` (a comma must be followed by a space).

    Args:
        text: the beginning of a sentence (no sentence end in it).
        lang: ``"en"`` or ``"ja"``.
        min_words: words the head needs (characters / 2 in Japanese).

    Returns:
        The cut: the head is ``text[:cut]``, the rest ``text[cut:]``; None when there is none.
    """
    ja = _norm_lang(lang) == "ja"
    for m in (_JA_CLAUSE if ja else _EN_CLAUSE).finditer(text):
        cut = m.start() if m.groupdict().get("before") else m.end()
        head = text[:cut]
        if ja:
            enough = sum(not c.isspace() for c in head) >= 2 * min_words
        else:
            enough = sum(1 for w in head.split() if _HAS_WORD.search(w)) >= min_words
        if enough and _balanced(head):
            return cut
    return None


def _balanced(head: str) -> bool:
    """No inline code span, bracket or double quote left open in ``head``."""
    if head.count("`") % 2 or head.count('"') % 2:
        return False
    return all(head.count(a) == head.count(b) for a, b in _PAIRS)


def chunk_sentences(pieces: Iterable[str], lang: str = "en") -> Iterator[str]:
    """Yields the sentences and markdown blocks of streamed text, each as soon as it is certain.

    Args:
        pieces: text in pieces of any size; a piece that is not a string is skipped with a warning.
        lang: ``"en"`` or ``"ja"`` (see :class:`SentenceChunker`).

    Yields:
        Each chunk as it appears in the input, with surrounding whitespace stripped.
    """
    chunker = SentenceChunker(lang=lang)
    for piece in pieces:
        if not isinstance(piece, str):
            logger.warning("chunk_sentences: skipping a %s piece (expected str)", type(piece).__name__)
            continue
        yield from chunker.feed(piece)
    yield from chunker.flush()


# ============================================================================================
# Speakable text

_CODE_CUES = {"en": "code block", "ja": "コードブロック"}
_LINK_CUES = {"en": "link", "ja": "リンク"}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]")
_FENCE_OPEN = re.compile(r"[ \t]*(`{3,}|~{3,})([^\n]*)")
_FENCE_BLOCK = re.compile(
    r"^[ \t]*(?P<f>`{3,}|~{3,})[^\n]*(?:\n.*?)?(?:\n[ \t]*(?P=f)[`~]*[ \t]*(?=\n|\Z)|\Z)", re.M | re.S
)
_HR = re.compile(r"[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*")
_TABLE_SEP = re.compile(r"[ \t]*\|?(?:[ \t]*:?-{2,}:?[ \t]*\|)+(?:[ \t]*:?-{2,}:?[ \t]*)?\|?[ \t]*")
_HEADING = re.compile(r"^[ \t]*#{1,6}(?:[ \t]+|$)")
_HEADING_TAIL = re.compile(r"[ \t]+#+[ \t]*$")
_QUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)+")
_BULLET = re.compile(r"^[ \t]*(?:[-*+•⁃‣◦▪][ \t]+|\d{1,3}[.)][ \t]+)(?:\[[ xX]\][ \t]+)?")
_INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_HAS_LETTER = re.compile(r"[^\W\d_]")
_STATEMENT = re.compile(r"[=;{}]")  # assignments, statements, bodies: code, not a name


def _readable_code(body: str) -> bool:
    """A name, command or short expression (`pytest`, `npm test`, `s[::-1]`): worth reading out."""
    return len(body) <= 40 and len(body.split()) <= 4 and bool(_HAS_LETTER.search(body)) and not _STATEMENT.search(body)
_IMAGE = re.compile(r"!\[[^\]\n]*\]\((?:[^()\s]|\([^()\s]*\))*(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"\[([^\]\n]+)\]\((?:[^()\s]|\([^()\s]*\))*(?:\s+\"[^\"]*\")?\)")
_REF_LINK = re.compile(r"\[([^\]\n]+)\]\[[^\]\n]*\]")
_AUTOLINK = re.compile(r"<(?:https?|ftp)://[^>\s]+>")
_URL = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"'`]+")
_HTML_TAG = re.compile(r"</?[A-Za-z][\w:-]*(?:\s+[^<>]*?)?/?>|<!--.*?-->", re.S)
_EMPHASIS = (
    re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"),
    re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)"),
    re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"),
    re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])"),
    re.compile(r"(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])"),
)
_STRAY_MARKS = re.compile(r"\*\*+|~~+|(?<!\w)__+|__+(?!\w)")
# Pictographs plus box drawing, tag characters and bullets: none of it is read out.
_EMOJI_BOX = re.compile(f"[{_PICTOGRAPHS}\u2500-\u25ff\U000e0020-\U000e007f\u2022\u2043\u2023]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?、。！？)\]」』）])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[「『（])\s+")
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]|（\s*）")
_REPEATED_PUNCT = re.compile(r"([,;:、])(?:\s+[,;:、])+|(?<=,),+")
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")
_CJK_CLASS = "[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff01-\uff60]"
_CJK_GAP = re.compile(f"(?<={_CJK_CLASS}) (?={_CJK_CLASS})")


def code_cue(lang: str = "en") -> str:
    """The short spoken cue that stands for a code block, in ``lang`` ("en" or "ja")."""
    return _CODE_CUES["ja" if _norm_lang(lang) == "ja" else "en"]


def is_code_block(chunk: str) -> bool:
    """Whether a chunk is a fenced (or indented) code block, as :class:`SentenceChunker` emits."""
    if not isinstance(chunk, str):
        return False
    text = chunk.lstrip("\r\n")
    m = _FENCE_OPEN.match(text)
    if m is not None:
        return not (m.group(1)[0] == "`" and "`" in m.group(2))
    lines = [line for line in text.split("\n") if line.strip()]
    return bool(lines) and all(_indent_width(line) >= 4 for line in lines)


def _indent_width(line: str) -> int:
    """Columns of leading indentation as the chunker counts them (a tab 4, a space 1, other spaces 0)."""
    width = 0
    for ch in line:
        if not ch.isspace():
            break
        width += 4 if ch == "\t" else 1 if ch == " " else 0
    return width


def _code_body(chunk: str) -> str:
    lines = chunk.strip("\r\n").split("\n")
    if lines and _FENCE_OPEN.match(lines[0]):
        fence = _FENCE_OPEN.match(lines[0]).group(1)
        lines = lines[1:]
        if lines and lines[-1].strip().startswith(fence[:3]) and not lines[-1].strip().strip(fence[0]):
            lines = lines[:-1]
    return "\n".join(lines)


def speakable(sentence: str, lang: str = "en", code: str = "cue") -> str:
    """Turns one chunk into the text a voice should read.

    Removes markdown (emphasis, headings, quotes, list markers, table pipes, rules), HTML tags,
    emoji and box-drawing characters; keeps link texts; says "link" for bare URLs; keeps short
    inline code (`pytest`, `s[::-1]`) and drops longer or symbol-only spans; collapses whitespace.

    Args:
        sentence: one chunk from :class:`SentenceChunker` (any text works).
        lang: the language of the text, for the cues (``"en"`` or ``"ja"``).
        code: what a fenced code block becomes: ``"cue"`` (a short cue, :func:`code_cue`, except
            that a one-line block of at most 40 characters is read),
            ``"skip"`` (nothing) or ``"read"`` (its text). With ``"read"`` inline code is kept too.

    Returns:
        The text to speak; ``""`` when nothing is left to say.

    Raises:
        ValueError: for an unknown ``code`` mode.
        TypeError: when ``sentence`` is not a string.
    """
    if code not in ("cue", "skip", "read"):
        raise ValueError(f"code must be 'cue', 'skip' or 'read', got {code!r}")
    if not isinstance(sentence, str):
        raise TypeError(f"speakable() takes str, got {type(sentence).__name__}")
    lang = _norm_lang(lang)
    text = _CONTROL.sub(" ", _ANSI.sub("", sentence))
    if is_code_block(text):
        return _code_text(text, lang, code)

    pieces = []
    last = 0
    for m in _FENCE_BLOCK.finditer(text):  # the chunker emits code blocks alone; other text may not
        pieces.append(_speak_lines(text[last : m.start()], lang, code))
        said = _code_text(m.group(0), lang, code)
        pieces.append(said + ("。" if lang == "ja" else ".") if said else "")
        last = m.end()
    pieces.append(_speak_lines(text[last:], lang, code))
    text = " ".join(pieces)
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _SPACE_AFTER_OPEN.sub(r"\1", text)
    text = _EMPTY_BRACKETS.sub("", text)
    text = _REPEATED_PUNCT.sub(r"\1", text)
    text = _CJK_GAP.sub("", " ".join(text.split())).strip(" ,;:、")
    return text if _HAS_WORD.search(text) else ""


def _speak_lines(text: str, lang: str, code: str) -> str:
    """Block markdown, line by line: rules, table rows (cells joined with commas), quotes, headings,
    list markers."""
    lines = []
    for line in text.split("\n"):
        if not line.strip() or _HR.fullmatch(line) or _TABLE_SEP.fullmatch(line):
            continue
        stripped = line.strip()
        if stripped.startswith("|") or (stripped.endswith("|") and stripped.count("|") >= 2):
            cells = (_speak_inline(cell, lang, code).strip(" ,;:") for cell in re.split(r"(?<!\\)\|", stripped))
            lines.append(", ".join(cell for cell in cells if _HAS_WORD.search(cell)))
            continue
        line = _QUOTE.sub("", line)
        if _HEADING.match(line):
            line = _HEADING_TAIL.sub("", _HEADING.sub("", line))
        lines.append(_speak_inline(_BULLET.sub("", line), lang, code))
    return " ".join(lines)


def _speak_inline(text: str, lang: str, code: str) -> str:
    """Inline markdown: code spans, links, images, URLs, HTML, emphasis, emoji."""
    keep: list[str] = []  # protected pieces, put back at the end

    def hold(piece: str) -> str:
        keep.append(piece)
        return f"\x00{len(keep) - 1}\x00"

    def inline_code(m: re.Match) -> str:
        body = m.group(2).strip()
        if code == "read":
            return hold(body)
        if body.endswith("()"):  # a function name reads as its name
            body = body[:-2]
        # Short spans carry meaning (`s[::-1]`, `npm test`); dropping them breaks the sentence.
        # Longer ones are code a listener cannot follow. Symbol-only spans (`[::-1]`) say nothing.
        return hold(body) if _readable_code(body) else " "

    text = _INLINE_CODE.sub(inline_code, text)
    link = _LINK_CUES[lang]
    text = _IMAGE.sub(" ", text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _REF_LINK.sub(lambda m: m.group(1), text)
    text = _AUTOLINK.sub(lambda m: hold(link), text)
    text = _URL.sub(lambda m: hold(link) + _url_tail(m.group(0)), text)
    text = _HTML_TAG.sub(" ", text)
    text = html.unescape(text)
    for regex in _EMPHASIS:
        text = regex.sub(lambda m: m.group(1), text)
    text = _STRAY_MARKS.sub("", text)
    text = _EMOJI_BOX.sub("", text)
    return " ".join(_PLACEHOLDER.sub(lambda m: keep[int(m.group(1))], text).split())


def _url_tail(url: str) -> str:
    """Sentence punctuation glued to a bare URL belongs to the sentence, not the URL."""
    tail = len(url) - len(url.rstrip(".,;:!?)]'\""))
    return url[len(url) - tail :] if tail else ""


def _code_text(block: str, lang: str, code: str) -> str:
    if code == "cue":
        # A one-line block of a few words (a command's output, a file name) is read, not cued.
        body = _code_body(block).strip()
        if "\n" not in body and _readable_code(body):
            return " ".join(body.split())
        return code_cue(lang)
    if code == "skip":
        return ""
    return " ".join(_code_body(block).split())
