"""Host models: presets, config round-trip, forward/backward for every head x pooling, masking invariances."""
from __future__ import annotations

import json

import pytest
import torch

from temde.models import ModelConfig, RetrievalModel, create_model, list_models, load_preset, preset_config
from temde.models.alignment import scan_text_to_image
from temde.models.heads import SAFHead
from temde.pooling import list_pools

HEADS = ("saf", "sgr", "vse")
POOL_OPTIONS = {"attention": {}, "temde": {"n_partitions": 3, "n_bits": 3}, "gpo": {}, "mha": {"heads": 2},
                "mean": {}, "max": {}}
VOCAB = 30
BIASES_BEFORE_BATCHNORM = {"head.gate.bias", "image_pool.local_linear.bias", "image_pool.global_linear.bias",
                           "image_encoder.mlp_in.bias"}
# The attention pools' Linear->1 bias adds the same constant to every token's logit before a softmax over tokens,
# which is shift-invariant: its exact gradient is zero (in SGRAF too); rounding may or may not leave a trace.
BIASES_BEFORE_SOFTMAX = {"image_pool.score.bias", "caption_pool.score.bias"}


def tiny_model(head: str = "sgr", pooling: str = "attention", **overrides) -> RetrievalModel:
    options = dict(vocab_size=VOCAB, img_dim=12, embed_size=16, sim_dim=8, word_dim=6, pooling=pooling,
                   pool_options=POOL_OPTIONS[pooling])
    options.update(overrides)
    return create_model(f"{head}-small", **options)


def random_batch(n_img: int = 5, n_cap: int = 4, regions: int = 7, img_dim: int = 12, seed: int = 0,
                 lengths: tuple[int, ...] = (3, 5, 2, 6)):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n_img, regions, img_dim, generator=gen)
    lengths_t = torch.tensor(lengths[:n_cap])
    width = int(lengths_t.max())
    tokens = torch.randint(4, VOCAB, (n_cap, width), generator=gen)
    tokens[torch.arange(width) >= lengths_t[:, None]] = 0
    return images, tokens, lengths_t


# ---- presets and config ----------------------------------------------------------------------------------------

# SGRAF's published settings (Diao et al. 2021, README of Paranioar/SGRAF), written out independently.
PUBLISHED = {
    "saf-f30k": ("saf", 30, 20), "sgr-f30k": ("sgr", 40, 30),
    "saf-coco": ("saf", 20, 10), "sgr-coco": ("sgr", 20, 10),
}


def test_published_presets_carry_published_hyper_parameters():
    assert set(PUBLISHED) <= set(list_models())
    for name, (head, epochs, lr_update) in PUBLISHED.items():
        preset = load_preset(name)
        model, train = preset["model"], preset["train"]
        assert (model["head"], train["epochs"], train["lr_update"]) == (head, epochs, lr_update)
        assert (model["img_dim"], model["embed_size"], model["sim_dim"], model["word_dim"]) == (2048, 1024, 256, 300)
        assert model["lambda_softmax"] == 9.0 and model["pooling"] == "attention"
        assert (train["margin"], train["learning_rate"], train["batch_size"], train["grad_clip"]) == (
            0.2, 2e-4, 128, 2.0)
    assert {"saf-small", "sgr-small"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_preset_builds(name):
    model = create_model(name, vocab_size=20)
    preset = load_preset(name)
    assert model.config.head == preset["model"]["head"]
    assert model.config.embed_size == preset["model"]["embed_size"]
    assert model.text_encoder.embed.weight.shape == (20, preset["model"]["word_dim"])
    assert sum(p.numel() for p in model.parameters()) > 0


def test_building_needs_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        create_model("saf-small")


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="embed_dim"):
        create_model("saf-small", vocab_size=10, embed_dim=64)
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        load_preset("nope")


def test_overriding_pooling_drops_the_presets_pool_options():
    base = preset_config("sgr-small", pooling="temde", pool_options={"n_bits": 4})
    assert base.pool_options == {"n_bits": 4}
    assert preset_config("sgr-small", pooling="mean").pool_options == {}


def test_config_round_trips_through_a_plain_dict():
    config = preset_config("saf-small", vocab_size=123, pooling="temde", pool_options={"n_partitions": 8})
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    with pytest.raises(ValueError, match="'colour'"):
        ModelConfig.from_dict({**config.to_dict(), "colour": "red"})


