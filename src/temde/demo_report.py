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

# Said wherever latencies are printed: they are single wall-clock measurements on a machine that may be busy.
LATENCY_NOISE = ("Times are wall-clock on the machine above, which may have been running other work: read "
                 "differences under ~1.5x as noise unless they repeat.")

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


POOLING_NAMES = {"attention": "attention", "temde": "T-EMDE", "mha": "multi-head attention", "mean": "mean"}


def _lr_decays(history: list[dict]) -> list[float]:
    """x positions (between epochs) where the learning rate dropped."""
    return [h["epoch"] - 0.5 for previous, h in zip(history, history[1:]) if h["lr"] < previous["lr"]]


def plot_curves(results: dict, path: Path) -> str:
    """Dev rsum and training loss per epoch, every seed of every pooling; the best epoch of each run (the one its
    best.pt holds) and the learning-rate decays marked; the loss on a log axis, so the epochs after the first stay
    readable."""
    plt = _pyplot()
    fig, (ax_rsum, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.4))
    decays = set()
    for pooling in results["settings"]["poolings"]:
        colour = POOLING_COLOURS.get(pooling)
        for i, run in enumerate(results["variants"][pooling]["runs"]):
            history = run["history"]
            epochs = [h["epoch"] for h in history]
            rsums = [h["rsum"] for h in history]
            label = f"SAF + {POOLING_NAMES.get(pooling, pooling)}" if i == 0 else None
            ax_rsum.plot(epochs, rsums, color=colour, alpha=0.8, label=label)
            best = int(np.argmax(rsums))  # the first maximum: the loop keeps a later epoch only if strictly better
            ax_rsum.plot(epochs[best], rsums[best], marker="*", markersize=13, color=colour,
                         markeredgecolor="black", linestyle="none")
            ax_loss.plot(epochs, [h["train_loss"] for h in history], color=colour, alpha=0.8, label=label)
            decays.update(_lr_decays(history))
    ax_rsum.plot([], [], marker="*", markersize=13, color="white", markeredgecolor="black", linestyle="none",
                 label="best epoch (kept in best.pt)")
    chance = results["data"]["chance_rsum"]
    ax_rsum.axhline(chance, color="black", linestyle=":", label=f"chance ({chance:.1f})")
    for n, x in enumerate(sorted(decays)):
        for ax in (ax_rsum, ax_loss):
            ax.axvline(x, color="gray", linestyle="--", linewidth=1, label="lr × 0.1" if n == 0 else None)
    ax_rsum.set(xlabel="epoch", ylabel="dev rsum (max 600)", title="dev rsum per epoch (one line per seed)")
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="mean triplet loss per batch (log scale)", title="training loss")
    # Curves rise to the top and the chance line lies at the bottom: the legend goes in between.
    for ax, where in ((ax_rsum, "center right"), (ax_loss, "upper right")):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=9, loc=where)
        ax.xaxis.get_major_locator().set_params(integer=True)
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


def _wrapped(text: str, width: int, lines: int) -> str:
    parts = textwrap.wrap(text, width)
    return "\n".join(parts[:lines]) + (" …" if len(parts) > lines else "")


