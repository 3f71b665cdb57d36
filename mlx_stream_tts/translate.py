"""Translator: NLLB-200 on MLX (tokenizer + model + greedy/beam decoding).

    from mlx_stream_tts import Translator
    tr = Translator.load()                       # ~/.cache/mlx_stream_tts/nllb-200-distilled-600M
    tr.translate(["Hello world."], "eng_Latn", "jpn_Jpan")

Decoding follows transformers' ``generate()`` for M2M100 (decoder starts from ``</s>``, the target
language code is forced as the first token, greedy or beam search with its length penalty and
stopping rule), so that both give the same tokens on the same weights. Differences on purpose: the
forced language-code step runs without its (discarded) output projection, and a repetition guard
re-decodes degenerate greedy outputs with beam search and n-gram blocking.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .models.nllb import FORMAT_VERSION, Model, ModelArgs, quantize_model
from .cpu.nllb_step import NativeDecoder
from .nllb_tokenizer import LANGUAGE_CODES, M2M100_LANGUAGE_CODES, NllbTokenizer, load_tokenizer
from .paths import cache_root

logger = logging.getLogger(__name__)

CONVERT_COMMAND = "mlx-stream-tts convert nllb facebook/nllb-200-distilled-600M --out {out}"
DEFAULT_MODEL_NAME = "nllb-200-distilled-600M"
WEIGHTS_FILE = "model.safetensors"

# Short ISO 639-1 codes (and a few common names) -> NLLB codes.
SHORT_CODES: dict[str, str] = {
    "af": "afr_Latn", "am": "amh_Ethi", "ar": "arb_Arab", "as": "asm_Beng", "az": "azj_Latn",
    "be": "bel_Cyrl", "bg": "bul_Cyrl", "bn": "ben_Beng", "bo": "bod_Tibt", "bs": "bos_Latn",
    "ca": "cat_Latn", "cs": "ces_Latn", "cy": "cym_Latn", "da": "dan_Latn", "de": "deu_Latn",
    "el": "ell_Grek", "en": "eng_Latn", "eo": "epo_Latn", "es": "spa_Latn", "et": "est_Latn",
    "eu": "eus_Latn", "fa": "pes_Arab", "fi": "fin_Latn", "fo": "fao_Latn", "fr": "fra_Latn",
    "ga": "gle_Latn", "gd": "gla_Latn", "gl": "glg_Latn", "gu": "guj_Gujr", "ha": "hau_Latn",
    "he": "heb_Hebr", "hi": "hin_Deva", "hr": "hrv_Latn", "ht": "hat_Latn", "hu": "hun_Latn",
    "hy": "hye_Armn", "id": "ind_Latn", "ig": "ibo_Latn", "is": "isl_Latn", "it": "ita_Latn",
    "ja": "jpn_Jpan", "jv": "jav_Latn", "ka": "kat_Geor", "kk": "kaz_Cyrl", "km": "khm_Khmr",
    "kn": "kan_Knda", "ko": "kor_Hang", "ky": "kir_Cyrl", "lb": "ltz_Latn", "lo": "lao_Laoo",
    "lt": "lit_Latn", "lv": "lvs_Latn", "mg": "plt_Latn", "mi": "mri_Latn", "mk": "mkd_Cyrl",
    "ml": "mal_Mlym", "mn": "khk_Cyrl", "mr": "mar_Deva", "ms": "zsm_Latn", "mt": "mlt_Latn",
    "my": "mya_Mymr", "nb": "nob_Latn", "ne": "npi_Deva", "nl": "nld_Latn", "nn": "nno_Latn",
    "no": "nob_Latn", "ny": "nya_Latn", "oc": "oci_Latn", "or": "ory_Orya", "pa": "pan_Guru",
    "pl": "pol_Latn", "ps": "pbt_Arab", "pt": "por_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl",
    "rw": "kin_Latn", "sa": "san_Deva", "sd": "snd_Arab", "si": "sin_Sinh", "sk": "slk_Latn",
    "sl": "slv_Latn", "sm": "smo_Latn", "sn": "sna_Latn", "so": "som_Latn", "sq": "als_Latn",
    "sr": "srp_Cyrl", "st": "sot_Latn", "su": "sun_Latn", "sv": "swe_Latn", "sw": "swh_Latn",
    "ta": "tam_Taml", "te": "tel_Telu", "tg": "tgk_Cyrl", "th": "tha_Thai", "ti": "tir_Ethi",
    "tk": "tuk_Latn", "tl": "tgl_Latn", "tr": "tur_Latn", "tt": "tat_Cyrl", "ug": "uig_Arab",
    "uk": "ukr_Cyrl", "ur": "urd_Arab", "uz": "uzn_Latn", "vi": "vie_Latn", "wo": "wol_Latn",
    "xh": "xho_Latn", "yi": "ydd_Hebr", "yo": "yor_Latn", "zh": "zho_Hans", "zu": "zul_Latn",
    "zh-cn": "zho_Hans", "zh-hans": "zho_Hans", "zh-tw": "zho_Hant", "zh-hant": "zho_Hant",
    "pt-br": "por_Latn", "english": "eng_Latn", "japanese": "jpn_Jpan",
    "ba": "bak_Cyrl", "ff": "fuv_Latn", "lg": "lug_Latn", "ln": "lin_Latn", "ss": "ssw_Latn", "tn": "tsn_Latn",
}

# Scripts written without spaces between sentences: pieces of a split text are joined directly.
_NO_SPACE_SCRIPTS = ("Jpan", "Hans", "Hant", "Thai", "Mymr", "Khmr", "Laoo", "Tibt")


# M2M100 codes (fairseq's) that are not ISO 639-1 codes of SHORT_CODES; its other 3-letter codes (ast, ceb,
# ilo) are the prefixes of their NLLB codes.
_M2M100_ONLY_CODES = {"ns": "nso_Latn"}
_NLLB_BY_LOWER = {c.lower(): c for c in LANGUAGE_CODES}


@functools.lru_cache(maxsize=1024)
def _nllb_code(code: str) -> str | None:
    """The NLLB code for ``jpn_Jpan``, ``JPN_JPAN``, ``ja``, ``jpn``, ``zh-TW`` or ``__ja__``; None if unknown."""
    key = code.strip()
    if len(key) > 4 and key.startswith("__") and key.endswith("__"):
        key = key[2:-2]  # an M2M100 token
    lower = key.lower()
    if lower.replace("-", "_") in _NLLB_BY_LOWER:
        return _NLLB_BY_LOWER[lower.replace("-", "_")]
    short = SHORT_CODES.get(lower) or SHORT_CODES.get(lower.replace("_", "-")) or _M2M100_ONLY_CODES.get(lower)
    if short:
        return short
    prefixed = [c for c in LANGUAGE_CODES if c.split("_")[0] == lower]
    return prefixed[0] if len(prefixed) == 1 else None


# Codes that only M2M100 knows (br, fy), as its tokens: accepted before a model is loaded.
_M2M100_ONLY_TOKENS = tuple(f"__{c}__" for c in M2M100_LANGUAGE_CODES["m2m100"] if _nllb_code(c) is None)


def lang_script(code: str) -> str | None:
    """The ISO 15924 script of a language code (``jpn_Jpan``, ``ja``, ``__ja__`` -> ``Jpan``), None if unknown."""
    return (_nllb_code(code) or code).rpartition("_")[2] or None


def resolve_lang(code: str, codes: Iterable[str] | None = None) -> str:
    """The language code of a tokenizer from ``jpn_Jpan``, ``ja``, ``jpn``, ``JPN_JPAN`` or ``__ja__``.

    Args:
        code: a code as users write it.
        codes: the tokenizer's language codes (``tokenizer.lang_code_to_id``): NLLB's ``jpn_Jpan`` or
            M2M100's ``__ja__``. None accepts the codes of both and returns the NLLB one where it exists.

    Raises:
        ValueError: unknown code (the message lists close matches).
    """
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"language code must be a non-empty string, not {code!r}")
    known = list(codes) if codes is not None else [*LANGUAGE_CODES, *_M2M100_ONLY_TOKENS]
    by_lower = {c.lower(): c for c in known}
    key = code.strip()
    by_nllb: dict[str | None, str] = {}  # NLLB code -> the tokenizer's code for it (identity for NLLB's)
    for c in known:
        by_nllb.setdefault(_nllb_code(c), c)
    by_nllb.pop(None, None)
    found = by_lower.get(key.lower()) or by_nllb.get(_nllb_code(key)) or by_lower.get(f"__{key.lower()}__")
    if found:
        return found
    # Close matches among NLLB's codes and short codes, and among the tokenizer's own codes (M2M100's
    # __ja__ compared as ja), each shown as the tokenizer writes it.
    lower = key.lower().replace("-", "_").strip("_")
    guesses = [c for c in LANGUAGE_CODES if c.split("_")[0] == lower]
    guesses = guesses or difflib.get_close_matches(key, [*LANGUAGE_CODES, *SHORT_CODES], n=6, cutoff=0.5)
    guesses = guesses or [c for c in LANGUAGE_CODES if lower[:2] and c.startswith(lower[:2])]
    bare = {c.strip("_").lower(): c for c in known}
    guesses += [bare[c] for c in difflib.get_close_matches(lower, list(bare), n=6, cutoff=0.5)]
    close: list[str] = []
    for guess in guesses:
        own = by_lower.get(guess.lower()) or by_nllb.get(_nllb_code(guess))
        if own and own not in close:
            close.append(own)
    hint = f"; close matches: {', '.join(close[:6])}" if close else ""
    example = "__ja__, ja or jpn_Jpan" if known and known[0].startswith("__") else "jpn_Jpan or a short code like ja"
    raise ValueError(f"unknown language code {code!r} (use a code like {example}){hint}")


def default_model_dir() -> Path:
    """``~/.cache/mlx_stream_tts/nllb-200-distilled-600M`` (``$MLX_STREAM_TTS_CACHE`` overrides the root)."""
    return cache_root() / DEFAULT_MODEL_NAME


@dataclass
class _Beams:
    """Beam-search state of one batch, as transformers' vectorized beam search keeps it."""

    running: np.ndarray  # (B, nb, L) token ids, decoder prompt included
    running_scores: np.ndarray  # (B, nb) float32 sums of log-probs
    finished: np.ndarray  # (B, nb, L)
    finished_len: np.ndarray  # (B, nb) lengths of the finished sequences
    finished_scores: np.ndarray  # (B, nb) length-normalized scores, -1e9 where empty
    is_finished: np.ndarray  # (B, nb) bool
    improvable: np.ndarray  # (B,) bool: running beams may still beat the finished ones


