"""Import the SGRAF authors' checkpoints (Paranioar/SGRAF) as temde models.

SGRAF's `train.py` saves `torch.save({"epoch", "model": [img_enc, txt_enc, sim_enc state dicts], "best_rsum",
"opt": argparse.Namespace, "Eiters"})`; the released `model_best.pth.tar` files are in that format. The file is
read with `torch.load(weights_only=True)` and an allow-list of one class, argparse.Namespace (the `opt`), so a
crafted file cannot run code: anything else it would need to unpickle is refused.

The sizes and the head (SAF / SGR) come from `opt`; the weights map one to one onto a RetrievalModel with SGRAF's
attention pooling and its per-region-slot BatchNorm (`image_norm_slots`), so the imported model scores exactly as
SGRAF's `evaluation.py` does.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from temde.errors import CheckpointError
from temde.models.config import ModelConfig

# SGRAF's module names (model.py) -> this package's, for each of the three state dicts it saves.
_IMAGE_KEYS = {r"fc\.(weight|bias)": r"image_encoder.fc.\1"}
_TEXT_KEYS = {
    r"embed\.weight": "text_encoder.embed.weight",
    r"cap_rnn\.((weight|bias)_(ih|hh)_l\d+(_reverse)?)": r"text_encoder.rnn.\1",
}
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_SIMILARITY_KEYS = {
    r"v_global_w\.embedding_local\.0\.(weight|bias)": r"image_pool.local_linear.\1",
    rf"v_global_w\.embedding_local\.1\.{_BN}": r"image_pool.local_norm.norm.\1",
    r"v_global_w\.embedding_global\.0\.(weight|bias)": r"image_pool.global_linear.\1",
    rf"v_global_w\.embedding_global\.1\.{_BN}": r"image_pool.global_norm.\1",
    r"v_global_w\.embedding_common\.0\.(weight|bias)": r"image_pool.score.\1",
    r"t_global_w\.embedding_local\.0\.(weight|bias)": r"caption_pool.local_linear.\1",
    r"t_global_w\.embedding_global\.0\.(weight|bias)": r"caption_pool.global_linear.\1",
    r"t_global_w\.embedding_common\.0\.(weight|bias)": r"caption_pool.score.\1",
    r"sim_tranloc_w\.(weight|bias)": r"similarity.local_w.\1",
    r"sim_tranglo_w\.(weight|bias)": r"similarity.global_w.\1",
    r"sim_eval_w\.(weight|bias)": r"head.out.\1",
    r"SGR_module\.(\d+)\.graph_query_w\.(weight|bias)": r"head.steps.\1.query.\2",
    r"SGR_module\.(\d+)\.graph_key_w\.(weight|bias)": r"head.steps.\1.key.\2",
    r"SGR_module\.(\d+)\.sim_graph_w\.(weight|bias)": r"head.steps.\1.update.\2",
    r"SAF_module\.attn_sim_w\.(weight|bias)": r"head.gate.\1",
    rf"SAF_module\.bn\.{_BN}": r"head.bn.\1",
}
_PARTS = (("img_enc", _IMAGE_KEYS), ("txt_enc", _TEXT_KEYS), ("sim_enc", _SIMILARITY_KEYS))
# The optimisation settings of `opt` that a fine-tuning run may want to know (recorded, not used to score).
_HYPER = {"num_epochs": "epochs", "lr_update": "lr_update", "learning_rate": "learning_rate",
          "batch_size": "batch_size", "grad_clip": "grad_clip", "margin": "margin", "max_violation": "max_violation"}


def read_sgraf_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded without executing code; any problem is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and allow-list errors all mean "not a checkpoint we will read"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: refused or unreadable as an SGRAF checkpoint "
                              f"({type(exc).__name__}: {reason})") from None
    if not isinstance(payload, dict) or "model" not in payload or "opt" not in payload:
        raise CheckpointError(f"{path}: not an SGRAF checkpoint (expected a dict with 'model' and 'opt')")
    parts = payload["model"]
    if not isinstance(parts, (list, tuple)) or len(parts) != 3 or not all(isinstance(p, dict) for p in parts):
        raise CheckpointError(f"{path}: 'model' must be SGRAF's [img_enc, txt_enc, sim_enc] state dicts")
    if not isinstance(payload["opt"], argparse.Namespace):
        raise CheckpointError(f"{path}: 'opt' must be SGRAF's argparse.Namespace, got "
                              f"{type(payload['opt']).__name__}")
    return payload


def convert_state(parts: list[dict[str, torch.Tensor]], path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """SGRAF's three state dicts -> one RetrievalModel state dict (every key mapped, none left over)."""
    state: dict[str, torch.Tensor] = {}
    for (part, table), tensors in zip(_PARTS, parts):
        patterns = [(re.compile(pattern), target) for pattern, target in table.items()]
        for name, tensor in tensors.items():
            bare = name[len("module."):] if name.startswith("module.") else name  # saved from DataParallel
            for pattern, target in patterns:
                if pattern.fullmatch(bare):
                    state[pattern.sub(target, bare)] = tensor
                    break
            else:
                raise CheckpointError(f"{path}: unexpected weight {part}.{name} (not in SGRAF's model.py)")
    return state


