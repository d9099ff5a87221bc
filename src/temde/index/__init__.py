"""Two-stage retrieval on FAISS: cosine of the pooled global vectors short-lists, the full model re-ranks.

Heavy parts (faiss, torch) load with the submodules: `temde.index.store` (FAISS wrapper, index directories),
`temde.index.two_stage` (evaluation, `build_index`, `Searcher`), `temde.index.html` (result pages).
"""
from temde.index.store import (KINDS, IndexDirectory, IndexOptions, VectorIndex, load_index_directory,
                               model_fingerprint, read_meta, save_index_directory)
from temde.index.two_stage import (Hit, QueryError, Searcher, TwoStageScores, build_index, encode_globals,
                                   evaluate_two_stage, global_similarities, two_stage_evaluate, two_stage_scores)

__all__ = [
    "KINDS", "IndexDirectory", "IndexOptions", "VectorIndex", "load_index_directory", "model_fingerprint",
    "read_meta", "save_index_directory", "Hit", "QueryError", "Searcher", "TwoStageScores", "build_index",
    "encode_globals", "evaluate_two_stage", "global_similarities", "two_stage_evaluate", "two_stage_scores",
]