@pytest.mark.parametrize("bad", [dict(head="bogus"), dict(pooling="bogus"), dict(embed_size=0),
                                 dict(head="vse", global_score=1.0),
                                 dict(shared_pool=True, pooling="attention"),
                                 dict(pool_options={"batchnorm": True})])
def test_invalid_config_is_a_value_error(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


# ---- forward and backward ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", list_pools())
@pytest.mark.parametrize("head", HEADS)
def test_forward_backward_every_parameter_gets_a_gradient(head, pooling):
    torch.manual_seed(0)
    model = tiny_model(head, pooling).train()
    images, tokens, lengths = random_batch()
    scores = model(images, None, tokens, lengths)
    assert scores.shape == (5, 4)
    # the head's sigmoid in (0, 1), plus global_score x a cosine in [-1, 1] where the preset adds it; vse: a cosine
    low, high = (-1.0, 1.0) if head == "vse" else (-model.config.global_score, 1 + model.config.global_score)
    assert torch.isfinite(scores).all() and (scores >= low - 1e-6).all() and (scores <= high + 1e-6).all()
    scores.sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        # A bias right before a train-mode BatchNorm is cancelled by the batch mean: its gradient is zero
        # (up to rounding) in SGRAF as well.
        if name not in BIASES_BEFORE_BATCHNORM | BIASES_BEFORE_SOFTMAX:
            assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_shared_pool_is_one_module():
    model = tiny_model("saf", "temde", shared_pool=True)
    image_pool, caption_pool = model.pools
    assert image_pool is caption_pool
    assert not any(name.startswith("caption_pool") for name in model.state_dict())
    images, tokens, lengths = random_batch()
    model(images, None, tokens, lengths).sum().backward()
    assert image_pool.planes.grad is not None


def test_global_similarity_is_sized_by_the_pool_out_dim():
    model = tiny_model("sgr", "temde")  # 3 partitions x 2**3 buckets = 24 != embed 16
    assert model.image_pool.out_dim == 24
    assert model.similarity.global_w.in_features == 24


def test_init_pools_uses_real_tokens_only():
    model = tiny_model("sgr", "temde").eval()
    images, tokens, lengths = random_batch()
    with torch.no_grad():
        img, cap = model.encode_images(images), model.encode_captions(tokens, lengths)
    assert model.init_pools(img, cap) == ["image", "caption"]
    expected = cap.local[cap.mask].mean(0)  # DLSH standardises with the mean of the tokens it was given
    assert torch.allclose(model.caption_pool.in_mean, expected, atol=1e-6)
    assert tiny_model("sgr", "attention").init_pools(img, cap) == []


# ---- encoders ----------------------------------------------------------------------------------------------

def test_text_encoder_matches_an_unpadded_run_per_caption():
    model = tiny_model("sgr", "mean").eval()
    _, tokens, lengths = random_batch()
    local, mask = model.text_encoder(tokens, lengths)
    assert mask.tolist() == [[j < n for j in range(tokens.shape[1])] for n in lengths.tolist()]
    assert (local[~mask] == 0).all()
    enc = model.text_encoder
    for i, n in enumerate(lengths.tolist()):
        out, _ = enc.rnn(enc.embed(tokens[i:i + 1, :n]))  # no packing, no padding: the plain recurrence
        expected = (out[..., :16] + out[..., 16:]) / 2
        expected = expected / expected.norm(dim=-1, keepdim=True)
        assert torch.allclose(local[i:i + 1, :n], expected, atol=1e-6)


def test_image_encoder_is_linear_then_l2():
    model = tiny_model()
    images, _, _ = random_batch()
    mask = torch.ones(images.shape[:2], dtype=torch.bool)
    mask[0, -2:] = False
    local, out_mask = model.image_encoder(images, mask)
    expected = images @ model.image_encoder.fc.weight.t() + model.image_encoder.fc.bias
    expected = expected / expected.norm(dim=-1, keepdim=True)
    assert torch.allclose(local[mask], expected[mask], atol=1e-6)
    assert (local[~mask] == 0).all() and torch.equal(out_mask, mask)
    bound = (6 / (12 + 16)) ** 0.5  # SGRAF's Xavier-uniform range
    assert model.image_encoder.fc.weight.abs().max() <= bound


def test_init_word_vectors():
    vectors = torch.randn(VOCAB, 6)
    model = tiny_model()
    model.init_word_vectors(vectors)
    assert torch.equal(model.text_encoder.embed.weight.data, vectors)
    built = RetrievalModel(model.config, word_vectors=vectors)
    assert torch.equal(built.text_encoder.embed.weight.data, vectors)
    with pytest.raises(ValueError, match="word vectors"):
        model.init_word_vectors(torch.zeros(VOCAB, 5))


def test_bad_lengths_and_shapes_are_value_errors():
    model = tiny_model()
    images, tokens, lengths = random_batch()
    with pytest.raises(ValueError, match="lengths"):
        model.encode_captions(tokens, lengths + 10)
    with pytest.raises(ValueError, match="images"):
        model.encode_images(images[..., :5])


# ---- SCAN attention and the heads against hand computations --------------------------------------------------

def test_scan_attention_matches_a_per_pair_computation():
    gen = torch.Generator().manual_seed(3)
    regions = torch.nn.functional.normalize(torch.randn(2, 4, 5, generator=gen, dtype=torch.float64), dim=-1)
    words = torch.nn.functional.normalize(torch.randn(3, 6, 5, generator=gen, dtype=torch.float64), dim=-1)
    word_mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4, [True] * 4 + [False] * 2])
    region_mask = torch.tensor([[True] * 4, [True, True, True, False]])
    out = scan_text_to_image(words, word_mask, regions, region_mask, smooth=9.0)
    for i in range(2):
        reg = regions[i, region_mask[i]]
        for c in range(3):
            wrd = words[c, word_mask[c]]
            sim = torch.nn.functional.leaky_relu(reg @ wrd.t(), 0.1)  # [R, n]
            sim = sim / (sim.norm(dim=1, keepdim=True) + 1e-8)  # over the caption's words
            weights = torch.softmax(9.0 * sim.t(), dim=1)  # [n, R]
            expected = torch.nn.functional.normalize(weights @ reg, dim=-1)
            assert torch.allclose(out[i, c, :len(wrd)], expected, atol=1e-12)


