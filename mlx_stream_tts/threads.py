"""MLX streams of worker threads: released when a thread ends, so that the process exits cleanly."""

from __future__ import annotations

import sys


def release_thread_streams() -> None:
    """Destroy the MLX streams the calling thread created (no-op if MLX was never imported).

    MLX 0.32 no longer cleans up per-thread streams at exit by itself: a process whose worker threads
    ran MLX can abort during interpreter shutdown ("terminate called without an active exception",
    exit 134). Each thread that ran MLX calls this when it ends; the main thread does at exit.
    """
    mx = sys.modules.get("mlx.core")
    if mx is not None and hasattr(mx, "clear_streams"):
        mx.clear_streams()
