"""Where converted models and other caches live: ``~/.cache/mlx_stream_tts`` unless overridden."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$MLX_STREAM_TTS_CACHE``, else ``$XDG_CACHE_HOME/mlx_stream_tts``, else ``~/.cache/mlx_stream_tts``."""
    root = os.environ.get("MLX_STREAM_TTS_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlx_stream_tts"
