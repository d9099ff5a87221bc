"""`temde bench pool`: every global pooling alone, forward and forward+backward, at the host shape and over a
sweep of token counts. Ratios against SGRAF's attention pool are computed inside one run (noise-robust)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from temde.bench.peers import NystromPool, peer_available
from temde.bench.timing import machine_description, peak_cuda_bytes, saved_for_backward_bytes, time_call
from temde.pooling import make_pool

# name -> (kind, options). "attention" is the image flavour (VisualSA, with BatchNorm): the module T-EMDE replaces.
POOL_VARIANTS: dict[str, tuple[str, dict]] = {
    "attention": ("attention", {"batchnorm": True}),
    "temde": ("temde", {}),
    "temde-proj": ("temde", {"out_dim": "dim"}),
    "mha": ("mha", {"heads": 8}),
    "mean": ("mean", {}),
    "nystrom": ("nystrom", {"heads": 8, "landmarks": 64}),
}


@dataclass
class PoolBenchSettings:
    dim: int = 1024
    host_batch: int = 128
    host_tokens: int = 36
    sweep_batch: int = 16
    sweep_tokens: list[int] = field(default_factory=lambda: [36, 128, 512, 1024, 2048, 4096])
    pools: list[str] = field(default_factory=lambda: list(POOL_VARIANTS))
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    repeats: int = 5
    device: str = "cpu"
    seed: int = 0


def build_pool(name: str, dim: int) -> torch.nn.Module:
    kind, options = POOL_VARIANTS[name]
    options = {k: (dim if v == "dim" else v) for k, v in options.items()}
    if kind == "nystrom":
        return NystromPool(dim, **options)
    return make_pool(kind, dim, **options)


def available_pools(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in POOL_VARIANTS]
    if unknown:
        raise ValueError(f"unknown pool(s) {unknown}; choose from {list(POOL_VARIANTS)}")
    return [n for n in names if n != "nystrom" or peer_available("nystrom")]


def measure(pool: torch.nn.Module, batch: int, tokens: int, dim: int, dtype: torch.dtype, device: torch.device,
            repeats: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, dim, generator=generator).to(device)
    mask = torch.ones(batch, tokens, dtype=torch.bool, device=device)
    mask[batch // 2:, tokens - tokens // 4:] = False  # half the rows are padded by a quarter: masks do real work
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def forward():
        pool.eval()
        with torch.no_grad(), autocast:
            return pool(x, mask)

    def forward_backward():
        pool.train()
        xg = x.detach().requires_grad_()
        with autocast:
            out = pool(xg, mask)
        out.float().square().sum().backward()

    def train_forward():
        pool.train()
        with autocast:
            return pool(x.detach().requires_grad_(), mask)

    row = {
        "forward_ms": 1e3 * time_call(forward, device, repeats),
        "forward_backward_ms": 1e3 * time_call(forward_backward, device, repeats),
        "saved_for_backward_mb": saved_for_backward_bytes(train_forward) / 2 ** 20,
    }
    peak = peak_cuda_bytes(forward_backward, device)
    row["cuda_peak_mb"] = None if peak is None else peak / 2 ** 20
    pool.zero_grad(set_to_none=True)
    return row


def run_pool_bench(settings: PoolBenchSettings, progress=print) -> dict:
    device = torch.device(settings.device)
    pools = available_pools(settings.pools)
    rows = []
    shapes = [("host", settings.host_batch, settings.host_tokens)]
    shapes += [("sweep", settings.sweep_batch, L) for L in settings.sweep_tokens]
    for dtype_name in settings.dtypes:
        dtype = getattr(torch, dtype_name)
        for group, batch, tokens in shapes:
            for name in pools:
                torch.manual_seed(settings.seed)
                pool = build_pool(name, settings.dim).to(device)
                try:
                    result = measure(pool, batch, tokens, settings.dim, dtype, device, settings.repeats, settings.seed)
                except (RuntimeError, MemoryError) as exc:  # out of memory at the largest sizes: record, go on
                    result = {"error": str(exc).splitlines()[0][:200]}
                row = {"group": group, "pool": name, "batch": batch, "tokens": tokens, "dim": settings.dim,
                       "dtype": dtype_name, **result}
                rows.append(row)
                progress(format_row(row))
                del pool
    return {"settings": settings.__dict__, "machine": machine_description(device), "rows": rows,
            "summary": summarise(rows)}


def _lookup(rows, **where):
    for row in rows:
        if all(row.get(k) == v for k, v in where.items()) and "error" not in row:
            return row
    return None


def summarise(rows: list[dict]) -> dict:
    """The ratios the project's goals are stated in, each from rows measured in this one run."""
    summary = {}
    for dtype in sorted({r["dtype"] for r in rows}):
        out = {}
        att = _lookup(rows, group="host", pool="attention", dtype=dtype)
        for name in ("temde", "temde-proj", "mha", "mean", "nystrom"):
            other = _lookup(rows, group="host", pool=name, dtype=dtype)
            if att and other:
                out[f"host_forward_{name}_over_attention"] = other["forward_ms"] / att["forward_ms"]
                out[f"host_forward_backward_{name}_over_attention"] = (
                    other["forward_backward_ms"] / att["forward_backward_ms"])
        sweep = sorted({r["tokens"] for r in rows if r["group"] == "sweep"})
        if sweep:
            longest = max(sweep)
            for name in ("temde", "temde-proj", "attention", "mha", "nystrom"):
                long_row = _lookup(rows, group="sweep", pool=name, tokens=longest, dtype=dtype)
                short_row = _lookup(rows, group="sweep", pool=name, tokens=512, dtype=dtype)
                if long_row and short_row:
                    out[f"{name}_forward_time_L{longest}_over_L512"] = long_row["forward_ms"] / short_row["forward_ms"]
            temde_long = _lookup(rows, group="sweep", pool="temde", tokens=longest, dtype=dtype)
            for name in ("mha", "nystrom", "attention"):
                other = _lookup(rows, group="sweep", pool=name, tokens=longest, dtype=dtype)
                if temde_long and other:
                    out[f"L{longest}_forward_{name}_over_temde"] = other["forward_ms"] / temde_long["forward_ms"]
        summary[dtype] = out
    return summary


