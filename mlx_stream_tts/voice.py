"""The default voice: Japanese text -> phonemes -> Kokoro-82M (MLX) -> 24 kHz audio, in chunks.

``Voice.synthesize`` streams inside a sentence. Kokoro's decoder normalises over the whole time axis
(instance norm in every AdaIN block), so decoding a sentence piece by piece cannot equal one-shot
synthesis exactly; the methods on offer (``mode``):

- ``"windowed"`` (default): durations, F0 and energy are predicted once for the whole sentence (the
  cheap part, identical to one-shot), then the decoder runs over windows of frames with context
  frames on each side, cut where the predicted energy is lowest and joined with a short
  crossfade. The first window is short and decoded on its own, so the first chunk comes early;
  for the later ones the frame-rate layers and the harmonic source run once over the whole
  sentence and the generator's instance norms use statistics pooled over all the windows so far
  (closer to one-shot's); each later window is as long as real time allows.
- ``"clause"``: each clause (split at the punctuation that the G2P keeps: 、，, and sentence ends) is
  synthesized as its own utterance; the prosody is then the clause's, not the sentence's.
- ``"oneshot"``: the whole sentence in one call, one chunk.

Kokoro pads every utterance with ~0.28 s of silence before it and ~0.5-0.7 s after it (the start pad
and the final punctuation token). With ``trim`` (default), each utterance keeps only a short lead-in
before its first sound and a short tail after its last one (see :class:`TrimPlan`); the pauses inside
it (clause pauses) are kept, and ``"clause"`` mode and over-long text, which speak several utterances
for one call, put a short pause between them. The whole sentence is still decoded: a decoder run
on the sentence without its silent frames normalises over other statistics and comes out
audibly quieter (measured RMS 0.5-0.8x at the ends, log-mel correlation 0.85-0.97 with the full run).
The pauses *between* sentences are the pipeline's (``Pipeline(sentence_gap=...)``).

``bench/tts_streaming.py`` measures them against one-shot synthesis (log-mel correlation after DTW,
duration, seams, time to first chunk). Windowed on 2 CPU cores, 14 sentences: mean 0.983, worst
0.97, no clicks (every window on its own with its own statistics: 0.977, worst 0.953); clause
0.975 but 12% longer and a later first chunk.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .types import SAMPLE_RATE

logger = logging.getLogger(__name__)

__all__ = ["MODES", "PRECISIONS", "Prosody", "TrimPlan", "Voice", "VoiceEngine"]

MODES = ("windowed", "clause", "oneshot")
DEFAULT_MODE = "windowed"
#: Precision of the vocoder's convolutions on the CPU accelerator: "auto" = "int8" where its kernel can
#: be built (AVX-512 VNNI and a C compiler, see cpu/kernels/int8_conv.c), else "float32".
PRECISIONS = ("auto", "int8", "float32")

#: Kokoro's positional limit: at most 510 phoneme ids between the two pad tokens.
MAX_TOKENS = 510

# Phoneme-string characters that end a clause or a sentence (the G2P turns 、 into "," and 。 into ".").
_CLAUSE_END = ",.!?;:…—"
_PUNCT = set(_CLAUSE_END) | set(" \"()“”«»")
# Kokoro's predicted energy (one value per frame, see _frame_energy) is ~-9 in the pads' silence and
# rises above -4 about one frame before the first audible sample; it falls below it within two frames
# after the last one (measured on 10 sentences). Used only to keep the trailing silence in one chunk.
_SILENT_ENERGY = -4.0
_REQUIRED_FILES = ("config.json", "model.safetensors", "voices.safetensors", "vocab.json")
_FIX = "run `mlx-stream-tts convert kokoro` (or delete the folder and let Voice.load() rebuild the default)"


@dataclass
class Prosody:
    """What the predictor gives for one utterance; everything the decoder needs besides the style.

    Attributes:
        durations: ``(tokens,)`` frames per token, including the two pad tokens.
        asr: ``(frames, channels)`` text features aligned to frames.
        f0: ``(2 * frames,)`` pitch curve in Hz.
        n: ``(2 * frames,)`` energy curve.
    """

    durations: np.ndarray
    asr: np.ndarray
    f0: np.ndarray
    n: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.asr.shape[0])


class VoiceEngine(Protocol):
    """A Kokoro implementation split into its two halves (MLX here; onnxruntime in tests/benches).

    Both methods take and return numpy arrays, so that nothing lazy crosses a thread. ``style`` is
    the voice's full 256-value row (first half: decoder; second half: prosody predictor).
    """

    samples_per_frame: int

    def predict(self, ids: np.ndarray, style: np.ndarray, speed: float) -> Prosody: ...

    def decode(self, asr: np.ndarray, f0: np.ndarray, n: np.ndarray, style: np.ndarray) -> np.ndarray: ...


class MlxEngine:
    """Adapter from ``models.kokoro.Model`` (MLX) to :class:`VoiceEngine`.

    The model stays the pure reference unless the CPU accelerator applies (:meth:`accelerate`, done
    once at construction): then ``mlx_stream_tts.cpu.voice`` swaps some of its modules.

    Attributes:
        backend: what runs the model: ``"mlx"`` (the pure model) or ``"cpu"`` (the accelerator).
        precision: the decoder's convolutions: ``"float32"`` or ``"int8"`` (``"cpu"`` only).
    """

    def __init__(self, model, backend: str = "auto", precision: str = "auto"):
        import mlx.core as mx

        self._mx = mx
        self.model = model
        self.samples_per_frame = int(model.samples_per_frame)
        self.backend, self.precision = "mlx", "float32"
        self.accelerate(backend, precision)

    def accelerate(self, backend: str = "auto", precision: str = "auto") -> str:
        """Choose what runs the model (see ``Voice.load``); may be called again to switch.

        Returns:
            ``"mlx"``, ``"cpu-float32"`` or ``"cpu-int8"``.

        Raises:
            ValueError: unknown backend or precision.
            mlx_stream_tts.cpu.AcceleratorError: the choice asked for cannot run here (the message says why).
        """
        from .cpu import AcceleratorError, device_allows, resolve_backend

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        resolved = resolve_backend(backend)
        if device_allows(resolved) or self.backend != "mlx":  # apply, or undo an earlier application
            from .cpu.voice import accelerate

            try:
                chosen = accelerate(self.model, resolved, precision)
            except Exception:
                self.backend, self.precision = "mlx", "float32"  # accelerate() restored the pure model
                raise
        elif precision == "int8":
            from .cpu.voice import pure_int8_message

            raise AcceleratorError(pure_int8_message(resolved))
        else:
            logger.info("voice: the pure MLX model (backend %r, MLX on %s)", resolved, self._mx.default_device())
            chosen = "mlx"
        self.backend, _, precision_used = chosen.partition("-")
        self.precision = precision_used or "float32"
        return chosen

    def predict(self, ids: np.ndarray, style: np.ndarray, speed: float) -> Prosody:
        mx = self._mx
        tokens = np.concatenate([[0], ids, [0]]).astype(np.int32)
        out = self.model.predict(tokens, mx.array(style.astype(np.float32)), speed=speed)
        mx.eval(out.asr, out.f0, out.n)
        return Prosody(
            durations=np.asarray(out.durations, dtype=np.int64).reshape(-1),
            asr=np.array(out.asr[0].astype(mx.float32)),
            f0=np.array(out.f0[0].astype(mx.float32)),
            n=np.array(out.n[0].astype(mx.float32)),
        )

    def decode(self, asr: np.ndarray, f0: np.ndarray, n: np.ndarray, style: np.ndarray) -> np.ndarray:
        mx = self._mx
        dtype = self.model.bert_encoder.weight.dtype
        audio = self.model.decode(mx.array(asr[None]).astype(dtype), mx.array(f0[None]), mx.array(n[None]),
                                  mx.array(style.astype(np.float32)))
        return np.array(audio.astype(mx.float32)).reshape(-1)

    def window_decoder(self, pros: Prosody, style: np.ndarray, pooled: bool = True
                       ) -> Callable[[int, int, int, int], np.ndarray]:
        """Decoding of a sentence window by window: ``(lo, hi, a, b) -> audio of frames [lo, hi)``.

        ``[a, b)`` is the window's core. A window starting at frame 0 is decoded on its own, like
        one-shot synthesis of its frames (the first chunk waits for nothing else). For the later
        ones the frame-rate layers and the harmonic source run once over the whole sentence, as in
        one-shot synthesis (~5% of the work), and only the generator runs over the window's rows.
        With ``pooled`` the generator's instance norms in each window use the statistics of the
        earlier cores and the window together (see ``istftnet.NormStats``): closer to one-shot's.
        """
        from .models.istftnet import NormStats

        mx, model = self._mx, self.model
        dec = model.decoder
        dtype = model.bert_encoder.weight.dtype
        s = mx.array(style.astype(np.float32)).reshape(1, -1)[:, : model.args.style_dim].astype(dtype)
        state: dict = {"prior": None, "x": None, "har": None}

        def decode(lo: int, hi: int, a: int, b: int) -> np.ndarray:
            if lo == 0:
                f0 = mx.array(pros.f0[None, : 2 * hi])
                x = dec.features(mx.array(pros.asr[None, :hi]).astype(dtype), f0, mx.array(pros.n[None, : 2 * hi]), s)
                har = dec.generator.source(f0)
            else:
                if state["x"] is None:
                    f0 = mx.array(pros.f0[None])
                    state["x"] = dec.features(mx.array(pros.asr[None]).astype(dtype), f0, mx.array(pros.n[None]), s)
                    state["har"] = dec.generator.source(f0)
                rows = state["har"].shape[1] // pros.frames  # 120 source frames per frame, one more at the end
                x, har = state["x"][:, 2 * lo: 2 * hi], state["har"][:, rows * lo: rows * hi + 1]
            norm = NormStats(a - lo, b - lo, hi - lo, state["prior"] if pooled else None)
            audio = dec.generator.synthesize(x, s, har, norm)  # evaluates the norm's sums block by block
            state["prior"] = norm
            return np.array(audio[0].astype(mx.float32)).reshape(-1)  # the pure model's one host wait

        return decode


@dataclass(frozen=True)
class WindowPlan:
    """How ``"windowed"`` cuts a sentence; sizes in frames (1 frame = 600 samples = 25 ms).

    Every extra window costs quality (each one normalises over itself), so after a short first
    window each next window is as long as real time allows: its predicted decoding time (from the
    speed measured on the last window) must fit in ``margin`` of the audio already handed out and
    not yet played; and it is at least ``min_growth`` times the previous one.

    Attributes:
        first: the first window's core ends at most here, at the lowest energy within ``snap``
            frames before (sets the time to the first chunk).
        first_context: frames decoded after the first window's core and thrown away.
        context: frames decoded on each side of a later core and thrown away.
        snap: a cut may move this many frames to reach the lowest predicted energy.
        crossfade: samples over which two windows are crossfaded at a cut.
        margin: share of the buffered audio that the next window's decoding may take.
        min_growth: a window's core is at least this many times the previous one.
        max_growth: a window's core is at most this many times the previous one (0: no limit).
        split: later windows run only the generator, on frame-rate features and a harmonic source
            computed once for the whole sentence (engines with ``window_decoder``).
        pooled: with ``split``, each window's generator norms use the statistics of the earlier
            cores and the window together.
    """

    # bench/tts_streaming.py, 14 sentences, log-mel corr mean / min: 16 + 16 per window 0.977 / 0.953;
    # split + pooled, first cut in [16, 24], context 16 after it and 20 later: 0.983 / 0.971.
    first: int = 24
    first_context: int = 16
    context: int = 20
    snap: int = 8
    crossfade: int = 240
    margin: float = 0.7
    min_growth: float = 2.0
    max_growth: float = 0.0
    split: bool = True
    pooled: bool = True


@dataclass(frozen=True)
class TrimPlan:
    """How ``Voice(trim=True)`` cuts an utterance's leading and trailing silence.

    The cut is made on the audio (the first and the last sample at ``level`` or above), so it does not
    depend on how the sentence was cut into windows; an utterance with no sample that loud is left whole.

    Attributes:
        level: samples quieter than this are silence (about -46 dBFS; Kokoro's speech peaks at 0.2-0.4).
        lead: seconds kept before the first sound, faded in (at most ``fade`` samples of the fade).
        tail: seconds kept after the last sound, the last ``fade`` samples faded out.
        fade: samples of the fades at the new ends (no step, no click).
        clause_pause: silence put between two utterances of one ``synthesize`` call (``"clause"``
            mode, text over 510 phonemes) when the first one ends a clause.
        sentence_pause: the same when it ends a sentence (``.!?``).
    """

    level: float = 0.005
    lead: float = 0.02
    tail: float = 0.03
    fade: int = 240
    clause_pause: float = 0.15
    sentence_pause: float = 0.3


class Voice:
    """Kokoro-82M Japanese voice streaming float32 mono chunks at 24 kHz.

    Usable from a thread other than the one that loaded it; one thread at a time.

    Attributes:
        sample_rate: 24000.
        lang: ``"ja"``.
        voices: the names of the voice styles available.
        voice: the voice in use.
        mode: the default streaming method of :meth:`synthesize`.
        trim: cut each utterance's leading and trailing silence (see :class:`TrimPlan`).
    """

    sample_rate: int = SAMPLE_RATE
    lang: str = "ja"

    def __init__(self, engine: VoiceEngine, voices: dict[str, np.ndarray], vocab: dict[str, int],
                 voice: str = "jf_alpha", g2p: Callable[[str], str] | None = None,
                 mode: str = DEFAULT_MODE, plan: WindowPlan | None = None, trim: bool = True,
                 trim_plan: TrimPlan | None = None):
        """Builds a voice from its parts (most callers want :meth:`load`).

        Args:
            engine: the two halves of the model (:class:`VoiceEngine`).
            voices: name -> style table ``(510, 256)`` (row ``len(ids) - 1`` is used).
            vocab: phoneme character -> token id.
            voice: initial voice name.
            g2p: Japanese text -> phoneme string; the package's G2P when omitted.
            mode: default method of :meth:`synthesize` (one of :data:`MODES`).
            plan: window sizes for ``"windowed"``.
            trim: cut the silence Kokoro puts before and after each utterance down to a short lead-in
                and tail (False: the model's audio as it is, e.g. to compare with a reference).
            trim_plan: how much is kept.
        """
        if not voices:
            raise ValueError("no voice styles given")
        self.engine = engine
        self._styles = {k: np.asarray(v, dtype=np.float32).reshape(-1, 256) for k, v in voices.items()}
        self.vocab = dict(vocab)
        self._g2p = g2p
        self.mode = _check_mode(mode)
        self.plan = plan or WindowPlan()
        self.trim = bool(trim)
        self.trim_plan = trim_plan or TrimPlan()
        self._warm = False
        #: The clock that paces ``"windowed"`` (tests may replace it).
        self.clock: Callable[[], float] = time.perf_counter
        self.voice = ""
        self.set_voice(voice)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None, voice: str = "jf_alpha", mode: str = DEFAULT_MODE,
             precision: str = "auto", backend: str = "auto", trim: bool = True, self_check: bool = True) -> Voice:
        """Loads a converted Kokoro folder (the default one, built once from the shipped ONNX, if None).

        Args:
            path: folder with ``config.json``, ``model.safetensors``, ``voices.safetensors``, ``vocab.json``.
            voice: voice name (see :attr:`voices`).
            mode: default streaming method.
            precision: the decoder's convolutions on the CPU accelerator (see :data:`PRECISIONS`).
                ``"int8"`` quantizes them as onnxruntime does with the shipped file (2-5x faster on the
                CPU; log-mel correlation with float32 ~0.98-0.99).
            backend: what runs the model: ``"auto"`` (the CPU accelerator where MLX runs on the CPU, the
                pure MLX model on a GPU), ``"mlx"`` (the pure model) or ``"cpu"`` (the accelerator or an
                error saying why not). ``$MLX_STREAM_TTS_BACKEND=mlx`` forces the pure model.
                ``engine.backend`` / ``engine.precision`` say what was chosen (also logged at INFO).
            trim: cut each utterance's leading and trailing silence (see :class:`TrimPlan`).
            self_check: check that the weights can speak (:func:`self_check`: finite weights and styles,
                one short utterance's prosody and first frames); False for models with random weights.

        Raises:
            FileNotFoundError: the folder or one of its files is missing.
            RuntimeError: the folder cannot be read (corrupt), or its weights load but cannot speak (NaN,
                impossible durations); the message says how to rebuild it.
            ValueError: unknown voice (the message lists the voices), precision or backend.
            mlx_stream_tts.cpu.AcceleratorError: ``precision="int8"`` or ``backend="cpu"`` asked for
                where it cannot run (the message says why).
        """
        from .cpu import resolve_backend

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        resolve_backend(backend)  # a bad name fails before the load
        if path is None:
            from convert.kokoro import ensure_default_model

            path = ensure_default_model()  # logs a progress message when it has to build
        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"no converted Kokoro model at {path}: {_FIX}")
        missing = [f for f in _REQUIRED_FILES if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} lacks {', '.join(missing)}: {_FIX}")
        from .models.kokoro import load_model, load_voices, load_vocab

        try:
            model = load_model(path)
            voices = load_voices(path)
            vocab = load_vocab(path)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise RuntimeError(f"cannot load the Kokoro model in {path} ({e}); {_FIX}") from e
        # Weights before the accelerator may quantize them (a NaN would hide in an int8 copy).
        problem = non_finite_weights(model, voices) if self_check else None
        engine = MlxEngine(model, backend=backend, precision=precision)
        if self_check and problem is None:
            problem = self_check_engine(engine, voices, vocab)
        if problem is not None:
            raise RuntimeError(f"cannot load the Kokoro model in {path} (it loads, but {problem}); {_FIX}")
        # The G2P dictionaries take ~0.8 s to load: pay that here, not on the first sentence.
        return cls(engine, voices, vocab, voice=voice, mode=mode, g2p=_default_g2p(), trim=trim)

    @property
    def voices(self) -> list[str]:
        """Names of the voice styles, sorted."""
        return sorted(self._styles)

    def set_voice(self, name: str) -> None:
        """Switches the voice style.

        Raises:
            ValueError: unknown name (the message lists the voices).
        """
        if name not in self._styles:
            raise ValueError(f"unknown voice {name!r}; available: {', '.join(self.voices)}")
        self.voice = name

    # -- text -> ids ----------------------------------------------------------------------------

    def phonemize(self, text: str) -> str:
        """Japanese text -> Kokoro phoneme string."""
        if self._g2p is None:
            self._g2p = _default_g2p()
        return self._g2p(text)

    def tokenize(self, phonemes: str) -> list[int]:
        """Phoneme string -> ids; characters outside the vocabulary are dropped with a warning."""
        ids, unknown = [], []
        for ch in phonemes:
            i = self.vocab.get(ch)
            if i is None:
                unknown.append(ch)
            else:
                ids.append(i)
        if unknown:
            logger.warning("dropped phonemes outside Kokoro's vocabulary: %r", "".join(sorted(set(unknown))))
        return ids

    def segments(self, text: str) -> list[str]:
        """Text -> phoneme strings of at most 510 ids each, cut at clause ends when too long.

        Segments with nothing to speak (only punctuation, or emoji the G2P drops) are left out.
        """
        if not text or not text.strip():
            return []
        phonemes = self.phonemize(text).strip()
        return [s for s in _split_phonemes(phonemes, self.vocab, MAX_TOKENS) if _speakable(s, self.vocab)]

    # -- synthesis -------------------------------------------------------------------------------

    def synthesize(self, text: str, speed: float = 1.0, mode: str | None = None) -> Iterator[np.ndarray]:
        """Speaks ``text`` as float32 mono chunks in [-1, 1] at 24 kHz.

        Empty text or text with nothing speakable yields nothing. Text over 510 phonemes is cut at
        clause ends and spoken piece by piece. With :attr:`trim` the audio starts and ends within a few
        tens of ms of the speech, and utterances spoken one after another (``"clause"`` mode, over-long
        text) are joined with a short pause (:class:`TrimPlan`).

        Args:
            text: Japanese text.
            speed: speaking rate (2.0 is twice as fast); 0.25 to 4.
            mode: ``"windowed"``, ``"clause"`` or ``"oneshot"``; the voice's default when None.
        """
        mode = _check_mode(mode or self.mode)
        if not 0.25 <= speed <= 4.0:
            raise ValueError(f"speed must be within 0.25 and 4, got {speed}")
        pause = 0  # samples of silence owed before the next utterance (trimmed ones only)
        for seg in self.segments(text):
            if mode == "clause":
                pieces = [p for p in re.split(f"(?<=[{re.escape(_CLAUSE_END)}])\\s*", seg) if _speakable(p, self.vocab)]
            else:
                pieces = [seg]
            for piece in pieces:
                ids = np.array(self.tokenize(piece), dtype=np.int64)
                style = self._styles[self.voice][min(len(ids), len(self._styles[self.voice])) - 1]
                chunks = self._windowed(ids, style, speed) if mode == "windowed" else self._oneshot(ids, style, speed)
                if not self.trim:
                    yield from (chunk for chunk, _ in chunks)
                    continue
                spoke = False
                for chunk in self._trimmed(chunks):
                    if pause:  # joined to the chunk: as many chunks as without trimming
                        chunk, pause = np.concatenate([np.zeros(pause, np.float32), chunk]), 0
                    spoke = True
                    yield chunk
                if spoke:
                    tp = self.trim_plan
                    seconds = tp.sentence_pause if piece.rstrip()[-1:] in (".", "!", "?") else tp.clause_pause
                    pause = int(round(seconds * self.sample_rate))

    def warm(self) -> float:
        """Synthesizes one short sentence once, so that the first real one finds kernels built and caches
        primed (a no-op once done). Call it from the thread that will synthesize (the pipeline's
        ``Pipeline.warm()`` does).

        Returns:
            Seconds spent (0.0 when already warm).
        """
        if self._warm:
            return 0.0
        started = time.perf_counter()
        # Long enough for two windows: the later-window path (shared features, pooled norms) runs too.
        for _ in self.synthesize(_WARM_TEXT, mode=self.mode):
            pass
        self._warm = True
        spent = time.perf_counter() - started
        logger.debug("voice warmed in %.2f s", spent)
        return spent

    def _trimmed(self, chunks: Iterator[tuple[np.ndarray, bool]]) -> Iterator[np.ndarray]:
        """One utterance's ``(chunk, last)`` pairs without its leading and trailing silence (TrimPlan).

        Leading chunks without a sound are held (the lead-in may reach back into them); the trailing
        silence is cut from the last chunk only, which ``_windowed`` makes hold all of it.
        """
        tp = self.trim_plan
        lead, tail = int(tp.lead * self.sample_rate), int(tp.tail * self.sample_rate)
        held: list[np.ndarray] | None = []  # None once the first sound has passed
        for chunk, last in chunks:
            if held is not None:
                loud = np.flatnonzero(np.abs(chunk) >= tp.level)
                if loud.size == 0:
                    held.append(chunk)
                    if last:  # nothing reaches the level: it does not suit this voice; keep the audio whole
                        yield _finish(np.concatenate(held))
                    continue
                before = np.concatenate(held + [chunk[: loud[0]]])
                before = before[max(0, before.size - lead):]
                chunk = _fade(np.concatenate([before, chunk[loud[0]:]]), min(tp.fade, before.size), 0)
                held = None
            if last:
                loud = np.flatnonzero(np.abs(chunk) >= tp.level)
                end = int(loud[-1]) + 1 + tail if loud.size else tail
                chunk = _fade(chunk[:end], 0, min(tp.fade, tail))
            if chunk.size:
                yield _finish(chunk)

    def _oneshot(self, ids: np.ndarray, style: np.ndarray, speed: float) -> Iterator[tuple[np.ndarray, bool]]:
        """``(chunk, last)`` pairs (one here) of one utterance."""
        pros = self.engine.predict(ids, style, speed)
        audio = self.engine.decode(pros.asr, pros.f0, pros.n, style)
        yield _finish(_fade(audio, self.plan.crossfade, self.plan.crossfade)), True

    def _windowed(self, ids: np.ndarray, style: np.ndarray, speed: float) -> Iterator[tuple[np.ndarray, bool]]:
        """``(chunk, last)`` pairs of one utterance, window by window."""
        plan, spf, clock = self.plan, self.engine.samples_per_frame, self.clock
        pros = self.engine.predict(ids, style, speed)
        frames, energy = pros.frames, _frame_energy(pros.n, pros.frames)
        # Trimming cuts the trailing silence from the last chunk: no window may start inside it.
        loud = np.flatnonzero(energy > _SILENT_ENERGY) if self.trim else np.zeros(0, np.int64)
        speech_end = int(loud[-1]) + 1 if loud.size else frames
        if plan.split and hasattr(self.engine, "window_decoder"):
            decode = self.engine.window_decoder(pros, style, pooled=plan.pooled)
        else:
            def decode(lo: int, hi: int, a: int, b: int) -> np.ndarray:
                return self.engine.decode(pros.asr[lo:hi], pros.f0[2 * lo: 2 * hi], pros.n[2 * lo: 2 * hi], style)
        half = plan.crossfade // 2
        ramp = np.sin(0.5 * np.pi * (np.arange(plan.crossfade) + 0.5) / plan.crossfade) ** 2
        held: np.ndarray | None = None  # the previous window's audio over the coming crossfade
        a, core, k = 0, plan.first, 0
        emitted, first_out, per_frame = 0.0, None, None  # audio seconds out; clock at first chunk
        while a < frames:
            if k > 0 and per_frame:
                buffered = emitted - (clock() - first_out)
                budget = int(buffered * plan.margin / per_frame) - 2 * plan.context
                limit = plan.max_growth * core if plan.max_growth else frames
                # At least double: fewer joins, and a decoder behind real time amortises its context.
                core = int(min(max(budget, plan.min_growth * core), limit))
            b = next_cut(energy, a, a + core, frames, plan)
            if b >= speech_end:
                b = frames
            core = b - a
            lo, hi = max(0, a - plan.context), min(frames, b + (plan.first_context if k == 0 else plan.context))
            started = clock()
            audio = decode(lo, hi, a, b)
            elapsed = clock() - started
            per_frame = elapsed / (hi - lo)
            start = (a - lo) * spf - (half if k > 0 else 0)
            end = (b - lo) * spf + (half if b < frames else 0)
            chunk = audio[start:end].astype(np.float32, copy=True)
            if k == 0:
                chunk = _fade(chunk, plan.crossfade, 0)
            if held is not None:
                m = min(len(held), len(chunk))
                chunk[:m] = held[:m] * (1.0 - ramp[:m]) + chunk[:m] * ramp[:m]
            if b < frames:
                held, chunk = chunk[-plan.crossfade:].copy(), chunk[:-plan.crossfade]
            else:
                chunk = _fade(chunk, 0, plan.crossfade)
            emitted += len(chunk) / self.sample_rate
            yield _finish(chunk), b >= frames
            if first_out is None:
                first_out = clock()
            a, k = b, k + 1


#: What :meth:`Voice.warm` says: two clauses, ~150 frames (more than one window).
_WARM_TEXT = "テストを実行して、結果を確認します。"

#: The utterance of the load-time self-check ("konnichiwa."): ten phonemes, the real model gives it 3-23
#: frames each (mean 5.6 between the pads).
_CHECK_PHONEMES = "koɲɲiʨiwa."
#: Mean frames per phoneme (pads left out) a model that can speak predicts for it, at speed 1: broken
#: duration weights give every token 1 frame (sigmoids at 0) or the maximum (sigmoids at 1: 50).
_CHECK_DURATION = (1.5, 25.0)
_CHECK_FRAMES = 2  # frames decoded: the decoder's output must be finite too


def non_finite_weights(model, voices: dict[str, np.ndarray]) -> str | None:
    """What holds NaN or infinite values among the model's float parameters and the voice styles, or None.

    Checked tensor by tensor in numpy (the weights are in host memory after loading): ~15 ms for Kokoro's
    82M parameters on 2 CPU cores.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    for name, value in tree_flatten(model.parameters()):
        if mx.issubdtype(value.dtype, mx.floating) and not np.isfinite(np.asarray(value.astype(mx.float32))).all():
            return f"its tensor {name!r} holds NaN or infinite values"
    for name, table in voices.items():
        if not np.isfinite(table).all():
            return f"its voice {name!r} holds NaN or infinite values"
    return None


def self_check_engine(engine: VoiceEngine, voices: dict[str, np.ndarray], vocab: dict[str, int]) -> str | None:
    """Why the engine cannot speak, or None: the prosody of one short utterance must be finite with
    durations a voice can have (:data:`_CHECK_DURATION`), and its first frames must decode to finite
    audio. Runs through the engine as loaded (the accelerator included). ~0.1 s on 2 CPU cores.
    """
    ids = np.array([vocab[c] for c in _CHECK_PHONEMES if c in vocab], dtype=np.int64)
    if ids.size < 4:
        return f"its vocabulary lacks the phonemes of {_CHECK_PHONEMES!r}"
    table = next(iter(voices.values()))
    style = np.asarray(table, dtype=np.float32).reshape(-1, 256)[min(ids.size, len(table)) - 1]
    try:
        with np.errstate(invalid="ignore"):  # NaN durations cast to int: reported below, not as a warning
            pros = engine.predict(ids, style, 1.0)
    except Exception as err:  # NaN durations make np.repeat raise; anything else is as bad
        return f"it cannot predict the prosody of a short utterance ({err!r})"
    inner = np.asarray(pros.durations[1:-1], dtype=np.float64)
    if not all(np.isfinite(a).all() for a in (pros.asr, pros.f0, pros.n)):
        return "it predicts NaN or infinite prosody"
    low, high = _CHECK_DURATION
    if inner.size == 0 or not low <= inner.mean() <= high:
        return (f"it predicts impossible durations ({inner.mean() if inner.size else 0:.1f} frames per phoneme "
                f"for {_CHECK_PHONEMES!r}; a voice gives {low:g}-{high:g})")
    k = min(_CHECK_FRAMES, pros.frames)
    try:
        audio = engine.decode(pros.asr[:k], pros.f0[: 2 * k], pros.n[: 2 * k], style)
    except Exception as err:
        return f"its decoder fails on a short utterance ({err!r})"
    if audio.size == 0 or not np.isfinite(audio).all():
        return "its decoder produces NaN or infinite audio"
    return None


def _frame_energy(n: np.ndarray, frames: int) -> np.ndarray:
    """The predicted energy curve (two values per frame) as one value per frame."""
    e = np.asarray(n, dtype=np.float64).reshape(-1)
    return e[: 2 * frames].reshape(-1, 2).mean(1) if e.size >= 2 * frames else np.zeros(frames)


def next_cut(energy: np.ndarray, start: int, target: int, frames: int, plan: WindowPlan) -> int:
    """Where the window starting at ``start`` ends: near ``target``, at the lowest predicted energy.

    Returns ``frames`` when what would remain is shorter than two contexts (its window would
    decode little more than its contexts; one window is then one-shot exact). Cuts fall within
    ``plan.snap`` frames of the target (the first one never after it: it sets the time to the first
    chunk) and keep ``plan.context`` frames from both ends, so that joins tend to land in pauses
    and closures.
    """
    if frames - target < max(plan.first // 2, 2 * plan.context):
        return frames
    if start == 0:
        lo, hi = max(1, target - plan.snap), min(frames - plan.context, target)
    else:
        lo = max(start + plan.context, target - plan.snap)
        hi = min(frames - plan.context, target + plan.snap)
    if hi < lo:
        return max(start + 1, min(target, frames))
    return lo + int(np.argmin(energy[lo: hi + 1]))


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def _speakable(phonemes: str, vocab: dict[str, int]) -> bool:
    return any(ch in vocab and ch not in _PUNCT for ch in phonemes)


def _split_phonemes(phonemes: str, vocab: dict[str, int], limit: int, at: str = _CLAUSE_END) -> list[str]:
    """Greedily packs clauses (ending at a character of ``at``) into pieces of at most ``limit`` ids.

    A clause longer than ``limit`` is cut at spaces (word ends), and as a last resort anywhere.
    """
    def n_ids(s: str) -> int:
        return sum(ch in vocab for ch in s)

    sep = " "
    sep_ids = n_ids(sep)

    def pack(units: list[str]) -> list[tuple[str, int]]:
        # Counts are carried along, not recounted: linear in the text (an unpunctuated run is long).
        out: list[tuple[str, int]] = []
        for u in units:
            n = n_ids(u)
            if out and out[-1][1] + sep_ids + n <= limit:
                out[-1] = (out[-1][0] + sep + u, out[-1][1] + sep_ids + n)
            else:
                out.append((u, n))
        return out

    pieces: list[str] = []
    clauses = [c.strip() for c in re.split(f"(?<=[{re.escape(at)}])\\s*", phonemes) if c.strip()]
    for group, n in pack(clauses):
        if n <= limit:
            pieces.append(group)
            continue
        # One clause too long: pack its words; a word too long is cut anywhere.
        words: list[str] = []
        for w in group.split():
            start, count = 0, 0
            for i, ch in enumerate(w):
                if ch in vocab:
                    if count == limit:
                        words.append(w[start:i])
                        start, count = i, 0
                    count += 1
            words.append(w[start:])
        pieces.extend(u for u, _ in pack(words))
    return [p for p in pieces if p]


def _fade(audio: np.ndarray, fade_in: int, fade_out: int) -> np.ndarray:
    """Raised-cosine fades at the ends, so that a chunk never starts or stops on a step."""
    x = np.asarray(audio, dtype=np.float32).copy()
    for length, sl in ((min(fade_in, x.size), slice(None)), (min(fade_out, x.size), slice(None, None, -1))):
        if length:
            ramp = np.sin(0.5 * np.pi * (np.arange(length) + 0.5) / length) ** 2
            x[sl][:length] *= ramp.astype(np.float32)
    return x


def _finish(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(audio, nan=0.0), -1.0, 1.0).astype(np.float32, copy=False)


def _default_g2p() -> Callable[[str], str]:
    from .g2p_ja import JapaneseG2P

    started = time.perf_counter()
    g2p = JapaneseG2P()
    logger.debug("G2P ready in %.2f s", time.perf_counter() - started)
    return g2p
