"""The warm service and its light client, with fake stages (no models): order, interruption,
disconnects, bad clients, a second service, a stale socket, permissions, and the CLI's client side."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mlx_stream_tts import client, protocol
from mlx_stream_tts.pipeline import Pipeline
from mlx_stream_tts.service import AlreadyRunning, Service

from fakes import FakeTranslator, FakeVoice, RecordingSink

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def short_dir():
    # pytest's tmp_path can be longer than a Unix socket address allows (~104 bytes).
    path = Path(tempfile.mkdtemp(prefix="svc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Stages:
    """A loader for Service: a real Pipeline over fakes, and handles on them for the asserts."""

    def __init__(self, voice_delay: float = 0.0, gate: threading.Event | None = None, fail: str | None = None):
        self.sink = RecordingSink()
        self.voice = FakeVoice(chunks=2, delay=voice_delay)
        self.translator = FakeTranslator()
        self.gate = gate
        self.fail = fail
        self.pipeline: Pipeline | None = None

    def __call__(self, on_event):
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError(self.fail)
        # No gaps and no early start: the sink then holds exactly the fake voice's chunks, easy to check.
        self.pipeline = Pipeline(translator=self.translator, voice=self.voice, sink=self.sink, on_event=on_event,
                                 priority_lead=None, sentence_gap=0, early_start=False)
        return self.pipeline, {"translator": "fake", "voice": "fake"}


def start(path: Path, stages: Stages, **kwargs) -> tuple[Service, threading.Thread]:
    svc = Service(path, stages, hooks=False, **kwargs)
    svc.open()
    loader = threading.Thread(target=svc.load, daemon=True)
    loader.start()
    return svc, loader


def speak(path: Path, text: str, **kwargs) -> dict:
    return client.speak(path, io.BytesIO(text.encode()), fmt="text", **kwargs)


def sentences(ids: range) -> str:
    return " ".join(f"Sentence {i} is here." for i in ids)


def test_status_answers_while_loading_then_speaks(short_dir):
    gate = threading.Event()
    stages = Stages(gate=gate)
    path = short_dir / "s.sock"
    svc, loader = start(path, stages)
    try:
        info = client.request(path, "status")
        assert info["state"] == "loading" and info["pid"] == os.getpid()
        gate.set()
        loader.join(10)
        spoken: list[str] = []
        answer = speak(path, sentences(range(1, 4)), on_spoken=spoken.append)
        assert answer == {"done": True, "sentences": 3, "failed": 0, "interrupted": False}
        assert stages.sink.ids() == [1, 2, 3]
        assert spoken == ["SENTENCE 1 IS HERE.", "SENTENCE 2 IS HERE.", "SENTENCE 3 IS HERE."]
        info = client.request(path, "status")
        assert info["state"] == "ready" and info["served"] == 1 and info["loaded"]["voice"] == "fake"
    finally:
        svc.close()
    assert not path.exists()


def test_socket_is_private(short_dir):
    path = short_dir / "run" / "s.sock"
    svc, loader = start(path, Stages())
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        svc.close()


def test_clients_are_served_in_order(short_dir):
    stages = Stages(voice_delay=0.05)
    path = short_dir / "s.sock"
    svc, loader = start(path, stages)
    loader.join(10)
    answers: dict[str, dict] = {}
    try:
        first = threading.Thread(target=lambda: answers.__setitem__("a", speak(path, sentences(range(1, 5)))))
        first.start()
        deadline = time.monotonic() + 5
        while not stages.sink.received and time.monotonic() < deadline:
            time.sleep(0.01)
        answers["b"] = speak(path, sentences(range(10, 12)))
        first.join(10)
        assert answers["a"]["sentences"] == 4 and answers["b"]["sentences"] == 2
        assert stages.sink.ids() == [1, 2, 3, 4, 10, 11]
    finally:
        svc.close()


def test_interrupt_cuts_the_current_client_and_goes_first(short_dir):
    stages = Stages(voice_delay=0.3)
    path = short_dir / "s.sock"
    svc, loader = start(path, stages)
    loader.join(10)
    answers: dict[str, dict] = {}
    try:
        first = threading.Thread(target=lambda: answers.__setitem__("a", speak(path, sentences(range(1, 20)))))
        first.start()
        deadline = time.monotonic() + 5
        while not stages.sink.received and time.monotonic() < deadline:
            time.sleep(0.01)
        answers["b"] = speak(path, "Sentence 100 now.", interrupt=True)
        first.join(10)
        assert answers["a"]["interrupted"] is True
        assert answers["b"] == {"done": True, "sentences": 1, "failed": 0, "interrupted": False}
        ids = stages.sink.ids()
        assert ids[-1] == 100 and 19 not in ids
    finally:
        svc.close()


def test_a_client_cut_off_mid_stream_loses_only_its_own_speech(short_dir):
    stages = Stages(voice_delay=0.3)
    path = short_dir / "s.sock"
    svc, loader = start(path, stages)
    loader.join(10)
    try:
        sock = protocol.connect(path)
        protocol.send_json(sock, {"op": "speak", "format": "text"})
        protocol.send_frame(sock, sentences(range(1, 20)).encode())
        deadline = time.monotonic() + 5
        while not stages.sink.received and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.close()  # killed: no end frame
        answer = speak(path, "Sentence 50 after.")
        assert answer["done"] and not answer["interrupted"]
        ids = stages.sink.ids()
        assert ids[-1] == 50 and 19 not in ids
    finally:
        svc.close()


def test_a_client_leaving_while_its_speech_is_made_cancels_it(short_dir):
    stages = Stages(voice_delay=0.3)
    path = short_dir / "s.sock"
    svc, loader = start(path, stages)
    loader.join(10)
    try:
        sock = protocol.connect(path)
        protocol.send_json(sock, {"op": "speak", "format": "text"})
        protocol.send_frame(sock, sentences(range(1, 20)).encode())
        protocol.send_end(sock)  # a complete request...
        deadline = time.monotonic() + 5
        while not stages.sink.received and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.close()  # ...but the client goes (Ctrl-C) before it was said
        started = time.monotonic()
        while client.request(path, "status")["speaking"] and time.monotonic() - started < 5:
            time.sleep(0.02)
        assert time.monotonic() - started < 2.0
        assert 19 not in stages.sink.ids()
    finally:
        svc.close()


def test_garbage_and_huge_requests_get_an_error_and_the_service_goes_on(short_dir):
    path = short_dir / "s.sock"
    svc, loader = start(path, Stages())
    loader.join(10)
    try:
        for junk in (b"\x00\xff\xfe garbage\n", b"[1, 2]\n", b'{"op": "dance"}\n', b"x" * (protocol.MAX_REQUEST + 10)):
            with protocol.connect(path) as sock:
                try:
                    sock.sendall(junk)
                except BrokenPipeError:
                    pass
                answer = next(client.iter_responses(sock))
            assert "error" in answer, junk[:20]
        with protocol.connect(path) as sock:  # a frame bigger than allowed
            protocol.send_json(sock, {"op": "speak", "format": "text"})
            sock.sendall((protocol.MAX_FRAME + 1).to_bytes(4, "big"))
            answers = list(client.iter_responses(sock))
            assert "error" in answers[-1]
        assert client.request(path, "status")["state"] == "ready"
        assert speak(path, "Sentence 7 works.")["sentences"] == 1
    finally:
        svc.close()


def test_a_second_service_is_refused_and_the_first_keeps_running(short_dir):
    path = short_dir / "s.sock"
    svc, loader = start(path, Stages())
    loader.join(10)
    try:
        with pytest.raises(AlreadyRunning, match="already running"):
            Service(path, Stages(), hooks=False).open()
        assert client.request(path, "status")["state"] == "ready"
    finally:
        svc.close()


def test_a_stale_socket_is_reclaimed(short_dir):
    path = short_dir / "s.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # what a killed service leaves: the file, nobody listening
    dead.close()
    assert path.exists()
    with pytest.raises(client.NoService):
        client.request(path, "status")
    svc, loader = start(path, Stages())
    try:
        assert client.request(path, "status")["ok"]
    finally:
        svc.close()


def test_models_that_cannot_load_are_reported_to_clients(short_dir):
    path = short_dir / "s.sock"
    svc, loader = start(path, Stages(fail="no NLLB model in /nowhere"))
    loader.join(10)
    try:
        info = client.request(path, "status")
        assert info["state"] == "failed" and "no NLLB model" in info["error"]
        answer = speak(path, "Hello there.")
        assert "no NLLB model" in answer["error"]
    finally:
        svc.close()


def test_stop_ends_serve(short_dir):
    path = short_dir / "s.sock"
    svc = Service(path, Stages(), hooks=False)
    # serve() installs signal handlers, which only the main thread may do: a thread asks it to stop.
    stopper = threading.Thread(target=lambda: (client.wait_until_up(path, 5), time.sleep(0.2),
                                               client.request(path, "stop")))
    stopper.start()
    assert svc.serve() == 0
    stopper.join(5)
    assert not path.exists()
    # Its listening and hook threads are gone (the accept() in progress was woken, not left behind).
    assert _wait_for(lambda: not [t for t in threading.enumerate() if t.name in ("service-accept", "service-hooks")])
    with pytest.raises(client.NoService):
        client.request(path, "status")


def test_address_resolution(monkeypatch, short_dir):
    monkeypatch.delenv(protocol.SOCKET_ENV, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    assert client.resolve() == short_dir / "mlx_stream_tts" / "service.sock"
    monkeypatch.setenv(protocol.SOCKET_ENV, str(short_dir / "env.sock"))
    assert client.resolve() == short_dir / "env.sock"
    assert client.resolve(str(short_dir / "opt.sock")) == short_dir / "opt.sock"
    assert client.resolve("tcp:8123") == ("127.0.0.1", 8123)
    with pytest.raises(ValueError, match="loopback"):
        client.resolve("tcp:0.0.0.0:8123")
    with pytest.raises(ValueError, match="too long"):
        protocol.check_socket_path(Path("/tmp/" + "x" * 200))


def test_loopback_tcp(short_dir):
    svc, loader = start(("127.0.0.1", 0), Stages())
    try:
        port = svc._listener.getsockname()[1]
        loader.join(10)
        assert client.request(("127.0.0.1", port), "status")["address"].startswith("tcp:127.0.0.1")
    finally:
        svc.close()


def _cli(*args: str, env: dict | None = None, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlx_stream_tts", *args], input=stdin, capture_output=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_cli_client_side_is_light_and_clear_without_a_service(short_dir):
    env = {protocol.SOCKET_ENV: str(short_dir / "none.sock")}
    for args in (("status",), ("stop",), ("speak", "--server")):
        result = _cli(*args, env=env, stdin=b"Hello.")
        assert result.returncode == 1, args
        assert b"no service at" in result.stderr and b"Traceback" not in result.stderr
    # The client side imports neither MLX nor NumPy (its start-up must stay in tens of ms).
    code = ("import sys; from mlx_stream_tts import cli; cli.main(['status', '--socket', sys.argv[1]]) ; "
            "print(sorted(m for m in ('numpy', 'mlx', 'mlx.core') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(short_dir / "none.sock")], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr


def test_cli_serve_speak_status_stop(short_dir):
    """The real commands end to end, with no models (--to none --no-voice): the wiring, not the voice."""
    sock = short_dir / "s.sock"
    env = {**os.environ, protocol.SOCKET_ENV: str(sock)}
    serve = subprocess.Popen([sys.executable, "-m", "mlx_stream_tts", "serve", "--to", "none", "--lang", "en",
                              "--no-voice", "--no-hooks"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert client.wait_until_up(sock, 30)
        second = _cli("serve", "--to", "none", "--no-voice", env=env)
        assert second.returncode == 1 and b"already running" in second.stderr
        result = _cli("speak", "--server", "--text", env=env, stdin=b"First one. Second one.\n\nThird")
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().splitlines() == ["First one.", "Second one.", "Third"]
        status = _cli("status", "--json", env=env)
        assert status.returncode == 0 and json.loads(status.stdout)["served"] == 1
        stopped = _cli("stop", env=env)
        assert stopped.returncode == 0
        assert serve.wait(10) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
        serve.wait()
    assert not sock.exists()


# -- Claude Code hooks through the service -----------------------------------------------------------

def _record(uuid: str, text: str, kind: str = "assistant", session: str = "sess-1") -> str:
    """One transcript line in Claude Code's format (see tests/fixtures/claude-hooks/SOURCES.md)."""
    base = {"parentUuid": None, "isSidechain": False, "userType": "external", "cwd": "/tmp", "sessionId": session,
            "version": "2.1.230", "type": kind, "uuid": uuid,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    if kind == "assistant":
        base["message"] = {"id": f"msg_{uuid}", "type": "message", "role": "assistant", "model": "claude",
                           "content": [{"type": "text", "text": text}], "stop_reason": None}
    else:
        base["message"] = {"role": "user", "content": text}
    return json.dumps(base) + "\n"


def _payload(event: str, transcript: Path, session: str = "sess-1", **extra) -> dict:
    return {"session_id": session, "transcript_path": str(transcript), "cwd": "/tmp", "permission_mode": "default",
            "hook_event_name": event, "sent_at": time.time(), **extra}


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_hooks_speak_the_turn_as_the_transcript_grows_and_a_new_prompt_stops_it(short_dir):
    stages = Stages(voice_delay=0.3)
    path = short_dir / "s.sock"
    transcript = short_dir / "t.jsonl"
    transcript.write_text(_record("u0", "Old prompt", "user") + _record("a0", "Sentence 1 is old."))
    svc = Service(path, stages, hooks=True)
    svc.open()
    svc.load()
    try:
        assert client.deliver_hook(path, _payload("UserPromptSubmit", transcript, prompt="go")) == "delivered"
        with transcript.open("a") as f:
            f.write(_record("u1", "go", "user"))
            f.write(_record("a1", "Sentence 2 starts now."))
        # Spoken while the turn goes on (before any Stop), and the old turn is not spoken.
        assert _wait_for(lambda: 2 in stages.sink.ids())
        assert 1 not in stages.sink.ids()
        with transcript.open("a") as f:
            f.write(_record("a2", sentences(range(3, 20))))
        assert _wait_for(lambda: 3 in stages.sink.ids())
        # A new prompt cuts the rest of that turn.
        client.deliver_hook(path, _payload("UserPromptSubmit", transcript, prompt="stop"))
        with transcript.open("a") as f:
            f.write(_record("u2", "stop", "user"))
            f.write(_record("a3", "Sentence 40 is new."))
        client.deliver_hook(path, _payload("Stop", transcript, stop_hook_active=False,
                                           last_assistant_message="Sentence 40 is new."))
        assert _wait_for(lambda: 40 in stages.sink.ids())
        ids = stages.sink.ids()
        assert 19 not in ids and ids.count(40) == 1 and ids.count(2) == 1
    finally:
        svc.close()


def test_a_stop_hook_spooled_before_the_service_started_is_spoken(short_dir):
    stages = Stages()
    path = short_dir / "s.sock"
    transcript = short_dir / "t.jsonl"
    transcript.write_text(_record("u0", "Earlier", "user") + _record("a0", "Sentence 1 is earlier.")
                          + _record("u1", "now", "user") + _record("a1", "Sentence 2 is the answer."))
    what = client.deliver_hook(path, _payload("Stop", transcript, stop_hook_active=False,
                                              last_assistant_message="Sentence 2 is the answer."), start=False)
    assert what.startswith("spooled")
    svc = Service(path, stages, hooks=True)
    svc.open()
    svc.load()
    try:
        assert _wait_for(lambda: 2 in stages.sink.ids())
        assert stages.sink.ids() == [2]  # that turn only, once
        assert not list(protocol.spool_dir(path).glob("*.json"))
    finally:
        svc.close()


def test_cli_hook_never_disturbs_claude(short_dir):
    env = {protocol.SOCKET_ENV: str(short_dir / "none.sock")}
    for stdin in (b"", b"not json", b"\x00\xff" * 100, json.dumps({"hook_event_name": "Stop"}).encode()):
        result = _cli("hook", "--no-start", env=env, stdin=stdin)
        assert result.returncode == 0 and result.stdout == b"" and b"Traceback" not in result.stderr
    # A valid payload with no service and --no-start: spooled for a later service, still exit 0 and quiet.
    payload = _payload("Stop", short_dir / "missing.jsonl", session="s2")
    result = _cli("hook", "--no-start", env=env, stdin=json.dumps(payload).encode())
    assert result.returncode == 0 and result.stdout == b""
    assert len(list(protocol.spool_dir(short_dir / "none.sock").glob("*.json"))) == 1


def test_cli_install_hook_uses_this_installation_and_is_idempotent(short_dir):
    settings = short_dir / "settings.json"
    settings.write_text(json.dumps({"model": "opus", "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "say done"}]}]}}))
    first = _cli("install-hook", "--settings", str(settings))
    assert first.returncode == 0 and b"added" in first.stdout
    again = _cli("install-hook", "--settings", str(settings))
    assert again.returncode == 0 and b"up to date" in again.stdout
    data = json.loads(settings.read_text())
    assert data["model"] == "opus"
    commands = [h["command"] for group in data["hooks"]["Stop"] for h in group["hooks"]]
    assert "say done" in commands and sum(c.endswith(" hook") for c in commands) == 1
    ours = next(c for c in commands if c.endswith(" hook"))
    assert Path(ours.split()[0]).is_absolute()
    removed = _cli("install-hook", "--settings", str(settings), "--uninstall")
    assert removed.returncode == 0
    data = json.loads(settings.read_text())
    assert [h["command"] for group in data["hooks"]["Stop"] for h in group["hooks"]] == ["say done"]
    settings.write_text("{ not json")
    broken = _cli("install-hook", "--settings", str(settings))
    assert broken.returncode == 1 and b"Traceback" not in broken.stderr and settings.read_text() == "{ not json"


def test_binary_input_is_refused_with_a_clear_error(short_dir):
    path = short_dir / "s.sock"
    stages = Stages()
    svc, loader = start(path, stages)
    loader.join(10)
    try:
        answer = client.speak(path, io.BytesIO(b"\x00\x01\x02binary" * 1000), fmt="auto")
        assert "looks binary" in answer["error"]
        assert stages.sink.ids() == []
        assert speak(path, "Sentence 3 still works.")["sentences"] == 1
    finally:
        svc.close()


def test_cli_serve_stops_at_once_on_a_signal_even_while_loading(short_dir):
    sock = short_dir / "s.sock"
    env = {**os.environ, protocol.SOCKET_ENV: str(sock)}
    for signum in (signal.SIGTERM, signal.SIGINT):
        serve = subprocess.Popen([sys.executable, "-m", "mlx_stream_tts", "serve", "--to", "none", "--lang", "ja",
                                  "--no-play", "--no-hooks"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        try:
            assert client.wait_until_up(sock, 30)
            state = client.request(sock, "status")["state"]
            started = time.monotonic()
            serve.send_signal(signum)
            code = serve.wait(10)
            took = time.monotonic() - started
            err = serve.stderr.read().decode()
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait()
        assert code == 0 and "Traceback" not in err and "terminate called" not in err, (code, err)
        assert took < 1.0, (state, took)
        assert not sock.exists()
