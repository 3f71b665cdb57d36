"""The warm service: models loaded once, speech for many clients through one Unix socket.

``mlx-stream-tts serve`` builds one :class:`~mlx_stream_tts.pipeline.Pipeline` and hands it to
:class:`Service`, which listens (a Unix socket in a private folder, or loopback TCP when asked),
and speaks for its clients one after the other:

- ``speak`` requests (``mlx-stream-tts speak --server``) stream their input in; they are served in
  the order they arrive. ``interrupt`` cuts what is being said and goes first. A client that goes
  away before it ended its input (or while its speech is still being made) loses only its own speech.
- ``hook`` requests carry a Claude Code hook payload to :class:`~mlx_stream_tts.hooks.HookSessions`,
  which follows the session's transcript and speaks each assistant text once; a new prompt stops
  the previous turn's speech.
- ``status``, ``stop`` and ``cancel`` answer at once, also while the models are still loading.

One speaker at a time owns the pipeline (:class:`_Speaker`): the pipeline has a single queue of
sentences and ``cancel()`` drops all of it, so serving clients in turn is what makes "cancel only
this client's speech" true.

Liveness is a lock, not the socket file: the service holds ``flock`` on ``<socket>.lock`` for its
whole life, so a second ``serve`` knows a first one is alive (even while it loads), and a socket file
left by a killed service is reclaimed without guessing.
"""

from __future__ import annotations

import collections
import fcntl
import itertools
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import protocol
from .protocol import LineReader, ProtocolError

logger = logging.getLogger(__name__)

#: ``load(on_event)`` builds the pipeline (calling ``on_event`` with its events) and says what it loaded.
Loader = Callable[[Callable[[Any], None]], tuple[Any, dict]]


class AlreadyRunning(RuntimeError):
    """Another service holds the socket."""


class _Cut(Exception):
    """The client's connection closed before its input ended."""


class _Owner:
    """Someone speaking through the pipeline: a ``speak`` client or a hook turn."""

    _ids = itertools.count(1)

    def __init__(self, kind: str, label: str, send: Callable[[dict], None] | None = None) -> None:
        self.id = next(self._ids)
        self.kind, self.label = kind, label
        self.send = send  # where this owner's events go (a speak client's connection)
        self.interrupted = False  # cut by a new prompt, an --interrupt client, or its own disconnect
        self.sentences = 0
        self.failed: set[int] = set()

    def describe(self) -> str:
        return f"{self.kind} #{self.id} ({self.label})"


class _Speaker:
    """First come, first served ownership of the pipeline; ``interrupt`` jumps the line."""

    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cancel = cancel
        self._cond = threading.Condition()
        self._line: collections.deque[_Owner] = collections.deque()
        self.owner: _Owner | None = None

    def acquire(self, who: _Owner, interrupt: bool = False, alive: Callable[[], bool] = lambda: True) -> bool:
        """Wait for the turn of ``who``; False when ``alive()`` turned false while waiting."""
        with self._cond:
            if interrupt:
                self._line.appendleft(who)
                self.interrupt_current()
            else:
                self._line.append(who)
            while self.owner is not None or self._line[0] is not who:
                self._cond.wait(timeout=0.5)
                if not alive() or who.interrupted:
                    self._line.remove(who)
                    self._cond.notify_all()
                    return False
            self._line.popleft()
            self.owner = who
            return True

    def release(self, who: _Owner) -> None:
        with self._cond:
            if self.owner is who:
                self.owner = None
                self._cond.notify_all()

    def interrupt_current(self, kind: str | None = None) -> _Owner | None:
        """Cut the current owner's speech (only if it is of ``kind``, when given)."""
        with self._cond:
            owner = self.owner
            if owner is None or (kind is not None and owner.kind != kind):
                return None
            owner.interrupted = True
        self._cancel()
        return owner

    def waiting(self) -> int:
        with self._cond:
            return len(self._line)