def plot_examples(sims: dict[str, np.ndarray], captions: list[str], k: int, image_paths: list[Path] | None,
                  path: Path, n_queries: int = 2, top: int = 5, seed: int = 0) -> str:
    """The same random test queries answered by each pooling's model (one row per pooling): a caption and its top
    images, an image (with its true caption) and its top captions. True matches are framed / written in green."""
    from matplotlib.gridspec import GridSpec

    plt = _pyplot()
    poolings = list(sims)
    rng = np.random.default_rng(seed)
    n_images = next(iter(sims.values())).shape[0]
    caption_queries = rng.choice(len(captions), size=min(n_queries, len(captions)), replace=False)
    image_queries = rng.choice(n_images, size=min(n_queries, n_images), replace=False)
    queries = [("text", int(q)) for q in caption_queries] + [("image", int(q)) for q in image_queries]
    rows = len(queries) * len(poolings)
    fig = plt.figure(figsize=(2.5 * (top + 1) + 0.6, 2.15 * rows + 1.0))
    grid = GridSpec(rows, top + 1, figure=fig, hspace=0.55, wspace=0.12)

    def show_image(ax, index, good):
        if image_paths is not None:
            ax.imshow(_thumbnail(image_paths[index]))
        else:
            ax.text(0.5, 0.5, f"image {index}", ha="center", va="center", fontsize=10)
        for spine in ax.spines.values():
            spine.set_edgecolor("green" if good else "lightgray")
            spine.set_linewidth(5 if good else 1)
        ax.set_xticks([])
        ax.set_yticks([])

    for number, (kind, q) in enumerate(queries):
        first = number * len(poolings)
        query_ax = fig.add_subplot(grid[first:first + len(poolings), 0])
        if kind == "text":
            query_ax.axis("off")
            query_ax.text(0.0, 0.5, _wrapped(f"“{captions[q]}”", 24, 9), va="center", fontsize=10)
            query_ax.set_title("caption query", fontsize=10, fontweight="bold")
        else:
            show_image(query_ax, q, False)
            query_ax.set_title("image query", fontsize=10, fontweight="bold")
            query_ax.set_xlabel("true caption:\n" + _wrapped(captions[q * k], 26, 3), fontsize=9, color="green")
        for offset, pooling in enumerate(poolings):
            row = first + offset
            scores = sims[pooling]
            column = scores[:, q] if kind == "text" else scores[q]
            ranked = np.argsort(-column, kind="stable")[:top]
            # Where the true match ranks, ties counted against it (as evaluation does): often below the top 5.
            truth = [q // k] if kind == "text" else list(range(q * k, (q + 1) * k))
            true_rank = min(int((column >= column[t]).sum()) for t in truth)
            for col, index in enumerate(ranked, start=1):
                ax = fig.add_subplot(grid[row, col])
                if kind == "text":
                    good = index == q // k
                    show_image(ax, index, good)
                else:
                    good = index // k == q
                    ax.set_xticks([])
                    ax.set_yticks([])
                    for spine in ax.spines.values():
                        spine.set_edgecolor("green" if good else "lightgray")
                        spine.set_linewidth(3 if good else 1)
                    ax.text(0.05, 0.5, _wrapped(captions[index], 22, 6), va="center", fontsize=9,
                            color="green" if good else "black", fontweight="bold" if good else "normal",
                            transform=ax.transAxes)
                ax.set_title(f"#{col}" + (" ✓ true match" if good else ""), fontsize=9,
                             color="green" if good else "black")
                if col == 1:
                    ax.set_ylabel(f"SAF + {POOLING_NAMES.get(pooling, pooling)}\ntrue match: #{true_rank}",
                                  fontsize=9)
    names = " and ".join(POOLING_NAMES.get(p, p) for p in poolings)
    fig.suptitle(f"Test-split queries drawn at random (seed {seed}), each answered by SAF with {names} pooling "
                 f"(first seed's models)\none row per pooling; green = the true match", fontsize=11)
    fig.subplots_adjust(left=0.05, right=0.99, top=1 - 1.1 / fig.get_figheight(), bottom=0.04)
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
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), gridspec_kw={"width_ratios": [1, 3, 3]})
    if image_paths is not None:
        axes[0].imshow(_thumbnail(image_paths[index]))
    axes[0].axis("off")
    axes[0].set_title("\n".join(textwrap.wrap(captions[c], 28)[:4]), fontsize=10)
    n_bits = image_pool.n_bits
    for ax, hist, title in ((axes[1], image_hist, f"image: {int(img.mask[index].sum())} regions"),
                            (axes[2], caption_hist, f"caption: {int(cap.mask[c].sum())} tokens")):
        shown = ax.imshow(hist.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set(xlabel=f"bucket ($2^K$ = $2^{{{n_bits}}}$ = {hist.shape[1]} per partitioning)",
               ylabel=f"partitioning (N = {hist.shape[0]})", title=f"T-EMDE sketch of the {title}")
        bar = fig.colorbar(shown, ax=ax, fraction=0.04)
        bar.set_label("tokens in the bucket (soft count)")
    shared = image_pool is caption_pool
    fig.suptitle("Each row cuts the token space into $2^K$ buckets with K learned hyperplanes; a cell counts the "
                 "tokens that fall in it (softly), so a row sums to the number of tokens.\nLook for: the image's "
                 "many regions pile up in a few buckets, the caption's few tokens light one cell each; "
                 + ("one partitioning is shared by both modalities." if shared else
                    "each modality has its own hyperplanes, so compare images with images, not cell by cell."),
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write_figures(results: dict, data_dir: Path, out: Path, device: str, log: Callable[[str], None]) -> list[str]:
    from temde.data import load_split
    from temde.demo import evaluate_checkpoint, read_manifest

    figures = [plot_curves(results, out / "curves.png")]
    manifest = read_manifest(data_dir)
    test = load_split(data_dir, "test", validate=False)
    paths = _image_paths(manifest, "test")
    sims, sketch_inputs = {}, None
    for pooling in results["settings"]["poolings"]:  # each pooling's first-seed model answers the same queries
        first = results["variants"][pooling]["runs"][0]
        _, sims[pooling], (model, _, img, cap) = evaluate_checkpoint(Path(first["run_dir"]) / "best.pt", data_dir,
                                                                     "test", device)
        if pooling == "temde":
            sketch_inputs = (model, img.to("cpu"), cap.to("cpu"))
    figures.append(plot_examples(sims, test.captions, test.captions_per_image, paths, out / "examples.png"))
    if sketch_inputs is not None:
        sketch = plot_sketches(*sketch_inputs, test.captions_per_image, test.captions, paths, out / "sketch.png")
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
    if len(s["seeds"]) < 2:
        lines += ["One seed: nothing here separates a real difference from the spread between seeds (several rsum "
                  "points on a few hundred test images); run more seeds (`--seeds 0,1,2`) before reading an order "
                  "into these numbers.", ""]
    lines += ["Latency: `ms/query` is one query scored against the whole pre-encoded test gallery "
              f"(text→image: one caption vs every image; image→text: one image vs every caption). {LATENCY_NOISE}",
              ""]
    for name in results.get("figures", []):
        lines += [f"![{name}]({name})", ""]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
