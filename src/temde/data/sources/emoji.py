"""`temde prepare emoji`: one emoji drawn by several vendors, matched by code point, captioned by human texts.

Drawings: the per-set Iconify JSON packages on npm (`EMOJI_SETS`, pinned). Four carry a `chars.json` (code
point -> icon name); the others are matched by icon name, since Iconify names emoji by their CLDR name
("hedgehog", "flag-peru"; "flag-for-peru" in the EmojiOne sets, "girl-2" for Streamline's second drawing).
A vendor draws a concept once: its first name in a fixed order (icons before aliases, the lowest-numbered
Streamline variant). Skin-tone variants (any of U+1F3FB..U+1F3FF in the sequence, or a name ending in
"-skin-tone") are dropped: the same drawing recoloured.

Texts, English only: `cldr-annotations-full` (the name CLDR gives each emoji for speech, "hedgehog", and its
keywords, "animal, hedgehog, spiny"), `cldr-annotations-derived-full` (the same for sequences: flags,
keycaps, ...), and `emojilib` (a community keyword list). A concept gets up to three distinct captions: the
CLDR name, the CLDR keywords, the emojilib keywords; a caption shared by several concepts ("flag" for every
flag) is dropped. A concept without a CLDR name is skipped. Nothing comes from file names or code points.

The concept key is the code point sequence without U+FE0F (variation selector), so "☺" and "☺️" are one.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from temde.data.sources.multicaption import (SourceData, SourceItem, chosen_concepts, distinct_captions,
                                             drop_shared_captions)
from temde.data.sources.npm import NpmPackage, fetch_all
from temde.data.sources.render import RenderJob, describe_failures, iconify_svg, png_path, relative_name, render_all
from temde.data.sources.splits import normalise_text
from temde.errors import DataError

# Vendors, in the order their drawings are listed. Licences as each package states them (info.json,
# package.json), recorded in docs/data.md.
EMOJI_SETS = (
    NpmPackage("@iconify-json/noto", "1.2.9",
               "3e918d88fc945c0bb3d468dbace6f88caef67f01c9f0e7bcae0915a042e8f1ad", "Apache-2.0"),
    NpmPackage("@iconify-json/noto-v1", "1.2.5",
               "2bf62c26c2c2884aa99e90aec942cdaee17a5921f05690694f4978ad4b017c37", "Apache-2.0"),
    NpmPackage("@iconify-json/twemoji", "1.2.5",
               "19046dff7d8707ce96212ec86468b36ac5f8e60409629dd13f809265c6d0ebb7", "CC-BY-4.0"),
    NpmPackage("@iconify-json/fluent-emoji-flat", "1.2.6",
               "7d064769dee690815f823bc5bcc511d957198caf9f5edd8dd9c1aa48a6aeb175", "MIT"),
    NpmPackage("@iconify-json/fluent-emoji", "1.2.7",
               "8044210dbf11e016d4de85f15d01a243423bd832457e7e2491df1b751c0e272b", "MIT"),
    NpmPackage("@iconify-json/emojione", "1.2.3",
               "26a14f44284407e8bcde91799388dca2bfd91dbcd55a97f425524a1c5b73610e", "CC-BY-4.0"),
    NpmPackage("@iconify-json/emojione-v1", "1.2.3",
               "6641d59d48a42823fdc2b84e7427e9f302944eb98d2c7d94d6e67c139e7b37b3", "CC-BY-SA-4.0"),
    NpmPackage("@iconify-json/streamline-emojis", "1.2.4",
               "5dac87c876b322500989828c5823143e0100d78881627a2e4081a4b897cbfdbc", "CC-BY-4.0"),
    NpmPackage("@iconify-json/openmoji", "1.2.29",
               "03181e2c156cab35cf4a62f1f7886bd971d59212e75ac3f189d5a4cae3930fc5", "CC-BY-SA-4.0"),
)
CLDR_ANNOTATIONS = NpmPackage("cldr-annotations-full", "48.2.0",
                              "28576e51225deb51e3ddd734b0f824a0079682cb5d8c27faa9f68149317a14d1", "Unicode-3.0")
CLDR_DERIVED = NpmPackage("cldr-annotations-derived-full", "48.2.0",
                          "4be946ff5815f806ec78b50363d577a769f2fbfb90c6380a44e161a92436996e", "Unicode-3.0")
EMOJILIB = NpmPackage("emojilib", "4.0.3",
                      "7f9a6b43cff31d18985b7d65d11faba5bd971cbcc60020cf6d09322fbaaaf303", "MIT")
TEXT_PACKAGES = (CLDR_ANNOTATIONS, CLDR_DERIVED, EMOJILIB)

# Only these members are unpacked (the CLDR packages hold ~200 languages).
_ICONIFY_FILES = re.compile(r"icons\.json|chars\.json|info\.json|package\.json|LICEN[CS]E.*")
WANTED = {
    **{p.name: _ICONIFY_FILES for p in EMOJI_SETS},
    CLDR_ANNOTATIONS.name: re.compile(r"annotations/en/annotations\.json|package\.json|LICEN[CS]E.*"),
    CLDR_DERIVED.name: re.compile(r"annotationsDerived/en/annotations\.json|package\.json|LICEN[CS]E.*"),
    EMOJILIB.name: re.compile(r"dist/emoji-en-US\.json|package\.json|LICEN[CS]E.*"),
}

SKIN_TONES = frozenset({"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"})
_SKIN_NAME = re.compile(r"-(?:light|medium-light|medium|medium-dark|dark)-skin-tone(?:-|$)")
_VARIANT = re.compile(r"^(.*?)-(\d+)$")
_HAS_WORD = re.compile(r"[^\W\d_]{2}")  # ":D", "+1", "00", "A" say no word


def vendor_name(package: NpmPackage) -> str:
    """"@iconify-json/noto-v1" -> "noto-v1"."""
    return package.name.rsplit("/", 1)[-1]


# ---------------------------------------------------------------- code points and names

def concept_of(emoji: str) -> str:
    """An emoji string -> its concept key: code points in lower-case hex joined by '-', U+FE0F left out."""
    return "-".join(f"{ord(ch):x}" for ch in emoji if ord(ch) != 0xFE0F)


def concept_of_code(code: str) -> str:
    """An Iconify chars.json key ("263a-fe0f", "0023-fe0f-20e3") -> the concept key ("263a", "23-20e3")."""
    points = (int(part, 16) for part in code.split("-") if part)
    return "-".join(f"{point:x}" for point in points if point != 0xFE0F)


def is_skin_tone(concept: str) -> bool:
    return not SKIN_TONES.isdisjoint(concept.split("-"))


def slug(text: str) -> str:
    """Iconify's way of naming an emoji: lower case, apostrophes dropped, other non-alphanumerics -> '-'."""
    text = text.lower().replace("’", "").replace("'", "")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


