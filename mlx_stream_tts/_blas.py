"""Make MLX's CPU backend use OpenBLAS on Linux.

MLX's Linux wheel (mlx-cpu) bundles netlib's reference BLAS: single-threaded and unblocked, 30-80x
slower than OpenBLAS on the matmuls and convolutions our models run. Loading an OpenBLAS that exports
the standard names (``sgemm_``, ``cblas_sgemm``) into the global symbol scope *before* ``mlx.core`` is
first imported makes the dynamic linker bind MLX's BLAS calls to it. This module must therefore run
before anything imports ``mlx``; ``mlx_stream_tts/__init__.py`` calls :func:`ensure_fast_blas` first.

OpenBLAS runs one thread by default (see :func:`set_blas_threads`). Candidates, in order: ``$MLX_STREAM_TTS_BLAS`` (a path, or ``none`` to skip), Debian's
``libopenblas0-pthread``, then the ``cmeel-openblas`` wheel. The cmeel build needs ``libgfortran.so.5``,
which a fresh machine may lack; the mlx-cpu and numpy wheels bundle one under a mangled name, so we
copy it into the cache with its SONAME set back to ``libgfortran.so.5`` and load that first.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import sysconfig
from pathlib import Path

from .paths import cache_root

logger = logging.getLogger(__name__)

_SYSTEM_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

#: Path of the BLAS library made active, or None (macOS, disabled, or not found).
active_blas: str | None = None
_done = False
_handles: list[ctypes.CDLL] = []  # keep the libraries loaded for the life of the process


def _site_dirs() -> list[Path]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dirs.update(p for p in sys.path if p.endswith("site-packages"))
    return [Path(d) for d in sorted(dirs) if Path(d).is_dir()]


def _cache_dir() -> Path:
    return cache_root() / "lib"


def _load_global(path: str | Path) -> ctypes.CDLL:
    handle = ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL | os.RTLD_NOW)
    _handles.append(handle)
    return handle


def _gfortran_shim() -> bool:
    """Load a wheel-bundled libgfortran under the SONAME ``libgfortran.so.5``.

    auditwheel renames bundled libraries (``libgfortran-<hash>.so.5.0.0``) and sets their SONAME to
    that name, so they cannot satisfy cmeel-openblas's ``NEEDED libgfortran.so.5``. A copy whose SONAME
    string is overwritten (same length, NUL padded) can: glibc matches NEEDED entries against the
    SONAMEs of already loaded objects.
    """
    for site in _site_dirs():
        for libs in ("mlx_cpu.libs", "numpy.libs", "scipy.libs"):
            folder = site / libs
            for lib in sorted(folder.glob("libgfortran-*.so.5*")) if folder.is_dir() else []:
                try:
                    # Its own dependencies (libquadmath-<hash>) keep mangled names: load them from the
                    # wheel folder by path so the copy's NEEDED entries resolve by SONAME.
                    for dep in sorted(folder.glob("libquadmath-*.so*")):
                        _load_global(dep)
                    shim = _cache_dir() / f"libgfortran.so.5.from-{libs}-{lib.name}"
                    if not shim.exists():
                        data = lib.read_bytes()
                        old = lib.name.encode() + b"\0"
                        if data.count(old) != 1:
                            continue
                        new = b"libgfortran.so.5".ljust(len(old), b"\0")
                        shim.parent.mkdir(parents=True, exist_ok=True)
                        tmp = shim.with_suffix(f".tmp{os.getpid()}")
                        tmp.write_bytes(data.replace(old, new))
                        os.replace(tmp, shim)
                    _load_global(shim)
                    return True
                except OSError as err:
                    logger.debug("gfortran shim from %s failed: %s", lib, err)
    return False


def _candidates() -> list[Path]:
    found = [Path(p) for p in _SYSTEM_PATHS]
    for site in _site_dirs():
        found.append(site / "cmeel.prefix" / "lib" / "libopenblas.so.0")
    return [p for p in found if p.exists()]


def _try_load(path: Path) -> bool:
    try:
        handle = _load_global(path)
    except OSError as err:
        if "libgfortran" not in str(err) or not _gfortran_shim():
            logger.debug("cannot load %s: %s", path, err)
            return False
        try:
            handle = _load_global(path)
        except OSError as err2:
            logger.debug("cannot load %s even with a gfortran shim: %s", path, err2)
            return False
    return hasattr(handle, "cblas_sgemm") and hasattr(handle, "sgemm_")


def ensure_fast_blas() -> str | None:
    """Load OpenBLAS globally before ``mlx.core`` is imported (Linux only). Idempotent.

    Returns:
        The path of the active BLAS library, or None when none was loaded.
    """
    global active_blas, _done
    if _done:
        return active_blas
    _done = True
    if not sys.platform.startswith("linux"):
        return None
    choice = os.environ.get("MLX_STREAM_TTS_BLAS", "").strip()
    if choice.lower() == "none":
        logger.info("MLX_STREAM_TTS_BLAS=none: MLX keeps its bundled reference BLAS (slow)")
        return None
    if "mlx.core" in sys.modules:
        logger.warning(
            "mlx.core was imported before mlx_stream_tts: MLX is bound to its slow reference BLAS "
            "for this process. Import mlx_stream_tts first (or set LD_PRELOAD to an OpenBLAS)."
        )
        return None
    candidates = [Path(choice)] if choice else _candidates()
    for path in candidates:
        if _try_load(path):
            active_blas = str(path)
            if "OPENBLAS_NUM_THREADS" not in os.environ:
                set_blas_threads(int(os.environ.get("MLX_STREAM_TTS_BLAS_THREADS", "1")))
            logger.debug("MLX CPU matmuls use %s", path)
            return active_blas
    logger.warning(
        "No usable OpenBLAS found (tried: %s). MLX will use its slow reference BLAS (CPU models run "
        "30-80x slower). Fix: pip install cmeel-openblas, or apt-get install libopenblas0-pthread, or "
        "set MLX_STREAM_TTS_BLAS=/path/to/libopenblas.so.0.",
        ", ".join(map(str, candidates)) or "nothing found",
    )
    return None


def set_blas_threads(n: int) -> bool:
    """Set OpenBLAS's thread count for the whole process; False when no OpenBLAS is active.

    The default is one thread (``MLX_STREAM_TTS_BLAS_THREADS`` or ``OPENBLAS_NUM_THREADS`` override it):
    the pipeline runs the translator and the voice at once, and on a small machine a second BLAS
    thread per stage oversubscribes the cores (a 62x768 @ 768x768 matmul went from 0.5 ms to 20 ms).
    Benchmarks of one model alone may ask for more.
    """
    for handle in reversed(_handles):
        setter = getattr(handle, "openblas_set_num_threads", None)
        if setter is not None:
            setter(max(1, int(n)))
            return True
    return False


def release_thread_streams() -> None:
    """Destroy the MLX streams the calling thread created (no-op if MLX was never imported).

    MLX 0.32 no longer cleans up per-thread streams at exit by itself: a process whose worker threads
    ran MLX can abort during interpreter shutdown ("terminate called without an active exception",
    exit 134). Each thread that ran MLX calls this when it ends; the main thread does at exit.
    """
    mx = sys.modules.get("mlx.core")
    if mx is not None and hasattr(mx, "clear_streams"):
        mx.clear_streams()


def blas_in_process() -> list[str]:
    """Paths of the BLAS libraries mapped in this process (from /proc/self/maps; Linux only)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    libs = {line.split()[-1] for line in maps.splitlines() if "blas" in line.lower() and "/" in line}
    return sorted(libs)
