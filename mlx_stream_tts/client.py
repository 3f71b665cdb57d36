"""The light side of the warm service: `speak --server`, `status`, `stop`, and starting a service.

Standard library only (see ``protocol.py``): a client must start in tens of milliseconds, since the
whole point of the service is not to pay for loading MLX and the models on every run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from . import protocol
from .source import read_pieces
from .protocol import LineReader, ProtocolError

logger = logging.getLogger(__name__)

Address = Path | tuple[str, int]


class NoService(ConnectionError):
    """No service answers at the address."""


def resolve(option: str | None = None) -> Address:
    """The service's address: ``--socket`` (a path or ``tcp:PORT``), else the environment, else the default."""
    chosen = option or os.environ.get(protocol.SOCKET_ENV)
    if chosen:
        tcp = protocol.parse_address(chosen)
        if tcp is not None:
            return tcp
    return protocol.socket_path(chosen)


def describe(address: Address) -> str:
    return f"tcp:{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


def open_connection(address: Address, timeout: float | None = 2.0) -> socket.socket:
    try:
        return protocol.connect(address, timeout=timeout)
    except (FileNotFoundError, ConnectionRefusedError) as err:
        raise NoService(f"no service at {describe(address)} (start one with `mlx-stream-tts serve`)") from err
    except OSError as err:
        raise NoService(f"cannot reach the service at {describe(address)}: {err.strerror or err}") from err


def iter_responses(sock: socket.socket) -> Iterator[dict]:
    """The service's JSON lines on a connection, until it closes."""
    reader = LineReader(sock)
    while True:
        obj = reader.read_json()
        if obj is None:
            return
        yield obj


def request(address: Address, op: str, timeout: float = 5.0, **fields) -> dict:
    """One request, one answer (``status``, ``stop``, ``cancel``, ``hook``). Raises NoService."""
    with open_connection(address, timeout=timeout) as sock:
        protocol.send_json(sock, {"op": op, **fields})
        try:
            for answer in iter_responses(sock):
                return answer
        except (OSError, ProtocolError) as err:
            raise NoService(f"the service at {describe(address)} did not answer: {err}") from err
    raise NoService(f"the service at {describe(address)} closed the connection without an answer")


def speak(address: Address, stream: BinaryIO, *, fmt: str = "auto", tools: bool = False, interrupt: bool = False,
          on_spoken: Callable[[str], None] | None = None, read_size: int = 65536) -> dict:
    """Send ``stream`` to the service as it arrives; return its final answer (``done`` or ``error``).

    ``on_spoken`` gets each sentence as its audio starts. Raises NoService when none answers, and
    ConnectionError when the service goes away mid-stream.
    """
    sock = open_connection(address, timeout=5.0)
    sock.settimeout(None)
    final: dict = {}
    answers_done = threading.Event()

    def read_answers() -> None:
        try:
            for answer in iter_responses(sock):
                if answer.get("event") == "spoken" and on_spoken is not None:
                    on_spoken(str(answer.get("text", "")))
                elif answer.get("event") == "error":
                    logger.error("%s", answer.get("error"))
                elif "done" in answer or "error" in answer:
                    final.update(answer)
                    return  # the last answer: no need to wait for the service to hang up
        except (OSError, ProtocolError) as err:
            final.setdefault("error", f"lost the service: {err}")
        finally:
            answers_done.set()

    with sock:
        protocol.send_json(sock, {"op": "speak", "format": fmt, "tools": tools, "interrupt": interrupt,
                                  "label": f"pid {os.getpid()}"})
        reader = threading.Thread(target=read_answers, name="service-answers", daemon=True)
        reader.start()
        try:
            for data in read_pieces(stream, read_size):
                if answers_done.is_set():
                    break  # interrupted or refused: the service will not read more
                protocol.send_frame(sock, data)
            if not answers_done.is_set():
                protocol.send_end(sock)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service ended the request (an error or an interruption says why below)
        while not answers_done.wait(0.2):
            pass
    if not final:
        raise ConnectionError(f"the service at {describe(address)} closed the connection")
    return final


def start_service(args: list[str], log_path: Path | None = None) -> subprocess.Popen:
    """Start ``mlx-stream-tts serve ARGS`` in the background, detached from our session and terminal.

    Its log goes to ``log_path`` (default: ``service.log`` beside the default socket).
    """
    log_path = log_path or protocol.runtime_dir() / "service.log"
    protocol.private_dir(log_path.parent)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed here right after
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "mlx_stream_tts", "serve", *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
        )
    finally:
        log.close()


def service_alive(path: Path) -> bool:
    """True while a service holds the lock for ``path`` (also while it is still loading its models)."""
    import fcntl

    try:
        fd = os.open(protocol.lock_path(path), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock if we got it
    return False


def deliver_hook(address: Address, payload: dict, *, start: bool = True, serve_args: list[str] | None = None) -> str:
    """Hand a Claude Code hook payload to the service; what happened, in words.

    With no service listening, the payload waits in the spool folder beside the socket and a
    service is started in the background (unless ``start`` is false or one is already starting):
    it reads the spool once up, so a Stop hook is spoken even when it started the service.
    """
    try:
        request(address, "hook", timeout=1.0, payload=payload)
        return "delivered"
    except NoService:
        pass
    if isinstance(address, tuple):
        return "no service (TCP: not started by hooks)"
    folder = protocol.spool_dir(address)
    protocol.private_dir(folder)
    name = f"{time.time_ns():020d}-{os.getpid()}.json"
    tmp = folder / (name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)
    os.replace(tmp, folder / name)  # whole or absent: the service never reads half a payload
    if not start:
        return "spooled (no service)"
    if service_alive(address):
        return "spooled (the service is starting)"
    start_service(["--socket", str(address), *(serve_args or [])], address.with_name("service.log"))
    return "spooled, service started"


def wait_until_up(address: Address, timeout: float) -> bool:
    """True once a service answers ``status`` (it may still be loading its models)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request(address, "status", timeout=1.0)
            return True
        except NoService:
            time.sleep(0.05)
    return False


def print_status(info: dict, out: TextIO) -> None:
    """``mlx-stream-tts status``: one line per fact, easy to read and to grep."""
    loaded = info.get("loaded") or {}
    lines = [
        f"service: {info.get('state')} (pid {info.get('pid')}, up {info.get('uptime_s')} s) on {info.get('address')}",
    ]
    for key, value in loaded.items():
        lines.append(f"  {key}: {value}")
    if info.get("error"):
        lines.append(f"error: {info['error']}")
    speaking = info.get("speaking")
    lines.append(f"speaking: {speaking}" + (f": {info['saying']}" if speaking and info.get("saying") else "")
                 if speaking else "speaking: nothing")
    lines.append(f"waiting: {info.get('waiting', 0)}, served: {info.get('served', 0)}")
    if info.get("cache"):
        lines.append("cache: " + json.dumps(info["cache"], ensure_ascii=False))
    print("\n".join(lines), file=out)
