"""Audio sinks: the sound card (sounddevice), a WAV file, raw PCM on stdout, or nowhere.

Every sink takes float32 mono chunks in [-1, 1] (see :class:`mlx_stream_tts.types.SinkLike`), clips
them and converts to 16-bit PCM. ``abort`` drops what is pending but leaves the sink usable: the
pipeline keeps writing to it after a ``cancel()``. Only ``close`` releases the device or file.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import secrets
import struct
import sys
import threading
import time
from typing import BinaryIO

import numpy as np

from .types import SAMPLE_RATE, SinkLike

logger = logging.getLogger(__name__)

_NO_DEVICE_HINT = (
    "write to a file with --out FILE.wav, or pipe raw PCM with --pcm "
    "(e.g. `... --pcm | aplay -f S16_LE -r 24000 -c 1`)"
)


class AudioDeviceError(RuntimeError):
    """No usable audio output (PortAudio missing, no device, or the device failed)."""


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Float mono audio in [-1, 1] -> int16 PCM, clipped; NaN becomes silence.

    Args:
        audio: 1-D float array (a ``(n, 1)`` or ``(1, n)`` array is accepted as mono).

    Returns:
        A new 1-D ``int16`` array of the same length.

    Raises:
        ValueError: when the array is not mono.
    """
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {a.shape}")
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.rint(np.clip(a, -1.0, 1.0) * 32767.0).astype(np.int16)