class _MlxSteps:
    """Beam search's model calls on MLX: rows of beams, reordered and fed one token per step."""

    def __init__(self, tr: Translator, sources: list[list[int]], tgt_lang_id: int, num_beams: int):
        self.model = tr.model
        self.hidden, self.memory, self.mask, self.cache = tr._start(sources, tgt_lang_id, repeat=num_beams)

    def logits(self) -> mx.array:
        return self.model.logits(self.hidden)

    def advance(self, rows: np.ndarray, feed: np.ndarray) -> None:
        """Row i continues row ``rows[i]`` (its caches) with token ``feed[i]``."""
        index = mx.array(rows.astype(np.int32))
        for layer_cache in self.cache:
            layer_cache.reorder(index)
        ids = mx.array(feed.reshape(-1, 1).astype(np.int32))
        self.hidden = self.model.decode(ids, self.memory, self.cache, self.mask)[:, -1]


class _NativeSteps:
    """The same on the native step, all rows in one call per token. Reordering copies the rows' caches."""

    def __init__(self, tr: Translator, native: NativeDecoder, sources: list[list[int]], tgt_lang_id: int,
                 num_beams: int, max_len: int):
        self.native = native
        self.rows: list = []
        for source in sources:
            ids, mask = tr._prepare([source])
            first = native.start(tr.model.encode(ids, mask), max_len)
            first.step(tr.args.decoder_start_token_id, 0, logits=False)
            first.step(tgt_lang_id, 1)
            self.rows += [first] + [first.fork() for _ in range(num_beams - 1)]
        self.pos = 2

    def logits(self) -> mx.array:
        return mx.array(np.stack([row.logits for row in self.rows]))

    def advance(self, rows: np.ndarray, feed: np.ndarray) -> None:
        moves = {i: int(j) for i, j in enumerate(rows) if i != j}
        taken = {j: self.rows[j].caches(self.pos) for j in set(moves.values())}
        for i, j in moves.items():
            self.rows[i].set_caches(taken[j])
        self.native.step_rows(self.rows, feed.reshape(-1).tolist(), self.pos)
        self.pos += 1


