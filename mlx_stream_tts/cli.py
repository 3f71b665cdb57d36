"""The `mlx-stream-tts` command: speak a Claude Code stream (or plain text) as it arrives.

    claude -p "..." --output-format stream-json --verbose --include-partial-messages | mlx-stream-tts speak
    mlx-stream-tts speak notes.md --out notes.wav
    mlx-stream-tts convert nllb facebook/nllb-200-distilled-600M --out ~/.cache/mlx_stream_tts/nllb-200-distilled-600M
    mlx-stream-tts convert kokoro

The parser and each command live here; how a local `speak` run ends (signals, a reader leaving, the
output failing) is run_control.py; the warm service is service.py, its clients client.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import BinaryIO

from . import run_control
from .run_control import (
    Interrupted,
    Run,
    SinkFailures,
    StderrHandler,
    exit_now,
    in_background,
    os_error,
    quiet,
    say,
)
from .source import BinaryInput, iter_text, read_pieces  # noqa: F401  (iter_text, read_pieces: also this module's names)

logger = logging.getLogger("mlx_stream_tts")


def _open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as err:
        raise SystemExit(f"mlx-stream-tts: cannot read {path}: {err.strerror}") from None


def _speak(args: argparse.Namespace) -> int:
    if args.server:
        return _speak_to_server(args)
    stream = _open_input(args.input)
    pieces = iter_text(stream, args.format, tools=args.tools)
    if args.dry_run:
        # What would be spoken, through the same pipeline as speech (cleanup, code cues, translation:
        # the translator loads when there is one), printed instead of voiced: no voice, no sound.
        args.no_voice, args.text, args.out, args.pcm = True, True, None, False
    return _speak_locally(args, pieces, run_control.current)


def _speak_locally(args: argparse.Namespace, pieces, run: Run) -> int:
    """`speak` with the models in this process. The main thread only reads the input and waits (in
    short slices, so that a signal is handled at once); whatever ends the run early goes through
    :meth:`Run.end`."""
    from .audio import AudioDeviceError, WavSink, open_sink

    run.local = True
    logger.info("loading the models")
    translator, voice, src_lang, tgt_lang, _cache = in_background(load_stages, args, name="load")
    from .pipeline import Pipeline, PipelineError

    try:
        # No voice, no audio: the sound card is not opened (subtitles work on a machine without one).
        sink = open_sink(args.out, pcm=args.pcm, play=not args.no_play and voice is not None)
    except (AudioDeviceError, OSError) as err:
        raise SystemExit(f"mlx-stream-tts: {os_error(err)}") from None
    run.sink = sink
    wav = sink if isinstance(sink, WavSink) else None
    if wav is not None:
        wav.checkpoint()  # from here on, a file cut short keeps whole sentences only
    # The output failing ends the run with one line saying why: not also a line per sentence.
    run.filter_pipeline_log(SinkFailures())

    # Subtitles go to stderr when stdout carries PCM.
    subtitle_out = sys.stderr if args.pcm else sys.stdout
    # A sentence is "spoken" when its first audio reaches the sink (or when done, with no voice).
    subtitle_stage = "first_audio" if voice is not None else "done"

    def on_event(event) -> None:
        if event.stage == "chunked" and getattr(event, "part", None) != "tail":
            run.sentences += 1
        elif event.stage == "done":
            if wav is not None:
                wav.checkpoint()  # called by the sink worker after the sentence's last chunk: it is whole
        elif event.stage == "error":
            if event.error.startswith("sink:"):  # the audio cannot go anywhere: stop
                if run.sink_error is None:
                    run.sink_error = event.error.removeprefix("sink: ")
                run.wake.set()
            else:
                run.failed.add(event.seq)
        if args.text and event.stage == subtitle_stage and not run.reader_gone:
            try:
                print(event.text, file=subtitle_out, flush=True)
            except (OSError, ValueError):  # BrokenPipeError, or ValueError: the stream was closed under us
                run.reader_left(subtitle_out)
        if getattr(sink, "broken", False):  # PcmSink: the reader of the PCM has gone
            run.reader_left(None)

    pipeline = Pipeline(
        translator=translator,
        voice=voice,
        sink=sink,
        src_lang=src_lang,
        tgt_lang=tgt_lang,
        lang="en" if _translates(args) else args.lang,
        speed=args.speed,
        code=args.code,
        on_event=on_event,
        # A dry run has no voice but prints what it would say: cues in the voice's language (Japanese).
        cue_lang="ja" if args.dry_run else None,
        **pipeline_options(args),
    )
    run.pipeline = pipeline
    threading.Thread(target=run.watch, name="run-watch", daemon=True).start()
    try:
        pipeline.warm()  # before the first text arrives: its first sentence pays no start-up cost
        logger.info("ready")
        try:
            for piece in pieces:
                pipeline.feed(piece)
        except BinaryInput as err:  # found in the first KB: whatever was fed before is dropped too
            run.end(2, _binary_message(err))
        # Off the main thread: close() waits for the last audio and the model call in flight, and a
        # signal must find the main thread in a short wait, not inside close().
        in_background(pipeline.close, name="close")
    except (AudioDeviceError, PipelineError) as err:  # the device failed, or a worker died
        run.end(1, f"mlx-stream-tts: {err}", cut_short=True)
    except OSError as err:
        if wav is None or wav.kept_seconds is not None or wav.error is not err:
            raise
        run.finish()  # finishing the WAV failed (WavSink.close): it removed its temporary file
        say(f"mlx-stream-tts: cannot finish {wav.path}: {err.strerror or err}; no file written.")
        return 1
    run.finish()
    if run.sink_error is not None:  # failed while the last audio went out: the sink is closed already
        say(" ".join(filter(None, (run.sink_failure(), run.wav_note(cut_short=True)))))
        return 1
    if run.reader_gone:
        return 0
    if run.failed:
        note = ""
        if wav is not None and wav.kept_seconds == 0:  # nothing could be spoken: an empty WAV would mislead
            try:
                os.unlink(wav.path)
                note = f"; no file written at {wav.path}"
            except OSError:
                pass
        say(f"mlx-stream-tts: {len(run.failed)} of {run.sentences} sentences could not be spoken "
             f"(see the errors above){note}")
        return 1
    return 0


def _translates(args: argparse.Namespace) -> bool:
    return args.to.lower() not in ("none", "off", "")


def load_stages(args: argparse.Namespace):
    """(translator or None, voice or None, source language, target language, phrase cache or None).

    The stages come wrapped by the phrase cache unless ``--no-cache`` (or $MLX_STREAM_TTS_NO_CACHE).
    Raises SystemExit with a one-line message when a model cannot be loaded.
    """
    translator = None
    src_lang, tgt_lang = "eng_Latn", "jpn_Jpan"
    if _translates(args):
        from .translate import Translator, resolve_lang

        try:
            src_lang, tgt_lang = resolve_lang(args.source), resolve_lang(args.to)
        except ValueError as err:
            raise SystemExit(f"mlx-stream-tts: {err}") from None
        try:
            translator = Translator.load(_translator_source(args), backend=args.backend)
        except FileNotFoundError as err:
            if not getattr(args, "dry_run", False):
                raise SystemExit(f"mlx-stream-tts: {err}") from None
            # A dry run still shows the sentences, cleanup and cues: in English, and says so.
            logger.warning("no translator (%s): the dry run prints the English that would be translated", err)
        except (ValueError, RuntimeError) as err:  # RuntimeError: cpu.AcceleratorError
            raise SystemExit(f"mlx-stream-tts: {err}") from None

    voice = None
    if not args.no_voice:
        from .voice import Voice

        try:
            voice = Voice.load(args.voice_dir, voice=args.voice, precision=args.voice_precision, backend=args.backend,
                               trim=not args.no_trim)
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            raise SystemExit(f"mlx-stream-tts: {err}") from None

    cache = None
    if translator is not None or voice is not None:
        translator, voice, cache = _with_cache(args, translator, voice)
    if translator is not None:
        from .spans import ProtectedTranslator

        # Code, paths, commands, versions... never reach the model: placeholders there, the exact text
        # back in the Japanese. Outside the cache: its keys are then the masked sentences.
        translator = ProtectedTranslator(translator)
    return translator, voice, src_lang, tgt_lang, cache


def _translator_source(args: argparse.Namespace):
    """The translator to load: --translator, else --model-dir, else the default NLLB folder."""
    from .translate import default_model_dir

    return args.translator or args.model_dir or default_model_dir()


def _with_cache(args: argparse.Namespace, translator, voice):
    """Wrap the stages with the phrase cache: what a model said once is said again in milliseconds."""
    from .phrase_cache import CachedTranslator, CachedVoice, fingerprint, open_default_cache

    cache = open_default_cache(enabled=False if args.no_cache else None)
    if cache is None:
        return translator, voice, None
    try:
        if translator is not None:
            from .translate import device_dtype

            # What produced the words: the weights, the dtype they run in, and which code ran them (an
            # mlx-lm model says it itself: its prompt family and context setting count too).
            runner = "cpu" if getattr(translator, "accelerator", None) is not None else "mlx"
            model_id = (getattr(translator, "cache_id", None)
                        or f"nllb:{fingerprint(_translator_source(args))}:{device_dtype()}:{runner}")
            translator = CachedTranslator(translator, cache, model_id=model_id)
        if voice is not None:
            from convert.kokoro import default_model_dir as kokoro_dir

            # The readings (data/) decide what is said as much as the weights do.
            data = Path(__file__).resolve().parent / "data"
            voice_id = f"kokoro:{fingerprint(args.voice_dir or kokoro_dir())}:{fingerprint(data)}"
            voice = CachedVoice(voice, cache, voice_id=voice_id)
    except (OSError, ValueError) as err:
        logger.warning("phrase cache off: %s", err)
        cache.close()
        return getattr(translator, "inner", translator), getattr(voice, "inner", voice), None
    return translator, voice, cache


def pipeline_options(args: argparse.Namespace) -> dict:
    """The pacing options of `speak` and `serve`, as Pipeline keywords."""
    return {"sentence_gap": args.gap, "clause_gap": args.clause_gap, "early_start": not args.no_early_start}


def _binary_message(err: BinaryInput) -> str:
    return f"mlx-stream-tts: {err}; use --format text to speak it anyway"


def _speak_to_server(args: argparse.Namespace) -> int:
    """`speak --server`: the input goes to the warm service; nothing heavy is imported here."""
    from . import client

    address = _address(args)
    stream = _open_input(args.input)
    reader_gone = [False]

    def on_spoken(text: str) -> None:
        if args.text and not reader_gone[0]:
            try:
                print(text, flush=True)
            except (BrokenPipeError, ValueError):
                reader_gone[0] = True

    try:
        answer = client.speak(address, stream, fmt=args.format, tools=args.tools, interrupt=args.interrupt,
                              on_spoken=on_spoken)
    except (client.NoService, ConnectionError) as err:
        raise SystemExit(f"mlx-stream-tts: {err}") from None
    if reader_gone[0]:
        quiet(sys.stdout)
    if "error" in answer:
        print(f"mlx-stream-tts: the service says: {answer['error']}", file=sys.stderr)
        return 1
    if answer.get("interrupted"):
        print("mlx-stream-tts: interrupted by another request", file=sys.stderr)
        return 0
    if answer.get("failed"):
        print(f"mlx-stream-tts: {answer['failed']} of {answer.get('sentences')} sentences could not be spoken "
              "(see the service's log)", file=sys.stderr)
        return 1
    return 0


def _address(args: argparse.Namespace):
    from . import client

    try:
        return client.resolve(args.socket)
    except ValueError as err:
        raise SystemExit(f"mlx-stream-tts: {err}") from None


def _serve(args: argparse.Namespace) -> int:
    from .protocol import parse_address
    from .service import AlreadyRunning, Service

    if args.tcp is not None:
        try:
            address = parse_address(f"tcp:127.0.0.1:{args.tcp}")
        except ValueError as err:
            raise SystemExit(f"mlx-stream-tts: {err}") from None
    else:
        address = _address(args)
        if isinstance(address, tuple):
            raise SystemExit("mlx-stream-tts: serve listens on TCP only with --tcp PORT")
    if args.log:
        handler = logging.FileHandler(args.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    # The service says what it does (listening, loaded, each client) unless told to be quieter.
    if args.verbose == 0:
        logging.getLogger("mlx_stream_tts.service").setLevel(logging.INFO)

    def load(on_event):
        pipeline, info, service.cache = _serve_pipeline(args, on_event)
        return pipeline, info

    service = Service(address, load, hooks=not args.no_hooks)
    try:
        code = service.serve()
        if service.abandoned_load:  # stopped during the load: do not wait for it (nor tear MLX down under it)
            exit_now(code)
        return code
    except AlreadyRunning as err:
        raise SystemExit(f"mlx-stream-tts: {err}") from None
    except (ValueError, PermissionError) as err:
        raise SystemExit(f"mlx-stream-tts: {err}") from None
    except OSError as err:
        raise SystemExit(f"mlx-stream-tts: cannot listen on {address}: {err.strerror or err}") from None


def _serve_pipeline(args: argparse.Namespace, on_event):
    """The service's pipeline and a description of it (for `status`); raises on failure."""
    from .audio import WavSink, open_sink
    from .pipeline import Pipeline

    try:
        translator, voice, src_lang, tgt_lang, cache = load_stages(args)
    except SystemExit as err:  # a message for the clients, not an exit of the service's threads
        raise RuntimeError(str(err.code).removeprefix("mlx-stream-tts: ")) from None
    sink = open_sink(args.out, pcm=args.pcm, play=not args.no_play and voice is not None)
    subtitle_out = sys.stderr if args.pcm else sys.stdout

    def events(event) -> None:
        if event.stage == "done" and isinstance(sink, WavSink):
            sink.checkpoint()  # a WAV cut short (full disk, a stop) keeps whole sentences only
        if args.text and event.stage == ("first_audio" if voice is not None else "done"):
            try:
                print(event.text, file=subtitle_out, flush=True)
            except (OSError, ValueError):
                pass
        on_event(event)

    pipeline = Pipeline(translator=translator, voice=voice, sink=sink, src_lang=src_lang, tgt_lang=tgt_lang,
                        lang="en" if translator is not None else args.lang, speed=args.speed, code=args.code,
                        on_event=events, **pipeline_options(args))
    pipeline.warm()
    info = {
        "translator": f"{args.translator or args.model_dir or 'default'} ({src_lang} -> {tgt_lang})"
        if translator is not None else None,
        "voice": f"{args.voice} (speed {args.speed})" if voice is not None else None,
        "output": args.out or ("pcm on stdout" if args.pcm else "none" if args.no_play or voice is None else "sound card"),
        "cache": str(cache.path) if cache is not None else "off",
    }
    return pipeline, info, cache


