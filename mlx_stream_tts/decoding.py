"""The translator's decoding loops: batched greedy search, streaming greedy search and beam search.

They decode as transformers' ``generate()`` decodes M2M100 (the decoder starts from ``</s>``, the target
language code is forced as the first token; beam search with its length penalty 1 and its stopping
rule), so that both give the same tokens on the same weights. The forced language-code step runs
without its (discarded) output projection.

Two families, one per way of running a step:

- On the MLX model (:func:`greedy`, :func:`greedy_stream`, :class:`ModelRows`), written for a GPU as
  mlx-lm's ``generate.py`` is: the next step's graph is built and queued with ``mx.async_eval`` before the
  last token is read back, so the device never waits for the host. Each loop reads from the device
  only through :func:`read`, once per token: greedy reads one stop flag (the tokens once at the end),
  streaming reads the token it yields, beam search keeps its whole state as MLX arrays and reads one
  stop flag (n-gram blocking included: it runs on the device too). No ``mx.eval`` per token.
- On the CPU's C step (:func:`greedy_steps`, :func:`stream_steps`, :class:`StepRows`): one C call per
  token for every row, whose tokens and scores are host values anyway.

:func:`beam_search` runs on either through the small :class:`BeamRows` interface.

No ``mx.compile``: a step's key/value cache grows by one position per token, so a compiled step would be
traced again at every shape (mlx-lm does not compile its generation step either), and compiling the part
that keeps its shapes, each decoder layer's feed-forward block, left the pure model's 32 tokens on this
project's CPU unchanged (2652 vs 2656 ms, the 600M shape, interleaved runs, one BLAS thread): the time
is in the products.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np

if TYPE_CHECKING:  # the C step is only ever handed in by the CPU accelerator
    from .cpu.nllb_step import DecodingStep, SentenceState
    from .models.nllb import Model

Decoded = tuple[list[int], bool]  # output ids without </s>, and whether </s> ended them


def read(x: mx.array) -> Any:
    """``x`` as Python values: the one place the MLX loops wait for the device (tests count the calls)."""
    return x.tolist()


class Vocabulary:
    """The ids the loops need: the decoder's start token, ``</s>``, padding, and the token id of each
    output column (a restricted head keeps a subset of the vocabulary in its own order)."""

    def __init__(self, start: int, eos: int, pad: int, vocab_size: int, output_token_ids: mx.array | None):
        self.start, self.eos, self.pad, self.vocab_size = start, eos, pad, vocab_size
        self.output_token_ids = output_token_ids
        self._host_ids = None if output_token_ids is None else np.array(output_token_ids).tolist()
        self._columns = None  # token id -> output column, or len(output_token_ids) where there is none
        if output_token_ids is not None:
            n_out = output_token_ids.shape[0]
            self._columns = mx.full((vocab_size,), n_out, dtype=mx.int32)
            self._columns[output_token_ids] = mx.arange(n_out, dtype=mx.int32)
            mx.eval(self._columns)  # not a lazy graph of the thread that made it

    def tokens(self, columns: mx.array) -> mx.array:
        """Token ids of output columns (on the device)."""
        return columns if self.output_token_ids is None else self.output_token_ids[columns]

    def token(self, column: int) -> int:
        """The token id of one output column (on the host)."""
        return column if self._host_ids is None else self._host_ids[column]

    def columns(self, tokens: mx.array) -> mx.array:
        """Output columns of token ids (on the device); one past the last column for tokens that a
        restricted head lacks."""
        return tokens if self._columns is None else self._columns[tokens]


def collect(tokens: list[int], limit: int, eos: int) -> Decoded:
    """A row's output ids up to its limit, cut before ``</s>``, and whether ``</s>`` came."""
    tokens = tokens[:limit]
    if eos in tokens:
        return tokens[: tokens.index(eos)], True
    return tokens, False


