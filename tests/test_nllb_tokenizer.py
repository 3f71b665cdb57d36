"""Our NLLB tokenizer against transformers' (built from the same tiny sentencepiece model)."""

import json

import pytest
from nllb_fixtures import SAMPLE_TEXTS, tokenizers  # noqa: F401

from mlx_stream_tts.nllb_tokenizer import LANGUAGE_CODES, NllbTokenizer


def test_reference_tokenizer_really_tokenizes(tokenizers):  # noqa: F811
    """Guard against transformers 5.x's silent all-<unk> tokenizer making the parity test vacuous."""
    spm_path, ref, _ = tokenizers
    ref.src_lang = "eng_Latn"
    ids = ref("The quick brown fox jumps over the lazy dog.").input_ids
    unk = ref.convert_tokens_to_ids("<unk>")
    assert unk == 3
    pieces = ids[1:-1]
    assert len(pieces) >= 5 and sum(i == unk for i in pieces) == 0
    assert len(set(pieces)) >= 5
    sp_size = NllbTokenizer(spm_path).sp.get_piece_size()
    # The real NLLB layout: language codes right after the shifted pieces (eng_Latn is the 47th).
    assert ref.convert_tokens_to_ids("eng_Latn") == sp_size + 1 + 46
    assert ids[0] == ref.convert_tokens_to_ids("eng_Latn") and ids[-1] == 2


def test_language_codes_match_transformers():
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    assert list(LANGUAGE_CODES) == list(FAIRSEQ_LANGUAGE_CODES)


@pytest.mark.parametrize("lang", ["eng_Latn", "fra_Latn", "jpn_Jpan"])
def test_ids_equal_reference(tokenizers, lang):  # noqa: F811
    spm_path, ref, _ = tokenizers
    ours = NllbTokenizer(spm_path)
    ref.src_lang = lang
    for text in SAMPLE_TEXTS:
        assert ours.encode(text, lang) == ref(text).input_ids, text
    # Unknown characters become <unk> in both.
    assert 3 in ours.encode_pieces("Unknown symbols: ☃")


def test_decode_equal_reference(tokenizers):  # noqa: F811
    spm_path, ref, _ = tokenizers
    ours = NllbTokenizer(spm_path)
    for text in SAMPLE_TEXTS:
        ids = ours.encode(text, "jpn_Jpan") + [ours.pad_id]
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.decode(ours.encode("Hello world.", "eng_Latn"), skip_special_tokens=False).startswith("eng_Latn")


def test_meta_from_tokenizer_json(tokenizers, tmp_path):  # noqa: F811
    """The converter's reading of tokenizer.json reproduces the reference's special ids."""
    from convert.nllb import tokenizer_meta

    spm_path, ref, ref_dir = tokenizers
    meta = tokenizer_meta(ref_dir, NllbTokenizer(spm_path).sp.get_piece_size())
    ours = NllbTokenizer(spm_path, meta)
    for code in ("eng_Latn", "jpn_Jpan", "zul_Latn"):
        assert ours.lang_id(code) == ref.convert_tokens_to_ids(code)
    assert ours.mask_id == ref.convert_tokens_to_ids("<mask>")
    assert len(ours) == len(ref)
    # A tokenizer.json whose ids differ from NLLB's layout wins (with a warning).
    data = json.loads((ref_dir / "tokenizer.json").read_text())
    for t in data["added_tokens"]:
        if t["content"] == "jpn_Jpan":
            t["id"] = 7
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    assert tokenizer_meta(tmp_path, ours.sp.get_piece_size())["lang_code_to_id"]["jpn_Jpan"] == 7


def test_unknown_language_code(tokenizers):  # noqa: F811
    ours = NllbTokenizer(tokenizers[0])
    with pytest.raises(ValueError, match="xyz_Latn"):
        ours.encode("hi", "xyz_Latn")
