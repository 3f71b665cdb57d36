"""Audio sinks: WAV, raw PCM, null, and the sounddevice player (fake PortAudio and the real one)."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
import wave
from pathlib import Path

import numpy as np
import pytest

from mlx_stream_tts import audio
from mlx_stream_tts.audio import (
    AudioDeviceError,
    LinearResampler,
    NullSink,
    PcmSink,
    SoundDeviceSink,
    WavSink,
    open_sink,
    to_int16,
)

RATE = 24_000


def read_wav(path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        return w.getparams(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


# -- conversions ---------------------------------------------------------------------------------


def test_to_int16_clips_rounds_and_silences_nan():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0, np.nan, 1e-6], dtype=np.float32)
    assert to_int16(x).tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767, 0, 0]
    assert to_int16(x.reshape(-1, 1)).shape == (9,)
    with pytest.raises(ValueError, match="mono"):
        to_int16(np.zeros((2, 5), dtype=np.float32))


def test_linear_resampler_is_continuous_across_chunks():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 5000).astype(np.float32)
    for src, dst in ((24_000, 48_000), (24_000, 44_100), (24_000, 16_000)):
        r = LinearResampler(src, dst)
        parts, i = [], 0
        while i < x.size:
            n = int(rng.integers(1, 700))
            parts.append(r(x[i : i + n]))
            i += n
        got = np.concatenate(parts)
        pos = np.arange(0, x.size - 1 + 1e-9, src / dst)
        want = np.interp(pos, np.arange(x.size), x)
        assert abs(got.size - want.size) <= 1
        m = min(got.size, want.size)
        np.testing.assert_allclose(got[:m], want[:m], atol=1e-5)


# -- WAV, PCM, null ------------------------------------------------------------------------------


def test_wav_round_trip_values_clipping_length(tmp_path):
    path = tmp_path / "out.wav"
    sink = WavSink(path)
    sink.open(RATE)
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-1.5, 1.5, n).astype(np.float32) for n in (1, 777, 0, 2400, 13)]
    for c in chunks:
        sink.write(c)
    sink.close()
    sink.close()  # idempotent
    params, data = read_wav(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, RATE)
    want = np.concatenate(chunks)
    assert params.nframes == data.size == want.size
    np.testing.assert_array_equal(data, np.rint(np.clip(want, -1, 1) * 32767).astype(np.int16))
    assert data.max() == 32767 and data.min() == -32767
    assert os.path.getsize(path) == 44 + 2 * want.size


def test_wav_killed_mid_stream_leaves_no_target_and_a_valid_part_file(tmp_path):
    path = tmp_path / "crash.wav"
    script = f"""
        import os, numpy as np
        import mlx_stream_tts
        from mlx_stream_tts.audio import WavSink
        s = WavSink({str(path)!r}); s.open(16000)
        s.write(np.full(100, 0.25, np.float32)); s.write(np.full(50, -0.5, np.float32))
        print(s.part_path, flush=True)
        os._exit(3)  # no close(), no interpreter cleanup
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], timeout=60, capture_output=True)
    assert proc.returncode == 3
    assert not path.exists()  # the target is complete or absent
    part = proc.stdout.decode().strip()
    assert os.path.dirname(part) == str(tmp_path) and os.path.basename(part).startswith(".crash.wav.")
    params, data = read_wav(part)  # what was written can be recovered: the header matches the data
    assert params.framerate == 16000 and params.nframes == 150
    assert data[:100].tolist() == [8192] * 100 and data[100:].tolist() == [-16384] * 50


def test_wav_appears_only_at_close_and_replaces_an_old_file(tmp_path):
    path = tmp_path / "out.wav"
    path.write_bytes(b"old")
    sink = WavSink(path)
    sink.open(RATE)
    sink.write(np.full(10, 0.5, np.float32))
    assert path.read_bytes() == b"old"
    sink.close()
    assert read_wav(path)[1].tolist() == [16384] * 10 and sink.kept_seconds == 10 / RATE
    assert os.listdir(tmp_path) == ["out.wav"]  # no temporary file left beside it
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class FullDisk(io.RawIOBase):
    """A file on a disk with ``room`` bytes: a write that would grow it further writes what fits and
    returns the count, and the next one raises ENOSPC, as write(2) does."""

    def __init__(self, real: io.FileIO, room: int) -> None:
        self.real, self.room, self.failures = real, room, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        pos = self.real.tell()
        size = os.fstat(self.real.fileno()).st_size
        fits = max(max(size, self.room) - pos, 0)
        if not fits:
            self.failures += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real.write(data[:fits])

    def seek(self, offset, whence=0):
        return self.real.seek(offset, whence)

    def tell(self):
        return self.real.tell()

    def truncate(self, size=None):
        return self.real.truncate(size)

    def fileno(self):
        return self.real.fileno()

    def close(self):
        self.real.close()
        super().close()


