"""Checkpoint round trip, RNG capture, and one-line errors for missing or corrupt files."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from temde.errors import CheckpointError
from temde.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


class Payload:
    """An arbitrary pickled object: weights_only loading must refuse it."""


def test_round_trip(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    config = {"head": "saf", "pooling": "temde", "pool_options": {"n_bits": 4, "temperature": 0.5}, "embed_size": 4}
    vocab = {"word2idx": {"<pad>": 0, "a": 1}, "idx2word": {"0": "<pad>", "1": "a"}, "idx": 2}
    extra = {"epoch": 3, "best_rsum": 123.4, "optimizer": optimizer.state_dict(), "history": [{"rsum": 1.0}]}
    path = save_checkpoint(tmp_path / "run" / "last.pt", model.state_dict(), config, vocab, extra)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind

    loaded = load_checkpoint(path)
    assert loaded["config"] == config and loaded["vocab"] == vocab
    assert loaded["extra"]["epoch"] == 3 and loaded["extra"]["best_rsum"] == 123.4
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded["model"][name], tensor)
    restored = torch.optim.Adam(model.parameters(), lr=1e-3)
    restored.load_state_dict(loaded["extra"]["optimizer"])
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_rng_state_survives_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint(tmp_path / "c.pt", {}, {}, None, {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["extra"]["rng"])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt") as info:
        load_checkpoint(garbage)
    assert "\n" not in str(info.value)

    good = save_checkpoint(tmp_path / "good.pt", {"w": torch.ones(100)}, {"a": 1})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)


def test_foreign_files_are_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)  # a torch file, but not ours
    with pytest.raises(CheckpointError, match="not a temde checkpoint"):
        load_checkpoint(other)

    evil = tmp_path / "evil.pt"
    torch.save({"format": "temde-checkpoint", "obj": Payload()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt") as info:
        load_checkpoint(evil)
    assert "\n" not in str(info.value)
