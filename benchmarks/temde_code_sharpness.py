"""Diagnosis (docs/ablations.md §6): how sharp a trained T-EMDE's soft codes are, and how much of each sketch row is
the histogram every set shares.

`python benchmarks/temde_code_sharpness.py CHECKPOINT [DATA] [N_IMAGES]` (DATA: the precomp folder the run was
trained on, default /tmp/data-all-cold; the first N_IMAGES dev images, default 200, and their captions). Prints, per
side: the tokens' current per-feature spread against the spread the pool standardises with, the median |z| (plane
distance over temperature; 0.67 for standardised Gaussian tokens, the state at initialisation), the share of bit
probabilities outside [0.02, 0.98] (saturated: their gradient is under 2% of the largest), and the mean cosine of a
set's row histogram with the dev sample's mean row histogram (1: every set has the same histogram). Then the mean
cosine of matching and of all pairs.
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F

from temde.data import load_split
from temde.data.batches import encode_captions
from temde.training.checkpoint import load_checkpoint, restore_model, restore_vocab


def main(path: str, data: str, n_images: int) -> None:
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(path)
    model, vocab = restore_model(checkpoint), restore_vocab(checkpoint)
    if model.config.pooling != "temde":
        raise SystemExit(f"{path}: a {model.config.pooling!r} model; this diagnosis reads a T-EMDE pool")
    split = load_split(data, "dev")
    images = torch.tensor(np.asarray(split.images[:n_images]))
    owners = np.asarray(split.image_ids())
    captions = np.flatnonzero(owners < n_images)
    tokens, lengths = encode_captions([split.captions[j] for j in captions], vocab)
    with torch.no_grad():
        encoded = {"images": model.encode_images(images, None), "captions": model.encode_captions(tokens, lengths)}
        for (side, enc), pool in zip(encoded.items(), model.pools):
            real = enc.local[enc.mask]
            z = pool.plane_distances(real)
            bits = torch.sigmoid(z)
            rows = F.normalize(pool.histogram(enc.local, enc.mask), dim=-1)  # [sets, N, 2**K]
            common = F.normalize(rows.mean(0, keepdim=True), dim=-1)
            print(f"{side}: token spread {real.std(0).mean():.4g} (pool standardises with {pool.in_std.mean():.4g}); "
                  f"median |z| {z.abs().median():.2f}; "
                  f"saturated bits {((bits < 0.02) | (bits > 0.98)).float().mean():.1%}; "
                  f"row histogram vs the mean row histogram: cosine {(rows * common).sum(-1).mean():.2f}")
        scores = encoded["images"].global_ @ encoded["captions"].global_.t()
        matching = scores[torch.as_tensor(owners[captions]), torch.arange(len(captions))]
        print(f"cosine: matching pairs {matching.mean():.3f}, all pairs {scores.mean():.3f} (std {scores.std():.3f})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "/tmp/data-all-cold",
         int(sys.argv[3]) if len(sys.argv) > 3 else 200)
