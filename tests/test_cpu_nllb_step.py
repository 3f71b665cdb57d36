"""cpu/nllb_step.py: the one-call C decoding step against transformers and the pure MLX model."""

import pytest
from nllb_fixtures import SAMPLE_TEXTS, TINY_CONFIGS, get_checkpoint, get_converted, needs_accelerator

import mlx.core as mx
import numpy as np

from mlx_stream_tts.cpu import blas as _blas
from mlx_stream_tts.cpu.nllb_step import DecodingStep, nllb_decode
from mlx_stream_tts.translate import Translator

needs_step = pytest.mark.skipif(
    _blas.gemv_shim is None or nllb_decode() is None, reason="no gemv shim or C compiler here"
)
pytestmark = [pytest.mark.slow, needs_accelerator, needs_step]


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
    decoder = DecodingStep.create(model)
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


@pytest.mark.parametrize("options", [{}, dict(restrict_vocab=["jpn_Jpan"])])
def test_steps_match_the_pure_model(tmp_path_factory, options):
    """Step by step, the C step gives the pure MLX model's scores (over a restricted head: its kept
    columns), and picks its best column."""
    path = get_converted(tmp_path_factory, "d24odd", **options)
    model = Translator.load(path).model
    decoder = DecodingStep.create(model)
    pure = Translator.load(path, backend="mlx").model
    for expected, got, best in _random_sentence(model, decoder, 12, seed=3, reference=pure):
        assert got.shape == (pure.logits(mx.zeros((1, pure.args.d_model))).shape[-1],)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        assert best == int(np.argmax(expected))


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_translator_uses_it_with_the_same_output(tmp_path_factory, monkeypatch, name):
    """Greedy, one sentence: the C step runs and returns what generate() and the pure model return."""
    from test_translate import _hf_generate, _sources

    _, hf, ref = get_checkpoint(tmp_path_factory, name)
    path = get_converted(tmp_path_factory, name)
    fast, plain = Translator.load(path), Translator.load(path, backend="mlx")
    starts = []
    original = DecodingStep.start
    monkeypatch.setattr(DecodingStep, "start", lambda self, *a: starts.append(1) or original(self, *a))
    tgt = ref.convert_tokens_to_ids("jpn_Jpan")
    for text in SAMPLE_TEXTS:
        expected = _hf_generate(hf, ref, [text], 14, 1)
        sources = _sources(ref, [text])
        assert fast.generate(sources, tgt, max_new_tokens=14, guard=False) == expected
        assert plain.generate(sources, tgt, max_new_tokens=14, guard=False) == expected
        streamed = list(fast._stream(sources[0], tgt, 14))
        assert streamed == expected[0]
    assert len(starts) == 2 * len(SAMPLE_TEXTS)  # never on the pure translator
    assert plain.accelerator is None


def test_batches_and_beams_equal_transformers(tmp_path_factory, monkeypatch):
    """Batches and beam search run on the C step too (all rows in one call per token), with
    generate()'s ids, and as many sentences started as rows."""
    from test_translate import _hf_generate, _sources

    _, hf, ref = get_checkpoint(tmp_path_factory, "d24odd")
    tr = Translator.load(get_converted(tmp_path_factory, "d24odd"))
    rows = []
    original = DecodingStep.step_rows
    monkeypatch.setattr(DecodingStep, "step_rows", lambda self, s, *a, **k: rows.append(len(s)) or original(self, s, *a, **k))
    tgt = ref.convert_tokens_to_ids("jpn_Jpan")
    for beams in (1, 3):
        expected = _hf_generate(hf, ref, SAMPLE_TEXTS, 12, beams)
        assert tr.generate(_sources(ref, SAMPLE_TEXTS), tgt, beam_size=beams, max_new_tokens=12, guard=False) == expected
    assert max(rows) == 3 * len(SAMPLE_TEXTS[: tr.max_batch])  # every beam of a batch in one call
    # More rows than one C call takes: MLX ops decode them (the CPU graph), as the pure model does.
    rows.clear()
    wide = tr.generate(_sources(ref, SAMPLE_TEXTS[:3]), tgt, beam_size=30, max_new_tokens=6, guard=False)
    assert not rows
    assert wide == Translator.load(get_converted(tmp_path_factory, "d24odd"), backend="mlx").generate(
        _sources(ref, SAMPLE_TEXTS[:3]), tgt, beam_size=30, max_new_tokens=6, guard=False)


@pytest.mark.parametrize("kernel", [0, 2])
@pytest.mark.parametrize("name", ["d24odd", "d64q"])
def test_step_rows_equals_one_row_at_a_time(tmp_path_factory, kernel, name):
    """Several sentences in one call: the scores each gets alone (other summation order: ~1e-6), with
    the plain C and the AVX-512 kernels, rows on one alignment (d 64) or not (d 24)."""
    lib = nllb_decode()
    lib.mst_nllb_set_kernel(kernel)
    try:
        _step_rows_case(tmp_path_factory, name)
    finally:
        lib.mst_nllb_set_kernel(2)