# ---------------------------------------------------------------- texts

@dataclass
class EmojiText:
    name: str                      # CLDR's name ("tts"): "hedgehog", "flag: Peru"
    keywords: tuple[str, ...] = ()  # CLDR keywords
    library: tuple[str, ...] = ()   # emojilib's words (its first is the name as a slug)


def _annotations(path: Path, key: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data[key]["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a CLDR annotations file ({exc})") from None


def load_texts(cldr_full: Path, cldr_derived: Path, emojilib: Path | None) -> dict[str, EmojiText]:
    """concept -> its texts, from the three packages' unpacked folders (emojilib optional)."""
    texts: dict[str, EmojiText] = {}
    for folder, key, file in ((cldr_full, "annotations", "annotations/en/annotations.json"),
                              (cldr_derived, "annotationsDerived", "annotationsDerived/en/annotations.json")):
        for emoji, entry in _annotations(folder / file, key).items():
            names = entry.get("tts") or []
            concept = concept_of(emoji)
            if names and concept and concept not in texts:
                texts[concept] = EmojiText(" ".join(names[0].split()), tuple(entry.get("default") or ()))
    if emojilib is not None:
        path = emojilib / "dist" / "emoji-en-US.json"
        try:
            library = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not an emojilib keyword file ({exc})") from None
        for emoji, words in library.items():
            concept = concept_of(emoji)
            if concept in texts and isinstance(words, list):
                texts[concept].library = tuple(str(w) for w in words)
    return texts


def _keyword_list(words, exclude: set[str]) -> str:
    kept, seen = [], set(exclude)
    for word in words:
        word = " ".join(str(word).replace("_", " ").split())
        key = normalise_text(word)
        if not _HAS_WORD.search(word) or not key or key in seen:
            continue  # ":D", "+1", "00": no words; or said already
        seen.add(key)
        kept.append(word)
    return ", ".join(kept)


def emoji_captions(text: EmojiText) -> list[str]:
    """The distinct human texts of one emoji: its CLDR name, its CLDR keywords, its emojilib keywords.

    >>> emoji_captions(EmojiText("hedgehog", ("animal", "hedgehog", "spiny"), ("hedgehog", "animal", "nature")))
    ['hedgehog', 'animal, hedgehog, spiny', 'animal, nature']
    """
    name_key = normalise_text(text.name)
    return distinct_captions([text.name, _keyword_list(text.keywords, set()),
                              _keyword_list(text.library, {name_key})])


def name_index(texts: dict[str, EmojiText], charsets: list[dict[str, str]]) -> dict[str, str]:
    """icon name -> concept, for the vendors without chars.json: the slugs of CLDR names first, then the names
    the chars.json vendors give each code point (older names, "boy-light" for a skin tone), then emojilib's."""
    index: dict[str, str] = {}
    for concept, text in texts.items():
        index.setdefault(slug(text.name), concept)
    for chars in charsets:
        for code, name in chars.items():
            index.setdefault(name, concept_of_code(code))
    for concept, text in texts.items():
        if text.library:
            index.setdefault(slug(text.library[0]), concept)
    return index


def _name_order(icon_set: dict) -> list[str]:
    """Visible icons, then aliases, each sorted; numbered variants ("girl-2") by their number."""
    def key(name: str):
        match = _VARIANT.match(name)
        return (match.group(1), int(match.group(2))) if match else (name, 0)

    icons = sorted((n for n, v in icon_set.get("icons", {}).items() if not v.get("hidden")), key=key)
    return icons + sorted(icon_set.get("aliases", {}), key=key)


def match_vendor(icon_set: dict, chars: dict[str, str], index: dict[str, str]) -> tuple[dict[str, str], Counter]:
    """concept -> icon name for one vendor (skin tones excluded), and counts of what was dropped.

    With a chars.json (code point -> name) the code points decide; without, the icon names do (see
    `name_index`): the name itself, "flag-for-X" as "flag-X", "girl-2" as "girl".
    """
    counts: Counter = Counter()
    chosen: dict[str, str] = {}
    if chars:
        pairs = ((concept_of_code(code), name) for code, name in sorted(chars.items()))
    else:
        def resolve(name: str) -> str | None:
            for candidate in (name, name.replace("flag-for-", "flag-", 1)):
                if candidate in index:
                    return index[candidate]
                match = _VARIANT.match(candidate)
                if match and match.group(1) in index:
                    return index[match.group(1)]
            return None

        pairs = ((resolve(name), name) for name in _name_order(icon_set))
    for concept, name in pairs:
        if concept is None:
            counts["skin_tone" if _SKIN_NAME.search(name) else "unmatched_names"] += 1
        elif is_skin_tone(concept) or _SKIN_NAME.search(name):
            counts["skin_tone"] += 1
        elif concept in chosen:
            counts["second_names"] += 1  # an alias or another variant of a concept already drawn
        else:
            chosen[concept] = name
    return chosen, counts


def _read_json(path: Path, default=None):
    if not path.is_file() and default is not None:
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable JSON in a downloaded package ({exc}); delete its folder and run "
                        f"again") from None


