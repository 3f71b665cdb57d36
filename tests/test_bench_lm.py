"""bench/lm_models.py (the decoder-only rows of bench/translate.py --lm): real shapes, prompts, token counts,
and one row's plumbing on tiny random models (a few seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import lm_models  # noqa: E402
import translate  # noqa: E402  (bench/translate.py)

ENGLISH = "Run the tests again before you commit the change, then open the file and read the first line."


def tiny(shape: str) -> dict:
    """The family of ``shape`` at a few thousand parameters (dimensions divisible by the group of 64)."""
    config = dict(lm_models.SHAPES[shape], vocab_size=320, hidden_size=64, num_attention_heads=4,
                  num_key_value_heads=2)
    if config["model_type"] == "lfm2":
        config.update(num_hidden_layers=3, block_dim=64, block_ff_dim=192, block_multiple_of=64,
                      layer_types=["conv", "full_attention", "conv"])
    else:
        config.update(num_hidden_layers=2, head_dim=16, intermediate_size=128)
    return config


def count_parameters(config: dict) -> tuple[int, int]:
    """(all, without the embedding) of mlx-lm's model for ``config``; lazy, so nothing is computed."""
    import importlib

    from mlx.utils import tree_flatten

    arch = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    model = arch.Model(arch.ModelArgs.from_dict(config))
    total = sum(a.size for _, a in tree_flatten(model.parameters()))
    return total, total - model.model.embed_tokens.weight.size


def test_shapes_have_the_parameter_counts_of_their_model_cards():
    # LiquidAI/LFM2-350M and LFM2-1.2B cards give exact counts; Qwen3-0.6B's card gives 0.44B without
    # the embedding (the LFM2 counts also prove the SwiGLU "auto adjust" and the conv/attention pattern).
    assert count_parameters(lm_models.SHAPES["lfm2-350m"])[0] == 354_483_968
    assert count_parameters(lm_models.SHAPES["lfm2-1.2b"])[0] == 1_170_340_608
    assert round(count_parameters(lm_models.SHAPES["qwen3-0.6b"])[1] / 1e9, 2) == 0.44
    for config in (lm_models.SHAPES["lfm2-350m"], lm_models.SHAPES["lfm2-1.2b"]):
        assert config["layer_types"].count("full_attention") == 6 and len(config["layer_types"]) == 16