def _step_rows_case(tmp_path_factory, name):
    model = Translator.load(get_converted(tmp_path_factory, name)).model
    decoder = DecodingStep.create(model)
    rng = np.random.default_rng(9)
    sources = [mx.array([[256, *rng.integers(4, 250, n).tolist(), 2]], dtype=mx.int32) for n in (3, 9, 5, 12, 7)]
    together = [decoder.start(model.encode(ids), 10) for ids in sources]
    alone = [decoder.start(model.encode(ids), 10) for ids in sources]
    for pos in range(8):
        tokens = [2] if pos == 0 else rng.integers(4, 300, 1).tolist()
        tokens = tokens * len(sources) if pos == 0 else [int(t) for t in rng.integers(4, 300, len(sources))]
        best = decoder.step_rows(together, tokens, pos)
        for sentence, token, b in zip(alone, tokens, best):
            assert sentence.step(token, pos) == b
        for a, b in zip(together, alone):
            np.testing.assert_allclose(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="rows"):
        decoder.step_rows(together, [2], 8)
    with pytest.raises(ValueError, match="position"):
        decoder.step_rows(together, [2] * 5, 10)


def test_half_precision_keeps_mlx(tmp_path_factory, monkeypatch):
    path = get_converted(tmp_path_factory, "d64q")
    calls = []
    original = DecodingStep.start
    monkeypatch.setattr(DecodingStep, "start", lambda self, *a: calls.append(1) or original(self, *a))
    sources = [[256, 10, 11, 12, 2], [256, 13, 14, 2]]
    half = Translator.load(path, dtype="float16")
    assert DecodingStep.create(half.model) is None
    out = half.generate(sources[:1], 260, max_new_tokens=4, guard=False)  # the MLX path decodes
    assert len(out) == 1 and all(isinstance(t, int) for t in out[0])
    assert half.accelerator is not None and half.accelerator.step is None
    assert not calls
    Translator.load(path).generate(sources, 260, max_new_tokens=4, guard=False)
    assert len(calls) == 2


def _random_sentence(model, decoder, steps, seed, reference=None):
    """Scores of an MLX model (``reference``, by default ``model``) and of the C step over ``model``'s
    weights, over the same random source and target ids."""
    reference = reference or model
    rng = np.random.default_rng(seed)
    ids = mx.array([[256, *rng.integers(4, 250, 9).tolist(), 2]], dtype=mx.int32)
    memory = reference.encode(ids)
    cache = reference.make_cache()
    sentence = decoder.start(model.encode(ids), steps)
    for pos, token in enumerate([2, 260, *rng.integers(4, 300, steps - 2).tolist()]):
        step = reference.decode(mx.array([[token]], dtype=mx.int32), memory, cache)
        expected = np.array(reference.logits(step))[0, 0]
        best = sentence.step(token, pos)
        yield expected, sentence.logits.copy(), best


