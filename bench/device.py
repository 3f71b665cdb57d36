"""The models on whatever device MLX uses (a Mac's GPU, MLX's CUDA build, or a CPU), in a few minutes.

    python bench/device.py                      # every part, backends mlx and (on a CPU) auto side by side
    python bench/device.py --only nllb --tokens 16
    python bench/device.py --json out.json      # also save the numbers

Runs on a machine that has only MLX, NumPy and this project's code: no voice packages, no tokenizer
packages, no network and no converted weights. Where the real weights are absent it builds random
weights of the real shapes (speed does not depend on the values):

- NLLB-200-distilled-600M's shape, 256,206 output rows (the full vocabulary), a 24-token source and
  exactly ``--tokens`` greedy tokens; the encoder's time and ms per token for each dtype (float32,
  float16, bfloat16, and 8-bit weights). A stand-in tokenizer names the ids (no sentencepiece needed).
- Kokoro-82M's shape, fed phoneme ids through a stand-in G2P; durations come from the duration
  projection set to 3 frames per phoneme (~75 ms, about real speech) so that a sentence's audio has a
  realistic length. The voice's real-time factor and time to first chunk, streaming (``windowed``).
- One English sentence through ``Pipeline`` (translator + voice + a sink that keeps the audio), fed in
  pieces: time from its last piece to its first audio.

Each part runs with ``backend="mlx"`` (the pure model) and, when MLX's device is the CPU, ``"auto"``
(the CPU accelerator where it can run) side by side. Numbers are the best of ``--runs`` after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx_stream_tts  # noqa: E402,F401  (OpenBLAS before mlx on Linux)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

NLLB_SHAPE = dict(vocab_size=256206, d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                  decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
                  max_position_embeddings=1024, scale_embedding=True, activation_function="relu")
SRC_TOKENS = 24
ENGLISH = "Run the tests again before you commit the change, then open the file and read the first line."
# ~3.5 s of speech at 3 frames per phoneme (a short agent sentence).
PHONEMES = "tesuto o mooichido jikkoo shite kara, komitto shimasu."
FRAMES_PER_PHONEME = 3


def device_line() -> str:
    """What MLX runs on, as precisely as this MLX build says."""
    dev = mx.default_device()
    info = {}
    try:
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
    except Exception:  # noqa: BLE001  (older MLX, or no GPU backend)
        info = {}
    name = info.get("device_name") or info.get("architecture") or ""
    mem = info.get("memory_size")
    extra = f", {name}" if name else ""
    extra += f", {mem / 2**30:.0f} GiB" if mem else ""
    return (f"device: {dev}{extra}; mlx {mx.__version__}; {platform.system()} {platform.machine()}; "
            f"python {platform.python_version()}")


def best(fn, runs: int) -> float:
    """Seconds of the fastest of ``runs`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ------------------------------------------------------------------------------------ translator


class StandInTokenizer:
    """The few ids and calls ``Translator`` needs, without sentencepiece: token ids name letters."""

    pad_id, eos_id, unk_id = 1, 2, 3
    LETTERS = "abcdefghijkmnoprstuwyz"

    def __init__(self, vocab_size: int):
        self.lang_code_to_id = {"eng_Latn": vocab_size - 3, "jpn_Jpan": vocab_size - 2}

    def lang_id(self, code: str) -> int:
        return self.lang_code_to_id[code]

    def encode_pieces(self, text: str) -> list[int]:
        return [4 + (ord(c) % 200) for c in text if not c.isspace()]

    def encode(self, text: str, src_lang: str) -> list[int]:
        return [self.lang_id(src_lang), *self.encode_pieces(text), self.eos_id]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        # Every third id ends a "word": the voice gets pronounceable stand-in phonemes.
        letters = [self.LETTERS[i % len(self.LETTERS)] for i in ids if i > 3]
        return " ".join("".join(letters[j:j + 3]) for j in range(0, len(letters), 3))


def random_nllb(dtype: str):
    """The 600M shape with random weights, cast to ``dtype`` (``"int8"``: 8-bit affine weights)."""
    from mlx.utils import tree_map

    from mlx_stream_tts.models.nllb import Model, ModelArgs, quantize_model

    mx.random.seed(0)
    model = Model(ModelArgs(**NLLB_SHAPE))
    # Embeddings of ~unit scale times sqrt(1024) overflow float16: small values keep every dtype finite.
    model.update(tree_map(lambda p: p * 0.05 if mx.issubdtype(p.dtype, mx.floating) else p, model.parameters()))
    if dtype == "int8":
        quantize_model(model, 64, 8)
        model.args.quantization = {"group_size": 64, "bits": 8}
    elif dtype != "float32":
        target = getattr(mx, dtype)
        model.apply(lambda p: p.astype(target) if mx.issubdtype(p.dtype, mx.floating) else p)
    model.eval()
    mx.eval(model.parameters())
    return model


def make_translator(model, backend: str):
    from mlx_stream_tts.translate import Translator

    return Translator(model, StandInTokenizer(NLLB_SHAPE["vocab_size"]), backend=backend)


def bench_nllb(dtype: str, backend: str, tokens: int, runs: int) -> dict:
    model = random_nllb(dtype)
    tr = make_translator(model, backend)
    tok = tr.tokenizer
    src = [tok.lang_id("eng_Latn"), *range(10, 10 + SRC_TOKENS - 2), tok.eos_id]
    tgt = tok.lang_id("jpn_Jpan")

    def encoder():
        mx.eval(tr.model.encode(mx.array([src])))

    def generate(n):
        out = tr.generate([src], tgt, max_new_tokens=n, guard=False)
        return len(out[0])

    enc = best(encoder, runs)
    first = best(lambda: generate(1), runs)
    total = best(lambda: generate(tokens), runs)
    made = generate(tokens)
    result = dict(part="nllb", dtype=dtype, backend=backend, applied=describe_translator(tr), encoder_ms=enc * 1e3,
                  first_token_ms=first * 1e3, ms_per_token=(total - first) / max(1, tokens - 1) * 1e3,
                  total_ms=total * 1e3, tokens=made)
    del tr, model
    return result


def describe_translator(tr) -> str:
    """What runs the translator: the pure model, or the accelerator (with or without its C step)."""
    accel = tr.accelerator
    if accel is None:
        return "mlx"
    return "cpu+c-step" if getattr(accel, "step", None) is not None else "cpu"


# ----------------------------------------------------------------------------------------- voice


def random_kokoro():
    """Kokoro-82M's shape with random weights; 3 frames per phoneme from the duration projection."""
    from mlx.utils import tree_map

    from mlx_stream_tts.models.kokoro import Model, ModelArgs, _private_arrays

    mx.random.seed(0)
    model = Model(ModelArgs())
    model.update(tree_map(lambda p: p * 0.5 if mx.issubdtype(p.dtype, mx.floating) else p, model.parameters()))
    proj = model.predictor.duration_proj.linear_layer
    max_dur = proj.weight.shape[0]
    proj.weight = mx.zeros_like(proj.weight)
    # Each of max_dur sigmoids gives FRAMES_PER_PHONEME / max_dur: their sum is the duration.
    p = FRAMES_PER_PHONEME / max_dur
    proj.bias = mx.full(proj.bias.shape, math.log(p / (1 - p)))
    model.eval()
    # Constant tables too (as load_model does): a lazy array belongs to the thread that built it, and the
    # pipeline runs the voice on its own thread.
    mx.eval(model.parameters(), _private_arrays(model))
    return model


def make_voice(backend: str):
    from mlx_stream_tts.voice import MlxEngine, Voice

    model = random_kokoro()
    vocab = {c: i + 1 for i, c in enumerate(" ,.!?abcdefghijklmnopqrstuvwxyz")}
    styles = {"random": np.random.default_rng(0).normal(0, 0.3, (510, 256)).astype(np.float32)}
    engine = MlxEngine(model, backend=backend)
    return Voice(engine, styles, vocab, voice="random", g2p=lambda text: text)


def bench_voice(backend: str, runs: int) -> dict:
    voice = make_voice(backend)
    first_chunk, total, samples = [], [], 0
    for _ in range(runs + 1):
        start = time.perf_counter()
        chunks = voice.synthesize(PHONEMES)
        first = next(chunks)
        first_chunk.append(time.perf_counter() - start)
        samples = len(first) + sum(len(c) for c in chunks)
        total.append(time.perf_counter() - start)
    audio_s = samples / voice.sample_rate
    return dict(part="voice", backend=backend, applied=f"{voice.engine.backend}-{voice.engine.precision}",
                audio_s=audio_s, first_chunk_ms=min(first_chunk[1:]) * 1e3, rtf=min(total[1:]) / audio_s)


# -------------------------------------------------------------------------------------- pipeline


class FixedLengthTranslator:
    """``Translator`` with an output of fixed length per sentence (random weights never say ``</s>``
    when it would be natural, and the repetition guard would then decode again with beams)."""

    def __init__(self, translator, tokens: int):
        self.translator, self.tokens = translator, tokens

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        tok = self.translator.tokenizer
        out = self.translator.generate([tok.encode(t, src_lang) for t in texts], tok.lang_id(tgt_lang),
                                       max_new_tokens=self.tokens, guard=False)
        return [tok.decode(ids) or "a" for ids in out]


def bench_pipeline(backend: str, tokens: int, runs: int) -> dict:
    from mlx_stream_tts.audio import NullSink
    from mlx_stream_tts.pipeline import Pipeline

    translator = FixedLengthTranslator(make_translator(random_nllb("float32"), backend), tokens)
    voice = make_voice(backend)
    latencies = []
    for _ in range(runs + 1):
        sink = NullSink()
        with Pipeline(translator=translator, voice=voice, sink=sink, lang="en") as pipeline:
            for i in range(0, len(ENGLISH), 8):
                pipeline.feed(ENGLISH[i:i + 8])
            fed = time.perf_counter()
            pipeline.feed("\n")
            pipeline.flush()
            timing = pipeline.timings()[-1]
        if timing.first_audio is None:
            raise RuntimeError(f"the sentence gave no audio: {timing}")
        latencies.append(timing.first_audio - max(fed, timing.chunked or fed))
    return dict(part="pipeline", backend=backend, sentence_end_to_first_audio_ms=min(latencies[1:]) * 1e3,
                translated_tokens=tokens)


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=("nllb", "voice", "pipeline"), default=None)
    parser.add_argument("--backends", default=None, help="comma list (default: mlx,auto on a CPU, mlx on a GPU)")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16,int8", help="NLLB dtypes")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per NLLB run")
    parser.add_argument("--half-tokens-cpu", type=int, default=6,
                        help="tokens for float16/bfloat16 on a CPU (MLX's half-precision CPU kernels are slow)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    on_cpu = mx.default_device() == mx.cpu
    backends = args.backends.split(",") if args.backends else (["mlx", "auto"] if on_cpu else ["mlx"])
    parts = args.only or ["nllb", "voice", "pipeline"]
    print(device_line(), flush=True)
    results = []
    started = time.perf_counter()

    def show(r: dict) -> None:
        results.append(r)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)

    if "nllb" in parts:
        for dtype in args.dtypes.split(","):
            n = args.half_tokens_cpu if on_cpu and dtype in ("float16", "bfloat16") else args.tokens
            for backend in backends:
                show(bench_nllb(dtype, backend, n, args.runs))
    if "voice" in parts:
        for backend in backends:
            show(bench_voice(backend, args.runs))
    if "pipeline" in parts:
        for backend in backends:
            show(bench_pipeline(backend, 24, args.runs))
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": device_line(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