class LinearResampler:
    """Streaming linear-interpolation resampler (mono), continuous across chunks.

    Used only when the output device refuses the voice's rate. Linear interpolation is crude
    (images above the source Nyquist are only mildly attenuated) but speech at 24 kHz going up to
    44.1/48 kHz loses nothing audible, and it is exact at chunk joins.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._step = src_rate / dst_rate
        self._pos = 0.0  # next output position, in input samples from the start of the next chunk
        self._last = 0.0  # last input sample of the previous chunk (index -1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        n = x.size
        if n == 0:
            return x
        # Positions are counted from the previous chunk's last sample, so joins interpolate across.
        count = int(np.floor((n - 1 - self._pos) / self._step)) + 1 if self._pos <= n - 1 else 0
        pos = self._pos + self._step * np.arange(count, dtype=np.float64)
        ext = np.concatenate([[self._last], x]).astype(np.float64)
        out = np.interp(pos + 1.0, np.arange(n + 1, dtype=np.float64), ext).astype(np.float32)
        self._pos = self._pos + self._step * count - n
        self._last = float(x[-1])
        return out


class NullSink:
    """Discards audio; counts what it was given (timing runs, ``--no-play``)."""

    def __init__(self) -> None:
        self.sample_rate: int | None = None
        self.samples = 0
        self.writes = 0

    def open(self, sample_rate: int) -> None:
        """Remember the rate."""
        self.sample_rate = sample_rate

    def write(self, audio: np.ndarray) -> None:
        """Count the samples and drop them."""
        self.samples += int(np.asarray(audio).size)
        self.writes += 1

    def close(self) -> None:
        """Nothing to release."""

    def abort(self) -> None:
        """Nothing is pending."""


class WavSink:
    """16-bit PCM mono WAV, written to a temporary file beside the target and renamed over it by ``close``.

    The target therefore either does not exist or holds a complete, valid WAV. The temporary file
    (``.NAME.XXXXXXXX.part``) is valid after every write too (its header is rewritten each time), so
    a process killed mid-stream leaves audio that can be recovered by hand.

    When a write fails (a full disk), the file is cut back to the audio before that chunk,
    :attr:`error` keeps the error and every later ``write`` raises it again: the audio cannot go
    anywhere. :meth:`checkpoint` marks where a whole unit of audio (a sentence) ends: a failed or
    cut-short file is then cut back to the last mark. ``close`` keeps what is complete, or removes the
    temporary file when nothing is; :attr:`kept_seconds` says which.

    The temporary file is created at construction so that a bad path fails before any model loads.

    Raises:
        OSError: when the temporary file cannot be created (no such folder, no permission, a folder
            at the target's path).
    """

    _HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
    _LIMIT = 0xFFFFFFFF - 36  # the most data bytes a WAV header can state

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", self.path)
        self.part_path, self._file = self._create_part()
        self.sample_rate: int | None = None
        self.error: OSError | None = None  # the first write or finishing error
        self.kept_seconds: float | None = None  # after close: seconds of audio at ``path``; None: no file
        self.checkpoints = 0  # marks that closed some audio: the whole units in the file
        self._data_bytes = 0  # audio bytes in the file, all of them written and stated in its header
        self._mark: int | None = None  # audio bytes at the last checkpoint() (None: never called)
        self._lock = threading.Lock()
        self._warned_size = False

    def _create_part(self) -> tuple[str, BinaryIO]:
        """The temporary file beside the target, mode 0666 less the umask (as ``open`` would make it)."""
        folder, name = os.path.split(os.path.abspath(self.path))
        for _ in range(100):
            part = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part")
            try:
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            except OSError as err:  # named after the target: the temporary name means nothing to the user
                raise OSError(err.errno, err.strerror, self.path) from None
            return part, io.FileIO(fd, "wb")  # unbuffered: a failed write leaves nothing pending in Python
        raise FileExistsError(errno.EEXIST, "cannot create a temporary file beside it", self.path)

    def open(self, sample_rate: int) -> None:
        """Take the sample rate (nothing is written yet: the header goes out with the first audio).

        Raises:
            RuntimeError: when the sink is closed or already opened at another rate.
        """
        with self._lock:
            if self._file is None:
                raise RuntimeError(f"WavSink({self.path!r}) is closed")
            if self.sample_rate is not None:
                if sample_rate != self.sample_rate:
                    raise RuntimeError(f"WavSink already opened at {self.sample_rate} Hz, not {sample_rate} Hz")
                return
            self.sample_rate = int(sample_rate)

    def write(self, audio: np.ndarray) -> None:
        """Append a chunk (clipped to [-1, 1]) and update the header.

        Raises:
            RuntimeError: when called before ``open`` or after ``close``.
            OSError: when the file cannot take the chunk (a full disk): the file is cut back to the
                audio before it, and every later write raises the same error.
        """
        pcm = to_int16(audio).astype("<i2", copy=False)
        with self._lock:
            if self._file is None or self.sample_rate is None:
                raise RuntimeError("WavSink.write() needs open() first (and not after close())")
            if self.error is not None:
                raise self.error.with_traceback(None)  # the same error (the caller may know it), not a growing traceback
            if pcm.size == 0:
                return
            data = pcm.tobytes()
            try:
                if self._data_bytes == 0:  # the first audio: header and data in one go
                    _write_at(self._file, 0, self._header(len(data)) + data)
                else:
                    _write_at(self._file, 44 + self._data_bytes, data)
                    _write_at(self._file, 0, self._header(self._data_bytes + len(data)))
            except OSError as err:
                self.error = err
                self._cut_back()
                raise
            self._data_bytes += len(data)

    def checkpoint(self) -> None:
        """Mark the audio written so far as whole (a sentence ends here): a file that fails later, or
        that ``close(complete_only=True)`` cuts short, is cut back to the last mark."""
        with self._lock:
            if self.error is None and self._file is not None:
                if self._data_bytes > (self._mark or 0):
                    self.checkpoints += 1
                self._mark = self._data_bytes

    def close(self, complete_only: bool = False) -> None:
        """Finish the file and rename it to ``path``. Idempotent.

        An unopened sink leaves an empty WAV at 24 kHz. After a write error, or with ``complete_only``
        (the run was cut short), only the audio up to the last checkpoint is kept, and no file at all
        when that is nothing.

        Raises:
            OSError: when finishing or renaming the file fails; no file is left then, at ``path`` or
                beside it.
        """
        with self._lock:
            file, self._file = self._file, None
            if file is None:
                return
            cut_short = self.error is not None or complete_only
            keep = self._data_bytes
            if cut_short and self._mark is not None:
                keep = min(keep, self._mark)
            if cut_short and keep == 0:
                self._discard(file)
                return
            if self.sample_rate is None:
                self.sample_rate = SAMPLE_RATE
            try:
                if keep != self._data_bytes:
                    file.truncate(44 + keep)
                    self._data_bytes = keep
                _write_at(file, 0, self._header(keep))
                os.fsync(file.fileno())  # the audio is on disk before the name points at it
                file.close()
                os.replace(self.part_path, self.path)
            except OSError as err:
                self._discard(file)
                self.error = self.error or err
                raise
            self.kept_seconds = keep / 2 / self.sample_rate

    def abort(self) -> None:
        """Nothing is pending: what was written stays in the file."""

    # -- internals (self._lock held) ---------------------------------------------------------------

    def _header(self, data: int) -> bytes:
        assert self.sample_rate is not None
        if data > self._LIMIT:
            if not self._warned_size:
                logger.warning("%s: more than 4 GiB of audio; the WAV header cannot say so", self.path)
                self._warned_size = True
            data = self._LIMIT
        return self._HEADER.pack(
            b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1,
            self.sample_rate, self.sample_rate * 2, 2, 16, b"data", data,
        )

    def _cut_back(self) -> None:
        """After a failed write: back to the audio written before it, with a header that says so; an
        empty file (nothing kept) when even that fails, since a file that is not valid is not kept."""
        assert self._file is not None
        try:
            self._file.truncate(44 + self._data_bytes if self._data_bytes else 0)
            if self._data_bytes:
                _write_at(self._file, 0, self._header(self._data_bytes))
        except OSError:
            self._data_bytes, self._mark, self.checkpoints = 0, 0, 0
            try:
                self._file.truncate(0)
            except OSError:
                pass

    def _discard(self, file: BinaryIO) -> None:
        for step in (file.close, lambda: os.unlink(self.part_path)):
            try:
                step()
            except OSError:
                pass


def _write_at(file: BinaryIO, offset: int, data: bytes) -> None:
    """Write all of ``data`` at ``offset`` (a raw file may take part of it: the last bytes of a full disk)."""
    file.seek(offset)
    view = memoryview(data)
    while view:
        n = file.write(view)
        if not n:
            raise OSError(errno.EIO, "the file took no more bytes")
        view = view[n:]


def quiet_stdout() -> None:
    """Point stdout's file descriptor at /dev/null once its reader has gone (``| head``): Python flushes
    stdout at exit and would print a BrokenPipeError there (what the Python docs recommend for
    SIGPIPE-like handling)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class PcmSink:
    """Raw 16-bit little-endian mono PCM to a byte stream (default: stdout).

    For ``| aplay -f S16_LE -r 24000 -c 1`` or ``| ffplay -f s16le -ar 24000 -ac 1 -``. When the
    reader goes away (BrokenPipeError) the sink logs it once and discards the rest.
    """

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream
        self.sample_rate: int | None = None
        self.broken = False
        self.samples = 0

    def _out(self) -> BinaryIO:
        return self._stream if self._stream is not None else sys.stdout.buffer

    def open(self, sample_rate: int) -> None:
        """Remember the rate (the reader must be told it; it is not in the stream)."""
        self.sample_rate = int(sample_rate)
        if self.sample_rate != SAMPLE_RATE:
            logger.warning("raw PCM at %d Hz: tell the player (e.g. aplay -r %d)", self.sample_rate, self.sample_rate)

    def write(self, audio: np.ndarray) -> None:
        """Write the chunk and flush it, so that a player downstream starts at once."""
        pcm = to_int16(audio).astype("<i2", copy=False)
        if self.broken or pcm.size == 0:
            return
        out = self._out()
        try:
            out.write(pcm.tobytes())
            out.flush()
        except BrokenPipeError:
            self._on_broken_pipe()
            return
        self.samples += pcm.size

    def _on_broken_pipe(self) -> None:
        self.broken = True
        logger.info("PCM output closed by the reader; discarding the rest of the audio")
        if self._stream is None:
            quiet_stdout()

    def close(self) -> None:
        """Flush (the stream itself is the caller's and stays open)."""
        if self.broken:
            return
        try:
            self._out().flush()
        except BrokenPipeError:
            self._on_broken_pipe()
        except ValueError:  # the caller already closed the stream
            pass

    def abort(self) -> None:
        """Nothing is pending here (bytes already in the pipe belong to the reader)."""


def _import_sounddevice():
    try:
        import sounddevice as sd
    except OSError as err:  # the wheel's loader raises OSError when libportaudio is absent
        raise AudioDeviceError(
            f"cannot play audio: PortAudio is not installed ({err}); on Debian/Ubuntu "
            f"`apt-get install libportaudio2`, or {_NO_DEVICE_HINT}"
        ) from err
    except ImportError as err:
        raise AudioDeviceError(f"cannot play audio: the sounddevice package is missing; {_NO_DEVICE_HINT}") from err
    return sd


def _raised_cosine(n: int, rising: bool) -> np.ndarray:
    """Gains for a click-free fade: n values strictly inside (0, 1), ending at 0 (falling)."""
    k = np.arange(1, n + 1, dtype=np.float32) / (n + 1)
    up = 0.5 - 0.5 * np.cos(np.pi * k)
    return up if rising else up[::-1]


class SoundDeviceSink:
    """Plays through PortAudio (sounddevice) from a bounded buffer, gaplessly.

    The PortAudio callback never waits: it takes what is buffered and fills silence when there is
    not enough. ``write`` blocks while the buffer is full (back-pressure). When the buffer is about
    to run dry mid-stream, the last ``fade_ms`` of what is left are faded out, and the next audio
    after a gap is faded in, so underruns do not click; the end of the stream (``close``) is played
    as it is. If the device refuses the source rate, the stream opens at the device's default rate
    and the audio is resampled.

    Args:
        device: PortAudio device index or name (default: the system's default output).
        blocksize: frames per callback; 0 lets PortAudio choose (lowest latency, variable size).
        buffer_seconds: how much audio may wait in the buffer before ``write`` blocks.
        fade_ms: length of the underrun fades (0 disables them).
        device_rate: force this device rate and resample to it (default: the source rate if the
            device takes it).
        latency: PortAudio's suggested latency ("low", "high" or seconds). "high" by default: a
            few tens of ms more delay buy headroom against underruns while the models compute.

    Raises:
        AudioDeviceError: when PortAudio is missing or there is no such output device.
    """

    def __init__(
        self,
        device: int | str | None = None,
        blocksize: int = 0,
        buffer_seconds: float = 2.0,
        fade_ms: float = 5.0,
        device_rate: int | None = None,
        latency: str | float = "high",
    ) -> None:
        if buffer_seconds <= 0:
            raise ValueError(f"buffer_seconds must be positive, got {buffer_seconds}")
        if fade_ms < 0:
            raise ValueError(f"fade_ms must be >= 0, got {fade_ms}")
        self._sd = _import_sounddevice()
        try:
            self._device_info = self._sd.query_devices(device, kind="output")
        except (self._sd.PortAudioError, ValueError) as err:
            raise AudioDeviceError(f"no audio output device ({err}); {_NO_DEVICE_HINT}") from err
        self.device = device
        self.blocksize = int(blocksize)
        self.buffer_seconds = float(buffer_seconds)
        self.fade_ms = float(fade_ms)
        self.latency = latency
        self._forced_rate = device_rate
        self.sample_rate: int | None = None  # the source rate given to open()
        self.device_rate: int | None = None
        self._resampler: LinearResampler | None = None
        self._stream = None
        self._stream_lock = threading.Lock()  # start/stop/close of the PortAudio stream (never in the callback)
        self._running = False
        # The ring buffer, guarded by _lock; _cond wakes writers when the callback frees space.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._buf = np.zeros(0, dtype=np.int16)
        self._head = 0
        self._count = 0
        self._fade = 0
        self._dry = True  # nothing is playing: the next audio fades in
        self._tail_faded = False  # the buffered tail was already faded out (an underrun is coming)
        self._draining = False
        self._generation = 0  # bumped by abort(): writers blocked before it give up
        self.underruns = 0
        self.played = 0  # samples (device rate) handed to PortAudio, not counting silence
        self._callback_error: BaseException | None = None

    # -- opening -----------------------------------------------------------------------------

    def _pick_settings(self, sample_rate: int) -> tuple[int, int]:
        sd = self._sd
        max_ch = int(self._device_info.get("max_output_channels", 1)) or 1
        channels = [1] + ([2] if max_ch >= 2 else [])
        default_rate = int(round(self._device_info.get("default_samplerate") or sample_rate))
        rates = [self._forced_rate] if self._forced_rate else [sample_rate, default_rate]
        last_err: Exception | None = None
        for rate in dict.fromkeys(rates):
            for ch in channels:
                try:
                    sd.check_output_settings(device=self.device, channels=ch, dtype="int16", samplerate=rate)
                except (sd.PortAudioError, ValueError) as err:
                    last_err = err
                    continue
                return int(rate), ch
        raise AudioDeviceError(f"the audio device refuses {rates} Hz mono/stereo 16-bit ({last_err}); {_NO_DEVICE_HINT}")

    def open(self, sample_rate: int) -> None:
        """Open and start the output stream for audio at ``sample_rate``.

        Raises:
            AudioDeviceError: when the device cannot be opened.
        """
        with self._stream_lock:
            if self._stream is not None:
                if sample_rate != self.sample_rate:
                    raise RuntimeError(f"sink already open at {self.sample_rate} Hz, not {sample_rate} Hz")
                return
            rate, channels = self._pick_settings(int(sample_rate))
            self.sample_rate = int(sample_rate)
            self.device_rate = rate
            self._resampler = LinearResampler(self.sample_rate, rate) if rate != self.sample_rate else None
            if self._resampler is not None:
                logger.info("audio device runs at %d Hz: resampling from %d Hz", rate, self.sample_rate)
            with self._lock:
                capacity = max(int(self.buffer_seconds * rate), 1024)
                self._buf = np.zeros(capacity, dtype=np.int16)
                self._head = self._count = 0
                self._fade = int(round(self.fade_ms * rate / 1000))
                self._dry, self._tail_faded, self._draining = True, False, False
            try:
                self._stream = self._sd.OutputStream(
                    samplerate=rate, blocksize=self.blocksize, device=self.device, channels=channels,
                    dtype="int16", latency=self.latency, callback=self._callback,
                )
                self._stream.start()
            except (self._sd.PortAudioError, OSError, ValueError) as err:
                self._stream = None
                raise AudioDeviceError(f"cannot open the audio device ({err}); {_NO_DEVICE_HINT}") from err
            self._running = True
            logger.debug("audio stream open: %d Hz, %d channel(s), latency %.3f s", rate, channels, self._stream.latency)

    # -- the PortAudio callback (audio thread: never blocks beyond this short lock) ---------------

    def _callback(self, outdata: np.ndarray, frames: int, time_info, status) -> None:
        try:
            with self._lock:
                avail = self._count
                if not self._draining and not self._tail_faded and self._fade and avail < frames + self._fade:
                    # The buffer will run dry within this block or just after it: fade out its tail now,
                    # while those samples are still ours to change.
                    n = min(avail, self._fade)
                    if n:
                        idx = (self._head + avail - n + np.arange(n)) % self._buf.size
                        self._buf[idx] = np.rint(self._buf[idx] * _raised_cosine(n, rising=False)).astype(np.int16)
                    self._tail_faded = True
                n = min(frames, avail)
                first = min(n, self._buf.size - self._head)
                outdata[:first] = self._buf[self._head : self._head + first, None]
                outdata[first:n] = self._buf[: n - first, None]
                self._head = (self._head + n) % self._buf.size
                self._count -= n
                self.played += n
                if n < frames:
                    outdata[n:] = 0
                    if not self._dry and not self._draining:
                        self.underruns += 1
                    self._dry = True
                if n:
                    self._cond.notify_all()
        except BaseException as err:  # a raising callback would kill the stream: keep it for write()
            outdata.fill(0)
            self._callback_error = err

    # -- writing ------------------------------------------------------------------------------

    def write(self, audio: np.ndarray) -> None:
        """Queue a chunk for playback; blocks while the buffer is full.

        Returns early (dropping the rest) if ``abort()`` is called meanwhile.

        Raises:
            RuntimeError: when called before ``open``.
            AudioDeviceError: when the device stopped playing.
        """
        if self.sample_rate is None or self._stream is None:
            raise RuntimeError("SoundDeviceSink.write() needs open() first (and not after close())")
        x = np.asarray(audio, dtype=np.float32)
        if self._resampler is not None:
            x = self._resampler(x.reshape(-1) if x.ndim == 2 and 1 in x.shape else x)
        pcm = to_int16(x)
        if pcm.size == 0:
            return
        self._ensure_running()
        done = 0
        with self._cond:
            generation = self._generation
            self._draining = False
            while done < pcm.size:
                if self._generation != generation:
                    return
                free = self._buf.size - self._count
                if free == 0:
                    # Woken by the callback as it frees space; the timeout only checks for a dead stream.
                    if not self._cond.wait(timeout=1.0):
                        self._check_stream()
                    continue
                n = min(free, pcm.size - done)
                part = pcm[done : done + n]
                if self._dry or self._tail_faded:
                    # Resuming after silence (or after a faded tail): fade in.
                    m = min(self._fade, n)
                    if m:
                        part = part.copy()
                        part[:m] = np.rint(part[:m] * _raised_cosine(m, rising=True)).astype(np.int16)
                    self._dry = self._tail_faded = False
                tail = (self._head + self._count) % self._buf.size
                first = min(n, self._buf.size - tail)
                self._buf[tail : tail + first] = part[:first]
                self._buf[: n - first] = part[first:]
                self._count += n
                done += n

    def _ensure_running(self) -> None:
        with self._stream_lock:
            if self._stream is not None and not self._running:
                self._stream.start()  # after abort(): the sink stays usable
                self._running = True

    def _check_stream(self) -> None:
        # Called with self._lock held, from write() only.
        if self._callback_error is not None:
            err, self._callback_error = self._callback_error, None
            raise AudioDeviceError(f"audio callback failed: {err!r}") from err
        stream = self._stream
        if stream is None or not stream.active:
            raise AudioDeviceError(f"the audio device stopped playing; {_NO_DEVICE_HINT}")

    # -- stopping -----------------------------------------------------------------------------

    def close(self) -> None:
        """Let the buffer play out, then stop and release the device. Idempotent."""
        with self._stream_lock:
            stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            with self._cond:
                self._draining = True
                seconds = self._count / (self.device_rate or SAMPLE_RATE)
                deadline = time.monotonic() + seconds + 2.0
                while self._count and self._running:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        logger.warning("audio device stalled: dropping %d unplayed samples", self._count)
                        break
                    self._cond.wait(timeout=min(left, 0.5))
            if self._running:
                stream.stop()  # PortAudio plays out its own buffers before returning
        finally:
            self._running = False
            stream.close()
            with self._cond:
                self._count = 0
                self._generation += 1
                self._cond.notify_all()

    def abort(self) -> None:
        """Drop everything buffered and stop the sound now; later writes restart playback."""
        with self._cond:
            self._count = 0
            self._head = 0
            self._generation += 1
            self._dry, self._tail_faded = True, False
            self._cond.notify_all()
        # Outside self._lock: Pa_AbortStream waits for a running callback, which takes that lock.
        with self._stream_lock:
            if self._stream is not None and self._running:
                self._stream.abort()
                self._running = False


def open_sink(out: str | None, pcm: bool, play: bool) -> SinkLike:
    """The sink for the CLI's flags: ``--out FILE.wav``, ``--pcm``, ``--no-play``.

    Args:
        out: WAV path, or None.
        pcm: raw PCM to stdout.
        play: play through the sound card (ignored when ``out`` or ``pcm`` is given).

    Raises:
        ValueError: when both ``out`` and ``pcm`` are given.
        AudioDeviceError: when playing is asked for and there is no usable device.
        OSError: when the WAV file cannot be created.
    """
    if out and pcm:
        raise ValueError("choose one of --out and --pcm")
    if out:
        return WavSink(out)
    if pcm:
        return PcmSink()
    if play:
        return SoundDeviceSink()
    return NullSink()
