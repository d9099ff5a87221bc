"""Multi-process training: real 2-process CPU runs (torchrun, gloo) against single-process training on the same
global batches; the sharded sampler; the auxiliary global loss."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from temde.data import load_split, make_loader
from temde.data.vocab import Vocabulary
from temde.errors import TemdeError
from temde.training import load_checkpoint, train, triplet_loss
from temde.training.distributed import DistInfo, ShardedBatchSampler, env_ranks, shard_rows, shard_size
from temde.training.loop import MatchingObjective, TrainSettings

WORDS = ["red", "green", "blue", "cat", "dog", "tree", "car", "boat", "sun", "moon"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """32 train images x 2 captions (64 items: batches of 21 leave a last batch of 1), 10 dev images."""
    from temde.data import write_split

    folder = tmp_path_factory.mktemp("precomp")
    rng = np.random.default_rng(0)
    for name, n in (("train", 32), ("dev", 10)):
        images = rng.standard_normal((n, 5, 12)).astype(np.float32)
        captions = [" ".join(rng.choice(WORDS, int(rng.integers(2, 6)))) for _ in range(2 * n)]
        write_split(folder, name, images, captions)
    return folder


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# No BatchNorm (SGR head, temde/mean pooling) and no dropout: the only differences left are float rounding.
TINY = dict(model="sgr-small", embed_size=16, model_overrides={"sim_dim": 8, "word_dim": 8, "word_dropout": 0.0},
            lr=1e-3, max_violation=True, progress=False, log_every=1, device="cpu")  # SGRAF's loss, as calibrated
CLI_TINY = ["--model", "sgr-small", "--hardest-negatives", "--embed-size", "16", "--set", "sim_dim=8", "--set", "word_dim=8",
            "--set", "word_dropout=0", "--lr", "1e-3", "--log-every", "1", "--device", "cpu", "--quiet"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2, timeout: float = 120) -> str:
    """`torchrun --nproc_per_node nproc -m temde ARGS` on gloo; kills the whole process group on timeout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "temde", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and its workers: the session this test started
        process.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s: {' '.join(command)}")
    assert process.returncode == 0, output
    return output


def _strip(history):
    return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]


def assert_same_training(single_path, ddp_path, atol=1e-5):
    """Equal Adam moments (the gradients), weights and dev metrics. Returns the largest weight difference over
    the parameters compared, over all of them, and the names of those left out.

    The float32 gradients of two summation orders differ by ~1e-7 of the largest gradient. Where a parameter's
    own gradient is not far above that noise (< 1e-4 of the largest: SGR's key biases, whose exact gradient is
    zero because shifting every key leaves the softmax unchanged, and in this tiny model the last reasoning
    step's query/key, whose input nodes have become alike), Adam's normalisation turns the noise into lr-sized
    steps in *both* runs: those weights are left out of the weight comparison; their moments are compared."""
    a, b = load_checkpoint(single_path), load_checkpoint(ddp_path)
    assert b["extra"]["world_size"] == 2 and a["model"].keys() == b["model"].keys()
    names = _parameter_names(a)
    moments_a = [a["extra"]["optimizer"]["state"][i]["exp_avg"] for i in range(len(names))]
    moments_b = [b["extra"]["optimizer"]["state"][i]["exp_avg"] for i in range(len(names))]
    largest = max(float(m.abs().max()) for m in moments_a)
    noise_level, worst, worst_all = [], 0.0, 0.0
    for name, exp_a, exp_b in zip(names, moments_a, moments_b):
        assert float((exp_a - exp_b).abs().max()) <= 2e-6 * largest, name  # the gradients agree
        difference = float((a["model"][name] - b["model"][name]).abs().max())
        worst_all = max(worst_all, difference)
        if float(exp_a.abs().max()) < 1e-4 * largest:
            noise_level.append(name)
            continue
        worst = max(worst, difference)
        assert difference <= atol, (name, difference)
    assert len(noise_level) <= 10 and all(n.startswith("head.steps.") for n in noise_level), noise_level
    for name in a["model"]:  # buffers (T-EMDE's fitted statistics, temperatures) too
        if name not in names:
            assert torch.allclose(a["model"][name], b["model"][name], atol=atol), name
    history_a, history_b = _strip(a["extra"]["history"]), _strip(b["extra"]["history"])
    assert len(history_a) == len(history_b)
    for record_a, record_b in zip(history_a, history_b):
        assert record_b == pytest.approx(record_a, rel=1e-5)
    return worst, worst_all, noise_level


def _parameter_names(checkpoint):
    """Names of the trainable parameters, in the order the optimizer holds them."""
    from temde.training import restore_model

    return [n for n, p in restore_model(checkpoint).named_parameters() if p.requires_grad]


def test_two_process_training_equals_single_process_with_global_loss(data_dir, tmp_path):
    # Batch 21 over 2 ranks: shards of 11 and 10 items, and a last global batch of 1 item, where rank 1 holds
    # padding only. T-EMDE pooling, with the auxiliary global loss on. No gradient clipping, which would hide a
    # wrong gradient scale from the Adam moments compared below.
    settings = TrainSettings(data=str(data_dir), out=str(tmp_path / "single"), pooling="temde", batch_size=21,
                             epochs=1, global_loss=0.5, grad_clip=0.0, **TINY)
    single = train(settings)
    output = torchrun(["train", "--data", str(data_dir), "--out", str(tmp_path / "ddp"), "--pooling", "temde",
                       "--batch-size", "21", "--epochs", "1", "--global-loss", "0.5", "--grad-clip", "0", *CLI_TINY])
    assert "x 2 processes" in output and output.count("best dev rsum") == 1  # rank 0 reports alone
    assert single["steps"] == 4
    worst = assert_same_training(tmp_path / "single" / "last.pt", tmp_path / "ddp" / "last.pt")
    print("max weight difference DDP vs single (global_loss 0.5): %.2e compared, %.2e all; noise-level: %s" % worst)
    # Rank 0 alone wrote the logs: one row per step, the same losses as one process.
    rows = lambda run: (tmp_path / run / "steps.csv").read_text().splitlines()
    single_rows, ddp_rows = rows("single"), rows("ddp")
    assert len(ddp_rows) == 5 and ddp_rows[0] == single_rows[0]
    for x, y in zip(single_rows[1:], ddp_rows[1:]):
        assert np.allclose([float(v) for v in x.split(",")], [float(v) for v in y.split(",")], rtol=1e-5)


