"""`temde ablate`: T-EMDE's design choices measured inside SAF on real data, against the attention baseline.

Each variant changes one thing from the default T-EMDE pool (relaxation, sketch size, temperature, fixed
hyperplanes, shared module, output projection); every variant trains under the same seeds and budget and is scored
on the test split. The cost axis is the pool's own forward time at the host shape (measured in the same run).
Every variant is compared with a reference variant (default "temde") by the 95% paired bootstrap interval of
`temde compare` (temde.bootstrap): "ahead", "behind" or "level" is read from the interval.
"""
from __future__ import annotations

import csv
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

# name -> (pooling, pool_options, model overrides, train-setting overrides). "temde" is the default configuration.
VARIANTS: dict[str, tuple[str, dict, dict, dict]] = {
    "attention": ("attention", {}, {}, {}),
    "mean": ("mean", {}, {}, {}),
    "temde": ("temde", {}, {}, {}),
    "temde-gumbel": ("temde", {"relaxation": "gumbel"}, {}, {}),
    "temde-straight-through": ("temde", {"relaxation": "straight_through"}, {}, {}),
    "temde-bits4": ("temde", {"n_bits": 4}, {}, {}),
    "temde-bits8": ("temde", {"n_bits": 8}, {}, {}),
    "temde-parts8": ("temde", {"n_partitions": 8}, {}, {}),
    "temde-parts32": ("temde", {"n_partitions": 32}, {}, {}),
    "temde-tau0.3": ("temde", {"temperature": 0.3}, {}, {}),
    "temde-anneal": ("temde", {}, {}, {"temperature_anneal": (1.0, 0.1)}),
    "temde-fixed-planes": ("temde", {"learn_planes": False}, {}, {}),
    "temde-shared": ("temde", {}, {"shared_pool": True}, {}),
    "temde-proj": ("temde", {"out_dim": "embed"}, {}, {}),
    "temde-residual": ("temde", {"residual": True}, {}, {}),
    "temde-gate": ("temde", {"token_weights": True}, {}, {}),
    "temde-sqrt": ("temde", {"power": 0.5}, {}, {}),
    "temde-norm-weights": ("temde", {"token_weights": "norm"}, {}, {}),
    "temde-batch-stats": ("temde", {"token_stats": "batch"}, {}, {}),
    "temde-sketch-norm": ("temde", {"sketch_norm": "batch"}, {}, {}),
    "temde-mean-mix": ("temde", {"mean_weight": 0.8}, {}, {}),
    # SAF's own score alone, without the cosine of the global vectors the small presets add (global_score).
    "attention-no-global-score": ("attention", {}, {"global_score": 0.0}, {}),
    "temde-residual-no-global-score": ("temde", {"residual": True}, {"global_score": 0.0}, {}),
}


@dataclass
class AblationSettings:
    data: str
    out: str = "runs/ablate"
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    model: str = "saf-small"
    epochs: int | None = None  # default: the preset's
    word_vectors: str | None = None  # 300-d words from scratch beat GloVe 6B-50d (docs/ablations.md)
    dev_subset: int | None = None  # model selection on the whole dev split, as `temde demo`
    global_loss: float | None = None  # None: the preset's, as `temde demo` trains (saf-small: 1.0)
    device: str = "cpu"
    progress: bool = False
    force: bool = False  # start over in `out` (every run retrained) instead of reusing runs that match
    test_split: str = "test"
    reference: str = "temde"  # the variant every other one is compared with (when it is among the variants)

    def recorded(self) -> dict:
        """What decides the ablation's results, recorded in its output folder (temde.outputs)."""
        return {"data": str(Path(self.data).resolve()), "variants": self.variants, "seeds": self.seeds,
                "model": self.model, "epochs": self.epochs, "word_vectors": self.word_vectors,
                "dev_subset": self.dev_subset, "global_loss": self.resolved_global_loss(),
                "test_split": self.test_split}

    def resolved_global_loss(self) -> float:
        if self.global_loss is not None:
            return self.global_loss
        from temde.models.registry import list_models, load_preset

        return float(load_preset(self.model)["train"].get("global_loss", 0.0)) if self.model in list_models() else 0.0


