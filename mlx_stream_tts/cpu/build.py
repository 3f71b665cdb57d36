"""Compiling the accelerator's C kernels (``kernels/*.c``) once into the cache, and loading them.

A kernel is compiled on first use with the system C compiler, keyed by the source's hash, the flags
and the machine, and loaded only where the CPU has the instructions it was built for. Nothing here
imports MLX or NumPy: :mod:`.blas` builds the gemv shim before ``mlx.core`` may be imported.
Why a kernel could not be had is kept in :data:`failures`, for the one warning that
:mod:`mlx_stream_tts.cpu` logs when the accelerator cannot run.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

from ..paths import cache_root

logger = logging.getLogger(__name__)

KERNELS = Path(__file__).parent / "kernels"

#: kernel source name -> why it is not available (the last failure seen in this process).
failures: dict[str, str] = {}


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _fail(source: str, reason: str) -> None:
    failures[source] = reason
    logger.info("%s not built: %s", source, reason)


def build(source: str, flags: tuple[str, ...] = (), libs: tuple[str, ...] = (),
          directory: Path | None = None) -> Path | None:
    """Compile ``kernels/<source>`` into a shared library in ``directory`` (the cache's ``lib`` folder);
    None if that is not possible (the reason goes to :data:`failures`). ``flags`` go to the compiler (a
    later ``-O`` wins over ``-O3``), ``libs`` to the linker."""
    src = KERNELS / source
    try:
        code = src.read_bytes()
    except OSError as err:
        _fail(source, f"source {src} unreadable ({err})")
        return None
    key = hashlib.sha256(code + " ".join(flags + libs).encode() + platform.machine().encode()).hexdigest()[:16]
    target = (directory or cache_root() / "lib") / f"libmst_{src.stem}-{key}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        _fail(source, "no C compiler (install gcc or clang, or set CC)")
        return None
    tmp = target.with_suffix(f".tmp{os.getpid()}.so")
    cmd = [compiler, "-O3", "-shared", "-fPIC", *flags, "-o", str(tmp), str(src), *libs, "-lm", "-pthread"]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        _fail(source, f"could not compile into {target.parent} ({err})")
        return None
    if proc.returncode != 0:
        _fail(source, f"the compiler failed: {proc.stderr.strip()[:500]}")
        tmp.unlink(missing_ok=True)
        return None
    os.replace(tmp, target)
    return target


def load(source: str, flags: tuple[str, ...]) -> ctypes.CDLL | None:
    """Build (or take from the cache) and load ``kernels/<source>``; None if either fails."""
    for _ in range(2):
        path = build(source, flags)
        if path is None:
            return None
        try:
            return ctypes.CDLL(str(path))
        except OSError as err:  # a damaged file in the cache: built again once
            _fail(source, f"not loadable ({err})")
            path.unlink(missing_ok=True)
    return None


def disabled(variable: str) -> bool:
    """Whether an on/off environment switch (default on) is set to off."""
    return os.environ.get(variable, "1").strip().lower() in ("0", "no", "off", "false")