def full_disk(monkeypatch, room: int) -> list[FullDisk]:
    """Make every new WavSink write to a disk with ``room`` bytes; returns the fake files made."""
    made: list[FullDisk] = []
    create = WavSink._create_part

    def create_part(self):
        part, real = create(self)
        made.append(FullDisk(real, room))
        return part, made[-1]

    monkeypatch.setattr(WavSink, "_create_part", create_part)
    return made


def wav_is_valid(path) -> bool:
    raw = Path(path).read_bytes()
    riff, data = int.from_bytes(raw[4:8], "little"), int.from_bytes(raw[40:44], "little")
    return raw[:4] == b"RIFF" and riff == len(raw) - 8 and data == len(raw) - 44


def test_wav_full_disk_mid_chunk_cuts_back_to_the_last_checkpoint(tmp_path, monkeypatch):
    fakes = full_disk(monkeypatch, room=44 + 2 * 250)
    path = tmp_path / "out.wav"
    sink = WavSink(path)
    sink.checkpoint()  # nothing whole yet
    sink.open(RATE)
    sink.write(np.full(100, 0.25, np.float32))
    sink.checkpoint()  # sentence 1 ends
    sink.write(np.full(100, 0.5, np.float32))
    with pytest.raises(OSError) as first:
        sink.write(np.full(100, -0.5, np.float32))  # half of it fits, then the disk is full
    assert first.value.errno == errno.ENOSPC and sink.error is first.value
    with pytest.raises(OSError) as again:
        sink.write(np.full(10, 0.1, np.float32))  # the audio cannot go anywhere now
    assert again.value is first.value
    assert wav_is_valid(sink.part_path)  # already cut back to the last whole chunk
    assert read_wav(sink.part_path)[0].nframes == 200
    sink.checkpoint()  # ignored after the failure
    sink.close()
    assert wav_is_valid(path)
    assert read_wav(path)[1].tolist() == [8192] * 100  # sentence 1 only
    assert sink.kept_seconds == 100 / RATE and sink.checkpoints == 1
    assert os.listdir(tmp_path) == ["out.wav"]
    assert fakes[0].failures == 1  # later writes raise without touching the disk


def test_wav_full_disk_before_anything_whole_leaves_no_file(tmp_path, monkeypatch):
    for room in (0, 10, 44, 44 + 2 * 30):
        full_disk(monkeypatch, room)
        path = tmp_path / f"out{room}.wav"
        sink = WavSink(path)
        sink.checkpoint()
        sink.open(RATE)
        with pytest.raises(OSError, match="No space"):
            for _ in range(10):
                sink.write(np.full(20, 0.25, np.float32))
        sink.close()
        assert sink.kept_seconds is None and not path.exists()
    assert os.listdir(tmp_path) == []


def test_wav_without_checkpoints_keeps_every_whole_chunk(tmp_path, monkeypatch):
    full_disk(monkeypatch, room=44 + 2 * 250)
    sink = WavSink(tmp_path / "out.wav")
    sink.open(RATE)
    sink.write(np.full(100, 0.25, np.float32))
    sink.write(np.full(100, 0.5, np.float32))
    with pytest.raises(OSError):
        sink.write(np.full(100, 0.5, np.float32))
    sink.close()
    assert wav_is_valid(tmp_path / "out.wav") and sink.kept_seconds == 200 / RATE


def test_wav_cut_short_keeps_whole_sentences_only(tmp_path):
    sink = WavSink(tmp_path / "out.wav")
    sink.checkpoint()
    sink.open(RATE)
    sink.write(np.full(100, 0.25, np.float32))
    sink.checkpoint()
    sink.write(np.full(60, 0.5, np.float32))  # interrupted mid-sentence
    sink.close(complete_only=True)
    assert read_wav(tmp_path / "out.wav")[1].tolist() == [8192] * 100
    other = WavSink(tmp_path / "none.wav")
    other.checkpoint()
    other.open(RATE)
    other.write(np.full(60, 0.5, np.float32))
    other.close(complete_only=True)
    assert other.kept_seconds is None and sorted(os.listdir(tmp_path)) == ["out.wav"]