@contextmanager
def wired_limit():
    """On Metal, keep memory wired up to the device's recommended working set while decoding, as mlx-lm's
    ``generate.wired_limit`` does (macOS may otherwise page a warm model's buffers out between
    sentences); the previous limit comes back afterwards. Nothing elsewhere. Written here because
    importing ``mlx_lm.generate`` imports transformers (~1.5 s)."""
    size = mx.device_info().get("max_recommended_working_set_size") if mx.metal.is_available() else None
    if not size:
        yield
        return
    old = mx.set_wired_limit(size)
    try:
        yield
    finally:
        mx.synchronize()
        mx.set_wired_limit(old)


# ----------------------------------------------------------------------------------- MLX model


def prepare(sources: list[list[int]], pad: int) -> tuple[mx.array, mx.array]:
    """Source ids padded to one width ``(B, S)`` and the mask of real tokens."""
    width = max(len(s) for s in sources)
    ids = np.full((len(sources), width), pad, dtype=np.int32)
    for row, s in enumerate(sources):
        ids[row, : len(s)] = s
    mask = np.arange(width)[None, :] < np.array([len(s) for s in sources])[:, None]
    return mx.array(ids), mx.array(mask)


def start(model: Model, vocab: Vocabulary, sources: list[list[int]], tgt_lang_id: int, repeat: int = 1):
    """Encode the sources (each row ``repeat`` times, for beams) and run the decoder prompt
    ``</s> tgt_lang``; returns the prompt's last hidden state, the memory, its mask and the cache."""
    ids, mask = prepare(sources, vocab.pad)
    memory = model.encode(ids, mask)
    if repeat > 1:
        memory = mx.repeat(memory, repeat, axis=0)
        mask = mx.repeat(mask, repeat, axis=0)
    cache = model.make_cache()
    prompt = mx.array([[vocab.start, tgt_lang_id]] * memory.shape[0], dtype=mx.int32)
    hidden = model.decode(prompt, memory, cache, mask)[:, -1]
    return hidden, memory, mask, cache


def _pick(model: Model, vocab: Vocabulary, hidden: mx.array) -> mx.array:
    return vocab.tokens(mx.argmax(model.logits(hidden), axis=-1).astype(mx.int32))


def greedy(model: Model, vocab: Vocabulary, sources: list[list[int]], tgt_lang_id: int,
           limits: list[int]) -> list[Decoded]:
    """Greedy decoding of a batch; row ``b`` stops at ``</s>`` or after ``limits[b]`` tokens.

    Step t+1 is queued before step t's stop flag is read, so host and device overlap (one step is
    computed in vain at the end). Rows that ended are fed padding, as ``generate()`` does.
    """
    most = max(limits)
    hidden, memory, mask, cache = start(model, vocab, sources, tgt_lang_id)
    limit = mx.array(limits, dtype=mx.int32)
    token = _pick(model, vocab, hidden)
    done = (token == vocab.eos) | (limit <= 1)
    stop = done.all()
    mx.async_eval(token, stop)
    steps = [token]
    for step in range(1, most):
        feed = mx.where(done, vocab.pad, token)[:, None]
        token = _pick(model, vocab, model.decode(feed, memory, cache, mask)[:, -1])
        done = done | (token == vocab.eos) | (limit <= step + 1)
        next_stop = done.all()
        mx.async_eval(token, next_stop)
        if read(stop):  # the step before ended every row: this one was computed in vain
            break
        steps.append(token)
        stop = next_stop
    rows = read(mx.stack(steps, axis=1))
    return [collect(row, n, vocab.eos) for row, n in zip(rows, limits)]