# ---- masking invariances --------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", list_pools())
@pytest.mark.parametrize("head", HEADS)
def test_caption_padding_does_not_change_scores(head, pooling):
    """A caption scored alone, unpadded, gets the same scores as inside a padded batch (train mode too, with
    dropout off, so masked BatchNorm statistics are checked as well)."""
    torch.manual_seed(1)
    model = tiny_model(head, pooling, word_dropout=0.0).double()
    if pooling == "attention":
        model = tiny_model(head, pooling, word_dropout=0.0, pool_options={"dropout": 0.0}).double()
    images, tokens, lengths = random_batch()
    images = images.double()
    padded = torch.cat([tokens, torch.zeros(4, 5, dtype=torch.long)], dim=1)  # 5 extra pad columns
    for mode in (False, True):
        model.train(mode)
        base = model(images, None, tokens, lengths)
        assert torch.allclose(model(images, None, padded, lengths), base, atol=1e-12)
    model.eval()
    with torch.no_grad():
        base = model(images, None, tokens, lengths)
        for c, n in enumerate(lengths.tolist()):
            alone = model(images, None, tokens[c:c + 1, :n], lengths[c:c + 1])
            assert torch.allclose(alone[:, 0], base[:, c], atol=1e-12)


@pytest.mark.parametrize("pooling", list_pools())
@pytest.mark.parametrize("head", ["saf", "vse"])
def test_region_padding_does_not_change_scores(head, pooling):
    model = tiny_model(head, pooling).double().eval()
    images, tokens, lengths = random_batch()
    images = images.double()
    padded = torch.cat([images, torch.randn(5, 3, 12, dtype=torch.float64)], dim=1)  # 3 junk regions, masked
    mask = torch.arange(10) < 7
    with torch.no_grad():
        base = model(images, None, tokens, lengths)
        assert torch.allclose(model(padded, mask.expand(5, 10), tokens, lengths), base, atol=1e-12)


# ---- CLI ------------------------------------------------------------------------------------------------------

def test_cli_lists_presets_and_shows_one(capsys):
    from temde.cli import main

    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for name in list_models():
        assert name in listing
    assert main(["models", "sgr-f30k"]) == 0
    assert json.loads(capsys.readouterr().out) == load_preset("sgr-f30k")
    assert main(["models", "nope"]) == 2
    assert "unknown model preset 'nope'" in capsys.readouterr().err
