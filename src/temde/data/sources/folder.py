"""`temde prepare folder`: a folder of images + a TSV of captions -> the precomp layout temde trains on.

Caption file: one `image_file<TAB>caption` per line, UTF-8, several lines per image allowed, image paths
relative to the image folder; blank lines are ignored. Images keep the order of their first line.

The precomp layout needs the same number k of captions for every image. k is the most common count (ties: the
smaller); an image with fewer captions repeats its own captions cyclically, one with more keeps its first k.
`build_dataset` is the path every source shares: features, leakage-free split, files, vocabulary, manifest.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from temde.data.sources.splits import NEAR_DUPLICATE_COSINE, grouped_split
from temde.errors import DataError

MANIFEST_FILE = "manifest.json"


@dataclass
class CaptionTable:
    """Parsed caption file: images in order of first mention, their captions, and the line of each caption."""
    path: Path
    images: list[str] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    lines: list[list[int]] = field(default_factory=list)


def read_caption_table(path: str | os.PathLike) -> CaptionTable:
    """Parse `image<TAB>caption` lines; a malformed line is a DataError naming the file and the line.

    Every line is checked before anything is used, and captions are keyed by their own line's image name, so
    a bad line can never shift captions against images.
    """
    from temde.data.precomp import read_utf8_text

    path = Path(path)
    text = read_utf8_text(path)
    table = CaptionTable(path)
    index_of: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            what = "no tab" if len(fields) == 1 else f"{len(fields)} tab-separated fields"
            raise DataError(f"{path}: line {number}: expected 'image_file<TAB>caption', found {what}")
        image, caption = fields[0].strip(), " ".join(fields[1].split())
        if not image:
            raise DataError(f"{path}: line {number}: empty image file name")
        if not caption:
            raise DataError(f"{path}: line {number}: empty caption for {image!r}")
        if image not in index_of:
            index_of[image] = len(table.images)
            table.images.append(image)
            table.captions.append([])
            table.lines.append([])
        table.captions[index_of[image]].append(caption)
        table.lines[index_of[image]].append(number)
    if not table.images:
        raise DataError(f"{path}: no captions found")
    return table


def choose_captions_per_image(counts: Sequence[int]) -> int:
    """The most common number of captions per image; ties go to the smaller count (fewer invented repeats)."""
    histogram = Counter(counts)
    return min(histogram, key=lambda c: (-histogram[c], c))


def fit_captions(captions: Sequence[str], k: int) -> list[str]:
    """Exactly k captions: the first k, or the captions repeated cyclically up to k."""
    if not captions or k < 1:
        raise ValueError(f"need at least one caption and k >= 1, got {len(captions)} captions and k={k}")
    return [captions[i % len(captions)] for i in range(k)]


def _write_json(path: Path, data: dict) -> None:
    from temde.data.vocab import atomic_write

    with atomic_write(path) as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")


def _distinct_first_rows(indices, features):
    """Image order for a k = 1 file whose first two rows must differ.

    Readers of the precomp layout (ours and the field's) take a file whose leading rows are bitwise-equal as
    "each image stored k times". With one caption per image that would misread two identical pictures at the
    top of a split (openclipart has byte-identical PNGs, grouped together and hence adjacent), so the first
    image that differs from row 0 is moved up to row 1. Order is otherwise kept; the manifest follows it.
    """
    indices = list(indices)
    first = features[indices[0]]
    for position in range(1, len(indices)):
        if not np.array_equal(features[indices[position]], first):
            if position > 1:
                indices.insert(1, indices.pop(position))
            break
    return indices


def build_dataset(out_dir: str | os.PathLike, image_paths: Sequence[Path], captions: Sequence[Sequence[str]], *,
                  names: Sequence[str], source: str, n_dev: int, n_test: int, seed: int, extractor,
                  captions_per_image: int | None = None, group_texts: Sequence[Sequence[str]] | None = None,
                  threshold: float = NEAR_DUPLICATE_COSINE, manifest_extra: dict | None = None,
                  log=print) -> dict:
    """The path every source shares: features -> grouped split -> {split}_ims.npy/_caps.txt -> vocab -> manifest.

    image_paths[i] has captions[i] (any number >= 1) and is listed as names[i] in the manifest. group_texts[i]
    are extra texts that identify image i for grouping (e.g. its title). extractor: a FeatureExtractor.
    Returns the manifest (also written to out_dir/manifest.json, last, so its presence means "complete").
    """
    from temde.data.precomp import build_and_save_vocab, caption_file, image_file, write_split
    from temde.features import MODEL_NAME

    n = len(image_paths)
    if not (len(captions) == len(names) == n) or (group_texts is not None and len(group_texts) != n):
        raise ValueError("image_paths, captions, names (and group_texts) must have one entry per image")
    counts = [len(c) for c in captions]
    k = captions_per_image or choose_captions_per_image(counts)
    fewer, more = sum(c < k for c in counts), sum(c > k for c in counts)
    rule = "given" if captions_per_image else "most common count"
    adjusted = [f"{fewer} image(s) with fewer repeat theirs cyclically"] if fewer else []
    adjusted += [f"{more} with more keep their first {k}"] if more else []
    log(f"k = {k} caption{'s' if k > 1 else ''} per image ({rule})" + "".join(f"; {a}" for a in adjusted))
    if n_dev + n_test >= n:
        share = max(1, n // 10)
        hint = f"; with {n} images try --dev {share} --test {share}" if n >= 3 else ""
        raise DataError(f"--dev {n_dev} + --test {n_test} leaves no training images out of {n}{hint}")

    features = extractor.extract(image_paths)
    texts = [list(c) + list(group_texts[i] if group_texts is not None else ()) for i, c in enumerate(captions)]
    split = grouped_split(texts, features, n_dev, n_test, seed, threshold)
    groups = split.groups
    log(f"grouping: {groups.merged_groups} merged groups holding {groups.images_in_merged_groups} of {n} images "
        f"({groups.text_unions} merges by identical normalised text, {groups.feature_unions} by feature cosine "
        f">= {threshold}); {groups.n_groups} groups in all")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # an older manifest must not vouch for new files
    splits = {}
    for name, indices in split.as_dict().items():
        if len(indices) == 0:
            if name == "train" or (name == "dev" and n_dev) or (name == "test" and n_test):
                raise DataError(f"{name} split is empty: every group is larger than the room left; lower "
                                f"--dev/--test or check for one huge group of duplicates")
            for stale in (image_file(out_dir, name), caption_file(out_dir, name)):  # from an older run
                stale.unlink(missing_ok=True)
            continue
        if k == 1:
            indices = _distinct_first_rows(indices, features)
        split_captions = [c for i in indices for c in fit_captions(captions[i], k)]
        write_split(out_dir, name, features[indices], split_captions)
        splits[name] = {"n_images": int(len(indices)), "n_captions": len(split_captions),
                        "images": [names[i] for i in indices]}
    vocab = build_and_save_vocab(out_dir)
    log("splits: " + ", ".join(f"{name} {s['n_images']} images / {s['n_captions']} captions"
                               for name, s in splits.items()) + f"; vocabulary {len(vocab)} words (from train)")
    manifest = {
        "source": source,
        "feature_model": MODEL_NAME, "image_size": extractor.image_size,
        "regions": int(features.shape[1]), "feature_dim": int(features.shape[2]),
        "captions_per_image": k, "caption_rule": f"{rule}; fewer -> repeated cyclically, more -> first k",
        "images_with_fewer_captions": fewer, "images_with_more_captions": more,
        "seed": seed, "requested": {"dev": n_dev, "test": n_test},
        "grouping": {"near_duplicate_cosine": threshold, "n_groups": groups.n_groups,
                     "merged_groups": groups.merged_groups,
                     "images_in_merged_groups": groups.images_in_merged_groups,
                     "text_unions": groups.text_unions, "feature_unions": groups.feature_unions},
        "vocab_size": len(vocab),
        **(manifest_extra or {}),
        "splits": splits,
    }
    _write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def older_dataset(folder: Path) -> dict | None:
    """The settings of a data set prepared before output records existed, as far as its manifest tells them
    (temde.outputs); {} when it does not tell them, None when the folder holds no data set."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {} if any(folder.glob("*_ims.npy")) else None
    if not isinstance(manifest, dict) or "splits" not in manifest:
        return None
    facts = manifest.get("openclipart")
    if manifest.get("source") != "openclipart" or not isinstance(facts, dict):
        return {}  # a folder source: its caption file's content was not recorded
    origin = str(facts.get("origin", ""))
    requested = manifest.get("requested", {})
    return {"source": "openclipart", "limit": facts.get("limit"), "dev": requested.get("dev"),
            "test": requested.get("test"), "seed": manifest.get("seed"),
            "max_title_repeats": facts.get("max_title_repeats"),
            "root": None if origin.startswith(("system install", "apt-get download")) else origin,
            "image_size": manifest.get("image_size")}


def claim_dataset_folder(out_dir: str | os.PathLike, settings: dict, force: bool, log=print):
    """The output-folder policy (temde.outputs) for `temde prepare`: a folder holding something else is refused;
    a data set prepared with other settings needs --force; the same settings rebuild it (features are cached)."""
    from temde.outputs import claim_folder

    claim = claim_folder(out_dir, "prepare", settings, force=force, legacy=older_dataset,
                         names={"captions_sha256": "the content of --captions", "image_size": "--resolution"})
    if claim.state == "same":
        log(f"{out_dir}: prepared before with the same settings; rebuilding it")
    elif claim.state == "replace":
        log(f"{out_dir}: --force: replacing the data set prepared there ({'; '.join(claim.differences)})")
    return claim


def prepare_folder(images_dir: str | os.PathLike, captions_file: str | os.PathLike, out_dir: str | os.PathLike,
                   *, n_dev: int, n_test: int, seed: int, extractor, captions_per_image: int | None = None,
                   force: bool = False, log=print) -> dict:
    """Check the caption file against the image folder, claim `out_dir` (see `claim_dataset_folder`; `force`
    replaces a data set prepared there with other settings), then `build_dataset`."""
    import hashlib

    from temde.features import UnreadableImagesError, find_unreadable

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    table = read_caption_table(captions_file)
    paths = [images_dir / name for name in table.images]
    first_line = min(lines[0] for lines in table.lines)
    for path, name, lines in zip(paths, table.images, table.lines):
        if not path.is_file():
            # A header row ("file<TAB>caption") is the usual reason the first line names no image.
            hint = ("; if line 1 is a header row, delete it (the caption file has none)"
                    if lines[0] == first_line and len(paths) > 1 else "")
            raise DataError(f"{table.path}: line {lines[0]}: image {name!r} not found in {images_dir}{hint}")
    log(f"{len(paths)} images, {sum(map(len, table.captions))} captions from {table.path}")
    claim_dataset_folder(out_dir, {
        "source": "folder", "images": str(images_dir.resolve()), "captions": str(table.path.resolve()),
        "captions_sha256": hashlib.sha256(table.path.read_bytes()).hexdigest(),
        "captions_per_image": captions_per_image, "dev": n_dev, "test": n_test, "seed": seed,
        "image_size": extractor.image_size}, force, log)
    try:
        # Headers only, before the long feature pass: a file that is no image at all fails in seconds.
        unreadable = find_unreadable(paths)
        if unreadable:
            raise UnreadableImagesError(unreadable)
        return build_dataset(out_dir, paths, table.captions, names=table.images, source="folder",
                             n_dev=n_dev, n_test=n_test, seed=seed, extractor=extractor,
                             captions_per_image=captions_per_image,
                             manifest_extra={"images_root": str(images_dir.resolve()),
                                             "captions_file": str(table.path.resolve())}, log=log)
    except UnreadableImagesError as exc:
        index, _, reason = exc.failures[0]
        more = f" ({len(exc.failures) - 1} more unreadable images)" if len(exc.failures) > 1 else ""
        raise DataError(f"{table.path}: line {table.lines[index][0]}: image {table.images[index]!r} is unreadable "
                        f"({reason}){more}") from None
