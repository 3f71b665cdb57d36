"""End to end with real models: English text -> Translator -> Voice -> WAV, on each backend.

The translator is a tiny random-weight NLLB checkpoint (its Japanese is noise, but it is real decoding
through the converted model); the voice is the real Kokoro-82M. With ``backend="mlx"`` every model call
runs the pure MLX models, what a Mac's GPU runs; ``"auto"`` adds the CPU accelerator where this CPU
supports it. The same text must come out as a valid WAV with every sentence spoken once, in order.
"""

from __future__ import annotations

import threading
import wave

import numpy as np
import pytest

from mlx_stream_tts import cpu
from mlx_stream_tts.audio import WavSink
from mlx_stream_tts.pipeline import Pipeline

from nllb_fixtures import get_converted

pytestmark = pytest.mark.slow

# Sentences that the tiny model "d20gelu" translates into something speakable. The pure voice gets one:
# on this CPU it runs ~10-20x slower than real time (MLX's CPU convolutions: dilated ones are a direct loop).
SENTENCES = ["Hello world.", "Please read the file and return a list of strings before the tests run again."]


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory):
    from convert.kokoro import convert_from_onnx, default_model_dir, is_converted

    path = default_model_dir()
    return path if is_converted(path) else convert_from_onnx(tmp_path_factory.mktemp("kokoro"), overwrite=True)


@pytest.mark.parametrize("backend", ["mlx", "auto"])
def test_text_to_wav_through_translator_and_voice(tmp_path_factory, tmp_path, voice_dir, backend):
    sentences = SENTENCES[:1] if cpu.resolve_backend(backend) == "mlx" else SENTENCES
    text = " ".join(sentences) + "\n"
    from mlx_stream_tts.translate import Translator
    from mlx_stream_tts.voice import Voice

    translator = Translator.load(get_converted(tmp_path_factory, "d20gelu"), backend=backend)
    voice = Voice.load(voice_dir, backend=backend)
    if not cpu.device_allows(cpu.resolve_backend(backend)):  # "mlx", MLX_STREAM_TTS_BACKEND=mlx, or a GPU
        assert translator.accelerator is None
        assert (voice.engine.backend, voice.engine.precision) == ("mlx", "float32")
    else:
        assert voice.engine.backend == "cpu" and translator.accelerator is not None

    events = []
    lock = threading.Lock()

    def on_event(event):
        with lock:
            events.append(event)

    out = tmp_path / "speech.wav"
    main_thread = threading.get_ident()
    with Pipeline(translator=translator, voice=voice, sink=WavSink(str(out)), on_event=on_event, lang="en") as p:
        for i in range(0, len(text), 5):  # pieces, as a stream arrives
            p.feed(text[i:i + 5])
        p.flush()
        timings = p.timings()
    assert threading.get_ident() == main_thread

    assert [e for e in events if e.stage == "error"] == []
    assert [t.source for t in timings] == sentences
    translated = {e.seq: e.text for e in events if e.stage == "translated"}
    # Each sentence went through the model: its spoken text is the translator's own output for it.
    expected = translator.translate(sentences, "eng_Latn", "jpn_Jpan")
    assert all(expected) and [translated.get(i) for i in range(len(sentences))] == expected
    assert all(t.done is not None and t.audio_seconds > 0.2 for t in timings), timings
    with wave.open(str(out), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    assert len(audio) / 24000 == pytest.approx(sum(t.audio_seconds for t in timings), abs=0.01)
    assert np.abs(audio).max() > 1000  # speech, not silence
