"""Sharded batched scoring against SGRAF's per-caption loop (the reference), and the encode helpers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from temde.data.precomp import PrecompSplit
from temde.data.vocab import Vocabulary
from temde.models import Encoded, create_model
from temde.pooling import list_pools
from temde.scoring import encode_captions, encode_images, encode_split, loop_score_matrix, score_matrix

POOL_OPTIONS = {"attention": {}, "temde": {"n_partitions": 3, "n_bits": 3}, "mha": {"heads": 2}, "mean": {}, "gpo": {}, "max": {}}
VOCAB = 40
LENGTHS = (3, 9, 2, 6, 5, 9, 4)


def tiny_model(head="sgr", pooling="attention", **overrides):
    options = dict(vocab_size=VOCAB, img_dim=12, embed_size=16, sim_dim=8, word_dim=6, pooling=pooling,
                   pool_options=POOL_OPTIONS[pooling])
    options.update(overrides)
    return create_model(f"{head}-small", **options)


def data(n_img=6, lengths=LENGTHS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n_img, 7, 12, generator=gen)
    lengths_t = torch.tensor(lengths)
    tokens = torch.randint(4, VOCAB, (len(lengths), max(lengths) + 2), generator=gen)  # 2 extra pad columns
    tokens[torch.arange(tokens.shape[1]) >= lengths_t[:, None]] = 0
    return images, tokens, lengths_t


def trained_like(model):
    """Move BatchNorm running statistics off their initial values, as training would."""
    images, tokens, lengths = data(seed=5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(images.to(next(model.parameters()).dtype), None, tokens, lengths)
    return model.eval()


@pytest.mark.parametrize("pooling", list_pools())
@pytest.mark.parametrize("head", ["saf", "sgr"])
def test_batched_scores_equal_the_per_caption_loop_reference(head, pooling):
    torch.manual_seed(0)
    model = trained_like(tiny_model(head, pooling).double())
    images, tokens, lengths = data()
    img, cap = encode_images(model, images), encode_captions(model, tokens, lengths, batch_size=3)
    batched = score_matrix(model, img, cap, image_block=4, caption_block=3, dtype=np.float64)
    reference = loop_score_matrix(model, img, cap, dtype=np.float64)
    assert batched.shape == (6, 7)
    assert np.ptp(reference) > 1e-4  # the scores actually differ between pairs
    np.testing.assert_allclose(batched, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pooling", ["attention", "temde"])
def test_global_score_adds_the_cosine_of_the_global_vectors(pooling):
    torch.manual_seed(0)
    model = trained_like(tiny_model("saf", pooling, global_score=0.7).double())
    images, tokens, lengths = data()
    img, cap = encode_images(model, images), encode_captions(model, tokens, lengths, batch_size=3)
    fused = score_matrix(model, img, cap, image_block=4, caption_block=3, dtype=np.float64)
    np.testing.assert_allclose(fused, loop_score_matrix(model, img, cap, dtype=np.float64), rtol=0, atol=1e-12)
    model.config.global_score = 0.0
    head_only = score_matrix(model, img, cap, dtype=np.float64)
    g_img, g_cap = img.global_.numpy(), cap.global_.numpy()
    cosine = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in g_cap] for a in g_img])
    assert np.ptp(cosine) > 1e-3
    # 1e-7: the model divides by ||g|| + 1e-8 (SGRAF's l2norm), the reference by ||g|| exactly
    np.testing.assert_allclose(fused, head_only + 0.7 * cosine, rtol=0, atol=1e-7)


def test_global_score_must_be_a_non_negative_number():
    from temde.models.config import ConfigError
    for bad in (-0.5, "1", True, float("nan")):
        with pytest.raises(ConfigError, match="global_score"):
            tiny_model("saf", "mean", global_score=bad)


def test_float32_scores_match_the_reference():
    torch.manual_seed(0)
    model = trained_like(tiny_model("saf", "temde"))
    images, tokens, lengths = data()
    img, cap = encode_images(model, images), encode_captions(model, tokens, lengths)
    batched = score_matrix(model, img, cap)
    assert batched.dtype == np.float32
    np.testing.assert_allclose(batched, loop_score_matrix(model, img, cap), rtol=0, atol=2e-6)


@pytest.mark.parametrize("head", ["saf", "sgr"])
def test_block_sizes_do_not_change_the_matrix(head):
    torch.manual_seed(0)
    model = trained_like(tiny_model(head, "attention").double())
    images, tokens, lengths = data()
    img, cap = encode_images(model, images), encode_captions(model, tokens, lengths)
    whole = score_matrix(model, img, cap, image_block=100, caption_block=100, dtype=np.float64)
    with torch.no_grad():  # and the training forward gives the same matrix in eval mode
        forward = model(images.double(), None, tokens, lengths).numpy()
    np.testing.assert_allclose(whole, forward, rtol=0, atol=1e-12)
    for image_block, caption_block in [(1, 1), (2, 3), (5, 2), (6, 7)]:
        blocked = score_matrix(model, img, cap, image_block, caption_block, dtype=np.float64)
        np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-12)


def test_score_matrix_restores_the_mode_and_builds_no_graph():
    model = tiny_model().train()
    images, tokens, lengths = data()
    img, cap = encode_images(model, images), encode_captions(model, tokens, lengths)
    assert model.training  # encode_* restored it too
    assert not img.local.requires_grad and not cap.global_.requires_grad
    score_matrix(model, img, cap)
    assert model.training
    with pytest.raises(ValueError, match="image_block"):
        score_matrix(model, img, cap, image_block=0)


def test_encoding_does_not_depend_on_the_batch_size():
    model = tiny_model("sgr", "attention").eval()
    images, tokens, lengths = data()
    one = encode_captions(model, tokens, lengths, batch_size=1)
    all_ = encode_captions(model, tokens, lengths, batch_size=100)
    assert one.local.shape == (7, max(LENGTHS), 16)  # padded to the longest caption, not the token width
    assert torch.equal(one.mask, torch.arange(max(LENGTHS)) < torch.tensor(LENGTHS)[:, None])
    assert torch.allclose(one.local, all_.local, atol=1e-6) and torch.allclose(one.global_, all_.global_, atol=1e-6)
    a, b = encode_images(model, images, batch_size=4), encode_images(model, images.numpy(), batch_size=6)
    assert torch.allclose(a.local, b.local, atol=1e-6) and torch.allclose(a.global_, b.global_, atol=1e-6)


def test_encoded_cat_and_trim():
    short = Encoded(torch.ones(2, 3, 4), torch.tensor([[True, True, False], [True, False, False]]), torch.ones(2, 5))
    long = Encoded(torch.ones(1, 5, 4), torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 5))
    both = Encoded.cat([short, long])
    assert both.local.shape == (3, 5, 4) and both.mask.sum(1).tolist() == [2, 1, 5]
    assert (both.local[:2, 3:] == 0).all()
    assert both[:2].trim().local.shape == (2, 2, 4)


def test_encode_split_reads_a_precomp_split_and_a_memory_map(tmp_path):
    captions = ["a red bird", "a bird on a branch", "two dogs", "a dog running", "blue sky", "empty sky"]
    images = np.random.default_rng(0).standard_normal((3, 7, 12)).astype(np.float32)
    split = PrecompSplit.from_arrays(images, captions)
    vocab = Vocabulary.build(captions)
    model = tiny_model(vocab_size=len(vocab)).eval()
    img, cap = encode_split(model, split, vocab, batch_size=2)
    assert img.local.shape == (3, 7, 16) and len(cap) == 6
    assert cap.mask.sum(1).tolist() == [len(c.split()) + 2 for c in captions]  # <start> ... <end>
    np.save(tmp_path / "ims.npy", images)
    mapped = encode_images(model, np.load(tmp_path / "ims.npy", mmap_mode="r"), batch_size=2)
    assert torch.allclose(mapped.global_, img.global_)
    assert score_matrix(model, img, cap).shape == (3, 6)
