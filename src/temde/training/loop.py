"""The training loop: VSE++ hinge loss, Adam, step decay, gradient clipping, per-epoch dev rsum, resumable runs.

A run folder holds `last.pt` (written every epoch), `best.pt` (best dev rsum so far), `steps.csv`,
`epochs.csv`, `config.json` and optionally `tensorboard/`. `train(TrainSettings(..., resume=True))` continues
a killed run from `last.pt` and ends with the same weights and metrics as an uninterrupted run: every random
generator is restored, and each epoch's data order comes from (seed, epoch) alone.

Under `torchrun` the same call trains with DistributedDataParallel (see temde.training.distributed): the batch
size stays the global one, hardest negatives are mined over the whole global batch, and rank 0 alone writes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from temde.errors import CheckpointError, DataError, TemdeError
from temde.evaluation import chance_rsum, evaluate
from temde.outputs import OutputFolderError, inspect_folder, write_record
from temde.scoring import CAPTION_BLOCK, IMAGE_BLOCK
from temde.training import distributed
from temde.training.checkpoint import load_checkpoint, restore_vocab, rng_state, save_checkpoint, set_rng_state
from temde.training.distributed import DistInfo
from temde.training.logging import RunLogger
from temde.training.loss import triplet_loss

# SGRAF's published training settings; a preset's "train" part and explicit settings override them.
DEFAULT_TRAIN = {
    "epochs": 30, "lr_update": 20, "learning_rate": 2e-4, "batch_size": 128, "grad_clip": 2.0,
    "margin": 0.2, "max_violation": True, "lr_decay": 0.1, "warmup_epochs": 0,
    "mask_same_image": False,  # SGRAF's loss pushes a second caption of the same image away like any negative
    "global_loss": 0.0,  # SGRAF has no loss on the global vectors
}
# Plain head names without a preset: SGRAF's Flickr30K schedules (SAF 30 epochs / decay at 20, SGR 40 / 30).
HEAD_SCHEDULES = {"saf": {"epochs": 30, "lr_update": 20}, "sgr": {"epochs": 40, "lr_update": 30}}


@dataclass
class TrainSettings:
    """Everything a run depends on. `None` means: the preset's value, else SGRAF's default (DEFAULT_TRAIN)."""

    data: str  # precomp folder with train_* and dev_* files (vocab.json optional)
    out: str  # run folder
    model: str = "saf-small"  # a preset name (temde.models.list_models()) or a plain head "saf" / "sgr"
    # Start from this checkpoint (a temde run's best.pt or one written by `temde import sgraf`): its model config
    # and weights, with `pooling` (and any other override) applied; the pools of a new pooling start fresh. The
    # training hyper-parameters come from `model` (a preset) as usual.
    init: str | None = None
    pooling: str | None = None  # override the preset's global pooling: a name in temde.pooling.POOLS
    pool_options: dict[str, Any] | None = None
    embed_size: int | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)  # any other ModelConfig field
    epochs: int | None = None
    lr: float | None = None
    lr_update: int | None = None  # epochs between lr decays
    lr_decay: float | None = None
    batch_size: int | None = None
    margin: float | None = None
    max_violation: bool | None = None
    # Epochs that sum over all negatives before hardest-negative mining starts (VSE-infinity's warm-up): on small
    # data sets hardest negatives from the first step can collapse every embedding to one point.
    warmup_epochs: int | None = None
    grad_clip: float | None = None  # <= 0 disables clipping
    # True: two captions of one image in a batch are not negatives of each other (the small presets); False:
    # every off-diagonal pair is a negative, as SGRAF's loss (the f30k/coco presets). None: the preset's value.
    mask_same_image: bool | None = None
    # Weight of the auxiliary VSE++ loss on global-vector inner products (0 = off; None = the preset's: saf-small 1).
    global_loss: float | None = None
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    resume: bool = False  # continue the run in `out` from its last.pt (settings checked against the run's)
    force: bool = False  # start over in `out`, replacing a run already there
    amp: bool = False  # mixed precision; only takes effect on CUDA
    amp_dtype: str = "bfloat16"  # or "float16" (with loss scaling); bfloat16 falls back to float16 where unsupported
    log_every: int = 50  # steps between rows of steps.csv
    tensorboard: bool = False
    progress: bool = True  # tqdm bar
    max_steps_per_epoch: int | None = None  # cap on optimizer steps per epoch (quick runs, tests)
    train_subset: int | None = None  # use only the first N train images (and their captions)
    dev_subset: int | None = None  # evaluate on the first N dev images only
    dev_split: str = "dev"
    eval_batch_size: int = 128
    image_block: int = IMAGE_BLOCK  # score_matrix block sizes for the dev evaluation
    caption_block: int = CAPTION_BLOCK
    init_pools: bool = True  # data-driven init of pools that offer it (T-EMDE median biases)
    temperature_anneal: tuple[float, float] | None = None  # T-EMDE temperature, geometric from start to end
    on_epoch_start: Callable[[nn.Module, int], None] | None = field(default=None, repr=False)  # custom hook
    word_vectors: str | None = None  # "glove" (the packaged GloVe 6B 50d) or a GloVe-format text file
    validate_data: bool = True  # read the features once to check they are finite

    def validate(self) -> None:
        """ValueError naming the first setting that cannot work (presets are checked when resolved)."""
        positive_ints = ("epochs", "lr_update", "batch_size", "log_every", "max_steps_per_epoch", "train_subset",
                         "dev_subset", "eval_batch_size", "image_block", "caption_block")
        for name in positive_ints:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        for name in ("lr", "lr_decay"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        if self.global_loss is not None and not self.global_loss >= 0:
            raise ValueError(f"global_loss: expected a weight >= 0, got {self.global_loss!r}")
        if self.margin is not None and not self.margin >= 0:
            raise ValueError(f"margin: expected a number >= 0, got {self.margin!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers: expected an integer >= 0, got {self.workers!r}")
        if self.resume and self.force:
            raise ValueError("resume and force: choose one (continue the run in out, or start it over)")
        if self.amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"amp_dtype: expected 'bfloat16' or 'float16', got {self.amp_dtype!r}")
        if self.temperature_anneal is not None and (len(self.temperature_anneal) != 2
                                                    or min(self.temperature_anneal) <= 0):
            raise ValueError(f"temperature_anneal: expected two positive numbers, got {self.temperature_anneal!r}")

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "on_epoch_start"}
        if values["temperature_anneal"] is not None:
            values["temperature_anneal"] = list(values["temperature_anneal"])
        return values


# ---- setup -------------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def derived_seed(seed: int, *keys: int) -> int:
    """An independent 31-bit seed for (seed, keys...), e.g. the data order of one epoch."""
    return int(np.random.SeedSequence([seed % 2**32, *keys]).generate_state(1)[0] & 0x7FFFFFFF)


def resolve_model(settings: TrainSettings, img_dim: int, vocab_size: int, init_config: dict | None = None):
    """(ModelConfig, training hyper-parameters) for the settings; the data fixes img_dim and vocab_size.
    `init_config` (the config of the `--init` checkpoint) replaces the preset's model part."""
    from temde.models import ModelConfig, list_models, load_preset
    from temde.models.registry import pool_recipe

    overrides = dict(settings.model_overrides)
    for name in ("pooling", "pool_options", "embed_size"):
        if getattr(settings, name) is not None:
            overrides[name] = getattr(settings, name)
    if "pooling" in overrides and "pool_options" not in overrides:
        # A preset's pool options belong to its own pooling; another pooling gets the preset's recipe for it
        # (`pool_defaults`: what the demo and the ablations found best there), else its defaults.
        preset = load_preset(settings.model) if settings.model in list_models() else None
        if preset is None or overrides["pooling"] != preset["model"]["pooling"]:
            overrides["pool_options"] = pool_recipe(settings.model, overrides["pooling"]) if preset else {}
    overrides.update(img_dim=img_dim, vocab_size=vocab_size)
    if settings.word_vectors == "glove":
        from temde.data.word_vectors import GLOVE_DIM

        overrides.setdefault("word_dim", GLOVE_DIM)  # the packaged vectors fix the word embedding size
    hyper = dict(DEFAULT_TRAIN)
    if settings.model in list_models():
        preset = load_preset(settings.model)
        values = {**preset["model"], **overrides}
        hyper.update(preset["train"])
    elif settings.model in HEAD_SCHEDULES:
        values = {"head": settings.model, **overrides}
        hyper.update(HEAD_SCHEDULES[settings.model])
    else:
        raise TemdeError(f"unknown model {settings.model!r} "
                         f"(a head: saf, sgr; or a preset: {', '.join(list_models())})")
    if init_config is not None:
        if init_config.get("vocab_size") != vocab_size:
            raise TemdeError(f"{settings.init}: the checkpoint's vocabulary has {init_config.get('vocab_size')} "
                             f"words, the vocabulary in use {vocab_size}")
        values = {**init_config, **overrides}
    hyper.update(explicit_hyper(settings))
    for key in ("epochs", "batch_size", "lr_update"):  # explicit values are validated; this catches a preset's
        if not isinstance(hyper[key], int) or hyper[key] < 1:
            raise TemdeError(f"preset {settings.model!r}: train {key} must be a positive integer, got {hyper[key]!r}")
    return ModelConfig.from_dict(values), hyper


