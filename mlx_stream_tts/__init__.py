"""mlx_stream_tts: English text streams (e.g. Claude Code output) to spoken Japanese, on MLX.

Importing the package first makes MLX's CPU backend use OpenBLAS on Linux (see ``cpu/blas.py``): the
library is loaded just before ``mlx.core`` is first imported, which only works if nothing imported
``mlx.core`` earlier in the process. The public names load on first
use so that ``import mlx_stream_tts`` (and the CLI's ``--dry-run``) stays light.
"""

import atexit
from importlib import import_module

from .cpu.blas import ensure_fast_blas, install_import_hook
from .threads import release_thread_streams

install_import_hook()
atexit.register(release_thread_streams)  # the main thread's MLX streams, before shutdown

__version__ = "0.1.0"

_PUBLIC = {
    "Pipeline": ".pipeline",
    "SentenceChunker": ".chunking",
    "chunk_sentences": ".chunking",
    "parse_stream_json": ".claude",
    "Translator": ".translate",
    "Voice": ".voice",
}

__all__ = [*_PUBLIC, "ensure_fast_blas"]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mlx_stream_tts' has no attribute {name!r}")