class _FrameStream:
    """A read-only binary stream over a client's input frames (what ``source.iter_text`` reads)."""

    def __init__(self, reader: LineReader) -> None:
        self._reader = reader
        self.ended = False

    def read1(self, size: int = -1) -> bytes:
        if self.ended:
            return b""
        try:
            data = self._reader.read_frame()
        except OSError:  # a reset: the client closed with our answers unread
            data = None
        if data is None:
            raise _Cut()
        if not data:
            self.ended = True
        return data

    read = read1


class Service:
    """Serves speech over a socket until ``stop``.

    Args:
        address: a Unix socket path, or a loopback ``(host, port)``.
        load: builds the pipeline, see :data:`Loader`; run after the socket is open, so that
            ``status`` answers while the models load.
        hooks: follow Claude Code transcripts for ``hook`` requests (``hooks.HookSessions``).
    """

    def __init__(self, address: Path | tuple[str, int], load: Loader, *, hooks: bool = True) -> None:
        self.address = address
        self._load = load
        self._use_hooks = hooks
        self.pipeline: Any = None
        self.loaded: dict = {}
        self.state = "starting"  # starting -> loading -> ready | failed -> stopping
        self.error: str | None = None
        self.saying: str | None = None  # the sentence whose audio reached the sink last
        self.started = time.time()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._lock_fd: int | None = None
        self._speaker = _Speaker(self._cancel_speech)
        self._hook_q: queue.Queue = queue.Queue()
        self._hook_sessions: Any = None
        self._hook_turn: _Owner | None = None  # the hook turn being spoken (or waiting for its turn)
        self._hook_gens: dict[str, int] = {}  # per session: bumped by each new prompt
        self.served = 0
        self.cache: Any = None  # a PhraseCache, for its numbers in `status`
        self.abandoned_load = False  # serve() stopped while the models were loading

    # -- life cycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Take the lock and listen. Raises AlreadyRunning, ValueError (bad path) or OSError."""
        if isinstance(self.address, tuple):
            family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(self.address)
            except OSError as err:
                sock.close()
                if err.errno == 98 or "in use" in str(err):
                    raise AlreadyRunning(f"port {self.address[1]} is in use (another service?)") from None
                raise
        else:
            path = self.address
            protocol.check_socket_path(path)
            protocol.private_dir(path.parent)
            self._lock_fd = os.open(protocol.lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise AlreadyRunning(f"a service is already running on {path} (see `mlx-stream-tts status`)") from None
            if path.exists() or path.is_symlink():
                logger.info("removing the stale socket %s left by a service that is gone", path)
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
            try:
                sock.bind(os.fspath(path))
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            os.ftruncate(self._lock_fd, 0)
            os.write(self._lock_fd, f"{os.getpid()}\n".encode())
        sock.listen(socket.SOMAXCONN)
        self._listener = sock
        self._start_thread(self._accept_loop, "accept")
        self._start_thread(self._hook_loop, "hooks")
        logger.info("listening on %s", self.where())

    def where(self) -> str:
        return f"tcp:{self.address[0]}:{self.address[1]}" if isinstance(self.address, tuple) else str(self.address)

    def load(self) -> bool:
        """Build the pipeline; False (and ``state == "failed"``) if it cannot be built."""
        self.state = "loading"
        started = time.perf_counter()
        try:
            pipeline, self.loaded = self._load(self._on_event)
            if self._stopping.is_set():  # stopped while loading: close() has run already
                pipeline.cancel()
                pipeline.close()
                return False
            self.pipeline = pipeline
            if self._use_hooks:
                from .hooks import HookSessions

                self._hook_sessions = HookSessions(
                    on_text=lambda sid, text: self._hook_put("text", sid, text),
                    on_interrupt=self._on_new_prompt,
                    on_turn_end=lambda sid: self._hook_put("end", sid),
                )
        except Exception as err:  # reported to every client; the service stays up to say why
            self.state, self.error = "failed", str(err) or repr(err)
            logger.error("cannot load the models: %s", self.error)
            self._ready.set()
            return False
        self.loaded = dict(self.loaded, load_s=round(time.perf_counter() - started, 2))
        self.state = "ready"
        self._ready.set()
        logger.info("ready in %.1f s: %s", self.loaded["load_s"], json.dumps(self.loaded, ensure_ascii=False))
        self._read_spool()
        # A hook that found no socket a moment before we bound it may still be writing its file.
        late = threading.Timer(1.0, self._read_spool)
        late.daemon = True
        late.start()
        return True

    def _read_spool(self) -> None:
        """Hand over the hook payloads left while no service listened (oldest first)."""
        if isinstance(self.address, tuple) or self._stopping.is_set():
            return
        folder = protocol.spool_dir(self.address)
        try:
            files = sorted(folder.glob("*.json"))
        except OSError:
            return
        for file in files:
            try:
                payload = json.loads(file.read_bytes())
                file.unlink()
            except (OSError, ValueError) as err:
                logger.warning("skipping the spooled hook payload %s: %s", file.name, err)
                try:
                    file.unlink()
                except OSError:
                    pass
                continue
            try:
                self._on_hook(payload)
            except Exception:
                logger.exception("while handling the spooled hook payload %s", file.name)

    def wait(self) -> None:
        """Block until ``stop`` (the main thread: signals arrive between the waits)."""
        while not self._stopping.wait(0.2):
            pass

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        """Stop listening, drop what is being said, close the pipeline and remove the socket."""
        self.state = "stopping"
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress (close() alone does not)
            except OSError:
                pass
            self._listener.close()
        self._hook_q.put(None)
        if self._hook_sessions is not None:
            self._hook_sessions.close()
        if self.pipeline is not None:
            self._speaker.interrupt_current()
            try:
                self.pipeline.cancel()
                self.pipeline.close()
            except Exception:
                logger.exception("while closing the pipeline")
        if not isinstance(self.address, tuple):
            try:
                self.address.unlink()
            except FileNotFoundError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock; the file stays (unlinking it would race a new service)
            self._lock_fd = None
        logger.info("stopped")

    def serve(self) -> int:
        """open(); load() on a thread; wait for a stop; close(). Returns an exit code (0, or 1 when the
        models could not be loaded).

        A stop is a `stop` request, or SIGINT, SIGTERM or SIGHUP: the first stops the service (what is
        being said is dropped); a second leaves at once (``os._exit``). The models load on a thread so
        that a signal during the load is handled at once; when the service stops before they are
        loaded, ``abandoned_load`` is set and the caller should leave with ``os._exit`` rather than
        wait for the load (or run MLX's teardown under it).
        """
        self.open()
        previous = {}

        def on_signal(signum, frame) -> None:
            if self._stopping.is_set():
                os._exit(128 + signum)  # asked twice: leave now
            logger.info("stopping (%s)", signal.Signals(signum).name)
            self.stop()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, on_signal)
        loader = self._start_thread(self.load, "load")
        try:
            self.wait()
        finally:
            self.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.abandoned_load = loader.is_alive()
        return 1 if self.error is not None else 0

    # -- connections -----------------------------------------------------------------------------

    def _start_thread(self, target: Callable, name: str, *args) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=f"service-{name}", daemon=True)
        thread.start()
        return thread

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed by close()
            self._start_thread(self._serve_client, "client", conn)

    def _serve_client(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        reader = LineReader(conn)

        def send(obj: dict) -> None:
            protocol.send_json(conn, obj)

        try:
            request = reader.read_json()
            if request is None:
                return
            op = request.get("op")
            if op == "status":
                send(self.status())
            elif op == "stop":
                send({"ok": True})
                logger.info("stop requested by a client")
                self.stop()
            elif op == "cancel":
                owner = self._speaker.interrupt_current()
                send({"ok": True, "cancelled": owner.describe() if owner else None})
            elif op == "hook":
                self._on_hook(request.get("payload"))
                send({"ok": True})
            elif op == "speak":
                self._serve_speak(request, reader, send, conn)
            else:
                send({"error": f"unknown request {op!r}"})
        except ProtocolError as err:
            logger.warning("a client sent something that is not our protocol: %s", err)
            self._try_send(send, {"error": f"protocol: {err}"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client has gone; its speech was dropped where that mattered
        except Exception as err:
            logger.exception("while serving a client")
            self._try_send(send, {"error": repr(err)})
        finally:
            try:
                # shutdown first: a watcher thread blocked in recv() on it would otherwise keep the
                # connection open (close() alone does not wake it), and the client would wait.
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    @staticmethod
    def _try_send(send: Callable[[dict], None], obj: dict) -> None:
        try:
            send(obj)
        except OSError:
            pass

    def status(self) -> dict:
        owner = self._speaker.owner
        info: dict[str, Any] = {
            "ok": True,
            "pid": os.getpid(),
            "state": self.state,
            "address": self.where(),
            "uptime_s": round(time.time() - self.started, 1),
            "loaded": self.loaded,
            "speaking": owner.describe() if owner else None,
            "saying": self.saying if owner else None,
            "waiting": self._speaker.waiting(),
            "served": self.served,
        }
        if self.error:
            info["error"] = self.error
        if self.cache is not None:
            info["cache"] = self.cache.stats()
        return info

    def _wait_ready(self, send: Callable[[dict], None]) -> bool:
        self._ready.wait()
        if self.state != "ready":
            send({"error": f"the service could not load its models: {self.error}"})
            return False
        return True

    # -- speak requests ----------------------------------------------------------------------------

    def _serve_speak(self, request: dict, reader: LineReader, send: Callable[[dict], None], conn: socket.socket) -> None:
        from .source import BinaryInput, iter_text

        fmt = request.get("format", "auto")
        if fmt not in ("auto", "stream-json", "text"):
            raise ProtocolError(f"unknown format {fmt!r}")
        owner = _Owner("speak", str(request.get("label") or fmt), send)
        if not self._wait_ready(send):
            return
        gone = threading.Event()  # set when the client's connection closes while we are not reading it
        if not self._speaker.acquire(owner, bool(request.get("interrupt")), alive=lambda: not self._stopping.is_set()):
            send({"error": "interrupted before its turn"})
            return
        self.served += 1
        logger.info("%s: speaking", owner.describe())
        stream = _FrameStream(reader)
        try:
            try:
                for piece in iter_text(stream, fmt, tools=bool(request.get("tools"))):  # type: ignore[arg-type]
                    if owner.interrupted or self._stopping.is_set():
                        break
                    self.pipeline.feed(piece)
            except BinaryInput as err:
                owner.interrupted = True
                self._cancel_speech()
                send({"error": f"{err}; use format 'text' to speak it anyway"})
                return
            except _Cut:
                owner.interrupted = True
                logger.info("%s: the client went away mid-stream; its speech is dropped", owner.describe())
                self._cancel_speech()
                return
            if not owner.interrupted:
                # Its input is complete: say it all, unless the client leaves while we do.
                self._start_thread(self._watch_disconnect, "watch", conn, owner, gone)
                self.pipeline.flush()
            send({"done": True, "sentences": owner.sentences, "failed": len(owner.failed),
                  "interrupted": owner.interrupted})
        finally:
            gone.set()
            self._speaker.release(owner)
            logger.info("%s: finished (%d sentences%s)", owner.describe(), owner.sentences,
                        ", interrupted" if owner.interrupted else "")

    def _watch_disconnect(self, conn: socket.socket, owner: _Owner, done: threading.Event) -> None:
        try:
            data = conn.recv(1)  # the client sends nothing more: this returns when it closes
        except OSError:
            data = b""
        if not data and not done.is_set() and self._speaker.owner is owner:
            owner.interrupted = True
            logger.info("%s: the client went away; its speech is dropped", owner.describe())
            self._cancel_speech()

    def _cancel_speech(self) -> None:
        if self.pipeline is not None:
            self.pipeline.cancel()

    def _on_event(self, event) -> None:
        owner = self._speaker.owner
        stage = event.stage
        if stage == "chunked" and owner is not None and getattr(event, "part", None) != "tail":
            owner.sentences += 1  # a tail is the rest of a sentence counted at its head
        elif stage == "error" and owner is not None:
            owner.failed.add(event.seq)
        spoken = stage == "first_audio" or (stage == "done" and getattr(self.pipeline, "voice", 1) is None)
        if spoken:
            self.saying = event.text
        if owner is not None and owner.send is not None and (spoken or stage == "error"):
            payload = {"event": "spoken", "text": event.text} if spoken else {"event": "error", "error": event.error}
            try:
                owner.send(payload)
            except OSError:
                pass  # a gone client is noticed by its own thread

    # -- hooks ----------------------------------------------------------------------------------

    def _on_hook(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            raise ProtocolError("a hook request needs a JSON object payload")
        if self._hook_sessions is None:
            # Still loading: keep it; the hook loop hands it over once the pipeline exists.
            self._hook_q.put(("payload", None, payload, 0))
            return
        self._hook_sessions.handle(payload)

    def _hook_put(self, kind: str, sid: str, value: str | None = None) -> None:
        self._hook_q.put((kind, sid, value, self._hook_gens.get(sid, 0)))

    def _on_new_prompt(self, session_id: str) -> None:
        # A new prompt: that session's previous turn stops now, not when the hook loop gets to it,
        # and what it had queued is dropped (its generation is over).
        self._hook_gens[session_id] = self._hook_gens.get(session_id, 0) + 1
        turn = self._hook_turn
        if turn is not None and turn.label == _session_label(session_id):
            turn.interrupted = True
            if self._speaker.owner is turn:
                self._cancel_speech()
                logger.info("%s: a new prompt; its speech stops", turn.describe())

    def _hook_loop(self) -> None:
        """Feeds hook turns' text to the pipeline, one turn at a time, in the order it came."""
        while True:
            item = self._hook_q.get()
            if item is None:
                return
            kind, sid, value, gen = item
            if kind == "payload":
                self._ready.wait()
                if self._hook_sessions is not None:
                    try:
                        self._hook_sessions.handle(value)
                    except Exception:
                        logger.exception("while handling a hook payload")
                continue
            turn = self._hook_turn
            if turn is not None and (turn.interrupted or turn.label != _session_label(sid)):
                self._end_hook_turn(flush=not turn.interrupted)
                turn = None
            if gen != self._hook_gens.get(sid, 0):
                continue  # from a turn that a newer prompt of the session replaced
            if kind == "text" and value:
                if turn is None:
                    turn = self._hook_turn = _Owner("hook", _session_label(sid))
                    self._ready.wait()
                    if self.state != "ready" or not self._speaker.acquire(
                            turn, alive=lambda: not self._stopping.is_set()):
                        self._hook_turn = None
                        continue
                    self.served += 1
                try:
                    self.pipeline.feed(value)
                except Exception:
                    logger.exception("while feeding hook text")
            elif kind == "end" and turn is not None:
                self._end_hook_turn(flush=True)

    def _end_hook_turn(self, flush: bool) -> None:
        turn = self._hook_turn
        if turn is None:
            return
        if flush and self._speaker.owner is turn:
            try:
                self.pipeline.flush()  # returns early if a new prompt cancels it
            except Exception:
                logger.exception("while speaking a hook turn")
        self._speaker.release(turn)
        self._hook_turn = None


def _session_label(session_id: Any) -> str:
    return f"session {str(session_id)[:8]}"


