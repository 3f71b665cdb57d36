"""Feed text to a Pipeline in small pieces, as a live source would, and write the speech to a WAV file.

    python examples/speak_text.py out.wav            # Japanese text, spoken as it is
    python examples/speak_text.py out.wav --english  # English text translated first (needs a converted NLLB)
"""

import argparse

import mlx_stream_tts  # noqa: F401  (import first: fast BLAS for MLX on Linux)
from mlx_stream_tts import Pipeline, Translator, Voice
from mlx_stream_tts.audio import WavSink
from mlx_stream_tts.translate import default_model_dir

JAPANESE = "こんにちは。ファイルを三つ修正しました。テストはすべて成功しています。"
ENGLISH = "Hello. I fixed three files. All the tests pass now."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--english", action="store_true")
    args = parser.parse_args()

    translator = Translator.load(default_model_dir()) if args.english else None
    text = ENGLISH if args.english else JAPANESE

    def report(event) -> None:
        if event.stage == "first_audio":
            print(f"[{event.seq}] {event.text}")

    with Pipeline(translator=translator, voice=Voice.load(), sink=WavSink(args.out),
                  lang="en" if args.english else "ja", on_event=report) as pipeline:
        for i in range(0, len(text), 7):  # pieces of 7 characters, like a token stream
            pipeline.feed(text[i : i + 7])
    for timing in pipeline.timings():
        print(timing)


if __name__ == "__main__":
    main()