def _status(args: argparse.Namespace) -> int:
    from . import client

    address = _address(args)
    try:
        info = client.request(address, "status")
    except client.NoService as err:
        print(f"mlx-stream-tts: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
    else:
        client.print_status(info, sys.stdout)
    return 0 if info.get("state") in ("ready", "loading", "starting") else 1


def _stop(args: argparse.Namespace) -> int:
    from . import client

    address = _address(args)
    try:
        client.request(address, "stop")
    except client.NoService as err:
        print(f"mlx-stream-tts: {err}", file=sys.stderr)
        return 1
    # Wait for it to be gone, so that a `serve` right after this finds the socket free.
    import time

    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            client.request(address, "status", timeout=0.5)
        except client.NoService:
            print("mlx-stream-tts: stopped the service", file=sys.stderr)
            return 0
        time.sleep(0.05)
    print("mlx-stream-tts: the service did not stop within 10 s", file=sys.stderr)
    return 1


#: A hook payload larger than this is not read whole (payloads are a few hundred bytes to a few KB).
_MAX_HOOK_PAYLOAD = 8 << 20


def _hook(args: argparse.Namespace) -> int:
    """Run by Claude Code for each hook event: hand the payload to the service and return at once.

    Whatever goes wrong, Claude must not be disturbed: a log line on stderr and exit 0.
    """
    from . import client, hooks

    try:
        data = sys.stdin.buffer.read(_MAX_HOOK_PAYLOAD)
    except (OSError, ValueError) as err:
        logger.warning("hook: cannot read the payload: %s", err)
        return 0
    payload = hooks.read_payload(data)
    if payload is None:
        return 0
    payload = hooks.slim_payload(payload)  # what the service uses; the prompt's text stays here
    try:
        address = client.resolve(args.socket)
        import shlex

        serve_args = shlex.split(args.serve_args or os.environ.get("MLX_STREAM_TTS_SERVE_ARGS", ""))
        what = client.deliver_hook(address, payload, start=not args.no_start, serve_args=serve_args)
    except (OSError, ValueError) as err:
        logger.warning("hook: cannot hand the payload to the service: %s", err)
        return 0
    logger.info("hook %s: %s", payload.get("hook_event_name"), what)
    return 0


def _install_hook(args: argparse.Namespace) -> int:
    from . import hooks

    path = Path(args.settings) if args.settings else hooks.settings_path(project=args.project)
    command = args.command_line or _hook_command()
    try:
        if args.uninstall:
            changed = hooks.uninstall(path, command)
        else:
            changed = hooks.install(path, command)
    except (OSError, ValueError) as err:
        raise SystemExit(f"mlx-stream-tts: {err}") from None
    verb = "removed from" if args.uninstall else "added to"
    print(f"mlx-stream-tts: hooks {verb} {path}" if changed else f"mlx-stream-tts: {path} already up to date")
    return 0


def _hook_command() -> str:
    import shlex
    import shutil

    script = shutil.which("mlx-stream-tts")
    if script:
        return f"{shlex.quote(str(Path(script).resolve()))} hook"
    return f"{shlex.quote(sys.executable)} -m mlx_stream_tts hook"


def _convert(args: argparse.Namespace) -> int:
    return args.convert_run(args)


def build_parser(convert_commands: bool = True) -> argparse.ArgumentParser:
    """The command line; ``convert_commands=False`` leaves out the converters' options, whose modules
    import NumPy: the service's clients (`status`, `speak --server`, `hook`) must start in tens of ms."""
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
        epilog="exit status: 0 when everything was spoken or written, or when the reader of the output left "
               "(`| head`); 1 when a sentence could not be spoken or written (the count is printed), a model "
               "could not be loaded, or the output failed (a full disk: a --out WAV keeps its whole sentences, "
               "or is not written); 2 for bad usage; 128+N on signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP: "
               "the run stops at once, a second signal leaves without cleaning up).",
    )
    speak.add_argument("input", nargs="?", default="-", help="input file, or - for stdin")
    speak.add_argument("--format", choices=["auto", "stream-json", "text"], default="auto", help="input format")
    speak.add_argument("--tools", action="store_true", help="speak a short summary of each tool call")
    speak.add_argument("--dry-run", action="store_true",
                       help="print what would be spoken, one sentence per line, through the same cleanup, code cues "
                            "and translation as speech (the translator loads when translating; the voice never does)")
    speak.add_argument("--server", action="store_true",
                       help="send the input to the warm service (`mlx-stream-tts serve`) instead of loading the models; "
                            "the model and output options are the service's then")
    speak.add_argument("--interrupt", action="store_true", help="with --server: cut what the service is saying and go first")
    _add_socket_option(speak)
    _add_model_options(speak)
    speak.set_defaults(func=_speak)

    serve = sub.add_parser(
        "serve",
        help="the warm service: load the models once and speak for `speak --server` and Claude Code hooks",
        formatter_class=fmt,
    )
    _add_socket_option(serve)
    serve.add_argument("--tcp", type=int, metavar="PORT",
                       help="listen on 127.0.0.1:PORT instead of the Unix socket (no authentication: any local user "
                            "can make it speak; clients use --socket tcp:PORT)")
    serve.add_argument("--log", metavar="FILE", help="also append the service's log to FILE")
    serve.add_argument("--no-hooks", action="store_true", help="refuse Claude Code hook requests")
    _add_model_options(serve)
    serve.set_defaults(func=_serve)

    for name, func, help_text in (
        ("status", _status, "say whether a service answers, what it has loaded and what it is saying (exit 0 if it answers)"),
        ("stop", _stop, "stop the service"),
    ):
        cmd = sub.add_parser(name, help=help_text, formatter_class=fmt)
        _add_socket_option(cmd)
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="print the service's answer as JSON")
        cmd.set_defaults(func=func)

    hook = sub.add_parser(
        "hook",
        help="the Claude Code hook command: reads the hook's JSON on stdin and hands it to the service",
        formatter_class=fmt,
    )
    _add_socket_option(hook)
    hook.add_argument("--no-start", action="store_true", help="do not start a service when none runs")
    hook.add_argument("--serve-args", metavar="ARGS",
                      help="options for a service the hook starts, e.g. \"--voice jf_nezumi --speed 1.2\" "
                           "(default: $MLX_STREAM_TTS_SERVE_ARGS)")
    hook.set_defaults(func=_hook)

    install = sub.add_parser(
        "install-hook",
        help="add the hooks to Claude Code's settings (~/.claude/settings.json, or the project's with --project)",
        formatter_class=fmt,
    )
    install.add_argument("--project", action="store_true", help="this project's .claude/settings.json")
    install.add_argument("--settings", metavar="FILE", help="another settings file")
    install.add_argument("--uninstall", action="store_true", help="remove our hooks instead")
    install.add_argument("--command", dest="command_line",
                         help="the command Claude Code runs (default: this installation's mlx-stream-tts, by its "
                              "full path, since Claude Code may run without this environment on its PATH)")
    install.set_defaults(func=_install_hook)

    convert = sub.add_parser("convert", help="convert model weights to this package's MLX format", formatter_class=fmt)
    if convert_commands:
        add_convert_commands(convert)
    return parser