def test_two_process_resume_continues_a_single_process_run(data_dir, tmp_path):
    # Epoch 1 by one process, epoch 2 resumed by two: the same as two epochs straight (mean pooling, batch 16).
    base = TrainSettings(data=str(data_dir), out="", pooling="mean", batch_size=16, **TINY)
    train(dataclasses.replace(base, out=str(tmp_path / "straight"), epochs=2))
    train(dataclasses.replace(base, out=str(tmp_path / "resumed"), epochs=1))
    torchrun(["train", "--data", str(data_dir), "--out", str(tmp_path / "resumed"), "--pooling", "mean",
              "--batch-size", "16", "--epochs", "2", "--resume", *CLI_TINY])
    worst = assert_same_training(tmp_path / "straight" / "last.pt", tmp_path / "resumed" / "last.pt")
    print("max weight difference DDP-resumed vs single (global_loss 0): %.2e compared, %.2e all; noise-level: %s"
          % worst)
    epochs = (tmp_path / "resumed" / "epochs.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in epochs] == ["epoch", "1", "2"]
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["extra"]["step"] == 8


def test_sharded_batches_are_the_global_batches_of_one_process(data_dir):
    split = load_split(data_dir, "train")
    vocab = Vocabulary.build(split.captions)
    for batch_size, world in ((21, 2), (16, 3), (5, 4)):
        reference = [b.caption_ids.tolist() for b in make_loader(split, vocab, batch_size, shuffle=True, seed=7)]
        shards = [list(ShardedBatchSampler(split.n_captions, batch_size, 7, rank, world)) for rank in range(world)]
        sizes = ShardedBatchSampler(split.n_captions, batch_size, 7, 0, world).global_sizes()
        assert sizes == [len(b) for b in reference]
        for step, batch in enumerate(reference):
            per_rank = -(-len(batch) // world)
            assert all(len(s[step]) == per_rank for s in shards)  # equal shapes for the collectives
            # Concatenated in rank order, the first len(batch) items are the global batch (padding last).
            assert sum((s[step] for s in shards), [])[:len(batch)] == batch


def test_shard_helpers_and_environment():
    assert [shard_size(b, 2) for b in (1, 2, 21)] == [1, 1, 11]
    rows = [shard_rows(10, DistInfo(rank, 4)) for rank in range(4)]
    assert [(r.start, r.stop) for r in rows] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert env_ranks({}) == (0, 1, 0)
    assert env_ranks({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    with pytest.raises(TemdeError, match="WORLD_SIZE"):
        env_ranks({"WORLD_SIZE": "two"})
    with pytest.raises(TemdeError, match="inconsistent"):
        env_ranks({"RANK": "2", "WORLD_SIZE": "2"})


def test_global_loss_adds_the_inner_product_triplet_loss():
    from temde.models import ModelConfig, RetrievalModel

    torch.manual_seed(0)
    config = ModelConfig(head="sgr", pooling="mean", img_dim=6, embed_size=8, sim_dim=4, word_dim=4,
                         vocab_size=12, word_dropout=0.0)
    model = RetrievalModel(config)
    images, mask = torch.randn(5, 3, 6), torch.ones(5, 3, dtype=torch.bool)
    tokens, lengths = torch.randint(4, 12, (5, 4)), torch.tensor([4, 3, 2, 4, 3])
    ids = torch.tensor([0, 0, 1, 2, 3])
    plain = MatchingObjective(model, 0.2, True)(images, mask, tokens, lengths, ids)
    both = MatchingObjective(model, 0.2, True, global_weight=0.7)(images, mask, tokens, lengths, ids)
    # Independently: the full scores through forward(); globals from a hand-written masked mean pooling.
    assert plain.item() == pytest.approx(triplet_loss(model(images, mask, tokens, lengths), 0.2, True, ids).item())
    local_i, mask_i = model.image_encoder(images, mask)
    local_c, mask_c = model.text_encoder(tokens, lengths)
    mean = lambda x, m: torch.nn.functional.normalize((x * m[..., None]).sum(1) / m.sum(1, keepdim=True), dim=-1)
    g_i, g_c = mean(local_i, mask_i), mean(local_c, mask_c)
    inner = torch.einsum("id,cd->ic", g_i, g_c)
    pos = inner.diagonal()
    same = ids[:, None] == ids[None, :]
    cost_c = (0.2 + inner - pos[:, None]).clamp(min=0).masked_fill(same, 0).max(1).values.sum()
    cost_i = (0.2 + inner - pos[None, :]).clamp(min=0).masked_fill(same, 0).max(0).values.sum()
    assert both.item() == pytest.approx(plain.item() + 0.7 * (cost_c + cost_i).item(), rel=1e-6)


def test_cli_rejects_a_negative_global_loss(data_dir, tmp_path, capsys):
    from temde.cli import main as cli_main

    assert cli_main(["train", "--data", str(data_dir), "--out", str(tmp_path / "r"), "--global-loss", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "temde train: error: global_loss: expected a weight >= 0, got -1.0"
