"""`temde prepare openclipart`: the public-domain Open Clip Art Library (Debian openclipart-svg/-png) as a
caption data set.

Each SVG carries RDF metadata written by its author: `dc:title`, `dc:description`, `dc:subject` keywords. The
PNG rendering beside it is the image. What the data looks like (openclipart 0.18, 7,458 distinct files):

- titles: 2,776 distinct; a few are collection boilerplate repeated on hundreds of images ("gramastar" x1375,
  "Part of the Flat Icon Collection (<date>)" x900, "Lemon SVG theme" x416). A title shared by more than
  `MAX_TITLE_REPEATS` images (after `normalise_text`) describes none of them: those images are dropped.
  About 3,100 images keep a distinctive title.
- descriptions: on ~1,200 of those, median 3 words; some are again boilerplate (an e-mail address on 119
  images, "EPS converted from http://aiga.org") and get the same repeat rule; URLs and e-mails are removed.
- keywords: short tags ("food, strawberry, fruit"), plus export junk ("hash", "HASH(0x8660044)", "unsorted").

So each image gets ONE caption (k = 1): "title. description. keyword, keyword" — a second, keyword-only caption
would be shared by hundreds of flags or fruits and could not identify its image. Nothing comes from file or
folder names. For the leakage grouping, the title and description also count as identifying texts, so images
with the same title stay in one split even when their keywords differ.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from temde.data.sources.splits import normalise_text
from temde.errors import DataError

PACKAGES = ("openclipart-svg", "openclipart-png")
SYSTEM_ROOT = Path("/usr/share/openclipart")  # where the Debian packages install
MAX_TITLE_REPEATS = 10
MAX_DESCRIPTION_WORDS = 12
MAX_KEYWORDS = 8
# Captions of the field run ~12 words (Flickr30K, COCO); the cross-attention cost of SAF/SGR grows with the longest
# caption of a batch, so a caption keeps its first 18 words (keywords come last and are cut first).
MAX_CAPTION_WORDS = 18
DEFAULT_DEV = DEFAULT_TEST = 500  # ~3,100 usable images: 500 + 500 still leaves ~2,100 to train on
# "hash" and "HASH(0x...)" are Perl references printed by the library's old export; "unsorted" is a placeholder.
JUNK_KEYWORDS = frozenset({"hash", "unsorted"})

_DC = "http://purl.org/dc/elements/1.1/"
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_RDF_BLOCK = re.compile(r"<(?:[\w.-]+:)?RDF\b.*?</(?:[\w.-]+:)?RDF\s*>", re.S)
_URL_OR_EMAIL = re.compile(r"(?:https?://|www\.)\S+|\S+@\S+|hash\(0x[0-9a-f]+\)", re.I)
_CLIPART_BY = re.compile(r"^clip\s*art\s+by\s+[^-]+-\s*", re.I)  # "Clipart by Nicu Buculei - pear" -> "pear"
_DEFAULT_NAMESPACES = {"rdf": _RDF, "dc": _DC, "cc": "http://web.resource.org/cc/"}


# ---------------------------------------------------------------- SVG metadata

@dataclass(frozen=True)
class SvgMetadata:
    title: str = ""
    description: str = ""
    keywords: tuple[str, ...] = ()
    creator: str = ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(element: ET.Element | None) -> str:
    return " ".join("".join(element.itertext()).split()) if element is not None else ""


def _parse_rdf(block: str) -> ET.Element:
    try:
        return ET.fromstring(block)
    except ET.ParseError:
        # The prefixes are often declared on the <svg> root, outside the block: declare the usual ones here.
        head_end = block.index(">")
        head = block[:head_end]
        extra = "".join(f' xmlns:{p}="{uri}"' for p, uri in _DEFAULT_NAMESPACES.items() if f"xmlns:{p}=" not in head)
        return ET.fromstring(head + extra + block[head_end:])


def parse_svg_metadata(svg: str | bytes) -> SvgMetadata:
    """Title, description, keywords and creator of the work described in an SVG's RDF metadata.

    Only the work's own fields are read (the creator's and publisher's dc:title are names, not captions).
    Missing or unparsable metadata gives empty fields.
    """
    if isinstance(svg, bytes):
        svg = svg.decode("utf-8", errors="replace")
    match = _RDF_BLOCK.search(svg)
    if not match:
        return SvgMetadata()
    try:
        rdf = _parse_rdf(match.group(0))
    except ET.ParseError:
        return SvgMetadata()
    work = next((el for el in rdf if _local(el.tag) == "Work"), None)
    if work is None:
        return SvgMetadata()

    def field(name: str) -> ET.Element | None:
        return work.find(f"{{{_DC}}}{name}")

    subject = field("subject")
    keywords: list[str] = []
    if subject is not None:
        items = subject.findall(f".//{{{_RDF}}}li")
        raw = [_text(li) for li in items] if items else [_text(subject)]
        keywords = [k.strip() for item in raw for k in item.split(",") if k.strip()]
    creator = field("creator")
    return SvgMetadata(title=_text(field("title")), description=_text(field("description")),
                       keywords=tuple(keywords),
                       creator=_text(creator.find(f".//{{{_DC}}}title")) if creator is not None else "")


# ---------------------------------------------------------------- captions

@dataclass(frozen=True)
class ClipArt:
    name: str           # PNG path relative to the openclipart root, e.g. "png/food/fruit/strawberry.png"
    svg: Path
    png: Path
    meta: SvgMetadata


def _clean(text: str) -> str:
    return " ".join(_URL_OR_EMAIL.sub(" ", text).split())


def _title(meta: SvgMetadata) -> str:
    return _CLIPART_BY.sub("", _clean(meta.title))


def scan_openclipart(root: str | os.PathLike) -> tuple[list[ClipArt], dict]:
    """Every distinct SVG under root/svg with its PNG under root/png, sorted by path; symlinked copies count
    once. Returns (items, counts)."""
    root = Path(root)
    svg_root = (root / "svg").resolve()
    seen: set[Path] = set()
    items: list[ClipArt] = []
    no_png = 0
    for directory, _, files in sorted(os.walk(svg_root)):
        for file in sorted(files):
            if not file.endswith(".svg"):
                continue
            real = (Path(directory) / file).resolve()
            if real in seen:
                continue
            seen.add(real)
            relative = real.relative_to(svg_root)
            png = root / "png" / relative.with_suffix(".png")
            if not png.is_file():
                no_png += 1
                continue
            items.append(ClipArt(f"png/{relative.with_suffix('.png').as_posix()}", real, png,
                                 parse_svg_metadata(real.read_bytes())))
    items.sort(key=lambda item: item.name)
    return items, {"svg_files": len(seen), "without_png": no_png}


def make_captions(items: list[ClipArt], max_title_repeats: int = MAX_TITLE_REPEATS
                  ) -> tuple[list[tuple[ClipArt, str, list[str]]], dict]:
    """(item, caption, identifying texts) for every image with a distinctive title, plus drop counts."""
    from temde.data.tokenizer import tokenize

    title_count = Counter(normalise_text(_title(item.meta)) for item in items)
    description_count = Counter(normalise_text(_clean(item.meta.description)) for item in items)
    kept, no_title, boilerplate = [], 0, 0
    for item in items:
        title = _title(item.meta)
        title_key = normalise_text(title)
        if not title_key:
            no_title += 1
            continue
        if title_count[title_key] > max_title_repeats:
            boilerplate += 1
            continue
        creator_key = normalise_text(item.meta.creator)
        description = _clean(item.meta.description)
        description_key = normalise_text(description)
        if (description_key in ("", title_key, creator_key)
                or description_count[description_key] > max_title_repeats):
            description = ""
        description = " ".join(description.split()[:MAX_DESCRIPTION_WORDS])
        # The regex's words, as when the data set was made: NLTK's would keep "bird." whole in "Night bird. mail"
        # and so keep keywords that repeat the title or description, changing the captions.
        seen_words = set(tokenize(f"{title} {description}", "words"))
        keywords: list[str] = []
        for keyword in item.meta.keywords:
            keyword = _clean(keyword.replace("_", " ")).lower()
            key = normalise_text(keyword)
            words = set(tokenize(keyword, "words"))
            if not key or key in JUNK_KEYWORDS or key == creator_key or words <= seen_words:
                continue  # junk, the author's name, or nothing the title/description does not already say
            seen_words |= words
            keywords.append(keyword)
        parts = [title.rstrip(". "), description.rstrip(". "), ", ".join(keywords[:MAX_KEYWORDS])]
        caption = ". ".join(p for p in parts if p)
        words = caption.split()
        if len(words) > MAX_CAPTION_WORDS:
            caption = " ".join(words[:MAX_CAPTION_WORDS]).rstrip(",.;: ")
        kept.append((item, caption, [title, description] if description else [title]))
    return kept, {"without_title": no_title, "boilerplate_title": boilerplate, "kept": len(kept)}


def deterministic_subset(kept: list, limit: int | None) -> list:
    """The first `limit` items in an order fixed by a hash of their names (spread over all categories, the
    same on every machine), returned in their original order."""
    if limit is None or limit >= len(kept):
        return kept
    ranked = sorted(range(len(kept)), key=lambda i: hashlib.sha1(kept[i][0].name.encode()).hexdigest())
    return [kept[i] for i in sorted(ranked[:limit])]


# ---------------------------------------------------------------- download

def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def _apt_download(debs: Path, log) -> None:
    """`apt-get download` the packages into `debs` (no root needed); one `apt-get update` first if the package
    lists are empty and we are root."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataError(f"apt-get/dpkg-deb not found: the openclipart source needs Debian/Ubuntu packages "
                        f"({', '.join(PACKAGES)}); install them, or run on a Debian-based system")
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=debs, prefix=".download.") as tmp:
        result = _run(["apt-get", "download", *PACKAGES], cwd=Path(tmp))
        if result.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            log("apt-get download failed; running `apt-get update` once (root) and retrying")
            _run(["apt-get", "update"])
            result = _run(["apt-get", "download", *PACKAGES], cwd=Path(tmp))
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"apt-get download {' '.join(PACKAGES)} failed ({reason}); run `sudo apt-get update` "
                            f"and retry, or `sudo apt-get install {' '.join(PACKAGES)}`")
        for deb in Path(tmp).glob("*.deb"):
            os.replace(deb, debs / deb.name)


