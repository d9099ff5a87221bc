"""`temde bench pool`: every global pooling of the registry alone, forward and forward+backward, at the host shape
and over a sweep of token counts, with the memory autograd keeps for the backward pass. Ratios against SGRAF's
attention pool are computed inside one run, and the pools of one shape are timed in interleaved rounds, so a change
of load on a shared machine falls on all of them alike.

Pools that fit themselves to data before training (T-EMDE: DLSH median biases and per-plane scales) are fitted to
the benchmark's tokens first, as the training loop does: an unfitted T-EMDE on unnormalised random tokens puts
most tokens dozens of spreads from every plane, which is not the regime a trained model runs in.

"saved" is every storage autograd keeps (the input tokens included: 18 MiB at 128 x 36 x 1024 in float32);
"activations" leaves out the input and the parameters, which exist whether or not a backward follows: the memory
the pool itself adds for training."""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field

import torch

from temde.bench.peers import NystromPool, peer_available
from temde.bench.timing import machine_description, peak_cuda_bytes, saved_for_backward_bytes, synchronize
from temde.pooling import make_pool

# name -> (kind, options). "attention" is the image flavour (VisualSA, with BatchNorm): the module T-EMDE replaces.
POOL_VARIANTS: dict[str, tuple[str, dict]] = {
    "attention": ("attention", {"batchnorm": True}),
    "temde": ("temde", {}),
    "temde-proj": ("temde", {"out_dim": "dim"}),
    "gpo": ("gpo", {}),
    "mha": ("mha", {"heads": 8}),
    "mean": ("mean", {}),
    "max": ("max", {}),
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


def random_tokens(batch: int, tokens: int, dim: int, device: torch.device, seed: int):
    """Gaussian tokens `[batch, tokens, dim]` and a mask where half the rows are padded by a quarter (masks do
    real work)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, dim, generator=generator).to(device)
    mask = torch.ones(batch, tokens, dtype=torch.bool, device=device)
    mask[batch // 2:, tokens - tokens // 4:] = False
    return x, mask


class PoolCase:
    """One pool on a batch of tokens, ready to time: `forward` (eval, no grad) and `forward_backward` (train mode,
    a backward through the tokens and the parameters)."""

    def __init__(self, pool: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype):
        self.pool, self.device, self.x, self.mask = pool, x.device, x, mask
        if hasattr(pool, "init_from_tokens"):  # as the training loop does before the first step
            pool.init_from_tokens(self.x, self.mask)
        device = x.device
        self.autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def forward(self):
        self.pool.eval()
        with torch.no_grad(), self.autocast():
            return self.pool(self.x, self.mask)

    def train_forward(self):
        self.pool.train()
        with self.autocast():
            return self.pool(self.x.detach().requires_grad_(), self.mask)

    def forward_backward(self):
        self.train_forward().float().square().sum().backward()

    def memory(self) -> dict:
        saved = saved_for_backward_bytes(self.train_forward)
        activations = saved_for_backward_bytes(self.train_forward, [self.x, *self.pool.parameters()])
        peak = peak_cuda_bytes(self.forward_backward, self.device)
        self.pool.zero_grad(set_to_none=True)
        return {"saved_for_backward_mb": saved / 2 ** 20, "saved_activations_mb": activations / 2 ** 20,
                "cuda_peak_mb": None if peak is None else peak / 2 ** 20}


def interleaved_times(cases: dict[str, PoolCase], method: str, device: torch.device, repeats: int,
                      warmup: int = 2, max_seconds: float = 20.0) -> dict[str, float]:
    """Median seconds of `case.<method>()` for every case, timed in rounds (one call of each case per round), so a
    change of load on a shared machine falls on every pool alike. A case stops repeating once it has spent
    `max_seconds` (slow rows at thousands of tokens)."""
    for case in cases.values():
        for _ in range(warmup):
            getattr(case, method)()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            if times[name] and sum(times[name]) > max_seconds:
                continue
            synchronize(device)
            start = time.perf_counter()
            getattr(case, method)()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(spent) for name, spent in times.items()}


def measure_group(pools: dict[str, torch.nn.Module], batch: int, tokens: int, dim: int, dtype: torch.dtype,
                  device: torch.device, repeats: int, seed: int) -> dict[str, dict]:
    """Rows of every pool on one shape: memory one pool at a time, times in interleaved rounds."""
    results: dict[str, dict] = {}
    cases: dict[str, PoolCase] = {}
    x, mask = random_tokens(batch, tokens, dim, device, seed)  # one batch shared by every pool of the shape
    for name, pool in pools.items():
        try:
            case = PoolCase(pool, x, mask, dtype)
            results[name] = case.memory()
            cases[name] = case
        except (RuntimeError, MemoryError) as exc:  # out of memory at the largest sizes: record, go on
            results[name] = {"error": str(exc).splitlines()[0][:200]}
    for method, key in (("forward", "forward_ms"), ("forward_backward", "forward_backward_ms")):
        try:
            for name, seconds in interleaved_times(cases, method, device, repeats).items():
                results[name][key] = 1e3 * seconds
        except (RuntimeError, MemoryError) as exc:
            for name in cases:
                results[name] = {"error": str(exc).splitlines()[0][:200]}
            break
    for case in cases.values():
        case.pool.zero_grad(set_to_none=True)
    return results


def run_pool_bench(settings: PoolBenchSettings, progress=print) -> dict:
    device = torch.device(settings.device)
    names = available_pools(settings.pools)
    rows = []
    shapes = [("host", settings.host_batch, settings.host_tokens)]
    shapes += [("sweep", settings.sweep_batch, L) for L in settings.sweep_tokens]
    for dtype_name in settings.dtypes:
        dtype = getattr(torch, dtype_name)
        for group, batch, tokens in shapes:
            pools = {}
            for name in names:
                torch.manual_seed(settings.seed)
                pools[name] = build_pool(name, settings.dim).to(device)
            results = measure_group(pools, batch, tokens, settings.dim, dtype, device, settings.repeats,
                                    settings.seed)
            for name in names:
                row = {"group": group, "pool": name, "batch": batch, "tokens": tokens, "dim": settings.dim,
                       "dtype": dtype_name, **results[name]}
                rows.append(row)
                progress(format_row(row))
            del pools
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
        for name in dict.fromkeys(r["pool"] for r in rows if r["pool"] != "attention"):
            other = _lookup(rows, group="host", pool=name, dtype=dtype)
            if att and other:
                out[f"host_forward_{name}_over_attention"] = other["forward_ms"] / att["forward_ms"]
                out[f"host_forward_backward_{name}_over_attention"] = (
                    other["forward_backward_ms"] / att["forward_backward_ms"])
                out[f"host_saved_{name}_over_attention"] = other["saved_for_backward_mb"] / att["saved_for_backward_mb"]
                if other.get("saved_activations_mb") is not None and att.get("saved_activations_mb"):
                    out[f"host_activations_{name}_over_attention"] = (
                        other["saved_activations_mb"] / att["saved_activations_mb"])
        sweep = sorted({r["tokens"] for r in rows if r["group"] == "sweep"})
        if sweep:
            longest = max(sweep)
            for name in ("temde", "temde-proj", "attention", "gpo", "mha", "nystrom"):
                long_row = _lookup(rows, group="sweep", pool=name, tokens=longest, dtype=dtype)
                short_row = _lookup(rows, group="sweep", pool=name, tokens=512, dtype=dtype)
                if long_row and short_row and longest > 512:  # L512 over itself says nothing
                    out[f"{name}_forward_time_L{longest}_over_L512"] = long_row["forward_ms"] / short_row["forward_ms"]
            temde_long = _lookup(rows, group="sweep", pool="temde", tokens=longest, dtype=dtype)
            for name in ("mha", "nystrom", "attention", "gpo"):
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
    activations = row.get("saved_activations_mb")
    beyond = "" if activations is None else f" (activations {activations:7.1f} MB)"
    return (f"{head} fwd {row['forward_ms']:9.2f} ms  fwd+bwd {row['forward_backward_ms']:9.2f} ms  "
            f"saved {row['saved_for_backward_mb']:8.1f} MB{beyond}{peak}")


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
    import matplotlib.ticker

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
        # Ticks at the measured L only: log-axis minor labels (3x10^2, 4x10^2 ...) overlap on a short sweep.
        measured = sorted({r["tokens"] for r in rows})
        ax.set_xticks(measured, [str(t) for t in measured], fontsize=8)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
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
