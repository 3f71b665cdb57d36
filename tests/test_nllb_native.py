"""models/nllb_native.py: the one-call decoding step against transformers and the MLX model."""

import pytest
from nllb_fixtures import SAMPLE_TEXTS, TINY_CONFIGS, get_checkpoint, get_converted

import mlx.core as mx
import numpy as np

from mlx_stream_tts import _blas, _native
from mlx_stream_tts.models.nllb_native import NativeDecoder
from mlx_stream_tts.translate import Translator

needs_native = pytest.mark.skipif(
    _blas.gemv_shim is None or _native.nllb_decode() is None, reason="no gemv shim or C compiler here"
)
pytestmark = [pytest.mark.slow, needs_native]


def _reference(hf, ref, text, steps=12):
    """transformers' greedy decoder ids (start, language code, new ids) and the logits at each position."""
    import torch

    ref.src_lang = "eng_Latn"
    enc = ref([text], return_tensors="pt")
    with torch.no_grad():
        dec = hf.generate(**enc, forced_bos_token_id=ref.convert_tokens_to_ids("jpn_Jpan"), max_new_tokens=steps,
                          do_sample=False)
        logits = hf(**enc, decoder_input_ids=dec).logits.numpy()[0]
    return enc.input_ids.numpy().astype(np.int32), dec.numpy()[0], logits


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_step_matches_transformers(tmp_path_factory, name):
    _, hf, ref = get_checkpoint(tmp_path_factory, name)
    model = Translator.load(get_converted(tmp_path_factory, name)).model
    decoder = NativeDecoder.create(model)
    assert decoder is not None
    for text in SAMPLE_TEXTS[:3]:
        ids, dec, logits = _reference(hf, ref, text)
        sentence = decoder.start(model.encode(mx.array(ids)), len(dec))
        for pos, token in enumerate(dec[:-1]):
            best = sentence.step(int(token), pos)
            np.testing.assert_allclose(sentence.logits, logits[pos], atol=1e-4, rtol=0, err_msg=f"{text!r} {pos}")
            # The highest score picks generate()'s next id (after the forced language code).
            if pos >= 1:
                assert best == dec[pos + 1]


def test_restricted_head_matches_the_mlx_model(tmp_path_factory):
    """Over a restricted head the scores are the MLX model's kept columns, step by step."""
    model = Translator.load(get_converted(tmp_path_factory, "d24odd", restrict_vocab=["jpn_Jpan"])).model
    decoder = NativeDecoder.create(model)
    rng = np.random.default_rng(3)
    ids = mx.array([[256, *rng.integers(4, 200, 9).tolist(), 2]], dtype=mx.int32)
    memory = model.encode(ids)
    cache = model.make_cache()
    sentence = decoder.start(memory, 16)
    for pos, token in enumerate([2, 260, *rng.integers(4, 300, 10).tolist()]):
        expected = np.array(model.logits(model.decode(mx.array([[token]], dtype=mx.int32), memory, cache)))[0, 0]
        best = sentence.step(token, pos)
        assert sentence.logits.shape == (model.lm_head.weight.shape[0],)
        np.testing.assert_allclose(sentence.logits, expected, atol=1e-5, rtol=0)
        assert best == int(np.argmax(expected))


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_translator_uses_it_with_the_same_output(tmp_path_factory, monkeypatch, name):
    """Greedy, one sentence: the native path runs and returns what generate() and the MLX path return."""
    from test_translate import _hf_generate, _sources

    _, hf, ref = get_checkpoint(tmp_path_factory, name)
    path = get_converted(tmp_path_factory, name)
    native, plain = Translator.load(path), Translator.load(path, native=False)
    starts = []
    original = NativeDecoder.start
    monkeypatch.setattr(NativeDecoder, "start", lambda self, *a: starts.append(1) or original(self, *a))
    tgt = ref.convert_tokens_to_ids("jpn_Jpan")
    for text in SAMPLE_TEXTS:
        expected = _hf_generate(hf, ref, [text], 14, 1)
        sources = _sources(ref, [text])
        assert native.generate(sources, tgt, max_new_tokens=14, guard=False) == expected
        assert plain.generate(sources, tgt, max_new_tokens=14, guard=False) == expected
        streamed = list(native._greedy_stream(sources[0], tgt, 14))
        assert streamed == expected[0]
    assert len(starts) == 2 * len(SAMPLE_TEXTS)  # never on the plain translator
    assert plain._native_decoder is None


