"""`temde prepare emoji | icons | all` and `temde prepare openclipart --captions separate`: the multi-caption
sources, alone or together in one folder.

One source -> `train`, `dev`, `test` in its folder. Several (`temde prepare all`, by default emoji + icons +
openclipart) -> one folder with `train` and `dev` of all of them and a test split per source,
`test_emoji`, `test_icons`, `test_openclipart`: `temde train --data DIR` trains on all sources, and
`temde eval --data DIR --split test_emoji` evaluates one source at a time (styles give the source away, so a
mixed test split would be too easy). Every split has `{split}_cap2img.npy`: an image has 1..n captions.

Downloads, rendered PNGs and features live in the cache (`--cache`, default $TEMDE_CACHE or ~/.cache/temde),
so a second run, or another output folder, costs seconds per thousand images.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from temde.data.sources.multicaption import (DEFAULT_DEV, DEFAULT_TEST, SourceData, build_multicaption_dataset,
                                             subset_concepts)
from temde.data.sources.openclipart import MAX_TITLE_REPEATS
from temde.data.sources.splits import NEAR_DUPLICATE_COSINE
from temde.errors import DataError

SOURCES = ("emoji", "icons", "openclipart")


def collect(source: str, cache_root: Path, *, size: int, workers: int, progress: bool = True,
            root: str | os.PathLike | None = None, max_title_repeats: int = MAX_TITLE_REPEATS,
            limit: int | None = None, log: Callable[[str], None] = print) -> SourceData:
    """One source's images (rendered where they are drawings; with `limit`, only those of `limit` concepts)
    and captions."""
    if source == "emoji":
        from temde.data.sources.emoji import collect_emoji
        return collect_emoji(cache_root, size=size, workers=workers, progress=progress, log=log, limit=limit)
    if source == "icons":
        from temde.data.sources.icons import collect_icons
        return collect_icons(cache_root, size=size, workers=workers, progress=progress, log=log, limit=limit)
    if source == "openclipart":
        from temde.data.sources.openclipart_captions import collect_openclipart
        return subset_concepts(collect_openclipart(cache_root, root=root, names_root=cache_root,
                                                   max_title_repeats=max_title_repeats, log=log), limit)
    raise DataError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")


def source_settings(sources: Sequence[str], n_dev: int, n_test: int, seed: int, limit: int | None,
                    image_size: int, root: str | os.PathLike | None = None,
                    max_title_repeats: int = MAX_TITLE_REPEATS) -> dict:
    """What decides such a data set, as recorded in its folder (temde.outputs): a rerun with the same settings
    rebuilds it from the cache, other settings need --force."""
    settings = {"source": "+".join(sources), "captions": "separate", "dev": n_dev, "test": n_test, "seed": seed,
                "limit": limit, "resolution": image_size}
    if "openclipart" in sources:
        settings.update(root=None if root is None else str(Path(root).resolve()), max_title_repeats=max_title_repeats)
    return settings


def prepare_sources(out_dir: str | os.PathLike, cache_root: str | os.PathLike, sources: Sequence[str] = SOURCES, *,
                    extractor, n_dev: int = DEFAULT_DEV, n_test: int = DEFAULT_TEST, seed: int = 0,
                    limit: int | None = None, workers: int = 2, root: str | os.PathLike | None = None,
                    max_title_repeats: int = MAX_TITLE_REPEATS, threshold: float = NEAR_DUPLICATE_COSINE,
                    force: bool = False, log: Callable[[str], None] = print) -> dict:
    """Claim `out_dir` (temde.outputs' policy), collect each source, then features, split and files.

    n_dev / n_test are per source, in concept groups (one image each). limit: a fixed subset of that many
    concepts per source (openclipart: images), for quick runs. workers: rendering processes.
    """
    from temde.data.sources.folder import claim_dataset_folder

    sources = list(dict.fromkeys(sources))
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise DataError(f"unknown source(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SOURCES)}")
    if n_dev < 0 or n_test < 1:
        raise DataError(f"--dev must be >= 0 and --test >= 1 per source, got {n_dev} and {n_test}")
    if limit is not None and limit < 3:
        raise DataError(f"--limit must be >= 3 (train, dev and test need a concept each), got {limit}")
    cache_root = Path(cache_root)
    size = int(getattr(extractor, "image_size", 224))
    claim_dataset_folder(out_dir, source_settings(sources, n_dev, n_test, seed, limit, size, root, max_title_repeats),
                         force, log)
    start = time.perf_counter()
    collected = []
    for source in sources:
        data = collect(source, cache_root, size=size, workers=workers, progress=getattr(extractor, "progress", True),
                       root=root, max_title_repeats=max_title_repeats, limit=limit, log=log)
        if limit is not None:
            log(f"{source}: --limit {limit}: {data.summary()}")
        collected.append(data)
    collect_seconds = time.perf_counter() - start
    manifest = build_multicaption_dataset(
        out_dir, collected, extractor=extractor, n_dev=n_dev, n_test=n_test, seed=seed, threshold=threshold,
        images_root=cache_root, log=log,
        manifest_extra={"collect_seconds": round(collect_seconds, 1), "limit": limit,
                        "split_layout": ("train, dev, test" if len(sources) == 1 else
                                         "train and dev of every source; test_<source> per source")})
    log(f"prepared {out_dir} in {time.perf_counter() - start:.0f} s (download + render {collect_seconds:.0f} s)")
    return manifest
