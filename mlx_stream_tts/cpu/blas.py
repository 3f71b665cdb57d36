"""Make MLX's CPU backend use OpenBLAS on Linux.

MLX's Linux wheel (mlx-cpu) bundles netlib's reference BLAS: single-threaded and unblocked, 30-80x
slower than OpenBLAS on the matmuls and convolutions our models run. Loading an OpenBLAS that exports
the standard names (``sgemm_``, ``cblas_sgemm``) into the global symbol scope *before* ``mlx.core`` is
first imported makes the dynamic linker bind MLX's BLAS calls to it. This module must therefore run
before anything imports ``mlx``: ``mlx_stream_tts/__init__.py`` installs an import hook that calls
:func:`ensure_fast_blas` just before ``mlx.core`` is first imported (so that processes that never use
MLX, such as the service's clients, do not pay for loading OpenBLAS).

One-row products (decoding steps) go through a small C shim, kernels/gemv_shim.c, compiled once into the
cache when a C compiler exists (``MLX_STREAM_TTS_GEMV=0`` turns it off): it binds MLX's ``cblas_sgemm``
and computes those products in place, with its own AVX-512 kernel and worker threads where the CPU has
AVX-512 (the decoding case: rows of dot products), else with OpenBLAS's ``cblas_sgemv``.

OpenBLAS runs two threads by default (one on a one-core machine; see :func:`set_blas_threads`). Candidates, in order: ``$MLX_STREAM_TTS_BLAS`` (a path, or ``none`` to skip), Debian's
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

from ..paths import cache_root
from .build import failures

logger = logging.getLogger(__name__)

_SYSTEM_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

#: log2 of the cycles an idle OpenBLAS worker spins before it sleeps (unless OPENBLAS_THREAD_TIMEOUT is set).
OPENBLAS_THREAD_TIMEOUT = 20
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


def _open(path: Path, mode: int) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(str(path), mode=mode)
    except OSError as err:
        if "libgfortran" not in str(err) or not _gfortran_shim():
            logger.debug("cannot load %s: %s", path, err)
            return None
        try:
            return ctypes.CDLL(str(path), mode=mode)
        except OSError as err2:
            logger.debug("cannot load %s even with a gfortran shim: %s", path, err2)
            return None


def _try_load(path: Path) -> bool:
    # Opened locally first: the gemv shim (below) must enter the global scope before OpenBLAS does, so
    # that MLX's cblas_sgemm binds to the shim and everything else (sgemm_, LAPACK) to OpenBLAS.
    local = _open(path, os.RTLD_LOCAL | os.RTLD_NOW)
    if local is None or not (hasattr(local, "cblas_sgemm") and hasattr(local, "sgemm_")):
        return False
    _handles.append(local)
    _load_gemv_shim(local)
    _load_global(path)  # promotes the same object to the global scope, behind the shim
    return True


#: The shim's worker pool (see mst_gemv_shim_configure in kernels/gemv_shim.c): ns an idle worker polls
#: with pause, ns it keeps polling with sched_yield before it sleeps, the smallest product (bytes) split
#: over threads, bytes per chunk.
GEMV_POOL_DEFAULTS = (20_000, 2_000_000, 256 * 1024, 64 * 1024)
#: The loaded gemv shim (see kernels/gemv_shim.c), or None.
gemv_shim: ctypes.CDLL | None = None


def _build_gemv_shim() -> Path | None:
    """Compile kernels/gemv_shim.c once into the cache (keyed by its hash); None without a C compiler."""
    from .build import build

    path = build("gemv_shim.c", ("-O2",), ("-ldl",), directory=_cache_dir())
    if path is None:
        logger.info("gemv shim not built: one-row products keep OpenBLAS's packed sgemm (decoding ~2x slower)")
    return path


def _load_gemv_shim(openblas: ctypes.CDLL) -> None:
    global gemv_shim
    if os.environ.get("MLX_STREAM_TTS_GEMV", "1").strip().lower() in ("0", "no", "off", "false"):
        failures["gemv_shim.c"] = "turned off by MLX_STREAM_TTS_GEMV=0"
        return
    if os.environ.get("MLX_STREAM_TTS_BACKEND", "").strip().lower() == "mlx":
        # The shim replaces MLX's one-row products process-wide: part of the accelerator, so the pure
        # model everywhere means no shim either (OpenBLAS itself stays: it is MLX's BLAS, not our code).
        failures["gemv_shim.c"] = "MLX_STREAM_TTS_BACKEND=mlx"
        return
    if not hasattr(openblas, "cblas_sgemv"):
        failures["gemv_shim.c"] = "this OpenBLAS has no cblas_sgemv"
        return
    try:
        path = _build_gemv_shim()
    except OSError as err:  # no source file, a read-only cache: decoding just stays on the slower path
        failures["gemv_shim.c"] = str(err)
        logger.info("gemv shim not built: %s", err)
        return
    if path is None:
        return
    try:
        shim = _load_global(path)
        # Pointers to OpenBLAS's own functions (dlsym on its handle, not the global scope).
        real = [ctypes.cast(getattr(openblas, name), ctypes.c_void_p) for name in ("cblas_sgemm", "cblas_sgemv")]
        shim.mst_gemv_shim_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        shim.mst_gemv_shim_init(*real)
        shim.mst_gemv_shim_calls.restype = ctypes.c_long
        shim.mst_gemv_shim_own_calls.restype = ctypes.c_long
        shim.mst_gemv_shim_kernel_ns.restype = ctypes.c_long
        shim.mst_gemv_shim_kernel_bytes.restype = ctypes.c_long
        shim.mst_gemv_shim_configure.argtypes = [ctypes.c_int] + [ctypes.c_long] * 4
        shim.mst_gemv_shim_configure(1, *GEMV_POOL_DEFAULTS)  # threads: set with OpenBLAS's below
    except (OSError, AttributeError) as err:
        failures["gemv_shim.c"] = f"not loadable ({err})"
        logger.info("gemv shim not loaded: %s", err)
        return
    gemv_shim = shim


def gemv_calls() -> int:
    """How many one-row products the gemv shim has taken in this process (-1: no shim)."""
    return -1 if gemv_shim is None else int(gemv_shim.mst_gemv_shim_calls())


def gemv_kernel_calls() -> int:
    """Of :func:`gemv_calls`, how many ran on the shim's own kernel rather than OpenBLAS's sgemv."""
    return -1 if gemv_shim is None else int(gemv_shim.mst_gemv_shim_own_calls())


def gemv_kernel_time() -> tuple[float, int]:
    """Seconds spent in, and bytes read by, the shim's own kernel in this process so far (its products
    as the calling thread sees them, workers included)."""
    if gemv_shim is None:
        return 0.0, 0
    return gemv_shim.mst_gemv_shim_kernel_ns() * 1e-9, int(gemv_shim.mst_gemv_shim_kernel_bytes())


def set_gemv_kernel(which: str) -> str:
    """Choose the shim's kernel for rows of dot products: ``"avx512"`` (the default where the CPU has
    it), ``"openblas"`` (OpenBLAS's sgemv) or ``"plain"`` (plain C, for tests). Returns the one in use."""
    names = ("openblas", "plain", "avx512")
    if gemv_shim is None:
        return "none"
    return names[gemv_shim.mst_gemv_shim_set_kernel(names.index(which))]


class _BeforeMlx:
    """A meta path finder that runs :func:`ensure_fast_blas` just before ``mlx.core`` is first imported.

    Loading OpenBLAS takes 0.1-0.3 s; the service's clients and the Claude Code hook import this
    package but never MLX, and must start in tens of milliseconds. It finds nothing itself: the
    normal import goes on once the library is in place.
    """

    @staticmethod
    def find_spec(name: str, path=None, target=None):
        if name == "mlx.core":
            uninstall_import_hook()
            ensure_fast_blas()
        return None


def install_import_hook() -> None:
    """Make OpenBLAS load when (and only if) this process first imports ``mlx.core``."""
    if "mlx.core" in sys.modules:
        ensure_fast_blas()  # too late to bind it; says so once
    elif _BeforeMlx not in sys.meta_path and not _done:
        sys.meta_path.insert(0, _BeforeMlx)


def uninstall_import_hook() -> None:
    try:
        sys.meta_path.remove(_BeforeMlx)
    except ValueError:
        pass


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
    # OpenBLAS's idle workers spin for 2^28 cycles (~0.1 s) after each call by default: on 2 cores
    # they took the core from the voice's own kernel threads (measured: windowed voice RTF 0.200 with
    # the default, 0.114 at 2^20 cycles ~0.3 ms; decoding unchanged). Read when the library loads.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", str(OPENBLAS_THREAD_TIMEOUT))
    candidates = [Path(choice)] if choice else _candidates()
    for path in candidates:
        if _try_load(path):
            active_blas = str(path)
            if "OPENBLAS_NUM_THREADS" not in os.environ:
                set_blas_threads(_threads_from_env())
            elif gemv_shim is not None:
                gemv_shim.mst_gemv_shim_configure(blas_threads(), -1, -1, -1, -1)
            logger.debug("MLX CPU matmuls use %s", path)
            return active_blas
    logger.warning(
        "No usable OpenBLAS found (tried: %s). MLX will use its slow reference BLAS (CPU models run "
        "30-80x slower). Fix: pip install cmeel-openblas, or apt-get install libopenblas0-pthread, or "
        "set MLX_STREAM_TTS_BLAS=/path/to/libopenblas.so.0.",
        ", ".join(map(str, candidates)) or "nothing found",
    )
    return None


def _threads_from_env() -> int:
    value = os.environ.get("MLX_STREAM_TTS_BLAS_THREADS", "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            logger.warning("MLX_STREAM_TTS_BLAS_THREADS=%r is not a number; using %d", value, default_blas_threads())
    return default_blas_threads()


def default_blas_threads() -> int:
    """Two threads, or one on a one-core machine.

    Measured on 2 cores (bench/pipeline.py), with the translator and the voice in one process and the
    voice pausing for the translator (``Pipeline(priority_lead=...)``): two threads brought a sentence's
    first audio from ~0.98 s to ~0.82 s after its end (Japanese text straight to the voice: 0.48 ->
    0.36 s), and a stream faster than speech still never let playback run dry. More threads than two
    are untested: two stages that both run many-threaded BLAS at once oversubscribe the cores.
    """
    return max(1, min(2, os.cpu_count() or 1))


def _openblas_function(name: str):
    """An OpenBLAS function by name from the loaded libraries (newest first), or None."""
    for handle in reversed(_handles):
        fn = getattr(handle, name, None)
        if fn is not None:
            return fn
    return None


def set_blas_threads(n: int) -> bool:
    """Set OpenBLAS's thread count for the whole process; False when no OpenBLAS is active.

    The default is :func:`default_blas_threads` (``MLX_STREAM_TTS_BLAS_THREADS`` or
    ``OPENBLAS_NUM_THREADS`` override it).
    """
    global _threads
    setter = _openblas_function("openblas_set_num_threads")
    if setter is None:
        return False
    setter(max(1, int(n)))
    _threads = None  # read back: OpenBLAS may cap the count at what it was built for
    if gemv_shim is not None:  # the shim's own workers follow the same count
        gemv_shim.mst_gemv_shim_configure(blas_threads(), -1, -1, -1, -1)
    return True


_threads: int | None = None  # cached: nllb.linear asks on every product


def blas_threads() -> int:
    """OpenBLAS's thread count (1 when no OpenBLAS is active)."""
    global _threads
    if _threads is None:
        getter = _openblas_function("openblas_get_num_threads")
        _threads = int(getter()) if getter is not None else 1
    return _threads


def blas_in_process() -> list[str]:
    """Paths of the BLAS libraries mapped in this process (from /proc/self/maps; Linux only)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    libs = {line.split()[-1] for line in maps.splitlines() if "blas" in line.lower() and "/" in line}
    return sorted(libs)
