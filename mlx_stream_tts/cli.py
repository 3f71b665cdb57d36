"""The `mlx-stream-tts` command: speak a Claude Code stream (or plain text) as it arrives.

    claude -p "..." --output-format stream-json --verbose --include-partial-messages | mlx-stream-tts speak
    mlx-stream-tts speak notes.md --out notes.wav
    mlx-stream-tts convert nllb facebook/nllb-200-distilled-600M --out ~/.cache/mlx_stream_tts/nllb-200-distilled-600M
    mlx-stream-tts convert kokoro
"""

from __future__ import annotations

import argparse
import codecs
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import BinaryIO

logger = logging.getLogger("mlx_stream_tts")

_READ_SIZE = 65536


def _read_pieces(stream: BinaryIO) -> Iterator[bytes]:
    """Yield bytes as soon as they arrive (a live pipe gives partial lines: don't wait for EOF)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # in-memory streams have no descriptor
        fd = None
    read = getattr(stream, "read1", stream.read)
    while True:
        data = os.read(fd, _READ_SIZE) if fd is not None else read(_READ_SIZE)
        if not data:
            return
        yield data


def iter_text(stream: BinaryIO, fmt: str = "auto", tools: bool = False) -> Iterator[str]:
    """Turn an input byte stream into the text pieces to speak, as they arrive.

    Args:
        stream: binary input (stdin or a file).
        fmt: "stream-json", "text", or "auto" (stream-json if the first non-blank line is a JSON object
            with a "type", else plain text).
        tools: speak a short summary of each tool call (stream-json only).
    """
    from .claude import StreamJsonReader, looks_like_stream_json

    pieces = _read_pieces(stream)
    head = b""
    if fmt == "auto":
        # Peek until the first non-blank line is complete (or the input ends).
        for data in pieces:
            head += data
            stripped = head.lstrip()
            if b"\n" in stripped or len(stripped) > 1 << 20:
                break
        first = head.lstrip().split(b"\n", 1)[0]
        fmt = "stream-json" if looks_like_stream_json(first) else "text"
        logger.debug("input format: %s", fmt)
    if fmt == "stream-json":
        reader = StreamJsonReader(tools=tools)
        if head:
            yield from reader.feed(head)
        for data in pieces:
            yield from reader.feed(data)
        yield from reader.finish()
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    if head:
        yield decoder.decode(head)
    for data in pieces:
        text = decoder.decode(data)
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def _open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as err:
        raise SystemExit(f"mlx-stream-tts: cannot read {path}: {err.strerror}") from None


def _speak(args: argparse.Namespace) -> int:
    from .chunking import SentenceChunker, speakable

    translate = args.to.lower() not in ("none", "off", "")
    stream = _open_input(args.input)
    pieces = iter_text(stream, args.format, tools=args.tools)

    if args.dry_run:
        # Same chunking and cleanup as the real run, without loading any model.
        lang = "en" if translate else args.lang
        chunker = SentenceChunker(lang=lang)
        out = sys.stdout
        try:
            for piece in pieces:
                for sentence in chunker.feed(piece):
                    _print_speakable(out, speakable(sentence, lang, code=args.code))
            for sentence in chunker.flush():
                _print_speakable(out, speakable(sentence, lang, code=args.code))
        except BrokenPipeError:  # the reader has gone (`| head`): stop, as Unix tools do
            from .audio import quiet_stdout

            quiet_stdout()
        return 0

    from .audio import AudioDeviceError, open_sink, quiet_stdout
    from .pipeline import Pipeline

    translator = None
    src_lang = tgt_lang = None
    if translate:
        from .translate import Translator, default_model_dir, resolve_lang

        try:
            src_lang, tgt_lang = resolve_lang(args.source), resolve_lang(args.to)
        except ValueError as err:
            raise SystemExit(f"mlx-stream-tts: {err}") from None
        model_dir = args.model_dir or default_model_dir()
        try:
            translator = Translator.load(model_dir, backend=args.backend)
        except (FileNotFoundError, ValueError, RuntimeError) as err:  # RuntimeError: cpu.AcceleratorError
            raise SystemExit(f"mlx-stream-tts: {err}") from None

    voice = None
    if not args.no_voice:
        from .voice import Voice

        try:
            voice = Voice.load(args.voice_dir, voice=args.voice, precision=args.voice_precision, backend=args.backend)
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            raise SystemExit(f"mlx-stream-tts: {err}") from None

    try:
        # No voice, no audio: the sound card is not opened (subtitles work on a machine without one).
        sink = open_sink(args.out, pcm=args.pcm, play=not args.no_play and voice is not None)
    except (AudioDeviceError, OSError) as err:
        raise SystemExit(f"mlx-stream-tts: {err}") from None

    # Subtitles go to stderr when stdout carries PCM.
    subtitle_out = sys.stderr if args.pcm else sys.stdout

    # A sentence is "spoken" when its first audio reaches the sink (or when done, with no voice).
    subtitle_stage = "first_audio" if voice is not None else "done"

    failed: set[int] = set()  # sentences a stage failed on (the pipeline logs each failure once)
    chunked = [0]  # sentences in all
    # Set when whoever reads our output has gone (`| head`): the run stops at once, as Unix tools do.
    reader_gone = threading.Event()

    def on_event(event) -> None:
        if event.stage == "chunked":
            chunked[0] += 1
        if args.text and event.stage == subtitle_stage and not reader_gone.is_set():
            try:
                print(event.text, file=subtitle_out, flush=True)
            except (BrokenPipeError, ValueError):  # ValueError: the stream was closed under us
                reader_gone.set()
        elif event.stage == "error":
            failed.add(event.seq)
        if getattr(sink, "broken", False):  # PcmSink: the reader of the PCM has gone
            reader_gone.set()

    pipeline = Pipeline(
        translator=translator,
        voice=voice,
        sink=sink,
        src_lang=src_lang or "eng_Latn",
        tgt_lang=tgt_lang or "jpn_Jpan",
        lang="en" if translate else args.lang,
        speed=args.speed,
        code=args.code,
        on_event=on_event,
    )
    finished = threading.Event()

    def stop_when_reader_goes() -> None:
        # cancel() from here: the main thread may be blocked inside feed() on a long piece of text.
        while not finished.is_set():
            if reader_gone.wait(0.05):
                pipeline.cancel()
                return

    threading.Thread(target=stop_when_reader_goes, name="reader-watch", daemon=True).start()
    try:
        for piece in pieces:
            if reader_gone.is_set():
                break
            pipeline.feed(piece)
        if reader_gone.is_set():
            pipeline.cancel()
        pipeline.close()
    except AudioDeviceError as err:  # the device failed once audio started
        pipeline.cancel()
        raise SystemExit(f"mlx-stream-tts: {err}") from None
    except KeyboardInterrupt:
        pipeline.cancel()
        pipeline.close()
        print("\nmlx-stream-tts: stopped.", file=sys.stderr)
        return 130
    finally:
        finished.set()
    if reader_gone.is_set():
        quiet_stdout()
        return 0
    if failed:
        print(f"mlx-stream-tts: {len(failed)} of {chunked[0]} sentences could not be spoken (see the errors above)",
              file=sys.stderr)
        return 1
    return 0


def _print_speakable(out, text: str) -> None:
    if text:
        print(text, file=out, flush=True)


def _convert(args: argparse.Namespace) -> int:
    return args.convert_run(args)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="mlx-stream-tts",
        description="Speak a stream of English text (e.g. Claude Code output) in Japanese, locally, on MLX.",
        formatter_class=fmt,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    speak = sub.add_parser(
        "speak",
        help="speak Claude Code stream-json or plain text from a file or stdin, as it arrives",
        formatter_class=fmt,
    )
    speak.add_argument("input", nargs="?", default="-", help="input file, or - for stdin")
    speak.add_argument("--format", choices=["auto", "stream-json", "text"], default="auto", help="input format")
    speak.add_argument("--to", default="ja", help="target language (ja, jpn_Jpan, ...), or 'none' to speak the text as it is")
    speak.add_argument("--from", dest="source", default="eng_Latn", help="source language of the text")
    speak.add_argument("--lang", default="ja", help="language of the input text when --to none (for sentence splitting)")
    speak.add_argument("--voice", default="jf_alpha", help="Kokoro voice name")
    speak.add_argument("--speed", type=float, default=1.0, help="speech speed factor")
    speak.add_argument("--out", metavar="FILE.wav", help="write the speech to a WAV file instead of playing it")
    speak.add_argument("--pcm", action="store_true", help="write raw 16-bit 24 kHz mono PCM to stdout (| aplay -f S16_LE -r 24000)")
    speak.add_argument("--no-play", action="store_true", help="synthesize but do not play (timing runs)")
    speak.add_argument("--no-voice", action="store_true", help="no speech at all (with --text: subtitles only)")
    speak.add_argument("--text", action="store_true", help="print each sentence as it is spoken, like subtitles")
    speak.add_argument("--dry-run", action="store_true", help="print the sentences that would be spoken, one per line, and exit without loading any model")
    speak.add_argument("--tools", action="store_true", help="speak a short summary of each tool call")
    speak.add_argument("--code", choices=["cue", "skip", "read"], default="cue", help="what to say for code blocks")
    speak.add_argument("--model-dir", help="converted NLLB model folder (default: the cache folder)")
    speak.add_argument("--backend", choices=("auto", "mlx", "cpu"), default="auto",
                       help="auto = the CPU accelerator where MLX runs on a CPU that supports it, else the pure MLX "
                            "models (a GPU); mlx = the pure models; cpu = the accelerator or an error saying why not "
                            "(MLX_STREAM_TTS_BACKEND=mlx forces the pure models)")
    speak.add_argument("--voice-precision", choices=("auto", "int8", "float32"), default="auto",
                       help="the vocoder's convolutions with the CPU accelerator: auto = int8 where its kernel runs "
                            "(AVX-512 VNNI)")
    speak.add_argument("--voice-dir", help="converted Kokoro folder (default: built from the shipped voice once, cached)")
    speak.set_defaults(func=_speak)

    convert = sub.add_parser("convert", help="convert model weights to this package's MLX format", formatter_class=fmt)
    add_convert_commands(convert)
    return parser


def add_convert_commands(parser: argparse.ArgumentParser) -> None:
    """Mount `nllb` and `kokoro` conversion subcommands (shared with `python -m convert`)."""
    from convert import kokoro as convert_kokoro
    from convert import nllb as convert_nllb

    fmt = argparse.ArgumentDefaultsHelpFormatter
    kinds = parser.add_subparsers(dest="model", required=True)
    for name, module, help_text in (
        ("nllb", convert_nllb, "NLLB-200 / M2M100 (hub id or local folder) -> MLX"),
        ("kokoro", convert_kokoro, "Kokoro-82M (the shipped int8 ONNX, or the PyTorch checkpoint) -> MLX"),
    ):
        p = kinds.add_parser(name, help=help_text, formatter_class=fmt)
        module.add_arguments(p)
        p.set_defaults(func=_convert, convert_run=module.run)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "speak":
        if args.pcm and args.out:
            parser.error("--pcm and --out are exclusive")
        if args.speed <= 0:
            parser.error("--speed must be positive")
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\nmlx-stream-tts: stopped.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
