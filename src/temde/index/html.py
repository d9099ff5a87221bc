"""A static HTML page of search results (`temde search --html OUT`).

Images are shown when the data folder has a `manifest.json` that lists the image file of every image of the
split, in order (written by `temde prepare`); otherwise each result shows its image id. Accepted manifest shapes:
`{"splits": {split: [...]}}`, `{split: [...]}` or `{split: {"images": [...]}}`, each entry a path or an object
with a "file", "path" or "image" field. A relative path is relative to the manifest's "images_root" (where
`temde prepare` found the images; itself absolute or relative to the data folder) or, without one, to the data
folder. A page whose images cannot all be shown says which and why at its top (`image_problems`).
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from temde.data.precomp import captions_of_image, image_of_caption
from temde.data.vocab import atomic_write
from temde.errors import DataError

MANIFEST_FILE = "manifest.json"
IMAGE_MODES = ("relative", "absolute", "inline")
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".webp": "image/webp", ".svg": "image/svg+xml", ".bmp": "image/bmp"}
_THUMBNAIL = 256  # inline images are shrunk to this many pixels on their long side


# ------------------------------------------------------------------ manifest

def _entry_path(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        for key in ("file", "path", "image"):
            if isinstance(entry.get(key), str):
                return entry[key]
    return None


def read_manifest(data_dir: str | os.PathLike, split: str, n_images: int) -> list[Path] | None:
    """Image files of `split` in image order, or None when the folder has no manifest or it lists no such split.
    A manifest that exists but cannot be read, or lists another number of images, is a DataError."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object with one list of image files per split")
    splits = manifest.get("splits", manifest)
    entries = splits.get(split) if isinstance(splits, dict) else None
    if isinstance(entries, dict):
        entries = entries.get("images", entries.get("files"))
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise DataError(f"{path}: split {split!r} must list its image files")
    if len(entries) != n_images:
        raise DataError(f"{path}: split {split!r} lists {len(entries)} image files, the split has {n_images} images")
    root = manifest.get("images_root")
    if root is not None and not isinstance(root, str):
        raise DataError(f"{path}: images_root must be a folder path, got {root!r}")
    base = Path(data_dir) / root if root else Path(data_dir)  # an absolute root replaces the data folder
    files = []
    for number, entry in enumerate(entries):
        name = _entry_path(entry)
        if name is None:
            raise DataError(f"{path}: split {split!r} entry {number} names no image file")
        file = Path(name)
        files.append(file if file.is_absolute() else base / file)
    return files


def image_problems(image_ids: Sequence[int], files: Sequence[Path] | None, page: str | os.PathLike,
                   mode: str = "relative", data_dir: str | os.PathLike | None = None) -> str | None:
    """One sentence saying which of the images a page shows cannot be shown and why; None when all can.
    `files` None means the data folder lists no image files (then the page shows image ids)."""
    ids = list(dict.fromkeys(image_ids))
    if not ids:
        return None
    where = f" in {Path(data_dir) / MANIFEST_FILE}" if data_dir is not None else ""
    if files is None:
        folder = f"{data_dir} has" if data_dir is not None else "the data folder has"
        return (f"Images are shown by id only: {folder} no {MANIFEST_FILE} listing the split's image files "
                f"(`temde prepare` writes one).")
    missing = [files[i] for i in ids if not files[i].is_file()]
    if missing:
        return (f"{len(missing)} of the {len(ids)} images cannot be shown: their files are not where the "
                f"manifest{where} says, e.g. {missing[0]} (were the images moved or deleted? fix images_root "
                f"there, or prepare the data again).")
    unreadable = [files[i] for i in ids if image_source(files[i], Path(page), mode) is None]
    if unreadable:
        return (f"{len(unreadable)} of the {len(ids)} images cannot be shown: PIL cannot read them, e.g. "
                f"{unreadable[0]}.")
    return None


# ------------------------------------------------------------------ image sources

def _inline(file: Path) -> str:
    suffix = file.suffix.lower()
    if suffix == ".svg":  # vector: small already, and PIL cannot read it
        return f"data:image/svg+xml;base64,{base64.b64encode(file.read_bytes()).decode()}"
    from PIL import Image

    with Image.open(file) as image:
        image.draft("RGB", (_THUMBNAIL, _THUMBNAIL))  # JPEG decodes at reduced size: huge files stay cheap
        image.thumbnail((_THUMBNAIL, _THUMBNAIL))
        buffer = io.BytesIO()
        image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB").save(buffer, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def image_source(file: Path, page: Path, mode: str = "relative") -> str | None:
    """The `src` of an <img> for `file` on a page written to `page`; None if the file is missing or unreadable."""
    if mode not in IMAGE_MODES:
        raise ValueError(f"mode must be one of {list(IMAGE_MODES)}, got {mode!r}")
    if not file.is_file():
        return None
    if mode == "absolute":
        return file.resolve().as_uri()
    if mode == "relative":
        return quote(Path(os.path.relpath(file.resolve(), page.resolve().parent)).as_posix())
    try:
        return _inline(file)
    except (OSError, ValueError):  # PIL's UnidentifiedImageError is an OSError
        return None


