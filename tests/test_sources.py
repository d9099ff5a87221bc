"""The multi-caption sources: emoji (vendors matched by code point), icons (names + tags), openclipart with
separate captions, all three in one folder; npm downloads, SVG rendering, concept-grouped splits.

Everything runs offline on tiny fake packages written here; the real packages are in the `slow` test at the end.
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from temde.cli import main
from temde.data import load_split
from temde.data.sources import emoji as E
from temde.data.sources import icons as I
from temde.data.sources import npm
from temde.data.sources import openclipart as oc
from temde.data.sources.multicaption import (SourceData, SourceItem, build_multicaption_dataset, concept_split,
                                             drop_shared_captions)
from temde.data.sources.openclipart_captions import separate_captions
from temde.errors import DataError


def quiet(*args, **kwargs):
    pass


class FakeExtractor:
    """Stand-in for FeatureExtractor: features drawn from a hash of the file's bytes (identical files give
    identical features, others are nearly orthogonal); small, so tests stay fast."""
    image_size = 32
    regions = 3
    feature_dim = 64
    progress = False

    def __init__(self):
        self.images_computed = 0

    def extract(self, paths, out=None):
        paths = list(paths)
        if out is None:
            out = np.empty((len(paths), self.regions, self.feature_dim), dtype=np.float32)
        for i, path in enumerate(paths):
            seed = int(hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8], 16)
            out[i] = np.random.default_rng(seed).standard_normal((self.regions, self.feature_dim))
        self.images_computed += len(paths)
        return out


# ---------------------------------------------------------------- fake packages

RECT = '<rect x="{x}" y="2" width="6" height="12" fill="#c33"/>'
BROKEN = '<path d="M0 0 L 4 4"'  # an unclosed tag: cairosvg cannot parse the document


def iconify_set(icons: dict[str, str], aliases: dict | None = None, size: int = 16) -> dict:
    return {"prefix": "x", "icons": {name: {"body": body} for name, body in icons.items()},
            "aliases": aliases or {}, "width": size, "height": size}


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def fake_emoji_packages(root: Path) -> dict[str, Path]:
    """Two vendors and the three text packages. Vendor A has a chars.json (3 drawings + a skin tone + a broken
    one + two flags); vendor B is matched by name (numbered variants, a skin tone by name, an unknown name)."""
    a = root / "vendor-a"
    write_json(a / "icons.json", iconify_set({
        "hedgehog": RECT.format(x=1), "thumbs-up": RECT.format(x=5), "thumbs-up-light-skin-tone": RECT.format(x=9),
        "broken-face": BROKEN, "flag-peru": RECT.format(x=3), "flag-france": RECT.format(x=7)}))
    write_json(a / "chars.json", {"1f994": "hedgehog", "1f44d": "thumbs-up", "1f44d-1f3fb": "thumbs-up-light-skin-tone",
                                  "1f600": "broken-face", "1f1f5-1f1ea": "flag-peru", "1f1eb-1f1f7": "flag-france"})
    b = root / "vendor-b"
    write_json(b / "icons.json", iconify_set({
        "hedgehog-2": RECT.format(x=2), "hedgehog-1": RECT.format(x=4), "thumbs-up-medium-skin-tone": RECT.format(x=6),
        "grinning-face": RECT.format(x=8), "flag-for-peru": RECT.format(x=0), "mystery-blob": RECT.format(x=1)}))
    full = root / "cldr-full"
    write_json(full / "annotations/en/annotations.json", {"annotations": {"identity": {}, "annotations": {
        "🦔": {"default": ["animal", "hedgehog", "spiny"], "tts": ["hedgehog"]},
        "👍": {"default": ["+1", "hand", "thumb", "up"], "tts": ["thumbs up"]},
        "😀": {"default": ["face", "grin"], "tts": ["grinning face"]}}}})
    derived = root / "cldr-derived"
    write_json(derived / "annotationsDerived/en/annotations.json", {"annotationsDerived": {"annotations": {
        "👍🏻": {"default": ["hand", "light skin tone"], "tts": ["thumbs up: light skin tone"]},
        "🇵🇪": {"default": ["flag"], "tts": ["flag: Peru"]},
        "🇫🇷": {"default": ["flag"], "tts": ["flag: France"]}}}})
    lib = root / "emojilib"
    write_json(lib / "dist/emoji-en-US.json", {
        "🦔": ["hedgehog", "animal", "nature", "spiny"],
        "👍": ["thumbs_up", "thumbsup", "yes", "+1", "hand"],
        "😀": ["grinning_face", "face", "smile", ":D"]})
    return {"a": a, "b": b, E.CLDR_ANNOTATIONS.name: full, E.CLDR_DERIVED.name: derived, E.EMOJILIB.name: lib}


VENDOR_A = npm.NpmPackage("@iconify-json/vendor-a", "1.0.0", "0" * 64, "MIT")
VENDOR_B = npm.NpmPackage("@iconify-json/vendor-b", "1.0.0", "0" * 64, "CC-BY-4.0")


def emoji_folders(root: Path) -> dict[str, Path]:
    found = fake_emoji_packages(root)
    return {VENDOR_A.name: found["a"], VENDOR_B.name: found["b"],
            **{k: v for k, v in found.items() if k not in ("a", "b")}}


LINE_ICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
             'stroke-width="2"><path d="M{a} 4 L 20 {b}"/></svg>')


def fake_icon_packages(root: Path) -> dict[str, Path]:
    """The six icon sets, three icons each (one tabler brand, one Font Awesome brand, one Phosphor brand)."""
    tabler = root / "tabler"
    write_json(tabler / "icons.json", {
        "arrow-up": {"name": "arrow-up", "category": "Arrows", "tags": ["north", "direction", "a"],
                     "styles": {"outline": {}}},
        "heart": {"name": "heart", "category": "Health", "tags": ["love", "like"], "styles": {"outline": {}}},
        "brand-x": {"name": "brand-x", "category": "Brand", "tags": ["logo"], "styles": {"outline": {}}}})
    for i, name in enumerate(("arrow-up", "heart", "brand-x")):
        (tabler / "icons/outline").mkdir(parents=True, exist_ok=True)
        (tabler / f"icons/outline/{name}.svg").write_text(LINE_ICON.format(a=i + 2, b=5))
    lucide = root / "lucide"
    write_json(lucide / "tags.json", {"heart": ["like", "love"], "anchor": ["ship", "harbour"],
                                      "bell-ring": ["alarm", "notification"]})
    for i, name in enumerate(("heart", "anchor", "bell-ring")):
        (lucide / "icons").mkdir(parents=True, exist_ok=True)
        (lucide / f"icons/{name}.svg").write_text(LINE_ICON.format(a=i + 3, b=9))
    fa = root / "fa"
    solid = {"solid": {"raw": LINE_ICON.format(a=4, b=12)}}
    write_json(fa / "metadata/icon-families.json", {
        "house": {"label": "House", "search": {"terms": ["home", "building"]}, "svgs": {"classic": solid},
                  "familyStylesByLicense": {"free": [{"family": "classic", "style": "solid"}]}},
        "0": {"label": "0", "search": {"terms": ["zero"]}, "svgs": {"classic": solid},
              "familyStylesByLicense": {"free": [{"family": "classic", "style": "solid"}]}},
        "github": {"label": "GitHub", "search": {"terms": []}, "svgs": {"brands": {"brands": {"raw": "<svg/>"}}},
                   "familyStylesByLicense": {"free": [{"family": "classic", "style": "brands"}]}}})
    phosphor = root / "phosphor"
    (phosphor / "dist").mkdir(parents=True)
    (phosphor / "dist/index.mjs").write_text(
        'const n = [\n  {\n    name: "acorn",\n    pascal_name: "Acorn",\n    categories: [e.NATURE],\n'
        '    tags: ["*new*", "nut", "oak"],\n    codepoint: 1\n  },\n  {\n    name: "android-logo",\n'
        '    categories: [e.BRAND],\n    tags: ["google"],\n    codepoint: 2\n  },\n  {\n    name: "bell",\n'
        '    categories: [e.OFFICE],\n    tags: ["alarm", "ring\\u00e9"],\n    codepoint: 3\n  }\n];\n')
    for i, name in enumerate(("acorn", "android-logo", "bell")):
        (phosphor / "assets/regular").mkdir(parents=True, exist_ok=True)
        (phosphor / f"assets/regular/{name}.svg").write_text(LINE_ICON.format(a=i + 5, b=14))
    carbon = root / "carbon"
    write_json(carbon / "metadata.json", {"icons": [
        {"name": "farmer--02", "friendlyName": "Farmer 02", "aliases": ["agriculture", "farmer"],
         "assets": [{"source": LINE_ICON.format(a=6, b=16)}]},
        {"name": "old", "friendlyName": "Old", "deprecated": True, "assets": [{"source": LINE_ICON.format(a=7, b=3)}]},
        {"name": "rocket", "friendlyName": "Rocket", "aliases": ["launch"],
         "assets": [{"source": LINE_ICON.format(a=8, b=18)}]}]})
    game = root / "game"
    write_json(game / "icons.json", iconify_set({"rocket": RECT.format(x=3), "broken-sword": BROKEN,
                                                 "anchor": RECT.format(x=9)}, size=16))
    return {I.TABLER.name: tabler, I.LUCIDE.name: lucide, I.FONTAWESOME.name: fa, I.PHOSPHOR.name: phosphor,
            I.CARBON.name: carbon, I.GAME_ICONS.name: game}


def fake_openclipart_tree(root: Path, n: int = 16) -> None:
    """n clip-art items; the last 11 share a boilerplate title (they keep their keywords as a caption)."""
    from PIL import Image

    for i in range(n):
        letter = "abcdefghijklmnopqrstuvwxyz"[i]
        title = "Boilerplate" if i >= n - 11 else f"thing {letter}"
        keywords = "".join(f"<rdf:li>{k}</rdf:li>" for k in ("common", f"kw{letter}"))
        text = (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/" '
                f'xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                f'<metadata><rdf:RDF><cc:Work><dc:title>{title}</dc:title><dc:subject><rdf:Bag>{keywords}'
                f'</rdf:Bag></dc:subject></cc:Work></rdf:RDF></metadata></svg>')
        (root / "svg").mkdir(parents=True, exist_ok=True)
        (root / "png").mkdir(parents=True, exist_ok=True)
        (root / "svg" / f"item{i:02d}.svg").write_text(text, encoding="utf-8")
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / "png" / f"item{i:02d}.png")


# ---------------------------------------------------------------- emoji: texts and matching

def test_emoji_captions_are_distinct_human_texts():
    text = E.EmojiText("hedgehog", ("animal", "hedgehog", "spiny"), ("hedgehog", "animal", "nature", "spiny"))
    assert E.emoji_captions(text) == ["hedgehog", "animal, hedgehog, spiny", "animal, nature, spiny"]
    # emojilib's name is the CLDR name again: left out; keywords without letters (":D", "+1") too
    text = E.EmojiText("grinning face", ("face", "grin"), ("grinning_face", "face", ":D", "+1", "grin"))
    assert E.emoji_captions(text) == ["grinning face", "face, grin"]  # the emojilib list says the same again
    assert E.emoji_captions(E.EmojiText("flag: Peru", ("flag",))) == ["flag: Peru", "flag"]


def test_concept_keys_skin_tones_and_slugs():
    assert E.concept_of("☺️") == E.concept_of("☺") == "263a"
    assert E.concept_of_code("263A-FE0F") == "263a"
    assert E.concept_of_code("0023-fe0f-20e3") == E.concept_of("#️⃣") == "23-20e3"  # chars.json pads to 4 digits
    assert E.concept_of_code("00ae") == E.concept_of("®") == "ae"
    assert E.concept_of("👨‍🌾") == "1f468-200d-1f33e"
    assert E.is_skin_tone("1f44d-1f3fb") and not E.is_skin_tone("1f44d")
    assert E.slug("flag: Côte d’Ivoire") == "flag-c-te-divoire"
    assert E.slug("man’s shoe") == "mans-shoe"


def test_vendors_are_matched_by_code_point_or_by_name_and_skin_tones_dropped(tmp_path):
    folders = emoji_folders(tmp_path)
    texts = E.load_texts(folders[E.CLDR_ANNOTATIONS.name], folders[E.CLDR_DERIVED.name], folders[E.EMOJILIB.name])
    assert set(texts) == {"1f994", "1f44d", "1f600", "1f44d-1f3fb", "1f1f5-1f1ea", "1f1eb-1f1f7"}
    assert texts["1f994"].library == ("hedgehog", "animal", "nature", "spiny")
    chars_a = json.loads((folders[VENDOR_A.name] / "chars.json").read_text())
    index = E.name_index(texts, [chars_a])
    icons_a = json.loads((folders[VENDOR_A.name] / "icons.json").read_text())
    chosen, counts = E.match_vendor(icons_a, chars_a, index)
    assert chosen == {"1f994": "hedgehog", "1f44d": "thumbs-up", "1f600": "broken-face", "1f1f5-1f1ea": "flag-peru",
                      "1f1eb-1f1f7": "flag-france"}
    assert counts == {"skin_tone": 1}
    icons_b = json.loads((folders[VENDOR_B.name] / "icons.json").read_text())
    chosen, counts = E.match_vendor(icons_b, {}, index)
    # the lowest-numbered variant, "flag-for-X" as "flag-X", the skin tone by its name, the unknown name counted
    assert chosen == {"1f994": "hedgehog-1", "1f600": "grinning-face", "1f1f5-1f1ea": "flag-for-peru"}
    assert counts == {"skin_tone": 1, "second_names": 1, "unmatched_names": 1}


def test_collect_emoji_renders_skips_a_broken_svg_and_drops_shared_captions(tmp_path):
    pytest.importorskip("cairosvg")
    from PIL import Image

    folders = emoji_folders(tmp_path / "packages")
    messages = []
    data = E.collect_emoji(tmp_path / "cache", size=32, sets=(VENDOR_A, VENDOR_B), folders=folders,
                           progress=False, log=messages.append)
    by_image = {item.name: item for item in data.items}
    vendors = data.facts["vendors"]
    assert vendors["vendor-a"]["render_failed"] == 1 and data.facts["render"]["failed"] == 1
    assert any("1 drawing(s) did not render and were skipped: vendor-a:broken-face" in m for m in messages)
    assert "rendered/32/emoji/iconify-json+vendor-a@1.0.0/1f600.png" not in by_image  # the broken drawing
    assert sorted(by_image) == sorted(
        f"rendered/32/emoji/iconify-json+vendor-{v}@1.0.0/{c}.png"
        for v, c in [("a", "1f994"), ("a", "1f44d"), ("a", "1f1f5-1f1ea"), ("a", "1f1eb-1f1f7"), ("b", "1f994"),
                     ("b", "1f600"), ("b", "1f1f5-1f1ea")])
    hedgehog = by_image["rendered/32/emoji/iconify-json+vendor-b@1.0.0/1f994.png"]
    assert hedgehog.captions == ["hedgehog", "animal, hedgehog, spiny", "animal, nature, spiny"]
    assert hedgehog.concept == "1f994" and hedgehog.vendor == "vendor-b"
    # "flag" is the keyword list of both flags: it identifies neither, so it is dropped
    assert by_image["rendered/32/emoji/iconify-json+vendor-a@1.0.0/1f1f5-1f1ea.png"].captions == ["flag: Peru"]
    assert data.facts["captions_dropped_as_shared"] == 2
    assert not any(E.is_skin_tone(item.concept) for item in data.items)
    with Image.open(hedgehog.path) as image:  # rendered on white, the drawing in colour
        assert image.mode == "RGB" and image.size == (32, 32) and image.getpixel((0, 0)) == (255, 255, 255)
        assert np.asarray(image.convert("L")).min() < 200
    # a second run renders nothing
    again = E.collect_emoji(tmp_path / "cache", size=32, sets=(VENDOR_A, VENDOR_B), folders=folders,
                            progress=False, log=quiet)
    assert again.facts["render"]["rendered"] == 0 and again.facts["render"]["reused"] == 7


# ---------------------------------------------------------------- rendering

def test_iconify_aliases_flip_and_rotate_like_iconify():
    pytest.importorskip("cairosvg")
    from PIL import Image

    from temde.data.sources.render import iconify_svg, render_png

    icon_set = iconify_set({"left-bar": '<rect x="0" y="0" width="4" height="16"/>'},
                           {"right-bar": {"parent": "left-bar", "hFlip": True},
                            "top-bar": {"parent": "left-bar", "rotate": 1},
                            "top-bar-flipped-twice": {"parent": "right-bar", "hFlip": True, "rotate": 1}})

    def ink(name):
        image = Image.open(io.BytesIO(render_png(iconify_svg(icon_set, name), 32))).convert("L")
        pixels = np.asarray(image) < 128
        return pixels[:, :8].mean(), pixels[:, -8:].mean(), pixels[:8].mean(), pixels[-8:].mean()

    left, right, top, bottom = ink("left-bar")
    assert left > 0.9 and right == 0
    left, right, _, _ = ink("right-bar")
    assert right > 0.9 and left == 0
    _, _, top, bottom = ink("top-bar")  # a quarter turn clockwise puts the left edge on top
    assert top > 0.9 and bottom == 0
    assert ink("top-bar-flipped-twice") == ink("top-bar")
    assert iconify_svg(icon_set, "unknown") is None


def test_render_all_counts_failures_reuses_pngs_and_never_raises(tmp_path):
    pytest.importorskip("cairosvg")
    from temde.data.sources.render import RenderJob, render_all

    good = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8"><circle cx="4" cy="4" r="3"/></svg>'
    blank = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8"></svg>'
    jobs = [RenderJob("good", good, tmp_path / "good.png"), RenderJob("blank", blank, tmp_path / "blank.png"),
            RenderJob("broken", "<svg><path", tmp_path / "broken.png"), RenderJob("empty", "", tmp_path / "e.png")]
    report = render_all(jobs, size=16, progress=False)
    assert report.rendered == 1 and [name for name, _ in report.failed] == ["blank", "broken", "empty"]
    assert "renders blank" in report.failed[0][1]
    assert (tmp_path / "good.png").is_file() and not (tmp_path / "broken.png").exists()
    report = render_all(jobs, size=16, progress=False)
    assert (report.rendered, report.reused, len(report.failed)) == (0, 1, 3)


def test_missing_cairosvg_is_one_clear_line(monkeypatch):
    import builtins

    from temde.data.sources.render import require_cairosvg

    real_import = builtins.__import__

    def no_cairosvg(name, *args, **kwargs):
        if name == "cairosvg":
            raise ImportError("No module named 'cairosvg'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cairosvg)
    with pytest.raises(DataError, match=r"needs cairosvg: pip install cairosvg .* libcairo"):
        require_cairosvg()


# ---------------------------------------------------------------- npm packages

def make_tarball(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_checks_the_pinned_sha256_and_unpacks_only_what_is_wanted(tmp_path, monkeypatch):
    import re

    cache = tmp_path / "cache"
    (cache / "npm").mkdir(parents=True)
    probe = npm.NpmPackage("@scope/pkg", "1.2.3", "", "MIT")
    sha = make_tarball(cache / "npm" / probe.tarball_name, {"package/icons.json": b"{}", "package/big.bin": b"x",
                                                            "package/sub/a.svg": b"<svg/>"})
    package = npm.NpmPackage("@scope/pkg", "1.2.3", sha, "MIT")
    assert package.tarball_name == "scope-pkg-1.2.3.tgz"
    monkeypatch.setattr(npm.shutil, "which", lambda name: pytest.fail("nothing should be downloaded"))
    folder = npm.fetch(package, cache, log=quiet, wanted=re.compile(r"icons\.json|sub/.*"))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
        [".complete", "icons.json", "sub/a.svg"]
    assert npm.fetch(package, cache, log=quiet) == folder  # unpacked once

    tampered = npm.NpmPackage("@scope/pkg", "1.2.3", "f" * 64, "MIT")
    (folder / ".complete").unlink()
    with pytest.raises(DataError, match=r"scope-pkg-1\.2\.3\.tgz: SHA-256 .* is not the pinned @scope/pkg@1\.2\.3"):
        npm.fetch(tampered, cache, log=quiet)

    evil = npm.NpmPackage("evil", "1.0.0", make_tarball(cache / "npm" / "evil-1.0.0.tgz",
                                                        {"package/../../escape.txt": b"!"}), "MIT")
    with pytest.raises(DataError, match=r"unsafe member path"):
        npm.fetch(evil, cache, log=quiet)
    assert not (tmp_path / "escape.txt").exists()

    (cache / "npm" / "junk-1.0.0.tgz").write_bytes(b"not a tarball")
    junk = npm.NpmPackage("junk", "1.0.0", hashlib.sha256(b"not a tarball").hexdigest(), "MIT")
    with pytest.raises(DataError, match=r"junk-1\.0\.0\.tgz: cannot unpack junk@1\.0\.0"):
        npm.fetch(junk, cache, log=quiet)


def test_a_failed_download_is_one_line_naming_the_package(tmp_path, monkeypatch):
    package = npm.NpmPackage("@iconify-json/noto", "1.2.9", "0" * 64, "Apache-2.0")
    # without npm: HTTPS from the registry
    monkeypatch.setattr(npm.shutil, "which", lambda name: None)

    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(npm.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as error:
        npm.fetch(package, tmp_path, log=quiet)
    message = str(error.value)
    assert "\n" not in message and message.startswith("@iconify-json/noto@1.2.9: download of "
                                                      "https://registry.npmjs.org/@iconify-json/noto/-/noto-1.2.9.tgz "
                                                      "failed (Temporary failure in name resolution)")
    # with npm: `npm pack`, its last error line
    monkeypatch.setattr(npm.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(npm.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 1, "", "npm error code E404\nnpm error 404 Not Found - GET https://registry.npmjs.org/x"))
    with pytest.raises(DataError, match=r"^@iconify-json/noto@1\.2\.9: `npm pack` failed \(npm error 404 Not Found"):
        npm.fetch(package, tmp_path, log=quiet)
    assert not list((tmp_path / "npm").glob("*.tgz"))  # nothing half-downloaded is left to look complete


# ---------------------------------------------------------------- icons

def test_icon_captions_name_and_tags():
    icon = I.Icon("tabler", "arrow-up", "arrow up", ("arrow up", "North", "a", "direction", "north", "*new*", "42"),
                  "")
    assert I.icon_captions(icon) == ["arrow up", "North, direction"]
    assert I.icon_captions(I.Icon("game-icons", "rocket", "rocket", (), "")) == ["rocket"]
    assert I.words_of("active--server") == "active server"


def test_icon_readers_drop_brands_and_deprecated(tmp_path):
    folders = fake_icon_packages(tmp_path)
    counts = {}
    assert [i.name for i in I.read_tabler(folders[I.TABLER.name], counts)] == ["arrow-up", "heart"]
    assert counts == {"brands": 1}
    counts = {}
    fa = list(I.read_fontawesome(folders[I.FONTAWESOME.name], counts))
    assert [(i.name, i.title, i.tags) for i in fa] == [("0", "0", ("zero",)), ("house", "House", ("home", "building"))]
    assert counts == {"brands": 1}
    counts = {}
    phosphor = list(I.read_phosphor(folders[I.PHOSPHOR.name], counts))
    assert [(i.name, i.tags) for i in phosphor] == [("acorn", ("*new*", "nut", "oak")), ("bell", ("alarm", "ringé"))]
    assert counts == {"brands": 1}
    counts = {}
    carbon = list(I.read_carbon(folders[I.CARBON.name], counts))
    assert [(i.name, i.title) for i in carbon] == [("farmer--02", "Farmer 02"), ("rocket", "Rocket")]
    assert counts == {"deprecated": 1}


def test_collect_icons_concepts_span_sets_and_a_broken_icon_is_counted(tmp_path):
    pytest.importorskip("cairosvg")
    data = I.collect_icons(tmp_path / "cache", size=32, folders=fake_icon_packages(tmp_path / "p"), progress=False,
                           log=quiet)
    concepts = {}
    for item in data.items:
        concepts.setdefault(item.concept, []).append(item.vendor)
    assert concepts == {"arrow up": ["tabler"], "heart": ["tabler", "lucide"], "anchor": ["lucide", "game-icons"],
                        "bell ring": ["lucide"], "house": ["fontawesome"], "acorn": ["phosphor"],
                        "bell": ["phosphor"], "farmer": ["carbon"], "rocket": ["carbon", "game-icons"]}
    assert data.facts["sets"]["fontawesome"]["no_words_in_name"] == 1  # "0": no words to caption it with
    assert data.facts["sets"]["game-icons"]["render_failed"] == 1
    heart = [item for item in data.items if item.concept == "heart"]
    # "like, love" is the tag list of both hearts, but they are one concept: it stays
    assert [item.captions for item in heart] == [["heart", "love, like"], ["heart", "like, love"]]


# ---------------------------------------------------------------- openclipart, separate captions

def _clip(name, title="", description="", keywords=(), creator="Jane"):
    return oc.ClipArt(name, Path(name), Path(name), oc.SvgMetadata(title, description, tuple(keywords), creator))


def test_openclipart_title_description_and_specific_keywords_are_separate_captions():
    items = [_clip(f"png/s{i}.png", "Flat Icon Collection", keywords=("computer", "icons")) for i in range(4)]
    items += [_clip(f"png/f{i}.png", f"Flag of place {'abcd'[i]}", keywords=("flag", f"place{'abcd'[i]}"))
              for i in range(4)]
    items += [_clip("png/owl.png", "Owl", "A night bird. mail: jane@x.org", ("bird", "Jane", "hash", "flag")),
              _clip("png/none.png", "Flat Icon Collection", keywords=("computer",))]
    kept, counts = separate_captions(items, max_title_repeats=3, max_keyword_images=2)
    captions = {item.name: c for item, c in kept}
    # a title on 5 images is boilerplate; "computer"/"flag" are on more than 2 images: not specific
    assert "png/s0.png" not in captions and "png/none.png" not in captions
    assert captions["png/f0.png"] == ["Flag of place a", "placea"]
    assert captions["png/owl.png"] == ["Owl", "A night bird. mail:", "bird"]
    assert counts["boilerplate_title"] == 5 and counts["kept"] == 5 and counts["images_without_caption"] == 5


# ---------------------------------------------------------------- concept-grouped splits and the files

def synthetic_source(name: str, n_concepts: int, vendors: int, root: Path, dim: int = 64) -> SourceData:
    items = []
    for c in range(n_concepts):
        for v in range(vendors if c % 3 else 1):
            path = root / name / f"c{c}-v{v}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{name}{c}-{v}".encode())
            word = "".join(chr(97 + int(d)) for d in f"{c:03d}")  # digits would be normalised away
            items.append(SourceItem(path, f"{name}/c{c}-v{v}", [f"{name} concept {word}",
                                                                f"tags of {name} {word}, more"], f"k{c}", f"v{v}"))
    return SourceData(name, items, {"note": name})


def test_concept_split_keeps_concepts_whole_and_holds_out_one_image_per_group(tmp_path):
    data = synthetic_source("emo", 40, 4, tmp_path)
    pooled = np.random.default_rng(0).standard_normal((len(data.items), 16)).astype(np.float32)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    # two concepts drawn alike (near-duplicate features): one group, never split apart
    first_k5 = next(i for i, item in enumerate(data.items) if item.concept == "k5")
    first_k7 = next(i for i, item in enumerate(data.items) if item.concept == "k7")
    pooled[first_k7] = pooled[first_k5]
    split = concept_split(data, pooled, n_dev=5, n_test=8, seed=3)
    concept = np.array([item.concept for item in data.items])
    assert len(split.test) == 8 and len(split.dev) == 5
    sets = {name: set(concept[getattr(split, name)]) for name in ("train", "dev", "test")}
    assert not (sets["train"] & sets["dev"] or sets["train"] & sets["test"] or sets["dev"] & sets["test"])
    for name in ("dev", "test"):  # one image per concept group
        assert len(sets[name]) == len(getattr(split, name))
    assert ({"k5", "k7"} <= sets["train"]) or not ({"k5", "k7"} & sets["train"])
    assert split.report["feature_unions"] == 1 and split.report["n_groups"] == 39
    held_out = [i for i, c in enumerate(concept) if c in sets["dev"] | sets["test"]]
    assert split.report["held_out_images_not_used"] == len(held_out) - 13
    assert set(split.train) == {i for i, c in enumerate(concept) if c in sets["train"]}
    again = concept_split(data, pooled, n_dev=5, n_test=8, seed=3)
    assert all(np.array_equal(getattr(split, n), getattr(again, n)) for n in ("train", "dev", "test"))
    with pytest.raises(DataError, match=r"emo: --dev 20 \+ --test 19 leaves no training concepts out of 39"):
        concept_split(data, pooled, n_dev=20, n_test=19, seed=0)


def test_a_group_too_large_to_hold_out_stays_in_train(tmp_path):
    data = synthetic_source("ico", 30, 2, tmp_path)  # 50 images
    for item in data.items[:20]:
        item.concept = "one-huge-concept"  # e.g. game-icons' 121 "abstract" drawings
    pooled = np.eye(len(data.items), 8 + len(data.items), dtype=np.float32)
    for seed in range(5):
        split = concept_split(data, pooled, n_dev=1, n_test=2, seed=seed, max_held_out_group=10)
        assert set(range(20)) <= set(split.train.tolist())
        assert split.report["groups_too_large_to_hold_out"] == 1


def test_drop_shared_captions_keeps_the_first_and_concept_wide_ones():
    items = [SourceItem(Path(), "a", ["apple", "fruit"], "A"), SourceItem(Path(), "a2", ["apple", "fruit"], "A"),
             SourceItem(Path(), "b", ["fruit", "banana"], "B"), SourceItem(Path(), "c", ["Fruit!"], "C")]
    assert drop_shared_captions(items) == 1  # "fruit" of A; B and C keep theirs, being their first caption
    assert [i.captions for i in items] == [["apple"], ["apple"], ["fruit", "banana"], ["Fruit!"]]


def test_build_writes_cap2img_and_a_test_split_per_source(tmp_path):
    sources = [synthetic_source("emoji", 30, 3, tmp_path / "img"), synthetic_source("icons", 25, 2, tmp_path / "img")]
    out = tmp_path / "out"
    (out).mkdir()
    for stale in ("test_ims.npy", "test_caps.txt"):  # a split of an earlier run with another layout
        (out / stale).write_bytes(b"old")
    manifest = build_multicaption_dataset(out, sources, extractor=FakeExtractor(), n_dev=3, n_test=4, seed=0,
                                          images_root=tmp_path / "img", log=quiet)
    assert list(manifest["splits"]) == ["train", "dev", "test_emoji", "test_icons"]
    assert not (out / "test_ims.npy").exists() and not list(out.glob(".*.tmp.npy"))
    items = {f"{s.source}/{item.name.split('/', 1)[1]}": item for s in sources for item in s.items}
    direct = FakeExtractor()
    for name, info in manifest["splits"].items():
        split = load_split(out, name)
        assert (out / f"{name}_cap2img.npy").is_file()
        assert split.n_images == info["n_images"] and split.n_captions == info["n_captions"]
        for row, image in enumerate(info["images"]):
            item = items[image]
            assert [split.captions[j] for j in split.captions_of(row)] == item.captions
            np.testing.assert_array_equal(split.images[row], direct.extract([item.path])[0])
    assert manifest["splits"]["dev"]["sources"] == {"emoji": [0, 3], "icons": [3, 6]}
    assert manifest["splits"]["test_icons"]["sources"] == {"icons": [0, 4]}
    emoji = manifest["sources"]["emoji"]
    train_images = [n for n in manifest["splits"]["train"]["images"] if n.startswith("emoji/")]
    train_concepts = {items[n].concept for n in train_images}
    test_concepts = {items[n].concept for n in manifest["splits"]["test_emoji"]["images"]}
    assert not train_concepts & test_concepts and len(train_concepts) == 23
    assert len(train_images) == sum(1 for item in sources[0].items if item.concept in train_concepts)
    assert emoji["splits"] == {"train": len(train_images), "dev": 3, "test_emoji": 4}
    assert emoji["grouping"]["n_groups"] == 30 and emoji["grouping"]["concept_unions"] == 40
    assert emoji["note"] == "emoji" and emoji["test_captions_in_train_verbatim"] == 0
    assert (out / "vocab.json").is_file() and (out / "manifest.json").is_file()
    # one source: train / dev / test
    one = build_multicaption_dataset(tmp_path / "one", sources[:1], extractor=FakeExtractor(), n_dev=2, n_test=3,
                                     seed=1, log=quiet)
    assert list(one["splits"]) == ["train", "dev", "test"]


# ---------------------------------------------------------------- the commands

def test_prepare_all_emoji_and_icons_commands_offline(tmp_path, monkeypatch, capsys):
    pytest.importorskip("cairosvg")
    import temde.cli.prepare as cli_prepare

    emoji_found = fake_emoji_packages(tmp_path / "emoji-packages")
    emoji_folders_all = {**{p.name: emoji_found["a" if i % 2 == 0 else "b"] for i, p in enumerate(E.EMOJI_SETS)},
                         **{k: v for k, v in emoji_found.items() if k not in ("a", "b")}}
    icon_folders = fake_icon_packages(tmp_path / "icon-packages")
    monkeypatch.setattr(E, "fetch_all", lambda packages, cache, log, wanted: emoji_folders_all)
    monkeypatch.setattr(I, "fetch_all", lambda packages, cache, log, wanted: icon_folders)
    monkeypatch.setattr(cli_prepare, "_extractor", lambda args: FakeExtractor())
    clip_root = tmp_path / "openclipart"
    fake_openclipart_tree(clip_root)
    cache = tmp_path / "cache"
    out = tmp_path / "all"
    args = ["prepare", "all", "--out", str(out), "--cache", str(cache), "--dev", "1", "--test", "2",
            "--root", str(clip_root)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "test_openclipart" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["splits"]) == ["train", "dev", "test_emoji", "test_icons", "test_openclipart"]
    for name in manifest["splits"]:
        split = load_split(out, name)
        assert split.caption_images is not None
    assert manifest["sources"]["openclipart"]["boilerplate_title"] == 11
    assert manifest["sources"]["emoji"]["render"]["failed"] == 5  # vendor A's broken drawing, in 5 sets
    # the same settings again: rebuilt from the cache; other settings: --force
    assert main(args) == 0
    assert main(args[:-4] + ["--test", "3", "--root", str(clip_root)]) == 2
    assert "--force" in capsys.readouterr().err
    # one source per folder
    assert main(["prepare", "emoji", "--out", str(tmp_path / "emoji"), "--cache", str(cache), "--dev", "1",
                 "--test", "1"]) == 0
    assert list(json.loads((tmp_path / "emoji" / "manifest.json").read_text())["splits"]) == ["train", "dev", "test"]
    assert main(["prepare", "icons", "--out", str(tmp_path / "icons"), "--cache", str(cache), "--dev", "1",
                 "--test", "2", "--limit", "6"]) == 0
    assert json.loads((tmp_path / "icons" / "manifest.json").read_text())["sources"]["icons"]["concepts"] == 6
    assert main(["prepare", "openclipart", "--captions", "separate", "--out", str(tmp_path / "clip"), "--cache",
                 str(cache), "--root", str(clip_root), "--dev", "1", "--test", "2"]) == 0
    clip = json.loads((tmp_path / "clip" / "manifest.json").read_text())
    assert list(clip["splits"]) == ["train", "dev", "test"] and clip["sources"]["openclipart"]["images"] == 16
    # a package that cannot be downloaded: one line, exit status 2
    capsys.readouterr()

    def offline(packages, cache, log, wanted):
        raise DataError("@iconify-json/noto@1.2.9: download of https://registry.npmjs.org/... failed (offline)")

    monkeypatch.setattr(E, "fetch_all", offline)
    assert main(["prepare", "emoji", "--out", str(tmp_path / "emoji2"), "--cache", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "@iconify-json/noto@1.2.9: download of" in err


@pytest.mark.slow
def test_real_packages_quick_subset(tmp_path):
    """Network + the real network: a few concepts of every source, from the pinned npm packages."""
    pytest.importorskip("cairosvg")
    out = tmp_path / "all"
    assert main(["prepare", "all", "--out", str(out), "--cache", str(tmp_path / "cache"), "--limit", "40",
                 "--dev", "4", "--test", "8", "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for source in ("emoji", "icons", "openclipart"):
        split = load_split(out, f"test_{source}")
        assert split.n_images == 8 and split.images.shape[1:] == (49, 1280)
    assert manifest["sources"]["emoji"]["render"]["failed"] == 0
