"""The warm service under load, short (bench/service_load.py runs the 60 s version): 100 concurrent
clients, malformed requests and clients vanishing mid-stream, with fake stages in a child process;
every request answered or clearly refused, no cross-talk, no leaked threads or descriptors."""

from __future__ import annotations

import io
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mlx_stream_tts import client, protocol
from mlx_stream_tts.pipeline import Pipeline
from mlx_stream_tts.service import Service

from fakes import FakeTranslator, FakeVoice, RecordingSink

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import service_load  # noqa: E402


@pytest.fixture
def service():
    """An in-process service with fake stages on a short socket path; closed after the test."""
    folder = Path(tempfile.mkdtemp(prefix="svcl", dir="/tmp"))  # tmp_path can exceed a socket address
    path = folder / "s.sock"
    sink = RecordingSink(keep=False)

    def load(on_event):
        return Pipeline(FakeTranslator(), FakeVoice(), sink, on_event=on_event, priority_lead=None,
                        sentence_gap=0, early_start=False), {}

    svc = Service(path, load, hooks=False)
    svc.open()
    svc.load()
    try:
        yield svc
    finally:
        svc.close()
        shutil.rmtree(folder, ignore_errors=True)


def _service_threads() -> int:
    return sum(t.name.startswith("service-") for t in threading.enumerate())


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_100_clients_with_malformed_and_vanishing_ones_are_all_answered_or_refused():
    # A connect to a full listen backlog (EAGAIN) is retried by protocol.connect until its timeout
    # (the burst test below), so every failure here is the service's.
    report = service_load.run(clients=100, seconds=3.0, seed=12, grace=20.0)
    assert report.errors == 0, (report.error_kinds, report.error_details)
    assert report.requests == report.answered + report.refused + report.vanished
    assert set(report.by_kind) == {"speak", "status", "malformed", "vanish"}, report.by_kind
    assert report.vanished > 0 and report.refused > 0 and report.answered > 100
    # Every refusal was a malformed request, and said why.
    assert all(key.startswith("malformed:") for key in report.refusals), report.refusals
    assert report.sentences_spoken >= report.sentences_sent > 0
    # The service gave back every client thread and socket, held its memory, and stopped cleanly
    # (at most as many as at the start: its one-shot spool timer may still have been alive then).
    assert report.end["threads"] <= report.start["threads"], (report.start, report.end)
    assert report.end["fds"] <= report.start["fds"], (report.start, report.end)
    assert report.peak["threads"] > report.start["threads"]  # the load reached it
    assert report.peak["rss_mb"] - report.start["rss_mb"] < 100, (report.start, report.peak)
    assert report.service_exit == 0 and report.service_exceptions == 0


def test_idle_and_half_open_connections_do_not_block_others_and_are_given_back(service):
    before = _service_threads()
    idle = [protocol.connect(service.address) for _ in range(30)]  # connected, sending nothing
    half = protocol.connect(service.address)
    protocol.send_json(half, {"op": "speak", "format": "text"})
    protocol.send_frame(half, b"Sentence 1 never ends")  # holds the speaker, input not ended
    try:
        assert client.request(service.address, "status", timeout=5)["state"] == "ready"
    finally:
        for sock in idle + [half]:
            sock.close()
    assert _wait_for(lambda: _service_threads() == before), (before, _service_threads())
    # The speaker left by the half-open client is free again.
    answer = client.speak(service.address, io.BytesIO(b"Sentence 2 is heard."), fmt="text")
    assert answer == {"done": True, "sentences": 1, "failed": 0, "interrupted": False}


def test_a_burst_of_clients_is_never_turned_away_at_connect(service):
    connected: list[socket.socket] = []
    turned_away = 0
    try:
        for _ in range(100):
            try:
                connected.append(protocol.connect(service.address))
            except BlockingIOError:
                turned_away += 1
    finally:
        for sock in connected:
            sock.close()
    assert turned_away == 0, f"{turned_away} of 100 connects turned away"
