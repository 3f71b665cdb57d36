# Importing the package first binds MLX's CPU matmuls to OpenBLAS (it must precede `import mlx.core`).
import os

import mlx_stream_tts  # noqa: F401
import mlx.core  # noqa: F401,E402  (OpenBLAS and the gemv shim load now, as in any process that runs a model)

# The phrase cache is on by default for users; tests never read or write the real one (a test that
# wants a cache makes its own in a temp folder, and the cache tests set this variable themselves).
os.environ.setdefault("MLX_STREAM_TTS_NO_CACHE", "1")
