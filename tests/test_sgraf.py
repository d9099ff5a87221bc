"""SGRAF fidelity: per-slot VisualSA BatchNorm, per-caption SAF filtration statistics, importing SGRAF's
checkpoints (and refusing ones that would run code), fine-tuning from them with another pooling.

The references are written here from SGRAF's public model.py / evaluation.py (Paranioar/SGRAF): key names typed
out by hand, a per-caption Python loop for the forward pass, argsort ranks for the metrics.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from temde.cli import main as cli_main
from temde.data import write_split
from temde.errors import CheckpointError
from temde.models import ModelConfig, RetrievalModel
from temde.models.heads import SAFHead
from temde.models.importers import import_sgraf
from temde.pooling import AttentionPool
from temde.training import TrainSettings, load_checkpoint, restore_model, restore_vocab, train
from temde.training.loop import load_pretrained, resolve_model

IMG_DIM, EMBED, SIM, WORD_DIM, REGIONS = 10, 16, 8, 6, 36
# Vocabulary of the "released" model: "water" and "dogs" occur in captions but are left out (-> <unk>).
VOCAB_WORDS = ["a", "man", "'s", "dog", ".", ",", "runs", "on", "the", "white-walled", "street", "red", "ball",
               "girl", "with", "n't", "does", "sit", "!"]
CAPTIONS = ["A man's dog runs on the street.", "The girl, with a red ball!", "A dog doesn't sit on water.",
            "White-walled street, a man.", "Dogs run on the white-walled street", "A girl's red ball."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- SGRAF-format checkpoints, written from the key names of SGRAF's model.py -----------------------------

def _bn(prefix: str, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A BatchNorm's state with non-trivial statistics (as after training)."""
    return {f"{prefix}.weight": 1 + 0.3 * torch.randn(n, generator=gen),
            f"{prefix}.bias": 0.2 * torch.randn(n, generator=gen),
            f"{prefix}.running_mean": 0.5 * torch.randn(n, generator=gen),
            f"{prefix}.running_var": 0.5 + torch.rand(n, generator=gen),
            f"{prefix}.num_batches_tracked": torch.tensor(123)}


def _linear(prefix: str, out_dim: int, in_dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.randn(out_dim, in_dim, generator=gen) / in_dim ** 0.5,
            f"{prefix}.bias": 0.1 * torch.randn(out_dim, generator=gen)}


def sgraf_state(module: str, vocab_size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """[img_enc, txt_enc, sim_enc] state dicts of SGRAF's EncoderImage, EncoderText (BiGRU), EncoderSimilarity."""
    gen = torch.Generator().manual_seed(seed)
    img = _linear("fc", EMBED, IMG_DIM, gen)
    txt = {"embed.weight": torch.randn(vocab_size, WORD_DIM, generator=gen)}
    for suffix in ("", "_reverse"):
        txt[f"cap_rnn.weight_ih_l0{suffix}"] = 0.3 * torch.randn(3 * EMBED, WORD_DIM, generator=gen)
        txt[f"cap_rnn.weight_hh_l0{suffix}"] = 0.3 * torch.randn(3 * EMBED, EMBED, generator=gen)
        txt[f"cap_rnn.bias_ih_l0{suffix}"] = 0.1 * torch.randn(3 * EMBED, generator=gen)
        txt[f"cap_rnn.bias_hh_l0{suffix}"] = 0.1 * torch.randn(3 * EMBED, generator=gen)
    sim = {**_linear("v_global_w.embedding_local.0", EMBED, EMBED, gen),
           **_bn("v_global_w.embedding_local.1", REGIONS, gen),
           **_linear("v_global_w.embedding_global.0", EMBED, EMBED, gen),
           **_bn("v_global_w.embedding_global.1", EMBED, gen),
           **_linear("v_global_w.embedding_common.0", 1, EMBED, gen),
           **_linear("t_global_w.embedding_local.0", EMBED, EMBED, gen),
           **_linear("t_global_w.embedding_global.0", EMBED, EMBED, gen),
           **_linear("t_global_w.embedding_common.0", 1, EMBED, gen),
           **_linear("sim_tranloc_w", SIM, EMBED, gen), **_linear("sim_tranglo_w", SIM, EMBED, gen),
           **_linear("sim_eval_w", 1, SIM, gen)}
    if module == "SGR":
        for step in range(3):
            for name in ("graph_query_w", "graph_key_w", "sim_graph_w"):
                sim.update(_linear(f"SGR_module.{step}.{name}", SIM, SIM, gen))
    else:
        sim.update(_linear("SAF_module.attn_sim_w", 1, SIM, gen))
        sim.update(_bn("SAF_module.bn", 1, gen))
    return [img, txt, sim]


def sgraf_opt(module: str, vocab_size: int) -> argparse.Namespace:
    """SGRAF's opts.py namespace (its defaults, the sizes of this test)."""
    return argparse.Namespace(
        data_path="/data", data_name="f30k_precomp", vocab_path="/vocab", model_name="/runs", logger_name="/log",
        batch_size=128, num_epochs=30, lr_update=20, learning_rate=0.0002, workers=10, log_step=10, val_step=1000,
        grad_clip=2.0, margin=0.2, max_violation=True, img_dim=IMG_DIM, word_dim=WORD_DIM, embed_size=EMBED,
        sim_dim=SIM, num_layers=1, bi_gru=True, no_imgnorm=False, no_txtnorm=False, module_name=module,
        sgr_step=3, vocab_size=vocab_size)


def write_vocab(path) -> int:
    words = ["<pad>", "<start>", "<end>", "<unk>", *VOCAB_WORDS]
    path.write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(words)},
                                "idx2word": {str(i): w for i, w in enumerate(words)}, "idx": len(words)}))
    return len(words)