def explicit_hyper(settings: TrainSettings) -> dict[str, Any]:
    """The training hyper-parameters the settings give explicitly (not None), under their DEFAULT_TRAIN names."""
    explicit = {"epochs": settings.epochs, "learning_rate": settings.lr, "lr_update": settings.lr_update,
                "lr_decay": settings.lr_decay, "batch_size": settings.batch_size, "margin": settings.margin,
                "max_violation": settings.max_violation, "grad_clip": settings.grad_clip,
                "warmup_epochs": settings.warmup_epochs, "mask_same_image": settings.mask_same_image,
                "global_loss": settings.global_loss}
    return {key: value for key, value in explicit.items() if value is not None}


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, list[str]]:
    """Copy every tensor of `state` whose name and shape the model shares; the rest of the model keeps its fresh
    initialisation. Returns (tensors copied, sorted names of the model's submodules left fresh). This is T-EMDE as
    a drop-in replacement: a pretrained SAF/SGR keeps its encoders, alignment and head, and a new pooling (with
    the global similarity layer, when the pooled size changes) starts from scratch."""
    own = model.state_dict()
    kept = {name: tensor for name, tensor in state.items()
            if name in own and tuple(own[name].shape) == tuple(tensor.shape)}
    if not any(name.startswith(("image_encoder.", "text_encoder.")) for name in kept):
        raise CheckpointError("the --init checkpoint shares no encoder weights with the model being trained "
                              "(a different model size?)")
    model.load_state_dict(kept, strict=False)
    # A fresh pool is reported as a whole ("image_pool"), anything else by its module ("similarity.global_w").
    fresh = {name.split(".")[0] if name.startswith(("image_pool.", "caption_pool.")) else name.rsplit(".", 1)[0]
             for name in own if name not in kept}
    return len(kept), sorted(fresh)


