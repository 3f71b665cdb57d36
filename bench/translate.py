"""Translation speed: ours (MLX) against transformers and CTranslate2 on a random 600M NLLB model.

    python bench/translate.py                # all engines, 2 threads, prints a table
    python bench/translate.py --runs 3 --only ours-fp32 ct2-int8

Builds once (cached in ~/.cache/mlx_stream_tts/bench/nllb-600M-random, outside the repo) a random-weight
M2M100 of the exact nllb-200-distilled-600M shape, converts it with our converter (each dtype /
quantization, with and without a restricted output vocabulary) and with CTranslate2's converter, then
times each engine in its own subprocess (so peak memory is its own): batch 1, a 24-token source,
exactly 32 new tokens (greedy). Speed does not depend on the weight values. Our rows:

- "ours-*": the default on this machine (backend "auto"): the CPU accelerator, each decoding step in one
  C call (cpu/nllb_step.py) over the CPU graph's weights (cpu/nllb_graph.py);
- "ours-*-mlx": the same CPU graph, every step as MLX ops (``Translator.load(..., c_step=False)``);
- "ours-*-pure": the pure model of models/nllb.py, what a Mac runs, here on this CPU: a child process with
  ``MLX_STREAM_TTS_BACKEND=mlx``, so no part of the accelerator (not even the gemv shim under MLX's
  one-row products) is loaded; MLX still uses OpenBLAS. Quantized pure rows run MLX's quantized CPU
  kernels, encoder included.

Models are loaded in their stored dtype (``dtype=None``): the fp16/bf16 rows measure MLX's half-precision
CPU kernels, which ``dtype="auto"`` would avoid by loading float32.

``--spans`` measures instead what ``spans.ProtectedTranslator`` adds per sentence on agent sentences: the
time of ``protect`` + ``restore``, the source tokens of the masked text against the raw text (with this
folder's tokenizer: the tiny test sentencepiece model, not NLLB's), and the translation of the same batch
with and without the wrapper on the 600M shape (fp32, a fixed number of new tokens), in this process.

The restricted variants keep 32,000 output rows chosen at random: the size we expect for
``--restrict-vocab jpn_Jpan`` on the real vocabulary (Han, kana, digits and punctuation); the
random weights make the real script filter meaningless here.

``--lm`` adds rows for small decoder-only translators run by mlx-lm (``--lm-only``: those rows alone;
``--lm-models``: which). Each is a random-weight model of a real shape built by mlx-lm's own classes
(bench/lm_models.py: LFM2-350M, the shape of LiquidAI/LFM2-350M-ENJP-MT; LFM2-1.2B; Qwen3-0.6B) in float32,
8-bit or 4-bit (mlx-community's quantization, group 64), built in its own child process and timed through
mlx-lm's generation loop (``generate_step``, greedy, its KV cache) on the same English sentence as the
NLLB rows, rendered with the model's chat template and a translation instruction. A decoder-only model
re-reads that whole prompt before its first token, so the rows count it: its tokens are estimated (no
tokenizer files are reachable here; see lm_models.count_prompt_tokens) and fed as random ids of that
length. Every row decodes exactly 32 new tokens (no end-of-sequence: random weights). Also timed: the
first token when one earlier sentence pair is in the prompt as context (which NLLB cannot use). Peak RSS
counts from after the random build (the float32 -> quantized transient of the build is not what loading
the published weights costs). Quantized rows run MLX's quantized CPU kernels (no BLAS), slow on this CPU;
a Mac runs them on the GPU. Rows suffixed ``-pure`` run without the gemv shim (backend ``mlx``). These
numbers are the model's cost; the pipeline's Translator wrapper around mlx-lm adds a little on top.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one (the children run this file too)
sys.path.insert(0, str(ROOT / "bench"))

import lm_models  # noqa: E402  (bench/lm_models.py; imports nothing heavy)

SRC_TOKENS = 24
NEW_TOKENS = 32
THREADS = 2
RESTRICTED_ROWS = 32_000
SHAPE = dict(vocab_size=256206, d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
             decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, max_position_embeddings=1024,
             scale_embedding=True, activation_function="relu")

# name -> converter options (ours) or CTranslate2 compute type.
OURS = {
    "ours-fp32": dict(dtype="float32"),
    "ours-fp32-r32k": dict(dtype="float32", restrict=True),
    "ours-fp16-r32k": dict(dtype="float16", restrict=True),
    "ours-bf16": dict(dtype="bfloat16"),
    "ours-int8": dict(dtype="float32", q_bits=8),
    "ours-int8-r32k": dict(dtype="float32", q_bits=8, restrict=True),
    "ours-int4": dict(dtype="float32", q_bits=4),
}
# The same folders decoded with every step as MLX ops (Translator.load(c_step=False)), for comparison.
MLX_STEPS = {f"{name}-mlx": name for name in ("ours-fp32", "ours-fp32-r32k")}
# The same folders on the pure model (backend "mlx", in a child without the accelerator).
PURE = {f"{name}-pure": name for name in ("ours-fp32", "ours-fp32-r32k", "ours-int8-r32k")}
PEERS = ["transformers-fp32", "transformers-bf16", "ct2-float32", "ct2-int8"]
# Decoder-only rows (--lm): every shape x dtype of lm_models, and the float32 ones without the gemv shim.
LM_ROWS = {**{name: name for name in lm_models.VARIANTS},
           **{f"{name}-pure": name for name in lm_models.VARIANTS if name.endswith("-fp32")}}
DEFAULT_LM = [f"{shape}-{tag}" for shape in ("lfm2-350m", "lfm2-1.2b") for tag in ("fp32", "q8", "q4")]
# The sentence every row translates, and the one before it (the context of the LM rows' context column).
ENGLISH = "Run the tests again before you commit the change, then open the file and read the first line."
PREVIOUS = "I found the failing test: the parser drops the last argument."


def cache_dir() -> Path:
    from mlx_stream_tts.paths import cache_root

    return cache_root() / "bench" / "nllb-600M-random"


def build_hf(folder: Path) -> Path:
    """The random HF checkpoint + a tiny tokenizer (its ids only name tokens; speed ignores them)."""
    hf = folder / "hf"
    if (hf / "config.json").is_file():
        return hf
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from nllb_fixtures import build_reference_tokenizer, train_spm
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    spm_path = train_spm(folder / "spm")
    _, tok_dir = build_reference_tokenizer(spm_path, folder / "tok")
    torch.manual_seed(0)
    config = M2M100Config(**SHAPE, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1,
                          bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    model = M2M100ForConditionalGeneration(config).eval()
    tmp = folder / "hf.tmp"
    model.save_pretrained(str(tmp))
    for name in ("sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json"):
        (tmp / name).write_bytes((tok_dir / name).read_bytes())
    tmp.rename(hf)
    return hf


def build_ours(folder: Path, hf: Path, name: str) -> Path:
    from mlx_stream_tts.models.nllb import FORMAT_VERSION

    out = folder / name
    config = out / "config.json"
    if config.is_file() and json.loads(config.read_text())["mlx_stream_tts"].get("format") == FORMAT_VERSION:
        return out
    import numpy as np

    from convert.nllb import convert_nllb

    opts = dict(OURS[name])
    restrict = opts.pop("restrict", False)
    ids = None
    if restrict:
        ids = np.random.default_rng(0).choice(SHAPE["vocab_size"], RESTRICTED_ROWS - 1, replace=False).tolist()
    return convert_nllb(hf, out, restrict_ids=ids, overwrite=True, **opts)


def build_ct2(folder: Path, hf: Path, quantization: str) -> Path:
    out = folder / f"ct2-{quantization}"
    if (out / "model.bin").is_file():
        return out
    import ctranslate2

    ctranslate2.converters.TransformersConverter(str(hf)).convert(str(out), quantization=quantization)
    return out


def source_tokens(hf: Path) -> list[str]:
    """A 24-token source: eng_Latn, 22 pieces, </s>."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(hf / "sentencepiece.bpe.model"))
    pieces = sp.encode(ENGLISH, out_type=str)[: SRC_TOKENS - 2]
    assert len(pieces) == SRC_TOKENS - 2, len(pieces)
    return ["eng_Latn", *pieces, "</s>"]


