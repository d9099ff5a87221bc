"""The SCAN "precomp" layout: `{split}_ims.npy` + `{split}_caps.txt` (+ `vocab.json`) in one folder.

`{split}_ims.npy` is float32 (n_images, regions, dim); `{split}_caps.txt` holds one caption per line, k
consecutive lines per image, k = n_captions / n_images. Some files of the field instead repeat every image k
times (n_rows == n_captions); that layout is recognised when rows 0..k-1 are bitwise-equal and row k differs,
and every k-th row is then used as the image (checked for all groups when `validate=True`).

An optional `{split}_cap2img.npy` (int64, one entry per caption line) names the image of every caption, so an
image may have 1..n captions; without it the fixed-k layout above holds (Flickr30K/COCO files stay exactly as
they are). Arrays are memory-mapped (COCO train is tens of GB); captions are read as UTF-8 text, never bytes. Problems
are DataErrors whose one-line message names the file (and the line or image index).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from temde.data.vocab import Vocabulary, atomic_write
from temde.errors import DataError

VOCAB_FILE = "vocab.json"
KNOWN_SPLITS = ("train", "dev", "test", "testall")
# Rows of features read per step while validating: bounded memory whatever the file size.
_CHUNK_BYTES = 64 << 20


def image_file(data_dir: str | os.PathLike, split: str) -> Path:
    return Path(data_dir) / f"{split}_ims.npy"


def caption_file(data_dir: str | os.PathLike, split: str) -> Path:
    return Path(data_dir) / f"{split}_caps.txt"


def caption_index_file(data_dir: str | os.PathLike, split: str) -> Path:
    return Path(data_dir) / f"{split}_cap2img.npy"


@dataclass(frozen=True)
class PrecompSplit:
    """One split: images[i] is image i, captions[j] belongs to image `image_ids()[j]`: j // captions_per_image
    in the fixed layout, `caption_images[j]` when a caption->image index is given (then captions_per_image is 0).

    Build it with `load_split`, or in memory with `PrecompSplit.from_arrays` (tests, synthetic data).
    `images_repeated` says the file repeats each image k times and `images` views every k-th row. `layout` is
    what the metrics take (temde.evaluation): k, or the caption->image array.
    """

    name: str
    images: np.ndarray = field(repr=False)
    captions: list[str] = field(repr=False)
    captions_per_image: int
    data_dir: Path | None = None
    images_repeated: bool = False
    caption_images: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_arrays(cls, images: np.ndarray, captions: list[str], name: str = "memory",
                    caption_images: np.ndarray | None = None) -> PrecompSplit:
        """An in-memory split (no files); k is inferred from the counts unless `caption_images` is given."""
        images = np.asarray(images, dtype=np.float32)
        if caption_images is not None:
            index = _checked_index(np.asarray(caption_images), len(images), len(captions), "caption_images")
            return cls(name, images, list(captions), 0, caption_images=index)
        if images.ndim != 3 or len(images) == 0 or not captions or len(captions) % len(images):
            raise ValueError(f"need images [n>0, R, D] and a positive multiple of n captions, got images "
                             f"{images.shape} and {len(captions)} captions")
        return cls(name, images, list(captions), len(captions) // len(images))

    @property
    def layout(self) -> int | np.ndarray:
        """The caption layout the metrics take: k, or the caption->image array."""
        return self.captions_per_image if self.caption_images is None else self.caption_images

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    @property
    def image_path(self) -> Path | None:
        return None if self.data_dir is None else image_file(self.data_dir, self.name)

    @property
    def caption_path(self) -> Path | None:
        return None if self.data_dir is None else caption_file(self.data_dir, self.name)

    def image_ids(self) -> np.ndarray:
        """The image id of every caption: [n_captions] int64."""
        if self.caption_images is not None:
            return self.caption_images
        return np.arange(self.n_captions, dtype=np.int64) // self.captions_per_image

    def subset(self, n_images: int) -> "PrecompSplit":
        """The first `n_images` images and their captions."""
        if n_images >= self.n_images:
            return self
        if n_images < 1:
            raise ValueError(f"subset: expected a positive number of images, got {n_images}")
        if self.caption_images is None:
            k = self.captions_per_image
            return dataclasses.replace(self, images=self.images[:n_images], captions=self.captions[:n_images * k])
        keep = np.flatnonzero(self.caption_images < n_images)
        return dataclasses.replace(self, images=self.images[:n_images], captions=[self.captions[j] for j in keep],
                                   caption_images=self.caption_images[keep])

    def captions_of(self, image: int) -> list[int]:
        """The caption indices of one image."""
        return captions_of_image(self.layout, image)

    def open_images(self) -> np.ndarray:
        """A fresh memory map of the image file, same view as `images` (for DataLoader workers)."""
        if self.image_path is None:
            return self.images
        rows = np.load(self.image_path, mmap_mode="r", allow_pickle=False)
        return rows[::self.captions_per_image] if self.images_repeated else rows


def image_of_caption(layout: int | np.ndarray, caption: int) -> int:
    """The image of caption `caption` under a caption layout (k, or the caption->image array)."""
    return caption // layout if isinstance(layout, (int, np.integer)) else int(layout[caption])


def captions_of_image(layout: int | np.ndarray, image: int) -> list[int]:
    """The caption indices of image `image` under a caption layout (k, or the caption->image array)."""
    if isinstance(layout, (int, np.integer)):
        return list(range(image * layout, (image + 1) * layout))
    return np.flatnonzero(np.asarray(layout) == image).tolist()


# ---------------------------------------------------------------- reading

def read_utf8_text(path: Path) -> str:
    """A caption file's text; missing, unreadable or invalid UTF-8 (with its line number) is a DataError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: caption file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return raw.decode("utf-8-sig")  # -sig: tolerate a byte-order mark written by some editors
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 ({exc.reason})") from None


