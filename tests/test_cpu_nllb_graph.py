"""cpu/nllb_graph.py: the translator's CPU graph against the reference modules of models/nllb.py."""

import pytest
from nllb_fixtures import SAMPLE_TEXTS, get_checkpoint, get_converted, needs_accelerator

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_stream_tts.cpu import nllb_graph
from mlx_stream_tts.models import nllb
from mlx_stream_tts.translate import Translator

pytestmark = [pytest.mark.slow, needs_accelerator]


def _force_chunks(monkeypatch):
    """Make every product of up to 16 rows take the chunked path of ``linear`` (tiny weights skip it)."""
    monkeypatch.setattr(nllb_graph, "_SMALL_PRODUCT", 0)
    monkeypatch.setattr(nllb_graph, "_CHUNKING", True)


@pytest.mark.parametrize("rows", [1, 2, 5, 16, 17])
@pytest.mark.parametrize("shape", [(4096, 1024), (1024, 4096), (1000, 1024), (8, 64), (37, 16)])
@pytest.mark.parametrize("small", [None, 0])
@pytest.mark.parametrize("split", [False, True])
def test_linear_equals_plain_matmul(monkeypatch, rows, shape, small, split):
    if small is not None:
        monkeypatch.setattr(nllb_graph, "_SMALL_PRODUCT", small)
        monkeypatch.setattr(nllb_graph, "_CHUNKING", True)
        monkeypatch.setattr(nllb_graph, "_MIN_SPLIT_PRODUCT", small)
    n, k = shape
    w, b = mx.random.normal((n, k)), mx.random.normal((n,))
    x = mx.random.normal((rows, 1, k))
    expected = np.array(x) @ np.array(w).T
    linear = nllb_graph.linear
    np.testing.assert_allclose(np.array(linear(x, w, split=split)), expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.array(linear(x, w, b, split)), expected + np.array(b), rtol=1e-4, atol=1e-3)
    assert linear(x, w, split=split).shape == (rows, 1, n)


def test_linear_prepared_views_follow_the_weights(monkeypatch):
    """One-row products keep weight.T and the bias as evaluated views; new weights must be picked up."""
    _force_chunks(monkeypatch)
    layer = nllb_graph.CpuLinear(64, 48)
    x = mx.random.normal((1, 1, 64))
    for _ in range(2):
        want = np.array(x) @ np.array(layer.weight).T + np.array(layer.bias)
        np.testing.assert_allclose(np.array(layer(x)), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.array(layer(x)), want, rtol=1e-5, atol=1e-5)  # from the cache
        layer.weight, layer.bias = mx.random.normal((48, 64)), mx.random.normal((48,))


def test_compiled_layer_norm_equals_mlx_layer_norm():
    """One compiled function serves every width: a shapeless trace must not keep the first width."""
    rng = np.random.default_rng(0)
    for dims, shape in [(16, (1, 1)), (1024, (1, 1)), (1024, (3, 7)), (7, (2, 5)), (16, (4,))]:
        ours, ref = nllb_graph.CompiledLayerNorm(dims), nn.LayerNorm(dims)
        ours.weight = ref.weight = mx.array(rng.standard_normal(dims).astype(np.float32))
        ours.bias = ref.bias = mx.array(rng.standard_normal(dims).astype(np.float32))
        x = mx.array((rng.standard_normal((*shape, dims)) * 3 + 1).astype(np.float32))
        np.testing.assert_allclose(np.array(ours(x)), np.array(ref(x)), atol=1e-5, rtol=1e-5)
        half = x.astype(mx.float16)  # other dtypes keep mx.fast.layer_norm
        assert ours(half).dtype == ref(half).dtype
        np.testing.assert_array_equal(np.array(ours(half)), np.array(ref(half)))


def test_rewrite_swaps_modules_keeping_their_arrays(tmp_path_factory):
    """Every reference module of a float model gets its CPU form, holding the very same arrays (q/k/v:
    row views of the fused matrix); quantized layers keep theirs."""
    path = get_converted(tmp_path_factory, "d24odd")
    pure = Translator.load(path, backend="mlx").model
    before = {id(m): type(m) for _, m in pure.named_modules()}
    fc1 = pure.model.decoder.layers[1].fc1.weight
    swapped = nllb_graph.rewrite(pure)
    forms = {type(m) for _, m in pure.named_modules()}
    assert {nn.Linear, nn.LayerNorm, nn.Embedding, nllb.Attention}.isdisjoint(forms)
    assert {nllb_graph.CpuLinear, nllb_graph.CompiledLayerNorm, nllb_graph.CpuEmbedding,
            nllb_graph.FusedAttention} <= forms
    assert swapped == sum(t in (nn.Linear, nn.LayerNorm, nn.Embedding, nllb.Attention) for t in before.values())
    assert pure.model.decoder.layers[1].fc1.weight is fc1
    quantized = Translator.load(get_converted(tmp_path_factory, "d64q", q_bits=8, q_group_size=32)).model
    assert type(quantized.model.decoder.layers[0].fc1) is nn.QuantizedLinear