def load_word_vectors(path: str, vocab, word_dim: int) -> torch.Tensor:
    """Embedding init `[len(vocab), word_dim]` from the packaged GloVe ("glove") or a GloVe-format text file;
    words it lacks keep a uniform(-0.1, 0.1) init (SGRAF's), drawn from the torch RNG so runs stay reproducible."""
    if path == "glove":
        from temde.data.word_vectors import GLOVE_DIM, glove_matrix

        if word_dim != GLOVE_DIM:
            raise DataError(f"--word-vectors glove gives {GLOVE_DIM}-d vectors, the model's word_dim is {word_dim}")
        matrix, _ = glove_matrix(vocab.idx2word, seed=int(torch.randint(0, 2**31 - 1, ()).item()))
        return torch.from_numpy(matrix)
    table = torch.empty(len(vocab), word_dim).uniform_(-0.1, 0.1)
    found = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                word, _, rest = line.rstrip("\n").partition(" ")
                index = vocab.word2idx.get(word)
                if index is None:
                    continue
                values = rest.split()
                if len(values) != word_dim:
                    raise DataError(f"{path}: line {number} has {len(values)} values, "
                                    f"the model's word_dim is {word_dim}")
                table[index] = torch.tensor([float(v) for v in values])
                found += 1
    except FileNotFoundError:
        raise DataError(f"{path}: word vector file not found") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a GloVe-format text file ({exc})") from None
    if found == 0:
        raise DataError(f"{path}: none of the {len(vocab)} vocabulary words has a vector there")
    return table


def _subset(split, n_images: int | None):
    return split if n_images is None else split.subset(n_images)


def _init_pools(model: nn.Module, split, vocab, batch_size: int, seed: int, device: torch.device) -> list[str]:
    """One batch of real data through the local encoders; pools offering `init_from_tokens` fit their
    hyperplane biases to its tokens (T-EMDE's DLSH medians)."""
    from temde.data import make_loader

    if not hasattr(model, "init_pools"):
        return []
    batch = next(iter(make_loader(split, vocab, batch_size, shuffle=True, seed=derived_seed(seed, 1 << 20))))
    batch = batch.to(device)
    keep = torch.as_tensor(np.unique(batch.image_ids.cpu().numpy(), return_index=True)[1], device=device)
    was_training = model.training
    model.eval()  # no dropout on the sample
    with torch.no_grad():
        img = model.encode_images(batch.images[keep], batch.image_mask[keep])
        cap = model.encode_captions(batch.tokens, batch.lengths)
        done = model.init_pools(img, cap)
    model.train(was_training)
    return done


