"""openclipart re-captioned: title, description and specific keywords as separate captions of one image.

`temde prepare openclipart --captions separate` (and `temde prepare all`). The same Debian packages and SVG
metadata as `temde prepare openclipart` (temde.data.sources.openclipart), captioned differently:

- the title ("Candied Apples"), the description ("acoustic guitar"), and the image's *specific* keywords
  ("candy, apple, festive") become up to three captions of the image, instead of one joined caption;
- a keyword is specific when at most `MAX_KEYWORD_IMAGES` images carry it: "computer" (1,739 images) or
  "flag" (455) describe none of them, "peruvian" does;
- any caption whose normalised text is shared by more than `max_title_repeats` images is boilerplate and
  dropped ("gramastar" x1375, "Part of the Flat Icon Collection (...)" x900, an author's e-mail); URLs,
  e-mail addresses and exporter junk are removed first, as in the joined captions;
- an image keeps at least one caption or is not used.

Images that share a caption, or whose pictures are near-duplicates, form one group (see multicaption): held-out
splits take one image of a group.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from temde.data.sources.multicaption import SourceData, SourceItem, distinct_captions
from temde.data.sources.openclipart import (JUNK_KEYWORDS, MAX_DESCRIPTION_WORDS, MAX_TITLE_REPEATS, ClipArt,
                                            _clean, _title, ensure_openclipart, scan_openclipart)
from temde.data.sources.render import relative_name
from temde.data.sources.splits import normalise_text
from temde.errors import DataError

MAX_KEYWORD_IMAGES = 30  # a keyword on more images than this is not specific (measured: see docs/data.md)
MAX_KEYWORDS = 8


def separate_captions(items: list[ClipArt], max_title_repeats: int = MAX_TITLE_REPEATS,
                      max_keyword_images: int = MAX_KEYWORD_IMAGES) -> tuple[list[tuple[ClipArt, list[str]]], dict]:
    """(item, captions) for every image that keeps a caption, and counts of what was dropped."""
    def keywords_of(item: ClipArt) -> list[str]:
        creator = normalise_text(item.meta.creator)
        out, seen = [], set()
        for keyword in item.meta.keywords:
            keyword = _clean(keyword.replace("_", " ")).lower()
            key = normalise_text(keyword)
            if key and key not in JUNK_KEYWORDS and key != creator and key not in seen:
                seen.add(key)
                out.append(keyword)
        return out

    keyword_images = Counter(normalise_text(k) for item in items for k in keywords_of(item))
    candidates = []
    for item in items:
        title = _title(item.meta)
        description = " ".join(_clean(item.meta.description).split()[:MAX_DESCRIPTION_WORDS])
        if normalise_text(description) in (normalise_text(item.meta.creator),):
            description = ""
        specific = [k for k in keywords_of(item) if keyword_images[normalise_text(k)] <= max_keyword_images]
        candidates.append((item, [title, description, ", ".join(specific[:MAX_KEYWORDS])]))
    shared = Counter(key for _, texts in candidates for key in {normalise_text(t) for t in texts} if key)
    kept, counts = [], Counter()
    for item, (title, description, keywords) in candidates:
        captions = []
        for kind, text in (("title", title), ("description", description), ("keywords", keywords)):
            key = normalise_text(text)
            if not key:
                continue
            if shared[key] > max_title_repeats:
                counts[f"boilerplate_{kind}"] += 1
                continue
            captions.append(text.rstrip(". "))
            counts[f"{kind}_captions"] += 1
        captions = distinct_captions(captions)
        if captions:
            kept.append((item, captions))
        else:
            counts["images_without_caption"] += 1
    counts["kept"] = len(kept)
    return kept, dict(counts)


def collect_openclipart(cache_root: str | os.PathLike, *, root: str | os.PathLike | None = None,
                        names_root: str | os.PathLike | None = None, max_title_repeats: int = MAX_TITLE_REPEATS,
                        max_keyword_images: int = MAX_KEYWORD_IMAGES,
                        log: Callable[[str], None] = print) -> SourceData:
    """Find or download openclipart (see openclipart.ensure_openclipart), caption each image separately.

    Manifest names are relative to `names_root` (default: the openclipart root) where possible."""
    start = time.perf_counter()
    if root is None:
        root, facts = ensure_openclipart(cache_root, log)
    else:
        root, facts = Path(root), {"origin": str(root)}
    items, counts = scan_openclipart(root)
    if not items:
        raise DataError(f"{root}: no SVG/PNG pairs found under svg/ and png/")
    kept, dropped = separate_captions(items, max_title_repeats, max_keyword_images)
    names_root = Path(names_root) if names_root is not None else Path(root)
    source_items = [SourceItem(item.png, relative_name(item.png, names_root), captions, item.name, "openclipart")
                    for item, captions in kept]
    data = SourceData("openclipart", source_items,
                      {**facts, **counts, **dropped, "max_title_repeats": max_title_repeats,
                       "max_keyword_images": max_keyword_images, "root": str(Path(root).resolve()),
                       "caption_rule": "title / description / specific keywords as separate captions"})
    log(f"openclipart: {counts['svg_files']:,} distinct SVGs; {data.summary()} "
        f"[{time.perf_counter() - start:.1f} s]")
    return data