def _opt(opt: argparse.Namespace, name: str, path: str | Path) -> Any:
    if not hasattr(opt, name):
        raise CheckpointError(f"{path}: its opt has no {name!r} (not written by SGRAF's train.py?)")
    return getattr(opt, name)


def sgraf_config(opt: argparse.Namespace, state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> ModelConfig:
    """The ModelConfig of an SGRAF model: sizes and head from `opt`, the region-slot count from the weights."""
    module = str(_opt(opt, "module_name", path)).upper()
    if module not in ("SAF", "SGR"):
        raise CheckpointError(f"{path}: opt.module_name is {module!r}; SGRAF's models are SAF and SGR")
    slot_norm = state.get("image_pool.local_norm.norm.weight")
    if slot_norm is None:
        raise CheckpointError(f"{path}: no VisualSA BatchNorm weights (v_global_w.embedding_local.1)")
    embed = state.get("text_encoder.embed.weight")
    if embed is None:
        raise CheckpointError(f"{path}: no word embedding (txt_enc embed.weight)")
    return ModelConfig(
        head=module.lower(), pooling="attention", pool_options={},
        img_dim=int(_opt(opt, "img_dim", path)), embed_size=int(_opt(opt, "embed_size", path)),
        sim_dim=int(_opt(opt, "sim_dim", path)), word_dim=int(_opt(opt, "word_dim", path)),
        vocab_size=int(embed.shape[0]), gru_layers=int(_opt(opt, "num_layers", path)),
        bidirectional=bool(_opt(opt, "bi_gru", path)), word_dropout=0.4, lambda_softmax=9.0,
        sgr_steps=int(getattr(opt, "sgr_step", 3)), img_norm=not bool(getattr(opt, "no_imgnorm", False)),
        txt_norm=not bool(getattr(opt, "no_txtnorm", False)), global_score=0.0,
        image_norm_slots=int(slot_norm.shape[0]),
    )


def _plain(value: Any) -> Any:
    """An opt value as checkpoint-safe plain data (a temde checkpoint holds no foreign classes)."""
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def import_sgraf(checkpoint: str | Path, vocab_path: str | Path) -> dict[str, Any]:
    """Everything a temde checkpoint holds for an SGRAF checkpoint and its vocabulary json (SCAN format):
    `{"model", "config", "vocab", "extra"}`; the weights are checked to load into the model they describe."""
    from temde.data.vocab import Vocabulary
    from temde.models.retrieval import RetrievalModel

    payload = read_sgraf_checkpoint(checkpoint)
    state = convert_state(payload["model"], checkpoint)
    opt = payload["opt"]
    config = sgraf_config(opt, state, checkpoint)
    vocab = Vocabulary.load(vocab_path)
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"{vocab_path}: {len(vocab)} words, but {checkpoint} embeds {config.vocab_size} "
                              "(another data set's vocabulary?)")
    model = RetrievalModel(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{checkpoint}: weights do not fit the model its opt describes "
                              f"({' '.join(line.strip() for line in first[:2])})") from None
    hyper = {ours: _plain(getattr(opt, theirs)) for theirs, ours in _HYPER.items() if hasattr(opt, theirs)}
    extra = {
        "source": "sgraf", "source_checkpoint": str(checkpoint), "source_vocab": str(vocab_path),
        "epoch": _plain(payload.get("epoch")), "best_rsum": _plain(payload.get("best_rsum")),
        "Eiters": _plain(payload.get("Eiters")), "opt": {k: _plain(v) for k, v in sorted(vars(opt).items())},
        "hyper": hyper,
    }
    return {"model": model.state_dict(), "config": config.to_dict(), "vocab": vocab.to_json(), "extra": extra}
