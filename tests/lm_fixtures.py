"""Tiny random-weight mlx-lm models (LFM2, Qwen3) in the hub layout, with a small BPE tokenizer trained
here, for the tests of ``lm_translator.py``: nothing is downloaded.

A folder holds ``config.json``, ``model.safetensors`` (mlx-lm's own model class, its parameters saved with
``mx.save_safetensors``), ``tokenizer.json`` and ``tokenizer_config.json`` with a chat template in the
style of the real model (LFM2: ChatML after ``<|startoftext|>``; Qwen3: ChatML, and the empty thinking
block when ``enable_thinking`` is false), so that ``mlx_lm.load(folder)`` loads it as it loads the real
ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

SPECIAL = ["<|pad|>", "<|startoftext|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
LFM2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN3_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)

_ENGLISH = [
    "Let me check the file, then run the tests.", "I'll read the configuration first.",
    "The build failed because a dependency is missing.", "Hello world.", "Open the file and fix the bug.",
    "All tests pass now.", "This function returns a list of strings.", "Translate to Japanese.",
    "Translate the following English text into Japanese.", "Reply with the translation only.",
]
_JAPANESE = [
    "ファイルを確認してから、テストを実行します。", "まず設定を読みます。", "依存関係がないためビルドに失敗しました。",
    "こんにちは世界。", "ファイルを開いてバグを直してください。", "すべてのテストが通りました。",
    "この関数は文字列のリストを返します。", "日本語に翻訳してください。", "翻訳：これはテストです。",
]


def train_tokenizer(vocab_size: int = 512):
    """A byte-level BPE trained on a few hundred English and Japanese sentences (any text encodes)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [f"{s} ({i})" for i in range(20) for s in _ENGLISH] + _JAPANESE * 20
    tokenizer.train_from_iterator(corpus, trainer)
    # Qwen3 has its thinking tags as ordinary added tokens: decoding keeps them.
    tokenizer.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    return tokenizer


def lfm2_config(vocab_size: int, **shape) -> dict:
    """An LFM2 config (the architecture of LFM2-350M-ENJP-MT) of a tiny shape unless told otherwise."""
    config = dict(
        model_type="lfm2", vocab_size=vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, norm_eps=1e-5, conv_bias=False, conv_L_cache=3,
        block_dim=32, block_multiple_of=16, block_ffn_dim_multiplier=1.0, block_auto_adjust_ff_dim=True,
        block_ff_dim=64, layer_types=["conv", "full_attention", "conv"], rope_theta=1000000.0,
        tie_word_embeddings=True,
    )
    return {**config, **shape}


def qwen3_config(vocab_size: int, **shape) -> dict:
    """A Qwen3 config of a tiny shape unless told otherwise."""
    config = dict(
        model_type="qwen3", vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
        max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=10000.0,
    )
    return {**config, **shape}


def write_model(folder: Path, kind: str, seed: int = 0, scale: float = 1.0, **shape) -> Path:
    """Write a random-weight ``kind`` (``"lfm2"`` or ``"qwen3"``) model with the tiny tokenizer into
    ``folder``. The weights are drawn N(0, scale²/fan_in) (mlx-lm's initialisation makes a tiny model repeat
    one token; these make it say varied noise)."""
    import importlib

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    vocab = shape.pop("vocab_size", tokenizer.get_vocab_size())  # a larger one: ids the tokenizer lacks decode to ""
    end = tokenizer.token_to_id("<|im_end|>")
    if kind == "lfm2":
        config = {**lfm2_config(vocab, **shape), "eos_token_id": end,
                  "bos_token_id": tokenizer.token_to_id("<|startoftext|>"), "pad_token_id": 0}
        tokenizer_config = {"bos_token": "<|startoftext|>", "chat_template": LFM2_TEMPLATE}
    elif kind == "qwen3":
        config = {**qwen3_config(vocab, **shape), "eos_token_id": end}
        tokenizer_config = {"chat_template": QWEN3_TEMPLATE}
    else:
        raise ValueError(f"kind must be lfm2 or qwen3, not {kind!r}")
    module = importlib.import_module(f"mlx_lm.models.{kind}")
    model = module.Model(module.ModelArgs.from_dict(config))
    mx.random.seed(seed)
    params = tree_map(lambda p: scale * mx.random.normal(p.shape) / p.shape[-1] ** 0.5 if p.ndim > 1 else p,
                      model.parameters())
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(params)), metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|pad|>",
        **tokenizer_config}, ensure_ascii=False, indent=1))
    return folder
