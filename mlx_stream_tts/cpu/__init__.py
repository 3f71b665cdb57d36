"""The CPU accelerator: what makes the pure MLX models fast on a Linux CPU, applied to a loaded model.

``mlx_stream_tts/models/`` is the one reference implementation (what a Mac runs, on Metal). On a CPU
MLX lacks fast low-precision kernels and each of its ops costs microseconds of dispatch, so this
package adds, once at load and only where the CPU supports it:

- ``blas.py``: MLX's Linux CPU build bound to OpenBLAS (process-wide, at import), and the gemv shim
  that runs one-row products with its own AVX-512 kernel (``kernels/gemv_shim.c``);
- ``translator.py``: the translator's CPU graph (``nllb_graph.py``: fused q/k/v, compiled norms, chunked
  products), its decoding step in one C call (``nllb_step.py``, ``kernels/nllb_decode.c``) and a float32
  encoder for quantized models;
- ``voice.py``: the vocoder's convolutions as GEMMs (``conv.py``) or in 8 bits (``int8_conv.py``,
  ``vocoder_int8.py``, ``kernels/int8_conv.c``);
- ``modules.py``: how both swap modules of a loaded model for CPU subclasses that share its arrays (as
  ``nn.quantize`` swaps layers), and give the model back as loaded; ``build.py``: compiling the kernels.

Which runs is chosen by ``backend`` (:func:`resolve_backend`): ``"auto"`` takes the accelerator where
MLX runs on the CPU and it can be built, the pure model elsewhere (a GPU), and logs one WARNING when a
CPU that would benefit cannot have it; ``"mlx"`` is the pure model whatever the device; ``"cpu"`` is the
accelerator or :class:`AcceleratorError` saying why not. ``MLX_STREAM_TTS_BACKEND=mlx`` forces the pure
model everywhere (it also keeps the gemv shim out of the process).

This module imports neither MLX nor NumPy at import time: ``blas`` must run before ``mlx.core`` loads.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "mlx", "cpu")
ENV_BACKEND = "MLX_STREAM_TTS_BACKEND"


class AcceleratorError(RuntimeError):
    """``backend="cpu"`` was asked for where the accelerator cannot run; the message says why."""


def resolve_backend(backend: str | None = "auto") -> str:
    """The backend to use: ``"mlx"`` or ``"cpu"`` are kept, ``"auto"`` (or None) stays ``"auto"``.

    ``$MLX_STREAM_TTS_BACKEND`` set to ``mlx`` wins over any argument (the pure model everywhere); set
    to ``cpu`` or ``auto`` it replaces an ``"auto"`` argument.

    Raises:
        ValueError: an unknown backend, in the argument or the environment.
    """
    env = os.environ.get(ENV_BACKEND, "").strip().lower()
    if env and env not in BACKENDS:
        raise ValueError(f"{ENV_BACKEND}={env!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    chosen = "auto" if backend is None else str(backend).strip().lower()
    if chosen not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if env == "mlx":
        return "mlx"
    if chosen == "auto" and env:
        return env
    return chosen


def device_allows(backend: str) -> bool:
    """Whether the accelerator should be applied for an already resolved ``backend``.

    False for ``"mlx"``, and for ``"auto"`` when MLX's default device is not the CPU (a GPU runs the
    pure model). ``"cpu"`` on a GPU device raises :class:`AcceleratorError`.
    """
    if backend == "mlx":
        return False
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        if backend == "cpu":
            raise AcceleratorError(
                f"backend='cpu' asked for, but MLX runs on {mx.default_device()}: the CPU accelerator only "
                "serves MLX's CPU device; use backend='mlx' (or 'auto'), or mx.set_default_device(mx.cpu)"
            )
        return False
    return True


def would_benefit() -> bool:
    """Whether this machine is one the accelerator is made for: MLX's Linux CPU build."""
    return sys.platform.startswith("linux")


_warned: set[str] = set()


def unavailable(backend: str, part: str, lost: str, reason: str, fix: str) -> None:
    """Say that ``part`` of the accelerator cannot run here, once per process and part.

    With ``backend="cpu"`` this raises :class:`AcceleratorError`. With ``"auto"`` it logs one WARNING
    on a machine the accelerator is made for (:func:`would_benefit`), an INFO line elsewhere.

    Args:
        part: what is missing ("the 8-bit vocoder").
        lost: what that costs ("the voice runs ~2.7x slower").
        reason: why it is missing (from :data:`.build.failures`).
        fix: how to get it.
    """
    message = f"CPU accelerator: {part} is unavailable ({reason}); {lost}. {fix}"
    if backend == "cpu":
        raise AcceleratorError(message)
    if part in _warned:
        return
    _warned.add(part)
    logger.log(logging.WARNING if would_benefit() else logging.INFO, message)


def failure(source: str, default: str = "unknown reason") -> str:
    """Why the kernel ``source`` (e.g. ``"int8_conv.c"``) is not available, as far as is known."""
    from .build import failures

    return failures.get(source, default)