def older_ablation(folder: Path) -> dict | None:
    """An ablation folder written before output records existed: recognised, its settings unknown."""
    return {} if (folder / "ablation.csv").is_file() or (folder / "runs").is_dir() else None


def pool_options_for(name: str, embed_size: int) -> dict:
    options = dict(VARIANTS[name][1])
    return {k: (embed_size if v == "embed" else v) for k, v in options.items()}


def pool_forward_ms(name: str, embed_size: int, device: str, batch: int = 128, tokens: int = 49) -> float:
    """The variant's pool alone, forward, at the host's shape (B images x 49 regions x embed)."""
    from temde.bench.timing import time_call
    from temde.pooling import make_pool

    pooling = VARIANTS[name][0]
    options = pool_options_for(name, embed_size)
    if pooling == "attention":
        options["batchnorm"] = True
    pool = make_pool(pooling, embed_size, **options).to(device).eval()
    x = torch.randn(batch, tokens, embed_size, device=device)
    mask = torch.ones(batch, tokens, dtype=torch.bool, device=device)
    with torch.no_grad():
        return 1e3 * time_call(lambda: pool(x, mask), torch.device(device), repeats=10, warmup=3)


def run_variant(name: str, seed: int, s: AblationSettings, fresh: bool = False) -> dict:
    from temde.evaluation import metrics_from_ranks
    from temde.experiments.compare import score_run
    from temde.models import load_preset
    from temde.training.loop import TrainSettings, train

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
    pooling, _, model_overrides, train_overrides = VARIANTS[name]
    embed = load_preset(s.model)["model"]["embed_size"]
    run_dir = Path(s.out) / "runs" / f"{name}-seed{seed}"
    settings = TrainSettings(
        data=s.data, out=str(run_dir), model=s.model, pooling=pooling, pool_options=pool_options_for(name, embed),
        model_overrides=dict(model_overrides), epochs=s.epochs, seed=seed, device=s.device,
        resume=(run_dir / "last.pt").is_file() and not fresh, force=fresh, progress=s.progress, word_vectors=s.word_vectors,
        dev_subset=s.dev_subset, global_loss=s.resolved_global_loss(), validate_data=False, **train_overrides)
    result = train(settings)
    ranks = score_run(run_dir, Path(s.data), [s.test_split], s.device)[s.test_split]  # cached beside best.pt
    metrics = metrics_from_ranks(ranks.i2t, ranks.t2i)
    return {"variant": name, "seed": seed, "test_rsum": metrics["rsum"], "best_dev_rsum": result["best_rsum"],
            "train_seconds": result["train_seconds"], **{k: metrics[k] for k in ("i2t_r1", "t2i_r1")}}


def run_ablation(s: AblationSettings, log: Callable[[str], None] = print) -> list[dict]:
    from temde.models import load_preset

    from temde.outputs import claim_folder

    embed = load_preset(s.model)["model"]["embed_size"]
    out = Path(s.out)
    claim = claim_folder(out, "ablate", s.recorded(), force=s.force, legacy=older_ablation)
    if claim.state == "same":
        log(f"{out}: an ablation with the same settings is there; finished runs are reused, unfinished ones resume")
    rows = []
    for name in s.variants:
        cost = pool_forward_ms(name, embed, s.device)
        for seed in s.seeds:
            start = time.perf_counter()
            row = run_variant(name, seed, s, fresh=claim.state == "replace")
            row["pool_forward_ms"] = cost
            rows.append(row)
            log(f"{name:24s} seed {seed}: test rsum {row['test_rsum']:6.1f}  (dev {row['best_dev_rsum']:6.1f}, "
                f"{time.perf_counter() - start:.0f} s)")
            write_csv(rows, out / "ablation.csv")  # after every run: a long ablation can be stopped and read
    plot_ablation(rows, out / "ablation.png")
    write_intervals(out, s, log)
    return rows