def read_captions(path: str | os.PathLike) -> list[str]:
    """One caption per line, UTF-8; a bad byte or an empty line is a DataError with its line number."""
    path = Path(path)
    text = read_utf8_text(path)
    # Split on "\n" only: str.splitlines would also split on characters such as U+2028 inside a caption.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    captions = [line.strip() for line in lines]
    for number, caption in enumerate(captions, start=1):
        if not caption:
            raise DataError(f"{path}: line {number} is an empty caption")
    return captions


def _open_features(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: image feature file not found") from None
    except (ValueError, OSError, EOFError, SyntaxError) as exc:  # bad header, truncated data, pickled objects
        raise DataError(f"{path}: not a readable .npy array, truncated or corrupt ({exc})") from None
    if not isinstance(array, np.memmap):
        raise DataError(f"{path}: not a single .npy array")
    expected = array.offset + array.nbytes
    actual = path.stat().st_size
    if actual != expected:
        raise DataError(f"{path}: file is {actual} bytes but its header describes {expected}; corrupt")
    if array.dtype != np.float32:
        raise DataError(f"{path}: features must be float32, found {array.dtype}")
    if array.ndim != 3:
        raise DataError(f"{path}: features must be (n_images, regions, dim), found shape {array.shape}")
    if array.shape[0] == 0:
        raise DataError(f"{path}: empty split (0 images)")
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise DataError(f"{path}: features have no regions or no dimensions, shape {array.shape}")
    return array


def _same_row(rows: np.ndarray, a: int, b: int) -> bool:
    # Bitwise: NaN payloads and -0.0 count as what they are, not as float comparisons.
    return np.array_equal(rows[a].view(np.uint32), rows[b].view(np.uint32))


def _leading_repeats(rows: np.ndarray) -> int:
    """How many rows from the start are bitwise-equal to row 0."""
    run = 1
    while run < len(rows) and _same_row(rows, 0, run):
        run += 1
    return run


def _chunks(rows: np.ndarray, repeat: int = 1):
    """(start, rows[start:start+step]) over the first axis, step a multiple of `repeat` within ~64 MB."""
    row_bytes = max(1, int(np.prod(rows.shape[1:])) * rows.itemsize)
    step = max(1, _CHUNK_BYTES // row_bytes // repeat) * repeat
    for start in range(0, len(rows), step):
        yield start, np.asarray(rows[start:start + step])


def _first_non_finite(rows: np.ndarray) -> int | None:
    """Index of the first row holding NaN/inf, read chunkwise; None if all are finite."""
    for offset, chunk in _chunks(rows):
        finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if not finite.all():
            return offset + int(np.argmin(finite))
    return None


def _scan_rows(path: Path, rows: np.ndarray, repeat: int) -> None:
    """Chunkwise pass over the file: every value finite and, when repeat > 1, every group of rows identical."""
    for start, chunk in _chunks(rows, repeat):
        finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            where = f"row {row} (image {row // repeat})" if repeat > 1 else f"image {row}"
            raise DataError(f"{path}: {where} has non-finite features (NaN or inf)")
        if repeat > 1:
            groups = chunk.view(np.uint32).reshape(-1, repeat, rows.shape[1] * rows.shape[2])
            same = (groups == groups[:, :1]).all(axis=(1, 2))
            if not same.all():
                group = start // repeat + int(np.argmin(same))
                raise DataError(f"{path}: rows repeat each image {repeat} times but rows "
                                f"{group * repeat}..{group * repeat + repeat - 1} are not identical")


def _captions_per_image(caps_path: Path, path: Path, rows: np.ndarray, n_captions: int, k: int | None,
                        validate: bool) -> tuple[int, bool]:
    """(k, repeated) from the counts, the repeated-row check, or the caller's k."""
    n_rows = len(rows)
    if n_captions % n_rows:
        raise DataError(f"{caps_path}: {n_captions} captions is not a multiple of the {n_rows} images in "
                        f"{path.name}")
    if n_captions > n_rows:  # ordinary layout: k captions per stored image
        inferred = n_captions // n_rows
        if k is not None and k != inferred:
            raise DataError(f"{caps_path}: {n_rows} images and {n_captions} captions give {inferred} captions per "
                            f"image, not the {k} asked for")
        return inferred, False
    # n_rows == n_captions: one row per caption, either k = 1 or each image stored k times.
    repeat = _leading_repeats(rows) if k is None else k
    if repeat == 1:
        return 1, False
    if n_rows % repeat:
        raise DataError(f"{path}: {n_rows} rows (one per caption) cannot repeat each image {repeat} times")
    if not validate:  # cheap spot check: first and last group; validate=True checks every group
        for group in (0, n_rows // repeat - 1):
            first = group * repeat
            if not all(_same_row(rows, first, first + j) for j in range(repeat)):
                raise DataError(f"{path}: rows repeat each image {repeat} times but rows "
                                f"{first}..{first + repeat - 1} are not identical")
    return repeat, True


def _checked_index(index: np.ndarray, n_images: int, n_captions: int, name: str) -> np.ndarray:
    """A caption->image index: 1-D integers, one per caption, each image in range and each image captioned."""
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"{name}: expected a 1-D integer array, got {index.dtype} {index.shape}")
    if len(index) != n_captions:
        raise ValueError(f"{name}: {len(index)} entries for {n_captions} captions")
    if len(index) and (index.min() < 0 or index.max() >= n_images):
        bad = int(np.flatnonzero((index < 0) | (index >= n_images))[0])
        raise ValueError(f"{name}: caption {bad} points to image {int(index[bad])}, outside the {n_images} images")
    covered = np.bincount(index, minlength=n_images)
    if (covered == 0).any():
        raise ValueError(f"{name}: image {int(np.argmin(covered))} has no caption")
    return index.astype(np.int64, copy=False)


def _load_caption_index(path: Path, n_images: int, n_captions: int) -> np.ndarray:
    try:
        index = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    try:
        return _checked_index(np.asarray(index), n_images, n_captions, str(path))
    except ValueError as exc:
        raise DataError(str(exc)) from None


def load_split(data_dir: str | os.PathLike, split: str, validate: bool = True,
               captions_per_image: int | None = None) -> PrecompSplit:
    """Open `{split}_ims.npy` (memory-mapped) and `{split}_caps.txt`.

    validate=True also reads the features once, chunk by chunk, to check they are finite (and that repeated
    rows really repeat); validate=False checks only headers, counts and captions. `captions_per_image`
    overrides the inference of k (e.g. for a k=1 file whose first images happen to be identical).
    """
    data_dir = Path(data_dir)
    ims_path, caps_path = image_file(data_dir, split), caption_file(data_dir, split)
    rows = _open_features(ims_path)
    captions = read_captions(caps_path)
    if not captions:
        raise DataError(f"{caps_path}: empty split (0 captions)")
    if captions_per_image is not None and captions_per_image < 1:
        raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
    index_path = caption_index_file(data_dir, split)
    if index_path.is_file():  # 1..n captions per image, each naming its image row
        index = _load_caption_index(index_path, len(rows), len(captions))
        if validate:
            _scan_rows(ims_path, rows, 1)
        return PrecompSplit(split, rows, captions, 0, data_dir, False, index)
    k, repeated = _captions_per_image(caps_path, ims_path, rows, len(captions), captions_per_image, validate)
    if validate:
        _scan_rows(ims_path, rows, k if repeated else 1)
    images = rows[::k] if repeated else rows
    return PrecompSplit(split, images, captions, k, data_dir, repeated)


def available_splits(data_dir: str | os.PathLike) -> list[str]:
    """Splits with both files present: train, dev, test, testall first, then others alphabetically."""
    data_dir = Path(data_dir)
    names = {p.name[:-len("_ims.npy")] for p in data_dir.glob("*_ims.npy")}
    names = {n for n in names if caption_file(data_dir, n).is_file()}
    return [n for n in KNOWN_SPLITS if n in names] + sorted(names - set(KNOWN_SPLITS))


# ---------------------------------------------------------------- writing

def write_split(data_dir: str | os.PathLike, split: str, images: np.ndarray, captions: list[str],
                caption_images: np.ndarray | None = None) -> None:
    """Write `{split}_ims.npy` and `{split}_caps.txt` (and `{split}_cap2img.npy` when `caption_images` names each
    caption's image), each atomically (temporary file + os.replace)."""
    images = np.asarray(images)
    if images.ndim != 3 or 0 in images.shape:
        raise ValueError(f"images must be a non-empty (n_images, regions, dim) array, got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floating point, got {images.dtype}")
    bad = _first_non_finite(images)
    if bad is not None:  # a file load_split would refuse is not worth writing
        raise ValueError(f"images[{bad}] has non-finite values")
    if caption_images is not None:
        caption_images = _checked_index(np.asarray(caption_images), len(images), len(captions), "caption_images")
    elif not captions or len(captions) % len(images):
        raise ValueError(f"{len(captions)} captions is not a positive multiple of {len(images)} images")
    lines = []
    for i, caption in enumerate(captions):
        line = " ".join(str(caption).split())  # one line per caption: inner newlines/tabs become spaces
        if not line:
            raise ValueError(f"caption {i} is empty")
        lines.append(line)
    with atomic_write(image_file(data_dir, split), binary=True) as f:
        np.save(f, images.astype(np.float32, copy=False), allow_pickle=False)
    with atomic_write(caption_file(data_dir, split)) as f:
        f.write("\n".join(lines) + "\n")
    index_path = caption_index_file(data_dir, split)
    if caption_images is not None:
        with atomic_write(index_path, binary=True) as f:
            np.save(f, caption_images, allow_pickle=False)
    elif index_path.exists():  # a stale index would re-assign the new captions
        index_path.unlink()


# ---------------------------------------------------------------- vocabulary

def load_vocab(data_dir: str | os.PathLike) -> Vocabulary:
    """`vocab.json` of a precomp folder (or a vocabulary JSON file given directly)."""
    path = Path(data_dir)
    return Vocabulary.load(path if path.suffix == ".json" else path / VOCAB_FILE)


def build_and_save_vocab(data_dir: str | os.PathLike, min_count: int = 1) -> Vocabulary:
    """Build the vocabulary from the train captions only (no test words leak in) and save `vocab.json`."""
    vocab = Vocabulary.build(read_captions(caption_file(data_dir, "train")), min_count=min_count)
    vocab.save(Path(data_dir) / VOCAB_FILE)
    return vocab