def _set_temperature(model: nn.Module, value: float) -> None:
    for module in model.modules():
        if hasattr(module, "set_temperature"):
            module.set_temperature(value)


def _anneal(settings: TrainSettings, epochs: int, epoch: int) -> float | None:
    if settings.temperature_anneal is None:
        return None
    from temde.sketch.temde import default_temperature_schedule

    start, end = settings.temperature_anneal
    return default_temperature_schedule(start, end, epochs - 1, epoch)


def dev_metrics(model: nn.Module, split, vocab, device: torch.device, settings: TrainSettings,
                info: DistInfo = distributed.SINGLE) -> dict[str, float]:
    """R@K and rsum on a dev split. Under DDP each rank scores its share of the images (every rank encodes the
    whole split, cheap next to scoring) and every rank gets the same full matrix, hence the same metrics."""
    from temde.scoring import encode_split, score_matrix

    img, cap = encode_split(model, split, vocab, settings.eval_batch_size, device)
    if not info.enabled:
        sims = score_matrix(model, img, cap, settings.image_block, settings.caption_block, device)
    else:
        rows = distributed.shard_rows(len(img), info)
        block = (score_matrix(model, img[rows], cap, settings.image_block, settings.caption_block, device)
                 if rows.stop > rows.start else np.zeros((0, len(cap)), dtype=np.float32))
        sims = distributed.gather_row_blocks(block, len(img), info, device)
    return evaluate(sims, split.layout)


# ---- the loop ------------------------------------------------------------------------------------------------

class MatchingObjective(nn.Module):
    """The training loss of one batch as a module (under DDP, the module DDP wraps, so its gradient hooks see
    the whole step): encode each modality once, score, VSE++ loss on the scores, plus `global_weight` times the
    same loss on the inner products of the L2-normalised global vectors (what a two-stage index ranks by; SAF/SGR
    compare globals through Linear((g_i - g_c)^2), which is not an inner product).

    Under DDP (`info.enabled`) the inputs are this rank's shard; captions, score rows and image globals are
    gathered so that the loss is the one of the whole global batch of `global_size` items (see distributed.py).
    """

    def __init__(self, model: nn.Module, margin: float, max_violation: bool, global_weight: float = 0.0,
                 info: DistInfo = distributed.SINGLE) -> None:
        super().__init__()
        self.model = model
        self.margin, self.max_violation, self.global_weight, self.info = margin, max_violation, global_weight, info

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                image_ids: torch.Tensor | None = None, global_size: int | None = None) -> torch.Tensor:
        img = self.model.encode_images(images, image_mask)
        cap = self.model.encode_captions(tokens, lengths)
        img_global = img.global_
        if self.info.enabled:
            if global_size is None:
                raise ValueError("global_size: required under DDP (the number of real items in the global batch)")
            # Gathered rows are in rank order, and shards are contiguous with padding only at the end, so the
            # first global_size rows are the global batch in its original order.
            cap = distributed.gather_encoded(cap)[:global_size]
            scores = distributed.gather_rows(self.model.score(img, cap).float())[:global_size]
            if self.global_weight:
                img_global = distributed.gather_rows(img.global_)[:global_size]
            if image_ids is not None:
                image_ids = distributed.gather_rows(image_ids)[:global_size]
        else:
            scores = self.model.score(img, cap)
        # The losses in float32: the hinge compares scores that differ by less than bfloat16 resolves.
        with torch.autocast(scores.device.type, enabled=False):
            loss = triplet_loss(scores.float(), self.margin, self.max_violation, image_ids)
            if self.global_weight:
                global_scores = img_global.float() @ cap.global_.float().t()
                loss = loss + self.global_weight * triplet_loss(global_scores, self.margin, self.max_violation,
                                                                image_ids)
        return loss