# ------------------------------------------------------------------ page

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.3em; } .meta { color: #666; font-size: 0.9em; }
.hits { display: flex; flex-wrap: wrap; gap: 1em; }
.hit { width: 260px; border: 1px solid #ddd; border-radius: 6px; padding: 0.6em; }
.hit img, .query img { width: 240px; height: 200px; object-fit: contain; display: block; margin: 0 auto 0.4em; }
.noimg { height: 120px; display: flex; align-items: center; justify-content: center; background: #f3f3f3;
         color: #888; margin-bottom: 0.4em; }
.score { font-family: monospace; } .caps { font-size: 0.85em; color: #444; padding-left: 1.1em; }
.match { color: #0a7d22; font-weight: bold; }
.notice { background: #fff4ce; border: 1px solid #e0c060; border-radius: 6px; padding: 0.6em 0.8em; }
table { border-collapse: collapse; } td, th { padding: 0.3em 0.8em; border-bottom: 1px solid #eee; text-align: left; }
"""


def _image_block(image_id: int, files: Sequence[Path] | None, page: Path, mode: str) -> str:
    src = image_source(files[image_id], page, mode) if files is not None else None
    if src is None:
        note = f"image {image_id}" + ("" if files is None else " (file missing)")
        return f'<div class="noimg">{html.escape(note)}</div>'
    return f'<img src="{html.escape(src, quote=True)}" alt="image {image_id}" loading="lazy">'


def _score_text(hit) -> str:
    text = f"score {hit.score:.4f}" if hit.reranked else f"cosine {hit.cosine:.4f}"
    return text + (f" · cosine {hit.cosine:.4f}" if hit.reranked else "")


def write_search_page(out: str | os.PathLike, hits: Sequence, *, query_text: str | None = None,
                      query_image: int | None = None, captions: Sequence[str] | None = None,
                      captions_per_image: Any = 1, image_files: Sequence[Path] | None = None,
                      mode: str = "relative", subtitle: str = "", notice: str | None = None) -> Path:
    """Write the results page (atomically). Text query: `hits` are images, shown with their captions when
    `captions` is given. Image query: `hits` are captions (`captions` required), true matches marked.
    `notice`: a sentence shown at the top (why images are missing); by default `image_problems` of the page."""
    out = Path(out)
    if notice is None:
        shown = [hit.item for hit in hits] if query_text is not None else [query_image]
        notice = image_problems(shown, image_files, out, mode) if image_files is not None else None
    if (query_text is None) == (query_image is None):
        raise ValueError("give exactly one of query_text and query_image")
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>temde search: {html.escape(query_text if query_text is not None else f'image {query_image}')}"
             "</title>", f"<style>{_STYLE}</style></head><body>"]
    if query_text is not None:
        parts.append(f"<h1>Images for “{html.escape(query_text)}”</h1>")
    else:
        parts.append(f"<h1>Captions for image {query_image}</h1>")
        parts.append(f'<div class="query">{_image_block(query_image, image_files, out, mode)}</div>')
    if subtitle:
        parts.append(f'<p class="meta">{html.escape(subtitle)}</p>')
    if notice:
        parts.append(f'<p class="notice">{html.escape(notice)}</p>')
    if query_text is not None:
        parts.append('<div class="hits">')
        for hit in hits:
            parts.append('<div class="hit">')
            parts.append(_image_block(hit.item, image_files, out, mode))
            parts.append(f'<div>#{hit.rank} · image {hit.item}</div><div class="score">{_score_text(hit)}</div>')
            if captions is not None:
                own = [captions[j] for j in captions_of_image(captions_per_image, hit.item)]
                parts.append('<ul class="caps">' + "".join(f"<li>{html.escape(c)}</li>" for c in own) + "</ul>")
            parts.append("</div>")
        parts.append("</div>")
    else:
        if captions is None:
            raise ValueError("an image query's page needs the captions of the split")
        parts.append("<table><tr><th>#</th><th>caption</th><th>image</th><th>score</th></tr>")
        for hit in hits:
            image_id = image_of_caption(captions_per_image, hit.item)
            mark = ' class="match"' if image_id == query_image else ""
            parts.append(f"<tr><td>{hit.rank}</td><td{mark}>{html.escape(captions[hit.item])}</td>"
                         f"<td>{image_id}</td><td class=\"score\">{_score_text(hit)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    with atomic_write(out) as handle:
        handle.write("\n".join(parts) + "\n")
    return out
