"""LMTranslator: small decoder-only translation models through mlx-lm, beside NLLB-200.

    from mlx_stream_tts import Translator
    tr = Translator.load("LiquidAI/LFM2-350M-ENJP-MT")    # or a local mlx-lm folder; NLLB folders load as before
    tr.translate(["Let me check the file."], "eng_Latn", "jpn_Jpan")

``Translator.load`` hands a folder whose ``config.json`` names another architecture than NLLB's (or a hub id)
to :meth:`LMTranslator.load`, which loads it with ``mlx_lm.load`` and translates with mlx-lm's own
generation loop (``generate_step``: its KV cache, the next step queued before the last token is read) and
a greedy sampler. Sentences are decoded one after the other, not in one padded batch: with context on,
a sentence's prompt holds the previous sentence's translation; each sentence stops on its own (end of
turn, end of its first line, a loop, its length limit); and the streaming form and the batch form then
give the same text by construction. The pipeline batches only when it is behind, and on a CPU a
batch of short prompts gains little.

Each model family gets the prompt its card documents (:data:`FAMILIES`):

- ``enjp-mt``: LiquidAI LFM2-350M-ENJP-MT: the system prompt ``Translate to Japanese.`` (or ``Translate to
  English.``) and the source as the user turn, through the tokenizer's chat template; English <-> Japanese.
- ``cat-translate``: CyberAgent CAT-Translate: one user turn ``Translate the following English text into
  Japanese.`` followed by the source, through the chat template; English <-> Japanese.
- ``plamo-translate``: PFN PLaMo 2 translate: its own plain-text format (``<|plamo:op|>dataset`` /
  ``translation`` / ``<|plamo:op|>input lang=English`` / source / ``<|plamo:op|>output lang=Japanese``),
  no chat template; it stops at the next ``<|plamo:op|>``.
- ``instruct``: any other chat model (Qwen3, Llama, Gemma...): a strict translation instruction as the
  system prompt, the source as the user turn, thinking switched off (``enable_thinking=False``, which
  Qwen3's template reads and other templates ignore).

The family comes from the model's name (hub id, folder name, ``_name_or_path``, or the ``base_model`` of
an mlx-lm conversion's README), or is given (``family=``).

Output is cleaned (:func:`clean_translation`): thinking blocks, ``Translation:``-style labels, quotes the
model wrapped around the whole sentence, stray control characters and everything after the first line
(explanations, notes, alternatives) go; decoding stops as soon as that first line ends. The guards are
NLLB's: a length limit relative to the source (``len_ratio * source tokens + len_extra`` new tokens) and
the repetition check of ``translate.py`` (a token 6 times or an n-gram 4 times in a row stops decoding,
and the batch form keeps one copy of the loop).

Optionally the previous ``context`` sentences and their translations go into the prompt as earlier turns
of the conversation (off by default: see :class:`LMTranslator`).

``mlx_lm`` (which imports transformers, ~1.5 s) is imported only when a model is loaded.
"""

from __future__ import annotations

import json
import logging
import re
import time
import unicodedata
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx

from .languages import resolve_lang
from .translate import _cut_repetition, _repeating_tail, device_dtype

logger = logging.getLogger(__name__)

FAMILIES = ("enjp-mt", "cat-translate", "plamo-translate", "instruct")

#: What :meth:`LMTranslator.warm` translates (as the NLLB translator does).
_WARM_TEXT = "Let me check the file, then run the tests."

#: The files an mlx-lm model needs from the hub (mlx-lm's own download patterns).
_HUB_FILES = ["*.json", "model*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "tiktoken.model",
              "*.txt", "*.jsonl", "*.jinja"]

#: The strict instruction for general chat models. It names the placeholders of spans.py (X1, X2...),
#: which must come back unchanged.
INSTRUCT_PROMPT = (
    "You are a translation engine. Translate the user's text from {src} to {tgt}. Reply with the "
    "{tgt} translation only, on one line: no explanations, notes, alternatives, romanization or quotes "
    "around it. Keep names, code, file paths and placeholders such as X1 or X2 exactly as they are."
)

