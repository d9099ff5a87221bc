"""FAISS indexes of global vectors and the index directory format.

`VectorIndex` wraps one FAISS index (inner product: the global vectors are L2-normalised, so it ranks by cosine)
together with the ids of its rows. `IndexDirectory` is what `temde index build` writes:

    INDEX/meta.json                     format, model fingerprint, split, counts, dim, kind, options, file list
    INDEX/images.<build>.faiss          FAISS index of the image globals      (+ images.<build>.ids.npy)
    INDEX/captions.<build>.faiss        FAISS index of the caption globals    (+ captions.<build>.ids.npy)

Data files carry a build tag in their names and meta.json is replaced last, so a reader sees either the old
index or the new one, never a mix; files of older builds are removed after the switch. Every problem with a
file is a one-line CheckpointError naming it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from temde.data.vocab import atomic_write
from temde.errors import CheckpointError
from temde.outputs import file_sha256

KINDS = ("flat", "ivf", "hnsw")
FORMAT = "temde-index"
VERSION = 1
META_FILE = "meta.json"
PARTS = ("images", "captions")


def _faiss():
    import faiss  # heavy import, only where an index is built or read

    return faiss


# ------------------------------------------------------------------ options

@dataclass
class IndexOptions:
    """How to build (and by default search) one index. None = chosen from the gallery size at build time."""

    kind: str = "flat"
    nlist: int | None = None  # IVF: number of inverted lists (k-means cells)
    nprobe: int | None = None  # IVF: lists visited per query
    hnsw_m: int = 32  # HNSW: neighbours per node
    ef_construction: int = 80  # HNSW: candidate list while building
    ef_search: int = 64  # HNSW: candidate list while searching (raised to k when k is larger)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def resolved(self, n_vectors: int) -> "IndexOptions":
        """A copy with nlist/nprobe fixed for a gallery of `n_vectors` (IVF); others unchanged."""
        if self.kind != "ivf":
            return IndexOptions(self.kind, None, None, self.hnsw_m, self.ef_construction, self.ef_search)
        # faiss' rule of thumb is ~4*sqrt(n) lists; k-means wants >= 39 training points per list.
        nlist = self.nlist or max(1, min(round(4 * math.sqrt(n_vectors)), n_vectors // 39))
        if nlist > n_vectors:
            raise ValueError(f"nlist={nlist} is larger than the {n_vectors} vectors to index")
        nprobe = min(nlist, self.nprobe or max(8, nlist // 16))
        return IndexOptions(self.kind, nlist, nprobe, self.hnsw_m, self.ef_construction, self.ef_search)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "hnsw_m": self.hnsw_m,
                "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "IndexOptions":
        return cls(**{k: values[k] for k in ("kind", "nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search")})


# ------------------------------------------------------------------ one index

def as_float32_rows(vectors: Any, name: str = "vectors") -> np.ndarray:
    """A C-contiguous float32 [n, d] copy-if-needed of `vectors` (numpy or torch)."""
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().float().cpu().numpy()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"{name} must be a [n, d] matrix with d > 0, got shape {vectors.shape}")
    for start in range(0, len(vectors), 65536):  # chunked: a 1M x 1024 check needs no 1 GB temporary
        if not np.isfinite(vectors[start:start + 65536]).all():
            raise ValueError(f"{name} contains NaN or inf")
    return vectors


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), so inner product = cosine."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class VectorIndex:
    """A FAISS inner-product index over rows `vectors[i]` whose ids are `ids[i]`.

    search(queries [q, d], k) -> (scores [q, k] float32, ids [q, k] int64); slots an approximate index could not
    fill (IVF visiting too few lists) hold score -inf and id -1.
    """

    def __init__(self, index, ids: np.ndarray, options: IndexOptions):
        if index.ntotal != len(ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")
        self.index = index
        self.ids = np.asarray(ids, dtype=np.int64)
        self.options = options
        self._direct_map = False  # IVF: built on first reconstruction
        self._id_order: np.ndarray | None = None  # argsort of ids, built on first lookup by id

    @classmethod
    def build(cls, vectors: Any, ids: Any = None, options: IndexOptions | None = None,
              train_sample: int | None = None, seed: int = 0) -> "VectorIndex":
        """Index `vectors` [n, d] (used as given: normalise them first for cosine). IVF trains its k-means on
        `train_sample` random rows (None: faiss' own cap of 256 rows per list)."""
        faiss = _faiss()
        vectors = as_float32_rows(vectors)
        n, dim = vectors.shape
        if n == 0:
            raise ValueError("cannot build an index of 0 vectors")
        ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if ids.shape != (n,):
            raise ValueError(f"ids must be [{n}], got shape {ids.shape}")
        options = (options or IndexOptions()).resolved(n)
        if options.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif options.kind == "ivf":
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, options.nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = 1234 + seed  # k-means initialisation: same vectors, same index
            train = vectors
            if train_sample is not None and train_sample < n:
                train = vectors[np.random.default_rng(seed).choice(n, train_sample, replace=False)]
            index.train(train)
            index.nprobe = options.nprobe
        else:
            index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = options.ef_construction
            index.hnsw.efSearch = options.ef_search
        index.add(vectors)
        return cls(index, ids, options)  # faiss' Python wrapper keeps the IVF quantizer alive with the index

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def set_search_options(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the speed/recall trade-off of an approximate index (ignored by kinds that lack the knob)."""
        if nprobe is not None and self.options.kind == "ivf":
            self.options.nprobe = min(int(nprobe), self.options.nlist)
            self.index.nprobe = self.options.nprobe
        if ef_search is not None and self.options.kind == "hnsw":
            self.options.ef_search = int(ef_search)
            self.index.hnsw.efSearch = int(ef_search)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = as_float32_rows(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have {queries.shape[1]} dimensions, the index {self.dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self))
        if self.options.kind == "hnsw" and self.options.ef_search < k:
            # HNSW cannot return more results than its candidate list: widen it for this search only.
            self.index.hnsw.efSearch = k
            try:
                scores, positions = self.index.search(queries, k)
            finally:
                self.index.hnsw.efSearch = self.options.ef_search
        else:
            scores, positions = self.index.search(queries, k)
        found = positions >= 0
        ids = np.where(found, self.ids[np.where(found, positions, 0)], -1)
        return np.where(found, scores, -np.inf).astype(np.float32), ids

    def vectors_by_id(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of items `ids` [m] -> [m, d] (reconstructed from the index)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._id_order is None:
            self._id_order = np.argsort(self.ids, kind="stable")
        order = self._id_order
        found = np.searchsorted(self.ids, ids, sorter=order)
        found = np.minimum(found, len(order) - 1)
        positions = order[found]
        if ids.size and not np.array_equal(self.ids[positions], ids):
            raise KeyError(f"id {int(ids[self.ids[positions] != ids][0])} is not in the index")
        if self.options.kind == "ivf" and not self._direct_map:
            _faiss().extract_index_ivf(self.index).make_direct_map()
            self._direct_map = True
        return self.index.reconstruct_batch(positions)


# ------------------------------------------------------------------ model identity

def model_fingerprint(checkpoint: dict[str, Any]) -> str:
    """sha256 of a checkpoint's model config and weights (not of its file: epoch counters and optimizer state
    do not change which model built an index)."""
    import torch

    digest = hashlib.sha256()
    digest.update(json.dumps(checkpoint["config"], sort_keys=True, default=str).encode())
    for name in sorted(checkpoint["model"]):
        tensor = checkpoint["model"][name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------ the index directory

@dataclass
class IndexDirectory:
    """A loaded index directory: `meta` (the JSON dict) and one VectorIndex per part ("images", "captions")."""

    path: Path
    meta: dict[str, Any]
    parts: dict[str, VectorIndex] = field(default_factory=dict)

    @property
    def images(self) -> VectorIndex:
        return self.parts["images"]

    @property
    def captions(self) -> VectorIndex:
        return self.parts["captions"]

    def check_model(self, fingerprint: str, checkpoint_path: str | os.PathLike) -> None:
        """CheckpointError unless the index was built by the model whose fingerprint is given."""
        if self.meta["model_sha256"] != fingerprint:
            raise CheckpointError(
                f"{self.path / META_FILE}: index was built by model {self.meta['model_sha256'][:12]} "
                f"(checkpoint {self.meta.get('checkpoint')}), but {checkpoint_path} holds model {fingerprint[:12]}; "
                f"rebuild it with `temde index build --checkpoint {checkpoint_path}`")


def _write_faiss(index, path: Path) -> None:
    faiss = _faiss()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _readable_by_all(folder: Path, names: list[str]) -> None:
    """Temporary files are created 0600; give the finished files the mode a plain open() would (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    for name in names:
        os.chmod(folder / name, 0o666 & ~umask)


def save_index_directory(path: str | os.PathLike, parts: dict[str, VectorIndex], meta: dict[str, Any]) -> Path:
    """Write every part, then meta.json (the commit point), then remove files of earlier builds."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {sorted(parts)}")
    dims = {index.dim for index in parts.values()}
    if len(dims) != 1:
        raise ValueError(f"all parts must have one dimension, got {sorted(dims)}")
    build = secrets.token_hex(4)
    files: dict[str, dict[str, Any]] = {}
    for name, index in parts.items():
        index_name, ids_name = f"{name}.{build}.faiss", f"{name}.{build}.ids.npy"
        _write_faiss(index.index, path / index_name)
        with atomic_write(path / ids_name, binary=True) as handle:
            np.save(handle, index.ids, allow_pickle=False)
        files[name] = {
            "index": index_name, "ids": ids_name, "count": len(index), "options": index.options.to_dict(),
            "index_bytes": (path / index_name).stat().st_size, "index_sha256": file_sha256(path / index_name),
            "ids_bytes": (path / ids_name).stat().st_size, "ids_sha256": file_sha256(path / ids_name),
        }
    full_meta = {"format": FORMAT, "version": VERSION, **meta, "dim": dims.pop(), "files": files}
    with atomic_write(path / META_FILE) as handle:
        json.dump(full_meta, handle, indent=2, sort_keys=True)
        handle.write("\n")
    keep = {name for entry in files.values() for name in (entry["index"], entry["ids"])}
    _readable_by_all(path, [META_FILE, *keep])
    for stale in list(path.glob("*.faiss")) + list(path.glob("*.ids.npy")):
        if stale.name not in keep and stale.name.split(".")[0] in PARTS:
            stale.unlink(missing_ok=True)
    return path


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The validated meta.json of an index directory."""
    meta_path = Path(path) / META_FILE
    if not Path(path).is_dir():
        raise CheckpointError(f"{path}: no such index directory")
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing; {path} is not a temde index (build one with "
                              f"`temde index build`)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: corrupt index metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a temde index (no '{FORMAT}' marker)")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_path}: index version {meta.get('version')!r}, this code reads {VERSION}")
    for key in ("model_sha256", "dim", "files", "split"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: corrupt index metadata (no '{key}')")
    files = meta["files"]
    if not isinstance(files, dict) or not files or set(files) - set(PARTS):
        raise CheckpointError(f"{meta_path}: corrupt index metadata ('files' must name parts of {list(PARTS)})")
    return meta


def _load_part(path: Path, name: str, entry: dict[str, Any], dim: int, verify: bool) -> VectorIndex:
    faiss = _faiss()
    try:
        index_path, ids_path = path / entry["index"], path / entry["ids"]
        options = IndexOptions.from_dict(entry["options"])
        count = int(entry["count"])
        sizes = {index_path: entry["index_bytes"], ids_path: entry["ids_bytes"]}
        hashes = {index_path: entry["index_sha256"], ids_path: entry["ids_sha256"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / META_FILE}: corrupt entry for {name!r} ({exc})") from None
    for file, size in sizes.items():
        if not file.is_file():
            raise CheckpointError(f"{file}: index file missing")
        if file.stat().st_size != size:
            raise CheckpointError(f"{file}: {file.stat().st_size} bytes, the index metadata says {size}; corrupt "
                                  f"or from another build")
        if verify and file_sha256(file) != hashes[file]:
            raise CheckpointError(f"{file}: content does not match its sha256 in the index metadata; corrupt")
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as exc:
        reason = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise CheckpointError(f"{index_path}: not a readable FAISS index ({reason})") from None
    try:
        ids = np.load(ids_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CheckpointError(f"{ids_path}: not a readable id array ({exc})") from None
    if index.ntotal != count or index.d != dim or ids.shape != (count,) or ids.dtype != np.int64:
        raise CheckpointError(f"{index_path}: holds {index.ntotal} vectors of {index.d} dimensions with "
                              f"{ids.shape} {ids.dtype} ids; the metadata says {count} of {dim}")
    if options.kind == "ivf":
        index.nprobe = options.nprobe
    elif options.kind == "hnsw":
        index.hnsw.efSearch = options.ef_search
    return VectorIndex(index, ids, options)


def load_index_directory(path: str | os.PathLike, verify: bool = True,
                         parts: tuple[str, ...] | None = None) -> IndexDirectory:
    """Read meta.json and the FAISS files of `parts` (default: all). `verify` also checks every file's sha256
    (reads each file once more; turn it off for multi-GB indexes)."""
    path = Path(path)
    meta = read_meta(path)
    wanted = tuple(meta["files"]) if parts is None else parts
    loaded = {}
    for name in wanted:
        if name not in meta["files"]:
            raise CheckpointError(f"{path / META_FILE}: this index holds no {name} (it has {', '.join(meta['files'])})")
        loaded[name] = _load_part(path, name, meta["files"][name], int(meta["dim"]), verify)
    return IndexDirectory(path, meta, loaded)
