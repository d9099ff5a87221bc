"""Checkpoints: written atomically, read back with `torch.load(weights_only=True)`.

A checkpoint is one dict of plain data (tensors, dicts, lists, tuples, str, numbers, bools, None):
  format, version   marks the file as ours
  model             the model's state_dict
  config            the model config (a dict: head, pooling, pool options, sizes ...) to rebuild the model
  vocab             the vocabulary dict {"word2idx", "idx2word", "idx", "tokenizer"} the model was trained with
  extra             anything else: epoch, optimizer/scheduler/scaler/RNG state, best dev rsum, history ...
Nothing executable is pickled, so loading a file from elsewhere cannot run code.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from temde.data.vocab import atomic_write
from temde.errors import CheckpointError

FORMAT = "temde-checkpoint"
VERSION = 1


def save_checkpoint(
    path: str | os.PathLike,
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    vocab: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint to a temporary file next to `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        # Tensors go to the CPU so a checkpoint written on a GPU loads anywhere.
        "model": {name: tensor.detach().cpu() for name, tensor in model_state.items()},
        "config": dict(config),
        "vocab": vocab,
        "extra": dict(extra or {}),
    }
    with atomic_write(path, binary=True) as handle:  # temporary file, fsync, rename: a kill leaves no half file
        torch.save(payload, handle)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, and harmless to skip there.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; any problem is a one-line CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip, pickle and unpickler-allow-list errors all mean "not a usable checkpoint"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a readable temde checkpoint ({type(exc).__name__}: {reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a temde checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r}, this code reads {VERSION}")
    for key in ("model", "config"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no '{key}' dict")
    return payload


# --- RNG state as plain data (numpy and python states are tuples holding arrays/large ints) -------------

def rng_state() -> dict[str, Any]:
    """The state of every random generator a training run draws from (torch CPU/CUDA, numpy, python)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state({
        "bit_generator": numpy_state["bit_generator"],
        "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
        "has_gauss": numpy_state["has_gauss"],
        "gauss": numpy_state["gauss"],
    })
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _python_state_to_plain(state: tuple) -> dict[str, Any]:
    version, internal, gauss_next = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def _python_state_from_plain(plain: dict[str, Any]) -> tuple:
    return plain["version"], tuple(int(v) for v in plain["internal"].tolist()), plain["gauss_next"]


# --- Rebuilding a model ------------------------------------------------------------------------------------

def restore_model(checkpoint: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the RetrievalModel a checkpoint was trained as, load its weights, put it in eval mode."""
    from temde.models.config import ConfigError, ModelConfig
    from temde.models.retrieval import RetrievalModel

    try:
        config = ModelConfig.from_dict(dict(checkpoint["config"]))
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint model config does not fit this code's ModelConfig: {exc}") from None
    model = RetrievalModel(config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint weights do not fit the model they describe: {first}") from None
    return model.to(device).eval()


def restore_vocab(checkpoint: dict[str, Any]):
    """The Vocabulary a checkpoint was trained with (its JSON dict: idx2word keys may be str or int).

    A checkpoint without "tokenizer" in its vocabulary predates the key, and every model trained then read its
    captions through the regex tokenizer (whatever vocabulary file it started from), so it gets "words": its
    queries and test captions are then split as its training captions were."""
    from temde.data.vocab import SPECIALS, Vocabulary

    vocab = checkpoint.get("vocab")
    if not isinstance(vocab, dict) or not isinstance(vocab.get("idx2word"), dict):
        raise CheckpointError("checkpoint carries no vocabulary")
    idx2word = {int(i): w for i, w in vocab["idx2word"].items()}
    words = [idx2word.get(i) for i in range(len(idx2word))]
    if tuple(words[:len(SPECIALS)]) != SPECIALS or any(not isinstance(w, str) for w in words):
        raise CheckpointError("checkpoint vocabulary is malformed (ids not contiguous or specials missing)")
    try:
        return Vocabulary(words[len(SPECIALS):], vocab.get("tokenizer", "words"))
    except ValueError as exc:  # an unknown tokenizer name, or a word listed twice
        raise CheckpointError(f"checkpoint vocabulary is malformed: {exc}") from None
