"""The mlx-lm translator (lm_translator.py) on tiny random LFM2 and Qwen3 models built here: dispatch from
``Translator.load``, prompts as the model cards document them, greedy tokens equal to mlx-lm's own
generation, streaming equal to batch, the guards, output cleaning, context, protected spans, and the
`speak --translator` command end to end. The models say noise: what is checked is the plumbing."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_stream_tts import lm_translator
from mlx_stream_tts.lm_translator import (
    INSTRUCT_PROMPT,
    LMTranslator,
    _clean,
    clean_translation,
    is_lm_source,
)
from mlx_stream_tts.translate import Translator

from lm_fixtures import write_model

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "Hello world.",
    "Let me check the file, then run the tests.",
    "The build failed because a dependency is missing.",
    "All tests pass now.",
    "Open the file and fix the bug.",
    "I'll read the configuration first.",
]


@pytest.fixture(scope="session")
def lfm2_dir(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("lm") / "tiny-LFM2-350M-ENJP-MT", "lfm2", seed=0)


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("lm") / "tiny-Qwen3", "qwen3", seed=1, scale=2.0)


@pytest.fixture(scope="session")
def lfm2(lfm2_dir) -> LMTranslator:
    return Translator.load(lfm2_dir)


@pytest.fixture(scope="session")
def qwen3(qwen3_dir) -> LMTranslator:
    return Translator.load(qwen3_dir)


@pytest.fixture(params=["lfm2", "qwen3"])
def translator(request) -> LMTranslator:
    return request.getfixturevalue(request.param)


def like(tr: LMTranslator, **options) -> LMTranslator:
    """Another translator on the same loaded weights (a family or context of its own)."""
    return LMTranslator(tr.model, tr.tokenizer, name=tr.name, path=tr.path, **{"family": tr.family, **options})


def scripted(tr: LMTranslator, monkeypatch, tokens: list[int]) -> list[int]:
    """Make ``tr`` 'generate' ``tokens`` (then an end of turn); returns the ids it was asked for."""
    asked: list[int] = []

    def fake(prompt, limit):
        for token in itertools.islice(itertools.chain(tokens, [next(iter(tr.stop_ids))]), limit):
            asked.append(token)
            yield token

    monkeypatch.setattr(tr, "_tokens", fake)
    return asked


def ids(tr: LMTranslator, text: str) -> list[int]:
    return tr.tokenizer.encode(text, add_special_tokens=False)


# ---------------------------------------------------------------------------------- dispatch


def test_is_lm_source_tells_mlx_lm_models_from_nllb(tmp_path, lfm2_dir, qwen3_dir):
    assert is_lm_source(lfm2_dir) and is_lm_source(str(qwen3_dir))
    ours = tmp_path / "converted"
    ours.mkdir()
    (ours / "config.json").write_text(json.dumps({"model_type": "m2m_100", "mlx_stream_tts": {"format": 1}}))
    hf_nllb = tmp_path / "hf-nllb"
    hf_nllb.mkdir()
    (hf_nllb / "config.json").write_text(json.dumps({"model_type": "m2m_100"}))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not any(is_lm_source(p) for p in (ours, hf_nllb, empty, tmp_path / "missing"))
    assert is_lm_source("LiquidAI/LFM2-350M-ENJP-MT") and is_lm_source("mlx-community/Qwen3-0.6B-4bit")
    # NLLB checkpoints on the hub need converting: they stay on the NLLB path (which says how).
    assert not is_lm_source("facebook/nllb-200-distilled-600M") and not is_lm_source("facebook/m2m100_418M")


def test_translator_load_returns_the_lm_translator(lfm2, qwen3):
    assert isinstance(lfm2, LMTranslator) and lfm2.family == "enjp-mt"  # from its name
    assert isinstance(qwen3, LMTranslator) and qwen3.family == "instruct"
    assert lfm2.dtype_name == "float32"  # "auto" on a CPU
    assert lfm2.cache_id.startswith("lm:enjp-mt:") and lfm2.cache_id.endswith(":float32:ctx0")
    assert lfm2.cache_id != qwen3.cache_id


def test_family_from_names_and_a_conversions_readme(tmp_path):
    assert lm_translator.family_of(["mlx-community/LFM2-350M-ENJP-MT-8bit"], "lfm2") == "enjp-mt"
    assert lm_translator.family_of(["cyberagent/CAT-Translate-1.4b"], "llama") == "cat-translate"
    assert lm_translator.family_of(["pfnet/plamo-2-translate"], "plamo2") == "plamo-translate"
    assert lm_translator.family_of(["pfnet/plamo-2-1b"], "plamo2") == "instruct"
    assert lm_translator.family_of(["Qwen/Qwen3-0.6B"], "qwen3") == "instruct"
    (tmp_path / "README.md").write_text("---\nbase_model: LiquidAI/LFM2-350M-ENJP-MT\ntags:\n- mlx\n---\n# x\n")
    assert lm_translator._base_model(tmp_path) == "LiquidAI/LFM2-350M-ENJP-MT"


def test_a_hub_id_is_fetched_through_the_hub(monkeypatch, lfm2_dir):
    import huggingface_hub

    asked = []

    def fake_download(repo_id, allow_patterns=None, **kwargs):
        asked.append(repo_id)
        if repo_id == "LiquidAI/LFM2-350M-ENJP-MT":
            return str(lfm2_dir)
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    tr = Translator.load("LiquidAI/LFM2-350M-ENJP-MT")
    assert isinstance(tr, LMTranslator) and tr.name == "LiquidAI/LFM2-350M-ENJP-MT" and tr.family == "enjp-mt"
    with pytest.raises(FileNotFoundError, match="Hugging Face hub cannot provide it"):
        Translator.load("someone/Missing-Model")
    assert asked == ["LiquidAI/LFM2-350M-ENJP-MT", "someone/Missing-Model"]


def test_bad_folders_get_clear_errors(tmp_path, qwen3_dir):
    foreign = tmp_path / "kokoro"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "kokoro"}))
    with pytest.raises(FileNotFoundError, match="no model.*safetensors"):
        Translator.load(foreign)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (foreign / name).write_bytes((qwen3_dir / name).read_bytes())
    with pytest.raises(ValueError, match="'kokoro' model, which mlx-lm .* cannot run"):
        Translator.load(foreign)
    misfit = tmp_path / "misfit"
    misfit.mkdir()
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (misfit / name).write_bytes((qwen3_dir / name).read_bytes())
    config = json.loads((qwen3_dir / "config.json").read_text())
    (misfit / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    with pytest.raises(ValueError, match="mlx-lm cannot load it"):
        Translator.load(misfit)
    with pytest.raises(ValueError, match="family must be one of"):
        LMTranslator.load(qwen3_dir, family="poetry")
    # Weights that load but cannot translate.
    import mlx.core as mx

    broken = tmp_path / "nan"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((qwen3_dir / name).read_bytes())
    weights = mx.load(str(qwen3_dir / "model.safetensors"))
    weights["model.norm.weight"] = mx.full(weights["model.norm.weight"].shape, float("nan"))
    mx.save_safetensors(str(broken / "model.safetensors"), weights)
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        Translator.load(broken)


def test_mlx_lm_is_imported_only_when_a_model_loads(lfm2_dir):
    code = (
        "import sys, mlx_stream_tts\n"
        "from mlx_stream_tts import cli, translate, lm_translator\n"
        "cli.build_parser()\n"
        f"assert lm_translator.is_lm_source({str(lfm2_dir)!r})\n"
        "heavy = [m for m in ('mlx_lm', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ----------------------------------------------------------------------------------- prompts


def test_prompts_follow_the_model_cards(lfm2, qwen3):
    def decode(tr, prompt):  # special tokens kept
        return tr.tokenizer.decode(prompt)

    text = "Hello world."
    # LFM2-350M-ENJP-MT: the system prompt names the target language; chat template with its BOS.
    assert decode(lfm2, lfm2.prompt_ids(text, "en", "ja")) == (
        "<|startoftext|><|im_start|>system\nTranslate to Japanese.<|im_end|>\n"
        "<|im_start|>user\nHello world.<|im_end|>\n<|im_start|>assistant\n")
    assert "system\nTranslate to English.<|im_end|>" in decode(lfm2, lfm2.prompt_ids("こんにちは。", "ja", "en"))
    with pytest.raises(ValueError, match="only between English and Japanese"):
        lfm2.prompt_ids(text, "en", "fr")
    # A general chat model: the strict instruction, and thinking switched off through the template.
    instruction = INSTRUCT_PROMPT.format(src="English", tgt="Japanese")
    assert decode(qwen3, qwen3.prompt_ids(text)) == (
        f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\nHello world.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # CAT-Translate: one user turn with the card's instruction.
    cat = like(qwen3, family="cat-translate")
    assert decode(cat, cat.prompt_ids(text)) == (
        "<|im_start|>user\nTranslate the following English text into Japanese.\n\n Hello world.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # PLaMo 2 translate: its own plain format, no chat template.
    plamo = like(qwen3, family="plamo-translate")
    assert decode(plamo, plamo.prompt_ids(text)) == (
        "<|plamo:op|>dataset\ntranslation\n\n<|plamo:op|>input lang=English\nHello world.\n"
        "<|plamo:op|>output lang=Japanese\n")


def test_a_template_without_a_system_role_gets_the_instruction_in_the_user_turn(qwen3, monkeypatch):
    tr = like(qwen3)
    real = tr.tokenizer.apply_chat_template

    def no_system(messages, **kwargs):
        if messages[0]["role"] == "system":
            raise ValueError("System role not supported")
        return real(messages, **kwargs)

    monkeypatch.setattr(tr.tokenizer, "apply_chat_template", no_system)
    prompt = tr.tokenizer.decode(tr.prompt_ids("Hello world."))
    assert prompt.startswith("<|im_start|>user\nYou are a translation engine.") and "\n\nHello world.<|im_end|>" in prompt


# ------------------------------------------------------------------------------ generation


def test_greedy_tokens_are_mlx_lms_own(translator):
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    long_runs = 0
    for text in SENTENCES:
        translator.translate([text])
        ours, stop = translator.last.tokens, translator.last.stop
        limit = translator._limit(text, None)
        theirs = [r.token for r in stream_generate(translator.model, translator.tokenizer, translator.prompt_ids(text),
                                                   max_tokens=limit, sampler=make_sampler(temp=0.0))
                  if r.finish_reason != "stop"]
        assert ours == theirs[: len(ours)], text
        if stop in ("eos", "length"):  # nothing of ours cut it short: the whole of mlx-lm's output
            assert ours == theirs
        assert translator.generate(translator.prompt_ids(text), limit) == theirs  # the token-level API
        assert len(translator.generate(translator.prompt_ids(text), 7, stop=False)) == 7
        long_runs += len(ours) >= 8
    assert long_runs >= 2  # the comparison covered real sequences, not one token


def test_streaming_equals_batch(translator):
    compared = 0
    for text in SENTENCES:
        batch = translator.translate([text])[0]
        if translator.last.stop == "repetition":  # the one documented difference (tested below)
            continue
        pieces = list(translator.translate_stream(text))
        assert "".join(pieces) == batch
        compared += bool(batch)
    assert compared >= 2


def test_translate_keeps_order_and_blank_inputs(lfm2):
    one_by_one = [lfm2.translate([t])[0] for t in SENTENCES[:3]]
    assert lfm2.translate([SENTENCES[0], "", "  ", *SENTENCES[1:3]]) == [one_by_one[0], "", "", *one_by_one[1:]]
    with pytest.raises(TypeError, match="list of strings"):
        lfm2.translate("Hello.")
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        lfm2.translate(["Hello.", 3])


def test_length_guard(lfm2, monkeypatch):
    lfm2.translate(["Hello world."], max_new_tokens=3)
    assert lfm2.last.new_tokens <= 3
    for text in SENTENCES:
        lfm2.translate([text])
        assert lfm2.last.new_tokens <= lfm2._limit(text, None)
    tr = like(lfm2)
    limit = tr._limit("All tests pass now.", None)
    assert limit == int(2.0 * len(ids(tr, "All tests pass now."))) + 16
    # A model that never stops: cut at the limit, and the limit has a ceiling.
    endless = [t for t in range(10, 400) if "\n" not in tr.tokenizer.decode([t])]
    asked = scripted(tr, monkeypatch, endless)
    tr.translate(["All tests pass now."])
    assert tr.last.stop == "length" and tr.last.new_tokens == limit == len(asked)
    tr.max_new_tokens = 5
    tr.translate(["All tests pass now."])
    assert tr.last.new_tokens == 5


def test_repetition_guard_cuts_a_loop_to_one_copy(lfm2, monkeypatch):
    tr = like(lfm2)
    head, unit = ids(tr, "ファイル"), ids(tr, "を確認")
    assert 1 < len(unit) <= 8
    asked = scripted(tr, monkeypatch, head + unit * 30)
    out = tr.translate(["Check the file."])[0]
    assert tr.last.stop == "repetition" and out == "ファイルを確認"
    assert len(asked) < len(head) + 5 * len(unit)  # stopped at the fourth copy, not at the limit
    streamed = "".join(tr.translate_stream("Check the file."))
    assert streamed.startswith(out) and streamed.count("を確認") <= 4  # cut where found: no more than that
    # One token again and again.
    token = ids(tr, "テスト")[-1:]
    scripted(tr, monkeypatch, ids(tr, "了解。") + token * 50)
    out = tr.translate(["OK."])[0]
    assert tr.last.stop == "repetition" and out == tr.tokenizer.decode(ids(tr, "了解。") + token)


def test_decoding_stops_at_the_end_of_the_first_line(qwen3, monkeypatch):
    tr = like(qwen3)
    reply = "Translation: 「ファイルを確認します。」\nNote: this is polite.\nAlternatively: ..."
    asked = scripted(tr, monkeypatch, ids(tr, reply))
    assert tr.translate(["I'll check the file."])[0] == "ファイルを確認します。"
    assert tr.last.stop == "line" and len(asked) < len(ids(tr, reply))
    assert "".join(tr.translate_stream("I'll check the file.")) == "ファイルを確認します。"
    scripted(tr, monkeypatch, ids(tr, "<think>\nThe user wants Japanese.\n</think>\n\nすべてのテストが通りました。"))
    assert tr.translate(["All tests pass."])[0] == "すべてのテストが通りました。"
    assert "".join(tr.translate_stream("All tests pass.")) == "すべてのテストが通りました。"
    # Held back until the end of the reply, then given: quotes that may wrap the sentence, a possible label.
    for reply, expected in (("「ファイルを確認します。」", "ファイルを確認します。"), ("Japanese", "Japanese")):
        scripted(tr, monkeypatch, ids(tr, reply))
        assert tr.translate(["I'll check the file."])[0] == expected and tr.last.stop == "eos"
        pieces = list(tr.translate_stream("I'll check the file."))
        assert pieces == [expected]


@pytest.mark.parametrize("raw, source, expected", [
    ("Translation: こんにちは。", "Hello.", "こんにちは。"),
    ("日本語訳：\nこんにちは。", "Hello.", "こんにちは。"),
    ("\n\nHere is the translation:\nこんにちは。\n(This is polite.)", "Hello.", "こんにちは。"),
    ("<think>hmm</think>\n\nこんにちは", "Hi", "こんにちは"),
    ("</think>こんにちは", "Hi", "こんにちは"),
    ("<think>never closed", "Hi", ""),
    ("「こんにちは。」", "Hello.", "こんにちは。"),
    ("「こんにちは」。", "Hello.", "こんにちは。"),
    ("\"こんにちは\"", "Hello", "こんにちは"),
    ("「A」と「B」", "A and B", "「A」と「B」"),  # quotes a part, not the sentence
    ("「未完", "x", "未完"),
    ("\"Hi\" と言った", "\"Hi\" he said", "\"Hi\" と言った"),  # the source has them
    ("\x07ab\ufffdc\td ", "x", "abc d"),
    ("Japanese food is good.", "Japanese food is good.", "Japanese food is good."),  # not a label here
])
def test_clean_translation(raw, source, expected):
    assert clean_translation(raw, source) == expected


@pytest.mark.parametrize("raw", [
    "Translation: 「ファイルを確認します。」\nNote: polite.",
    "<think>\nok\n</think>\n\nテストを実行します。",
    "日本語：テスト\nまた",
    "Japanese food is good.",
    "「A」と「B」です。",
    "\n\n  すべてのテストが通りました。  \n",
])
def test_streamed_cleaning_only_grows_towards_the_final_text(raw):
    final = clean_translation(raw, "Source.")
    shown = ""
    for n in range(len(raw) + 1):
        certain, _ = _clean(raw[:n], "Source.", final=False)
        assert certain.startswith(shown) and final.startswith(certain), (raw[:n], certain, final)
        shown = certain


# ------------------------------------------------------------------------------------ context


def test_context_puts_previous_sentences_in_the_prompt(lfm2):
    tr = like(lfm2, context=2)
    prompts = []
    real = tr.prompt_ids

    def spy(text, src_lang="eng_Latn", tgt_lang="jpn_Jpan", context=None):
        prompts.append((text, list(context or [])))
        return real(text, src_lang, tgt_lang, context)

    tr.prompt_ids = spy
    tr.warm()  # not kept as context
    outs = tr.translate(SENTENCES[:4])
    lengths = []
    for text, context in prompts[1:]:
        lengths.append(len(real(text, "en", "ja", context)))
    assert [c for _, c in prompts[1:]] == [
        [], [(SENTENCES[0], outs[0])], [(SENTENCES[0], outs[0]), (SENTENCES[1], outs[1])],
        [(SENTENCES[1], outs[1]), (SENTENCES[2], outs[2])]]
    # As earlier turns of the conversation, in order, after the system prompt.
    shown = tr.tokenizer.decode(real(SENTENCES[3], "en", "ja", prompts[-1][1]))
    assert shown.index(SENTENCES[1]) < shown.index(outs[1]) < shown.index(SENTENCES[2]) < shown.index(SENTENCES[3])
    assert shown.startswith("<|startoftext|><|im_start|>system\nTranslate to Japanese.<|im_end|>")
    assert lengths[2] > lengths[0] + len(ids(tr, SENTENCES[0]))  # the context is paid for in prompt tokens
    tr.translate(["こんにちは。"], "ja", "en")  # another language pair: a context of its own
    assert prompts[-1][1] == []
    tr.reset_context()
    tr.translate([SENTENCES[0]])
    assert prompts[-1][1] == []
    # Off by default.
    plain = like(lfm2)
    plain.translate(SENTENCES[:2])
    assert plain.context == 0 and list(plain._history) == []


# -------------------------------------------------------------------------------------- spans


def test_protected_spans_pass_through(lfm2):
    from mlx_stream_tts.spans import ProtectedTranslator

    seen = []
    inner = like(lfm2)
    real = inner.translate
    inner.translate = lambda texts, *a, **k: (seen.extend(texts), real(texts, *a, **k))[1]
    tr = ProtectedTranslator(inner)
    out = tr.translate(["Open src/app.ts and run `npm test` now.", "Hello world."])
    assert out[0].count("src/app.ts") == 1 and out[0].count("npm test") == 1
    assert "src/app.ts" not in seen[0] and "X1" in seen[0] and seen[1] == "Hello world."
    assert out[1] == real(["Hello world."])[0]
    assert tr.warm() > 0.0 and tr.warm() == 0.0  # the inner translator's warm(), through the wrapper


# ------------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize("model", ["lfm2", "qwen3"])
def test_speak_with_translator_end_to_end(model, request, tmp_path, monkeypatch, capsys):
    from mlx_stream_tts.cli import main
    from mlx_stream_tts.phrase_cache import PhraseCache

    folder = request.getfixturevalue(f"{model}_dir")
    monkeypatch.setenv("MLX_STREAM_TTS_CACHE", str(tmp_path))  # the phrase cache goes here, not ~/.cache
    monkeypatch.delenv("MLX_STREAM_TTS_NO_CACHE", raising=False)
    text = tmp_path / "in.txt"
    text.write_text("Hello world. All tests pass now.\n")
    assert main(["speak", str(text), "--format", "text", "--translator", str(folder), "--no-voice", "--text"]) == 0
    spoken = capsys.readouterr().out.splitlines()
    assert main(["speak", str(text), "--format", "text", "--translator", str(folder), "--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    assert dry == spoken  # the second run from the phrase cache: the same words
    assert 1 <= len(spoken) <= 2 and all("Hello" not in line for line in spoken)  # translated (noise), not English
    # The cache keyed them by the mlx-lm model's identity.
    identity = Translator.load(folder).cache_id
    cache = PhraseCache(tmp_path / "phrases.sqlite3")
    try:
        stored = [cache.get_translation("eng_Latn", "jpn_Jpan", identity, s) for s in ("Hello world.", "All tests pass now.")]
    finally:
        cache.close()
    assert any(s is not None for s in stored)


def test_speak_command_runs_as_a_process(lfm2_dir, tmp_path):
    env = {**os.environ, "MLX_STREAM_TTS_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_stream_tts", "speak", "-", "--format", "text", "--translator", str(lfm2_dir),
         "--no-voice", "--text"], input=b"Let me check the file, then run the tests.\n", capture_output=True,
        cwd=ROOT, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().strip()


def test_translator_and_model_dir_are_exclusive(lfm2_dir, capsys):
    from mlx_stream_tts.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["speak", "-", "--translator", str(lfm2_dir), "--model-dir", str(lfm2_dir)])
    assert exit_info.value.code == 2 and "exclusive" in capsys.readouterr().err