#: English names of languages, for prompts (NLLB codes; the others fall back to the code itself).
LANGUAGE_NAMES = {
    "eng_Latn": "English", "jpn_Jpan": "Japanese", "zho_Hans": "Simplified Chinese",
    "zho_Hant": "Traditional Chinese", "kor_Hang": "Korean", "fra_Latn": "French", "deu_Latn": "German",
    "spa_Latn": "Spanish", "ita_Latn": "Italian", "por_Latn": "Portuguese", "rus_Cyrl": "Russian",
    "nld_Latn": "Dutch", "pol_Latn": "Polish", "tur_Latn": "Turkish", "vie_Latn": "Vietnamese",
    "tha_Thai": "Thai", "ind_Latn": "Indonesian", "arb_Arab": "Arabic", "hin_Deva": "Hindi",
    "ukr_Cyrl": "Ukrainian", "swe_Latn": "Swedish", "ces_Latn": "Czech", "heb_Hebr": "Hebrew",
}


@dataclass
class Generation:
    """What the last sentence cost (for measurements; :attr:`LMTranslator.last`).

    Attributes:
        prompt_tokens: tokens of the prompt the model read (template, instruction, context, source).
        new_tokens: tokens generated (the stop token not counted).
        stop: why decoding stopped: ``"eos"`` (end of turn), ``"line"`` (the first line ended),
            ``"length"`` (the length limit), ``"repetition"`` (a loop).
        first_token_s: seconds from the call to the first generated token (the prompt's cost).
        seconds: seconds for the whole sentence.
        tokens: the generated ids.
    """

    prompt_tokens: int = 0
    new_tokens: int = 0
    stop: str = ""
    first_token_s: float = 0.0
    seconds: float = 0.0
    tokens: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------- recognising


