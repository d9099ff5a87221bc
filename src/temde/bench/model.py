"""`temde bench model`: the full host model with each pooling — encoding, the test score matrix (batched vs
SGRAF's per-caption loop, the same math) and a training step — on synthetic features of the real shapes.

`temde bench pool --host vse` (`run_host_step_bench`): one training step of the dual-encoder host per pooling at
several region counts, where the pooling is most of what differs between models, with the step's memory and the
largest batch that fits a memory budget."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from temde.bench.timing import machine_description, peak_bytes, peak_cuda_bytes, synchronize, time_call
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



# ---- one training step of the dual-encoder host per pooling (`temde bench pool --host vse`) ----------------------

@dataclass
class HostStepSettings:
    """One training step of a host whose score is the cosine of the pooled vectors, for every pooling, at several
    region counts: EfficientNet-Lite0's 7x7, 14x14 and 28x28 grids (224, 448 and 896 pixels: 1280-d regions)."""

    model: str = "vse-f30k"  # the preset: VSE-infinity's sizes (embed 1024); "vse-small" is the 2-core one
    img_dim: int = 1280  # EfficientNet-Lite0 region features
    embed_size: int | None = None  # None: the preset's
    poolings: list[str] = field(default_factory=lambda: ["attention", "temde", "gpo", "mha", "mean", "max"])
    tokens: list[int] = field(default_factory=lambda: [49, 196, 784])
    batch: int = 32
    memory_gb: float = 8.0  # the largest batch fitting this is reported at the largest token count
    vocab_size: int = 10000
    min_words: int = 8
    max_words: int = 18
    repeats: int = 3
    device: str = "cpu"
    seed: int = 0


def _host_inputs(s: HostStepSettings, batch: int, tokens: int, device: torch.device):
    """Random regions (non-negative, as CNN features are) and random captions of 8-18 words + <start>/<end>."""
    g = torch.Generator().manual_seed(s.seed)
    images = torch.randn(batch, tokens, s.img_dim, generator=g).relu()
    lengths = torch.randint(s.min_words, s.max_words + 1, (batch,), generator=g) + 2
    words = torch.randint(4, s.vocab_size, (batch, int(lengths.max())), generator=g)
    words[torch.arange(words.shape[1]) >= lengths.unsqueeze(1)] = 0
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    return images.to(device), mask.to(device), words.to(device), lengths.to(device)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class HostStep:
    """One training step (forward, VSE++ loss with hardest negatives, backward, clip, Adam) of the host with one
    pooling on random inputs, ready to run: the model built and its pools initialised from the batch as the
    training loop does, and one step taken so Adam's moments exist (as in every step but the first)."""

    def __init__(self, s: HostStepSettings, pooling: str, tokens: int, batch: int):
        from temde.training.loop import MatchingObjective

        self.device = torch.device(s.device)
        torch.manual_seed(s.seed)
        overrides = {"img_dim": s.img_dim, "vocab_size": s.vocab_size, "pooling": pooling}
        if s.embed_size is not None:
            overrides["embed_size"] = s.embed_size
        self.model = create_model(s.model, **overrides).to(self.device)
        self.inputs = _host_inputs(s, batch, tokens, self.device)
        with torch.no_grad():  # the training loop's data-driven initialisation (T-EMDE's DLSH biases)
            self.model.eval()
            images, mask, words, lengths = self.inputs
            self.model.init_pools(self.model.encode_images(images, mask), self.model.encode_captions(words, lengths))
        self.model.train()
        self.objective = MatchingObjective(self.model, margin=0.2, max_violation=True)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=2e-4)
        self.row = {"pooling": pooling, "tokens": tokens, "batch": batch}
        self()

    def __call__(self) -> None:
        loss = self.objective(*self.inputs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 2.0)
        self.optimizer.step()
        synchronize(self.device)

    def measure_memory(self) -> dict:
        """The peak of what one step allocates (activations, gradients, temporaries; `peak_bytes`) plus what lives
        across steps (parameters, Adam's two moments, the batch)."""
        resident = _tensor_bytes(self.parameters) + _tensor_bytes(
            v for state in self.optimizer.state.values() for v in state.values()) + _tensor_bytes(self.inputs)
        self.row.update(step_peak_mb=peak_bytes(self) / 2 ** 20, resident_mb=resident / 2 ** 20)
        self.row["memory_mb"] = self.row["step_peak_mb"] + self.row["resident_mb"]
        cuda = peak_cuda_bytes(self, self.device)
        self.row["cuda_peak_mb"] = None if cuda is None else cuda / 2 ** 20
        return self.row