def greedy_stream(model: Model, vocab: Vocabulary, source: list[int], tgt_lang_id: int,
                  limit: int) -> Iterator[int]:
    """Greedy ids of one sentence as they come, without ``</s>``; at most ``limit``."""
    hidden, memory, mask, cache = start(model, vocab, [source], tgt_lang_id)
    token = _pick(model, vocab, hidden)
    mx.async_eval(token)
    for step in range(limit):
        following = None
        if step + 1 < limit:  # queue the next step, then read this one's token
            following = _pick(model, vocab, model.decode(token[:, None], memory, cache, mask)[:, -1])
            mx.async_eval(following)
        value = read(token)[0]
        if value == vocab.eos:
            return
        yield value
        token = following


# --------------------------------------------------------------------------------- beam search


class BeamRows(Protocol):
    """Rows of beams as :func:`beam_search` drives them: ``B * num_beams`` rows, beams of a sentence
    next to each other, all started from the decoder prompt."""

    def logits(self) -> mx.array:
        """The scores ``(rows, n_out)`` after the last token fed."""

    def advance(self, parents: mx.array, tokens: mx.array) -> list[mx.array]:
        """Row ``i`` continues row ``parents[i]`` with ``tokens[i]`` (both ``(rows,)`` on the device).
        Returns what to queue for evaluation (may be empty)."""


class ModelRows:
    """Beam rows on the MLX model: caches reordered and steps run on the device."""

    def __init__(self, model: Model, vocab: Vocabulary, sources: list[list[int]], tgt_lang_id: int, num_beams: int):
        self.model = model
        self.hidden, self.memory, self.mask, self.cache = start(model, vocab, sources, tgt_lang_id, num_beams)

    def logits(self) -> mx.array:
        return self.model.logits(self.hidden)

    def advance(self, parents: mx.array, tokens: mx.array) -> list[mx.array]:
        self.cache.reorder(parents)
        self.hidden = self.model.decode(tokens[:, None], self.memory, self.cache, self.mask)[:, -1]
        return [self.hidden]


class StepRows:
    """Beam rows on the C step, all rows in one call per token. A step runs when its scores are asked
    for, so a step after the last is never run; reordering copies the rows' caches."""

    def __init__(self, step: DecodingStep, model: Model, vocab: Vocabulary, sources: list[list[int]],
                 tgt_lang_id: int, num_beams: int, max_len: int):
        self.step = step
        self.rows: list[SentenceState] = []
        for source in sources:
            ids, mask = prepare([source], vocab.pad)
            first = step.start(model.encode(ids, mask), max_len)
            first.step(vocab.start, 0, logits=False)
            first.step(tgt_lang_id, 1)
            self.rows += [first] + [first.fork() for _ in range(num_beams - 1)]
        self.pos = 2
        self.pending: mx.array | None = None

    def logits(self) -> mx.array:
        if self.pending is not None:
            parents, tokens = read(self.pending)
            self.pending = None
            moves = {i: j for i, j in enumerate(parents) if i != j}
            taken = {j: self.rows[j].caches(self.pos) for j in set(moves.values())}
            for i, j in moves.items():
                self.rows[i].set_caches(taken[j])
            self.step.step_rows(self.rows, tokens, self.pos)
            self.pos += 1
        return mx.array(np.stack([row.logits for row in self.rows]))

    def advance(self, parents: mx.array, tokens: mx.array) -> list[mx.array]:
        self.pending = mx.stack([parents.astype(mx.int32), tokens.astype(mx.int32)])
        return [self.pending]


def ban_repeated_ngrams(logprobs: mx.array, seqs: mx.array, n: int, vocab: Vocabulary) -> mx.array:
    """``logprobs`` ``(R, n_out)`` with -inf at each row's tokens that would repeat one of its n-grams in
    ``seqs`` ``(R, length)`` (transformers' ``no_repeat_ngram_size``), computed on the device."""
    R, length = seqs.shape
    windows = length - n + 1  # n-grams so far: window i is seqs[i : i + n - 1], then seqs[i + n - 1]
    if windows <= 0:
        return logprobs
    match = mx.ones((R, windows), dtype=mx.bool_)
    for j in range(n - 1):  # window i's j-th token equals the j-th of the last n - 1 tokens
        match = match & (seqs[:, j : j + windows] == seqs[:, length - n + 1 + j : length - n + 2 + j])
    n_out = logprobs.shape[-1]
    columns = vocab.columns(seqs[:, n - 1 : n - 1 + windows])
    hits = mx.zeros((R, n_out + 1), dtype=mx.int32).at[mx.arange(R)[:, None], columns].add(match.astype(mx.int32))
    return mx.where(hits[:, :n_out] > 0, -mx.inf, logprobs)


