"""`temde compare`: hosts x poolings x seeds on one prepared data set, every test split scored, every comparison
with a 95% paired bootstrap interval (temde.bootstrap).

The output folder holds one run folder per (host, pooling, seed) under runs/, the test ranks of every run on
every test split (`ranks_<split>.npz`, so a report can be redone without rescoring), `results.json`, `report.md`
and `compare.png` (rsum with its interval against each model's training cost). The linear dual encoder (mean of
the regions + bag of words, temde.baselines) is always in, trained under the same seeds: the floor every pooling
has to clear.

Which splits are test splits: every split of the folder whose name starts with "test" (a prepared multi-source
folder has one per source, e.g. test_emoji, test_icons); style gives a source away, so each is reported alone.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from temde.bootstrap import DEFAULT_RESAMPLES, Ranks, rsum_difference, rsum_interval

FLOOR = "linear"  # the linear dual encoder's name in results


@dataclass
class CompareSettings:
    data: str
    out: str = "runs/compare"
    hosts: list[str] = field(default_factory=lambda: ["vse-small"])
    poolings: list[str] = field(default_factory=lambda: ["temde", "gpo", "attention", "mean", "max"])
    reference: str = "temde"  # every other model is compared with host + this pooling
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    test_splits: list[str] | None = None  # default: every split named test*
    epochs: int | None = None  # default: each preset's
    # A training budget for large data on a small machine (default: each preset's). Recorded: they decide results.
    batch_size: int | None = None
    lr_update: int | None = None
    max_steps_per_epoch: int | None = None
    pool_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per pooling, over the preset's
    resamples: int = DEFAULT_RESAMPLES
    device: str = "cpu"
    progress: bool = True
    force: bool = False
    # Training runs at once, each in its own process with cpu_count // jobs torch threads (CPU only: on one GPU
    # the runs would share it). Small models train faster as two 1-thread processes than as one 2-thread one.
    jobs: int = 1

    def recorded(self) -> dict[str, Any]:
        """What decides the results (temde.outputs record): not device, progress, force, jobs."""
        values = asdict(self)
        for key in ("device", "progress", "force", "jobs"):
            values.pop(key)
        values["data"] = str(Path(self.data).resolve())
        # The options each run trains its pooling with, as the presets give them today: a folder whose runs were
        # trained under another recipe is not reused as if it were this one.
        # (Options given here replace the preset's recipe for that pooling, as in `temde train --pool-option`.)
        values["recipes"] = {host: {pooling: self.pool_options.get(pooling, self._preset_recipe(host, pooling))
                                    for pooling in self.poolings} for host in self.hosts}
        return values

    @staticmethod
    def _preset_recipe(host: str, pooling: str) -> dict[str, Any]:
        from temde.models.registry import list_models, pool_recipe

        return pool_recipe(host, pooling) if host in list_models() else {}


def model_name(host: str, pooling: str) -> str:
    return f"{host} + {pooling}"


def test_splits_of(data: Path, wanted: list[str] | None) -> list[str]:
    from temde.data.precomp import available_splits
    from temde.errors import DataError

    present = available_splits(data)
    splits = wanted or [name for name in present if name.startswith("test")]
    missing = [name for name in splits if name not in present]
    if missing or not splits:
        raise DataError(f"{data}: no test split {missing or 'named test*'} (splits there: {', '.join(present)})")
    return splits


def _ranks(sims: np.ndarray, layout) -> Ranks:
    from temde.evaluation import image_to_text_ranks, text_to_image_ranks

    return Ranks(image_to_text_ranks(sims, layout), text_to_image_ranks(sims, layout))


def save_ranks(path: Path, ranks: Ranks) -> None:
    from temde.data.vocab import atomic_write

    with atomic_write(path, binary=True) as handle:
        np.savez(handle, i2t=ranks.i2t, t2i=ranks.t2i)


def load_ranks(path: Path) -> Ranks:
    with np.load(path) as saved:
        return Ranks(saved["i2t"], saved["t2i"])


def _train_run(s: CompareSettings, host: str, pooling: str, seed: int, run_dir: Path, fresh: bool) -> dict:
    from temde.training.loop import TrainSettings, train

    resume = (run_dir / "last.pt").is_file() and not fresh
    settings = TrainSettings(data=s.data, out=str(run_dir), model=host, pooling=pooling,
                             pool_options=s.pool_options.get(pooling), epochs=s.epochs, batch_size=s.batch_size,
                             lr_update=s.lr_update, max_steps_per_epoch=s.max_steps_per_epoch, seed=seed,
                             device=s.device, resume=resume, force=fresh, progress=s.progress, validate_data=False)
    return train(settings)


def _run_one(s: CompareSettings, host: str, pooling: str, seed: int, run_dir: Path, fresh: bool,
             splits: list[str]) -> tuple[float, dict[str, Ranks]]:
    """Train (or reuse) one run and score it: (training seconds per epoch, ranks per test split)."""
    result = _train_run(s, host, pooling, seed, run_dir, fresh)
    return result["train_seconds"] / max(1, result["epochs"]), score_run(run_dir, Path(s.data), splits, s.device)


def _worker_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_all(s: CompareSettings, tasks: list[tuple[str, str, int, Path]], fresh: bool, splits: list[str],
             log: Callable[[str], None]) -> list[tuple[float, dict[str, Ranks]]]:
    """Every (host, pooling, seed) run, in order; `s.jobs` at a time in worker processes when jobs > 1."""
    if s.jobs <= 1:
        results = []
        for host, pooling, seed, run_dir in tasks:
            log(f"{model_name(host, pooling)}, seed {seed} -> {run_dir}")
            results.append(_run_one(s, host, pooling, seed, run_dir, fresh, splits))
        return results
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // s.jobs)
    quiet = CompareSettings(**{**asdict(s), "progress": False})  # interleaved progress bars would be unreadable
    log(f"{len(tasks)} runs, {s.jobs} at a time, {threads} torch thread(s) each")
    with ProcessPoolExecutor(s.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(_run_one, quiet, host, pooling, seed, run_dir, fresh, splits)
                   for host, pooling, seed, run_dir in tasks]
        results = []
        for (host, pooling, seed, run_dir), future in zip(tasks, futures):
            results.append(future.result())
            log(f"done: {model_name(host, pooling)}, seed {seed} ({run_dir})")
        return results


def score_run(run_dir: Path, data: Path, splits: list[str], device: str) -> dict[str, Ranks]:
    """Ranks of the run's best checkpoint on every test split (cached beside the checkpoint)."""
    from temde.data import load_split
    from temde.scoring import encode_split, score_matrix
    from temde.training.checkpoint import load_checkpoint, restore_model, restore_vocab

    out: dict[str, Ranks] = {}
    todo = [name for name in splits if not (run_dir / f"ranks_{name}.npz").is_file()]
    if todo:
        checkpoint = load_checkpoint(run_dir / "best.pt")
        model, vocab = restore_model(checkpoint, device), restore_vocab(checkpoint)
        for name in todo:
            split = load_split(data, name, validate=False)
            sims = score_matrix(model, *encode_split(model, split, vocab, 128, device), device=device)
            save_ranks(run_dir / f"ranks_{name}.npz", _ranks(sims, split.layout))
    for name in splits:
        out[name] = load_ranks(run_dir / f"ranks_{name}.npz")
    return out


