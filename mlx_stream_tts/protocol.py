"""The wire format between the warm service and its clients, and where the service's socket lives.

Light on purpose: the standard library only, because ``speak --server`` and the Claude Code hook
import it and must start in a few tens of milliseconds (no NumPy, no MLX).

A connection carries, from the client:

1. one JSON object on one line, the request: ``{"op": "speak" | "hook" | "status" | "stop" | "cancel", ...}``;
2. for ``speak`` only, the input as *frames*: a 4-byte big-endian length, then that many bytes; a
   frame of length 0 ends the input. A connection that closes without that empty frame was cut off
   (the client was killed): the service drops that client's speech instead of finishing it.

and from the service: JSON lines (``{"event": "spoken", "text": ...}`` while speaking, then one line
with ``"done": true`` or ``"error"``).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from pathlib import Path

#: The environment variable that names another socket path (``--socket`` wins over it).
SOCKET_ENV = "MLX_STREAM_TTS_SOCKET"

#: A request line longer than this is refused (a client sending garbage must not grow our memory).
MAX_REQUEST = 1 << 20
#: The largest input frame; bigger reads are sent as several frames.
MAX_FRAME = 1 << 20

_LENGTH = struct.Struct(">I")

# sockaddr_un.sun_path holds 108 bytes on Linux and 104 on macOS, the final NUL included.
_MAX_SOCKET_PATH = 103


class ProtocolError(ValueError):
    """The other side sent something that is not this protocol."""


def runtime_dir() -> Path:
    """The service's private folder: ``$XDG_RUNTIME_DIR/mlx_stream_tts``, else ``<cache>/run``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        return Path(base) / "mlx_stream_tts"
    from .paths import cache_root

    return cache_root() / "run"


def socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit`` (``--socket``), else ``$MLX_STREAM_TTS_SOCKET``, else ``runtime_dir()/service.sock``."""
    chosen = explicit or os.environ.get(SOCKET_ENV)
    return Path(chosen).expanduser() if chosen else runtime_dir() / "service.sock"


def check_socket_path(path: Path) -> None:
    """Raise ValueError when ``path`` is too long for a Unix socket address (a clear message, not EINVAL)."""
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ValueError(f"socket path too long for a Unix socket ({len(os.fsencode(path))} bytes, at most "
                         f"{_MAX_SOCKET_PATH}): {path}; choose a shorter one with --socket or ${SOCKET_ENV}")


def private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or make sure an existing one is ours and closed to others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; choose another socket path")
    if st.st_mode & 0o077:
        path.chmod(0o700)


def spool_dir(path: Path) -> Path:
    """Where hooks leave payloads while no service listens on ``path`` (it reads them once up)."""
    return path.with_name(path.name + ".spool")


def lock_path(path: Path) -> Path:
    """The service holds ``flock`` on this file for its whole life (see service.py)."""
    return path.with_name(path.name + ".lock")


def parse_address(text: str) -> tuple[str, int] | None:
    """``"tcp:PORT"`` or ``"tcp:127.0.0.1:PORT"`` -> a loopback address; anything else -> None (a path).

    Only loopback hosts are accepted: the service has no authentication, so it never listens on
    other interfaces.
    """
    if not text.startswith("tcp:"):
        return None
    rest = text[4:]
    host, _, port = rest.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the service listens on loopback only (127.0.0.1 or ::1), not {host!r}")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"bad port in {text!r}")
    return ("127.0.0.1" if host == "localhost" else host), number


def connect(address: Path | tuple[str, int], timeout: float | None = 2.0) -> socket.socket:
    """Connect to a service; raises OSError (ConnectionRefusedError, FileNotFoundError) when none answers.

    A Unix socket whose listen backlog is full turns a connect away at once (EAGAIN) rather than
    making it wait, as TCP does: under a burst of clients (hooks of parallel sessions) that is retried
    until ``timeout``, not taken for an absent service.
    """
    if isinstance(address, tuple):
        return socket.create_connection(address, timeout=timeout)
    give_up = time.monotonic() + (timeout if timeout is not None else 2.0)
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(address))
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > give_up:
                raise
            time.sleep(0.002)
        except BaseException:
            sock.close()
            raise


def send_json(sock: socket.socket, obj: dict) -> None:
    sock.sendall(json.dumps(obj, ensure_ascii=False).encode() + b"\n")


def send_frame(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` as frames (an empty ``data`` sends nothing: use :func:`send_end`)."""
    for start in range(0, len(data), MAX_FRAME):
        part = data[start:start + MAX_FRAME]
        sock.sendall(_LENGTH.pack(len(part)) + part)


def send_end(sock: socket.socket) -> None:
    sock.sendall(_LENGTH.pack(0))


class LineReader:
    """Reads JSON lines and frames from a socket, keeping what was read past the current one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self._buf += data
        return True

    def read_json(self, limit: int = MAX_REQUEST) -> dict | None:
        """The next JSON object line; None at end of stream. Raises ProtocolError on garbage."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                break
            if len(self._buf) > limit:
                raise ProtocolError(f"request line longer than {limit} bytes")
            if not self._fill():
                if not self._buf:
                    return None
                line, self._buf = bytes(self._buf), bytearray()
                break
        try:
            obj = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError(f"not a JSON line: {line[:60]!r}") from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"expected a JSON object, got {type(obj).__name__}")
        return obj

    def read_frame(self) -> bytes | None:
        """The next frame's bytes; b"" for the end frame; None when the connection closed first."""
        while len(self._buf) < _LENGTH.size:
            if not self._fill():
                return None
        (length,) = _LENGTH.unpack_from(self._buf)
        if length > MAX_FRAME:
            raise ProtocolError(f"frame of {length} bytes (at most {MAX_FRAME})")
        while len(self._buf) < _LENGTH.size + length:
            if not self._fill():
                return None
        data = bytes(self._buf[_LENGTH.size:_LENGTH.size + length])
        del self._buf[: _LENGTH.size + length]
        return data