def beam_search(rows: BeamRows, vocab: Vocabulary, batch: int, tgt_lang_id: int, num_beams: int,
                limits: list[int], no_repeat_ngram_size: int = 0) -> list[Decoded]:
    """Beam search as transformers' ``_beam_search`` (length_penalty 1, early_stopping False), its state
    as MLX arrays; sentence ``b`` stops at ``limits[b]`` new tokens.

    Per step the device gets the next step queued before the host reads one stop flag; the sequences
    are read once, at the end.
    """
    B, nb = batch, num_beams
    # transformers' max_length counts the decoder start token and the language code.
    most = max(limits)
    L = 2 + most + 1
    k = 2 * nb
    f32 = mx.float32
    penalty = mx.array(-1e9, dtype=f32)
    running = mx.full((B, nb, L), vocab.pad, dtype=mx.int32)
    running[:, :, 0] = vocab.start
    running[:, :, 1] = tgt_lang_id
    # After the forced language code: beam 0 holds it with log-prob 0, the other beams are dead.
    running_scores = mx.concatenate([mx.zeros((B, 1), f32), mx.full((B, nb - 1), -mx.inf, f32)], axis=1)
    finished = mx.full((B, nb, L), vocab.pad, dtype=mx.int32)
    finished_len = mx.zeros((B, nb), dtype=mx.int32)
    finished_scores = mx.full((B, nb), -1e9, dtype=f32)
    is_finished = mx.zeros((B, nb), dtype=mx.bool_)
    improvable = mx.ones((B,), dtype=mx.bool_)  # running beams may still beat the finished ones
    row_limit = mx.array(limits, dtype=mx.int32)
    top_nb = mx.arange(k) < nb
    batch_rows = mx.arange(B)[:, None]
    cur_len = 2
    while True:
        logprobs = nn.log_softmax(rows.logits().astype(f32), axis=-1)  # (B * nb, n)
        n = logprobs.shape[-1]
        if no_repeat_ngram_size:
            seqs = running[:, :, :cur_len].reshape(B * nb, cur_len)
            logprobs = ban_repeated_ngrams(logprobs, seqs, no_repeat_ngram_size, vocab)
        scores = (logprobs + running_scores.reshape(-1, 1)).reshape(B, nb * n)
        # The 2 * nb best candidates, best first, ties to the lower index (a stable sort by index first).
        cand = mx.sort(mx.argpartition(-scores, kth=k - 1, axis=-1)[:, :k], axis=-1)
        cand_scores = mx.take_along_axis(scores, cand, axis=-1)
        order = mx.argsort(-cand_scores, axis=-1)
        cand = mx.take_along_axis(cand, order, axis=-1)
        cand_scores = mx.take_along_axis(cand_scores, order, axis=-1)
        src_beam = cand // n
        tok = vocab.tokens(cand % n)
        seqs = running[batch_rows, src_beam]  # (B, k, L)
        seqs[:, :, cur_len] = tok
        # The candidate is output token number cur_len - 1: the sentence's limit stops it (with one
        # limit for the batch this is transformers' max_length criterion).
        hits = (tok == vocab.eos) | ((cur_len - 1) >= row_limit)[:, None]
        # Running beams for the next step: the best nb candidates that did not stop.
        live = cand_scores + hits.astype(f32) * penalty
        keep = mx.argsort(-live, axis=-1)[:, :nb]
        next_src = mx.take_along_axis(src_beam, keep, axis=-1)
        # Finished hypotheses: stopped candidates among the top nb, length-normalized.
        just = hits & top_nb[None, :]
        fin = cand_scores / cur_len + (~improvable)[:, None].astype(f32) * penalty + (~just).astype(f32) * penalty
        merged_scores = mx.concatenate([finished_scores, fin], axis=1)
        best = mx.argsort(-merged_scores, axis=-1)[:, :nb]
        finished = mx.concatenate([finished, seqs], axis=1)[batch_rows, best]
        finished_len = mx.take_along_axis(
            mx.concatenate([finished_len, mx.full((B, k), cur_len + 1, dtype=mx.int32)], axis=1), best, axis=-1)
        is_finished = mx.take_along_axis(mx.concatenate([is_finished, just], axis=1), best, axis=-1)
        finished_scores = mx.take_along_axis(merged_scores, best, axis=-1)
        running = seqs[batch_rows, keep]
        running_scores = mx.take_along_axis(live, keep, axis=-1)
        cur_len += 1
        best_running = running_scores[:, 0] / (cur_len - 1)
        worst = mx.where(is_finished, finished_scores.min(axis=1, keepdims=True), penalty)
        improvable = improvable & mx.any(best_running[:, None] > worst, axis=-1)
        if cur_len - 2 >= most:  # every row reached its limit: all candidates stopped
            break
        stop = ~improvable.any() | hits.all()
        parents = (next_src + batch_rows * nb).reshape(-1)
        # Queued with the next step: the finished sequences too, so that their graph does not grow.
        mx.async_eval(stop, finished, finished_len, *rows.advance(parents, running[:, :, cur_len - 1].reshape(-1)))
        if read(stop):
            break
    best_rows = read(mx.concatenate([finished_len[:, :1], finished[:, 0]], axis=1))
    return [collect(row[3 : 1 + row[0]], n, vocab.eos) for row, n in zip(best_rows, limits)]


