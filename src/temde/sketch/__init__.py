"""The sketch core: classic EMDE (DLSH, sketch, score) and the trainable TEMDE module. Depends on torch only."""
from temde.sketch.emde import DLSH, l1_normalize_rows, l2_normalize_rows, score, sketch
from temde.sketch.temde import RELAXATIONS, TEMDE, code_signs

__all__ = ["DLSH", "TEMDE", "RELAXATIONS", "code_signs", "sketch", "score", "l1_normalize_rows", "l2_normalize_rows"]