class Translator:
    """Translate sentences with a converted NLLB-200 / M2M100 model.

    Args:
        model: the MLX model (weights loaded).
        tokenizer: its tokenizer.
        max_batch: sentences decoded together.
        len_ratio, len_extra: default length limit, ``len_ratio * source tokens + len_extra`` new tokens.
        parallel: decode on two CPU cores (MLX streams); faster only while no other busy process (such
            as the voice) needs the second core. See :meth:`Model.set_parallel`.
        native: decode with one C call per token where possible (a float32 or 8/4-bit model on the CPU;
            see :mod:`.models.nllb_native`): the same results, steps ~1.4x faster in float32, ~15x in 8
            bits. False keeps every step on MLX.
        float_encoder: for a quantized model on the CPU, run the encoder (and the cross-attention
            keys/values) in float32 (:meth:`Model.dequantize_encoder`): ~50x faster there, ~0.7 GB more
            for the 600M model. None (default): when the model is quantized and on the CPU.
    """

    def __init__(
        self,
        model: Model,
        tokenizer: NllbTokenizer,
        *,
        max_batch: int = 8,
        len_ratio: float = 2.0,
        len_extra: int = 10,
        parallel: bool = False,
        native: bool = True,
        float_encoder: bool | None = None,
    ):
        self.model = model
        if float_encoder is None:
            float_encoder = bool(model.args.quantization) and mx.default_device() == mx.cpu
        if float_encoder and model.dequantize_encoder():
            logger.info("quantized encoder layers run in float32 on the CPU (MLX's quantized CPU kernels are slow)")
        model.set_parallel(parallel)
        self.tokenizer = tokenizer
        self.args: ModelArgs = model.args
        self.max_batch = max_batch
        self.len_ratio = len_ratio
        self.len_extra = len_extra
        ids = model.output_token_ids
        self._output_ids = None if ids is None else np.array(ids)
        self._output_ids_mx = ids
        self._column_lookup: dict[int, int] | None = None
        # Position limits: the source includes its language code and </s>; the target its start
        # token and language code.
        self.max_source_tokens = self.args.max_position_embeddings - 2
        self.max_target_tokens = self.args.max_position_embeddings - 2
        # Output column of each special id needed on the host (restricted heads remap columns).
        self._eos = self.tokenizer.eos_id
        self.native = native
        self._native_decoder: NativeDecoder | None = None

    # -------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: str | Path | None = None, dtype: str | mx.Dtype | None = None, **kwargs) -> Translator:
        """Load a converted model folder.

        Args:
            path: the folder written by ``mlx-stream-tts convert nllb`` (default: :func:`default_model_dir`).
            dtype: cast float weights on load (``"float32"``, ``"float16"``, ``"bfloat16"``); None keeps
                the stored dtype.
            **kwargs: passed to the constructor (``max_batch``, ``len_ratio``, ``len_extra``, ``parallel``,
                ``native``, ``float_encoder``).

        Raises:
            FileNotFoundError: no (complete) converted model there.
            ValueError: a folder of another architecture or format, or weights that do not fit.
        """
        path = Path(path).expanduser() if path is not None else default_model_dir()
        how = CONVERT_COMMAND.format(out=path)
        if not path.is_dir():
            raise FileNotFoundError(f"no converted NLLB model at {path}; convert one with: {how}")
        config_path = path / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{path} has no config.json (an unfinished or foreign folder); convert again with: {how} --overwrite"
            )
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{config_path} is unreadable ({err}); convert again with: {how} --overwrite") from None
        if config.get("model_type") != "m2m_100":
            raise ValueError(
                f"{path} holds a {config.get('model_type')!r} model, not NLLB-200/M2M100; convert one with: {how}"
            )
        if "mlx_stream_tts" not in config:
            raise ValueError(f"{path} is a Hugging Face checkpoint, not a converted model; convert it with: "
                             f"mlx-stream-tts convert nllb {path} --out DIR")
        fmt = config["mlx_stream_tts"].get("format") if isinstance(config["mlx_stream_tts"], dict) else None
        if fmt != FORMAT_VERSION:
            raise ValueError(f"{path} was converted in format {fmt!r}, this version reads format {FORMAT_VERSION}; "
                             f"convert again with: {how} --overwrite")
        weights_path = path / WEIGHTS_FILE
        for needed in (weights_path, path / "sentencepiece.bpe.model"):
            if not needed.is_file():
                raise FileNotFoundError(f"{needed} is missing (half-written folder?); convert again with: {how} --overwrite")
        args = ModelArgs.from_dict(config)
        model = Model(args)
        if args.quantization:
            quantize_model(model, args.quantization["group_size"], args.quantization["bits"])
        try:
            weights = mx.load(str(weights_path))
        except Exception as err:  # mlx raises RuntimeError/ValueError on truncated files
            raise ValueError(f"{weights_path} is unreadable ({err}); convert again with: {how} --overwrite") from None
        try:
            model.load_weights(list(weights.items()), strict=True)
        except ValueError as err:
            raise ValueError(f"{weights_path} does not fit its config.json ({err}); convert again with: {how} --overwrite") from None
        if dtype is not None:
            target = getattr(mx, dtype) if isinstance(dtype, str) else dtype
            model.apply(lambda p: p.astype(target) if mx.issubdtype(p.dtype, mx.floating) else p)
        model.eval()
        mx.eval(model.parameters())
        try:
            tokenizer = load_tokenizer(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}; convert again with: {how} --overwrite") from None
        logger.info("loaded %s (%s)", path, config["mlx_stream_tts"].get("dtype"))
        return cls(model, tokenizer, **kwargs)

    # ---------------------------------------------------------------------------- public API

    def translate(
        self,
        texts: list[str],
        src_lang: str = "eng_Latn",
        tgt_lang: str = "jpn_Jpan",
        beam_size: int = 1,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Translate each text; returns one string per input, in order.

        Args:
            texts: sentences (or short paragraphs). Empty or blank strings give "". Texts longer than the
                model's positions are split at sentence/clause boundaries and their translations joined.
            src_lang, tgt_lang: NLLB codes or short codes (``"en"``, ``"ja"``).
            beam_size: 1 for greedy decoding.
            max_new_tokens: limit of new tokens per sentence (default: relative to the source length).
        """
        if isinstance(texts, str):
            raise TypeError("translate() takes a list of strings; wrap a single text in a list")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, not {beam_size}")
        src_lang, tgt_lang = self._resolve(src_lang), self._resolve(tgt_lang)
        tgt_id = self.tokenizer.lang_id(tgt_lang)
        # Each text -> one or more token sequences (long texts are split).
        pieces: list[list[int]] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
            for ids in self._source_pieces(text, src_lang):
                pieces.append(ids)
                owner.append(i)
        outputs = self.generate(pieces, tgt_id, beam_size=beam_size, max_new_tokens=max_new_tokens)
        joiner = "" if lang_script(tgt_lang) in _NO_SPACE_SCRIPTS else " "
        parts: list[list[str]] = [[] for _ in texts]
        for i, out in zip(owner, outputs):
            parts[i].append(self.tokenizer.decode(out))
        return [joiner.join(p for p in ps if p) for ps in parts]

    def translate_stream(
        self,
        text: str,
        src_lang: str = "eng_Latn",
        tgt_lang: str = "jpn_Jpan",
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        """Greedy translation of one text, yielding pieces of the output text as they are decoded.

        The pieces concatenate to what :meth:`translate` returns with ``beam_size=1``, except that the
        repetition guard cannot take back text already yielded: a degenerate output is cut at the
        point where it starts repeating (and logged) instead of being re-decoded.
        """
        src_lang, tgt_lang = self._resolve(src_lang), self._resolve(tgt_lang)
        tgt_id = self.tokenizer.lang_id(tgt_lang)
        joiner = "" if lang_script(tgt_lang) in _NO_SPACE_SCRIPTS else " "
        first = True
        for source in self._source_pieces(text, src_lang):
            limit = self._limit(source, max_new_tokens)
            tokens: list[int] = []
            shown = ""
            for token in self._greedy_stream(source, tgt_id, limit):
                tokens.append(token)
                if _repeating_tail(tokens):
                    logger.warning("streamed translation started repeating; cut after %d tokens", len(tokens))
                    break
                full = self.tokenizer.decode(tokens)
                if full.startswith(shown) and len(full) > len(shown):
                    delta = full[len(shown):]
                    if not shown and not first:
                        delta = joiner + delta
                    shown = full
                    yield delta
            if shown:
                first = False

    def generate(
        self,
        sources: list[list[int]],
        tgt_lang_id: int,
        beam_size: int = 1,
        max_new_tokens: int | list[int] | None = None,
        no_repeat_ngram_size: int = 0,
        guard: bool = True,
    ) -> list[list[int]]:
        """Token-level translation: source ids (``[src_lang] ... </s>``) -> output ids.

        Returns the ids after the target language code, without the final ``</s>``. Sentences are
        decoded in batches of similar lengths; ``max_new_tokens`` counts the ids returned plus ``</s>``.
        With ``guard``, degenerate greedy outputs (looping, or no ``</s>`` within the limit) are decoded
        again with beam search and n-gram blocking.
        """
        if not sources:
            return []
        limits = (
            [self._limit(s, max_new_tokens) for s in sources]
            if not isinstance(max_new_tokens, list)
            else [min(int(m), self.max_target_tokens) for m in max_new_tokens]
        )
        results: list[list[int] | None] = [None] * len(sources)
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        for start in range(0, len(order), self.max_batch):
            batch = order[start : start + self.max_batch]
            outs = self._decode_batch([sources[i] for i in batch], tgt_lang_id, beam_size,
                                      [limits[i] for i in batch], no_repeat_ngram_size)
            for i, out in zip(batch, outs):
                results[i] = out
        final: list[list[int]] = []
        for i, (tokens, ended) in enumerate(results):  # type: ignore[misc]
            if guard and beam_size == 1 and _degenerate(tokens, ended):
                fallback, f_ended = self._decode_batch([sources[i]], tgt_lang_id, 4, [limits[i]], 3)[0]
                logger.info("greedy output looked degenerate (%d tokens, ended=%s); re-decoded with beam search",
                            len(tokens), ended)
                if _degenerate(fallback, f_ended):
                    logger.warning("translation still degenerate after beam search; cutting the repetition")
                    fallback = _cut_repetition(fallback)
                tokens = fallback
            final.append(tokens)
        return final

    # ------------------------------------------------------------------------------ internals

    def _resolve(self, code: str) -> str:
        """This model's code for ``code`` (NLLB's ``jpn_Jpan``, M2M100's ``__ja__``)."""
        return resolve_lang(code, self.tokenizer.lang_code_to_id)

    def _limit(self, source: list[int], max_new_tokens: int | None) -> int:
        if max_new_tokens is None:
            max_new_tokens = int(self.len_ratio * (len(source) - 2)) + self.len_extra
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {max_new_tokens}")
        return min(max_new_tokens, self.max_target_tokens)

    def _source_pieces(self, text: str, src_lang: str) -> list[list[int]]:
        """Source id sequences for one text: none if blank, several if too long for the model."""
        text = text.strip()
        if not text:
            return []
        ids = self.tokenizer.encode(text, src_lang)
        if len(ids) <= self.max_source_tokens + 2:
            return [ids]
        logger.info("text of %d tokens is longer than the model's %d positions: splitting it",
                    len(ids) - 2, self.max_source_tokens)
        return [self.tokenizer.encode(p, src_lang) for p in self._split_text(text)]

    def _split_text(self, text: str) -> list[str]:
        """Split at the boundary nearest the middle (sentence end, then clause, then space) until every
        piece fits; a text without any boundary is cut by tokens."""
        if len(self.tokenizer.encode_pieces(text)) <= self.max_source_tokens:
            return [text]
        for pattern in (r"(?<=[.!?。！？])\s+|(?<=[。！？])", r"(?<=[,;:、，；：])\s*", r"\s+"):
            cuts = [m.end() for m in re.finditer(pattern, text) if 0 < m.end() < len(text)]
            if cuts:
                cut = min(cuts, key=lambda c: abs(c - len(text) // 2))
                left, right = text[:cut].strip(), text[cut:].strip()
                if left and right:
                    return self._split_text(left) + self._split_text(right)
        ids = self.tokenizer.encode_pieces(text)
        half = len(ids) // 2
        left, right = self.tokenizer.decode(ids[:half]), self.tokenizer.decode(ids[half:])
        return self._split_text(left) + self._split_text(right)

    def _prepare(self, sources: list[list[int]]) -> tuple[mx.array, mx.array]:
        width = max(len(s) for s in sources)
        ids = np.full((len(sources), width), self.tokenizer.pad_id, dtype=np.int32)
        for row, s in enumerate(sources):
            ids[row, : len(s)] = s
        ids_mx = mx.array(ids)
        mask = mx.array(np.arange(width)[None, :] < np.array([len(s) for s in sources])[:, None])
        return ids_mx, mask

    def _start(self, sources: list[list[int]], tgt_lang_id: int, repeat: int = 1):
        """Encode and run the decoder prompt ``</s> tgt_lang``; returns the last hidden state and state."""
        ids, mask = self._prepare(sources)
        memory = self.model.encode(ids, mask)
        if repeat > 1:
            memory = mx.repeat(memory, repeat, axis=0)
            mask = mx.repeat(mask, repeat, axis=0)
        cache = self.model.make_cache()
        prompt = mx.array([[self.args.decoder_start_token_id, tgt_lang_id]] * memory.shape[0], dtype=mx.int32)
        hidden = self.model.decode(prompt, memory, cache, mask)[:, -1]
        return hidden, memory, mask, cache

    def _token_of(self, column: int) -> int:
        """The token id of an output column (restricted heads keep a subset of the vocabulary)."""
        return column if self._output_ids is None else int(self._output_ids[column])

    def _to_token_ids(self, columns: mx.array) -> mx.array:
        return columns if self._output_ids_mx is None else self._output_ids_mx[columns]

    def _decode_batch(self, sources, tgt_lang_id, beam_size, limits, no_repeat_ngram_size):
        if beam_size == 1 and no_repeat_ngram_size == 0:
            return self._greedy(sources, tgt_lang_id, limits)
        return self._beam(sources, tgt_lang_id, beam_size, limits, no_repeat_ngram_size)

    def _greedy(self, sources: list[list[int]], tgt_lang_id: int, limits: list[int]) -> list[tuple[list[int], bool]]:
        """Batched greedy decoding; returns (tokens without </s>, ended with </s>) per source.

        The next step's graph is built and started before the previous token is read back, so the
        host's work overlaps the model's (one step is computed in vain at the end).
        """
        B = len(sources)
        native = self._native() if B <= NativeDecoder.MAX_ROWS else None
        if native is not None:
            return self._greedy_native_rows(native, sources, tgt_lang_id, limits)
        pad, eos = self.tokenizer.pad_id, self._eos
        hidden, memory, mask, cache = self._start(sources, tgt_lang_id)
        limit_mx = mx.array(limits, dtype=mx.int32)
        token = self._to_token_ids(mx.argmax(self.model.logits(hidden), axis=-1).astype(mx.int32))
        done = (token == eos) | (limit_mx <= 1)
        mx.async_eval(token, done)
        steps: list[list[int]] = []
        for step in range(1, max(limits) + 1):
            if step < max(limits):
                feed = mx.where(done, pad, token)[:, None]
                hidden = self.model.decode(feed, memory, cache, mask)[:, -1]
                next_token = self._to_token_ids(mx.argmax(self.model.logits(hidden), axis=-1).astype(mx.int32))
                next_done = done | (next_token == eos) | (limit_mx <= step + 1)
                mx.async_eval(next_token, next_done)
            steps.append(token.tolist())
            if all(done.tolist()) or step == max(limits):
                break
            token, done = next_token, next_done
        return [self._collect([s[b] for s in steps], limits[b]) for b in range(B)]

    def _collect(self, tokens: list[int], limit: int) -> tuple[list[int], bool]:
        tokens = tokens[:limit]
        if self._eos in tokens:
            return tokens[: tokens.index(self._eos)], True
        return tokens, False

    def _native(self) -> NativeDecoder | None:
        """The native step for this model, made on first use and again after its weights change."""
        if not self.native or mx.default_device() != mx.cpu:
            return None
        dec = self._native_decoder
        if dec is None or not dec.current():
            dec = self._native_decoder = NativeDecoder.create(self.model)
            if dec is None:
                self.native = False  # not for this model or machine: don't ask again
        return dec

    def _greedy_native(self, native: NativeDecoder, source: list[int], tgt_lang_id: int, limit: int) -> Iterator[int]:
        """Greedy ids of one sentence, up to ``limit`` and ending with ``</s>`` if it comes."""
        ids, mask = self._prepare([source])
        sentence = native.start(self.model.encode(ids, mask), limit + 1)
        sentence.step(self.args.decoder_start_token_id, 0, logits=False)
        token = tgt_lang_id
        for pos in range(1, limit + 1):
            token = self._token_of(sentence.step(token, pos))
            yield token
            if token == self._eos:
                return

    def _greedy_native_rows(self, native: NativeDecoder, sources: list[list[int]], tgt_lang_id: int,
                            limits: list[int]) -> list[tuple[list[int], bool]]:
        """Greedy decoding of sentences with the native step, all rows in one call per token (a
        sentence leaves the batch when it ends)."""
        sentences = []
        for source, limit in zip(sources, limits):
            ids, mask = self._prepare([source])
            sentences.append(native.start(self.model.encode(ids, mask), limit + 1))
        native.step_rows(sentences, [self.args.decoder_start_token_id] * len(sources), 0, logits=False)
        outputs: list[list[int]] = [[] for _ in sources]
        live = list(range(len(sources)))
        feed = [tgt_lang_id] * len(sources)
        for pos in range(1, max(limits) + 1):
            columns = native.step_rows([sentences[i] for i in live], [feed[i] for i in live], pos)
            still = []
            for i, column in zip(live, columns):
                token = self._token_of(column)
                outputs[i].append(token)
                feed[i] = token
                if token != self._eos and len(outputs[i]) < limits[i]:
                    still.append(i)
            live = still
            if not live:
                break
        return [self._collect(out, limit) for out, limit in zip(outputs, limits)]

    def _greedy_stream(self, source: list[int], tgt_lang_id: int, limit: int) -> Iterator[int]:
        eos = self._eos
        native = self._native()
        if native is not None:
            yield from (t for t in self._greedy_native(native, source, tgt_lang_id, limit) if t != eos)
            return
        hidden, memory, mask, cache = self._start([source], tgt_lang_id)
        for step in range(limit):
            token = self._to_token_ids(mx.argmax(self.model.logits(hidden), axis=-1).astype(mx.int32))
            value = token.item()
            if value == eos:
                return
            yield value
            if step + 1 < limit:
                hidden = self.model.decode(token[:, None], memory, cache, mask)[:, -1]

    def _beam(self, sources, tgt_lang_id, num_beams, limits, no_repeat_ngram_size):
        """Beam search as transformers' ``_beam_search`` (length_penalty 1, early_stopping False)."""
        B, nb = len(sources), num_beams
        pad, eos = self.tokenizer.pad_id, self._eos
        # transformers' max_length counts the decoder start token and the language code.
        max_length = 2 + max(limits)
        native = self._native() if B * nb <= NativeDecoder.MAX_ROWS else None
        steps = _NativeSteps(self, native, sources, tgt_lang_id, nb, max_length + 1) if native is not None \
            else _MlxSteps(self, sources, tgt_lang_id, nb)
        prompt = [self.args.decoder_start_token_id, tgt_lang_id]
        L = max_length + 1
        st = _Beams(
            running=np.full((B, nb, L), pad, dtype=np.int64),
            running_scores=np.full((B, nb), -np.inf, dtype=np.float32),
            finished=np.full((B, nb, L), pad, dtype=np.int64),
            finished_len=np.zeros((B, nb), dtype=np.int64),
            finished_scores=np.full((B, nb), -1e9, dtype=np.float32),
            is_finished=np.zeros((B, nb), dtype=bool),
            improvable=np.ones((B,), dtype=bool),
        )
        st.running[:, :, :2] = prompt
        # After the forced language code: beam 0 holds it with log-prob 0, the other beams are dead.
        st.running_scores[:, 0] = 0.0
        row_limit = np.array(limits)
        cur_len = 2
        k = 2 * nb
        top_nb = np.arange(k) < nb
        while True:
            logprobs = nn.log_softmax(steps.logits().astype(mx.float32), axis=-1)
            n = logprobs.shape[-1]
            if no_repeat_ngram_size:
                banned = self._banned(st.running[:, :, :cur_len].reshape(B * nb, cur_len), no_repeat_ngram_size)
                banned = [(r, c) for r, t in banned if (c := self._column_of(t)) is not None]
                if banned:
                    rows, cols = zip(*banned)
                    logprobs[mx.array(rows), mx.array(cols)] = -mx.inf
            scores = (logprobs + mx.array(st.running_scores.reshape(-1, 1))).reshape(B, nb * n)
            cand = mx.argpartition(-scores, kth=k - 1, axis=-1)[:, :k]
            cand_scores = mx.take_along_axis(scores, cand, axis=-1)
            cand, cand_scores = np.array(cand), np.array(cand_scores)
            order = np.argsort(-cand_scores, axis=-1, kind="stable")
            cand = np.take_along_axis(cand, order, axis=-1)
            cand_scores = np.take_along_axis(cand_scores, order, axis=-1)
            src_beam = cand // n
            col = cand % n
            tok = col if self._output_ids is None else self._output_ids[col]
            seqs = np.take_along_axis(st.running, src_beam[:, :, None], axis=1)
            seqs[:, :, cur_len] = tok
            # The candidate is output token number cur_len - 1: the sentence's limit stops it (with one
            # limit for the batch this is transformers' max_length criterion).
            hits = (tok == eos) | ((cur_len - 1) >= row_limit)[:, None]
            # Running beams for the next step: the best nb candidates that did not stop.
            live = cand_scores + hits.astype(np.float32) * np.float32(-1e9)
            keep = np.argsort(-live, axis=-1, kind="stable")[:, :nb]
            next_running = np.take_along_axis(seqs, keep[:, :, None], axis=1)
            next_scores = np.take_along_axis(live, keep, axis=-1)
            next_src = np.take_along_axis(src_beam, keep, axis=-1)
            # Finished hypotheses: stopped candidates among the top nb, length-normalized.
            just = hits & top_nb[None, :]
            fin = cand_scores / np.float32(cur_len + 1 - 1)
            fin = fin + (~st.improvable)[:, None].astype(np.float32) * np.float32(-1e9)
            fin = fin + (~just).astype(np.float32) * np.float32(-1e9)
            merged_scores = np.concatenate([st.finished_scores, fin.astype(np.float32)], axis=1)
            merged_seqs = np.concatenate([st.finished, seqs], axis=1)
            merged_len = np.concatenate([st.finished_len, np.full((B, k), cur_len + 1)], axis=1)
            merged_fin = np.concatenate([st.is_finished, just], axis=1)
            best = np.argsort(-merged_scores, axis=-1, kind="stable")[:, :nb]
            st.finished = np.take_along_axis(merged_seqs, best[:, :, None], axis=1)
            st.finished_scores = np.take_along_axis(merged_scores, best, axis=-1)
            st.finished_len = np.take_along_axis(merged_len, best, axis=-1)
            st.is_finished = np.take_along_axis(merged_fin, best, axis=-1)
            st.running, st.running_scores = next_running, next_scores.astype(np.float32)
            cur_len += 1
            best_running = st.running_scores[:, 0] / np.float32(cur_len - 1)
            worst = np.where(st.is_finished, st.finished_scores.min(axis=1, keepdims=True), np.float32(-1e9))
            st.improvable &= np.any(best_running[:, None] > worst, axis=-1)
            if not st.improvable.any() or hits.all():
                break
            steps.advance((next_src + np.arange(B)[:, None] * nb).reshape(-1), st.running[:, :, cur_len - 1])
        results = []
        for b in range(B):
            seq = st.finished[b, 0, 2 : st.finished_len[b, 0]].tolist()
            results.append(self._collect(seq, limits[b]))
        return results

    @staticmethod
    def _banned(seqs: np.ndarray, n: int) -> list[tuple[int, int]]:
        """(row, token) pairs that would repeat an n-gram of the row (transformers' no_repeat_ngram)."""
        banned = []
        length = seqs.shape[1]
        if length + 1 < n:
            return banned
        for row, seq in enumerate(seqs.tolist()):
            prefix = tuple(seq[length - n + 1 :])
            for i in range(length - n + 1):
                if tuple(seq[i : i + n - 1]) == prefix:
                    banned.append((row, seq[i + n - 1]))
        return banned

    def _column_of(self, token_id: int) -> int | None:
        """Output column of a real token id (None when a restricted head lacks it)."""
        if self._output_ids is None:
            return token_id
        if self._column_lookup is None:
            self._column_lookup = {int(t): c for c, t in enumerate(self._output_ids)}
        return self._column_lookup.get(token_id)

def _repeating_tail(tokens: list[int], max_n: int = 8) -> bool:
    """True when the output ends in a loop: one token 6+ times, or an n-gram (n >= 2) 3+ times."""
    for n in range(1, max_n + 1):
        reps = 4 if n > 1 else 6
        if len(tokens) < n * reps:
            continue
        unit = tokens[-n:]
        if all(tokens[-(r + 1) * n : len(tokens) - r * n] == unit for r in range(reps)):
            return True
    return False


def _degenerate(tokens: list[int], ended: bool) -> bool:
    return not ended or _repeating_tail(tokens)


def _cut_repetition(tokens: list[int], max_n: int = 8) -> list[int]:
    """Drop the repeated copies at the end of a looping output, keeping one."""
    for n in range(1, max_n + 1):
        unit = tokens[-n:]
        r = 1
        while len(tokens) >= (r + 1) * n and tokens[-(r + 1) * n : len(tokens) - r * n] == unit:
            r += 1
        if r >= (6 if n == 1 else 4):
            return tokens[: len(tokens) - (r - 1) * n]
    return tokens
