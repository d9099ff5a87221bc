"""`temde.emde`: classic EMDE under its short name (the implementation lives in temde.sketch.emde)."""
from temde.sketch.emde import DLSH, bit_weights, l1_normalize_rows, l2_normalize_rows, score, sketch

__all__ = ["DLSH", "bit_weights", "sketch", "score", "l1_normalize_rows", "l2_normalize_rows"]
