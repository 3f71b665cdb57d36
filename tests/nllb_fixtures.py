"""Shared builders for the NLLB tests: a tiny sentencepiece model trained here, reference transformers
tokenizers built from it (NLLB's, and M2M100's with its own vocab.json), and tiny random M2M100
checkpoints in the hub layout.

Everything is built once per test session (module-level cache) under pytest's session temp dir.
Import the fixtures into a test module with ``from nllb_fixtures import ...``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

# MLX_STREAM_TTS_BACKEND=mlx runs the whole suite on the pure model: what only the CPU accelerator does
# cannot be tested then (the variable wins over any backend a test asks for).
PURE_ONLY = os.environ.get("MLX_STREAM_TTS_BACKEND", "").strip().lower() == "mlx"
needs_accelerator = pytest.mark.skipif(
    PURE_ONLY, reason="tests the CPU accelerator, which MLX_STREAM_TTS_BACKEND=mlx turns off")

# The translator's backends as tests load them: the pure model, and the CPU accelerator.
BACKENDS = ["mlx", pytest.param("cpu", marks=needs_accelerator)]

# A small bilingual corpus: enough distinct pieces for a few hundred BPE merges.
_EN = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a test of streaming translation.",
    "Claude Code writes text that we speak in Japanese.",
    "Run the tests again before you commit the change.",
    "The function returns a list of strings and numbers.",
    "Please open the file and read the first line.",
    "We measured 123 tokens in 4.5 seconds on two cores!",
    "Is the model loaded? Yes, and it is fast.",
    "Translation quality depends on the training data.",
    "Small models are useful for unit tests and benchmarks.",
]
_JA = [
    "日本語のテキストを話します。これはテストです。",
    "ファイルを開いて最初の行を読んでください。",
    "モデルは読み込まれましたか？はい、速いです。",
    "変更をコミットする前にテストをもう一度実行します。",
    "翻訳の品質は学習データに依存します。",
]
CORPUS = "\n".join((_EN * 3) + (_JA * 3) + ["0 1 2 3 4 5 6 7 8 9 % & ( ) [ ] / - + = : ;"])

# Texts for tokenizer parity and translation (no leading/trailing or repeated spaces: see the tokenizer test).
SAMPLE_TEXTS = [
    "Hello world.",
    "The quick brown fox jumps over the lazy dog.",
    "Run the tests, then commit the change!",
    "Numbers like 42 and 3.14 appear too.",
    "日本語のテキストです。",
    "Unknown symbols: ☃ Ωmega ß",
    "a",
    "Please read the file and return a list of strings before the tests run again.",
]

# (name, M2M100Config overrides): several shapes, odd sizes, 1-3 layers, scale_embedding on and off.
TINY_CONFIGS = {
    "d16": dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, scale_embedding=True),
    "d24odd": dict(d_model=24, encoder_layers=2, decoder_layers=3, encoder_attention_heads=3,
                   decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=29, scale_embedding=False),
    "d20gelu": dict(d_model=20, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=5, encoder_ffn_dim=36, decoder_ffn_dim=44, scale_embedding=True,
                    activation_function="gelu"),
    # Dims divisible by the quantization group size.
    "d64q": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, scale_embedding=True),
}

_CACHE: dict[str, object] = {}


def _root(tmp_path_factory) -> Path:
    if "root" not in _CACHE:
        _CACHE["root"] = tmp_path_factory.mktemp("nllb")
    return _CACHE["root"]  # type: ignore[return-value]


def train_spm(folder: Path, vocab_size: int = 300) -> Path:
    """Train a tiny BPE sentencepiece model with NLLB's special-piece layout."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "sentencepiece.bpe"), vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2, num_threads=1,
    )
    return folder / "sentencepiece.bpe.model"


