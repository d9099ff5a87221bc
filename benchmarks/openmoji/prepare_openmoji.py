"""OpenMoji 17.0.0 (CC-BY-SA-4.0) as a temde image-text data set, through `temde prepare folder`.

    OMP_NUM_THREADS=1 python benchmarks/openmoji/prepare_openmoji.py [--cache DIR] [--out DIR] [--size 224]

Steps (each one reuses what an earlier run left, so a second run does no work):
1. `npm pack openmoji@17.0.0` into --cache (checked against a pinned SHA-256), extract the colour SVGs and
   data/openmoji.json from it, refusing any member with an absolute path, `..` or a non-file type.
2. One caption per emoji from human-written text only: the CLDR/OpenMoji `annotation`, then the `tags` and
   `openmoji_tags` keywords. Never file names, codepoints or group/subgroup categories (those would leak the
   answer into the text or describe hundreds of emoji at once). Skin-tone variants (the same drawing with
   another colour) and emoji without an annotation are skipped.
3. Rasterise each kept `color/svg/<hexcode>.svg` to a --size PNG on white with cairosvg (`pip install cairosvg`,
   or `pip install -e .[sources]`; it needs libcairo.so.2).
4. `python -m temde.cli prepare folder ... --dev 500 --test 500 --seed 0`: EfficientNet features (cached by
   content under ~/.cache/temde/features), leakage-free grouped split, manifest.json. If --out already holds
   a manifest.json the data set is complete and the script stops at once.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

from temde.data.sources.openclipart import MAX_CAPTION_WORDS
from temde.data.sources.splits import normalise_text
from temde.data.vocab import atomic_write

VERSION = "17.0.0"
TARBALL = f"openmoji-{VERSION}.tgz"
# The registry tarball of 17.0.0; a different file means a different (or tampered) release.
TARBALL_SHA256 = "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68"
WANTED = re.compile(r"package/(color/svg/[0-9A-F-]+\.svg|data/openmoji\.json)")
HAS_LETTER = re.compile(r"[^\W\d_]")  # a keyword like "✓" or "🏳" carries no words for the vocabulary
DEV = TEST = 500  # ~2,465 emoji: 500 + 500 leaves ~1,450 to train on, as openclipart's 500/500 does


def log(message: str) -> None:
    print(f"[openmoji] {message}", flush=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(cache: Path) -> Path:
    """The extracted package folder (color/svg/, data/openmoji.json), downloading it on first use."""
    root = cache / f"openmoji-{VERSION}"
    if (root / "data" / "openmoji.json").is_file():
        return root
    tarball = cache / TARBALL
    if not tarball.is_file():
        log(f"npm pack openmoji@{VERSION} -> {cache}")
        subprocess.run(["npm", "pack", f"openmoji@{VERSION}", "--silent"], cwd=cache, check=True,
                       stdout=subprocess.DEVNULL)
    if _sha256(tarball) != TARBALL_SHA256:
        raise SystemExit(f"{tarball}: SHA-256 differs from the pinned openmoji {VERSION} tarball; delete it and rerun")
    # Extract into a temporary folder and rename it last, so an interrupted run never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=".extract.", dir=cache))
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts:
                raise SystemExit(f"{tarball}: unsafe path {member.name!r}")
            if not WANTED.fullmatch(member.name):
                continue  # black SVGs, sources, fonts: not needed
            if not member.isfile():
                raise SystemExit(f"{tarball}: {member.name!r} is not a regular file")
            target = staging / Path(*name.parts[1:])  # drop the leading "package/"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    staging.rename(root)
    return root


def _keywords(field: str) -> list[str]:
    return [" ".join(k.split()) for k in field.split(",") if HAS_LETTER.search(k)]


def build_caption(entry: dict) -> str:
    """'annotation. keyword, keyword, ...' capped at MAX_CAPTION_WORDS words (keywords are cut first).

    A keyword whose words the caption already has ("face" after "grinning face", "smile" twice) is dropped:
    repeats add length, not information.
    """
    annotation = " ".join(entry["annotation"].split())
    seen = set(normalise_text(annotation).split())  # "flag: Peru" -> {"flag", "peru"}
    n_words = len(annotation.split())
    kept = []
    for keyword in _keywords(entry.get("tags", "")) + _keywords(entry.get("openmoji_tags", "")):
        words = normalise_text(keyword).split()
        if set(words) <= seen:
            continue
        if n_words + len(keyword.split()) > MAX_CAPTION_WORDS:
            break
        kept.append(keyword)
        seen.update(words)
        n_words += len(keyword.split())
    return f"{annotation}. {', '.join(kept)}" if kept else annotation


def select(root: Path) -> list[tuple[str, str]]:
    """(hexcode, caption) for every emoji kept, in the package's order."""
    entries = json.loads((root / "data" / "openmoji.json").read_text(encoding="utf-8"))
    kept, skin, unnamed, no_svg = [], 0, 0, 0
    for entry in entries:
        if entry.get("skintone"):  # int or str in the JSON; "" means the base emoji
            skin += 1
        elif not entry.get("annotation", "").strip():
            unnamed += 1
        elif not (root / "color" / "svg" / f"{entry['hexcode']}.svg").is_file():
            no_svg += 1
        else:
            kept.append((entry["hexcode"], build_caption(entry)))
    log(f"{len(entries)} entries: kept {len(kept)}, skipped {skin} skin-tone variants, {unnamed} without "
        f"annotation, {no_svg} without a colour SVG")
    return kept


