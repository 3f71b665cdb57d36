"""The warm service under load: many concurrent clients on its Unix socket, with fake stages.

    python bench/service_load.py                         # 100 clients for 60 s (the RELIABILITY.md run)
    python bench/service_load.py --clients 20 --seconds 5 --json load.json

The service runs in a child process (``--serve PATH``) exactly as ``mlx-stream-tts serve`` runs it
(``Service.open``, ``load``, ``wait``, ``close``) but over a real ``Pipeline`` of fake stages
(tests/fakes.py): this measures the service (socket, threads, turn-taking, cancellation), not the
models. Its memory, threads and file descriptors are read from /proc while the clients run.

Each client is a thread of this process that, until the time is up, picks at random:

- ``speak`` (most requests): 1 to 4 sentences, each with an id of its own, through
  ``client.speak``. Answered correctly only if the final answer counts exactly those sentences,
  nothing failed or was interrupted, and the ``spoken`` events it got are its own sentences, in
  order (no cross-talk between clients);
- ``status``: an answer with ``ok`` and ``state == "ready"``;
- ``malformed``: garbage, a JSON array, an unknown op, a bad format, an over-long request line, a
  frame over the limit, invalid UTF-8, a half-closed line: each must be refused with an ``error``;
- ``vanish``: a speak request cut off mid-stream (no end frame), or one that leaves right after
  its end frame while its speech is being made: no answer expected, but nobody else may suffer.

Every request is counted once as answered, refused (an ``error`` answer, which says why), vanished
(the client left on purpose) or an error (anything else: a wrong answer, cross-talk, no answer, a
hang). Loopback only (a Unix socket in a private temporary folder); bounded in clients and time: a
request still running ``--grace`` seconds after the end counts as an error, and the service is
stopped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mlx_stream_tts import client, protocol  # noqa: E402

#: How the clients' requests are drawn (weights).
MIX = {"speak": 70, "status": 10, "malformed": 12, "vanish": 8}

#: The error of a connect() that the service's full listen backlog turned away (EAGAIN on a Unix socket).
BACKLOG_FULL = "connect refused at once: the service's listen backlog is full (EAGAIN)"

MALFORMED = {
    "garbage": b"\x00\xff\xfe not json at all\n",
    "json array": b"[1, 2, 3]\n",
    "unknown op": b'{"op": "dance"}\n',
    "bad format": b'{"op": "speak", "format": "morse"}\n',
    "invalid utf-8": b'{"op": "st\xffatus"}\n',
    "empty line": b"\n",
    "too long": b'{"op": "status", "pad": "' + b"x" * (protocol.MAX_REQUEST + 16),
    "frame too big": b'{"op": "speak", "format": "text"}\n' + (protocol.MAX_FRAME + 1).to_bytes(4, "big"),
}


# -- the service side (child process) --------------------------------------------------------------

def serve(path: Path) -> int:
    """Run a service with fake stages on ``path`` until ``stop``; print its sink's counts at exit."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fakes import FakeTranslator, FakeVoice, RecordingSink  # noqa: PLC0415

    from mlx_stream_tts.pipeline import Pipeline  # noqa: PLC0415
    from mlx_stream_tts.service import Service  # noqa: PLC0415

    sink = RecordingSink(keep=False)

    def load(on_event):
        pipeline = Pipeline(translator=FakeTranslator(record=False), voice=FakeVoice(chunks=2, record=False),
                            sink=sink, on_event=on_event, priority_lead=None, sentence_gap=0, early_start=False,
                            history=100)
        return pipeline, {"translator": "fake", "voice": "fake"}

    service = Service(path, load, hooks=False)
    service.open()
    ok = service.load()
    print("ready" if ok else "failed", flush=True)
    try:
        service.wait()
    finally:
        service.close()
    print(json.dumps({"writes": sink.writes, "samples": sink.samples, "served": service.served}), flush=True)
    return 0 if ok else 1