# ------------------------------------------------------------------------------------- C step


def greedy_steps(step: DecodingStep, model: Model, vocab: Vocabulary, sources: list[list[int]],
                 tgt_lang_id: int, limits: list[int]) -> list[Decoded]:
    """Greedy decoding of sentences on the C step, all rows in one call per token (a sentence leaves the
    batch when it ends)."""
    sentences = []
    for source, limit in zip(sources, limits):
        ids, mask = prepare([source], vocab.pad)
        sentences.append(step.start(model.encode(ids, mask), limit + 1))
    step.step_rows(sentences, [vocab.start] * len(sources), 0, logits=False)
    outputs: list[list[int]] = [[] for _ in sources]
    live = list(range(len(sources)))
    feed = [tgt_lang_id] * len(sources)
    for pos in range(1, max(limits) + 1):
        columns = step.step_rows([sentences[i] for i in live], [feed[i] for i in live], pos)
        still = []
        for i, column in zip(live, columns):
            token = vocab.token(column)
            outputs[i].append(token)
            feed[i] = token
            if token != vocab.eos and len(outputs[i]) < limits[i]:
                still.append(i)
        live = still
        if not live:
            break
    return [collect(out, limit, vocab.eos) for out, limit in zip(outputs, limits)]


def stream_steps(step: DecodingStep, model: Model, vocab: Vocabulary, source: list[int], tgt_lang_id: int,
                 limit: int) -> Iterator[int]:
    """Greedy ids of one sentence on the C step as they come, without ``</s>``; at most ``limit``."""
    ids, mask = prepare([source], vocab.pad)
    sentence = step.start(model.encode(ids, mask), limit + 1)
    sentence.step(vocab.start, 0, logits=False)
    token = tgt_lang_id
    for pos in range(1, limit + 1):
        token = vocab.token(sentence.step(token, pos))
        if token == vocab.eos:
            return
        yield token