def test_prompts_follow_each_family_template():
    lfm2 = lm_models.render_chat("lfm2", "Hi.")
    assert lfm2 == ("<|startoftext|><|im_start|>system\nTranslate to Japanese.<|im_end|>\n"
                    "<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n")
    qwen3 = lm_models.render_chat("qwen3", "Hi.")
    assert qwen3.startswith("<|im_start|>system\nTranslate the user's English text into natural Japanese.")
    assert qwen3.endswith("<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    with_context = lm_models.render_chat("lfm2", "Hi.", context=[("Before.", "前。")])
    assert with_context.index("user\nBefore.") < with_context.index("assistant\n前。") < with_context.index("user\nHi.")
    with pytest.raises(KeyError):
        lm_models.render_chat("llama", "Hi.")


def test_token_counts_count_special_tokens_once_and_words_with_their_space():
    assert lm_models.estimate_text_tokens("Hello, world.") == 4  # Hello , ␣world .
    assert lm_models.estimate_text_tokens("in 2024\n") == 6  # in ␣2 0 2 4 \n
    assert lm_models.estimate_text_tokens(ENGLISH) == 20
    # LFM2's prompt: <|startoftext|>, 3 <|im_start|>, 2 <|im_end|>; then "system\n" "Translate to Japanese."
    # "\n" "user\n" "Hi." "\n" "assistant\n": 2 + 4 + 1 + 2 + 2 + 1 + 2 text tokens.
    assert lm_models.count_prompt_tokens("lfm2", lm_models.render_chat("lfm2", "Hi.")) == 6 + 14
    plain = lm_models.count_prompt_tokens("lfm2", lm_models.render_chat("lfm2", ENGLISH))
    assert plain == 38
    longer = lm_models.count_prompt_tokens("lfm2", lm_models.render_chat("lfm2", ENGLISH, [("One two.", "")]))
    # Two turns more: 4 special tokens, "user\n" "One two." "\n" "assistant\n" "\n" = 2 + 3 + 1 + 2 + 1.
    assert longer == plain + 4 + 9


@pytest.mark.parametrize("shape", ["lfm2-350m", "qwen3-0.6b"])
def test_tiny_models_build_quantize_and_decode_an_exact_length(shape):
    import mlx.nn as nn

    fp32, _ = lm_models.build_model(shape, config=tiny(shape))
    q4, config = lm_models.build_model(shape, bits=4, config=tiny(shape))
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 64
    kinds = {type(m) for _, m in q4.named_modules()}
    assert nn.QuantizedLinear in kinds and nn.QuantizedEmbedding in kinds and nn.Linear not in kinds
    assert lm_models.weight_bytes(q4) < lm_models.weight_bytes(fp32) / 3
    ids = lm_models.prompt_ids(12, config["vocab_size"])
    assert len(ids) == 12 and max(ids) < config["vocab_size"]
    first, total = lm_models.timed_generation(q4, ids, 5)
    assert 0 < first <= total


def test_prompt_ids_stay_inside_the_vocabulary_and_repeat_by_seed():
    ids = lm_models.prompt_ids(50, 2000)
    assert len(ids) == 50 and all(1000 <= i < 2000 for i in ids)
    assert ids == lm_models.prompt_ids(50, 2000) != lm_models.prompt_ids(50, 2000, seed=1)


def test_one_lm_row_runs_in_process_and_prints_beside_nllb(monkeypatch, capsys):
    monkeypatch.setitem(lm_models.SHAPES, "lfm2-350m", tiny("lfm2-350m"))
    row = translate.run_lm("lfm2-350m-q8", runs=1)
    assert row["prompt_tokens"] == 38 and row["context_tokens"] > row["prompt_tokens"] + translate.NEW_TOKENS
    assert 0 < row["first"] <= row["total"] and row["first_context"] > 0 and row["peak_mb"] > 0
    assert row["step_bytes"] == lm_models.weight_bytes(lm_models.build_model("lfm2-350m", 8)[0])
    nllb = dict(encoder=50.0, first=100.0, total=720.0, peak_mb=2000.0, step_bytes=837e6)
    translate.print_lm_table({"ours-fp32": nllb, "lfm2-350m-q8": row}, {"ours-fp32": 50.0, "lfm2-350m-q8": 50.0},
                             1, ((1.0, 1.0, 1.0), (2.0, 2.0, 2.0)))
    out = capsys.readouterr().out
    assert "| lfm2-350m-q8 | 38 |" in out and "| 38 + 32 |" in out
    assert "| ours-fp32 | 24 (encoder) nllb | 100 | 20.0 | 720 | 24 + 32 | - (no context input) | 837 |" in out
    assert "load average 1.0/1.0 before, 2.0/2.0 after" in out


def test_peak_memory_is_this_process_own_and_can_restart(tmp_path):
    import subprocess

    assert translate.peak_mb() >= translate.rss_mb() > 0
    # A child's peak is its own, not the parent's RSS at the fork (ru_maxrss would say at least that).
    ballast = b"\x01" * (300 * 2**20)  # noqa: F841  (written, so resident, while the child runs)
    code = f"import sys; sys.path.insert(0, {str(Path(translate.__file__).parent)!r}); import translate; print(translate.peak_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert child < translate.rss_mb() - 200


def test_lm_rows_name_known_variants_and_bad_rows_are_refused():
    assert set(translate.DEFAULT_LM) <= set(translate.LM_ROWS)
    assert all(base in lm_models.VARIANTS for base in translate.LM_ROWS.values())
    assert lm_models.VARIANTS["lfm2-1.2b-q8"] == ("lfm2-1.2b", 8)
    with pytest.raises(SystemExit):
        translate.main(["--lm-models", "gpt-9"])
    with pytest.raises(SystemExit):
        translate.main(["--lm-only", "--lm-runs", "0"])
