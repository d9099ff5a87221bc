"""`temde prepare icons`: icon sets with a name and a tag list per icon, from pinned npm packages.

Sets (`ICON_SETS`; licences in docs/data.md):
- `@tabler/icons` — outline style; `icons.json` gives name, category, tags. The "Brand" category (logos,
  trademarks) is dropped.
- `lucide-static` — `tags.json` gives the tags of each current icon name (older alias files are skipped).
- `@fortawesome/fontawesome-free` — `metadata/icon-families.json`: label, search terms and the SVG of each
  free style; brand logos dropped, the solid drawing used (regular where there is no solid).
- `@phosphor-icons/core` — one weight (regular); name, tags and categories from `dist/index.mjs`; the
  "brands" category dropped.
- `@carbon/pictograms` — `metadata.json`: friendly name, aliases (its tags) and the SVG; deprecated ones dropped.
- `@iconify-json/game-icons` — game-icons.net's drawings; a name each, no tags.

An icon gets two captions: its name in words ("arrow big down") and its tags ("direction, south, download"),
tags without letters, of one letter, or equal to the name left out; a tag list shared by several concepts is
dropped (it cannot identify its icon). The concept key is the name's letters (normalised: digits and
punctuation dropped, so "box-multiple-2" and "box-multiple-3", or "heart" in five sets, are one concept and
never straddle two splits).
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from temde.data.sources.multicaption import (SourceData, SourceItem, chosen_concepts, distinct_captions,
                                             drop_shared_captions)
from temde.data.sources.npm import NpmPackage, fetch_all
from temde.data.sources.render import RenderJob, describe_failures, iconify_svg, png_path, relative_name, render_all
from temde.data.sources.splits import normalise_text
from temde.errors import DataError

TABLER = NpmPackage("@tabler/icons", "3.52.0",
                    "626620c7d42afd2f294fba167ce4653b5cb946336d186b4991c70b700e5616af", "MIT")
LUCIDE = NpmPackage("lucide-static", "1.62.0",
                    "386f9080c440d6f5049cefe3456ae8357f7a0c7f76e59670cd1cb83bc7050a44", "ISC")
FONTAWESOME = NpmPackage("@fortawesome/fontawesome-free", "7.3.1",
                         "ca4e32843bd81711894385c2466fb19c55cfd32ef3c58830b2d1df7bd42e6571",
                         "CC-BY-4.0")  # the icons; the package is (CC-BY-4.0 AND OFL-1.1 AND MIT): fonts, code
PHOSPHOR = NpmPackage("@phosphor-icons/core", "2.1.1",
                      "313332be6190b724da24107addd781799b48bf76b13963f24501112ffe1baadd", "MIT")
CARBON = NpmPackage("@carbon/pictograms", "12.82.0",
                    "04509c75e9759af7064a0817b04be09f4600147a43c8720b815034531ee2e548", "Apache-2.0")
GAME_ICONS = NpmPackage("@iconify-json/game-icons", "1.2.4",
                        "f5758efb34d91c4f50b941f355f16ee73938625e5996fabc25171288404460a4", "CC-BY-3.0")
ICON_SETS = (TABLER, LUCIDE, FONTAWESOME, PHOSPHOR, CARBON, GAME_ICONS)
PHOSPHOR_WEIGHT = "regular"

_META = r"|package\.json|LICEN[CS]E.*"
WANTED = {
    TABLER.name: re.compile(r"icons\.json|icons/outline/[^/]+\.svg" + _META),
    LUCIDE.name: re.compile(r"tags\.json|icons/[^/]+\.svg" + _META),
    FONTAWESOME.name: re.compile(r"metadata/icon-families\.json" + _META),
    PHOSPHOR.name: re.compile(rf"dist/index\.mjs|assets/{PHOSPHOR_WEIGHT}/[^/]+\.svg" + _META),
    CARBON.name: re.compile(r"metadata\.json" + _META),
    GAME_ICONS.name: re.compile(r"icons\.json|info\.json" + _META),
}
_HAS_LETTER = re.compile(r"[^\W\d_]")


@dataclass
class Icon:
    """One icon as its set describes it."""
    set: str                 # short set name: "tabler", "lucide", ...
    name: str                # the set's own name, unique in the set ("arrow-big-down")
    title: str               # the name in words ("arrow big down", "House")
    tags: tuple[str, ...]
    svg: str | None          # the SVG document, or None when it is a file
    svg_file: Path | None = None


def words_of(name: str) -> str:
    """"arrow-big-down" -> "arrow big down"; "active--server" -> "active server"."""
    return " ".join(re.split(r"[-_\s]+", name)).strip()


def icon_captions(icon: Icon) -> list[str]:
    """[name in words, tag list]: tags without letters, of one letter, or saying only the name are left out.

    >>> icon_captions(Icon("x", "arrow-up", "arrow up", ("arrow up", "north", "a", "direction", "north"), ""))
    ['arrow up', 'north, direction']
    """
    title_key = normalise_text(icon.title)
    kept, seen = [], {title_key}
    for tag in icon.tags:
        tag = " ".join(str(tag).split())
        key = normalise_text(tag)
        if not _HAS_LETTER.search(tag) or len(key.replace(" ", "")) < 2 or key in seen or tag.startswith("*"):
            continue
        seen.add(key)
        kept.append(tag)
    return distinct_captions([icon.title, ", ".join(kept)])


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable metadata in a downloaded package ({exc}); delete its folder and run "
                        f"again") from None


# ---------------------------------------------------------------- readers, one per set

def read_tabler(folder: Path, counts: dict) -> Iterator[Icon]:
    for entry in _json(folder / "icons.json").values():
        name = entry.get("name", "")
        if entry.get("category") == "Brand":
            counts["brands"] = counts.get("brands", 0) + 1
            continue
        svg_file = folder / "icons" / "outline" / f"{name}.svg"
        if "outline" not in entry.get("styles", {"outline": 1}) or not svg_file.is_file():
            counts["no_svg"] = counts.get("no_svg", 0) + 1
            continue
        yield Icon("tabler", name, words_of(name), tuple(entry.get("tags") or ()), None, svg_file)


def read_lucide(folder: Path, counts: dict) -> Iterator[Icon]:
    for name, tags in sorted(_json(folder / "tags.json").items()):
        svg_file = folder / "icons" / f"{name}.svg"
        if not svg_file.is_file():
            counts["no_svg"] = counts.get("no_svg", 0) + 1
            continue
        yield Icon("lucide", name, words_of(name), tuple(tags or ()), None, svg_file)


def read_fontawesome(folder: Path, counts: dict) -> Iterator[Icon]:
    for name, entry in sorted(_json(folder / "metadata" / "icon-families.json").items()):
        free = [s.get("style") for s in entry.get("familyStylesByLicense", {}).get("free", [])]
        svgs = entry.get("svgs", {}).get("classic", {})
        style = next((s for s in ("solid", "regular") if s in free and s in svgs), None)
        if style is None:
            counts["brands" if "brands" in free else "no_svg"] = \
                counts.get("brands" if "brands" in free else "no_svg", 0) + 1
            continue
        terms = tuple(entry.get("search", {}).get("terms") or ())
        yield Icon("fontawesome", name, str(entry.get("label") or words_of(name)), terms, svgs[style].get("raw"))


_PHOSPHOR_ENTRY = re.compile(r"\{\s*name:\s*\"([^\"]+)\"(.*?)\n\s*\}", re.S)
_PHOSPHOR_LIST = re.compile(r"(\w+):\s*\[([^\]]*)\]")
_JS_STRING = re.compile(r"\"((?:[^\"\\]|\\.)*)\"")


def read_phosphor(folder: Path, counts: dict) -> Iterator[Icon]:
    path = folder / "dist" / "index.mjs"
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc.strerror}); delete its folder and run again") from None
    seen = set()
    for match in _PHOSPHOR_ENTRY.finditer(source):
        name, body = match.group(1), match.group(2)
        lists = {key: value for key, value in _PHOSPHOR_LIST.findall(body)}
        if name in seen:
            continue
        seen.add(name)
        if "BRAND" in lists.get("categories", ""):
            counts["brands"] = counts.get("brands", 0) + 1
            continue
        svg_file = folder / "assets" / PHOSPHOR_WEIGHT / f"{name}.svg"
        if not svg_file.is_file():
            counts["no_svg"] = counts.get("no_svg", 0) + 1
            continue
        tags = tuple(_js_string(t) for t in _JS_STRING.findall(lists.get("tags", "")))
        yield Icon("phosphor", name, words_of(name), tags, None, svg_file)
    if not seen:
        raise DataError(f"{path}: no icon entries found (has the package's format changed?)")


def _js_string(literal: str) -> str:
    try:
        return json.loads(f'"{literal}"')
    except ValueError:
        return literal


def read_carbon(folder: Path, counts: dict) -> Iterator[Icon]:
    for entry in _json(folder / "metadata.json").get("icons", []):
        if entry.get("deprecated"):
            counts["deprecated"] = counts.get("deprecated", 0) + 1
            continue
        assets = entry.get("assets") or [{}]
        svg = assets[0].get("source")
        if not svg:
            counts["no_svg"] = counts.get("no_svg", 0) + 1
            continue
        name = entry.get("name", "")
        yield Icon("carbon", name, entry.get("friendlyName") or words_of(name), tuple(entry.get("aliases") or ()),
                   svg)


def read_game_icons(folder: Path, counts: dict) -> Iterator[Icon]:
    icon_set = _json(folder / "icons.json")
    for name, data in sorted(icon_set.get("icons", {}).items()):
        if data.get("hidden"):
            continue
        yield Icon("game-icons", name, words_of(name), (), iconify_svg(icon_set, name))


READERS: dict[str, tuple[str, Callable[[Path, dict], Iterator[Icon]]]] = {
    TABLER.name: ("tabler", read_tabler), LUCIDE.name: ("lucide", read_lucide),
    FONTAWESOME.name: ("fontawesome", read_fontawesome), PHOSPHOR.name: ("phosphor", read_phosphor),
    CARBON.name: ("carbon", read_carbon), GAME_ICONS.name: ("game-icons", read_game_icons),
}


# ---------------------------------------------------------------- the source

def collect_icons(cache_root: str | os.PathLike, *, size: int, workers: int = 1, progress: bool = True,
                  sets: tuple[NpmPackage, ...] = ICON_SETS, log: Callable[[str], None] = print,
                  folders: dict[str, Path] | None = None, limit: int | None = None) -> SourceData:
    """Fetch the icon packages (or use `folders`, for tests), read names and tags, render every icon to
    `<cache_root>/rendered/<size>/icons/...` and return the items that rendered. limit: only that many
    concepts (chosen by a hash of their keys), rendered."""
    cache_root = Path(cache_root)
    start = time.perf_counter()
    if folders is None:
        folders = fetch_all(list(sets), cache_root, log, WANTED)
    download_s = time.perf_counter() - start
    rendered_root = cache_root / "rendered" / str(size) / "icons"
    items, jobs, per_set = [], [], {}
    for package in sets:
        short, reader = READERS[package.name]
        counts: dict = {}
        n = 0
        for icon in reader(folders[package.name], counts):
            captions = icon_captions(icon)
            concept = normalise_text(icon.title)
            if not captions or not concept:
                counts["no_words_in_name"] = counts.get("no_words_in_name", 0) + 1
                continue
            path = png_path(rendered_root, package.folder_name, f"{icon.name}.png")
            items.append(SourceItem(path, relative_name(path, cache_root), captions, concept, short))
            jobs.append(RenderJob(f"{short}:{icon.name}", icon.svg if icon.svg is not None else icon.svg_file, path))
            n += 1
        per_set[short] = {"package": package.spec, "licence": package.licence, "icons": n, **counts}
    shared = drop_shared_captions(items)
    chosen = chosen_concepts((item.concept for item in items), limit)
    if chosen is not None:
        keep = [i for i, item in enumerate(items) if item.concept in chosen]
        items, jobs = [items[i] for i in keep], [jobs[i] for i in keep]
    # The SVG files are read only for the icons that still need rendering.
    for job in jobs:
        if isinstance(job.svg, Path):
            job.svg = "" if job.out.is_file() else _read_svg(job.svg)
    report = render_all(jobs, size, workers, progress, desc="render icons", log=log)
    failed = {name for name, _ in report.failed}
    kept = [item for item, job in zip(items, jobs) if job.name not in failed]
    for name in failed:
        entry = per_set[name.split(":", 1)[0]]
        entry["render_failed"] = entry.get("render_failed", 0) + 1
    if report.failed:
        log(describe_failures(report))
    if not kept:
        raise DataError("icons: no icon rendered")
    facts = {"packages": {p.spec: p.licence for p in sets}, "sets": per_set, "captions_dropped_as_shared": shared,
             "render": {"rendered": report.rendered, "reused": report.reused, "failed": len(report.failed),
                        "seconds": round(report.seconds, 1), "failures": report.failed[:20]},
             "download_s": round(download_s, 1), "limit_concepts": limit}
    data = SourceData("icons", kept, facts)
    log(f"icons: {data.summary()} from {len(sets)} sets; {shared} tag lists shared by several concepts dropped; "
        f"rendered {report.rendered:,} ({report.reused:,} reused, {len(report.failed)} failed) in "
        f"{report.seconds:.0f} s")
    return data


def _read_svg(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
