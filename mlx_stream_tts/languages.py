"""Language codes: what users write (``ja``, ``jpn``, ``JPN_JPAN``, ``zh-TW``, ``__ja__``) to the codes of
NLLB-200 (FLORES-200's ``jpn_Jpan``) and of M2M100 (fairseq's ``__ja__`` tokens), and their scripts."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable

from .nllb_tokenizer import LANGUAGE_CODES, M2M100_LANGUAGE_CODES

# Short ISO 639-1 codes (and a few common names) -> NLLB codes.
SHORT_CODES: dict[str, str] = {
    "af": "afr_Latn", "am": "amh_Ethi", "ar": "arb_Arab", "as": "asm_Beng", "az": "azj_Latn",
    "be": "bel_Cyrl", "bg": "bul_Cyrl", "bn": "ben_Beng", "bo": "bod_Tibt", "bs": "bos_Latn",
    "ca": "cat_Latn", "cs": "ces_Latn", "cy": "cym_Latn", "da": "dan_Latn", "de": "deu_Latn",
    "el": "ell_Grek", "en": "eng_Latn", "eo": "epo_Latn", "es": "spa_Latn", "et": "est_Latn",
    "eu": "eus_Latn", "fa": "pes_Arab", "fi": "fin_Latn", "fo": "fao_Latn", "fr": "fra_Latn",
    "ga": "gle_Latn", "gd": "gla_Latn", "gl": "glg_Latn", "gu": "guj_Gujr", "ha": "hau_Latn",
    "he": "heb_Hebr", "hi": "hin_Deva", "hr": "hrv_Latn", "ht": "hat_Latn", "hu": "hun_Latn",
    "hy": "hye_Armn", "id": "ind_Latn", "ig": "ibo_Latn", "is": "isl_Latn", "it": "ita_Latn",
    "ja": "jpn_Jpan", "jv": "jav_Latn", "ka": "kat_Geor", "kk": "kaz_Cyrl", "km": "khm_Khmr",
    "kn": "kan_Knda", "ko": "kor_Hang", "ky": "kir_Cyrl", "lb": "ltz_Latn", "lo": "lao_Laoo",
    "lt": "lit_Latn", "lv": "lvs_Latn", "mg": "plt_Latn", "mi": "mri_Latn", "mk": "mkd_Cyrl",
    "ml": "mal_Mlym", "mn": "khk_Cyrl", "mr": "mar_Deva", "ms": "zsm_Latn", "mt": "mlt_Latn",
    "my": "mya_Mymr", "nb": "nob_Latn", "ne": "npi_Deva", "nl": "nld_Latn", "nn": "nno_Latn",
    "no": "nob_Latn", "ny": "nya_Latn", "oc": "oci_Latn", "or": "ory_Orya", "pa": "pan_Guru",
    "pl": "pol_Latn", "ps": "pbt_Arab", "pt": "por_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl",
    "rw": "kin_Latn", "sa": "san_Deva", "sd": "snd_Arab", "si": "sin_Sinh", "sk": "slk_Latn",
    "sl": "slv_Latn", "sm": "smo_Latn", "sn": "sna_Latn", "so": "som_Latn", "sq": "als_Latn",
    "sr": "srp_Cyrl", "st": "sot_Latn", "su": "sun_Latn", "sv": "swe_Latn", "sw": "swh_Latn",
    "ta": "tam_Taml", "te": "tel_Telu", "tg": "tgk_Cyrl", "th": "tha_Thai", "ti": "tir_Ethi",
    "tk": "tuk_Latn", "tl": "tgl_Latn", "tr": "tur_Latn", "tt": "tat_Cyrl", "ug": "uig_Arab",
    "uk": "ukr_Cyrl", "ur": "urd_Arab", "uz": "uzn_Latn", "vi": "vie_Latn", "wo": "wol_Latn",
    "xh": "xho_Latn", "yi": "ydd_Hebr", "yo": "yor_Latn", "zh": "zho_Hans", "zu": "zul_Latn",
    "zh-cn": "zho_Hans", "zh-hans": "zho_Hans", "zh-tw": "zho_Hant", "zh-hant": "zho_Hant",
    "pt-br": "por_Latn", "english": "eng_Latn", "japanese": "jpn_Jpan",
    "ba": "bak_Cyrl", "ff": "fuv_Latn", "lg": "lug_Latn", "ln": "lin_Latn", "ss": "ssw_Latn", "tn": "tsn_Latn",
}

# Scripts written without spaces between sentences: pieces of a split text are joined directly.
NO_SPACE_SCRIPTS = ("Jpan", "Hans", "Hant", "Thai", "Mymr", "Khmr", "Laoo", "Tibt")


# M2M100 codes (fairseq's) that are not ISO 639-1 codes of SHORT_CODES; its other 3-letter codes (ast, ceb,
# ilo) are the prefixes of their NLLB codes.
_M2M100_ONLY_CODES = {"ns": "nso_Latn"}
_NLLB_BY_LOWER = {c.lower(): c for c in LANGUAGE_CODES}


@functools.lru_cache(maxsize=1024)
def _nllb_code(code: str) -> str | None:
    """The NLLB code for ``jpn_Jpan``, ``JPN_JPAN``, ``ja``, ``jpn``, ``zh-TW`` or ``__ja__``; None if unknown."""
    key = code.strip()
    if len(key) > 4 and key.startswith("__") and key.endswith("__"):
        key = key[2:-2]  # an M2M100 token
    lower = key.lower()
    if lower.replace("-", "_") in _NLLB_BY_LOWER:
        return _NLLB_BY_LOWER[lower.replace("-", "_")]
    short = SHORT_CODES.get(lower) or SHORT_CODES.get(lower.replace("_", "-")) or _M2M100_ONLY_CODES.get(lower)
    if short:
        return short
    prefixed = [c for c in LANGUAGE_CODES if c.split("_")[0] == lower]
    return prefixed[0] if len(prefixed) == 1 else None


# Codes that only M2M100 knows (br, fy), as its tokens: accepted before a model is loaded.
_M2M100_ONLY_TOKENS = tuple(f"__{c}__" for c in M2M100_LANGUAGE_CODES["m2m100"] if _nllb_code(c) is None)


def lang_script(code: str) -> str | None:
    """The ISO 15924 script of a language code (``jpn_Jpan``, ``ja``, ``__ja__`` -> ``Jpan``), None if unknown."""
    return (_nllb_code(code) or code).rpartition("_")[2] or None


def resolve_lang(code: str, codes: Iterable[str] | None = None) -> str:
    """The language code of a tokenizer from ``jpn_Jpan``, ``ja``, ``jpn``, ``JPN_JPAN`` or ``__ja__``.

    Args:
        code: a code as users write it.
        codes: the tokenizer's language codes (``tokenizer.lang_code_to_id``): NLLB's ``jpn_Jpan`` or
            M2M100's ``__ja__``. None accepts the codes of both and returns the NLLB one where it exists.

    Raises:
        ValueError: unknown code (the message lists close matches).
    """
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"language code must be a non-empty string, not {code!r}")
    known = list(codes) if codes is not None else [*LANGUAGE_CODES, *_M2M100_ONLY_TOKENS]
    by_lower = {c.lower(): c for c in known}
    key = code.strip()
    by_nllb: dict[str | None, str] = {}  # NLLB code -> the tokenizer's code for it (identity for NLLB's)
    for c in known:
        by_nllb.setdefault(_nllb_code(c), c)
    by_nllb.pop(None, None)
    found = by_lower.get(key.lower()) or by_nllb.get(_nllb_code(key)) or by_lower.get(f"__{key.lower()}__")
    if found:
        return found
    # Close matches among NLLB's codes and short codes, and among the tokenizer's own codes (M2M100's
    # __ja__ compared as ja), each shown as the tokenizer writes it.
    lower = key.lower().replace("-", "_").strip("_")
    guesses = [c for c in LANGUAGE_CODES if c.split("_")[0] == lower]
    guesses = guesses or difflib.get_close_matches(key, [*LANGUAGE_CODES, *SHORT_CODES], n=6, cutoff=0.5)
    guesses = guesses or [c for c in LANGUAGE_CODES if lower[:2] and c.startswith(lower[:2])]
    bare = {c.strip("_").lower(): c for c in known}
    guesses += [bare[c] for c in difflib.get_close_matches(lower, list(bare), n=6, cutoff=0.5)]
    close: list[str] = []
    for guess in guesses:
        own = by_lower.get(guess.lower()) or by_nllb.get(_nllb_code(guess))
        if own and own not in close:
            close.append(own)
    hint = f"; close matches: {', '.join(close[:6])}" if close else ""
    example = "__ja__, ja or jpn_Jpan" if known and known[0].startswith("__") else "jpn_Jpan or a short code like ja"
    raise ValueError(f"unknown language code {code!r} (use a code like {example}){hint}")


def joiner(code: str) -> str:
    """What joins the translations of consecutive pieces of one text: nothing in scripts written without
    spaces between sentences, else a space."""
    return "" if lang_script(code) in NO_SPACE_SCRIPTS else " "
