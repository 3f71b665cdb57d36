"""Random-weight mlx-lm models of real decoder-only translator shapes, their prompts and a timed greedy run.

Used by ``bench/translate.py --lm``: the LM rows beside NLLB-600M. Speed does not depend on the weight
values, so each model is built by mlx-lm's own classes from the real ``config.json`` values (below, with
their sources), random init, optionally quantized as mlx-community publishes its MLX conversions
(``mlx_lm.convert -q``: affine, group 64, 8 or 4 bits, every Linear and the embedding).

Shapes (config.json of each hub id; the parameter counts of the cards are checked in
tests/test_bench_lm.py):

- ``lfm2-350m``: LiquidAI/LFM2-350M (354,483,968 parameters); LiquidAI/LFM2-350M-ENJP-MT, the EN<->JA
  translation model, is a fine-tune of it with the same shape. 16 blocks: 10 gated short convolutions
  (kernel 3) and 6 grouped-query attention blocks (16 heads, 8 key/value heads), hidden 1024, SwiGLU
  width 6656 -> 4608 after LFM2's "auto adjust" (2/3, rounded up to 256), vocabulary 65,536, tied output.
- ``lfm2-1.2b``: LiquidAI/LFM2-1.2B (1,170,340,608 parameters): the same 16-block pattern, hidden 2048,
  32 heads / 8 key/value heads, SwiGLU 12288 -> 8192.
- ``qwen3-0.6b``: Qwen/Qwen3-0.6B (0.44B parameters without the embedding, 0.6B with): 28 attention
  blocks, hidden 1024, 16 heads / 8 key/value heads of 128, MLP 3072, vocabulary 151,936, tied output.

Prompts are the chat templates of the tokenizers, rendered here as text (no tokenizer files are reachable
on this machine): LFM2's (``<|startoftext|>`` then ChatML turns) with the ENJP-MT card's system prompt
"Translate to Japanese.", and Qwen3's ChatML with thinking off (the empty ``<think>`` block its template
adds for ``enable_thinking=False``) and a strict translation instruction, as a general instruct model
needs. Their token counts are estimated (see :func:`count_prompt_tokens`); the timed runs feed random ids
of that length, since token values do not change the cost either.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import time
from collections.abc import Sequence

SHAPES: dict[str, dict] = {
    "lfm2-350m": dict(
        model_type="lfm2", vocab_size=65536, hidden_size=1024, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=8, max_position_embeddings=128000, norm_eps=1e-5, conv_bias=False, conv_L_cache=3,
        block_dim=1024, block_ff_dim=6656, block_multiple_of=256, block_ffn_dim_multiplier=1.0,
        block_auto_adjust_ff_dim=True, rope_theta=1000000.0,
        layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
                     "full_attention", "conv", "full_attention", "conv", "full_attention", "conv",
                     "full_attention", "conv"]),
    "lfm2-1.2b": dict(
        model_type="lfm2", vocab_size=65536, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=128000, norm_eps=1e-5, conv_bias=False, conv_L_cache=3,
        block_dim=2048, block_ff_dim=12288, block_multiple_of=256, block_ffn_dim_multiplier=1.0,
        block_auto_adjust_ff_dim=True, rope_theta=1000000.0,
        layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
                     "full_attention", "conv", "full_attention", "conv", "full_attention", "conv",
                     "full_attention", "conv"]),
    "qwen3-0.6b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, intermediate_size=3072, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_theta=1000000, tie_word_embeddings=True),
}

# Row name -> (shape, bits): None is float32 (the dtype our NLLB rows use on a CPU; bfloat16 is what the
# hub ships, but MLX's half-precision CPU kernels are slow), 8 and 4 the mlx-community quantizations.
VARIANTS: dict[str, tuple[str, int | None]] = {
    f"{shape}-{tag}": (shape, bits)
    for shape in SHAPES for tag, bits in (("fp32", None), ("q8", 8), ("q4", 4))
}
GROUP_SIZE = 64

# The special tokens of each family's template: each is one token of its tokenizer.
SPECIAL = {
    "lfm2": ("<|startoftext|>", "<|im_start|>", "<|im_end|>"),
    "qwen3": ("<|im_start|>", "<|im_end|>", "<think>", "</think>"),
}
SYSTEM = {
    # LiquidAI/LFM2-350M-ENJP-MT's card: the system prompt picks the direction.
    "lfm2": "Translate to Japanese.",
    # A general instruct model gets a strict instruction (no card prompt exists for translation).
    "qwen3": ("Translate the user's English text into natural Japanese. Reply with the Japanese "
              "translation only: no explanations, notes, quotes or romanization."),
}

# What a byte-level BPE tokenizer with a 65k-152k vocabulary (LFM2's, Qwen3's) does with ordinary English:
# one token per word together with its leading space, digits one by one (Qwen3 splits them; the
# conservative choice for LFM2), a run of punctuation, a run of whitespace. Common words are single tokens
# in such vocabularies, so this count is a floor; identifiers and rare words split further.
_PRETOKEN = re.compile(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+")


def family(shape: str) -> str:
    """The chat-template family (mlx-lm architecture) of a shape name."""
    return SHAPES[shape]["model_type"]


def render_chat(fam: str, text: str, context: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt string the family's chat template renders for translating ``text``.

    Args:
        fam: ``"lfm2"`` or ``"qwen3"``.
        text: the English sentence.
        context: earlier (English, Japanese) pairs, given as earlier user/assistant turns.
    """
    turns = [("system", SYSTEM[fam])]
    for source, target in context:
        turns += [("user", source), ("assistant", target)]
    turns.append(("user", text))
    body = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    if fam == "lfm2":
        return "<|startoftext|>" + body + "<|im_start|>assistant\n"
    if fam == "qwen3":
        return body + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    raise ValueError(f"no chat template for {fam!r}")


