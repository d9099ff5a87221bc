"""`temde demo`: the project's main job, `temde compare`'s default run on real data prepared for it.

Does T-EMDE pool better, and at what cost? The demo prepares a fixed subset of the three real sources (emoji
drawn by nine vendors, six icon sets, openclipart re-captioned; rendered, EfficientNet region features, cached
once under the cache folder) and runs `temde compare` on it: the VSE dual encoder, where the global pooling *is*
the model, with T-EMDE, GPO, attention, mean and max pooling, and the linear dual encoder, under the same seeds
and training budget. Each source's test split is reported alone, every difference with its 95% paired bootstrap
interval and the word ahead / behind / level read from the interval.

The full run is sized for about 45 minutes on 2 CPU cores from an empty cache, `--quick` for about 10 (emoji
only, one seed); the README's table has what was measured of each. Bigger budgets are `temde compare`'s options
on `temde prepare all`'s data.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from temde.errors import TemdeError


@dataclass(frozen=True)
class DemoSize:
    """How much data and training one demo mode uses (per source: concepts kept, dev and test images)."""

    sources: tuple[str, ...]
    limit: int  # concepts per source (openclipart: images); a fixed subset drawn by the data's seed
    dev: int
    test: int
    seeds: tuple[int, ...]
    epochs: int
    lr_update: int
    batch_size: int = 128


FULL = DemoSize(sources=("emoji", "icons", "openclipart"), limit=700, dev=100, test=300, seeds=(0, 1, 2), epochs=6,
                lr_update=4)
QUICK = DemoSize(sources=("emoji",), limit=300, dev=50, test=100, seeds=(0,), epochs=6, lr_update=4)


@dataclass
class DemoSettings:
    out: str = "runs/demo"
    quick: bool = False
    data: str | None = None  # an existing precomp folder (train, dev, test* splits); default: the demo's data
    cache: str | None = None  # default $TEMDE_CACHE or ~/.cache/temde
    hosts: list[str] = field(default_factory=lambda: ["vse-small"])
    poolings: list[str] = field(default_factory=lambda: ["temde", "gpo", "attention", "mean", "max"])
    reference: str = "temde"
    pool_options: dict[str, dict] = field(default_factory=dict)  # per pooling, replacing the preset's recipe
    seeds: list[int] | None = None  # default: the mode's (FULL / QUICK)
    epochs: int | None = None  # default: the mode's
    jobs: int | None = None  # runs at once; default: 2 on a CPU with 2 or more cores, else 1
    device: str = "cpu"
    progress: bool = True
    force: bool = False

    @property
    def size(self) -> DemoSize:
        return QUICK if self.quick else FULL


def demo_data_dir(cache: Path, quick: bool) -> Path:
    """Where the demo's data set lives in the cache (`make serve` reads the full one from here)."""
    return cache / "data" / ("demo-quick" if quick else "demo")


def ensure_data(s: DemoSettings, log: Callable[[str], None]) -> Path:
    """The folder to compare on: `s.data`, or the demo's subset of the real sources, prepared once into the
    cache (rebuilt from cached downloads and features when its recorded settings differ)."""
    if s.data is not None:
        return Path(s.data)
    from temde.data.sources.combined import prepare_sources, source_settings
    from temde.data.sources.folder import older_dataset
    from temde.features import IMAGE_SIZE, FeatureExtractor, default_cache_root
    from temde.outputs import differences, inspect_folder

    size = s.size
    cache = Path(s.cache).expanduser() if s.cache else default_cache_root()
    out = demo_data_dir(cache, s.quick)
    wanted = source_settings(list(size.sources), size.dev, size.test, 0, size.limit, IMAGE_SIZE)
    recorded = inspect_folder(out, "prepare", older_dataset)
    # manifest.json is written last: its presence means complete, the record says what it holds.
    if recorded and not differences(recorded, wanted) and (out / "manifest.json").is_file():
        log(f"data: {out} (cached)")
        return out
    log(f"data: preparing {', '.join(size.sources)} ({size.limit} concepts each) into {out}")
    extractor = FeatureExtractor(device=s.device, cache_dir=cache / "features", progress=s.progress)
    # The folder is the demo's own: one prepared with other settings is rebuilt.
    prepare_sources(out, cache, list(size.sources), extractor=extractor, n_dev=size.dev, n_test=size.test, seed=0,
                    limit=size.limit, force=True, log=log)
    return out


def default_jobs(device: str) -> int:
    return 2 if device == "cpu" and (os.cpu_count() or 1) >= 2 else 1


def run_demo(settings: DemoSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prepare (or reuse) the data, then `temde compare` into `settings.out`; returns compare's results."""
    import time

    from temde.experiments.compare import CompareSettings, run_compare
    from temde.pooling import list_pools

    s, size = settings, settings.size
    unknown = [p for p in s.poolings if p not in list_pools()]
    if unknown:
        raise TemdeError(f"unknown pooling(s) {', '.join(unknown)}; choose from {', '.join(list_pools())}")
    started = time.perf_counter()
    data = ensure_data(s, log)
    prepared = time.perf_counter() - started
    compare = CompareSettings(
        data=str(data), out=s.out, hosts=list(s.hosts), poolings=list(s.poolings), reference=s.reference,
        seeds=list(s.seeds if s.seeds is not None else size.seeds), epochs=s.epochs or size.epochs,
        batch_size=size.batch_size, lr_update=size.lr_update, device=s.device, progress=s.progress, force=s.force,
        jobs=s.jobs or default_jobs(s.device), pool_options=dict(s.pool_options))
    results = run_compare(compare, log, command="demo", extra={"demo": {**asdict(s), "prepare_seconds": prepared}})
    log(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min (data {prepared / 60:.1f} min)")
    return results
