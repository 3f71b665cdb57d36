"""Claude Code hooks: make interactive ``claude`` sessions speak through a warm local service.

Two sides share this module. The hook side (``mlx-stream-tts hook``, run by Claude Code for each
event with the event's JSON on stdin) only reads and checks the payload (:func:`read_payload`,
:func:`slim_payload`) and hands it to the service: it must return at once, so this module imports
nothing but the standard library at module level. :func:`install` / :func:`uninstall` edit Claude
Code's settings file. The service side (:class:`HookSessions`) turns the events into speech by
following each session's transcript (``transcript.py``).

Events used (hooks reference, https://code.claude.com/docs/en/hooks):

* ``UserPromptSubmit``: a new turn. The previous turn's speech stops and the transcript is followed
  from its current end; assistant text is spoken as each text block lands in the file, long before
  the turn ends when Claude works with tools.
* ``Stop``: the turn ended. What the transcript holds that was not spoken yet is spoken at once. The
  transcript may lag the conversation, so the payload's ``last_assistant_message`` is waited for a
  moment and spoken from the payload if the file does not catch up. A Stop alone (service started
  mid-turn, a missed prompt) speaks the turn's text after the last prompt a person typed.
  ``stop_hook_active: true`` means Claude went on because another Stop hook blocked it: the same turn
  goes on, so following continues after each Stop and only new text is spoken.
* ``StopFailure``: the turn ended on an API error (no Stop comes): flush, then Claude Code's message
  (or a short cue when it has none), marked as an error.
* ``SessionEnd``: stop following and forget the session.

``SubagentStop`` is not registered and is ignored: a sub-agent's text is never spoken. Tool events
add nothing (the transcript is polled). ``MessageDisplay`` (v2.1.152+) would give text even earlier
but holds the display until the hook returns and cannot be matched with transcript records.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .transcript import TranscriptFollower

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_COMMAND",
    "HOOK_EVENTS",
    "HookSessions",
    "install",
    "read_payload",
    "settings_path",
    "slim_payload",
    "uninstall",
]

DEFAULT_COMMAND = "mlx-stream-tts hook"

#: Events ``install`` registers, in the order written.
HOOK_EVENTS = ("UserPromptSubmit", "Stop", "StopFailure", "SessionEnd")

# Seconds Claude Code lets the hook run before cancelling it. The hook returns in about 0.1 s; this
# only bounds a stuck one (the defaults are 30 s to 10 min).
HOOK_TIMEOUT = 5

# A payload larger than this is refused: the events used carry a few KB (tool events can carry MBs).
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024

#: Payload fields the service uses; :func:`slim_payload` keeps only these.
SERVICE_FIELDS = (
    "hook_event_name",
    "session_id",
    "transcript_path",
    "cwd",
    "stop_hook_active",
    "last_assistant_message",
    "agent_id",
    "error",
    "error_details",
    "reason",
)

# --------------------------------------------------------------------------------- hook side


def read_payload(data: bytes | str) -> dict[str, Any] | None:
    """Parse and check a hook's stdin.

    Args:
        data: what Claude Code wrote on the hook's stdin.

    Returns:
        The payload (a JSON object with string ``hook_event_name`` and ``session_id``), or None
        for anything else (logged; never raises).
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    if not isinstance(data, (bytes, bytearray)):
        logger.warning("hook: payload is a %s, not bytes; ignored", type(data).__name__)
        return None
    if len(data) > MAX_PAYLOAD_BYTES:
        logger.warning("hook: payload of %d bytes is too large; ignored", len(data))
        return None
    try:
        payload = json.loads(bytes(data).decode("utf-8", "replace").lstrip("\ufeff"))
    except (ValueError, RecursionError):
        logger.warning("hook: payload is not JSON: %r", bytes(data[:80]))
        return None
    if not isinstance(payload, dict):
        logger.warning("hook: payload is not a JSON object; ignored")
        return None
    for field in ("hook_event_name", "session_id"):
        if not isinstance(payload.get(field), str) or not payload[field]:
            logger.warning("hook: payload without a string %r; ignored", field)
            return None
    return payload


