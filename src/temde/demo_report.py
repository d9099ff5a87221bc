"""Figures and the markdown report of `temde demo`: training curves, retrieval examples, sketch histograms."""
from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path
from typing import Callable

import numpy as np
import torch

POOLING_COLOURS = {"attention": "tab:blue", "temde": "tab:orange", "mha": "tab:green", "mean": "tab:gray"}


def difference_note(a: dict, b: dict) -> str:
    """'difference +D ± SE, within noise | beyond noise' for two mean_std summaries (a minus b).

    SE is the standard error of a difference of two independent means over seeds; |D| < 2 SE reads "within noise".
    With a single seed on either side there is no spread to judge by, and the note says so."""
    diff = a["mean"] - b["mean"]
    n_a, n_b = len(a.get("values", [])), len(b.get("values", []))
    if n_a < 2 or n_b < 2:
        return f"difference {diff:+.1f}; one seed, noise not estimated"
    se = math.sqrt(a["std"] ** 2 / n_a + b["std"] ** 2 / n_b)
    return f"difference {diff:+.1f} ± {se:.1f}, {'within' if abs(diff) < 2 * se else 'beyond'} noise"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    _pyplot().close(fig)
    os.replace(tmp, path)
    return path.name


def plot_curves(results: dict, path: Path) -> str:
    """Dev rsum and training loss per epoch, every seed of every pooling."""
    plt = _pyplot()
    fig, (ax_rsum, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for pooling in results["settings"]["poolings"]:
        colour = POOLING_COLOURS.get(pooling)
        for i, run in enumerate(results["variants"][pooling]["runs"]):
            epochs = [h["epoch"] for h in run["history"]]
            label = f"SAF + {pooling}" if i == 0 else None
            ax_rsum.plot(epochs, [h["rsum"] for h in run["history"]], color=colour, alpha=0.8, label=label)
            ax_loss.plot(epochs, [h["train_loss"] for h in run["history"]], color=colour, alpha=0.8, label=label)
    ax_rsum.axhline(results["data"]["chance_rsum"], color="black", linestyle=":", label="chance")
    ax_rsum.set(xlabel="epoch", ylabel="dev rsum", title="dev rsum per epoch (one line per seed)")
    ax_loss.set(xlabel="epoch", ylabel="mean triplet loss per batch", title="training loss")
    for ax in (ax_rsum, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _image_paths(manifest: dict | None, split: str) -> list[Path] | None:
    if not manifest or "images_root" not in manifest:
        return None
    root = Path(manifest["images_root"])
    paths = [root / name for name in manifest["splits"][split]["images"]]
    return paths if all(p.is_file() for p in paths[:5]) else None


def _thumbnail(path: Path, size: int = 160) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        image = image.convert("RGBA")
        image.thumbnail((size, size))
        canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
        canvas.alpha_composite(image, ((size - image.width) // 2, (size - image.height) // 2))
        return np.asarray(canvas.convert("RGB"))


def plot_examples(sims: np.ndarray, captions: list[str], k: int, image_paths: list[Path] | None, path: Path,
                  n_queries: int = 3, top: int = 5, seed: int = 0) -> str:
    """Text->image: a query caption and its top images; image->text: a query image and its top captions.
    True matches are framed in green."""
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    n_images = sims.shape[0]
    caption_queries = rng.choice(len(captions), size=min(n_queries, len(captions)), replace=False)
    image_queries = rng.choice(n_images, size=min(n_queries, n_images), replace=False)
    fig, axes = plt.subplots(2 * n_queries, top + 1, figsize=(2.1 * (top + 1), 2.3 * 2 * n_queries))

    def show_image(ax, index, good):
        if image_paths is not None:
            ax.imshow(_thumbnail(image_paths[index]))
        else:
            ax.text(0.5, 0.5, f"image {index}", ha="center", va="center")
        for spine in ax.spines.values():
            spine.set_edgecolor("green" if good else "lightgray")
            spine.set_linewidth(4 if good else 1)
        ax.set_xticks([])
        ax.set_yticks([])

    for row, q in enumerate(caption_queries):
        ax = axes[row, 0]
        ax.axis("off")
        ax.text(0, 0.5, "\n".join(textwrap.wrap(f"“{captions[q]}”", 22)[:7]), va="center", fontsize=8)
        ax.set_title("caption query", fontsize=8)
        ranked = np.argsort(-sims[:, q], kind="stable")[:top]
        for col, index in enumerate(ranked, start=1):
            show_image(axes[row, col], index, index == q // k)
            axes[row, col].set_title(f"#{col}", fontsize=8)
    for offset, q in enumerate(image_queries):
        row = n_queries + offset
        show_image(axes[row, 0], q, False)
        axes[row, 0].set_title("image query", fontsize=8)
        ranked = np.argsort(-sims[q], kind="stable")[:top]
        for col, index in enumerate(ranked, start=1):
            ax = axes[row, col]
            ax.axis("off")
            good = index // k == q
            ax.text(0, 0.5, "\n".join(textwrap.wrap(captions[index], 20)[:7]), va="center", fontsize=7,
                    color="green" if good else "black", fontweight="bold" if good else "normal")
            ax.set_title(f"#{col}" + (" ✓" if good else ""), fontsize=8)
    fig.suptitle("SAF + T-EMDE on the test split: caption → top images (rows 1–3), image → top captions "
                 "(rows 4–6); green = the true match", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def plot_sketches(model, img, cap, k: int, captions: list[str], image_paths: list[Path] | None, path: Path,
                  index: int = 0) -> str | None:
    """The T-EMDE histogram [partitions x buckets] of one test image beside that of its caption."""
    from temde.sketch import TEMDE

    image_pool, caption_pool = model.pools
    if not isinstance(image_pool, TEMDE):
        return None
    image_hist = image_pool.histogram(img.local[index:index + 1], img.mask[index:index + 1])[0]
    c = index * k
    caption_hist = caption_pool.histogram(cap.local[c:c + 1], cap.mask[c:c + 1])[0]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 3, 3]})
    if image_paths is not None:
        axes[0].imshow(_thumbnail(image_paths[index]))
    axes[0].axis("off")
    axes[0].set_title("\n".join(textwrap.wrap(captions[c], 28)[:4]), fontsize=8)
    for ax, hist, title in ((axes[1], image_hist, f"image: {int(img.mask[index].sum())} regions"),
                            (axes[2], caption_hist, f"caption: {int(cap.mask[c].sum())} words")):
        shown = ax.imshow(hist.numpy(), aspect="auto", cmap="viridis")
        ax.set(xlabel="bucket (2^K per partitioning)", ylabel="partitioning", title=f"T-EMDE sketch of the {title}")
        fig.colorbar(shown, ax=ax, fraction=0.04)
    shared = image_pool is caption_pool
    fig.suptitle("soft bucket counts; " + ("one shared partitioning for both modalities" if shared else
                 "each modality has its own learned partitioning"), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def write_figures(results: dict, data_dir: Path, out: Path, device: str, log: Callable[[str], None]) -> list[str]:
    from temde.data import load_split
    from temde.demo import evaluate_checkpoint, read_manifest

    figures = [plot_curves(results, out / "curves.png")]
    manifest = read_manifest(data_dir)
    test = load_split(data_dir, "test", validate=False)
    paths = _image_paths(manifest, "test")
    pooling = "temde" if "temde" in results["variants"] else results["settings"]["poolings"][0]
    first = results["variants"][pooling]["runs"][0]
    _, sims, (model, _, img, cap) = evaluate_checkpoint(Path(first["run_dir"]) / "best.pt", data_dir, "test", device)
    figures.append(plot_examples(sims, test.captions, test.captions_per_image, paths, out / "examples.png"))
    sketch = plot_sketches(model, img.to("cpu"), cap.to("cpu"), test.captions_per_image, test.captions, paths,
                           out / "sketch.png")
    if sketch:
        figures.append(sketch)
    log(f"figures: {', '.join(figures)}")
    return figures


def _recipe_lines(results: dict) -> list[str]:
    """The score and the optimiser of the trained models, read from their saved configs (same for every pooling)."""
    trained = [v for v in results.get("variants", {}).values() if "model" in v]
    if not trained:
        return []
    model, train = trained[0]["model"], trained[0]["train"]
    weight = model.get("global_score", 0.0)
    score = (f"SAF's score + {weight:g} × cosine(image global, caption global) (`global_score`)" if weight
             else "SAF's score")
    return [f"Score: {score}; learning rate {train['learning_rate']:g}, {train['epochs']} epochs, "
            f"batch {train['batch_size']}."]


def write_report(results: dict, path: Path) -> None:
    from temde.demo import format_table

    s, d, m = results["settings"], results["data"], results["machine"]
    poolings = s["poolings"]
    lines = [
        "# temde demo report",
        "",
        f"Command: `temde demo{' --quick' if s['quick'] else ''}{' --data ' + s['data'] if s['data'] else ''} "
        f"--out {s['out']}` — {m['date']}, "
        f"{m.get('gpu', m['cpu'])}, {m['threads']} torch threads, torch {m['torch']}, device `{m['device']}`.",
        "",
        f"Data: `{d['dir']}` — {d['train_images']} train / {d['dev_images']} dev / {d['test_images']} test images, "
        f"{d['captions_per_image']} caption(s) per image (leakage-free grouped split).",
        f"Model: `{s['model']}` (SAF host), {s['epochs'] or 'preset'} epochs, word vectors: {s['word_vectors'] or 'learned from scratch'}, "
        f"seeds {s['seeds']} (mean ± std over seeds). Best epoch chosen by dev rsum; figures below are on test.",
        f"Pool options: {json.dumps(s.get('pool_options') or {})} (`temde demo --temde-option KEY=VALUE` changes them).",
        *_recipe_lines(results),
        "",
        format_table(results),
        "",
        f"Chance level: rsum {d['chance_rsum']:.1f} (random scores, {d['test_images']} images). "
        "The linear dual encoder (mean-pooled regions + bag of words, cosine, the same hinge loss over all negatives and the same split) is the "
        "floor: the gap to it is what SAF's local alignment and the global pooling add.",
        "",
    ]
    if "attention" in poolings and "temde" in poolings:
        a, t = results["attention"]["rsum"], results["temde"]["rsum"]
        verdict = "≥" if t["mean"] >= a["mean"] else "<"
        lines += [f"T-EMDE rsum {t['mean']:.1f} {verdict} attention rsum {a['mean']:.1f} "
                  f"({difference_note(t, a)}"
                  + (f"; seed std {t['std']:.1f} / {a['std']:.1f}" if len(t.get("values", [])) > 1 else "")
                  + ").", ""]
    floor_rsum = results["linear_dual_encoder"]["rsum"]
    floor = floor_rsum["mean"]
    relation = [f"{p} {results[p]['rsum']['mean']:.1f} {'>' if results[p]['rsum']['mean'] > floor else '≤'} "
                f"{floor:.1f} ({difference_note(results[p]['rsum'], floor_rsum)})" for p in poolings]
    lines += ["Against the linear dual encoder: " + "; ".join(relation) + ".",
              "A difference is called within noise when it is smaller than twice its standard error "
              "(sqrt(std_a² / n_a + std_b² / n_b) over the seeds).", ""]
    lines += ["Latency: `ms/query` is one query scored against the whole pre-encoded test gallery "
              "(text→image: one caption vs every image; image→text: one image vs every caption).", ""]
    for name in results.get("figures", []):
        lines += [f"![{name}]({name})", ""]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
