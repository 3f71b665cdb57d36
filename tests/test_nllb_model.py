"""models/nllb.py against transformers' M2M100ForConditionalGeneration on tiny random checkpoints."""

import pytest
from nllb_fixtures import SAMPLE_TEXTS, TINY_CONFIGS, get_checkpoint, get_converted

import mlx.core as mx
import numpy as np

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


def _force_chunks(monkeypatch):
    """Make every product of up to 16 rows take the chunked path of ``linear`` (tiny weights skip it)."""
    from mlx_stream_tts.models import nllb

    monkeypatch.setattr(nllb, "_SMALL_PRODUCT", 0)
    monkeypatch.setattr(nllb, "_CHUNKING", True)


@pytest.mark.parametrize("rows", [1, 2, 5, 16, 17])
@pytest.mark.parametrize("shape", [(4096, 1024), (1024, 4096), (1000, 1024), (8, 64), (37, 16)])
@pytest.mark.parametrize("small", [None, 0])
@pytest.mark.parametrize("split", [False, True])
def test_linear_equals_plain_matmul(monkeypatch, rows, shape, small, split):
    from mlx_stream_tts.models import nllb

    if small is not None:
        monkeypatch.setattr(nllb, "_SMALL_PRODUCT", small)
        monkeypatch.setattr(nllb, "_CHUNKING", True)
        monkeypatch.setattr(nllb, "_MIN_SPLIT_PRODUCT", small)
    n, k = shape
    w, b = mx.random.normal((n, k)), mx.random.normal((n,))
    x = mx.random.normal((rows, 1, k))
    expected = np.array(x) @ np.array(w).T
    np.testing.assert_allclose(np.array(nllb.linear(x, w, split=split)), expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.array(nllb.linear(x, w, b, split)), expected + np.array(b), rtol=1e-4, atol=1e-3)
    assert nllb.linear(x, w, split=split).shape == (rows, 1, n)


def test_linear_prepared_views_follow_the_weights(monkeypatch):
    """One-row products keep weight.T and the bias as evaluated views; new weights must be picked up."""
    from mlx_stream_tts.models import nllb

    _force_chunks(monkeypatch)
    layer = nllb.Linear(64, 48)
    x = mx.random.normal((1, 1, 64))
    for _ in range(2):
        want = np.array(x) @ np.array(layer.weight).T + np.array(layer.bias)
        np.testing.assert_allclose(np.array(layer(x)), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.array(layer(x)), want, rtol=1e-5, atol=1e-5)  # from the cache
        layer.weight, layer.bias = mx.random.normal((48, 64)), mx.random.normal((48,))


def test_compiled_layer_norm_equals_mlx_layer_norm():
    """One compiled function serves every width: a shapeless trace must not keep the first width."""
    import mlx.nn as nn

    from mlx_stream_tts.models.nllb import LayerNorm

    rng = np.random.default_rng(0)
    for dims, shape in [(16, (1, 1)), (1024, (1, 1)), (1024, (3, 7)), (7, (2, 5)), (16, (4,))]:
        ours, ref = LayerNorm(dims), nn.LayerNorm(dims)
        ours.weight = ref.weight = mx.array(rng.standard_normal(dims).astype(np.float32))
        ours.bias = ref.bias = mx.array(rng.standard_normal(dims).astype(np.float32))
        x = mx.array((rng.standard_normal((*shape, dims)) * 3 + 1).astype(np.float32))
        np.testing.assert_allclose(np.array(ours(x)), np.array(ref(x)), atol=1e-5, rtol=1e-5)
        half = x.astype(mx.float16)  # other dtypes keep mx.fast.layer_norm
        assert ours(half).dtype == ref(half).dtype
        np.testing.assert_array_equal(np.array(ours(half)), np.array(ref(half)))


