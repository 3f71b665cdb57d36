"""Timelines of a ``bench/e2e.py`` run: every sentence, ours against the peer, on one time axis.

    python bench/e2e_plot.py bench/e2e.json --out bench/e2e.png

For each capture two panels share the time axis (seconds after the first text piece): ours above, the
peer below. Each sentence is one row of four lanes: its text arriving (the slices as dots, its end as a
black tick), translation, synthesis, and playback (each played chunk; a red dot at the first audible
sample, a hollow diamond where an engine that took no time would have started it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import SIDES, instant_starts  # noqa: E402

LANES = [  # (name, offset from the row's centre, colour)
    ("text", 0.3, "0.6"),
    ("translation", 0.1, "tab:blue"),
    ("synthesis", -0.1, "tab:orange"),
    ("playback", -0.3, "tab:green"),
]
LANE_HEIGHT = 0.17


def _label(sentence: dict, width: int = 42) -> str:
    text = " ".join(sentence["source"].split())
    return f"{sentence['seq']}: {text if len(text) <= width else text[: width - 1] + '…'}"


def draw_side(ax, run: dict, title: str) -> None:
    """One side's sentences of one capture, a row each (the first at the top)."""
    sentences = run["sentences"]
    lane = {name: (offset, colour) for name, offset, colour in LANES}

    def bar(y: float, name: str, start, end) -> None:
        if start is None or end is None:
            return
        offset, colour = lane[name]
        ax.broken_barh([(start, max(end - start, 0.01))], (y + offset - LANE_HEIGHT / 2, LANE_HEIGHT),
                       facecolors=colour)

    spoken = [s for s in sentences if s["chunks"]]
    ideal = dict(zip((s["seq"] for s in spoken),
                     instant_starts([s["end"] for s in spoken], [s["audio_s"] for s in spoken])))
    for row, s in enumerate(sentences):
        y = -row
        bar(y, "text", s["fed"], s["end"])
        if s["pieces"]:
            ax.plot(s["pieces"], [y + lane["text"][0]] * len(s["pieces"]), "|", color="0.25", markersize=4)
        if s["end"] is not None:
            ax.plot([s["end"]], [y + lane["text"][0]], "|", color="black", markersize=11, markeredgewidth=2)
        bar(y, "translation", s["translate_start"], s["translate_end"])
        bar(y, "synthesis", s["synth_start"], s["synth_end"])
        for start, end in s["chunks"]:
            bar(y, "playback", start, end)
        if s["audible"] is not None:
            ax.plot([s["audible"]], [y + lane["playback"][0]], "o", color="tab:red", markersize=4)
        if s["seq"] in ideal:
            ax.plot([ideal[s["seq"]]], [y + lane["playback"][0]], "D", markerfacecolor="none",
                    markeredgecolor="black", markersize=5)
    ax.set_yticks([-row for row in range(len(sentences))], [_label(s) for s in sentences], fontsize=7)
    ax.set_ylim(-len(sentences) + 0.4, 0.6)
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)


def plot(run: dict, out: Path, scenario: str = "stream") -> Path:
    """Draw every capture of ``scenario`` in ``run`` (the JSON of bench/e2e.py) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    result = run["scenarios"].get(scenario)
    if not result:
        raise ValueError(f"the run has no {scenario!r} scenario (it has: {', '.join(run['scenarios']) or 'none'})")
    sides = [s for s in SIDES if s in result]
    panels = []  # (capture index, side)
    for i in range(len(result[sides[0]]["captures"])):
        panels += [(i, side) for side in sides]
    heights = [max(2, len(result[side]["captures"][i]["sentences"])) for i, side in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 0.5 * sum(heights) + 1.5 * len(panels)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    axes = axes[:, 0]
    for ax, (i, side) in zip(axes, panels):
        capture = result[side]["captures"][i]
        draw_side(ax, capture, f"{side}: {Path(capture['capture']).name} — {result[side]['engine']}")
    # Each capture's pair shares one time axis, so that ours and the peer line up.
    for i in range(0, len(panels), len(sides)):
        pair = axes[i : i + len(sides)]
        right = max(ax.get_xlim()[1] for ax in pair)
        for ax in pair:
            ax.set_xlim(-0.2, right)
    axes[-1].set_xlabel("seconds after the first text piece")
    handles = [Patch(color=colour, label=name) for name, _, colour in LANES]
    handles += [Line2D([], [], marker="|", color="black", linestyle="none", markersize=10, label="sentence end"),
                Line2D([], [], marker="o", color="tab:red", linestyle="none", label="first audible sample"),
                Line2D([], [], marker="D", markerfacecolor="none", markeredgecolor="black", linestyle="none",
                       label="start with an instant engine")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{run.get('tokens_per_s', '?')} tokens/s x {run.get('chars_per_token', '?')} chars per token",
                 fontsize=9, y=0.995, x=0.99, ha="right")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the JSON written by bench/e2e.py")
    parser.add_argument("--out", type=Path, default=Path("bench/e2e.png"), help="the PNG to write")
    parser.add_argument("--scenario", default="stream", help="which scenario of the run to draw")
    args = parser.parse_args(argv)
    try:
        run = json.loads(args.run.read_text())
    except (OSError, json.JSONDecodeError) as err:
        parser.error(f"cannot read {args.run}: {err}")
    try:
        print(plot(run, args.out, args.scenario))
    except (KeyError, ValueError) as err:
        parser.error(f"{args.run} is not a run of bench/e2e.py ({err})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