def is_lm_source(path_or_id: str | Path) -> bool:
    """True when ``path_or_id`` names a model for this translator rather than a converted NLLB folder: a
    folder whose ``config.json`` names another architecture than NLLB-200/M2M100's and is not one of this
    package's conversions, or a hub id (``owner/name``) that is no local path and no NLLB/M2M100 checkpoint
    (those need ``mlx-stream-tts convert nllb``). Reads one small file; imports nothing heavy."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        config = _read_config(path)
        return (isinstance(config, dict) and isinstance(config.get("model_type"), str)
                and config["model_type"] != "m2m_100" and "mlx_stream_tts" not in config)
    text = str(path_or_id)
    return (not path.exists() and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None
            and not any(word in text.lower() for word in ("nllb", "m2m100", "m2m_100")))


def family_of(names: list[str], model_type: str | None) -> str:
    """The prompt family of a model from its names (hub id, folder, base model) and architecture."""
    joined = " ".join(names).lower()
    if "enjp-mt" in joined or "enjp_mt" in joined:
        return "enjp-mt"
    if "cat-translate" in joined:
        return "cat-translate"
    if model_type == "plamo2" and "translate" in joined:
        return "plamo-translate"
    return "instruct"


def language_name(code: str) -> str:
    """The English name of a language code (``jpn_Jpan``, ``ja`` -> ``Japanese``) for prompts."""
    nllb = resolve_lang(code)
    return LANGUAGE_NAMES.get(nllb, nllb)


# ------------------------------------------------------------------------------------- cleaning

#: Labels a model may put before its translation (``Translation:``, ``日本語訳：``), lower case. A line
#: that is only a label is skipped; a label at the start of the line is removed.
LABELS = sorted(
    ("translation", "translated text", "japanese translation", "english translation", "japanese", "english",
     "output", "answer", "result", "here is the translation", "here's the translation",
     "sure, here is the translation", "訳", "訳文", "翻訳", "翻訳文", "日本語", "日本語訳", "英語", "英訳"),
    key=len, reverse=True,
)
_QUOTES = {'"': '"', "“": "”", "「": "」", "『": "』", "'": "'", "‘": "’", "«": "»"}
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def clean_translation(raw: str, source: str) -> str:
    """A model's reply as the translation alone: no thinking block, no label (``Translation:``), no quotes
    wrapped around the whole sentence (unless the source has them), no control characters, one line
    (the first with text: what follows is explanation)."""
    return _clean(raw, source, final=True)[0]


def _clean(raw: str, source: str, final: bool) -> tuple[str, bool]:
    """(cleaned text, whether its line is complete). With ``final=False`` the text is what is certain so far
    for a reply still growing: it only ever grows, and the final text starts with it."""
    text = raw.replace("\r", "")
    # Thinking: a closed block goes; a close without an open means the reply started inside one.
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL)
    if _THINK_CLOSE in text:
        text = text.rpartition(_THINK_CLOSE)[2]
    if _THINK_OPEN in text:  # still thinking (or never closed): nothing of it is the translation
        text = text.partition(_THINK_OPEN)[0]
    elif not final:
        text = _without_partial(text, (_THINK_OPEN, _THINK_CLOSE))
    text = "".join(" " if c == "\t" else c for c in text
                   if c == "\n" or c == "\t" or (c != "\ufffd" and unicodedata.category(c)[0] != "C"))
    quoted_source = source.lstrip()[:1] in _QUOTES
    lines = text.split("\n")
    for index, line in enumerate(lines):
        last = index == len(lines) - 1
        content = _strip_label(line, source)
        if not content.strip():
            if last:
                return "", False
            continue  # a blank line, or a label alone on its line
        if not final and last and _may_be_label(line, source):
            return "", False
        content = content.strip() if final or not last else content.lstrip()
        if not final and last:
            content = content.rstrip()
        if content[:1] in _QUOTES and not quoted_source:
            if not final and last:  # whether the quotes wrap the whole sentence shows only at its end
                return "", False
            content = _unwrap(content)
        return content, not last
    return "", False


def _without_partial(text: str, tags: tuple[str, ...]) -> str:
    """``text`` without a trailing beginning of one of ``tags`` (``<th``), which may still become the tag."""
    for tag in tags:
        for n in range(len(tag) - 1, 0, -1):
            if text.endswith(tag[:n]):
                return text[:-n]
    return text


def _strip_label(line: str, source: str) -> str:
    lower = line.lstrip().lower()
    for label in LABELS:
        if lower.startswith(label) and not source.lstrip().lower().startswith(label):
            rest = line.lstrip()[len(label):].lstrip()
            if rest[:1] in (":", "："):
                return rest[1:]
    return line


def _may_be_label(line: str, source: str) -> bool:
    """True when ``line`` (still growing) may be the beginning of a label and its colon."""
    lower = line.strip().lower()
    start = source.lstrip().lower()
    return bool(lower) and any(
        (f"{label}:".startswith(lower) or f"{label}：".startswith(lower)) and not start.startswith(label)
        for label in LABELS)


def _unwrap(content: str) -> str:
    """Without the quote that opens ``content`` and the one matching it, when that one ends the sentence
    (before its final punctuation): ``「…」。`` -> ``…。``. When the opening quote closes earlier
    (``「A」と「B」``) it quotes a part, not the sentence: ``content`` stays as it is."""
    opening, closing = content[0], _QUOTES[content[0]]
    body = content[1:]
    end = len(body)
    while end and body[end - 1] in "。.!?！？":
        end -= 1
    depth = 1
    for i, c in enumerate(body):
        if c == closing:
            depth -= 1
        elif c == opening:
            depth += 1
        if depth == 0:
            return (body[:i] + body[i + 1:]).strip() if i == end - 1 else content
    return body.strip()  # never closed: the opening quote alone was added


# ------------------------------------------------------------------------------------ translator


class LMTranslator:
    """Translate sentences with a decoder-only model through mlx-lm; the ``Translator`` interface.

    Args:
        model, tokenizer: what ``mlx_lm.load`` returns.
        family: the prompt family (:data:`FAMILIES`).
        name: the hub id or folder the model came from (for logs and the cache key).
        path: its local folder.
        context: previous sentences (with their translations) shown to the model as earlier turns. Off (0)
            by default: the LFM2-ENJP-MT card documents single-turn use only; every sentence then re-reads
            the context (prompt tokens, time: see the README's measurements); and the phrase cache, which
            keys a translation by its sentence alone, would replay a translation made in another context.
            It is kept per language pair; :meth:`reset_context` forgets it. PLaMo's format has no
            documented place for it: there it is ignored.
        len_ratio, len_extra: the length limit, ``len_ratio * source tokens + len_extra`` new tokens.
        max_new_tokens: a ceiling on that limit.
        dtype_name: the dtype the weights run in (for the cache key).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        family: str = "instruct",
        name: str = "",
        path: str | Path | None = None,
        context: int = 0,
        len_ratio: float = 2.0,
        len_extra: int = 16,
        max_new_tokens: int = 512,
        dtype_name: str = "stored",
    ):
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
        if context < 0:
            raise ValueError(f"context must be >= 0, not {context}")
        from mlx_lm.sample_utils import make_sampler

        self.model = model
        self.tokenizer = tokenizer
        self.family = family
        self.name = name or str(path or "")
        self.path = Path(path) if path is not None else None
        self.context = context
        self.len_ratio = len_ratio
        self.len_extra = len_extra
        self.max_new_tokens = max_new_tokens
        self.dtype_name = dtype_name
        self.sampler = make_sampler(temp=0.0)  # greedy: argmax
        self.stop_ids = set(tokenizer.eos_token_ids)
        if family == "plamo-translate":
            self.stop_ids |= self._token_ids(["<|plamo:op|>"])
        elif tokenizer.has_chat_template:
            # An end of turn ends the translation even where the config's eos is another token.
            self.stop_ids |= self._token_ids(["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"])
        else:
            raise ValueError(f"{self.name} has no chat template, and is none of the translation models this "
                             "package knows without one (PLaMo 2 translate)")
        if context and family == "plamo-translate":
            logger.warning("PLaMo 2 translate has no documented place for context: context=%d ignored", context)
        self.last = Generation()
        self._history: deque[tuple[str, str]] = deque(maxlen=max(context, 1))
        self._history_pair: tuple[str, str] | None = None
        self._warm = False

    # -------------------------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        path_or_id: str | Path,
        dtype: str | mx.Dtype | None = "auto",
        *,
        family: str | None = None,
        context: int = 0,
        len_ratio: float = 2.0,
        len_extra: int = 16,
        max_new_tokens: int = 512,
        trust_remote_code: bool = False,
        self_check: bool = True,
    ) -> LMTranslator:
        """Load an mlx-lm model folder, or a hub id (downloaded into the Hugging Face cache).

        Args:
            path_or_id: a local folder in the hub layout (``config.json``, ``model*.safetensors``, tokenizer
                files), or a hub id such as ``LiquidAI/LFM2-350M-ENJP-MT``.
            dtype: ``"auto"`` (float32 on a CPU, where MLX's half-precision kernels are slow; as stored on a
                GPU), ``"float32"``, ``"float16"``, ``"bfloat16"``, or None (as stored). Quantized weights stay
                quantized.
            family: the prompt family (:data:`FAMILIES`); None: from the model's names.
            context, len_ratio, len_extra, max_new_tokens: see :class:`LMTranslator`.
            trust_remote_code: let the tokenizer run the Python code of the model's repository (PLaMo's
                tokenizer needs it). Off: code from a download is not run unless asked.
            self_check: check that one prompt gives finite logits.

        Raises:
            FileNotFoundError: no such folder and no such hub model (or no network), or files missing.
            ValueError: an architecture mlx-lm cannot run, an unknown family or dtype, weights that do not
                fit their config or give NaN / infinite logits.
        """
        from .translate import DTYPES

        if family is not None and family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
        if dtype == "auto":
            target = mx.float32 if device_dtype() == mx.float32 else None
        elif dtype is None or isinstance(dtype, mx.Dtype):
            target = dtype
        elif dtype in DTYPES:
            target = DTYPES[dtype]
        else:
            raise ValueError(f"dtype must be 'auto', None or one of {', '.join(DTYPES)}, not {dtype!r}")
        name = str(path_or_id)
        path = _local_folder(path_or_id)
        config = _read_config(path)
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            raise ValueError(f"{path}/config.json is unreadable or names no model_type")
        if not any(path.glob("model*.safetensors")):
            raise FileNotFoundError(f"{path} has no model*.safetensors weights")
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise FileNotFoundError(f"{path} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
        names = [name, path.name, str(config.get("_name_or_path", "")), _base_model(path)]
        family = family or family_of(names, config["model_type"])

        started = time.perf_counter()
        import mlx_lm

        try:
            model, tokenizer = mlx_lm.load(str(path), tokenizer_config={"trust_remote_code": trust_remote_code})
        except ValueError as err:  # an unknown architecture, or weights that do not fit the config (strict load)
            if "not supported" in str(err):
                raise ValueError(f"{name} holds a {config['model_type']!r} model, which mlx-lm "
                                 f"{mlx_lm.__version__} cannot run (nor is it a converted NLLB-200 folder)") from None
            raise ValueError(f"{name}: mlx-lm cannot load it: {err}") from None
        except (TypeError, KeyError) as err:  # a config.json without a field the architecture needs
            raise ValueError(f"{name}: its config.json does not fit mlx-lm's {config['model_type']!r} "
                             f"model ({type(err).__name__}: {err})") from None
        except (OSError, json.JSONDecodeError) as err:
            raise FileNotFoundError(f"{name}: mlx-lm cannot read it: {err}") from None
        if target is not None:
            model.apply(lambda p: p.astype(target) if mx.issubdtype(p.dtype, mx.floating) and p.dtype != target else p)
            mx.eval(model.parameters())
        dtype_name = "stored" if target is None else str(target).rpartition(".")[2]
        translator = cls(model, tokenizer, family=family, name=name, path=path, context=context,
                         len_ratio=len_ratio, len_extra=len_extra, max_new_tokens=max_new_tokens,
                         dtype_name=dtype_name)
        if self_check:
            problem = translator.self_check()
            if problem is not None:
                raise ValueError(f"{name} loads, but {problem}")
        logger.info("loaded %s with mlx-lm (%s, prompt family %s, %s) in %.1f s", name, config["model_type"],
                    family, dtype_name, time.perf_counter() - started)
        return translator

    def self_check(self) -> str | None:
        """Why this model cannot translate, or None: the logits of one prompt are finite."""
        ids = self.prompt_ids(_WARM_TEXT, "eng_Latn", "jpn_Jpan")
        logits = self.model(mx.array([ids]))[:, -1]
        if not bool(mx.isfinite(logits).all().item()):
            return f"it produces NaN or infinite logits for {_WARM_TEXT!r}"
        return None

    @property
    def cache_id(self) -> str:
        """What identifies this translator's output in the phrase cache: the weights (folder fingerprint),
        their dtype, the prompt family and the context setting."""
        from .phrase_cache import fingerprint

        where = fingerprint(self.path) if self.path is not None else self.name
        return f"lm:{self.family}:{where}:{self.dtype_name}:ctx{self.context}"

    # ---------------------------------------------------------------------------- public API

    def prompt_ids(self, text: str, src_lang: str = "eng_Latn", tgt_lang: str = "jpn_Jpan",
                   context: list[tuple[str, str]] | None = None) -> list[int]:
        """The prompt's token ids for one source sentence, in the family's documented format, with
        ``context`` (source, translation) pairs before it as earlier turns."""
        src, tgt = language_name(src_lang), language_name(tgt_lang)
        self._check_pair(src_lang, tgt_lang)
        if self.family == "plamo-translate":
            prompt = ("<|plamo:op|>dataset\ntranslation\n\n"
                      f"<|plamo:op|>input lang={src}\n{text}\n<|plamo:op|>output lang={tgt}\n")
            return list(self.tokenizer.encode(prompt))
        messages: list[dict[str, str]] = []
        if self.family == "enjp-mt":
            messages.append({"role": "system", "content": f"Translate to {tgt}."})
        elif self.family == "instruct":
            messages.append({"role": "system", "content": INSTRUCT_PROMPT.format(src=src, tgt=tgt)})
        for before, after in context or []:
            messages += [{"role": "user", "content": self._user_turn(before, src, tgt)},
                         {"role": "assistant", "content": after}]
        messages.append({"role": "user", "content": self._user_turn(text, src, tgt)})
        try:
            return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                           enable_thinking=False))
        except Exception as err:  # jinja's TemplateError (or another): a template without a system role
            if messages[0]["role"] != "system":
                raise
            logger.debug("chat template refused a system turn (%s): instruction moved into the user turn", err)
            first = messages[1]
            merged = [{"role": "user", "content": f"{messages[0]['content']}\n\n{first['content']}"}, *messages[2:]]
            return list(self.tokenizer.apply_chat_template(merged, add_generation_prompt=True,
                                                           enable_thinking=False))

    def translate(self, texts: list[str], src_lang: str = "eng_Latn", tgt_lang: str = "jpn_Jpan",
                  max_new_tokens: int | None = None) -> list[str]:
        """Translate each text; returns one string (one line) per input, in order.

        Args:
            texts: sentences. Empty or blank strings give "". Line breaks inside a text are read as spaces.
            src_lang, tgt_lang: NLLB codes or short codes (``"en"``, ``"ja"``).
            max_new_tokens: limit of new tokens per sentence (default: relative to the source length).
        """
        if isinstance(texts, str):
            raise TypeError("translate() takes a list of strings; wrap a single text in a list")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
        return ["".join(self._run(text, src_lang, tgt_lang, max_new_tokens, stream=False)) for text in texts]

    def translate_stream(self, text: str, src_lang: str = "eng_Latn", tgt_lang: str = "jpn_Jpan",
                         max_new_tokens: int | None = None) -> Iterator[str]:
        """Greedy translation of one text, yielding pieces of the output as they are decoded.

        The pieces concatenate to what :meth:`translate` returns, except that the repetition guard cannot
        take back text already yielded: a looping output is cut where the loop is found (and logged)
        rather than to one copy of it. Text whose cleaning depends on what follows (a possible label, a
        quote that may wrap the whole sentence) is held back until that is known.
        """
        if not isinstance(text, str):
            raise TypeError(f"translate_stream() takes a str, not {type(text).__name__}")
        yield from self._run(text, src_lang, tgt_lang, max_new_tokens, stream=True)

    def generate(self, prompt: list[int], max_new_tokens: int, stop: bool = True) -> list[int]:
        """Token level: the greedy ids after ``prompt`` (from :meth:`prompt_ids`), at most ``max_new_tokens``,
        without cleaning or guards; with ``stop``, up to the first end of turn (not included). For
        measurements: a fixed number of steps whatever the weights say."""
        out: list[int] = []
        steps = self._tokens(prompt, max_new_tokens)
        try:
            for token in steps:
                if stop and token in self.stop_ids:
                    break
                out.append(token)
        finally:
            steps.close()
        return out

    def warm(self, src_lang: str = "eng_Latn", tgt_lang: str = "jpn_Jpan") -> float:
        """Translates one short sentence once (not kept as context), so that the first real one finds the
        kernels built; call it from the thread that will translate. Returns the seconds spent (0.0 when
        already warm)."""
        if self._warm:
            return 0.0
        started = time.perf_counter()
        "".join(self._run(_WARM_TEXT, src_lang, tgt_lang, None, stream=False, remember=False))
        self._warm = True
        return time.perf_counter() - started

    def reset_context(self) -> None:
        """Forget the previous sentences (say, at the start of a new message)."""
        self._history.clear()

    # ------------------------------------------------------------------------------ internals

    def _run(self, text: str, src_lang: str, tgt_lang: str, max_new_tokens: int | None, *, stream: bool,
             remember: bool = True) -> Iterator[str]:
        """One sentence: the cleaned translation as pieces (``stream``) or as one string at the end."""
        source = " ".join(text.split())
        if not source:
            return
        pair = (resolve_lang(src_lang), resolve_lang(tgt_lang))
        if pair != self._history_pair:
            self._history.clear()
            self._history_pair = pair
        context = list(self._history) if self.context and self.family != "plamo-translate" else []
        prompt = self.prompt_ids(source, src_lang, tgt_lang, context)
        limit = self._limit(source, max_new_tokens)
        started = time.perf_counter()
        stats = Generation(prompt_tokens=len(prompt), stop="length")
        tokens = stats.tokens
        shown = ""
        steps = self._tokens(prompt, limit)
        try:
            for token in steps:
                if not tokens and not stats.first_token_s:
                    stats.first_token_s = time.perf_counter() - started
                if token in self.stop_ids:
                    stats.stop = "eos"
                    break
                tokens.append(token)
                if _repeating_tail(tokens):
                    stats.stop = "repetition"
                    break
                certain, line_done = _clean(self._decode(tokens), source, final=False)
                if stream and len(certain) > len(shown) and certain.startswith(shown):
                    yield certain[len(shown):]
                    shown = certain
                if line_done:  # what follows the first line is commentary: not worth decoding
                    stats.stop = "line"
                    break
        finally:
            steps.close()  # mlx-lm's loop (and its wired-memory limit) ends now, not when collected
        kept = _cut_repetition(tokens) if stats.stop == "repetition" else tokens
        final = clean_translation(self._decode(kept), source)
        stats.new_tokens = len(tokens)
        stats.seconds = time.perf_counter() - started
        self.last = stats
        if stats.stop == "repetition":
            logger.warning("translation started repeating after %d tokens; cut to one copy", len(tokens))
        elif stats.stop == "length":
            logger.info("translation reached its limit of %d tokens without ending", limit)
        if remember and self.context and final:
            self._history.append((source, final))
        if not stream:
            yield final
        elif final.startswith(shown) and len(final) > len(shown):
            yield final[len(shown):]
        elif not final.startswith(shown) and stats.stop != "repetition":
            logger.warning("streamed translation differs from its cleaned end: %r vs %r", shown, final)

    def _tokens(self, prompt: list[int], limit: int) -> Iterator[int]:
        """Greedy ids after ``prompt``, at most ``limit``, from mlx-lm's generation loop (a fresh KV cache)."""
        from mlx_lm.generate import generate_step, generation_stream, wired_limit

        with wired_limit(self.model, [generation_stream]):
            for token, _ in generate_step(mx.array(prompt), self.model, max_tokens=limit, sampler=self.sampler):
                yield int(token)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _limit(self, source: str, max_new_tokens: int | None) -> int:
        if max_new_tokens is None:
            n = len(self.tokenizer.encode(source, add_special_tokens=False))
            max_new_tokens = int(self.len_ratio * n) + self.len_extra
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {max_new_tokens}")
        return min(max_new_tokens, self.max_new_tokens)

    def _user_turn(self, text: str, src: str, tgt: str) -> str:
        if self.family == "cat-translate":  # the card's format, its space before the text included
            return f"Translate the following {src} text into {tgt}.\n\n {text}"
        return text

    def _check_pair(self, src_lang: str, tgt_lang: str) -> None:
        if self.family in ("enjp-mt", "cat-translate"):
            pair = {resolve_lang(src_lang), resolve_lang(tgt_lang)}
            if pair != {"eng_Latn", "jpn_Jpan"}:
                raise ValueError(f"{self.name} translates only between English and Japanese, not "
                                 f"{src_lang} -> {tgt_lang}")

    def _token_ids(self, texts: list[str]) -> set[int]:
        """The ids of those of ``texts`` that are single tokens of this vocabulary."""
        vocab = self.tokenizer.get_vocab()
        return {vocab[t] for t in texts if t in vocab}


# --------------------------------------------------------------------------------------- files


def _read_config(path: Path) -> Any:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _base_model(path: Path) -> str:
    """The ``base_model`` named in an mlx-lm conversion's README (the original hub id), or ""."""
    try:
        head = (path / "README.md").read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return ""
    found = re.search(r"^base_model:\s*\n?\s*-?\s*(\S+)", head, flags=re.MULTILINE)
    return found.group(1) if found else ""


def _local_folder(path_or_id: str | Path) -> Path:
    """The local folder of a model: the folder itself, or the hub id's snapshot (downloaded if needed)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a model folder")
        return path
    if path.exists():
        raise FileNotFoundError(f"{path} is a file, not a model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), allow_patterns=_HUB_FILES))
    except Exception as err:  # noqa: BLE001 - the hub's errors (offline, no such repo, gated) are many
        raise FileNotFoundError(f"no folder {path_or_id} here, and the Hugging Face hub cannot provide it "
                                f"({type(err).__name__}: {err})") from None
