"""What the page shows next to an id: the captions of the indexed split and thumbnails of its image files.

Image files come from the data folder's `manifest.json` (written by `temde prepare`), read as `temde search --html`
reads it: the split lists its image names, relative to the manifest's `images_root` (the folder they were prepared
from) or, without one, to the data folder. A precomp folder without a manifest (the field's BUTD features) has
no image files: results then show their captions, or only their ids when the data folder itself is gone.

A request names an integer id, never a file: the id picks an entry of the list above or gets a 404.
"""
from __future__ import annotations

import io
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from temde.errors import DataError

MANIFEST_FILE = "manifest.json"
THUMBNAIL_SIZE = 256  # pixels on a side: the grid's cell, and small enough to keep hundreds in memory
THUMBNAIL_CACHE = 1024  # thumbnails kept (~30 KB each for clip art): a page of results is served from memory
MAX_IMAGE_FILE_BYTES = 256 << 20  # an indexed file larger than this is not read for a thumbnail

# SVG can carry scripts: served only as an image, sandboxed, so opening /thumb/ID directly runs nothing.
SVG_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox"}


def manifest_image_files(data_dir: str | os.PathLike, split: str, n_images: int) -> tuple[list[Path] | None, str]:
    """(image files of `split` in image order, or None; a note saying why not). The manifest is read by
    `temde.index.html.read_manifest` (the same rules as `temde search --html`); a missing or unusable manifest is a
    note, not an error: the service then shows captions and ids instead of pictures."""
    from temde.index.html import read_manifest as manifest_files

    try:
        files = manifest_files(data_dir, split, n_images)
    except DataError as exc:
        return None, f"{exc}; no thumbnails"
    if files is None:
        return None, f"{Path(data_dir) / MANIFEST_FILE} lists no image files for split {split!r} (results show " \
                     f"captions and ids)"
    missing = [file for file in files if not file.is_file()]
    if missing:
        return files, f"{len(files) - len(missing)} of {len(files)} image files found (missing: {missing[0]} ...)"
    return files, f"{len(files)} image files under {os.path.commonpath(files)}"


def read_manifest(data_dir: str | os.PathLike) -> dict | None:
    """The data folder's manifest as a dict, or None if there is none or it cannot be read."""
    try:
        manifest = json.loads((Path(data_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


@dataclass(frozen=True)
class Thumbnail:
    body: bytes
    content_type: str
    headers: dict[str, str]


class Gallery:
    """Captions and image files of the indexed split, by id. `captions` None: the data folder is gone (ids only).

    Thumbnails are made on first request (white-padded squares, as the features saw the images) and kept in a
    small LRU cache; a huge source image (openclipart has 600-megapixel PNGs) is reduced once, not per request.
    """

    def __init__(self, n_images: int, captions: Sequence[str] | None = None, captions_per_image: Any = 1,
                 files: Sequence[Path] | None = None):
        if files is not None and len(files) != n_images:
            raise ValueError(f"{len(files)} image files for {n_images} images")
        self.n_images = n_images
        self.captions = list(captions) if captions is not None else None
        self.captions_per_image = captions_per_image  # k, or the caption->image index of a cap2img split
        self.files = list(files) if files is not None else None
        self._thumbnails: OrderedDict[int, Thumbnail] = OrderedDict()
        self._lock = threading.Lock()

    def has_image(self, image_id: int) -> bool:
        return 0 <= image_id < self.n_images

    def image_url(self, image_id: int) -> str | None:
        """The thumbnail URL of an image, or None when there is no file to show."""
        if self.files is None or not self.has_image(image_id) or not self.files[image_id].is_file():
            return None
        return f"/thumb/{image_id}"

    def image_captions(self, image_id: int) -> list[str]:
        if self.captions is None or not self.has_image(image_id):
            return []
        from temde.data.precomp import captions_of_image

        return [self.captions[j] for j in captions_of_image(self.captions_per_image, image_id)]

    def caption(self, caption_id: int) -> str | None:
        if self.captions is None or not 0 <= caption_id < len(self.captions):
            return None
        return self.captions[caption_id]

    def thumbnail(self, image_id: int) -> Thumbnail | None:
        """The image's thumbnail, or None when the id or its file does not exist (the caller answers 404)."""
        if self.files is None or not self.has_image(image_id):
            return None
        with self._lock:
            if image_id in self._thumbnails:
                self._thumbnails.move_to_end(image_id)
                return self._thumbnails[image_id]
        made = self._make(self.files[image_id])
        if made is not None:
            with self._lock:
                self._thumbnails[image_id] = made
                while len(self._thumbnails) > THUMBNAIL_CACHE:
                    self._thumbnails.popitem(last=False)
        return made

    @staticmethod
    def _make(file: Path) -> Thumbnail | None:
        try:
            if file.stat().st_size > MAX_IMAGE_FILE_BYTES:
                return None
            data = file.read_bytes()
        except OSError:
            return None
        if file.suffix.lower() == ".svg":  # vector and small: PIL cannot rasterise it, the browser can
            return Thumbnail(data, "image/svg+xml", SVG_HEADERS)
        from PIL import Image

        from temde.features import decode_image

        try:  # the features' own decoder: bounded memory on huge images, transparency on white, EXIF rotation
            pixels = decode_image(data, THUMBNAIL_SIZE)
        except Exception:  # PIL raises many types for a corrupt file; all mean "no thumbnail"
            return None
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
        return Thumbnail(buffer.getvalue(), "image/png", {})


def gallery_for(searcher, log=print) -> Gallery:
    """The Gallery of a Searcher's index: captions when its data folder still holds the split, files when the
    folder's manifest lists them. Each thing missing is one logged note, not an error."""
    meta = searcher.index.meta
    n_images = int(meta["counts"]["images"])
    try:
        split = searcher.split
    except DataError as exc:
        log(f"note: showing ids only: {exc}")
        return Gallery(n_images)
    files, note = manifest_image_files(searcher.data_dir, meta["split"], n_images)
    log(f"images: {note}")
    return Gallery(n_images, split.captions, split.layout, files)