@pytest.mark.parametrize("options", [{}, dict(restrict_vocab=["jpn_Jpan"])])
@pytest.mark.parametrize("parallel", [False, True])
def test_rewritten_model_equals_the_reference(tmp_path_factory, monkeypatch, options, parallel):
    """Step by step, the CPU graph (products forced through chunks, two streams or not) gives the pure
    model's scores, batched, with the tied and the restricted head."""
    _force_chunks(monkeypatch)
    monkeypatch.setattr(nllb_graph, "_MIN_SPLIT_PRODUCT", 0)
    path = get_converted(tmp_path_factory, "d24odd", **options)
    pure = Translator.load(path, backend="mlx").model
    fast = Translator.load(path, backend="cpu", c_step=False, parallel=parallel).model
    _, _, ref = get_checkpoint(tmp_path_factory, "d24odd")
    ref.src_lang = "eng_Latn"
    enc = ref(SAMPLE_TEXTS[:3], return_tensors="np", padding=True)
    ids, mask = mx.array(enc.input_ids.astype(np.int32)), mx.array(enc.attention_mask.astype(bool))
    memories = [m.encode(ids, mask) for m in (pure, fast)]
    np.testing.assert_allclose(np.array(memories[1]), np.array(memories[0]), atol=1e-5, rtol=1e-5)
    caches = [m.make_cache() for m in (pure, fast)]
    rng = np.random.default_rng(1)
    feeds = [np.array([[2, 260]] * 3)] + [rng.integers(4, 250, (3, 1)) for _ in range(6)]
    for feed in feeds:
        out = [np.array(m.logits(m.decode(mx.array(feed.astype(np.int32)), memory, cache, mask)))
               for m, memory, cache in zip((pure, fast), memories, caches)]
        np.testing.assert_allclose(out[1], out[0], atol=1e-5, rtol=1e-5)


def test_fused_qkv_projection_follows_the_weights(tmp_path_factory):
    """q/k/v run as one product over a fused matrix whose row views become the weights; weights set
    afterwards (load_weights, update) are used, not the stale fused copy."""
    model = Translator.load(get_converted(tmp_path_factory, "d16"), backend="cpu").model
    attn = model.model.decoder.layers[0].self_attn
    assert isinstance(attn, nllb_graph.FusedAttention)
    x = mx.random.normal((2, 3, attn.q_proj.weight.shape[1]))

    def separate():
        return [np.array(attn.heads(p(x))) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]

    want = separate()
    for got, ref in zip(attn.qkv(x), want):
        np.testing.assert_allclose(np.array(got), ref, atol=1e-5)
    fused = attn.__dict__["_fused_float"][0]
    assert fused.shape[0] == 3 * attn.q_proj.weight.shape[0]
    attn.k_proj.weight = mx.random.normal(attn.k_proj.weight.shape)
    want = separate()
    for got, ref in zip(attn.qkv(x), want):
        np.testing.assert_allclose(np.array(got), ref, atol=1e-5)
    assert attn.__dict__["_fused_float"][0] is not fused


def test_quantized_encoder_runs_in_float32(tmp_path_factory):
    """A quantized model's encoder (and cross-attention keys/values) run in float32 on the CPU: the same
    numbers as MLX's quantized kernels give in the pure model, within float rounding."""
    path = get_converted(tmp_path_factory, "d64q", q_bits=8, q_group_size=32)
    fast, pure = Translator.load(path, backend="cpu").model, Translator.load(path, backend="mlx").model
    args = fast.args
    layer = fast.model.encoder.layers[0]
    assert type(layer.fc1) is nllb_graph.CpuLinear and layer.fc1.weight.dtype == mx.float32
    assert type(pure.model.encoder.layers[0].fc1) is nn.QuantizedLinear
    assert type(fast.model.decoder.layers[0].fc1) is nn.QuantizedLinear  # read per token
    assert nllb_graph.dequantize_encoder(pure) == 6 * args.encoder_layers + 2 * args.decoder_layers
    ids = mx.array([[256, 30, 31, 32, 33, 2]], dtype=mx.int32)
    quantized = Translator.load(path, backend="mlx").model
    np.testing.assert_allclose(np.array(fast.encode(ids)), np.array(quantized.encode(ids)), atol=1e-4, rtol=0)


def test_fused_quantized_qkv_is_the_same_model(tmp_path_factory):
    """The C step's one q/k/v matrix: the three layers then read row views of it, and the MLX model
    computes exactly what it did before."""
    model = Translator.load(get_converted(tmp_path_factory, "d64q", q_bits=4, q_group_size=32), backend="cpu").model
    ids = mx.array([[256, 40, 41, 42, 2]], dtype=mx.int32)
    before = np.array(model(ids, None, mx.array([[2, 260, 50]], dtype=mx.int32)))
    attn = model.model.decoder.layers[0].self_attn
    weight, scales, biases, bias = attn.fused_quantized()
    d = model.args.d_model
    assert weight.shape[0] == scales.shape[0] == biases.shape[0] == bias.shape[0] == 3 * d
    assert np.array_equal(np.array(attn.k_proj.weight), np.array(weight[d : 2 * d]))
    assert attn.fused_quantized()[0] is weight  # made once
    after = np.array(model(ids, None, mx.array([[2, 260, 50]], dtype=mx.int32)))
    np.testing.assert_array_equal(after, before)
    float_model = Translator.load(get_converted(tmp_path_factory, "d64q"), backend="cpu").model
    assert float_model.model.decoder.layers[0].self_attn.fused_quantized() is None