def slim_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload cut to the fields the service uses, stamped with ``sent_at`` (now, seconds
    since the epoch): what the hook sends over the socket.

    The stamp lets the service tell the new turn's transcript records from late writes of the
    previous turn even if the message reaches it late.
    """
    slim = {key: payload[key] for key in SERVICE_FIELDS if key in payload}
    slim["sent_at"] = time.time()
    return slim


# ----------------------------------------------------------------------------- settings file


def settings_path(project: bool, cwd: Path | None = None) -> Path:
    """The Claude Code settings file that ``install-hook`` edits.

    Args:
        project: the project's shared ``.claude/settings.json`` (under ``cwd``) instead of the
            user's ``~/.claude/settings.json`` (``$CLAUDE_CONFIG_DIR/settings.json`` when set).
        cwd: the project directory (default: the current directory).

    Returns:
        The path (the file may not exist yet).
    """
    if project:
        return (cwd if cwd is not None else Path.cwd()) / ".claude" / "settings.json"
    config_dir = os.environ.get("CLAUDE_CONFIG_DIR")
    base = Path(config_dir).expanduser() if config_dir else Path.home() / ".claude"
    return base / "settings.json"


def _load_settings(path: Path) -> dict[str, Any]:
    """The settings object, {} for a missing or empty file; ValueError if it cannot be edited."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if not text.strip():
        return {}
    try:
        settings = json.loads(text)
    except ValueError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); fix or move it, then run install-hook again "
            "(it was left unchanged)"
        ) from err
    if not isinstance(settings, dict):
        raise ValueError(f"{path} does not hold a JSON object; it was left unchanged")
    hooks = settings.get("hooks", {})
    if not isinstance(hooks, dict):
        raise ValueError(f"'hooks' in {path} is not an object; it was left unchanged")
    for event, groups in hooks.items():
        if not isinstance(groups, list):
            raise ValueError(f"'hooks.{event}' in {path} is not a list; it was left unchanged")
    return settings