def build_reference_tokenizer(spm_path: Path, folder: Path):
    """transformers' NllbTokenizer for ``spm_path``, in the layout of the real hub tokenizer.json.

    transformers 5.x ignores ``NllbTokenizer(vocab_file=...)`` (every piece becomes <unk>) and its
    ``from_pretrained`` on a bare sentencepiece file converts the pieces but leaves out the language
    codes. So: convert the pieces with transformers' own sentencepiece extractor, then add the 202
    language codes and <mask> after the pieces as the hub's tokenizer.json does, save, and load that.
    """
    from transformers import NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    bare = folder / "bare"
    bare.mkdir(parents=True, exist_ok=True)
    shutil.copy2(spm_path, bare / "sentencepiece.bpe.model")
    converted = NllbTokenizer.from_pretrained(str(bare))
    data = json.loads(converted.backend_tokenizer.to_str())
    import sentencepiece as spm

    sp_size = spm.SentencePieceProcessor(model_file=str(spm_path)).get_piece_size()
    added = [t for t in data["added_tokens"] if t["content"] != "<mask>"]
    first = sp_size + 1
    for i, code in enumerate(FAIRSEQ_LANGUAGE_CODES):
        added.append(dict(id=first + i, content=code, single_word=False, lstrip=False, rstrip=False,
                          normalized=False, special=True))
    added.append(dict(id=first + len(FAIRSEQ_LANGUAGE_CODES), content="<mask>", single_word=False,
                      lstrip=True, rstrip=False, normalized=True, special=True))
    data["added_tokens"] = added
    out = folder / "reference"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "NllbTokenizer", "src_lang": "eng_Latn", "model_max_length": 1024,
        "clean_up_tokenization_spaces": False, "extra_special_tokens": list(FAIRSEQ_LANGUAGE_CODES),
    }))
    shutil.copy2(spm_path, out / "sentencepiece.bpe.model")
    return NllbTokenizer.from_pretrained(str(out)), out


def build_m2m100_tokenizer(spm_path: Path, folder: Path):
    """transformers' M2M100Tokenizer for ``spm_path`` with a vocab.json, in the hub's file layout.

    The vocab.json ids are the pieces in a shuffled order with a few pieces left out, so that a tokenizer
    using sentencepiece's ids, or not mapping missing pieces to <unk>, gives different ids.
    """
    import random

    import sentencepiece as spm
    from transformers import M2M100Tokenizer
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
    random.Random(5).shuffle(pieces)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for piece in pieces[6:]:
        vocab[piece] = len(vocab)
    out = folder / "m2m100"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    shutil.copy2(spm_path, out / "sentencepiece.bpe.model")
    # As on the hub (facebook/m2m100_418M); transformers 5's save_pretrained writes no
    # special_tokens_map.json, and without it the language tokens are not special (decode keeps them).
    (out / "tokenizer_config.json").write_text(json.dumps({
        "src_lang": None, "tgt_lang": None, "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "language_codes": "m2m100", "sp_model_kwargs": {},
        "num_madeup_words": 8, "model_max_length": 1024, "tokenizer_class": "M2M100Tokenizer",
    }))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>",
        "additional_special_tokens": [f"__{c}__" for c in FAIRSEQ_LANGUAGE_CODES["m2m100"]],
    }))
    return M2M100Tokenizer.from_pretrained(str(out)), out


def _tune_eos(model, tokenizer, src_lang: str = "eng_Latn", tgt: str = "jpn_Jpan") -> float:
    """Push the decoder's final layer-norm bias toward </s> until greedy outputs end at varied lengths.

    Random decoders loop on one token and never end; sentences that end (and beams that finish at
    different steps) are what the decoding tests need to exercise.
    """

    tokenizer.src_lang = src_lang
    enc = tokenizer(SAMPLE_TEXTS, return_tensors="pt", padding=True)
    tgt = tokenizer.convert_tokens_to_ids(tgt)
    eos_dir = model.model.shared.weight[2] / model.model.shared.weight[2].norm()
    bias = model.model.decoder.layer_norm.bias
    base = bias.clone()
    best = (-1, 0.0)
    for alpha in [1.0 + 0.75 * i for i in range(10)]:
        bias.copy_(base + alpha * eos_dir)
        out = model.generate(**enc, forced_bos_token_id=tgt, max_new_tokens=16, do_sample=False).tolist()
        lengths = {row[2:].index(2) if 2 in row[2:] else -1 for row in out}
        if len(lengths) > best[0]:
            best = (len(lengths), alpha)
    bias.copy_(base + best[1] * eos_dir)
    return best[1]


