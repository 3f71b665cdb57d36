"""Test doubles for the pipeline's stages (translator, voice, sink).

FakeVoice encodes the sentence id (the first number in the text) and the chunk index in the sample
values, so a sink can check that audio arrives complete and in order: each chunk is filled with
``(id * 16 + chunk) / 2**24``, exact in float32 for ids below 2**20.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import numpy as np

_NUMBER = re.compile(r"-?\d+")
_SCALE = float(1 << 24)


def sentence_id(text: str) -> int:
    """The first integer in ``text``; -1 when there is none (e.g. a code cue)."""
    m = _NUMBER.search(text)
    return int(m.group()) if m else -1


def encode(sid: int, chunk: int) -> float:
    return (sid * 16 + chunk) / _SCALE


def decode(audio: np.ndarray) -> tuple[int, int]:
    """(sentence id, chunk index) of a FakeVoice chunk; raises if the chunk is not uniform."""
    values = np.unique(audio)
    if values.size != 1:
        raise AssertionError(f"chunk mixes values {values[:4]}")
    code = int(round(float(values[0]) * _SCALE))
    return code // 16, code % 16


class FakeTranslator:
    """Uppercases; optionally slow, failing on texts containing ``fail_on``, or computing in MLX.

    Records each call's batch and the thread it ran on.
    """

    def __init__(self, delay: float = 0.0, fail_on: str | None = None, use_mlx: bool = False, record: bool = True) -> None:
        self.delay = delay  # seconds per sentence
        self.record = record  # off for the memory test
        self.fail_on = fail_on
        self.use_mlx = use_mlx
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        if self.record:
            self.batches.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay * len(texts))
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise RuntimeError(f"cannot translate {self.fail_on!r}")
        if self.use_mlx:
            import mlx.core as mx

            # A real graph built and evaluated here, on the translation thread.
            lengths = mx.array([len(t) for t in texts]) * 2 - mx.array([len(t) for t in texts])
            mx.eval(lengths)
            assert np.array(lengths).tolist() == [len(t) for t in texts]
        return [t.upper() for t in texts]


class FakeVoice:
    """Yields ``chunks`` chunks of ``chunk_len`` samples per sentence, id-encoded (see module doc)."""

    def __init__(
        self,
        chunks: int = 2,
        chunk_len: int = 64,
        delay: float = 0.0,
        fail_on: str | None = None,
        fail_after: int = 0,
        use_mlx: bool = False,
        lang: str = "ja",
        sample_rate: int = 24_000,
        record: bool = True,
    ) -> None:
        if not 1 <= chunks <= 16:
            raise ValueError("1..16 chunks")
        self.chunks = chunks
        self.chunk_len = chunk_len
        self.delay = delay  # seconds per sentence, spread over its chunks
        self.fail_on = fail_on
        self.fail_after = fail_after  # chunks yielded before failing
        self.use_mlx = use_mlx
        self.lang = lang
        self.sample_rate = sample_rate
        self.record = record  # off for the memory test
        self.texts: list[str] = []
        self.threads: set[str] = set()

    def synthesize(self, text: str, speed: float = 1.0) -> Iterator[np.ndarray]:
        if self.record:
            self.texts.append(text)
        self.threads.add(threading.current_thread().name)
        sid = sentence_id(text)
        for j in range(self.chunks):
            if self.fail_on is not None and self.fail_on in text and j == self.fail_after:
                raise RuntimeError(f"cannot voice {text!r}")
            if self.delay:
                time.sleep(self.delay / self.chunks)
            if self.use_mlx:
                import mlx.core as mx

                chunk = mx.zeros((self.chunk_len,)) + mx.array(encode(sid, j), dtype=mx.float32)
                mx.eval(chunk)
                yield np.array(chunk)
            else:
                yield np.full(self.chunk_len, encode(sid, j), dtype=np.float32)


class RecordingSink:
    """Records what it is given (decoded to (id, chunk) pairs) with the time of each write.

    Args:
        delay: seconds each write takes.
        fail_on_id: ``write`` raises for chunks of this sentence id.
        block: ``write`` waits until ``abort()`` (which drops that chunk) or ``release()`` (a device
            whose buffer is full).
        keep: keep the decoded pairs (off for the memory test: then only counts and order are kept).
    """

    def __init__(self, delay: float = 0.0, fail_on_id: int | None = None, block: bool = False, keep: bool = True) -> None:
        self.delay = delay
        self.fail_on_id = fail_on_id
        self.keep = keep
        self.block = block
        self.sample_rate: int | None = None
        self.opens = 0
        self.aborts = 0
        self.closed = False
        self.received: list[tuple[int, int]] = []
        self.times: list[float] = []
        self.samples = 0
        self.writes = 0
        self.out_of_order = 0
        self._last: tuple[int, int] | None = None
        self.threads: set[str] = set()
        self._unblock = threading.Event()
        self.writing = threading.Event()  # set while a write is in progress

    def open(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.opens += 1

    def write(self, audio: np.ndarray) -> None:
        self.threads.add(threading.current_thread().name)
        if self.closed:
            raise RuntimeError("write after close")
        pair = decode(audio)
        if self.fail_on_id is not None and pair[0] == self.fail_on_id:
            raise OSError(f"sink refuses sentence {pair[0]}")
        aborts = self.aborts
        self.writing.set()
        try:
            if self.block:
                self._unblock.wait()
                self._unblock.clear()
            if self.delay:
                time.sleep(self.delay)
        finally:
            self.writing.clear()
        if self.aborts != aborts:
            return  # aborted while waiting: a real sink drops this audio too
        if self._last is not None and pair <= self._last:
            self.out_of_order += 1
        self._last = pair
        self.samples += audio.size
        self.writes += 1
        if self.keep:
            self.received.append(pair)
            self.times.append(time.perf_counter())

    def release(self) -> None:
        """Let one blocked write through."""
        self._unblock.set()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborts += 1
        self._unblock.set()

    def ids(self) -> list[int]:
        """Sentence ids in the order their first chunk arrived."""
        out: list[int] = []
        for sid, _ in self.received:
            if not out or out[-1] != sid:
                out.append(sid)
        return out
