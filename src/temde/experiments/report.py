"""The report of `temde compare`: interval tables (printed and in report.md), results.json and compare.png.

It reads the results dict that temde.experiments.compare computed; it computes nothing itself.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

WORDS = {"ahead": "ahead", "behind": "behind", "level": "level (the interval contains 0)"}


def _ci(interval: dict[str, Any]) -> str:
    return f"[{interval['low']:+.1f}, {interval['high']:+.1f}]"


def interval_table(split: str, result: dict[str, Any]) -> str:
    """Markdown: each model's rsum (mean ± std over seeds, 95% interval), then each comparison."""
    lines = [f"### {split}: {result['images']} images, {result['captions']} captions, chance rsum "
             f"{result['chance_rsum']:.1f}", "",
             "| model | rsum (mean ± std over seeds) | 95% interval | i2t R@1 | t2i R@1 | train s/epoch |",
             "|---|---|---|---|---|---|"]
    ordered = sorted(result["models"].items(), key=lambda item: -item[1]["metrics"]["rsum"]["mean"])
    for name, model in ordered:
        m, interval = model["metrics"], model["rsum_interval"]
        lines.append(f"| {name} | {m['rsum']['mean']:.1f} ± {m['rsum']['std']:.1f} | "
                     f"[{interval['low']:.1f}, {interval['high']:.1f}] | {m['i2t_r1']['mean']:.1f} | "
                     f"{m['t2i_r1']['mean']:.1f} | {model['train_seconds_per_epoch']['mean']:.1f} |")
    lines += ["", "| comparison | rsum difference | 95% paired interval | verdict |", "|---|---|---|---|"]
    for c in result["comparisons"]:
        lines.append(f"| {c['model']} vs {c['against']} | {c['estimate']:+.1f} | {_ci(c)} | "
                     f"{WORDS[c['verdict']]} |")
    return "\n".join(lines)


def _budget(s: dict[str, Any]) -> str:
    """The training budget in words: what the settings changed from each preset's schedule."""
    parts = [f"{s[key]} {word}" for key, word in (("epochs", "epochs"), ("batch_size", "per batch"),
                                                   ("max_steps_per_epoch", "steps per epoch at most"))
             if s.get(key) is not None]
    if s.get("lr_update") is not None:
        parts.append(f"lr x0.1 every {s['lr_update']} epochs")
    return "training: " + (", ".join(parts) if parts else "each preset's schedule")


def write_compare_outputs(results: dict[str, Any], out: Path, log: Callable[[str], None]) -> None:
    from temde.data.vocab import atomic_write

    with atomic_write(out / "results.json") as handle:
        json.dump(results, handle, indent=1)
    figure = plot_compare(results, out / "compare.png")
    s = results["settings"]
    tables = [interval_table(split, result) for split, result in results["splits"].items()]
    text = "\n".join([
        "# temde compare", "",
        f"Data `{s['data']}`; hosts {', '.join(s['hosts'])}; poolings {', '.join(s['poolings'])} and the linear "
        f"dual encoder; seeds {', '.join(map(str, s['seeds']))}; {_budget(s)}. Intervals: 95% paired bootstrap "
        "over the test "
        f"images (each with its captions), {s['resamples']} resamples, seeds averaged first. A comparison says "
        "ahead or behind only when its whole interval is on one side of 0. Training seconds are wall time on "
        "this machine, noisy under load." + (
            " **One seed**: these intervals cover the sampling of the test images only, not the spread between "
            "trainings (another seed moves a model too); use several seeds before concluding." if len(s["seeds"]) == 1
            else ""), "",
        *[table + "\n" for table in tables],
        f"![rsum against training cost]({Path(figure).name})" if figure else "",
    ])
    with atomic_write(out / "report.md") as handle:
        handle.write(text + "\n")
    for table in tables:
        log(table + "\n")
    log(f"wrote {out / 'results.json'}, {out / 'report.md'}" + (f", {figure}" if figure else ""))


def plot_compare(results: dict[str, Any], path: Path) -> str | None:
    """One panel per test split: rsum (with its 95% interval) against training seconds per epoch."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(results["splits"].items())
    names = list(dict.fromkeys(name for _, result in splits for name in result["models"]))
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}  # one colour per model
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4.6), squeeze=False)
    for ax, (split, result) in zip(axes[0], splits):
        for name, model in result["models"].items():
            x = model["train_seconds_per_epoch"]["mean"]
            interval = model["rsum_interval"]
            y = interval["estimate"]
            ax.errorbar([x], [y], yerr=[[y - interval["low"]], [interval["high"] - y]], fmt="o", capsize=4,
                        color=colours[name], label=name)
        ax.axhline(result["chance_rsum"], color="grey", lw=0.8, ls=":")
        ax.annotate("chance", (0.01, result["chance_rsum"]), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(2, 3), fontsize=8, color="grey")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels of a narrow span overlap
        ax.set_xlabel("training seconds per epoch (log scale)")
        ax.set_ylabel("test rsum (max 600), 95% interval")
        ax.set_title(f"{split} ({result['images']} images)")
        ax.grid(alpha=0.3)
    # Labels beside the points overlap when two models cost the same: one legend under the panels instead.
    handles = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    columns = min(len(handles), 2 * len(splits))
    rows = -(-len(handles) // columns)
    fig.set_figheight(4.2 + 0.25 * rows)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=columns, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * rows, 1, 1))
    from temde.data.vocab import atomic_write

    with atomic_write(path, binary=True) as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return str(path)