def variant_intervals(out: Path, variants: list[str], seeds: list[int], data: str, split: str, reference: str,
                      resamples: int = 2000) -> dict:
    """Per variant the 95% bootstrap interval of its seed-averaged test rsum, and against `reference` (when it
    is a variant) the paired interval of the difference: the machinery of `temde compare`."""
    from temde.bootstrap import rsum_difference, rsum_interval
    from temde.data import load_split
    from temde.experiments.compare import load_ranks

    layout = load_split(data, split, validate=False).layout
    ranks = {name: [load_ranks(out / "runs" / f"{name}-seed{seed}" / f"ranks_{split}.npz") for seed in seeds]
             for name in variants}
    result = {"split": split, "reference": reference if reference in variants else None, "variants": {}}
    for name in variants:
        entry = {"rsum_interval": rsum_interval(ranks[name], layout, resamples).to_dict()}
        if name != reference and reference in variants:
            entry["against_reference"] = rsum_difference(ranks[reference], ranks[name], layout, resamples).to_dict()
        result["variants"][name] = entry
    return result


def write_intervals(out: Path, s: AblationSettings, log: Callable[[str], None]) -> dict:
    import json

    from temde.data.vocab import atomic_write

    intervals = variant_intervals(out, s.variants, s.seeds, s.data, s.test_split, s.reference)
    with atomic_write(out / "intervals.json") as handle:
        json.dump(intervals, handle, indent=1)
    log(format_intervals(intervals))
    return intervals


def format_intervals(intervals: dict) -> str:
    """Markdown: each variant's rsum interval; the reference minus each variant with its verdict."""
    reference = intervals["reference"]
    lines = ["| variant | rsum 95% interval | " + (f"{reference} minus variant | 95% paired interval | verdict for "
                                                   f"{reference} |" if reference else ""),
             "|---|---|" + ("---|---|---|" if reference else "")]
    for name, entry in intervals["variants"].items():
        ci = entry["rsum_interval"]
        row = f"| {name} | {ci['estimate']:.1f} [{ci['low']:.1f}, {ci['high']:.1f}] |"
        if reference:
            d = entry.get("against_reference")
            row += (f" {d['estimate']:+.1f} | [{d['low']:+.1f}, {d['high']:+.1f}] | {d['verdict']} |" if d
                    else " (reference) | | |")
        lines.append(row)
    return "\n".join(lines)


def summarise(rows: list[dict]) -> list[dict]:
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["variant"], []).append(row)
    summary = []
    for name, group in by.items():
        values = [r["test_rsum"] for r in group]
        summary.append({"variant": name, "seeds": len(group), "rsum_mean": statistics.fmean(values),
                        "rsum_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "pool_forward_ms": group[0]["pool_forward_ms"],
                        "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in group)})
    return summary


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (v if k == "variant" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def merge(folders: list[str], out: Path, force: bool = False) -> list[dict]:
    """Combine the ablation.csv of runs split over several processes into one CSV + PNG."""
    from temde.outputs import claim_folder

    rows = [row for folder in folders for row in read_csv(Path(folder) / "ablation.csv")]
    claim_folder(out, "ablate", {"merge": [str(Path(f).resolve()) for f in folders]}, force=force,
                 legacy=older_ablation)
    write_csv(rows, out / "ablation.csv")
    plot_ablation(rows, out / "ablation.png")
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def format_summary(rows: list[dict]) -> str:
    lines = ["| variant | seeds | test rsum (mean ± std) | pool fwd ms | train s |", "|---|---|---|---|---|"]
    for r in sorted(summarise(rows), key=lambda r: -r["rsum_mean"]):
        lines.append(f"| {r['variant']} | {r['seeds']} | {r['rsum_mean']:.1f} ± {r['rsum_std']:.1f} | "
                     f"{r['pool_forward_ms']:.2f} | {r['train_seconds_mean']:.0f} |")
    return "\n".join(lines)


def plot_ablation(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in summarise(rows):
        colour = "tab:blue" if r["variant"] == "attention" else "tab:gray" if r["variant"] == "mean" else "tab:orange"
        ax.errorbar(r["pool_forward_ms"], r["rsum_mean"], yerr=r["rsum_std"], fmt="o", color=colour, capsize=3)
        ax.annotate(r["variant"], (r["pool_forward_ms"], r["rsum_mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set(xlabel="pool forward time, ms (B=128, 49 tokens, log scale)", ylabel="test rsum (mean ± std over seeds)",
           title="T-EMDE ablation inside SAF on the default data")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
