"""Timing and memory helpers shared by the benchmarks: warm-up, device synchronisation, median of repeats."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 2,
              max_seconds: float = 20.0) -> float:
    """Median wall time of `fn()` in seconds. Stops repeating early once `max_seconds` is spent (slow rows)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    budget_start = time.perf_counter()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if time.perf_counter() - budget_start > max_seconds:
            break
    return statistics.median(times)


def saved_for_backward_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of `fn()` (each storage counted once).

    A device-independent measure of a module's training memory: on CUDA the benchmarks also report the
    allocator's peak, which CPU PyTorch does not expose.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def peak_cuda_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def machine_description(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
