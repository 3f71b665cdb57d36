"""Our NLLB tokenizer against transformers' (built from the same tiny sentencepiece model)."""

import json
import shutil

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


# ----------------------------------------------------------------------------------------- M2M100

M2M100_TEXTS = [*SAMPLE_TEXTS, "", "  extra   spaces  around ", "☃☃", "Hello\nworld\ttab."]


@pytest.fixture(scope="module")
def m2m100(tmp_path_factory):
    """(our tokenizer read from the hub folder as the converter reads it, reference, hub folder)."""
    from nllb_fixtures import get_m2m100_tokenizer

    from convert.nllb import load_source_tokenizer

    ref, folder = get_m2m100_tokenizer(tmp_path_factory)
    ours, _ = load_source_tokenizer(folder)
    return ours, ref, folder


def _dropped_text(folder):
    """A text made of the sentencepiece pieces that the fixture left out of vocab.json."""
    import sentencepiece as spm

    vocab = json.loads((folder / "vocab.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(folder / "sentencepiece.bpe.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
    return " ".join(p.replace("\u2581", "") for p in pieces if p not in vocab)


def test_m2m100_reference_really_tokenizes(m2m100):
    """The fixture's vocab.json order differs from sentencepiece's, and some pieces are missing from it."""
    ours, ref, folder = m2m100
    assert type(ours).__name__ == "M2M100Tokenizer"
    ref.src_lang = "en"
    ids = ref("The quick brown fox jumps over the lazy dog.").input_ids[1:-1]
    assert len(set(ids)) >= 5 and 3 not in ids
    sp_ids = [i + 1 for i in ours.sp.encode("The quick brown fox jumps over the lazy dog.")]
    assert ids != sp_ids  # NLLB's offset layout would give other ids
    text = _dropped_text(folder)
    assert 3 in ref(text).input_ids and not any(ours.sp.is_unknown(i) for i in ours.sp.encode(text))


@pytest.mark.parametrize("lang", ["en", "ja", "fr", "zu"])
def test_m2m100_ids_equal_reference(m2m100, lang):
    ours, ref, folder = m2m100
    ref.src_lang = lang
    for text in [*M2M100_TEXTS, _dropped_text(folder)]:
        assert ours.encode(text, f"__{lang}__") == ref(text).input_ids, text
    assert 3 in ours.encode_pieces("Unknown symbols: ☃")


def test_m2m100_layout_equals_reference(m2m100):
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    from mlx_stream_tts.nllb_tokenizer import M2M100_LANGUAGE_CODES

    ours, ref, _ = m2m100
    assert {k: list(v) for k, v in M2M100_LANGUAGE_CODES.items()} == FAIRSEQ_LANGUAGE_CODES
    for code in FAIRSEQ_LANGUAGE_CODES["m2m100"]:
        assert ours.lang_id(f"__{code}__") == ref.get_lang_id(code)
    assert (ours.bos_id, ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2, 3)
    # transformers' len() leaves out the 8 made-up words that the model's embedding has.
    assert len(ours) == len(ref) + 8
    assert ours.piece(len(ours) - 1) == "madeupword0007"
    with pytest.raises(ValueError, match="jpn_Jpan"):
        ours.lang_id("jpn_Jpan")  # the Translator resolves codes first; the tokenizer wants its own


def test_m2m100_decode_equal_reference(m2m100):
    ours, ref, folder = m2m100
    for text in [*M2M100_TEXTS, _dropped_text(folder)]:
        ids = ours.encode(text, "__ja__") + [ours.pad_id]
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    ids = ours.encode("Hello world.", "__en__")
    assert ours.decode(ids, skip_special_tokens=False) == "__en__" + ref.decode(ids[1:], skip_special_tokens=False)
    # Made-up words are dropped (transformers writes them as "<unk>").
    assert ours.decode([len(ours) - 1, *ids]) == "Hello world."


def test_m2m100_wmt21_codes(m2m100, tmp_path):
    from transformers import M2M100Tokenizer

    from convert.nllb import load_source_tokenizer

    _, _, folder = m2m100
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "language_codes": "wmt21"}))
    codes = ["en", "ha", "is", "ja", "cs", "ru", "zh", "de"]
    special = json.loads((tmp_path / "special_tokens_map.json").read_text())
    special["additional_special_tokens"] = [f"__{c}__" for c in codes]
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(special))
    ref = M2M100Tokenizer.from_pretrained(str(tmp_path))
    ours, _ = load_source_tokenizer(tmp_path)
    assert sorted(ours.lang_code_to_id) == sorted(f"__{c}__" for c in codes)
    for code in codes:
        assert ours.lang_id(f"__{code}__") == ref.get_lang_id(code)
        ref.src_lang = code
        assert ours.encode("Hello world.", f"__{code}__") == ref("Hello world.").input_ids
    assert len(ours) == len(ref) + 8
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "language_codes": "wmt99"}))
    with pytest.raises(ValueError, match="wmt99"):
        load_source_tokenizer(tmp_path)


def test_tokenizer_kind(m2m100, tokenizers, tmp_path):  # noqa: F811
    from convert.nllb import tokenizer_kind

    _, _, m2m_dir = m2m100
    assert tokenizer_kind(tokenizers[2]) == "nllb"
    assert tokenizer_kind(m2m_dir) == "m2m100"
    # Without tokenizer_config.json: vocab.json marks M2M100, a bare sentencepiece model NLLB.
    shutil.copy2(m2m_dir / "vocab.json", tmp_path / "vocab.json")
    assert tokenizer_kind(tmp_path) == "m2m100"
    (tmp_path / "vocab.json").unlink()
    assert tokenizer_kind(tmp_path) == "nllb"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "MarianTokenizer"}))
    with pytest.raises(ValueError, match="MarianTokenizer.*M2M100Tokenizer"):
        tokenizer_kind(tmp_path)
