"""NLLB-200's and M2M100's tokenizers without transformers: sentencepiece plus the fairseq id layouts.

Ids, as in transformers' ``NllbTokenizer`` / ``NllbTokenizerFast``: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2,
``<unk>`` 3, then the sentencepiece pieces shifted by one (sentencepiece's own ``<unk>``/``<s>``/``</s>``
at 0-2 are replaced by the four above), then the language codes, then ``<mask>``. A source sentence is
``[src_lang] pieces </s>``; the decoder starts from ``</s>`` followed by the target language code.

The converter writes ``nllb_tokenizer.json`` beside the sentencepiece model: the special ids, the
language code ids (read from the source's ``tokenizer.json`` when it has them) and whether decoding
cleans up spaces before punctuation, as the source tokenizer was configured.

M2M100 (transformers' ``M2M100Tokenizer``) maps sentencepiece's piece strings to ids through
``vocab.json`` (pieces missing there become ``<unk>``), puts the language tokens ``__ja__`` after the
vocabulary in the order of :data:`M2M100_LANGUAGE_CODES`, then its made-up words (padding, never
written), and decodes with sentencepiece's own joining. :func:`load_tokenizer` picks the class from the
``tokenizer_class`` in ``nllb_tokenizer.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path


logger = logging.getLogger(__name__)

SPM_FILE = "sentencepiece.bpe.model"
META_FILE = "nllb_tokenizer.json"
VOCAB_FILE = "vocab.json"

# The 202 NLLB-200 language codes in the order that fixes their ids (FLORES-200 codes).
LANGUAGE_CODES: tuple[str, ...] = tuple(
    """
ace_Arab ace_Latn acm_Arab acq_Arab aeb_Arab afr_Latn ajp_Arab aka_Latn amh_Ethi apc_Arab arb_Arab
ars_Arab ary_Arab arz_Arab asm_Beng ast_Latn awa_Deva ayr_Latn azb_Arab azj_Latn bak_Cyrl bam_Latn
ban_Latn bel_Cyrl bem_Latn ben_Beng bho_Deva bjn_Arab bjn_Latn bod_Tibt bos_Latn bug_Latn bul_Cyrl
cat_Latn ceb_Latn ces_Latn cjk_Latn ckb_Arab crh_Latn cym_Latn dan_Latn deu_Latn dik_Latn dyu_Latn
dzo_Tibt ell_Grek eng_Latn epo_Latn est_Latn eus_Latn ewe_Latn fao_Latn pes_Arab fij_Latn fin_Latn
fon_Latn fra_Latn fur_Latn fuv_Latn gla_Latn gle_Latn glg_Latn grn_Latn guj_Gujr hat_Latn hau_Latn
heb_Hebr hin_Deva hne_Deva hrv_Latn hun_Latn hye_Armn ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn
jav_Latn jpn_Jpan kab_Latn kac_Latn kam_Latn kan_Knda kas_Arab kas_Deva kat_Geor knc_Arab knc_Latn
kaz_Cyrl kbp_Latn kea_Latn khm_Khmr kik_Latn kin_Latn kir_Cyrl kmb_Latn kon_Latn kor_Hang kmr_Latn
lao_Laoo lvs_Latn lij_Latn lim_Latn lin_Latn lit_Latn lmo_Latn ltg_Latn ltz_Latn lua_Latn lug_Latn
luo_Latn lus_Latn mag_Deva mai_Deva mal_Mlym mar_Deva min_Latn mkd_Cyrl plt_Latn mlt_Latn mni_Beng
khk_Cyrl mos_Latn mri_Latn zsm_Latn mya_Mymr nld_Latn nno_Latn nob_Latn npi_Deva nso_Latn nus_Latn
nya_Latn oci_Latn gaz_Latn ory_Orya pag_Latn pan_Guru pap_Latn pol_Latn por_Latn prs_Arab pbt_Arab
quy_Latn ron_Latn run_Latn rus_Cyrl sag_Latn san_Deva sat_Beng scn_Latn shn_Mymr sin_Sinh slk_Latn
slv_Latn smo_Latn sna_Latn snd_Arab som_Latn sot_Latn spa_Latn als_Latn srd_Latn srp_Cyrl ssw_Latn
sun_Latn swe_Latn swh_Latn szl_Latn tam_Taml tat_Cyrl tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi
taq_Latn taq_Tfng tpi_Latn tsn_Latn tso_Latn tuk_Latn tum_Latn tur_Latn twi_Latn tzm_Tfng uig_Arab
ukr_Cyrl umb_Latn urd_Arab uzn_Latn vec_Latn vie_Latn war_Latn wol_Latn xho_Latn ydd_Hebr yor_Latn
yue_Hant zho_Hans zho_Hant zul_Latn
""".split()
)

# M2M100's language codes (fairseq's, written ``__ja__`` as tokens) in the order that fixes their ids,
# per ``language_codes`` of the tokenizer config (transformers' FAIRSEQ_LANGUAGE_CODES).
M2M100_LANGUAGE_CODES: dict[str, tuple[str, ...]] = {
    "m2m100": tuple(
        """
