"""Local encoders of SGRAF: regions -> Linear -> L2, words -> embedding -> BiGRU -> L2; and `Encoded`, the
(local, mask, global) triple that every later stage (alignment, heads, scoring, index) consumes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from temde.pooling import xavier_linear  # noqa: F401  (SGRAF's initialisation, shared with the pools)


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """SGRAF's x / (||x|| + eps). vector_norm's backward is finite at zero vectors (padding), unlike sqrt(sum x^2)."""
    return x / (torch.linalg.vector_norm(x, dim=dim, keepdim=True) + eps)


@dataclass
class Encoded:
    """One modality, encoded: `local [B, L, embed]` (zeros at padding), `mask [B, L]` (True = real token) and
    `global_ [B, pool_out_dim]` (L2-normalised)."""

    local: torch.Tensor
    mask: torch.Tensor
    global_: torch.Tensor

    def __len__(self) -> int:
        return self.local.shape[0]

    def __getitem__(self, index: slice | torch.Tensor) -> "Encoded":
        return Encoded(self.local[index], self.mask[index], self.global_[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Encoded":
        return Encoded(self.local.to(device=device, dtype=dtype), self.mask.to(device),
                       self.global_.to(device=device, dtype=dtype))

    def detach(self) -> "Encoded":
        return Encoded(self.local.detach(), self.mask.detach(), self.global_.detach())

    def trim(self) -> "Encoded":
        """Drop trailing token positions that are padding in every row (scores do not depend on them)."""
        real = self.mask.any(0).nonzero()
        length = int(real.max()) + 1 if real.numel() else 1
        return Encoded(self.local[:, :length], self.mask[:, :length], self.global_)

    @staticmethod
    def cat(parts: list["Encoded"]) -> "Encoded":
        """Concatenate along the batch, padding the token axis to the longest part."""
        if not parts:
            raise ValueError("Encoded.cat needs at least one part")
        length = max(part.local.shape[1] for part in parts)

        def pad(t: torch.Tensor) -> torch.Tensor:
            extra = length - t.shape[1]
            if extra == 0:
                return t
            shape = (t.shape[0], extra) + tuple(t.shape[2:])
            return torch.cat([t, t.new_zeros(shape)], dim=1)

        return Encoded(torch.cat([pad(p.local) for p in parts]), torch.cat([pad(p.mask) for p in parts]),
                       torch.cat([p.global_ for p in parts]))


def checked_image_mask(images: torch.Tensor, image_mask: torch.Tensor | None, img_dim: int) -> torch.Tensor:
    """The region mask of `images` `[B, R, img_dim]` (all True when None), after checking both shapes."""
    if images.dim() != 3 or images.shape[-1] != img_dim:
        raise ValueError(f"images must be [batch, regions, {img_dim}], got {tuple(images.shape)}")
    if image_mask is None:
        return torch.ones(images.shape[:2], dtype=torch.bool, device=images.device)
    if image_mask.shape != images.shape[:2] or image_mask.dtype != torch.bool:
        raise ValueError(f"image_mask must be a bool [batch, regions] = {tuple(images.shape[:2])} tensor, "
                         f"got {image_mask.dtype} {tuple(image_mask.shape)}")
    return image_mask


class ImageEncoder(nn.Module):
    """Region features `[B, R, img_dim]` -> region embeddings `[B, R, embed_size]` (one Linear, then L2)."""

    def __init__(self, img_dim: int, embed_size: int, normalize: bool = True):
        super().__init__()
        self.img_dim = img_dim
        self.fc = xavier_linear(img_dim, embed_size)
        self.normalize = normalize

    def forward(self, images: torch.Tensor,
                image_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        image_mask = checked_image_mask(images, image_mask, self.img_dim)
        local = self.fc(images)
        if self.normalize:
            local = l2norm(local)
        return local.masked_fill(~image_mask.unsqueeze(-1), 0.0), image_mask


class TextEncoder(nn.Module):
    """Token ids `[B, T]` + lengths `[B]` -> word embeddings `[B, T, embed_size]` and mask `[B, T]`.

    Word embedding learned from scratch (uniform +-0.1, dropout), a GRU over the packed sequence so padding never
    enters the recurrence, the two directions averaged, L2 per word; padded positions are exactly zero.
    """

    def __init__(self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.4, normalize: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.dropout = nn.Dropout(dropout)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=bidirectional)
        self.bidirectional = bidirectional
        self.normalize = normalize

    @torch.no_grad()
    def init_word_vectors(self, vectors: torch.Tensor) -> None:
        """Copy pretrained word vectors `[vocab_size, word_dim]` (row i = word id i) into the embedding."""
        if not isinstance(vectors, torch.Tensor):
            vectors = torch.as_tensor(vectors)
        if vectors.shape != self.embed.weight.shape:
            raise ValueError(f"word vectors must be [vocab_size, word_dim] = {tuple(self.embed.weight.shape)}, "
                             f"got {tuple(vectors.shape)}")
        self.embed.weight.copy_(vectors.to(self.embed.weight))

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, max_length], got {tuple(tokens.shape)}")
        lengths = torch.as_tensor(lengths)
        if lengths.shape != tokens.shape[:1]:
            raise ValueError(f"lengths must be [batch] = [{tokens.shape[0]}], got {tuple(lengths.shape)}")
        cpu_lengths = lengths.detach().to("cpu", torch.int64)  # pack_padded_sequence wants them on the CPU
        if cpu_lengths.numel() and (cpu_lengths.min() < 1 or cpu_lengths.max() > tokens.shape[1]):
            raise ValueError(f"lengths must be in [1, {tokens.shape[1]}], got min {int(cpu_lengths.min())} "
                             f"max {int(cpu_lengths.max())}")
        words = self.dropout(self.embed(tokens))
        packed = pack_padded_sequence(words, cpu_lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        # total_length keeps the token axis aligned with `tokens`, so the mask below matches position by position.
        local, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        if self.bidirectional:
            forward_half, backward_half = local.chunk(2, dim=-1)
            local = (forward_half + backward_half) / 2
        if self.normalize:
            local = l2norm(local)
        mask = torch.arange(tokens.shape[1], device=tokens.device) < lengths.to(tokens.device).unsqueeze(1)
        return local.masked_fill(~mask.unsqueeze(-1), 0.0), mask
