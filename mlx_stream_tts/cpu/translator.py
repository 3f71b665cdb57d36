"""The translator's CPU accelerator, chosen once when a model is loaded: :func:`accelerate`.

On MLX's CPU device a loaded ``models/nllb.py`` model gets its CPU graph (``nllb_graph.py``: fused q/k/v,
compiled layer norms, chunked or shim products, and a float32 encoder for a quantized model) and, where
the gemv shim and ``kernels/nllb_decode.c`` can be had, the decoding step in one C call per token
(``nllb_step.py``): ~1.4x faster than MLX ops in float32, ~15x in 8 bits. A GPU, or ``backend="mlx"``,
keeps the pure model untouched.

Half precision on the CPU: the C step reads float32 and 8/4-bit weights only, so a float16/bfloat16
model gets the graph rewrites and decodes with MLX ops (an INFO line says so; MLX's half-precision CPU
kernels are slow, which is why ``Translator.load(dtype="auto")`` loads float32 on a CPU).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlx.core as mx

from ..models.nllb import Model
from . import blas as _blas
from . import device_allows, failure, resolve_backend, unavailable
from .nllb_graph import dequantize_encoder, rewrite, set_parallel
from .nllb_step import DecodingStep, nllb_decode, unsupported

logger = logging.getLogger(__name__)

STEP = "the translator's one-call decoding step"
STEP_LOSS = "decoding runs ~1.4x slower in float32 and ~15x slower in 8 bits"
STEP_FIX = ("It needs OpenBLAS (pip install cmeel-openblas), a C compiler (gcc or clang) and "
            "MLX_STREAM_TTS_GEMV / MLX_STREAM_TTS_NATIVE_DECODE left unset; backend='mlx' runs the pure model "
            "without this warning.")


@dataclass
class TranslatorAccelerator:
    """What :func:`accelerate` applied to a model: its CPU graph, and the C decoding step if any.

    Attributes:
        model: the model, its modules swapped for their CPU forms.
        step: the C decoding step, or None (MLX ops decode: ``c_step=False``, half precision, or the
            step could not be built).
        parallel: whether large products split over two CPU streams (:func:`.nllb_graph.set_parallel`).
    """

    model: Model
    step: DecodingStep | None
    parallel: bool = False

    def decoding_step(self) -> DecodingStep | None:
        """The C step over the model's current weights: made again after weights were replaced (it points
        into the arrays it was built on); None from then on if the new ones do not suit it."""
        if self.step is not None and not self.step.current():
            self.step = DecodingStep.create(self.model)
        return self.step


def accelerate(
    model: Model, backend: str = "auto", *, c_step: bool = True, parallel: bool = False
) -> TranslatorAccelerator | None:
    """Apply the CPU accelerator to a loaded ``model`` where ``backend`` and the device call for it.

    Args:
        model: a loaded model (weights and dtype final); changed in place when accelerated.
        backend: ``"auto"``, ``"mlx"`` or ``"cpu"`` (see :func:`mlx_stream_tts.cpu.resolve_backend`;
            ``MLX_STREAM_TTS_BACKEND=mlx`` wins).
        c_step: prepare the C decoding step (False: the CPU graph decoded with MLX ops, for comparisons).
        parallel: split large products over two CPU streams; helps only while the second core is free.

    Returns:
        None for the pure model (a GPU, or ``"mlx"``): nothing swapped, nothing built. Otherwise the
        :class:`TranslatorAccelerator` applied.

    Raises:
        AcceleratorError: ``backend="cpu"`` where the accelerator, or its C step, cannot run (the message
            says why).
    """
    backend = resolve_backend(backend)
    if not device_allows(backend):
        why = "backend 'mlx'" if backend == "mlx" else f"MLX runs on {mx.default_device()}"
        logger.info("translator: the pure MLX model (%s)", why)
        return None
    chosen = ["CPU graph (fused q/k/v, compiled layer norms, %s products)"
              % ("shim and chunked" if _blas.gemv_shim is not None else "chunked")]
    if model.args.quantization and dequantize_encoder(model):
        chosen.append("float32 encoder")
    rewrite(model)
    set_parallel(model, parallel)
    if parallel:
        chosen.append("two streams")
    step = _decoding_step(model, backend) if c_step else None
    if step is not None:
        bits = model.args.quantization["bits"] if model.args.quantization else 0
        chosen.append(f"one-call decoding step ({f'{bits}-bit' if bits else 'float32'})")
    else:
        chosen.append("MLX ops per decoding step" + ("" if c_step else " (c_step=False)"))
    logger.info("translator on the CPU: %s", ", ".join(chosen))
    return TranslatorAccelerator(model, step, parallel)


def _decoding_step(model: Model, backend: str) -> DecodingStep | None:
    reason = unsupported(model)
    if reason is not None:
        # Not a missing part of the machine: this model is one the step does not run (half precision).
        logger.info("translator: MLX ops decode this model on the CPU, the C step does not run it: %s", reason)
        return None
    if _blas.active_blas is None:
        missing = "no OpenBLAS"
    elif _blas.gemv_shim is None:
        missing = failure("gemv_shim.c", "the gemv shim is not loaded")
    elif nllb_decode() is None:
        missing = failure("nllb_decode.c", "kernels/nllb_decode.c could not be built")
    else:
        try:
            return DecodingStep(model, nllb_decode())
        except ValueError as err:  # a weight layout the step does not read
            logger.info("translator: MLX ops decode this model on the CPU, the C step does not run it: %s", err)
            return None
    unavailable(backend, STEP, STEP_LOSS, missing, STEP_FIX)  # raises for backend "cpu"
    return None
