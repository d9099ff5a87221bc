"""`temde bench index` and `temde bench two-stage`: how fast the first stage and the whole two-stage search are.

bench index      search latency of one query (batch size 1) over N synthetic unit vectors of the real global
                 dimension with FAISS flat / IVF (nprobe sweep) / HNSW (efSearch sweep): build time, median and
                 p90 latency, recall@k of the approximate indexes against flat (exact; a found item tied with
                 the k-th exact neighbour counts, `recall_at_k`). The vectors are clustered
                 with a low intrinsic dimension, like real embeddings (`SyntheticVectors`); isotropic random
                 vectors, the worst case for IVF/HNSW, with --distribution uniform. Memory: the vectors plus
                 one index at a time, about 2 x N x dim x 4 bytes.
bench two-stage  one text query against a gallery of encoded images with a real model architecture (random
                 weights: only the time matters): full scoring of every image vs cosine short list + re-ranking.

Heavy imports (faiss, torch) stay inside the functions: `temde --help` imports this module.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


# ------------------------------------------------------------------ shared helpers

def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _latencies(search_one: Callable[[int], Any], n_queries: int, warmup: int = 3) -> list[float]:
    """Seconds of `search_one(i)` for each query i (after a few warm-up calls)."""
    for i in range(min(warmup, n_queries)):
        search_one(i)
    times = []
    for i in range(n_queries):
        start = time.perf_counter()
        search_one(i)
        times.append(time.perf_counter() - start)
    return times


def write_json(result: dict, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    os.replace(tmp, path)


def _machine(threads: int | None, device: str = "cpu") -> dict[str, Any]:
    import platform

    import faiss
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "device": device,
            "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "requested_threads": threads,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ------------------------------------------------------------------ bench index

@dataclass
class IndexBenchSettings:
    n: int = 1_000_000
    dim: int = 1024
    queries: int = 200  # latency queries of the approximate indexes (and recall)
    flat_queries: int = 30  # flat reads all N x dim floats per query: fewer latency samples suffice
    k: int = 10
    kinds: list[str] = field(default_factory=lambda: ["flat", "ivf", "hnsw"])
    nlist: int = 1024
    train_size: int = 65536  # IVF k-means sample (faiss wants >= 39 per list)
    nprobe: list[int] = field(default_factory=lambda: [4, 16, 64, 128])
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    distribution: str = "clustered"
    clusters: int = 1000
    latent: int = 64  # intrinsic dimension of the clustered vectors
    spread: float = 1.0  # within-cluster std relative to the spread of the cluster centres (1: clusters overlap)
    threads: int | None = None
    seed: int = 0


class SyntheticVectors:
    """Unit vectors in `dim` dimensions shaped like real embeddings: a mixture of `clusters` Gaussians in a
    `latent`-dimensional subspace (embeddings have low intrinsic dimension), mapped by a random orthonormal
    basis, plus a little isotropic noise in all dimensions. `distribution="uniform"`: isotropic Gaussian
    directions, the hardest case for approximate search (no neighbour is much closer than the rest)."""

    def __init__(self, dim: int, distribution: str = "clustered", clusters: int = 1000, latent: int = 64,
                 spread: float = 1.0, noise: float = 0.05, seed: int = 0):
        import numpy as np

        if distribution not in ("clustered", "uniform"):
            raise ValueError(f"distribution must be clustered or uniform, got {distribution!r}")
        self.dim, self.distribution, self.spread, self.noise = dim, distribution, spread, noise
        rng = np.random.default_rng(seed)
        if distribution == "clustered":
            latent = min(latent, dim)
            self.basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)  # [latent, dim]
            self.centres = rng.standard_normal((clusters, latent), dtype=np.float32)

    def sample(self, rng, count: int):
        import numpy as np

        if self.distribution == "uniform":
            block = rng.standard_normal((count, self.dim), dtype=np.float32)
        else:
            z = self.centres[rng.integers(0, len(self.centres), count)]
            z = z + self.spread * rng.standard_normal(z.shape, dtype=np.float32)
            block = z @ self.basis
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            block += (self.noise / np.sqrt(self.dim)) * rng.standard_normal((count, self.dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        return block

    def database(self, n: int, seed: int, chunk: int = 65536):
        """[n, dim] float32, generated chunk by chunk (bounded temporaries)."""
        import numpy as np

        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, chunk):
            out[start:start + chunk] = self.sample(rng, min(chunk, n - start))
        return out


def recall_at_k(data, queries, truth, found, k: int) -> float:
    """Mean over queries of the fraction of the k found items that score >= the k-th exact neighbour.

    data [n, dim], queries [q, dim]; truth and found [q, k] row positions of data (-1: an empty slot, never a hit).
    Ties: when neighbours tie at the k-th place, which of them exact search lists is arbitrary, and an index that
    returns another has found an equally near one, so it counts; a set intersection with the exact list would
    not. Both lists' scores are recomputed the same way (float64) so that a tie is a tie exactly.
    """
    import numpy as np

    def scores(ids):
        vectors = data[np.maximum(ids, 0)].astype(np.float64)  # [q, k, dim]
        return np.where(ids >= 0, np.einsum("qkd,qd->qk", vectors, queries.astype(np.float64)), -np.inf)

    kth = scores(truth).min(axis=1, keepdims=True)  # min, not last: float32 search may order near-ties otherwise
    return float(np.mean((scores(found) >= kth).sum(axis=1) / k))


def run_index_bench(settings: IndexBenchSettings, progress: Callable[[str], None] = print) -> dict:
    import faiss
    import numpy as np

    from temde.index.store import IndexOptions, VectorIndex

    if settings.threads:
        faiss.omp_set_num_threads(settings.threads)
    unknown = set(settings.kinds) - {"flat", "ivf", "hnsw"}
    if unknown:
        raise ValueError(f"unknown index kind(s) {sorted(unknown)}")
    start = time.perf_counter()
    source = SyntheticVectors(settings.dim, settings.distribution, settings.clusters, settings.latent,
                              settings.spread, seed=settings.seed)
    data = source.database(settings.n, settings.seed + 1)
    queries = source.sample(np.random.default_rng(settings.seed + 2), settings.queries)  # fresh points, not in data
    progress(f"generated {settings.n} x {settings.dim} {settings.distribution} vectors "
             f"({data.nbytes / 2**30:.1f} GiB) in {time.perf_counter() - start:.1f}s")

    # Exact top-k of every query, batched (a matrix product): the reference for recall.
    start = time.perf_counter()
    exact = VectorIndex.build(data, options=IndexOptions("flat"))
    flat_build_s = time.perf_counter() - start
    start = time.perf_counter()
    _, truth = exact.search(queries, settings.k)
    progress(f"exact top-{settings.k} of {settings.queries} queries (batched) in {time.perf_counter() - start:.1f}s")

    rows = []

    def measure(kind: str, index: VectorIndex, build_s: float, n_queries: int, **params) -> None:
        times = _latencies(lambda i: index.search(queries[i:i + 1], settings.k), n_queries)
        _, found = index.search(queries, settings.k)
        row = {"kind": kind, **params, "build_s": build_s, "queries": n_queries,
               "median_ms": 1e3 * statistics.median(times), "p90_ms": 1e3 * _percentile(times, 0.9),
               f"recall@{settings.k}": recall_at_k(data, queries, truth, found, settings.k)}
        rows.append(row)
        progress(format_index_row(row, settings.k))

    if "flat" in settings.kinds:
        measure("flat", exact, flat_build_s, min(settings.flat_queries, settings.queries))
    del exact  # one index in memory at a time
    for kind in settings.kinds:
        start = time.perf_counter()
        if kind == "ivf":
            options = IndexOptions("ivf", nlist=settings.nlist, nprobe=settings.nprobe[0])
            index = VectorIndex.build(data, options=options, train_sample=settings.train_size, seed=settings.seed)
            build_s = time.perf_counter() - start
            for nprobe in settings.nprobe:
                index.set_search_options(nprobe=nprobe)
                measure("ivf", index, build_s, settings.queries, nlist=settings.nlist, nprobe=nprobe)
        elif kind == "hnsw":
            options = IndexOptions("hnsw", hnsw_m=settings.hnsw_m, ef_construction=settings.ef_construction)
            index = VectorIndex.build(data, options=options)
            build_s = time.perf_counter() - start
            for ef in settings.ef_search:
                index.set_search_options(ef_search=ef)
                measure("hnsw", index, build_s, settings.queries, M=settings.hnsw_m,
                        ef_construction=settings.ef_construction, ef_search=ef)
        else:
            continue
        del index
    return {"settings": asdict(settings), "machine": _machine(settings.threads), "rows": rows,
            "summary": summarise_index(rows, settings.k)}


def summarise_index(rows: list[dict], k: int) -> dict[str, Any]:
    """The fastest setting of each kind that keeps recall@k >= 0.9, and whether it meets 50 ms per query."""
    summary: dict[str, Any] = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        good = [r for r in rows if r["kind"] == kind and r[f"recall@{k}"] >= 0.9]
        if good:
            best = min(good, key=lambda r: r["median_ms"])
            summary[kind] = {"median_ms": best["median_ms"], f"recall@{k}": best[f"recall@{k}"],
                             "setting": {key: best[key] for key in ("nprobe", "ef_search") if key in best},
                             "under_50ms": best["median_ms"] < 50.0}
    return summary


def format_index_row(row: dict, k: int) -> str:
    params = " ".join(f"{key}={row[key]}" for key in ("nlist", "nprobe", "M", "ef_construction", "ef_search")
                      if key in row)
    build = f"{row['build_s']:7.1f}"
    return (f"{row['kind']:5s} {params:38s} build {build} s  median {row['median_ms']:8.2f} ms  "
            f"p90 {row['p90_ms']:8.2f} ms  recall@{k} {row[f'recall@{k}']:.3f}")


# ------------------------------------------------------------------ bench two-stage

@dataclass
class TwoStageBenchSettings:
    gallery: int = 5000
    models: list[str] = field(default_factory=lambda: ["saf-small", "sgr-small"])
    regions: int = 49
    rerank: int = 100
    queries: int = 20
    words: int = 12  # tokens per query caption (plus <start>/<end>)
    vocab_size: int = 10000
    image_block: int = 1000  # images per model.score call in full scoring
    first_stage: str = "flat"  # faiss index kind of the first stage
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0


def _encode_gallery(model, n: int, regions: int, device, seed: int, chunk: int = 500):
    """Random region features -> Encoded gallery (CPU), chunk by chunk (raw features of 5,000 images are GBs)."""
    import torch

    from temde.models.encoders import Encoded
    from temde.scoring import encode_images

    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, n, chunk):
        features = torch.randn(min(chunk, n - start), regions, model.config.img_dim, generator=generator)
        parts.append(encode_images(model, features, 128, device))
    return Encoded.cat(parts)


def run_two_stage_bench(settings: TwoStageBenchSettings, progress: Callable[[str], None] = print) -> dict:
    import numpy as np
    import torch

    from temde.bench.timing import synchronize
    from temde.index.store import IndexOptions, VectorIndex
    from temde.models.registry import create_model
    from temde.scoring import encode_captions

    if settings.threads:
        torch.set_num_threads(settings.threads)
        import faiss

        faiss.omp_set_num_threads(settings.threads)
    device = torch.device(settings.device)
    rows = []
    for name in settings.models:
        torch.manual_seed(settings.seed)
        model = create_model(name, vocab_size=settings.vocab_size).to(device).eval()
        start = time.perf_counter()
        gallery = _encode_gallery(model, settings.gallery, settings.regions, device, settings.seed)
        encode_gallery_s = time.perf_counter() - start
        gallery_on_device = gallery.to(device)
        index = VectorIndex.build(gallery.global_, options=IndexOptions(settings.first_stage))
        generator = torch.Generator().manual_seed(settings.seed + 1)
        tokens = torch.randint(4, settings.vocab_size, (settings.queries, settings.words + 2), generator=generator)
        tokens[:, 0], tokens[:, -1] = 1, 2  # <start> ... <end>
        lengths = torch.full((settings.queries,), settings.words + 2)

        def encode_query(i: int):
            return encode_captions(model, tokens[i:i + 1], lengths[i:i + 1], 1, device).to(device)

        def full(i: int):
            query = encode_query(i)
            with torch.no_grad():
                scores = torch.cat([model.score(gallery_on_device[s:s + settings.image_block], query)[:, 0]
                                    for s in range(0, settings.gallery, settings.image_block)])
                top = scores.topk(10).indices.cpu()
            synchronize(device)
            return top

        def two_stage(i: int):
            query = encode_query(i)
            _, ids = index.search(query.global_.float().cpu().numpy(), settings.rerank)
            shortlist = torch.as_tensor(ids[0][ids[0] >= 0], device=device)
            with torch.no_grad():
                scores = model.score(gallery_on_device[shortlist], query)[:, 0]
                top = shortlist[scores.topk(min(10, len(shortlist))).indices].cpu()
            synchronize(device)
            return top

        full_times = _latencies(full, settings.queries, warmup=2)
        two_times = _latencies(two_stage, settings.queries, warmup=2)
        encode_times = _latencies(encode_query, settings.queries, warmup=2)
        row = {"model": name, "gallery": settings.gallery, "rerank": settings.rerank,
               "embed_size": model.config.embed_size, "global_dim": int(gallery.global_.shape[1]),
               "regions": settings.regions, "encode_gallery_s": encode_gallery_s,
               "query_encode_ms": 1e3 * statistics.median(encode_times),
               "full_ms": 1e3 * statistics.median(full_times), "two_stage_ms": 1e3 * statistics.median(two_times)}
        row["speedup"] = row["full_ms"] / row["two_stage_ms"]
        rows.append(row)
        progress(format_two_stage_row(row))
        del model, gallery, gallery_on_device, index
    return {"settings": asdict(settings), "machine": _machine(settings.threads, settings.device), "rows": rows,
            "note": "per query, median over queries; both times include encoding the query caption; the gallery "
                    "is encoded once beforehand (random weights and features: speed only)"}


def format_two_stage_row(row: dict) -> str:
    return (f"{row['model']:10s} gallery {row['gallery']:6d}  full {row['full_ms']:9.2f} ms  two-stage (rerank "
            f"{row['rerank']}) {row['two_stage_ms']:8.2f} ms  speedup {row['speedup']:6.1f}x  "
            f"(query encoding {row['query_encode_ms']:.2f} ms)")


# ------------------------------------------------------------------ CLI

def _joined(values: list) -> str:
    return ",".join(str(v) for v in values)


def add_index_bench_parsers(bench_subparsers) -> None:
    """Add `bench index` and `bench two-stage` to the `temde bench` sub-parsers (called by temde.cli.bench)."""
    defaults = IndexBenchSettings()
    index = bench_subparsers.add_parser("index", help="FAISS search latency: flat / IVF / HNSW over N vectors",
                                        description=__doc__.splitlines()[0])
    index.add_argument("--out", default="runs/bench/index.json", help="JSON file to write; default %(default)s")
    index.add_argument("--force", action="store_true", help="replace --out if it exists")
    index.add_argument("--n", type=int, default=defaults.n, help="database vectors (default 1,000,000: ~4 GiB "
                                                                 "at 1024-d, twice that at peak)")
    index.add_argument("--dim", type=int, default=defaults.dim, help="vector dimension; default %(default)s")
    index.add_argument("--queries", type=int, default=defaults.queries,
                       help="latency and recall queries of the approximate indexes; default %(default)s")
    index.add_argument("--flat-queries", type=int, default=defaults.flat_queries,
                       help="latency queries of the exact flat index; default %(default)s")
    index.add_argument("-k", type=int, default=defaults.k, help="neighbours per query; default %(default)s")
    index.add_argument("--kinds", type=_names, default=defaults.kinds,
                       help=f"comma-separated index kinds; default {_joined(defaults.kinds)}")
    index.add_argument("--nlist", type=int, default=defaults.nlist, help="IVF lists; default %(default)s")
    index.add_argument("--train-size", type=int, default=defaults.train_size,
                       help="IVF k-means training sample; default %(default)s")
    index.add_argument("--nprobe", type=_ints, default=defaults.nprobe,
                       help=f"IVF lists visited, comma-separated sweep; default {_joined(defaults.nprobe)}")
    index.add_argument("--hnsw-m", type=int, default=defaults.hnsw_m,
                       help="HNSW neighbours per node; default %(default)s")
    index.add_argument("--ef-construction", type=int, default=defaults.ef_construction,
                       help="HNSW build candidates; default %(default)s")
    index.add_argument("--ef-search", type=_ints, default=defaults.ef_search,
                       help=f"HNSW search candidates, comma-separated sweep; default {_joined(defaults.ef_search)}")
    index.add_argument("--distribution", choices=("clustered", "uniform"), default=defaults.distribution,
                       help="clustered (like real embeddings) or uniform (worst case); default %(default)s")
    index.add_argument("--clusters", type=int, default=defaults.clusters,
                       help="clusters of the clustered distribution; default %(default)s")
    index.add_argument("--latent", type=int, default=defaults.latent,
                       help="intrinsic dimension (clustered); default %(default)s")
    index.add_argument("--spread", type=float, default=defaults.spread,
                       help="within-cluster spread relative to the centres' (clustered; 1 = overlapping clusters); "
                            "default %(default)s")
    index.add_argument("--threads", type=int, default=None, help="FAISS threads (default: all cores)")
    index.add_argument("--seed", type=int, default=0, help="seed of the vectors and queries; default %(default)s")
    index.set_defaults(run=run_index_command)

    two = TwoStageBenchSettings()
    stage = bench_subparsers.add_parser("two-stage", help="one text query: full scoring vs short list + re-rank",
                                        description="One text query against a gallery of encoded images (random "
                                                    "weights: only the time matters): full scoring vs cosine short "
                                                    "list + re-ranking.")
    stage.add_argument("--out", default="runs/bench/two_stage.json", help="JSON file to write; default %(default)s")
    stage.add_argument("--force", action="store_true", help="replace --out if it exists")
    stage.add_argument("--gallery", type=int, default=two.gallery, help="images in the gallery; default %(default)s")
    stage.add_argument("--models", type=_names, default=two.models,
                       help=f"comma-separated model presets; default {_joined(two.models)}")
    stage.add_argument("--regions", type=int, default=two.regions, help="regions per image; default %(default)s")
    stage.add_argument("--rerank", type=int, default=two.rerank, help="short-list size; default %(default)s")
    stage.add_argument("--queries", type=int, default=two.queries, help="timed queries; default %(default)s")
    stage.add_argument("--words", type=int, default=two.words, help="words per query caption; default %(default)s")
    stage.add_argument("--image-block", type=int, default=two.image_block,
                       help="images per scoring call of full scoring; default %(default)s")
    stage.add_argument("--first-stage", choices=("flat", "ivf", "hnsw"), default=two.first_stage,
                       help="FAISS index of the first stage; default %(default)s")
    stage.add_argument("--device", default="cpu", help="cpu, cuda ...; default %(default)s")
    stage.add_argument("--threads", type=int, default=None, help="torch and FAISS threads (default: all cores)")
    stage.add_argument("--seed", type=int, default=0, help="seed of the random gallery; default %(default)s")
    stage.set_defaults(run=run_two_stage_command)


def run_index_command(args: argparse.Namespace) -> int:
    from temde.outputs import claim_file

    claim_file(args.out, force=args.force)  # before minutes of measuring
    settings = IndexBenchSettings(
        n=args.n, dim=args.dim, queries=args.queries, flat_queries=args.flat_queries, k=args.k, kinds=args.kinds,
        nlist=args.nlist, train_size=args.train_size, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction, ef_search=args.ef_search, distribution=args.distribution,
        clusters=args.clusters, latent=args.latent, spread=args.spread, threads=args.threads, seed=args.seed)
    result = run_index_bench(settings)
    write_json(result, args.out)
    print("\nfastest setting with recall >= 0.9:")
    for kind, best in result["summary"].items():
        print(f"  {kind:5s} {best['median_ms']:8.2f} ms/query  recall@{args.k} {best[f'recall@{args.k}']:.3f}  "
              f"{best['setting']}  {'< 50 ms' if best['under_50ms'] else '>= 50 ms'}")
    print(f"wrote {args.out}")
    return 0


def run_two_stage_command(args: argparse.Namespace) -> int:
    from temde.outputs import claim_file

    claim_file(args.out, force=args.force)
    settings = TwoStageBenchSettings(
        gallery=args.gallery, models=args.models, regions=args.regions, rerank=args.rerank, queries=args.queries,
        words=args.words, image_block=args.image_block, first_stage=args.first_stage, device=args.device,
        threads=args.threads, seed=args.seed)
    result = run_two_stage_bench(settings)
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0