def test_wav_failing_to_finish_leaves_nothing(tmp_path, monkeypatch):
    sink = WavSink(tmp_path / "out.wav")
    sink.open(RATE)
    sink.write(np.full(10, 0.5, np.float32))

    def no_sync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(audio.os, "fsync", no_sync)
    with pytest.raises(OSError, match="Input/output"):
        sink.close()
    assert sink.kept_seconds is None and os.listdir(tmp_path) == []
    sink.close()  # idempotent


def test_wav_misuse(tmp_path):
    sink = WavSink(tmp_path / "a.wav")
    with pytest.raises(RuntimeError, match="open"):
        sink.write(np.zeros(3, np.float32))
    sink.close()  # never opened: still a valid, empty WAV
    params, data = read_wav(tmp_path / "a.wav")
    assert params.framerate == RATE and data.size == 0
    with pytest.raises(OSError):
        WavSink(tmp_path / "no" / "such" / "dir.wav")
    with pytest.raises(IsADirectoryError):
        WavSink(tmp_path)


def test_pcm_bytes_little_endian_and_clipped():
    buf = io.BytesIO()
    sink = PcmSink(buf)
    sink.open(RATE)
    sink.write(np.array([0.0, 1.0, -1.0, 2.0, 0.5], np.float32))
    sink.write(np.array([-0.25], np.float32))
    sink.close()
    want = np.array([0, 32767, -32767, 32767, 16384, -8192], dtype="<i2").tobytes()
    assert buf.getvalue() == want and sink.samples == 6


def test_pcm_broken_pipe_stops_quietly(caplog):
    class ClosedPipe(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise BrokenPipeError(32, "Broken pipe")

    sink = PcmSink(ClosedPipe())
    sink.open(RATE)
    with caplog.at_level("INFO", logger="mlx_stream_tts.audio"):
        sink.write(np.zeros(10, np.float32))
        sink.write(np.zeros(10, np.float32))
        sink.close()
    assert sink.broken and sink.samples == 0
    assert caplog.text.count("PCM output closed") == 1


def test_pcm_to_a_real_pipe_that_closes_early(tmp_path):
    # `... --pcm | head -c 100`: the writer must end quietly with exit code 0 and no traceback.
    script = """
        import sys, numpy as np, logging
        import mlx_stream_tts
        from mlx_stream_tts.audio import PcmSink
        logging.basicConfig(level=logging.INFO)
        s = PcmSink(); s.open(24000)
        for _ in range(200):
            s.write(np.full(24000, 0.1, np.float32))
        s.close()
        print("writer done", file=sys.stderr)
    """
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = writer.stdout.read(100)
    writer.stdout.close()
    err = writer.stderr.read().decode()
    assert writer.wait(timeout=60) == 0, err
    assert len(head) == 100 and "writer done" in err and "Traceback" not in err
    assert "PCM output closed" in err


def test_null_sink_counts():
    sink = NullSink()
    sink.open(RATE)
    sink.write(np.zeros(5, np.float32))
    sink.write(np.zeros(7, np.float32))
    sink.abort()
    sink.close()
    assert (sink.samples, sink.writes, sink.sample_rate) == (12, 2, RATE)


def test_open_sink_factory(tmp_path):
    assert isinstance(open_sink(str(tmp_path / "x.wav"), pcm=False, play=True), WavSink)
    assert isinstance(open_sink(None, pcm=True, play=True), PcmSink)
    assert isinstance(open_sink(None, pcm=False, play=False), NullSink)
    with pytest.raises(ValueError):
        open_sink("x.wav", pcm=True, play=False)


# -- the player against a fake PortAudio (deterministic: the test is the audio clock) -------------


class FakeStream:
    def __init__(self, sd, samplerate, blocksize, device, channels, dtype, latency, callback):
        self.sd, self.samplerate, self.channels, self.dtype, self.callback = sd, samplerate, channels, dtype, callback
        self.latency = 0.01
        self.active = False
        self.calls: list[str] = []
        sd.streams.append(self)

    def start(self):
        self.calls.append("start")
        self.active = True

    def stop(self):
        self.calls.append("stop")
        self.active = False

    def abort(self):
        self.calls.append("abort")
        self.active = False

    def close(self):
        self.calls.append("close")

    def pull(self, frames: int) -> np.ndarray:
        """What the device would play next (mono)."""
        out = np.full((frames, self.channels), 12345, dtype=np.int16)  # garbage the callback must overwrite
        self.callback(out, frames, None, None)
        assert (out == out[:, :1]).all()
        return out[:, 0].copy()


def fake_sounddevice(refuse_rates=(), default_rate=48_000, devices=True):
    sd = types.SimpleNamespace(streams=[])

    class PortAudioError(Exception):
        pass

    def query_devices(device=None, kind=None):
        if not devices:
            raise PortAudioError("Error querying device -1")
        return {"name": "fake", "max_output_channels": 2, "default_samplerate": float(default_rate)}

    def check_output_settings(device=None, channels=None, dtype=None, samplerate=None, extra_settings=None):
        if samplerate in refuse_rates:
            raise PortAudioError(f"Invalid sample rate {samplerate}")

    sd.PortAudioError = PortAudioError
    sd.query_devices = query_devices
    sd.check_output_settings = check_output_settings
    sd.OutputStream = lambda **kw: FakeStream(sd, **kw)
    return sd


@pytest.fixture
def fake_sd(monkeypatch):
    sd = fake_sounddevice()
    monkeypatch.setattr(audio, "_import_sounddevice", lambda: sd)
    return sd


def test_player_is_gapless_and_in_order(fake_sd):
    sink = SoundDeviceSink(buffer_seconds=1.0, fade_ms=5)
    sink.open(RATE)
    stream = fake_sd.streams[0]
    assert stream.samplerate == RATE and stream.dtype == "int16" and stream.calls == ["start"]
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.9, 0.9, 20_000).astype(np.float32)
    parts = np.split(x, [3000, 3001, 9000, 15000])
    for part in parts:  # several chunks/sentences, all buffered before the device asks
        sink.write(part)
    played = np.concatenate([stream.pull(256) for _ in range(80)])
    want = to_int16(x)
    fade = int(0.005 * RATE)
    # Only the first samples (fade-in from silence) and the last (fade-out: the buffer ran dry with
    # no close() asked for) are changed; the joins between chunks are untouched.
    np.testing.assert_array_equal(played[fade : x.size - fade], want[fade:-fade])
    for edge in (slice(0, fade), slice(x.size - fade, x.size)):
        assert np.all(np.abs(played[edge].astype(int)) <= np.abs(want[edge].astype(int)))
    assert abs(int(played[x.size - 1])) < 300 and abs(int(played[0])) < 300
    assert sink.underruns == 1 and not played[x.size :].any()