def _write_settings(path: Path, settings: dict[str, Any]) -> None:
    """Write atomically (temporary file in the same folder, then rename), keeping the file mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    fd, tmp = tempfile.mkstemp(prefix=".settings.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _looks_like_our_hook(command: Any) -> bool:
    """``mlx-stream-tts hook`` by any path (``/venv/bin/mlx-stream-tts hook``, ``python -m mlx_stream_tts hook``)."""
    if not isinstance(command, str):
        return False
    words = command.split()
    return len(words) >= 2 and words[-1] == "hook" and (
        os.path.basename(words[-2].strip("'\"")) == "mlx-stream-tts" or words[-2] == "mlx_stream_tts")


def _is_ours(handler: Any, command: str) -> bool:
    # Ours by any path: installing again from another environment replaces the old path, not adds one.
    return (
        isinstance(handler, dict)
        and handler.get("type", "command") == "command"
        and (handler.get("command") == command
             or (_looks_like_our_hook(command) and _looks_like_our_hook(handler.get("command"))))
    )


def install(settings_path: Path, command: str = DEFAULT_COMMAND) -> bool:
    """Register ``command`` for each of :data:`HOOK_EVENTS` in a Claude Code settings file.

    Idempotent: an event that already runs the same command is left alone. Every other key and
    hook is kept.

    Args:
        settings_path: the settings file (see :func:`settings_path`); created if missing.
        command: the shell command Claude Code runs.

    Returns:
        True if the file was changed.

    Raises:
        ValueError: the file is not valid JSON or not shaped like a settings file (it is left
            unchanged).
        OSError: it could not be written.
    """
    path = Path(settings_path)
    settings = _load_settings(path)
    hooks = settings.setdefault("hooks", {})
    changed = False
    for event in HOOK_EVENTS:
        groups = hooks.setdefault(event, [])
        present = False
        for group in groups:
            if not (isinstance(group, dict) and isinstance(group.get("hooks"), list)):
                continue
            for handler in group["hooks"]:
                if _is_ours(handler, command):
                    present = True
                    if handler.get("command") != command:  # installed before from another path
                        handler["command"] = command
                        changed = True
        if not present:
            groups.append(
                {"hooks": [{"type": "command", "command": command, "timeout": HOOK_TIMEOUT}]}
            )
            changed = True
    if changed:
        _write_settings(path, settings)
        logger.info("hooks: added %s to %s", command, path)
    return changed


def uninstall(settings_path: Path, command: str = DEFAULT_COMMAND) -> bool:
    """Remove every hook handler that runs ``command``; groups and events left empty go too.

    Args:
        settings_path: the settings file.
        command: the command that :func:`install` registered.

    Returns:
        True if the file was changed.

    Raises:
        ValueError: the file is not valid JSON or not shaped like a settings file.
        OSError: it could not be written.
    """
    path = Path(settings_path)
    settings = _load_settings(path)
    hooks = settings.get("hooks")
    if not hooks:
        return False
    changed = False
    for event in list(hooks):
        kept_groups = []
        for group in hooks[event]:
            if isinstance(group, dict) and isinstance(group.get("hooks"), list):
                kept = [h for h in group["hooks"] if not _is_ours(h, command)]
                if len(kept) != len(group["hooks"]):
                    changed = True
                    if not kept:
                        continue
                    group = {**group, "hooks": kept}
            kept_groups.append(group)
        if kept_groups:
            hooks[event] = kept_groups
        elif changed:
            del hooks[event]
    if not changed:
        return False
    if not hooks:
        del settings["hooks"]
    _write_settings(path, settings)
    logger.info("hooks: removed %s from %s", command, path)
    return True


# ------------------------------------------------------------------------------ service side

_STOP_EVENTS = ("Stop", "StopFailure")


class _Session:
    """One Claude Code session: its transcript follower and the thread that polls it."""

    def __init__(self, session_id: str, transcript: str) -> None:
        self.id = session_id
        self.transcript = transcript
        self.events: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self.generation = 0  # bumped by each prompt: text of an older turn is dropped
        self.thread: threading.Thread | None = None
        # Owned by the session's thread (kept across its restarts after idle periods):
        self.follower: TranscriptFollower | None = None
        self.started = False  # the follower has been positioned (prompt or turn start)


class HookSessions:
    """Service side: turns hook events into text to speak, one follower thread per session.

    ``handle`` may be called from any thread and returns at once; the callbacks run on the
    session's thread (``on_interrupt`` on the caller's). The service decides what an interrupt in
    one session does to speech of another.

    Args:
        on_text: ``on_text(session_id, text)`` for each piece to speak, in order (text blocks end
            with a paragraph break).
        on_interrupt: ``on_interrupt(session_id)`` when a new prompt makes the previous turn's
            speech obsolete; called before ``handle`` returns.
        on_turn_end: ``on_turn_end(session_id)`` after the last text of a turn (Stop, StopFailure).
        poll: seconds between reads of a followed transcript.
        stop_grace: seconds a Stop waits for the transcript to show ``last_assistant_message``
            before speaking it from the payload.
        idle_timeout: seconds without new transcript data after which a session's thread stops
            (a later event resumes it from where it stopped; nothing is lost).
    """

    def __init__(
        self,
        on_text: Callable[[str, str], None],
        on_interrupt: Callable[[str], None],
        on_turn_end: Callable[[str], None],
        poll: float = 0.1,
        stop_grace: float = 1.5,
        idle_timeout: float = 1800.0,
    ) -> None:
        # Imported here: the hook side of this module must stay free of anything but the stdlib.
        from .transcript import TranscriptFollower

        self._follower_class = TranscriptFollower
        self.on_text = on_text
        self.on_interrupt = on_interrupt
        self.on_turn_end = on_turn_end
        self.poll = poll
        self.stop_grace = stop_grace
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._closed = False

    # --------------------------------------------------------------------------------- events

    def handle(self, payload: dict[str, Any]) -> None:
        """Act on one hook payload (as :func:`read_payload` returns it). Never raises."""
        try:
            self._handle(payload)
        except Exception:  # a bug or an unforeseen payload must not kill the service's connection
            logger.warning("hooks: failed to handle a hook payload; ignored", exc_info=True)

    def _handle(self, payload: dict[str, Any]) -> None:
        if not isinstance(payload, dict):
            logger.warning("hooks: payload is not an object; ignored")
            return
        event = payload.get("hook_event_name")
        sid = payload.get("session_id")
        path = payload.get("transcript_path")
        if not isinstance(event, str) or not isinstance(sid, str) or not sid:
            logger.warning("hooks: payload without event name or session id; ignored")
            return
        if event in ("SubagentStop", "SubagentStart") or payload.get("agent_id") is not None:
            logger.debug("hooks: %s of a sub-agent ignored", event)
            return
        if event == "SessionEnd":
            self._end_session(sid)
            return
        if event not in ("UserPromptSubmit", *_STOP_EVENTS):
            self._resume(sid)  # another event of a known session: make sure it is followed
            return
        if not isinstance(path, str) or not path:
            logger.warning("hooks: %s without a transcript_path; ignored", event)
            return
        path = os.path.expanduser(path)
        with self._lock:
            if self._closed:
                return
            session = self._sessions.get(sid)
            new = session is None or session.transcript != path
            if new:
                if session is not None:  # /clear or a resume moved the session to another file
                    session.events.put(None)
                session = self._sessions[sid] = _Session(sid, path)
            if event == "UserPromptSubmit":
                session.generation += 1
            generation = session.generation
        if event == "UserPromptSubmit":
            self.on_interrupt(sid)
            # When the hook ran (slim_payload stamps it): the new turn's records are all later,
            # however long the payload took to get here.
            sent = payload.get("sent_at")
            if not isinstance(sent, (int, float)) or isinstance(sent, bool):
                sent = time.time()
            try:  # where the new turn starts: the thread may get to it after lines were added
                size = os.stat(path).st_size
            except OSError:
                size = 0
            session.events.put(("prompt", (generation, float(min(sent, time.time())), size)))
        else:
            session.events.put(("stop", (event, payload, new)))
        self._ensure_thread(session)

    def _resume(self, sid: str) -> None:
        with self._lock:
            session = self._sessions.get(sid)
        if session is not None:
            session.events.put(("follow", None))
            self._ensure_thread(session)

    def _end_session(self, sid: str) -> None:
        with self._lock:
            session = self._sessions.pop(sid, None)
        if session is not None:
            session.events.put(None)

    def _ensure_thread(self, session: _Session) -> None:
        with self._lock:
            if self._closed or (session.thread is not None and session.thread.is_alive()):
                return
            session.thread = threading.Thread(
                target=self._run, args=(session,), name=f"hook-session-{session.id[:8]}", daemon=True
            )
            session.thread.start()

    def close(self) -> None:
        """Stop every session's thread (waits briefly for each)."""
        with self._lock:
            self._closed = True
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.events.put(None)
        for session in sessions:
            if session.thread is not None and session.thread is not threading.current_thread():
                session.thread.join(timeout=2.0)

    # ------------------------------------------------------------------------- session thread

    def _run(self, session: _Session) -> None:
        if session.follower is None:
            session.follower = self._follower_class(session.transcript)
        follower = session.follower
        following = session.started
        generation = session.generation
        idle_since = time.monotonic()
        while True:
            try:
                item = session.events.get(timeout=self.poll if following else self.idle_timeout)
            except queue.Empty:
                item = ("poll", None)
            if item is None:
                return
            kind, arg = item
            if kind == "prompt":
                generation, submitted, size = arg
                follower.skip_to_end(not_before=submitted, size=size)
                session.started = following = True
                idle_since = time.monotonic()
            elif kind == "stop":
                event, payload, new = arg
                if not session.started:
                    # The prompt was missed: this turn's text is what follows the last prompt.
                    follower.seek_turn_start()
                    session.started = True
                self._finish_turn(session, follower, generation, event, payload)
                following = True
                idle_since = time.monotonic()
            elif kind == "follow":
                following = session.started
                idle_since = time.monotonic()
            elif following:
                if self._emit(session, generation, follower.read_new()):
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > self.idle_timeout:
                    logger.info("hooks: session %s idle; following paused", session.id)
                    following = False
            elif kind == "poll":
                # Nothing for a whole idle period: end the thread (an event starts a new one).
                with self._lock:
                    if session.events.empty():
                        session.thread = None
                        return

    def _emit(self, session: _Session, generation: int, pieces: list[str]) -> bool:
        """Hand pieces to on_text unless a newer prompt made them obsolete; True if any."""
        for piece in pieces:
            if session.generation != generation:
                return bool(pieces)
            try:
                self.on_text(session.id, piece)
            except Exception:
                logger.warning("hooks: on_text failed", exc_info=True)
        return bool(pieces)

    def _finish_turn(
        self,
        session: _Session,
        follower: TranscriptFollower,
        generation: int,
        event: str,
        payload: dict[str, Any],
    ) -> None:
        self._emit(session, generation, follower.read_new())
        if event == "Stop":
            last = payload.get("last_assistant_message")
            if isinstance(last, str) and last.strip() and not follower.covers(last):
                # The transcript lags the conversation: give it a moment, then speak the payload.
                deadline = time.monotonic() + self.stop_grace
                while not follower.covers(last) and time.monotonic() < deadline:
                    if not session.events.empty():
                        break  # a new prompt or the session's end: do not hold it up
                    time.sleep(self.poll)
                    self._emit(session, generation, follower.read_new())
                if not follower.covers(last):
                    rest = follower.remainder(last).strip()
                    follower.note_spoken(last)
                    if rest:
                        logger.info("hooks: transcript lags; final text spoken from the Stop payload")
                        self._emit(session, generation, [rest + "\n\n"])
        elif event == "StopFailure" and not follower.turn_cue:
            from .claude import ErrorText, error_cue, error_message

            follower.turn_cue = True
            details = payload.get("error_details") or payload.get("last_assistant_message")
            # Claude Code's own words when it gave some: what the user sees (the last message) first.
            said = next((error_message(text) for text in (payload.get("last_assistant_message"),
                                                             payload.get("error_details"))
                         if isinstance(text, str) and error_message(text)), None)
            said = said or error_cue(payload.get("error"), None, details)
            self._emit(session, generation, [ErrorText("\n\n" + said + "\n\n")])
        if session.generation == generation:
            try:
                self.on_turn_end(session.id)
            except Exception:
                logger.warning("hooks: on_turn_end failed", exc_info=True)
