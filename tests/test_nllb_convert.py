"""convert/nllb.py: round trip, strictness, layouts, options and bad sources."""

import json
import shutil

import pytest
from nllb_fixtures import get_checkpoint, get_converted, tokenizers  # noqa: F401

import mlx.core as mx
import numpy as np

from convert.nllb import _IGNORED_PREFIXES, convert_nllb, load_source_weights, restricted_token_ids
from mlx_stream_tts.nllb_tokenizer import NllbTokenizer
from mlx_stream_tts.translate import Translator

pytestmark = pytest.mark.slow


def test_round_trip_and_every_tensor_used(tmp_path_factory):
    folder, hf, _ = get_checkpoint(tmp_path_factory, "d24odd")
    out = get_converted(tmp_path_factory, "d24odd")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "sentencepiece.bpe.model", "nllb_tokenizer.json"} <= names
    ours = mx.load(str(out / "model.safetensors"))
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    tied = {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"}
    for name, value in state.items():
        if name.startswith(_IGNORED_PREFIXES):
            continue
        if name in tied:
            np.testing.assert_array_equal(value, state["model.shared.weight"])
            continue
        assert name in ours, f"source tensor {name} not used"
        np.testing.assert_array_equal(np.array(ours[name]), value)
    assert set(ours) <= set(state)
    config = json.loads((out / "config.json").read_text())
    assert config["mlx_stream_tts"]["format"] == 2 and config["quantization"] is None


def test_pytorch_bin_checkpoint_with_tied_copies(tmp_path_factory, tmp_path):
    folder, hf, _ = get_checkpoint(tmp_path_factory, "d16", as_bin=True)
    assert (folder / "pytorch_model.bin").is_file()
    weights = load_source_weights(folder)
    assert "lm_head.weight" in weights
    out = convert_nllb(folder, tmp_path / "m")
    ours = mx.load(str(out / "model.safetensors"))
    np.testing.assert_array_equal(np.array(ours["model.shared.weight"]), hf.model.shared.weight.detach().numpy())
    assert "lm_head.weight" not in ours


def test_refuses_overwrite_and_replaces_when_asked(tmp_path_factory, tmp_path):
    folder, _, _ = get_checkpoint(tmp_path_factory, "d16")
    out = convert_nllb(folder, tmp_path / "m")
    with pytest.raises(FileExistsError):
        convert_nllb(folder, out)
    (out / "marker").write_text("old")
    convert_nllb(folder, out, overwrite=True)
    assert not (out / "marker").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_bad_sources(tmp_path_factory, tmp_path):
    folder, _, _ = get_checkpoint(tmp_path_factory, "d16")
    with pytest.raises(FileNotFoundError):
        convert_nllb(tmp_path / "nowhere", tmp_path / "a")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="bert"):
        convert_nllb(other, tmp_path / "b")
    no_weights = tmp_path / "noweights"
    shutil.copytree(folder, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        convert_nllb(no_weights, tmp_path / "c")
    with pytest.raises(ValueError):
        convert_nllb(folder, tmp_path / "d", dtype="float64")
    # Tied copy that is not a copy.
    untied = tmp_path / "untied"
    shutil.copytree(folder, untied)
    w = dict(mx.load(str(untied / "model.safetensors")))
    w["lm_head.weight"] = w["model.shared.weight"] + 1
    mx.save_safetensors(str(untied / "model.safetensors"), w)
    with pytest.raises(ValueError, match="lm_head.weight"):
        convert_nllb(untied, tmp_path / "e")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtypes(tmp_path_factory, dtype):
    out = get_converted(tmp_path_factory, "d16", dtype=dtype)
    weights = mx.load(str(out / "model.safetensors"))
    assert weights["model.shared.weight"].dtype == getattr(mx, dtype)


def test_restricted_ids_follow_scripts(tokenizers):  # noqa: F811
    spm_path, _, _ = tokenizers
    tok = NllbTokenizer(spm_path)
    ja = restricted_token_ids(tok, ["jpn_Jpan"])
    en = restricted_token_ids(tok, ["eng_Latn"])
    both = restricted_token_ids(tok, ["jpn_Jpan", "eng_Latn"])
    assert tok.eos_id in ja and tok.eos_id in en
    assert set(ja) | set(en) == set(both)
    piece = {i: tok.piece(i).replace("\u2581", "") for i in both if i != tok.eos_id}
    ja_pieces = [piece[i] for i in ja if i != tok.eos_id]
    en_pieces = [piece[i] for i in en if i != tok.eos_id]
    assert any("テ" in p for p in ja_pieces) and not any(c.isascii() and c.isalpha() for p in ja_pieces for c in p)
    assert "the" in en_pieces and not any("テ" in p for p in en_pieces)
    assert any(p.isdigit() for p in ja_pieces) and any(p in ("。", ".") for p in ja_pieces)
    assert all(i not in ja for i in tok.id_to_lang_code)
    # A sample text adds its tokens.
    sampled = restricted_token_ids(tok, ["jpn_Jpan"], "Hello テスト")
    assert set(tok.encode_pieces("Hello")) <= set(sampled)
    with pytest.raises(ValueError, match="Zzzz"):
        restricted_token_ids(tok, ["xxx_Zzzz"])


def test_quantized_conversion_loads(tmp_path_factory):
    out = get_converted(tmp_path_factory, "d64q", q_bits=8, q_group_size=32)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 8}
    weights = mx.load(str(out / "model.safetensors"))
    assert "model.decoder.layers.0.fc1.scales" in weights and "model.shared.scales" in weights
    assert weights["model.decoder.layers.0.fc1.weight"].dtype == mx.uint32
    Translator.load(out)