def test_player_underrun_fades_out_and_back_in_without_clicks(fake_sd):
    sink = SoundDeviceSink(buffer_seconds=1.0, fade_ms=5)
    sink.open(RATE)
    stream = fake_sd.streams[0]
    t = np.arange(2 * RATE) / RATE
    x = (0.8 * np.sin(2 * np.pi * 233 * t)).astype(np.float32)  # chunks end mid-cycle
    biggest_step = np.abs(np.diff(to_int16(x).astype(int))).max()
    out = []
    # The writer is late: 0.1 s of audio arrives only every 0.15 s of playback.
    for i in range(0, x.size, 2400):
        sink.write(x[i : i + 2400])
        out += [stream.pull(240) for _ in range(15)]
    played = np.concatenate(out).astype(int)
    assert sink.underruns >= 10
    steps = np.abs(np.diff(played))
    # Without fades each underrun would jump by up to 26000; with them no step exceeds the sine's own.
    assert steps.max() <= biggest_step + 2, steps.max()
    assert np.count_nonzero(played) > 0.6 * x.size  # the audio itself is still there


def test_player_back_pressure_blocks_without_spinning(fake_sd):
    sink = SoundDeviceSink(buffer_seconds=0.1, fade_ms=0)  # 2400 samples
    sink.open(RATE)
    stream = fake_sd.streams[0]
    x = np.full(6000, 0.5, np.float32)
    writer = threading.Thread(target=sink.write, args=(x,))
    writer.start()
    time.sleep(0.2)
    assert writer.is_alive()  # buffer full: write waits
    cpu0 = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - cpu0 < 0.1  # ... on a condition, not in a loop
    got = []
    deadline = time.monotonic() + 5.0
    while (writer.is_alive() or sink._count) and time.monotonic() < deadline:  # the device plays on
        got.append(stream.pull(1000))
        time.sleep(0.01)
    assert not writer.is_alive()
    assert np.count_nonzero(np.concatenate(got)) == 6000


