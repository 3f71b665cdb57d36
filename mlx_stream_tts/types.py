"""The small contracts between the pipeline's stages.

Stages are duck-typed: anything with these methods plugs into :class:`mlx_stream_tts.Pipeline`
(the real ``Translator`` and ``Voice``, or test doubles). Data crosses threads only as Python values
and numpy arrays: MLX arrays are bound to the thread that built their graph, so each stage evaluates
its results before returning them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

#: Kokoro's output rate; every voice and sink in this package works at it unless told otherwise.
SAMPLE_RATE = 24_000


@runtime_checkable
class TranslatorLike(Protocol):
    """Translates a batch of sentences; called only from the pipeline's translation thread."""

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]: ...


@runtime_checkable
class VoiceLike(Protocol):
    """Speaks one sentence as float32 mono chunks in [-1, 1] at ``sample_rate``.

    ``lang`` is the language the voice reads (``"ja"`` for the Kokoro Japanese voices).
    Called only from the pipeline's voice thread.
    """

    sample_rate: int
    lang: str

    def synthesize(self, text: str, speed: float = 1.0) -> Iterator[np.ndarray]: ...


@runtime_checkable
class SinkLike(Protocol):
    """Consumes audio. ``write`` may block for back-pressure but never for longer than playback.

    ``open`` is called once before the first ``write``; ``close`` plays/writes out what is pending
    and releases the device or file; ``abort`` drops what is pending and stops within 0.2 s.
    """

    def open(self, sample_rate: int) -> None: ...

    def write(self, audio: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...