def write_sgraf_checkpoint(path, module: str, vocab_size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    parts = sgraf_state(module, vocab_size, seed)
    torch.save({"epoch": 17, "model": parts, "best_rsum": 488.9, "opt": sgraf_opt(module, vocab_size),
                "Eiters": 12345}, path)
    return parts


# ---- an independent SGRAF forward pass: SGRAF's model.py in eval mode, one caption at a time -----------------

def _l2(x, dim=-1):
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + 1e-8)


def _lin(state, prefix, x):
    return F.linear(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])


def _bn_eval(state, prefix, x):
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=1e-5)


def reference_scores(parts, module: str, images: np.ndarray, token_lists: list[list[int]]) -> np.ndarray:
    img_state, txt_state, sim = parts
    with torch.no_grad():
        img = _l2(_lin(img_state, "fc", torch.from_numpy(images)))  # [N, 36, E]
        rnn = nn.GRU(WORD_DIM, EMBED, 1, batch_first=True, bidirectional=True)
        rnn.load_state_dict({k[len("cap_rnn."):]: v for k, v in txt_state.items() if k.startswith("cap_rnn.")})
        # VisualSA: BatchNorm1d(36) on [N, 36, E] normalises per region slot.
        l_emb = torch.tanh(_bn_eval(sim, "v_global_w.embedding_local.1", _lin(sim, "v_global_w.embedding_local.0",
                                                                               img)))
        g_emb = torch.tanh(_bn_eval(sim, "v_global_w.embedding_global.1",
                                    _lin(sim, "v_global_w.embedding_global.0", img.mean(1))))
        weights = torch.softmax(_lin(sim, "v_global_w.embedding_common.0", l_emb * g_emb[:, None]).squeeze(2), 1)
        img_glo = _l2((weights[:, :, None] * img).sum(1))
        columns = []
        for tokens in token_lists:
            words = txt_state["embed.weight"][torch.tensor(tokens)][None]
            out, _ = rnn(words)
            cap = _l2((out[:, :, :EMBED] + out[:, :, EMBED:]) / 2)  # [1, L, E]
            l_t = torch.tanh(_lin(sim, "t_global_w.embedding_local.0", cap))
            g_t = torch.tanh(_lin(sim, "t_global_w.embedding_global.0", cap.mean(1)))
            w_t = torch.softmax(_lin(sim, "t_global_w.embedding_common.0", l_t * g_t[:, None]).squeeze(2), 1)
            cap_glo = _l2((w_t[:, :, None] * cap).sum(1))
            cap_x = cap.repeat(len(img), 1, 1)
            attn = _l2(F.leaky_relu(torch.bmm(img, cap_x.transpose(1, 2)), 0.1), 2)  # over the words
            attn = torch.softmax(attn.transpose(1, 2) * 9.0, dim=2)
            context = _l2(torch.bmm(attn, img))
            sim_loc = _l2(_lin(sim, "sim_tranloc_w", (context - cap_x) ** 2))
            sim_glo = _l2(_lin(sim, "sim_tranglo_w", (img_glo - cap_glo) ** 2))
            nodes = torch.cat([sim_glo[:, None], sim_loc], 1)
            if module == "SGR":
                for step in range(3):
                    q = _lin(sim, f"SGR_module.{step}.graph_query_w", nodes)
                    k = _lin(sim, f"SGR_module.{step}.graph_key_w", nodes)
                    edges = torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1)
                    nodes = torch.relu(_lin(sim, f"SGR_module.{step}.sim_graph_w", torch.bmm(edges, nodes)))
                vec = nodes[:, 0]
            else:
                gate = _bn_eval(sim, "SAF_module.bn", _lin(sim, "SAF_module.attn_sim_w", nodes).transpose(1, 2))
                gate = torch.sigmoid(gate)
                gate = gate / (gate.abs().sum(-1, keepdim=True) + 1e-8)
                vec = _l2(torch.matmul(gate, nodes).squeeze(1))
            columns.append(torch.sigmoid(_lin(sim, "sim_eval_w", vec)))
        return torch.cat(columns, 1).double().numpy()