def test_player_abort_is_quick_drops_buffer_and_restarts_on_next_write(fake_sd):
    sink = SoundDeviceSink(buffer_seconds=0.1, fade_ms=0)
    sink.open(RATE)
    stream = fake_sd.streams[0]
    writer = threading.Thread(target=sink.write, args=(np.full(RATE, 0.5, np.float32),))
    writer.start()
    time.sleep(0.1)
    t0 = time.perf_counter()
    sink.abort()
    writer.join(1.0)
    assert time.perf_counter() - t0 < 0.2 and not writer.is_alive()
    assert stream.calls == ["start", "abort"]
    assert not stream.pull(500).any()  # nothing left of the aborted audio
    sink.write(np.full(100, 0.25, np.float32))
    assert stream.calls == ["start", "abort", "start"]
    assert (stream.pull(100) == 8192).all()
    sink.close()
    assert stream.calls[-2:] == ["stop", "close"]


def test_player_close_drains_then_stops(fake_sd):
    sink = SoundDeviceSink(buffer_seconds=1.0, fade_ms=0)
    sink.open(RATE)
    stream = fake_sd.streams[0]
    sink.write(np.full(5000, 0.5, np.float32))
    pulled = []

    def device():
        while stream.active or not pulled:
            pulled.append(stream.pull(480))
            time.sleep(0.002)

    dev = threading.Thread(target=device)
    dev.start()
    sink.close()
    dev.join(2.0)
    assert stream.calls == ["start", "stop", "close"]
    assert np.count_nonzero(np.concatenate(pulled)) == 5000
    sink.close()  # idempotent


def test_player_resamples_when_the_device_refuses_24k(monkeypatch):
    sd = fake_sounddevice(refuse_rates=(RATE,), default_rate=48_000)
    monkeypatch.setattr(audio, "_import_sounddevice", lambda: sd)
    sink = SoundDeviceSink(fade_ms=0)
    sink.open(RATE)
    stream = sd.streams[0]
    assert stream.samplerate == 48_000 and sink.device_rate == 48_000
    x = np.linspace(0.1, 0.5, 1000, dtype=np.float32)
    sink.write(x)
    played = stream.pull(3000)
    assert np.count_nonzero(played) == 1999  # 2x, less the last half-sample interval
    np.testing.assert_allclose(played[:1999:2], to_int16(x)[:1000], atol=1)


def test_no_device_is_a_clear_error(monkeypatch):
    sd = fake_sounddevice(devices=False)
    monkeypatch.setattr(audio, "_import_sounddevice", lambda: sd)
    with pytest.raises(AudioDeviceError, match="--out FILE.wav.*--pcm"):
        SoundDeviceSink()


def test_missing_portaudio_is_a_clear_error(monkeypatch):
    class NoPortAudio:
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")
            return None

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    with pytest.raises(AudioDeviceError, match="PortAudio is not installed.*libportaudio2.*--out FILE.wav"):
        open_sink(None, pcm=False, play=True)


# -- the real PortAudio/ALSA path, on a file-backed ALSA device (see notes/audio-on-linux.md) -------


def _portaudio_available() -> bool:
    proc = subprocess.run([sys.executable, "-c", "import sounddevice"], capture_output=True, timeout=60)
    return proc.returncode == 0


needs_portaudio = pytest.mark.skipif(
    sys.platform != "linux" or not _portaudio_available(),
    reason="needs PortAudio (Debian: apt-get install libportaudio2) and ALSA for the file-backed test device",
)


def run_with_tap(tmp_path, body: str) -> tuple[dict, np.ndarray]:
    """Run ``body`` in a fresh Python whose ALSA default device writes to a file; returns its JSON
    report (what it printed last) and the int16 samples that reached the device."""
    home = tmp_path / "home"
    home.mkdir()
    tap = tmp_path / "tap.raw"
    (home / ".asoundrc").write_text(
        'pcm.!default { type plug; slave.pcm "tap" }\n'
        f'pcm.tap {{ type file; slave.pcm "null"; file "{tap}"; format "raw" }}\n'
    )
    script = "import json, time, numpy as np\nimport mlx_stream_tts\nfrom mlx_stream_tts.audio import SoundDeviceSink\n"
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(body)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report, np.fromfile(tap, dtype="<i2") if tap.exists() else np.zeros(0, np.int16)


