"""decoding.py: how often the MLX loops wait for the device (per token), n-gram blocking on the device,
and the Metal wired limit."""

import pytest
from nllb_fixtures import SAMPLE_TEXTS, get_checkpoint, get_converted

import mlx.core as mx
import numpy as np

from mlx_stream_tts import decoding
from mlx_stream_tts.translate import Translator

N = 12  # new tokens per sentence


@pytest.fixture(scope="module")
def pure(tmp_path_factory):
    """A pure translator over a random model whose outputs mostly run to the limit, and sources that do."""
    _, _, ref = get_checkpoint(tmp_path_factory, "d24odd")
    tr = Translator.load(get_converted(tmp_path_factory, "d24odd"), backend="mlx")
    ref.src_lang = "eng_Latn"
    tgt = ref.convert_tokens_to_ids("jpn_Jpan")
    sources = [ref(t).input_ids for t in SAMPLE_TEXTS]
    outs = tr.generate(sources, tgt, max_new_tokens=N, guard=False)
    running = [s for s, out in zip(sources, outs) if len(out) == N]
    assert len(running) >= 2
    return tr, tgt, running


@pytest.fixture
def syncs(monkeypatch):
    """Every read of device values by the loops, every queued evaluation and every blocking one, in order."""
    log: list[str] = []
    read, async_eval, evaluate = decoding.read, mx.async_eval, mx.eval
    monkeypatch.setattr(decoding, "read", lambda x: log.append("read") or read(x))
    monkeypatch.setattr(mx, "async_eval", lambda *a: log.append("queue") or async_eval(*a))
    monkeypatch.setattr(mx, "eval", lambda *a, **k: log.append("eval") or evaluate(*a, **k))
    return log


def test_greedy_reads_one_flag_per_token(pure, syncs):
    tr, tgt, sources = pure
    outs = tr.generate(sources[:3], tgt, max_new_tokens=N, guard=False)
    assert all(len(out) == N for out in outs)
    # Per token: the next step queued, then one stop flag read; the tokens once at the end.
    assert syncs == ["queue"] + ["queue", "read"] * (N - 1) + ["read"], syncs


def test_stream_reads_each_token_with_the_next_step_queued(pure, syncs):
    tr, tgt, sources = pure
    tokens = list(tr._stream(sources[0], tgt, N))
    assert len(tokens) == N
    # The token read at each step was queued one step earlier, the next step already on its way.
    assert syncs == ["queue"] + ["queue", "read"] * (N - 1) + ["read"], syncs


@pytest.mark.parametrize("ngram", [0, 3])
def test_beam_search_reads_one_flag_per_step(pure, syncs, ngram):
    tr, tgt, sources = pure
    tr.generate(sources[:2], tgt, beam_size=3, max_new_tokens=N, no_repeat_ngram_size=ngram, guard=False)
    steps = syncs.count("queue")
    assert 1 <= steps <= N and "eval" not in syncs
    assert syncs == ["queue", "read"] * steps + ["read"], syncs


def test_stream_of_a_sentence_that_ends(pure):
    tr, tgt, _ = pure
    for text in SAMPLE_TEXTS:
        source = tr.tokenizer.encode(text, "eng_Latn")
        want = tr.generate([source], tgt, max_new_tokens=N, guard=False)[0]
        assert list(tr._stream(source, tgt, N)) == want
        assert list(tr._stream(source, tgt, 1)) == want[:1]


def _banned_on_host(seqs: np.ndarray, n: int) -> set[tuple[int, int]]:
    """(row, token) pairs that would repeat an n-gram of the row, as transformers computes them."""
    banned = set()
    length = seqs.shape[1]
    for row, seq in enumerate(seqs.tolist()):
        prefix = tuple(seq[length - n + 1 :])
        for i in range(length - n + 1):
            if tuple(seq[i : i + n - 1]) == prefix:
                banned.add((row, seq[i + n - 1]))
    return banned


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("restricted", [False, True])
def test_ngram_blocking_on_the_device_equals_the_host_rule(n, restricted):
    rng = np.random.default_rng(n)
    vocab_size = 12
    kept = np.array([0, 2, 3, 5, 7, 8, 11], dtype=np.int32) if restricted else None
    n_out = len(kept) if restricted else vocab_size
    vocab = decoding.Vocabulary(2, 2, 1, vocab_size, None if kept is None else mx.array(kept))
    for length in (1, 2, 3, 6, 15):
        seqs = rng.integers(0, 5, (6, length)).astype(np.int32)  # few distinct tokens: many repeats
        logprobs = mx.array(rng.standard_normal((6, n_out)).astype(np.float32))
        got = np.array(decoding.ban_repeated_ngrams(logprobs, mx.array(seqs), n, vocab))
        want = np.array(logprobs)
        for row, token in _banned_on_host(seqs, n):
            if kept is None:
                want[row, token] = -np.inf
            elif token in kept:
                want[row, list(kept).index(token)] = -np.inf
        np.testing.assert_array_equal(got, want)


def test_wired_limit_on_metal(monkeypatch):
    """On Metal the wired limit is the recommended working set while decoding, the old one afterwards."""
    calls = []
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    monkeypatch.setattr(mx, "device_info", lambda: {"max_recommended_working_set_size": 1000})
    monkeypatch.setattr(mx, "set_wired_limit", lambda n: calls.append(n) or 7)
    monkeypatch.setattr(mx, "synchronize", lambda *a: calls.append("sync"))
    with decoding.wired_limit():
        assert calls == [1000]
    assert calls == [1000, "sync", 7]
    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    with decoding.wired_limit():
        pass
    assert calls == [1000, "sync", 7]
