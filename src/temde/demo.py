"""`temde demo`: the project's main job.

Prepares the default real data set (openclipart: public-domain clip art captioned by its authors, EfficientNet
region features; cached), trains SAF with SGRAF's self-attention pooling and with T-EMDE under the same seeds and
budget, evaluates both on the test split next to a linear dual encoder and chance, and writes
`results.json`, `report.md` and figures into the output folder.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from temde.errors import TemdeError


def preset_recipe(model: str) -> tuple[dict[str, dict[str, Any]], float]:
    """(pool options per pooling, global-loss weight) of a model preset: the one recipe that `temde train
    --model M --pooling P` trains too (saf-small: T-EMDE as a residual sketch, global loss 1.0; the best of the
    3-seed ablations on the default data, docs/ablations.md)."""
    from temde.models.registry import list_models, load_preset

    if model not in list_models():
        return {}, 0.0
    preset = load_preset(model)
    return dict(preset.get("pool_defaults", {})), float(preset["train"].get("global_loss", 0.0))

METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


@dataclass
class DemoSettings:
    out: str = "runs/demo"
    quick: bool = False
    data: str | None = None  # an existing precomp folder; default: openclipart prepared into the cache
    cache: str | None = None  # default $TEMDE_CACHE or ~/.cache/temde
    model: str = "saf-small"
    poolings: list[str] = field(default_factory=lambda: ["attention", "temde"])
    # Options per pooling kind (make_pool keyword arguments); None: the preset's recipe (`pool_defaults`).
    pool_options: dict[str, dict[str, Any]] | None = None
    seeds: list[int] | None = None  # default: [0] with --quick, [0, 1, 2] otherwise
    epochs: int | None = None  # default: the model preset's (`temde models` lists them)
    limit: int | None = None  # openclipart subset; default: 1200 images with --quick, all otherwise
    word_vectors: str | None = None  # 300-d words from scratch beat GloVe 6B-50d (docs/ablations.md)
    # The auxiliary VSE++ loss on the inner products of the global vectors (what the two-stage index ranks by);
    # on this data it also lifted T-EMDE's test rsum from 79.8 to 87.0 (seed 0, docs/ablations.md). None: the
    # preset's (saf-small: 1.0).
    global_loss: float | None = None
    # Best epoch chosen on the whole dev split: selecting on 250 images picked epochs whose test rsum was up to
    # 10 below the last epoch's (docs/ablations.md, round 3).
    dev_subset: int | None = None
    device: str = "cpu"
    progress: bool = True
    force: bool = False  # start over in `out` (its runs retrained) instead of reusing what matches

    def resolved(self) -> "DemoSettings":
        values = asdict(self)
        if values["seeds"] is None:
            values["seeds"] = [0] if self.quick else [0, 1, 2]
        if values["limit"] is None and self.quick and self.data is None:
            values["limit"] = 1200
        recipe, global_loss = preset_recipe(self.model)
        if values["pool_options"] is None:
            values["pool_options"] = {p: recipe[p] for p in self.poolings if p in recipe}
        if values["global_loss"] is None:
            values["global_loss"] = global_loss
        return DemoSettings(**values)

    def recorded(self) -> dict[str, Any]:
        """What decides the demo's results (of resolved settings), as recorded in its output folder: a rerun
        reuses the folder's runs only when these are equal. Device, progress and cache do not change results."""
        values = {key: value for key, value in asdict(self).items() if key in RECORDED_SETTINGS}
        values["data"] = None if self.data is None else str(Path(self.data).resolve())
        return values


RECORDED_SETTINGS = ("quick", "data", "model", "poolings", "pool_options", "seeds", "epochs", "limit",
                     "word_vectors", "global_loss", "dev_subset")


