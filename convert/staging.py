"""Model folders are built in a temporary folder beside their final place and renamed into it, so that an
interrupted build leaves neither a half-written model nor its temporary folder.

The temporary folder (``.<name>.tmp-<pid>-<random>``) is removed on every way out of
:func:`staged_folder`: an exception, Ctrl-C, and SIGTERM or SIGHUP, which raise ``SystemExit`` there
while nothing else handles them (the default action would end the process without any cleanup).
What a build killed harder leaves (SIGKILL, a power cut) is removed by the next build once the process
that made it is gone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger("mlx_stream_tts.convert.staging")

#: Temporary folders of the old naming (``.<name>-<random>``, no process id) older than this are stale.
LEGACY_STALE_AFTER = 3600.0
_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A new empty folder beside ``target`` to build in; removed when the block ends, however it ends.

    Move what was built into place inside the block (e.g. :func:`os.replace` onto ``target``).
    Stale temporary folders of earlier builds of ``target`` are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        with signals_raise():
            yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def signals_raise() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise ``SystemExit(128 + signal)`` so that cleanups run.

    Only signals left at their default action are taken over (a handler the application installed is
    kept), and only in the main thread (the only one where Python runs signal handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken: dict[int, object] = {}
    for sig in _SIGNALS:
        if signal.getsignal(sig) == signal.SIG_DFL:
            taken[sig] = signal.signal(sig, _exit_on_signal)
    try:
        yield
    finally:
        for sig, handler in taken.items():
            signal.signal(sig, handler)


def _exit_on_signal(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporary folders that builds of ``target`` left behind; returns what was removed.

    A folder named with a process id is stale once that process is gone; one of the old naming
    (``.<name>-<random>``) once it is older than ``LEGACY_STALE_AFTER`` seconds.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    ours = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp|old)-(\d+)(?:-.*)?$")
    legacy = re.compile(rf"^\.{re.escape(target.name)}-[A-Za-z0-9_]{{8}}$")
    removed: list[Path] = []
    for entry in target.parent.iterdir():
        m = ours.match(entry.name)
        if m:
            stale = not _alive(int(m.group(1)))
        elif legacy.match(entry.name):
            try:
                stale = time.time() - entry.stat().st_mtime > LEGACY_STALE_AFTER
            except OSError:
                continue
        else:
            continue
        if stale and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    if removed:
        logger.info("removed %d temporary folder(s) left by interrupted builds: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