def peak_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, because ru_maxrss of a child started by
    fork + exec is at least the parent's RSS at the fork (here ~1.3 GB after bandwidth_gbs), which
    hid every smaller child's own peak; elsewhere ru_maxrss (bytes on macOS)."""
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def rss_mb() -> float:
    """This process's resident memory now (Linux; the peak elsewhere)."""
    kb = _proc_status_kb("VmRSS")
    return kb / 1024 if kb is not None else peak_mb()


def reset_peak() -> bool:
    """Restart the peak count (VmHWM) from the current RSS (Linux: clear_refs 5); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------------ engines (child)


def run_ours(path: Path, tokens: list[str], runs: int, c_step: bool = True) -> dict:
    import mlx_stream_tts  # noqa: F401  (OpenBLAS before mlx)
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_stream_tts.translate import Translator

    # Two cores, as the peers get (THREADS). The stored dtype, whatever the device prefers.
    parallel = THREADS > 1 and os.environ.get("BENCH_PARALLEL", "1") == "1"
    tr = Translator.load(path, dtype=None, c_step=c_step, parallel=parallel)
    loaded_mb = peak_mb()
    tok = tr.tokenizer
    src = [tok.lang_id("eng_Latn")] + [tok.sp.piece_to_id(p) + tok.piece_offset for p in tokens[1:-1]] + [tok.eos_id]
    tgt = tok.lang_id("jpn_Jpan")
    model = tr.model

    def encoder():
        mx.eval(model.encode(mx.array([src])))

    def first():
        return tr.generate([src], tgt, max_new_tokens=1, guard=False)

    def full():
        out = tr.generate([src], tgt, max_new_tokens=NEW_TOKENS, guard=False)
        assert len(out[0]) == NEW_TOKENS, f"stopped after {len(out[0])} tokens"

    times = {k: _best(f, runs) for k, f in (("encoder", encoder), ("first", first), ("total", full))}
    # Time inside the gemv shim's own kernel during one more generation: how fast the products alone
    # read in place, next to everything else a step does.
    from mlx_stream_tts.cpu import blas as _blas

    (s0, b0), start = _blas.gemv_kernel_time(), time.perf_counter()
    full()
    (s1, b1), wall = _blas.gemv_kernel_time(), time.perf_counter() - start
    products = dict(product_s=s1 - s0, product_bytes=b1 - b0, product_wall_s=wall)
    # Bytes read per decode step: decoder layers without the cross-attention key/value projections (run
    # once per sentence) + output projection (+ the embedding row and the caches, negligible here).
    params = dict(tree_flatten(model.parameters()))
    once = ("encoder_attn.k_proj", "encoder_attn.v_proj")
    layer_bytes = sum(v.nbytes for k, v in params.items() if k.startswith("model.decoder.") and not any(o in k for o in once))
    head_bytes = sum(v.nbytes for k, v in params.items() if k.startswith("lm_head.") and "token_ids" not in k)
    if not head_bytes:
        head_bytes = sum(v.nbytes for k, v in params.items() if k.startswith("model.shared."))
    return dict(times, **products, loaded_mb=loaded_mb, peak_mb=peak_mb(), step_bytes=layer_bytes + head_bytes)


def run_transformers(hf: Path, tokens: list[str], runs: int, dtype: str) -> dict:
    import torch
    from transformers import AutoTokenizer, M2M100ForConditionalGeneration

    torch.set_num_threads(THREADS)
    model = M2M100ForConditionalGeneration.from_pretrained(str(hf), dtype=getattr(torch, dtype)).eval()
    loaded_mb = peak_mb()
    tok = AutoTokenizer.from_pretrained(str(hf))
    ids = torch.tensor([tok.convert_tokens_to_ids(tokens)])
    tgt = tok.convert_tokens_to_ids("jpn_Jpan")

    def gen(n):
        with torch.inference_mode():
            # +1: transformers counts the forced language code as a new token.
            out = model.generate(input_ids=ids, forced_bos_token_id=tgt, max_new_tokens=n + 1,
                                 min_new_tokens=n + 1, do_sample=False, num_beams=1)
        assert out.shape[1] == n + 2

    def encoder():
        with torch.inference_mode():
            model.model.encoder(input_ids=ids)

    times = {"encoder": _best(encoder, runs), "first": _best(lambda: gen(1), runs), "total": _best(lambda: gen(NEW_TOKENS), runs)}
    return dict(times, loaded_mb=loaded_mb, peak_mb=peak_mb())


def run_ct2(path: Path, tokens: list[str], runs: int) -> dict:
    import ctranslate2

    translator = ctranslate2.Translator(str(path), device="cpu", inter_threads=1, intra_threads=THREADS)
    loaded_mb = peak_mb()

    def gen(n):
        out = translator.translate_batch([tokens], target_prefix=[["jpn_Jpan"]], beam_size=1,
                                         max_decoding_length=n + 1, min_decoding_length=n + 1)
        assert len(out[0].hypotheses[0]) == n + 1, len(out[0].hypotheses[0])

    # CTranslate2's Translator has no separate encoder call: its encoder time is not reported.
    times = {"encoder": None, "first": _best(lambda: gen(1), runs), "total": _best(lambda: gen(NEW_TOKENS), runs)}
    return dict(times, loaded_mb=loaded_mb, peak_mb=peak_mb())


def run_lm(name: str, runs: int) -> dict:
    """One decoder-only row (see the module docstring), in this child process."""
    import mlx_stream_tts  # noqa: F401  (OpenBLAS before mlx, and the gemv shim unless backend mlx)
    import mlx.core as mx

    from mlx_stream_tts.cpu import blas as _blas

    _blas.set_blas_threads(THREADS)
    shape, bits = lm_models.VARIANTS[LM_ROWS[name]]
    model, config = lm_models.build_model(shape, bits)
    mx.clear_cache()
    peak_reset = reset_peak()
    loaded_mb = rss_mb()
    fam = lm_models.family(shape)
    prompt_tokens = lm_models.count_prompt_tokens(fam, lm_models.render_chat(fam, ENGLISH))
    # The earlier translation is as long as every output here: NEW_TOKENS.
    context_tokens = NEW_TOKENS + lm_models.count_prompt_tokens(
        fam, lm_models.render_chat(fam, ENGLISH, context=[(PREVIOUS, "")]))
    ids = lm_models.prompt_ids(prompt_tokens, config["vocab_size"])
    context_ids = lm_models.prompt_ids(context_tokens, config["vocab_size"], seed=1)
    calls = _blas.gemv_calls()
    firsts, totals, context_firsts = [], [], []
    for run in range(runs + 1):  # the first is a warm-up
        first, total = lm_models.timed_generation(model, ids, NEW_TOKENS)
        context_first, _ = lm_models.timed_generation(model, context_ids, 1)
        if run:
            firsts.append(first), totals.append(total), context_firsts.append(context_first)
    # Tied embeddings: the output head reads the whole embedding matrix every step, so a step reads
    # every weight (the conv states and the short KV cache are negligible beside them).
    weights = lm_models.weight_bytes(model)
    return dict(first=min(firsts) * 1000, total=min(totals) * 1000, first_context=min(context_firsts) * 1000,
                first_spread=(max(firsts) - min(firsts)) * 1000, prompt_tokens=prompt_tokens,
                context_tokens=context_tokens, loaded_mb=loaded_mb, peak_mb=peak_mb(), peak_reset=peak_reset,
                step_bytes=weights, gemv_shim=_blas.gemv_calls() > calls >= 0, encoder=None)


def _best(fn, runs: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def child(name: str, folder: Path, runs: int) -> None:
    hf = folder / "hf"
    tokens = None if name in LM_ROWS else source_tokens(hf)
    if name in LM_ROWS:  # the -pure ones run with MLX_STREAM_TTS_BACKEND=mlx
        result = run_lm(name, runs)
    elif name in OURS:
        result = run_ours(folder / name, tokens, runs)
    elif name in MLX_STEPS:
        result = run_ours(folder / MLX_STEPS[name], tokens, runs, c_step=False)
    elif name in PURE:  # the child runs with MLX_STREAM_TTS_BACKEND=mlx
        result = run_ours(folder / PURE[name], tokens, runs)
    elif name.startswith("transformers-"):
        result = run_transformers(hf, tokens, runs, {"fp32": "float32", "bf16": "bfloat16"}[name.split("-")[1]])
    else:
        result = run_ct2(folder / name, tokens, runs)
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------------------------- parent


# ------------------------------------------------------------------------------ --spans


# Sentences as a coding agent writes them, each with spans (files, commands, identifiers, numbers...).
SPAN_SENTENCES = [
    "Open src/app.ts and run npm test -- --watch.",
    "I updated parse_args() in main.py to accept --verbose.",
    "I ran rm -rf build and rebuilt from scratch.",
    "The docs are at https://docs.python.org/3/library/re.html if you need them.",
    "I upgraded React to v18.2.0 and all 42 tests still pass in 3.5 seconds.",
    "The error comes from os.path.join in utils/helpers.py when the path is empty.",
    "I renamed getUserById to fetchUser and updated tests/test_users.py.",
    "Set NODE_ENV=production and run python -m pytest -x tests/ again.",
    "Coverage went from 81% to 93% after commit 3f2a9c1.",
    "Send the report to alice.smith@example.com when the build on localhost:8080 is green.",
    "Both package.json and tsconfig.json need the new path alias.",
    "Let me check the tests before we commit the change.",  # no span: the wrapper's cost on plain text
]


def bench_spans(folder: Path, runs: int, model: str = "ours-fp32", new_tokens: int = 8) -> None:
    """Prints the cost of the protected-spans wrapper (see the module docstring)."""
    import mlx_stream_tts  # noqa: F401  (OpenBLAS before mlx)
    from mlx_stream_tts.spans import ProtectedTranslator, protect, restore
    from mlx_stream_tts.translate import Translator

    def per_call_us(fn, n: int = 200) -> float:
        best = float("inf")
        for _ in range(max(runs, 3)):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - start) / n)
        return best * 1e6

    tr = Translator.load(folder / model, dtype=None, parallel=THREADS > 1)
    # Random weights never end a sentence: the repetition guard would decode each one again with beam
    # search. Off, so that both batches decode exactly new_tokens greedy tokens per sentence.
    tr.generate = functools.partial(tr.generate, guard=False)
    tok = tr.tokenizer
    rows = []
    for text in SPAN_SENTENCES:
        masked, spans = protect(text)
        p_us = per_call_us(functools.partial(protect, text))
        r_us = per_call_us(functools.partial(restore, masked, spans))
        rows.append((text, masked, len(spans), p_us, r_us, len(tok.encode_pieces(text)), len(tok.encode_pieces(masked))))
    wrapped = ProtectedTranslator(tr)
    texts = list(SPAN_SENTENCES)
    tr.translate(texts[:2], max_new_tokens=2)  # warm-up: the decoding step is built on first use
    raw_ms = _best(lambda: tr.translate(texts, max_new_tokens=new_tokens), runs)
    wrapped_ms = _best(lambda: wrapped.translate(texts, max_new_tokens=new_tokens), runs)
    load = os.getloadavg()
    print(f"\nprotected spans, {len(texts)} agent sentences, model {model} (600M shape, random weights), "
          f"min of {runs} runs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores\n")
    print("| sentence | spans | protect us | restore us | source tokens raw -> masked |")
    print("| --- | --- | --- | --- | --- |")
    for text, masked, n, p_us, r_us, raw_t, masked_t in rows:
        print(f"| {masked[:60]} | {n} | {p_us:.0f} | {r_us:.0f} | {raw_t} -> {masked_t} |")
    p_mean = sum(r[3] for r in rows) / len(rows)
    r_mean = sum(r[4] for r in rows) / len(rows)
    raw_tokens, masked_tokens = sum(r[5] for r in rows), sum(r[6] for r in rows)
    print(f"\nmean per sentence: protect {p_mean:.0f} us + restore {r_mean:.0f} us; source tokens "
          f"{raw_tokens} -> {masked_tokens} ({(masked_tokens - raw_tokens) / raw_tokens:+.0%}, this folder's tokenizer)")
    print(f"translate the batch, {new_tokens} new tokens each: raw {raw_ms:.0f} ms, wrapped {wrapped_ms:.0f} ms "
          f"({(wrapped_ms - raw_ms) / raw_ms:+.1%}; wrapper alone {(p_mean + r_mean) * len(rows) / 1000:.1f} ms "
          f"= {(p_mean + r_mean) * len(rows) / 1000 / raw_ms:.2%} of the raw batch)")


def bandwidth_gbs() -> float:
    """This machine's read speed now, 2 threads: the faster of torch's sum over 1 GB and a matrix-vector
    product over 1 GB through the gemv shim (either can be the faster; the bound takes the stricter)."""
    import torch

    torch.set_num_threads(THREADS)
    a = torch.ones(256 * 1024 * 1024)
    a.sum()
    best = min(_timed(lambda: a.sum()) for _ in range(5))
    speeds = [a.numel() * 4 / best / 1e9]
    del a
    speeds.append(_gemv_gbs())
    return max(speeds)


def _gemv_gbs() -> float:
    import ctypes

    import numpy as np

    from mlx_stream_tts.cpu import blas as _blas

    if _blas.gemv_shim is None:
        return 0.0
    _blas.set_blas_threads(THREADS)
    rows, k = 1 << 18, 1024
    m, x, y = np.ones((rows, k), np.float32), np.ones(k, np.float32), np.zeros(rows, np.float32)
    fp = ctypes.c_void_p
    sgemm = _blas.gemv_shim.cblas_sgemm
    call = lambda: sgemm(101, 111, 112, 1, rows, k, ctypes.c_float(1.0), fp(x.ctypes.data), k,  # noqa: E731
                         fp(m.ctypes.data), k, ctypes.c_float(0.0), fp(y.ctypes.data), rows)
    call()
    return m.nbytes / min(_timed(call) for _ in range(5)) / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per engine (min is reported)")
    parser.add_argument("--only", nargs="+",
                        help=f"NLLB engines to run (default all: {' '.join([*OURS, *MLX_STEPS, *PURE, *PEERS])}; "
                             "none with --lm-only)")
    parser.add_argument("--lm", action="store_true", help="also run the decoder-only (mlx-lm) rows")
    parser.add_argument("--lm-only", action="store_true",
                        help="the decoder-only rows alone (plus the NLLB engines named by --only)")
    parser.add_argument("--lm-models", nargs="+", choices=list(LM_ROWS), metavar="ROW",
                        help=f"decoder-only rows (implies --lm; default {' '.join(DEFAULT_LM)}; "
                             f"all: {' '.join(LM_ROWS)})")
    parser.add_argument("--lm-runs", type=int, default=3,
                        help="timed runs per decoder-only row (min is reported; they are slow here)")
    parser.add_argument("--spans", action="store_true",
                        help="measure the protected-spans wrapper instead (protect/restore time, tokens, batch time)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.lm_runs < 1:
        parser.error("--runs and --lm-runs must be at least 1")
    folder = cache_dir()
    if args.spans:
        hf = build_hf(folder)
        build_ours(folder, hf, "ours-fp32")
        bench_spans(folder, args.runs)
        return 0
    if args.child:
        child(args.child, folder, args.runs)
        return 0

    lm_names = args.lm_models or (DEFAULT_LM if args.lm or args.lm_only else [])
    names = args.only or ([] if args.lm_only else [*OURS, *MLX_STEPS, *PURE, *PEERS])
    if names:
        folder.mkdir(parents=True, exist_ok=True)
        hf = build_hf(folder)
    for name in names:
        if name in OURS or name in MLX_STEPS or name in PURE:
            build_ours(folder, hf, MLX_STEPS.get(name, PURE.get(name, name)))
        elif name.startswith("ct2-"):
            build_ct2(folder, hf, name.split("-", 1)[1])
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), OPENBLAS_NUM_THREADS=str(THREADS))
    load_before = os.getloadavg()
    results, gbs_of = {}, {}
    for name in [*names, *lm_names]:
        # This shared VM's read speed drifts (41-79 GB/s seen): measure it beside each engine, before
        # and after, and keep the higher (the stricter bound).
        before = bandwidth_gbs()
        pure = name in PURE or (name in LM_ROWS and name.endswith("-pure"))
        child_env = dict(env, MLX_STREAM_TTS_BACKEND="mlx") if pure else env
        runs = args.lm_runs if name in LM_ROWS else args.runs
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--runs", str(runs)],
                              capture_output=True, text=True, env=child_env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(line[0][7:])
        gbs_of[name] = max(before, bandwidth_gbs())
        r = results[name]
        print(f"  {name}: total {r['total']:.0f} ms", file=sys.stderr, flush=True)

    nllb = {name: r for name, r in results.items() if name not in LM_ROWS}
    if nllb:
        print_nllb_table(nllb, {name: gbs_of[name] for name in nllb}, args.runs)
    if lm_names:
        load_after = os.getloadavg()
        print_lm_table(results, gbs_of, args.lm_runs, (load_before, load_after))
    return 0


def print_nllb_table(results: dict, gbs_of: dict, runs: int) -> None:
    ref = results.get("transformers-fp32", {}).get("total")
    best_peer = results.get("ct2-int8", {}).get("total")
    print(f"\nbatch 1, {SRC_TOKENS}-token source, {NEW_TOKENS} new tokens, {THREADS} threads, min of {runs} runs; "
          f"memory read speed (best of torch sum and a gemv over 1 GB, beside each engine): "
          f"{min(gbs_of.values(), default=0):.1f}-{max(gbs_of.values(), default=0):.1f} GB/s\n")
    print("| engine | encoder ms | first token ms | ms/token | total ms | x transformers fp32 | x CT2 int8 "
          "| MB read/step | bound ms/token | x bound | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        per_token = (r["total"] - r["first"]) / (NEW_TOKENS - 1)
        cells = [name, f"{r['encoder']:.0f}" if r["encoder"] is not None else "-", f"{r['first']:.0f}", f"{per_token:.1f}", f"{r['total']:.0f}",
                 f"{r['total'] / ref:.2f}" if ref else "-", f"{r['total'] / best_peer:.2f}" if best_peer else "-"]
        cells += _bound_cells(r, gbs_of[name], per_token)
        cells.append(f"{r['peak_mb']:.0f}")
        print("| " + " | ".join(cells) + " |")
    for name, r in results.items():
        if r.get("product_s"):
            print(f"{name}: one more generation took {r['product_wall_s'] * 1000:.0f} ms, of which "
                  f"{r['product_s'] * 1000:.0f} ms in the gemv shim's own kernel "
                  f"({r['product_bytes'] / r['product_s'] / 1e9:.1f} GB/s)")


def _bound_cells(r: dict, gbs: float, per_token: float) -> list[str]:
    """MB read per step, the memory-bandwidth bound on ms/token, and how far above it a row is."""
    if "step_bytes" not in r:
        return ["-", "-", "-"]
    bound = r["step_bytes"] / (gbs * 1e9) * 1000
    return [f"{r['step_bytes'] / 1e6:.0f}", f"{bound:.1f}", f"{per_token / bound:.2f}"]


def print_lm_table(results: dict, gbs_of: dict, runs: int, loads: tuple) -> None:
    """The decoder-only rows, with the NLLB rows of the same run (if any) in the same columns."""
    (b1, b5, _), (a1, a5, _) = loads
    print(f"\ndecoder-only translators (mlx-lm, random weights of the real shapes), batch 1, the same English "
          f"sentence ({len(ENGLISH)} characters), {NEW_TOKENS} new tokens, {THREADS} threads, min of {runs} runs; "
          f"load average {b1:.1f}/{b5:.1f} before, {a1:.1f}/{a5:.1f} after, on {os.cpu_count()} cores\n")
    print("| model | prompt tokens | first token ms | ms/token | total ms | tokens/sentence | first token ms "
          "with 1 context pair (tokens) | MB read/step | bound ms/token | x bound | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        per_token = (r["total"] - r["first"]) / (NEW_TOKENS - 1)
        if name in LM_ROWS:
            prompt, read = str(r["prompt_tokens"]), r["prompt_tokens"]
            context = f"{r['first_context']:.0f} ({r['context_tokens']})"
        else:  # NLLB: the source goes through the encoder once; the decoder starts from the language code
            prompt, read, context = f"{SRC_TOKENS} (encoder) nllb", SRC_TOKENS, "- (no context input)"
        cells = [name, prompt, f"{r['first']:.0f}", f"{per_token:.1f}", f"{r['total']:.0f}",
                 f"{read} + {NEW_TOKENS}", context, *_bound_cells(r, gbs_of[name], per_token), f"{r['peak_mb']:.0f}"]
        print("| " + " | ".join(cells) + " |")
    lm = {name: r for name, r in results.items() if name in LM_ROWS}
    # Quantized rows send only small attention products there: name the float32 ones.
    shim = [name for name, r in lm.items() if r["gemv_shim"] and lm_models.VARIANTS[LM_ROWS[name]][1] is None]
    print(f"\nprompt tokens: the chat template's special tokens counted exactly, its text estimated as one token "
          f"per word or punctuation run (a floor for these 65k-152k byte-level vocabularies; "
          f"{lm_models.estimate_text_tokens(ENGLISH)} for the sentence, {len(ENGLISH) / 4:.0f} by 4 characters a "
          f"token); timed with random ids of that length. NLLB's source is {SRC_TOKENS} tokens (the test "
          f"tokenizer's pieces + language code + </s>). The context pair adds the previous sentence and a "
          f"{NEW_TOKENS}-token translation.")
    if runs > 1:
        print("first-token spread across runs (max - min, ms): "
              + ", ".join(f"{name} {r['first_spread']:.0f}" for name, r in lm.items()))
    print(f"float32 weight products through the gemv shim: {', '.join(shim) or 'none'}; quantized rows use "
          f"MLX's quantized CPU kernels (no BLAS; a Mac runs them on its GPU). Peak RSS "
          + ("from after the random build." if all(r["peak_reset"] for r in lm.values())
             else "includes the random build (this system cannot reset the count)."))
    print("These rows time mlx-lm's generation loop alone: the pipeline's Translator around it adds a little "
          "(prompt rendering, tokenizing, detokenizing, output cleaning).")


if __name__ == "__main__":
    sys.exit(main())
