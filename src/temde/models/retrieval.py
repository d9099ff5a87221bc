"""RetrievalModel: a host (SGRAF's SAF or SGR, or the VSE dual encoder) with a swappable global pooling (SGRAF's
self-attention, T-EMDE, GPO, ...)."""
from __future__ import annotations

import torch
from torch import nn

from temde.models.alignment import SimilarityEncoder
from temde.models.config import ConfigError, ModelConfig
from temde.models.encoders import Encoded, ImageEncoder, TextEncoder, l2norm
from temde.models.heads import make_head
from temde.models.vse import VSEImageEncoder, cosine_scores
from temde.pooling import make_pool


def _build_pool(config: ModelConfig, images: bool) -> nn.Module:
    options = dict(config.pool_options)
    if config.pooling == "attention":
        options["batchnorm"] = images  # SGRAF: VisualSA has BatchNorm, TextSA has not
        if images and config.image_norm_slots is not None:
            options["norm_slots"] = config.image_norm_slots
    return make_pool(config.pooling, config.embed_size, **options)


class RetrievalModel(nn.Module):
    """Image-text matching model; `forward(images, image_mask, tokens, lengths)` -> `[B_img, B_cap]` scores.

    The config's `head` names the host. "saf" / "sgr" (SGRAF): the head's score of SCAN's local alignment plus the
    global node, plus `config.global_score` times the cosine of the two global vectors when that is set. "vse"
    (VSE-infinity's dual encoder): regions through FC + MLP residual, and the score is the cosine of the two global
    vectors alone, one matrix product; there is no `similarity` or `head` module. Every host encodes the same way
    (local tokens, mask, pooled global), so training, evaluation, checkpoints and the index treat them alike.

    Evaluation encodes each modality once (`encode_images`, `encode_captions`) and scores blocks of pairs with
    `score`, which handles every pair of a block in batched tensor code.
    """

    def __init__(self, config: ModelConfig, word_vectors: torch.Tensor | None = None):
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("vocab_size must be set to build a model (the size of the vocabulary)")
        self.config = config
        if config.head == "vse":
            self.image_encoder = VSEImageEncoder(config.img_dim, config.embed_size, normalize=config.img_norm)
        else:
            self.image_encoder = ImageEncoder(config.img_dim, config.embed_size, normalize=config.img_norm)
        self.text_encoder = TextEncoder(config.vocab_size, config.word_dim, config.embed_size, config.gru_layers,
                                        config.bidirectional, config.word_dropout, normalize=config.txt_norm)
        self.image_pool = _build_pool(config, images=True)
        # A shared pool is registered once (checkpoint formats such as safetensors refuse aliased tensors).
        self.caption_pool = None if config.shared_pool else _build_pool(config, images=False)
        if self.caption_pool is not None and self.caption_pool.out_dim != self.image_pool.out_dim:
            raise ConfigError(f"image and caption pools disagree on out_dim "
                              f"({self.image_pool.out_dim} vs {self.caption_pool.out_dim})")
        self.similarity: SimilarityEncoder | None = None
        self.head: nn.Module | None = None
        if config.head != "vse":  # the dual encoder scores the globals alone: no alignment, no head
            self.similarity = SimilarityEncoder(config.embed_size, self.image_pool.out_dim, config.sim_dim,
                                                config.lambda_softmax)
            self.head = make_head(config.head, config.sim_dim, config.sgr_steps)
        if word_vectors is not None:
            self.init_word_vectors(word_vectors)

    @property
    def pools(self) -> tuple[nn.Module, nn.Module]:
        """(image pool, caption pool); the same module twice when the config shares it."""
        return self.image_pool, self.caption_pool if self.caption_pool is not None else self.image_pool

    def init_word_vectors(self, vectors: torch.Tensor) -> None:
        """Initialise the word embedding from pretrained vectors `[vocab_size, word_dim]`."""
        self.text_encoder.init_word_vectors(vectors)

    def encode_images(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> Encoded:
        local, mask = self.image_encoder(images, image_mask)
        return Encoded(local, mask, self.pools[0](local, mask))

    def encode_captions(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Encoded:
        local, mask = self.text_encoder(tokens, lengths)
        return Encoded(local, mask, self.pools[1](local, mask))

    def score(self, img: Encoded, cap: Encoded) -> torch.Tensor:
        """Scores `[n_img, n_cap]` of every pair. SAF/SGR: memory grows as n_img * n_cap * words * embed_size;
        vse: the cosine matrix of the globals (the locals are not read)."""
        if self.head is None:
            return cosine_scores(img.global_, cap.global_)
        nodes, node_mask = self.similarity(img, cap)
        scores = self.head(nodes, node_mask)
        if self.config.global_score:
            scores = scores + self.config.global_score * (l2norm(img.global_) @ l2norm(cap.global_).t())
        return scores

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor | None, tokens: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode_images(images, image_mask), self.encode_captions(tokens, lengths))

    @torch.no_grad()
    def init_pools(self, img: Encoded, cap: Encoded) -> list[str]:
        """Data-driven initialisation of pools that offer `init_from_tokens` (T-EMDE: DLSH median biases) from
        the real local tokens of a sample; a shared pool sees both modalities. Returns the pools initialised."""
        image_pool, caption_pool = self.pools
        done = []
        if caption_pool is image_pool:
            if hasattr(image_pool, "init_from_tokens"):
                image_pool.init_from_tokens(torch.cat([img.local[img.mask], cap.local[cap.mask]]))
                done.append("shared")
            return done
        for name, pool, enc in (("image", image_pool, img), ("caption", caption_pool, cap)):
            if hasattr(pool, "init_from_tokens"):
                pool.init_from_tokens(enc.local[enc.mask])
                done.append(name)
        return done
