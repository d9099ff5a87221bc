"""SVG drawings -> PNG files on white, for the feature extractor: cairosvg, skip-and-count on failure.

Used by the emoji and icon sources (and the OpenMoji benchmark's idea, generalised). An SVG is rasterised with
cairosvg (`pip install cairosvg`, or `pip install -e .[sources]`; it needs the system library libcairo.so.2)
so that its longer side is `size` pixels, then composited onto white: a transparent PNG would otherwise read
as black to a network that ignores alpha. Monochrome icon sets draw in `currentColor`; it is black here.

A drawing that cairosvg cannot render, or that renders to nothing but white, is skipped and counted, never a
crash: `render_all` returns what failed and why. PNGs are kept where the caller says (one file per drawing,
named by the caller), and an existing PNG is reused, so a second run renders nothing.

`iconify_svg` turns one icon of an Iconify JSON icon set (the `@iconify-json/*` npm packages: a body per
icon, aliases with flips and rotations) into a standalone SVG document.
"""
from __future__ import annotations

import io
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from temde.errors import DataError

RENDER_SIZE = 224  # the feature extractor's input size: rendering larger only costs time
# The pixel value below which a rendered pixel counts as drawn (on white); a drawing with no such pixel is blank.
_INK = 250
_CHUNK = 64  # drawings per task sent to a rendering process


def require_cairosvg():
    """Import cairosvg, or say in one line how to get it."""
    try:
        import cairosvg
    except ImportError:
        raise DataError("rendering SVGs needs cairosvg: pip install cairosvg (or pip install -e .[sources]); "
                        "it also needs the system library libcairo.so.2 (Debian/Ubuntu: apt-get install "
                        "libcairo2)") from None
    except OSError as exc:  # cairocffi found no libcairo
        raise DataError(f"cairosvg cannot load the cairo library ({exc}); install libcairo2 "
                        f"(Debian/Ubuntu: apt-get install libcairo2)") from None
    return cairosvg


# ---------------------------------------------------------------- Iconify JSON

_ICONIFY_DEFAULTS = {"left": 0, "top": 0, "width": 16, "height": 16, "rotate": 0, "hFlip": False, "vFlip": False}


def _resolve_iconify(icon_set: dict, name: str) -> dict | None:
    """The icon's data with its aliases' transformations folded in (Iconify's rules), or None if unknown."""
    icons, aliases = icon_set.get("icons", {}), icon_set.get("aliases", {})
    chain = []
    seen = set()
    while name not in icons:
        alias = aliases.get(name)
        if alias is None or name in seen or "parent" not in alias:
            return None
        seen.add(name)
        chain.append(alias)
        name = alias["parent"]
    data = {key: icon_set.get(key, default) for key, default in _ICONIFY_DEFAULTS.items()}
    data.update({k: v for k, v in icons[name].items()})
    for alias in reversed(chain):  # the alias nearest the icon first
        for key in ("left", "top", "width", "height"):
            if key in alias:
                data[key] = alias[key]
        data["rotate"] = (data["rotate"] + alias.get("rotate", 0)) % 4
        data["hFlip"] = data["hFlip"] != bool(alias.get("hFlip", False))
        data["vFlip"] = data["vFlip"] != bool(alias.get("vFlip", False))
    return data


def _number(value: float) -> str:
    return f"{value:g}"


def iconify_svg(icon_set: dict, name: str) -> str | None:
    """A standalone SVG document for icon `name` of an Iconify JSON set (aliases resolved), or None.

    Follows Iconify's own `iconToSVG`: flips become a translate + scale, quarter-turn rotations a rotate()
    about the box centre (width and height swap for odd turns).
    """
    data = _resolve_iconify(icon_set, name)
    if data is None or not data.get("body"):
        return None
    left, top, width, height = (float(data[k]) for k in ("left", "top", "width", "height"))
    transforms: list[str] = []
    rotation = int(data["rotate"])
    if data["hFlip"]:
        if data["vFlip"]:
            rotation += 2
        else:
            transforms.append(f"translate({_number(width + left)} {_number(-top)})")
            transforms.append("scale(-1 1)")
            top = left = 0.0
    elif data["vFlip"]:
        transforms.append(f"translate({_number(-left)} {_number(height + top)})")
        transforms.append("scale(1 -1)")
        top = left = 0.0
    rotation %= 4
    if rotation == 1:
        centre = height / 2 + top
        transforms.insert(0, f"rotate(90 {_number(centre)} {_number(centre)})")
    elif rotation == 2:
        transforms.insert(0, f"rotate(180 {_number(width / 2 + left)} {_number(height / 2 + top)})")
    elif rotation == 3:
        centre = width / 2 + left
        transforms.insert(0, f"rotate(-90 {_number(centre)} {_number(centre)})")
    if rotation % 2:
        left, top, width, height = top, left, height, width
    body = data["body"]
    if transforms:
        body = f'<g transform="{" ".join(transforms)}">{body}</g>'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{_number(left)} {_number(top)} {_number(width)} {_number(height)}" '
            f'width="{_number(width)}" height="{_number(height)}">{body}</svg>')