_MARKER_REF = re.compile(r'\s+marker-(?:start|mid|end)="url\(#([^)"]+)\)"')


def _svg_source(path: Path) -> bytes:
    """The SVG, minus marker references to ids it does not define.

    Browsers draw nothing for a dangling marker; cairosvg crashes on one (openmoji 17.0.0 has one such file,
    1F3F4-E0065-E0073-E0063-E006D-E007F). Dropping the reference renders what a browser shows.
    """
    text = path.read_text(encoding="utf-8")
    defined = set(re.findall(r'\bid="([^"]+)"', text))
    return _MARKER_REF.sub(lambda m: m.group(0) if m.group(1) in defined else "", text).encode("utf-8")


def render(root: Path, images: Path, hexcodes: list[str], size: int) -> tuple[int, list[str]]:
    """Rasterise the SVGs not rendered yet; returns (how many were rendered now, hexcodes that failed)."""
    import cairosvg  # optional dependency: imported here so --help works without it
    from PIL import Image

    images.mkdir(parents=True, exist_ok=True)
    todo = [h for h in hexcodes if not (images / f"{h}.png").is_file()]
    failed = []
    for i, hexcode in enumerate(todo, start=1):
        try:
            png = cairosvg.svg2png(bytestring=_svg_source(root / "color" / "svg" / f"{hexcode}.svg"),
                                   output_width=size, output_height=size)
        except Exception as exc:  # one broken drawing should cost one emoji, not the data set
            log(f"skipping {hexcode}: cairosvg failed ({type(exc).__name__}: {exc})")
            failed.append(hexcode)
            continue
        rgba = Image.open(io.BytesIO(png)).convert("RGBA")
        # The feature extractor would flatten onto white too; doing it here makes the PNGs what the network sees.
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        with atomic_write(images / f"{hexcode}.png", binary=True) as f:
            rgb.save(f, format="PNG")
        if i % 500 == 0:
            log(f"rendered {i}/{len(todo)}")
    return len(todo) - len(failed), failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="~/.cache/temde/openmoji",
                        help="package, rendered PNGs and captions.tsv (default %(default)s)")
    parser.add_argument("--out", default="~/.cache/temde/data/openmoji",
                        help="precomp data set folder (default %(default)s)")
    parser.add_argument("--size", type=int, default=224,
                        help="raster size in px (default %(default)s, the feature extractor's input size)")
    args = parser.parse_args(argv)
    cache, out = Path(args.cache).expanduser(), Path(args.out).expanduser()
    if (out / "manifest.json").is_file():
        log(f"{out}/manifest.json exists: data set already prepared, nothing to do")
        return 0
    cache.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    root = fetch(cache)
    log(f"package ready in {time.perf_counter() - start:.1f} s: {root}")

    start = time.perf_counter()
    kept = select(root)
    log(f"captions built in {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    # Rendered PNGs are keyed by hexcode only, so each --size gets its own folder.
    images = cache / "images" / str(args.size)
    done, failed = render(root, images, [h for h, _ in kept], args.size)
    log(f"rendered {done} new PNGs ({len(kept) - done - len(failed)} reused, {len(failed)} failed) in "
        f"{time.perf_counter() - start:.1f} s: {images}")

    # Written after rendering so that it lists exactly the images that exist.
    kept = [(h, c) for h, c in kept if h not in failed]
    captions = cache / "captions.tsv"
    with atomic_write(captions) as f:
        f.writelines(f"{hexcode}.png\t{caption}\n" for hexcode, caption in kept)
    log(f"{len(kept)} captions written: {captions}")

    start = time.perf_counter()
    command = [sys.executable, "-m", "temde.cli", "prepare", "folder", "--images", str(images),
               "--captions", str(captions), "--out", str(out),
               "--dev", str(DEV), "--test", str(TEST), "--seed", "0"]
    log("running " + " ".join(command))
    result = subprocess.run(command)  # inherits stdout/stderr, so prepare's report is echoed as it runs
    log(f"temde prepare folder finished with exit code {result.returncode} in {time.perf_counter() - start:.1f} s")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
