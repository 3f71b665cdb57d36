"""Convert an NLLB-200 / M2M100 checkpoint (hub id or local folder in the hub layout) to MLX.

    mlx-stream-tts convert nllb facebook/nllb-200-distilled-600M --out DIR [--dtype float16]
        [--q-bits 8] [--restrict-vocab jpn_Jpan [eng_Latn ...]] [--restrict-sample FILE]

Output folder: ``config.json`` (the source config plus our fields), ``model.safetensors`` (names as
``mlx_stream_tts/models/nllb.py`` wants them), ``sentencepiece.bpe.model`` + ``nllb_tokenizer.json``
(what :func:`mlx_stream_tts.nllb_tokenizer.load_tokenizer` reads) and the source's own tokenizer files,
``vocab.json`` among them for M2M100's tokenizer (told apart by tokenizer_config.json's
``tokenizer_class``, or by ``vocab.json`` when there is no class).
It is written to a temporary folder beside the target and renamed into place at the end.

Vocabulary restriction (``--restrict-vocab LANG ...``): the output projection keeps only the rows of
tokens that the listed languages can write, decided from each piece's characters and the script of the
language (``jpn_Jpan``, ``ja`` or ``__ja__`` -> Han, Hiragana, Katakana; ``eng_Latn`` -> Latin): a piece
is kept when every character belongs to one of those scripts or is a digit, punctuation, symbol or space. ``</s>``
is always kept, and ``--restrict-sample FILE`` adds every token of a text in the target language.
Decoding then takes the argmax over the kept rows and maps it back to the real token id, so the
result is exactly the unrestricted one whenever the unrestricted output uses only kept tokens; it
differs only where the full model would have written a token of another script (for ``jpn_Jpan``
alone: Latin words such as names or code identifiers, which it must then write in kana or drop; list
``eng_Latn`` too to keep them, at the cost of more rows). The output projection of the full
600M model is 262M of its 439M parameters read per decoded token, so fewer rows decode faster.
Beam search scores log-probabilities normalized over the kept tokens (the others are never computed),
so its ranking of beams can differ from the full model's even when every beam uses kept tokens.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import unicodedata
from pathlib import Path

import mlx_stream_tts  # noqa: F401  (fast BLAS before mlx is imported)

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlx_stream_tts.models.nllb import FORMAT_VERSION, Model, ModelArgs, quantize_model
from mlx_stream_tts.nllb_tokenizer import (
    META_FILE,
    SPM_FILE,
    VOCAB_FILE,
    M2M100Tokenizer,
    NllbTokenizer,
    default_meta,
    m2m100_meta,
)

from .staging import staged_folder

logger = logging.getLogger(__name__)

CONVERT_HINT = "mlx-stream-tts convert nllb facebook/nllb-200-distilled-600M --out DIR"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", VOCAB_FILE)
HUB_FILES = ("config.json", "generation_config.json", SPM_FILE, *TOKENIZER_FILES)
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
_SAFETENSORS_FILES = ("model*.safetensors", "model.safetensors.index.json")
_BIN_FILES = ("pytorch_model*.bin", "pytorch_model.bin.index.json")

# Source tensors that are copies of model.shared.weight (checked equal, then dropped) ...
_TIED_COPIES = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
# ... and tensors we do not read: the sinusoidal tables are recomputed (some checkpoints store them).
_IGNORED_PREFIXES = ("model.encoder.embed_positions.", "model.decoder.embed_positions.")

# Unicode character-name prefixes of the letters of each script in the NLLB language codes.
SCRIPT_PREFIXES: dict[str, tuple[str, ...]] = {
    "Latn": ("LATIN", "COMBINING"),
    "Jpan": ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA", "KATAKANA",
             "HALFWIDTH KATAKANA", "IDEOGRAPHIC"),
    "Hans": ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH", "IDEOGRAPHIC"),
    "Hant": ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH", "IDEOGRAPHIC"),
    "Hang": ("HANGUL",),
    "Cyrl": ("CYRILLIC", "COMBINING"),
    "Grek": ("GREEK", "COMBINING"),
    "Arab": ("ARABIC",),
    "Hebr": ("HEBREW",),
    "Deva": ("DEVANAGARI",),
    "Beng": ("BENGALI",),
    "Gujr": ("GUJARATI",),
    "Guru": ("GURMUKHI",),
    "Orya": ("ORIYA",),
    "Taml": ("TAMIL",),
    "Telu": ("TELUGU",),
    "Knda": ("KANNADA",),
    "Mlym": ("MALAYALAM",),
    "Sinh": ("SINHALA",),
    "Thai": ("THAI",),
    "Laoo": ("LAO",),
    "Khmr": ("KHMER",),
    "Mymr": ("MYANMAR",),
    "Tibt": ("TIBETAN",),
    "Ethi": ("ETHIOPIC",),
    "Geor": ("GEORGIAN",),
    "Armn": ("ARMENIAN",),
    "Tfng": ("TIFINAGH",),
}


# ---------------------------------------------------------------------------------------------- source


def fetch_source(src: str | Path, revision: str | None = None) -> Path:
    """A local folder as is, or a hub id downloaded (resumable, cached) with huggingface_hub."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(src).startswith((".", "/", "~")) or str(src).count("/") != 1:
        raise FileNotFoundError(f"{src} is neither a model folder nor a hub id like facebook/nllb-200-distilled-600M")
    from huggingface_hub import HfApi, snapshot_download

    from .hub import hub_call

    repo = str(src)

    def download() -> Path:
        repo_files = set(HfApi().list_repo_files(repo, revision=revision))
        if "model.safetensors" in repo_files or "model.safetensors.index.json" in repo_files:
            weights = list(_SAFETENSORS_FILES)
        else:
            weights = list(_BIN_FILES)
        logger.info("downloading %s (%s) ...", repo, ", ".join(weights))
        return Path(snapshot_download(repo, revision=revision, allow_patterns=[*HUB_FILES, *weights]))

    def cached() -> Path:
        folder = Path(snapshot_download(repo, revision=revision, local_files_only=True,
                                        allow_patterns=[*HUB_FILES, *_SAFETENSORS_FILES, *_BIN_FILES]))
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(folder / "config.json")
        _weight_files(folder)  # raises when the weights are not (all) there
        return folder

    # Without a network: one line at once (or the copy in the hub's cache), not the client's retry loop.
    return hub_call(repo, download, cached)


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a model folder in the hub layout")
    config = json.loads(path.read_text())
    model_type = config.get("model_type")
    if model_type != "m2m_100":
        raise ValueError(
            f"{folder} holds a {model_type!r} model; this converter reads NLLB-200 / M2M100 (model_type "
            f"'m2m_100'), e.g. facebook/nllb-200-distilled-600M"
        )
    return config