af am ar ast az ba be bg bn br bs ca ceb cs cy da de el en es et fa ff fi fr fy ga gd gl gu ha he hi hr
ht hu hy id ig ilo is it ja jv ka kk km kn ko lb lg ln lo lt lv mg mk ml mn mr ms my ne nl no ns oc or pa
pl ps pt ro ru sd si sk sl so sq sr ss su sv sw ta th tl tn tr uk ur uz vi wo xh yi yo zh zu
""".split()
    ),
    "wmt21": ("en", "ha", "is", "ja", "cs", "ru", "zh", "de"),
}

SPECIAL_TOKENS = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"}

# transformers' clean_up_tokenization: no space before these.
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _processor(sp_model: str | Path):
    """A sentencepiece processor for the model file (imported here: the rest of the package, e.g.
    bench/device.py's stand-in tokenizer, works without the sentencepiece package)."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(sp_model))


def default_meta(sp_size: int, clean_up_tokenization_spaces: bool = False) -> dict:
    """The id layout of NLLB's tokenizer for a sentencepiece model of ``sp_size`` pieces."""
    offset = 1  # fairseq: 4 specials replace sentencepiece's 3
    first_lang = sp_size + offset
    return {
        "bos_token_id": 0,
        "pad_token_id": 1,
        "eos_token_id": 2,
        "unk_token_id": 3,
        "piece_offset": offset,
        "lang_code_to_id": {code: first_lang + i for i, code in enumerate(LANGUAGE_CODES)},
        "mask_token_id": first_lang + len(LANGUAGE_CODES),
        "clean_up_tokenization_spaces": clean_up_tokenization_spaces,
    }


class NllbTokenizer:
    """Text <-> NLLB token ids.

    Args:
        sp_model: path of ``sentencepiece.bpe.model``.
        meta: the id layout (see :func:`default_meta`); None derives NLLB's from the model size.
    """

    def __init__(self, sp_model: str | Path, meta: dict | None = None):
        self.sp = _processor(sp_model)
        meta = meta or default_meta(self.sp.get_piece_size())
        self._set_special_ids(meta)
        self.piece_offset: int = meta["piece_offset"]
        self._sp_size = self.sp.get_piece_size()

    def _set_special_ids(self, meta: dict) -> None:
        self.bos_id: int = meta["bos_token_id"]
        self.pad_id: int = meta["pad_token_id"]
        self.eos_id: int = meta["eos_token_id"]
        self.unk_id: int = meta["unk_token_id"]
        self.lang_code_to_id: dict[str, int] = dict(meta["lang_code_to_id"])
        self.mask_id: int | None = meta.get("mask_token_id")
        self.clean_up_tokenization_spaces: bool = bool(meta.get("clean_up_tokenization_spaces", False))
        self.id_to_lang_code = {i: c for c, i in self.lang_code_to_id.items()}
        self.special_ids = {self.bos_id, self.pad_id, self.eos_id, self.unk_id, *self.id_to_lang_code}
        if self.mask_id is not None:
            self.special_ids.add(self.mask_id)

    @classmethod
    def load(cls, model_dir: str | Path) -> NllbTokenizer:
        """Load from a converted model folder (``sentencepiece.bpe.model`` + ``nllb_tokenizer.json``)."""
        sp_path, meta = _read_folder(model_dir)
        return cls(sp_path, meta)

    def __len__(self) -> int:
        return max(self._sp_size + self.piece_offset, *self.special_ids) + 1

    def lang_id(self, code: str) -> int:
        """Token id of a language code such as ``jpn_Jpan`` (M2M100: ``__ja__``)."""
        try:
            return self.lang_code_to_id[code]
        except KeyError:
            raise ValueError(f"language code {code!r} is not in this tokenizer") from None

    def encode_pieces(self, text: str) -> list[int]:
        """Token ids of ``text`` without language code or end token."""
        offset, unk = self.piece_offset, self.unk_id
        return [unk if i == self.sp.unk_id() else i + offset for i in self.sp.encode(text)]

    def encode(self, text: str, src_lang: str) -> list[int]:
        """Source ids as the model expects them: ``[src_lang] pieces </s>``."""
        return [self.lang_id(src_lang), *self.encode_pieces(text), self.eos_id]

    def vocab_pieces(self) -> Iterator[tuple[int, str]]:
        """(token id, sentencepiece piece) of every ordinary token (no special or control tokens)."""
        for sp_id in range(self._sp_size):
            if not (self.sp.is_control(sp_id) or self.sp.is_unknown(sp_id)):
                yield sp_id + self.piece_offset, self.sp.id_to_piece(sp_id)

    def _piece_of(self, token_id: int) -> str | None:
        """The sentencepiece piece of an ordinary token id, None outside the vocabulary."""
        sp_id = token_id - self.piece_offset
        return self.sp.id_to_piece(sp_id) if 0 <= sp_id < self._sp_size else None

    def _join(self, pieces: list[str]) -> str:
        text = "".join(pieces).replace("\u2581", " ")
        return text[1:] if text.startswith(" ") else text  # the space that sentencepiece prepends to a text

    def _special_name(self, token_id: int) -> str | None:
        if token_id in self.id_to_lang_code:
            return self.id_to_lang_code[token_id]
        names = {self.bos_id: "<s>", self.pad_id: "<pad>", self.eos_id: "</s>", self.unk_id: "<unk>",
                 self.mask_id: "<mask>"}
        return names.get(token_id)

    def piece(self, token_id: int) -> str:
        """The text piece of one id (special tokens by name)."""
        piece = self._special_name(token_id) or self._piece_of(token_id)
        if piece is None:
            raise ValueError(f"token id {token_id} is outside this tokenizer's vocabulary")
        return piece

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens (language codes, ``</s>``, padding) are dropped by default."""
        pieces = []
        for i in ids:
            i = int(i)
            if i in self.special_ids:
                if not skip_special_tokens:
                    pieces.append(self.piece(i))
                continue
            piece = self._piece_of(i)
            if piece is None:
                logger.debug("dropping token id %d outside the vocabulary", i)
            else:
                pieces.append(piece)
        text = self._join(pieces)
        if self.clean_up_tokenization_spaces:
            for old, new in _CLEANUPS:
                text = text.replace(old, new)
        return text


class M2M100Tokenizer(NllbTokenizer):
    """Text <-> M2M100 token ids: sentencepiece pieces looked up in ``vocab.json``.

    Args:
        sp_model: path of ``sentencepiece.bpe.model``.
        vocab: ``vocab.json``'s piece -> id table.
        meta: the id layout (see :func:`m2m100_meta`).
    """

    def __init__(self, sp_model: str | Path, vocab: dict[str, int], meta: dict):
        self.sp = _processor(sp_model)
        self.vocab = dict(vocab)
        self.id_to_vocab_piece = {i: p for p, i in self.vocab.items()}
        self._set_special_ids(meta)
        # fairseq pads the vocabulary with made-up words after the language tokens; never written.
        first = max([*self.id_to_vocab_piece, *self.id_to_lang_code]) + 1
        self.madeup_ids = range(first, first + int(meta.get("num_madeup_words", 0)))
        self.special_ids.update(self.madeup_ids)
        self._special_pieces = {self.piece(i) for i in self.special_ids}

    @classmethod
    def load(cls, model_dir: str | Path) -> M2M100Tokenizer:
        """Load from a converted model folder (sentencepiece model, ``vocab.json``, ``nllb_tokenizer.json``)."""
        sp_path, meta = _read_folder(model_dir)
        vocab_path = Path(model_dir) / VOCAB_FILE
        if not vocab_path.is_file() or meta is None:
            raise FileNotFoundError(f"{vocab_path} or {META_FILE} is missing beside {sp_path}")
        return cls(sp_path, json.loads(vocab_path.read_text(encoding="utf-8")), meta)

    def __len__(self) -> int:
        return max([*self.id_to_vocab_piece, *self.special_ids]) + 1

    def encode_pieces(self, text: str) -> list[int]:
        """Token ids of ``text`` without language code or end token."""
        return [self.vocab.get(p, self.unk_id) for p in self.sp.encode(text, out_type=str)]

    def vocab_pieces(self) -> Iterator[tuple[int, str]]:
        """(token id, sentencepiece piece) of every ordinary token (no special tokens)."""
        return ((i, p) for p, i in self.vocab.items() if i not in self.special_ids)

    def _piece_of(self, token_id: int) -> str | None:
        return None if token_id in self.special_ids else self.id_to_vocab_piece.get(token_id)

    def _special_name(self, token_id: int) -> str | None:
        if token_id in self.madeup_ids:
            return f"madeupword{token_id - self.madeup_ids.start:04d}"
        return super()._special_name(token_id)

    def _join(self, pieces: list[str]) -> str:
        # As M2M100Tokenizer: sentencepiece decodes the runs of pieces between special tokens, which are
        # written as they are; then strip().
        text, run = "", []
        for piece in pieces:
            if piece in self._special_pieces:
                text, run = text + self.sp.decode(run) + piece, []
            else:
                run.append(piece)
        return (text + self.sp.decode(run)).strip()


def m2m100_meta(vocab: dict[str, int], language_codes: str = "m2m100", num_madeup_words: int = 8,
                clean_up_tokenization_spaces: bool = False) -> dict:
    """The id layout of M2M100's tokenizer for ``vocab.json``'s table."""
    if language_codes not in M2M100_LANGUAGE_CODES:
        known = ", ".join(M2M100_LANGUAGE_CODES)
        raise ValueError(f"unknown M2M100 language_codes {language_codes!r} (known: {known})")
    meta: dict = {"tokenizer_class": "M2M100Tokenizer"}
    for key, token in SPECIAL_TOKENS.items():
        if token not in vocab:
            raise ValueError(f"vocab.json has no {token}")
        meta[f"{key}_token_id"] = vocab[token]
    codes = M2M100_LANGUAGE_CODES[language_codes]
    meta["lang_code_to_id"] = {f"__{code}__": len(vocab) + i for i, code in enumerate(codes)}
    meta["num_madeup_words"] = num_madeup_words
    meta["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
    return meta


def _read_folder(model_dir: str | Path) -> tuple[Path, dict | None]:
    model_dir = Path(model_dir)
    sp_path = model_dir / SPM_FILE
    if not sp_path.is_file():
        raise FileNotFoundError(f"{sp_path} is missing")
    meta_path = model_dir / META_FILE
    return sp_path, (json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None)


def load_tokenizer(model_dir: str | Path) -> NllbTokenizer:
    """The tokenizer of a converted model folder: NLLB's, or M2M100's when its metadata says so."""
    _, meta = _read_folder(model_dir)
    if meta is not None and meta.get("tokenizer_class") == "M2M100Tokenizer":
        return M2M100Tokenizer.load(model_dir)
    return NllbTokenizer.load(model_dir)
