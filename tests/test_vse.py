"""The dual-encoder host `vse`: its image side against a hand computation, the score as the cosine matrix of the
globals, and `temde train` / `temde eval` / `temde index build` with it, unchanged."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from temde.cli import main
from temde.models import Encoded, create_model, load_preset
from temde.models.config import ConfigError
from temde.pooling import list_pools

VOCAB = 30


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_vse(pooling: str = "temde", **overrides):
    options = {"temde": {"n_partitions": 3, "n_bits": 3}, "mha": {"heads": 2}}.get(pooling, {})
    return create_model("vse-small", vocab_size=VOCAB, img_dim=12, embed_size=16, word_dim=6, pooling=pooling,
                        pool_options=options, **overrides)


def test_presets_follow_vse_infinity():
    f30k = load_preset("vse-f30k")
    assert (f30k["model"]["head"], f30k["model"]["pooling"], f30k["model"]["embed_size"]) == ("vse", "gpo", 1024)
    train = f30k["train"]
    # woodfrog/vse_infty train_region.sh: 25 epochs, lr 5e-4 decayed at 15, one warm-up epoch, then hardest negatives
    assert (train["epochs"], train["lr_update"], train["learning_rate"], train["warmup_epochs"]) == (25, 15, 5e-4, 1)
    assert train["max_violation"] and train["batch_size"] == 128
    assert load_preset("vse-small")["model"]["img_dim"] == 1280  # EfficientNet-Lite0 regions


def test_vse_has_no_alignment_or_head_and_refuses_a_global_score_weight():
    model = tiny_vse()
    assert model.similarity is None and model.head is None
    assert not any(name.startswith(("similarity.", "head.")) for name in model.state_dict())
    with pytest.raises(ConfigError, match="global_score"):
        tiny_vse(global_score=1.0)


def test_image_side_is_fc_plus_mlp_with_batchnorm_over_the_real_regions():
    torch.manual_seed(0)
    model = tiny_vse().double().train()
    enc = model.image_encoder
    images = torch.randn(3, 5, 12, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    local, out_mask = enc(images, mask)
    # Independent computation on the real regions only.
    real = images[mask]
    hidden = real @ enc.mlp_in.weight.t() + enc.mlp_in.bias
    bn = enc.mlp_norm.norm
    hidden = (hidden - hidden.mean(0)) / torch.sqrt(hidden.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
    expected = real @ enc.fc.weight.t() + enc.fc.bias + torch.relu(hidden) @ enc.mlp_out.weight.t() + enc.mlp_out.bias
    torch.testing.assert_close(local[mask], expected)
    assert (local[~mask] == 0).all() and torch.equal(out_mask, mask)
    assert enc.mlp_in.out_features == 8  # VSE-infinity's hidden size: embed / 2
    # Train mode too: junk in padded regions changes neither the statistics nor the scores.
    junk = images.masked_fill(~mask.unsqueeze(-1), 1e3)
    torch.testing.assert_close(enc(junk, mask)[0], local)


@pytest.mark.parametrize("pooling", list_pools())
def test_score_is_the_cosine_matrix_of_the_pooled_vectors(pooling):
    torch.manual_seed(1)
    model = tiny_vse(pooling).double().eval()
    images = torch.randn(5, 7, 12, dtype=torch.float64)
    tokens = torch.randint(4, VOCAB, (4, 6))
    lengths = torch.tensor([6, 3, 2, 5])
    with torch.no_grad():
        img, cap = model.encode_images(images), model.encode_captions(tokens, lengths)
        scores = model.score(img, cap)
        for i in range(5):
            for c in range(4):
                cosine = torch.nn.functional.cosine_similarity(img.global_[i], cap.global_[c], dim=0)
                assert abs(float(scores[i, c]) - float(cosine)) < 1e-12
        # the locals play no part: the same globals with other locals give the same scores
        other = Encoded(torch.randn_like(img.local), img.mask, img.global_)
        assert torch.equal(model.score(other, cap), scores)


def make_data(folder, n_train=160, n_dev=40, k=2, regions=6, dim=16, seed=0):
    """Each image shows 3 of 12 objects (a region holds the object's prototype); its captions name them."""
    from temde.data import write_split

    words = ["red", "green", "blue", "cat", "dog", "tree", "car", "boat", "sun", "moon", "star", "fish"]
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((len(words), dim)).astype(np.float32)
    for name, n in (("train", n_train), ("dev", n_dev), ("test", n_dev)):
        images = 0.3 * rng.standard_normal((n, regions, dim)).astype(np.float32)
        captions = []
        for i in range(n):
            objects = rng.choice(len(words), 3, replace=False)
            images[i, rng.choice(regions, 3, replace=False)] += prototypes[objects]
            captions += ["a " + " ".join(words[w] for w in rng.permutation(objects)) for _ in range(k)]
        write_split(folder, name, images, captions)
    return folder


def test_train_eval_and_index_a_vse_model_with_temde_through_the_cli(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--model", "vse-small", "--pooling", "temde",
                 "--embed-size", "32", "--set", "word_dim=16", "--set", "word_dropout=0.0", "--epochs", "6",
                 "--lr", "3e-3", "--quiet"]) == 0
    assert len((run / "epochs.csv").read_text().splitlines()) == 1 + 6
    out = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", str(data), "--split", "test",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["rsum"] > 2.5 * report["chance_rsum"]  # chance: about 78 on 40 images x 2 captions
    capsys.readouterr()
    assert main(["index", "build", "--checkpoint", str(run / "best.pt"), "--data", str(data), "--split", "test",
                 "--out", str(tmp_path / "index")]) == 0
    assert (tmp_path / "index" / "meta.json").is_file()