def build_hf_checkpoint(folder: Path, tok_dir: Path, tokenizer, overrides: dict, seed: int,
                        as_bin: bool = False, max_position_embeddings: int = 96, vocab_size: int | None = None,
                        langs: tuple[str, str] = ("eng_Latn", "jpn_Jpan")):
    """A random M2M100ForConditionalGeneration saved in the hub layout with the tokenizer files of
    ``tok_dir``; ``langs`` are the source (as ``tokenizer.src_lang``) and target token for tuning </s>."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    config = M2M100Config(
        vocab_size=vocab_size or len(tokenizer) + 2, max_position_embeddings=max_position_embeddings, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, **{"activation_function": "relu", **overrides},
    )
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                # Larger than the default init so that logits are well separated (argmax ties would
                # make token comparisons depend on float rounding).
                p.copy_(2.0 * torch.randn_like(p) / max(1.0, p.shape[-1] ** 0.5))
        _tune_eos(model, tokenizer, *langs)
    folder.mkdir(parents=True, exist_ok=True)
    if as_bin:
        # Like the real NLLB pytorch_model.bin: every tied copy stored.
        config.save_pretrained(str(folder))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        shared = model.model.shared.weight.detach().clone()
        for alias in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
            state[alias] = shared.clone()
        torch.save(state, folder / "pytorch_model.bin")
    else:
        model.save_pretrained(str(folder))
    for path in tok_dir.iterdir():
        shutil.copy2(path, folder / path.name)
    return model


def get_tokenizers(tmp_path_factory):
    """(spm path, reference transformers tokenizer, reference folder), built once."""
    if "tok" not in _CACHE:
        root = _root(tmp_path_factory)
        spm_path = train_spm(root / "spm")
        ref, ref_dir = build_reference_tokenizer(spm_path, root / "tok")
        _CACHE["tok"] = (spm_path, ref, ref_dir)
    return _CACHE["tok"]


def get_checkpoint(tmp_path_factory, name: str, as_bin: bool = False):
    """(hf folder, torch model, reference tokenizer) for one of TINY_CONFIGS, built once."""
    key = f"hf:{name}:{as_bin}"
    if key not in _CACHE:
        spm_path, ref, ref_dir = get_tokenizers(tmp_path_factory)
        folder = _root(tmp_path_factory) / f"hf-{name}{'-bin' if as_bin else ''}"
        seed = sorted(TINY_CONFIGS).index(name) + 11
        model = build_hf_checkpoint(folder, ref_dir, ref, TINY_CONFIGS[name], seed, as_bin=as_bin)
        _CACHE[key] = (folder, model, ref)
    return _CACHE[key]


def get_converted(tmp_path_factory, name: str, **options) -> Path:
    """Our converted folder for one of TINY_CONFIGS with converter options, built once."""
    key = f"mlx:{name}:{sorted(options.items())}"
    if key not in _CACHE:
        from convert.nllb import convert_nllb

        folder, _, _ = get_checkpoint(tmp_path_factory, name)
        tag = "-".join(f"{k}{v}" for k, v in sorted(options.items())).replace(" ", "").replace("'", "")
        out = _root(tmp_path_factory) / f"mlx-{name}-{tag or 'default'}"
        _CACHE[key] = convert_nllb(folder, out, **options)
    return _CACHE[key]  # type: ignore[return-value]


def get_m2m100_tokenizer(tmp_path_factory):
    """(reference transformers M2M100Tokenizer, its hub-layout folder), built once."""
    if "m2m100-tok" not in _CACHE:
        spm_path, _, _ = get_tokenizers(tmp_path_factory)
        _CACHE["m2m100-tok"] = build_m2m100_tokenizer(spm_path, _root(tmp_path_factory) / "tok")
    return _CACHE["m2m100-tok"]


def get_m2m100_checkpoint(tmp_path_factory, name: str = "d16"):
    """(hf folder, torch model, reference M2M100Tokenizer): a tiny M2M100 with M2M100's tokenizer, built once."""
    key = f"m2m100:{name}"
    if key not in _CACHE:
        ref, tok_dir = get_m2m100_tokenizer(tmp_path_factory)
        folder = _root(tmp_path_factory) / f"hf-m2m100-{name}"
        # The real layout: vocab.json, 100 language tokens, 8 made-up words.
        vocab_size = ref.vocab_size + 100 + 8
        model = build_hf_checkpoint(folder, tok_dir, ref, TINY_CONFIGS[name], sorted(TINY_CONFIGS).index(name) + 31,
                                    vocab_size=vocab_size, langs=("en", "__ja__"))
        _CACHE[key] = (folder, model, ref)
    return _CACHE[key]


def get_m2m100_converted(tmp_path_factory, name: str = "d16", **options) -> Path:
    """Our converted folder of :func:`get_m2m100_checkpoint` with converter options, built once."""
    key = f"mlx-m2m100:{name}:{sorted(options.items())}"
    if key not in _CACHE:
        from convert.nllb import convert_nllb

        folder, _, _ = get_m2m100_checkpoint(tmp_path_factory, name)
        tag = "-".join(f"{k}{v}" for k, v in sorted(options.items())).replace(" ", "").replace("'", "")
        _CACHE[key] = convert_nllb(folder, _root(tmp_path_factory) / f"mlx-m2m100-{name}-{tag or 'default'}", **options)
    return _CACHE[key]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory):
    return get_tokenizers(tmp_path_factory)
