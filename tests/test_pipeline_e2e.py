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

from mlx_stream_tts.audio import WavSink
from mlx_stream_tts.pipeline import Pipeline

from nllb_fixtures import get_converted

pytestmark = pytest.mark.slow

# Short sentences: the pure voice runs ~13x slower than real time on this CPU (MLX's CPU convolutions).
TEXT = "Run the tests. Hello world."


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory):
    from convert.kokoro import convert_from_onnx, default_model_dir, is_converted

    path = default_model_dir()
    return path if is_converted(path) else convert_from_onnx(tmp_path_factory.mktemp("kokoro"), overwrite=True)


@pytest.mark.parametrize("backend", ["mlx", "auto"])
def test_text_to_wav_through_translator_and_voice(tmp_path_factory, tmp_path, voice_dir, backend):
    from mlx_stream_tts.translate import Translator
    from mlx_stream_tts.voice import Voice

    translator = Translator.load(get_converted(tmp_path_factory, "d16"), backend=backend)
    voice = Voice.load(voice_dir, backend=backend)
    if backend == "mlx":  # nothing of the accelerator is applied
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
        for i in range(0, len(TEXT), 5):  # pieces, as a stream arrives
            p.feed(TEXT[i:i + 5])
        p.flush()
        timings = p.timings()
    assert threading.get_ident() == main_thread

    assert [e for e in events if e.stage == "error"] == []
    assert [t.source for t in timings] == ["Run the tests.", "Hello world."]
    translated = {e.seq: e.text for e in events if e.stage == "translated"}
    # Each sentence went through the model: its spoken text is the translator's own output for it.
    expected = translator.translate(["Run the tests.", "Hello world."], "eng_Latn", "jpn_Jpan")
    assert [translated.get(i) for i in range(2)] == expected
    spoken = [t for t in timings if t.audio_seconds > 0]
    assert spoken, f"no sentence was voiced: {[(t.source, t.spoken, t.skipped) for t in timings]}"
    assert all(t.done is not None for t in spoken)
    with wave.open(str(out), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    assert len(audio) / 24000 == pytest.approx(sum(t.audio_seconds for t in timings), abs=0.01)
    assert np.abs(audio).max() > 1000  # speech, not silence