def _add_socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH",
                        help="the service's socket (or tcp:PORT); default: $MLX_STREAM_TTS_SOCKET, else "
                             "$XDG_RUNTIME_DIR/mlx_stream_tts/service.sock, else <cache>/run/service.sock")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """What is loaded and where the speech goes: the same for `speak` and `serve`."""
    add = parser.add_argument
    add("--to", default="ja", help="target language (ja, jpn_Jpan, ...), or 'none' to speak the text as it is")
    add("--from", dest="source", default="eng_Latn", help="source language of the text")
    add("--lang", default="ja", help="language of the input text when --to none (for sentence splitting)")
    add("--voice", default="jf_alpha", help="Kokoro voice name")
    add("--speed", type=float, default=1.0, help="speech speed factor")
    add("--out", metavar="FILE.wav", help="write the speech to a WAV file instead of playing it")
    add("--pcm", action="store_true", help="write raw 16-bit 24 kHz mono PCM to stdout (| aplay -f S16_LE -r 24000)")
    add("--no-play", action="store_true", help="synthesize but do not play (timing runs)")
    add("--no-voice", action="store_true", help="no speech at all (with --text: subtitles only)")
    add("--text", action="store_true", help="print each sentence as it is spoken, like subtitles")
    add("--code", choices=["cue", "skip", "read"], default="cue", help="what to say for code blocks")
    add("--model-dir", help="converted NLLB model folder (default: the cache folder)")
    add("--translator", metavar="ID_OR_FOLDER",
        help="the translation model instead of NLLB: a hub id (e.g. LiquidAI/LFM2-350M-ENJP-MT) or a folder of a "
             "decoder-only model that mlx-lm runs (see the README's 'Choosing a translator'); a converted NLLB "
             "folder works too")
    add("--backend", choices=("auto", "mlx", "cpu"), default="auto",
        help="auto = the CPU accelerator where MLX runs on a CPU that supports it, else the pure MLX "
             "models (a GPU); mlx = the pure models; cpu = the accelerator or an error saying why not "
             "(MLX_STREAM_TTS_BACKEND=mlx forces the pure models)")
    add("--voice-precision", choices=("auto", "int8", "float32"), default="auto",
        help="the vocoder's convolutions with the CPU accelerator: auto = int8 where its kernel runs (AVX-512 VNNI)")
    add("--voice-dir", help="converted Kokoro folder (default: built from the shipped voice once, cached)")
    add("--gap", type=float, default=0.2, metavar="SECONDS",
        help="silence between sentences spoken back to back (the voice's own leading/trailing silence is trimmed)")
    add("--clause-gap", type=float, default=0.1, metavar="SECONDS",
        help="silence between the parts of a long sentence started early")
    add("--no-early-start", action="store_true",
        help="always wait for a sentence's end (by default, when nothing is being said, a long sentence starts "
             "at its first clause boundary)")
    add("--no-trim", action="store_true", help="keep the voice's own leading and trailing silence")
    add("--no-cache", action="store_true",
        help="don't use the phrase cache (sentence -> translation -> audio, kept in <cache>/phrases.sqlite3; "
             "also MLX_STREAM_TTS_NO_CACHE=1)")


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
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(convert_commands="convert" in words)
    args = parser.parse_args(argv)
    if getattr(args, "command", None) in ("speak", "serve"):
        if args.pcm and args.out:
            parser.error("--pcm and --out are exclusive")
        if args.speed <= 0:
            parser.error("--speed must be positive")
        if args.gap < 0 or args.clause_gap < 0:
            parser.error("--gap and --clause-gap must be >= 0")
        if args.translator and args.model_dir:
            parser.error("--translator and --model-dir are exclusive (--translator takes an NLLB folder too)")
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", handlers=[StderrHandler()])
    run = run_control.new_run()
    if args.command == "speak":
        run.install()  # SIGTERM and SIGHUP end a run as Ctrl-C does
    try:
        return args.func(args)
    except Interrupted as err:
        if run.local:  # models and their threads in this process: leave now, without waiting for them
            run.interrupted(err)
        say(f"\nmlx-stream-tts: stopped ({signal.Signals(err.signum).name}).")
        return err.code
    except KeyboardInterrupt:
        say("\nmlx-stream-tts: stopped.")
        return 130
    except BrokenPipeError:
        quiet(sys.stdout)
        return 0
    finally:
        run.uninstall()


if __name__ == "__main__":
    sys.exit(main())