def estimate_text_tokens(text: str) -> int:
    """Estimated tokens of plain text (no special tokens); see ``_PRETOKEN`` for the rule."""
    return len(_PRETOKEN.findall(text))


def count_prompt_tokens(fam: str, prompt: str) -> int:
    """Tokens of a rendered prompt: each special token counts one, the text between them is estimated."""
    pattern = "|".join(re.escape(s) for s in SPECIAL[fam])
    specials = len(re.findall(pattern, prompt))
    return specials + sum(estimate_text_tokens(part) for part in re.split(pattern, prompt))


def build_model(shape: str, bits: int | None = None, group_size: int = GROUP_SIZE, seed: int = 0,
                config: dict | None = None):
    """A random-weight mlx-lm model of ``shape`` (or of ``config``), evaluated, quantized when ``bits``.

    Returns ``(model, config)``; the config carries ``quantization`` as mlx-lm writes it. Parameters are
    evaluated one array at a time after quantizing, so that only one float32 matrix exists at once (a
    quantized row's memory is then close to what loading the published weights costs).
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    config = dict(config or SHAPES[shape])
    arch = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    mx.random.seed(seed)
    model = arch.Model(arch.ModelArgs.from_dict(config))  # lazy: nothing is computed yet
    if bits:
        from mlx_lm.utils import quantize_model

        with contextlib.redirect_stdout(io.StringIO()):  # it prints its bits per weight
            model, config = quantize_model(model, config, group_size, bits)
    for _, array in tree_flatten(model.parameters()):
        mx.eval(array)
    return model, config


def weight_bytes(model) -> int:
    """Bytes of all parameters (quantized: packed weights, scales and biases)."""
    from mlx.utils import tree_flatten

    return sum(a.nbytes for _, a in tree_flatten(model.parameters()))


def prompt_ids(length: int, vocab_size: int, seed: int = 0) -> list[int]:
    """``length`` random token ids, above the low ids where special tokens live (1000, or half a tiny
    vocabulary)."""
    import random

    rng = random.Random(seed)
    low = min(1000, vocab_size // 2)
    return [rng.randrange(low, vocab_size) for _ in range(length)]


def timed_generation(model, ids: list[int], new_tokens: int) -> tuple[float, float]:
    """Seconds to the first new token and to the last, for one greedy generation of exactly ``new_tokens``.

    mlx-lm's own loop (``generate_step``: prompt prefill into a fresh cache, then one step per token with
    the next step queued before the last token is read), the greedy sampler, and no end-of-sequence
    check: random weights never say when a sentence ends, so every row decodes the same length.
    """
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import greedy_sampler

    start = time.perf_counter()
    first, made = None, 0
    for _token, _ in generate_step(mx.array(ids), model, max_tokens=new_tokens, sampler=greedy_sampler):
        made += 1
        if first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    mx.synchronize()  # the loop queues one step past the last token: let it finish outside the timing
    if made != new_tokens:
        raise RuntimeError(f"generated {made} tokens, wanted {new_tokens}")
    return first, total
