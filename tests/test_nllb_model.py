"""models/nllb.py against transformers' M2M100ForConditionalGeneration on tiny random checkpoints: the
pure model (backend "mlx"), and the same checks on the CPU accelerator's graph where cheap."""

import ast
from pathlib import Path

import pytest
from nllb_fixtures import BACKENDS, SAMPLE_TEXTS, TINY_CONFIGS, get_checkpoint, get_converted, needs_accelerator

import mlx.core as mx
import numpy as np

from mlx_stream_tts.models import nllb
from mlx_stream_tts.models.cache import KVCache
from mlx_stream_tts.translate import Translator

pytestmark = pytest.mark.slow


def _reference(hf, ref, texts, steps=10):
    """Encoder output, a greedy decoder sequence and every decoder position's logits from torch."""
    import torch

    ref.src_lang = "eng_Latn"
    enc = ref(texts, return_tensors="pt", padding=True)
    tgt = ref.convert_tokens_to_ids("jpn_Jpan")
    with torch.no_grad():
        memory = hf.model.encoder(**enc).last_hidden_state.numpy()
        dec = hf.generate(**enc, forced_bos_token_id=tgt, max_new_tokens=steps, do_sample=False)
        logits = hf(**enc, decoder_input_ids=dec).logits.numpy()
    return enc, memory, dec.numpy(), logits


def _mx(enc):
    return mx.array(enc.input_ids.numpy().astype(np.int32)), mx.array(enc.attention_mask.numpy().astype(bool))


def _model(path, backend, monkeypatch=None, **options):
    """The model as ``backend`` runs it; "cpu-chunked": the CPU graph with every product of up to 16 rows
    through its chunked path (tiny weights skip it otherwise)."""
    if backend == "cpu-chunked":
        from mlx_stream_tts.cpu import nllb_graph

        monkeypatch.setattr(nllb_graph, "_SMALL_PRODUCT", 0)
        monkeypatch.setattr(nllb_graph, "_CHUNKING", True)
        backend = "cpu"
    return Translator.load(path, backend=backend, **options).model


def test_the_model_file_is_device_free():
    """The reference model imports nothing from the CPU accelerator and never asks for the device."""
    source = Path(nllb.__file__).read_text()
    tree = ast.parse(source)
    modules = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [m for m in modules if "cpu" in m.split(".")], modules
    assert "default_device" not in source and "mx.cpu" not in source


@pytest.mark.parametrize("backend", [*BACKENDS, pytest.param("cpu-chunked", marks=needs_accelerator)])
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_encoder_and_every_decoder_step_match(tmp_path_factory, monkeypatch, name, backend):
    _, hf, ref = get_checkpoint(tmp_path_factory, name)
    model = _model(get_converted(tmp_path_factory, name), backend, monkeypatch)
    texts = SAMPLE_TEXTS[:5]  # different lengths: padded batch
    enc, memory, dec, logits = _reference(hf, ref, texts)
    ids, mask = _mx(enc)
    real = enc.attention_mask.numpy().astype(bool)
    ours_memory = model.encode(ids, mask)
    np.testing.assert_allclose(np.array(ours_memory)[real], memory[real], atol=1e-4, rtol=0)
    cache = model.make_cache()
    for t in range(dec.shape[1]):
        hidden = model.decode(mx.array(dec[:, t : t + 1].astype(np.int32)), ours_memory, cache, mask)
        step = np.array(model.logits(hidden))[:, 0]
        # Rows whose sentence ended are fed padding, as in generate(); only live rows are compared.
        live = (dec[:, : t + 1] != 1).all(axis=1)
        np.testing.assert_allclose(step[live], logits[live, t], atol=1e-4, rtol=0, err_msg=f"step {t}")
    # The whole decoder sequence in one call (causal mask) gives the same logits.
    full = np.array(model(ids, mask, mx.array(dec.astype(np.int32))))
    live = (dec != 1).all(axis=1)
    np.testing.assert_allclose(full[live], logits[live], atol=1e-4, rtol=0)