@pytest.mark.parametrize("bits,group_size,restrict", [(8, 64, False), (8, 32, True), (4, 64, True), (4, 32, False)])
def test_quantized_steps_match_the_mlx_model(tmp_path_factory, bits, group_size, restrict):
    """The pure quantized model and the step's 8/4-bit kernels give the same scores, up to the integer
    kernel's rounding of x (and the float32 encoder's): far (>= 30x) below what the quantization itself
    moves the scores."""
    options = dict(restrict_vocab=["jpn_Jpan"]) if restrict else {}
    path = get_converted(tmp_path_factory, "d64q", q_bits=bits, q_group_size=group_size, **options)
    model = Translator.load(path).model
    pure = Translator.load(path, backend="mlx").model
    full = Translator.load(get_converted(tmp_path_factory, "d64q", **options)).model
    decoder = DecodingStep.create(model)
    assert decoder is not None and decoder._s.bits == bits
    assert model.args.has_lm_head == restrict
    seed = bits + group_size
    unquantized = [expected for expected, _, _ in _random_sentence(full, DecodingStep.create(full), 12, seed)]
    for (expected, got, best), reference in zip(_random_sentence(model, decoder, 12, seed, pure), unquantized):
        error, quantization = np.abs(got - expected).max(), np.abs(expected - reference).max()
        assert error < 1e-3 and error * 30 < quantization, (error, quantization)
        top2 = np.sort(expected)[-2:]
        if top2[1] - top2[0] > 1e-2:
            assert best == int(np.argmax(expected))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_kernels_agree(tmp_path_factory, bits):
    """The plain C, AVX-512 float and AVX-512 VNNI kernels (those the CPU has) give the same scores; the
    integer one within its rounding of x (scores move by ~1e-5 of their size)."""
    lib = nllb_decode()
    model = Translator.load(get_converted(tmp_path_factory, "d64q", q_bits=bits, q_group_size=32)).model
    decoder = DecodingStep.create(model)
    runs = {}
    try:
        for which in (0, 1, 2):
            if lib.mst_nllb_set_kernel(which) == which:
                runs[which] = [got for _, got, _ in _random_sentence(model, decoder, 8, seed=5)]
    finally:
        lib.mst_nllb_set_kernel(2)
    assert 0 in runs
    for which, tol in ((1, 1e-5), (2, 1e-3)):
        for plain, other in zip(runs[0], runs.get(which, runs[0])):
            np.testing.assert_allclose(other, plain, atol=tol, rtol=tol)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_translator_equals_the_mlx_path(tmp_path_factory, monkeypatch, bits):
    """Sentence by sentence, in batches and in beam search (which a quantized model also decodes with
    the C step, one row at a time): the pure quantized model's ids."""
    path = get_converted(tmp_path_factory, "d64q", q_bits=bits, q_group_size=32)
    fast, plain = Translator.load(path), Translator.load(path, backend="mlx")
    _, _, ref = get_checkpoint(tmp_path_factory, "d64q")
    from test_translate import _sources

    starts = []
    original = DecodingStep.start
    monkeypatch.setattr(DecodingStep, "start", lambda self, *a: starts.append(1) or original(self, *a))
    tgt = ref.convert_tokens_to_ids("jpn_Jpan")
    for text in SAMPLE_TEXTS:
        sources = _sources(ref, [text])
        assert fast.generate(sources, tgt, max_new_tokens=14, guard=False) == \
            plain.generate(sources, tgt, max_new_tokens=14, guard=False)
    batch = _sources(ref, SAMPLE_TEXTS)
    assert fast.generate(batch, tgt, max_new_tokens=14, guard=False) == \
        plain.generate(batch, tgt, max_new_tokens=14, guard=False)
    assert len(starts) == 2 * len(SAMPLE_TEXTS)
    # Beam search (the repetition guard's fallback) too, with n-gram blocking, batched.
    for beams, ngram in ((3, 0), (4, 3)):
        assert fast.generate(batch[:4], tgt, beam_size=beams, max_new_tokens=12, no_repeat_ngram_size=ngram,
                               guard=False) == \
            plain.generate(batch[:4], tgt, beam_size=beams, max_new_tokens=12, no_repeat_ngram_size=ngram, guard=False)
    assert len(starts) == 2 * len(SAMPLE_TEXTS) + 8


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("MLX_STREAM_TTS_NATIVE_DECODE", "0")
    nllb_decode.cache_clear()
    try:
        assert nllb_decode() is None
    finally:
        monkeypatch.delenv("MLX_STREAM_TTS_NATIVE_DECODE")
        nllb_decode.cache_clear()
    assert nllb_decode() is not None


def test_new_weights_are_picked_up(tmp_path_factory):
    """Weights loaded after the first translation: the step follows them (it points into the old ones)."""
    path = get_converted(tmp_path_factory, "d16")
    tr, plain = Translator.load(path), Translator.load(path, backend="mlx")
    sources, tgt = [[256, 20, 21, 22, 23, 2]], 260
    tr.generate(sources, tgt, max_new_tokens=8, guard=False)
    first = tr.accelerator.step
    assert first is not None and first.current()
    rng = np.random.default_rng(0)
    fc1 = plain.model.model.decoder.layers[0].fc1
    new = mx.array(rng.normal(0, 1.0, fc1.weight.shape).astype(np.float32))
    for t in (tr, plain):
        t.model.load_weights([("model.decoder.layers.0.fc1.weight", new)], strict=False)
    assert not first.current()
    assert tr.generate(sources, tgt, max_new_tokens=8, guard=False) == plain.generate(sources, tgt, max_new_tokens=8, guard=False)
    assert tr.accelerator.step is not first


def test_bad_arguments(tmp_path_factory):
    model = Translator.load(get_converted(tmp_path_factory, "d16")).model
    decoder = DecodingStep.create(model)
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


@pytest.mark.parametrize("quantized", [False, True])
def test_worker_threads_give_the_same_scores(tmp_path_factory, quantized):
    """Every product split over the gemv shim's two threads in tiny chunks (these products are far below
    the size that is split by default): the same scores, bit for bit, as on one thread; batches too."""
    options = dict(q_bits=8, q_group_size=32) if quantized else {}
    model = Translator.load(get_converted(tmp_path_factory, "d64q", **options)).model
    decoder = DecodingStep.create(model)
    shim = _blas.gemv_shim
    rng = np.random.default_rng(4)
    sources = [mx.array([[256, *rng.integers(4, 250, n).tolist(), 2]], dtype=mx.int32) for n in (4, 8, 6)]
    tokens = [[2, 2, 2]] + [[int(t) for t in rng.integers(4, 300, 3)] for _ in range(5)]

    def run(threads):
        shim.mst_gemv_shim_configure(threads, -1, -1, 0, 256)  # split everything, 256-byte chunks
        one = decoder.start(model.encode(sources[0]), 8)
        rows = [decoder.start(model.encode(s), 8) for s in sources]
        out = []
        for pos, step in enumerate(tokens):
            one.step(step[0], pos)
            decoder.step_rows(rows, step, pos)
            out.append([one.logits.copy()] + [r.logits.copy() for r in rows])
        return out

    try:
        single, split = run(1), run(2)
    finally:
        shim.mst_gemv_shim_configure(_blas.blas_threads(), *_blas.GEMV_POOL_DEFAULTS)
    for a, b in zip(single, split):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
