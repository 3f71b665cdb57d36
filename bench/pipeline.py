"""End-to-end latency: English text streamed in like Claude's output -> translated -> spoken.

The number a listener feels is the time from the moment a sentence's end arrives to the moment its
first audio reaches the sink, which by default takes audio at real-time playback pace (PacedSink): a
sentence cannot be heard before the one before it has finished playing. This feeds coding-assistant sentences in small pieces at a model-like
rate through the real `Pipeline` with the real Kokoro voice and the NLLB translator (a random-weight
model of the exact nllb-200-distilled-600M shape, as built by bench/translate.py: speed does not depend
on the weight values; see RandomWeightTranslator for how its meaningless output is handled), and prints
per-sentence latencies next to the origin system's (~334 ms NLLB-600M on PyTorch/Metal + ~618 ms
macOS `say` = ~950 ms per sentence, on Apple silicon).

    python bench/pipeline.py                       # translator + voice
    python bench/pipeline.py --no-translate        # Japanese text straight to the voice
    python bench/pipeline.py --nllb DIR            # another converted NLLB folder
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one
import mlx_stream_tts  # noqa: E402,F401  (fast BLAS before mlx)
from mlx_stream_tts.cpu import blas as _blas
from mlx_stream_tts.audio import NullSink
from mlx_stream_tts.pipeline import Pipeline

ENGLISH = [
    "I'll start by reading the configuration file.",
    "The tests are failing because the fixture path changed.",
    "Let me fix the import in the parser module.",
    "All 42 tests pass now.",
    "Next, I will update the documentation.",
    "The function returns None when the input is empty.",
    "I added a check for that case.",
    "Do you want me to commit these changes?",
    "The build takes about two minutes on this machine.",
    "I found three places where the cache is not cleared.",
    "This change makes the server start faster.",
    "Everything looks good to me.",
]
JAPANESE = [
    "まず設定ファイルを読みます。",
    "フィクスチャのパスが変わったため、テストが失敗しています。",
    "パーサーモジュールのインポートを修正します。",
    "四十二件のテストがすべて通りました。",
    "次に、ドキュメントを更新します。",
    "入力が空のとき、関数はNoneを返します。",
    "そのケースのチェックを追加しました。",
    "これらの変更をコミットしますか？",
    "このマシンではビルドに約二分かかります。",
    "キャッシュがクリアされない箇所を三つ見つけました。",
    "この変更でサーバーの起動が速くなります。",
    "問題はなさそうです。",
]
ORIGIN_MS = 950.0  # origin system per sentence: NLLB-600M PyTorch/Metal ~334 ms + macOS say ~618 ms


def default_nllb() -> Path:
    from mlx_stream_tts.paths import cache_root

    return cache_root() / "bench" / "nllb-600M-random" / "ours-fp32-r32k"


class RandomWeightTranslator:
    """Runs the real NLLB compute but hands the voice the known Japanese of each sentence.

    A random-weight model's output is meaningless (and trips the repetition guard), so timing its text
    through the voice would time noise. Here each sentence costs what a real translation of its length
    costs (encoder + greedy steps through the converted model on a source as long as NLLB's tokenizer
    would make it, output capped at ~1.3x the source tokens, about what a Japanese translation takes),
    and the voice speaks real Japanese.
    """

    def __init__(self, translator, reference: dict[str, str]):
        self.translator, self.reference = translator, reference

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        tok = self.translator.tokenizer
        sources = []
        for text in texts:
            # The bench model's tiny tokenizer (300 pieces) splits English into ~2.5x more tokens than
            # NLLB's 256k-piece one; give the source the length NLLB would (~1.3 tokens per word, an
            # estimate) so that encoder and decoder cost what they would on the real model.
            pieces = tok.encode_pieces(text) or [tok.unk_id]
            n = max(1, round(1.3 * len(text.split())))
            sources.append([tok.lang_id(src_lang), *(pieces * n)[:n], tok.eos_id])
        limits = [max(4, round(1.3 * len(s))) for s in sources]
        self.translator.generate(sources, tok.lang_id(tgt_lang), max_new_tokens=limits, guard=False)
        return [self.reference.get(t.strip(), "") for t in texts]


class PacedSink(NullSink):
    """Takes audio at the pace a sound card plays it.

    ``write`` returns once the audio before it has played down to ``buffer`` seconds, as a blocking
    device write does, so a sentence's first audio is counted when a listener would hear it (within
    ``buffer``), not when it was computed.
    """

    def __init__(self, buffer: float = 0.1) -> None:
        super().__init__()
        self.buffer = buffer
        self.play_end = 0.0
        self.log: list[tuple[float, float]] = []  # (when a write returned, when its audio ends playing)

    def write(self, audio) -> None:
        wait = self.play_end - self.buffer - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        super().write(audio)
        now = time.perf_counter()
        self.play_end = max(now, self.play_end) + len(audio) / (self.sample_rate or 24_000)
        self.log.append((now, self.play_end))

    def playing_until(self, t: float) -> float:
        """When the audio written up to time ``t`` ends playing (0: nothing written by then)."""
        return max((end for when, end in self.log if when <= t), default=0.0)


def run(sentences: list[str], translator, voice, lang: str, piece: int, interval: float, gap: float,
        priority_lead: float | None = 0.5, paced: bool = True) -> tuple[list, float, PacedSink | None]:
    """Feed the sentences in pieces; with ``gap`` > 0, wait that long after each sentence (an idle
    pipeline per sentence, as when the agent pauses between messages), else all in one burst.
    Returns the timings, the seconds the voice paused for the translator and the paced sink."""
    sink = PacedSink() if paced else NullSink()
    pipeline = Pipeline(translator=translator, voice=voice, sink=sink, lang=lang, history=len(sentences) + 8,
                        priority_lead=priority_lead)
    with pipeline:
        for sentence in sentences:
            text = sentence + ("\n" if gap else " ")
            for i in range(0, len(text), piece):
                pipeline.feed(text[i : i + piece])
                time.sleep(interval)
            if gap:
                time.sleep(gap)
    return [t for t in pipeline.timings() if t.first_audio is not None], pipeline.voice_paused, sink if paced else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-translate", action="store_true", help="Japanese text straight to the voice")
    parser.add_argument("--nllb", type=Path, default=None, help="converted NLLB folder (default: the bench model)")
    parser.add_argument("--piece", type=int, default=4, help="characters per fed piece")
    parser.add_argument("--rate", type=float, default=80.0, help="pieces per second (Claude streams ~50-100 tokens/s)")
    parser.add_argument("--threads", type=int, default=None, help="OpenBLAS threads (default: the package's, 2)")
    parser.add_argument("--no-pace", action="store_true",
                        help="audio goes to a sink that takes it at once (default: at real-time playback pace)")
    parser.add_argument("--parallel", action="store_true", help="translator decodes on two MLX streams")
    parser.add_argument("--priority-lead", default="0.5",
                        help="Pipeline(priority_lead=...): seconds; 'none' lets the voice run during translation")
    parser.add_argument("--backend", default="auto", choices=("auto", "mlx", "cpu"),
                        help="the models' backend (mlx: the pure MLX models; auto: the CPU accelerator where it runs)")
    parser.add_argument("--gap", type=float, default=5.0,
                        help="seconds of silence after each sentence (0: one burst; queueing then dominates)")
    args = parser.parse_args()

    if args.threads is not None:
        _blas.set_blas_threads(args.threads)
    from mlx_stream_tts.voice import Voice

    t0 = time.perf_counter()
    voice = Voice.load(backend=args.backend)
    translator = None
    if not args.no_translate:
        from mlx_stream_tts.translate import Translator

        path = args.nllb or default_nllb()
        if not path.is_dir():
            print(f"no NLLB model at {path}: run bench/translate.py first (it builds the random 600M model)")
            return 1
        translator = RandomWeightTranslator(Translator.load(path, parallel=args.parallel, backend=args.backend), dict(zip(ENGLISH, JAPANESE)))
    load_s = time.perf_counter() - t0

    sentences = JAPANESE if args.no_translate else ENGLISH
    lang = "ja" if args.no_translate else "en"
    lead = None if args.priority_lead.lower() == "none" else float(args.priority_lead)
    run(sentences[:2], translator, voice, lang, args.piece, 0.0, 0.0, lead, paced=False)  # warm-up
    timings, paused, sink = run(sentences, translator, voice, lang, args.piece, 1.0 / args.rate, args.gap, lead,
                          paced=not args.no_pace)

    print(f"machine: {sys.platform}, BLAS {_blas.active_blas}, {_blas.blas_threads()} thread(s); models loaded in "
          f"{load_s:.1f} s; backend {args.backend}: voice {voice.engine.backend}-{voice.engine.precision}, translator "
          f"{'-' if translator is None else 'mlx' if translator.translator.accelerator is None else 'cpu'}")
    print(f"fed {args.piece} chars every {1000 / args.rate:.1f} ms, {args.gap} s after each sentence; "
          f"sink: {'immediate' if args.no_pace else 'real-time paced'}; "
          f"translator: {'none' if translator is None else path}{' (parallel)' if args.parallel else ''}; "
          f"priority_lead {lead}: the voice paused {paused:.1f} s for the translator")
    print(f"{'#':>3} {'chunked->translated':>20} {'chunked->first audio':>21} {'added delay':>12}  text")
    lat, added = [], []
    prev_done = None
    for t in timings:
        tr = (t.translated - t.chunked) * 1e3 if t.translated and t.chunked else float("nan")
        fa = (t.first_audio - t.chunked) * 1e3
        lat.append(fa)
        # Added delay: from when the sentence could start playing (its end has arrived and the audio
        # before it has finished playing) to its first audio. Equals the above when playback is idle.
        ready = t.chunked
        if sink is not None and prev_done is not None:
            ready = max(ready, sink.playing_until(prev_done))
        added.append(max(0.0, t.first_audio - ready) * 1e3)
        prev_done = t.done
        print(f"{t.seq:>3} {tr:>17.0f} ms {fa:>18.0f} ms {added[-1]:>9.0f} ms  {t.source[:60]}")
    if not lat:
        print("no sentence produced audio")
        return 1

    def summary(values: list[float]) -> str:
        p90 = sorted(values)[int(0.9 * (len(values) - 1))]
        return f"first sentence {values[0]:.0f} ms, median {statistics.median(values):.0f} ms, p90 {p90:.0f} ms"

    med = statistics.median(lat)
    print(f"sentence end -> first audio: {summary(lat)} (origin system ~{ORIGIN_MS:.0f} ms: median/origin "
          f"{med / ORIGIN_MS:.2f})")
    if sink is not None:
        print(f"added delay (after the previous sentence's audio ended, if later): {summary(added)} "
              f"(median/origin {statistics.median(added) / ORIGIN_MS:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