def test_unbatched_equals_batched(tmp_path_factory):
    model = Translator.load(get_converted(tmp_path_factory, "d20gelu"), backend="mlx").model
    _, _, ref = get_checkpoint(tmp_path_factory, "d20gelu")
    ref.src_lang = "eng_Latn"
    enc = ref(SAMPLE_TEXTS[:3], return_tensors="np", padding=True)
    ids, mask = mx.array(enc.input_ids.astype(np.int32)), mx.array(enc.attention_mask.astype(bool))
    batched = np.array(model.encode(ids, mask))
    for row in range(3):
        n = int(enc.attention_mask[row].sum())
        single = np.array(model.encode(ids[row : row + 1, :n]))
        np.testing.assert_allclose(single[0], batched[row, :n], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol", [("float16", 0.05), ("bfloat16", 0.25)])
def test_half_precision_close(tmp_path_factory, dtype, tol, backend):
    _, hf, ref = get_checkpoint(tmp_path_factory, "d16")
    model = Translator.load(get_converted(tmp_path_factory, "d16", dtype=dtype), dtype=None, backend=backend).model
    assert model.model.shared.weight.dtype == getattr(mx, dtype)
    enc, _, dec, logits = _reference(hf, ref, SAMPLE_TEXTS[:2], steps=4)
    ids, mask = _mx(enc)
    ours = np.array(model(ids, mask, mx.array(dec.astype(np.int32))).astype(mx.float32))
    live = (dec != 1).all(axis=1)
    assert np.abs(ours[live] - logits[live]).max() < tol * np.abs(logits).max()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits,tol", [(8, 0.03), (4, 0.3)])
def test_quantized_close(tmp_path_factory, bits, tol, backend):
    """Quantized weights promise closeness (relative to the logit range), not equality."""
    _, hf, ref = get_checkpoint(tmp_path_factory, "d64q")
    model = Translator.load(get_converted(tmp_path_factory, "d64q", q_bits=bits, q_group_size=32), backend=backend).model
    enc, _, dec, logits = _reference(hf, ref, SAMPLE_TEXTS[:2], steps=4)
    ids, mask = _mx(enc)
    ours = np.array(model(ids, mask, mx.array(dec.astype(np.int32))))
    live = (dec != 1).all(axis=1)
    err = np.abs(ours[live] - logits[live]).max() / np.abs(logits).max()
    assert err < tol, err
    assert 1e-6 < err  # it really is the quantized model


@pytest.mark.parametrize("backend", BACKENDS)
def test_restricted_head_is_a_column_subset(tmp_path_factory, backend):
    _, hf, ref = get_checkpoint(tmp_path_factory, "d16")
    model = Translator.load(get_converted(tmp_path_factory, "d16", restrict_vocab=["jpn_Jpan"]), backend=backend).model
    kept = np.array(model.output_token_ids)
    assert 10 < len(kept) < hf.config.vocab_size // 2 and 2 in kept
    enc, _, dec, logits = _reference(hf, ref, SAMPLE_TEXTS[:2], steps=4)
    ids, mask = _mx(enc)
    ours = np.array(model(ids, mask, mx.array(dec.astype(np.int32))))
    live = (dec != 1).all(axis=1)
    np.testing.assert_allclose(ours[live], logits[live][..., kept], atol=1e-4, rtol=0)


def test_too_long_for_positions(tmp_path_factory):
    model = Translator.load(get_converted(tmp_path_factory, "d16"), backend="mlx").model
    n = model.args.max_position_embeddings
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.encode(mx.full((1, n + 1), 5, dtype=mx.int32))
    model.encode(mx.full((1, n), 5, dtype=mx.int32))
    memory = model.encode(mx.full((1, 4), 5, dtype=mx.int32))
    cache = model.make_cache()
    model.decode(mx.full((1, n), 5, dtype=mx.int32), memory, cache)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.decode(mx.full((1, 1), 5, dtype=mx.int32), memory, cache)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_on_worker_thread(tmp_path_factory, backend):
    import threading

    model = Translator.load(get_converted(tmp_path_factory, "d16"), backend=backend).model
    result = {}

    def work():
        try:
            memory = model.encode(mx.array([[5, 6, 7, 2]]))
            result["out"] = np.array(model.logits(model.decode(mx.array([[2, 9]]), memory, model.make_cache())))
        except Exception as err:  # noqa: BLE001 - re-raised on the main thread
            result["err"] = err

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert "err" not in result, result.get("err")
    assert result["out"].shape[:2] == (1, 2)


# ------------------------------------------------------------------------------ key/value cache


def test_kv_cache_grows_in_steps_and_writes_in_place():
    cache = KVCache()
    rng = np.random.default_rng(0)
    written = []
    for t in (3, 1, 252, 1, 7):  # crosses 256 after 256 positions
        k = mx.array(rng.standard_normal((2, 3, t, 4)).astype(np.float32))
        keys, values = cache.update_and_fetch(k, k + 1)
        written.append(np.array(k))
        assert keys.shape == values.shape == (2, 3, cache.offset, 4)
        np.testing.assert_array_equal(np.array(keys), np.concatenate(written, axis=2))
        np.testing.assert_array_equal(np.array(values), np.concatenate(written, axis=2) + 1)
        assert cache.keys.shape[2] == (256 if cache.offset <= 256 else 512)
    # Beam search: rows reordered (a row may be taken twice), the filled positions only.
    before = np.array(cache.keys[:, :, : cache.offset])
    cache.reorder(mx.array([1, 1]))
    np.testing.assert_array_equal(np.array(cache.keys[:, :, : cache.offset]), before[[1, 1]])


def test_step_by_step_decoding_across_the_cache_growth_equals_one_pass():
    """300 target positions, one at a time (the cache's buffers grow at 256), give the logits of one
    causal pass over all of them."""
    args = nllb.ModelArgs(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=320)
    model = nllb.Model(args)
    mx.random.seed(3)
    memory = mx.random.normal((1, 5, 16))
    ids = mx.random.randint(3, 50, (1, 300)).astype(mx.int32)
    whole = model.logits(model.decode(ids, memory, model.make_cache()))
    cache = model.make_cache()
    steps = [model.logits(model.decode(ids[:, t : t + 1], memory, cache)) for t in range(300)]
    assert cache.layers[0].keys.shape[2] == 512 and cache.offset == 300
    np.testing.assert_allclose(np.array(mx.concatenate(steps, axis=1)), np.array(whole), atol=1e-4, rtol=1e-4)