def _interleaved_step_times(steps: list[HostStep], repeats: int) -> None:
    """Median step time of each, timed in rounds (one step of each per round), so that a change of load on a shared
    machine falls on every pooling alike instead of on whichever ran at the time."""
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, spent in zip(steps, times):
            start = time.perf_counter()
            step()
            spent.append(time.perf_counter() - start)
    for step, spent in zip(steps, times):
        step.row["step_s"] = statistics.median(spent)
        step.row["step_times_s"] = spent


def run_host_step_bench(s: HostStepSettings, progress=print) -> dict:
    """Every pooling at every token count: memory one pooling at a time, step times in interleaved rounds. At the
    largest token count a second memory measurement at half the batch gives the memory per item (the slope between
    the two) and the fixed part, hence the largest batch within `memory_gb`."""
    rows = []
    longest = max(s.tokens)
    for tokens in s.tokens:
        steps = []
        for pooling in s.poolings:
            try:
                step = HostStep(s, pooling, tokens, s.batch)
                row = step.measure_memory()
                if tokens == longest and s.batch >= 2:
                    half = HostStep(s, pooling, tokens, s.batch // 2).measure_memory()
                    per_item = (row["memory_mb"] - half["memory_mb"]) / (s.batch - s.batch // 2)
                    fixed = row["memory_mb"] - per_item * s.batch
                    row.update(memory_half_batch_mb=half["memory_mb"], memory_per_item_mb=per_item,
                               memory_fixed_mb=fixed,
                               max_batch_in_budget=int((s.memory_gb * 1024 - fixed) // per_item) if per_item > 0
                               else None)
                steps.append(step)
            except (RuntimeError, MemoryError) as exc:  # out of memory: record, go on
                rows.append({"pooling": pooling, "tokens": tokens, "batch": s.batch,
                             "error": str(exc).splitlines()[0][:200]})
                progress(format_host_row(rows[-1]))
        _interleaved_step_times(steps, s.repeats)
        for step in steps:
            rows.append(step.row)
            progress(format_host_row(step.row))
        del steps
    rows.sort(key=lambda r: (s.tokens.index(r["tokens"]), s.poolings.index(r["pooling"])))
    return {"settings": s.__dict__, "machine": machine_description(torch.device(s.device)), "rows": rows,
            "summary": summarise_host(rows)}


def summarise_host(rows: list[dict]) -> dict:
    """Step time and memory of every pooling over attention pooling's (and T-EMDE's over GPO's), per token count,
    each from rows of this one run."""
    out = {}
    for tokens in sorted({r["tokens"] for r in rows}):
        by = {r["pooling"]: r for r in rows if r["tokens"] == tokens and "error" not in r}
        for reference in ("attention", "gpo"):
            if reference not in by:
                continue
            for name, row in by.items():
                if name != reference and (reference == "attention" or name == "temde"):
                    out[f"L{tokens}_step_{name}_over_{reference}"] = row["step_s"] / by[reference]["step_s"]
                    out[f"L{tokens}_memory_{name}_over_{reference}"] = row["memory_mb"] / by[reference]["memory_mb"]
    return out


def format_host_row(row: dict) -> str:
    head = f"{row['pooling']:10s} L={row['tokens']:<4d} B={row['batch']:<4d}"
    if "error" in row:
        return f"{head} error: {row['error']}"
    text = (f"{head} step {row['step_s']:8.3f} s  memory {row['memory_mb']:8.1f} MB (step peak "
            f"{row['step_peak_mb']:.1f} + resident {row['resident_mb']:.1f})")
    if row.get("max_batch_in_budget") is not None:
        text += f"  {row['memory_per_item_mb']:.1f} MB/item, batch in budget {row['max_batch_in_budget']}"
    return text


def format_host_table(result: dict) -> str:
    s = result["settings"]
    lines = [f"| pooling | " + " | ".join(f"step s (L = {t})" for t in s["tokens"]) + " | "
             + " | ".join(f"memory MB (L = {t})" for t in s["tokens"]) + f" | MB per item (L = {max(s['tokens'])})"
             f" | largest batch in {s['memory_gb']:g} GB |",
             "|---" * (2 + 2 * len(s["tokens"]) + 1) + "|"]
    for pooling in s["poolings"]:
        cells = []
        by = {r["tokens"]: r for r in result["rows"] if r["pooling"] == pooling}
        for key in ("step_s", "memory_mb"):
            for t in s["tokens"]:
                r = by.get(t)
                cells.append("–" if r is None or "error" in r else (f"{r[key]:.3f}" if key == "step_s"
                                                                   else f"{r[key]:.0f}"))
        last = by.get(max(s["tokens"]), {})
        cells.append(f"{last['memory_per_item_mb']:.1f}" if "memory_per_item_mb" in last else "–")
        cells.append(str(last["max_batch_in_budget"]) if last.get("max_batch_in_budget") is not None else "–")
        lines.append(f"| {pooling} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