def sgraf_metrics(sims: np.ndarray, k: int) -> dict[str, float]:
    """SGRAF evaluation.py's i2t / t2i (argsort, best true caption), as it computes them."""
    n = sims.shape[0]
    i2t = np.array([min(np.where(np.argsort(sims[i])[::-1] == c)[0][0] for c in range(k * i, k * i + k))
                    for i in range(n)])
    t2i = np.array([np.where(np.argsort(sims[:, c])[::-1] == c // k)[0][0] for c in range(k * n)])
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for r in (1, 5, 10):
            out[f"{name}_r{r}"] = 100.0 * len(np.where(ranks < r)[0]) / len(ranks)
        out[f"{name}_medr"] = np.floor(np.median(ranks)) + 1
        out[f"{name}_meanr"] = ranks.mean() + 1
    return out


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """An SGRAF "release": SAF and SGR checkpoints, their vocab json, and a precomp test split (5 captions each)."""
    root = tmp_path_factory.mktemp("sgraf")
    vocab_size = write_vocab(root / "f30k_precomp_vocab.json")
    parts = {m: write_sgraf_checkpoint(root / f"{m}.pth.tar", m, vocab_size, seed=i)
             for i, m in enumerate(("SAF", "SGR"))}
    rng = np.random.default_rng(0)
    n_images = 8
    images = rng.standard_normal((n_images, REGIONS, IMG_DIM)).astype(np.float32)
    # Distinct word ids for every caption: identical captions would tie, and ties are ranked differently here
    # (pessimistically) than by SGRAF's argsort (by position).
    extra = ["red", "water", "girl's", "dog", "white-walled", "ball", "man"]
    captions = [f"{extra[j % 7]} {extra[(j // 7) % 7]}, {CAPTIONS[j % len(CAPTIONS)]}" for j in range(5 * n_images)]
    captions = [c.upper() if j % 4 == 0 else c for j, c in enumerate(captions)]
    assert len({tuple(ids) for ids in _token_ids(captions)}) == len(captions)
    data = root / "data"
    write_split(data, "test", images, captions)
    return root, parts, images, captions


def _token_ids(captions: list[str]) -> list[list[int]]:
    """Caption -> ids as SCAN/SGRAF's data.py: NLTK's tokens of the lower-cased caption, <unk> = 3."""
    word2idx = {w: i for i, w in enumerate(["<pad>", "<start>", "<end>", "<unk>", *VOCAB_WORDS])}
    from nltk.tokenize import NLTKWordTokenizer

    return [[1, *(word2idx.get(t, 3) for t in NLTKWordTokenizer().tokenize(c.lower())), 2] for c in captions]


@pytest.mark.parametrize("module", ["SAF", "SGR"])
def test_imported_checkpoint_scores_and_ranks_exactly_as_sgraf(released, tmp_path, capsys, module):
    root, parts, images, captions = released
    run = tmp_path / "run"
    assert cli_main(["import", "sgraf", "--checkpoint", str(root / f"{module}.pth.tar"), "--vocab",
                     str(root / "f30k_precomp_vocab.json"), "--out", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    checkpoint = load_checkpoint(run / "best.pt")
    assert checkpoint["config"]["head"] == module.lower() and checkpoint["config"]["image_norm_slots"] == 36
    assert checkpoint["extra"]["epoch"] == 17 and checkpoint["extra"]["best_rsum"] == 488.9

    from temde.scoring import encode_split, score_matrix
    from temde.data import load_split

    model = restore_model(checkpoint)
    split = load_split(root / "data", "test")
    ours = score_matrix(model, *encode_split(model, split, restore_vocab(checkpoint)))
    expected = reference_scores(parts[module], module, images, _token_ids(captions))
    np.testing.assert_allclose(ours, expected, atol=2e-6)

    out = tmp_path / "metrics.json"
    assert cli_main(["eval", "--checkpoint", str(run / "best.pt"), "--data", str(root / "data"), "--split", "test",
                     "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    for key, value in sgraf_metrics(expected, 5).items():
        assert metrics[key] == pytest.approx(value), key


def test_two_imported_checkpoints_are_sgraf_ensemble(released, tmp_path):
    root, parts, images, captions = released
    runs = []
    for module in ("SAF", "SGR"):
        assert cli_main(["import", "sgraf", "--checkpoint", str(root / f"{module}.pth.tar"), "--vocab",
                         str(root / "f30k_precomp_vocab.json"), "--out", str(tmp_path / module)]) == 0
        runs += ["--checkpoint", str(tmp_path / module / "best.pt")]
    out = tmp_path / "ensemble.json"
    assert cli_main(["eval", *runs, "--data", str(root / "data"), "--json", str(out)]) == 0
    ids = _token_ids(captions)
    mean = (reference_scores(parts["SAF"], "SAF", images, ids) + reference_scores(parts["SGR"], "SGR", images, ids)) / 2
    metrics = json.loads(out.read_text())["metrics"]
    for key, value in sgraf_metrics(mean, 5).items():
        assert metrics[key] == pytest.approx(value), key


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_checkpoint_whose_pickle_would_run_code_is_refused(released, tmp_path, capsys, monkeypatch):
    root, *_ = released
    monkeypatch.chdir(tmp_path)
    vocab_size = len(VOCAB_WORDS) + 4
    evil = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 1, "model": sgraf_state("SAF", vocab_size), "best_rsum": 0.0,
                "opt": sgraf_opt("SAF", vocab_size), "Eiters": 1, "payload": _RunsCode()}, evil)
    code = cli_main(["import", "sgraf", "--checkpoint", str(evil), "--vocab", str(root / "f30k_precomp_vocab.json"),
                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and str(evil) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    assert not (tmp_path / "run" / "best.pt").exists()


def test_bad_sgraf_inputs_are_one_line_errors(released, tmp_path, capsys):
    root, *_ = released
    vocab = str(root / "f30k_precomp_vocab.json")
    not_sgraf = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, not_sgraf)
    small_vocab = tmp_path / "small.json"
    small_vocab.write_text(json.dumps({"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3},
                                       "idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "<unk>"},
                                       "idx": 4}))
    extra_key = tmp_path / "extra.pth.tar"
    parts = sgraf_state("SAF", len(VOCAB_WORDS) + 4)
    parts[2]["SAF_module.unknown.weight"] = torch.zeros(1)
    torch.save({"epoch": 1, "model": parts, "opt": sgraf_opt("SAF", len(VOCAB_WORDS) + 4)}, extra_key)
    cases = [(tmp_path / "missing.pth.tar", vocab, "no such checkpoint"),
             (not_sgraf, vocab, "not an SGRAF checkpoint"),
             (root / "SAF.pth.tar", str(small_vocab), "4 words"),
             (extra_key, vocab, "unexpected weight sim_enc.SAF_module.unknown.weight")]
    for checkpoint, vocab_path, message in cases:
        assert cli_main(["import", "sgraf", "--checkpoint", str(checkpoint), "--vocab", vocab_path, "--out",
                         str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(CheckpointError, match="4 words"):
        import_sgraf(root / "SAF.pth.tar", small_vocab)


def test_existing_run_is_not_overwritten_without_force(released, tmp_path, capsys):
    root, *_ = released
    args = ["import", "sgraf", "--checkpoint", str(root / "SAF.pth.tar"), "--vocab",
            str(root / "f30k_precomp_vocab.json"), "--out", str(tmp_path / "run")]
    assert cli_main(args) == 0
    assert cli_main(args) == 2 and "--force" in capsys.readouterr().err
    assert cli_main(args + ["--force"]) == 0


# ---- the per-slot and per-caption BatchNorms -------------------------------------------------------------

def test_per_slot_image_pool_equals_sgraf_visual_sa():
    torch.manual_seed(0)
    pool = AttentionPool(EMBED, batchnorm=True, dropout=0.0, norm_slots=5).double()
    # SGRAF's VisualSA layers, sharing the pool's weights.
    local = nn.Sequential(nn.Linear(EMBED, EMBED), nn.BatchNorm1d(5), nn.Tanh()).double()
    glob = nn.Sequential(nn.Linear(EMBED, EMBED), nn.BatchNorm1d(EMBED), nn.Tanh()).double()
    common = nn.Linear(EMBED, 1).double()
    local[0].load_state_dict(pool.local_linear.state_dict())
    glob[0].load_state_dict(pool.global_linear.state_dict())
    common.load_state_dict(pool.score.state_dict())
    x = torch.randn(7, 5, EMBED, dtype=torch.float64)
    x = x + torch.arange(5, dtype=torch.float64)[None, :, None]  # slots with different statistics
    for training in (True, True, False):  # two updates of the running statistics, then eval with them
        for module in (pool, local, glob):
            module.train(training)
        weights = torch.softmax(common(local(x) * glob(x.mean(1))[:, None]).squeeze(2), 1)
        expected = F.normalize((weights[:, :, None] * x).sum(1), dim=-1)
        torch.testing.assert_close(pool(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pool.local_norm.norm.running_mean, local[1].running_mean)
    torch.testing.assert_close(pool.local_norm.norm.running_var, local[1].running_var)
    assert pool.local_norm.norm.running_mean.shape == (5,)  # one statistic per slot, not per feature


def test_per_slot_norm_refuses_other_region_counts_and_padding():
    pool = AttentionPool(EMBED, batchnorm=True, norm_slots=5)
    with pytest.raises(ValueError, match="5 regions per image, got 6"):
        pool(torch.randn(2, 6, EMBED))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 4] = False
    with pytest.raises(ValueError, match="fill all 5"):
        pool(torch.randn(2, 5, EMBED), mask)
    with pytest.raises(ValueError, match="needs batchnorm"):
        AttentionPool(EMBED, norm_slots=5)


def test_saf_filtration_statistics_are_per_caption_as_sgraf():
    """SGRAF's AttentionFiltration runs BatchNorm1d(1) once per caption over [n_images, 1, words + 1]."""
    torch.manual_seed(0)
    head = SAFHead(SIM).double().train()
    n_img, lengths = 4, [3, 1, 5]
    nodes = torch.randn(n_img, len(lengths), 6, SIM, dtype=torch.float64)
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None] + 1  # node 0 + the caption's words
    nodes = nodes.masked_fill(~mask[None, :, :, None], 0.0)
    reference_bn = nn.BatchNorm1d(1).double().train()
    reference_bn.load_state_dict(head.bn.state_dict())
    with torch.no_grad():
        head.bn.weight.fill_(1.3)
        head.bn.bias.fill_(-0.2)
        reference_bn.weight.fill_(1.3)
        reference_bn.bias.fill_(-0.2)
    scores = head(nodes, mask)
    for c, n in enumerate(lengths):
        sim_emb = nodes[:, c, :n + 1]  # [n_img, n + 1, S]: SGRAF slices the caption's real nodes
        gate = torch.sigmoid(reference_bn(head.gate(sim_emb).permute(0, 2, 1)))
        gate = gate / (gate.abs().sum(-1, keepdim=True) + 1e-8)
        vec = _l2(torch.matmul(gate, sim_emb).squeeze(1))  # SGRAF's l2norm (+1e-8)
        torch.testing.assert_close(scores[:, c], torch.sigmoid(head.out(vec)).squeeze(-1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(head.bn.running_mean, reference_bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(head.bn.running_var, reference_bn.running_var, rtol=1e-12, atol=1e-12)
    assert int(head.bn.num_batches_tracked) == int(reference_bn.num_batches_tracked) == len(lengths)


# ---- training: SGRAF's negatives, fine-tuning an imported model with T-EMDE ---------------------------------

def test_negatives_follow_the_preset_and_the_flag(tmp_path):
    def hyper(model, **settings):
        return resolve_model(TrainSettings(data="d", out="o", model=model, **settings), 12, 30)[1]

    assert hyper("saf-f30k")["mask_same_image"] is False  # SGRAF: every off-diagonal pair is a negative
    assert hyper("sgr-coco")["mask_same_image"] is False
    assert hyper("saf-small")["mask_same_image"] is True
    assert hyper("saf-f30k", mask_same_image=True)["mask_same_image"] is True
    assert hyper("saf-small", mask_same_image=False)["mask_same_image"] is False
    assert hyper("saf")["mask_same_image"] is False


def _fine_tune_data(root, vocab_size):
    rng = np.random.default_rng(1)
    for split, n in (("train", 24), ("dev", 8)):
        images = rng.standard_normal((n, REGIONS, IMG_DIM)).astype(np.float32)
        write_split(root, split, images, [CAPTIONS[j % len(CAPTIONS)] for j in range(2 * n)])


def test_init_from_imported_checkpoint_swaps_the_pooling_and_keeps_the_rest(released, tmp_path, capsys):
    root, *_ = released
    assert cli_main(["import", "sgraf", "--checkpoint", str(root / "SAF.pth.tar"), "--vocab",
                     str(root / "f30k_precomp_vocab.json"), "--out", str(tmp_path / "imported")]) == 0
    imported = load_checkpoint(tmp_path / "imported" / "best.pt")
    config = ModelConfig.from_dict(imported["config"]).replace(
        pooling="temde", pool_options={"n_partitions": 2, "n_bits": 3, "out_dim": EMBED})
    model = RetrievalModel(config)
    kept, fresh = load_pretrained(model, imported["model"])
    assert fresh == ["caption_pool", "image_pool"]
    own = model.state_dict()
    for name, tensor in imported["model"].items():
        if not name.startswith(("image_pool.", "caption_pool.")):
            assert torch.equal(own[name], tensor), name
    assert kept == sum(1 for name in imported["model"] if not name.startswith(("image_pool.", "caption_pool.")))

    data = tmp_path / "data"
    _fine_tune_data(data, len(VOCAB_WORDS) + 4)
    out = tmp_path / "fine-tuned"
    assert cli_main(["train", "--init", str(tmp_path / "imported" / "best.pt"), "--pooling", "temde",
                     "--pool-option", "n_partitions=2", "--pool-option", "n_bits=3", "--model", "saf-f30k",
                     "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "trained from scratch: caption_pool, image_pool" in printed
    tuned = load_checkpoint(out / "best.pt")
    assert tuned["config"]["pooling"] == "temde" and tuned["config"]["embed_size"] == EMBED
    assert tuned["config"]["image_norm_slots"] == 36 and tuned["vocab"]["idx2word"] == imported["vocab"]["idx2word"]
    assert tuned["extra"]["hyper"]["mask_same_image"] is False  # the f30k preset trains as SGRAF