def _weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / n for n in names]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {folder}")


def load_source_weights(folder: Path) -> dict[str, mx.array]:
    """All tensors of the checkpoint, in their stored dtype (bf16 stays bf16)."""
    weights: dict[str, mx.array] = {}
    for path in _weight_files(folder):
        if path.suffix == ".safetensors":
            weights.update(mx.load(str(path)))
            continue
        try:
            import torch
        except ImportError:
            raise RuntimeError(
                f"{path.name} is a PyTorch checkpoint: reading it needs torch (pip install torch==2.13.0), "
                "or use a folder with model.safetensors"
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        for name, tensor in state.items():
            if tensor.dtype == torch.bfloat16:
                weights[name] = mx.array(tensor.float().numpy()).astype(mx.bfloat16)
            else:
                weights[name] = mx.array(tensor.numpy())
        del state
    return weights


def rename_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Source state dict -> our names and layouts (unrestricted head); raise on unknown tensors.

    Our module tree carries the reference names, so renaming is only dropping: tied copies of the
    shared embedding (after checking that they are copies) and the recomputed position tables.
    """
    if "model.shared.weight" not in weights:
        for alias in _TIED_COPIES:  # some exports keep only the per-stack copies
            if alias in weights:
                weights["model.shared.weight"] = weights[alias]
                break
        else:
            raise ValueError("checkpoint has no model.shared.weight (nor an embed_tokens copy)")
    shared = weights["model.shared.weight"]
    out: dict[str, mx.array] = {}
    for name, value in weights.items():
        if name.startswith(_IGNORED_PREFIXES):
            continue
        if name in _TIED_COPIES or (name == "lm_head.weight" and args.tie_word_embeddings):
            if value.shape != shared.shape or not mx.array_equal(value, shared).item():
                raise ValueError(f"{name} differs from model.shared.weight: untied embeddings are not supported")
            continue
        out[name] = value
    if not args.tie_word_embeddings and "lm_head.weight" not in out:
        raise ValueError("config says tie_word_embeddings=false but the checkpoint has no lm_head.weight")
    return out


# ------------------------------------------------------------------------------------------ tokenizer


def tokenizer_kind(folder: Path) -> str:
    """``"nllb"`` or ``"m2m100"``: tokenizer_config.json's tokenizer_class, else vocab.json's presence."""
    cls = _tokenizer_config(folder).get("tokenizer_class")
    if not cls:
        return "m2m100" if (folder / VOCAB_FILE).is_file() else "nllb"
    if cls.startswith("Nllb"):
        return "nllb"
    if cls.startswith("M2M100"):
        return "m2m100"
    raise ValueError(
        f"{folder} has a {cls} tokenizer; this converter reads NLLB's (NllbTokenizer) and M2M100's "
        "(M2M100Tokenizer), both sentencepiece + language codes"
    )


def _tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def tokenizer_meta(folder: Path, sp_size: int) -> dict:
    """NLLB's tokenizer id layout, checked against the source's tokenizer.json when it has one."""
    clean_up = bool(_tokenizer_config(folder).get("clean_up_tokenization_spaces", False))
    meta = default_meta(sp_size, clean_up)
    tok_json = folder / "tokenizer.json"
    if tok_json.is_file():
        added = {t["content"]: t["id"] for t in json.loads(tok_json.read_text()).get("added_tokens", [])}
        langs = {c: i for c, i in added.items() if c in meta["lang_code_to_id"]}
        if langs:
            moved = {c: (meta["lang_code_to_id"][c], i) for c, i in langs.items() if meta["lang_code_to_id"][c] != i}
            if moved:
                logger.warning("language code ids differ from NLLB's layout, using tokenizer.json's: %s",
                               dict(list(moved.items())[:5]))
            meta["lang_code_to_id"].update(langs)
        if "<mask>" in added:
            meta["mask_token_id"] = added["<mask>"]
        for key, piece in (("bos_token_id", "<s>"), ("pad_token_id", "<pad>"), ("eos_token_id", "</s>"),
                           ("unk_token_id", "<unk>")):
            if piece in added and added[piece] != meta[key]:
                raise ValueError(f"{piece} has id {added[piece]} in tokenizer.json, expected {meta[key]}")
    return meta


def load_source_tokenizer(folder: Path) -> tuple[NllbTokenizer, dict]:
    """The source's tokenizer (NLLB's or M2M100's) and the metadata that our folder keeps for it."""
    kind = tokenizer_kind(folder)
    sp_path = folder / SPM_FILE
    if not sp_path.is_file():
        raise FileNotFoundError(f"{sp_path} is missing: the sentencepiece model of the {kind} tokenizer is needed")
    if kind == "nllb":
        meta = tokenizer_meta(folder, NllbTokenizer(sp_path).sp.get_piece_size())
        return NllbTokenizer(sp_path, meta), meta
    vocab_path = folder / VOCAB_FILE
    if not vocab_path.is_file():
        raise FileNotFoundError(f"{vocab_path} is missing: M2M100's tokenizer maps pieces to ids through it")
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    tok_config = _tokenizer_config(folder)
    meta = m2m100_meta(vocab, tok_config.get("language_codes", "m2m100"), int(tok_config.get("num_madeup_words", 8)),
                       bool(tok_config.get("clean_up_tokenization_spaces", False)))
    return M2M100Tokenizer(sp_path, vocab, meta), meta


def _char_allowed(char: str, prefixes: tuple[str, ...]) -> bool:
    category = unicodedata.category(char)
    if category[0] in "PSZ" or category in ("No", "Nl"):
        return True  # punctuation, symbols, spaces, circled/roman numerals: shared by all scripts
    if category == "Nd" and ("0" <= char <= "9" or "\uff10" <= char <= "\uff19"):
        return True
    name = unicodedata.name(char, "")
    return any(name.startswith(p) for p in prefixes)


def restricted_token_ids(tokenizer: NllbTokenizer, langs: list[str], sample_text: str | None = None) -> list[int]:
    """Token ids the languages ``langs`` can write (see the module docstring), sorted."""
    from mlx_stream_tts.languages import lang_script

    prefixes: tuple[str, ...] = ()
    for lang in langs:
        script = lang_script(lang)
        if script not in SCRIPT_PREFIXES:
            raise ValueError(
                f"cannot restrict the vocabulary for {lang!r}: unknown script {script!r} "
                f"(known: {', '.join(sorted(SCRIPT_PREFIXES))})"
            )
        prefixes += SCRIPT_PREFIXES[script]
    keep = {tokenizer.eos_id}
    for token_id, piece in tokenizer.vocab_pieces():
        if all(_char_allowed(c, prefixes) for c in piece.replace("\u2581", "")):
            keep.add(token_id)
    if sample_text:
        for line in sample_text.splitlines():
            keep.update(i for i in tokenizer.encode_pieces(line) if i != tokenizer.unk_id)
    return sorted(keep)


# ------------------------------------------------------------------------------------------- convert


def _replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def convert_nllb(
    src: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    q_bits: int | None = None,
    q_group_size: int = 64,
    restrict_vocab: list[str] | None = None,
    restrict_sample: str | Path | None = None,
    overwrite: bool = False,
    revision: str | None = None,
    restrict_ids: list[int] | None = None,
) -> Path:
    """Convert a checkpoint to this package's MLX format.

    Args:
        src: hub id (downloaded with huggingface_hub) or a local folder in the hub layout.
        out_dir: the folder to create.
        dtype: float32, float16 or bfloat16 for the weights (and quantization scales).
        q_bits: 4 or 8 to quantize linear layers, embedding and output head; None keeps floats.
        q_group_size: quantization group size (32, 64 or 128).
        restrict_vocab: language codes whose tokens the output projection keeps (see module docstring).
        restrict_sample: a text file whose tokens are kept as well (needs ``restrict_vocab``).
        overwrite: replace an existing ``out_dir``.
        revision: hub revision.
        restrict_ids: explicit token ids for the output projection instead of ``restrict_vocab``
            (``</s>`` is added); for experiments and benchmarks.

    Returns:
        The output folder.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if q_bits not in (None, 2, 3, 4, 6, 8):
        raise ValueError(f"q_bits must be 4 or 8 (or 2, 3, 6), not {q_bits!r}")
    if restrict_sample and not restrict_vocab:
        raise ValueError("restrict_sample needs restrict_vocab (the target language codes)")
    if restrict_ids is not None and restrict_vocab:
        raise ValueError("give restrict_vocab or restrict_ids, not both")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")

    folder = fetch_source(src, revision)
    config = read_config(folder)
    tokenizer, tokenizer_metadata = load_source_tokenizer(folder)
    args = ModelArgs.from_dict(config)
    if len(tokenizer) > args.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids but the model only {args.vocab_size}")

    logger.info("reading weights from %s", folder)
    weights = rename_weights(load_source_weights(folder), args)

    if restrict_vocab or restrict_ids is not None:
        if restrict_ids is not None:
            keep = sorted({int(i) for i in restrict_ids} | {tokenizer.eos_id})
            if keep[0] < 0 or keep[-1] >= args.vocab_size:
                raise ValueError(f"restrict_ids must lie in [0, {args.vocab_size})")
        else:
            sample = Path(restrict_sample).read_text(encoding="utf-8") if restrict_sample else None
            keep = restricted_token_ids(tokenizer, list(restrict_vocab), sample)
        full = weights.pop("lm_head.weight") if "lm_head.weight" in weights else weights["model.shared.weight"]
        index = mx.array(np.array(keep, dtype=np.int32))
        weights["lm_head.weight"] = full[index]  # (kept, d_model)
        weights["lm_head.output_token_ids"] = index
        config["output_vocab_size"] = len(keep)
        logger.info("output vocabulary restricted to %d of %d tokens (%s)", len(keep), args.vocab_size,
                    " ".join(restrict_vocab or ["explicit ids"]))
    else:
        config["output_vocab_size"] = None
    target = DTYPES[dtype]
    weights = {k: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}

    args = ModelArgs.from_dict(config)
    model = Model(args)
    model.load_weights(list(weights.items()), strict=True)  # every tensor used, every shape right
    if q_bits:
        quantize_model(model, q_group_size, q_bits)
        config["quantization"] = {"group_size": q_group_size, "bits": q_bits}
    else:
        config["quantization"] = None
    params = dict(tree_flatten(model.parameters()))
    mx.eval(params)

    config["mlx_stream_tts"] = {
        "format": FORMAT_VERSION,
        "source": str(src),
        "dtype": dtype,
        "restrict_vocab": list(restrict_vocab) if restrict_vocab else ("ids" if restrict_ids is not None else None),
    }
    config["torch_dtype"] = dtype
    # Built beside the target and renamed into place; removed on any way out (SIGTERM included).
    with staged_folder(out) as tmp:
        mx.save_safetensors(str(tmp / WEIGHTS_FILE), params, metadata={"format": "mlx"})
        shutil.copy2(folder / SPM_FILE, tmp / SPM_FILE)
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)
        (tmp / META_FILE).write_text(json.dumps(tokenizer_metadata, indent=1, ensure_ascii=False))
        # config.json last: its presence marks a complete folder.
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        _replace_dir(tmp, out, overwrite)
    logger.info("wrote %s", out)
    return out


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `convert nllb` options."""
    from mlx_stream_tts.translate import default_model_dir

    parser.add_argument("src", help="hub id (e.g. facebook/nllb-200-distilled-600M) or a local folder in the hub layout")
    parser.add_argument("--out", default=str(default_model_dir()), help="output folder")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="weight dtype (on a CPU keep float32: float16/bfloat16 halve the size but MLX's CPU kernels "
                             "for them are slow)")
    parser.add_argument("--q-bits", type=int, choices=[4, 8],
                        help="quantize to 4 or 8 bits (smaller; on a CPU 8 bits also decodes ~2x faster than float32)")
    parser.add_argument("--q-group-size", type=int, choices=[32, 64, 128], default=64, help="quantization group size")
    parser.add_argument("--restrict-vocab", nargs="+", metavar="LANG",
                        help="keep only output tokens these languages write (e.g. jpn_Jpan, or ja eng_Latn)")
    parser.add_argument("--restrict-sample", metavar="FILE", help="also keep every token of this target-language text")
    parser.add_argument("--revision", help="hub revision")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")


def run(args: argparse.Namespace) -> int:
    """Run `convert nllb` from parsed arguments; returns the exit code."""
    from mlx_stream_tts.languages import resolve_lang

    try:
        langs = [resolve_lang(code) for code in args.restrict_vocab] if args.restrict_vocab else None
        out = convert_nllb(
            args.src,
            args.out,
            dtype=args.dtype,
            q_bits=args.q_bits,
            q_group_size=args.q_group_size,
            restrict_vocab=langs,
            restrict_sample=args.restrict_sample,
            overwrite=args.overwrite,
            revision=args.revision,
        )
    except (OSError, ValueError, RuntimeError) as err:  # OSError: missing files, a full disk, ...
        print(f"mlx-stream-tts convert nllb: {err}", file=sys.stderr)
        return 1
    print(f"converted to {out}")
    return 0
