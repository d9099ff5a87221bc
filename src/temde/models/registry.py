"""Named model presets as data: one JSON file per preset in presets/, holding
`{"description": str, "model": {ModelConfig fields}, "train": {epochs, lr_update, learning_rate, ...},
"pool_defaults": {pooling: options}}`. `pool_defaults` (optional) is the preset's recipe for the other poolings:
`temde train --model saf-small --pooling temde` trains T-EMDE as the demo found best on that model.

A preset's pooling and its recipes are validated for every pooling they name."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from temde.models.config import ConfigError, ModelConfig

PRESET_DIR = Path(__file__).parent / "presets"
TRAIN_KEYS = ("epochs", "lr_update", "learning_rate", "batch_size", "grad_clip", "margin", "max_violation",
              "lr_decay", "warmup_epochs", "mask_same_image", "global_loss")


def list_models() -> list[str]:
    """Names of the presets, sorted."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset's dict (description, model, train); its model part is validated as a ModelConfig."""
    path = PRESET_DIR / f"{name}.json"
    if name not in list_models():
        raise ConfigError(f"unknown model preset {name!r} (available: {', '.join(list_models())})")
    try:
        preset = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None
    if not {"description", "model", "train"} <= set(preset) <= {"description", "model", "train", "pool_defaults"}:
        raise ConfigError(f"{path}: expected keys description, model, train (and pool_defaults); got {sorted(preset)}")
    for pooling, options in preset.get("pool_defaults", {}).items():  # each recipe must build a valid config
        ModelConfig.from_dict({**preset["model"], "pooling": pooling, "pool_options": options})
    unknown = set(preset["train"]) - set(TRAIN_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown train key {sorted(unknown)[0]!r}")
    ModelConfig.from_dict(preset["model"])
    return preset


def pool_recipe(name: str, pooling: str) -> dict[str, Any]:
    """The options a preset trains `pooling` with: its own `pool_options` for its own pooling, its `pool_defaults`
    recipe for another (what the demo and the ablations found best there), else none (the pooling's defaults)."""
    preset = load_preset(name)
    if pooling == preset["model"]["pooling"]:
        return dict(preset["model"].get("pool_options", {}))
    return dict(preset.get("pool_defaults", {}).get(pooling, {}))


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a preset with some fields overridden. An unknown key is a ConfigError naming it.

    Overriding `pooling` without `pool_options` drops the preset's pool options (they belong to its pooling).
    """
    values = dict(load_preset(name)["model"])
    known = ModelConfig.field_names()
    for key in overrides:
        if key not in known:
            raise ConfigError(f"unknown model option {key!r} for preset {name!r} (known: {', '.join(known)})")
    if "pooling" in overrides and overrides["pooling"] != values.get("pooling") and "pool_options" not in overrides:
        values["pool_options"] = {}
    values.update(overrides)
    return ModelConfig.from_dict(values)


def create_model(name: str, word_vectors=None, **overrides: Any):
    """Build the RetrievalModel of a preset; `vocab_size` must be given (presets do not know the vocabulary)."""
    from temde.models.retrieval import RetrievalModel

    return RetrievalModel(preset_config(name, **overrides), word_vectors=word_vectors)