# ---------------------------------------------------------------- the source

def collect_emoji(cache_root: str | os.PathLike, *, size: int, workers: int = 1, progress: bool = True,
                  sets: tuple[NpmPackage, ...] = EMOJI_SETS, log: Callable[[str], None] = print,
                  folders: dict[str, Path] | None = None, limit: int | None = None) -> SourceData:
    """Fetch the packages (or use `folders`: package name -> unpacked folder, for tests), match vendors by
    code point, build captions, render every drawing to `<cache_root>/rendered/<size>/emoji/...` and return the
    items that rendered. limit: only that many concepts (chosen by a hash of their keys), rendered."""
    cache_root = Path(cache_root)
    start = time.perf_counter()
    if folders is None:
        folders = fetch_all(list(sets) + list(TEXT_PACKAGES), cache_root, log, WANTED)
    download_s = time.perf_counter() - start
    texts = load_texts(folders[CLDR_ANNOTATIONS.name], folders[CLDR_DERIVED.name], folders.get(EMOJILIB.name))
    icon_sets = {p.name: _read_json(folders[p.name] / "icons.json") for p in sets}
    chars = {p.name: _read_json(folders[p.name] / "chars.json", default={}) for p in sets}
    index = name_index(texts, [c for c in chars.values() if c])

    captions: dict[str, list[str]] = {}
    drawings: list[tuple[str, NpmPackage, str]] = []  # (concept, vendor, icon name)
    vendors: dict[str, dict] = {}
    for package in sets:
        chosen, counts = match_vendor(icon_sets[package.name], chars[package.name], index)
        no_text = [c for c in chosen if c not in texts]
        counts["without_cldr_name"] = len(no_text)
        for concept, name in chosen.items():
            if concept in texts:
                drawings.append((concept, package, name))
                captions.setdefault(concept, emoji_captions(texts[concept]))
        vendors[vendor_name(package)] = {"package": package.spec, "licence": package.licence,
                                         "drawings": len(chosen) - len(no_text), **dict(counts)}

    items = [SourceItem(Path(), "", captions[c], c, vendor_name(p)) for c, p, _ in drawings]
    shared = drop_shared_captions(items)
    chosen = chosen_concepts(captions, limit)
    if chosen is not None:
        keep = [i for i, item in enumerate(items) if item.concept in chosen]
        items, drawings = [items[i] for i in keep], [drawings[i] for i in keep]
    rendered_root = cache_root / "rendered" / str(size) / "emoji"
    jobs = []
    for item, (concept, package, name) in zip(items, drawings):
        item.path = png_path(rendered_root, package.folder_name, f"{concept}.png")
        item.name = relative_name(item.path, cache_root)
        svg = iconify_svg(icon_sets[package.name], name)
        jobs.append(RenderJob(f"{vendor_name(package)}:{name}", svg or "", item.path))
    report = render_all(jobs, size, workers, progress, desc="render emoji", log=log)
    failed = {name for name, _ in report.failed}
    kept = [item for item, job in zip(items, jobs) if job.name not in failed]
    for name in failed:
        vendors[name.split(":", 1)[0]]["render_failed"] = vendors[name.split(":", 1)[0]].get("render_failed", 0) + 1
    if report.failed:
        log(describe_failures(report))
    if not kept:
        raise DataError("emoji: no drawing rendered")
    facts = {
        "packages": {p.spec: p.licence for p in list(sets) + list(TEXT_PACKAGES)},
        "vendors": vendors, "concepts_with_text": len(texts),
        "captions_dropped_as_shared": shared,
        "render": {"rendered": report.rendered, "reused": report.reused, "failed": len(report.failed),
                   "seconds": round(report.seconds, 1), "failures": report.failed[:20]},
        "download_s": round(download_s, 1), "limit_concepts": limit,
    }
    data = SourceData("emoji", kept, facts)
    log(f"emoji: {data.summary()} from {len(sets)} vendors; {shared} captions shared by several concepts dropped; "
        f"rendered {report.rendered:,} ({report.reused:,} reused, {len(report.failed)} failed) in "
        f"{report.seconds:.0f} s")
    return data