def test_batches_beams_and_other_dtypes_keep_mlx(tmp_path_factory, monkeypatch):
    path = get_converted(tmp_path_factory, "d64q")
    calls = []
    original = NativeDecoder.start
    monkeypatch.setattr(NativeDecoder, "start", lambda self, *a: calls.append(1) or original(self, *a))
    tr = Translator.load(path)
    sources = [[256, 10, 11, 12, 2], [256, 13, 14, 2]]
    tr.generate(sources, 260, max_new_tokens=4, guard=False)  # a batch of two
    tr.generate(sources[:1], 260, beam_size=3, max_new_tokens=4, guard=False)
    assert not calls
    tr.generate(sources[:1], 260, max_new_tokens=4, guard=False)
    assert calls
    seen = len(calls)
    for other in (Translator.load(path, dtype="float16"), Translator.load(get_converted(tmp_path_factory, "d64q", q_bits=8))):
        assert NativeDecoder.create(other.model) is None
        out = other.generate(sources[:1], 260, max_new_tokens=4, guard=False)  # the MLX path decodes
        assert len(out) == 1 and all(isinstance(t, int) for t in out[0])
        assert other._native_decoder is None and not other.native
    assert len(calls) == seen


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("MLX_STREAM_TTS_NATIVE_DECODE", "0")
    _native.nllb_decode.cache_clear()
    try:
        assert _native.nllb_decode() is None
    finally:
        monkeypatch.delenv("MLX_STREAM_TTS_NATIVE_DECODE")
        _native.nllb_decode.cache_clear()
    assert _native.nllb_decode() is not None


def test_new_weights_are_picked_up(tmp_path_factory):
    """Weights loaded after the first translation: the step follows them (it points into the old ones)."""
    path = get_converted(tmp_path_factory, "d16")
    tr, plain = Translator.load(path), Translator.load(path, native=False)
    sources, tgt = [[256, 20, 21, 22, 23, 2]], 260
    tr.generate(sources, tgt, max_new_tokens=8, guard=False)
    first = tr._native_decoder
    assert first is not None and first.current()
    rng = np.random.default_rng(0)
    fc1 = plain.model.model.decoder.layers[0].fc1
    new = mx.array(rng.normal(0, 1.0, fc1.weight.shape).astype(np.float32))
    for t in (tr, plain):
        t.model.load_weights([("model.decoder.layers.0.fc1.weight", new)], strict=False)
    assert not first.current()
    assert tr.generate(sources, tgt, max_new_tokens=8, guard=False) == plain.generate(sources, tgt, max_new_tokens=8, guard=False)
    assert tr._native_decoder is not first


def test_bad_arguments(tmp_path_factory):
    model = Translator.load(get_converted(tmp_path_factory, "d16")).model
    decoder = NativeDecoder.create(model)
    memory = model.encode(mx.array([[256, 20, 21, 2]], dtype=mx.int32))
    with pytest.raises(ValueError, match="one sentence"):
        decoder.start(mx.concatenate([memory, memory]), 4)
    with pytest.raises(ValueError, match="max_len"):
        decoder.start(memory, 0)
    sentence = decoder.start(memory, 4)
    with pytest.raises(ValueError, match="position"):
        sentence.step(2, 4)
    with pytest.raises(ValueError, match="outside"):
        sentence.step(model.args.vocab_size, 0)
    with pytest.raises(ValueError, match="outside"):
        sentence.step(-1, 0)
    assert sentence.step(2, 0, logits=False) == 0
