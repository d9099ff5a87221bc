"""The shared path of the multi-caption sources (emoji, icons, openclipart re-captioned, and all three at once):
images with 1..n captions and a concept each -> features -> concept-grouped split -> precomp files.

What differs from `folder.build_dataset` (one caption count k for every image):

- Every image keeps all its captions; `{split}_cap2img.npy` names the image row of each caption line
  (temde.data.write_split(..., caption_images=...)).
- Images carry a *concept* key: the drawings of one emoji by several vendors, the icons of one name in several
  sets. A concept never straddles two splits. Leakage groups (temde.data.sources.splits.leakage_groups) join
  images of one concept, images sharing a normalised caption, and near-duplicate pictures.
- Held-out splits hold ONE image per group: the vendors of a concept share its captions, so two of them in
  one test split would make text->image retrieval ambiguous, and the others cannot go to train (that would
  leak the concept). Groups are dealt in an order drawn from the seed: test first, then dev, the rest to train
  with all their images.
- Sources are split separately (styles give the source away, so each source gets its own test split); with
  several sources one folder holds `train` and `dev` of all of them and `test_<source>` per source.

Features are extracted once, for every image of every source, into a temporary memory-mapped file in the
output folder (tens of thousands of images are ~250 KB each), then copied split by split; the feature cache
(temde.features) makes a second run cheap.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from temde.data.sources.splits import NEAR_DUPLICATE_COSINE, leakage_groups, normalise_text
from temde.errors import DataError

DEFAULT_DEV = 250    # per source: the dev split selects the best epoch; three sources give 750 dev images
DEFAULT_TEST = 500   # per source, one image per concept (issue 14: 500-1,000)
# A group of more images than this is never held out: one image of it would cost the others (game-icons' 121
# "abstract" drawings, a chain of look-alike flags). Nine vendors of one emoji, or three joined concepts, fit.
MAX_HELD_OUT_GROUP = 30
# Words a caption keeps (openclipart's cap): SAF/SGR's cross-attention cost grows with the longest caption.
MAX_CAPTION_WORDS = 18
_COPY_ROWS = 1024  # rows copied between memory-mapped feature files at a time (~250 MB)


@dataclass
class SourceItem:
    """One image of a source: its PNG, its name in the manifest, its captions, its concept, who drew it."""
    path: Path
    name: str
    captions: list[str]
    concept: str
    vendor: str = ""


@dataclass
class SourceData:
    """Everything a source contributes: its images (in a fixed order) and the facts worth reporting."""
    source: str
    items: list[SourceItem]
    facts: dict = field(default_factory=dict)
    group_texts: list[list[str]] | None = None  # extra identifying texts per item (openclipart: its title)

    @property
    def n_concepts(self) -> int:
        return len({item.concept for item in self.items})

    @property
    def n_captions(self) -> int:
        return sum(len(item.captions) for item in self.items)

    def summary(self) -> str:
        n = len(self.items)
        return (f"{n:,} images of {self.n_concepts:,} concepts, {self.n_captions:,} captions "
                f"({self.n_captions / max(n, 1):.2f} per image)")


# ---------------------------------------------------------------- captions

def cap_words(text: str, limit: int = MAX_CAPTION_WORDS) -> str:
    """Whitespace collapsed, at most `limit` words, no trailing separator left by the cut."""
    words = text.split()
    if len(words) <= limit:
        return " ".join(words)
    return " ".join(words[:limit]).rstrip(",.;: ")


def distinct_captions(candidates: Sequence[str]) -> list[str]:
    """The non-empty candidates, each capped, in order, without one whose normalised text came earlier."""
    kept, seen = [], set()
    for caption in candidates:
        caption = cap_words(caption)
        key = normalise_text(caption)
        if key and key not in seen:
            seen.add(key)
            kept.append(caption)
    return kept


def drop_shared_captions(items: Sequence[SourceItem]) -> int:
    """Remove, in place, every caption whose normalised text belongs to more than one concept ("flag" is a CLDR
    keyword list of 258 flags): it cannot identify its image, and in a held-out split it would be right for
    several. An item keeps its first caption whatever happens, so none is left without one. Returns how many
    (concept, caption) pairs were dropped."""
    concepts: dict[str, set[str]] = {}
    for item in items:
        for caption in item.captions:
            concepts.setdefault(normalise_text(caption), set()).add(item.concept)
    dropped: set[tuple[str, str]] = set()
    for item in items:
        kept = []
        for i, caption in enumerate(item.captions):
            if i == 0 or len(concepts[normalise_text(caption)]) == 1:
                kept.append(caption)
            else:
                dropped.add((item.concept, normalise_text(caption)))
        item.captions = kept
    return len(dropped)


def chosen_concepts(concepts, limit: int | None) -> set[str] | None:
    """`limit` of the concepts, chosen by a hash of their keys (the same on every machine); None: all."""
    import hashlib

    if limit is None:
        return None
    return set(sorted(set(concepts), key=lambda c: hashlib.sha1(c.encode("utf-8")).hexdigest())[:limit])


def subset_concepts(data: SourceData, limit: int | None) -> SourceData:
    """The items of `limit` concepts (see `chosen_concepts`), order kept."""
    chosen = chosen_concepts((item.concept for item in data.items), limit)
    if chosen is None:
        return data
    keep = [i for i, item in enumerate(data.items) if item.concept in chosen]
    return SourceData(data.source, [data.items[i] for i in keep], {**data.facts, "limit_concepts": limit},
                      None if data.group_texts is None else [data.group_texts[i] for i in keep])


# ---------------------------------------------------------------- split

@dataclass
class SourceSplit:
    """Item indices (into SourceData.items) of each split of one source, and how they were found."""
    train: np.ndarray
    dev: np.ndarray
    test: np.ndarray
    report: dict


def _pooled(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mean over regions, L2-normalised, read in chunks from a (possibly memory-mapped) [n, R, D] array."""
    out = np.empty((len(rows), features.shape[2]), dtype=np.float32)
    for start in range(0, len(rows), _COPY_ROWS):
        chunk = np.asarray(features[rows[start:start + _COPY_ROWS]], dtype=np.float32).mean(axis=1)
        out[start:start + len(chunk)] = chunk
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def concept_split(data: SourceData, pooled: np.ndarray, n_dev: int, n_test: int, seed: int,
                  threshold: float = NEAR_DUPLICATE_COSINE, max_held_out_group: int = MAX_HELD_OUT_GROUP
                  ) -> SourceSplit:
    """Leakage groups of one source (concept keys, shared normalised captions, near-duplicate features), then
    groups dealt in a seeded order: one image of each of the first `n_test` groups to test, one of each of the
    next `n_dev` to dev, all images of the others to train. Groups of more than `max_held_out_group` images
    always go to train."""
    n = len(data.items)
    texts = [list(item.captions) + list(data.group_texts[i] if data.group_texts else ())
             for i, item in enumerate(data.items)]
    groups = leakage_groups(texts, pooled, threshold, keys=[item.concept for item in data.items])
    group_ids, group_sizes = np.unique(groups.labels, return_counts=True)
    eligible = group_ids[group_sizes <= max_held_out_group]
    if n_dev + n_test >= len(eligible):
        share = max(1, len(eligible) // 10)
        raise DataError(f"{data.source}: --dev {n_dev} + --test {n_test} leaves no training concepts out of "
                        f"{len(eligible)} concept groups; try --dev {share} --test {share}")
    rng = np.random.default_rng(seed)
    order = eligible[rng.permutation(len(eligible))]
    members: dict[int, list[int]] = {}
    for image, label in enumerate(groups.labels):
        members.setdefault(int(label), []).append(image)
    test = sorted(int(rng.choice(members[int(g)])) for g in order[:n_test])
    dev = sorted(int(rng.choice(members[int(g)])) for g in order[n_test:n_test + n_dev])
    held_out = {int(g) for g in order[:n_test + n_dev]}
    train = [i for i in range(n) if int(groups.labels[i]) not in held_out]
    dropped = n - len(train) - len(test) - len(dev)
    report = {
        "near_duplicate_cosine": threshold, "n_groups": int(len(group_ids)),
        "groups_too_large_to_hold_out": int(len(group_ids) - len(eligible)),
        "merged_groups": groups.merged_groups, "images_in_merged_groups": groups.images_in_merged_groups,
        "largest_group": int(group_sizes.max()), "concept_unions": groups.key_unions,
        "text_unions": groups.text_unions, "feature_unions": groups.feature_unions,
        "held_out_images_not_used": int(dropped),
    }
    return SourceSplit(np.asarray(train, dtype=np.int64), np.asarray(dev, dtype=np.int64),
                       np.asarray(test, dtype=np.int64), report)


# ---------------------------------------------------------------- writing

def _copy_rows(features: np.ndarray, rows: np.ndarray, path: Path) -> np.ndarray:
    """features[rows] into a new memory-mapped .npy at `path`, chunk by chunk (never all rows in memory)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(rows),) + features.shape[1:])
    for start in range(0, len(rows), _COPY_ROWS):
        out[start:start + _COPY_ROWS] = features[rows[start:start + _COPY_ROWS]]
    out.flush()
    return out


def _write_json(path: Path, data: dict) -> None:
    from temde.data.vocab import atomic_write

    with atomic_write(path) as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")


def _remove_split(out_dir: Path, name: str) -> None:
    from temde.data.precomp import caption_file, caption_index_file, image_file

    for stale in (image_file(out_dir, name), caption_file(out_dir, name), caption_index_file(out_dir, name)):
        stale.unlink(missing_ok=True)


def build_multicaption_dataset(out_dir: str | os.PathLike, sources: Sequence[SourceData], *, extractor,
                               n_dev: int = DEFAULT_DEV, n_test: int = DEFAULT_TEST, seed: int = 0,
                               threshold: float = NEAR_DUPLICATE_COSINE, images_root: str | os.PathLike | None = None,
                               manifest_extra: dict | None = None,
                               log: Callable[[str], None] = print) -> dict:
    """Features of every image of every source (one pass), a concept-grouped split per source, then the files.

    One source: `train`, `dev`, `test`. Several: `train` and `dev` hold every source's part (rows in source
    order, the manifest records each source's row range), `test_<source>` each source's test split.
    Writes `manifest.json` last; returns it.
    """
    from temde.data.precomp import available_splits, build_and_save_vocab, write_split
    from temde.features import MODEL_NAME, UnreadableImagesError

    from temde.data.sources.folder import MANIFEST_FILE

    sources = [s for s in sources]
    if not sources or any(not s.items for s in sources):
        empty = [s.source for s in sources if not s.items]
        raise DataError(f"no images to build a data set from{' (' + ', '.join(empty) + ')' if empty else ''}")
    if len({s.source for s in sources}) != len(sources):
        raise ValueError("source names must differ")
    for data in sources:
        if any(not item.captions for item in data.items):
            raise ValueError(f"{data.source}: every item needs at least one caption")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # an older manifest must not vouch for new files

    items = [item for data in sources for item in data.items]
    offsets = np.cumsum([0] + [len(data.items) for data in sources])
    total = len(items)
    log(f"features for {total:,} images ({', '.join(f'{d.source} {len(d.items):,}' for d in sources)})")
    start = time.perf_counter()
    all_path = out_dir / ".features-all.tmp.npy"
    temporaries = [all_path]
    try:
        features = np.lib.format.open_memmap(all_path, mode="w+", dtype=np.float32,
                                             shape=(total,) + extractor_shape(extractor))
        try:
            extractor.extract([item.path for item in items], out=features)
        except UnreadableImagesError as exc:
            index, path, reason = exc.failures[0]
            more = f" ({len(exc.failures) - 1} more)" if len(exc.failures) > 1 else ""
            raise DataError(f"{path}: rendered image is unreadable ({reason}){more}; delete it and run again") \
                from None
        feature_seconds = time.perf_counter() - start
        log(f"features: {feature_seconds:.0f} s ({getattr(extractor, 'images_computed', 0):,} images through "
            f"the network, the rest from the cache)")

        # -- split each source
        splits: dict[str, SourceSplit] = {}
        for data, offset in zip(sources, offsets):
            rows = np.arange(offset, offset + len(data.items))
            split = concept_split(data, _pooled(features, rows), n_dev, n_test, seed, threshold)
            splits[data.source] = split
            r = split.report
            log(f"{data.source}: {r['n_groups']:,} concept groups ({r['merged_groups']:,} of several images, "
                f"largest {r['largest_group']:,}; joins: {r['concept_unions']:,} by concept, {r['text_unions']:,} "
                f"by caption, {r['feature_unions']:,} by feature cosine >= {threshold}); train {len(split.train):,}"
                f" / dev {len(split.dev):,} / test {len(split.test):,} images, {r['held_out_images_not_used']:,} "
                f"other drawings of held-out concepts unused")

        # -- the splits to write: (name, [(source, global rows)])
        combined = len(sources) > 1
        plan: list[tuple[str, list[tuple[str, np.ndarray]]]] = [
            ("train", [(d.source, splits[d.source].train + o) for d, o in zip(sources, offsets)]),
            ("dev", [(d.source, splits[d.source].dev + o) for d, o in zip(sources, offsets)]),
        ]
        if combined:
            plan += [(f"test_{d.source}", [(d.source, splits[d.source].test + o)]) for d, o in zip(sources, offsets)]
        else:
            plan.append(("test", [(sources[0].source, splits[sources[0].source].test + offsets[0])]))
        plan = [(name, parts) for name, parts in plan if sum(len(rows) for _, rows in parts)]

        written: dict[str, dict] = {}
        staged: dict[str, Path] = {}
        for name, parts in plan:  # copy rows out of the all-images file first, then drop it
            rows = np.concatenate([rows for _, rows in parts])
            staged[name] = out_dir / f".{name}.tmp.npy"
            temporaries.append(staged[name])
            _copy_rows(features, rows, staged[name])
        del features
        all_path.unlink(missing_ok=True)
        for name, parts in plan:
            rows = np.concatenate([rows for _, rows in parts])
            captions, owner = [], []
            for row_in_split, row in enumerate(rows):
                for caption in items[row].captions:
                    captions.append(caption)
                    owner.append(row_in_split)
            images = np.load(staged[name], mmap_mode="r")
            write_split(out_dir, name, images, captions, caption_images=np.asarray(owner, dtype=np.int64))
            del images
            staged[name].unlink(missing_ok=True)
            ranges, at = {}, 0
            for source, part in parts:
                ranges[source] = [at, at + len(part)]
                at += len(part)
            written[name] = {"n_images": int(len(rows)), "n_captions": len(captions),
                             "sources": ranges, "images": [items[row].name for row in rows]}
    finally:
        for path in temporaries:
            path.unlink(missing_ok=True)
    for stale in set(available_splits(out_dir)) - set(written):  # from an earlier run with other sizes
        _remove_split(out_dir, stale)

    vocab = build_and_save_vocab(out_dir)
    log("splits: " + ", ".join(f"{name} {s['n_images']:,} images / {s['n_captions']:,} captions"
                               for name, s in written.items()) + f"; vocabulary {len(vocab):,} words (from train)")

    # -- how much of each held-out split's text the training captions hold verbatim (other sources included)
    train_texts = {normalise_text(c) for row in np.concatenate([r for _, r in plan[0][1]]) for c in items[row].captions}
    per_source = {}
    for data, offset in zip(sources, offsets):
        split = splits[data.source]
        test_name = f"test_{data.source}" if combined else "test"
        test_caps = [c for i in split.test for c in data.items[i].captions]
        seen = sum(normalise_text(c) in train_texts for c in test_caps)
        per_source[data.source] = {
            **data.facts,
            "images": len(data.items), "concepts": data.n_concepts, "captions": data.n_captions,
            "images_per_vendor": dict(sorted(Counter(item.vendor for item in data.items).items())),
            "grouping": split.report,
            "splits": {"train": len(split.train), "dev": len(split.dev), test_name: len(split.test)},
            "test_captions_in_train_verbatim": seen, "test_captions": len(test_caps),
        }
        if seen:
            log(f"{data.source}: {seen} of {len(test_caps)} {test_name} captions occur verbatim in train "
                f"(normalised), from other concepts or sources")

    manifest = {
        "source": sources[0].source if not combined else "+".join(d.source for d in sources),
        "feature_model": MODEL_NAME, "image_size": extractor.image_size,
        "regions": extractor_shape(extractor)[0], "feature_dim": extractor_shape(extractor)[1],
        "captions_per_image": "variable: {split}_cap2img.npy names each caption's image",
        "seed": seed, "requested": {"dev": n_dev, "test": n_test, "per": "source, one image per concept group"},
        "feature_seconds": round(feature_seconds, 1),
        "vocab_size": len(vocab),
        "images_root": str(Path(images_root).resolve()) if images_root is not None else "/",
        "sources": per_source,
        **(manifest_extra or {}),
        "splits": written,
    }
    _write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def extractor_shape(extractor) -> tuple[int, int]:
    """(regions, dims) of one image's features: FeatureExtractor's grid at its resolution (49 x 1280 at 224 px);
    stand-ins in tests may say otherwise."""
    from temde.features import FEATURE_DIM, REGIONS

    return int(getattr(extractor, "regions", REGIONS)), int(getattr(extractor, "feature_dim", FEATURE_DIM))
