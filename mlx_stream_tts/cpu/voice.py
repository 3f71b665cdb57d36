"""The voice's CPU accelerator, applied once to a loaded Kokoro model: :func:`accelerate`, :func:`restore`.

What it can choose, fastest first:

- ``"cpu-int8"``: the decoder's convolutions in 8 bits (``vocoder_int8.py``, ``kernels/int8_conv.c``;
  needs AVX-512 VNNI and a C compiler), everything else as ``"cpu-float32"``;
- ``"cpu-float32"``: every conv of the model rewritten as graphs MLX's CPU backend runs fast
  (``conv.py``); the same numbers as the pure model up to float rounding;
- ``"mlx"``: nothing swapped, the pure model of ``models/`` (what a GPU runs). On a CPU it decodes at
  ~13x real time, tens of times slower than ``"cpu-float32"``: MLX's CPU backend runs dilated and
  strided transposed convs as direct loops.
"""

from __future__ import annotations

import logging

import mlx.nn as nn

from . import AcceleratorError, device_allows, failure, resolve_backend, unavailable
from .modules import replaced
from .modules import restore as _restore

logger = logging.getLogger(__name__)

#: What ``precision`` may ask for: ``"auto"`` is int8 where the kernel runs, else float32.
PRECISIONS = ("auto", "int8", "float32")


def accelerate(model: nn.Module, backend: str = "auto", precision: str = "auto") -> str:
    """Swap the CPU accelerator's modules into a loaded ``models.kokoro.Model`` (undoing any earlier call).

    The swapped modules share the model's parameter arrays; the 8-bit ones hold weights packed from
    them, so weights loaded into the model later need another call.

    Args:
        model: the Kokoro model, as :func:`models.kokoro.load_model` gives it.
        backend: ``"auto"``, ``"mlx"`` or ``"cpu"`` (see :func:`mlx_stream_tts.cpu.resolve_backend`;
            ``$MLX_STREAM_TTS_BACKEND=mlx`` forces the pure model).
        precision: the decoder's convolutions on the CPU: ``"auto"``, ``"int8"`` or ``"float32"``.

    Returns:
        What now runs: ``"mlx"`` (nothing swapped: another device, or ``backend="mlx"``),
        ``"cpu-float32"`` or ``"cpu-int8"``.

    Raises:
        ValueError: an unknown backend or precision.
        AcceleratorError: ``precision="int8"`` where the 8-bit kernel cannot run (or the backend is
            the pure model's), ``backend="cpu"`` where the accelerator (with ``precision="auto"``,
            the 8-bit kernel) cannot run; the message says why.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    backend = resolve_backend(backend)
    restore(model)
    if not device_allows(backend):
        if precision == "int8":
            raise AcceleratorError(pure_int8_message(backend))
        logger.info("voice: the pure MLX model (backend %r, MLX on %s)", backend, _device())
        return "mlx"
    from .int8_conv import int8_conv

    int8 = precision != "float32" and int8_conv() is not None
    if precision != "float32" and not int8:
        reason = failure("int8_conv.c")
        if precision == "int8":
            raise AcceleratorError(
                f"precision='int8' needs the 8-bit vocoder kernel, which cannot run here ({reason}): it needs "
                "a CPU with AVX-512 VNNI and a C compiler (gcc or clang); use precision='float32' or 'auto'"
            )
        unavailable(backend, "the 8-bit vocoder", "the voice runs ~2.7x slower", reason,
                    "It needs a CPU with AVX-512 VNNI and a C compiler (gcc or clang).")
    from .conv import to_cpu

    if int8:
        from .vocoder_int8 import to_int8

        to_int8(model.decoder)
    to_cpu(model)
    chosen = "cpu-int8" if int8 else "cpu-float32"
    logger.info("voice: CPU accelerator, %s (%d modules swapped)", chosen, len(replaced(model)))
    return chosen


def restore(model: nn.Module) -> None:
    """Give ``model`` back its pure modules, as loaded (a no-op on a model never accelerated)."""
    _restore(model)


def _device() -> str:
    import mlx.core as mx

    return str(mx.default_device())


def pure_int8_message(backend: str) -> str:
    """Why ``precision="int8"`` cannot run with the pure model (``backend`` as resolved)."""
    why = "backend='mlx' (or MLX_STREAM_TTS_BACKEND=mlx)" if backend == "mlx" else f"MLX runs on {_device()}"
    return (f"precision='int8' is the CPU accelerator's 8-bit vocoder, but {why} selects the pure MLX model; "
            "use precision='auto' or 'float32'")