def format_row(row: dict) -> str:
    head = f"{row['group']:5s} {row['pool']:10s} B={row['batch']:<4d} L={row['tokens']:<5d} {row['dtype']:8s}"
    if "error" in row:
        return f"{head} error: {row['error']}"
    peak = "" if row["cuda_peak_mb"] is None else f" peak {row['cuda_peak_mb']:8.1f} MB"
    return (f"{head} fwd {row['forward_ms']:9.2f} ms  fwd+bwd {row['forward_backward_ms']:9.2f} ms  "
            f"saved {row['saved_for_backward_mb']:8.1f} MB{peak}")


def write_json(result: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)


def plot_sweep(result: dict, path: str) -> None:
    """Log-log time vs tokens, one line per pool, forward and forward+backward side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["group"] == "sweep" and "error" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in zip(axes, ("forward_ms", "forward_backward_ms"), ("forward", "forward + backward")):
        for dtype in sorted({r["dtype"] for r in rows}):
            for name in dict.fromkeys(r["pool"] for r in rows):
                pts = sorted((r["tokens"], r[key]) for r in rows if r["pool"] == name and r["dtype"] == dtype)
                if pts:
                    style = "-" if dtype == "float32" else "--"
                    ax.plot(*zip(*pts), style, marker="o", label=f"{name} ({dtype})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens per set (L)")
        ax.set_ylabel("ms per batch")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"Pooling time vs tokens, B={rows[0]['batch'] if rows else '?'}, dim={result['settings']['dim']}, "
                 f"{m.get('gpu', m['cpu'])}, {m['threads']} threads, {m['date']}", fontsize=9)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
