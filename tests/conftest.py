# Importing the package first binds MLX's CPU matmuls to OpenBLAS (it must precede `import mlx.core`).
import mlx_stream_tts  # noqa: F401
