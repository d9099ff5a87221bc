"""`temde bench pool|model`: speed and memory benchmarks (JSON + a printed table + a PNG)."""
from __future__ import annotations

import argparse


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def register(sub) -> None:
    parser = sub.add_parser("bench", help="speed and memory benchmarks")
    bench_sub = parser.add_subparsers(dest="bench", metavar="WHAT")
    bench_sub.required = True

    pool = bench_sub.add_parser("pool", help="every pooling module alone: host shape and a token sweep")
    pool.add_argument("--out", default="runs/bench/pool.json", help="JSON file to write (a PNG goes beside it)")
    pool.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    pool.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    pool.add_argument("--dim", type=int, default=1024)
    pool.add_argument("--host-batch", type=int, default=128)
    pool.add_argument("--host-tokens", type=int, default=36)
    pool.add_argument("--sweep-batch", type=int, default=16)
    pool.add_argument("--sweep-tokens", type=_ints, default=[36, 128, 512, 1024, 2048, 4096])
    pool.add_argument("--pools", type=_names, default=None, help="comma-separated subset of the pools")
    pool.add_argument("--dtypes", type=_names, default=None,
                      help="float32,bfloat16 (default: float32, plus bfloat16 on CUDA devices that support it)")
    pool.add_argument("--repeats", type=int, default=5)
    pool.set_defaults(run=run_pool)

    model = bench_sub.add_parser("model", help="full SAF/SGR with each pooling: encoding, score matrix, train step")
    model.add_argument("--out", default="runs/bench/model.json")
    model.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    model.add_argument("--threads", type=int, default=None)
    model.add_argument("--heads", type=_names, default=["saf", "sgr"])
    model.add_argument("--poolings", type=_names, default=["attention", "temde"])
    model.add_argument("--images", type=int, default=None, help="gallery size (default: 1000 on CUDA, 100 on CPU)")
    model.add_argument("--captions", type=int, default=None, help="captions (default: 5000 on CUDA, 500 on CPU)")
    model.add_argument("--loop-captions", type=int, default=None,
                       help="captions scored by the per-caption loop reference (default: 50 on CUDA, 20 on CPU)")
    model.add_argument("--train-batch", type=int, default=128)
    model.add_argument("--repeats", type=int, default=3)
    model.set_defaults(run=run_model)

    from temde.bench.index import add_index_bench_parsers  # light: FAISS is imported when a command runs

    add_index_bench_parsers(bench_sub)


def resolve_device(name: str | None):
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run_pool(args) -> int:
    import os

    import torch

    from temde.bench.pool import POOL_VARIANTS, PoolBenchSettings, plot_sweep, run_pool_bench, summarise, write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtypes = args.dtypes
    if dtypes is None:
        dtypes = ["float32"]
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            dtypes.append("bfloat16")
    settings = PoolBenchSettings(
        dim=args.dim, host_batch=args.host_batch, host_tokens=args.host_tokens, sweep_batch=args.sweep_batch,
        sweep_tokens=args.sweep_tokens, pools=args.pools or list(POOL_VARIANTS), dtypes=dtypes,
        repeats=args.repeats, device=device)
    result = run_pool_bench(settings)
    write_json(result, args.out)
    png = os.path.splitext(args.out)[0] + ".png"
    plot_sweep(result, png)
    print("\nratios (same run):")
    for dtype, ratios in summarise(result["rows"]).items():
        for key, value in ratios.items():
            print(f"  {dtype:8s} {key:45s} {value:7.3f}")
    print(f"wrote {args.out} and {png}")
    return 0


def run_model(args) -> int:
    import torch

    from temde.bench.model import ModelBenchSettings, default_sizes_for, format_table, run_model_bench
    from temde.bench.pool import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sizes = default_sizes_for(device)
    for key, value in (("n_images", args.images), ("n_captions", args.captions), ("loop_captions", args.loop_captions)):
        if value is not None:
            sizes[key] = value
    settings = ModelBenchSettings(heads=args.heads, poolings=args.poolings, train_batch=args.train_batch,
                                  repeats=args.repeats, device=device, **sizes)
    result = run_model_bench(settings)
    write_json(result, args.out)
    print()
    print(format_table(result))
    print("\nratios (same run):")
    for key, value in result["summary"].items():
        print(f"  {key:45s} {value:7.3f}")
    print(f"wrote {args.out}")
    return 0
