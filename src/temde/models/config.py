"""ModelConfig: every architectural choice of a retrieval model, as a plain dataclass that round-trips through a
dict (checkpoints and presets carry it as JSON)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from temde.errors import TemdeError

# The hosts: SGRAF's two similarity heads over SCAN alignment, and the dual encoder (score = cosine of the pooled
# vectors, VSE-infinity's image side). One field names the host, so checkpoints of every host rebuild alike.
HEADS = ("saf", "sgr", "vse")


class ConfigError(TemdeError, ValueError):
    """A model configuration or preset is invalid (unknown key, bad value). Both a TemdeError (the CLI prints it
    as one line) and a ValueError (library callers passing bad arguments)."""


@dataclass
class ModelConfig:
    """Architecture of a retrieval model: SGRAF's SAF/SGR or the VSE dual encoder (defaults: SGRAF's published
    Flickr30K/COCO settings)."""

    # The host: "saf" (similarity attention filtration) or "sgr" (similarity graph reasoning) over SCAN alignment,
    # or "vse" (dual encoder: score = cosine of the two pooled vectors; sim_dim, lambda_softmax, sgr_steps unused)
    head: str = "sgr"
    pooling: str = "attention"  # global pooling kind, see temde.pooling.list_pools()
    pool_options: dict[str, Any] = field(default_factory=dict)  # extra make_pool options for that kind
    shared_pool: bool = False  # one pool module for both modalities (not possible for "attention": BN on images)
    img_dim: int = 2048  # features per region of the precomputed image features
    embed_size: int = 1024  # joint embedding size of the region and word vectors
    sim_dim: int = 256  # size of each similarity vector (graph node)
    word_dim: int = 300  # word embedding size
    vocab_size: int | None = None  # set from the vocabulary when the model is built
    gru_layers: int = 1
    bidirectional: bool = True  # SGRAF: BiGRU, the two directions averaged
    word_dropout: float = 0.4  # dropout on the word embeddings
    lambda_softmax: float = 9.0  # temperature of SCAN's text-to-image attention softmax
    sgr_steps: int = 3  # graph reasoning steps of the SGR head
    img_norm: bool = True  # L2-normalise each region embedding (SGRAF's default; --no_imgnorm turns it off)
    txt_norm: bool = True  # L2-normalise each word embedding
    # Weight of the cosine of the two global vectors added to the head's score (0 = SGRAF's score). The head sees
    # the globals only as one similarity node among a caption's word nodes; this term puts the pooled vectors
    # straight into the ranking (the dual-encoder score of the same model).
    global_score: float = 0.0
    # BatchNorm of the image attention pool's locals: None = per feature over the real regions (any region count,
    # padding masked); R = SGRAF's BatchNorm1d(R), one statistic per region slot (exact SGRAF; BUTD: 36).
    image_norm_slots: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        # Imported here: pooling pulls in torch, and a config should be inspectable without building anything.
        from temde.pooling import list_pools

        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        if self.pooling not in list_pools():
            raise ConfigError(f"pooling must be one of {list_pools()}, got {self.pooling!r}")
        if not isinstance(self.pool_options, dict):
            raise ConfigError(f"pool_options must be a dict, got {type(self.pool_options).__name__}")
        for key in ("batchnorm", "norm_slots"):
            if key in self.pool_options:
                raise ConfigError(f"pool_options must not set {key!r}: images get BatchNorm, captions do not (as in "
                                  "SGRAF); image_norm_slots selects its form")
        if self.shared_pool and self.pooling == "attention":
            raise ConfigError("shared_pool is not possible with pooling 'attention' (its image pool has BatchNorm)")
        for name in ("img_dim", "embed_size", "sim_dim", "word_dim", "gru_layers", "sgr_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.image_norm_slots is not None and (not isinstance(self.image_norm_slots, int)
                                                  or isinstance(self.image_norm_slots, bool)
                                                  or self.image_norm_slots < 1):
            raise ConfigError(f"image_norm_slots must be a positive integer or None, got {self.image_norm_slots!r}")
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or self.vocab_size < 1):
            raise ConfigError(f"vocab_size must be a positive integer or None, got {self.vocab_size!r}")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ConfigError(f"word_dropout must be in [0, 1), got {self.word_dropout!r}")
        if isinstance(self.global_score, bool) or not isinstance(self.global_score, (int, float)) \
                or not self.global_score >= 0:
            raise ConfigError(f"global_score must be a number >= 0, got {self.global_score!r}")
        if self.head == "vse" and self.global_score:
            raise ConfigError("global_score must be 0 for head 'vse': its score already is the cosine of the globals")
        if self.lambda_softmax <= 0:
            raise ConfigError(f"lambda_softmax must be > 0, got {self.lambda_softmax!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`; an unknown key is a ConfigError naming it (a typo must not be silently ignored)."""
        known = set(cls.field_names())
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown model config key {key!r} (known: {', '.join(sorted(known))})")
        values = dict(values)
        if "pool_options" in values:
            values["pool_options"] = dict(values["pool_options"])
        return cls(**values)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated like from_dict)."""
        values = self.to_dict()
        values.update(changes)
        return ModelConfig.from_dict(values)