def test_cli_arguments(tmp_path_factory, tmp_path):
    import argparse

    from convert import nllb

    folder, _, _ = get_checkpoint(tmp_path_factory, "d16")
    parser = argparse.ArgumentParser()
    nllb.add_arguments(parser)
    args = parser.parse_args([str(folder), "--out", str(tmp_path / "cli"), "--restrict-vocab", "ja", "en"])
    assert nllb.run(args) == 0
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["mlx_stream_tts"]["restrict_vocab"] == ["jpn_Jpan", "eng_Latn"]
    assert nllb.run(args) == 1  # exists: refused, not crashed


# ----------------------------------------------------------------------------------------- M2M100


def test_m2m100_round_trip(tmp_path_factory):
    from nllb_fixtures import get_m2m100_checkpoint, get_m2m100_converted

    from mlx_stream_tts.nllb_tokenizer import M2M100Tokenizer, load_tokenizer

    _, hf, ref = get_m2m100_checkpoint(tmp_path_factory)
    out = get_m2m100_converted(tmp_path_factory)
    assert {"vocab.json", "nllb_tokenizer.json", "sentencepiece.bpe.model"} <= {p.name for p in out.iterdir()}
    tok = load_tokenizer(out)
    assert isinstance(tok, M2M100Tokenizer) and len(tok) == hf.config.vocab_size
    ref.src_lang = "de"
    assert tok.encode("Hello world.", "__de__") == ref("Hello world.").input_ids
    ours = mx.load(str(out / "model.safetensors"))
    np.testing.assert_array_equal(np.array(ours["model.shared.weight"]), hf.model.shared.weight.detach().numpy())


def test_m2m100_restricted_ids_use_vocab_json(tmp_path_factory):
    """Kept rows are vocab.json's ids of the pieces of the script (not sentencepiece's ids)."""
    from nllb_fixtures import get_m2m100_tokenizer

    from convert.nllb import load_source_tokenizer

    ref, folder = get_m2m100_tokenizer(tmp_path_factory)
    tok, _ = load_source_tokenizer(folder)
    ja = restricted_token_ids(tok, ["jpn_Jpan"])
    assert restricted_token_ids(tok, ["__ja__"]) == ja
    pieces = [ref.convert_ids_to_tokens(i).replace("\u2581", "") for i in ja if i != tok.eos_id]
    assert any("テ" in p for p in pieces)
    assert not any(c.isascii() and c.isalpha() for p in pieces for c in p)
    vocab = json.loads((folder / "vocab.json").read_text())
    kana_kanji = {i for p, i in vocab.items() if (t := p.replace("\u2581", ""))
                  and all("\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff" for c in t)}
    assert len(kana_kanji) >= 10 and kana_kanji <= set(ja)
    assert not set(ja) & set(tok.lang_code_to_id.values()) and not set(ja) & set(tok.madeup_ids)


def test_m2m100_bad_tokenizers(tmp_path_factory, tmp_path):
    from nllb_fixtures import get_m2m100_checkpoint

    folder, _, _ = get_m2m100_checkpoint(tmp_path_factory)
    no_vocab = tmp_path / "novocab"
    shutil.copytree(folder, no_vocab)
    (no_vocab / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        convert_nllb(no_vocab, tmp_path / "a")
    marian = tmp_path / "marian"
    shutil.copytree(folder, marian)
    config = json.loads((marian / "tokenizer_config.json").read_text())
    (marian / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "MarianTokenizer"}))
    with pytest.raises(ValueError, match="MarianTokenizer"):
        convert_nllb(marian, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_without_network_a_copy_in_the_hub_cache_is_used(tmp_path_factory, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder, _, _ = get_checkpoint(tmp_path_factory, "d24odd")
    repo = tmp_path / "hf" / "hub" / "models--test--tiny-nllb"
    shutil.copytree(folder, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "PROXY" not in k.upper()}
    env.update(HF_ENDPOINT="https://hub.invalid", HF_HOME=str(tmp_path / "hf"))  # .invalid: never resolves
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "mlx_stream_tts", "convert", "nllb", "test/tiny-nllb", "--out", str(out)],
                          cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no network (cannot resolve hub.invalid" in done.stderr and "in the Hugging Face cache" in done.stderr
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def _broken_copy(src, dst, name, change):
    """The converted folder ``src`` with tensor ``name`` replaced by ``change(tensor)``, written to ``dst``."""
    shutil.copytree(src, dst)
    weights = dict(mx.load(str(dst / "model.safetensors")))
    weights[name] = change(weights[name])
    mx.save_safetensors(str(dst / "model.safetensors"), weights, metadata={"format": "mlx"})
    return dst


def _one_nan(w):
    flat = np.array(w).reshape(-1)
    flat[flat.size // 3] = np.nan
    return mx.array(flat.reshape(w.shape))


@pytest.mark.parametrize("name, change, why", [
    ("model.decoder.layers.0.fc1.weight", _one_nan, "'model.decoder.layers.0.fc1.weight' holds NaN"),
    # finite weights whose products overflow: the encoder's output is infinite
    ("model.encoder.layer_norm.weight", lambda w: mx.full(w.shape, 3e38), "NaN or infinite encoder states"),
])
def test_weights_that_load_but_cannot_translate_are_refused_at_load(tmp_path_factory, tmp_path, name, change, why):
    folder = _broken_copy(get_converted(tmp_path_factory, "d24odd"), tmp_path / "broken", name, change)
    with pytest.raises(ValueError, match="convert again with") as err:
        Translator.load(folder)
    assert why in str(err.value) and "loads, but" in str(err.value)
    assert Translator.load(folder, self_check=False).model is not None  # skippable


def test_self_check_passes_on_a_sound_model(tmp_path_factory):
    assert Translator.load(get_converted(tmp_path_factory, "d24odd"), self_check=False).self_check() is None
