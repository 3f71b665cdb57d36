"""Weight conversion: NLLB-200 / M2M100 and Kokoro-82M checkpoints -> this package's MLX format.

Run as ``python -m convert {nllb,kokoro} ...`` or ``mlx-stream-tts convert {nllb,kokoro} ...``.
"""
