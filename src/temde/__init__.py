"""T-EMDE: trainable EMDE sketches as drop-in global pooling for cross-modal retrieval.

Names are imported on first use (PEP 562), so `temde --help` and the CLI's start-up do not pay for torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DLSH": "temde.sketch", "TEMDE": "temde.sketch", "sketch": "temde.sketch", "score": "temde.sketch",
    "make_pool": "temde.pooling", "list_pools": "temde.pooling",
    "create_model": "temde.models", "list_models": "temde.models", "load_preset": "temde.models",
    "evaluate": "temde.evaluation", "evaluate_folds": "temde.evaluation",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'temde' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