class Proc:
    """Memory, threads and open files of a process, from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def sample(self) -> dict:
        fields = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "Threads"):
                    fields[key] = int(value.split()[0])
        return {"rss_mb": round(fields["VmRSS"] / 1024, 1), "threads": fields["Threads"],
                "fds": len(os.listdir(f"/proc/{self.pid}/fd"))}


# -- the client side -----------------------------------------------------------------------------

@dataclass
class Record:
    kind: str  # speak, status, malformed:<what>, vanish:<how>
    outcome: str  # answered, refused, vanished, error
    seconds: float
    detail: str = ""


@dataclass
class Report:
    clients: int
    seconds: float
    requests: int = 0
    answered: int = 0
    refused: int = 0
    vanished: int = 0
    errors: int = 0
    sentences_sent: int = 0
    sentences_spoken: int = 0
    by_kind: dict = field(default_factory=dict)
    refusals: dict = field(default_factory=dict)
    error_kinds: dict = field(default_factory=dict)
    error_details: list = field(default_factory=list)
    speak_p50_ms: float = 0.0
    speak_p99_ms: float = 0.0
    quick_p50_ms: float = 0.0
    quick_p99_ms: float = 0.0
    start: dict = field(default_factory=dict)
    peak: dict = field(default_factory=dict)
    end: dict = field(default_factory=dict)
    timeline: list = field(default_factory=list)  # (seconds, rss_mb, threads, fds) every second
    service_log_lines: int = 0
    service_exceptions: int = 0
    service_exit: int | None = None
    load_average: tuple = ()
    wall_s: float = 0.0


def _expect_error(sock: socket.socket) -> str:
    """The ``error`` of the first answer on ``sock``; raises AssertionError if there is none."""
    sock.settimeout(10)
    try:
        answers = list(client.iter_responses(sock))
    except (OSError, protocol.ProtocolError) as err:
        raise AssertionError(f"no clean answer: {err!r}") from None
    if not answers or not isinstance(answers[0].get("error"), str) or not answers[0]["error"].strip():
        raise AssertionError(f"not refused with an error: {answers[:2]!r}")
    return answers[0]["error"]


class Client(threading.Thread):
    """One client: requests drawn from MIX until ``deadline``."""

    def __init__(self, index: int, path: Path, deadline: float, seed: int, mix: dict[str, int]) -> None:
        super().__init__(name=f"load-client-{index}", daemon=True)
        self.index, self.path, self.deadline = index, path, deadline
        self.rng = random.Random(seed * 1000 + index)
        self.mix = mix
        self.records: list[Record] = []
        self.sent = self.spoken = 0
        self._next_id = index * 10_000  # sentence ids are unique across clients (FakeVoice keeps them < 2**20)

    def run(self) -> None:
        kinds, weights = list(self.mix), list(self.mix.values())
        while time.monotonic() < self.deadline:
            kind = self.rng.choices(kinds, weights)[0]
            started = time.perf_counter()
            try:
                record = getattr(self, "_" + kind)()
            except Exception as err:  # anything unexpected is an error of the service, recorded
                record = Record(kind, "error", 0.0, _describe(err))
            record.seconds = time.perf_counter() - started
            self.records.append(record)
            if record.outcome == "error":
                time.sleep(0.02)  # no busy loop of failures: a person would not retry faster either

    def _ids(self, n: int) -> list[int]:
        ids = list(range(self._next_id, self._next_id + n))
        self._next_id += n
        return ids

    def _speak(self) -> Record:
        ids = self._ids(self.rng.randint(1, 4))
        text = " ".join(f"Sentence {i} from client {self.index}." for i in ids)
        heard: list[str] = []
        answer = client.speak(self.path, io.BytesIO(text.encode()), fmt="text", on_spoken=heard.append)
        if "error" in answer:
            return Record("speak", "refused", 0.0, str(answer["error"]))
        self.sent += len(ids)
        heard_ids = [int(h.split()[1]) if len(h.split()) > 1 and h.split()[1].isdigit() else -1 for h in heard]
        self.spoken += len(heard_ids)
        expected = {"done": True, "sentences": len(ids), "failed": 0, "interrupted": False}
        if answer != expected or heard_ids != ids:
            return Record("speak", "error", 0.0, f"sent {ids}, heard {heard_ids}, answer {answer}")
        return Record("speak", "answered", 0.0)

    def _status(self) -> Record:
        info = client.request(self.path, "status", timeout=10)
        ok = info.get("ok") is True and info.get("state") == "ready"
        return Record("status", "answered" if ok else "error", 0.0, "" if ok else repr(info))

    def _malformed(self) -> Record:
        what = self.rng.choice(sorted(MALFORMED))
        with protocol.connect(self.path, timeout=10) as sock:
            data = MALFORMED[what]
            try:
                sock.sendall(data)
                if what == "too long":
                    sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the service refused before reading it all: its answer is still there
            return Record(f"malformed:{what}", "refused", 0.0, _expect_error(sock))

    def _vanish(self) -> Record:
        ids = self._ids(self.rng.randint(2, 6))
        text = " ".join(f"Sentence {i} from client {self.index}." for i in ids).encode()
        how = self.rng.choice(["mid-stream", "after its end"])
        sock = protocol.connect(self.path, timeout=10)
        try:
            protocol.send_json(sock, {"op": "speak", "format": "text", "label": f"vanishing {self.index}"})
            if how == "mid-stream":
                protocol.send_frame(sock, text[: len(text) // 2])
                sock.sendall((1000).to_bytes(4, "big") + b"half a fra")  # a frame cut short
            else:
                protocol.send_frame(sock, text)
                protocol.send_end(sock)
                time.sleep(self.rng.random() * 0.05)
        finally:
            sock.close()
        return Record(f"vanish:{how}", "vanished", 0.0)


def _describe(err: BaseException) -> str:
    """An exception in a few words; a connection turned away by a full listen backlog says so."""
    causes = [err, err.__cause__, err.__context__]
    if any(isinstance(e, BlockingIOError) for e in causes):
        return BACKLOG_FULL
    return f"{type(err).__name__}: {err}"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _shape(detail: str) -> str:
    """An error's detail with its numbers and addresses blanked, to count errors of one kind together."""
    return re.sub(r"/tmp/\S+|\d+", "#", detail)[:90]


