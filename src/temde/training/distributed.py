"""Data-parallel training over several processes: `torchrun` + DistributedDataParallel, gloo on CPU, NCCL on GPU.

The run equals single-process training on the same global batches (up to float rounding), because:

- Data. Every rank draws the same seeded permutation per epoch as `make_loader(shuffle=True, seed)`, cuts it
  into the same global batches of `batch_size`, and takes a contiguous shard of each: rank r gets items
  [r*m, (r+1)*m) with m = ceil(b / world) for a global batch of b items. A shard that comes out short (only on a
  last batch that does not split evenly) is padded with copies of the batch's first item; the gathered batch is
  then simply its first b rows, so padding never reaches the loss.
- Hardest negatives over the global batch. Each rank encodes its shard, all-gathers the caption encodings
  (local tokens padded to the longest shard, mask, global vector), scores its own images against every caption
  (its row block of the score matrix), and all-gathers the row blocks (and, for the auxiliary global loss, the
  image global vectors). Every rank then holds the full [b, b] matrix and computes the same loss L.
- Gradient scale. `gather_rows` is differentiable: its backward sums, over ranks, the gradients that each rank's
  copy of L sends to a row block. All W ranks compute the same L, so rank r's encoder and head receive
  W * dL/d(its parameters' share); summed over ranks that is W * dL/dθ, and DDP's all-reduce *averages* the
  gradients (divides by W): each rank ends with exactly dL/dθ, the single-process gradient. No extra factor.

Not bit-identical: BatchNorm statistics are per process (SAF's head and the image attention pool). On CUDA the
loop converts them to SyncBatchNorm; gloo has no SyncBatchNorm, so SAF / attention pooling under CPU DDP are close
to, not equal to, single-process training. Dropout masks are drawn per rank (seeded from (seed, epoch, rank)).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler

from temde.errors import TemdeError
from temde.models.encoders import Encoded


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank among world_size processes, local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this code initialised the process group, so it also destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def env_ranks(environ: Mapping[str, str] = os.environ) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the variables torchrun sets; (0, 1, 0) outside torchrun."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = environ.get(name)
        try:
            values[name] = default if text in (None, "") else int(text)
        except ValueError:
            raise TemdeError(f"environment variable {name}={text!r} is not an integer") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise TemdeError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return rank, world, local


def setup(device: str | torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group that torchrun describes (if any); returns (DistInfo, this process's device).

    With several processes on CUDA, each takes `cuda:LOCAL_RANK` (an index in `device` is ignored) and NCCL;
    on CPU, gloo. A process group that the caller initialised already is used as it is.
    """
    device = torch.device(device)
    rank, world, local = env_ranks()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    if world == 1:
        return SINGLE, device
    if not dist.is_available():
        raise TemdeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise TemdeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices are visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        owns = True
    return DistInfo(rank, world, local, owns), device


def teardown(info: DistInfo, clean: bool = True) -> None:
    """Leave the process group. After a clean run every rank waits for the others first: a rank that tears down
    while its peer still talks to it makes gloo's I/O thread abort the peer ("terminate called without an active
    exception", seen in CI). After an error there is no barrier, since the other ranks may never reach it."""
    if info.owns_group and dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            dist.destroy_process_group()


# ---- data: the same global batches as single-process training, one shard per rank -------------------------

def shard_size(global_size: int, world_size: int) -> int:
    """Items per rank for a global batch of `global_size` (the last ranks may hold padding)."""
    return math.ceil(global_size / world_size)


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's shard of each global batch of a seeded shuffle of `n` items.

    The order is `RandomSampler` with a generator seeded by `seed`, exactly what `make_loader(shuffle=True,
    seed=seed)` draws, cut into batches of `batch_size` (the last one smaller). Rank r yields items
    [r*m, (r+1)*m) of each batch, m = shard_size(batch, world), padded to m with copies of the batch's first item.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        if n < 1 or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ShardedBatchSampler: bad n={n}, batch_size={batch_size}, rank={rank}, "
                             f"world_size={world_size}")
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def global_sizes(self) -> list[int]:
        """Size of each global batch, in order."""
        return [min(self.batch_size, self.n - start) for start in range(0, self.n, self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        order = list(RandomSampler(range(self.n), generator=torch.Generator().manual_seed(self.seed)))
        for start in range(0, self.n, self.batch_size):
            batch = order[start:start + self.batch_size]
            size = shard_size(len(batch), self.world_size)
            shard = batch[self.rank * size:(self.rank + 1) * size]
            yield shard + [batch[0]] * (size - len(shard))


def make_shard_loader(split, vocab, batch_size: int, seed: int, info: DistInfo, num_workers: int = 0,
                      pin_memory: bool = False) -> DataLoader:
    """A DataLoader of this rank's shards (see ShardedBatchSampler); `.batch_sampler.global_sizes()` gives the
    global batch size of each step."""
    from temde.data.batches import CaptionDataset, collate

    dataset = CaptionDataset(split, vocab)
    sampler = ShardedBatchSampler(len(dataset), batch_size, seed, info.rank, info.world_size)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=num_workers > 0)


# ---- collectives ------------------------------------------------------------------------------------------

class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; backward: sum the incoming gradients over ranks and hand
    each rank the rows of its own tensor (what torch.distributed.nn.functional.all_gather does, without its
    deprecation warning and with one all-reduce that gloo and NCCL both support)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' `tensor` (same shape everywhere) stacked along dim 0 in rank order; differentiable when the
    input requires grad (gradients are summed over ranks)."""
    if tensor.requires_grad:
        return _GatherRows.apply(tensor)
    sent = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor.contiguous()
    parts = [torch.empty_like(sent) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, sent)
    return torch.cat(parts).to(tensor.dtype)


def _pad_tokens(tensor: torch.Tensor, length: int) -> torch.Tensor:
    extra = length - tensor.shape[1]
    if extra == 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros((tensor.shape[0], extra, *tensor.shape[2:]))], dim=1)


def gather_encoded(enc: Encoded) -> Encoded:
    """Every rank's encodings, token axis padded to the longest one (padding is zero and masked, as in a single
    batch); local and global vectors keep their autograd graph."""
    length = torch.tensor([enc.local.shape[1]], device=enc.local.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    length = int(length)
    return Encoded(gather_rows(_pad_tokens(enc.local, length)), gather_rows(_pad_tokens(enc.mask, length)),
                   gather_rows(enc.global_))


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank, e.g. before evaluating."""
    for buffer in module.buffers():
        dist.broadcast(buffer, src)


def shard_rows(n: int, info: DistInfo) -> slice:
    """The rows of an n-row job (e.g. the images of a dev score matrix) that this rank computes."""
    size = shard_size(n, info.world_size)
    return slice(min(info.rank * size, n), min((info.rank + 1) * size, n))


def gather_row_blocks(block: np.ndarray, n: int, info: DistInfo, device: torch.device) -> np.ndarray:
    """Reassemble an [n, C] matrix whose rows `shard_rows(n, info)` each rank computed as `block`."""
    size = shard_size(n, info.world_size)
    padded = torch.zeros((size, block.shape[1]), dtype=torch.float32, device=device)
    padded[:block.shape[0]] = torch.as_tensor(block, dtype=torch.float32, device=device)
    return gather_rows(padded)[:n].cpu().numpy()
