"""Timing and memory helpers shared by the benchmarks: warm-up, device synchronisation, median of repeats."""
from __future__ import annotations

import platform
import statistics
import time
import weakref
from typing import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


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


def saved_for_backward_bytes(fn: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of `fn()` (each storage counted once), leaving
    out the storages of `exclude` (a module's input and parameters: they exist whether or not a backward follows,
    so what is left is the activation memory the module itself adds).

    A device-independent measure of a module's training memory: on CUDA the benchmarks also report the
    allocator's peak, which CPU PyTorch does not expose (`peak_bytes` measures it on any device).
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


class PeakMemory(TorchDispatchMode):
    """Peak bytes of the tensor storages allocated while the mode is active (and not freed), on any device.

    Every op's outputs are seen here; an output storage that none of the op's inputs holds is a new allocation,
    counted until its storage is freed (a weakref finalizer). Storages that existed before (parameters, the batch,
    optimizer state) are not counted, nor are views. It counts what tensors hold, not what the allocator caches
    or rounds up, so it is the same figure on a CPU and on a GPU; a Python callback per op makes the timed run
    separate.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _freed(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in inputs or key in self._sizes:
                continue
            self._sizes[key] = size
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key)
        return out


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of the tensors `fn()` allocates, above what existed before it (see PeakMemory)."""
    with PeakMemory() as tracker:
        fn()
    return tracker.peak


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
