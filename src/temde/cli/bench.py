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
    parser = sub.add_parser("bench", help="speed and memory benchmarks",
                            description="Speed and memory benchmarks: each writes a JSON record (with the machine "
                                        "and date), prints a table and ratios measured within the same run.")
    bench_sub = parser.add_subparsers(dest="bench", metavar="WHAT")
    bench_sub.required = True

    pool = bench_sub.add_parser(
        "pool", help="every pooling module alone: host shape and a token sweep",
        description="Time and memory of every global pooling alone (T-EMDE, SGRAF's attention, GPO, multi-head "
                    "attention, mean, max, Nystrom), forward and forward+backward, at the host shape (B x L x dim) "
                    "and over a sweep of token counts L. Writes --out (JSON) and a PNG beside it. With --host vse: "
                    "one full training step of the dual-encoder host per pooling at --step-tokens regions per image "
                    "(random inputs), with its memory and the largest batch that fits --memory-gb.")
    pool.add_argument("--out", default="runs/bench/pool.json",
                      help="JSON file to write (a PNG goes beside it); default %(default)s")
    pool.add_argument("--force", action="store_true", help="replace --out and its PNG if they exist")
    pool.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    pool.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    pool.add_argument("--dim", type=int, default=1024, help="token dimension; default %(default)s")
    pool.add_argument("--host-batch", type=int, default=128,
                      help="batch of the host shape (SGRAF's batch); default %(default)s")
    pool.add_argument("--host-tokens", type=int, default=36,
                      help="tokens of the host shape (BUTD's 36 regions); default %(default)s")
    pool.add_argument("--sweep-batch", type=int, default=16, help="batch of the token sweep; default %(default)s")
    pool.add_argument("--sweep-tokens", type=_ints, default=[36, 128, 512, 1024, 2048, 4096],
                      help="comma-separated token counts L of the sweep; default 36,128,512,1024,2048,4096")
    pool.add_argument("--pools", type=_names, default=None, help="comma-separated subset of the pools (default: all)")
    pool.add_argument("--dtypes", type=_names, default=None,
                      help="float32,bfloat16 (default: float32, plus bfloat16 on CUDA devices that support it)")
    pool.add_argument("--repeats", type=int, default=5,
                      help="timed repeats per row, the median is kept; default %(default)s (more on a busy machine)")
    pool.add_argument("--host", choices=["vse"], default=None,
                      help="time a full training step of this host per pooling (default: each pool alone)")
    pool.add_argument("--host-model", default="vse-f30k",
                      help="--host vse: the preset (vse-f30k: embed 1024; vse-small: 256); default %(default)s")
    pool.add_argument("--img-dim", type=int, default=1280,
                      help="--host vse: features per region (EfficientNet-Lite0: 1280); default %(default)s")
    pool.add_argument("--embed-size", type=int, default=None,
                      help="--host vse: joint embedding size (default: the preset's)")
    pool.add_argument("--step-tokens", type=_ints, default=[49, 196, 784],
                      help="--host vse: regions per image (EfficientNet-Lite0 at 224/448/896 px); default 49,196,784")
    pool.add_argument("--step-batch", type=int, default=None,
                      help="--host vse: batch of the step (default: 128 on CUDA, 32 on the CPU)")
    pool.add_argument("--memory-gb", type=float, default=8.0,
                      help="--host vse: memory budget for the largest-batch figure; default %(default)s")
    pool.set_defaults(run=run_pool)

    model = bench_sub.add_parser(
        "model", help="full SAF/SGR with each pooling: encoding, score matrix, train step",
        description="The full SAF/SGR models with each pooling: encoding, the score matrix of a gallery, and a "
                    "training step, with ratios against attention pooling.")
    model.add_argument("--out", default="runs/bench/model.json", help="JSON file to write; default %(default)s")
    model.add_argument("--force", action="store_true", help="replace --out if it exists")
    model.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    model.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    model.add_argument("--heads", type=_names, default=["saf", "sgr"], help="comma-separated heads; default saf,sgr")
    model.add_argument("--poolings", type=_names, default=["attention", "temde"],
                       help="comma-separated poolings; default attention,temde")
    model.add_argument("--images", type=int, default=None, help="gallery size (default: 1000 on CUDA, 100 on CPU)")
    model.add_argument("--captions", type=int, default=None, help="captions (default: 5000 on CUDA, 500 on CPU)")
    model.add_argument("--loop-captions", type=int, default=None,
                       help="captions scored by the per-caption loop reference (default: 50 on CUDA, 20 on CPU)")
    model.add_argument("--train-batch", type=int, default=128, help="batch of the training step; default %(default)s")
    model.add_argument("--repeats", type=int, default=3, help="timed repeats per row; default %(default)s")
    model.set_defaults(run=run_model)

    from temde.bench.index import add_index_bench_parsers  # light: FAISS is imported when a command runs

    add_index_bench_parsers(bench_sub)


