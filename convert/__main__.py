"""`python -m convert {nllb,kokoro} ...`: the same commands as `mlx-stream-tts convert ...`."""

import argparse
import logging
import sys

import mlx_stream_tts  # noqa: F401  (fast BLAS before mlx is imported)
from mlx_stream_tts.cli import add_convert_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert", description="Convert model weights to MLX.")
    add_convert_commands(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