def _floor_runs(s: CompareSettings, data: Path, splits: list[str], out: Path,
                log: Callable[[str], None]) -> tuple[dict[str, list[Ranks]], list[float]]:
    from temde.baselines import BaselineSettings, score_dual_encoder, train_dual_encoder
    from temde.data import Vocabulary, load_split, load_vocab

    train_split, dev_split = load_split(data, "train", validate=False), load_split(data, "dev", validate=False)
    vocab = load_vocab(data) if (data / "vocab.json").is_file() else Vocabulary.build(train_split.captions)
    ranks: dict[str, list[Ranks]] = {name: [] for name in splits}
    seconds = []
    for seed in s.seeds:
        run_dir = out / "runs" / f"{FLOOR}-seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        done = run_dir / "train_seconds.json"
        if not (done.is_file() and all((run_dir / f"ranks_{n}.npz").is_file() for n in splits)):
            log(f"training the linear dual encoder, seed {seed}")
            model, info = train_dual_encoder(train_split, dev_split, vocab,
                                             BaselineSettings(seed=seed, device=s.device))
            for name in splits:
                split = load_split(data, name, validate=False)
                save_ranks(run_dir / f"ranks_{name}.npz",
                            _ranks(score_dual_encoder(model, split, vocab, s.device), split.layout))
            done.write_text(json.dumps({"train_seconds": info["train_seconds"],
                                        "epochs": BaselineSettings().epochs}))
        record = json.loads(done.read_text())
        seconds.append(record["train_seconds"] / record["epochs"])
        for name in splits:
            ranks[name].append(load_ranks(run_dir / f"ranks_{name}.npz"))
    return ranks, seconds