def older_demo(folder: Path) -> dict | None:
    """The settings of a demo folder written before output records existed: its results.json tells them; a
    folder with only runs/ in it cannot tell (temde.outputs)."""
    try:
        saved = json.loads((folder / "results.json").read_text(encoding="utf-8"))["settings"]
        return DemoSettings(**{k: v for k, v in saved.items() if k in DemoSettings.__dataclass_fields__}).recorded()
    except (OSError, ValueError, KeyError, TypeError):
        return {} if (folder / "runs").is_dir() else None


# ---- data ----------------------------------------------------------------------------------------------------

def ensure_data(s: DemoSettings, log: Callable[[str], None]) -> Path:
    """The precomp folder to use: `s.data`, or openclipart prepared once into the cache (reused afterwards)."""
    if s.data is not None:
        return Path(s.data)
    from temde.data.sources.folder import older_dataset
    from temde.data.sources.openclipart import (DEFAULT_DEV, DEFAULT_TEST, MAX_TITLE_REPEATS, prepare_openclipart,
                                                prepare_settings)
    from temde.features import IMAGE_SIZE, FeatureExtractor, default_cache_root
    from temde.outputs import differences, inspect_folder

    cache = Path(s.cache).expanduser() if s.cache else default_cache_root()
    name = "openclipart" if s.limit is None else f"openclipart-{s.limit}"
    out = cache / "data" / name
    share = None if s.limit is None else max(1, s.limit // 8)
    n_dev, n_test = share or DEFAULT_DEV, share or DEFAULT_TEST
    wanted = prepare_settings(s.limit, n_dev, n_test, 0, MAX_TITLE_REPEATS, None, IMAGE_SIZE)
    recorded = inspect_folder(out, "prepare", older_dataset)
    # manifest.json is written last by prepare: its presence means complete, the record says what it holds.
    if recorded and not differences(recorded, wanted) and (out / "manifest.json").is_file():
        log(f"data: {out} (cached)")
        return out
    extractor = FeatureExtractor(device=s.device, cache_dir=cache / "features", progress=s.progress)
    # The cache folder is the demo's own: one prepared with other settings is simply rebuilt.
    prepare_openclipart(out, cache, extractor=extractor, limit=s.limit, n_dev=n_dev, n_test=n_test, seed=0,
                        force=True, log=log)
    return out


def read_manifest(data_dir: Path) -> dict | None:
    path = data_dir / "manifest.json"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---- one trained variant ---------------------------------------------------------------------------------------

def train_variant(data_dir: Path, run_dir: Path, pooling: str, seed: int, s: DemoSettings,
                  fresh: bool = False) -> dict:
    """Train (or resume / reuse a finished run in run_dir; `fresh`: start it over) and return the loop's result
    dict. The training loop checks a resumed run's settings against the request, a second guard behind the demo's
    own record."""
    from temde.training.loop import TrainSettings, train

    resume = (run_dir / "last.pt").is_file() and not fresh
    settings = TrainSettings(
        data=str(data_dir), out=str(run_dir), model=s.model, pooling=pooling,
        pool_options=dict(s.pool_options.get(pooling, {})), epochs=s.epochs, seed=seed,
        device=s.device, resume=resume, force=fresh, progress=s.progress, word_vectors=s.word_vectors,
        global_loss=s.global_loss, dev_subset=s.dev_subset,
        lr_update=None if s.epochs is None else max(1, (2 * s.epochs) // 3), validate_data=False)
    return train(settings)


@torch.no_grad()
def query_latency_ms(model, split, vocab, img, cap, device, n_queries: int = 20) -> dict:
    """Wall time of answering one query against the whole pre-encoded gallery, query encoding included:
    text->image encodes one caption and scores it against every image; image->text the reverse."""
    from temde.data.batches import encode_captions as tokenize
    from temde.scoring import encode_captions, encode_images, score_matrix

    tokens, lengths = tokenize(split.captions[:n_queries], vocab)

    def per_query(fn, count):
        fn(0)  # warm-up: first-call allocations and lazy initialisation are not a query's cost
        start = time.perf_counter()
        for q in range(count):
            fn(q)
        return 1e3 * (time.perf_counter() - start) / count

    def text_query(q):
        query = encode_captions(model, tokens[q:q + 1], lengths[q:q + 1], 1, device)
        score_matrix(model, img, query, 128, 1, device)

    def image_query(q):
        query = encode_images(model, split.images[q:q + 1], 1, device)
        score_matrix(model, query, cap, 1, 256, device)

    return {"t2i_query_ms": per_query(text_query, min(n_queries, len(tokens))),
            "i2t_query_ms": per_query(image_query, min(n_queries, split.n_images))}


def evaluate_checkpoint(path: Path, data_dir: Path, split: str, device: str) -> tuple[dict, np.ndarray, Any]:
    """Test metrics, the score matrix and the restored model of one checkpoint."""
    from temde.data import load_split
    from temde.evaluation import evaluate
    from temde.scoring import encode_split, score_matrix
    from temde.training.checkpoint import load_checkpoint, restore_model, restore_vocab

    checkpoint = load_checkpoint(path)
    model = restore_model(checkpoint, device)
    vocab = restore_vocab(checkpoint)
    test = load_split(data_dir, split, validate=False)
    start = time.perf_counter()
    img, cap = encode_split(model, test, vocab, 128, device)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    sims = score_matrix(model, img, cap, device=device)
    score_s = time.perf_counter() - start
    metrics = evaluate(sims, test.layout)
    metrics.update(encode_s=encode_s, score_matrix_s=score_s, **query_latency_ms(model, test, vocab, img, cap, device))
    return metrics, sims, (model, vocab, img, cap)


def mean_std(values: list[float]) -> dict:
    return {"mean": float(statistics.fmean(values)),
            "std": float(statistics.stdev(values)) if len(values) > 1 else 0.0, "values": values}


# ---- the job -----------------------------------------------------------------------------------------------------

def run_demo(settings: DemoSettings, log: Callable[[str], None] = print) -> dict:
    from temde.baselines import BaselineSettings, score_dual_encoder, train_dual_encoder
    from temde.data import Vocabulary, load_split, load_vocab
    from temde.demo_report import LATENCY_NOISE, write_figures, write_report
    from temde.evaluation import chance_rsum, evaluate
    from temde.outputs import claim_folder
    from temde.pooling import list_pools

    s = settings.resolved()
    unknown = [p for p in s.poolings if p not in list_pools()]
    if unknown:
        raise TemdeError(f"unknown pooling(s) {unknown}")
    out = Path(s.out)
    claim = claim_folder(out, "demo", s.recorded(), force=s.force, legacy=older_demo)
    if claim.state == "same":
        log(f"{out}: a demo with the same settings is there; its finished runs are reused, an unfinished one "
            f"resumes (--force starts over)")
    elif claim.state == "replace":
        log(f"{out}: --force: starting over" + (f" ({'; '.join(claim.differences)})" if claim.differences else ""))
    started = time.perf_counter()
    data_dir = ensure_data(s, log)
    prepared_s = time.perf_counter() - started
    test = load_split(data_dir, "test", validate=False)
    k = test.layout

    variants: dict[str, dict] = {}
    for pooling in s.poolings:
        runs = []
        for seed in s.seeds:
            run_dir = out / "runs" / f"{pooling}-seed{seed}"
            log(f"training {s.model} with {pooling} pooling, seed {seed} -> {run_dir}")
            result = train_variant(data_dir, run_dir, pooling, seed, s, fresh=claim.state == "replace")
            metrics, sims, _ = evaluate_checkpoint(run_dir / "best.pt", data_dir, "test", s.device)
            metrics["train_seconds"] = result["train_seconds"]
            metrics["best_dev_rsum"] = result["best_rsum"]
            log(f"  test rsum {metrics['rsum']:.1f} (dev {result['best_rsum']:.1f}), "
                f"trained in {result['train_seconds']:.0f} s")
            runs.append({"seed": seed, "run_dir": str(run_dir), "metrics": metrics, "history": result["history"]})
            np.save(run_dir / "test_sims.npy", sims)
        with open(out / "runs" / f"{pooling}-seed{s.seeds[0]}" / "config.json", encoding="utf-8") as f:
            recipe = json.load(f)  # what was trained: the report states the score and the learning rate
        variants[pooling] = {"runs": runs, "summary": summarise_runs([r["metrics"] for r in runs]),
                             "model": recipe["model"], "train": recipe["train"]}

    # The floor: a linear dual encoder (mean-pooled regions + bag of words), same loss, same split and seeds.
    train_split, dev_split = load_split(data_dir, "train", validate=False), load_split(data_dir, "dev", validate=False)
    vocab = load_vocab(data_dir) if (data_dir / "vocab.json").is_file() else Vocabulary.build(train_split.captions)
    baseline_runs = []
    for seed in s.seeds:
        model, info = train_dual_encoder(train_split, dev_split, vocab, BaselineSettings(seed=seed, device=s.device))
        metrics = evaluate(score_dual_encoder(model, test, vocab, s.device), k)
        metrics["train_seconds"] = info["train_seconds"]
        baseline_runs.append({"seed": seed, "metrics": metrics})
    log(f"linear dual encoder: test rsum {statistics.fmean(r['metrics']['rsum'] for r in baseline_runs):.1f}")

    results = {
        "settings": asdict(s),
        "data": {"dir": str(data_dir), "test_images": test.n_images, "test_captions": test.n_captions,
                 "captions_per_image": test.captions_per_image, "train_images": train_split.n_images, "dev_images": dev_split.n_images,
                 "chance_rsum": chance_rsum(test.n_images, k), "prepare_seconds": prepared_s},
        "machine": machine_summary(s.device),
        **{pooling: variants[pooling]["summary"] for pooling in s.poolings},
        "linear_dual_encoder": summarise_runs([r["metrics"] for r in baseline_runs]),
        "variants": variants,
        "baseline_runs": baseline_runs,
    }
    results["total_seconds"] = time.perf_counter() - started
    figures = write_figures(results, data_dir, out, s.device, log)
    results["figures"] = figures
    results["total_seconds"] = time.perf_counter() - started
    write_json_atomic(out / "results.json", results)
    write_report(results, out / "report.md")
    log(format_table(results))
    log(f"(train s and ms/query: {LATENCY_NOISE[0].lower()}{LATENCY_NOISE[1:]})")
    log(f"wrote {out / 'results.json'}, {out / 'report.md'} and {len(figures)} figures "
        f"in {results['total_seconds'] / 60:.1f} min")
    return results


def summarise_runs(metric_dicts: list[dict]) -> dict:
    keys = [k for k in metric_dicts[0] if isinstance(metric_dicts[0][k], (int, float))]
    return {key: mean_std([float(m[key]) for m in metric_dicts]) for key in keys}


def machine_summary(device: str) -> dict:
    from temde.bench.timing import machine_description

    return machine_description(torch.device(device))


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _cell(summary: dict, key: str, digits: int = 1) -> str:
    entry = summary[key]
    if entry["std"] == 0.0 and len(entry["values"]) == 1:
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def format_table(results: dict) -> str:
    """Markdown table: one row per model, recalls both ways, rsum, training time, per-query latency."""
    rows = [("SAF + " + p, results[p]) for p in results["settings"]["poolings"]]
    rows.append(("linear dual encoder", results["linear_dual_encoder"]))
    header = ("| model | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | rsum | train s | t2i ms/query | i2t ms/query |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for name, summary in rows:
        cells = [_cell(summary, key) for key in METRICS]
        cells.append(_cell(summary, "train_seconds", 0))
        for key in ("t2i_query_ms", "i2t_query_ms"):
            cells.append(_cell(summary, key, 2) if key in summary else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    d = results["data"]
    lines.append(f"| chance | | | | | | | {d['chance_rsum']:.1f} | | | |")
    return "\n".join(lines)