class _Stepper:
    """One optimisation step on a batch: the objective (autocast on CUDA), scaled backward, clip, Adam."""

    def __init__(self, objective: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 parameters: list[nn.Parameter], grad_clip: float | None, use_amp: bool, amp_dtype: torch.dtype,
                 mask_same_image: bool) -> None:
        self.objective, self.optimizer, self.scaler, self.parameters = objective, optimizer, scaler, parameters
        self.grad_clip, self.use_amp, self.amp_dtype, self.mask_same_image = grad_clip, use_amp, amp_dtype, \
            mask_same_image

    def __call__(self, batch, global_size: int | None = None) -> torch.Tensor:
        with torch.autocast(batch.images.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            loss = self.objective(batch.images, batch.image_mask, batch.tokens, batch.lengths,
                                  batch.image_ids if self.mask_same_image else None, global_size)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip and self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


class _NoLogger:
    """What ranks other than 0 log to: nothing."""

    def log_step(self, *args: Any) -> None: ...
    def log_epoch(self, *args: Any) -> None: ...
    def truncate(self, *args: Any) -> None: ...
    def close(self) -> None: ...


# ---- the run folder: a new run, a run continued (resume) or started over (force) ----------------------------

RUN_FILES = ("last.pt", "best.pt", "config.json", "epochs.csv", "steps.csv")
# Settings a resumed run keeps from the run itself. Left out (None) they are the run's; given, they must equal it.
RESUMED_IF_GIVEN = ("init", "word_vectors", "train_subset", "dev_subset", "max_steps_per_epoch", "temperature_anneal")
# Settings that always have a value (the CLI's defaults): a resume must give the run's.
RESUMED_ALWAYS = ("model", "seed", "dev_split")
_FLAG_NAMES = {"learning_rate": "--lr", "max_violation": "--hardest-negatives/--all-negatives", "lr_decay": "lr_decay"}


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the progress bar is closed. `saved_epoch`: the epoch last.pt holds (0: none
    was saved), so the caller can say how to continue."""

    def __init__(self, run_dir: Path, saved_epoch: int, epochs: int) -> None:
        last = run_dir / "last.pt"
        super().__init__(f"{last} holds epoch {saved_epoch} of {epochs}" if saved_epoch else
                         f"no epoch was saved in {run_dir}")
        self.run_dir, self.saved_epoch, self.epochs = run_dir, saved_epoch, epochs


def _flag(key: str) -> str:
    return _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # checkpoints store tuples as lists


def _older_run(folder: Path) -> dict | None:
    """A run folder written before output records existed: its files say so (its settings live in last.pt)."""
    return {} if any((folder / name).exists() for name in RUN_FILES) else None


def open_run_folder(settings: TrainSettings, write: bool = True) -> dict | None:
    """Apply the output-folder policy (temde.outputs) to `settings.out`: a folder holding something else is
    refused; a run already there needs resume (returns its last.pt) or force (its checkpoints are removed, so a
    kill cannot leave the old run's best.pt beside the new run's logs). `write`: rank 0 of a distributed run."""
    run_dir = Path(settings.out)
    last = run_dir / "last.pt"
    if write:  # rank 0 only: the others could see its record half-written, and its refusal ends the job anyway
        inspect_folder(run_dir, "train", _older_run)
    checkpoint = None
    if settings.resume:
        if not last.is_file():
            why = "the run saved no epoch yet" if run_dir.is_dir() and any(run_dir.iterdir()) else "no run there"
            raise CheckpointError(f"--resume: {last} not found ({why}); run without --resume to start the run")
        checkpoint = load_checkpoint(last)
    elif last.exists() and not settings.force:
        raise OutputFolderError(f"{run_dir}: holds a run (last.pt); pass --resume to continue it, --force to start it "
                                f"over, or choose another --out")
    if write:
        if settings.force:
            for name in ("last.pt", "best.pt"):
                (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_record(run_dir, "train", settings.to_dict())
    return checkpoint


def resumed_settings(settings: TrainSettings, checkpoint: dict) -> tuple[TrainSettings, list[str]]:
    """The settings a resume runs with (left-out ones taken from the run) and the given ones that contradict it."""
    run = checkpoint["extra"].get("settings", {})
    conflicts, taken = [], {}
    for key in RESUMED_IF_GIVEN + RESUMED_ALWAYS:
        if key not in run:  # a checkpoint from before the setting existed
            continue
        mine = _plain(getattr(settings, key))
        if mine is None and key in RESUMED_IF_GIVEN:
            value = run[key]
            taken[key] = tuple(value) if key == "temperature_anneal" and value is not None else value
        elif mine != run[key]:
            conflicts.append(f"{_flag(key)} {mine} (the run: {run[key]})")
    return dataclasses.replace(settings, **taken), conflicts


def resumed_hyper(settings: TrainSettings, checkpoint: dict, config: dict, conflicts: list[str],
                  verbose: bool = True) -> dict[str, Any]:
    """The run's training hyper-parameters, checked against the ones given again. Only --epochs may change: a
    finished run can be extended (or an unfinished one shortened, down to the epochs it has trained); any other
    difference, here or in `conflicts`, refuses the resume in one line naming every setting involved."""
    extra = checkpoint["extra"]
    run_hyper, done = dict(extra["hyper"]), extra["epoch"]
    # Runs from before the global loss was a preset setting kept its weight among their settings.
    run_hyper.setdefault("global_loss", extra.get("settings", {}).get("global_loss") or 0.0)
    for key, value in explicit_hyper(settings).items():
        if key != "epochs" and run_hyper.get(key) != value:
            conflicts.append(f"{_flag(key)} {value} (the run: {run_hyper.get(key)})")
    epochs = settings.epochs if settings.epochs is not None else run_hyper["epochs"]
    if epochs < done:
        conflicts.append(f"--epochs {epochs} (the run has trained {done} already)")
    elif epochs != run_hyper["epochs"] and settings.temperature_anneal is not None:
        conflicts.append(f"--epochs {epochs} (the run: {run_hyper['epochs']}; its temperature schedule spans them)")
    run_config = checkpoint["config"]
    for key in sorted(set(run_config) | set(config)):
        if run_config.get(key) != config.get(key):
            conflicts.append(f"model {key} {config.get(key)} (the run: {run_config.get(key)})")
    if conflicts:
        raise CheckpointError(f"{settings.out}: --resume with settings the run was not trained with: "
                              f"{'; '.join(conflicts)}; resume with the run's settings, or pass --force instead of "
                              f"--resume to start over with these")
    if verbose and epochs != run_hyper["epochs"]:
        print(f"resuming {settings.out} after epoch {done}: the run now ends at epoch {epochs} instead of "
              f"{run_hyper['epochs']} (--epochs)")
    elif verbose and done >= epochs:
        print(f"{settings.out}: the run is complete ({done} of {epochs} epochs); nothing to train")
    return {**run_hyper, "epochs": epochs}


def train(settings: TrainSettings) -> dict[str, Any]:
    """Train one model; returns best_rsum, best_epoch, history (one dict per epoch), train_seconds, paths,
    rank and world_size. Under torchrun (WORLD_SIZE > 1) every process calls this; see distributed.py."""
    settings.validate()
    info, device = distributed.setup(settings.device)
    try:
        result = _train(settings, info, device)
    except BaseException:
        distributed.teardown(info, clean=False)  # no barrier: the other ranks may never reach one
        raise
    distributed.teardown(info, clean=True)
    return result


def _train(settings: TrainSettings, info: DistInfo, device: torch.device) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from temde.data import Vocabulary, load_split, load_vocab, make_loader
    from temde.models import RetrievalModel

    run_dir = Path(settings.out)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    checkpoint = open_run_folder(settings, write=info.is_main)
    conflicts: list[str] = []  # settings of a --resume that contradict the run's, all named in one refusal
    if checkpoint is not None:
        settings, conflicts = resumed_settings(settings, checkpoint)

    # One process reading every feature to check it is finite is enough (a failure there ends the whole job).
    validate = settings.validate_data and info.is_main
    full_train = load_split(settings.data, "train", validate=validate)
    train_split = _subset(full_train, settings.train_subset)
    dev_split = _subset(load_split(settings.data, settings.dev_split, validate=validate), settings.dev_subset)
    # A resume takes its weights, vocabulary and config from last.pt; --init only starts a new run.
    init = load_checkpoint(settings.init) if settings.init and checkpoint is None else None
    if checkpoint is not None:
        vocab = restore_vocab(checkpoint)
    elif init is not None:  # the word ids the pretrained embedding was trained with
        vocab = restore_vocab(init)
    elif (Path(settings.data) / "vocab.json").is_file():
        vocab = load_vocab(settings.data)
    else:  # built from the train captions only; the checkpoints carry it
        vocab = Vocabulary.build(full_train.captions)

    img_dim = train_split.images.shape[2]
    if dev_split.images.shape[2] != img_dim:
        raise DataError(f"{dev_split.image_path}: features have {dev_split.images.shape[2]} dims, train has {img_dim}")
    base_config = checkpoint["config"] if checkpoint is not None else init["config"] if init is not None else None
    config, hyper = resolve_model(settings, img_dim, len(vocab), base_config)
    if checkpoint is not None:
        hyper = resumed_hyper(settings, checkpoint, config.to_dict(), conflicts, info.is_main)
    if hyper["batch_size"] < info.world_size:
        raise TemdeError(f"batch size {hyper['batch_size']} is smaller than the {info.world_size} processes; "
                         "--batch-size is the global batch, split across them")

    # Every rank builds the same model from the same seed (DDP also broadcasts rank 0's weights).
    seed_everything(settings.seed)
    word_vectors = (load_word_vectors(settings.word_vectors, vocab, config.word_dim)
                    if settings.word_vectors and checkpoint is None else None)
    model = RetrievalModel(config, word_vectors=word_vectors).to(device)
    pretrained_pools = False  # pools taken over from --init keep their trained hyperplanes
    if init is not None and checkpoint is None:
        kept, fresh = load_pretrained(model, init["model"])
        pretrained_pools = "image_pool" not in fresh and "caption_pool" not in fresh
        if info.is_main:  # printed even when quiet: which weights were kept is part of the result
            print(f"initialised from {settings.init}: {kept} tensors kept"
                  + (f"; trained from scratch: {', '.join(fresh)}" if fresh else ""))
    pools_initialised = None
    # Before the optimizer sees the parameters; after --init, so a fresh pool fits itself to pretrained tokens.
    if checkpoint is None and settings.init_pools and not pretrained_pools:
        pools_initialised = _init_pools(model, train_split, vocab, hyper["batch_size"], settings.seed, device)
    if info.enabled and device.type == "cuda":
        # Batch statistics over the global batch, as one process would see them (gloo has no SyncBatchNorm).
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    use_amp = settings.amp and device.type == "cuda"
    bf16 = settings.amp_dtype == "bfloat16" and (not use_amp or torch.cuda.is_bf16_supported())
    amp_dtype = torch.bfloat16 if bf16 else torch.float16
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=hyper["learning_rate"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hyper["lr_update"], gamma=hyper["lr_decay"])
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    epochs = hyper["epochs"]
    state = {"epoch": 0, "step": 0, "best_rsum": -math.inf, "best_epoch": 0, "history": [], "train_seconds": 0.0}
    logger = RunLogger(run_dir, tensorboard=settings.tensorboard) if info.is_main else _NoLogger()
    if checkpoint is None:
        logger.truncate(0)
    else:
        model.load_state_dict(checkpoint["model"])
        extra = checkpoint["extra"]
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        if extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
        for key in ("epoch", "step", "best_rsum", "best_epoch", "history", "train_seconds"):
            state[key] = extra[key]
        set_rng_state(extra["rng"])
        logger.truncate(state["epoch"])  # rows after the checkpoint are redone
    if info.is_main:
        _write_run_config(run_dir, settings, config, hyper)

    matching = MatchingObjective(model, hyper["margin"], hyper["max_violation"], hyper["global_loss"], info)
    objective: nn.Module = matching
    if info.enabled:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    step = _Stepper(objective, optimizer, scaler, parameters, hyper["grad_clip"], use_amp, amp_dtype,
                    hyper["mask_same_image"])
    progress = settings.progress and info.is_main
    # What random scores would get on this dev split: a dev rsum near it means nothing was learned (yet).
    chance = chance_rsum(dev_split.n_images, dev_split.layout)

    def checkpoint_extra(full: bool) -> dict[str, Any]:
        extra = {key: state[key] for key in ("epoch", "step", "best_rsum", "best_epoch", "train_seconds")}
        extra.update(settings=settings.to_dict(), hyper=hyper, dev_metrics=state["history"][-1],
                     world_size=info.world_size)
        if full:  # what a resume needs; best.pt is for evaluation and stays small
            extra.update(history=state["history"], optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=rng_state())
        return extra

    saved_epoch, bar = state["epoch"], None  # the epoch last.pt holds; the progress bar an interrupt must close
    try:
        for epoch in range(state["epoch"], epochs):
            temperature = _anneal(settings, epochs, epoch)
            if temperature is not None:
                _set_temperature(model, temperature)
            matching.max_violation = hyper["max_violation"] and epoch >= hyper.get("warmup_epochs", 0)
            if settings.on_epoch_start is not None:
                settings.on_epoch_start(model, epoch)
            if info.enabled:
                # Each rank its own dropout stream, from (seed, epoch, rank) alone: a resume redraws it exactly.
                torch.manual_seed(derived_seed(settings.seed, epoch, 1 << 21, info.rank))
                loader = distributed.make_shard_loader(train_split, vocab, hyper["batch_size"],
                                                       derived_seed(settings.seed, epoch), info, settings.workers,
                                                       pin_memory=device.type == "cuda")
                global_sizes = loader.batch_sampler.global_sizes()
            else:
                loader = make_loader(train_split, vocab, hyper["batch_size"], shuffle=True,
                                     seed=derived_seed(settings.seed, epoch), num_workers=settings.workers,
                                     pin_memory=device.type == "cuda")
                global_sizes = None
            steps = min(len(loader), settings.max_steps_per_epoch or len(loader))
            lr = optimizer.param_groups[0]["lr"]
            objective.train()
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            window_sum, window_steps = torch.zeros((), device=device), 0
            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
            for index, batch in zip(range(steps), loader):
                loss = step(batch.to(device, non_blocking=True), global_sizes[index] if global_sizes else None)
                state["step"] += 1
                loss_sum += loss
                window_sum += loss
                window_steps += 1
                bar.update(1)
                if window_steps == settings.log_every or index == steps - 1:
                    # The only host sync of the loop. Every rank holds the same loss (of the global batch), so
                    # they all take the same branch here.
                    mean_loss = float(window_sum) / window_steps
                    if not math.isfinite(mean_loss):
                        raise TemdeError(f"training diverged at step {state['step']} (loss {mean_loss})")
                    logger.log_step(state["step"], {"epoch": epoch + 1, "loss": mean_loss, "lr": lr})
                    bar.set_postfix(loss=f"{mean_loss:.3f}")
                    window_sum.zero_()
                    window_steps = 0
            bar.close()
            del loader  # its worker processes end here
            scheduler.step()
            train_seconds = time.perf_counter() - started
            state["train_seconds"] += train_seconds

            eval_started = time.perf_counter()
            if info.enabled:  # per-process BatchNorm statistics (CPU): evaluate, and save, rank 0's
                distributed.broadcast_buffers(model)
            metrics = dev_metrics(model, dev_split, vocab, device, settings, info)
            record = {"epoch": epoch + 1, "train_loss": float(loss_sum) / max(steps, 1), "lr": lr,
                      **({"temperature": temperature} if temperature is not None else {}),
                      **metrics, "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - eval_started}
            state["history"].append(record)
            state["epoch"] = epoch + 1
            improved = metrics["rsum"] > state["best_rsum"]
            if improved:
                state["best_rsum"], state["best_epoch"] = metrics["rsum"], epoch + 1
                # best.pt before last.pt: a kill between the two never leaves last.pt claiming a best.pt that
                # does not exist yet.
                if info.is_main:
                    save_checkpoint(best_path, model.state_dict(), config.to_dict(), vocab.to_json(),
                                    checkpoint_extra(False))
            # Logged before last.pt is written: a kill in between redoes this epoch and its rows are replaced.
            logger.log_epoch(epoch + 1, {key: value for key, value in record.items() if key != "epoch"})
            if info.is_main:
                save_checkpoint(last_path, model.state_dict(), config.to_dict(), vocab.to_json(),
                                checkpoint_extra(True))
            saved_epoch = epoch + 1
            if progress:
                tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {record['train_loss']:.4f}  dev rsum "
                           f"{metrics['rsum']:.1f} (chance {chance:.1f})  "
                           f"(best {state['best_rsum']:.1f} at epoch {state['best_epoch']})")
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()  # the bar's line is cleared, so what the caller prints next starts on a line of its own
        raise TrainingInterrupted(run_dir, saved_epoch, epochs) from None
    finally:
        logger.close()

    return {
        "run_dir": str(run_dir), "best_rsum": state["best_rsum"], "best_epoch": state["best_epoch"],
        "history": state["history"], "train_seconds": state["train_seconds"], "epochs": state["epoch"],
        "steps": state["step"], "best_checkpoint": str(best_path), "last_checkpoint": str(last_path),
        "pools_initialised": pools_initialised, "rank": info.rank, "world_size": info.world_size,
        "chance_rsum": chance,
    }


def _write_run_config(run_dir: Path, settings: TrainSettings, config, hyper: dict[str, Any]) -> None:
    """config.json: what this run is, for people and scripts (checkpoints carry the same)."""
    from temde.data.vocab import atomic_write

    with atomic_write(run_dir / "config.json") as handle:
        json.dump({"model": config.to_dict(), "train": hyper, "settings": settings.to_dict()}, handle, indent=2,
                  default=str)
