"""Translator: NLLB-200 / M2M100 on MLX (tokenizer + model + decoding), the library's translation stage.

    from mlx_stream_tts import Translator
    tr = Translator.load()                       # ~/.cache/mlx_stream_tts/nllb-200-distilled-600M
    tr.translate(["Hello world."], "eng_Latn", "jpn_Jpan")

``Translator.load`` reads a converted folder, casts it to the device's dtype and hands the model to the
CPU accelerator (``cpu/translator.py``), which on MLX's CPU device swaps in its CPU graph and prepares the
one-call C decoding step, and on a GPU leaves the pure model alone. The decoding loops are in
``decoding.py``, the language codes in ``languages.py``. On top of ``generate()``'s decoding, a repetition
guard re-decodes degenerate greedy outputs with beam search and n-gram blocking.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from . import decoding
from .cpu import resolve_backend
from .cpu.nllb_step import DecodingStep
from .cpu.translator import TranslatorAccelerator, accelerate
from .decoding import Decoded, ModelRows, StepRows, Vocabulary
from .languages import joiner, lang_script, resolve_lang  # noqa: F401  (public here too, as before)
from .models.nllb import FORMAT_VERSION, Model, ModelArgs, quantize_model
from .nllb_tokenizer import NllbTokenizer, load_tokenizer
from .paths import cache_root

if TYPE_CHECKING:
    from .lm_translator import LMTranslator

logger = logging.getLogger(__name__)

CONVERT_COMMAND = "mlx-stream-tts convert nllb facebook/nllb-200-distilled-600M --out {out}"
DEFAULT_MODEL_NAME = "nllb-200-distilled-600M"
WEIGHTS_FILE = "model.safetensors"
#: What :meth:`Translator.warm` translates (a clause and a sentence end, like the text to come).
_WARM_TEXT = "Let me check the file, then run the tests."
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
#: What :meth:`Translator.self_check` encodes.
_CHECK_TEXT = "Hello."


def default_model_dir() -> Path:
    """``~/.cache/mlx_stream_tts/nllb-200-distilled-600M`` (``$MLX_STREAM_TTS_CACHE`` overrides the root)."""
    return cache_root() / DEFAULT_MODEL_NAME


def device_dtype() -> mx.Dtype:
    """The dtype ``dtype="auto"`` loads: float32 on a CPU, float16 on a GPU.

    On MLX's CPU backend float32 is the fastest dtype (its float16, bfloat16 and quantized kernels are
    2-10x slower; the C step reads float32). On a GPU half precision halves the bytes read per token.
    float16 rather than bfloat16: three more mantissa bits, full-speed arithmetic on every Apple GPU
    (bfloat16 is emulated before M3), and NLLB's range is what the reference guards with its float16 clamp
    of encoder activations, which ``models/nllb.py`` keeps.
    """
    return mx.float32 if mx.default_device() == mx.cpu else mx.float16


class Translator:
    """Translate sentences with a converted NLLB-200 / M2M100 model.

    Args:
        model: the MLX model (weights loaded, in their final dtype).
        tokenizer: its tokenizer.
        backend: ``"auto"`` (the CPU accelerator on MLX's CPU device, the pure model on a GPU), ``"mlx"``
            (the pure model everywhere) or ``"cpu"`` (the accelerator, or an error saying why not); see
            :func:`mlx_stream_tts.cpu.translator.accelerate`. Chosen once, here.
        c_step: with the accelerator, decode with one C call per token where possible (a float32 or 8/4-bit
            model): the same results, steps ~1.4x faster in float32, ~15x in 8 bits. False decodes the
            CPU graph with MLX ops (for comparisons).
        parallel: with the accelerator, split large products over two CPU streams; faster only while no
            other busy process (such as the voice) needs the second core.
        max_batch: sentences decoded together.
        len_ratio, len_extra: default length limit, ``len_ratio * source tokens + len_extra`` new tokens.
    """

    def __init__(
        self,
        model: Model,
        tokenizer: NllbTokenizer,
        *,
        backend: str = "auto",
        c_step: bool = True,
        parallel: bool = False,
        max_batch: int = 8,
        len_ratio: float = 2.0,
        len_extra: int = 10,
    ):
        self.model = model
        self.accelerator: TranslatorAccelerator | None = accelerate(model, backend, c_step=c_step, parallel=parallel)
        self.tokenizer = tokenizer
        self.args: ModelArgs = model.args
        self.max_batch = max_batch
        self.len_ratio = len_ratio
        self.len_extra = len_extra
        self.vocab = Vocabulary(self.args.decoder_start_token_id, tokenizer.eos_id, tokenizer.pad_id,
                                self.args.vocab_size, model.output_token_ids)
        # Position limits: the source includes its language code and </s>; the target its start
        # token and language code.
        self.max_source_tokens = self.args.max_position_embeddings - 2
        self.max_target_tokens = self.args.max_position_embeddings - 2
        self._warm = False

    # -------------------------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        dtype: str | mx.Dtype | None = "auto",
        backend: str = "auto",
        *,
        c_step: bool = True,
        parallel: bool = False,
        max_batch: int = 8,
        len_ratio: float = 2.0,
        len_extra: int = 10,
        self_check: bool = True,
    ) -> Translator | LMTranslator:
        """Load a converted model folder, or an mlx-lm model (folder or hub id).

        Args:
            path: the folder written by ``mlx-stream-tts convert nllb`` (default: :func:`default_model_dir`);
                or a decoder-only model that mlx-lm runs, as a folder in the hub layout or a hub id
                (``LiquidAI/LFM2-350M-ENJP-MT``): that loads an :class:`~mlx_stream_tts.lm_translator.LMTranslator`
                with ``dtype`` and ``self_check`` (the other options are NLLB's).
            dtype: the float weights' dtype: ``"auto"`` (:func:`device_dtype`: float32 on a CPU, float16 on
                a GPU), ``"float32"``, ``"float16"``, ``"bfloat16"``, or None to keep the stored one.
                Quantized weights stay quantized (their scales take this dtype).
            backend, c_step, parallel, max_batch, len_ratio, len_extra: see :class:`Translator`.
            self_check: check that the weights can translate (:meth:`self_check`: finite weights, and
                finite encoder states and first logits for one short sentence).

        Raises:
            FileNotFoundError: no (complete) converted model there.
            ValueError: a folder of another architecture or format, weights that do not fit or that load
                but hold or produce NaN / infinite values, an unknown dtype or backend.
            AcceleratorError: ``backend="cpu"`` where the CPU accelerator cannot run.
        """
        resolve_backend(backend)  # a bad name fails before the weights are read
        from .lm_translator import LMTranslator, is_lm_source  # here: it imports this module

        if path is not None and is_lm_source(path):
            if backend == "cpu":
                logger.warning("the CPU accelerator is NLLB's: %s runs on the pure MLX model", path)
            return LMTranslator.load(path, dtype=dtype, self_check=self_check)
        target = cls._dtype(dtype)
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
        del weights  # arrays replaced later (casts, the CPU graph's fused q/k/v) are then freed at once
        if target is not None:
            model.apply(lambda p: p.astype(target) if mx.issubdtype(p.dtype, mx.floating) and p.dtype != target else p)
        model.eval()
        mx.eval(model.parameters())
        try:
            tokenizer = load_tokenizer(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}; convert again with: {how} --overwrite") from None
        logger.info("loaded %s (stored %s, running %s)", path, config["mlx_stream_tts"].get("dtype"),
                    "as stored" if target is None else str(target).rpartition(".")[2])
        translator = cls(model, tokenizer, backend=backend, c_step=c_step, parallel=parallel, max_batch=max_batch,
                         len_ratio=len_ratio, len_extra=len_extra)
        problem = translator.self_check() if self_check else None
        if problem is not None:
            raise ValueError(f"{weights_path} loads, but {problem}; convert again with: {how} --overwrite")
        return translator

    def self_check(self) -> str | None:
        """Why this model cannot translate, or None: every float weight finite, and one short sentence's
        encoder states and first decoding logits finite (through the model as it runs, accelerator
        included). Weights are read block by block (a bounded temporary)."""
        from mlx.utils import tree_flatten

        for name, value in tree_flatten(self.model.parameters()):
            if mx.issubdtype(value.dtype, mx.floating) and not _finite(value):
                return f"its tensor {name!r} holds NaN or infinite values"
        codes = self.tokenizer.lang_code_to_id
        src = next((c for c in ("eng_Latn", "__en__") if c in codes), next(iter(codes)))
        tgt = next((c for c in ("jpn_Jpan", "__ja__") if c in codes), src)
        ids = self.tokenizer.encode(_CHECK_TEXT, src)
        hidden, memory, _, _ = decoding.start(self.model, self.vocab, [ids], codes[tgt])
        logits = self.model.logits(hidden)
        for what, value in (("encoder states", memory), ("logits", logits)):
            if not _finite(value):
                return f"it produces NaN or infinite {what} for {_CHECK_TEXT!r}"
        return None

    @staticmethod
    def _dtype(dtype: str | mx.Dtype | None) -> mx.Dtype | None:
        if dtype is None or isinstance(dtype, mx.Dtype):
            return dtype
        if dtype == "auto":
            return device_dtype()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto', None or one of {', '.join(DTYPES)}, not {dtype!r}")
        return DTYPES[dtype]

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
        join = joiner(tgt_lang)
        parts: list[list[str]] = [[] for _ in texts]
        for i, out in zip(owner, outputs):
            parts[i].append(self.tokenizer.decode(out))
        return [join.join(p for p in ps if p) for ps in parts]

    def warm(self, src_lang: str = "eng_Latn", tgt_lang: str = "jpn_Jpan") -> float:
        """Translates one short sentence once, so that the first real one finds the decoding step built
        and caches primed (a no-op once done). Call it from the thread that will translate (the
        pipeline's ``Pipeline.warm()`` does).

        Returns:
            Seconds spent (0.0 when already warm).
        """
        if self._warm:
            return 0.0
        started = time.perf_counter()
        self.translate([_WARM_TEXT], src_lang, tgt_lang)
        self._warm = True
        spent = time.perf_counter() - started
        logger.debug("translator warmed in %.2f s", spent)
        return spent

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
        join = joiner(tgt_lang)
        first = True
        for source in self._source_pieces(text, src_lang):
            limit = self._limit(source, max_new_tokens)
            tokens: list[int] = []
            shown = ""
            for token in self._stream(source, tgt_id, limit):
                tokens.append(token)
                if _repeating_tail(tokens):
                    logger.warning("streamed translation started repeating; cut after %d tokens", len(tokens))
                    break
                full = self.tokenizer.decode(tokens)
                if full.startswith(shown) and len(full) > len(shown):
                    delta = full[len(shown):]
                    if not shown and not first:
                        delta = join + delta
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

    def _step(self) -> DecodingStep | None:
        """The C decoding step, or None (the pure model, half precision, or not built here)."""
        return self.accelerator.decoding_step() if self.accelerator is not None else None

    def _decode_batch(self, sources: list[list[int]], tgt_lang_id: int, beam_size: int, limits: list[int],
                      no_repeat_ngram_size: int) -> list[Decoded]:
        """One batch, on the C step where it takes every row (at most ``DecodingStep.MAX_ROWS``), else on MLX."""
        step = self._step()
        rows = len(sources) * beam_size
        if step is not None and rows > step.MAX_ROWS:
            step = None
        with decoding.wired_limit():
            if beam_size == 1 and no_repeat_ngram_size == 0:
                if step is not None:
                    return decoding.greedy_steps(step, self.model, self.vocab, sources, tgt_lang_id, limits)
                return decoding.greedy(self.model, self.vocab, sources, tgt_lang_id, limits)
            if step is not None:
                beams = StepRows(step, self.model, self.vocab, sources, tgt_lang_id, beam_size, 2 + max(limits) + 1)
            else:
                beams = ModelRows(self.model, self.vocab, sources, tgt_lang_id, beam_size)
            return decoding.beam_search(beams, self.vocab, len(sources), tgt_lang_id, beam_size, limits,
                                        no_repeat_ngram_size)

    def _stream(self, source: list[int], tgt_lang_id: int, limit: int) -> Iterator[int]:
        """Greedy ids of one sentence as they are decoded, without ``</s>``."""
        step = self._step()
        with decoding.wired_limit():
            if step is not None:
                yield from decoding.stream_steps(step, self.model, self.vocab, source, tgt_lang_id, limit)
            else:
                yield from decoding.greedy_stream(self.model, self.vocab, source, tgt_lang_id, limit)


def _finite(value: mx.array, block: int = 1 << 22) -> bool:
    """True when every element of ``value`` is finite; checked in blocks of ~``block`` elements in numpy on
    the CPU (the weights are in host memory: no copy for float32), with MLX elsewhere."""
    if mx.default_device() != mx.cpu:
        return bool(mx.isfinite(value).all().item())
    flat = value.reshape(-1)
    for start in range(0, flat.size, block):
        part = flat[start : start + block]
        if part.dtype != mx.float32:
            part = part.astype(mx.float32)
        if not np.isfinite(np.asarray(part)).all():
            return False
    return True


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