def ensure_openclipart(cache_root: str | os.PathLike, log=print) -> tuple[Path, dict]:
    """The openclipart root (holding svg/ and png/): the system install if present, else downloaded and
    extracted under cache_root/openclipart. Returns (root, facts about where it came from)."""
    if (SYSTEM_ROOT / "svg").is_dir() and (SYSTEM_ROOT / "png").is_dir():
        return SYSTEM_ROOT, {"origin": "system install"}
    base = Path(cache_root) / "openclipart"
    extracted = base / "extracted"
    root = extracted / "usr" / "share" / "openclipart"
    debs = base / "debs"
    facts: dict = {"origin": f"apt-get download into {base}"}
    if (extracted / ".complete").is_file():
        facts["debs"] = sorted(p.name for p in debs.glob("*.deb"))
        return root, facts
    missing = [p for p in PACKAGES if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        log(f"downloading {', '.join(PACKAGES)} with apt-get into {debs} (~156 MB) ...")
        start = time.perf_counter()
        _apt_download(debs, log)
        facts["download_s"] = round(time.perf_counter() - start, 1)
        log(f"downloaded in {facts['download_s']} s")
    start = time.perf_counter()
    # Extract into a fresh temporary folder and rename it into place: an interrupted run leaves no half tree.
    shutil.rmtree(base / "extracting", ignore_errors=True)
    for package in PACKAGES:
        deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
        result = _run(["dpkg-deb", "-x", str(deb), str(base / "extracting")])
        if result.returncode != 0:
            raise DataError(f"{deb}: dpkg-deb -x failed ({result.stderr.strip()}); delete it and run again")
    (base / "extracting" / ".complete").write_text("ok\n")
    shutil.rmtree(extracted, ignore_errors=True)
    os.replace(base / "extracting", extracted)
    facts["extract_s"] = round(time.perf_counter() - start, 1)
    facts["debs"] = sorted(p.name for p in debs.glob("*.deb"))
    log(f"extracted in {facts['extract_s']} s to {root}")
    return root, facts


# ---------------------------------------------------------------- the command

def prepare_settings(limit: int | None, n_dev: int, n_test: int, seed: int, max_title_repeats: int,
                     root: str | os.PathLike | None, image_size: int) -> dict:
    """What decides an openclipart data set, as recorded in its folder (temde.outputs)."""
    return {"source": "openclipart", "limit": limit, "dev": n_dev, "test": n_test, "seed": seed,
            "max_title_repeats": max_title_repeats, "root": None if root is None else str(Path(root).resolve()),
            "image_size": image_size}


def prepare_openclipart(out_dir: str | os.PathLike, cache_root: str | os.PathLike, *, extractor,
                        limit: int | None = None, n_dev: int = DEFAULT_DEV, n_test: int = DEFAULT_TEST,
                        seed: int = 0, max_title_repeats: int = MAX_TITLE_REPEATS,
                        root: str | os.PathLike | None = None, force: bool = False, log=print) -> dict:
    """Find or download openclipart, caption it, and build the data set through `build_dataset`.

    root: an openclipart folder (svg/ + png/) to use instead of the system install or the download.
    out_dir is claimed first (temde.data.sources.folder.claim_dataset_folder; `force` replaces a data set
    prepared there with other settings), before anything is downloaded.
    """
    from temde.data.sources.folder import build_dataset, claim_dataset_folder

    claim_dataset_folder(out_dir, prepare_settings(limit, n_dev, n_test, seed, max_title_repeats, root,
                                                   extractor.image_size), force, log)

    if root is None:
        root, facts = ensure_openclipart(cache_root, log)
    else:
        root, facts = Path(root), {"origin": str(root)}
    start = time.perf_counter()
    items, counts = scan_openclipart(root)
    if not items:
        raise DataError(f"{root}: no SVG/PNG pairs found under svg/ and png/")
    kept, dropped = make_captions(items, max_title_repeats)
    log(f"{counts['svg_files']} distinct SVGs, {len(items)} with a PNG; {dropped['kept']} keep a distinctive title "
        f"({dropped['boilerplate_title']} dropped for a title shared by > {max_title_repeats} images, "
        f"{dropped['without_title']} for no title) [{time.perf_counter() - start:.1f} s]")
    kept = deterministic_subset(kept, limit)
    if limit is not None:
        log(f"--limit {limit}: using {len(kept)} images")
    start = time.perf_counter()
    manifest = build_dataset(
        out_dir, [item.png for item, _, _ in kept], [[caption] for _, caption, _ in kept],
        names=[item.name for item, _, _ in kept], source="openclipart", n_dev=n_dev, n_test=n_test, seed=seed,
        extractor=extractor, captions_per_image=1, group_texts=[texts for _, _, texts in kept],
        manifest_extra={"images_root": str(Path(root).resolve()), "openclipart": {
            **facts, **counts, **dropped, "max_title_repeats": max_title_repeats, "limit": limit,
            "caption_rule": "title. description. keywords (one caption per image)"}},
        log=log)
    seconds = time.perf_counter() - start
    log(f"features + split + files: {seconds:.0f} s ({extractor.images_computed} images through the network)")
    return manifest
