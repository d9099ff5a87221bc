"""`temde bench model`: the full host model with each pooling — encoding, the test score matrix (batched vs
SGRAF's per-caption loop, the same math) and a training step — on synthetic features of the real shapes."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from temde.bench.timing import machine_description, peak_cuda_bytes, synchronize, time_call
from temde.models import create_model
from temde.scoring import encode_captions, encode_images, loop_score_matrix, score_matrix
from temde.training.loss import triplet_loss


@dataclass
class ModelBenchSettings:
    heads: list[str] = field(default_factory=lambda: ["saf", "sgr"])
    poolings: list[str] = field(default_factory=lambda: ["attention", "temde"])
    preset_suffix: str = "f30k"  # saf-f30k / sgr-f30k: embed 1024, 36 x 2048 regions
    n_images: int = 1000  # Flickr30K test: 1,000 images x 5,000 captions
    n_captions: int = 5000
    loop_captions: int = 50  # captions scored by the per-caption loop reference (it is slow), vs batched
    regions: int = 36
    vocab_size: int = 10000
    min_words: int = 8  # caption lengths uniform in [min_words, max_words] (+ <start>/<end>)
    max_words: int = 18
    train_batch: int = 128
    image_block: int = 128
    caption_block: int = 128
    repeats: int = 3
    device: str = "cpu"
    seed: int = 0


def synthetic_inputs(s: ModelBenchSettings, img_dim: int, n_images: int, n_captions: int):
    g = torch.Generator().manual_seed(s.seed)
    images = torch.randn(n_images, s.regions, img_dim, generator=g).relu()  # BUTD features are non-negative
    lengths = torch.randint(s.min_words, s.max_words + 1, (n_captions,), generator=g) + 2
    tokens = torch.randint(4, s.vocab_size, (n_captions, int(lengths.max())), generator=g)
    tokens[torch.arange(tokens.shape[1]) >= lengths.unsqueeze(1)] = 0
    return images, tokens, lengths


def bench_one(head: str, pooling: str, s: ModelBenchSettings, progress=print) -> dict:
    device = torch.device(s.device)
    torch.manual_seed(s.seed)
    model = create_model(f"{head}-{s.preset_suffix}", pooling=pooling, vocab_size=s.vocab_size).to(device)
    img_dim = model.config.img_dim
    images, tokens, lengths = synthetic_inputs(s, img_dim, s.n_images, s.n_captions)
    row: dict = {"head": head, "pooling": pooling, "n_images": s.n_images, "n_captions": s.n_captions}

    # encoding each modality once (the part the pooling changes)
    start = time.perf_counter()
    img = encode_images(model, images, batch_size=128, device=device)
    cap = encode_captions(model, tokens, lengths, batch_size=128, device=device)
    synchronize(device)
    row["encode_s"] = time.perf_counter() - start

    start = time.perf_counter()
    score_matrix(model, img, cap, s.image_block, s.caption_block, device=device)
    synchronize(device)
    row["score_matrix_s"] = time.perf_counter() - start
    row["per_query_ms"] = 1e3 * (row["score_matrix_s"] + row["encode_s"]) / s.n_captions
    progress(f"{head}/{pooling}: encode {row['encode_s']:.2f} s, {s.n_images}x{s.n_captions} scores "
             f"{row['score_matrix_s']:.2f} s")

    # batched vs loop on the same subset of captions
    sub = cap[torch.arange(min(s.loop_captions, len(cap)))]
    row["loop_captions"] = len(sub)
    row["batched_subset_s"] = time_call(
        lambda: score_matrix(model, img, sub, s.image_block, s.caption_block, device=device), device, s.repeats, 1)
    row["loop_subset_s"] = time_call(lambda: loop_score_matrix(model, img, sub, device=device), device, 1, 0)
    row["loop_over_batched"] = row["loop_subset_s"] / row["batched_subset_s"]
    progress(f"{head}/{pooling}: {len(sub)} captions: batched {row['batched_subset_s']:.2f} s, "
             f"loop {row['loop_subset_s']:.2f} s ({row['loop_over_batched']:.1f}x)")

    # one training step (forward, VSE++ loss, backward, Adam) at the published batch size
    t_images, t_tokens, t_lengths = synthetic_inputs(s, img_dim, s.train_batch, s.train_batch)
    t_images, t_tokens, t_lengths = t_images.to(device), t_tokens.to(device), t_lengths.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = triplet_loss(model(t_images, None, t_tokens, t_lengths), margin=0.2)
        loss.backward()
        optimizer.step()

    row["train_step_s"] = time_call(step, device, s.repeats, 1)
    peak = peak_cuda_bytes(step, device)
    row["train_step_cuda_peak_mb"] = None if peak is None else peak / 2 ** 20
    progress(f"{head}/{pooling}: training step (B={s.train_batch}) {row['train_step_s']:.3f} s")
    return row


def run_model_bench(s: ModelBenchSettings, progress=print) -> dict:
    rows = [bench_one(head, pooling, s, progress) for head in s.heads for pooling in s.poolings]
    return {"settings": s.__dict__, "machine": machine_description(torch.device(s.device)), "rows": rows,
            "summary": summarise(rows)}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for row in rows:
        out[f"{row['head']}_{row['pooling']}_loop_over_batched"] = row["loop_over_batched"]
    for head in dict.fromkeys(r["head"] for r in rows):
        by = {r["pooling"]: r for r in rows if r["head"] == head}
        if "attention" in by and "temde" in by:
            for key in ("encode_s", "score_matrix_s", "train_step_s"):
                out[f"{head}_{key}_temde_over_attention"] = by["temde"][key] / by["attention"][key]
    return out


def format_table(result: dict) -> str:
    lines = ["| head | pooling | encode s | score matrix s | ms/query | loop/batched | train step s |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['head']} | {r['pooling']} | {r['encode_s']:.2f} | {r['score_matrix_s']:.2f} | "
                     f"{r['per_query_ms']:.2f} | {r['loop_over_batched']:.1f}x | {r['train_step_s']:.3f} |")
    return "\n".join(lines)


def default_sizes_for(device: str) -> dict:
    """The full Flickr30K test matrix on a GPU; a 100 x 500 slice on a CPU (5M SAF pairs take ~15 min there)."""
    if device.startswith("cuda"):
        return {}
    return {"n_images": 100, "n_captions": 500, "loop_captions": 20}

