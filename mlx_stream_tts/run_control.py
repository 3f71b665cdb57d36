"""How a `speak` run ends, whatever ends it: a signal, the reader of its output leaving, the output failing.

:class:`Run` is the controller the command line (cli.py) gives each local `speak`: it turns SIGINT,
SIGTERM and SIGHUP into :class:`Interrupted` in the main thread, ends the run from any thread with one
line and the right exit code (:meth:`Run.end`), and leaves with ``os._exit`` (:func:`exit_now`) so that
MLX's threads are abandoned rather than torn down. The helpers around it keep logging quiet once
stderr is gone and run blocking work off the main thread (:func:`in_background`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import NoReturn

class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived; ``code`` is the exit code that says which (128 + signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.code = 128 + signum


class Run:
    """How a `speak` run ends early, whatever ends it: SIGINT, SIGTERM or SIGHUP; the reader of our output
    leaving (`| head`, on stdout or stderr); or the audio output failing (a full disk).

    The first signal raises :class:`Interrupted` in the main thread, whose waits are short, and the run
    ends within milliseconds: the pipeline is cancelled (the sound stops), a WAV keeps its whole
    sentences, one line says so, stdio is flushed and the process leaves with ``os._exit``: MLX's
    threads and a model call in flight are abandoned, not waited for, and their C++ teardown (which
    can abort at interpreter exit) never runs. A second signal leaves at once. Exit codes: 128 + the
    signal (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP), as shells report a process killed by
    it; 0 when the reader left; 1 when the output failed.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.local = False  # the models run in this process (`speak` without --server or --dry-run)
        self.pipeline = None
        self.sink = None
        self.signum: int | None = None
        self.sentences = 0  # sentences read (chunked) so far
        self.failed: set[int] = set()  # sentences a stage failed on (the pipeline logs each failure once)
        self.sink_error: str | None = None
        self.reader_gone = False
        self.stderr_gone = False
        self.wake = threading.Event()  # watch() looks now
        self._ending = threading.Lock()  # held by whoever ends the run, or by finish() when it ended normally
        self._filters: list[logging.Filter] = []
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Handle SIGINT, SIGTERM and SIGHUP (only possible on the main thread; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        """Put back the signal handlers and log filters (main() run in-process, by tests)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        for log_filter in self._filters:
            logging.getLogger("mlx_stream_tts.pipeline").removeFilter(log_filter)

    def filter_pipeline_log(self, log_filter: logging.Filter) -> None:
        logging.getLogger("mlx_stream_tts.pipeline").addFilter(log_filter)
        self._filters.append(log_filter)

    def _on_signal(self, signum: int, frame) -> None:
        if self.signum is not None or self._ending.locked():  # a second signal, or the run ends anyway
            self._abandon_wav()
            exit_now(128 + (self.signum or signum))
        self.signum = signum
        raise Interrupted(signum)

    def reader_left(self, stream) -> None:
        """Whoever reads our stdout or stderr has gone: stop (from any thread)."""
        if stream is not None:
            quiet(stream)
        self.reader_gone = True
        self.wake.set()

    def stderr_left(self) -> None:
        quiet(sys.stderr)
        self.stderr_gone = True
        self.reader_left(None)

    def watch(self) -> None:
        """The watcher thread of a local run: ends it when the reader leaves or the output fails. (The
        timeout notices a PcmSink whose reader left between two events.) Returns once the run ended
        normally (main() called in-process must not leave it behind)."""
        while not self._ending.locked():
            self.wake.wait(0.05)
            self.wake.clear()
            if getattr(self.sink, "broken", False):
                self.reader_gone = True
            if self.sink_error is not None:
                self.end(1, self.sink_failure(), cut_short=True)
            if self.reader_gone:
                self.end(0, None, cut_short=True)

    def end(self, code: int, message: str | None, cut_short: bool = False) -> NoReturn:
        """Stop everything now and leave the process with ``code``, from any thread: the first caller
        ends the run, later ones wait for it to exit."""
        self._ending.acquire()
        # Should cleaning up ever hang (a stuck audio driver), leave anyway.
        backstop = threading.Timer(1.0, exit_now, (code,))
        backstop.daemon = True
        backstop.start()
        if self.pipeline is not None:
            self.pipeline.cancel()  # drops everything pending; the sound stops at once
        note = self._finish_wav(cut_short)
        if note:  # a WAV was cut short: say what it holds, even when the reader left
            message = f"{message} {note}" if message else f"mlx-stream-tts: {note}"
        exit_now(code, message)

    def interrupted(self, err: Interrupted) -> NoReturn:
        self.end(err.code, f"\nmlx-stream-tts: stopped ({signal.Signals(err.signum).name}).", cut_short=True)

    def finish(self) -> None:
        """The run ended normally: from now on a signal leaves at once. Waits for a run ending early."""
        self._ending.acquire()

    def sink_failure(self) -> str:
        error = getattr(self.sink, "error", None)
        if error is not None:  # a WAV: the file system refused it
            return f"mlx-stream-tts: cannot write {self.sink.path}: {error.strerror or error}; stopped."
        return f"mlx-stream-tts: the audio output failed ({self.sink_error}); stopped."

    def wav_note(self, cut_short: bool) -> str | None:
        """What a closed WAV holds, in words (None: not a WAV, or a whole run's WAV: nothing to say)."""
        from .audio import WavSink

        wav = self.sink
        if not isinstance(wav, WavSink):
            return None
        if wav.kept_seconds is None:
            return f"No sentence was complete: no file written at {wav.path}."
        if not cut_short:
            return None
        return (f"Kept the first {wav.checkpoints} of {sentences(self.sentences)} in {wav.path} "
                f"({wav.kept_seconds:.1f} s, a valid WAV).")

    def _finish_wav(self, cut_short: bool) -> str | None:
        close = getattr(self.sink, "close", None)
        if getattr(self.sink, "part_path", None) is None:  # not a WAV: nothing to finish
            return None
        try:
            close(complete_only=cut_short)
        except OSError as err:
            return f"{self.sink.path} could not be finished ({err.strerror or err}): no file written."
        return self.wav_note(cut_short)

    def _abandon_wav(self) -> None:
        """Leaving without finishing: remove a WAV's temporary file (the target stays as it was)."""
        part = getattr(self.sink, "part_path", None)
        if part is not None and getattr(self.sink, "kept_seconds", None) is None:
            try:
                os.unlink(part)
            except OSError:
                pass


#: The current command's run: what say() and the stderr handler report to (cli.main() makes a fresh
#: one per call with new_run()).
current = Run()


def new_run() -> Run:
    global current
    current = Run()
    return current


class SinkFailures(logging.Filter):
    """Drops the pipeline's per-sentence lines for the sink's failures (``"sentence %d: %s failed on
    %r: %r"`` with the stage ``"sink"``): the command says it once, with what was kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) > 1 and args[1] == "sink")


class StderrHandler(logging.StreamHandler):
    """Log lines on stderr that go quiet, once, when stderr's reader has gone (`2>&1 | head`), instead
    of a "Logging error" report per line; a `speak` run then stops, as when stdout's reader leaves."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], (OSError, ValueError)):  # BrokenPipeError, or a closed stream
            current.stderr_left()
        else:
            super().handleError(record)


def say(text: str) -> None:
    """One line for the user on stderr (nothing, and no error, once nobody reads it)."""
    if current.stderr_gone:
        return
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        current.stderr_left()


def quiet(stream) -> None:
    """Point ``stream``'s descriptor at /dev/null once its reader has gone (`| head`): what is still
    buffered, and whatever is written later, goes nowhere instead of raising BrokenPipeError, at exit
    too (what the Python docs recommend for SIGPIPE-like handling)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def exit_now(code: int, message: str | None = None) -> NoReturn:
    """Say ``message``, flush stdio and leave the process without interpreter teardown: the threads of
    MLX and of the pipeline are abandoned (their C++ destructors can abort when run at exit), and
    nothing waits for a model call in flight. Saying and flushing get 0.1 s: a stalled reader of
    stdout or stderr must not hold us."""

    def flush() -> None:
        if message:
            say(message)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass

    flusher = threading.Thread(target=flush, name="exit-flush", daemon=True)
    flusher.start()
    flusher.join(0.1)
    os._exit(code)


def in_background(func, *args, name: str):
    """``func(*args)`` on a helper thread while the main thread waits in short slices: loading the models
    keeps the interpreter busy in C for long stretches (MLX, NumPy), and a signal's handler only runs
    on the main thread, between bytecodes. On a signal the helper is abandoned (the process leaves)."""
    from .threads import release_thread_streams

    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["value"] = func(*args)
        except BaseException as err:  # noqa: BLE001 - re-raised on the main thread
            outcome["error"] = err
        finally:
            release_thread_streams()  # MLX ran here: free this thread's streams before it ends

    helper = threading.Thread(target=call, name=name, daemon=True)
    helper.start()
    while helper.is_alive():
        helper.join(0.05)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")


def sentences(n: int) -> str:
    return f"{n} sentence" if n == 1 else f"{n} sentences"


def os_error(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)