def _signal_script(n: int, seed: int) -> str:
    # Non-zero samples that are exact in int16, so the device's silence (between and around them)
    # can be told apart and removed.
    return f"""
        rng = np.random.default_rng({seed})
        vals = rng.integers(1, 32767, {n}) * rng.choice([-1, 1], {n})
        sig = (vals / 32767).astype(np.float32)
    """


@needs_portaudio
def test_real_device_gets_every_sample_in_order_and_close_drains(tmp_path):
    body = _signal_script(120_000, 0) + """
        sink = SoundDeviceSink(buffer_seconds=0.25, fade_ms=0)
        sink.open(24000)
        i, k = 0, 0
        while i < sig.size:  # many chunks of random sizes, like sentences and voice chunks
            n = int(rng.integers(50, 9000)); sink.write(sig[i:i + n]); i += n; k += 1
        t0 = time.perf_counter(); sink.close(); close_s = time.perf_counter() - t0
        np.save("expected.npy", vals.astype(np.int16))
        print(json.dumps({"rate": sink.device_rate, "chunks": k, "close_s": close_s, "played": sink.played}))
    """
    report, tap = run_with_tap(tmp_path, body.replace('"expected.npy"', repr(str(tmp_path / "expected.npy"))))
    expected = np.load(tmp_path / "expected.npy")
    assert report["rate"] == RATE and report["played"] == expected.size
    heard = tap[tap != 0]
    np.testing.assert_array_equal(heard, expected)  # all of it, in order, nothing else
    assert report["close_s"] < 5.0


@needs_portaudio
def test_real_device_at_another_rate_gets_the_resampled_audio(tmp_path):
    body = """
        t = np.arange(24000) / 24000
        sig = (0.5 + 0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)  # never 0, even resampled
        sink = SoundDeviceSink(fade_ms=0, device_rate=48000)
        sink.open(24000)
        for i in range(0, sig.size, 1000):
            sink.write(sig[i:i + 1000])
        sink.close()
        print(json.dumps({"rate": sink.device_rate}))
    """
    report, tap = run_with_tap(tmp_path, body)
    assert report["rate"] == 48_000
    t = np.arange(24_000) / 24_000
    sig = (0.5 + 0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    want = to_int16(np.interp(np.arange(0, sig.size - 1 + 1e-9, 0.5), np.arange(sig.size), sig))
    heard = tap[tap != 0]
    assert heard.size == want.size
    assert np.abs(heard.astype(int) - want.astype(int)).max() <= 1


@needs_portaudio
def test_real_device_abort_is_quick_and_the_sink_plays_again(tmp_path):
    body = """
        sink = SoundDeviceSink(buffer_seconds=5.0, fade_ms=0)
        sink.open(24000)
        sink.write(np.full(48000, 0.25, np.float32))
        t0 = time.perf_counter(); sink.abort(); abort_s = time.perf_counter() - t0
        sink.write(np.full(4800, -0.5, np.float32))
        sink.close()
        print(json.dumps({"abort_s": abort_s}))
    """
    report, tap = run_with_tap(tmp_path, body)
    assert report["abort_s"] < 0.2
    heard = tap[tap != 0]
    # The file device is not paced, so some of the first sound may have played before abort(); all of
    # the second, after it, must have.
    assert np.count_nonzero(heard == -16384) == 4800
    assert set(np.unique(heard)) <= {8192, -16384}
    assert heard[-1] == -16384 and np.all(np.diff(np.flatnonzero(heard == -16384)) == 1)


@needs_portaudio
def test_real_portaudio_without_any_device_says_what_to_do(tmp_path):
    home = tmp_path / "empty_home"
    home.mkdir()
    script = """
        import mlx_stream_tts, sounddevice as sd
        from mlx_stream_tts.audio import AudioDeviceError, SoundDeviceSink
        try:
            sd.query_devices(kind="output")
            print("HAS_DEVICE")
        except sd.PortAudioError:
            pass
        for device in (None, "no-such-device"):
            try:
                SoundDeviceSink(device=device)
                print("NO ERROR", device)
            except AudioDeviceError as err:
                print("ERROR", err)
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    errors = [line for line in lines if line.startswith("ERROR")]
    if "HAS_DEVICE" in lines:  # a machine with a sound card: only the named device can be missing
        assert len(errors) == 1 and "no-such-device" in errors[0]
    else:
        assert len(errors) == 2
    assert all("--out FILE.wav" in e and "--pcm" in e for e in errors)