def run_compare(settings: CompareSettings, log: Callable[[str], None] = print, *, command: str = "compare",
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, score and report every run (finished runs in `settings.out` are reused). `command` names the
    folder's owner in its record (`temde demo` runs this too); `extra` is stored in results.json as is."""
    from temde.data import load_split
    from temde.evaluation import chance_rsum, metrics_from_ranks
    from temde.outputs import claim_folder

    s = settings
    if s.reference not in s.poolings:
        raise ValueError(f"reference pooling {s.reference!r} is not among the poolings {s.poolings}")
    data, out = Path(s.data), Path(s.out)
    splits = test_splits_of(data, s.test_splits)
    claim = claim_folder(out, command, s.recorded(), force=s.force)
    fresh = claim.state == "replace"
    started = time.perf_counter()

    ranks: dict[str, dict[str, list[Ranks]]] = {}  # model -> split -> one Ranks per seed
    cost: dict[str, list[float]] = {}  # model -> training seconds per epoch, per seed
    tasks = [(host, pooling, seed, out / "runs" / f"{host}-{pooling}-seed{seed}")
             for host in s.hosts for pooling in s.poolings for seed in s.seeds]
    for (host, pooling, _, _), (seconds, by_split) in zip(tasks, _run_all(s, tasks, fresh, splits, log)):
        name = model_name(host, pooling)
        ranks.setdefault(name, {split: [] for split in splits})
        cost.setdefault(name, []).append(seconds)
        for split, r in by_split.items():
            ranks[name][split].append(r)
    ranks[FLOOR], cost[FLOOR] = _floor_runs(s, data, splits, out, log)

    per_split = {}
    for split in splits:
        test = load_split(data, split, validate=False)
        layout = test.layout
        models = {}
        for name, by_split in ranks.items():
            runs = by_split[split]
            metrics = [metrics_from_ranks(r.i2t, r.t2i) for r in runs]
            models[name] = {
                "metrics": {key: _mean_std([m[key] for m in metrics]) for key in metrics[0]},
                "rsum_interval": rsum_interval(runs, layout, s.resamples).to_dict(),
                "train_seconds_per_epoch": _mean_std(cost[name]),
            }
        comparisons = []
        for host in s.hosts:
            reference = model_name(host, s.reference)
            for other in [*(model_name(host, p) for p in s.poolings if p != s.reference), FLOOR]:
                interval = rsum_difference(ranks[reference][split], ranks[other][split], layout, s.resamples)
                comparisons.append({"model": reference, "against": other, **interval.to_dict()})
        per_split[split] = {"images": test.n_images, "captions": test.n_captions,
                            "chance_rsum": chance_rsum(test.n_images, layout), "models": models,
                            "comparisons": comparisons}

    results = {"settings": asdict(s), "splits": per_split, "seconds": time.perf_counter() - started, **(extra or {})}
    from temde.experiments.report import write_compare_outputs

    write_compare_outputs(results, out, log)
    return results


def _mean_std(values: list[float]) -> dict[str, Any]:
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}