def test_fused_qkv_projection_follows_the_weights(tmp_path_factory):
    """q/k/v run as one product over a fused matrix whose row views become the weights; weights set
    afterwards (load_weights, update) are used, not the stale fused copy."""
    model = Translator.load(get_converted(tmp_path_factory, "d16")).model
    attn = model.model.decoder.layers[0].self_attn
    x = mx.random.normal((2, 3, attn.q_proj.weight.shape[1]))

    def separate():
        return [np.array(attn.heads(p(x))) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]

    want = separate()
    for got, ref in zip(attn.project(x), want):
        np.testing.assert_allclose(np.array(got), ref, atol=1e-5)
    fused = attn.__dict__["_fused_qkv"][0]
    assert fused.shape[0] == 3 * attn.q_proj.weight.shape[0]
    attn.k_proj.weight = mx.random.normal(attn.k_proj.weight.shape)
    want = separate()
    for got, ref in zip(attn.project(x), want):
        np.testing.assert_allclose(np.array(got), ref, atol=1e-5)
    assert attn.__dict__["_fused_qkv"][0] is not fused


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_encoder_and_every_decoder_step_match(tmp_path_factory, monkeypatch, name, chunked):
    if chunked:
        _force_chunks(monkeypatch)
    _, hf, ref = get_checkpoint(tmp_path_factory, name)
    model = Translator.load(get_converted(tmp_path_factory, name)).model
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
    model = Translator.load(get_converted(tmp_path_factory, "d20gelu")).model
    _, _, ref = get_checkpoint(tmp_path_factory, "d20gelu")
    ref.src_lang = "eng_Latn"
    enc = ref(SAMPLE_TEXTS[:3], return_tensors="np", padding=True)
    ids, mask = mx.array(enc.input_ids.astype(np.int32)), mx.array(enc.attention_mask.astype(bool))
    batched = np.array(model.encode(ids, mask))
    for row in range(3):
        n = int(enc.attention_mask[row].sum())
        single = np.array(model.encode(ids[row : row + 1, :n]))
        np.testing.assert_allclose(single[0], batched[row, :n], atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [("float16", 0.05), ("bfloat16", 0.25)])
def test_half_precision_close(tmp_path_factory, dtype, tol):
    _, hf, ref = get_checkpoint(tmp_path_factory, "d16")
    model = Translator.load(get_converted(tmp_path_factory, "d16", dtype=dtype)).model
    enc, _, dec, logits = _reference(hf, ref, SAMPLE_TEXTS[:2], steps=4)
    ids, mask = _mx(enc)
    ours = np.array(model(ids, mask, mx.array(dec.astype(np.int32))).astype(mx.float32))
    live = (dec != 1).all(axis=1)
    assert np.abs(ours[live] - logits[live]).max() < tol * np.abs(logits).max()


@pytest.mark.parametrize("bits,tol", [(8, 0.03), (4, 0.3)])
def test_quantized_close(tmp_path_factory, bits, tol):
    """Quantized weights promise closeness (relative to the logit range), not equality."""
    _, hf, ref = get_checkpoint(tmp_path_factory, "d64q")
    model = Translator.load(get_converted(tmp_path_factory, "d64q", q_bits=bits, q_group_size=32)).model
    enc, _, dec, logits = _reference(hf, ref, SAMPLE_TEXTS[:2], steps=4)
    ids, mask = _mx(enc)
    ours = np.array(model(ids, mask, mx.array(dec.astype(np.int32))))
    live = (dec != 1).all(axis=1)
    err = np.abs(ours[live] - logits[live]).max() / np.abs(logits).max()
    assert err < tol, err
    assert 1e-6 < err  # it really is the quantized model


def test_restricted_head_is_a_column_subset(tmp_path_factory):
    _, hf, ref = get_checkpoint(tmp_path_factory, "d16")
    model = Translator.load(get_converted(tmp_path_factory, "d16", restrict_vocab=["jpn_Jpan"])).model
    kept = np.array(model.output_token_ids)
    assert 10 < len(kept) < hf.config.vocab_size // 2 and 2 in kept
    enc, _, dec, logits = _reference(hf, ref, SAMPLE_TEXTS[:2], steps=4)
    ids, mask = _mx(enc)
    ours = np.array(model(ids, mask, mx.array(dec.astype(np.int32))))
    live = (dec != 1).all(axis=1)
    np.testing.assert_allclose(ours[live], logits[live][..., kept], atol=1e-4, rtol=0)


def test_too_long_for_positions(tmp_path_factory):
    model = Translator.load(get_converted(tmp_path_factory, "d16")).model
    n = model.args.max_position_embeddings
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.encode(mx.full((1, n + 1), 5, dtype=mx.int32))
    model.encode(mx.full((1, n), 5, dtype=mx.int32))


def test_forward_on_worker_thread(tmp_path_factory):
    import threading

    model = Translator.load(get_converted(tmp_path_factory, "d16")).model
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