# ---------------------------------------------------------------- rendering

_MARKER_REF = re.compile(r'\s+marker-(?:start|mid|end)="url\(#([^)"]+)\)"')


def _drop_dangling_markers(text: str) -> str:
    """Marker references to ids the file does not define: browsers draw nothing for them, cairosvg crashes
    (benchmarks/openmoji met one). Dropping the reference renders what a browser shows."""
    if "marker-" not in text:
        return text
    defined = set(re.findall(r'\bid="([^"]+)"', text))
    return _MARKER_REF.sub(lambda m: m.group(0) if m.group(1) in defined else "", text)


def render_png(svg: str | bytes, size: int = RENDER_SIZE) -> bytes:
    """One SVG -> PNG bytes, RGB on white, the drawing fitted into size x size (aspect kept, centred).

    Raises ValueError("renders blank") for a drawing without a single dark-enough pixel, and whatever
    cairosvg raises for one it cannot parse or draw.
    """
    cairosvg = require_cairosvg()
    from PIL import Image

    text = svg.decode("utf-8", errors="replace") if isinstance(svg, bytes) else svg
    text = _drop_dangling_markers(text)
    # currentColor (the ink of monochrome icon sets) is black in cairosvg when no `color` is set.
    png = cairosvg.svg2png(bytestring=text.encode("utf-8"), output_width=size, output_height=size,
                           background_color="white", parent_width=size, parent_height=size)
    image = Image.open(io.BytesIO(png))
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if rgb.convert("L").getextrema()[0] >= _INK:
        raise ValueError("renders blank (no drawn pixel)")
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()


@dataclass
class RenderJob:
    """One drawing to rasterise: `name` for reports, the SVG text, the PNG file to write."""
    name: str
    svg: str | bytes
    out: Path


@dataclass
class RenderReport:
    rendered: int = 0                                  # rasterised in this run
    reused: int = 0                                    # PNG already there from an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)   # (name, reason)
    seconds: float = 0.0


def _render_chunk(chunk: list[tuple[str, str | bytes, str]], size: int) -> list[tuple[str, str | None]]:
    """Render a chunk of (name, svg, out path); returns (name, error or None) for each. Runs in a worker."""
    from temde.data.vocab import atomic_write

    results = []
    for name, svg, out in chunk:
        try:
            png = render_png(svg, size)
        except DataError:
            raise
        except Exception as exc:  # any parse/draw error costs this drawing, not the data set
            reason = " ".join(str(exc).split()) or type(exc).__name__
            results.append((name, f"{type(exc).__name__}: {reason[:160]}"))
            continue
        with atomic_write(out, binary=True) as f:
            f.write(png)
        results.append((name, None))
    return results


def render_all(jobs: Iterable[RenderJob], size: int = RENDER_SIZE, workers: int = 1, progress: bool = True,
               desc: str = "render", log: Callable[[str], None] = print) -> RenderReport:
    """Rasterise every job whose PNG is not there yet; `workers` > 1 renders in that many processes.

    A drawing that fails is skipped and counted (RenderReport.failed), never raised; a missing cairosvg is a
    DataError before any work.
    """
    from tqdm import tqdm

    jobs = list(jobs)
    report = RenderReport()
    start = time.perf_counter()
    todo = [job for job in jobs if not job.out.is_file()]
    report.reused = len(jobs) - len(todo)
    if not todo:
        return report
    require_cairosvg()
    chunks = [[(j.name, j.svg, str(j.out)) for j in todo[i:i + _CHUNK]] for i in range(0, len(todo), _CHUNK)]
    with tqdm(total=len(todo), unit="svg", desc=desc, disable=not progress, file=sys.stderr) as bar:
        def consume(results):
            for name, error in results:
                if error is None:
                    report.rendered += 1
                else:
                    report.failed.append((name, error))
            bar.update(len(results))

        if workers <= 1 or len(chunks) == 1:
            for chunk in chunks:
                consume(_render_chunk(chunk, size))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for results in pool.map(_render_chunk, chunks, [size] * len(chunks)):
                    consume(results)
    report.seconds = time.perf_counter() - start
    return report


def describe_failures(report: RenderReport, limit: int = 3) -> str:
    """'2 drawings did not render and were skipped: a (reason); b (reason)' or ''."""
    if not report.failed:
        return ""
    shown = "; ".join(f"{name} ({reason})" for name, reason in report.failed[:limit])
    more = f"; and {len(report.failed) - limit} more" if len(report.failed) > limit else ""
    return f"{len(report.failed)} drawing(s) did not render and were skipped: {shown}{more}"


def png_path(root: Path, *parts: str) -> Path:
    """root/parts..., each part made safe for a file name (no separators, no leading dot)."""
    safe = [re.sub(r"[^\w.@+-]+", "_", p).lstrip(".") or "_" for p in parts]
    return root.joinpath(*safe)


def relative_name(path: Path, root: Path) -> str:
    """path relative to root when below it (the manifest's image names), else absolute."""
    try:
        return Path(os.path.relpath(path, root)).as_posix() if Path(path).is_relative_to(root) else str(path)
    except ValueError:
        return str(path)