def _wait_settled(proc: Proc, want: dict, timeout: float) -> dict:
    """Sample until threads and fds are back to ``want`` (or the time is up); the last sample."""
    deadline = time.monotonic() + timeout
    while True:
        now = proc.sample()
        if (now["threads"] <= want["threads"] and now["fds"] <= want["fds"]) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def run(clients: int = 100, seconds: float = 60.0, seed: int = 1, grace: float = 30.0,
        mix: dict[str, int] | None = None, sample_every: float = 0.1) -> Report:
    """Start a service, load it with ``clients`` clients for ``seconds``, stop it; the figures."""
    folder = Path(tempfile.mkdtemp(prefix="svcload", dir="/tmp"))  # short: a Unix socket path is <= 104 bytes
    path = folder / "s.sock"
    log_path = folder / "service.log"
    report = Report(clients=clients, seconds=seconds, load_average=os.getloadavg())
    began = time.perf_counter()
    with open(log_path, "wb") as log:
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(path)],
                                 stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
    try:
        line = child.stdout.readline().strip()
        if line != b"ready":
            raise RuntimeError(f"the service did not start: {line!r} (see {log_path})")
        proc = Proc(child.pid)
        time.sleep(1.2)  # the service's one-shot spool re-read timer (1 s after load) has ended
        report.start = proc.sample()
        peak = dict(report.start)
        stop_sampling = threading.Event()
        t0 = time.monotonic()

        def sampler() -> None:
            next_mark = 0.0
            while not stop_sampling.wait(sample_every):
                try:
                    now = proc.sample()
                except OSError:
                    return
                for key in peak:
                    peak[key] = max(peak[key], now[key])
                elapsed = time.monotonic() - t0
                if elapsed >= next_mark:
                    report.timeline.append((round(elapsed, 1), now["rss_mb"], now["threads"], now["fds"]))
                    next_mark += 1.0

        watcher = threading.Thread(target=sampler, name="load-sampler", daemon=True)
        watcher.start()
        deadline = time.monotonic() + seconds
        workers = [Client(i, path, deadline, seed, mix or MIX) for i in range(clients)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(max(0.0, deadline + grace - time.monotonic()))
        hung = [w for w in workers if w.is_alive()]
        records = [r for w in workers for r in w.records]
        records += [Record("hung", "error", grace, f"{w.name} still waiting {grace} s after the end") for w in hung]
        # Every client is gone: the service's threads and descriptors must come back to where they began.
        report.end = _wait_settled(proc, report.start, timeout=5.0)
        stop_sampling.set()
        watcher.join(2)
        report.peak = peak
        try:
            client.request(path, "stop", timeout=10)
        except client.NoService as err:
            records.append(Record("stop", "error", 0.0, str(err)))
        try:
            report.service_exit = child.wait(30)
        except subprocess.TimeoutExpired:
            records.append(Record("stop", "error", 30.0, "the service did not stop within 30 s"))
        tail = child.stdout.read().decode(errors="replace").strip().splitlines()
        if tail:
            report.sentences_spoken = json.loads(tail[-1]).get("writes", 0) // 2  # two fake chunks a sentence
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        log_text = log_path.read_text(errors="replace")
        shutil.rmtree(folder, ignore_errors=True)
    report.service_log_lines = len(log_text.splitlines())
    report.service_exceptions = log_text.count("Traceback")
    if path.exists():
        records.append(Record("cleanup", "error", 0.0, f"{path} left behind"))

    outcomes = Counter(r.outcome for r in records)
    report.requests = len(records)
    report.answered, report.refused = outcomes["answered"], outcomes["refused"]
    report.vanished, report.errors = outcomes["vanished"], outcomes["error"]
    report.by_kind = dict(Counter(r.kind.split(":")[0] for r in records))
    report.refusals = dict(Counter(f"{r.kind}: {r.detail[:60]}" for r in records if r.outcome == "refused"))
    report.error_kinds = dict(Counter(f"{r.kind.split(':')[0]}: {_shape(r.detail)}" for r in records
                                      if r.outcome == "error"))
    report.error_details = [f"{r.kind}: {r.detail[:300]}" for r in records if r.outcome == "error"][:20]
    report.sentences_sent = sum(w.sent for w in workers)
    speak_ms = [r.seconds * 1000 for r in records if r.kind == "speak" and r.outcome == "answered"]
    quick_ms = [r.seconds * 1000 for r in records if r.outcome in ("answered", "refused") and r.kind != "speak"]
    report.speak_p50_ms, report.speak_p99_ms = round(_percentile(speak_ms, 0.5), 1), round(_percentile(speak_ms, 0.99), 1)
    report.quick_p50_ms, report.quick_p99_ms = round(_percentile(quick_ms, 0.5), 1), round(_percentile(quick_ms, 0.99), 1)
    report.wall_s = round(time.perf_counter() - began, 1)
    return report


def print_report(report: Report, out=sys.stdout) -> None:
    r = report
    lines = [
        f"service load: {r.clients} clients for {r.seconds:g} s"
        f" (load average at start "
        f"{', '.join(f'{x:.2f}' for x in r.load_average)}; {os.cpu_count()} CPUs; wall {r.wall_s} s)",
        f"requests:  {r.requests}  ({', '.join(f'{k} {v}' for k, v in sorted(r.by_kind.items()))})",
        f"answered:  {r.answered}",
        f"refused:   {r.refused}  (each with an error message)",
        f"vanished:  {r.vanished}  (clients that left mid-request on purpose)",
        f"errors:    {r.errors}",
        f"sentences: {r.sentences_sent} sent by answered clients, {r.sentences_spoken} reached the sink",
        f"answer time, speak:  p50 {r.speak_p50_ms} ms, p99 {r.speak_p99_ms} ms (queueing behind the other clients included)",
        f"answer time, status and refusals:  p50 {r.quick_p50_ms} ms, p99 {r.quick_p99_ms} ms",
        f"service RSS:     start {r.start.get('rss_mb')} MB, peak {r.peak.get('rss_mb')} MB, end {r.end.get('rss_mb')} MB",
        f"service threads: start {r.start.get('threads')}, peak {r.peak.get('threads')}, end {r.end.get('threads')}",
        f"service fds:     start {r.start.get('fds')}, peak {r.peak.get('fds')}, end {r.end.get('fds')}",
        f"service log: {r.service_log_lines} lines, {r.service_exceptions} tracebacks; exit code {r.service_exit}",
    ]
    if r.timeline:
        step = max(1, len(r.timeline) // 12)
        lines.append("RSS over time (s: MB): " + ", ".join(f"{t:g}: {m}" for t, m, _, _ in r.timeline[::step]))
    for kind, count in sorted(r.error_kinds.items(), key=lambda item: -item[1]):
        lines.append(f"  errors: {count} x {kind}")
    for detail in r.error_details[:5]:
        lines.append(f"  e.g. {detail}")
    print("\n".join(lines), file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients (default 100)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long they send requests (default 60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds after the end before a request still running counts as hung")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve)
    if not 1 <= args.clients <= 500 or not 0 < args.seconds <= 3600:
        parser.error("1..500 clients, 0..3600 seconds")
    report = run(args.clients, args.seconds, args.seed, args.grace)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=1))
    return 0 if report.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
