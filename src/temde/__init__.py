"""T-EMDE: trainable EMDE sketches as drop-in global pooling for cross-modal retrieval."""
from temde.sketch import DLSH, TEMDE, score, sketch
from temde.pooling import list_pools, make_pool

__version__ = "0.1.0"

__all__ = ["DLSH", "TEMDE", "sketch", "score", "make_pool", "list_pools", "__version__"]