def resolve_device(name: str | None):
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def timing_warnings(rows: list[dict], repeats: int) -> list[str]:
    """A forward pass cannot take longer than forward + backward: where it measured so, the rows are noise (a busy
    machine, too few repeats) and their ratios should not be trusted."""
    noisy = [r for r in rows if "error" not in r and r["forward_ms"] > r["forward_backward_ms"]]
    if not noisy:
        return []
    shown = ", ".join(f"{r['pool']} L={r['tokens']} {r['dtype']} ({r['forward_ms']:.2f} > "
                      f"{r['forward_backward_ms']:.2f} ms)" for r in noisy[:4])
    more = f" and {len(noisy) - 4} more" if len(noisy) > 4 else ""
    return [f"forward measured slower than forward+backward for {shown}{more}: timing noise (a busy machine or "
            f"too few repeats, --repeats {repeats}); rerun on an idle machine with more --repeats before using "
            f"these numbers"]


def run_pool(args) -> int:
    import os

    import torch

    from temde.bench.pool import POOL_VARIANTS, PoolBenchSettings, plot_sweep, run_pool_bench, summarise, write_json
    from temde.outputs import claim_file

    if args.host is not None:
        return run_host_step(args)
    png = os.path.splitext(args.out)[0] + ".png"
    claim_file(args.out, force=args.force, also=(png,))  # before minutes of measuring
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
    result["warnings"] = timing_warnings(result["rows"], args.repeats)
    write_json(result, args.out)
    plot_sweep(result, png)
    print("\nratios (same run):")
    for dtype, ratios in summarise(result["rows"]).items():
        for key, value in ratios.items():
            print(f"  {dtype:8s} {key:45s} {value:7.3f}")
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    print(f"wrote {args.out} and {png}")
    return 0


def run_host_step(args) -> int:
    """`temde bench pool --host vse`: one training step of the dual-encoder host per pooling (bench/model.py)."""
    import torch

    from temde.bench.model import HostStepSettings, format_host_table, run_host_step_bench
    from temde.bench.pool import write_json
    from temde.errors import TemdeError
    from temde.outputs import claim_file
    from temde.pooling import list_pools

    out = args.out if args.out != "runs/bench/pool.json" else f"runs/bench/step-{args.host}.json"
    poolings = args.pools or list_pools()
    unknown = [p for p in poolings if p not in list_pools()]
    if unknown:
        raise TemdeError(f"--host {args.host} takes the registered poolings {list_pools()}, got {unknown}")
    claim_file(out, force=args.force)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batch = args.step_batch or (128 if device.startswith("cuda") else 32)
    settings = HostStepSettings(model=args.host_model, img_dim=args.img_dim, embed_size=args.embed_size,
                                poolings=poolings,
                                tokens=args.step_tokens, batch=batch, memory_gb=args.memory_gb,
                                repeats=args.repeats, device=device)
    result = run_host_step_bench(settings, progress=lambda line: print(line, flush=True))
    write_json(result, out)
    return _print_result(format_host_table(result), result["summary"], out)


def run_model(args) -> int:
    import torch

    from temde.bench.model import ModelBenchSettings, default_sizes_for, format_table, run_model_bench
    from temde.bench.pool import write_json
    from temde.outputs import claim_file

    claim_file(args.out, force=args.force)
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
    return _print_result(format_table(result), result["summary"], args.out)


def _print_result(table: str, summary: dict, out) -> int:
    """The table, the run's ratios and the file written: the tail of `bench pool --host` and `bench model`."""
    print()
    print(table)
    print("\nratios (same run):")
    for key, value in summary.items():
        print(f"  {key:45s} {value:7.3f}")
    print(f"wrote {out}")
    return 0
